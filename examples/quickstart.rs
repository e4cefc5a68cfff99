//! The tour of the queue API in one program: create a queue with a
//! dead-letter queue, send, receive with long polling, delete, watch a
//! failing message land in the dead-letter queue, and redrive it.
//!
//! Runs against an embedded broker on a temp data dir, or a running one:
//!   cargo run --release -p examples --example quickstart
//!   cargo run --release -p examples --example quickstart -- --server 127.0.0.1:50051

use anyhow::Context;
use broker_client::{Client, pb};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let server = args
        .iter()
        .position(|a| a == "--server")
        .and_then(|i| args.get(i + 1));
    let (addr, _embedded) = match server {
        Some(addr) => (addr.clone(), None),
        None => {
            let embedded = examples::EmbeddedBroker::start().await?;
            (embedded.addr(), Some(embedded))
        }
    };
    let client = Client::connect(&addr)
        .await
        .context("connecting to the broker")?;
    println!("connected to {addr}");

    // A queue whose messages move to `quickstart-dlq` after 2 failed receives.
    let dlq = "quickstart-dlq";
    let queue = "quickstart";
    client
        .create_queue(pb::CreateQueueRequest {
            name: dlq.into(),
            attributes: None,
        })
        .await?;
    client
        .create_queue(pb::CreateQueueRequest {
            name: queue.into(),
            attributes: Some(pb::QueueAttributes {
                visibility_timeout_seconds: Some(1),
                redrive_policy: Some(pb::RedrivePolicy {
                    dead_letter_queue: dlq.into(),
                    max_receive_count: 2,
                }),
                ..Default::default()
            }),
        })
        .await?;
    println!("created queues {queue} and {dlq}");

    let id = client.send(queue, "hello, broker").await?;
    println!("sent message {id}");
    let got = client.receive(queue, 10, 5).await?;
    println!(
        "received {:?} (receive #{})",
        String::from_utf8_lossy(&got[0].body),
        got[0].receive_count
    );
    client.delete(queue, &got[0].receipt_handle).await?;
    println!("deleted it");

    // A message whose worker keeps failing: received, never deleted.
    let poison = client.send(queue, "poison").await?;
    for attempt in 1..=2 {
        let got = client.receive(queue, 1, 5).await?;
        println!("attempt {attempt}: received poison message, failing (not deleting)");
        // Release it at once instead of waiting for the visibility timeout.
        client
            .change_message_visibility(pb::ChangeMessageVisibilityRequest {
                queue: queue.into(),
                receipt_handle: got[0].receipt_handle.clone(),
                visibility_timeout_seconds: 0,
            })
            .await?;
    }
    // The third receive finds it received twice already: it moves to the DLQ.
    let none = client.receive(queue, 1, 1).await?;
    let dead = client.receive(dlq, 1, 5).await?;
    println!(
        "queue returned {} messages; {dlq} holds {} (same id: {})",
        none.len(),
        dead.len(),
        dead.first().is_some_and(|m| m.message_id == poison)
    );
    client
        .change_message_visibility(pb::ChangeMessageVisibilityRequest {
            queue: dlq.into(),
            receipt_handle: dead[0].receipt_handle.clone(),
            visibility_timeout_seconds: 0,
        })
        .await?;
    let moved = client
        .redrive_messages(pb::RedriveMessagesRequest {
            source_queue: dlq.into(),
            destination_queue: String::new(),
            max_messages: 0,
        })
        .await?
        .moved;
    println!("redrove {moved} message(s) back to {queue}");
    let back = client.receive(queue, 1, 5).await?;
    client.delete(queue, &back[0].receipt_handle).await?;
    println!(
        "received it again (receive count {}) and deleted it. Done.",
        back[0].receive_count
    );
    Ok(())
}
