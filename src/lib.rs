//! agenda: a multi-tenant gRPC service for contacts, activities and tasks.

pub mod api;
pub mod auth;
pub mod config;
pub mod deadline;
pub mod devmode;
pub mod domain;
pub mod error;
pub mod feed;
pub mod i18n;
pub mod limits;
pub mod listener;
pub mod query;
pub mod reminders;
pub mod service;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
