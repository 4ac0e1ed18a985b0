//! The client API: a stream's `RequestFrame`s, each made as the stream's user
//! against the services behind the gateway and answered by a `ResultFrame`
//! with the same request id. A refusal carries the service's code and reason,
//! and a retry hint when it was for load; the stream stays open.

use parley_proto::{
    gateway::{self as pb, request_frame::Call, result_frame::Result as Returned},
    message as mpb, notification as npb, receipt as rpb,
};
use parley_server::{Error, Reason, Uid, caller::acting_for, error, shed::retry_after_ms};
use tonic::Status;

use crate::{
    known::IdMap,
    session::{Upstream, delivered},
};

/// Messages per history page when the call names no limit, and at most.
const HISTORY_PAGE: u32 = 100;
const MAX_HISTORY_PAGE: u32 = 500;

/// Answers one request as `uid`, from its device `device_id`.
pub async fn answer(
    upstream: &Upstream,
    uid: &Uid,
    device_id: &str,
    request: pb::RequestFrame,
) -> pb::ResultFrame {
    let outcome = match request.call {
        Some(Call::ListGroups(call)) => list_groups(upstream, uid, call).await,
        Some(Call::ListMembers(call)) => list_members(upstream, uid, call).await,
        Some(Call::History(call)) => history(upstream, uid, call).await,
        Some(Call::Readers(call)) => readers(upstream, uid, call).await,
        Some(Call::CreateGroup(call)) => create_group(upstream, uid, call).await,
        Some(Call::AddMembers(call)) => add_members(upstream, uid, call).await,
        Some(Call::RemoveMembers(call)) => remove_members(upstream, uid, call.gid, call.uids).await,
        Some(Call::Leave(call)) => {
            remove_members(upstream, uid, call.gid, vec![uid.as_str().to_owned()]).await
        }
        Some(Call::RegisterPush(call)) => register_push(upstream, uid, device_id, call).await,
        Some(Call::UnregisterPush(_)) => unregister_push(upstream, uid, device_id).await,
        Some(Call::Mute(call)) => mute(upstream, uid, call).await,
        Some(Call::ReceiptPolicy(call)) => receipt_policy(upstream, uid, call).await,
        Some(Call::SetReceiptPrivacy(call)) => set_receipt_privacy(upstream, uid, call).await,
        Some(Call::GetReceiptPrivacy(call)) => get_receipt_privacy(upstream, uid, call).await,
        None => Err(Error::invalid("call", "the request names no call").into()),
    };
    match outcome {
        Ok(result) => pb::ResultFrame {
            request_id: request.request_id,
            result: Some(result),
            ..Default::default()
        },
        Err(status) => pb::ResultFrame {
            request_id: request.request_id,
            code: status.code() as i32,
            error: status.message().to_owned(),
            reason: error::reason_text(&status),
            retry_after_ms: retry_after_ms(&status),
            result: None,
        },
    }
}

/// A read of the client API made as `uid`: tried again within the gateway's
/// budget when the callee was unavailable (a restart, a failover), so the
/// app sees the answer rather than the blip.
pub(crate) async fn read<C, Q, R, Fut>(
    upstream: &Upstream,
    client: &C,
    uid: &Uid,
    request: Q,
    call: impl Fn(C, tonic::Request<Q>) -> Fut,
) -> Result<R, Status>
where
    C: Clone,
    Q: Clone,
    Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
{
    let answer = upstream
        .retries
        .idempotent(|| call(client.clone(), acting_for(uid, request.clone())))
        .await?;
    Ok(answer.into_inner())
}

/// A page of the user's groups from the message service, each with its
/// latest message.
async fn list_groups(
    upstream: &Upstream,
    uid: &Uid,
    call: pb::ListGroupsCall,
) -> Result<Returned, Status> {
    let request = mpb::ListGroupsRequest {
        page_size: call.page_size,
        page_token: call.page_token,
        with_last_message: true,
    };
    let page = read(
        upstream,
        &upstream.message,
        uid,
        request,
        |mut c, r| async move { c.list_groups(r).await },
    )
    .await?;
    Ok(Returned::Groups(pb::GroupsPage {
        groups: summaries(upstream, uid, page.groups).await?,
        next_page_token: page.next_page_token,
    }))
}

/// The groups as the user's group list shows them, with the user's unread
/// count in each from the receipt service. A group the receipt service does
/// not know yet (its membership is still in the message service's outbox)
/// counts every message as unread.
async fn summaries(
    upstream: &Upstream,
    uid: &Uid,
    groups: Vec<mpb::Group>,
) -> Result<Vec<pb::GroupSummary>, Status> {
    let gids: Vec<u64> = groups
        .iter()
        .filter(|group| group.last_seq > 0)
        .map(|group| group.gid)
        .collect();
    let read_seqs: IdMap<u64> = if gids.is_empty() {
        IdMap::default()
    } else {
        let request = rpb::UnreadCountsRequest {
            gids,
            page_size: 0,
            page_token: String::new(),
        };
        read(
            upstream,
            &upstream.receipt,
            uid,
            request,
            |mut c, r| async move { c.unread_counts(r).await },
        )
        .await?
        .groups
        .into_iter()
        .map(|counted| (counted.gid, counted.read_seq))
        .collect()
    };
    Ok(groups
        .into_iter()
        .map(|group| {
            let read_seq = read_seqs.get(&group.gid).copied().unwrap_or(0);
            pb::GroupSummary {
                gid: group.gid,
                direct: group.kind == mpb::GroupKind::Direct as i32,
                name: group.name,
                member_count: group.member_count,
                last_seq: group.last_seq,
                unread: group.last_seq.saturating_sub(read_seq),
                read_seq,
                last_message: group.last_message.map(delivered),
                receipt_policy: group.receipt_policy,
            }
        })
        .collect())
}

