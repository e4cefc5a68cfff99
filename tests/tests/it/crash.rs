//! The crash suite: a broker process killed with SIGKILL at a random moment
//! under load keeps every promise it acknowledged, and a data directory it
//! must not serve (corrupt, or in use by another broker) stops it at startup.
//!
//! Each kill cycle runs producers (single sends, batch sends, topic publishes
//! fanned out to three queues) and consumers (long-poll receives with 1–2 s
//! visibility timeouts, deletes, visibility changes) against a
//! [`ChildServer`], records on the client side what the broker acknowledged,
//! kills the process, starts a new one on the same data directory and
//! drains every queue. The drain must show:
//!
//! 1. every copy whose send or publish was acknowledged, and whose delete was
//!    not, is there (no loss);
//! 2. no copy whose delete was acknowledged is ever delivered again, neither
//!    after the restart nor by a receive issued after the acknowledgement;
//! 3. every publish is in all of its subscribed queues or in none;
//! 4. `GetQueue` stats count exactly the messages the drain finds.
//!
//! A request in flight at the kill may or may not have been applied: the
//! ledger records it as unknown and the checks accept either outcome.
//!
//! `CRASH_CYCLES` sets the number of cycles (default 5), `CRASH_SEED` replays
//! a run's random choices (the seed is printed; thread timing still varies).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_tests::*;

/// The queue of single and batch sends.
pub(crate) const QUEUE: &str = "orders";
/// The topic of publishes, and the queues subscribed to it.
const TOPIC: &str = "events";
const FANOUT: [&str; 3] = ["fan-a", "fan-b", "fan-c"];
/// Every queue of the workload.
pub(crate) const QUEUES: [&str; 4] = [QUEUE, FANOUT[0], FANOUT[1], FANOUT[2]];

/// Kill cycles in the default test run.
const DEFAULT_CYCLES: u64 = 5;
/// How long the workload runs before the kill: a random time in this range.
pub(crate) const MIN_RUN: Duration = Duration::from_millis(50);
pub(crate) const MAX_RUN: Duration = Duration::from_millis(2000);
/// Longest visibility timeout the workload sets (receives and changes), and
/// longest delay: after the restart, the drain waits for both to pass.
pub(crate) const MAX_HIDDEN_SECONDS: u32 = 2;
/// Bound on one RPC, so that a hung request fails the test instead of
/// hanging it.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn killed_broker_keeps_every_acknowledged_write() {
    let cycles = env_u64("CRASH_CYCLES").unwrap_or(DEFAULT_CYCLES);
    let seed = seed_from_env("CRASH_SEED");
    println!("crash suite: {cycles} kill cycles, CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let data_dir = temp_data_dir();
    let started = Instant::now();

    let mut child = ChildServer::start(data_dir.path()).await;
    for cycle in 0..cycles {
        let client = child.client().await;
        set_up(&client).await;
        let run_for = rng.duration(MIN_RUN, MAX_RUN);
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let flags = Flags {
            stop: stop.clone(),
            fault: stop.clone(),
        };
        let workers = spawn_workload(&[child.addr()], cycle, &mut rng, &ledger, &flags).await;

        // The kill comes at a random moment of the workload: that is the test.
        tokio::time::sleep(run_for).await;
        // Workers finish the request they have in flight (the kill cuts it
        // off) and start no other: an error from then on is the kill's.
        stop.store(true, Ordering::SeqCst);
        child.kill().await;
        let killed_at = Instant::now();
        for worker in workers {
            tokio::time::timeout(2 * RPC_TIMEOUT, worker)
                .await
                .expect("a worker ends once the broker is gone")
                .expect("a worker task");
        }

        child = ChildServer::start(data_dir.path()).await;
        let restarted_in = killed_at.elapsed();
        let client = child.client().await;
        let drained = drain(&client, killed_at).await;
        let drained_in = killed_at.elapsed() - restarted_in;
        let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
        let report = check(&ledger, &drained);
        println!(
            "cycle {cycle}: killed after {run_for:?}, serving again {restarted_in:?} later, \
             drained in {drained_in:?}; {report}; {:.1} s in all",
            started.elapsed().as_secs_f64()
        );
        assert_no_violations(
            &report,
            &format!("CRASH_SEED={seed}, cycle {cycle} (killed after {run_for:?})"),
        );
    }
    child.kill().await;
}

// ---------------------------------------------------------------------------
// The ledger: what the client asked for and what the broker acknowledged.
// ---------------------------------------------------------------------------

