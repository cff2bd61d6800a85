//! The harness: a real agenda server in-process on port 0, on a fresh
//! database of either backend, and real tonic clients. PostgreSQL tests run
//! against a private cluster that the harness starts once per test run from
//! the installed server binaries, with one database per test copied from a
//! migrated template.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use agenda::{
    api::{
        ActivityRevision, BatchCreateContactsRequest, Change, CompleteTaskRequest, Contact, CreateContactRequest,
        CreateTaskRequest, GetTaskRequest, ListActivityRevisionsRequest, ListChangesRequest, ListTasksRequest,
        ResourceType, Task, UpdateTaskRequest, activity_service_client::ActivityServiceClient,
        change_service_client::ChangeServiceClient, contact_service_client::ContactServiceClient,
        task_service_client::TaskServiceClient,
    },
    config::{Options, Settings},
    startup::Application,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use prost_types::{FieldMask, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tonic_types::{ErrorInfo, StatusExt};

/// The HS256 secret every test server accepts.
pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite in a temporary folder.
    Sqlite,
    /// The harness's private PostgreSQL cluster.
    Postgres,
}

/// Whether `AGENDA_TEST_BACKENDS` (comma-separated; default both) runs this backend.
pub fn enabled(backend: Backend) -> bool {
    let name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    match std::env::var("AGENDA_TEST_BACKENDS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|b| b.trim() == name),
        _ => true,
    }
}

/// A running test server; stopped when dropped.
pub struct TestApp {
    /// The backend it runs on.
    pub backend: Backend,
    /// A channel to it.
    pub channel: Channel,
    /// Its database URL (sqlite://… or postgres://…).
    pub database_url: String,
    /// The gRPC address.
    pub addr: std::net::SocketAddr,
    /// The address of `/metrics`.
    pub metrics_addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// A server on `backend` with the default test settings.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// A server on `backend`, with settings adjusted by `adjust`.
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Options)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("agenda.db").display()),
        Backend::Postgres => postgres().new_database().await,
    };
    let mut options = Options {
        database_url: Some(database_url.clone()),
        data_dir: Some(dir.path().to_path_buf()),
        database_pool_size: Some(4),
        listen: Some("127.0.0.1:0".parse().expect("address")),
        metrics_listen: Some("127.0.0.1:0".parse().expect("address")),
        auth_hs256_secret: Some(SECRET.to_string()),
        shutdown_grace: Some(Duration::from_secs(5)),
        ..Options::default()
    };
    adjust(&mut options);
    let settings = Settings::resolve(options).expect("test settings resolve");
    let app = Application::build(settings).await.expect("server builds");
    let (addr, metrics_addr) = (app.local_addr(), app.metrics_addr());
    let endpoint = format!("http://{addr}");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    let channel = Channel::from_shared(endpoint).expect("endpoint").connect_lazy();
    TestApp { backend, channel, database_url, addr, metrics_addr, shutdown: Some(tx), server: Some(server), _dir: dir }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A contact client.
pub type Contacts = ContactServiceClient<InterceptedService<Channel, Bearer>>;

/// A change-feed client.
pub type Changes = ChangeServiceClient<InterceptedService<Channel, Bearer>>;

/// A change-feed client on `channel` for `tenant`.
pub fn changes_on(channel: Channel, tenant: &str) -> Changes {
    let bearer = Bearer(Some(format!("Bearer {}", token(tenant, "changes.read")).parse().expect("ascii token")));
    ChangeServiceClient::with_interceptor(channel, bearer)
}

/// Every stored change of the client's tenant after `after`.
pub async fn all_changes(changes: &mut Changes, after: i64) -> Vec<Change> {
    let mut out = Vec::new();
    let mut start_after = after;
    loop {
        let page = changes
            .list_changes(ListChangesRequest { start_after, page_size: 1000, ..Default::default() })
            .await
            .expect("list changes")
            .into_inner();
        let done = page.changes.is_empty();
        out.extend(page.changes);
        if done || page.next_start_after == start_after {
            return out;
        }
        start_after = page.next_start_after;
    }
}

/// A contact client on `channel` for `tenant` with the contact scopes.
pub fn contacts_on(channel: Channel, tenant: &str) -> Contacts {
    let bearer = Bearer(Some(format!("Bearer {}", token(tenant, "contacts.write")).parse().expect("ascii token")));
    ContactServiceClient::with_interceptor(channel, bearer)
}

