//! Harness for the integration tests: a real broker server over gRPC.
//!
//! [`TestServer::start`] binds `127.0.0.1:0` *before* spawning
//! [`broker::server::run`], so the port accepts connections at once: no sleeps
//! for readiness. Each server owns a fresh temporary data directory, which
//! lives as long as the `TestServer` and survives [`TestServer::restart`].
//! Tests run on `#[tokio::test(flavor = "multi_thread")]`, so that dropping a
//! `TestServer` can wait for the database to close before deleting its files.
//!
//! Every server serves `/metrics` (as `broker serve` does by default) on a
//! port of its own: the harness sets `metrics_listen = 127.0.0.1:0` before a
//! test's `configure` (which may change or clear it) and binds it before the
//! server starts (through [`broker::server::run_with_metrics_listener`]), so
//! that port 0 works and [`TestServer::metrics_addr`] tells the port.
//!
//! Tests wait for events, not for time to pass: a receive that is parked
//! shows in the `broker_long_polls_open` gauge
//! ([`TestServer::wait_for_long_polls`]), and any other condition is polled
//! by [`eventually`], which fails the test with what it waited for. A test
//! sleeps only where time passing is what it tests (a visibility timeout
//! or a delay lapsing, a deadline passing, nothing happening for a while).
//!
//! [`ChildServer`] runs the broker in a separate process (this same test
//! binary, re-executed) so that a crash test can SIGKILL it and then open its
//! data directory with [`TestServer::start_in`].
//!
//! The helpers below keep the tests about behaviour rather than request
//! plumbing: every one panics with the RPC and the error when the call fails,
//! and [`assert_error`] checks a status code together with the words its
//! message must contain (the field, the limit, the value). The usual start
//! of a test is [`server_with_queue`]; [`send_numbered`], [`send_batch`],
//! [`receive_n`] and [`drain`] fill and empty a queue.

pub mod cluster;

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use broker::config::ServerConfig;
use bytes::Bytes;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use broker_client::{Client, Error, limits, pb};
pub use tonic::Code;

/// How long a graceful shutdown may take before the harness calls it hung.
/// Shutdown ends long polls, so even a test with a 20 s poll stays far below.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker serving on a local port with its own temporary data directory.
///
/// Dropping it shuts the server down, waits for it to close its database
/// (on a multi-threaded runtime: the tests use
/// `#[tokio::test(flavor = "multi_thread")]`) and deletes the data directory.
/// [`TestServer::shutdown`] does the same and also checks that the server
/// returned `Ok`.
pub struct TestServer {
    /// Where the current instance listens; a restart picks a new port.
    addr: SocketAddr,
    /// Where it serves `/metrics`, if configured with `metrics_listen`.
    metrics_addr: Option<SocketAddr>,
    /// The running instance; `None` only while restarting or shutting down.
    running: Option<Running>,
    /// The RocksDB directory. An `Option` only so that `Drop` can hand it to
    /// the task that waits for the server, and delete it after the DB closed.
    data_dir: Option<TempDir>,
    /// Adjusts the default configuration before every start (restarts too).
    configure: Configure,
}

/// A change to the default [`ServerConfig`] of a [`TestServer`].
pub type Configure = std::sync::Arc<dyn Fn(&mut ServerConfig) + Send + Sync>;

