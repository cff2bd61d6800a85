//! The one error type of agenda and the single place where it becomes a
//! `tonic::Status` with `google.rpc` details (AIP-193).
//!
//! Which error belongs where: the domain reports invalid input as field
//! violations (`Invalid`) and broken rules (`FailedPrecondition`); the
//! service layer reports `NotFound`, `EtagMismatch` and `Duplicate` as it
//! looks resources up and checks them inside the writing transaction; the
//! store reports what the database says, classified by who can fix it
//! ([`classify_database_error`]): connection, pool and shutdown failures are
//! `Database` (UNAVAILABLE, retry with backoff), serialization failures and
//! deadlocks `Conflict` (ABORTED, retry the call), and constraint or data
//! errors that got past validation `Internal` (a bug: logged, never retried
//! blindly) unless the store maps the constraint to what it means; auth
//! reports `Unauthenticated` and `PermissionDenied`.
//! Nothing here ever puts SQL, a file path or another tenant's data into the
//! message a caller sees: internal causes are logged and replaced.

use std::{collections::HashMap, fmt, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::telemetry::call::{Severity, log_cause};

/// The `ErrorInfo.domain` of every agenda error.
pub const DOMAIN: &str = "agenda";

/// The machine-readable reasons (docs/errors.md), sent as `ErrorInfo.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    TokenMissing,
    TokenInvalid,
    TokenExpired,
    ScopeMissing,
    NotEditable,
    NotAuthor,
    FieldInvalid,
    FieldRequired,
    FieldOutputOnly,
    FieldImmutable,
    FieldUnknown,
    FilterInvalid,
    OrderByInvalid,
    PageTokenInvalid,
    TooMany,
    MalformedRequest,
    NotFound,
    Duplicate,
    EtagMismatch,
    ConcurrentWrite,
    InUse,
    Cycle,
    RequestIdReused,
    NotDeleted,
    CursorExpired,
    WatchEnded,
    Overloaded,
    MessageTooLarge,
    DeadlineExceeded,
    DatabaseUnavailable,
    MethodUnknown,
    Internal,
}

/// Whose limit an `OVERLOADED` call met (its metadata `scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// The replica's: `AGENDA_MAX_CONCURRENT_CALLS`, or its most watch streams.
    Server,
    /// The caller's tenant's: `AGENDA_TENANT_MAX_CONCURRENT_CALLS`.
    Tenant,
}

impl Overload {
    /// Its metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            Overload::Server => "server",
            Overload::Tenant => "tenant",
        }
    }
}

impl Reason {
    /// The reason as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TokenMissing => "TOKEN_MISSING",
            Reason::TokenInvalid => "TOKEN_INVALID",
            Reason::TokenExpired => "TOKEN_EXPIRED",
            Reason::ScopeMissing => "SCOPE_MISSING",
            Reason::NotEditable => "NOT_EDITABLE",
            Reason::NotAuthor => "NOT_AUTHOR",
            Reason::FieldInvalid => "FIELD_INVALID",
            Reason::FieldRequired => "FIELD_REQUIRED",
            Reason::FieldOutputOnly => "FIELD_OUTPUT_ONLY",
            Reason::FieldImmutable => "FIELD_IMMUTABLE",
            Reason::FieldUnknown => "FIELD_UNKNOWN",
            Reason::FilterInvalid => "FILTER_INVALID",
            Reason::OrderByInvalid => "ORDER_BY_INVALID",
            Reason::PageTokenInvalid => "PAGE_TOKEN_INVALID",
            Reason::TooMany => "TOO_MANY",
            Reason::MalformedRequest => "MALFORMED_REQUEST",
            Reason::NotFound => "NOT_FOUND",
            Reason::Duplicate => "DUPLICATE",
            Reason::EtagMismatch => "ETAG_MISMATCH",
            Reason::ConcurrentWrite => "CONCURRENT_WRITE",
            Reason::InUse => "IN_USE",
            Reason::Cycle => "CYCLE",
            Reason::RequestIdReused => "REQUEST_ID_REUSED",
            Reason::NotDeleted => "NOT_DELETED",
            Reason::CursorExpired => "CURSOR_EXPIRED",
            Reason::WatchEnded => "WATCH_ENDED",
            Reason::Overloaded => "OVERLOADED",
            Reason::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Reason::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Reason::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            Reason::MethodUnknown => "METHOD_UNKNOWN",
            Reason::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invalid field of a request: becomes a `BadRequest` field violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field path, e.g. `contact.emails[2].address`.
    pub field: String,
    /// Why it is invalid.
    pub reason: Reason,
    /// A sentence a person can act on.
    pub description: String,
}

