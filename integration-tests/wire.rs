//! Hostile input on the Raft port of a healthy cluster (issue #11): malformed and
//! forged Raft messages, garbage and oversized snapshot streams, random bytes on every
//! method, a foreign cluster that lists one of our addresses, and bad configurations.
//! After the attacks: no process died, the terms did not move, the cluster takes a
//! write, every acknowledged key reads back on every node, and a restart of every node
//! comes back healthy.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::{Buf, BufMut};
use distraft::proto::v1::{self as pb, raft_client::RaftClient};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::harness::{eventually, free_ports, Cluster, CONVERGE, ELECTION, HEARTBEAT};

/// The snapshot limit of the attacked cluster: small, so that "oversized" is cheap.
const MAX_SNAPSHOT_BYTES: u64 = 8 << 20;
const LIMITS: &[(&str, &str)] = &[("DISTRAFT_MAX_SNAPSHOT_BYTES", "8388608")];

async fn raft(cluster: &Cluster, i: usize) -> RaftClient<Channel> {
    RaftClient::connect(cluster.nodes[i].grpc_uri())
        .await
        .unwrap()
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

/// What the attacker needs to forge messages: the cluster id, and a node's term and
/// leader as it reports them.
struct Observed {
    cluster_id: u64,
    term: u64,
    leader: String,
}

async fn observe(cluster: &Cluster, i: usize) -> Observed {
    let status = cluster.status(i).await.unwrap();
    let hex = status["cluster_id"]
        .as_str()
        .expect("GET / shows cluster_id");
    Observed {
        cluster_id: u64::from_str_radix(hex, 16).unwrap(),
        term: status["term"].as_u64().unwrap(),
        leader: status["leader"].as_str().unwrap().to_string(),
    }
}

async fn terms(cluster: &Cluster) -> Vec<Value> {
    let mut terms = Vec::new();
    for i in 0..cluster.nodes.len() {
        terms.push(cluster.status(i).await.unwrap()["term"].clone());
    }
    terms
}

/// One AppendEntries request on a fresh stream; its answer or refusal.
async fn append_once(
    client: &mut RaftClient<Channel>,
    request: pb::AppendEntriesRequest,
) -> Result<pb::AppendEntriesResponse, Status> {
    let mut answers = client
        .append_entries(tokio_stream::iter(vec![request]))
        .await?
        .into_inner();
    answers
        .message()
        .await?
        .ok_or_else(|| Status::unknown("the stream ended without an answer"))
}

fn append(
    seen: &Observed,
    to: &str,
    term: u64,
    prev: (u64, u64),
    entries: &[(u64, u64)],
    commit: u64,
) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        from_id: 0,
        to_id: 0,
        wire_version: 0,
        from: seen.leader.clone(),
        term,
        cluster_id: seen.cluster_id,
        to: to.to_string(),
        kind: Some(pb::append_entries_request::Kind::Append(pb::Append {
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries: entries
                .iter()
                .map(|&(index, term)| pb::Entry {
                    index,
                    term,
                    data: bytes::Bytes::from_static(b"\x0a\x06\x0a\x01x\x12\x01y"),
                    kind: pb::EntryKind::Normal.into(),
                })
                .collect(),
            leader_commit: commit,
        })),
    }
}

/// The first chunk of a snapshot stream from `from` in `term`.
fn first_chunk(
    seen: &Observed,
    from: &str,
    to: &str,
    term: u64,
    image: &[u8],
) -> pb::InstallSnapshotChunk {
    pb::InstallSnapshotChunk {
        from_id: 0,
        to_id: 0,
        wire_version: 0,
        from: from.to_string(),
        term,
        meta: Some(pb::SnapshotMeta {
            learner_ids: Vec::new(),
            voter_ids: Vec::new(),
            index: 1_000_000,
            term,
            voters: vec!["node1".into(), "node2".into(), "node3".into()],
            learners: vec![],
        }),
        data: Vec::new(),
        cluster_id: seen.cluster_id,
        to: to.to_string(),
        image_bytes: image.len() as u64,
        image_crc32c: crc32c::crc32c(image),
    }
}

