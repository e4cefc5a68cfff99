//! The workload: where messages go, the preload, the producers and the
//! consumers, and what each of them counted and timed.
//!
//! - Producers send to queues in turn (`--queues`) or publish to one topic
//!   (`--fanout`), one call outstanding each (closed loop), or on a fixed
//!   schedule with as many calls outstanding as it takes (open loop,
//!   `--rate`).
//! - Consumers receive with long polling and delete what they received.
//!   With several queues each, they poll their queues in turn without
//!   waiting, and long-poll only after a whole round came back empty.
//! - Each body's first 8 bytes hold its send time, in nanoseconds since the
//!   start of the measured phase (little endian), or [`PRELOADED`]; a
//!   consumer subtracts it from its receive time for the end-to-end latency.
//!
//! Counting: a message counts as sent when its send or publish was
//! acknowledged before the deadline, and as consumed when its delete was;
//! calls still running at the deadline finish (within [`GRACE`]) but do
//! not count. Latencies are recorded for every acknowledged call. The
//! consumed count is also sampled each second, so that a run shows whether
//! its rate was sustained or only averaged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use broker_client::{Client, Consumer, Error, Message, Publisher, pb};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::options::Options;

/// The send time of a preloaded message: left out of end-to-end latency.
pub const PRELOADED: u64 = u64::MAX;

/// How long calls still running at the deadline may take to finish.
pub const GRACE: Duration = Duration::from_secs(10);

/// Messages per call of the preload: the largest batch.
pub const PRELOAD_BATCH: u32 = broker_client::limits::BATCH_ENTRIES_MAX as u32;

/// Calls of the preload in flight at once.
const PRELOAD_CONCURRENCY: usize = 8;

/// Open loop: the most calls one producer keeps in flight. Past it the
/// producer falls behind its schedule (which `schedule_lag` shows) rather
/// than pile up requests without bound against a broker that cannot keep up.
const MAX_IN_FLIGHT: usize = 1024;

/// The most gRPC connections per role (producers, consumers); tasks beyond
/// it share connections (HTTP/2 multiplexes their calls).
pub const MAX_CONNECTIONS: usize = 64;

/// After a failed call, a task pauses this long, so that a broker that
/// fails fast is not spun against.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Where producers write and consumers read.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where producers write.
    pub target: Target,
    /// The queues consumers read from.
    pub queues: Vec<Arc<str>>,
}

/// Where producers write.
#[derive(Debug, Clone)]
pub enum Target {
    /// To the plan's queues in turn.
    Queues,
    /// To this topic, subscribed by every queue of the plan.
    Topic(Arc<str>),
}

/// One send or publish destination.
#[derive(Debug, Clone)]
enum Dest {
    Queue(Arc<str>),
    Topic(Arc<str>),
}

