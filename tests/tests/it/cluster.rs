//! The cluster suite: three `broker serve` processes on loopback (see
//! `broker_tests::cluster`), under the crash suite's workload and ledger.
//!
//! 1. The leader is killed (SIGKILL) under load, at a random moment: the
//!    others serve again within 5 s; after the killed node restarts and
//!    catches up (from a snapshot: they are taken every 100 entries), a
//!    drain shows nothing acknowledged lost, no acknowledged delete
//!    delivered again, every publish in all its queues or none, and stats
//!    that count what the drain finds.
//! 2. The leader is cut off from the others (a network partition through
//!    the harness's proxies): it refuses writes with UNAVAILABLE saying
//!    why, the majority elects a leader and goes on, and after healing the
//!    old leader follows and serves what the majority wrote.
//!
//! 3. A fourth node joins under load and a follower is removed under
//!    load, with the checks of 1.
//! 4. A node whose clock is off by more than `--max-clock-skew-ms` does
//!    not stand for election: across two failovers, it never leads.
//!
//! `CLUSTER_CYCLES` sets the kill cycles (default 2), `CLUSTER_SEED`
//! replays a run's random choices (the seed is printed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_tests::cluster::{CLUSTER_TIMEOUT, TestCluster};
use broker_tests::*;

use super::crash::{
    Flags, Ledger, MAX_RUN, MIN_RUN, Outcome, QUEUE, RPC_TIMEOUT, Rng, assert_no_violations, check,
    drain, env_u64, rpc, seed_from_env, set_up, spawn_workload,
};

