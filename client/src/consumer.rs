//! [`Consumer`]: a queue worker in a few lines — receive, run a handler,
//! delete on success, retry with backoff on failure, heartbeat slow jobs,
//! rate-limit, shut down without stranding a message. [`ConsumerStream`]:
//! the same machinery as a `Stream` of [`Delivery`]s for a hand-written loop.
//!
//! # How a running consumer is put together
//!
//! - A **receiver** task fills a channel of [`Delivery`]s: in pull mode by
//!   long-polling `ReceiveMessages`, in push mode from one `StreamMessages`
//!   stream. It receives only while there is a free *slot* (at most
//!   `concurrency + batch_size` messages are held at once) and, with
//!   `max_per_second`, only as fast as the token bucket allows. Transient
//!   errors (the broker restarting) are retried with backoff forever; other
//!   errors (the queue was deleted) stop it, and the consumer reports them.
//! - **Workers** (run mode: [`Consumer`]) or the user's loop (stream mode:
//!   [`ConsumerStream`]) take deliveries from the channel and settle them.
//! - The **heartbeat** task extends the visibility of every message held for
//!   longer than half its visibility timeout.
//! - The **acker** task sends settlements and extensions to the broker:
//!   batched RPCs (`DeleteMessageBatch`, `ChangeMessageVisibilityBatch`,
//!   flushed every few milliseconds or at 10 entries), or in push mode the
//!   requests of the open stream.
//!
//! # Invariants
//!
//! - Every message received is in the *lease table* until it is settled
//!   exactly once: deleted, or released (made visible again now or after a
//!   backoff). Removing its entry is the right to settle it, so a delivery
//!   that finds its entry gone (released at the shutdown deadline) does
//!   nothing. Each entry holds one slot, given back when it is removed.
//! - The heartbeat queues an extension while it holds the table's lock, and
//!   a settlement is queued after its entry was removed, so an extension is
//!   never queued after the settlement of its message, and the acker keeps
//!   that order (a release can never be overridden by a late extension).
//! - Shutdown stops receiving first, then releases (visibility 0) what was
//!   received but not started, lets running handlers finish until the
//!   deadline, releases whatever is still held at the deadline, and flushes
//!   the acker: nothing is left to wait for its visibility timeout, except a
//!   message the broker sent in the instant its receive was cancelled.
//! - Acknowledgements sent on a push stream are also kept for two seconds;
//!   when the stream ends (shutdown or a broken connection), the recent ones
//!   are sent again through the RPCs, since the broker may not have read
//!   them. A repeat is harmless: it fails on a deleted message or a stale
//!   receipt handle, and such failures are not counted.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use pb::stream_messages_request::Request as StreamOp;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Client, Error, pb};

/// A received message, as the broker sent it: body, attributes, receipt
/// handle, receive count.
pub type Message = pb::ReceivedMessage;

/// Most entries the acker puts in one batch RPC.
const ACK_BATCH: usize = 10;
/// How long the acker waits for more entries before sending a batch.
const ACK_LINGER: Duration = Duration::from_millis(5);
/// Largest visibility timeout the broker accepts, in seconds.
const VISIBILITY_MAX_SECONDS: u32 = 43_200;
/// Largest credit of a push stream.
const CREDIT_MAX: u32 = 1_000;
/// Backoff between attempts after a transient error (broker unreachable).
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Pause after an empty short poll (wait time 0), so an idle consumer does
/// not spin.
const EMPTY_POLL_PAUSE: Duration = Duration::from_millis(100);
/// How long an acknowledgement sent on a push stream is kept to be sent
/// again through the RPCs if the stream ends.
const STREAM_REPLAY_WINDOW: Duration = Duration::from_secs(2);
/// How long a push stream being shut down is still read, for messages the
/// broker is pushing at that moment.
const STREAM_DRAIN_GRACE: Duration = Duration::from_millis(50);
/// Requests (acknowledgements) buffered towards one push stream.
const STREAM_REQUEST_BUFFER: usize = 256;
/// Attempts of one acker batch RPC that fails with a transient error.
const ACK_ATTEMPTS: u32 = 5;

