//! The engine as a deterministic state machine, checked on random
//! operation sequences:
//! - replaying the commands one engine applied (encoded and decoded, as a
//!   replicated log would carry them) on another engine from the same
//!   start gives the same store and the same index;
//! - the index rebuilt from the store at startup is the index the engine
//!   kept in memory.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message as _;

use super::*;

const QUEUES: [&str; 3] = ["a", "b", "dlq"];

/// One operation of a random workload; indexes pick among a few queues
/// and the receipt handles seen so far. Operations that fail (a queue that
/// does not exist, a superseded handle) decide nothing, as over the API.
#[derive(Debug, Clone)]
enum Step {
    CreateQueue {
        q: usize,
        visibility: u32,
        dead_letters: bool,
    },
    UpdateQueue {
        q: usize,
        retry: bool,
        delay: u32,
    },
    DeleteQueue {
        q: usize,
    },
    Purge {
        q: usize,
    },
    Send {
        q: usize,
        n: usize,
        delay: u32,
    },
    Receive {
        q: usize,
        max: u32,
        visibility: u32,
    },
    Delete {
        k: usize,
    },
    ChangeVisibility {
        k: usize,
        seconds: u32,
    },
    Redrive {
        to: Option<usize>,
    },
    Expire,
    Advance {
        ms: u64,
    },
    CreateTopic,
    DeleteTopic,
    Subscribe {
        q: usize,
        raw: bool,
        filtered: bool,
    },
    Unsubscribe {
        k: usize,
    },
    Publish {
        n: usize,
        country: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let q = 0..QUEUES.len();
    prop_oneof![
        2 => (q.clone(), 0..3u32, any::<bool>()).prop_map(|(q, visibility, dead_letters)| Step::CreateQueue { q, visibility, dead_letters }),
        1 => (q.clone(), any::<bool>(), 0..2u32).prop_map(|(q, retry, delay)| Step::UpdateQueue { q, retry, delay }),
        1 => q.clone().prop_map(|q| Step::DeleteQueue { q }),
        1 => q.clone().prop_map(|q| Step::Purge { q }),
        6 => (q.clone(), 1..4usize, prop_oneof![3 => Just(0u32), 1 => 1..3u32]).prop_map(|(q, n, delay)| Step::Send { q, n, delay }),
        6 => (q.clone(), 1..4u32, 0..3u32).prop_map(|(q, max, visibility)| Step::Receive { q, max, visibility }),
        3 => any::<usize>().prop_map(|k| Step::Delete { k }),
        2 => (any::<usize>(), 0..3u32).prop_map(|(k, seconds)| Step::ChangeVisibility { k, seconds }),
        1 => proptest::option::of(0..2usize).prop_map(|to| Step::Redrive { to }),
        1 => Just(Step::Expire),
        4 => prop_oneof![5 => 0..3_000u64, 1 => Just(61_000u64)].prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::CreateTopic),
        1 => Just(Step::DeleteTopic),
        2 => (q.clone(), any::<bool>(), any::<bool>()).prop_map(|(q, raw, filtered)| Step::Subscribe { q, raw, filtered }),
        1 => any::<usize>().prop_map(|k| Step::Unsubscribe { k }),
        3 => (1..3usize, any::<bool>()).prop_map(|(n, country)| Step::Publish { n, country }),
    ]
}

