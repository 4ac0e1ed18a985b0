//! The ReceiptStore contract: every case runs against MariaDB and SQLite.

use parley_receipt::{
    domain::{AckKind, Cursors, Planned, ReceiptState},
    error::ReceiptError,
    store::{
        GroupSelection, InitMessage, InitOutcome, MemberAck, MemberChange, MySqlReceiptStore,
        Privacy, PrivacyScope, ReceiptStore, SqliteReceiptStore,
    },
};

const GID: i64 = 7;
const LEDGER_MAX: i64 = 200;

fn member(uid: &str, admin: bool, joined_seq: i64, version: i64) -> MemberChange {
    MemberChange {
        uid: uid.into(),
        admin,
        joined_seq,
        left_seq: None,
        version,
        past_stays: Vec::new(),
    }
}

/// A, uid1, uid2 and uid3 in one group; A is the admin.
async fn seed_group<S: ReceiptStore>(store: &S) {
    let changes = vec![
        member("A", true, 0, 1),
        member("uid1", false, 0, 2),
        member("uid2", false, 0, 3),
        member("uid3", false, 0, 4),
    ];
    assert_eq!(
        store
            .apply_membership(GID, &changes, 1)
            .await
            .expect("membership"),
        4
    );
}

fn member_ack(uid: &str, up_to: i64, kind: AckKind) -> MemberAck {
    MemberAck {
        uid: uid.into(),
        up_to,
        kind,
    }
}

/// One ack alone, as a batch of one.
async fn ack_one<S: ReceiptStore>(
    store: &S,
    gid: i64,
    ack: MemberAck,
    committed: Option<i64>,
    at_ms: i64,
) -> Result<Planned, ReceiptError> {
    let outcomes = store.ack_group(gid, &[ack], committed, at_ms).await?;
    assert_eq!(outcomes.len(), 1);
    Ok(outcomes[0])
}

/// An ack that must be applied, up to a seq the message service committed:
/// the cursors before and after.
async fn ack<S: ReceiptStore>(
    store: &S,
    uid: &str,
    up_to: i64,
    kind: AckKind,
    at_ms: i64,
) -> (Cursors, Cursors) {
    match ack_one(store, GID, member_ack(uid, up_to, kind), Some(up_to), at_ms).await {
        Ok(Planned::Moved {
            previous, cursors, ..
        }) => (previous, cursors),
        other => panic!("ack by {uid} up to {up_to}: {other:?}"),
    }
}

fn message(seq: i64, need_receipt: bool) -> InitMessage {
    InitMessage {
        gid: GID,
        msgid: 1000 + seq,
        seq,
        sender_uid: "A".into(),
        need_receipt,
        recipient_count: 3,
        created_at_ms: 10 + seq,
        policy: parley_receipt::domain::Policy::Full,
    }
}

/// Records one message, as a batch of one.
async fn init<S: ReceiptStore>(store: &S, message: InitMessage, ledger_max: i64) -> InitOutcome {
    let outcomes = store
        .init_receipts(std::slice::from_ref(&message), ledger_max)
        .await
        .expect("init");
    assert_eq!(outcomes.len(), 1);
    outcomes[0]
}

async fn receipt<S: ReceiptStore>(store: &S, seq: i64) -> (i64, bool, Vec<String>, Vec<String>) {
    let found = store.messages(GID, &[1000 + seq]).await.expect("messages");
    let m = found.first().expect("message recorded");
    let read = store
        .receipt_members(m, ReceiptState::Read, None, 100)
        .await
        .expect("readers");
    let unread = store
        .receipt_members(m, ReceiptState::Unread, None, 100)
        .await
        .expect("non-readers");
    (m.read_count, m.ledger, read, unread)
}

fn uids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// When each of uid1..uid3 read message `seq`, as the ledger says.
async fn read_times<S: ReceiptStore>(store: &S, gid: i64, seq: i64) -> Vec<(String, i64)> {
    store
        .read_times(gid, seq, &uids(&["uid1", "uid2", "uid3"]))
        .await
        .expect("read times")
}

