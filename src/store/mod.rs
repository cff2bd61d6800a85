//! Persistence: the connection pools of both backends, the one way queries are
//! written for both (the [`dispatch!`] macro over [`Conn`]), transactions and
//! migrations. One module per resource holds that resource's queries.

pub mod activity;
pub mod activity_type;
pub mod change;
pub mod contact;
pub mod prepared;
pub mod request_id;
pub mod schema;
pub mod sql_types;
pub mod table;
pub mod task;
pub mod task_category;

use std::{future::Future, pin::Pin, time::Duration};

use diesel::{ConnectionError, ConnectionResult, SqliteConnection};
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
        deadpool::{Object, Pool},
    },
    sync_connection_wrapper::{SpawnBlocking, SyncConnectionWrapper},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures::FutureExt;

use crate::{
    config::Database,
    deadline::{self, CallContext},
    error::{Error, Result},
};

/// A SQLite connection behind diesel-async's interface, whose statements run
/// on the thread that asks ([`OnThisThread`]): the store uses one only on a
/// blocking thread ([`on_blocking_thread`]), which runs a whole read or
/// transaction there, one hop from the async runtime per call instead of
/// one per statement.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection, OnThisThread>;

/// Runs a SQLite connection's work at once, on the calling thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnThisThread;

impl SpawnBlocking for OnThisThread {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> futures::future::BoxFuture<'a, std::result::Result<R, Box<dyn std::error::Error + Send + Sync + 'static>>>
    where
        R: Send + 'static,
    {
        Box::pin(std::future::ready(Ok(task())))
    }

    fn get_runtime() -> Self {
        OnThisThread
    }
}

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// How long a call waits for a pooled connection before it is UNAVAILABLE.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long the health check waits for the database to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// How long SQLite waits for a lock before it reports "database is locked".
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;
/// Arbitrary key of the advisory lock that serializes migrations of replicas.
const PG_MIGRATION_LOCK: i64 = 0x6167_656e_6461;

/// A connection of either backend, borrowed for one query or transaction.
/// Store functions take `&mut Conn` so they run inside or outside a transaction.
pub enum Conn<'a> {
    /// PostgreSQL, shared so that independent statements can be sent
    /// together ([`Conn::all`]).
    Pg(&'a AsyncPgConnection),
    /// SQLite.
    Sqlite(&'a mut SqliteConn),
}

/// Statements run by [`Conn::all`], with everything they need moved in.
pub type Step = Box<dyn for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, ()> + Send>;

impl Conn<'_> {
    /// Whether this is a PostgreSQL connection.
    pub fn is_pg(&self) -> bool {
        matches!(self, Conn::Pg(_))
    }

    /// Runs steps that need nothing from each other's results: on
    /// PostgreSQL at once, so that their statements go out together and
    /// come back in one round trip (pipelining; the server still runs them
    /// in the order given); on SQLite one after another. The error is the
    /// first step's to fail, in the order given: after a failed statement
    /// PostgreSQL refuses the rest of the transaction, and the caller rolls
    /// it back.
    pub async fn all(&mut self, steps: Vec<Step>) -> Result<()> {
        match self {
            Conn::Pg(pg) => {
                let pg: &AsyncPgConnection = pg;
                let mut conns: Vec<Conn<'_>> = steps.iter().map(|_| Conn::Pg(pg)).collect();
                let runs = steps.into_iter().zip(conns.iter_mut()).map(|(step, conn)| step(conn));
                futures::future::join_all(runs).await.into_iter().collect()
            }
            Conn::Sqlite(_) => {
                for step in steps {
                    step(self).await?;
                }
                Ok(())
            }
        }
    }

    /// [`Conn::all`] of two steps that answer with a value each.
    pub async fn both<A, B, FA, FB>(&mut self, a: FA, b: FB) -> Result<(A, B)>
    where
        FA: for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, A>,
        FB: for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, B>,
    {
        match self {
            Conn::Pg(pg) => {
                let pg: &AsyncPgConnection = pg;
                let (mut first, mut second) = (Conn::Pg(pg), Conn::Pg(pg));
                let (a, b) = futures::join!(a(&mut first), b(&mut second));
                Ok((a?, b?))
            }
            Conn::Sqlite(_) => {
                let a = a(self).await?;
                Ok((a, b(self).await?))
            }
        }
    }
}

