//! The MessageStore contract: every case runs against MariaDB and SQLite.

use parley_message::{
    domain::{Gid, GroupKind, NewGroup, ReceiptPolicy},
    error::MessageError,
    store::{
        Lane, MembershipChange, MessageStore, MySqlMessageStore, NewMessage, OUTBOX_MEMBERSHIP,
        OUTBOX_MESSAGE, OutboxStats, SendOutcome, SqliteMessageStore,
    },
};
use parley_server::{Reason, Uid, db::Pooled as _};

fn uid(s: &str) -> Uid {
    Uid::parse(s).expect("valid uid")
}

async fn group_of<S: MessageStore>(store: &S, creator: &str, members: &[&str]) -> Gid {
    let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    let group = NewGroup::new(GroupKind::Group, "Design".into(), uid(creator), &members)
        .expect("valid group");
    let (record, existing) = store.create_group(&group, 1).await.expect("create group");
    assert!(!existing);
    record.gid
}

fn change<'a>(gid: Gid, actor: &'a Uid, uids: &'a [Uid], max_members: i64) -> MembershipChange<'a> {
    MembershipChange {
        gid,
        actor,
        uids,
        max_members,
        now_ms: 3,
    }
}

/// One message through the store's batch path.
async fn send_one<S: MessageStore>(
    store: &S,
    message: &NewMessage,
    now_ms: i64,
) -> Result<SendOutcome, MessageError> {
    let mut outcomes = store
        .send_batch(std::slice::from_ref(message), now_ms)
        .await?;
    Ok(outcomes.pop().expect("one outcome per message"))
}

async fn send<S: MessageStore>(
    store: &S,
    gid: Gid,
    sender: &str,
    client_msg_id: &str,
) -> SendOutcome {
    send_one(store, &new_message(gid, sender, client_msg_id), 2)
        .await
        .expect("send")
}

fn new_message(gid: Gid, sender: &str, client_msg_id: &str) -> NewMessage {
    NewMessage {
        gid,
        sender: uid(sender),
        client_msg_id: client_msg_id.into(),
        content: b"hello".to_vec(),
        need_receipt: true,
        trace_context: String::new(),
    }
}

fn seq_of(outcome: &SendOutcome) -> (bool, i64) {
    match outcome {
        SendOutcome::Sent(m) => (true, m.seq.stored()),
        SendOutcome::Duplicate(m) => (false, m.seq.stored()),
    }
}

async fn a_batch_is_stored_in_order_with_dense_seqs_and_retries_are_originals<S: MessageStore>(
    store: S,
) {
    let gid = group_of(&store, "A", &["uid1"]).await;
    send(&store, gid, "A", "before").await;
    let batch: Vec<NewMessage> = ["b1", "b2", "b1", "b3"]
        .iter()
        .map(|id| new_message(gid, "A", id))
        .collect();
    let outcomes = store.send_batch(&batch, 5).await.expect("batch");
    let seqs: Vec<(bool, i64)> = outcomes.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        vec![(true, 2), (true, 3), (false, 2), (true, 4)],
        "in order; the repeated id is its original"
    );
    let again = store.send_batch(&batch, 6).await.expect("retried batch");
    assert!(
        again.iter().all(|o| !seq_of(o).0),
        "a retried batch stores nothing"
    );
    let next = send(&store, gid, "A", "after").await;
    assert_eq!(seq_of(&next), (true, 5), "no seq consumed by duplicates");
    let mixed = [new_message(gid, "A", "m1"), new_message(gid, "uid1", "m2")];
    assert!(matches!(
        store.send_batch(&mixed, 7).await,
        Err(MessageError::Invalid { .. })
    ));
    assert!(store.send_batch(&[], 7).await.expect("empty").is_empty());
    let stranger = [new_message(gid, "stranger", "s1")];
    assert!(matches!(
        store.send_batch(&stranger, 7).await,
        Err(ref e) if e.reason() == Reason::NotAMember
    ));
}

