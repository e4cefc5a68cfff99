//! Topics on the engine: create, delete, subscribe, and the atomic fan-out
//! of a publish into the subscribed queues.
//!
//! Topics and subscriptions live under the engine lock beside the queues,
//! so a publish sees one consistent set of subscriptions and writes all
//! of its copies in one batch: a crash, or a topic or queue deleted at the
//! same moment, leaves either every copy or none. A publish to N queues
//! costs one durable sync, not N.
//!
//! Beside it: [`filter`] (subscription filter policies), [`envelope`] (the
//! JSON envelope of a copy that is not raw) and `records` (the stored
//! topic and subscription, and what clients see of them).

pub mod envelope;
pub mod filter;
mod records;

use std::collections::HashMap;

use bytes::Bytes;

use super::command::{self, Op};
use super::counters::TopicCounters;
use super::error::{Error, Result};
use super::ids::QueueId;
use super::messages::enqueue;
use super::queues::{by_name, paginate};
use super::replication::Kind;
use super::state::State;
use super::{Engine, Written, room, validate};
use crate::storage::{Store, keys};
use filter::FilterPolicy;
pub use records::{
    SubscriptionInfo, SubscriptionRecord, TopicInfo, TopicRecord, format_subscription_id,
    parse_subscription_id,
};

pub(super) struct Topic {
    created_at_ms: u64,
    /// Ids of its subscriptions, in creation order.
    subscriptions: Vec<u64>,
    /// Publishes since the process started, for the metrics.
    pub(super) counters: TopicCounters,
}

pub(super) struct Subscription {
    record: SubscriptionRecord,
    /// Parsed once at subscribe time (or at startup); `None` matches all.
    filter: Option<FilterPolicy>,
}

impl Subscription {
    fn info(&self, id: u64) -> SubscriptionInfo {
        self.record.info(id)
    }
}

