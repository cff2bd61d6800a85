//! ActivityService: create and its defaults, validation, sanitizing, updates,
//! parents and cycles, participants, filters, order and pages, batches,
//! soft delete, tenants, request ids and scopes, as a caller sees them.

use std::collections::{BTreeSet, HashMap, HashSet};

use agenda::api::{
    self, Activity, ActivityType, AddParticipantRequest, Assignee, BatchCreateActivitiesRequest,
    BatchDeleteActivitiesRequest, BatchGetActivitiesRequest, BatchUpdateActivitiesRequest, ChangeKind,
    CreateActivityRequest, CreateActivityTypeRequest, DeleteActivityRequest, DeleteActivityTypeRequest,
    GetActivityRequest, ListActivitiesRequest, ListActivityRevisionsRequest, ListActivityTypesRequest, Participant,
    RelatedRecord, RemoveParticipantRequest, ResourceType, RevisionKind, RichText, TextFormat, UndeleteActivityRequest,
    UpdateActivityRequest, UpdateActivityTypeRequest,
};
use prost_types::{Duration, FieldMask, Struct, Timestamp, Value, value::Kind};
use tonic::Code;

use crate::helpers::{
    Activities, Backend, all_revisions, assert_error, assert_field_error, assert_safe_html, changes_of, new_contacts,
    spawn_app, token, token_as, violation_fields,
};

on_both_backends!(
    create_fills_in_the_defaults,
    create_round_trips_every_field,
    invalid_activities_are_refused_field_by_field_and_change_nothing,
    details_are_sanitized_in_every_format,
    details_nested_too_deeply_are_refused,
    plain_details_are_escaped_and_html_keeps_safe_markup,
    a_mask_changes_only_the_fields_it_names,
    a_priority_change_makes_a_revision,
    an_update_that_changes_nothing_keeps_revision_and_etag,
    a_stale_etag_is_aborted,
    output_only_and_unknown_mask_paths_are_refused,
    a_parent_in_the_tenant_is_accepted,
    an_activity_cannot_be_its_own_parent,
    a_parent_below_the_activity_is_a_cycle,
    an_activity_has_at_most_32_ancestors,
    concurrent_opposite_reparentings_let_exactly_one_win,
    add_participant_is_idempotent,
    remove_participant_is_idempotent,
    participant_faults_name_their_field,
    participant_filters_select_exactly_the_matching_activities,
    field_filters_select_what_they_say,
    the_default_order_is_newest_occur_time_first,
    order_by_priority_desc_then_occur_time,
    pages_of_ten_walk_25_activities_exactly_once,
    batch_create_is_all_or_nothing,
    batch_update_reassigns_every_activity_of_a_leaver,
    batch_get_answers_in_the_order_asked,
    batch_delete_is_all_or_nothing,
    delete_is_soft_and_undelete_restores,
    tenants_never_see_each_others_activities,
    custom_types_belong_to_their_tenant,
    a_request_id_replays_the_first_activity,
    writes_need_the_write_scope_and_types_the_admin_scope,
);

const DAY: i64 = 86_400;
/// 2026-01-01T00:00:00Z.
const JAN_1: i64 = 1_767_225_600;

fn activity(subject: &str) -> Activity {
    Activity { subject: subject.into(), ..Default::default() }
}

/// An activity carrying only `id`, to be filled in for an update.
fn patch(id: &str) -> Activity {
    Activity { id: id.into(), ..Default::default() }
}

fn create(activity: Activity) -> CreateActivityRequest {
    CreateActivityRequest { activity: Some(activity), request_id: String::new() }
}

async fn create_ok(client: &mut Activities, activity: Activity) -> Activity {
    client.create_activity(create(activity)).await.expect("create").into_inner()
}

async fn batch_create(client: &mut Activities, activities: Vec<Activity>) -> Vec<Activity> {
    let requests = activities.into_iter().map(create).collect();
    client
        .batch_create_activities(BatchCreateActivitiesRequest { requests })
        .await
        .expect("batch create")
        .into_inner()
        .activities
}

async fn get(client: &mut Activities, id: &str) -> Activity {
    client.get_activity(GetActivityRequest { id: id.into(), read_mask: None }).await.expect("get").into_inner()
}

/// An update of the fields named in `paths`; without paths, no mask.
fn update(activity: Activity, paths: &[&str]) -> UpdateActivityRequest {
    UpdateActivityRequest {
        activity: Some(activity),
        update_mask: (!paths.is_empty()).then(|| FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
        allow_missing: false,
        comment: None,
    }
}

async fn reparent(client: &mut Activities, id: &str, parent_id: &str) -> Result<Activity, tonic::Status> {
    let sent = Activity { parent_id: parent_id.into(), ..patch(id) };
    client.update_activity(update(sent, &["parent_id"])).await.map(|r| r.into_inner())
}

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

fn rfc3339(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0).expect("time").to_rfc3339()
}

fn days(n: i64) -> Option<Duration> {
    Some(Duration { seconds: n * DAY, nanos: 0 })
}

fn participant(contact_id: &str, role: &str) -> Participant {
    Participant { contact_id: contact_id.into(), role: role.into() }
}

/// Participants as sorted (contact, role) pairs, for comparisons that do not
/// depend on the order the server keeps them in.
fn pairs(participants: &[Participant]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> =
        participants.iter().map(|p| (p.contact_id.clone(), p.role.clone())).collect();
    pairs.sort();
    pairs
}

