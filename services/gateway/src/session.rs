//! One device's stream. A session task owns everything about its connection:
//! the per-group delivery position, the messages it knows, the outbound queue.
//! Events are handled one at a time, so ordering is simple to reason about:
//! every message reaches the device in seq order, once, whether it came from
//! the login backlog, the bus or a gap sync.

use std::{collections::HashMap, sync::Arc};

use parley_bus::routing::PresenceClient;
use parley_proto::{
    gateway::{self as pb, connect_request::Frame as In, connect_response::Frame as Out},
    message::{self as mpb, message_service_client::MessageServiceClient},
    presence as ppb,
    receipt::{self as rpb, receipt_service_client::ReceiptServiceClient},
};
use parley_server::{ServiceIdentity, Uid, caller::acting_for};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tonic::{Status, Streaming, codegen::InterceptedService, transport::Channel};
use tracing::Instrument;

use crate::hub::{Hub, Inbound};

type Intercepted = InterceptedService<Channel, ServiceIdentity>;

/// The services a gateway calls, as the gateway.
#[derive(Clone)]
pub struct Upstream {
    /// Messages, membership.
    pub message: MessageServiceClient<Intercepted>,
    /// Cursors, receipts.
    pub receipt: ReceiptServiceClient<Intercepted>,
    /// Presence registration.
    pub presence: PresenceClient,
}

/// Messages fetched per SyncMessages call.
const SYNC_PAGE: u32 = 500;
/// Groups per UnreadCounts page at login.
const GROUP_PAGE: u32 = 1000;
/// Receipt summaries per PullReceipts page, and pages pulled at login.
const PULL_PAGE: u32 = 500;
const MAX_PULL_PAGES: usize = 20;
/// Message ids remembered per connection, to resolve a heartbeat's watch list.
const KNOWN_MESSAGES: usize = 10_000;
/// Groups acknowledged per ack frame.
const MAX_ACK_ENTRIES: usize = 100;
/// Message ids watched per heartbeat.
const MAX_WATCHED: usize = 100;

/// Why a session ends; sent to the client as the closing reason.
#[derive(Debug)]
pub enum End {
    /// The client closed its side or the stream broke.
    ClientGone,
    /// The client does not read fast enough.
    SlowConsumer,
    /// A service behind the gateway failed; the client should reconnect.
    Upstream(Status),
    /// The gateway is shutting down; the client should reconnect elsewhere.
    ShuttingDown,
    /// The gateway's run future was dropped (a crash, as far as anyone outside
    /// can tell): no goodbye to the client or to presence.
    Dropped,
}

impl End {
    fn reason(&self) -> Option<String> {
        match self {
            End::ClientGone | End::Dropped => None,
            End::ShuttingDown => Some("gateway shutting down; reconnect and resync by seq".into()),
            End::SlowConsumer => Some(
                "outbound queue full: the client is not reading fast enough; reconnect and resync by seq"
                    .into(),
            ),
            End::Upstream(status) => Some(format!(
                "service unavailable ({}); reconnect and resync by seq",
                status.code()
            )),
        }
    }
}

/// What a session starts with.
pub struct Start {
    /// The authenticated user.
    pub uid: Uid,
    /// The device.
    pub device_id: String,
    /// Where the last login's receipt pull stopped.
    pub receipts_cursor: String,
    /// The connection's id in the hub.
    pub id: u64,
    /// Bus events for the connection.
    pub inbox: mpsc::Receiver<Inbound>,
    /// Notified when the hub gave up on the connection.
    pub kick: Arc<Notify>,
    /// The outbound queue.
    pub out: mpsc::Sender<pb::ConnectResponse>,
    /// Closes the stream with a reason, ahead of anything queued.
    pub close: oneshot::Sender<String>,
    /// How long a full outbound queue is waited on before the client is
    /// cut off as too slow.
    pub slow_after: std::time::Duration,
    /// Becomes true when the gateway shuts down; its sender is dropped when
    /// the gateway is dropped.
    pub stopping: watch::Receiver<bool>,
}

/// A running session.
pub struct Session {
    uid: Uid,
    device_id: String,
    upstream: Upstream,
    out: mpsc::Sender<pb::ConnectResponse>,
    slow_after: std::time::Duration,
    /// Per group, the highest seq pushed to this device.
    delivered: HashMap<u64, u64>,
    /// Message id → group, for messages seen on this stream.
    known: HashMap<u64, u64>,
    /// Last read count reported per watched message.
    reported: HashMap<u64, u32>,
}

type Step = Result<(), End>;