/// Runs `steps` on `e`; every result is dropped, as only the state counts.
async fn run(e: &Engine, steps: &[Step]) {
    let mut handles: Vec<(&str, String)> = Vec::new();
    let mut subscriptions: Vec<String> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match step.clone() {
            Step::CreateQueue {
                q,
                visibility,
                dead_letters,
            } => {
                let changes = AttributeChanges {
                    visibility_timeout_seconds: Some(visibility),
                    message_retention_seconds: Some(60),
                    redrive_policy: (dead_letters && QUEUES[q] != "dlq").then(|| {
                        Some(RedrivePolicy {
                            dead_letter_queue: "dlq".into(),
                            max_receive_count: 1,
                        })
                    }),
                    ..Default::default()
                };
                let _ = e.create_queue(QUEUES[q], &changes).await;
            }
            Step::UpdateQueue { q, retry, delay } => {
                let changes = AttributeChanges {
                    delay_seconds: Some(delay),
                    retry_policy: Some(retry.then_some(RetryPolicy {
                        min_backoff_seconds: 1,
                        max_backoff_seconds: 2,
                    })),
                    ..Default::default()
                };
                let _ = e.update_queue(QUEUES[q], &changes).await;
            }
            Step::DeleteQueue { q } => {
                let _ = e.delete_queue(QUEUES[q]).await;
            }
            Step::Purge { q } => {
                let _ = e.purge_queue(QUEUES[q]).await;
            }
            Step::Send { q, n, delay } => {
                let messages = (0..n)
                    .map(|j| NewMessage {
                        body: Bytes::from(format!("m{i}.{j}")),
                        attributes: HashMap::from([("n".to_string(), j.to_string())]),
                        delay_seconds: Some(delay),
                    })
                    .collect();
                let _ = e.send(QUEUES[q], messages).await;
            }
            Step::Receive { q, max, visibility } => {
                let opts = ReceiveOptions {
                    max_messages: max,
                    visibility_timeout_seconds: Some(visibility),
                    wait_time_seconds: Some(0),
                    ..Default::default()
                };
                if let Ok(got) = e.receive(QUEUES[q], opts).await {
                    handles.extend(got.into_iter().map(|m| (QUEUES[q], m.receipt_handle)));
                }
            }
            Step::Delete { k } if !handles.is_empty() => {
                let (q, h) = &handles[k % handles.len()];
                let _ = e.delete(q, &[h.as_str()]).await;
            }
            Step::ChangeVisibility { k, seconds } if !handles.is_empty() => {
                let (q, h) = &handles[k % handles.len()];
                let _ = e.change_visibility(q, &[(h.as_str(), seconds)]).await;
            }
            Step::Redrive { to } => {
                let _ = e.redrive("dlq", to.map_or("", |t| QUEUES[t]), 0).await;
            }
            Step::Expire => {
                let _ = e.expire().await;
            }
            Step::Advance { ms } => tokio::time::advance(Duration::from_millis(ms)).await,
            Step::CreateTopic => {
                let _ = e.create_topic("t").await;
            }
            Step::DeleteTopic => {
                let _ = e.delete_topic("t").await;
            }
            Step::Subscribe { q, raw, filtered } => {
                let filter = if filtered {
                    r#"{"country": ["IN"]}"#
                } else {
                    ""
                };
                if let Ok(s) = e.subscribe("t", QUEUES[q], filter, raw).await {
                    subscriptions.push(s.id);
                }
            }
            Step::Unsubscribe { k } if !subscriptions.is_empty() => {
                let _ = e.unsubscribe(&subscriptions[k % subscriptions.len()]).await;
            }
            Step::Publish { n, country } => {
                let messages = (0..n)
                    .map(|j| NewPublication {
                        body: Bytes::from(format!("p{i}.{j}")),
                        attributes: if country {
                            HashMap::from([("country".to_string(), "IN".to_string())])
                        } else {
                            HashMap::new()
                        },
                    })
                    .collect();
                let _ = e.publish("t", messages).await;
            }
            Step::Delete { .. } | Step::ChangeVisibility { .. } | Step::Unsubscribe { .. } => {}
        }
    }
}

/// A current-thread runtime with tokio's clock paused, per case.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn open(dir: &tempfile::TempDir) -> Engine {
    Engine::open(dir.path(), SyncMode::None).expect("open the engine")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("REPLAY_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    /// The commands of a random workload, replayed through their encoding
    /// on a second engine, give the same store and index; and the index
    /// rebuilt from either store at startup is the one kept in memory.
    #[test]
    fn replaying_the_commands_gives_the_same_store_and_index(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        paused_runtime().block_on(async {
            let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let a = open(&dir_a);
            run(&a, &steps).await;
            let b = open(&dir_b);
            for cmd in a.journal() {
                let decoded = Command::decode(cmd.encode_to_vec().as_slice()).expect("decode");
                prop_assert_eq!(&decoded, &cmd);
                b.replay(&decoded).await.expect("replay");
            }
            let now = a.now_ms().max(b.now_ms());
            prop_assert_eq!(a.dump(now), b.dump(now), "the replica differs");

            drop(a);
            let rebuilt = open(&dir_a);
            let later = now.max(rebuilt.now_ms());
            prop_assert_eq!(b.dump(later), rebuilt.dump(later), "the rebuilt index differs");
            Ok(())
        })?;
    }
}

/// The clock floor (`Engine::now_ms`) holds across a restart: a replica
/// that applied a command decided by a leader whose clock was an hour
/// ahead never reads an earlier time, even once reopened.
#[tokio::test]
async fn the_clock_floor_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Engine::open(&dir.path().join("leader"), SyncMode::None).unwrap();
    leader
        .create_queue("a", &AttributeChanges::default())
        .await
        .unwrap();
    let mut cmd = leader.journal().pop().expect("the create was journaled");
    let ahead = leader.now_ms() + 3_600_000;
    cmd.at_ms = ahead;
    let replica_dir = dir.path().join("replica");
    {
        let replica = Engine::open(&replica_dir, SyncMode::None).unwrap();
        assert!(
            replica
                .apply_entry(
                    1,
                    Some(&super::replication::Proposal::first_of_log(cmd)),
                    keys::RAFT_APPLIED,
                    b"1"
                )
                .unwrap()
        );
        assert!(replica.now_ms() >= ahead);
    }
    let reopened = Engine::open(&replica_dir, SyncMode::None).unwrap();
    reopened.start_at_entry(1).unwrap();
    assert!(
        reopened.now_ms() >= ahead,
        "time ran backwards across the restart"
    );
}
