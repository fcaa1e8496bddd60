//! `distraft certs`: a development CA, one node certificate for every host of the
//! cluster, and a client certificate (see [`crate::tls::dev_certs`]).

use std::path::PathBuf;

use clap::Args;

use crate::tls::dev_certs::{self, LOCAL_HOSTS};

/// Options of `distraft certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Where to write ca.pem, ca-key.pem, node.pem, node-key.pem, client.pem and
    /// client-key.pem.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Every host name and IP address the nodes are reached by (their hosts in
    /// DISTRAFT_CLUSTER and the names clients use), comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = LOCAL_HOSTS.map(String::from))]
    pub hosts: Vec<String>,
    /// Replace certificates already in --dir.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let hosts: Vec<String> = args
        .hosts
        .iter()
        .map(|host| host.trim().to_string())
        .filter(|host| !host.is_empty())
        .collect();
    let certs = dev_certs::generate(&args.dir, &hosts, args.force)?;
    println!(
        "distraft: a development CA and certificates for {} in {}",
        hosts.join(", "),
        args.dir.display()
    );
    println!("Nodes:");
    println!("  DISTRAFT_TLS_CERT={}", certs.node_cert.display());
    println!("  DISTRAFT_TLS_KEY={}", certs.node_key.display());
    println!("  DISTRAFT_TLS_CA={}", certs.ca.display());
    println!("Clients:");
    println!("  curl --cacert {} https://...", certs.ca.display());
    println!(
        "  grpcurl -cacert {} -cert {} -key {} HOST:PORT list",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    println!("Keep ca-key.pem private: whoever has it can make certificates the nodes accept.");
    Ok(())
}
