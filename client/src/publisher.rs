//! [`Publisher`]: sends messages to a queue (`SendMessageBatch`) or
//! publishes them to a topic (`PublishBatch`) in automatic batches, with a
//! future per message that resolves to its id once the broker acknowledged
//! it.
//!
//! # Invariants
//!
//! - A message's bytes count against the in-flight budget from
//!   [`Publisher::send`] until its batch is answered; `send` waits while
//!   the budget is spent (backpressure), so memory stays bounded however
//!   fast the caller produces.
//! - A batch leaves when it holds `batch_size` messages or `linger` after
//!   its first message, whichever comes first. Several batches may be in
//!   flight at once, so messages sent concurrently may be stored in any
//!   order (queues are not FIFO).
//! - Every [`AckFuture`] resolves exactly once: with the message id, with
//!   the error of its batch entry, or with the error of the whole batch.
//! - A batch that fails with a transient error (the broker is unreachable
//!   or restarting) is sent again with backoff until `retry_timeout`. This
//!   is at-least-once: if the broker stored a batch but its answer was
//!   lost, the retry stores it again.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::consumer::{backoff, copy, is_transient};
use crate::limits::BATCH_ENTRIES_MAX;
use crate::{Client, Error, pb};

/// Bytes counted for a message beyond its body and attributes (ids,
/// framing), so that empty messages still use some budget.
const MESSAGE_OVERHEAD: usize = 64;
/// Backoff between attempts of a batch after a transient error.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A message to send or publish: a body, attributes, and for queues an
/// optional delay. Made from a body with `From` (`&str`, `String`,
/// `Vec<u8>`, `Bytes`) or [`OutgoingMessage::new`].
///
/// ```
/// use std::time::Duration;
/// use broker_client::OutgoingMessage;
///
/// let message = OutgoingMessage::new("paid")
///     .attribute("country", "IN")
///     .delay(Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The body, up to the queue's `max_message_bytes`.
    pub body: Bytes,
    /// Message attributes (what topic filter policies match on).
    pub attributes: HashMap<String, String>,
    /// Queues only: seconds before the message is visible (0..=900);
    /// `None`: the queue's delay.
    pub delay_seconds: Option<u32>,
}

impl OutgoingMessage {
    /// A message with this body, no attributes and the queue's delay.
    pub fn new(body: impl Into<Bytes>) -> OutgoingMessage {
        OutgoingMessage {
            body: body.into(),
            ..Default::default()
        }
    }

    /// Adds (or replaces) an attribute.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Queues only: delays the message (rounded down to whole seconds).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay_seconds = Some(delay.as_secs().min(u64::from(u32::MAX)) as u32);
        self
    }

    /// The bytes this message counts against the in-flight budget.
    fn size(&self) -> usize {
        let attributes: usize = self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.body.len() + attributes + MESSAGE_OVERHEAD
    }
}

impl From<Bytes> for OutgoingMessage {
    fn from(body: Bytes) -> Self {
        OutgoingMessage::new(body)
    }
}

impl From<Vec<u8>> for OutgoingMessage {
    fn from(body: Vec<u8>) -> Self {
        OutgoingMessage::new(body)
    }
}

impl From<String> for OutgoingMessage {
    fn from(body: String) -> Self {
        OutgoingMessage::new(body)
    }
}

impl From<&'static str> for OutgoingMessage {
    fn from(body: &'static str) -> Self {
        OutgoingMessage::new(body)
    }
}

impl From<&'static [u8]> for OutgoingMessage {
    fn from(body: &'static [u8]) -> Self {
        OutgoingMessage::new(body)
    }
}

/// Where a publisher sends.
#[derive(Clone, Debug)]
enum Target {
    Queue(String),
    Topic(String),
}

/// Builds a [`Publisher`]: one setter per option, each with a default.
///
/// ```no_run
/// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
/// use std::time::Duration;
/// use broker_client::Publisher;
///
/// let publisher = Publisher::queue(&client, "orders")
///     .linger(Duration::from_millis(10))
///     .max_in_flight_bytes(8 << 20)
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PublisherBuilder {
    client: Client,
    target: Target,
    batch_size: usize,
    linger: Duration,
    max_in_flight_bytes: usize,
    retry_timeout: Duration,
}

impl PublisherBuilder {
    /// Most messages in one batch (1..=100, the default).
    pub fn batch_size(mut self, messages: usize) -> Self {
        self.batch_size = messages;
        self
    }

