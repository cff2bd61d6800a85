//! The revision journal of activities: one revision per change, agreeing
//! with the change feed; diffs in proto3 JSON form; summaries and type names
//! in the caller's language; comments and who may edit them; pages.

use agenda::api::{
    Activity, ActivityRevision, AddParticipantRequest, ChangeKind, CreateActivityRequest, DeleteActivityRequest,
    FieldChange, GetActivityRequest, ListActivitiesRequest, ListActivityRevisionsRequest, Participant,
    RemoveParticipantRequest, ResourceType, RevisionKind, RichText, TextFormat, UndeleteActivityRequest,
    UpdateActivityRequest, UpdateRevisionCommentRequest,
};
use prost_types::{Duration, FieldMask, ListValue, Struct, Timestamp, Value, value::Kind};
use tonic::{Code, Request};

use crate::helpers::{
    Activities, Backend, all_revisions, assert_error, assert_safe_html, changes_of, new_contacts, spawn_app, token_as,
    with_language,
};

on_both_backends!(
    the_journal_and_the_feed_agree,
    diffs_carry_each_field_in_its_json_form,
    summaries_speak_the_callers_language,
    type_names_follow_accept_language,
    a_comment_stays_with_its_revision,
    only_the_author_or_an_admin_edits_a_comment,
    revisions_page_oldest_first_exactly_once,
);

/// 2026-01-01T00:00:00Z.
const JAN_1: i64 = 1_767_225_600;

fn activity(subject: &str) -> Activity {
    Activity { subject: subject.into(), ..Default::default() }
}

fn patch(id: &str) -> Activity {
    Activity { id: id.into(), ..Default::default() }
}

async fn create_ok(client: &mut Activities, activity: Activity) -> Activity {
    let request = CreateActivityRequest { activity: Some(activity), request_id: String::new() };
    client.create_activity(request).await.expect("create").into_inner()
}

fn update(activity: Activity, paths: &[&str]) -> UpdateActivityRequest {
    UpdateActivityRequest {
        activity: Some(activity),
        update_mask: Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
        allow_missing: false,
        comment: None,
    }
}

async fn update_ok(client: &mut Activities, activity: Activity, paths: &[&str]) -> Activity {
    client.update_activity(update(activity, paths)).await.expect("update").into_inner()
}

fn markdown(raw: &str) -> Option<RichText> {
    Some(RichText { format: TextFormat::Markdown as i32, raw: raw.into(), html: String::new() })
}

/// `message` with `accept-language: lang`, or without the header.
fn in_language<T>(message: T, lang: Option<&str>) -> Request<T> {
    match lang {
        Some(lang) => with_language(message, lang),
        None => Request::new(message),
    }
}

fn kinds(revisions: &[ActivityRevision]) -> Vec<RevisionKind> {
    revisions.iter().map(|r| RevisionKind::try_from(r.kind).expect("a known kind")).collect()
}

fn changed_fields(revision: &ActivityRevision) -> Vec<&str> {
    revision.changes.iter().map(|c| c.field.as_str()).collect()
}

fn string(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

fn null() -> Value {
    Value { kind: Some(Kind::NullValue(0)) }
}

fn object(pairs: &[(&str, Value)]) -> Value {
    let fields = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    Value { kind: Some(Kind::StructValue(Struct { fields })) }
}

fn participant(contact_id: &str, role: &str) -> Participant {
    Participant { contact_id: contact_id.into(), role: role.into() }
}

fn custom(pairs: &[(&str, Value)]) -> Option<Struct> {
    Some(Struct { fields: pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() })
}

/// The entry of `field` in the diff of `revision`.
fn change_of<'a>(revision: &'a ActivityRevision, field: &str) -> &'a FieldChange {
    revision.changes.iter().find(|c| c.field == field).unwrap_or_else(|| panic!("no {field} in {revision:?}"))
}

/// The member `key` of a JSON object value.
fn member<'a>(value: &'a Option<Value>, key: &str) -> Option<&'a Value> {
    match value {
        Some(Value { kind: Some(Kind::StructValue(s)) }) => s.fields.get(key),
        _ => None,
    }
}

