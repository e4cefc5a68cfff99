//! Prometheus metrics at `/metrics`: values that follow real operations over
//! gRPC, per-RPC counts by status code, open long polls and streams, the
//! HTTP endpoint itself, and how `server::run` binds (or does not bind)
//! `metrics_listen`.
//!
//! The harness serves every server's metrics on a port of its own
//! (`metrics_listen = 127.0.0.1:0`). Scrapes are raw HTTP/1.1 GETs over a
//! `TcpStream` ([`TestServer::scrape`]). Gauges are exact at scrape time, so
//! most checks scrape once; what changes in the background (a long poll
//! starting) is waited for ([`TestServer::wait_for_metric`]).

use std::net::SocketAddr;

use broker::config::ServerConfig;
use broker_client::pb;
use broker_tests::*;
use tokio::net::{TcpListener, TcpStream};

/// Checks each `(series, value)` in one scrape.
async fn assert_values(server: &TestServer, expected: &[(&str, f64)]) {
    let text = server.scrape().await;
    for &(series, want) in expected {
        assert_eq!(
            metric_value(&text, series),
            Some(want),
            "{series} in\n{text}"
        );
    }
}

fn messages(queue: &str, state: &str) -> String {
    format!("broker_queue_messages{{queue=\"{queue}\",state=\"{state}\"}}")
}

fn queue_counter(name: &str, queue: &str) -> String {
    format!("broker_queue_{name}_total{{queue=\"{queue}\"}}")
}

