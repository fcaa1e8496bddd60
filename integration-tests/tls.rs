//! Mutual TLS on a real 3-node cluster: curl over HTTPS, grpcurl with a client
//! certificate, the `distraft` CLI with --cacert, and what is refused (plaintext gRPC,
//! TLS without a client certificate, plain HTTP to the HTTPS gateway, an unknown CA).

use std::process::Command;

use crate::harness::{eventually, Cluster, CONVERGE};
use crate::tools::{grpcurl, grpcurl_refused, run_grpcurl};

/// Runs curl; returns (exit success, stdout, stderr).
fn curl(args: &[&str]) -> (bool, String, String) {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("running curl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn mutual_tls_cluster_serves_https_and_grpc_with_client_certificates() {
    let grpcurl = grpcurl();
    // Electing a leader already needs the peers' mutual TLS; the harness asks every
    // node's status over HTTPS.
    let cluster = Cluster::start_tls(3).await;
    let certs = cluster.certs.clone().unwrap();
    let ca = certs.ca.to_str().unwrap();
    let client_cert = certs.client_cert.to_str().unwrap();
    let client_key = certs.client_key.to_str().unwrap();
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;

    // curl over HTTPS, trusting the CA, writing through a follower: the follower
    // forwards to the leader over its mutual-TLS channel.
    let url = cluster.url(follower);
    assert!(url.starts_with("https://"), "{url}");
    let (ok, out, err) = curl(&[
        "--cacert",
        ca,
        "-L",
        "-XPOST",
        "--data",
        "value=secret",
        &format!("{url}/over-tls"),
    ]);
    assert!(ok, "curl over HTTPS failed: {out}{err}");
    assert!(out.contains("\"secret\""), "{out}");

    // The write replicated to every node (peers talk over mutual TLS).
    for i in 0..3 {
        eventually(CONVERGE, || async {
            match cluster.get_stale(i, "over-tls").await {
                (200, body) if body["value"] == "secret" => Ok(()),
                answer => Err(format!("{answer:?}")),
            }
        })
        .await
        .unwrap_or_else(|last| panic!("node {i} never applied the write: {last}"));
    }

    // grpcurl with the client certificate: reflection and a linearizable read.
    let address = format!("127.0.0.1:{}", cluster.nodes[follower].raft_port);
    let address = address.as_str();
    let tls_args = ["-cacert", ca, "-cert", client_cert, "-key", client_key];
    let services = run_grpcurl(&grpcurl, &[&tls_args[..], &[address, "list"]].concat());
    assert!(
        services.lines().any(|l| l == "distraft.v1.Kv"),
        "{services}"
    );
    let get = run_grpcurl(
        &grpcurl,
        &[
            &tls_args[..],
            &[
                "-d",
                r#"{"key": "over-tls"}"#,
                address,
                "distraft.v1.Kv/Get",
            ],
        ]
        .concat(),
    );
    assert!(get.contains("\"value\": \"secret\""), "{get}");

    // Refused: plaintext gRPC, and TLS without a client certificate.
    grpcurl_refused(&["-plaintext", "-max-time", "5", address, "list"]);
    grpcurl_refused(&["-cacert", ca, "-max-time", "5", address, "list"]);
    // The harness's own Rust client gets the same answer without its certificate.
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let status = distraft::proto::v1::admin_client::AdminClient::new(channel)
            .status(distraft::proto::v1::StatusRequest {})
            .await;
        assert!(status.is_err(), "a plaintext gRPC call was answered");
    }

    // Refused: plain HTTP to the HTTPS gateway, and HTTPS without trusting the CA.
    let plain_url = url.replacen("https://", "http://", 1);
    let (ok, out, _) = curl(&[&format!("{plain_url}/over-tls")]);
    assert!(
        !ok || !out.contains("secret"),
        "plain HTTP was served: {out}"
    );
    let (ok, out, _) = curl(&[&format!("{url}/over-tls")]);
    assert!(!ok, "HTTPS without the CA was trusted: {out}");

    // The CLI with --cacert.
    let cli = Command::new(env!("CARGO_BIN_EXE_distraft"))
        .args(["get", "--url", &url, "--cacert", ca, "over-tls"])
        .env_remove("DISTRAFT_URL")
        .output()
        .expect("running distraft get");
    let said = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "distraft get: {said}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(said.contains("\"secret\""), "{said}");

    // distraft bench over HTTPS (--cacert) and over mutual-TLS gRPC (--cert/--key).
    let grpc_url = cluster.nodes[follower].grpc_uri();
    let bench_runs: [&[&str]; 2] = [
        &["--target", "distraft-http", "--urls", &url, "--cacert", ca],
        &[
            "--target",
            "distraft-grpc",
            "--urls",
            &grpc_url,
            "--cacert",
            ca,
            "--cert",
            client_cert,
            "--key",
            client_key,
        ],
    ];
    for target in bench_runs {
        let bench = Command::new(env!("CARGO_BIN_EXE_distraft"))
            .arg("bench")
            .args(target)
            .args(["--ops", "40", "--keys", "10"])
            .output()
            .expect("running distraft bench");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&bench.stdout),
            String::from_utf8_lossy(&bench.stderr)
        );
        // Its prefill writes every key and stops at the first error.
        assert!(bench.status.success(), "bench {target:?}: {said}");
    }
}

#[tokio::test]
async fn a_node_with_half_or_bad_tls_settings_refuses_to_start_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.to_str().unwrap();
    let cases: [(&[(&str, &str)], &str); 2] = [
        (&[("DISTRAFT_TLS_CERT", garbage)], "DISTRAFT_TLS_KEY"),
        (
            &[
                ("DISTRAFT_TLS_CERT", garbage),
                ("DISTRAFT_TLS_KEY", garbage),
                ("DISTRAFT_TLS_CA", garbage),
            ],
            "DISTRAFT_TLS_CERT",
        ),
    ];
    for (env, blamed) in cases {
        let mut command = crate::harness::distraft_command();
        let output = command
            .envs(env.iter().copied())
            .env("DISTRAFT_LOG_PATH", dir.path())
            .env("DISTRAFT_DATA_PATH", dir.path())
            .output()
            .expect("running distraft");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(&format!("error: {blamed}")), "{stderr}");
    }
}
