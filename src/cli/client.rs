//! `status`, `get`, `put`, `delete`, `list`, `leader`, `member`: HTTP calls to a
//! node's gateway, whose JSON answers are printed as they came (`list`: a line per
//! key). Redirects are followed, like `curl -L`.

use anyhow::{bail, Context};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::time::Duration;

use super::{ChangeFlags, MemberCommand, Target};

/// Everything but RFC 3986's unreserved characters is escaped, so any key (spaces,
/// slashes, unicode) travels as one path segment.
const KEY_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The URL of `key` on the node at `base` (e.g. `http://127.0.0.1:5001`) by the
/// original route, `/<key>` (which the operations routes hide: `GET /stop` stops).
pub fn key_url(base: &str, key: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        utf8_percent_encode(key, KEY_ESCAPES)
    )
}

/// The URL of `key` on the node at `base` by the path that reaches every key,
/// `/v1/kv/<key>`: what the client subcommands use, so that `distraft get stop` reads
/// the key `stop`.
pub fn kv_url(base: &str, key: &str) -> String {
    format!(
        "{}/v1/kv/{}",
        base.trim_end_matches('/'),
        utf8_percent_encode(key, KEY_ESCAPES)
    )
}

/// Long enough for any request timeout a node may be configured with.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for `target`: sending its API token, if any, with every request; with
/// --cacert (and --cert/--key), https:// URLs work.
pub(super) fn http_client(target: &Target) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &target.token {
        let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the API token must be visible ASCII characters")?;
        bearer.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
    }
    let tls = target.tls.load()?;
    tls.reqwest(reqwest::Client::builder().timeout(HTTP_TIMEOUT))
        .default_headers(headers)
        .build()
        .context("building the HTTP client")
}

pub async fn status(target: &Target) -> anyhow::Result<()> {
    let url = format!("{}/", target.url.trim_end_matches('/'));
    print_answer(http_client(target)?.get(&url), &url).await
}

pub async fn ready(target: &Target) -> anyhow::Result<()> {
    let url = format!("{}/readyz?verbose", target.url.trim_end_matches('/'));
    print_answer(http_client(target)?.get(&url), &url).await
}

pub async fn get(target: &Target, key: &str, stale: bool) -> anyhow::Result<()> {
    let url = kv_url(&target.url, key);
    let mut request = http_client(target)?.get(&url);
    if stale {
        request = request.query(&[("stale", "true")]);
    }
    print_answer(request, &url).await
}

/// `condition`: a conditional header (`If-Match`, `If-None-Match`) and its value;
/// `idempotency_key`: see [`send_write`].
pub async fn put(
    target: &Target,
    key: &str,
    value: &str,
    condition: Option<(&'static str, String)>,
    idempotency_key: &str,
) -> anyhow::Result<()> {
    let url = kv_url(&target.url, key);
    let mut request = http_client(target)?.post(&url).form(&[("value", value)]);
    if let Some((name, value)) = condition {
        request = request.header(name, value);
    }
    send_write(request, &url, idempotency_key).await
}

pub async fn delete(
    target: &Target,
    key: &str,
    condition: Option<(&'static str, String)>,
    idempotency_key: &str,
) -> anyhow::Result<()> {
    let url = kv_url(&target.url, key);
    let mut request = http_client(target)?.delete(&url);
    if let Some((name, value)) = condition {
        request = request.header(name, value);
    }
    send_write(request, &url, idempotency_key).await
}

/// The longest transaction `distraft txn -` reads from standard input.
const MAX_TXN_INPUT_BYTES: u64 = 64 << 20;

/// `distraft txn`: the transaction's JSON (or `-`: standard input), checked to be JSON
/// here, and everything else by the node (400 with the reason); sent as a write
/// ([`send_write`]).
pub async fn txn(target: &Target, txn: &str, idempotency_key: &str) -> anyhow::Result<()> {
    let body = match txn {
        "-" => {
            // Bounded: a node takes no request body past 3 values' worth (3 MiB with the
            // default DISTRAFT_MAX_VALUE_BYTES); this is ample for any it could take.
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), MAX_TXN_INPUT_BYTES + 1),
                &mut text,
            )
            .context("reading the transaction from standard input")?;
            if text.len() as u64 > MAX_TXN_INPUT_BYTES {
                anyhow::bail!(
                    "the transaction on standard input is longer than {MAX_TXN_INPUT_BYTES} bytes"
                );
            }
            text
        }
        text => text.to_string(),
    };
    serde_json::from_str::<serde_json::Value>(&body).context(
        "the transaction is not JSON: {\"compare\": [...], \"success\": [...], \"failure\": [...]}",
    )?;
    let url = format!("{}/v1/txn", target.url.trim_end_matches('/'));
    let request = http_client(target)?
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    send_write(request, &url, idempotency_key).await
}

/// A new random idempotency key (128 bits, as hex).
pub fn new_idempotency_key() -> String {
    use rand::Rng as _;
    let random: u128 = rand::rng().random();
    format!("{random:032x}")
}

