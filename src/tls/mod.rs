//! Optional mutual TLS (DISTRAFT_TLS_CERT, DISTRAFT_TLS_KEY, DISTRAFT_TLS_CA): loading and
//! checking the PEM files once at start-up, and turning them into the configurations of
//! tonic (gRPC server and peer/forwarding clients, rustls underneath) and of the HTTPS
//! gateway (tokio-rustls).
//!
//! One certificate per node serves every role: the gRPC server's, the client's when the
//! node dials its peers (so it must allow both server and client authentication), and
//! the HTTPS gateway's. The gRPC port requires a client certificate signed by the CA;
//! the gateway does not ask for one (browsers and curl connect with `--cacert` alone).
//!
//! [`dev_certs`] makes a development CA and certificates (`distraft certs`).

pub mod dev_certs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS handshake (gRPC or gateway) must finish within this time, so that a client
/// that opens a connection and sends nothing holds no task for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider of every TLS configuration built here: ring, the one tonic's
/// `tls-ring` feature uses (it needs only a C compiler to build).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which of the three TLS settings a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
    Ca,
}

impl TlsFile {
    /// The variable that names this file.
    pub fn var(self) -> &'static str {
        match self {
            TlsFile::Cert => "DISTRAFT_TLS_CERT",
            TlsFile::Key => "DISTRAFT_TLS_KEY",
            TlsFile::Ca => "DISTRAFT_TLS_CA",
        }
    }
}

/// A TLS file that cannot be used: which one, its path, and why (one line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {path:?} {problem}", .file.var())]
pub struct TlsLoadError {
    pub file: TlsFile,
    pub path: PathBuf,
    pub problem: String,
}

fn load_error(file: TlsFile, path: &Path, problem: impl Into<String>) -> TlsLoadError {
    TlsLoadError {
        file,
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Reads a PEM file, bounded: a certificate chain or key is a few KiB.
fn read_pem(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsLoadError> {
    const MAX_PEM_BYTES: u64 = 1024 * 1024;
    let metadata =
        std::fs::metadata(path).map_err(|err| load_error(file, path, format!("{err}")))?;
    if metadata.len() > MAX_PEM_BYTES {
        return Err(load_error(
            file,
            path,
            format!("is larger than {MAX_PEM_BYTES} bytes: not a PEM file"),
        ));
    }
    std::fs::read(path).map_err(|err| load_error(file, path, format!("cannot be read: {err}")))
}

/// The certificates of a PEM file; at least one, none malformed.
fn parse_certs(
    file: TlsFile,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsLoadError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| load_error(file, path, format!("is not valid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(load_error(
            file,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsLoadError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| {
        load_error(
            TlsFile::Key,
            path,
            format!("holds no usable PEM private key: {err}"),
        )
    })
}

fn root_store(
    path: &Path,
    certs: &[CertificateDer<'static>],
) -> Result<RootCertStore, TlsLoadError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert.clone()).map_err(|err| {
            load_error(
                TlsFile::Ca,
                path,
                format!("holds an unusable CA certificate: {err}"),
            )
        })?;
    }
    Ok(roots)
}

/// A node's TLS material, loaded and checked: the certificate chain parses, the key
/// matches it, and the CA signed it for client authentication (so that peers will
/// accept it) — each mistake is one line naming the variable, at start-up.
pub struct NodeTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    /// The HTTPS gateway's configuration (HTTP/1.1, no client certificate asked).
    gateway: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("NodeTls { .. }")
    }
}

impl NodeTls {
    /// Loads and checks the three PEM files.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<NodeTls, TlsLoadError> {
        let cert_pem = read_pem(TlsFile::Cert, cert)?;
        let key_pem = read_pem(TlsFile::Key, key)?;
        let ca_pem = read_pem(TlsFile::Ca, ca)?;
        let chain = parse_certs(TlsFile::Cert, cert, &cert_pem)?;
        let private_key = parse_key(key, &key_pem)?;
        let ca_certs = parse_certs(TlsFile::Ca, ca, &ca_pem)?;
        let roots = Arc::new(root_store(ca, &ca_certs)?);

        // The node's certificate must be one its peers accept as a client: signed by
        // the CA, valid now, with the client-authentication usage.
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|err| load_error(TlsFile::Ca, ca, format!("is unusable: {err}")))?;
        if let Some((end_entity, intermediates)) = chain.split_first() {
            verifier
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
                .map_err(|err| {
                    load_error(
                        TlsFile::Cert,
                        cert,
                        format!(
                            "is not accepted by the CA in {} for client authentication: {err}",
                            ca.display()
                        ),
                    )
                })?;
        }

        let mut gateway = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| load_error(TlsFile::Cert, cert, format!("{err}")))?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|err| {
                load_error(
                    TlsFile::Key,
                    key,
                    format!("does not go with the certificate {}: {err}", cert.display()),
                )
            })?;
        gateway.alpn_protocols = vec![b"http/1.1".to_vec()];

        Ok(NodeTls {
            cert_pem,
            key_pem,
            ca_pem,
            gateway: Arc::new(gateway),
        })
    }

    /// The gRPC server's TLS: this node's certificate, and a client certificate signed
    /// by the CA required of every client (peers, grpcurl, other nodes forwarding).
    pub fn grpc_server(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        // A planted bug for the tests to catch: clients without a certificate let in.
        config.client_auth_optional(crate::plant::active(
            crate::plant::Plant::TlsOptionalClientCert,
        ))
    }

    /// The TLS of this node's connections to a peer: the peer's certificate must be
    /// signed by the CA for the host named in DISTRAFT_CLUSTER (tonic takes the server
    /// name from the URI), and this node presents its own certificate.
    pub fn grpc_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The HTTPS gateway's acceptor.
    pub fn gateway_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.gateway.clone())
    }
}

