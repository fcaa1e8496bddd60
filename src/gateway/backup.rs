//! `GET /v1/backup`: a backup file streamed over HTTP, from Admin.Backup (a path no
//! key can be: two segments).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::response::ApiError;
use super::Gateway;
use crate::proto::v1::BackupRequest;

/// As Admin.Backup's own wait for a snapshot, and a little more.
const OPEN_WAIT: Duration = Duration::from_secs(310);

/// Query options of `GET /v1/backup`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackupOptions {
    #[serde(default)]
    stale: bool,
}

pub(super) fn backup_route(
    with_gateway: impl Filter<Extract = (Arc<Gateway>,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    authorized: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "backup")
        .and(warp::get())
        .and(authorized)
        .and(warp::query::<BackupOptions>())
        .and(with_gateway)
        .then(|options: BackupOptions, gw: Arc<Gateway>| async move {
            match gw.backup(options.stale).await {
                Ok(response) => response,
                Err(error) => gw.respond_with(Err(error)),
            }
        })
}

impl Gateway {
    /// The backup file as the body, its size as Content-Length (a body cut short by a
    /// failure mid-way is then visibly short), its index in `X-Distraft-Index`.
    async fn backup(&self, stale: bool) -> Result<Response, ApiError> {
        let call = self
            .backend
            .admin
            .backup(self.request(BackupRequest { stale }));
        let mut chunks = match tokio::time::timeout(OPEN_WAIT, call).await {
            Ok(answer) => answer?.into_inner(),
            Err(_) => return Err(ApiError::unavailable("no backup within its wait")),
        };
        let first = match chunks.next().await {
            Some(first) => first?,
            None => return Err(ApiError::unavailable("the backup ended before it began")),
        };
        let (total, index) = (first.total_bytes, first.index);
        // The body must be Sync: the chunks pass through a channel.
        let (tx, rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
        tokio::spawn(async move {
            if tx.send(Ok(first.data)).await.is_err() {
                return;
            }
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk
                    .map(|c| c.data)
                    .map_err(|status| std::io::Error::other(status.message().to_string()));
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut response = warp::reply::stream(ReceiverStream::new(rx)).into_response();
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
        headers.insert("x-distraft-index", HeaderValue::from(index));
        if let Ok(disposition) = HeaderValue::from_str(&format!(
            "attachment; filename=\"distraft-{index:020}.backup\""
        )) {
            headers.insert(header::CONTENT_DISPOSITION, disposition);
        }
        Ok(response)
    }
}
