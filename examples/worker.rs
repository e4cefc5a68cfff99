//! An email worker built on `broker_client::Consumer`: at most 10 emails a
//! second, 3 sent at once, failed emails retried with backoff, bounced ones
//! dead-lettered after 3 attempts, and Ctrl-C for a graceful shutdown.
//!
//! It enqueues a few dozen emails with a `Publisher` first, so there is
//! something to do. Run several copies against one broker to see them share
//! the queue:
//!
//!   cargo run --release -p examples --example worker
//!   cargo run --release -p examples --example worker -- --server 127.0.0.1:50051
//!   cargo run --release -p examples --example worker -- --push --emails 100 --seconds 15
//!
//! Options:
//!   --server ADDR   the broker (default 127.0.0.1:50051; when nothing
//!                   answers there, an embedded broker on a temp dir is used)
//!   --emails N      emails to enqueue at start (default 40; 0: none)
//!   --seconds N     stop after N seconds instead of waiting for Ctrl-C
//!   --push          push delivery (StreamMessages) instead of long polling

use std::time::Duration;

use anyhow::Context;
use broker_client::{Client, Consumer, Message, OutgoingMessage, Publisher, pb};

const QUEUE: &str = "emails";
const DEAD_LETTERS: &str = "emails-dlq";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let server = option("--server").unwrap_or_else(|| "127.0.0.1:50051".into());
    let emails: usize = option("--emails").map_or(Ok(40), |n| n.parse())?;
    let seconds: Option<u64> = option("--seconds").map(|n| n.parse()).transpose()?;
    let push = args.iter().any(|a| a == "--push");

    // A running broker if one answers, else one embedded in this process.
    let (client, _embedded) = match Client::connect(&server).await {
        Ok(client) => {
            println!("connected to the broker at {server}");
            (client, None)
        }
        Err(error) => {
            println!("{error}\nstarting an embedded broker instead");
            let embedded = examples::EmbeddedBroker::start().await?;
            let client = Client::connect(embedded.addr())
                .await
                .context("connecting to the embedded broker")?;
            (client, Some(embedded))
        }
    };

    // The queue and its dead-letter queue, unless they exist already.
    client
        .create_queue(pb::CreateQueueRequest {
            name: DEAD_LETTERS.into(),
            attributes: None,
        })
        .await
        .context("creating the dead-letter queue")?;
    client
        .create_queue(pb::CreateQueueRequest {
            name: QUEUE.into(),
            attributes: Some(pb::QueueAttributes {
                visibility_timeout_seconds: Some(10),
                redrive_policy: Some(pb::RedrivePolicy {
                    dead_letter_queue: DEAD_LETTERS.into(),
                    max_receive_count: 3,
                }),
                ..Default::default()
            }),
        })
        .await
        .context("creating the queue (an existing one with other attributes is refused)")?;

    // Something to do: every 10th address bounces (it always fails), every
    // 7th email fails once (a flaky mail server) and succeeds when retried.
    let publisher = Publisher::queue(&client, QUEUE).build()?;
    for i in 0..emails {
        let to = if i % 10 == 9 {
            format!("bounce{i}@example.invalid")
        } else {
            format!("user{i}@example.com")
        };
        let email = OutgoingMessage::new(format!("Your receipt #{i}")).attribute("to", to);
        let _ack = publisher.send(email).await?;
    }
    publisher.flush().await;
    println!("enqueued {emails} emails");

    let consumer = Consumer::builder(&client, QUEUE)
        .concurrency(3)
        .max_per_second(10)
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(10))
        .push(push)
        .shutdown_timeout(Duration::from_secs(10))
        .start(send_email)
        .await?;
    println!(
        "working ({} mode); Ctrl-C to stop",
        if push { "push" } else { "pull" }
    );

    let stop_after = async {
        match seconds {
            Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("\nCtrl-C: finishing the emails being sent"),
        _ = stop_after => println!("time is up: finishing the emails being sent"),
        _ = consumer.closed() => println!("the consumer stopped on an error"),
    }
    let summary = consumer.shutdown().await;
    println!("{summary}");
    let dead = client
        .get_queue(pb::GetQueueRequest {
            name: DEAD_LETTERS.into(),
        })
        .await?
        .stats
        .unwrap_or_default()
        .visible;
    println!("{DEAD_LETTERS} holds {dead} email(s) that bounced 3 times");
    Ok(())
}

/// The handler: "sends" one email. An `Err` makes the consumer retry it
/// after a backoff; the third failure sends it to the dead-letter queue.
async fn send_email(message: Message) -> Result<(), String> {
    let to = message.attributes.get("to").cloned().unwrap_or_default();
    let body = String::from_utf8_lossy(&message.body).into_owned();
    let attempt = message.receive_count;
    // Pretend the SMTP exchange takes a while.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if to.starts_with("bounce") {
        println!("  ✗ {to}: mailbox does not exist (attempt {attempt})");
        return Err(format!("{to} bounced"));
    }
    let number: usize = body
        .rsplit('#')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if number % 7 == 6 && attempt == 1 {
        println!("  ~ {to}: mail server busy, will retry");
        return Err("mail server busy".into());
    }
    println!("  ✓ {to}: {body:?} (attempt {attempt})");
    Ok(())
}
