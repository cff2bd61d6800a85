//! TaskService: a task is an activity of type "task"; its defaults and
//! validation; who may edit, complete and reopen it, and what can_edit
//! says; completion in the journal and the feed; overdue, filters and the
//! deadline order; task categories; tenants.

use std::collections::BTreeSet;

use agenda::api::{
    self, Activity, ActivityRevision, Change, ChangeKind, CompleteTaskRequest, CreateActivityRequest,
    CreateTaskCategoryRequest, CreateTaskRequest, DeleteTaskCategoryRequest, DeleteTaskRequest, GetActivityRequest,
    GetTaskRequest, ListActivitiesRequest, ListTaskCategoriesRequest, ListTasksRequest, RelatedRecord,
    ReopenTaskRequest, ResourceType, RevisionKind, RichText, Task, TaskCategory, TextFormat, UndeleteTaskRequest,
    UpdateTaskCategoryRequest,
};
use prost_types::{FieldMask, Value, value::Kind};
use tonic::{Code, Response, Status};

use crate::helpers::{
    Activities, Backend, Tasks, TestApp, all_revisions, assert_error, assert_field_error, changes_of, complete,
    create_task, get_task, list_tasks, new_contacts, spawn_app, task_patch, titled, token, update_task, utc,
    violation_fields,
};

on_both_backends!(
    create_fills_in_the_defaults,
    create_round_trips_every_field,
    a_task_is_an_activity_of_type_task,
    the_activity_service_keeps_the_task_rules,
    invalid_tasks_are_refused_field_by_field_and_change_nothing,
    can_edit_says_who_may_update_complete_and_reopen,
    a_reassigned_task_is_edited_by_its_new_responsible,
    delete_and_undelete_need_tasks_admin,
    complete_and_reopen_are_journaled_once,
    a_stale_etag_is_aborted,
    overdue_is_a_passed_deadline_of_an_open_task,
    the_default_order_is_nearest_deadline_first_and_none_last,
    filters_select_what_they_say,
    categories_list_in_sort_order_with_unique_titles,
    a_task_shows_its_category_as_it_is_now,
    a_category_in_use_cannot_be_deleted,
    a_deleted_category_is_refused_to_tasks,
    category_changes_appear_in_the_feed,
    category_writes_need_tasks_admin,
    tenants_never_see_each_others_tasks_or_categories,
);

/// A Monday, 09:00 in Berlin.
const FAR_MONDAY: &str = "2100-01-04T08:00:00Z";

fn create(task: Task) -> CreateTaskRequest {
    CreateTaskRequest { task: Some(task), request_id: String::new() }
}

fn markdown(raw: &str) -> Option<RichText> {
    Some(RichText { format: TextFormat::Markdown as i32, raw: raw.into(), html: String::new() })
}