fn timed(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter()
        .map(|(uid, at)| (uid.to_string(), *at))
        .collect()
}

async fn acks_count_readers_and_the_ledger_keeps_when_each_read<S: ReceiptStore>(store: S) {
    seed_group(&store).await;
    for seq in 1..=25 {
        let outcome = init(&store, message(seq, true), LEDGER_MAX).await;
        assert!(outcome.created && outcome.ledger);
    }
    assert!(!init(&store, message(5, true), LEDGER_MAX).await.created);
    assert_eq!(read_times(&store, GID, 5).await, vec![]);
    ack(&store, "uid1", 10, AckKind::Read, 20).await;
    ack(&store, "uid1", 20, AckKind::Read, 21).await;
    ack(&store, "uid2", 25, AckKind::Read, 22).await;
    assert_eq!(
        receipt(&store, 15).await,
        (2, true, uids(&["uid1", "uid2"]), uids(&["uid3"]))
    );
    assert_eq!(
        receipt(&store, 25).await,
        (1, true, uids(&["uid2"]), uids(&["uid1", "uid3"]))
    );
    let (before, after) = ack(&store, "uid1", 5, AckKind::Read, 23).await;
    assert_eq!(before, after, "an ack behind the cursors changes nothing");
    assert_eq!(after.read, 20);
    // uid3 reads everything up to 20: each reader's time is their first read
    // that reached the message.
    ack(&store, "uid3", 20, AckKind::Read, 24).await;
    assert_eq!(
        receipt(&store, 15).await,
        (3, true, uids(&["uid1", "uid2", "uid3"]), vec![])
    );
    assert_eq!(
        read_times(&store, GID, 5).await,
        timed(&[("uid1", 20), ("uid2", 22), ("uid3", 24)])
    );
    assert_eq!(
        read_times(&store, GID, 15).await,
        timed(&[("uid1", 21), ("uid2", 22), ("uid3", 24)])
    );
    assert_eq!(read_times(&store, GID, 21).await, timed(&[("uid2", 22)]));
    // A delivered ack is no read.
    ack(&store, "uid1", 25, AckKind::Delivered, 25).await;
    assert_eq!(read_times(&store, GID, 21).await, timed(&[("uid2", 22)]));
    // When each shown read position last moved (the bound for messages
    // without read times): a delivered ack moves none (uid1's read at 21
    // stands); a stranger has none.
    let cursors = store
        .cursor_times(GID, 5, &uids(&["uid1", "uid2", "uid3", "stranger"]))
        .await
        .expect("cursor times");
    assert_eq!(cursors, timed(&[("uid1", 21), ("uid2", 22), ("uid3", 24)]));
    let unread = store
        .unread("uid3", GroupSelection::After { gid: 0, limit: 10 })
        .await
        .expect("unread");
    assert_eq!((unread[0].last_seq, unread[0].read_seq), (25, 20));
}

async fn large_groups_are_answered_exactly_from_the_cursors<S: ReceiptStore>(store: S) {
    seed_group(&store).await;
    for seq in 1..=5 {
        assert!(!init(&store, message(seq, true), 2).await.ledger);
    }
    ack(&store, "uid1", 3, AckKind::Read, 20).await;
    ack(&store, "uid2", 5, AckKind::Delivered, 21).await;
    assert_eq!(
        read_times(&store, GID, 2).await,
        vec![],
        "no read times kept"
    );
    assert_eq!(
        receipt(&store, 2).await,
        (1, false, uids(&["uid1"]), uids(&["uid2", "uid3"]))
    );
    assert_eq!(
        receipt(&store, 4).await,
        (0, false, vec![], uids(&["uid1", "uid2", "uid3"]))
    );
}

