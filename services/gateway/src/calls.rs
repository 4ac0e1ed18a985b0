//! The client API: a stream's `RequestFrame`s, each made as the stream's user
//! against the services behind the gateway and answered by a `ResultFrame`
//! with the same request id. A refusal carries the service's code and reason,
//! and a retry hint when it was for load; the stream stays open.

use parley_proto::{
    gateway::{self as pb, request_frame::Call, result_frame::Result as Returned},
    message as mpb, receipt as rpb,
};
use parley_server::{Uid, caller::acting_for, shed::retry_after_ms};
use tonic::Status;

use crate::{
    known::IdMap,
    session::{Upstream, delivered},
};

/// Messages per history page when the call names no limit, and at most.
const HISTORY_PAGE: u32 = 100;
const MAX_HISTORY_PAGE: u32 = 500;

/// Answers one request as `uid`.
pub async fn answer(upstream: &Upstream, uid: &Uid, request: pb::RequestFrame) -> pb::ResultFrame {
    let outcome = match request.call {
        Some(Call::ListGroups(call)) => list_groups(upstream, uid, call).await,
        Some(Call::ListMembers(call)) => list_members(upstream, uid, call).await,
        Some(Call::History(call)) => history(upstream, uid, call).await,
        Some(Call::Readers(call)) => readers(upstream, uid, call).await,
        None => Err(Status::invalid_argument("the request names no call")),
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
            retry_after_ms: retry_after_ms(&status),
            result: None,
        },
    }
}

/// A page of the user's groups from the message service, with the user's
/// unread count in each from the receipt service. A group the receipt
/// service does not know yet (its membership is still in the message
/// service's outbox) counts every message as unread.
async fn list_groups(
    upstream: &Upstream,
    uid: &Uid,
    call: pb::ListGroupsCall,
) -> Result<Returned, Status> {
    let request = mpb::ListGroupsRequest {
        page_size: call.page_size,
        page_token: call.page_token,
    };
    let page = upstream
        .message
        .clone()
        .list_groups(acting_for(uid, request))
        .await?
        .into_inner();
    let gids: Vec<u64> = page.groups.iter().map(|group| group.gid).collect();
    let read_seqs: IdMap<u64> = if gids.is_empty() {
        IdMap::default()
    } else {
        let request = rpb::UnreadCountsRequest {
            gids,
            page_size: 0,
            page_token: String::new(),
        };
        upstream
            .receipt
            .clone()
            .unread_counts(acting_for(uid, request))
            .await?
            .into_inner()
            .groups
            .into_iter()
            .map(|counted| (counted.gid, counted.read_seq))
            .collect()
    };
    let groups = page
        .groups
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
            }
        })
        .collect();
    Ok(Returned::Groups(pb::GroupsPage {
        groups,
        next_page_token: page.next_page_token,
    }))
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
    let page = upstream
        .message
        .clone()
        .list_members(acting_for(uid, request))
        .await?
        .into_inner();
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
        return Err(Status::invalid_argument("before_seq must be 1 or more"));
    }
    let limit = match call.limit {
        0 => HISTORY_PAGE,
        limit if limit <= MAX_HISTORY_PAGE => limit,
        _ => {
            return Err(Status::invalid_argument(format!(
                "limit must be at most {MAX_HISTORY_PAGE}"
            )));
        }
    };
    let request = mpb::SyncMessagesRequest {
        gid: call.gid,
        after_seq: call.before_seq.saturating_sub(u64::from(limit) + 1),
        limit,
    };
    let page = upstream
        .message
        .clone()
        .sync_messages(acting_for(uid, request))
        .await?
        .into_inner();
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
    let page = upstream
        .receipt
        .clone()
        .list_receipt_members(acting_for(uid, request))
        .await?
        .into_inner();
    Ok(Returned::Readers(pb::ReadersPage {
        uids: page.uids,
        next_page_token: page.next_page_token,
    }))
}