/// One copy of a message: the queue it is in and its (unique) body.
type Copy = (&'static str, String);

#[derive(Default)]
pub(crate) struct Ledger {
    /// Every send or publish attempted, by body.
    sent: HashMap<String, Sent>,
    /// Deletes attempted, by copy; only those the broker may have applied.
    deletes: HashMap<Copy, Delete>,
    /// Broken promises seen while the broker ran.
    violations: Vec<String>,
    /// Errors seen while the broker ran, by RPC and code (printed only).
    errors: HashMap<String, u64>,
}

struct Sent {
    /// The queues the message goes to: one for a send, all subscribed
    /// queues for a publish.
    queues: &'static [&'static str],
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// The RPC returned this message id: the message must survive.
    Acked(String),
    /// The RPC failed or was cut off: the message may or may not be there.
    Unknown,
    /// A batch rejected the entry: the message must not be there.
    Refused,
}

#[derive(Default)]
struct Delete {
    /// When the first acknowledged delete returned.
    acked: Option<Instant>,
    /// A delete failed in a way that leaves its outcome open.
    unknown: bool,
}

impl Ledger {
    pub(crate) fn send(&mut self, body: &str, queues: &'static [&'static str]) {
        let outcome = Outcome::Unknown;
        self.sent.insert(body.to_string(), Sent { queues, outcome });
    }

    pub(crate) fn outcome(&mut self, body: &str, outcome: Outcome) {
        self.sent.get_mut(body).expect("a recorded send").outcome = outcome;
    }

    fn delete_acked(&mut self, copy: Copy) {
        let delete = self.deletes.entry(copy).or_default();
        delete.acked.get_or_insert_with(Instant::now);
    }

    fn delete_unknown(&mut self, copy: Copy) {
        self.deletes.entry(copy).or_default().unknown = true;
    }

    fn error(&mut self, rpc: &str, code: &str) {
        *self.errors.entry(format!("{rpc}: {code}")).or_default() += 1;
    }

    /// Checks a copy delivered by a receive issued at `issued`.
    fn received(&mut self, copy: &Copy, message_id: &str, issued: Instant) {
        let Some(sent) = self.sent.get(&copy.1) else {
            self.violations
                .push(format!("received {copy:?}, which nobody sent"));
            return;
        };
        if !sent.queues.contains(&copy.0) {
            self.violations
                .push(format!("received {copy:?}, sent to {:?}", sent.queues));
        }
        if let Outcome::Acked(id) = &sent.outcome
            && id != message_id
        {
            self.violations.push(format!(
                "received {copy:?} with id {message_id}, acknowledged with id {id}"
            ));
        }
        if let Some(acked) = self.deletes.get(copy).and_then(|d| d.acked)
            && acked < issued
        {
            self.violations.push(format!(
                "received {copy:?} by a receive issued {:?} after its delete was acknowledged",
                issued - acked
            ));
        }
    }
}

/// A failed RPC: `Some(code)` when the broker answered with a definite
/// refusal (the request was not applied), `None` when the outcome is open.
pub(crate) fn refusal(error: &Error) -> Option<Code> {
    match error.code() {
        code @ (Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::ResourceExhausted) => Some(code),
        _ => None,
    }
}

/// Runs an RPC with [`RPC_TIMEOUT`]; a timeout is an error of open outcome.
pub(crate) async fn rpc<T>(call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::from(tonic::Status::deadline_exceeded(
            "the test's RPC timeout",
        ))),
    }
}

// ---------------------------------------------------------------------------
// The workload.
// ---------------------------------------------------------------------------

/// Creates the queues, the topic and its subscriptions (idempotent: the
/// later cycles find them recovered).
pub(crate) async fn set_up(client: &Client) {
    for queue in QUEUES {
        create_queue(client, queue, attributes()).await;
    }
    client
        .create_topic(pb::CreateTopicRequest { name: TOPIC.into() })
        .await
        .expect("CreateTopic");
    for queue in FANOUT {
        client
            .subscribe(pb::SubscribeRequest {
                topic: TOPIC.into(),
                queue: queue.into(),
                filter_policy: String::new(),
                raw_delivery: true,
            })
            .await
            .unwrap_or_else(|e| panic!("Subscribe {queue} to {TOPIC}: {e:?}"));
    }
}

/// When the workers stop, and from when errors are expected.
pub(crate) struct Flags {
    /// Set: workers finish the request in flight and start no other.
    pub(crate) stop: Arc<AtomicBool>,
    /// Set when the fault is injected: from then on an error of open
    /// outcome is the fault's, not a broken promise.
    pub(crate) fault: Arc<AtomicBool>,
}

