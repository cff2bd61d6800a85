//! `agenda.v1.ActivityService`: what is an activity's own (its conversions,
//! the rules that need the database, its revision journal, its names in the
//! caller's language) declared as a [`Resource`]; every standard RPC runs on
//! the shared write path of [`super::resource`], and so do the participant
//! RPCs and the activity types ([`super::activity_type`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine;
use tonic::{Request, Response, Status};

use super::{
    Budget, CHUNK_ROWS,
    activity_type::{ActivityTypeResource, Seeder},
    journal::field_changes,
    resource::{Modified, Mutation, Pipeline, PlainUpdate, Resource, item_prefix},
    rich_text, timestamp,
};
use crate::{
    api::{self, activity_service_server::ActivityService},
    auth::{Principal, Scope},
    domain::{
        Check, Stored,
        activity::{Activity, ActivityFields, MAX_DEPTH, Participant, micros_of, parse_contact_id, parse_role},
        parse_id,
        rich_text::{Format, RichText, render},
        task,
    },
    error::{Error, Reason, Result},
    i18n::{Languages, SYSTEM_TYPES, summary},
    query::{ResourceSpec, list::MAX_PAGE_SIZE},
    store::{
        self, Conn, Db, TxFuture,
        activity::{ActivityTable, RevisionRow, revision_kind},
        change::ChangeRow,
        row_exists,
        sql_types::JsonText,
    },
};

/// The activity as a resource of the shared machinery.
pub struct ActivityResource;

/// The names of a tenant's types, and the caller's languages to pick from.
pub struct TypeNames {
    /// The time of the read, for `task.overdue`.
    now: i64,
    languages: Languages,
    names: HashMap<String, (String, BTreeMap<String, String>)>,
}

impl TypeNames {
    /// The name of type `key` for the caller: a localized one, else the
    /// display name; the built-in names of a system type not stored yet.
    fn name(&self, key: &str) -> String {
        if let Some((display_name, localized)) = self.names.get(key) {
            let pick = self.languages.pick(localized.keys().map(String::as_str));
            return pick.and_then(|tag| localized.get(tag)).unwrap_or(display_name).clone();
        }
        match SYSTEM_TYPES.iter().find(|t| t.key == key) {
            Some(system) => {
                let pick = self.languages.pick(system.names.iter().map(|(tag, _)| *tag));
                system.names.iter().find(|(tag, _)| Some(*tag) == pick).map_or(system.english(), |(_, n)| n).to_string()
            }
            None => key.to_string(),
        }
    }
}

fn invalid(prefix: &str, field: &str, message: String) -> Error {
    Error::invalid(format!("{prefix}{field}"), Reason::FieldInvalid, message)
}

fn cycle(id: &str, message: String) -> Error {
    Error::FailedPrecondition { reason: Reason::Cycle, subject: format!("activity/{id}"), message }
}

/// Where a mutation's errors point: `requests[i].activity.` in a batch,
/// `activity.` for a single call, nothing for the participant RPCs (which
/// name their own fields).
fn prefix(mutation: &Mutation<ActivityFields>, batch: bool) -> String {
    match mutation.kind {
        api::ChangeKind::ParticipantAdded | api::ChangeKind::ParticipantRemoved => String::new(),
        _ => format!("{}activity.", item_prefix(batch, "requests", mutation.index)),
    }
}

/// The contacts a mutation newly names must exist in the tenant.
async fn check_contacts(
    conn: &mut Conn<'_>,
    tenant: &str,
    mutations: &[Mutation<ActivityFields>],
    batch: bool,
) -> Result<()> {
    let mut wanted: Vec<String> = Vec::new();
    for m in mutations {
        let before: HashSet<&str> = m.before.iter().flat_map(|b| b.fields.contacts()).collect();
        wanted.extend(m.after.fields.contacts().filter(|c| !before.contains(c)).map(str::to_string));
    }
    wanted.sort();
    wanted.dedup();
    let missing = store::activity::missing_contacts(conn, tenant, &wanted).await?;
    let Some(contact) = missing.first() else { return Ok(()) };
    for m in mutations {
        let prefix = prefix(m, batch);
        let not_found = format!("{contact:?} is not a contact of this tenant.");
        if m.kind == api::ChangeKind::ParticipantAdded {
            return Err(invalid("", "contact_id", not_found));
        }
        if let Some(i) = m.after.fields.participants.iter().position(|p| p.contact_id == *contact) {
            return Err(invalid(&prefix, &format!("participants[{i}].contact_id"), not_found));
        }
        if m.after.fields.source_contact_id.as_deref() == Some(contact.as_str()) {
            return Err(invalid(&prefix, "source_contact_id", not_found));
        }
    }
    Err(Error::Internal(format!("missing contact {contact:?} named by no mutation")))
}

