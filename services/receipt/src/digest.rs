//! Receipt digests to senders. An ack that moves a read cursor marks the
//! group's seq range as changed; every window the changed ranges are read
//! once, grouped by sender, and each online sender gets one digest on the bus
//! per window, however many readers acked: 40 readers in one second are one
//! push, not 40. Only the sender's own gateways get it. A sender who is
//! offline (or misses a digest) pulls the changes with `PullReceipts`.
//!
//! The same window carries read sync: where each reader's read cursors
//! moved, to every device of a reader with more than one connected (one
//! event per reader and window), so the laptop's unread counts drop when the
//! phone reads.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use parley_bus::{
    Bus,
    routing::{locate, locate_devices},
};
use parley_proto::{
    bus::{BusEvent, ReadSync, ReceiptDigest, bus_event},
    gateway::{ReadPosition, ReceiptDigestEntry},
};

use parley_server::{Stopping, upstream::PresenceClient};

use crate::store::{MsgReceipt, ReceiptStore};

/// Messages per group and window a digest reports (the newest).
const MAX_MESSAGES_PER_GROUP: u32 = 200;
/// Readers whose moved cursors one window keeps for read sync; past it, a
/// reader's other devices learn the cursor at their next login or list.
const MAX_READERS_PER_WINDOW: usize = 100_000;

/// Where each reader's read cursors moved in a window: reader → group →
/// highest read seq.
pub type Reads = BTreeMap<String, BTreeMap<i64, i64>>;

/// Changed seq ranges per group, `(after, up_to]`, merged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dirty(BTreeMap<i64, (i64, i64)>);

impl Dirty {
    /// Marks `(after, up_to]` of `gid` as changed.
    pub fn mark(&mut self, gid: i64, after: i64, up_to: i64) {
        if up_to <= after {
            return;
        }
        self.0
            .entry(gid)
            .and_modify(|(lo, hi)| {
                *lo = (*lo).min(after);
                *hi = (*hi).max(up_to);
            })
            .or_insert((after, up_to));
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One digest per sender: their changed messages they may see the reads of
/// (see [`crate::domain::Sight`]), oldest first.
pub fn by_sender(messages: Vec<MsgReceipt>) -> BTreeMap<String, Vec<ReceiptDigestEntry>> {
    let mut digests: BTreeMap<String, Vec<ReceiptDigestEntry>> = BTreeMap::new();
    for m in messages
        .into_iter()
        .filter(|m| m.senders_sight().shows_counts())
    {
        digests
            .entry(m.sender_uid)
            .or_default()
            .push(ReceiptDigestEntry {
                gid: u64::try_from(m.gid).unwrap_or_default(),
                msgid: u64::try_from(m.msgid).unwrap_or_default(),
                seq: u64::try_from(m.seq).unwrap_or_default(),
                read_count: u32::try_from(m.read_count).unwrap_or(u32::MAX),
                recipient_count: u32::try_from(m.recipient_count).unwrap_or(u32::MAX),
            });
    }
    for entries in digests.values_mut() {
        entries.sort_by_key(|e| (e.gid, e.seq));
    }
    digests
}

/// Collects changes from acks; cheap to clone.
#[derive(Clone, Default)]
pub struct Coalescer {
    pending: Arc<Mutex<Pending>>,
}

/// The changes of the current window, and when its first one came.
#[derive(Default)]
struct Pending {
    dirty: Dirty,
    reads: Reads,
    since: Option<std::time::Instant>,
}

impl Pending {
    fn mark(&mut self, gid: i64, after: i64, up_to: i64) {
        self.dirty.mark(gid, after, up_to);
        if !self.dirty.is_empty() {
            self.since.get_or_insert_with(std::time::Instant::now);
        }
    }

    fn mark_read(&mut self, uid: &str, gid: i64, read_seq: i64) {
        // The reader's name is copied once per window, not per ack.
        if !self.reads.contains_key(uid) {
            if self.reads.len() >= MAX_READERS_PER_WINDOW {
                return;
            }
            self.reads.insert(uid.to_owned(), BTreeMap::new());
        }
        let Some(groups) = self.reads.get_mut(uid) else {
            return;
        };
        let cursor = groups.entry(gid).or_insert(read_seq);
        *cursor = (*cursor).max(read_seq);
        self.since.get_or_insert_with(std::time::Instant::now);
    }
}

impl Coalescer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that reads in `gid` moved from `after` to `up_to`.
    pub fn mark(&self, gid: i64, after: i64, up_to: i64) {
        self.lock().mark(gid, after, up_to);
    }

    /// Records that `uid`'s read cursor in `gid` moved to `read_seq`, for
    /// the reader's other devices.
    pub fn mark_read(&self, uid: &str, gid: i64, read_seq: i64) {
        self.lock().mark_read(uid, gid, read_seq);
    }

    /// An ack moved `uid`'s read cursor in `gid` to `read`, from where others
    /// saw it (`shown_from`; `None` while `uid` hides their reads): the range
    /// for the senders' digests and the position for read sync, under one
    /// lock. A private reader's read marks no digest: its senders' counts did
    /// not change, and a digest would tell them when it was read.
    pub fn read_moved(&self, uid: &str, gid: i64, shown_from: Option<i64>, read: i64) {
        let mut pending = self.lock();
        if let Some(from) = shown_from.filter(|&from| from < read) {
            pending.mark(gid, from, read);
        }
        pending.mark_read(uid, gid, read);
    }

    /// The read positions marked so far: for tests.
    #[cfg(test)]
    pub(crate) fn reads(&self) -> Reads {
        self.lock().reads.clone()
    }

    /// The changed ranges marked so far, by group: for tests.
    #[cfg(test)]
    pub(crate) fn marked(&self) -> Vec<(i64, (i64, i64))> {
        self.lock()
            .dirty
            .0
            .iter()
            .map(|(gid, range)| (*gid, *range))
            .collect()
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }
}

/// Sends the coalesced digests every `window` until the service stops, and
/// then once more: the acks of the last window still reach their senders.
pub async fn run<S: ReceiptStore>(
    store: S,
    coalescer: Coalescer,
    presence: PresenceClient,
    bus: Bus,
    window: Duration,
    mut stopping: Stopping,
) {
    let mut tick = tokio::time::interval(window);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let going_on = stopping.tick(&mut tick).await;
        send_window(&store, coalescer.take(), &presence, &bus).await;
        if !going_on {
            return;
        }
    }
}

