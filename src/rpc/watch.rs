//! Kv.Watch: a server stream of a watch's messages (see `src/watch/`), served by this
//! node from its own applied state, never forwarded.

use std::pin::Pin;

use futures::Stream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::auth::authorize;
use crate::config::Config;
use crate::driver::DriverHandle;
use crate::proto::v1 as pb;
use crate::validation::RequestRules;
use crate::watch::{Ended, Selector, Watch, WatchError, WatchMessage, WatchRequest};

/// The trailer of a watch that ended early: the index to watch again from.
pub const RESUME_INDEX: &str = "x-distraft-resume-index";

/// The stream of a watch's responses.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// Kv.Watch: the API token, the request checked, the watch registered, its stream.
pub(super) async fn watch(
    config: &Config,
    driver: &DriverHandle,
    request: Request<pb::WatchRequest>,
) -> Result<Response<WatchStream>, Status> {
    authorize(config, &request)?;
    let request = watch_request(&config.request_rules, request.get_ref())?;
    let watch = driver.watch(request).await.map_err(refused)?;
    Ok(Response::new(Box::pin(responses(watch))))
}

/// A watch request checked: a key as a key must be, a prefix no longer than a key.
pub fn watch_request(
    rules: &RequestRules,
    wire: &pb::WatchRequest,
) -> Result<WatchRequest, Status> {
    let selector = match wire.prefix {
        true => {
            if wire.key.len() > rules.max_key_bytes {
                return Err(Status::invalid_argument(format!(
                    "the prefix is {} bytes, more than a key may be ({})",
                    wire.key.len(),
                    rules.max_key_bytes
                )));
            }
            Selector::Prefix(wire.key.clone())
        }
        false => {
            rules.check_key(&wire.key)?;
            Selector::Key(wire.key.clone())
        }
    };
    Ok(WatchRequest {
        selector,
        start: Some(wire.start_index).filter(|start| *start > 0),
    })
}

/// Why a watch could not start, as a status.
pub fn refused(error: WatchError) -> Status {
    let message = error.to_string();
    match error {
        WatchError::TooManyWatchers { .. } | WatchError::Overloaded => {
            Status::resource_exhausted(message)
        }
        WatchError::ResyncTooLarge { .. } => Status::failed_precondition(message),
        WatchError::ShuttingDown => Status::unavailable(message),
    }
}

/// Why a watch ended, as the status that ends its stream (with the index to resume
/// from in the trailer when there is one).
pub fn ended(ended: Ended) -> Status {
    let message = ended.to_string();
    let (mut status, resume) = match ended {
        Ended::TooSlow { resume } => (Status::resource_exhausted(message), Some(resume)),
        Ended::Closed { resume } => (Status::unavailable(message), Some(resume)),
        Ended::ResyncTooLarge { .. } => (Status::failed_precondition(message), None),
    };
    if let Some(resume) = resume {
        status
            .metadata_mut()
            .insert(RESUME_INDEX, MetadataValue::from(resume));
    }
    status
}

/// The watch's messages as responses, ending with the status of why it ended.
fn responses(watch: Watch) -> impl Stream<Item = Result<pb::WatchResponse, Status>> + Send {
    futures::stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        match watch.next().await {
            Ok(message) => Some((Ok(response(message)), Some(watch))),
            Err(why) => Some((Err(ended(why)), None)),
        }
    })
}

/// One message of a watch as a response.
pub fn response(message: WatchMessage) -> pb::WatchResponse {
    match message {
        WatchMessage::Progress { index } => pb::WatchResponse {
            index,
            ..pb::WatchResponse::default()
        },
        WatchMessage::Events { index, events } => pb::WatchResponse {
            events: events
                .iter()
                .map(|event| pb::WatchEvent {
                    r#type: match event.value {
                        Some(_) => pb::watch_event::Type::Put,
                        None => pb::watch_event::Type::Delete,
                    } as i32,
                    key: event.key.clone(),
                    value: event.value.clone().unwrap_or_default(),
                    create_index: event.versions.create_index,
                    mod_index: event.versions.mod_index,
                    version: event.versions.version,
                    index: event.index,
                })
                .collect(),
            index,
            ..pb::WatchResponse::default()
        },
        WatchMessage::Resync { index, keys, more } => pb::WatchResponse {
            events: keys
                .into_iter()
                .map(|listed| pb::WatchEvent {
                    r#type: pb::watch_event::Type::Put as i32,
                    key: listed.key,
                    value: listed.value,
                    create_index: listed.versions.create_index,
                    mod_index: listed.versions.mod_index,
                    version: listed.versions.version,
                    index: listed.versions.mod_index,
                })
                .collect(),
            resync: true,
            index,
            more_resync: more,
        },
    }
}
