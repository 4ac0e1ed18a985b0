//! The push worker: claims (user, group) pairs whose collapse window has
//! passed, decides whether a push is still wanted (not muted, not online, not
//! already read), and sends one collapsed notification to each of the user's
//! devices, retrying, pruning dead tokens and dead-lettering as providers say.
//!
//! A pair is claimed by leasing its pending row; a worker that dies leaves the
//! lease to expire and another takes the pair over. Queued rows are deleted only
//! after the outcome is settled, so a crash re-sends rather than loses, and the
//! re-sent push carries the same collapse id, so the phone replaces the first.
//!
//! Each device gets one attempt per claim. When a provider asks for a retry
//! (429, 5xx) the pair is put back with the retry's due time (the provider's
//! `Retry-After` when longer than the backoff), its attempts and the devices
//! still owed the push, and the worker moves on: a throttled provider holds
//! no worker. The retry goes to those devices only, unless newer messages
//! changed the push, which then goes to every device again.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::future::join_all;
use parley_bus::routing::locate;
use parley_proto::receipt as rpb;
use parley_server::upstream::{PresenceClient, ReceiptClient};
use parley_server::{Stopping, backoff_delay, millis, now_ms};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

use crate::{
    push::{Device, Outcome, Push, Senders},
    store::{DeadLetter, Done, Pending, QueueError, QueueStore, Queued, Retry},
};

/// What a batch read about one pair.
struct Facts<'a> {
    /// Its queued messages, in seq order.
    queued: &'a [Queued],
    /// Whether the user muted the group.
    muted: bool,
    /// The user's devices with tokens.
    devices: &'a [Device],
    /// Whether one of the user's devices is connected.
    online: bool,
}

impl Facts<'_> {
    /// Whether a push is still possible before the receipt service is asked:
    /// the policy's decision were every queued message unread.
    fn may_push(&self) -> bool {
        matches!(decide(self, Some((0, i64::MIN))), Decision::Push { .. })
    }
}

/// What the push policy decides for one pair.
#[derive(Debug, PartialEq, Eq)]
enum Decision<'a> {
    /// No push: every queued message is settled, for this reason (the label
    /// of `parley_push_dropped_total`).
    Drop(&'static str),
    /// Push the messages not yet read, collapsed into one notification with
    /// this badge; `read` queued messages were read elsewhere meanwhile.
    Push {
        unread: Vec<&'a Queued>,
        read: usize,
        badge: u32,
    },
}

/// The push policy, in the order it is applied: muted, no device with a
/// token, a device connected (the gateway delivers), no longer a member
/// (`unread` is `None`: the badge and read cursor the receipt service gave),
/// everything already read on another device; else push what is unread.
fn decide<'a>(facts: &Facts<'a>, unread: Option<(u32, i64)>) -> Decision<'a> {
    if facts.muted {
        return Decision::Drop("muted");
    }
    if facts.devices.is_empty() {
        return Decision::Drop("no_device");
    }
    if facts.online {
        return Decision::Drop("online");
    }
    let Some((badge, read_seq)) = unread else {
        return Decision::Drop("not_member");
    };
    let unread: Vec<&Queued> = facts.queued.iter().filter(|q| q.seq > read_seq).collect();
    if unread.is_empty() {
        return Decision::Drop("read");
    }
    let read = facts.queued.len() - unread.len();
    Decision::Push {
        unread,
        read,
        badge,
    }
}

/// How a pair's push was settled.
enum Settled {
    /// Sent or dropped: its messages up to this seq are done.
    Done(i64),
    /// A provider asked for a retry: put it back as this says.
    Retry(Retry),
}

/// What one attempt at one device came to.
enum Attempt {
    /// Sent, or settled for good (token pruned, dead-lettered, no sender).
    Settled,
    /// The provider asked for a retry, after at least this long.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
}

/// How pushes are collapsed, throttled and retried.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Messages to one user in one group within this window become one push.
    pub window: Duration,
    /// Groups with at least this many members are "large".
    pub large_group: u32,
    /// The window in large groups: at most one push per member per window.
    pub large_group_window: Duration,
    /// Attempts per push and device before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_base: Duration,
    /// Longest retry delay the worker chooses itself.
    pub backoff_max: Duration,
    /// How long a claimed pair stays with its worker; a retry due later than
    /// this after its attempt is given up instead.
    pub lease: Duration,
    /// How often the queue is polled for due pushes.
    pub poll: Duration,
    /// Pairs processed at once.
    pub concurrency: usize,
}