async fn a_message_recorded_after_its_acks_starts_from_the_cursors<S: ReceiptStore>(store: S) {
    seed_group(&store).await;
    init(&store, message(1, true), LEDGER_MAX).await;
    // uid1 and uid2 ack seq 3 before the receipt service has heard of seq 2 and 3.
    ack(&store, "uid1", 3, AckKind::Read, 20).await;
    ack(&store, "uid2", 3, AckKind::Delivered, 20).await;
    init(&store, message(2, true), LEDGER_MAX).await;
    assert_eq!(
        receipt(&store, 2).await,
        (1, true, uids(&["uid1"]), uids(&["uid2", "uid3"]))
    );
    let unread = store
        .unread("uid1", GroupSelection::Only(&[GID]))
        .await
        .expect("unread");
    assert_eq!((unread[0].last_seq, unread[0].read_seq), (2, 3));
}

async fn an_ack_past_every_known_seq_changes_nothing<S: ReceiptStore>(store: S) {
    seed_group(&store).await;
    init(&store, message(1, true), LEDGER_MAX).await;
    for committed in [None, Some(0), Some(1)] {
        let past = ack_one(
            &store,
            GID,
            member_ack("uid1", 99, AckKind::Read),
            committed,
            5,
        )
        .await;
        assert!(
            matches!(past, Ok(Planned::Past)),
            "committed {committed:?}: {past:?}"
        );
    }
    let cursor = store
        .cursor(GID, "uid1")
        .await
        .expect("cursor")
        .expect("member");
    assert_eq!(
        (cursor.delivered_seq, cursor.read_seq),
        (0, 0),
        "nothing moved"
    );
    // Up to what the message service committed, the receipt service's own
    // last seq may trail: the ack stands.
    let (_, after) = ack(&store, "uid1", 3, AckKind::Read, 6).await;
    assert_eq!(after.read, 3);
}

async fn membership_versions_and_departures_are_respected<S: ReceiptStore>(store: S) {
    seed_group(&store).await;
    let left = MemberChange {
        left_seq: Some(0),
        version: 10,
        ..member("uid3", false, 0, 10)
    };
    store
        .apply_membership(GID, &[left], 2)
        .await
        .expect("leave");
    // An older change delivered late does not bring uid3 back.
    assert_eq!(
        store
            .apply_membership(GID, &[member("uid3", false, 0, 4)], 3)
            .await
            .expect("stale"),
        0
    );
    for uid in ["uid3", "stranger"] {
        let refused = ack_one(&store, GID, member_ack(uid, 1, AckKind::Read), Some(1), 4).await;
        assert!(
            matches!(refused, Ok(Planned::NotMember)),
            "{uid}: {refused:?}"
        );
    }
    assert!(matches!(
        ack_one(
            &store,
            999,
            member_ack("uid1", 1, AckKind::Read),
            Some(1),
            4
        )
        .await,
        Err(ref e) if e.reason() == parley_server::Reason::GroupNotFound
    ));
    // A member who joins later starts with nothing unread before their join.
    init(&store, message(1, false), LEDGER_MAX).await;
    store
        .apply_membership(GID, &[member("late", false, 1, 11)], 5)
        .await
        .expect("join");
    let unread = store
        .unread("late", GroupSelection::Only(&[GID]))
        .await
        .expect("unread");
    assert_eq!(unread[0].read_seq, 1);
}

async fn retention_moves_old_messages_to_the_cursor_tier<S: ReceiptStore>(store: S) {
    seed_group(&store).await;
    for seq in 1..=3 {
        init(&store, message(seq, true), LEDGER_MAX).await;
    }
    ack(&store, "uid1", 2, AckKind::Read, 12).await;
    ack(&store, "uid2", 3, AckKind::Read, 14).await;
    let before = receipt(&store, 2).await;
    assert!(before.1);
    // Messages 1 and 2 (sent at 11 and 12) and uid1's read at 12 are past
    // the cutoff; message 3 (sent at 13) and uid2's read at 14 stay.
    let expired = store.expire_ledger(13, 100).await.expect("expire");
    assert_eq!((expired.messages, expired.read_acks), (2, 1), "{expired:?}");
    let after = receipt(&store, 2).await;
    assert_eq!((after.0, after.2, after.3), (before.0, before.2, before.3));
    assert!(!after.1);
    assert!(receipt(&store, 3).await.1);
    assert_eq!(read_times(&store, GID, 3).await, timed(&[("uid2", 14)]));
    // A step with nothing left to expire does nothing.
    let again = store.expire_ledger(13, 100).await.expect("expire");
    assert_eq!((again.messages, again.read_acks), (0, 0));
}

