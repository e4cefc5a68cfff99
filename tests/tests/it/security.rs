//! TLS, token authentication and the limits that protect the broker, over
//! the real gRPC server.
//!
//! Certificates are generated with rcgen per test: a CA, a server
//! certificate for `127.0.0.1` signed by it, a client certificate signed by
//! it, and a client certificate of an unrelated CA.

use std::path::PathBuf;
use std::time::Duration;

use broker::config::{ServerConfig, TlsConfig};
use broker_client::ConnectOptions;
use broker_tests::{
    Client, Code, EVENT_TIMEOUT, Error, TestServer, assert_error, create_queue, eventually,
    numbered, pb, send_batch, stats,
};
use pb::queue_service_client::QueueServiceClient;
use pb::stream_messages_request::Request as Op;
use tempfile::TempDir;
use tokio_stream::wrappers::ReceiverStream;

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// Generated PEM files in a temporary directory.
struct Pki {
    dir: TempDir,
    /// The CA that signed the server's and the good client's certificates.
    ca_pem: String,
    /// A client certificate and key signed by the CA.
    client: (String, String),
    /// A client certificate and key of another CA.
    stranger: (String, String),
}

/// A self-signed CA named `name`.
pub(crate) fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names` signed by `issuer`, and its key: PEM.
pub(crate) fn leaf(
    names: &[&str],
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("broker test CA");
        let (cert, key) = leaf(&["127.0.0.1", "localhost"], &ca);
        std::fs::write(dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let client = leaf(&["client"], &ca);
        let stranger = leaf(&["stranger"], &self::ca("another CA"));
        Pki {
            dir,
            ca_pem: ca.pem(),
            client,
            stranger,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's TLS settings; with `client_ca`, client certificates
    /// signed by the CA are required.
    fn server(&self, client_ca: bool) -> TlsConfig {
        TlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.then(|| self.path("ca.pem")),
        }
    }

    fn trusting(&self) -> ConnectOptions {
        ConnectOptions::new().tls_ca_pem(self.ca_pem.clone())
    }
}

async fn tls_server(pki: &Pki, client_ca: bool) -> TestServer {
    let tls = pki.server(client_ca);
    TestServer::start_with(move |c| c.tls = Some(tls.clone())).await
}

fn https(server: &TestServer) -> String {
    format!("https://{}", server.addr())
}

/// Whether a client with `options` can list queues; connection and call
/// failures both count as "no".
async fn can_list(addr: String, options: ConnectOptions) -> Result<(), String> {
    let attempt = async {
        let client = Client::connect_with(&addr, options)
            .await
            .map_err(|e| e.to_string())?;
        client
            .list_queues(pb::ListQueuesRequest::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn tls_round_trip_with_a_generated_certificate() {
    let pki = Pki::new();
    let server = tls_server(&pki, false).await;
    let client = Client::connect_with(https(&server), pki.trusting())
        .await
        .expect("TLS connect");
    create_queue(&client, "secure", Default::default()).await;
    client.send("secure", "over tls").await.unwrap();
    let messages = client.receive("secure", 1, 1).await.unwrap();
    assert_eq!(&messages[0].body[..], b"over tls");

    // Without a scheme, TLS options mean https.
    let client = Client::connect_with(server.addr().to_string(), pki.trusting())
        .await
        .expect("TLS connect without a scheme");
    stats(&client, "secure").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_and_untrusting_clients_cannot_talk_to_a_tls_server() {
    let pki = Pki::new();
    let server = tls_server(&pki, false).await;
    let plaintext = can_list(server.addr().to_string(), ConnectOptions::new()).await;
    assert!(
        plaintext.is_err(),
        "a plaintext client must fail: {plaintext:?}"
    );

    // A client that trusts another CA refuses the server's certificate.
    let other = ca("unrelated CA").pem();
    let untrusting = can_list(https(&server), ConnectOptions::new().tls_ca_pem(other)).await;
    let e = untrusting.expect_err("the server's certificate must not be trusted");
    assert!(e.contains("certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_are_required_with_a_client_ca() {
    let pki = Pki::new();
    let server = tls_server(&pki, true).await;

    let without = can_list(https(&server), pki.trusting()).await;
    assert!(
        without.is_err(),
        "no client certificate must fail: {without:?}"
    );

    let (cert, key) = pki.stranger.clone();
    let stranger = can_list(https(&server), pki.trusting().tls_identity_pem(cert, key)).await;
    assert!(
        stranger.is_err(),
        "a certificate of another CA must fail: {stranger:?}"
    );

    let (cert, key) = pki.client.clone();
    can_list(https(&server), pki.trusting().tls_identity_pem(cert, key))
        .await
        .expect("a certificate signed by the client CA is accepted");
}

/// Runs the server with `configure` and returns the startup error it fails
/// with (a bad TLS or token file fails before anything is served).
async fn startup_error(configure: impl FnOnce(&mut ServerConfig)) -> String {
    let data_dir = broker_tests::temp_data_dir();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ServerConfig::new(data_dir.path());
    configure(&mut config);
    let run = broker::server::run(listener, config, std::future::pending());
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => panic!("the server returned Ok"),
        Err(_) => panic!("the server started instead of failing"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_files_are_startup_errors_naming_the_file() {
    let pki = Pki::new();
    let missing = pki.path("missing.pem");
    let e = startup_error(|c| {
        c.tls = Some(TlsConfig {
            cert: missing.clone(),
            ..pki.server(false)
        })
    })
    .await;
    assert!(e.contains("missing.pem"), "{e}");

    let e = startup_error(|c| {
        c.tls = Some(TlsConfig {
            key: pki.path("server.pem"),
            ..pki.server(false)
        })
    })
    .await;
    assert!(
        e.contains("server.pem") && e.contains("no private key"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Authentication and permissions
// ---------------------------------------------------------------------------

const TOKENS: &str = r#"
[[tokens]]
name = "operator"
token = "operator-secret"
permissions = ["admin"]

[[tokens]]
name = "orders-service"
token = "orders-secret"
permissions = ["send:orders*", "receive:orders-in", "publish:events"]
"#;

/// A server with authentication on; the token file lives in the returned
/// directory.
async fn auth_server() -> (TestServer, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(&path, TOKENS).unwrap();
    let server = TestServer::start_with(move |c| c.auth_tokens = Some(path.clone())).await;
    (server, dir)
}

async fn client_with_token(server: &TestServer, token: &str) -> Client {
    Client::connect_with(
        server.addr().to_string(),
        ConnectOptions::new().token(token),
    )
    .await
    .expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_unknown_token_is_unauthenticated() {
    let (server, _dir) = auth_server().await;
    let anonymous = server.client().await;
    let list = anonymous
        .list_queues(pb::ListQueuesRequest::default())
        .await;
    assert_error(list, Code::Unauthenticated, &["missing token", "Bearer"]);
    let send = anonymous.send("orders", "x").await;
    assert_error(send, Code::Unauthenticated, &["missing token"]);

    let wrong = client_with_token(&server, "operator-secre").await;
    let list = wrong.list_queues(pb::ListQueuesRequest::default()).await;
    let e = assert_error(list, Code::Unauthenticated, &["unknown token"]);
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_may_do_everything() {
    let (server, _dir) = auth_server().await;
    let admin = client_with_token(&server, "operator-secret").await;
    create_queue(&admin, "payments", Default::default()).await;
    admin.send("payments", "x").await.unwrap();
    let received = admin.receive("payments", 1, 0).await.unwrap();
    admin
        .delete("payments", &received[0].receipt_handle)
        .await
        .unwrap();
    admin
        .create_topic(pb::CreateTopicRequest {
            name: "events".into(),
        })
        .await
        .unwrap();
    admin
        .subscribe(pb::SubscribeRequest {
            topic: "events".into(),
            queue: "payments".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .publish("events", "e", Default::default())
        .await
        .unwrap();
    admin
        .purge_queue(pb::PurgeQueueRequest {
            name: "payments".into(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn token_without_the_permission_is_denied_naming_it() {
    let (server, _dir) = auth_server().await;
    let admin = client_with_token(&server, "operator-secret").await;
    for queue in ["orders-eu", "orders-in", "payments"] {
        create_queue(&admin, queue, Default::default()).await;
    }
    admin
        .create_topic(pb::CreateTopicRequest {
            name: "events".into(),
        })
        .await
        .unwrap();
    admin
        .create_topic(pb::CreateTopicRequest {
            name: "audit".into(),
        })
        .await
        .unwrap();
    let orders = client_with_token(&server, "orders-secret").await;

    // Patterns: `send:orders*` covers every queue starting with "orders".
    orders.send("orders-eu", "a").await.unwrap();
    orders.send("orders-in", "b").await.unwrap();
    let e = assert_error(
        orders.send("payments", "c").await,
        Code::PermissionDenied,
        &["token 'orders-service' lacks permission send:payments"],
    );
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    let batch = orders
        .send_message_batch(pb::SendMessageBatchRequest {
            queue: "payments".into(),
            entries: vec![pb::SendMessageBatchEntry {
                id: "1".into(),
                body: "x".into(),
                ..Default::default()
            }],
        })
        .await;
    assert_error(batch, Code::PermissionDenied, &["send:payments"]);

    // `receive:orders-in` is exact.
    let received = orders.receive("orders-in", 1, 0).await.unwrap();
    orders
        .delete("orders-in", &received[0].receipt_handle)
        .await
        .unwrap();
    assert_error(
        orders.receive("orders-eu", 1, 0).await,
        Code::PermissionDenied,
        &["lacks permission receive:orders-eu"],
    );
    assert_error(
        orders.delete("orders-eu", "whatever").await,
        Code::PermissionDenied,
        &["receive:orders-eu"],
    );

    // Publish, and management.
    orders
        .publish("events", "e", Default::default())
        .await
        .unwrap();
    assert_error(
        orders.publish("audit", "e", Default::default()).await,
        Code::PermissionDenied,
        &["publish:audit"],
    );
    let create = orders
        .create_queue(pb::CreateQueueRequest {
            name: "orders-new".into(),
            ..Default::default()
        })
        .await;
    assert_error(create, Code::PermissionDenied, &["lacks permission admin"]);
    let purge = orders
        .purge_queue(pb::PurgeQueueRequest {
            name: "orders-eu".into(),
        })
        .await;
    assert_error(purge, Code::PermissionDenied, &["admin"]);
    let subscribe = orders
        .subscribe(pb::SubscribeRequest {
            topic: "events".into(),
            queue: "orders-eu".into(),
            ..Default::default()
        })
        .await;
    assert_error(subscribe, Code::PermissionDenied, &["admin"]);

    // Get and list show only what the token may use.
    stats(&orders, "orders-eu").await;
    let get = orders
        .get_queue(pb::GetQueueRequest {
            name: "payments".into(),
        })
        .await;
    assert_error(get, Code::PermissionDenied, &["payments"]);
    let queues = orders
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .unwrap()
        .queues;
    let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["orders-eu", "orders-in"]);
    let topics = orders
        .list_topics(pb::ListTopicsRequest::default())
        .await
        .unwrap()
        .topics;
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["events"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_need_receive_on_the_queue() {
    let (server, _dir) = auth_server().await;
    let admin = client_with_token(&server, "operator-secret").await;
    create_queue(&admin, "orders-eu", Default::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = QueueServiceClient::with_interceptor(channel, |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", "Bearer orders-secret".parse().unwrap());
        Ok(req)
    });
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::StreamMessagesRequest {
        request: Some(Op::Open(pb::StreamOpen {
            queue: "orders-eu".into(),
            credit: 1,
            visibility_timeout_seconds: None,
        })),
    })
    .await
    .unwrap();
    let status = raw
        .stream_messages(ReceiverStream::new(rx))
        .await
        .expect_err("no receive permission on orders-eu");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("receive:orders-eu"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_tells_the_user_about_the_token() {
    let (server, _dir) = auth_server().await;
    let args = broker_cli::ClientArgs {
        server: server.addr().to_string(),
        json: false,
        token: None,
        tls_ca: None,
        client_cert: None,
        client_key: None,
    };
    let send = || broker_cli::Command::Send {
        queue: "orders-eu".into(),
        body: Some("x".into()),
        attrs: Vec::new(),
        delay: None,
    };
    let e = broker_cli::run(&args, send()).await.unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("unauthenticated") && e.contains("--token"),
        "{e}"
    );

    let args = broker_cli::ClientArgs {
        token: Some("operator-secret".into()),
        ..args
    };
    let e = broker_cli::run(&args, send()).await.unwrap_err();
    // Authenticated now: the queue just does not exist.
    assert!(format!("{e:#}").contains("not found"), "{e:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_token_file_is_a_startup_error_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(
        &path,
        "[[tokens]]\nname = \"svc\"\ntoken = \"t\"\npermissions = [\"sned:orders\"]\n",
    )
    .unwrap();
    let e = startup_error(|c| c.auth_tokens = Some(path.clone())).await;
    assert!(e.contains("tokens.toml"), "{e}");
    assert!(e.contains("tokens[0]") && e.contains("\"sned\""), "{e}");

    let e = startup_error(|c| c.auth_tokens = Some(dir.path().join("absent.toml"))).await;
    assert!(e.contains("absent.toml"), "{e}");
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

/// Opens a `StreamMessages` stream on `queue` over a new connection.
async fn open_stream(
    server: &TestServer,
    queue: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::StreamMessagesRequest>,
        tonic::Streaming<pb::StreamMessagesResponse>,
    ),
    tonic::Status,
> {
    let mut raw = QueueServiceClient::connect(format!("http://{}", server.addr()))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::StreamMessagesRequest {
        request: Some(Op::Open(pb::StreamOpen {
            queue: queue.into(),
            credit: 1,
            visibility_timeout_seconds: None,
        })),
    })
    .await
    .unwrap();
    let responses = raw.stream_messages(ReceiverStream::new(rx)).await?;
    Ok((tx, responses.into_inner()))
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_beyond_max_streams_are_resource_exhausted() {
    let server = TestServer::start_with(|c| c.limits.max_streams = 1).await;
    let client = server.client().await;
    create_queue(&client, "q", Default::default()).await;
    let first = open_stream(&server, "q").await.expect("the first stream");
    let status = open_stream(&server, "q")
        .await
        .expect_err("a second stream");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("at most max_streams = 1 streams may be open at once"),
        "{status:?}"
    );

    // Closing the first frees its slot (once the server sees it go).
    drop(first);
    eventually(
        EVENT_TIMEOUT,
        "a stream opens once the first is closed",
        || async {
            match open_stream(&server, "q").await {
                Err(s) if s.code() == Code::ResourceExhausted => Err(s),
                Err(s) => panic!("unexpected {s:?}"),
                Ok(stream) => Ok(stream),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn long_polls_beyond_the_per_connection_limit_are_resource_exhausted() {
    let server = TestServer::start_with(|c| c.limits.max_long_polls_per_connection = 1).await;
    let conn_a = server.client().await;
    create_queue(&conn_a, "empty", Default::default()).await;
    create_queue(&conn_a, "full", Default::default()).await;
    send_batch(&conn_a, "full", numbered(50)).await;

    // The long poll on connection A, holding its one slot once it waits.
    let waiting = {
        let conn_a = conn_a.clone();
        tokio::spawn(async move { conn_a.receive("empty", 1, 20).await })
    };
    server.wait_for_long_polls(1).await;
    // A probe that may wait, on a queue with messages: admitted, it would
    // return at once; refused, as the long poll above waits.
    let probe = |client: Client| async move { client.receive("full", 1, 1).await };
    assert_error(
        probe(conn_a.clone()).await,
        Code::ResourceExhausted,
        &["max_long_polls_per_connection = 1"],
    );
    // A receive that does not wait is not limited: one that says so, and one
    // that gives no wait time on a queue whose wait time is 0.
    conn_a.receive("full", 1, 0).await.unwrap();
    let no_wait_time = pb::ReceiveMessagesRequest {
        queue: "full".into(),
        max_messages: 1,
        ..Default::default()
    };
    let received = conn_a.receive_messages(no_wait_time).await.unwrap();
    assert_eq!(received.messages.len(), 1);
    // Another connection has its own count.
    let conn_b = server.client().await;
    assert_eq!(probe(conn_b).await.unwrap().len(), 1);

    // Once the long poll returns, connection A may long-poll again.
    conn_a.send("empty", "wake").await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the long poll returns")
        .unwrap()
        .unwrap();
    assert_eq!(woken.len(), 1);
    assert_eq!(probe(conn_a).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_max_request_bytes_are_refused_before_decoding() {
    let server = TestServer::start_with(|c| c.limits.max_request_bytes = 1024).await;
    let client = server.client().await;
    create_queue(&client, "q", Default::default()).await;
    client.send("q", vec![b'x'; 512]).await.unwrap();
    // tonic refuses a message whose length prefix exceeds the limit before
    // it buffers the body; the broker reports it as RESOURCE_EXHAUSTED.
    let big = client.send("q", vec![b'x'; 4096]).await;
    assert_error(big, Code::ResourceExhausted, &["max_request_bytes = 1024"]);
    let stats = broker_tests::counts(&client, "q").await;
    assert_eq!(stats, broker_tests::Counts::new(1, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 1).await;
    // A bare TCP connection holds the only slot.
    let first = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let addr = server.addr().to_string();
    let second = tokio::spawn(async move {
        let client = Client::connect(&addr).await?;
        client.list_queues(pb::ListQueuesRequest::default()).await
    });
    let mut second = second;
    let early = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    assert!(
        early.is_err(),
        "the second connection must wait while the first is open: {early:?}"
    );
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second connection is served once the first closed")
        .unwrap()
        .expect("list queues");
}

// ---------------------------------------------------------------------------
// Wiring of the admin and metrics additions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn peek_needs_receive_on_the_queue() {
    let (server, _dir) = auth_server().await;
    let admin = client_with_token(&server, "operator-secret").await;
    for queue in ["orders-eu", "orders-in"] {
        create_queue(&admin, queue, Default::default()).await;
    }
    let orders = client_with_token(&server, "orders-secret").await;
    let peek = |queue: &str| pb::PeekMessagesRequest {
        queue: queue.into(),
        ..Default::default()
    };
    // `send:orders*` does not let a token look at messages.
    assert_error(
        orders.peek_messages(peek("orders-eu")).await,
        Code::PermissionDenied,
        &["orders-service", "receive:orders-eu"],
    );
    orders
        .peek_messages(peek("orders-in"))
        .await
        .expect("receive:orders-in allows peeking");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_endpoint_serves_tls_with_the_grpc_certificate() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;

    let pki = Pki::new();
    let tls = pki.server(false);
    let server = TestServer::start_with(move |c| {
        c.tls = Some(tls.clone());
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(server.metrics_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.expect("TLS handshake");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("broker_"), "{response}");

    // Plaintext gets no metrics.
    let mut plain = tokio::net::TcpStream::connect(server.metrics_addr())
        .await
        .unwrap();
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("broker_"));
}
