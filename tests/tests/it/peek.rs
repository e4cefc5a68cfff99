//! PeekMessages: a read-only look at a queue's messages (a dead-letter
//! queue's too): no receive count, visibility or receipt handle changes;
//! queue order, paging, states, and validation.

use broker_tests::limits::PEEK_MESSAGES_MAX;
use broker_tests::*;

fn peek_request(queue: &str, max_messages: u32, page_token: &str) -> pb::PeekMessagesRequest {
    pb::PeekMessagesRequest {
        queue: queue.to_string(),
        max_messages,
        page_token: page_token.to_string(),
    }
}

/// One page of a peek, panicking on failure.
async fn peek(
    client: &Client,
    queue: &str,
    max_messages: u32,
    page_token: &str,
) -> pb::PeekMessagesResponse {
    client
        .peek_messages(peek_request(queue, max_messages, page_token))
        .await
        .unwrap_or_else(|e| panic!("PeekMessages {queue}: {e:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn peek_changes_neither_receive_count_nor_visibility() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    let first = send_message(&client, "orders", "one", &[("k", "v")], None).await;
    let second = send_message(&client, "orders", "two", &[], None).await;

    for _ in 0..3 {
        let page = peek(&client, "orders", 10, "").await;
        let ids: Vec<&str> = page
            .messages
            .iter()
            .map(|m| m.message_id.as_str())
            .collect();
        assert_eq!(ids, [first.as_str(), second.as_str()]);
        let m = &page.messages[0];
        assert_eq!(m.state(), pb::MessageState::Visible);
        assert_eq!((m.receive_count, m.first_received_at_ms), (0, 0));
        assert_eq!(m.body, "one");
        assert_eq!(m.attributes, string_map(&[("k", "v")]));
        assert!(m.sent_at_ms > 0 && m.visible_at_ms >= m.sent_at_ms);
        assert!(m.dead_letter_source.is_empty());
        assert!(page.next_page_token.is_empty());
    }
    assert_eq!(counts(&client, "orders").await, Counts::new(2, 0, 0));

    // Peeked three times, received once: the receive count is 1.
    let received = only(receive_now(&client, "orders", 1, 30).await);
    assert_eq!(received.message_id, first);
    assert_eq!(received.receive_count, 1);

    let before = now_ms();
    let page = peek(&client, "orders", 10, "").await;
    assert_eq!(page.messages.len(), 2, "in-flight messages are shown too");
    let in_flight = &page.messages[0];
    assert_eq!(in_flight.message_id, first);
    assert_eq!(in_flight.state(), pb::MessageState::InFlight);
    assert_eq!(in_flight.receive_count, 1);
    assert_eq!(
        in_flight.first_received_at_ms,
        received.first_received_at_ms
    );
    assert!(
        in_flight.visible_at_ms >= before + 25_000,
        "hidden for its 30 s visibility timeout: {in_flight:?}"
    );
    assert_eq!(page.messages[1].state(), pb::MessageState::Visible);

    // Still in flight after the peek: the next receive takes the other
    // message, and the receipt handle of the first is still the current one.
    assert_eq!(counts(&client, "orders").await, Counts::new(1, 1, 0));
    let next = only(receive_now(&client, "orders", 10, 30).await);
    assert_eq!(
        (next.message_id.as_str(), next.receive_count),
        (second.as_str(), 1)
    );
    change_visibility(&client, "orders", &received.receipt_handle, 0)
        .await
        .expect("the handle survives a peek");
    delete_message(&client, "orders", &received.receipt_handle)
        .await
        .expect("the handle survives a peek");
    let page = peek(&client, "orders", 10, "").await;
    assert_eq!(
        page.messages.len(),
        1,
        "a deleted message is gone: {page:?}"
    );
    assert_eq!(page.messages[0].message_id, second);
}

#[tokio::test(flavor = "multi_thread")]
async fn peek_shows_delayed_messages_and_when_they_become_visible() {
    let (_server, client) = server_with_queue("later", attributes()).await;
    send_message(&client, "later", "soon", &[], Some(60)).await;

    let page = peek(&client, "later", 0, "").await;
    let m = &page.messages[0];
    assert_eq!(m.state(), pb::MessageState::Delayed);
    assert_eq!(m.receive_count, 0);
    assert_eq!(m.visible_at_ms, m.sent_at_ms + 60_000);
    assert_eq!(counts(&client, "later").await, Counts::new(0, 0, 1));
    assert!(receive_now(&client, "later", 10, 30).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn peek_of_a_dead_letter_queue_names_the_source_and_moves_nothing() {
    let (_server, client) = server_with_queue("orders-dlq", attributes()).await;
    create_queue(&client, "orders", redrive_to("orders-dlq", 1)).await;
    let id = send_message(&client, "orders", vec![0u8, 255], &[("kind", "x")], None).await;

    only(receive_now(&client, "orders", 10, 0).await);
    // Received once already: a receive would move it now; a peek must not.
    let page = peek(&client, "orders", 10, "").await;
    assert_eq!(page.messages[0].receive_count, 1);
    assert_eq!(page.messages[0].state(), pb::MessageState::Visible);
    assert_eq!(counts(&client, "orders-dlq").await, Counts::EMPTY);

    assert!(receive_now(&client, "orders", 10, 0).await.is_empty());
    assert!(peek(&client, "orders", 10, "").await.messages.is_empty());
    let page = peek(&client, "orders-dlq", 10, "").await;
    let dead = &page.messages[0];
    assert_eq!(dead.message_id, id);
    assert_eq!(dead.dead_letter_source, "orders");
    assert_eq!(dead.body, vec![0u8, 255]);
    assert_eq!(dead.attributes, string_map(&[("kind", "x")]));
    assert_eq!(dead.receive_count, 1);
    assert_eq!(dead.state(), pb::MessageState::Visible);
    assert_eq!(counts(&client, "orders-dlq").await, Counts::new(1, 0, 0));

    // Redrive after peeking moves it back with its count reset.
    assert_eq!(redrive(&client, "orders-dlq", "").await, 1);
    let back = &peek(&client, "orders", 10, "").await.messages[0];
    assert_eq!(
        (back.message_id.as_str(), back.receive_count),
        (id.as_str(), 0)
    );
    assert!(back.dead_letter_source.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn peek_pages_through_the_queue_in_order() {
    let (_server, client) = server_with_queue("big", attributes()).await;
    let mut sent = send_numbered(&client, "big", 25).await;

    let first = peek(&client, "big", 0, "").await;
    assert_eq!(first.messages.len(), 10, "max_messages 0 means 10");
    assert!(!first.next_page_token.is_empty());
    let mut seen: Vec<String> = first.messages.into_iter().map(|m| m.message_id).collect();
    // A message sent while paging shows at the end, not twice or never.
    sent.push(send_message(&client, "big", "late", &[], None).await);
    let mut token = first.next_page_token;
    let mut pages = 1;
    while !token.is_empty() {
        let page = peek(&client, "big", 7, &token).await;
        assert!(page.messages.len() <= 7);
        seen.extend(page.messages.into_iter().map(|m| m.message_id));
        token = page.next_page_token;
        pages += 1;
    }
    assert_eq!(seen, sent);
    assert_eq!(pages, 1 + 3, "10, then 7 + 7 + 2 of 26");

    // A page that ends exactly at the last message has no next page.
    let page = peek(&client, "big", 100, "").await;
    assert_eq!(page.messages.len(), 26);
    assert!(page.next_page_token.is_empty());
    assert_eq!(counts(&client, "big").await, Counts::new(26, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn peek_of_an_empty_queue_is_an_empty_last_page() {
    let (_server, client) = server_with_queue("empty", attributes()).await;
    let page = peek(&client, "empty", 100, "").await;
    assert!(page.messages.is_empty() && page.next_page_token.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn peek_rejects_bad_arguments_and_unknown_queues() {
    let (_server, client) = server_with_queue("a", attributes()).await;
    create_queue(&client, "b", attributes()).await;
    send_numbered(&client, "a", 3).await;
    send_numbered(&client, "b", 3).await;

    let max = PEEK_MESSAGES_MAX;
    assert_error(
        client.peek_messages(peek_request("a", max + 1, "")).await,
        Code::InvalidArgument,
        &[
            "max_messages",
            &format!("1..={max}"),
            &(max + 1).to_string(),
        ],
    );
    assert_error(
        client
            .peek_messages(peek_request("a", 10, "not-a-token"))
            .await,
        Code::InvalidArgument,
        &["page_token", "malformed"],
    );
    let token_of_a = peek(&client, "a", 1, "").await.next_page_token;
    assert_error(
        client
            .peek_messages(peek_request("b", 10, &token_of_a))
            .await,
        Code::InvalidArgument,
        &["page_token", "another queue", "\"b\""],
    );
    assert_error(
        client.peek_messages(peek_request("nope", 10, "")).await,
        Code::NotFound,
        &["nope"],
    );
    assert_error(
        client
            .peek_messages(peek_request("bad name!", 10, ""))
            .await,
        Code::InvalidArgument,
        &["name"],
    );
    // A token of a deleted queue does not page through its namesake.
    client
        .delete_queue(pb::DeleteQueueRequest { name: "a".into() })
        .await
        .expect("DeleteQueue");
    create_queue(&client, "a", attributes()).await;
    assert_error(
        client
            .peek_messages(peek_request("a", 10, &token_of_a))
            .await,
        Code::InvalidArgument,
        &["page_token"],
    );
}
