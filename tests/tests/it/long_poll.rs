//! Long polling: a receive with a wait time parks until a message is
//! available, woken by a send, a delayed message coming due, a lapsed
//! visibility timeout or ChangeMessageVisibility to 0; it returns empty when
//! the wait ends; and a client that leaves mid-wait loses no message.
//!
//! "Woken" is asserted as "returned soon after the event and long before the
//! wait would have ended". Where a test must make sure a receive is already
//! parked before the event, it waits until the server counts it
//! ([`TestServer::wait_for_long_polls`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::select_all;

use broker_tests::*;
use tokio::task::JoinHandle;

/// How soon after its event a parked receive must return.
const PROMPTLY: Duration = Duration::from_millis(1000);

/// A long-poll receive of up to 10 messages in a task of its own.
fn spawn_wait(
    client: &Client,
    queue: &str,
    wait_seconds: u32,
) -> JoinHandle<Vec<pb::ReceivedMessage>> {
    let client = client.clone();
    let queue = queue.to_string();
    tokio::spawn(async move { receive_wait(&client, &queue, 10, 30, wait_seconds).await })
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_receive_is_woken_by_a_send() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    let waiting = spawn_wait(&client, "orders", 10);
    server.wait_for_long_polls(1).await;
    assert!(!waiting.is_finished(), "returned before anything was sent");

    let sent = Instant::now();
    let id = send_message(&client, "orders", "wake up", &[], None).await;
    let messages = waiting.await.expect("the receive task");
    assert!(
        sent.elapsed() < PROMPTLY,
        "woken {:?} after the send",
        sent.elapsed()
    );
    assert_eq!(only(messages).message_id, id);
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_receive_returns_an_available_message_at_once() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "ready", &[], None).await;
    let started = Instant::now();
    only(receive_wait(&client, "orders", 10, 30, 10).await);
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_receive_is_woken_by_a_lapsed_visibility_timeout() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let id = send_message(&client, "orders", "job", &[], None).await;
    only(receive_now(&client, "orders", 1, 1).await);
    let received = Instant::now();

    let message = only(receive_wait(&client, "orders", 10, 30, 10).await);
    assert_eq!((message.message_id, message.receive_count), (id, 2));
    let elapsed = received.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(1) + PROMPTLY,
        "woken {elapsed:?} after a receive with a 1 s timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_receive_is_woken_by_change_visibility_to_zero() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    let id = send_message(&client, "orders", "job", &[], None).await;
    let message = only(receive_now(&client, "orders", 1, 600).await);
    let waiting = spawn_wait(&client, "orders", 10);
    server.wait_for_long_polls(1).await;
    assert!(
        !waiting.is_finished(),
        "returned while the message was in flight"
    );

    let released = Instant::now();
    change_visibility(&client, "orders", &message.receipt_handle, 0)
        .await
        .expect("release");
    let messages = waiting.await.expect("the receive task");
    assert!(
        released.elapsed() < PROMPTLY,
        "woken {:?} after the release",
        released.elapsed()
    );
    let again = only(messages);
    assert_eq!((again.message_id, again.receive_count), (id, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_receive_is_woken_by_a_delayed_message_coming_due() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let sent = Instant::now();
    let id = send_message(&client, "orders", "later", &[], Some(1)).await;
    let message = only(receive_wait(&client, "orders", 10, 30, 10).await);
    assert_eq!(message.message_id, id);
    let elapsed = sent.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(1) + PROMPTLY,
        "woken {elapsed:?} after a send with a 1 s delay"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_receive_returns_empty_when_the_wait_ends() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    // A message of another queue and a delayed one do not end the wait.
    create_queue(&client, "other", attributes()).await;
    send_message(&client, "other", "elsewhere", &[], None).await;
    send_message(&client, "orders", "much later", &[], Some(600)).await;
    let started = Instant::now();
    let messages = receive_wait(&client, "orders", 10, 30, 1).await;
    let elapsed = started.elapsed();
    assert!(messages.is_empty(), "{messages:?}");
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(1) + PROMPTLY,
        "a 1 s wait took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_receive_wait_time_applies_when_the_request_sets_none() {
    let (_server, client) = server_with_queue(
        "orders",
        pb::QueueAttributes {
            receive_wait_time_seconds: Some(1),
            ..Default::default()
        },
    )
    .await;
    let started = Instant::now();
    let messages = receive_with(&client, receive_request("orders", 1, None, None)).await;
    assert!(messages.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "the queue's 1 s wait ended after {:?}",
        started.elapsed()
    );

    // A request wait of 0 overrides the queue's: return at once.
    let started = Instant::now();
    assert!(receive_now(&client, "orders", 1, 30).await.is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
}

/// Many parked receives, as many sends: each message goes to exactly one.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_waiting_receives_never_share_a_message() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    let waiting: Vec<_> = (0..5).map(|_| spawn_wait(&client, "orders", 2)).collect();
    server.wait_for_long_polls(5).await;
    let sent: HashSet<_> = send_numbered(&client, "orders", 5)
        .await
        .into_iter()
        .collect();
    let mut received = HashSet::new();
    for task in waiting {
        for message in task.await.expect("the receive task") {
            assert_eq!(message.receive_count, 1, "delivered twice: {message:?}");
            assert!(received.insert(message.message_id), "delivered twice");
        }
    }
    assert_eq!(received, sent);
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 5, 0));
}

