//! The client's `Consumer` and `Publisher` against a real broker: delete on
//! success, retry with backoff into the dead-letter queue, heartbeats for
//! slow handlers, the per-consumer rate limit, graceful shutdown, the
//! `Stream` API, reconnecting after a broker restart — in pull mode and in
//! push mode (`StreamMessages`) — and batched publishing to queues and
//! topics.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_client::{
    Consumer, ConsumerBuilder, ConsumerSummary, Message, OutgoingMessage, Publisher,
};
use broker_tests::*;
use futures::StreamExt;
use tokio::sync::mpsc;

fn body(message: &Message) -> String {
    String::from_utf8_lossy(&message.body).into_owned()
}

/// A consumer builder in the given delivery mode.
fn builder(client: &Client, queue: &str, push: bool) -> ConsumerBuilder {
    Consumer::builder(client, queue).push(push)
}

/// Receives `n` items within `within`, panicking otherwise.
async fn take<T>(rx: &mut mpsc::UnboundedReceiver<T>, n: usize, within: Duration) -> Vec<T> {
    let mut items = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + within;
    while items.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => panic!("the channel closed after {} of {n} items", items.len()),
            Err(_) => panic!("only {} of {n} items within {within:?}", items.len()),
        }
    }
    items
}

/// Every message received is accounted for exactly once.
#[track_caller]
fn assert_accounted(summary: &ConsumerSummary) {
    assert_eq!(
        summary.received,
        summary.succeeded + summary.failed + summary.released + summary.abandoned,
        "{summary:?}"
    );
}

// ---------------------------------------------------------------------------
// Success deletes.
// ---------------------------------------------------------------------------

