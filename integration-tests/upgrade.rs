//! Upgrades: a data directory written by an earlier build opens with this one.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::harness::{distraft_command, eventually, CONVERGE};

/// The node of `tests/fixtures/format-1`: its name and addresses are part of the
/// cluster id stored there, so they are fixed (ports outside the ephemeral range the
/// other tests draw from).
const FIXTURE_ENV: [(&str, &str); 4] = [
    ("DISTRAFT_NAME", "fixture"),
    ("DISTRAFT_UDP_PORT", "9701"),
    ("DISTRAFT_TCP_PORT", "5701"),
    ("DISTRAFT_CLUSTER", "fixture=127.0.0.1:9701:127.0.0.1:5701"),
];

/// Ends the node however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn start(dir: &Path) -> Running {
    let output = std::fs::File::create(dir.join("node.out")).unwrap();
    let child = distraft_command()
        .envs(FIXTURE_ENV)
        .env("DISTRAFT_LOG_PATH", dir.join("log"))
        .env("DISTRAFT_DATA_PATH", dir.join("state"))
        .stdout(Stdio::null())
        .stderr(output)
        .spawn()
        .unwrap();
    Running(child)
}

async fn value(http: &reqwest::Client, key: &str) -> Result<(u16, serde_json::Value), String> {
    let answer = http
        .get(format!("http://127.0.0.1:5701/{key}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    let body = answer.json().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// The node of format 1 (entries without kinds, snapshots without learners) starts
/// on its directory, serves every key it held (from its snapshot and from its WAL
/// after it), takes writes, and has them all again after a restart.
#[tokio::test]
async fn a_format_1_data_directory_serves_its_keys_and_takes_writes() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-1");
    copy_dir(&fixture, dir.path());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let expected: Vec<(String, Option<String>)> = [("k1", Some("v1b")), ("k2", None)]
        .into_iter()
        .chain([("k3", None), ("k4", None)])
        .map(|(k, v)| (k.to_string(), v.map(String::from)))
        .chain((5..=12).map(|i| (format!("k{i}"), Some(format!("v{i}")))))
        .collect();
    let check = |expected: Vec<(String, Option<String>)>| {
        let http = http.clone();
        async move {
            eventually(CONVERGE, || async {
                for (key, value) in &expected {
                    let (status, body) = self::value(&http, key).await?;
                    let found = (status == 200).then(|| body["value"].as_str().map(String::from));
                    if found.flatten() != *value {
                        return Err(format!("{key}: {status} {body}"));
                    }
                }
                Ok(())
            })
            .await
        }
    };

    let node = start(dir.path());
    if let Err(last) = check(expected.clone()).await {
        panic!(
            "the format-1 directory does not serve its keys: {last}\n{}",
            std::fs::read_to_string(dir.path().join("node.out")).unwrap_or_default()
        );
    }
    let put = http
        .post("http://127.0.0.1:5701/after")
        .form(&[("value", "upgrade")])
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    // Keys written before versions existed have versions of zero (from the snapshot,
    // k5, or from the WAL after it, k12) and may be compared on them; the new write has
    // real ones.
    for key in ["k5", "k12"] {
        let (status, body) = self::value(&http, key).await.unwrap();
        assert_eq!(status, 200, "{body}");
        for field in ["create_index", "mod_index", "version"] {
            assert_eq!(body[field], 0, "{key} {field}: {body}");
        }
    }
    let (_, after) = self::value(&http, "after").await.unwrap();
    assert!(after["mod_index"].as_u64() > Some(19), "{after}");
    let compared = http
        .post("http://127.0.0.1:5701/k5")
        .header("if-match", "\"0\"")
        .form(&[("value", "v5b")])
        .send()
        .await
        .unwrap();
    assert_eq!(compared.status().as_u16(), 200);
    drop(node);

    let _node = start(dir.path());
    let mut expected: Vec<_> = expected
        .into_iter()
        .map(|(key, value)| match key.as_str() {
            "k5" => (key, Some("v5b".to_string())),
            _ => (key, value),
        })
        .collect();
    expected.push(("after".into(), Some("upgrade".into())));
    if let Err(last) = check(expected).await {
        panic!(
            "after a restart: {last}\n{}",
            std::fs::read_to_string(dir.path().join("node.out")).unwrap_or_default()
        );
    }
}
