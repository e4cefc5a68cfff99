//! Criterion benches of the queue engine's hot paths, without gRPC:
//! `cargo bench -p benches --bench engine`.
//!
//! Each group names its scenario; the runtime and the engine are built
//! outside the measured closure. Writes use `--sync always` semantics
//! (each acknowledged send, publish or delete waits for its WAL sync).
//!
//! - `send_256b/N`: one send of N messages.
//! - `receive_delete_256b/N`: send, receive and delete N messages.
//! - `publish_fanout_256b/N`: publish one message to a topic with N
//!   subscribed queues (raw delivery); throughput counts the N copies.

use std::sync::Arc;

use broker::engine::{AttributeChanges, Engine, NewMessage, NewPublication, ReceiveOptions};
use broker::storage::SyncMode;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn engine(rt: &tokio::runtime::Runtime) -> (Arc<Engine>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Arc::new(Engine::open(dir.path(), SyncMode::Always).expect("open engine"));
    rt.block_on(engine.create_queue("bench", &AttributeChanges::default()))
        .expect("create queue");
    (engine, dir)
}

fn messages(n: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|_| NewMessage {
            body: Bytes::from(vec![b'x'; 256]),
            ..Default::default()
        })
        .collect()
}

fn send(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (engine, _dir) = engine(&rt);
    let mut group = c.benchmark_group("send_256b");
    for batch in [1usize, 10, 100] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.to_async(&rt).iter(|| async {
                engine.send("bench", messages(batch)).await.expect("send");
            })
        });
    }
    group.finish();
}

fn receive_delete(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (engine, _dir) = engine(&rt);
    let mut group = c.benchmark_group("receive_delete_256b");
    for batch in [1usize, 10, 100] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.to_async(&rt).iter(|| async {
                // Keep the queue from running dry; the send is part of the cost.
                engine.send("bench", messages(batch)).await.expect("send");
                let got = engine
                    .receive(
                        "bench",
                        ReceiveOptions {
                            max_messages: batch as u32,
                            visibility_timeout_seconds: Some(30),
                            wait_time_seconds: Some(0),
                            ..ReceiveOptions::default()
                        },
                    )
                    .await
                    .expect("receive");
                let handles: Vec<&str> = got.iter().map(|m| m.receipt_handle.as_str()).collect();
                engine.delete("bench", &handles).await.expect("delete");
            })
        });
    }
    group.finish();
}

fn publish_fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (engine, _dir) = engine(&rt);
    let mut group = c.benchmark_group("publish_fanout_256b");
    for fanout in [1usize, 10, 100] {
        let topic = format!("fanout-{fanout}");
        rt.block_on(async {
            engine.create_topic(&topic).await.expect("create topic");
            for i in 0..fanout {
                let queue = format!("{topic}-q{i}");
                engine
                    .create_queue(&queue, &AttributeChanges::default())
                    .await
                    .expect("create queue");
                engine
                    .subscribe(&topic, &queue, "", true)
                    .await
                    .expect("subscribe");
            }
        });
        group.throughput(Throughput::Elements(fanout as u64));
        group.bench_with_input(BenchmarkId::from_parameter(fanout), &topic, |b, topic| {
            b.to_async(&rt).iter(|| async {
                let publication = NewPublication {
                    body: Bytes::from(vec![b'x'; 256]),
                    ..Default::default()
                };
                let published = engine
                    .publish(topic, vec![publication])
                    .await
                    .expect("publish");
                assert_eq!(
                    published[0].as_ref().expect("published").delivered,
                    fanout as u32
                );
            })
        });
    }
    group.finish();
}

criterion_group!(benches, send, receive_delete, publish_fanout);
criterion_main!(benches);
