//! Read and update masks over every resource message, and the merge of an
//! update: no input may panic, and every refusal is INVALID_ARGUMENT.
#![no_main]

use agenda::{
    api,
    service::mask::{self, ReadMask, UpdateMask},
};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost_types::FieldMask;
use tonic::Code;

#[derive(Arbitrary, Debug)]
struct Input {
    message: u8,
    paths: Vec<String>,
    current: Vec<u8>,
    patch: Vec<u8>,
    creating: bool,
}

fn refused(error: agenda::error::Error) {
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

fn exercise<M: Message + Default + Clone>(name: &str, input: &Input) {
    let fields = FieldMask { paths: input.paths.clone() };
    let current = M::decode(input.current.as_slice()).unwrap_or_default();
    let patch = M::decode(input.patch.as_slice()).unwrap_or_default();
    match ReadMask::parse(name, Some(&fields)) {
        Ok(read) => {
            if let Err(error) = read.apply(current.clone()) {
                refused(error);
            }
        }
        Err(error) => refused(error),
    }
    match UpdateMask::parse(name, Some(&fields)) {
        Ok(update) => {
            if let Err(error) = update.merge(&current, &patch, input.creating) {
                refused(error);
            }
        }
        Err(error) => refused(error),
    }
}

fuzz_target!(|input: Input| {
    if mask::load_contract().is_err() {
        return;
    }
    match input.message % 5 {
        0 => exercise::<api::Contact>("agenda.v1.Contact", &input),
        1 => exercise::<api::Activity>("agenda.v1.Activity", &input),
        2 => exercise::<api::Task>("agenda.v1.Task", &input),
        3 => exercise::<api::ActivityType>("agenda.v1.ActivityType", &input),
        _ => exercise::<api::TaskCategory>("agenda.v1.TaskCategory", &input),
    }
});