/// A type taken by a mutation must be a live type of the tenant.
async fn check_types(
    conn: &mut Conn<'_>,
    tenant: &str,
    mutations: &[Mutation<ActivityFields>],
    batch: bool,
) -> Result<()> {
    let taken = |m: &&Mutation<ActivityFields>| {
        m.before.as_ref().is_none_or(|b| b.fields.activity_type != m.after.fields.activity_type)
    };
    let mut wanted: Vec<String> =
        mutations.iter().filter(taken).map(|m| m.after.fields.activity_type.clone()).collect();
    wanted.sort();
    wanted.dedup();
    let live = store::activity_type::live_keys(conn, tenant, &wanted).await?;
    match mutations.iter().filter(taken).find(|m| !live.contains(&m.after.fields.activity_type)) {
        Some(m) => Err(invalid(
            &prefix(m, batch),
            "type",
            format!(
                "{:?} is not an activity type of this tenant (ListActivityTypes lists them).",
                m.after.fields.activity_type
            ),
        )),
        None => Ok(()),
    }
}

/// A new parent must be an activity of the tenant, and the chain above the
/// activity must not come back to it or be deeper than [`MAX_DEPTH`]. The
/// writes that change parents take the tenant's tree lock first, so two of
/// them cannot each close half of a cycle; the chains are read after it.
/// Within a batch, the batch's own new parents count over the stored ones.
pub(crate) async fn check_parents(
    conn: &mut Conn<'_>,
    tenant: &str,
    mutations: &[Mutation<ActivityFields>],
    batch: bool,
    resource: &str,
) -> Result<()> {
    let moved: Vec<&Mutation<ActivityFields>> = mutations
        .iter()
        .filter(|m| m.after.fields.parent_id.is_some())
        .filter(|m| m.before.as_ref().is_none_or(|b| b.fields.parent_id != m.after.fields.parent_id))
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    store::activity::lock_tree(conn, tenant).await?;
    let overrides: HashMap<&str, Option<&str>> =
        mutations.iter().map(|m| (m.after.meta.id.as_str(), m.after.fields.parent_id.as_deref())).collect();
    let mut parents: Vec<String> = moved.iter().filter_map(|m| m.after.fields.parent_id.clone()).collect();
    parents.sort();
    parents.dedup();
    let existing = store::activity::existing(conn, tenant, &parents).await?;
    for m in moved {
        let id = m.after.meta.id.as_str();
        let Some(parent) = m.after.fields.parent_id.as_deref() else { continue };
        if !existing.iter().any(|e| e == parent) && !overrides.contains_key(parent) {
            return Err(invalid(
                &format!("{}{resource}.", item_prefix(batch, "requests", m.index)),
                "parent_id",
                format!("{parent:?} is not an activity of this tenant."),
            ));
        }
        // The follow-ups below the activity move with it.
        // (A created activity can have some too: an upsert under the id of a
        // purged one inherits the follow-ups that still name it.)
        let below = store::activity::height(conn, tenant, id, (MAX_DEPTH + 1) as i64).await? as usize;
        // Walk up from the parent: the stored chain, switching to the
        // batch's state wherever the batch moves an activity.
        let mut depth = below;
        let mut next = Some(parent.to_string());
        'walk: while let Some(current) = next.take() {
            let stored = match overrides.get(current.as_str()) {
                Some(_) => vec![current],
                None => store::activity::ancestors(conn, tenant, &current, (MAX_DEPTH + 1) as i64).await?,
            };
            for ancestor in stored {
                if ancestor == id {
                    return Err(cycle(
                        id,
                        format!("Activity {id:?} cannot follow up {parent:?}: {parent:?} already follows up {id:?}."),
                    ));
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(cycle(
                        id,
                        format!(
                            "Activity {id:?} (or a follow-up of it) would have more than {MAX_DEPTH} activities above it."
                        ),
                    ));
                }
                if let Some(over) = overrides.get(ancestor.as_str()) {
                    next = over.map(str::to_string);
                    continue 'walk;
                }
            }
        }
    }
    Ok(())
}

