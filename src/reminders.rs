//! The reminder scheduler: every replica runs one. A task that asks for a
//! reminder carries its due time in `activities.reminder_at` (derived from
//! its fields on every write, so a new deadline re-arms it and completing,
//! cancelling or deleting disarms it). The scheduler claims what is due in
//! one transaction (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so of N replicas
//! exactly one takes each row), marks it fired and appends its
//! `REMINDER_DUE` Change.
//!
//! It does not poll: it sleeps until the nearest due time it knows, woken
//! early when this replica writes a task with a reminder (which may be
//! nearer). A reminder written on another replica is fired by that
//! replica's scheduler on time; this one looks again at least every
//! [`MAX_SLEEP`], which also covers a replica that died before its time.

use std::{collections::HashMap, sync::Arc, time::Duration};

use prost::Message;
use tokio::sync::Notify;

use crate::{
    api,
    error::Result,
    feed::Feed,
    service,
    store::{self, Db, change::ChangeRow, now_micros, sql_types::JsonText, table::Table, task::TaskTable},
};

/// The longest the scheduler sleeps without looking at the queue.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Reminders claimed per transaction.
const BATCH: i64 = 500;
/// The pause after a failed round (the database is down, say).
const RETRY: Duration = Duration::from_secs(1);
/// The pause when what is due is locked by someone else.
const LOCKED_RETRY: Duration = Duration::from_millis(250);

/// A handle on the scheduler: writers nudge it.
#[derive(Clone)]
pub struct Reminders {
    db: Db,
    feed: Feed,
    wake: Arc<Notify>,
}

impl Reminders {
    /// The scheduler over `db`, appending to `feed`.
    pub fn new(db: Db, feed: Feed) -> Self {
        Reminders { db, feed, wake: Arc::new(Notify::new()) }
    }

    /// A reminder was written: look at the queue again now.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Fires what is due, in batches; returns how many fired.
    pub async fn fire_due(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let feed = self.feed.clone();
            let fired = self
                .db
                .write_and_then(
                    |c| {
                        Box::pin(async move {
                            let now = now_micros();
                            let due = store::task::claim_due(c, now, BATCH).await?;
                            let count = due.len();
                            // Each Change carries the task, so a consumer needs no second call.
                            let mut tasks: HashMap<(String, String), Vec<u8>> = HashMap::new();
                            let mut tenants: Vec<&str> = due.iter().map(|r| r.tenant_id.as_str()).collect();
                            tenants.sort_unstable();
                            tenants.dedup();
                            for tenant in tenants {
                                let ids: Vec<String> =
                                    due.iter().filter(|r| r.tenant_id == tenant).map(|r| r.id.clone()).collect();
                                for task in TaskTable::find_many(c, tenant, &ids, false).await? {
                                    let key = (task.meta.tenant.clone(), task.meta.id.clone());
                                    tasks.insert(key, service::task::to_proto(&task).encode_to_vec());
                                }
                            }
                            let changes: Vec<ChangeRow> = due
                                .into_iter()
                                .map(|r| ChangeRow {
                                    resource: tasks.remove(&(r.tenant_id.clone(), r.id.clone())),
                                    tenant_id: r.tenant_id,
                                    sequence: 0,
                                    resource_type: api::ResourceType::Task as i32,
                                    resource_id: r.id,
                                    kind: api::ChangeKind::ReminderDue as i32,
                                    revision: r.revision,
                                    actor: String::new(),
                                    request_id: None,
                                    time: now.max(r.reminder_at),
                                    diff: JsonText("[]".to_string()),
                                })
                                .collect();
                            Ok((store::change::append(c, &changes).await?, count))
                        })
                    },
                    move |(woken, _): &(Vec<String>, usize)| feed.committed(woken),
                )
                .await?
                .1;
            total += fired;
            if (fired as i64) < BATCH {
                return Ok(total);
            }
        }
    }

    /// How long until the nearest armed reminder, at most [`MAX_SLEEP`].
    async fn until_next(&self) -> Result<Duration> {
        let next = self.db.read(|c| Box::pin(store::task::next_due(c))).await?;
        Ok(match next {
            Some(at) => {
                let micros = u64::try_from(at.saturating_sub(now_micros())).unwrap_or(0);
                Duration::from_micros(micros).min(MAX_SLEEP)
            }
            None => MAX_SLEEP,
        })
    }

    /// Runs until the task is aborted.
    pub async fn run(self) {
        loop {
            let pause = match self.fire_due().await {
                Ok(fired) => {
                    if fired > 0 {
                        tracing::info!(fired, "reminders due");
                    }
                    let next = self.until_next().await.unwrap_or(RETRY);
                    // A due reminder this round could not claim is locked by a
                    // write (or another replica's claim): look again shortly,
                    // not in a busy loop.
                    if fired == 0 && next.is_zero() { LOCKED_RETRY } else { next }
                }
                Err(error) => {
                    tracing::warn!(%error, "firing reminders failed; will retry");
                    RETRY
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}
