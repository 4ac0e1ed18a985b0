//! The gRPC handlers: convert wire requests into validated domain values, call
//! the store, convert records back. No rule lives here that is not in `domain`.

use std::collections::HashMap;

use parley_proto::message::{self as pb, message_service_server::MessageService};
use parley_server::{
    Caller, MsgId, Reason, Seq, error, ids::InvalidId, now_ms, page, shed::Admission,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::{
    domain::{
        self, Gid, GroupKind, MAX_GIDS_PER_REQUEST, MAX_MSGIDS_PER_REQUEST, MAX_TYPING_GROUP,
        NewGroup, ReceiptPolicy, Role, parse_uids,
    },
    error::MessageError,
    fanout::Fanout,
    outbox::Wake,
    store::{
        GroupRecord, MemberRecord, MembershipChange, MessageRecord, MessageStore, NewMessage,
        SendOutcome,
    },
};

/// Limits the handlers enforce, from config.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest message content, in bytes.
    pub max_content_bytes: usize,
    /// Largest group.
    pub max_group_members: i64,
    /// Turns for send transactions: a send that waits too long for one is
    /// shed with UNAVAILABLE and a retry hint.
    pub sends: Admission,
}

/// The MessageService implementation over a store.
pub struct MessageApi<S> {
    store: S,
    limits: Limits,
    outbox_wake: Wake,
    fanout: Fanout,
}

impl<S: MessageStore> MessageApi<S> {
    /// Handlers over `store`; `outbox_wake` is notified after each outbox write
    /// and `fanout` publishes committed messages to the gateways.
    pub fn new(store: S, limits: Limits, outbox_wake: Wake, fanout: Fanout) -> Self {
        Self {
            store,
            limits,
            outbox_wake,
            fanout,
        }
    }

    /// A wire send, validated, as the caller's message to `gid`.
    fn new_message(
        &self,
        gid: Gid,
        caller: &parley_server::Uid,
        req: pb::SendMessageRequest,
    ) -> Result<NewMessage, MessageError> {
        let client_msg_id = domain::parse_client_msg_id(&req.client_msg_id)?;
        domain::check_content(&req.content, self.limits.max_content_bytes)?;
        Ok(NewMessage {
            gid,
            sender: caller.clone(),
            client_msg_id,
            content: req.content,
            need_receipt: req.need_receipt,
            trace_context: parley_server::telemetry::current_traceparent(),
        })
    }

    /// Stores a run of messages in one transaction, once the send gate
    /// admits it; the new ones are handed to the outbox and fanned out.
    async fn store_sends(&self, messages: &[NewMessage]) -> Result<Vec<SendOutcome>, Status> {
        let turn = self.limits.sends.admit().await?;
        let stored = self.store.send_batch(messages, now_ms()).await;
        drop(turn);
        let outcomes = stored?;
        let sent: Vec<MessageRecord> = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                SendOutcome::Sent(record) => Some(record.clone()),
                SendOutcome::Duplicate(_) => None,
            })
            .collect();
        if !sent.is_empty() {
            self.outbox_wake.notify();
            for record in &sent {
                tracing::debug!(
                    gid = %record.gid,
                    seq = %record.seq,
                    msgid = %record.msgid,
                    "message stored"
                );
            }
            self.publish_after_commit(sent);
        }
        Ok(outcomes)
    }

    /// Publishes a committed run of messages to their online recipients'
    /// gateways, in seq order (after the group's earlier runs: see
    /// `publish_order`), off the request path: the sender's reply does not
    /// wait for the fan-out.
    fn publish_after_commit(&self, run: Vec<MessageRecord>) {
        let (store, fanout) = (self.store.clone(), self.fanout.clone());
        // Taken now, in commit order, so runs of a group publish in seq order.
        let ticket = fanout.ticket(&run);
        let fan_out = async move {
            fanout.after_commit(&store, &run).await;
            drop(ticket);
        };
        // Still part of the send's trace.
        tokio::spawn(fan_out.in_current_span());
    }
}

/// Most messages per SendMessages call.
const MAX_BATCH: usize = 100;