fn related(kind: &str, id: &str) -> RelatedRecord {
    RelatedRecord { r#type: kind.into(), id: id.into() }
}

fn complete_at(id: &str, etag: &str) -> CompleteTaskRequest {
    CompleteTaskRequest { id: id.into(), etag: etag.into() }
}

fn reopen_at(id: &str, etag: &str) -> ReopenTaskRequest {
    ReopenTaskRequest { id: id.into(), etag: etag.into() }
}

fn delete(id: &str) -> DeleteTaskRequest {
    DeleteTaskRequest { id: id.into(), etag: String::new() }
}

fn titles(tasks: &[Task]) -> Vec<&str> {
    tasks.iter().map(|t| t.title.as_str()).collect()
}

/// Titles in byte order, for comparisons that do not depend on the list order.
fn title_set(tasks: &[Task]) -> BTreeSet<String> {
    tasks.iter().map(|t| t.title.clone()).collect()
}

/// Every task of the client's tenant, soft-deleted ones too.
async fn everything(client: &mut Tasks) -> Vec<Task> {
    let request = ListTasksRequest { page_size: 1000, show_deleted: true, ..Default::default() };
    client.list_tasks(request).await.expect("list tasks").into_inner().tasks
}

/// An activity client that only reads.
fn activity_reader(app: &TestApp, tenant: &str) -> Activities {
    app.activities_with(Some(&token(tenant, "activities.read")))
}

/// Creates a plain (non-task) activity.
async fn create_note(app: &TestApp, tenant: &str, subject: &str) -> Activity {
    let activity = Activity { subject: subject.into(), ..Default::default() };
    let request = CreateActivityRequest { activity: Some(activity), request_id: String::new() };
    app.activities(tenant).create_activity(request).await.expect("create a note").into_inner()
}

fn revision_kinds(revisions: &[ActivityRevision]) -> Vec<RevisionKind> {
    revisions.iter().map(|r| RevisionKind::try_from(r.kind).expect("a known kind")).collect()
}

fn change_kinds(changes: &[Change]) -> Vec<ChangeKind> {
    changes.iter().map(|c| ChangeKind::try_from(c.kind).expect("a known kind")).collect()
}

fn category(title: &str, sort_order: i32) -> TaskCategory {
    TaskCategory { title: title.into(), sort_order, ..Default::default() }
}

fn create_category_request(category: TaskCategory) -> CreateTaskCategoryRequest {
    CreateTaskCategoryRequest { task_category: Some(category), request_id: String::new() }
}

async fn create_category(admin: &mut Tasks, category: TaskCategory) -> TaskCategory {
    admin.create_task_category(create_category_request(category)).await.expect("create category").into_inner()
}

fn change_category(category: TaskCategory, paths: &[&str]) -> UpdateTaskCategoryRequest {
    UpdateTaskCategoryRequest {
        task_category: Some(category),
        update_mask: Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
    }
}

fn delete_category(id: &str) -> DeleteTaskCategoryRequest {
    DeleteTaskCategoryRequest { id: id.into(), etag: String::new() }
}

async fn list_categories(client: &mut Tasks, show_deleted: bool) -> Vec<TaskCategory> {
    let request = ListTaskCategoriesRequest { page_size: 1000, show_deleted, ..Default::default() };
    client.list_task_categories(request).await.expect("list categories").into_inner().task_categories
}

fn category_titles(categories: &[TaskCategory]) -> Vec<&str> {
    categories.iter().map(|c| c.title.as_str()).collect()
}

/// The (id, title, image_url) a task shows of its category.
fn summary(task: &Task) -> Option<(&str, &str, &str)> {
    task.category.as_ref().map(|c| (c.id.as_str(), c.title.as_str(), c.image_url.as_str()))
}

// ---------------------------------------------------------------------------
// Create

async fn create_fills_in_the_defaults(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let created = create_task(&mut client, titled("Call Ada")).await;
    let id = uuid::Uuid::parse_str(&created.id).expect("a UUID id");
    assert_eq!(id.get_version_num(), 7, "ids are UUIDv7");
    assert_eq!(created.title, "Call Ada");
    assert_eq!(created.status, api::Status::Scheduled as i32, "the stored default, not UNSPECIFIED");
    assert_eq!(created.priority, api::Priority::Normal as i32);
    assert_eq!(created.time_zone, "UTC");
    assert_eq!((created.notify_responsible, created.alert_minutes), (false, 0));
    assert!(created.deadline.is_none() && created.recurrence.is_empty());
    assert!(created.category_id.is_empty() && created.category.is_none());
    assert!(created.completed_time.is_none() && created.completed_by.is_empty());
    assert!(!created.overdue, "without a deadline a task is never overdue");
    assert!(created.can_edit, "its creator may edit it");
    assert_eq!(created.revision, 1);
    assert!(!created.etag.is_empty());
    assert_eq!((created.created_by.as_str(), created.updated_by.as_str()), ("user-1", "user-1"));
    assert!(created.create_time.is_some());
    assert!(created.delete_time.is_none() && created.purge_time.is_none());
    assert_eq!(get_task(&mut client, &created.id).await, created);

    let explicit = create_task(
        &mut client,
        Task {
            status: api::Status::Unspecified as i32,
            priority: api::Priority::Unspecified as i32,
            time_zone: String::new(),
            ..titled("Explicitly unspecified")
        },
    )
    .await;
    assert_eq!((explicit.status, explicit.priority), (api::Status::Scheduled as i32, api::Priority::Normal as i32));
    assert_eq!(explicit.time_zone, "UTC");
}

async fn create_round_trips_every_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let contact = new_contacts(&app, "t1", 1).await.remove(0);
    let billing = create_category(
        &mut app.task_admin("t1"),
        TaskCategory { image_url: "https://example.com/billing.png".into(), ..category("Billing", 10) },
    )
    .await;
    let parent = create_task(&mut client, titled("Quarterly close")).await;
    let sent = Task {
        id: "ignored".into(),
        revision: 99,
        etag: "ignored".into(),
        created_by: "ignored".into(),
        completed_by: "ignored".into(),
        recurrence_origin_id: "ignored".into(),
        overdue: true,
        category: Some(category("ignored", 0)),
        title: "Send the invoice".into(),
        description: markdown("**Net** 30 days"),
        deadline: utc(FAR_MONDAY),
        responsible_user_id: "bob".into(),
        category_id: billing.id.clone(),
        contact_id: contact.clone(),
        related: vec![related("opportunity", "1234"), related("case", "42")],
        status: api::Status::InProgress as i32,
        priority: api::Priority::High as i32,
        parent_id: parent.id.clone(),
        notify_responsible: true,
        alert_minutes: 30,
        time_zone: "Europe/Berlin".into(),
        recurrence: "FREQ=WEEKLY;BYDAY=MO,TH".into(),
        ..Default::default()
    };
    let created = create_task(&mut client, sent.clone()).await;
    assert_ne!(created.id, "ignored");
    assert_eq!(created.title, "Send the invoice");
    let rich = created.description.clone().expect("description");
    assert_eq!((rich.format, rich.raw.as_str()), (TextFormat::Markdown as i32, "**Net** 30 days"));
    assert!(rich.html.contains("<strong>Net</strong>"), "{}", rich.html);
    assert_eq!(created.deadline, sent.deadline);
    assert_eq!(created.responsible_user_id, "bob");
    assert_eq!(
        (created.category_id.as_str(), created.contact_id.as_str(), created.parent_id.as_str()),
        (billing.id.as_str(), contact.as_str(), parent.id.as_str())
    );
    assert_eq!(summary(&created), Some((billing.id.as_str(), "Billing", "https://example.com/billing.png")));
    let mut links: Vec<(&str, &str)> = created.related.iter().map(|r| (r.r#type.as_str(), r.id.as_str())).collect();
    links.sort();
    assert_eq!(links, [("case", "42"), ("opportunity", "1234")]);
    assert_eq!((created.status, created.priority), (sent.status, sent.priority));
    assert_eq!((created.notify_responsible, created.alert_minutes), (true, 30));
    assert_eq!((created.time_zone.as_str(), created.recurrence.as_str()), ("Europe/Berlin", "FREQ=WEEKLY;BYDAY=MO,TH"));
    assert_eq!(created.recurrence_origin_id, created.id, "the first occurrence is its own origin");
    assert!(created.completed_time.is_none() && created.completed_by.is_empty());
    assert!(!created.overdue, "due in 2100");
    assert!(created.can_edit);
    assert_eq!((created.revision, created.created_by.as_str()), (1, "user-1"));
    assert_eq!(get_task(&mut client, &created.id).await, created, "what create returns is what is stored");
    let children = list_tasks(&mut client, &format!("parent_id = \"{}\"", parent.id), "").await;
    assert_eq!(children, [created], "a list shows what a get shows");
}

async fn a_task_is_an_activity_of_type_task(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let contact = new_contacts(&app, "t1", 1).await.remove(0);
    let billing = create_category(&mut app.task_admin("t1"), category("Billing", 10)).await;
    let task = create_task(
        &mut client,
        Task {
            description: markdown("Net 30"),
            deadline: utc(FAR_MONDAY),
            responsible_user_id: "bob".into(),
            category_id: billing.id.clone(),
            contact_id: contact.clone(),
            priority: api::Priority::High as i32,
            related: vec![related("case", "42")],
            notify_responsible: true,
            alert_minutes: 15,
            time_zone: "Europe/Berlin".into(),
            recurrence: "FREQ=WEEKLY;BYDAY=MO".into(),
            ..titled("Send the invoice")
        },
    )
    .await;
    let note = create_note(&app, "t1", "A note").await;
    assert!(note.task.is_none(), "a note has no task fields");

    let mut activities = activity_reader(&app, "t1");
    let get = |id: &str| GetActivityRequest { id: id.into(), read_mask: None };
    let seen = activities.get_activity(get(&task.id)).await.expect("a task is an activity").into_inner();
    assert_eq!(seen.r#type, "task");
    assert_eq!(seen.subject, "Send the invoice");
    assert_eq!(seen.details.as_ref().map(|d| d.raw.as_str()), Some("Net 30"));
    assert_eq!(seen.due_time, task.deadline);
    assert_eq!(seen.assignee.as_ref().map(|a| a.user_id.as_str()), Some("bob"));
    assert_eq!((seen.status, seen.priority), (task.status, task.priority));
    assert_eq!(seen.related, task.related);
    assert_eq!((seen.revision, seen.created_by.as_str()), (task.revision, "user-1"));
    let fields = seen.task.clone().expect("activity.task is filled for a task");
    assert_eq!((fields.category_id.as_str(), fields.contact_id.as_str()), (billing.id.as_str(), contact.as_str()));
    assert_eq!((fields.notify_responsible, fields.alert_minutes), (true, 15));
    assert_eq!((fields.time_zone.as_str(), fields.recurrence.as_str()), ("Europe/Berlin", "FREQ=WEEKLY;BYDAY=MO"));
    assert_eq!(fields.recurrence_origin_id, task.id);
    assert!(fields.completed_time.is_none() && fields.completed_by.is_empty() && !fields.overdue);

    let list = |filter: &str| ListActivitiesRequest { page_size: 100, filter: filter.into(), ..Default::default() };
    let tasks = activities.list_activities(list("type = \"task\"")).await.expect("list").into_inner().activities;
    assert_eq!(tasks.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), [task.id.as_str()]);
    let all = activities.list_activities(list("")).await.expect("list").into_inner().activities;
    assert_eq!(all.len(), 2, "ListActivities shows tasks and the others");
    assert_eq!(list_tasks(&mut client, "", "").await, std::slice::from_ref(&task), "ListTasks shows only tasks");
    let status = client.get_task(GetTaskRequest { id: note.id.clone(), read_mask: None }).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");

    // Completing shows on the activity too.
    let done = complete(&mut client, &task.id).await;
    let seen = activities.get_activity(get(&task.id)).await.expect("get").into_inner();
    assert_eq!((seen.status, seen.revision), (api::Status::Completed as i32, done.revision));
    let fields = seen.task.expect("task fields");
    assert_eq!((fields.completed_time, fields.completed_by.as_str()), (done.completed_time, "user-1"));
}

async fn invalid_tasks_are_refused_field_by_field_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let theirs = new_contacts(&app, "t2", 1).await.remove(0);
    let note = create_note(&app, "t1", "Not a task").await;
    let ghost = uuid::Uuid::now_v7().to_string();
    let due = utc(FAR_MONDAY);
    let cases: Vec<(Task, &str, &str)> = vec![
        (titled(""), "FIELD_REQUIRED", "task.title"),
        (titled("   "), "FIELD_REQUIRED", "task.title"),
        (titled(&"x".repeat(256)), "FIELD_INVALID", "task.title"),
        (Task { alert_minutes: 525_601, ..titled("A") }, "FIELD_INVALID", "task.alert_minutes"),
        (Task { alert_minutes: -1, ..titled("A") }, "FIELD_INVALID", "task.alert_minutes"),
        (Task { time_zone: "Mars/Olympus".into(), ..titled("A") }, "FIELD_INVALID", "task.time_zone"),
        (
            Task { recurrence: "FREQ=SOMETIMES".into(), deadline: due, ..titled("A") },
            "FIELD_INVALID",
            "task.recurrence",
        ),
        (Task { recurrence: "FREQ=WEEKLY;BYDAY=MO".into(), ..titled("A") }, "FIELD_INVALID", "task.recurrence"),
        // Found by fuzzing: the RRULE parser panicked inside a multi-byte character.
        (
            Task { recurrence: "FREQ=DAILY;BYDAY=.\u{50d}z".into(), deadline: due, ..titled("A") },
            "FIELD_INVALID",
            "task.recurrence",
        ),
        (Task { status: api::Status::Completed as i32, ..titled("A") }, "FIELD_INVALID", "task.status"),
        (Task { category_id: ghost.clone(), ..titled("A") }, "FIELD_INVALID", "task.category_id"),
        (Task { contact_id: theirs.clone(), ..titled("A") }, "FIELD_INVALID", "task.contact_id"),
        (Task { contact_id: ghost.clone(), ..titled("A") }, "FIELD_INVALID", "task.contact_id"),
        (Task { parent_id: note.id.clone(), ..titled("A") }, "FIELD_INVALID", "task.parent_id"),
        (Task { parent_id: ghost.clone(), ..titled("A") }, "FIELD_INVALID", "task.parent_id"),
    ];
    for (sent, reason, field) in cases {
        let status = client.create_task(create(sent)).await.unwrap_err();
        assert_field_error(&status, Code::InvalidArgument, reason, field);
        assert_eq!(violation_fields(&status).first().map(String::as_str), Some(field), "{status:?}");
    }
    assert!(everything(&mut client).await.is_empty(), "no refused create may write anything");
    let request = ListActivitiesRequest { page_size: 100, show_deleted: true, ..Default::default() };
    let activities = activity_reader(&app, "t1").list_activities(request).await.expect("list").into_inner();
    assert_eq!(activities.activities, [note], "only the note is there");

    // Right at the limits is fine, and so is every status but COMPLETED.
    let edge = create_task(&mut client, Task { alert_minutes: 525_600, ..titled(&"x".repeat(255)) }).await;
    assert_eq!(edge.alert_minutes, 525_600);
    for status in [api::Status::Scheduled, api::Status::InProgress, api::Status::Cancelled] {
        let made = create_task(&mut client, Task { status: status as i32, ..titled("A") }).await;
        assert_eq!(made.status, status as i32);
    }
    let sent = Task { status: api::Status::Completed as i32, ..task_patch(&edge.id) };
    let status = client.update_task(update_task(sent, &["status"])).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "task.status");
    assert_eq!(get_task(&mut client, &edge.id).await, edge, "CompleteTask is the way to complete");
}