fn as_str(value: Option<&Value>) -> Option<&str> {
    match value {
        Some(Value { kind: Some(Kind::StringValue(s)) }) => Some(s),
        _ => None,
    }
}

/// A JSON list of participants as sorted (contact_id, role) pairs.
fn participant_pairs(value: &Option<Value>) -> Vec<(String, String)> {
    let Some(Value { kind: Some(Kind::ListValue(ListValue { values })) }) = value else {
        panic!("not a list: {value:?}");
    };
    let mut pairs: Vec<(String, String)> = values
        .iter()
        .map(|v| {
            let v = Some(v.clone());
            let field = |key: &str| as_str(member(&v, key)).unwrap_or_default().to_string();
            (field("contact_id"), field("role"))
        })
        .collect();
    pairs.sort();
    pairs
}

async fn the_journal_and_the_feed_agree(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let contact = new_contacts(&app, "t1", 1).await.remove(0);
    let created = create_ok(&mut client, activity("Call back")).await;
    let id = created.id.clone();
    let mut after = vec![created.revision];
    let high = Activity { priority: agenda::api::Priority::High as i32, ..patch(&id) };
    after.push(update_ok(&mut client, high, &["priority"]).await.revision);
    let add = AddParticipantRequest { activity_id: id.clone(), contact_id: contact.clone(), role: "attendee".into() };
    after.push(client.add_participant(add).await.expect("add").into_inner().revision);
    let remove =
        RemoveParticipantRequest { activity_id: id.clone(), contact_id: contact.clone(), role: "attendee".into() };
    after.push(client.remove_participant(remove).await.expect("remove").into_inner().revision);
    let delete = DeleteActivityRequest { id: id.clone(), etag: String::new() };
    after.push(client.delete_activity(delete).await.expect("delete").into_inner().revision);
    let restored =
        client.undelete_activity(UndeleteActivityRequest { id: id.clone() }).await.expect("undelete").into_inner();
    after.push(restored.revision);
    assert_eq!(after, [1, 2, 3, 4, 5, 6]);

    let journal = all_revisions(&mut client, &id).await;
    assert_eq!(journal.iter().map(|r| r.revision).collect::<Vec<_>>(), after, "one revision per change, oldest first");
    assert_eq!(
        kinds(&journal),
        [
            RevisionKind::Created,
            RevisionKind::Updated,
            RevisionKind::ParticipantAdded,
            RevisionKind::ParticipantRemoved,
            RevisionKind::Deleted,
            RevisionKind::Undeleted,
        ]
    );
    for revision in &journal {
        assert_eq!((revision.activity_id.as_str(), revision.actor.as_str()), (id.as_str(), "user-1"));
        assert!(revision.time.is_some(), "{revision:?}");
    }
    assert!(changed_fields(&journal[0]).contains(&"subject"), "{:?}", journal[0]);
    assert_eq!(changed_fields(&journal[1]), ["priority"]);
    assert_eq!(changed_fields(&journal[2]), ["participants"]);
    assert_eq!(changed_fields(&journal[3]), ["participants"]);
    assert_eq!(changed_fields(&journal[4]), ["delete_time", "purge_time"]);
    assert_eq!(changed_fields(&journal[5]), ["delete_time", "purge_time"]);

    let feed = changes_of(&mut app.changes("t1"), ResourceType::Activity, &id, 6).await;
    assert_eq!(feed.len(), 6, "{feed:?}");
    let feed_kinds: Vec<ChangeKind> =
        feed.iter().map(|c| ChangeKind::try_from(c.kind).expect("a known kind")).collect();
    assert_eq!(
        feed_kinds,
        [
            ChangeKind::Created,
            ChangeKind::Updated,
            ChangeKind::ParticipantAdded,
            ChangeKind::ParticipantRemoved,
            ChangeKind::Deleted,
            ChangeKind::Undeleted,
        ]
    );
    for (revision, change) in journal.iter().zip(&feed) {
        assert_eq!(change.resource_type, ResourceType::Activity as i32);
        assert_eq!(change.revision, revision.revision);
        assert_eq!(change.changes, revision.changes, "the same diff for revision {}", revision.revision);
        assert_eq!(change.actor, revision.actor);
        assert_eq!(change.time, revision.time, "revision {}", revision.revision);
    }
    assert_eq!(feed[5].time, restored.update_time);
}

