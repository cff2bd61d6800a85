//! Recurring tasks: completing an occurrence creates the next one at the
//! rule's next time in the task's time zone, so 09:00 stays 09:00 across
//! daylight-saving changes; COUNT and UNTIL end a series; and the next
//! occurrence is made once however often, or however concurrently, its
//! predecessor is completed.

use agenda::api::{self, CompleteTaskRequest, RelatedRecord, ReopenTaskRequest, RichText, Task, TextFormat};
use prost_types::Timestamp;
use tonic::transport::Channel;

use crate::helpers::{
    Backend, Tasks, complete, create_task, list_tasks, new_contacts, spawn_app, tasks_on, titled, utc,
};

on_both_backends!(
    weekly_on_monday_and_thursday_follows_the_rule,
    the_next_occurrence_carries_the_task_on,
    count_3_makes_exactly_three_occurrences,
    until_ends_the_series,
    berlin_keeps_nine_oclock_across_both_clock_changes,
    new_york_keeps_nine_oclock_across_both_clock_changes,
    completing_twice_makes_the_next_occurrence_once,
    complete_reopen_complete_makes_the_next_occurrence_once,
    parallel_completes_make_the_next_occurrence_once,
);

/// A recurring task whose first occurrence is due at `first` (RFC 3339).
fn series(title: &str, time_zone: &str, recurrence: &str, first: &str) -> Task {
    Task { deadline: utc(first), time_zone: time_zone.into(), recurrence: recurrence.into(), ..titled(title) }
}

fn rfc3339(deadline: &Option<Timestamp>) -> String {
    let t = deadline.as_ref().expect("an occurrence has a deadline");
    let time = chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("a time");
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn deadlines(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| rfc3339(&t.deadline)).collect()
}

/// Every occurrence of the series titled `title`, nearest deadline first.
async fn occurrences(client: &mut Tasks, title: &str) -> Vec<Task> {
    list_tasks(client, &format!("title = \"{title}\""), "deadline").await
}

/// The occurrences of the series not completed yet, nearest deadline first.
async fn open_occurrences(client: &mut Tasks, title: &str) -> Vec<Task> {
    list_tasks(client, &format!("title = \"{title}\" AND status != COMPLETED"), "deadline").await
}

/// Completes `task` and returns the occurrence that made, if any; there is
/// never more than one open occurrence in these series.
async fn complete_and_next(client: &mut Tasks, task: &Task) -> Option<Task> {
    let done = complete(client, &task.id).await;
    assert_eq!(done.status, api::Status::Completed as i32);
    let mut open = open_occurrences(client, &task.title).await;
    assert!(open.len() <= 1, "one open occurrence at a time: {open:?}");
    open.pop()
}

/// Creates `first` and completes occurrence after occurrence until there
/// are as many as `expected` has deadlines; checks the deadlines and that
/// each occurrence names the first as its origin. Returns them, the last open.
async fn follow(client: &mut Tasks, first: Task, expected: &[&str]) -> Vec<Task> {
    let mut seen = vec![create_task(client, first).await];
    while seen.len() < expected.len() {
        let last = seen.last().expect("the first");
        let next = complete_and_next(client, last).await;
        let next = next.unwrap_or_else(|| panic!("no occurrence after {}", rfc3339(&last.deadline)));
        seen.push(next);
    }
    assert_eq!(deadlines(&seen), expected, "{}", seen[0].title);
    let origin = seen[0].id.clone();
    for occurrence in &seen {
        assert_eq!(
            occurrence.recurrence_origin_id,
            origin,
            "{}: the first is the origin",
            rfc3339(&occurrence.deadline)
        );
    }
    seen
}

async fn weekly_on_monday_and_thursday_follows_the_rule(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let first = series("Standup", "UTC", "FREQ=WEEKLY;BYDAY=MO,TH", "2026-01-05T09:00:00Z");
    let expected = [
        "2026-01-05T09:00:00Z",
        "2026-01-08T09:00:00Z",
        "2026-01-12T09:00:00Z",
        "2026-01-15T09:00:00Z",
        "2026-01-19T09:00:00Z",
        "2026-01-22T09:00:00Z",
    ];
    let seen = follow(&mut client, first, &expected).await;
    let ids: std::collections::HashSet<&str> = seen.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), seen.len(), "each occurrence is a task of its own");
    assert_eq!(occurrences(&mut client, "Standup").await.len(), expected.len());
}

