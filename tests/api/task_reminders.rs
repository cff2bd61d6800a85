//! Task reminders: a task with notify_responsible gets one REMINDER_DUE
//! change at deadline − alert_minutes; a new deadline re-arms it;
//! completing, cancelling or deleting the task cancels it; one already due
//! when written fires at once; and replicas on one database send each
//! reminder once. Reminders here fall due a second or two after the write.

use std::time::Duration;

use agenda::api::{self, Change, ChangeKind, DeleteTaskRequest, ResourceType, Task};
use tokio::time::Instant;

use crate::helpers::{
    Backend, Changes, Process, at, changes_of, changes_on, complete, create_task, enabled, get_task, postgres,
    spawn_app, task_patch, tasks_on, titled, update_task,
};

on_both_backends!(
    a_due_reminder_appears_once,
    a_task_without_notify_gets_no_reminder,
    a_new_deadline_rearms_the_reminder,
    completing_cancelling_or_deleting_cancels_the_reminder,
    a_reminder_already_due_fires_at_once,
    reminders_of_one_id_in_two_tenants_carry_their_own_task,
);

/// How long a reminder may take to arrive after it is due.
const ARRIVAL: Duration = Duration::from_secs(15);

/// A whole second 1 to 2 s from now, plus `extra` seconds.
fn soon(extra: i64) -> i64 {
    chrono::Utc::now().timestamp() + 2 + extra
}

/// A task for bob whose reminder is due at `due` (seconds since the epoch),
/// one minute before its deadline.
fn reminded(title: &str, due: i64) -> Task {
    Task {
        deadline: at(due + 60),
        alert_minutes: 1,
        notify_responsible: true,
        responsible_user_id: "bob".into(),
        ..titled(title)
    }
}

/// The REMINDER_DUE changes of task `id` visible now.
async fn reminders(changes: &mut Changes, id: &str) -> Vec<Change> {
    let feed = changes_of(changes, ResourceType::Task, id, 0).await;
    feed.into_iter().filter(|c| c.kind == ChangeKind::ReminderDue as i32).collect()
}

