//! The notification service's storage: device tokens, mutes, the durable push
//! queue with its per-(user, group) due times, and dead letters. One narrow
//! trait, with a MySQL-compatible and an SQLite implementation sharing one body;
//! only the statements that differ in dialect are per backend.

use std::future::Future;

use sqlx::{Database, Encode, MySql, MySqlPool, QueryBuilder, Sqlite, SqlitePool, Type};

use parley_server::db::retrying_deadlocks;

use crate::push::{Device, Platform};

mod enqueue;

/// Why storage failed: the shared error, so a failure maps to gRPC the way
/// every service's does.
pub type QueueError = parley_server::Error;

/// What registering a device's token did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    /// A device new to the user.
    New,
    /// The device had a token; it is replaced.
    Replaced,
    /// The user has the most devices allowed; nothing was written.
    Full,
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
    /// When the push for a (recipient, group) pair this queues is due.
    pub due_at_ms: i64,
}

/// One queued message for one user.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Queued {
    /// Seq in the group.
    pub seq: i64,
    /// Message id.
    pub msgid: i64,
    /// Sender.
    pub sender_uid: String,
    /// The group's display name when the message was sent.
    pub group_name: String,
    /// When it was queued.
    pub enqueued_at_ms: i64,
}

/// A (user, group) whose collapsed push is due.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Pending {
    /// The user.
    pub uid: String,
    /// The group.
    pub gid: i64,
    /// When it became due (the claim compares against it).
    pub due_at_ms: i64,
    /// Attempts its push has had so far (providers asked to retry).
    pub attempts: i32,
    /// While retrying: the devices still owed the push, `|`-separated.
    pub retry_devices: Option<String>,
    /// While retrying: the last seq the retried push covers.
    pub retry_seq: i64,
}

/// A push a provider asked to retry, put back on its pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The user.
    pub uid: String,
    /// The group.
    pub gid: i64,
    /// When to try again.
    pub due_at_ms: i64,
    /// Attempts made so far.
    pub attempts: i32,
    /// The devices still owed the push, `|`-separated.
    pub devices: String,
    /// The last seq the push covers.
    pub seq: i64,
}

/// A queued message with its pair, as read for a batch of pairs.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PairQueued {
    /// The user.
    pub uid: String,
    /// The group.
    pub gid: i64,
    /// The message.
    #[sqlx(flatten)]
    pub queued: Queued,
}

/// A pair whose push is settled: its messages up to `through_seq` are done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    /// The user.
    pub uid: String,
    /// The group.
    pub gid: i64,
    /// The last seq the push covered (0: nothing was queued).
    pub through_seq: i64,
}

/// Pairs per statement of a batch (their `OR` list comes in a few lengths).
const PAIRS: usize = 64;

/// The lengths an `OR` list of pairs is padded to: three statements per kind
/// (a batch's ten kinds of pair statements share a connection's cache of 100
/// with the enqueue's).
const OR_LENGTHS: [usize; 3] = [1, 8, PAIRS];

/// Appends `(c1 OR c2 …)`, one condition per item written by `each` (at most
/// [`PAIRS`]), padded to one of [`OR_LENGTHS`] by repeating the last (an `OR`
/// ignores a repeat), so each length is one prepared statement.
fn push_any<DB: Database, T: Clone>(
    query: &mut QueryBuilder<DB>,
    items: &[T],
    mut each: impl FnMut(&mut QueryBuilder<DB>, T),
) {
    let length = OR_LENGTHS
        .into_iter()
        .find(|&n| n >= items.len())
        .unwrap_or(items.len());
    let padding = items
        .last()
        .into_iter()
        .cycle()
        .take(length.saturating_sub(items.len()));
    query.push("(");
    for (i, item) in items.iter().chain(padding).cloned().enumerate() {
        if i > 0 {
            query.push(" OR ");
        }
        query.push("(");
        each(query, item);
        query.push(")");
    }
    query.push(")");
}

/// Appends `uid = ? AND gid = ?`.
fn push_pair<DB: Database>(query: &mut QueryBuilder<DB>, (uid, gid): (String, i64))
where
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    query.push("uid = ");
    query.push_bind(uid);
    query.push(" AND gid = ");
    query.push_bind(gid);
}