/// The result of one message of a batch.
fn send_result(outcome: Result<SendOutcome, Status>) -> pb::SendMessageResult {
    match outcome {
        Ok(SendOutcome::Sent(record)) => pb::SendMessageResult {
            message: Some(message_to_pb(record)),
            ..Default::default()
        },
        Ok(SendOutcome::Duplicate(record)) => pb::SendMessageResult {
            message: Some(message_to_pb(record)),
            duplicate: true,
            ..Default::default()
        },
        Err(status) => pb::SendMessageResult {
            code: status.code() as i32,
            error: status.message().to_owned(),
            ..Default::default()
        },
    }
}

const MAX_PAGE: u32 = 1000;
/// When a caller may try a Typing again after presence or the bus failed.
const TYPING_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const DEFAULT_PAGE: u32 = 100;
const MAX_SYNC: u32 = 500;

fn group_to_pb(group: GroupRecord) -> pb::Group {
    let kind = match GroupKind::from_code(i16::try_from(group.kind).unwrap_or(1)) {
        GroupKind::Group => pb::GroupKind::Group,
        GroupKind::Direct => pb::GroupKind::Direct,
    };
    pb::Group {
        gid: group.gid.wire(),
        kind: kind.into(),
        name: group.name,
        creator_uid: group.creator_uid,
        last_seq: group.last_seq.wire(),
        member_count: u32::try_from(group.member_count).unwrap_or(u32::MAX),
        created_at_ms: group.created_at_ms,
        last_message: None,
        receipt_policy: i32::try_from(group.receipt_policy).unwrap_or_default(),
    }
}

fn member_to_pb(member: MemberRecord) -> pb::Member {
    let role = match Role::from_code(i16::try_from(member.role).unwrap_or(1)) {
        Role::Member => pb::MemberRole::Member,
        Role::Admin => pb::MemberRole::Admin,
    };
    pb::Member {
        uid: member.uid,
        role: role.into(),
        joined_seq: member.joined_seq.wire(),
        joined_at_ms: member.joined_at_ms,
    }
}