// ---------------------------------------------------------------------------
// Permissions

/// What a call answered, checked against whether the caller may edit: a
/// task when allowed (whose can_edit says so), NOT_EDITABLE otherwise.
fn outcome(answer: Result<Response<Task>, Status>, may_edit: bool, what: &str) -> Option<Task> {
    match answer {
        Ok(task) => {
            assert!(may_edit, "{what}: succeeded though can_edit is false");
            let task = task.into_inner();
            assert!(task.can_edit, "{what}: the answer's can_edit");
            Some(task)
        }
        Err(status) => {
            assert!(!may_edit, "{what}: refused though can_edit is true: {status:?}");
            assert_error(&status, Code::PermissionDenied, "NOT_EDITABLE");
            None
        }
    }
}

fn assert_scope_missing(status: &Status, scope: &str) {
    let info = assert_error(status, Code::PermissionDenied, "SCOPE_MISSING");
    assert_eq!(info.metadata.get("required_scope").map(String::as_str), Some(scope), "{status:?}");
}

async fn can_edit_says_who_may_update_complete_and_reopen(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut ada = app.tasks_as("t1", "ada", "tasks.write");
    let mut admin = app.tasks_as("t1", "admin", "tasks.admin");
    let task = create_task(&mut ada, Task { responsible_user_id: "bob".into(), ..titled("Call ACME") }).await;
    let id = task.id.clone();
    for (who, scopes, expected) in [
        ("ada", "tasks.write", true),
        ("bob", "tasks.write", true),
        ("carol", "tasks.write", false),
        ("admin", "tasks.admin", true),
    ] {
        let mut client = app.tasks_as("t1", who, scopes);
        let may_edit = get_task(&mut client, &id).await.can_edit;
        assert_eq!(may_edit, expected, "{who}: GetTask's can_edit");
        let listed = list_tasks(&mut client, "", "").await;
        assert_eq!(listed.iter().map(|t| t.can_edit).collect::<Vec<_>>(), [may_edit], "{who}: ListTasks' can_edit");
        let before = get_task(&mut admin, &id).await;

        let retitle = Task { title: format!("Call ACME ({who})"), ..task_patch(&id) };
        let updated = outcome(client.update_task(update_task(retitle, &["title"])).await, may_edit, who);
        if let Some(updated) = &updated {
            assert_eq!(updated.title, format!("Call ACME ({who})"));
        }
        let completed = outcome(client.complete_task(complete_at(&id, "")).await, may_edit, who);
        if let Some(completed) = &completed {
            assert_eq!((completed.status, completed.completed_by.as_str()), (api::Status::Completed as i32, who));
        } else {
            // Reopening is tried on a completed task.
            complete(&mut admin, &id).await;
        }
        let reopened = outcome(client.reopen_task(reopen_at(&id, "")).await, may_edit, who);
        if let Some(reopened) = &reopened {
            assert_eq!(reopened.status, api::Status::Scheduled as i32);
        }
        if !may_edit {
            admin.reopen_task(reopen_at(&id, "")).await.expect("the admin reopens");
            let after = get_task(&mut admin, &id).await;
            assert_eq!(after.title, before.title, "{who}: a refused update changes nothing");
            assert_eq!(after.revision, before.revision + 2, "{who}: only the admin's complete and reopen");
        }
    }

    // A reader sees the task, cannot edit it, and is refused by scope.
    let mut dave = app.tasks_as("t1", "dave", "tasks.read");
    assert!(!get_task(&mut dave, &id).await.can_edit, "dave: tasks.read only");
    let before = get_task(&mut admin, &id).await;
    let retitle = Task { title: "Call ACME (dave)".into(), ..task_patch(&id) };
    assert_scope_missing(&dave.update_task(update_task(retitle, &["title"])).await.unwrap_err(), "tasks.write");
    assert_scope_missing(&dave.complete_task(complete_at(&id, "")).await.unwrap_err(), "tasks.write");
    assert_scope_missing(&dave.reopen_task(reopen_at(&id, "")).await.unwrap_err(), "tasks.write");
    assert_scope_missing(&dave.create_task(create(titled("Mine"))).await.unwrap_err(), "tasks.write");
    assert_eq!(get_task(&mut admin, &id).await, before, "nothing changed");
}

