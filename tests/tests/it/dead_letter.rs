//! Dead-letter queues: redrive policies and their validation, the move of a
//! message received `max_receive_count` times, and RedriveMessages.
//!
//! Receives here use a visibility timeout of 0, so a message is visible again
//! at once and the next receive counts without waiting.

use broker_tests::*;

/// Receives `queue`'s only message `times` times, releasing it each time.
async fn receive_times(client: &Client, queue: &str, times: u32) -> pb::ReceivedMessage {
    let mut last = None;
    for n in 1..=times {
        let message = only(receive_now(client, queue, 10, 0).await);
        assert_eq!(message.receive_count, n);
        last = Some(message);
    }
    last.expect("received at least once")
}

/// Sends a message to `source` and receives it until the next receive moves
/// it to the source's dead-letter queue; returns it as last received.
async fn dead_letter(
    client: &Client,
    source: &str,
    max_receive_count: u32,
    body: &str,
) -> pb::ReceivedMessage {
    send_message(
        client,
        source,
        body.to_string(),
        &[("origin", source)],
        None,
    )
    .await;
    let last = receive_times(client, source, max_receive_count).await;
    assert!(
        receive_now(client, source, 10, 0).await.is_empty(),
        "receive {} moves the message instead of returning it",
        max_receive_count + 1
    );
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn message_moves_to_the_dead_letter_queue_after_max_receive_count() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 2)).await;
    let id = send_message(&client, "orders", vec![0u8, 1, 255], &[("k", "v")], None).await;

    let last = receive_times(&client, "orders", 2).await;
    assert_eq!(
        counts(&client, "dlq").await,
        Counts::EMPTY,
        "not moved before the limit"
    );
    // The third receive finds it received twice: it moves instead of returning.
    assert!(receive_now(&client, "orders", 10, 0).await.is_empty());
    assert_eq!(counts(&client, "orders").await, Counts::EMPTY);
    assert_eq!(counts(&client, "dlq").await, Counts::new(1, 0, 0));

    let dead = only(receive_now(&client, "dlq", 10, 30).await);
    assert_eq!(dead.message_id, id);
    assert_eq!(dead.body, vec![0u8, 1, 255]);
    assert_eq!(dead.attributes, string_map(&[("k", "v")]));
    assert_eq!(dead.sent_at_ms, last.sent_at_ms);
    // The last handle of the source cannot touch the moved message: the
    // delete is OK (the message left the source) or FAILED_PRECONDITION, and
    // the dead-letter copy stays.
    let result = delete_message(&client, "orders", &last.receipt_handle).await;
    assert!(
        result.is_ok() || result.as_ref().unwrap_err().code() == Code::FailedPrecondition,
        "{result:?}"
    );
    assert_eq!(counts(&client, "dlq").await, Counts::new(0, 1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn receive_returns_other_messages_while_it_dead_letters_one() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 1)).await;
    let poison = send_message(&client, "orders", "poison", &[], None).await;
    assert_eq!(
        only(receive_now(&client, "orders", 10, 0).await).message_id,
        poison
    );
    let fresh = send_message(&client, "orders", "fresh", &[], None).await;

    let messages = receive_now(&client, "orders", 10, 30).await;
    assert_eq!(only(messages).message_id, fresh);
    assert_eq!(
        only(receive_now(&client, "dlq", 10, 30).await).message_id,
        poison
    );
}

/// A receive of one message that finds a dead message first moves it and
/// returns the next visible one: a queue with a visible message does not
/// answer a short poll with nothing.
#[tokio::test(flavor = "multi_thread")]
async fn receive_of_one_message_skips_past_a_dead_lettered_one() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 1)).await;
    let poison = send_message(&client, "orders", "poison", &[], None).await;
    assert_eq!(
        only(receive_now(&client, "orders", 1, 0).await).message_id,
        poison
    );
    let fresh = send_message(&client, "orders", "fresh", &[], None).await;
    assert_eq!(counts(&client, "orders").await, Counts::new(2, 0, 0));

    let messages = receive_now(&client, "orders", 1, 30).await;
    assert_eq!(
        counts(&client, "dlq").await,
        Counts::new(1, 0, 0),
        "poison moved"
    );
    assert_eq!(only(messages).message_id, fresh);
}