async fn a_returning_sender_pulls_changes_in_order<S: ReceiptStore>(store: S) {
    seed_group(&store).await;
    for seq in 1..=3 {
        init(&store, message(seq, true), LEDGER_MAX).await;
    }
    let first = store.pull("A", (i64::MIN, 0), 10).await.expect("pull");
    assert_eq!(
        first.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let last = first.last().expect("changes");
    ack(&store, "uid1", 2, AckKind::Read, 100).await;
    let changed = store
        .pull("A", (last.changed_at_ms, last.msgid), 10)
        .await
        .expect("pull");
    assert_eq!(
        changed
            .iter()
            .map(|m| (m.seq, m.read_count))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 1)]
    );
    assert!(
        store
            .pull("uid1", (i64::MIN, 0), 10)
            .await
            .expect("pull")
            .is_empty()
    );
}

async fn a_batch_records_each_message_once_in_order<S: ReceiptStore>(store: S) {
    seed_group(&store).await;
    init(&store, message(1, true), LEDGER_MAX).await;
    // uid1 read seq 2 before the batch arrives: the batch's seq 2 starts read by
    // uid1, its seq 3 does not; seq 1 is a retry and seq 2 is listed twice.
    ack(&store, "uid1", 2, AckKind::Read, 20).await;
    let batch = [
        message(1, true),
        message(2, true),
        message(3, true),
        message(2, true),
    ];
    let outcomes = store
        .init_receipts(&batch, LEDGER_MAX)
        .await
        .expect("batch");
    let created: Vec<bool> = outcomes.iter().map(|o| o.created).collect();
    assert_eq!(created, vec![false, true, true, false]);
    assert!(outcomes.iter().all(|o| o.ledger));
    assert_eq!(
        receipt(&store, 2).await,
        (1, true, uids(&["uid1"]), uids(&["uid2", "uid3"]))
    );
    assert_eq!(
        receipt(&store, 3).await,
        (0, true, vec![], uids(&["uid1", "uid2", "uid3"]))
    );
    assert_eq!(read_times(&store, GID, 2).await, timed(&[("uid1", 20)]));
}

async fn a_batch_of_many_groups_is_its_messages_one_by_one<S: ReceiptStore>(store: S) {
    // Two groups alike: in GID each message is recorded alone, in ALIKE the
    // messages come in one batch, interleaved with a third group's; uid1 read
    // up to seq 2 before, uid2 left at seq 4, seq 3 wants no receipts and
    // seq 5 comes twice. Every receipt, read time and cursor must match.
    const ALIKE: i64 = GID + 1;
    const OTHER: i64 = GID + 2;
    let batched = |gid: i64| -> Vec<InitMessage> {
        (1..=6)
            .map(|seq| {
                let mut m = message(seq, seq != 3);
                m.gid = gid;
                if seq > 4 {
                    m.recipient_count = 2;
                }
                m
            })
            .collect()
    };
    for gid in [GID, ALIKE, OTHER] {
        let changes = [
            member("A", true, 0, 1),
            member("uid1", false, 0, 2),
            MemberChange {
                left_seq: Some(4),
                ..member("uid2", false, 0, 3)
            },
            member("uid3", false, 0, 4),
        ];
        store
            .apply_membership(gid, &changes, 1)
            .await
            .expect("membership");
        for (uid, up_to, kind) in [("uid1", 2, AckKind::Read), ("uid3", 1, AckKind::Delivered)] {
            let early = ack_one(&store, gid, member_ack(uid, up_to, kind), Some(up_to), 5).await;
            assert!(matches!(early, Ok(Planned::Moved { .. })), "{early:?}");
        }
    }
    let mut alone = Vec::new();
    for message in batched(GID) {
        alone.push(init(&store, message, LEDGER_MAX).await);
    }
    let mut interleaved = Vec::new();
    for (ours, theirs) in batched(ALIKE).into_iter().zip(batched(OTHER)) {
        interleaved.extend([ours, theirs]);
    }
    interleaved.push(batched(ALIKE).remove(4));
    let outcomes = store
        .init_receipts(&interleaved, LEDGER_MAX)
        .await
        .expect("batch");
    let ours: Vec<InitOutcome> = outcomes.iter().step_by(2).copied().collect();
    let mut expected = alone.clone();
    expected.push(InitOutcome {
        created: false,
        read_count: 0,
        ..alone[4]
    });
    assert_eq!(ours, expected, "each message answered in its place");
    assert_eq!(
        group_state(&store, ALIKE, 6).await,
        group_state(&store, GID, 6).await
    );
    assert_eq!(
        group_state(&store, OTHER, 6).await,
        group_state(&store, GID, 6).await
    );
}

