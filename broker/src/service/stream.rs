//! Push delivery: `QueueService.StreamMessages`.
//!
//! One task per stream alternates between two things: applying the
//! acknowledgements the client sends, and receiving (long polling) as many
//! messages as the credit allows. The credit counts the stream's messages
//! whose lease still holds, so an acknowledgement made through the ordinary
//! RPCs, or a lapsed visibility timeout, frees credit too. Receiving is the
//! engine's ordinary receive, so leases, receipt handles, dead letters and
//! rate limits are the same as for pull consumers. Acknowledgements that
//! are already buffered when one is read are applied with it, in order,
//! each run of acks as one delete (one write, one sync wait). Receive is cancel-safe
//! (messages are claimed in one synchronous step), so the select below can
//! drop a waiting receive when an acknowledgement arrives.

use std::sync::Arc;
use std::time::Duration;

use broker_proto::limits::{RECEIVE_MESSAGES_MAX, STREAM_CREDIT_MAX, WAIT_TIME_SECONDS_MAX};
use broker_proto::pb;
use futures::FutureExt;
use pb::stream_messages_request::Request as Op;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{ToStatus, code_name, status};
use crate::engine::error::Error;
use crate::engine::{Engine, ReceiveOptions, validate};

/// A stream (StreamMessages or SendStream) used against its protocol
/// (INVALID_ARGUMENT, field `open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The first request is not `open`: fails the call.
    #[error("the first request of StreamMessages must be `open` (queue and credit)")]
    NotOpened,
    /// A later request is `open` (or empty): reported as a stream error,
    /// the stream goes on.
    #[error("a stream is opened once; later requests are ack, release or extend")]
    OpenedAgain,
    /// SendStream's first request is not `open`: fails the call.
    #[error("the first request of SendStream must be `open` (a queue or a topic)")]
    SendNotOpened,
    /// A later SendStream request is `open` (or empty): ends the stream
    /// once the messages before it are answered.
    #[error("a SendStream stream is opened once; later requests carry messages")]
    SendOpenedAgain,
    /// SendStream's `open` names no target.
    #[error("open names neither a queue nor a topic; set open.queue or open.topic")]
    NoTarget,
}

/// How often a stream whose credit is used up rechecks its leases (for
/// acknowledgements made outside the stream, and lapsed timeouts).
const RECHECK: Duration = Duration::from_millis(250);

/// Checks the opening request; returns the queue, credit and visibility.
pub fn open(first: Option<pb::StreamMessagesRequest>) -> Result<pb::StreamOpen, Status> {
    let Some(pb::StreamMessagesRequest {
        request: Some(Op::Open(open)),
    }) = first
    else {
        return Err(status(ProtocolError::NotOpened));
    };
    validate::queue_name("open.queue", &open.queue).map_err(status)?;
    if open.credit == 0 || open.credit > STREAM_CREDIT_MAX {
        return Err(status(Error::out_of_range(
            "open.credit",
            1,
            STREAM_CREDIT_MAX,
            open.credit,
        )));
    }
    Ok(open)
}