/// One instance of the server: a task running `broker::server::run`.
struct Running {
    /// Resolves the shutdown future given to `run` (dropping it does too).
    shutdown: oneshot::Sender<()>,
    /// `run`'s result: it returns once the database is closed.
    task: JoinHandle<Result<(), broker::server::StartupError>>,
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` with an empty data directory.
    pub async fn start() -> TestServer {
        TestServer::start_in(temp_data_dir()).await
    }

    /// Starts a server on `127.0.0.1:0` with the data left in `data_dir`,
    /// e.g. by a [`ChildServer`] that was killed.
    pub async fn start_in(data_dir: TempDir) -> TestServer {
        TestServer::start_configured(data_dir, std::sync::Arc::new(|_| {})).await
    }

    /// Starts a server on `127.0.0.1:0` with an empty data directory and the
    /// default configuration changed by `configure` (also on restarts), e.g.
    /// `TestServer::start_with(|c| c.limits.max_streams = 1)`.
    pub async fn start_with(
        configure: impl Fn(&mut ServerConfig) + Send + Sync + 'static,
    ) -> TestServer {
        TestServer::start_configured(temp_data_dir(), std::sync::Arc::new(configure)).await
    }

    async fn start_configured(data_dir: TempDir, configure: Configure) -> TestServer {
        let (addr, metrics_addr, running) = spawn_server(data_dir.path(), &*configure).await;
        TestServer {
            addr,
            metrics_addr,
            running: Some(running),
            data_dir: Some(data_dir),
            configure,
        }
    }

    /// The address the server listens on, e.g. `127.0.0.1:40123`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the server serves `/metrics`; panics if its `configure` turned
    /// metrics off (`metrics_listen = None`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
            .expect("this server was configured without `metrics_listen`")
    }

    /// The server's data directory (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.as_ref().expect("data dir").path()
    }

    /// A new client connection to the current instance.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr.to_string())
            .await
            .unwrap_or_else(|e| panic!("connect to the test server at {}: {e:?}", self.addr))
    }

    /// Stops the server gracefully, waits until `run` returned (the database
    /// is closed), then starts it again on the same data directory. Clients of
    /// the old instance must reconnect with [`TestServer::client`].
    /// Also starts a server that stopped by itself ([`TestServer::stopped`]).
    pub async fn restart(&mut self) {
        if self.running.is_some() {
            self.stop().await;
        }
        let (addr, metrics_addr, running) = spawn_server(self.data_dir(), &*self.configure).await;
        self.addr = addr;
        self.metrics_addr = metrics_addr;
        self.running = Some(running);
    }

    /// Waits (within [`SHUTDOWN_TIMEOUT`]) for a server that stops by
    /// itself, e.g. when its storage fails, and returns what `run` returned.
    pub async fn stopped(&mut self) -> Result<(), broker::server::StartupError> {
        let Running { shutdown, task } = self.running.take().expect("the server is running");
        let result = tokio::time::timeout(SHUTDOWN_TIMEOUT, task)
            .await
            .unwrap_or_else(|_| {
                panic!("the server did not stop by itself within {SHUTDOWN_TIMEOUT:?}")
            })
            .unwrap_or_else(|join_error| panic!("the server task failed: {join_error}"));
        drop(shutdown);
        result
    }

    /// Stops the server gracefully and checks that `run` returned `Ok` within
    /// [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        let Running { shutdown, task } = self.running.take().expect("the server is running");
        let _ = shutdown.send(());
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await {
            Err(_) => panic!("the server did not shut down within {SHUTDOWN_TIMEOUT:?}"),
            Ok(Err(join_error)) => panic!("the server task failed: {join_error}"),
            Ok(Ok(Err(error))) => panic!("broker::server::run returned an error: {error:?}"),
            Ok(Ok(Ok(()))) => {}
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let data_dir = self.data_dir.take();
        let Some(Running { shutdown, task }) = self.running.take() else {
            return;
        };
        let _ = shutdown.send(());
        // Delete the data directory only after the server closed its
        // database: RocksDB writes files while it closes, and a directory
        // removed under it is left behind half-deleted. Waiting needs a
        // multi-threaded runtime (`block_in_place`); on any other, the data
        // directory is deleted with whatever the server left at that moment.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| {
                let _ = runtime.block_on(tokio::time::timeout(SHUTDOWN_TIMEOUT, task));
            });
            drop(data_dir);
        } else {
            runtime.spawn(async move {
                let _ = task.await;
                drop(data_dir);
            });
        }
    }
}

/// A new, empty temporary data directory.
pub fn temp_data_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("broker-test-")
        .tempdir()
        .expect("create a temporary data directory")
}

async fn spawn_server(
    data_dir: &Path,
    configure: &(dyn Fn(&mut ServerConfig) + Send + Sync),
) -> (SocketAddr, Option<SocketAddr>, Running) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("the listener's address");
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let mut config = ServerConfig::new(data_dir);
    config.listen = addr;
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    // Tests do not depend on the machine's free space; the disk floor's own
    // test sets one.
    config.limits.min_free_disk = 0;
    configure(&mut config);
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .unwrap_or_else(|e| panic!("bind the metrics listener {at}: {e}")),
        ),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|l| l.local_addr().expect("the metrics listener's address"));
    let task = tokio::spawn(broker::server::run_with_metrics_listener(
        listener,
        metrics_listener,
        config,
        async move {
            // A dropped sender means shutdown too.
            let _ = shutdown_rx.await;
        },
    ));
    (addr, metrics_addr, Running { shutdown, task })
}

/// The test of the `it` binary that [`ChildServer`] runs: it must call
/// [`serve_as_child`] and be `#[ignore]`d, so that only a child runs it.
pub const CHILD_SERVER_TEST: &str = "restart::child_server_process";
/// Tells the child process which data directory to serve.
const CHILD_DATA_DIR_ENV: &str = "BROKER_TESTS_CHILD_DATA_DIR";
/// The line with which the child announces its address on stdout.
const CHILD_LISTENING: &str = "broker-tests child listening on ";

/// A broker in a process of its own, so that a test can kill it (SIGKILL)
/// the way a crash would: no shutdown, no flush, no closing of the database.
///
/// The process is the test binary itself, running [`CHILD_SERVER_TEST`],
/// which serves [`serve_as_child`] until killed.
pub struct ChildServer {
    /// The child; killed when dropped.
    process: tokio::process::Child,
    /// Where the child listens, as it announced on stdout.
    addr: SocketAddr,
}

impl ChildServer {
    /// Starts a child process serving `data_dir` on `127.0.0.1:0` and waits
    /// for it to announce its address.
    pub async fn start(data_dir: &Path) -> ChildServer {
        use tokio::io::AsyncBufReadExt;

        let exe = std::env::current_exe().expect("the test binary's path");
        let mut process = tokio::process::Command::new(exe)
            .args([
                CHILD_SERVER_TEST,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DATA_DIR_ENV, data_dir)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the child server process");
        let stdout = process.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let announced = async {
            while let Some(line) = lines.next_line().await.expect("read the child's stdout") {
                // libtest may have written "test <name> ... " before it.
                if let Some((_, addr)) = line.split_once(CHILD_LISTENING) {
                    return addr
                        .trim()
                        .parse::<SocketAddr>()
                        .expect("the child's address");
                }
            }
            panic!("the child server exited without announcing its address");
        };
        let addr = tokio::time::timeout(Duration::from_secs(30), announced)
            .await
            .expect("the child server announces its address within 30 s");
        // Keep draining stdout so that the child never blocks writing to it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ChildServer { process, addr }
    }

    /// The address the child listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new client connection to the child.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr.to_string())
            .await
            .unwrap_or_else(|e| panic!("connect to the child server at {}: {e:?}", self.addr))
    }

