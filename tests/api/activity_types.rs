//! Activity types: the system types every tenant starts with, seeded once
//! even by concurrent first calls; custom types and their names by
//! language; renames, keys, deletes while in use, the feed and tenants.

use std::collections::HashSet;

use agenda::api::{
    Activity, ActivityType, ChangeKind, CreateActivityRequest, CreateActivityTypeRequest, DeleteActivityRequest,
    DeleteActivityTypeRequest, GetActivityRequest, GetActivityTypeRequest, ListActivityTypesRequest, ResourceType,
    UndeleteActivityTypeRequest, UpdateActivityRequest, UpdateActivityTypeRequest,
};
use prost_types::{FieldMask, Value, value::Kind};
use tonic::{Code, Request};

use crate::helpers::{
    Activities, Backend, assert_error, assert_field_error, changes_of, count_rows, spawn_app, spawn_app_with,
    violation_fields, with_language,
};

on_both_backends!(
    a_fresh_tenant_lists_the_eight_system_types,
    concurrent_first_calls_seed_the_system_types_once,
    a_custom_type_is_named_in_the_callers_language,
    a_custom_type_can_be_renamed,
    a_system_type_can_be_renamed_and_reordered,
    the_key_never_changes,
    bad_keys_and_names_are_refused,
    a_taken_key_already_exists,
    a_type_in_use_cannot_be_deleted,
    an_unused_type_is_deleted_and_refused_to_new_activities,
    system_types_cannot_be_deleted,
    type_changes_appear_in_the_feed,
    types_belong_to_their_tenant,
    expired_activities_and_types_are_purged_with_their_journal,
);

/// key, then the name in en, de, fr and es.
const SYSTEM: [(&str, &str, &str, &str, &str); 8] = [
    ("note", "Note", "Notiz", "Note", "Nota"),
    ("call", "Call", "Anruf", "Appel", "Llamada"),
    ("meeting", "Meeting", "Besprechung", "Réunion", "Reunión"),
    ("email", "Email", "E-Mail", "E-mail", "Correo electrónico"),
    ("sms", "SMS", "SMS", "SMS", "SMS"),
    ("letter", "Letter", "Brief", "Lettre", "Carta"),
    ("comment", "Comment", "Kommentar", "Commentaire", "Comentario"),
    ("task", "Task", "Aufgabe", "Tâche", "Tarea"),
];

fn new_type(key: &str, display_name: &str, names: &[(&str, &str)]) -> ActivityType {
    ActivityType {
        key: key.into(),
        display_name: display_name.into(),
        localized_names: names.iter().map(|(lang, name)| (lang.to_string(), name.to_string())).collect(),
        ..Default::default()
    }
}

fn create_type(activity_type: ActivityType) -> CreateActivityTypeRequest {
    CreateActivityTypeRequest { activity_type: Some(activity_type), request_id: String::new() }
}

async fn create_type_ok(admin: &mut Activities, activity_type: ActivityType) -> ActivityType {
    admin.create_activity_type(create_type(activity_type)).await.expect("create type").into_inner()
}

fn site_visit() -> ActivityType {
    ActivityType { sort_order: 1000, ..new_type("site_visit", "Site visit", &[("de", "Vor-Ort-Termin")]) }
}

fn change_type(activity_type: ActivityType, paths: &[&str]) -> UpdateActivityTypeRequest {
    UpdateActivityTypeRequest {
        activity_type: Some(activity_type),
        update_mask: Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
    }
}

fn delete_type(key: &str) -> DeleteActivityTypeRequest {
    DeleteActivityTypeRequest { key: key.into(), etag: String::new() }
}

async fn list_types(client: &mut Activities, show_deleted: bool) -> Vec<ActivityType> {
    let request = ListActivityTypesRequest { page_size: 1000, show_deleted, ..Default::default() };
    client.list_activity_types(request).await.expect("list types").into_inner().activity_types
}

async fn get_type(client: &mut Activities, key: &str) -> ActivityType {
    let request = GetActivityTypeRequest { key: key.into(), read_mask: None };
    client.get_activity_type(request).await.expect("get type").into_inner()
}

fn keys(types: &[ActivityType]) -> Vec<&str> {
    types.iter().map(|t| t.key.as_str()).collect()
}

