//! The notification store's contract, on MariaDB and SQLite: the queue and its
//! due times, claims and completion, devices, mutes and dead letters.

use parley_notification::{
    push::{Device, Platform},
    store::{
        DeadLetter, Done, MySqlQueueStore, OfflineBatch, Pending, QueueStore, Registered, Retry,
        SqliteQueueStore,
    },
};

/// Message `seq` of group 7 for `recipients`, their pushes due at 1,000.
fn batch(seq: i64, recipients: &[&str]) -> OfflineBatch {
    batch_due(seq, recipients, 1_000)
}

fn batch_due(seq: i64, recipients: &[&str], due_at_ms: i64) -> OfflineBatch {
    OfflineBatch {
        gid: 7,
        msgid: 100 + seq,
        seq,
        sender_uid: "A".into(),
        group_name: "Design".into(),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        due_at_ms,
    }
}

/// Gives each of `uids` a device: only users with a push token are queued.
async fn with_devices<S: QueueStore>(store: &S, uids: &[&str]) {
    for uid in uids {
        store
            .register_device(&device(uid, "phone", "token"), 20, 1)
            .await
            .expect("register");
    }
}

async fn batches_are_stored_once_per_recipient<S: QueueStore>(store: S) {
    with_devices(&store, &["uid3", "uid4"]).await;
    assert_eq!(
        store
            .enqueue(&[batch(1, &["uid3", "uid4"])], 10)
            .await
            .expect("enqueue"),
        2
    );
    assert_eq!(
        store
            .enqueue(&[batch(1, &["uid3", "uid4"])], 11)
            .await
            .expect("again"),
        0,
        "a re-delivered batch queues nothing"
    );
    assert_eq!(
        store
            .enqueue(&[batch(2, &["uid3"])], 12)
            .await
            .expect("enqueue"),
        1
    );
    assert_eq!(
        store.queued_for("uid3").await.expect("read"),
        vec![(7, 1), (7, 2)]
    );
    assert_eq!(store.queued_for("uid4").await.expect("read"), vec![(7, 1)]);
    assert!(store.queued_for("uid5").await.expect("read").is_empty());
    assert_eq!(
        store
            .enqueue(&[batch(3, &["uid5", "uid3"])], 13)
            .await
            .expect("enqueue"),
        1,
        "a recipient without a push token is not queued"
    );
    assert!(store.queued_for("uid5").await.expect("read").is_empty());
    assert!(
        store
            .due(i64::MAX, 10)
            .await
            .expect("due")
            .iter()
            .all(|p| p.uid != "uid5")
    );
}

