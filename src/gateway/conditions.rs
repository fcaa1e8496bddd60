//! Versions over HTTP: a key's `ETag` is its `mod_index` (`"<mod_index>"`), and a
//! write is made conditional with RFC 9110's own headers (§13.1): `If-Match:
//! "<mod_index>"` (only if the key is still at that version), `If-Match: *` (only if it
//! exists) and `If-None-Match: *` (only if it does not: create only). A condition that
//! does not hold is 412 Precondition Failed, with the key as it is in the body.

use serde_json::{json, Value};
use warp::http::{header, HeaderName, HeaderValue, StatusCode};

use super::response::ApiError;
use crate::proto::v1::{precondition::Must, KeyState, Precondition};

/// `X-Distraft-Index`: the log index an answer reflects.
pub(super) const X_DISTRAFT_INDEX: &str = "x-distraft-index";

/// The precondition of a write from its `If-Match` and `If-None-Match` headers
/// (`None`: unconditional). Only what a key-value write can mean is taken: one strong
/// entity tag or `*` for `If-Match`, `*` for `If-None-Match`, not both.
pub(super) fn precondition(
    if_match: Option<&str>,
    if_none_match: Option<&str>,
) -> Result<Option<Precondition>, ApiError> {
    let must = match (if_match.map(str::trim), if_none_match.map(str::trim)) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "send one of If-Match and If-None-Match, not both",
            ))
        }
        (Some("*"), None) => Must::Exists(true),
        (Some(tag), None) => Must::ModIndex(mod_index_of(tag)?),
        (None, Some("*")) => Must::Absent(true),
        (None, Some(other)) => {
            return Err(ApiError::bad_request(format!(
                "If-None-Match on a write takes only * (create only), not {other:?}"
            )))
        }
    };
    Ok(Some(Precondition { must: Some(must) }))
}

/// The `mod_index` an `If-Match` entity tag names: `"<digits>"`.
fn mod_index_of(tag: &str) -> Result<u64, ApiError> {
    if tag.starts_with("W/") {
        return Err(ApiError::bad_request(format!(
            "If-Match {tag:?}: a weak entity tag never matches a write (RFC 9110 §13.1.1); \
             send the ETag as it came: \"<mod_index>\""
        )));
    }
    tag.strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "If-Match {tag:?}: expected one entity tag as distraft sends them, \
                 \"<mod_index>\" (a number in double quotes), or *"
            ))
        })
}

/// The headers of an answer about a key at `mod_index`, reflecting the log at `index`.
pub(super) fn version_headers(
    mod_index: Option<u64>,
    index: u64,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![(
        HeaderName::from_static(X_DISTRAFT_INDEX),
        HeaderValue::from(index),
    )];
    if let Some(mod_index) = mod_index {
        headers.push((header::ETAG, etag(mod_index)));
    }
    headers
}

/// A key's entity tag: its `mod_index`, quoted (a strong tag).
fn etag(mod_index: u64) -> HeaderValue {
    // Digits and quotes only: always a valid header value.
    HeaderValue::from_str(&format!("\"{mod_index}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The versions of a key as the JSON answers show them.
pub(super) fn versions_json(create_index: u64, mod_index: u64, version: u64) -> Value {
    json!({"create_index": create_index, "mod_index": mod_index, "version": version})
}

/// 412 Precondition Failed: the key as the write found it (`"current": null` when
/// absent), with its ETag when it exists.
pub(super) fn precondition_failed(message: String, state: KeyState) -> ApiError {
    let current = match state.found {
        true => {
            let mut current = versions_json(state.create_index, state.mod_index, state.version);
            current["value"] = Value::String(state.value);
            current
        }
        false => Value::Null,
    };
    let mut error = ApiError::new(StatusCode::PRECONDITION_FAILED, message)
        .with_field("key", Value::String(state.key))
        .with_field("current", current);
    if state.found {
        error = error.with_header(header::ETAG, etag(state.mod_index));
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn must(if_match: Option<&str>, if_none_match: Option<&str>) -> Result<Option<Must>, u16> {
        precondition(if_match, if_none_match)
            .map(|p| p.and_then(|p| p.must))
            .map_err(|e| e.status.as_u16())
    }

    #[test]
    fn conditional_headers() {
        assert_eq!(must(None, None), Ok(None));
        assert_eq!(must(Some("\"12\""), None), Ok(Some(Must::ModIndex(12))));
        assert_eq!(must(Some(" \"0\" "), None), Ok(Some(Must::ModIndex(0))));
        assert_eq!(must(Some("*"), None), Ok(Some(Must::Exists(true))));
        assert_eq!(must(None, Some("*")), Ok(Some(Must::Absent(true))));
        for bad in [
            "12",
            "\"\"",
            "\"1a\"",
            "\"-1\"",
            "W/\"12\"",
            "\"1\", \"2\"",
            "\"99999999999999999999999\"",
        ] {
            assert_eq!(must(Some(bad), None), Err(400), "{bad}");
        }
        assert_eq!(must(None, Some("\"3\"")), Err(400));
        assert_eq!(must(Some("*"), Some("*")), Err(400));
    }
}