fn of_type(kind: &str, subject: &str) -> CreateActivityRequest {
    CreateActivityRequest {
        activity: Some(Activity { r#type: kind.into(), subject: subject.into(), ..Default::default() }),
        request_id: String::new(),
    }
}

async fn create_of_type(client: &mut Activities, kind: &str) -> Activity {
    client.create_activity(of_type(kind, "Visit")).await.expect("create activity").into_inner()
}

/// The activity's type_display_name as a caller speaking `lang` sees it.
async fn type_name(client: &mut Activities, id: &str, lang: Option<&str>) -> String {
    let get = GetActivityRequest { id: id.into(), read_mask: None };
    let request = match lang {
        Some(lang) => with_language(get, lang),
        None => Request::new(get),
    };
    client.get_activity(request).await.expect("get").into_inner().type_display_name
}

/// How many system types `types` holds, after checking no key shows twice.
fn system_count(types: &[ActivityType]) -> usize {
    let unique: HashSet<&str> = types.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(unique.len(), types.len(), "no key twice: {types:?}");
    types.iter().filter(|t| t.system).count()
}

async fn a_fresh_tenant_lists_the_eight_system_types(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let types = list_types(&mut client, false).await;
    assert_eq!(keys(&types), SYSTEM.map(|(key, ..)| key), "in sort order");
    for (t, (key, en, de, fr, es)) in types.iter().zip(SYSTEM) {
        assert!(t.system, "{key} is a system type");
        assert_eq!(t.display_name, en, "{key}");
        for (lang, name) in [("en", en), ("de", de), ("fr", fr), ("es", es)] {
            assert_eq!(t.localized_names.get(lang).map(String::as_str), Some(name), "{key} in {lang}");
        }
        assert_eq!(t.created_by, "", "{key}");
        assert!(t.delete_time.is_none());
        assert!(!t.etag.is_empty());
    }
    assert!(types.windows(2).all(|w| w[0].sort_order <= w[1].sort_order), "{types:?}");
    assert_eq!(get_type(&mut client, "meeting").await, types[2]);
}

async fn concurrent_first_calls_seed_the_system_types_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let all = || ListActivityTypesRequest { page_size: 1000, show_deleted: true, ..Default::default() };
    for round in 0..5 {
        let tenant = format!("fresh-{round}");
        let (mut one, mut two) = (app.activities(&tenant), app.activities(&tenant));
        let (first, second) = tokio::join!(one.list_activity_types(all()), two.list_activity_types(all()));
        for answer in [first, second] {
            assert_eq!(system_count(&answer.expect("list types").into_inner().activity_types), 8, "{tenant}");
        }
        assert_eq!(system_count(&list_types(&mut one, true).await), 8, "{tenant}");

        let tenant = format!("fresh-create-{round}");
        let (mut one, mut two) = (app.activities(&tenant), app.activities(&tenant));
        let (created, listed) = tokio::join!(one.create_activity(of_type("", "First")), two.list_activity_types(all()));
        let created = created.expect("create in a fresh tenant").into_inner();
        assert_eq!((created.r#type.as_str(), created.type_display_name.as_str()), ("note", "Note"));
        assert_eq!(system_count(&listed.expect("list types").into_inner().activity_types), 8, "{tenant}");
        assert_eq!(system_count(&list_types(&mut one, true).await), 8, "{tenant}");
    }
}

async fn a_custom_type_is_named_in_the_callers_language(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.activity_admin("t1");
    let created = create_type_ok(&mut admin, site_visit()).await;
    assert_eq!((created.key.as_str(), created.display_name.as_str()), ("site_visit", "Site visit"));
    assert_eq!(created.localized_names, site_visit().localized_names);
    assert!(!created.system);
    assert_eq!((created.revision, created.created_by.as_str()), (1, "user-1"));
    assert!(!created.etag.is_empty());

    let mut client = app.activities("t1");
    let made = client.create_activity(with_language(of_type("site_visit", "Visit ACME"), "de")).await;
    let made = made.expect("create").into_inner();
    assert_eq!(made.type_display_name, "Vor-Ort-Termin");
    for (lang, want) in [
        (Some("de"), "Vor-Ort-Termin"),
        (Some("de-AT"), "Vor-Ort-Termin"),
        (Some("fr"), "Site visit"),
        (Some("en"), "Site visit"),
        (None, "Site visit"),
    ] {
        assert_eq!(type_name(&mut client, &made.id, lang).await, want, "{lang:?}");
    }
    let types = list_types(&mut client, false).await;
    assert_eq!(types.len(), 9);
    assert_eq!(types.last().map(|t| t.key.as_str()), Some("site_visit"), "sorted by sort_order");
}

async fn a_custom_type_can_be_renamed(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.activity_admin("t1");
    let created = create_type_ok(&mut admin, site_visit()).await;
    let mut client = app.activities("t1");
    let visit = create_of_type(&mut client, "site_visit").await;
    let names = [("de", "Außentermin"), ("fr", "Visite sur site")];
    let renamed = admin
        .update_activity_type(change_type(
            new_type("site_visit", "On-site visit", &names),
            &["display_name", "localized_names"],
        ))
        .await
        .expect("rename")
        .into_inner();
    assert_eq!(renamed.display_name, "On-site visit");
    assert_eq!(renamed.localized_names, new_type("site_visit", "", &names).localized_names);
    assert_eq!(renamed.revision, 2);
    assert_ne!(renamed.etag, created.etag);
    assert_eq!(get_type(&mut client, "site_visit").await, renamed);
    for (lang, want) in [(Some("de"), "Außentermin"), (Some("fr-CA"), "Visite sur site"), (None, "On-site visit")] {
        assert_eq!(type_name(&mut client, &visit.id, lang).await, want, "{lang:?}");
    }
    let stale = ActivityType { etag: created.etag.clone(), ..new_type("site_visit", "Stale", &[]) };
    let status = admin.update_activity_type(change_type(stale, &["display_name"])).await.unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
}

async fn a_system_type_can_be_renamed_and_reordered(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.activity_admin("t1");
    let mut client = app.activities("t1");
    let call = create_of_type(&mut client, "call").await;
    let names = [("en", "Phone call"), ("de", "Telefonat")];
    let renamed = admin
        .update_activity_type(change_type(new_type("call", "Phone call", &names), &["display_name", "localized_names"]))
        .await
        .expect("rename a system type")
        .into_inner();
    assert!(renamed.system, "still a system type");
    assert_eq!(renamed.display_name, "Phone call");
    for (lang, want) in [(Some("de"), "Telefonat"), (None, "Phone call"), (Some("fr"), "Phone call")] {
        assert_eq!(type_name(&mut client, &call.id, lang).await, want, "{lang:?}");
    }
    let moved = ActivityType { sort_order: 10_000, ..new_type("call", "", &[]) };
    let moved = admin.update_activity_type(change_type(moved, &["sort_order"])).await.expect("reorder").into_inner();
    assert_eq!((moved.sort_order, moved.display_name.as_str()), (10_000, "Phone call"), "only the sort order changed");
    let types = list_types(&mut client, false).await;
    assert_eq!(types.last().map(|t| t.key.as_str()), Some("call"));
}

async fn the_key_never_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.activity_admin("t1");
    let created = create_type_ok(&mut admin, site_visit()).await;
    let status = admin.update_activity_type(change_type(new_type("site_visit", "X", &[]), &["key"])).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_IMMUTABLE");
    for (path, reason) in
        [("system", "FIELD_OUTPUT_ONLY"), ("revision", "FIELD_OUTPUT_ONLY"), ("colour", "FIELD_UNKNOWN")]
    {
        let sent = change_type(new_type("site_visit", "X", &[]), &["display_name", path]);
        let status = admin.update_activity_type(sent).await.unwrap_err();
        assert_field_error(&status, Code::InvalidArgument, reason, "update_mask");
    }
    assert_eq!(get_type(&mut admin, "site_visit").await, created, "nothing changed");
}

async fn bad_keys_and_names_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.activity_admin("t1");
    let long = "k".repeat(65);
    for key in ["Site_Visit", "1visit", "site-visit", "site visit", "_visit", "visité", long.as_str()] {
        let status = admin.create_activity_type(create_type(new_type(key, "Visit", &[]))).await.unwrap_err();
        assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "activity_type.key");
        assert_eq!(violation_fields(&status), ["activity_type.key"], "{key}");
    }
    let status = admin.create_activity_type(create_type(new_type("visit", "", &[]))).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_REQUIRED", "activity_type.display_name");
    let status = admin.create_activity_type(create_type(new_type("visit", &"n".repeat(256), &[]))).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "activity_type.display_name");
    assert_eq!(list_types(&mut admin, true).await.len(), 8, "nothing was created");
    let longest = "k".repeat(64);
    create_type_ok(&mut admin, new_type(&longest, "Longest", &[])).await;
}