/// Kill cycles in the default test run.
const DEFAULT_CYCLES: u64 = 2;
/// How soon the survivors must serve again after the leader dies.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);
/// A failover slower than this shows the nodes' logs (see `CLUSTER_LOG_TAIL`).
const SLOW_FAILOVER: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread")]
async fn killed_leader_under_load_loses_nothing_and_the_others_take_over() {
    let cycles = env_u64("CLUSTER_CYCLES").unwrap_or(DEFAULT_CYCLES);
    let seed = seed_from_env("CLUSTER_SEED");
    println!("cluster suite: {cycles} kill cycles, CLUSTER_SEED={seed}");
    let mut rng = Rng::new(seed);
    // Snapshots every 100 entries (and the log purged up to 100 before):
    // under this load they are built while entries are applied, and a
    // killed node that restarts catches up from one.
    let mut cluster = TestCluster::start_from(3, None, &["--snapshot-every", "100"]).await;
    set_up(&cluster.client(cluster.leader().await).await).await;

    for cycle in 0..cycles {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let flags = Flags {
            stop: Arc::new(AtomicBool::new(false)),
            fault: Arc::new(AtomicBool::new(false)),
        };
        let workers =
            spawn_workload(&cluster.client_addrs(), cycle, &mut rng, &ledger, &flags).await;
        let run_for = rng.duration(MIN_RUN, MAX_RUN);
        tokio::time::sleep(run_for).await;

        // The kill comes at a random moment of the workload: that is the test.
        let leader = cluster.leader().await;
        flags.fault.store(true, Ordering::SeqCst);
        cluster.kill(leader).await;
        let killed_at = Instant::now();

        // The survivors serve again: a send through one of them succeeds.
        // Each try has a body of its own, in the ledger like the workload's.
        let survivor = *cluster.running().first().expect("two nodes run on");
        let client = cluster.client(survivor).await;
        let mut tries = 0;
        // Each failed try: when it ended, how long it took, and why.
        let mut failures: Vec<(Duration, Duration, String)> = Vec::new();
        let resumed_in = loop {
            tries += 1;
            let tried_at = Instant::now();
            let body = format!("c{cycle}-probe-{tries}");
            ledger.lock().expect("ledger").send(&body, &[QUEUE]);
            let request = send_request(QUEUE, body.clone(), &[], None);
            match rpc(client.send_message(request)).await {
                Ok(response) => {
                    let acked = Outcome::Acked(response.message_id);
                    ledger.lock().expect("ledger").outcome(&body, acked);
                    break killed_at.elapsed();
                }
                Err(e) if killed_at.elapsed() > FAILOVER_BOUND => panic!(
                    "CLUSTER_SEED={seed}, cycle {cycle}: no send succeeded through node \
                     {survivor} within {FAILOVER_BOUND:?} of the leader's death: {e:?}\n{}",
                    cluster.log_tails()
                ),
                Err(e) => {
                    failures.push((killed_at.elapsed(), tried_at.elapsed(), format!("{e:?}")));
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
            }
        };
        if resumed_in > SLOW_FAILOVER {
            // Within the bound, but slow: the tries and the nodes' logs say why.
            let mut tried = String::new();
            for (at, took, error) in &failures {
                tried.push_str(&format!("  failed at {at:?} (after {took:?}): {error}\n"));
            }
            println!(
                "cycle {cycle}: a slow failover ({resumed_in:?}); the {} tries that failed, \
                 last ones:\n{}\n{}",
                failures.len(),
                tried.lines().rev().take(8).collect::<Vec<_>>().join("\n"),
                cluster.log_tails()
            );
        }
        // The workload runs on for a moment against the new leader.
        tokio::time::sleep(Duration::from_millis(500)).await;
        flags.stop.store(true, Ordering::SeqCst);
        let stopped_at = Instant::now();
        for worker in workers {
            tokio::time::timeout(2 * RPC_TIMEOUT, worker)
                .await
                .expect("a worker ends once told to")
                .expect("a worker task");
        }

        // The killed node comes back and catches up with the leader.
        cluster.restart(leader);
        // Every replica holds what the leader holds, the restarted one too
        // (from the log, or from a snapshot when it lagged by more).
        let new_leader = cluster.leader().await;
        caught_up_and_alike(
            &cluster,
            new_leader,
            &format!("CLUSTER_SEED={seed}, cycle {cycle}"),
        )
        .await;
        let installed = cluster.log_count(leader, "installed a snapshot");

        let client = cluster.client(new_leader).await;
        let drained = drain(&client, stopped_at).await;
        let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
        let report = check(&ledger, &drained);
        println!(
            "cycle {cycle}: leader {leader} killed after {run_for:?}, sends served again \
             {resumed_in:?} later, new leader {new_leader}, snapshots installed by node \
             {leader} so far: {installed}; {report}"
        );
        assert_no_violations(
            &report,
            &format!(
                "CLUSTER_SEED={seed}, cycle {cycle} (leader {leader} killed after {run_for:?})"
            ),
        );
    }
}

/// Waits until every running node knows the `leader`'s log committed and
/// has applied it (its metrics say so), then checks that each one's own
/// engine holds the leader's messages.
async fn caught_up_and_alike(cluster: &TestCluster, leader: u64, context: &str) {
    let target = cluster.view(leader).await.expect("the leader's view");
    cluster
        .wait_until(
            |v| v.committed >= target.last_log && v.applied >= target.last_log && v.apply_lag == 0,
            &format!(
                "every node knows the log up to {} committed and applies it",
                target.last_log
            ),
        )
        .await;
    let want = cluster.message_totals(leader).await;
    for id in cluster.running() {
        assert_eq!(
            cluster.message_totals(id).await,
            want,
            "{context}: node {id} holds other messages than the leader {leader}"
        );
    }
}

/// A fourth node joins under load (it catches up from a snapshot: they
/// are taken every 100 entries), then a follower is removed under load:
/// the same checks as the kill test, and every replica left holds the
/// same messages.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_added_and_one_removed_under_load_lose_nothing() {
    let seed = seed_from_env("CLUSTER_SEED");
    println!("membership under load: CLUSTER_SEED={seed}");
    let mut rng = Rng::new(seed);
    let mut cluster = TestCluster::start_from(3, None, &["--snapshot-every", "100"]).await;
    set_up(&cluster.client(cluster.leader().await).await).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let flags = Flags {
        stop: Arc::new(AtomicBool::new(false)),
        fault: Arc::new(AtomicBool::new(false)),
    };
    let workers = spawn_workload(&cluster.client_addrs(), 0, &mut rng, &ledger, &flags).await;
    tokio::time::sleep(rng.duration(MIN_RUN, MAX_RUN)).await;

    // The new node is not in the workload's addresses: adding it must not
    // fail a request. Removing a node the workload talks to does.
    let added = cluster.add_node().await;
    // Ready once it has joined, votes, and has applied its log.
    cluster.wait_for_health(added, true).await;
    let leader = cluster.leader().await;
    let removed = cluster
        .running()
        .into_iter()
        .find(|&id| id != leader && id != added)
        .expect("a follower other than the new node");
    flags.fault.store(true, Ordering::SeqCst);
    let stopped_at = Instant::now();
    let voters = cluster
        .client(leader)
        .await
        .remove_node(removed)
        .await
        .expect("RemoveNode")
        .voters;
    assert!(!voters.contains(&removed), "{voters:?}");
    cluster.kill(removed).await;
    cluster
        .wait_until(|v| v.voters == 3, "the nodes left count 3 voters")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    flags.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        tokio::time::timeout(2 * RPC_TIMEOUT, worker)
            .await
            .expect("a worker ends once told to")
            .expect("a worker task");
    }

    let leader = cluster.leader().await;
    caught_up_and_alike(&cluster, leader, &format!("CLUSTER_SEED={seed}")).await;
    let drained = drain(&cluster.client(leader).await, stopped_at).await;
    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
    let report = check(&ledger, &drained);
    println!(
        "node {added} added, node {removed} removed, snapshots installed by node {added}: {}; {report}",
        cluster.log_count(added, "installed a snapshot")
    );
    assert_no_violations(&report, &format!("CLUSTER_SEED={seed}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_leader_refuses_writes_and_reads_and_the_majority_goes_on() {
    let cluster = TestCluster::start(3).await;
    let old = cluster.leader().await;
    let client = cluster.client(old).await;

    // Any node reports the membership and the leader (`broker cluster status`).
    let follower = cluster.running().into_iter().find(|&id| id != old).unwrap();
    // A joiner counts as a voter (from the replicated membership) a moment
    // before the answer to its join, which brings the cluster id, reaches it.
    let follower_client = cluster.client(follower).await;
    let status = poll_until(CLUSTER_TIMEOUT, || async {
        match follower_client.get_cluster_status().await {
            Ok(s) if !s.cluster_id.is_empty() => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap_or_else(|last| panic!("the follower knows its cluster id: {last}"));
    assert_eq!(status.node_id, follower);
    assert_eq!(status.leader_id, Some(old));
    assert!(!status.cluster_id.is_empty());
    let nodes: Vec<(u64, bool)> = status.nodes.iter().map(|n| (n.id, n.voter)).collect();
    assert_eq!(nodes, [(1, true), (2, true), (3, true)]);
    let on_leader = client.get_cluster_status().await.expect("GetClusterStatus");
    assert!(
        on_leader.nodes.iter().all(|n| n.lag.is_some()),
        "the leader reports each node's lag: {on_leader:?}"
    );
    create_queue(&client, QUEUE, attributes()).await;
    send_message(&client, QUEUE, "before the cut", &[], None).await;

    cluster.isolate(old);
    let majority: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|&id| id != old)
        .collect();
    let new = cluster.leader_of(&majority).await;
    assert_ne!(new, old, "the majority elects a leader of its own");
    // A load balancer that follows health sends clients to the majority.
    cluster.wait_for_health(old, false).await;
    for &id in &majority {
        cluster.wait_for_health(id, true).await;
    }

    // The cut-off node refuses writes, saying why; it never acknowledges one.
    let request = send_request(QUEUE, "on the minority".to_string(), &[], None);
    let refused = tokio::time::timeout(RPC_TIMEOUT, client.send_message(request))
        .await
        .expect("the minority answers within the test's RPC timeout");
    let error = refused.expect_err("a node cut off from the majority acknowledges no write");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(
        ["majority", "no leader", "could not be reached"]
            .iter()
            .any(|n| error.message().contains(n)),
        "the refusal says why: {error:?}"
    );

    // The majority goes on.
    let majority_client = cluster.client(new).await;
    send_message(&majority_client, QUEUE, "during the cut", &[], None).await;

    // Nor does it answer reads from its state, which the majority has
    // moved past: a count of one message would be a wrong answer.
    let read = tokio::time::timeout(
        RPC_TIMEOUT,
        client.get_queue(pb::GetQueueRequest { name: QUEUE.into() }),
    )
    .await
    .expect("the minority answers within the test's RPC timeout");
    let error = read.expect_err("a node cut off from the majority answers no read");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    // Its metrics say why: while it still holds itself the leader, a
    // majority last acknowledged it longer ago than its lease.
    let scrape = cluster
        .scrape(old)
        .await
        .expect("the cut-off node's metrics");
    if broker_tests::metric_value(&scrape, "broker_cluster_is_leader") == Some(1.0) {
        let age = broker_tests::metric_value(&scrape, "broker_cluster_quorum_ack_age_ms")
            .expect("a leader reports broker_cluster_quorum_ack_age_ms");
        assert!(
            age > 500.0,
            "the cut-off leader's last majority ack is {age} ms old, within its lease"
        );
    }

    // Healed, the old leader follows and serves what the majority wrote.
    cluster.heal();
    cluster.wait_for_health(old, true).await;
    let leader = cluster.leader().await;
    let target = cluster.view(leader).await.expect("the leader's view");
    cluster
        .wait_until(
            |v| v.applied >= target.last_log && v.leader == leader,
            "every node follows one leader and has applied its log",
        )
        .await;
    let mut bodies: Vec<String> = broker_tests::drain(&client, QUEUE)
        .await
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["before the cut", "during the cut"]);
}

/// Cluster mode as node `id` of a cluster of its own (no peers).
pub(crate) fn as_node(
    id: u64,
) -> impl Fn(&mut broker::config::ServerConfig) + Send + Sync + 'static {
    move |config| {
        config.cluster = Some(broker::config::ClusterConfig {
            node_id: id,
            listen: "127.0.0.1:0".parse().expect("an address"),
            advertise: None,
            client_advertise: None,
            join: Vec::new(),
            snapshot_every: broker::config::DEFAULT_SNAPSHOT_EVERY,
            max_clock_skew_ms: broker::config::DEFAULT_MAX_CLOCK_SKEW_MS,
            test_clock_offset_ms: 0,
            tls: None,
        })
    }
}

#[tokio::test]
async fn a_data_dir_is_refused_by_another_node_and_by_a_single_node() {
    // Node 1 makes a cluster of itself, serves, and stops.
    let server = TestServer::start_with(as_node(1)).await;
    let client = server.client().await;
    eventually(
        EVENT_TIMEOUT,
        "node 1 leads its cluster and creates a queue",
        || {
            client.create_queue(pb::CreateQueueRequest {
                name: QUEUE.into(),
                ..Default::default()
            })
        },
    )
    .await;
    let data_dir = server.stop_keeping_data().await;

    let error = startup_error_with(data_dir.path(), &as_node(2)).await;
    let message = error.to_string();
    assert!(
        message.contains("belongs to node 1") && message.contains("--node-id 1"),
        "{message}"
    );
    let error = startup_error(data_dir.path()).await;
    let message = error.to_string();
    assert!(
        message.contains("belongs to node 1 of cluster"),
        "a single node refuses a cluster node's data dir: {message}"
    );

    // A single node's data cannot be brought into a cluster by a join
    // (the cluster's data would replace it), and a single node has no
    // cluster status.
    let (single, client) = server_with_queue(QUEUE, attributes()).await;
    assert_error(
        client.get_cluster_status().await,
        Code::FailedPrecondition,
        &["single node", "--node-id"],
    );
    drop(client);
    let data_dir = single.stop_keeping_data().await;
    let joining = |config: &mut broker::config::ServerConfig| {
        as_node(2)(config);
        if let Some(c) = config.cluster.as_mut() {
            c.join = vec!["127.0.0.1:1".into()];
        }
    };
    let error = startup_error_with(data_dir.path(), &joining).await;
    assert!(
        error.to_string().contains("holds single-node data")
            && error.to_string().contains("without --join"),
        "{error}"
    );
}

/// A single node's data dir becomes the first node of a new cluster, its
/// messages kept: it snapshots them before it serves, the nodes that join
/// start from that snapshot, and they serve every message, the in-flight
/// ones still hidden, once the first node is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_node_s_data_seeds_a_cluster_and_the_nodes_that_join_get_it() {
    let (single, client) = server_with_queue(QUEUE, attributes()).await;
    let bodies = send_numbered(&client, QUEUE, 20).await;
    assert_eq!(bodies.len(), 20);
    let held = receive_now(&client, QUEUE, 5, 600).await;
    assert_eq!(held.len(), 5);
    drop(client);
    let data_dir = single.stop_keeping_data().await;

    let mut cluster = TestCluster::start_from(3, Some(data_dir), &[]).await;
    cluster.kill(1).await;
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    assert_eq!(counts(&client, QUEUE).await, Counts::new(15, 5, 0));
    let mut got: Vec<String> = broker_tests::drain(&client, QUEUE)
        .await
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    let mut want: Vec<String> = numbered(20);
    want.retain(|b| !held.iter().any(|h| h.body == b.as_bytes()));
    got.sort();
    want.sort();
    assert_eq!(got, want, "the joiners serve the single node's messages");
    send_message(&client, QUEUE, "after", &[], None).await;
}