impl Plan {
    /// Creates the queues (and the topic and its raw-delivery subscriptions)
    /// the options describe; with `purge`, empties queues that already
    /// existed, for a broker that served earlier runs.
    pub async fn create(client: &Client, opts: &Options, purge: bool) -> anyhow::Result<Plan> {
        let (target, names): (Target, Vec<String>) = match opts.fanout {
            Some(n) => (
                Target::Topic("bench-topic".into()),
                (0..n).map(|i| format!("bench-fanout-{i}")).collect(),
            ),
            None => (
                Target::Queues,
                (0..opts.queues).map(|i| format!("bench-{i}")).collect(),
            ),
        };
        if let Target::Topic(topic) = &target {
            client
                .create_topic(pb::CreateTopicRequest {
                    name: topic.to_string(),
                })
                .await
                .with_context(|| format!("cannot create topic {topic}"))?;
        }
        let topic = match &target {
            Target::Topic(t) => Some(t.to_string()),
            Target::Queues => None,
        };
        futures::stream::iter(names.iter().cloned())
            .map(|name| {
                let topic = topic.clone();
                async move {
                    client
                        .create_queue(pb::CreateQueueRequest {
                            name: name.clone(),
                            attributes: None,
                        })
                        .await
                        .with_context(|| format!("cannot create queue {name}"))?;
                    if purge {
                        client
                            .purge_queue(pb::PurgeQueueRequest { name: name.clone() })
                            .await
                            .with_context(|| format!("cannot purge queue {name}"))?;
                    }
                    if let Some(topic) = topic {
                        client
                            .subscribe(pb::SubscribeRequest {
                                topic: topic.clone(),
                                queue: name.clone(),
                                filter_policy: String::new(),
                                raw_delivery: true,
                            })
                            .await
                            .with_context(|| format!("cannot subscribe {name} to {topic}"))?;
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<()>>()?;
        Ok(Plan {
            target,
            queues: names.into_iter().map(Arc::from).collect(),
        })
    }

    /// All destinations of producers, in the order they take turns.
    fn dests(&self) -> Vec<Dest> {
        match &self.target {
            Target::Topic(t) => vec![Dest::Topic(t.clone())],
            Target::Queues => self.queues.iter().cloned().map(Dest::Queue).collect(),
        }
    }
}

/// The share of `items` of worker `index` among `workers`: every
/// `workers`-th item, or one item when there are more workers than items.
fn share<T: Clone>(items: &[T], index: usize, workers: usize) -> Vec<T> {
    if workers >= items.len() {
        vec![items[index % items.len()].clone()]
    } else {
        items.iter().skip(index).step_by(workers).cloned().collect()
    }
}

/// Connects one client per task, at most `connections` (default
/// [`MAX_CONNECTIONS`]), and at least one; to `addrs` in turn (the nodes
/// of a cluster), following the leader unless `follow_leader` is false.
pub async fn connect(
    addrs: &[String],
    tasks: usize,
    connections: Option<u32>,
    follow_leader: bool,
) -> anyhow::Result<Vec<Client>> {
    let most = connections.map_or(MAX_CONNECTIONS, |c| c as usize);
    let mut clients = Vec::new();
    for addr in addrs.iter().cycle().take(tasks.clamp(1, most)) {
        let options = broker_client::ConnectOptions::new().follow_leader(follow_leader);
        clients.push(Client::connect_with(addr, options).await?);
    }
    Ok(clients)
}

/// A message body of `size` bytes whose first 8 carry `stamp`.
fn body(size: usize, stamp: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_u64_le(stamp);
    b.resize(size, b'x');
    b.freeze()
}

/// The send time a body carries, if it is long enough to carry one.
fn stamp_of(body: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?))
}

/// A latency distribution, recorded in microseconds (1 µs to 1 hour, 3
/// significant digits).
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Latency {
    pub fn new() -> Latency {
        Latency(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
    }

    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record((d.as_micros() as u64).max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        self.0.add(&other.0).expect("same bounds");
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0.5, 0.99, ...) in milliseconds; `None` if empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(q) as f64 / 1000.0)
    }

    /// The largest in milliseconds; `None` if empty.
    pub fn max_ms(&self) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.max() as f64 / 1000.0)
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

/// Failed calls by kind ("send: unavailable"), with the first message of each.
#[derive(Debug, Clone, Default)]
pub struct Errors(pub BTreeMap<String, (u64, String)>);

impl Errors {
    fn add(&mut self, what: &str, code: &str, message: &str) {
        let entry = self
            .0
            .entry(format!("{what}: {code}"))
            .or_insert_with(|| (0, message.to_owned()));
        entry.0 += 1;
    }

    fn add_error(&mut self, what: &str, e: &Error) {
        self.add(what, &format!("{:?}", e.code()), e.message());
    }

    fn merge(&mut self, other: &Errors) {
        for (kind, (count, first)) in &other.0 {
            let entry = self
                .0
                .entry(kind.clone())
                .or_insert_with(|| (0, first.clone()));
            entry.0 += count;
        }
    }

    /// Failed calls (and failed batch entries) of all kinds.
    pub fn total(&self) -> u64 {
        self.0.values().map(|(n, _)| n).sum()
    }
}

/// What tasks counted and timed; merged over all tasks at the end.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Messages (or publications) acknowledged before the deadline.
    pub sent: u64,
    /// Copies the acknowledged publications put into queues.
    pub delivered: u64,
    /// Messages whose delete was acknowledged before the deadline.
    pub consumed: u64,
    /// Messages consumed in each whole second of the phase, in order.
    pub consumed_each_second: Vec<u64>,
    /// Send or publish call, from its start to its acknowledgement.
    pub send: Latency,
    /// Receive calls that returned messages, including any long-poll wait.
    pub receive: Latency,
    /// From a message's send to its receipt.
    pub end_to_end: Latency,
    /// Open loop: how late sends started against their schedule.
    pub schedule_lag: Latency,
    pub errors: Errors,
}

impl Stats {
    fn merge(&mut self, other: &Stats) {
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.consumed += other.consumed;
        self.send.merge(&other.send);
        self.receive.merge(&other.receive);
        self.end_to_end.merge(&other.end_to_end);
        self.schedule_lag.merge(&other.schedule_lag);
        self.errors.merge(&other.errors);
    }

