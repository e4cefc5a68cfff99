//! Topics over real gRPC: CreateTopic, GetTopic, ListTopics, DeleteTopic,
//! Subscribe, Unsubscribe, ListSubscriptions, Publish and PublishBatch.
//!
//! What a publish promises: a copy in every subscribed queue whose filter
//! policy matches, all or nothing, each copy an ordinary message of its queue
//! with the publish's message id; raw copies carry body and attributes as
//! they are, envelope copies an SNS-style JSON notification.

use std::collections::{HashMap, HashSet};

use broker_tests::limits::{ATTRIBUTES_MAX, BATCH_ENTRIES_MAX, NAME_LEN_MAX, PAGE_SIZE_MAX};
use broker_tests::*;
use bytes::Bytes;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Helpers

/// Creates a topic, panicking on failure.
async fn create_topic(client: &Client, name: &str) -> pb::Topic {
    client
        .create_topic(pb::CreateTopicRequest {
            name: name.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateTopic {name}: {e:?}"))
        .topic
        .expect("CreateTopic returns the topic")
}

/// A topic's subscription count, panicking on failure.
async fn subscription_count(client: &Client, topic: &str) -> u32 {
    client
        .get_topic(pb::GetTopicRequest {
            name: topic.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("GetTopic {topic}: {e:?}"))
        .subscription_count
}

fn subscribe_request(topic: &str, queue: &str, filter: &str, raw: bool) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        topic: topic.to_string(),
        queue: queue.to_string(),
        filter_policy: filter.to_string(),
        raw_delivery: raw,
    }
}

/// Subscribes `queue` to `topic`, panicking on failure.
async fn subscribe(
    client: &Client,
    topic: &str,
    queue: &str,
    filter: &str,
    raw: bool,
) -> pb::Subscription {
    client
        .subscribe(subscribe_request(topic, queue, filter, raw))
        .await
        .unwrap_or_else(|e| panic!("Subscribe {queue} to {topic} with {filter:?}: {e:?}"))
        .subscription
        .expect("Subscribe returns the subscription")
}

/// A topic with a raw, unfiltered subscription for each of `queues`, which
/// are created with default attributes.
async fn topic_with_queues(client: &Client, topic: &str, queues: &[&str]) {
    create_topic(client, topic).await;
    for queue in queues {
        create_queue(client, queue, attributes()).await;
        subscribe(client, topic, queue, "", true).await;
    }
}

fn publish_request(
    topic: &str,
    body: impl Into<Bytes>,
    attrs: &[(&str, &str)],
) -> pb::PublishRequest {
    pb::PublishRequest {
        topic: topic.to_string(),
        body: body.into(),
        attributes: string_map(attrs),
    }
}

/// Publishes, panicking on failure.
async fn publish(
    client: &Client,
    topic: &str,
    body: impl Into<Bytes>,
    attrs: &[(&str, &str)],
) -> pb::PublishResponse {
    client
        .publish_message(publish_request(topic, body, attrs))
        .await
        .unwrap_or_else(|e| panic!("Publish to {topic} with {attrs:?}: {e:?}"))
}

/// Every subscription (of `topic` and/or `queue` when not empty).
async fn list_subscriptions(client: &Client, topic: &str, queue: &str) -> Vec<pb::Subscription> {
    client
        .list_all_subscriptions(pb::ListSubscriptionsRequest {
            topic: topic.to_string(),
            queue: queue.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("ListSubscriptions topic={topic:?} queue={queue:?}: {e:?}"))
}

/// (topic, queue) of each subscription, sorted.
fn pairs(subscriptions: &[pb::Subscription]) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = subscriptions
        .iter()
        .map(|s| (s.topic.clone(), s.queue.clone()))
        .collect();
    pairs.sort();
    pairs
}

/// The bodies of everything visible in `queue`, sorted.
async fn bodies(client: &Client, queue: &str) -> Vec<Bytes> {
    let mut bodies: Vec<_> = drain(client, queue)
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    bodies.sort();
    bodies
}

/// Messages in a queue, whatever their state.
async fn depth(client: &Client, queue: &str) -> u64 {
    let c = counts(client, queue).await;
    c.visible + c.in_flight + c.delayed
}

/// An envelope copy's body as JSON.
#[track_caller]
fn envelope(message: &pb::ReceivedMessage) -> Value {
    serde_json::from_slice(&message.body).unwrap_or_else(|e| {
        panic!(
            "an envelope copy is JSON ({e}): {:?}",
            String::from_utf8_lossy(&message.body)
        )
    })
}

/// Standard base64 with padding (RFC 4648).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp in UTC
/// ("2025-01-02T03:04:05.678Z", fraction optional, "Z" or "+00:00").
fn parse_rfc3339_utc(text: &str) -> Option<u64> {
    let (date, time) = text.split_once('T')?;
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    if !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let millis: u64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis)
}

#[test]
fn rfc3339_parser_reads_utc_timestamps() {
    assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00.001Z"), Some(1));
    assert_eq!(
        parse_rfc3339_utc("2025-01-02T03:04:05.678Z"),
        Some(1_735_787_045_678)
    );
    assert_eq!(
        parse_rfc3339_utc("2000-02-29T00:00:00+00:00"),
        Some(951_782_400_000)
    );
    assert_eq!(parse_rfc3339_utc("2025-01-02 03:04:05Z"), None);
    assert_eq!(parse_rfc3339_utc("2025-13-02T03:04:05Z"), None);
}

// ---------------------------------------------------------------------------
// CreateTopic, GetTopic, ListTopics, DeleteTopic

