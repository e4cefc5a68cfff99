//! Queues: `broker queue create|list|get|update|delete|purge`.
//!
//! `create` and `update` send only the attributes given as flags, so the
//! broker applies its default (create) or keeps the current value (update).

use std::fmt::Write as _;

use anyhow::Context as _;
use broker_client::limits::PAGE_SIZE_MAX;
use broker_client::{Client, pb};
use serde_json::{Value, json};

use crate::args::QueueCommand;
use crate::error::failure;
use crate::format::{plural, secs_exact, secs_short, table, timestamp};
use crate::output::Output;

/// Runs `broker queue ...`.
pub(crate) async fn run(client: &Client, out: Output, cmd: QueueCommand) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Create { name, attributes } => {
            // A missing dead-letter queue is also NOT_FOUND: let the broker say which.
            let only_queue = attributes
                .dead_letter_queue
                .is_none()
                .then_some(name.as_str());
            let queue = client
                .create_queue(pb::CreateQueueRequest {
                    name: name.clone(),
                    attributes: Some(attributes.to_pb()),
                })
                .await
                .map_err(|e| failure(e, only_queue))?
                .queue
                .context("the broker returned no queue")?;
            print_queue(out, &queue)
        }
        QueueCommand::List { prefix } => {
            let queues = all_queues(client, &prefix)
                .await
                .map_err(|e| failure(e, None))?;
            out.print(
                || queues_table(&queues),
                || {
                    let list: Vec<Value> = queues.iter().map(queue_json).collect();
                    json!({ "queues": list })
                },
            )
        }
        QueueCommand::Get { name } => {
            let resp = client
                .get_queue(pb::GetQueueRequest { name: name.clone() })
                .await
                .map_err(|e| failure(e, Some(&name)))?;
            let queue = resp.queue.context("the broker returned no queue")?;
            out.print(
                || queue_text(&queue, resp.stats.as_ref()),
                || {
                    json!({
                        "queue": queue_json(&queue),
                        "stats": resp.stats.as_ref().map(stats_json),
                    })
                },
            )
        }
        QueueCommand::Update {
            name,
            attributes,
            no_redrive_policy,
            no_retry_policy,
        } => {
            let only_queue = attributes
                .dead_letter_queue
                .is_none()
                .then_some(name.as_str());
            let mut pb_attributes = attributes.to_pb();
            pb_attributes.clear_redrive_policy = no_redrive_policy;
            pb_attributes.clear_retry_policy = no_retry_policy;
            let queue = client
                .update_queue(pb::UpdateQueueRequest {
                    name: name.clone(),
                    attributes: Some(pb_attributes),
                })
                .await
                .map_err(|e| failure(e, only_queue))?
                .queue
                .context("the broker returned no queue")?;
            print_queue(out, &queue)
        }
        QueueCommand::Delete { name } => {
            client
                .delete_queue(pb::DeleteQueueRequest { name: name.clone() })
                .await
                .map_err(|e| failure(e, Some(&name)))?;
            out.done(|| format!("deleted queue '{name}'\n"))
        }
        QueueCommand::Purge { name } => {
            client
                .purge_queue(pb::PurgeQueueRequest { name: name.clone() })
                .await
                .map_err(|e| failure(e, Some(&name)))?;
            out.done(|| format!("purged queue '{name}'\n"))
        }
    }
}

/// Every queue whose name starts with `prefix`, in name order.
pub(crate) async fn all_queues(
    client: &Client,
    prefix: &str,
) -> Result<Vec<pb::Queue>, broker_client::Error> {
    client
        .list_all_queues(pb::ListQueuesRequest {
            prefix: prefix.to_owned(),
            page_size: PAGE_SIZE_MAX,
            page_token: String::new(),
        })
        .await
}

/// What `create` and `update` print: the queue as the broker now has it.
fn print_queue(out: Output, queue: &pb::Queue) -> anyhow::Result<()> {
    out.print(
        || queue_text(queue, None),
        || json!({ "queue": queue_json(queue) }),
    )
}

