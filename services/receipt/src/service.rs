//! The gRPC handlers: validate, authorise, call the store, convert back.

use std::collections::HashMap;

use futures::{FutureExt, StreamExt, future::BoxFuture};
use parley_proto::{
    message as mpb,
    receipt::{self as pb, receipt_service_server::ReceiptService},
};
use parley_server::upstream::MessageClient;
use parley_server::{
    Caller, Reason, Seq, Uid,
    ids::{InvalidId, positive},
    now_ms, page,
};
use tonic::{Request, Response, Status};

use crate::{
    digest::Coalescer,
    domain::{self, AckKind, MAX_LIST_PAGE, MAX_MSGIDS_PER_REQUEST, Planned, ReceiptState, unread},
    error::ReceiptError,
    store::{
        GroupSelection, InitMessage, InitOutcome, MemberAck, MemberChange, MsgReceipt, Privacy,
        PrivacyScope, ReceiptStore, UnreadRecord,
    },
};

/// Pairs one UnreadTotals call answers.
pub const MAX_UNREAD_TOTALS: usize = 1000;
/// Closed stays one membership change carries.
pub const MAX_PAST_STAYS: usize = 16;

/// The ReceiptService implementation over a store.
pub struct ReceiptApi<S> {
    store: S,
    ledger_max: i64,
    digests: Coalescer,
    message: MessageClient,
    retries: parley_server::retry::Retries,
}

impl<S: ReceiptStore> ReceiptApi<S> {
    /// Handlers over `store`, keeping a ledger for groups up to `ledger_max`
    /// recipients; read acks are reported to `digests` for the senders, and
    /// `message` is asked for a group's committed last seq when an ack goes
    /// past what the outbox has delivered here.
    pub fn new(store: S, ledger_max: i64, digests: Coalescer, message: MessageClient) -> Self {
        Self {
            store,
            ledger_max,
            digests,
            message,
            retries: parley_server::retry::Retries::default(),
        }
    }

    /// Reports to the digests each message recorded now that already has
    /// readers: their acks came before it (the outbox was behind), and marked
    /// nothing then, so its sender would hear of them only by pulling.
    fn digest_early_readers(&self, messages: &[InitMessage], outcomes: &[InitOutcome]) {
        for (message, outcome) in messages.iter().zip(outcomes) {
            if outcome.created && outcome.read_count > 0 {
                self.digests
                    .mark(message.gid, message.seq.saturating_sub(1), message.seq);
            }
        }
    }

    /// One group's acks in one transaction, run again when the database broke
    /// a deadlock.
    async fn ack_group_retrying_deadlocks(
        &self,
        gid: i64,
        acks: &[MemberAck],
        committed: Option<i64>,
    ) -> Result<Vec<Planned>, ReceiptError> {
        parley_server::db::retrying_deadlocks(
            || self.store.ack_group(gid, acks, committed, now_ms()),
            ReceiptError::is_deadlock,
        )
        .await
    }

    /// Applies each group's acks (one transaction per group, a few groups at
    /// a time). Acks past what the receipt service has recorded are capped at
    /// what the message service committed (asked once for all the groups that
    /// need it) and applied in a second transaction of their group. Read
    /// cursors that moved are reported to the digests.
    async fn apply_acks(
        &self,
        groups: &[(i64, Vec<MemberAck>)],
    ) -> Vec<Result<Vec<Acked>, Status>> {
        let first: Vec<BoxFuture<'_, Result<Vec<Acked>, Status>>> = groups
            .iter()
            .map(|(gid, acks)| {
                async move {
                    let planned = self.ack_group_retrying_deadlocks(*gid, acks, None).await?;
                    Ok(planned
                        .into_iter()
                        .map(|planned| Acked {
                            planned,
                            capped: false,
                        })
                        .collect())
                }
                .boxed()
            })
            .collect();
        let mut results: Vec<Result<Vec<Acked>, Status>> = futures::stream::iter(first)
            .buffered(GROUPS_AT_ONCE)
            .collect()
            .await;
        let behind: Vec<i64> = groups
            .iter()
            .zip(&results)
            .filter(|(_, result)| {
                result
                    .as_ref()
                    .is_ok_and(|acked| acked.iter().any(Acked::is_past))
            })
            .map(|((gid, _), _)| *gid)
            .collect();
        if !behind.is_empty() {
            // Readers acked messages the outbox has not recorded here yet.
            metrics::counter!("parley_receipt_acks_ahead_total").increment(behind.len() as u64);
            match self.committed_last_seqs(&behind).await {
                Ok(committed) => {
                    for ((gid, acks), result) in groups.iter().zip(results.iter_mut()) {
                        let (Some(&committed), Ok(acked)) = (committed.get(gid), result.as_mut())
                        else {
                            continue;
                        };
                        if let Err(status) = self.apply_capped(*gid, acks, acked, committed).await {
                            *result = Err(status);
                        }
                    }
                }
                Err(status) => {
                    for ((gid, _), result) in groups.iter().zip(results.iter_mut()) {
                        if behind.contains(gid) {
                            *result = Err(status.clone());
                        }
                    }
                }
            }
        }
        for ((gid, acks), result) in groups.iter().zip(&results) {
            let Ok(acked) = result else { continue };
            for (ack, acked) in acks.iter().zip(acked) {
                if let Planned::Moved {
                    previous,
                    cursors,
                    shown_from,
                } = acked.planned
                    && cursors.read > previous.read
                {
                    self.digests
                        .read_moved(&ack.uid, *gid, shown_from, cursors.read);
                }
            }
        }
        results
    }

