//! The cluster suite: three `broker serve` processes on loopback (see
//! `broker_tests::cluster`), under the crash suite's workload and ledger.
//!
//! 1. The leader is killed (SIGKILL) under load, at a random moment: the
//!    others serve again within 5 s; after the killed node restarts and
//!    catches up, a drain shows nothing acknowledged lost, no acknowledged
//!    delete delivered again, every publish in all its queues or none, and
//!    stats that count what the drain finds.
//! 2. The leader is cut off from the others (a network partition through
//!    the harness's proxies): it refuses writes with UNAVAILABLE saying
//!    why, the majority elects a leader and goes on, and after healing the
//!    old leader follows and serves what the majority wrote.
//!
//! `CLUSTER_CYCLES` sets the kill cycles (default 2), `CLUSTER_SEED`
//! replays a run's random choices (the seed is printed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_tests::cluster::TestCluster;
use broker_tests::*;

use super::crash::{
    Flags, Ledger, MAX_RUN, MIN_RUN, Outcome, QUEUE, RPC_TIMEOUT, Rng, check, drain, env_u64, rpc,
    set_up, spawn_workload,
};

/// Kill cycles in the default test run.
const DEFAULT_CYCLES: u64 = 2;
/// How soon the survivors must serve again after the leader dies.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread")]
async fn killed_leader_under_load_loses_nothing_and_the_others_take_over() {
    let cycles = env_u64("CLUSTER_CYCLES").unwrap_or(DEFAULT_CYCLES);
    let seed = env_u64("CLUSTER_SEED").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_nanos();
        (nanos as u64) ^ u64::from(std::process::id())
    });
    println!("cluster suite: {cycles} kill cycles, CLUSTER_SEED={seed}");
    let mut rng = Rng::new(seed);
    let mut cluster = TestCluster::start(3).await;
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
        let resumed_in = loop {
            tries += 1;
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
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
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
        let new_leader = cluster.leader().await;
        let target = cluster.view(new_leader).await.expect("the leader's view");
        cluster
            .wait_until(
                |v| v.applied >= target.last_log,
                &format!("every node applies the log up to {}", target.last_log),
            )
            .await;

        let client = cluster.client(new_leader).await;
        let drained = drain(&client, stopped_at).await;
        let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
        let report = check(&ledger, &drained);
        println!(
            "cycle {cycle}: leader {leader} killed after {run_for:?}, sends served again \
             {resumed_in:?} later, new leader {new_leader}; {report}"
        );
        assert!(
            report.violations.is_empty(),
            "CLUSTER_SEED={seed}, cycle {cycle} (leader {leader} killed after {run_for:?}): \
             {} violations:\n{}",
            report.violations.len(),
            report
                .violations
                .iter()
                .take(30)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_leader_refuses_writes_and_the_majority_goes_on() {
    let cluster = TestCluster::start(3).await;
    let old = cluster.leader().await;
    let client = cluster.client(old).await;
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

    // Healed, the old leader follows and serves what the majority wrote.
    cluster.heal();
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
