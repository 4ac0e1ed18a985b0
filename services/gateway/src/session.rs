//! One device's stream. A session task owns everything about its connection:
//! the per-group delivery position, the messages it knows, the outbound queue.
//! Events are handled one at a time, so ordering is simple to reason about:
//! every message reaches the device in seq order, once, whether it came from
//! the login backlog, the bus or a gap sync.
//!
//! The stream is always read. Sends wait in a bounded queue of their own; the
//! queued sends to one group at its head go to the message service together
//! (one transaction, in order), one such run at a time. A send that finds the
//! queue full, or waits in it too long, is refused with a retry hint instead
//! of piling up. Acks are coalesced per group and handed to the gateway's ack
//! writer, which writes them with other streams' acks in the background.
//! Work a service behind the gateway cannot do right now (a catch-up, a gap
//! sync, an ack, the login's receipt pull) is owed and retried with backoff:
//! a neighbour's outage never closes the stream.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use parley_proto::{
    gateway::{self as pb, connect_request::Frame as In, connect_response::Frame as Out},
    message as mpb, presence as ppb, receipt as rpb,
};
use parley_server::upstream::{MessageClient, NotificationClient, PresenceClient, ReceiptClient};
use parley_server::{
    Error, Reason, Uid, backoff_delay,
    caller::acting_for,
    error::{self, may_pass, reason_text},
    retry::Retries,
    shed::{refuse, retry_after, retry_after_ms},
};
use tokio::{
    sync::{Notify, mpsc, oneshot, watch},
    time::Instant,
};
use tonic::{Code, Status, Streaming};
use tracing::Instrument;

use crate::{
    acks::{AckBatch, AckFailure, AckWriter},
    calls,
    hub::{Hub, Inbound},
    known::{IdMap, Known},
    offline::OfflineTeller,
    wire::{Delivery, Frame},
};

/// The services a gateway calls, as the gateway.
#[derive(Clone)]
pub struct Upstream {
    /// Messages, membership.
    pub message: MessageClient,
    /// Cursors, receipts.
    pub receipt: ReceiptClient,
    /// Push tokens and mutes, for the client API.
    pub notification: NotificationClient,
    /// Presence registration.
    pub presence: PresenceClient,
    /// Acks, written with those of the gateway's other streams.
    pub acks: AckWriter,
    /// Devices leaving, told to presence with those of other streams.
    pub offline: OfflineTeller,
    /// The budget of the client API's reads tried again after UNAVAILABLE.
    pub retries: Retries,
}

/// Messages fetched per SyncMessages call.
const SYNC_PAGE: u32 = 500;
/// Groups per ListGroups page at login (also the most UnreadCounts takes).
const GROUP_PAGE: u32 = 1000;
/// Receipt summaries per PullReceipts page, and pages pulled at login.
const PULL_PAGE: u32 = 500;
const MAX_PULL_PAGES: usize = 20;
/// Groups acknowledged per ack frame.
const MAX_ACK_ENTRIES: usize = 100;
/// Unwritten acks kept per connection (two per group at most).
const MAX_PENDING_ACKS: usize = 4096;
/// Most queued sends to one group stored in one call (the message service
/// takes up to 100).
const MAX_SEND_RUN: usize = 100;
/// Message ids watched per heartbeat.
const MAX_WATCHED: usize = 100;
/// Watched receipts are read at most this often per stream.
const MIN_WATCH_GAP: Duration = Duration::from_secs(1);
/// Heartbeat frames a stream may send in a row...
const HEARTBEAT_BURST: u32 = 20;
/// ...and then one per this long; one past that is refused in its reply.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Typing frames a stream may send in a row...
const TYPING_BURST: u32 = 5;
/// ...and then one per this long; the rest are dropped.
const TYPING_EVERY: Duration = Duration::from_secs(1);
/// First delay before owed work is retried.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// When to retry a send the message service did not answer in time.
const UNANSWERED_RETRY: Duration = Duration::from_secs(1);
/// Acks still unwritten when a stream ends get this long to be written.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(2);

/// How a session paces and bounds its work, from the gateway's config.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a full outbound queue is waited on before the client is cut
    /// off as too slow.
    pub slow_after: Duration,
    /// Sends queued behind the one in flight; a send beyond is refused with
    /// RESOURCE_EXHAUSTED.
    pub send_queue: usize,
    /// Longest a send may wait in the queue; one that waited longer is
    /// refused with UNAVAILABLE instead of being sent late.
    pub send_wait: Duration,
    /// Longest delay between retries of owed work.
    pub retry_max: Duration,
}

/// Why a session ends; sent to the client as the closing reason.
#[derive(Debug)]
pub enum End {
    /// The client closed its side or the stream broke.
    ClientGone,
    /// The client does not read fast enough.
    SlowConsumer,
    /// The gateway is shutting down; the client should reconnect elsewhere.
    ShuttingDown,
    /// The gateway's run future was dropped (a crash, as far as anyone outside
    /// can tell): no goodbye to the client or to presence.
    Dropped,
    /// The client broke the protocol (a frame too large, undecodable or over
    /// a documented limit): the stream ends with this status.
    Refused(Status),
}

/// How the gateway ends a stream it closes.
#[derive(Debug)]
pub enum Close {
    /// A closing frame saying why, then the end: the client may reconnect.
    Frame(String),
    /// This status as the stream's final status.
    Status(Status),
}

impl End {
    fn close(self) -> Option<Close> {
        match self {
            End::ClientGone | End::Dropped => None,
            End::ShuttingDown => Some(Close::Frame(
                "gateway shutting down; reconnect and resync by seq".into(),
            )),
            End::SlowConsumer => Some(Close::Frame(
                "outbound queue full: the client is not reading fast enough; reconnect and resync by seq"
                    .into(),
            )),
            End::Refused(status) => Some(Close::Status(status)),
        }
    }

    /// What a failed read of a gRPC stream's frames means: a frame the
    /// gateway cannot take (too large, undecodable) ends the stream with a
    /// status that says so; a broken transport is the client gone.
    pub fn of_read(status: &Status) -> End {
        use std::error::Error as _;
        match status.code() {
            Code::OutOfRange => End::Refused(error::status(
                Reason::FrameTooLarge,
                format!("frame too large: {}", status.message()),
            )),
            // Transport errors carry their cause; a decode error does not.
            Code::Internal if status.source().is_none() => {
                End::Refused(undecodable(status.message()))
            }
            _ => End::ClientGone,
        }
    }
}

