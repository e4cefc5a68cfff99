//! Caps on queued messages: a queue's `max_messages` attribute and the
//! broker's `--max-messages`. A call that would pass a cap is refused with
//! RESOURCE_EXHAUSTED naming it and writes nothing; receiving and deleting
//! make room again; dead letters are never refused.

use broker_tests::*;

fn capped(max_messages: u32) -> pb::QueueAttributes {
    pb::QueueAttributes {
        max_messages: Some(max_messages),
        ..Default::default()
    }
}

async fn send_one(client: &Client, queue: &str, body: &str) -> Result<(), Error> {
    client
        .send_message(send_request(queue, body.to_string(), &[], None))
        .await
        .map(|_| ())
}

async fn publish(client: &Client, topic: &str, body: &str) -> Result<u32, Error> {
    client
        .publish_message(pb::PublishRequest {
            topic: topic.to_string(),
            body: body.to_string().into(),
            ..Default::default()
        })
        .await
        .map(|r| r.delivered)
}

async fn topic_into(client: &Client, topic: &str, queues: &[&str]) {
    client
        .create_topic(pb::CreateTopicRequest {
            name: topic.to_string(),
        })
        .await
        .expect("CreateTopic");
    for queue in queues {
        client
            .subscribe(pb::SubscribeRequest {
                topic: topic.to_string(),
                queue: queue.to_string(),
                filter_policy: String::new(),
                raw_delivery: true,
            })
            .await
            .expect("Subscribe");
    }
}

/// Receives and deletes everything visible in `queue`.
async fn empty(client: &Client, queue: &str) {
    for m in drain(client, queue).await {
        delete_message(client, queue, &m.receipt_handle)
            .await
            .expect("DeleteMessage");
    }
}

fn total(c: Counts) -> u64 {
    c.visible + c.in_flight + c.delayed
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_at_max_messages_refuses_sends_and_publishes_until_a_delete_makes_room() {
    let (_server, client) = server_with_queue("orders", capped(3)).await;
    assert_eq!(
        queue_attributes(&client, "orders").await.max_messages,
        Some(3)
    );
    create_queue(&client, "audit", attributes()).await;
    send_batch(&client, "orders", ["a", "b"]).await;

    // A batch that does not fit is refused whole: nothing of it is written.
    let over = client
        .send_message_batch(pb::SendMessageBatchRequest {
            queue: "orders".into(),
            entries: ["c", "d"]
                .iter()
                .enumerate()
                .map(|(i, body)| pb::SendMessageBatchEntry {
                    id: i.to_string(),
                    body: body.to_string().into(),
                    ..Default::default()
                })
                .collect(),
        })
        .await;
    assert_error(
        over,
        Code::ResourceExhausted,
        &["\"orders\"", "holds 2 and", "max_messages is 3", "adds 2"],
    );
    assert_eq!(total(counts(&client, "orders").await), 2);

    send_one(&client, "orders", "c")
        .await
        .expect("the third fits");
    assert_error(
        send_one(&client, "orders", "d").await,
        Code::ResourceExhausted,
        &["max_messages is 3"],
    );

    // A publish whose copy one queue cannot take is refused for all of
    // them: the other subscribed queue gets nothing either.
    topic_into(&client, "events", &["orders", "audit"]).await;
    assert_error(
        publish(&client, "events", "e").await,
        Code::ResourceExhausted,
        &["\"orders\"", "max_messages is 3"],
    );
    assert_eq!(total(counts(&client, "audit").await), 0);

    // In-flight messages still count; a delete makes room.
    let received = receive_now(&client, "orders", 1, 30).await;
    assert_error(
        send_one(&client, "orders", "d").await,
        Code::ResourceExhausted,
        &["holds 3 and"],
    );
    delete_message(&client, "orders", &only(received).receipt_handle)
        .await
        .expect("DeleteMessage");
    assert_eq!(
        publish(&client, "events", "e").await.expect("room again"),
        2
    );

    // Raising the cap (0: none) lets sends through again.
    client
        .update_queue(pb::UpdateQueueRequest {
            name: "orders".into(),
            attributes: Some(capped(0)),
        })
        .await
        .expect("UpdateQueue");
    send_batch(&client, "orders", ["f", "g", "h"]).await;
    assert_eq!(total(counts(&client, "orders").await), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_never_refused_but_a_redrive_into_a_full_queue_is() {
    let (_server, client) = server_with_queue("dlq", capped(1)).await;
    create_queue(
        &client,
        "work",
        pb::QueueAttributes {
            max_messages: Some(2),
            ..redrive_to("dlq", 1)
        },
    )
    .await;
    send_batch(&client, "work", ["a", "b"]).await;
    // Each message is received once, released, and moved to the full
    // dead-letter queue by the next receive: the DLQ goes over its cap.
    receive_now(&client, "work", 10, 0).await;
    let moved = receive_now(&client, "work", 10, 0).await;
    assert!(moved.is_empty(), "dead-lettered, not returned: {moved:?}");
    assert_eq!(total(counts(&client, "dlq").await), 2);
    assert_error(
        send_one(&client, "dlq", "x").await,
        Code::ResourceExhausted,
        &["\"dlq\"", "holds 2 and", "max_messages is 1"],
    );

    // Back to a queue that holds one and may hold two: refused whole.
    send_one(&client, "work", "c").await.expect("room in work");
    let refused = client
        .redrive_messages(pb::RedriveMessagesRequest {
            source_queue: "dlq".into(),
            destination_queue: "work".into(),
            max_messages: 0,
        })
        .await;
    assert_error(
        refused,
        Code::ResourceExhausted,
        &["\"work\"", "holds 1 and", "adds 2", "max_messages is 2"],
    );
    assert_eq!(total(counts(&client, "dlq").await), 2);
    empty(&client, "work").await;
    assert_eq!(redrive(&client, "dlq", "work").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_cap_counts_the_messages_of_every_queue() {
    let server = TestServer::start_with(|c| c.limits.max_messages = 4).await;
    let client = server.client().await;
    for queue in ["a", "b"] {
        create_queue(&client, queue, attributes()).await;
    }
    send_batch(&client, "a", ["1", "2"]).await;
    send_one(&client, "b", "3").await.expect("the third fits");
    // A publish adds one message per copy.
    topic_into(&client, "t", &["a", "b"]).await;
    assert_error(
        publish(&client, "t", "x").await,
        Code::ResourceExhausted,
        &[
            "the broker is full: it holds 3 messages",
            "--max-messages",
            "is 4",
            "adds 2",
        ],
    );
    send_one(&client, "a", "4").await.expect("the fourth fits");
    assert_error(
        send_one(&client, "b", "5").await,
        Code::ResourceExhausted,
        &["holds 4 messages"],
    );
    // Receives and deletes make room.
    empty(&client, "a").await;
    assert_eq!(publish(&client, "t", "x").await.expect("room again"), 2);
}
