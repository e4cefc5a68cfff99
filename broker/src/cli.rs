//! The client half of the `broker` binary, talking to a running broker
//! through [`broker_client::Client`]:
//!
//! - queues: `broker queue create|list|get|update|delete|purge`, `send`,
//!   `receive`, `delete` and `redrive` (paced with `--per-second`);
//! - operators: `peek` (look without receiving), `stats` (every queue's
//!   counts) and `top` (the same, refreshed), in module [`admin`];
//! - topics: `broker topic create|list|get|delete`, `subscribe`,
//!   `unsubscribe`, `subscriptions` and `publish`.
//!
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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use broker_client::{Client, ConnectOptions, pb};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;

pub mod admin;

/// Options shared by every client command.
#[derive(clap::Args, Debug, Default)]
pub struct ClientArgs {
    /// Broker address, "host:port" or "http://host:port"
    #[arg(
        long,
        global = true,
        env = "BROKER_ADDR",
        default_value = "127.0.0.1:50051",
        display_order = 1000
    )]
    pub server: String,
    /// Print JSON instead of text
    #[arg(long, global = true, display_order = 1000)]
    pub json: bool,
    /// Token for a broker with authentication (sent as `authorization: Bearer`)
    #[arg(
        long,
        global = true,
        env = "BROKER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        display_order = 1001
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) of the broker's TLS certificate; connects with TLS
    #[arg(
        long,
        global = true,
        env = "BROKER_TLS_CA",
        value_name = "FILE",
        display_order = 1001
    )]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for a broker that requires one; with --client-key
    // Not `--tls-cert`: that is `broker serve`'s own certificate.
    #[arg(
        long,
        global = true,
        env = "BROKER_CLIENT_CERT",
        value_name = "FILE",
        display_order = 1001
    )]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert
    #[arg(
        long,
        global = true,
        env = "BROKER_CLIENT_KEY",
        value_name = "FILE",
        display_order = 1001
    )]
    pub client_key: Option<PathBuf>,
}

impl ClientArgs {
    /// The token and TLS settings of the flags, with the PEM files read.
    pub fn connect_options(&self) -> anyhow::Result<ConnectOptions> {
        let read = |path: &PathBuf, flag: &str| {
            std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
        };
        let mut options = ConnectOptions::new();
        if let Some(token) = &self.token {
            options = options.token(token.trim());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.tls_ca_pem(read(ca, "--tls-ca")?);
        }
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                options = options
                    .tls_identity_pem(read(cert, "--client-cert")?, read(key, "--client-key")?);
            }
            (None, None) => {}
            (Some(_), None) => bail!("--client-cert needs --client-key (its private key)"),
            (None, Some(_)) => bail!("--client-key needs --client-cert (its certificate)"),
        }
        Ok(options)
    }
}

/// Commands that talk to a running broker.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create, list, inspect, change, purge and delete queues
    Queue {
        #[command(subcommand)]
        cmd: QueueCommand,
    },
    /// Send a message and print its id
    Send {
        /// Queue to send to
        queue: String,
        /// Message body; when absent, read from stdin as is (binary safe)
        body: Option<String>,
        /// Message attribute, repeatable (at most 10)
        #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
        /// Hide the message for S seconds (0..=900) [default: the queue's delay]
        #[arg(long, value_name = "S")]
        delay: Option<u32>,
    },
    /// Receive messages and print them; they stay hidden for the visibility timeout
    Receive {
        /// Queue to receive from
        queue: String,
        /// Receive at most N messages (1..=100)
        #[arg(long, value_name = "N", default_value_t = 1)]
        max: u32,
        /// Wait up to S seconds for a message (0..=20) [default: the queue's receive wait]
        #[arg(long, value_name = "S")]
        wait: Option<u32>,
        /// Hide the messages for S seconds [default: the queue's visibility timeout]
        #[arg(long, value_name = "S")]
        visibility: Option<u32>,
        /// Delete the messages after printing them
        #[arg(long)]
        delete: bool,
    },
    /// Delete a received message by its receipt handle
    Delete {
        /// Queue the message was received from
        queue: String,
        /// The receipt handle of the message's latest receive
        receipt: String,
    },
    /// Move messages out of a dead-letter queue and print how many moved
    Redrive {
        /// The dead-letter queue
        dlq: String,
        /// Move them to QUEUE [default: back to the queue each one died in]
        #[arg(long, value_name = "QUEUE")]
        to: Option<String>,
        /// Move at most N messages [default: all]
        #[arg(long, value_name = "N")]
        max: Option<u32>,
        /// Move at most N messages a second, a few per call, showing progress
        /// on stderr [default: all in one call]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        per_second: Option<u32>,
    },
    /// Show messages without receiving them (a dead-letter queue's too):
    /// receive counts and visibility stay as they are
    Peek {
        /// Queue to look into
        queue: String,
        /// Show at most N messages, oldest first
        #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        max: u32,
    },
    /// Show every queue with its message counts
    Stats {
        /// Only queues whose name starts with P
        #[arg(long, value_name = "P", default_value = "")]
        prefix: String,
    },
    /// Show every queue's counts, refreshed until Ctrl-C, with the change of
    /// visible messages per second
    Top {
        /// Only queues whose name starts with P
        #[arg(long, value_name = "P", default_value = "")]
        prefix: String,
        /// Time between refreshes, e.g. 1s, 500ms, 5 (seconds)
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = admin::parse_interval)]
        interval: std::time::Duration,
    },
    /// Create, list, inspect and delete topics
    Topic {
        #[command(subcommand)]
        cmd: TopicCommand,
    },
    /// Subscribe a queue to a topic and print the subscription's id
    Subscribe {
        /// Topic to subscribe to
        topic: String,
        /// Queue that gets a copy of every matching message
        queue: String,
        /// Filter policy over message attributes, SNS syntax, e.g.
        /// '{"country": ["IN", "BR"]}'; @FILE reads it from FILE [default: every message]
        #[arg(long, value_name = "JSON|@FILE", value_parser = parse_filter)]
        filter: Option<FilterArg>,
        /// Copy body and attributes as they are, instead of a JSON envelope
        #[arg(long)]
        raw: bool,
    },
    /// Remove a subscription; the queue and its messages stay
    Unsubscribe {
        /// The subscription's id, as printed by `subscribe`
        id: String,
    },
    /// List subscriptions, of one topic and/or one queue
    Subscriptions {
        /// Only the subscriptions of topic T
        #[arg(long, value_name = "T")]
        topic: Option<String>,
        /// Only the subscriptions of queue Q
        #[arg(long, value_name = "Q")]
        queue: Option<String>,
    },
    /// Publish a message to a topic; print its id and how many copies were delivered
    Publish {
        /// Topic to publish to
        topic: String,
        /// Message body; when absent, read from stdin as is (binary safe)
        body: Option<String>,
        /// Message attribute, repeatable (at most 10); filter policies match on these
        #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
    },
}