#[tokio::test(flavor = "multi_thread")]
async fn create_topic_is_idempotent() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let before = now_ms();
    let first = create_topic(&client, "payments").await;
    assert_eq!(first.name, "payments");
    assert!(
        first.created_at_ms >= before - 1000 && first.created_at_ms <= now_ms() + 1000,
        "created_at_ms {} is not now",
        first.created_at_ms
    );
    let again = create_topic(&client, "payments").await;
    assert_eq!(first, again, "the existing topic, unchanged");
    let listed = client
        .list_topics(pb::ListTopicsRequest::default())
        .await
        .expect("ListTopics");
    assert_eq!(listed.topics, [first]);
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_names_follow_the_queue_name_rules() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for name in ["a", "Az09_-", &"n".repeat(NAME_LEN_MAX)] {
        assert_eq!(create_topic(&client, name).await.name, name);
    }
    let too_long = "n".repeat(NAME_LEN_MAX + 1);
    for name in ["", too_long.as_str(), "a.b", "a b", "a/b", "émile", "q\n"] {
        let result = client
            .create_topic(pb::CreateTopicRequest {
                name: name.to_string(),
            })
            .await;
        assert_error(result, Code::InvalidArgument, &["name"]);
    }
    let result = client
        .create_topic(pb::CreateTopicRequest { name: too_long })
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &["name", &NAME_LEN_MAX.to_string()],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_topic_rpc_answers_bad_names_with_a_client_error() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "q", attributes()).await;
    let too_long = "n".repeat(81);
    for name in ["", "bad name", "../etc", too_long.as_str(), "missing"] {
        let n = name.to_string();
        let results: Vec<(&str, Result<(), Error>)> = vec![
            (
                "GetTopic",
                client
                    .get_topic(pb::GetTopicRequest { name: n.clone() })
                    .await
                    .map(drop),
            ),
            (
                "DeleteTopic",
                client
                    .delete_topic(pb::DeleteTopicRequest { name: n.clone() })
                    .await
                    .map(drop),
            ),
            (
                "Subscribe (topic)",
                client
                    .subscribe(subscribe_request(name, "q", "", false))
                    .await
                    .map(drop),
            ),
            (
                "Subscribe (queue)",
                client
                    .subscribe(subscribe_request("payments", name, "", false))
                    .await
                    .map(drop),
            ),
            (
                "Publish",
                client
                    .publish_message(publish_request(name, "x", &[]))
                    .await
                    .map(drop),
            ),
            (
                "PublishBatch",
                client
                    .publish_batch(pb::PublishBatchRequest {
                        topic: n.clone(),
                        entries: vec![pb::PublishBatchEntry {
                            id: "a".into(),
                            body: "x".into(),
                            ..Default::default()
                        }],
                    })
                    .await
                    .map(drop),
            ),
        ];
        for (rpc, result) in results {
            let error = result.expect_err(rpc);
            let expected = if name == "missing" {
                Code::NotFound
            } else {
                Code::InvalidArgument
            };
            assert!(
                error.code() == expected,
                "{rpc} with name {name:?}: {error:?}"
            );
        }
    }
    assert_eq!(subscription_count(&client, "payments").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_topic_counts_its_subscriptions() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let created = create_topic(&client, "payments").await;
    let got = client
        .get_topic(pb::GetTopicRequest {
            name: "payments".into(),
        })
        .await
        .expect("GetTopic");
    assert_eq!(got.topic, Some(created));
    assert_eq!(got.subscription_count, 0);

    create_queue(&client, "email", attributes()).await;
    create_queue(&client, "sms", attributes()).await;
    let email = subscribe(&client, "payments", "email", "", false).await;
    subscribe(&client, "payments", "sms", "", true).await;
    assert_eq!(subscription_count(&client, "payments").await, 2);
    client
        .unsubscribe(pb::UnsubscribeRequest {
            subscription_id: email.id,
        })
        .await
        .expect("Unsubscribe");
    assert_eq!(subscription_count(&client, "payments").await, 1);

    let result = client
        .get_topic(pb::GetTopicRequest {
            name: "missing".into(),
        })
        .await;
    assert_error(result, Code::NotFound, &["missing"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_topics_pages_in_name_order_filtered_by_prefix() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for name in [
        "page-4", "page-0", "other", "page-6", "page-2", "page-1", "page-5", "page-3", "zzz",
    ] {
        create_topic(&client, name).await;
    }
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_topics(pb::ListTopicsRequest {
                prefix: "page-".into(),
                page_size: 3,
                page_token: token,
            })
            .await
            .expect("ListTopics");
        pages.push(
            page.topics
                .iter()
                .map(|t| t.name.clone())
                .collect::<Vec<_>>(),
        );
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages.len() < 10, "ListTopics does not terminate: {pages:?}");
    }
    assert_eq!(
        pages,
        vec![
            vec!["page-0", "page-1", "page-2"],
            vec!["page-3", "page-4", "page-5"],
            vec!["page-6"],
        ]
    );

    let all = client
        .list_topics(pb::ListTopicsRequest::default())
        .await
        .expect("ListTopics");
    assert_eq!(all.topics.len(), 9);
    assert!(all.next_page_token.is_empty());
    assert_eq!(all.topics[0].name, "other");

    let result = client
        .list_topics(pb::ListTopicsRequest {
            page_size: PAGE_SIZE_MAX + 1,
            ..Default::default()
        })
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &[
            "page_size",
            &PAGE_SIZE_MAX.to_string(),
            &(PAGE_SIZE_MAX + 1).to_string(),
        ],
    );
}

