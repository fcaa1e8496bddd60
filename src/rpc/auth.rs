//! The API token on gRPC requests (see `src/access.rs` for the rule itself).

use tonic::{Request, Status};

use crate::config::Config;

/// The gRPC metadata carrying the API token: `Bearer <token>`.
pub(super) const AUTHORIZATION: &str = "authorization";

/// Refuses a protected request without the node's API token (if one is set).
pub(super) fn authorize<T>(config: &Config, request: &Request<T>) -> Result<(), Status> {
    let authorization = request
        .metadata()
        .get(AUTHORIZATION)
        .map(|value| value.as_bytes());
    config
        .access
        .authorize(authorization)
        .map_err(|denied| denied.status())
}