/// Expands the same query body once per backend, with `$c` bound to the
/// concrete connection, so one diesel query serves PostgreSQL and SQLite.
#[macro_export]
macro_rules! dispatch {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::Conn::Pg(inner) => {
                let $c: &mut &::diesel_async::AsyncPgConnection = &mut *inner;
                $body
            }
            $crate::store::Conn::Sqlite(inner) => {
                let $c: &mut $crate::store::SqliteConn = &mut **inner;
                $body
            }
        }
    };
}

/// The future a transaction body returns.
pub type TxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// The database of a running server: a pool per backend. SQLite has one
/// writer connection (SQLite allows one writer at a time; a single writer
/// never meets "database is locked" mid-transaction) and a pool of readers.
#[derive(Clone)]
pub enum Db {
    /// PostgreSQL.
    Pg(Pool<AsyncPgConnection>),
    /// SQLite.
    Sqlite {
        /// The one connection that writes.
        writer: Pool<SqliteConn>,
        /// Connections that only read.
        readers: Pool<SqliteConn>,
    },
}

impl Db {
    /// Opens pools for `database` (nothing is connected until first use).
    pub fn connect(database: &Database, pool_size: usize) -> Result<Db> {
        match database {
            Database::Postgres(url) => {
                let manager =
                    AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url.clone(), manager_config());
                let pool = Pool::builder(manager)
                    .max_size(pool_size)
                    .wait_timeout(Some(POOL_WAIT))
                    .create_timeout(Some(POOL_WAIT))
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| Error::Internal(format!("building the PostgreSQL pool: {e}")))?;
                Ok(Db::Pg(pool))
            }
            Database::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Error::Internal(format!("creating {}: {e}", parent.display())))?;
                }
                let url = path.to_string_lossy().into_owned();
                let build = |size: usize| {
                    let mut config = manager_config::<SqliteConn>();
                    config.custom_setup = Box::new(|url| establish_sqlite(url.to_string()).boxed());
                    let manager = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(url.clone(), config);
                    Pool::builder(manager)
                        .max_size(size)
                        .wait_timeout(Some(POOL_WAIT))
                        .create_timeout(Some(POOL_WAIT))
                        .runtime(deadpool::Runtime::Tokio1)
                        .build()
                        .map_err(|e| Error::Internal(format!("building the SQLite pool: {e}")))
                };
                Ok(Db::Sqlite { writer: build(1)?, readers: build(pool_size.max(2))? })
            }
        }
    }

    /// Whether this is PostgreSQL.
    pub fn is_pg(&self) -> bool {
        matches!(self, Db::Pg(_))
    }

    /// The status of each pool, by name, for the metrics.
    pub fn pool_status(&self) -> Vec<(&'static str, deadpool::Status)> {
        match self {
            Db::Pg(pool) => vec![("postgres", pool.status())],
            Db::Sqlite { writer, readers } => {
                vec![("sqlite_writer", writer.status()), ("sqlite_readers", readers.status())]
            }
        }
    }

    /// Runs `body` on a connection for reads, outside a transaction. On
    /// PostgreSQL the call's deadline becomes the `statement_timeout` of its
    /// statements. Like [`Db::write`], the work runs on a task of its own, so
    /// a dropped call never leaves a connection busy: the task finishes,
    /// returns the connection and only then releases the call's permit.
    pub async fn read<T, F>(&self, body: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, T> + Send + 'static,
    {
        let db = self.clone();
        detached(async move {
            match &db {
                Db::Pg(pool) => {
                    // The session's statement_timeout is set for this read and
                    // reset after it; a panic in between discards the connection.
                    let mut guard = PanicGuard(Some(timed_get(pool, "postgres").await?));
                    let Some(object) = guard.0.as_mut() else {
                        return Err(Error::Internal("the pooled connection vanished".into()));
                    };
                    let conn: &AsyncPgConnection = object;
                    let result = match statement_timeout_ms()? {
                        None => body(&mut Conn::Pg(conn)).await,
                        Some(ms) => {
                            // The SET goes out with the read's first statement (both
                            // pipelined); the RESET follows, so the connection goes back
                            // to its pool as it came.
                            let set = format!("SET statement_timeout = {ms}");
                            let (mut setter, mut reader) = (conn, Conn::Pg(conn));
                            let (set, result) = futures::join!(setter.batch_execute(&set), body(&mut reader));
                            (&mut &*conn).batch_execute("RESET statement_timeout").await?;
                            set?;
                            result
                        }
                    };
                    past_deadline(result)
                }
                Db::Sqlite { readers, .. } => {
                    let object = timed_get(readers, "sqlite_readers").await?;
                    on_blocking_thread(move || async move {
                        let mut object = object;
                        body(&mut Conn::Sqlite(&mut object)).await
                    })
                    .await
                }
            }
        })
        .await
    }

    /// Runs `body` in one transaction: committed when it returns `Ok`, rolled
    /// back when it returns `Err`. On PostgreSQL the call's deadline
    /// ([`crate::deadline`]) becomes the transaction's `statement_timeout`.
    ///
    /// Cancel safety: the transaction runs on a task of its own, so once it
    /// has begun it runs to commit or rollback however the call ends (a
    /// client that resets its stream or closes its connection drops the call
    /// future, not this task), and no connection goes back to its pool inside
    /// a transaction. An unacknowledged write is therefore wholly there or
    /// absent, and never leaves a row lock behind.
    pub async fn write<T, F>(&self, body: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, T> + Send + 'static,
    {
        self.write_and_then(body, |_| {}).await
    }

    /// [`Db::write`], then `committed` with the result once the transaction
    /// has committed, on the same task: it runs even when the call that
    /// started the write is gone (to wake watchers, say).
    pub async fn write_and_then<T, F, C>(&self, body: F, committed: C) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, T> + Send + 'static,
        C: FnOnce(&T) + Send + 'static,
    {
        let db = self.clone();
        detached(async move {
            let value = db.write_here(body).await?;
            committed(&value);
            Ok(value)
        })
        .await
    }

    async fn write_here<T, F>(&self, body: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, T> + Send + 'static,
    {
        match self {
            Db::Pg(pool) => {
                let mut guard = PanicGuard(Some(timed_get(pool, "postgres").await?));
                let Some(object) = guard.0.as_mut() else {
                    return Err(Error::Internal("the pooled connection vanished".into()));
                };
                let conn: &AsyncPgConnection = object;
                // The transaction is begun and ended here, not by diesel's transaction
                // manager, so that its statements can be pipelined (`Conn::all`); a
                // panic inside discards the connection (`PanicGuard`). The database
                // stops when the caller has: with a deadline, a statement still
                // running (or waiting on a lock) at the deadline is cancelled.
                let begin = match statement_timeout_ms()? {
                    Some(ms) => format!("BEGIN; SET LOCAL statement_timeout = {ms}"),
                    None => "BEGIN".to_string(),
                };
                (&mut &*conn).batch_execute(&begin).await?;
                let result = match body(&mut Conn::Pg(conn)).await {
                    // The caller has been told DEADLINE_EXCEEDED: roll back.
                    Ok(_) if deadline::remaining().is_some_and(|left| left.is_zero()) => Err(Error::DeadlineExceeded),
                    Ok(value) => match (&mut &*conn).batch_execute("COMMIT").await {
                        Ok(()) => return Ok(value),
                        Err(error) => Err(error.into()),
                    },
                    Err(error) => Err(error),
                };
                // A ROLLBACK that fails leaves the connection broken (closed), and the
                // pool drops it.
                if let Err(error) = (&mut &*conn).batch_execute("ROLLBACK").await {
                    tracing::warn!(%error, "rolling back failed");
                }
                past_deadline(result)
            }
            Db::Sqlite { writer, .. } => {
                let object = timed_get(writer, "sqlite_writer").await?;
                let result = on_blocking_thread(move || async move {
                    let mut guard = PanicGuard(Some(object));
                    let Some(object) = guard.0.as_mut() else {
                        return Err(Error::Internal("the writer connection vanished".into()));
                    };
                    sqlite_transaction(object, body).await
                })
                .await;
                past_deadline(result)
            }
        }
    }

    /// Removes request ids past 24 hours and changes past `change_retention`,
    /// a bounded batch at a time; returns how many rows went. (Soft-deleted
    /// resources are purged by their pipelines, which journal the purge.)
    pub async fn purge_housekeeping(&self, change_retention: Duration) -> Result<usize> {
        const BATCH: i64 = 1000;
        let keep = i64::try_from(change_retention.as_micros()).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let (requests, changes) = self
                .write(move |c| {
                    Box::pin(async move {
                        let now = now_micros();
                        let requests = request_id::purge_expired(c, now).await?;
                        let changes = change::purge_expired(c, now.saturating_sub(keep), BATCH).await?;
                        Ok((requests, changes))
                    })
                })
                .await?;
            total += requests + changes;
            if (changes as i64) < BATCH {
                return Ok(total);
            }
        }
    }

    /// Whether the database answers a trivial query: `Some(true)` it does,
    /// `Some(false)` it fails or does not answer within 3 s, `None` no
    /// pooled connection came free to ask it (the replica is busy, which
    /// says nothing about the database).
    pub async fn ping(&self) -> Option<bool> {
        // A query that reads the schema, so a broken SQLite file shows too.
        const PING: &str = "SELECT count(*) FROM contacts WHERE false";
        let timeouts = deadpool::managed::Timeouts {
            wait: Some(Duration::from_secs(1)),
            create: Some(PING_TIMEOUT),
            recycle: Some(PING_TIMEOUT),
        };
        let busy = |error: &diesel_async::pooled_connection::deadpool::PoolError| {
            matches!(error, deadpool::managed::PoolError::Timeout(deadpool::managed::TimeoutType::Wait))
        };
        let answered = match self {
            Db::Pg(pool) => match pool.timeout_get(&timeouts).await {
                Ok(object) => {
                    let conn: &AsyncPgConnection = &object;
                    tokio::time::timeout(PING_TIMEOUT, (&mut &*conn).batch_execute(PING)).await.is_ok_and(|r| r.is_ok())
                }
                Err(error) if busy(&error) => return None,
                Err(_) => false,
            },
            Db::Sqlite { readers, .. } => match readers.timeout_get(&timeouts).await {
                Ok(object) => {
                    let query = on_blocking_thread(move || async move {
                        let mut object = object;
                        Ok(object.batch_execute(PING).await?)
                    });
                    tokio::time::timeout(PING_TIMEOUT, query).await.is_ok_and(|r| r.is_ok())
                }
                Err(error) if busy(&error) => return None,
                Err(_) => false,
            },
        };
        Some(answered)
    }

    /// Applies pending migrations. Replicas starting together on PostgreSQL
    /// take turns through an advisory lock.
    pub async fn migrate(database: &Database) -> Result<()> {
        match database {
            Database::Postgres(url) => {
                let mut conn = AsyncPgConnection::establish(url).await.map_err(connection_error)?;
                diesel::sql_query(format!("SELECT pg_advisory_lock({PG_MIGRATION_LOCK})")).execute(&mut conn).await?;
                let mut harness = AsyncMigrationHarness::new(conn);
                let applied = harness
                    .run_pending_migrations(PG_MIGRATIONS)
                    .map(|v| v.len())
                    .map_err(|e| Error::Database(format!("migrating PostgreSQL: {e}")));
                let mut conn = harness.into_inner();
                diesel::sql_query(format!("SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})")).execute(&mut conn).await?;
                tracing::info!(applied = applied?, "PostgreSQL migrations done");
            }
            Database::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Error::Internal(format!("creating {}: {e}", parent.display())))?;
                }
                let path = path.to_string_lossy().into_owned();
                let applied = tokio::task::spawn_blocking(move || {
                    let mut conn = open_sqlite(&path).map_err(connection_error)?;
                    conn.run_pending_migrations(SQLITE_MIGRATIONS)
                        .map(|v| v.len())
                        .map_err(|e| Error::Database(format!("migrating SQLite: {e}")))
                })
                .await
                .map_err(|e| Error::Internal(format!("migrating SQLite: {e}")))??;
                tracing::info!(applied, "SQLite migrations done");
            }
        }
        Ok(())
    }
}

