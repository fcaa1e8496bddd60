//! The cluster identity file: the cluster id and the member list a data directory was
//! bootstrapped with (`<data dir>/cluster.id`).
//!
//! Written once, at the first start (which is also how a data directory from before
//! this file existed adopts an id); every later start must configure the same member
//! list and token, or the node refuses to start, saying what differs. A node started
//! with another member list would count votes and acknowledgements from the wrong
//! nodes, and talk to a cluster that is not its own.
//!
//! Format: one line of JSON, then `crc32c <8 hex digits>` over that line and its
//! newline. Written through a temp file that is fsynced, renamed and the directory
//! fsynced, so the file is whole or absent. `DISTRAFT_RESET_LOGS` leaves it alone.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::io_error;
use super::files::{create_dir_durably, replace_file_durably};
use super::StorageError;
use crate::config::{Config, Member};
use crate::raft::NodeId;
use crate::registry::Record;

pub const IDENTITY_FILE: &str = "cluster.id";
/// Format 1: the bootstrap list. Format 2 adds `joined`, for a node that joined a
/// running cluster; a bootstrapped node still writes format 1, so that an older
/// binary can start on its data directory.
const FORMAT_VERSION: u32 = 1;
const FORMAT_VERSION_JOINED: u32 = 2;
/// Format 3 adds `origin`: a cluster made from another's data (a restore, or a
/// forced new cluster), whose id is not the one its member list derives.
const FORMAT_VERSION_ORIGIN: u32 = 3;
/// Far above any real member list; a larger file is damage, not an identity.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The configuration names another cluster than the data directory holds.
    #[error(
        "DISTRAFT_CLUSTER does not match the member list {} was bootstrapped with: \
         {difference}; start with the original DISTRAFT_CLUSTER and \
         DISTRAFT_CLUSTER_TOKEN, or with a fresh data directory",
        path.display()
    )]
    Mismatch { difference: String, path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredMember {
    name: String,
    peer: String,
    client: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredIdentity {
    version: u32,
    /// 16 hex digits.
    cluster_id: String,
    /// DISTRAFT_CLUSTER as configured.
    members: Vec<StoredMember>,
    /// Format 2: what the cluster told this node when it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    joined: Option<StoredJoin>,
    /// Format 3: where this cluster's data came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<Origin>,
}

/// How a cluster was made from another's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OriginKind {
    /// `distraft restore`: a new cluster from a backup.
    Restore,
    /// `distraft force-new-cluster`: a surviving member as a cluster of one.
    ForceNewCluster,
}

/// Where a cluster's data came from: the cluster id it had, at which index, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub kind: OriginKind,
    /// The cluster the data came from (16 hex digits in the file).
    #[serde(with = "hex_id")]
    pub from_cluster: u64,
    pub index: u64,
    /// The cluster id the node's configuration had before (derived from its list and
    /// token, or adopted at a join): a later start must configure the same.
    #[serde(with = "hex_id")]
    pub base: u64,
}

mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(&format!("{id:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<u64, D::Error> {
        let text = String::deserialize(input)?;
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// The id of a cluster made from another's data: FNV-1a over the id the
/// configuration had and the origin, so that every member made from the same backup
/// with the same DISTRAFT_CLUSTER and token derives the same id, and it is never the
/// original's (even with the very same member list and token). Never 0.
pub fn derived_cluster_id(origin: &Origin) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let kind = match origin.kind {
        OriginKind::Restore => "restore",
        OriginKind::ForceNewCluster => "force-new-cluster",
    };
    let text = format!(
        "distraft-origin-v1\n{:016x}\n{kind}\n{:016x}\n{}\n",
        origin.base, origin.from_cluster, origin.index
    );
    let hash = text.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    hash.max(1)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredJoin {
    /// This node's member id.
    id: NodeId,
    /// The bootstrap voters (where the cluster's log starts) and every member known
    /// at the join, as `Record::encode` writes them, by id.
    bootstrap: Vec<(NodeId, String)>,
    known: Vec<(NodeId, String)>,
}

/// What a node that joined a running cluster was told (see [`Config::adopt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub id: NodeId,
    pub cluster_id: u64,
    pub bootstrap: Vec<Member>,
    pub known: Vec<Record>,
}

/// What the data directory says about who this node is.
#[derive(Debug)]
pub enum Identity {
    /// One of the bootstrap members (as configured).
    Bootstrapped,
    /// A node that joined a running cluster.
    Joined(Joined),
    /// No identity yet, and the node is to join (DISTRAFT_JOIN): nothing was written.
    Unset,
    /// A member of a cluster made from another's data (`origin`): its cluster id is
    /// the derived one; `joined` as for [`Identity::Joined`] if it had joined.
    Derived {
        cluster_id: u64,
        joined: Option<Joined>,
    },
    /// One of the bootstrap members, configured with another list than it was
    /// bootstrapped with: acceptable only if that list is the current membership,
    /// which the caller checks once storage is open. `bootstrap` is the stored list
    /// (with its ids), `mismatch` the refusal if it is not.
    Reconfigured {
        bootstrap: Vec<Member>,
        cluster_id: u64,
        mismatch: IdentityError,
    },
}

impl StoredIdentity {
    fn of(config: &Config) -> StoredIdentity {
        StoredIdentity {
            version: FORMAT_VERSION,
            cluster_id: format!("{:016x}", config.cluster_id),
            joined: None,
            origin: None,
            members: config
                .members
                .iter()
                .map(|m: &Member| StoredMember {
                    name: m.name.clone(),
                    peer: format!("{}:{}", m.peer_host, m.peer_port),
                    client: format!("{}:{}", m.client_host, m.client_port),
                })
                .collect(),
        }
    }
}

/// Writes the identity file if `data_dir` has none (unless the node is to join:
/// `joining`), or checks that the configuration matches the one it holds.
pub fn establish(
    config: &Config,
    data_dir: &Path,
    joining: bool,
) -> Result<Identity, IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    let wanted = StoredIdentity::of(config);
    match read(&path)? {
        None if joining => Ok(Identity::Unset),
        None => {
            write(data_dir, &wanted)?;
            Ok(Identity::Bootstrapped)
        }
        Some(stored) if stored.origin.is_some() => derived_of(&stored, &wanted, path),
        Some(stored) if stored.joined.is_some() => {
            // The cluster id was adopted, not derived: only the list is compared.
            if stored.members != wanted.members {
                return Err(IdentityError::Mismatch {
                    difference: difference(&stored, &wanted),
                    path,
                });
            }
            joined_of(&stored)
                .map(Identity::Joined)
                .map_err(|reason| IdentityError::Storage(corrupt(&path, reason)))
        }
        Some(stored) if stored == wanted => Ok(Identity::Bootstrapped),
        Some(stored) => {
            let mismatch = IdentityError::Mismatch {
                difference: difference(&stored, &wanted),
                path: path.clone(),
            };
            let own = stored.members.iter().any(|m| m.name == config.name);
            // The same members with another token, or a list without this node: no
            // membership can make that right.
            if stored.members == wanted.members || !own {
                return Err(mismatch);
            }
            let bootstrap = bootstrap_of(&stored).map_err(|reason| corrupt(&path, reason))?;
            let cluster_id = u64::from_str_radix(&stored.cluster_id, 16)
                .map_err(|_| corrupt(&path, "a malformed cluster id"))?;
            Ok(Identity::Reconfigured {
                bootstrap,
                cluster_id,
                mismatch,
            })
        }
    }
}

/// A derived identity, checked against the configuration: the same list, and (for a
/// bootstrapped member) the same token.
fn derived_of(
    stored: &StoredIdentity,
    wanted: &StoredIdentity,
    path: PathBuf,
) -> Result<Identity, IdentityError> {
    let corrupt_here = |reason: String| IdentityError::Storage(corrupt(&path, reason));
    let origin = stored
        .origin
        .ok_or_else(|| corrupt_here("no origin".into()))?;
    let joined = match stored.joined {
        Some(_) => Some(joined_of(stored).map_err(corrupt_here)?),
        None => None,
    };
    let base_matches = joined.is_some() || format!("{:016x}", origin.base) == wanted.cluster_id;
    if stored.members != wanted.members || !base_matches {
        let mut was = stored.clone();
        was.cluster_id = format!("{:016x}", origin.base);
        return Err(IdentityError::Mismatch {
            difference: difference(&was, wanted),
            path,
        });
    }
    let cluster_id = u64::from_str_radix(&stored.cluster_id, 16)
        .map_err(|_| corrupt_here("a malformed cluster id".into()))?;
    if cluster_id != derived_cluster_id(&origin) {
        return Err(corrupt_here(
            "the cluster id does not match its origin".into(),
        ));
    }
    Ok(Identity::Derived { cluster_id, joined })
}