/// An activity client.
pub type Activities = ActivityServiceClient<InterceptedService<Channel, Bearer>>;

/// An activity client on `channel` for `tenant`, subject `user-1`, with the
/// activity and contact write scopes.
pub fn activities_on(channel: Channel, tenant: &str) -> Activities {
    let scopes = "activities.write contacts.write";
    let bearer = Bearer(Some(format!("Bearer {}", token(tenant, scopes)).parse().expect("ascii token")));
    ActivityServiceClient::with_interceptor(channel, bearer)
}

/// A task client.
pub type Tasks = TaskServiceClient<InterceptedService<Channel, Bearer>>;

/// A task client on `channel` for `tenant`, subject `user-1`, with the task
/// and contact write scopes.
pub fn tasks_on(channel: Channel, tenant: &str) -> Tasks {
    tasks_sending(channel, &token(tenant, "tasks.write contacts.write"))
}

fn tasks_sending(channel: Channel, token: &str) -> Tasks {
    let bearer = Bearer(Some(format!("Bearer {token}").parse().expect("ascii token")));
    TaskServiceClient::with_interceptor(channel, bearer)
}

/// `message` as a request that sends `accept-language: lang`.
pub fn with_language<T>(message: T, lang: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("accept-language", lang.parse().expect("an ascii language tag"));
    request
}

impl TestApp {
    /// A contact client sending `token` (none when `None`).
    pub fn contacts_with(&self, token: Option<&str>) -> Contacts {
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().expect("ascii token")));
        ContactServiceClient::with_interceptor(self.channel.clone(), bearer)
    }

    /// Starts the drain, as SIGTERM does.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server to return (the process would then exit with its result).
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        self.server.take().expect("not yet stopped").await.expect("the server task does not panic")
    }

    /// A contact client for `tenant` with the contact scopes.
    pub fn contacts(&self, tenant: &str) -> Contacts {
        contacts_on(self.channel.clone(), tenant)
    }

    /// A change-feed client for `tenant`.
    pub fn changes(&self, tenant: &str) -> Changes {
        changes_on(self.channel.clone(), tenant)
    }

    /// An activity client for `tenant` with the activity and contact write scopes.
    pub fn activities(&self, tenant: &str) -> Activities {
        activities_on(self.channel.clone(), tenant)
    }

    /// An activity client sending `token` (none when `None`).
    pub fn activities_with(&self, token: Option<&str>) -> Activities {
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().expect("ascii token")));
        ActivityServiceClient::with_interceptor(self.channel.clone(), bearer)
    }

    /// An activity client for `tenant`, subject `user-1`, with
    /// `activities.write` and `admin` (activity types, any revision comment).
    pub fn activity_admin(&self, tenant: &str) -> Activities {
        self.activities_with(Some(&token(tenant, "activities.write admin")))
    }

    /// A task client for `tenant`, subject `user-1`, with the task and contact write scopes.
    pub fn tasks(&self, tenant: &str) -> Tasks {
        tasks_on(self.channel.clone(), tenant)
    }

    /// A task client for `tenant` as the caller `sub`, with `scopes`.
    pub fn tasks_as(&self, tenant: &str, sub: &str, scopes: &str) -> Tasks {
        tasks_sending(self.channel.clone(), &token_as(tenant, sub, scopes))
    }

    /// A task client for `tenant`, subject `user-1`, with `tasks.admin`
    /// (any task, deletes, categories) and `contacts.write`.
    pub fn task_admin(&self, tenant: &str) -> Tasks {
        self.tasks_as(tenant, "user-1", "tasks.admin contacts.write")
    }

    /// A change-feed client sending `token`.
    pub fn changes_with(&self, token: &str) -> Changes {
        let bearer = Bearer(Some(format!("Bearer {token}").parse().expect("ascii token")));
        ChangeServiceClient::with_interceptor(self.channel.clone(), bearer)
    }
}

/// An HS256 test token for `tenant`, subject `user-1`, with `scopes`, valid for an hour.
pub fn token(tenant: &str, scopes: &str) -> String {
    token_as(tenant, "user-1", scopes)
}

