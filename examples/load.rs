//! agenda's load generator: drives unary RPCs of every resource against a
//! running server with C connections × S streams for a while, and prints,
//! per scenario, calls per second, latency percentiles from an HDR
//! histogram, errors by gRPC code, and the server's RSS.
//!
//! It seeds the tenant it loads itself (contacts, activities and tasks with
//! realistic field sizes), with ids derived from their number, so that
//! `scripts/load` can run the same statements through pgbench against the
//! same rows. `--sqlite-ceiling` runs those statements in a tight loop
//! in-process on a SQLite file instead: the ceiling of the SQLite backend.
//!
//! ```sh
//! scripts/load                                      # the whole table, PostgreSQL and SQLite
//! cargo run --release --example load -- --list      # the scenarios
//! cargo run --release --example load -- --addr 127.0.0.1:50051 --secret "$SECRET" --pid "$PID" \
//!     --connections 8 --streams 1 --duration 10s contact.get contact.list
//! ```

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use agenda::api::{
    self, Activity, Contact, EmailAddress, Participant, PhoneNumber, RelatedRecord, RichText, Task,
    activity_service_client::ActivityServiceClient, contact_service_client::ContactServiceClient,
    task_service_client::TaskServiceClient,
};
use clap::Parser;
use hdrhistogram::Histogram;
use prost_types::{FieldMask, Struct, Timestamp, Value, value::Kind};
use rand::Rng;
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Parser, Debug, Clone)]
#[command(about = "agenda's load generator")]
struct Args {
    /// The server's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// The server's HS256 secret, to mint the tenant's token.
    #[arg(long, env = "LOAD_SECRET", default_value = "")]
    secret: String,
    /// The tenant that is seeded and loaded.
    #[arg(long, default_value = "load")]
    tenant: String,
    /// The server's process id, for its RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Concurrent streams (callers) on each connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// How long each scenario is measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long each scenario runs before it is measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Contacts, activities and tasks seeded (each).
    #[arg(long, default_value_t = 10_000)]
    seed: u64,
    /// Open tasks seeded for each run of `task.complete`.
    #[arg(long, default_value_t = 20_000)]
    complete: u64,
    /// Print one JSON object per scenario instead of a table.
    #[arg(long)]
    json: bool,
    /// Callers of a second tenant (`<tenant>-flood`) flooding the server
    /// beside the measured ones, each as fast as it is answered, backing off
    /// as RetryInfo asks when it is shed: the measured tenant's latency
    /// under a noisy neighbour.
    #[arg(long, default_value_t = 0)]
    flood: usize,
    /// What the flooding tenant calls (default: the measured scenario).
    #[arg(long)]
    flood_scenario: Option<String>,
    /// Seed the tenant, then stop.
    #[arg(long)]
    seed_only: bool,
    /// List the scenarios and the RPC each calls.
    #[arg(long)]
    list: bool,
    /// Run the scenarios' SQL in a tight loop on this SQLite file (seeded
    /// by the server) instead of calling a server: the SQLite ceiling.
    #[arg(long, requires = "sql")]
    sqlite_ceiling: Option<std::path::PathBuf>,
    /// The folder of the SQLite ceiling's scripts, `<scenario>.sql`
    /// (written by scripts/load_sql.py).
    #[arg(long)]
    sql: Option<std::path::PathBuf>,
    /// `key=value` added to every JSON result (a JSON value, or else a string).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, serde_json::Value)>,
    /// The scenarios to run (default: all).
    scenarios: Vec<String>,
}

