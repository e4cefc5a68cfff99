//! The receiver of push mode: one `StreamMessages` stream at a time, with
//! a credit of `concurrency + batch_size`, reopened with backoff when it
//! breaks. While it is open, the acker sends acknowledgements on it.
//!
//! When the stream ends (shutdown or a broken connection) it is detached
//! from the acker, which sends its recent acknowledgements again through
//! the RPCs (see the acker). At shutdown, messages the broker pushed in
//! the meantime are released at once rather than left to their timeout.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pb::stream_messages_request::Request as StreamOp;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Message;
use super::acker::Op;
use super::delivery::Delivery;
use super::pipeline::Core;
use super::retry::{RECONNECT_MAX, RECONNECT_MIN, backoff, is_transient};
use crate::{Error, pb};

/// How long a push stream being shut down is still read, for messages the
/// broker is pushing at that moment.
const STREAM_DRAIN_GRACE: Duration = Duration::from_millis(50);
/// Requests (acknowledgements) buffered towards one push stream.
const STREAM_REQUEST_BUFFER: usize = 256;

/// Push mode: one `StreamMessages` stream at a time, reopened with backoff
/// when it breaks.
pub(super) async fn receive_pushed(core: Arc<Core>, deliveries: mpsc::UnboundedSender<Delivery>) {
    let mut failures = 0;
    'connect: loop {
        let (requests, outbound) = mpsc::channel(STREAM_REQUEST_BUFFER);
        let open = pb::StreamMessagesRequest {
            request: Some(StreamOp::Open(pb::StreamOpen {
                queue: core.queue.clone(),
                credit: core.credit,
                visibility_timeout_seconds: Some(core.visibility),
            })),
        };
        requests
            .try_send(open)
            .expect("a new channel has room for the open request");
        let mut rpc = core.client.rpc();
        let outbound = tokio_stream::wrappers::ReceiverStream::new(outbound);
        let opened = tokio::select! {
            biased;
            _ = core.stop.cancelled() => break 'connect,
            opened = rpc.stream_messages(outbound) => opened,
        };
        let ended = match opened {
            Ok(response) => {
                let mut responses = response.into_inner();
                *core.stream.lock().expect("lock") = Some(requests);
                let ended = loop {
                    let next = tokio::select! {
                        biased;
                        _ = core.stop.cancelled() => {
                            drain_stream(&core, &mut responses).await;
                            break 'connect;
                        }
                        next = responses.message() => next,
                    };
                    match next {
                        Ok(Some(response)) => {
                            failures = 0;
                            for error in &response.errors {
                                core.counters.ack_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    queue = %core.queue,
                                    code = %error.code,
                                    message = %error.message,
                                    "the broker refused an acknowledgement"
                                );
                            }
                            if !forward_pushed(&core, response.messages, &deliveries).await {
                                drain_stream(&core, &mut responses).await;
                                break 'connect;
                            }
                        }
                        Ok(None) => {
                            break Error::Unavailable("the broker ended the stream".into());
                        }
                        Err(status) => break Error::from(status),
                    }
                };
                end_stream(&core);
                ended
            }
            Err(status) => Error::from(status),
        };
        if !is_transient(&ended) {
            core.fail(ended);
            break;
        }
        failures += 1;
        let delay = backoff(RECONNECT_MIN, RECONNECT_MAX, failures);
        tracing::warn!(
            queue = %core.queue,
            error = %ended,
            ?delay,
            "push stream failed; reopening"
        );
        if !core.pause(delay).await {
            break;
        }
    }
    core.receiver_done.cancel();
}

/// Leases pushed messages and hands them on, each after a free slot and a
/// rate-limit token; false (having released the rest) if shutdown began.
async fn forward_pushed(
    core: &Arc<Core>,
    messages: Vec<Message>,
    deliveries: &mpsc::UnboundedSender<Delivery>,
) -> bool {
    let mut messages = messages.into_iter();
    while let Some(message) = messages.next() {
        // The credit normally keeps this from waiting; after a reconnect the
        // old stream's messages may still hold slots.
        let got_slot = tokio::select! {
            biased;
            _ = core.stop.cancelled() => false,
            permit = core.slots.acquire() => {
                permit.expect("the slots are never closed").forget();
                true
            }
        };
        if !got_slot {
            core.release_unleased(message);
            messages.for_each(|m| core.release_unleased(m));
            return false;
        }
        let delivery = core.register(message, Instant::now());
        if let Some(limiter) = &core.limiter {
            let ready = tokio::select! {
                biased;
                _ = core.stop.cancelled() => false,
                _ = limiter.until_ready() => true,
            };
            if !ready {
                drop(delivery);
                messages.for_each(|m| core.release_unleased(m));
                return false;
            }
        }
        if deliveries.send(delivery).is_err() {
            messages.for_each(|m| core.release_unleased(m));
            return false;
        }
    }
    true
}

/// Shutdown of a push stream: detaches it from the acker, then releases
/// what the broker already pushed (and what it pushes for a short while,
/// since acknowledgements sent just before freed credit), so that nothing
/// is left to wait for its visibility timeout.
async fn drain_stream(core: &Core, responses: &mut tonic::Streaming<pb::StreamMessagesResponse>) {
    end_stream(core);
    while let Ok(Ok(Some(response))) =
        tokio::time::timeout(STREAM_DRAIN_GRACE, responses.message()).await
    {
        response
            .messages
            .into_iter()
            .for_each(|m| core.release_unleased(m));
    }
}

/// Detaches the push stream from the acker, which then replays its recent
/// acknowledgements through the RPCs.
fn end_stream(core: &Core) {
    if core.stream.lock().expect("lock").take().is_some() {
        let _ = core.ops.send(Op::StreamEnded);
    }
}