    /// How long a batch waits for more messages after its first one
    /// (default 5 ms). Zero sends what is there at once.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Most bytes of messages sent and not yet acknowledged (default
    /// 32 MiB). [`Publisher::send`] waits while they are in flight. A
    /// message larger than the budget is sent alone.
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes;
        self
    }

    /// How long a batch is retried after transient errors (the broker is
    /// unreachable or restarting) before its messages fail (default 30 s;
    /// zero: no retry).
    pub fn retry_timeout(mut self, timeout: Duration) -> Self {
        self.retry_timeout = timeout;
        self
    }

    /// Checks the options and starts the publisher's background task (so it
    /// must be called within a tokio runtime).
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// let publisher = broker_client::Publisher::topic(&client, "payments").build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build(self) -> Result<Publisher, Error> {
        if !(1..=BATCH_ENTRIES_MAX).contains(&self.batch_size) {
            return Err(Error::InvalidArgument(format!(
                "batch_size must be in 1..={BATCH_ENTRIES_MAX}; got {}",
                self.batch_size
            )));
        }
        let max_bytes = u32::try_from(self.max_in_flight_bytes).unwrap_or(u32::MAX);
        if max_bytes == 0 {
            return Err(Error::InvalidArgument(
                "max_in_flight_bytes must be at least 1; got 0".into(),
            ));
        }
        let budget = Arc::new(Semaphore::new(max_bytes as usize));
        let (commands, receiver) = mpsc::unbounded_channel();
        let config = Arc::new(Config {
            client: self.client,
            target: self.target,
            batch_size: self.batch_size,
            linger: self.linger,
            retry_timeout: self.retry_timeout,
        });
        tokio::spawn(batcher(config.clone(), receiver));
        Ok(Publisher {
            shared: Arc::new(Shared {
                commands,
                budget,
                max_bytes,
                config,
            }),
        })
    }
}

/// Sends messages to a queue or a topic in automatic batches; see the
/// module documentation of the crate.
///
/// [`Publisher::send`] hands a message over (waiting while the in-flight
/// budget is spent) and returns an [`AckFuture`] that resolves to the
/// message id once the broker acknowledged it. Cheap to clone: clones share
/// the batches. When the last clone is dropped, what was handed over is
/// still sent; call [`Publisher::flush`] to wait for it.
///
/// ```no_run
/// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
/// use broker_client::{OutgoingMessage, Publisher};
///
/// let publisher = Publisher::queue(&client, "orders").build()?;
/// let mut acks = Vec::new();
/// for i in 0..1000 {
///     acks.push(publisher.send(format!("order {i}")).await?);
/// }
/// for ack in acks {
///     let message_id = ack.await?;
/// }
/// let ack = publisher.send(OutgoingMessage::new("urgent").attribute("priority", "high")).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

/// What the clones of a publisher share; dropping it ends the batcher
/// once it sent everything.
struct Shared {
    /// To the batcher.
    commands: mpsc::UnboundedSender<Command>,
    /// One permit per byte that may be in flight.
    budget: Arc<Semaphore>,
    /// The budget's size: a message asks for at most this many permits.
    max_bytes: u32,
    config: Arc<Config>,
}

/// The batcher's settings.
struct Config {
    client: Client,
    target: Target,
    batch_size: usize,
    linger: Duration,
    retry_timeout: Duration,
}

enum Command {
    Send(Pending),
    /// Answer once every message handed over before is answered.
    Flush(oneshot::Sender<()>),
}

/// A message waiting for its batch's answer.
struct Pending {
    message: OutgoingMessage,
    /// Its share of the budget, given back when dropped.
    bytes: OwnedSemaphorePermit,
    reply: oneshot::Sender<Result<String, Error>>,
}

impl Pending {
    /// Gives the budget back, then answers: whoever awaits the answer sees
    /// the bytes released already (`in_flight_bytes`).
    fn answer(self, result: Result<String, Error>) {
        let Pending { bytes, reply, .. } = self;
        drop(bytes);
        let _ = reply.send(result);
    }
}

