//! Stream mode: [`ConsumerStream`], the deliveries of the receiver as a
//! `Stream`, for a hand-written loop that settles each one itself.
//!
//! The stream yields the receiver's error once, if it stopped on one that
//! retrying cannot fix, then ends. Shutdown (or dropping the stream)
//! releases what was received but not yielded, waits until the deadline
//! for the yielded deliveries to be settled, then releases the rest.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ConsumerSummary;
use super::delivery::Delivery;
use super::pipeline::{Core, Pipeline, finish};
use super::retry::copy;
use crate::Error;

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
    /// The stream of a launched pipeline's deliveries.
    pub(super) fn new(
        pipeline: Pipeline,
        deliveries: mpsc::UnboundedReceiver<Delivery>,
        shutdown_timeout: Duration,
    ) -> ConsumerStream {
        ConsumerStream {
            core: pipeline.core.clone(),
            deliveries,
            pipeline: Some(pipeline),
            error_reported: false,
            shutdown_timeout,
        }
    }

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
