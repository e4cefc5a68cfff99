//! Fan-out with topics: checkout publishes each completed payment once, and
//! the email, SMS (WhatsApp) and in-app notification workers each get their
//! own copy in their own queue, with their own retries and dead letters.
//! The email worker fails on large amounts, so those copies end up in
//! `email-dlq`; the SMS queue only gets payments from IN, BR and MX.
//! The logic is in `examples/src/payments.rs` (`examples::payments::run`),
//! which the test suite runs too.
//!
//! Runs against an embedded broker on a temp data dir, or a running one:
//!   cargo run --release -p examples --example payments
//!   cargo run --release -p examples --example payments -- --server 127.0.0.1:50051

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
    println!("broker at {addr}");
    let summary = examples::payments::run(&addr).await?;
    println!("\n{summary}");
    Ok(())
}
