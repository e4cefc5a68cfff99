//! A cluster of `broker serve` processes on loopback, for the cluster
//! tests, with a fault-injecting TCP proxy in front of each node.
//!
//! Node `n` listens on its own loopback address, `127.0.0.<10+n>` (client,
//! metrics and cluster ports; Linux routes all of `127.0.0.0/8` to
//! loopback), and its connections to other nodes leave from it. The
//! cluster address it advertises is its proxy's, on `127.0.0.1`: every
//! node-to-node connection to it goes through the proxy, which knows the
//! caller by its source address and drops it when the test has cut the
//! pair ([`TestCluster::isolate`]). Test clients talk to the nodes' client
//! ports directly.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_client::Client;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::{broker_binary, http, metric_value, poll_until, try_http};

/// One node of a [`TestCluster`].
pub struct ClusterNode {
    pub id: u64,
    /// The node's own loopback address.
    ip: IpAddr,
    pub client_addr: SocketAddr,
    metrics_addr: SocketAddr,
    cluster_addr: SocketAddr,
    proxy: Proxy,
    data_dir: TempDir,
    log: PathBuf,
    /// The seed to join through; `None` for the first node.
    join: Option<SocketAddr>,
    process: Option<tokio::process::Child>,
}

impl ClusterNode {
    /// Node `id` on its own loopback address, behind its proxy, not yet
    /// started; it joins through `join` when given.
    async fn new(id: u64, data_dir: TempDir, logs: &TempDir, join: Option<SocketAddr>) -> Self {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + id as u8));
        let cluster_addr = free_port(ip).await;
        let proxy = Proxy::start(cluster_addr).await;
        ClusterNode {
            id,
            ip,
            client_addr: free_port(ip).await,
            metrics_addr: free_port(ip).await,
            cluster_addr,
            proxy,
            data_dir,
            log: logs.path().join(format!("node-{id}.log")),
            join,
            process: None,
        }
    }
}

/// Nodes started from the `broker` binary; killed when dropped.
pub struct TestCluster {
    pub nodes: Vec<ClusterNode>,
    /// Where the nodes' logs go.
    logs: TempDir,
    /// More arguments for every node's `broker serve`.
    args: Vec<String>,
    /// More arguments for one node's `broker serve`, by id.
    node_args: BTreeMap<u64, Vec<String>>,
}

/// A free port on `ip` (bound, then released: a small race, on loopback).
async fn free_port(ip: IpAddr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    listener.local_addr().expect("a bound address")
}

impl TestCluster {
    /// Starts `n` nodes: node 1 makes the cluster, the others join it
    /// through node 1. Returns once every node reports `n` voters and the
    /// same leader.
    pub async fn start(n: u64) -> TestCluster {
        Self::start_from(n, None, &[]).await
    }

    /// [`TestCluster::start`], with node 1 started on `first_data_dir`
    /// (a single node's, say) when given, and `args` given to every node's
    /// `broker serve`.
    pub async fn start_from(n: u64, first_data_dir: Option<TempDir>, args: &[&str]) -> TestCluster {
        Self::start_with(n, first_data_dir, args, &[]).await
    }

    /// [`TestCluster::start_from`], with `node_args` given to one node's
    /// `broker serve` each: `(id, args)`.
    pub async fn start_with(
        n: u64,
        mut first_data_dir: Option<TempDir>,
        args: &[&str],
        node_args: &[(u64, &[&str])],
    ) -> TestCluster {
        let logs = tempfile::tempdir().expect("a log dir");
        let mut nodes = Vec::new();
        for id in 1..=n {
            let data_dir = first_data_dir
                .take()
                .unwrap_or_else(|| tempfile::tempdir().expect("a data dir"));
            nodes.push(ClusterNode::new(id, data_dir, &logs, None).await);
        }
        let seed = nodes[0].proxy.addr;
        for node in &mut nodes[1..] {
            node.join = Some(seed);
        }
        let args = args.iter().map(|a| a.to_string()).collect();
        let node_args = node_args
            .iter()
            .map(|(id, a)| (*id, a.iter().map(|a| a.to_string()).collect()))
            .collect();
        let mut cluster = TestCluster {
            nodes,
            logs,
            args,
            node_args,
        };
        cluster.spawn(1);
        cluster
            .wait_until(|m| m.leader == 1, "node 1 leads its new cluster")
            .await;
        for id in 2..=n {
            cluster.spawn(id);
        }
        cluster
            .wait_until(
                |m| m.voters == n && m.leader != 0,
                &format!("every node counts {n} voters and knows a leader"),
            )
            .await;
        cluster.leader().await;
        cluster
    }

    /// Starts one more node on an empty data dir, joining through a
    /// running node, and waits until every running node counts it as a
    /// voter. Returns its id.
    pub async fn add_node(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let seed = self
            .node(*self.running().first().expect("a running node"))
            .proxy
            .addr;
        let data_dir = tempfile::tempdir().expect("a data dir");
        let node = ClusterNode::new(id, data_dir, &self.logs, Some(seed)).await;
        self.nodes.push(node);
        let before = self.running().len() as u64;
        self.spawn(id);
        let want = before + 1;
        self.wait_until(
            |m| m.voters == want && m.leader != 0,
            &format!("every node counts node {id} among {want} voters"),
        )
        .await;
        id
    }

