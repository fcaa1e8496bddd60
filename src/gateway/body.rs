//! Reading a `POST /<key>` body: within its size and time bounds, a refused one read
//! and dropped so that the client sees the answer, and its `value` taken from a form
//! or a JSON object.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::Value;

use super::decode::percent_decode_utf8;
use super::response::ApiError;

/// How a `POST /<key>` carries its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFormat {
    /// `value=<v>`, as curl -d and the original API.
    Form,
    /// `{"value": "<v>"}`, as the original viewer's later versions send it.
    Json,
}

impl BodyFormat {
    /// The format a `Content-Type` names (parameters such as `charset` ignored).
    pub(super) fn of(content_type: &str) -> Option<BodyFormat> {
        let mime = content_type.split(';').next()?.trim();
        if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Some(BodyFormat::Form)
        } else if mime.eq_ignore_ascii_case("application/json") {
            Some(BodyFormat::Json)
        } else {
            None
        }
    }
}

/// Reads a request body of at most `limit` bytes. A larger one is refused: at once when
/// its declared length is larger than we would ever discard, else once it is
/// discarded (see [`discard_body`]).
pub(super) async fn read_body<S, B>(
    mut body: S,
    content_length: Option<u64>,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let too_large = || ApiError::too_large(format!("request body is larger than {limit} bytes"));
    match content_length {
        Some(length) if length > (limit + MAX_DISCARD_BYTES) as u64 => {
            return Err(too_large().closing_connection())
        }
        Some(length) if length > limit as u64 => return Err(discard_body(body, too_large()).await),
        _ => {}
    }
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if collected.len() + chunk.remaining() > limit {
            return Err(discard_body(body, too_large()).await);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let read = part.len();
            chunk.advance(read);
        }
    }
    Ok(collected.freeze())
}

/// [`read_body`] bounded in time too: a body that has not arrived within `timeout`
/// is answered 408 and its connection closed (a slow sender holds one of the bounded
/// connections for no longer than that).
pub(super) async fn read_body_within<S, B>(
    body: S,
    content_length: Option<u64>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    tokio::time::timeout(timeout, read_body(body, content_length, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                warp::http::StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {timeout:?}"),
            )
            .closing_connection()
        })?
}

/// At most this much of a rejected body is read and dropped, within this time; past
/// that the connection is closed instead.
pub(super) const MAX_DISCARD_BYTES: usize = 16 * 1024 * 1024;
pub(super) const MAX_DISCARD_TIME: Duration = Duration::from_secs(5);

/// Reads and drops the rest of a body before answering `error`: a client still sending
/// it would otherwise meet a reset connection instead of our answer (the kernel resets
/// a socket closed with unread data). Past the bounds, the answer closes the
/// connection instead.
pub(super) async fn discard_body<S, B>(mut body: S, error: ApiError) -> ApiError
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let drained = tokio::time::timeout(MAX_DISCARD_TIME, async {
        let mut discarded = 0;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                return false;
            };
            discarded += chunk.remaining();
            if discarded > MAX_DISCARD_BYTES {
                return false;
            }
        }
        true
    })
    .await;
    match drained {
        Ok(true) => error,
        Ok(false) | Err(_) => error.closing_connection(),
    }
}

/// The first `value` field of an `application/x-www-form-urlencoded` body (as Flask's
/// `request.form['value']`), which must be present and valid UTF-8 once decoded (an
/// empty one is refused with the other rules of values, in `Gateway::put`).
pub(super) fn form_value(body: &[u8]) -> Result<String, ApiError> {
    for pair in body.split(|&b| b == b'&') {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        let name = percent_decode_utf8(name, true)
            .map_err(|e| ApiError::bad_request(format!("invalid form field name: {e}")))?;
        if name != "value" {
            continue;
        }
        return percent_decode_utf8(value, true)
            .map_err(|e| ApiError::bad_request(format!("invalid value: {e}")));
    }
    Err(ApiError::bad_request("missing form field: value"))
}

/// The string member `name` of an optional JSON object body (the operations routes'
/// options, as `POST /cluster/leader`'s `{"to": "<name>"}`): `None` when the body is
/// empty or the member absent or null.
pub(super) fn optional_json_string(body: &[u8], name: &str) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let Value::Object(mut members) = parsed else {
        return Err(ApiError::bad_request(format!(
            "invalid JSON body: expected an object {{\"{name}\": \"...\"}}"
        )));
    };
    match members.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be a JSON string"
        ))),
    }
}

/// The `value` of a JSON body `{"value": "<v>"}`: an object whose `value` is a string
/// (other members are ignored, as other form fields are; an empty one is refused with
/// the other rules of values, in `Gateway::put`).
pub(super) fn json_value(body: &[u8]) -> Result<String, ApiError> {
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let Value::Object(mut members) = parsed else {
        return Err(ApiError::bad_request(
            "invalid JSON body: expected an object {\"value\": \"<value>\"}",
        ));
    };
    match members.remove("value") {
        None | Some(Value::Null) => Err(ApiError::bad_request("missing JSON member: value")),
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(ApiError::bad_request("value must be a JSON string")),
    }
}
