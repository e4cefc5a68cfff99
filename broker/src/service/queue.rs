//! `broker.v1.QueueService` over the queue engine.
//!
//! Every handler first checks the caller's permission (`crate::auth`; the
//! table of what each RPC needs is there), then the per-connection and
//! per-broker limits (`crate::limits`), then calls the engine.

use std::sync::Arc;

use broker_proto::pb;
use tonic::{Request, Response, Status};

use super::{deadline, run_batch, status, trace};
use crate::auth::{self, Permission};
use crate::config::Limits;
use crate::engine::{
    AttributeChanges, Engine, MessageState, NewMessage, Peeked, QueueInfo, QueueStats,
    ReceiveOptions, Received, RedrivePolicy, RetryPolicy,
};
use crate::limits::{LongPolls, Streams};

pub struct QueueApi {
    engine: Arc<Engine>,
    /// Open `StreamMessages` and `SendStream` streams (`max_streams`).
    streams: Streams,
    /// Waiting receives per connection (`max_long_polls_per_connection`).
    long_polls: LongPolls,
}

impl QueueApi {
    /// The service with the default [`Limits`].
    pub fn new(engine: Arc<Engine>) -> QueueApi {
        QueueApi::with_limits(engine, &Limits::default())
    }

    /// The service enforcing `limits.max_streams` and
    /// `limits.max_long_polls_per_connection`.
    pub fn with_limits(engine: Arc<Engine>, limits: &Limits) -> QueueApi {
        QueueApi {
            engine,
            streams: Streams::new(limits.max_streams),
            long_polls: LongPolls::new(limits.max_long_polls_per_connection),
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn changes(a: Option<pb::QueueAttributes>) -> AttributeChanges {
    let a = a.unwrap_or_default();
    AttributeChanges {
        visibility_timeout_seconds: a.visibility_timeout_seconds,
        message_retention_seconds: a.message_retention_seconds,
        delay_seconds: a.delay_seconds,
        receive_wait_time_seconds: a.receive_wait_time_seconds,
        max_message_bytes: a.max_message_bytes,
        redrive_policy: if a.clear_redrive_policy {
            Some(None)
        } else {
            a.redrive_policy.map(|p| {
                Some(RedrivePolicy {
                    dead_letter_queue: p.dead_letter_queue,
                    max_receive_count: p.max_receive_count,
                })
            })
        },
        max_receive_rate: a.max_receive_rate,
        max_receive_burst: a.max_receive_burst,
        retry_policy: if a.clear_retry_policy {
            Some(None)
        } else {
            a.retry_policy.map(|p| {
                Some(RetryPolicy {
                    min_backoff_seconds: p.min_backoff_seconds,
                    max_backoff_seconds: p.max_backoff_seconds,
                })
            })
        },
        max_messages: a.max_messages,
    }
}

impl From<QueueInfo> for pb::Queue {
    fn from(q: QueueInfo) -> pb::Queue {
        let a = q.attributes;
        pb::Queue {
            name: q.name,
            attributes: Some(pb::QueueAttributes {
                visibility_timeout_seconds: Some(a.visibility_timeout_seconds),
                message_retention_seconds: Some(a.message_retention_seconds),
                delay_seconds: Some(a.delay_seconds),
                receive_wait_time_seconds: Some(a.receive_wait_time_seconds),
                max_message_bytes: Some(a.max_message_bytes),
                redrive_policy: a.redrive_policy.map(|p| pb::RedrivePolicy {
                    dead_letter_queue: p.dead_letter_queue,
                    max_receive_count: p.max_receive_count,
                }),
                clear_redrive_policy: false,
                max_receive_rate: Some(a.max_receive_rate),
                max_receive_burst: Some(a.max_receive_burst),
                retry_policy: a.retry_policy.map(|p| pb::RetryPolicy {
                    min_backoff_seconds: p.min_backoff_seconds,
                    max_backoff_seconds: p.max_backoff_seconds,
                }),
                clear_retry_policy: false,
                max_messages: Some(a.max_messages),
            }),
            created_at_ms: q.created_at_ms,
        }
    }
}

impl From<QueueStats> for pb::QueueStats {
    fn from(s: QueueStats) -> pb::QueueStats {
        pb::QueueStats {
            visible: s.visible,
            in_flight: s.in_flight,
            delayed: s.delayed,
            oldest_message_age_seconds: s.oldest_message_age_seconds,
        }
    }
}

impl From<Received> for pb::ReceivedMessage {
    fn from(m: Received) -> pb::ReceivedMessage {
        pb::ReceivedMessage {
            message_id: m.message_id,
            receipt_handle: m.receipt_handle,
            body: m.body,
            attributes: m.attributes,
            receive_count: m.receive_count,
            sent_at_ms: m.sent_at_ms,
            first_received_at_ms: m.first_received_at_ms,
        }
    }
}

impl From<Peeked> for pb::PeekedMessage {
    fn from(m: Peeked) -> pb::PeekedMessage {
        let state = match m.state {
            MessageState::Visible => pb::MessageState::Visible,
            MessageState::InFlight => pb::MessageState::InFlight,
            MessageState::Delayed => pb::MessageState::Delayed,
        };
        pb::PeekedMessage {
            message_id: m.message_id,
            body: m.body,
            attributes: m.attributes,
            receive_count: m.receive_count,
            sent_at_ms: m.sent_at_ms,
            first_received_at_ms: m.first_received_at_ms,
            state: state.into(),
            visible_at_ms: m.visible_at_ms,
            dead_letter_source: m.dead_letter_source,
        }
    }
}

fn successes(ids: Vec<(String, ())>) -> Vec<pb::BatchResultSuccess> {
    ids.into_iter()
        .map(|(id, ())| pb::BatchResultSuccess { id })
        .collect()
}

/// The answers of a stream RPC, as its task sends them.
type Answers<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;
type MessageStream = Answers<pb::StreamMessagesResponse>;
type SendStream = Answers<pb::SendStreamResponse>;

/// Spawns a stream's task, which holds the stream's `max_streams` slot
/// until it ends, and answers with what the task sends on its channel.
fn serve_stream<T: Send + 'static, F>(
    slot: tokio::sync::OwnedSemaphorePermit,
    run: impl FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> F,
) -> Reply<Answers<T>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let run = run(tx);
    tokio::spawn(async move {
        run.await;
        drop(slot);
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

#[tonic::async_trait]
impl pb::queue_service_server::QueueService for QueueApi {
    type StreamMessagesStream = MessageStream;
    type SendStreamStream = SendStream;

    async fn send_stream(
        &self,
        req: Request<tonic::Streaming<pb::SendStreamRequest>>,
    ) -> Reply<SendStream> {
        use super::send_stream::Target;
        let caller = auth::caller(&req)?;
        // Taken before the stream does anything, held by its task.
        let slot = self.streams.open()?;
        let mut inbound = req.into_inner();
        let open = super::send_stream::open(inbound.message().await?)?;
        trace::record_queue(open.target.name());
        // The target must exist now: fail the call, not the first message.
        match &open.target {
            Target::Queue(queue) => {
                caller.require(Permission::Send, queue)?;
                self.engine.get_queue(queue).map_err(status)?;
            }
            Target::Topic(topic) => {
                caller.require(Permission::Publish, topic)?;
                self.engine.get_topic(topic).map_err(status)?;
            }
        }
        let engine = self.engine.clone();
        serve_stream(slot, |tx| {
            super::send_stream::run(engine, open, inbound, tx)
        })
    }

    async fn stream_messages(
        &self,
        req: Request<tonic::Streaming<pb::StreamMessagesRequest>>,
    ) -> Reply<MessageStream> {
        let caller = auth::caller(&req)?;
        // Taken before the stream does anything, held by its task.
        let slot = self.streams.open()?;
        let mut inbound = req.into_inner();
        let open = super::stream::open(inbound.message().await?)?;
        trace::record_queue(&open.queue);
        caller.require(Permission::Receive, &open.queue)?;
        // The queue must exist now: fail the call, not the first push.
        self.engine.get_queue(&open.queue).map_err(status)?;
        let engine = self.engine.clone();
        serve_stream(slot, |tx| super::stream::run(engine, open, inbound, tx))
    }

    async fn create_queue(
        &self,
        req: Request<pb::CreateQueueRequest>,
    ) -> Reply<pb::CreateQueueResponse> {
        trace::record_queue(&req.get_ref().name);
        auth::require_admin(&req)?;
        let req = req.into_inner();
        let q = self
            .engine
            .create_queue(&req.name, &changes(req.attributes))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateQueueResponse {
            queue: Some(q.into()),
        }))
    }

    async fn get_queue(&self, req: Request<pb::GetQueueRequest>) -> Reply<pb::GetQueueResponse> {
        trace::record_queue(&req.get_ref().name);
        auth::caller(&req)?.require_queue_visible(&req.get_ref().name)?;
        let (q, stats) = self
            .engine
            .get_queue(&req.into_inner().name)
            .map_err(status)?;
        Ok(Response::new(pb::GetQueueResponse {
            queue: Some(q.into()),
            stats: Some(stats.into()),
        }))
    }

    async fn get_broker_stats(
        &self,
        req: Request<pb::GetBrokerStatsRequest>,
    ) -> Reply<pb::GetBrokerStatsResponse> {
        auth::caller(&req)?;
        let s = self.engine.broker_stats();
        Ok(Response::new(pb::GetBrokerStatsResponse {
            queues: s.queues,
            messages: s.messages,
            max_messages: s.max_messages,
            disk_free_bytes: s.disk_free,
            min_free_disk_bytes: s.min_free_disk,
            disk_low: s.disk_low,
        }))
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Reply<pb::ListQueuesResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let (queues, next_page_token) = self
            .engine
            .list_queues(&req.prefix, req.page_size, &req.page_token)
            .map_err(status)?;
        // Only the queues the caller may see: a page may come back short,
        // and `next_page_token` still continues after the whole page.
        Ok(Response::new(pb::ListQueuesResponse {
            queues: queues
                .into_iter()
                .filter(|q| caller.may_see_queue(&q.name))
                .map(Into::into)
                .collect(),
            next_page_token,
        }))
    }

    async fn update_queue(
        &self,
        req: Request<pb::UpdateQueueRequest>,
    ) -> Reply<pb::UpdateQueueResponse> {
        trace::record_queue(&req.get_ref().name);
        auth::require_admin(&req)?;
        let req = req.into_inner();
        let q = self
            .engine
            .update_queue(&req.name, &changes(req.attributes))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateQueueResponse {
            queue: Some(q.into()),
        }))
    }