    /// The acks of a group that were past the receipt service's last seq,
    /// capped at the group's `committed` last seq and applied.
    async fn apply_capped(
        &self,
        gid: i64,
        acks: &[MemberAck],
        acked: &mut [Acked],
        committed: i64,
    ) -> Result<(), Status> {
        let past: Vec<usize> = (0..acked.len()).filter(|&i| acked[i].is_past()).collect();
        let capped: Vec<MemberAck> = past
            .iter()
            .map(|&i| MemberAck {
                up_to: acks[i].up_to.min(committed),
                ..acks[i].clone()
            })
            .collect();
        let planned = self
            .ack_group_retrying_deadlocks(gid, &capped, Some(committed))
            .await?;
        for ((i, ack), planned) in past.into_iter().zip(&capped).zip(planned) {
            acked[i] = Acked {
                planned,
                capped: ack.up_to < acks[i].up_to,
            };
        }
        Ok(())
    }

    /// Each group's last committed seq, from the message service. The receipt
    /// service's own last seq trails it while the outbox is behind.
    async fn committed_last_seqs(&self, gids: &[i64]) -> Result<HashMap<i64, i64>, Status> {
        let request = mpb::LastSeqsRequest {
            gids: gids
                .iter()
                .map(|&gid| wire(gid))
                .collect::<Result<_, _>>()?,
        };
        // A read: safe to try again while the message service restarts.
        let reply = self
            .retries
            .idempotent(|| {
                let (mut message, request) = (self.message.clone(), request.clone());
                async move { message.last_seqs(request).await }
            })
            .await?;
        reply
            .into_inner()
            .groups
            .into_iter()
            .map(
                |group| match (i64::try_from(group.gid), i64::try_from(group.last_seq)) {
                    (Ok(gid), Ok(last_seq)) => Ok((gid, last_seq)),
                    _ => Err(parley_server::error::status(
                        Reason::Internal,
                        "the message service answered an invalid last seq",
                    )),
                },
            )
            .collect()
    }

    /// Loads messages by id and checks the caller may see their receipts: the
    /// sender of each, or a current admin of the group. Says too whether the
    /// caller hides their reads in the group.
    async fn visible_messages(
        &self,
        caller: &Uid,
        gid: i64,
        msgids: &[i64],
    ) -> Result<(Vec<MsgReceipt>, bool), ReceiptError> {
        let found = self.store.messages(gid, msgids).await?;
        // Only a missing message raises the question whether the group exists.
        if found.len() < msgids.len() && !self.store.group_exists(gid).await? {
            return Err(ReceiptError::refused(Reason::GroupNotFound));
        }
        let mut viewer_private = found.first().is_some_and(|m| m.sender_private != 0);
        if found.iter().any(|m| m.sender_uid != caller.as_str()) {
            let cursor = self.store.cursor(gid, caller.as_str()).await?;
            match cursor {
                Some(c) if c.admin && c.left_seq.is_none() => viewer_private = c.private,
                _ => {
                    return Err(ReceiptError::refused(Reason::NotSenderOrAdmin));
                }
            }
        }
        // Keep the request's order; a missing id is an error, not a silent gap.
        let ordered = msgids
            .iter()
            .map(|id| {
                found
                    .iter()
                    .find(|m| m.msgid == *id)
                    .cloned()
                    .ok_or_else(|| ReceiptError::refused(Reason::MessageNotFound))
            })
            .collect::<Result<_, _>>()?;
        Ok((ordered, viewer_private))
    }

