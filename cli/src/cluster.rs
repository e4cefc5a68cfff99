//! `broker cluster status`: the cluster as the node reached sees it,
//! clocks included; `broker cluster remove-node`.

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
        "cluster  {}\nnode     {} (answering)\nleader   {leader}\nterm     {}\nlog      {} entries, {} applied\nclock    {}\n\n",
        if s.cluster_id.is_empty() {
            "(not joined yet)"
        } else {
            &s.cluster_id
        },
        s.node_id,
        s.term,
        s.last_log_index,
        s.applied_index,
        match s.clock_skew_ms {
            Some(skew) => format!(
                "{skew:+} ms from the voters' median (bound {} ms){}",
                s.max_clock_skew_ms,
                if skew.unsigned_abs() > s.max_clock_skew_ms {
                    ": out of it, this node does not stand for election"
                } else {
                    ""
                }
            ),
            None => "not read yet".to_string(),
        },
    );
    let mut rows = vec![
        [
            "NODE",
            "CLUSTER ADDRESS",
            "CLIENT ADDRESS",
            "ROLE",
            "LAG",
            "CLOCK",
        ]
        .map(String::from),
    ];
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
            n.clock_offset_ms
                .map_or("-".to_string(), |ms| format!("{ms:+} ms")),
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
                "clock_offset_ms": n.clock_offset_ms,
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
        "clock_skew_ms": s.clock_skew_ms,
        "max_clock_skew_ms": s.max_clock_skew_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, clock_offset_ms: Option<i64>) -> pb::ClusterNode {
        pb::ClusterNode {
            id,
            address: format!("10.0.0.{id}:7001"),
            voter: true,
            lag: None,
            client_address: format!("10.0.0.{id}:7000"),
            clock_offset_ms,
        }
    }

    #[test]
    fn status_shows_the_clocks_and_says_when_this_node_is_out_of_bound() {
        let mut s = pb::GetClusterStatusResponse {
            cluster_id: "c".into(),
            node_id: 3,
            leader_id: Some(1),
            term: 4,
            last_log_index: 10,
            applied_index: 10,
            nodes: vec![node(1, Some(-5_000)), node(2, None), node(3, None)],
            clock_skew_ms: Some(5_000),
            max_clock_skew_ms: 500,
        };
        let text = status_text(&s);
        assert!(
            text.contains(
                "clock    +5000 ms from the voters' median (bound 500 ms): out of it, this node does not stand for election"
            ),
            "{text}"
        );
        assert!(text.contains("-5000 ms"), "{text}");
        s.clock_skew_ms = Some(-20);
        assert!(
            status_text(&s).contains("clock    -20 ms from the voters' median (bound 500 ms)\n"),
            "{}",
            status_text(&s)
        );
        s.clock_skew_ms = None;
        assert!(status_text(&s).contains("clock    not read yet"));
        let json = status_json(&s);
        assert_eq!(json["nodes"][0]["clock_offset_ms"], -5_000);
        assert_eq!(json["max_clock_skew_ms"], 500);
    }
}