/// Holds a pooled connection in a state we set by hand (SQLite's `BEGIN
/// IMMEDIATE`, which diesel's transaction manager does not see; a read's
/// session `statement_timeout`): if the task panics meanwhile, the
/// connection is taken out of its pool and closed (SQLite then rolls back),
/// instead of going back inside a transaction or with a short timeout.
struct PanicGuard<C>(Option<Object<C>>)
where
    C: diesel_async::pooled_connection::PoolableConnection + 'static,
    AsyncDieselConnectionManager<C>: deadpool::managed::Manager<Type = C>;

impl<C> Drop for PanicGuard<C>
where
    C: diesel_async::pooled_connection::PoolableConnection + 'static,
    AsyncDieselConnectionManager<C>: deadpool::managed::Manager<Type = C>,
{
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(object) = self.0.take()
        {
            drop(Object::take(object));
        }
    }
}

/// Runs `body` in one SQLite transaction on `conn`, the writer, on the
/// blocking thread the caller runs on.
async fn sqlite_transaction<T, F>(conn: &mut SqliteConn, body: F) -> Result<T>
where
    F: for<'a, 'b> FnOnce(&'a mut Conn<'b>) -> TxFuture<'a, T>,
{
    // SQLite has no statement timeout: the wait for the write lock
    // is what a deadline can shorten.
    let left = deadline::remaining().map(|left| left.as_millis().min(u128::from(SQLITE_BUSY_TIMEOUT_MS)));
    if let Some(ms) = left {
        if ms == 0 {
            return Err(Error::DeadlineExceeded);
        }
        conn.batch_execute(&format!("PRAGMA busy_timeout = {ms}")).await?;
    }
    // BEGIN IMMEDIATE takes the write lock first, waiting for it
    // under the busy timeout; a deferred BEGIN that reads and then
    // writes would fail at once (SQLITE_BUSY) whenever another
    // connection holds the lock, without waiting.
    let result = match conn.batch_execute("BEGIN IMMEDIATE").await {
        Ok(()) => match body(&mut Conn::Sqlite(conn)).await {
            // The caller has been told DEADLINE_EXCEEDED: roll back.
            Ok(_) if deadline::remaining().is_some_and(|left| left.is_zero()) => {
                let _ = conn.batch_execute("ROLLBACK").await;
                Err(Error::DeadlineExceeded)
            }
            Ok(value) => match conn.batch_execute("COMMIT").await {
                Ok(()) => Ok(value),
                Err(error) => {
                    let _ = conn.batch_execute("ROLLBACK").await;
                    Err(error.into())
                }
            },
            Err(error) => {
                let _ = conn.batch_execute("ROLLBACK").await;
                Err(error)
            }
        },
        Err(error) => Err(error.into()),
    };
    if left.is_some() {
        // A failure here must not turn a committed write into an error.
        if let Err(error) = conn.batch_execute(&format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")).await {
            tracing::warn!(%error, "restoring SQLite's busy timeout failed");
        }
    }
    result
}