    /// Kills the child with SIGKILL and waits until it is gone.
    pub async fn kill(mut self) {
        self.process.kill().await.expect("kill the child server");
    }
}

/// The body of [`CHILD_SERVER_TEST`]: when the parent set the data directory,
/// serves it on `127.0.0.1:0` until the process is killed; otherwise (a plain
/// `cargo test -- --ignored`) returns at once.
pub fn serve_as_child() {
    let Some(data_dir) = std::env::var_os(CHILD_DATA_DIR_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the listener's address");
        println!("{CHILD_LISTENING}{addr}");
        let never = std::future::pending::<()>();
        let mut config = ServerConfig::new(data_dir);
        config.limits.min_free_disk = 0;
        broker::server::run(listener, config, never)
            .await
            .expect("the child server runs until killed");
    });
}

// ---------------------------------------------------------------------------
// Waiting for events.
// ---------------------------------------------------------------------------

/// How long the harness waits for something the server does on its own (a
/// parked receive showing in a gauge, a closed stream freeing its slot)
/// before it fails the test. It takes milliseconds; the margin is for a
/// 2-core machine busy compiling.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`eventually`] asks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The answer of a condition polled by [`eventually`]: `true` or
/// `Ok(value)` once it holds; `false` or `Err(e)` until then, `e` being
/// what to report if it never holds (the last error, the last state seen).
pub trait Outcome {
    /// What the condition gives once it holds.
    type Value;
    /// What it answers until then.
    type Pending: Debug;
    fn into_result(self) -> Result<Self::Value, Self::Pending>;
}