/// A node whose clock is off by more than `--max-clock-skew-ms` (500 ms)
/// from the voters' median does not stand for election: every node reads
/// the others' clocks (`broker_cluster_clock_*`), and when the leader is
/// killed the node in step takes over, never the one whose clock is off
/// (it would release in-flight messages early by the difference).
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_clock_is_off_does_not_stand_for_election() {
    const OFF: &[&str] = &["--test-clock-offset-ms", "5000"];
    let mut cluster = TestCluster::start_with(3, None, &[], &[(3, OFF)]).await;
    let read = |scrape: &str, series: &str| {
        metric_value(scrape, series).ok_or_else(|| format!("no {series}"))
    };
    let measured = poll_until(CLUSTER_TIMEOUT, || async {
        let (one, three) = (cluster.scrape(1).await?, cluster.scrape(3).await?);
        let skews = (
            read(&one, "broker_cluster_clock_skew_ms")?,
            read(&three, "broker_cluster_clock_skew_ms")?,
        );
        let offset = read(&one, "broker_cluster_clock_offset_ms{node=\"3\"}")?;
        let in_step = read(&one, "broker_cluster_clock_offset_ms{node=\"2\"}")?;
        let off = 4_800.0..5_200.0;
        if skews.0.abs() < 200.0
            && in_step.abs() < 200.0
            && off.contains(&skews.1)
            && off.contains(&offset)
        {
            Ok(())
        } else {
            Err(format!(
                "skews of nodes 1 and 3 {skews:?}, node 3 seen by node 1 {offset}"
            ))
        }
    })
    .await;
    if let Err(last) = measured {
        panic!(
            "the clocks were not read within {CLUSTER_TIMEOUT:?}: {last}\n{}",
            cluster.log_tails()
        );
    }
    assert_eq!(
        cluster.log_count(3, "does not stand for election"),
        1,
        "{}",
        cluster.log_tails()
    );

    // `broker cluster status` shows the same.
    let status = cluster
        .client(1)
        .await
        .get_cluster_status()
        .await
        .expect("GetClusterStatus");
    assert_eq!(status.max_clock_skew_ms, 500);
    assert!(
        status.clock_skew_ms.is_some_and(|s| s.abs() < 200),
        "{status:?}"
    );
    let offsets: Vec<Option<i64>> = status.nodes.iter().map(|n| n.clock_offset_ms).collect();
    assert!(
        matches!(offsets[..], [None, Some(two), Some(three)] if two.abs() < 200 && (4_800..5_200).contains(&three)),
        "{status:?}"
    );

    // Twice: the leader dies, and the other node in step takes over (with
    // the check off, node 3 won two of three such runs); the dead one
    // comes back.
    let mut next = cluster.leader().await;
    assert_ne!(next, 3, "node 3 was never a candidate");
    for _ in 0..2 {
        let leader = next;
        cluster.kill(leader).await;
        next = cluster.leader_of(&cluster.running()).await;
        assert_ne!(
            next,
            3,
            "the node whose clock is off took over\n{}",
            cluster.log_tails()
        );
        // Back, and caught up: a node whose log is shorter than node 3's
        // cannot win, and node 3 would then stand after all
        // (`OUT_OF_BOUND_WAIT`).
        cluster.restart(leader);
        let target = cluster.view(next).await.expect("the leader's view");
        cluster
            .wait_until(
                |m| m.leader == next && m.applied >= target.last_log,
                &format!("node {leader} follows node {next} and has its log"),
            )
            .await;
    }
    let three = cluster.scrape(3).await.expect("node 3's metrics");
    assert_eq!(
        read(&three, "broker_cluster_election_rounds_total"),
        Ok(0.0)
    );
    // The new leader serves.
    let client = cluster.client(next).await;
    create_queue(&client, QUEUE, attributes()).await;
    send_message(&client, QUEUE, "after the failover", &[], None).await;
}

