//! The operator commands of the CLI: `peek`, `stats`, `top` and the paced
//! `redrive --per-second`.
//!
//! - `peek` pages through `PeekMessages`: it only looks, so it may run
//!   against a queue in production use (receive counts, visibility and
//!   receipt handles stay as they are).
//! - `stats` lists the queues (`ListQueues`, every page) and asks each for
//!   its counts (`GetQueue`, a few at a time); a queue deleted in between is
//!   left out. `top` redraws that table every `--interval` until Ctrl-C,
//!   with the change of visible messages per second since the last frame.
//! - `redrive --per-second N` is a loop of `RedriveMessages` calls of a few
//!   messages each, paced by a token bucket (`governor`), reporting
//!   progress against the source's visible count at the start. Each call is
//!   atomic on the broker; stopping the loop (Ctrl-C) leaves every message
//!   either moved or where it was.
//!
//! Rendering is kept in pure functions (rows in, text out) so that it is
//! tested without a terminal or a broker.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use broker_client::{Client, pb};
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};

use super::{
    WIDTH, all_queues, base64, body_text, emit, emit_json, failure, plural, secs_short,
    table_aligned, timestamp, with_body,
};

/// Largest page of `PeekMessages`.
const PEEK_PAGE_MAX: u32 = 100;
/// `GetQueue` calls in flight at once while collecting stats.
const STATS_CONCURRENCY: usize = 8;
/// `RedriveMessages` calls per second a paced redrive aims for: chunks of
/// a tenth of the rate, so that progress moves smoothly and stopping it
/// leaves little in flight.
const REDRIVE_CALLS_PER_SECOND: u32 = 10;
/// The largest chunk of a paced redrive (the broker moves 1000 per write).
const REDRIVE_CHUNK_MAX: u32 = 1000;
/// Shortest `top --interval`: faster refreshes only load the broker.
pub const TOP_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// Milliseconds since the Unix epoch, as the broker stamps `*_at_ms`.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---- peek ----

/// Up to `max` (at least 1) messages of `queue`, oldest first, in pages of
/// at most 100; and whether more follow.
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
            .clamp(1, PEEK_PAGE_MAX);
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

pub(super) async fn peek(client: &Client, json: bool, queue: &str, max: u32) -> anyhow::Result<()> {
    let (messages, more) = peek_messages(client, queue, max)
        .await
        .map_err(|e| failure(e, Some(queue)))?;
    if json {
        let list: Vec<Value> = messages.iter().map(peeked_json).collect();
        emit_json(&json!({ "messages": list, "more": more }))
    } else {
        emit(&peeked_text(&messages, more, now_ms()))
    }
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

// ---- stats and top ----

/// One queue's line of `stats` and `top`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    pub name: String,
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub oldest_message_age_seconds: u64,
    /// The queue's dead-letter queue, if it has a redrive policy.
    pub dead_letter_queue: Option<String>,
}

impl QueueRow {
    fn new(queue: pb::Queue, stats: Option<pb::QueueStats>) -> QueueRow {
        let stats = stats.unwrap_or_default();
        QueueRow {
            dead_letter_queue: queue
                .attributes
                .and_then(|a| a.redrive_policy)
                .map(|p| p.dead_letter_queue),
            name: queue.name,
            visible: stats.visible,
            in_flight: stats.in_flight,
            delayed: stats.delayed,
            oldest_message_age_seconds: stats.oldest_message_age_seconds,
        }
    }

    fn is_empty(&self) -> bool {
        self.visible == 0 && self.in_flight == 0 && self.delayed == 0
    }
}