async fn a_taken_key_already_exists(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.activity_admin("t1");
    create_type_ok(&mut admin, site_visit()).await;
    for key in ["site_visit", "call"] {
        let status = admin.create_activity_type(create_type(new_type(key, "Again", &[]))).await.unwrap_err();
        assert_error(&status, Code::AlreadyExists, "DUPLICATE");
    }
    admin.delete_activity_type(delete_type("site_visit")).await.expect("delete");
    let status = admin.create_activity_type(create_type(site_visit())).await.unwrap_err();
    assert_error(&status, Code::AlreadyExists, "DUPLICATE");
}

async fn a_type_in_use_cannot_be_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.activity_admin("t1");
    create_type_ok(&mut admin, site_visit()).await;
    let mut client = app.activities("t1");
    let visit = create_of_type(&mut client, "site_visit").await;
    let status = admin.delete_activity_type(delete_type("site_visit")).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "IN_USE");
    // A soft-deleted activity still has its type: it may be undeleted.
    client.delete_activity(DeleteActivityRequest { id: visit.id.clone(), etag: String::new() }).await.expect("delete");
    let status = admin.delete_activity_type(delete_type("site_visit")).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "IN_USE");
    assert!(get_type(&mut admin, "site_visit").await.delete_time.is_none());
}

