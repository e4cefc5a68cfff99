//! `redrive`: moves messages out of a dead-letter queue, back to the queue
//! each one died in or to `--to`; all in one `RedriveMessages` call, or
//! paced with `--per-second` ([`redrive_paced`]), with progress on stderr.
//!
//! A paced redrive is a loop of calls of a few messages each, paced by a
//! token bucket (`governor`). Each call is atomic on the broker, so
//! stopping the loop (Ctrl-C) leaves every message either moved or where it
//! was.

use std::io::IsTerminal as _;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker_client::{Client, pb};
use serde_json::json;

use crate::error::failure;
use crate::format::plural;
use crate::output::Output;

/// `RedriveMessages` calls per second a paced redrive aims for: chunks of
/// a tenth of the rate, so that progress moves smoothly and stopping it
/// leaves little in flight.
const REDRIVE_CALLS_PER_SECOND: u32 = 10;
/// The largest chunk of a paced redrive (the broker moves 1000 per write).
const REDRIVE_CHUNK_MAX: u32 = 1000;

/// `redrive`: moves the messages and prints how many moved.
pub(crate) async fn redrive(
    client: &Client,
    out: Output,
    dlq: String,
    to: Option<String>,
    max: Option<u32>,
    per_second: Option<u32>,
) -> anyhow::Result<()> {
    let request = pb::RedriveMessagesRequest {
        source_queue: dlq.clone(),
        destination_queue: to.clone().unwrap_or_default(),
        max_messages: max.unwrap_or(0),
    };
    let per_second = per_second
        .map(|n| NonZeroU32::new(n).context("--per-second must be at least 1"))
        .transpose()?;
    let moved = match per_second {
        None => client.redrive_messages(request).await.map(|r| r.moved),
        Some(rate) => {
            let mut progress = ProgressPrinter::new(&dlq);
            let moved = redrive_paced(client, request, rate, |p| progress.update(p)).await;
            progress.finish();
            moved
        }
    }
    // With --to, NOT_FOUND may be about either queue: let the broker say which.
    .map_err(|e| failure(e, to.is_none().then_some(dlq.as_str())))?;
    out.print(
        || {
            let destination = match &to {
                Some(queue) => format!("to '{queue}'"),
                None => "back to their source queues".to_owned(),
            };
            format!(
                "moved {} from '{dlq}' {destination}\n",
                plural(moved, "message")
            )
        },
        || json!({ "moved": moved }),
    )
}

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
struct ProgressPrinter {
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
    fn new(source: &str) -> ProgressPrinter {
        ProgressPrinter {
            source: source.to_owned(),
            terminal: std::io::stderr().is_terminal(),
            latest: None,
            printed: None,
        }
    }

    fn update(&mut self, p: RedriveProgress) {
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
    fn finish(&mut self) {
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
}