/// How often a write whose answer was lost is sent, in all.
const WRITE_ATTEMPTS: u32 = 4;
/// The pause before sending it again.
const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Sends a write with its `Idempotency-Key` and prints the node's answer. When the
/// answer is lost (no answer, or 503: the cluster could not say), the write is sent
/// again with the same key, a bounded number of times: applied at most once, the
/// answer to a retry is the first outcome (`Idempotent-Replayed: true`).
async fn send_write(
    request: reqwest::RequestBuilder,
    url: &str,
    idempotency_key: &str,
) -> anyhow::Result<()> {
    let request = request.header("idempotency-key", idempotency_key);
    for attempt in 1..WRITE_ATTEMPTS {
        let Some(this) = request.try_clone() else {
            break;
        };
        match this.send().await {
            Ok(response) if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                return print_response(response, url).await;
            }
            Ok(response) => eprintln!(
                "distraft: {url} answered {} (attempt {attempt} of {WRITE_ATTEMPTS}); sending it again with idempotency key {idempotency_key}",
                response.status()
            ),
            Err(err) => eprintln!(
                "distraft: no answer from {url}: {err} (attempt {attempt} of {WRITE_ATTEMPTS}); sending it again with idempotency key {idempotency_key}"
            ),
        }
        tokio::time::sleep(WRITE_RETRY_PAUSE).await;
    }
    print_answer(request, url).await
}

/// Prints every key `prefix` lists (at most `limit`), one JSON line each, following
/// the pages' continuation tokens.
pub async fn list(
    target: &Target,
    prefix: &str,
    limit: Option<u64>,
    keys_only: bool,
    stale: bool,
) -> anyhow::Result<()> {
    let url = format!("{}/v1/keys", target.url.trim_end_matches('/'));
    let client = http_client(target)?;
    let mut after = String::new();
    let mut left = limit.unwrap_or(u64::MAX);
    while left > 0 {
        let page_limit = left.min(1000).to_string();
        let mut query = vec![
            ("prefix", prefix),
            ("after", after.as_str()),
            ("limit", page_limit.as_str()),
        ];
        if keys_only {
            query.push(("keys_only", "true"));
        }
        if stale {
            query.push(("stale", "true"));
        }
        let response = client
            .get(&url)
            .query(&query)
            .send()
            .await
            .with_context(|| format!("no answer from {url}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer from {url}"))?;
        if !status.is_success() {
            println!("{}", text.trim_end());
            bail!("{url} answered {status}");
        }
        let page: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{url} answered something else than JSON"))?;
        for key in page["keys"].as_array().into_iter().flatten() {
            println!("{key}");
            left = left.saturating_sub(1);
        }
        match page["next"].as_str() {
            // Keys come in order: a token that does not move on would loop forever.
            Some(next) if next <= after.as_str() => {
                bail!("{url} answered a continuation token {next:?} that does not move past {after:?}")
            }
            Some(next) if !next.is_empty() => after = next.to_string(),
            _ => break,
        }
    }
    Ok(())
}

pub async fn transfer_leader(target: &Target, to: Option<&str>) -> anyhow::Result<()> {
    let url = format!("{}/cluster/leader", target.url.trim_end_matches('/'));
    let mut request = http_client(target)?.post(&url);
    if let Some(to) = to {
        request = request.json(&serde_json::json!({ "to": to }));
    }
    print_answer(request, &url).await
}

/// `distraft member ...`.
pub async fn member(command: MemberCommand) -> anyhow::Result<()> {
    let base = |target: &Target| format!("{}/cluster/members", target.url.trim_end_matches('/'));
    let query =
        |change: &ChangeFlags| format!("?dry_run={}&force={}", change.dry_run, change.force);
    let (request, url) = match &command {
        MemberCommand::List { target } => {
            let url = base(target);
            (http_client(target)?.get(&url), url)
        }
        MemberCommand::Add {
            target,
            name,
            peer,
            client,
            learner,
            change,
        } => {
            let url = format!("{}{}", base(target), query(change));
            let body = serde_json::json!({
                "name": name, "peer": peer, "client": client, "learner": learner,
            });
            (http_client(target)?.post(&url).json(&body), url)
        }
        MemberCommand::Promote {
            target,
            name,
            change,
        } => {
            let url = format!(
                "{}/{}/promote{}",
                base(target),
                segment(name),
                query(change)
            );
            (http_client(target)?.post(&url), url)
        }
        MemberCommand::Remove {
            target,
            name,
            change,
        } => {
            let url = format!("{}/{}{}", base(target), segment(name), query(change));
            (http_client(target)?.delete(&url), url)
        }
    };
    print_answer(request, &url).await
}

/// `text` as one URL path segment.
fn segment(text: &str) -> String {
    utf8_percent_encode(text, KEY_ESCAPES).to_string()
}

/// Sends the request and prints the node's answer; a non-2xx answer is printed too,
/// then reported as an error so the exit status says it failed.
async fn print_answer(request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<()> {
    let response = request
        .send()
        .await
        .with_context(|| format!("no answer from {url}"))?;
    print_response(response, url).await
}

/// Prints an answer (see [`print_answer`]).
async fn print_response(response: reqwest::Response, url: &str) -> anyhow::Result<()> {
    let status = response.status();
    if response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
    {
        eprintln!("distraft: the write had been applied already; this is its first outcome");
    }
    let body = response
        .text()
        .await
        .with_context(|| format!("reading the answer from {url}"))?;
    print!("{body}");
    if !body.ends_with('\n') {
        println!();
    }
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_escaped_path_segment() {
        assert_eq!(key_url("http://h:1/", "a b/c"), "http://h:1/a%20b%2Fc");
        assert_eq!(key_url("http://h:1", "é-_.~"), "http://h:1/%C3%A9-_.~");
        assert_eq!(key_url("http://h:1", "100%+"), "http://h:1/100%25%2B");
        assert_eq!(kv_url("http://h:1/", "stop"), "http://h:1/v1/kv/stop");
        assert_eq!(kv_url("http://h:1", "a b/c"), "http://h:1/v1/kv/a%20b%2Fc");
    }
}
