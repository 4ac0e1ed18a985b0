//! The NotificationService handlers.

use std::collections::BTreeSet;

use parley_proto::{
    message as mpb,
    notification::{self as pb, notification_service_server::NotificationService},
};
use parley_server::upstream::MessageClient;
use parley_server::{
    Caller, Error, Reason, Uid,
    caller::{acting_for, check_device_id},
    ids::positive,
    millis, now_ms,
};
use tonic::{Request, Response, Status};

use crate::{
    push::{Device, Platform},
    store::{OfflineBatch, QueueStore, Registered},
    worker::Policy,
};

/// Recipients in one EnqueueOffline batch.
pub const MAX_RECIPIENTS: usize = 100_000;
/// Most messages in one EnqueueOfflineBatch.
pub const MAX_BATCH_MESSAGES: usize = 100;
/// Longest group name accepted, in characters.
const MAX_GROUP_NAME_CHARS: usize = 128;
/// Devices with push tokens per user: each one is pushed for every message.
pub const MAX_DEVICES: usize = 20;

/// Handlers over a store.
pub struct NotificationApi<S> {
    store: S,
    policy: Policy,
    message: MessageClient,
}

impl<S: QueueStore> NotificationApi<S> {
    /// Handlers over `store`, queueing with `policy`'s collapse windows;
    /// `message` vouches for membership.
    pub fn new(store: S, policy: Policy, message: MessageClient) -> Self {
        Self {
            store,
            policy,
            message,
        }
    }

    /// Succeeds when `uid` is a member of `gid`; the message service's own
    /// refusal (PERMISSION_DENIED for a non-member, NOT_FOUND for no such
    /// group) otherwise.
    async fn require_member(&self, uid: &Uid, gid: u64) -> Result<(), Status> {
        let request = mpb::ListMembersRequest {
            gid,
            page_size: 1,
            page_token: String::new(),
        };
        self.message
            .clone()
            .list_members(acting_for(uid, request))
            .await
            .map(|_| ())
    }
}

