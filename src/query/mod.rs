//! The shared read machinery of every resource: the filter language, the
//! fields a resource declares for filtering and ordering, and keyset
//! pagination with opaque page tokens. A resource plugs in by declaring a
//! [`ResourceSpec`]; nothing here knows contacts from tasks.
//!
//! Queries are compiled to SQL text with numbered parameters (`$n` on
//! PostgreSQL, `?n` on SQLite). Only names from a [`ResourceSpec`] are ever
//! written into the SQL; every value a caller sends is a bound parameter.

pub mod filter;
pub mod list;
pub mod spec;

pub use list::{ListParams, ListPlan, PageToken};
pub use spec::{FieldKind, FieldSpec, ResourceSpec};