/// Why a piece of work stopped: the session is over, or a service could not
/// do its part now and the work is owed.
#[derive(Debug)]
enum Stop {
    End(End),
    Later(Status),
}

impl From<End> for Stop {
    fn from(end: End) -> Self {
        Stop::End(end)
    }
}

/// A stream's client frames, whatever carries them (gRPC or WebSocket): a
/// frame, or why the stream cannot go on; the end when the client is done.
pub trait Frames:
    futures::Stream<Item = Result<pb::ConnectRequest, End>> + Unpin + Send + 'static
{
}

impl<T> Frames for T where
    T: futures::Stream<Item = Result<pb::ConnectRequest, End>> + Unpin + Send + 'static
{
}

/// A gRPC stream's frames as a session reads them.
pub fn grpc_frames(frames: Streaming<pb::ConnectRequest>) -> impl Frames {
    frames.map(|frame| frame.map_err(|status| End::of_read(&status)))
}

type Step = Result<(), End>;
type Work = Result<(), Stop>;

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
    pub out: mpsc::Sender<Frame>,
    /// Closes the stream with a reason, ahead of anything queued.
    pub close: oneshot::Sender<Close>,
    /// Pacing and bounds.
    pub limits: Limits,
    /// Becomes true when the gateway shuts down; its sender is dropped when
    /// the gateway is dropped.
    pub stopping: watch::Receiver<bool>,
}

/// Work owed to the device because a service could not do it when asked.
#[derive(Debug, Default)]
struct Owed {
    /// Every group: the login's or a resync's catch-up did not finish.
    catch_up: bool,
    /// Single groups: a gap sync failed, or the position of a group first
    /// seen live could not be read.
    groups: BTreeSet<u64>,
    /// The login's receipt pull, from this cursor.
    pull: Option<String>,
    /// When the login started, until its whole backlog has been sent.
    login: Option<Instant>,
}

/// When owed work and unwritten acks are tried again. Each keeps its own
/// count of failures in a row, so one succeeding does not make the other
/// retry at full speed against a service that is still down.
#[derive(Debug, Default)]
struct Retry {
    owed_failures: u32,
    ack_failures: u32,
    at: Option<Instant>,
}

/// What failed and is to be retried.
#[derive(Clone, Copy, Debug)]
enum Retried {
    Owed,
    Acks,
}

impl Retry {
    /// Schedules the next try: backoff, or the callee's hint when longer.
    fn schedule(&mut self, what: Retried, hint: Option<Duration>, max: Duration) {
        let failures = match what {
            Retried::Owed => &mut self.owed_failures,
            Retried::Acks => &mut self.ack_failures,
        };
        let delay = backoff_delay(*failures, RETRY_BASE, max).max(hint.unwrap_or_default());
        *failures = failures.saturating_add(1);
        let at = Instant::now() + delay.min(max.max(RETRY_BASE));
        self.at = Some(self.at.map_or(at, |earlier| earlier.min(at)));
    }
}

/// A send waiting its turn.
struct Queued {
    frame: pb::SendFrame,
    since: Instant,
}

/// The outcome of a run of sends: one result per request, or the status
/// that refused them all.
struct Sent {
    request_ids: Vec<u64>,
    outcome: Result<Vec<mpb::SendMessageResult>, Status>,
}

/// A running session.
pub struct Session {
    uid: Uid,
    device_id: String,
    upstream: Arc<Upstream>,
    out: mpsc::Sender<Frame>,
    limits: Limits,
    /// Per group, the highest seq pushed to this device.
    delivered: IdMap<u64>,
    /// The newest messages seen on this stream, for the heartbeat's watch list.
    known: Known,
    /// When a heartbeat last read the watched receipts.
    watch_read_at: Option<Instant>,
    /// The stream's heartbeat allowance.
    heartbeats: Allowance,
    /// The stream's typing allowance.
    typing: Allowance,
    /// Sends waiting behind the one in flight.
    sends: VecDeque<Queued>,
    /// Acks received and not yet written.
    acks: AckBatch,
    /// Work a service could not do yet.
    owed: Owed,
    /// Set when acks failed to be written: they wait for the retry.
    acks_held: bool,
    retry: Retry,
}