async fn a_reassigned_task_is_edited_by_its_new_responsible(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut ada = app.tasks_as("t1", "ada", "tasks.write");
    let mut bob = app.tasks_as("t1", "bob", "tasks.write");
    let mut carol = app.tasks_as("t1", "carol", "tasks.write");
    let task = create_task(&mut ada, Task { responsible_user_id: "bob".into(), ..titled("Call ACME") }).await;
    let id = task.id.clone();
    let hand_to = |user: &str| {
        update_task(Task { responsible_user_id: user.into(), ..task_patch(&id) }, &["responsible_user_id"])
    };

    let handed = bob.update_task(hand_to("carol")).await.expect("the responsible hands it on").into_inner();
    assert_eq!(handed.responsible_user_id, "carol");
    assert!(!handed.can_edit, "bob neither created it nor is responsible any more");
    assert!(!get_task(&mut bob, &id).await.can_edit);
    assert!(get_task(&mut carol, &id).await.can_edit);
    let status = bob.complete_task(complete_at(&id, "")).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "NOT_EDITABLE");
    let status = bob.update_task(hand_to("bob")).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "NOT_EDITABLE");
    let done = complete(&mut carol, &id).await;
    assert!(done.can_edit);
    assert_eq!(done.completed_by, "carol");

    // Its creator may edit it whoever is responsible.
    assert!(ada.reopen_task(reopen_at(&id, "")).await.expect("the creator reopens").into_inner().can_edit);
    let moved = ada.update_task(hand_to("erin")).await.expect("the creator reassigns").into_inner();
    assert_eq!(moved.responsible_user_id, "erin");
    assert!(moved.can_edit, "ada created it");
    assert!(!get_task(&mut carol, &id).await.can_edit, "carol is no longer responsible");
}

async fn delete_and_undelete_need_tasks_admin(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut writer = app.tasks("t1");
    let task = create_task(&mut writer, titled("Call")).await;
    assert_scope_missing(&writer.delete_task(delete(&task.id)).await.unwrap_err(), "tasks.admin");
    let undelete = || UndeleteTaskRequest { id: task.id.clone() };
    assert_scope_missing(&writer.undelete_task(undelete()).await.unwrap_err(), "tasks.admin");
    assert_eq!(get_task(&mut writer, &task.id).await, task, "nothing changed");

    let mut admin = app.task_admin("t1");
    let request = DeleteTaskRequest { id: task.id.clone(), etag: task.etag.clone() };
    let deleted = admin.delete_task(request).await.expect("delete").into_inner();
    assert_eq!(deleted.revision, 2);
    assert!(deleted.delete_time.is_some() && deleted.purge_time.is_some());
    assert_eq!(get_task(&mut writer, &task.id).await, deleted, "still readable");
    assert!(list_tasks(&mut writer, "", "").await.is_empty(), "hidden from lists");
    assert_eq!(everything(&mut writer).await, [deleted], "shown when asked");
    let restored = admin.undelete_task(undelete()).await.expect("undelete").into_inner();
    assert_eq!(restored.revision, 3);
    assert!(restored.delete_time.is_none() && restored.purge_time.is_none());
    assert_eq!(titles(&list_tasks(&mut writer, "", "").await), ["Call"]);
}

