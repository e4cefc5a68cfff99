//! The results of a run, printed as text or as one JSON object.
//!
//! Rates divide what was acknowledged within the measured phase by its
//! configured length. Latencies are in milliseconds; a percentile of
//! nothing recorded is `null` in JSON and `n/a` in text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{Latency, Stats};
use crate::options::{Options, sync_name};

/// Where the broker's CPU and memory figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceSource {
    /// The embedded broker: this process, which runs the generator too.
    SharedProcess,
    /// `--server-pid`: the broker's own process.
    ServerPid,
    /// `--server` without `--server-pid`: not measured.
    NotMeasured,
}

/// CPU and memory of the broker over the measured phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    /// CPU seconds of the broker's process during the measured phase.
    pub cpu_seconds: Option<f64>,
    /// Embedded only: the same minus the generator's threads.
    pub broker_threads_cpu_seconds: Option<f64>,
    /// CPU seconds of the generator (its threads, or its whole process
    /// when the broker runs elsewhere).
    pub generator_cpu_seconds: Option<f64>,
    /// Peak RSS of the broker's process over its life.
    pub peak_rss_bytes: Option<u64>,
    /// RSS of the broker's process at the end.
    pub rss_bytes: Option<u64>,
}

/// One error kind: how many, and the broker's first message.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorKind {
    pub count: u64,
    pub first: String,
}

/// Everything a run reports; serialized as the `--json` object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `embedded` or the `--server` address.
    pub broker: String,
    /// `unary` or `stream` (`--mode`).
    pub mode: String,
    /// The embedded broker's `--sync`; `null` for `--server`.
    pub sync: Option<String>,
    pub producers: u32,
    pub consumers: u32,
    pub batch: u32,
    pub payload_bytes: u64,
    pub queues: u32,
    pub fanout: Option<u32>,
    /// Offered messages/s (open loop); `null` for closed loop.
    pub rate: Option<u64>,
    pub backlog: u64,
    pub wait_seconds: u32,
    /// `--connections`; `null`: one per task, at most 64.
    pub connections: Option<u32>,
    pub duration_seconds: u64,
    /// How long the preload took, if there was one.
    pub preload_seconds: Option<f64>,

    /// Messages (publications with `--fanout`) acknowledged in the phase.
    pub sent: u64,
    /// Messages received and then deleted (acknowledged) in the phase.
    pub consumed: u64,
    pub sent_per_sec: f64,
    pub consumed_per_sec: f64,
    /// The lowest count consumed in one whole second of the phase: how well
    /// the rate was sustained.
    pub consumed_min_per_sec: Option<u64>,
    /// Messages consumed in each second of the phase.
    pub consumed_each_second: Vec<u64>,
    /// With `--fanout`: copies the acknowledged publications wrote, per second.
    pub delivered_per_sec: Option<f64>,

    pub send_p50_ms: Option<f64>,
    pub send_p99_ms: Option<f64>,
    pub send_p999_ms: Option<f64>,
    pub send_max_ms: Option<f64>,
    /// Receives that returned messages, including any long-poll wait.
    pub receive_p50_ms: Option<f64>,
    pub receive_p99_ms: Option<f64>,
    pub receive_p999_ms: Option<f64>,
    /// From send to receipt; preloaded messages are left out.
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    pub e2e_p999_ms: Option<f64>,
    pub e2e_max_ms: Option<f64>,
    /// Open loop: how late sends started against their schedule (the
    /// generator itself falling behind), p99.
    pub schedule_lag_p99_ms: Option<f64>,

    /// Where the broker's CPU and memory figures come from.
    pub broker_resources: ResourceSource,
    /// CPU seconds of the broker's process in the phase; for the embedded
    /// broker, the whole process, generator included.
    pub broker_cpu_seconds: Option<f64>,
    /// `broker_cpu_seconds` per second of the phase (1.0 = one core busy).
    pub broker_cpu_cores: Option<f64>,
    /// Embedded only: the process's CPU minus the generator's threads.
    pub broker_threads_cpu_seconds: Option<f64>,
    pub generator_cpu_seconds: Option<f64>,
    /// Peak RSS of the broker's process over its whole life (`VmHWM`); for
    /// the embedded broker it includes the generator.
    pub broker_peak_rss_bytes: Option<u64>,
    pub broker_rss_bytes: Option<u64>,

    /// Failed calls and failed batch entries.
    pub errors: u64,
    pub error_kinds: BTreeMap<String, ErrorKind>,
}

