//! Topics and their subscriptions: `broker topic create|list|get|delete`,
//! `subscribe`, `unsubscribe`, `subscriptions` and `publish`.
//!
//! Filter policies are checked by the broker only (at `subscribe`); the CLI
//! passes them on as given, or as read from `--filter @FILE`.

use std::fmt::Write as _;

use anyhow::Context as _;
use broker_client::limits::PAGE_SIZE_MAX;
use broker_client::{Client, pb};
use serde_json::{Value, json};

use crate::args::{FilterArg, TopicCommand, attribute_map};
use crate::error::{failure, failure_of};
use crate::format::{table, timestamp};
use crate::messages::read_body;
use crate::output::Output;

/// Runs `broker topic ...`.
pub(crate) async fn run(client: &Client, out: Output, cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create { name } => {
            let topic = client
                .create_topic(pb::CreateTopicRequest { name: name.clone() })
                .await
                .map_err(|e| failure_of(e, Some(("topic", &name))))?
                .topic
                .context("the broker returned no topic")?;
            out.print(
                || topic_text(&topic, None),
                || json!({ "topic": topic_json(&topic) }),
            )
        }
        TopicCommand::List { prefix } => {
            let topics = client
                .list_all_topics(pb::ListTopicsRequest {
                    prefix,
                    page_size: PAGE_SIZE_MAX,
                    page_token: String::new(),
                })
                .await
                .map_err(|e| failure(e, None))?;
            out.print(
                || topics_table(&topics),
                || {
                    let list: Vec<Value> = topics.iter().map(topic_json).collect();
                    json!({ "topics": list })
                },
            )
        }
        TopicCommand::Get { name } => {
            let resp = client
                .get_topic(pb::GetTopicRequest { name: name.clone() })
                .await
                .map_err(|e| failure_of(e, Some(("topic", &name))))?;
            let topic = resp.topic.context("the broker returned no topic")?;
            out.print(
                || topic_text(&topic, Some(resp.subscription_count)),
                || {
                    json!({
                        "topic": topic_json(&topic),
                        "subscription_count": resp.subscription_count,
                    })
                },
            )
        }
        TopicCommand::Delete { name } => {
            client
                .delete_topic(pb::DeleteTopicRequest { name: name.clone() })
                .await
                .map_err(|e| failure_of(e, Some(("topic", &name))))?;
            out.done(|| format!("deleted topic '{name}'\n"))
        }
    }
}

/// `subscribe`: subscribes `queue` to `topic` and prints the subscription's id.
pub(crate) async fn subscribe(
    client: &Client,
    out: Output,
    topic: String,
    queue: String,
    filter: Option<FilterArg>,
    raw: bool,
) -> anyhow::Result<()> {
    let filter_policy = filter
        .as_ref()
        .map(FilterArg::resolve)
        .transpose()?
        .unwrap_or_default();
    let subscription = client
        .subscribe(pb::SubscribeRequest {
            topic,
            queue,
            filter_policy,
            raw_delivery: raw,
        })
        .await
        // NOT_FOUND may be about the topic or the queue: let the broker say which.
        .map_err(|e| failure(e, None))?
        .subscription
        .context("the broker returned no subscription")?;
    out.print(
        || format!("{}\n", subscription.id),
        || json!({ "subscription": subscription_json(&subscription) }),
    )
}

/// `unsubscribe`: removes a subscription by its id.
pub(crate) async fn unsubscribe(client: &Client, out: Output, id: String) -> anyhow::Result<()> {
    client
        .unsubscribe(pb::UnsubscribeRequest {
            subscription_id: id.clone(),
        })
        .await
        .map_err(|e| failure_of(e, Some(("subscription", &id))))?;
    out.done(|| format!("deleted subscription '{id}'\n"))
}

/// `subscriptions`: every subscription, of one topic and/or one queue.
pub(crate) async fn subscriptions(
    client: &Client,
    out: Output,
    topic: Option<String>,
    queue: Option<String>,
) -> anyhow::Result<()> {
    let only = match (&topic, &queue) {
        (Some(topic), None) => Some(("topic", topic.as_str())),
        (None, Some(queue)) => Some(("queue", queue.as_str())),
        _ => None,
    };
    let subscriptions = client
        .list_all_subscriptions(pb::ListSubscriptionsRequest {
            topic: topic.clone().unwrap_or_default(),
            queue: queue.clone().unwrap_or_default(),
            page_size: PAGE_SIZE_MAX,
            page_token: String::new(),
        })
        .await
        .map_err(|e| failure_of(e, only))?;
    out.print(
        || subscriptions_table(&subscriptions),
        || {
            let list: Vec<Value> = subscriptions.iter().map(subscription_json).collect();
            json!({ "subscriptions": list })
        },
    )
}