/// Sends one window's read sync and digests.
async fn send_window<S: ReceiptStore>(
    store: &S,
    pending: Pending,
    presence: &PresenceClient,
    bus: &Bus,
) {
    let Pending {
        dirty,
        reads,
        since,
    } = pending;
    // Read sync, like the digests, is a convenience: devices read their
    // cursors at login and with their group list.
    if !reads.is_empty()
        && let Err(error) = sync_reads(reads, presence, bus).await
    {
        tracing::warn!(error = %error, "read sync dropped");
    }
    if dirty.is_empty() {
        return;
    }
    match flush(store, dirty, presence, bus).await {
        // The longest an ack of this window waited for its digest.
        Ok(()) => {
            if let Some(since) = since {
                metrics::histogram!("parley_receipt_digest_delay_seconds")
                    .record(since.elapsed().as_secs_f64());
            }
        }
        // Digests are a convenience: senders pull what they missed.
        Err(error) => tracing::warn!(error = %error, "receipt digests dropped"),
    }
}

async fn flush<S: ReceiptStore>(
    store: &S,
    dirty: Dirty,
    presence: &PresenceClient,
    bus: &Bus,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut changed = Vec::new();
    for (gid, (after, up_to)) in dirty.0 {
        changed.extend(
            store
                .messages_between(gid, after, up_to, MAX_MESSAGES_PER_GROUP)
                .await?,
        );
    }
    let digests = by_sender(changed);
    if digests.is_empty() {
        return Ok(());
    }
    let senders: Vec<String> = digests.keys().cloned().collect();
    let gateways: BTreeMap<String, _> = locate(presence, &senders).await?.into_iter().collect();
    publish_to_users(bus, &gateways, digests, |uid, entries| {
        bus_event::Event::Digest(ReceiptDigest { uid, entries })
    })
    .await
}