/// Everything a reader sees of a group: each message's receipts, read times
/// and each member's cursors.
async fn group_state<S: ReceiptStore>(store: &S, gid: i64, seqs: i64) -> Vec<String> {
    let mut state = Vec::new();
    let found = store
        .messages(gid, &(1..=seqs).map(|seq| 1000 + seq).collect::<Vec<_>>())
        .await
        .expect("messages");
    for message in found {
        let mut lists = Vec::new();
        for which in [ReceiptState::Read, ReceiptState::Unread] {
            lists.push(
                store
                    .receipt_members(&message, which, None, 100)
                    .await
                    .expect("members"),
            );
        }
        let everyone = uids(&["A", "uid1", "uid2", "uid3", "late"]);
        let times = store
            .read_times(gid, message.seq, &everyone)
            .await
            .expect("read times");
        state.push(format!(
            "seq {}: {} of {}, ledger {} (read at {times:?}), read {:?}, unread {:?}",
            message.seq,
            message.read_count,
            message.recipient_count,
            message.ledger,
            lists[0],
            lists[1]
        ));
    }
    for uid in ["A", "uid1", "uid2", "uid3", "late"] {
        let cursor = store.cursor(gid, uid).await.expect("cursor");
        state.push(format!("{uid}: {cursor:?}"));
    }
    state
}

async fn a_group_batch_is_its_acks_one_by_one<S: ReceiptStore>(store: S) {
    // Two groups alike: in GID the acks are applied one by one, in ALIKE as
    // one batch; every receipt, read time and cursor must come out the same.
    const ALIKE: i64 = GID + 1;
    let late = MemberChange {
        joined_seq: 4,
        ..member("late", false, 4, 5)
    };
    for gid in [GID, ALIKE] {
        let mut changes = vec![
            member("A", true, 0, 1),
            member("uid1", false, 0, 2),
            member("uid2", false, 0, 3),
            member("uid3", false, 0, 4),
        ];
        changes.push(late.clone());
        store
            .apply_membership(gid, &changes, 1)
            .await
            .expect("membership");
        let mut messages: Vec<InitMessage> = (1..=8).map(|seq| message(seq, true)).collect();
        for m in &mut messages {
            m.gid = gid;
            if m.seq == 6 {
                // uid1's own message: uid1's read does not count for it.
                m.sender_uid = "uid1".into();
                m.recipient_count = 4;
            } else if m.seq > 4 {
                m.recipient_count = 4;
            }
        }
        store
            .init_receipts(&messages, LEDGER_MAX)
            .await
            .expect("init");
    }
    let acks = [
        member_ack("uid1", 3, AckKind::Delivered),
        member_ack("uid2", 2, AckKind::Read),
        member_ack("stranger", 3, AckKind::Read),
        member_ack("uid1", 7, AckKind::Read),
        member_ack("uid3", 99, AckKind::Read),
        member_ack("late", 6, AckKind::Read),
        member_ack("uid2", 1, AckKind::Read),
        member_ack("uid3", 8, AckKind::Read),
        member_ack("uid2", 8, AckKind::Read),
        member_ack("uid1", 8, AckKind::Delivered),
    ];
    let mut alone = Vec::new();
    for ack in &acks {
        alone.push(
            ack_one(&store, GID, ack.clone(), None, 30)
                .await
                .expect("ack"),
        );
    }
    let together = store
        .ack_group(ALIKE, &acks, None, 30)
        .await
        .expect("batch");
    assert_eq!(together, alone);
    assert!(matches!(together[2], Planned::NotMember));
    assert!(matches!(together[4], Planned::Past));
    assert_eq!(
        group_state(&store, ALIKE, 8).await,
        group_state(&store, GID, 8).await
    );
    // Each reader's time is the batch's.
    assert_eq!(
        read_times(&store, ALIKE, 3).await,
        timed(&[("uid1", 30), ("uid2", 30), ("uid3", 30)])
    );
    let sixth = store.messages(ALIKE, &[1006]).await.expect("message");
    assert_eq!(
        sixth[0].read_count, 3,
        "uid2, uid3 and late; not uid1, its sender"
    );
}

