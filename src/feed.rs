//! The live change feed of one replica: watchers of a tenant share one hub,
//! which reads the tenant's new changes with one query per wake-up and fans
//! them out, so a thousand watchers cost one query, not a thousand.
//!
//! Hubs wake when a change commits: on this replica the write path calls
//! [`Feed::committed`]; on PostgreSQL every replica also keeps one dedicated
//! connection that LISTENs on the change channel (each writing transaction
//! NOTIFYs its tenant at commit), so a write through any replica reaches the
//! watchers of all. When that connection drops, the listener reconnects and
//! wakes every hub, whose query then catches up with whatever was missed:
//! a hub always reads "after the last sequence I have seen", never "what the
//! notification said".
//!
//! Watchers are bounded: each has a queue of [`WATCHER_QUEUE`] changes, and
//! one that falls further behind is cut off (its stream ends with
//! UNAVAILABLE and the sequence to resume after, losing nothing). At most
//! `AGENDA_MAX_WATCHERS` streams are open per replica; they do not use the
//! permits of unary calls.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use crate::{
    error::{Error, Overload, Result},
    store::{
        Db,
        change::{self, ChangeRow},
    },
    telemetry::metrics,
};

/// Changes a watcher may have queued before it is cut off.
pub const WATCHER_QUEUE: usize = 1024;
/// Changes a hub reads per query.
const FETCH: i64 = 500;
/// How often every hub of a PostgreSQL replica reads, notified or not.
const CATCH_UP_POLL: Duration = Duration::from_secs(1);
/// How often a replica NOTIFYs the others at most: the tenants written in
/// between go in one statement (a NOTIFY is a transaction of its own, and
/// PostgreSQL serializes their commits), so under load a replica sends a few
/// hundred a second, not one per write.
const NOTIFY_EVERY: Duration = Duration::from_millis(2);

/// The feed of one replica.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    /// Tenants with new changes, waiting for the notifier task.
    flush: Arc<Flush>,
    hubs: tokio::sync::Mutex<HashMap<String, Arc<Hub>>>,
    watchers: Arc<Semaphore>,
    /// Feed reads (hubs and replays) at once, so watchers cannot take every
    /// pooled connection from unary calls.
    reads: Arc<Semaphore>,
    next_id: AtomicU64,
}

/// Tenants whose changes committed here since the notifier last ran: for
/// the hubs of this replica, and for the NOTIFY to the others.
#[derive(Default)]
struct Flush {
    local: Pending,
    remote: Pending,
}

/// Tenants to wake, and the wake-up of the task that handles them.
#[derive(Default)]
struct Pending {
    tenants: Mutex<std::collections::BTreeSet<String>>,
    wake: Notify,
}

impl Pending {
    fn add(&self, tenants: &[String]) {
        if let Ok(mut pending) = self.tenants.lock() {
            pending.extend(tenants.iter().cloned());
        }
        self.wake.notify_one();
    }

    /// The tenants added since the last take, once there is one.
    async fn take(&self) -> Option<Vec<String>> {
        self.wake.notified().await;
        self.tenants.lock().ok().map(|mut pending| std::mem::take(&mut *pending).into_iter().collect())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the notifier tasks see the feed is gone and end.
        self.flush.local.wake.notify_one();
        self.flush.remote.wake.notify_one();
    }
}

/// The watchers of one tenant on this replica.
struct Hub {
    wake: Notify,
    subscribers: Mutex<Vec<Subscriber>>,
}

struct Subscriber {
    id: u64,
    queue: mpsc::Sender<Arc<ChangeRow>>,
    cut: Arc<AtomicBool>,
}

/// A watcher's place among the replica's most streams, taken before it
/// starts and held while it is open.
pub struct WatcherSlot {
    _permit: OwnedSemaphorePermit,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        metrics::watcher_closed();
    }
}

/// One watcher's live changes, from its registration on. Dropping it
/// unregisters the watcher.
pub struct Subscription {
    /// The changes, in sequence order; ends when the watcher is cut off.
    pub changes: mpsc::Receiver<Arc<ChangeRow>>,
    cut: Arc<AtomicBool>,
    id: u64,
    tenant: String,
    feed: Feed,
    _slot: WatcherSlot,
}

