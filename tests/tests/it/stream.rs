//! Push delivery over `StreamMessages`: credit, acknowledgements on the
//! stream and through the ordinary RPCs, sharing a queue with pull
//! consumers, and a dropped stream.

use std::collections::HashSet;
use std::time::Duration;

use broker_tests::*;
use pb::queue_service_client::QueueServiceClient;
use pb::stream_messages_request::Request as Op;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

async fn raw(server: &TestServer) -> QueueServiceClient<Channel> {
    QueueServiceClient::connect(format!("http://{}", server.addr()))
        .await
        .expect("connect")
}

fn open(queue: &str, credit: u32, visibility: u32) -> pb::StreamMessagesRequest {
    pb::StreamMessagesRequest {
        request: Some(Op::Open(pb::StreamOpen {
            queue: queue.into(),
            credit,
            visibility_timeout_seconds: Some(visibility),
        })),
    }
}

fn ack(handle: &str) -> pb::StreamMessagesRequest {
    pb::StreamMessagesRequest {
        request: Some(Op::Ack(pb::StreamAck {
            receipt_handle: handle.into(),
        })),
    }
}

/// Opens a stream; returns the sender of further requests and the responses.
async fn stream(
    server: &TestServer,
    first: pb::StreamMessagesRequest,
) -> Result<
    (
        mpsc::Sender<pb::StreamMessagesRequest>,
        Streaming<pb::StreamMessagesResponse>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.expect("queue the open request");
    let responses = raw(server)
        .await
        .stream_messages(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, responses))
}

/// A server with a queue of `n` messages `m0`..`m{n-1}`, and a client.
async fn setup(queue: &str, n: usize) -> (TestServer, Client) {
    let (server, client) = server_with_queue(queue, attributes()).await;
    send_numbered(&client, queue, n).await;
    (server, client)
}

/// The next response with messages, within a short timeout.
async fn next_messages(
    responses: &mut Streaming<pb::StreamMessagesResponse>,
) -> Vec<pb::ReceivedMessage> {
    let response = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("a push within 5 s")
        .expect("stream ok")
        .expect("stream open");
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    response.messages
}

/// Whether anything is pushed within `wait`.
async fn pushes_within(
    responses: &mut Streaming<pb::StreamMessagesResponse>,
    wait: Duration,
) -> bool {
    tokio::time::timeout(wait, responses.message())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_never_exceeds_the_credit_and_acks_free_it() {
    let (server, client) = setup("q", 10).await;
    let (tx, mut responses) = stream(&server, open("q", 3, 30)).await.unwrap();
    let mut held = Vec::new();
    while held.len() < 3 {
        held.extend(next_messages(&mut responses).await);
    }
    assert_eq!(held.len(), 3, "exactly the credit");
    assert!(
        !pushes_within(&mut responses, Duration::from_millis(500)).await,
        "credit used up"
    );

    // An ack on the stream frees one slot; a delete through the ordinary
    // RPC frees another.
    tx.send(ack(&held[0].receipt_handle)).await.unwrap();
    let more = next_messages(&mut responses).await;
    assert_eq!(more.len(), 1);
    client.delete("q", &held[1].receipt_handle).await.unwrap();
    let more2 = next_messages(&mut responses).await;
    assert_eq!(more2.len(), 1);
    assert!(!pushes_within(&mut responses, Duration::from_millis(500)).await);
    // 10 sent, 5 pushed, 2 of them deleted.
    assert_eq!(counts(&client, "q").await, Counts::new(5, 3, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_and_push_consumers_never_hold_the_same_message() {
    let (server, client) = setup("shared", 40).await;
    let (tx, mut responses) = stream(&server, open("shared", 5, 30)).await.unwrap();
    let mut pushed = HashSet::new();
    let mut pulled = HashSet::new();
    while pushed.len() + pulled.len() < 40 {
        for m in client.receive("shared", 3, 0).await.unwrap() {
            assert!(pulled.insert(m.message_id.clone()));
            client.delete("shared", &m.receipt_handle).await.unwrap();
        }
        if let Ok(Ok(Some(r))) =
            tokio::time::timeout(Duration::from_millis(200), responses.message()).await
        {
            for m in r.messages {
                assert!(pushed.insert(m.message_id.clone()));
                tx.send(ack(&m.receipt_handle)).await.unwrap();
            }
        }
    }
    assert!(pushed.is_disjoint(&pulled), "a message went to both");
    assert!(!pushed.is_empty() && !pulled.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_stream_loses_nothing() {
    let (server, client) = setup("q", 2).await;
    let (tx, mut responses) = stream(&server, open("q", 10, 1)).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(next_messages(&mut responses).await);
    }
    drop(tx);
    drop(responses);
    // Nothing was released early: both come back once their 1 s lapses.
    assert!(client.receive("q", 10, 0).await.unwrap().is_empty());
    let again = receive_n(&client, "q", 2, 30).await;
    assert!(again.iter().all(|m| m.receive_count == 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_opens_are_refused() {
    let (server, _client) = setup("q", 0).await;
    let err = stream(&server, open("q", 0, 30)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("open.credit must be in 1..=1000; got 0"),
        "{}",
        err.message()
    );
    let err = stream(&server, open("nope", 1, 30)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = stream(&server, ack("x")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_acks_are_reported_on_the_stream() {
    let (server, _client) = setup("q", 0).await;
    let (tx, mut responses) = stream(&server, open("q", 1, 30)).await.unwrap();
    tx.send(ack("garbage")).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].code, "INVALID_ARGUMENT");
    assert_eq!(r.errors[0].receipt_handle, "garbage");
}

/// Acks sent together are applied together (one delete for a run of them):
/// a bad one among them fails alone, the others delete their messages, and
/// closing our side afterwards ends the stream once all are applied.
#[tokio::test(flavor = "multi_thread")]
async fn acks_sent_together_fail_alone_and_delete_the_rest() {
    let (server, client) = setup("q", 20).await;
    let (tx, mut responses) = stream(&server, open("q", 20, 30)).await.unwrap();
    let mut held = Vec::new();
    while held.len() < 20 {
        held.extend(next_messages(&mut responses).await);
    }
    for (i, m) in held.iter().enumerate() {
        if i == 7 {
            tx.send(ack("garbage")).await.unwrap();
        }
        tx.send(ack(&m.receipt_handle)).await.unwrap();
    }
    drop(tx);
    let mut errors = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), responses.message())
            .await
            .expect("the stream ends within 5 s");
        match next {
            Ok(Some(r)) => errors.extend(r.errors),
            Ok(None) => break,
            Err(e) => panic!("the stream failed: {e:?}"),
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].receipt_handle, "garbage");
    assert_eq!(errors[0].code, "INVALID_ARGUMENT");
    assert_eq!(counts(&client, "q").await, Counts::EMPTY);
}