fn sent(outcome: SendOutcome) -> (i64, i64) {
    match outcome {
        SendOutcome::Sent(m) => (m.msgid.stored(), m.seq.stored()),
        SendOutcome::Duplicate(m) => {
            panic!("expected a new message, got duplicate of seq {}", m.seq)
        }
    }
}

async fn seq_is_dense_and_a_retry_returns_the_original<S: MessageStore>(store: S) {
    let gid = group_of(&store, "A", &["uid1", "uid2", "uid3"]).await;
    let first = sent(send(&store, gid, "A", "m1").await);
    let second = sent(send(&store, gid, "A", "m2").await);
    assert_eq!((first.1, second.1), (1, 2));
    match send(&store, gid, "A", "m1").await {
        SendOutcome::Duplicate(original) => {
            assert_eq!((original.msgid.stored(), original.seq.stored()), first)
        }
        other => panic!("expected the original, got {other:?}"),
    }
    // The retry did not consume a seq: the next message follows without a gap.
    assert_eq!(sent(send(&store, gid, "uid1", "m1").await).1, 3);
    let messages = store.messages_after(gid, 0, 100).await.expect("sync");
    assert_eq!(
        messages.iter().map(|m| m.seq.stored()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(messages[0].recipient_count, 3);
    assert_eq!(messages[0].content, b"hello");
}

async fn strangers_are_refused_and_unknown_groups_are_not_found<S: MessageStore>(store: S) {
    let gid = group_of(&store, "A", &["uid1"]).await;
    let message = NewMessage {
        gid,
        sender: uid("stranger"),
        client_msg_id: "x".into(),
        content: b"x".to_vec(),
        need_receipt: false,
        trace_context: String::new(),
    };
    assert!(matches!(
        send_one(&store, &message, 1).await,
        Err(ref e) if e.reason() == Reason::NotAMember
    ));
    assert!(matches!(
        store.access(gid, &uid("stranger")).await,
        Err(ref e) if e.reason() == Reason::NotAMember
    ));
    let missing = Gid::parse(999_999, "gid").expect("gid");
    assert!(matches!(
        store.access(missing, &uid("A")).await,
        Err(ref e) if e.reason() == Reason::GroupNotFound
    ));
    let message = NewMessage {
        gid: missing,
        ..message
    };
    assert!(matches!(
        send_one(&store, &message, 1).await,
        Err(ref e) if e.reason() == Reason::GroupNotFound
    ));
    // Nothing was written by the refused sends.
    assert_eq!(
        store.access(gid, &uid("A")).await.expect("access").last_seq,
        0
    );
}

async fn membership_changes_keep_history_and_join_points<S: MessageStore>(store: S) {
    let gid = group_of(&store, "A", &["uid1"]).await;
    sent(send(&store, gid, "A", "before-join").await);
    let (a, b, c) = (uid("A"), uid("uid1"), uid("uid2"));
    let add = |actor, uids| change(gid, actor, uids, 10);
    let (added, joined) = store
        .add_members(add(&a, &[b.clone(), c.clone()]))
        .await
        .expect("add");
    assert_eq!((added, joined), (vec!["uid2".to_string()], 1));
    let stranger = [uid("uid9")];
    assert!(matches!(
        store.add_members(change(gid, &b, &stranger, 10)).await,
        Err(ref e) if e.reason() == Reason::NotAnAdmin
    ));
    let access = store.access(gid, &c).await.expect("uid2 is a member");
    assert_eq!(access.joined_seq, 1);
    let page = store.list_members(gid, None, 2).await.expect("list");
    assert_eq!(
        page.iter().map(|m| m.uid.as_str()).collect::<Vec<_>>(),
        vec!["A", "uid1"]
    );
    let rest = store
        .list_members(gid, Some("uid1"), 2)
        .await
        .expect("list");
    assert_eq!(
        rest.iter().map(|m| m.uid.as_str()).collect::<Vec<_>>(),
        vec!["uid2"]
    );

    let removed = store
        .remove_members(change(gid, &c, std::slice::from_ref(&c), 10))
        .await
        .expect("leave");
    assert_eq!(removed, vec!["uid2".to_string()]);
    assert!(matches!(
        store.access(gid, &c).await,
        Err(ref e) if e.reason() == Reason::NotAMember
    ));
    let groups = store.list_groups(&c, 0, 10).await.expect("groups");
    assert!(groups.is_empty());
    let groups = store.list_groups(&a, 0, 10).await.expect("groups");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].member_count, 2);
    let newcomer = [uid("uid5")];
    assert!(matches!(
        store.add_members(change(gid, &a, &newcomer, 2)).await,
        Err(ref e) if e.reason() == Reason::GroupFull
    ));
}

