//! What every request passes before its route: the `Host` header, CORS, the API
//! token, and the size of its head.

use std::{convert::Infallible, sync::Arc};

use warp::{
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    Filter, Rejection,
};

use super::response::ApiError;
use crate::access::{Access, CorsOrigins};

/// Header bytes (names and values) accepted per request. A head larger than hyper's own
/// ~400 KiB buffer is refused by hyper itself (made JSON by [`server`]); below that,
/// this limit refuses it here, with a more precise message.
pub(super) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// CORS for the allowed origins: the methods and headers the API uses.
pub(super) fn cors(origins: &CorsOrigins) -> warp::cors::Builder {
    let cors = warp::cors()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    match origins {
        CorsOrigins::Any => cors.allow_any_origin(),
        // Checked at start-up to be `scheme://host[:port]`, which warp parses.
        CorsOrigins::List(origins) => cors.allow_origins(origins.iter().map(String::as_str)),
    }
}

/// Refuses a request whose `Host` (or absolute URI) names a host this node does not
/// answer to: a page whose DNS name was rebound to this node's address.
pub(super) fn allowed_host(
    access: Arc<Access>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::host::optional()
        .and_then(move |authority: Option<warp::host::Authority>| {
            let allowed = access.hosts.allows(authority.as_ref().map(|a| a.as_str()));
            async move {
                match allowed {
                    true => Ok(()),
                    false => Err(warp::reject::custom(ApiError::new(
                        StatusCode::MISDIRECTED_REQUEST,
                        format!(
                            "this node does not answer to the host name {:?} (see DISTRAFT_ALLOWED_HOSTS)",
                            authority.map(|a| a.host().to_string()).unwrap_or_default()
                        ),
                    ))),
                }
            }
        })
        .untuple_one()
}

/// The outcome of checking a request's API token.
pub(super) fn credentials(
    access: Arc<Access>,
) -> impl Filter<Extract = (Result<(), ApiError>,), Error = Infallible> + Clone {
    warp::header::headers_cloned().map(move |headers: HeaderMap| {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        access.authorize(authorization).map_err(ApiError::denied)
    })
}

/// Refuses a request without the API token, when one is set.
pub(super) fn authorized(
    access: Arc<Access>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    credentials(access)
        .and_then(
            |checked: Result<(), ApiError>| async move { checked.map_err(warp::reject::custom) },
        )
        .untuple_one()
}

/// Rejects requests whose URI or headers exceed what any valid request needs, with the
/// status codes hyper would use, but as JSON.
pub(super) fn check_request_size() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(|headers: HeaderMap| async move {
            let bytes: usize = headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum();
            if bytes > MAX_HEADER_BYTES {
                return Err(warp::reject::custom(ApiError::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("request headers are {bytes} bytes, more than the maximum of {MAX_HEADER_BYTES}"),
                )));
            }
            Ok(())
        })
        .untuple_one()
}