/// Starts the producers and consumers, each on its own connection (to the
/// servers at `addrs` in turn) with its own random stream; they run until
/// `flags.stop` is set.
pub(crate) async fn spawn_workload(
    addrs: &[std::net::SocketAddr],
    cycle: u64,
    rng: &mut Rng,
    ledger: &Arc<Mutex<Ledger>>,
    flags: &Flags,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut workers = Vec::new();
    let context = |name: String, rng: &mut Rng| Worker {
        name: format!("c{cycle}-{name}"),
        rng: rng.fork(),
        ledger: ledger.clone(),
        stop: flags.stop.clone(),
        fault: flags.fault.clone(),
    };
    let mut next = 0;
    let mut connect = || {
        let addr = addrs[next % addrs.len()];
        next += 1;
        async move {
            Client::connect(addr.to_string())
                .await
                .unwrap_or_else(|e| panic!("connect to {addr}: {e:?}"))
        }
    };
    for i in 0..2 {
        let worker = context(format!("s{i}"), rng);
        let client = connect().await;
        workers.push(tokio::spawn(worker.send_singly(client)));
    }
    let worker = context("b".into(), rng);
    let client = connect().await;
    workers.push(tokio::spawn(worker.send_batches(client)));
    let worker = context("p".into(), rng);
    let client = connect().await;
    workers.push(tokio::spawn(worker.publish(client)));
    for (i, queue) in [QUEUE, QUEUE, FANOUT[0], FANOUT[1], FANOUT[2]]
        .into_iter()
        .enumerate()
    {
        let worker = context(format!("r{i}"), rng);
        let client = connect().await;
        workers.push(tokio::spawn(worker.consume(client, queue)));
    }
    workers
}

/// What every producer and consumer task holds.
struct Worker {
    /// Prefix of the bodies it sends, unique across cycles.
    name: String,
    rng: Rng,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    fault: Arc<AtomicBool>,
}

