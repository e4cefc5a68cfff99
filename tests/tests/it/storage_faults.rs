//! A failing disk, through storage failures injected into a real server
//! (`broker::storage::faults`): a failed WAL sync or write is UNAVAILABLE
//! saying what happened, nothing written after it is acknowledged even
//! when the next sync would succeed, health turns NOT_SERVING, the server
//! stops with an error naming the failure, and a restart on the same data
//! dir holds every acknowledged message; the same for a cluster node
//! whose Raft log fails to sync.

use std::sync::Arc;
use std::time::Duration;

use broker::storage::faults::Faults;
use broker_tests::*;
use futures::StreamExt as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::operations::{channel, check};

/// A server whose storage fails when `faults` say so, with queue `q`.
async fn server_with_faults() -> (TestServer, Client, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let injected = faults.clone();
    let server = TestServer::start_with(move |c| c.storage_faults = Some(injected.clone())).await;
    let client = server.client().await;
    create_queue(&client, "q", attributes()).await;
    (server, client, faults)
}

/// Sends `body` to `q`, returning the RPC's result.
async fn send(client: &Client, body: &str) -> Result<pb::SendMessageResponse, Error> {
    client
        .send_message(send_request("q", body.to_string(), &[], None))
        .await
}

/// What a restarted server holds in `q`.
async fn bodies_after_restart(server: &mut TestServer) -> Vec<String> {
    server.restart().await;
    let client = server.client().await;
    let mut bodies: Vec<String> = drain(&client, "q")
        .await
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    bodies.sort();
    bodies
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_fsync_acknowledges_nothing_after_it_and_stops_the_broker() {
    let (mut server, client, faults) = server_with_faults().await;
    let mut health = HealthClient::new(channel(&server).await);
    let mut watch = health.watch(check("")).await.expect("Watch").into_inner();
    let first = watch.next().await.expect("a status").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    send_message(&client, "q", "acknowledged", &[], None).await;

    // One fsync fails; the one after would succeed.
    faults.fail_syncs(1);
    assert_error(
        send(&client, "failed").await,
        Code::Unavailable,
        &[
            "storage failed",
            "WAL sync",
            "injected I/O error",
            "not acknowledged",
            "stopping",
        ],
    );
    // Nothing more is acknowledged: the store refuses, or the server has
    // already stopped taking requests.
    let after = send(&client, "after").await;
    assert!(
        after.is_err(),
        "a send after a failed fsync was acknowledged"
    );

    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("a health change within 5 s");
    if let Some(Ok(status)) = next {
        assert_eq!(status.status, ServingStatus::NotServing as i32);
    }
    let stopped = server.stopped().await.expect_err("run returns the failure");
    let message = stopped.to_string();
    assert!(
        message.contains("storage failed") && message.contains("injected I/O error"),
        "{message}"
    );

    // The acknowledged message survived; the failed one may or may not
    // have; the one sent after the failure was never written.
    let bodies = bodies_after_restart(&mut server).await;
    assert!(bodies.contains(&"acknowledged".to_string()), "{bodies:?}");
    assert!(!bodies.contains(&"after".to_string()), "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_write_is_unavailable_and_stops_the_broker() {
    let (mut server, client, faults) = server_with_faults().await;
    send_batch(&client, "q", ["one", "two"]).await;
    faults.fail_writes(1);
    assert_error(
        send(&client, "failed").await,
        Code::Unavailable,
        &["storage failed", "write: injected I/O error"],
    );
    server.stopped().await.expect_err("run returns the failure");
    assert_eq!(bodies_after_restart(&mut server).await, ["one", "two"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_node_whose_raft_log_fails_to_sync_stops() {
    let faults = Arc::new(Faults::default());
    let injected = faults.clone();
    let as_node = crate::cluster::as_node(1);
    let mut server = TestServer::start_with(move |c| {
        as_node(c);
        c.storage_faults = Some(injected.clone());
    })
    .await;
    let client = server.client().await;
    eventually(
        Duration::from_secs(10),
        "node 1 leads its cluster and creates a queue",
        || {
            client.create_queue(pb::CreateQueueRequest {
                name: "q".into(),
                ..Default::default()
            })
        },
    )
    .await;
    send_message(&client, "q", "acknowledged", &[], None).await;

    // The next append to the Raft log fails its fsync: the send is not
    // acknowledged, and the node stops, naming the failure.
    faults.fail_syncs(1);
    let failed = send(&client, "failed").await;
    assert!(
        failed.is_err(),
        "a send whose log sync failed was acknowledged"
    );
    let stopped = server.stopped().await.expect_err("run returns the failure");
    let message = stopped.to_string();
    assert!(
        message.contains("storage failed") && message.contains("injected I/O error"),
        "{message}"
    );

    // Restarted, the node has every acknowledged message.
    server.restart().await;
    let client = server.client().await;
    eventually(Duration::from_secs(10), "node 1 leads again", || {
        client.create_queue(pb::CreateQueueRequest {
            name: "q".into(),
            ..Default::default()
        })
    })
    .await;
    let bodies: Vec<String> = drain(&client, "q")
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    assert!(bodies.contains(&"acknowledged".to_string()), "{bodies:?}");
}
