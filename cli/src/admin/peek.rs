//! `peek`: messages of a queue (a dead-letter queue's too) shown without
//! receiving them, oldest first, with their state (visible, in flight,
//! delayed), receive count, age and the queue a dead letter died in.
//! Receive counts, visibility and receipt handles stay as they are.

use std::fmt::Write as _;

use broker_client::limits::PEEK_MESSAGES_MAX;
use broker_client::{Client, pb};
use serde_json::{Value, json};

use super::now_ms;
use crate::error::failure;
use crate::format::{WIDTH, base64, body_text, plural, secs_short, timestamp, with_body};
use crate::output::Output;

/// Up to `max` (at least 1) messages of `queue`, oldest first, in pages of
/// at most [`PEEK_MESSAGES_MAX`]; and whether more follow.
pub async fn peek_messages(
    client: &Client,
    queue: &str,
    max: u32,
) -> Result<(Vec<pb::PeekedMessage>, bool), broker_client::Error> {
    // At least one: the broker reads 0 as its default page.
    let max = max.max(1);
    let mut messages = Vec::new();
    let mut page_token = String::new();
    loop {
        let want = max
            .saturating_sub(messages.len() as u32)
            .clamp(1, PEEK_MESSAGES_MAX);
        let page = client
            .peek_messages(pb::PeekMessagesRequest {
                queue: queue.to_owned(),
                max_messages: want,
                page_token,
            })
            .await?;
        messages.extend(page.messages);
        if page.next_page_token.is_empty() {
            return Ok((messages, false));
        }
        if messages.len() as u32 >= max {
            return Ok((messages, true));
        }
        page_token = page.next_page_token;
    }
}

pub(crate) async fn peek(
    client: &Client,
    out: Output,
    queue: &str,
    max: u32,
) -> anyhow::Result<()> {
    let (messages, more) = peek_messages(client, queue, max)
        .await
        .map_err(|e| failure(e, Some(queue)))?;
    out.print(
        || peeked_text(&messages, more, now_ms()),
        || {
            let list: Vec<Value> = messages.iter().map(peeked_json).collect();
            json!({ "messages": list, "more": more })
        },
    )
}

fn state_name(state: pb::MessageState) -> &'static str {
    match state {
        pb::MessageState::Visible => "visible",
        pb::MessageState::InFlight => "in_flight",
        pb::MessageState::Delayed => "delayed",
        pb::MessageState::Unspecified => "unspecified",
    }
}

/// A peeked message as JSON: the fields of `PeekedMessage`, `state` as
/// "visible", "in_flight" or "delayed", and the body as `receive --json`
/// gives it (`body_base64` with the exact bytes when not UTF-8).
fn peeked_json(m: &pb::PeekedMessage) -> Value {
    let value = json!({
        "message_id": m.message_id,
        "state": state_name(m.state()),
        "receive_count": m.receive_count,
        "sent_at_ms": m.sent_at_ms,
        "first_received_at_ms": m.first_received_at_ms,
        "visible_at_ms": m.visible_at_ms,
        "dead_letter_source": m.dead_letter_source,
        "attributes": m.attributes,
    });
    with_body(value, &m.body)
}

/// Whole seconds from `now_ms` until `at_ms`, rounded up (0 if past).
fn secs_until(at_ms: u64, now_ms: u64) -> u64 {
    at_ms.saturating_sub(now_ms).div_ceil(1000)
}