fn parse_tag(tag: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = tag.split_once('=').ok_or("a tag is key=value")?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// Ids of seeded resources: a UUID made of the kind and the number, so the
/// SQL of the ceiling can name the same rows (`scripts/load-sql/`).
fn seeded_id(kind: Kind3, n: u64) -> String {
    format!("{:08x}-0000-7000-8000-{n:012x}", kind as u32)
}

#[derive(Clone, Copy, Debug)]
enum Kind3 {
    Contact = 1,
    Activity = 2,
    Task = 3,
}

const ORGANIZATIONS: [&str; 4] = ["ACME", "Globex", "Initech", "Umbrella"];
const TYPES: [&str; 4] = ["call", "meeting", "email", "note"];

fn string(value: &str) -> Value {
    Value { kind: Some(Kind::StringValue(value.into())) }
}

fn custom_fields(n: u64) -> Struct {
    let mut fields = BTreeMap::new();
    fields.insert("tier".to_string(), string(["gold", "silver", "bronze"][(n % 3) as usize]));
    fields.insert("score".to_string(), Value { kind: Some(Kind::NumberValue((n % 100) as f64)) });
    fields.insert("vip".to_string(), Value { kind: Some(Kind::BoolValue(n.is_multiple_of(10))) });
    Struct { fields }
}

fn now_plus(seconds: i64) -> Timestamp {
    Timestamp { seconds: chrono::Utc::now().timestamp() + seconds, nanos: 0 }
}

/// A contact of realistic size (about 600 bytes encoded).
fn contact(n: u64) -> Contact {
    Contact {
        display_name: format!("Ada Lovelace {n}"),
        given_name: "Ada".into(),
        family_name: format!("Lovelace {n}"),
        organization: ORGANIZATIONS[(n % 4) as usize].into(),
        job_title: "Head of Analytical Engines".into(),
        emails: vec![EmailAddress { address: format!("ada.{n}@example.com"), label: "work".into(), primary: true }],
        phones: vec![PhoneNumber { number: "+44 20 7946 0958".into(), label: "work".into() }],
        notes: Some(RichText {
            format: 0,
            raw: format!(
                "Met at **the conference** in London ({n}); follow up about the renewal.\n\n\
                 - budget approved for next year\n- call back after the board meeting\n- send the _pricing_ sheet"
            ),
            html: String::new(),
        }),
        custom_fields: Some(custom_fields(n)),
        ..Default::default()
    }
}

/// Contacts that take part in many activities: the first participant of
/// every activity is one of them, so each has a full page of activities.
const BUSY_CONTACTS: u64 = 100;

/// An activity of realistic size (about 900 bytes encoded), with two of the
/// seeded contacts as participants.
fn activity(n: u64, contacts: u64) -> Activity {
    Activity {
        r#type: TYPES[(n % 4) as usize].into(),
        subject: format!("Quarterly review with the customer, round {n}"),
        details: Some(RichText {
            format: 0,
            raw: format!(
                "Agenda for call {n}:\n\n1. **Renewal** terms and the new _pricing_\n2. Open support tickets\n\
                 3. Roadmap for the analytics module\n\nNotes: the customer asked for a demo of [the new reports](https://example.com/reports)."
            ),
            html: String::new(),
        }),
        status: api::Status::Scheduled as i32,
        priority: api::Priority::Normal as i32,
        occur_time: Some(now_plus(-(n as i64) * 60)),
        duration: Some(prost_types::Duration { seconds: 1800, nanos: 0 }),
        location: "Meeting room 4".into(),
        medium: api::Medium::Phone as i32,
        participants: vec![
            Participant {
                contact_id: seeded_id(Kind3::Contact, n % BUSY_CONTACTS.min(contacts)),
                role: "target".into(),
            },
            Participant { contact_id: seeded_id(Kind3::Contact, (n * 7 + 1) % contacts), role: "attendee".into() },
        ],
        related: vec![RelatedRecord { r#type: "deal".into(), id: format!("D-{n}") }],
        custom_fields: Some(custom_fields(n)),
        ..Default::default()
    }
}

/// A task of realistic size, open, due within the next weeks.
fn task(n: u64) -> Task {
    Task {
        title: format!("Send the renewal offer, number {n}"),
        description: Some(RichText {
            format: 0,
            raw: "Prepare the **offer** with the new pricing and send it before the end of the quarter.".into(),
            html: String::new(),
        }),
        deadline: Some(now_plus(3600 * (1 + (n % 500) as i64))),
        responsible_user_id: "load".into(),
        priority: api::Priority::High as i32,
        status: api::Status::Scheduled as i32,
        ..Default::default()
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

/// The clients of one connection.
#[derive(Clone)]
struct Clients {
    contacts: ContactServiceClient<Channel>,
    activities: ActivityServiceClient<Channel>,
    tasks: TaskServiceClient<Channel>,
    health: HealthClient<Channel>,
    auth: MetadataValue<Ascii>,
}

impl Clients {
    fn new(channel: Channel, auth: MetadataValue<Ascii>) -> Self {
        Clients {
            contacts: ContactServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            activities: ActivityServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            tasks: TaskServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            health: HealthClient::new(channel),
            auth,
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("authorization", self.auth.clone());
        request
    }
}

/// The number of the first task seeded for `task.complete` in run `round`.
fn completion_base(seed: u64, complete: u64, round: u64) -> u64 {
    seed + round * complete
}

/// What every caller of a scenario shares.
struct Shared {
    seed: u64,
    /// Hands out fresh numbers (request ids, names, tasks to complete).
    counter: AtomicU64,
    /// This run's number: what it writes differs from earlier runs'.
    round: u64,
    /// Tasks seeded for `task.complete`.
    complete: u64,
}

impl Shared {
    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn random(&self) -> u64 {
        rand::rng().random_range(0..self.seed)
    }

    fn fresh_request_id(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

/// A load scenario: its name, the RPC it calls, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Health,
    ContactGet,
    ContactCreate,
    ContactCreateRequestId,
    ContactUpdate,
    ContactList,
    ContactListFilter,
    ContactBatchCreate,
    ActivityGet,
    ActivityCreate,
    ActivityCreateRequestId,
    ActivityUpdate,
    ActivityList,
    ActivityListFilter,
    ActivityBatchCreate,
    ActivityAddParticipant,
    TaskGet,
    TaskCreate,
    TaskUpdate,
    TaskList,
    TaskListFilter,
    TaskComplete,
}

/// Items of the batch-create scenarios.
const BATCH: u64 = 10;

impl Scenario {
    /// Every scenario, reads first: they see the seeded rows alone, before
    /// the writes grow the tables.
    const ALL: [Scenario; 22] = [
        Scenario::Health,
        Scenario::ContactGet,
        Scenario::ContactList,
        Scenario::ContactListFilter,
        Scenario::ActivityGet,
        Scenario::ActivityList,
        Scenario::ActivityListFilter,
        Scenario::TaskGet,
        Scenario::TaskList,
        Scenario::TaskListFilter,
        Scenario::ContactCreate,
        Scenario::ContactCreateRequestId,
        Scenario::ContactUpdate,
        Scenario::ContactBatchCreate,
        Scenario::ActivityCreate,
        Scenario::ActivityCreateRequestId,
        Scenario::ActivityUpdate,
        Scenario::ActivityBatchCreate,
        Scenario::ActivityAddParticipant,
        Scenario::TaskCreate,
        Scenario::TaskUpdate,
        Scenario::TaskComplete,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::ContactGet => "contact.get",
            Scenario::ContactCreate => "contact.create",
            Scenario::ContactCreateRequestId => "contact.create_request_id",
            Scenario::ContactUpdate => "contact.update",
            Scenario::ContactList => "contact.list",
            Scenario::ContactListFilter => "contact.list_filter",
            Scenario::ContactBatchCreate => "contact.batch_create",
            Scenario::ActivityGet => "activity.get",
            Scenario::ActivityCreate => "activity.create",
            Scenario::ActivityCreateRequestId => "activity.create_request_id",
            Scenario::ActivityUpdate => "activity.update",
            Scenario::ActivityList => "activity.list",
            Scenario::ActivityListFilter => "activity.list_filter",
            Scenario::ActivityBatchCreate => "activity.batch_create",
            Scenario::ActivityAddParticipant => "activity.add_participant",
            Scenario::TaskGet => "task.get",
            Scenario::TaskCreate => "task.create",
            Scenario::TaskUpdate => "task.update",
            Scenario::TaskList => "task.list",
            Scenario::TaskListFilter => "task.list_filter",
            Scenario::TaskComplete => "task.complete",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::Health => "grpc.health.v1.Health/Check (no token, no database: the call layer's ceiling)",
            Scenario::ContactGet => "GetContact of a random seeded contact",
            Scenario::ContactCreate => "CreateContact without request_id",
            Scenario::ContactCreateRequestId => "CreateContact with a new request_id",
            Scenario::ContactUpdate => "UpdateContact of a random seeded contact (job_title, notes)",
            Scenario::ContactList => "ListContacts, first page of 50, by display_name",
            Scenario::ContactListFilter => "ListContacts, first page of 50, organization = \"ACME\"",
            Scenario::ContactBatchCreate => "BatchCreateContacts of 10",
            Scenario::ActivityGet => "GetActivity of a random seeded activity",
            Scenario::ActivityCreate => "CreateActivity without request_id (two participants)",
            Scenario::ActivityCreateRequestId => "CreateActivity with a new request_id",
            Scenario::ActivityUpdate => "UpdateActivity of a random seeded activity (subject, location)",
            Scenario::ActivityList => "ListActivities, first page of 50, newest first",
            Scenario::ActivityListFilter => "ListActivities of one contact (participants.contact_id), page of 50",
            Scenario::ActivityBatchCreate => "BatchCreateActivities of 10",
            Scenario::ActivityAddParticipant => "AddParticipant of a random contact to a random seeded activity",
            Scenario::TaskGet => "GetTask of a random seeded task",
            Scenario::TaskCreate => "CreateTask without request_id",
            Scenario::TaskUpdate => "UpdateTask of a random seeded task (title, priority)",
            Scenario::TaskList => "ListTasks, first page of 50, by deadline",
            Scenario::TaskListFilter => "ListTasks, first page of 50, priority = PRIORITY_HIGH",
            Scenario::TaskComplete => "CompleteTask of the next open seeded task",
        }
    }

    fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// One call.
    async fn call(self, clients: &mut Clients, shared: &Shared) -> Result<(), Status> {
        let seed = shared.seed;
        match self {
            Scenario::Health => {
                clients.health.check(HealthCheckRequest { service: String::new() }).await?;
            }
            Scenario::ContactGet => {
                let id = seeded_id(Kind3::Contact, shared.random());
                let request = clients.request(api::GetContactRequest { id, read_mask: None });
                clients.contacts.get_contact(request).await?;
            }
            Scenario::ContactCreate | Scenario::ContactCreateRequestId => {
                let n = shared.next();
                let request_id =
                    if self == Scenario::ContactCreateRequestId { shared.fresh_request_id() } else { String::new() };
                let request =
                    clients.request(api::CreateContactRequest { contact: Some(contact(seed + n)), request_id });
                clients.contacts.create_contact(request).await?;
            }
            Scenario::ContactUpdate => {
                let n = shared.next();
                let mut sent = contact(n);
                sent.id = seeded_id(Kind3::Contact, shared.random());
                sent.job_title = format!("Engineer {}-{n}", shared.round);
                let request = clients.request(api::UpdateContactRequest {
                    contact: Some(sent),
                    update_mask: mask(&["job_title", "notes"]),
                    allow_missing: false,
                    comment: None,
                });
                clients.contacts.update_contact(request).await?;
            }
            Scenario::ContactList | Scenario::ContactListFilter => {
                let filter = if self == Scenario::ContactListFilter { "organization = \"ACME\"" } else { "" };
                let request = clients.request(api::ListContactsRequest {
                    page_size: 50,
                    filter: filter.into(),
                    ..Default::default()
                });
                let page = clients.contacts.list_contacts(request).await?.into_inner();
                expect_page(page.contacts.len())?;
            }
            Scenario::ContactBatchCreate => {
                let n = shared.next();
                let requests = (0..BATCH)
                    .map(|i| api::CreateContactRequest {
                        contact: Some(contact(n * BATCH + i)),
                        request_id: String::new(),
                    })
                    .collect();
                let request = clients.request(api::BatchCreateContactsRequest { requests });
                clients.contacts.batch_create_contacts(request).await?;
            }
            Scenario::ActivityGet => {
                let id = seeded_id(Kind3::Activity, shared.random());
                let request = clients.request(api::GetActivityRequest { id, read_mask: None });
                clients.activities.get_activity(request).await?;
            }
            Scenario::ActivityCreate | Scenario::ActivityCreateRequestId => {
                let n = shared.next();
                let request_id =
                    if self == Scenario::ActivityCreateRequestId { shared.fresh_request_id() } else { String::new() };
                let request =
                    clients.request(api::CreateActivityRequest { activity: Some(activity(n, seed)), request_id });
                clients.activities.create_activity(request).await?;
            }
            Scenario::ActivityUpdate => {
                let n = shared.next();
                let sent = Activity {
                    id: seeded_id(Kind3::Activity, shared.random()),
                    subject: format!("Quarterly review, moved {}-{n}", shared.round),
                    location: format!("Meeting room {}", n % 9),
                    ..Default::default()
                };
                let request = clients.request(api::UpdateActivityRequest {
                    activity: Some(sent),
                    update_mask: mask(&["subject", "location"]),
                    allow_missing: false,
                    comment: None,
                });
                clients.activities.update_activity(request).await?;
            }
            Scenario::ActivityList | Scenario::ActivityListFilter => {
                let filter = if self == Scenario::ActivityListFilter {
                    format!(
                        "participants.contact_id = \"{}\"",
                        seeded_id(Kind3::Contact, shared.random() % BUSY_CONTACTS)
                    )
                } else {
                    String::new()
                };
                let request = clients.request(api::ListActivitiesRequest {
                    page_size: 50,
                    filter,
                    order_by: "occur_time desc".into(),
                    ..Default::default()
                });
                let page = clients.activities.list_activities(request).await?.into_inner();
                expect_page(page.activities.len())?;
            }
            Scenario::ActivityBatchCreate => {
                let n = shared.next();
                let requests = (0..BATCH)
                    .map(|i| api::CreateActivityRequest {
                        activity: Some(activity(n * BATCH + i, seed)),
                        request_id: String::new(),
                    })
                    .collect();
                let request = clients.request(api::BatchCreateActivitiesRequest { requests });
                clients.activities.batch_create_activities(request).await?;
            }
            Scenario::ActivityAddParticipant => {
                let request = clients.request(api::AddParticipantRequest {
                    activity_id: seeded_id(Kind3::Activity, shared.random()),
                    contact_id: seeded_id(Kind3::Contact, shared.random()),
                    role: "attendee".into(),
                });
                clients.activities.add_participant(request).await?;
            }
            Scenario::TaskGet => {
                let id = seeded_id(Kind3::Task, shared.random());
                let request = clients.request(api::GetTaskRequest { id, read_mask: None });
                clients.tasks.get_task(request).await?;
            }
            Scenario::TaskCreate => {
                let n = shared.next();
                let request =
                    clients.request(api::CreateTaskRequest { task: Some(task(n)), request_id: String::new() });
                clients.tasks.create_task(request).await?;
            }
            Scenario::TaskUpdate => {
                let n = shared.next();
                let sent = Task {
                    id: seeded_id(Kind3::Task, shared.random()),
                    title: format!("Send the renewal offer, take {}-{n}", shared.round),
                    priority: [api::Priority::High, api::Priority::Urgent][(n % 2) as usize] as i32,
                    ..Default::default()
                };
                let request = clients.request(api::UpdateTaskRequest {
                    task: Some(sent),
                    update_mask: mask(&["title", "priority"]),
                    allow_missing: false,
                    comment: None,
                });
                clients.tasks.update_task(request).await?;
            }
            Scenario::TaskList | Scenario::TaskListFilter => {
                let filter = if self == Scenario::TaskListFilter { "priority = PRIORITY_HIGH" } else { "" };
                let request = clients.request(api::ListTasksRequest {
                    page_size: 50,
                    filter: filter.into(),
                    order_by: "deadline".into(),
                    ..Default::default()
                });
                let page = clients.tasks.list_tasks(request).await?.into_inner();
                expect_page(page.tasks.len())?;
            }
            Scenario::TaskComplete => {
                // Open tasks seeded for this run, each completed once.
                let n = shared.next();
                if n >= shared.complete {
                    return Err(Status::out_of_range("every task seeded for completion is complete: raise --complete"));
                }
                let id = seeded_id(Kind3::Task, completion_base(seed, shared.complete, shared.round) + n);
                let request = clients.request(api::CompleteTaskRequest { id, etag: String::new() });
                clients.tasks.complete_task(request).await?;
            }
        }
        Ok(())
    }
}

fn expect_page(len: usize) -> Result<(), Status> {
    if len == 50 { Ok(()) } else { Err(Status::data_loss(format!("a page of {len}, not 50"))) }
}

/// Seeds `seed` contacts, activities and tasks with [`seeded_id`]s (skipped
/// when the last of them exists), and `--complete` open tasks more for
/// each run of `task.complete`.
async fn seed(args: &Args, clients: &Clients, round: u64, with_completion: bool) -> anyhow::Result<()> {
    let seed = args.seed;
    let started = Instant::now();
    let mut c = clients.clone();
    let last = c.request(api::GetTaskRequest { id: seeded_id(Kind3::Task, seed - 1), read_mask: None });
    if c.tasks.get_task(last).await.is_err() {
        // Contacts first: activities name them as participants.
        run_parallel(clients, seed.div_ceil(500), 4, move |mut c, chunk| async move {
            let requests = (chunk * 500..((chunk + 1) * 500).min(seed))
                .map(|n| {
                    let mut sent = contact(n);
                    sent.id = seeded_id(Kind3::Contact, n);
                    api::UpdateContactRequest {
                        contact: Some(sent),
                        update_mask: None,
                        allow_missing: true,
                        comment: None,
                    }
                })
                .collect();
            c.contacts.batch_update_contacts(c.request(api::BatchUpdateContactsRequest { requests })).await?;
            Ok(())
        })
        .await?;
        run_parallel(clients, seed.div_ceil(250), 4, move |mut c, chunk| async move {
            let requests = (chunk * 250..((chunk + 1) * 250).min(seed))
                .map(|n| {
                    let mut sent = activity(n, seed);
                    sent.id = seeded_id(Kind3::Activity, n);
                    api::UpdateActivityRequest {
                        activity: Some(sent),
                        update_mask: None,
                        allow_missing: true,
                        comment: None,
                    }
                })
                .collect();
            c.activities.batch_update_activities(c.request(api::BatchUpdateActivitiesRequest { requests })).await?;
            Ok(())
        })
        .await?;
        seed_tasks(clients, 0, seed).await?;
        eprintln!("seeded {seed} contacts, activities and tasks in {:.1?}", started.elapsed());
    }
    if with_completion {
        let first = completion_base(seed, args.complete, round);
        seed_tasks(clients, first, first + args.complete).await?;
    }
    Ok(())
}

/// Seeds the tasks numbered `from..to` (TaskService has no batch: 8 at once).
async fn seed_tasks(clients: &Clients, from: u64, to: u64) -> anyhow::Result<()> {
    run_parallel(clients, to - from, 8, move |mut c, i| async move {
        let n = from + i;
        let mut sent = task(n);
        sent.id = seeded_id(Kind3::Task, n);
        let request =
            api::UpdateTaskRequest { task: Some(sent), update_mask: None, allow_missing: true, comment: None };
        c.tasks.update_task(c.request(request)).await?;
        Ok(())
    })
    .await
}

/// Runs `work(clients, i)` for i in 0..count, `parallel` at a time.
async fn run_parallel<F, Fut>(clients: &Clients, count: u64, parallel: u64, work: F) -> anyhow::Result<()>
where
    F: Fn(Clients, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (next, work, clients) = (next.clone(), work.clone(), clients.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                work(clients.clone(), i).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// What callers measured: every call's latency, errors by code, and the
/// first error's text.
struct Tally {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
            errors: BTreeMap::new(),
            first_error: None,
        })
    }

    /// A call that began at `began` and ended now, failed with `error`
    /// (its code and text) or not.
    fn record(&mut self, began: Instant, error: Option<(String, String)>) {
        self.latency.saturating_record(began.elapsed().as_micros().max(1) as u64);
        if let Some((code, text)) = error {
            self.first_error.get_or_insert_with(|| format!("{code}: {text}"));
            *self.errors.entry(code).or_default() += 1;
        }
    }

    fn add(&mut self, other: Tally) -> anyhow::Result<()> {
        self.latency.add(other.latency)?;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// What one scenario measured.
struct Outcome {
    scenario: &'static str,
    seconds: f64,
    tally: Tally,
    rss_kib: Option<u64>,
    /// The server's CPU time over the measured time.
    server_cpu_micros: Option<u64>,
}

/// The CPU time a process has used so far, in microseconds (`/proc/PID/stat`).
fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel counts in USER_HZ, 100 on Linux.
    Some(ticks * 10_000)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs one scenario on every connection × stream: warm-up, then measured.
/// The flooding tenant's callers, until `end`; returns its calls answered
/// and shed.
fn flood(
    args: &Args,
    flooders: &[Clients],
    scenario: Scenario,
    round: u64,
    end: Instant,
) -> tokio::task::JoinHandle<(u64, u64)> {
    let shared = Arc::new(Shared { seed: args.seed, counter: AtomicU64::new(0), round, complete: args.complete });
    let mut callers = Vec::new();
    for i in 0..args.flood {
        let (mut clients, shared) = (flooders[i % flooders.len()].clone(), shared.clone());
        callers.push(tokio::spawn(async move {
            let (mut answered, mut shed) = (0, 0);
            while Instant::now() < end {
                match scenario.call(&mut clients, &shared).await {
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        shed += 1;
                        let wait = tonic_types::StatusExt::get_details_retry_info(&status)
                            .and_then(|r| r.retry_delay)
                            .unwrap_or(Duration::from_millis(100));
                        tokio::time::sleep(wait).await;
                    }
                    _ => answered += 1,
                }
            }
            (answered, shed)
        }));
    }
    tokio::spawn(async move {
        let (mut answered, mut shed) = (0, 0);
        for caller in callers {
            if let Ok((a, s)) = caller.await {
                answered += a;
                shed += s;
            }
        }
        (answered, shed)
    })
}

async fn measure(
    args: &Args,
    connections: &[Clients],
    flooders: &[Clients],
    scenario: Scenario,
    round: u64,
) -> anyhow::Result<Outcome> {
    let shared = Arc::new(Shared { seed: args.seed, counter: AtomicU64::new(0), round, complete: args.complete });
    let start = Instant::now();
    let measured_from = start + args.warmup;
    let end = measured_from + args.duration;
    let flooding = match &args.flood_scenario {
        Some(name) => Scenario::parse(name).ok_or_else(|| anyhow::anyhow!("unknown scenario {name:?}"))?,
        None => scenario,
    };
    let flood = (args.flood > 0).then(|| flood(args, flooders, flooding, round, end));
    let mut workers = Vec::new();
    for clients in connections {
        for _ in 0..args.streams {
            let (mut clients, shared) = (clients.clone(), shared.clone());
            workers.push(tokio::spawn(async move {
                let mut tally = Tally::new()?;
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let result = scenario.call(&mut clients, &shared).await;
                    if began < measured_from {
                        continue;
                    }
                    let ran_out = matches!(&result, Err(status) if status.code() == Code::OutOfRange);
                    tally.record(
                        began,
                        result.err().map(|status| (format!("{:?}", status.code()), status.message().to_string())),
                    );
                    if ran_out {
                        break;
                    }
                }
                anyhow::Ok(tally)
            }));
        }
    }
    // The server's CPU over the measured time, and its RSS in the middle of it.
    tokio::time::sleep_until(measured_from.into()).await;
    let cpu_before = args.pid.and_then(cpu_micros);
    tokio::time::sleep_until((measured_from + args.duration / 2).into()).await;
    let rss = args.pid.and_then(rss_kib);
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu_before.zip(args.pid.and_then(cpu_micros)).map(|(before, after)| after.saturating_sub(before));
    let mut tally = Tally::new()?;
    for worker in workers {
        tally.add(worker.await??)?;
    }
    if let Some(flood) = flood {
        let (answered, shed) = flood.await?;
        eprintln!(
            "{:<27} flooded by {} callers of another tenant ({}): {answered} answered, {shed} shed as OVERLOADED",
            "",
            args.flood,
            flooding.name()
        );
    }
    Ok(Outcome {
        scenario: scenario.name(),
        seconds: args.duration.as_secs_f64(),
        tally,
        rss_kib: rss,
        server_cpu_micros: cpu,
    })
}

fn print_outcome(outcome: &Outcome, args: &Args) {
    let ms = |us: u64| us as f64 / 1000.0;
    let l = &outcome.tally.latency;
    let calls = l.len();
    let ok = calls - outcome.tally.errors.values().sum::<u64>();
    let rps = ok as f64 / outcome.seconds;
    let cpu_per_call = outcome.server_cpu_micros.filter(|_| calls > 0).map(|cpu| cpu as f64 / calls as f64);
    let errors: Vec<String> = outcome.tally.errors.iter().map(|(code, n)| format!("{code} {n}")).collect();
    let line = format!(
        "{:<27} {:>9.0}/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  rss {:>6}  cpu {:>5}  errors: {}",
        outcome.scenario,
        rps,
        ms(l.value_at_quantile(0.5)),
        ms(l.value_at_quantile(0.9)),
        ms(l.value_at_quantile(0.99)),
        ms(l.max()),
        outcome.rss_kib.map_or("-".to_string(), |k| format!("{:.1}M", k as f64 / 1024.0)),
        cpu_per_call.map_or("-".to_string(), |us| format!("{us:.0}us")),
        if errors.is_empty() { "none".to_string() } else { errors.join(", ") },
    );
    let first_error = outcome.tally.first_error.as_ref().map(|first| format!("{:<27} first error: {first}", ""));
    if args.json {
        // The JSON for scripts, the line for whoever watches.
        eprintln!("{line}");
        if let Some(first) = &first_error {
            eprintln!("{first}");
        }
        let mut value = serde_json::json!({
            "scenario": outcome.scenario,
            "calls": calls,
            "ok": ok,
            "rps": rps,
            "p50_ms": ms(l.value_at_quantile(0.5)),
            "p90_ms": ms(l.value_at_quantile(0.9)),
            "p99_ms": ms(l.value_at_quantile(0.99)),
            "max_ms": ms(l.max()),
            "errors": outcome.tally.errors,
            "first_error": outcome.tally.first_error,
            "rss_mib": outcome.rss_kib.map(|k| k as f64 / 1024.0),
            "server_cpu_us_per_call": cpu_per_call,
        });
        if let Some(object) = value.as_object_mut() {
            for (key, tag) in &args.tags {
                object.insert(key.clone(), tag.clone());
            }
        }
        println!("{value}");
    } else {
        println!("{line}");
        if let Some(first) = &first_error {
            println!("{first}");
        }
    }
}

fn scenarios(args: &Args) -> anyhow::Result<Vec<Scenario>> {
    if args.scenarios.is_empty() {
        return Ok(Scenario::ALL.to_vec());
    }
    args.scenarios
        .iter()
        .map(|name| Scenario::parse(name).ok_or_else(|| anyhow::anyhow!("unknown scenario {name:?}; see --list")))
        .collect()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.list {
        for scenario in Scenario::ALL {
            println!("{:<27} {}", scenario.name(), scenario.describe());
        }
        return Ok(());
    }
    let chosen = scenarios(&args)?;
    if let Some(path) = &args.sqlite_ceiling {
        return sqlite_ceiling::run(&args, path, &chosen);
    }
    anyhow::ensure!(args.seed > 0, "--seed must be at least 1");
    let token = agenda::devmode::mint(
        &args.secret,
        &args.tenant,
        "load",
        "contacts.write activities.write tasks.admin",
        Duration::from_secs(24 * 3600),
    )
    .map_err(anyhow::Error::msg)?;
    let auth: MetadataValue<Ascii> = format!("Bearer {token}").parse()?;
    let endpoint = Endpoint::from_shared(format!("http://{}", args.addr))?.tcp_nodelay(true);
    let mut connections = Vec::new();
    for _ in 0..args.connections.max(1) {
        connections.push(Clients::new(endpoint.connect().await?, auth.clone()));
    }
    let mut flooders = Vec::new();
    if args.flood > 0 {
        // The flooding tenant: its own token, its own connections, the same seed.
        let tenant = format!("{}-flood", args.tenant);
        let token = agenda::devmode::mint(
            &args.secret,
            &tenant,
            "load",
            "contacts.write activities.write tasks.admin",
            Duration::from_secs(24 * 3600),
        )
        .map_err(anyhow::Error::msg)?;
        let auth: MetadataValue<Ascii> = format!("Bearer {token}").parse()?;
        for _ in 0..args.flood.div_ceil(8) {
            flooders.push(Clients::new(endpoint.connect().await?, auth.clone()));
        }
        seed(&args, &flooders[0], 0, false).await?;
    }
    // Each run of task.complete completes tasks no earlier run has: runs on
    // one database draw their number.
    let round = rand::rng().random_range(1..100_000);
    if args.seed_only || chosen.iter().any(|s| *s != Scenario::Health) {
        seed(&args, &connections[0], round, chosen.contains(&Scenario::TaskComplete)).await?;
    }
    if args.seed_only {
        return Ok(());
    }
    if !args.json {
        println!(
            "agenda load: {} connections x {} streams, {:?} per scenario after {:?} warm-up, {} seeded of each",
            args.connections, args.streams, args.duration, args.warmup, args.seed
        );
    }
    for scenario in chosen {
        let outcome = measure(&args, &connections, &flooders, scenario, round).await?;
        print_outcome(&outcome, &args);
    }
    if let Some(pid) = args.pid
        && !args.json
    {
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("server RSS after the load: {:.1} MiB", rss_kib(pid).unwrap_or(0) as f64 / 1024.0);
    }
    Ok(())
}

/// The SQLite ceiling: the statements each scenario makes the server run
/// (`<scenario>.sql`, in pgbench's format: `\set n random(a, b)`, `:name`
/// variables, `\gset`), in a tight loop with prepared statements on the
/// same bundled SQLite the server links, set up as the server sets it up.
/// Reads run on one thread per caller, each with its connection, as the
/// server's pool of readers does; writes on one thread, as the server's
/// single writer does.
mod sqlite_ceiling {
    use std::{collections::HashMap, path::Path};

    use rusqlite::{Connection, types::Value as SqlValue};

    use super::*;

    /// One step of a script.
    enum Command {
        /// `\set name random(low, high)`.
        Draw { name: String, low: Expr, high: Expr },
        /// A statement; with `keep`, its first row's columns become variables.
        Sql { text: String, keep: bool },
    }

    /// `a + :b - 1`: numbers and variables added and subtracted.
    struct Expr(Vec<(i64, Atom)>);

    enum Atom {
        Number(i64),
        Variable(String),
    }

    impl Expr {
        fn parse(text: &str) -> anyhow::Result<Expr> {
            let mut terms = Vec::new();
            let mut sign = 1;
            for token in text.split_whitespace() {
                match token {
                    "+" => sign = 1,
                    "-" => sign = -1,
                    _ => {
                        let atom = match token.strip_prefix(':') {
                            Some(name) => Atom::Variable(name.to_string()),
                            None => Atom::Number(token.parse()?),
                        };
                        terms.push((sign, atom));
                    }
                }
            }
            Ok(Expr(terms))
        }

        fn eval(&self, variables: &HashMap<String, SqlValue>) -> anyhow::Result<i64> {
            let mut sum = 0;
            for (sign, atom) in &self.0 {
                let value = match atom {
                    Atom::Number(n) => *n,
                    Atom::Variable(name) => match variables.get(name) {
                        Some(SqlValue::Integer(n)) => *n,
                        _ => anyhow::bail!("no number :{name}"),
                    },
                };
                sum += sign * value;
            }
            Ok(sum)
        }
    }

    fn parse(script: &str) -> anyhow::Result<Vec<Command>> {
        let mut commands = Vec::new();
        let mut statement = String::new();
        for line in script.lines() {
            if statement.is_empty() {
                if line.starts_with("--") || line.trim().is_empty() {
                    continue;
                }
                if let Some(draw) = line.strip_prefix("\\set ") {
                    let (name, call) = draw.split_once(' ').ok_or_else(|| anyhow::anyhow!("bad \\set: {line}"))?;
                    let arguments = call
                        .trim()
                        .strip_prefix("random(")
                        .and_then(|rest| rest.strip_suffix(')'))
                        .ok_or_else(|| anyhow::anyhow!("only random(a, b) is drawn: {line}"))?;
                    let (low, high) = arguments.split_once(',').ok_or_else(|| anyhow::anyhow!("bad random: {line}"))?;
                    commands.push(Command::Draw {
                        name: name.to_string(),
                        low: Expr::parse(low)?,
                        high: Expr::parse(high)?,
                    });
                    continue;
                }
            }
            statement.push_str(line);
            statement.push('\n');
            // A statement ends at a line ending in `;` or `\gset`, outside quotes.
            let closed = statement.matches('\'').count().is_multiple_of(2);
            let end = line.trim_end();
            if closed && (end.ends_with(';') || end.ends_with("\\gset")) {
                let keep = end.ends_with("\\gset");
                let text = statement.trim_end().trim_end_matches("\\gset").trim_end().trim_end_matches(';');
                commands.push(Command::Sql { text: text.to_string(), keep });
                statement.clear();
            }
        }
        anyhow::ensure!(statement.trim().is_empty(), "the script ends inside a statement");
        Ok(commands)
    }

    fn open(path: &Path) -> anyhow::Result<Connection> {
        let conn = Connection::open(path)?;
        // As the server sets up its connections (src/store/mod.rs).
        conn.execute_batch(
            "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA foreign_keys = ON;",
        )?;
        Ok(conn)
    }

    /// Runs the script once.
    fn once(conn: &Connection, commands: &[Command], variables: &mut HashMap<String, SqlValue>) -> anyhow::Result<()> {
        for command in commands {
            match command {
                Command::Draw { name, low, high } => {
                    let (low, high) = (low.eval(variables)?, high.eval(variables)?);
                    variables.insert(name.clone(), SqlValue::Integer(rand::rng().random_range(low..=high)));
                }
                Command::Sql { text, keep } => {
                    let mut statement = conn.prepare_cached(text)?;
                    for index in 1..=statement.parameter_count() {
                        let name = statement.parameter_name(index).unwrap_or_default().trim_start_matches(':');
                        let value = variables.get(name).ok_or_else(|| anyhow::anyhow!("no variable :{name}"))?.clone();
                        statement.raw_bind_parameter(index, value)?;
                    }
                    let names: Vec<String> = statement.column_names().iter().map(|n| n.to_string()).collect();
                    let mut rows = statement.raw_query();
                    let mut first = true;
                    while let Some(row) = rows.next()? {
                        for (index, name) in names.iter().enumerate() {
                            // Every column is read, as the server reads its rows.
                            let value: SqlValue = row.get(index)?;
                            if first && *keep {
                                variables.insert(name.clone(), value);
                            }
                        }
                        first = false;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn run(args: &Args, path: &Path, chosen: &[Scenario]) -> anyhow::Result<()> {
        let folder = args.sql.as_deref().ok_or_else(|| anyhow::anyhow!("--sql names the scripts' folder"))?;
        let now = chrono::Utc::now().timestamp_micros();
        for &scenario in chosen.iter().filter(|s| **s != Scenario::Health) {
            let script = std::fs::read_to_string(folder.join(format!("{}.sql", scenario.name())))?;
            let commands = Arc::new(parse(&script)?);
            let writes = script.contains("BEGIN IMMEDIATE");
            let threads = if writes { 1 } else { args.connections.max(1) * args.streams.max(1) };
            let start = Instant::now();
            let (measured_from, end) = (start + args.warmup, start + args.warmup + args.duration);
            let mut workers = Vec::new();
            for _ in 0..threads {
                let (commands, path, seed) = (commands.clone(), path.to_path_buf(), args.seed);
                workers.push(std::thread::spawn(move || -> anyhow::Result<Tally> {
                    let conn = open(&path)?;
                    let mut variables = HashMap::from([
                        ("tenant".to_string(), SqlValue::Text("load".into())),
                        ("seed".to_string(), SqlValue::Integer(i64::try_from(seed)?)),
                        ("now".to_string(), SqlValue::Integer(now)),
                    ]);
                    let mut tally = Tally::new()?;
                    loop {
                        let began = Instant::now();
                        if began >= end {
                            break;
                        }
                        let result = once(&conn, &commands, &mut variables);
                        if result.is_err() && !conn.is_autocommit() {
                            conn.execute_batch("ROLLBACK")?;
                        }
                        if began >= measured_from {
                            tally.record(began, result.err().map(|error| ("SqlError".to_string(), error.to_string())));
                        }
                    }
                    Ok(tally)
                }));
            }
            let mut tally = Tally::new()?;
            for worker in workers {
                tally.add(worker.join().map_err(|_| anyhow::anyhow!("a ceiling thread panicked"))??)?;
            }
            let outcome = Outcome {
                scenario: scenario.name(),
                seconds: args.duration.as_secs_f64(),
                tally,
                rss_kib: None,
                server_cpu_micros: None,
            };
            print_outcome(&outcome, args);
        }
        Ok(())
    }
}
