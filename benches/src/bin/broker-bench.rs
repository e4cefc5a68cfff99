//! `broker-bench`: the load generator. See `benches/README.md` for the
//! scenarios and their figures, and `broker-bench --help` for the flags.
//!
//! Phases: start an embedded broker (unless `--server`), connect, create
//! the queues (and topic), preload the backlog, then measure for
//! `--duration` seconds, and print the report. CPU time is read just
//! before and just after the measured phase; peak RSS at the end.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use benches::echo::EchoServer;
use benches::embedded::{BROKER_THREAD_NAME, EmbeddedBroker};
use benches::load::{self, Plan};
use benches::options::{Mode, Options};
use benches::procfs::{self, Process};
use benches::report::{Report, ResourceSource, Resources};
use clap::Parser as _;

/// The same allocator as `broker serve`, so that the embedded broker
/// measures what the real one does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Name of the generator's runtime threads.
const GENERATOR_THREAD_NAME: &str = "bench-gen";

fn main() -> ExitCode {
    let opts = Options::parse();
    let output = match opts.mode {
        Mode::Unary | Mode::Stream => run(&opts).map(|report| match opts.json {
            true => format!("{}\n", report.json()),
            false => report.text(),
        }),
        Mode::Echo | Mode::Health => echo(&opts),
    };
    match output {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &Options) -> anyhow::Result<Report> {
    let server_addrs = opts.validate().map_err(anyhow::Error::msg)?;
    let (cores, runtime) = generator_runtime()?;
    let embedded = match server_addrs.is_empty() {
        false => None,
        true => Some(EmbeddedBroker::start(opts.sync, cores)?),
    };
    let addrs: Vec<String> = match &embedded {
        Some(b) => vec![b.addr().to_string()],
        None => server_addrs.iter().map(|a| a.to_string()).collect(),
    };
    let source = match (&embedded, opts.server_pid) {
        (Some(_), _) => ResourceSource::SharedProcess,
        (None, Some(_)) => ResourceSource::ServerPid,
        (None, None) => ResourceSource::NotMeasured,
    };
    let broker_process = match (&embedded, opts.server_pid) {
        (Some(_), _) => Some(Process::Current),
        (None, pid) => pid.map(Process::Pid),
    };

    let result = runtime.block_on(async {
        let producer_clients = load::connect(
            &addrs,
            opts.producers as usize,
            opts.connections,
            !opts.no_follow_leader,
        )
        .await?;
        let consumer_clients = load::connect(
            &addrs,
            opts.consumers as usize,
            opts.connections,
            !opts.no_follow_leader,
        )
        .await?;
        let plan = Plan::create(&producer_clients[0], opts, embedded.is_none()).await?;
        let preload_seconds = if opts.backlog > 0 {
            eprintln!("preloading {} messages ...", opts.backlog);
            let began = Instant::now();
            load::preload(
                &producer_clients,
                &plan,
                opts.payload as usize,
                opts.backlog,
            )
            .await?;
            Some(began.elapsed().as_secs_f64())
        } else {
            None
        };
        let before = Counters::read(broker_process)?;
        let began = Instant::now();
        let stats = load::run(&producer_clients, &consumer_clients, &plan, opts).await?;
        let wall = began.elapsed().as_secs_f64();
        let after = Counters::read(broker_process)?;
        let resources = Resources {
            cpu_seconds: after.broker_cpu.zip(before.broker_cpu).map(|(a, b)| a - b),
            broker_threads_cpu_seconds: embedded.is_some().then_some(
                (after.process_cpu - after.generator_cpu)
                    - (before.process_cpu - before.generator_cpu),
            ),
            generator_cpu_seconds: Some(after.generator_cpu - before.generator_cpu),
            peak_rss_bytes: after.broker_memory.map(|m| m.peak_rss_bytes),
            rss_bytes: after.broker_memory.map(|m| m.rss_bytes),
        };
        anyhow::Ok(Report::new(
            opts,
            &stats,
            wall,
            preload_seconds,
            source,
            resources,
        ))
    });
    drop(runtime);
    if let Some(b) = embedded {
        b.stop()?;
    }
    result
}

/// `--mode echo` and `health`: calls/s of a bare tonic server, or of the
/// embedded broker's health service, in this process, with the server's
/// CPU and the generator's.
fn echo(opts: &Options) -> anyhow::Result<String> {
    opts.validate().map_err(anyhow::Error::msg)?;
    let (cores, runtime) = generator_runtime()?;
    let (echo_server, broker) = match opts.mode {
        Mode::Health => (None, Some(EmbeddedBroker::start(opts.sync, cores)?)),
        _ => (Some(EchoServer::start(cores)?), None),
    };
    let addr = match (&echo_server, &broker) {
        (Some(s), _) => s.addr(),
        (_, Some(b)) => b.addr(),
        _ => unreachable!("one of the two was started"),
    };
    let result = runtime.block_on(async {
        let before = Counters::read(Some(Process::Current))?;
        let (stats, connections) = benches::echo::run(
            addr,
            opts.producers,
            opts.connections,
            opts.duration(),
        )
        .await?;
        let after = Counters::read(Some(Process::Current))?;
        let server_cpu = (after.process_cpu - after.generator_cpu)
            - (before.process_cpu - before.generator_cpu);
        let generator_cpu = after.generator_cpu - before.generator_cpu;
        let per_call = |cpu: f64| cpu / stats.calls.max(1) as f64 * 1e6;
        if opts.json {
            let q = |q: f64| stats.latency.quantile_ms(q);
            let json = serde_json::json!({
                "mode": format!("{:?}", opts.mode).to_lowercase(),
                "callers": opts.producers,
                "connections": connections,
                "seconds": stats.wall,
                "calls": stats.calls,
                "calls_per_sec": stats.calls as f64 / stats.wall,
                "call_p50_ms": q(0.5),
                "call_p99_ms": q(0.99),
                "errors": stats.errors,
                "server_cpu_seconds": server_cpu,
                "generator_cpu_seconds": generator_cpu,
            });
            return anyhow::Ok(format!("{json}\n"));
        }
        anyhow::Ok(format!(
            "{}server CPU     {server_cpu:.2} s ({:.1} µs a call); generator {generator_cpu:.2} s ({:.1} µs a call)\n",
            stats.text(opts.mode, opts.producers, connections),
            per_call(server_cpu),
            per_call(generator_cpu),
        ))
    });
    drop(runtime);
    if let Some(s) = echo_server {
        s.stop()?;
    }
    if let Some(b) = broker {
        b.stop()?;
    }
    result
}

/// The machine's cores, and the generator's runtime with a worker thread
/// on each.
fn generator_runtime() -> anyhow::Result<(usize, tokio::runtime::Runtime)> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name(GENERATOR_THREAD_NAME)
        .enable_all()
        .build()
        .context("cannot start the generator's runtime")?;
    Ok((cores, runtime))
}

