//! Queue management: CreateQueue, GetQueue, ListQueues, UpdateQueue,
//! DeleteQueue, PurgeQueue, and the validation of names and attributes.

use broker_tests::limits::*;
use broker_tests::*;

/// The documented defaults, every field set.
fn default_attributes() -> pb::QueueAttributes {
    pb::QueueAttributes {
        visibility_timeout_seconds: Some(VISIBILITY_TIMEOUT_SECONDS_DEFAULT),
        message_retention_seconds: Some(MESSAGE_RETENTION_SECONDS_DEFAULT),
        delay_seconds: Some(0),
        receive_wait_time_seconds: Some(0),
        max_message_bytes: Some(MAX_MESSAGE_BYTES_DEFAULT),
        redrive_policy: None,
        clear_redrive_policy: false,
        max_receive_rate: Some(0),
        max_receive_burst: Some(0),
        retry_policy: None,
        clear_retry_policy: false,
        max_messages: Some(0),
    }
}

/// Sets one attribute by its proto field name.
fn with(field: &str, value: u32) -> pb::QueueAttributes {
    let mut attributes = attributes();
    match field {
        "visibility_timeout_seconds" => attributes.visibility_timeout_seconds = Some(value),
        "message_retention_seconds" => attributes.message_retention_seconds = Some(value),
        "delay_seconds" => attributes.delay_seconds = Some(value),
        "receive_wait_time_seconds" => attributes.receive_wait_time_seconds = Some(value),
        "max_message_bytes" => attributes.max_message_bytes = Some(value),
        other => panic!("unknown attribute {other}"),
    }
    attributes
}