    fn record_send(&mut self, began: Instant, result: Result<Sent, Error>, deadline: Instant) {
        let ended = Instant::now();
        match result {
            Ok(sent) => {
                self.send.record(ended - began);
                if ended <= deadline {
                    self.sent += sent.acked;
                    self.delivered += sent.copies;
                }
                for f in sent.failed {
                    self.errors.add("send entry", &f.code, &f.message);
                }
            }
            Err(e) => self.errors.add_error("send", &e),
        }
    }
}

/// The timing and shape shared by every task of a run.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Start of the measured phase; send times count from it.
    start: Instant,
    /// End of the measured phase.
    deadline: Instant,
    /// Messages per call.
    batch: u32,
    /// Bytes per body.
    payload: usize,
    /// Long-poll wait, seconds.
    wait: u32,
    /// `--mode stream`: the publishing stream and push delivery.
    stream: bool,
    /// Copies one published message makes (the plan's queues; 1 for sends).
    copies: u64,
}

/// Consumed messages so far, over all consumers; sampled each second.
type LiveCount = Arc<AtomicU64>;

impl Run {
    fn stamp(&self, at: Instant) -> u64 {
        (at - self.start).as_nanos() as u64
    }
}

/// The outcome of one send or publish call.
struct Sent {
    /// Messages acknowledged.
    acked: u64,
    /// Copies written (publish only).
    copies: u64,
    /// Entries of a batch that failed alone.
    failed: Vec<pb::BatchResultError>,
}

/// Sends (or publishes) `count` messages stamped `stamp` in one call: the
/// single-message RPC when `single`, else the batch RPC.
async fn send_once(
    client: &Client,
    dest: &Dest,
    count: u32,
    single: bool,
    payload: usize,
    stamp: u64,
) -> Result<Sent, Error> {
    let ok = |acked, copies, failed| Sent {
        acked,
        copies,
        failed,
    };
    match (dest, single) {
        (Dest::Queue(queue), true) => {
            client
                .send_message(pb::SendMessageRequest {
                    queue: queue.to_string(),
                    body: body(payload, stamp),
                    ..Default::default()
                })
                .await?;
            Ok(ok(1, 0, vec![]))
        }
        (Dest::Queue(queue), false) => {
            let entries = (0..count)
                .map(|i| pb::SendMessageBatchEntry {
                    id: i.to_string(),
                    body: body(payload, stamp),
                    ..Default::default()
                })
                .collect();
            let resp = client
                .send_message_batch(pb::SendMessageBatchRequest {
                    queue: queue.to_string(),
                    entries,
                })
                .await?;
            Ok(ok(resp.successful.len() as u64, 0, resp.failed))
        }
        (Dest::Topic(topic), true) => {
            let resp = client
                .publish_message(pb::PublishRequest {
                    topic: topic.to_string(),
                    body: body(payload, stamp),
                    attributes: Default::default(),
                })
                .await?;
            Ok(ok(1, resp.delivered.into(), vec![]))
        }
        (Dest::Topic(topic), false) => {
            let entries = (0..count)
                .map(|i| pb::PublishBatchEntry {
                    id: i.to_string(),
                    body: body(payload, stamp),
                    attributes: Default::default(),
                })
                .collect();
            let resp = client
                .publish_batch(pb::PublishBatchRequest {
                    topic: topic.to_string(),
                    entries,
                })
                .await?;
            let copies = resp.successful.iter().map(|s| u64::from(s.delivered)).sum();
            Ok(ok(resp.successful.len() as u64, copies, resp.failed))
        }
    }
}

