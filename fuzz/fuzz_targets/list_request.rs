//! A List request's filter, order_by, page token and page size, planned for
//! every resource on both backends: no input may panic, and every refusal is
//! the caller's error (INVALID_ARGUMENT).
#![no_main]

use agenda::{
    query::{ListParams, ResourceSpec, list},
    store,
};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tonic::Code;

#[derive(Arbitrary, Debug)]
struct Input {
    page_size: i32,
    page_token: String,
    filter: String,
    order_by: String,
    show_deleted: bool,
    anchor: Option<String>,
    limit: u8,
}

const SPECS: [&ResourceSpec; 5] = [
    &store::contact::SPEC,
    &store::activity::SPEC,
    &store::task::SPEC,
    &store::activity_type::SPEC,
    &store::task_category::SPEC,
];

fuzz_target!(|input: Input| {
    let params = ListParams {
        page_size: input.page_size,
        page_token: input.page_token,
        filter: input.filter,
        order_by: input.order_by,
        show_deleted: input.show_deleted,
    };
    for spec in SPECS {
        for pg in [true, false] {
            match list::plan(spec, "fuzz", &params, pg) {
                Ok(plan) => {
                    if let Ok(sql) = plan.sql(input.anchor.as_deref(), usize::from(input.limit) + 1) {
                        // Caller values are bound, never spliced into the text.
                        assert!(!sql.text.contains('\0'));
                    }
                    let _ = plan.next_token("0190f3a4-0000-7000-8000-000000000000");
                }
                Err(error) => {
                    let status = tonic::Status::from(error);
                    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                }
            }
        }
    }
});