impl Session {
    /// Runs the session until the client goes or it is closed; then takes the
    /// device off the hub and, if it was its last connection, offline.
    pub async fn run(
        start: Start,
        upstream: Upstream,
        hub: Hub,
        gateway_id: String,
        frames: Streaming<pb::ConnectRequest>,
    ) {
        let Start {
            uid,
            device_id,
            receipts_cursor,
            id,
            inbox,
            kick,
            out,
            close,
            slow_after,
            stopping,
        } = start;
        let mut session = Session {
            uid: uid.clone(),
            device_id: device_id.clone(),
            upstream,
            out,
            slow_after,
            delivered: HashMap::new(),
            known: HashMap::new(),
            reported: HashMap::new(),
        };
        let end = tokio::select! {
            end = session.serve(&gateway_id, receipts_cursor, inbox, kick, frames) => end,
            end = stopped(stopping) => end,
        };
        if matches!(end, End::Dropped) {
            return;
        }
        if let Some(reason) = end.reason() {
            tracing::info!(uid = %uid, device = %device_id, reason = %reason, "closing stream");
            let _ = close.send(reason);
        }
        if hub.unregister(&uid, id) {
            let request = ppb::OfflineRequest {
                device: Some(ppb::DeviceRef {
                    uid: uid.into_string(),
                    device_id,
                }),
                gateway_id,
            };
            if let Err(status) = session.upstream.presence.offline(request).await {
                tracing::warn!(error = %status, "presence offline failed; the entry will lapse");
            }
        }
    }

