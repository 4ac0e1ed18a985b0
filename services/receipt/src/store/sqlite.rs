//! The embedded SQLite backend, for `make dev` and single-machine installs.

use sqlx::{Sqlite, SqlitePool};

use super::sql::impl_receipt_store;
use crate::error::ReceiptError;

/// Receipt storage in an SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteReceiptStore {
    pool: SqlitePool,
}

impl SqliteReceiptStore {
    const UPSERT_GROUP: &'static str = "INSERT INTO receipt_groups (gid, last_seq) VALUES (?, ?) \
         ON CONFLICT (gid) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)";
    const UPSERT_CURSOR_SUFFIX: &'static str = " ON CONFLICT (gid, uid) DO UPDATE SET \
         admin = excluded.admin, joined_seq = excluded.joined_seq, left_seq = excluded.left_seq, \
         delivered_seq = max(delivered_seq, excluded.joined_seq), read_seq = max(read_seq, excluded.joined_seq), \
         shown_seq = max(shown_seq, excluded.joined_seq), private = excluded.private, \
         updated_at_ms = excluded.updated_at_ms, version = excluded.version \
         WHERE excluded.version > receipt_cursors.version";
    const UPSERT_PRIVACY: &'static str = "INSERT INTO receipt_privacy (uid, gid, private, updated_at_ms) \
         VALUES (?, ?, ?, ?) ON CONFLICT (uid, gid) DO UPDATE SET \
         private = excluded.private, updated_at_ms = excluded.updated_at_ms";
    const UPSERT_STAY_SUFFIX: &'static str = " ON CONFLICT (gid, uid, joined_seq) DO UPDATE SET \
         shown_at_ms = CASE WHEN excluded.shown_seq > shown_seq THEN excluded.shown_at_ms ELSE shown_at_ms END, \
         shown_seq = max(shown_seq, excluded.shown_seq)";
    // One connection runs one transaction at a time: no row locks needed.
    const LOCK_GROUP_SHARED: &'static str = "SELECT last_seq FROM receipt_groups WHERE gid = ?";
    const FOR_UPDATE: &'static str = "";

    /// Opens (creating if needed) the database at `url`.
    pub async fn connect(url: &str) -> Result<Self, ReceiptError> {
        let pool = parley_server::db::connect_sqlite(url).await?;
        Ok(Self { pool })
    }
}

impl_receipt_store!(SqliteReceiptStore, Sqlite);
parley_server::pooled!(
    SqliteReceiptStore,
    Sqlite,
    "../../migrations/sqlite/receipt"
);
