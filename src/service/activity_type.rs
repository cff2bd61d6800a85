//! Activity types as a [`Resource`] of the shared write path (their id is
//! their key), and the lazy, race-free seeding of every tenant's system types.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use super::{
    resource::{Mutation, Pipeline, Resource},
    timestamp,
};
use crate::{
    api,
    auth::Principal,
    domain::{
        Check, Stored,
        activity_type::{ActivityType, ActivityTypeFields, system_types},
        is_key,
    },
    error::{Error, Reason, Result},
    query::ResourceSpec,
    store::{self, Conn, TxFuture, activity_type::ActivityTypeTable},
};

/// The activity type as a resource of the shared machinery.
pub struct ActivityTypeResource;

fn in_use(key: &str, message: String) -> Error {
    Error::FailedPrecondition { reason: Reason::InUse, subject: format!("activity_type/{key}"), message }
}

impl Resource for ActivityTypeResource {
    type Proto = api::ActivityType;
    type Fields = ActivityTypeFields;
    type Table = ActivityTypeTable;
    type Context = ();

    const NAME: &'static str = store::activity_type::RESOURCE;
    const MESSAGE: &'static str = "agenda.v1.ActivityType";
    const FIELD: &'static str = "activity_type";
    const CREATE: &'static str = "CreateActivityType";
    const RESOURCE_TYPE: api::ResourceType = api::ResourceType::ActivityType;
    const SPEC: &'static ResourceSpec = &store::activity_type::SPEC;

    fn parse(check: &mut Check, proto: &api::ActivityType) -> ActivityTypeFields {
        ActivityTypeFields::parse(check, proto)
    }

    fn to_proto(stored: &ActivityType) -> api::ActivityType {
        let Stored { meta: m, fields: f } = stored;
        api::ActivityType {
            system: f.is_system(),
            key: f.key.clone(),
            display_name: f.display_name.clone(),
            localized_names: f.localized_names.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
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

    fn id_of(proto: &api::ActivityType) -> &str {
        &proto.key
    }

    fn etag_of(proto: &api::ActivityType) -> &str {
        &proto.etag
    }

    fn parse_key(raw: &str) -> Option<String> {
        Some(raw.trim().to_string()).filter(|key| is_key(key))
    }

    fn new_key(fields: &ActivityTypeFields) -> String {
        fields.key.clone()
    }

    fn context<'a>(_conn: &'a mut Conn<'_>, _caller: &'a Principal) -> TxFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    /// System types are never deleted: every tenant relies on them.
    fn check_items(mutations: &[Mutation<ActivityTypeFields>], _batch: bool) -> Result<()> {
        match mutations.iter().find(|m| m.kind == api::ChangeKind::Deleted && m.after.fields.is_system()) {
            Some(m) => Err(in_use(
                &m.after.meta.id,
                format!("{:?} is a system type, always in use: rename it instead of deleting it.", m.after.meta.id),
            )),
            None => Ok(()),
        }
    }

    /// A type is deleted only while no activity (soft-deleted ones too) has
    /// it. The type's row is locked; activity writes share-lock the types
    /// they take, so neither can slip past the other.
    fn check_written<'a>(
        conn: &'a mut Conn<'_>,
        caller: &'a Principal,
        mutations: &'a [Mutation<ActivityTypeFields>],
        _batch: bool,
    ) -> TxFuture<'a, ()> {
        Box::pin(async move {
            for m in mutations.iter().filter(|m| m.kind == api::ChangeKind::Deleted) {
                if store::activity::type_in_use(conn, &caller.tenant, &m.after.meta.id).await? {
                    return Err(in_use(
                        &m.after.meta.id,
                        format!(
                            "Activities have the type {:?}; change their type (or purge them) before deleting it.",
                            m.after.meta.id
                        ),
                    ));
                }
            }
            Ok(())
        })
    }
}

/// Most tenants one process remembers as seeded before it starts over.
const MAX_REMEMBERED: usize = 100_000;

/// Gives each tenant its system types on first use: once per tenant, also
/// when replicas race (the insert skips the types a tenant has), with a
/// Change for each type created. A process remembers whom it has seeded,
/// so after the first call a tenant costs nothing.
#[derive(Clone)]
pub struct Seeder {
    types: Pipeline<ActivityTypeResource>,
    seeded: Arc<Mutex<HashSet<String>>>,
}

impl Seeder {
    /// The seeder over the types' pipeline.
    pub fn new(types: Pipeline<ActivityTypeResource>) -> Self {
        Seeder { types, seeded: Arc::new(Mutex::new(HashSet::new())) }
    }

    fn remembered(&self, tenant: &str) -> bool {
        self.seeded.lock().is_ok_and(|seeded| seeded.contains(tenant))
    }

    /// Makes sure `tenant` has its system types.
    pub async fn ensure(&self, tenant: &str) -> Result<()> {
        if self.remembered(tenant) {
            return Ok(());
        }
        self.types
            .create_missing(tenant, system_types().collect(), |c, rows| Box::pin(store::activity_type::seed(c, rows)))
            .await?;
        if let Ok(mut seeded) = self.seeded.lock() {
            if seeded.len() >= MAX_REMEMBERED {
                seeded.clear();
            }
            seeded.insert(tenant.to_string());
        }
        Ok(())
    }
}