async fn diffs_carry_each_field_in_its_json_form(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let c = new_contacts(&app, "t1", 2).await;
    let three = Value { kind: Some(Kind::NumberValue(3.0)) };
    let created = create_ok(
        &mut client,
        Activity {
            details: markdown("first"),
            occur_time: Some(Timestamp { seconds: JAN_1 + 9 * 3600, nanos: 0 }),
            participants: vec![participant(&c[0], "")],
            custom_fields: custom(&[("a", string("1"))]),
            ..activity("Call")
        },
    )
    .await;
    let due = JAN_1 + 10 * 3600 + 1800;
    let sent = Activity {
        details: markdown("**second**"),
        priority: agenda::api::Priority::High as i32,
        due_time: Some(Timestamp { seconds: due, nanos: 0 }),
        duration: Some(Duration { seconds: 5400, nanos: 0 }),
        participants: vec![participant(&c[0], ""), participant(&c[1], "attendee")],
        custom_fields: custom(&[("a", string("2")), ("b", three.clone())]),
        ..patch(&created.id)
    };
    let paths = ["details", "priority", "due_time", "duration", "participants", "custom_fields"];
    assert_eq!(update_ok(&mut client, sent, &paths).await.revision, 2);
    let journal = all_revisions(&mut client, &created.id).await;
    let revision = &journal[1];
    assert_eq!(changed_fields(revision), paths, "one entry per changed field, in field order");

    let priority = change_of(revision, "priority");
    assert_eq!(
        (&priority.old_value, &priority.new_value),
        (&Some(string("PRIORITY_NORMAL")), &Some(string("PRIORITY_HIGH")))
    );

    let due_time = change_of(revision, "due_time");
    assert_eq!(due_time.old_value, Some(null()), "unset before");
    let new_due = as_str(due_time.new_value.as_ref()).expect("a timestamp is an RFC 3339 string");
    let parsed = chrono::DateTime::parse_from_rfc3339(new_due).expect("RFC 3339");
    assert_eq!(parsed.timestamp(), due, "{new_due}");

    let duration = change_of(revision, "duration");
    assert_eq!((&duration.old_value, &duration.new_value), (&Some(null()), &Some(string("5400s"))));

    let participants = change_of(revision, "participants");
    assert_eq!(participant_pairs(&participants.old_value), [(c[0].clone(), "target".to_string())]);
    let mut want = [(c[0].clone(), "target".to_string()), (c[1].clone(), "attendee".to_string())];
    want.sort();
    assert_eq!(participant_pairs(&participants.new_value), want);

    let custom_fields = change_of(revision, "custom_fields");
    assert_eq!(custom_fields.old_value, Some(object(&[("a", string("1"))])));
    assert_eq!(custom_fields.new_value, Some(object(&[("a", string("2")), ("b", three)])));

    let details = change_of(revision, "details");
    assert_eq!(as_str(member(&details.old_value, "raw")), Some("first"));
    assert_eq!(as_str(member(&details.new_value, "raw")), Some("**second**"));
    assert_eq!(as_str(member(&details.new_value, "format")), Some("TEXT_FORMAT_MARKDOWN"));
    let html = as_str(member(&details.new_value, "html")).expect("the rendered html is part of the value");
    assert!(html.contains("<strong>second</strong>"), "{html}");
}