/// `Client::list_all_topics` and `Client::list_all_subscriptions`: every
/// page of a listing, with its filters.
#[tokio::test(flavor = "multi_thread")]
async fn list_all_topics_and_subscriptions_follow_every_page() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["email", "sms", "push"]).await;
    topic_with_queues(&client, "refunds", &["audit"]).await;
    subscribe(&client, "refunds", "email", "", true).await;
    create_topic(&client, "pay-later").await;

    let topics = client
        .list_all_topics(pb::ListTopicsRequest {
            prefix: "pay".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("list_all_topics");
    let names: Vec<_> = topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["pay-later", "payments"]);

    let listing = |topic: &str, queue: &str| pb::ListSubscriptionsRequest {
        topic: topic.into(),
        queue: queue.into(),
        page_size: 2,
        page_token: String::new(),
    };
    let all = client
        .list_all_subscriptions(listing("", ""))
        .await
        .expect("list_all_subscriptions");
    let one_page = client
        .list_subscriptions(pb::ListSubscriptionsRequest::default())
        .await
        .expect("ListSubscriptions");
    assert!(one_page.next_page_token.is_empty());
    assert_eq!(all, one_page.subscriptions);
    assert_eq!(all.len(), 5);
    let of_payments = client
        .list_all_subscriptions(listing("payments", ""))
        .await
        .expect("list_all_subscriptions of a topic");
    assert_eq!(
        pairs(&of_payments),
        [
            ("payments".to_owned(), "email".to_owned()),
            ("payments".to_owned(), "push".to_owned()),
            ("payments".to_owned(), "sms".to_owned()),
        ]
    );
    let of_email = client
        .list_all_subscriptions(listing("", "email"))
        .await
        .expect("list_all_subscriptions of a queue");
    assert_eq!(
        pairs(&of_email),
        [
            ("payments".to_owned(), "email".to_owned()),
            ("refunds".to_owned(), "email".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_topic_removes_its_subscriptions_and_keeps_the_queues_and_copies() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["email", "sms"]).await;
    topic_with_queues(&client, "other", &["audit"]).await;
    subscribe(&client, "other", "email", "", true).await;
    let published = publish(&client, "payments", "paid", &[]).await;
    assert_eq!(published.delivered, 2);

    client
        .delete_topic(pb::DeleteTopicRequest {
            name: "payments".into(),
        })
        .await
        .expect("DeleteTopic");

    let get = client
        .get_topic(pb::GetTopicRequest {
            name: "payments".into(),
        })
        .await;
    assert_error(get, Code::NotFound, &["payments"]);
    let result = client
        .publish_message(publish_request("payments", "x", &[]))
        .await;
    assert_error(result, Code::NotFound, &["payments"]);
    let again = client
        .delete_topic(pb::DeleteTopicRequest {
            name: "payments".into(),
        })
        .await;
    assert_error(again, Code::NotFound, &["payments"]);
    // Only the other topic's subscriptions are left.
    assert_eq!(
        pairs(&list_subscriptions(&client, "", "").await),
        [
            ("other".to_string(), "audit".to_string()),
            ("other".to_string(), "email".to_string())
        ]
    );
    // The queues stay, with the copies already delivered.
    for queue in ["email", "sms"] {
        let message = only(receive_now(&client, queue, 10, 30).await);
        assert_eq!(message.message_id, published.message_id);
        assert_eq!(message.body, "paid");
    }
    // A topic created again under the name starts without subscriptions.
    create_topic(&client, "payments").await;
    assert_eq!(subscription_count(&client, "payments").await, 0);
    assert_eq!(publish(&client, "payments", "x", &[]).await.delivered, 0);
}

// ---------------------------------------------------------------------------
// Subscribe, Unsubscribe, ListSubscriptions

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_returns_the_subscription_as_given() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "sms", attributes()).await;
    let policy = r#"{"country": ["IN", "BR"]}"#;
    let subscription = subscribe(&client, "payments", "sms", policy, true).await;
    assert!(!subscription.id.is_empty());
    assert_eq!(subscription.topic, "payments");
    assert_eq!(subscription.queue, "sms");
    assert_eq!(subscription.filter_policy, policy);
    assert!(subscription.raw_delivery);
    assert_eq!(list_subscriptions(&client, "", "").await, [subscription]);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_to_a_missing_topic_or_queue_is_not_found() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "email", attributes()).await;
    let result = client
        .subscribe(subscribe_request("nope", "email", "", false))
        .await;
    assert_error(result, Code::NotFound, &["nope"]);
    let result = client
        .subscribe(subscribe_request("payments", "missing", "", false))
        .await;
    assert_error(result, Code::NotFound, &["missing"]);
    assert_eq!(subscription_count(&client, "payments").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_is_idempotent_with_equal_settings() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "sms", attributes()).await;
    let policy = r#"{"country": ["IN"]}"#;
    let first = subscribe(&client, "payments", "sms", policy, true).await;
    let again = subscribe(&client, "payments", "sms", policy, true).await;
    assert_eq!(first, again, "the existing subscription");
    assert_eq!(subscription_count(&client, "payments").await, 1);
    // One subscription, so one copy.
    let published = publish(&client, "payments", "x", &[("country", "IN")]).await;
    assert_eq!(published.delivered, 1);
    assert_eq!(depth(&client, "sms").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_with_other_settings_is_already_exists() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "sms", attributes()).await;
    let policy = r#"{"country": ["IN"]}"#;
    let original = subscribe(&client, "payments", "sms", policy, true).await;
    for (filter, raw) in [
        (r#"{"country": ["BR"]}"#, true),
        ("", true),
        (policy, false),
    ] {
        let result = client
            .subscribe(subscribe_request("payments", "sms", filter, raw))
            .await;
        assert_error(result, Code::AlreadyExists, &[]);
    }
    assert_eq!(list_subscriptions(&client, "", "").await, [original]);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_filter_policy_is_invalid_argument() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "sms", attributes()).await;
    for policy in [
        "not json",
        "[]",
        r#""country""#,
        r#"{"country": "IN"}"#,
        r#"{"country": [{"prefixx": "I"}]}"#,
        r#"{"country": [{"prefix": 1}]}"#,
        r#"{"amount": [{"numeric": [">", "ten"]}]}"#,
        r#"{"amount": [{"numeric": ["~", 10]}]}"#,
        r#"{"coupon": [{"exists": "yes"}]}"#,
        r#"{"$or": "nope"}"#,
        r#"{"country": ["IN"]"#,
    ] {
        let result = client
            .subscribe(subscribe_request("payments", "sms", policy, false))
            .await;
        let error = assert_error(result, Code::InvalidArgument, &[]);
        assert!(
            error.message().starts_with("filter_policy"),
            "the message for {policy} should start with \"filter_policy\": {:?}",
            error.message()
        );
    }
    assert_eq!(subscription_count(&client, "payments").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unsubscribe_stops_the_copies_and_unknown_ids_are_not_found() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["email"]).await;
    let subscription = list_subscriptions(&client, "payments", "").await.remove(0);
    client
        .unsubscribe(pb::UnsubscribeRequest {
            subscription_id: subscription.id.clone(),
        })
        .await
        .expect("Unsubscribe");
    assert!(list_subscriptions(&client, "", "").await.is_empty());
    assert_eq!(publish(&client, "payments", "x", &[]).await.delivered, 0);
    assert_eq!(depth(&client, "email").await, 0);

    let again = client
        .unsubscribe(pb::UnsubscribeRequest {
            subscription_id: subscription.id.clone(),
        })
        .await;
    assert_error(again, Code::NotFound, &[&subscription.id]);
    let unknown = client
        .unsubscribe(pb::UnsubscribeRequest {
            subscription_id: "7fffffffffffffff".into(),
        })
        .await;
    assert_error(unknown, Code::NotFound, &[]);
    // A malformed id is refused as such.
    let malformed = client
        .unsubscribe(pb::UnsubscribeRequest {
            subscription_id: "no such id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");

    // The queue can subscribe again, with other settings too.
    let renewed = subscribe(&client, "payments", "email", r#"{"k": ["v"]}"#, false).await;
    assert_ne!(renewed.id, subscription.id, "a new subscription");
    assert_eq!(
        publish(&client, "payments", "x", &[("k", "v")])
            .await
            .delivered,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_subscriptions_by_topic_by_queue_and_in_pages() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "t1", &["q1", "q2", "q3"]).await;
    create_topic(&client, "t2").await;
    subscribe(&client, "t2", "q1", "", false).await;
    create_topic(&client, "t3").await;

    let p = |t: &str, q: &str| (t.to_string(), q.to_string());
    assert_eq!(
        pairs(&list_subscriptions(&client, "", "").await),
        [p("t1", "q1"), p("t1", "q2"), p("t1", "q3"), p("t2", "q1")]
    );
    assert_eq!(
        pairs(&list_subscriptions(&client, "t1", "").await),
        [p("t1", "q1"), p("t1", "q2"), p("t1", "q3")]
    );
    assert_eq!(
        pairs(&list_subscriptions(&client, "", "q1").await),
        [p("t1", "q1"), p("t2", "q1")]
    );
    assert_eq!(
        pairs(&list_subscriptions(&client, "t2", "q1").await),
        [p("t2", "q1")]
    );
    assert!(list_subscriptions(&client, "t3", "").await.is_empty());

    // Pages of one: every subscription exactly once.
    for (topic, queue, expected) in [("", "", 4), ("t1", "", 3), ("", "q1", 2)] {
        let mut paged = Vec::new();
        let mut page_token = String::new();
        for pages in 1.. {
            assert!(
                pages <= 100,
                "ListSubscriptions does not terminate: {paged:?}"
            );
            let page = client
                .list_subscriptions(pb::ListSubscriptionsRequest {
                    topic: topic.into(),
                    queue: queue.into(),
                    page_size: 1,
                    page_token,
                })
                .await
                .expect("ListSubscriptions");
            assert!(page.subscriptions.len() <= 1, "page_size 1: {page:?}");
            paged.extend(page.subscriptions);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let ids: HashSet<_> = paged.iter().map(|s| s.id.clone()).collect();
        assert_eq!(paged.len(), expected, "topic {topic:?} queue {queue:?}");
        assert_eq!(ids.len(), expected, "no duplicates: {paged:?}");
    }
    let result = client
        .list_subscriptions(pb::ListSubscriptionsRequest {
            page_size: PAGE_SIZE_MAX + 1,
            ..Default::default()
        })
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &[
            "page_size",
            &PAGE_SIZE_MAX.to_string(),
            &(PAGE_SIZE_MAX + 1).to_string(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_queue_removes_its_subscriptions() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["email", "sms"]).await;
    client
        .delete_queue(pb::DeleteQueueRequest {
            name: "email".into(),
        })
        .await
        .expect("DeleteQueue");
    assert_eq!(
        pairs(&list_subscriptions(&client, "", "").await),
        [("payments".to_string(), "sms".to_string())]
    );
    assert_eq!(subscription_count(&client, "payments").await, 1);
    assert_eq!(publish(&client, "payments", "x", &[]).await.delivered, 1);
    // A queue created again under the name is not subscribed.
    create_queue(&client, "email", attributes()).await;
    assert_eq!(publish(&client, "payments", "y", &[]).await.delivered, 1);
    assert_eq!(depth(&client, "email").await, 0);
    assert_eq!(depth(&client, "sms").await, 2);
}

// ---------------------------------------------------------------------------
// Publish: fan-out

#[tokio::test(flavor = "multi_thread")]
async fn publish_fans_out_to_every_queue_with_independent_acks() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["email", "sms", "notifications"]).await;
    let published = publish(&client, "payments", "paid", &[("country", "IN")]).await;
    assert_eq!(published.delivered, 3);
    assert!(!published.message_id.is_empty());

    // Each queue has its own copy, with the publish's message id.
    let email = only(receive_now(&client, "email", 10, 30).await);
    let sms = only(receive_now(&client, "sms", 10, 30).await);
    for copy in [&email, &sms] {
        assert_eq!(copy.message_id, published.message_id);
        assert_eq!(copy.body, "paid");
        assert_eq!(copy.attributes, string_map(&[("country", "IN")]));
        assert_eq!(copy.receive_count, 1);
    }
    // Acking one copy leaves the others.
    delete_message(&client, "email", &email.receipt_handle)
        .await
        .expect("delete the email copy");
    assert_eq!(counts(&client, "email").await, Counts::EMPTY);
    assert_eq!(counts(&client, "sms").await, Counts::new(0, 1, 0));
    assert_eq!(counts(&client, "notifications").await, Counts::new(1, 0, 0));
    // Releasing one copy does not touch the others either.
    change_visibility(&client, "sms", &sms.receipt_handle, 0)
        .await
        .expect("release the sms copy");
    let sms_again = only(receive_now(&client, "sms", 10, 30).await);
    assert_eq!(sms_again.receive_count, 2);
    let notification = only(receive_now(&client, "notifications", 10, 30).await);
    assert_eq!(notification.message_id, published.message_id);
    assert_eq!(notification.receive_count, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_without_subscribers_delivers_nothing_and_a_missing_topic_is_not_found() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "bystander", attributes()).await;
    let published = publish(&client, "payments", "into the void", &[]).await;
    assert_eq!(published.delivered, 0);
    assert!(!published.message_id.is_empty());
    assert_eq!(depth(&client, "bystander").await, 0);
    let result = client
        .publish_message(publish_request("missing", "x", &[]))
        .await;
    assert_error(result, Code::NotFound, &["missing"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_publish_convenience_sends_body_and_attributes() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["raw"]).await;
    let published = client
        .publish("payments", vec![1u8, 2, 3], string_map(&[("k", "v")]))
        .await
        .expect("Client::publish");
    assert_eq!(published.delivered, 1);
    let copy = only(receive_now(&client, "raw", 10, 30).await);
    assert_eq!(copy.message_id, published.message_id);
    assert_eq!(copy.body, vec![1u8, 2, 3]);
    assert_eq!(copy.attributes, string_map(&[("k", "v")]));
}

#[tokio::test(flavor = "multi_thread")]
async fn message_ids_of_publishes_are_unique() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["q"]).await;
    let mut ids = HashSet::new();
    for i in 0..50 {
        let published = publish(&client, "payments", format!("m{i}"), &[]).await;
        assert!(ids.insert(published.message_id), "duplicate id");
    }
}

