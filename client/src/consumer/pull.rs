//! The receiver of pull mode: long-polls `ReceiveMessages` while there are
//! free slots, asking for at most as many messages as there are, and with
//! `max_per_second` only as many as the token bucket grants. Transient
//! errors are retried with backoff until shutdown; any other error stops
//! it and is reported by the consumer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::delivery::Delivery;
use super::pipeline::Core;
use super::retry::{RECONNECT_MAX, RECONNECT_MIN, backoff, is_transient};
use crate::pb;

/// Pause after an empty short poll (wait time 0), so an idle consumer does
/// not spin.
const EMPTY_POLL_PAUSE: Duration = Duration::from_millis(100);

/// Pull mode: long-poll `ReceiveMessages` while there are free slots.
pub(super) async fn receive_pulled(core: Arc<Core>, deliveries: mpsc::UnboundedSender<Delivery>) {
    let mut failures = 0;
    loop {
        let Some(mut room) = core.acquire_slots(core.batch_size).await else {
            break;
        };
        if let Some(limiter) = &core.limiter {
            tokio::select! {
                biased;
                _ = core.stop.cancelled() => {
                    core.slots.add_permits(room as usize);
                    break;
                }
                _ = limiter.until_ready() => {}
            }
            let mut granted = 1;
            while granted < room && limiter.check().is_ok() {
                granted += 1;
            }
            core.slots.add_permits((room - granted) as usize);
            room = granted;
        }
        let sent_at = Instant::now();
        let request = pb::ReceiveMessagesRequest {
            queue: core.queue.clone(),
            max_messages: room,
            visibility_timeout_seconds: Some(core.visibility),
            wait_time_seconds: Some(core.wait_time_seconds),
        };
        let result = tokio::select! {
            biased;
            _ = core.stop.cancelled() => {
                core.slots.add_permits(room as usize);
                break;
            }
            result = core.client.receive_messages(request) => result,
        };
        match result {
            Ok(response) => {
                failures = 0;
                let got = response.messages.len() as u32;
                core.slots.add_permits(room.saturating_sub(got) as usize);
                for message in response.messages {
                    let delivery = core.register(message, sent_at);
                    if deliveries.send(delivery).is_err() {
                        break;
                    }
                }
                if got == 0 && core.wait_time_seconds == 0 && !core.pause(EMPTY_POLL_PAUSE).await {
                    break;
                }
            }
            Err(error) => {
                core.slots.add_permits(room as usize);
                if !is_transient(&error) {
                    core.fail(error);
                    break;
                }
                failures += 1;
                let delay = backoff(RECONNECT_MIN, RECONNECT_MAX, failures);
                tracing::warn!(queue = %core.queue, %error, ?delay, "receive failed; retrying");
                if !core.pause(delay).await {
                    break;
                }
            }
        }
    }
    core.receiver_done.cancel();
}