/// A message sent with receipts off counts no reader, keeps no read times,
/// and its sender's sight of it shows nothing (so it is in no digest and no
/// pull); COUNTS and FULL messages count alike.
async fn a_message_sent_with_receipts_off_counts_no_one<S: ReceiptStore>(store: S) {
    use parley_receipt::domain::Policy;
    seed_group(&store).await;
    let with = |seq: i64, policy: Policy| InitMessage {
        policy,
        ..message(seq, true)
    };
    // uid1 reads seq 1 before the messages are recorded, and everything after.
    ack(&store, "uid1", 1, AckKind::Read, 20).await;
    for (seq, policy) in [
        (1, Policy::Off),
        (2, Policy::Full),
        (3, Policy::Off),
        (4, Policy::Counts),
    ] {
        let outcome = init(&store, with(seq, policy), LEDGER_MAX).await;
        assert_eq!(outcome.ledger, policy != Policy::Off, "seq {seq}");
    }
    ack(&store, "uid1", 4, AckKind::Read, 21).await;
    ack(&store, "uid2", 4, AckKind::Read, 22).await;
    let found = store
        .messages(GID, &[1001, 1002, 1003, 1004])
        .await
        .expect("messages");
    let counts: Vec<(i64, i64, i64)> = found
        .iter()
        .map(|m| (m.seq, m.read_count, m.policy))
        .collect();
    assert_eq!(counts, [(1, 0, 3), (2, 2, 1), (3, 0, 3), (4, 2, 2)]);
    let digested: Vec<i64> = store
        .messages_between(GID, 0, 4, 10)
        .await
        .expect("between")
        .iter()
        .filter(|m| m.senders_sight().shows_counts())
        .map(|m| m.seq)
        .collect();
    assert_eq!(digested, [4, 2], "newest first, receipts-off left out");
    let pulled: Vec<i64> = store
        .pull("A", (i64::MIN, 0), 10)
        .await
        .expect("pull")
        .iter()
        .filter(|m| m.senders_sight().shows_counts())
        .map(|m| m.seq)
        .collect();
    assert_eq!(pulled, [2, 4]);
    assert!(!found[0].ledger && !found[2].ledger, "no read times kept");
}

/// Whether `uid` hides their reads in the test group, as their cursor says.
async fn hides<S: ReceiptStore>(store: &S, uid: &str) -> bool {
    let cursor = store.cursor(GID, uid).await.expect("cursor");
    cursor.expect("a member").private
}