/// An HS256 test token for `tenant` and `sub`.
pub fn token_as(tenant: &str, sub: &str, scopes: &str) -> String {
    agenda::devmode::mint(SECRET, tenant, sub, scopes, Duration::from_secs(3600)).expect("token")
}

/// Asserts that `status` has `code` and an agenda ErrorInfo with `reason`, and returns the ErrorInfo.
pub fn assert_error(status: &Status, code: Code, reason: &str) -> ErrorInfo {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let details = status.get_error_details();
    let info = details.error_info().cloned().unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "agenda");
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    info
}

/// Asserts `code` and `reason` as [`assert_error`] does, and that the
/// ErrorInfo names `field`.
pub fn assert_field_error(status: &Status, code: Code, reason: &str, field: &str) {
    let info = assert_error(status, code, reason);
    assert_eq!(info.metadata.get("field").map(String::as_str), Some(field), "{status:?}");
}

/// Asserts that nothing in `html` would run: no script, style, frame, SVG
/// or MathML, no event handler, no `javascript:` URL (also not with
/// whitespace or control characters inside it).
pub fn assert_safe_html(html: &str, context: &str) {
    const FORBIDDEN: &[&str] =
        &["<script", "onerror", "onload", "onclick", "javascript:", "<iframe", "<svg", "<object", "<style", "<math"];
    let lower = html.to_lowercase();
    for bad in FORBIDDEN {
        assert!(!lower.contains(bad), "{context}: {bad:?} survived in {html:?}");
    }
    let squeezed: String = lower.chars().filter(|c| !c.is_whitespace() && !c.is_control()).collect();
    assert!(!squeezed.contains("javascript:"), "{context}: a javascript: URL survived in {html:?}");
}

/// Creates `count` contacts in `tenant` and returns their ids, in order.
pub async fn new_contacts(app: &TestApp, tenant: &str, count: usize) -> Vec<String> {
    let requests = (0..count)
        .map(|i| CreateContactRequest {
            contact: Some(Contact { display_name: format!("Contact {i}"), ..Default::default() }),
            request_id: String::new(),
        })
        .collect();
    let created = app
        .contacts(tenant)
        .batch_create_contacts(BatchCreateContactsRequest { requests })
        .await
        .expect("create contacts")
        .into_inner();
    created.contacts.into_iter().map(|c| c.id).collect()
}

/// The whole revision journal of an activity, oldest first.
pub async fn all_revisions(client: &mut Activities, activity_id: &str) -> Vec<ActivityRevision> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_activity_revisions(ListActivityRevisionsRequest {
                activity_id: activity_id.into(),
                page_size: 1000,
                page_token,
            })
            .await
            .expect("list revisions")
            .into_inner();
        out.extend(page.activity_revisions);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

// ---------------------------------------------------------------------------
// Tasks

/// A task with only a title.
pub fn titled(title: &str) -> Task {
    Task { title: title.into(), ..Default::default() }
}

/// A task carrying only `id`, to be filled in for an update.
pub fn task_patch(id: &str) -> Task {
    Task { id: id.into(), ..Default::default() }
}

/// `seconds` after the epoch, as a proto timestamp.
pub fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// An RFC 3339 time such as "2026-03-23T08:00:00Z", as a proto timestamp.
pub fn utc(rfc3339: &str) -> Option<Timestamp> {
    let time = chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap_or_else(|e| panic!("{rfc3339}: {e}"));
    at(time.timestamp())
}

/// Creates `task` and returns it as the server answered.
pub async fn create_task(client: &mut Tasks, task: Task) -> Task {
    let request = CreateTaskRequest { task: Some(task), request_id: String::new() };
    client.create_task(request).await.expect("create task").into_inner()
}

/// The task `id` as the client's caller sees it.
pub async fn get_task(client: &mut Tasks, id: &str) -> Task {
    client.get_task(GetTaskRequest { id: id.into(), read_mask: None }).await.expect("get task").into_inner()
}

/// Completes task `id` without an etag, expecting success.
pub async fn complete(client: &mut Tasks, id: &str) -> Task {
    let request = CompleteTaskRequest { id: id.into(), etag: String::new() };
    client.complete_task(request).await.unwrap_or_else(|s| panic!("complete {id}: {s:?}")).into_inner()
}