async fn direct_conversations_are_unique_and_closed<S: MessageStore>(store: S) {
    let first =
        NewGroup::new(GroupKind::Direct, String::new(), uid("A"), &["B".into()]).expect("direct");
    let again =
        NewGroup::new(GroupKind::Direct, String::new(), uid("B"), &["A".into()]).expect("direct");
    let (created, existing) = store.create_group(&first, 1).await.expect("create");
    assert!(!existing);
    let (found, existing) = store.create_group(&again, 2).await.expect("create again");
    assert!(existing);
    assert_eq!(found.gid, created.gid);
    let gid = created.gid;
    let change = MembershipChange {
        gid,
        actor: &uid("A"),
        uids: &[uid("C")],
        max_members: 10,
        now_ms: 3,
    };
    assert!(matches!(
        store.add_members(change).await,
        Err(ref e) if e.reason() == Reason::DirectConversation
    ));
}

/// A group's receipt policy is set by its admins (either member of a direct
/// chat) and holds from the next message on: each message keeps the policy
/// it was sent under, wherever it is read back.
async fn each_message_keeps_the_receipt_policy_it_was_sent_under<S: MessageStore>(store: S) {
    let gid = group_of(&store, "A", &["B"]).await;
    let policy_of = |outcome: SendOutcome| match outcome {
        SendOutcome::Sent(m) | SendOutcome::Duplicate(m) => (m.seq.stored(), m.receipt_policy),
    };
    assert_eq!(
        policy_of(send(&store, gid, "A", "m1").await),
        (1, 1),
        "FULL by default"
    );
    assert!(matches!(
        store
            .set_receipt_policy(gid, &uid("B"), ReceiptPolicy::Off)
            .await,
        Err(ref e) if e.reason() == Reason::NotAnAdmin
    ));
    assert!(matches!(
        store
            .set_receipt_policy(gid, &uid("stranger"), ReceiptPolicy::Off)
            .await,
        Err(ref e) if e.reason() == Reason::NotAMember
    ));
    let last = store
        .set_receipt_policy(gid, &uid("A"), ReceiptPolicy::Off)
        .await
        .expect("an admin sets it");
    assert_eq!(last, 1, "in force from seq 2");
    assert_eq!(policy_of(send(&store, gid, "B", "m2").await), (2, 3));
    store
        .set_receipt_policy(gid, &uid("A"), ReceiptPolicy::Counts)
        .await
        .expect("again");
    assert_eq!(policy_of(send(&store, gid, "A", "m3").await), (3, 2));
    // A retry of m2 is the original, sent under OFF.
    assert_eq!(policy_of(send(&store, gid, "B", "m2").await), (2, 3));
    let stored: Vec<(i64, i64)> = store
        .messages_after(gid, 0, 10)
        .await
        .expect("sync")
        .iter()
        .map(|m| (m.seq.stored(), m.receipt_policy))
        .collect();
    assert_eq!(stored, [(1, 1), (2, 3), (3, 2)]);
    let listed = store.list_groups(&uid("B"), 0, 10).await.expect("groups");
    assert_eq!(listed[0].receipt_policy, 2);

    let direct =
        NewGroup::new(GroupKind::Direct, String::new(), uid("A"), &["B".into()]).expect("direct");
    let (direct, _) = store.create_group(&direct, 1).await.expect("create");
    let direct = direct.gid;
    store
        .set_receipt_policy(direct, &uid("B"), ReceiptPolicy::Off)
        .await
        .expect("either member of a direct chat");
    assert!(matches!(
        store
            .set_receipt_policy(Gid::try_from(1i64 << 40).expect("gid"), &uid("A"), ReceiptPolicy::Off)
            .await,
        Err(ref e) if e.reason() == Reason::GroupNotFound
    ));
}