fn related(kind: &str, id: &str) -> RelatedRecord {
    RelatedRecord { r#type: kind.into(), id: id.into() }
}

fn text(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

fn number(n: f64) -> Value {
    Value { kind: Some(Kind::NumberValue(n)) }
}

fn fields(pairs: &[(&str, Value)]) -> Option<Struct> {
    Some(Struct { fields: pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() })
}

fn details(format: TextFormat, raw: &str) -> Option<RichText> {
    Some(RichText { format: format as i32, raw: raw.into(), html: String::new() })
}

fn list(filter: &str, order_by: &str, page_size: i32, page_token: &str) -> ListActivitiesRequest {
    ListActivitiesRequest {
        page_size,
        page_token: page_token.into(),
        filter: filter.into(),
        order_by: order_by.into(),
        show_deleted: false,
        read_mask: None,
    }
}

/// Every activity the filter and order select, page after page.
async fn walk(client: &mut Activities, filter: &str, order_by: &str, page_size: i32) -> Vec<Activity> {
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_activities(list(filter, order_by, page_size, &token))
            .await
            .unwrap_or_else(|s| panic!("{filter:?} / {order_by:?}: {s:?}"))
            .into_inner();
        seen.extend(page.activities);
        if page.next_page_token.is_empty() {
            return seen;
        }
        token = page.next_page_token;
    }
}

/// Every activity of the client's tenant, soft-deleted ones too.
async fn everything(client: &mut Activities) -> Vec<Activity> {
    let request = ListActivitiesRequest { page_size: 1000, show_deleted: true, ..Default::default() };
    client.list_activities(request).await.expect("list").into_inner().activities
}

fn subjects(activities: &[Activity]) -> Vec<&str> {
    activities.iter().map(|a| a.subject.as_str()).collect()
}

fn site_visit() -> CreateActivityTypeRequest {
    CreateActivityTypeRequest {
        activity_type: Some(ActivityType {
            key: "site_visit".into(),
            display_name: "Site visit".into(),
            localized_names: [("de".to_string(), "Vor-Ort-Termin".to_string())].into(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

// ---------------------------------------------------------------------------
// Create

async fn create_fills_in_the_defaults(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let before = chrono::Utc::now().timestamp();
    let created = create_ok(&mut client, activity("Call Ada")).await;
    let after = chrono::Utc::now().timestamp();
    let id = uuid::Uuid::parse_str(&created.id).expect("a UUID id");
    assert_eq!(id.get_version_num(), 7, "ids are UUIDv7");
    assert_eq!(created.r#type, "note");
    assert_eq!(created.type_display_name, "Note");
    assert_eq!(created.status, api::Status::Scheduled as i32, "the stored default, not UNSPECIFIED");
    assert_eq!(created.priority, api::Priority::Normal as i32);
    let occur = created.occur_time.as_ref().expect("occur_time defaults to the create time");
    assert!(occur.seconds >= before && occur.seconds <= after, "{occur:?} not within [{before}, {after}]");
    assert_eq!(created.revision, 1);
    assert!(!created.etag.is_empty());
    assert_eq!((created.created_by.as_str(), created.updated_by.as_str()), ("user-1", "user-1"));
    assert!(created.create_time.is_some());
    assert!(created.delete_time.is_none() && created.purge_time.is_none());
    assert_eq!(get(&mut client, &created.id).await, created);

    let explicit = create_ok(
        &mut client,
        Activity {
            status: api::Status::Unspecified as i32,
            priority: api::Priority::Unspecified as i32,
            ..activity("Explicitly unspecified")
        },
    )
    .await;
    assert_eq!((explicit.status, explicit.priority), (api::Status::Scheduled as i32, api::Priority::Normal as i32));
}

async fn create_round_trips_every_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let contacts = new_contacts(&app, "t1", 3).await;
    let parent = create_ok(&mut client, activity("First call")).await;
    let sent = Activity {
        id: "ignored".into(),
        revision: 99,
        etag: "ignored".into(),
        type_display_name: "ignored".into(),
        created_by: "ignored".into(),
        r#type: "call".into(),
        subject: "Follow-up call".into(),
        details: Some(RichText { format: 0, raw: "**Agreed** on _terms_".into(), html: "ignored".into() }),
        status: api::Status::InProgress as i32,
        priority: api::Priority::High as i32,
        occur_time: at(JAN_1 + 9 * 3600),
        due_time: at(JAN_1 + 10 * 3600),
        duration: Some(Duration { seconds: 45 * 60, nanos: 0 }),
        location: "Berlin".into(),
        phone_number: "+49 30 1234567".into(),
        medium: api::Medium::Phone as i32,
        parent_id: parent.id.clone(),
        source_contact_id: contacts[2].clone(),
        assignee: Some(Assignee { user_id: "u-7".into(), group: "sales".into() }),
        participants: vec![
            participant(&contacts[0], ""),
            participant(&contacts[1], "attendee"),
            participant(&contacts[0], "source"),
        ],
        related: vec![related("case", "42"), related("opportunity", "OPP-1")],
        custom_fields: fields(&[("source", text("web")), ("score", number(3.0))]),
        is_test: true,
        is_auto: true,
        result: "left a message".into(),
        ..Default::default()
    };
    let created = create_ok(&mut client, sent.clone()).await;
    assert_ne!(created.id, "ignored");
    assert_eq!((created.r#type.as_str(), created.type_display_name.as_str()), ("call", "Call"));
    assert_eq!(created.subject, "Follow-up call");
    assert_eq!((created.status, created.priority, created.medium), (sent.status, sent.priority, sent.medium));
    assert_eq!(
        (&created.occur_time, &created.due_time, &created.duration),
        (&sent.occur_time, &sent.due_time, &sent.duration)
    );
    assert_eq!((created.location.as_str(), created.phone_number.as_str()), ("Berlin", "+49 30 1234567"));
    assert_eq!(
        (created.parent_id.as_str(), created.source_contact_id.as_str()),
        (parent.id.as_str(), contacts[2].as_str())
    );
    assert_eq!(created.assignee, sent.assignee);
    assert_eq!(created.custom_fields, sent.custom_fields);
    assert_eq!((created.is_test, created.is_auto, created.result.as_str()), (true, true, "left a message"));
    let rich = created.details.clone().expect("details");
    assert_eq!(rich.format, TextFormat::Markdown as i32, "unspecified format is Markdown");
    assert_eq!(rich.raw, "**Agreed** on _terms_");
    assert!(rich.html.contains("<strong>Agreed</strong>") && rich.html.contains("<em>terms</em>"), "{}", rich.html);
    let want = vec![
        participant(&contacts[0], "target"),
        participant(&contacts[1], "attendee"),
        participant(&contacts[0], "source"),
    ];
    assert_eq!(pairs(&created.participants), pairs(&want), "an empty role is target");
    let mut got: Vec<(String, String)> = created.related.iter().map(|r| (r.r#type.clone(), r.id.clone())).collect();
    got.sort();
    assert_eq!(got, [("case".to_string(), "42".to_string()), ("opportunity".to_string(), "OPP-1".to_string())]);
    assert_eq!((created.revision, created.created_by.as_str()), (1, "user-1"));
    assert_eq!(get(&mut client, &created.id).await, created, "what create returns is what is stored");
}

async fn invalid_activities_are_refused_field_by_field_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let mine = new_contacts(&app, "t1", 3).await;
    let theirs = new_contacts(&app, "t2", 1).await;
    app.contacts("t1")
        .delete_contact(agenda::api::DeleteContactRequest { id: mine[2].clone(), etag: String::new() })
        .await
        .expect("delete a contact");
    let ghost = uuid::Uuid::now_v7().to_string();
    // 101 distinct (contact, role) pairs: only their number is wrong.
    let many: Vec<Participant> = (0..101).map(|i| participant(&mine[i % 2], &format!("r{}", i / 2))).collect();
    let links: Vec<RelatedRecord> = (0..33).map(|i| related("case", &i.to_string())).collect();
    let cases: Vec<(Activity, &str, &str)> = vec![
        (activity(""), "FIELD_REQUIRED", "activity.subject"),
        (activity("   "), "FIELD_REQUIRED", "activity.subject"),
        (activity(&"x".repeat(256)), "FIELD_INVALID", "activity.subject"),
        (Activity { r#type: "site_visit".into(), ..activity("A") }, "FIELD_INVALID", "activity.type"),
        (Activity { r#type: "Call".into(), ..activity("A") }, "FIELD_INVALID", "activity.type"),
        (
            Activity { occur_time: at(JAN_1 + 3600), due_time: at(JAN_1), ..activity("A") },
            "FIELD_INVALID",
            "activity.due_time",
        ),
        (Activity { duration: days(367), ..activity("A") }, "FIELD_INVALID", "activity.duration"),
        (
            Activity { duration: Some(Duration { seconds: -1, nanos: 0 }), ..activity("A") },
            "FIELD_INVALID",
            "activity.duration",
        ),
        (Activity { status: 99, ..activity("A") }, "FIELD_INVALID", "activity.status"),
        (Activity { priority: 99, ..activity("A") }, "FIELD_INVALID", "activity.priority"),
        (Activity { medium: 99, ..activity("A") }, "FIELD_INVALID", "activity.medium"),
        (Activity { location: "l".repeat(256), ..activity("A") }, "FIELD_INVALID", "activity.location"),
        (Activity { phone_number: "1".repeat(65), ..activity("A") }, "FIELD_INVALID", "activity.phone_number"),
        (Activity { result: "r".repeat(256), ..activity("A") }, "FIELD_INVALID", "activity.result"),
        (
            Activity { assignee: Some(Assignee { user_id: "u".repeat(256), group: String::new() }), ..activity("A") },
            "FIELD_INVALID",
            "activity.assignee.user_id",
        ),
        (
            Activity {
                participants: vec![participant(&mine[0], "target"), participant(&mine[1], "Bad-Role")],
                ..activity("A")
            },
            "FIELD_INVALID",
            "activity.participants[1].role",
        ),
        (
            Activity {
                participants: vec![
                    participant(&mine[0], "attendee"),
                    participant(&mine[1], "attendee"),
                    participant(&mine[0], "attendee"),
                ],
                ..activity("A")
            },
            "FIELD_INVALID",
            "activity.participants[2]",
        ),
        (
            Activity {
                participants: vec![participant(&mine[0], "target"), participant(&mine[0], "")],
                ..activity("A")
            },
            "FIELD_INVALID",
            "activity.participants[1]",
        ),
        (
            Activity { participants: vec![participant(&theirs[0], "")], ..activity("A") },
            "FIELD_INVALID",
            "activity.participants[0].contact_id",
        ),
        (
            Activity { participants: vec![participant(&mine[0], ""), participant(&ghost, "")], ..activity("A") },
            "FIELD_INVALID",
            "activity.participants[1].contact_id",
        ),
        (
            Activity { participants: vec![participant(&mine[2], "")], ..activity("A") },
            "FIELD_INVALID",
            "activity.participants[0].contact_id",
        ),
        (Activity { source_contact_id: ghost.clone(), ..activity("A") }, "FIELD_INVALID", "activity.source_contact_id"),
        (
            Activity { source_contact_id: theirs[0].clone(), ..activity("A") },
            "FIELD_INVALID",
            "activity.source_contact_id",
        ),
        (Activity { participants: many.clone(), ..activity("A") }, "FIELD_INVALID", "activity.participants"),
        (Activity { related: links.clone(), ..activity("A") }, "FIELD_INVALID", "activity.related"),
        (Activity { related: vec![related("", "1")], ..activity("A") }, "FIELD_REQUIRED", "activity.related[0].type"),
        (Activity { related: vec![related("case", "")], ..activity("A") }, "FIELD_REQUIRED", "activity.related[0].id"),
        (Activity { parent_id: ghost.clone(), ..activity("A") }, "FIELD_INVALID", "activity.parent_id"),
        (Activity { parent_id: "not-a-uuid".into(), ..activity("A") }, "FIELD_INVALID", "activity.parent_id"),
        (
            Activity { details: details(TextFormat::Markdown, &"x".repeat(64 * 1024 + 1)), ..activity("A") },
            "FIELD_INVALID",
            "activity.details.raw",
        ),
        (
            Activity {
                custom_fields: Some(Struct { fields: (0..65).map(|i| (format!("k{i}"), text("v"))).collect() }),
                ..activity("A")
            },
            "FIELD_INVALID",
            "activity.custom_fields",
        ),
    ];
    for (sent, reason, field) in cases {
        let status = client.create_activity(create(sent)).await.unwrap_err();
        assert_field_error(&status, Code::InvalidArgument, reason, field);
        assert_eq!(violation_fields(&status).first().map(String::as_str), Some(field), "{status:?}");
    }
    let status =
        client.create_activity(CreateActivityRequest { activity: None, request_id: String::new() }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_REQUIRED");
    let status = client
        .create_activity(CreateActivityRequest { activity: Some(activity("A")), request_id: "not-a-uuid".into() })
        .await
        .unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "request_id");
    assert!(everything(&mut client).await.is_empty(), "no refused create may write anything");

    // Right at every limit is fine.
    let edge = Activity {
        subject: "x".repeat(255),
        occur_time: at(JAN_1),
        due_time: at(JAN_1),
        duration: days(366),
        participants: many[..100].to_vec(),
        related: links[..32].to_vec(),
        phone_number: "1".repeat(64),
        ..Default::default()
    };
    let made = create_ok(&mut client, edge).await;
    assert_eq!((made.participants.len(), made.related.len()), (100, 32));
    assert_eq!(made.duration, days(366));
}

// ---------------------------------------------------------------------------
// Sanitizing

/// Markup that must lose its script in MARKDOWN (raw HTML passes through
/// CommonMark) and in HTML.
const HTML_PAYLOADS: &[&str] = &[
    "<script>alert(1)</script>",
    "hello <script>alert(1)</script> world",
    "<SCRIPT SRC=https://evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<IMG SRC=x OnErRoR=alert(1)>",
    "<a href=\"JaVaScRiPt:alert(1)\">x</a>",
    "<a href=\"&#106;avascript:alert(1)\">x</a>",
    "<a href=\"&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;&#x3A;alert(1)\">x</a>",
    "<a href=\"java&#x09;script:alert(1)\">x</a>",
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<iframe src=\"https://evil.example\"></iframe>",
    "<iframe src=\"javascript:alert(1)\"></iframe>",
    "<div style=\"background:url(javascript:alert(1))\">x</div>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<p onclick=\"alert(1)\">x</p>",
    "<body onload=alert(1)>",
    "<object data=\"javascript:alert(1)\"></object>",
    "<style>body{background:url(javascript:alert(1))}</style>",
];

/// Markdown that must lose its script when rendered (as HTML or plain text
/// these are only text).
const MARKDOWN_PAYLOADS: &[&str] = &[
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](&#106;avascript:alert(1))",
    "![x](javascript:alert(1))",
    "[x][r]\n\n[r]: javascript:alert(1)",
    "**bold** <img src=x onerror=alert(1)> _and_ <script>alert(1)</script>",
];

/// PLAIN text is escaped: no markup but the paragraph and line breaks.
fn assert_escaped(html: &str, context: &str) {
    let bare = html.replace("<p>", "").replace("</p>", "").replace("<br>", "").replace("<br />", "");
    assert!(!bare.contains('<') && !bare.contains('>'), "{context}: unescaped markup in {html:?}");
}

/// The checks of `format`: PLAIN escaped, the others sanitized.
fn assert_clean(format: TextFormat, rich: &RichText, context: &str) {
    if format == TextFormat::Plain {
        assert_escaped(&rich.html, context);
    } else {
        assert_safe_html(&rich.html, context);
    }
}

/// The sanitizer's tree builder takes time quadratic in nesting: 64 KiB of
/// `>` took 34 s to sanitize before text was held to 100 levels.
async fn details_nested_too_deeply_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let deep = [
        (TextFormat::Markdown, ">".repeat(65_536)),
        (TextFormat::Markdown, "<div>".repeat(13_000)),
        (TextFormat::Html, "<ul><li>".repeat(8_000)),
    ];
    for (format, raw) in &deep {
        let sent = Activity { details: details(*format, raw), ..activity("Deep") };
        let status = client.create_activity(create(sent)).await.unwrap_err();
        assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "activity.details.raw");
    }
    assert!(everything(&mut client).await.is_empty(), "nothing was created");
    let quoted = format!("{}Still fine", ">".repeat(40));
    let kept =
        create_ok(&mut client, Activity { details: details(TextFormat::Markdown, &quoted), ..activity("Ok") }).await;
    assert!(kept.details.expect("details").html.contains("Still fine"));
}

async fn details_are_sanitized_in_every_format(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let mut cases: Vec<(TextFormat, &str)> = Vec::new();
    for payload in HTML_PAYLOADS {
        for format in [TextFormat::Markdown, TextFormat::Html, TextFormat::Plain] {
            cases.push((format, *payload));
        }
    }
    for payload in MARKDOWN_PAYLOADS {
        for format in [TextFormat::Markdown, TextFormat::Plain] {
            cases.push((format, *payload));
        }
    }
    for (n, (format, payload)) in cases.iter().enumerate() {
        let created =
            create_ok(&mut client, Activity { details: details(*format, payload), ..activity(&format!("XSS {n}")) })
                .await;
        let rich = created.details.expect("details");
        let context = format!("{format:?} {payload:?}");
        assert_eq!(rich.raw, *payload, "{context}: raw is kept as written");
        assert_eq!(rich.format, *format as i32, "{context}");
        assert_clean(*format, &rich, &context);
    }
    // What is stored is as clean as what was answered.
    let stored = everything(&mut client).await;
    assert_eq!(stored.len(), cases.len());
    for one in stored {
        let rich = one.details.expect("details");
        let format = TextFormat::try_from(rich.format).expect("a known format");
        assert_clean(format, &rich, &format!("stored {format:?} {:?}", rich.raw));
    }
}

async fn plain_details_are_escaped_and_html_keeps_safe_markup(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let plain = create_ok(
        &mut client,
        Activity { details: details(TextFormat::Plain, "a <b>bold</b> & more"), ..activity("Plain") },
    )
    .await;
    let html = plain.details.expect("details").html;
    assert!(html.contains("&lt;b&gt;bold&lt;/b&gt;") && html.contains("&amp;"), "{html}");
    assert!(!html.contains("<b>"), "{html}");

    let raw = "<p>Hi <b>there</b>, see <a href=\"https://example.com/x\">this</a></p>";
    let rich = create_ok(&mut client, Activity { details: details(TextFormat::Html, raw), ..activity("Html") }).await;
    let html = rich.details.expect("details").html;
    assert!(html.contains("<b>there</b>") && html.contains("href=\"https://example.com/x\""), "{html}");

    let md =
        create_ok(&mut client, Activity { details: details(TextFormat::Markdown, "<b>x</b>"), ..activity("Md") }).await;
    assert!(md.details.expect("details").html.contains("<b>x</b>"), "inline HTML in Markdown is kept when safe");
}

// ---------------------------------------------------------------------------
// Update

async fn a_mask_changes_only_the_fields_it_names(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let created = create_ok(
        &mut client,
        Activity {
            location: "Berlin".into(),
            priority: api::Priority::High as i32,
            details: details(TextFormat::Markdown, "first"),
            ..activity("Call Ada")
        },
    )
    .await;
    let mut other = app.activities_with(Some(&token_as("t1", "user-2", "activities.write")));
    let sent = Activity {
        subject: "Call Ada back".into(),
        location: "Paris".into(),
        priority: api::Priority::Low as i32,
        ..patch(&created.id)
    };
    let updated = other.update_activity(update(sent, &["subject"])).await.expect("update").into_inner();
    assert_eq!(updated.subject, "Call Ada back");
    assert_eq!(updated.location, "Berlin");
    assert_eq!(updated.priority, api::Priority::High as i32);
    assert_eq!(updated.details, created.details);
    assert_eq!(updated.r#type, "note");
    assert_eq!(updated.revision, 2);
    assert_ne!(updated.etag, created.etag);
    assert_eq!((updated.created_by.as_str(), updated.updated_by.as_str()), ("user-1", "user-2"));
    assert_eq!(updated.create_time, created.create_time);
    assert_eq!(get(&mut client, &created.id).await, updated);
}

async fn a_priority_change_makes_a_revision(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let created = create_ok(&mut client, activity("Call Ada")).await;
    let sent = Activity { priority: api::Priority::High as i32, ..patch(&created.id) };
    let high = client.update_activity(update(sent, &[])).await.expect("update without a mask").into_inner();
    assert_eq!((high.priority, high.revision), (api::Priority::High as i32, 2));
    assert_ne!(high.etag, created.etag);
    assert_eq!(high.subject, "Call Ada", "unset fields are left alone without a mask");
    let sent = Activity { priority: api::Priority::Urgent as i32, ..patch(&created.id) };
    let urgent = client.update_activity(update(sent, &["priority"])).await.expect("update").into_inner();
    assert_eq!((urgent.priority, urgent.revision), (api::Priority::Urgent as i32, 3));
    assert_ne!(urgent.etag, high.etag);
    assert_eq!(all_revisions(&mut client, &created.id).await.len(), 3);
}

async fn an_update_that_changes_nothing_keeps_revision_and_etag(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let contacts = new_contacts(&app, "t1", 1).await;
    let created = create_ok(
        &mut client,
        Activity {
            priority: api::Priority::High as i32,
            location: "Berlin".into(),
            participants: vec![participant(&contacts[0], "attendee")],
            custom_fields: fields(&[("a", text("1"))]),
            details: details(TextFormat::Markdown, "*notes*"),
            ..activity("Call")
        },
    )
    .await;
    let same = Activity { priority: api::Priority::High as i32, location: "Berlin".into(), ..patch(&created.id) };
    let unchanged = client.update_activity(update(same, &["priority", "location"])).await.expect("update").into_inner();
    assert_eq!(unchanged, created, "same revision, etag and update_time");
    let unchanged = client.update_activity(update(created.clone(), &["*"])).await.expect("update").into_inner();
    assert_eq!(unchanged, created);
    let unchanged = client.update_activity(update(created.clone(), &[])).await.expect("update").into_inner();
    assert_eq!(unchanged, created, "sending back what was read changes nothing");
    assert_eq!(all_revisions(&mut client, &created.id).await.len(), 1, "no revision for a no-op");
}

async fn a_stale_etag_is_aborted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let created = create_ok(&mut client, activity("Call")).await;
    let first = Activity { etag: created.etag.clone(), subject: "A".into(), ..patch(&created.id) };
    let updated = client.update_activity(update(first.clone(), &[])).await.expect("update").into_inner();
    let status = client.update_activity(update(Activity { subject: "B".into(), ..first }, &[])).await.unwrap_err();
    let info = assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(info.metadata.get("id"), Some(&created.id));
    let status = client
        .delete_activity(DeleteActivityRequest { id: created.id.clone(), etag: created.etag.clone() })
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(get(&mut client, &created.id).await, updated);
    let second = Activity { etag: updated.etag.clone(), subject: "B".into(), ..patch(&created.id) };
    assert_eq!(client.update_activity(update(second, &[])).await.expect("update").into_inner().subject, "B");
}

async fn output_only_and_unknown_mask_paths_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let created = create_ok(&mut client, activity("Call")).await;
    for (path, reason) in [
        ("type_display_name", "FIELD_OUTPUT_ONLY"),
        ("revision", "FIELD_OUTPUT_ONLY"),
        ("etag", "FIELD_OUTPUT_ONLY"),
        ("create_time", "FIELD_OUTPUT_ONLY"),
        ("update_time", "FIELD_OUTPUT_ONLY"),
        ("delete_time", "FIELD_OUTPUT_ONLY"),
        ("created_by", "FIELD_OUTPUT_ONLY"),
        ("details.html", "FIELD_OUTPUT_ONLY"),
        ("id", "FIELD_IMMUTABLE"),
        ("colour", "FIELD_UNKNOWN"),
        ("participants.role", "FIELD_UNKNOWN"),
    ] {
        let sent = Activity { subject: "X".into(), type_display_name: "Anruf".into(), ..patch(&created.id) };
        let status = client.update_activity(update(sent, &["subject", path])).await.unwrap_err();
        assert_field_error(&status, Code::InvalidArgument, reason, "update_mask");
    }
    assert_eq!(get(&mut client, &created.id).await, created, "nothing changed");
}

// ---------------------------------------------------------------------------
// Parents and cycles

async fn a_parent_in_the_tenant_is_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let parent = create_ok(&mut client, activity("Meeting")).await;
    let child = create_ok(&mut client, Activity { parent_id: parent.id.clone(), ..activity("Follow-up") }).await;
    assert_eq!(child.parent_id, parent.id);
    let other = create_ok(&mut client, activity("Other")).await;
    let moved = reparent(&mut client, &other.id, &parent.id).await.expect("re-parent");
    assert_eq!((moved.parent_id.as_str(), moved.revision), (parent.id.as_str(), 2));
    let children = walk(&mut client, &format!("parent_id = \"{}\"", parent.id), "", 100).await;
    let ids: HashSet<&str> = children.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, HashSet::from([child.id.as_str(), other.id.as_str()]));
    let orphan = reparent(&mut client, &other.id, "").await.expect("clear the parent");
    assert_eq!(orphan.parent_id, "");

    // Another tenant's activity is no parent here.
    let foreign = create_ok(&mut app.activities("t2"), activity("Theirs")).await;
    let status =
        client.create_activity(create(Activity { parent_id: foreign.id.clone(), ..activity("A") })).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "activity.parent_id");
}

async fn an_activity_cannot_be_its_own_parent(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let created = create_ok(&mut client, activity("Loop")).await;
    let status = reparent(&mut client, &created.id, &created.id).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "CYCLE");
    assert_eq!(get(&mut client, &created.id).await, created);
}

async fn a_parent_below_the_activity_is_a_cycle(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let a = create_ok(&mut client, activity("A")).await;
    let b = create_ok(&mut client, Activity { parent_id: a.id.clone(), ..activity("B") }).await;
    let c = create_ok(&mut client, Activity { parent_id: b.id.clone(), ..activity("C") }).await;
    for below in [&c, &b] {
        let status = reparent(&mut client, &a.id, &below.id).await.unwrap_err();
        assert_error(&status, Code::FailedPrecondition, "CYCLE");
    }
    assert_eq!(get(&mut client, &a.id).await, a, "nothing changed");
    // Moving C up next to B is no cycle.
    let moved = reparent(&mut client, &c.id, &a.id).await.expect("re-parent");
    assert_eq!(moved.parent_id, a.id);
}

async fn an_activity_has_at_most_32_ancestors(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    // chain[n] has n ancestors: a root and 32 levels below it.
    let mut chain = vec![create_ok(&mut client, activity("level 0")).await];
    for level in 1..=32 {
        let parent_id = chain[level - 1].id.clone();
        chain.push(create_ok(&mut client, Activity { parent_id, ..activity(&format!("level {level}")) }).await);
    }
    // A 34th activity would have 33 ancestors.
    let status = client
        .create_activity(create(Activity { parent_id: chain[32].id.clone(), ..activity("level 33") }))
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "CYCLE");
    let loose = create_ok(&mut client, activity("loose")).await;
    let status = reparent(&mut client, &loose.id, &chain[32].id).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "CYCLE");
    reparent(&mut client, &loose.id, &chain[31].id).await.expect("32 ancestors are allowed");
    // Moving a subtree counts its deepest descendant: top would have 32
    // ancestors and its child 33.
    let top = create_ok(&mut client, activity("top")).await;
    create_ok(&mut client, Activity { parent_id: top.id.clone(), ..activity("below top") }).await;
    let status = reparent(&mut client, &top.id, &chain[31].id).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "CYCLE");
    reparent(&mut client, &top.id, &chain[30].id).await.expect("the child then has 32 ancestors");
}

async fn concurrent_opposite_reparentings_let_exactly_one_win(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    for round in 0..10 {
        let a = create_ok(&mut client, activity(&format!("a{round}"))).await;
        let b = create_ok(&mut client, activity(&format!("b{round}"))).await;
        let (mut one, mut two) = (app.activities("t1"), app.activities("t1"));
        let (first, second) = tokio::join!(reparent(&mut one, &a.id, &b.id), reparent(&mut two, &b.id, &a.id));
        let (winner, loser, status) = match (first, second) {
            (Ok(won), Err(status)) => (won, &b, status),
            (Err(status), Ok(won)) => (won, &a, status),
            other => panic!("round {round}: exactly one must win and the other be CYCLE: {other:?}"),
        };
        assert_error(&status, Code::FailedPrecondition, "CYCLE");
        assert_eq!(winner.parent_id, loser.id);
        assert_eq!(get(&mut client, &loser.id).await.parent_id, "", "round {round}: the loser is unchanged");
    }
}

// ---------------------------------------------------------------------------
// Participants

fn add(activity_id: &str, contact_id: &str, role: &str) -> AddParticipantRequest {
    AddParticipantRequest { activity_id: activity_id.into(), contact_id: contact_id.into(), role: role.into() }
}

fn remove(activity_id: &str, contact_id: &str, role: &str) -> RemoveParticipantRequest {
    RemoveParticipantRequest { activity_id: activity_id.into(), contact_id: contact_id.into(), role: role.into() }
}

fn kinds(revisions: &[api::ActivityRevision]) -> Vec<RevisionKind> {
    revisions.iter().map(|r| RevisionKind::try_from(r.kind).expect("a known kind")).collect()
}

fn change_kinds(changes: &[api::Change]) -> Vec<ChangeKind> {
    changes.iter().map(|c| ChangeKind::try_from(c.kind).expect("a known kind")).collect()
}

async fn add_participant_is_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let contacts = new_contacts(&app, "t1", 1).await;
    let created = create_ok(&mut client, activity("Meeting")).await;
    let added = client.add_participant(add(&created.id, &contacts[0], "attendee")).await.expect("add").into_inner();
    assert_eq!(added.revision, 2);
    assert_ne!(added.etag, created.etag);
    assert_eq!(pairs(&added.participants), pairs(&[participant(&contacts[0], "attendee")]));
    let again = client.add_participant(add(&created.id, &contacts[0], "attendee")).await.expect("again").into_inner();
    assert_eq!(again, added, "same revision, etag and participants");
    assert_eq!(
        kinds(&all_revisions(&mut client, &created.id).await),
        [RevisionKind::Created, RevisionKind::ParticipantAdded]
    );
    // A later change marks the end of what the calls appended to the feed.
    let marker = Activity { subject: "Meeting (moved)".into(), ..patch(&created.id) };
    client.update_activity(update(marker, &["subject"])).await.expect("update");
    let feed = changes_of(&mut app.changes("t1"), ResourceType::Activity, &created.id, 3).await;
    assert_eq!(change_kinds(&feed), [ChangeKind::Created, ChangeKind::ParticipantAdded, ChangeKind::Updated]);
    assert_eq!(feed.iter().map(|c| c.revision).collect::<Vec<_>>(), [1, 2, 3]);
    // The same contact in another role is another participant; an empty role is target.
    let target = client.add_participant(add(&created.id, &contacts[0], "")).await.expect("add").into_inner();
    assert_eq!(target.revision, 4);
    assert_eq!(
        pairs(&target.participants),
        pairs(&[participant(&contacts[0], "attendee"), participant(&contacts[0], "target")])
    );
}

async fn remove_participant_is_idempotent(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let c = new_contacts(&app, "t1", 2).await;
    let created = create_ok(
        &mut client,
        Activity { participants: vec![participant(&c[0], "attendee"), participant(&c[1], "")], ..activity("Meeting") },
    )
    .await;
    let removed = client.remove_participant(remove(&created.id, &c[0], "attendee")).await.expect("remove");
    let removed = removed.into_inner();
    assert_eq!(removed.revision, 2);
    assert_eq!(pairs(&removed.participants), pairs(&[participant(&c[1], "target")]));
    // Removing it again, a role it never had, or a contact never there changes nothing.
    for (contact, role) in [(&c[0], "attendee"), (&c[0], "source"), (&c[1], "attendee"), (&c[0], "")] {
        let same = client.remove_participant(remove(&created.id, contact, role)).await.expect("remove").into_inner();
        assert_eq!(same, removed, "removing ({contact}, {role:?}) changes nothing");
    }
    let empty = client.remove_participant(remove(&created.id, &c[1], "")).await.expect("remove").into_inner();
    assert_eq!(empty.revision, 3, "an empty role is target");
    assert!(empty.participants.is_empty());
    assert_eq!(
        kinds(&all_revisions(&mut client, &created.id).await),
        [RevisionKind::Created, RevisionKind::ParticipantRemoved, RevisionKind::ParticipantRemoved]
    );
    let marker = Activity { subject: "Meeting (moved)".into(), ..patch(&created.id) };
    client.update_activity(update(marker, &["subject"])).await.expect("update");
    let feed = changes_of(&mut app.changes("t1"), ResourceType::Activity, &created.id, 4).await;
    assert_eq!(
        change_kinds(&feed),
        [ChangeKind::Created, ChangeKind::ParticipantRemoved, ChangeKind::ParticipantRemoved, ChangeKind::Updated]
    );
}

async fn participant_faults_name_their_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let mine = new_contacts(&app, "t1", 1).await;
    let theirs = new_contacts(&app, "t2", 1).await;
    let created = create_ok(&mut client, activity("Meeting")).await;
    let ghost = uuid::Uuid::now_v7().to_string();
    let status = client.add_participant(add(&ghost, &mine[0], "")).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
    let status = client.remove_participant(remove(&ghost, &mine[0], "")).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
    for contact in [&theirs[0], &ghost] {
        let status = client.add_participant(add(&created.id, contact, "")).await.unwrap_err();
        assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "contact_id");
    }
    let status = client.add_participant(add(&created.id, &mine[0], "Bad-Role")).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "role");
    assert_eq!(get(&mut client, &created.id).await, created, "nothing changed");

    let full = create_ok(
        &mut client,
        Activity {
            participants: (0..100).map(|i| participant(&mine[0], &format!("r{i}"))).collect(),
            ..activity("Full")
        },
    )
    .await;
    let status = client.add_participant(add(&full.id, &mine[0], "r100")).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "participants");
    // One already there is still fine: it changes nothing.
    let same = client.add_participant(add(&full.id, &mine[0], "r7")).await.expect("add").into_inner();
    assert_eq!(same, full);
}

