//! Crashes: the server as a process of its own (the release build under
//! scripts/test) under write load from concurrent clients on the write RPCs
//! of every resource, killed with SIGKILL at random moments and restarted,
//! three times. Then every acknowledged write is there at the revision it
//! was acknowledged with (or the one after, when a later write on it was in
//! flight), a request_id sent again answers what it first did, the change
//! feed holds exactly one Change per committed revision with no gap, and
//! every batch is there whole or not at all.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agenda::api::{
    Activity, AddParticipantRequest, BatchCreateContactsRequest, CompleteTaskRequest, Contact, CreateActivityRequest,
    CreateContactRequest, CreateTaskRequest, GetActivityRequest, GetContactRequest, GetTaskRequest,
    ListContactsRequest, Task, UpdateActivityRequest, UpdateContactRequest,
};
use prost_types::FieldMask;
use rand::Rng;
use tonic::{Code, Request, transport::Channel};

use crate::helpers::{
    Activities, Backend, Contacts, Process, Tasks, activities_on, all_changes, changes_on, contacts_on, postgres,
    tasks_on,
};

on_both_backends!(acknowledged_writes_survive_kill_9);

const TENANT: &str = "crash";
/// Clients writing at once.
const WRITERS: usize = 6;
/// Contacts in each batch.
const BATCH: usize = 5;

/// What a client was told about one resource it owns.
#[derive(Debug, Clone)]
struct Known {
    kind: Kind,
    /// The revision last acknowledged.
    acked: i64,
    etag: String,
    /// A write on it was sent after that and not acknowledged: it may have
    /// committed (one revision more).
    maybe_more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Contact,
    Activity,
    Task,
}

/// A create sent with a request_id, to be sent again at the end.
#[derive(Debug, Clone)]
enum Create {
    Contact(CreateContactRequest),
    Activity(CreateActivityRequest),
    Task(CreateTaskRequest),
}

/// Everything the clients were told.
#[derive(Default)]
struct Ledger {
    resources: HashMap<String, Known>,
    /// Creates with a request_id, and the id acknowledged (none if not).
    creates: Vec<(Create, Option<String>)>,
    /// Batch markers, and whether the batch was acknowledged.
    batches: Vec<(String, bool)>,
    acknowledged: usize,
    failed: usize,
}

/// A call's request with a deadline, so a call on a dying connection ends.
fn call<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(Duration::from_secs(5));
    request
}

struct Writer {
    contacts: Contacts,
    activities: Activities,
    tasks: Tasks,
    ledger: Arc<Mutex<Ledger>>,
    mine: Vec<String>,
    open_tasks: Vec<String>,
}

impl Writer {
    fn record(&self, id: &str, kind: Kind, revision: i64, etag: &str) {
        let mut ledger = self.ledger.lock().expect("ledger");
        ledger.acknowledged += 1;
        ledger
            .resources
            .insert(id.to_string(), Known { kind, acked: revision, etag: etag.to_string(), maybe_more: false });
    }

    fn failed(&self, id: Option<&str>) {
        let mut ledger = self.ledger.lock().expect("ledger");
        ledger.failed += 1;
        if let Some(known) = id.and_then(|id| ledger.resources.get_mut(id)) {
            known.maybe_more = true;
        }
    }

    fn known(&self, id: &str) -> Option<Known> {
        self.ledger.lock().expect("ledger").resources.get(id).cloned()
    }

    /// A resource of this writer's of `kind`, at random.
    fn pick(&self, kind: Kind) -> Option<String> {
        let ledger = self.ledger.lock().expect("ledger");
        let ids: Vec<&String> =
            self.mine.iter().filter(|id| ledger.resources.get(*id).is_some_and(|k| k.kind == kind)).collect();
        (!ids.is_empty()).then(|| ids[rand::rng().random_range(0..ids.len())].clone())
    }

