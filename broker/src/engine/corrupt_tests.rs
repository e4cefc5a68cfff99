//! A data dir whose records were damaged (a failing disk, a bug, a hand):
//! the engine opens over it with an error that names the damaged key, or
//! opens and serves, and never panics, at open or after.
//!
//! Each case builds a small engine (queues, a dead-letter queue, a topic
//! with a filtered subscription, messages, one in flight), damages its
//! records at random (values replaced, cut short or deleted, records added
//! under the engine's prefixes), then opens it and uses it. Cases:
//! `PROPTEST_CASES` (default 24 here: each opens RocksDB twice).

use std::panic::AssertUnwindSafe;
use std::path::Path;

use bytes::Bytes;
use futures::FutureExt as _;
use proptest::prelude::*;

use super::*;
use crate::storage::{Batch, Store, keys};

/// What is done to the data dir.
#[derive(Debug, Clone)]
enum Damage {
    /// The value of the `n`th record (modulo their count) replaced.
    Replace(usize, Vec<u8>),
    /// The value of the `n`th record cut to at most `len` bytes.
    Truncate(usize, usize),
    /// The `n`th record deleted.
    Delete(usize),
    /// A record added under one of the engine's prefixes.
    Add(Vec<u8>, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let prefixes = prop::sample::select(vec![
        keys::QUEUE_PREFIX,
        keys::BODY_PREFIX,
        keys::STATE_PREFIX,
        keys::TOPIC_PREFIX,
        keys::SUBSCRIPTION_PREFIX,
        0x00,
        0x10,
    ]);
    prop_oneof![
        (any::<usize>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(n, v)| Damage::Replace(n, v)),
        (any::<usize>(), 0usize..32).prop_map(|(n, len)| Damage::Truncate(n, len)),
        any::<usize>().prop_map(Damage::Delete),
        (
            prefixes,
            prop::collection::vec(any::<u8>(), 0..20),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(p, mut k, v)| {
                k.insert(0, p);
                Damage::Add(k, v)
            }),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn msg(body: &str, kind: &str) -> NewMessage {
    NewMessage {
        body: Bytes::copy_from_slice(body.as_bytes()),
        attributes: [("kind".to_string(), kind.to_string())].into(),
        ..Default::default()
    }
}

/// A small engine's data in `dir`.
async fn seed(dir: &Path) {
    let e = Engine::open(dir, SyncMode::None).expect("a new engine");
    e.create_queue("dlq", &AttributeChanges::default())
        .await
        .expect("create dlq");
    let changes = AttributeChanges {
        redrive_policy: Some(Some(RedrivePolicy {
            dead_letter_queue: "dlq".into(),
            max_receive_count: 2,
        })),
        ..Default::default()
    };
    e.create_queue("q", &changes).await.expect("create q");
    e.create_topic("t").await.expect("create t");
    e.subscribe("t", "q", r#"{"kind": ["x"]}"#, false)
        .await
        .expect("subscribe");
    e.send("q", vec![msg("a", "x"), msg("b", "y"), msg("c", "x")])
        .await
        .expect("send");
    e.publish("t", vec![publication("p")])
        .await
        .expect("publish");
    let options = ReceiveOptions {
        max_messages: 1,
        visibility_timeout_seconds: Some(600),
        ..ReceiveOptions::default()
    };
    e.receive("q", options).await.expect("receive");
}

fn publication(body: &str) -> NewPublication {
    NewPublication {
        body: Bytes::copy_from_slice(body.as_bytes()),
        attributes: [("kind".to_string(), "x".to_string())].into(),
    }
}

/// Applies `damage` to the records in `dir`.
fn apply(dir: &Path, damage: &[Damage]) {
    let store = Store::open(dir, SyncMode::Always).expect("the store");
    let records: Vec<(Vec<u8>, Vec<u8>)> = store
        .scan_range(&[], &[0xff; 8])
        .map(|r| r.expect("a record"))
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    let mut batch = Batch::default();
    for d in damage {
        let nth = |n: usize| &records[n % records.len()];
        match d {
            Damage::Replace(n, value) => batch.put(&nth(*n).0, value),
            Damage::Truncate(n, len) => {
                let (key, value) = nth(*n);
                batch.put(key, &value[..(*len).min(value.len())]);
            }
            Damage::Delete(n) => batch.delete(&nth(*n).0),
            Damage::Add(key, value) => batch.put(key, value),
        }
    }
    store.write(batch).expect("the damage written");
    store.persist().expect("persist");
}

/// Opens the engine over `dir` and uses it: `Err` with the error's text,
/// or `Ok` once every call returned.
async fn open_and_use(dir: &Path) -> Result<(), String> {
    let e = Arc::new(Engine::open(dir, SyncMode::None).map_err(|e| e.to_string())?);
    let _ = e.list_queues("", 100, "");
    let _ = e.list_topics("", 100, "");
    for queue in ["q", "dlq"] {
        let _ = e.get_queue(queue);
        let options = ReceiveOptions {
            max_messages: 10,
            visibility_timeout_seconds: Some(0),
            ..ReceiveOptions::default()
        };
        let _ = e.receive(queue, options).await;
        let _ = e.peek(queue, 10, "");
        let _ = e.send(queue, vec![msg("new", "x")]).await;
        let _ = e.purge_queue(queue).await;
    }
    let _ = e.publish("t", vec![publication("new")]).await;
    let _ = e.delete_queue("q").await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_damaged_data_dir_opens_or_names_the_damage_and_never_panics(
        damage in prop::collection::vec(damage(), 1..5),
    ) {
        let dir = tempfile::tempdir().expect("a temp dir");
        runtime().block_on(seed(dir.path()));
        apply(dir.path(), &damage);
        let opened = runtime().block_on(AssertUnwindSafe(open_and_use(dir.path())).catch_unwind());
        match opened {
            Err(_) => prop_assert!(false, "panicked after {damage:?}"),
            Ok(Err(error)) => prop_assert!(
                error.contains("key"),
                "the error names no key: {error} (after {damage:?})"
            ),
            Ok(Ok(())) => {}
        }
    }
}