/// A private reader moves their own cursors but is counted in no receipt,
/// logs no read time and shows in no reader list; their choice for every
/// group holds where a group has none of its own (a new member takes it);
/// sharing again shows nothing until they read on.
async fn a_private_reader_moves_their_cursors_and_is_counted_nowhere<S: ReceiptStore>(store: S) {
    seed_group(&store).await;
    let private = store
        .set_privacy("uid2", PrivacyScope::Group(GID), Some(true), 5)
        .await
        .expect("private");
    let expected = Privacy {
        every_group: false,
        group: Some(true),
        private: true,
    };
    assert_eq!(private, expected);
    assert_eq!(
        store
            .privacy("uid2", PrivacyScope::Group(GID))
            .await
            .expect("read back"),
        expected
    );
    assert!(hides(&store, "uid2").await && !hides(&store, "uid1").await);
    for seq in 1..=6 {
        init(&store, message(seq, true), LEDGER_MAX).await;
    }
    ack(&store, "uid1", 5, AckKind::Read, 20).await;
    let (_, after) = ack(&store, "uid2", 5, AckKind::Read, 21).await;
    assert_eq!(after.read, 5, "their own cursor moves");
    let unread = store
        .unread("uid2", GroupSelection::Only(&[GID]))
        .await
        .expect("unread");
    assert_eq!(unread[0].last_seq - unread[0].read_seq, 1);
    assert_eq!(
        receipt(&store, 3).await,
        (1, true, uids(&["uid1"]), uids(&["uid2", "uid3"]))
    );
    assert_eq!(read_times(&store, GID, 3).await, timed(&[("uid1", 20)]));

    // Their choice for every group: uid3 reads unseen; a group's own choice
    // overrides it, and forgetting that choice brings it back.
    store
        .set_privacy("uid3", PrivacyScope::EveryGroup, Some(true), 6)
        .await
        .expect("every group");
    assert!(hides(&store, "uid3").await);
    ack(&store, "uid3", 2, AckKind::Read, 22).await;
    assert_eq!(receipt(&store, 2).await.0, 1);
    let shared = store
        .set_privacy("uid3", PrivacyScope::Group(GID), Some(false), 7)
        .await
        .expect("shared here");
    assert!(shared.every_group && shared.group == Some(false) && !shared.private);
    assert!(!hides(&store, "uid3").await);
    store
        .set_privacy("uid3", PrivacyScope::Group(GID), None, 8)
        .await
        .expect("forget");
    assert!(hides(&store, "uid3").await);
    store
        .apply_membership(GID, &[member("late", false, 6, 20)], 9)
        .await
        .expect("join");
    store
        .set_privacy("late", PrivacyScope::EveryGroup, Some(true), 9)
        .await
        .expect("late");
    assert!(hides(&store, "late").await);

    // A private sender's messages show them nothing.
    let theirs = InitMessage {
        sender_uid: "uid2".into(),
        ..message(7, true)
    };
    init(&store, theirs, LEDGER_MAX).await;
    let found = store.messages(GID, &[1007]).await.expect("message");
    assert!(!found[0].senders_sight().shows_counts());
    assert!(found[0].senders_sight().shows_lists().is_err());

    // Sharing again shows nothing by itself; reading on shows it all, with
    // the time of that read.
    store
        .set_privacy("uid2", PrivacyScope::Group(GID), Some(false), 10)
        .await
        .expect("shared again");
    assert_eq!(receipt(&store, 3).await.0, 1);
    ack(&store, "uid2", 6, AckKind::Read, 30).await;
    assert_eq!(
        receipt(&store, 3).await,
        (2, true, uids(&["uid1", "uid2"]), uids(&["uid3"]))
    );
    assert_eq!(
        read_times(&store, GID, 3).await,
        timed(&[("uid1", 20), ("uid2", 30)])
    );
}

