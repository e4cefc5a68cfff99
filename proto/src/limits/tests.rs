//! The .proto comments state the limits to clients (and `docs/api.md` is
//! generated from them): every number they state must be a constant of
//! this module, at every place it is stated, or be listed below as
//! something else.

use std::collections::BTreeMap;

use super::*;

const PROTOS: [(&str, &str); 3] = [
    ("queue.proto", include_str!("../../broker/v1/queue.proto")),
    ("topic.proto", include_str!("../../broker/v1/topic.proto")),
    (
        "cluster.proto",
        include_str!("../../broker/v1/cluster.proto"),
    ),
];

/// Numbers the comments state that are not limits of this module: (phrase,
/// why). A number inside one of these phrases needs no constant.
const NOT_LIMITS: &[(&str, &str)] = &[
    ("2^(receive_count - 1)", "the backoff formula"),
    ("proto3", "the protobuf syntax"),
    ("UTF-8", "an encoding"),
    ("base64", "an encoding"),
    ("MessageIsBase64", "a key of the JSON envelope"),
    ("RFC 3339", "a timestamp format"),
    (
        "40 hex digits",
        "the receipt handle's format, the broker's own",
    ),
    (
        "16 hex digits",
        "the subscription id's format, the broker's own",
    ),
    (
        "ends 500 ms before it",
        "the broker's deadline margin (broker::service::deadline::MAX_MARGIN)",
    ),
    (
        "`max_long_polls_per_connection` (default 1000)",
        "a setting of the broker (broker::config::Limits)",
    ),
    (
        "`max_streams` (default 10000)",
        "a setting of the broker (broker::config::Limits)",
    ),
];

/// The comment of every declaration of the protos, by path
/// (`QueueAttributes.delay_seconds`, `QueueService.ReceiveMessages`), its
/// lines joined and its whitespace collapsed. A comment that belongs to no
/// declaration (a file's header) is kept under `file:line`, the line after
/// it.
fn comments() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut insert = |path: String, lines: &mut Vec<&str>| {
        if lines.is_empty() {
            return;
        }
        let text = lines
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        lines.clear();
        assert!(out.insert(path.clone(), text).is_none(), "{path} twice");
    };
    for (file, text) in PROTOS {
        // The enclosing messages and services; "" for a oneof, which adds
        // nothing to its fields' paths.
        let mut scope: Vec<&str> = Vec::new();
        let mut comment: Vec<&str> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            let at = |name: &str| {
                let mut parts: Vec<&str> =
                    scope.iter().copied().filter(|s| !s.is_empty()).collect();
                parts.push(name);
                parts.join(".")
            };
            if let Some(text) = line.strip_prefix("//") {
                comment.push(text);
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [] | ["syntax" | "package" | "import", ..] => {
                    insert(format!("{file}:{}", i + 1), &mut comment);
                }
                ["}"] => {
                    scope.pop().expect("a } closes a scope");
                }
                ["message" | "service" | "enum", name, rest @ ..] => {
                    let name = name.trim_end_matches('{');
                    insert(at(name), &mut comment);
                    if !rest.contains(&"{}") {
                        scope.push(name);
                    }
                }
                ["oneof", name, ..] => {
                    insert(at(name), &mut comment);
                    scope.push("");
                }
                ["rpc", signature, ..] => {
                    let name = signature.split('(').next().unwrap();
                    insert(at(name), &mut comment);
                }
                [.., name, "=", _number] if line.ends_with(';') => {
                    insert(at(name), &mut comment);
                }
                _ => panic!("{file}:{}: not understood: {line}", i + 1),
            }
        }
        assert!(scope.is_empty(), "{file}: unclosed {scope:?}");
        assert!(comment.is_empty(), "{file}: a comment at the end");
    }
    out
}