async fn an_unused_type_is_deleted_and_refused_to_new_activities(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.activity_admin("t1");
    let mut client = app.activities("t1");
    create_type_ok(&mut admin, new_type("webinar", "Webinar", &[])).await;
    let deleted = admin.delete_activity_type(delete_type("webinar")).await.expect("delete").into_inner();
    assert!(deleted.delete_time.is_some() && deleted.purge_time.is_some());
    assert_eq!(deleted.revision, 2);
    assert_eq!(get_type(&mut client, "webinar").await, deleted, "still readable");
    assert!(!keys(&list_types(&mut client, false).await).contains(&"webinar"));
    assert!(keys(&list_types(&mut client, true).await).contains(&"webinar"));

    let status = client.create_activity(of_type("webinar", "Launch")).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "activity.type");
    let note = create_of_type(&mut client, "note").await;
    let retype = UpdateActivityRequest {
        activity: Some(Activity { id: note.id.clone(), r#type: "webinar".into(), ..Default::default() }),
        update_mask: Some(FieldMask { paths: vec!["type".into()] }),
        allow_missing: false,
        comment: None,
    };
    let status = client.update_activity(retype.clone()).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "activity.type");

    let undelete = || UndeleteActivityTypeRequest { key: "webinar".into() };
    let restored = admin.undelete_activity_type(undelete()).await.expect("undelete").into_inner();
    assert!(restored.delete_time.is_none() && restored.purge_time.is_none());
    assert_eq!(restored.revision, 3);
    let retyped = client.update_activity(retype).await.expect("the type is usable again").into_inner();
    assert_eq!((retyped.r#type.as_str(), retyped.type_display_name.as_str()), ("webinar", "Webinar"));
    let status = admin.undelete_activity_type(undelete()).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "NOT_DELETED");
    let status = admin.delete_activity_type(delete_type("no_such_type")).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
}

async fn system_types_cannot_be_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.activity_admin("t1");
    for (key, ..) in SYSTEM {
        let status = admin.delete_activity_type(delete_type(key)).await.unwrap_err();
        assert_error(&status, Code::FailedPrecondition, "IN_USE");
    }
    let types = list_types(&mut admin, true).await;
    assert_eq!(types.len(), 8);
    assert!(types.iter().all(|t| t.delete_time.is_none()));
}