// ---------------------------------------------------------------------------
// Complete and reopen

async fn complete_and_reopen_are_journaled_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let created = create_task(&mut client, Task { deadline: utc(FAR_MONDAY), ..titled("Call") }).await;
    let id = created.id.clone();
    let before = chrono::Utc::now().timestamp();
    let done = client.complete_task(complete_at(&id, &created.etag)).await.expect("complete").into_inner();
    let after = chrono::Utc::now().timestamp();
    assert_eq!(done.status, api::Status::Completed as i32);
    let when = done.completed_time.as_ref().expect("completed_time").seconds;
    assert!(before <= when && when <= after, "{when} not within [{before}, {after}]");
    assert_eq!((done.completed_by.as_str(), done.updated_by.as_str()), ("user-1", "user-1"));
    assert_eq!(done.revision, 2);
    assert_ne!(done.etag, created.etag);
    assert_eq!(complete(&mut client, &id).await, done, "completing a completed task changes nothing");

    let reopened = client.reopen_task(reopen_at(&id, &done.etag)).await.expect("reopen").into_inner();
    assert_eq!(reopened.status, api::Status::Scheduled as i32);
    assert!(reopened.completed_time.is_none() && reopened.completed_by.is_empty());
    assert_eq!(reopened.revision, 3);
    assert_ne!(reopened.etag, done.etag);
    let again = client.reopen_task(reopen_at(&id, "")).await.expect("reopen again").into_inner();
    assert_eq!(again, reopened, "reopening an open task changes nothing");
    assert_eq!(get_task(&mut client, &id).await, reopened);

    // A later change marks the end of what the calls appended.
    let renamed = Task { title: "Call back".into(), ..task_patch(&id) };
    client.update_task(update_task(renamed, &["title"])).await.expect("rename");
    let journal = all_revisions(&mut activity_reader(&app, "t1"), &id).await;
    assert_eq!(
        revision_kinds(&journal),
        [RevisionKind::Created, RevisionKind::Completed, RevisionKind::Reopened, RevisionKind::Updated]
    );
    assert_eq!(journal.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(journal[3].changes.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(), ["title"], "task names");
    let feed = changes_of(&mut app.changes("t1"), ResourceType::Task, &id, 4).await;
    assert_eq!(
        change_kinds(&feed),
        [ChangeKind::Created, ChangeKind::Completed, ChangeKind::Reopened, ChangeKind::Updated]
    );
    assert_eq!(feed.iter().map(|c| c.revision).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(feed.iter().all(|c| c.resource_type == ResourceType::Task as i32 && c.actor == "user-1"), "{feed:?}");
}

async fn a_stale_etag_is_aborted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let created = create_task(&mut client, titled("Call")).await;
    let id = created.id.clone();
    let renamed = Task { title: "Call back".into(), etag: created.etag.clone(), ..task_patch(&id) };
    let renamed = client.update_task(update_task(renamed, &["title"])).await.expect("rename").into_inner();

    let status = client.complete_task(complete_at(&id, &created.etag)).await.unwrap_err();
    let info = assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(info.metadata.get("id"), Some(&id));
    assert_eq!(get_task(&mut client, &id).await, renamed, "not completed");
    let done = client.complete_task(complete_at(&id, &renamed.etag)).await.expect("complete").into_inner();
    let status = client.reopen_task(reopen_at(&id, &renamed.etag)).await.unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    let stale = Task { title: "Call again".into(), etag: renamed.etag.clone(), ..task_patch(&id) };
    let status = client.update_task(update_task(stale, &["title"])).await.unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    let request = DeleteTaskRequest { id: id.clone(), etag: renamed.etag.clone() };
    let status = app.task_admin("t1").delete_task(request).await.unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(get_task(&mut client, &id).await, done, "still completed, nothing else changed");
}

// ---------------------------------------------------------------------------
// Overdue and order

/// Tasks whose overdue flag does not depend on today's date, made out of
/// order: (title, deadline, status it ends in, overdue).
const OVERDUE: [(&str, Option<&str>, api::Status, bool); 7] = [
    ("future", Some(FAR_MONDAY), api::Status::Scheduled, false),
    ("none", None, api::Status::Scheduled, false),
    ("late", Some("2020-03-10T09:00:00Z"), api::Status::Scheduled, true),
    ("done late", Some("2020-01-10T09:00:00Z"), api::Status::Completed, false),
    ("none either", None, api::Status::InProgress, false),
    ("cancelled late", Some("2020-02-10T09:00:00Z"), api::Status::Cancelled, false),
    ("late in progress", Some("2020-04-10T09:00:00Z"), api::Status::InProgress, true),
];

async fn create_overdue_fixture(client: &mut Tasks) -> Vec<Task> {
    let mut made = Vec::new();
    for (title, deadline, status, _) in OVERDUE {
        let on_create = if status == api::Status::Completed { api::Status::Scheduled } else { status };
        let task = Task { deadline: deadline.and_then(utc), status: on_create as i32, ..titled(title) };
        let task = create_task(client, task).await;
        made.push(if status == api::Status::Completed { complete(client, &task.id).await } else { task });
    }
    made
}

async fn overdue_is_a_passed_deadline_of_an_open_task(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let made = create_overdue_fixture(&mut client).await;
    for (task, (title, .., overdue)) in made.iter().zip(OVERDUE) {
        assert_eq!(task.overdue, overdue, "{title}: as written");
        assert_eq!(get_task(&mut client, &task.id).await.overdue, overdue, "{title}: as read");
    }
    let want = |overdue: bool| -> BTreeSet<String> {
        OVERDUE.iter().filter(|(.., o)| *o == overdue).map(|(title, ..)| title.to_string()).collect()
    };
    for overdue in [true, false] {
        let listed = list_tasks(&mut client, &format!("overdue = {overdue}"), "").await;
        assert_eq!(title_set(&listed), want(overdue), "overdue = {overdue}");
        assert!(listed.iter().all(|t| t.overdue == overdue), "{listed:?}");
    }
    // Completing ends it, reopening brings it back.
    let late = &made[2];
    assert!(!complete(&mut client, &late.id).await.overdue);
    let done_late = &made[3];
    let reopened = client.reopen_task(reopen_at(&done_late.id, "")).await.expect("reopen").into_inner();
    assert!(reopened.overdue, "reopened past its deadline");
    let listed = list_tasks(&mut client, "overdue = true", "").await;
    assert_eq!(title_set(&listed), BTreeSet::from(["done late".to_string(), "late in progress".to_string()]));
}