impl Publisher {
    /// Starts building a publisher that sends to `queue`
    /// (`SendMessageBatch`).
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// let publisher = broker_client::Publisher::queue(&client, "orders").build()?;
    /// let id = publisher.send("hello").await?.await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn queue(client: &Client, queue: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder::new(client, Target::Queue(queue.into()))
    }

    /// Starts building a publisher that publishes to `topic`
    /// (`PublishBatch`). Messages may not have a delay.
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// use broker_client::{OutgoingMessage, Publisher};
    ///
    /// let publisher = Publisher::topic(&client, "payments").build()?;
    /// let paid = OutgoingMessage::new("paid").attribute("country", "IN");
    /// let id = publisher.send(paid).await?.await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn topic(client: &Client, topic: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder::new(client, Target::Topic(topic.into()))
    }

    /// Hands a message to the batcher, first waiting while the in-flight
    /// budget is spent; returns the future of its acknowledgement.
    ///
    /// Fails at once with [`Error::InvalidArgument`] for a delay on a topic
    /// message; every other error (a too-large body, a missing queue) comes
    /// through the [`AckFuture`].
    ///
    /// ```no_run
    /// # async fn demo(publisher: broker_client::Publisher) -> Result<(), broker_client::Error> {
    /// let ack = publisher.send("hello").await?;
    /// // ... send more; the batch leaves when full or after the linger time.
    /// let message_id = ack.await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, message: impl Into<OutgoingMessage>) -> Result<AckFuture, Error> {
        let message = message.into();
        if let (Target::Topic(topic), Some(_)) = (&self.shared.config.target, message.delay_seconds)
        {
            return Err(Error::InvalidArgument(format!(
                "delay_seconds is not supported when publishing to a topic ('{topic}'); \
                 set the delay on the subscribed queues"
            )));
        }
        let bytes = message.size().min(self.shared.max_bytes as usize) as u32;
        let bytes = self
            .shared
            .budget
            .clone()
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| closed())?;
        let (reply, ack) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Send(Pending {
                message,
                bytes,
                reply,
            }))
            .map_err(|_| closed())?;
        Ok(AckFuture { ack })
    }

    /// Sends the current batch now and waits until every message handed
    /// over before is acknowledged (or failed).
    ///
    /// ```no_run
    /// # async fn demo(publisher: broker_client::Publisher) -> Result<(), broker_client::Error> {
    /// publisher.send("last one").await?;
    /// publisher.flush().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.shared.commands.send(Command::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Bytes of messages in flight now (handed over, not acknowledged).
    pub fn in_flight_bytes(&self) -> usize {
        self.shared.max_bytes as usize - self.shared.budget.available_permits()
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("target", &self.shared.config.target)
            .field("in_flight_bytes", &self.in_flight_bytes())
            .finish_non_exhaustive()
    }
}

impl PublisherBuilder {
    fn new(client: &Client, target: Target) -> PublisherBuilder {
        PublisherBuilder {
            client: client.clone(),
            target,
            batch_size: BATCH_ENTRIES_MAX,
            linger: Duration::from_millis(5),
            max_in_flight_bytes: 32 << 20,
            retry_timeout: Duration::from_secs(30),
        }
    }
}

/// Resolves to the message id once the broker acknowledged the message,
/// or to the error of its batch entry (or of its whole batch).
///
/// Dropping it does not cancel the message.
#[must_use = "the message is sent anyway; await this to learn whether it was stored"]
#[derive(Debug)]
pub struct AckFuture {
    ack: oneshot::Receiver<Result<String, Error>>,
}

impl Future for AckFuture {
    type Output = Result<String, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.ack.poll_unpin(cx).map(|answer| match answer {
            Ok(result) => result,
            // The batcher never drops a reply unanswered unless the runtime
            // is shutting down.
            Err(_) => Err(closed()),
        })
    }
}

fn closed() -> Error {
    Error::Other {
        code: tonic::Code::Cancelled,
        message: "the publisher stopped before the broker answered".into(),
    }
}