/// Creates a group with the user as its admin, or a direct chat (the one
/// that exists between the two, if any).
async fn create_group(
    upstream: &Upstream,
    uid: &Uid,
    call: pb::CreateGroupCall,
) -> Result<Returned, Status> {
    let kind = if call.direct {
        mpb::GroupKind::Direct
    } else {
        mpb::GroupKind::Group
    };
    let request = mpb::CreateGroupRequest {
        kind: kind.into(),
        name: call.name,
        member_uids: call.member_uids,
    };
    let created = upstream
        .message
        .clone()
        .create_group(acting_for(uid, request))
        .await?
        .into_inner();
    let group = created
        .group
        .ok_or_else(|| error::status(Reason::Internal, "the message service returned no group"))?;
    let group = summaries(upstream, uid, vec![group]).await?.pop();
    Ok(Returned::Created(pb::GroupCreated {
        group,
        existing: created.existing,
    }))
}

/// Adds members to a group the user administers.
async fn add_members(
    upstream: &Upstream,
    uid: &Uid,
    call: pb::AddMembersCall,
) -> Result<Returned, Status> {
    let request = mpb::AddMembersRequest {
        gid: call.gid,
        uids: call.uids,
    };
    let added = upstream
        .message
        .clone()
        .add_members(acting_for(uid, request))
        .await?
        .into_inner();
    Ok(Returned::MembersChanged(pb::MembersChanged {
        uids: added.added_uids,
    }))
}

/// Removes members from a group: anyone, by an admin; oneself, by anyone.
async fn remove_members(
    upstream: &Upstream,
    uid: &Uid,
    gid: u64,
    uids: Vec<String>,
) -> Result<Returned, Status> {
    let request = mpb::RemoveMembersRequest { gid, uids };
    let removed = upstream
        .message
        .clone()
        .remove_members(acting_for(uid, request))
        .await?
        .into_inner();
    Ok(Returned::MembersChanged(pb::MembersChanged {
        uids: removed.removed_uids,
    }))
}

/// Registers the push token of the stream's own device.
async fn register_push(
    upstream: &Upstream,
    uid: &Uid,
    device_id: &str,
    call: pb::RegisterPushCall,
) -> Result<Returned, Status> {
    let platform = match pb::PushPlatform::try_from(call.platform) {
        Ok(pb::PushPlatform::Apns) => npb::Platform::Apns,
        Ok(pb::PushPlatform::Fcm) => npb::Platform::Fcm,
        Ok(pb::PushPlatform::Unspecified) | Err(_) => {
            return Err(Error::invalid("platform", "APNS or FCM").into());
        }
    };
    let request = npb::RegisterDeviceRequest {
        device_id: device_id.to_owned(),
        platform: platform.into(),
        token: call.token,
        app_id: call.app_id,
        locale: call.locale,
    };
    let registered = upstream
        .notification
        .clone()
        .register_device(acting_for(uid, request))
        .await?
        .into_inner();
    Ok(Returned::Push(pb::PushRegistration {
        changed: registered.replaced,
    }))
}

/// Removes the push token of the stream's own device.
async fn unregister_push(
    upstream: &Upstream,
    uid: &Uid,
    device_id: &str,
) -> Result<Returned, Status> {
    let request = npb::UnregisterDeviceRequest {
        device_id: device_id.to_owned(),
    };
    let unregistered = upstream
        .notification
        .clone()
        .unregister_device(acting_for(uid, request))
        .await?
        .into_inner();
    Ok(Returned::Push(pb::PushRegistration {
        changed: unregistered.removed,
    }))
}

/// Mutes or unmutes a group's pushes for the user.
async fn mute(upstream: &Upstream, uid: &Uid, call: pb::MuteCall) -> Result<Returned, Status> {
    let request = npb::SetMuteRequest {
        gid: call.gid,
        until_ms: call.until_ms,
    };
    let muted = upstream
        .notification
        .clone()
        .set_mute(acting_for(uid, request))
        .await?
        .into_inner();
    Ok(Returned::Muted(pb::Muted {
        until_ms: muted.until_ms,
    }))
}