/// `broker topic ...`
#[derive(clap::Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic (no change if it exists)
    Create {
        /// Topic name: 1..=80 of A-Z a-z 0-9 _ -
        name: String,
    },
    /// List topics in name order
    List {
        /// Only topics whose name starts with P
        #[arg(long, value_name = "P", default_value = "")]
        prefix: String,
    },
    /// Show a topic and its number of subscriptions
    Get {
        /// Topic name
        name: String,
    },
    /// Delete a topic and its subscriptions; the subscribed queues stay
    Delete {
        /// Topic name
        name: String,
    },
}

/// The value of `subscribe --filter`: the policy itself, or the file it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterArg {
    /// `--filter '{"k": ["v"]}'`
    Inline(String),
    /// `--filter @policy.json`
    File(PathBuf),
}

impl FilterArg {
    /// The policy text, checked by the broker only; a file's surrounding
    /// whitespace (its final newline) is left out.
    fn resolve(&self) -> anyhow::Result<String> {
        match self {
            FilterArg::Inline(policy) => Ok(policy.clone()),
            FilterArg::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .with_context(|| format!("cannot read the filter policy from {}", path.display())),
        }
    }
}

/// Parses `--filter`: `@FILE` names a file, anything else is the policy.
fn parse_filter(s: &str) -> Result<FilterArg, String> {
    match s.strip_prefix('@') {
        Some("") => Err("'@' needs a file name: --filter @policy.json".to_owned()),
        Some(path) => Ok(FilterArg::File(PathBuf::from(path))),
        None if s.trim().is_empty() => Err(
            "the filter policy is empty; leave out --filter to receive every message".to_owned(),
        ),
        None => Ok(FilterArg::Inline(s.to_owned())),
    }
}

/// `broker queue ...`
#[derive(clap::Subcommand, Debug)]
pub enum QueueCommand {
    /// Create a queue (no change if it exists with the same attributes)
    Create {
        /// Queue name: 1..=80 of A-Z a-z 0-9 _ -
        name: String,
        #[command(flatten)]
        attributes: AttributeArgs,
    },
    /// List queues in name order
    List {
        /// Only queues whose name starts with P
        #[arg(long, value_name = "P", default_value = "")]
        prefix: String,
    },
    /// Show a queue's attributes and message counts
    Get {
        /// Queue name
        name: String,
    },
    /// Change a queue's attributes; the ones not given keep their value
    Update {
        /// Queue name
        name: String,
        #[command(flatten)]
        attributes: AttributeArgs,
        /// Remove the redrive policy: messages no longer move to a dead-letter queue
        #[arg(long, conflicts_with_all = ["dead_letter_queue", "max_receive_count"])]
        no_redrive_policy: bool,
        /// Remove the retry policy: lapsed messages are visible again at once
        #[arg(long, conflicts_with_all = ["min_backoff", "max_backoff"])]
        no_retry_policy: bool,
    },
    /// Delete a queue and all of its messages
    Delete {
        /// Queue name
        name: String,
    },
    /// Delete every message of a queue, in-flight ones too
    Purge {
        /// Queue name
        name: String,
    },
}

/// Queue attribute flags of `queue create` and `queue update`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AttributeArgs {
    /// Seconds a received message stays hidden (0..=43200) [new queues: 30]
    #[arg(long, value_name = "S")]
    pub visibility_timeout: Option<u32>,
    /// Seconds a message is kept (60..=1209600) [new queues: 345600, 4 days]
    #[arg(long, value_name = "S")]
    pub retention: Option<u32>,
    /// Seconds a new message stays hidden (0..=900) [new queues: 0]
    #[arg(long, value_name = "S")]
    pub delay: Option<u32>,
    /// Seconds a receive waits for a message by default (0..=20) [new queues: 0]
    #[arg(long, value_name = "S")]
    pub receive_wait: Option<u32>,
    /// Largest message, body plus attributes, in bytes (1024..=1048576) [new queues: 262144]
    #[arg(long, value_name = "N")]
    pub max_message_bytes: Option<u32>,
    /// Move a message to this queue once it has been received --max-receive-count times
    #[arg(long, value_name = "QUEUE", requires = "max_receive_count")]
    pub dead_letter_queue: Option<String>,
    /// Receives before a message moves to the dead-letter queue (1..=1000)
    #[arg(long, value_name = "N", requires = "dead_letter_queue")]
    pub max_receive_count: Option<u32>,
    /// Messages per second all receivers together may take (0..=100000; 0: unlimited) [new queues: 0]
    #[arg(long, value_name = "N")]
    pub max_receive_rate: Option<u32>,
    /// Messages receivable at once after an idle period (at least the rate) [new queues: the rate]
    #[arg(long, value_name = "N")]
    pub max_receive_burst: Option<u32>,
    /// Retry backoff: a lapsed or released message waits MIN * 2^(receives - 1) seconds (0..=600)
    #[arg(long, value_name = "S", requires = "max_backoff")]
    pub min_backoff: Option<u32>,
    /// Retry backoff cap in seconds (MIN..=600)
    #[arg(long, value_name = "S", requires = "min_backoff")]
    pub max_backoff: Option<u32>,
}

impl AttributeArgs {
    /// True when no flag is given.
    fn is_empty(&self) -> bool {
        let AttributeArgs {
            visibility_timeout,
            retention,
            delay,
            receive_wait,
            max_message_bytes,
            dead_letter_queue,
            max_receive_count,
            max_receive_rate,
            max_receive_burst,
            min_backoff,
            max_backoff,
        } = self;
        visibility_timeout.is_none()
            && retention.is_none()
            && delay.is_none()
            && receive_wait.is_none()
            && max_message_bytes.is_none()
            && dead_letter_queue.is_none()
            && max_receive_count.is_none()
            && max_receive_rate.is_none()
            && max_receive_burst.is_none()
            && min_backoff.is_none()
            && max_backoff.is_none()
    }

    /// The attributes to send: unset flags stay unset, so the broker applies
    /// its default (create) or keeps the current value (update).
    fn to_pb(&self) -> pb::QueueAttributes {
        let redrive_policy = match (&self.dead_letter_queue, self.max_receive_count) {
            (Some(dlq), Some(count)) => Some(pb::RedrivePolicy {
                dead_letter_queue: dlq.clone(),
                max_receive_count: count,
            }),
            // clap's `requires` makes the two flags come together.
            _ => None,
        };
        pb::QueueAttributes {
            visibility_timeout_seconds: self.visibility_timeout,
            message_retention_seconds: self.retention,
            delay_seconds: self.delay,
            receive_wait_time_seconds: self.receive_wait,
            max_message_bytes: self.max_message_bytes,
            redrive_policy,
            clear_redrive_policy: false,
            max_receive_rate: self.max_receive_rate,
            max_receive_burst: self.max_receive_burst,
            // clap's `requires` makes the two flags come together.
            retry_policy: self.min_backoff.zip(self.max_backoff).map(|(min, max)| {
                pb::RetryPolicy {
                    min_backoff_seconds: min,
                    max_backoff_seconds: max,
                }
            }),
            clear_retry_policy: false,
        }
    }
}