/// Gathers messages into batches and sends them, several at once.
async fn batcher(config: Arc<Config>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut in_flight = JoinSet::new();
    let mut open = true;
    while open {
        let first = tokio::select! {
            command = commands.recv() => command,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        };
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        match first {
            None => break,
            Some(Command::Flush(done)) => flushes.push(done),
            Some(Command::Send(pending)) => batch.push(pending),
        }
        if !batch.is_empty() {
            let linger = tokio::time::sleep(config.linger);
            tokio::pin!(linger);
            while batch.len() < config.batch_size {
                tokio::select! {
                    biased;
                    command = commands.recv() => match command {
                        Some(Command::Send(pending)) => batch.push(pending),
                        Some(Command::Flush(done)) => {
                            flushes.push(done);
                            break;
                        }
                        None => {
                            open = false;
                            break;
                        }
                    },
                    _ = &mut linger => break,
                }
            }
            in_flight.spawn(send_batch(config.clone(), batch));
        }
        if !flushes.is_empty() {
            while in_flight.join_next().await.is_some() {}
            for done in flushes {
                let _ = done.send(());
            }
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// What a batch RPC answered: (entry id, message id) per success, and the
/// failed entries.
type BatchAnswer = (Vec<(String, String)>, Vec<pb::BatchResultError>);

/// Sends one batch, retrying transient errors, and answers every message.
async fn send_batch(config: Arc<Config>, batch: Vec<Pending>) {
    let deadline = Instant::now() + config.retry_timeout;
    let mut attempt = 0;
    let answer = loop {
        attempt += 1;
        let result = call(&config, &batch).await;
        match result {
            Err(error) if is_transient(&error) => {
                let delay = backoff(RETRY_MIN, RETRY_MAX, attempt);
                if Instant::now() + delay > deadline {
                    break Err(error);
                }
                tracing::warn!(target = ?config.target, %error, ?delay, "batch failed; retrying");
                tokio::time::sleep(delay).await;
            }
            result => break result,
        }
    };
    match answer {
        Ok((successful, failed)) => {
            let mut waiting: Vec<Option<Pending>> = batch.into_iter().map(Some).collect();
            let mut take = |id: &str| {
                id.parse::<usize>()
                    .ok()
                    .and_then(|i| waiting.get_mut(i))
                    .and_then(Option::take)
            };
            for (id, message_id) in successful {
                if let Some(pending) = take(&id) {
                    pending.answer(Ok(message_id));
                }
            }
            for failure in failed {
                if let Some(pending) = take(&failure.id) {
                    let status = tonic::Status::new(code_from_name(&failure.code), failure.message);
                    pending.answer(Err(Error::from(status)));
                }
            }
            for pending in waiting.into_iter().flatten() {
                pending.answer(Err(Error::Other {
                    code: tonic::Code::Internal,
                    message: "the broker's answer to the batch did not mention this message".into(),
                }));
            }
        }
        Err(error) => {
            for pending in batch {
                pending.answer(Err(copy(&error)));
            }
        }
    }
}

/// One attempt of a batch RPC; entry ids are the indexes in `batch`.
async fn call(config: &Config, batch: &[Pending]) -> Result<BatchAnswer, Error> {
    match &config.target {
        Target::Queue(queue) => {
            let request = pb::SendMessageBatchRequest {
                queue: queue.clone(),
                entries: batch
                    .iter()
                    .enumerate()
                    .map(|(i, p)| pb::SendMessageBatchEntry {
                        id: i.to_string(),
                        body: p.message.body.clone(),
                        attributes: p.message.attributes.clone(),
                        delay_seconds: p.message.delay_seconds,
                    })
                    .collect(),
            };
            let response = config.client.send_message_batch(request).await?;
            let successful = response
                .successful
                .into_iter()
                .map(|e| (e.id, e.message_id))
                .collect();
            Ok((successful, response.failed))
        }
        Target::Topic(topic) => {
            let request = pb::PublishBatchRequest {
                topic: topic.clone(),
                entries: batch
                    .iter()
                    .enumerate()
                    .map(|(i, p)| pb::PublishBatchEntry {
                        id: i.to_string(),
                        body: p.message.body.clone(),
                        attributes: p.message.attributes.clone(),
                    })
                    .collect(),
            };
            let response = config.client.publish_batch(request).await?;
            let successful = response
                .successful
                .into_iter()
                .map(|e| (e.id, e.message_id))
                .collect();
            Ok((successful, response.failed))
        }
    }
}

/// The gRPC code named as in a `BatchResultError` (e.g. "INVALID_ARGUMENT").
fn code_from_name(name: &str) -> tonic::Code {
    use tonic::Code;
    match name {
        "OK" => Code::Ok,
        "CANCELLED" => Code::Cancelled,
        "INVALID_ARGUMENT" => Code::InvalidArgument,
        "DEADLINE_EXCEEDED" => Code::DeadlineExceeded,
        "NOT_FOUND" => Code::NotFound,
        "ALREADY_EXISTS" => Code::AlreadyExists,
        "PERMISSION_DENIED" => Code::PermissionDenied,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        "ABORTED" => Code::Aborted,
        "OUT_OF_RANGE" => Code::OutOfRange,
        "UNIMPLEMENTED" => Code::Unimplemented,
        "INTERNAL" => Code::Internal,
        "UNAVAILABLE" => Code::Unavailable,
        "DATA_LOSS" => Code::DataLoss,
        "UNAUTHENTICATED" => Code::Unauthenticated,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_codes_map_to_error_variants() {
        let error = Error::from(tonic::Status::new(
            code_from_name("INVALID_ARGUMENT"),
            "body too large",
        ));
        assert!(matches!(error, Error::InvalidArgument(_)));
        assert_eq!(code_from_name("NOT_FOUND"), tonic::Code::NotFound);
        assert_eq!(
            code_from_name("RESOURCE_EXHAUSTED"),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(code_from_name("something new"), tonic::Code::Unknown);
    }

    #[test]
    fn messages_count_body_and_attributes() {
        let message = OutgoingMessage::new("abcd").attribute("k", "vv");
        assert_eq!(message.size(), 4 + 3 + MESSAGE_OVERHEAD);
        assert_eq!(OutgoingMessage::from("x").delay_seconds, None);
        assert_eq!(
            OutgoingMessage::new("x")
                .delay(Duration::from_millis(2500))
                .delay_seconds,
            Some(2)
        );
    }
}
