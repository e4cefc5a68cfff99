//! `stats`: every queue with its message counts, in one table; `top`: the
//! same table redrawn every `--interval` until Ctrl-C, with the change of
//! visible messages per second since the last frame.
//!
//! `top` outlives its broker: a broker restarting or out of reach is
//! reported in the frame and retried (the connection comes back by
//! itself), and the rates start afresh.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use broker_client::{Client, pb};
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};

use super::now_ms;
use crate::error::failure;
use crate::format::{plural, secs_short, table_aligned, timestamp};
use crate::output::Output;
use crate::queues::all_queues;

/// `GetQueue` calls in flight at once while collecting stats.
const STATS_CONCURRENCY: usize = 8;

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

/// The lines of `stats` above its table: the broker's messages against
/// its cap, and its disk against the floor.
pub fn broker_header(b: &pb::GetBrokerStatsResponse) -> String {
    let cap = match b.max_messages {
        0 => "no cap".to_owned(),
        max => format!("max_messages {max}"),
    };
    let disk = match b.disk_free_bytes {
        None => "not read yet".to_owned(),
        Some(free) => format!("{} free", bytes_text(free)),
    };
    let floor = match b.min_free_disk_bytes {
        0 => "no floor".to_owned(),
        floor => format!("min_free_disk {}", bytes_text(floor)),
    };
    let alarm = if b.disk_low {
        "  BELOW THE FLOOR: sends, publishes and redrives are refused"
    } else {
        ""
    };
    format!(
        "broker: {} in {} ({cap})\ndisk:   {disk} ({floor}){alarm}\n\n",
        plural(b.messages, "message"),
        plural(b.queues, "queue"),
    )
}

/// Bytes in binary units, one decimal (`256.0 MiB`), below 1 KiB exact.
fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub(crate) async fn stats(client: &Client, out: Output, prefix: &str) -> anyhow::Result<()> {
    let broker = client
        .get_broker_stats()
        .await
        .map_err(|e| failure(e, None))?;
    let rows = queue_rows(client, prefix)
        .await
        .map_err(|e| failure(e, None))?;
    out.print(
        || broker_header(&broker) + &stats_table(&rows, None),
        || {
            json!({
                "broker": {
                    "queues": broker.queues,
                    "messages": broker.messages,
                    "max_messages": broker.max_messages,
                    "disk_free_bytes": broker.disk_free_bytes,
                    "min_free_disk_bytes": broker.min_free_disk_bytes,
                    "disk_low": broker.disk_low,
                },
                "queues": rows_json(&rows),
            })
        },
    )
}

/// Clears the terminal and puts the cursor top left.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Draws the `stats` table every `interval` until `stop` resolves (the
/// binary passes Ctrl-C; a test, any future); with `json`, a line of JSON
/// per frame instead.
pub async fn top(
    client: &Client,
    json: bool,
    server: &str,
    prefix: &str,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let out = Output::new(json);
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
                out.frame(
                    || {
                        let clear = if terminal { CLEAR_SCREEN } else { "" };
                        format!("{clear}{line}\n")
                    },
                    || json!({ "at_ms": at_ms, "error": e.to_string() }),
                )?;
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
        out.frame(
            || {
                let mut text = String::new();
                if terminal {
                    text.push_str(CLEAR_SCREEN);
                } else if previous.is_some() {
                    text.push('\n');
                }
                text.push_str(&top_header(server, &rows, interval, at_ms));
                text.push_str(&stats_table(&rows, Some(&rates)));
                text
            },
            || json!({ "at_ms": at_ms, "queues": rows_json(&rows), "visible_per_second": rates }),
        )?;
        previous = Some((rows, taken));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_header_shows_the_cap_the_disk_and_its_alarm() {
        let mut b = pb::GetBrokerStatsResponse {
            queues: 2,
            messages: 1,
            max_messages: 0,
            disk_free_bytes: Some(3 << 30),
            min_free_disk_bytes: 256 << 20,
            disk_low: false,
        };
        assert_eq!(
            broker_header(&b),
            "broker: 1 message in 2 queues (no cap)\ndisk:   3.0 GiB free (min_free_disk 256.0 MiB)\n\n"
        );
        b.max_messages = 1000;
        b.disk_free_bytes = Some(100);
        b.min_free_disk_bytes = 0;
        b.disk_low = true;
        let text = broker_header(&b);
        assert!(text.contains("(max_messages 1000)"), "{text}");
        assert!(
            text.contains("100 B free (no floor)  BELOW THE FLOOR"),
            "{text}"
        );
    }

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
}