// ---------------------------------------------------------------------------
// Filters

/// The indices below `count` that `keep` keeps.
fn matching(count: usize, keep: impl Fn(usize) -> bool) -> BTreeSet<usize> {
    (0..count).filter(|&i| keep(i)).collect()
}

async fn participant_filters_select_exactly_the_matching_activities(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let c = new_contacts(&app, "t1", 5).await;
    // Which contacts (by index) take part in each activity, in which role.
    let fixture: &[&[(usize, &str)]] = &[
        &[],
        &[(0, "source")],
        &[(0, "target"), (1, "source")],
        &[(1, "target")],
        &[(2, "attendee"), (3, "attendee")],
        &[(0, "attendee"), (0, "source")],
        &[(4, "target")],
        &[(1, "attendee"), (2, "source"), (4, "attendee")],
        &[(3, "source"), (0, "target")],
        &[(2, "target"), (3, "target"), (4, "source")],
        &[(1, "source"), (1, "target")],
        &[(3, "attendee")],
    ];
    let made = batch_create(
        &mut client,
        fixture
            .iter()
            .enumerate()
            .map(|(i, set)| Activity {
                participants: set.iter().map(|(k, role)| participant(&c[*k], role)).collect(),
                ..activity(&format!("a{i}"))
            })
            .collect(),
    )
    .await;
    let index: HashMap<String, usize> = made.iter().enumerate().map(|(i, a)| (a.id.clone(), i)).collect();
    let has = |i: usize, contact: Option<usize>, role: Option<&str>| {
        fixture[i].iter().any(|(k, r)| contact.is_none_or(|x| x == *k) && role.is_none_or(|x| x == *r))
    };
    let n = fixture.len();
    let contact = |x: usize| format!("participants.contact_id = \"{}\"", c[x]);

    let mut cases: Vec<(String, BTreeSet<usize>)> = Vec::new();
    for (x, id) in c.iter().enumerate() {
        cases.push((contact(x), matching(n, |i| has(i, Some(x), None))));
        cases.push((format!("participants.contact_id != \"{id}\""), matching(n, |i| !has(i, Some(x), None))));
        cases.push((format!("NOT {}", contact(x)), matching(n, |i| !has(i, Some(x), None))));
        // Both hold on the activity, possibly through different participants.
        cases.push((
            format!("{} AND participants.role = \"source\"", contact(x)),
            matching(n, |i| has(i, Some(x), None) && has(i, None, Some("source"))),
        ));
    }
    for role in ["source", "target", "attendee"] {
        cases.push((format!("participants.role = \"{role}\""), matching(n, |i| has(i, None, Some(role)))));
        cases.push((format!("participants.role != \"{role}\""), matching(n, |i| !has(i, None, Some(role)))));
    }
    for (x, y) in [(0, 1), (2, 4), (1, 3)] {
        cases.push((
            format!("{} OR {}", contact(x), contact(y)),
            matching(n, |i| has(i, Some(x), None) || has(i, Some(y), None)),
        ));
        cases.push((
            format!("{} AND {}", contact(x), contact(y)),
            matching(n, |i| has(i, Some(x), None) && has(i, Some(y), None)),
        ));
    }
    cases.push(("participants.role:\"tend\"".into(), matching(n, |i| has(i, None, Some("attendee")))));
    cases.push((
        format!("({} OR {}) AND NOT participants.role = \"target\"", contact(1), contact(2)),
        matching(n, |i| (has(i, Some(1), None) || has(i, Some(2), None)) && !has(i, None, Some("target"))),
    ));
    // The fixture does tell "same participant" from "same activity" apart.
    assert!(
        cases
            .iter()
            .any(|(f, want)| f == &format!("{} AND participants.role = \"source\"", contact(0)) && want.contains(&2))
    );

    for (filter, expected) in cases {
        let got: BTreeSet<usize> = walk(&mut client, &filter, "", 1000).await.iter().map(|a| index[&a.id]).collect();
        assert_eq!(got, expected, "{filter}");
    }
}