/// Each copy follows its own queue's rules: delay, visibility timeout,
/// receive count and dead-letter policy.
#[tokio::test(flavor = "multi_thread")]
async fn copies_are_ordinary_messages_of_their_queue() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "dlq", attributes()).await;
    create_queue(
        &client,
        "fragile",
        pb::QueueAttributes {
            visibility_timeout_seconds: Some(0),
            ..redrive_to("dlq", 1)
        },
    )
    .await;
    create_queue(
        &client,
        "delayed",
        pb::QueueAttributes {
            delay_seconds: Some(600),
            ..Default::default()
        },
    )
    .await;
    for queue in ["fragile", "delayed"] {
        subscribe(&client, "payments", queue, "", true).await;
    }
    let published = publish(&client, "payments", "paid", &[]).await;
    assert_eq!(published.delivered, 2);

    // The delayed queue's copy waits out the queue's delay.
    assert_eq!(counts(&client, "delayed").await, Counts::new(0, 0, 1));
    assert!(receive_now(&client, "delayed", 10, 30).await.is_empty());

    // The fragile queue's copy moves to its dead-letter queue on the second receive.
    let first = only(receive_with(&client, receive_request("fragile", 10, None, Some(0))).await);
    assert_eq!(first.message_id, published.message_id);
    assert!(
        receive_with(&client, receive_request("fragile", 10, None, Some(0)))
            .await
            .is_empty()
    );
    let dead = only(receive_now(&client, "dlq", 10, 30).await);
    assert_eq!(dead.message_id, published.message_id);
    assert_eq!(dead.body, "paid");
    assert_eq!(counts(&client, "delayed").await, Counts::new(0, 0, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_validates_body_and_attributes_as_send_does() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["q"]).await;
    let result = client
        .publish_message(publish_request("payments", "", &[]))
        .await;
    assert_error(result, Code::InvalidArgument, &["body"]);
    let max = ATTRIBUTES_MAX;
    let too_many: Vec<(String, String)> =
        (0..=max).map(|i| (format!("k{i}"), "v".into())).collect();
    let too_many: Vec<(&str, &str)> = too_many
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let result = client
        .publish_message(publish_request("payments", "x", &too_many))
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &["attributes", &max.to_string(), &(max + 1).to_string()],
    );
    assert_eq!(depth(&client, "q").await, 0);
    // The most attributes are fine.
    assert_eq!(
        publish(&client, "payments", "x", &too_many[..max])
            .await
            .delivered,
        1
    );
}

