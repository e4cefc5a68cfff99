//! The `broker` binary: `broker serve` runs the server, `broker config
//! print` shows the configuration it would run with; every other subcommand
//! is a client of a running broker, run by the `broker-cli` crate.

use std::path::PathBuf;

use anyhow::Context;
use broker::config::{LogConfig, LogFormat, ServerConfig, Settings};
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the broker allocates per
/// request (prost messages, HTTP/2 frames), and glibc's malloc took about
/// a fifth of its CPU under load (`benches/README.md`, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "broker",
    version,
    about = "A durable message broker with SQS semantics over gRPC"
)]
struct Cli {
    #[command(flatten)]
    client: broker_cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker server.
    Serve(ServeArgs),
    /// Show the server's configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCommand,
    },
    #[command(flatten)]
    Client(broker_cli::Command),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the effective configuration of `broker serve` with the same
    /// flags, environment and file, as TOML (every key, defaults included).
    Print(ServeArgs),
}

/// Every setting is a flag, a `BROKER_*` environment variable, or a key of
/// the `--config` file, in that order of precedence.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TOML file of settings (keys as the flags, with `_` for `-`; see broker.toml)
    #[arg(long, env = "BROKER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

impl ServeArgs {
    fn load(self) -> anyhow::Result<ServerConfig> {
        let rust_log = std::env::var("RUST_LOG").ok();
        Ok(self.settings.load(self.config.as_deref(), rust_log)?)
    }
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
            Command::Config {
                cmd: ConfigCommand::Print(args),
            } => {
                let config = args.load()?;
                let text = toml::to_string(&Settings::from(&config))?;
                println!("{}", text.trim_end());
                Ok(())
            }
            Command::Client(cmd) => broker_cli::run(&cli.client, cmd).await,
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
    let config = args.load()?;
    init_logs(&config.log);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
    broker::server::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Logs go to stderr, as text lines or JSON objects; the filter was
/// validated with the configuration. Text is coloured only on a terminal,
/// and never when `NO_COLOR` is set (no-color.org): a log redirected to a
/// file or a collector holds no escape sequences.
fn init_logs(log: &LogConfig) {
    use std::io::IsTerminal as _;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let filter = tracing_subscriber::EnvFilter::new(&log.filter);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
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
