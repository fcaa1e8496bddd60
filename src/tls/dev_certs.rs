//! A development CA and certificates (`distraft certs`, `distraft cluster --tls`, the
//! tests): one node certificate carrying every host name and IP of the cluster as
//! subject alternative names (good for both server and client authentication, as
//! [`super::NodeTls`] requires), and one client certificate for grpcurl and the CLI.
//!
//! For development only: the CA's key lies next to the certificates it signed.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::ClientTlsArgs;

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The files written, all in one directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const NODE_CERT: &str = "node.pem";
pub const NODE_KEY: &str = "node-key.pem";
pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client-key.pem";
const ALL_FILES: [&str; 6] = [
    CA_CERT,
    CA_KEY,
    NODE_CERT,
    NODE_KEY,
    CLIENT_CERT,
    CLIENT_KEY,
];

/// The host names and IPs every local cluster is reached by.
pub const LOCAL_HOSTS: [&str; 3] = ["127.0.0.1", "localhost", "::1"];

/// The paths of the certificates in `dir`.
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub ca: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl DevCerts {
    pub fn in_dir(dir: &Path) -> DevCerts {
        DevCerts {
            ca: dir.join(CA_CERT),
            node_cert: dir.join(NODE_CERT),
            node_key: dir.join(NODE_KEY),
            client_cert: dir.join(CLIENT_CERT),
            client_key: dir.join(CLIENT_KEY),
        }
    }

    /// What a client of a cluster with these certificates needs: the CA, and the
    /// client certificate that the gRPC port asks for.
    pub fn client_args(&self) -> ClientTlsArgs {
        ClientTlsArgs {
            cacert: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
        }
    }

    /// Whether every file (the CA's key aside) is there.
    pub fn exist(&self) -> bool {
        [
            &self.ca,
            &self.node_cert,
            &self.node_key,
            &self.client_cert,
            &self.client_key,
        ]
        .iter()
        .all(|path| path.is_file())
    }
}

/// Makes a new CA, a node certificate for `hosts` (DNS names or IP addresses) and a
/// client certificate, and writes them to `dir` (created if missing). Refuses to
/// overwrite existing files unless `overwrite`.
pub fn generate(dir: &Path, hosts: &[String], overwrite: bool) -> anyhow::Result<DevCerts> {
    if hosts.is_empty() {
        bail!("no host names: the node certificate needs at least one");
    }
    if let Some(bad) = hosts.iter().find(|host| !is_host(host)) {
        bail!("{bad:?} is neither an IP address nor a DNS name");
    }
    if !overwrite {
        if let Some(existing) = ALL_FILES.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
            bail!(
                "{} exists already (use --force to replace every certificate in {})",
                existing.display(),
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "distraft development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).context("signing the CA")?;

    let node_key = KeyPair::generate().context("generating the node key")?;
    let mut node_params = CertificateParams::new(hosts.to_vec())
        .context("the host names must be DNS names or IP addresses")?;
    node_params
        .distinguished_name
        .push(DnType::CommonName, "distraft node");
    // Nodes are servers (gRPC, HTTPS) and clients (of their peers).
    node_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    node_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let node = node_params
        .signed_by(&node_key, &ca, &ca_key)
        .context("signing the node certificate")?;

    let client_key = KeyPair::generate().context("generating the client key")?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "distraft client");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let client = client_params
        .signed_by(&client_key, &ca, &ca_key)
        .context("signing the client certificate")?;

    write(dir, CA_CERT, &ca.pem(), false)?;
    write(dir, CA_KEY, &ca_key.serialize_pem(), true)?;
    write(dir, NODE_CERT, &node.pem(), false)?;
    write(dir, NODE_KEY, &node_key.serialize_pem(), true)?;
    write(dir, CLIENT_CERT, &client.pem(), false)?;
    write(dir, CLIENT_KEY, &client_key.serialize_pem(), true)?;
    Ok(DevCerts::in_dir(dir))
}

/// An IP address, or a DNS name (letters, digits and hyphens in dot-separated labels).
fn is_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Writes one file; keys are readable by their owner only (on Unix).
fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> anyhow::Result<()> {
    let path = dir.join(name);
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