impl Session {
    /// Runs the session until the client goes or it is closed; then takes the
    /// device off the hub and, if it was its last connection, offline.
    ///
    /// The task is built here and its state lives in one `async move` block
    /// (an `async fn` keeps a second copy of its arguments), and `serve`
    /// borrows what it works on: every stream holds this task however idle.
    pub fn run(
        start: Start,
        upstream: Arc<Upstream>,
        hub: Hub,
        gateway_id: String,
        frames: impl Frames,
    ) -> impl Future<Output = ()> + Send + 'static {
        let Start {
            uid,
            device_id,
            receipts_cursor,
            id,
            inbox,
            kick,
            out,
            close,
            limits,
            stopping,
        } = start;
        let mut session = Session {
            uid: uid.clone(),
            device_id: device_id.clone(),
            upstream,
            out,
            limits,
            delivered: IdMap::default(),
            known: Known::default(),
            watch_read_at: None,
            heartbeats: Allowance::default(),
            typing: Allowance::default(),
            sends: VecDeque::new(),
            acks: BTreeMap::new(),
            owed: Owed::default(),
            acks_held: false,
            retry: Retry::default(),
        };
        let (mut inbox, mut frames) = (inbox, frames);
        async move {
            let mut acking = FuturesUnordered::new();
            let end = tokio::select! {
                end = session.serve(&gateway_id, receipts_cursor, (&mut inbox, &kick, &mut frames), &mut acking) => end,
                end = stopped(stopping) => end,
            };
            // A dropped gateway (a crash, as far as anyone outside can tell)
            // says nothing to the client or to presence.
            if matches!(end, End::Dropped) {
                return;
            }
            session.finish(end, close, acking).await;
            if hub.unregister(&uid, id) {
                session.upstream.offline.leave(uid, device_id);
            }
        }
    }

    /// Says goodbye as `end` says and writes the acks still unwritten.
    async fn finish(
        &mut self,
        end: End,
        close: oneshot::Sender<Close>,
        acking: FuturesUnordered<BoxFuture<'static, Result<(), AckFailure>>>,
    ) {
        let (uid, device_id) = (&self.uid, &self.device_id);
        if let Some(how) = end.close() {
            match &how {
                Close::Frame(reason) => {
                    tracing::info!(uid = %uid, device = %device_id, reason = %reason, "closing stream")
                }
                Close::Status(status) => {
                    tracing::info!(uid = %uid, device = %device_id, code = ?status.code(), reason = %status.message(), "stream refused")
                }
            }
            let _ = close.send(how);
        }
        Box::pin(self.write_last_acks(acking)).await;
    }

    async fn serve(
        &mut self,
        gateway_id: &str,
        receipts_cursor: String,
        (inbox, kick, frames): (&mut mpsc::Receiver<Inbound>, &Notify, &mut impl Frames),
        acking: &mut FuturesUnordered<BoxFuture<'static, Result<(), AckFailure>>>,
    ) -> End {
        // Registered in the hub already, so live messages queue in the inbox
        // while the backlog is read: nothing falls between the two.
        if let Err(end) = Box::pin(self.login(gateway_id, receipts_cursor)).await {
            return end;
        }
        let mut sending: FuturesUnordered<BoxFuture<'static, Sent>> = FuturesUnordered::new();
        loop {
            let retry_at = self.retry.at;
            let step = tokio::select! {
                frame = frames.next() => match frame {
                    Some(Ok(frame)) => self.on_frame(frame).await,
                    None => Err(End::ClientGone),
                    Some(Err(end)) => Err(end),
                },
                event = inbox.recv() => match event {
                    Some(event) => self.on_event(event).await,
                    None => Err(End::ClientGone),
                },
                Some(sent) = sending.next(), if !sending.is_empty() => Box::pin(self.on_sent(sent)).await,
                Some(written) = acking.next(), if !acking.is_empty() => {
                    self.on_acks_written(written);
                    Ok(())
                }
                // Built lazily: a disabled branch's future is still built on
                // every turn of the loop (every delivery), but never polled.
                () = async { if let Some(at) = retry_at { tokio::time::sleep_until(at).await } }, if retry_at.is_some() => {
                    self.retry.at = None;
                    self.acks_held = false;
                    Box::pin(self.repair()).await
                }
                () = kick.notified() => Err(End::SlowConsumer),
            };
            if let Err(end) = step {
                return end;
            }
            if sending.is_empty() && !self.sends.is_empty() {
                match Box::pin(self.next_send()).await {
                    Ok(Some(send)) => sending.push(send),
                    Ok(None) => {}
                    Err(end) => return end,
                }
            }
            // After a failure, acks wait for the retry.
            if acking.is_empty()
                && !self.acks_held
                && let Some(write) = self.write_acks()
            {
                acking.push(write);
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
        // Without presence the device is invisible to fan-out until the
        // gateway's next heartbeat registers it; that heartbeat reports the
        // entry as revived and every connection here resyncs, so nothing is
        // missed and the stream stays open meanwhile.
        if let Err(status) = self.upstream.presence.clone().online(online).await {
            tracing::warn!(uid = %self.uid, error = %status, "presence registration failed; the next heartbeat registers the device");
        }
        self.owed.catch_up = true;
        self.owed.pull = Some(receipts_cursor);
        self.owed.login = Some(Instant::now());
        self.repair().await
    }

    /// Does the owed work; what a service still cannot do stays owed and is
    /// tried again later.
    async fn repair(&mut self) -> Step {
        match self.do_owed().await {
            Ok(()) => {
                self.retry.owed_failures = 0;
                Ok(())
            }
            Err(Stop::End(end)) => Err(end),
            Err(Stop::Later(status)) => {
                self.retry_later(Retried::Owed, &status);
                Ok(())
            }
        }
    }

    fn retry_later(&mut self, what: Retried, status: &Status) {
        tracing::info!(uid = %self.uid, code = ?status.code(), error = %status.message(), ?what, "a service could not do its part; retrying later");
        self.retry
            .schedule(what, retry_after(status), self.limits.retry_max);
    }

    async fn do_owed(&mut self) -> Work {
        if self.owed.catch_up {
            self.catch_up().await?;
            self.owed.catch_up = false;
        }
        while let Some(&gid) = self.owed.groups.first() {
            if !self.delivered.contains_key(&gid) {
                self.read_positions(vec![gid]).await?;
            }
            self.sync_group(gid).await?;
            self.owed.groups.remove(&gid);
        }
        if self.owed.pull.is_some() {
            self.pull_receipts().await?;
        }
        // Everything owed is done: the login's backlog is complete, however
        // many retries it took (the objective "login to backlog complete").
        if let Some(started) = self.owed.login.take() {
            metrics::histogram!("parley_gateway_backlog_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Sends, per group, everything after the delivered position (the user's
    /// delivered cursor the first time), in seq order. The groups and their
    /// last seq come from the message service, which commits them: the
    /// receipt service learns of both through the outbox, which may be behind.
    async fn catch_up(&mut self) -> Work {
        let mut page_token = String::new();
        loop {
            let request = mpb::ListGroupsRequest {
                page_size: GROUP_PAGE,
                page_token,
                with_last_message: false,
            };
            let reply = self
                .upstream
                .message
                .clone()
                .list_groups(acting_for(&self.uid, request))
                .await
                .map_err(Stop::Later)?
                .into_inner();
            let unpositioned: Vec<u64> = reply
                .groups
                .iter()
                .map(|group| group.gid)
                .filter(|gid| !self.delivered.contains_key(gid))
                .collect();
            if !unpositioned.is_empty() {
                self.read_positions(unpositioned).await?;
            }
            for group in &reply.groups {
                let position = self.delivered.get(&group.gid).copied().unwrap_or(0);
                if group.last_seq > position {
                    self.sync_group(group.gid).await?;
                }
            }
            if reply.next_page_token.is_empty() {
                return Ok(());
            }
            page_token = reply.next_page_token;
        }
    }

    /// Starts each group at the user's delivered cursor. A group the receipt
    /// service does not know yet (the membership is still in the message
    /// service's outbox) starts at 0: SyncMessages only returns what the
    /// member may see.
    async fn read_positions(&mut self, gids: Vec<u64>) -> Work {
        let request = rpb::UnreadCountsRequest {
            gids: gids.clone(),
            page_size: 0,
            page_token: String::new(),
        };
        let reply = self
            .upstream
            .receipt
            .clone()
            .unread_counts(acting_for(&self.uid, request))
            .await
            .map_err(Stop::Later)?
            .into_inner();
        let cursors: HashMap<u64, u64> = reply
            .groups
            .into_iter()
            .map(|group| (group.gid, group.delivered_seq))
            .collect();
        for gid in gids {
            let position = cursors.get(&gid).copied().unwrap_or(0);
            self.delivered.insert(gid, position);
        }
        Ok(())
    }

    /// Sends the messages of `gid` after the delivered position, up to the
    /// group's last seq. No longer a member (or never was) reads as nothing
    /// to send; a service that is down or busy leaves the rest owed.
    async fn sync_group(&mut self, gid: u64) -> Work {
        loop {
            let after = self.delivered.get(&gid).copied().unwrap_or(0);
            let request = mpb::SyncMessagesRequest {
                gid,
                after_seq: after,
                limit: SYNC_PAGE,
            };
            let reply = match self
                .upstream
                .message
                .clone()
                .sync_messages(acting_for(&self.uid, request))
                .await
            {
                Ok(reply) => reply.into_inner(),
                Err(status) => {
                    let refused = later_if_transient(status)?;
                    tracing::debug!(gid, code = ?refused.code(), "group not synced: refused");
                    return Ok(());
                }
            };
            let Some(last) = reply.messages.last().map(|m| m.seq) else {
                return Ok(());
            };
            for message in reply.messages {
                self.push_message(&Delivery::encode(delivered(message)))
                    .await?;
            }
            if last >= reply.last_seq {
                return Ok(());
            }
        }
    }

    /// Receipt changes of the user's own messages since the last login, from
    /// the owed cursor; the cursor moves with each page sent.
    async fn pull_receipts(&mut self) -> Work {
        for _ in 0..MAX_PULL_PAGES {
            let Some(cursor) = self.owed.pull.clone() else {
                return Ok(());
            };
            let request = rpb::PullReceiptsRequest {
                cursor,
                limit: PULL_PAGE,
            };
            let reply = match self
                .upstream
                .receipt
                .clone()
                .pull_receipts(acting_for(&self.uid, request))
                .await
            {
                Ok(reply) => reply.into_inner(),
                // Refused: a cursor from another deployment; start over next time.
                Err(status) => {
                    later_if_transient(status)?;
                    self.owed.pull = None;
                    return Ok(());
                }
            };
            // A page skips what the user may not see, so only the receipt
            // service knows when the run is over.
            let done = reply.complete;
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
            self.owed.pull = Some(reply.next_cursor.clone());
            if !entries.is_empty() {
                self.push(Out::ReceiptDigest(pb::ReceiptDigestFrame {
                    entries,
                    receipts_cursor: reply.next_cursor,
                }))
                .await?;
            }
            if done {
                break;
            }
        }
        self.owed.pull = None;
        Ok(())
    }

    async fn on_event(&mut self, event: Inbound) -> Step {
        match event {
            Inbound::Message(message) => self.on_message(message).await,
            Inbound::Frame(frame) => self.send(frame).await,
            Inbound::Resync => {
                self.owed.catch_up = true;
                Box::pin(self.repair()).await
            }
        }
    }

    /// A live message: pushed if it is the next one, dropped if already sent,
    /// and a gap is first filled from the message service. While the group's
    /// position is unknown or its sync is owed, the message is left to the
    /// owed sync, which reads it from the store.
    async fn on_message(&mut self, message: Arc<Delivery>) -> Step {
        let position = self.delivered.get(&message.gid).copied();
        let owed = self.owed.groups.contains(&message.gid);
        match placement(owed, self.owed.catch_up, position, message.seq) {
            Placement::Push => self.push_message(&message).await,
            Placement::Skip => Ok(()),
            // Boxed: the calls a rare message needs would otherwise size
            // every stream's task.
            Placement::Position | Placement::Gap => Box::pin(self.place_and_push(message)).await,
        }
    }

    /// A live message that first needs its group's position or a gap sync.
    async fn place_and_push(&mut self, message: Arc<Delivery>) -> Step {
        let gid = message.gid;
        let outcome = self.place(&message).await;
        match outcome {
            Ok(true) => self.push_message(&message).await,
            Ok(false) => Ok(()),
            Err(Stop::End(end)) => Err(end),
            Err(Stop::Later(status)) => {
                self.owed.groups.insert(gid);
                self.retry_later(Retried::Owed, &status);
                Ok(())
            }
        }
    }

    /// Whether `message` can be pushed now: the group's position is known and
    /// everything before the message has been pushed.
    async fn place(&mut self, message: &Delivery) -> Result<bool, Stop> {
        let gid = message.gid;
        if self.owed.groups.contains(&gid) {
            return Ok(false);
        }
        if !self.delivered.contains_key(&gid) {
            if self.owed.catch_up {
                // The owed catch-up will position the group and sync it.
                return Ok(false);
            }
            // A group joined after login: start from the user's cursor.
            self.read_positions(vec![gid]).await?;
        }
        let position = self.delivered.get(&gid).copied().unwrap_or(0);
        if message.seq <= position {
            return Ok(false);
        }
        if message.seq > position.saturating_add(1) {
            self.sync_group(gid).await?;
        }
        Ok(true)
    }

    /// Pushes a message unless it is not the next one for its group.
    async fn push_message(&mut self, message: &Delivery) -> Step {
        let position = self.delivered.entry(message.gid).or_insert(0);
        if message.seq <= *position {
            return Ok(());
        }
        *position = message.seq;
        self.remember(message.msgid, message.gid);
        self.send(message.frame.clone()).await
    }

    fn remember(&mut self, msgid: u64, gid: u64) {
        self.known.remember(msgid, gid);
    }

    /// Queues a frame. A queue that stays full for the slow-consumer timeout
    /// means the client is not reading: the stream is closed rather than
    /// letting its backlog grow.
    async fn push(&self, frame: Out) -> Step {
        self.send(Frame::encode(frame)).await
    }

    /// Queues an encoded frame, as [`Session::push`] does: at once when the
    /// queue has room (nearly always), else waiting in a boxed future.
    async fn send(&self, frame: Frame) -> Step {
        match self.out.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(End::ClientGone),
            Err(mpsc::error::TrySendError::Full(frame)) => Box::pin(self.wait_to_send(frame)).await,
        }
    }

    async fn wait_to_send(&self, frame: Frame) -> Step {
        self.out
            .send_timeout(frame, self.limits.slow_after)
            .await
            .map_err(|error| match error {
                mpsc::error::SendTimeoutError::Timeout(_) => End::SlowConsumer,
                mpsc::error::SendTimeoutError::Closed(_) => End::ClientGone,
            })
    }

    async fn on_frame(&mut self, frame: pb::ConnectRequest) -> Step {
        match frame.frame {
            Some(In::Send(send)) => self.on_send(send).await,
            Some(In::Ack(ack)) => self.on_ack(ack),
            // Boxed, like every path that calls a service: their futures
            // would otherwise size every stream's task.
            Some(In::Sync(sync)) => Box::pin(self.on_sync(sync)).await,
            Some(In::Heartbeat(heartbeat)) => Box::pin(self.on_heartbeat(heartbeat)).await,
            Some(In::Request(request)) => {
                let result = Box::pin(calls::answer(
                    &self.upstream,
                    &self.uid,
                    &self.device_id,
                    request,
                ))
                .await;
                self.push(Out::Result(result)).await
            }
            Some(In::Typing(typing)) => {
                self.on_typing(typing);
                Ok(())
            }
            // A second auth frame or an empty one changes nothing.
            Some(In::Auth(_)) | None => Ok(()),
        }
    }

    /// Tells the group's members online that the user is typing, within
    /// the stream's allowance; fire and forget, like the signal itself.
    fn on_typing(&mut self, typing: pb::TypingFrame) {
        if typing.gid == 0 || !self.typing.take(Instant::now(), TYPING_EVERY, TYPING_BURST) {
            metrics::counter!("parley_gateway_typing_dropped_total").increment(1);
            return;
        }
        let request = acting_for(&self.uid, mpb::TypingRequest { gid: typing.gid });
        let mut message = self.upstream.message.clone();
        tokio::spawn(async move {
            if let Err(status) = message.typing(request).await {
                tracing::debug!(code = ?status.code(), error = %status.message(), "typing not told");
            }
        });
    }

    /// Queues a send behind the others of this stream, or refuses it when
    /// the queue is full.
    async fn on_send(&mut self, frame: pb::SendFrame) -> Step {
        if self.sends.len() >= self.limits.send_queue {
            let status = refuse(
                Reason::RateLimited,
                "too many sends queued on this stream; wait for results or retry later",
                self.limits.send_wait.min(Duration::from_millis(100)),
            );
            return self
                .refuse_send(frame.request_id, &status, "queue full")
                .await;
        }
        self.sends.push_back(Queued {
            frame,
            since: Instant::now(),
        });
        Ok(())
    }

    /// The next run of queued sends to start: the sends at the head of the
    /// queue that go to the same group, stored together in order. Sends that
    /// waited past the limit are refused on the way, so the ones admitted are
    /// not late (those behind the head are newer).
    async fn next_send(&mut self) -> Result<Option<BoxFuture<'static, Sent>>, End> {
        while let Some(queued) = self.sends.pop_front() {
            if queued.since.elapsed() > self.limits.send_wait {
                let status = refuse(
                    Reason::Overloaded,
                    "gateway overloaded; retry later",
                    backoff_delay(1, self.limits.send_wait, Duration::from_secs(5)),
                );
                self.refuse_send(queued.frame.request_id, &status, "waited too long")
                    .await?;
                continue;
            }
            let gid = queued.frame.gid;
            let mut run = vec![queued.frame];
            while run.len() < MAX_SEND_RUN
                && let Some(next) = self.sends.pop_front()
            {
                if next.frame.gid != gid {
                    self.sends.push_front(next);
                    break;
                }
                run.push(next.frame);
            }
            return Ok(Some(self.start_sends(gid, run)));
        }
        Ok(None)
    }

    fn start_sends(&self, gid: u64, run: Vec<pb::SendFrame>) -> BoxFuture<'static, Sent> {
        let request_ids = run.iter().map(|send| send.request_id).collect();
        let messages = run
            .into_iter()
            .map(|send| mpb::SendMessageRequest {
                gid,
                client_msg_id: send.client_msg_id,
                content: send.content,
                need_receipt: send.need_receipt,
            })
            .collect();
        let request = acting_for(&self.uid, mpb::SendMessagesRequest { gid, messages });
        let mut message = self.upstream.message.clone();
        // A send is where a message's trace starts: the message service, the
        // fan-out's presence lookup and the outbox's receipt and notification
        // calls all continue it.
        let span = tracing::info_span!("gateway.send", otel.kind = "client", gid);
        async move {
            let outcome = message
                .send_messages(request)
                .await
                .map(|reply| reply.into_inner().results);
            Sent {
                request_ids,
                outcome,
            }
        }
        .instrument(span)
        .boxed()
    }

    async fn on_sent(&mut self, sent: Sent) -> Step {
        let mut results = match sent.outcome {
            Ok(results) => results.into_iter().map(Ok).collect(),
            Err(status) => vec![Err(status); sent.request_ids.len()],
        }
        .into_iter();
        for request_id in sent.request_ids {
            let frame = match results.next() {
                Some(Ok(result)) if result.code == 0 => {
                    let message = result.message.unwrap_or_default();
                    self.remember(message.msgid, message.gid);
                    pb::SendResultFrame {
                        request_id,
                        msgid: message.msgid,
                        seq: message.seq,
                        ..Default::default()
                    }
                }
                Some(Ok(result)) => pb::SendResultFrame {
                    request_id,
                    code: result.code,
                    error: result.error,
                    ..Default::default()
                },
                Some(Err(status)) => refused_send(request_id, &unanswered(status)),
                None => refused_send(
                    request_id,
                    &error::status(Reason::Internal, "no result for this send"),
                ),
            };
            self.push(Out::SendResult(frame)).await?;
        }
        Ok(())
    }

    async fn refuse_send(&mut self, request_id: u64, status: &Status, why: &'static str) -> Step {
        metrics::counter!("parley_gateway_sends_refused_total", "reason" => why).increment(1);
        self.push(Out::SendResult(refused_send(request_id, status)))
            .await
    }

    /// Merges an ack frame into the unwritten acks: cumulative, so only the
    /// highest seq per group and kind matters, and a read covers delivered.
    /// A frame over the documented limit ends the stream with
    /// INVALID_ARGUMENT, none of it applied.
    fn on_ack(&mut self, ack: pb::AckFrame) -> Step {
        if ack.entries.len() > MAX_ACK_ENTRIES {
            return Err(over_limit(
                "ack.entries",
                MAX_ACK_ENTRIES,
                ack.entries.len(),
            ));
        }
        for entry in ack.entries {
            merge_ack(&mut self.acks, (entry.gid, entry.read), entry.up_to_seq);
        }
        while self.acks.len() > MAX_PENDING_ACKS {
            // A client acking more groups than it can be in: drop the excess.
            self.acks.pop_last();
        }
        Ok(())
    }

    /// Hands the unwritten acks to the gateway's writer, which writes them
    /// with those of other streams; a refused ack (not a member) is dropped,
    /// the rest are kept for the retry when the receipt service is down.
    fn write_acks(&mut self) -> Option<BoxFuture<'static, Result<(), AckFailure>>> {
        if self.acks.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut self.acks);
        let writer = self.upstream.acks.clone();
        let uid = self.uid.clone();
        Some(async move { writer.write(uid, batch).await }.boxed())
    }

    fn on_acks_written(&mut self, written: Result<(), AckFailure>) {
        let Err(failure) = written else {
            self.retry.ack_failures = 0;
            return;
        };
        self.keep_unwritten(failure.unwritten);
        self.acks_held = true;
        self.retry_later(Retried::Acks, &failure.status);
    }

    /// Puts acks that could not be written back with those received since.
    fn keep_unwritten(&mut self, unwritten: AckBatch) {
        for (key, seq) in unwritten {
            merge_ack(&mut self.acks, key, seq);
        }
    }

    /// Gives the acks still unwritten when the stream ends a last, bounded
    /// chance, so a client that acked and left is not read as unread.
    async fn write_last_acks(
        &mut self,
        mut acking: FuturesUnordered<BoxFuture<'static, Result<(), AckFailure>>>,
    ) {
        let last = async {
            while let Some(written) = acking.next().await {
                if let Err(failure) = written {
                    self.keep_unwritten(failure.unwritten);
                }
            }
            if let Some(write) = self.write_acks()
                && write.await.is_err()
            {
                tracing::warn!(uid = %self.uid, "acks unwritten at stream end: the receipt service is unavailable");
            }
        };
        let _ = tokio::time::timeout(FINAL_ACK_WAIT, last).await;
    }

    /// Answers a client's sync. A refusal is reported with its status, never
    /// as an empty result.
    async fn on_sync(&mut self, sync: pb::SyncFrame) -> Step {
        let request = mpb::SyncMessagesRequest {
            gid: sync.gid,
            after_seq: sync.after_seq,
            limit: sync.limit,
        };
        let upstream = &self.upstream;
        let outcome = crate::calls::read(upstream, &upstream.message, &self.uid, request, {
            |mut c, r| async move { c.sync_messages(r).await }
        })
        .await;
        let result = match outcome {
            Ok(reply) => {
                let messages: Vec<pb::DeliveredMessage> =
                    reply.messages.into_iter().map(delivered).collect();
                for message in &messages {
                    self.remember(message.msgid, message.gid);
                }
                pb::SyncResultFrame {
                    request_id: sync.request_id,
                    messages,
                    last_seq: reply.last_seq,
                    ..Default::default()
                }
            }
            Err(status) => pb::SyncResultFrame {
                request_id: sync.request_id,
                code: status.code() as i32,
                error: status.message().to_owned(),
                reason: reason_text(&status),
                retry_after_ms: retry_after_ms(&status),
                ..Default::default()
            },
        };
        self.push(Out::SyncResult(result)).await
    }

    /// Answers a heartbeat with the receipt changes of the watched messages
    /// since the last answer (seed 002 §7: no extra request). Receipts that
    /// cannot be read now are reported at a later heartbeat, and so are those
    /// of a heartbeat sooner than [`MIN_WATCH_GAP`] after the last read: a
    /// client heartbeating in a loop costs the receipt service nothing more.
    /// A watch list over [`MAX_WATCHED`] ends the stream with INVALID_ARGUMENT.
    async fn on_heartbeat(&mut self, heartbeat: pb::HeartbeatFrame) -> Step {
        if heartbeat.watching_msgids.len() > MAX_WATCHED {
            return Err(over_limit(
                "heartbeat.watching_msgids",
                MAX_WATCHED,
                heartbeat.watching_msgids.len(),
            ));
        }
        let now = Instant::now();
        if !self.heartbeats.take(now, HEARTBEAT_EVERY, HEARTBEAT_BURST) {
            metrics::counter!("parley_gateway_heartbeats_refused_total").increment(1);
            let status = refuse(
                Reason::RateLimited,
                format!(
                    "heartbeats: at most {HEARTBEAT_BURST} in a row, then one every {HEARTBEAT_EVERY:?}; heartbeat at the interval auth_ok gives"
                ),
                HEARTBEAT_EVERY,
            );
            return self
                .push(Out::HeartbeatReply(pb::HeartbeatReplyFrame {
                    code: status.code() as i32,
                    error: status.message().to_owned(),
                    reason: reason_text(&status),
                    retry_after_ms: retry_after_ms(&status),
                    ..Default::default()
                }))
                .await;
        }
        if self
            .watch_read_at
            .is_some_and(|at| now.saturating_duration_since(at) < MIN_WATCH_GAP)
        {
            return self
                .push(Out::HeartbeatReply(pb::HeartbeatReplyFrame::default()))
                .await;
        }
        self.watch_read_at = Some(now);
        let mut by_group: HashMap<u64, Vec<u64>> = HashMap::new();
        for msgid in heartbeat.watching_msgids {
            if let Some(seen) = self.known.get_mut(msgid) {
                by_group.entry(seen.gid).or_default().push(msgid);
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
                .clone()
                .get_receipts(acting_for(&self.uid, request))
                .await
            {
                Ok(reply) => reply.into_inner().receipts,
                Err(status) => {
                    tracing::debug!(gid, code = ?status.code(), "watched receipts unavailable");
                    continue;
                }
            };
            // The receipt service shows no counts of a message sent with
            // receipts off, nor to a user who hides their reads there: none
            // to report.
            let off = mpb::ReceiptPolicy::Off as i32;
            let shown = |r: &rpb::MessageReceipt| r.policy != off && !r.viewer_private;
            for receipt in receipts.into_iter().filter(shown) {
                let Some(seen) = self.known.get_mut(receipt.msgid) else {
                    continue;
                };
                if seen.reported.replace(receipt.read_count) == Some(receipt.read_count) {
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
            ..Default::default()
        }))
        .await
    }
}

