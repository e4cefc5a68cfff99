//! The load generator's flags. [`Options::validate`] checks what clap's
//! ranges cannot (flags that only make sense together, the loopback rule)
//! and names the flag and its bounds in each message.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use broker::storage::SyncMode;
use broker_client::limits::{
    BATCH_ENTRIES_MAX, MAX_MESSAGE_BYTES_MAX, RECEIVE_MESSAGES_MAX, WAIT_TIME_SECONDS_MAX,
};

use crate::load::MAX_CONNECTIONS;
use clap::Parser;

/// Largest batch the broker accepts in every call the generator batches:
/// the entries of a send, publish or delete, and a receive's messages.
pub const MAX_BATCH: u32 = {
    let entries = BATCH_ENTRIES_MAX as u32;
    if entries < RECEIVE_MESSAGES_MAX {
        entries
    } else {
        RECEIVE_MESSAGES_MAX
    }
};

/// The payload carries its send time in its first 8 bytes.
pub const MIN_PAYLOAD_BYTES: usize = 8;

/// Load generator for the broker: producers send (or publish), consumers
/// long-poll, receive and delete; prints throughput, latency percentiles,
/// and the broker's CPU time and peak RSS.
///
/// Without --server it starts a broker in its own process, on a temp data
/// dir; the generator then shares that process (and its CPU figures).
#[derive(Parser, Debug, Clone)]
#[command(name = "broker-bench", version)]
pub struct Options {
    /// A running broker, `host:port` on a loopback address, or the nodes
    /// of a cluster, comma-separated (connections are spread over them in
    /// turn); without it, an embedded broker is started on 127.0.0.1 with
    /// a temp data dir.
    #[arg(long, value_name = "HOST:PORT[,...]")]
    pub server: Option<String>,
    /// With a cluster's nodes in --server: keep every call on the node it
    /// was sent to (each follower passes it on to the leader), rather than
    /// following the leader as the client does by default.
    #[arg(long, requires = "server")]
    pub no_follow_leader: bool,
    /// The process id of the --server broker, to report its CPU time and
    /// peak RSS from /proc; without it they are reported as n/a.
    #[arg(long, requires = "server")]
    pub server_pid: Option<u32>,
    /// Sending tasks (0: only consume, e.g. a --backlog).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub producers: u32,
    /// Receiving tasks; each long-polls, then deletes what it received.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub consumers: u32,
    /// Messages per send, publish, receive and delete call (1 uses the
    /// single-message RPCs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH as i64))]
    pub batch: u32,
    /// Bytes per message body; the first 8 carry the send time.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(MIN_PAYLOAD_BYTES as u64..=MAX_MESSAGE_BYTES_MAX as u64))]
    pub payload: u64,
    /// Queues to spread producers and consumers over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub queues: u32,
    /// Publish to a topic with this many subscribed queues (raw delivery)
    /// instead of sending to queues; consumers spread over those queues.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000), conflicts_with = "queues")]
    pub fanout: Option<u32>,
    /// Seconds to measure for; the run then stops by itself.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,
    /// Offered messages per second over all producers (open loop: sends
    /// start on schedule whether or not earlier ones were acknowledged).
    /// Without it, each producer sends as fast as acknowledgements come
    /// back (closed loop).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rate: Option<u64>,
    /// Messages to send before measuring (in batches of 100), so that the
    /// run starts with a backlog; they are not counted as sent, and their
    /// receipt is counted as consumed but left out of end-to-end latency.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub backlog: u64,
    /// Long-poll wait of each receive, in seconds (the broker allows 0..=20).
    /// With several queues per consumer, it polls them in turn without
    /// waiting and waits only after a whole round found nothing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=WAIT_TIME_SECONDS_MAX as i64))]
    pub wait: u32,
    /// Durability of the embedded broker: `always` (ack after fsync, shared
    /// by concurrent writes), `batch` or `batch:MS` (fsync at least every MS
    /// ms, default 10), `none` (left to the OS).
    #[arg(long, default_value = "always", value_parser = parse_sync, conflicts_with = "server")]
    pub sync: SyncMode,
    /// gRPC connections per role (producers, consumers). Default: one per
    /// task, at most 64. Tasks beyond it share connections in turn (HTTP/2
    /// multiplexes their calls).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS as i64))]
    pub connections: Option<u32>,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// `unary`: producers and consumers call the broker's RPCs. `stream`:
    /// producers send on the publishing stream (`SendStream`, through the
    /// client's `Publisher`: --batch messages per frame, awaited before the
    /// next), consumers take pushed messages (`StreamMessages`, through the
    /// client's push `Consumer`, credit 2 × --batch) and acknowledge them
    /// on the stream. `echo`: no
    /// broker; --producers callers call a bare tonic server (gRPC health
    /// `Check`) in this process, the ceiling of one unary call here.
    /// `health`: the same calls to the embedded broker's own health
    /// service, through the broker's layers but no engine.
    #[arg(long, value_enum, default_value_t = Mode::Unary)]
    pub mode: Mode,
}