async fn reads_start_after_the_join_point<S: MessageStore>(store: S) {
    let gid = group_of(&store, "A", &[]).await;
    let (early, _) = sent(send(&store, gid, "A", "early").await);
    let change = MembershipChange {
        gid,
        actor: &uid("A"),
        uids: &[uid("late")],
        max_members: 10,
        now_ms: 3,
    };
    store.add_members(change).await.expect("add");
    let (later, _) = sent(send(&store, gid, "A", "later").await);
    let access = store.access(gid, &uid("late")).await.expect("member");
    let visible = store
        .messages_by_id(gid, &[early, later], access.joined_seq)
        .await
        .expect("get");
    assert_eq!(
        visible.iter().map(|m| m.msgid.stored()).collect::<Vec<_>>(),
        vec![later]
    );
    let synced = store
        .messages_after(gid, access.joined_seq, 10)
        .await
        .expect("sync");
    assert_eq!(synced.len(), 1);
}

/// A group's latest message goes to current members who joined before it:
/// not to one who joined after it, nor to one who left, nor to a stranger.
async fn the_latest_message_is_listed_for_members_who_may_see_it<S: MessageStore>(store: S) {
    let gid = group_of(&store, "A", &["B", "C"]).await;
    let quiet = group_of(&store, "A", &["B"]).await;
    send(&store, gid, "A", "first").await;
    let (latest, _) = sent(send(&store, gid, "A", "second").await);
    let late = [uid("late")];
    store
        .add_members(change(gid, &uid("A"), &late, 10))
        .await
        .expect("add");
    let gone = [uid("C")];
    store
        .remove_members(change(gid, &uid("A"), &gone, 10))
        .await
        .expect("remove");
    let gids = [gid.stored(), quiet.stored(), 1 << 40];
    let listed = |who: &'static str| {
        let store = store.clone();
        async move {
            let messages = store.last_messages(&uid(who), &gids).await.expect("last");
            messages
                .iter()
                .map(|m| (m.gid.stored(), m.msgid.stored(), m.seq.stored()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("B").await, [(gid.stored(), latest, 2)]);
    assert_eq!(listed("A").await, [(gid.stored(), latest, 2)]);
    for nobody in ["late", "C", "stranger"] {
        assert_eq!(listed(nobody).await, [], "{nobody}");
    }
    assert!(
        store
            .last_messages(&uid("B"), &[])
            .await
            .expect("none")
            .is_empty()
    );
}

async fn the_outbox_holds_every_change_in_order_until_done<S: MessageStore>(store: S) {
    let gid = group_of(&store, "A", &["uid1", "uid2"]).await;
    sent(send(&store, gid, "A", "m1").await);
    let batch = store.outbox_batch(Lane::ALL, 100).await.expect("outbox");
    let stats = store.outbox_stats().await.expect("stats");
    assert_eq!((stats.pending, stats.dead), (4, 0));
    assert!(stats.oldest_ms.is_some_and(|at| at > 0));
    let kinds: Vec<i64> = batch.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            OUTBOX_MEMBERSHIP,
            OUTBOX_MEMBERSHIP,
            OUTBOX_MEMBERSHIP,
            OUTBOX_MESSAGE
        ]
    );
    assert!(batch.windows(2).all(|w| w[0].id < w[1].id));
    let states = store
        .member_states(gid.stored(), &["A".into(), "uid1".into()])
        .await
        .expect("states");
    assert_eq!(states.len(), 2);
    store
        .outbox_failed(batch[0].id, "receipt service: unavailable", false)
        .await
        .expect("failed");
    let again = store.outbox_batch(Lane::ALL, 100).await.expect("outbox");
    assert_eq!(again[0].attempts, 1);
    store
        .outbox_failed(batch[0].id, "refused", true)
        .await
        .expect("dead");
    let ids: Vec<i64> = batch.iter().skip(1).map(|e| e.id).collect();
    store.outbox_done(&ids).await.expect("done");
    assert!(
        store
            .outbox_batch(Lane::ALL, 100)
            .await
            .expect("outbox")
            .is_empty()
    );
    let stats = store.outbox_stats().await.expect("stats");
    assert_eq!(
        stats,
        OutboxStats {
            pending: 0,
            dead: 1,
            oldest_ms: None
        },
        "the dead entry is counted apart"
    );
}