impl Worker {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger")
    }

    /// After a failed request: once the fault is in, a pause before the
    /// next, as a client would (a server that is down fails at once).
    async fn pause_after_error(&self) {
        if self.fault.load(Ordering::SeqCst) && self.running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One message per `SendMessage`, some of them delayed.
    async fn send_singly(mut self, client: Client) {
        let mut n = 0;
        while self.running() {
            n += 1;
            let body = format!("{}-{n}", self.name);
            let delay = self.rng.chance(0.1).then_some(1);
            self.ledger().send(&body, &[QUEUE]);
            let request = send_request(QUEUE, body.clone(), &[], delay);
            match rpc(client.send_message(request)).await {
                Ok(response) => self
                    .ledger()
                    .outcome(&body, Outcome::Acked(response.message_id)),
                Err(error) => {
                    self.failed("SendMessage", &error);
                    self.pause_after_error().await;
                }
            }
        }
    }

    /// Batches of 1–10 messages per `SendMessageBatch`.
    async fn send_batches(mut self, client: Client) {
        let mut n = 0;
        while self.running() {
            let size = 1 + self.rng.below(10);
            let mut entries = Vec::new();
            let mut bodies = HashMap::new();
            for i in 0..size {
                n += 1;
                let body = format!("{}-{n}", self.name);
                self.ledger().send(&body, &[QUEUE]);
                entries.push(pb::SendMessageBatchEntry {
                    id: format!("e{i}"),
                    body: body.clone().into(),
                    ..Default::default()
                });
                bodies.insert(format!("e{i}"), body);
            }
            let request = pb::SendMessageBatchRequest {
                queue: QUEUE.into(),
                entries,
            };
            match rpc(client.send_message_batch(request)).await {
                Ok(response) => {
                    let mut ledger = self.ledger();
                    for entry in response.successful {
                        ledger.outcome(&bodies[&entry.id], Outcome::Acked(entry.message_id));
                    }
                    for entry in response.failed {
                        ledger.outcome(&bodies[&entry.id], Outcome::Refused);
                        ledger.error("SendMessageBatch entry", &entry.code);
                    }
                }
                Err(error) => {
                    self.failed("SendMessageBatch", &error);
                    self.pause_after_error().await;
                }
            }
        }
    }

    /// `Publish` and `PublishBatch` (1–10) to the topic, in turns.
    async fn publish(mut self, client: Client) {
        let mut n = 0;
        while self.running() {
            if self.rng.chance(0.5) {
                n += 1;
                let body = format!("{}-{n}", self.name);
                self.ledger().send(&body, &FANOUT);
                let request = pb::PublishRequest {
                    topic: TOPIC.into(),
                    body: body.clone().into(),
                    ..Default::default()
                };
                match rpc(client.publish_message(request)).await {
                    Ok(response) => self.published(&body, response.message_id, response.delivered),
                    Err(error) => {
                        self.failed("Publish", &error);
                        self.pause_after_error().await;
                    }
                }
                continue;
            }
            let size = 1 + self.rng.below(10);
            let mut entries = Vec::new();
            let mut bodies = HashMap::new();
            for i in 0..size {
                n += 1;
                let body = format!("{}-{n}", self.name);
                self.ledger().send(&body, &FANOUT);
                entries.push(pb::PublishBatchEntry {
                    id: format!("e{i}"),
                    body: body.clone().into(),
                    ..Default::default()
                });
                bodies.insert(format!("e{i}"), body);
            }
            let request = pb::PublishBatchRequest {
                topic: TOPIC.into(),
                entries,
            };
            match rpc(client.publish_batch(request)).await {
                Ok(response) => {
                    for entry in response.successful {
                        self.published(&bodies[&entry.id], entry.message_id, entry.delivered);
                    }
                    let mut ledger = self.ledger();
                    for entry in response.failed {
                        ledger.outcome(&bodies[&entry.id], Outcome::Refused);
                        ledger.error("PublishBatch entry", &entry.code);
                    }
                }
                Err(error) => {
                    self.failed("PublishBatch", &error);
                    self.pause_after_error().await;
                }
            }
        }
    }

    fn published(&self, body: &str, message_id: String, delivered: u32) {
        let mut ledger = self.ledger();
        if delivered as usize != FANOUT.len() {
            ledger.violations.push(format!(
                "publish {body} acknowledged {delivered} copies for {} subscriptions",
                FANOUT.len()
            ));
        }
        ledger.outcome(body, Outcome::Acked(message_id));
    }

    /// Receives with long polls and short visibility timeouts; deletes most
    /// messages (one by one or in batches), makes some visible again or
    /// hides them longer, and leaves the rest to time out.
    async fn consume(mut self, client: Client, queue: &'static str) {
        while self.running() {
            let visibility = 1 + self.rng.below(MAX_HIDDEN_SECONDS as u64) as u32;
            let issued = Instant::now();
            let request = receive_request(queue, 10, Some(visibility), Some(1));
            let messages = match rpc(client.receive_messages(request)).await {
                Ok(response) => response.messages,
                Err(error) => {
                    self.failed("ReceiveMessages", &error);
                    if self.running() {
                        // A pause before the next try, as a client would.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                }
            };
            let mut batch = Vec::new();
            for message in messages {
                let copy: Copy = (queue, String::from_utf8_lossy(&message.body).into_owned());
                self.ledger().received(&copy, &message.message_id, issued);
                let roll = self.rng.below(100);
                if roll < 40 {
                    batch.push((copy, message.receipt_handle));
                } else if roll < 80 {
                    self.delete(&client, copy, message.receipt_handle).await;
                } else if roll < 90 {
                    let seconds = self.rng.below(MAX_HIDDEN_SECONDS as u64 + 1) as u32;
                    let result = rpc(change_visibility(
                        &client,
                        queue,
                        &message.receipt_handle,
                        seconds,
                    ))
                    .await;
                    if let Err(error) = result {
                        self.failed("ChangeMessageVisibility", &error);
                    }
                }
            }
            if !batch.is_empty() {
                self.delete_batch(&client, queue, batch).await;
            }
        }
    }

    async fn delete(&self, client: &Client, copy: Copy, receipt_handle: String) {
        match rpc(delete_message(client, copy.0, &receipt_handle)).await {
            Ok(()) => self.ledger().delete_acked(copy),
            Err(error) => {
                self.failed("DeleteMessage", &error);
                if refusal(&error).is_none() {
                    self.ledger().delete_unknown(copy);
                }
            }
        }
    }

    async fn delete_batch(&self, client: &Client, queue: &str, batch: Vec<(Copy, String)>) {
        let request = pb::DeleteMessageBatchRequest {
            queue: queue.into(),
            entries: batch
                .iter()
                .enumerate()
                .map(|(i, (_, receipt_handle))| pb::DeleteMessageBatchEntry {
                    id: format!("d{i}"),
                    receipt_handle: receipt_handle.clone(),
                })
                .collect(),
        };
        let response = match rpc(client.delete_message_batch(request)).await {
            Ok(response) => response,
            Err(error) => {
                self.failed("DeleteMessageBatch", &error);
                if refusal(&error).is_none() {
                    let mut ledger = self.ledger();
                    for (copy, _) in batch {
                        ledger.delete_unknown(copy);
                    }
                }
                return;
            }
        };
        let mut ledger = self.ledger();
        for entry in response.successful {
            let i: usize = entry.id[1..].parse().expect("a d<i> id");
            ledger.delete_acked(batch[i].0.clone());
        }
        for entry in response.failed {
            ledger.error("DeleteMessageBatch entry", &entry.code);
        }
    }

    /// Records a failed RPC. Before the fault, only a refusal is expected
    /// (a superseded receipt handle): any other error is a broken promise.
    fn failed(&self, rpc: &str, error: &Error) {
        let faulted = self.fault.load(Ordering::SeqCst);
        let when = if faulted { "after the fault" } else { "before" };
        let mut ledger = self.ledger();
        ledger.error(&format!("{rpc} ({when})"), &format!("{:?}", error.code()));
        if !faulted && refusal(error).is_none() {
            ledger
                .violations
                .push(format!("{rpc} failed before the fault: {error:?}"));
        }
    }
}

// ---------------------------------------------------------------------------
// After the restart: drain, and check against the ledger.
// ---------------------------------------------------------------------------

/// What the restarted broker holds.
#[derive(Default)]
pub(crate) struct Drained {
    /// Every copy, with its message id.
    copies: HashMap<Copy, String>,
    /// Broken promises seen while draining (stats, duplicates).
    violations: Vec<String>,
}

/// Drains every queue of the restarted broker, checking its stats against
/// what it holds: their sum right after the restart, the visible count once
/// every visibility timeout and delay of the killed run has passed, and
/// 0/0/0 once all is deleted.
pub(crate) async fn drain(client: &Client, killed_at: Instant) -> Drained {
    let mut drained = Drained::default();
    let mut at_restart = HashMap::new();
    for queue in QUEUES {
        at_restart.insert(queue, counts(client, queue).await);
    }
    let topic = client
        .get_topic(pb::GetTopicRequest { name: TOPIC.into() })
        .await
        .expect("GetTopic after the restart");
    if topic.subscription_count != FANOUT.len() as u32 {
        drained.violations.push(format!(
            "{TOPIC} has {} subscriptions after the restart",
            topic.subscription_count
        ));
    }

    let queues = QUEUES.map(|queue| drain_queue(client, queue, at_restart[queue], killed_at));
    for (copies, violations) in futures::future::join_all(queues).await {
        drained.copies.extend(copies);
        drained.violations.extend(violations);
    }
    drained
}

/// Drains one queue: waits until nothing is in flight or delayed, receives
/// every message (once: with a 600 s visibility timeout), checks the stats
/// against what it received (`before`: the stats right after the restart),
/// and deletes it all. Returns the copies and the broken promises.
async fn drain_queue(
    client: &Client,
    queue: &'static str,
    before: Counts,
    killed_at: Instant,
) -> (HashMap<Copy, String>, Vec<String>) {
    let mut copies = HashMap::new();
    let mut violations = Vec::new();
    // Everything hidden at the kill is visible again by then.
    let all_visible = killed_at + Duration::from_secs(MAX_HIDDEN_SECONDS as u64 + 1);
    let within = (all_visible + Duration::from_secs(5)).saturating_duration_since(Instant::now());
    let settled = poll_until(within, || async {
        let now = counts(client, queue).await;
        if now.in_flight == 0 && now.delayed == 0 {
            Ok(now)
        } else {
            Err(now)
        }
    })
    .await
    .unwrap_or_else(|now| {
        violations.push(format!(
            "{queue}: {now:?} {:?} after the kill, with no timeout over {MAX_HIDDEN_SECONDS} s",
            killed_at.elapsed()
        ));
        now
    });

    let mut handles = Vec::new();
    loop {
        let messages = receive_now(client, queue, limits::RECEIVE_MESSAGES_MAX, 600).await;
        if messages.is_empty() {
            break;
        }
        for message in messages {
            let copy: Copy = (queue, String::from_utf8_lossy(&message.body).into_owned());
            if let Some(first) = copies.insert(copy.clone(), message.message_id) {
                violations.push(format!(
                    "{copy:?} delivered twice within a 600 s visibility timeout (first id {first})"
                ));
            }
            handles.push(message.receipt_handle);
        }
    }
    let held = handles.len() as u64;
    if before.visible + before.in_flight + before.delayed != held {
        violations.push(format!(
            "{queue}: stats right after the restart {before:?}, but it holds {held} messages"
        ));
    }
    if settled.visible != held {
        violations.push(format!(
            "{queue}: stats {settled:?} once all is visible, but it holds {held} messages"
        ));
    }
    let received = counts(client, queue).await;
    if received != Counts::new(0, held, 0) {
        violations.push(format!(
            "{queue}: stats {received:?} with all {held} messages received"
        ));
    }
    for chunk in handles.chunks(limits::BATCH_ENTRIES_MAX) {
        let response = client
            .delete_message_batch(pb::DeleteMessageBatchRequest {
                queue: queue.into(),
                entries: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, receipt_handle)| pb::DeleteMessageBatchEntry {
                        id: format!("d{i}"),
                        receipt_handle: receipt_handle.clone(),
                    })
                    .collect(),
            })
            .await
            .unwrap_or_else(|e| panic!("DeleteMessageBatch on {queue}: {e:?}"));
        if !response.failed.is_empty() {
            violations.push(format!(
                "{queue}: deletes failed while draining: {:?}",
                response.failed
            ));
        }
    }
    let empty = counts(client, queue).await;
    if empty != Counts::EMPTY {
        violations.push(format!(
            "{queue}: stats {empty:?} after deleting all {held} messages"
        ));
    }
    (copies, violations)
}