impl SubscriptionRecord {
    fn info(&self, id: u64) -> SubscriptionInfo {
        SubscriptionInfo {
            id: format_subscription_id(id),
            topic: self.topic.clone(),
            queue: self.queue.clone(),
            filter_policy: self.filter_policy.clone(),
            raw_delivery: self.raw_delivery,
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct NewPublication {
    pub body: Bytes,
    pub attributes: HashMap<String, String>,
}

/// The outcome of one published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub message_id: String,
    /// Copies written: one per subscribed queue whose filter matched.
    pub delivered: u32,
}

fn parse_filter(policy: &str) -> Result<Option<FilterPolicy>> {
    if policy.trim().is_empty() {
        Ok(None)
    } else {
        FilterPolicy::parse(policy).map(Some)
    }
}

/// Rebuilds topics and subscriptions from the store; returns the highest
/// subscription id seen (ids come from the seq counter).
pub(super) fn recover(store: &Store, st: &mut State) -> Result<u64> {
    for item in store.scan_prefix(&[keys::TOPIC_PREFIX]) {
        let (key, value) = item?;
        let Some(name) = keys::decode_topic(&key) else {
            continue;
        };
        let rec: TopicRecord = super::records::decode(&key, &value)?;
        insert_topic(st, name, rec.created_at_ms);
    }
    let mut max_id = 0;
    for item in store.scan_prefix(&[keys::SUBSCRIPTION_PREFIX]) {
        let (key, value) = item?;
        let Some(id) = keys::decode_subscription(&key) else {
            continue;
        };
        let record: SubscriptionRecord = super::records::decode(&key, &value)?;
        max_id = max_id.max(id);
        insert_subscription(st, id, record)?;
    }
    Ok(max_id)
}

/// Adds a topic to memory (its record is written by the caller).
pub(super) fn insert_topic(st: &mut State, name: &str, created_at_ms: u64) {
    st.topics.insert(
        name.to_string(),
        Topic {
            created_at_ms,
            subscriptions: Vec::new(),
            counters: TopicCounters::default(),
        },
    );
}

/// Adds a subscription to memory (its record is written by the caller),
/// parsing its filter policy; one of a topic that is gone is left out.
pub(super) fn insert_subscription(
    st: &mut State,
    id: u64,
    record: SubscriptionRecord,
) -> Result<()> {
    let filter =
        parse_filter(&record.filter_policy).map_err(|e| crate::storage::StorageError::Corrupt {
            key: format!("{:02x?}", keys::subscription(id)),
            reason: format!("stored filter policy no longer parses: {e}"),
        })?;
    let Some(topic) = st.topics.get_mut(&record.topic) else {
        return Ok(());
    };
    topic.subscriptions.push(id);
    st.subscriptions.insert(id, Subscription { record, filter });
    Ok(())
}

/// Topics and subscriptions as text, for the tests' state dumps.
#[cfg(test)]
pub(super) fn dump(st: &State, out: &mut String) {
    use std::fmt::Write as _;
    for (name, t) in &st.topics {
        writeln!(
            out,
            "topic {name:?} created {} subscriptions {:?}",
            t.created_at_ms, t.subscriptions
        )
        .unwrap();
    }
    for (id, s) in &st.subscriptions {
        writeln!(
            out,
            "subscription {id} {:?} filtered {}",
            s.record,
            s.filter.is_some()
        )
        .unwrap();
    }
}

/// Ids of the subscriptions of `topic`.
pub(super) fn subscriptions_of_topic(st: &State, topic: &str) -> Vec<u64> {
    st.topics
        .get(topic)
        .map_or_else(Vec::new, |t| t.subscriptions.clone())
}

/// Ids of the subscriptions that deliver into `queue`.
pub(super) fn subscriptions_of_queue(st: &State, queue: &str) -> Vec<u64> {
    st.subscriptions
        .iter()
        .filter(|(_, s)| s.record.queue == queue)
        .map(|(&id, _)| id)
        .collect()
}

/// Removes a subscription from memory (its record is deleted by the caller).
pub(super) fn forget_subscription(st: &mut State, id: u64) {
    if let Some(sub) = st.subscriptions.remove(&id)
        && let Some(topic) = st.topics.get_mut(&sub.record.topic)
    {
        topic.subscriptions.retain(|&s| s != id);
    }
}

/// The error for a topic `name` (given in the request field `field`) that
/// is not there: [`Error::InvalidName`] for a name no topic could have,
/// [`Error::TopicNotFound`] otherwise.
fn topic_not_found(field: &'static str, name: &str) -> Error {
    match validate::name_as(field, "topic name", name) {
        Err(e) => e,
        Ok(()) => Error::TopicNotFound {
            topic: name.to_string(),
        },
    }
}

impl Engine {
    /// Creates a topic; idempotent.
    pub async fn create_topic(&self, name: &str) -> Result<TopicInfo> {
        validate::queue_name("name", name)?;
        let (info, ticket) = {
            let mut st = self.decide(Kind::Barrier).await?;
            if let Some(t) = st.topics.get(name) {
                return Ok(TopicInfo {
                    name: name.to_string(),
                    created_at_ms: t.created_at_ms,
                });
            }
            let created_at_ms = self.now_ms();
            let create = command::CreateTopic {
                name: name.to_string(),
                created_at_ms,
            };
            let cmd = st.command(created_at_ms, Op::CreateTopic(create));
            let ticket = self.apply(&mut st, &cmd)?;
            (
                TopicInfo {
                    name: name.to_string(),
                    created_at_ms,
                },
                ticket,
            )
        };
        self.durable(ticket).await?;
        Ok(info)
    }

    /// A topic and its number of subscriptions.
    pub fn get_topic(&self, name: &str) -> Result<(TopicInfo, u32)> {
        let st = self.lock();
        let t = st
            .topics
            .get(name)
            .ok_or_else(|| topic_not_found("name", name))?;
        Ok((
            TopicInfo {
                name: name.to_string(),
                created_at_ms: t.created_at_ms,
            },
            t.subscriptions.len() as u32,
        ))
    }

    pub fn list_topics(
        &self,
        prefix: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<TopicInfo>, String)> {
        let st = self.lock();
        let items = by_name(&st.topics, prefix, page_token).map(|(n, t)| {
            (
                n.clone(),
                TopicInfo {
                    name: n.clone(),
                    created_at_ms: t.created_at_ms,
                },
            )
        });
        paginate(items, page_size)
    }

    /// Deletes a topic and its subscriptions; the queues stay.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let ticket = {
            let mut st = self.decide(Kind::Barrier).await?;
            if !st.topics.contains_key(name) {
                return Err(topic_not_found("name", name));
            }
            let delete = command::DeleteTopic {
                name: name.to_string(),
            };
            let cmd = st.command(self.now_ms(), Op::DeleteTopic(delete));
            self.apply(&mut st, &cmd)?
        };
        self.durable(ticket).await
    }