/// Converts a stored message to its wire form.
pub fn message_to_pb(message: MessageRecord) -> pb::Message {
    pb::Message {
        msgid: message.msgid.wire(),
        gid: message.gid.wire(),
        seq: message.seq.wire(),
        sender_uid: message.sender_uid,
        client_msg_id: message.client_msg_id,
        content: message.content,
        need_receipt: message.need_receipt,
        recipient_count: u32::try_from(message.recipient_count).unwrap_or(u32::MAX),
        created_at_ms: message.created_at_ms,
        receipt_policy: i32::try_from(message.receipt_policy).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl<S: MessageStore> MessageService for MessageApi<S> {
    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::CreateGroupResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let kind = match pb::GroupKind::try_from(req.kind) {
            Ok(pb::GroupKind::Group) => GroupKind::Group,
            Ok(pb::GroupKind::Direct) => GroupKind::Direct,
            _ => return Err(MessageError::invalid("kind", "GROUP or DIRECT").into()),
        };
        let name = domain::parse_name(&req.name)?;
        let group = NewGroup::new(kind, name, caller, &req.member_uids)?;
        let (record, existing) = self.store.create_group(&group, now_ms()).await?;
        if !existing {
            self.outbox_wake.notify();
            tracing::info!(
                gid = %record.gid,
                members = record.member_count,
                "group created"
            );
        }
        Ok(Response::new(pb::CreateGroupResponse {
            group: Some(group_to_pb(record)),
            existing,
        }))
    }

    async fn add_members(
        &self,
        request: Request<pb::AddMembersRequest>,
    ) -> Result<Response<pb::AddMembersResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = Gid::parse(req.gid, "gid")?;
        let uids = parse_uids(&req.uids, "uids")?;
        let change = MembershipChange {
            gid,
            actor: &caller,
            uids: &uids,
            max_members: self.limits.max_group_members,
            now_ms: now_ms(),
        };
        let (added_uids, joined_seq) = self.store.add_members(change).await?;
        if !added_uids.is_empty() {
            self.outbox_wake.notify();
        }
        Ok(Response::new(pb::AddMembersResponse {
            added_uids,
            joined_seq: Seq::try_from(joined_seq)?.wire(),
        }))
    }

    async fn remove_members(
        &self,
        request: Request<pb::RemoveMembersRequest>,
    ) -> Result<Response<pb::RemoveMembersResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = Gid::parse(req.gid, "gid")?;
        let uids = parse_uids(&req.uids, "uids")?;
        let change = MembershipChange {
            gid,
            actor: &caller,
            uids: &uids,
            max_members: 0,
            now_ms: now_ms(),
        };
        let removed_uids = self.store.remove_members(change).await?;
        if !removed_uids.is_empty() {
            self.outbox_wake.notify();
        }
        Ok(Response::new(pb::RemoveMembersResponse { removed_uids }))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = Gid::parse(req.gid, "gid")?;
        let limit = page::page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let after = page::decode(&req.page_token)?;
        self.store.access(gid, &caller).await?;
        let members = self
            .store
            .list_members(gid, after.as_deref(), limit)
            .await?;
        let next_page_token = page::next_token(&members, limit, |m| m.uid.clone());
        Ok(Response::new(pb::ListMembersResponse {
            members: members.into_iter().map(member_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let limit = page::page_size(req.page_size, DEFAULT_PAGE, MAX_PAGE)?;
        let after = page::decode_id(&req.page_token)?.unwrap_or(0);
        let groups = self.store.list_groups(&caller, after, limit).await?;
        let next_page_token = page::next_token(&groups, limit, |g| g.gid.to_string());
        let mut last: HashMap<Gid, MessageRecord> = if req.with_last_message {
            let gids: Vec<i64> = groups.iter().map(|g| g.gid.stored()).collect();
            let messages = self.store.last_messages(&caller, &gids).await?;
            messages.into_iter().map(|m| (m.gid, m)).collect()
        } else {
            HashMap::new()
        };
        let groups = groups
            .into_iter()
            .map(|group| {
                let last_message = last.remove(&group.gid).map(message_to_pb);
                pb::Group {
                    last_message,
                    ..group_to_pb(group)
                }
            })
            .collect();
        Ok(Response::new(pb::ListGroupsResponse {
            groups,
            next_page_token,
        }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = Gid::parse(req.gid, "gid")?;
        let message = self.new_message(gid, &caller, req)?;
        let outcome = self.store_sends(std::slice::from_ref(&message)).await?;
        let (record, duplicate) = match outcome.into_iter().next() {
            Some(SendOutcome::Sent(record)) => (record, false),
            Some(SendOutcome::Duplicate(record)) => (record, true),
            None => {
                return Err(error::status(
                    Reason::Internal,
                    "the message was not stored",
                ));
            }
        };
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(message_to_pb(record)),
            duplicate,
        }))
    }

    async fn send_messages(
        &self,
        request: Request<pb::SendMessagesRequest>,
    ) -> Result<Response<pb::SendMessagesResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = Gid::parse(req.gid, "gid")?;
        if req.messages.is_empty() || req.messages.len() > MAX_BATCH {
            return Err(
                MessageError::invalid("messages", format!("1 to {MAX_BATCH} messages")).into(),
            );
        }
        // Malformed messages are refused one by one and take no seq; the
        // rest are stored together, in order.
        let mut results: Vec<Option<pb::SendMessageResult>> = vec![None; req.messages.len()];
        let mut valid = Vec::new();
        let mut positions = Vec::new();
        for (position, item) in req.messages.into_iter().enumerate() {
            let checked = if item.gid != 0 && item.gid != req.gid {
                Err(MessageError::invalid("gid", "differs from the batch's"))
            } else {
                self.new_message(gid, &caller, item)
            };
            match checked {
                Ok(message) => {
                    valid.push(message);
                    positions.push(position);
                }
                Err(error) => results[position] = Some(send_result(Err(error.into()))),
            }
        }
        if !valid.is_empty() {
            let outcomes = self.store_sends(&valid).await?;
            for (position, outcome) in positions.into_iter().zip(outcomes) {
                results[position] = Some(send_result(Ok(outcome)));
            }
        }
        let results = results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    send_result(Err(error::status(Reason::Internal, "not stored")))
                })
            })
            .collect();
        Ok(Response::new(pb::SendMessagesResponse { results }))
    }

    async fn sync_messages(
        &self,
        request: Request<pb::SyncMessagesRequest>,
    ) -> Result<Response<pb::SyncMessagesResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = Gid::parse(req.gid, "gid")?;
        let after_seq = domain::parse_seq(req.after_seq)?;
        let limit = page::page_size(req.limit, DEFAULT_PAGE, MAX_SYNC)?;
        let access = self.store.access(gid, &caller).await?;
        let messages = self
            .store
            .messages_after(gid, after_seq.max(access.joined_seq), limit)
            .await?;
        Ok(Response::new(pb::SyncMessagesResponse {
            messages: messages.into_iter().map(message_to_pb).collect(),
            last_seq: Seq::try_from(access.last_seq)?.wire(),
        }))
    }

    async fn typing(
        &self,
        request: Request<pb::TypingRequest>,
    ) -> Result<Response<pb::TypingResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let gid = Gid::parse(request.into_inner().gid, "gid")?;
        self.store.access(gid, &caller).await?;
        let members = self
            .store
            .list_members(gid, None, MAX_TYPING_GROUP + 1)
            .await?;
        if members.len() > MAX_TYPING_GROUP as usize {
            return Ok(Response::new(pb::TypingResponse { told: 0 }));
        }
        let others: Vec<String> = members
            .into_iter()
            .map(|member| member.uid)
            .filter(|uid| uid != caller.as_str())
            .collect();
        let told = self
            .fanout
            .typing(gid, &caller, &others)
            .await
            .map_err(|error| {
                tracing::debug!(error = %error, "typing not told");
                Status::from(parley_server::Error::retry_later(
                    Reason::DependencyUnavailable,
                    "presence or the bus is unavailable; typing not told",
                    TYPING_RETRY,
                ))
            })?;
        Ok(Response::new(pb::TypingResponse {
            told: u32::try_from(told).unwrap_or(u32::MAX),
        }))
    }

    async fn set_receipt_policy(
        &self,
        request: Request<pb::SetReceiptPolicyRequest>,
    ) -> Result<Response<pb::SetReceiptPolicyResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = Gid::parse(req.gid, "gid")?;
        let policy = ReceiptPolicy::parse(req.policy)?;
        let last_seq = self.store.set_receipt_policy(gid, &caller, policy).await?;
        Ok(Response::new(pb::SetReceiptPolicyResponse {
            policy: i32::from(policy.code()),
            from_seq: Seq::try_from(last_seq.saturating_add(1))?.wire(),
        }))
    }

    async fn last_seqs(
        &self,
        request: Request<pb::LastSeqsRequest>,
    ) -> Result<Response<pb::LastSeqsResponse>, Status> {
        Caller::require_service(&request, "receipt")?;
        let req = request.into_inner();
        let gids: Vec<Gid> = domain::parse_ids(&req.gids, MAX_GIDS_PER_REQUEST, "gids")?;
        let groups = self.store.last_seqs(&gids).await?;
        Ok(Response::new(pb::LastSeqsResponse {
            groups: groups
                .into_iter()
                .map(|(gid, last_seq)| {
                    Ok(pb::GroupLastSeq {
                        gid: Gid::try_from(gid)?.wire(),
                        last_seq: Seq::try_from(last_seq)?.wire(),
                    })
                })
                .collect::<Result<_, InvalidId>>()?,
        }))
    }

    async fn get_messages(
        &self,
        request: Request<pb::GetMessagesRequest>,
    ) -> Result<Response<pb::GetMessagesResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = Gid::parse(req.gid, "gid")?;
        let msgids: Vec<i64> =
            domain::parse_ids::<MsgId>(&req.msgids, MAX_MSGIDS_PER_REQUEST, "msgids")?
                .into_iter()
                .map(MsgId::stored)
                .collect();
        let access = self.store.access(gid, &caller).await?;
        let messages = self
            .store
            .messages_by_id(gid, &msgids, access.joined_seq)
            .await?;
        Ok(Response::new(pb::GetMessagesResponse {
            messages: messages.into_iter().map(message_to_pb).collect(),
        }))
    }
}