/// Builds a [`Consumer`] (a pool of handler tasks) or a [`ConsumerStream`]
/// (a `Stream` of deliveries): one setter per option, each with a default.
///
/// ```no_run
/// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
/// use std::time::Duration;
/// use broker_client::{Consumer, Message};
///
/// let consumer = Consumer::builder(&client, "emails")
///     .concurrency(3)
///     .max_per_second(10)
///     .visibility_timeout(Duration::from_secs(30))
///     .retry_backoff(Duration::from_secs(1), Duration::from_secs(60))
///     .start(|message: Message| async move {
///         println!("sending {}", String::from_utf8_lossy(&message.body));
///         Ok::<(), std::io::Error>(())
///     })
///     .await?;
/// tokio::signal::ctrl_c().await.ok();
/// let summary = consumer.shutdown().await;
/// println!("{summary}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `start` or `stream` is called"]
pub struct ConsumerBuilder {
    client: Client,
    queue: String,
    concurrency: usize,
    batch_size: u32,
    wait_time: Duration,
    visibility_timeout: Option<Duration>,
    max_per_second: Option<u32>,
    max_burst: Option<u32>,
    heartbeat: bool,
    retry_min: Duration,
    retry_max: Duration,
    push: bool,
    shutdown_timeout: Duration,
}

impl ConsumerBuilder {
    fn new(client: &Client, queue: String) -> ConsumerBuilder {
        ConsumerBuilder {
            client: client.clone(),
            queue,
            concurrency: 1,
            batch_size: 10,
            wait_time: Duration::from_secs(20),
            visibility_timeout: None,
            max_per_second: None,
            max_burst: None,
            heartbeat: true,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            push: false,
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// The queue to consume (replaces the one given to [`Consumer::builder`]).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// How many handlers run at once (default 1). Each runs in a task of its
    /// own. Ignored by [`ConsumerBuilder::stream`], except that the stream
    /// holds at most `concurrency + batch_size` unsettled deliveries.
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.concurrency = handlers;
        self
    }

    /// Most messages one receive asks for (1..=100, default 10); also how
    /// many received messages may wait for a free handler. In push mode, the
    /// stream's credit is `concurrency + batch_size`.
    pub fn batch_size(mut self, messages: u32) -> Self {
        self.batch_size = messages;
        self
    }

    /// How long one receive waits for a message (long polling; at most
    /// 20 s, the default). Shutdown does not wait for it. Unused in push
    /// mode.
    pub fn wait_time(mut self, wait: Duration) -> Self {
        self.wait_time = wait;
        self
    }

    /// The visibility timeout of received messages (1 s..=12 h, rounded up
    /// to whole seconds). Default: the queue's own (at least 1 s).
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// Receives at most `messages` per second, all of the consumer's tasks
    /// together (a token bucket). Default: no limit. The bucket holds one
    /// token unless [`ConsumerBuilder::max_burst`] says otherwise, so in any
    /// one-second window at most `messages` are received.
    ///
    /// This limits one consumer; the queue attribute `max_receive_rate`
    /// limits all consumers of a queue together, on the broker.
    pub fn max_per_second(mut self, messages: u32) -> Self {
        self.max_per_second = Some(messages);
        self
    }

    /// How many tokens the [`ConsumerBuilder::max_per_second`] bucket holds
    /// (messages received at once after an idle period; default 1). A
    /// larger burst lets one receive take several messages.
    pub fn max_burst(mut self, messages: u32) -> Self {
        self.max_burst = Some(messages);
        self
    }

    /// Whether to extend the visibility of a message held for longer than
    /// about half its visibility timeout (default true), so that a slow
    /// handler never sees its message handed to another worker.
    pub fn heartbeat(mut self, enabled: bool) -> Self {
        self.heartbeat = enabled;
        self
    }

    /// The backoff before a message whose handler failed is visible again:
    /// `min * 2^(receive_count - 1)`, capped at `max`, then a random value
    /// between half of it and all of it (jitter), rounded up to whole
    /// seconds. Default 1 s to 60 s. The queue's redrive policy counts every
    /// failure, so a poison message ends in the dead-letter queue.
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max;
        self
    }

    /// Uses push delivery (`StreamMessages`) instead of long-polling
    /// `ReceiveMessages` (default false). Everything else works the same.
    pub fn push(mut self, enabled: bool) -> Self {
        self.push = enabled;
        self
    }