/// Sends `first` and then `chunks`, then ends the stream, or with `keep_open` keeps it
/// open until the answer arrives (or 5 s pass): a receiver that wrote before checking
/// would have the data on disk by then. Returns the answer and the node's data
/// directory size just after it (while the stream is still open, with `keep_open`).
async fn snapshot_stream(
    client: &mut RaftClient<Channel>,
    first: pb::InstallSnapshotChunk,
    chunks: Vec<Vec<u8>>,
    data_dir: &Path,
    keep_open: bool,
) -> (Result<pb::AppendEntriesResponse, Status>, u64) {
    let (tx, rx) = mpsc::channel(chunks.len() + 1);
    tx.send(first).await.unwrap();
    for data in chunks {
        tx.send(pb::InstallSnapshotChunk {
            data,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let tx = keep_open.then_some(tx);
    let call = client.install_snapshot(ReceiverStream::new(rx));
    let answer = match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(
            "no answer while the stream is open",
        )),
    };
    let size = disk_use(data_dir);
    drop(tx);
    (answer, size)
}

fn disk_use(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_use(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Passes raw bytes through gRPC unchanged: random bytes on any method.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Sends `payload` as the message of Raft method `method`; the status it gets.
async fn raw_call(uri: &str, method: &'static str, payload: Vec<u8>) -> Code {
    let channel = Channel::from_shared(uri.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static(method);
    let result = match method {
        "/distraft.v1.Raft/AppendEntries" => {
            let stream = tokio_stream::iter(vec![payload]);
            match grpc
                .streaming(tonic::Request::new(stream), path, RawCodec)
                .await
            {
                Ok(response) => response.into_inner().message().await.map(|_| ()),
                Err(status) => Err(status),
            }
        }
        "/distraft.v1.Raft/InstallSnapshot" => {
            let stream = tokio_stream::iter(vec![payload]);
            grpc.client_streaming(tonic::Request::new(stream), path, RawCodec)
                .await
                .map(|_| ())
        }
        _ => grpc
            .unary(tonic::Request::new(payload), path, RawCodec)
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// After the attacks: every process alive, a write goes through, every acknowledged
/// key reads back on every node.
async fn assert_healthy(cluster: &mut Cluster, acknowledged: &[(&str, &str)], probe_key: &str) {
    for i in 0..cluster.nodes.len() {
        assert!(cluster.alive(i), "{} died", cluster.nodes[i].name);
    }
    let leader = cluster.wait_for_leader().await;
    let (code, body) = cluster.put(leader, probe_key, "alive").await;
    assert_eq!(code, 200, "{body}");
    for i in 0..cluster.nodes.len() {
        for (key, value) in acknowledged.iter().chain(&[(probe_key, "alive")]) {
            let read = eventually(CONVERGE, || async {
                match cluster.get_stale(i, key).await {
                    (200, body) if body["value"] == *value => Ok(()),
                    answer => Err(format!("{answer:?}")),
                }
            })
            .await;
            if let Err(last) = read {
                panic!("node {i} lost {key}={value}: {last}");
            }
        }
    }
}

#[tokio::test]
async fn hostile_raft_traffic_is_refused_and_changes_nothing() {
    let mut cluster = Cluster::start_with(3, LIMITS).await;
    let leader = cluster.wait_for_leader().await;
    assert_eq!(cluster.put(leader, "before", "1").await.0, 200);
    // A term above 1, so that a stale term exists: the leader steps aside once.
    let mut admin = cluster.admin(leader).await;
    admin.stop(pb::StopRequest {}).await.unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.wait_for_leader_among(&others).await;
    admin.start(pb::StartRequest {}).await.unwrap();
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let to = cluster.nodes[follower].name.clone();
    let seen = observe(&cluster, follower).await;
    assert!(seen.term >= 2, "term {}", seen.term);
    let terms_before = terms(&cluster).await;
    let mut client = raft(&cluster, follower).await;

    // Forged appends: each refused, none changes anything.
    let t = seen.term;
    let appends = [
        (
            "heartbeat term 2^64-1",
            pb::AppendEntriesRequest {
                kind: Some(pb::append_entries_request::Kind::Heartbeat(pb::Heartbeat {
                    leader_commit: 0,
                    read_seq: 0,
                })),
                ..append(&seen, &to, u64::MAX, (0, 0), &[], 0)
            },
            Code::InvalidArgument,
        ),
        (
            "append term 2^62+1",
            append(&seen, &to, (1 << 62) + 1, (0, 0), &[], 0),
            Code::InvalidArgument,
        ),
        (
            "entry with index 0",
            append(&seen, &to, t, (0, 0), &[(0, t)], 0),
            Code::InvalidArgument,
        ),
        (
            "entries with a gap",
            append(&seen, &to, t, (0, 0), &[(1, 1), (3, 1)], 0),
            Code::InvalidArgument,
        ),
        (
            "decreasing indexes",
            append(&seen, &to, t, (5, 1), &[(6, 1), (5, 1)], 0),
            Code::InvalidArgument,
        ),
        (
            "entry term above the message's",
            append(&seen, &to, t, (0, 0), &[(1, t + 1)], 0),
            Code::InvalidArgument,
        ),
        (
            "another cluster",
            pb::AppendEntriesRequest {
                cluster_id: seen.cluster_id ^ 1,
                ..append(&seen, &to, t + 1, (0, 0), &[], 0)
            },
            Code::FailedPrecondition,
        ),
        (
            "meant for another member",
            append(&seen, &cluster.nodes[leader].name, t + 1, (0, 0), &[], 0),
            Code::FailedPrecondition,
        ),
    ];
    for (what, request, expected) in appends {
        let answer = append_once(&mut client, request).await;
        assert_eq!(
            answer.as_ref().map_err(Status::code).err(),
            Some(expected),
            "{what}: {answer:?}"
        );
    }
    // A huge commit index from the leader's name in its own term is clamped to what
    // the message shows (nothing here): an ordinary answer.
    let answer = append_once(&mut client, append(&seen, &to, t, (0, 0), &[], u64::MAX)).await;
    assert!(answer.is_ok(), "huge commit: {answer:?}");

    let vote = pb::VoteRequest {
        from_id: 0,
        to_id: 0,
        wire_version: 0,
        from: seen.leader.clone(),
        term: u64::MAX,
        last_log_index: u64::MAX,
        last_log_term: u64::MAX,
        pre_vote: false,
        cluster_id: seen.cluster_id,
        to: to.clone(),
        transfer: false,
    };
    let refused = client.request_vote(vote).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "vote term 2^64-1");
    let read = pb::ReadIndexRequest {
        from_id: 0,
        to_id: 0,
        wire_version: 0,
        from: seen.leader.clone(),
        term: 0,
        id: 1,
        cluster_id: seen.cluster_id,
        to: to.clone(),
    };
    let refused = client.read_index(read).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "read index term 0");

    // Snapshot streams.
    let data_dir = cluster.dir().join("state").join(&to);
    let garbage: Vec<u8> = (0..100_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let from_leader = first_chunk(&seen, &seen.leader, &to, t, &garbage);
    let (answer, _) = snapshot_stream(
        &mut client,
        from_leader,
        vec![garbage.clone()],
        &data_dir,
        false,
    )
    .await;
    assert_eq!(
        answer.unwrap_err().code(),
        Code::InvalidArgument,
        "garbage image"
    );

    let mut bad_crc = first_chunk(&seen, &seen.leader, &to, t, &garbage);
    bad_crc.image_crc32c ^= 1;
    let (answer, _) = snapshot_stream(
        &mut client,
        bad_crc,
        vec![garbage.clone()],
        &data_dir,
        false,
    )
    .await;
    assert_eq!(
        answer.unwrap_err().code(),
        Code::InvalidArgument,
        "checksum mismatch"
    );

    let mut oversized = first_chunk(&seen, &seen.leader, &to, t, &garbage);
    oversized.image_bytes = MAX_SNAPSHOT_BYTES + 1;
    let (answer, _) = snapshot_stream(
        &mut client,
        oversized,
        vec![garbage.clone()],
        &data_dir,
        false,
    )
    .await;
    assert_eq!(
        answer.unwrap_err().code(),
        Code::ResourceExhausted,
        "declared oversized"
    );

    let mut longer = first_chunk(&seen, &seen.leader, &to, t, &garbage[..1000]);
    longer.data = garbage.clone();
    let (answer, _) = snapshot_stream(&mut client, longer, vec![], &data_dir, false).await;
    assert_eq!(
        answer.unwrap_err().code(),
        Code::InvalidArgument,
        "longer than declared"
    );

    // A stale term, and a member that does not lead this term: refused before a byte
    // is stored, while the stream (4 MiB announced, 3 MiB sent) is still open.
    let megabyte = vec![0xabu8; 1 << 20];
    let image = vec![0xabu8; 4 << 20];
    let before = disk_use(&data_dir);
    let stale = first_chunk(&seen, &seen.leader, &to, t - 1, &image);
    let chunks = vec![megabyte.clone(), megabyte.clone(), megabyte.clone()];
    let (answer, during) =
        snapshot_stream(&mut client, stale, chunks.clone(), &data_dir, true).await;
    let answer = answer.expect("a stale leader is told the current term");
    assert_eq!(answer.term, t, "stale: {answer:?}");
    assert!(
        matches!(
            answer.kind,
            Some(pb::append_entries_response::Kind::Append(
                pb::AppendResult { success: false, .. }
            ))
        ),
        "{answer:?}"
    );
    assert!(
        during < before + (1 << 20),
        "disk use grew from {before} to {during} bytes"
    );
    // The forged appends above ended a stream "from the leader", which makes the
    // follower forget its leader for a moment; an impostor is only recognisable once
    // the real leader was heard from again.
    eventually(CONVERGE, || async {
        match cluster.status(follower).await {
            Ok(status) if status["leader"] == seen.leader.as_str() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    let third = &cluster.nodes[(leader + 2) % 3].name;
    let impostor = first_chunk(&seen, third, &to, t, &image);
    let (answer, during) = snapshot_stream(&mut client, impostor, chunks, &data_dir, true).await;
    assert_eq!(
        answer.unwrap_err().code(),
        Code::FailedPrecondition,
        "not the leader"
    );
    assert!(
        during < before + (1 << 20),
        "disk use grew from {before} to {during} bytes"
    );

    // Random bytes on every Raft method, at every node.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let methods = [
        "/distraft.v1.Raft/RequestVote",
        "/distraft.v1.Raft/AppendEntries",
        "/distraft.v1.Raft/InstallSnapshot",
        "/distraft.v1.Raft/ReadIndex",
    ];
    for i in 0..3 {
        for method in methods {
            for _ in 0..8 {
                let len = rng.random_range(1..300);
                let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let code = raw_call(&cluster.nodes[i].grpc_uri(), method, payload).await;
                // Undecodable, or decoded but for no cluster of ours.
                assert!(
                    matches!(code, Code::InvalidArgument | Code::FailedPrecondition),
                    "{method} answered random bytes with {code:?}"
                );
            }
        }
    }

    assert_eq!(
        terms(&cluster).await,
        terms_before,
        "the attacks moved a term"
    );
    assert_healthy(&mut cluster, &[("before", "1")], "after-attacks").await;

    // A restart of every node comes back healthy, with everything acknowledged.
    for i in 0..3 {
        cluster.kill(i);
        cluster.restart_with(i, LIMITS);
    }
    assert_healthy(
        &mut cluster,
        &[("before", "1"), ("after-attacks", "alive")],
        "after-restart",
    )
    .await;
}

/// A process of our binary outside the cluster harness; killed when dropped.
struct Process(tokio::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn command(
    name: &str,
    spec: &str,
    raft_port: u16,
    http_port: u16,
    dir: &Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::from(crate::harness::distraft_command());
    command
        .env("DISTRAFT_NAME", name)
        .env("DISTRAFT_UDP_PORT", raft_port.to_string())
        .env("DISTRAFT_TCP_PORT", http_port.to_string())
        .env("DISTRAFT_CLUSTER", spec)
        .env("DISTRAFT_LOG_PATH", dir.join("log"))
        .env("DISTRAFT_DATA_PATH", dir.join("state"))
        .env("DISTRAFT_HEARTBEAT_TIMEOUT", HEARTBEAT)
        .env("DISTRAFT_ELECTION_TIMEOUT", ELECTION)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs a node that must refuse to start; its stderr.
async fn refused_start(mut command: tokio::process::Command) -> String {
    let run = command.output();
    let output = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the node should have exited at once")
        .unwrap();
    assert!(!output.status.success(), "the node started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_foreign_cluster_and_bad_configurations_are_refused() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    assert_eq!(cluster.put(leader, "ours", "1").await.0, 200);
    let terms_before = terms(&cluster).await;

    // A second cluster whose member list names our node1 (same name and address):
    // x and y elect a leader between them and keep calling node1.
    let foreign_dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    let node1 = &cluster.nodes[0];
    let spec = format!(
        "node1=127.0.0.1:{}:127.0.0.1:{},x=127.0.0.1:{}:127.0.0.1:{},y=127.0.0.1:{}:127.0.0.1:{}",
        node1.raft_port, node1.http_port, ports[0], ports[1], ports[2], ports[3]
    );
    let foreign: Vec<Process> = [("x", ports[0], ports[1]), ("y", ports[2], ports[3])]
        .into_iter()
        .map(|(name, raft_port, http_port)| {
            let mut command = command(name, &spec, raft_port, http_port, foreign_dir.path());
            command.stderr(Stdio::null());
            Process(command.spawn().unwrap())
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        terms(&cluster).await,
        terms_before,
        "a foreign cluster moved our terms"
    );
    drop(foreign);

    // Two members behind one address: a configuration error, at start-up.
    let ports = free_ports(3);
    let duplicate = format!(
        "a=127.0.0.1:{0}:127.0.0.1:{1},b=127.0.0.1:{0}:127.0.0.1:{2}",
        ports[0], ports[1], ports[2]
    );
    let scratch = tempfile::tempdir().unwrap();
    let stderr = refused_start(command("a", &duplicate, ports[0], ports[1], scratch.path())).await;
    assert!(
        stderr.contains("DISTRAFT_CLUSTER")
            && stderr.contains("is the peer address of both a and b"),
        "{stderr}"
    );

    // A node restarted with another member list refuses to start, saying why.
    cluster.kill(2);
    let node3 = &cluster.nodes[2];
    let changed = format!("{},node4=127.0.0.1:1:127.0.0.1:2", cluster.cluster_spec());
    let mut restart = command(
        "node3",
        &changed,
        node3.raft_port,
        node3.http_port,
        cluster.dir(),
    );
    restart.env("DISTRAFT_RESET_LOGS", "true");
    let stderr = refused_start(restart).await;
    assert!(
        stderr.contains("does not match the member list") && stderr.contains("added node4"),
        "{stderr}"
    );
    // Refused before the reset it asked for: with its own list it comes back with its
    // data.
    cluster.restart(2);
    assert_healthy(&mut cluster, &[("ours", "1")], "after-refusals").await;
}