/// Runs `work` on a blocking thread, in the call's context (its deadline),
/// and waits for it: SQLite's statements block, so a read or a transaction
/// runs wholly there, with [`OnThisThread`] connections.
async fn on_blocking_thread<T, W, Fut>(work: W) -> Result<T>
where
    T: Send + 'static,
    W: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let context = CallContext::current();
    let handle = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || handle.block_on(context.scope(work()))).await {
        Ok(result) => result,
        Err(error) => Err(Error::Internal(format!("a SQLite task failed: {error}"))),
    }
}

/// Runs the database work of a call on a task of its own, in the call's
/// context (deadline and permit), and waits for it. Dropping the returned
/// future leaves the task running to its end: transactions commit or roll
/// back, connections go back to their pools idle, and the call's permit is
/// released only then.
async fn detached<T: Send + 'static>(work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    let context = CallContext::current();
    match tokio::spawn(context.scope(work)).await {
        Ok(result) => result,
        Err(error) => Err(Error::Internal(format!("a database task failed: {error}"))),
    }
}

/// The longest `statement_timeout` PostgreSQL accepts (milliseconds, an int).
const MAX_STATEMENT_TIMEOUT_MS: u128 = i32::MAX as u128;

/// The current call's time left as a `statement_timeout` in milliseconds
/// (clamped to what PostgreSQL accepts); `DEADLINE_EXCEEDED` once past.
fn statement_timeout_ms() -> Result<Option<u128>> {
    match deadline::remaining() {
        None => Ok(None),
        Some(left) if left.as_millis() == 0 => Err(Error::DeadlineExceeded),
        Some(left) => Ok(Some(left.as_millis().min(MAX_STATEMENT_TIMEOUT_MS))),
    }
}

