//! Engine tests over a real RocksDB in a temp dir, with tokio time paused
//! so that timing logic is exact and instant.
//!
//! Paused tests use `SyncMode::None`: waiting for the syncer thread is real
//! time, during which a paused runtime would auto-advance its clock. The
//! durable path is covered by the restart test here and over gRPC.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;

fn open(dir: &tempfile::TempDir) -> Arc<Engine> {
    Arc::new(Engine::open(dir.path(), SyncMode::None).unwrap())
}

fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: Bytes::copy_from_slice(body.as_bytes()),
        ..Default::default()
    }
}

fn recv(max: u32, visibility: u32, wait: u32) -> ReceiveOptions {
    ReceiveOptions {
        max_messages: max,
        visibility_timeout_seconds: Some(visibility),
        wait_time_seconds: Some(wait),
        ..ReceiveOptions::default()
    }
}

async fn engine_with_queue(dir: &tempfile::TempDir) -> Arc<Engine> {
    let e = open(dir);
    tokio::spawn(e.clone().run_scheduler());
    e.create_queue("q", &AttributeChanges::default())
        .await
        .unwrap();
    e
}

#[tokio::test(start_paused = true)]
async fn expired_visibility_makes_message_visible_again() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_queue(&dir).await;
    e.send("q", vec![msg("a")]).await.unwrap();
    let first = e.receive("q", recv(1, 10, 0)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(e.receive("q", recv(1, 10, 0)).await.unwrap().is_empty());
    assert_eq!(e.get_queue("q").unwrap().1.in_flight, 1);

    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert!(e.receive("q", recv(1, 10, 0)).await.unwrap().is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    let again = e.receive("q", recv(1, 10, 0)).await.unwrap();
    assert_eq!(again[0].receive_count, 2);
    assert_eq!(again[0].first_received_at_ms, first[0].first_received_at_ms);
}

#[tokio::test(start_paused = true)]
async fn long_poll_is_woken_by_send_not_by_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_queue(&dir).await;
    let waiter = tokio::spawn({
        let e = e.clone();
        async move {
            let start = tokio::time::Instant::now();
            let got = e.receive("q", recv(1, 30, 20)).await.unwrap();
            (got.len(), start.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    e.send("q", vec![msg("a")]).await.unwrap();
    let (n, waited) = waiter.await.unwrap();
    assert_eq!(n, 1);
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn long_poll_is_woken_when_a_delay_or_timeout_lapses() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_queue(&dir).await;
    e.send(
        "q",
        vec![NewMessage {
            delay_seconds: Some(5),
            ..msg("later")
        }],
    )
    .await
    .unwrap();
    assert_eq!(e.get_queue("q").unwrap().1.delayed, 1);
    let start = tokio::time::Instant::now();
    let got = e.receive("q", recv(1, 2, 20)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(5));

    let start = tokio::time::Instant::now();
    let got = e.receive("q", recv(1, 2, 20)).await.unwrap();
    assert_eq!(got[0].receive_count, 2);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn long_poll_returns_empty_when_the_wait_ends() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_queue(&dir).await;
    let start = tokio::time::Instant::now();
    assert!(e.receive("q", recv(1, 2, 7)).await.unwrap().is_empty());
    assert_eq!(start.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn long_poll_ends_at_its_wait_limit_and_takes_nothing_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_queue(&dir).await;
    let limited = ReceiveOptions {
        wait_limit: Some(Duration::from_millis(1500)),
        ..recv(1, 600, 20)
    };
    let start = tokio::time::Instant::now();
    assert!(e.receive("q", limited).await.unwrap().is_empty());
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
    // A message sent after the limit is still there for the next caller.
    e.send("q", vec![msg("a")]).await.unwrap();
    assert_eq!(
        e.receive("q", recv(1, 600, 0)).await.unwrap()[0].receive_count,
        1
    );
    // A wait time shorter than the limit still ends the wait.
    let limited = ReceiveOptions {
        wait_limit: Some(Duration::from_secs(60)),
        ..recv(1, 600, 3)
    };
    let start = tokio::time::Instant::now();
    assert!(e.receive("q", limited).await.unwrap().is_empty());
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn release_with_visibility_zero_wakes_a_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_queue(&dir).await;
    e.send("q", vec![msg("a")]).await.unwrap();
    let got = e.receive("q", recv(1, 600, 0)).await.unwrap();
    let waiter = tokio::spawn({
        let e = e.clone();
        async move { e.receive("q", recv(1, 600, 20)).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = e
        .change_visibility("q", &[(&got[0].receipt_handle, 0)])
        .await
        .unwrap();
    assert!(r[0].is_ok());
    assert_eq!(waiter.await.unwrap()[0].receive_count, 2);
}

#[tokio::test(start_paused = true)]
async fn dropped_long_poll_claims_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_queue(&dir).await;
    let waiter = tokio::spawn({
        let e = e.clone();
        async move { e.receive("q", recv(1, 600, 20)).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    waiter.abort();
    let _ = waiter.await;
    e.send("q", vec![msg("a")]).await.unwrap();
    assert_eq!(e.receive("q", recv(1, 600, 0)).await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn receipt_handles_follow_the_latest_receive() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_queue(&dir).await;
    e.send("q", vec![msg("a")]).await.unwrap();
    let old = e.receive("q", recv(1, 1, 0)).await.unwrap().remove(0);
    tokio::time::advance(Duration::from_secs(1)).await;
    let new = e.receive("q", recv(1, 1, 0)).await.unwrap().remove(0);
    let r = e.delete("q", &[&old.receipt_handle]).await.unwrap();
    assert!(matches!(
        r[0],
        Err(Error::ReceiptSuperseded {
            current: 2,
            handle: 1
        })
    ));
    // The latest handle deletes, also after its timeout lapsed.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(e.delete("q", &[&new.receipt_handle]).await.unwrap()[0].is_ok());
    assert!(e.delete("q", &[&new.receipt_handle]).await.unwrap()[0].is_ok());
    assert_eq!(e.get_queue("q").unwrap().1, QueueStats::default());
}

#[tokio::test(start_paused = true)]
async fn message_moves_to_dead_letter_queue_after_max_receives() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&dir);
    tokio::spawn(e.clone().run_scheduler());
    e.create_queue("dlq", &AttributeChanges::default())
        .await
        .unwrap();
    let changes = AttributeChanges {
        redrive_policy: Some(Some(RedrivePolicy {
            dead_letter_queue: "dlq".into(),
            max_receive_count: 2,
        })),
        ..Default::default()
    };
    e.create_queue("q", &changes).await.unwrap();
    let id = e
        .send("q", vec![msg("poison")])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    for _ in 0..2 {
        assert_eq!(e.receive("q", recv(1, 0, 0)).await.unwrap().len(), 1);
    }
    assert!(e.receive("q", recv(1, 0, 0)).await.unwrap().is_empty());
    let dead = e.receive("dlq", recv(1, 0, 0)).await.unwrap().remove(0);
    assert_eq!(
        (dead.message_id.as_str(), dead.receive_count),
        (id.as_str(), 3)
    );

    assert_eq!(e.redrive("dlq", "", 0).await.unwrap(), 1);
    let back = e.receive("q", recv(1, 0, 0)).await.unwrap().remove(0);
    assert_eq!(
        (back.message_id.as_str(), back.receive_count),
        (id.as_str(), 1)
    );
}

#[tokio::test(start_paused = true)]
async fn retention_deletes_old_messages() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&dir);
    tokio::spawn(e.clone().run_scheduler());
    let changes = AttributeChanges {
        message_retention_seconds: Some(60),
        ..Default::default()
    };
    e.create_queue("q", &changes).await.unwrap();
    e.send("q", vec![msg("old")]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    e.send("q", vec![msg("new")]).await.unwrap();
    assert_eq!(e.get_queue("q").unwrap().1.oldest_message_age_seconds, 30);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let (_, stats) = e.get_queue("q").unwrap();
    assert_eq!((stats.visible, stats.oldest_message_age_seconds), (1, 31));
}

#[tokio::test]
async fn restart_keeps_messages_and_in_flight_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    let open = |dir: &tempfile::TempDir| Engine::open(dir.path(), SyncMode::Always).unwrap();
    {
        let e = open(&dir);
        e.create_queue("q", &AttributeChanges::default())
            .await
            .unwrap();
        e.send("q", vec![msg("a"), msg("b"), msg("c")])
            .await
            .unwrap();
        let got = e.receive("q", recv(1, 600, 0)).await.unwrap();
        assert_eq!(got.len(), 1);
    }
    let e = open(&dir);
    let (_, stats) = e.get_queue("q").unwrap();
    assert_eq!((stats.visible, stats.in_flight), (2, 1));
    let got = e.receive("q", recv(10, 600, 0)).await.unwrap();
    assert_eq!(got.len(), 2);
    // New seqs never collide with old ones.
    e.send("q", vec![msg("d")]).await.unwrap();
    assert_eq!(e.get_queue("q").unwrap().1.visible, 1);
}

async fn engine_with_topic(dir: &tempfile::TempDir, queues: &[(&str, u32, bool)]) -> Arc<Engine> {
    let e = open(dir);
    e.create_topic("t").await.unwrap();
    for &(name, max_bytes, raw) in queues {
        let changes = AttributeChanges {
            max_message_bytes: Some(max_bytes),
            ..Default::default()
        };
        e.create_queue(name, &changes).await.unwrap();
        e.subscribe("t", name, "", raw).await.unwrap();
    }
    e
}

fn publication(body: &[u8]) -> NewPublication {
    NewPublication {
        body: Bytes::copy_from_slice(body),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn publish_fans_out_one_copy_per_queue_with_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_topic(&dir, &[("a", 1024, true), ("b", 1024, false)]).await;
    let p = e
        .publish("t", vec![publication(b"hi")])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(p.delivered, 2);
    let a = e.receive("a", recv(10, 30, 0)).await.unwrap();
    let b = e.receive("b", recv(10, 30, 0)).await.unwrap();
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0].message_id, p.message_id);
    assert_eq!(&a[0].body[..], b"hi");
    let envelope: serde_json::Value = serde_json::from_slice(&b[0].body).unwrap();
    assert_eq!(envelope["MessageId"], p.message_id.as_str());
}

#[tokio::test(start_paused = true)]
async fn a_copy_over_one_queue_limit_writes_no_copy_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_topic(&dir, &[("big", 4096, true), ("small", 1024, true)]).await;
    let results = e
        .publish("t", vec![publication(&[b'x'; 2000]), publication(b"ok")])
        .await
        .unwrap();
    let err = results[0].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("\"small\"") && err.contains("max_message_bytes = 1024"),
        "{err}"
    );
    assert_eq!(results[1].as_ref().unwrap().delivered, 2);
    for q in ["big", "small"] {
        assert_eq!(e.get_queue(q).unwrap().1.visible, 1, "{q}");
    }
}

#[tokio::test(start_paused = true)]
async fn deleting_a_queue_removes_its_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_topic(&dir, &[("a", 1024, true), ("b", 1024, true)]).await;
    e.delete_queue("a").await.unwrap();
    assert_eq!(e.get_topic("t").unwrap().1, 1);
    let p = e
        .publish("t", vec![publication(b"x")])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(p.delivered, 1);
    e.delete_topic("t").await.unwrap();
    assert!(e.list_subscriptions("", "b", 0, "").unwrap().0.is_empty());
}

#[tokio::test]
async fn restart_keeps_topics_and_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = engine_with_topic(&dir, &[("a", 1024, true)]).await;
        e.create_queue("f", &AttributeChanges::default())
            .await
            .unwrap();
        e.subscribe("t", "f", r#"{"kind": ["x"]}"#, true)
            .await
            .unwrap();
    }
    let e = open(&dir);
    let (subs, _) = e.list_subscriptions("t", "", 0, "").unwrap();
    assert_eq!(subs.len(), 2);
    let mut attrs = HashMap::new();
    attrs.insert("kind".to_string(), "y".to_string());
    let p = e
        .publish(
            "t",
            vec![NewPublication {
                body: Bytes::from_static(b"m"),
                attributes: attrs,
            }],
        )
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(p.delivered, 1, "the filter survives the restart");
}

#[tokio::test(start_paused = true)]
async fn receive_rate_limits_all_receivers_together() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&dir);
    tokio::spawn(e.clone().run_scheduler());
    let changes = AttributeChanges {
        max_receive_rate: Some(10),
        ..Default::default()
    };
    e.create_queue("q", &changes).await.unwrap();
    e.send("q", (0..100).map(|i| msg(&i.to_string())).collect())
        .await
        .unwrap();
    // A full bucket gives the burst (= rate) at once, then nothing.
    assert_eq!(e.receive("q", recv(100, 600, 0)).await.unwrap().len(), 10);
    assert!(e.receive("q", recv(100, 600, 0)).await.unwrap().is_empty());
    // A long poll waits for the next token instead of returning empty.
    let start = tokio::time::Instant::now();
    assert_eq!(e.receive("q", recv(100, 600, 5)).await.unwrap().len(), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    // Over 3 s, several receivers together get 30 messages, give or take one.
    let mut got = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        got += e.receive("q", recv(3, 600, 1)).await.unwrap().len();
    }
    assert!((29..=31).contains(&got), "{got}");
}

