//! Admin.Backup: a backup file streamed from this node (see `crate::backup`).

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use super::AdminService;
use crate::backup::stream::{stream, BackupStream};
use crate::driver::RequestError;
use crate::proto::v1 as pb;
use crate::rpc::auth::authorize;
use crate::rpc::outcome::status_of;

pub type BackupChunks = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// How long a backup may wait for its snapshot to be taken: a snapshot of a large
/// state is written at disk speed (about 10 s per GiB here), so the request timeout,
/// meant for a write, is too short.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(300);

impl AdminService {
    /// Opens a backup: the snapshot file it streams, with its header.
    pub(crate) async fn open_backup(&self, stale: bool) -> Result<BackupStream, Status> {
        let source = tokio::time::timeout(SNAPSHOT_WAIT, self.driver().backup(stale))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no snapshot for the backup within {}s",
                    SNAPSHOT_WAIT.as_secs()
                ))
            })?
            .map_err(|err| match err {
                RequestError::Rejected(reason) => Status::failed_precondition(reason),
                RequestError::Overloaded => {
                    Status::resource_exhausted("too many backups are waiting for a snapshot")
                }
                other => status_of(other),
            })?;
        Ok(stream(
            self.config().cluster_id,
            source,
            self.backups.pace.clone(),
        ))
    }

    pub(super) async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<BackupChunks>, Status> {
        authorize(self.config(), &request)?;
        let opened = self.open_backup(request.into_inner().stale).await?;
        let (total, index) = (opened.header.file_len(), opened.header.index);
        let mut first = true;
        let chunks = ReceiverStream::new(opened.chunks).map(move |chunk| match chunk {
            Ok(data) => {
                let (total_bytes, index) = match std::mem::take(&mut first) {
                    true => (total, index),
                    false => (0, 0),
                };
                Ok(pb::BackupChunk {
                    data,
                    total_bytes,
                    index,
                })
            }
            Err(err) => Err(Status::internal(format!("reading the snapshot: {err}"))),
        });
        Ok(Response::new(Box::pin(chunks)))
    }
}