fn queue_json(queue: &pb::Queue) -> Value {
    let a = queue.attributes.clone().unwrap_or_default();
    json!({
        "name": queue.name,
        "created_at_ms": queue.created_at_ms,
        "attributes": {
            "visibility_timeout_seconds": a.visibility_timeout_seconds,
            "message_retention_seconds": a.message_retention_seconds,
            "delay_seconds": a.delay_seconds,
            "receive_wait_time_seconds": a.receive_wait_time_seconds,
            "max_message_bytes": a.max_message_bytes,
            "redrive_policy": a.redrive_policy.map(|p| json!({
                "dead_letter_queue": p.dead_letter_queue,
                "max_receive_count": p.max_receive_count,
            })),
        },
    })
}

fn stats_json(stats: &pb::QueueStats) -> Value {
    json!({
        "visible": stats.visible,
        "in_flight": stats.in_flight,
        "delayed": stats.delayed,
        "oldest_message_age_seconds": stats.oldest_message_age_seconds,
    })
}

/// `queue get` (with stats), `create` and `update` (without).
fn queue_text(queue: &pb::Queue, stats: Option<&pb::QueueStats>) -> String {
    let a = queue.attributes.clone().unwrap_or_default();
    let secs = |s: Option<u32>| s.map_or("-".to_owned(), |s| secs_exact(u64::from(s)));
    let mut rows = vec![
        ("queue", queue.name.clone()),
        ("created", timestamp(queue.created_at_ms)),
        ("visibility timeout", secs(a.visibility_timeout_seconds)),
        ("retention", secs(a.message_retention_seconds)),
        ("delay", secs(a.delay_seconds)),
        ("receive wait", secs(a.receive_wait_time_seconds)),
        (
            "max message bytes",
            a.max_message_bytes
                .map_or("-".to_owned(), |n| n.to_string()),
        ),
        ("dead-letter queue", redrive_text(a.redrive_policy.as_ref())),
        (
            "receive rate",
            match a.max_receive_rate {
                Some(rate) if rate > 0 => {
                    format!("{rate}/s, burst {}", a.max_receive_burst.unwrap_or(rate))
                }
                _ => "unlimited".to_owned(),
            },
        ),
        (
            "max messages",
            match a.max_messages {
                Some(max) if max > 0 => max.to_string(),
                _ => "no cap".to_owned(),
            },
        ),
        (
            "retry backoff",
            a.retry_policy.map_or("none".to_owned(), |p| {
                format!(
                    "{}s doubling up to {}s",
                    p.min_backoff_seconds, p.max_backoff_seconds
                )
            }),
        ),
    ];
    if let Some(s) = stats {
        rows.extend([
            ("visible", s.visible.to_string()),
            ("in flight", s.in_flight.to_string()),
            ("delayed", s.delayed.to_string()),
            ("oldest message", secs_exact(s.oldest_message_age_seconds)),
        ]);
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

fn redrive_text(policy: Option<&pb::RedrivePolicy>) -> String {
    policy.map_or("-".to_owned(), |p| {
        format!(
            "{} after {}",
            p.dead_letter_queue,
            plural(u64::from(p.max_receive_count), "receive")
        )
    })
}

/// `queue list`: one aligned row per queue.
fn queues_table(queues: &[pb::Queue]) -> String {
    if queues.is_empty() {
        return "no queues\n".to_owned();
    }
    let mut rows = vec![
        [
            "NAME",
            "VISIBILITY",
            "DELAY",
            "RETENTION",
            "DEAD-LETTER QUEUE",
        ]
        .map(String::from),
    ];
    for q in queues {
        let a = q.attributes.clone().unwrap_or_default();
        let secs = |s: Option<u32>| s.map_or("-".to_owned(), |s| secs_short(u64::from(s)));
        rows.push([
            q.name.clone(),
            secs(a.visibility_timeout_seconds),
            secs(a.delay_seconds),
            secs(a.message_retention_seconds),
            redrive_text(a.redrive_policy.as_ref()),
        ]);
    }
    table(&rows)
}