async fn summaries_speak_the_callers_language(backend: Backend) {
    const EN: &str = "Priority changed from Normal to High";
    const DE: &str = "Priorität geändert von Normal auf Hoch";
    const FR: &str = "Priorité modifiée de Normale à Haute";
    const ES: &str = "Prioridad cambiada de Normal a Alta";
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let created = create_ok(&mut client, activity("Call")).await;
    let high = Activity { priority: agenda::api::Priority::High as i32, ..patch(&created.id) };
    update_ok(&mut client, high, &["priority"]).await;
    for (lang, want) in [
        (Some("en"), EN),
        (Some("de"), DE),
        (Some("fr"), FR),
        (Some("es"), ES),
        (None, EN),
        (Some("fr-CA"), FR),
        (Some("fr-CA,fr;q=0.9"), FR),
        (Some("de-DE"), DE),
        (Some("es-MX"), ES),
        (Some("pt-BR"), EN),
    ] {
        let request =
            ListActivityRevisionsRequest { activity_id: created.id.clone(), page_size: 10, page_token: String::new() };
        let journal = client
            .list_activity_revisions(in_language(request, lang))
            .await
            .expect("list")
            .into_inner()
            .activity_revisions;
        let summary = journal[1].summary.clone().expect("a summary");
        assert!(summary.raw.contains(want), "{lang:?}: {:?} does not say {want:?}", summary.raw);
        if lang.is_none() {
            let created = journal[0].summary.clone().expect("a summary");
            assert!(created.raw.contains("Activity created"), "{:?}", created.raw);
        }
    }
}

async fn type_names_follow_accept_language(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let request = CreateActivityRequest {
        activity: Some(Activity { r#type: "call".into(), ..activity("Ring Ada") }),
        request_id: String::new(),
    };
    let created = client.create_activity(with_language(request, "de")).await.expect("create").into_inner();
    assert_eq!(created.type_display_name, "Anruf", "the create answers in the caller's language");
    for (lang, want) in [
        (Some("de"), "Anruf"),
        (Some("fr-CA"), "Appel"),
        (Some("fr-CA,fr;q=0.9"), "Appel"),
        (Some("es"), "Llamada"),
        (Some("es-MX"), "Llamada"),
        (Some("en"), "Call"),
        (Some("pt-BR"), "Call"),
        (None, "Call"),
    ] {
        let get = GetActivityRequest { id: created.id.clone(), read_mask: None };
        let got = client.get_activity(in_language(get, lang)).await.expect("get").into_inner();
        assert_eq!(got.type_display_name, want, "{lang:?}");
        let list = ListActivitiesRequest { page_size: 10, ..Default::default() };
        let listed = client.list_activities(in_language(list, lang)).await.expect("list").into_inner();
        assert_eq!(listed.activities[0].type_display_name, want, "list, {lang:?}");
    }
}

fn comment(activity_id: &str, revision: i64, raw: &str) -> UpdateRevisionCommentRequest {
    UpdateRevisionCommentRequest { activity_id: activity_id.into(), revision, comment: markdown(raw) }
}

async fn a_comment_stays_with_its_revision(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let created = create_ok(&mut client, activity("Call")).await;
    let request = UpdateActivityRequest {
        comment: markdown("Customer asked to **move** it"),
        ..update(Activity { priority: agenda::api::Priority::High as i32, ..patch(&created.id) }, &["priority"])
    };
    client.update_activity(request).await.expect("update with a comment");
    update_ok(&mut client, Activity { subject: "Call (moved)".into(), ..patch(&created.id) }, &["subject"]).await;
    let journal = all_revisions(&mut client, &created.id).await;
    assert_eq!(journal.len(), 3);
    let kept = journal[1].comment.clone().expect("the comment of revision 2");
    assert_eq!(kept.raw, "Customer asked to **move** it");
    assert!(kept.html.contains("<strong>move</strong>"), "{}", kept.html);
    for other in [&journal[0], &journal[2]] {
        assert!(other.comment.as_ref().is_none_or(|c| c.raw.is_empty()), "revision {} has no comment", other.revision);
    }
}

async fn only_the_author_or_an_admin_edits_a_comment(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut author = app.activities("t1");
    let mut colleague = app.activities_with(Some(&token_as("t1", "user-2", "activities.write")));
    let created = create_ok(&mut author, activity("Call")).await;
    let id = created.id.clone();
    update_ok(&mut author, Activity { priority: agenda::api::Priority::High as i32, ..patch(&id) }, &["priority"])
        .await;
    update_ok(&mut colleague, Activity { subject: "Call Ada".into(), ..patch(&id) }, &["subject"]).await;

    let edited = author.update_revision_comment(comment(&id, 2, "Asked by **Ada**")).await.expect("the author edits");
    let edited = edited.into_inner();
    assert_eq!((edited.revision, edited.actor.as_str()), (2, "user-1"));
    assert_eq!(edited.comment.as_ref().map(|c| c.raw.as_str()), Some("Asked by **Ada**"));
    let status = colleague.update_revision_comment(comment(&id, 2, "No")).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "NOT_AUTHOR");
    colleague.update_revision_comment(comment(&id, 3, "Renamed")).await.expect("its own revision");
    let status = author.update_revision_comment(comment(&id, 3, "No")).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "NOT_AUTHOR");

    let mut admin = app.activities_with(Some(&token_as("t1", "user-3", "activities.write admin")));
    admin.update_revision_comment(comment(&id, 3, "Checked")).await.expect("an admin edits any comment");
    let mut bare_admin = app.activities_with(Some(&token_as("t1", "user-3", "admin")));
    let status = bare_admin.update_revision_comment(comment(&id, 3, "No")).await.unwrap_err();
    let info = assert_error(&status, Code::PermissionDenied, "SCOPE_MISSING");
    assert_eq!(info.metadata.get("required_scope").map(String::as_str), Some("activities.write"));

    let status = author.update_revision_comment(comment(&id, 99, "No")).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
    let status = app.activities("t2").update_revision_comment(comment(&id, 1, "No")).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");

    let hostile = "**ok** <script>alert(1)</script><img src=x onerror=alert(1)> [x](javascript:alert(1))";
    let cleaned = author.update_revision_comment(comment(&id, 2, hostile)).await.expect("edit").into_inner();
    let cleaned = cleaned.comment.expect("a comment");
    assert_eq!(cleaned.raw, hostile);
    assert!(cleaned.html.contains("<strong>ok</strong>"), "{}", cleaned.html);
    assert_safe_html(&cleaned.html, "comment");

    let journal = all_revisions(&mut author, &id).await;
    assert_eq!(journal.len(), 3, "comment edits make no revision");
    assert_eq!(journal[1].comment.as_ref().map(|c| c.raw.as_str()), Some(hostile));
    assert_eq!(journal[2].comment.as_ref().map(|c| c.raw.as_str()), Some("Checked"));
    let stored = author.get_activity(GetActivityRequest { id: id.clone(), read_mask: None }).await.expect("get");
    assert_eq!(stored.into_inner().revision, 3);

    let removed = author.update_revision_comment(comment(&id, 2, "")).await.expect("remove").into_inner();
    assert!(removed.comment.as_ref().is_none_or(|c| c.raw.is_empty()), "an empty raw removes it: {removed:?}");
}