async fn the_outbox_reads_each_message_with_its_audience<S: MessageStore>(store: S) {
    let gid = group_of(&store, "A", &["uid1", "uid2"]).await;
    sent(send(&store, gid, "A", "m1").await);
    // uid1 leaves after m1 and uid4 joins: m2's audience has changed.
    let a = uid("A");
    let uid1 = uid("uid1");
    store
        .remove_members(change(gid, &uid1, std::slice::from_ref(&uid1), 10))
        .await
        .expect("leave");
    store
        .add_members(change(gid, &a, &[uid("uid4")], 10))
        .await
        .expect("join");
    sent(send(&store, gid, "A", "m2").await);
    let committed = store
        .committed(gid.stored(), &[2, 1, 99])
        .await
        .expect("committed")
        .expect("group exists");
    assert_eq!(committed.group_name, "Design");
    let seqs: Vec<i64> = committed.messages.iter().map(|m| m.seq.stored()).collect();
    assert_eq!(seqs, vec![1, 2], "seq 99 does not exist");
    let first = committed.message(1).expect("m1");
    assert_eq!((first.recipient_count, first.need_receipt), (2, true));
    assert!(first.content.is_empty(), "the outbox does not read content");
    assert!(committed.message(99).is_none());
    assert_eq!(committed.audience(1).members, vec!["A", "uid1", "uid2"]);
    assert_eq!(committed.audience(2).members, vec!["A", "uid2", "uid4"]);
    assert!(
        store
            .committed(gid.stored() + 1000, &[1])
            .await
            .expect("committed")
            .is_none()
    );
}

/// Someone added again after leaving keeps the stay that ended: the audience
/// of a message of each stay, and who was a member at its seq, include them;
/// a message of the gap does not; their past stays are listed for the
/// receipt service, and a stay in which nothing was sent is not kept.
async fn a_member_who_leaves_and_comes_back_keeps_each_stay<S: MessageStore>(store: S) {
    let gid = group_of(&store, "A", &["uid1", "uid2"]).await;
    let a = uid("A");
    let uid1 = uid("uid1");
    sent(send(&store, gid, "A", "m1").await);
    let leave = || change(gid, &uid1, std::slice::from_ref(&uid1), 10);
    store.remove_members(leave()).await.expect("leave");
    sent(send(&store, gid, "A", "m2").await);
    store
        .add_members(change(gid, &a, std::slice::from_ref(&uid1), 10))
        .await
        .expect("back");
    // Out and in again with nothing sent in between: no stay to keep.
    store.remove_members(leave()).await.expect("leave again");
    store
        .add_members(change(gid, &a, std::slice::from_ref(&uid1), 10))
        .await
        .expect("back again");
    sent(send(&store, gid, "A", "m3").await);
    let committed = store
        .committed(gid.stored(), &[1, 2, 3])
        .await
        .expect("committed")
        .expect("group exists");
    assert_eq!(committed.audience(1).members, vec!["A", "uid1", "uid2"]);
    assert_eq!(committed.audience(2).members, vec!["A", "uid2"]);
    assert_eq!(committed.audience(3).members, vec!["A", "uid1", "uid2"]);
    for (seq, members) in [(1, vec!["A", "uid1", "uid2"]), (2, vec!["A", "uid2"])] {
        assert_eq!(
            store.members_at(gid.stored(), seq).await.expect("members"),
            members,
            "seq {seq}"
        );
    }
    let past = store
        .past_stays(gid.stored(), &["uid1".to_owned(), "uid2".to_owned()])
        .await
        .expect("stays");
    let stays: Vec<(String, i64, Option<i64>)> = past
        .into_iter()
        .map(|s| (s.uid, s.joined_seq.stored(), s.left_seq))
        .collect();
    assert_eq!(stays, vec![("uid1".to_owned(), 0, Some(1))]);
}