impl Outcome for bool {
    type Value = ();
    type Pending = &'static str;
    fn into_result(self) -> Result<(), &'static str> {
        if self { Ok(()) } else { Err("false") }
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    type Pending = E;
    fn into_result(self) -> Result<T, E> {
        self
    }
}

/// Asks `condition` every 10 ms until it holds, for at most `within` (the
/// last time once `within` has passed); returns its value, or its last
/// answer if it never held. [`eventually`] is the same, failing the test.
pub async fn poll_until<O, F, Fut>(
    within: Duration,
    mut condition: F,
) -> Result<O::Value, O::Pending>
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let pending = match condition().await.into_result() {
            Ok(value) => return Ok(value),
            Err(pending) => pending,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(pending);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until `condition` holds (see [`poll_until`]) and returns its value;
/// panics with `what` and the last answer if it does not within `within`.
///
/// ```no_run
/// # async fn demo(client: broker_tests::Client) {
/// use std::time::Duration;
/// use broker_tests::{counts, eventually};
///
/// eventually(Duration::from_secs(5), "the message is dead-lettered", || async {
///     counts(&client, "jobs-dlq").await.visible == 1
/// })
/// .await;
/// # }
/// ```
pub async fn eventually<O, F, Fut>(within: Duration, what: &str, condition: F) -> O::Value
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    match poll_until(within, condition).await {
        Ok(value) => value,
        Err(last) => panic!("not within {within:?}: {what} (last answer: {last:?})"),
    }
}

// ---------------------------------------------------------------------------
// Metrics: what the server reports about itself.
// ---------------------------------------------------------------------------

/// An HTTP/1.1 response: status, head (lowercased), body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One plain HTTP/1.1 request over a new connection (`Connection: close`).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    try_http(addr, method, path)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`http`], or what went wrong (a server that died mid-request).
pub async fn try_http(addr: SocketAddr, method: &str, path: &str) -> Result<HttpResponse, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send {method} {path} to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("read the response to {method} {path} from {addr}: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("a response from {addr}: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no head and body in {text:?} from {addr}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?} from {addr}"))?;
    Ok(HttpResponse {
        status,
        head: head.to_lowercase(),
        body: body.to_string(),
    })
}

/// The value of one series in a scrape, e.g. `broker_long_polls_open` or
/// `broker_queue_sent_total{queue="orders"}`.
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

impl TestServer {
    /// The metrics text at `/metrics`, checking that the scrape succeeded.
    pub async fn scrape(&self) -> String {
        let response = http(self.metrics_addr(), "GET", "/metrics").await;
        assert_eq!(response.status, 200, "GET /metrics: {}", response.body);
        response.body
    }

    /// Scrapes until `series` has the value `want` (for what changes in the
    /// background, e.g. a receive parking); panics after [`EVENT_TIMEOUT`].
    pub async fn wait_for_metric(&self, series: &str, want: f64) {
        let result = poll_until(EVENT_TIMEOUT, || async {
            let text = self.scrape().await;
            if metric_value(&text, series) == Some(want) {
                Ok(())
            } else {
                Err(text)
            }
        })
        .await;
        if let Err(text) = result {
            panic!("{series} was not {want} within {EVENT_TIMEOUT:?}; last scrape:\n{text}");
        }
    }

    /// Waits until exactly `open` `ReceiveMessages` calls are in progress
    /// (`broker_long_polls_open`). On an empty queue, a receive that counts
    /// is parked: a message made visible from then on wakes it. And once the
    /// count is back down, the server has dropped a cancelled call.
    pub async fn wait_for_long_polls(&self, open: u64) {
        self.wait_for_metric("broker_long_polls_open", open as f64)
            .await;
    }
}

