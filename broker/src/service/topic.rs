//! `broker.v1.TopicService` over the engine's topic operations.
//!
//! Every handler first checks the caller's permission (`crate::auth`; the
//! table of what each RPC needs is there).

use std::sync::Arc;

use broker_proto::pb;
use tonic::{Request, Response, Status};

use super::{run_batch, status, trace};
use crate::auth::{self, Permission};
use crate::engine::topics::{SubscriptionInfo, TopicInfo};
use crate::engine::{Engine, NewPublication};

pub struct TopicApi {
    engine: Arc<Engine>,
}

impl TopicApi {
    pub fn new(engine: Arc<Engine>) -> TopicApi {
        TopicApi { engine }
    }
}

type Reply<T> = Result<Response<T>, Status>;

impl From<TopicInfo> for pb::Topic {
    fn from(t: TopicInfo) -> pb::Topic {
        pb::Topic {
            name: t.name,
            created_at_ms: t.created_at_ms,
        }
    }
}

impl From<SubscriptionInfo> for pb::Subscription {
    fn from(s: SubscriptionInfo) -> pb::Subscription {
        pb::Subscription {
            id: s.id,
            topic: s.topic,
            queue: s.queue,
            filter_policy: s.filter_policy,
            raw_delivery: s.raw_delivery,
        }
    }
}

#[tonic::async_trait]
impl pb::topic_service_server::TopicService for TopicApi {
    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> Reply<pb::CreateTopicResponse> {
        trace::record_topic(&req.get_ref().name);
        auth::require_admin(&req)?;
        let topic = self
            .engine
            .create_topic(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateTopicResponse {
            topic: Some(topic.into()),
        }))
    }

    async fn get_topic(&self, req: Request<pb::GetTopicRequest>) -> Reply<pb::GetTopicResponse> {
        trace::record_topic(&req.get_ref().name);
        auth::caller(&req)?.require_topic_visible(&req.get_ref().name)?;
        let (topic, subscription_count) = self
            .engine
            .get_topic(&req.into_inner().name)
            .map_err(status)?;
        Ok(Response::new(pb::GetTopicResponse {
            topic: Some(topic.into()),
            subscription_count,
        }))
    }

    async fn list_topics(
        &self,
        req: Request<pb::ListTopicsRequest>,
    ) -> Reply<pb::ListTopicsResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let (topics, next_page_token) = self
            .engine
            .list_topics(&req.prefix, req.page_size, &req.page_token)
            .map_err(status)?;
        // Only the topics the caller may see (a page may come back short).
        Ok(Response::new(pb::ListTopicsResponse {
            topics: topics
                .into_iter()
                .filter(|t| caller.may_see_topic(&t.name))
                .map(Into::into)
                .collect(),
            next_page_token,
        }))
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Reply<pb::DeleteTopicResponse> {
        trace::record_topic(&req.get_ref().name);
        auth::require_admin(&req)?;
        self.engine
            .delete_topic(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Reply<pb::SubscribeResponse> {
        trace::record_topic(&req.get_ref().topic);
        auth::require_admin(&req)?;
        let req = req.into_inner();
        let sub = self
            .engine
            .subscribe(&req.topic, &req.queue, &req.filter_policy, req.raw_delivery)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SubscribeResponse {
            subscription: Some(sub.into()),
        }))
    }

    async fn unsubscribe(
        &self,
        req: Request<pb::UnsubscribeRequest>,
    ) -> Reply<pb::UnsubscribeResponse> {
        auth::require_admin(&req)?;
        self.engine
            .unsubscribe(&req.into_inner().subscription_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UnsubscribeResponse {}))
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Reply<pb::ListSubscriptionsResponse> {
        let caller = auth::caller(&req)?;
        let req = req.into_inner();
        let (subs, next_page_token) = self
            .engine
            .list_subscriptions(&req.topic, &req.queue, req.page_size, &req.page_token)
            .map_err(status)?;
        // Only subscriptions whose topic or queue the caller may see.
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subs
                .into_iter()
                .filter(|s| caller.may_see_topic(&s.topic) || caller.may_see_queue(&s.queue))
                .map(Into::into)
                .collect(),
            next_page_token,
        }))
    }

    async fn publish(&self, req: Request<pb::PublishRequest>) -> Reply<pb::PublishResponse> {
        trace::record_topic(&req.get_ref().topic);
        auth::require(&req, Permission::Publish, &req.get_ref().topic)?;
        let req = req.into_inner();
        let message = NewPublication {
            body: req.body,
            attributes: req.attributes,
        };
        let mut results = self
            .engine
            .publish(&req.topic, vec![message])
            .await
            .map_err(status)?;
        let published = results.remove(0).map_err(status)?;
        Ok(Response::new(pb::PublishResponse {
            message_id: published.message_id,
            delivered: published.delivered,
        }))
    }

    async fn publish_batch(
        &self,
        req: Request<pb::PublishBatchRequest>,
    ) -> Reply<pb::PublishBatchResponse> {
        trace::record_topic(&req.get_ref().topic);
        auth::require(&req, Permission::Publish, &req.get_ref().topic)?;
        let req = req.into_inner();
        let (successful, failed) = run_batch(
            req.entries,
            |e| &e.id,
            async |entries| {
                let messages = entries
                    .iter()
                    .map(|e| NewPublication {
                        body: e.body.clone(),
                        attributes: e.attributes.clone(),
                    })
                    .collect();
                self.engine.publish(&req.topic, messages).await
            },
        )
        .await?;
        Ok(Response::new(pb::PublishBatchResponse {
            successful: successful
                .into_iter()
                .map(|(id, p)| pb::PublishBatchResultEntry {
                    id,
                    message_id: p.message_id,
                    delivered: p.delivered,
                })
                .collect(),
            failed,
        }))
    }
}