async fn large_batches_are_stored_whole<S: QueueStore>(store: S) {
    let many: Vec<String> = (0..1_234).map(|i| format!("m{i:05}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    with_devices(&store, &refs).await;
    assert_eq!(
        store
            .enqueue(&[batch(3, &refs)], 10)
            .await
            .expect("enqueue"),
        1_234
    );
    assert_eq!(
        store.queued_for("m01233").await.expect("read"),
        vec![(7, 3)]
    );
}

async fn due_pairs_are_claimed_once_and_completed<S: QueueStore>(store: S) {
    with_devices(&store, &["u1", "u2"]).await;
    store
        .enqueue(&[batch_due(1, &["u1", "u2"], 100)], 10)
        .await
        .expect("enqueue");
    // A later message keeps the first due time: the window runs from the first.
    store
        .enqueue(&[batch_due(2, &["u1"], 140)], 50)
        .await
        .expect("enqueue");
    assert!(
        store.due(99, 10).await.expect("due").is_empty(),
        "not due yet"
    );
    let due = store.due(100, 10).await.expect("due");
    assert_eq!(due.len(), 2);
    let u1 = due.iter().find(|p| p.uid == "u1").expect("u1 due").clone();
    assert_eq!(u1, fresh("u1", 100));
    assert!(claim_one(&store, &u1, 5_000).await);
    assert!(
        !claim_one(&store, &u1, 6_000).await,
        "a pair is claimed once"
    );
    assert!(
        store
            .due(200, 10)
            .await
            .expect("due")
            .iter()
            .all(|p| p.uid != "u1"),
        "a claimed pair is not due until its lease ends"
    );
    let queued = store.queued("u1", 7).await.expect("queued");
    assert_eq!(queued.iter().map(|q| q.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(queued[1].msgid, 102);
    assert_eq!(queued[1].group_name, "Design");

    // A message queued while the push is being sent gets its own push later.
    store
        .enqueue(&[batch_due(3, &["u1"], 400)], 300)
        .await
        .expect("enqueue");
    complete_one(&store, "u1", 2, 900).await;
    assert_eq!(store.queued_for("u1").await.expect("read"), vec![(7, 3)]);
    assert_eq!(
        store
            .due(900, 10)
            .await
            .expect("due")
            .iter()
            .find(|p| p.uid == "u1"),
        Some(&fresh("u1", 900))
    );
    complete_one(&store, "u1", 3, 1_000).await;
    assert!(store.queued("u1", 7).await.expect("queued").is_empty());
    assert!(
        store
            .due(i64::MAX, 10)
            .await
            .expect("due")
            .iter()
            .all(|p| p.uid != "u1")
    );

    // Released pairs are due again at once.
    let u2 = store.due(100, 10).await.expect("due").remove(0);
    assert!(claim_one(&store, &u2, 5_000).await);
    store.release("u2", 7, 150).await.expect("release");
    assert_eq!(store.due(150, 10).await.expect("due")[0].uid, "u2");
    assert_eq!(store.queue_stats().await.expect("stats"), (1, Some(10)));

    // A pair a provider asked to retry is put back with its due time, its
    // attempts and the devices still owed, its messages kept; completing it
    // clears them for the next push.
    let u2 = store.due(150, 10).await.expect("due").remove(0);
    assert!(claim_one(&store, &u2, 5_000).await);
    let retry = Retry {
        uid: "u2".into(),
        gid: 7,
        due_at_ms: 1_150,
        attempts: 1,
        devices: "phone|tablet".into(),
        seq: 1,
    };
    store
        .postpone(std::slice::from_ref(&retry))
        .await
        .expect("postpone");
    assert!(
        store.due(1_149, 10).await.expect("due").is_empty(),
        "not before the retry"
    );
    let again = store.due(1_150, 10).await.expect("due").remove(0);
    assert_eq!(
        again,
        Pending {
            attempts: 1,
            retry_devices: Some("phone|tablet".into()),
            retry_seq: 1,
            ..fresh("u2", 1_150)
        }
    );
    assert_eq!(store.queued("u2", 7).await.expect("queued").len(), 1);
    assert!(claim_one(&store, &again, 9_000).await);
    store
        .enqueue(&[batch_due(4, &["u2"], 1_200)], 1_200)
        .await
        .expect("enqueue");
    complete_one(&store, "u2", 1, 2_000).await;
    assert_eq!(
        store.due(2_000, 10).await.expect("due"),
        vec![fresh("u2", 2_000)],
        "the next push starts with no attempts"
    );
}

/// Claims one pair; whether this claim got it.
async fn claim_one<S: QueueStore>(store: &S, pending: &Pending, lease_until_ms: i64) -> bool {
    let claimed = store
        .claim(std::slice::from_ref(pending), lease_until_ms)
        .await
        .expect("claim");
    claimed.len() == 1
}

/// Completes `uid`'s pair in group 7 through `seq`.
async fn complete_one<S: QueueStore>(store: &S, uid: &str, seq: i64, next_due_at_ms: i64) {
    let done = Done {
        uid: uid.into(),
        gid: 7,
        through_seq: seq,
    };
    store
        .complete(&[done], next_due_at_ms)
        .await
        .expect("complete");
}

/// A batch of pairs: claimed together (those another worker took first left
/// out), read together (queued messages, mutes, devices of every user), and
/// completed in one call (pairs with later messages due again, the rest gone).
async fn pairs_are_claimed_read_and_completed_in_batches<S: QueueStore>(store: S) {
    let users = ["b1", "b2", "b3", "b4"];
    with_devices(&store, &users).await;
    store
        .enqueue(
            &[batch_due(1, &users, 100), batch_due(2, &users[..2], 100)],
            10,
        )
        .await
        .expect("enqueue");
    store.set_mute("b3", 7, -1).await.expect("mute");
    let due = store.due(100, 10).await.expect("due");
    assert_eq!(due.len(), 4);
    // Another worker takes b4's pair first.
    let b4 = due.iter().find(|p| p.uid == "b4").expect("b4 due").clone();
    assert!(claim_one(&store, &b4, 7_000).await);
    let mut claimed = store.claim(&due, 5_000).await.expect("claim");
    claimed.sort_by(|a, b| a.uid.cmp(&b.uid));
    let names: Vec<&str> = claimed.iter().map(|p| p.uid.as_str()).collect();
    assert_eq!(names, ["b1", "b2", "b3"], "b4 was taken first");
    let uids: Vec<String> = names.iter().map(|&u| u.to_owned()).collect();
    let queued: Vec<(String, i64)> = store
        .queued_of(&uids)
        .await
        .expect("queued")
        .into_iter()
        .map(|row| (row.uid, row.queued.seq))
        .collect();
    assert_eq!(
        queued,
        [("b1", 1), ("b1", 2), ("b2", 1), ("b2", 2), ("b3", 1)].map(|(u, s)| (u.to_owned(), s))
    );
    assert_eq!(
        store.mutes_of(&uids).await.expect("mutes"),
        vec![("b3".to_owned(), 7, -1)]
    );
    let owners: Vec<String> = store
        .devices_of(&uids)
        .await
        .expect("devices")
        .into_iter()
        .map(|d| d.uid)
        .collect();
    assert_eq!(owners, uids, "one device each, in user order");
    // b1's push covered seq 1 only (seq 2 came meanwhile); b2 and b3 are done.
    let done = [("b1", 1), ("b2", 2), ("b3", 1)].map(|(uid, through_seq)| Done {
        uid: uid.into(),
        gid: 7,
        through_seq,
    });
    store.complete(&done, 900).await.expect("complete");
    assert_eq!(store.queued_for("b1").await.expect("read"), vec![(7, 2)]);
    assert!(store.queued_for("b2").await.expect("read").is_empty());
    assert!(store.queued_for("b3").await.expect("read").is_empty());
    let due: Vec<String> = store
        .due(i64::MAX, 10)
        .await
        .expect("due")
        .into_iter()
        .map(|p| p.uid)
        .collect();
    assert_eq!(due, ["b1", "b4"], "b1 due again, b4 still with its worker");
}

/// A pair in group 7 due at `due_at_ms`, never attempted.
fn fresh(uid: &str, due_at_ms: i64) -> Pending {
    Pending {
        uid: uid.into(),
        gid: 7,
        due_at_ms,
        attempts: 0,
        retry_devices: None,
        retry_seq: 0,
    }
}

fn device(uid: &str, id: &str, token: &str) -> Device {
    Device {
        uid: uid.into(),
        device_id: id.into(),
        platform: Platform::Fcm,
        token: token.into(),
        app_id: "parley-test".into(),
        locale: "en-GB".into(),
    }
}

async fn devices_are_registered_replaced_and_pruned<S: QueueStore>(store: S) {
    let register = |d: Device, max: usize, at: i64| {
        let store = store.clone();
        async move { store.register_device(&d, max, at).await.expect("register") }
    };
    assert_eq!(
        register(device("u1", "phone", "t1"), 2, 1).await,
        Registered::New
    );
    assert_eq!(
        register(device("u1", "tablet", "t2"), 2, 1).await,
        Registered::New
    );
    assert_eq!(
        register(device("u1", "watch", "t4"), 2, 1).await,
        Registered::Full
    );
    // At the cap, a device that has a token may still replace it.
    assert_eq!(
        register(device("u1", "phone", "t3"), 2, 2).await,
        Registered::Replaced
    );
    assert_eq!(
        store.devices("u1").await.expect("devices"),
        vec![device("u1", "phone", "t3"), device("u1", "tablet", "t2")]
    );
    // A token rejected after the device registered a new one stays.
    assert!(
        !store
            .prune_token(&device("u1", "phone", "t1"))
            .await
            .expect("prune")
    );
    assert!(
        store
            .prune_token(&device("u1", "tablet", "t2"))
            .await
            .expect("prune")
    );
    assert!(
        store
            .unregister_device("u1", "phone")
            .await
            .expect("unregister")
    );
    assert!(!store.unregister_device("u1", "phone").await.expect("again"));
    assert!(store.devices("u1").await.expect("devices").is_empty());
}

async fn mutes_are_set_and_cleared<S: QueueStore>(store: S) {
    assert_eq!(store.muted_until("u1", 7).await.expect("read"), None);
    store.set_mute("u1", 7, -1).await.expect("mute");
    assert_eq!(store.muted_until("u1", 7).await.expect("read"), Some(-1));
    store.set_mute("u1", 7, 5_000).await.expect("mute");
    assert_eq!(store.muted_until("u1", 7).await.expect("read"), Some(5_000));
    assert_eq!(store.muted_until("u1", 8).await.expect("read"), None);
    store.set_mute("u1", 7, 0).await.expect("unmute");
    assert_eq!(store.muted_until("u1", 7).await.expect("read"), None);
}

async fn dead_letters_are_kept<S: QueueStore>(store: S) {
    let letter = DeadLetter {
        uid: "u1".into(),
        gid: 7,
        last_seq: 3,
        device_id: "phone".into(),
        platform: Platform::Fcm.code(),
        messages: 3,
        attempts: 5,
        reason: "FCM HTTP 500 INTERNAL; gave up after 5 attempts".into(),
        failed_at_ms: 42,
    };
    store.dead_letter(&letter).await.expect("store");
    assert_eq!(store.dead_letters("u1").await.expect("read"), vec![letter]);
    assert!(store.dead_letters("u2").await.expect("read").is_empty());
}

/// Registrations racing each other cannot pass the cap together: with one
/// place left, thirty-two at once leave exactly one more device.
async fn concurrent_registrations_respect_the_device_cap<S: QueueStore>(store: S) {
    for i in 0..3 {
        let d = device("u1", &format!("old-{i}"), "t");
        assert_eq!(
            store.register_device(&d, 4, 1).await.expect("register"),
            Registered::New
        );
    }
    let racing = (0..32).map(|i| {
        let store = store.clone();
        async move {
            store
                .register_device(&device("u1", &format!("new-{i}"), "t"), 4, 2)
                .await
        }
    });
    let outcomes = futures::future::join_all(racing).await;
    let new = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Registered::New)))
        .count();
    assert_eq!(new, 1, "{outcomes:?}");
    assert_eq!(store.devices("u1").await.expect("devices").len(), 3 + new);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(Registered::New | Registered::Full) | Err(_))),
        "{outcomes:?}"
    );
}