async fn field_filters_select_what_they_say(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let assignee = |user: &str, group: &str| Some(Assignee { user_id: user.into(), group: group.into() });
    let made = batch_create(
        &mut client,
        vec![
            Activity {
                r#type: "call".into(),
                status: api::Status::Completed as i32,
                priority: api::Priority::High as i32,
                is_test: true,
                assignee: assignee("u1", "sales"),
                occur_time: at(JAN_1 + 9 * DAY),
                related: vec![related("case", "42")],
                custom_fields: fields(&[("source", text("web"))]),
                ..activity("Invoice 42 sent")
            },
            Activity {
                r#type: "meeting".into(),
                status: api::Status::Scheduled as i32,
                priority: api::Priority::Low as i32,
                assignee: assignee("u2", "support"),
                occur_time: at(JAN_1 + 40 * DAY),
                related: vec![related("opportunity", "7")],
                custom_fields: fields(&[("source", text("fair"))]),
                ..activity("Kick-off")
            },
            Activity {
                status: api::Status::InProgress as i32,
                assignee: assignee("u1", ""),
                occur_time: at(JAN_1 + 68 * DAY),
                related: vec![related("case", "43"), related("work_package", "42")],
                ..activity("Re: INVOICE question")
            },
            Activity {
                r#type: "call".into(),
                status: api::Status::Cancelled as i32,
                priority: api::Priority::Urgent as i32,
                is_test: true,
                occur_time: at(JAN_1 + 99 * DAY),
                ..activity("Callback")
            },
        ],
    )
    .await;
    let index: HashMap<String, usize> = made.iter().enumerate().map(|(i, a)| (a.id.clone(), i)).collect();
    let (feb, apr) = (rfc3339(JAN_1 + 31 * DAY), rfc3339(JAN_1 + 90 * DAY));
    let cases: Vec<(String, Vec<usize>)> = vec![
        ("related.type = \"case\"".into(), vec![0, 2]),
        ("related.id = \"42\"".into(), vec![0, 2]),
        // Activity 2 has a case and a 42, in different records.
        ("related.type = \"case\" AND related.id = \"42\"".into(), vec![0, 2]),
        ("related.type = \"work_package\"".into(), vec![2]),
        ("related.id != \"42\"".into(), vec![1, 3]),
        ("type = \"call\"".into(), vec![0, 3]),
        ("type = \"note\"".into(), vec![2]),
        ("status != COMPLETED".into(), vec![1, 2, 3]),
        ("status != STATUS_COMPLETED".into(), vec![1, 2, 3]),
        ("status = IN_PROGRESS".into(), vec![2]),
        ("priority = PRIORITY_HIGH".into(), vec![0]),
        ("subject:\"invoice\"".into(), vec![0, 2]),
        ("is_test = true".into(), vec![0, 3]),
        ("is_test = false".into(), vec![1, 2]),
        ("assignee.user_id = \"u1\"".into(), vec![0, 2]),
        ("assignee.group = \"support\"".into(), vec![1]),
        (format!("occur_time >= \"{feb}\" AND occur_time < \"{apr}\""), vec![1, 2]),
        (format!("occur_time < \"{feb}\""), vec![0]),
        ("custom_fields.source = \"web\"".into(), vec![0]),
        ("custom_fields.source = \"fair\" OR is_test = true".into(), vec![0, 1, 3]),
        ("type = \"call\" AND status != COMPLETED".into(), vec![3]),
    ];
    for (filter, expected) in cases {
        let mut got: Vec<usize> = walk(&mut client, &filter, "", 1000).await.iter().map(|a| index[&a.id]).collect();
        got.sort();
        assert_eq!(got, expected, "{filter}");
    }
    for filter in ["colour = \"red\"", "duration = \"60s\"", "occur_time > \"yesterday\""] {
        let status = client.list_activities(list(filter, "", 10, "")).await.unwrap_err();
        assert_field_error(&status, Code::InvalidArgument, "FILTER_INVALID", "filter");
    }
}

