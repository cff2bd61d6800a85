//! `agenda.v1.TaskService`: a task is an activity of type `task`, declared
//! here as a second [`Resource`] over the same rows (its own message, field
//! names, permissions and rules); task categories are a third. Every RPC runs
//! on the shared write path: Complete and Reopen through
//! [`Pipeline::modify`], which also creates a recurring task's next
//! occurrence in the same transaction.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::{
    activity::{check_parents, journal_revisions},
    resource::{Modified, Mutation, Pipeline, PlainUpdate, Resource, item_prefix},
    rich_text, timestamp,
};
use crate::{
    api::{self, task_service_server::TaskService},
    auth::{Principal, Scope},
    domain::{
        Check, Stored,
        activity::{Activity, ActivityFields},
        task,
        task_category::{TaskCategory, TaskCategoryFields},
    },
    error::{Error, Reason, Result},
    query::ResourceSpec,
    reminders::Reminders,
    store::{self, Conn, TxFuture, change::ChangeRow, table::Table, task::TaskTable, task_category::TaskCategoryTable},
};

/// The task as a resource of the shared machinery.
pub struct TaskResource;

/// What task answers need for one caller: who asks, the time, the categories.
pub struct TaskContext {
    caller: Principal,
    now: i64,
    categories: HashMap<String, api::TaskCategory>,
}

/// Whether `caller` may edit `task`: tasks.admin, or tasks.write and the
/// caller created it or is responsible for it.
pub fn may_edit(caller: &Principal, task: &Activity) -> bool {
    caller.scopes.allows(Scope::TasksAdmin)
        || (caller.scopes.allows(Scope::TasksWrite)
            && (task.meta.created_by == caller.subject || task.fields.assignee_user_id == caller.subject))
}

fn invalid(mutation: &Mutation<ActivityFields>, batch: bool, field: &str, message: String) -> Error {
    Error::invalid(
        format!("{}task.{field}", item_prefix(batch, "requests", mutation.index)),
        Reason::FieldInvalid,
        message,
    )
}

impl Resource for TaskResource {
    type Proto = api::Task;
    type Fields = ActivityFields;
    type Table = TaskTable;
    type Context = TaskContext;

    const NAME: &'static str = store::task::RESOURCE;
    const MESSAGE: &'static str = "agenda.v1.Task";
    const FIELD: &'static str = "task";
    const CREATE: &'static str = "CreateTask";
    const RESOURCE_TYPE: api::ResourceType = api::ResourceType::Task;
    const SPEC: &'static ResourceSpec = &store::task::SPEC;

    fn parse(check: &mut Check, proto: &api::Task) -> ActivityFields {
        task::parse(check, proto)
    }

    fn to_proto(stored: &Activity) -> api::Task {
        to_proto(stored)
    }

    fn id_of(proto: &api::Task) -> &str {
        &proto.id
    }

    fn etag_of(proto: &api::Task) -> &str {
        &proto.etag
    }

    fn carry(before: &ActivityFields, parsed: ActivityFields) -> ActivityFields {
        task::carry_into_task(before, parsed)
    }

