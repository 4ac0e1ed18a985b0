//! Upgrading a receipt database whose ledger holds one row per recipient (the
//! shape before migration 5) to the log of read acks: every read carries
//! over, with its time, and nothing else does.

use std::borrow::Cow;

use parley_receipt::store::{MySqlReceiptStore, ReceiptStore, SqliteReceiptStore};
use sqlx::migrate::Migrator;

/// The migrations before the ledger became a log.
fn before_the_log(all: Migrator) -> Migrator {
    let earlier: Vec<_> = all
        .migrations
        .iter()
        .filter(|m| m.version < 5)
        .cloned()
        .collect();
    assert_eq!(earlier.len(), 4, "migrations 1 to 4");
    Migrator {
        migrations: Cow::Owned(earlier),
        ..all
    }
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

#[tokio::test]
async fn a_per_recipient_ledger_carries_its_reads_over_on_mariadb() {
    let db = parley_testkit::TestDb::mysql().await;
    let pool = sqlx::MySqlPool::connect(db.url()).await.expect("connect");
    before_the_log(sqlx::migrate!("../../migrations/mysql/receipt"))
        .run(&pool)
        .await
        .expect("migrations 1 to 4");
    sqlx::query(OLD_LEDGER)
        .execute(&pool)
        .await
        .expect("old ledger");
    let store = MySqlReceiptStore::connect(db.url(), 2)
        .await
        .expect("connect");
    store.migrate().await.expect("migration 5");
    reads_carry_over(store).await;
}

#[tokio::test]
async fn a_per_recipient_ledger_carries_its_reads_over_on_sqlite() {
    let db = parley_testkit::TestDb::sqlite();
    let options: sqlx::sqlite::SqliteConnectOptions = db.url().parse().expect("sqlite url");
    let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true))
        .await
        .expect("connect");
    before_the_log(sqlx::migrate!("../../migrations/sqlite/receipt"))
        .run(&pool)
        .await
        .expect("migrations 1 to 4");
    sqlx::query(OLD_LEDGER)
        .execute(&pool)
        .await
        .expect("old ledger");
    pool.close().await;
    let store = SqliteReceiptStore::connect(db.url())
        .await
        .expect("connect");
    store.migrate().await.expect("migration 5");
    reads_carry_over(store).await;
}