/// Sets a group's receipt policy, as the message service allows (admins).
/// The two enums share their numbers.
async fn receipt_policy(
    upstream: &Upstream,
    uid: &Uid,
    call: pb::ReceiptPolicyCall,
) -> Result<Returned, Status> {
    let request = mpb::SetReceiptPolicyRequest {
        gid: call.gid,
        policy: call.policy,
    };
    let set = upstream
        .message
        .clone()
        .set_receipt_policy(acting_for(uid, request))
        .await?
        .into_inner();
    Ok(Returned::ReceiptPolicy(pb::ReceiptPolicySet {
        policy: set.policy,
        from_seq: set.from_seq,
    }))
}

/// Hides or shows the user's reads. The two enums share their numbers.
async fn set_receipt_privacy(
    upstream: &Upstream,
    uid: &Uid,
    call: pb::SetReceiptPrivacyCall,
) -> Result<Returned, Status> {
    let request = rpb::SetReceiptPrivacyRequest {
        gid: call.gid,
        privacy: call.privacy,
    };
    let set = upstream
        .receipt
        .clone()
        .set_receipt_privacy(acting_for(uid, request))
        .await?
        .into_inner();
    Ok(privacy_state(set.state))
}

/// The user's read privacy.
async fn get_receipt_privacy(
    upstream: &Upstream,
    uid: &Uid,
    call: pb::GetReceiptPrivacyCall,
) -> Result<Returned, Status> {
    let request = rpb::GetReceiptPrivacyRequest { gid: call.gid };
    let got = read(
        upstream,
        &upstream.receipt,
        uid,
        request,
        |mut c, r| async move { c.get_receipt_privacy(r).await },
    )
    .await?;
    Ok(privacy_state(got.state))
}

/// A read privacy, from the receipt service's to the client's.
fn privacy_state(state: Option<rpb::ReceiptPrivacyState>) -> Returned {
    let state = state.unwrap_or_default();
    Returned::ReceiptPrivacy(pb::ReceiptPrivacyState {
        every_group: state.every_group,
        group: state.group,
        private: state.private,
    })
}

/// A page of a group's members, for a member of it.
async fn list_members(
    upstream: &Upstream,
    uid: &Uid,
    call: pb::ListMembersCall,
) -> Result<Returned, Status> {
    let request = mpb::ListMembersRequest {
        gid: call.gid,
        page_size: call.page_size,
        page_token: call.page_token,
    };
    let page = read(
        upstream,
        &upstream.message,
        uid,
        request,
        |mut c, r| async move { c.list_members(r).await },
    )
    .await?;
    let members = page
        .members
        .into_iter()
        .map(|member| pb::GroupMember {
            uid: member.uid,
            admin: member.role == mpb::MemberRole::Admin as i32,
            joined_at_ms: member.joined_at_ms,
        })
        .collect();
    Ok(Returned::Members(pb::MembersPage {
        members,
        next_page_token: page.next_page_token,
    }))
}

/// The newest `limit` messages before `before_seq` that the user may see:
/// seqs are dense, so they are the sync after `before_seq - limit - 1`, which
/// the message service starts no earlier than the user's join.
async fn history(
    upstream: &Upstream,
    uid: &Uid,
    call: pb::HistoryCall,
) -> Result<Returned, Status> {
    if call.before_seq == 0 {
        return Err(Error::invalid("before_seq", "1 or more").into());
    }
    let limit = match call.limit {
        0 => HISTORY_PAGE,
        limit if limit <= MAX_HISTORY_PAGE => limit,
        _ => {
            return Err(Error::invalid("limit", format!("at most {MAX_HISTORY_PAGE}")).into());
        }
    };
    let request = mpb::SyncMessagesRequest {
        gid: call.gid,
        after_seq: call.before_seq.saturating_sub(u64::from(limit) + 1),
        limit,
    };
    let page = read(
        upstream,
        &upstream.message,
        uid,
        request,
        |mut c, r| async move { c.sync_messages(r).await },
    )
    .await?;
    let messages = page
        .messages
        .into_iter()
        .filter(|message| message.seq < call.before_seq)
        .map(delivered)
        .collect();
    Ok(Returned::History(pb::HistoryPage {
        messages,
        last_seq: page.last_seq,
    }))
}

/// A page of who has read a message, or who has not, from the receipt
/// service, which answers only for messages the user may see the receipts of.
async fn readers(
    upstream: &Upstream,
    uid: &Uid,
    call: pb::ReadersCall,
) -> Result<Returned, Status> {
    let state = if call.read {
        rpb::ReceiptState::Read
    } else {
        rpb::ReceiptState::Unread
    };
    let request = rpb::ListReceiptMembersRequest {
        gid: call.gid,
        msgid: call.msgid,
        state: state.into(),
        page_size: call.page_size,
        page_token: call.page_token,
    };
    let page = read(
        upstream,
        &upstream.receipt,
        uid,
        request,
        |mut c, r| async move { c.list_receipt_members(r).await },
    )
    .await?;
    let read_times = page
        .read_times
        .into_iter()
        .map(|time| pb::ReaderTime {
            exact: time.precision() == rpb::ReadTimePrecision::Exact,
            uid: time.uid,
            read_at_ms: time.read_at_ms,
        })
        .collect();
    Ok(Returned::Readers(pb::ReadersPage {
        uids: page.uids,
        next_page_token: page.next_page_token,
        read_times,
    }))
}
