//! The context of the current call: its deadline, from its `grpc-timeout`,
//! its concurrency permit, and its ids (for log lines). The limits layer
//! sets them for the call's
//! future (a tokio task-local); the store reads the deadline so the database
//! gives up when the caller has (PostgreSQL's `statement_timeout`), and
//! carries the permit into the task that does the database work, so a call
//! that was answered or dropped still counts against the limit until that
//! work has really stopped.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{sync::OwnedSemaphorePermit, time::Instant};

/// What a call carries into the work it starts.
#[derive(Clone, Default)]
pub struct CallContext {
    /// When the caller gives up.
    pub deadline: Option<Instant>,
    /// The call's share of the concurrency limit, held by every task doing its work.
    pub permit: Option<Arc<OwnedSemaphorePermit>>,
    /// Its share of its tenant's concurrency limit, held likewise.
    pub tenant_permit: Option<Arc<OwnedSemaphorePermit>>,
    /// Its method, request id and trace id, which log lines about it carry.
    pub ids: Option<Arc<CallIds>>,
}

/// What names a call in the log.
#[derive(Debug, Clone, Default)]
pub struct CallIds {
    /// The RPC's path.
    pub method: String,
    /// The call's `x-request-id`.
    pub request_id: String,
    /// Its W3C trace id (hex).
    pub trace_id: String,
}

tokio::task_local! {
    static CONTEXT: CallContext;
}

impl CallContext {
    /// The context of the call this task works for (empty outside a call).
    pub fn current() -> CallContext {
        CONTEXT.try_with(Clone::clone).unwrap_or_default()
    }

    /// Runs `future` in this context.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CONTEXT.scope(self, future).await
    }
}

/// Runs `future` with `deadline` as the current call's deadline, `permit`
/// as its permit and `ids` as its ids.
pub async fn scope<F: Future>(
    deadline: Option<Instant>,
    permit: Option<Arc<OwnedSemaphorePermit>>,
    ids: Option<Arc<CallIds>>,
    future: F,
) -> F::Output {
    CallContext { deadline, permit, tenant_permit: None, ids }.scope(future).await
}

/// The current call's deadline, if it has one.
pub fn current() -> Option<Instant> {
    CONTEXT.try_with(|context| context.deadline).ok().flatten()
}

/// The time left until the current call's deadline (zero once past), if it has one.
pub fn remaining() -> Option<Duration> {
    current().map(|deadline| deadline.saturating_duration_since(Instant::now()))
}

/// Parses a `grpc-timeout` header value: at most 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.len() < 2 || value.len() > 9 || !value.is_char_boundary(value.len() - 1) {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_grpc_timeout;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("99999999S"), Some(Duration::from_secs(99_999_999)));
        for bad in ["", "m", "123", "123456789S", "12x", "-1S", "1.5S", "1é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