    fn context<'a>(conn: &'a mut Conn<'_>, caller: &'a Principal) -> TxFuture<'a, TaskContext> {
        Box::pin(async move {
            let categories = store::task_category::all(conn, &caller.tenant).await?;
            Ok(TaskContext {
                caller: caller.clone(),
                now: store::now_micros(),
                categories: categories.iter().map(|c| (c.meta.id.clone(), category_to_proto(c))).collect(),
            })
        })
    }

    fn present(proto: &mut api::Task, context: &TaskContext) {
        let open = proto.status != api::Status::Completed as i32 && proto.status != api::Status::Cancelled as i32;
        proto.overdue = open
            && proto
                .deadline
                .as_ref()
                .and_then(crate::domain::activity::micros_of)
                .is_some_and(|due| due < context.now);
        proto.category = context.categories.get(&proto.category_id).cloned();
        let caller = &context.caller;
        proto.can_edit = caller.scopes.allows(Scope::TasksAdmin)
            || (caller.scopes.allows(Scope::TasksWrite)
                && (proto.created_by == caller.subject || proto.responsible_user_id == caller.subject));
    }

    /// COMPLETED is reached and left only through CompleteTask and ReopenTask.
    fn check_items(mutations: &[Mutation<ActivityFields>], batch: bool) -> Result<()> {
        let completed = api::Status::Completed as i32;
        for m in mutations.iter().filter(|m| matches!(m.kind, api::ChangeKind::Created | api::ChangeKind::Updated)) {
            let was = m.before.as_ref().map(|b| b.fields.status);
            let is = m.after.fields.status;
            if is == completed && was != Some(completed) && m.after.fields.task.completed_time.is_none() {
                return Err(invalid(
                    m,
                    batch,
                    "status",
                    "Complete a task with CompleteTask, not by its status.".into(),
                ));
            }
            if was == Some(completed) && is != completed {
                return Err(invalid(m, batch, "status", "Reopen a completed task with ReopenTask.".into()));
            }
        }
        Ok(())
    }

    fn check_written<'a>(
        conn: &'a mut Conn<'_>,
        caller: &'a Principal,
        mutations: &'a [Mutation<ActivityFields>],
        batch: bool,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            let tenant = caller.tenant.as_str();
            // Permissions: on the task as it was, before this change.
            if let Some(m) = mutations.iter().find(|m| m.before.as_ref().is_some_and(|b| !may_edit(caller, b))) {
                return Err(Error::PermissionDenied {
                    reason: Reason::NotEditable,
                    message: format!(
                        "Task {:?} may be changed by whoever created it or is responsible for it, or with tasks.admin.",
                        m.after.meta.id
                    ),
                    metadata: Vec::new(),
                });
            }
            let changed = |m: &&Mutation<ActivityFields>, get: fn(&ActivityFields) -> Option<&String>| {
                get(&m.after.fields).is_some()
                    && m.before.as_ref().is_none_or(|b| get(&b.fields) != get(&m.after.fields))
            };
            fn category(f: &ActivityFields) -> Option<&String> {
                f.task.category_id.as_ref()
            }
            fn contact(f: &ActivityFields) -> Option<&String> {
                f.task.contact_id.as_ref()
            }
            fn parent(f: &ActivityFields) -> Option<&String> {
                f.parent_id.as_ref()
            }
            let wanted: Vec<String> = mutations
                .iter()
                .filter(|m| changed(m, category))
                .filter_map(|m| category(&m.after.fields).cloned())
                .collect();
            let live = store::task_category::live(conn, tenant, &wanted).await?;
            if let Some(m) = mutations
                .iter()
                .filter(|m| changed(m, category))
                .find(|m| category(&m.after.fields).is_some_and(|c| !live.contains(c)))
            {
                return Err(invalid(m, batch, "category_id", "This is not a task category of the tenant.".into()));
            }
            let wanted: Vec<String> = mutations
                .iter()
                .filter(|m| changed(m, contact))
                .filter_map(|m| contact(&m.after.fields).cloned())
                .collect();
            let missing = store::activity::missing_contacts(conn, tenant, &wanted).await?;
            if let Some(m) = mutations.iter().find(|m| contact(&m.after.fields).is_some_and(|c| missing.contains(c))) {
                return Err(invalid(m, batch, "contact_id", "This is not a contact of the tenant.".into()));
            }
            let wanted: Vec<String> = mutations
                .iter()
                .filter(|m| changed(m, parent))
                .filter_map(|m| parent(&m.after.fields).cloned())
                .collect();
            let parents = TaskTable::find_many(conn, tenant, &wanted, false).await?;
            let batch_ids: Vec<&str> = mutations.iter().map(|m| m.after.meta.id.as_str()).collect();
            if let Some(m) = mutations.iter().filter(|m| changed(m, parent)).find(|m| {
                parent(&m.after.fields)
                    .is_some_and(|p| !parents.iter().any(|t| t.meta.id == *p) && !batch_ids.contains(&p.as_str()))
            }) {
                return Err(invalid(m, batch, "parent_id", "A sub-task's parent must be a task of the tenant.".into()));
            }
            check_parents(conn, tenant, mutations, batch, "task").await
        })
    }

    fn journal<'a>(
        conn: &'a mut Conn<'_>,
        changes: &'a [ChangeRow],
        comments: &'a [Option<crate::domain::rich_text::RichText>],
    ) -> TxFuture<'a, ()> {
        journal_revisions(conn, changes, comments)
    }
}