/// Runs one stream until the client goes away, the queue is deleted, or
/// the broker shuts down.
pub async fn run(
    engine: Arc<Engine>,
    open: pb::StreamOpen,
    mut inbound: Streaming<pb::StreamMessagesRequest>,
    tx: mpsc::Sender<Result<pb::StreamMessagesResponse, Status>>,
) {
    let _open = engine.stream_opened();
    let queue = open.queue;
    let mut outstanding: Vec<String> = Vec::new();
    loop {
        if engine.is_shutting_down() {
            return;
        }
        let held = engine.leases_held(&queue, &outstanding);
        let mut held = held.into_iter();
        outstanding.retain(|_| held.next().unwrap_or(false));
        let room = open
            .credit
            .saturating_sub(outstanding.len() as u32)
            .min(RECEIVE_MESSAGES_MAX);
        let receive = engine.receive(
            &queue,
            ReceiveOptions {
                max_messages: room.max(1),
                visibility_timeout_seconds: open.visibility_timeout_seconds,
                wait_time_seconds: Some(WAIT_TIME_SECONDS_MAX),
                ..ReceiveOptions::default()
            },
        );
        tokio::select! {
            _ = tx.closed() => return,
            _ = engine.shutting_down() => return,
            request = inbound.message() => match request {
                Ok(Some(request)) => {
                    // Requests already buffered join this one: their acks
                    // are one delete (one write, one sync wait).
                    let mut requests = vec![request];
                    let mut closed = false;
                    while requests.len() < RECEIVE_MESSAGES_MAX as usize {
                        match inbound.message().now_or_never() {
                            Some(Ok(Some(r))) => requests.push(r),
                            Some(Ok(None) | Err(_)) => {
                                closed = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    let errors = acknowledge(&engine, &queue, requests, &mut outstanding).await;
                    if !errors.is_empty()
                        && tx.send(Ok(pb::StreamMessagesResponse { messages: Vec::new(), errors })).await.is_err()
                    {
                        return;
                    }
                    if closed {
                        return;
                    }
                }
                // The client closed its side: every acknowledgement it sent
                // before is applied (they are handled in order), so ending
                // the stream now gives it a clean barrier to shut down on.
                Ok(None) => return,
                Err(_) => return,
            },
            received = receive, if room > 0 => match received {
                Ok(messages) if messages.is_empty() => {}
                Ok(messages) => {
                    outstanding.extend(messages.iter().map(|m| m.receipt_handle.clone()));
                    let response = pb::StreamMessagesResponse {
                        messages: messages.into_iter().map(Into::into).collect(),
                        errors: Vec::new(),
                    };
                    // If the client is gone, its messages stay in flight and
                    // come back when their visibility timeout lapses.
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(status(e))).await;
                    return;
                }
            },
            _ = tokio::time::sleep(RECHECK), if room == 0 => {}
        }
    }
}

/// Applies acknowledgements in order, each run of consecutive acks as one
/// delete; the errors to report.
async fn acknowledge(
    engine: &Engine,
    queue: &str,
    requests: Vec<pb::StreamMessagesRequest>,
    outstanding: &mut Vec<String>,
) -> Vec<pb::StreamError> {
    let mut errors = Vec::new();
    let mut acks: Vec<String> = Vec::new();
    for request in requests {
        let change = match request.request {
            Some(Op::Ack(a)) => {
                acks.push(a.receipt_handle);
                continue;
            }
            Some(Op::Release(r)) => Some((r.receipt_handle, r.delay_seconds, true)),
            Some(Op::Extend(x)) => Some((x.receipt_handle, x.visibility_timeout_seconds, false)),
            Some(Op::Open(_)) | None => None,
        };
        let before = std::mem::take(&mut acks);
        delete(engine, queue, before, outstanding, &mut errors).await;
        let Some((handle, seconds, frees)) = change else {
            errors.push(stream_error(String::new(), &ProtocolError::OpenedAgain));
            continue;
        };
        let result = engine
            .change_visibility(queue, &[(handle.as_str(), seconds)])
            .await
            .and_then(first);
        if frees {
            outstanding.retain(|h| *h != handle);
        }
        if let Err(e) = result {
            errors.push(stream_error(handle, &e));
        }
    }
    delete(engine, queue, acks, outstanding, &mut errors).await;
    errors
}

/// Deletes the acked messages in one engine call, and frees their credit.
async fn delete(
    engine: &Engine,
    queue: &str,
    handles: Vec<String>,
    outstanding: &mut Vec<String>,
    errors: &mut Vec<pb::StreamError>,
) {
    if handles.is_empty() {
        return;
    }
    let refs: Vec<&str> = handles.iter().map(String::as_str).collect();
    let results = engine.delete(queue, &refs).await;
    outstanding.retain(|h| !handles.contains(h));
    match results {
        Ok(results) => {
            for (handle, result) in handles.into_iter().zip(results) {
                if let Err(e) = result {
                    errors.push(stream_error(handle, &e));
                }
            }
        }
        Err(e) => {
            for handle in handles {
                errors.push(stream_error(handle, &e));
            }
        }
    }
}

fn first(mut results: Vec<crate::engine::error::Result<()>>) -> crate::engine::error::Result<()> {
    results.pop().unwrap_or(Ok(()))
}

fn stream_error(receipt_handle: String, e: &impl ToStatus) -> pb::StreamError {
    pb::StreamError {
        receipt_handle,
        code: code_name(e).to_string(),
        message: e.to_string(),
    }
}