async fn deletes_each_message_its_handler_accepted(push: bool) {
    let (_server, client) = server_with_queue("jobs", visibility(2)).await;
    send_batch(&client, "jobs", numbered(20)).await;

    let (tx, mut handled) = mpsc::unbounded_channel();
    let consumer = builder(&client, "jobs", push)
        .concurrency(4)
        .start(move |message: Message| {
            let tx = tx.clone();
            async move {
                tx.send(body(&message)).unwrap();
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();
    let bodies: HashSet<String> = take(&mut handled, 20, Duration::from_secs(5))
        .await
        .into_iter()
        .collect();
    assert_eq!(bodies, numbered(20).into_iter().collect::<HashSet<_>>());

    let summary = consumer.shutdown().await;
    assert_eq!(summary.succeeded, 20, "{summary:?}");
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.ack_errors, 0, "{summary:?}");
    assert!(summary.error.is_none(), "{summary:?}");
    assert_accounted(&summary);
    // Shutdown flushed the batched deletes: nothing is left, in flight or not.
    assert_eq!(counts(&client, "jobs").await, Counts::EMPTY);
    // No message was handled twice.
    assert!(handled.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_deletes_each_message_its_handler_accepted() {
    deletes_each_message_its_handler_accepted(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_consumer_deletes_each_message_its_handler_accepted() {
    deletes_each_message_its_handler_accepted(true).await;
}

// ---------------------------------------------------------------------------
// Failures retry with backoff, then dead-letter.
// ---------------------------------------------------------------------------

async fn failing_handler_retries_with_backoff_until_the_dead_letter_queue(push: bool) {
    let (_server, client) = server_with_queue("jobs-dlq", attributes()).await;
    // A 10 s visibility timeout: a retry well before it proves the release.
    let mut attrs = redrive_to("jobs-dlq", 3);
    attrs.visibility_timeout_seconds = Some(10);
    create_queue(&client, "jobs", attrs).await;
    send_batch(&client, "jobs", ["poison"]).await;

    let attempts = Arc::new(Mutex::new(Vec::new()));
    let recorded = attempts.clone();
    let consumer = builder(&client, "jobs", push)
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(2))
        .start(move |message: Message| {
            recorded
                .lock()
                .unwrap()
                .push((message.receive_count, Instant::now()));
            async { Err("cannot send this email") }
        })
        .await
        .unwrap();

    eventually(
        Duration::from_secs(10),
        "the message is dead-lettered",
        || async { counts(&client, "jobs-dlq").await.visible == 1 },
    )
    .await;
    let summary = consumer.shutdown().await;

    let attempts = attempts.lock().unwrap().clone();
    let receive_counts: Vec<u32> = attempts.iter().map(|(count, _)| *count).collect();
    assert_eq!(receive_counts, [1, 2, 3], "one handler call per receive");
    for pair in attempts.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        // At least the 1 s minimum backoff, far less than the 10 s timeout.
        assert!(
            gap >= Duration::from_millis(900) && gap <= Duration::from_secs(4),
            "retry after {gap:?}: {attempts:?}"
        );
    }
    assert_eq!(summary.failed, 3, "{summary:?}");
    assert_eq!(summary.succeeded, 0, "{summary:?}");
    assert_accounted(&summary);
    assert_eq!(counts(&client, "jobs").await, Counts::EMPTY);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_handler_retries_with_backoff_until_the_dead_letter_queue_takes_it() {
    failing_handler_retries_with_backoff_until_the_dead_letter_queue(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_failing_handler_retries_with_backoff_until_the_dead_letter_queue_takes_it() {
    failing_handler_retries_with_backoff_until_the_dead_letter_queue(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_fails_its_message_only() {
    let (_server, client) = server_with_queue("jobs", visibility(10)).await;
    send_batch(&client, "jobs", ["boom", "fine"]).await;

    let (tx, mut handled) = mpsc::unbounded_channel();
    let consumer = Consumer::builder(&client, "jobs")
        .retry_backoff(Duration::ZERO, Duration::ZERO)
        .start(move |message: Message| {
            let tx = tx.clone();
            async move {
                let body = body(&message);
                if body == "boom" && message.receive_count == 1 {
                    panic!("handler bug");
                }
                tx.send(body).unwrap();
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();
    let mut bodies = take(&mut handled, 2, Duration::from_secs(5)).await;
    bodies.sort();
    assert_eq!(bodies, ["boom", "fine"]);
    let summary = consumer.shutdown().await;
    assert_eq!((summary.succeeded, summary.failed), (2, 1), "{summary:?}");
    assert_eq!(counts(&client, "jobs").await, Counts::EMPTY);
}

// ---------------------------------------------------------------------------
// Heartbeats.
// ---------------------------------------------------------------------------

/// A handler that takes 3 s over a message with a 1 s visibility timeout,
/// while another client keeps trying to receive it. Returns how often the
/// other client got it, and the consumer's summary.
async fn slow_handler_with_a_competing_receiver(
    push: bool,
    heartbeat: bool,
) -> (usize, ConsumerSummary, Client, TestServer) {
    let (server, client) = server_with_queue("reports", visibility(1)).await;
    send_batch(&client, "reports", ["big report"]).await;

    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (finished_tx, mut finished) = mpsc::unbounded_channel();
    let consumer = builder(&client, "reports", push)
        .heartbeat(heartbeat)
        .start(move |_message: Message| {
            let started_tx = started_tx.clone();
            let finished_tx = finished_tx.clone();
            async move {
                started_tx.send(()).unwrap();
                // The slow handler under test.
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = finished_tx.send(());
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();
    take(&mut started, 1, Duration::from_secs(5)).await;

    let other = server.client().await;
    let mut stolen = 0;
    let until = Instant::now() + Duration::from_millis(2700);
    while Instant::now() < until {
        for message in receive_now(&other, "reports", 10, 5).await {
            stolen += 1;
            // Hand it back, so the consumer's delete can still succeed later.
            let _ = change_visibility(&other, "reports", &message.receipt_handle, 0).await;
        }
        // The other client's pace: ten tries a second.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The handler finishes (3 s after it started); shutdown flushes the delete.
    take(&mut finished, 1, Duration::from_secs(5)).await;
    let summary = consumer.shutdown_within(Duration::from_secs(1)).await;
    assert!(
        started.try_recv().is_err() || !heartbeat,
        "handler ran twice"
    );
    (stolen, summary, client, server)
}

async fn heartbeat_keeps_a_slow_message_from_other_consumers(push: bool) {
    let (stolen, summary, client, _server) =
        slow_handler_with_a_competing_receiver(push, true).await;
    assert_eq!(
        stolen, 0,
        "another client received the message: {summary:?}"
    );
    assert_eq!(summary.succeeded, 1, "{summary:?}");
    assert!(summary.extended >= 2, "{summary:?}");
    assert_eq!(summary.ack_errors, 0, "{summary:?}");
    assert_eq!(counts(&client, "reports").await, Counts::EMPTY);
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_keeps_a_slow_message_invisible_to_other_consumers() {
    heartbeat_keeps_a_slow_message_from_other_consumers(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_heartbeat_keeps_a_slow_message_invisible_to_other_consumers() {
    heartbeat_keeps_a_slow_message_from_other_consumers(true).await;
}

/// The control: without heartbeats the same scenario hands the message out
/// again, so the test above does detect a missing heartbeat.
#[tokio::test(flavor = "multi_thread")]
async fn without_heartbeat_a_slow_message_is_received_again() {
    let (stolen, summary, _client, _server) =
        slow_handler_with_a_competing_receiver(false, false).await;
    // Received again, by the other client or by the consumer itself.
    assert!(stolen + summary.received as usize >= 2, "{summary:?}");
    assert_eq!(summary.extended, 0, "{summary:?}");
}

// ---------------------------------------------------------------------------
// Rate limit.
// ---------------------------------------------------------------------------

async fn max_per_second_limits_deliveries(push: bool) {
    let (_server, client) = server_with_queue("emails", visibility(5)).await;
    send_batch(&client, "emails", numbered(60)).await;

    let times = Arc::new(Mutex::new(Vec::new()));
    let recorded = times.clone();
    let consumer = builder(&client, "emails", push)
        .concurrency(4)
        .max_per_second(10)
        .start(move |_message: Message| {
            recorded.lock().unwrap().push(Instant::now());
            async { Ok::<_, String>(()) }
        })
        .await
        .unwrap();
    // The window whose deliveries are counted.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let summary = consumer.shutdown().await;

    let times = times.lock().unwrap().clone();
    assert!(times.len() >= 15, "only {} handled in 2.5 s", times.len());
    // In any 1 s window: at most 10, plus one for a window closed at both ends.
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| **t - *start < Duration::from_secs(1))
            .count();
        assert!(in_window <= 11, "{in_window} handled within 1 s");
    }
    // Over the whole run: 10 per second.
    let span = (*times.last().unwrap() - times[0]).as_secs_f64();
    assert!(
        times.len() as f64 <= 10.0 * span + 2.0,
        "{} handled in {span:.2} s",
        times.len()
    );
    assert_accounted(&summary);
    // What was received and not handled went back to the queue.
    let left = counts(&client, "emails").await;
    assert_eq!(left.in_flight, 0, "{left:?}");
    assert_eq!(left.visible, 60 - summary.succeeded, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_honours_max_per_second() {
    max_per_second_limits_deliveries(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_consumer_honours_max_per_second() {
    max_per_second_limits_deliveries(true).await;
}

// ---------------------------------------------------------------------------
// Graceful shutdown.
// ---------------------------------------------------------------------------

async fn shutdown_finishes_running_handlers_and_releases_the_rest(push: bool) {
    let server = TestServer::start().await;
    let client = server.client().await;
    // 30 s: a message left in flight would show in the counts below.
    create_queue(&client, "jobs", visibility(30)).await;
    send_batch(&client, "jobs", numbered(10)).await;

    let (started_tx, mut started) = mpsc::unbounded_channel();
    let consumer = builder(&client, "jobs", push)
        .concurrency(1)
        .batch_size(10)
        .start(move |_message: Message| {
            let started_tx = started_tx.clone();
            async move {
                started_tx.send(()).unwrap();
                // Still running when the shutdown begins.
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();
    take(&mut started, 1, Duration::from_secs(5)).await;
    // The receiver fetches all 10 (its room: concurrency + batch size).
    eventually(
        Duration::from_secs(5),
        "the consumer holds every message",
        || async { counts(&client, "jobs").await.visible == 0 },
    )
    .await;

    let began = Instant::now();
    let summary = consumer.shutdown().await;
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    // The running handler finished and its message was deleted.
    assert_eq!(summary.succeeded, 1, "{summary:?}");
    assert_eq!(summary.abandoned, 0, "{summary:?}");
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert!(summary.released >= 1, "{summary:?}");
    assert_accounted(&summary);
    // Everything else is visible again at once: nothing waits 30 s.
    assert_eq!(counts(&client, "jobs").await, Counts::new(9, 0, 0));
    let again = receive_now(&client, "jobs", 10, 30).await;
    assert_eq!(again.len(), 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_running_handlers_and_releases_unstarted_messages() {
    shutdown_finishes_running_handlers_and_releases_the_rest(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_shutdown_finishes_running_handlers_and_releases_unstarted_messages() {
    shutdown_finishes_running_handlers_and_releases_the_rest(true).await;
}

async fn shutdown_deadline_case(push: bool) {
    let (_server, client) = server_with_queue("jobs", visibility(30)).await;
    send_batch(&client, "jobs", ["stuck"]).await;

    let (started_tx, mut started) = mpsc::unbounded_channel();
    let consumer = builder(&client, "jobs", push)
        .start(move |_message: Message| {
            let started_tx = started_tx.clone();
            async move {
                started_tx.send(()).unwrap();
                // Stuck: never finishes.
                std::future::pending::<()>().await;
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();
    take(&mut started, 1, Duration::from_secs(5)).await;

    let began = Instant::now();
    let summary = consumer.shutdown_within(Duration::from_millis(300)).await;
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(summary.abandoned, 1, "{summary:?}");
    assert_accounted(&summary);
    assert_eq!(counts(&client, "jobs").await, Counts::new(1, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_deadline_aborts_a_stuck_handler_and_releases_its_message() {
    shutdown_deadline_case(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_shutdown_deadline_aborts_a_stuck_handler_and_releases_its_message() {
    shutdown_deadline_case(true).await;
}

// ---------------------------------------------------------------------------
// The Stream API.
// ---------------------------------------------------------------------------

async fn stream_acks_nacks_and_releases_dropped_deliveries(push: bool) {
    let (_server, client) = server_with_queue("jobs", visibility(30)).await;
    send_batch(&client, "jobs", ["ack", "nack", "drop"]).await;

    let mut stream = builder(&client, "jobs", push)
        .retry_backoff(Duration::ZERO, Duration::ZERO)
        .stream()
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a delivery within 5 s")
            .expect("the stream goes on")
            .expect("no error");
        let body = body(delivery.message());
        seen.push((body.clone(), delivery.receive_count));
        match (body.as_str(), delivery.receive_count) {
            ("ack", _) => delivery.ack(),
            ("nack", 1) => delivery.nack(),
            ("drop", 1) => drop(delivery),
            (_, 2) => delivery.ack(),
            other => panic!("unexpected delivery {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("ack".to_string(), 1),
            ("drop".to_string(), 1),
            ("drop".to_string(), 2),
            ("nack".to_string(), 1),
            ("nack".to_string(), 2),
        ]
    );
    let summary = stream.shutdown().await;
    assert_eq!(
        (summary.succeeded, summary.failed, summary.released),
        (3, 1, 1),
        "{summary:?}"
    );
    assert_accounted(&summary);
    assert_eq!(counts(&client, "jobs").await, Counts::EMPTY);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_acks_nacks_and_releases_dropped_deliveries_at_once() {
    stream_acks_nacks_and_releases_dropped_deliveries(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_stream_acks_nacks_and_releases_dropped_deliveries_at_once() {
    stream_acks_nacks_and_releases_dropped_deliveries(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_ends_with_the_error_when_its_queue_is_deleted() {
    let (_server, client) = server_with_queue("doomed", attributes()).await;
    let mut stream = Consumer::builder(&client, "doomed")
        .wait_time(Duration::from_secs(1))
        .stream()
        .await
        .unwrap();
    client
        .delete_queue(pb::DeleteQueueRequest {
            name: "doomed".into(),
        })
        .await
        .unwrap();
    let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream reports within 5 s")
        .expect("an item");
    let error = item.expect_err("an error");
    assert_eq!(error.code(), Code::NotFound, "{error}");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .unwrap()
            .is_none()
    );
    let summary = stream.shutdown().await;
    assert!(
        matches!(summary.error, Some(Error::NotFound(_))),
        "{summary:?}"
    );
}

// ---------------------------------------------------------------------------
// Connection: errors up front, reconnect after a restart.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn consumer_of_a_missing_queue_or_with_a_bad_option_fails_to_start() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let handler = |_message: Message| async { Ok::<_, String>(()) };
    let error = Consumer::builder(&client, "nope")
        .start(handler)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error}");
    assert!(error.message().contains("nope"), "{error}");

    create_queue(&client, "jobs", attributes()).await;
    let error = Consumer::builder(&client, "jobs")
        .batch_size(500)
        .start(handler)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidArgument(m)
            if m.contains("batch_size") && m.contains("1..=100") && m.contains("500")),
        "{error}"
    );
}

/// A broker on a fixed address that can be stopped and started again on
/// the same port and data directory (the harness's restart picks a new
/// port, which a connected client would never find).
struct FixedPortBroker {
    addr: SocketAddr,
    data_dir: tempfile::TempDir,
    running: Option<(tokio::sync::oneshot::Sender<()>, ServerTask)>,
}

/// `broker::server::run` in a task.
type ServerTask = tokio::task::JoinHandle<Result<(), broker::server::StartupError>>;

impl FixedPortBroker {
    async fn start() -> FixedPortBroker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut broker = FixedPortBroker {
            addr: listener.local_addr().unwrap(),
            data_dir: temp_data_dir(),
            running: None,
        };
        broker.serve(listener);
        broker
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = broker::config::ServerConfig::new(self.data_dir.path());
        let task = tokio::spawn(broker::server::run(listener, config, async move {
            let _ = stopped.await;
        }));
        self.running = Some((stop, task));
    }

    async fn stop(&mut self) {
        let (stop, task) = self.running.take().expect("running");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the broker stops within 10 s")
            .unwrap()
            .unwrap();
    }

    async fn restart(&mut self) {
        // The old connections' sockets may linger briefly; retry the bind.
        let addr = self.addr;
        let listener = eventually(Duration::from_secs(5), &format!("rebind {addr}"), || {
            tokio::net::TcpListener::bind(addr)
        })
        .await;
        self.serve(listener);
    }
}

impl Drop for FixedPortBroker {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                tokio::task::block_in_place(|| {
                    let _ = runtime.block_on(tokio::time::timeout(Duration::from_secs(10), task));
                });
            }
        }
    }
}

async fn consumer_keeps_going_after_a_broker_restart(push: bool) {
    let mut broker = FixedPortBroker::start().await;
    let client = Client::connect(broker.addr.to_string()).await.unwrap();
    create_queue(&client, "jobs", visibility(2)).await;

    let (tx, mut handled) = mpsc::unbounded_channel();
    let consumer = builder(&client, "jobs", push)
        .start(move |message: Message| {
            let tx = tx.clone();
            async move {
                tx.send(body(&message)).unwrap();
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();
    send_batch(&client, "jobs", (0..3).map(|i| format!("before {i}"))).await;
    take(&mut handled, 3, Duration::from_secs(5)).await;

    broker.stop().await;
    // The outage under test: the consumer's receives fail meanwhile; it
    // keeps retrying.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.restart().await;

    // The same client reconnects too (its first call may still fail).
    eventually(Duration::from_secs(10), "the client reconnects", || async {
        client
            .get_queue(pb::GetQueueRequest {
                name: "jobs".into(),
            })
            .await
            .is_ok()
    })
    .await;
    send_batch(&client, "jobs", (0..3).map(|i| format!("after {i}"))).await;
    let mut after = take(&mut handled, 3, Duration::from_secs(10)).await;
    after.sort();
    assert_eq!(after, ["after 0", "after 1", "after 2"]);

    let summary = consumer.shutdown().await;
    assert!(summary.error.is_none(), "{summary:?}");
    assert_eq!(summary.succeeded, 6, "{summary:?}");
    assert_eq!(counts(&client, "jobs").await, Counts::EMPTY);
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_keeps_receiving_after_the_broker_restarts() {
    consumer_keeps_going_after_a_broker_restart(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_consumer_keeps_receiving_after_the_broker_restarts() {
    consumer_keeps_going_after_a_broker_restart(true).await;
}

// ---------------------------------------------------------------------------
// Publisher.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn publisher_acknowledges_every_message_of_its_batches() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let publisher = Publisher::queue(&client, "orders").build().unwrap();

    let mut acks = Vec::new();
    for i in 0..250 {
        acks.push(publisher.send(format!("order {i}")).await.unwrap());
    }
    let mut ids = HashSet::new();
    for ack in acks {
        ids.insert(ack.await.unwrap());
    }
    assert_eq!(ids.len(), 250);
    assert_eq!(counts(&client, "orders").await, Counts::new(250, 0, 0));

    // Attributes and delays go through.
    let ack = publisher
        .send(
            OutgoingMessage::new("later")
                .attribute("kind", "slow")
                .delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    ack.await.unwrap();
    assert_eq!(counts(&client, "orders").await, Counts::new(250, 0, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_fails_only_the_message_whose_entry_failed() {
    let (_server, client) = server_with_queue(
        "small",
        pb::QueueAttributes {
            max_message_bytes: Some(1024),
            ..Default::default()
        },
    )
    .await;
    let publisher = Publisher::queue(&client, "small").build().unwrap();
    let before = publisher.send("fits").await.unwrap();
    let big = publisher.send(vec![b'x'; 2000]).await.unwrap();
    let after = publisher.send("fits too").await.unwrap();
    assert!(before.await.is_ok());
    let error = big.await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    assert!(error.message().contains("1024"), "{error}");
    assert!(after.await.is_ok());
    assert_eq!(counts(&client, "small").await.visible, 2);

    // A missing queue fails every message of the batch with its error.
    let publisher = Publisher::queue(&client, "missing").build().unwrap();
    let first = publisher.send("a").await.unwrap();
    let second = publisher.send("b").await.unwrap();
    for ack in [first, second] {
        let error = ack.await.unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "{error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_waits_for_room_when_its_bytes_are_in_flight() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let publisher = Publisher::queue(&client, "orders")
        .max_in_flight_bytes(1000)
        .linger(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..20 {
        acks.push(
            publisher
                .send(vec![b'0' + (i % 10) as u8; 400])
                .await
                .unwrap(),
        );
        assert!(publisher.in_flight_bytes() <= 1000);
    }
    for ack in acks {
        ack.await.unwrap();
    }
    assert_eq!(publisher.in_flight_bytes(), 0);
    assert_eq!(counts(&client, "orders").await.visible, 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_publishes_to_a_topic() {
    let (_server, client) = server_with_queue("sms", attributes()).await;
    client
        .create_topic(pb::CreateTopicRequest {
            name: "payments".into(),
        })
        .await
        .unwrap();
    client
        .subscribe(pb::SubscribeRequest {
            topic: "payments".into(),
            queue: "sms".into(),
            filter_policy: r#"{"country": ["IN"]}"#.into(),
            raw_delivery: true,
        })
        .await
        .unwrap();
    let publisher = Publisher::topic(&client, "payments").build().unwrap();
    let mut acks = Vec::new();
    for country in ["IN", "BR", "IN"] {
        let message =
            OutgoingMessage::new(format!("paid in {country}")).attribute("country", country);
        acks.push(publisher.send(message).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
    assert_eq!(counts(&client, "sms").await.visible, 2);

    let error = publisher
        .send(OutgoingMessage::new("x").delay(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
}

/// Publisher and consumer together: what is published is handled once.
#[tokio::test(flavor = "multi_thread")]
async fn published_messages_are_each_handled_once() {
    let (_server, client) = server_with_queue("pipeline", visibility(5)).await;
    let (tx, mut handled) = mpsc::unbounded_channel();
    let consumer = Consumer::builder(&client, "pipeline")
        .concurrency(8)
        .push(true)
        .start(move |message: Message| {
            let tx = tx.clone();
            async move {
                tx.send(body(&message)).unwrap();
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();
    let publisher = Publisher::queue(&client, "pipeline").build().unwrap();
    for i in 0..500 {
        let _ack = publisher.send(format!("n{i}")).await.unwrap();
    }
    publisher.flush().await;
    let bodies = take(&mut handled, 500, Duration::from_secs(20)).await;
    assert_eq!(bodies.iter().collect::<HashSet<_>>().len(), 500);
    let summary = consumer.shutdown().await;
    assert_eq!(summary.succeeded, 500, "{summary:?}");
    assert!(handled.try_recv().is_err(), "a message was handled twice");
    assert_eq!(counts(&client, "pipeline").await, Counts::EMPTY);
}

/// The publisher's stream breaks when the broker stops: it reopens it once
/// the broker is back and sends what was unanswered again, so every
/// message handed over is acknowledged and stored (at least once).
#[tokio::test(flavor = "multi_thread")]
async fn publisher_resends_what_was_unanswered_when_the_broker_restarts() {
    let mut broker = FixedPortBroker::start().await;
    let client = Client::connect(broker.addr.to_string()).await.unwrap();
    create_queue(&client, "orders", attributes()).await;
    let publisher = Publisher::queue(&client, "orders").build().unwrap();
    let mut acks = Vec::new();
    for i in 0..100 {
        acks.push(publisher.send(format!("before {i}")).await.unwrap());
    }
    publisher.flush().await;
    broker.stop().await;
    // Handed over while the broker is down: they wait for it.
    for i in 0..100 {
        acks.push(publisher.send(format!("during {i}")).await.unwrap());
    }
    // Time passing is what this tests: the publisher fails to reconnect
    // and backs off (from 100 ms) while the broker is down.
    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.restart().await;
    let mut ids = HashSet::new();
    for ack in acks {
        ids.insert(ack.await.expect("acknowledged once the broker is back"));
    }
    assert_eq!(ids.len(), 200);
    let stored = counts(&client, "orders").await.visible;
    assert!(
        stored >= 200,
        "every acknowledged message is stored: {stored}"
    );
}