/// What a live message needs before it can be pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// It is the group's next message: push it.
    Push,
    /// Already pushed, or left to owed work that reads it from the store.
    Skip,
    /// The group is new to the stream: read its position first.
    Position,
    /// Messages before it are missing: sync the group first.
    Gap,
}

/// The position rule: a live message of seq `seq` in a group whose delivered
/// position is `position` (`None`: not known yet), whose sync is `owed`,
/// while the login's or a resync's catch-up is `catch_up` owed.
fn placement(owed: bool, catch_up: bool, position: Option<u64>, seq: u64) -> Placement {
    match position {
        _ if owed => Placement::Skip,
        None if catch_up => Placement::Skip,
        None => Placement::Position,
        Some(at) if seq <= at => Placement::Skip,
        Some(at) if seq > at.saturating_add(1) => Placement::Gap,
        Some(_) => Placement::Push,
    }
}

/// A rate with bursts, as a virtual schedule (GCRA): each frame taken moves
/// the schedule one period on; a frame that would put it more than a burst
/// ahead of now is refused and moves nothing.
#[derive(Debug, Default)]
struct Allowance {
    /// When the frames taken so far would have been due at the rate.
    due: Option<Instant>,
}

impl Allowance {
    /// Takes one frame at `now` if the allowance has room.
    fn take(&mut self, now: Instant, every: Duration, burst: u32) -> bool {
        let due = self.due.map_or(now, |due| due.max(now)) + every;
        if due.saturating_duration_since(now) > every.saturating_mul(burst) {
            return false;
        }
        self.due = Some(due);
        true
    }
}