/// The first node of a cluster is in step with itself while it leads
/// alone. When two nodes whose clocks are 5 s behind its own join, it
/// leads out of the bound, and hands its leadership over: it serves
/// nothing and stops its heartbeats until a node in step is elected
/// (openraft 0.9 has no leadership transfer). Requests through it are then
/// served by the new leader, and it does not lead again.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_clock_is_off_hands_its_leadership_over() {
    const OFF: &[&str] = &["--test-clock-offset-ms", "5000"];
    let cluster = TestCluster::start_with(3, None, &[], &[(1, OFF)]).await;
    cluster
        .wait_until(
            |m| m.voters == 3 && m.leader != 0 && m.leader != 1,
            "a node in step leads, not node 1",
        )
        .await;
    assert_eq!(
        cluster.log_count(1, "it hands its leadership over"),
        1,
        "{}",
        cluster.log_tails()
    );
    let one = cluster.scrape(1).await.expect("node 1's metrics");
    assert!(
        metric_value(&one, "broker_cluster_clock_skew_ms")
            .is_some_and(|s| (4_800.0..5_200.0).contains(&s)),
        "{one}"
    );

    // Node 1 passes requests on to the new leader.
    let leader = cluster.leader().await;
    assert_ne!(leader, 1);
    let client = cluster.client(1).await;
    create_queue(&client, QUEUE, attributes()).await;
    send_message(&client, QUEUE, "through node 1", &[], None).await;
    let got = broker_tests::drain(&cluster.client(leader).await, QUEUE).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "through node 1".as_bytes());
    assert!(
        cluster.view(1).await.expect("node 1's view").forwarded >= 2,
        "node 1 served the calls itself"
    );
    assert_eq!(cluster.leader().await, leader, "the leadership stayed");
}