/// An update of the fields of `task` named in `paths`.
pub fn update_task(task: Task, paths: &[&str]) -> UpdateTaskRequest {
    UpdateTaskRequest {
        task: Some(task),
        update_mask: Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
        allow_missing: false,
        comment: None,
    }
}

/// Every live task the filter and order select, page after page.
pub async fn list_tasks(client: &mut Tasks, filter: &str, order_by: &str) -> Vec<Task> {
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListTasksRequest {
            page_size: 1000,
            page_token,
            filter: filter.into(),
            order_by: order_by.into(),
            show_deleted: false,
            read_mask: None,
        };
        let page = client
            .list_tasks(request)
            .await
            .unwrap_or_else(|s| panic!("{filter:?} / {order_by:?}: {s:?}"))
            .into_inner();
        seen.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return seen;
        }
        page_token = page.next_page_token;
    }
}

/// The changes of `resource_type` about `resource_id` in the client's
/// tenant, once there are at least `count` of them (on PostgreSQL a change
/// is readable once every older transaction has ended: a moment after its
/// commit). To show that a call appended nothing, make a later change and
/// wait for that one: what is visible then is all there is before it.
pub async fn changes_of(
    changes: &mut Changes,
    resource_type: ResourceType,
    resource_id: &str,
    count: usize,
) -> Vec<Change> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut feed = Vec::new();
        let mut start_after = 0;
        loop {
            let page = changes
                .list_changes(ListChangesRequest {
                    start_after,
                    page_size: 1000,
                    resource_types: vec![resource_type as i32],
                    include_resources: false,
                })
                .await
                .expect("list changes")
                .into_inner();
            feed.extend(page.changes.into_iter().filter(|c| c.resource_id == resource_id));
            if page.next_start_after <= start_after {
                break;
            }
            start_after = page.next_start_after;
        }
        if feed.len() >= count {
            return feed;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of {count} changes: {feed:?}", feed.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fields of every BadRequest violation of `status`, in order.
pub fn violation_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The body of `GET /metrics`.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to /metrics");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain"), "{head}");
    body.to_string()
}

/// The value of the sample `name` whose labels include all of `labels`, 0 when absent.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Counts rows of a table in the app's database (for "changes nothing" checks).
pub async fn count_rows(app: &TestApp, table: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let sql = format!("SELECT COUNT(*) AS n FROM {table}");
    match app.backend {
        Backend::Postgres => {
            let mut conn = AsyncPgConnection::establish(&app.database_url).await.expect("connect");
            diesel::sql_query(sql).get_result::<Count>(&mut conn).await.expect("count").n
        }
        Backend::Sqlite => {
            let path = app.database_url.trim_start_matches("sqlite://").to_string();
            let mut conn = agenda::store::SqliteConn::establish(&path).await.expect("connect");
            diesel::sql_query(sql).get_result::<Count>(&mut conn).await.expect("count").n
        }
    }
}

// ---------------------------------------------------------------------------
// The private PostgreSQL cluster.

/// A PostgreSQL cluster in a temporary folder, stopped by a watcher process
/// when the test binary exits.
pub struct PgCluster {
    port: u16,
    counter: AtomicUsize,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    options: String,
}

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
const TEMPLATE: &str = "agenda_template";

/// The cluster, started on first use.
pub fn postgres() -> &'static PgCluster {
    CLUSTER.get_or_init(PgCluster::dedicated)
}

fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("AGENDA_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).collect())
        .unwrap_or_default();
    versions.retain(|bin| bin.join("initdb").exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!(
            "The PostgreSQL server binaries (initdb, pg_ctl) are not installed, so the PostgreSQL tests cannot run. \
             Install them with `apt-get install -y postgresql` (./scripts/test does this when run as root), \
             point AGENDA_TEST_PG_BIN at their folder, or set AGENDA_TEST_BACKENDS=sqlite to run SQLite only."
        )
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// A command run as the `postgres` user when we are root (initdb refuses root).
fn pg_command(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        command
    } else {
        Command::new(bin.join(tool))
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PgCluster {
    /// A cluster of its own, for a test that stops and starts it.
    pub fn dedicated() -> PgCluster {
        // Started on its own thread: it runs migrations on a runtime of its own.
        std::thread::spawn(PgCluster::start).join().expect("starting PostgreSQL panicked")
    }

    /// Stops the cluster (`pg_ctl stop -m fast`: open connections are ended).
    pub fn stop(&self) {
        let mut stop = pg_command(&self.bin, "pg_ctl");
        stop.arg("-D").arg(&self.data).args(["-m", "fast", "-w", "stop"]);
        run(stop, "pg_ctl stop");
    }

    /// Starts the stopped cluster again on its port; returns once it accepts
    /// connections.
    pub fn resume(&self) {
        let mut start = pg_command(&self.bin, "pg_ctl");
        start.arg("-D").arg(&self.data).arg("-l").arg(&self.log).arg("-o").arg(&self.options).args(["-w", "start"]);
        run(start, "pg_ctl start");
    }

    // The reaper must outlive this process, so it is never waited on.
    #[allow(clippy::zombie_processes)]
    fn start() -> PgCluster {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new().prefix("agenda-pg-").tempdir().expect("temp dir").keep();
        let data = dir.join("data");
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&dir);
                    c
                },
                "chown of the PostgreSQL folder",
            );
        }
        let mut initdb = pg_command(&bin, "initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]);
        run(initdb, "initdb");
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=400",
            dir.display()
        );
        let mut start = pg_command(&bin, "pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("postgres.log"))
            .arg("-o")
            .arg(&options)
            .args(["-w", "start"]);
        run(start, "pg_ctl start");

        // Stop the cluster and remove its folder once this test process is gone.
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runuser} {pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            runuser = if is_root() { "runuser -u postgres --" } else { "" },
            pg_ctl = bin.join("pg_ctl").display(),
            data = data.display(),
            dir = dir.display(),
        );
        Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the PostgreSQL reaper");

        let cluster =
            PgCluster { port, counter: AtomicUsize::new(0), bin, data, log: dir.join("postgres.log"), options };
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut conn = AsyncPgConnection::establish(&cluster.url("postgres")).await.expect("connect to PostgreSQL");
            diesel::sql_query(format!("CREATE DATABASE {TEMPLATE}")).execute(&mut conn).await.expect("create template");
            agenda::store::Db::migrate(&agenda::config::Database::Postgres(cluster.url(TEMPLATE)))
                .await
                .expect("migrate the template database");
        });
        cluster
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new database, a copy of the migrated template; returns its URL.
    pub async fn new_database(&self) -> String {
        let name = format!("test_{}_{}", std::process::id(), self.counter.fetch_add(1, Ordering::SeqCst));
        let mut conn = AsyncPgConnection::establish(&self.url("postgres")).await.expect("connect to PostgreSQL");
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        self.url(&name)
    }
}

/// The `agenda` binary as a process of its own, serving a database on a
/// port it keeps across restarts; killed (SIGKILL) when dropped. It is the
/// release build when `AGENDA_TEST_BINARY` names one (scripts/test builds
/// it), else the test build's.
pub struct Process {
    child: Option<std::process::Child>,
    database_url: String,
    port: u16,
    env: Vec<(String, String)>,
    channel: Channel,
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Process {
    /// The binary serving `database_url`, once it answers health checks.
    pub async fn start(database_url: &str) -> Process {
        Process::start_with(database_url, &[]).await
    }

    /// [`Process::start`] with more environment variables.
    pub async fn start_with(database_url: &str, env: &[(&str, &str)]) -> Process {
        let port = free_port();
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}")).expect("endpoint").connect_lazy();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut process = Process { child: None, database_url: database_url.to_string(), port, env, channel };
        process.restart().await;
        process
    }

    /// A channel to it; it reconnects after a restart.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Kills it with SIGKILL (no drain, no flush) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (after [`Process::kill`]) on the same port and
    /// database, and waits until it answers health checks.
    pub async fn restart(&mut self) {
        self.kill();
        let binary = std::env::var("AGENDA_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_agenda").to_string());
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env("AGENDA_DATABASE_URL", &self.database_url)
            .env("AGENDA_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("AGENDA_METRICS_LISTEN", "127.0.0.1:0")
            .env("AGENDA_AUTH_HS256_SECRET", SECRET)
            .env("AGENDA_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("start agenda"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        loop {
            let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() });
            if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(1), check).await
                && answer.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "agenda did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