impl Subscription {
    /// Whether the watcher was cut off for falling behind.
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let feed = self.feed.clone();
        let (tenant, id) = (std::mem::take(&mut self.tenant), self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { feed.unsubscribe(&tenant, id).await });
        }
    }
}

/// Wakes the local hubs of the tenants written, coalescing however many
/// commits came in meanwhile; ends with the feed.
async fn waker(flush: Arc<Flush>, feed: std::sync::Weak<Inner>) {
    loop {
        let Some(tenants) = flush.local.take().await else { return };
        let Some(inner) = feed.upgrade() else { return };
        let hubs = inner.hubs.lock().await;
        for tenant in &tenants {
            if let Some(hub) = hubs.get(tenant) {
                hub.wake.notify_one();
            }
        }
    }
}

/// NOTIFYs the other replicas (PostgreSQL) of the tenants written, one
/// statement for every tenant written since the last, at most every
/// [`NOTIFY_EVERY`]; ends with the feed.
async fn notifier(flush: Arc<Flush>, feed: std::sync::Weak<Inner>) {
    loop {
        let Some(tenants) = flush.remote.take().await else { return };
        let Some(inner) = feed.upgrade() else { return };
        if tenants.is_empty() {
            continue;
        }
        let notified = inner.db.read(move |c| Box::pin(async move { change::notify(c, &tenants).await })).await;
        if let Err(error) = notified {
            tracing::warn!(%error, "NOTIFY of new changes failed; other replicas catch up on their next poll");
        }
        drop(inner);
        tokio::time::sleep(NOTIFY_EVERY).await;
    }
}

impl Feed {
    /// The feed of a replica on `db`, with at most `max_watchers` open
    /// streams and `read_slots` feed reads at once.
    pub fn new(db: Db, max_watchers: usize, read_slots: usize) -> Feed {
        let flush = Arc::new(Flush::default());
        let inner = Arc::new(Inner {
            db,
            flush: flush.clone(),
            hubs: tokio::sync::Mutex::new(HashMap::new()),
            watchers: Arc::new(Semaphore::new(max_watchers)),
            reads: Arc::new(Semaphore::new(read_slots.max(1))),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(waker(flush.clone(), Arc::downgrade(&inner)));
        if inner.db.is_pg() {
            tokio::spawn(notifier(flush, Arc::downgrade(&inner)));
        }
        Feed { inner }
    }

    /// A slot for one feed read; held while it runs.
    pub async fn read_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.inner.reads.clone().acquire_owned().await.map_err(|_| Error::Internal("the feed is closed".into()))
    }

    /// Wakes the hubs of tenants whose changes just committed here and, on
    /// PostgreSQL, tells the other replicas: the notifier task sends one
    /// NOTIFY statement for every tenant written since it last ran, after
    /// the commits, at most every [`NOTIFY_EVERY`] (if it is lost, their
    /// hubs' periodic catch-up reads the changes anyway). Costs the writer
    /// no round trip.
    pub fn committed(&self, tenants: &[String]) {
        if tenants.is_empty() {
            return;
        }
        self.inner.flush.local.add(tenants);
        if self.inner.db.is_pg() {
            self.inner.flush.remote.add(tenants);
        }
    }

    async fn wake(&self, tenant: &str) {
        if let Some(hub) = self.inner.hubs.lock().await.get(tenant) {
            hub.wake.notify_one();
        }
    }

    async fn wake_all(&self) {
        for hub in self.inner.hubs.lock().await.values() {
            hub.wake.notify_one();
        }
    }

    /// A place for one more watch stream; `OVERLOADED` when the replica has
    /// its most streams open.
    pub fn reserve(&self) -> Result<WatcherSlot> {
        let permit = self
            .inner
            .watchers
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded { scope: Overload::Server })?;
        metrics::watcher_opened();
        Ok(WatcherSlot { _permit: permit })
    }