/// Every live task in the order `order_by`, walked in pages of `page_size`.
async fn pages(client: &mut Tasks, order_by: &str, page_size: i32) -> Vec<Task> {
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListTasksRequest { page_size, page_token, order_by: order_by.into(), ..Default::default() };
        let page = client.list_tasks(request).await.expect("list").into_inner();
        seen.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return seen;
        }
        page_token = page.next_page_token;
    }
}

async fn the_default_order_is_nearest_deadline_first_and_none_last(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let made = create_overdue_fixture(&mut client).await;
    // Tasks without a deadline come last, in id order.
    let mut undated: Vec<(&str, &str)> =
        made.iter().filter(|t| t.deadline.is_none()).map(|t| (t.id.as_str(), t.title.as_str())).collect();
    undated.sort();
    let mut want = vec!["done late", "cancelled late", "late", "late in progress", "future"];
    want.extend(undated.iter().map(|(_, title)| *title));
    assert_eq!(titles(&list_tasks(&mut client, "", "").await), want);
    assert_eq!(titles(&list_tasks(&mut client, "", "deadline").await), want);
    for page_size in [1, 2, 3] {
        assert_eq!(titles(&pages(&mut client, "", page_size).await), want, "pages of {page_size}");
    }
}

// ---------------------------------------------------------------------------
// Filters

async fn filters_select_what_they_say(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let mut admin = app.task_admin("t1");
    let billing = create_category(&mut admin, category("Billing", 10)).await;
    let calls = create_category(&mut admin, category("Calls", 20)).await;
    let c = new_contacts(&app, "t1", 2).await;
    let fixture = vec![
        Task {
            responsible_user_id: "ada".into(),
            category_id: billing.id.clone(),
            contact_id: c[0].clone(),
            related: vec![related("case", "42")],
            priority: api::Priority::High as i32,
            deadline: utc("2100-01-10T09:00:00Z"),
            ..titled("Invoice 42")
        },
        Task {
            responsible_user_id: "bob".into(),
            category_id: calls.id.clone(),
            contact_id: c[1].clone(),
            related: vec![related("opportunity", "7")],
            status: api::Status::InProgress as i32,
            deadline: utc("2100-02-10T09:00:00Z"),
            ..titled("Kick-off")
        },
        Task {
            responsible_user_id: "ada".into(),
            contact_id: c[0].clone(),
            related: vec![related("case", "43"), related("work_package", "42")],
            status: api::Status::Cancelled as i32,
            priority: api::Priority::Low as i32,
            deadline: utc("2100-03-10T09:00:00Z"),
            ..titled("Re: INVOICE question")
        },
        Task {
            responsible_user_id: "bob".into(),
            category_id: billing.id.clone(),
            priority: api::Priority::Urgent as i32,
            ..titled("Callback")
        },
    ];
    let mut made = Vec::new();
    for task in fixture {
        made.push(create_task(&mut client, task).await);
    }
    let sub_task = Task {
        responsible_user_id: "carol".into(),
        parent_id: made[0].id.clone(),
        status: api::Status::InProgress as i32,
        deadline: utc("2100-04-10T09:00:00Z"),
        ..titled("Renewal")
    };
    made.push(create_task(&mut client, sub_task).await);
    let index = |task: &Task| made.iter().position(|m| m.id == task.id).expect("a task of the fixture");
    let cases: Vec<(String, Vec<usize>)> = vec![
        ("responsible_user_id = \"ada\"".into(), vec![0, 2]),
        ("responsible_user_id = \"bob\"".into(), vec![1, 3]),
        (format!("category_id = \"{}\"", billing.id), vec![0, 3]),
        (format!("category_id = \"{}\"", calls.id), vec![1]),
        (format!("contact_id = \"{}\"", c[0]), vec![0, 2]),
        (format!("contact_id = \"{}\"", c[1]), vec![1]),
        ("related.id = \"42\"".into(), vec![0, 2]),
        ("related.type = \"case\"".into(), vec![0, 2]),
        ("related.type = \"opportunity\"".into(), vec![1]),
        ("status = CANCELLED".into(), vec![2]),
        ("status = IN_PROGRESS".into(), vec![1, 4]),
        ("status != SCHEDULED".into(), vec![1, 2, 4]),
        ("priority = PRIORITY_URGENT".into(), vec![3]),
        ("title:\"invoice\"".into(), vec![0, 2]),
        ("title = \"Kick-off\"".into(), vec![1]),
        ("deadline >= \"2100-02-01T00:00:00Z\" AND deadline < \"2100-04-01T00:00:00Z\"".into(), vec![1, 2]),
        ("deadline < \"2100-02-01T00:00:00Z\"".into(), vec![0]),
        (format!("parent_id = \"{}\"", made[0].id), vec![4]),
        ("responsible_user_id = \"ada\" AND status != CANCELLED".into(), vec![0]),
    ];
    for (filter, expected) in cases {
        let mut got: Vec<usize> = list_tasks(&mut client, &filter, "").await.iter().map(index).collect();
        got.sort();
        assert_eq!(got, expected, "{filter}");
    }
    for filter in ["colour = \"red\"", "deadline > \"tomorrow\"", "overdue = maybe"] {
        let request = ListTasksRequest { page_size: 10, filter: filter.into(), ..Default::default() };
        let status = client.list_tasks(request).await.unwrap_err();
        assert_field_error(&status, Code::InvalidArgument, "FILTER_INVALID", "filter");
    }
}

// ---------------------------------------------------------------------------
// Categories