// ---------------------------------------------------------------------------
// Order and pages

async fn the_default_order_is_newest_occur_time_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let offsets: [i64; 6] = [3, 1, 5, 0, 4, 2];
    batch_create(
        &mut client,
        offsets.iter().map(|d| Activity { occur_time: at(JAN_1 + d * DAY), ..activity(&format!("day {d}")) }).collect(),
    )
    .await;
    let listed = walk(&mut client, "", "", 100).await;
    assert_eq!(subjects(&listed), ["day 5", "day 4", "day 3", "day 2", "day 1", "day 0"]);
}

async fn order_by_priority_desc_then_occur_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    use api::Priority::{High, Low, Normal, Urgent};
    let fixture: [(api::Priority, i64); 8] =
        [(High, 3), (Low, 1), (Urgent, 2), (High, 1), (Normal, 5), (Urgent, 4), (Low, 0), (High, 2)];
    batch_create(
        &mut client,
        fixture
            .iter()
            .map(|(p, d)| Activity {
                priority: *p as i32,
                occur_time: at(JAN_1 + d * DAY),
                ..activity(&format!("{p:?} {d}"))
            })
            .collect(),
    )
    .await;
    let mut expected = fixture.to_vec();
    expected.sort_by_key(|(p, d)| (std::cmp::Reverse(*p as i32), *d));
    let expected: Vec<String> = expected.iter().map(|(p, d)| format!("{p:?} {d}")).collect();
    let listed = walk(&mut client, "", "priority desc, occur_time", 3).await;
    assert_eq!(subjects(&listed), expected);
    let status = client.list_activities(list("", "location", 10, "")).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "ORDER_BY_INVALID");
}