/// Parses one `--attr KEY=VALUE`; the value may itself contain `=`.
fn parse_attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        Some(_) => Err(format!(
            "attribute '{s}' has an empty key; expected KEY=VALUE"
        )),
        None => Err(format!("attribute '{s}' has no '='; expected KEY=VALUE")),
    }
}

/// The attributes of `--attr` flags; a key given twice is an error.
fn attribute_map(attrs: Vec<(String, String)>) -> anyhow::Result<HashMap<String, String>> {
    let mut attributes = HashMap::with_capacity(attrs.len());
    for (key, value) in attrs {
        if attributes.insert(key.clone(), value).is_some() {
            bail!("attribute '{key}' is given more than once");
        }
    }
    Ok(attributes)
}

/// Runs one client command against the broker at `args.server`.
pub async fn run(args: &ClientArgs, cmd: Command) -> anyhow::Result<()> {
    // Most calls report through `failure`, which adds the hint itself;
    // this catches a client error passed up as it is.
    run_command(args, cmd)
        .await
        .map_err(|e| match e.downcast_ref::<broker_client::Error>() {
            Some(broker_client::Error::Unauthenticated(_)) => anyhow!("{e:#}\n{TOKEN_HINT}"),
            _ => e,
        })
}

/// Added to an UNAUTHENTICATED error.
const TOKEN_HINT: &str =
    "hint: the broker requires a valid token: pass it with --token or set BROKER_TOKEN";