/// A member who left and joined again keeps each stay: answers for a
/// message of the first stay count them as they read then, a message of the
/// gap has nothing of them, and one of the second stay counts them anew.
/// A stay whose end this service never heard of (the leave was superseded
/// before it was delivered) is closed from the change's history.
async fn a_member_who_leaves_and_rejoins_keeps_each_stay<S: ReceiptStore>(store: S) {
    seed_group(&store).await;
    for seq in 1..=3 {
        init(&store, message(seq, true), LEDGER_MAX).await;
    }
    ack(&store, "uid3", 2, AckKind::Read, 20).await;
    ack(&store, "uid2", 1, AckKind::Read, 21).await;
    let left = MemberChange {
        left_seq: Some(3),
        ..member("uid3", false, 0, 10)
    };
    store
        .apply_membership(GID, &[left], 22)
        .await
        .expect("leave");
    for seq in 4..=5 {
        init(&store, message(seq, true), LEDGER_MAX).await;
    }
    // uid3 comes back at 5; uid2 left at 4 and came back at 5, and only the
    // return reached this service.
    let back = MemberChange {
        past_stays: vec![(0, 3)],
        ..member("uid3", false, 5, 11)
    };
    let uid2_back = MemberChange {
        past_stays: vec![(0, 4)],
        ..member("uid2", false, 5, 12)
    };
    assert_eq!(
        store
            .apply_membership(GID, &[back, uid2_back], 23)
            .await
            .expect("rejoin"),
        2
    );
    for seq in 6..=7 {
        init(&store, message(seq, true), LEDGER_MAX).await;
    }
    let unread = store
        .unread("uid3", GroupSelection::Only(&[GID]))
        .await
        .expect("unread");
    assert_eq!(
        unread[0].read_seq, 5,
        "nothing unread from before the return"
    );
    ack(&store, "uid3", 7, AckKind::Read, 30).await;

    // First stay: uid3 read 2 (not 3); uid2 read 1 (not 2 to 4).
    assert_eq!(
        receipt(&store, 2).await,
        (1, true, uids(&["uid3"]), uids(&["uid1", "uid2"]))
    );
    assert_eq!(
        receipt(&store, 3).await,
        (0, true, vec![], uids(&["uid1", "uid2", "uid3"]))
    );
    assert_eq!(
        receipt(&store, 4).await,
        (0, true, vec![], uids(&["uid1", "uid2"])),
        "uid3 was away"
    );
    // The gap: neither was a member.
    assert_eq!(receipt(&store, 5).await, (0, true, vec![], uids(&["uid1"])));
    // Second stay.
    assert_eq!(
        receipt(&store, 7).await,
        (1, true, uids(&["uid3"]), uids(&["uid1", "uid2"]))
    );
    // Read times come from the stay that includes the message.
    assert_eq!(read_times(&store, GID, 2).await, timed(&[("uid3", 20)]));
    let bounds = store
        .cursor_times(GID, 2, &uids(&["uid2", "uid3"]))
        .await
        .expect("cursor times");
    assert_eq!(bounds, timed(&[("uid2", 21), ("uid3", 20)]));
    let bounds = store
        .cursor_times(GID, 7, &uids(&["uid3"]))
        .await
        .expect("cursor times");
    assert_eq!(bounds, timed(&[("uid3", 30)]));
}

parley_testkit::contract_suite!(
    MySqlReceiptStore,
    SqliteReceiptStore,
    ReceiptStore;
    acks_count_readers_and_the_ledger_keeps_when_each_read,
    large_groups_are_answered_exactly_from_the_cursors,
    a_message_recorded_after_its_acks_starts_from_the_cursors,
    an_ack_past_every_known_seq_changes_nothing,
    membership_versions_and_departures_are_respected,
    retention_moves_old_messages_to_the_cursor_tier,
    a_returning_sender_pulls_changes_in_order,
    a_batch_records_each_message_once_in_order,
    a_group_batch_is_its_acks_one_by_one,
    a_batch_of_many_groups_is_its_messages_one_by_one,
    a_message_sent_with_receipts_off_counts_no_one,
    a_private_reader_moves_their_cursors_and_is_counted_nowhere,
    a_member_who_leaves_and_rejoins_keeps_each_stay,
);
