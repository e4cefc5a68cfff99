//! The `broker` binary: `broker serve` runs the server; every other
//! subcommand is a client of a running broker (see `cli`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use broker::config::ServerConfig;
use broker::storage::SyncMode;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "broker",
    version,
    about = "A durable message broker with SQS semantics over gRPC"
)]
struct Cli {
    #[command(flatten)]
    client: broker::cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker server.
    Serve(ServeArgs),
    #[command(flatten)]
    Client(broker::cli::Command),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "BROKER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory of the database; created if missing.
    #[arg(long, env = "BROKER_DATA_DIR", default_value = "broker-data")]
    data_dir: PathBuf,
    /// What an acknowledged send or delete promises: `always` synced to disk
    /// (concurrent requests share syncs), `batch` synced within
    /// --sync-interval-ms, `none` left to the OS.
    #[arg(long, env = "BROKER_SYNC", value_enum, default_value_t = Sync::Always)]
    sync: Sync,
    /// With --sync batch: the longest time between two syncs.
    #[arg(long, env = "BROKER_SYNC_INTERVAL_MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    sync_interval_ms: u64,
    /// Seconds in-flight requests may run on after SIGINT/SIGTERM.
    #[arg(long, env = "BROKER_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    shutdown_timeout: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Sync {
    Always,
    Batch,
    None,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Client(cmd) => broker::cli::run(&cli.client, cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = ServerConfig {
        sync: match args.sync {
            Sync::Always => SyncMode::Always,
            Sync::Batch => SyncMode::Batch(Duration::from_millis(args.sync_interval_ms)),
            Sync::None => SyncMode::None,
        },
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        ..ServerConfig::new(args.data_dir)
    };
    broker::server::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
