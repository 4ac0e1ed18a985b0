//! The outbox drainer: delivers committed messages and membership changes to the
//! receipt service, in outbox order, retrying with backoff until it answers.
//! This is what makes receipt state complete after a receipt-service outage:
//! the message service never waits for the receipt service to accept a send.
//!
//! Order matters only within a group, so the outbox drains in lanes, each
//! holding some groups' entries (gid modulo the lanes) in outbox order, side by
//! side: a busy or stuck group holds up only its own lane.
//!
//! Several replicas may drain the same outbox; every delivery is idempotent on
//! the receipt side (InitReceipts by (gid, seq), membership by version), so a
//! duplicate delivery changes nothing.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use parley_proto::{notification as npb, receipt as pb};
use parley_server::upstream::{NotificationClient, ReceiptClient};
use parley_server::{Seq, ids::InvalidId};
use parley_server::{Stopping, backoff_delay};
use tokio::sync::watch;
use tonic::Code;
use tracing::Instrument;

use crate::{
    domain::{MAX_UIDS_PER_REQUEST, Role},
    error::MessageError,
    fanout::{Fanout, FanoutError, offline_batch},
    store::{
        Audience, Lane, MessageRecord, MessageStore, OUTBOX_MEMBERSHIP, OUTBOX_MESSAGE, OutboxEvent,
    },
};

const BATCH: u32 = 500;
/// Lanes drained side by side.
const LANES: u32 = 4;
/// Most messages delivered together: one InitReceiptsBatch (the receipt
/// service's limit), one presence lookup, one read per group. One busy group
/// is one lane, so its outbox drains a unit at a time.
const MESSAGES_PER_UNIT: usize = MAX_INIT_BATCH;
/// The receipt service's limit on messages in one InitReceiptsBatch.
const MAX_INIT_BATCH: usize = 100;
/// The notification service's limits on one EnqueueOfflineBatch.
const MAX_OFFLINE_BATCH: usize = 100;
const MAX_OFFLINE_BATCH_RECIPIENTS: usize = 100_000;
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Whether a failed delivery can never succeed, so retrying is pointless.
pub fn is_permanent(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange
    )
}

/// Splits a lane into delivery units, in order: consecutive messages
/// together (up to [`MESSAGES_PER_UNIT`], whatever their groups: order
/// matters within a group, and a unit keeps it), consecutive membership
/// changes of one group together (up to the RPC's list limit).
pub fn delivery_units(batch: &[OutboxEvent]) -> Vec<&[OutboxEvent]> {
    let mut units = Vec::new();
    let mut start = 0;
    while start < batch.len() {
        let first = &batch[start];
        let mut end = start + 1;
        let (limit, joins): (usize, fn(&OutboxEvent, &OutboxEvent) -> bool) = match first.kind {
            OUTBOX_MESSAGE => (MESSAGES_PER_UNIT, |_, next| next.kind == OUTBOX_MESSAGE),
            OUTBOX_MEMBERSHIP => (MAX_UIDS_PER_REQUEST, |first, next| {
                next.kind == OUTBOX_MEMBERSHIP && next.gid == first.gid
            }),
            _ => (1, |_, _| false),
        };
        while end < batch.len() && end - start < limit && joins(first, &batch[end]) {
            end += 1;
        }
        units.push(&batch[start..end]);
        start = end;
    }
    units
}

/// Splits `items` into runs, in order, each of at most `most` items whose
/// `weight`s add up to at most `most_weight` (an item heavier than that alone
/// goes in a run of its own, for the callee to refuse).
pub fn runs<T>(
    items: Vec<T>,
    most: usize,
    weight: fn(&T) -> usize,
    most_weight: usize,
) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut carried = 0;
    for item in items {
        let heavy = weight(&item);
        match runs.last_mut() {
            Some(run) if run.len() < most && carried + heavy <= most_weight => {
                carried += heavy;
                run.push(item);
            }
            _ => {
                carried = heavy;
                runs.push(vec![item]);
            }
        }
    }
    runs
}

/// The InitReceiptsBatch calls for some messages, in order, each within the
/// receipt service's limit on messages per call.
pub fn init_batches(messages: Vec<pb::InitReceiptsRequest>) -> Vec<pb::InitReceiptsBatchRequest> {
    runs(messages, MAX_INIT_BATCH, |_| 0, 0)
        .into_iter()
        .map(|messages| pb::InitReceiptsBatchRequest { messages })
        .collect()
}