/// Tells each reader's gateways where the reader's cursors moved.
async fn sync_reads(
    reads: Reads,
    presence: &PresenceClient,
    bus: &Bus,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let readers: Vec<String> = reads.keys().cloned().collect();
    // Only a reader with another device connected has anyone to tell: the
    // device that acked knows.
    let gateways: BTreeMap<String, _> = locate_devices(presence, &readers)
        .await?
        .into_iter()
        .filter(|(_, _, devices)| *devices > 1)
        .map(|(uid, gateways, _)| (uid, gateways))
        .collect();
    publish_to_users(bus, &gateways, reads, |uid, groups| {
        let groups = groups
            .into_iter()
            .map(|(gid, read_seq)| ReadPosition {
                gid: u64::try_from(gid).unwrap_or_default(),
                read_seq: u64::try_from(read_seq).unwrap_or_default(),
            })
            .collect();
        bus_event::Event::ReadSync(ReadSync { uid, groups })
    })
    .await
}

/// Publishes each user's event to the gateways holding the user's devices;
/// users with none are skipped.
async fn publish_to_users<T>(
    bus: &Bus,
    gateways: &BTreeMap<String, BTreeSet<String>>,
    per_user: BTreeMap<String, T>,
    event: impl Fn(String, T) -> bus_event::Event,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    for (uid, item) in per_user {
        let Some(targets) = gateways.get(&uid) else {
            continue;
        };
        let event = BusEvent {
            event: Some(event(uid, item)),
        };
        for gateway in targets {
            bus.publish(gateway, &event).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(seq: i64, sender: &str, read: i64) -> MsgReceipt {
        MsgReceipt {
            gid: 1,
            seq,
            msgid: 100 + seq,
            sender_uid: sender.into(),
            recipient_count: 40,
            read_count: read,
            ledger: true,
            changed_at_ms: 0,
            policy: 1,
            sender_private: 0,
        }
    }

    #[test]
    fn a_reader_s_cursor_moves_are_kept_at_their_highest_per_group() {
        let coalescer = Coalescer::default();
        coalescer.mark_read("u1", 7, 3);
        coalescer.mark_read("u1", 7, 5);
        coalescer.mark_read("u1", 7, 4);
        coalescer.mark_read("u1", 9, 1);
        coalescer.mark_read("u2", 7, 2);
        let reads = coalescer.reads();
        let expected: Reads = [
            ("u1".to_owned(), [(7, 5), (9, 1)].into()),
            ("u2".to_owned(), [(7, 2)].into()),
        ]
        .into();
        assert_eq!(reads, expected);
        assert!(coalescer.take().since.is_some(), "the window started");
        assert!(coalescer.reads().is_empty(), "taken with the window");
    }

    #[test]
    fn forty_readers_make_one_range() {
        let mut dirty = Dirty::default();
        for _reader in 0..40 {
            dirty.mark(1, 0, 15);
        }
        dirty.mark(1, 10, 20);
        dirty.mark(2, 5, 5);
        assert_eq!(dirty.0.len(), 1, "an ack that moved nothing marks nothing");
        assert_eq!(dirty.0[&1], (0, 20));
    }

    #[test]
    fn digests_go_to_each_sender_with_only_their_messages() {
        let digests = by_sender(vec![
            receipt(3, "A", 2),
            receipt(2, "B", 1),
            receipt(1, "A", 40),
        ]);
        assert_eq!(digests.len(), 2);
        let a: Vec<(u64, u32)> = digests["A"].iter().map(|e| (e.seq, e.read_count)).collect();
        assert_eq!(a, vec![(1, 40), (3, 2)]);
        assert_eq!(digests["B"].len(), 1);
    }

    #[test]
    fn no_digest_for_receipts_off_or_a_sender_who_hides_their_reads() {
        let off = MsgReceipt {
            policy: 3,
            ..receipt(1, "A", 0)
        };
        let private = MsgReceipt {
            sender_private: 1,
            ..receipt(2, "B", 1)
        };
        let digests = by_sender(vec![off, private, receipt(3, "C", 1)]);
        assert_eq!(digests.keys().collect::<Vec<_>>(), ["C"]);
    }

    #[test]
    fn a_private_reader_marks_no_digest_range_but_syncs_their_own_devices() {
        let coalescer = Coalescer::default();
        coalescer.read_moved("p", 7, None, 5);
        coalescer.read_moved("q", 8, Some(2), 4);
        assert_eq!(coalescer.marked(), [(8, (2, 4))]);
        let reads = coalescer.reads();
        assert_eq!(reads["p"][&7], 5);
        assert_eq!(reads["q"][&8], 4);
    }
}