    /// Reads what a resource is now, after an update was refused for its
    /// etag (a write not acknowledged had committed).
    async fn refresh(&mut self, id: &str, kind: Kind) {
        let read = match kind {
            Kind::Contact => self
                .contacts
                .get_contact(call(GetContactRequest { id: id.into(), read_mask: None }))
                .await
                .map(|r| (r.get_ref().revision, r.get_ref().etag.clone())),
            Kind::Activity => self
                .activities
                .get_activity(call(GetActivityRequest { id: id.into(), read_mask: None }))
                .await
                .map(|r| (r.get_ref().revision, r.get_ref().etag.clone())),
            Kind::Task => self
                .tasks
                .get_task(call(GetTaskRequest { id: id.into(), read_mask: None }))
                .await
                .map(|r| (r.get_ref().revision, r.get_ref().etag.clone())),
        };
        if let Ok((revision, etag)) = read {
            self.record(id, kind, revision, &etag);
        }
    }

    async fn step(&mut self, n: usize) {
        match n % 7 {
            0 => {
                let request = CreateContactRequest {
                    contact: Some(Contact { display_name: format!("Crash {n}"), ..Default::default() }),
                    request_id: uuid::Uuid::new_v4().to_string(),
                };
                let answer = self.contacts.create_contact(call(request.clone())).await;
                let id = answer.as_ref().ok().map(|a| a.get_ref().id.clone());
                if let Ok(answer) = &answer {
                    let contact = answer.get_ref();
                    self.record(&contact.id, Kind::Contact, contact.revision, &contact.etag);
                    self.mine.push(contact.id.clone());
                } else {
                    self.failed(None);
                }
                self.ledger.lock().expect("ledger").creates.push((Create::Contact(request), id));
            }
            1 => {
                let Some(id) = self.pick(Kind::Contact) else { return };
                let Some(known) = self.known(&id) else { return };
                let patch = Contact {
                    id: id.clone(),
                    etag: known.etag.clone(),
                    job_title: format!("Title {n}"),
                    ..Default::default()
                };
                let request = UpdateContactRequest {
                    contact: Some(patch),
                    update_mask: Some(FieldMask { paths: vec!["job_title".into()] }),
                    allow_missing: false,
                    comment: None,
                };
                match self.contacts.update_contact(call(request)).await {
                    Ok(answer) => self.record(&id, Kind::Contact, answer.get_ref().revision, &answer.get_ref().etag),
                    Err(status) if status.code() == Code::Aborted => self.refresh(&id, Kind::Contact).await,
                    Err(_) => self.failed(Some(&id)),
                }
            }
            2 => {
                let marker = format!("batch-{}", uuid::Uuid::new_v4().simple());
                let requests = (0..BATCH)
                    .map(|i| CreateContactRequest {
                        contact: Some(Contact { display_name: format!("{marker} {i}"), ..Default::default() }),
                        request_id: String::new(),
                    })
                    .collect();
                let answer = self.contacts.batch_create_contacts(call(BatchCreateContactsRequest { requests })).await;
                let acked = answer.is_ok();
                if let Ok(answer) = answer {
                    for contact in &answer.get_ref().contacts {
                        self.record(&contact.id, Kind::Contact, contact.revision, &contact.etag);
                    }
                } else {
                    self.failed(None);
                }
                self.ledger.lock().expect("ledger").batches.push((marker, acked));
            }
            3 => {
                let request = CreateActivityRequest {
                    activity: Some(Activity {
                        r#type: "call".into(),
                        subject: format!("Call {n}"),
                        ..Default::default()
                    }),
                    request_id: uuid::Uuid::new_v4().to_string(),
                };
                let answer = self.activities.create_activity(call(request.clone())).await;
                let id = answer.as_ref().ok().map(|a| a.get_ref().id.clone());
                if let Ok(answer) = &answer {
                    let activity = answer.get_ref();
                    self.record(&activity.id, Kind::Activity, activity.revision, &activity.etag);
                    self.mine.push(activity.id.clone());
                } else {
                    self.failed(None);
                }
                self.ledger.lock().expect("ledger").creates.push((Create::Activity(request), id));
            }
            4 => {
                let (Some(activity), Some(contact)) = (self.pick(Kind::Activity), self.pick(Kind::Contact)) else {
                    return;
                };
                let request =
                    AddParticipantRequest { activity_id: activity.clone(), contact_id: contact, role: String::new() };
                match self.activities.add_participant(call(request)).await {
                    Ok(answer) => {
                        self.record(&activity, Kind::Activity, answer.get_ref().revision, &answer.get_ref().etag)
                    }
                    Err(_) => self.failed(Some(&activity)),
                }
            }
            5 => {
                let Some(id) = self.pick(Kind::Activity) else { return };
                let Some(known) = self.known(&id) else { return };
                let patch =
                    Activity { id: id.clone(), etag: known.etag, location: format!("Room {n}"), ..Default::default() };
                let request = UpdateActivityRequest {
                    activity: Some(patch),
                    update_mask: Some(FieldMask { paths: vec!["location".into()] }),
                    allow_missing: false,
                    comment: None,
                };
                match self.activities.update_activity(call(request)).await {
                    Ok(answer) => self.record(&id, Kind::Activity, answer.get_ref().revision, &answer.get_ref().etag),
                    Err(status) if status.code() == Code::Aborted => self.refresh(&id, Kind::Activity).await,
                    Err(_) => self.failed(Some(&id)),
                }
            }
            _ => {
                // Tasks: created with a request_id, then completed.
                if let Some(id) = self.open_tasks.pop() {
                    let request = CompleteTaskRequest { id: id.clone(), etag: String::new() };
                    match self.tasks.complete_task(call(request)).await {
                        Ok(answer) => self.record(&id, Kind::Task, answer.get_ref().revision, &answer.get_ref().etag),
                        Err(_) => self.failed(Some(&id)),
                    }
                    return;
                }
                let request = CreateTaskRequest {
                    task: Some(Task { title: format!("Task {n}"), ..Default::default() }),
                    request_id: uuid::Uuid::new_v4().to_string(),
                };
                let answer = self.tasks.create_task(call(request.clone())).await;
                let id = answer.as_ref().ok().map(|a| a.get_ref().id.clone());
                if let Ok(answer) = &answer {
                    let task = answer.get_ref();
                    self.record(&task.id, Kind::Task, task.revision, &task.etag);
                    self.mine.push(task.id.clone());
                    self.open_tasks.push(task.id.clone());
                } else {
                    self.failed(None);
                }
                self.ledger.lock().expect("ledger").creates.push((Create::Task(request), id));
            }
        }
    }
}