/// Polls the feed until task `id` has `count` reminders, failing if it gets
/// more or if `within` passes first; returns them.
async fn await_reminders(changes: &mut Changes, id: &str, count: usize, within: Duration) -> Vec<Change> {
    let deadline = Instant::now() + within;
    loop {
        let seen = reminders(changes, id).await;
        assert!(seen.len() <= count, "more than {count} reminders for {id}: {seen:?}");
        if seen.len() == count {
            return seen;
        }
        assert!(Instant::now() < deadline, "{count} reminders expected for {id} within {within:?}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Watches the feed for `window` and fails as soon as a task of `expected`
/// has other than its number of reminders.
async fn hold_reminders(changes: &mut Changes, expected: &[(&str, usize)], window: Duration) {
    let until = Instant::now() + window;
    loop {
        for (id, count) in expected {
            let seen = reminders(changes, id).await;
            assert_eq!(seen.len(), *count, "reminders of {id}: {seen:?}");
        }
        if Instant::now() >= until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that `reminder` is task `task`'s, at its revision, from the server, not before `due`.
fn assert_reminder_of(reminder: &Change, task: &Task, due: i64) {
    assert_eq!(reminder.resource_type, ResourceType::Task as i32, "{reminder:?}");
    assert_eq!(reminder.resource_id, task.id);
    assert_eq!(reminder.revision, task.revision, "the task's revision when it fired");
    assert_eq!(reminder.actor, "", "the server's own change");
    let time = reminder.time.as_ref().expect("a time");
    assert!(time.seconds >= due, "fired at {time:?}, before it was due at {due}");
}

async fn a_due_reminder_appears_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let mut changes = app.changes("t1");
    let due = soon(0);
    let task = create_task(&mut client, reminded("Call ACME", due)).await;
    let fired = await_reminders(&mut changes, &task.id, 1, ARRIVAL).await;
    assert_reminder_of(&fired[0], &task, due);
    hold_reminders(&mut changes, &[(task.id.as_str(), 1)], Duration::from_secs(2)).await;
    assert_eq!(get_task(&mut client, &task.id).await.revision, task.revision, "a reminder makes no revision");
}

async fn a_task_without_notify_gets_no_reminder(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let mut changes = app.changes("t1");
    let due = soon(0);
    let silent = create_task(&mut client, Task { notify_responsible: false, ..reminded("Silent", due) }).await;
    let undated = create_task(&mut client, Task { deadline: None, ..reminded("No deadline", due) }).await;
    let control = create_task(&mut client, reminded("Control", due)).await;
    // Once the control's reminder is there, the others' would be too.
    await_reminders(&mut changes, &control.id, 1, ARRIVAL).await;
    let expected = [(silent.id.as_str(), 0), (undated.id.as_str(), 0), (control.id.as_str(), 1)];
    hold_reminders(&mut changes, &expected, Duration::from_millis(1500)).await;
}

async fn a_new_deadline_rearms_the_reminder(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let mut changes = app.changes("t1");
    let first_due = soon(0);
    let task = create_task(&mut client, reminded("Call ACME", first_due)).await;
    let first = await_reminders(&mut changes, &task.id, 1, ARRIVAL).await;
    assert_reminder_of(&first[0], &task, first_due);

    let second_due = soon(0);
    let moved = Task { deadline: at(second_due + 60), ..task_patch(&task.id) };
    let moved = client.update_task(update_task(moved, &["deadline"])).await.expect("move the deadline").into_inner();
    let both = await_reminders(&mut changes, &task.id, 2, ARRIVAL).await;
    assert_eq!(both[0], first[0]);
    assert_reminder_of(&both[1], &moved, second_due);
    hold_reminders(&mut changes, &[(task.id.as_str(), 2)], Duration::from_secs(1)).await;
}

async fn completing_cancelling_or_deleting_cancels_the_reminder(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let mut changes = app.changes("t1");
    // Due 2 to 3 s from now, so that the setup surely ends before.
    let due = soon(1);
    let completed = create_task(&mut client, reminded("Completed", due)).await;
    let cancelled = create_task(&mut client, reminded("Cancelled", due)).await;
    let deleted = create_task(&mut client, reminded("Deleted", due)).await;
    let control = create_task(&mut client, reminded("Control", due)).await;
    complete(&mut client, &completed.id).await;
    let cancel = Task { status: api::Status::Cancelled as i32, ..task_patch(&cancelled.id) };
    client.update_task(update_task(cancel, &["status"])).await.expect("cancel");
    let request = DeleteTaskRequest { id: deleted.id.clone(), etag: String::new() };
    app.task_admin("t1").delete_task(request).await.expect("delete");
    assert!(chrono::Utc::now().timestamp() < due, "the setup took longer than planned");

    await_reminders(&mut changes, &control.id, 1, ARRIVAL).await;
    let expected =
        [(completed.id.as_str(), 0), (cancelled.id.as_str(), 0), (deleted.id.as_str(), 0), (control.id.as_str(), 1)];
    hold_reminders(&mut changes, &expected, Duration::from_millis(1500)).await;
}

async fn a_reminder_already_due_fires_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let mut changes = app.changes("t1");
    let past = chrono::Utc::now().timestamp() - 30;
    let late = create_task(&mut client, reminded("Late", past)).await;
    // Switched on after its time had passed.
    let quiet = create_task(&mut client, Task { notify_responsible: false, ..reminded("Switched on", past) }).await;
    let on = Task { notify_responsible: true, ..task_patch(&quiet.id) };
    let on = client.update_task(update_task(on, &["notify_responsible"])).await.expect("switch on").into_inner();

    let soon_enough = Duration::from_secs(5);
    assert_reminder_of(&await_reminders(&mut changes, &late.id, 1, soon_enough).await[0], &late, past);
    assert_reminder_of(&await_reminders(&mut changes, &on.id, 1, soon_enough).await[0], &on, past);
    hold_reminders(&mut changes, &[(late.id.as_str(), 1), (on.id.as_str(), 1)], Duration::from_millis(1500)).await;
}

// ---------------------------------------------------------------------------
// Two processes on one PostgreSQL database (as in replicas.rs).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_each_reminder_once() {
    if !enabled(Backend::Postgres) {
        eprintln!("PostgreSQL left out by AGENDA_TEST_BACKENDS");
        return;
    }
    let url = postgres().new_database().await;
    let (first, second) = (Process::start(&url).await, Process::start(&url).await);
    let mut writers = [tasks_on(first.channel(), "t1"), tasks_on(second.channel(), "t1")];
    let due = soon(0);
    let mut ids = Vec::new();
    for i in 0..20 {
        let task = reminded(&format!("Task {i}"), due + (i % 2) as i64);
        ids.push(create_task(&mut writers[i % 2], task).await.id);
    }
    let mut changes = changes_on(first.channel(), "t1");
    for id in &ids {
        await_reminders(&mut changes, id, 1, ARRIVAL).await;
    }
    let expected: Vec<(&str, usize)> = ids.iter().map(|id| (id.as_str(), 1)).collect();
    hold_reminders(&mut changes, &expected, Duration::from_secs(2)).await;
}

/// Ids are unique per tenant only: an upsert may give two tenants' tasks one
/// id, and a reminder must still carry its own tenant's task.
async fn reminders_of_one_id_in_two_tenants_carry_their_own_task(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = uuid::Uuid::now_v7().to_string();
    let due = soon(0);
    for tenant in ["t1", "t2"] {
        let sent = Task { id: id.clone(), ..reminded(&format!("Secret of {tenant}"), due) };
        let request =
            agenda::api::UpdateTaskRequest { task: Some(sent), update_mask: None, allow_missing: true, comment: None };
        app.tasks(tenant).update_task(request).await.expect("upsert");
    }
    for tenant in ["t1", "t2"] {
        let mut changes = app.changes(tenant);
        await_reminders(&mut changes, &id, 1, ARRIVAL).await;
        let page = changes
            .list_changes(agenda::api::ListChangesRequest {
                start_after: 0,
                page_size: 1000,
                resource_types: vec![ResourceType::Task as i32],
                include_resources: true,
            })
            .await
            .expect("list changes")
            .into_inner();
        let reminder =
            page.changes.into_iter().find(|c| c.kind == ChangeKind::ReminderDue as i32).expect("the reminder");
        match reminder.resource {
            Some(agenda::api::change::Resource::Task(task)) => {
                assert_eq!(task.title, format!("Secret of {tenant}"), "{tenant}'s reminder carries {tenant}'s task");
            }
            other => panic!("the reminder carries the task: {other:?}"),
        }
    }
}