impl Report {
    pub fn new(
        opts: &Options,
        stats: &Stats,
        wall_seconds: f64,
        preload_seconds: Option<f64>,
        source: ResourceSource,
        res: Resources,
    ) -> Report {
        let secs = opts.duration as f64;
        let q = |l: &Latency, q: f64| l.quantile_ms(q).map(round3);
        Report {
            broker: opts.server.clone().unwrap_or_else(|| "embedded".into()),
            sync: opts.server.is_none().then(|| sync_name(opts.sync)),
            producers: opts.producers,
            consumers: opts.consumers,
            batch: opts.batch,
            payload_bytes: opts.payload,
            queues: opts.fanout.unwrap_or(opts.queues),
            fanout: opts.fanout,
            rate: opts.rate,
            mode: match opts.mode {
                crate::options::Mode::Stream => "stream",
                _ => "unary",
            }
            .into(),
            backlog: opts.backlog,
            wait_seconds: opts.wait,
            connections: opts.connections,
            duration_seconds: opts.duration,
            preload_seconds: preload_seconds.map(round3),
            sent: stats.sent,
            consumed: stats.consumed,
            sent_per_sec: round1(stats.sent as f64 / secs),
            consumed_per_sec: round1(stats.consumed as f64 / secs),
            consumed_min_per_sec: stats.consumed_each_second.iter().min().copied(),
            consumed_each_second: stats.consumed_each_second.clone(),
            delivered_per_sec: opts.fanout.map(|_| round1(stats.delivered as f64 / secs)),
            send_p50_ms: q(&stats.send, 0.5),
            send_p99_ms: q(&stats.send, 0.99),
            send_p999_ms: q(&stats.send, 0.999),
            send_max_ms: stats.send.max_ms().map(round3),
            receive_p50_ms: q(&stats.receive, 0.5),
            receive_p99_ms: q(&stats.receive, 0.99),
            receive_p999_ms: q(&stats.receive, 0.999),
            e2e_p50_ms: q(&stats.end_to_end, 0.5),
            e2e_p99_ms: q(&stats.end_to_end, 0.99),
            e2e_p999_ms: q(&stats.end_to_end, 0.999),
            e2e_max_ms: stats.end_to_end.max_ms().map(round3),
            schedule_lag_p99_ms: q(&stats.schedule_lag, 0.99),
            broker_resources: source,
            broker_cpu_seconds: res.cpu_seconds.map(round3),
            broker_cpu_cores: res.cpu_seconds.map(|c| round3(c / wall_seconds)),
            broker_threads_cpu_seconds: res.broker_threads_cpu_seconds.map(round3),
            generator_cpu_seconds: res.generator_cpu_seconds.map(round3),
            broker_peak_rss_bytes: res.peak_rss_bytes,
            broker_rss_bytes: res.rss_bytes,
            errors: stats.errors.total(),
            error_kinds: stats
                .errors
                .0
                .iter()
                .map(|(kind, (count, first))| {
                    (
                        kind.clone(),
                        ErrorKind {
                            count: *count,
                            first: first.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The report as one line of JSON.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let broker = match &self.sync {
            Some(sync) => format!("embedded broker, --sync {sync}"),
            None => format!("broker at {}", self.broker),
        };
        let target = match self.fanout {
            Some(n) => format!("a topic with {n} subscribed queues"),
            None if self.queues == 1 => "1 queue".to_string(),
            None => format!("{} queues", self.queues),
        };
        let mut mode = match self.rate {
            Some(r) => format!("open loop at {r} msg/s"),
            None => "closed loop".into(),
        };
        if self.mode == "stream" {
            mode.push_str(", publishing stream and push delivery");
        }
        if let Some(c) = self.connections {
            let _ = write!(mode, ", {c} connections per role");
        }
        let _ = writeln!(
            s,
            "{broker}; {} producers, {} consumers, batch {}, {} B payload, {target}, {mode}, {} s",
            self.producers, self.consumers, self.batch, self.payload_bytes, self.duration_seconds
        );
        if let Some(p) = self.preload_seconds {
            let _ = writeln!(s, "preloaded {} messages in {p:.1} s", self.backlog);
        }
        let _ = writeln!(
            s,
            "sent        {:>12.0} msg/s  ({} messages{})",
            self.sent_per_sec,
            self.sent,
            if self.fanout.is_some() {
                ", publications"
            } else {
                ""
            }
        );
        if let Some(d) = self.delivered_per_sec {
            let _ = writeln!(s, "delivered   {d:>12.0} copies/s");
        }
        let _ = writeln!(
            s,
            "consumed    {:>12.0} msg/s  ({} received and deleted{})",
            self.consumed_per_sec,
            self.consumed,
            self.consumed_min_per_sec
                .map(|m| format!("; slowest second {m}"))
                .unwrap_or_default()
        );
        let row = |s: &mut String, name: &str, p50, p99, p999, max: Option<f64>| {
            let _ = writeln!(
                s,
                "{name:<20} p50 {:>9}  p99 {:>9}  p99.9 {:>9}{}",
                ms(p50),
                ms(p99),
                ms(p999),
                max.map(|m| format!("  max {:>9}", ms(Some(m))))
                    .unwrap_or_default()
            );
        };
        row(
            &mut s,
            "send-ack latency",
            self.send_p50_ms,
            self.send_p99_ms,
            self.send_p999_ms,
            self.send_max_ms,
        );
        row(
            &mut s,
            "receive latency",
            self.receive_p50_ms,
            self.receive_p99_ms,
            self.receive_p999_ms,
            None,
        );
        row(
            &mut s,
            "end-to-end latency",
            self.e2e_p50_ms,
            self.e2e_p99_ms,
            self.e2e_p999_ms,
            self.e2e_max_ms,
        );
        if let Some(lag) = self.schedule_lag_p99_ms {
            let _ = writeln!(
                s,
                "schedule lag         p99 {:>9}  (how late the generator started sends)",
                ms(Some(lag))
            );
        }
        match self.broker_resources {
            ResourceSource::SharedProcess => {
                let _ = writeln!(
                    s,
                    "broker CPU  {} s ({} cores) for the whole process: the generator shares it; \
                     without the generator's threads {} s",
                    num(self.broker_cpu_seconds),
                    num(self.broker_cpu_cores),
                    num(self.broker_threads_cpu_seconds)
                );
                let _ = writeln!(
                    s,
                    "peak RSS    {} (whole process, generator included; now {})",
                    mib(self.broker_peak_rss_bytes),
                    mib(self.broker_rss_bytes)
                );
            }
            ResourceSource::ServerPid => {
                let _ = writeln!(
                    s,
                    "broker CPU  {} s ({} cores); generator {} s",
                    num(self.broker_cpu_seconds),
                    num(self.broker_cpu_cores),
                    num(self.generator_cpu_seconds)
                );
                let _ = writeln!(
                    s,
                    "peak RSS    {} (now {})",
                    mib(self.broker_peak_rss_bytes),
                    mib(self.broker_rss_bytes)
                );
            }
            ResourceSource::NotMeasured => {
                let _ = writeln!(
                    s,
                    "broker CPU  n/a, peak RSS n/a (pass --server-pid); generator {} s",
                    num(self.generator_cpu_seconds)
                );
            }
        }
        if self.errors == 0 {
            let _ = writeln!(s, "errors      0");
        } else {
            let _ = writeln!(s, "errors      {}", self.errors);
            for (kind, e) in &self.error_kinds {
                let _ = writeln!(s, "  {kind}: {} (first: {})", e.count, e.first);
            }
        }
        s
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3} ms"))
        .unwrap_or_else(|| "n/a".into())
}

fn num(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into())
}

fn mib(x: Option<u64>) -> String {
    x.map(|v| format!("{:.1} MiB", v as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "n/a".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn json_has_the_fields_the_issue_names() {
        let opts = Options::try_parse_from(["broker-bench", "--duration", "2"]).unwrap();
        let stats = Stats {
            sent: 10,
            consumed: 8,
            consumed_each_second: vec![5, 3],
            ..Default::default()
        };
        let report = Report::new(
            &opts,
            &stats,
            2.0,
            None,
            ResourceSource::SharedProcess,
            Resources {
                cpu_seconds: Some(1.0),
                peak_rss_bytes: Some(1 << 20),
                ..Default::default()
            },
        );
        let v: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        for field in [
            "sent_per_sec",
            "consumed_per_sec",
            "send_p50_ms",
            "send_p99_ms",
            "e2e_p50_ms",
            "e2e_p99_ms",
            "broker_cpu_seconds",
            "broker_peak_rss_bytes",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["sent_per_sec"], 5.0);
        assert_eq!(v["consumed_per_sec"], 4.0);
        assert_eq!(v["broker_cpu_cores"], 0.5);
        assert!(v["e2e_p99_ms"].is_null());
        assert_eq!(v["consumed_min_per_sec"], 3);
        assert!(report.text().contains("slowest second 3"));
        assert!(report.text().contains("generator shares it"));
    }
}
