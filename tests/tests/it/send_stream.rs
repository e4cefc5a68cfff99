//! The publishing stream, `SendStream`: per-message answers in order,
//! per-message errors that leave the stream open, the window, topics, and
//! what a closed or restarted stream answers.

use std::collections::HashMap;
use std::time::Duration;

use broker_tests::*;
use pb::send_stream_open::Target;
use pb::send_stream_request::Request as Op;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

fn open_queue(queue: &str, window: u32) -> pb::SendStreamRequest {
    pb::SendStreamRequest {
        request: Some(Op::Open(pb::SendStreamOpen {
            target: Some(Target::Queue(queue.into())),
            window,
        })),
    }
}

fn open_topic(topic: &str) -> pb::SendStreamRequest {
    pb::SendStreamRequest {
        request: Some(Op::Open(pb::SendStreamOpen {
            target: Some(Target::Topic(topic.into())),
            window: 0,
        })),
    }
}

fn entry(body: &str) -> pb::SendStreamEntry {
    pb::SendStreamEntry {
        body: body.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn frame(seq: u64, messages: Vec<pb::SendStreamEntry>) -> pb::SendStreamRequest {
    pb::SendStreamRequest {
        request: Some(Op::Messages(pb::SendStreamMessages { seq, messages })),
    }
}

type Opened = (
    mpsc::Sender<pb::SendStreamRequest>,
    Streaming<pb::SendStreamResponse>,
);

/// Opens a stream with `first` as its first request.
async fn stream(
    server: &TestServer,
    first: pb::SendStreamRequest,
) -> Result<Opened, tonic::Status> {
    let (tx, rx) = mpsc::channel(256);
    tx.send(first).await.expect("queue the open request");
    let responses = raw_queue_client(server)
        .await
        .send_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, responses))
}

/// The next `n` answers, across responses.
async fn answers(
    responses: &mut Streaming<pb::SendStreamResponse>,
    n: usize,
) -> Vec<pb::SendStreamResult> {
    let mut got = Vec::new();
    while got.len() < n {
        let response = tokio::time::timeout(Duration::from_secs(5), responses.message())
            .await
            .expect("answers within 5 s")
            .expect("the stream is ok")
            .expect("the stream is open");
        got.extend(response.results);
    }
    assert_eq!(got.len(), n, "no more answers than messages: {got:?}");
    got
}