/// Where the protos state each limit: the phrase as they word it, and the
/// declarations whose comment says it.
fn statements() -> Vec<(String, Vec<&'static str>)> {
    let name = format!("1..={NAME_LEN_MAX} ASCII letters, digits, `_` or `-`");
    let visibility = format!("0..={VISIBILITY_TIMEOUT_SECONDS_MAX}");
    let entries = format!("1..={BATCH_ENTRIES_MAX} entries");
    let attributes =
        format!("at most {ATTRIBUTES_MAX}; names 1..={ATTRIBUTE_NAME_BYTES_MAX} bytes");
    let too_many_attributes = format!(
        "more than {ATTRIBUTES_MAX} attributes; an attribute name not 1..={ATTRIBUTE_NAME_BYTES_MAX} bytes"
    );
    let page_size = format!("0 means {PAGE_SIZE_DEFAULT}; at most {PAGE_SIZE_MAX}");
    let page_size_over = format!("`page_size` over {PAGE_SIZE_MAX}");
    let up_to_a_batch = format!("up to {BATCH_ENTRIES_MAX} ");
    let batch_over = format!("`entries` holds 0 or more than {BATCH_ENTRIES_MAX} entries");
    let request_bytes = format!("`max_request_bytes` (default {MAX_GRPC_MESSAGE_BYTES})");
    vec![
        (request_bytes, vec!["QueueService", "TopicService"]),
        (
            name,
            vec![
                "QueueService.CreateQueue",
                "RedrivePolicy.dead_letter_queue",
                "Queue.name",
                "CreateQueueRequest.name",
                "SendMessageBatchEntry.id",
                "DeleteMessageBatchEntry.id",
                "ChangeMessageVisibilityBatchEntry.id",
                "TopicService.CreateTopic",
                "Topic.name",
                "CreateTopicRequest.name",
                "PublishBatchEntry.id",
            ],
        ),
        (
            too_many_attributes,
            vec!["QueueService.SendMessage", "TopicService.Publish"],
        ),
        (
            attributes,
            vec![
                "SendMessageRequest.attributes",
                "SendMessageBatchEntry.attributes",
                "PublishRequest.attributes",
                "PublishBatchEntry.attributes",
                "SendStreamEntry.attributes",
            ],
        ),
        (
            format!("body plus attribute names and values over {MAX_MESSAGE_BYTES_MAX} bytes"),
            vec!["TopicService.Publish"],
        ),
        (
            format!("`delay_seconds` over {DELAY_SECONDS_MAX}"),
            vec!["QueueService.SendMessage"],
        ),
        (
            format!("0..={DELAY_SECONDS_MAX}; absent: the queue's"),
            vec![
                "SendMessageRequest.delay_seconds",
                "SendMessageBatchEntry.delay_seconds",
                "SendStreamEntry.delay_seconds",
            ],
        ),
        (
            up_to_a_batch,
            vec![
                "QueueService.SendMessageBatch",
                "QueueService.DeleteMessageBatch",
                "QueueService.ChangeMessageVisibilityBatch",
                "TopicService.PublishBatch",
            ],
        ),
        (
            batch_over,
            vec![
                "QueueService.SendMessageBatch",
                "QueueService.DeleteMessageBatch",
                "QueueService.ChangeMessageVisibilityBatch",
                "TopicService.PublishBatch",
            ],
        ),
        (
            entries,
            vec![
                "SendMessageBatchRequest.entries",
                "DeleteMessageBatchRequest.entries",
                "ChangeMessageVisibilityBatchRequest.entries",
                "PublishBatchRequest.entries",
            ],
        ),
        (
            format!("`max_messages` over {RECEIVE_MESSAGES_MAX}"),
            vec!["QueueService.ReceiveMessages"],
        ),
        (
            format!("0 means 1; at most {RECEIVE_MESSAGES_MAX}"),
            vec!["ReceiveMessagesRequest.max_messages"],
        ),
        (
            format!("(at most {RECEIVE_MESSAGES_MAX} per response)"),
            vec!["StreamMessagesResponse.messages"],
        ),
        (
            format!("visibility_timeout_seconds` over {VISIBILITY_TIMEOUT_SECONDS_MAX}"),
            vec![
                "QueueService.ReceiveMessages",
                "QueueService.ChangeMessageVisibility",
                "QueueService.StreamMessages",
            ],
        ),
        (
            visibility,
            vec![
                "ReceiveMessagesRequest.visibility_timeout_seconds",
                "ChangeMessageVisibilityRequest.visibility_timeout_seconds",
                "ChangeMessageVisibilityBatchEntry.visibility_timeout_seconds",
                "StreamOpen.visibility_timeout_seconds",
                "StreamRelease.delay_seconds",
                "StreamExtend.visibility_timeout_seconds",
            ],
        ),
        (
            format!("`wait_time_seconds` over {WAIT_TIME_SECONDS_MAX}"),
            vec!["QueueService.ReceiveMessages"],
        ),
        (
            format!("0..={WAIT_TIME_SECONDS_MAX}; absent: the queue's"),
            vec!["ReceiveMessagesRequest.wait_time_seconds"],
        ),
        (
            format!("`open.credit` not in 1..={STREAM_CREDIT_MAX}"),
            vec!["QueueService.StreamMessages"],
        ),
        (
            format!("1..={STREAM_CREDIT_MAX}"),
            vec!["StreamOpen.credit"],
        ),
        (
            format!("`open.window` over {SEND_STREAM_WINDOW_MAX}"),
            vec!["QueueService.SendStream"],
        ),
        (
            format!("1..={SEND_STREAM_WINDOW_MAX}; 0: {SEND_STREAM_WINDOW_DEFAULT}"),
            vec!["SendStreamOpen.window"],
        ),
        (
            format!("The messages, 1..={BATCH_ENTRIES_MAX}"),
            vec!["SendStreamMessages.messages"],
        ),
        (
            format!("each later one carries 1..={BATCH_ENTRIES_MAX} messages"),
            vec!["QueueService.SendStream"],
        ),
        (
            format!("`max_messages` over {PEEK_MESSAGES_MAX}"),
            vec!["QueueService.PeekMessages"],
        ),
        (
            format!("0 means {PEEK_MESSAGES_DEFAULT}; at most {PEEK_MESSAGES_MAX}"),
            vec!["PeekMessagesRequest.max_messages"],
        ),
        (
            page_size_over,
            vec![
                "QueueService.ListQueues",
                "TopicService.ListTopics",
                "TopicService.ListSubscriptions",
            ],
        ),
        (
            page_size,
            vec![
                "ListQueuesRequest.page_size",
                "ListTopicsRequest.page_size",
                "ListSubscriptionsRequest.page_size",
            ],
        ),
        (
            format!("1..={MAX_RECEIVE_COUNT_MAX}"),
            vec!["RedrivePolicy.max_receive_count"],
        ),
        (
            format!(
                "Default {VISIBILITY_TIMEOUT_SECONDS_DEFAULT}, 0..={VISIBILITY_TIMEOUT_SECONDS_MAX}."
            ),
            vec!["QueueAttributes.visibility_timeout_seconds"],
        ),
        (
            format!(
                "Default {MESSAGE_RETENTION_SECONDS_DEFAULT} (4 days), \
                 {MESSAGE_RETENTION_SECONDS_MIN}..={MESSAGE_RETENTION_SECONDS_MAX}."
            ),
            vec!["QueueAttributes.message_retention_seconds"],
        ),
        (
            format!("Default 0, 0..={DELAY_SECONDS_MAX}."),
            vec!["QueueAttributes.delay_seconds"],
        ),
        (
            format!("Default 0, 0..={WAIT_TIME_SECONDS_MAX}."),
            vec!["QueueAttributes.receive_wait_time_seconds"],
        ),
        (
            format!(
                "Default {MAX_MESSAGE_BYTES_DEFAULT}, {MAX_MESSAGE_BYTES_MIN}..={MAX_MESSAGE_BYTES_MAX}."
            ),
            vec!["QueueAttributes.max_message_bytes"],
        ),
        (
            format!("At most {MAX_RECEIVE_RATE_MAX}."),
            vec![
                "QueueAttributes.max_receive_rate",
                "QueueAttributes.max_receive_burst",
            ],
        ),
        (
            format!("0..={BACKOFF_SECONDS_MAX}"),
            vec!["RetryPolicy.min_backoff_seconds"],
        ),
        (
            format!("`min_backoff_seconds`..={BACKOFF_SECONDS_MAX}"),
            vec!["RetryPolicy.max_backoff_seconds"],
        ),
        (
            format!("At most {FILTER_POLICY_CONDITIONS_MAX} conditions"),
            vec!["SubscribeRequest.filter_policy"],
        ),
    ]
}

