//! [`Delivery`]: one received message and the right to settle it, once:
//! ack (delete), nack (release after the retry backoff) or release (after
//! a given delay). Dropping it unsettled releases the message at once.
//!
//! Settling goes through the lease table (`Core::settle`): a delivery
//! whose entry is gone (released at the shutdown deadline) settles nothing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::Message;
use super::lease::{Outcome, Settlement};
use super::pipeline::Core;
use super::retry::ceil_seconds;
use crate::limits::VISIBILITY_TIMEOUT_SECONDS_MAX;

/// One received message and the right to settle it: [`Delivery::ack`],
/// [`Delivery::nack`] or [`Delivery::release`]. Dereferences to the
/// [`Message`].
///
/// Until it is settled, the consumer's heartbeat keeps the message
/// invisible to other consumers. Dropping it unsettled releases the message
/// at once (visibility 0), so nothing waits for a timeout.
pub struct Delivery {
    pub(super) core: Arc<Core>,
    /// The message's entry in the lease table.
    pub(super) key: u64,
    /// Kept apart from `message`, which a worker hands to the handler.
    pub(super) message_id: String,
    pub(super) receive_count: u32,
    pub(super) message: Message,
    /// Set by the first settlement, so that `Drop` does nothing more.
    pub(super) settled: bool,
}

impl Delivery {
    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Deletes the message (batched with other deletes).
    ///
    /// ```no_run
    /// # fn demo(delivery: broker_client::Delivery) {
    /// println!("{}", String::from_utf8_lossy(&delivery.body));
    /// delivery.ack();
    /// # }
    /// ```
    pub fn ack(mut self) {
        self.settle(Settlement::Delete, Outcome::Succeeded);
    }

    /// Releases the message for redelivery after the retry backoff for its
    /// receive count (see [`ConsumerBuilder::retry_backoff`]).
    ///
    /// ```no_run
    /// # fn demo(delivery: broker_client::Delivery) {
    /// if delivery.body.is_empty() {
    ///     delivery.nack();
    /// }
    /// # }
    /// ```
    pub fn nack(mut self) {
        let seconds = self.core.retry_seconds(self.receive_count);
        self.settle(Settlement::Release(seconds), Outcome::Failed);
    }

    /// Releases the message for redelivery after `delay` (rounded up to
    /// whole seconds; zero: at once), without counting it as failed.
    ///
    /// ```no_run
    /// # fn demo(delivery: broker_client::Delivery) {
    /// use std::time::Duration;
    ///
    /// delivery.release(Duration::from_secs(10));
    /// # }
    /// ```
    pub fn release(mut self, delay: Duration) {
        let seconds = ceil_seconds(delay).min(u64::from(VISIBILITY_TIMEOUT_SECONDS_MAX)) as u32;
        self.settle(Settlement::Release(seconds), Outcome::Released);
    }

    pub(super) fn settle(&mut self, settlement: Settlement, outcome: Outcome) {
        if !self.settled {
            self.settled = true;
            self.core.settle(self.key, settlement, outcome);
        }
    }
}

impl std::ops::Deref for Delivery {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.settle(Settlement::Release(0), Outcome::Released);
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message_id", &self.message_id)
            .field("receive_count", &self.receive_count)
            .finish_non_exhaustive()
    }
}
