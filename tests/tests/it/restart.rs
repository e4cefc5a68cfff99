//! Durability across a graceful restart on the same data directory: queues,
//! messages, in-flight deadlines, delays, receipt handles, dead letters and
//! exact stats all come back as they were. And shutdown ends long polls.

use std::time::{Duration, Instant};

use broker_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn queues_messages_and_attributes_survive_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    create_queue(&client, "dlq", attributes()).await;
    let orders = create_queue(
        &client,
        "orders",
        pb::QueueAttributes {
            visibility_timeout_seconds: Some(7),
            max_message_bytes: Some(4096),
            ..redrive_to("dlq", 5)
        },
    )
    .await;
    let body: Vec<u8> = (0..=255u8).rev().collect();
    let first = send_message(
        &client,
        "orders",
        body.clone(),
        &[("k", "v"), ("n", "1")],
        None,
    )
    .await;
    let second = send_message(&client, "orders", "second", &[], None).await;
    let sent = receive_now(&client, "orders", 10, 0).await;
    assert_eq!(sent.len(), 2);

    server.restart().await;
    let client = server.client().await;

    let after = client
        .get_queue(pb::GetQueueRequest {
            name: "orders".into(),
        })
        .await
        .expect("GetQueue after restart")
        .queue;
    assert_eq!(after, Some(orders));
    let listed = client
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .expect("ListQueues");
    let names: Vec<_> = listed.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["dlq", "orders"]);

    let mut received = receive_now(&client, "orders", 10, 30).await;
    received.sort_by_key(|m| m.message_id != first);
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].message_id, first);
    assert_eq!(received[0].body, body);
    assert_eq!(
        received[0].attributes,
        string_map(&[("k", "v"), ("n", "1")])
    );
    assert_eq!(received[1].message_id, second);
    assert_eq!(received[1].body, "second");
    for message in &received {
        let before = sent
            .iter()
            .find(|m| m.message_id == message.message_id)
            .expect("same ids");
        assert_eq!(message.sent_at_ms, before.sent_at_ms);
        assert_eq!(message.first_received_at_ms, before.first_received_at_ms);
        assert_eq!(message.receive_count, 2, "receive counts survive");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_message_stays_hidden_until_its_deadline_after_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    create_queue(&client, "orders", attributes()).await;
    let id = send_message(&client, "orders", "job", &[], None).await;
    only(receive_now(&client, "orders", 1, 2).await);
    let received = Instant::now();

    server.restart().await;
    let client = server.client().await;

    assert!(
        received.elapsed() < Duration::from_millis(1500),
        "restart took {:?}",
        received.elapsed()
    );
    assert!(
        receive_now(&client, "orders", 10, 30).await.is_empty(),
        "still in flight"
    );
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 1, 0));
    let again = only(receive_wait(&client, "orders", 10, 30, 5).await);
    let elapsed = received.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(3500),
        "back {elapsed:?} after a receive with a 2 s timeout"
    );
    assert_eq!((again.message_id, again.receive_count), (id, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn delayed_message_comes_due_after_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    create_queue(&client, "orders", attributes()).await;
    let sent = Instant::now();
    let id = send_message(&client, "orders", "later", &[], Some(2)).await;

    server.restart().await;
    let client = server.client().await;

    assert_eq!(counts(&client, "orders").await, Counts::new(0, 0, 1));
    let message = only(receive_wait(&client, "orders", 10, 30, 5).await);
    let elapsed = sent.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(3500),
        "due {elapsed:?} after a send with a 2 s delay"
    );
    assert_eq!(message.message_id, id);
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_are_exact_after_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    create_queue(&client, "orders", attributes()).await;
    create_queue(&client, "empty", attributes()).await;
    send_numbered(&client, "orders", 5).await;
    send_message(&client, "orders", "delayed", &[], Some(600)).await;
    send_message(&client, "orders", "delayed too", &[], Some(900)).await;
    let received = receive_now(&client, "orders", 3, 600).await;
    assert_eq!(received.len(), 3);
    delete_message(&client, "orders", &received[0].receipt_handle)
        .await
        .expect("delete");
    let expected = Counts::new(2, 2, 2);
    assert_eq!(counts(&client, "orders").await, expected);

    server.restart().await;
    let client = server.client().await;
    assert_eq!(counts(&client, "orders").await, expected);
    assert_eq!(counts(&client, "empty").await, Counts::EMPTY);

    // And they stay exact as messages move after the restart.
    assert_eq!(receive_now(&client, "orders", 10, 600).await.len(), 2);
    assert_eq!(counts(&client, "orders").await, Counts::new(0, 4, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn receipt_handles_stay_valid_after_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    create_queue(&client, "orders", attributes()).await;
    send_message(&client, "orders", "one", &[], None).await;
    send_message(&client, "orders", "two", &[], None).await;
    let messages = receive_now(&client, "orders", 2, 600).await;
    assert_eq!(messages.len(), 2);

    server.restart().await;
    let client = server.client().await;

    delete_message(&client, "orders", &messages[0].receipt_handle)
        .await
        .expect("delete with a handle issued before the restart");
    change_visibility(&client, "orders", &messages[1].receipt_handle, 0)
        .await
        .expect("change visibility with a handle issued before the restart");
    assert_eq!(counts(&client, "orders").await, Counts::new(1, 0, 0));
    let again = only(receive_now(&client, "orders", 10, 30).await);
    assert_eq!(
        (again.message_id.as_str(), again.receive_count),
        (messages[1].message_id.as_str(), 2)
    );
    // The handle of the receive before the restart is now superseded.
    let result = delete_message(&client, "orders", &messages[1].receipt_handle).await;
    assert_error(result, Code::FailedPrecondition, &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_purges_and_deleted_queues_stay_done_after_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    for name in ["orders", "purged", "gone"] {
        create_queue(&client, name, attributes()).await;
        send_message(&client, name, "a", &[], None).await;
        send_message(&client, name, "b", &[], None).await;
    }
    let message = only(receive_now(&client, "orders", 1, 600).await);
    delete_message(&client, "orders", &message.receipt_handle)
        .await
        .expect("delete");
    client
        .purge_queue(pb::PurgeQueueRequest {
            name: "purged".into(),
        })
        .await
        .expect("purge");
    client
        .delete_queue(pb::DeleteQueueRequest {
            name: "gone".into(),
        })
        .await
        .expect("delete queue");

    server.restart().await;
    let client = server.client().await;

    assert_eq!(counts(&client, "orders").await, Counts::new(1, 0, 0));
    let remaining = only(receive_now(&client, "orders", 10, 30).await);
    assert_ne!(remaining.message_id, message.message_id);
    assert_eq!(counts(&client, "purged").await, Counts::EMPTY);
    let result = client
        .get_queue(pb::GetQueueRequest {
            name: "gone".into(),
        })
        .await;
    assert_error(result, Code::NotFound, &["gone"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_lettered_message_remembers_its_source_after_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    create_queue(&client, "dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 1)).await;
    let id = send_message(&client, "orders", "poison", &[], None).await;
    only(receive_now(&client, "orders", 10, 0).await);
    assert!(receive_now(&client, "orders", 10, 0).await.is_empty());
    assert_eq!(counts(&client, "dlq").await, Counts::new(1, 0, 0));

    server.restart().await;
    let client = server.client().await;

    assert_eq!(counts(&client, "dlq").await, Counts::new(1, 0, 0));
    // The delete of a queue used as a dead-letter queue is still refused.
    let result = client
        .delete_queue(pb::DeleteQueueRequest { name: "dlq".into() })
        .await;
    assert_error(result, Code::FailedPrecondition, &["orders"]);
    assert_eq!(redrive(&client, "dlq", "").await, 1);
    let back = only(receive_now(&client, "orders", 10, 30).await);
    assert_eq!((back.message_id, back.receive_count), (id, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_waiting_long_polls() {
    let (server, client) = server_with_queue("orders", attributes()).await;
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .receive_messages(receive_request("orders", 10, Some(30), Some(20)))
                .await
        })
    };
    server.wait_for_long_polls(1).await;
    assert!(!waiting.is_finished(), "returned instead of waiting");

    let started = Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for a 20 s long poll",
        started.elapsed()
    );
    let result = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the long poll ends with the server")
        .expect("the receive task");
    // Either an empty answer or an error saying the server went away.
    match result {
        Ok(response) => assert!(response.messages.is_empty(), "{response:?}"),
        Err(error) => assert_ne!(error.code(), Code::Internal, "{error:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_twice_keeps_everything() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    create_queue(&client, "orders", attributes()).await;
    let id = send_message(&client, "orders", "kept", &[], None).await;
    server.restart().await;
    let client = server.client().await;
    send_message(&client, "orders", "after first restart", &[], None).await;
    server.restart().await;
    let client = server.client().await;
    assert_eq!(counts(&client, "orders").await, Counts::new(2, 0, 0));
    let messages = receive_now(&client, "orders", 10, 30).await;
    assert!(messages.iter().any(|m| m.message_id == id));
    assert_eq!(messages.len(), 2);
}

/// Run by `ChildServer` in a process of its own; does nothing when run directly.
#[test]
#[ignore = "the body of ChildServer's process, started by the crash tests"]
fn child_server_process() {
    serve_as_child();
}

/// SIGKILL, not a graceful shutdown: what was acknowledged is on disk, and
/// the in-memory indexes (ready messages, deadlines, counts) are rebuilt from
/// RocksDB alone.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_a_killed_process() {
    let data_dir = temp_data_dir();
    let child = ChildServer::start(data_dir.path()).await;
    let client = child.client().await;
    create_queue(&client, "dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 3)).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            send_message(
                &client,
                "orders",
                format!("m{i}"),
                &[("i", &i.to_string())],
                None,
            )
            .await,
        );
    }
    send_message(&client, "orders", "delayed", &[], Some(600)).await;
    let received = receive_now(&client, "orders", 2, 2).await;
    assert_eq!(received.len(), 2);
    let received_at = Instant::now();
    delete_message(&client, "orders", &received[0].receipt_handle)
        .await
        .expect("delete");
    let expected = Counts::new(2, 1, 1);
    assert_eq!(counts(&client, "orders").await, expected);

    child.kill().await;
    let server = TestServer::start_in(data_dir).await;
    let client = server.client().await;

    assert_eq!(
        queue_attributes(&client, "orders").await.redrive_policy,
        redrive_to("dlq", 3).redrive_policy
    );
    assert_eq!(counts(&client, "orders").await, expected);
    // The in-flight message comes back at its persisted deadline.
    let mut visible = receive_now(&client, "orders", 10, 600).await;
    assert_eq!(visible.len(), 2);
    let again = only(receive_wait(&client, "orders", 10, 600, 5).await);
    assert!(
        received_at.elapsed() >= Duration::from_millis(1900),
        "in flight until its deadline; back after {:?}",
        received_at.elapsed()
    );
    assert_eq!(
        (again.message_id.as_str(), again.receive_count),
        (received[1].message_id.as_str(), 2)
    );
    visible.push(again);
    let mut survivors: Vec<_> = visible.iter().map(|m| m.message_id.clone()).collect();
    survivors.sort();
    let mut expected_ids: Vec<_> = ids
        .into_iter()
        .filter(|id| *id != received[0].message_id)
        .collect();
    expected_ids.sort();
    assert_eq!(
        survivors, expected_ids,
        "every acknowledged send but the deleted one"
    );
    for message in &visible {
        let i = message.body.strip_prefix(b"m").expect("an m<i> body");
        assert_eq!(message.attributes["i"].as_bytes(), i);
    }
}
