//! Server-side delivery control: a queue's receive rate limit and its
//! retry backoff, over gRPC.

use std::time::{Duration, Instant};

use broker_tests::limits::{BACKOFF_SECONDS_MAX, MAX_RECEIVE_RATE_MAX};
use broker_tests::*;

fn rate(per_second: u32, burst: u32) -> pb::QueueAttributes {
    pb::QueueAttributes {
        max_receive_rate: Some(per_second),
        max_receive_burst: Some(burst),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_together_never_exceed_the_queue_rate_by_more_than_the_burst() {
    let (_server, client) = server_with_queue("emails", rate(10, 10)).await;
    let entries = (0..100)
        .map(|i| pb::SendMessageBatchEntry {
            id: format!("e{i}"),
            body: format!("email {i}").into(),
            ..Default::default()
        })
        .collect();
    let sent = client
        .send_message_batch(pb::SendMessageBatchRequest {
            queue: "emails".into(),
            entries,
        })
        .await
        .unwrap();
    assert_eq!(sent.successful.len(), 100);

    // Four workers long-poll for 2 s: at most burst + rate * 2 s between them.
    let start = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut got = 0;
                while start.elapsed() < Duration::from_secs(2) {
                    got += client.receive("emails", 10, 1).await.unwrap().len();
                }
                got
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let limit = 10.0 + 10.0 * elapsed;
    assert!(
        total as f64 <= limit + 1.0,
        "{total} received in {elapsed:.2} s, limit {limit:.0}"
    );
    assert!(
        total >= 25,
        "the rate is delivered: {total} in {elapsed:.2} s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn receive_rate_and_retry_policy_are_validated() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let result = client
        .create_queue(pb::CreateQueueRequest {
            name: "q".into(),
            attributes: Some(rate(MAX_RECEIVE_RATE_MAX + 1, 0)),
        })
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &[
            "max_receive_rate",
            &format!("0..={MAX_RECEIVE_RATE_MAX}"),
            &(MAX_RECEIVE_RATE_MAX + 1).to_string(),
        ],
    );
    let result = client
        .create_queue(pb::CreateQueueRequest {
            name: "q".into(),
            attributes: Some(pb::QueueAttributes {
                retry_policy: Some(pb::RetryPolicy {
                    min_backoff_seconds: 10,
                    max_backoff_seconds: 5,
                }),
                ..Default::default()
            }),
        })
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &[
            "retry_policy.max_backoff_seconds",
            &format!("10..={BACKOFF_SECONDS_MAX}"),
            "5",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn released_message_comes_back_after_the_retry_backoff() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let attributes = pb::QueueAttributes {
        retry_policy: Some(pb::RetryPolicy {
            min_backoff_seconds: 1,
            max_backoff_seconds: 2,
        }),
        ..Default::default()
    };
    create_queue(&client, "jobs", attributes).await;
    client.send("jobs", "flaky").await.unwrap();
    // Receive 1 released: back after 1 s; receive 2 released: after 2 s.
    let mut m = only(client.receive("jobs", 1, 5).await.unwrap());
    for expected in [1.0, 2.0] {
        client
            .change_message_visibility(pb::ChangeMessageVisibilityRequest {
                queue: "jobs".into(),
                receipt_handle: m.receipt_handle.clone(),
                visibility_timeout_seconds: 0,
            })
            .await
            .unwrap();
        let released = Instant::now();
        assert!(
            client.receive("jobs", 1, 0).await.unwrap().is_empty(),
            "backing off"
        );
        m = only(client.receive("jobs", 1, 5).await.unwrap());
        let waited = released.elapsed().as_secs_f64();
        assert!(
            waited >= expected - 0.05 && waited < expected + 0.5,
            "waited {waited:.2} s, expected {expected}"
        );
    }
}