#[tokio::test(start_paused = true)]
async fn retry_policy_backs_off_redeliveries_exponentially() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&dir);
    tokio::spawn(e.clone().run_scheduler());
    let changes = AttributeChanges {
        retry_policy: Some(Some(RetryPolicy {
            min_backoff_seconds: 2,
            max_backoff_seconds: 5,
        })),
        ..Default::default()
    };
    e.create_queue("q", &changes).await.unwrap();
    e.send("q", vec![msg("flaky")]).await.unwrap();
    let mut handle = e
        .receive("q", recv(1, 1, 0))
        .await
        .unwrap()
        .remove(0)
        .receipt_handle;
    // Released at once (visibility 0) after receives 1, 2, 3: the message
    // comes back after 2, 4 and then 5 (capped) seconds.
    for expected in [2, 4, 5] {
        e.change_visibility("q", &[(&handle, 0)])
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        let start = tokio::time::Instant::now();
        let got = e.receive("q", recv(1, 1, 20)).await.unwrap().remove(0);
        assert_eq!(start.elapsed(), Duration::from_secs(expected));
        handle = got.receipt_handle;
    }
    // A lapsed visibility timeout backs off too: 1 s timeout + 5 s.
    let start = tokio::time::Instant::now();
    assert_eq!(
        e.receive("q", recv(1, 1, 20)).await.unwrap()[0].receive_count,
        5
    );
    assert_eq!(start.elapsed(), Duration::from_secs(6));
}