/// Sends `total` messages marked [`PRELOADED`] in batches of
/// [`PRELOAD_BATCH`], the plan's destinations in turn. Any failure aborts.
pub async fn preload(
    clients: &[Client],
    plan: &Plan,
    payload: usize,
    total: u64,
) -> anyhow::Result<()> {
    let calls = total.div_ceil(u64::from(PRELOAD_BATCH));
    let next = Arc::new(AtomicU64::new(0));
    let dests = Arc::new(plan.dests());
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..PRELOAD_CONCURRENCY {
        let (client, next, dests) = (
            clients[w % clients.len()].clone(),
            next.clone(),
            dests.clone(),
        );
        workers.spawn(async move {
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed);
                if call >= calls {
                    return anyhow::Ok(());
                }
                let count =
                    (total - call * u64::from(PRELOAD_BATCH)).min(u64::from(PRELOAD_BATCH)) as u32;
                let dest = &dests[call as usize % dests.len()];
                let sent = send_once(&client, dest, count, false, payload, PRELOADED)
                    .await
                    .context("preload failed")?;
                if let Some(f) = sent.failed.first() {
                    anyhow::bail!("preload failed: entry {}: {}: {}", f.id, f.code, f.message);
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

/// Runs producers and consumers for `opts.duration`; returns what they
/// counted, merged.
pub async fn run(
    producer_clients: &[Client],
    consumer_clients: &[Client],
    plan: &Plan,
    opts: &Options,
) -> anyhow::Result<Stats> {
    let start = Instant::now();
    let run = Run {
        start,
        deadline: start + opts.duration(),
        batch: opts.batch,
        payload: opts.payload as usize,
        wait: opts.wait,
        stream: opts.mode == crate::options::Mode::Stream,
        copies: match plan.target {
            Target::Queues => 0,
            Target::Topic(_) => plan.queues.len() as u64,
        },
    };
    let consumed = LiveCount::default();
    let sampler = tokio::spawn(sample_each_second(consumed.clone(), start, opts.duration));
    let producers = opts.producers as usize;
    let consumers = opts.consumers as usize;
    let dests = plan.dests();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..producers {
        let client = producer_clients[p % producer_clients.len()].clone();
        let mine = share(&dests, p, producers);
        match opts.rate {
            None if run.stream => tasks.spawn(produce_stream(client, mine, run)),
            None => tasks.spawn(produce_closed(client, mine, run)),
            Some(rate) => {
                // Each producer offers rate / producers, in calls of `batch`,
                // its schedule offset so that producers take turns.
                let every =
                    Duration::from_secs_f64(f64::from(run.batch) * producers as f64 / rate as f64);
                let first = start + every.mul_f64(p as f64 / producers as f64);
                tasks.spawn(produce_open(client, mine, run, first, every))
            }
        };
    }
    for c in 0..consumers {
        let client = consumer_clients[c % consumer_clients.len()].clone();
        let queues = share(&plan.queues, c, consumers);
        if run.stream {
            tasks.spawn(consume_stream(client, queues, run, consumed.clone()));
        } else {
            tasks.spawn(consume(client, queues, run, consumed.clone()));
        }
    }
    let mut total = Stats::default();
    while let Some(done) = tasks.join_next().await {
        total.merge(&done.context("a load task panicked")?);
    }
    total.consumed_each_second = sampler.await.context("the sampler panicked")?;
    Ok(total)
}

/// The increments of `count` over each whole second from `start`.
async fn sample_each_second(count: LiveCount, start: Instant, seconds: u64) -> Vec<u64> {
    let mut each = Vec::new();
    let mut before = 0;
    for second in 1..=seconds {
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        let now = count.load(Ordering::Relaxed);
        each.push(now - before);
        before = now;
    }
    each
}

/// Sends one call at a time, each as soon as the previous was acknowledged.
async fn produce_closed(client: Client, dests: Vec<Dest>, run: Run) -> Stats {
    let mut stats = Stats::default();
    for dest in dests.iter().cycle() {
        let began = Instant::now();
        if began >= run.deadline {
            break;
        }
        let call = send_once(
            &client,
            dest,
            run.batch,
            run.batch == 1,
            run.payload,
            run.stamp(began),
        );
        let Ok(result) = tokio::time::timeout_at(run.deadline + GRACE, call).await else {
            stats.errors.add(
                "send",
                "no reply",
                "still unacknowledged after the grace period",
            );
            break;
        };
        let failed = result.is_err();
        stats.record_send(began, result, run.deadline);
        if failed {
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    stats
}

/// Stream mode: a frame of `batch` messages at a time through the client's
/// `Publisher` (one publishing stream per destination), each frame's
/// answers awaited before the next.
async fn produce_stream(client: Client, dests: Vec<Dest>, run: Run) -> Stats {
    let mut stats = Stats::default();
    let publishers: Result<Vec<Publisher>, Error> = dests
        .iter()
        .map(|dest| {
            match dest {
                Dest::Queue(q) => Publisher::queue(&client, q.to_string()),
                Dest::Topic(t) => Publisher::topic(&client, t.to_string()),
            }
            .batch_size(run.batch as usize)
            .build()
        })
        .collect();
    let publishers = match publishers {
        Ok(p) => p,
        Err(e) => {
            stats.errors.add_error("publisher", &e);
            return stats;
        }
    };
    for publisher in publishers.iter().cycle() {
        let began = Instant::now();
        if began >= run.deadline {
            break;
        }
        let stamp = run.stamp(began);
        let mut acks = Vec::with_capacity(run.batch as usize);
        for _ in 0..run.batch {
            match publisher.send(body(run.payload, stamp)).await {
                Ok(ack) => acks.push(ack),
                Err(e) => stats.errors.add_error("send", &e),
            }
        }
        let answers = futures::future::join_all(acks);
        let Ok(answers) = tokio::time::timeout_at(run.deadline + GRACE, answers).await else {
            stats.errors.add(
                "send",
                "no reply",
                "still unacknowledged after the grace period",
            );
            break;
        };
        let ended = Instant::now();
        let mut acked = 0;
        for answer in answers {
            match answer {
                Ok(_) => acked += 1,
                Err(e) => stats.errors.add_error("send", &e),
            }
        }
        stats.send.record(ended - began);
        if ended <= run.deadline {
            stats.sent += acked;
            stats.delivered += acked * run.copies;
        }
        if acked < u64::from(run.batch) {
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    stats
}

/// Stream mode: a push `Consumer` per queue (credit 2 × batch), each
/// message acknowledged on the stream once its handler counted it. A
/// message counts as consumed when its handler ran before the deadline
/// (its ack follows on the stream, which answers only failures).
async fn consume_stream(
    client: Client,
    queues: Vec<Arc<str>>,
    run: Run,
    consumed: LiveCount,
) -> Stats {
    let stats = Arc::new(std::sync::Mutex::new(Stats::default()));
    let mut consumers = Vec::new();
    for queue in &queues {
        let (mine, consumed) = (stats.clone(), consumed.clone());
        let started = Consumer::builder(&client, queue.to_string())
            .push(true)
            .concurrency(run.batch as usize)
            .batch_size(run.batch)
            .start(move |m: Message| {
                let now = Instant::now();
                if now <= run.deadline {
                    let mut stats = mine.lock().expect("stats lock");
                    if let Some(sent) = stamp_of(&m.body).filter(|s| *s != PRELOADED) {
                        let latency = run.stamp(now).saturating_sub(sent);
                        stats.end_to_end.record(Duration::from_nanos(latency));
                    }
                    stats.consumed += 1;
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
                std::future::ready(Ok::<(), std::convert::Infallible>(()))
            })
            .await;
        match started {
            Ok(c) => consumers.push(c),
            Err(e) => stats
                .lock()
                .expect("stats lock")
                .errors
                .add_error("consumer", &e),
        }
    }
    tokio::time::sleep_until(run.deadline).await;
    for c in consumers {
        let summary = c.shutdown_within(GRACE).await;
        if summary.ack_errors > 0 {
            stats.lock().expect("stats lock").errors.add(
                "ack",
                "refused",
                &format!("{} acknowledgements failed", summary.ack_errors),
            );
        }
    }
    std::mem::take(&mut *stats.lock().expect("stats lock"))
}

/// Starts a call every `every` from `first` on, whether or not earlier
/// ones were acknowledged (up to [`MAX_IN_FLIGHT`]).
async fn produce_open(
    client: Client,
    dests: Vec<Dest>,
    run: Run,
    first: Instant,
    every: Duration,
) -> Stats {
    let mut stats = Stats::default();
    let mut in_flight = FuturesUnordered::new();
    let mut next = first;
    let mut turn = 0usize;
    loop {
        if next >= run.deadline && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some((began, result)) = in_flight.next() => stats.record_send(began, result, run.deadline),
            _ = tokio::time::sleep_until(next), if next < run.deadline && in_flight.len() < MAX_IN_FLIGHT => {
                let began = Instant::now();
                stats.schedule_lag.record(began.saturating_duration_since(next));
                let (client, dest) = (client.clone(), dests[turn % dests.len()].clone());
                turn += 1;
                in_flight.push(async move {
                    let result = send_once(&client, &dest, run.batch, run.batch == 1, run.payload, run.stamp(began)).await;
                    (began, result)
                });
                next += every;
            }
            _ = tokio::time::sleep_until(run.deadline + GRACE) => {
                stats.errors.add("send", "no reply", "still unacknowledged after the grace period");
                break;
            }
        }
    }
    stats
}

/// Receives from `queues` (long polling) and deletes what it received,
/// until the deadline; a receive still waiting then is abandoned.
async fn consume(client: Client, queues: Vec<Arc<str>>, run: Run, consumed: LiveCount) -> Stats {
    let mut stats = Stats::default();
    let mut empty_in_a_row = queues.len();
    for queue in queues.iter().cycle() {
        let began = Instant::now();
        if began >= run.deadline {
            break;
        }
        let wait = if queues.len() == 1 || empty_in_a_row >= queues.len() {
            run.wait
        } else {
            0
        };
        let receive = client.receive_messages(pb::ReceiveMessagesRequest {
            queue: queue.to_string(),
            max_messages: run.batch,
            visibility_timeout_seconds: None,
            wait_time_seconds: Some(wait),
        });
        let Ok(result) = tokio::time::timeout_at(run.deadline, receive).await else {
            break;
        };
        let received_at = Instant::now();
        let messages = match result {
            Ok(resp) => resp.messages,
            Err(e) => {
                stats.errors.add_error("receive", &e);
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        if messages.is_empty() {
            empty_in_a_row += 1;
            continue;
        }
        empty_in_a_row = 0;
        stats.receive.record(received_at - began);
        let now = run.stamp(received_at);
        for m in &messages {
            match stamp_of(&m.body) {
                Some(PRELOADED) | None => {}
                Some(sent) => stats
                    .end_to_end
                    .record(Duration::from_nanos(now.saturating_sub(sent))),
            }
        }
        let delete = delete(&client, queue, messages, run.batch == 1);
        let Ok(result) = tokio::time::timeout_at(run.deadline + GRACE, delete).await else {
            stats.errors.add(
                "delete",
                "no reply",
                "still unacknowledged after the grace period",
            );
            break;
        };
        match result {
            Ok((deleted, failed)) => {
                if Instant::now() <= run.deadline {
                    stats.consumed += deleted;
                    consumed.fetch_add(deleted, Ordering::Relaxed);
                }
                for f in failed {
                    stats.errors.add("delete entry", &f.code, &f.message);
                }
            }
            Err(e) => {
                stats.errors.add_error("delete", &e);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    stats
}

/// Deletes received messages: one call per message when `single`, else one
/// batch call. Returns how many were deleted and the entries that failed.
async fn delete(
    client: &Client,
    queue: &str,
    messages: Vec<pb::ReceivedMessage>,
    single: bool,
) -> Result<(u64, Vec<pb::BatchResultError>), Error> {
    if single {
        let mut deleted = 0;
        for m in messages {
            client
                .delete_message(pb::DeleteMessageRequest {
                    queue: queue.to_owned(),
                    receipt_handle: m.receipt_handle,
                })
                .await?;
            deleted += 1;
        }
        return Ok((deleted, vec![]));
    }
    let entries = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| pb::DeleteMessageBatchEntry {
            id: i.to_string(),
            receipt_handle: m.receipt_handle,
        })
        .collect();
    let resp = client
        .delete_message_batch(pb::DeleteMessageBatchRequest {
            queue: queue.to_owned(),
            entries,
        })
        .await?;
    Ok((resp.successful.len() as u64, resp.failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_stamp_in_the_first_eight_bytes() {
        let b = body(256, 123_456_789);
        assert_eq!(b.len(), 256);
        assert_eq!(stamp_of(&b), Some(123_456_789));
        assert_eq!(stamp_of(&body(8, PRELOADED)), Some(PRELOADED));
        assert_eq!(stamp_of(b"short"), None);
    }

    #[test]
    fn workers_share_items_evenly_or_one_each() {
        let items: Vec<u32> = (0..10).collect();
        assert_eq!(share(&items, 1, 4), vec![1, 5, 9]);
        assert_eq!(share(&items, 3, 4), vec![3, 7]);
        let all: usize = (0..4).map(|w| share(&items, w, 4).len()).sum();
        assert_eq!(all, 10);
        assert_eq!(share(&items[..2], 3, 4), vec![1]);
    }

    #[test]
    fn latency_quantiles_are_in_milliseconds() {
        let mut l = Latency::new();
        assert_eq!(l.quantile_ms(0.5), None);
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let p50 = l.quantile_ms(0.5).unwrap();
        assert!((49.9..=50.1).contains(&p50), "{p50}");
        assert!((l.max_ms().unwrap() - 100.0).abs() < 0.1);
        let mut other = Latency::new();
        other.record(Duration::from_secs(2));
        l.merge(&other);
        assert_eq!(l.count(), 101);
    }
}