/// Checks that `result` failed with `code` and that its message contains
/// every one of `needles` (field names, limits, values). Returns the error.
#[track_caller]
pub fn assert_error<T: Debug>(result: Result<T, Error>, code: Code, needles: &[&str]) -> Error {
    let error = match result {
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(error) => error,
    };
    assert_eq!(
        error.code(),
        code,
        "expected {code:?}, got {:?}: {:?}",
        error.code(),
        error.message()
    );
    for needle in needles {
        assert!(
            error.message().contains(needle),
            "the {code:?} message should contain {needle:?}: {:?}",
            error.message()
        );
    }
    error
}

/// The generated `QueueService` client, for what [`Client`] does not show
/// (the details of a status).
pub async fn raw_queue_client(
    server: &TestServer,
) -> pb::queue_service_client::QueueServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr()))
        .expect("a valid URI")
        .connect()
        .await
        .expect("connect to the test server");
    pb::queue_service_client::QueueServiceClient::new(channel)
}

/// Checks that `result` failed with INVALID_ARGUMENT whose
/// `google.rpc.BadRequest` detail names `field` (with the message as its
/// description); returns the status.
#[track_caller]
pub fn assert_bad_request<T: Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    field: &str,
) -> tonic::Status {
    use tonic_types::StatusExt as _;
    let status = match result {
        Ok(response) => panic!("expected INVALID_ARGUMENT on {field}, got {response:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let violation = details
        .bad_request()
        .and_then(|b| b.field_violations.first())
        .unwrap_or_else(|| panic!("no BadRequest field violation in {status:?}"));
    assert_eq!(violation.field, field, "{status:?}");
    assert_eq!(violation.description, status.message());
    status
}

/// Checks a failed batch entry: its id, its code name (e.g. "INVALID_ARGUMENT")
/// and the words its message must contain.
#[track_caller]
pub fn assert_batch_failure(
    failure: &pb::BatchResultError,
    id: &str,
    code: &str,
    needles: &[&str],
) {
    assert_eq!(failure.id, id, "failed entry: {failure:?}");
    assert_eq!(failure.code, code, "failed entry {id}: {failure:?}");
    for needle in needles {
        assert!(
            failure.message.contains(needle),
            "the message of failed entry {id} should contain {needle:?}: {:?}",
            failure.message
        );
    }
}

/// Queue attributes with every field unset (the server's defaults apply).
pub fn attributes() -> pb::QueueAttributes {
    pb::QueueAttributes::default()
}

/// Queue attributes with only the visibility timeout set.
pub fn visibility(seconds: u32) -> pb::QueueAttributes {
    pb::QueueAttributes {
        visibility_timeout_seconds: Some(seconds),
        ..Default::default()
    }
}

/// Queue attributes with only a redrive policy set.
pub fn redrive_to(dead_letter_queue: &str, max_receive_count: u32) -> pb::QueueAttributes {
    pb::QueueAttributes {
        redrive_policy: Some(pb::RedrivePolicy {
            dead_letter_queue: dead_letter_queue.to_string(),
            max_receive_count,
        }),
        ..Default::default()
    }
}

/// Creates a queue, panicking on failure.
pub async fn create_queue(
    client: &Client,
    name: &str,
    attributes: pb::QueueAttributes,
) -> pb::Queue {
    client
        .create_queue(pb::CreateQueueRequest {
            name: name.to_string(),
            attributes: Some(attributes),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateQueue {name}: {e:?}"))
        .queue
        .expect("CreateQueue returns the queue")
}

/// A server, a client of it, and a queue `name` created with `attributes`:
/// the usual start of a test.
pub async fn server_with_queue(
    name: &str,
    attributes: pb::QueueAttributes,
) -> (TestServer, Client) {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_queue(&client, name, attributes).await;
    (server, client)
}

/// A queue's effective attributes, panicking on failure.
pub async fn queue_attributes(client: &Client, name: &str) -> pb::QueueAttributes {
    client
        .get_queue(pb::GetQueueRequest {
            name: name.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("GetQueue {name}: {e:?}"))
        .queue
        .expect("GetQueue returns the queue")
        .attributes
        .expect("a queue has attributes")
}

/// The exact message counts of a queue (`QueueStats` without the age).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl Counts {
    pub const EMPTY: Counts = Counts {
        visible: 0,
        in_flight: 0,
        delayed: 0,
    };

    pub fn new(visible: u64, in_flight: u64, delayed: u64) -> Counts {
        Counts {
            visible,
            in_flight,
            delayed,
        }
    }
}

/// A queue's stats, panicking on failure.
pub async fn stats(client: &Client, queue: &str) -> pb::QueueStats {
    client
        .get_queue(pb::GetQueueRequest {
            name: queue.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("GetQueue {queue}: {e:?}"))
        .stats
        .expect("GetQueue returns stats")
}

/// A queue's visible / in-flight / delayed counts, panicking on failure.
pub async fn counts(client: &Client, queue: &str) -> Counts {
    let stats = stats(client, queue).await;
    Counts::new(stats.visible, stats.in_flight, stats.delayed)
}

/// A `SendMessageRequest` with attributes and an optional delay.
pub fn send_request(
    queue: &str,
    body: impl Into<Bytes>,
    attributes: &[(&str, &str)],
    delay_seconds: Option<u32>,
) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        queue: queue.to_string(),
        body: body.into(),
        attributes: string_map(attributes),
        delay_seconds,
    }
}

/// Sends a message with attributes and an optional delay; returns its id.
pub async fn send_message(
    client: &Client,
    queue: &str,
    body: impl Into<Bytes>,
    attributes: &[(&str, &str)],
    delay_seconds: Option<u32>,
) -> String {
    client
        .send_message(send_request(queue, body, attributes, delay_seconds))
        .await
        .unwrap_or_else(|e| panic!("SendMessage to {queue}: {e:?}"))
        .message_id
}

/// The bodies `m0` to `m{n-1}`.
pub fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

/// Sends [`numbered`] bodies one `SendMessage` at a time, so that they are
/// in the queue in that order; returns their ids in the same order.
pub async fn send_numbered(client: &Client, queue: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for body in numbered(n) {
        ids.push(send_message(client, queue, body, &[], None).await);
    }
    ids
}

/// Sends `bodies` with `SendMessageBatch`, a full batch
/// ([`limits::BATCH_ENTRIES_MAX`]) at a time; panics unless every entry
/// succeeds. Returns the ids in the order of the bodies.
pub async fn send_batch<B: Into<Bytes>>(
    client: &Client,
    queue: &str,
    bodies: impl IntoIterator<Item = B>,
) -> Vec<String> {
    let bodies: Vec<Bytes> = bodies.into_iter().map(Into::into).collect();
    let mut ids = Vec::with_capacity(bodies.len());
    for chunk in bodies.chunks(limits::BATCH_ENTRIES_MAX) {
        let response = client
            .send_message_batch(pb::SendMessageBatchRequest {
                queue: queue.to_string(),
                entries: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, body)| pb::SendMessageBatchEntry {
                        id: i.to_string(),
                        body: body.clone(),
                        ..Default::default()
                    })
                    .collect(),
            })
            .await
            .unwrap_or_else(|e| panic!("SendMessageBatch to {queue}: {e:?}"));
        assert!(
            response.failed.is_empty() && response.successful.len() == chunk.len(),
            "SendMessageBatch to {queue}: failed entries {:?}",
            response.failed
        );
        let mut successful = response.successful;
        successful.sort_by_key(|entry| entry.id.parse::<usize>().expect("an id of this batch"));
        ids.extend(successful.into_iter().map(|entry| entry.message_id));
    }
    ids
}

/// A `ReceiveMessagesRequest`; `None` takes the queue's default.
pub fn receive_request(
    queue: &str,
    max_messages: u32,
    visibility_timeout_seconds: Option<u32>,
    wait_time_seconds: Option<u32>,
) -> pb::ReceiveMessagesRequest {
    pb::ReceiveMessagesRequest {
        queue: queue.to_string(),
        max_messages,
        visibility_timeout_seconds,
        wait_time_seconds,
    }
}

/// Receives without waiting (wait time 0) with an explicit visibility timeout.
pub async fn receive_now(
    client: &Client,
    queue: &str,
    max_messages: u32,
    visibility_timeout_seconds: u32,
) -> Vec<pb::ReceivedMessage> {
    receive_with(
        client,
        receive_request(
            queue,
            max_messages,
            Some(visibility_timeout_seconds),
            Some(0),
        ),
    )
    .await
}

/// Receives with a long poll of `wait_time_seconds` and an explicit
/// visibility timeout.
pub async fn receive_wait(
    client: &Client,
    queue: &str,
    max_messages: u32,
    visibility_timeout_seconds: u32,
    wait_time_seconds: u32,
) -> Vec<pb::ReceivedMessage> {
    receive_with(
        client,
        receive_request(
            queue,
            max_messages,
            Some(visibility_timeout_seconds),
            Some(wait_time_seconds),
        ),
    )
    .await
}

/// Sends a `ReceiveMessagesRequest`, panicking on failure.
pub async fn receive_with(
    client: &Client,
    request: pb::ReceiveMessagesRequest,
) -> Vec<pb::ReceivedMessage> {
    let queue = request.queue.clone();
    client
        .receive_messages(request)
        .await
        .unwrap_or_else(|e| panic!("ReceiveMessages from {queue}: {e:?}"))
        .messages
}

/// The one message of a receive; panics if there are none or several.
#[track_caller]
pub fn only(messages: Vec<pb::ReceivedMessage>) -> pb::ReceivedMessage {
    assert_eq!(
        messages.len(),
        1,
        "expected exactly one message: {messages:?}"
    );
    messages.into_iter().next().expect("one message")
}

/// Receives exactly `n` messages with long polls of up to 5 s each (as
/// many as it takes), hiding them for `visibility_timeout_seconds`; panics
/// if a long poll ends with none of the rest.
pub async fn receive_n(
    client: &Client,
    queue: &str,
    n: usize,
    visibility_timeout_seconds: u32,
) -> Vec<pb::ReceivedMessage> {
    const WAIT_SECONDS: u32 = 5;
    let mut received = Vec::with_capacity(n);
    while received.len() < n {
        let max = (n - received.len()).min(limits::RECEIVE_MESSAGES_MAX as usize) as u32;
        let messages =
            receive_wait(client, queue, max, visibility_timeout_seconds, WAIT_SECONDS).await;
        assert!(
            !messages.is_empty(),
            "{} of {n} messages received from {queue}, then none within {WAIT_SECONDS} s",
            received.len()
        );
        received.extend(messages);
    }
    received
}

/// Receives everything visible in `queue` now (hiding it for 30 s), in as
/// many receives as it takes.
pub async fn drain(client: &Client, queue: &str) -> Vec<pb::ReceivedMessage> {
    let mut all = Vec::new();
    loop {
        let batch = receive_now(client, queue, limits::RECEIVE_MESSAGES_MAX, 30).await;
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// Redrives every message of `source` (a dead-letter queue) to
/// `destination`, or back to the queues they died in when it is empty;
/// returns how many moved, panicking on failure.
pub async fn redrive(client: &Client, source: &str, destination: &str) -> u64 {
    client
        .redrive_messages(pb::RedriveMessagesRequest {
            source_queue: source.to_string(),
            destination_queue: destination.to_string(),
            max_messages: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("RedriveMessages {source}: {e:?}"))
        .moved
}

/// Deletes a message by receipt handle, returning the RPC's result.
pub async fn delete_message(
    client: &Client,
    queue: &str,
    receipt_handle: &str,
) -> Result<(), Error> {
    client
        .delete_message(pb::DeleteMessageRequest {
            queue: queue.to_string(),
            receipt_handle: receipt_handle.to_string(),
        })
        .await
        .map(|_| ())
}

/// Changes a message's visibility timeout, returning the RPC's result.
pub async fn change_visibility(
    client: &Client,
    queue: &str,
    receipt_handle: &str,
    seconds: u32,
) -> Result<(), Error> {
    client
        .change_message_visibility(pb::ChangeMessageVisibilityRequest {
            queue: queue.to_string(),
            receipt_handle: receipt_handle.to_string(),
            visibility_timeout_seconds: seconds,
        })
        .await
        .map(|_| ())
}

/// A `map<string, string>` from pairs.
pub fn string_map(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Milliseconds since the Unix epoch, as the server stamps `*_at_ms`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------
// Startup failures: a data directory the broker must refuse to serve.
// ---------------------------------------------------------------------------

impl TestServer {
    /// Stops the server gracefully (as [`TestServer::shutdown`]) and hands
    /// back its data directory instead of deleting it, e.g. to corrupt it.
    pub async fn stop_keeping_data(mut self) -> TempDir {
        self.stop().await;
        self.data_dir.take().expect("data dir")
    }
}

/// Runs [`broker::server::run`] on `data_dir` in this process and returns the
/// error it fails with. Panics if it serves instead (answers a `ListQueues`),
/// which for a corrupt or locked directory would mean a silently empty or
/// shared broker, or if it does neither within 30 s.
pub async fn startup_error(data_dir: &Path) -> broker::server::StartupError {
    startup_error_with(data_dir, &|_| {}).await
}

/// [`startup_error`], with the server's configuration changed by `configure`.
pub async fn startup_error_with(
    data_dir: &Path,
    configure: &(dyn Fn(&mut ServerConfig) + Send + Sync),
) -> broker::server::StartupError {
    const DECIDED_WITHIN: Duration = Duration::from_secs(30);
    let (addr, _, Running { shutdown, mut task }) = spawn_server(data_dir, configure).await;
    let serving = poll_until(DECIDED_WITHIN, || async {
        match Client::connect(addr.to_string()).await {
            Ok(client) => client.list_queues(pb::ListQueuesRequest::default()).await,
            Err(error) => Err(error),
        }
    });
    let result = tokio::select! {
        result = &mut task => result.expect("the server task"),
        answer = serving => {
            let _ = shutdown.send(());
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await;
            match answer {
                Ok(_) => panic!("the broker served {} instead of refusing it", data_dir.display()),
                Err(last) => panic!(
                    "the broker neither refused nor served {} within {DECIDED_WITHIN:?}: {last:?}",
                    data_dir.display()
                ),
            }
        }
    };
    match result {
        Ok(()) => panic!("the broker returned Ok for {}", data_dir.display()),
        Err(error) => error,
    }
}

/// The `broker` binary beside this test binary (`target/<profile>/broker`),
/// for the tests of `broker serve` as a process. Panics if it is missing.
///
/// Cargo builds it with this test binary: `cargo test --workspace` builds
/// the binaries of every package it tests with integration tests, and
/// `broker` has some (`broker/tests/`), so it is relinked whenever the
/// library changes, as this test binary is; `cargo build` builds it too.
/// Only a narrower command, such as `cargo test -p broker-tests`, can leave
/// it missing or older than the library; the harness does not guess which
/// from file times. (It used to: it took the binary for stale when any
/// `deps/libbroker-*.rlib` was newer, but every build with another feature
/// set, such as `cargo test -p broker-client`, leaves a newer one beside
/// the current one, and the tests of the binary then skipped silently.)
pub fn broker_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps")
        .join("broker");
    assert!(
        binary.is_file(),
        "{} is missing: the tests of `broker serve` need it; build it with \
         `cargo build --release --workspace`, or run the tests with \
         `cargo test --release --workspace`, which builds it",
        binary.display()
    );
    binary
}

/// How a `broker serve` process ended.
#[derive(Debug)]
pub struct ProcessExit {
    pub status: std::process::ExitStatus,
    pub stderr: String,
}

/// Runs `broker serve --listen 127.0.0.1:0 --data-dir <data_dir>` with the
/// given binary and waits for it to exit. Panics if it is still running
/// after 10 s: it served a directory it should have refused.
pub async fn broker_serve_exit(binary: &Path, data_dir: &Path) -> ProcessExit {
    let mut process = tokio::process::Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
    let mut stderr = process.stderr.take().expect("piped stderr");
    let read_stderr = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let status = match tokio::time::timeout(Duration::from_secs(10), process.wait()).await {
        Ok(status) => status.expect("wait for broker serve"),
        Err(_) => {
            let _ = process.kill().await;
            panic!(
                "`broker serve` was still running after 10 s: it served {} instead of refusing it",
                data_dir.display()
            );
        }
    };
    let stderr = read_stderr.await.expect("the stderr reader");
    ProcessExit { status, stderr }
}