/// `peek`: a block of aligned lines per message (as `receive` prints, with
/// the state and age instead of a receipt handle), blank line between. A
/// body that is not UTF-8 is shown as base64. `now_ms` is the clock the
/// ages and countdowns are taken from.
fn peeked_text(messages: &[pb::PeekedMessage], more: bool, now_ms: u64) -> String {
    if messages.is_empty() {
        return "no messages\n".to_owned();
    }
    let indent = " ".repeat(WIDTH + 1);
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let state = match m.state() {
            pb::MessageState::Visible => "visible".to_owned(),
            pb::MessageState::InFlight => format!(
                "in flight, visible again in {}",
                secs_short(secs_until(m.visible_at_ms, now_ms))
            ),
            pb::MessageState::Delayed => format!(
                "delayed, visible in {}",
                secs_short(secs_until(m.visible_at_ms, now_ms))
            ),
            pb::MessageState::Unspecified => "unknown".to_owned(),
        };
        let age = secs_short(now_ms.saturating_sub(m.sent_at_ms) / 1000);
        let _ = writeln!(out, "{:<WIDTH$} {}", "message", m.message_id);
        let _ = writeln!(out, "{:<WIDTH$} {state}", "state");
        let _ = writeln!(out, "{:<WIDTH$} {}", "receives", m.receive_count);
        let _ = writeln!(
            out,
            "{:<WIDTH$} {} ({age} ago)",
            "sent",
            timestamp(m.sent_at_ms)
        );
        if !m.dead_letter_source.is_empty() {
            let _ = writeln!(out, "{:<WIDTH$} {}", "died in", m.dead_letter_source);
        }
        let mut attributes: Vec<_> = m.attributes.iter().collect();
        attributes.sort();
        for (key, value) in attributes {
            let _ = writeln!(out, "{:<WIDTH$} {key}={value}", "attr");
        }
        if std::str::from_utf8(&m.body).is_ok() {
            let _ = writeln!(out, "{:<WIDTH$} {}", "body", body_text(&m.body, &indent));
        } else {
            let _ = writeln!(out, "{:<WIDTH$} (base64) {}", "body", base64(&m.body));
        }
    }
    if more {
        let _ = write!(
            out,
            "\nshowing the first {}; more follow (--max N shows more)\n",
            plural(messages.len() as u64, "message")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::Bytes;

    use super::*;

    #[test]
    fn peeked_messages_show_state_age_source_and_body() {
        let now = 1_735_787_045_678;
        let in_flight = pb::PeekedMessage {
            message_id: "m1".into(),
            body: Bytes::from_static(b"hello\nworld"),
            attributes: HashMap::from([("k".to_owned(), "v".to_owned())]),
            receive_count: 2,
            sent_at_ms: now - 90_000,
            first_received_at_ms: now - 60_000,
            state: pb::MessageState::InFlight.into(),
            visible_at_ms: now + 24_500,
            dead_letter_source: String::new(),
        };
        let dead = pb::PeekedMessage {
            message_id: "m2".into(),
            body: Bytes::from_static(&[0xff, 0x00]),
            receive_count: 3,
            sent_at_ms: now - 5_000,
            state: pb::MessageState::Visible.into(),
            visible_at_ms: now - 1_000,
            dead_letter_source: "orders".into(),
            ..Default::default()
        };
        assert_eq!(
            peeked_text(&[in_flight, dead], true, now),
            "message   m1\n\
             state     in flight, visible again in 25s\n\
             receives  2\n\
             sent      2025-01-02T03:02:35.678Z (1m30s ago)\n\
             attr      k=v\n\
             body      hello\n          world\n\
             \n\
             message   m2\n\
             state     visible\n\
             receives  3\n\
             sent      2025-01-02T03:04:00.678Z (5s ago)\n\
             died in   orders\n\
             body      (base64) /wA=\n\
             \n\
             showing the first 2 messages; more follow (--max N shows more)\n"
        );
        let delayed = pb::PeekedMessage {
            state: pb::MessageState::Delayed.into(),
            sent_at_ms: now,
            visible_at_ms: now + 60_000,
            body: Bytes::from_static(b"x"),
            ..Default::default()
        };
        assert!(peeked_text(&[delayed], false, now).contains("state     delayed, visible in 1m\n"));
        assert_eq!(peeked_text(&[], false, now), "no messages\n");
    }

    #[test]
    fn peeked_json_names_the_state_and_keeps_binary_bodies() {
        let m = pb::PeekedMessage {
            message_id: "m1".into(),
            body: Bytes::from_static(&[0xff]),
            state: pb::MessageState::InFlight.into(),
            dead_letter_source: "orders".into(),
            ..Default::default()
        };
        let v = peeked_json(&m);
        assert_eq!(v["state"], "in_flight");
        assert_eq!(v["dead_letter_source"], "orders");
        assert_eq!(v["body_base64"], "/w==");
    }
}