/// Dropping the receive future mid-wait (the client cancels the RPC) leaves
/// nothing claimed: a message sent afterwards is received at once, first time.
#[tokio::test(flavor = "multi_thread")]
async fn dropped_waiting_receive_loses_no_message() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    for _ in 0..5 {
        // Drive a receive until the server has it parked, then drop it.
        let receive = receive_wait(&client, "orders", 10, 600, 20);
        tokio::select! {
            messages = receive => panic!("the receive returned instead of waiting: {messages:?}"),
            () = server.wait_for_long_polls(1) => {}
        }
        // Once the server counts none, it has seen the cancellation.
        server.wait_for_long_polls(0).await;
    }

    let id = send_message(&client, "orders", "not lost", &[], None).await;
    let message = only(receive_now(&client, "orders", 10, 30).await);
    assert_eq!((message.message_id, message.receive_count), (id, 1));
}

/// A client whose task is aborted and whose connection closes mid-wait loses
/// no message either.
#[tokio::test(flavor = "multi_thread")]
async fn disconnected_waiting_client_loses_no_message() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        // Each on a connection of its own, dropped with the task.
        let leaving = server.client().await;
        tasks.push(tokio::spawn(async move {
            receive_wait(&leaving, "orders", 10, 600, 20).await
        }));
    }
    server.wait_for_long_polls(5).await;
    for task in tasks {
        assert!(
            !task.is_finished(),
            "the receive returned instead of waiting"
        );
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());
    }
    // Once the server counts none, it has seen the disconnections.
    server.wait_for_long_polls(0).await;

    let id = send_message(&client, "orders", "not lost", &[], None).await;
    let started = Instant::now();
    let message = only(receive_wait(&client, "orders", 10, 30, 5).await);
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
    assert_eq!((message.message_id, message.receive_count), (id, 1));
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 1, 0));
}

/// CPU time, in clock ticks, of this process's threads named `name` (the
/// kernel truncates thread names to 15 bytes); panics if there are none.
fn cpu_ticks_of_threads(name: &str) -> u64 {
    let mut threads = 0;
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let task = task.expect("a task").path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue;
        };
        // After "pid (comm) " come the fields from 3 (state): utime is 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("comm ends") + 2..]
            .split(' ')
            .collect();
        ticks +=
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        threads += 1;
    }
    assert!(threads > 0, "no thread named {name:?}");
    ticks
}

/// 1000 parked receives on 10 connections: the threads running the server
/// (and the clients) stay idle while they wait, and one send wakes one of
/// them at once.
#[test]
fn a_thousand_idle_long_polls_cost_no_cpu() {
    const THREADS: &str = "idle-long-polls"; // 15 bytes: the kernel's limit
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let server = TestServer::start().await;
        let client = server.client().await;
        create_queue(&client, "orders", attributes()).await;
        let mut waiting = Vec::new();
        for _ in 0..10 {
            let connection = server.client().await;
            for _ in 0..100 {
                let connection = connection.clone();
                waiting.push(tokio::spawn(async move {
                    connection
                        .receive_messages(receive_request("orders", 1, Some(30), Some(20)))
                        .await
                }));
            }
        }
        server.wait_for_long_polls(1000).await;
        assert!(
            waiting.iter().all(|t| !t.is_finished()),
            "every receive is waiting"
        );

        let before = cpu_ticks_of_threads(THREADS);
        // The second of idling whose CPU time is measured.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = cpu_ticks_of_threads(THREADS) - before;
        // Clock ticks are 10 ms on Linux: allow 100 ms of CPU per second.
        assert!(
            used <= 10,
            "1000 idle long polls used {used} ticks of CPU in 1 s"
        );

        let sent = Instant::now();
        let id = send_message(&client, "orders", "one", &[], None).await;
        let (first, _, rest) = select_all(waiting).await;
        assert!(
            sent.elapsed() < PROMPTLY,
            "woken {:?} after the send",
            sent.elapsed()
        );
        let messages = first
            .expect("the receive task")
            .expect("ReceiveMessages")
            .messages;
        assert_eq!(only(messages).message_id, id);
        assert!(
            rest.iter().all(|t| !t.is_finished()),
            "one send wakes one receive"
        );
        server.shutdown().await;
    });
}

/// A long poll whose client gives up at a deadline stops waiting a margin
/// before it (half the timeout, at most 500 ms): it answers empty while the
/// client still listens, and a message sent the moment the client gave up
/// stays visible instead of going in flight to a caller that is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_ends_before_its_client_deadline_and_takes_nothing_after_it() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    let raw =
        pb::queue_service_client::QueueServiceClient::connect(format!("http://{}", server.addr()))
            .await
            .expect("connect");
    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let polls: Vec<_> = (0..10)
        .map(|_| {
            let mut raw = raw.clone();
            tokio::spawn(async move {
                let mut request =
                    tonic::Request::new(receive_request("orders", 1, Some(600), Some(20)));
                request.set_timeout(deadline);
                raw.receive_messages(request).await
            })
        })
        .collect();
    for poll in polls {
        let answer = poll.await.expect("the receive task");
        let messages = answer
            .unwrap_or_else(|e| panic!("the broker did not answer before the deadline: {e:?}"))
            .into_inner()
            .messages;
        assert!(messages.is_empty(), "nothing was sent yet");
    }
    assert!(started.elapsed() < deadline, "answered after the deadline");
    // What is under test: a send once the client's deadline has passed.
    tokio::time::sleep_until((started + deadline).into()).await;
    send_message(&client, "orders", "after the deadline", &[], None).await;
    assert_eq!(counts(&client, "orders").await, Counts::new(1, 0, 0));
}