fn rpc(method: &str, code: &str) -> String {
    format!("broker_rpc_requests_total{{method=\"broker.v1.{method}\",code=\"{code}\"}}")
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_metrics_follow_real_operations() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    for n in 0..3 {
        client.send("orders", format!("order {n}")).await.unwrap();
    }
    let received = only(receive_now(&client, "orders", 1, 30).await);
    assert_values(
        &server,
        &[
            (&messages("orders", "visible"), 2.0),
            (&messages("orders", "in_flight"), 1.0),
            (&messages("orders", "delayed"), 0.0),
            (&queue_counter("sent", "orders"), 3.0),
            (&queue_counter("received", "orders"), 1.0),
            (&queue_counter("deleted", "orders"), 0.0),
            (
                "broker_queue_oldest_message_age_seconds{queue=\"orders\"}",
                0.0,
            ),
        ],
    )
    .await;

    delete_message(&client, "orders", &received.receipt_handle)
        .await
        .unwrap();
    send_message(&client, "orders", "later", &[], Some(60)).await;
    assert_values(
        &server,
        &[
            (&messages("orders", "visible"), 2.0),
            (&messages("orders", "in_flight"), 0.0),
            (&messages("orders", "delayed"), 1.0),
            (&queue_counter("sent", "orders"), 4.0),
            (&queue_counter("deleted", "orders"), 1.0),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_and_redrives_are_counted() {
    let (server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 1)).await;
    client.send("orders", "poison").await.unwrap();
    only(receive_now(&client, "orders", 10, 0).await);
    // The second receive moves it to the dead-letter queue.
    assert!(receive_now(&client, "orders", 10, 0).await.is_empty());
    assert_values(
        &server,
        &[
            (&queue_counter("dead_lettered", "orders"), 1.0),
            (&queue_counter("received", "orders"), 1.0),
            (&messages("dlq", "visible"), 1.0),
            (&queue_counter("sent", "dlq"), 0.0),
        ],
    )
    .await;

    assert_eq!(redrive(&client, "dlq", "").await, 1);
    assert_values(
        &server,
        &[
            (&queue_counter("redriven", "dlq"), 1.0),
            (&messages("dlq", "visible"), 0.0),
            (&messages("orders", "visible"), 1.0),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_publishes_and_copies_are_counted() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .create_topic(pb::CreateTopicRequest {
            name: "payments".into(),
        })
        .await
        .unwrap();
    for (queue, filter) in [("all", ""), ("brazil", r#"{"country": ["BR"]}"#)] {
        create_queue(&client, queue, attributes()).await;
        client
            .subscribe(pb::SubscribeRequest {
                topic: "payments".into(),
                queue: queue.into(),
                filter_policy: filter.into(),
                raw_delivery: true,
            })
            .await
            .unwrap();
    }
    client
        .publish("payments", "paid", string_map(&[("country", "BR")]))
        .await
        .unwrap();
    client
        .publish("payments", "paid", string_map(&[("country", "IN")]))
        .await
        .unwrap();
    assert_values(
        &server,
        &[
            ("broker_topic_published_total{topic=\"payments\"}", 2.0),
            (
                "broker_topic_copies_delivered_total{topic=\"payments\"}",
                3.0,
            ),
            (&queue_counter("sent", "all"), 2.0),
            (&queue_counter("sent", "brazil"), 1.0),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_calls_are_counted_by_method_and_code() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let missing = client
        .get_queue(pb::GetQueueRequest {
            name: "missing".into(),
        })
        .await;
    assert_error(missing, Code::NotFound, &["missing"]);
    create_queue(&client, "orders", attributes()).await;
    create_queue(&client, "orders", attributes()).await;

    let text = server.scrape().await;
    // A failure is a trailers-only response; a success carries its status
    // in the trailers after the body: both are counted.
    assert_eq!(
        metric_value(&text, &rpc("QueueService/GetQueue", "NOT_FOUND")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, &rpc("QueueService/CreateQueue", "OK")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, &rpc("QueueService/GetQueue", "OK")),
        None
    );
    assert!(text.contains("# TYPE broker_rpc_duration_seconds histogram"));
    assert_eq!(
        metric_value(
            &text,
            "broker_rpc_duration_seconds_count{method=\"broker.v1.QueueService/CreateQueue\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "broker_rpc_duration_seconds_bucket{le=\"+Inf\",method=\"broker.v1.QueueService/GetQueue\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn open_long_polls_are_gauged_and_an_abandoned_one_is_cancelled() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    server.wait_for_metric("broker_long_polls_open", 0.0).await;

    let poll = {
        let client = client.clone();
        tokio::spawn(async move { client.receive("orders", 1, 20).await })
    };
    server.wait_for_metric("broker_long_polls_open", 1.0).await;
    client.send("orders", "wake up").await.unwrap();
    assert_eq!(poll.await.unwrap().unwrap().len(), 1);
    server.wait_for_metric("broker_long_polls_open", 0.0).await;

    // A client that gives up mid-wait: the server drops the call.
    let poll = {
        let client = client.clone();
        tokio::spawn(async move { client.receive("orders", 1, 20).await })
    };
    server.wait_for_metric("broker_long_polls_open", 1.0).await;
    poll.abort();
    server.wait_for_metric("broker_long_polls_open", 0.0).await;
    server
        .wait_for_metric(&rpc("QueueService/ReceiveMessages", "CANCELLED"), 1.0)
        .await;
    assert_values(
        &server,
        &[(&rpc("QueueService/ReceiveMessages", "OK"), 1.0)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn open_streams_are_gauged() {
    use pb::stream_messages_request::Request as Op;

    let (server, _client) = server_with_queue("orders", attributes()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::StreamMessagesRequest {
        request: Some(Op::Open(pb::StreamOpen {
            queue: "orders".into(),
            credit: 1,
            visibility_timeout_seconds: None,
        })),
    })
    .await
    .unwrap();
    let mut raw =
        pb::queue_service_client::QueueServiceClient::connect(format!("http://{}", server.addr()))
            .await
            .unwrap();
    let responses = raw
        .stream_messages(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    server.wait_for_metric("broker_streams_open", 1.0).await;
    drop((tx, responses));
    server.wait_for_metric("broker_streams_open", 0.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_queue_drops_its_series() {
    let (server, client) = server_with_queue("gone", attributes()).await;
    create_queue(&client, "kept", attributes()).await;
    client.send("gone", "x").await.unwrap();
    assert_values(&server, &[(&queue_counter("sent", "gone"), 1.0)]).await;
    client
        .delete_queue(pb::DeleteQueueRequest {
            name: "gone".into(),
        })
        .await
        .unwrap();
    let text = server.scrape().await;
    assert!(!text.contains("queue=\"gone\""), "{text}");
    assert_eq!(metric_value(&text, &messages("kept", "visible")), Some(0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_server_reports_only_its_own_queues() {
    let (one, two) = (TestServer::start().await, TestServer::start().await);
    create_queue(&one.client().await, "first", attributes()).await;
    create_queue(&two.client().await, "second", attributes()).await;
    let (text_one, text_two) = (one.scrape().await, two.scrape().await);
    assert!(text_one.contains("queue=\"first\"") && !text_one.contains("queue=\"second\""));
    assert!(text_two.contains("queue=\"second\"") && !text_two.contains("queue=\"first\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_metrics_are_reported_in_bytes() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    client.send("orders", vec![7u8; 10_000]).await.unwrap();
    let text = server.scrape().await;
    let wal = metric_value(&text, "broker_storage_wal_bytes").expect("the WAL size");
    assert!(wal >= 10_000.0, "the message is in the WAL: {wal}");
    for series in [
        "broker_storage_sst_files_bytes",
        "broker_storage_live_sst_files_bytes",
        "broker_storage_memtable_bytes",
        "broker_storage_pending_compaction_bytes",
        "broker_storage_delayed_write_rate_bytes_per_second",
    ] {
        assert!(metric_value(&text, series).is_some(), "{series} in\n{text}");
    }
    assert_eq!(
        metric_value(&text, "broker_storage_write_stopped"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_endpoint_serves_only_get_metrics() {
    let server = TestServer::start().await;
    let ok = http(server.metrics_addr(), "GET", "/metrics").await;
    assert_eq!(ok.status, 200);
    assert!(
        ok.head
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{}",
        ok.head
    );
    assert!(ok.body.ends_with("# EOF\n"), "{}", ok.body);
    assert_eq!(http(server.metrics_addr(), "GET", "/").await.status, 404);
    assert_eq!(
        http(server.metrics_addr(), "GET", "/metrics/x")
            .await
            .status,
        404
    );
    let post = http(server.metrics_addr(), "POST", "/metrics").await;
    assert_eq!(post.status, 405);
    assert!(post.head.contains("allow: get"), "{}", post.head);
}

/// A port nothing listens on (bound, then released), on a loopback
/// address no other test binds (Linux routes all of 127.0.0.0/8 to
/// loopback), so that no parallel test's ephemeral port can take it
/// between this check and its use.
async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.99:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Runs `server::run` itself (not the harness) with `metrics_listen`.
struct Run {
    addr: SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), broker::server::StartupError>>,
    _data_dir: tempfile::TempDir,
}

async fn run(metrics_listen: Option<SocketAddr>) -> Run {
    let data_dir = temp_data_dir();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ServerConfig::new(data_dir.path());
    config.metrics_listen = metrics_listen;
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(broker::server::run(listener, config, async move {
        let _ = stop.await;
    }));
    Run {
        addr,
        shutdown,
        task,
        _data_dir: data_dir,
    }
}

impl Run {
    async fn stop(self) {
        let _ = self.shutdown.send(());
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_serves_metrics_on_metrics_listen_until_shutdown() {
    let at = free_addr().await;
    let server = run(Some(at)).await;
    // `run` binds the address in its own task: wait until it accepts.
    eventually(EVENT_TIMEOUT, &format!("{at} listens"), || {
        TcpStream::connect(at)
    })
    .await;
    let client = Client::connect(server.addr.to_string()).await.unwrap();
    create_queue(&client, "orders", attributes()).await;
    let response = http(at, "GET", "/metrics").await;
    assert_eq!(response.status, 200);
    assert!(response.body.contains(&messages("orders", "visible")));
    server.stop().await;
    assert!(
        TcpStream::connect(at).await.is_err(),
        "the endpoint stops with the server"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_metrics_listen_nothing_serves_metrics() {
    let at = free_addr().await;
    let server = run(None).await;
    let client = Client::connect(server.addr.to_string()).await.unwrap();
    create_queue(&client, "orders", attributes()).await;
    assert!(TcpStream::connect(at).await.is_err());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_metrics_listen_in_use_is_a_startup_error_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = taken.local_addr().unwrap();
    let server = run(Some(at)).await;
    let error = server
        .task
        .await
        .unwrap()
        .expect_err("the address is in use");
    let message = error.to_string();
    assert!(
        message.contains("metrics_listen") && message.contains(&at.to_string()),
        "{message}"
    );
}
