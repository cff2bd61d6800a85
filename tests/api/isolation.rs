//! Tenant isolation, randomized: two tenants interleave random operations
//! over the RPCs of every resource, and each replays what the other has
//! (ids, filter values, page tokens, request ids, change-feed cursors).
//! No answer, count, error message or metadata may reveal the other
//! tenant's data: every resource a tenant writes carries a secret marker,
//! and no call of the other tenant may ever see it. Seeded, so a failure
//! names the seed that reproduces it.

use std::collections::HashSet;

use agenda::api::{
    Activity, AddParticipantRequest, BatchGetContactsRequest, CompleteTaskRequest, Contact, CreateActivityRequest,
    CreateContactRequest, CreateTaskRequest, DeleteContactRequest, GetActivityRequest, GetContactRequest,
    GetTaskRequest, ListActivitiesRequest, ListChangesRequest, ListContactsRequest, ListTasksRequest, Participant,
    Task, UpdateContactRequest,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::{Code, Status};

use crate::helpers::{Activities, Backend, Changes, Contacts, Tasks, TestApp, spawn_app};

on_both_backends!(no_operation_of_one_tenant_reveals_the_other);

/// Seeds run, and operations per seed.
const SEEDS: u64 = 6;
const OPERATIONS: usize = 40;

/// What one tenant has written and seen.
#[derive(Default)]
struct Side {
    name: String,
    contacts: Vec<String>,
    activities: Vec<String>,
    tasks: Vec<String>,
    request_ids: Vec<String>,
    page_tokens: Vec<String>,
    sequences: Vec<i64>,
    /// Every marker this tenant wrote: text no other tenant may see.
    markers: Vec<String>,
    /// Ids this tenant holds (an upsert may give it an id the other has too).
    ids: HashSet<String>,
    /// The other's request ids this tenant has used itself.
    borrowed: HashSet<String>,
}

struct Clients {
    contacts: Contacts,
    activities: Activities,
    tasks: Tasks,
    changes: Changes,
}

impl Clients {
    fn of(app: &TestApp, tenant: &str) -> Clients {
        Clients {
            contacts: app.contacts(tenant),
            activities: app.activities(tenant),
            tasks: app.tasks(tenant),
            changes: app.changes(tenant),
        }
    }
}

/// Fails when `seen` (an answer or an error, printed whole) holds any of
/// the other tenant's markers.
fn assert_private(seen: &str, other: &Side, seed: u64, what: &str) {
    for marker in &other.markers {
        assert!(!seen.contains(marker.as_str()), "seed {seed}: {what} revealed {marker:?} of {}: {seen}", other.name);
    }
}

fn assert_not_found(status: &Status, seed: u64, what: &str) {
    assert!(
        matches!(status.code(), Code::NotFound | Code::InvalidArgument),
        "seed {seed}: {what} answered {status:?} instead of NOT_FOUND"
    );
}

fn pick(rng: &mut StdRng, items: &[String]) -> Option<String> {
    (!items.is_empty()).then(|| items[rng.random_range(0..items.len())].clone())
}

/// One random operation of `me`, replaying what `other` has where it can.
async fn operate(rng: &mut StdRng, seed: u64, clients: &mut Clients, me: &mut Side, other: &Side) {
    let marker = format!("{}-secret-{}", me.name, uuid::Uuid::new_v4().simple());
    // An id of the other's that this tenant does not hold itself.
    let foreign = |ids: &[String], rng: &mut StdRng| {
        let ids: Vec<String> = ids.iter().filter(|id| !me.ids.contains(*id)).cloned().collect();
        pick(rng, &ids)
    };
    match rng.random_range(0..14) {
        0 => {
            let request_id = uuid::Uuid::new_v4().to_string();
            let request = CreateContactRequest {
                contact: Some(Contact {
                    display_name: marker.clone(),
                    organization: marker.clone(),
                    ..Default::default()
                }),
                request_id: request_id.clone(),
            };
            let contact = clients.contacts.create_contact(request).await.expect("create contact").into_inner();
            assert_private(&format!("{contact:?}"), other, seed, "CreateContact");
            me.ids.insert(contact.id.clone());
            me.contacts.push(contact.id);
            me.request_ids.push(request_id);
            me.markers.push(marker);
        }
        1 => {
            let participants = pick(rng, &me.contacts)
                .map(|contact_id| vec![Participant { contact_id, role: String::new() }])
                .unwrap_or_default();
            let activity =
                Activity { r#type: "call".into(), subject: marker.clone(), participants, ..Default::default() };
            let request = CreateActivityRequest { activity: Some(activity), request_id: String::new() };
            let activity = clients.activities.create_activity(request).await.expect("create activity").into_inner();
            assert_private(&format!("{activity:?}"), other, seed, "CreateActivity");
            me.ids.insert(activity.id.clone());
            me.activities.push(activity.id);
            me.markers.push(marker);
        }
        2 => {
            let request = CreateTaskRequest {
                task: Some(Task { title: marker.clone(), ..Default::default() }),
                request_id: String::new(),
            };
            let task = clients.tasks.create_task(request).await.expect("create task").into_inner();
            assert_private(&format!("{task:?}"), other, seed, "CreateTask");
            me.ids.insert(task.id.clone());
            me.tasks.push(task.id);
            me.markers.push(marker);
        }
        3 => {
            // The other's ids read, deleted, completed, used as references.
            if let Some(id) = foreign(&other.contacts, rng) {
                let status = clients.contacts.get_contact(GetContactRequest { id: id.clone(), read_mask: None }).await;
                let status = status.expect_err("another tenant's contact");
                assert_not_found(&status, seed, "GetContact of another tenant's id");
                assert_private(&format!("{status:?}"), other, seed, "GetContact");
                let status = clients.contacts.delete_contact(DeleteContactRequest { id, etag: String::new() }).await;
                assert_not_found(&status.expect_err("another tenant's contact"), seed, "DeleteContact");
            }
        }
        4 => {
            if let Some(id) = foreign(&other.activities, rng) {
                let status =
                    clients.activities.get_activity(GetActivityRequest { id: id.clone(), read_mask: None }).await;
                let status = status.expect_err("another tenant's activity");
                assert_not_found(&status, seed, "GetActivity of another tenant's id");
                assert_private(&format!("{status:?}"), other, seed, "GetActivity");
                let activity =
                    Activity { r#type: "call".into(), subject: marker.clone(), parent_id: id, ..Default::default() };
                let request = CreateActivityRequest { activity: Some(activity), request_id: String::new() };
                let status = clients.activities.create_activity(request).await.expect_err("a foreign parent");
                assert_not_found(&status, seed, "an activity under another tenant's activity");
                assert_private(&format!("{status:?}"), other, seed, "CreateActivity with a foreign parent");
            }
        }
        5 => {
            if let (Some(activity), Some(contact)) = (pick(rng, &me.activities), foreign(&other.contacts, rng)) {
                let request = AddParticipantRequest { activity_id: activity, contact_id: contact, role: String::new() };
                let status = clients.activities.add_participant(request).await.expect_err("a foreign participant");
                assert_not_found(&status, seed, "AddParticipant of another tenant's contact");
                assert_private(&format!("{status:?}"), other, seed, "AddParticipant");
            }
        }
        6 => {
            if let Some(id) = foreign(&other.tasks, rng) {
                let status = clients.tasks.get_task(GetTaskRequest { id: id.clone(), read_mask: None }).await;
                assert_not_found(&status.expect_err("another tenant's task"), seed, "GetTask");
                let status = clients.tasks.complete_task(CompleteTaskRequest { id, etag: String::new() }).await;
                let status = status.expect_err("another tenant's task");
                assert_not_found(&status, seed, "CompleteTask of another tenant's task");
                assert_private(&format!("{status:?}"), other, seed, "CompleteTask");
            }
        }
        7 => {
            // An upsert of the other's id makes a contact of this tenant's own.
            if let Some(id) = foreign(&other.contacts, rng) {
                let request = UpdateContactRequest {
                    contact: Some(Contact { id: id.clone(), display_name: marker.clone(), ..Default::default() }),
                    update_mask: None,
                    allow_missing: true,
                    comment: None,
                };
                let contact = clients.contacts.update_contact(request).await.expect("upsert").into_inner();
                assert_private(&format!("{contact:?}"), other, seed, "an upsert of another tenant's id");
                assert_eq!(contact.revision, 1, "seed {seed}: the upsert updated another tenant's contact");
                me.ids.insert(contact.id.clone());
                me.contacts.push(contact.id);
                me.markers.push(marker);
            }
        }
        8 => {
            let mut ids: Vec<String> = pick(rng, &me.contacts).into_iter().collect();
            ids.extend(foreign(&other.contacts, rng));
            if ids.len() == 2 {
                let status =
                    clients.contacts.batch_get_contacts(BatchGetContactsRequest { ids, read_mask: None }).await;
                let status = status.expect_err("another tenant's contact in a batch");
                assert_not_found(&status, seed, "BatchGetContacts with another tenant's id");
                assert_private(&format!("{status:?}"), other, seed, "BatchGetContacts");
            }
        }
        9 => {
            // The other's values as filters find nothing; the lists hold
            // exactly this tenant's resources.
            let probe = pick(rng, &other.markers).unwrap_or_else(|| marker.clone());
            let filter = format!("display_name = \"{probe}\" OR organization:\"{probe}\"");
            let page = clients
                .contacts
                .list_contacts(ListContactsRequest { page_size: 1000, filter, ..Default::default() })
                .await
                .expect("list")
                .into_inner();
            assert_private(&format!("{page:?}"), other, seed, "ListContacts filtered by another tenant's values");
            let filter = format!("subject = \"{probe}\"");
            let page = clients
                .activities
                .list_activities(ListActivitiesRequest { page_size: 1000, filter, ..Default::default() })
                .await
                .expect("list")
                .into_inner();
            assert_private(&format!("{page:?}"), other, seed, "ListActivities filtered by another tenant's values");
            let all = clients
                .contacts
                .list_contacts(ListContactsRequest { page_size: 1000, ..Default::default() })
                .await
                .expect("list")
                .into_inner();
            assert_private(&format!("{all:?}"), other, seed, "ListContacts");
            let listed: HashSet<&str> = all.contacts.iter().map(|c| c.id.as_str()).collect();
            let mine: HashSet<&str> = me.contacts.iter().map(String::as_str).collect();
            assert_eq!(listed, mine, "seed {seed}: ListContacts of {} holds other contacts", me.name);
        }
        10 => {
            // A page token of the other's is refused; one of this tenant's is kept.
            let page = clients
                .tasks
                .list_tasks(ListTasksRequest { page_size: 1, ..Default::default() })
                .await
                .expect("list")
                .into_inner();
            assert_private(&format!("{page:?}"), other, seed, "ListTasks");
            if !page.next_page_token.is_empty() {
                me.page_tokens.push(page.next_page_token);
            }
            if let Some(token) = pick(rng, &other.page_tokens) {
                let status = clients
                    .tasks
                    .list_tasks(ListTasksRequest { page_size: 1, page_token: token, ..Default::default() })
                    .await
                    .expect_err("another tenant's page token");
                assert_eq!(status.code(), Code::InvalidArgument, "seed {seed}: {status:?}");
                assert_private(&format!("{status:?}"), other, seed, "ListTasks with another tenant's token");
            }
        }
        11 => {
            // The other's cursors read this tenant's own changes only.
            let start_after = pick(rng, &other.sequences.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let answer = clients
                .changes
                .list_changes(ListChangesRequest {
                    start_after,
                    page_size: 1000,
                    include_resources: true,
                    ..Default::default()
                })
                .await;
            match answer {
                Ok(page) => {
                    let page = page.into_inner();
                    assert_private(&format!("{page:?}"), other, seed, "ListChanges from another tenant's cursor");
                    for change in &page.changes {
                        me.sequences.push(change.sequence);
                        let system = change.actor.is_empty();
                        assert!(
                            system || me.ids.contains(&change.resource_id),
                            "seed {seed}: a change of {} about {} it does not hold",
                            me.name,
                            change.resource_id
                        );
                    }
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::FailedPrecondition, "seed {seed}: {status:?}");
                    assert_private(&format!("{status:?}"), other, seed, "ListChanges");
                }
            }
        }
        12 => {
            // A request_id the other used creates this tenant's own contact.
            let fresh: Vec<String> = other.request_ids.iter().filter(|r| !me.borrowed.contains(*r)).cloned().collect();
            if let Some(request_id) = pick(rng, &fresh) {
                me.borrowed.insert(request_id.clone());
                let request = CreateContactRequest {
                    contact: Some(Contact { display_name: marker.clone(), ..Default::default() }),
                    request_id,
                };
                let contact = clients.contacts.create_contact(request).await.expect("create").into_inner();
                assert_private(&format!("{contact:?}"), other, seed, "a create with another tenant's request_id");
                assert_eq!(
                    contact.display_name, marker,
                    "seed {seed}: another tenant's request_id replayed its answer"
                );
                me.ids.insert(contact.id.clone());
                me.contacts.push(contact.id);
                me.markers.push(marker);
            }
        }
        _ => {
            // The own resources read back whole.
            if let Some(id) = pick(rng, &me.contacts) {
                let contact = clients.contacts.get_contact(GetContactRequest { id, read_mask: None }).await;
                assert_private(&format!("{:?}", contact.expect("own contact")), other, seed, "GetContact");
            }
        }
    }
}

async fn no_operation_of_one_tenant_reveals_the_other(backend: Backend) {
    let mut operations = 0;
    for seed in 0..SEEDS {
        let app = spawn_app(backend).await;
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut a, mut b) = (Clients::of(&app, "tenant-a"), Clients::of(&app, "tenant-b"));
        let mut sides = [
            Side { name: "tenant-a".into(), ..Default::default() },
            Side { name: "tenant-b".into(), ..Default::default() },
        ];
        for _ in 0..OPERATIONS {
            let first = rng.random_bool(0.5);
            let [left, right] = &mut sides;
            let (clients, me, other) = if first { (&mut a, left, &*right) } else { (&mut b, right, &*left) };
            operate(&mut rng, seed, clients, me, other).await;
            operations += 1;
        }
    }
    eprintln!("{backend:?}: {operations} operations of two tenants, none revealed the other");
}
