//! The embedded SQLite backend, for `make dev` and single-machine installs.

use sqlx::{Sqlite, SqlitePool, sqlite::SqliteQueryResult};

use super::sql::impl_message_store;
use crate::error::MessageError;

/// Message storage in an SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteMessageStore {
    pool: SqlitePool,
}

impl SqliteMessageStore {
    const UPSERT_MEMBER_SUFFIX: &'static str = " ON CONFLICT (gid, uid) DO UPDATE SET role = excluded.role, \
         joined_seq = excluded.joined_seq, left_seq = NULL, joined_at_ms = excluded.joined_at_ms";

    // One connection runs one transaction at a time: no row locks needed.
    const FOR_UPDATE: &'static str = "";

    /// Opens (creating if needed) the database at `url`.
    pub async fn connect(url: &str) -> Result<Self, MessageError> {
        let pool = parley_server::db::connect_sqlite(url).await?;
        Ok(Self { pool })
    }

    fn inserted_id(result: &SqliteQueryResult) -> i64 {
        result.last_insert_rowid()
    }
}

impl_message_store!(SqliteMessageStore, Sqlite);
parley_server::pooled!(
    SqliteMessageStore,
    Sqlite,
    "../../migrations/sqlite/message"
);