/// A batch of the largest messages (100 × 256 KiB, 25 MiB in one log
/// entry) is acknowledged in a cluster, and every node holds it: an append
/// request that takes longer than openraft's 100 ms is answered to its
/// retries rather than sent again from the start, which never got through.
/// On two busy cores the leadership can still move during such a batch
/// (README, "Where it differs from a single node"): the batch is sent
/// again then, as a client would, and each attempt that was applied adds
/// all 100 messages (a change is atomic), never part of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_the_largest_messages_commits_and_reaches_every_node() {
    const ATTEMPTS: u64 = 4;
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    create_queue(&client, QUEUE, attributes()).await;
    let largest = limits::MAX_MESSAGE_BYTES_DEFAULT as usize;
    let batch = pb::SendMessageBatchRequest {
        queue: QUEUE.to_string(),
        entries: (0..limits::BATCH_ENTRIES_MAX)
            .map(|i| {
                let mut body = format!("{i:03}").into_bytes();
                body.resize(largest, b'x');
                pb::SendMessageBatchEntry {
                    id: i.to_string(),
                    body: body.into(),
                    ..Default::default()
                }
            })
            .collect(),
    };
    let mut failures = Vec::new();
    for _ in 0..ATTEMPTS {
        match client.send_message_batch(batch.clone()).await {
            Ok(response) => {
                assert!(response.failed.is_empty(), "{:?}", response.failed);
                assert_eq!(response.successful.len(), limits::BATCH_ENTRIES_MAX);
                break;
            }
            Err(e) if e.code() == Code::Unavailable => failures.push(e.to_string()),
            Err(e) => panic!("SendMessageBatch: {e:?}"),
        }
    }
    assert!(
        failures.len() < ATTEMPTS as usize,
        "no attempt was acknowledged: {failures:?}"
    );
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    let visible = counts(&client, QUEUE).await.visible;
    let batch_len = limits::BATCH_ENTRIES_MAX as u64;
    assert!(
        visible % batch_len == 0 && (batch_len..=ATTEMPTS * batch_len).contains(&visible),
        "{visible} messages after {} failed attempts: whole batches only",
        failures.len()
    );
    caught_up_and_alike(&cluster, leader, "after the batch").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_is_removed_only_when_a_majority_that_answers_remains() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let client = cluster.client(leader).await;
    let followers: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let (down, up) = (followers[0], followers[1]);
    cluster.kill(down).await;

    // Removing the live follower would leave the leader and a dead node.
    assert_error(
        client.remove_node(up).await,
        Code::FailedPrecondition,
        &[&format!("[{down}] do not answer")],
    );
    assert_error(client.remove_node(9).await, Code::NotFound, &["node 9"]);

    // Removing the dead one leaves two voters that answer; writes go on.
    let removed = client.remove_node(down).await.expect("RemoveNode");
    let mut want = vec![leader, up];
    want.sort();
    assert_eq!(removed.voters, want);
    let status = client.get_cluster_status().await.expect("GetClusterStatus");
    assert_eq!(status.nodes.len(), 2, "{status:?}");
    create_queue(&client, QUEUE, attributes()).await;
    send_message(&client, QUEUE, "after the removal", &[], None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_goes_straight_to_the_leader_and_follows_the_next_one() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    let addrs: std::collections::BTreeMap<u64, String> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.client_addr.to_string()))
        .collect();
    let client_addr = |id: u64| addrs[&id].clone();
    let (leader_addr, follower_addr) = (client_addr(leader), client_addr(follower));

    // Every node's client address is in the membership.
    let status = cluster
        .client(follower)
        .await
        .get_cluster_status()
        .await
        .expect("GetClusterStatus");
    let mut addrs: Vec<(u64, String)> = status
        .nodes
        .iter()
        .map(|n| (n.id, n.client_address.clone()))
        .collect();
    addrs.sort();
    let want: Vec<(u64, String)> = (1..=3).map(|id| (id, client_addr(id))).collect();
    assert_eq!(addrs, want);

    // A client of the follower: its first call is passed on, and the
    // answer names the leader; the calls after it skip the follower.
    let client = Client::connect(&follower_addr).await.expect("connect");
    assert_eq!(client.leader_address(), None);
    create_queue(&client, QUEUE, attributes()).await;
    assert_eq!(client.leader_address(), Some(leader_addr.clone()));
    let passed_on = cluster.view(follower).await.expect("a view").forwarded;
    for i in 0..20 {
        send_message(&client, QUEUE, format!("m{i}"), &[], None).await;
    }
    assert_eq!(
        cluster.view(follower).await.expect("a view").forwarded,
        passed_on,
        "the follower passed on none of the 20 sends"
    );
    // ClusterService answers for the node reached, not the leader.
    let status = client.get_cluster_status().await.expect("GetClusterStatus");
    assert_eq!(status.node_id, follower);

    // A client that does not follow keeps going through the follower.
    let plain = Client::connect_with(
        &follower_addr,
        broker_client::ConnectOptions::new().follow_leader(false),
    )
    .await
    .expect("connect");
    send_message(&plain, QUEUE, "through the follower", &[], None).await;
    assert_eq!(plain.leader_address(), None);
    assert_eq!(
        cluster.view(follower).await.expect("a view").forwarded,
        passed_on + 1
    );

    // The leader dies: a call to it fails, the next goes to the follower
    // again, which names the new leader (unless it is the new leader).
    cluster.kill(leader).await;
    let resumed = poll_until(CLUSTER_TIMEOUT, || async {
        client
            .send_message(send_request(QUEUE, "after the kill", &[], None))
            .await
            .map_err(|e| format!("{e:?}"))
    })
    .await;
    resumed.unwrap_or_else(|last| panic!("a send succeeds after the leader's death: {last}"));
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    send_message(&client, QUEUE, "to the new leader", &[], None).await;
    let want = (new_leader != follower).then(|| client_addr(new_leader));
    assert_eq!(client.leader_address(), want);
    // Every acknowledged send is there; the one retried across the
    // failover may be there twice (at least once).
    let mut bodies: Vec<String> = broker_tests::drain(&client, QUEUE)
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    bodies.sort();
    bodies.dedup();
    let mut want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    want.extend(
        [
            "after the kill",
            "through the follower",
            "to the new leader",
        ]
        .map(String::from),
    );
    want.sort();
    assert_eq!(bodies, want);
}

