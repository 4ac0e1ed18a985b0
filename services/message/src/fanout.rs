//! Fan-out: after a message is committed, ask presence where its members are,
//! publish one bus event per gateway (not one per recipient), and hand the
//! offline members to the notification service as one batch.
//!
//! Publishing is the fast path and runs right after the commit. When it
//! fails (presence or the bus unreachable), the group is noted and the repair
//! loop publishes its latest failed message again until it gets through: a
//! gateway that receives seq S syncs whatever it missed before S, so online
//! members are caught up without waiting for another message, a reconnect or
//! a heartbeat. The offline hand-off runs from the outbox drainer, so it
//! survives a crash of this service between commit and hand-off.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use parley_bus::{
    Bus,
    routing::{Located, locate},
};
use parley_proto::{
    bus::{BusEvent, Delivery, Typing, bus_event},
    gateway::DeliveredMessage,
    notification as npb,
};
use parley_server::{Seq, Stopping, upstream::PresenceClient};

use crate::{
    domain::Gid,
    error::MessageError,
    publish_order::{self, PublishOrder, Ticket},
    store::{Audience, MessageRecord, MessageStore},
};

/// Most groups whose failed fan-out waits for the repair loop; past it, a
/// group's online members catch up at their next gap sync, login or resync.
const MAX_FAILED: usize = 100_000;

/// Most messages whose offline members the fast path keeps for the outbox's
/// hand-off; past it the oldest are forgotten (the hand-off then asks
/// presence itself).
const MAX_REMEMBERED: usize = 4_096;

/// Who the fast path found offline, per message, until the outbox's hand-off
/// takes it: one presence lookup serves both. A member who comes online in
/// between may be queued a push; the notification worker checks presence
/// again before it pushes.
#[derive(Default)]
struct Remembered {
    offline: HashMap<(i64, i64), Arc<[String]>>,
    /// Keys in the order they came, for forgetting the oldest.
    order: VecDeque<(i64, i64)>,
}

impl Remembered {
    fn keep(&mut self, gid: i64, seq: i64, offline: Arc<[String]>) {
        self.offline.insert((gid, seq), offline);
        self.order.push_back((gid, seq));
        while self.offline.len() > MAX_REMEMBERED || self.order.len() > 2 * MAX_REMEMBERED {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.offline.remove(&oldest);
        }
    }

    fn take(&mut self, gid: i64, seq: i64) -> Option<Arc<[String]>> {
        self.offline.remove(&(gid, seq))
    }
}

/// Where a message goes: per gateway the recipients it holds, and the members
/// with no device online (never the sender).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routes {
    /// Gateway id → recipients with a device on it, in uid order.
    pub gateways: BTreeMap<String, Vec<String>>,
    /// Members with no device online, in uid order.
    pub offline: Vec<String>,
}

/// Partitions the located members by gateway. The sender's own devices get
/// the message too (their other screens stay in step), but the sender is
/// never notified offline of their own message.
pub fn route(sender: &str, located: &[Located]) -> Routes {
    let mut routes = Routes::default();
    for (uid, gateways) in located {
        if gateways.is_empty() {
            if uid != sender {
                routes.offline.push(uid.clone());
            }
            continue;
        }
        for gateway in gateways {
            routes
                .gateways
                .entry(gateway.clone())
                .or_default()
                .push(uid.clone());
        }
    }
    routes
}

/// The wire form a gateway pushes to a device.
pub fn delivered(message: &MessageRecord) -> DeliveredMessage {
    DeliveredMessage {
        msgid: message.msgid.wire(),
        gid: message.gid.wire(),
        seq: message.seq.wire(),
        sender_uid: message.sender_uid.clone(),
        content: message.content.clone(),
        need_receipt: message.need_receipt,
        created_at_ms: message.created_at_ms,
    }
}

