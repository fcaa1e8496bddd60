//! `GET /v1/watch`: a watch over HTTP (a path no key can be: two segments), on this
//! node's Kv.Watch, called in process like every route.
//!
//! - Long-poll (Consul style): `?key=K` or `?prefix=P`, `&index=N` (the first index of
//!   interest; absent or 0: from now), `&wait=30s` (at most 5 minutes). Answers at
//!   once when changes from `N` on exist (at most about 1,000 a response, never
//!   splitting one entry's), else when one arrives or `wait` runs out:
//!   `{"ok": true, "events": [...], "resync": b, "index": i, "next": n}`; pass `next`
//!   as `index` the next time.
//! - Server-sent events (`Accept: text/event-stream`): one stream, each event with
//!   `id: <index>` once its entry is complete, so `Last-Event-ID` resumes it.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use warp::http::header;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::conditions::{version_headers, versions_json};
use super::response::ApiError;
use super::{Answer, Gateway};
use crate::proto::v1::{watch_event, WatchEvent, WatchRequest, WatchResponse};
use crate::rpc::{WatchStream, RESUME_INDEX};

/// A long-poll waits this long when `wait` is not given.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest `wait`.
const MAX_WAIT: Duration = Duration::from_secs(5 * 60);
/// A long-poll answers with about this many changes at most (more if the last entry's
/// changes take it past; a resync is answered whole, up to its own bound).
const MAX_POLL_EVENTS: usize = 1000;
/// An event stream sends a comment this often, so that proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events relayed to an event stream's connection ahead of it (the watch's own buffer
/// is behind them).
const SSE_RELAY: usize = 64;

/// Query options of `GET /v1/watch`, as text: each is checked with its own message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WatchOptions {
    key: Option<String>,
    prefix: Option<String>,
    index: Option<String>,
    wait: Option<String>,
}

/// `GET /v1/watch`.
pub(super) fn watch_route(
    with_gateway: impl Filter<Extract = (Arc<Gateway>,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    authorized: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "watch")
        .and(warp::get())
        .and(authorized)
        .and(warp::query::<WatchOptions>())
        .and(warp::header::optional::<String>(header::ACCEPT.as_str()))
        .and(warp::header::optional::<String>("last-event-id"))
        .and(with_gateway)
        .then(
            |options: WatchOptions,
             accept: Option<String>,
             last_event_id: Option<String>,
             gw: Arc<Gateway>| async move {
                let stream = accept.is_some_and(|accept| accept.contains("text/event-stream"));
                match stream {
                    true => match gw.event_stream(options, last_event_id).await {
                        Ok(response) => response,
                        Err(error) => gw.respond_with(Err(error)),
                    },
                    false => gw.respond_with(gw.long_poll(options).await),
                }
            },
        )
}

/// What a watch asks, checked.
struct Asked {
    request: WatchRequest,
    wait: Duration,
}

