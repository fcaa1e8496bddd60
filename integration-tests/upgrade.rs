//! Upgrades: a data directory written by an earlier build opens with this one.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::harness::{distraft_command, eventually, last_json, run_cli, CONVERGE};

/// A single node's data directory an earlier build left behind, kept in
/// `tests/fixtures/` (its README says how it was made). The node's name and addresses
/// are part of the cluster id stored there, so they are fixed: ports outside the
/// ephemeral range the other tests draw from, and apart for each fixture, so that their
/// tests can run at once.
struct Fixture {
    /// The directory under `tests/fixtures/`.
    dir: &'static str,
    udp_port: u16,
    http_port: u16,
}

/// The build of 791a930: entries without kinds, snapshots without learners.
const FORMAT_1: Fixture = Fixture {
    dir: "format-1",
    udp_port: 9701,
    http_port: 5701,
};

/// The build of c8c5d4f: entries holding a bare client `Command`, snapshot images
/// `DKVIMG02` (no versions).
const FORMAT_2: Fixture = Fixture {
    dir: "format-2",
    udp_port: 9702,
    http_port: 5702,
};

impl Fixture {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn env(&self) -> [(&'static str, String); 4] {
        [
            ("DISTRAFT_NAME", "fixture".into()),
            ("DISTRAFT_UDP_PORT", self.udp_port.to_string()),
            ("DISTRAFT_TCP_PORT", self.http_port.to_string()),
            (
                "DISTRAFT_CLUSTER",
                format!(
                    "fixture=127.0.0.1:{}:127.0.0.1:{}",
                    self.udp_port, self.http_port
                ),
            ),
        ]
    }
}

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

fn start(fixture: &Fixture, dir: &Path) -> Running {
    let output = std::fs::File::create(dir.join("node.out")).unwrap();
    let child = distraft_command()
        .envs(fixture.env())
        .env("DISTRAFT_LOG_PATH", dir.join("log"))
        .env("DISTRAFT_DATA_PATH", dir.join("state"))
        .stdout(Stdio::null())
        .stderr(output)
        .spawn()
        .unwrap();
    Running(child)
}

/// Keys and the values they should have (`None`: absent).
type Expected = Vec<(String, Option<String>)>;

/// A node on a copy of a fixture, and what it should hold.
struct Upgraded {
    fixture: &'static Fixture,
    // Declared before `dir`, so that the node ends before its directory goes.
    node: Option<Running>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    expected: Expected,
}

impl Upgraded {
    /// Starts the current build on a copy of `fixture`, which should hold `expected`.
    async fn start(fixture: &'static Fixture, expected: Expected) -> Upgraded {
        let dir = tempfile::tempdir().unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture.dir);
        copy_dir(&source, dir.path());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let node = Some(start(fixture, dir.path()));
        let upgraded = Upgraded {
            fixture,
            node,
            dir,
            http,
            expected,
        };
        upgraded
            .check(&format!(
                "the {} directory does not serve its keys",
                fixture.dir
            ))
            .await;
        upgraded
    }

