//! The publishing stream: `QueueService.SendStream`.
//!
//! One task per stream reads requests in order and hands each batch of
//! messages to the engine's `send_written` (or `publish_written`), which
//! decides and writes them at once; their acknowledgement (the fsync, or
//! the cluster's commit) is awaited beside the reading, in a queue of
//! [`Written`] changes that become durable in the order they were written.
//! So a stream keeps up to `window` messages in flight, each answered once
//! it is durable, and answers come in the order the messages were sent.
//!
//! Invariants:
//! - A message is answered with its id only after `Engine::acknowledged`
//!   returned for the write that holds it; an error answer means nothing
//!   of that message was written.
//! - No request is read while `window` or more messages are unanswered:
//!   the backpressure is HTTP/2's, and the task's memory is bounded by the
//!   window (plus one request).
//! - Requests that are already buffered when one is read are written
//!   together, up to [`COALESCE_MAX`] messages: one engine write (one lock,
//!   one RocksDB batch) for many small frames. A whole-write refusal (the
//!   queue is full, or deleted) then answers each of their messages.
//! - When the client closes its side, or the broker shuts down, the task
//!   stops reading, answers every message written, and ends the stream. When
//!   the client goes away, the task ends: what it wrote may be durable but
//!   is not acknowledged, so the client sends it again (at-least-once).

use std::sync::Arc;

use broker_proto::limits::{BATCH_ENTRIES_MAX, SEND_STREAM_WINDOW_DEFAULT, SEND_STREAM_WINDOW_MAX};
use broker_proto::pb;
use futures::FutureExt;
use futures::stream::{FuturesOrdered, StreamExt};
use pb::send_stream_open::Target as PbTarget;
use pb::send_stream_request::Request as Op;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::stream::ProtocolError;
use super::{ToStatus, code_name, status};
use crate::engine::error::{Error, Result};
use crate::engine::{Engine, NewMessage, NewPublication, Written, validate};

/// Most messages written in one engine call when requests are buffered.
pub const COALESCE_MAX: usize = 1_000;

/// Where a stream's messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Queue(String),
    Topic(String),
}

impl Target {
    /// The queue's or topic's name.
    pub fn name(&self) -> &str {
        match self {
            Target::Queue(n) | Target::Topic(n) => n,
        }
    }
}

/// A checked `open`: the target and the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub target: Target,
    pub window: u32,
}

/// Checks the opening request.
pub fn open(first: Option<pb::SendStreamRequest>) -> std::result::Result<Open, Status> {
    let Some(pb::SendStreamRequest {
        request: Some(Op::Open(open)),
    }) = first
    else {
        return Err(status(ProtocolError::SendNotOpened));
    };
    let target = match open.target {
        Some(PbTarget::Queue(q)) => {
            validate::queue_name("open.queue", &q).map_err(status)?;
            Target::Queue(q)
        }
        Some(PbTarget::Topic(t)) => {
            validate::queue_name("open.topic", &t).map_err(status)?;
            Target::Topic(t)
        }
        None => return Err(status(ProtocolError::NoTarget)),
    };
    let window = match open.window {
        0 => SEND_STREAM_WINDOW_DEFAULT,
        w if w > SEND_STREAM_WINDOW_MAX => {
            return Err(status(Error::out_of_range(
                "open.window",
                1,
                SEND_STREAM_WINDOW_MAX,
                w,
            )));
        }
        w => w,
    };
    Ok(Open { target, window })
}

type Reply = std::result::Result<pb::SendStreamResponse, Status>;

/// Messages written together: their seqs and each one's result so far.
struct Batch {
    /// `(seq, Ok(message id) | Err(answer))` per message, in order.
    answers: Vec<(u64, std::result::Result<String, pb::SendStreamError>)>,
}

/// Runs one stream until the client goes away or closes its side, or the
/// broker shuts down.
pub async fn run(
    engine: Arc<Engine>,
    open: Open,
    mut inbound: Streaming<pb::SendStreamRequest>,
    tx: mpsc::Sender<Reply>,
) {
    let _open = engine.stream_opened();
    let window = open.window as usize;
    let mut unanswered = 0usize;
    let mut in_flight = FuturesOrdered::new();
    let mut reading = true;
    let mut ending: Option<Status> = None;
    loop {
        if !reading && in_flight.is_empty() {
            if let Some(e) = ending {
                let _ = tx.send(Err(e)).await;
            }
            return;
        }
        tokio::select! {
            biased;
            _ = tx.closed() => return,
            Some((count, answers)) = in_flight.next(), if !in_flight.is_empty() => {
                unanswered -= count;
                if tx.send(Ok(answers)).await.is_err() {
                    return;
                }
            }
            _ = engine.shutting_down(), if reading => reading = false,
            request = inbound.message(), if reading && unanswered < window => {
                let mut requests = match request {
                    Ok(Some(r)) => vec![r],
                    // Closed by the client, or gone: answer what was
                    // written (a gone client's answers are dropped).
                    Ok(None) | Err(_) => {
                        reading = false;
                        continue;
                    }
                };
                // Whatever is buffered already joins this write.
                let mut count = messages_in(&requests[0]);
                while count < COALESCE_MAX && unanswered + count < window {
                    match inbound.message().now_or_never() {
                        Some(Ok(Some(r))) => {
                            count += messages_in(&r);
                            requests.push(r);
                        }
                        Some(Ok(None) | Err(_)) => {
                            reading = false;
                            break;
                        }
                        None => break,
                    }
                }
                let (batch, written, misused) = write(&engine, &open.target, requests).await;
                if misused.is_some() {
                    reading = false;
                    ending = misused;
                }
                let count = batch.answers.len();
                unanswered += count;
                let engine = engine.clone();
                in_flight.push_back(async move {
                    let acknowledged = match written {
                        Some(w) => engine.acknowledged(w).await,
                        None => Ok(()),
                    };
                    (count, answer(batch, acknowledged))
                });
            }
        }
    }
}