async fn concurrent_senders_to_one_group_get_dense_seqs_and_their_own_ids<S: MessageStore>(
    store: S,
) {
    let senders = ["A", "uid1", "uid2", "uid3"];
    let gid = group_of(&store, "A", &senders[1..]).await;
    // Forty sends at once, ten per sender, and a batch of three in between:
    // every seq from 1 to 43 once, and each message's id is its own.
    let singles = (0..40).map(|i| {
        let store = store.clone();
        async move { vec![send(&store, gid, senders[i % 4], &format!("c{i}")).await] }
    });
    let batch = {
        let store = store.clone();
        async move {
            let run: Vec<NewMessage> = (0..3)
                .map(|i| new_message(gid, "uid2", &format!("b{i}")))
                .collect();
            store.send_batch(&run, 2).await.expect("batch")
        }
    };
    let mut outcomes: Vec<SendOutcome> = futures::future::join_all(singles)
        .await
        .into_iter()
        .flatten()
        .collect();
    outcomes.extend(batch.await);
    let mut seqs: Vec<i64> = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for outcome in outcomes {
        let (msgid, seq) = sent(outcome);
        seqs.push(seq);
        assert!(ids.insert(msgid), "msgid {msgid} given twice");
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=43).collect::<Vec<_>>());
    let stored = store.messages_after(gid, 0, 100).await.expect("sync");
    let by_seq: Vec<(i64, i64)> = stored
        .iter()
        .map(|m| (m.seq.stored(), m.msgid.stored()))
        .collect();
    assert_eq!(by_seq.len(), 43);
    assert!(by_seq.iter().all(|(_, msgid)| ids.contains(msgid)));
}

async fn each_group_s_outbox_entries_are_in_one_lane<S: MessageStore>(store: S) {
    let mut gids = Vec::new();
    for _ in 0..5 {
        let gid = group_of(&store, "A", &["uid1"]).await;
        sent(send(&store, gid, "A", "m1").await);
        gids.push(gid.stored());
    }
    let all = store.outbox_batch(Lane::ALL, 100).await.expect("outbox");
    let mut dealt = Vec::new();
    for index in 0..3 {
        let lane = Lane { index, count: 3 };
        let entries = store.outbox_batch(lane, 100).await.expect("lane");
        assert!(entries.windows(2).all(|w| w[0].id < w[1].id), "in id order");
        for entry in &entries {
            assert_eq!(entry.gid.stored() % 3, i64::from(index), "{entry:?}");
        }
        dealt.extend(entries);
    }
    dealt.sort_by_key(|e| e.id);
    assert_eq!(dealt, all, "every entry in exactly one lane");
    let per_group = |gid: i64| all.iter().filter(|e| e.gid.stored() == gid).count();
    assert!(gids.iter().all(|&gid| per_group(gid) == 3), "{all:?}");
    let limited = store
        .outbox_batch(Lane { index: 0, count: 3 }, 1)
        .await
        .expect("lane");
    assert_eq!(limited.len(), 1);
}