    /// How long [`Consumer::shutdown`] lets running handlers finish before
    /// it aborts them and releases their messages (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Checks the options and that the queue exists, then starts consuming:
    /// `handler` runs once per message, on up to `concurrency` tasks. `Ok`
    /// deletes the message; `Err` (or a panic) releases it for redelivery
    /// after the retry backoff.
    ///
    /// Fails with [`Error::InvalidArgument`] naming the option for a bad
    /// option, and with [`Error::NotFound`] when the queue does not exist.
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// use broker_client::{Consumer, Message};
    ///
    /// let consumer = Consumer::builder(&client, "orders")
    ///     .concurrency(8)
    ///     .start(|message: Message| async move {
    ///         if message.body.is_empty() {
    ///             return Err("empty order");
    ///         }
    ///         Ok(())
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start<F, Fut, E>(self, handler: F) -> Result<Consumer, Error>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let concurrency = self.concurrency;
        let shutdown_timeout = self.shutdown_timeout;
        let (pipeline, deliveries) = self.launch().await?;
        let deliveries = Arc::new(tokio::sync::Mutex::new(deliveries));
        let handler = Arc::new(handler);
        let abandon = CancellationToken::new();
        let workers = (0..concurrency)
            .map(|_| {
                tokio::spawn(work(
                    pipeline.core.clone(),
                    deliveries.clone(),
                    handler.clone(),
                    abandon.clone(),
                ))
            })
            .collect();
        Ok(Consumer {
            core: pipeline.core.clone(),
            running: Some(RunningConsumer {
                pipeline,
                deliveries,
                workers,
                abandon,
            }),
            shutdown_timeout,
        })
    }

    /// Checks the options and that the queue exists, then starts receiving
    /// into a [`ConsumerStream`]: settle each [`Delivery`] with
    /// [`Delivery::ack`], [`Delivery::nack`] or [`Delivery::release`].
    ///
    /// ```no_run
    /// # async fn demo(client: broker_client::Client) -> Result<(), broker_client::Error> {
    /// use futures::StreamExt;
    /// use broker_client::Consumer;
    ///
    /// let mut stream = Consumer::builder(&client, "orders").stream().await?;
    /// while let Some(delivery) = stream.next().await {
    ///     let delivery = delivery?;
    ///     if delivery.body.starts_with(b"{") {
    ///         delivery.ack();
    ///     } else {
    ///         delivery.nack();
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stream(self) -> Result<ConsumerStream, Error> {
        let shutdown_timeout = self.shutdown_timeout;
        let (pipeline, deliveries) = self.launch().await?;
        Ok(ConsumerStream {
            core: pipeline.core.clone(),
            deliveries,
            pipeline: Some(pipeline),
            error_reported: false,
            shutdown_timeout,
        })
    }

    /// Validates, looks the queue up, and spawns the receiver, heartbeat and
    /// acker tasks.
    async fn launch(self) -> Result<(Pipeline, mpsc::UnboundedReceiver<Delivery>), Error> {
        let invalid = |message: String| Err(Error::InvalidArgument(message));
        if self.concurrency == 0 {
            return invalid("concurrency must be at least 1; got 0".into());
        }
        if !(1..=100).contains(&self.batch_size) {
            return invalid(format!(
                "batch_size must be in 1..=100; got {}",
                self.batch_size
            ));
        }
        if self.wait_time > Duration::from_secs(20) {
            return invalid(format!(
                "wait_time must be at most 20 s; got {:?}",
                self.wait_time
            ));
        }
        if self.retry_min > self.retry_max {
            return invalid(format!(
                "retry_backoff min must not exceed max; got min {:?}, max {:?}",
                self.retry_min, self.retry_max
            ));
        }
        let limiter = match self.max_per_second {
            None => None,
            Some(rate) => {
                let Some(rate) = NonZeroU32::new(rate) else {
                    return invalid("max_per_second must be at least 1; got 0".into());
                };
                let burst = self.max_burst.unwrap_or(1);
                let Some(burst) = NonZeroU32::new(burst) else {
                    return invalid("max_burst must be at least 1; got 0".into());
                };
                Some(RateLimiter::direct(
                    Quota::per_second(rate).allow_burst(burst),
                ))
            }
        };
        let visibility = match self.visibility_timeout {
            Some(timeout) => {
                let seconds = ceil_seconds(timeout);
                if !(1..=u64::from(VISIBILITY_MAX_SECONDS)).contains(&seconds) {
                    return invalid(format!(
                        "visibility_timeout must be in 1 s..={VISIBILITY_MAX_SECONDS} s; got {timeout:?}"
                    ));
                }
                seconds as u32
            }
            None => 0,
        };
        // The queue must exist now, and its visibility timeout is the default.
        let queue = self
            .client
            .get_queue(pb::GetQueueRequest {
                name: self.queue.clone(),
            })
            .await?
            .queue
            .unwrap_or_default();
        let visibility = if visibility > 0 {
            visibility
        } else {
            queue
                .attributes
                .and_then(|a| a.visibility_timeout_seconds)
                .unwrap_or(30)
                .max(1)
        };

        let capacity = self.concurrency.saturating_add(self.batch_size as usize);
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let core = Arc::new(Core {
            client: self.client,
            queue: self.queue,
            visibility,
            batch_size: self.batch_size,
            wait_time_seconds: self.wait_time.as_secs() as u32,
            credit: (capacity as u32).min(CREDIT_MAX),
            retry_min: self.retry_min,
            retry_max: self.retry_max,
            limiter,
            leases: Mutex::new(LeaseTable::default()),
            all_settled: Notify::new(),
            slots: Semaphore::new(capacity),
            ops,
            stream: Mutex::new(None),
            stop: CancellationToken::new(),
            receiver_done: CancellationToken::new(),
            error: Mutex::new(None),
            counters: Counters::default(),
        });
        let (tx, deliveries) = mpsc::unbounded_channel();
        let receiver = if self.push {
            tokio::spawn(receive_pushed(core.clone(), tx))
        } else {
            tokio::spawn(receive_pulled(core.clone(), tx))
        };
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            core.clone(),
            self.heartbeat,
            heartbeat_stop.clone(),
        ));
        let acker = tokio::spawn(acker(core.clone(), ops_rx));
        Ok((
            Pipeline {
                core,
                receiver,
                heartbeat,
                heartbeat_stop,
                acker,
            },
            deliveries,
        ))
    }
}

