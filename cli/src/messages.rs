//! Messages of a queue: `send`, `receive` (and `--delete`) and `delete`.
//!
//! `receive --delete` prints the messages before deleting them: a message
//! is never deleted without having been shown.

use std::fmt::Write as _;
use std::io::IsTerminal as _;

use anyhow::{Context as _, anyhow};
use broker_client::{Client, pb};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;

use crate::args::attribute_map;
use crate::error::failure;
use crate::format::{WIDTH, body_text, plural, timestamp, with_body};
use crate::output::Output;

/// `send`: sends one message (the body from stdin when not given) and
/// prints its id.
pub(crate) async fn send(
    client: &Client,
    out: Output,
    queue: String,
    body: Option<String>,
    attrs: Vec<(String, String)>,
    delay: Option<u32>,
) -> anyhow::Result<()> {
    let attributes = attribute_map(attrs)?;
    let body = read_body(body).await?;
    let resp = client
        .send_message(pb::SendMessageRequest {
            queue: queue.clone(),
            body,
            attributes,
            delay_seconds: delay,
        })
        .await
        .map_err(|e| failure(e, Some(&queue)))?;
    out.print(
        || format!("{}\n", resp.message_id),
        || json!({ "message_id": resp.message_id }),
    )
}

/// `receive`: receives up to `max` messages, prints them, and with
/// `delete` deletes them.
pub(crate) async fn receive(
    client: &Client,
    out: Output,
    queue: String,
    max: u32,
    wait: Option<u32>,
    visibility: Option<u32>,
    delete: bool,
) -> anyhow::Result<()> {
    let messages = client
        .receive_messages(pb::ReceiveMessagesRequest {
            queue: queue.clone(),
            max_messages: max,
            visibility_timeout_seconds: visibility,
            wait_time_seconds: wait,
        })
        .await
        .map_err(|e| failure(e, Some(&queue)))?
        .messages;
    // Print first: with --delete, a message must never be deleted
    // without having been shown.
    out.print(
        || messages_text(&messages),
        || {
            let list: Vec<Value> = messages.iter().map(message_json).collect();
            json!({ "messages": list })
        },
    )?;
    if delete && !messages.is_empty() {
        delete_all(client, &queue, &messages).await?;
        out.note(|| format!("deleted {}\n", plural(messages.len() as u64, "message")))?;
    }
    Ok(())
}

/// `delete`: deletes a received message by its receipt handle.
pub(crate) async fn delete(
    client: &Client,
    out: Output,
    queue: String,
    receipt: String,
) -> anyhow::Result<()> {
    client
        .delete(&queue, &receipt)
        .await
        .map_err(|e| failure(e, Some(&queue)))?;
    out.done(|| "deleted message\n".to_owned())
}

/// The message body of `send` and `publish`: the argument, or stdin
/// exactly as given when there is none.
pub(crate) async fn read_body(body: Option<String>) -> anyhow::Result<Bytes> {
    match body {
        Some(body) => Ok(Bytes::from(body)),
        None => read_stdin().await,
    }
}

/// Reads a message body from stdin, exactly as given.
async fn read_stdin() -> anyhow::Result<Bytes> {
    if std::io::stdin().is_terminal() {
        eprintln!("reading the message body from stdin; end it with Ctrl-D");
    }
    let mut body = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut body)
        .await
        .context("cannot read the message body from stdin")?;
    Ok(Bytes::from(body))
}

/// Deletes received messages in one batch call; fails naming every entry
/// the broker refused.
async fn delete_all(
    client: &Client,
    queue: &str,
    messages: &[pb::ReceivedMessage],
) -> anyhow::Result<()> {
    let entries = messages
        .iter()
        .enumerate()
        .map(|(i, m)| pb::DeleteMessageBatchEntry {
            id: i.to_string(),
            receipt_handle: m.receipt_handle.clone(),
        })
        .collect();
    let resp = client
        .delete_message_batch(pb::DeleteMessageBatchRequest {
            queue: queue.to_owned(),
            entries,
        })
        .await
        .map_err(|e| failure(e, Some(queue)))
        .context("messages were received but not deleted")?;
    if resp.failed.is_empty() {
        return Ok(());
    }
    let mut text = format!(
        "could not delete {} of {} received messages:",
        resp.failed.len(),
        messages.len()
    );
    for failed in &resp.failed {
        let id = failed
            .id
            .parse::<usize>()
            .ok()
            .and_then(|i| messages.get(i))
            .map_or(failed.id.as_str(), |m| m.message_id.as_str());
        let _ = write!(text, "\n  {id}: {} ({})", failed.message, failed.code);
    }
    Err(anyhow!(text))
}

/// A received message as JSON, with its body as [`with_body`] gives it.
fn message_json(m: &pb::ReceivedMessage) -> Value {
    let value = json!({
        "message_id": m.message_id,
        "receipt_handle": m.receipt_handle,
        "receive_count": m.receive_count,
        "sent_at_ms": m.sent_at_ms,
        "first_received_at_ms": m.first_received_at_ms,
        "attributes": m.attributes,
    });
    with_body(value, &m.body)
}

/// `receive`: a block of aligned lines per message, blank line between.
fn messages_text(messages: &[pb::ReceivedMessage]) -> String {
    if messages.is_empty() {
        return "no messages\n".to_owned();
    }
    let indent = " ".repeat(WIDTH + 1);
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "{:<WIDTH$} {}", "message", m.message_id);
        let _ = writeln!(out, "{:<WIDTH$} {}", "receives", m.receive_count);
        let _ = writeln!(out, "{:<WIDTH$} {}", "sent", timestamp(m.sent_at_ms));
        let _ = writeln!(out, "{:<WIDTH$} {}", "receipt", m.receipt_handle);
        let mut attributes: Vec<_> = m.attributes.iter().collect();
        attributes.sort();
        for (key, value) in attributes {
            let _ = writeln!(out, "{:<WIDTH$} {key}={value}", "attr");
        }
        let _ = writeln!(out, "{:<WIDTH$} {}", "body", body_text(&m.body, &indent));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn binary_body_gets_base64_in_json() {
        let mut m = pb::ReceivedMessage {
            body: Bytes::from_static(b"hello"),
            ..Default::default()
        };
        let v = message_json(&m);
        assert_eq!(v["body"], "hello");
        assert!(v.get("body_base64").is_none());

        m.body = Bytes::from_static(&[0xff, 0x00]);
        let v = message_json(&m);
        assert_eq!(v["body_base64"], "/wA=");
    }

    #[test]
    fn multi_line_bodies_stay_in_the_value_column() {
        let m = pb::ReceivedMessage {
            message_id: "m1".into(),
            receipt_handle: "r1".into(),
            receive_count: 2,
            body: Bytes::from_static(b"line one\nline\ttwo\x1b[2J\n"),
            attributes: HashMap::from([("k".to_owned(), "v".to_owned())]),
            ..Default::default()
        };
        assert_eq!(
            messages_text(&[m]),
            "message   m1\nreceives  2\nsent      -\nreceipt   r1\nattr      k=v\nbody      line one\n          line\ttwo\\u{1b}[2J\n"
        );
    }
}
