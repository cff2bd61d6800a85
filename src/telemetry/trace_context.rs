//! W3C Trace Context: continues a caller's `traceparent` (or starts a trace)
//! with a new span id for the call, and renders the header sent back.

use std::fmt::Write;

/// The trace a call belongs to and the span id it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The 16-byte trace id, kept from the caller when it sent one.
    pub trace_id: [u8; 16],
    /// This call's span id.
    pub span_id: [u8; 8],
    /// The caller's span id, when it sent a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Continues the trace of `traceparent` when it is valid, else starts one.
    pub fn continue_or_start(traceparent: Option<&str>) -> TraceContext {
        let span_id = random_nonzero::<8>();
        match traceparent.and_then(parse) {
            Some((trace_id, parent, flags)) => TraceContext { trace_id, span_id, parent_id: Some(parent), flags },
            None => TraceContext { trace_id: random_nonzero::<16>(), span_id, parent_id: None, flags: 0 },
        }
    }

    /// When the call's span is exported (OTLP), continues the caller's trace
    /// in it and takes the ids it was given, so that logs, the response
    /// header and the exported span agree. Otherwise returns `self` unchanged.
    pub fn exported_as(mut self, span: &tracing::Span) -> TraceContext {
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if span.is_disabled() {
            return self;
        }
        if let Some(parent) = self.parent_id {
            let remote = SpanContext::new(
                TraceId::from_bytes(self.trace_id),
                SpanId::from_bytes(parent),
                TraceFlags::new(self.flags),
                true,
                TraceState::default(),
            );
            if span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote)).is_err() {
                // No OTLP layer: nothing is exported, the ids made here stand.
                return self;
            }
        }
        let context = span.context();
        let exported = context.span().span_context().clone();
        if exported.is_valid() {
            self.trace_id = exported.trace_id().to_bytes();
            self.span_id = exported.span_id().to_bytes();
            self.flags = exported.trace_flags().to_u8();
        }
        self
    }

    /// The `traceparent` header naming this call's span.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), self.flags)
    }

    /// The trace id in hex.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id in hex.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The parent span id in hex, or an empty string.
    pub fn parent_id_hex(&self) -> String {
        self.parent_id.map(|p| hex(&p)).unwrap_or_default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses `version-traceid-parentid-flags` as the W3C spec says: lowercase hex,
/// ids not all zero, version `ff` invalid, later versions may append fields.
fn parse(header: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = header.trim().split('-');
    let version = unhex::<1>(parts.next()?)?[0];
    let trace_id = unhex::<16>(parts.next()?)?;
    let parent = unhex::<8>(parts.next()?)?;
    let flags = unhex::<1>(parts.next()?)?[0];
    if version == 0xff || (version == 0 && parts.next().is_some()) {
        return None;
    }
    if trace_id.iter().all(|b| *b == 0) || parent.iter().all(|b| *b == 0) {
        return None;
    }
    Some((trace_id, parent, flags))
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    #[test]
    fn continues_a_valid_traceparent() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::continue_or_start(Some(header));
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_id_hex(), "00f067aa0ba902b7");
        assert_ne!(context.span_id_hex(), "00f067aa0ba902b7");
        let sent = context.traceparent();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-01"), "{sent}");
    }

    #[test]
    fn starts_a_trace_for_invalid_headers() {
        for header in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let context = TraceContext::continue_or_start(Some(header));
            assert_eq!(context.parent_id, None, "{header:?}");
            assert_ne!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        let later = TraceContext::continue_or_start(Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"));
        assert!(later.parent_id.is_some());
    }
}
