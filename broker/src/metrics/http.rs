//! The metrics endpoint: a small HTTP/1.1 server (hyper) on its own
//! listener. `GET /metrics` returns every metric in the OpenMetrics text
//! format, which Prometheus scrapes; another method on `/metrics` is 405,
//! any other path 404.
//!
//! Each scrape encodes afresh (see [`Metrics::encode`]), so values are
//! current when scraped. The server stops accepting when `shutdown` is
//! cancelled and drops the connections it still has (a scrape takes
//! milliseconds; a scraper reconnects to the next instance).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client may take to send its request headers (or its TLS
/// handshake), so that idle or slow connections cannot pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `metrics` on `listener` until `shutdown` is cancelled; with
/// `tls`, every connection must complete a TLS handshake first.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Per-connection failures (e.g. out of file descriptors):
                    // keep serving, after a pause so as not to spin.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connections, so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let (metrics, tls) = (metrics.clone(), tls.clone());
        connections.spawn(async move {
            let result = match tls {
                None => serve_connection(stream, metrics).await,
                Some(tls) => {
                    match tokio::time::timeout(REQUEST_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, metrics).await,
                        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                        Err(_) => Err("TLS handshake timed out".to_string()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
    connections.shutdown().await;
}

async fn serve_connection<IO>(io: IO, metrics: Metrics) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let response = respond(&metrics, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| e.to_string())
}

/// The response to one request.
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET /metrics\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    match metrics.encode() {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "encoding the metrics failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed; the broker's log has the details\n",
            )
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    use super::*;
    use crate::engine::Engine;
    use crate::storage::SyncMode;

    /// The TLS path of `serve` (the gRPC TLS settings hand it an acceptor):
    /// a client that trusts the server's certificate scrapes over TLS.
    #[tokio::test]
    async fn serves_metrics_over_tls() {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = key.cert.der().clone();
        let private =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], private)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path(), SyncMode::None).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Metrics::new(Arc::downgrade(&engine)),
            Some(TlsAcceptor::from(Arc::new(server_tls))),
            stop.clone(),
        ));

        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(Arc::new(client_tls))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        // The response is complete whether or not the close is clean.
        let _ = tls.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("broker_storage_wal_bytes"), "{text}");

        // A plaintext client gets no metrics from a TLS endpoint.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let _ = plain.read_to_end(&mut response).await;
        assert!(!String::from_utf8_lossy(&response).contains("broker_"));

        stop.cancel();
        server.await.unwrap();
    }
}