/// `--cacert/--cert/--key` of the client subcommands and `distraft bench`: the CA that
/// signed the nodes' certificate (for https:// URLs), and optionally a client
/// certificate (required by the gRPC port of a node with TLS).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM file of the CA that signed the nodes' certificates (for https:// URLs).
    #[arg(long, env = "DISTRAFT_CACERT")]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate to present (with --key); the gRPC port of a node with
    /// TLS requires one, the HTTPS gateway does not.
    #[arg(
        long = "cert",
        id = "tls_client_cert",
        value_name = "CERT",
        requires_all = ["tls_client_key", "cacert"]
    )]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    // Its own id: `get`, `put` and `delete` have a positional `key` already.
    #[arg(
        long = "key",
        id = "tls_client_key",
        value_name = "KEY",
        requires = "tls_client_cert"
    )]
    pub key: Option<PathBuf>,
}

/// Client TLS, loaded: nothing (plain http:// and http2 only), or a CA and maybe an
/// identity. Cheap to clone.
#[derive(Clone, Default)]
pub struct ClientTls {
    loaded: Option<Arc<LoadedClientTls>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        match &self.loaded {
            Some(loaded) => write!(
                f,
                "ClientTls {{ ca, client certificate: {} }}",
                loaded.identity.is_some()
            ),
            None => f.write_str("ClientTls(none)"),
        }
    }
}

struct LoadedClientTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// For reqwest: HTTP/1.1 (the gateway speaks nothing else).
    http: rustls::ClientConfig,
}

/// A client-side TLS problem: which flag, which file, why.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} {path:?}: {problem}")]
pub struct ClientTlsError {
    flag: &'static str,
    path: PathBuf,
    problem: String,
}

impl ClientTlsArgs {
    /// Reads and checks the files named (none: plain connections).
    pub fn load(&self) -> Result<ClientTls, ClientTlsError> {
        let Some(cacert) = &self.cacert else {
            return Ok(ClientTls::default());
        };
        let flag_error = |flag, path: &Path, err: TlsLoadError| ClientTlsError {
            flag,
            path: path.to_path_buf(),
            problem: err.problem,
        };
        let ca_pem =
            read_pem(TlsFile::Ca, cacert).map_err(|err| flag_error("cacert", cacert, err))?;
        let ca_certs = parse_certs(TlsFile::Ca, cacert, &ca_pem)
            .map_err(|err| flag_error("cacert", cacert, err))?;
        let roots =
            root_store(cacert, &ca_certs).map_err(|err| flag_error("cacert", cacert, err))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| ClientTlsError {
                flag: "cacert",
                path: cacert.clone(),
                problem: err.to_string(),
            })?
            .with_root_certificates(roots);
        let (http, identity) = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let cert_pem =
                    read_pem(TlsFile::Cert, cert).map_err(|err| flag_error("cert", cert, err))?;
                let key_pem =
                    read_pem(TlsFile::Key, key).map_err(|err| flag_error("key", key, err))?;
                let chain = parse_certs(TlsFile::Cert, cert, &cert_pem)
                    .map_err(|err| flag_error("cert", cert, err))?;
                let private_key =
                    parse_key(key, &key_pem).map_err(|err| flag_error("key", key, err))?;
                let http = builder
                    .with_client_auth_cert(chain, private_key)
                    .map_err(|err| ClientTlsError {
                        flag: "key",
                        path: key.clone(),
                        problem: format!("does not go with --cert: {err}"),
                    })?;
                (http, Some((cert_pem, key_pem)))
            }
            _ => (builder.with_no_client_auth(), None),
        };
        Ok(ClientTls {
            loaded: Some(Arc::new(LoadedClientTls {
                ca_pem,
                identity,
                http,
            })),
        })
    }
}

impl ClientTls {
    /// Applies the TLS settings to a reqwest client (https:// URLs then trust the CA).
    pub fn reqwest(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        match &self.loaded {
            Some(loaded) => builder.use_preconfigured_tls(loaded.http.clone()),
            None => builder,
        }
    }

    /// The TLS settings of a tonic channel (used for https:// URLs), if any.
    pub fn tonic(&self) -> Option<ClientTlsConfig> {
        let loaded = self.loaded.as_ref()?;
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&loaded.ca_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        Some(match &loaded.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        })
    }
}

#[cfg(test)]
mod tests;