/// Why a fan-out step failed.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// Presence or notification refused or could not be reached.
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    /// The bus could not publish.
    #[error(transparent)]
    Bus(#[from] parley_bus::BusError),
    /// The members could not be read.
    #[error(transparent)]
    Store(#[from] MessageError),
}

/// The fan-out's connections and the groups whose fan-out failed; cheap to
/// clone, clones share both.
#[derive(Clone)]
pub struct Fanout {
    presence: PresenceClient,
    bus: Bus,
    /// Per group, the latest seq whose fan-out failed.
    failed: Arc<Mutex<BTreeMap<Gid, Seq>>>,
    /// The fast path's offline members, for the outbox's hand-off.
    remembered: Arc<Mutex<Remembered>>,
    /// Runs of one group go out in seq order.
    order: Arc<PublishOrder>,
}

impl Fanout {
    /// A fan-out through `presence` and `bus`.
    pub fn new(presence: PresenceClient, bus: Bus) -> Self {
        Self {
            presence,
            bus,
            failed: Arc::default(),
            remembered: Arc::default(),
            order: Arc::default(),
        }
    }

    fn remembered(&self) -> MutexGuard<'_, Remembered> {
        self.remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed(&self) -> MutexGuard<'_, BTreeMap<Gid, Seq>> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that the fan-out of (gid, seq) failed; the repair loop publishes
    /// the group's latest such message again.
    fn note_failed(&self, gid: Gid, seq: Seq) {
        let mut failed = self.failed();
        if failed.len() >= MAX_FAILED && !failed.contains_key(&gid) {
            tracing::warn!(
                %gid,
                %seq,
                "fan-out repair list full; members catch up at their next sync"
            );
            return;
        }
        let latest = failed.entry(gid).or_insert(seq);
        *latest = (*latest).max(seq);
        metrics::gauge!("parley_fanout_repair_groups").set(failed.len() as f64);
    }

    /// Publishes a just-committed run of messages (one sender, one group,
    /// one transaction, in seq order) to their members' gateways; a failure
    /// is noted for the repair loop.
    pub async fn after_commit<S: MessageStore>(&self, store: &S, run: &[MessageRecord]) {
        let Some(last) = run.last() else {
            return;
        };
        if let Err(error) = self.deliver(store, run).await {
            tracing::warn!(error = %error, gid = %last.gid, seq = %last.seq, "fan-out failed; the repair loop will retry it");
            self.note_failed(last.gid, last.seq);
        }
    }

    /// A just-committed run's place in its group's publishing order, taken
    /// before its fan-out task starts and held until that task ends.
    pub fn ticket(&self, run: &[MessageRecord]) -> Option<Ticket> {
        run.first()
            .map(|first| self.order.ticket(first.gid.stored(), first.seq.stored()))
    }

    /// Reads the members once for the run: no membership change falls
    /// between messages committed in one transaction under the group lock.
    async fn deliver<S: MessageStore>(
        &self,
        store: &S,
        run: &[MessageRecord],
    ) -> Result<(), FanoutError> {
        let Some(last) = run.last() else {
            return Ok(());
        };
        let members = store
            .members_at(last.gid.stored(), last.seq.stored())
            .await?;
        self.publish(run, &members).await?;
        Ok(())
    }

    /// Publishes the failed fan-outs again every `every` until each gets
    /// through; runs until the service stops.
    pub async fn repair<S: MessageStore>(self, store: S, every: Duration, mut stopping: Stopping) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while stopping.tick(&mut tick).await {
            let due = std::mem::take(&mut *self.failed());
            if due.is_empty() {
                continue;
            }
            let mut still_failing = None;
            for (gid, seq) in due {
                match self.republish(&store, gid, seq).await {
                    Ok(()) => metrics::counter!("parley_fanout_repaired_total").increment(1),
                    Err(error) => {
                        still_failing = Some(error);
                        self.note_failed(gid, seq);
                    }
                }
            }
            let waiting = self.failed().len();
            metrics::gauge!("parley_fanout_repair_groups").set(waiting as f64);
            match still_failing {
                Some(error) => {
                    tracing::warn!(error = %error, groups = waiting, "fan-out repair failed; retrying")
                }
                None => tracing::info!("failed fan-outs repaired"),
            }
        }
    }

    async fn republish<S: MessageStore>(
        &self,
        store: &S,
        gid: Gid,
        seq: Seq,
    ) -> Result<(), FanoutError> {
        let found = store
            .messages_after(gid, seq.stored().saturating_sub(1), 1)
            .await?;
        match found.into_iter().next() {
            Some(record) if record.seq == seq => {
                self.deliver(store, std::slice::from_ref(&record)).await
            }
            // Gone since (the group was deleted): nothing to deliver.
            _ => Ok(()),
        }
    }

    /// Where `members` are right now.
    pub async fn routes(&self, sender: &str, members: &[String]) -> Result<Routes, FanoutError> {
        let located = locate(&self.presence, members).await?;
        Ok(route(sender, &located))
    }

    /// For each message and its audience, the members with no device online
    /// (never its sender): what the fast path found when it published the
    /// message, or else one presence lookup for the members of the rest.
    pub async fn offline(
        &self,
        sent: &[(&MessageRecord, Audience)],
    ) -> Result<Vec<Vec<String>>, FanoutError> {
        let known: Vec<Option<Arc<[String]>>> = {
            let mut remembered = self.remembered();
            sent.iter()
                .map(|(message, _)| remembered.take(message.gid.stored(), message.seq.stored()))
                .collect()
        };
        let everyone: BTreeSet<&String> = sent
            .iter()
            .zip(&known)
            .filter(|(_, known)| known.is_none())
            .flat_map(|((_, a), _)| &a.members)
            .collect();
        let online: HashSet<String> = if everyone.is_empty() {
            HashSet::new()
        } else {
            let everyone: Vec<String> = everyone.into_iter().cloned().collect();
            locate(&self.presence, &everyone)
                .await?
                .into_iter()
                .filter(|(_, gateways)| !gateways.is_empty())
                .map(|(uid, _)| uid)
                .collect()
        };
        Ok(sent
            .iter()
            .zip(known)
            .map(|((message, audience), known)| match known {
                Some(offline) => offline.to_vec(),
                None => audience
                    .members
                    .iter()
                    .filter(|uid| **uid != message.sender_uid && !online.contains(*uid))
                    .cloned()
                    .collect(),
            })
            .collect())
    }

    /// Tells the gateways of `others` (members of `gid` other than
    /// `typist`) that `typist` is typing; returns how many have a device
    /// online.
    pub async fn typing(
        &self,
        gid: Gid,
        typist: &parley_server::Uid,
        others: &[String],
    ) -> Result<usize, FanoutError> {
        let routes = self.routes(typist.as_str(), others).await?;
        let told = others.len().saturating_sub(routes.offline.len());
        for (gateway, uids) in routes.gateways {
            let event = BusEvent {
                event: Some(bus_event::Event::Typing(Typing {
                    gid: gid.wire(),
                    uid: typist.as_str().to_owned(),
                    uids,
                })),
            };
            self.bus.publish(&gateway, &event).await?;
        }
        Ok(told)
    }

    /// Publishes each message of a run (one sender's, to one group's
    /// `members`), in order, to every gateway holding one of its recipients:
    /// one presence lookup for the run.
    pub async fn publish(
        &self,
        run: &[MessageRecord],
        members: &[String],
    ) -> Result<usize, FanoutError> {
        let Some(first) = run.first() else {
            return Ok(0);
        };
        let routes = self.routes(&first.sender_uid, members).await?;
        self.order
            .turn(first.gid.stored(), first.seq.stored(), publish_order::HOLD)
            .await;
        let offline: Arc<[String]> = routes.offline.clone().into();
        {
            let mut remembered = self.remembered();
            for message in run {
                remembered.keep(message.gid.stored(), message.seq.stored(), offline.clone());
            }
        }
        for message in run {
            metrics::histogram!("parley_fanout_members").record(members.len() as f64);
            metrics::histogram!("parley_fanout_gateways").record(routes.gateways.len() as f64);
            let delivered = delivered(message);
            for (gateway, uids) in &routes.gateways {
                let event = BusEvent {
                    event: Some(bus_event::Event::Delivery(Delivery {
                        message: Some(delivered.clone()),
                        uids: uids.clone(),
                    })),
                };
                self.bus.publish(gateway, &event).await?;
            }
        }
        Ok(routes.gateways.len())
    }
}

