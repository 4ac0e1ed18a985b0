//! The durable push queue, behind one narrow trait with a MySQL-compatible and
//! an SQLite implementation sharing one SQL body.

use std::future::Future;

use sqlx::{MySql, MySqlPool, Sqlite, SqlitePool, migrate::Migrator};

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The storage backend failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One message's offline recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineBatch {
    /// Group.
    pub gid: i64,
    /// Message id.
    pub msgid: i64,
    /// Seq in the group.
    pub seq: i64,
    /// Sender.
    pub sender_uid: String,
    /// The group's display name.
    pub group_name: String,
    /// Recipients, deduplicated.
    pub recipients: Vec<String>,
}

/// Rows per INSERT: 7 columns each stays far below both backends' limits.
const CHUNK: usize = 500;

/// Storage of the notification service.
pub trait QueueStore: Clone + Send + Sync + 'static {
    /// Applies pending migrations.
    fn migrate(&self) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Stores a batch; recipients already queued for the message are skipped.
    /// Returns how many pushes were newly queued.
    fn enqueue(
        &self,
        batch: &OfflineBatch,
        now_ms: i64,
    ) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Pushes queued for one user, oldest first: for tests and operators.
    fn queued_for(
        &self,
        uid: &str,
    ) -> impl Future<Output = Result<Vec<(i64, i64)>, QueueError>> + Send;
}

macro_rules! impl_queue_store {
    ($store:ident, $db:ty) => {
        impl QueueStore for $store {
            async fn migrate(&self) -> Result<(), QueueError> {
                Self::MIGRATOR.run(&self.pool).await?;
                Ok(())
            }

            async fn enqueue(&self, batch: &OfflineBatch, now_ms: i64) -> Result<u64, QueueError> {
                let mut tx = self.pool.begin().await?;
                let outcome: Result<u64, QueueError> = async {
                    let mut queued = 0;
                    for chunk in batch.recipients.chunks(CHUNK) {
                        let mut insert = sqlx::QueryBuilder::<$db>::new(Self::INSERT);
                        insert.push_values(chunk, |mut row, uid| {
                            row.push_bind(uid.as_str())
                                .push_bind(batch.gid)
                                .push_bind(batch.seq)
                                .push_bind(batch.msgid)
                                .push_bind(batch.sender_uid.as_str())
                                .push_bind(batch.group_name.as_str())
                                .push_bind(now_ms);
                        });
                        queued += insert.build().execute(&mut *tx).await?.rows_affected();
                    }
                    Ok(queued)
                }
                .await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn queued_for(&self, uid: &str) -> Result<Vec<(i64, i64)>, QueueError> {
                Ok(sqlx::query_as(
                    "SELECT gid, seq FROM push_queue WHERE uid = ? ORDER BY enqueued_at_ms, gid, seq",
                )
                .bind(uid)
                .fetch_all(&self.pool)
                .await?)
            }
        }
    };
}

/// The queue on a MySQL-compatible server.
#[derive(Clone, Debug)]
pub struct MySqlQueueStore {
    pool: MySqlPool,
}

impl MySqlQueueStore {
    const MIGRATOR: Migrator = sqlx::migrate!("../../migrations/mysql/notification");
    const INSERT: &'static str = "INSERT IGNORE INTO push_queue \
         (uid, gid, seq, msgid, sender_uid, group_name, enqueued_at_ms) ";

    /// Connects with up to `max_connections` connections.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, QueueError> {
        let pool = parley_server::db::connect_mysql(url, max_connections).await?;
        Ok(Self { pool })
    }
}

/// The queue in an SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteQueueStore {
    pool: SqlitePool,
}

impl SqliteQueueStore {
    const MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite/notification");
    const INSERT: &'static str = "INSERT OR IGNORE INTO push_queue \
         (uid, gid, seq, msgid, sender_uid, group_name, enqueued_at_ms) ";

    /// Opens (creating if needed) the database at `url`.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        let pool = parley_server::db::connect_sqlite(url).await?;
        Ok(Self { pool })
    }
}

impl_queue_store!(MySqlQueueStore, MySql);
impl_queue_store!(SqliteQueueStore, Sqlite);
