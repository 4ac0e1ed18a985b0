//! The outbox drainer: delivers committed messages and membership changes to the
//! receipt service, in outbox order, retrying with backoff until it answers.
//! This is what makes receipt state complete after a receipt-service outage:
//! the message service never waits for the receipt service to accept a send.
//!
//! Several replicas may drain the same outbox; every delivery is idempotent on
//! the receipt side (InitReceipts by (gid, seq), membership by version), so a
//! duplicate delivery changes nothing.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use parley_proto::receipt::{self as pb, receipt_service_client::ReceiptServiceClient};
use parley_server::{ServiceIdentity, backoff_delay};
use tokio::sync::Notify;
use tonic::{Code, codegen::InterceptedService, transport::Channel};
use tracing::Instrument;

use crate::{
    domain::{MAX_LISTED_RECIPIENTS, MAX_UIDS_PER_REQUEST, Role},
    error::MessageError,
    fanout::{Fanout, FanoutError, NotificationClient, offline_batch},
    store::{MessageRecord, MessageStore, OUTBOX_MEMBERSHIP, OUTBOX_MESSAGE, OutboxEvent},
};

/// The receipt client the drainer uses.
pub type ReceiptClient = ReceiptServiceClient<InterceptedService<Channel, ServiceIdentity>>;

const BATCH: u32 = 200;
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Whether a failed delivery can never succeed, so retrying is pointless.
pub fn is_permanent(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange
    )
}

