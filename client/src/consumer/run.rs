//! Run mode: [`Consumer`], a pool of `concurrency` worker tasks that take
//! deliveries from the receiver and run the handler on each, one at a time
//! per worker, in a task of its own (a panic fails one message, and the
//! shutdown deadline can abort it). `Ok` acks the message; `Err` or a panic
//! nacks it.
//!
//! Shutdown stops receiving, releases what was received but not started,
//! lets running handlers finish until the deadline (then aborts them and
//! releases their messages), and flushes the acker.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::delivery::Delivery;
use super::lease::{Outcome, Settlement};
use super::pipeline::{Core, Pipeline, finish};
use super::{ConsumerBuilder, ConsumerSummary, Message};
use crate::Client;

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

impl Consumer {
    /// Starts `concurrency` workers running `handler` on the deliveries of
    /// a launched pipeline.
    pub(super) fn with_workers<F, Fut, E>(
        pipeline: Pipeline,
        deliveries: mpsc::UnboundedReceiver<Delivery>,
        concurrency: usize,
        handler: F,
        shutdown_timeout: Duration,
    ) -> Consumer
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
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
        Consumer {
            core: pipeline.core.clone(),
            running: Some(RunningConsumer {
                pipeline,
                deliveries,
                workers,
                abandon,
            }),
            shutdown_timeout,
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