/// A frame past a documented limit: the stream ends with INVALID_ARGUMENT.
fn over_limit(field: &'static str, limit: usize, got: usize) -> End {
    let refused = Error::invalid(field, format!("at most {limit}, this frame has {got}"));
    End::Refused(refused.into())
}

/// A frame that does not decode: the stream ends with INVALID_ARGUMENT.
pub fn undecodable(why: &str) -> Status {
    Error::invalid("frame", format!("undecodable: {why}")).into()
}

/// A failed call's status when the callee refused the request itself (which
/// no retry changes); the work is owed instead when the callee may yet do it.
fn later_if_transient(status: Status) -> Result<Status, Stop> {
    if may_pass(&status) {
        Err(Stop::Later(status))
    } else {
        Ok(status)
    }
}

/// Adds an ack to a batch: the highest seq per (group, kind) wins, and a read
/// ack makes a delivered ack up to the same seq redundant.
fn merge_ack(batch: &mut AckBatch, key: (u64, bool), seq: u64) {
    let (gid, read) = key;
    if !read && batch.get(&(gid, true)).is_some_and(|&r| r >= seq) {
        return;
    }
    let entry = batch.entry(key).or_insert(seq);
    *entry = (*entry).max(seq);
    if read && batch.get(&(gid, false)).is_some_and(|&d| d <= seq) {
        batch.remove(&(gid, false));
    }
}

