//! The rules of a client request's key and value, and the one place they are checked.
//!
//! A request is checked once in each process it enters: by the HTTP gateway for its
//! clients (the key before the body is even read), by the Kv service for gRPC clients
//! and for writes a follower forwarded over the network. The gateway calls the Kv
//! service in process with requests it marked as [`checked`], and the service skips
//! its check for those: the mark is a tonic extension, which never crosses the
//! network, so no peer or client can forge it. Below the Kv service (driver, state
//! machine) nothing checks again.

use crate::proto::v1::{DeleteRequest, GetRequest, PutRequest};

/// The limits of a client's key and value (DISTRAFT_MAX_KEY_BYTES,
/// DISTRAFT_MAX_VALUE_BYTES); neither may be empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRules {
    /// Largest key accepted, in bytes of UTF-8 (once URL-decoded, over HTTP).
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes of UTF-8 (once form- or JSON-decoded, over HTTP).
    pub max_value_bytes: usize,
}

impl Default for RequestRules {
    /// The defaults of DISTRAFT_MAX_KEY_BYTES and DISTRAFT_MAX_VALUE_BYTES.
    fn default() -> Self {
        RequestRules {
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
        }
    }
}

/// Why a client request's key or value is refused: INVALID_ARGUMENT over gRPC; over
/// HTTP 413 when too large, else 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("the key is empty")]
    EmptyKey,
    #[error("the key is {bytes} bytes, more than the limit of {limit}")]
    KeyTooLarge { bytes: usize, limit: usize },
    #[error("the value is empty")]
    EmptyValue,
    #[error("the value is {bytes} bytes, more than the limit of {limit}")]
    ValueTooLarge { bytes: usize, limit: usize },
}

impl InvalidRequest {
    /// Whether the key or value was too large (rather than malformed).
    pub fn is_too_large(&self) -> bool {
        match self {
            InvalidRequest::KeyTooLarge { .. } | InvalidRequest::ValueTooLarge { .. } => true,
            InvalidRequest::EmptyKey | InvalidRequest::EmptyValue => false,
        }
    }
}

impl From<InvalidRequest> for tonic::Status {
    fn from(invalid: InvalidRequest) -> Self {
        tonic::Status::invalid_argument(invalid.to_string())
    }
}

/// The key and value (if it has one) of a Kv request.
pub trait KeyValue {
    fn key(&self) -> &str;
    fn value(&self) -> Option<&str>;
}

impl KeyValue for GetRequest {
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> Option<&str> {
        None
    }
}

impl KeyValue for PutRequest {
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> Option<&str> {
        Some(&self.value)
    }
}

impl KeyValue for DeleteRequest {
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> Option<&str> {
        None
    }
}

/// The mark of a request whose key and value this process has checked. A private
/// type: only this module makes one.
#[derive(Debug, Clone, Copy)]
struct Checked;

/// `request`, marked as checked, so that the Kv service does not check it again. Only
/// for a request whose key and value were checked with [`RequestRules::check_key`] and
/// [`RequestRules::check_value`] in this process.
pub fn checked<M: KeyValue>(mut request: tonic::Request<M>) -> tonic::Request<M> {
    request.extensions_mut().insert(Checked);
    request
}

/// Whether this process marked `request` as [`checked`].
pub fn is_checked<M>(request: &tonic::Request<M>) -> bool {
    request.extensions().get::<Checked>().is_some()
}

impl RequestRules {
    pub fn check_key(&self, key: &str) -> Result<(), InvalidRequest> {
        match key.len() {
            0 => Err(InvalidRequest::EmptyKey),
            bytes if bytes > self.max_key_bytes => Err(InvalidRequest::KeyTooLarge {
                bytes,
                limit: self.max_key_bytes,
            }),
            _ => Ok(()),
        }
    }

    pub fn check_value(&self, value: &str) -> Result<(), InvalidRequest> {
        match value.len() {
            0 => Err(InvalidRequest::EmptyValue),
            bytes if bytes > self.max_value_bytes => Err(InvalidRequest::ValueTooLarge {
                bytes,
                limit: self.max_value_bytes,
            }),
            _ => Ok(()),
        }
    }

    /// The Kv service's check of a request: its key and value, unless this process
    /// checked them already (the gateway's in-process call, see [`checked`]).
    pub fn check_unless_checked<M: KeyValue>(
        &self,
        request: &tonic::Request<M>,
    ) -> Result<(), InvalidRequest> {
        if is_checked(request) {
            return Ok(());
        }
        let message = request.get_ref();
        self.check_key(message.key())?;
        match message.value() {
            Some(value) => self.check_value(value),
            None => Ok(()),
        }
    }