// ---------------------------------------------------------------------------
// Filter policies

/// One filter policy with attribute sets it must match and must not match.
struct FilterCase {
    policy: &'static str,
    matches: Vec<Vec<(&'static str, &'static str)>>,
    misses: Vec<Vec<(&'static str, &'static str)>>,
}

fn case(
    policy: &'static str,
    matches: &[&[(&'static str, &'static str)]],
    misses: &[&[(&'static str, &'static str)]],
) -> FilterCase {
    FilterCase {
        policy,
        matches: matches.iter().map(|m| m.to_vec()).collect(),
        misses: misses.iter().map(|m| m.to_vec()).collect(),
    }
}

/// Each case gets a topic and a queue of its own; every publish must
/// deliver one copy when it should match and none when it should not, and
/// the queue ends up holding exactly the matching ones.
async fn check_filters(cases: Vec<FilterCase>) {
    let server = TestServer::start().await;
    let client = server.client().await;
    for (i, case) in cases.iter().enumerate() {
        let (topic, queue) = (format!("t{i}"), format!("q{i}"));
        create_topic(&client, &topic).await;
        create_queue(&client, &queue, attributes()).await;
        subscribe(&client, &topic, &queue, case.policy, true).await;
        let mut expected = Vec::new();
        for (j, attrs) in case.matches.iter().enumerate() {
            let body = format!("match {j}");
            let published = publish(&client, &topic, body.clone(), attrs).await;
            assert_eq!(
                published.delivered, 1,
                "policy {} should match {attrs:?}",
                case.policy
            );
            expected.push(Bytes::from(body));
        }
        for attrs in &case.misses {
            let published = publish(&client, &topic, "miss", attrs).await;
            assert_eq!(
                published.delivered, 0,
                "policy {} should not match {attrs:?}",
                case.policy
            );
        }
        expected.sort();
        assert_eq!(
            bodies(&client, &queue).await,
            expected,
            "policy {}",
            case.policy
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_on_exact_values_and_lists() {
    check_filters(vec![
        case(
            r#"{"country": ["IN"]}"#,
            &[&[("country", "IN")], &[("country", "IN"), ("other", "x")]],
            &[
                &[("country", "in")],
                &[("country", "BR")],
                &[("country", "IN ")],
                &[],
                &[("other", "IN")],
            ],
        ),
        case(
            r#"{"country": ["IN", "BR", "MX"]}"#,
            &[&[("country", "IN")], &[("country", "MX")]],
            &[&[("country", "US")], &[]],
        ),
        case(
            r#"{"amount": [100]}"#,
            &[&[("amount", "100")], &[("amount", "100.0")]],
            &[&[("amount", "101")], &[("amount", "abc")], &[]],
        ),
        case(
            r#"{"country": ["IN", {"prefix": "B"}]}"#,
            &[&[("country", "IN")], &[("country", "BR")]],
            &[&[("country", "US")]],
        ),
        // Several keys: all must match.
        case(
            r#"{"country": ["IN"], "amount": [{"numeric": [">", 100]}]}"#,
            &[&[("country", "IN"), ("amount", "200")]],
            &[
                &[("country", "IN"), ("amount", "50")],
                &[("country", "BR"), ("amount", "200")],
                &[("country", "IN")],
            ],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_on_prefix_suffix_and_equals_ignore_case() {
    check_filters(vec![
        case(
            r#"{"event": [{"prefix": "payment."}]}"#,
            &[&[("event", "payment.completed")], &[("event", "payment.")]],
            &[&[("event", "order.created")], &[("event", "payment")], &[]],
        ),
        case(
            r#"{"file": [{"suffix": ".png"}]}"#,
            &[&[("file", "a.png")]],
            &[&[("file", "a.jpg")], &[("file", "a.png.txt")], &[]],
        ),
        case(
            r#"{"country": [{"equals-ignore-case": "in"}]}"#,
            &[
                &[("country", "IN")],
                &[("country", "In")],
                &[("country", "in")],
            ],
            &[&[("country", "BR")], &[("country", "IND")], &[]],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_on_anything_but_values_and_prefix() {
    check_filters(vec![
        case(
            r#"{"country": [{"anything-but": ["US", "DE"]}]}"#,
            &[&[("country", "IN")], &[("country", "us")]],
            &[&[("country", "US")], &[("country", "DE")], &[]],
        ),
        case(
            r#"{"event": [{"anything-but": {"prefix": "test."}}]}"#,
            &[&[("event", "payment.completed")], &[("event", "test")]],
            &[&[("event", "test.payment")], &[]],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_on_numeric_ranges() {
    check_filters(vec![
        case(
            r#"{"amount": [{"numeric": [">", 100, "<=", 900]}]}"#,
            &[
                &[("amount", "100.5")],
                &[("amount", "900")],
                &[("amount", "250")],
            ],
            &[
                &[("amount", "100")],
                &[("amount", "900.01")],
                &[("amount", "abc")],
                &[],
            ],
        ),
        case(
            r#"{"n": [{"numeric": [">=", 10, "<", 20]}]}"#,
            &[&[("n", "10")], &[("n", "19.99")]],
            &[&[("n", "20")], &[("n", "9.999")]],
        ),
        case(
            r#"{"n": [{"numeric": ["=", 5]}]}"#,
            &[&[("n", "5")], &[("n", "5.0")]],
            &[&[("n", "6")], &[("n", "five")]],
        ),
        case(
            r#"{"n": [{"numeric": ["<", 0]}]}"#,
            &[&[("n", "-1")], &[("n", "-0.5")]],
            &[&[("n", "0")], &[("n", "1")]],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_on_exists() {
    check_filters(vec![
        case(
            r#"{"coupon": [{"exists": true}]}"#,
            &[&[("coupon", "SPRING")], &[("coupon", "")]],
            &[&[], &[("other", "x")]],
        ),
        case(
            r#"{"coupon": [{"exists": false}]}"#,
            &[&[], &[("other", "x")]],
            &[&[("coupon", "SPRING")], &[("coupon", "")]],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_with_or() {
    check_filters(vec![
        case(
            r#"{"$or": [{"country": ["IN"]}, {"amount": [{"numeric": [">", 500]}]}]}"#,
            &[
                &[("country", "IN"), ("amount", "1")],
                &[("country", "US"), ("amount", "600")],
                &[("country", "IN")],
            ],
            &[&[("country", "US"), ("amount", "1")], &[]],
        ),
        case(
            r#"{"event": ["paid"], "$or": [{"country": ["IN"]}, {"vip": [{"exists": true}]}]}"#,
            &[
                &[("event", "paid"), ("country", "IN")],
                &[("event", "paid"), ("vip", "yes")],
            ],
            &[
                &[("event", "refunded"), ("country", "IN")],
                &[("event", "paid"), ("country", "US")],
            ],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_subscription_filters_on_its_own() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    for queue in ["all", "india", "large"] {
        create_queue(&client, queue, attributes()).await;
    }
    subscribe(&client, "payments", "all", "", true).await;
    subscribe(&client, "payments", "india", r#"{"country": ["IN"]}"#, true).await;
    subscribe(
        &client,
        "payments",
        "large",
        r#"{"amount": [{"numeric": [">=", 1000]}]}"#,
        true,
    )
    .await;
    let cases = [
        ("a", "IN", "10", 2),
        ("b", "IN", "5000", 3),
        ("c", "BR", "5000", 2),
        ("d", "BR", "10", 1),
    ];
    for (body, country, amount, delivered) in cases {
        let published = publish(
            &client,
            "payments",
            body,
            &[("country", country), ("amount", amount)],
        )
        .await;
        assert_eq!(published.delivered, delivered, "{body}");
    }
    assert_eq!(bodies(&client, "all").await, ["a", "b", "c", "d"]);
    assert_eq!(bodies(&client, "india").await, ["a", "b"]);
    assert_eq!(bodies(&client, "large").await, ["b", "c"]);
}

// ---------------------------------------------------------------------------
// Raw and envelope delivery

#[tokio::test(flavor = "multi_thread")]
async fn raw_delivery_copies_body_and_attributes_as_they_are() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["raw"]).await;
    let body: Vec<u8> = (0..=255u8).rev().collect();
    let attrs = [
        ("country", "IN"),
        ("amount", "12.50"),
        ("note", "{\"json\": 1}"),
    ];
    let published = publish(&client, "payments", body.clone(), &attrs).await;
    let copy = only(receive_now(&client, "raw", 10, 30).await);
    assert_eq!(copy.message_id, published.message_id);
    assert_eq!(copy.body, body);
    assert_eq!(copy.attributes, string_map(&attrs));
}

#[tokio::test(flavor = "multi_thread")]
async fn envelope_delivery_wraps_the_body_in_sns_json() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "wrapped", attributes()).await;
    subscribe(&client, "payments", "wrapped", "", false).await;
    let before = now_ms();
    let body = "{\"payment\": 42, \"note\": \"naïve café ✓\"}";
    let published = publish(
        &client,
        "payments",
        body,
        &[("country", "IN"), ("amount", "12.50")],
    )
    .await;
    let after = now_ms();
    let copy = only(receive_now(&client, "wrapped", 10, 30).await);
    assert_eq!(copy.message_id, published.message_id);
    let envelope = envelope(&copy);
    assert_eq!(envelope["Type"], "Notification");
    assert_eq!(envelope["MessageId"], published.message_id.as_str());
    assert_eq!(envelope["Topic"], "payments");
    assert_eq!(envelope["Message"], body);
    assert!(
        envelope.get("MessageIsBase64").is_none() || envelope["MessageIsBase64"] == false,
        "{envelope}"
    );
    assert_eq!(
        envelope["MessageAttributes"],
        serde_json::json!({
            "country": {"Type": "String", "Value": "IN"},
            "amount": {"Type": "String", "Value": "12.50"},
        })
    );
    let timestamp = envelope["Timestamp"]
        .as_str()
        .expect("Timestamp is a string");
    let at = parse_rfc3339_utc(timestamp)
        .unwrap_or_else(|| panic!("Timestamp {timestamp:?} is not RFC 3339 UTC"));
    assert!(
        at + 1000 >= before && at <= after + 1000,
        "Timestamp {timestamp} ({at}) is not the publish time ({before}..={after})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn envelope_of_a_non_utf8_body_carries_base64() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "wrapped", attributes()).await;
    subscribe(&client, "payments", "wrapped", "", false).await;
    let body = vec![0xffu8, 0xfe, 0x00, b'a', 0x80];
    publish(&client, "payments", body.clone(), &[]).await;
    let envelope = envelope(&only(receive_now(&client, "wrapped", 10, 30).await));
    assert_eq!(envelope["MessageIsBase64"], true);
    assert_eq!(envelope["Message"], base64(&body).as_str());
    assert_eq!(envelope["MessageAttributes"], serde_json::json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_and_envelope_subscribers_of_one_publish_get_their_own_form() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "raw", attributes()).await;
    create_queue(&client, "wrapped", attributes()).await;
    subscribe(&client, "payments", "raw", "", true).await;
    subscribe(&client, "payments", "wrapped", "", false).await;
    let published = publish(&client, "payments", "paid", &[("k", "v")]).await;
    assert_eq!(published.delivered, 2);
    let raw = only(receive_now(&client, "raw", 10, 30).await);
    assert_eq!(raw.body, "paid");
    let wrapped = only(receive_now(&client, "wrapped", 10, 30).await);
    assert_eq!(envelope(&wrapped)["Message"], "paid");
    assert_eq!(raw.message_id, wrapped.message_id);
}

// ---------------------------------------------------------------------------
// Atomicity and limits

#[tokio::test(flavor = "multi_thread")]
async fn publish_too_large_for_one_queue_writes_no_copy_anywhere() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "big1", attributes()).await;
    create_queue(
        &client,
        "small",
        pb::QueueAttributes {
            max_message_bytes: Some(1024),
            ..Default::default()
        },
    )
    .await;
    create_queue(&client, "big2", attributes()).await;
    for queue in ["big1", "small", "big2"] {
        subscribe(&client, "payments", queue, "", true).await;
    }
    let result = client
        .publish_message(publish_request("payments", vec![b'x'; 1025], &[]))
        .await;
    assert_error(result, Code::InvalidArgument, &["small"]);
    for queue in ["big1", "small", "big2"] {
        assert_eq!(counts(&client, queue).await, Counts::EMPTY, "{queue}");
    }
    // Attributes count toward the limit, as for a send.
    let result = client
        .publish_message(publish_request(
            "payments",
            vec![b'x'; 1000],
            &[("k", &"v".repeat(30))],
        ))
        .await;
    assert_error(result, Code::InvalidArgument, &["small"]);
    for queue in ["big1", "small", "big2"] {
        assert_eq!(counts(&client, queue).await, Counts::EMPTY, "{queue}");
    }
    // At the limit, every queue gets its copy.
    let published = publish(&client, "payments", vec![b'x'; 1024], &[]).await;
    assert_eq!(published.delivered, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn envelope_copy_too_large_for_its_queue_fails_the_publish() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "raw", attributes()).await;
    create_queue(
        &client,
        "small",
        pb::QueueAttributes {
            max_message_bytes: Some(1024),
            ..Default::default()
        },
    )
    .await;
    subscribe(&client, "payments", "raw", "", true).await;
    subscribe(&client, "payments", "small", "", false).await;
    // 1000 bytes fit the small queue raw, but not in an envelope.
    let result = client
        .publish_message(publish_request("payments", vec![b'x'; 1000], &[]))
        .await;
    assert_error(result, Code::InvalidArgument, &["small"]);
    assert_eq!(counts(&client, "raw").await, Counts::EMPTY);
    assert_eq!(counts(&client, "small").await, Counts::EMPTY);
    assert_eq!(
        publish(&client, "payments", "short", &[]).await.delivered,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn size_limit_of_a_queue_the_filter_skips_does_not_matter() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "big", attributes()).await;
    create_queue(
        &client,
        "small",
        pb::QueueAttributes {
            max_message_bytes: Some(1024),
            ..Default::default()
        },
    )
    .await;
    subscribe(&client, "payments", "big", "", true).await;
    subscribe(&client, "payments", "small", r#"{"size": ["small"]}"#, true).await;
    let published = publish(&client, "payments", vec![b'x'; 2000], &[]).await;
    assert_eq!(published.delivered, 1);
    assert_eq!(depth(&client, "big").await, 1);
    assert_eq!(depth(&client, "small").await, 0);
}

/// A topic deleted while publishes are in flight: every publish either wrote
/// all its copies (as many as it reported) or none.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_topic_during_publishes_never_leaves_a_partial_fan_out() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let queues = ["q1", "q2", "q3"];
    topic_with_queues(&client, "payments", &queues).await;
    let mut publishers = Vec::new();
    // Each publisher says when its first publish is done.
    let (started, mut publishing) = tokio::sync::mpsc::unbounded_channel();
    for p in 0..4 {
        let client = client.clone();
        let started = started.clone();
        publishers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..200 {
                let result = client
                    .publish_message(publish_request("payments", format!("{p}-{i}"), &[]))
                    .await;
                let stop = result.is_err();
                outcomes.push(result);
                if i == 0 {
                    let _ = started.send(());
                }
                if stop {
                    break;
                }
            }
            outcomes
        }));
    }
    drop(started);
    // Delete once all four are publishing (each has 199 more to go).
    for _ in 0..4 {
        publishing.recv().await.expect("a publisher started");
    }
    client
        .delete_topic(pb::DeleteTopicRequest {
            name: "payments".into(),
        })
        .await
        .expect("DeleteTopic");

    let mut delivered: HashMap<String, u32> = HashMap::new();
    for publisher in publishers {
        for outcome in publisher.await.expect("publisher task") {
            match outcome {
                Ok(published) => {
                    assert_eq!(published.delivered, 3, "all three queues or an error");
                    delivered.insert(published.message_id, published.delivered);
                }
                Err(error) => assert_eq!(error.code(), Code::NotFound, "{error:?}"),
            }
        }
    }
    let mut copies: HashMap<String, u32> = HashMap::new();
    for queue in queues {
        for message in drain(&client, queue).await {
            *copies.entry(message.message_id).or_default() += 1;
        }
    }
    assert_eq!(
        copies, delivered,
        "every acknowledged publish, fully, and nothing else"
    );
}

// ---------------------------------------------------------------------------
// PublishBatch

fn batch_entry(id: &str, body: impl Into<Bytes>, attrs: &[(&str, &str)]) -> pb::PublishBatchEntry {
    pb::PublishBatchEntry {
        id: id.to_string(),
        body: body.into(),
        attributes: string_map(attrs),
    }
}

fn batch(topic: &str, entries: Vec<pb::PublishBatchEntry>) -> pb::PublishBatchRequest {
    pb::PublishBatchRequest {
        topic: topic.to_string(),
        entries,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_batch_fans_out_every_entry() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "all", attributes()).await;
    create_queue(&client, "india", attributes()).await;
    subscribe(&client, "payments", "all", "", true).await;
    subscribe(&client, "payments", "india", r#"{"country": ["IN"]}"#, true).await;
    let response = client
        .publish_batch(batch(
            "payments",
            vec![
                batch_entry("a", "a", &[("country", "IN")]),
                batch_entry("b", "b", &[("country", "BR")]),
                batch_entry("c", "c", &[("country", "IN")]),
            ],
        ))
        .await
        .expect("PublishBatch");
    assert!(response.failed.is_empty(), "{:?}", response.failed);
    let mut results: Vec<_> = response
        .successful
        .iter()
        .map(|s| (s.id.as_str(), s.delivered))
        .collect();
    results.sort();
    assert_eq!(results, [("a", 2), ("b", 1), ("c", 2)]);
    let ids: HashMap<_, _> = response
        .successful
        .iter()
        .map(|s| (s.id.clone(), s.message_id.clone()))
        .collect();
    assert_eq!(
        ids.values().collect::<HashSet<_>>().len(),
        3,
        "distinct message ids"
    );
    for (queue, expected) in [("all", vec!["a", "b", "c"]), ("india", vec!["a", "c"])] {
        let mut got: Vec<_> = drain(&client, queue)
            .await
            .into_iter()
            .map(|m| {
                let body = String::from_utf8(m.body.to_vec()).expect("utf-8");
                assert_eq!(m.message_id, ids[&body], "copy of {body} in {queue}");
                body
            })
            .collect();
        got.sort();
        assert_eq!(got, expected, "{queue}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_batch_takes_1_to_100_entries() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["q"]).await;
    let entries = |n: usize| {
        (0..n)
            .map(|i| batch_entry(&format!("e{i}"), "x", &[]))
            .collect::<Vec<_>>()
    };
    let result = client.publish_batch(batch("payments", Vec::new())).await;
    assert_error(result, Code::InvalidArgument, &["entries"]);
    let max = BATCH_ENTRIES_MAX;
    let result = client
        .publish_batch(batch("payments", entries(max + 1)))
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &["entries", &max.to_string(), &(max + 1).to_string()],
    );
    assert_eq!(depth(&client, "q").await, 0);

    let response = client
        .publish_batch(batch("payments", entries(max)))
        .await
        .expect("a full batch");
    assert_eq!(response.successful.len(), max, "{:?}", response.failed);
    assert_eq!(depth(&client, "q").await, max as u64);

    let result = client.publish_batch(batch("missing", entries(1))).await;
    assert_error(result, Code::NotFound, &["missing"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_batch_bad_entries_fail_alone() {
    let server = TestServer::start().await;
    let client = server.client().await;
    create_topic(&client, "payments").await;
    create_queue(&client, "big", attributes()).await;
    create_queue(
        &client,
        "small",
        pb::QueueAttributes {
            max_message_bytes: Some(1024),
            ..Default::default()
        },
    )
    .await;
    subscribe(&client, "payments", "big", "", true).await;
    subscribe(&client, "payments", "small", "", true).await;
    let eleven: Vec<(String, String)> = (0..11).map(|i| (format!("k{i}"), "v".into())).collect();
    let eleven: Vec<(&str, &str)> = eleven
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let response = client
        .publish_batch(batch(
            "payments",
            vec![
                batch_entry("ok1", "first", &[]),
                batch_entry("empty", "", &[]),
                batch_entry("large", vec![b'x'; 1025], &[]),
                batch_entry("attrs", "x", &eleven),
                batch_entry("ok2", "second", &[]),
            ],
        ))
        .await
        .expect("a batch with bad entries still succeeds as a whole");
    let mut ok: Vec<_> = response
        .successful
        .iter()
        .map(|s| (s.id.as_str(), s.delivered))
        .collect();
    ok.sort();
    assert_eq!(ok, [("ok1", 2), ("ok2", 2)]);
    let mut failed = response.failed.clone();
    failed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_batch_failure(
        &failed[0],
        "attrs",
        "INVALID_ARGUMENT",
        &["attributes", "10", "11"],
    );
    assert_batch_failure(&failed[1], "empty", "INVALID_ARGUMENT", &["body"]);
    assert_batch_failure(&failed[2], "large", "INVALID_ARGUMENT", &["small"]);
    // The too-large entry is in neither queue, though it fits the big one.
    for queue in ["big", "small"] {
        assert_eq!(bodies(&client, queue).await, ["first", "second"], "{queue}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_batch_rejects_duplicate_and_invalid_entry_ids() {
    let server = TestServer::start().await;
    let client = server.client().await;
    topic_with_queues(&client, "payments", &["q"]).await;
    let result = client
        .publish_batch(batch(
            "payments",
            vec![
                batch_entry("same", "one", &[]),
                batch_entry("same", "two", &[]),
            ],
        ))
        .await;
    match result {
        Err(error) => {
            assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
            assert!(error.message().contains("same"), "{error:?}");
        }
        Ok(response) => {
            assert!(
                response
                    .successful
                    .iter()
                    .filter(|s| s.id == "same")
                    .count()
                    <= 1,
                "{response:?}"
            );
            assert!(!response.failed.is_empty(), "{response:?}");
        }
    }
    let before = depth(&client, "q").await;
    let result = client
        .publish_batch(batch(
            "payments",
            vec![
                batch_entry("a b", "bad", &[]),
                batch_entry("good", "good", &[]),
            ],
        ))
        .await;
    match result {
        Err(error) => assert_eq!(error.code(), Code::InvalidArgument, "{error:?}"),
        Ok(response) => {
            assert_eq!(response.failed.len(), 1, "{response:?}");
            assert_batch_failure(&response.failed[0], "a b", "INVALID_ARGUMENT", &["id"]);
            assert_eq!(response.successful.len(), 1);
            assert_eq!(response.successful[0].id, "good");
        }
    }
    let after = depth(&client, "q").await;
    assert!(after - before <= 1, "the bad entry wrote nothing");
}

// ---------------------------------------------------------------------------
// Restart

#[tokio::test(flavor = "multi_thread")]
async fn topics_subscriptions_and_copies_survive_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    let topic = create_topic(&client, "payments").await;
    create_topic(&client, "quiet").await;
    create_queue(&client, "email", attributes()).await;
    create_queue(&client, "sms", attributes()).await;
    let policy = r#"{"country": ["IN", "BR"]}"#;
    let email = subscribe(&client, "payments", "email", "", false).await;
    let sms = subscribe(&client, "payments", "sms", policy, true).await;
    let published = publish(&client, "payments", "paid", &[("country", "IN")]).await;
    assert_eq!(published.delivered, 2);

    server.restart().await;
    let client = server.client().await;

    let got = client
        .get_topic(pb::GetTopicRequest {
            name: "payments".into(),
        })
        .await
        .expect("GetTopic after restart");
    assert_eq!(got.topic, Some(topic));
    assert_eq!(got.subscription_count, 2);
    let names: Vec<_> = client
        .list_topics(pb::ListTopicsRequest::default())
        .await
        .expect("ListTopics")
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["payments", "quiet"]);
    let mut subscriptions = list_subscriptions(&client, "", "").await;
    subscriptions.sort_by(|a, b| a.queue.cmp(&b.queue));
    assert_eq!(subscriptions, [email, sms]);

    // The fanned-out copies are there.
    let email_copy = only(receive_now(&client, "email", 10, 30).await);
    assert_eq!(email_copy.message_id, published.message_id);
    assert_eq!(envelope(&email_copy)["Message"], "paid");
    let sms_copy = only(receive_now(&client, "sms", 10, 30).await);
    assert_eq!(sms_copy.message_id, published.message_id);
    assert_eq!(sms_copy.body, "paid");

    // The filter policy still applies after the restart.
    assert_eq!(
        publish(&client, "payments", "br", &[("country", "BR")])
            .await
            .delivered,
        2
    );
    assert_eq!(
        publish(&client, "payments", "us", &[("country", "US")])
            .await
            .delivered,
        1
    );
}