/// The publishing stream through a node that does not lead: the node
/// passes the stream on to the leader. When the leader dies, the
/// publisher reopens the stream and sends what was unanswered again:
/// every message handed over is acknowledged and there, at least once.
#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_streams_through_a_follower_and_across_a_failover() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    let follower_addr = cluster
        .nodes
        .iter()
        .find(|n| n.id == follower)
        .expect("the follower's node")
        .client_addr
        .to_string();
    let client = Client::connect_with(
        &follower_addr,
        broker_client::ConnectOptions::new().follow_leader(false),
    )
    .await
    .expect("connect");
    create_queue(&client, QUEUE, attributes()).await;
    let publisher = broker_client::Publisher::queue(&client, QUEUE)
        .build()
        .expect("a publisher");
    let mut acks = Vec::new();
    for i in 0..200 {
        let body = format!("before {i}");
        acks.push((
            body.clone(),
            publisher.send(body).await.expect("handed over"),
        ));
    }
    publisher.flush().await;
    cluster.kill(leader).await;
    for i in 0..100 {
        let body = format!("after {i}");
        acks.push((
            body.clone(),
            publisher.send(body).await.expect("handed over"),
        ));
    }
    let mut want = Vec::new();
    for (body, ack) in acks {
        ack.await
            .unwrap_or_else(|e| panic!("{body} is acknowledged across the failover: {e}"));
        want.push(body);
    }
    let mut bodies: Vec<String> = broker_tests::drain(&client, QUEUE)
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    bodies.sort();
    bodies.dedup();
    want.sort();
    assert_eq!(bodies, want);
}

