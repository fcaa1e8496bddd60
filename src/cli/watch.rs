//! `distraft watch`: follows a key or a prefix by long-polls of `GET /v1/watch`,
//! printing one JSON line per change (a resync as a `resync` line, then its keys as
//! puts), and carrying on from the last index seen + 1 after a dropped connection or
//! a node that went away.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::client::http_client;
use super::Target;

/// How long each long-poll waits on the node (well within the client's timeout).
const POLL_WAIT: &str = "30s";
/// The longest pause between attempts after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Watches `key` (or every key under it with `prefix`) from `index` (default: from
/// now), until `count` changes were printed (default: forever).
pub async fn watch(
    target: &Target,
    key: &str,
    prefix: bool,
    index: Option<u64>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let url = format!("{}/v1/watch", target.url.trim_end_matches('/'));
    let client = http_client(target)?;
    let selector = if prefix { "prefix" } else { "key" };
    let mut next = index.unwrap_or(0);
    let mut left = count.unwrap_or(u64::MAX);
    let mut backoff = Duration::from_millis(100);
    while left > 0 {
        let index = next.to_string();
        let query = [(selector, key), ("index", &index), ("wait", POLL_WAIT)];
        let answer = client.get(&url).query(&query).send().await;
        let response = match answer {
            Ok(response) => response,
            Err(err) => {
                // Dropped or refused: the node may be restarting. Carry on from `next`.
                eprintln!("watch: no answer from {url} ({err}); retrying from index {next}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let status = response.status();
        let text = match response.text().await {
            Ok(text) => text,
            Err(err) => {
                eprintln!("watch: the answer from {url} broke off ({err}); retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if status.is_server_error() {
            eprintln!("watch: {url} answered {status}: {}", text.trim_end());
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        if !status.is_success() {
            println!("{}", text.trim_end());
            bail!("{url} answered {status}");
        }
        backoff = Duration::from_millis(100);
        let answer: Value = serde_json::from_str(&text)
            .with_context(|| format!("{url} answered something else than JSON"))?;
        if answer["resync"] == Value::Bool(true) {
            println!("{}", json!({"type": "resync", "index": answer["index"]}));
        }
        for event in answer["events"].as_array().into_iter().flatten() {
            if left == 0 {
                break;
            }
            println!("{event}");
            left -= 1;
        }
        let Some(after) = answer["next"].as_u64() else {
            bail!("{url} answered no next index: {text}");
        };
        // Indexes only move on: an answer that goes back would repeat changes.
        if after < next {
            bail!("{url} answered next index {after}, before {next}");
        }
        next = after;
    }
    Ok(())
}