/// Durably records that this data directory now holds a cluster made from other
/// data (`origin.base`: the id the configuration had): its identity keeps the member
/// list and any join record, and takes the derived cluster id, which it returns.
pub fn record_origin(
    config: &Config,
    data_dir: &Path,
    origin: Origin,
) -> Result<u64, IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    let mut identity = match read(&path)? {
        Some(stored) => stored,
        None => StoredIdentity::of(config),
    };
    let cluster_id = derived_cluster_id(&origin);
    identity.version = FORMAT_VERSION_ORIGIN;
    identity.cluster_id = format!("{cluster_id:016x}");
    identity.origin = Some(origin);
    write(data_dir, &identity)?;
    Ok(cluster_id)
}

/// The stored bootstrap list as members, with the ids their positions give.
fn bootstrap_of(stored: &StoredIdentity) -> Result<Vec<Member>, String> {
    let spec: Vec<String> = stored
        .members
        .iter()
        .map(|m| format!("{}={}:{}", m.name, m.peer, m.client))
        .collect();
    crate::config::parse_cluster(&spec.join(",")).map_err(|err| err.to_string())
}

/// Durably records that this node joined (before it takes part in anything), so that
/// a restart, even mid-catch-up, continues as the same member.
pub fn record_join(config: &Config, data_dir: &Path, joined: &Joined) -> Result<(), IdentityError> {
    let records = |members: &mut dyn Iterator<Item = Record>| -> Vec<(NodeId, String)> {
        members
            .map(|r| {
                (
                    r.member.id,
                    String::from_utf8_lossy(&r.encode()).into_owned(),
                )
            })
            .collect()
    };
    let bootstrap = joined.bootstrap.iter().map(|m| Record {
        member: m.clone(),
        auto_promote: false,
    });
    let identity = StoredIdentity {
        version: FORMAT_VERSION_JOINED,
        cluster_id: format!("{:016x}", joined.cluster_id),
        joined: Some(StoredJoin {
            id: joined.id,
            bootstrap: records(&mut bootstrap.into_iter()),
            known: records(&mut joined.known.iter().cloned()),
        }),
        ..StoredIdentity::of(config)
    };
    write(data_dir, &identity)?;
    Ok(())
}

fn joined_of(stored: &StoredIdentity) -> Result<Joined, String> {
    let join = stored.joined.as_ref().ok_or("no join record")?;
    let decode = |list: &[(NodeId, String)]| -> Result<Vec<Record>, String> {
        list.iter()
            .map(|(id, text)| Record::decode(*id, text.as_bytes()))
            .collect()
    };
    let cluster_id =
        u64::from_str_radix(&stored.cluster_id, 16).map_err(|_| "a malformed cluster id")?;
    let bootstrap = decode(&join.bootstrap)?;
    if bootstrap.is_empty() || join.id == 0 {
        return Err("a join record without bootstrap voters or id".into());
    }
    Ok(Joined {
        id: join.id,
        cluster_id,
        bootstrap: bootstrap.into_iter().map(|r| r.member).collect(),
        known: decode(&join.known)?,
    })
}

/// What differs between the stored identity and the configured one, in one line.
fn difference(stored: &StoredIdentity, wanted: &StoredIdentity) -> String {
    let by_name = |id: &StoredIdentity| -> BTreeMap<String, StoredMember> {
        id.members
            .iter()
            .map(|m| (m.name.clone(), m.clone()))
            .collect()
    };
    let (old, new) = (by_name(stored), by_name(wanted));
    let mut parts = Vec::new();
    for (name, member) in &new {
        match old.get(name) {
            None => parts.push(format!("added {name} ({} {})", member.peer, member.client)),
            Some(was) if was != member => parts.push(format!(
                "changed {name} (was {} {}, now {} {})",
                was.peer, was.client, member.peer, member.client
            )),
            Some(_) => {}
        }
    }
    for name in old.keys().filter(|name| !new.contains_key(*name)) {
        parts.push(format!("removed {name}"));
    }
    if parts.is_empty() {
        // Same members: the token differs.
        parts.push(format!(
            "same members but cluster id {} instead of {} (DISTRAFT_CLUSTER_TOKEN differs)",
            wanted.cluster_id, stored.cluster_id
        ));
    }
    parts.join("; ")
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason: reason.into(),
    }
}