impl Resource for ActivityResource {
    type Proto = api::Activity;
    type Fields = ActivityFields;
    type Table = ActivityTable;
    type Context = TypeNames;

    const NAME: &'static str = store::activity::RESOURCE;
    const MESSAGE: &'static str = "agenda.v1.Activity";
    const FIELD: &'static str = "activity";
    const CREATE: &'static str = "CreateActivity";
    const RESOURCE_TYPE: api::ResourceType = api::ResourceType::Activity;
    const SPEC: &'static ResourceSpec = &store::activity::SPEC;

    fn parse(check: &mut Check, proto: &api::Activity) -> ActivityFields {
        ActivityFields::parse(check, proto)
    }

    fn to_proto(stored: &Activity) -> api::Activity {
        to_proto(stored)
    }

    fn id_of(proto: &api::Activity) -> &str {
        &proto.id
    }

    fn etag_of(proto: &api::Activity) -> &str {
        &proto.etag
    }

    fn context<'a>(conn: &'a mut Conn<'_>, caller: &'a Principal) -> TxFuture<'a, TypeNames> {
        Box::pin(async move {
            let names = store::activity_type::names(conn, &caller.tenant).await?;
            Ok(TypeNames {
                now: store::now_micros(),
                languages: caller.languages.clone(),
                names: names.into_iter().map(|(key, display, localized)| (key, (display, localized))).collect(),
            })
        })
    }

    fn present(proto: &mut api::Activity, context: &TypeNames) {
        proto.type_display_name = context.name(&proto.r#type);
        if let (Some(task), Some(due)) = (proto.task.as_mut(), proto.due_time.as_ref()) {
            let open = proto.status != api::Status::Completed as i32 && proto.status != api::Status::Cancelled as i32;
            task.overdue = open && micros_of(due).is_some_and(|due| due < context.now);
        }
    }

    /// A task keeps the TaskService's rules when written as an activity: it
    /// stays a task (and no activity becomes one), reaches and leaves
    /// COMPLETED only by CompleteTask and ReopenTask, and a recurring one
    /// keeps its deadline.
    fn check_items(mutations: &[Mutation<ActivityFields>], batch: bool) -> Result<()> {
        let completed = api::Status::Completed as i32;
        for m in mutations.iter().filter(|m| matches!(m.kind, api::ChangeKind::Created | api::ChangeKind::Updated)) {
            let fault = |field: &str, message: &str| Err(invalid(&prefix(m, batch), field, message.to_string()));
            let was_task = m.before.as_ref().is_some_and(|b| task::is_task(&b.fields));
            if was_task != task::is_task(&m.after.fields) {
                return fault("type", "Tasks are made with the TaskService, and a task stays a task.");
            }
            if !was_task {
                continue;
            }
            let was = m.before.as_ref().map(|b| b.fields.status);
            if (m.after.fields.status == completed) != (was == Some(completed)) {
                return fault("status", "Complete a task with CompleteTask and reopen it with ReopenTask.");
            }
            if !m.after.fields.task.recurrence.is_empty() && m.after.fields.due_time.is_none() {
                return fault("due_time", "A recurring task needs its deadline.");
            }
        }
        Ok(())
    }

    /// What an activity message does not carry of a task stays as stored.
    fn carry(before: &ActivityFields, mut parsed: ActivityFields) -> ActivityFields {
        parsed.task = before.task.clone();
        parsed
    }

    fn check_written<'a>(
        conn: &'a mut Conn<'_>,
        caller: &'a Principal,
        mutations: &'a [Mutation<ActivityFields>],
        batch: bool,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            let tenant = caller.tenant.as_str();
            check_types(conn, tenant, mutations, batch).await?;
            check_contacts(conn, tenant, mutations, batch).await?;
            check_parents(conn, tenant, mutations, batch, "activity").await
        })
    }

    fn journal<'a>(
        conn: &'a mut Conn<'_>,
        changes: &'a [ChangeRow],
        comments: &'a [Option<RichText>],
    ) -> TxFuture<'a, ()> {
        journal_revisions(conn, changes, comments)
    }
}