/// The request field an invalid name is reported under, per operation: the
/// engine names the field its argument comes from, not what the name is.
#[tokio::test(start_paused = true)]
async fn invalid_names_are_reported_under_the_request_field() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine_with_topic(&dir, &[("q", 1024, true)]).await;
    let bad = "no good";
    #[track_caller]
    fn field_of<T: std::fmt::Debug>(result: Result<T>) -> (&'static str, &'static str) {
        match result {
            Err(Error::InvalidName { field, what, .. }) => (field, what),
            other => panic!("expected InvalidName, got {other:?}"),
        }
    }
    let none = AttributeChanges::default();
    assert_eq!(field_of(e.get_queue(bad)), ("name", "queue name"));
    assert_eq!(
        field_of(e.update_queue(bad, &none).await),
        ("name", "queue name")
    );
    assert_eq!(field_of(e.delete_queue(bad).await), ("name", "queue name"));
    assert_eq!(field_of(e.purge_queue(bad).await), ("name", "queue name"));
    assert_eq!(field_of(e.create_queue(bad, &none).await), ("name", "name"));
    assert_eq!(
        field_of(e.send(bad, vec![msg("a")]).await),
        ("queue", "queue name")
    );
    assert_eq!(
        field_of(e.receive(bad, recv(1, 1, 0)).await),
        ("queue", "queue name")
    );
    assert_eq!(field_of(e.peek(bad, 0, "")), ("queue", "queue name"));
    assert_eq!(
        field_of(e.redrive(bad, "q", 0).await),
        ("source_queue", "queue name")
    );
    assert_eq!(
        field_of(e.redrive("q", bad, 0).await),
        ("destination_queue", "queue name")
    );
    assert_eq!(field_of(e.get_topic(bad)), ("name", "topic name"));
    assert_eq!(field_of(e.delete_topic(bad).await), ("name", "topic name"));
    assert_eq!(
        field_of(e.publish(bad, vec![publication(b"x")]).await),
        ("topic", "topic name")
    );
    assert_eq!(
        field_of(e.subscribe(bad, "q", "", false).await),
        ("topic", "topic")
    );
    assert_eq!(
        field_of(e.subscribe("t", bad, "", false).await),
        ("queue", "queue")
    );
    // Well-formed names that are not there.
    assert!(matches!(
        e.get_queue("missing"),
        Err(Error::QueueNotFound { queue }) if queue == "missing"
    ));
    assert!(matches!(
        e.get_topic("missing"),
        Err(Error::TopicNotFound { topic }) if topic == "missing"
    ));
}

#[tokio::test(start_paused = true)]
async fn a_queue_used_as_dead_letter_queue_names_its_sources() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(&dir);
    e.create_queue("dlq", &AttributeChanges::default())
        .await
        .unwrap();
    let redrive = AttributeChanges {
        redrive_policy: Some(Some(RedrivePolicy {
            dead_letter_queue: "dlq".into(),
            max_receive_count: 3,
        })),
        ..Default::default()
    };
    for name in ["b", "a"] {
        e.create_queue(name, &redrive).await.unwrap();
    }
    match e.delete_queue("dlq").await {
        Err(Error::QueueIsDeadLetterTarget { queue, used_by }) => {
            assert_eq!(queue, "dlq");
            assert_eq!(used_by, ["a", "b"]);
        }
        other => panic!("{other:?}"),
    }
}