    /// Subscribes `queue` to `topic`; idempotent for equal settings.
    pub async fn subscribe(
        &self,
        topic: &str,
        queue: &str,
        filter_policy: &str,
        raw_delivery: bool,
    ) -> Result<SubscriptionInfo> {
        validate::queue_name("topic", topic)?;
        validate::queue_name("queue", queue)?;
        let filter = parse_filter(filter_policy)?;
        let (info, ticket) = {
            let mut st = self.decide(Kind::Barrier).await?;
            let t = st
                .topics
                .get(topic)
                .ok_or_else(|| topic_not_found("topic", topic))?;
            st.queue_id("queue", queue)?;
            if let Some(&id) = t
                .subscriptions
                .iter()
                .find(|id| st.subscriptions[id].record.queue == queue)
            {
                let existing = &st.subscriptions[&id];
                let same_filter = same_policy(&existing.record.filter_policy, filter_policy);
                if same_filter && existing.record.raw_delivery == raw_delivery {
                    return Ok(existing.info(id));
                }
                let setting = if same_filter {
                    format!("raw_delivery = {}", existing.record.raw_delivery)
                } else {
                    format!("filter_policy {:?}", existing.record.filter_policy)
                };
                return Err(Error::AlreadySubscribed {
                    queue: queue.to_string(),
                    topic: topic.to_string(),
                    setting,
                });
            }
            drop(filter); // parsed again, the same way, when applied
            let id = st.alloc_seqs(1);
            let record = SubscriptionRecord {
                topic: topic.to_string(),
                queue: queue.to_string(),
                filter_policy: filter_policy.to_string(),
                raw_delivery,
            };
            let info = record.info(id);
            let cmd = st.command(
                self.now_ms(),
                Op::Subscribe(command::Subscribe { id, record }),
            );
            (info, self.apply(&mut st, &cmd)?)
        };
        self.durable(ticket).await?;
        Ok(info)
    }

    pub async fn unsubscribe(&self, subscription_id: &str) -> Result<()> {
        let Some(id) = parse_subscription_id(subscription_id) else {
            return Err(Error::invalid(
                "subscription_id",
                format!("must be the 16 hex digits Subscribe returned; got {subscription_id:?}"),
            ));
        };
        let ticket = {
            let mut st = self.decide(Kind::Barrier).await?;
            if !st.subscriptions.contains_key(&id) {
                return Err(Error::SubscriptionNotFound {
                    id: subscription_id.to_string(),
                });
            }
            let cmd = st.command(self.now_ms(), Op::Unsubscribe(command::Unsubscribe { id }));
            self.apply(&mut st, &cmd)?
        };
        self.durable(ticket).await
    }

    /// Subscriptions in id order, optionally of one topic and/or one queue.
    pub fn list_subscriptions(
        &self,
        topic: &str,
        queue: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<SubscriptionInfo>, String)> {
        let after = match page_token {
            "" => None,
            t => match parse_subscription_id(t) {
                Some(id) => Some(id),
                None => {
                    return Err(Error::invalid(
                        "page_token",
                        "is malformed: pass the next_page_token of the previous page",
                    ));
                }
            },
        };
        let st = self.lock();
        let items = st
            .subscriptions
            .range(after.map_or(0, |a| a + 1)..)
            .filter(|(_, s)| {
                (topic.is_empty() || s.record.topic == topic)
                    && (queue.is_empty() || s.record.queue == queue)
            })
            .map(|(&id, s)| (format_subscription_id(id), s.info(id)));
        paginate(items, page_size)
    }

    /// Publishes messages to a topic: each message's copies go into every
    /// subscribed queue whose filter matches, and all messages' copies are
    /// written in one atomic, durable batch. A message fails alone (e.g. a
    /// copy over a queue's size limit): then no queue gets a copy of it.
    pub async fn publish(
        &self,
        topic: &str,
        messages: Vec<NewPublication>,
    ) -> Result<Vec<Result<Published>>> {
        let (results, written) = self.publish_written(topic, messages).await?;
        self.acknowledged(written).await?;
        Ok(results)
    }