/// A push given up on.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    /// The user.
    pub uid: String,
    /// The group.
    pub gid: i64,
    /// The last seq the push covered.
    pub last_seq: i64,
    /// The device it was for.
    pub device_id: String,
    /// The device's platform code.
    pub platform: i16,
    /// Messages the push covered.
    pub messages: i32,
    /// Attempts made.
    pub attempts: i32,
    /// Why it was given up on.
    pub reason: String,
    /// When.
    pub failed_at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    device_id: String,
    platform: i16,
    token: String,
    app_id: String,
    locale: String,
}

/// A device row with its user, as read for a batch of users.
#[derive(sqlx::FromRow)]
struct UserDeviceRow {
    uid: String,
    #[sqlx(flatten)]
    device: DeviceRow,
}

impl DeviceRow {
    fn into_device(self, uid: &str) -> Option<Device> {
        Some(Device {
            uid: uid.to_owned(),
            device_id: self.device_id,
            platform: Platform::from_code(self.platform)?,
            token: self.token,
            app_id: self.app_id,
            locale: self.locale,
        })
    }
}

/// Rows per INSERT: 7 columns each stays far below both backends' limits.
const CHUNK: usize = 500;

/// Storage of the notification service.
pub trait QueueStore: parley_server::db::Pooled {
    /// Stores messages' batches, in one transaction, for the recipients who
    /// have a push token, and marks each one's (user, group) push due at its
    /// first batch's `due_at_ms` unless one is already pending. Recipients
    /// already queued for a message are skipped. Returns how many pushes were
    /// newly queued.
    fn enqueue(
        &self,
        batches: &[OfflineBatch],
        now_ms: i64,
    ) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Pushes queued for one user, oldest first: for tests and operators.
    fn queued_for(
        &self,
        uid: &str,
    ) -> impl Future<Output = Result<Vec<(i64, i64)>, QueueError>> + Send;