/// A running pool of handler tasks over one queue; see [`ConsumerBuilder`].
///
/// Stop it with [`Consumer::shutdown`]. Dropping it shuts it down in the
/// background the same way, without waiting.
pub struct Consumer {
    /// Shared with the tasks.
    core: Arc<Core>,
    /// `None` once shut down.
    running: Option<RunningConsumer>,
    /// The builder's `shutdown_timeout`, for [`Consumer::shutdown`].
    shutdown_timeout: Duration,
}

/// The tasks of a [`Consumer`], taken by its shutdown.
struct RunningConsumer {
    pipeline: Pipeline,
    /// The receiver's channel, shared by the workers; shutdown drains it.
    deliveries: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>>,
    workers: Vec<JoinHandle<()>>,
    /// Cancelled at the shutdown deadline: workers abort their handlers.
    abandon: CancellationToken,
}

impl Consumer {
    /// Starts building a consumer of `queue` over `client`'s connection.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), broker_client::Error> {
    /// use broker_client::{Client, Consumer, Message};
    ///
    /// let client = Client::connect("127.0.0.1:50051").await?;
    /// let consumer = Consumer::builder(&client, "orders")
    ///     .start(|message: Message| async move {
    ///         println!("{}", String::from_utf8_lossy(&message.body));
    ///         Ok::<_, std::io::Error>(())
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(client: &Client, queue: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(client, queue.into())
    }

    /// The queue this consumer receives from.
    pub fn queue(&self) -> &str {
        &self.core.queue
    }

    /// Counts so far (the same as the summary [`Consumer::shutdown`]
    /// returns, without `error`).
    pub fn stats(&self) -> ConsumerSummary {
        self.core.summary(false)
    }

