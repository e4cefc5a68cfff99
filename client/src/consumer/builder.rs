//! [`ConsumerBuilder`]: the options of a consumer, one setter each with
//! its default, checked when it starts; then the launch of its tasks (the
//! receiver, the heartbeat and the acker) around the shared state.
//!
//! Every option is checked before anything is spawned or the queue is
//! looked up, and a bad one is [`Error::InvalidArgument`] naming it.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{Quota, RateLimiter};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::acker::acker;
use super::delivery::Delivery;
use super::heartbeat::heartbeat;
use super::lease::LeaseTable;
use super::pipeline::{Core, Counters, Pipeline};
use super::pull::receive_pulled;
use super::push::receive_pushed;
use super::retry::ceil_seconds;
use super::{Consumer, ConsumerStream, Message};
use crate::limits::{
    RECEIVE_MESSAGES_MAX, STREAM_CREDIT_MAX, VISIBILITY_TIMEOUT_SECONDS_DEFAULT,
    VISIBILITY_TIMEOUT_SECONDS_MAX, WAIT_TIME_SECONDS_MAX,
};
use crate::{Client, Error, pb};

/// Messages one receive asks for unless `batch_size` says otherwise.
const BATCH_SIZE_DEFAULT: u32 = 10;
const _: () = assert!(BATCH_SIZE_DEFAULT <= RECEIVE_MESSAGES_MAX);

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
    pub(super) fn new(client: &Client, queue: String) -> ConsumerBuilder {
        ConsumerBuilder {
            client: client.clone(),
            queue,
            concurrency: 1,
            batch_size: BATCH_SIZE_DEFAULT,
            wait_time: Duration::from_secs(u64::from(WAIT_TIME_SECONDS_MAX)),
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
        Ok(Consumer::with_workers(
            pipeline,
            deliveries,
            concurrency,
            handler,
            shutdown_timeout,
        ))
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
        Ok(ConsumerStream::new(pipeline, deliveries, shutdown_timeout))
    }

    /// Validates, looks the queue up, and spawns the receiver, heartbeat and
    /// acker tasks.
    async fn launch(self) -> Result<(Pipeline, mpsc::UnboundedReceiver<Delivery>), Error> {
        let invalid = |message: String| Err(Error::InvalidArgument(message));
        if self.concurrency == 0 {
            return invalid("concurrency must be at least 1; got 0".into());
        }
        if !(1..=RECEIVE_MESSAGES_MAX).contains(&self.batch_size) {
            return invalid(format!(
                "batch_size must be in 1..={RECEIVE_MESSAGES_MAX}; got {}",
                self.batch_size
            ));
        }
        if self.wait_time > Duration::from_secs(u64::from(WAIT_TIME_SECONDS_MAX)) {
            return invalid(format!(
                "wait_time must be at most {WAIT_TIME_SECONDS_MAX} s; got {:?}",
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
                if !(1..=u64::from(VISIBILITY_TIMEOUT_SECONDS_MAX)).contains(&seconds) {
                    return invalid(format!(
                        "visibility_timeout must be in 1 s..={VISIBILITY_TIMEOUT_SECONDS_MAX} s; got {timeout:?}"
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
                .unwrap_or(VISIBILITY_TIMEOUT_SECONDS_DEFAULT)
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
            credit: (capacity as u32).min(STREAM_CREDIT_MAX),
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