impl Gateway {
    /// The options checked as Kv.Watch checks them: bad input is a 400 before any call.
    fn watch_options(&self, options: WatchOptions, start: Option<u64>) -> Result<Asked, ApiError> {
        let (key, prefix) = match (options.key, options.prefix) {
            (Some(key), None) => (key, false),
            (None, Some(prefix)) => (prefix, true),
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("give either key or prefix, not both"))
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "give the key to watch (key=K) or the prefix of the keys (prefix=P)",
                ))
            }
        };
        let index = match (start, options.index.as_deref()) {
            (Some(start), _) => start,
            (None, None) => 0,
            (None, Some(raw)) => raw.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid index {raw:?}: a non-negative whole number"
                ))
            })?,
        };
        let wait = match options.wait.as_deref() {
            None => DEFAULT_WAIT,
            Some(raw) => parse_wait(raw).map_err(ApiError::bad_request)?,
        };
        let request = WatchRequest {
            key,
            prefix,
            start_index: index,
        };
        crate::rpc::watch_request(&self.settings.request_rules, &request)
            .map_err(|status| ApiError::bad_request(status.message()))?;
        Ok(Asked { request, wait })
    }

    /// Opens the watch on this node's Kv.Watch.
    async fn open_watch(&self, request: WatchRequest) -> Result<WatchStream, ApiError> {
        self.call_kv(self.backend.kv.watch(self.request(request)))
            .await
            .map_err(ApiError::from)
    }

    /// A long-poll: what is there from the index on, else the first change within the
    /// wait, else nothing once it ran out.
    async fn long_poll(&self, options: WatchOptions) -> Result<Answer, ApiError> {
        let asked = self.watch_options(options, None)?;
        let start = asked.request.start_index;
        let deadline = Instant::now() + asked.wait;
        let mut stream = self.open_watch(asked.request).await?;
        let mut poll = Poll::default();
        // First what the watch brings at once: a resync or the history's changes, up
        // to the progress message that says it caught up.
        while !poll.caught_up && (poll.events.len() < MAX_POLL_EVENTS || poll.resync_open) {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(response))) => poll.take(response),
                Ok(Some(Err(status))) => return poll.answer_or(status, start),
                // Out of time (or the stream ended) before it caught up: what came.
                Ok(None) | Err(_) => break,
            }
        }
        // Nothing yet: wait for the first change, then take what else is ready.
        if poll.events.is_empty() && !poll.resync {
            if let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.next()).await {
                match item {
                    Ok(response) => poll.take(response),
                    Err(status) => return poll.answer_or(status, start),
                }
                loop {
                    if poll.resync_open {
                        // The rest of a resync (a snapshot install while waiting).
                        match tokio::time::timeout_at(deadline, stream.next()).await {
                            Ok(Some(Ok(response))) => poll.take(response),
                            _ => break,
                        }
                        continue;
                    }
                    if poll.resync || poll.events.len() >= MAX_POLL_EVENTS {
                        break;
                    }
                    match stream.next().now_or_never() {
                        // A resync after changes is left for the next poll, which
                        // meets it again (its index is now before the history).
                        Some(Some(Ok(response))) if !response.resync => poll.take(response),
                        _ => break,
                    }
                }
            }
        }
        Ok(poll.answer(start))
    }

    /// A server-sent event stream of the watch, resumed from `Last-Event-ID` + 1 when
    /// the client sends one.
    async fn event_stream(
        &self,
        options: WatchOptions,
        last_event_id: Option<String>,
    ) -> Result<Response, ApiError> {
        let start = match last_event_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(
                raw.parse::<u64>()
                    .ok()
                    .and_then(|id| id.checked_add(1))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "invalid Last-Event-ID {raw:?}: an index this API sent"
                        ))
                    })?,
            ),
        };
        let asked = self.watch_options(options, start)?;
        let stream = self.open_watch(asked.request).await?;
        let events = sse_events(stream);
        let keep_alive = warp::sse::keep_alive().interval(KEEP_ALIVE);
        Ok(warp::sse::reply(keep_alive.stream(events)).into_response())
    }
}

/// What a long-poll collected.
#[derive(Default)]
struct Poll {
    events: Vec<Value>,
    resync: bool,
    /// Every change up to it was seen.
    index: Option<u64>,
    caught_up: bool,
    /// A resync began and its last page has not come yet.
    resync_open: bool,
}

impl Poll {
    fn take(&mut self, response: WatchResponse) {
        if response.resync && !self.resync {
            // A resync replaces whatever came before it.
            self.events.clear();
            self.resync = true;
        }
        let progress = response.events.is_empty() && !response.resync;
        self.caught_up |= progress;
        self.events.extend(response.events.iter().map(event_json));
        self.resync_open = response.more_resync;
        if !response.more_resync {
            self.index = Some(response.index);
        }
    }

    /// The answer; `next` is where the next poll continues.
    fn answer(mut self, start: u64) -> Answer {
        if self.resync_open {
            // Part of a resync would read as deletions of the keys it lacks: none of
            // it, and the next poll asks again from the same index.
            self.events.clear();
            self.resync = false;
        }
        let index = self.index.unwrap_or(start.saturating_sub(1));
        let next = (index + 1).max(start);
        let body = json!({
            "ok": true,
            "events": self.events,
            "resync": self.resync,
            "index": index,
            "next": next,
        });
        (body, version_headers(None, index))
    }

    /// The watch ended with `status`: what came before it, if anything did (the next
    /// poll meets the status itself), else the status.
    fn answer_or(self, status: tonic::Status, start: u64) -> Result<Answer, ApiError> {
        match (self.events.is_empty() || self.resync_open) && self.index.is_none() {
            true => Err(ApiError::from(status)),
            false => Ok(self.answer(start)),
        }
    }
}