async fn acknowledged_writes_survive_kill_9(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("agenda.db").display()),
        Backend::Postgres => postgres().new_database().await,
    };
    let mut server = Process::start(&url).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let channel = server.channel();
        let (ledger, stop) = (ledger.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut writer = Writer {
                contacts: contacts_on(channel.clone(), TENANT),
                activities: activities_on(channel.clone(), TENANT),
                tasks: tasks_on(channel, TENANT),
                ledger,
                mine: Vec::new(),
                open_tasks: Vec::new(),
            };
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                let before = writer.ledger.lock().expect("ledger").failed;
                writer.step(n).await;
                n += 1;
                if writer.ledger.lock().expect("ledger").failed > before {
                    // The server is down or restarting: try again a moment later.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for _ in 0..3 {
        let wait = rand::rng().random_range(1_000..3_000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.restart().await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    // A last crash with nothing in flight, and a fresh start to read from.
    server.kill();
    server.restart().await;
    let ledger = Arc::try_unwrap(ledger).map_err(|_| "ledger shared").expect("ledger").into_inner().expect("ledger");
    assert!(ledger.acknowledged > 100, "too few writes acknowledged: {}", ledger.acknowledged);
    assert!(ledger.failed > 0, "no write was cut by a crash");
    eprintln!(
        "{backend:?}: {} writes acknowledged, {} cut by the crashes; verifying",
        ledger.acknowledged, ledger.failed
    );
    verify(&server.channel(), ledger).await;
}

/// The revision a resource has now.
async fn revision_of(channel: &Channel, id: &str, kind: Kind) -> i64 {
    let answer = match kind {
        Kind::Contact => contacts_on(channel.clone(), TENANT)
            .get_contact(GetContactRequest { id: id.into(), read_mask: None })
            .await
            .map(|r| r.into_inner().revision),
        Kind::Activity => activities_on(channel.clone(), TENANT)
            .get_activity(GetActivityRequest { id: id.into(), read_mask: None })
            .await
            .map(|r| r.into_inner().revision),
        Kind::Task => tasks_on(channel.clone(), TENANT)
            .get_task(GetTaskRequest { id: id.into(), read_mask: None })
            .await
            .map(|r| r.into_inner().revision),
    };
    answer.unwrap_or_else(|status| panic!("the acknowledged {kind:?} {id} is gone: {status:?}"))
}

/// The id a create answers when sent again.
async fn create_again(channel: &Channel, create: &Create) -> (String, Kind) {
    match create {
        Create::Contact(request) => {
            let answer = contacts_on(channel.clone(), TENANT).create_contact(request.clone()).await.expect("replay");
            (answer.into_inner().id, Kind::Contact)
        }
        Create::Activity(request) => {
            let answer = activities_on(channel.clone(), TENANT).create_activity(request.clone()).await.expect("replay");
            (answer.into_inner().id, Kind::Activity)
        }
        Create::Task(request) => {
            let answer = tasks_on(channel.clone(), TENANT).create_task(request.clone()).await.expect("replay");
            (answer.into_inner().id, Kind::Task)
        }
    }
}

async fn verify(channel: &Channel, mut ledger: Ledger) {
    // Acknowledged writes are there, at their revision.
    for (id, known) in &ledger.resources {
        let revision = revision_of(channel, id, known.kind).await;
        let expected = if known.maybe_more { known.acked..=known.acked + 1 } else { known.acked..=known.acked };
        assert!(expected.contains(&revision), "{:?} {id}: revision {revision}, acknowledged {known:?}", known.kind);
    }
    // A request_id sent again answers what it first did; one whose answer was
    // lost creates its resource once (sent twice more, one id).
    for (create, acked) in &ledger.creates {
        let (id, kind) = create_again(channel, create).await;
        match acked {
            Some(acked) => assert_eq!(&id, acked, "a replayed request_id answered another resource"),
            None => {
                let (again, _) = create_again(channel, create).await;
                assert_eq!(again, id, "a request_id created twice");
                let revision = revision_of(channel, &id, kind).await;
                ledger.resources.entry(id).or_insert(Known {
                    kind,
                    acked: revision,
                    etag: String::new(),
                    maybe_more: false,
                });
            }
        }
    }
    // Batches are whole or absent.
    let mut contacts = contacts_on(channel.clone(), TENANT);
    for (marker, acked) in &ledger.batches {
        let page = contacts
            .list_contacts(ListContactsRequest {
                page_size: 100,
                filter: format!("display_name:\"{marker}\""),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        let count = page.contacts.len();
        assert!(
            count == BATCH || (count == 0 && !acked),
            "batch {marker} (acknowledged: {acked}) has {count} contacts"
        );
    }
    // The feed: one Change per committed revision, none missing, none twice,
    // in sequence order.
    let feed = all_changes(&mut changes_on(channel.clone(), TENANT), 0).await;
    let mut revisions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut last = 0;
    for change in &feed {
        assert!(change.sequence > last, "sequences out of order");
        last = change.sequence;
        revisions.entry(change.resource_id.clone()).or_default().push(change.revision);
    }
    for (id, seen) in &revisions {
        let expected: Vec<i64> = (1..=seen.len() as i64).collect();
        assert_eq!(seen, &expected, "the changes of {id} are not one per revision");
    }
    for (id, known) in &ledger.resources {
        let now = revision_of(channel, id, known.kind).await;
        let changed = revisions.get(id).map_or(0, Vec::len) as i64;
        assert_eq!(changed, now, "{id} is at revision {now} with {changed} changes");
    }
}