parley_testkit::contract_suite!(
    MySqlMessageStore,
    SqliteMessageStore,
    MessageStore;
    seq_is_dense_and_a_retry_returns_the_original,
    strangers_are_refused_and_unknown_groups_are_not_found,
    membership_changes_keep_history_and_join_points,
    direct_conversations_are_unique_and_closed,
    reads_start_after_the_join_point,
    each_message_keeps_the_receipt_policy_it_was_sent_under,
    the_latest_message_is_listed_for_members_who_may_see_it,
    the_outbox_holds_every_change_in_order_until_done,
    the_outbox_reads_each_message_with_its_audience,
    a_member_who_leaves_and_comes_back_keeps_each_stay,
    a_batch_is_stored_in_order_with_dense_seqs_and_retries_are_originals,
    each_group_s_outbox_entries_are_in_one_lane,
    concurrent_senders_to_one_group_get_dense_seqs_and_their_own_ids,
);

/// A stored row that holds no valid id or seq (written by hand, or by a bug)
/// is an error when it is read, reported as INTERNAL, never a message with
/// seq 0 handed to a client.
async fn a_row_out_of_range_is_an_error_not_a_zero<S: MessageStore>(
    store: S,
    corrupt: impl std::future::Future<Output = ()>,
) {
    let gid = group_of(&store, "A", &["B"]).await;
    sent(send(&store, gid, "A", "m1").await);
    corrupt.await;
    let read = store.messages_after(gid, -10, 10).await;
    let Err(failed) = read else {
        panic!("a row with seq -1 was read as {read:?}");
    };
    assert_eq!(failed.reason(), Reason::Internal, "{failed:?}");
    let status = tonic::Status::from(failed);
    assert_eq!(status.code(), tonic::Code::Internal);
}

const CORRUPT_SEQ: &str = "UPDATE group_msgs SET seq = -1";

/// The case on one backend: its store, and a pool of the test's own on the
/// same database, which writes the bad row behind the store's back.
macro_rules! out_of_range_case {
    ($name:ident, $db:expr, $connect:expr, $pool:ty) => {
        #[tokio::test]
        async fn $name() {
            let db = $db;
            let store = ($connect)(db.url()).await.expect("connect");
            store.migrate().await.expect("migrate");
            let raw = <$pool>::connect(db.url()).await.expect("raw pool");
            let corrupt = async {
                let written = sqlx::query(CORRUPT_SEQ).execute(&raw).await;
                written.map(drop).expect("corrupt")
            };
            a_row_out_of_range_is_an_error_not_a_zero(store, corrupt).await;
        }
    };
}

out_of_range_case!(
    a_row_out_of_range_is_an_error_on_mariadb,
    parley_testkit::TestDb::mysql().await,
    |url| MySqlMessageStore::connect(url, 2),
    sqlx::MySqlPool
);
out_of_range_case!(
    a_row_out_of_range_is_an_error_on_sqlite,
    parley_testkit::TestDb::sqlite(),
    SqliteMessageStore::connect,
    sqlx::SqlitePool
);

/// Over a MariaDB that takes only TLS, a URL with `ssl-mode=VERIFY_IDENTITY`
/// and the server's CA migrates the store and keeps a message; a URL without
/// TLS, or one trusting another CA, does not connect.
#[tokio::test]
async fn a_mariadb_that_takes_only_tls_is_reached_with_ssl_mode() {
    let server = parley_testkit::OwnMariaDb::start_tls().await;
    let verified = |ca: &std::path::Path| {
        server.url(&format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", ca.display()))
    };
    let store = MySqlMessageStore::connect(&verified(&server.ca_file()), 2)
        .await
        .expect("connect over TLS");
    store.migrate().await.expect("migrate over TLS");
    let gid = group_of(&store, "A", &["uid1"]).await;
    assert_eq!(sent(send(&store, gid, "A", "m1").await).1, 1);

    let plain = MySqlMessageStore::connect(&server.url("ssl-mode=DISABLED"), 1).await;
    assert!(plain.is_err(), "a connection without TLS was taken");
    let other = tempfile::tempdir().expect("temporary directory");
    parley_testkit::write_certificates(other.path());
    let forged = MySqlMessageStore::connect(&verified(&other.path().join("ca.pem")), 1).await;
    assert!(forged.is_err(), "a server signed by another CA was trusted");
}
