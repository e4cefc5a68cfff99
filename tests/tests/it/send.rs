//! SendMessage and SendMessageBatch: bodies, attributes, size limits, delays,
//! and batches in which a bad entry fails alone.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use broker_tests::limits::*;
use broker_tests::*;
use bytes::Bytes;

fn entry(id: &str, body: impl Into<Bytes>) -> pb::SendMessageBatchEntry {
    pb::SendMessageBatchEntry {
        id: id.to_string(),
        body: body.into(),
        attributes: Default::default(),
        delay_seconds: None,
    }
}

fn batch(queue: &str, entries: Vec<pb::SendMessageBatchEntry>) -> pb::SendMessageBatchRequest {
    pb::SendMessageBatchRequest {
        queue: queue.to_string(),
        entries,
    }
}

/// `n` attributes `k0=v0`, `k1=v1`, …
fn numbered_attributes(n: usize) -> std::collections::HashMap<String, String> {
    (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect()
}

fn max_bytes(limit: u32) -> pb::QueueAttributes {
    pb::QueueAttributes {
        max_message_bytes: Some(limit),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sent_message_is_received_with_its_binary_body_and_attributes() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let body: Vec<u8> = (0..=255u8).collect();
    let before = now_ms();
    let id = send_message(
        &client,
        "orders",
        body.clone(),
        &[("type", "order"), ("unicode", "größe ✓"), ("empty", "")],
        None,
    )
    .await;
    let after = now_ms();
    assert!(!id.is_empty(), "a message id");

    let message = only(receive_now(&client, "orders", 10, 30).await);
    assert_eq!(message.message_id, id);
    assert_eq!(message.body, body);
    assert_eq!(
        message.attributes,
        string_map(&[("type", "order"), ("unicode", "größe ✓"), ("empty", "")])
    );
    assert_eq!(message.receive_count, 1);
    assert!(!message.receipt_handle.is_empty());
    // The server's clock may read a millisecond or two apart from ours.
    assert!(
        (before - 10..=after + 10).contains(&message.sent_at_ms),
        "sent_at_ms {} not within the send ({before}..={after})",
        message.sent_at_ms
    );
    assert!(
        message.first_received_at_ms >= message.sent_at_ms
            && message.first_received_at_ms <= now_ms(),
        "first_received_at_ms {} (sent {})",
        message.first_received_at_ms,
        message.sent_at_ms
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_send_and_receive_conveniences_work() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let id = client.send("orders", "hello").await.expect("send");
    let messages = client.receive("orders", 10, 0).await.expect("receive");
    let message = only(messages);
    assert_eq!(
        (message.message_id.as_str(), &message.body[..]),
        (id.as_str(), &b"hello"[..])
    );
    client
        .delete("orders", &message.receipt_handle)
        .await
        .expect("delete");
    assert_eq!(counts(&client, "orders").await, Counts::EMPTY);
}

#[tokio::test(flavor = "multi_thread")]
async fn message_ids_are_unique() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let ids: HashSet<_> = send_numbered(&client, "orders", 20)
        .await
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn send_to_unknown_queue_is_not_found() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let result = client
        .send_message(send_request("missing", "x", &[], None))
        .await;
    assert_error(result, Code::NotFound, &["missing"]);
    let result = client
        .send_message_batch(batch("missing", vec![entry("a", "x")]))
        .await;
    assert_error(result, Code::NotFound, &["missing"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_body_is_rejected() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let result = client
        .send_message(send_request("orders", "", &[], None))
        .await;
    assert_error(result, Code::InvalidArgument, &["body"]);
    assert_eq!(counts(&client, "orders").await, Counts::EMPTY);
}

#[tokio::test(flavor = "multi_thread")]
async fn body_of_max_message_bytes_is_accepted_and_one_byte_more_is_rejected() {
    let (_server, client) = server_with_queue("small", max_bytes(1024)).await;
    send_message(&client, "small", vec![7u8; 1024], &[], None).await;
    let result = client
        .send_message(send_request("small", vec![7u8; 1025], &[], None))
        .await;
    assert_error(result, Code::InvalidArgument, &["1024", "1025"]);
    assert_eq!(counts(&client, "small").await, Counts::new(1, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn attribute_names_and_values_count_toward_max_message_bytes() {
    let (_server, client) = server_with_queue("small", max_bytes(1024)).await;
    // 1000 + len("key") 3 + 21 = 1024: exactly the limit.
    let value = "v".repeat(21);
    send_message(&client, "small", vec![1u8; 1000], &[("key", &value)], None).await;
    let value = "v".repeat(22);
    let result = client
        .send_message(send_request(
            "small",
            vec![1u8; 1000],
            &[("key", &value)],
            None,
        ))
        .await;
    assert_error(result, Code::InvalidArgument, &["1024", "1025"]);
    // The name counts as much as the value.
    let result = client
        .send_message(send_request(
            "small",
            vec![1u8; 1000],
            &[("keyy", &"v".repeat(21))],
            None,
        ))
        .await;
    assert_error(result, Code::InvalidArgument, &["1024", "1025"]);
    assert_eq!(counts(&client, "small").await, Counts::new(1, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn default_limit_admits_262144_bytes() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let max = MAX_MESSAGE_BYTES_DEFAULT as usize;
    send_message(&client, "orders", vec![0u8; max], &[], None).await;
    let result = client
        .send_message(send_request("orders", vec![0u8; max + 1], &[], None))
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &[&max.to_string(), &(max + 1).to_string()],
    );
    let message = only(receive_now(&client, "orders", 1, 30).await);
    assert_eq!(message.body.len(), max);
}

#[tokio::test(flavor = "multi_thread")]
async fn full_batch_of_maximum_size_messages_goes_through() {
    let (_server, client) = server_with_queue("big", max_bytes(MAX_MESSAGE_BYTES_MAX)).await;
    // 100 entries of 1 MiB: far above gRPC's default 4 MiB message limit.
    let body = Bytes::from(vec![0xabu8; MAX_MESSAGE_BYTES_MAX as usize]);
    let entries = (0..BATCH_ENTRIES_MAX)
        .map(|i| entry(&format!("e{i}"), body.clone()))
        .collect();
    let response = client
        .send_message_batch(batch("big", entries))
        .await
        .expect("a full batch of messages of the largest max_message_bytes");
    assert_eq!(
        response.successful.len(),
        BATCH_ENTRIES_MAX,
        "failed: {:?}",
        response.failed
    );
    let full = BATCH_ENTRIES_MAX as u64;
    assert_eq!(counts(&client, "big").await, Counts::new(full, 0, 0));

    let mut received = HashSet::new();
    for message in receive_n(&client, "big", BATCH_ENTRIES_MAX, 60).await {
        assert_eq!(message.body, body, "body of {}", message.message_id);
        assert!(received.insert(message.message_id), "received twice");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_attributes_are_accepted_and_eleven_rejected() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let max = ATTRIBUTES_MAX;
    let mut request = send_request("orders", "x", &[], None);
    request.attributes = numbered_attributes(max);
    client
        .send_message(request.clone())
        .await
        .expect("the most attributes");
    request.attributes = numbered_attributes(max + 1);
    let result = client.send_message(request).await;
    assert_error(
        result,
        Code::InvalidArgument,
        &["attributes", &max.to_string(), &(max + 1).to_string()],
    );
    assert_eq!(
        only(receive_now(&client, "orders", 10, 30).await).attributes,
        numbered_attributes(max)
    );
}

/// Each refused send names the request field at fault in its BadRequest
/// detail, whatever its message begins with.
#[tokio::test(flavor = "multi_thread")]
async fn refused_sends_are_bad_requests_on_the_field_at_fault() {
    let (server, client) = server_with_queue("small", max_bytes(1024)).await;
    let mut raw = raw_queue_client(&server).await;

    let mut request = send_request("small", "x", &[], None);
    request.attributes = numbered_attributes(11);
    let status = assert_bad_request(raw.send_message(request).await, "attributes");
    assert_eq!(
        status.message(),
        "a message has at most 10 attributes; got 11"
    );
    let empty_name = send_request("small", "x", &[("", "v")], None);
    assert_bad_request(raw.send_message(empty_name).await, "attributes");
    let too_big = send_request("small", vec![0u8; 1025], &[], None);
    assert_bad_request(raw.send_message(too_big).await, "body");
    let bad_queue = send_request("no good", "x", &[], None);
    assert_bad_request(raw.send_message(bad_queue).await, "queue");
    let late = send_request("small", "x", &[], Some(901));
    assert_bad_request(raw.send_message(late).await, "delay_seconds");
    assert_eq!(counts(&client, "small").await, Counts::EMPTY);
}

#[tokio::test(flavor = "multi_thread")]
async fn delay_above_900_seconds_is_rejected() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let max = DELAY_SECONDS_MAX;
    send_message(&client, "orders", "x", &[], Some(max)).await;
    let result = client
        .send_message(send_request("orders", "x", &[], Some(max + 1)))
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &["delay_seconds", &max.to_string(), &(max + 1).to_string()],
    );
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 0, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn delayed_message_is_hidden_until_due() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let sent = Instant::now();
    let id = send_message(&client, "orders", "later", &[], Some(1)).await;
    assert!(receive_now(&client, "orders", 10, 30).await.is_empty());
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 0, 1));

    let message = only(receive_wait(&client, "orders", 10, 30, 5).await);
    assert_eq!(message.message_id, id);
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "delivered {:?} after a 1 s delay",
        sent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_delay_applies_by_default_and_a_message_delay_overrides_it() {
    let (_server, client) = server_with_queue(
        "orders",
        pb::QueueAttributes {
            delay_seconds: Some(600),
            ..Default::default()
        },
    )
    .await;
    send_message(&client, "orders", "queue delay", &[], None).await;
    let now = send_message(&client, "orders", "no delay", &[], Some(0)).await;
    assert_eq!(counts(&client, "orders").await, Counts::new(1, 0, 1));
    let message = only(receive_now(&client, "orders", 10, 30).await);
    assert_eq!(message.message_id, now);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_send_reports_every_entry() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let mut with_attributes = entry("with-attrs", "b");
    with_attributes.attributes = string_map(&[("k", "v")]);
    let mut delayed = entry("delayed_1", "c");
    delayed.delay_seconds = Some(600);
    let response = client
        .send_message_batch(batch(
            "orders",
            vec![entry("a", "a"), with_attributes, delayed],
        ))
        .await
        .expect("SendMessageBatch");
    assert!(response.failed.is_empty(), "{:?}", response.failed);
    let ids: Vec<_> = response.successful.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    for id in ["a", "with-attrs", "delayed_1"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let message_ids: HashSet<_> = response
        .successful
        .iter()
        .map(|s| s.message_id.clone())
        .collect();
    assert_eq!(message_ids.len(), 3, "distinct message ids");

    assert_eq!(counts(&client, "orders").await, Counts::new(2, 0, 1));
    let mut received = receive_now(&client, "orders", 10, 30).await;
    received.sort_by(|a, b| a.body.cmp(&b.body));
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].body, "a");
    assert_eq!(received[1].body, "b");
    assert_eq!(received[1].attributes, string_map(&[("k", "v")]));
    for message in &received {
        assert!(message_ids.contains(&message.message_id));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_batch_entries_fail_alone_and_the_rest_succeed() {
    let (_server, client) = server_with_queue("small", max_bytes(1024)).await;
    let mut too_many_attributes = entry("attrs", "x");
    too_many_attributes.attributes = numbered_attributes(11);
    let mut bad_delay = entry("delay", "x");
    bad_delay.delay_seconds = Some(901);
    let entries = vec![
        entry("ok1", "first"),
        entry("empty", ""),
        entry("large", vec![0u8; 1025]),
        too_many_attributes,
        bad_delay,
        entry("ok2", "second"),
    ];
    let response = client
        .send_message_batch(batch("small", entries))
        .await
        .expect("a batch with bad entries still succeeds as a whole");

    let mut ok: Vec<_> = response.successful.iter().map(|s| s.id.as_str()).collect();
    ok.sort();
    assert_eq!(ok, ["ok1", "ok2"]);
    let mut failed = response.failed.clone();
    failed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert_batch_failure(
        &failed[0],
        "attrs",
        "INVALID_ARGUMENT",
        &["attributes", "10", "11"],
    );
    assert_batch_failure(
        &failed[1],
        "delay",
        "INVALID_ARGUMENT",
        &["delay_seconds", "900", "901"],
    );
    assert_batch_failure(&failed[2], "empty", "INVALID_ARGUMENT", &["body"]);
    assert_batch_failure(&failed[3], "large", "INVALID_ARGUMENT", &["1024", "1025"]);

    let mut bodies: Vec<_> = receive_now(&client, "small", 10, 30)
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["first", "second"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_of_100_entries_is_accepted_and_empty_or_101_rejected() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let entries = |n: usize| {
        (0..n)
            .map(|i| entry(&format!("e{i}"), "x"))
            .collect::<Vec<_>>()
    };

    let result = client.send_message_batch(batch("orders", Vec::new())).await;
    assert_error(result, Code::InvalidArgument, &["entries"]);
    let max = BATCH_ENTRIES_MAX;
    let result = client
        .send_message_batch(batch("orders", entries(max + 1)))
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &["entries", &max.to_string(), &(max + 1).to_string()],
    );
    assert_eq!(counts(&client, "orders").await, Counts::EMPTY);

    let response = client
        .send_message_batch(batch("orders", entries(max)))
        .await
        .expect("a full batch");
    assert_eq!(response.successful.len(), max, "{:?}", response.failed);
    assert_eq!(
        counts(&client, "orders").await,
        Counts::new(max as u64, 0, 0)
    );
}

/// Entry ids must be unique. Whether the whole request fails or the duplicate
/// entries fail alone, no two messages are sent under one id.
#[tokio::test(flavor = "multi_thread")]
async fn duplicate_batch_entry_ids_are_rejected() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let result = client
        .send_message_batch(batch(
            "orders",
            vec![
                entry("same", "one"),
                entry("other", "ok"),
                entry("same", "two"),
            ],
        ))
        .await;
    match result {
        Err(error) => {
            assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
            assert!(
                error.message().contains("same"),
                "names the duplicate id: {error:?}"
            );
            assert_eq!(counts(&client, "orders").await, Counts::EMPTY);
        }
        Ok(response) => {
            let failed: Vec<_> = response.failed.iter().filter(|f| f.id == "same").collect();
            assert!(!failed.is_empty(), "a duplicate id must fail: {response:?}");
            for failure in failed {
                assert_batch_failure(failure, "same", "INVALID_ARGUMENT", &["id"]);
            }
            assert!(
                response
                    .successful
                    .iter()
                    .filter(|s| s.id == "same")
                    .count()
                    <= 1,
                "{response:?}"
            );
            assert!(
                response.successful.iter().any(|s| s.id == "other"),
                "{response:?}"
            );
            let sent = response.successful.len() as u64;
            assert_eq!(counts(&client, "orders").await, Counts::new(sent, 0, 0));
        }
    }
}

/// Entry ids are 1..=80 of `[A-Za-z0-9_-]`. A bad id fails its entry alone
/// (or, at the server's choice, the request as a whole); nothing is sent for it.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_batch_entry_ids_are_rejected() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let too_long = "i".repeat(NAME_LEN_MAX + 1);
    for bad in ["", "a b", "a.b", too_long.as_str()] {
        let result = client
            .send_message_batch(batch(
                "orders",
                vec![entry(bad, "bad"), entry("good", "good")],
            ))
            .await;
        match result {
            Err(error) => {
                assert_eq!(error.code(), Code::InvalidArgument, "id {bad:?}: {error:?}");
                assert!(error.message().contains("id"), "id {bad:?}: {error:?}");
            }
            Ok(response) => {
                assert_eq!(response.failed.len(), 1, "id {bad:?}: {response:?}");
                assert_batch_failure(&response.failed[0], bad, "INVALID_ARGUMENT", &["id"]);
                let ok: Vec<_> = response.successful.iter().map(|s| s.id.as_str()).collect();
                assert_eq!(ok, ["good"], "id {bad:?}");
            }
        }
    }
    // Only "good" bodies were ever sent.
    let messages = receive_now(&client, "orders", 10, 30).await;
    assert!(messages.iter().all(|m| m.body == "good"), "{messages:?}");
    let valid = "I".repeat(NAME_LEN_MAX);
    let response = client
        .send_message_batch(batch(
            "orders",
            vec![entry(&valid, "x"), entry("a-Z_9", "y")],
        ))
        .await
        .expect("valid ids");
    assert_eq!(response.successful.len(), 2, "{:?}", response.failed);
}