/// `publish`: publishes one message (the body from stdin when not given)
/// and prints its id and how many copies were delivered.
pub(crate) async fn publish(
    client: &Client,
    out: Output,
    topic: String,
    body: Option<String>,
    attrs: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let attributes = attribute_map(attrs)?;
    let body = read_body(body).await?;
    let resp = client
        .publish(&topic, body, attributes)
        .await
        .map_err(|e| failure_of(e, Some(("topic", &topic))))?;
    out.print(
        || publish_text(&resp),
        || {
            json!({
                "message_id": resp.message_id,
                "delivered": resp.delivered,
            })
        },
    )
}

fn topic_json(topic: &pb::Topic) -> Value {
    json!({
        "name": topic.name,
        "created_at_ms": topic.created_at_ms,
    })
}

fn subscription_json(s: &pb::Subscription) -> Value {
    json!({
        "id": s.id,
        "topic": s.topic,
        "queue": s.queue,
        "filter_policy": s.filter_policy,
        "raw_delivery": s.raw_delivery,
    })
}

/// `topic get` (with the subscription count) and `topic create` (without).
fn topic_text(topic: &pb::Topic, subscription_count: Option<u32>) -> String {
    let mut out = format!(
        "topic          {}\ncreated        {}\n",
        topic.name,
        timestamp(topic.created_at_ms)
    );
    if let Some(count) = subscription_count {
        let _ = writeln!(out, "subscriptions  {count}");
    }
    out
}

/// `topic list`: one row per topic.
fn topics_table(topics: &[pb::Topic]) -> String {
    if topics.is_empty() {
        return "no topics\n".to_owned();
    }
    let mut rows = vec![["NAME", "CREATED"].map(String::from)];
    for t in topics {
        rows.push([t.name.clone(), timestamp(t.created_at_ms)]);
    }
    table(&rows)
}

/// `subscriptions`: one row per subscription; the filter policy on one line.
fn subscriptions_table(subscriptions: &[pb::Subscription]) -> String {
    if subscriptions.is_empty() {
        return "no subscriptions\n".to_owned();
    }
    let mut rows = vec![["ID", "TOPIC", "QUEUE", "DELIVERY", "FILTER"].map(String::from)];
    for s in subscriptions {
        rows.push([
            s.id.clone(),
            s.topic.clone(),
            s.queue.clone(),
            if s.raw_delivery { "raw" } else { "envelope" }.to_owned(),
            one_line_policy(&s.filter_policy),
        ]);
    }
    table(&rows)
}

/// A filter policy on one line: compact JSON, or "-" when there is none.
fn one_line_policy(policy: &str) -> String {
    if policy.trim().is_empty() {
        return "-".to_owned();
    }
    match serde_json::from_str::<Value>(policy) {
        Ok(value) => value.to_string(),
        // The broker accepted it, so this should not happen; show it anyway.
        Err(_) => policy.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// `publish`: the message id on the first line (like `send`), then the copies.
fn publish_text(resp: &pb::PublishResponse) -> String {
    let copies = match resp.delivered {
        0 => "delivered 0 copies: no subscription matched".to_owned(),
        1 => "delivered 1 copy".to_owned(),
        n => format!("delivered {n} copies"),
    };
    format!("{}\n{copies}\n", resp.message_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_text_names_id_and_copies() {
        let resp = |delivered| pb::PublishResponse {
            message_id: "m1".into(),
            delivered,
        };
        assert_eq!(publish_text(&resp(3)), "m1\ndelivered 3 copies\n");
        assert_eq!(publish_text(&resp(1)), "m1\ndelivered 1 copy\n");
        assert_eq!(
            publish_text(&resp(0)),
            "m1\ndelivered 0 copies: no subscription matched\n"
        );
    }

    #[test]
    fn subscriptions_table_shows_delivery_and_one_line_filter() {
        let subscriptions = [
            pb::Subscription {
                id: "s1".into(),
                topic: "payments".into(),
                queue: "sms".into(),
                filter_policy: "{\n  \"country\": [\"IN\",\n \"BR\"]\n}".into(),
                raw_delivery: true,
            },
            pb::Subscription {
                id: "s2".into(),
                topic: "payments".into(),
                queue: "email".into(),
                filter_policy: String::new(),
                raw_delivery: false,
            },
        ];
        assert_eq!(
            subscriptions_table(&subscriptions),
            "ID  TOPIC     QUEUE  DELIVERY  FILTER\n\
             s1  payments  sms    raw       {\"country\":[\"IN\",\"BR\"]}\n\
             s2  payments  email  envelope  -\n"
        );
        assert_eq!(subscriptions_table(&[]), "no subscriptions\n");
    }
}