/// The EnqueueOffline request for a message's offline members.
pub fn offline_batch(
    message: &MessageRecord,
    audience: &Audience,
    offline: Vec<String>,
) -> npb::EnqueueOfflineRequest {
    npb::EnqueueOfflineRequest {
        gid: message.gid.wire(),
        msgid: message.msgid.wire(),
        seq: message.seq.wire(),
        sender_uid: message.sender_uid.clone(),
        group_name: audience.group_name.clone(),
        recipient_uids: offline,
        group_size: u32::try_from(audience.members.len()).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_answers_are_bounded_and_taken_once() {
        let mut remembered = Remembered::default();
        let extra = 10;
        for seq in 0..(MAX_REMEMBERED + extra) as i64 {
            remembered.keep(1, seq, Arc::from(vec![format!("u{seq}")]));
        }
        assert_eq!(remembered.offline.len(), MAX_REMEMBERED);
        assert!(remembered.take(1, 0).is_none(), "the oldest are forgotten");
        let kept = remembered.take(1, extra as i64).expect("kept");
        assert_eq!(kept.to_vec(), vec![format!("u{extra}")]);
        assert!(remembered.take(1, extra as i64).is_none(), "taken once");
    }

    #[tokio::test]
    async fn the_hand_off_takes_the_fast_path_s_answer_without_asking_presence() {
        use parley_proto::presence::presence_service_client::PresenceServiceClient;
        // Presence cannot be reached: only a remembered answer can serve.
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let presence = PresenceServiceClient::with_interceptor(
            channel,
            parley_server::ServiceIdentity::new("message", None),
        );
        let fanout = Fanout::new(presence, Bus::local());
        fanout
            .remembered()
            .keep(7, 1, Arc::from(vec!["u2".to_owned()]));
        let message = MessageRecord {
            msgid: parley_server::MsgId::try_from(100i64).expect("msgid"),
            gid: Gid::try_from(7i64).expect("gid"),
            seq: parley_server::Seq::try_from(1i64).expect("seq"),
            sender_uid: "A".into(),
            client_msg_id: "m1".into(),
            content: Vec::new(),
            need_receipt: true,
            recipient_count: 2,
            created_at_ms: 1,
            receipt_policy: 1,
        };
        let audience = Audience {
            group_name: "Design".into(),
            members: vec!["A".into(), "u1".into(), "u2".into()],
        };
        let offline = fanout
            .offline(&[(&message, audience.clone())])
            .await
            .expect("no presence lookup needed");
        assert_eq!(offline, vec![vec!["u2".to_owned()]]);
        // Taken once: handing the message off again asks presence.
        assert!(fanout.offline(&[(&message, audience)]).await.is_err());
    }

    fn user(uid: &str, gateways: &[&str]) -> Located {
        (
            uid.into(),
            gateways.iter().map(|g| (*g).to_owned()).collect(),
        )
    }

    #[test]
    fn one_batch_per_gateway_and_offline_members_apart() {
        let located = vec![
            user("A", &["gw1"]),
            user("uid1", &["gw1", "gw2", "gw2"]),
            user("uid2", &["gw2"]),
            user("uid3", &[]),
        ];
        let routes = route("A", &located);
        assert_eq!(routes.gateways.len(), 2);
        assert_eq!(routes.gateways["gw1"], vec!["A", "uid1"]);
        assert_eq!(routes.gateways["gw2"], vec!["uid1", "uid2"]);
        assert_eq!(routes.offline, vec!["uid3"]);
    }

    #[test]
    fn an_offline_sender_is_not_notified_of_their_own_message() {
        let routes = route("A", &[user("A", &[]), user("B", &[])]);
        assert!(routes.gateways.is_empty());
        assert_eq!(routes.offline, vec!["B"]);
    }
}