    async fn delete_queue(
        &self,
        req: Request<pb::DeleteQueueRequest>,
    ) -> Reply<pb::DeleteQueueResponse> {
        trace::record_queue(&req.get_ref().name);
        auth::require_admin(&req)?;
        self.engine
            .delete_queue(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteQueueResponse {}))
    }

    async fn purge_queue(
        &self,
        req: Request<pb::PurgeQueueRequest>,
    ) -> Reply<pb::PurgeQueueResponse> {
        trace::record_queue(&req.get_ref().name);
        auth::require_admin(&req)?;
        self.engine
            .purge_queue(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PurgeQueueResponse {}))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Reply<pb::SendMessageResponse> {
        trace::record_queue(&req.get_ref().queue);
        auth::require(&req, Permission::Send, &req.get_ref().queue)?;
        let req = req.into_inner();
        let message = NewMessage {
            body: req.body,
            attributes: req.attributes,
            delay_seconds: req.delay_seconds,
        };
        let mut results = self
            .engine
            .send(&req.queue, vec![message])
            .await
            .map_err(status)?;
        let message_id = results.remove(0).map_err(status)?;
        Ok(Response::new(pb::SendMessageResponse { message_id }))
    }

    async fn send_message_batch(
        &self,
        req: Request<pb::SendMessageBatchRequest>,
    ) -> Reply<pb::SendMessageBatchResponse> {
        trace::record_queue(&req.get_ref().queue);
        auth::require(&req, Permission::Send, &req.get_ref().queue)?;
        let req = req.into_inner();
        let (successful, failed) = run_batch(
            req.entries,
            |e| &e.id,
            async |entries| {
                let messages = entries
                    .iter()
                    .map(|e| NewMessage {
                        body: e.body.clone(),
                        attributes: e.attributes.clone(),
                        delay_seconds: e.delay_seconds,
                    })
                    .collect();
                self.engine.send(&req.queue, messages).await
            },
        )
        .await?;
        Ok(Response::new(pb::SendMessageBatchResponse {
            successful: successful
                .into_iter()
                .map(|(id, message_id)| pb::SendMessageBatchResultEntry { id, message_id })
                .collect(),
            failed,
        }))
    }

    async fn receive_messages(
        &self,
        req: Request<pb::ReceiveMessagesRequest>,
    ) -> Reply<pb::ReceiveMessagesResponse> {
        trace::record_queue(&req.get_ref().queue);
        auth::require(&req, Permission::Receive, &req.get_ref().queue)?;
        // Only a receive that may wait takes a slot: one that gives no wait
        // time waits for as long as its queue says.
        let waits = match req.get_ref().wait_time_seconds {
            Some(seconds) => seconds > 0,
            None => {
                let queue = &req.get_ref().queue;
                self.engine.receive_wait_seconds(queue).map_err(status)? > 0
            }
        };
        // Held until the receive returns or its future is dropped.
        let _long_poll = if waits {
            self.long_polls.start(req.remote_addr())?
        } else {
            None
        };
        let wait_limit = deadline::wait_limit(req.metadata());
        let req = req.into_inner();
        let opts = ReceiveOptions {
            max_messages: req.max_messages,
            visibility_timeout_seconds: req.visibility_timeout_seconds,
            wait_time_seconds: req.wait_time_seconds,
            wait_limit,
        };
        let _open = self.engine.long_poll_opened();
        let messages = self
            .engine
            .receive(&req.queue, opts)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReceiveMessagesResponse {
            messages: messages.into_iter().map(Into::into).collect(),
        }))
    }

    async fn delete_message(
        &self,
        req: Request<pb::DeleteMessageRequest>,
    ) -> Reply<pb::DeleteMessageResponse> {
        trace::record_queue(&req.get_ref().queue);
        auth::require(&req, Permission::Receive, &req.get_ref().queue)?;
        let req = req.into_inner();
        let mut results = self
            .engine
            .delete(&req.queue, &[req.receipt_handle.as_str()])
            .await
            .map_err(status)?;
        results.remove(0).map_err(status)?;
        Ok(Response::new(pb::DeleteMessageResponse {}))
    }

    async fn delete_message_batch(
        &self,
        req: Request<pb::DeleteMessageBatchRequest>,
    ) -> Reply<pb::DeleteMessageBatchResponse> {
        trace::record_queue(&req.get_ref().queue);
        auth::require(&req, Permission::Receive, &req.get_ref().queue)?;
        let req = req.into_inner();
        let (successful, failed) = run_batch(
            req.entries,
            |e| &e.id,
            async |entries| {
                let handles: Vec<&str> =
                    entries.iter().map(|e| e.receipt_handle.as_str()).collect();
                self.engine.delete(&req.queue, &handles).await
            },
        )
        .await?;
        Ok(Response::new(pb::DeleteMessageBatchResponse {
            successful: successes(successful),
            failed,
        }))
    }

    async fn change_message_visibility(
        &self,
        req: Request<pb::ChangeMessageVisibilityRequest>,
    ) -> Reply<pb::ChangeMessageVisibilityResponse> {
        trace::record_queue(&req.get_ref().queue);
        auth::require(&req, Permission::Receive, &req.get_ref().queue)?;
        let req = req.into_inner();
        let mut results = self
            .engine
            .change_visibility(
                &req.queue,
                &[(req.receipt_handle.as_str(), req.visibility_timeout_seconds)],
            )
            .await
            .map_err(status)?;
        results.remove(0).map_err(status)?;
        Ok(Response::new(pb::ChangeMessageVisibilityResponse {}))
    }

    async fn change_message_visibility_batch(
        &self,
        req: Request<pb::ChangeMessageVisibilityBatchRequest>,
    ) -> Reply<pb::ChangeMessageVisibilityBatchResponse> {
        trace::record_queue(&req.get_ref().queue);
        auth::require(&req, Permission::Receive, &req.get_ref().queue)?;
        let req = req.into_inner();
        let (successful, failed) = run_batch(
            req.entries,
            |e| &e.id,
            async |entries| {
                let changes: Vec<(&str, u32)> = entries
                    .iter()
                    .map(|e| (e.receipt_handle.as_str(), e.visibility_timeout_seconds))
                    .collect();
                self.engine.change_visibility(&req.queue, &changes).await
            },
        )
        .await?;
        Ok(Response::new(pb::ChangeMessageVisibilityBatchResponse {
            successful: successes(successful),
            failed,
        }))
    }

    async fn redrive_messages(
        &self,
        req: Request<pb::RedriveMessagesRequest>,
    ) -> Reply<pb::RedriveMessagesResponse> {
        trace::record_queue(&req.get_ref().source_queue);
        auth::require_admin(&req)?;
        let req = req.into_inner();
        let moved = self
            .engine
            .redrive(&req.source_queue, &req.destination_queue, req.max_messages)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RedriveMessagesResponse { moved }))
    }

    async fn peek_messages(
        &self,
        req: Request<pb::PeekMessagesRequest>,
    ) -> Reply<pb::PeekMessagesResponse> {
        trace::record_queue(&req.get_ref().queue);
        auth::require(&req, Permission::Receive, &req.get_ref().queue)?;
        let req = req.into_inner();
        let (messages, next_page_token) = self
            .engine
            .peek(&req.queue, req.max_messages, &req.page_token)
            .map_err(status)?;
        Ok(Response::new(pb::PeekMessagesResponse {
            messages: messages.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}
