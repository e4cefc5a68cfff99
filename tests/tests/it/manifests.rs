//! The Kubernetes manifests of `deploy/kubernetes/`, which cannot run on
//! these machines: they parse, their parts fit together (names, labels,
//! ports, probes), the StatefulSet's start script gives each pod the
//! `broker serve` flags it needs (run with a stand-in `broker` and parsed
//! with the broker's own flags), and the metric KEDA scales on is one the
//! broker serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use broker_tests::{TestServer, create_queue, metric_value};
use serde::Deserialize as _;
use serde_norway::Value;

fn manifest(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .unwrap_or_else(|| panic!("not a map of labels: {v:?}"))
        .iter()
        .map(|(k, v)| (str_of(k, "a label").into(), str_of(v, "a label").into()))
        .collect()
}

/// Whether every label of `selector` is on the pod.
fn selects(selector: &Value, pod: &BTreeMap<String, String>) -> bool {
    labels(selector).iter().all(|(k, v)| pod.get(k) == Some(v))
}

/// The container's port numbers by name.
fn ports(container: &Value) -> BTreeMap<String, u64> {
    container["ports"]
        .as_sequence()
        .expect("container ports")
        .iter()
        .map(|p| {
            (
                str_of(&p["name"], "a port name").into(),
                p["containerPort"].as_u64().expect("containerPort"),
            )
        })
        .collect()
}