async fn revisions_page_oldest_first_exactly_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let created = create_ok(&mut client, activity("s")).await;
    for i in 0..30 {
        update_ok(&mut client, Activity { subject: format!("s{i}"), ..patch(&created.id) }, &["subject"]).await;
    }
    let page =
        |page_token: String| ListActivityRevisionsRequest { activity_id: created.id.clone(), page_size: 7, page_token };
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let answer = client.list_activity_revisions(page(token)).await.expect("list").into_inner();
        sizes.push(answer.activity_revisions.len());
        seen.extend(answer.activity_revisions.into_iter().map(|r| r.revision));
        if answer.next_page_token.is_empty() {
            break;
        }
        token = answer.next_page_token;
    }
    assert_eq!(sizes, [7, 7, 7, 7, 3]);
    assert_eq!(seen, (1..=31).collect::<Vec<i64>>());
    let whole = client
        .list_activity_revisions(ListActivityRevisionsRequest { page_size: 0, ..page(String::new()) })
        .await
        .expect("list")
        .into_inner();
    assert_eq!((whole.activity_revisions.len(), whole.next_page_token.as_str()), (31, ""), "50 by default");

    let status = client.list_activity_revisions(page("garbage".into())).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "PAGE_TOKEN_INVALID");
    let missing = ListActivityRevisionsRequest {
        activity_id: uuid::Uuid::now_v7().to_string(),
        page_size: 7,
        page_token: String::new(),
    };
    let status = client.list_activity_revisions(missing).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
}