    async fn value(&self, key: &str) -> Result<(u16, serde_json::Value), String> {
        let answer = self
            .http
            .get(format!("{}/{key}", self.fixture.url()))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status().as_u16();
        let body = answer.json().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// Every expected key is served with its value, and every absent one absent
    /// (within [`CONVERGE`]); otherwise panics, with `context` and the node's output.
    async fn check(&self, context: &str) {
        let served = eventually(CONVERGE, || async {
            for (key, value) in &self.expected {
                let (status, body) = self.value(key).await?;
                let found = (status == 200).then(|| body["value"].as_str().map(String::from));
                if found.flatten() != *value {
                    return Err(format!("{key}: {status} {body}"));
                }
            }
            Ok(())
        })
        .await;
        if let Err(last) = served {
            panic!(
                "{context}: {last}\n{}",
                std::fs::read_to_string(self.dir.path().join("node.out")).unwrap_or_default()
            );
        }
    }

    /// A new write (`after`) gets real versions, past the fixture's `last_index`; the
    /// keys `old` (written before versions existed) have versions of zero, and a write
    /// on `compare` conditional on version zero succeeds (it becomes `compared`).
    async fn write(&mut self, last_index: u64, old: &[&str], compare: &str) {
        let url = self.fixture.url();
        let put = self
            .http
            .post(format!("{url}/after"))
            .form(&[("value", "upgrade")])
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 200);
        for key in old {
            let (status, body) = self.value(key).await.unwrap();
            assert_eq!(status, 200, "{body}");
            for field in ["create_index", "mod_index", "version"] {
                assert_eq!(body[field], 0, "{key} {field}: {body}");
            }
        }
        let (_, after) = self.value("after").await.unwrap();
        assert!(after["mod_index"].as_u64() > Some(last_index), "{after}");
        let compared = self
            .http
            .post(format!("{url}/{compare}"))
            .header("if-match", "\"0\"")
            .form(&[("value", "compared")])
            .send()
            .await
            .unwrap();
        assert_eq!(compared.status().as_u16(), 200);
        for (key, value) in &mut self.expected {
            if key == compare {
                *value = Some("compared".into());
            }
        }
        self.expected.push(("after".into(), Some("upgrade".into())));
    }

    /// Stops the node and starts it again: it holds the same.
    async fn restart(&mut self) {
        drop(self.node.take());
        self.node = Some(start(self.fixture, self.dir.path()));
        self.check("after a restart").await;
    }
}

/// What both fixtures hold (their READMEs: the same writes made them): k1 = v1b, k2 to
/// k4 deleted, k5..k12 = v5..v12.
fn fixture_keys() -> Expected {
    [("k1", Some("v1b")), ("k2", None)]
        .into_iter()
        .chain([("k3", None), ("k4", None)])
        .map(|(k, v)| (k.to_string(), v.map(String::from)))
        .chain((5..=12).map(|i| (format!("k{i}"), Some(format!("v{i}")))))
        .collect()
}

/// The node of format 1 (entries without kinds, snapshots without learners) starts
/// on its directory, serves every key it held (from its snapshot and from its WAL
/// after it), takes writes, and has them all again after a restart.
#[tokio::test]
async fn a_format_1_data_directory_serves_its_keys_and_takes_writes() {
    let mut node = Upgraded::start(&FORMAT_1, fixture_keys()).await;
    // Keys written before versions existed have versions of zero (from the snapshot,
    // k5, or from the WAL after it, k12) and may be compared on them; the new write has
    // real ones.
    node.write(19, &["k5", "k12"], "k5").await;
    node.restart().await;
}

/// The node of format 2 (entries holding a bare client `Command`, snapshot images
/// without versions) starts on its directory, serves every key it held, takes writes,
/// can be backed up, and has everything again after a restart.
#[tokio::test]
async fn a_format_2_data_directory_serves_its_keys_and_takes_writes() {
    let mut node = Upgraded::start(&FORMAT_2, fixture_keys()).await;
    // As for format 1: old keys from the snapshot (k5) and from the WAL after it (k12).
    node.write(19, &["k5", "k12"], "k5").await;

    let file = node.dir.path().join("format-2.backup");
    let file = file.to_str().unwrap();
    let (ok, output) = run_cli(&["backup", "--url", &FORMAT_2.url(), file]).await;
    assert!(ok, "backup: {output}");
    let made = last_json(&output);
    let (ok, output) = run_cli(&["backup", "--check", file]).await;
    assert!(ok, "check: {output}");
    let checked = last_json(&output);
    assert_eq!(checked["index"], made["index"], "{output}");
    assert!(made["index"].as_u64() > Some(19), "{output}");
    // k1 and k5..k12 of the fixture, and `after`.
    assert_eq!(checked["keys"], 10, "{output}");

    node.restart().await;
}
