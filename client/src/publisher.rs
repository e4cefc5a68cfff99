//! [`Publisher`]: sends messages to a queue or publishes them to a topic on
//! one publishing stream (`SendStream`), in frames of up to `batch_size`
//! messages, with a future per message that resolves to its id once the
//! broker acknowledged it.
//!
//! # Invariants
//!
//! - A message's bytes count against the in-flight budget from
//!   [`Publisher::send`] until it is answered; `send` waits while the
//!   budget is spent (backpressure), so memory stays bounded however fast
//!   the caller produces.
//! - A frame leaves with what is queued when the publisher takes its first
//!   message, up to `batch_size` (with a `linger`, it waits that long for
//!   more). At most the stream's window of messages (1000) are unanswered
//!   at once; the broker reads up to its window, so the two never wait on
//!   each other. Messages are stored in the order they were handed over
//!   (but queues are not FIFO, and a retry may store one again later).
//! - Every [`AckFuture`] resolves exactly once: with the message id, or
//!   with the message's error (the broker refused it, or the stream failed
//!   for good).
//! - When the stream breaks with a transient error (the broker is
//!   unreachable or restarting, or a cluster has no leader), it is reopened
//!   with backoff and every unanswered message is sent again, until
//!   `retry_timeout` after the first failure. This is at-least-once: a
//!   message the broker stored but whose answer was lost is stored again.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
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
    /// (default zero: a frame takes what is queued when it leaves, and
    /// the broker writes frames that arrive together in one write anyway).
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
        tokio::spawn(publish(config.clone(), receiver));
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

/// What the clones of a publisher share; dropping it ends the publishing task
/// once it sent everything.
struct Shared {
    /// To the publishing task.
    commands: mpsc::UnboundedSender<Command>,
    /// One permit per byte that may be in flight.
    budget: Arc<Semaphore>,
    /// The budget's size: a message asks for at most this many permits.
    max_bytes: u32,
    config: Arc<Config>,
}

/// The publishing task's settings.
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

    /// Hands a message to the publishing task, first waiting while the in-flight
    /// budget is spent; returns the future of its acknowledgement.
    ///
    /// Fails at once with [`Error::InvalidArgument`] for a delay on a topic
    /// message; every other error (a too-large body, a missing queue) comes
    /// through the [`AckFuture`].
    ///
    /// ```no_run
    /// # async fn demo(publisher: broker_client::Publisher) -> Result<(), broker_client::Error> {
    /// let ack = publisher.send("hello").await?;
    /// // ... send more; each is answered once it is durable.
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
            linger: Duration::ZERO,
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
            // The publishing task never drops a reply unanswered unless the runtime
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

/// Most messages sent on the stream and not yet answered: the window the
/// publisher opens its stream with, so the broker always reads what it
/// sends (it stops reading at the window) and the two never wait on each
/// other.
const WINDOW: usize = broker_proto::limits::SEND_STREAM_WINDOW_DEFAULT as usize;

/// The open publishing stream: requests out, answers in.
struct Stream {
    requests: mpsc::UnboundedSender<pb::SendStreamRequest>,
    answers: tonic::Streaming<pb::SendStreamResponse>,
}

/// Runs the publisher: gathers messages into frames, sends them on one
/// `SendStream` stream, answers each message from the broker's answers,
/// and reopens the stream (sending what is unanswered again) when it breaks.
async fn publish(config: Arc<Config>, mut commands: mpsc::UnboundedReceiver<Command>) {
    // Sent and not answered, by sequence number.
    let mut waiting: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut next_seq = 0u64;
    // Flushes, each answered once every message numbered below its mark is.
    let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    let mut stream: Option<Stream> = None;
    let mut broken = Broken::default();
    let mut open = true;
    loop {
        // A flush is answered by dropping its sender once everything
        // handed over before it is answered.
        let lowest = waiting.keys().next().copied().unwrap_or(next_seq);
        flushes.retain(|(mark, _)| *mark > lowest);
        if !open && waiting.is_empty() {
            break;
        }
        if stream.is_none() && !waiting.is_empty() {
            if let Some(delay) = broken.delay() {
                tokio::time::sleep(delay).await;
            }
            match connect(&config, &waiting).await {
                Ok(s) => stream = Some(s),
                Err(error) => {
                    broken.failed(&config, error, &mut waiting);
                    continue;
                }
            }
        }
        tokio::select! {
            command = commands.recv(), if open && waiting.len() < WINDOW => {
                let first = match command {
                    None => {
                        open = false;
                        continue;
                    }
                    Some(Command::Flush(done)) => {
                        flushes.push((next_seq, done));
                        continue;
                    }
                    Some(Command::Send(pending)) => pending,
                };
                let (batch, flush, closed) = gather(&config, first, &mut commands).await;
                open &= !closed;
                let seq = next_seq;
                next_seq += batch.len() as u64;
                if let Some(s) = &stream {
                    // A stream that broke is noticed on its answers.
                    let _ = s.requests.send(frame(seq, &batch));
                }
                waiting.extend((seq..).zip(batch));
                if let Some(done) = flush {
                    flushes.push((next_seq, done));
                }
            }
            answer = next_answer(&mut stream) => {
                let error = match answer {
                    Ok(Some(response)) => {
                        match settle(&mut waiting, response) {
                            None => {
                                broken = Broken::default();
                                continue;
                            }
                            Some(error) => error,
                        }
                    }
                    Ok(None) => Error::Other {
                        code: tonic::Code::Unavailable,
                        message: "the broker ended the publishing stream (it is shutting down)".into(),
                    },
                    Err(status) => Error::from(status),
                };
                stream = None;
                broken.failed(&config, error, &mut waiting);
            }
        }
    }
}