async fn pages_of_ten_walk_25_activities_exactly_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    // Five activities share each occur_time, so the id must break the ties.
    let made = batch_create(
        &mut client,
        (0..25).map(|i| Activity { occur_time: at(JAN_1 + (i % 5) * DAY), ..activity(&format!("a{i}")) }).collect(),
    )
    .await;
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = client.list_activities(list("", "", 10, &token)).await.expect("list").into_inner();
        sizes.push(page.activities.len());
        seen.extend(page.activities);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sizes, [10, 10, 5]);
    let ids: Vec<&str> = seen.iter().map(|a| a.id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "no activity twice");
    assert_eq!(unique, made.iter().map(|a| a.id.as_str()).collect::<HashSet<_>>(), "every activity once");
    let times: Vec<i64> = seen.iter().map(|a| a.occur_time.as_ref().expect("occur_time").seconds).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first across pages: {times:?}");
}

// ---------------------------------------------------------------------------
// Batches, delete and undelete

async fn batch_create_is_all_or_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let requests = vec![create(activity("A")), create(activity("")), create(activity("C"))];
    let status = client.batch_create_activities(BatchCreateActivitiesRequest { requests }).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_REQUIRED", "requests[1].activity.subject");
    assert_eq!(violation_fields(&status), ["requests[1].activity.subject"]);
    assert!(everything(&mut client).await.is_empty(), "nothing of a failed batch is created");

    let made = batch_create(&mut client, vec![activity("A"), activity("B"), activity("C")]).await;
    assert_eq!(subjects(&made), ["A", "B", "C"], "in request order");
    assert!(made.iter().all(|a| a.revision == 1 && a.r#type == "note"));
    let fetched = client
        .batch_get_activities(BatchGetActivitiesRequest {
            ids: made.iter().map(|a| a.id.clone()).collect(),
            read_mask: None,
        })
        .await
        .expect("batch get")
        .into_inner()
        .activities;
    assert_eq!(fetched, made, "what a batch returns is what is stored");
}

async fn batch_update_reassigns_every_activity_of_a_leaver(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let assigned = |user: &str, subject: &str| Activity {
        assignee: Some(Assignee { user_id: user.into(), group: "sales".into() }),
        ..activity(subject)
    };
    let made = batch_create(
        &mut client,
        vec![assigned("leaver", "A"), assigned("leaver", "B"), assigned("stays", "C"), assigned("leaver", "D")],
    )
    .await;
    let reassign = |a: &Activity| {
        let sent = Activity {
            etag: a.etag.clone(),
            assignee: Some(Assignee { user_id: "successor".into(), group: String::new() }),
            ..patch(&a.id)
        };
        update(sent, &["assignee.user_id"])
    };
    let leavers: Vec<&Activity> =
        made.iter().filter(|a| a.assignee.as_ref().is_some_and(|x| x.user_id == "leaver")).collect();
    let updated = client
        .batch_update_activities(BatchUpdateActivitiesRequest {
            requests: leavers.iter().map(|a| reassign(a)).collect(),
        })
        .await
        .expect("batch update")
        .into_inner()
        .activities;
    assert_eq!(subjects(&updated), ["A", "B", "D"], "in request order");
    for a in &updated {
        assert_eq!(
            a.assignee,
            Some(Assignee { user_id: "successor".into(), group: "sales".into() }),
            "the group is kept"
        );
        assert_eq!(a.revision, 2);
    }
    assert!(walk(&mut client, "assignee.user_id = \"leaver\"", "", 100).await.is_empty());
    assert_eq!(walk(&mut client, "assignee.user_id = \"successor\"", "", 100).await.len(), 3);
    assert_eq!(get(&mut client, &made[2].id).await, made[2], "the others are untouched");

    // One stale etag: nothing changes.
    let mut requests: Vec<UpdateActivityRequest> = updated
        .iter()
        .map(|a| {
            let sent = Activity {
                etag: a.etag.clone(),
                assignee: Some(Assignee { user_id: "third".into(), group: String::new() }),
                ..patch(&a.id)
            };
            update(sent, &["assignee.user_id"])
        })
        .collect();
    requests[1] = reassign(leavers[1]);
    let status = client.batch_update_activities(BatchUpdateActivitiesRequest { requests }).await.unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    for a in &updated {
        assert_eq!(&get(&mut client, &a.id).await, a, "a failed batch changes nothing");
    }
}

async fn batch_get_answers_in_the_order_asked(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let made = batch_create(&mut client, vec![activity("A"), activity("B"), activity("C")]).await;
    let asked = vec![made[2].id.clone(), made[0].id.clone(), made[1].id.clone(), made[0].id.clone()];
    let got = client
        .batch_get_activities(BatchGetActivitiesRequest { ids: asked.clone(), read_mask: None })
        .await
        .expect("batch get")
        .into_inner()
        .activities;
    assert_eq!(got.iter().map(|a| a.id.clone()).collect::<Vec<_>>(), asked);
    assert_eq!(subjects(&got), ["C", "A", "B", "A"]);
    let missing = uuid::Uuid::now_v7().to_string();
    let status = client
        .batch_get_activities(BatchGetActivitiesRequest {
            ids: vec![made[0].id.clone(), missing.clone()],
            read_mask: None,
        })
        .await
        .unwrap_err();
    let info = assert_error(&status, Code::NotFound, "NOT_FOUND");
    assert_eq!(info.metadata.get("id"), Some(&missing));
}

async fn batch_delete_is_all_or_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let made = batch_create(&mut client, vec![activity("A"), activity("B"), activity("C")]).await;
    let mut ids: Vec<String> = made.iter().map(|a| a.id.clone()).collect();
    ids.insert(1, uuid::Uuid::now_v7().to_string());
    let status = client.batch_delete_activities(BatchDeleteActivitiesRequest { ids: ids.clone() }).await.unwrap_err();
    assert_field_error(&status, Code::NotFound, "NOT_FOUND", "ids[1]");
    assert_eq!(walk(&mut client, "", "", 100).await.len(), 3, "nothing was deleted");

    ids.remove(1);
    let deleted =
        client.batch_delete_activities(BatchDeleteActivitiesRequest { ids }).await.expect("delete").into_inner();
    assert_eq!(subjects(&deleted.activities), ["A", "B", "C"]);
    assert!(deleted.activities.iter().all(|a| a.delete_time.is_some() && a.revision == 2));
    assert!(walk(&mut client, "", "", 100).await.is_empty());
    assert_eq!(everything(&mut client).await.len(), 3, "soft-deleted ones show when asked");
}