    /// Resolves when the consumer stopped receiving on its own, because of
    /// an error that retrying cannot fix (e.g. the queue was deleted);
    /// [`Consumer::shutdown`] then returns it in [`ConsumerSummary::error`].
    /// Transient errors (the broker restarting) never end it.
    ///
    /// ```no_run
    /// # async fn demo(consumer: broker_client::Consumer) {
    /// tokio::select! {
    ///     _ = tokio::signal::ctrl_c() => {}
    ///     _ = consumer.closed() => {}
    /// }
    /// let summary = consumer.shutdown().await;
    /// # }
    /// ```
    pub async fn closed(&self) {
        self.core.receiver_done.cancelled().await;
        // A shutdown also ends the receiver: only an error counts here.
        if self.core.error.lock().expect("lock").is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// Shuts down gracefully within the builder's `shutdown_timeout`; see
    /// [`Consumer::shutdown_within`].
    ///
    /// ```no_run
    /// # async fn demo(consumer: broker_client::Consumer) {
    /// tokio::signal::ctrl_c().await.ok();
    /// let summary = consumer.shutdown().await;
    /// println!("{summary}");
    /// # }
    /// ```
    pub async fn shutdown(self) -> ConsumerSummary {
        let timeout = self.shutdown_timeout;
        self.shutdown_within(timeout).await
    }

    /// Stops receiving, releases (visibility 0) the messages received but
    /// not started, lets running handlers finish until `timeout` (then
    /// aborts them and releases their messages), sends the pending deletes,
    /// and returns what happened.
    ///
    /// ```no_run
    /// # async fn demo(consumer: broker_client::Consumer) {
    /// use std::time::Duration;
    ///
    /// let summary = consumer.shutdown_within(Duration::from_secs(5)).await;
    /// assert_eq!(summary.abandoned, 0, "a handler ran for more than 5 s");
    /// # }
    /// ```
    pub async fn shutdown_within(mut self, timeout: Duration) -> ConsumerSummary {
        match self.running.take() {
            Some(running) => running.shutdown(Instant::now() + timeout).await,
            None => self.core.summary(true),
        }
    }
}

impl RunningConsumer {
    async fn shutdown(self, deadline: Instant) -> ConsumerSummary {
        let core = self.pipeline.core.clone();
        core.stop.cancel();
        let _ = self.pipeline.receiver.await;
        // Workers see `stop` before taking another delivery, so what is left
        // in the channel was never started: release it now.
        {
            let mut deliveries = self.deliveries.lock().await;
            deliveries.close();
            while let Ok(delivery) = deliveries.try_recv() {
                drop(delivery);
            }
        }
        let mut workers = futures::future::join_all(self.workers);
        if tokio::time::timeout_at(deadline, &mut workers)
            .await
            .is_err()
        {
            self.abandon.cancel();
            workers.await;
        }
        finish(
            core,
            self.pipeline.heartbeat,
            self.pipeline.heartbeat_stop,
            self.pipeline.acker,
            deadline,
        )
        .await
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.pipeline.core.stop.cancel();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let deadline = Instant::now() + self.shutdown_timeout;
            runtime.spawn(running.shutdown(deadline));
        }
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.core.queue)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

/// A consumer as a `Stream` of [`Delivery`]s, for a hand-written loop; see
/// [`ConsumerBuilder::stream`].
///
/// Receiving, the rate limit, heartbeats and batching of acknowledgements
/// work as for [`Consumer`]. The stream holds at most
/// `concurrency + batch_size` deliveries that are not settled yet, and
/// waits for a settlement before receiving more. It yields an `Err` once if
/// it stopped on an error that retrying cannot fix, then ends.
pub struct ConsumerStream {
    /// Shared with the tasks.
    core: Arc<Core>,
    /// From the receiver.
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// `None` once shut down.
    pipeline: Option<Pipeline>,
    /// Whether the receiver's error was yielded already.
    error_reported: bool,
    /// The builder's `shutdown_timeout`, for [`ConsumerStream::shutdown`].
    shutdown_timeout: Duration,
}

impl ConsumerStream {
    /// Counts so far (the same as the summary of the shutdown, without
    /// `error`).
    pub fn stats(&self) -> ConsumerSummary {
        self.core.summary(false)
    }

    /// Shuts down within the builder's `shutdown_timeout`; see
    /// [`ConsumerStream::shutdown_within`].
    pub async fn shutdown(self) -> ConsumerSummary {
        let timeout = self.shutdown_timeout;
        self.shutdown_within(timeout).await
    }