/// The first message and what follows it into one frame: up to
/// `batch_size` messages, waiting up to `linger` for them (zero: only what
/// is queued already). Also returns a flush met on the way (it marks the
/// end of this frame) and whether the publisher was dropped.
async fn gather(
    config: &Config,
    first: Pending,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> (Vec<Pending>, Option<oneshot::Sender<()>>, bool) {
    let mut batch = vec![first];
    let linger = tokio::time::sleep(config.linger);
    tokio::pin!(linger);
    while batch.len() < config.batch_size {
        let command = if config.linger.is_zero() {
            match commands.try_recv() {
                Ok(command) => Some(command),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        } else {
            tokio::select! {
                biased;
                command = commands.recv() => command,
                _ = &mut linger => break,
            }
        };
        match command {
            Some(Command::Send(pending)) => batch.push(pending),
            Some(Command::Flush(done)) => return (batch, Some(done), false),
            None => return (batch, None, true),
        }
    }
    (batch, None, false)
}

/// The stream's next answer; never, without a stream.
async fn next_answer(
    stream: &mut Option<Stream>,
) -> Result<Option<pb::SendStreamResponse>, tonic::Status> {
    match stream {
        Some(s) => s.answers.message().await,
        None => std::future::pending().await,
    }
}

/// Opens the stream and sends every unanswered message on it again.
async fn connect(config: &Config, waiting: &BTreeMap<u64, Pending>) -> Result<Stream, Error> {
    let target = match &config.target {
        Target::Queue(queue) => pb::send_stream_open::Target::Queue(queue.clone()),
        Target::Topic(topic) => pb::send_stream_open::Target::Topic(topic.clone()),
    };
    let (requests, outbound) = mpsc::unbounded_channel();
    let _ = requests.send(pb::SendStreamRequest {
        request: Some(pb::send_stream_request::Request::Open(pb::SendStreamOpen {
            target: Some(target),
            window: WINDOW as u32,
        })),
    });
    // In frames of consecutive numbers, as they were first sent.
    let mut run: Vec<(u64, &Pending)> = Vec::new();
    for (&seq, pending) in waiting {
        let follows = run.last().is_some_and(|(last, _)| *last + 1 == seq);
        if !run.is_empty() && (!follows || run.len() == config.batch_size) {
            let _ = requests.send(frame_of(&run));
            run.clear();
        }
        run.push((seq, pending));
    }
    if !run.is_empty() {
        let _ = requests.send(frame_of(&run));
    }
    let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(outbound);
    let answers = config
        .client
        .rpc()
        .send_stream(outbound)
        .await?
        .into_inner();
    Ok(Stream { requests, answers })
}

fn frame(seq: u64, batch: &[Pending]) -> pb::SendStreamRequest {
    frame_of(&(seq..).zip(batch).collect::<Vec<_>>())
}

/// A frame of messages numbered from the first one's seq on.
fn frame_of(run: &[(u64, &Pending)]) -> pb::SendStreamRequest {
    pb::SendStreamRequest {
        request: Some(pb::send_stream_request::Request::Messages(
            pb::SendStreamMessages {
                seq: run.first().map_or(0, |(seq, _)| *seq),
                messages: run
                    .iter()
                    .map(|(_, p)| pb::SendStreamEntry {
                        body: p.message.body.clone(),
                        attributes: p.message.attributes.clone(),
                        delay_seconds: p.message.delay_seconds,
                    })
                    .collect(),
            },
        )),
    }
}

/// Answers the messages of a response. An UNAVAILABLE answer (the broker
/// is stopping, or a cluster has no leader) leaves its message waiting and
/// is returned: the stream is then reopened and the message sent again.
fn settle(waiting: &mut BTreeMap<u64, Pending>, response: pb::SendStreamResponse) -> Option<Error> {
    let mut unavailable = None;
    for result in response.results {
        let error = result
            .error
            .map(|e| Error::from(tonic::Status::new(code_from_name(&e.code), e.message)));
        if let Some(e) = &error
            && e.code() == tonic::Code::Unavailable
        {
            unavailable = Some(copy(e));
            continue;
        }
        if let Some(pending) = waiting.remove(&result.seq) {
            pending.answer(match error {
                Some(error) => Err(error),
                None => Ok(result.message_id),
            });
        }
    }
    unavailable
}

/// Failures since the stream last answered: the backoff before the next
/// attempt, and when to give up on the messages waiting.
#[derive(Default)]
struct Broken {
    /// The first failure's time, and attempts since.
    since: Option<(Instant, u32)>,
}

impl Broken {
    /// How long to wait before the next attempt; none after an answer.
    fn delay(&self) -> Option<Duration> {
        self.since
            .map(|(_, attempts)| backoff(RETRY_MIN, RETRY_MAX, attempts))
    }

    /// The stream failed (or could not open) with `error`. A transient one
    /// is retried until `retry_timeout` after the first; then, or for any
    /// other error, every waiting message fails with it.
    fn failed(&mut self, config: &Config, error: Error, waiting: &mut BTreeMap<u64, Pending>) {
        if waiting.is_empty() {
            // Nothing to give up on: the next message starts afresh.
            self.since = None;
            return;
        }
        let now = Instant::now();
        let (since, attempts) = self.since.get_or_insert((now, 0));
        *attempts += 1;
        let next = backoff(RETRY_MIN, RETRY_MAX, *attempts);
        if is_transient(&error) && now + next <= *since + config.retry_timeout {
            tracing::warn!(target = ?config.target, %error, delay = ?next, "publishing stream failed; retrying");
            return;
        }
        self.since = None;
        for (_, pending) in std::mem::take(waiting) {
            pending.answer(Err(copy(&error)));
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