/// What the generator measures (`--mode`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The broker's unary RPCs.
    Unary,
    /// The publishing stream and push delivery.
    Stream,
    /// A bare tonic unary call, no broker.
    Echo,
    /// The broker's health `Check`: its layers, no engine.
    Health,
}

impl Options {
    /// Checks the combinations clap cannot; returns the resolved addresses
    /// of `--server` (none: an embedded broker).
    pub fn validate(&self) -> Result<Vec<SocketAddr>, String> {
        if self.producers == 0 && self.consumers == 0 {
            return Err("--producers and --consumers are both 0: nothing to measure".into());
        }
        if matches!(self.mode, Mode::Echo | Mode::Health) {
            for (set, flag) in [
                (self.server.is_some(), "--server"),
                (self.fanout.is_some(), "--fanout"),
                (self.backlog > 0, "--backlog"),
                (self.rate.is_some(), "--rate"),
            ] {
                if set {
                    return Err(format!(
                        "--mode echo and health call a server of their own in closed loop; {flag} does not apply"
                    ));
                }
            }
            if self.producers == 0 {
                return Err("--mode echo and health need callers: --producers is 0".into());
            }
        }
        if self.mode == Mode::Stream && self.rate.is_some() {
            return Err("--mode stream runs closed loop; --rate does not apply".into());
        }
        if self.producers == 0 && self.rate.is_some() {
            return Err("--rate needs at least one producer; got --producers 0".into());
        }
        let Some(servers) = &self.server else {
            return Ok(Vec::new());
        };
        servers.split(',').map(resolve_loopback).collect()
    }

    /// How long the measured phase lasts.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration)
    }
}

/// One `--server` address, resolved; only loopback ones are accepted.
fn resolve_loopback(server: &str) -> Result<SocketAddr, String> {
    let hostport = server
        .trim()
        .strip_prefix("http://")
        .unwrap_or(server.trim())
        .trim_end_matches('/');
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("--server must be host:port[,...]; got {server:?}: {e}"))?
        .collect();
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        Some(a) => Err(format!(
            "--server must be a loopback address (127.0.0.0/8 or ::1), since broker-bench \
             reads the broker's CPU and memory from this machine's /proc; {server:?} resolves to {a}"
        )),
        None => addrs
            .first()
            .copied()
            .ok_or_else(|| format!("--server {server:?} resolves to no address")),
    }
}

/// Parses `always`, `batch`, `batch:MS` or `none`.
pub fn parse_sync(s: &str) -> Result<SyncMode, String> {
    match s {
        "always" => Ok(SyncMode::Always),
        "none" => Ok(SyncMode::None),
        "batch" => Ok(SyncMode::Batch(Duration::from_millis(10))),
        _ => match s.strip_prefix("batch:").map(str::parse::<u64>) {
            Some(Ok(ms @ 1..=10_000)) => Ok(SyncMode::Batch(Duration::from_millis(ms))),
            Some(_) => Err(format!(
                "the interval of batch:MS must be in 1..=10000; got {s:?}"
            )),
            None => Err(format!(
                "must be one of always, batch, batch:MS, none; got {s:?}"
            )),
        },
    }
}

