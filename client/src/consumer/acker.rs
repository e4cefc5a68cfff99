//! The acker: sends settlements (deletes, releases) and the heartbeat's
//! extensions to the broker. In push mode they go on the open stream;
//! otherwise, or when the stream is gone, in batch RPCs
//! (`ChangeMessageVisibilityBatch`, `DeleteMessageBatch`) of at most 10
//! entries, flushed after a few milliseconds.
//!
//! Invariants:
//! - Order: ops are taken in the order they were queued; a later
//!   visibility change of a message replaces a pending one, a delete drops
//!   pending changes of its message, and changes are sent (and awaited)
//!   before deletes, so a release is never overridden by a late extension.
//! - Acknowledgements sent on a push stream are kept for two seconds; when
//!   the stream ends, the recent ones are sent again through the RPCs,
//!   since the broker may not have read them. A repeat is harmless: it
//!   fails on a deleted message or a stale receipt handle, and such
//!   failures are not counted.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pb::stream_messages_request::Request as StreamOp;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::pipeline::Core;
use super::retry::{RECONNECT_MAX, RECONNECT_MIN, backoff, is_transient};
use crate::limits::BATCH_ENTRIES_MAX;
use crate::{Error, pb};

/// Most entries the acker puts in one batch RPC.
const ACK_BATCH: usize = 10;
const _: () = assert!(ACK_BATCH <= BATCH_ENTRIES_MAX);
/// How long the acker waits for more entries before sending a batch.
const ACK_LINGER: Duration = Duration::from_millis(5);
/// Attempts of one acker batch RPC that fails with a transient error.
const ACK_ATTEMPTS: u32 = 5;
/// How long an acknowledgement sent on a push stream is kept to be sent
/// again through the RPCs if the stream ends.
const STREAM_REPLAY_WINDOW: Duration = Duration::from_secs(2);

/// A request to the acker.
pub(super) enum Op {
    Delete(String),
    /// A visibility change; `extend` for the heartbeat's, which are not
    /// settlements.
    Visibility {
        receipt_handle: String,
        seconds: u32,
        extend: bool,
    },
    /// The push stream ended: send its recent acknowledgements again.
    StreamEnded,
    /// Send everything pending, wait for it, answer, and end.
    Close(oneshot::Sender<()>),
}

/// A pending visibility change in the acker.
struct Change {
    receipt_handle: String,
    seconds: u32,
    /// Not counted when it fails: an extension (the message may have been
    /// deleted meanwhile) or a replay.
    quiet: bool,
}