/// A call the gateway gave up waiting on (its channel's timeout reads as
/// CANCELLED, a deadline as DEADLINE_EXCEEDED) is, to the client, a service
/// that could not answer now: UNAVAILABLE with a retry hint. A send is safe to
/// retry with the same `client_msg_id` whether or not it was stored. Every
/// other status is the callee's own answer and passes as it is.
fn unanswered(status: Status) -> Status {
    match status.code() {
        Code::Cancelled | Code::DeadlineExceeded => refuse(
            Reason::DependencyUnavailable,
            format!(
                "no answer in time ({}); retry with the same client_msg_id",
                status.message()
            ),
            UNANSWERED_RETRY,
        ),
        _ => status,
    }
}

/// The result frame of a refused send, with the callee's retry hint.
fn refused_send(request_id: u64, status: &Status) -> pb::SendResultFrame {
    pb::SendResultFrame {
        request_id,
        code: status.code() as i32,
        error: status.message().to_owned(),
        reason: reason_text(status),
        retry_after_ms: retry_after_ms(status),
        ..Default::default()
    }
}

/// Resolves when the gateway stops: gracefully, or by being dropped.
async fn stopped(mut stopping: watch::Receiver<bool>) -> End {
    match stopping.wait_for(|stop| *stop).await {
        Ok(_) => End::ShuttingDown,
        Err(_) => End::Dropped,
    }
}

