//! TLS for the broker's listeners: the gRPC listener (through tonic's
//! [`ServerTlsConfig`]) and the metrics HTTP listener (through a
//! [`TlsAcceptor`] of its own); and, in cluster mode, mutual TLS between
//! nodes ([`cluster_tls`]: the cluster listener's settings and those of
//! the connections to the other nodes, from one node's files).
//!
//! Each is built from one [`TlsConfig`]: PEM files of the certificate
//! chain, the private key and, optionally, the CA certificates that client
//! certificates must chain to. With a client CA, a client certificate is
//! *required*: a client without one (or with one from another CA) fails the
//! handshake.
//!
//! The files are read and checked here, once, at startup, so that a missing
//! file, a file without a certificate or a key that does not belong to the
//! certificate is an error naming the file and what is wrong with it, not a
//! failed handshake later ([`TlsError`], a startup error). Only the ring
//! crypto provider is compiled in; configs are built with it explicitly, so
//! they never depend on a process-wide default provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsConfig;

/// A TLS file that cannot be used; each names the file, and the flag that
/// sets it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `what`: `certificate`, `private key` or `client CA certificate`.
    #[error("cannot read TLS {what} file {}: {error}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// `flag`: the flag that names the file, e.g. `--tls-key`.
    #[error(
        "TLS private key file {} ({flag}) holds no private key; expected a PEM block such as `-----BEGIN PRIVATE KEY-----` (PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf, flag: &'static str },
    #[error("TLS private key file {} ({flag}) is not valid PEM: {error}", path.display())]
    KeyNotPem {
        path: PathBuf,
        flag: &'static str,
        error: pem::Error,
    },
    #[error("TLS certificate file {} ({flag}) is not valid PEM: {error}", path.display())]
    CertificateNotPem {
        path: PathBuf,
        flag: &'static str,
        error: pem::Error,
    },
    #[error(
        "TLS certificate file {} ({flag}) holds no certificate; expected a PEM block `-----BEGIN CERTIFICATE-----`",
        path.display()
    )]
    NoCertificate { path: PathBuf, flag: &'static str },
    #[error(
        "TLS private key {} does not fit certificate {}: {error}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        key: PathBuf,
        cert: PathBuf,
        error: tokio_rustls::rustls::Error,
    },
    #[error(
        "TLS CA file {} ({flag}) holds a certificate that cannot be a trust anchor: {error}",
        path.display()
    )]
    NotATrustAnchor {
        path: PathBuf,
        flag: &'static str,
        error: tokio_rustls::rustls::Error,
    },
    #[error("TLS CA file {} ({flag}): {error}", path.display())]
    ClientCa {
        path: PathBuf,
        flag: &'static str,
        error: VerifierBuilderError,
    },
    /// The TLS library refused its own settings (not a file's fault).
    #[error("cannot set up TLS: {error}")]
    Setup { error: tokio_rustls::rustls::Error },
}

type Result<T, E = TlsError> = std::result::Result<T, E>;

/// How long a client may take to complete the TLS handshake. A connection
/// holds one of the `max_connections` slots while it handshakes, so a client
/// that connects and sends nothing must not hold it for ever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags that name a listener's TLS files, for errors.
#[derive(Clone, Copy)]
struct Flags {
    cert: &'static str,
    key: &'static str,
    ca: &'static str,
}

/// The gRPC and metrics listeners'.
const CLIENT_FLAGS: Flags = Flags {
    cert: "--tls-cert",
    key: "--tls-key",
    ca: "--tls-client-ca",
};

/// The cluster listener's, and the connections between nodes.
const CLUSTER_FLAGS: Flags = Flags {
    cert: "--cluster-tls-cert",
    key: "--cluster-tls-key",
    ca: "--cluster-tls-ca",
};

/// The PEM files of a [`TlsConfig`], read and checked.
struct Loaded {
    /// The certificate chain file, as read (tonic parses PEM itself).
    cert_pem: Vec<u8>,
    /// The private key file, as read.
    key_pem: Vec<u8>,
    /// The client CA file, as read, if any.
    client_ca_pem: Option<Vec<u8>>,
    /// A rustls config built from them: building it is what checks that
    /// the key belongs to the certificate.
    server: ServerConfig,
}

/// tonic's TLS settings for the gRPC server; fails with an error naming the
/// file when a file is missing or does not hold what it should.
pub fn server_tls_config(config: &TlsConfig) -> Result<ServerTlsConfig> {
    Ok(server_tls(load(config, CLIENT_FLAGS)?))
}

