//! The CLI's operator tools against a real server: the rows of `stats` and
//! `top`, `peek` beyond one page, and `redrive --per-second` (paced, with
//! progress). Their rendering is unit-tested in `broker_cli::admin`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use broker_cli::admin::{QueueRow, RedriveProgress, peek_messages, queue_rows, redrive_paced};
use broker_tests::*;

fn redrive_request(
    source: &str,
    destination: &str,
    max_messages: u32,
) -> pb::RedriveMessagesRequest {
    pb::RedriveMessagesRequest {
        source_queue: source.to_string(),
        destination_queue: destination.to_string(),
        max_messages,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_stats_count_every_queue_and_show_the_caps_and_the_disk() {
    let server = TestServer::start_with(|c| {
        c.limits.max_messages = 1_000;
        c.limits.min_free_disk = 1;
    })
    .await;
    let client = server.client().await;
    for queue in ["a", "b"] {
        create_queue(&client, queue, attributes()).await;
    }
    send_batch(&client, "a", numbered(3)).await;
    send_message(&client, "b", "later", &[], Some(60)).await;
    only(receive_now(&client, "a", 1, 30).await);
    let stats = eventually(Duration::from_secs(5), "the disk read", || async {
        let stats = client
            .get_broker_stats()
            .await
            .map_err(|e| format!("{e:?}"))?;
        match stats.disk_free_bytes {
            Some(_) => Ok(stats),
            None => Err(format!("{stats:?}")),
        }
    })
    .await;
    assert_eq!(
        (stats.queues, stats.messages, stats.max_messages),
        (2, 4, 1_000)
    );
    assert_eq!((stats.min_free_disk_bytes, stats.disk_low), (1, false));
    assert!(stats.disk_free_bytes.unwrap() > 1, "{stats:?}");
    let header = broker_cli::admin::broker_header(&stats);
    assert!(
        header.starts_with("broker: 4 messages in 2 queues (max_messages 1000)\ndisk:"),
        "{header}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_rows_show_every_queue_with_its_counts() {
    let (_server, client) = server_with_queue("orders-dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("orders-dlq", 3)).await;
    create_queue(&client, "other", attributes()).await;
    send_batch(&client, "orders", numbered(3)).await;
    send_message(&client, "orders", "later", &[], Some(60)).await;
    only(receive_now(&client, "orders", 1, 30).await);

    let rows = queue_rows(&client, "").await.expect("queue rows");
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["orders", "orders-dlq", "other"]);
    let orders = &rows[0];
    assert_eq!(
        (orders.visible, orders.in_flight, orders.delayed),
        (2, 1, 1)
    );
    assert_eq!(orders.dead_letter_queue.as_deref(), Some("orders-dlq"));
    assert_eq!(
        rows[1],
        QueueRow {
            name: "orders-dlq".into(),
            visible: 0,
            in_flight: 0,
            delayed: 0,
            oldest_message_age_seconds: 0,
            dead_letter_queue: None,
        }
    );

    let only_orders = queue_rows(&client, "orders").await.expect("queue rows");
    assert_eq!(only_orders.len(), 2, "the prefix filters: {only_orders:?}");
    assert!(
        queue_rows(&client, "zzz")
            .await
            .expect("queue rows")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn peek_pages_beyond_one_response_and_says_whether_more_follow() {
    let (_server, client) = server_with_queue("big", attributes()).await;
    send_batch(&client, "big", numbered(150)).await;

    let (messages, more) = peek_messages(&client, "big", 120).await.expect("peek");
    assert_eq!(messages.len(), 120);
    assert!(more);
    assert_eq!(messages[0].body, "m0");
    assert_eq!(messages[119].body, "m119");

    let (messages, more) = peek_messages(&client, "big", 1000).await.expect("peek");
    assert_eq!((messages.len(), more), (150, false));
    let (messages, more) = peek_messages(&client, "big", 150).await.expect("peek");
    assert_eq!((messages.len(), more), (150, false));
    assert_eq!(counts(&client, "big").await, Counts::new(150, 0, 0));

    let err = peek_messages(&client, "nope", 10).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn paced_redrive_moves_everything_at_the_rate_with_progress() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "work", attributes()).await;
    send_batch(&client, "dlq", numbered(10)).await;

    // 20 a second: calls of 2; the first at once, then one every 100 ms.
    let mut progress = Vec::new();
    let started = Instant::now();
    let moved = redrive_paced(
        &client,
        redrive_request("dlq", "work", 0),
        NonZeroU32::new(20).unwrap(),
        |p| progress.push(p),
    )
    .await
    .expect("paced redrive");
    let elapsed = started.elapsed();

    assert_eq!(moved, 10);
    assert_eq!(counts(&client, "dlq").await, Counts::EMPTY);
    assert_eq!(counts(&client, "work").await, Counts::new(10, 0, 0));
    let moved_so_far: Vec<u64> = progress.iter().map(|p| p.moved).collect();
    assert_eq!(moved_so_far, [0, 2, 4, 6, 8, 10, 10], "{progress:?}");
    assert!(progress.iter().all(|p| p.total == 10), "{progress:?}");
    // 8 messages after the first burst of 2, at 20 a second: 400 ms at least.
    assert!(
        elapsed >= Duration::from_millis(350),
        "10 messages at 20/s took only {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn paced_redrive_stops_at_max_and_sends_dead_letters_home() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 1)).await;
    send_batch(&client, "orders", numbered(5)).await;
    receive_now(&client, "orders", 10, 0).await;
    // The second receive moves all five (received once each) to the dlq.
    assert!(receive_now(&client, "orders", 10, 0).await.is_empty());
    assert_eq!(counts(&client, "dlq").await, Counts::new(5, 0, 0));

    let mut progress = Vec::new();
    let moved = redrive_paced(
        &client,
        redrive_request("dlq", "", 3),
        NonZeroU32::new(1000).unwrap(),
        |p| progress.push(p),
    )
    .await
    .expect("paced redrive");
    assert_eq!(moved, 3);
    assert_eq!(
        progress.last(),
        Some(&RedriveProgress { moved: 3, total: 3 })
    );
    assert_eq!(counts(&client, "dlq").await, Counts::new(2, 0, 0));
    assert_eq!(counts(&client, "orders").await, Counts::new(3, 0, 0));

    let err = redrive_paced(
        &client,
        redrive_request("missing", "", 0),
        NonZeroU32::new(10).unwrap(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// The commands as `main` runs them: they print (not checked here; the
/// rendering has unit tests) and succeed, or fail with the broker's message.
#[tokio::test(flavor = "multi_thread")]
async fn operator_commands_run_end_to_end() {
    use broker_cli::{ClientArgs, Command, run};

    let (server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "work", attributes()).await;
    send_batch(&client, "dlq", numbered(4)).await;
    send_message(&client, "dlq", vec![0xffu8, 0], &[("k", "v")], None).await;

    for json in [false, true] {
        let args = ClientArgs {
            server: server.addr().to_string(),
            json,
            ..ClientArgs::default()
        };
        let peek = Command::Peek {
            queue: "dlq".into(),
            max: 3,
        };
        run(&args, peek).await.expect("peek");
        let stats = Command::Stats {
            prefix: String::new(),
        };
        run(&args, stats).await.expect("stats");
        let missing = Command::Peek {
            queue: "missing".into(),
            max: 3,
        };
        let err = run(&args, missing).await.unwrap_err();
        assert_eq!(format!("{err:#}"), "queue 'missing' not found");
    }
    assert_eq!(
        counts(&client, "dlq").await,
        Counts::new(5, 0, 0),
        "peek only looks"
    );

    // Three frames or so (at 0, 100 and 200 ms), then the stop future: how
    // long `top` runs is its input, there is no event to wait for.
    for json in [false, true] {
        let stop = tokio::time::sleep(Duration::from_millis(250));
        let addr = server.addr().to_string();
        broker_cli::admin::top(&client, json, &addr, "", Duration::from_millis(100), stop)
            .await
            .expect("top");
    }

    let args = ClientArgs {
        server: server.addr().to_string(),
        json: false,
        ..ClientArgs::default()
    };
    let redrive = Command::Redrive {
        dlq: "dlq".into(),
        to: Some("work".into()),
        max: None,
        per_second: Some(1000),
    };
    run(&args, redrive).await.expect("redrive --per-second");
    assert_eq!(counts(&client, "work").await, Counts::new(5, 0, 0));
}

/// `top` is for watching a broker: one that goes away is reported in the
/// frame and retried, not the end of `top`.
#[tokio::test(flavor = "multi_thread")]
async fn top_keeps_refreshing_while_the_broker_is_away() {
    let (server, client) = server_with_queue("work", attributes()).await;
    let addr = server.addr().to_string();

    // The scenario is timed, as `top` is: frames every 100 ms for 600 ms,
    // the broker gone after the second frame (`top` tells no one its frames).
    let stop = tokio::time::sleep(Duration::from_millis(600));
    let top = broker_cli::admin::top(&client, true, &addr, "", Duration::from_millis(100), stop);
    let stop_server = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        server.shutdown().await;
    };
    let (result, ()) = tokio::join!(top, stop_server);
    result.expect("top outlives its broker");
}