#[track_caller]
fn assert_refused(result: &pb::SendStreamResult, seq: u64, code: &str, needle: &str) {
    assert_eq!(result.seq, seq, "{result:?}");
    assert!(result.message_id.is_empty(), "{result:?}");
    let error = result.error.as_ref().expect("an error");
    assert_eq!(error.code, code, "{result:?}");
    assert!(error.message.contains(needle), "{needle:?} in {result:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_message_is_answered_in_order_with_the_id_it_is_received_with() {
    let (server, client) = server_with_queue("q", attributes()).await;
    let (tx, mut responses) = stream(&server, open_queue("q", 0)).await.unwrap();
    tx.send(frame(10, vec![entry("a")])).await.unwrap();
    tx.send(frame(11, vec![entry("b"), entry("c"), entry("d")]))
        .await
        .unwrap();
    for i in 0..20u64 {
        tx.send(frame(100 + i, vec![entry(&format!("m{i}"))]))
            .await
            .unwrap();
    }
    let got = answers(&mut responses, 24).await;
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    let want: Vec<u64> = (10..14).chain(100..120).collect();
    assert_eq!(seqs, want, "answers come in the order sent");
    assert!(got.iter().all(|r| r.error.is_none()), "{got:?}");

    let mut ids: HashMap<String, String> = HashMap::new();
    let bodies = ["a", "b", "c", "d"]
        .into_iter()
        .map(String::from)
        .chain((0..20).map(|i| format!("m{i}")));
    for (body, result) in bodies.zip(&got) {
        ids.insert(result.message_id.clone(), body);
    }
    let received = client.receive("q", 100, 0).await.unwrap();
    let mut more = received;
    while more.len() < 24 {
        more.extend(client.receive("q", 100, 1).await.unwrap());
    }
    assert_eq!(more.len(), 24);
    for m in more {
        let body = String::from_utf8(m.body.to_vec()).unwrap();
        assert_eq!(
            ids.get(&m.message_id),
            Some(&body),
            "acknowledged id of {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_message_fails_alone_and_the_stream_goes_on() {
    let (server, client) = server_with_queue("q", attributes()).await;
    let (tx, mut responses) = stream(&server, open_queue("q", 0)).await.unwrap();
    // An empty body, beside a good one in the same frame.
    tx.send(frame(1, vec![entry(""), entry("good")]))
        .await
        .unwrap();
    let got = answers(&mut responses, 2).await;
    assert_refused(&got[0], 1, "INVALID_ARGUMENT", "body");
    assert!(got[1].error.is_none() && !got[1].message_id.is_empty());
    // A frame over 100 messages: each answers, nothing is written.
    let big: Vec<_> = (0..101).map(|_| entry("x")).collect();
    tx.send(frame(3, big)).await.unwrap();
    let got = answers(&mut responses, 101).await;
    for (i, r) in got.iter().enumerate() {
        assert_refused(r, 3 + i as u64, "INVALID_ARGUMENT", "1..=100");
    }
    // An empty frame answers once, with its seq.
    tx.send(frame(200, Vec::new())).await.unwrap();
    assert_refused(
        &answers(&mut responses, 1).await[0],
        200,
        "INVALID_ARGUMENT",
        "messages",
    );
    // The queue is deleted: each message answers NOT_FOUND; once it is
    // back, the same stream sends again.
    client
        .delete_queue(pb::DeleteQueueRequest { name: "q".into() })
        .await
        .unwrap();
    tx.send(frame(300, vec![entry("lost")])).await.unwrap();
    assert_refused(
        &answers(&mut responses, 1).await[0],
        300,
        "NOT_FOUND",
        "\"q\"",
    );
    create_queue(&client, "q", attributes()).await;
    tx.send(frame(301, vec![entry("back")])).await.unwrap();
    let back = answers(&mut responses, 1).await;
    assert!(back[0].error.is_none(), "{back:?}");
    assert_eq!(counts(&client, "q").await, Counts::new(1, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_checks_the_target_and_the_window() {
    let (server, _client) = server_with_queue("q", attributes()).await;
    let missing = stream(&server, open_queue("nope", 0)).await.err().unwrap();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    assert!(missing.message().contains("\"nope\""), "{missing:?}");
    let missing = stream(&server, open_topic("nope")).await.err().unwrap();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    let window = stream(&server, open_queue("q", 10_001))
        .await
        .err()
        .unwrap();
    assert_eq!(window.code(), tonic::Code::InvalidArgument);
    assert!(
        window
            .message()
            .contains("open.window must be in 1..=10000; got 10001"),
        "{window:?}"
    );

    let bad_name = stream(&server, open_queue("a b", 0)).await.err().unwrap();
    assert_eq!(
        bad_name.code(),
        tonic::Code::InvalidArgument,
        "{bad_name:?}"
    );

    let no_target = pb::SendStreamRequest {
        request: Some(Op::Open(pb::SendStreamOpen::default())),
    };
    let none = stream(&server, no_target).await.err().unwrap();
    assert_eq!(none.code(), tonic::Code::InvalidArgument);
    assert!(
        none.message().contains("open.queue or open.topic"),
        "{none:?}"
    );

    let not_open = stream(&server, frame(0, vec![entry("x")]))
        .await
        .err()
        .unwrap();
    assert_eq!(not_open.code(), tonic::Code::InvalidArgument);
    assert!(
        not_open.message().contains("must be `open`"),
        "{not_open:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_open_ends_the_stream_after_answering_what_came_before() {
    let (server, client) = server_with_queue("q", attributes()).await;
    let (tx, mut responses) = stream(&server, open_queue("q", 0)).await.unwrap();
    tx.send(frame(1, vec![entry("a"), entry("b")]))
        .await
        .unwrap();
    tx.send(open_queue("q", 0)).await.unwrap();
    let got = answers(&mut responses, 2).await;
    assert!(got.iter().all(|r| r.error.is_none()), "{got:?}");
    let end = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("the stream ends")
        .expect_err("with an error");
    assert_eq!(end.code(), tonic::Code::InvalidArgument);
    assert!(end.message().contains("opened once"), "{end:?}");
    assert_eq!(counts(&client, "q").await, Counts::new(2, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_of_one_still_answers_everything_and_closing_is_a_barrier() {
    let (server, client) = server_with_queue("q", attributes()).await;
    let (tx, mut responses) = stream(&server, open_queue("q", 1)).await.unwrap();
    server.wait_for_metric("broker_streams_open", 1.0).await;
    for i in 0..50u64 {
        tx.send(frame(i, vec![entry("x")])).await.unwrap();
    }
    // Closing our side: the broker answers all 50, then ends the stream.
    drop(tx);
    let got = answers(&mut responses, 50).await;
    assert_eq!(
        got.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
    let end = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "a clean end: {end:?}");
    server.wait_for_metric("broker_streams_open", 0.0).await;
    assert_eq!(counts(&client, "q").await, Counts::new(50, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_stream_fans_out_and_refuses_delays() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .create_topic(pb::CreateTopicRequest { name: "t".into() })
        .await
        .unwrap();
    for q in ["email", "sms"] {
        create_queue(&client, q, attributes()).await;
        client
            .subscribe(pb::SubscribeRequest {
                topic: "t".into(),
                queue: q.into(),
                filter_policy: String::new(),
                raw_delivery: true,
            })
            .await
            .unwrap();
    }
    let (tx, mut responses) = stream(&server, open_topic("t")).await.unwrap();
    let delayed = pb::SendStreamEntry {
        delay_seconds: Some(1),
        ..entry("later")
    };
    tx.send(frame(7, vec![entry("paid"), delayed]))
        .await
        .unwrap();
    let got = answers(&mut responses, 2).await;
    assert!(got[0].error.is_none(), "{got:?}");
    assert_refused(&got[1], 8, "INVALID_ARGUMENT", "topic");
    for q in ["email", "sms"] {
        let m = client.receive(q, 10, 1).await.unwrap();
        assert_eq!(m.len(), 1, "{q}");
        assert_eq!(&m[0].body[..], b"paid");
        assert_eq!(
            m[0].message_id, got[0].message_id,
            "{q} has the published id"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_messages_survive_a_restart_and_the_stream_needs_reopening() {
    let (mut server, _client) = server_with_queue("q", attributes()).await;
    let (tx, mut responses) = stream(&server, open_queue("q", 0)).await.unwrap();
    for i in 0..30u64 {
        tx.send(frame(i, vec![entry("x")])).await.unwrap();
    }
    let got = answers(&mut responses, 30).await;
    assert!(got.iter().all(|r| r.error.is_none()));
    server.restart().await;
    let client = server.client().await;
    assert_eq!(counts(&client, "q").await, Counts::new(30, 0, 0));
    let (tx, mut responses) = stream(&server, open_queue("q", 0)).await.unwrap();
    tx.send(frame(30, vec![entry("y")])).await.unwrap();
    assert!(answers(&mut responses, 1).await[0].error.is_none());
}