/// A CA (`security::ca`) whose certificate is a PEM file in a
/// temporary dir, and the nodes' files it signs.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// One node's `--cluster-tls-*` files.
#[derive(Clone)]
struct NodeTls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    ca: std::path::PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca = super::security::ca(name);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Files of a node named `name`, its certificate for `127.0.0.1` (the
    /// nodes' advertised cluster addresses, their proxies').
    fn node(&self, name: &str) -> NodeTls {
        let (cert, key) = super::security::leaf(&["127.0.0.1"], &self.ca);
        let files = NodeTls {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
            ca: self.ca_path(),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }
}

impl NodeTls {
    /// `broker serve`'s flags for these files.
    fn flags(&self) -> Vec<String> {
        [
            ("--cluster-tls-cert", &self.cert),
            ("--cluster-tls-key", &self.key),
            ("--cluster-tls-ca", &self.ca),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }

    /// How a node with these files dials.
    fn dial(&self) -> broker::cluster::network::Dial {
        let config = broker::config::TlsConfig {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: Some(self.ca.clone()),
        };
        let (_, client) = broker::tls::cluster_tls(&config).expect("the test's files");
        broker::cluster::network::Dial {
            from: None,
            tls: Some(client),
        }
    }
}

/// With `--cluster-tls-*`, the nodes talk over mutual TLS: the cluster
/// forms, takes writes through a follower and fails over. The cluster
/// port refuses a peer without a certificate from the cluster's CA
/// (plaintext, or a certificate of another CA), and a node refuses a peer
/// whose certificate is not from its CA.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_talk_over_mutual_tls_and_refuse_a_stranger() {
    use broker::cluster::network::{ClusterId, Dial, call, channel};

    let pki = Pki::new("cluster CA");
    let nodes: Vec<NodeTls> = (1..=3).map(|n| pki.node(&format!("node-{n}"))).collect();
    let flags: Vec<Vec<String>> = nodes.iter().map(NodeTls::flags).collect();
    let strings: Vec<Vec<&str>> = flags
        .iter()
        .map(|f| f.iter().map(String::as_str).collect())
        .collect();
    let node_args: Vec<(u64, &[&str])> = (1..=3u64)
        .map(|n| (n, strings[n as usize - 1].as_slice()))
        .collect();
    let mut cluster = TestCluster::start_with(3, None, &[], &node_args).await;
    let leader = cluster.leader().await;
    let follower = *cluster
        .running()
        .iter()
        .find(|&&n| n != leader)
        .expect("a follower");
    let client = cluster.client(follower).await;
    set_up(&client).await;
    send_message(&client, QUEUE, "over mutual tls", &[], None).await;

    // The cluster port, asked the time: only a node's certificate gets an
    // answer.
    let address = cluster.cluster_address(leader).to_string();
    let ask = |dial: Dial| {
        let address = address.clone();
        async move {
            let channel = channel(&address, &dial).expect("a channel");
            call::<(), u64>(channel, &ClusterId::default(), "clock", &()).await
        }
    };
    let member = ask(nodes[0].dial()).await;
    assert!(member.is_ok(), "a member's certificate: {member:?}");
    let plaintext = ask(Dial::default()).await;
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");
    let stranger = Pki::new("another CA");
    // The stranger trusts the cluster's CA: the node refuses its certificate.
    let trusting_stranger = NodeTls {
        ca: pki.ca_path(),
        ..stranger.node("stranger")
    };
    let refused = ask(trusting_stranger.dial()).await;
    assert!(
        refused.is_err(),
        "another CA's certificate was answered: {refused:?}"
    );
    // A node does not talk to a server whose certificate is not from its CA.
    let untrusting = NodeTls {
        ca: stranger.ca_path(),
        ..nodes[0].clone()
    };
    let untrusted = ask(untrusting.dial()).await;
    assert!(
        untrusted.is_err(),
        "a server of another CA was trusted: {untrusted:?}"
    );

    // Failover over TLS.
    cluster.kill(leader).await;
    let next = cluster.leader_of(&cluster.running()).await;
    let client = cluster.client(next).await;
    let got = receive_now(&client, QUEUE, 10, 30).await;
    assert_eq!(got.len(), 1, "{}", cluster.log_tails());
    assert_eq!(&got[0].body[..], b"over mutual tls");
}
