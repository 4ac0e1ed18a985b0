//! The push queue's contract, on MariaDB and SQLite.

use parley_notification::store::{MySqlQueueStore, OfflineBatch, QueueStore, SqliteQueueStore};

fn batch(seq: i64, recipients: &[&str]) -> OfflineBatch {
    OfflineBatch {
        gid: 7,
        msgid: 100 + seq,
        seq,
        sender_uid: "A".into(),
        group_name: "Design".into(),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
    }
}

async fn batches_are_stored_once_per_recipient<S: QueueStore>(store: S) {
    assert_eq!(
        store
            .enqueue(&batch(1, &["uid3", "uid4"]), 10)
            .await
            .expect("enqueue"),
        2
    );
    assert_eq!(
        store
            .enqueue(&batch(1, &["uid3", "uid4"]), 11)
            .await
            .expect("again"),
        0,
        "a re-delivered batch queues nothing"
    );
    assert_eq!(
        store
            .enqueue(&batch(2, &["uid3"]), 12)
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
}

async fn large_batches_are_stored_whole<S: QueueStore>(store: S) {
    let many: Vec<String> = (0..1_234).map(|i| format!("m{i:05}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        store.enqueue(&batch(3, &refs), 10).await.expect("enqueue"),
        1_234
    );
    assert_eq!(
        store.queued_for("m01233").await.expect("read"),
        vec![(7, 3)]
    );
}

parley_testkit::contract_suite!(
    MySqlQueueStore,
    SqliteQueueStore,
    QueueStore;
    batches_are_stored_once_per_recipient,
    large_batches_are_stored_whole,
);