async fn delete_is_soft_and_undelete_restores(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let created = create_ok(&mut client, activity("Call")).await;
    let status = client.undelete_activity(UndeleteActivityRequest { id: created.id.clone() }).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "NOT_DELETED");
    let deleted = client
        .delete_activity(DeleteActivityRequest { id: created.id.clone(), etag: created.etag.clone() })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.revision, 2);
    let delete_time = deleted.delete_time.as_ref().expect("delete_time");
    let purge_time = deleted.purge_time.as_ref().expect("purge_time");
    assert_eq!(purge_time.seconds - delete_time.seconds, 30 * DAY, "default retention is 30 days");
    assert_eq!(get(&mut client, &created.id).await, deleted, "still readable");
    assert!(walk(&mut client, "", "", 100).await.is_empty(), "hidden from lists");
    let restored = client
        .undelete_activity(UndeleteActivityRequest { id: created.id.clone() })
        .await
        .expect("undelete")
        .into_inner();
    assert_eq!(restored.revision, 3);
    assert!(restored.delete_time.is_none() && restored.purge_time.is_none());
    assert_eq!(restored.subject, "Call");
    assert_eq!(subjects(&walk(&mut client, "", "", 100).await), ["Call"]);
    let status = client
        .delete_activity(DeleteActivityRequest { id: uuid::Uuid::now_v7().to_string(), etag: String::new() })
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
}