/// Validates a batch at the edge: ids in range, uids well formed, recipients
/// deduplicated and bounded.
fn batch(request: pb::EnqueueOfflineRequest, due_at_ms: i64) -> Result<OfflineBatch, Error> {
    let sender =
        Uid::parse(&request.sender_uid).map_err(|e| Error::invalid("sender_uid", e.to_string()))?;
    if request.recipient_uids.len() > MAX_RECIPIENTS {
        return Err(Error::invalid(
            "recipient_uids",
            format!("at most {MAX_RECIPIENTS} per batch"),
        ));
    }
    if request.group_name.chars().count() > MAX_GROUP_NAME_CHARS {
        return Err(Error::invalid(
            "group_name",
            format!("at most {MAX_GROUP_NAME_CHARS} characters"),
        ));
    }
    let recipients = request
        .recipient_uids
        .iter()
        .enumerate()
        .map(|(i, u)| {
            Uid::parse(u)
                .map(Uid::into_string)
                .map_err(|e| Error::invalid(format!("recipient_uids[{i}]"), e.to_string()))
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(OfflineBatch {
        gid: positive(request.gid, "gid")?,
        msgid: positive(request.msgid, "msgid")?,
        seq: positive(request.seq, "seq")?,
        sender_uid: sender.into_string(),
        group_name: request.group_name,
        recipients: recipients.into_iter().collect(),
        due_at_ms,
    })
}

/// Whether every character of `raw` passes `allowed` and its length is in `len`.
fn shaped(raw: &str, len: std::ops::RangeInclusive<usize>, allowed: fn(char) -> bool) -> bool {
    len.contains(&raw.len()) && raw.chars().all(allowed)
}

/// Validates a registration: the token's shape for its platform, the app id
/// (APNs topic, required; FCM project, optional) and the locale.
fn device(uid: Uid, request: pb::RegisterDeviceRequest) -> Result<Device, Error> {
    check_device_id(&request.device_id, "device_id")?;
    let platform = Platform::from_proto(request.platform)
        .ok_or_else(|| Error::invalid("platform", "APNS or FCM"))?;
    match platform {
        Platform::Apns => {
            if !shaped(&request.token, 64..=200, |c| c.is_ascii_hexdigit())
                || !request.token.len().is_multiple_of(2)
            {
                return Err(Error::invalid(
                    "token",
                    "an APNs token is 64 to 200 hex digits",
                ));
            }
            let topic = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
            if !shaped(&request.app_id, 1..=255, topic) {
                return Err(Error::invalid(
                    "app_id",
                    "the app's APNs topic (its bundle id)",
                ));
            }
        }
        Platform::Fcm => {
            let token = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-');
            if !shaped(&request.token, 32..=4096, token) {
                return Err(Error::invalid(
                    "token",
                    "an FCM token is 32 to 4096 characters from [A-Za-z0-9_:-]",
                ));
            }
            let project = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
            if !request.app_id.is_empty() && !shaped(&request.app_id, 6..=30, project) {
                return Err(Error::invalid(
                    "app_id",
                    "empty or an FCM project id (6 to 30 of [a-z0-9-])",
                ));
            }
        }
    }
    let locale = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    if !shaped(&request.locale, 0..=35, locale) {
        return Err(Error::invalid("locale", "a BCP 47 tag such as en-GB"));
    }
    Ok(Device {
        uid: uid.into_string(),
        device_id: request.device_id,
        platform,
        token: request.token,
        app_id: request.app_id,
        locale: request.locale,
    })
}

#[tonic::async_trait]
impl<S: QueueStore> NotificationService for NotificationApi<S> {
    async fn register_device(
        &self,
        request: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        let uid = Caller::user_of(&request)?;
        let device = device(uid, request.into_inner())?;
        let registered = self
            .store
            .register_device(&device, MAX_DEVICES, now_ms())
            .await?;
        let replaced = match registered {
            Registered::Full => {
                return Err(Error::refused_because(
                    Reason::TooManyDevices,
                    format!(
                        "at most {MAX_DEVICES} devices per user have push tokens; unregister one first"
                    ),
                )
                .into());
            }
            Registered::Replaced => true,
            Registered::New => false,
        };
        tracing::info!(uid = %device.uid, device = %device.device_id, platform = device.platform.name(), replaced, "push token registered");
        Ok(Response::new(pb::RegisterDeviceResponse { replaced }))
    }

    async fn unregister_device(
        &self,
        request: Request<pb::UnregisterDeviceRequest>,
    ) -> Result<Response<pb::UnregisterDeviceResponse>, Status> {
        let uid = Caller::user_of(&request)?;
        let device_id = request.into_inner().device_id;
        check_device_id(&device_id, "device_id")?;
        let removed = self
            .store
            .unregister_device(uid.as_str(), &device_id)
            .await?;
        Ok(Response::new(pb::UnregisterDeviceResponse { removed }))
    }

    async fn set_mute(
        &self,
        request: Request<pb::SetMuteRequest>,
    ) -> Result<Response<pb::SetMuteResponse>, Status> {
        let uid = Caller::user_of(&request)?;
        let request = request.into_inner();
        let gid = positive(request.gid, "gid")?;
        if request.until_ms < -1 {
            return Err(Error::invalid(
                "until_ms",
                "a time in milliseconds, -1 for ever or 0 to unmute",
            )
            .into());
        }
        // Unmuting is always allowed: a member who left may clear their mute.
        if request.until_ms != 0 {
            self.require_member(&uid, request.gid).await?;
        }
        self.store
            .set_mute(uid.as_str(), gid, request.until_ms)
            .await?;
        Ok(Response::new(pb::SetMuteResponse {
            until_ms: request.until_ms,
        }))
    }

    async fn enqueue_offline(
        &self,
        request: Request<pb::EnqueueOfflineRequest>,
    ) -> Result<Response<pb::EnqueueOfflineResponse>, Status> {
        Caller::require_service(&request, "message")?;
        let batch = self.due_batch(request.into_inner(), now_ms())?;
        let queued = self.enqueue(std::slice::from_ref(&batch)).await?;
        Ok(Response::new(pb::EnqueueOfflineResponse { queued }))
    }

    async fn enqueue_offline_batch(
        &self,
        request: Request<pb::EnqueueOfflineBatchRequest>,
    ) -> Result<Response<pb::EnqueueOfflineBatchResponse>, Status> {
        Caller::require_service(&request, "message")?;
        let messages = request.into_inner().messages;
        if messages.is_empty() || messages.len() > MAX_BATCH_MESSAGES {
            return Err(
                Error::invalid("messages", format!("1 to {MAX_BATCH_MESSAGES} messages")).into(),
            );
        }
        let listed = messages
            .iter()
            .map(|m| m.recipient_uids.len())
            .fold(0usize, usize::saturating_add);
        if listed > MAX_RECIPIENTS {
            return Err(Error::invalid(
                "messages",
                format!("at most {MAX_RECIPIENTS} recipient_uids in all"),
            )
            .into());
        }
        let now = now_ms();
        let batches = parley_server::check_each("messages", messages, |m| self.due_batch(m, now))?;
        let queued = self.enqueue(&batches).await?;
        Ok(Response::new(pb::EnqueueOfflineBatchResponse { queued }))
    }
}

impl<S: QueueStore> NotificationApi<S> {
    /// Checks one message's batch; its pushes are due after the collapse
    /// window for its group's size.
    fn due_batch(
        &self,
        request: pb::EnqueueOfflineRequest,
        now: i64,
    ) -> Result<OfflineBatch, Error> {
        let window = self.policy.window_for(request.group_size);
        batch(request, now.saturating_add(millis(window)))
    }

    /// Queues checked batches durably, in one transaction.
    async fn enqueue(&self, batches: &[OfflineBatch]) -> Result<u32, Status> {
        let queued = self.store.enqueue(batches, now_ms()).await?;
        tracing::debug!(
            messages = batches.len(),
            recipients = batches.iter().map(|b| b.recipients.len()).sum::<usize>(),
            queued,
            "offline pushes queued"
        );
        Ok(u32::try_from(queued).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(platform: pb::Platform, token: &str, app_id: &str) -> pb::RegisterDeviceRequest {
        pb::RegisterDeviceRequest {
            device_id: "phone-1".into(),
            platform: platform.into(),
            token: token.into(),
            app_id: app_id.into(),
            locale: "en-GB".into(),
        }
    }

    fn check(request: pb::RegisterDeviceRequest) -> Result<Device, Error> {
        device(Uid::parse("u1").expect("uid"), request)
    }

    #[test]
    fn token_shapes_are_checked_per_platform() {
        let apns = "0a".repeat(32);
        let fcm = format!("{}:{}", "A".repeat(22), "b_-9".repeat(30));
        assert!(check(request(pb::Platform::Apns, &apns, "com.example.chat")).is_ok());
        assert!(check(request(pb::Platform::Fcm, &fcm, "")).is_ok());
        assert!(check(request(pb::Platform::Fcm, &fcm, "parley-test")).is_ok());
        for bad in [
            request(pb::Platform::Apns, &fcm, "com.example.chat"),
            request(pb::Platform::Apns, &apns[..63], "com.example.chat"),
            request(pb::Platform::Apns, &apns, ""),
            request(pb::Platform::Fcm, &apns.replace('0', "!"), ""),
            request(pb::Platform::Fcm, "short", ""),
            request(pb::Platform::Fcm, &fcm, "Not A Project"),
            request(pb::Platform::Unspecified, &fcm, ""),
            pb::RegisterDeviceRequest {
                locale: "en GB".into(),
                ..request(pb::Platform::Fcm, &fcm, "")
            },
            pb::RegisterDeviceRequest {
                device_id: String::new(),
                ..request(pb::Platform::Fcm, &fcm, "")
            },
        ] {
            let status = Status::from(check(bad).expect_err("refused"));
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let named = parley_server::error::field_violations(&status);
            assert_eq!(named.len(), 1, "the malformed field is named: {status:?}");
        }
    }
}