    /// Stops receiving, releases the messages received but not yielded yet,
    /// waits until `timeout` for the deliveries already yielded to be
    /// settled (then releases those that are not), sends the pending
    /// acknowledgements, and returns what happened.
    ///
    /// ```no_run
    /// # async fn demo(stream: broker_client::ConsumerStream) {
    /// use std::time::Duration;
    ///
    /// let summary = stream.shutdown_within(Duration::from_secs(5)).await;
    /// println!("{summary}");
    /// # }
    /// ```
    pub async fn shutdown_within(mut self, timeout: Duration) -> ConsumerSummary {
        let deadline = Instant::now() + timeout;
        let Some(pipeline) = self.pipeline.take() else {
            return self.core.summary(true);
        };
        self.core.stop.cancel();
        let _ = pipeline.receiver.await;
        self.deliveries.close();
        while let Ok(delivery) = self.deliveries.try_recv() {
            drop(delivery);
        }
        finish(
            pipeline.core,
            pipeline.heartbeat,
            pipeline.heartbeat_stop,
            pipeline.acker,
            deadline,
        )
        .await
    }
}

impl Stream for ConsumerStream {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.deliveries.poll_recv(cx) {
            Poll::Ready(Some(delivery)) => Poll::Ready(Some(Ok(delivery))),
            Poll::Ready(None) if !self.error_reported => {
                self.error_reported = true;
                let error = self.core.error.lock().expect("lock").as_ref().map(copy);
                Poll::Ready(error.map(Err))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for ConsumerStream {
    fn drop(&mut self) {
        let Some(pipeline) = self.pipeline.take() else {
            return;
        };
        self.core.stop.cancel();
        self.deliveries.close();
        while let Ok(delivery) = self.deliveries.try_recv() {
            drop(delivery);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let deadline = Instant::now() + self.shutdown_timeout;
            runtime.spawn(async move {
                let _ = pipeline.receiver.await;
                finish(
                    pipeline.core,
                    pipeline.heartbeat,
                    pipeline.heartbeat_stop,
                    pipeline.acker,
                    deadline,
                )
                .await
            });
        }
    }
}

impl fmt::Debug for ConsumerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerStream")
            .field("queue", &self.core.queue)
            .finish_non_exhaustive()
    }
}

/// One received message and the right to settle it: [`Delivery::ack`],
/// [`Delivery::nack`] or [`Delivery::release`]. Dereferences to the
/// [`Message`].
///
/// Until it is settled, the consumer's heartbeat keeps the message
/// invisible to other consumers. Dropping it unsettled releases the message
/// at once (visibility 0), so nothing waits for a timeout.
pub struct Delivery {
    core: Arc<Core>,
    /// The message's entry in the lease table.
    key: u64,
    /// Kept apart from `message`, which a worker hands to the handler.
    message_id: String,
    receive_count: u32,
    message: Message,
    /// Set by the first settlement, so that `Drop` does nothing more.
    settled: bool,
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
        let seconds = ceil_seconds(delay).min(u64::from(VISIBILITY_MAX_SECONDS)) as u32;
        self.settle(Settlement::Release(seconds), Outcome::Released);
    }