/// A burst of first registrations by different users all succeed: the cap's
/// lock holds one user's rows, never a range others insert into.
async fn a_burst_of_registrations_by_different_users_all_succeed<S: QueueStore>(store: S) {
    let burst = (0..64).map(|i| {
        let store = store.clone();
        async move {
            store
                .register_device(&device(&format!("user-{i:02}"), "phone", "t"), 20, 1)
                .await
        }
    });
    for outcome in futures::future::join_all(burst).await {
        assert!(matches!(outcome, Ok(Registered::New)), "{outcome:?}");
    }
}

async fn a_batch_of_messages_is_queued_as_each_would_be_alone<S: QueueStore>(store: S) {
    with_devices(&store, &["u1", "u2", "u3"]).await;
    // In group 7 the messages come one by one, in group 8 as one batch: a
    // user with no token, a message listed twice and windows that differ.
    let messages = |gid: i64| -> Vec<OfflineBatch> {
        [
            batch_due(1, &["u1", "u2", "no-token"], 100),
            batch_due(2, &["u1"], 150),
            batch_due(3, &["u2", "u3"], 200),
            batch_due(2, &["u1"], 150),
        ]
        .into_iter()
        .map(|batch| OfflineBatch { gid, ..batch })
        .collect()
    };
    let mut alone = 0;
    for message in messages(7) {
        alone += store.enqueue(&[message], 10).await.expect("enqueue");
    }
    let together = store.enqueue(&messages(8), 10).await.expect("enqueue");
    assert_eq!((alone, together), (5, 5));
    for uid in ["u1", "u2", "u3", "no-token"] {
        let one_by_one = store.queued(uid, 7).await.expect("queued");
        let batched = store.queued(uid, 8).await.expect("queued");
        assert_eq!(one_by_one, batched, "{uid}");
    }
    let due_pairs = store.due(1_000, 100).await.expect("due");
    let of = |gid: i64| -> Vec<(String, i64)> {
        let mut pairs: Vec<(String, i64)> = due_pairs
            .iter()
            .filter(|p| p.gid == gid)
            .map(|p| (p.uid.clone(), p.due_at_ms))
            .collect();
        pairs.sort();
        pairs
    };
    assert_eq!(
        of(8),
        vec![("u1".into(), 100), ("u2".into(), 100), ("u3".into(), 200)]
    );
    assert_eq!(of(7), of(8));
}

parley_testkit::contract_suite!(
    MySqlQueueStore,
    SqliteQueueStore,
    QueueStore;
    batches_are_stored_once_per_recipient,
    large_batches_are_stored_whole,
    due_pairs_are_claimed_once_and_completed,
    pairs_are_claimed_read_and_completed_in_batches,
    devices_are_registered_replaced_and_pruned,
    concurrent_registrations_respect_the_device_cap,
    a_burst_of_registrations_by_different_users_all_succeed,
    mutes_are_set_and_cleared,
    dead_letters_are_kept,
    a_batch_of_messages_is_queued_as_each_would_be_alone,
);
