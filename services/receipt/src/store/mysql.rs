//! The MySQL-compatible backend (MySQL, MariaDB, TiDB).

use sqlx::{MySql, MySqlPool, migrate::Migrator};

use super::sql::impl_receipt_store;
use crate::error::ReceiptError;

/// Receipt storage on a MySQL-compatible server.
#[derive(Clone, Debug)]
pub struct MySqlReceiptStore {
    pool: MySqlPool,
}

impl MySqlReceiptStore {
    const MIGRATOR: Migrator = sqlx::migrate!("../../migrations/mysql/receipt");
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
         updated_at_ms = IF(VALUES(version) > version, VALUES(updated_at_ms), updated_at_ms), \
         version = GREATEST(version, VALUES(version))";
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