    fn settle(&mut self, settlement: Settlement, outcome: Outcome) {
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

// ---------------------------------------------------------------------------
// The shared state and the tasks.
// ---------------------------------------------------------------------------

/// The state shared by a consumer's tasks and deliveries.
struct Core {
    client: Client,
    queue: String,
    /// Visibility timeout of received messages, in seconds (at least 1).
    visibility: u32,
    batch_size: u32,
    wait_time_seconds: u32,
    /// Credit of a push stream: the number of slots.
    credit: u32,
    retry_min: Duration,
    retry_max: Duration,
    /// `max_per_second`, if set.
    limiter: Option<DefaultDirectRateLimiter>,
    /// Messages received and not settled yet.
    leases: Mutex<LeaseTable>,
    /// Notified when the lease table becomes empty.
    all_settled: Notify,
    /// One permit per message that may still be held; a lease holds one.
    slots: Semaphore,
    /// To the acker.
    ops: mpsc::UnboundedSender<Op>,
    /// Push mode: the requests of the open stream, for the acker.
    stream: Mutex<Option<mpsc::Sender<pb::StreamMessagesRequest>>>,
    /// Cancelled when shutdown begins: stop receiving and starting handlers.
    stop: CancellationToken,
    /// Cancelled when the receiver task ended (shutdown or error).
    receiver_done: CancellationToken,
    /// The error that ended the receiver.
    error: Mutex<Option<Error>>,
    counters: Counters,
}

#[derive(Default)]
struct LeaseTable {
    next_key: u64,
    leases: HashMap<u64, Lease>,
}

/// A message held by the consumer.
struct Lease {
    receipt_handle: String,
    /// When its visibility timeout lapses, by our clock (conservatively:
    /// measured from before the receive was sent).
    expires: Instant,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    released: AtomicU64,
    abandoned: AtomicU64,
    extended: AtomicU64,
    ack_errors: AtomicU64,
}

/// How a message is settled.
enum Settlement {
    Delete,
    /// Visible again after this many seconds.
    Release(u32),
}

/// Which counter a settlement adds to.
#[derive(Clone, Copy)]
enum Outcome {
    Succeeded,
    Failed,
    Released,
    Abandoned,
}

/// A request to the acker.
enum Op {
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

/// The tasks every consumer has, whatever consumes the deliveries.
struct Pipeline {
    core: Arc<Core>,
    receiver: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    heartbeat_stop: CancellationToken,
    acker: JoinHandle<()>,
}

impl Core {
    fn table(&self) -> MutexGuard<'_, LeaseTable> {
        self.leases.lock().expect("the lease table lock")
    }

    /// Records a received message in the lease table (it holds a slot the
    /// caller acquired) and wraps it in a delivery.
    fn register(self: &Arc<Self>, message: Message, leased_at: Instant) -> Delivery {
        let expires = leased_at + Duration::from_secs(u64::from(self.visibility));
        let key = {
            let mut table = self.table();
            let key = table.next_key;
            table.next_key += 1;
            table.leases.insert(
                key,
                Lease {
                    receipt_handle: message.receipt_handle.clone(),
                    expires,
                },
            );
            key
        };
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        Delivery {
            core: self.clone(),
            key,
            message_id: message.message_id.clone(),
            receive_count: message.receive_count,
            message,
            settled: false,
        }
    }

    /// Settles a message if it is still leased; see the module's invariants.
    fn settle(&self, key: u64, settlement: Settlement, outcome: Outcome) {
        let receipt_handle = {
            let mut table = self.table();
            let Some(lease) = table.leases.remove(&key) else {
                return;
            };
            if table.leases.is_empty() {
                self.all_settled.notify_waiters();
            }
            lease.receipt_handle
        };
        let op = match settlement {
            Settlement::Delete => Op::Delete(receipt_handle),
            Settlement::Release(seconds) => Op::Visibility {
                receipt_handle,
                seconds,
                extend: false,
            },
        };
        let _ = self.ops.send(op);
        self.slots.add_permits(1);
        self.count(outcome);
    }

    /// Releases a message that never entered the lease table (received
    /// while shutting down).
    fn release_unleased(&self, message: Message) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let _ = self.ops.send(Op::Visibility {
            receipt_handle: message.receipt_handle,
            seconds: 0,
            extend: false,
        });
        self.count(Outcome::Released);
    }

    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Succeeded => &self.counters.succeeded,
            Outcome::Failed => &self.counters.failed,
            Outcome::Released => &self.counters.released,
            Outcome::Abandoned => &self.counters.abandoned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Releases every message still leased (the shutdown deadline passed).
    fn abandon_all(&self) {
        let keys: Vec<u64> = self.table().leases.keys().copied().collect();
        for key in keys {
            self.settle(key, Settlement::Release(0), Outcome::Abandoned);
        }
    }

    /// Waits until no message is leased, or `deadline`.
    async fn settled_by(&self, deadline: Instant) {
        loop {
            let notified = self.all_settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.table().leases.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// The release delay after a failure, in seconds.
    fn retry_seconds(&self, receive_count: u32) -> u32 {
        let delay = backoff(self.retry_min, self.retry_max, receive_count);
        ceil_seconds(delay).min(u64::from(VISIBILITY_MAX_SECONDS)) as u32
    }

    /// Records the error that ends the receiver.
    fn fail(&self, error: Error) {
        tracing::error!(queue = %self.queue, %error, "consumer stopped receiving");
        *self.error.lock().expect("lock") = Some(error);
    }

    fn summary(&self, with_error: bool) -> ConsumerSummary {
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
    async fn acquire_slots(&self, want: u32) -> Option<u32> {
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
    async fn pause(&self, delay: Duration) -> bool {
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
async fn finish(
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

/// Pull mode: long-poll `ReceiveMessages` while there are free slots.
async fn receive_pulled(core: Arc<Core>, deliveries: mpsc::UnboundedSender<Delivery>) {
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

/// Push mode: one `StreamMessages` stream at a time, reopened with backoff
/// when it breaks.
async fn receive_pushed(core: Arc<Core>, deliveries: mpsc::UnboundedSender<Delivery>) {
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

/// Run mode: one of `concurrency` workers, handling one delivery at a time.
async fn work<F, Fut, E>(
    core: Arc<Core>,
    deliveries: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>>,
    handler: Arc<F>,
    abandon: CancellationToken,
) where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    loop {
        let next = tokio::select! {
            biased;
            _ = core.stop.cancelled() => return,
            next = async { deliveries.lock().await.recv().await } => next,
        };
        let Some(mut delivery) = next else { return };
        let message = std::mem::take(&mut delivery.message);
        // A task of its own: a panic fails one message, and the shutdown
        // deadline can abort it.
        let mut task = tokio::spawn((handler.as_ref())(message));
        let result = tokio::select! {
            result = &mut task => result,
            _ = abandon.cancelled() => {
                task.abort();
                delivery.settle(Settlement::Release(0), Outcome::Abandoned);
                return;
            }
        };
        match result {
            Ok(Ok(())) => delivery.ack(),
            Ok(Err(error)) => {
                tracing::warn!(
                    queue = %core.queue,
                    message_id = %delivery.message_id,
                    receive_count = delivery.receive_count,
                    %error,
                    "handler failed; the message will be retried"
                );
                delivery.nack();
            }
            Err(join_error) => {
                tracing::error!(
                    queue = %core.queue,
                    message_id = %delivery.message_id,
                    error = %join_error,
                    "handler panicked; the message will be retried"
                );
                delivery.nack();
            }
        }
    }
}

/// Extends the visibility of every message held for more than half its
/// visibility timeout; checks every quarter of it.
async fn heartbeat(core: Arc<Core>, enabled: bool, stop: CancellationToken) {
    if !enabled {
        return stop.cancelled().await;
    }
    let visibility = Duration::from_secs(u64::from(core.visibility));
    let mut ticks = tokio::time::interval(visibility / 4);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        // Queue under the lock: see the module's invariants.
        let mut table = core.table();
        for lease in table.leases.values_mut() {
            if lease.expires.saturating_duration_since(now) <= visibility / 2 {
                lease.expires = now + visibility;
                let _ = core.ops.send(Op::Visibility {
                    receipt_handle: lease.receipt_handle.clone(),
                    seconds: core.visibility,
                    extend: true,
                });
                core.counters.extended.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
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
async fn acker(core: Arc<Core>, mut ops: mpsc::UnboundedReceiver<Op>) {
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

// ---------------------------------------------------------------------------
// Helpers shared with the publisher.
// ---------------------------------------------------------------------------

/// Whether retrying may fix the error: the broker is unreachable,
/// restarting, or the call was cut off. Not for bad requests or a missing
/// queue.
pub(crate) fn is_transient(error: &Error) -> bool {
    use tonic::Code;
    matches!(
        error.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::Internal
            | Code::ResourceExhausted
    )
}

/// Exponential backoff with jitter: `min * 2^(attempt - 1)` capped at
/// `max`, then uniformly between half of it and all of it.
pub(crate) fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let full = min.saturating_mul(1 << exponent).min(max);
    let half = full / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// `duration` in whole seconds, rounded up.
fn ceil_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A copy of an error (`Error` is not `Clone`: `tonic::Status` is not).
pub(crate) fn copy(error: &Error) -> Error {
    match error {
        Error::Connect { addr, reason } => Error::Connect {
            addr: addr.clone(),
            reason: reason.clone(),
        },
        other => Error::from(tonic::Status::new(other.code(), other.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(10);
        for _ in 0..100 {
            for (attempt, full) in [(0, 1), (1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (40, 10)] {
                let full = Duration::from_secs(full);
                let delay = backoff(min, max, attempt);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempt}: {delay:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
        assert_eq!(backoff(Duration::ZERO, max, 5), Duration::ZERO);
    }

    #[test]
    fn backoff_jitter_spreads_retries() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| backoff(Duration::from_secs(1), Duration::from_secs(60), 4))
            .collect();
        assert!(delays.len() > 1, "no jitter: {delays:?}");
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_seconds(Duration::ZERO), 0);
        assert_eq!(ceil_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ceil_seconds(Duration::from_secs(2)), 2);
        assert_eq!(ceil_seconds(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn transient_errors_are_retried_and_others_are_not() {
        assert!(is_transient(&Error::Unavailable("down".into())));
        assert!(is_transient(&Error::from(tonic::Status::unknown("h2"))));
        assert!(!is_transient(&Error::NotFound("queue".into())));
        assert!(!is_transient(&Error::InvalidArgument("bad".into())));
    }

    #[test]
    fn copies_keep_code_and_message() {
        let error = copy(&Error::NotFound("queue 'x' does not exist".into()));
        assert!(matches!(&error, Error::NotFound(m) if m == "queue 'x' does not exist"));
        let error = copy(&Error::Connect {
            addr: "a".into(),
            reason: "r".into(),
        });
        assert!(matches!(error, Error::Connect { .. }));
    }
}
