//! The state a consumer's tasks and deliveries share (`Core`: the
//! options, the lease table, the slots, the channel to the acker, the
//! counters), the tasks every consumer has (`Pipeline`), what a consumer
//! reports ([`ConsumerSummary`]), and the last steps of a shutdown
//! (`finish`).

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acker::Op;
use super::lease::LeaseTable;
use super::retry::{backoff, ceil_seconds, copy};
use crate::limits::VISIBILITY_TIMEOUT_SECONDS_MAX;
use crate::{Client, Error, pb};

/// What a consumer did, from [`Consumer::shutdown`] or
/// [`ConsumerStream::shutdown`]. Every message received is counted once in
/// `succeeded`, `failed`, `released` or `abandoned`.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ConsumerSummary {
    /// Messages received.
    pub received: u64,
    /// Handled (handler `Ok`, or [`Delivery::ack`]) and deleted.
    pub succeeded: u64,
    /// Failed (handler `Err` or panic, or [`Delivery::nack`]) and released
    /// after the retry backoff.
    pub failed: u64,
    /// Released without being handled: received but not started at
    /// shutdown, dropped unsettled, or [`Delivery::release`]d.
    pub released: u64,
    /// Still being handled at the shutdown deadline: the handler was
    /// aborted (or the delivery left unsettled) and the message released.
    pub abandoned: u64,
    /// Visibility extensions sent by the heartbeat.
    pub extended: u64,
    /// Deletes and releases the broker refused (e.g. the visibility timeout
    /// had lapsed and another consumer had received the message).
    pub ack_errors: u64,
    /// The error that stopped the consumer before its shutdown, if any.
    pub error: Option<Error>,
}

impl fmt::Display for ConsumerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {}, succeeded {}, failed {}, released {}, abandoned {}, \
             extended {}, acknowledgement errors {}",
            self.received,
            self.succeeded,
            self.failed,
            self.released,
            self.abandoned,
            self.extended,
            self.ack_errors
        )?;
        if let Some(error) = &self.error {
            write!(f, "; stopped by: {error}")?;
        }
        Ok(())
    }
}

/// The state shared by a consumer's tasks and deliveries.
pub(super) struct Core {
    pub(super) client: Client,
    pub(super) queue: String,
    /// Visibility timeout of received messages, in seconds (at least 1).
    pub(super) visibility: u32,
    pub(super) batch_size: u32,
    pub(super) wait_time_seconds: u32,
    /// Credit of a push stream: the number of slots.
    pub(super) credit: u32,
    pub(super) retry_min: Duration,
    pub(super) retry_max: Duration,
    /// `max_per_second`, if set.
    pub(super) limiter: Option<DefaultDirectRateLimiter>,
    /// Messages received and not settled yet.
    pub(super) leases: Mutex<LeaseTable>,
    /// Notified when the lease table becomes empty.
    pub(super) all_settled: Notify,
    /// One permit per message that may still be held; a lease holds one.
    pub(super) slots: Semaphore,
    /// To the acker.
    pub(super) ops: mpsc::UnboundedSender<Op>,
    /// Push mode: the requests of the open stream, for the acker.
    pub(super) stream: Mutex<Option<mpsc::Sender<pb::StreamMessagesRequest>>>,
    /// Cancelled when shutdown begins: stop receiving and starting handlers.
    pub(super) stop: CancellationToken,
    /// Cancelled when the receiver task ended (shutdown or error).
    pub(super) receiver_done: CancellationToken,
    /// The error that ended the receiver.
    pub(super) error: Mutex<Option<Error>>,
    pub(super) counters: Counters,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) received: AtomicU64,
    pub(super) succeeded: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) released: AtomicU64,
    pub(super) abandoned: AtomicU64,
    pub(super) extended: AtomicU64,
    pub(super) ack_errors: AtomicU64,
}

/// The tasks every consumer has, whatever consumes the deliveries.
pub(super) struct Pipeline {
    pub(super) core: Arc<Core>,
    pub(super) receiver: JoinHandle<()>,
    pub(super) heartbeat: JoinHandle<()>,
    pub(super) heartbeat_stop: CancellationToken,
    pub(super) acker: JoinHandle<()>,
}

impl Core {
    /// The release delay after a failure, in seconds.
    pub(super) fn retry_seconds(&self, receive_count: u32) -> u32 {
        let delay = backoff(self.retry_min, self.retry_max, receive_count);
        ceil_seconds(delay).min(u64::from(VISIBILITY_TIMEOUT_SECONDS_MAX)) as u32
    }

    /// Records the error that ends the receiver.
    pub(super) fn fail(&self, error: Error) {
        tracing::error!(queue = %self.queue, %error, "consumer stopped receiving");
        *self.error.lock().expect("lock") = Some(error);
    }

    pub(super) fn summary(&self, with_error: bool) -> ConsumerSummary {
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConsumerSummary {
            received: load(&c.received),
            succeeded: load(&c.succeeded),
            failed: load(&c.failed),
            released: load(&c.released),
            abandoned: load(&c.abandoned),
            extended: load(&c.extended),
            ack_errors: load(&c.ack_errors),
            error: if with_error {
                self.error.lock().expect("lock").as_ref().map(copy)
            } else {
                None
            },
        }
    }

    /// Waits for one free slot, then takes up to `want` without waiting.
    /// `None` if shutdown began.
    pub(super) async fn acquire_slots(&self, want: u32) -> Option<u32> {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => return None,
            permit = self.slots.acquire() => permit.expect("the slots are never closed").forget(),
        }
        let mut taken = 1;
        while taken < want {
            match self.slots.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
            taken += 1;
        }
        Some(taken)
    }

    /// Sleeps `delay`; false if shutdown began meanwhile.
    pub(super) async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// Shutdown's last steps, once nothing is received any more and the
/// workers (if any) ended: wait for yielded deliveries to be settled until
/// `deadline`, release what is still held, flush the acker, stop the
/// heartbeat.
pub(super) async fn finish(
    core: Arc<Core>,
    heartbeat: JoinHandle<()>,
    heartbeat_stop: CancellationToken,
    acker: JoinHandle<()>,
    deadline: Instant,
) -> ConsumerSummary {
    core.settled_by(deadline).await;
    core.abandon_all();
    let (done, flushed) = oneshot::channel();
    if core.ops.send(Op::Close(done)).is_ok() {
        // The acker retries a few times at most; do not hang on a dead broker.
        let grace = deadline.max(Instant::now() + Duration::from_secs(10));
        let _ = tokio::time::timeout_at(grace, flushed).await;
    }
    acker.abort();
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    core.summary(true)
}