/// The outcome of one cycle's checks.
pub(crate) struct Report {
    acked: usize,
    unknown: usize,
    deleted: usize,
    held: usize,
    errors: String,
    pub(crate) violations: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sends/publishes acknowledged, {} open, {} deletes acknowledged, {} copies after restart, errors: [{}]",
            self.acked, self.unknown, self.deleted, self.held, self.errors
        )
    }
}

/// Checks the drained broker against the ledger of the killed run.
/// Panics with the first 30 of `report`'s violations, if any, after
/// `context` (the seed and cycle that replay the run).
#[track_caller]
pub(crate) fn assert_no_violations(report: &Report, context: &str) {
    assert!(
        report.violations.is_empty(),
        "{context}: {} violations:\n{}",
        report.violations.len(),
        report
            .violations
            .iter()
            .take(30)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

pub(crate) fn check(ledger: &Ledger, drained: &Drained) -> Report {
    let mut violations = ledger.violations.clone();
    violations.extend(drained.violations.iter().cloned());

    // Every copy held must have been sent there, with the acknowledged id,
    // and not be deleted (promise 2).
    for (copy, id) in &drained.copies {
        let Some(sent) = ledger.sent.get(&copy.1) else {
            violations.push(format!(
                "{copy:?} is held after the restart; nobody sent it"
            ));
            continue;
        };
        if !sent.queues.contains(&copy.0) {
            violations.push(format!(
                "{copy:?} is held; it was sent to {:?}",
                sent.queues
            ));
        }
        match &sent.outcome {
            Outcome::Acked(acked) if acked != id => violations.push(format!(
                "{copy:?} is held with id {id}; its send was acknowledged with id {acked}"
            )),
            Outcome::Refused => {
                violations.push(format!("{copy:?} is held; its batch entry was refused"))
            }
            _ => {}
        }
        if ledger.deletes.get(copy).is_some_and(|d| d.acked.is_some()) {
            violations.push(format!(
                "{copy:?} is delivered after the restart; its delete was acknowledged"
            ));
        }
    }

    for (body, sent) in &ledger.sent {
        let held: Vec<_> = sent
            .queues
            .iter()
            .filter(|queue| drained.copies.contains_key(&(**queue, body.clone())))
            .collect();
        for queue in sent.queues {
            let copy: Copy = (queue, body.clone());
            if drained.copies.contains_key(&copy) {
                continue;
            }
            let delete = ledger.deletes.get(&copy);
            let maybe_deleted = delete.is_some_and(|d| d.acked.is_some() || d.unknown);
            if maybe_deleted {
                continue;
            }
            // Promise 1: an acknowledged send is there unless deleted.
            if let Outcome::Acked(id) = &sent.outcome {
                violations.push(format!(
                    "{copy:?} (id {id}) is lost: acknowledged, never deleted, not held after the restart"
                ));
            } else if !held.is_empty() {
                // Promise 3: a publish is in all of its queues or in none.
                violations.push(format!(
                    "publish {body} is held in {held:?} but missing from {queue}, which never deleted it"
                ));
            }
        }
        // And all copies of a publish carry the same id.
        let ids: HashSet<_> = held
            .iter()
            .map(|queue| &drained.copies[&(**queue, body.clone())])
            .collect();
        if ids.len() > 1 {
            violations.push(format!("publish {body} is held with several ids: {ids:?}"));
        }
    }

    let mut errors: Vec<_> = ledger
        .errors
        .iter()
        .map(|(what, n)| format!("{what} x{n}"))
        .collect();
    errors.sort();
    Report {
        acked: ledger
            .sent
            .values()
            .filter(|s| matches!(s.outcome, Outcome::Acked(_)))
            .count(),
        unknown: ledger
            .sent
            .values()
            .filter(|s| s.outcome == Outcome::Unknown)
            .count(),
        deleted: ledger
            .deletes
            .values()
            .filter(|d| d.acked.is_some())
            .count(),
        held: drained.copies.len(),
        errors: errors.join(", "),
        violations,
    }
}

// ---------------------------------------------------------------------------
// Startup: a data directory the broker must refuse.
// ---------------------------------------------------------------------------

/// A data directory with queues, a topic and messages, written by a broker
/// that was restarted once (so its write-ahead log was flushed into a table
/// file) and then shut down gracefully.
async fn populated_data_dir() -> tempfile::TempDir {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    set_up(&client).await;
    for i in 0..20 {
        send_message(&client, QUEUE, format!("m{i}"), &[], None).await;
    }
    server.restart().await;
    let client = server.client().await;
    send_message(&client, QUEUE, "after the restart", &[], None).await;
    server.stop_keeping_data().await
}

/// The files of `dir` whose names satisfy `pick`.
fn files(dir: &Path, pick: impl Fn(&str) -> bool) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .expect("read the data directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.file_name().is_some_and(|n| pick(&n.to_string_lossy())))
        .collect();
    found.sort();
    found
}

/// Overwrites a file with junk of the same length (at least 64 bytes).
fn garble(path: &Path) {
    let len = std::fs::metadata(path)
        .expect("the file to garble")
        .len()
        .max(64);
    let junk: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(path, junk).expect("garble the file");
}

/// Checks that the broker refuses `data_dir` with an error naming it and
/// containing `needles`: in this process through `broker::server::run`, and
/// through `broker serve` when the binary is built.
async fn assert_refused(data_dir: &Path, needles: &[&str]) {
    let shown = data_dir.display().to_string();
    // Twice: a refused start must not leave the directory fit to serve (say,
    // by writing a fresh, empty database next to the old files).
    for attempt in ["first", "second"] {
        let error = startup_error(data_dir).await.to_string();
        for needle in std::iter::once(shown.as_str()).chain(needles.iter().copied()) {
            assert!(
                error.contains(needle),
                "the {attempt} startup error should contain {needle:?}: {error}"
            );
        }
    }

    let binary = broker_binary();
    let exit = broker_serve_exit(&binary, data_dir).await;
    assert!(
        !exit.status.success(),
        "broker serve exited with {}",
        exit.status
    );
    let last = exit.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:"),
        "broker serve should end with an error line: {:?}",
        exit.stderr
    );
    for needle in std::iter::once(shown.as_str()).chain(needles.iter().copied()) {
        assert!(
            last.contains(needle),
            "broker serve's error should contain {needle:?}: {last}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbled_current_file_is_a_startup_error() {
    let data_dir = populated_data_dir().await;
    garble(&data_dir.path().join("CURRENT"));
    assert_refused(data_dir.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn current_file_naming_a_missing_manifest_is_a_startup_error() {
    let data_dir = populated_data_dir().await;
    std::fs::write(data_dir.path().join("CURRENT"), "MANIFEST-999999\n").expect("write CURRENT");
    assert_refused(data_dir.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_current_file_is_a_startup_error() {
    let data_dir = populated_data_dir().await;
    std::fs::remove_file(data_dir.path().join("CURRENT")).expect("remove CURRENT");
    assert_refused(data_dir.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbled_manifest_is_a_startup_error() {
    let data_dir = populated_data_dir().await;
    let manifests = files(data_dir.path(), |n| n.starts_with("MANIFEST-"));
    assert!(!manifests.is_empty(), "a MANIFEST in the data directory");
    for manifest in manifests {
        garble(&manifest);
    }
    assert_refused(data_dir.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_manifest_is_a_startup_error() {
    let data_dir = populated_data_dir().await;
    let manifests = files(data_dir.path(), |n| n.starts_with("MANIFEST-"));
    assert!(!manifests.is_empty(), "a MANIFEST in the data directory");
    for manifest in manifests {
        std::fs::File::options()
            .write(true)
            .open(&manifest)
            .and_then(|f| f.set_len(0))
            .expect("truncate the MANIFEST");
    }
    assert_refused(data_dir.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbled_table_file_is_a_startup_error() {
    let data_dir = populated_data_dir().await;
    let tables = files(data_dir.path(), |n| n.ends_with(".sst"));
    assert!(!tables.is_empty(), "a table file in the data directory");
    for table in tables {
        garble(&table);
    }
    assert_refused(data_dir.path(), &[]).await;
}

/// A data directory whose writes are all still in the write-ahead log: the
/// broker that wrote it was killed. Holds the queue with `count` messages.
async fn killed_data_dir(count: usize) -> tempfile::TempDir {
    let data_dir = temp_data_dir();
    let child = ChildServer::start(data_dir.path()).await;
    let client = child.client().await;
    create_queue(&client, QUEUE, attributes()).await;
    for i in 0..count {
        send_message(&client, QUEUE, format!("m{i}"), &[], None).await;
    }
    child.kill().await;
    data_dir
}

/// The write-ahead log files of a data directory, oldest first.
fn write_ahead_logs(dir: &Path) -> Vec<std::path::PathBuf> {
    let logs = files(dir, |n| n.ends_with(".log"));
    assert!(!logs.is_empty(), "a write-ahead log in {}", dir.display());
    logs
}

/// A record damaged in the middle of the log is not a torn tail (a crash
/// only tears the last write): replaying up to it and dropping the
/// acknowledged writes after it would be silent loss.
#[tokio::test(flavor = "multi_thread")]
async fn corrupt_record_in_the_write_ahead_log_is_a_startup_error() {
    let data_dir = killed_data_dir(50).await;
    let log = write_ahead_logs(data_dir.path()).pop().expect("a log");
    let mut bytes = std::fs::read(&log).expect("read the log");
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 16] {
        *byte ^= 0xff;
    }
    std::fs::write(&log, bytes).expect("write the log");
    assert_refused(data_dir.path(), &[]).await;
}

/// The other side of the line: a log whose last record is cut short, as a
/// crash in the middle of a write leaves it, is recovered up to that record.
#[tokio::test(flavor = "multi_thread")]
async fn torn_tail_of_the_write_ahead_log_is_recovered() {
    let count = 20;
    let data_dir = killed_data_dir(count).await;
    let log = write_ahead_logs(data_dir.path()).pop().expect("a log");
    let len = std::fs::metadata(&log).expect("the log").len();
    std::fs::File::options()
        .write(true)
        .open(&log)
        .and_then(|f| f.set_len(len - 5))
        .expect("tear the last record");

    let server = TestServer::start_in(data_dir).await;
    let client = server.client().await;
    let bodies: HashSet<String> = receive_now(&client, QUEUE, limits::RECEIVE_MESSAGES_MAX, 600)
        .await
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    // The torn record is the last send; every earlier one is back.
    for i in 0..count - 1 {
        assert!(
            bodies.contains(&format!("m{i}")),
            "m{i} is back: {bodies:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn data_dir_in_use_by_another_broker_is_a_startup_error() {
    let data_dir = temp_data_dir();
    let running = ChildServer::start(data_dir.path()).await;
    let client = running.client().await;
    create_queue(&client, QUEUE, attributes()).await;

    assert_refused(data_dir.path(), &["in use"]).await;

    // The running broker was not disturbed.
    send_message(&client, QUEUE, "still serving", &[], None).await;
    assert_eq!(counts(&client, QUEUE).await, Counts::new(1, 0, 0));
    running.kill().await;
}

// ---------------------------------------------------------------------------
// Small things.
// ---------------------------------------------------------------------------

/// The seed in the environment variable `name`, to replay a run; else a
/// new one from the clock and the process id.
pub(crate) fn seed_from_env(name: &str) -> u64 {
    env_u64(name).unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_nanos();
        (nanos as u64) ^ u64::from(std::process::id())
    })
}

pub(crate) fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={value:?} is not a number: {e}")),
    )
}

/// SplitMix64: a small, seedable random stream, so that `CRASH_SEED`
/// replays a run's choices without a dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }

    pub(crate) fn duration(&mut self, min: Duration, max: Duration) -> Duration {
        let span = (max - min).as_millis() as u64;
        min + Duration::from_millis(self.below(span + 1))
    }

    /// An independent stream for a worker.
    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}