/// Splits a batch into delivery units: each message alone, consecutive
/// membership changes of one group together (up to the RPC's list limit).
pub fn delivery_units(batch: &[OutboxEvent]) -> Vec<&[OutboxEvent]> {
    let mut units = Vec::new();
    let mut start = 0;
    while start < batch.len() {
        let first = &batch[start];
        let mut end = start + 1;
        if first.kind == OUTBOX_MEMBERSHIP {
            while end < batch.len()
                && end - start < MAX_UIDS_PER_REQUEST
                && batch[end].kind == OUTBOX_MEMBERSHIP
                && batch[end].gid == first.gid
            {
                end += 1;
            }
        }
        units.push(&batch[start..end]);
        start = end;
    }
    units
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

/// Where the drainer delivers.
pub struct Downstream {
    /// The receipt service.
    pub receipt: ReceiptClient,
    /// The notification service, for offline members.
    pub notification: NotificationClient,
    /// Presence lookups.
    pub fanout: Fanout,
}

/// The drainer task.
pub struct Drainer<S> {
    store: S,
    downstream: Downstream,
    wake: Arc<Notify>,
    max_backoff: Duration,
}

impl<S: MessageStore> Drainer<S> {
    /// A drainer of `store`'s outbox into the receipt and notification services.
    pub fn new(store: S, downstream: Downstream, wake: Arc<Notify>, max_backoff: Duration) -> Self {
        Self {
            store,
            downstream,
            wake,
            max_backoff,
        }
    }

    /// Reports the backlog as gauges every `every`, until dropped.
    pub async fn report(store: S, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
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

    /// Drains until the task is dropped.
    pub async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            match self.drain_once().await {
                Ok(0) => {
                    failures = 0;
                    // A new entry notifies; the poll covers entries written by
                    // another replica.
                    let _ = tokio::time::timeout(IDLE_POLL, self.wake.notified()).await;
                }
                Ok(_) => failures = 0,
                Err(error) => {
                    let delay =
                        backoff_delay(failures, Duration::from_millis(50), self.max_backoff);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "outbox delivery failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Delivers one batch in order; stops at the first retryable failure.
    /// Delivered entries are deleted together at the end: if that delete is
    /// lost they are delivered again, which the receipt service ignores.
    async fn drain_once(&mut self) -> Result<usize, DeliveryError> {
        let batch = self.store.outbox_batch(BATCH).await?;
        let mut done = Vec::new();
        let mut set_aside = 0;
        let mut outcome = Ok(());
        for unit in delivery_units(&batch) {
            let ids = unit.iter().map(|e| e.id);
            let Err(error) = self.deliver(unit).await else {
                done.extend(ids);
                continue;
            };
            let first = unit[0].id;
            match error.permanent_reason() {
                Some(reason) => {
                    tracing::error!(outbox_id = first, reason = %reason, "outbox entry cannot be delivered; set aside");
                    for id in ids {
                        self.store.outbox_failed(id, &reason, true).await?;
                    }
                    set_aside += unit.len();
                }
                None => {
                    self.store
                        .outbox_failed(first, &error.to_string(), false)
                        .await?;
                    outcome = Err(error);
                    break;
                }
            }
        }
        if !done.is_empty() {
            self.store.outbox_done(&done).await?;
        }
        outcome.map(|()| done.len() + set_aside)
    }

    async fn deliver(&mut self, unit: &[OutboxEvent]) -> Result<(), DeliveryError> {
        let first = &unit[0];
        match first.kind {
            OUTBOX_MESSAGE => {
                // The delivery continues the trace of the send that wrote it.
                let span = tracing::info_span!("outbox.deliver", gid = first.gid, seq = first.seq);
                parley_server::telemetry::continue_trace(&span, &first.trace_context);
                self.deliver_message(first).instrument(span).await
            }
            OUTBOX_MEMBERSHIP => self.deliver_membership(unit).await,
            _ => Err(DeliveryError::Corrupt("unknown outbox kind")),
        }
    }

    async fn deliver_message(&mut self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let init = self
            .store
            .receipt_init(event.gid, event.seq, i64::from(MAX_LISTED_RECIPIENTS))
            .await?;
        let Some(init) = init else {
            return Err(DeliveryError::Corrupt(
                "outbox names a message that does not exist",
            ));
        };
        let message = init.message;
        let request = pb::InitReceiptsRequest {
            gid: u64::try_from(message.gid).unwrap_or_default(),
            msgid: u64::try_from(message.msgid).unwrap_or_default(),
            seq: u64::try_from(message.seq).unwrap_or_default(),
            sender_uid: message.sender_uid.clone(),
            need_receipt: message.need_receipt,
            recipient_count: u32::try_from(message.recipient_count).unwrap_or(u32::MAX),
            recipient_uids: init.recipients,
            created_at_ms: message.created_at_ms,
        };
        self.downstream
            .receipt
            .init_receipts(request)
            .await
            .map_err(DeliveryError::Receipt)?;
        self.hand_off_offline(&message).await
    }

    /// Hands the members with no device online to the notification service,
    /// as one batch. Re-delivery is harmless: the queue is keyed by message and
    /// recipient.
    async fn hand_off_offline(&mut self, message: &MessageRecord) -> Result<(), DeliveryError> {
        let Some(audience) = self.store.audience(message.gid, message.seq).await? else {
            return Err(DeliveryError::Corrupt(
                "outbox names a group that does not exist",
            ));
        };
        let routes = self
            .downstream
            .fanout
            .routes(&message.sender_uid, &audience.members)
            .await?;
        if routes.offline.is_empty() {
            return Ok(());
        }
        let batch = offline_batch(message, &audience, routes.offline);
        self.downstream
            .notification
            .enqueue_offline(batch)
            .await
            .map_err(DeliveryError::Notification)?;
        Ok(())
    }

    async fn deliver_membership(&mut self, unit: &[OutboxEvent]) -> Result<(), DeliveryError> {
        // The latest outbox id per member is the version of its current state.
        let mut versions = BTreeMap::new();
        for event in unit {
            versions.insert(event.uid.clone(), event.id);
        }
        let uids: Vec<String> = versions.keys().cloned().collect();
        let states = self.store.member_states(unit[0].gid, &uids).await?;
        let changes = states
            .into_iter()
            .map(|member| pb::MembershipChange {
                admin: Role::from_code(i16::try_from(member.role).unwrap_or(1)) == Role::Admin,
                joined_seq: u64::try_from(member.joined_seq).unwrap_or_default(),
                left_seq: member
                    .left_seq
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
                version: versions
                    .get(&member.uid)
                    .and_then(|&v| u64::try_from(v).ok())
                    .unwrap_or(0),
                uid: member.uid,
            })
            .collect();
        let request = pb::ApplyMembershipRequest {
            gid: u64::try_from(unit[0].gid).unwrap_or_default(),
            changes,
        };
        self.downstream
            .receipt
            .apply_membership(request)
            .await
            .map_err(DeliveryError::Receipt)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, kind: i64, gid: i64) -> OutboxEvent {
        OutboxEvent {
            trace_context: String::new(),
            id,
            kind,
            gid,
            seq: 0,
            uid: format!("u{id}"),
            attempts: 0,
        }
    }

    #[test]
    fn membership_runs_of_one_group_travel_together_and_messages_alone() {
        let batch = vec![
            event(1, OUTBOX_MEMBERSHIP, 7),
            event(2, OUTBOX_MEMBERSHIP, 7),
            event(3, OUTBOX_MESSAGE, 7),
            event(4, OUTBOX_MESSAGE, 7),
            event(5, OUTBOX_MEMBERSHIP, 7),
            event(6, OUTBOX_MEMBERSHIP, 8),
        ];
        let sizes: Vec<usize> = delivery_units(&batch).iter().map(|u| u.len()).collect();
        assert_eq!(sizes, vec![2, 1, 1, 1, 1]);
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
