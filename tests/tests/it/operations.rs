//! What operators and their tools see: gRPC health checking, server
//! reflection (what `grpcurl` uses), client deadlines, and the order of a
//! graceful shutdown.

use std::time::{Duration, Instant};

use broker_tests::limits::RECEIVE_MESSAGES_MAX;
use broker_tests::*;
use futures::StreamExt as _;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

pub(crate) async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr()))
        .expect("a valid URI")
        .connect()
        .await
        .expect("connect to the test server")
}

pub(crate) fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_for_the_server_and_each_service() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(channel(&server).await);
    for service in ["", "broker.v1.QueueService", "broker.v1.TopicService"] {
        let status = health
            .check(check(service))
            .await
            .expect("Check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(check("broker.v1.Nope")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown.message().contains("broker.v1.Nope"),
        "{}",
        unknown.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_turns_not_serving_when_shutdown_begins_and_the_watch_ends() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(channel(&server).await);
    let mut watch = health.watch(check("")).await.expect("Watch").into_inner();
    let first = watch
        .next()
        .await
        .expect("a first status")
        .expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("a status change within 5 s")
        .expect("the watch still open")
        .expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch ends");
    assert!(end.is_none(), "the watch ended after NOT_SERVING: {end:?}");
    shutdown.await.expect("the server shut down cleanly");
    // An open watch does not hold the shutdown until its timeout (10 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_services_and_describes_their_methods() {
    let server = TestServer::start().await;
    let mut reflection = ServerReflectionClient::new(channel(&server).await);
    let ask = |request: MessageRequest| {
        futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }])
    };
    let mut answers = reflection
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .expect("ServerReflectionInfo")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers
        .next()
        .await
        .expect("an answer")
        .expect("no error")
        .message_response
    else {
        panic!("expected a list of services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "broker.v1.QueueService",
        "broker.v1.TopicService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    let mut answers = reflection
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol(
            "broker.v1.QueueService".into(),
        )))
        .await
        .expect("ServerReflectionInfo")
        .into_inner();
    let Some(MessageResponse::FileDescriptorResponse(files)) = answers
        .next()
        .await
        .expect("an answer")
        .expect("no error")
        .message_response
    else {
        panic!("expected file descriptors");
    };
    let bytes: Vec<u8> = files.file_descriptor_proto.concat();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("ReceiveMessages") && text.contains("broker/v1/queue.proto"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_deadline_ends_a_long_poll_and_the_queue_is_unharmed() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    let mut raw = pb::queue_service_client::QueueServiceClient::new(channel(&server).await);
    let mut request = tonic::Request::new(receive_request("orders", 10, Some(30), Some(10)));
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    // The broker ends the wait before the deadline and answers empty; on a
    // slow machine the answer may still arrive after the client gave up.
    match raw.receive_messages(request).await {
        Ok(answer) => assert!(answer.into_inner().messages.is_empty()),
        Err(status) => assert!(
            matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
            "{status:?}"
        ),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The abandoned receive took nothing: the next message goes to the next receive.
    let id = send_message(&client, "orders", "after the deadline", &[], None).await;
    let received = receive_now(&client, "orders", 10, 30).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].message_id, id);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_arguments_carry_the_field_as_a_bad_request_detail() {
    use tonic_types::StatusExt as _;

    let (server, _client) = server_with_queue("orders", attributes()).await;
    let mut raw = pb::queue_service_client::QueueServiceClient::new(channel(&server).await);
    let status = raw
        .receive_messages(receive_request(
            "orders",
            RECEIVE_MESSAGES_MAX + 1,
            Some(30),
            Some(0),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_error_details();
    let violation = details
        .bad_request()
        .and_then(|b| b.field_violations.first())
        .expect("a BadRequest field violation");
    assert_eq!(violation.field, "max_messages");
    assert!(
        violation
            .description
            .contains(&format!("1..={RECEIVE_MESSAGES_MAX}")),
        "{}",
        violation.description
    );
}

/// `broker serve` writing its log to a pipe or file (not a terminal) writes
/// no colour escape sequences.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_that_is_not_a_terminal_has_no_colour_escapes() {
    use tokio::io::AsyncBufReadExt as _;

    let binary = broker_binary();
    let data_dir = temp_data_dir();
    let mut process = tokio::process::Command::new(binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn broker serve");
    let mut lines = tokio::io::BufReader::new(process.stderr.take().expect("piped stderr")).lines();
    let read = async {
        let mut log = String::new();
        while let Some(line) = lines.next_line().await.expect("read the log") {
            log.push_str(&line);
            log.push('\n');
            if line.contains("broker serving") {
                break;
            }
        }
        log
    };
    let log = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the broker logs that it serves within 10 s");
    let _ = process.kill().await;
    assert!(log.contains("broker serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape sequences in the log: {log:?}"
    );
}