/// A stored task as the API returns it (can_edit, overdue and category are the caller's, filled later).
pub fn to_proto(stored: &Activity) -> api::Task {
    let Stored { meta: m, fields: f } = stored;
    api::Task {
        id: m.id.clone(),
        title: f.subject.clone(),
        description: rich_text(&f.details),
        deadline: f.due_time.map(timestamp),
        responsible_user_id: f.assignee_user_id.clone(),
        category_id: f.task.category_id.clone().unwrap_or_default(),
        category: None,
        contact_id: f.task.contact_id.clone().unwrap_or_default(),
        related: f.related.iter().map(|r| api::RelatedRecord { r#type: r.kind.clone(), id: r.id.clone() }).collect(),
        status: f.status,
        priority: f.priority,
        parent_id: f.parent_id.clone().unwrap_or_default(),
        notify_responsible: f.task.notify_responsible,
        alert_minutes: f.task.alert_minutes,
        time_zone: f.task.time_zone.clone(),
        recurrence: f.task.recurrence.clone(),
        recurrence_origin_id: task::origin_of(stored).unwrap_or_default(),
        completed_time: f.task.completed_time.map(timestamp),
        completed_by: f.task.completed_by.clone(),
        overdue: false,
        can_edit: false,
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

/// The task category as a resource of the shared machinery.
pub struct TaskCategoryResource;

fn category_to_proto(stored: &TaskCategory) -> api::TaskCategory {
    let Stored { meta: m, fields: f } = stored;
    api::TaskCategory {
        id: m.id.clone(),
        title: f.title.clone(),
        description: f.description.clone(),
        image_url: f.image_url.clone(),
        sort_order: f.sort_order,
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

impl Resource for TaskCategoryResource {
    type Proto = api::TaskCategory;
    type Fields = TaskCategoryFields;
    type Table = TaskCategoryTable;
    type Context = ();

    const NAME: &'static str = store::task_category::RESOURCE;
    const MESSAGE: &'static str = "agenda.v1.TaskCategory";
    const FIELD: &'static str = "task_category";
    const CREATE: &'static str = "CreateTaskCategory";
    const RESOURCE_TYPE: api::ResourceType = api::ResourceType::TaskCategory;
    const SPEC: &'static ResourceSpec = &store::task_category::SPEC;

    fn parse(check: &mut Check, proto: &api::TaskCategory) -> TaskCategoryFields {
        TaskCategoryFields::parse(check, proto)
    }

    fn to_proto(stored: &TaskCategory) -> api::TaskCategory {
        category_to_proto(stored)
    }

    fn id_of(proto: &api::TaskCategory) -> &str {
        &proto.id
    }

    fn etag_of(proto: &api::TaskCategory) -> &str {
        &proto.etag
    }

    fn context<'a>(_conn: &'a mut Conn<'_>, _caller: &'a Principal) -> TxFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Titles are unique among live categories; a category in use stays.
    fn check_written<'a>(
        conn: &'a mut Conn<'_>,
        caller: &'a Principal,
        mutations: &'a [Mutation<TaskCategoryFields>],
        _batch: bool,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            let tenant = caller.tenant.as_str();
            for m in mutations {
                let live = m.after.meta.delete_time.is_none();
                let retitled = m
                    .before
                    .as_ref()
                    .is_none_or(|b| b.fields.title != m.after.fields.title || b.meta.delete_time.is_some());
                if live
                    && retitled
                    && store::task_category::title_taken(conn, tenant, &m.after.fields.title, &m.after.meta.id).await?
                {
                    return Err(store::task_category::taken_title());
                }
                if m.kind == api::ChangeKind::Deleted
                    && store::task::category_in_use(conn, tenant, &m.after.meta.id).await?
                {
                    return Err(Error::FailedPrecondition {
                        reason: Reason::InUse,
                        subject: format!("task_category/{}", m.after.meta.id),
                        message: "Tasks are in this category; move them (or purge them) before deleting it.".into(),
                    });
                }
            }
            Ok(())
        })
    }
}

crate::standard_requests!(api::Task, task, api::CreateTaskRequest, api::UpdateTaskRequest);
crate::standard_requests!(api::TaskCategory, task_category, api::CreateTaskCategoryRequest);

/// The task service.
#[derive(Clone)]
pub struct TaskApi {
    tasks: Pipeline<TaskResource>,
    categories: Pipeline<TaskCategoryResource>,
    reminders: Reminders,
}

impl TaskApi {
    /// The service over the shared pipelines; writes wake the reminder scheduler.
    pub fn new(
        tasks: Pipeline<TaskResource>,
        categories: Pipeline<TaskCategoryResource>,
        reminders: Reminders,
    ) -> Self {
        TaskApi { tasks, categories, reminders }
    }

    /// A written task's reminder may now be the nearest: the scheduler looks again.
    fn written(&self, task: api::Task) -> api::Task {
        if task.notify_responsible {
            self.reminders.nudge();
        }
        task
    }

    async fn complete(&self, caller: &Principal, request: api::CompleteTaskRequest) -> Result<api::Task> {
        let actor = caller.subject.clone();
        let answer = self
            .tasks
            .modify(caller, &request.id, api::ChangeKind::Completed, move |existing| {
                existing.meta.check_etag(store::task::RESOURCE, &request.etag)?;
                let now = store::now_micros();
                Ok(task::complete(existing, &actor, now).map(|(fields, next)| Modified {
                    after: Stored { meta: existing.meta.next(&actor, now), fields },
                    created: next.into_iter().collect(),
                }))
            })
            .await?;
        Ok(self.written(answer))
    }

    async fn reopen(&self, caller: &Principal, request: api::ReopenTaskRequest) -> Result<api::Task> {
        let actor = caller.subject.clone();
        let answer = self
            .tasks
            .modify(caller, &request.id, api::ChangeKind::Reopened, move |existing| {
                existing.meta.check_etag(store::task::RESOURCE, &request.etag)?;
                let now = store::now_micros();
                Ok(task::reopen(&existing.fields)
                    .map(|fields| Modified::to(Stored { meta: existing.meta.next(&actor, now), fields })))
            })
            .await?;
        Ok(self.written(answer))
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl TaskService for TaskApi {
    async fn create_task(&self, request: Request<api::CreateTaskRequest>) -> Reply<api::Task> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.written(self.tasks.create_one(&caller, request.into_inner()).await?)))
    }

    async fn get_task(&self, request: Request<api::GetTaskRequest>) -> Reply<api::Task> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        Ok(Response::new(self.tasks.get_one(&caller, request.id, request.read_mask.as_ref()).await?))
    }

    async fn list_tasks(&self, request: Request<api::ListTasksRequest>) -> Reply<api::ListTasksResponse> {
        let caller = Principal::of(&request)?;
        let mut request = request.into_inner();
        let params = crate::list_params!(request);
        let (tasks, next_page_token) = self.tasks.list_one(&caller, &params, request.read_mask.as_ref()).await?;
        Ok(Response::new(api::ListTasksResponse { tasks, next_page_token }))
    }

    async fn update_task(&self, request: Request<api::UpdateTaskRequest>) -> Reply<api::Task> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.written(self.tasks.update_one(&caller, request.into_inner()).await?)))
    }

    async fn delete_task(&self, request: Request<api::DeleteTaskRequest>) -> Reply<api::Task> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        Ok(Response::new(self.tasks.delete_one(&caller, request.id, request.etag).await?))
    }

    async fn undelete_task(&self, request: Request<api::UndeleteTaskRequest>) -> Reply<api::Task> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.written(self.tasks.undelete(&caller, &request.into_inner().id).await?)))
    }

    async fn complete_task(&self, request: Request<api::CompleteTaskRequest>) -> Reply<api::Task> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.complete(&caller, request.into_inner()).await?))
    }

    async fn reopen_task(&self, request: Request<api::ReopenTaskRequest>) -> Reply<api::Task> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.reopen(&caller, request.into_inner()).await?))
    }

    async fn list_task_categories(
        &self,
        request: Request<api::ListTaskCategoriesRequest>,
    ) -> Reply<api::ListTaskCategoriesResponse> {
        let caller = Principal::of(&request)?;
        let mut request = request.into_inner();
        let params = crate::list_params!(request);
        let (task_categories, next_page_token) =
            self.categories.list_one(&caller, &params, request.read_mask.as_ref()).await?;
        Ok(Response::new(api::ListTaskCategoriesResponse { task_categories, next_page_token }))
    }

    async fn create_task_category(&self, request: Request<api::CreateTaskCategoryRequest>) -> Reply<api::TaskCategory> {
        let caller = Principal::of(&request)?;
        Ok(Response::new(self.categories.create_one(&caller, request.into_inner()).await?))
    }

    async fn update_task_category(&self, request: Request<api::UpdateTaskCategoryRequest>) -> Reply<api::TaskCategory> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        let update = PlainUpdate { resource: request.task_category, update_mask: request.update_mask };
        Ok(Response::new(self.categories.update_one(&caller, update).await?))
    }

    async fn delete_task_category(&self, request: Request<api::DeleteTaskCategoryRequest>) -> Reply<api::TaskCategory> {
        let caller = Principal::of(&request)?;
        let request = request.into_inner();
        Ok(Response::new(self.categories.delete_one(&caller, request.id, request.etag).await?))
    }
}