/// Every change of an activity (a task too) appends one revision, sharing its diff.
pub(crate) fn journal_revisions<'a>(
    conn: &'a mut Conn<'_>,
    changes: &'a [ChangeRow],
    comments: &'a [Option<RichText>],
) -> TxFuture<'a, ()> {
    Box::pin(async move {
        let rows = changes
            .iter()
            .zip(comments)
            .map(|(change, comment)| {
                let mut row = RevisionRow {
                    tenant_id: change.tenant_id.clone(),
                    activity_id: change.resource_id.clone(),
                    revision: change.revision,
                    kind: revision_kind(change.kind),
                    actor: change.actor.clone(),
                    time: change.time,
                    diff: JsonText(change.diff.0.clone()),
                    comment_format: 0,
                    comment_raw: String::new(),
                    comment_html: String::new(),
                };
                row.set_comment(comment.as_ref());
                row
            })
            .collect();
        store::activity::append_revisions(conn, rows).await
    })
}

/// A stored activity as the API returns it (type_display_name is the caller's, filled later).
pub fn to_proto(activity: &Activity) -> api::Activity {
    let Stored { meta: m, fields: f } = activity;
    let assignee = (!f.assignee_user_id.is_empty() || !f.assignee_group.is_empty())
        .then(|| api::Assignee { user_id: f.assignee_user_id.clone(), group: f.assignee_group.clone() });
    api::Activity {
        id: m.id.clone(),
        r#type: f.activity_type.clone(),
        type_display_name: String::new(),
        subject: f.subject.clone(),
        details: rich_text(&f.details),
        status: f.status,
        priority: f.priority,
        occur_time: Some(timestamp(f.occur_time)),
        due_time: f.due_time.map(timestamp),
        duration: f.duration.map(|n| prost_types::Duration {
            seconds: n.div_euclid(1_000_000_000),
            nanos: n.rem_euclid(1_000_000_000) as i32,
        }),
        location: f.location.clone(),
        phone_number: f.phone_number.clone(),
        medium: f.medium,
        parent_id: f.parent_id.clone().unwrap_or_default(),
        source_contact_id: f.source_contact_id.clone().unwrap_or_default(),
        assignee,
        participants: f
            .participants
            .iter()
            .map(|p| api::Participant { contact_id: p.contact_id.clone(), role: p.role.clone() })
            .collect(),
        related: f.related.iter().map(|r| api::RelatedRecord { r#type: r.kind.clone(), id: r.id.clone() }).collect(),
        custom_fields: f.custom_fields.to_struct(),
        is_test: f.is_test,
        is_auto: f.is_auto,
        result: f.result.clone(),
        task: task::is_task(f).then(|| api::ActivityTask {
            category_id: f.task.category_id.clone().unwrap_or_default(),
            contact_id: f.task.contact_id.clone().unwrap_or_default(),
            notify_responsible: f.task.notify_responsible,
            alert_minutes: f.task.alert_minutes,
            time_zone: f.task.time_zone.clone(),
            recurrence: f.task.recurrence.clone(),
            recurrence_origin_id: task::origin_of(activity).unwrap_or_default(),
            completed_time: f.task.completed_time.map(timestamp),
            completed_by: f.task.completed_by.clone(),
            overdue: false,
        }),
        revision: m.revision,
        etag: m.etag(),
        create_time: Some(timestamp(m.create_time)),
        update_time: Some(timestamp(m.update_time)),
        delete_time: m.delete_time.map(timestamp),
        purge_time: m.purge_time.map(timestamp),
        created_by: m.created_by.clone(),
        updated_by: m.updated_by.clone(),
    }
}

/// A stored revision as the API returns it, its summary in `languages`.
fn revision_to_proto(row: RevisionRow, languages: &Languages) -> api::ActivityRevision {
    let text = summary(languages.texts(), row.kind, &row.diff.0);
    let comment = row.comment().as_ref().and_then(rich_text);
    api::ActivityRevision {
        changes: field_changes(&row.diff.0),
        summary: Some(api::RichText {
            format: Format::Markdown as i32,
            html: render(Format::Markdown, &text),
            raw: text,
        }),
        comment,
        activity_id: row.activity_id,
        revision: row.revision,
        kind: row.kind,
        actor: row.actor,
        time: Some(timestamp(row.time)),
    }
}

crate::standard_requests!(api::Activity, activity, api::CreateActivityRequest, api::UpdateActivityRequest);
crate::standard_requests!(api::ActivityType, activity_type, api::CreateActivityTypeRequest);

/// A revisions page token: the activity and the last revision seen.
fn revision_token(activity_id: &str, revision: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{activity_id}/{revision}"))
}

fn parse_revision_token(token: &str, activity_id: &str) -> Result<i64> {
    if token.is_empty() {
        return Ok(0);
    }
    let invalid = || Error::Query {
        reason: Reason::PageTokenInvalid,
        field: "page_token",
        position: None,
        message: "page_token is not a next_page_token of this activity's revisions.".into(),
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (id, revision) = text.split_once('/').ok_or_else(invalid)?;
    if id != activity_id {
        return Err(invalid());
    }
    revision.parse::<i64>().ok().filter(|r| *r > 0).ok_or_else(invalid)
}

/// The activity service.
#[derive(Clone)]
pub struct ActivityApi {
    activities: Pipeline<ActivityResource>,
    types: Pipeline<ActivityTypeResource>,
    seeder: Seeder,
    db: Db,
    max_response_bytes: usize,
}

impl ActivityApi {
    /// The service over the shared pipelines.
    pub fn new(
        activities: Pipeline<ActivityResource>,
        types: Pipeline<ActivityTypeResource>,
        db: Db,
        max_response_bytes: usize,
    ) -> Self {
        let seeder = Seeder::new(types.clone());
        ActivityApi { activities, types, seeder, db, max_response_bytes }
    }

    /// The caller of a request whose tenant has its system types.
    async fn seeded<T>(&self, request: &Request<T>) -> Result<Principal> {
        let caller = Principal::of(request)?;
        self.seeder.ensure(&caller.tenant).await?;
        Ok(caller)
    }

    async fn change_participant(
        &self,
        caller: &Principal,
        raw: ParticipantRequest,
        add: bool,
    ) -> Result<api::Activity> {
        let mut check = Check::new("");
        let contact_id = parse_contact_id(&mut check, "contact_id", &raw.contact_id);
        let role = parse_role(&mut check, "role", &raw.role);
        check.finish(())?;
        let participant = Participant { contact_id, role };
        let (kind, actor, now) = (
            if add { api::ChangeKind::ParticipantAdded } else { api::ChangeKind::ParticipantRemoved },
            caller.subject.clone(),
            store::now_micros(),
        );
        self.activities
            .modify(caller, &raw.activity_id, kind, move |existing| {
                let mut check = Check::new("");
                let fields = match add {
                    true => existing.fields.with_participant(&mut check, participant),
                    false => existing.fields.without_participant(&participant),
                };
                check.finish(())?;
                Ok(fields.map(|fields| Modified::to(Stored { meta: existing.meta.next(&actor, now), fields })))
            })
            .await
    }

    async fn list_revisions(
        &self,
        caller: &Principal,
        request: api::ListActivityRevisionsRequest,
    ) -> Result<api::ListActivityRevisionsResponse> {
        let not_found = || Error::NotFound { resource: "activity", id: request.activity_id.clone(), field: None };
        let id = parse_id(&request.activity_id).ok_or_else(not_found)?;
        let after = parse_revision_token(&request.page_token, &id)?;
        let page_size = match request.page_size {
            n if n <= 0 => 50,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let (caller, limit) = (caller.clone(), self.max_response_bytes);
        let (revisions, token) = self
            .db
            .read(move |c| {
                Box::pin(async move {
                    if !row_exists(c, "activities", &caller.tenant, &id).await? {
                        return Err(Error::NotFound { resource: "activity", id, field: None });
                    }
                    let mut budget = Budget::new(limit);
                    let mut page = Vec::new();
                    let mut last = after;
                    loop {
                        let want = (page_size - page.len()).min(CHUNK_ROWS);
                        let rows = store::activity::revisions(c, &caller.tenant, &id, last, want as i64 + 1).await?;
                        let more = rows.len() > want;
                        for row in rows.into_iter().take(want) {
                            let revision = row.revision;
                            let message = revision_to_proto(row, &caller.languages);
                            if !budget.take(&message) {
                                if page.is_empty() {
                                    return Err(Error::ResponseTooLarge { limit });
                                }
                                return Ok((page, revision_token(&id, last)));
                            }
                            page.push(message);
                            last = revision;
                        }
                        match more {
                            true if page.len() == page_size => return Ok((page, revision_token(&id, last))),
                            true => continue,
                            false => return Ok((page, String::new())),
                        }
                    }
                })
            })
            .await?;
        Ok(api::ListActivityRevisionsResponse { activity_revisions: revisions, next_page_token: token })
    }

    async fn update_revision_comment(
        &self,
        caller: &Principal,
        request: api::UpdateRevisionCommentRequest,
    ) -> Result<api::ActivityRevision> {
        let not_found = |id: &str, revision: i64| Error::NotFound {
            resource: "activity_revision",
            id: format!("{id}/{revision}"),
            field: None,
        };
        let id = parse_id(&request.activity_id).ok_or_else(|| not_found(&request.activity_id, request.revision))?;
        let mut check = Check::new("");
        let comment = match &request.comment {
            Some(c) => RichText::parse(&mut check, "comment", c.format, &c.raw),
            None => RichText::default(),
        };
        check.finish(())?;
        let (caller, revision) = (caller.clone(), request.revision);
        self.db
            .write(move |c| {
                Box::pin(async move {
                    let mut row = store::activity::revision(c, &caller.tenant, &id, revision)
                        .await?
                        .ok_or_else(|| not_found(&id, revision))?;
                    if row.actor != caller.subject && !caller.scopes.allows(Scope::Admin) {
                        return Err(Error::PermissionDenied {
                            reason: Reason::NotAuthor,
                            message: format!(
                                "Only the author of revision {revision} ({:?}) or a caller with the admin scope may change its comment.",
                                row.actor
                            ),
                            metadata: Vec::new(),
                        });
                    }
                    row.set_comment(Some(&comment));
                    store::activity::write_comment(c, &row).await?;
                    Ok(revision_to_proto(row, &caller.languages))
                })
            })
            .await
    }
}

/// The fields of AddParticipant and RemoveParticipant.
struct ParticipantRequest {
    activity_id: String,
    contact_id: String,
    role: String,
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl ActivityService for ActivityApi {
    async fn create_activity(&self, request: Request<api::CreateActivityRequest>) -> Reply<api::Activity> {
        let caller = self.seeded(&request).await?;
        Ok(Response::new(self.activities.create_one(&caller, request.into_inner()).await?))
    }

    async fn get_activity(&self, request: Request<api::GetActivityRequest>) -> Reply<api::Activity> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        Ok(Response::new(self.activities.get_one(&caller, request.id, request.read_mask.as_ref()).await?))
    }

    async fn list_activities(
        &self,
        request: Request<api::ListActivitiesRequest>,
    ) -> Reply<api::ListActivitiesResponse> {
        let caller = Principal::of(&request)?;
        let mut request = request.into_inner();
        let params = crate::list_params!(request);
        let (activities, next_page_token) =
            self.activities.list_one(&caller, &params, request.read_mask.as_ref()).await?;
        Ok(Response::new(api::ListActivitiesResponse { activities, next_page_token }))
    }

    async fn update_activity(&self, request: Request<api::UpdateActivityRequest>) -> Reply<api::Activity> {
        let caller = self.seeded(&request).await?;
        Ok(Response::new(self.activities.update_one(&caller, request.into_inner()).await?))
    }

    async fn delete_activity(&self, request: Request<api::DeleteActivityRequest>) -> Reply<api::Activity> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        Ok(Response::new(self.activities.delete_one(&caller, request.id, request.etag).await?))
    }

    async fn undelete_activity(&self, request: Request<api::UndeleteActivityRequest>) -> Reply<api::Activity> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.activities.undelete(&caller, &request.into_inner().id).await?))
    }

    async fn batch_get_activities(
        &self,
        request: Request<api::BatchGetActivitiesRequest>,
    ) -> Reply<api::BatchGetActivitiesResponse> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        let activities = self.activities.get_batch(&caller, &request.ids, request.read_mask.as_ref()).await?;
        Ok(Response::new(api::BatchGetActivitiesResponse { activities }))
    }

    async fn batch_create_activities(
        &self,
        request: Request<api::BatchCreateActivitiesRequest>,
    ) -> Reply<api::BatchCreateActivitiesResponse> {
        let caller = self.seeded(&request).await?;
        let activities = self.activities.create_batch(&caller, request.into_inner().requests).await?;
        Ok(Response::new(api::BatchCreateActivitiesResponse { activities }))
    }

    async fn batch_update_activities(
        &self,
        request: Request<api::BatchUpdateActivitiesRequest>,
    ) -> Reply<api::BatchUpdateActivitiesResponse> {
        let caller = self.seeded(&request).await?;
        let activities = self.activities.update_batch(&caller, request.into_inner().requests).await?;
        Ok(Response::new(api::BatchUpdateActivitiesResponse { activities }))
    }

    async fn batch_delete_activities(
        &self,
        request: Request<api::BatchDeleteActivitiesRequest>,
    ) -> Reply<api::BatchDeleteActivitiesResponse> {
        let caller = Principal::of(&request)?;
        let activities = self.activities.delete_batch(&caller, request.into_inner().ids).await?;
        Ok(Response::new(api::BatchDeleteActivitiesResponse { activities }))
    }

    async fn add_participant(&self, request: Request<api::AddParticipantRequest>) -> Reply<api::Activity> {
        let caller = Principal::of(&request)?;
        let r = request.into_inner();
        let raw = ParticipantRequest { activity_id: r.activity_id, contact_id: r.contact_id, role: r.role };
        Ok(Response::new(self.change_participant(&caller, raw, true).await?))
    }

    async fn remove_participant(&self, request: Request<api::RemoveParticipantRequest>) -> Reply<api::Activity> {
        let caller = Principal::of(&request)?;
        let r = request.into_inner();
        let raw = ParticipantRequest { activity_id: r.activity_id, contact_id: r.contact_id, role: r.role };
        Ok(Response::new(self.change_participant(&caller, raw, false).await?))
    }

    async fn list_activity_revisions(
        &self,
        request: Request<api::ListActivityRevisionsRequest>,
    ) -> Reply<api::ListActivityRevisionsResponse> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.list_revisions(&caller, request.into_inner()).await?))
    }

    async fn update_revision_comment(
        &self,
        request: Request<api::UpdateRevisionCommentRequest>,
    ) -> Reply<api::ActivityRevision> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(ActivityApi::update_revision_comment(self, &caller, request.into_inner()).await?))
    }

    async fn list_activity_types(
        &self,
        request: Request<api::ListActivityTypesRequest>,
    ) -> Reply<api::ListActivityTypesResponse> {
        let caller = self.seeded(&request).await?;
        let mut request = request.into_inner();
        let params = crate::list_params!(request);
        let (activity_types, next_page_token) =
            self.types.list_one(&caller, &params, request.read_mask.as_ref()).await?;
        Ok(Response::new(api::ListActivityTypesResponse { activity_types, next_page_token }))
    }

    async fn get_activity_type(&self, request: Request<api::GetActivityTypeRequest>) -> Reply<api::ActivityType> {
        let caller = self.seeded(&request).await?;
        let request = request.into_inner();
        Ok(Response::new(self.types.get_one(&caller, request.key, request.read_mask.as_ref()).await?))
    }

    async fn create_activity_type(&self, request: Request<api::CreateActivityTypeRequest>) -> Reply<api::ActivityType> {
        let caller = self.seeded(&request).await?;
        Ok(Response::new(self.types.create_one(&caller, request.into_inner()).await?))
    }

    async fn update_activity_type(&self, request: Request<api::UpdateActivityTypeRequest>) -> Reply<api::ActivityType> {
        let caller = self.seeded(&request).await?;
        let request = request.into_inner();
        let update = PlainUpdate { resource: request.activity_type, update_mask: request.update_mask };
        Ok(Response::new(self.types.update_one(&caller, update).await?))
    }

    async fn delete_activity_type(&self, request: Request<api::DeleteActivityTypeRequest>) -> Reply<api::ActivityType> {
        let caller = self.seeded(&request).await?;
        let request = request.into_inner();
        Ok(Response::new(self.types.delete_one(&caller, request.key, request.etag).await?))
    }

    async fn undelete_activity_type(
        &self,
        request: Request<api::UndeleteActivityTypeRequest>,
    ) -> Reply<api::ActivityType> {
        let caller = self.seeded(&request).await?;
        Ok(Response::new(self.types.undelete(&caller, &request.into_inner().key).await?))
    }
}