/// Every queue whose name starts with `prefix`, in name order, with its
/// counts. A queue deleted between the listing and its `GetQueue` is left out.
pub async fn queue_rows(
    client: &Client,
    prefix: &str,
) -> Result<Vec<QueueRow>, broker_client::Error> {
    let queues = all_queues(client, prefix).await?;
    let rows: Vec<Option<QueueRow>> = futures::stream::iter(queues)
        .map(|queue| async move {
            let name = queue.name.clone();
            match client.get_queue(pb::GetQueueRequest { name }).await {
                Ok(resp) => Ok(Some(QueueRow::new(resp.queue.unwrap_or(queue), resp.stats))),
                Err(broker_client::Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffered(STATS_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(rows.into_iter().flatten().collect())
}

/// Change of each queue's visible count per second between two frames
/// `elapsed` apart; queues missing from either frame have none.
pub fn visible_rates(
    before: &[QueueRow],
    after: &[QueueRow],
    elapsed: Duration,
) -> HashMap<String, f64> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return HashMap::new();
    }
    let before: HashMap<&str, u64> = before
        .iter()
        .map(|r| (r.name.as_str(), r.visible))
        .collect();
    after
        .iter()
        .filter_map(|r| {
            let was = *before.get(r.name.as_str())?;
            Some((r.name.clone(), (r.visible as f64 - was as f64) / secs))
        })
        .collect()
}

/// A rate as `top` shows it: signed, one decimal, "0" when unchanged.
fn rate_text(rate: f64) -> String {
    if rate.abs() < 0.05 {
        "0".to_owned()
    } else {
        format!("{rate:+.1}")
    }
}

/// The table of `stats` (and of `top`, with `rates`: then a `VISIBLE/S`
/// column follows `VISIBLE`, "-" for a queue not in the previous frame).
/// Counts are aligned right; an empty queue's oldest age is "-".
pub fn stats_table(rows: &[QueueRow], rates: Option<&HashMap<String, f64>>) -> String {
    if rows.is_empty() {
        return "no queues\n".to_owned();
    }
    let mut lines = vec![
        [
            "QUEUE",
            "VISIBLE",
            "VISIBLE/S",
            "IN FLIGHT",
            "DELAYED",
            "OLDEST",
            "DEAD-LETTER QUEUE",
        ]
        .map(String::from),
    ];
    for r in rows {
        lines.push([
            r.name.clone(),
            r.visible.to_string(),
            rates
                .and_then(|rates| rates.get(&r.name))
                .map_or("-".to_owned(), |&rate| rate_text(rate)),
            r.in_flight.to_string(),
            r.delayed.to_string(),
            if r.is_empty() {
                "-".to_owned()
            } else {
                secs_short(r.oldest_message_age_seconds)
            },
            r.dead_letter_queue
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let right = [false, true, true, true, true, true, false];
    if rates.is_some() {
        return table_aligned(&lines, right);
    }
    // Without rates (`stats`), the same table without the VISIBLE/S column.
    let lines: Vec<[String; 6]> = lines
        .into_iter()
        .map(|[name, visible, _, in_flight, delayed, oldest, dlq]| {
            [name, visible, in_flight, delayed, oldest, dlq]
        })
        .collect();
    table_aligned(&lines, [false, true, true, true, true, false])
}

/// The first lines of a `top` frame: where, when, totals and how to stop.
pub fn top_header(server: &str, rows: &[QueueRow], interval: Duration, at_ms: u64) -> String {
    let (visible, in_flight, delayed) = rows.iter().fold((0, 0, 0), |(v, f, d), r| {
        (v + r.visible, f + r.in_flight, d + r.delayed)
    });
    format!(
        "broker top  {server}  {}  every {}  Ctrl-C to quit\n\
         {}: {visible} visible, {in_flight} in flight, {delayed} delayed\n\n",
        timestamp(at_ms),
        humantime::format_duration(interval),
        plural(rows.len() as u64, "queue"),
    )
}

fn rows_json(rows: &[QueueRow]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            json!({
                "name": r.name,
                "visible": r.visible,
                "in_flight": r.in_flight,
                "delayed": r.delayed,
                "oldest_message_age_seconds": r.oldest_message_age_seconds,
                "dead_letter_queue": r.dead_letter_queue,
            })
        })
        .collect()
}

pub(super) async fn stats(client: &Client, json: bool, prefix: &str) -> anyhow::Result<()> {
    let rows = queue_rows(client, prefix)
        .await
        .map_err(|e| failure(e, None))?;
    if json {
        emit_json(&json!({ "queues": rows_json(&rows) }))
    } else {
        emit(&stats_table(&rows, None))
    }
}

/// Parses `top --interval`: a duration such as "1s", "500ms" or "2m", or
/// plain seconds ("2"); at least [`TOP_INTERVAL_MIN`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let interval = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("'{s}' is not a duration such as 1s or 500ms: {e}"))?,
    };
    if interval < TOP_INTERVAL_MIN {
        return Err(format!(
            "the interval must be at least {}; got {s}",
            humantime::format_duration(TOP_INTERVAL_MIN)
        ));
    }
    Ok(interval)
}

/// Clears the terminal and puts the cursor top left.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Draws the `stats` table every `interval` until `stop` resolves (the
/// binary passes Ctrl-C; a test, any future).
pub async fn top(
    client: &Client,
    json: bool,
    server: &str,
    prefix: &str,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // On a terminal each frame replaces the last; piped, frames follow each
    // other (one JSON document per line with --json) for a log.
    let terminal = !json && std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<(Vec<QueueRow>, Instant)> = None;
    tokio::pin!(stop);
    loop {
        let frame = async {
            ticker.tick().await;
            queue_rows(client, prefix).await
        };
        let result = tokio::select! {
            result = frame => result,
            () = &mut stop => return Ok(()),
        };
        let at_ms = now_ms();
        let rows = match result {
            Ok(rows) => rows,
            // A broker restarting or out of reach: say so and keep trying
            // (the connection comes back by itself); rates start afresh.
            Err(
                e @ (broker_client::Error::Unavailable(_)
                | broker_client::Error::DeadlineExceeded(_)),
            ) => {
                let line = format!(
                    "{}  {e}; retrying every {}",
                    timestamp(at_ms),
                    humantime::format_duration(interval)
                );
                if json {
                    emit(&format!(
                        "{}\n",
                        json!({ "at_ms": at_ms, "error": e.to_string() })
                    ))?;
                } else if terminal {
                    emit(&format!("{CLEAR_SCREEN}{line}\n"))?;
                } else {
                    emit(&format!("{line}\n"))?;
                }
                previous = None;
                continue;
            }
            Err(e) => return Err(failure(e, None)),
        };
        let taken = Instant::now();
        let rates = previous
            .as_ref()
            .map(|(before, then)| visible_rates(before, &rows, taken - *then))
            .unwrap_or_default();
        if json {
            let line =
                json!({ "at_ms": at_ms, "queues": rows_json(&rows), "visible_per_second": rates });
            emit(&format!("{line}\n"))?;
        } else {
            let mut text = String::new();
            if terminal {
                text.push_str(CLEAR_SCREEN);
            } else if previous.is_some() {
                text.push('\n');
            }
            text.push_str(&top_header(server, &rows, interval, at_ms));
            text.push_str(&stats_table(&rows, Some(&rates)));
            emit(&text)?;
        }
        previous = Some((rows, taken));
    }
}

// ---- paced redrive ----

/// How far a paced redrive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedriveProgress {
    /// Messages moved so far.
    pub moved: u64,
    /// The messages to move: the source's visible count at the start (at
    /// most `--max`). Messages dead-lettered meanwhile are moved too, so
    /// `moved` may end above it.
    pub total: u64,
}

/// `redrive --per-second`'s progress line.
pub fn progress_line(p: RedriveProgress) -> String {
    if p.moved > p.total {
        return format!("moved {} ({} at the start)", p.moved, p.total);
    }
    let percent = (p.moved * 100).checked_div(p.total).unwrap_or(100);
    format!("moved {} of {} ({percent}%)", p.moved, p.total)
}

/// Messages per `RedriveMessages` call at `per_second`.
fn chunk_size(per_second: NonZeroU32) -> NonZeroU32 {
    let chunk = (per_second.get() / REDRIVE_CALLS_PER_SECOND).clamp(1, REDRIVE_CHUNK_MAX);
    NonZeroU32::new(chunk).unwrap_or(NonZeroU32::MIN)
}

/// Runs `request` (a `RedriveMessages`) as calls of a few messages each, at
/// most `per_second` messages per second, until the source has no visible
/// message left to move or `request.max_messages` (0: all) moved. Calls
/// `progress` at the start and after each call. Returns how many moved.
pub async fn redrive_paced(
    client: &Client,
    request: pb::RedriveMessagesRequest,
    per_second: NonZeroU32,
    mut progress: impl FnMut(RedriveProgress),
) -> Result<u64, broker_client::Error> {
    let visible = client
        .get_queue(pb::GetQueueRequest {
            name: request.source_queue.clone(),
        })
        .await?
        .stats
        .map_or(0, |s| s.visible);
    let limit = match request.max_messages {
        0 => None,
        max => Some(u64::from(max)),
    };
    let total = limit.map_or(visible, |max| visible.min(max));
    let chunk = chunk_size(per_second);
    // A burst of one chunk: the first call goes at once, the next ones as
    // the rate allows.
    let limiter =
        governor::RateLimiter::direct(governor::Quota::per_second(per_second).allow_burst(chunk));
    let mut moved = 0u64;
    progress(RedriveProgress { moved, total });
    loop {
        let want = match limit {
            Some(max) if moved >= max => break,
            Some(max) => (max - moved).min(u64::from(chunk.get())) as u32,
            None => chunk.get(),
        };
        let cells = NonZeroU32::new(want).unwrap_or(NonZeroU32::MIN);
        if limiter.until_n_ready(cells).await.is_err() {
            // More than the burst: cannot happen (want <= chunk = burst);
            // wait cell by cell rather than not at all.
            for _ in 0..want {
                limiter.until_ready().await;
            }
        }
        let resp = client
            .redrive_messages(pb::RedriveMessagesRequest {
                max_messages: want,
                ..request.clone()
            })
            .await?;
        moved += resp.moved;
        progress(RedriveProgress { moved, total });
        // Fewer than asked: nothing visible is left to move.
        if resp.moved < u64::from(want) {
            break;
        }
    }
    Ok(moved)
}

/// Prints [`progress_line`]s on stderr: on a terminal, one line rewritten
/// in place at every change; otherwise (a log) a line at the start, at most
/// one a second, and the last one.
pub(super) struct ProgressPrinter {
    /// The source queue, named on every line.
    source: String,
    /// Rewrite one line (a terminal) or print lines (a log).
    terminal: bool,
    /// The latest progress reported.
    latest: Option<RedriveProgress>,
    /// What was printed last, and when.
    printed: Option<(Instant, RedriveProgress)>,
}

impl ProgressPrinter {
    pub(super) fn new(source: &str) -> ProgressPrinter {
        ProgressPrinter {
            source: source.to_owned(),
            terminal: std::io::stderr().is_terminal(),
            latest: None,
            printed: None,
        }
    }

    pub(super) fn update(&mut self, p: RedriveProgress) {
        self.latest = Some(p);
        let due = match self.printed {
            None => true,
            Some((at, _)) => self.terminal || at.elapsed() >= Duration::from_secs(1),
        };
        if due {
            self.print(p);
        }
    }

    /// Prints the final state (if not shown yet) and ends the line.
    pub(super) fn finish(&mut self) {
        if let Some(p) = self.latest
            && self.printed.is_none_or(|(_, shown)| shown != p)
        {
            self.print(p);
        }
        if self.terminal && self.printed.is_some() {
            eprintln!();
        }
    }

    fn print(&mut self, p: RedriveProgress) {
        let line = format!("redrive from '{}': {}", self.source, progress_line(p));
        if self.terminal {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
        self.printed = Some((Instant::now(), p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn row(name: &str, visible: u64, in_flight: u64, delayed: u64, age: u64) -> QueueRow {
        QueueRow {
            name: name.into(),
            visible,
            in_flight,
            delayed,
            oldest_message_age_seconds: age,
            dead_letter_queue: None,
        }
    }

    #[test]
    fn stats_table_aligns_counts_right() {
        let rows = [
            QueueRow {
                dead_letter_queue: Some("orders-dlq".into()),
                ..row("orders", 1234, 5, 0, 90)
            },
            row("orders-dlq", 7, 0, 0, 86_400),
            row("empty", 0, 0, 0, 0),
        ];
        assert_eq!(
            stats_table(&rows, None),
            "QUEUE       VISIBLE  IN FLIGHT  DELAYED  OLDEST  DEAD-LETTER QUEUE\n\
             orders         1234          5        0   1m30s  orders-dlq\n\
             orders-dlq        7          0        0      1d  -\n\
             empty             0          0        0       -  -\n"
        );
        assert_eq!(stats_table(&[], None), "no queues\n");
    }

    #[test]
    fn top_table_shows_the_change_of_visible_per_second() {
        let before = [row("a", 10, 0, 0, 1), row("b", 100, 0, 0, 1)];
        let after = [
            row("a", 30, 0, 0, 3),
            row("b", 95, 1, 0, 3),
            row("new", 1, 0, 0, 0),
        ];
        let rates = visible_rates(&before, &after, Duration::from_secs(2));
        assert_eq!(rates.len(), 2, "{rates:?}");
        assert_eq!(rates["a"], 10.0);
        assert_eq!(rates["b"], -2.5);
        assert_eq!(
            stats_table(&after, Some(&rates)),
            "QUEUE  VISIBLE  VISIBLE/S  IN FLIGHT  DELAYED  OLDEST  DEAD-LETTER QUEUE\n\
             a           30      +10.0          0        0      3s  -\n\
             b           95       -2.5          1        0      3s  -\n\
             new          1          -          0        0      0s  -\n"
        );
        let still = visible_rates(&after, &after, Duration::from_secs(1));
        assert_eq!(rate_text(still["a"]), "0");
        assert!(visible_rates(&before, &after, Duration::ZERO).is_empty());
    }

    #[test]
    fn top_header_names_server_time_and_totals() {
        let rows = [row("a", 3, 1, 0, 0), row("b", 4, 0, 2, 0)];
        assert_eq!(
            top_header(
                "127.0.0.1:50051",
                &rows,
                Duration::from_secs(1),
                1_735_787_045_678
            ),
            "broker top  127.0.0.1:50051  2025-01-02T03:04:05.678Z  every 1s  Ctrl-C to quit\n\
             2 queues: 7 visible, 1 in flight, 2 delayed\n\n"
        );
    }

    #[test]
    fn interval_takes_durations_or_seconds() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_interval("10ms")
                .unwrap_err()
                .contains("at least 100ms")
        );
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("soon").unwrap_err().contains("'soon'"));
    }

    #[test]
    fn progress_counts_against_the_start() {
        let p = |moved, total| progress_line(RedriveProgress { moved, total });
        assert_eq!(p(0, 10), "moved 0 of 10 (0%)");
        assert_eq!(p(4, 10), "moved 4 of 10 (40%)");
        assert_eq!(p(10, 10), "moved 10 of 10 (100%)");
        assert_eq!(p(0, 0), "moved 0 of 0 (100%)");
        assert_eq!(p(12, 10), "moved 12 (10 at the start)");
    }

    #[test]
    fn chunks_are_a_tenth_of_the_rate_within_bounds() {
        let chunk = |n| chunk_size(NonZeroU32::new(n).unwrap()).get();
        assert_eq!(chunk(1), 1);
        assert_eq!(chunk(20), 2);
        assert_eq!(chunk(500), 50);
        assert_eq!(chunk(1_000_000), 1000);
    }

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