async fn the_next_occurrence_carries_the_task_on(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let contact = new_contacts(&app, "t1", 1).await.remove(0);
    let request = api::CreateTaskCategoryRequest {
        task_category: Some(api::TaskCategory { title: "Reports".into(), ..Default::default() }),
        request_id: String::new(),
    };
    let reports = app.task_admin("t1").create_task_category(request).await.expect("create category").into_inner();
    let first = create_task(
        &mut client,
        Task {
            description: Some(RichText {
                format: TextFormat::Markdown as i32,
                raw: "Numbers".into(),
                html: String::new(),
            }),
            responsible_user_id: "bob".into(),
            category_id: reports.id.clone(),
            contact_id: contact.clone(),
            related: vec![RelatedRecord { r#type: "case".into(), id: "42".into() }],
            status: api::Status::InProgress as i32,
            priority: api::Priority::High as i32,
            notify_responsible: true,
            alert_minutes: 45,
            // Monday 2100-01-04, 09:00 in Berlin.
            ..series("Weekly report", "Europe/Berlin", "FREQ=WEEKLY;BYDAY=MO", "2100-01-04T08:00:00Z")
        },
    )
    .await;
    assert_eq!(first.recurrence_origin_id, first.id, "the first is its own origin");
    let next = complete_and_next(&mut client, &first).await.expect("the next occurrence");
    assert_ne!(next.id, first.id);
    assert_eq!(rfc3339(&next.deadline), "2100-01-11T08:00:00Z");
    assert_eq!(next.recurrence_origin_id, first.id);
    assert_eq!(next.title, first.title);
    assert_eq!(next.description.as_ref().map(|d| d.raw.as_str()), Some("Numbers"));
    assert_eq!(next.responsible_user_id, "bob");
    assert_eq!((next.category_id.as_str(), next.contact_id.as_str()), (reports.id.as_str(), contact.as_str()));
    assert_eq!(next.related, first.related);
    assert_eq!(next.priority, api::Priority::High as i32);
    assert_eq!((next.notify_responsible, next.alert_minutes), (true, 45));
    assert_eq!((next.time_zone.as_str(), next.recurrence.as_str()), ("Europe/Berlin", "FREQ=WEEKLY;BYDAY=MO"));
    assert_eq!(next.status, api::Status::Scheduled as i32, "a new occurrence starts scheduled");
    assert!(next.completed_time.is_none() && next.completed_by.is_empty());
    assert_eq!(next.revision, 1);
}

async fn count_3_makes_exactly_three_occurrences(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let first = series("Three times", "UTC", "FREQ=WEEKLY;BYDAY=MO,TH;COUNT=3", "2026-01-05T09:00:00Z");
    let seen =
        follow(&mut client, first, &["2026-01-05T09:00:00Z", "2026-01-08T09:00:00Z", "2026-01-12T09:00:00Z"]).await;
    let after_last = complete_and_next(&mut client, &seen[2]).await;
    assert!(after_last.is_none(), "COUNT=3 ends with the third: {after_last:?}");
    let all = occurrences(&mut client, "Three times").await;
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|t| t.status == api::Status::Completed as i32), "{all:?}");
}

async fn until_ends_the_series(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let first = series("Until Wednesday", "UTC", "FREQ=DAILY;UNTIL=20260107T120000Z", "2026-01-05T09:00:00Z");
    let seen =
        follow(&mut client, first, &["2026-01-05T09:00:00Z", "2026-01-06T09:00:00Z", "2026-01-07T09:00:00Z"]).await;
    let after_last = complete_and_next(&mut client, &seen[2]).await;
    assert!(after_last.is_none(), "nothing after UNTIL: {after_last:?}");
    assert_eq!(occurrences(&mut client, "Until Wednesday").await.len(), 3);
}