/// How many messages a request carries (a malformed one still gets one
/// answer).
fn messages_in(request: &pb::SendStreamRequest) -> usize {
    match &request.request {
        Some(Op::Messages(m)) => m.messages.len().max(1),
        _ => 0,
    }
}

/// Writes the messages of `requests` in one engine call. A request that
/// carries no messages (a later `open`) is a protocol error: the requests
/// before it are written, the ones after it dropped, and the error returned
/// ends the stream once they are answered.
async fn write(
    engine: &Engine,
    target: &Target,
    requests: Vec<pb::SendStreamRequest>,
) -> (Batch, Option<Written>, Option<Status>) {
    let mut answers = Vec::new();
    let mut valid: Vec<(usize, pb::SendStreamEntry)> = Vec::new();
    let mut misused = None;
    for request in requests {
        let frame = match request.request {
            Some(Op::Messages(frame)) => frame,
            Some(Op::Open(_)) | None => {
                misused = Some(status(ProtocolError::SendOpenedAgain));
                break;
            }
        };
        let n = frame.messages.len();
        if n == 0 || n > BATCH_ENTRIES_MAX {
            let e = Error::out_of_range("messages", 1, BATCH_ENTRIES_MAX as u32, n as u32);
            for i in 0..n.max(1) {
                answers.push((frame.seq.wrapping_add(i as u64), Err(stream_error(&e))));
            }
            continue;
        }
        for (i, m) in frame.messages.into_iter().enumerate() {
            let seq = frame.seq.wrapping_add(i as u64);
            if matches!(target, Target::Topic(_)) && m.delay_seconds.is_some() {
                let e = Error::Invalid {
                    field: "messages.delay_seconds",
                    reason: "is not supported when publishing to a topic; set delay_seconds on the subscribed queues".into(),
                };
                answers.push((seq, Err(stream_error(&e))));
                continue;
            }
            valid.push((answers.len(), m));
            answers.push((seq, Ok(String::new())));
        }
    }
    if valid.is_empty() {
        return (Batch { answers }, None, misused);
    }
    let (slots, messages): (Vec<usize>, Vec<pb::SendStreamEntry>) = valid.into_iter().unzip();
    let written = match target {
        Target::Queue(queue) => {
            let messages = messages
                .into_iter()
                .map(|m| NewMessage {
                    body: m.body,
                    attributes: m.attributes,
                    delay_seconds: m.delay_seconds,
                })
                .collect();
            engine.send_written(queue, messages).await
        }
        Target::Topic(topic) => {
            let messages = messages
                .into_iter()
                .map(|m| NewPublication {
                    body: m.body,
                    attributes: m.attributes,
                })
                .collect();
            engine
                .publish_written(topic, messages)
                .await
                .map(|(results, w)| {
                    let ids = results.into_iter().map(|r| r.map(|p| p.message_id));
                    (ids.collect(), w)
                })
        }
    };
    match written {
        Ok((results, w)) => {
            for (slot, result) in slots.into_iter().zip(results) {
                answers[slot].1 = result.map_err(|e| stream_error(&e));
            }
            (Batch { answers }, Some(w), misused)
        }
        // The whole write was refused (the target is gone, full, or the
        // disk is low): each of its messages says so; the stream goes on.
        Err(e) => {
            let refused = stream_error(&e);
            for slot in slots {
                answers[slot].1 = Err(refused.clone());
            }
            (Batch { answers }, None, misused)
        }
    }
}

/// The answers of a batch once its write is acknowledged (or failed).
fn answer(batch: Batch, acknowledged: Result<()>) -> pb::SendStreamResponse {
    let failed = acknowledged.err().map(|e| stream_error(&e));
    let results = batch
        .answers
        .into_iter()
        .map(|(seq, answer)| {
            let answer = match (answer, &failed) {
                (Ok(_), Some(e)) => Err(e.clone()),
                (answer, _) => answer,
            };
            match answer {
                Ok(message_id) => pb::SendStreamResult {
                    seq,
                    message_id,
                    error: None,
                },
                Err(error) => pb::SendStreamResult {
                    seq,
                    message_id: String::new(),
                    error: Some(error),
                },
            }
        })
        .collect();
    pb::SendStreamResponse { results }
}

fn stream_error(e: &impl ToStatus) -> pb::SendStreamError {
    pb::SendStreamError {
        code: code_name(e).to_string(),
        message: e.to_string(),
    }
}