impl Policy {
    /// The collapse window for a group of `members` (0: unknown).
    pub fn window_for(&self, members: u32) -> Duration {
        if members >= self.large_group {
            self.large_group_window.max(self.window)
        } else {
            self.window
        }
    }
}

/// Pairs claimed, read and completed together.
const BATCH: usize = 64;
/// Retry a pair later when a dependency fails, after this long.
const LATER: Duration = Duration::from_secs(5);
/// Queue depth and age are reported this often.
const STATS_EVERY: Duration = Duration::from_secs(10);
/// Pairs per UnreadTotals call (the receipt service's limit).
const UNREAD_TOTALS: usize = 1_000;

/// What the claim loop does after a claim.
enum Next {
    /// Claim again at once: the batch was full, more may be due.
    Claim,
    /// Wait for a batch in flight to finish: every slot is taken.
    AfterAJob,
    /// Wait a poll interval: nothing more is due (or the queue failed).
    Poll,
}

/// Why a pair has to wait.
#[derive(Debug, thiserror::Error)]
enum Later {
    #[error(transparent)]
    Store(#[from] QueueError),
    #[error("receipt service: {0}")]
    Receipt(#[from] tonic::Status),
}

/// The push worker.
pub struct Worker<S> {
    store: S,
    senders: Senders,
    presence: PresenceClient,
    receipt: ReceiptClient,
    policy: Policy,
    retries: parley_server::retry::Retries,
}

impl<S: QueueStore> Worker<S> {
    /// A worker draining `store` through `senders`.
    pub fn new(
        store: S,
        senders: Senders,
        presence: PresenceClient,
        receipt: ReceiptClient,
        policy: Policy,
    ) -> Self {
        Self {
            store,
            senders,
            presence,
            receipt,
            policy,
            retries: parley_server::retry::Retries::default(),
        }
    }

    /// Drains until `stop` turns true; pairs in progress are then handed back
    /// (due at once) for the next worker.
    pub async fn run(self, mut stop: Stopping) {
        let worker = Arc::new(self);
        let slots = Arc::new(Semaphore::new(worker.policy.concurrency.max(1)));
        let mut jobs = JoinSet::new();
        let mut next_stats = Instant::now();
        while !stop.is_stopping() {
            while jobs.try_join_next().is_some() {}
            if Instant::now() >= next_stats {
                worker.report_queue().await;
                next_stats = Instant::now() + STATS_EVERY;
            }
            match worker.claim_due(&slots, &mut jobs, &stop).await {
                Next::Claim => {}
                // Every slot is taken: the next batch is claimed as soon as
                // one finishes, not a poll interval later.
                Next::AfterAJob => {
                    tokio::select! {
                        _ = jobs.join_next() => {}
                        () = stop.stopped() => {}
                    }
                }
                Next::Poll => {
                    tokio::select! {
                        () = tokio::time::sleep(worker.policy.poll) => {}
                        () = stop.stopped() => {}
                    }
                }
            }
        }
        while jobs.join_next().await.is_some() {}
    }

    async fn claim_due(
        self: &Arc<Self>,
        slots: &Arc<Semaphore>,
        jobs: &mut JoinSet<()>,
        stop: &Stopping,
    ) -> Next {
        // Batches of at most BATCH pairs, several in flight when the workers
        // allow: one slow provider answer holds up only its own batch.
        let room = slots.available_permits().min(BATCH);
        if room == 0 {
            return Next::AfterAJob;
        }
        let now = now_ms();
        let due = match self
            .store
            .due(now, u32::try_from(room).unwrap_or(u32::MAX))
            .await
        {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(error = %error, "push queue unreadable");
                return Next::Poll;
            }
        };
        // A lease end of this claim's own (jittered), so the pairs it took
        // can be told from those another replica took in the same ms.
        let lease_until = now
            .saturating_add(millis(self.policy.lease))
            .saturating_add(rand::random_range(0..1_000));
        let claimed = match self.store.claim(&due, lease_until).await {
            Ok(claimed) if !claimed.is_empty() => claimed,
            Ok(_) => return Next::Poll,
            Err(error) => {
                tracing::warn!(error = %error, "push claim failed");
                return Next::Poll;
            }
        };
        let count = claimed.len();
        let Ok(slots) = slots
            .clone()
            .acquire_many_owned(u32::try_from(count).unwrap_or(u32::MAX))
            .await
        else {
            return Next::Poll;
        };
        let (worker, stop) = (self.clone(), stop.clone());
        jobs.spawn(async move {
            worker.job(claimed, stop).await;
            drop(slots);
        });
        // Fewer due than there was room for: the queue is drained for now.
        if due.len() < room {
            Next::Poll
        } else {
            Next::Claim
        }
    }

    /// Settles a claimed batch of pairs; those a dependency could not serve,
    /// or all of them when the worker stops, are put back.
    async fn job(&self, pairs: Vec<Pending>, mut stop: Stopping) {
        let later = tokio::select! {
            outcome = self.process(&pairs) => match outcome {
                Ok(later) => later,
                Err(error) => {
                    tracing::warn!(pairs = pairs.len(), error = %error, "pushes postponed");
                    pairs.iter().map(|p| (p, LATER)).collect()
                }
            },
            () = stop.stopped() => pairs.iter().map(|p| (p, Duration::ZERO)).collect(),
        };
        for (pending, after) in later {
            let due = now_ms().saturating_add(millis(after));
            if let Err(error) = self.store.release(&pending.uid, pending.gid, due).await {
                // The lease runs out and the pair is due again anyway.
                tracing::warn!(uid = %pending.uid, gid = pending.gid, error = %error, "push release failed");
            }
        }
    }

    /// Reads what a batch of pairs needs (their queued messages, mutes,
    /// devices and who is online) in a few statements and one presence call,
    /// decides and sends each pair's push, and settles them together. Returns
    /// the pairs to try later, and when.
    async fn process<'p>(
        &self,
        pairs: &'p [Pending],
    ) -> Result<Vec<(&'p Pending, Duration)>, Later> {
        let mut uids: Vec<String> = pairs.iter().map(|p| p.uid.clone()).collect();
        uids.sort();
        uids.dedup();
        let mut queued: HashMap<(String, i64), Vec<Queued>> = HashMap::new();
        for row in self.store.queued_of(&uids).await? {
            queued
                .entry((row.uid, row.gid))
                .or_default()
                .push(row.queued);
        }
        let now = now_ms();
        let muted: HashSet<(String, i64)> = self
            .store
            .mutes_of(&uids)
            .await?
            .into_iter()
            .filter(|&(_, _, until)| until == -1 || until > now)
            .map(|(uid, gid, _)| (uid, gid))
            .collect();
        let mut devices: HashMap<String, Vec<Device>> = HashMap::new();
        for device in self.store.devices_of(&uids).await? {
            devices.entry(device.uid.clone()).or_default().push(device);
        }
        let online = self.online(&uids).await;
        let facts: Vec<Facts> = pairs
            .iter()
            .map(|pending| {
                let key = (pending.uid.clone(), pending.gid);
                Facts {
                    queued: queued.get(&key).map_or(&[][..], Vec::as_slice),
                    muted: muted.contains(&key),
                    devices: devices.get(&pending.uid).map_or(&[][..], Vec::as_slice),
                    online: online.contains(&pending.uid),
                }
            })
            .collect();
        // The receipt service is asked only about pushes still wanted.
        let asking: Vec<&Pending> = pairs
            .iter()
            .zip(&facts)
            .filter(|(_, facts)| facts.may_push())
            .map(|(pending, _)| pending)
            .collect();
        let unread = self.unread(&asking).await?;
        let decided = join_all(pairs.iter().zip(facts).map(|(pending, facts)| {
            let unread = unread.get(&(pending.uid.clone(), pending.gid)).copied();
            self.push_pair(pending, facts, unread)
        }))
        .await;
        let next_due = now_ms().saturating_add(millis(self.policy.window));
        let (mut done, mut retries, mut later) = (Vec::new(), Vec::new(), Vec::new());
        for (pending, outcome) in pairs.iter().zip(decided) {
            match outcome {
                Ok(Settled::Done(through_seq)) => done.push(Done {
                    uid: pending.uid.clone(),
                    gid: pending.gid,
                    through_seq,
                }),
                Ok(Settled::Retry(retry)) => retries.push(retry),
                Err(error) => {
                    tracing::warn!(uid = %pending.uid, gid = pending.gid, error = %error, "push postponed");
                    later.push((pending, LATER));
                }
            }
        }
        if let Err(error) = self.store.postpone(&retries).await {
            tracing::warn!(pairs = retries.len(), error = %error, "push retries not recorded; their lease brings them back");
        }
        self.store.complete(&done, next_due).await?;
        Ok(later)
    }