    /// When each of `readers` read `message`: exact where the ledger kept
    /// it, bounded by the reader's cursor otherwise.
    async fn read_times(
        &self,
        message: &MsgReceipt,
        readers: &[String],
    ) -> Result<Vec<pb::ReadTime>, ReceiptError> {
        let ledger = if message.ledger {
            self.store
                .read_times(message.gid, message.seq, readers)
                .await?
        } else {
            Vec::new()
        };
        let cursors = self
            .store
            .cursor_times(message.gid, message.seq, readers)
            .await?;
        Ok(domain::read_times(readers, &ledger, &cursors)
            .into_iter()
            .map(|(uid, read_at_ms, precision)| pb::ReadTime {
                uid,
                read_at_ms,
                precision: match precision {
                    domain::Precision::Exact => pb::ReadTimePrecision::Exact,
                    domain::Precision::NoLaterThan => pb::ReadTimePrecision::NoLaterThan,
                }
                .into(),
            })
            .collect())
    }

    async fn members_page(
        &self,
        message: &MsgReceipt,
        state: ReceiptState,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<String>, String), ReceiptError> {
        let uids = self
            .store
            .receipt_members(message, state, after, limit)
            .await?;
        let next = page::next_token(&uids, limit, String::clone);
        Ok((uids, next))
    }

    /// Where a privacy request applies: every group (gid 0), or a group the
    /// caller is in now.
    async fn privacy_scope(&self, caller: &Uid, gid: u64) -> Result<PrivacyScope, ReceiptError> {
        if gid == 0 {
            return Ok(PrivacyScope::EveryGroup);
        }
        let gid = positive(gid, "gid")?;
        match self.store.cursor(gid, caller.as_str()).await? {
            Some(c) if c.left_seq.is_none() => Ok(PrivacyScope::Group(gid)),
            _ => Err(ReceiptError::refused(Reason::NotAMember)),
        }
    }
}

/// A privacy on the wire.
fn privacy_state(privacy: Privacy) -> pb::ReceiptPrivacyState {
    let choice = |private: bool| {
        if private {
            pb::ReceiptPrivacy::Private
        } else {
            pb::ReceiptPrivacy::Shared
        }
    };
    pb::ReceiptPrivacyState {
        every_group: choice(privacy.every_group).into(),
        group: privacy
            .group
            .map_or(pb::ReceiptPrivacy::Unspecified, choice)
            .into(),
        private: privacy.private,
    }
}

/// A stored id, seq or count for the wire: a negative one is a malformed
/// row, an INTERNAL error rather than a silent 0.
fn wire(stored: i64) -> Result<u64, InvalidId> {
    Seq::try_from(stored).map(Seq::wire)
}

fn to_u32(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

fn parse_msgids(raw: &[u64]) -> Result<Vec<i64>, ReceiptError> {
    if raw.is_empty() || raw.len() > MAX_MSGIDS_PER_REQUEST {
        return Err(ReceiptError::invalid(
            "msgids",
            format!("must hold 1 to {MAX_MSGIDS_PER_REQUEST} ids"),
        ));
    }
    raw.iter().map(|&id| positive(id, "msgids")).collect()
}

fn tier(message: &MsgReceipt) -> pb::ReceiptTier {
    if message.ledger {
        pb::ReceiptTier::Ledger
    } else {
        pb::ReceiptTier::Cursor
    }
}

/// Checks one committed message as the message service describes it. A list
/// of recipients (older message services send one) is checked but not kept:
/// who read is answered from the cursors.
fn init_message(req: pb::InitReceiptsRequest) -> Result<InitMessage, ReceiptError> {
    let sender = Uid::parse(&req.sender_uid)
        .map_err(|e| ReceiptError::invalid("sender_uid", e.to_string()))?;
    if req.recipient_uids.len() > domain::MAX_LEDGER_MEMBERS as usize {
        return Err(ReceiptError::invalid("recipient_uids", "too many"));
    }
    let recipients = req
        .recipient_uids
        .iter()
        .map(|u| Uid::parse(u).map(Uid::into_string))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ReceiptError::invalid("recipient_uids", e.to_string()))?;
    let mut listed = std::collections::HashSet::with_capacity(recipients.len());
    if let Some(twice) = recipients.iter().find(|uid| !listed.insert(uid.as_str())) {
        return Err(ReceiptError::invalid(
            "recipient_uids",
            format!("{twice} is listed twice"),
        ));
    }
    Ok(InitMessage {
        gid: positive(req.gid, "gid")?,
        msgid: positive(req.msgid, "msgid")?,
        seq: positive(req.seq, "seq")?,
        sender_uid: sender.into_string(),
        need_receipt: req.need_receipt,
        recipient_count: i64::from(req.recipient_count),
        created_at_ms: req.created_at_ms,
        policy: domain::Policy::parse(req.receipt_policy)?,
    })
}