#[tokio::test(flavor = "multi_thread")]
async fn redrive_policy_needs_an_existing_dead_letter_queue() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let result = client
        .create_queue(pb::CreateQueueRequest {
            name: "orders".into(),
            attributes: Some(redrive_to("missing-dlq", 3)),
        })
        .await;
    assert_error(result, Code::NotFound, &["missing-dlq"]);
    let result = client
        .get_queue(pb::GetQueueRequest {
            name: "orders".into(),
        })
        .await;
    assert_error(result, Code::NotFound, &[]);

    create_queue(&client, "orders", attributes()).await;
    let result = client
        .update_queue(pb::UpdateQueueRequest {
            name: "orders".into(),
            attributes: Some(redrive_to("missing-dlq", 3)),
        })
        .await;
    assert_error(result, Code::NotFound, &["missing-dlq"]);
    assert_eq!(
        queue_attributes(&client, "orders").await.redrive_policy,
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_cannot_be_its_own_dead_letter_queue() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let result = client
        .update_queue(pb::UpdateQueueRequest {
            name: "orders".into(),
            attributes: Some(redrive_to("orders", 3)),
        })
        .await;
    assert_error(result, Code::InvalidArgument, &["dead_letter_queue"]);
    assert_eq!(
        queue_attributes(&client, "orders").await.redrive_policy,
        None
    );

    // On create the queue does not exist yet: still its own, so INVALID_ARGUMENT.
    let result = client
        .create_queue(pb::CreateQueueRequest {
            name: "self".into(),
            attributes: Some(redrive_to("self", 3)),
        })
        .await;
    let error = result.expect_err("a queue cannot be its own dead-letter queue");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_queue_used_as_dead_letter_queue_names_its_sources() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 3)).await;
    create_queue(&client, "invoices", redrive_to("dlq", 3)).await;

    let result = client
        .delete_queue(pb::DeleteQueueRequest { name: "dlq".into() })
        .await;
    assert_error(result, Code::FailedPrecondition, &["orders", "invoices"]);
    assert_eq!(
        queue_attributes(&client, "dlq").await.redrive_policy,
        None,
        "still there"
    );

    // Once no queue uses it, it can go.
    client
        .update_queue(pb::UpdateQueueRequest {
            name: "orders".into(),
            attributes: Some(pb::QueueAttributes {
                clear_redrive_policy: true,
                ..Default::default()
            }),
        })
        .await
        .expect("clear the policy");
    let result = client
        .delete_queue(pb::DeleteQueueRequest { name: "dlq".into() })
        .await;
    let error = assert_error(result, Code::FailedPrecondition, &["invoices"]);
    assert!(!error.message().contains("orders"), "{error:?}");
    client
        .delete_queue(pb::DeleteQueueRequest {
            name: "invoices".into(),
        })
        .await
        .expect("delete the last source");
    client
        .delete_queue(pb::DeleteQueueRequest { name: "dlq".into() })
        .await
        .expect("delete the unused dead-letter queue");
}

#[tokio::test(flavor = "multi_thread")]
async fn redrive_moves_messages_back_to_the_queue_they_died_in() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 1)).await;
    create_queue(&client, "invoices", redrive_to("dlq", 2)).await;
    let order = dead_letter(&client, "orders", 1, "order").await;
    let invoice = dead_letter(&client, "invoices", 2, "invoice").await;
    assert_eq!(counts(&client, "dlq").await, Counts::new(2, 0, 0));

    assert_eq!(redrive(&client, "dlq", "").await, 2);
    assert_eq!(counts(&client, "dlq").await, Counts::EMPTY);

    for (queue, original) in [("orders", order), ("invoices", invoice)] {
        let back = only(receive_now(&client, queue, 10, 30).await);
        assert_eq!(back.message_id, original.message_id, "{queue}");
        assert_eq!(back.body, original.body, "{queue}");
        assert_eq!(back.attributes, string_map(&[("origin", queue)]));
        assert_eq!(back.sent_at_ms, original.sent_at_ms, "{queue}");
        assert_eq!(
            back.receive_count, 1,
            "{queue}: the receive count starts over"
        );
        // The handle from before the trip through the dead-letter queue is
        // of an older receive, even though the count started over.
        let stale = delete_message(&client, queue, &original.receipt_handle).await;
        assert!(
            stale
                .as_ref()
                .is_err_and(|e| e.code() == Code::FailedPrecondition)
                || stale.is_ok(),
            "{queue}: {stale:?}"
        );
        assert_eq!(
            counts(&client, queue).await,
            Counts::new(0, 1, 0),
            "{queue}: a stale handle deletes nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redrive_to_a_destination_queue_resets_the_receive_count() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 2)).await;
    create_queue(&client, "retry", attributes()).await;
    let original = dead_letter(&client, "orders", 2, "order").await;

    assert_eq!(redrive(&client, "dlq", "retry").await, 1);
    assert_eq!(counts(&client, "orders").await, Counts::EMPTY);
    let back = only(receive_now(&client, "retry", 10, 30).await);
    assert_eq!(back.message_id, original.message_id);
    assert_eq!(back.body, "order");
    assert_eq!(back.receive_count, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn redrive_moves_at_most_max_messages() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 1)).await;
    for i in 0..3 {
        dead_letter(&client, "orders", 1, &format!("m{i}")).await;
    }
    let redrive = |max_messages| pb::RedriveMessagesRequest {
        source_queue: "dlq".into(),
        destination_queue: String::new(),
        max_messages,
    };
    assert_eq!(
        client
            .redrive_messages(redrive(2))
            .await
            .expect("redrive")
            .moved,
        2
    );
    assert_eq!(counts(&client, "dlq").await, Counts::new(1, 0, 0));
    assert_eq!(counts(&client, "orders").await, Counts::new(2, 0, 0));
    assert_eq!(
        client
            .redrive_messages(redrive(0))
            .await
            .expect("redrive")
            .moved,
        1
    );
    assert_eq!(
        client
            .redrive_messages(redrive(0))
            .await
            .expect("redrive")
            .moved,
        0
    );
    assert_eq!(counts(&client, "orders").await, Counts::new(3, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn redrive_from_or_to_an_unknown_queue_is_not_found() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("dlq", 1)).await;
    dead_letter(&client, "orders", 1, "m").await;

    let result = client
        .redrive_messages(pb::RedriveMessagesRequest {
            source_queue: "missing".into(),
            destination_queue: String::new(),
            max_messages: 0,
        })
        .await;
    assert_error(result, Code::NotFound, &["missing"]);
    let result = client
        .redrive_messages(pb::RedriveMessagesRequest {
            source_queue: "dlq".into(),
            destination_queue: "nowhere".into(),
            max_messages: 0,
        })
        .await;
    assert_error(result, Code::NotFound, &["nowhere"]);
    assert_eq!(
        counts(&client, "dlq").await,
        Counts::new(1, 0, 0),
        "nothing moved"
    );
}