/// A database failure once the deadline has passed is the deadline's doing.
fn past_deadline<T>(result: Result<T>) -> Result<T> {
    match result {
        Err(Error::Database(_)) if deadline::remaining().is_some_and(|left| left.is_zero()) => {
            Err(Error::DeadlineExceeded)
        }
        other => other,
    }
}

/// How the pools hand out connections: a connection goes back to its pool
/// only outside a transaction, and one whose socket closed is dropped at
/// checkout, so no test query is sent at every checkout (diesel-async's
/// default sends `SELECT 1`: a round trip per call). A connection that died
/// while idle fails its call's first statement, which is `UNAVAILABLE`.
fn manager_config<C>() -> ManagerConfig<C>
where
    C: diesel_async::AsyncConnection + 'static,
{
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    config
}

/// Takes a connection from `pool`, recording how long that took.
async fn timed_get<C>(pool: &Pool<C>, name: &'static str) -> Result<Object<C>>
where
    C: diesel_async::pooled_connection::PoolableConnection + 'static,
    diesel_async::pooled_connection::AsyncDieselConnectionManager<C>:
        deadpool::managed::Manager<Type = C, Error = diesel_async::pooled_connection::PoolError>,
{
    let start = std::time::Instant::now();
    let object = pool.get().await;
    metrics::histogram!(crate::telemetry::metrics::POOL_WAIT_SECONDS, "pool" => name)
        .record(start.elapsed().as_secs_f64());
    Ok(object?)
}

fn connection_error(error: ConnectionError) -> Error {
    Error::Database(format!("connecting: {error}"))
}

/// Opens a SQLite connection set up for concurrent use: the busy timeout
/// first (so setting WAL cannot fail on a locked file), then WAL.
async fn establish_sqlite(path: String) -> ConnectionResult<SqliteConn> {
    let opened = tokio::task::spawn_blocking(move || open_sqlite(&path))
        .await
        .map_err(|e| ConnectionError::BadConnection(format!("opening SQLite: {e}")))?;
    opened.map(SqliteConn::new)
}

/// [`establish_sqlite`] on the calling thread, as a plain diesel connection.
fn open_sqlite(path: &str) -> ConnectionResult<SqliteConnection> {
    use diesel::{Connection, connection::SimpleConnection};
    let mut conn = SqliteConnection::establish(path)?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
    ))
    .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Microseconds since the Unix epoch, the unit of every stored time.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Whether `table` holds the row `id` of `tenant` (deleted or not).