    /// Registers a watcher of `tenant`: from now on every change the hub
    /// reads reaches it.
    pub async fn subscribe(&self, tenant: &str, slot: WatcherSlot) -> Result<Subscription> {
        let mut hubs = self.inner.hubs.lock().await;
        let hub = match hubs.get(tenant) {
            Some(hub) => hub.clone(),
            None => {
                // A new hub starts after what is committed now; a watcher's own
                // replay (made after it registered) covers everything before.
                let tenant_owned = tenant.to_string();
                let (last, _) =
                    self.inner.db.read(move |c| Box::pin(async move { change::state(c, &tenant_owned).await })).await?;
                let hub = Arc::new(Hub { wake: Notify::new(), subscribers: Mutex::new(Vec::new()) });
                hubs.insert(tenant.to_string(), hub.clone());
                tokio::spawn(self.clone().run_hub(tenant.to_string(), hub.clone(), last));
                hub
            }
        };
        let (queue, changes) = mpsc::channel(WATCHER_QUEUE);
        let cut = Arc::new(AtomicBool::new(false));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut subscribers) = hub.subscribers.lock() {
            subscribers.push(Subscriber { id, queue, cut: cut.clone() });
        }
        Ok(Subscription { changes, cut, id, tenant: tenant.to_string(), feed: self.clone(), _slot: slot })
    }

    async fn unsubscribe(&self, tenant: &str, id: u64) {
        let mut hubs = self.inner.hubs.lock().await;
        let empty = match hubs.get(tenant) {
            Some(hub) => match hub.subscribers.lock() {
                Ok(mut subscribers) => {
                    subscribers.retain(|s| s.id != id);
                    subscribers.is_empty()
                }
                Err(_) => true,
            },
            None => false,
        };
        if empty && let Some(hub) = hubs.remove(tenant) {
            // Its task sees it is gone at its next wake-up and ends.
            hub.wake.notify_one();
        }
    }

    /// The hub's loop: on each wake-up, read everything after the last
    /// sequence seen and hand it to every watcher.
    async fn run_hub(self, tenant: String, hub: Arc<Hub>, mut last: i64) {
        loop {
            hub.wake.notified().await;
            let still_registered = self.inner.hubs.lock().await.get(&tenant).is_some_and(|h| Arc::ptr_eq(h, &hub));
            if !still_registered {
                return;
            }
            loop {
                let (t, after) = (tenant.clone(), last);
                let slot = self.read_slot().await;
                let rows = match self
                    .inner
                    .db
                    .read(move |c| Box::pin(async move { change::after(c, &t, after, FETCH, &[]).await }))
                    .await
                {
                    Ok(rows) => rows,
                    Err(error) => {
                        tracing::warn!(%error, "reading new changes failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                drop(slot);
                let full = rows.len() as i64 == FETCH;
                for row in rows {
                    last = row.sequence;
                    let row = Arc::new(row);
                    if let Ok(mut subscribers) = hub.subscribers.lock() {
                        subscribers.retain(|s| match s.queue.try_send(row.clone()) {
                            Ok(()) => true,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                s.cut.store(true, Ordering::Release);
                                metrics::watcher_cut();
                                false
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => false,
                        });
                    }
                }
                if !full {
                    break;
                }
            }
        }
    }

    /// Listens on PostgreSQL for changes committed through any replica, on a
    /// connection of its own (`url`), until the process ends: reconnects with
    /// a backoff, and after each (re)connect wakes every hub to catch up.
    pub async fn listen(self, url: String) {
        use diesel_async::AsyncConnection;
        let mut backoff = Duration::from_millis(100);
        loop {
            match diesel_async::AsyncPgConnection::establish(&url).await {
                Ok(mut conn) => match change::listen(&mut conn).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        tracing::debug!("listening for changes");
                        self.wake_all().await;
                        let mut notifications = std::pin::pin!(conn.notifications_stream());
                        // A poll now and then catches up with a NOTIFY lost between
                        // another replica's commit and its notify, or on a silently
                        // dead connection.
                        let mut poll = tokio::time::interval(CATCH_UP_POLL);
                        poll.tick().await;
                        loop {
                            tokio::select! {
                                notification = notifications.next() => match notification {
                                    Some(Ok(n)) => self.wake(&n.payload).await,
                                    Some(Err(error)) => {
                                        tracing::warn!(%error, "the change listener failed");
                                        break;
                                    }
                                    None => break,
                                },
                                _ = poll.tick() => self.wake_all().await,
                            }
                        }
                        tracing::warn!("the change listener's connection closed; reconnecting");
                    }
                    Err(error) => tracing::warn!(%error, "LISTEN failed; retrying"),
                },
                Err(error) => tracing::warn!(%error, "the change listener cannot connect; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            // Whatever committed while it was down is read by the hubs now.
            self.wake_all().await;
        }
    }
}
