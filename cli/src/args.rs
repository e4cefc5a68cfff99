//! The arguments of the client subcommands, as clap parses them: the
//! options every command shares ([`ClientArgs`]), the subcommands
//! ([`Command`], [`QueueCommand`], [`TopicCommand`]) and the parsers of the
//! values clap cannot check alone (`--attr`, `--filter`, `--interval`).
//!
//! Flag mistakes are clap usage errors, caught before any connection is
//! made; [`Command::check`] catches the one combination clap cannot express
//! (`queue update` without a flag). Ranges (visibility timeout, delay, ...)
//! and filter policies are checked by the broker only, so the CLI cannot
//! disagree with it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use broker_client::{ConnectOptions, pb};

/// Shortest `top --interval`: faster refreshes only load the broker.
pub const TOP_INTERVAL_MIN: Duration = Duration::from_millis(100);

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
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
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
    /// Show the cluster as the node reached sees it (cluster mode)
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCommand,
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

/// `broker cluster ...`
#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// The leader, the term, and every node with its role and replication lag
    Status,
    /// Remove a node from the cluster (refused if the voters left would
    /// have no answering majority); print the voters that remain
    RemoveNode {
        /// The id of the node to remove
        id: u64,
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
    pub(crate) fn resolve(&self) -> anyhow::Result<String> {
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
    /// Most messages the queue holds; sends and publishes beyond are refused (0: no cap) [new queues: 0]
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u32>,
}

impl AttributeArgs {
    /// True when no flag is given.
    pub(crate) fn is_empty(&self) -> bool {
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
            max_messages,
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
            && max_messages.is_none()
    }

    /// The attributes to send: unset flags stay unset, so the broker applies
    /// its default (create) or keeps the current value (update).
    pub(crate) fn to_pb(&self) -> pb::QueueAttributes {
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
            max_messages: self.max_messages,
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
pub(crate) fn attribute_map(
    attrs: Vec<(String, String)>,
) -> anyhow::Result<HashMap<String, String>> {
    let mut attributes = HashMap::with_capacity(attrs.len());
    for (key, value) in attrs {
        if attributes.insert(key.clone(), value).is_some() {
            bail!("attribute '{key}' is given more than once");
        }
    }
    Ok(attributes)
}

/// Parses `top --interval`: a duration such as "1s", "500ms" or "2m", or
/// plain seconds ("2"); at least [`TOP_INTERVAL_MIN`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let interval = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("'{s}' is not a duration such as 1s or 500ms: {e}"))?,
    };
    if interval < TOP_INTERVAL_MIN {
        return Err(format!(
            "the interval must be at least {}; got {s}",
            humantime::format_duration(TOP_INTERVAL_MIN)
        ));
    }
    Ok(interval)
}

impl Command {
    /// Checks what clap cannot: a usage mistake should not wait on the network.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if let Command::Queue {
            cmd:
                QueueCommand::Update {
                    attributes,
                    no_redrive_policy: false,
                    no_retry_policy: false,
                    ..
                },
        } = self
            && attributes.is_empty()
        {
            bail!(
                "nothing to update: give at least one attribute flag (see `broker queue update --help`)"
            );
        }
        Ok(())
    }
}

/// The shape `main` gives these commands, for the tests of every module:
/// global client options plus the subcommands.
#[cfg(test)]
pub(crate) mod testing {
    use super::{ClientArgs, Command};
    use clap::Parser as _;

    #[derive(clap::Parser, Debug)]
    #[command(name = "broker")]
    pub(crate) struct TestCli {
        #[command(flatten)]
        pub(crate) client: ClientArgs,
        #[command(subcommand)]
        pub(crate) cmd: Command,
    }

    pub(crate) fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("broker").chain(args.iter().copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{TestCli, parse};
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    /// The help states the API's limits as `broker_client::limits` has them.
    #[test]
    fn help_states_the_api_limits() {
        use broker_client::limits::*;
        let cli = TestCli::command();
        // `path`: the subcommands, space-separated.
        let help = |path: &str, arg: &str| -> String {
            let mut cmd = &cli;
            for name in path.split(' ') {
                cmd = cmd.find_subcommand(name).expect(name);
            }
            let arg = cmd.get_arguments().find(|a| a.get_id() == arg).expect(arg);
            arg.get_help().expect("a help text").to_string()
        };
        let name = format!("1..={NAME_LEN_MAX} of A-Z a-z 0-9 _ -");
        let attributes = format!("(at most {ATTRIBUTES_MAX})");
        let create = "queue create";
        for (path, arg, stated) in [
            (create, "name", name.clone()),
            ("topic create", "name", name),
            ("send", "attrs", attributes.clone()),
            ("publish", "attrs", attributes),
            ("send", "delay", format!("(0..={DELAY_SECONDS_MAX})")),
            ("receive", "max", format!("(1..={RECEIVE_MESSAGES_MAX})")),
            ("receive", "wait", format!("(0..={WAIT_TIME_SECONDS_MAX})")),
            (
                create,
                "visibility_timeout",
                format!(
                    "(0..={VISIBILITY_TIMEOUT_SECONDS_MAX}) [new queues: {VISIBILITY_TIMEOUT_SECONDS_DEFAULT}]"
                ),
            ),
            (
                create,
                "retention",
                format!(
                    "({MESSAGE_RETENTION_SECONDS_MIN}..={MESSAGE_RETENTION_SECONDS_MAX}) \
                     [new queues: {MESSAGE_RETENTION_SECONDS_DEFAULT}, 4 days]"
                ),
            ),
            (
                create,
                "delay",
                format!("(0..={DELAY_SECONDS_MAX}) [new queues: 0]"),
            ),
            (
                create,
                "receive_wait",
                format!("(0..={WAIT_TIME_SECONDS_MAX}) [new queues: 0]"),
            ),
            (
                create,
                "max_message_bytes",
                format!(
                    "({MAX_MESSAGE_BYTES_MIN}..={MAX_MESSAGE_BYTES_MAX}) [new queues: {MAX_MESSAGE_BYTES_DEFAULT}]"
                ),
            ),
            (
                create,
                "max_receive_count",
                format!("(1..={MAX_RECEIVE_COUNT_MAX})"),
            ),
            (
                create,
                "max_receive_rate",
                format!("(0..={MAX_RECEIVE_RATE_MAX}; 0: unlimited)"),
            ),
            (
                create,
                "min_backoff",
                format!("(0..={BACKOFF_SECONDS_MAX})"),
            ),
            (
                create,
                "max_backoff",
                format!("(MIN..={BACKOFF_SECONDS_MAX})"),
            ),
        ] {
            let help = help(path, arg);
            assert!(
                help.contains(&stated),
                "{path} {arg}: {help:?} does not say {stated:?}"
            );
        }
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
    fn interval_takes_durations_or_seconds() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_interval("10ms")
                .unwrap_err()
                .contains("at least 100ms")
        );
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("soon").unwrap_err().contains("'soon'"));
    }
}