    /// Up to `limit` (user, group) pairs due at `now_ms`, most overdue first.
    fn due(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Pending>, QueueError>> + Send;

    /// Claims due pairs until `lease_until_ms` (which should be unlikely to
    /// be another worker's: it tells this claim's pairs apart); returns those
    /// claimed, not those another worker took first.
    fn claim(
        &self,
        due: &[Pending],
        lease_until_ms: i64,
    ) -> impl Future<Output = Result<Vec<Pending>, QueueError>> + Send;

    /// Makes a claimed pair due again at `due_at_ms` without sending (a worker
    /// stopping, or a dependency down).
    fn release(
        &self,
        uid: &str,
        gid: i64,
        due_at_ms: i64,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Puts claimed pairs back to be tried again as each retry says, without
    /// removing their queued messages.
    fn postpone(&self, retries: &[Retry]) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Every message queued for each of `uids`, by user, group and seq.
    fn queued_of(
        &self,
        uids: &[String],
    ) -> impl Future<Output = Result<Vec<PairQueued>, QueueError>> + Send;

    /// The mutes of each of `uids`: (user, group, until).
    fn mutes_of(
        &self,
        uids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, i64, i64)>, QueueError>> + Send;

    /// The devices with tokens of each of `uids`, by user and device id.
    fn devices_of(
        &self,
        uids: &[String],
    ) -> impl Future<Output = Result<Vec<Device>, QueueError>> + Send;

    /// The messages queued for a user in a group, in seq order.
    fn queued(
        &self,
        uid: &str,
        gid: i64,
    ) -> impl Future<Output = Result<Vec<Queued>, QueueError>> + Send;

    /// Removes each pair's queued messages up to its `through_seq`, in one
    /// transaction; a pair whose later messages arrived meanwhile is due
    /// again at `next_due_at_ms`, with no attempts yet.
    fn complete(
        &self,
        done: &[Done],
        next_due_at_ms: i64,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Queue depth and the enqueue time of the oldest queued push.
    fn queue_stats(&self) -> impl Future<Output = Result<(i64, Option<i64>), QueueError>> + Send;

    /// Registers or replaces a device's token, unless the user already has
    /// `max_devices` other devices with one. Checked and written in one
    /// transaction that first locks the user's own row, so concurrent
    /// registrations of one user take turns and cannot pass the cap
    /// together, while other users' registrations never wait for them.
    fn register_device(
        &self,
        device: &Device,
        max_devices: usize,
        now_ms: i64,
    ) -> impl Future<Output = Result<Registered, QueueError>> + Send;

    /// Removes a device's token; false when it had none.
    fn unregister_device(
        &self,
        uid: &str,
        device_id: &str,
    ) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// A user's devices with tokens.
    fn devices(&self, uid: &str) -> impl Future<Output = Result<Vec<Device>, QueueError>> + Send;

    /// Removes a token a push service rejected, unless the device has
    /// registered a different one since. True when it was removed.
    fn prune_token(&self, device: &Device)
    -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Mutes a group for a user until `until_ms` (-1 for ever); 0 unmutes.
    fn set_mute(
        &self,
        uid: &str,
        gid: i64,
        until_ms: i64,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// The stored mute end for a user's group, if any.
    fn muted_until(
        &self,
        uid: &str,
        gid: i64,
    ) -> impl Future<Output = Result<Option<i64>, QueueError>> + Send;

    /// Records a push given up on.
    fn dead_letter(
        &self,
        letter: &DeadLetter,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// A user's dead letters, newest first: for tests and operators.
    fn dead_letters(
        &self,
        uid: &str,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, QueueError>> + Send;
}

macro_rules! impl_queue_store {
    ($store:ident, $db:ty) => {
        impl $store {
            /// Completes one chunk of settled pairs in one transaction.
            async fn complete_chunk(&self, chunk: &[Done], next_due_at_ms: i64) -> Result<(), QueueError> {
                let pairs: Vec<(String, i64)> = chunk.iter().map(|d| (d.uid.clone(), d.gid)).collect();
                let mut tx = self.pool.begin().await?;
                let outcome: Result<(), QueueError> = async {
                    // The pairs' rows first, as an enqueue takes them.
                    let mut lock = QueryBuilder::<$db>::new("SELECT due_at_ms FROM push_pending WHERE ");
                    push_any(&mut lock, &pairs, push_pair);
                    lock.push(Self::FOR_UPDATE);
                    lock.build().fetch_all(&mut *tx).await?;
                    let mut delete = QueryBuilder::<$db>::new("DELETE FROM push_queue WHERE ");
                    push_any(&mut delete, chunk, |q, d: Done| {
                        push_pair(q, (d.uid, d.gid));
                        q.push(" AND seq <= ");
                        q.push_bind(d.through_seq);
                    });
                    delete.build().execute(&mut *tx).await?;
                    let mut left = QueryBuilder::<$db>::new("SELECT uid, gid FROM push_queue WHERE ");
                    push_any(&mut left, &pairs, push_pair);
                    left.push(Self::FOR_UPDATE);
                    let left: std::collections::BTreeSet<(String, i64)> =
                        left.build_query_as().fetch_all(&mut *tx).await?.into_iter().collect();
                    let (again, finished): (Vec<(String, i64)>, Vec<(String, i64)>) =
                        pairs.into_iter().partition(|pair| left.contains(pair));
                    if !again.is_empty() {
                        let mut update = QueryBuilder::<$db>::new("UPDATE push_pending SET due_at_ms = ");
                        update.push_bind(next_due_at_ms);
                        update.push(", attempts = 0, retry_devices = NULL, retry_seq = 0 WHERE ");
                        push_any(&mut update, &again, push_pair);
                        update.build().execute(&mut *tx).await?;
                    }
                    if !finished.is_empty() {
                        let mut delete = QueryBuilder::<$db>::new("DELETE FROM push_pending WHERE ");
                        push_any(&mut delete, &finished, push_pair);
                        delete.build().execute(&mut *tx).await?;
                    }
                    Ok(())
                }
                .await;
                parley_server::db::finish(tx, outcome).await
            }
        }

        impl QueueStore for $store {
            async fn enqueue(&self, batches: &[OfflineBatch], now_ms: i64) -> Result<u64, QueueError> {
                let statements = enqueue::Statements::<$db> {
                    insert_queue: Self::INSERT_QUEUE,
                    keep_pending: Self::KEEP_PENDING,
                    rows_affected: |written| written.rows_affected(),
                };
                let statements = &statements;
                retrying_deadlocks(
                    || async move {
                        let mut tx = self.pool.begin().await?;
                        let outcome = enqueue::enqueue::<$db>(&mut tx, statements, batches, now_ms).await;
                        parley_server::db::finish(tx, outcome).await
                    },
                    QueueError::is_deadlock,
                )
                .await
            }

            async fn queued_for(&self, uid: &str) -> Result<Vec<(i64, i64)>, QueueError> {
                Ok(sqlx::query_as(
                    "SELECT gid, seq FROM push_queue WHERE uid = ? ORDER BY enqueued_at_ms, gid, seq",
                )
                .bind(uid)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn due(&self, now_ms: i64, limit: u32) -> Result<Vec<Pending>, QueueError> {
                Ok(sqlx::query_as(
                    "SELECT uid, gid, due_at_ms, attempts, retry_devices, retry_seq \
                     FROM push_pending WHERE due_at_ms <= ? ORDER BY due_at_ms LIMIT ?",
                )
                .bind(now_ms)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn claim(&self, due: &[Pending], lease_until_ms: i64) -> Result<Vec<Pending>, QueueError> {
                let mut claimed = Vec::with_capacity(due.len());
                for chunk in due.chunks(PAIRS) {
                    let mut update = QueryBuilder::<$db>::new("UPDATE push_pending SET due_at_ms = ");
                    update.push_bind(lease_until_ms);
                    update.push(" WHERE ");
                    push_any(&mut update, chunk, |q, p: Pending| {
                        push_pair(q, (p.uid, p.gid));
                        q.push(" AND due_at_ms = ");
                        q.push_bind(p.due_at_ms);
                    });
                    let updated = update.build().execute(&self.pool).await?.rows_affected();
                    if updated == chunk.len() as u64 {
                        claimed.extend_from_slice(chunk);
                        continue;
                    }
                    // Another worker took some first: ours carry our lease.
                    let mut select = QueryBuilder::<$db>::new("SELECT uid, gid FROM push_pending WHERE due_at_ms = ");
                    select.push_bind(lease_until_ms);
                    select.push(" AND ");
                    let pairs: Vec<(String, i64)> = chunk.iter().map(|p| (p.uid.clone(), p.gid)).collect();
                    push_any(&mut select, &pairs, push_pair);
                    let ours: std::collections::HashSet<(String, i64)> =
                        select.build_query_as().fetch_all(&self.pool).await?.into_iter().collect();
                    claimed.extend(chunk.iter().filter(|p| ours.contains(&(p.uid.clone(), p.gid))).cloned());
                }
                Ok(claimed)
            }

            async fn release(&self, uid: &str, gid: i64, due_at_ms: i64) -> Result<(), QueueError> {
                let release = || {
                    sqlx::query("UPDATE push_pending SET due_at_ms = ? WHERE uid = ? AND gid = ?")
                        .bind(due_at_ms)
                        .bind(uid)
                        .bind(gid)
                        .execute(&self.pool)
                };
                retrying_deadlocks(release, parley_server::db::is_deadlock).await?;
                Ok(())
            }

            async fn postpone(&self, retries: &[Retry]) -> Result<(), QueueError> {
                // The pairs' rows exist (their lease is held): the upsert
                // only updates, many rows a statement.
                for chunk in parley_server::db::power_chunks(retries, PAIRS) {
                    let upsert = || async move {
                        let mut upsert = QueryBuilder::<$db>::new(
                            "INSERT INTO push_pending (uid, gid, due_at_ms, attempts, retry_devices, retry_seq) ",
                        );
                        upsert.push_values(chunk, |mut row, retry| {
                            row.push_bind(retry.uid.clone())
                                .push_bind(retry.gid)
                                .push_bind(retry.due_at_ms)
                                .push_bind(retry.attempts)
                                .push_bind(retry.devices.clone())
                                .push_bind(retry.seq);
                        });
                        upsert.push(Self::UPDATE_RETRY);
                        upsert.build().execute(&self.pool).await
                    };
                    retrying_deadlocks(upsert, parley_server::db::is_deadlock).await?;
                }
                Ok(())
            }

            async fn queued_of(&self, uids: &[String]) -> Result<Vec<PairQueued>, QueueError> {
                let mut rows = Vec::new();
                for chunk in uids.chunks(PAIRS) {
                    let mut select = QueryBuilder::<$db>::new(
                        "SELECT uid, gid, seq, msgid, sender_uid, group_name, enqueued_at_ms \
                         FROM push_queue WHERE uid IN ",
                    );
                    parley_server::db::push_list(&mut select, chunk.iter().cloned());
                    select.push(" ORDER BY uid, gid, seq");
                    rows.extend(select.build_query_as::<PairQueued>().fetch_all(&self.pool).await?);
                }
                Ok(rows)
            }

            async fn mutes_of(&self, uids: &[String]) -> Result<Vec<(String, i64, i64)>, QueueError> {
                let mut rows = Vec::new();
                for chunk in uids.chunks(PAIRS) {
                    let mut select =
                        QueryBuilder::<$db>::new("SELECT uid, gid, until_ms FROM push_mutes WHERE uid IN ");
                    parley_server::db::push_list(&mut select, chunk.iter().cloned());
                    rows.extend(select.build_query_as().fetch_all(&self.pool).await?);
                }
                Ok(rows)
            }

            async fn devices_of(&self, uids: &[String]) -> Result<Vec<Device>, QueueError> {
                let mut devices = Vec::new();
                for chunk in uids.chunks(PAIRS) {
                    let mut select = QueryBuilder::<$db>::new(
                        "SELECT uid, device_id, platform, token, app_id, locale FROM push_devices \
                         WHERE uid IN ",
                    );
                    parley_server::db::push_list(&mut select, chunk.iter().cloned());
                    select.push(" ORDER BY uid, device_id");
                    let rows: Vec<UserDeviceRow> = select.build_query_as().fetch_all(&self.pool).await?;
                    devices.extend(rows.into_iter().filter_map(|row| row.device.into_device(&row.uid)));
                }
                Ok(devices)
            }

            async fn queued(&self, uid: &str, gid: i64) -> Result<Vec<Queued>, QueueError> {
                Ok(sqlx::query_as(
                    "SELECT seq, msgid, sender_uid, group_name, enqueued_at_ms FROM push_queue \
                     WHERE uid = ? AND gid = ? ORDER BY seq",
                )
                .bind(uid)
                .bind(gid)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn complete(&self, done: &[Done], next_due_at_ms: i64) -> Result<(), QueueError> {
                // One transaction a chunk, run again when the database rolled
                // it back to break a deadlock (an enqueue or a claim holding
                // the rows next to its own).
                for chunk in done.chunks(PAIRS) {
                    retrying_deadlocks(|| self.complete_chunk(chunk, next_due_at_ms), QueueError::is_deadlock)
                        .await?;
                }
                Ok(())
            }

            async fn queue_stats(&self) -> Result<(i64, Option<i64>), QueueError> {
                Ok(sqlx::query_as("SELECT COUNT(*), MIN(enqueued_at_ms) FROM push_queue")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn register_device(
                &self,
                device: &Device,
                max_devices: usize,
                now_ms: i64,
            ) -> Result<Registered, QueueError> {
                let mut tx = self.pool.begin().await?;
                let outcome: Result<Registered, QueueError> = async {
                    // The user's own row, locked exclusively (created on the
                    // first registration): their registrations take turns, and
                    // no range of push_devices is locked.
                    sqlx::query(Self::LOCK_USER)
                        .bind(&device.uid)
                        .execute(&mut *tx)
                        .await?;
                    let registered: Vec<String> =
                        sqlx::query_scalar("SELECT device_id FROM push_devices WHERE uid = ?")
                            .bind(&device.uid)
                            .fetch_all(&mut *tx)
                            .await?;
                    let replacing = registered.contains(&device.device_id);
                    if !replacing && registered.len() >= max_devices {
                        return Ok(Registered::Full);
                    }
                    sqlx::query(Self::UPSERT_DEVICE)
                        .bind(&device.uid)
                        .bind(&device.device_id)
                        .bind(device.platform.code())
                        .bind(&device.token)
                        .bind(&device.app_id)
                        .bind(&device.locale)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                    Ok(if replacing { Registered::Replaced } else { Registered::New })
                }
                .await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn unregister_device(&self, uid: &str, device_id: &str) -> Result<bool, QueueError> {
                let removed = sqlx::query("DELETE FROM push_devices WHERE uid = ? AND device_id = ?")
                    .bind(uid)
                    .bind(device_id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(removed > 0)
            }

            async fn devices(&self, uid: &str) -> Result<Vec<Device>, QueueError> {
                self.devices_of(&[uid.to_owned()]).await
            }

            async fn prune_token(&self, device: &Device) -> Result<bool, QueueError> {
                let removed = sqlx::query(
                    "DELETE FROM push_devices WHERE uid = ? AND device_id = ? AND token = ?",
                )
                .bind(&device.uid)
                .bind(&device.device_id)
                .bind(&device.token)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(removed > 0)
            }

            async fn set_mute(&self, uid: &str, gid: i64, until_ms: i64) -> Result<(), QueueError> {
                let query = if until_ms == 0 {
                    sqlx::query("DELETE FROM push_mutes WHERE uid = ? AND gid = ?")
                        .bind(uid)
                        .bind(gid)
                } else {
                    sqlx::query(Self::UPSERT_MUTE).bind(uid).bind(gid).bind(until_ms)
                };
                query.execute(&self.pool).await?;
                Ok(())
            }

            async fn muted_until(&self, uid: &str, gid: i64) -> Result<Option<i64>, QueueError> {
                let row: Option<(i64,)> =
                    sqlx::query_as("SELECT until_ms FROM push_mutes WHERE uid = ? AND gid = ?")
                        .bind(uid)
                        .bind(gid)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.map(|(until,)| until))
            }

            async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), QueueError> {
                sqlx::query(
                    "REPLACE INTO push_dead_letters (uid, gid, last_seq, device_id, platform, \
                     messages, attempts, reason, failed_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&letter.uid)
                .bind(letter.gid)
                .bind(letter.last_seq)
                .bind(&letter.device_id)
                .bind(letter.platform)
                .bind(letter.messages)
                .bind(letter.attempts)
                .bind(&letter.reason)
                .bind(letter.failed_at_ms)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn dead_letters(&self, uid: &str) -> Result<Vec<DeadLetter>, QueueError> {
                Ok(sqlx::query_as(
                    "SELECT uid, gid, last_seq, device_id, platform, messages, attempts, reason, \
                     failed_at_ms FROM push_dead_letters WHERE uid = ? \
                     ORDER BY failed_at_ms DESC, gid, last_seq",
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
    const INSERT_QUEUE: &'static str = "INSERT IGNORE INTO push_queue \
         (uid, gid, seq, msgid, sender_uid, group_name, enqueued_at_ms) ";
    // A no-op update still locks the existing row, which orders this against
    // a worker's `complete`.
    const KEEP_PENDING: &'static str = " ON DUPLICATE KEY UPDATE due_at_ms = due_at_ms";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    // An upsert takes the row's exclusive lock at once (INSERT IGNORE would
    // take a shared one first, and two registrations upgrading it deadlock).
    const LOCK_USER: &'static str =
        "INSERT INTO push_users (uid) VALUES (?) ON DUPLICATE KEY UPDATE uid = uid";
    const UPSERT_DEVICE: &'static str = "INSERT INTO push_devices \
         (uid, device_id, platform, token, app_id, locale, updated_at_ms) \
         VALUES (?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE platform = VALUES(platform), \
         token = VALUES(token), app_id = VALUES(app_id), locale = VALUES(locale), \
         updated_at_ms = VALUES(updated_at_ms)";
    const UPSERT_MUTE: &'static str = "INSERT INTO push_mutes (uid, gid, until_ms) \
         VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE until_ms = VALUES(until_ms)";
    const UPDATE_RETRY: &'static str = " ON DUPLICATE KEY UPDATE due_at_ms = VALUES(due_at_ms), \
         attempts = VALUES(attempts), retry_devices = VALUES(retry_devices), \
         retry_seq = VALUES(retry_seq)";

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
    const INSERT_QUEUE: &'static str = "INSERT OR IGNORE INTO push_queue \
         (uid, gid, seq, msgid, sender_uid, group_name, enqueued_at_ms) ";
    // One connection serialises every transaction: no row locks needed.
    const KEEP_PENDING: &'static str = " ON CONFLICT (uid, gid) DO NOTHING";
    // One writer at a time: a transaction's reads need no locks.
    const FOR_UPDATE: &'static str = "";
    // One connection serialises every transaction: the row only exists.
    const LOCK_USER: &'static str =
        "INSERT INTO push_users (uid) VALUES (?) ON CONFLICT (uid) DO NOTHING";
    const UPSERT_DEVICE: &'static str = "INSERT INTO push_devices \
         (uid, device_id, platform, token, app_id, locale, updated_at_ms) \
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uid, device_id) DO UPDATE SET \
         platform = excluded.platform, token = excluded.token, app_id = excluded.app_id, \
         locale = excluded.locale, updated_at_ms = excluded.updated_at_ms";
    const UPSERT_MUTE: &'static str = "INSERT INTO push_mutes (uid, gid, until_ms) \
         VALUES (?, ?, ?) ON CONFLICT (uid, gid) DO UPDATE SET until_ms = excluded.until_ms";
    const UPDATE_RETRY: &'static str = " ON CONFLICT (uid, gid) DO UPDATE SET \
         due_at_ms = excluded.due_at_ms, attempts = excluded.attempts, \
         retry_devices = excluded.retry_devices, retry_seq = excluded.retry_seq";

    /// Opens (creating if needed) the database at `url`.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        let pool = parley_server::db::connect_sqlite(url).await?;
        Ok(Self { pool })
    }
}

impl_queue_store!(MySqlQueueStore, MySql);
impl_queue_store!(SqliteQueueStore, Sqlite);
parley_server::pooled!(
    MySqlQueueStore,
    MySql,
    "../../migrations/mysql/notification"
);
parley_server::pooled!(
    SqliteQueueStore,
    Sqlite,
    "../../migrations/sqlite/notification"
);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::push::{Device, Platform};
    use parley_server::db::Pooled as _;

    /// A migrated store on `db` with `connections`, each of `uids` with an
    /// FCM phone.
    async fn store_with_phones(
        db: &parley_testkit::TestDb,
        connections: u32,
        uids: &[String],
    ) -> MySqlQueueStore {
        let store = MySqlQueueStore::connect(db.url(), connections)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        for uid in uids {
            let device = Device {
                uid: uid.clone(),
                device_id: "phone".into(),
                platform: Platform::Fcm,
                token: format!("token-{uid}"),
                app_id: String::new(),
                locale: String::new(),
            };
            store.register_device(&device, 10, 1).await.expect("device");
        }
        store
    }

    /// Group `gid`'s first message, for `recipients`, due at 10.
    fn message(gid: i64, recipients: Vec<String>) -> OfflineBatch {
        OfflineBatch {
            gid,
            msgid: 1_000 + gid,
            seq: 1,
            sender_uid: "sender".into(),
            group_name: "group".into(),
            recipients,
            due_at_ms: 10,
        }
    }

    /// A completion the database rolls back to break a deadlock is run
    /// again, and the pairs are completed once the other transaction is gone
    /// (the worker used to put a whole batch back, and a pair whose release
    /// met a deadlock too waited out its lease: 10 minutes by default).
    #[tokio::test]
    async fn a_completion_rolled_back_to_break_a_deadlock_is_run_again() {
        let db = parley_testkit::TestDb::mysql().await;
        let users = vec!["a".to_owned(), "b".to_owned()];
        let store = store_with_phones(&db, 2, &users).await;
        store
            .enqueue(&[message(1, users)], 10)
            .await
            .expect("enqueue");
        let due = store.due(i64::MAX, 2).await.expect("due");
        assert_eq!(store.claim(&due, 1_000).await.expect("claim").len(), 2);

        // Another transaction, heavier than the completion (it has written
        // more, so the database rolls the completion back), holds b's row.
        let others = sqlx::MySqlPool::connect(db.url()).await.expect("connect");
        let mut other = others.begin().await.expect("begin");
        for seq in 0..100 {
            sqlx::query(
                "INSERT INTO push_dead_letters VALUES ('z', 1, ?, 'phone', 1, 1, 1, 'weight', 0)",
            )
            .bind(seq)
            .execute(&mut *other)
            .await
            .expect("weight");
        }
        let lock = "SELECT due_at_ms FROM push_pending WHERE uid = ? AND gid = 1 FOR UPDATE";
        sqlx::query(lock)
            .bind("b")
            .fetch_all(&mut *other)
            .await
            .expect("lock b");
        let done: Vec<Done> = ["a", "b"]
            .into_iter()
            .map(|uid| Done {
                uid: uid.into(),
                gid: 1,
                through_seq: 1,
            })
            .collect();
        let completing = {
            let store = store.clone();
            tokio::spawn(async move { store.complete(&done, 20).await })
        };
        // The completion holds a's row and waits for b's (InnoDB's status
        // names the waiting lock's table; INNODB_TRX does not list every
        // waiting transaction on MariaDB 10.11).
        let database: String = sqlx::query_scalar("SELECT DATABASE()")
            .fetch_one(&others)
            .await
            .expect("database");
        let waiting_here = format!("of table `{database}`.`push_pending` trx id");
        parley_testkit::eventually(
            "the completion waits for b",
            Duration::from_secs(30),
            || async {
                let (_, _, status): (String, String, String) =
                    sqlx::query_as("SHOW ENGINE INNODB STATUS")
                        .fetch_one(&others)
                        .await
                        .expect("innodb status");
                status
                    .lines()
                    .any(|line| line.contains(&waiting_here) && line.ends_with("waiting"))
                    .then_some(())
            },
        )
        .await;
        sqlx::query(lock)
            .bind("a")
            .fetch_all(&mut *other)
            .await
            .expect("the other transaction wins the deadlock");
        other.commit().await.expect("commit");

        completing
            .await
            .expect("task")
            .expect("the completion succeeds on its next attempt");
        for uid in ["a", "b"] {
            assert!(
                store.queued_for(uid).await.expect("queue").is_empty(),
                "{uid}'s queue"
            );
        }
    }

    /// Enqueues for 1 to 64 recipients with tokens, and the worker's batches
    /// of 1 to 64 pairs, fit one connection's statement cache: no statement
    /// is evicted (each eviction stalls the
    /// next statement ~40 ms; see `parley_server::db::STATEMENT_CACHE`).
    #[tokio::test]
    async fn enqueues_and_batches_of_every_size_fit_the_statement_cache() {
        let db = parley_testkit::TestDb::mysql().await;
        let users: Vec<String> = (0..64).map(|i| format!("u{i:02}")).collect();
        let store = store_with_phones(&db, 1, &users).await;
        for (gid, recipients) in (1..=64).zip(1..=64) {
            let batch = message(gid, users.iter().take(recipients).cloned().collect());
            let queued = store.enqueue(&[batch], 10).await.expect("enqueue");
            assert_eq!(queued, u64::try_from(recipients).expect("count"));
        }
        // The worker's batches of every size, on the same connection.
        for n in 1..=PAIRS {
            let due = store
                .due(i64::MAX, u32::try_from(n).expect("n"))
                .await
                .expect("due");
            let claimed = store
                .claim(&due, 1_000_000 + n as i64)
                .await
                .expect("claim");
            assert_eq!(claimed.len(), n);
            let uids: Vec<String> = claimed.iter().map(|p| p.uid.clone()).collect();
            store.queued_of(&uids).await.expect("queued");
            store.mutes_of(&uids).await.expect("mutes");
            store.devices_of(&uids).await.expect("devices");
            let (done, retries): (Vec<Done>, Vec<Retry>) = claimed
                .iter()
                .map(|p| {
                    let (uid, gid) = (p.uid.clone(), p.gid);
                    let retry = Retry {
                        uid: uid.clone(),
                        gid,
                        due_at_ms: 10,
                        attempts: 1,
                        devices: "phone".into(),
                        seq: 1,
                    };
                    let done = Done {
                        uid,
                        gid,
                        through_seq: 0,
                    };
                    (done, retry)
                })
                .unzip();
            store.postpone(&retries).await.expect("postpone");
            store.complete(&done, 10).await.expect("complete");
        }
        assert_eq!(parley_testkit::statements_evicted(&store.pool).await, 0);
    }
}