// ---------------------------------------------------------------------------
// Tenants, request ids, scopes

async fn tenants_never_see_each_others_activities(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut alice = app.activities("tenant-a");
    let mut bob = app.activities("tenant-b");
    let bobs_contact = new_contacts(&app, "tenant-b", 1).await.remove(0);
    let secret = create_ok(&mut alice, activity("Secret")).await;
    let id = secret.id.clone();

    let answers: Vec<(&str, tonic::Status)> = vec![
        ("get", bob.get_activity(GetActivityRequest { id: id.clone(), read_mask: None }).await.unwrap_err()),
        (
            "update",
            bob.update_activity(update(Activity { subject: "Mine".into(), ..patch(&id) }, &["subject"]))
                .await
                .unwrap_err(),
        ),
        (
            "delete",
            bob.delete_activity(DeleteActivityRequest { id: id.clone(), etag: String::new() }).await.unwrap_err(),
        ),
        ("undelete", bob.undelete_activity(UndeleteActivityRequest { id: id.clone() }).await.unwrap_err()),
        ("add participant", bob.add_participant(add(&id, &bobs_contact, "")).await.unwrap_err()),
        ("remove participant", bob.remove_participant(remove(&id, &bobs_contact, "")).await.unwrap_err()),
        (
            "list revisions",
            bob.list_activity_revisions(ListActivityRevisionsRequest {
                activity_id: id.clone(),
                page_size: 10,
                page_token: String::new(),
            })
            .await
            .unwrap_err(),
        ),
        (
            "batch get",
            bob.batch_get_activities(BatchGetActivitiesRequest { ids: vec![id.clone()], read_mask: None })
                .await
                .unwrap_err(),
        ),
        (
            "batch delete",
            bob.batch_delete_activities(BatchDeleteActivitiesRequest { ids: vec![id.clone()] }).await.unwrap_err(),
        ),
    ];
    for (call, status) in answers {
        assert_eq!(status.code(), Code::NotFound, "{call}: {status:?}");
        assert_error(&status, Code::NotFound, "NOT_FOUND");
    }
    assert!(everything(&mut bob).await.is_empty(), "tenant b lists nothing");
    // Tenant a's parent is no parent for tenant b.
    let status = bob.create_activity(create(Activity { parent_id: id.clone(), ..activity("B") })).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "activity.parent_id");
    assert_eq!(get(&mut alice, &id).await, secret, "untouched");
}

async fn custom_types_belong_to_their_tenant(backend: Backend) {
    let app = spawn_app(backend).await;
    app.activity_admin("tenant-a").create_activity_type(site_visit()).await.expect("create type");
    let visit =
        create_ok(&mut app.activities("tenant-a"), Activity { r#type: "site_visit".into(), ..activity("Visit") }).await;
    assert_eq!(visit.type_display_name, "Site visit");
    let mut bob = app.activities("tenant-b");
    let status =
        bob.create_activity(create(Activity { r#type: "site_visit".into(), ..activity("Visit") })).await.unwrap_err();
    assert_field_error(&status, Code::InvalidArgument, "FIELD_INVALID", "activity.type");
    let types = bob
        .list_activity_types(ListActivityTypesRequest { page_size: 100, show_deleted: true, ..Default::default() })
        .await
        .expect("list types")
        .into_inner()
        .activity_types;
    assert!(types.iter().all(|t| t.key != "site_visit"), "{types:?}");
    assert_eq!(types.len(), 8, "only the system types");
}

async fn a_request_id_replays_the_first_activity(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.activities("t1");
    let request_id = uuid::Uuid::new_v4().to_string();
    let request = CreateActivityRequest { activity: Some(activity("Call")), request_id: request_id.clone() };
    let first = client.create_activity(request.clone()).await.expect("first").into_inner();
    let again = client.create_activity(request.clone()).await.expect("retry").into_inner();
    assert_eq!(again, first);
    assert_eq!(everything(&mut client).await.len(), 1);
    let different = CreateActivityRequest { activity: Some(activity("Other")), request_id };
    let status = client.create_activity(different).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    assert_eq!(everything(&mut client).await.len(), 1);
}

async fn writes_need_the_write_scope_and_types_the_admin_scope(backend: Backend) {
    let app = spawn_app(backend).await;
    for scopes in ["activities.read contacts.write", "admin", "tasks.write changes.read"] {
        let mut client = app.activities_with(Some(&token("t1", scopes)));
        let status = client.create_activity(create(activity("Call"))).await.unwrap_err();
        let info = assert_error(&status, Code::PermissionDenied, "SCOPE_MISSING");
        assert_eq!(info.metadata.get("required_scope").map(String::as_str), Some("activities.write"), "{scopes}");
    }
    let mut reader = app.activities_with(Some(&token("t1", "activities.read")));
    reader.list_activities(list("", "", 10, "")).await.expect("a reader lists");
    reader.list_activity_types(ListActivityTypesRequest::default()).await.expect("a reader lists types");

    let mut writer = app.activities("t1");
    let denied = [
        writer.create_activity_type(site_visit()).await.unwrap_err(),
        writer
            .update_activity_type(UpdateActivityTypeRequest {
                activity_type: Some(ActivityType {
                    key: "call".into(),
                    display_name: "Ring".into(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap_err(),
        writer
            .delete_activity_type(DeleteActivityTypeRequest { key: "call".into(), etag: String::new() })
            .await
            .unwrap_err(),
    ];
    for status in denied {
        let info = assert_error(&status, Code::PermissionDenied, "SCOPE_MISSING");
        assert_eq!(info.metadata.get("required_scope").map(String::as_str), Some("admin"));
    }
    assert!(everything(&mut writer).await.is_empty());
}