#[test]
fn proto_comments_state_the_limits_of_this_module() {
    let comments = comments();
    let statements = statements();
    // Every statement is where it is expected.
    for (phrase, paths) in &statements {
        for path in paths {
            let comment = comments
                .get(*path)
                .unwrap_or_else(|| panic!("no comment on {path} in the protos"));
            assert!(
                comment.contains(phrase.as_str()),
                "the comment on {path} does not say {phrase:?}: {comment:?}"
            );
        }
    }
    // Every number stated (but 0 and 1) is inside a statement of its
    // declaration, or named as something else.
    for (path, comment) in &comments {
        let mut covered = vec![false; comment.len()];
        let phrases = statements
            .iter()
            .filter(|(_, paths)| paths.contains(&path.as_str()))
            .map(|(phrase, _)| phrase.as_str())
            .chain(NOT_LIMITS.iter().map(|(phrase, _)| *phrase));
        for phrase in phrases {
            for (start, _) in comment.match_indices(phrase) {
                covered[start..start + phrase.len()].fill(true);
            }
        }
        let bytes = comment.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if !bytes[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let number = &comment[start..i];
            assert!(
                number == "0" || number == "1" || covered[start..i].iter().all(|c| *c),
                "the comment on {path} states {number}, which no constant of \
                 broker_proto::limits checks here (add it to statements() or NOT_LIMITS): {comment:?}"
            );
        }
    }
}

#[test]
fn the_protos_are_read_as_declarations() {
    let comments = comments();
    assert_eq!(
        comments
            .get("QueueAttributes.delay_seconds")
            .map(String::as_str),
        Some(
            "Seconds a new message stays hidden (delayed) before it can be received, \
             unless its send sets its own; topic copies always get this one. Default 0, 0..=900."
        )
    );
    assert!(comments.contains_key("StreamMessagesRequest.open"));
    assert!(comments.contains_key("TopicService.PublishBatch"));
    assert!(comments.contains_key("MessageState.MESSAGE_STATE_VISIBLE"));
}

#[test]
fn stated_day_counts_match_the_seconds() {
    assert_eq!(MESSAGE_RETENTION_SECONDS_DEFAULT, 4 * 86_400);
    assert_eq!(MESSAGE_RETENTION_SECONDS_MAX, 14 * 86_400);
}