/// Each attribute with its valid bounds: (field, min, max).
const RANGES: &[(&str, u32, u32)] = &[
    (
        "visibility_timeout_seconds",
        0,
        VISIBILITY_TIMEOUT_SECONDS_MAX,
    ),
    (
        "message_retention_seconds",
        MESSAGE_RETENTION_SECONDS_MIN,
        MESSAGE_RETENTION_SECONDS_MAX,
    ),
    ("delay_seconds", 0, DELAY_SECONDS_MAX),
    ("receive_wait_time_seconds", 0, WAIT_TIME_SECONDS_MAX),
    (
        "max_message_bytes",
        MAX_MESSAGE_BYTES_MIN,
        MAX_MESSAGE_BYTES_MAX,
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn create_queue_sets_every_attribute_to_its_default() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let before = now_ms();
    let queue = create_queue(&client, "orders", attributes()).await;
    assert_eq!(queue.name, "orders");
    assert_eq!(queue.attributes, Some(default_attributes()));
    assert!(
        queue.created_at_ms >= before - 1000 && queue.created_at_ms <= now_ms() + 1000,
        "created_at_ms {} is not now",
        queue.created_at_ms
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn create_queue_keeps_the_given_attributes() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    let given = pb::QueueAttributes {
        visibility_timeout_seconds: Some(5),
        message_retention_seconds: Some(60),
        delay_seconds: Some(3),
        receive_wait_time_seconds: Some(20),
        max_message_bytes: Some(1024),
        redrive_policy: Some(pb::RedrivePolicy {
            dead_letter_queue: "dlq".into(),
            max_receive_count: 4,
        }),
        clear_redrive_policy: false,
        max_receive_rate: Some(10),
        max_receive_burst: Some(25),
        retry_policy: Some(pb::RetryPolicy {
            min_backoff_seconds: 1,
            max_backoff_seconds: 30,
        }),
        clear_retry_policy: false,
        max_messages: Some(500),
    };
    let queue = create_queue(&client, "orders", given.clone()).await;
    assert_eq!(queue.attributes, Some(given.clone()));
    assert_eq!(queue_attributes(&client, "orders").await, given);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_queue_is_idempotent_with_equal_attributes() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let first = create_queue(&client, "orders", visibility(5)).await;
    let again = create_queue(&client, "orders", visibility(5)).await;
    assert_eq!(first, again, "the existing queue, unchanged");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_queue_with_different_attributes_is_already_exists_naming_the_attribute() {
    let (_server, client) = server_with_queue("orders", visibility(5)).await;
    let result = client
        .create_queue(pb::CreateQueueRequest {
            name: "orders".into(),
            attributes: Some(visibility(6)),
        })
        .await;
    assert_error(result, Code::AlreadyExists, &["visibility_timeout_seconds"]);
    assert_eq!(
        queue_attributes(&client, "orders")
            .await
            .visibility_timeout_seconds,
        Some(5)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_names_of_1_to_80_allowed_characters_are_accepted() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for name in ["a", "Az09_-", &"n".repeat(NAME_LEN_MAX)] {
        assert_eq!(create_queue(&client, name, attributes()).await.name, name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_queue_rejects_invalid_names() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let too_long = "n".repeat(NAME_LEN_MAX + 1);
    for name in ["", too_long.as_str(), "a.b", "a b", "a/b", "émile", "q\n"] {
        let result = client
            .create_queue(pb::CreateQueueRequest {
                name: name.to_string(),
                attributes: None,
            })
            .await;
        assert_error(result, Code::InvalidArgument, &["name"]);
    }
    let result = client
        .create_queue(pb::CreateQueueRequest {
            name: too_long,
            attributes: None,
        })
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &["name", &NAME_LEN_MAX.to_string()],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn create_queue_accepts_attributes_at_their_bounds() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for (i, &(field, min, max)) in RANGES.iter().enumerate() {
        for (j, value) in [min, max].into_iter().enumerate() {
            let name = format!("q{i}-{j}");
            let queue = create_queue(&client, &name, with(field, value)).await;
            assert_eq!(
                queue.attributes,
                Some(with_defaults(with(field, value))),
                "{field} = {value}"
            );
        }
    }
}

/// `attributes` with the unset fields filled with the defaults.
fn with_defaults(attributes: pb::QueueAttributes) -> pb::QueueAttributes {
    let defaults = default_attributes();
    pb::QueueAttributes {
        visibility_timeout_seconds: attributes
            .visibility_timeout_seconds
            .or(defaults.visibility_timeout_seconds),
        message_retention_seconds: attributes
            .message_retention_seconds
            .or(defaults.message_retention_seconds),
        delay_seconds: attributes.delay_seconds.or(defaults.delay_seconds),
        receive_wait_time_seconds: attributes
            .receive_wait_time_seconds
            .or(defaults.receive_wait_time_seconds),
        max_message_bytes: attributes.max_message_bytes.or(defaults.max_message_bytes),
        redrive_policy: attributes.redrive_policy,
        clear_redrive_policy: false,
        max_receive_rate: attributes.max_receive_rate.or(defaults.max_receive_rate),
        max_receive_burst: attributes
            .max_receive_burst
            .or(attributes.max_receive_rate)
            .or(defaults.max_receive_burst),
        retry_policy: attributes.retry_policy,
        clear_retry_policy: false,
        max_messages: attributes.max_messages.or(defaults.max_messages),
    }
}

/// Out-of-range values: (field, value, the bound it violates).
fn out_of_range() -> Vec<(&'static str, u32, u32)> {
    let mut cases = Vec::new();
    for &(field, min, max) in RANGES {
        if min > 0 {
            cases.push((field, min - 1, min));
        }
        cases.push((field, max + 1, max));
    }
    cases
}

/// A name no queue could have, given to an RPC that looks a queue up, is
/// a bad request on the request's `name` field (the message calls it the
/// queue name).
#[tokio::test(flavor = "multi_thread")]
async fn invalid_name_in_a_lookup_is_a_bad_request_on_the_name_field() {
    let server = TestServer::start().await;
    let mut raw = raw_queue_client(&server).await;
    let name = || "a b".to_string();
    let status = assert_bad_request(
        raw.get_queue(pb::GetQueueRequest { name: name() }).await,
        "name",
    );
    assert!(
        status
            .message()
            .starts_with("queue name must be 1..=80 characters"),
        "{status:?}"
    );
    assert_bad_request(
        raw.update_queue(pb::UpdateQueueRequest {
            name: name(),
            attributes: None,
        })
        .await,
        "name",
    );
    assert_bad_request(
        raw.delete_queue(pb::DeleteQueueRequest { name: name() })
            .await,
        "name",
    );
    assert_bad_request(
        raw.purge_queue(pb::PurgeQueueRequest { name: name() })
            .await,
        "name",
    );
}

/// Queue attributes are reported under their path in the request.
#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_attribute_is_a_bad_request_on_its_path() {
    let server = TestServer::start().await;
    let mut raw = raw_queue_client(&server).await;
    let status = assert_bad_request(
        raw.create_queue(pb::CreateQueueRequest {
            name: "orders".into(),
            attributes: Some(with("visibility_timeout_seconds", 43_201)),
        })
        .await,
        "attributes.visibility_timeout_seconds",
    );
    assert_eq!(
        status.message(),
        "visibility_timeout_seconds must be in 0..=43200; got 43201"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn create_queue_rejects_out_of_range_attributes_naming_field_limit_and_value() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for (field, value, bound) in out_of_range() {
        let result = client
            .create_queue(pb::CreateQueueRequest {
                name: "orders".into(),
                attributes: Some(with(field, value)),
            })
            .await;
        assert_error(
            result,
            Code::InvalidArgument,
            &[field, &value.to_string(), &bound.to_string()],
        );
    }
    // Nothing was created by the rejected requests.
    let result = client
        .get_queue(pb::GetQueueRequest {
            name: "orders".into(),
        })
        .await;
    assert_error(result, Code::NotFound, &["orders"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_queue_rejects_max_receive_count_out_of_range() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    let max = MAX_RECEIVE_COUNT_MAX;
    for (value, bound) in [(0, 1), (max + 1, max)] {
        let result = client
            .create_queue(pb::CreateQueueRequest {
                name: "orders".into(),
                attributes: Some(redrive_to("dlq", value)),
            })
            .await;
        assert_error(
            result,
            Code::InvalidArgument,
            &["max_receive_count", &value.to_string(), &bound.to_string()],
        );
    }
    for value in [1, max] {
        let name = format!("orders-{value}");
        let queue = create_queue(&client, &name, redrive_to("dlq", value)).await;
        let policy = queue
            .attributes
            .and_then(|a| a.redrive_policy)
            .expect("policy");
        assert_eq!(policy.max_receive_count, value);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn get_queue_returns_attributes_and_exact_stats() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let created = create_queue(&client, "orders", visibility(30)).await;
    let empty = client
        .get_queue(pb::GetQueueRequest {
            name: "orders".into(),
        })
        .await
        .expect("GetQueue");
    assert_eq!(empty.queue, Some(created));
    let empty_stats = empty.stats.expect("stats");
    assert_eq!(
        (
            empty_stats.visible,
            empty_stats.in_flight,
            empty_stats.delayed,
            empty_stats.oldest_message_age_seconds
        ),
        (0, 0, 0, 0)
    );

    for body in ["a", "b", "c"] {
        send_message(&client, "orders", body, &[], None).await;
    }
    send_message(&client, "orders", "later", &[], Some(600)).await;
    assert_eq!(counts(&client, "orders").await, Counts::new(3, 0, 1));

    receive_now(&client, "orders", 2, 30).await;
    assert_eq!(counts(&client, "orders").await, Counts::new(1, 2, 1));
    let age = stats(&client, "orders").await.oldest_message_age_seconds;
    assert!(
        age < 10,
        "the messages were sent just now; oldest age {age}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_unknown_queue_is_not_found() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let result = client
        .get_queue(pb::GetQueueRequest {
            name: "missing".into(),
        })
        .await;
    assert_error(result, Code::NotFound, &["missing"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_queues_pages_in_name_order_filtered_by_prefix() {
    let server = TestServer::start().await;
    let client = server.client().await;
    // Created out of order, with names outside the prefix on both sides.
    for name in [
        "page-4", "page-0", "other", "page-6", "page-2", "page-1", "page-5", "page-3", "zzz",
    ] {
        create_queue(&client, name, attributes()).await;
    }

    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_queues(pb::ListQueuesRequest {
                prefix: "page-".into(),
                page_size: 3,
                page_token: token,
            })
            .await
            .expect("ListQueues");
        assert!(
            page.queues.len() <= 3,
            "page_size 3, got {}",
            page.queues.len()
        );
        for queue in &page.queues {
            assert_eq!(
                queue.attributes,
                Some(default_attributes()),
                "listed queues carry their attributes"
            );
        }
        pages.push(
            page.queues
                .iter()
                .map(|q| q.name.clone())
                .collect::<Vec<_>>(),
        );
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages.len() < 10, "ListQueues does not terminate: {pages:?}");
    }
    assert_eq!(
        pages,
        vec![
            vec!["page-0", "page-1", "page-2"],
            vec!["page-3", "page-4", "page-5"],
            vec!["page-6"],
        ]
    );
}

/// `Client::list_all_queues`: every page of a listing, from its token on;
/// an error on any page fails the listing.
#[tokio::test(flavor = "multi_thread")]
async fn list_all_queues_follows_every_page() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for name in [
        "page-4", "page-0", "other", "page-6", "page-2", "page-1", "page-5", "page-3", "zzz",
    ] {
        create_queue(&client, name, attributes()).await;
    }
    let names = |queues: Vec<pb::Queue>| queues.into_iter().map(|q| q.name).collect::<Vec<_>>();
    let listing = |page_size, page_token| pb::ListQueuesRequest {
        prefix: "page-".into(),
        page_size,
        page_token,
    };

    let all = client
        .list_all_queues(listing(3, String::new()))
        .await
        .expect("list_all_queues");
    assert_eq!(
        names(all),
        [
            "page-0", "page-1", "page-2", "page-3", "page-4", "page-5", "page-6"
        ]
    );

    let first = client
        .list_queues(listing(3, String::new()))
        .await
        .expect("ListQueues");
    let rest = client
        .list_all_queues(listing(2, first.next_page_token))
        .await
        .expect("list_all_queues from a token");
    assert_eq!(names(rest), ["page-3", "page-4", "page-5", "page-6"]);

    let result = client
        .list_all_queues(listing(PAGE_SIZE_MAX + 1, String::new()))
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &[
            "page_size",
            &PAGE_SIZE_MAX.to_string(),
            &(PAGE_SIZE_MAX + 1).to_string(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_queues_without_prefix_or_page_size_returns_all_on_one_page() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let empty = client
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .expect("ListQueues");
    assert!(empty.queues.is_empty() && empty.next_page_token.is_empty());

    for name in ["b", "c", "a"] {
        create_queue(&client, name, attributes()).await;
    }
    let all = client
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .expect("ListQueues");
    let names: Vec<_> = all.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(all.next_page_token, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_queues_rejects_a_page_size_above_1000() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let result = client
        .list_queues(pb::ListQueuesRequest {
            page_size: PAGE_SIZE_MAX + 1,
            ..Default::default()
        })
        .await;
    assert_error(
        result,
        Code::InvalidArgument,
        &[
            "page_size",
            &PAGE_SIZE_MAX.to_string(),
            &(PAGE_SIZE_MAX + 1).to_string(),
        ],
    );
    client
        .list_queues(pb::ListQueuesRequest {
            page_size: PAGE_SIZE_MAX,
            ..Default::default()
        })
        .await
        .expect("page_size at its maximum is allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn update_queue_changes_only_the_fields_that_are_set() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let created = create_queue(
        &client,
        "orders",
        pb::QueueAttributes {
            visibility_timeout_seconds: Some(5),
            delay_seconds: Some(2),
            ..Default::default()
        },
    )
    .await;
    let updated = client
        .update_queue(pb::UpdateQueueRequest {
            name: "orders".into(),
            attributes: Some(pb::QueueAttributes {
                visibility_timeout_seconds: Some(7),
                max_message_bytes: Some(2048),
                ..Default::default()
            }),
        })
        .await
        .expect("UpdateQueue")
        .queue
        .expect("queue");
    let expected = pb::QueueAttributes {
        visibility_timeout_seconds: Some(7),
        delay_seconds: Some(2),
        max_message_bytes: Some(2048),
        ..default_attributes()
    };
    assert_eq!(updated.attributes, Some(expected.clone()));
    assert_eq!(updated.created_at_ms, created.created_at_ms);
    assert_eq!(queue_attributes(&client, "orders").await, expected);

    // No attributes at all: nothing changes.
    let unchanged = client
        .update_queue(pb::UpdateQueueRequest {
            name: "orders".into(),
            attributes: None,
        })
        .await
        .expect("UpdateQueue without attributes")
        .queue
        .expect("queue");
    assert_eq!(unchanged.attributes, Some(expected));
}

#[tokio::test(flavor = "multi_thread")]
async fn update_queue_rejects_out_of_range_attributes_and_changes_nothing() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    for (field, value, bound) in out_of_range() {
        let result = client
            .update_queue(pb::UpdateQueueRequest {
                name: "orders".into(),
                attributes: Some(with(field, value)),
            })
            .await;
        assert_error(
            result,
            Code::InvalidArgument,
            &[field, &value.to_string(), &bound.to_string()],
        );
    }
    assert_eq!(
        queue_attributes(&client, "orders").await,
        default_attributes()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn update_queue_sets_and_clears_the_redrive_policy() {
    let (_server, client) = server_with_queue("dlq", attributes()).await;
    create_queue(&client, "orders", visibility(5)).await;

    let set = client
        .update_queue(pb::UpdateQueueRequest {
            name: "orders".into(),
            attributes: Some(redrive_to("dlq", 3)),
        })
        .await
        .expect("set the redrive policy");
    let attributes_after_set = set.queue.and_then(|q| q.attributes).expect("attributes");
    assert_eq!(
        attributes_after_set.redrive_policy,
        redrive_to("dlq", 3).redrive_policy
    );
    assert_eq!(attributes_after_set.visibility_timeout_seconds, Some(5));

    let cleared = client
        .update_queue(pb::UpdateQueueRequest {
            name: "orders".into(),
            attributes: Some(pb::QueueAttributes {
                clear_redrive_policy: true,
                ..Default::default()
            }),
        })
        .await
        .expect("clear the redrive policy");
    let attributes_after_clear = cleared
        .queue
        .and_then(|q| q.attributes)
        .expect("attributes");
    assert_eq!(attributes_after_clear.redrive_policy, None);
    assert_eq!(attributes_after_clear.visibility_timeout_seconds, Some(5));
    assert_eq!(
        queue_attributes(&client, "orders").await.redrive_policy,
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn update_unknown_queue_is_not_found() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let result = client
        .update_queue(pb::UpdateQueueRequest {
            name: "missing".into(),
            attributes: Some(visibility(5)),
        })
        .await;
    assert_error(result, Code::NotFound, &["missing"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_queue_removes_the_queue_and_its_messages() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    send_message(&client, "orders", "visible", &[], None).await;
    send_message(&client, "orders", "in flight", &[], None).await;
    send_message(&client, "orders", "delayed", &[], Some(600)).await;
    receive_now(&client, "orders", 1, 30).await;

    client
        .delete_queue(pb::DeleteQueueRequest {
            name: "orders".into(),
        })
        .await
        .expect("DeleteQueue");

    let get = client
        .get_queue(pb::GetQueueRequest {
            name: "orders".into(),
        })
        .await;
    assert_error(get, Code::NotFound, &["orders"]);
    let send = client
        .send_message(send_request("orders", "x", &[], None))
        .await;
    assert_error(send, Code::NotFound, &["orders"]);
    let receive = client
        .receive_messages(receive_request("orders", 1, None, None))
        .await;
    assert_error(receive, Code::NotFound, &["orders"]);
    let purge = client
        .purge_queue(pb::PurgeQueueRequest {
            name: "orders".into(),
        })
        .await;
    assert_error(purge, Code::NotFound, &["orders"]);
    let again = client
        .delete_queue(pb::DeleteQueueRequest {
            name: "orders".into(),
        })
        .await;
    assert_error(again, Code::NotFound, &["orders"]);
    let listed = client
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .expect("ListQueues");
    assert!(listed.queues.is_empty(), "{:?}", listed.queues);

    // The name can be reused, and the new queue starts empty.
    create_queue(&client, "orders", attributes()).await;
    assert_eq!(counts(&client, "orders").await, Counts::EMPTY);
    assert!(receive_now(&client, "orders", 10, 30).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_queue_deletes_every_message_including_in_flight_and_delayed() {
    let (_server, client) = server_with_queue("orders", attributes()).await;
    create_queue(&client, "other", attributes()).await;
    for body in ["a", "b", "c"] {
        send_message(&client, "orders", body, &[], None).await;
    }
    send_message(&client, "orders", "delayed", &[], Some(600)).await;
    send_message(&client, "other", "untouched", &[], None).await;
    let in_flight = only(receive_now(&client, "orders", 1, 30).await);
    assert_eq!(counts(&client, "orders").await, Counts::new(2, 1, 1));

    client
        .purge_queue(pb::PurgeQueueRequest {
            name: "orders".into(),
        })
        .await
        .expect("PurgeQueue");

    assert_eq!(counts(&client, "orders").await, Counts::EMPTY);
    assert!(receive_now(&client, "orders", 10, 30).await.is_empty());
    // The purged message is deleted: deleting it with its last handle is OK.
    delete_message(&client, "orders", &in_flight.receipt_handle)
        .await
        .expect("deleting a purged message with its last handle");
    // Other queues keep their messages; the purged queue keeps working.
    assert_eq!(counts(&client, "other").await, Counts::new(1, 0, 0));
    send_message(&client, "orders", "after purge", &[], None).await;
    assert_eq!(
        only(receive_now(&client, "orders", 10, 30).await).body,
        "after purge"
    );
}

/// Bad names reach every RPC as a client error with a message, never as
/// INTERNAL or UNKNOWN (no panic behind them either: the server keeps serving).
#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_answers_bad_queue_names_with_a_client_error() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let too_long = "n".repeat(NAME_LEN_MAX + 1);
    for name in ["", "bad name", "../etc", too_long.as_str(), "missing"] {
        let q = name.to_string();
        let results: Vec<(&str, Result<(), Error>)> = vec![
            (
                "GetQueue",
                client
                    .get_queue(pb::GetQueueRequest { name: q.clone() })
                    .await
                    .map(drop),
            ),
            (
                "UpdateQueue",
                client
                    .update_queue(pb::UpdateQueueRequest {
                        name: q.clone(),
                        attributes: Some(visibility(5)),
                    })
                    .await
                    .map(drop),
            ),
            (
                "DeleteQueue",
                client
                    .delete_queue(pb::DeleteQueueRequest { name: q.clone() })
                    .await
                    .map(drop),
            ),
            (
                "PurgeQueue",
                client
                    .purge_queue(pb::PurgeQueueRequest { name: q.clone() })
                    .await
                    .map(drop),
            ),
            (
                "SendMessage",
                client
                    .send_message(send_request(name, "x", &[], None))
                    .await
                    .map(drop),
            ),
            (
                "SendMessageBatch",
                client
                    .send_message_batch(pb::SendMessageBatchRequest {
                        queue: q.clone(),
                        entries: vec![pb::SendMessageBatchEntry {
                            id: "a".into(),
                            body: "x".into(),
                            ..Default::default()
                        }],
                    })
                    .await
                    .map(drop),
            ),
            (
                "ReceiveMessages",
                client
                    .receive_messages(receive_request(name, 1, None, Some(0)))
                    .await
                    .map(drop),
            ),
            (
                "DeleteMessage",
                delete_message(&client, name, &"0".repeat(40)).await,
            ),
            (
                "DeleteMessageBatch",
                client
                    .delete_message_batch(pb::DeleteMessageBatchRequest {
                        queue: q.clone(),
                        entries: vec![pb::DeleteMessageBatchEntry {
                            id: "a".into(),
                            receipt_handle: "garbage".into(),
                        }],
                    })
                    .await
                    .map(drop),
            ),
            (
                "ChangeMessageVisibility",
                change_visibility(&client, name, "garbage", 0).await,
            ),
            (
                "ChangeMessageVisibilityBatch",
                client
                    .change_message_visibility_batch(pb::ChangeMessageVisibilityBatchRequest {
                        queue: q.clone(),
                        entries: vec![pb::ChangeMessageVisibilityBatchEntry {
                            id: "a".into(),
                            receipt_handle: "garbage".into(),
                            visibility_timeout_seconds: 0,
                        }],
                    })
                    .await
                    .map(drop),
            ),
            (
                "RedriveMessages",
                client
                    .redrive_messages(pb::RedriveMessagesRequest {
                        source_queue: q.clone(),
                        destination_queue: String::new(),
                        max_messages: 0,
                    })
                    .await
                    .map(drop),
            ),
        ];
        for (rpc, result) in results {
            let error = result.expect_err(&format!("{rpc} on queue {name:?} must fail"));
            let expected = if name == "missing" {
                Code::NotFound
            } else {
                Code::InvalidArgument
            };
            assert!(
                error.code() == expected,
                "{rpc} on queue {name:?}: {error:?}"
            );
            assert!(
                !error.message().is_empty(),
                "{rpc} on queue {name:?}: no message"
            );
        }
    }
    // Still serving.
    create_queue(&client, "orders", attributes()).await;
}