/// CPU and memory counters read at one moment.
struct Counters {
    /// CPU seconds of the broker's process, if it is known.
    broker_cpu: Option<f64>,
    /// The broker's process's memory, if it is known.
    broker_memory: Option<procfs::Sample>,
    /// CPU seconds of this whole process.
    process_cpu: f64,
    /// CPU seconds of the generator: its runtime's threads and the main
    /// thread when the broker is embedded, else this whole process.
    generator_cpu: f64,
}

impl Counters {
    fn read(broker: Option<Process>) -> anyhow::Result<Counters> {
        let own = procfs::sample(Process::Current).context("cannot read /proc/self")?;
        let broker_sample = match broker {
            Some(p) => Some(
                procfs::sample(p)
                    .with_context(|| format!("cannot read the broker's {p:?} in /proc"))?,
            ),
            None => None,
        };
        let generator_cpu = if broker == Some(Process::Current) {
            let main = procfs::current_pid();
            procfs::threads_cpu_seconds(|tid, name| {
                tid == main
                    || (name.starts_with(GENERATOR_THREAD_NAME)
                        && !name.starts_with(BROKER_THREAD_NAME))
            })?
        } else {
            own.cpu_seconds
        };
        Ok(Counters {
            broker_cpu: broker_sample.map(|s| s.cpu_seconds),
            broker_memory: broker_sample,
            process_cpu: own.cpu_seconds,
            generator_cpu,
        })
    }
}
