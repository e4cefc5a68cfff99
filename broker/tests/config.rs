//! `broker config print` and startup validation through the real binary:
//! the precedence of flags over `BROKER_*` environment variables over the
//! `--config` file, which only a separate process can show (the
//! environment is process-wide).

use std::process::{Command, Output};

fn broker(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_broker"));
    command.args(args);
    // A developer's own settings must not leak into the test.
    for (key, _) in std::env::vars() {
        if key.starts_with("BROKER_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run the broker binary")
}

fn printed(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = broker(args, env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.toml");
    std::fs::write(
        &file,
        "max_streams = 5\nmax_connections = 6\nmax_long_polls_per_connection = 7\nlog_format = \"json\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let out = printed(
        &["config", "print", "--config", file, "--max-streams", "50"],
        &[
            ("BROKER_MAX_STREAMS", "500"),
            ("BROKER_MAX_CONNECTIONS", "600"),
        ],
    );
    assert!(out.contains("max_streams = 50\n"), "{out}");
    assert!(out.contains("max_connections = 600\n"), "{out}");
    assert!(out.contains("max_long_polls_per_connection = 7\n"), "{out}");
    assert!(out.contains("log_format = \"json\"\n"), "{out}");
    assert!(out.contains("listen = \"127.0.0.1:50051\"\n"), "{out}");
    // The file can come from the environment too.
    let out = printed(&["config", "print"], &[("BROKER_CONFIG", file)]);
    assert!(out.contains("max_streams = 5\n"), "{out}");
}

#[test]
fn a_wrong_value_stops_serve_naming_the_key_the_value_and_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = broker(
        &["serve", "--data-dir", data.to_str().unwrap()],
        &[("BROKER_SYNC_INTERVAL_MS", "0")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sync_interval_ms = 0: must be in 1..=10000"),
        "{stderr}"
    );
    assert!(
        !data.exists(),
        "nothing is created before the configuration is valid"
    );
}