    /// [`Engine::publish`] up to its write: the results are not
    /// acknowledged before [`Engine::acknowledged`] returns for the
    /// [`Written`].
    pub async fn publish_written(
        &self,
        topic: &str,
        messages: Vec<NewPublication>,
    ) -> Result<(Vec<Result<Published>>, Written)> {
        self.disk.check()?;
        let (results, ticket) = {
            let mut st = self.decide(Kind::Pipelined).await?;
            let now = self.now_ms();
            let t = st
                .topics
                .get(topic)
                .ok_or_else(|| topic_not_found("topic", topic))?;
            let targets: Vec<Target> = t
                .subscriptions
                .iter()
                .filter_map(|id| {
                    let s = &st.subscriptions[id];
                    let queue_id = *st.names.get(&s.record.queue)?;
                    let q = &st.queues[&queue_id];
                    Some(Target {
                        queue_id,
                        queue: q.name.clone(),
                        max_message_bytes: q.attributes.max_message_bytes,
                        delay_seconds: q.attributes.delay_seconds,
                        raw_delivery: s.record.raw_delivery,
                        filter: s.filter.clone(),
                    })
                })
                .collect();
            let mut copies = Vec::new();
            let results: Vec<Result<Published>> = messages
                .into_iter()
                .map(|m| fan_out(&mut st, &mut copies, topic, &targets, m, now))
                .collect();
            room::check(
                &st,
                &self.cap,
                copies.iter().map(|c| (QueueId(c.queue_id), 1)),
                copies.len() as u64,
            )?;
            let ticket = self.send_placed(&mut st, copies, now)?;
            if let Some(t) = st.topics.get_mut(topic) {
                for p in results.iter().flatten() {
                    t.counters.published += 1;
                    t.counters.delivered += u64::from(p.delivered);
                }
            }
            (results, ticket)
        };
        Ok((results, Written(ticket)))
    }
}

/// A queue a publish delivers into, resolved once per publish.
struct Target {
    queue_id: QueueId,
    queue: String,
    max_message_bytes: u32,
    delay_seconds: u32,
    raw_delivery: bool,
    /// `None` matches every message.
    filter: Option<FilterPolicy>,
}

/// Adds the copies of one message to `copies`, or none if any is invalid.
fn fan_out(
    st: &mut State,
    copies: &mut Vec<command::Enqueue>,
    topic: &str,
    targets: &[Target],
    m: NewPublication,
    now: u64,
) -> Result<Published> {
    // The largest limit a copy can have: the per-queue check comes below.
    validate::message(
        &m.body,
        &m.attributes,
        broker_proto::limits::MAX_MESSAGE_BYTES_MAX,
    )?;
    let message_id = uuid::Uuid::new_v4().to_string();
    let mut envelope_body: Option<Bytes> = None;
    let mut these = Vec::new();
    for target in targets {
        if target
            .filter
            .as_ref()
            .is_some_and(|f| !f.matches(&m.attributes))
        {
            continue;
        }
        let (body, attributes) = if target.raw_delivery {
            (m.body.clone(), m.attributes.clone())
        } else {
            let body = envelope_body
                .get_or_insert_with(|| {
                    envelope::envelope(topic, &message_id, &m.body, &m.attributes, now).into()
                })
                .clone();
            (body, HashMap::new())
        };
        let size = body.len()
            + attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let max_bytes = target.max_message_bytes;
        if size > max_bytes as usize {
            return Err(Error::CopyTooLarge {
                queue: target.queue.clone(),
                size,
                max: max_bytes,
            });
        }
        these.push((target, body, attributes));
    }
    let delivered = these.len() as u32;
    for (target, body, attributes) in these {
        let record = super::records::BodyRecord {
            message_id: message_id.clone(),
            body,
            attributes,
            sent_at_ms: now,
            dead_letter_source: String::new(),
        };
        copies.push(enqueue(
            st,
            target.queue_id,
            record,
            target.delay_seconds,
            now,
        ));
    }
    Ok(Published {
        message_id,
        delivered,
    })
}

/// Whether two filter policies are the same: equal as JSON values (so
/// spacing and key order do not matter), or both empty.
fn same_policy(a: &str, b: &str) -> bool {
    if a.trim().is_empty() || b.trim().is_empty() {
        return a.trim().is_empty() && b.trim().is_empty();
    }
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