/// Runs the container's start script as the pod `hostname` would, with a
/// stand-in `broker` that prints its arguments: what `broker` is run with.
/// `tls_dir` stands in for the directory the cluster TLS Secret is
/// mounted at (`CLUSTER_TLS_DIR`).
fn start_args(container: &Value, hostname: &str, tls_dir: &Path) -> Vec<String> {
    let command: Vec<&str> = container["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .map(|c| str_of(c, "command"))
        .collect();
    assert_eq!(command, ["/bin/sh", "-c"], "the start script runs in sh");
    let script = str_of(&container["args"][0], "the start script");
    let bin = tempfile::tempdir().unwrap();
    let fake: PathBuf = bin.path().join("broker");
    std::fs::write(&fake, "#!/bin/sh\nprintf '%s\\n' \"$@\"\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .env("PATH", path)
        .env("HOSTNAME", hostname)
        .env("POD_NAMESPACE", "prod")
        .env("CLUSTER_TLS_DIR", tls_dir)
        .output()
        .expect("run the start script");
    assert!(
        out.status.success(),
        "the start script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// `broker serve ARGS` as the broker resolves them.
fn serve_config(args: &[String]) -> broker::config::ServerConfig {
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        settings: broker::config::Settings,
    }
    assert_eq!(args.first().map(String::as_str), Some("serve"));
    let serve = <Serve as clap::Parser>::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
    serve
        .settings
        .resolve(None)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_broker_statefulset_fits_its_services_and_budget() {
    let docs = manifest("broker.yaml");
    let [set] = of_kind(&docs, "StatefulSet")[..] else {
        panic!("one StatefulSet");
    };
    let pod_labels = labels(&set["spec"]["template"]["metadata"]["labels"]);
    assert!(selects(
        &set["spec"]["selector"]["matchLabels"],
        &pod_labels
    ));
    let replicas = set["spec"]["replicas"].as_u64().expect("replicas");
    assert_eq!(replicas, 3);
    assert_eq!(set["spec"]["podManagementPolicy"], "Parallel");

    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let ports = ports(container);
    let services = of_kind(&docs, "Service");
    assert_eq!(services.len(), 2);
    for service in &services {
        assert!(selects(&service["spec"]["selector"], &pod_labels));
        for port in service["spec"]["ports"].as_sequence().expect("ports") {
            let target = str_of(&port["targetPort"], "targetPort");
            assert!(
                ports.contains_key(target),
                "no container port named {target}"
            );
        }
    }
    let headless = services
        .iter()
        .find(|s| s["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    assert_eq!(headless["metadata"]["name"], set["spec"]["serviceName"]);
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);

    // Readiness is the broker's gRPC health on its gRPC port.
    assert_eq!(
        container["readinessProbe"]["grpc"]["port"].as_u64(),
        Some(ports["grpc"])
    );

    // A voluntary disruption leaves a majority.
    let [budget] = of_kind(&docs, "PodDisruptionBudget")[..] else {
        panic!("one PodDisruptionBudget");
    };
    assert!(selects(
        &budget["spec"]["selector"]["matchLabels"],
        &pod_labels
    ));
    let down = budget["spec"]["maxUnavailable"]
        .as_u64()
        .expect("maxUnavailable");
    assert!(
        replicas - down > replicas / 2,
        "{down} of {replicas} down leaves no majority"
    );

    // Each pod's flags: node ids from the ordinals, the first starts the
    // cluster and the others join it, addresses on the container's ports.
    let name = str_of(&set["metadata"]["name"], "name");
    let service = str_of(&set["spec"]["serviceName"], "serviceName");
    let no_secret = tempfile::tempdir().unwrap();
    for ordinal in 0..replicas {
        let host = format!("{name}-{ordinal}");
        let config = serve_config(&start_args(container, &host, no_secret.path()));
        assert_eq!(config.listen.port() as u64, ports["grpc"]);
        let cluster = config.cluster.expect("cluster mode");
        assert_eq!(cluster.node_id, ordinal + 1);
        assert_eq!(cluster.listen.port() as u64, ports["cluster"]);
        let dns = format!("{service}.prod.svc.cluster.local:{}", ports["cluster"]);
        assert_eq!(cluster.address(), format!("{host}.{dns}"));
        // Clients in the cluster reach each pod's gRPC port by its name.
        assert_eq!(
            cluster.client_advertise,
            Some(format!(
                "{host}.{service}.prod.svc.cluster.local:{}",
                ports["grpc"]
            ))
        );
        let join: Vec<String> = if ordinal == 0 {
            vec![]
        } else {
            vec![format!("{name}-0.{dns}")]
        };
        assert_eq!(cluster.join, join);
        let metrics = config.metrics_listen.expect("metrics served");
        assert_eq!(metrics.port() as u64, ports["metrics"]);
        assert!(cluster.tls.is_none(), "no Secret mounted: plaintext");
    }

    // Cluster TLS: the optional Secret's mount is where the script looks,
    // and a pod that finds it there talks mutual TLS with its files.
    let [volume] = &set["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")[..]
    else {
        panic!("one volume: the cluster TLS Secret");
    };
    assert_eq!(volume["secret"]["secretName"], "broker-cluster-tls");
    assert_eq!(volume["secret"]["optional"], true);
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the Secret is mounted");
    let env = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "CLUSTER_TLS_DIR")
        .expect("CLUSTER_TLS_DIR is set");
    assert_eq!(env["value"], mount["mountPath"]);
    let secret = tempfile::tempdir().unwrap();
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(secret.path().join(file), "").unwrap();
    }
    let config = serve_config(&start_args(container, &format!("{name}-1"), secret.path()));
    let tls = config
        .cluster
        .expect("cluster mode")
        .tls
        .expect("cluster TLS");
    assert_eq!(tls.cert, secret.path().join("tls.crt"));
    assert_eq!(tls.key, secret.path().join("tls.key"));
    assert_eq!(tls.client_ca, Some(secret.path().join("ca.crt")));
}

#[tokio::test]
async fn the_worker_scales_on_a_metric_the_broker_serves() {
    let docs = manifest("worker-keda.yaml");
    let [deployment] = of_kind(&docs, "Deployment")[..] else {
        panic!("one Deployment");
    };
    let [scaled] = of_kind(&docs, "ScaledObject")[..] else {
        panic!("one ScaledObject");
    };
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    let query = str_of(&trigger["metadata"]["query"], "query");
    let series = query
        .strip_prefix("max(")
        .and_then(|q| q.strip_suffix(')'))
        .expect("max(SERIES): every node reports every queue");

    let server = TestServer::start().await;
    create_queue(&server.client().await, "emails", Default::default()).await;
    let scrape = server.scrape().await;
    assert_eq!(
        metric_value(&scrape, series),
        Some(0.0),
        "{series} is not in the broker's metrics:\n{scrape}"
    );
}