    fn node(&self, id: u64) -> &ClusterNode {
        &self.nodes[id as usize - 1]
    }

    fn spawn(&mut self, id: u64) {
        let binary = broker_binary();
        let mut args = self.args.clone();
        args.extend(self.node_args.get(&id).into_iter().flatten().cloned());
        let node = &mut self.nodes[id as usize - 1];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open the node's log");
        let mut command = tokio::process::Command::new(binary);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(node.data_dir.path())
            .args(["--listen", &node.client_addr.to_string()])
            .args(["--metrics-listen", &node.metrics_addr.to_string()])
            .args(["--node-id", &id.to_string()])
            .args(["--cluster-listen", &node.cluster_addr.to_string()])
            .args(["--cluster-advertise", &node.proxy.addr.to_string()])
            .args(["--min-free-disk", "0"])
            .args(&args)
            // `CLUSTER_RUST_LOG` (e.g. `info,openraft=info` to see elections)
            // replaces the default filter of the nodes' logs.
            .env(
                "RUST_LOG",
                std::env::var("CLUSTER_RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .kill_on_drop(true);
        if let Some(seed) = node.join {
            command.args(["--join", &seed.to_string()]);
        }
        node.process = Some(command.spawn().expect("spawn broker serve"));
    }

    /// Kills node `id` with SIGKILL and waits until it is gone.
    pub async fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(mut p) = node.process.take() {
            p.kill().await.expect("kill the node");
        }
    }

    /// Starts node `id` again over its data dir.
    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
    }

