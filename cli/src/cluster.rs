//! `broker cluster status`: the cluster as the node reached sees it.

use broker_client::{Client, pb};
use serde_json::{Value, json};

use crate::args::ClusterCommand;
use crate::error::failure;
use crate::format::table;
use crate::output::Output;

/// Runs `broker cluster ...`.
pub(crate) async fn run(client: &Client, out: Output, cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status => {
            let status = client
                .get_cluster_status()
                .await
                .map_err(|e| failure(e, None))?;
            out.print(|| status_text(&status), || status_json(&status))
        }
        ClusterCommand::RemoveNode { id } => {
            let removed = client.remove_node(id).await.map_err(|e| failure(e, None))?;
            out.print(
                || format!("removed node {id}; voters now {:?}\n", removed.voters),
                || json!({ "voters": removed.voters }),
            )
        }
    }
}

fn status_text(s: &pb::GetClusterStatusResponse) -> String {
    let leader = s
        .leader_id
        .map_or("none known".to_string(), |l| format!("node {l}"));
    let mut text = format!(
        "cluster  {}\nnode     {} (answering)\nleader   {leader}\nterm     {}\nlog      {} entries, {} applied\n\n",
        if s.cluster_id.is_empty() {
            "(not joined yet)"
        } else {
            &s.cluster_id
        },
        s.node_id,
        s.term,
        s.last_log_index,
        s.applied_index,
    );
    let mut rows =
        vec![["NODE", "CLUSTER ADDRESS", "CLIENT ADDRESS", "ROLE", "LAG"].map(String::from)];
    for n in &s.nodes {
        let role = match (Some(n.id) == s.leader_id, n.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        rows.push([
            n.id.to_string(),
            n.address.clone(),
            if n.client_address.is_empty() {
                "-".to_string()
            } else {
                n.client_address.clone()
            },
            role.to_string(),
            n.lag.map_or("-".to_string(), |l| format!("{l} entries")),
        ]);
    }
    text.push_str(&table(&rows));
    text
}

fn status_json(s: &pb::GetClusterStatusResponse) -> Value {
    let nodes: Vec<Value> = s
        .nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "address": n.address,
                "client_address": n.client_address,
                "voter": n.voter,
                "lag": n.lag,
            })
        })
        .collect();
    json!({
        "cluster_id": s.cluster_id,
        "node_id": s.node_id,
        "leader_id": s.leader_id,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "applied_index": s.applied_index,
        "nodes": nodes,
    })
}