/// The EnqueueOfflineBatch calls for some messages' offline members, in
/// order, each within the notification service's limits.
pub fn offline_batches(
    messages: Vec<npb::EnqueueOfflineRequest>,
) -> Vec<npb::EnqueueOfflineBatchRequest> {
    runs(
        messages,
        MAX_OFFLINE_BATCH,
        |m| m.recipient_uids.len(),
        MAX_OFFLINE_BATCH_RECIPIENTS,
    )
    .into_iter()
    .map(|messages| npb::EnqueueOfflineBatchRequest { messages })
    .collect()
}

/// What InitReceipts needs about a message. Its recipients are not listed:
/// the receipt service answers who read from its cursors, which the outbox's
/// membership changes keep in step with the group.
fn init_request(message: &MessageRecord) -> pb::InitReceiptsRequest {
    pb::InitReceiptsRequest {
        gid: message.gid.wire(),
        msgid: message.msgid.wire(),
        seq: message.seq.wire(),
        sender_uid: message.sender_uid.clone(),
        need_receipt: message.need_receipt,
        recipient_count: u32::try_from(message.recipient_count).unwrap_or(u32::MAX),
        recipient_uids: Vec::new(),
        created_at_ms: message.created_at_ms,
        receipt_policy: i32::try_from(message.receipt_policy).unwrap_or_default(),
    }
}