async fn categories_list_in_sort_order_with_unique_titles(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.task_admin("t1");
    create_category(&mut admin, category("Follow-up", 20)).await;
    let billing = create_category(
        &mut admin,
        TaskCategory {
            description: "Invoices and dunning".into(),
            image_url: "https://example.com/billing.png".into(),
            ..category("Billing", 10)
        },
    )
    .await;
    let calls = create_category(&mut admin, category("Calls", 30)).await;
    let id = uuid::Uuid::parse_str(&billing.id).expect("a UUID id");
    assert_eq!(id.get_version_num(), 7);
    assert_eq!((billing.description.as_str(), billing.sort_order), ("Invoices and dunning", 10));
    assert_eq!(billing.image_url, "https://example.com/billing.png");
    assert_eq!((billing.revision, billing.created_by.as_str()), (1, "user-1"));
    assert!(!billing.etag.is_empty() && billing.delete_time.is_none());

    let mut reader = app.tasks_as("t1", "reader", "tasks.read");
    let listed = list_categories(&mut reader, false).await;
    assert_eq!(category_titles(&listed), ["Billing", "Follow-up", "Calls"], "by sort_order");
    assert_eq!(listed[0], billing);

    for title in ["billing", "BILLING", "Billing"] {
        let status = admin.create_task_category(create_category_request(category(title, 1))).await.unwrap_err();
        assert_error(&status, Code::AlreadyExists, "DUPLICATE");
    }
    let rename = TaskCategory { id: calls.id.clone(), ..category("billing", 0) };
    let status = admin.update_task_category(change_category(rename, &["title"])).await.unwrap_err();
    assert_error(&status, Code::AlreadyExists, "DUPLICATE");
    for (sent, reason, field) in [
        (category("", 1), "FIELD_REQUIRED", "task_category.title"),
        (category(&"c".repeat(256), 1), "FIELD_INVALID", "task_category.title"),
        (
            TaskCategory { image_url: "javascript:alert(1)".into(), ..category("Bad", 1) },
            "FIELD_INVALID",
            "task_category.image_url",
        ),
    ] {
        let status = admin.create_task_category(create_category_request(sent)).await.unwrap_err();
        assert_field_error(&status, Code::InvalidArgument, reason, field);
    }
    assert_eq!(list_categories(&mut reader, true).await.len(), 3, "nothing refused was created");

    // A deleted category's title is free again.
    admin.delete_task_category(delete_category(&calls.id)).await.expect("delete an unused category");
    create_category(&mut admin, category("calls", 40)).await;
    assert_eq!(category_titles(&list_categories(&mut reader, false).await), ["Billing", "Follow-up", "calls"]);

    // Case is folded beyond ASCII, the same on both backends, also when
    // two creates race (the unique index decides then).
    create_category(&mut admin, category("Über", 50)).await;
    let status = admin.create_task_category(create_category_request(category("über", 1))).await.unwrap_err();
    assert_error(&status, Code::AlreadyExists, "DUPLICATE");
    let (mut one, mut two) = (app.task_admin("t1"), app.task_admin("t1"));
    let (first, second) = tokio::join!(
        one.create_task_category(create_category_request(category("Ärger", 60))),
        two.create_task_category(create_category_request(category("ärger", 61))),
    );
    assert_eq!(usize::from(first.is_ok()) + usize::from(second.is_ok()), 1, "exactly one of {first:?} / {second:?}");
    for refused in [first, second].into_iter().filter_map(Result::err) {
        assert_error(&refused, Code::AlreadyExists, "DUPLICATE");
    }
}

async fn a_task_shows_its_category_as_it_is_now(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.task_admin("t1");
    let mut client = app.tasks("t1");
    let billing = create_category(
        &mut admin,
        TaskCategory { image_url: "https://example.com/billing.png".into(), ..category("Billing", 10) },
    )
    .await;
    let task = create_task(&mut client, Task { category_id: billing.id.clone(), ..titled("Send invoice") }).await;
    assert_eq!(summary(&task), Some((billing.id.as_str(), "Billing", "https://example.com/billing.png")));

    let sent = TaskCategory {
        id: billing.id.clone(),
        title: "Invoicing".into(),
        image_url: "https://example.com/invoicing.png".into(),
        ..Default::default()
    };
    let renamed = admin.update_task_category(change_category(sent, &["title", "image_url"])).await;
    let renamed = renamed.expect("update").into_inner();
    assert_eq!((renamed.title.as_str(), renamed.sort_order, renamed.revision), ("Invoicing", 10, 2));
    assert_ne!(renamed.etag, billing.etag);
    let want = Some((billing.id.as_str(), "Invoicing", "https://example.com/invoicing.png"));
    assert_eq!(summary(&get_task(&mut client, &task.id).await), want);
    let listed = list_tasks(&mut client, &format!("category_id = \"{}\"", billing.id), "").await;
    assert_eq!(listed.iter().map(summary).collect::<Vec<_>>(), [want]);

    let stale = TaskCategory { id: billing.id.clone(), etag: billing.etag.clone(), ..category("Stale", 0) };
    let status = admin.update_task_category(change_category(stale, &["title"])).await.unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
}

async fn a_category_in_use_cannot_be_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.task_admin("t1");
    let billing = create_category(&mut admin, category("Billing", 10)).await;
    let task = create_task(&mut admin, Task { category_id: billing.id.clone(), ..titled("Send invoice") }).await;
    let status = admin.delete_task_category(delete_category(&billing.id)).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "IN_USE");
    // A soft-deleted task still has its category: it may be undeleted.
    admin.delete_task(delete(&task.id)).await.expect("delete the task");
    let status = admin.delete_task_category(delete_category(&billing.id)).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "IN_USE");
    assert_eq!(list_categories(&mut admin, false).await, std::slice::from_ref(&billing), "still there, unchanged");

    admin.undelete_task(UndeleteTaskRequest { id: task.id.clone() }).await.expect("undelete the task");
    let moved = Task { category_id: String::new(), ..task_patch(&task.id) };
    let moved = admin.update_task(update_task(moved, &["category_id"])).await.expect("clear the category");
    let moved = moved.into_inner();
    assert!(moved.category_id.is_empty() && moved.category.is_none());
    let deleted = admin.delete_task_category(delete_category(&billing.id)).await.expect("delete once unused");
    assert!(deleted.into_inner().delete_time.is_some());
}

async fn a_deleted_category_is_refused_to_tasks(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.task_admin("t1");
    let mut client = app.tasks("t1");
    let old = create_category(&mut admin, category("Old", 5)).await;
    let kept = create_category(&mut admin, category("Kept", 6)).await;
    let deleted = admin.delete_task_category(delete_category(&old.id)).await.expect("delete").into_inner();
    assert_eq!(deleted.revision, 2);
    assert!(deleted.delete_time.is_some() && deleted.purge_time.is_some());
    assert_eq!(category_titles(&list_categories(&mut client, false).await), ["Kept"]);
    assert_eq!(category_titles(&list_categories(&mut client, true).await), ["Old", "Kept"]);

    let status = client.create_task(create(Task { category_id: old.id.clone(), ..titled("A") })).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "task.category_id");
    let task = create_task(&mut client, Task { category_id: kept.id.clone(), ..titled("B") }).await;
    let moved = Task { category_id: old.id.clone(), ..task_patch(&task.id) };
    let status = client.update_task(update_task(moved, &["category_id"])).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "task.category_id");
    assert_eq!(get_task(&mut client, &task.id).await, task, "unchanged");

    let status = admin.delete_task_category(delete_category(&uuid::Uuid::now_v7().to_string())).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
}

