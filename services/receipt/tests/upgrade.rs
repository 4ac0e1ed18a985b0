//! Upgrading a receipt database whose ledger holds one row per recipient (the
//! shape before migration 5) to the log of read acks: every read carries
//! over, with its time, and nothing else does. And upgrading cursors from
//! before read privacy (migration 7): every reader stays shown.

use std::borrow::Cow;

use parley_receipt::store::{MySqlReceiptStore, ReceiptStore, SqliteReceiptStore};
use parley_server::db::Pooled as _;
use sqlx::migrate::Migrator;

/// The migrations before `version`.
fn before(all: Migrator, version: i64) -> Migrator {
    let earlier: Vec<_> = all
        .migrations
        .iter()
        .filter(|m| m.version < version)
        .cloned()
        .collect();
    assert_eq!(
        earlier.len(),
        usize::try_from(version - 1).expect("a version"),
        "migrations 1 to {}",
        version - 1
    );
    Migrator {
        migrations: Cow::Owned(earlier),
        ..all
    }
}

/// Group 7 before read privacy: uid1 read up to 5 at 100, uid2 up to 3 at
/// 90, and message 4 by A wants receipts (one reader, uid1).
const OLD_CURSORS: [&str; 3] = [
    "INSERT INTO receipt_groups (gid, last_seq) VALUES (7, 5)",
    "INSERT INTO receipt_cursors (gid, uid, admin, joined_seq, left_seq, delivered_seq, read_seq, version, \
     updated_at_ms) VALUES (7, 'A', 1, 0, NULL, 5, 5, 1, 80), (7, 'uid1', 0, 0, NULL, 5, 5, 2, 100), \
     (7, 'uid2', 0, 0, NULL, 3, 3, 3, 90)",
    "INSERT INTO receipt_msgs (gid, seq, msgid, sender_uid, recipient_count, read_count, ledger, created_at_ms, \
     changed_at_ms, policy) VALUES (7, 4, 1004, 'A', 2, 1, 0, 50, 100, 1)",
];

/// After migration 7, uid1 is still shown as having read message 4, with
/// their cursor's time as the bound, and uid2 as not yet; a new read by uid2
/// counts.
async fn readers_stay_shown<S: ReceiptStore>(store: S) {
    use parley_receipt::{
        domain::{AckKind, ReceiptState},
        store::MemberAck,
    };
    let found = store.messages(7, &[1004]).await.expect("message");
    let message = found.first().expect("message 4");
    assert!(message.senders_sight().shows_counts());
    let list = |state| store.receipt_members(message, state, None, 10);
    assert_eq!(list(ReceiptState::Read).await.expect("read"), ["uid1"]);
    assert_eq!(list(ReceiptState::Unread).await.expect("unread"), ["uid2"]);
    let bound = store
        .cursor_times(7, 4, &["uid1".to_owned()])
        .await
        .expect("bound");
    assert_eq!(bound, [("uid1".to_owned(), 100)]);
    let ack = MemberAck {
        uid: "uid2".into(),
        up_to: 5,
        kind: AckKind::Read,
    };
    store.ack_group(7, &[ack], None, 110).await.expect("ack");
    let found = store.messages(7, &[1004]).await.expect("message");
    assert_eq!(found[0].read_count, 2);
}

/// The old ledger of message 5 of group 7 (3 recipients): uid1 read it at
/// 100, uid2 had it delivered, uid3 not; and message 6, read by uid1 at 120.
const OLD_LEDGER: &str = "INSERT INTO msg_acks (gid, recv_uid, seq, msgid, sender_uid, if_ack, changed_at_ms) VALUES \
     (7, 'uid1', 5, 1005, 'A', 2, 100), (7, 'uid2', 5, 1005, 'A', 1, 101), (7, 'uid3', 5, 1005, 'A', 0, 90), \
     (7, 'uid1', 6, 1006, 'A', 2, 120), (7, 'uid2', 6, 1006, 'A', 0, 95)";

async fn reads_carry_over<S: ReceiptStore>(store: S) {
    let everyone: Vec<String> = ["uid1", "uid2", "uid3"].map(String::from).to_vec();
    // The cursors name the members; the ledger only says when they read.
    let members: Vec<_> = everyone
        .iter()
        .enumerate()
        .map(|(i, uid)| parley_receipt::store::MemberChange {
            uid: uid.clone(),
            admin: false,
            joined_seq: 0,
            left_seq: None,
            version: i64::try_from(i).expect("small") + 1,
            past_stays: Vec::new(),
        })
        .collect();
    store
        .apply_membership(7, &members, 1)
        .await
        .expect("membership");
    let at = |seq| {
        let store = store.clone();
        let everyone = everyone.clone();
        async move {
            store
                .read_times(7, seq, &everyone)
                .await
                .expect("read times")
        }
    };
    assert_eq!(at(5).await, vec![("uid1".to_owned(), 100)]);
    assert_eq!(at(6).await, vec![("uid1".to_owned(), 120)]);
}

/// A MariaDB receipt database at the migrations before `version`, holding
/// `rows`, then migrated to the latest.
async fn mariadb_from(
    version: i64,
    rows: &[&'static str],
) -> (parley_testkit::TestDb, MySqlReceiptStore) {
    let db = parley_testkit::TestDb::mysql().await;
    let pool = sqlx::MySqlPool::connect(db.url()).await.expect("connect");
    before(sqlx::migrate!("../../migrations/mysql/receipt"), version)
        .run(&pool)
        .await
        .expect("earlier migrations");
    for &statement in rows {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect("old rows");
    }
    let store = MySqlReceiptStore::connect(db.url(), 2)
        .await
        .expect("connect");
    store.migrate().await.expect("the rest");
    (db, store)
}

/// An SQLite receipt database at the migrations before `version`, holding
/// `rows`, then migrated to the latest.
async fn sqlite_from(
    version: i64,
    rows: &[&'static str],
) -> (parley_testkit::TestDb, SqliteReceiptStore) {
    let db = parley_testkit::TestDb::sqlite();
    let options: sqlx::sqlite::SqliteConnectOptions = db.url().parse().expect("sqlite url");
    let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true))
        .await
        .expect("connect");
    before(sqlx::migrate!("../../migrations/sqlite/receipt"), version)
        .run(&pool)
        .await
        .expect("earlier migrations");
    for &statement in rows {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect("old rows");
    }
    pool.close().await;
    let store = SqliteReceiptStore::connect(db.url())
        .await
        .expect("connect");
    store.migrate().await.expect("the rest");
    (db, store)
}

#[tokio::test]
async fn a_per_recipient_ledger_carries_its_reads_over_on_mariadb() {
    let (_db, store) = mariadb_from(5, &[OLD_LEDGER]).await;
    reads_carry_over(store).await;
}

#[tokio::test]
async fn a_per_recipient_ledger_carries_its_reads_over_on_sqlite() {
    let (_db, store) = sqlite_from(5, &[OLD_LEDGER]).await;
    reads_carry_over(store).await;
}

#[tokio::test]
async fn cursors_from_before_read_privacy_stay_shown_on_mariadb() {
    let (_db, store) = mariadb_from(7, &OLD_CURSORS).await;
    readers_stay_shown(store).await;
}

#[tokio::test]
async fn cursors_from_before_read_privacy_stay_shown_on_sqlite() {
    let (_db, store) = sqlite_from(7, &OLD_CURSORS).await;
    readers_stay_shown(store).await;
}
