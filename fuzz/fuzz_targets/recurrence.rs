//! A task's recurrence rule and time zone: parsed and validated, then the
//! task completed, which expands the rule to its next occurrence. No input
//! may panic, and the expansion is bounded (the fuzzer's timeout finds a
//! walk that is not).
#![no_main]

use agenda::{
    api,
    domain::{Check, Meta, Stored, task},
};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    recurrence: String,
    time_zone: String,
    deadline: i64,
    nanos: i32,
    alert_minutes: i32,
    now: i64,
}

fuzz_target!(|input: Input| {
    let task = api::Task {
        title: "Fuzz".into(),
        deadline: Some(prost_types::Timestamp { seconds: input.deadline, nanos: input.nanos }),
        recurrence: input.recurrence,
        time_zone: input.time_zone,
        alert_minutes: input.alert_minutes,
        notify_responsible: true,
        ..Default::default()
    };
    let mut check = Check::new("task.");
    let fields = task::parse(&mut check, &task);
    let Ok(fields) = check.finish(fields) else { return };
    let stored = Stored { meta: Meta::new("fuzz", "0190f3a4-0000-7000-8000-000000000000".into(), "fuzz", 0), fields };
    let _ = task::next_deadline(&stored.fields);
    let _ = task::reminder_at(&stored.meta, &stored.fields);
    let _ = task::overdue(&stored.fields, input.now);
    let _ = task::complete(&stored, "fuzz", input.now);
});
