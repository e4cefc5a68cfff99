//! The client subcommands of the `broker` binary, talking to a running
//! broker through [`broker_client::Client`]. The binary (`broker/src/main.rs`)
//! serves `broker serve` and `broker config print` itself and hands every
//! other subcommand to [`run`].
//!
//! Layout:
//! - `args`: the clap arguments: [`ClientArgs`] (server, `--json`, token,
//!   TLS) and the subcommands [`Command`], [`QueueCommand`], [`TopicCommand`].
//! - `queues`: `broker queue create|list|get|update|delete|purge`.
//! - `messages`: `send`, `receive` (`--delete`) and `delete`.
//! - `topics`: `broker topic create|list|get|delete`, `subscribe`,
//!   `unsubscribe`, `subscriptions` and `publish`.
//! - [`admin`]: the operator tools `peek`, `stats`, `top` and `redrive`
//!   (paced with `--per-second`).
//! - `output`: `Output`, text for people or JSON for scripts (`--json`),
//!   through which every command prints; `format`: the pieces of that text
//!   (tables, bodies, durations, timestamps).
//! - `error`: failed calls as the user sees them.
//!
//! Conventions:
//! - Output: short, aligned text for people by default; with `--json`, one
//!   JSON document per command, shaped like the RPC's response (`{"queue":
//!   ...}`, `{"messages": [...]}`, `{"moved": 3}`), for scripts.
//! - Errors: `anyhow` errors whose text is the broker's own message (it names
//!   the field, the limit and the value), so `main` prints `error: {err:#}`
//!   and exits non-zero. Flag mistakes (`--attr` without `=`, a dead-letter
//!   queue without `--max-receive-count`) are clap usage errors, caught before
//!   any connection is made.
//! - Ranges (visibility timeout, delay, ...) and filter policies are checked
//!   by the broker only, so the CLI cannot disagree with it.
//!
//! This crate depends on the client only, never on the server library.

use anyhow::anyhow;
use broker_client::Client;

pub mod admin;
mod args;
mod cluster;
mod error;
mod format;
mod messages;
mod output;
mod queues;
mod topics;

pub use args::{
    AttributeArgs, ClientArgs, Command, FilterArg, QueueCommand, TOP_INTERVAL_MIN, TopicCommand,
    parse_interval,
};
use output::Output;

/// Runs one client command against the broker at `args.server`.
pub async fn run(args: &ClientArgs, cmd: Command) -> anyhow::Result<()> {
    // Most calls report through `failure`, which adds the hint itself;
    // this catches a client error passed up as it is.
    run_command(args, cmd)
        .await
        .map_err(|e| match e.downcast_ref::<broker_client::Error>() {
            Some(broker_client::Error::Unauthenticated(_)) => {
                anyhow!("{e:#}\n{}", error::TOKEN_HINT)
            }
            _ => e,
        })
}

async fn run_command(args: &ClientArgs, cmd: Command) -> anyhow::Result<()> {
    // Checked before connecting: a usage mistake should not wait on the network.
    cmd.check()?;
    let client = Client::connect_with(&args.server, args.connect_options()?)
        .await
        .map_err(|e| {
            anyhow!(
                "{e}\nhint: is the broker running? Start one with `broker serve`, \
             or point --server / BROKER_ADDR at it"
            )
        })?;
    let client = &client;
    let out = Output::new(args.json);
    match cmd {
        Command::Queue { cmd } => queues::run(client, out, cmd).await,
        Command::Send {
            queue,
            body,
            attrs,
            delay,
        } => messages::send(client, out, queue, body, attrs, delay).await,
        Command::Receive {
            queue,
            max,
            wait,
            visibility,
            delete,
        } => messages::receive(client, out, queue, max, wait, visibility, delete).await,
        Command::Delete { queue, receipt } => messages::delete(client, out, queue, receipt).await,
        Command::Redrive {
            dlq,
            to,
            max,
            per_second,
        } => admin::redrive(client, out, dlq, to, max, per_second).await,
        Command::Peek { queue, max } => admin::peek(client, out, &queue, max).await,
        Command::Stats { prefix } => admin::stats(client, out, &prefix).await,
        Command::Top { prefix, interval } => {
            let ctrl_c = async {
                // If the handler cannot be installed, run until killed.
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            admin::top(client, args.json, &args.server, &prefix, interval, ctrl_c).await
        }
        Command::Topic { cmd } => topics::run(client, out, cmd).await,
        Command::Cluster { cmd } => cluster::run(client, out, cmd).await,
        Command::Subscribe {
            topic,
            queue,
            filter,
            raw,
        } => topics::subscribe(client, out, topic, queue, filter, raw).await,
        Command::Unsubscribe { id } => topics::unsubscribe(client, out, id).await,
        Command::Subscriptions { topic, queue } => {
            topics::subscriptions(client, out, topic, queue).await
        }
        Command::Publish { topic, body, attrs } => {
            topics::publish(client, out, topic, body, attrs).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::testing::parse;

    #[tokio::test]
    async fn update_without_flags_fails_before_connecting() {
        let cli = parse(&["--server", "127.0.0.1:1", "queue", "update", "q"]).unwrap();
        let err = run(&cli.client, cli.cmd).await.unwrap_err();
        assert!(err.to_string().starts_with("nothing to update"), "{err:#}");
    }
}