/// The name of a sync mode as `--sync` spells it.
pub fn sync_name(mode: SyncMode) -> String {
    match mode {
        SyncMode::Always => "always".into(),
        SyncMode::Batch(every) => format!("batch:{}", every.as_millis()),
        SyncMode::None => "none".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("broker-bench").chain(args.iter().copied()))
    }

    #[test]
    fn echo_mode_refuses_what_does_not_apply() {
        let echo = parse(&["--mode", "echo", "--producers", "8"]).unwrap();
        assert_eq!(echo.mode, Mode::Echo);
        assert_eq!(echo.validate(), Ok(Vec::new()));
        for extra in [
            &["--server", "127.0.0.1:1"][..],
            &["--fanout", "2"],
            &["--backlog", "10"],
            &["--rate", "10"],
        ] {
            let args: Vec<&str> = ["--mode", "echo"].iter().chain(extra).copied().collect();
            let error = parse(&args).unwrap().validate().unwrap_err();
            assert!(error.contains(extra[0]), "{error}");
        }
    }

    #[test]
    fn sync_modes_parse_and_print_back() {
        for s in ["always", "none", "batch:10", "batch:250"] {
            assert_eq!(sync_name(parse_sync(s).unwrap()), s);
        }
        assert_eq!(
            parse_sync("batch").unwrap(),
            SyncMode::Batch(Duration::from_millis(10))
        );
        assert!(parse_sync("batch:0").unwrap_err().contains("1..=10000"));
        assert!(
            parse_sync("sometimes")
                .unwrap_err()
                .contains("always, batch")
        );
    }

    #[test]
    fn defaults_are_a_small_closed_loop_run() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.producers, o.consumers, o.batch, o.payload),
            (4, 4, 1, 256)
        );
        assert_eq!((o.queues, o.fanout, o.rate, o.backlog), (1, None, None, 0));
        assert_eq!(o.sync, SyncMode::Always);
        assert_eq!(o.validate(), Ok(vec![]));
    }

    #[test]
    fn out_of_range_flags_are_refused() {
        assert!(parse(&["--batch", "101"]).is_err());
        assert!(parse(&["--payload", "7"]).is_err());
        assert!(parse(&["--wait", "21"]).is_err());
        assert!(parse(&["--fanout", "10", "--queues", "2"]).is_err());
        assert!(parse(&["--server-pid", "1"]).is_err(), "needs --server");
        assert!(parse(&["--server", "127.0.0.1:1", "--sync", "none"]).is_err());
    }

    #[test]
    fn only_loopback_servers_are_accepted() {
        let ok = parse(&["--server", "127.0.0.1:50051"]).unwrap();
        assert_eq!(ok.validate().unwrap(), ["127.0.0.1:50051".parse().unwrap()]);
        let ok = parse(&["--server", "http://[::1]:50051"]).unwrap();
        assert_eq!(ok.validate().unwrap().len(), 1);
        let remote = parse(&["--server", "10.1.2.3:50051"]).unwrap();
        assert!(remote.validate().unwrap_err().contains("loopback"));
        let cluster = parse(&["--server", "127.0.0.1:1,127.0.0.1:2, 127.0.0.1:3"]).unwrap();
        assert_eq!(cluster.validate().unwrap().len(), 3);
        let mixed = parse(&["--server", "127.0.0.1:1,10.1.2.3:2"]).unwrap();
        assert!(mixed.validate().unwrap_err().contains("10.1.2.3"));
    }

    #[test]
    fn a_run_needs_someone_to_work() {
        let idle = parse(&["--producers", "0", "--consumers", "0"]).unwrap();
        assert!(idle.validate().unwrap_err().contains("nothing to measure"));
        let rate = parse(&["--producers", "0", "--rate", "10"]).unwrap();
        assert!(rate.validate().unwrap_err().contains("--rate"));
    }
}
