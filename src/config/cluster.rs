//! The member list of `DISTRAFT_CLUSTER` and the cluster id derived from it.

use super::parse::ConfigError;
use crate::raft::NodeId;
pub use crate::registry::Member;

/// Parses `name=peer_host:peer_port:client_host:client_port,...` (DISTRAFT_CLUSTER)
/// into members sorted by name, with ids assigned by position.
pub fn parse_cluster(spec: &str) -> Result<Vec<Member>, ConfigError> {
    const VAR: &str = "DISTRAFT_CLUSTER";
    const SHAPE: &str = "is not name=peer_host:peer_port:client_host:client_port";
    let mut members: Vec<Member> = Vec::new();
    for item in spec
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let (name, address) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::new(VAR, item, SHAPE))?;
        let parts: Vec<&str> = address.split(':').map(str::trim).collect();
        let name = name.trim().to_lowercase();
        if name.is_empty() || parts.len() != 4 || parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::new(VAR, item, SHAPE));
        }
        crate::registry::check_name(&name)
            .map_err(|problem| ConfigError::new(VAR, item, problem))?;
        let port = |s: &str| -> Result<u16, ConfigError> {
            match s.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(ConfigError::new(
                    VAR,
                    item,
                    format!("has an invalid port {s:?}"),
                )),
            }
        };
        if members.iter().any(|m| m.name == name) {
            return Err(ConfigError::new(VAR, &name, "is listed twice"));
        }
        members.push(Member {
            id: 0,
            name,
            peer_host: parts[0].to_lowercase(),
            peer_port: port(parts[1])?,
            client_host: parts[2].to_lowercase(),
            client_port: port(parts[3])?,
        });
    }
    if members.is_empty() {
        return Err(ConfigError::new(VAR, spec, "lists no member"));
    }
    // Answers are credited to the member that was called: two members behind one
    // address would count one node's answers twice.
    for (position, member) in members.iter().enumerate() {
        for earlier in &members[..position] {
            let shared = if (&member.peer_host, member.peer_port)
                == (&earlier.peer_host, earlier.peer_port)
            {
                Some(("peer", &member.peer_host, member.peer_port))
            } else if (&member.client_host, member.client_port)
                == (&earlier.client_host, earlier.client_port)
            {
                Some(("client", &member.client_host, member.client_port))
            } else {
                None
            };
            if let Some((kind, host, port)) = shared {
                return Err(ConfigError::new(
                    VAR,
                    &format!("{host}:{port}"),
                    format!(
                        "is the {kind} address of both {} and {}: every member needs its own",
                        earlier.name, member.name
                    ),
                ));
            }
        }
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    for (position, member) in members.iter_mut().enumerate() {
        member.id = position as NodeId + 1;
    }
    Ok(members)
}

/// The cluster id every member derives alike, with no coordination: FNV-1a (64-bit)
/// over the members sorted by name (name and client address) and the token. Peer
/// addresses are left out: they are each node's own view of how to reach the others
/// (through a proxy, a NAT, another network), and may differ between members of one
/// cluster; client addresses and names are the same everywhere.
/// A fixed, documented function rather than std's hasher, whose output may change
/// between Rust releases. Not a secret and not authentication (that is TLS's job): it
/// catches a node talking to, or listed by, the wrong cluster. Never 0, which on the
/// wire means "none".
pub fn cluster_id(members: &[Member], token: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = String::from("distraft-cluster-v1\n");
    for m in sorted {
        text.push_str(&format!("{}={}:{}\n", m.name, m.client_host, m.client_port));
    }
    text.push_str("token=");
    text.push_str(token);
    let hash = text.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    hash.max(1)
}

/// The id of the member called `name` (`raw` as the user gave it, for the message).
pub(super) fn own_id(members: &[Member], name: &str, raw: &str) -> Result<NodeId, ConfigError> {
    match members.iter().find(|m| m.name == name) {
        Some(m) => Ok(m.id),
        None => {
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            Err(ConfigError::new(
                "DISTRAFT_NAME",
                raw,
                format!("is not in DISTRAFT_CLUSTER (members: {})", names.join(", ")),
            ))
        }
    }
}
