//! The NotificationService handlers.

use std::collections::BTreeSet;

use parley_proto::notification::{self as pb, notification_service_server::NotificationService};
use parley_server::{Caller, Uid, now_ms};
use tonic::{Request, Response, Status};

use crate::store::{OfflineBatch, QueueError, QueueStore};

/// Recipients in one EnqueueOffline batch.
pub const MAX_RECIPIENTS: usize = 100_000;
/// Longest group name accepted, in characters.
const MAX_GROUP_NAME_CHARS: usize = 128;

/// Handlers over a queue store.
pub struct NotificationApi<S> {
    store: S,
}

impl<S: QueueStore> NotificationApi<S> {
    /// Handlers over `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

fn positive(what: &str, raw: u64) -> Result<i64, Status> {
    i64::try_from(raw)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| Status::invalid_argument(format!("{what} must be a positive id")))
}

/// Validates a batch at the edge: ids in range, uids well formed, recipients
/// deduplicated and bounded.
fn batch(request: pb::EnqueueOfflineRequest) -> Result<OfflineBatch, Status> {
    let invalid_uid =
        |_| Status::invalid_argument("recipient_uids and sender_uid must be valid uids");
    let sender = Uid::parse(&request.sender_uid).map_err(invalid_uid)?;
    if request.recipient_uids.len() > MAX_RECIPIENTS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_RECIPIENTS} recipients per batch"
        )));
    }
    if request.group_name.chars().count() > MAX_GROUP_NAME_CHARS {
        return Err(Status::invalid_argument("group_name is too long"));
    }
    let recipients = request
        .recipient_uids
        .iter()
        .map(|u| Uid::parse(u).map(Uid::into_string).map_err(invalid_uid))
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(OfflineBatch {
        gid: positive("gid", request.gid)?,
        msgid: positive("msgid", request.msgid)?,
        seq: positive("seq", request.seq)?,
        sender_uid: sender.into_string(),
        group_name: request.group_name,
        recipients: recipients.into_iter().collect(),
    })
}

fn unavailable(error: QueueError) -> Status {
    tracing::error!(error = %error, "push queue failed");
    Status::unavailable("push queue unavailable; retry")
}

fn not_built() -> Status {
    Status::unimplemented("device registration and mutes are not available yet")
}

#[tonic::async_trait]
impl<S: QueueStore> NotificationService for NotificationApi<S> {
    async fn register_device(
        &self,
        _request: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        Err(not_built())
    }

    async fn unregister_device(
        &self,
        _request: Request<pb::UnregisterDeviceRequest>,
    ) -> Result<Response<pb::UnregisterDeviceResponse>, Status> {
        Err(not_built())
    }

    async fn set_mute(
        &self,
        _request: Request<pb::SetMuteRequest>,
    ) -> Result<Response<pb::SetMuteResponse>, Status> {
        Err(not_built())
    }

    async fn enqueue_offline(
        &self,
        request: Request<pb::EnqueueOfflineRequest>,
    ) -> Result<Response<pb::EnqueueOfflineResponse>, Status> {
        Caller::require_service(&request, "message")?;
        let batch = batch(request.into_inner())?;
        let queued = self
            .store
            .enqueue(&batch, now_ms())
            .await
            .map_err(unavailable)?;
        tracing::info!(
            gid = batch.gid,
            seq = batch.seq,
            recipients = batch.recipients.len(),
            queued,
            "offline pushes queued"
        );
        Ok(Response::new(pb::EnqueueOfflineResponse {
            queued: u32::try_from(queued).unwrap_or(u32::MAX),
        }))
    }
}