fn encode(identity: &StoredIdentity) -> Vec<u8> {
    // Serializing plain strings and numbers cannot fail.
    let mut text = serde_json::to_string(identity).unwrap_or_default();
    text.push('\n');
    let crc = crc32c::crc32c(text.as_bytes());
    text.push_str(&format!("crc32c {crc:08x}\n"));
    text.into_bytes()
}

/// The stored identity; `None` when there is no file. Damage is an error.
fn read(path: &Path) -> Result<Option<StoredIdentity>, StorageError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error(path)(err)),
    };
    let len = file.metadata().map_err(io_error(path))?.len();
    if len > MAX_FILE_BYTES {
        return Err(corrupt(path, format!("{len} bytes: not an identity file")));
    }
    let bytes = fs::read(path).map_err(io_error(path))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| corrupt(path, "not UTF-8"))?;
    let (body, crc_line) = text
        .strip_suffix('\n')
        .and_then(|t| t.rsplit_once('\n'))
        .ok_or_else(|| corrupt(path, "no checksum line"))?;
    let body = format!("{body}\n");
    let crc = crc_line
        .strip_prefix("crc32c ")
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| corrupt(path, "malformed checksum line"))?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return Err(corrupt(path, "checksum mismatch"));
    }
    let identity: StoredIdentity =
        serde_json::from_str(&body).map_err(|err| corrupt(path, format!("unreadable: {err}")))?;
    let expected = match (&identity.origin, &identity.joined) {
        (Some(_), _) => FORMAT_VERSION_ORIGIN,
        (None, None) => FORMAT_VERSION,
        (None, Some(_)) => FORMAT_VERSION_JOINED,
    };
    if identity.version != expected {
        return Err(corrupt(
            path,
            format!(
                "unsupported version {} (this distraft reads {FORMAT_VERSION} to \
                 {FORMAT_VERSION_ORIGIN}): written by a newer distraft?",
                identity.version
            ),
        ));
    }
    Ok(Some(identity))
}

/// Durably writes `data_dir/cluster.id` (a crash leaves the old file or the new one).
fn write(data_dir: &Path, identity: &StoredIdentity) -> Result<(), StorageError> {
    create_dir_durably(data_dir)?;
    replace_file_durably(data_dir, IDENTITY_FILE, &encode(identity))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::NodeArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn config(cluster: &str, token: &str) -> Config {
        let args = Cli::try_parse_from([
            "x",
            "--name",
            "a",
            "--cluster",
            cluster,
            "--cluster-token",
            token,
        ])
        .unwrap()
        .node;
        Config::from_args(&args).unwrap()
    }

    const ABC: &str = "a=h:1:h:2,b=h:3:h:4,c=h:5:h:6";

    #[test]
    fn first_start_writes_later_starts_check() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a");
        establish(&config(ABC, ""), &data, false).unwrap();
        establish(&config(ABC, ""), &data, false).unwrap();
        assert!(data.join(IDENTITY_FILE).exists());
        // DISTRAFT_RESET_LOGS wipes the log and snapshots, not the identity.
        crate::storage::Storage::reset(&crate::storage::StorageOptions::new(&data, &data)).unwrap();
        assert!(data.join(IDENTITY_FILE).exists());

        // Another list is left to the caller to compare with the current membership,
        // with the bootstrap list (and its ids) and the refusal if it is not.
        let Identity::Reconfigured {
            bootstrap,
            mismatch,
            ..
        } = establish(&config("a=h:1:h:2,b=h:3:h:9,d=h:7:h:8", ""), &data, false).unwrap()
        else {
            panic!("not reconfigured");
        };
        let names: Vec<(u64, &str)> = bootstrap.iter().map(|m| (m.id, m.name.as_str())).collect();
        assert_eq!(names, [(1, "a"), (2, "b"), (3, "c")]);
        let err = mismatch.to_string();
        assert!(err.contains("added d (h:7 h:8)"), "{err}");
        assert!(
            err.contains("changed b (was h:3 h:4, now h:3 h:9)"),
            "{err}"
        );
        assert!(err.contains("removed c"), "{err}");
        assert!(err.contains("DISTRAFT_CLUSTER"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");

        let err = establish(&config(ABC, "other"), &data, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("DISTRAFT_CLUSTER_TOKEN differs"), "{err}");
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        establish(&config(ABC, ""), dir.path(), false).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replacen("h:3", "h:7", 1)).unwrap();
        let err = establish(&config(ABC, ""), dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        fs::write(&path, "garbage").unwrap();
        assert!(establish(&config(ABC, ""), dir.path(), false).is_err());
    }
}