    /// Decides one pair's push from what the batch read (`unread`: the badge
    /// and read cursor, `None` when the user is not a member), and sends it.
    async fn push_pair(
        &self,
        pending: &Pending,
        facts: Facts<'_>,
        unread: Option<(u32, i64)>,
    ) -> Result<Settled, Later> {
        let (uid, gid) = (pending.uid.as_str(), pending.gid);
        let queued = facts.queued;
        let Some(newest) = queued.last() else {
            return Ok(Settled::Done(0));
        };
        let settle = |reason: &'static str, count: usize| {
            metrics::counter!("parley_push_dropped_total", "reason" => reason)
                .increment(count as u64);
            tracing::debug!(uid = %uid, gid, reason, messages = count, "push dropped");
            Ok(Settled::Done(newest.seq))
        };
        let (unread, badge) = match decide(&facts, unread) {
            Decision::Drop(reason) => return settle(reason, queued.len()),
            Decision::Push {
                unread,
                read,
                badge,
            } => {
                if read > 0 {
                    metrics::counter!("parley_push_dropped_total", "reason" => "read")
                        .increment(read as u64);
                }
                (unread, badge)
            }
        };
        let (Some(first), Some(last)) = (unread.first(), unread.last()) else {
            return settle("read", 0);
        };
        let push = Push {
            gid,
            group_name: last.group_name.clone(),
            count: u32::try_from(unread.len()).unwrap_or(u32::MAX),
            first_seq: first.seq,
            last_seq: last.seq,
            last_msgid: last.msgid,
            badge,
        };
        metrics::counter!("parley_push_collapsed_total").increment(unread.len() as u64 - 1);
        // A retry of an unchanged push goes only to the devices still owed it.
        let owed = |device: &&Device| match &pending.retry_devices {
            Some(ids) if pending.retry_seq == push.last_seq => {
                ids.split('|').any(|id| id == device.device_id)
            }
            _ => true,
        };
        let targets: Vec<&Device> = facts.devices.iter().filter(owed).collect();
        let attempt = u32::try_from(pending.attempts)
            .unwrap_or(0)
            .saturating_add(1);
        let outcomes = join_all(targets.iter().map(|d| self.deliver(d, &push, attempt))).await;
        let retries: Vec<(&Device, Option<Duration>, String)> = targets
            .into_iter()
            .zip(outcomes)
            .filter_map(|(device, outcome)| match outcome {
                Attempt::Settled => None,
                Attempt::Retry { after, reason } => Some((device, after, reason)),
            })
            .collect();
        if !retries.is_empty()
            && let Some(retry) = self.retry(uid, &retries, &push, attempt).await
        {
            return Ok(Settled::Retry(retry));
        }
        Ok(Settled::Done(newest.seq))
    }

    /// `uid`'s pair's next try for `retries` (the devices a provider asked to
    /// retry after attempt `attempt`), or `None` when they are given up on
    /// (the last attempt, or a retry past the lease), each dead-lettered.
    async fn retry(
        &self,
        uid: &str,
        retries: &[(&Device, Option<Duration>, String)],
        push: &Push,
        attempt: u32,
    ) -> Option<Retry> {
        let hint = retries
            .iter()
            .filter_map(|(_, after, _)| *after)
            .max()
            .unwrap_or_default();
        let delay = backoff_delay(
            attempt - 1,
            self.policy.backoff_base,
            self.policy.backoff_max,
        )
        .max(hint);
        let why = if attempt >= self.policy.max_attempts {
            format!("gave up after {attempt} attempts")
        } else if delay > self.policy.lease {
            format!("next retry in {delay:?} is past the lease")
        } else {
            for (device, _, reason) in retries {
                metrics::counter!("parley_push_retried_total", "platform" => device.platform.name()).increment(1);
                tracing::debug!(uid = %device.uid, device = %device.device_id, platform = device.platform.name(), attempt, reason = %reason, delay_ms = millis(delay), "push retry");
            }
            let devices: Vec<&str> = retries
                .iter()
                .map(|(device, _, _)| device.device_id.as_str())
                .collect();
            return Some(Retry {
                uid: uid.to_owned(),
                gid: push.gid,
                due_at_ms: now_ms().saturating_add(millis(delay)),
                attempts: i32::try_from(attempt).unwrap_or(i32::MAX),
                devices: devices.join("|"),
                seq: push.last_seq,
            });
        };
        for (device, _, reason) in retries {
            self.dead_letter(device, push, attempt, &format!("{reason}; {why}"))
                .await;
        }
        None
    }

    /// Which of `uids` have a device connected: the gateway delivers to them,
    /// and a push would only buzz twice. If presence cannot answer, the
    /// pushes go out (a spare notification beats a missed one).
    async fn online(&self, uids: &[String]) -> HashSet<String> {
        match locate(&self.presence, uids).await {
            Ok(located) => located
                .into_iter()
                .filter(|(_, gateways)| !gateways.is_empty())
                .map(|(uid, _)| uid)
                .collect(),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "presence unavailable; pushing anyway");
                HashSet::new()
            }
        }
    }

    /// Each pair's badge (the user's unread count over every group) and read
    /// cursor in the pair's group, from one receipt call per 1,000 pairs; a
    /// pair whose user is no longer a member of the group is left out.
    async fn unread(
        &self,
        pairs: &[&Pending],
    ) -> Result<HashMap<(String, i64), (u32, i64)>, Later> {
        let mut found = HashMap::with_capacity(pairs.len());
        for chunk in pairs.chunks(UNREAD_TOTALS) {
            let members = chunk
                .iter()
                .filter_map(|p| {
                    Some(rpb::MemberGroup {
                        uid: p.uid.clone(),
                        gid: u64::try_from(p.gid).ok()?,
                    })
                })
                .collect();
            // A read: tried again, within the budget, while the receipt
            // service restarts, rather than postponing the pushes.
            let request = rpb::UnreadTotalsRequest { members };
            let reply = self
                .retries
                .idempotent(|| {
                    let (mut receipt, request) = (self.receipt.clone(), request.clone());
                    async move { receipt.unread_totals(request).await }
                })
                .await?
                .into_inner();
            for member in reply.members.into_iter().filter(|m| m.member) {
                let (Ok(gid), Ok(read_seq)) =
                    (i64::try_from(member.gid), i64::try_from(member.read_seq))
                else {
                    continue;
                };
                let badge = u32::try_from(member.unread_total).unwrap_or(u32::MAX);
                found.insert((member.uid, gid), (badge, read_seq));
            }
        }
        Ok(found)
    }

    /// One attempt at one device: sent, its token pruned, dead-lettered for a
    /// failure no retry fixes, or a retry the provider asked for.
    async fn deliver(&self, device: &Device, push: &Push, attempt: u32) -> Attempt {
        let platform = device.platform.name();
        let Some(sender) = self.senders.get(device.platform) else {
            metrics::counter!("parley_push_failed_total", "platform" => platform, "reason" => "provider_disabled").increment(1);
            tracing::debug!(uid = %device.uid, device = %device.device_id, platform, "no credentials for this platform; push skipped");
            return Attempt::Settled;
        };
        match sender.send(device, push).await {
            Outcome::Sent => {
                metrics::counter!("parley_push_sent_total", "platform" => platform).increment(1);
            }
            Outcome::BadToken { reason } => self.prune(device, &reason).await,
            Outcome::Failed { reason } => self.dead_letter(device, push, attempt, &reason).await,
            Outcome::Retry { after, reason } => return Attempt::Retry { after, reason },
        }
        Attempt::Settled
    }

    async fn dead_letter(&self, device: &Device, push: &Push, attempts: u32, reason: &str) {
        let platform = device.platform.name();
        metrics::counter!("parley_push_failed_total", "platform" => platform, "reason" => "dead_letter").increment(1);
        tracing::warn!(uid = %device.uid, device = %device.device_id, platform, attempts, reason = %reason, "push dead-lettered");
        let letter = DeadLetter {
            uid: device.uid.clone(),
            gid: push.gid,
            last_seq: push.last_seq,
            device_id: device.device_id.clone(),
            platform: device.platform.code(),
            messages: i32::try_from(push.count).unwrap_or(i32::MAX),
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            reason: reason.chars().take(255).collect(),
            failed_at_ms: now_ms(),
        };
        if let Err(error) = self.store.dead_letter(&letter).await {
            tracing::error!(error = %error, "dead letter not stored");
        }
    }

    async fn prune(&self, device: &Device, reason: &str) {
        let platform = device.platform.name();
        match self.store.prune_token(device).await {
            Ok(removed) => {
                if removed {
                    metrics::counter!("parley_push_tokens_pruned_total", "platform" => platform)
                        .increment(1);
                }
                tracing::info!(uid = %device.uid, device = %device.device_id, platform, reason, "push token rejected by the provider; removed");
            }
            Err(error) => tracing::warn!(error = %error, "rejected push token not removed"),
        }
    }

    async fn report_queue(&self) {
        match self.store.queue_stats().await {
            Ok((depth, oldest)) => {
                metrics::gauge!("parley_push_queue_depth").set(depth as f64);
                metrics::gauge!("parley_push_queue_oldest_age_seconds")
                    .set(parley_server::age_seconds(oldest));
            }
            Err(error) => tracing::warn!(error = %error, "push queue stats unavailable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Platform;

    fn queued(seq: i64) -> Queued {
        Queued {
            seq,
            msgid: 100 + seq,
            sender_uid: "A".into(),
            group_name: "Design".into(),
            enqueued_at_ms: 0,
        }
    }

    #[test]
    fn the_push_policy_drops_for_each_reason_in_order_and_pushes_the_unread() {
        let phone = Device {
            uid: "B".into(),
            device_id: "phone".into(),
            platform: Platform::Fcm,
            token: "token".into(),
            app_id: String::new(),
            locale: String::new(),
        };
        let messages = [queued(4), queued(5), queued(6)];
        let facts = |muted, devices: &'static str, online| Facts {
            queued: &messages,
            muted,
            devices: if devices.is_empty() {
                &[]
            } else {
                std::slice::from_ref(&phone)
            },
            online,
        };
        let member = Some((7, 4));
        let cases = [
            // (muted, devices, online, unread) → decision
            ((true, "phone", false, member), Decision::Drop("muted")),
            ((true, "", true, None), Decision::Drop("muted")),
            ((false, "", false, member), Decision::Drop("no_device")),
            ((false, "", true, member), Decision::Drop("no_device")),
            ((false, "phone", true, member), Decision::Drop("online")),
            ((false, "phone", true, None), Decision::Drop("online")),
            ((false, "phone", false, None), Decision::Drop("not_member")),
            (
                (false, "phone", false, Some((0, 6))),
                Decision::Drop("read"),
            ),
            (
                (false, "phone", false, Some((0, 9))),
                Decision::Drop("read"),
            ),
        ];
        for ((muted, devices, online, unread), expected) in cases {
            assert_eq!(
                decide(&facts(muted, devices, online), unread),
                expected,
                "muted {muted}, devices {devices:?}, online {online}, unread {unread:?}"
            );
        }
        // The receipt service is asked only when the pair alone allows a push.
        assert!(facts(false, "phone", false).may_push());
        assert!(!facts(true, "phone", false).may_push());
        assert!(!facts(false, "phone", true).may_push());
        let nothing_queued = Facts {
            queued: &[],
            ..facts(false, "phone", false)
        };
        assert!(!nothing_queued.may_push());
        // Read on another device up to 4: 5 and 6 are pushed, 4 counted read.
        assert_eq!(
            decide(&facts(false, "phone", false), member),
            Decision::Push {
                unread: vec![&messages[1], &messages[2]],
                read: 1,
                badge: 7,
            }
        );
        assert_eq!(
            decide(&facts(false, "phone", false), Some((3, 0))),
            Decision::Push {
                unread: messages.iter().collect(),
                read: 0,
                badge: 3,
            }
        );
    }

    #[test]
    fn large_groups_get_the_longer_window() {
        let policy = Policy {
            window: Duration::from_secs(3),
            large_group: 500,
            large_group_window: Duration::from_secs(60),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            lease: Duration::from_secs(600),
            poll: Duration::from_millis(500),
            concurrency: 32,
        };
        assert_eq!(policy.window_for(0), Duration::from_secs(3), "size unknown");
        assert_eq!(policy.window_for(499), Duration::from_secs(3));
        assert_eq!(policy.window_for(500), Duration::from_secs(60));
        let short = Policy {
            large_group_window: Duration::from_secs(1),
            ..policy
        };
        assert_eq!(
            short.window_for(10_000),
            Duration::from_secs(3),
            "never shorter"
        );
    }
}