/// One change as JSON: `{"type": "put", "key", "value", versions..., "index"}`, or
/// `{"type": "delete", "key", "index"}`.
fn event_json(event: &WatchEvent) -> Value {
    match event.r#type() {
        watch_event::Type::Put => {
            let mut item = versions_json(event.create_index, event.mod_index, event.version);
            item["type"] = json!("put");
            item["key"] = json!(event.key);
            item["value"] = json!(event.value);
            item["index"] = json!(event.index);
            item
        }
        watch_event::Type::Delete => {
            json!({"type": "delete", "key": event.key, "index": event.index})
        }
    }
}

/// The watch's responses as server-sent events: `put` and `delete` (one per change;
/// the last of each entry carries `id: <index>`), `resync` (a page of keys, `id` on the
/// last page), `progress` (caught up to `id`), and at the end `overflow` (too slow:
/// `{"resume": n}`) or `error`.
///
/// A task of its own relays them (warp wants a stream it may share between threads,
/// which the watch's is not); it ends, dropping the watch, when the client goes.
fn sse_events(
    mut stream: WatchStream,
) -> impl Stream<Item = Result<warp::sse::Event, std::convert::Infallible>> + Send + Sync {
    let (sender, receiver) = tokio::sync::mpsc::channel(SSE_RELAY);
    tokio::spawn(async move {
        loop {
            // A client that went away ends the relay at once, even while the watch is
            // idle, so that the watcher is let go (the hub sweeps it).
            let item = tokio::select! {
                item = stream.next() => item,
                () = sender.closed() => return,
            };
            let (events, keep_going) = match item {
                Some(Ok(response)) => (response_events(response), true),
                Some(Err(status)) => (vec![ended_event(&status)], false),
                None => (Vec::new(), false),
            };
            for event in events {
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if !keep_going {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

fn response_events(response: WatchResponse) -> Vec<warp::sse::Event> {
    let id = response.index.to_string();
    if response.resync {
        let keys: Vec<Value> = response.events.iter().map(event_json).collect();
        let data = json!({"index": response.index, "keys": keys, "more": response.more_resync});
        let event = warp::sse::Event::default()
            .event("resync")
            .data(data.to_string());
        return vec![match response.more_resync {
            true => event,
            false => event.id(id),
        }];
    }
    if response.events.is_empty() {
        let data = json!({"index": response.index});
        return vec![warp::sse::Event::default()
            .event("progress")
            .id(id)
            .data(data.to_string())];
    }
    // The last change of each entry carries its index as the id: resuming after it
    // never splits an entry's changes.
    let ends_entry = |i: usize| {
        response
            .events
            .get(i + 1)
            .is_none_or(|after| after.index != response.events[i].index)
    };
    response
        .events
        .iter()
        .enumerate()
        .map(|(i, change)| {
            let name = match change.r#type() {
                watch_event::Type::Put => "put",
                watch_event::Type::Delete => "delete",
            };
            let event = warp::sse::Event::default()
                .event(name)
                .data(event_json(change).to_string());
            match ends_entry(i) {
                true => event.id(change.index.to_string()),
                false => event,
            }
        })
        .collect()
}

/// The last event of a stream that ended early.
fn ended_event(status: &tonic::Status) -> warp::sse::Event {
    let resume = status
        .metadata()
        .get(RESUME_INDEX)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match (status.code(), resume) {
        (tonic::Code::ResourceExhausted, Some(resume)) => warp::sse::Event::default()
            .event("overflow")
            .data(json!({"resume": resume, "error": status.message()}).to_string()),
        _ => warp::sse::Event::default()
            .event("error")
            .data(json!({"resume": resume, "error": status.message()}).to_string()),
    }
}

/// A wait: a whole number of `ms`, `s` or `m` (seconds without a unit), at most
/// [`MAX_WAIT`].
fn parse_wait(raw: &str) -> Result<Duration, String> {
    let invalid =
        || format!("invalid wait {raw:?}: a whole number of ms, s or m (e.g. 30s), at most 5m");
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => raw.split_at(at),
        None => (raw, "s"),
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let wait = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        _ => return Err(invalid()),
    };
    match wait <= MAX_WAIT {
        true => Ok(wait),
        false => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_with_their_units_and_bounds() {
        assert_eq!(parse_wait("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_wait("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_wait("12"), Ok(Duration::from_secs(12)));
        assert_eq!(parse_wait("5m"), Ok(MAX_WAIT));
        for bad in [
            "",
            "s",
            "-1s",
            "1h",
            "6m",
            "1.5s",
            "99999999999999999999s",
            "1 s",
        ] {
            assert!(parse_wait(bad).is_err(), "{bad:?}");
        }
    }
}