impl Violation {
    /// A violation of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: Reason, description: impl Into<String>) -> Self {
        Self { field: field.into(), reason, description: description.into() }
    }
}

/// Everything that can go wrong in a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller is not authenticated (token missing, invalid or expired).
    #[error("{message}")]
    Unauthenticated { reason: Reason, message: String },
    /// The caller is authenticated but may not do this.
    #[error("{message}")]
    PermissionDenied { reason: Reason, message: String, metadata: Vec<(&'static str, String)> },
    /// The request is invalid; at least one violation.
    #[error("the request is invalid: {}", .0.first().map(|v| v.description.as_str()).unwrap_or("invalid input"))]
    Invalid(Vec<Violation>),
    /// A filter, order_by or page_token that cannot be used.
    #[error("{message}")]
    Query { reason: Reason, field: &'static str, position: Option<usize>, message: String },
    /// The resource does not exist in the caller's tenant. `field` names
    /// where the id was sent when that helps (`requests[3].contact.id`).
    #[error("{resource} {id:?} does not exist")]
    NotFound { resource: &'static str, id: String, field: Option<String> },
    /// A unique value is taken.
    #[error("{message}")]
    Duplicate { resource: &'static str, field: String, message: String },
    /// The etag sent is not the resource's current one.
    #[error("{resource} {id:?} was changed since its etag was read")]
    EtagMismatch { resource: &'static str, id: String },
    /// The system is not in the state the call needs.
    #[error("{message}")]
    FailedPrecondition { reason: Reason, subject: String, message: String },
    /// The server is shedding load: the replica's calls, or the caller's
    /// tenant's, are at their limit.
    #[error("the server is overloaded ({}); retry with backoff", scope.as_str())]
    Overloaded { scope: Overload },
    /// A change-feed cursor points before the oldest change kept.
    #[error("changes after the cursor were purged; the oldest kept is {oldest_sequence}")]
    CursorExpired { oldest_sequence: i64 },
    /// A watch stream was ended (it fell behind, or the server stops); the
    /// consumer resumes after `resume_after` and loses nothing.
    #[error("the watch ended; resume after {resume_after}")]
    WatchEnded { resume_after: i64, behind: bool },
    /// The request message does not decode (the caller sent it).
    #[error("the request message does not decode")]
    Malformed,
    /// A request message is larger than the server accepts.
    #[error("a request message is larger than {limit} bytes")]
    MessageTooLarge { limit: usize },
    /// The answer would be larger than the response budget.
    #[error("the response would be larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
    /// Another transaction wrote the same data at the same time (a
    /// serialization failure or a deadlock); retrying the call is safe.
    #[error("concurrent write: {0}")]
    Conflict(String),
    /// The caller's deadline (`grpc-timeout`) ran out.
    #[error("the call's deadline ran out")]
    DeadlineExceeded,
    /// The RPC is not part of the contract.
    #[error("method {0} is not part of this service")]
    UnknownMethod(String),
    /// The database could not be reached or failed; retryable. The cause is
    /// logged, never sent.
    #[error("database unavailable: {0}")]
    Database(String),
    /// No pooled database connection came free in time: the replica is
    /// busy, the database may be fine; retryable.
    #[error("no database connection came free in time")]
    PoolBusy,
    /// A bug or an unexpected state. The cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The result type of agenda.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An invalid request with a single violation.
    pub fn invalid(field: impl Into<String>, reason: Reason, description: impl Into<String>) -> Self {
        Error::Invalid(vec![Violation::new(field, reason, description)])
    }

    /// The reason of this error, as sent in `ErrorInfo`.
    pub fn reason(&self) -> Reason {
        match self {
            Error::Unauthenticated { reason, .. }
            | Error::PermissionDenied { reason, .. }
            | Error::FailedPrecondition { reason, .. } => *reason,
            Error::Invalid(violations) => violations.first().map_or(Reason::FieldInvalid, |v| v.reason),
            Error::Query { reason, .. } => *reason,
            Error::NotFound { .. } => Reason::NotFound,
            Error::Duplicate { .. } => Reason::Duplicate,
            Error::EtagMismatch { .. } => Reason::EtagMismatch,
            Error::Overloaded { .. } => Reason::Overloaded,
            Error::CursorExpired { .. } => Reason::CursorExpired,
            Error::WatchEnded { .. } => Reason::WatchEnded,
            Error::MessageTooLarge { .. } | Error::ResponseTooLarge { .. } => Reason::MessageTooLarge,
            Error::Malformed => Reason::MalformedRequest,
            Error::Conflict(_) => Reason::ConcurrentWrite,
            Error::DeadlineExceeded => Reason::DeadlineExceeded,
            Error::UnknownMethod(_) => Reason::MethodUnknown,
            Error::Database(_) | Error::PoolBusy => Reason::DatabaseUnavailable,
            Error::Internal(_) => Reason::Internal,
        }
    }

    /// A resource that does not exist.
    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound { resource, id: id.into(), field: None }
    }

    /// Prefixes every field path of the error, e.g. with `requests[3].`, so
    /// a batch error names the failing item.
    pub fn prefixed(self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        match self {
            Error::NotFound { resource, id, field } => {
                Error::NotFound { resource, id, field: Some(format!("{prefix}{}", field.unwrap_or_default())) }
            }
            Error::Duplicate { resource, field, message } => {
                Error::Duplicate { resource, field: format!("{prefix}{field}"), message }
            }
            Error::Invalid(violations) => Error::Invalid(
                violations.into_iter().map(|v| Violation { field: format!("{prefix}{}", v.field), ..v }).collect(),
            ),
            other => other,
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(error: diesel::result::Error) -> Self {
        classify_database_error(&error)
    }
}

/// What a database error means for the caller: see the module doc. The
/// kinds diesel knows are mapped by kind; the rest (PostgreSQL reports
/// deadlocks, statement timeouts and shutdowns without a kind of their own,
/// SQLite reports locks and I/O errors as text) by their message.
pub fn classify_database_error(error: &diesel::result::Error) -> Error {
    use diesel::result::{DatabaseErrorKind as Kind, Error as E};
    let text = error.to_string();
    match error {
        E::DatabaseError(Kind::ClosedConnection | Kind::UnableToSendCommand, _) => Error::Database(text),
        E::DatabaseError(Kind::SerializationFailure, _) => Error::Conflict(text),
        E::DatabaseError(Kind::Unknown, info) => {
            let message = info.message().to_ascii_lowercase();
            const CONFLICT: &[&str] = &["deadlock detected", "could not serialize"];
            const UNAVAILABLE: &[&str] = &[
                "canceling statement",
                "terminating connection",
                "the database system is",
                "connection",
                "too many clients",
                "database is locked",
                "database table is locked",
                "disk i/o error",
                "unable to open database",
                "database or disk is full",
                "out of memory",
            ];
            if CONFLICT.iter().any(|m| message.contains(m)) {
                Error::Conflict(text)
            } else if UNAVAILABLE.iter().any(|m| message.contains(m)) {
                Error::Database(text)
            } else {
                Error::Internal(format!("database error: {text}"))
            }
        }
        E::BrokenTransactionManager | E::RollbackErrorOnCommit { .. } => Error::Database(text),
        _ => Error::Internal(format!("database error: {text}")),
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for Error {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        match error {
            deadpool::managed::PoolError::Timeout(deadpool::managed::TimeoutType::Wait) => Error::PoolBusy,
            error => Error::Database(error.to_string()),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let reason = error.reason().as_str();
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        let (code, message) = match error {
            Error::Unauthenticated { message, .. } => (Code::Unauthenticated, message),
            Error::PermissionDenied { message, metadata: extra, .. } => {
                metadata.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
                (Code::PermissionDenied, message)
            }
            Error::Invalid(violations) => {
                let message = match violations.as_slice() {
                    [one] => one.description.clone(),
                    [first, rest @ ..] => {
                        format!("{} (and {} more problems)", first.description, rest.len())
                    }
                    [] => "The request is invalid.".to_string(),
                };
                if let Some(first) = violations.first() {
                    metadata.insert("field".to_string(), first.field.clone());
                }
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                (Code::InvalidArgument, message)
            }
            Error::Query { field, position, message, .. } => {
                metadata.insert("field".to_string(), field.to_string());
                if let Some(position) = position {
                    metadata.insert("position".to_string(), position.to_string());
                }
                details.add_bad_request_violation(field, message.clone());
                (Code::InvalidArgument, message)
            }
            Error::NotFound { resource, id, field } => {
                let message = match &field {
                    Some(field) => format!("No {resource} with id {id:?} exists ({field})."),
                    None => format!("No {resource} with id {id:?} exists."),
                };
                metadata.insert("resource".to_string(), resource.to_string());
                metadata.insert("id".to_string(), id);
                if let Some(field) = field {
                    metadata.insert("field".to_string(), field);
                }
                (Code::NotFound, message)
            }
            Error::Duplicate { resource, field, message } => {
                metadata.insert("resource".to_string(), resource.to_string());
                metadata.insert("field".to_string(), field);
                (Code::AlreadyExists, message)
            }
            Error::EtagMismatch { resource, id } => {
                let message = format!(
                    "The {resource} {id:?} was changed since you read it: read it again and retry with its new etag."
                );
                details.add_precondition_failure_violation("ETAG", format!("{resource}/{id}"), message.clone());
                metadata.insert("resource".to_string(), resource.to_string());
                metadata.insert("id".to_string(), id);
                (Code::Aborted, message)
            }
            Error::FailedPrecondition { reason, subject, message } => {
                details.add_precondition_failure_violation(reason.as_str(), subject, message.clone());
                (Code::FailedPrecondition, message)
            }
            Error::CursorExpired { oldest_sequence } => {
                metadata.insert("oldest_sequence".to_string(), oldest_sequence.to_string());
                let message = format!(
                    "Changes after this cursor were purged (the oldest kept is {oldest_sequence}): resynchronize, then follow the feed from its newest sequence."
                );
                details.add_precondition_failure_violation("CURSOR_EXPIRED", "start_after", message.clone());
                (Code::FailedPrecondition, message)
            }
            Error::WatchEnded { resume_after, behind } => {
                metadata.insert("resume_after".to_string(), resume_after.to_string());
                details.set_retry_info(Some(Duration::from_millis(100)));
                let why = if behind { "fell too far behind the changes" } else { "was ended by the server" };
                (
                    Code::Unavailable,
                    format!("This watch {why}; watch again with start_after = {resume_after} to resume without loss."),
                )
            }
            Error::Overloaded { scope } => {
                details.set_retry_info(Some(Duration::from_millis(100)));
                metadata.insert("scope".to_string(), scope.as_str().to_string());
                let message = match scope {
                    Overload::Server => "The server is overloaded; retry with backoff.",
                    Overload::Tenant => "Your tenant has as many calls running on this server as it may; retry with backoff.",
                };
                (Code::ResourceExhausted, message.to_string())
            }
            Error::MessageTooLarge { limit } => {
                metadata.insert("limit_bytes".to_string(), limit.to_string());
                (
                    Code::ResourceExhausted,
                    format!(
                        "A request message is larger than the {limit} bytes this server accepts; send less per call."
                    ),
                )
            }
            Error::Malformed => (
                Code::InvalidArgument,
                "The request message does not decode as this RPC's protobuf message (corrupt bytes, or invalid UTF-8 in a string field).".to_string(),
            ),
            Error::ResponseTooLarge { limit } => {
                metadata.insert("limit_bytes".to_string(), limit.to_string());
                (
                    Code::ResourceExhausted,
                    format!(
                        "The answer would be larger than the {limit} bytes this server sends in one response; ask for fewer items or a smaller read_mask."
                    ),
                )
            }
            Error::Conflict(cause) => {
                log_cause(Severity::Info, "transaction conflict", &cause);
                details.set_retry_info(Some(Duration::from_millis(50)));
                (Code::Aborted, "Another call changed the same data at the same time; retry the call.".to_string())
            }
            Error::DeadlineExceeded => {
                (Code::DeadlineExceeded, "The call's deadline (grpc-timeout) ran out before it finished.".to_string())
            }
            Error::UnknownMethod(path) => (Code::Unimplemented, format!("The method {path} does not exist.")),
            Error::Database(cause) => {
                log_cause(Severity::Error, "database failure", &cause);
                details.set_retry_info(Some(Duration::from_secs(1)));
                (Code::Unavailable, "The database is unavailable; retry with backoff.".to_string())
            }
            Error::PoolBusy => {
                log_cause(Severity::Error, "database failure", &"no pooled connection came free in time");
                details.set_retry_info(Some(Duration::from_secs(1)));
                (Code::Unavailable, "No database connection came free in time; retry with backoff.".to_string())
            }
            Error::Internal(cause) => {
                log_cause(Severity::Error, "internal error", &cause);
                (Code::Internal, "An internal error occurred; it has been logged.".to_string())
            }
        };
        details.set_error_info(reason, DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorKind as Kind, Error as DieselError};

    use super::*;

    fn database(kind: Kind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_string()))
    }

    #[test]
    fn database_errors_are_classified_by_who_can_fix_them() {
        let cases = [
            (database(Kind::ClosedConnection, "connection closed"), Code::Unavailable),
            (database(Kind::UnableToSendCommand, "broken pipe"), Code::Unavailable),
            (database(Kind::Unknown, "terminating connection due to administrator command"), Code::Unavailable),
            (database(Kind::Unknown, "the database system is shutting down"), Code::Unavailable),
            (database(Kind::Unknown, "canceling statement due to statement timeout"), Code::Unavailable),
            (database(Kind::Unknown, "database is locked"), Code::Unavailable),
            (database(Kind::SerializationFailure, "could not serialize access"), Code::Aborted),
            (database(Kind::Unknown, "deadlock detected"), Code::Aborted),
            (database(Kind::Unknown, "invalid byte sequence for encoding \"UTF8\": 0x00"), Code::Internal),
            (database(Kind::UniqueViolation, "duplicate key value"), Code::Internal),
            (database(Kind::ForeignKeyViolation, "violates foreign key constraint"), Code::Internal),
            (database(Kind::CheckViolation, "violates check constraint"), Code::Internal),
            (DieselError::NotFound, Code::Internal),
            (DieselError::BrokenTransactionManager, Code::Unavailable),
        ];
        for (error, code) in cases {
            let described = error.to_string();
            let status = Status::from(Error::from(error));
            assert_eq!(status.code(), code, "{described}");
            assert!(!status.message().contains("0x00") && !status.message().contains("constraint"), "{status:?}");
            let retry = status.get_error_details().retry_info().is_some();
            assert_eq!(retry, matches!(code, Code::Unavailable | Code::Aborted), "{described}: retry hint");
        }
    }
}