async fn category_changes_appear_in_the_feed(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.task_admin("t1");
    let billing = create_category(&mut admin, category("Billing", 10)).await;
    let renamed = TaskCategory { id: billing.id.clone(), ..category("Invoicing", 0) };
    admin.update_task_category(change_category(renamed, &["title"])).await.expect("rename");
    admin.delete_task_category(delete_category(&billing.id)).await.expect("delete");

    let feed = changes_of(&mut app.changes("t1"), ResourceType::TaskCategory, &billing.id, 3).await;
    assert_eq!(change_kinds(&feed), [ChangeKind::Created, ChangeKind::Updated, ChangeKind::Deleted]);
    assert_eq!(feed.iter().map(|c| c.revision).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(feed.iter().all(|c| c.resource_type == ResourceType::TaskCategory as i32 && c.actor == "user-1"));
    let title = feed[1].changes.iter().find(|c| c.field == "title").expect("title in the diff");
    let text = |s: &str| Some(Value { kind: Some(Kind::StringValue(s.into())) });
    assert_eq!((&title.old_value, &title.new_value), (&text("Billing"), &text("Invoicing")));
}

async fn category_writes_need_tasks_admin(backend: Backend) {
    let app = spawn_app(backend).await;
    let billing = create_category(&mut app.task_admin("t1"), category("Billing", 10)).await;
    let mut writer = app.tasks("t1");
    let renamed = TaskCategory { id: billing.id.clone(), ..category("Mine", 0) };
    let denied = [
        writer.create_task_category(create_category_request(category("Calls", 20))).await.unwrap_err(),
        writer.update_task_category(change_category(renamed, &["title"])).await.unwrap_err(),
        writer.delete_task_category(delete_category(&billing.id)).await.unwrap_err(),
    ];
    for status in denied {
        assert_scope_missing(&status, "tasks.admin");
    }
    let mut reader = app.tasks_as("t1", "reader", "tasks.read");
    assert_eq!(list_categories(&mut reader, true).await, [billing], "a reader lists; nothing changed");
}

// ---------------------------------------------------------------------------
// Tenants

async fn tenants_never_see_each_others_tasks_or_categories(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut alice = app.task_admin("tenant-a");
    let mut bob = app.task_admin("tenant-b");
    let billing = create_category(&mut alice, category("Billing", 10)).await;
    let secret = create_task(&mut alice, Task { category_id: billing.id.clone(), ..titled("Secret") }).await;
    let id = secret.id.clone();

    let renamed = TaskCategory { id: billing.id.clone(), ..category("Mine", 0) };
    let answers: Vec<(&str, Status)> = vec![
        ("get", bob.get_task(GetTaskRequest { id: id.clone(), read_mask: None }).await.unwrap_err()),
        (
            "update",
            bob.update_task(update_task(Task { title: "Mine".into(), ..task_patch(&id) }, &["title"]))
                .await
                .unwrap_err(),
        ),
        ("complete", bob.complete_task(complete_at(&id, "")).await.unwrap_err()),
        ("reopen", bob.reopen_task(reopen_at(&id, "")).await.unwrap_err()),
        ("delete", bob.delete_task(delete(&id)).await.unwrap_err()),
        ("undelete", bob.undelete_task(UndeleteTaskRequest { id: id.clone() }).await.unwrap_err()),
        ("update category", bob.update_task_category(change_category(renamed, &["title"])).await.unwrap_err()),
        ("delete category", bob.delete_task_category(delete_category(&billing.id)).await.unwrap_err()),
    ];
    for (call, status) in answers {
        assert_eq!(status.code(), Code::NotFound, "{call}: {status:?}");
        assert_error(&status, Code::NotFound, "NOT_FOUND");
    }
    assert!(everything(&mut bob).await.is_empty(), "tenant b lists no task");
    assert!(list_categories(&mut bob, true).await.is_empty(), "tenant b lists no category");
    let status = bob.create_task(create(Task { category_id: billing.id.clone(), ..titled("B") })).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "task.category_id");
    let status = bob.create_task(create(Task { parent_id: id.clone(), ..titled("B") })).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "task.parent_id");
    // The title is free in another tenant.
    create_category(&mut bob, category("Billing", 10)).await;
    assert_eq!(get_task(&mut alice, &id).await, secret, "untouched");
    assert_eq!(list_categories(&mut alice, true).await, [billing]);
}

/// A task written as an activity keeps the TaskService's rules.
async fn the_activity_service_keeps_the_task_rules(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut tasks = app.tasks("t1");
    let mut activities = app.activities("t1");
    let task = create_task(
        &mut tasks,
        Task {
            recurrence: "FREQ=DAILY".into(),
            ..Task { deadline: crate::helpers::at(4_102_444_800), ..titled("Recurring") }
        },
    )
    .await;
    let update = |activity: agenda::api::Activity, paths: &[&str]| agenda::api::UpdateActivityRequest {
        activity: Some(activity),
        update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
        allow_missing: false,
        comment: None,
    };
    let patch = |id: &str| agenda::api::Activity { id: id.into(), ..Default::default() };
    let cases = [
        (agenda::api::Activity { r#type: "note".into(), ..patch(&task.id) }, "type", "activity.type"),
        (
            agenda::api::Activity { status: agenda::api::Status::Completed as i32, ..patch(&task.id) },
            "status",
            "activity.status",
        ),
        (patch(&task.id), "due_time", "activity.due_time"),
    ];
    for (sent, path, field) in cases {
        let status = activities.update_activity(update(sent, &[path])).await.unwrap_err();
        assert_field_error(&status, tonic::Code::InvalidArgument, "FIELD_INVALID", field);
    }
    let created = agenda::api::CreateActivityRequest {
        activity: Some(agenda::api::Activity { subject: "Sneaky".into(), r#type: "task".into(), ..Default::default() }),
        request_id: String::new(),
    };
    let status = activities.create_activity(created).await.unwrap_err();
    assert_field_error(&status, tonic::Code::InvalidArgument, "FIELD_INVALID", "activity.type");
    // What is the activity's own may change.
    let moved = agenda::api::Activity { location: "Room 4".into(), ..patch(&task.id) };
    activities.update_activity(update(moved, &["location"])).await.expect("an activity field of a task");
    assert_eq!(get_task(&mut tasks, &task.id).await.recurrence, "FREQ=DAILY", "the task fields stay");
}