    /// The ids of the nodes running.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// The client addresses of the nodes running.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.running()
            .into_iter()
            .map(|id| self.node(id).client_addr)
            .collect()
    }

    /// A client of node `id`: its calls go to that node (it does not
    /// follow the leader, see `ConnectOptions::follow_leader`).
    pub async fn client(&self, id: u64) -> Client {
        let addr = self.node(id).client_addr;
        let options = broker_client::ConnectOptions::new().follow_leader(false);
        Client::connect_with(addr.to_string(), options)
            .await
            .unwrap_or_else(|e| panic!("connect to node {id} at {addr}: {e:?}"))
    }

    /// Node `id`'s `/metrics`, or why it could not be read.
    pub async fn scrape(&self, id: u64) -> Result<String, String> {
        let node = self.node(id);
        Ok(tokio::time::timeout(
            Duration::from_secs(1),
            try_http(node.metrics_addr, "GET", "/metrics"),
        )
        .await
        .map_err(|_| format!("node {id} serves no metrics within 1 s"))?
        .map_err(|e| format!("node {id} serves no metrics: {e}"))?
        .body)
    }

    /// What node `id` reports of the cluster, or why it could not.
    pub async fn view(&self, id: u64) -> Result<View, String> {
        let scrape = self.scrape(id).await?;
        let get = |name: &str| {
            metric_value(&scrape, name)
                .map(|v| v as u64)
                .ok_or_else(|| format!("node {id} reports no {name}"))
        };
        Ok(View {
            leader: get("broker_cluster_leader")?,
            is_leader: get("broker_cluster_is_leader")? == 1,
            voters: get("broker_cluster_voters")?,
            term: get("broker_cluster_term")?,
            last_log: get("broker_cluster_last_log_index")?,
            committed: get("broker_cluster_committed_index")?,
            applied: get("broker_cluster_applied_index")?,
            apply_lag: get("broker_cluster_apply_lag_entries")?,
            forwarded: get("broker_cluster_forwarded_requests_total")?,
        })
    }

    /// The messages node `id`'s own engine holds per queue (every state
    /// summed, from its `broker_queue_messages` metrics): replicas that
    /// applied the same log hold the same.
    pub async fn message_totals(&self, id: u64) -> BTreeMap<String, u64> {
        let scrape = http(self.node(id).metrics_addr, "GET", "/metrics")
            .await
            .body;
        let mut totals = BTreeMap::new();
        for line in scrape.lines() {
            let Some(rest) = line.strip_prefix("broker_queue_messages{") else {
                continue;
            };
            let queue = rest
                .split("queue=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string();
            let value: f64 = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("a metric line: {line}"));
            *totals.entry(queue).or_insert(0) += value as u64;
        }
        totals
    }

    /// How many lines of node `id`'s log (over all its runs) contain
    /// `needle`.
    pub fn log_count(&self, id: u64, needle: &str) -> usize {
        std::fs::read_to_string(&self.node(id).log)
            .map_or(0, |t| t.lines().filter(|l| l.contains(needle)).count())
    }

    /// Waits until every running node's view satisfies `condition`.
    pub async fn wait_until(&self, condition: impl Fn(&View) -> bool, what: &str) {
        self.wait_until_on(&self.running(), condition, what).await
    }

    /// Waits until the views of `ids` satisfy `condition`.
    pub async fn wait_until_on(&self, ids: &[u64], condition: impl Fn(&View) -> bool, what: &str) {
        let within = CLUSTER_TIMEOUT;
        let result = poll_until(within, || async {
            let mut views = Vec::new();
            for &id in ids {
                match self.view(id).await {
                    Ok(v) if condition(&v) => views.push((id, v)),
                    Ok(v) => return Err(format!("node {id}: {v:?}")),
                    Err(e) => return Err(e),
                }
            }
            Ok(views)
        })
        .await;
        if let Err(last) = result {
            panic!(
                "{what}: not within {within:?}; last: {last}\n{}",
                self.log_tails()
            );
        }
    }

    /// Waits until node `id`'s gRPC health (the whole server) is SERVING
    /// if `serving`, else NOT_SERVING.
    pub async fn wait_for_health(&self, id: u64, serving: bool) {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        let want = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let addr = self.node(id).client_addr;
        let result = poll_until(CLUSTER_TIMEOUT, || async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("a valid URI")
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .status;
            if status == want as i32 {
                Ok(())
            } else {
                Err(format!("{:?}", ServingStatus::try_from(status)))
            }
        })
        .await;
        if let Err(last) = result {
            panic!(
                "node {id}'s health was not {want:?} within {CLUSTER_TIMEOUT:?}; last: {last}\n{}",
                self.log_tails()
            );
        }
    }

    /// The leader that every running node agrees on (waits for one).
    pub async fn leader(&self) -> u64 {
        self.leader_of(&self.running()).await
    }

    /// The leader that nodes `ids` agree on, one of them (waits for one).
    pub async fn leader_of(&self, ids: &[u64]) -> u64 {
        let result = poll_until(CLUSTER_TIMEOUT, || async {
            let mut leaders = HashSet::new();
            let mut leading = Vec::new();
            for &id in ids {
                let v = self.view(id).await?;
                leaders.insert(v.leader);
                if v.is_leader {
                    leading.push(id);
                }
            }
            match (leaders.len(), leading.as_slice()) {
                (1, [one]) => Ok(*one),
                _ => Err(format!("leaders seen {leaders:?}, leading {leading:?}")),
            }
        })
        .await;
        result.unwrap_or_else(|last| {
            panic!(
                "nodes {ids:?} agree on no leader within {CLUSTER_TIMEOUT:?}: {last}\n{}",
                self.log_tails()
            )
        })
    }

    /// Cuts node `id` off from every other node, both ways.
    pub fn isolate(&self, id: u64) {
        let me = self.node(id);
        for other in self.nodes.iter().filter(|n| n.id != id) {
            me.proxy.block(other.ip);
            other.proxy.block(me.ip);
        }
    }

    /// Undoes every cut.
    pub fn heal(&self) {
        for node in &self.nodes {
            node.proxy.unblock_all();
        }
    }

    /// The cluster address node `id` advertises (its proxy's).
    pub fn cluster_address(&self, id: u64) -> SocketAddr {
        self.node(id).proxy.addr
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut out = format!("node logs in {}:\n", self.logs.path().display());
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- node {}\n", node.id));
            for line in &lines[lines.len().saturating_sub(tail_lines())..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// How long the harness waits for the cluster to settle (an election, a
/// join, a restarted node catching up): a second or two, with the margin
/// of a 2-core machine busy compiling.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a node reports of the cluster (`broker_cluster_*` metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub leader: u64,
    pub is_leader: bool,
    pub voters: u64,
    pub term: u64,
    pub last_log: u64,
    /// The last entry the node knows committed.
    pub committed: u64,
    pub applied: u64,
    /// Entries it knows committed and has not applied.
    pub apply_lag: u64,
    /// Client requests the node passed on to the leader.
    pub forwarded: u64,
}

/// A TCP proxy in front of one node's cluster port that drops connections
/// from blocked source addresses.
struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accept: AbortHandle,
}

#[derive(Default)]
struct ProxyState {
    blocked: HashSet<IpAddr>,
    /// Open connections: the caller's address and the task relaying them.
    open: Vec<(IpAddr, AbortHandle)>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, from)) = listener.accept().await else {
                    continue;
                };
                let mut st = shared.lock().expect("proxy state");
                if st.blocked.contains(&from.ip()) {
                    continue; // dropped: the caller sees the connection close
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = inbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                st.open.retain(|(_, h)| !h.is_finished());
                st.open.push((from.ip(), relay.abort_handle()));
            }
        })
        .abort_handle();
        Proxy {
            addr,
            state,
            accept,
        }
    }

    fn block(&self, from: IpAddr) {
        let mut st = self.state.lock().expect("proxy state");
        st.blocked.insert(from);
        for (ip, relay) in &st.open {
            if *ip == from {
                relay.abort();
            }
        }
    }

    fn unblock_all(&self) {
        self.state.lock().expect("proxy state").blocked.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, relay) in &self.state.lock().expect("proxy state").open {
            relay.abort();
        }
    }
}

/// Lines of each node's log shown when a cluster test fails
/// (`CLUSTER_LOG_TAIL`, default 15).
fn tail_lines() -> usize {
    std::env::var("CLUSTER_LOG_TAIL")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(15)
}
