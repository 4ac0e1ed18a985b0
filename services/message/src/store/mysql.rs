//! The MySQL-compatible backend (MySQL, MariaDB, TiDB).

use sqlx::{MySql, MySqlPool, mysql::MySqlQueryResult};

use super::sql::impl_message_store;
use crate::error::MessageError;

/// Message storage on a MySQL-compatible server.
#[derive(Clone, Debug)]
pub struct MySqlMessageStore {
    pool: MySqlPool,
}

impl MySqlMessageStore {
    const UPSERT_MEMBER_SUFFIX: &'static str = " ON DUPLICATE KEY UPDATE role = VALUES(role), \
         joined_seq = VALUES(joined_seq), left_seq = NULL, joined_at_ms = VALUES(joined_at_ms)";

    const FOR_UPDATE: &'static str = " FOR UPDATE";

    /// Connects with up to `max_connections` connections.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, MessageError> {
        let pool = parley_server::db::connect_mysql(url, max_connections).await?;
        Ok(Self { pool })
    }

    fn inserted_id(result: &MySqlQueryResult) -> i64 {
        i64::try_from(result.last_insert_id()).unwrap_or(i64::MAX)
    }
}

impl_message_store!(MySqlMessageStore, MySql);
parley_server::pooled!(MySqlMessageStore, MySql, "../../migrations/mysql/message");