/// Records how long after its commit the outbox recorded each new message
/// here: a digest of its readers cannot go out sooner.
fn record_init_lag(messages: &[InitMessage], outcomes: &[InitOutcome]) {
    let now = now_ms();
    for (message, outcome) in messages.iter().zip(outcomes) {
        if outcome.created {
            let lag_ms = now.saturating_sub(message.created_at_ms).max(0);
            metrics::histogram!("parley_receipt_init_lag_seconds").record(lag_ms as f64 / 1000.0);
        }
    }
}

fn init_result(outcome: &InitOutcome) -> pb::InitReceiptsResponse {
    pb::InitReceiptsResponse {
        ledger: outcome.ledger,
        created: outcome.created,
    }
}

/// One ack of a batch, as applied.
#[derive(Clone, Copy, Debug)]
struct Acked {
    planned: Planned,
    /// Its seq was past the group's committed last seq and was lowered to it.
    capped: bool,
}

impl Acked {
    fn is_past(&self) -> bool {
        matches!(self.planned, Planned::Past)
    }

    /// What Ack answers for it.
    fn reply(self) -> Result<pb::AckResponse, Status> {
        match self.planned {
            Planned::Moved {
                previous, cursors, ..
            } => Ok(pb::AckResponse {
                delivered_seq: wire(cursors.delivered)?,
                read_seq: wire(cursors.read)?,
                advanced: cursors != previous,
                capped: self.capped,
            }),
            Planned::Past => Err(ReceiptError::refused(Reason::PastLastSeq).into()),
            Planned::NotMember => Err(ReceiptError::refused(Reason::NotAMember).into()),
        }
    }

    /// What AckBatch answers for it.
    fn result(&self) -> pb::MemberAckResult {
        match self.reply() {
            Ok(cursors) => pb::MemberAckResult {
                code: tonic::Code::Ok.into(),
                cursors: Some(cursors),
            },
            Err(status) => pb::MemberAckResult {
                code: status.code().into(),
                cursors: None,
            },
        }
    }
}

/// Checks one ack from the wire.
fn member_ack(uid: String, up_to_seq: u64, kind: i32) -> Result<MemberAck, ReceiptError> {
    let up_to = positive(up_to_seq, "up_to_seq")?;
    let kind = match pb::AckKind::try_from(kind) {
        Ok(pb::AckKind::Delivered) => AckKind::Delivered,
        Ok(pb::AckKind::Read) => AckKind::Read,
        _ => return Err(ReceiptError::invalid("kind", "DELIVERED or READ")),
    };
    Ok(MemberAck { uid, up_to, kind })
}

