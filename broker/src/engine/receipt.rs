//! Receipt handles: which receive of which message a client holds.
//!
//! A handle encodes `(queue id, seq, receive count)` as 40 hex digits. The
//! receive count grows by one with every receive, so it doubles as the
//! handle's generation: only the handle of the latest receive matches the
//! message's current count. Queue ids are never reused, so a handle of a
//! deleted queue never matches a new queue of the same name.

use super::error::{Error, Result};
use super::ids::{QueueId, Seq};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptHandle {
    pub queue_id: QueueId,
    pub seq: Seq,
    pub receive_count: u32,
}

impl ReceiptHandle {
    pub fn encode(&self) -> String {
        format!(
            "{:016x}{:016x}{:08x}",
            self.queue_id.0, self.seq.0, self.receive_count
        )
    }

    pub fn decode(s: &str) -> Result<ReceiptHandle> {
        let parsed = (s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| {
                Some(ReceiptHandle {
                    queue_id: QueueId(u64::from_str_radix(&s[..16], 16).ok()?),
                    seq: Seq(u64::from_str_radix(&s[16..32], 16).ok()?),
                    receive_count: u32::from_str_radix(&s[32..], 16).ok()?,
                })
            })
            .flatten()
            .filter(|h| h.receive_count > 0);
        match parsed {
            Some(h) => Ok(h),
            None => Err(Error::invalid(
                "receipt_handle",
                "is malformed: expected the 40 hex digits a receive returned",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let h = ReceiptHandle {
            queue_id: QueueId(7),
            seq: Seq(u64::MAX),
            receive_count: 3,
        };
        assert_eq!(ReceiptHandle::decode(&h.encode()).unwrap(), h);
        assert!(ReceiptHandle::decode("").is_err());
        assert!(ReceiptHandle::decode(&"z".repeat(40)).is_err());
        assert!(ReceiptHandle::decode(&format!("{}00000000", "0".repeat(32))).is_err());
    }

    proptest::proptest! {
        /// Client-supplied: any text decodes or is refused naming the
        /// field, never a panic; every handle round-trips.
        #[test]
        fn any_text_decodes_or_is_refused(s in "\\PC{0,48}|[0-9a-fA-F]{40}") {
            if let Err(e) = ReceiptHandle::decode(&s) {
                proptest::prop_assert!(e.to_string().contains("receipt_handle"));
            }
        }

        #[test]
        fn every_handle_round_trips(q: u64, seq: u64, count in 1u32..) {
            let h = ReceiptHandle { queue_id: QueueId(q), seq: Seq(seq), receive_count: count };
            proptest::prop_assert_eq!(ReceiptHandle::decode(&h.encode()).unwrap(), h);
        }
    }
}
