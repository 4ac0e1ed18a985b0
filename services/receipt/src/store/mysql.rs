//! The MySQL-compatible backend (MySQL, MariaDB, TiDB).

use sqlx::{MySql, MySqlPool};

use super::sql::impl_receipt_store;
use crate::error::ReceiptError;

/// Receipt storage on a MySQL-compatible server.
#[derive(Clone, Debug)]
pub struct MySqlReceiptStore {
    pool: MySqlPool,
}

impl MySqlReceiptStore {
    const UPSERT_GROUP: &'static str = "INSERT INTO receipt_groups (gid, last_seq) VALUES (?, ?) \
         ON DUPLICATE KEY UPDATE last_seq = GREATEST(last_seq, VALUES(last_seq))";
    // MySQL assigns left to right and later expressions see earlier
    // assignments, so `version` is compared everywhere before it is set last.
    const UPSERT_CURSOR_SUFFIX: &'static str = " ON DUPLICATE KEY UPDATE \
         admin = IF(VALUES(version) > version, VALUES(admin), admin), \
         joined_seq = IF(VALUES(version) > version, VALUES(joined_seq), joined_seq), \
         left_seq = IF(VALUES(version) > version, VALUES(left_seq), left_seq), \
         delivered_seq = IF(VALUES(version) > version, GREATEST(delivered_seq, VALUES(joined_seq)), delivered_seq), \
         read_seq = IF(VALUES(version) > version, GREATEST(read_seq, VALUES(joined_seq)), read_seq), \
         shown_seq = IF(VALUES(version) > version, GREATEST(shown_seq, VALUES(joined_seq)), shown_seq), \
         private = IF(VALUES(version) > version, VALUES(private), private), \
         updated_at_ms = IF(VALUES(version) > version, VALUES(updated_at_ms), updated_at_ms), \
         version = GREATEST(version, VALUES(version))";
    const UPSERT_PRIVACY: &'static str = "INSERT INTO receipt_privacy (uid, gid, private, updated_at_ms) \
         VALUES (?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
         private = VALUES(private), updated_at_ms = VALUES(updated_at_ms)";
    const UPSERT_STAY_SUFFIX: &'static str = " ON DUPLICATE KEY UPDATE \
         shown_at_ms = IF(VALUES(shown_seq) > shown_seq, VALUES(shown_at_ms), shown_at_ms), \
         shown_seq = GREATEST(shown_seq, VALUES(shown_seq))";
    const LOCK_GROUP_SHARED: &'static str =
        "SELECT last_seq FROM receipt_groups WHERE gid = ? LOCK IN SHARE MODE";
    const FOR_UPDATE: &'static str = " FOR UPDATE";

    /// Connects with up to `max_connections` connections.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, ReceiptError> {
        let pool = parley_server::db::connect_mysql(url, max_connections).await?;
        Ok(Self { pool })
    }
}

impl_receipt_store!(MySqlReceiptStore, MySql);
parley_server::pooled!(MySqlReceiptStore, MySql, "../../migrations/mysql/receipt");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::AckKind,
        store::{InitMessage, MemberAck, MemberChange, ReceiptStore},
    };
    use parley_server::db::Pooled as _;

    const GID: i64 = 1;

    /// Statements with lists (acks of 1 to 64 members, batches of 1 to 40
    /// messages, reads of 1 to 50 ids) come in few enough shapes that one
    /// connection's statement cache never evicts one: an eviction stalls the
    /// next statement ~40 ms (see `parley_server::db::STATEMENT_CACHE`).
    #[tokio::test]
    async fn batches_of_every_size_fit_the_statement_cache() {
        let db = parley_testkit::TestDb::mysql().await;
        let store = MySqlReceiptStore::connect(db.url(), 1)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        let members: Vec<String> = (0..200).map(|i| format!("m{i:03}")).collect();
        let changes: Vec<MemberChange> = std::iter::once("sender".to_owned())
            .chain(members.iter().cloned())
            .zip(1..)
            .map(|(uid, version)| MemberChange {
                uid,
                admin: false,
                joined_seq: 0,
                left_seq: None,
                version,
                past_stays: Vec::new(),
            })
            .collect();
        store
            .apply_membership(GID, &changes, 1)
            .await
            .expect("members");
        let mut seq = 0;
        for batch in 1..=40 {
            let messages: Vec<InitMessage> = (0..batch)
                .map(|_| {
                    seq += 1;
                    InitMessage {
                        gid: GID,
                        msgid: 1_000 + seq,
                        seq,
                        sender_uid: "sender".into(),
                        need_receipt: true,
                        recipient_count: 200,
                        created_at_ms: seq,
                        policy: crate::domain::Policy::Full,
                    }
                })
                .collect();
            store.init_receipts(&messages, 300).await.expect("init");
        }
        for readers in 1..=64 {
            let acks: Vec<MemberAck> = members
                .iter()
                .take(readers)
                .map(|uid| MemberAck {
                    uid: uid.clone(),
                    up_to: i64::try_from(readers * 12).expect("seq"),
                    kind: AckKind::Read,
                })
                .collect();
            store
                .ack_group(GID, &acks, None, 10_000)
                .await
                .expect("acks");
        }
        for count in 1..=50 {
            let msgids: Vec<i64> = (1_001..=1_000 + count).collect();
            let found = store.messages(GID, &msgids).await.expect("messages");
            assert_eq!(found.len(), msgids.len());
        }
        assert_eq!(parley_testkit::statements_evicted(&store.pool).await, 0);
    }
}