async fn run_command(args: &ClientArgs, cmd: Command) -> anyhow::Result<()> {
    // Checked before connecting: a usage mistake should not wait on the network.
    if let Command::Queue {
        cmd:
            QueueCommand::Update {
                attributes,
                no_redrive_policy: false,
                no_retry_policy: false,
                ..
            },
    } = &cmd
        && attributes.is_empty()
    {
        bail!(
            "nothing to update: give at least one attribute flag (see `broker queue update --help`)"
        );
    }
    let client = Client::connect_with(&args.server, args.connect_options()?)
        .await
        .map_err(|e| {
            anyhow!(
                "{e}\nhint: is the broker running? Start one with `broker serve`, \
             or point --server / BROKER_ADDR at it"
            )
        })?;
    let json = args.json;
    match cmd {
        Command::Queue { cmd } => run_queue(&client, json, cmd).await,
        Command::Send {
            queue,
            body,
            attrs,
            delay,
        } => {
            let attributes = attribute_map(attrs)?;
            let body = match body {
                Some(body) => Bytes::from(body),
                None => read_stdin().await?,
            };
            let resp = client
                .send_message(pb::SendMessageRequest {
                    queue: queue.clone(),
                    body,
                    attributes,
                    delay_seconds: delay,
                })
                .await
                .map_err(|e| failure(e, Some(&queue)))?;
            if json {
                emit_json(&json!({ "message_id": resp.message_id }))
            } else {
                emit(&format!("{}\n", resp.message_id))
            }
        }
        Command::Receive {
            queue,
            max,
            wait,
            visibility,
            delete,
        } => {
            let messages = client
                .receive_messages(pb::ReceiveMessagesRequest {
                    queue: queue.clone(),
                    max_messages: max,
                    visibility_timeout_seconds: visibility,
                    wait_time_seconds: wait,
                })
                .await
                .map_err(|e| failure(e, Some(&queue)))?
                .messages;
            // Print first: with --delete, a message must never be deleted
            // without having been shown.
            if json {
                let list: Vec<Value> = messages.iter().map(message_json).collect();
                emit_json(&json!({ "messages": list }))?;
            } else {
                emit(&messages_text(&messages))?;
            }
            if delete && !messages.is_empty() {
                delete_all(&client, &queue, &messages).await?;
                if !json {
                    emit(&format!(
                        "deleted {}\n",
                        plural(messages.len() as u64, "message")
                    ))?;
                }
            }
            Ok(())
        }
        Command::Delete { queue, receipt } => {
            client
                .delete(&queue, &receipt)
                .await
                .map_err(|e| failure(e, Some(&queue)))?;
            if json {
                emit_json(&json!({}))
            } else {
                emit("deleted message\n")
            }
        }
        Command::Redrive {
            dlq,
            to,
            max,
            per_second,
        } => {
            let request = pb::RedriveMessagesRequest {
                source_queue: dlq.clone(),
                destination_queue: to.clone().unwrap_or_default(),
                max_messages: max.unwrap_or(0),
            };
            let per_second = per_second
                .map(|n| std::num::NonZeroU32::new(n).context("--per-second must be at least 1"))
                .transpose()?;
            let moved = match per_second {
                None => client.redrive_messages(request).await.map(|r| r.moved),
                Some(rate) => {
                    let mut progress = admin::ProgressPrinter::new(&dlq);
                    let moved =
                        admin::redrive_paced(&client, request, rate, |p| progress.update(p)).await;
                    progress.finish();
                    moved
                }
            }
            // With --to, NOT_FOUND may be about either queue: let the broker say which.
            .map_err(|e| failure(e, to.is_none().then_some(dlq.as_str())))?;
            if json {
                emit_json(&json!({ "moved": moved }))
            } else {
                let destination = match &to {
                    Some(queue) => format!("to '{queue}'"),
                    None => "back to their source queues".to_owned(),
                };
                emit(&format!(
                    "moved {} from '{dlq}' {destination}\n",
                    plural(moved, "message")
                ))
            }
        }
        Command::Peek { queue, max } => admin::peek(&client, json, &queue, max).await,
        Command::Stats { prefix } => admin::stats(&client, json, &prefix).await,
        Command::Top { prefix, interval } => {
            let ctrl_c = async {
                // If the handler cannot be installed, run until killed.
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            admin::top(&client, json, &args.server, &prefix, interval, ctrl_c).await
        }
        Command::Topic { cmd } => run_topic(&client, json, cmd).await,
        Command::Subscribe {
            topic,
            queue,
            filter,
            raw,
        } => {
            let filter_policy = filter
                .as_ref()
                .map(FilterArg::resolve)
                .transpose()?
                .unwrap_or_default();
            let subscription = client
                .subscribe(pb::SubscribeRequest {
                    topic,
                    queue,
                    filter_policy,
                    raw_delivery: raw,
                })
                .await
                // NOT_FOUND may be about the topic or the queue: let the broker say which.
                .map_err(|e| failure(e, None))?
                .subscription
                .context("the broker returned no subscription")?;
            if json {
                emit_json(&json!({ "subscription": subscription_json(&subscription) }))
            } else {
                emit(&format!("{}\n", subscription.id))
            }
        }
        Command::Unsubscribe { id } => {
            client
                .unsubscribe(pb::UnsubscribeRequest {
                    subscription_id: id.clone(),
                })
                .await
                .map_err(|e| failure_of(e, Some(("subscription", &id))))?;
            if json {
                emit_json(&json!({}))
            } else {
                emit(&format!("deleted subscription '{id}'\n"))
            }
        }
        Command::Subscriptions { topic, queue } => {
            let only = match (&topic, &queue) {
                (Some(topic), None) => Some(("topic", topic.as_str())),
                (None, Some(queue)) => Some(("queue", queue.as_str())),
                _ => None,
            };
            let subscriptions = client
                .list_all_subscriptions(pb::ListSubscriptionsRequest {
                    topic: topic.clone().unwrap_or_default(),
                    queue: queue.clone().unwrap_or_default(),
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .map_err(|e| failure_of(e, only))?;
            if json {
                let list: Vec<Value> = subscriptions.iter().map(subscription_json).collect();
                emit_json(&json!({ "subscriptions": list }))
            } else {
                emit(&subscriptions_table(&subscriptions))
            }
        }
        Command::Publish { topic, body, attrs } => {
            let attributes = attribute_map(attrs)?;
            let body = match body {
                Some(body) => Bytes::from(body),
                None => read_stdin().await?,
            };
            let resp = client
                .publish(&topic, body, attributes)
                .await
                .map_err(|e| failure_of(e, Some(("topic", &topic))))?;
            if json {
                emit_json(&json!({
                    "message_id": resp.message_id,
                    "delivered": resp.delivered,
                }))
            } else {
                emit(&publish_text(&resp))
            }
        }
    }
}

async fn run_topic(client: &Client, json: bool, cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create { name } => {
            let topic = client
                .create_topic(pb::CreateTopicRequest { name: name.clone() })
                .await
                .map_err(|e| failure_of(e, Some(("topic", &name))))?
                .topic
                .context("the broker returned no topic")?;
            if json {
                emit_json(&json!({ "topic": topic_json(&topic) }))
            } else {
                emit(&topic_text(&topic, None))
            }
        }
        TopicCommand::List { prefix } => {
            let topics = client
                .list_all_topics(pb::ListTopicsRequest {
                    prefix,
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .map_err(|e| failure(e, None))?;
            if json {
                let list: Vec<Value> = topics.iter().map(topic_json).collect();
                emit_json(&json!({ "topics": list }))
            } else {
                emit(&topics_table(&topics))
            }
        }
        TopicCommand::Get { name } => {
            let resp = client
                .get_topic(pb::GetTopicRequest { name: name.clone() })
                .await
                .map_err(|e| failure_of(e, Some(("topic", &name))))?;
            let topic = resp.topic.context("the broker returned no topic")?;
            if json {
                emit_json(&json!({
                    "topic": topic_json(&topic),
                    "subscription_count": resp.subscription_count,
                }))
            } else {
                emit(&topic_text(&topic, Some(resp.subscription_count)))
            }
        }
        TopicCommand::Delete { name } => {
            client
                .delete_topic(pb::DeleteTopicRequest { name: name.clone() })
                .await
                .map_err(|e| failure_of(e, Some(("topic", &name))))?;
            if json {
                emit_json(&json!({}))
            } else {
                emit(&format!("deleted topic '{name}'\n"))
            }
        }
    }
}

async fn run_queue(client: &Client, json: bool, cmd: QueueCommand) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Create { name, attributes } => {
            // A missing dead-letter queue is also NOT_FOUND: let the broker say which.
            let only_queue = attributes
                .dead_letter_queue
                .is_none()
                .then_some(name.as_str());
            let queue = client
                .create_queue(pb::CreateQueueRequest {
                    name: name.clone(),
                    attributes: Some(attributes.to_pb()),
                })
                .await
                .map_err(|e| failure(e, only_queue))?
                .queue
                .context("the broker returned no queue")?;
            if json {
                emit_json(&json!({ "queue": queue_json(&queue) }))
            } else {
                emit(&queue_text(&queue, None))
            }
        }
        QueueCommand::List { prefix } => {
            let queues = all_queues(client, &prefix)
                .await
                .map_err(|e| failure(e, None))?;
            if json {
                let list: Vec<Value> = queues.iter().map(queue_json).collect();
                emit_json(&json!({ "queues": list }))
            } else {
                emit(&queues_table(&queues))
            }
        }
        QueueCommand::Get { name } => {
            let resp = client
                .get_queue(pb::GetQueueRequest { name: name.clone() })
                .await
                .map_err(|e| failure(e, Some(&name)))?;
            let queue = resp.queue.context("the broker returned no queue")?;
            if json {
                emit_json(&json!({
                    "queue": queue_json(&queue),
                    "stats": resp.stats.as_ref().map(stats_json),
                }))
            } else {
                emit(&queue_text(&queue, resp.stats.as_ref()))
            }
        }
        QueueCommand::Update {
            name,
            attributes,
            no_redrive_policy,
            no_retry_policy,
        } => {
            let only_queue = attributes
                .dead_letter_queue
                .is_none()
                .then_some(name.as_str());
            let mut pb_attributes = attributes.to_pb();
            pb_attributes.clear_redrive_policy = no_redrive_policy;
            pb_attributes.clear_retry_policy = no_retry_policy;
            let queue = client
                .update_queue(pb::UpdateQueueRequest {
                    name: name.clone(),
                    attributes: Some(pb_attributes),
                })
                .await
                .map_err(|e| failure(e, only_queue))?
                .queue
                .context("the broker returned no queue")?;
            if json {
                emit_json(&json!({ "queue": queue_json(&queue) }))
            } else {
                emit(&queue_text(&queue, None))
            }
        }
        QueueCommand::Delete { name } => {
            client
                .delete_queue(pb::DeleteQueueRequest { name: name.clone() })
                .await
                .map_err(|e| failure(e, Some(&name)))?;
            if json {
                emit_json(&json!({}))
            } else {
                emit(&format!("deleted queue '{name}'\n"))
            }
        }
        QueueCommand::Purge { name } => {
            client
                .purge_queue(pb::PurgeQueueRequest { name: name.clone() })
                .await
                .map_err(|e| failure(e, Some(&name)))?;
            if json {
                emit_json(&json!({}))
            } else {
                emit(&format!("purged queue '{name}'\n"))
            }
        }
    }
}

/// Every queue whose name starts with `prefix`, in name order.
async fn all_queues(client: &Client, prefix: &str) -> Result<Vec<pb::Queue>, broker_client::Error> {
    client
        .list_all_queues(pb::ListQueuesRequest {
            prefix: prefix.to_owned(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
}

/// Deletes received messages in one batch call; fails naming every entry
/// the broker refused.
async fn delete_all(
    client: &Client,
    queue: &str,
    messages: &[pb::ReceivedMessage],
) -> anyhow::Result<()> {
    let entries = messages
        .iter()
        .enumerate()
        .map(|(i, m)| pb::DeleteMessageBatchEntry {
            id: i.to_string(),
            receipt_handle: m.receipt_handle.clone(),
        })
        .collect();
    let resp = client
        .delete_message_batch(pb::DeleteMessageBatchRequest {
            queue: queue.to_owned(),
            entries,
        })
        .await
        .map_err(|e| failure(e, Some(queue)))
        .context("messages were received but not deleted")?;
    if resp.failed.is_empty() {
        return Ok(());
    }
    let mut text = format!(
        "could not delete {} of {} received messages:",
        resp.failed.len(),
        messages.len()
    );
    for failed in &resp.failed {
        let id = failed
            .id
            .parse::<usize>()
            .ok()
            .and_then(|i| messages.get(i))
            .map_or(failed.id.as_str(), |m| m.message_id.as_str());
        let _ = write!(text, "\n  {id}: {} ({})", failed.message, failed.code);
    }
    Err(anyhow!(text))
}

/// Turns a failed call into the error `main` prints.
///
/// The broker's messages for bad input are written for users, so they are
/// shown as they are. `queue` is the one queue the call names, if there is
/// only one: NOT_FOUND can then only be about it.
fn failure(err: broker_client::Error, queue: Option<&str>) -> anyhow::Error {
    failure_of(err, queue.map(|queue| ("queue", queue)))
}

/// [`failure`] for a call that names one thing of any kind: `("topic",
/// "payments")` turns NOT_FOUND into "topic 'payments' not found".
fn failure_of(err: broker_client::Error, only: Option<(&str, &str)>) -> anyhow::Error {
    use broker_client::Error as E;
    match (&err, only) {
        (E::NotFound(_), Some((kind, name))) => anyhow!("{kind} '{name}' not found"),
        (E::Unauthenticated(_), _) => anyhow!("{err}\n{TOKEN_HINT}"),
        (
            E::InvalidArgument(m) | E::NotFound(m) | E::AlreadyExists(m) | E::FailedPrecondition(m),
            _,
        ) if !m.is_empty() => anyhow!("{m}"),
        _ => anyhow!("{err}"),
    }
}

/// Reads a message body from stdin, exactly as given.
async fn read_stdin() -> anyhow::Result<Bytes> {
    if std::io::stdin().is_terminal() {
        eprintln!("reading the message body from stdin; end it with Ctrl-D");
    }
    let mut body = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut body)
        .await
        .context("cannot read the message body from stdin")?;
    Ok(Bytes::from(body))
}

/// Writes to stdout; a closed pipe (`broker queue list | head -1`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn emit_json(value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    emit(&text)
}

fn queue_json(queue: &pb::Queue) -> Value {
    let a = queue.attributes.clone().unwrap_or_default();
    json!({
        "name": queue.name,
        "created_at_ms": queue.created_at_ms,
        "attributes": {
            "visibility_timeout_seconds": a.visibility_timeout_seconds,
            "message_retention_seconds": a.message_retention_seconds,
            "delay_seconds": a.delay_seconds,
            "receive_wait_time_seconds": a.receive_wait_time_seconds,
            "max_message_bytes": a.max_message_bytes,
            "redrive_policy": a.redrive_policy.map(|p| json!({
                "dead_letter_queue": p.dead_letter_queue,
                "max_receive_count": p.max_receive_count,
            })),
        },
    })
}

fn stats_json(stats: &pb::QueueStats) -> Value {
    json!({
        "visible": stats.visible,
        "in_flight": stats.in_flight,
        "delayed": stats.delayed,
        "oldest_message_age_seconds": stats.oldest_message_age_seconds,
    })
}

/// A received message as JSON, with its body as [`with_body`] gives it.
fn message_json(m: &pb::ReceivedMessage) -> Value {
    let value = json!({
        "message_id": m.message_id,
        "receipt_handle": m.receipt_handle,
        "receive_count": m.receive_count,
        "sent_at_ms": m.sent_at_ms,
        "first_received_at_ms": m.first_received_at_ms,
        "attributes": m.attributes,
    });
    with_body(value, &m.body)
}

/// `value` (a JSON object) with the message body: `body` as UTF-8 (lossy),
/// and `body_base64` with the exact bytes when they are not valid UTF-8.
fn with_body(mut value: Value, body: &[u8]) -> Value {
    value["body"] = json!(String::from_utf8_lossy(body));
    if std::str::from_utf8(body).is_err() {
        value["body_base64"] = json!(base64(body));
    }
    value
}

fn topic_json(topic: &pb::Topic) -> Value {
    json!({
        "name": topic.name,
        "created_at_ms": topic.created_at_ms,
    })
}

fn subscription_json(s: &pb::Subscription) -> Value {
    json!({
        "id": s.id,
        "topic": s.topic,
        "queue": s.queue,
        "filter_policy": s.filter_policy,
        "raw_delivery": s.raw_delivery,
    })
}

/// `topic get` (with the subscription count) and `topic create` (without).
fn topic_text(topic: &pb::Topic, subscription_count: Option<u32>) -> String {
    let mut out = format!(
        "topic          {}\ncreated        {}\n",
        topic.name,
        timestamp(topic.created_at_ms)
    );
    if let Some(count) = subscription_count {
        let _ = writeln!(out, "subscriptions  {count}");
    }
    out
}

/// `topic list`: one row per topic.
fn topics_table(topics: &[pb::Topic]) -> String {
    if topics.is_empty() {
        return "no topics\n".to_owned();
    }
    let mut rows = vec![["NAME", "CREATED"].map(String::from)];
    for t in topics {
        rows.push([t.name.clone(), timestamp(t.created_at_ms)]);
    }
    table(&rows)
}

/// `subscriptions`: one row per subscription; the filter policy on one line.
fn subscriptions_table(subscriptions: &[pb::Subscription]) -> String {
    if subscriptions.is_empty() {
        return "no subscriptions\n".to_owned();
    }
    let mut rows = vec![["ID", "TOPIC", "QUEUE", "DELIVERY", "FILTER"].map(String::from)];
    for s in subscriptions {
        rows.push([
            s.id.clone(),
            s.topic.clone(),
            s.queue.clone(),
            if s.raw_delivery { "raw" } else { "envelope" }.to_owned(),
            one_line_policy(&s.filter_policy),
        ]);
    }
    table(&rows)
}

/// A filter policy on one line: compact JSON, or "-" when there is none.
fn one_line_policy(policy: &str) -> String {
    if policy.trim().is_empty() {
        return "-".to_owned();
    }
    match serde_json::from_str::<Value>(policy) {
        Ok(value) => value.to_string(),
        // The broker accepted it, so this should not happen; show it anyway.
        Err(_) => policy.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// `publish`: the message id on the first line (like `send`), then the copies.
fn publish_text(resp: &pb::PublishResponse) -> String {
    let copies = match resp.delivered {
        0 => "delivered 0 copies: no subscription matched".to_owned(),
        1 => "delivered 1 copy".to_owned(),
        n => format!("delivered {n} copies"),
    };
    format!("{}\n{copies}\n", resp.message_id)
}

/// `queue get` (with stats), `create` and `update` (without).
fn queue_text(queue: &pb::Queue, stats: Option<&pb::QueueStats>) -> String {
    let a = queue.attributes.clone().unwrap_or_default();
    let secs = |s: Option<u32>| s.map_or("-".to_owned(), |s| secs_exact(u64::from(s)));
    let mut rows = vec![
        ("queue", queue.name.clone()),
        ("created", timestamp(queue.created_at_ms)),
        ("visibility timeout", secs(a.visibility_timeout_seconds)),
        ("retention", secs(a.message_retention_seconds)),
        ("delay", secs(a.delay_seconds)),
        ("receive wait", secs(a.receive_wait_time_seconds)),
        (
            "max message bytes",
            a.max_message_bytes
                .map_or("-".to_owned(), |n| n.to_string()),
        ),
        ("dead-letter queue", redrive_text(a.redrive_policy.as_ref())),
        (
            "receive rate",
            match a.max_receive_rate {
                Some(rate) if rate > 0 => {
                    format!("{rate}/s, burst {}", a.max_receive_burst.unwrap_or(rate))
                }
                _ => "unlimited".to_owned(),
            },
        ),
        (
            "retry backoff",
            a.retry_policy.map_or("none".to_owned(), |p| {
                format!(
                    "{}s doubling up to {}s",
                    p.min_backoff_seconds, p.max_backoff_seconds
                )
            }),
        ),
    ];
    if let Some(s) = stats {
        rows.extend([
            ("visible", s.visible.to_string()),
            ("in flight", s.in_flight.to_string()),
            ("delayed", s.delayed.to_string()),
            ("oldest message", secs_exact(s.oldest_message_age_seconds)),
        ]);
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

fn redrive_text(policy: Option<&pb::RedrivePolicy>) -> String {
    policy.map_or("-".to_owned(), |p| {
        format!(
            "{} after {}",
            p.dead_letter_queue,
            plural(u64::from(p.max_receive_count), "receive")
        )
    })
}

/// `queue list`: one aligned row per queue.
fn queues_table(queues: &[pb::Queue]) -> String {
    if queues.is_empty() {
        return "no queues\n".to_owned();
    }
    let mut rows = vec![
        [
            "NAME",
            "VISIBILITY",
            "DELAY",
            "RETENTION",
            "DEAD-LETTER QUEUE",
        ]
        .map(String::from),
    ];
    for q in queues {
        let a = q.attributes.clone().unwrap_or_default();
        let secs = |s: Option<u32>| s.map_or("-".to_owned(), |s| secs_short(u64::from(s)));
        rows.push([
            q.name.clone(),
            secs(a.visibility_timeout_seconds),
            secs(a.delay_seconds),
            secs(a.message_retention_seconds),
            redrive_text(a.redrive_policy.as_ref()),
        ]);
    }
    table(&rows)
}

/// Columns padded to their widest cell; the last column is not padded.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    table_aligned(rows, [false; N])
}

/// [`table`] with the columns marked in `right` aligned right (numbers).
fn table_aligned<const N: usize>(rows: &[[String; N]], right: [bool; N]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let width = widths[i];
            let sep = if i + 1 == N { "" } else { "  " };
            if right[i] {
                let _ = write!(out, "{cell:>width$}{sep}");
            } else if i + 1 == N {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}{sep}");
            }
        }
        out.push('\n');
    }
    out
}

/// The label column of message blocks (`receive`, `peek`): "receives" and one space.
const WIDTH: usize = 9;

/// `receive`: a block of aligned lines per message, blank line between.
fn messages_text(messages: &[pb::ReceivedMessage]) -> String {
    if messages.is_empty() {
        return "no messages\n".to_owned();
    }
    let indent = " ".repeat(WIDTH + 1);
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "{:<WIDTH$} {}", "message", m.message_id);
        let _ = writeln!(out, "{:<WIDTH$} {}", "receives", m.receive_count);
        let _ = writeln!(out, "{:<WIDTH$} {}", "sent", timestamp(m.sent_at_ms));
        let _ = writeln!(out, "{:<WIDTH$} {}", "receipt", m.receipt_handle);
        let mut attributes: Vec<_> = m.attributes.iter().collect();
        attributes.sort();
        for (key, value) in attributes {
            let _ = writeln!(out, "{:<WIDTH$} {key}={value}", "attr");
        }
        let _ = writeln!(out, "{:<WIDTH$} {}", "body", body_text(&m.body, &indent));
    }
    out
}

/// A body for the terminal: continuation lines of a multi-line body start
/// with `indent` (to stay in the value column); other control characters
/// are escaped so they cannot upset the terminal.
fn body_text(body: &[u8], indent: &str) -> String {
    let mut text = String::new();
    for c in String::from_utf8_lossy(body).trim_end_matches('\n').chars() {
        match c {
            '\n' => {
                text.push('\n');
                text.push_str(indent);
            }
            '\t' => text.push(c),
            c if c.is_control() => text.extend(c.escape_debug()),
            c => text.push(c),
        }
    }
    text
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Seconds as days, hours, minutes and seconds: "30s", "1h30m", "4d".
fn secs_short(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let mut out = String::new();
    for (n, unit) in parts {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

/// Like [`secs_short`], with the exact seconds when they are not obvious:
/// "30s", "4d (345600s)" — flags take seconds.
fn secs_exact(secs: u64) -> String {
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{} ({secs}s)", secs_short(secs))
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g.
/// "2025-01-02T03:04:05.678Z"; 0 (never) is "-".
fn timestamp(ms: u64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    crate::topic::envelope::rfc3339_millis(ms)
}

/// Standard base64 with padding (RFC 4648), for non-UTF-8 bodies in JSON.
fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser as _};

    /// The shape `main` gives these commands: global client options plus the subcommands.
    #[derive(clap::Parser, Debug)]
    #[command(name = "broker")]
    struct TestCli {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: Command,
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("broker").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn security_flags_become_connect_options() {
        let cli = parse(&["--token", "t0k", "send", "q", "body"]).unwrap();
        assert_eq!(cli.client.token.as_deref(), Some("t0k"));
        cli.client.connect_options().unwrap();

        let cli = parse(&["send", "q", "body", "--client-cert", "c.pem"]).unwrap();
        let e = cli.client.connect_options().unwrap_err().to_string();
        assert!(e.contains("--client-key"), "{e}");

        let cli = parse(&["--tls-ca", "/nonexistent/ca.pem", "send", "q", "body"]).unwrap();
        let e = cli.client.connect_options().unwrap_err().to_string();
        assert!(
            e.contains("--tls-ca") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn attr_splits_at_the_first_equals_sign() {
        assert_eq!(parse_attr("k=v"), Ok(("k".into(), "v".into())));
        assert_eq!(parse_attr("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert_eq!(parse_attr("k="), Ok(("k".into(), String::new())));
        assert!(
            parse_attr("novalue")
                .unwrap_err()
                .contains("expected KEY=VALUE")
        );
        assert!(parse_attr("=v").unwrap_err().contains("empty key"));
    }

    #[test]
    fn send_collects_repeated_attrs() {
        let cli = parse(&[
            "send", "q", "hi", "--attr", "a=1", "--attr", "b=x=y", "--delay", "5",
        ])
        .unwrap();
        match cli.cmd {
            Command::Send {
                queue,
                body,
                attrs,
                delay,
            } => {
                assert_eq!(queue, "q");
                assert_eq!(body.as_deref(), Some("hi"));
                assert_eq!(
                    attrs,
                    vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]
                );
                assert_eq!(delay, Some(5));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn send_without_body_reads_stdin() {
        let cli = parse(&["send", "q"]).unwrap();
        assert!(matches!(cli.cmd, Command::Send { body: None, .. }));
    }

    #[test]
    fn bad_attr_is_a_usage_error() {
        let err = parse(&["send", "q", "hi", "--attr", "oops"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("expected KEY=VALUE"), "{err}");
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&[
            "receive",
            "q",
            "--json",
            "--server",
            "10.0.0.1:9",
            "--max",
            "10",
            "--wait",
            "20",
            "--delete",
        ])
        .unwrap();
        assert!(cli.client.json);
        assert_eq!(cli.client.server, "10.0.0.1:9");
        assert!(matches!(
            cli.cmd,
            Command::Receive {
                max: 10,
                wait: Some(20),
                visibility: None,
                delete: true,
                ..
            }
        ));
    }

    #[test]
    fn create_maps_flags_to_attributes() {
        let cli = parse(&[
            "queue",
            "create",
            "orders",
            "--visibility-timeout",
            "60",
            "--retention",
            "120",
            "--dead-letter-queue",
            "dlq",
            "--max-receive-count",
            "3",
        ])
        .unwrap();
        let Command::Queue {
            cmd: QueueCommand::Create { name, attributes },
        } = cli.cmd
        else {
            panic!("not a queue create");
        };
        assert_eq!(name, "orders");
        let pb = attributes.to_pb();
        assert_eq!(pb.visibility_timeout_seconds, Some(60));
        assert_eq!(pb.message_retention_seconds, Some(120));
        assert_eq!(pb.delay_seconds, None);
        assert_eq!(
            pb.redrive_policy,
            Some(pb::RedrivePolicy {
                dead_letter_queue: "dlq".into(),
                max_receive_count: 3
            })
        );
        assert!(!pb.clear_redrive_policy);
    }

    #[test]
    fn dead_letter_queue_needs_max_receive_count() {
        assert!(parse(&["queue", "create", "q", "--dead-letter-queue", "dlq"]).is_err());
        assert!(parse(&["queue", "create", "q", "--max-receive-count", "3"]).is_err());
    }

    #[test]
    fn update_rejects_contradictory_redrive_flags() {
        assert!(parse(&["queue", "update", "q", "--delay", "5"]).is_ok());
        assert!(parse(&["queue", "update", "q", "--no-redrive-policy"]).is_ok());
        assert!(
            parse(&[
                "queue",
                "update",
                "q",
                "--no-redrive-policy",
                "--dead-letter-queue",
                "d",
                "--max-receive-count",
                "2",
            ])
            .is_err()
        );
    }

    #[tokio::test]
    async fn update_without_flags_fails_before_connecting() {
        let cli = parse(&["--server", "127.0.0.1:1", "queue", "update", "q"]).unwrap();
        let err = run(&cli.client, cli.cmd).await.unwrap_err();
        assert!(err.to_string().starts_with("nothing to update"), "{err:#}");
    }

    #[test]
    fn redrive_defaults_to_all_back_to_source() {
        let cli = parse(&["redrive", "dlq"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Command::Redrive {
                to: None,
                max: None,
                per_second: None,
                ..
            }
        ));
    }

    #[test]
    fn redrive_per_second_is_at_least_one() {
        let cli = parse(&["redrive", "dlq", "--per-second", "50", "--max", "7"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Command::Redrive {
                per_second: Some(50),
                max: Some(7),
                ..
            }
        ));
        let err = parse(&["redrive", "dlq", "--per-second", "0"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn operator_commands_parse() {
        let cli = parse(&["peek", "orders-dlq"]).unwrap();
        assert!(matches!(cli.cmd, Command::Peek { queue, max: 10 } if queue == "orders-dlq"));
        let cli = parse(&["peek", "q", "--max", "500"]).unwrap();
        assert!(matches!(cli.cmd, Command::Peek { max: 500, .. }));
        assert!(parse(&["peek", "q", "--max", "0"]).is_err());
        assert!(parse(&["peek"]).is_err(), "a queue is required");

        let cli = parse(&["stats", "--prefix", "ord", "--json"]).unwrap();
        assert!(cli.client.json);
        assert!(matches!(cli.cmd, Command::Stats { prefix } if prefix == "ord"));

        let cli = parse(&["top"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Command::Top { interval, .. } if interval == std::time::Duration::from_secs(1)
        ));
        let cli = parse(&["top", "--interval", "500ms"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Command::Top { interval, .. } if interval == std::time::Duration::from_millis(500)
        ));
        let err = parse(&["top", "--interval", "10ms"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn topic_subcommands_parse() {
        for (verb, expected) in [("create", "create"), ("get", "get"), ("delete", "delete")] {
            let cli = parse(&["topic", verb, "payments"]).unwrap();
            let (got, name) = match cli.cmd {
                Command::Topic {
                    cmd: TopicCommand::Create { name },
                } => ("create", name),
                Command::Topic {
                    cmd: TopicCommand::Get { name },
                } => ("get", name),
                Command::Topic {
                    cmd: TopicCommand::Delete { name },
                } => ("delete", name),
                other => panic!("parsed as {other:?}"),
            };
            assert_eq!((got, name.as_str()), (expected, "payments"));
        }
        let cli = parse(&["topic", "list", "--prefix", "pay", "--json"]).unwrap();
        assert!(cli.client.json);
        assert!(matches!(
            cli.cmd,
            Command::Topic { cmd: TopicCommand::List { prefix } } if prefix == "pay"
        ));
        assert!(parse(&["topic", "create"]).is_err(), "a name is required");
    }

    #[test]
    fn subscribe_defaults_to_every_message_in_an_envelope() {
        let cli = parse(&["subscribe", "payments", "email"]).unwrap();
        match cli.cmd {
            Command::Subscribe {
                topic,
                queue,
                filter,
                raw,
            } => {
                assert_eq!((topic.as_str(), queue.as_str()), ("payments", "email"));
                assert_eq!(filter, None);
                assert!(!raw);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn subscribe_takes_an_inline_or_file_filter_and_raw() {
        let policy = r#"{"country": ["IN", "BR"]}"#;
        let cli = parse(&["subscribe", "payments", "sms", "--filter", policy, "--raw"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Command::Subscribe { filter: Some(FilterArg::Inline(p)), raw: true, .. } if p == policy
        ));
        let cli = parse(&[
            "subscribe",
            "payments",
            "sms",
            "--filter",
            "@dir/policy.json",
        ])
        .unwrap();
        assert!(matches!(
            cli.cmd,
            Command::Subscribe { filter: Some(FilterArg::File(p)), raw: false, .. }
                if p == std::path::Path::new("dir/policy.json")
        ));
    }

    #[test]
    fn empty_filter_is_a_usage_error() {
        for bad in ["@", "", "  "] {
            let err = parse(&["subscribe", "t", "q", "--filter", bad]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn filter_file_is_read_without_surrounding_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        let policy = "{\n  \"amount\": [{\"numeric\": [\">\", 100]}]\n}\n";
        std::fs::write(&path, policy).unwrap();
        assert_eq!(
            FilterArg::File(path.clone()).resolve().unwrap(),
            policy.trim()
        );
        assert_eq!(
            FilterArg::Inline("{}".into()).resolve().unwrap(),
            "{}".to_owned()
        );
        let missing = dir.path().join("missing.json");
        let err = FilterArg::File(missing.clone()).resolve().unwrap_err();
        assert!(
            format!("{err:#}").contains(&missing.display().to_string()),
            "{err:#}"
        );
    }

    #[test]
    fn unsubscribe_and_subscriptions_parse() {
        let cli = parse(&["unsubscribe", "sub-1"]).unwrap();
        assert!(matches!(cli.cmd, Command::Unsubscribe { id } if id == "sub-1"));
        let cli = parse(&["subscriptions"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Command::Subscriptions {
                topic: None,
                queue: None
            }
        ));
        let cli = parse(&["subscriptions", "--topic", "t", "--queue", "q"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Command::Subscriptions { topic: Some(t), queue: Some(q) } if t == "t" && q == "q"
        ));
    }

    #[test]
    fn publish_collects_attrs_and_reads_stdin_without_body() {
        let cli = parse(&[
            "publish",
            "payments",
            "paid",
            "--attr",
            "country=IN",
            "--attr",
            "amount=12.5",
        ])
        .unwrap();
        match cli.cmd {
            Command::Publish { topic, body, attrs } => {
                assert_eq!(topic, "payments");
                assert_eq!(body.as_deref(), Some("paid"));
                assert_eq!(
                    attrs,
                    vec![
                        ("country".into(), "IN".into()),
                        ("amount".into(), "12.5".into())
                    ]
                );
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&["publish", "payments"]).unwrap();
        assert!(matches!(cli.cmd, Command::Publish { body: None, .. }));
        let err = parse(&["publish", "payments", "x", "--attr", "oops"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn repeated_attribute_key_is_an_error() {
        let ok = attribute_map(vec![("a".into(), "1".into()), ("b".into(), "2".into())]).unwrap();
        assert_eq!(ok.len(), 2);
        let err =
            attribute_map(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).unwrap_err();
        assert_eq!(err.to_string(), "attribute 'a' is given more than once");
    }

    #[test]
    fn publish_text_names_id_and_copies() {
        let resp = |delivered| pb::PublishResponse {
            message_id: "m1".into(),
            delivered,
        };
        assert_eq!(publish_text(&resp(3)), "m1\ndelivered 3 copies\n");
        assert_eq!(publish_text(&resp(1)), "m1\ndelivered 1 copy\n");
        assert_eq!(
            publish_text(&resp(0)),
            "m1\ndelivered 0 copies: no subscription matched\n"
        );
    }

    #[test]
    fn subscriptions_table_shows_delivery_and_one_line_filter() {
        let subscriptions = [
            pb::Subscription {
                id: "s1".into(),
                topic: "payments".into(),
                queue: "sms".into(),
                filter_policy: "{\n  \"country\": [\"IN\",\n \"BR\"]\n}".into(),
                raw_delivery: true,
            },
            pb::Subscription {
                id: "s2".into(),
                topic: "payments".into(),
                queue: "email".into(),
                filter_policy: String::new(),
                raw_delivery: false,
            },
        ];
        assert_eq!(
            subscriptions_table(&subscriptions),
            "ID  TOPIC     QUEUE  DELIVERY  FILTER\n\
             s1  payments  sms    raw       {\"country\":[\"IN\",\"BR\"]}\n\
             s2  payments  email  envelope  -\n"
        );
        assert_eq!(subscriptions_table(&[]), "no subscriptions\n");
    }

    #[test]
    fn not_found_names_the_topic_or_subscription() {
        let err = failure_of(
            broker_client::Error::NotFound("whatever".into()),
            Some(("topic", "payments")),
        );
        assert_eq!(format!("{err:#}"), "topic 'payments' not found");
        // Subscribe names two things: the broker's message says which is missing.
        let err = failure(
            broker_client::Error::NotFound("queue 'sms' does not exist".into()),
            None,
        );
        assert_eq!(format!("{err:#}"), "queue 'sms' does not exist");
    }

    #[test]
    fn secs_are_compact() {
        assert_eq!(secs_short(0), "0s");
        assert_eq!(secs_short(30), "30s");
        assert_eq!(secs_short(90), "1m30s");
        assert_eq!(secs_short(43_200), "12h");
        assert_eq!(secs_short(345_600), "4d");
        assert_eq!(secs_short(90_061), "1d1h1m1s");
        assert_eq!(secs_exact(30), "30s");
        assert_eq!(secs_exact(345_600), "4d (345600s)");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(timestamp(1_735_787_045_678), "2025-01-02T03:04:05.678Z");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn binary_body_gets_base64_in_json() {
        let mut m = pb::ReceivedMessage {
            body: Bytes::from_static(b"hello"),
            ..Default::default()
        };
        let v = message_json(&m);
        assert_eq!(v["body"], "hello");
        assert!(v.get("body_base64").is_none());

        m.body = Bytes::from_static(&[0xff, 0x00]);
        let v = message_json(&m);
        assert_eq!(v["body_base64"], "/wA=");
    }

    #[test]
    fn not_found_names_the_queue() {
        let err = failure(broker_client::Error::NotFound("whatever".into()), Some("x"));
        assert_eq!(format!("{err:#}"), "queue 'x' not found");
        let err = failure(
            broker_client::Error::InvalidArgument(
                "delay_seconds must be in 0..=900; got 901".into(),
            ),
            Some("x"),
        );
        assert_eq!(
            format!("{err:#}"),
            "delay_seconds must be in 0..=900; got 901"
        );
        let err = failure(
            broker_client::Error::Unavailable("shutting down".into()),
            Some("x"),
        );
        assert_eq!(format!("{err:#}"), "unavailable: shutting down");
    }

    #[test]
    fn multi_line_bodies_stay_in_the_value_column() {
        let m = pb::ReceivedMessage {
            message_id: "m1".into(),
            receipt_handle: "r1".into(),
            receive_count: 2,
            body: Bytes::from_static(b"line one\nline\ttwo\x1b[2J\n"),
            attributes: HashMap::from([("k".to_owned(), "v".to_owned())]),
            ..Default::default()
        };
        assert_eq!(
            messages_text(&[m]),
            "message   m1\nreceives  2\nsent      -\nreceipt   r1\nattr      k=v\nbody      line one\n          line\ttwo\\u{1b}[2J\n"
        );
    }
}