    async fn serve(
        &mut self,
        gateway_id: &str,
        receipts_cursor: String,
        mut inbox: mpsc::Receiver<Inbound>,
        kick: Arc<Notify>,
        mut frames: Streaming<pb::ConnectRequest>,
    ) -> End {
        // Registered in the hub already, so live messages queue in the inbox
        // while the backlog is read: nothing falls between the two.
        if let Err(end) = self.login(gateway_id, receipts_cursor).await {
            return end;
        }
        loop {
            let step = tokio::select! {
                frame = frames.message() => match frame {
                    Ok(Some(frame)) => self.on_frame(frame).await,
                    Ok(None) | Err(_) => Err(End::ClientGone),
                },
                event = inbox.recv() => match event {
                    Some(event) => self.on_event(event).await,
                    None => Err(End::ClientGone),
                },
                () = kick.notified() => Err(End::SlowConsumer),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn login(&mut self, gateway_id: &str, receipts_cursor: String) -> Step {
        let online = ppb::OnlineRequest {
            device: Some(ppb::DeviceRef {
                uid: self.uid.as_str().to_owned(),
                device_id: self.device_id.clone(),
            }),
            gateway_id: gateway_id.to_owned(),
        };
        self.upstream
            .presence
            .online(online)
            .await
            .map_err(End::Upstream)?;
        self.catch_up().await?;
        self.pull_receipts(receipts_cursor).await
    }

    /// The user's positions: one page of all groups, or the groups named.
    async fn unread_counts(
        &mut self,
        gids: Vec<u64>,
        page_token: String,
    ) -> Result<rpb::UnreadCountsResponse, End> {
        let request = rpb::UnreadCountsRequest {
            gids,
            page_size: GROUP_PAGE,
            page_token,
        };
        let reply = self
            .upstream
            .receipt
            .unread_counts(acting_for(&self.uid, request))
            .await
            .map_err(End::Upstream)?;
        Ok(reply.into_inner())
    }

    /// Messages of `gid` after `after_seq`, as the user may see them; a
    /// refusal (not a member, bad request) reads as no messages.
    async fn sync(
        &mut self,
        gid: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<mpb::SyncMessagesResponse, End> {
        let request = mpb::SyncMessagesRequest {
            gid,
            after_seq,
            limit,
        };
        match self
            .upstream
            .message
            .sync_messages(acting_for(&self.uid, request))
            .await
        {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) if is_refusal(&status) => Ok(mpb::SyncMessagesResponse::default()),
            Err(status) => Err(End::Upstream(status)),
        }
    }

    /// Sends, per group, everything after the delivered position (the user's
    /// delivered cursor the first time), in seq order.
    async fn catch_up(&mut self) -> Step {
        let mut page_token = String::new();
        loop {
            let reply = self.unread_counts(Vec::new(), page_token).await?;
            for group in reply.groups {
                let position = self
                    .delivered
                    .entry(group.gid)
                    .or_insert(group.delivered_seq);
                if group.last_seq > *position {
                    self.sync_group(group.gid).await?;
                }
            }
            if reply.next_page_token.is_empty() {
                return Ok(());
            }
            page_token = reply.next_page_token;
        }
    }

    /// Sends the messages of `gid` after the delivered position, up to the
    /// group's last seq.
    async fn sync_group(&mut self, gid: u64) -> Step {
        loop {
            let after = self.delivered.get(&gid).copied().unwrap_or(0);
            // No longer a member (or never was) reads as nothing to send.
            let reply = self.sync(gid, after, SYNC_PAGE).await?;
            let Some(last) = reply.messages.last().map(|m| m.seq) else {
                return Ok(());
            };
            for message in reply.messages {
                self.push_message(delivered(message)).await?;
            }
            if last >= reply.last_seq {
                return Ok(());
            }
        }
    }

    /// Receipt changes of the user's own messages since the last login.
    async fn pull_receipts(&mut self, mut cursor: String) -> Step {
        for _ in 0..MAX_PULL_PAGES {
            let request = rpb::PullReceiptsRequest {
                cursor: cursor.clone(),
                limit: PULL_PAGE,
            };
            let reply = match self
                .upstream
                .receipt
                .pull_receipts(acting_for(&self.uid, request))
                .await
            {
                Ok(reply) => reply.into_inner(),
                // A cursor from another deployment: start over next time.
                Err(status) if status.code() == tonic::Code::InvalidArgument => return Ok(()),
                Err(status) => return Err(End::Upstream(status)),
            };
            let done = reply.receipts.len() < PULL_PAGE as usize;
            let entries: Vec<pb::ReceiptDigestEntry> = reply
                .receipts
                .into_iter()
                .map(|r| pb::ReceiptDigestEntry {
                    gid: r.gid,
                    msgid: r.msgid,
                    seq: r.seq,
                    read_count: r.read_count,
                    recipient_count: r.recipient_count,
                })
                .collect();
            cursor = reply.next_cursor;
            if !entries.is_empty() {
                self.push(Out::ReceiptDigest(pb::ReceiptDigestFrame {
                    entries,
                    receipts_cursor: cursor.clone(),
                }))
                .await?;
            }
            if done {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, event: Inbound) -> Step {
        match event {
            Inbound::Message(message) => self.on_message(message).await,
            Inbound::Digest(entries) => {
                let digest = pb::ReceiptDigestFrame {
                    entries,
                    receipts_cursor: String::new(),
                };
                self.push(Out::ReceiptDigest(digest)).await
            }
            Inbound::Resync => self.catch_up().await,
        }
    }

    /// A live message: pushed if it is the next one, dropped if already sent,
    /// and a gap is first filled from the message service.
    async fn on_message(&mut self, message: pb::DeliveredMessage) -> Step {
        let gid = message.gid;
        if !self.delivered.contains_key(&gid) {
            // A group joined after login: start from the user's cursor.
            self.position_from_cursor(gid).await?;
        }
        let position = self.delivered.get(&gid).copied().unwrap_or(0);
        if message.seq <= position {
            return Ok(());
        }
        if message.seq > position + 1 {
            self.sync_group(gid).await?;
        }
        self.push_message(message).await
    }

    async fn position_from_cursor(&mut self, gid: u64) -> Step {
        let reply = self.unread_counts(vec![gid], String::new()).await?;
        // Unknown to the receipt service yet (the membership is still in the
        // message service's outbox): start at 0; SyncMessages only returns
        // what the member may see.
        let position = reply.groups.first().map_or(0, |g| g.delivered_seq);
        self.delivered.insert(gid, position);
        Ok(())
    }

    /// Pushes a message unless it is not the next one for its group.
    async fn push_message(&mut self, message: pb::DeliveredMessage) -> Step {
        let position = self.delivered.entry(message.gid).or_insert(0);
        if message.seq <= *position {
            return Ok(());
        }
        *position = message.seq;
        self.remember(message.msgid, message.gid);
        self.push(Out::Message(message)).await
    }

    fn remember(&mut self, msgid: u64, gid: u64) {
        if self.known.len() >= KNOWN_MESSAGES {
            self.known.clear();
            self.reported.clear();
        }
        self.known.insert(msgid, gid);
    }

    /// Queues a frame. A queue that stays full for the slow-consumer timeout
    /// means the client is not reading: the stream is closed rather than
    /// letting its backlog grow.
    async fn push(&self, frame: Out) -> Step {
        let response = pb::ConnectResponse { frame: Some(frame) };
        self.out
            .send_timeout(response, self.slow_after)
            .await
            .map_err(|error| match error {
                mpsc::error::SendTimeoutError::Timeout(_) => End::SlowConsumer,
                mpsc::error::SendTimeoutError::Closed(_) => End::ClientGone,
            })
    }

    async fn on_frame(&mut self, frame: pb::ConnectRequest) -> Step {
        match frame.frame {
            Some(In::Send(send)) => self.on_send(send).await,
            Some(In::Ack(ack)) => self.on_ack(ack).await,
            Some(In::Sync(sync)) => self.on_sync(sync).await,
            Some(In::Heartbeat(heartbeat)) => self.on_heartbeat(heartbeat).await,
            // A second auth frame or an empty one changes nothing.
            Some(In::Auth(_)) | None => Ok(()),
        }
    }

    async fn on_send(&mut self, send: pb::SendFrame) -> Step {
        let request = mpb::SendMessageRequest {
            gid: send.gid,
            client_msg_id: send.client_msg_id,
            content: send.content,
            need_receipt: send.need_receipt,
        };
        // A send is where a message's trace starts: the message service, the
        // fan-out's presence lookup and the outbox's receipt and notification
        // calls all continue it.
        let span = tracing::info_span!("gateway.send", otel.kind = "client", gid = send.gid);
        let outcome = self
            .upstream
            .message
            .send_message(acting_for(&self.uid, request))
            .instrument(span)
            .await;
        let result = match outcome {
            Ok(reply) => {
                let message = reply.into_inner().message.unwrap_or_default();
                self.remember(message.msgid, message.gid);
                pb::SendResultFrame {
                    request_id: send.request_id,
                    msgid: message.msgid,
                    seq: message.seq,
                    code: 0,
                    error: String::new(),
                }
            }
            Err(status) => pb::SendResultFrame {
                request_id: send.request_id,
                msgid: 0,
                seq: 0,
                code: status.code() as i32,
                error: status.message().to_owned(),
            },
        };
        self.push(Out::SendResult(result)).await
    }

    async fn on_ack(&mut self, ack: pb::AckFrame) -> Step {
        for entry in ack.entries.into_iter().take(MAX_ACK_ENTRIES) {
            let kind = if entry.read {
                rpb::AckKind::Read
            } else {
                rpb::AckKind::Delivered
            };
            let request = rpb::AckRequest {
                gid: entry.gid,
                up_to_seq: entry.up_to_seq,
                kind: kind.into(),
            };
            if let Err(status) = self
                .upstream
                .receipt
                .ack(acting_for(&self.uid, request))
                .await
            {
                if !is_refusal(&status) {
                    return Err(End::Upstream(status));
                }
                tracing::debug!(gid = entry.gid, code = ?status.code(), "ack refused");
            }
        }
        Ok(())
    }

    async fn on_sync(&mut self, sync: pb::SyncFrame) -> Step {
        let reply = self.sync(sync.gid, sync.after_seq, sync.limit).await?;
        let messages: Vec<pb::DeliveredMessage> =
            reply.messages.into_iter().map(delivered).collect();
        for message in &messages {
            self.remember(message.msgid, message.gid);
        }
        self.push(Out::SyncResult(pb::SyncResultFrame {
            request_id: sync.request_id,
            messages,
            last_seq: reply.last_seq,
        }))
        .await
    }

    /// Answers a heartbeat with the receipt changes of the watched messages
    /// since the last answer (seed 002 §7: no extra request).
    async fn on_heartbeat(&mut self, heartbeat: pb::HeartbeatFrame) -> Step {
        let mut by_group: HashMap<u64, Vec<u64>> = HashMap::new();
        for msgid in heartbeat.watching_msgids.into_iter().take(MAX_WATCHED) {
            if let Some(&gid) = self.known.get(&msgid) {
                by_group.entry(gid).or_default().push(msgid);
            }
        }
        let mut changes = Vec::new();
        for (gid, msgids) in by_group {
            let request = rpb::GetReceiptsRequest {
                gid,
                msgids,
                list_page_size: 0,
            };
            let receipts = match self
                .upstream
                .receipt
                .get_receipts(acting_for(&self.uid, request))
                .await
            {
                Ok(reply) => reply.into_inner().receipts,
                Err(status) if is_refusal(&status) => continue,
                Err(status) => return Err(End::Upstream(status)),
            };
            for receipt in receipts {
                if self.reported.insert(receipt.msgid, receipt.read_count)
                    == Some(receipt.read_count)
                {
                    continue;
                }
                changes.push(pb::ReceiptDigestEntry {
                    gid,
                    msgid: receipt.msgid,
                    seq: receipt.seq,
                    read_count: receipt.read_count,
                    recipient_count: receipt.recipient_count,
                });
            }
        }
        self.push(Out::HeartbeatReply(pb::HeartbeatReplyFrame {
            receipt_changes: changes,
        }))
        .await
    }
}

/// Resolves when the gateway stops: gracefully, or by being dropped.
async fn stopped(mut stopping: watch::Receiver<bool>) -> End {
    match stopping.wait_for(|stop| *stop).await {
        Ok(_) => End::ShuttingDown,
        Err(_) => End::Dropped,
    }
}

/// A refusal about this request (bad input, not a member, not found), as
/// opposed to a service that is down.
fn is_refusal(status: &Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::ResourceExhausted
    )
}

/// The stream form of a stored message.
fn delivered(message: mpb::Message) -> pb::DeliveredMessage {
    pb::DeliveredMessage {
        msgid: message.msgid,
        gid: message.gid,
        seq: message.seq,
        sender_uid: message.sender_uid,
        content: message.content,
        need_receipt: message.need_receipt,
        created_at_ms: message.created_at_ms,
    }
}