/// Checks a whole AckBatch: any malformed part refuses it all, naming where.
fn ack_batch(req: pb::AckBatchRequest) -> Result<Vec<(i64, Vec<MemberAck>)>, ReceiptError> {
    let total: usize = req.groups.iter().map(|g| g.acks.len()).sum();
    if total == 0 || total > domain::MAX_ACK_BATCH {
        return Err(ReceiptError::invalid(
            "groups",
            format!("must hold 1 to {} acks in all", domain::MAX_ACK_BATCH),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(req.groups.len());
    req.groups
        .into_iter()
        .enumerate()
        .map(|(g, group)| {
            let at = |e: ReceiptError| e.within(&format!("groups[{g}]"));
            let gid = positive(group.gid, "gid").map_err(at)?;
            if !seen.insert(gid) {
                return Err(at(ReceiptError::invalid("gid", "named twice")));
            }
            if group.acks.is_empty() {
                return Err(at(ReceiptError::invalid("acks", "must not be empty")));
            }
            let acks = group
                .acks
                .into_iter()
                .enumerate()
                .map(|(a, ack)| {
                    let at = |e: ReceiptError| e.within(&format!("groups[{g}].acks[{a}]"));
                    let uid = Uid::parse(&ack.uid)
                        .map_err(|e| at(ReceiptError::invalid("uid", e.to_string())))?;
                    member_ack(uid.into_string(), ack.up_to_seq, ack.kind).map_err(at)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((gid, acks))
        })
        .collect()
}

/// Groups of one AckBatch whose transactions run at the same time.
const GROUPS_AT_ONCE: usize = 8;

#[tonic::async_trait]
impl<S: ReceiptStore> ReceiptService for ReceiptApi<S> {
    async fn init_receipts(
        &self,
        request: Request<pb::InitReceiptsRequest>,
    ) -> Result<Response<pb::InitReceiptsResponse>, Status> {
        Caller::require_service(&request, "message")?;
        let message = init_message(request.into_inner())?;
        let outcomes = self
            .store
            .init_receipts(std::slice::from_ref(&message), self.ledger_max)
            .await?;
        self.digest_early_readers(std::slice::from_ref(&message), &outcomes);
        let result = outcomes.first().map(init_result).unwrap_or_default();
        Ok(Response::new(result))
    }

    async fn init_receipts_batch(
        &self,
        request: Request<pb::InitReceiptsBatchRequest>,
    ) -> Result<Response<pb::InitReceiptsBatchResponse>, Status> {
        Caller::require_service(&request, "message")?;
        let req = request.into_inner();
        if req.messages.is_empty() || req.messages.len() > domain::MAX_INIT_BATCH {
            return Err(ReceiptError::invalid(
                "messages",
                format!("must hold 1 to {} entries", domain::MAX_INIT_BATCH),
            )
            .into());
        }
        let listed: usize = req.messages.iter().map(|m| m.recipient_uids.len()).sum();
        if listed > domain::MAX_INIT_BATCH_RECIPIENTS {
            return Err(ReceiptError::invalid(
                "messages",
                format!(
                    "{listed} recipient_uids in all; at most {} are taken",
                    domain::MAX_INIT_BATCH_RECIPIENTS
                ),
            )
            .into());
        }
        let messages = parley_server::check_each("messages", req.messages, init_message)?;
        let outcomes = self.store.init_receipts(&messages, self.ledger_max).await?;
        record_init_lag(&messages, &outcomes);
        self.digest_early_readers(&messages, &outcomes);
        Ok(Response::new(pb::InitReceiptsBatchResponse {
            results: outcomes.iter().map(init_result).collect(),
        }))
    }

    async fn apply_membership(
        &self,
        request: Request<pb::ApplyMembershipRequest>,
    ) -> Result<Response<pb::ApplyMembershipResponse>, Status> {
        Caller::require_service(&request, "message")?;
        let req = request.into_inner();
        let gid = positive(req.gid, "gid")?;
        if req.changes.is_empty() || req.changes.len() > 1000 {
            return Err(ReceiptError::invalid("changes", "must hold 1 to 1000 entries").into());
        }
        if req
            .changes
            .iter()
            .any(|c| c.past_stays.len() > MAX_PAST_STAYS)
        {
            return Err(ReceiptError::invalid(
                "changes",
                format!("past_stays holds at most {MAX_PAST_STAYS} stays"),
            )
            .into());
        }
        let changes = req
            .changes
            .into_iter()
            .map(|c| {
                let uid =
                    Uid::parse(&c.uid).map_err(|e| ReceiptError::invalid("uid", e.to_string()))?;
                let seq = |v: u64| {
                    i64::try_from(v).map_err(|_| ReceiptError::invalid("seq", "out of range"))
                };
                Ok(MemberChange {
                    uid: uid.into_string(),
                    admin: c.admin,
                    joined_seq: seq(c.joined_seq)?,
                    left_seq: if c.left || c.left_seq > 0 {
                        Some(seq(c.left_seq)?)
                    } else {
                        None
                    },
                    version: positive(c.version, "version")?,
                    past_stays: c
                        .past_stays
                        .iter()
                        .map(|stay| Ok((seq(stay.joined_seq)?, seq(stay.left_seq)?)))
                        .collect::<Result<_, ReceiptError>>()?,
                })
            })
            .collect::<Result<Vec<_>, ReceiptError>>()?;
        let applied = self.store.apply_membership(gid, &changes, now_ms()).await?;
        Ok(Response::new(pb::ApplyMembershipResponse { applied }))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = positive(req.gid, "gid")?;
        let ack = member_ack(caller.into_string(), req.up_to_seq, req.kind)?;
        // One group of one ack: one answer.
        let mut results = self.apply_acks(&[(gid, vec![ack])]).await;
        let acked = results.pop().transpose()?.and_then(|mut acked| acked.pop());
        acked
            .ok_or_else(|| {
                parley_server::error::status(Reason::Internal, "an ack went unanswered")
            })?
            .reply()
            .map(Response::new)
    }

    async fn ack_batch(
        &self,
        request: Request<pb::AckBatchRequest>,
    ) -> Result<Response<pb::AckBatchResponse>, Status> {
        Caller::require_service(&request, "gateway")?;
        let groups = ack_batch(request.into_inner())?;
        let results = self.apply_acks(&groups).await;
        let groups = groups
            .iter()
            .map(|(gid, _)| *gid)
            .zip(results)
            .map(|(gid, result)| {
                let gid = wire(gid)?;
                Ok(match result {
                    Ok(acked) => pb::GroupAcksResult {
                        gid,
                        code: tonic::Code::Ok.into(),
                        message: String::new(),
                        acks: acked.iter().map(Acked::result).collect(),
                        reason: String::new(),
                    },
                    Err(status) => pb::GroupAcksResult {
                        gid,
                        code: status.code().into(),
                        message: status.message().to_owned(),
                        acks: Vec::new(),
                        reason: parley_server::error::reason_text(&status),
                    },
                })
            })
            .collect::<Result<_, InvalidId>>()?;
        Ok(Response::new(pb::AckBatchResponse { groups }))
    }

    async fn unread_totals(
        &self,
        request: Request<pb::UnreadTotalsRequest>,
    ) -> Result<Response<pb::UnreadTotalsResponse>, Status> {
        Caller::require_service(&request, "notification")?;
        let members = request.into_inner().members;
        if members.is_empty() || members.len() > MAX_UNREAD_TOTALS {
            return Err(ReceiptError::invalid(
                "members",
                format!("1 to {MAX_UNREAD_TOTALS} pairs, got {}", members.len()),
            )
            .into());
        }
        let pairs = parley_server::check_each("members", members, |m| {
            let uid =
                Uid::parse(&m.uid).map_err(|e| ReceiptError::invalid("uid", e.to_string()))?;
            Ok((uid.into_string(), positive(m.gid, "gid")?))
        })?;
        let mut uids: Vec<String> = pairs.iter().map(|(uid, _)| uid.clone()).collect();
        uids.sort();
        uids.dedup();
        let mut positions: HashMap<&str, Vec<UnreadRecord>> = HashMap::new();
        let rows = self.store.unread_of(&uids).await?;
        for row in &rows {
            positions
                .entry(row.uid.as_str())
                .or_default()
                .push(row.record);
        }
        let members = pairs
            .iter()
            .map(|(uid, gid)| {
                let groups = positions.get(uid.as_str()).map_or(&[][..], Vec::as_slice);
                let total = groups
                    .iter()
                    .map(|g| unread(g.last_seq, g.read_seq))
                    .fold(0u64, u64::saturating_add);
                let here = groups.iter().find(|g| g.gid == *gid);
                Ok(pb::MemberUnread {
                    uid: uid.clone(),
                    gid: wire(*gid)?,
                    unread_total: total,
                    member: here.is_some(),
                    read_seq: here.map_or(Ok(0), |g| wire(g.read_seq))?,
                })
            })
            .collect::<Result<_, InvalidId>>()?;
        Ok(Response::new(pb::UnreadTotalsResponse { members }))
    }

    async fn get_receipts(
        &self,
        request: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = positive(req.gid, "gid")?;
        let msgids = parse_msgids(&req.msgids)?;
        if req.list_page_size > MAX_LIST_PAGE {
            return Err(ReceiptError::invalid(
                "list_page_size",
                format!("at most {MAX_LIST_PAGE}"),
            )
            .into());
        }
        let (messages, viewer_private) = self.visible_messages(&caller, gid, &msgids).await?;
        let mut receipts = Vec::with_capacity(messages.len());
        for message in messages {
            let sight = message.sight(viewer_private);
            let counted = |n: i64| if sight.shows_counts() { to_u32(n) } else { 0 };
            let mut receipt = pb::MessageReceipt {
                msgid: wire(message.msgid)?,
                seq: wire(message.seq)?,
                read_count: counted(message.read_count),
                recipient_count: counted(message.recipient_count),
                tier: tier(&message).into(),
                policy: i32::from(sight.policy.code()),
                viewer_private,
                ..Default::default()
            };
            if req.list_page_size > 0 && sight.shows_lists().is_ok() {
                let size = req.list_page_size;
                (receipt.read_uids, receipt.read_next_page_token) = self
                    .members_page(&message, ReceiptState::Read, None, size)
                    .await?;
                (receipt.unread_uids, receipt.unread_next_page_token) = self
                    .members_page(&message, ReceiptState::Unread, None, size)
                    .await?;
            }
            receipts.push(receipt);
        }
        Ok(Response::new(pb::GetReceiptsResponse { receipts }))
    }

    async fn list_receipt_members(
        &self,
        request: Request<pb::ListReceiptMembersRequest>,
    ) -> Result<Response<pb::ListReceiptMembersResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let gid = positive(req.gid, "gid")?;
        let msgid = positive(req.msgid, "msgid")?;
        let state = match pb::ReceiptState::try_from(req.state) {
            Ok(pb::ReceiptState::Read) => ReceiptState::Read,
            Ok(pb::ReceiptState::Unread) => ReceiptState::Unread,
            _ => return Err(ReceiptError::invalid("state", "READ or UNREAD").into()),
        };
        let limit = page::page_size(req.page_size, 100, MAX_LIST_PAGE)?;
        let after = page::decode(&req.page_token)?;
        let (messages, viewer_private) = self.visible_messages(&caller, gid, &[msgid]).await?;
        let message = messages
            .first()
            .ok_or_else(|| ReceiptError::refused(Reason::MessageNotFound))?;
        message.sight(viewer_private).shows_lists()?;
        let (uids, next_page_token) = self
            .members_page(message, state, after.as_deref(), limit)
            .await?;
        let read_times = match state {
            ReceiptState::Read if !uids.is_empty() => self.read_times(message, &uids).await?,
            _ => Vec::new(),
        };
        Ok(Response::new(pb::ListReceiptMembersResponse {
            uids,
            next_page_token,
            read_times,
        }))
    }

    async fn pull_receipts(
        &self,
        request: Request<pb::PullReceiptsRequest>,
    ) -> Result<Response<pb::PullReceiptsResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let after = domain::decode_pull_cursor(&req.cursor)?;
        let limit = page::page_size(req.limit, 100, MAX_LIST_PAGE)?;
        let changed = self.store.pull(caller.as_str(), after, limit).await?;
        let complete = changed.len() < usize::try_from(limit).unwrap_or(usize::MAX);
        let next_cursor = match changed.last() {
            Some(last) => domain::encode_pull_cursor(last.changed_at_ms, last.msgid),
            None => req.cursor,
        };
        let receipts = changed
            .into_iter()
            .filter(|m| m.senders_sight().shows_counts())
            .map(|m| {
                Ok(pb::ReceiptSummary {
                    gid: wire(m.gid)?,
                    msgid: wire(m.msgid)?,
                    seq: wire(m.seq)?,
                    read_count: to_u32(m.read_count),
                    recipient_count: to_u32(m.recipient_count),
                    changed_at_ms: m.changed_at_ms,
                })
            })
            .collect::<Result<_, InvalidId>>()?;
        Ok(Response::new(pb::PullReceiptsResponse {
            receipts,
            next_cursor,
            complete,
        }))
    }

    async fn unread_counts(
        &self,
        request: Request<pb::UnreadCountsRequest>,
    ) -> Result<Response<pb::UnreadCountsResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let (rows, next_page_token) = if req.gids.is_empty() {
            let limit = page::page_size(req.page_size, 100, 1000)?;
            let after = page::decode_id(&req.page_token)?.unwrap_or(0);
            let selection = GroupSelection::After { gid: after, limit };
            let rows = self.store.unread(caller.as_str(), selection).await?;
            let next = page::next_token(&rows, limit, |r| r.gid.to_string());
            (rows, next)
        } else {
            if req.gids.len() > 1000 || !req.page_token.is_empty() {
                return Err(ReceiptError::invalid(
                    "gids",
                    "holds at most 1000 ids and takes no page token",
                )
                .into());
            }
            let gids = req
                .gids
                .iter()
                .map(|&g| positive(g, "gids"))
                .collect::<Result<Vec<_>, _>>()?;
            let rows = self
                .store
                .unread(caller.as_str(), GroupSelection::Only(&gids))
                .await?;
            (rows, String::new())
        };
        let groups = rows
            .into_iter()
            .map(|r| {
                Ok(pb::GroupUnread {
                    gid: wire(r.gid)?,
                    unread: unread(r.last_seq, r.read_seq),
                    last_seq: wire(r.last_seq)?,
                    read_seq: wire(r.read_seq)?,
                    delivered_seq: wire(r.delivered_seq)?,
                })
            })
            .collect::<Result<_, InvalidId>>()?;
        Ok(Response::new(pb::UnreadCountsResponse {
            groups,
            next_page_token,
        }))
    }

    async fn set_receipt_privacy(
        &self,
        request: Request<pb::SetReceiptPrivacyRequest>,
    ) -> Result<Response<pb::SetReceiptPrivacyResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let scope = self.privacy_scope(&caller, req.gid).await?;
        let private = match (pb::ReceiptPrivacy::try_from(req.privacy), scope) {
            (Ok(pb::ReceiptPrivacy::Shared), _) => Some(false),
            (Ok(pb::ReceiptPrivacy::Private), _) => Some(true),
            (Ok(pb::ReceiptPrivacy::Unspecified), PrivacyScope::Group(_)) => None,
            _ => {
                return Err(ReceiptError::invalid(
                    "privacy",
                    "SHARED or PRIVATE (or, for a group, UNSPECIFIED)",
                )
                .into());
            }
        };
        let state = self
            .store
            .set_privacy(caller.as_str(), scope, private, now_ms())
            .await?;
        Ok(Response::new(pb::SetReceiptPrivacyResponse {
            state: Some(privacy_state(state)),
        }))
    }

    async fn get_receipt_privacy(
        &self,
        request: Request<pb::GetReceiptPrivacyRequest>,
    ) -> Result<Response<pb::GetReceiptPrivacyResponse>, Status> {
        let caller = Caller::user_of(&request)?;
        let req = request.into_inner();
        let scope = self.privacy_scope(&caller, req.gid).await?;
        let state = self.store.privacy(caller.as_str(), scope).await?;
        Ok(Response::new(pb::GetReceiptPrivacyResponse {
            state: Some(privacy_state(state)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::AckKind,
        store::{MemberChange, SqliteReceiptStore},
    };
    use parley_server::db::Pooled as _;

    fn request<T>(body: T) -> Request<T> {
        let mut request = Request::new(body);
        request
            .extensions_mut()
            .insert(Caller::Service("message".into()));
        request
    }

    fn message(seq: u64) -> pb::InitReceiptsRequest {
        pb::InitReceiptsRequest {
            gid: 7,
            msgid: 100 + seq,
            seq,
            sender_uid: "A".into(),
            need_receipt: true,
            recipient_count: 1,
            recipient_uids: Vec::new(),
            created_at_ms: 1,
            receipt_policy: 0,
        }
    }

    /// A reader who acks a message before the outbox has recorded it here
    /// marks its range, but the window's digests find no message there and
    /// the mark is spent; recording the message must report it to the
    /// digests again, or its sender hears of the read only by pulling. (The
    /// ack below goes to the store, as if its mark were spent already.)
    #[tokio::test]
    async fn a_message_recorded_after_its_readers_is_digested() {
        let db = parley_testkit::TestDb::sqlite();
        let store = SqliteReceiptStore::connect(db.url()).await.expect("store");
        store.migrate().await.expect("migrate");
        let member = |uid: &str, version| MemberChange {
            uid: uid.into(),
            admin: false,
            joined_seq: 0,
            left_seq: None,
            version,
            past_stays: Vec::new(),
        };
        store
            .apply_membership(7, &[member("A", 1), member("u1", 2)], 1)
            .await
            .expect("membership");
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let message_client = mpb::message_service_client::MessageServiceClient::with_interceptor(
            channel,
            parley_server::ServiceIdentity::new("receipt", None),
        );
        let digests = Coalescer::default();
        let api = ReceiptApi::new(store.clone(), 200, digests.clone(), message_client);

        api.init_receipts(request(message(1)))
            .await
            .expect("seq 1 recorded");
        assert!(
            digests.marked().is_empty(),
            "no reader yet, nothing to tell"
        );
        // u1 reads up to 2, which the message service committed but the
        // outbox has not brought here yet.
        let read = MemberAck {
            uid: "u1".into(),
            up_to: 2,
            kind: AckKind::Read,
        };
        store.ack_group(7, &[read], Some(2), 2).await.expect("ack");
        let recorded = api
            .init_receipts_batch(request(pb::InitReceiptsBatchRequest {
                messages: vec![message(2)],
            }))
            .await
            .expect("seq 2 recorded")
            .into_inner();
        assert!(recorded.results[0].created);
        assert_eq!(digests.marked(), vec![(7, (1, 2))]);
    }
}
