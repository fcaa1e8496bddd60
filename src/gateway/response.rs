//! The gateway's answers: a failed request ([`ApiError`], also what its filters reject
//! with) and its mapping from gRPC statuses, and the JSON and text responses.

use serde_json::Value;
use tonic::Code;
use warp::{
    http::{header, HeaderName, HeaderValue, StatusCode},
    reply::Response,
    Rejection, Reply,
};

use crate::access::Denied;
use crate::validation::InvalidRequest;

/// A failed request: its HTTP status and the message for `"error"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    /// Answer with `Connection: close`: part of the request body was left unread, so
    /// the connection cannot carry another request.
    pub(super) close_connection: bool,
    /// More of the JSON answer besides `ok` and `error` (a 412's `current`).
    pub(super) fields: serde_json::Map<String, Value>,
    /// Headers of the answer (a 404's `X-Distraft-Index`, a 412's `ETag`).
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            close_connection: false,
            fields: serde_json::Map::new(),
            headers: Vec::new(),
        }
    }

    pub(super) fn with_field(mut self, name: &str, value: Value) -> Self {
        self.fields.insert(name.to_string(), value);
        self
    }

    pub(super) fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub(super) fn closing_connection(self) -> Self {
        Self {
            close_connection: true,
            ..self
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    pub(super) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub(super) fn denied(denied: Denied) -> Self {
        let status = match denied {
            Denied::Missing => StatusCode::UNAUTHORIZED,
            Denied::Wrong => StatusCode::FORBIDDEN,
        };
        Self::new(status, denied.message())
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(invalid: InvalidRequest) -> Self {
        match invalid.is_too_large() {
            true => Self::too_large(invalid.to_string()),
            false => Self::bad_request(invalid.to_string()),
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let http = match status.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            // Cancelled and Unknown are what a gRPC client sees when the deadline ran
            // out or the connection broke: like a timeout, the request may or may not
            // have happened; try again.
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // The quota, or this node's full disk: nothing was written.
            Code::ResourceExhausted
                if status
                    .metadata()
                    .contains_key(crate::rpc::INSUFFICIENT_STORAGE) =>
            {
                StatusCode::INSUFFICIENT_STORAGE
            }
            // Load: the forwarding cap or load shedding; nothing was written, try again.
            Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Ok | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match status.message() {
            "" => status.code().description().to_string(),
            message => message.to_string(),
        };
        Self::new(http, message)
    }
}

/// Turns a rejection (ours, or one warp made by itself) into the JSON error answer.
pub(super) fn rejection_response(rejection: Rejection, pretty: bool) -> Response {
    use warp::reject;
    // A combined rejection holds one reason per route tried. The routes whose path and
    // method matched know best, so their reasons come first; a wrong method only
    // matters when no route matched further, and an unknown path last of all.
    let error = if let Some(error) = rejection.find::<ApiError>() {
        error.clone()
    } else if let Some(e) = rejection.find::<reject::InvalidQuery>() {
        ApiError::bad_request(e.to_string())
    } else if let Some(e) = rejection.find::<reject::InvalidHeader>() {
        ApiError::bad_request(e.to_string())
    } else if let Some(e) = rejection.find::<reject::PayloadTooLarge>() {
        ApiError::too_large(e.to_string())
    } else if let Some(e) = rejection.find::<reject::LengthRequired>() {
        ApiError::new(StatusCode::LENGTH_REQUIRED, e.to_string())
    } else if let Some(e) = rejection.find::<reject::UnsupportedMediaType>() {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string())
    } else if let Some(e) = rejection.find::<warp::filters::cors::CorsForbidden>() {
        ApiError::new(StatusCode::FORBIDDEN, e.to_string())
    } else if rejection.find::<reject::MethodNotAllowed>().is_some() {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "no such route")
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{rejection:?}"))
    };
    error_response(&error, pretty)
}

pub(super) fn error_response(error: &ApiError, pretty: bool) -> Response {
    let mut body = error.fields.clone();
    body.insert("ok".to_string(), Value::Bool(false));
    body.insert("error".to_string(), Value::String(error.message.clone()));
    let mut response = json_response(error.status, &Value::Object(body), pretty);
    for (name, value) in &error.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    if error.close_connection {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A JSON answer with headers besides the JSON (a key's `ETag`, `X-Distraft-Index`).
pub(super) fn json_response_with(
    body: &Value,
    headers: Vec<(HeaderName, HeaderValue)>,
    pretty: bool,
) -> Response {
    let mut response = json_response(StatusCode::OK, body, pretty);
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response
}

/// A plain answer (metrics, health) of `content_type`.
pub(super) fn text_response(
    status: StatusCode,
    text: String,
    content_type: &'static str,
) -> Response {
    let mut response = warp::reply::with_status(text, status).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON answer; keys come out sorted (as Flask's `jsonify` did), with a final newline
/// for terminals.
pub(super) fn json_response(status: StatusCode, body: &Value, pretty: bool) -> Response {
    let mut text = if pretty {
        serde_json::to_string_pretty(body)
    } else {
        serde_json::to_string(body)
    }
    // A `Value` always encodes (its keys are strings); this is only a safe fallback.
    .unwrap_or_else(|_| r#"{"ok": false, "error": "could not encode the answer"}"#.to_string());
    text.push('\n');
    let mut response = warp::reply::with_status(text, status).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
