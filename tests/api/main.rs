//! Integration tests: the real server over real gRPC, every test body on
//! SQLite and on PostgreSQL, as two tests named after their backend.

#[macro_use]
mod backends;

mod activities;
mod activity_revisions;
mod activity_types;
mod auth;
mod changes;
mod contact_batches;
mod contact_lists;
mod contact_updates;
mod contacts;
mod crash;
mod faults;
mod health;
mod helpers;
mod hostile;
mod isolation;
mod machinery;
mod ops;
mod replicas;
mod task_recurrence;
mod task_reminders;
mod tasks;