    /// The largest key and value together: the largest command a client may write.
    pub fn largest_pair_bytes(&self) -> usize {
        self.max_key_bytes.saturating_add(self.max_value_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: RequestRules = RequestRules {
        max_key_bytes: 4,
        max_value_bytes: 6,
    };

    #[test]
    fn keys_up_to_the_limit_pass_and_others_are_refused() {
        assert_eq!(RULES.check_key("k"), Ok(()));
        assert_eq!(RULES.check_key("kkkk"), Ok(()), "exactly at the limit");
        assert_eq!(
            RULES.check_key("kkkkk"),
            Err(InvalidRequest::KeyTooLarge { bytes: 5, limit: 4 }),
            "one byte over"
        );
        assert_eq!(RULES.check_key(""), Err(InvalidRequest::EmptyKey));
    }

    #[test]
    fn values_up_to_the_limit_pass_and_others_are_refused() {
        assert_eq!(RULES.check_value("v"), Ok(()));
        assert_eq!(RULES.check_value("vvvvvv"), Ok(()), "exactly at the limit");
        assert_eq!(
            RULES.check_value("vvvvvvv"),
            Err(InvalidRequest::ValueTooLarge { bytes: 7, limit: 6 }),
            "one byte over"
        );
        assert_eq!(RULES.check_value(""), Err(InvalidRequest::EmptyValue));
    }

    #[test]
    fn sizes_are_bytes_of_utf8_not_characters() {
        // "é" is 2 bytes, "€" 3.
        assert_eq!(RULES.check_key("éé"), Ok(()), "4 bytes");
        assert_eq!(
            RULES.check_key("€é"),
            Err(InvalidRequest::KeyTooLarge { bytes: 5, limit: 4 })
        );
        assert_eq!(RULES.check_value("€€"), Ok(()), "6 bytes");
        assert_eq!(
            RULES.check_value("€€é"),
            Err(InvalidRequest::ValueTooLarge { bytes: 8, limit: 6 })
        );
    }

    #[test]
    fn each_refusal_has_one_message_a_grpc_code_and_a_size_class() {
        let cases = [
            (InvalidRequest::EmptyKey, "the key is empty", false),
            (
                InvalidRequest::KeyTooLarge { bytes: 5, limit: 4 },
                "the key is 5 bytes, more than the limit of 4",
                true,
            ),
            (InvalidRequest::EmptyValue, "the value is empty", false),
            (
                InvalidRequest::ValueTooLarge { bytes: 7, limit: 6 },
                "the value is 7 bytes, more than the limit of 6",
                true,
            ),
        ];
        for (invalid, message, too_large) in cases {
            assert_eq!(invalid.is_too_large(), too_large, "{invalid}");
            let status = tonic::Status::from(invalid);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(status.message(), message);
        }
    }

    fn put(key: &str, value: &str) -> tonic::Request<PutRequest> {
        tonic::Request::new(PutRequest {
            key: key.into(),
            value: value.into(),
            precondition: None,
        })
    }

    #[test]
    fn the_kv_service_checks_every_field_of_an_unmarked_request() {
        assert_eq!(RULES.check_unless_checked(&put("k", "v")), Ok(()));
        assert_eq!(
            RULES.check_unless_checked(&put("", "v")),
            Err(InvalidRequest::EmptyKey)
        );
        assert_eq!(
            RULES.check_unless_checked(&put("k", "")),
            Err(InvalidRequest::EmptyValue)
        );
        assert_eq!(
            RULES.check_unless_checked(&put("k", "vvvvvvv")),
            Err(InvalidRequest::ValueTooLarge { bytes: 7, limit: 6 })
        );
        let get = tonic::Request::new(GetRequest {
            key: "kkkkk".into(),
            stale: false,
        });
        assert!(RULES.check_unless_checked(&get).is_err());
        let delete = tonic::Request::new(DeleteRequest {
            key: String::new(),
            precondition: None,
        });
        assert_eq!(
            RULES.check_unless_checked(&delete),
            Err(InvalidRequest::EmptyKey)
        );
    }

    #[test]
    fn a_request_marked_checked_in_this_process_is_not_checked_again() {
        // Invalid on purpose: only skipping the check lets it through.
        let marked = checked(put("", "vvvvvvv"));
        assert!(is_checked(&marked));
        assert_eq!(RULES.check_unless_checked(&marked), Ok(()));
        assert!(!is_checked(&put("k", "v")));
    }

    #[test]
    fn the_mark_never_crosses_the_network() {
        // Only metadata (headers) go out with a request; the mark is not among them.
        let marked = checked(put("k", "v"));
        assert!(marked.metadata().is_empty(), "{:?}", marked.metadata());
    }
}
