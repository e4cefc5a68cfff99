//! ReceiveMessages, visibility timeouts and receipt handles: DeleteMessage,
//! ChangeMessageVisibility and their batch forms.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use broker_tests::limits::{
    BATCH_ENTRIES_MAX, RECEIVE_MESSAGES_MAX, VISIBILITY_TIMEOUT_SECONDS_MAX, WAIT_TIME_SECONDS_MAX,
};
use broker_tests::*;

fn delete_entry(id: &str, receipt_handle: &str) -> pb::DeleteMessageBatchEntry {
    pb::DeleteMessageBatchEntry {
        id: id.to_string(),
        receipt_handle: receipt_handle.to_string(),
    }
}

fn visibility_entry(
    id: &str,
    receipt_handle: &str,
    seconds: u32,
) -> pb::ChangeMessageVisibilityBatchEntry {
    pb::ChangeMessageVisibilityBatchEntry {
        id: id.to_string(),
        receipt_handle: receipt_handle.to_string(),
        visibility_timeout_seconds: seconds,
    }
}

fn sorted_ids(successful: &[pb::BatchResultSuccess]) -> Vec<&str> {
    let mut ids: Vec<_> = successful.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn received_message_is_hidden_until_its_visibility_timeout_lapses() {
    let (_server, client) = server_with_queue("orders", visibility(1)).await;
    let id = send_message(&client, "orders", "job", &[], None).await;

    let first = only(receive_with(&client, receive_request("orders", 1, None, Some(0))).await);
    let received_at = Instant::now();
    assert_eq!(
        (first.message_id.as_str(), first.receive_count),
        (id.as_str(), 1)
    );
    assert!(
        receive_now(&client, "orders", 10, 1).await.is_empty(),
        "hidden while in flight"
    );
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 1, 0));

    // The queue's 1 s timeout lapses; a long poll sees the message come back.
    let second = only(receive_wait(&client, "orders", 1, 30, 5).await);
    assert!(
        received_at.elapsed() >= Duration::from_millis(900),
        "visible again after {:?}, before the 1 s timeout",
        received_at.elapsed()
    );
    assert_eq!(second.message_id, id);
    assert_eq!(second.receive_count, 2);
    assert_ne!(
        second.receipt_handle, first.receipt_handle,
        "each receive issues a new handle"
    );
    assert_eq!(second.first_received_at_ms, first.first_received_at_ms);
    assert_eq!(second.sent_at_ms, first.sent_at_ms);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_visibility_timeout_overrides_the_queue_default() {
    let (_server, client) = server_with_queue("orders", visibility(600)).await;
    send_message(&client, "orders", "job", &[], None).await;
    only(receive_now(&client, "orders", 1, 1).await);
    let again = only(receive_wait(&client, "orders", 1, 600, 5).await);
    assert_eq!(again.receive_count, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn visibility_timeout_zero_leaves_the_message_visible() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    assert_eq!(
        only(receive_now(&client, "orders", 1, 0).await).receive_count,
        1
    );
    assert_eq!(
        only(receive_now(&client, "orders", 1, 0).await).receive_count,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_messages_zero_means_one() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_numbered(&client, "orders", 3).await;
    assert_eq!(receive_now(&client, "orders", 0, 30).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn receive_returns_at_most_max_messages_and_never_the_same_message_twice() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_numbered(&client, "orders", 5).await;
    let mut seen = HashSet::new();
    let mut receives = 0;
    while seen.len() < 5 {
        let messages = receive_now(&client, "orders", 3, 30).await;
        assert!(
            !messages.is_empty() && messages.len() <= 3,
            "{} messages",
            messages.len()
        );
        for message in messages {
            assert!(
                seen.insert(message.message_id),
                "delivered twice while in flight"
            );
        }
        receives += 1;
        assert!(receives <= 5, "5 messages not delivered in 5 receives");
    }
    assert!(receive_now(&client, "orders", 3, 30).await.is_empty());
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 5, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn receive_rejects_out_of_range_arguments() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    let (max, visibility, wait) = (
        RECEIVE_MESSAGES_MAX,
        VISIBILITY_TIMEOUT_SECONDS_MAX,
        WAIT_TIME_SECONDS_MAX,
    );
    let cases = [
        (
            receive_request("orders", max + 1, None, Some(0)),
            "max_messages",
            max,
        ),
        (
            receive_request("orders", 1, Some(visibility + 1), Some(0)),
            "visibility_timeout_seconds",
            visibility,
        ),
        (
            receive_request("orders", 1, None, Some(wait + 1)),
            "wait_time_seconds",
            wait,
        ),
    ];
    for (request, field, bound) in cases {
        let result = client.receive_messages(request).await;
        assert_error(
            result,
            Code::InvalidArgument,
            &[field, &bound.to_string(), &(bound + 1).to_string()],
        );
    }
    // Nothing was received by the rejected requests.
    assert_eq!(counts(&client, "orders").await, Counts::new(1, 0, 0));
    receive_with(
        &client,
        receive_request("orders", max, Some(visibility), Some(0)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn receive_from_unknown_queue_is_not_found() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let result = client
        .receive_messages(receive_request("missing", 1, None, Some(1)))
        .await;
    assert_error(result, Code::NotFound, &["missing"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_with_the_latest_receipt_handle_removes_the_message() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    send_message(&client, "orders", "other", &[], None).await;
    let messages = receive_now(&client, "orders", 1, 30).await;
    let message = only(messages);
    delete_message(&client, "orders", &message.receipt_handle)
        .await
        .expect("DeleteMessage");
    assert_eq!(counts(&client, "orders").await, Counts::new(1, 0, 0));
    let remaining = only(receive_now(&client, "orders", 10, 0).await);
    assert_ne!(remaining.message_id, message.message_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_twice_with_the_same_handle_is_ok() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    let message = only(receive_now(&client, "orders", 1, 30).await);
    delete_message(&client, "orders", &message.receipt_handle)
        .await
        .expect("first delete");
    delete_message(&client, "orders", &message.receipt_handle)
        .await
        .expect("deleting an already deleted message with its last handle");
    assert_eq!(counts(&client, "orders").await, Counts::EMPTY);
}

#[tokio::test(flavor = "multi_thread")]
async fn superseded_receipt_handle_is_rejected() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    let first = only(receive_now(&client, "orders", 1, 0).await);
    let second = only(receive_now(&client, "orders", 1, 30).await);
    assert_eq!(first.message_id, second.message_id);

    let result = delete_message(&client, "orders", &first.receipt_handle).await;
    assert_error(result, Code::FailedPrecondition, &[]);
    assert_eq!(
        counts(&client, "orders").await,
        Counts::new(0, 1, 0),
        "nothing deleted"
    );

    let result = change_visibility(&client, "orders", &first.receipt_handle, 0).await;
    assert_error(result, Code::FailedPrecondition, &[]);
    assert_eq!(
        counts(&client, "orders").await,
        Counts::new(0, 1, 0),
        "still in flight"
    );

    delete_message(&client, "orders", &second.receipt_handle)
        .await
        .expect("the latest handle deletes");
    assert_eq!(counts(&client, "orders").await, Counts::EMPTY);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_after_the_timeout_lapsed_succeeds_when_nobody_received_since() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    let message = only(receive_now(&client, "orders", 1, 1).await);
    // The lapse of the 1 s timeout is the point (and no receive may end it).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        counts(&client, "orders").await,
        Counts::new(1, 0, 0),
        "visible again"
    );
    delete_message(&client, "orders", &message.receipt_handle)
        .await
        .expect("the latest handle still deletes after the timeout lapsed");
    assert_eq!(counts(&client, "orders").await, Counts::EMPTY);
    assert!(receive_now(&client, "orders", 10, 30).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_receipt_handle_is_invalid_argument() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    only(receive_now(&client, "orders", 1, 30).await);
    for handle in [
        "",
        "not-a-receipt-handle",
        "%%%",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let result = delete_message(&client, "orders", handle).await;
        assert_error(result, Code::InvalidArgument, &["receipt_handle"]);
        let result = change_visibility(&client, "orders", handle, 0).await;
        assert_error(result, Code::InvalidArgument, &["receipt_handle"]);
    }
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn receipt_handle_of_another_queue_is_invalid_argument() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    create_queue(&client, "invoices", attributes()).await;
    send_message(&client, "orders", "order", &[], None).await;
    send_message(&client, "invoices", "invoice", &[], None).await;
    let order = only(receive_now(&client, "orders", 1, 30).await);
    only(receive_now(&client, "invoices", 1, 30).await);

    let result = delete_message(&client, "invoices", &order.receipt_handle).await;
    assert_error(result, Code::InvalidArgument, &["receipt_handle"]);
    let result = change_visibility(&client, "invoices", &order.receipt_handle, 0).await;
    assert_error(result, Code::InvalidArgument, &["receipt_handle"]);
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 1, 0));
    assert_eq!(counts(&client, "invoices").await, Counts::new(0, 1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_on_unknown_queue_is_not_found() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    let message = only(receive_now(&client, "orders", 1, 30).await);
    let result = delete_message(&client, "missing", &message.receipt_handle).await;
    assert_error(result, Code::NotFound, &["missing"]);
    let result = change_visibility(&client, "missing", &message.receipt_handle, 0).await;
    assert_error(result, Code::NotFound, &["missing"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn change_visibility_extends_the_timeout() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    let message = only(receive_now(&client, "orders", 1, 1).await);
    change_visibility(&client, "orders", &message.receipt_handle, 600)
        .await
        .expect("extend");
    // Past the original 1 s timeout the message is still hidden.
    assert!(receive_wait(&client, "orders", 1, 30, 2).await.is_empty());
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 1, 0));
    // Changing visibility issues no new handle: the same one still deletes.
    delete_message(&client, "orders", &message.receipt_handle)
        .await
        .expect("delete with the handle of the receive");
}

#[tokio::test(flavor = "multi_thread")]
async fn change_visibility_can_shorten_the_timeout() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    let message = only(receive_now(&client, "orders", 1, 600).await);
    let changed = Instant::now();
    change_visibility(&client, "orders", &message.receipt_handle, 1)
        .await
        .expect("shorten");
    let again = only(receive_wait(&client, "orders", 1, 30, 5).await);
    assert_eq!(again.receive_count, 2);
    assert!(
        changed.elapsed() >= Duration::from_millis(900),
        "{:?}",
        changed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn change_visibility_to_zero_makes_the_message_visible_now() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    let message = only(receive_now(&client, "orders", 1, 600).await);
    change_visibility(&client, "orders", &message.receipt_handle, 0)
        .await
        .expect("release");
    assert_eq!(counts(&client, "orders").await, Counts::new(1, 0, 0));
    let again = only(receive_now(&client, "orders", 1, 30).await);
    assert_eq!(
        (again.message_id, again.receive_count),
        (message.message_id, 2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn change_visibility_of_a_message_not_in_flight_is_failed_precondition() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "released", &[], None).await;
    let released = only(receive_now(&client, "orders", 1, 600).await);
    change_visibility(&client, "orders", &released.receipt_handle, 0)
        .await
        .expect("release");
    // Visible now, so no longer in flight.
    let result = change_visibility(&client, "orders", &released.receipt_handle, 600).await;
    assert_error(result, Code::FailedPrecondition, &[]);
    assert_eq!(
        counts(&client, "orders").await,
        Counts::new(1, 0, 0),
        "still visible"
    );

    // A deleted message is not in flight either.
    let deleted = only(receive_now(&client, "orders", 1, 600).await);
    delete_message(&client, "orders", &deleted.receipt_handle)
        .await
        .expect("delete");
    let result = change_visibility(&client, "orders", &deleted.receipt_handle, 600).await;
    assert_error(result, Code::FailedPrecondition, &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn change_visibility_above_43200_is_invalid_argument() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "job", &[], None).await;
    let message = only(receive_now(&client, "orders", 1, 600).await);
    let max = VISIBILITY_TIMEOUT_SECONDS_MAX;
    let result = change_visibility(&client, "orders", &message.receipt_handle, max + 1).await;
    assert_error(
        result,
        Code::InvalidArgument,
        &[
            "visibility_timeout_seconds",
            &max.to_string(),
            &(max + 1).to_string(),
        ],
    );
    change_visibility(&client, "orders", &message.receipt_handle, max)
        .await
        .expect("the maximum is allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_message_batch_reports_every_entry() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    create_queue(&client, "other", attributes()).await;
    send_numbered(&client, "orders", 3).await;
    send_message(&client, "other", "o", &[], None).await;
    let foreign = only(receive_now(&client, "other", 1, 600).await);
    // m-superseded: received twice, the first handle is stale.
    let mut messages = receive_now(&client, "orders", 3, 600).await;
    assert_eq!(messages.len(), 3);
    let stale = messages.pop().expect("three");
    change_visibility(&client, "orders", &stale.receipt_handle, 0)
        .await
        .expect("release");
    let fresh = only(receive_now(&client, "orders", 1, 600).await);
    assert_eq!(fresh.message_id, stale.message_id);

    let response = client
        .delete_message_batch(pb::DeleteMessageBatchRequest {
            queue: "orders".into(),
            entries: vec![
                delete_entry("a", &messages[0].receipt_handle),
                delete_entry("b", &messages[1].receipt_handle),
                delete_entry("stale", &stale.receipt_handle),
                delete_entry("malformed", "garbage"),
                delete_entry("foreign", &foreign.receipt_handle),
            ],
        })
        .await
        .expect("DeleteMessageBatch");
    assert_eq!(sorted_ids(&response.successful), ["a", "b"]);
    let mut failed = response.failed.clone();
    failed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_batch_failure(
        &failed[0],
        "foreign",
        "INVALID_ARGUMENT",
        &["receipt_handle"],
    );
    assert_batch_failure(
        &failed[1],
        "malformed",
        "INVALID_ARGUMENT",
        &["receipt_handle"],
    );
    assert_batch_failure(&failed[2], "stale", "FAILED_PRECONDITION", &[]);
    // Only a and b were deleted: the re-received one is still in flight.
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 1, 0));
    assert_eq!(counts(&client, "other").await, Counts::new(0, 1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn change_visibility_batch_reports_every_entry() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_numbered(&client, "orders", 3).await;
    let messages = receive_now(&client, "orders", 3, 600).await;
    assert_eq!(messages.len(), 3);
    let response = client
        .change_message_visibility_batch(pb::ChangeMessageVisibilityBatchRequest {
            queue: "orders".into(),
            entries: vec![
                visibility_entry("release", &messages[0].receipt_handle, 0),
                visibility_entry("extend", &messages[1].receipt_handle, 1200),
                visibility_entry(
                    "too-long",
                    &messages[2].receipt_handle,
                    VISIBILITY_TIMEOUT_SECONDS_MAX + 1,
                ),
                visibility_entry("malformed", "garbage", 0),
            ],
        })
        .await
        .expect("ChangeMessageVisibilityBatch");
    assert_eq!(sorted_ids(&response.successful), ["extend", "release"]);
    let mut failed = response.failed.clone();
    failed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_batch_failure(
        &failed[0],
        "malformed",
        "INVALID_ARGUMENT",
        &["receipt_handle"],
    );
    assert_batch_failure(
        &failed[1],
        "too-long",
        "INVALID_ARGUMENT",
        &[
            "visibility_timeout_seconds",
            &VISIBILITY_TIMEOUT_SECONDS_MAX.to_string(),
            &(VISIBILITY_TIMEOUT_SECONDS_MAX + 1).to_string(),
        ],
    );
    // Only the released message is visible.
    assert_eq!(counts(&client, "orders").await, Counts::new(1, 2, 0));
    let again = only(receive_now(&client, "orders", 10, 600).await);
    assert_eq!(again.message_id, messages[0].message_id);

    // Entries for messages no longer in flight fail with FAILED_PRECONDITION.
    let response = client
        .change_message_visibility_batch(pb::ChangeMessageVisibilityBatchRequest {
            queue: "orders".into(),
            entries: vec![
                visibility_entry("superseded", &messages[0].receipt_handle, 0),
                visibility_entry("latest", &again.receipt_handle, 0),
            ],
        })
        .await
        .expect("ChangeMessageVisibilityBatch");
    assert_eq!(sorted_ids(&response.successful), ["latest"]);
    assert_eq!(response.failed.len(), 1, "{:?}", response.failed);
    assert_batch_failure(
        &response.failed[0],
        "superseded",
        "FAILED_PRECONDITION",
        &[],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_and_change_visibility_batches_need_1_to_100_entries() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let (max, over) = (
        BATCH_ENTRIES_MAX.to_string(),
        (BATCH_ENTRIES_MAX + 1).to_string(),
    );
    let over_a_batch = ["entries", max.as_str(), over.as_str()];

    let result = client
        .delete_message_batch(pb::DeleteMessageBatchRequest {
            queue: "orders".into(),
            entries: Vec::new(),
        })
        .await;
    assert_error(result, Code::InvalidArgument, &["entries"]);
    let result = client
        .delete_message_batch(pb::DeleteMessageBatchRequest {
            queue: "orders".into(),
            entries: (0..=BATCH_ENTRIES_MAX)
                .map(|i| delete_entry(&format!("e{i}"), "garbage"))
                .collect(),
        })
        .await;
    assert_error(result, Code::InvalidArgument, &over_a_batch);

    let result = client
        .change_message_visibility_batch(pb::ChangeMessageVisibilityBatchRequest {
            queue: "orders".into(),
            entries: Vec::new(),
        })
        .await;
    assert_error(result, Code::InvalidArgument, &["entries"]);
    let result = client
        .change_message_visibility_batch(pb::ChangeMessageVisibilityBatchRequest {
            queue: "orders".into(),
            entries: (0..=BATCH_ENTRIES_MAX)
                .map(|i| visibility_entry(&format!("e{i}"), "garbage", 0))
                .collect(),
        })
        .await;
    assert_error(result, Code::InvalidArgument, &over_a_batch);

    // A full batch is allowed (each entry fails alone here: the handles are
    // malformed).
    let response = client
        .delete_message_batch(pb::DeleteMessageBatchRequest {
            queue: "orders".into(),
            entries: (0..BATCH_ENTRIES_MAX)
                .map(|i| delete_entry(&format!("e{i}"), "garbage"))
                .collect(),
        })
        .await
        .expect("a full batch");
    assert_eq!(response.failed.len(), BATCH_ENTRIES_MAX);
    assert!(response.failed.iter().all(|f| f.code == "INVALID_ARGUMENT"));
}