async fn berlin_keeps_nine_oclock_across_both_clock_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let weekly = "FREQ=WEEKLY;BYDAY=MO";
    // Summer time starts on 2026-03-29: 09:00 is 08:00Z before, 07:00Z after.
    let spring = series("Berlin spring", "Europe/Berlin", weekly, "2026-03-23T08:00:00Z");
    follow(&mut client, spring, &["2026-03-23T08:00:00Z", "2026-03-30T07:00:00Z", "2026-04-06T07:00:00Z"]).await;
    // And ends on 2026-10-25.
    let autumn = series("Berlin autumn", "Europe/Berlin", weekly, "2026-10-19T07:00:00Z");
    follow(&mut client, autumn, &["2026-10-19T07:00:00Z", "2026-10-26T08:00:00Z", "2026-11-02T08:00:00Z"]).await;
    // In UTC the same rule keeps its UTC time.
    let plain = series("UTC spring", "UTC", weekly, "2026-03-23T08:00:00Z");
    follow(&mut client, plain, &["2026-03-23T08:00:00Z", "2026-03-30T08:00:00Z"]).await;
}

async fn new_york_keeps_nine_oclock_across_both_clock_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let weekly = "FREQ=WEEKLY;BYDAY=MO";
    // Daylight time starts on 2026-03-08: 09:00 is 14:00Z before, 13:00Z after.
    let spring = series("New York spring", "America/New_York", weekly, "2026-03-02T14:00:00Z");
    follow(&mut client, spring, &["2026-03-02T14:00:00Z", "2026-03-09T13:00:00Z", "2026-03-16T13:00:00Z"]).await;
    // And ends on 2026-11-01.
    let autumn = series("New York autumn", "America/New_York", weekly, "2026-10-26T13:00:00Z");
    follow(&mut client, autumn, &["2026-10-26T13:00:00Z", "2026-11-02T14:00:00Z", "2026-11-09T14:00:00Z"]).await;
}

async fn completing_twice_makes_the_next_occurrence_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let first = create_task(&mut client, series("Daily", "UTC", "FREQ=DAILY", "2026-01-05T09:00:00Z")).await;
    let done = complete(&mut client, &first.id).await;
    assert_eq!(complete(&mut client, &first.id).await, done, "the second completion changes nothing");
    let all = occurrences(&mut client, "Daily").await;
    assert_eq!(deadlines(&all), ["2026-01-05T09:00:00Z", "2026-01-06T09:00:00Z"]);
    assert_eq!(open_occurrences(&mut client, "Daily").await.len(), 1);
}

async fn complete_reopen_complete_makes_the_next_occurrence_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let first = create_task(&mut client, series("Daily", "UTC", "FREQ=DAILY", "2026-01-05T09:00:00Z")).await;
    let next = complete_and_next(&mut client, &first).await.expect("the next occurrence");
    let reopen = ReopenTaskRequest { id: first.id.clone(), etag: String::new() };
    client.reopen_task(reopen).await.expect("reopen");
    assert_eq!(open_occurrences(&mut client, "Daily").await.len(), 2, "the reopened one and the next");
    complete(&mut client, &first.id).await;
    let open = open_occurrences(&mut client, "Daily").await;
    assert_eq!(open, [next], "completing again made no second next occurrence");
    assert_eq!(occurrences(&mut client, "Daily").await.len(), 2);
}

async fn parallel_completes_make_the_next_occurrence_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.tasks("t1");
    let mut current = create_task(&mut client, series("Race", "UTC", "FREQ=DAILY", "2026-01-05T09:00:00Z")).await;
    for round in 0..3 {
        // Eight callers, each on a connection of its own.
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let channel = Channel::from_shared(format!("http://{}", app.addr)).expect("endpoint").connect_lazy();
                let mut racer = tasks_on(channel, "t1");
                let request = CompleteTaskRequest { id: current.id.clone(), etag: String::new() };
                tokio::spawn(async move { racer.complete_task(request).await })
            })
            .collect();
        for racer in racers {
            let answer = racer.await.expect("the call does not panic");
            let done = answer.unwrap_or_else(|s| panic!("round {round}: {s:?}")).into_inner();
            assert_eq!(
                (done.status, done.revision),
                (api::Status::Completed as i32, 2),
                "round {round}: every caller sees the one completion"
            );
        }
        let mut open = open_occurrences(&mut client, "Race").await;
        assert_eq!(open.len(), 1, "round {round}: exactly one next occurrence: {open:?}");
        current = open.remove(0);
    }
    let all = occurrences(&mut client, "Race").await;
    assert_eq!(
        deadlines(&all),
        ["2026-01-05T09:00:00Z", "2026-01-06T09:00:00Z", "2026-01-07T09:00:00Z", "2026-01-08T09:00:00Z"]
    );
}