/// Sends deletes and visibility changes: on the push stream when one is
/// open, else in batch RPCs. See the module's invariants for the order.
pub(super) async fn acker(core: Arc<Core>, mut ops: mpsc::UnboundedReceiver<Op>) {
    let mut deletes: Vec<(String, bool)> = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    let mut linger: Option<Instant> = None;
    let mut in_flight = JoinSet::new();
    // Push mode: acknowledgements sent on the current stream, to replay.
    let mut sent_on_stream: VecDeque<(Instant, Op)> = VecDeque::new();
    loop {
        let op = tokio::select! {
            op = ops.recv() => op,
            _ = sleep_until(linger) => {
                flush(&core, &mut deletes, &mut changes, &mut in_flight).await;
                linger = None;
                continue;
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        };
        let Some(op) = op else { break };
        match op {
            Op::Close(done) => {
                flush(&core, &mut deletes, &mut changes, &mut in_flight).await;
                while in_flight.join_next().await.is_some() {}
                let _ = done.send(());
                return;
            }
            Op::StreamEnded => {
                for (_, op) in sent_on_stream.drain(..) {
                    match op {
                        Op::Delete(handle) => deletes.push((handle, true)),
                        Op::Visibility {
                            receipt_handle,
                            seconds,
                            ..
                        } => changes.push(Change {
                            receipt_handle,
                            seconds,
                            quiet: true,
                        }),
                        _ => {}
                    }
                }
            }
            op => {
                let stream = core.stream.lock().expect("lock").clone();
                if let Some(stream) = stream {
                    let now = Instant::now();
                    while sent_on_stream
                        .front()
                        .is_some_and(|(at, _)| now.duration_since(*at) > STREAM_REPLAY_WINDOW)
                    {
                        sent_on_stream.pop_front();
                    }
                    let (request, terminal) = stream_request(&op);
                    if stream.send(request).await.is_ok() {
                        if terminal {
                            sent_on_stream.push_back((now, op));
                        }
                        continue;
                    }
                }
                match op {
                    Op::Delete(handle) => {
                        changes.retain(|c| c.receipt_handle != handle);
                        deletes.push((handle, false));
                    }
                    Op::Visibility {
                        receipt_handle,
                        seconds,
                        extend,
                    } => {
                        // A later change of the same message wins.
                        changes.retain(|c| c.receipt_handle != receipt_handle);
                        changes.push(Change {
                            receipt_handle,
                            seconds,
                            quiet: extend,
                        });
                    }
                    Op::StreamEnded | Op::Close(_) => unreachable!("handled above"),
                }
            }
        }
        if deletes.len() >= ACK_BATCH || changes.len() >= ACK_BATCH {
            flush(&core, &mut deletes, &mut changes, &mut in_flight).await;
            linger = None;
        } else if linger.is_none() && (!deletes.is_empty() || !changes.is_empty()) {
            linger = Some(Instant::now() + ACK_LINGER);
        }
    }
    flush(&core, &mut deletes, &mut changes, &mut in_flight).await;
    while in_flight.join_next().await.is_some() {}
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The stream request for an acknowledgement, and whether it settles the
/// message.
fn stream_request(op: &Op) -> (pb::StreamMessagesRequest, bool) {
    let (request, terminal) = match op {
        Op::Delete(handle) => (
            StreamOp::Ack(pb::StreamAck {
                receipt_handle: handle.clone(),
            }),
            true,
        ),
        Op::Visibility {
            receipt_handle,
            seconds,
            extend: true,
        } => (
            StreamOp::Extend(pb::StreamExtend {
                receipt_handle: receipt_handle.clone(),
                visibility_timeout_seconds: *seconds,
            }),
            false,
        ),
        Op::Visibility {
            receipt_handle,
            seconds,
            extend: false,
        } => (
            StreamOp::Release(pb::StreamRelease {
                receipt_handle: receipt_handle.clone(),
                delay_seconds: *seconds,
            }),
            true,
        ),
        Op::StreamEnded | Op::Close(_) => unreachable!("not an acknowledgement"),
    };
    (
        pb::StreamMessagesRequest {
            request: Some(request),
        },
        terminal,
    )
}

/// Sends the pending visibility changes (and waits: a later change of the
/// same message must not overtake them), then the deletes (in the
/// background: nothing follows a delete).
async fn flush(
    core: &Arc<Core>,
    deletes: &mut Vec<(String, bool)>,
    changes: &mut Vec<Change>,
    in_flight: &mut JoinSet<()>,
) {
    for chunk in std::mem::take(changes).chunks(ACK_BATCH) {
        let request = pb::ChangeMessageVisibilityBatchRequest {
            queue: core.queue.clone(),
            entries: chunk
                .iter()
                .enumerate()
                .map(|(i, c)| pb::ChangeMessageVisibilityBatchEntry {
                    id: i.to_string(),
                    receipt_handle: c.receipt_handle.clone(),
                    visibility_timeout_seconds: c.seconds,
                })
                .collect(),
        };
        let loud: Vec<bool> = chunk.iter().map(|c| !c.quiet).collect();
        let client = core.client.clone();
        let result = with_retries(|| client.change_message_visibility_batch(request.clone())).await;
        count_failures(core, result.map(|r| r.failed), &loud, "change visibility");
    }
    for chunk in std::mem::take(deletes).chunks(ACK_BATCH) {
        let request = pb::DeleteMessageBatchRequest {
            queue: core.queue.clone(),
            entries: chunk
                .iter()
                .enumerate()
                .map(|(i, (handle, _))| pb::DeleteMessageBatchEntry {
                    id: i.to_string(),
                    receipt_handle: handle.clone(),
                })
                .collect(),
        };
        let loud: Vec<bool> = chunk.iter().map(|(_, replay)| !replay).collect();
        let core = core.clone();
        in_flight.spawn(async move {
            let client = core.client.clone();
            let result = with_retries(|| client.delete_message_batch(request.clone())).await;
            count_failures(&core, result.map(|r| r.failed), &loud, "delete");
        });
    }
}

/// Runs a batch RPC, retrying transient errors a few times.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Err(error) if is_transient(&error) && attempt < ACK_ATTEMPTS => {
                tokio::time::sleep(backoff(RECONNECT_MIN, RECONNECT_MAX, attempt)).await;
            }
            result => return result,
        }
    }
}

/// Counts the failed entries of a batch whose `loud` flag is set (by index
/// in the batch, which is the entry id).
fn count_failures(
    core: &Core,
    result: Result<Vec<pb::BatchResultError>, Error>,
    loud: &[bool],
    what: &str,
) {
    match result {
        Ok(failed) => {
            for failure in failed {
                let counted = failure
                    .id
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| loud.get(i).copied())
                    .unwrap_or(true);
                if counted {
                    core.counters.ack_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        queue = %core.queue,
                        code = %failure.code,
                        message = %failure.message,
                        "{what} refused by the broker"
                    );
                }
            }
        }
        Err(error) => {
            let counted = loud.iter().filter(|l| **l).count() as u64;
            core.counters
                .ack_errors
                .fetch_add(counted, Ordering::Relaxed);
            tracing::warn!(
                queue = %core.queue,
                %error,
                entries = loud.len(),
                "{what} batch failed"
            );
        }
    }
}
