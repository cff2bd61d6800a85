//! The gRPC services: each converts the request, calls domain and store, and
//! converts the answer back. Shared here: timestamps, read masks and request
//! hashes.

pub mod contact;
pub mod mask;

use prost::Message;
use prost_types::Timestamp;
use sha2::{Digest, Sha256};

pub use mask::{MaskSpec, apply_read_mask};

/// A stored time (microseconds since the epoch) as a protobuf Timestamp.
pub fn timestamp(micros: i64) -> Timestamp {
    Timestamp { seconds: micros.div_euclid(1_000_000), nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32 }
}

/// A hash of an RPC's request, for request-id replays: the same operation and
/// the same bytes give the same hash. Callers clear the request_id first.
pub fn request_hash(operation: &str, request: &impl Message) -> String {
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    hasher.update([0]);
    hasher.update(request.encode_to_vec());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_before_and_after_the_epoch() {
        assert_eq!(timestamp(1_500_000), Timestamp { seconds: 1, nanos: 500_000_000 });
        assert_eq!(timestamp(-1), Timestamp { seconds: -1, nanos: 999_999_000 });
    }
}