pub async fn row_exists(conn: &mut Conn<'_>, table: &'static str, tenant: &str, id: &str) -> Result<bool> {
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let placeholders = if conn.is_pg() { ("$1", "$2") } else { ("?1", "?2") };
    let query =
        format!("SELECT COUNT(*) AS n FROM {table} WHERE tenant_id = {} AND id = {}", placeholders.0, placeholders.1);
    let found: Found = dispatch!(conn, |c| {
        let query = diesel::sql_query(query.clone())
            .bind::<diesel::sql_types::Text, _>(tenant)
            .bind::<diesel::sql_types::Text, _>(id);
        prepared::Kept::fixed(query).get_result(c).await?
    });
    Ok(found.n > 0)
}

/// The message and constraint of a unique-constraint violation, to tell
/// which key was taken; `None` for any other error.
pub fn unique_violation(error: &diesel::result::Error) -> Option<String> {
    match error {
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, info) => {
            Some(format!("{} {}", info.message(), info.constraint_name().unwrap_or_default()))
        }
        _ => None,
    }
}

/// Loads the rows of a query made by the list machinery
/// ([`crate::query::ListPlan::sql`]), binding its parameters, on either backend.
/// On SQLite the rows are read by diesel's own connection, on the thread
/// the connection runs on ([`OnThisThread`]): deserialized where they are,
/// not first copied into owned rows to cross threads.
#[macro_export]
macro_rules! load_sql {
    ($conn:expr, $sql:expr) => {{
        macro_rules! bound {
            ($backend:ty) => {{
                let mut query = ::diesel::sql_query($sql.text.clone()).into_boxed::<$backend>();
                for param in &$sql.params {
                    query = match param {
                        $crate::query::spec::Param::Text(v) => query.bind::<::diesel::sql_types::Text, _>(v.clone()),
                        $crate::query::spec::Param::BigInt(v) => query.bind::<::diesel::sql_types::BigInt, _>(*v),
                        $crate::query::spec::Param::Double(v) => query.bind::<::diesel::sql_types::Double, _>(*v),
                        $crate::query::spec::Param::Bool(v) => query.bind::<::diesel::sql_types::Bool, _>(*v),
                    };
                }
                $crate::store::prepared::Kept::admitted(query, &$sql.text)
            }};
        }
        match $conn {
            $crate::store::Conn::Pg(c) => ::diesel_async::RunQueryDsl::load(bound!(::diesel::pg::Pg), &mut *c).await?,
            $crate::store::Conn::Sqlite(c) => {
                let query = bound!(::diesel::sqlite::Sqlite);
                c.spawn_blocking(move |c| ::diesel::RunQueryDsl::load(query, c)).await?
            }
        }
    }};
}
