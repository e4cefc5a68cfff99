//! Runs the built `broker-bench` briefly in each of its modes and checks
//! its JSON report: counts add up, latencies were recorded, and the
//! broker's CPU and memory were read.

use std::process::Command;

use benches::embedded::EmbeddedBroker;
use broker::storage::SyncMode;
use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_broker-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run broker-bench");
    assert!(
        out.status.success(),
        "broker-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn num(report: &Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {report}"))
}

#[test]
fn echo_mode_calls_a_bare_server_and_splits_the_cpu() {
    let r = bench(&["--mode", "echo", "--duration", "1", "--producers", "4"]);
    assert_eq!(r["errors"], 0, "{r}");
    assert!(num(&r, "calls") > 0.0, "{r}");
    assert!(num(&r, "call_p99_ms") >= num(&r, "call_p50_ms"), "{r}");
    assert!(num(&r, "server_cpu_seconds") > 0.0, "{r}");
    assert!(num(&r, "generator_cpu_seconds") > 0.0, "{r}");
}

#[test]
fn health_mode_calls_the_embedded_broker() {
    let r = bench(&["--mode", "health", "--duration", "1", "--producers", "2"]);
    assert_eq!(
        (r["mode"].as_str(), &r["errors"]),
        (Some("health"), &0.into()),
        "{r}"
    );
    assert!(num(&r, "calls") > 0.0, "{r}");
}

#[test]
fn closed_loop_run_sends_consumes_and_times_both() {
    let r = bench(&[
        "--duration",
        "1",
        "--batch",
        "10",
        "--producers",
        "2",
        "--consumers",
        "2",
    ]);
    assert_eq!(r["errors"], 0, "{r}");
    assert!(num(&r, "sent_per_sec") > 0.0, "{r}");
    assert!(num(&r, "consumed_per_sec") > 0.0, "{r}");
    assert!(num(&r, "consumed") <= num(&r, "sent"), "{r}");
    let each_second = r["consumed_each_second"].as_array().expect("an array");
    assert_eq!(each_second.len(), 1, "{r}");
    // Sampled at the deadline: what was counted consumed by then, at most.
    assert!(
        each_second[0].as_u64().unwrap() <= r["consumed"].as_u64().unwrap(),
        "{r}"
    );
    for field in ["send_p50_ms", "send_p99_ms", "e2e_p50_ms", "e2e_p99_ms"] {
        assert!(num(&r, field) > 0.0, "{field}: {r}");
    }
    assert!(num(&r, "send_p99_ms") >= num(&r, "send_p50_ms"), "{r}");
    assert!(num(&r, "broker_cpu_seconds") > 0.0, "{r}");
    assert!(num(&r, "broker_peak_rss_bytes") > 1e6, "{r}");
    assert_eq!(r["broker_resources"], "shared_process");
}

#[test]
fn stream_mode_sends_on_the_publishing_stream_and_consumes_pushed_messages() {
    let r = bench(&[
        "--mode",
        "stream",
        "--duration",
        "1",
        "--batch",
        "5",
        "--producers",
        "2",
        "--consumers",
        "2",
    ]);
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["mode"], "stream", "{r}");
    assert!(num(&r, "sent") > 0.0, "{r}");
    assert!(num(&r, "consumed") > 0.0, "{r}");
    // A message may be consumed before its producer has its answer: at the
    // deadline, up to a frame per producer (2 × 5) is consumed, not sent.
    assert!(num(&r, "consumed") <= num(&r, "sent") + 10.0, "{r}");
    for field in ["send_p50_ms", "e2e_p50_ms"] {
        assert!(num(&r, field) > 0.0, "{field}: {r}");
    }
    // Over a topic: every acknowledged publication makes a copy per queue.
    let r = bench(&[
        "--mode",
        "stream",
        "--duration",
        "1",
        "--fanout",
        "2",
        "--consumers",
        "2",
    ]);
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(
        num(&r, "delivered_per_sec"),
        2.0 * num(&r, "sent_per_sec"),
        "{r}"
    );
}

#[test]
fn fanout_run_writes_a_copy_per_subscribed_queue() {
    let r = bench(&["--duration", "1", "--fanout", "3", "--consumers", "3"]);
    assert_eq!(r["errors"], 0, "{r}");
    assert!(num(&r, "sent") > 0.0, "{r}");
    assert_eq!(
        num(&r, "delivered_per_sec"),
        3.0 * num(&r, "sent_per_sec"),
        "{r}"
    );
    assert!(num(&r, "consumed") > 0.0, "{r}");
}

#[test]
fn open_loop_run_offers_its_rate_and_consumes_the_backlog() {
    let r = bench(&[
        "--duration",
        "2",
        "--rate",
        "200",
        "--backlog",
        "250",
        "--queues",
        "3",
    ]);
    assert_eq!(r["errors"], 0, "{r}");
    let sent = num(&r, "sent");
    assert!(
        (320.0..=420.0).contains(&sent),
        "offered 400 in 2 s, sent {sent}: {r}"
    );
    // The preloaded messages are consumed too, but carry no send time.
    assert!(num(&r, "consumed") > sent, "{r}");
    assert!(num(&r, "schedule_lag_p99_ms") >= 0.0, "{r}");
}

#[test]
fn server_run_reads_the_broker_process_by_pid() {
    let broker = EmbeddedBroker::start(SyncMode::None, 1).expect("start a broker");
    let addr = broker.addr().to_string();
    // The broker runs in this test's process: its pid is the broker's.
    let pid = std::process::id().to_string();
    let r = bench(&[
        "--server",
        &addr,
        "--server-pid",
        &pid,
        "--duration",
        "1",
        "--queues",
        "2",
    ]);
    assert_eq!(r["errors"], 0, "{r}");
    assert!(num(&r, "consumed") > 0.0, "{r}");
    assert_eq!(r["broker"], addr.as_str());
    assert_eq!(r["broker_resources"], "server_pid");
    assert!(num(&r, "broker_peak_rss_bytes") > 1e6, "{r}");
    broker.stop().expect("stop the broker");

    let unmeasured = Command::new(env!("CARGO_BIN_EXE_broker-bench"))
        .args(["--server", "192.0.2.1:50051", "--duration", "1"])
        .output()
        .expect("run broker-bench");
    assert!(!unmeasured.status.success());
    assert!(String::from_utf8_lossy(&unmeasured.stderr).contains("loopback"));
}