/// Mutual TLS between the nodes of a cluster, from one node's files
/// (`--cluster-tls-cert`, `--cluster-tls-key`, `--cluster-tls-ca`, in
/// `config` as `cert`, `key` and `client_ca`): its cluster listener's
/// settings, which require a client certificate that chains to the CA, and
/// those of its connections to the other nodes, which present its
/// certificate and accept a node's only if it chains to the CA and names
/// the host of the node's cluster address. Checked as
/// [`server_tls_config`] checks.
pub fn cluster_tls(config: &TlsConfig) -> Result<(ServerTlsConfig, ClientTlsConfig)> {
    let loaded = load(config, CLUSTER_FLAGS)?;
    let mut client = ClientTlsConfig::new()
        .identity(Identity::from_pem(&loaded.cert_pem, &loaded.key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &loaded.client_ca_pem {
        client = client.ca_certificate(Certificate::from_pem(ca));
    }
    Ok((server_tls(loaded), client))
}

fn server_tls(loaded: Loaded) -> ServerTlsConfig {
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(loaded.cert_pem, loaded.key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = loaded.client_ca_pem {
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    tls
}

/// A TLS acceptor for an HTTP/1.1 listener (the metrics endpoint): wrap each
/// accepted TCP stream with `acceptor.accept(stream)`. It offers ALPN
/// `http/1.1` only. The same file checks as [`server_tls_config`] apply.
/// The caller bounds each handshake (e.g. with [`HANDSHAKE_TIMEOUT`]), so a
/// client that connects and sends nothing cannot hold a task for ever.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor> {
    let mut server = load(config, CLIENT_FLAGS)?.server;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn load(config: &TlsConfig, flags: Flags) -> Result<Loaded> {
    let cert_pem = read(&config.cert, "certificate")?;
    let key_pem = read(&config.key, "private key")?;
    let certs = certificates(&config.cert, &cert_pem, flags.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: config.key.clone(),
            flag: flags.key,
        },
        error => TlsError::KeyNotPem {
            path: config.key.clone(),
            flag: flags.key,
            error,
        },
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Setup { error })?;
    let client_ca_pem = match &config.client_ca {
        None => None,
        Some(path) => Some(read(path, "client CA certificate")?),
    };
    let builder = match (&config.client_ca, &client_ca_pem) {
        (Some(path), Some(pem)) => {
            builder.with_client_cert_verifier(client_verifier(path, pem, flags.ca, provider)?)
        }
        _ => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|error| TlsError::KeyMismatch {
            key: config.key.clone(),
            cert: config.cert.clone(),
            error,
        })?;
    Ok(Loaded {
        cert_pem,
        key_pem,
        client_ca_pem,
        server,
    })
}

/// Verifies client certificates against the CA certificates of `pem`;
/// clients without a certificate are refused.
fn client_verifier(
    path: &Path,
    pem: &[u8],
    flag: &'static str,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn tokio_rustls::rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, pem, flag)? {
        roots.add(cert).map_err(|error| TlsError::NotATrustAnchor {
            path: path.to_path_buf(),
            flag,
            error,
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|error| TlsError::ClientCa {
            path: path.to_path_buf(),
            flag,
            error,
        })
}

/// The certificates of a PEM file; at least one.
fn certificates(
    path: &Path,
    pem: &[u8],
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::CertificateNotPem {
            path: path.to_path_buf(),
            flag,
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
            flag,
        });
    }
    Ok(certs)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use tempfile::TempDir;

    /// A CA, and a server certificate for `localhost` signed by it, as PEM
    /// files in a temporary directory.
    struct Files {
        dir: TempDir,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
            let other = rcgen::KeyPair::generate().unwrap();
            std::fs::write(dir.path().join("other-key.pem"), other.serialize_pem()).unwrap();
            std::fs::write(dir.path().join("garbage.pem"), "not a pem file\n").unwrap();
            Files { dir }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        fn config(&self, cert: &str, key: &str, ca: Option<&str>) -> TlsConfig {
            TlsConfig {
                cert: self.path(cert),
                key: self.path(key),
                client_ca: ca.map(|c| self.path(c)),
            }
        }
    }

    fn message(result: Result<impl Sized>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_files_build_both_configs() {
        let files = Files::new();
        let config = files.config("cert.pem", "key.pem", None);
        server_tls_config(&config).unwrap();
        acceptor(&config).unwrap();
        let with_ca = files.config("cert.pem", "key.pem", Some("ca.pem"));
        server_tls_config(&with_ca).unwrap();
        acceptor(&with_ca).unwrap();
    }

    #[test]
    fn missing_file_is_named() {
        let files = Files::new();
        let e = message(acceptor(&files.config("nope.pem", "key.pem", None)));
        assert!(e.contains("cannot read TLS certificate file"), "{e}");
        assert!(e.contains("nope.pem"), "{e}");
        let e = message(server_tls_config(&files.config(
            "cert.pem",
            "key.pem",
            Some("nope.pem"),
        )));
        assert!(e.contains("client CA certificate file"), "{e}");
    }

    #[test]
    fn file_without_certificate_or_key_is_named() {
        let files = Files::new();
        let e = message(acceptor(&files.config("key.pem", "key.pem", None)));
        assert!(e.contains("holds no certificate"), "{e}");
        assert!(e.contains("--tls-cert"), "{e}");
        let e = message(acceptor(&files.config("cert.pem", "cert.pem", None)));
        assert!(e.contains("holds no private key"), "{e}");
        assert!(e.contains("--tls-key"), "{e}");
        let e = message(acceptor(&files.config("cert.pem", "garbage.pem", None)));
        assert!(e.contains("garbage.pem"), "{e}");
        let e = message(acceptor(&files.config(
            "cert.pem",
            "key.pem",
            Some("key.pem"),
        )));
        assert!(e.contains("--tls-client-ca"), "{e}");
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let files = Files::new();
        let e = message(acceptor(&files.config("cert.pem", "other-key.pem", None)));
        assert!(e.contains("does not fit certificate"), "{e}");
    }

    #[tokio::test]
    async fn acceptor_completes_a_handshake() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls::ClientConfig;

        let files = Files::new();
        let acceptor = acceptor(&files.config("cert.pem", "key.pem", None)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(&buf).await.unwrap();
            tls.shutdown().await.unwrap();
        });

        let mut roots = RootCertStore::empty();
        let ca = std::fs::read(files.path("ca.pem")).unwrap();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.await.unwrap();
    }
}