/// The stream form of a stored message.
pub(crate) fn delivered(message: mpb::Message) -> pb::DeliveredMessage {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_keep_the_highest_seq_and_a_read_covers_delivered() {
        let mut batch = AckBatch::new();
        merge_ack(&mut batch, (1, false), 5);
        merge_ack(&mut batch, (1, false), 3);
        assert_eq!(batch.get(&(1, false)), Some(&5), "acks are cumulative");
        merge_ack(&mut batch, (1, true), 7);
        assert_eq!(
            batch.get(&(1, false)),
            None,
            "read up to 7 covers delivered up to 5"
        );
        merge_ack(&mut batch, (1, false), 6);
        assert_eq!(
            batch.get(&(1, false)),
            None,
            "delivered below the read is redundant"
        );
        merge_ack(&mut batch, (1, false), 9);
        assert_eq!(
            (batch.get(&(1, true)), batch.get(&(1, false))),
            (Some(&7), Some(&9))
        );
        merge_ack(&mut batch, (2, true), 1);
        assert_eq!(batch.len(), 3);
    }

    /// What an idle stream's task holds: its future's size is allocated for
    /// every stream however idle, so what only busy streams need is boxed.
    #[tokio::test]
    async fn a_session_task_is_small() {
        use parley_server::upstream::{
            Callee, MessageUrl, NotificationUrl, PresenceUrl, ReceiptUrl,
        };
        let url = "http://127.0.0.1:1".to_owned();
        let identity = parley_server::ServiceIdentity::new("gateway", None);
        let receipt = ReceiptUrl { url: url.clone() }
            .client(&identity)
            .expect("client");
        let presence = PresenceUrl { url: url.clone() }
            .client(&identity)
            .expect("client");
        let hub = Hub::default();
        let upstream = Upstream {
            message: MessageUrl { url: url.clone() }
                .client(&identity)
                .expect("client"),
            notification: NotificationUrl { url }.client(&identity).expect("client"),
            acks: AckWriter::start(receipt.clone()),
            receipt,
            offline: crate::offline::OfflineTeller::new(hub.clone(), presence.clone(), "gw".into())
                .0,
            retries: Retries::default(),
            presence,
        };
        let uid = Uid::parse("uid1").expect("uid");
        let registration = hub.register(&uid, "phone", 8, 8).expect("room");
        let (out, _rx) = mpsc::channel(8);
        let (close, _) = oneshot::channel();
        let (_stop, stopping) = watch::channel(false);
        let start = Start {
            uid,
            device_id: "phone".into(),
            receipts_cursor: String::new(),
            id: registration.id,
            inbox: registration.inbox,
            kick: registration.kick,
            out,
            close,
            limits: Limits {
                slow_after: Duration::from_secs(1),
                send_queue: 4,
                send_wait: Duration::from_secs(1),
                retry_max: Duration::from_secs(1),
            },
            stopping,
        };
        let frames = Streaming::new_request(
            crate::wire::RequestDecoder,
            tonic::body::Body::empty(),
            None,
            None,
        );
        let task = Session::run(
            start,
            Arc::new(upstream),
            hub,
            "gw".into(),
            grpc_frames(frames),
        );
        let size = std::mem::size_of_val(&task);
        // What the queues carry is allocated 32 slots at a time per stream.
        let slots = (std::mem::size_of::<Inbound>(), std::mem::size_of::<Frame>());
        eprintln!("session task: {size} bytes; queue slots {slots:?} bytes");
        assert!(size <= 2560, "a session's task is {size} bytes");
        assert!(
            slots.0 <= 24 && slots.1 <= 16,
            "queue slots of {slots:?} bytes"
        );
    }

    #[test]
    fn a_call_given_up_on_is_unavailable_with_a_hint_and_answers_pass_as_they_are() {
        for timed_out in [
            Status::cancelled("Timeout expired"),
            Status::deadline_exceeded("deadline"),
        ] {
            let frame = refused_send(7, &unanswered(timed_out));
            assert_eq!(Code::from(frame.code), Code::Unavailable, "{frame:?}");
            assert!(frame.retry_after_ms > 0, "{frame:?}");
            assert!(frame.error.contains("client_msg_id"), "{frame:?}");
        }
        let refused = refused_send(7, &unanswered(Status::permission_denied("not a member")));
        assert_eq!(Code::from(refused.code), Code::PermissionDenied);
        assert_eq!(refused.retry_after_ms, 0);
    }

    #[test]
    fn the_position_rule_pushes_the_next_message_only() {
        use Placement::*;
        let cases = [
            // (owed, catch_up, position, seq) → placement
            ((false, false, Some(4), 5), Push),
            ((false, false, Some(4), 4), Skip),
            ((false, false, Some(4), 1), Skip),
            ((false, false, Some(4), 7), Gap),
            ((false, false, None, 1), Position),
            ((false, true, None, 1), Skip),
            ((true, false, Some(4), 5), Skip),
            ((false, true, Some(4), 5), Push),
            ((false, false, Some(u64::MAX), u64::MAX), Skip),
            ((false, false, Some(0), 1), Push),
        ];
        for ((owed, catch_up, position, seq), expected) in cases {
            assert_eq!(
                placement(owed, catch_up, position, seq),
                expected,
                "owed {owed}, catch-up {catch_up}, position {position:?}, seq {seq}"
            );
        }
    }

    #[test]
    fn heartbeats_take_a_burst_then_one_per_period() {
        let every = Duration::from_secs(1);
        let start = Instant::now();
        let mut allowance = Allowance::default();
        for i in 0..20 {
            assert!(
                allowance.take(start, every, 20),
                "heartbeat {i} of the burst"
            );
        }
        assert!(!allowance.take(start, every, 20), "the 21st at once");
        assert!(!allowance.take(start + every / 2, every, 20));
        assert!(
            allowance.take(start + every, every, 20),
            "one a period after"
        );
        assert!(!allowance.take(start + every, every, 20));
        assert!(
            allowance.take(start + every * 100, every, 20),
            "an idle stream has its burst back"
        );
    }

    #[test]
    fn retries_back_off_apart_and_honour_a_longer_hint() {
        let max = Duration::from_secs(5);
        let mut retry = Retry::default();
        for _ in 0..6 {
            retry.schedule(Retried::Acks, None, max);
        }
        assert_eq!((retry.ack_failures, retry.owed_failures), (6, 0));
        retry.at = None;
        retry.schedule(Retried::Owed, Some(Duration::from_secs(2)), max);
        let wait = retry.at.expect("scheduled") - Instant::now();
        assert!(
            wait > Duration::from_millis(1900),
            "the hint wins: {wait:?}"
        );
        retry.at = None;
        retry.schedule(Retried::Owed, Some(Duration::from_secs(3600)), max);
        let wait = retry.at.expect("scheduled") - Instant::now();
        assert!(wait <= max, "never past the configured maximum: {wait:?}");
    }
}