/// Why a delivery failed; each callee is named, so the log says which
/// service an outage is in.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("receipt service: {0}")]
    Receipt(tonic::Status),
    #[error("notification service: {0}")]
    Notification(tonic::Status),
    #[error(transparent)]
    Store(#[from] MessageError),
    #[error("presence lookup for the offline hand-off: {0}")]
    Presence(#[from] FanoutError),
    #[error("{0}")]
    Corrupt(&'static str),
}

/// A stored id or seq out of range can never be delivered: the entry is
/// set aside, not retried.
impl From<InvalidId> for DeliveryError {
    fn from(_: InvalidId) -> Self {
        Self::Corrupt("a stored id or seq is out of range")
    }
}

impl DeliveryError {
    /// Why retrying can never help, or `None` when it might.
    fn permanent_reason(&self) -> Option<String> {
        match self {
            Self::Receipt(status)
            | Self::Notification(status)
            | Self::Presence(FanoutError::Rpc(status))
                if is_permanent(status.code()) =>
            {
                Some(status.message().to_owned())
            }
            Self::Corrupt(reason) => Some((*reason).to_owned()),
            _ => None,
        }
    }
}

/// What one drain got done.
#[derive(Default)]
struct Progress {
    /// Entries delivered, to delete.
    done: Vec<i64>,
    /// Entries set aside for good.
    set_aside: usize,
}

/// Where the drainer delivers.
pub struct Downstream {
    /// The receipt service.
    pub receipt: ReceiptClient,
    /// The notification service, for offline members.
    pub notification: NotificationClient,
    /// Presence lookups.
    pub fanout: Fanout,
}

/// Wakes every lane of the drainer after an outbox write. A write while a
/// lane is busy is not lost: the lane looks again before it waits.
#[derive(Clone, Debug)]
pub struct Wake(Arc<watch::Sender<u64>>);

impl Default for Wake {
    fn default() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }
}

impl Wake {
    /// Says the outbox has new entries.
    pub fn notify(&self) {
        self.0
            .send_modify(|writes| *writes = writes.wrapping_add(1));
    }
}

/// The drainer task.
pub struct Drainer<S> {
    store: S,
    downstream: Downstream,
    wake: Wake,
    max_backoff: Duration,
}

impl<S: MessageStore> Drainer<S> {
    /// A drainer of `store`'s outbox into the receipt and notification services.
    pub fn new(store: S, downstream: Downstream, wake: Wake, max_backoff: Duration) -> Self {
        Self {
            store,
            downstream,
            wake,
            max_backoff,
        }
    }

    /// Reports the backlog as gauges every `every`, until the service stops.
    pub async fn report(store: S, every: Duration, mut stopping: Stopping) {
        let mut tick = tokio::time::interval(every);
        while stopping.tick(&mut tick).await {
            match store.outbox_stats().await {
                Ok(stats) => {
                    metrics::gauge!("parley_outbox_depth").set(stats.pending as f64);
                    metrics::gauge!("parley_outbox_dead").set(stats.dead as f64);
                    metrics::gauge!("parley_outbox_oldest_age_seconds")
                        .set(parley_server::age_seconds(stats.oldest_ms));
                }
                Err(error) => tracing::warn!(error = %error, "outbox stats unavailable"),
            }
        }
    }

    /// Drains every lane, side by side, until the service stops; each lane
    /// finishes the batch it holds first.
    pub async fn run(self, stopping: Stopping) {
        let lanes = (0..LANES).map(|index| {
            self.drain_lane(
                Lane {
                    index,
                    count: LANES,
                },
                stopping.clone(),
            )
        });
        futures::future::join_all(lanes).await;
    }

    /// Drains one lane until the service stops: a failure backs off this
    /// lane only.
    async fn drain_lane(&self, lane: Lane, mut stopping: Stopping) {
        let mut woken = self.wake.0.subscribe();
        let mut failures = 0u32;
        while !stopping.is_stopping() {
            woken.borrow_and_update();
            match self.drain_once(lane).await {
                Ok(0) => {
                    failures = 0;
                    // A new entry wakes the lane; the poll covers entries
                    // written by another replica.
                    tokio::select! {
                        _ = tokio::time::timeout(IDLE_POLL, woken.changed()) => {}
                        () = stopping.stopped() => {}
                    }
                }
                Ok(_) => failures = 0,
                Err(error) => {
                    let delay =
                        backoff_delay(failures, Duration::from_millis(50), self.max_backoff);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %error, lane = lane.index, retry_in_ms = delay.as_millis() as u64, "outbox delivery failed");
                    stopping.pause(delay).await;
                }
            }
        }
    }

    /// Delivers one batch of a lane in order; stops at the first retryable
    /// failure. Each unit's delivered entries are deleted as soon as it is
    /// through, so the backlog gauge counts only what is still owed; if a
    /// delete is lost those entries are delivered again, which the receipt
    /// service ignores.
    async fn drain_once(&self, lane: Lane) -> Result<usize, DeliveryError> {
        let batch = self.store.outbox_batch(lane, BATCH).await?;
        let mut progress = Progress::default();
        let mut delivered = 0;
        for unit in delivery_units(&batch) {
            let outcome = self.settle(unit, &mut progress).await;
            if !progress.done.is_empty() {
                self.store.outbox_done(&progress.done).await?;
                delivered += progress.done.len();
                progress.done.clear();
            }
            outcome?;
        }
        Ok(delivered + progress.set_aside)
    }

    /// Delivers a unit. When several messages fail for good, each is tried
    /// alone, so only the one that cannot be delivered is set aside.
    async fn settle(
        &self,
        unit: &[OutboxEvent],
        progress: &mut Progress,
    ) -> Result<(), DeliveryError> {
        match self.deliver(unit).await {
            Err(error)
                if error.permanent_reason().is_some()
                    && unit.len() > 1
                    && unit[0].kind == OUTBOX_MESSAGE =>
            {
                for single in unit.chunks(1) {
                    let result = self.deliver(single).await;
                    self.record(single, result, progress).await?;
                }
                Ok(())
            }
            result => self.record(unit, result, progress).await,
        }
    }

    /// Notes how a unit's delivery went: done, set aside for good, or failed
    /// for now (`Err`, which ends this drain).
    async fn record(
        &self,
        unit: &[OutboxEvent],
        result: Result<(), DeliveryError>,
        progress: &mut Progress,
    ) -> Result<(), DeliveryError> {
        let Err(error) = result else {
            progress.done.extend(unit.iter().map(|e| e.id));
            return Ok(());
        };
        let first = unit[0].id;
        let Some(reason) = error.permanent_reason() else {
            self.store
                .outbox_failed(first, &error.to_string(), false)
                .await?;
            return Err(error);
        };
        tracing::error!(outbox_id = first, reason = %reason, "outbox entry cannot be delivered; set aside");
        for event in unit {
            self.store.outbox_failed(event.id, &reason, true).await?;
        }
        progress.set_aside += unit.len();
        Ok(())
    }

    async fn deliver(&self, unit: &[OutboxEvent]) -> Result<(), DeliveryError> {
        match unit[0].kind {
            OUTBOX_MESSAGE => {
                // The delivery continues the traces of the sends that wrote it.
                let span = tracing::info_span!(
                    "outbox.deliver",
                    messages = unit.len(),
                    gid = %unit[0].gid,
                    seq = unit[0].seq
                );
                parley_server::telemetry::continue_traces(
                    &span,
                    unit.iter().map(|e| e.trace_context.as_str()),
                );
                self.deliver_messages(unit).instrument(span).await
            }
            OUTBOX_MEMBERSHIP => self.deliver_membership(unit).await,
            _ => Err(DeliveryError::Corrupt("unknown outbox kind")),
        }
    }

    /// Records the messages with the receipt service and hands their offline
    /// members to the notification service: one read per group, one
    /// InitReceiptsBatch and one EnqueueOfflineBatch for them all.
    async fn deliver_messages(&self, unit: &[OutboxEvent]) -> Result<(), DeliveryError> {
        let mut seqs: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for event in unit {
            seqs.entry(event.gid.stored()).or_default().push(event.seq);
        }
        let mut groups = BTreeMap::new();
        for (gid, seqs) in seqs {
            let Some(committed) = self.store.committed(gid, &seqs).await? else {
                return Err(DeliveryError::Corrupt(
                    "outbox names a group that does not exist",
                ));
            };
            groups.insert(gid, committed);
        }
        let mut sent = Vec::with_capacity(unit.len());
        for event in unit {
            let found = groups
                .get(&event.gid.stored())
                .and_then(|group| Some((group.message(event.seq)?, group.audience(event.seq))));
            let Some(message) = found else {
                return Err(DeliveryError::Corrupt(
                    "outbox names a message that does not exist",
                ));
            };
            sent.push(message);
        }
        let requests = sent.iter().map(|(m, _)| init_request(m)).collect();
        for batch in init_batches(requests) {
            self.downstream
                .receipt
                .clone()
                .init_receipts_batch(batch)
                .await
                .map_err(DeliveryError::Receipt)?;
        }
        self.hand_off_offline(&sent).await
    }

    /// Hands each message's members with no device online to the
    /// notification service, all the unit's messages in one
    /// EnqueueOfflineBatch. Re-delivery is harmless: the queue is keyed by
    /// message and recipient.
    async fn hand_off_offline(
        &self,
        sent: &[(&MessageRecord, Audience)],
    ) -> Result<(), DeliveryError> {
        let offline = self.downstream.fanout.offline(sent).await?;
        let requests = sent
            .iter()
            .zip(offline)
            .filter(|(_, offline)| !offline.is_empty())
            .map(|((message, audience), offline)| offline_batch(message, audience, offline))
            .collect();
        for batch in offline_batches(requests) {
            self.downstream
                .notification
                .clone()
                .enqueue_offline_batch(batch)
                .await
                .map_err(DeliveryError::Notification)?;
        }
        Ok(())
    }

    async fn deliver_membership(&self, unit: &[OutboxEvent]) -> Result<(), DeliveryError> {
        // The latest outbox id per member is the version of its current state.
        let mut versions = BTreeMap::new();
        for event in unit {
            versions.insert(event.uid.clone(), event.id);
        }
        let uids: Vec<String> = versions.keys().cloned().collect();
        let states = self
            .store
            .member_states(unit[0].gid.stored(), &uids)
            .await?;
        let mut past: BTreeMap<String, Vec<pb::MemberStay>> = BTreeMap::new();
        for stay in self.store.past_stays(unit[0].gid.stored(), &uids).await? {
            past.entry(stay.uid).or_default().push(pb::MemberStay {
                joined_seq: stay.joined_seq.wire(),
                left_seq: stay
                    .left_seq
                    .map(Seq::try_from)
                    .transpose()?
                    .map_or(0, Seq::wire),
            });
        }
        let changes = states
            .into_iter()
            .map(|member| -> Result<_, InvalidId> {
                Ok(pb::MembershipChange {
                    // The latest closed stays (the receipt service takes 16).
                    past_stays: past
                        .remove(&member.uid)
                        .map(|stays| latest(stays, MAX_PAST_STAYS))
                        .unwrap_or_default(),
                    admin: Role::from_code(i16::try_from(member.role).unwrap_or(1)) == Role::Admin,
                    joined_seq: member.joined_seq.wire(),
                    left_seq: member
                        .left_seq
                        .map(Seq::try_from)
                        .transpose()?
                        .map_or(0, Seq::wire),
                    left: member.left_seq.is_some(),
                    version: versions
                        .get(&member.uid)
                        .map(|&v| Seq::try_from(v))
                        .transpose()?
                        .map_or(0, Seq::wire),
                    uid: member.uid,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let request = pb::ApplyMembershipRequest {
            gid: unit[0].gid.wire(),
            changes,
        };
        self.downstream
            .receipt
            .clone()
            .apply_membership(request)
            .await
            .map_err(DeliveryError::Receipt)?;
        Ok(())
    }
}

/// Closed stays one membership change carries to the receipt service.
const MAX_PAST_STAYS: usize = 16;

/// The last `n` of `items`.
fn latest<T>(mut items: Vec<T>, n: usize) -> Vec<T> {
    let extra = items.len().saturating_sub(n);
    items.drain(..extra);
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, kind: i64, gid: i64) -> OutboxEvent {
        OutboxEvent {
            trace_context: String::new(),
            id,
            kind,
            gid: parley_server::Gid::try_from(gid).expect("a test gid"),
            seq: 0,
            uid: format!("u{id}"),
            attempts: 0,
        }
    }

    #[test]
    fn runs_of_messages_and_of_one_group_s_membership_travel_together() {
        let batch = vec![
            event(1, OUTBOX_MEMBERSHIP, 7),
            event(2, OUTBOX_MEMBERSHIP, 7),
            event(3, OUTBOX_MESSAGE, 7),
            event(4, OUTBOX_MESSAGE, 7),
            event(5, OUTBOX_MEMBERSHIP, 7),
            event(6, OUTBOX_MEMBERSHIP, 8),
        ];
        let sizes: Vec<usize> = delivery_units(&batch).iter().map(|u| u.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1, 1]);
        let count = 2 * MESSAGES_PER_UNIT + 6;
        let messages: Vec<OutboxEvent> = (1..=count as i64)
            .map(|id| event(id, OUTBOX_MESSAGE, id % 3 + 1))
            .collect();
        let sizes: Vec<usize> = delivery_units(&messages).iter().map(|u| u.len()).collect();
        assert_eq!(sizes, vec![MESSAGES_PER_UNIT, MESSAGES_PER_UNIT, 6]);
    }

    #[test]
    fn init_batches_keep_order_within_the_receipt_service_s_limit() {
        let message = |seq: u64| pb::InitReceiptsRequest {
            seq,
            ..Default::default()
        };
        let many = init_batches((1..=250).map(message).collect());
        let sizes: Vec<usize> = many.iter().map(|b| b.messages.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        let seqs: Vec<u64> = many
            .iter()
            .flat_map(|b| b.messages.iter().map(|m| m.seq))
            .collect();
        assert_eq!(seqs, (1..=250).collect::<Vec<_>>());
        assert!(init_batches(Vec::new()).is_empty());
    }

    #[test]
    fn offline_batches_keep_order_within_the_notification_service_s_limits() {
        let message = |seq: u64, offline: usize| npb::EnqueueOfflineRequest {
            seq,
            recipient_uids: vec!["u".into(); offline],
            ..Default::default()
        };
        let batches = offline_batches(vec![
            message(1, 60_000),
            message(2, 40_000),
            message(3, 1),
            message(4, 200_000),
            message(5, 0),
        ]);
        let seqs: Vec<Vec<u64>> = batches
            .iter()
            .map(|b| b.messages.iter().map(|m| m.seq).collect())
            .collect();
        assert_eq!(seqs, vec![vec![1, 2], vec![3], vec![4], vec![5]]);
        let many = offline_batches((1..=250).map(|seq| message(seq, 1)).collect());
        let sizes: Vec<usize> = many.iter().map(|b| b.messages.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }

    #[test]
    fn a_failed_delivery_names_the_service_that_failed() {
        let down = || tonic::Status::unavailable("connection refused");
        let notification = DeliveryError::Notification(down()).to_string();
        assert!(
            notification.starts_with("notification service:"),
            "{notification}"
        );
        let receipt = DeliveryError::Receipt(down()).to_string();
        assert!(receipt.starts_with("receipt service:"), "{receipt}");
        let presence = DeliveryError::Presence(FanoutError::Rpc(down())).to_string();
        assert!(presence.starts_with("presence lookup"), "{presence}");
    }

    #[test]
    fn only_malformed_deliveries_are_permanent() {
        assert!(is_permanent(Code::InvalidArgument));
        assert!(!is_permanent(Code::Unavailable));
        assert!(!is_permanent(Code::Unauthenticated));
        assert!(!is_permanent(Code::Unimplemented));
    }
}