async fn type_changes_appear_in_the_feed(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut admin = app.activity_admin("t1");
    create_type_ok(&mut admin, site_visit()).await;
    let renamed = new_type("site_visit", "Field visit", &[]);
    admin.update_activity_type(change_type(renamed, &["display_name"])).await.expect("rename");
    admin.delete_activity_type(delete_type("site_visit")).await.expect("delete");
    admin.undelete_activity_type(UndeleteActivityTypeRequest { key: "site_visit".into() }).await.expect("undelete");

    let feed = changes_of(&mut app.changes("t1"), ResourceType::ActivityType, "site_visit", 4).await;
    let kinds: Vec<ChangeKind> = feed.iter().map(|c| ChangeKind::try_from(c.kind).expect("a known kind")).collect();
    assert_eq!(kinds, [ChangeKind::Created, ChangeKind::Updated, ChangeKind::Deleted, ChangeKind::Undeleted]);
    assert_eq!(feed.iter().map(|c| c.revision).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(feed.iter().all(|c| c.resource_type == ResourceType::ActivityType as i32 && c.actor == "user-1"));
    let name = feed[1].changes.iter().find(|c| c.field == "display_name").expect("display_name in the diff");
    let text = |s: &str| Some(Value { kind: Some(Kind::StringValue(s.into())) });
    assert_eq!((&name.old_value, &name.new_value), (&text("Site visit"), &text("Field visit")));
}

async fn types_belong_to_their_tenant(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut alice = app.activity_admin("tenant-a");
    let mut bob = app.activity_admin("tenant-b");
    let theirs = create_type_ok(&mut alice, site_visit()).await;

    let get = GetActivityTypeRequest { key: "site_visit".into(), read_mask: None };
    let answers = [
        bob.get_activity_type(get).await.unwrap_err(),
        bob.update_activity_type(change_type(new_type("site_visit", "Mine", &[]), &["display_name"]))
            .await
            .unwrap_err(),
        bob.delete_activity_type(delete_type("site_visit")).await.unwrap_err(),
        bob.undelete_activity_type(UndeleteActivityTypeRequest { key: "site_visit".into() }).await.unwrap_err(),
    ];
    for status in answers {
        assert_error(&status, Code::NotFound, "NOT_FOUND");
    }
    assert_eq!(keys(&list_types(&mut bob, true).await), SYSTEM.map(|(key, ..)| key));

    // The key is free in another tenant, and renames stay in their tenant.
    let mine = create_type_ok(&mut bob, new_type("site_visit", "Besuch", &[])).await;
    assert_eq!(mine.display_name, "Besuch");
    bob.update_activity_type(change_type(new_type("call", "Ring", &[]), &["display_name"])).await.expect("rename");
    assert_eq!(get_type(&mut alice, "site_visit").await, theirs);
    assert_eq!(get_type(&mut alice, "call").await.display_name, "Call");
    assert_eq!(get_type(&mut bob, "call").await.display_name, "Ring");
}

async fn expired_activities_and_types_are_purged_with_their_journal(backend: Backend) {
    let app = spawn_app_with(backend, |o| {
        o.retention = Some(std::time::Duration::from_millis(200));
        o.purge_interval = Some(std::time::Duration::from_millis(50));
    })
    .await;
    let mut admin = app.activity_admin("t1");
    let contact = crate::helpers::new_contacts(&app, "t1", 1).await.remove(0);
    create_type_ok(&mut admin, new_type("webinar", "Webinar", &[])).await;
    let mut made = Vec::new();
    for subject in ["Gone", "Kept"] {
        let sent = Activity {
            subject: subject.into(),
            r#type: "webinar".into(),
            participants: vec![agenda::api::Participant { contact_id: contact.clone(), role: "attendee".into() }],
            ..Default::default()
        };
        let request = CreateActivityRequest { activity: Some(sent), request_id: String::new() };
        made.push(admin.create_activity(request).await.expect("create").into_inner());
    }
    admin.delete_activity(DeleteActivityRequest { id: made[0].id.clone(), etag: String::new() }).await.expect("delete");
    let feed = changes_of(&mut app.changes("t1"), ResourceType::Activity, &made[0].id, 3).await;
    let kinds: Vec<i32> = feed.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ChangeKind::Created as i32, ChangeKind::Deleted as i32, ChangeKind::Purged as i32]);
    let gone = admin.get_activity(GetActivityRequest { id: made[0].id.clone(), read_mask: None }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(count_rows(&app, "activities").await, 1, "the live activity stays");
    assert_eq!(count_rows(&app, "activity_revisions").await, 1, "the purged activity's journal went with it");
    if backend == Backend::Sqlite {
        // The kept activity's participant: one row per (path, value).
        assert_eq!(count_rows(&app, "activity_elements").await, 2, "the purged activity's lookup rows went");
    }
    // The type is unused once the deleted activity is purged; then it goes too.
    admin.delete_activity(DeleteActivityRequest { id: made[1].id.clone(), etag: String::new() }).await.expect("delete");
    changes_of(&mut app.changes("t1"), ResourceType::Activity, &made[1].id, 3).await;
    admin
        .delete_activity_type(DeleteActivityTypeRequest { key: "webinar".into(), etag: String::new() })
        .await
        .expect("an unused type is deleted");
    let feed = changes_of(&mut app.changes("t1"), ResourceType::ActivityType, "webinar", 3).await;
    assert_eq!(feed.last().map(|c| c.kind), Some(ChangeKind::Purged as i32));
    assert_eq!(count_rows(&app, "activity_revisions").await, 0);
}
