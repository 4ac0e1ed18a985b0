//! The bound on accepted messages: the durable rows Parley's schema needs
//! for a message and its readers' acks, written straight to MariaDB with no
//! service in between. Per group, in transactions of one ack batch of
//! messages (the group commit a send path could do):
//! - the send: the messages, their outbox entries, the group's seq;
//! - the hand-off: the receipt rows and the group's receipt seq, then the
//!   outbox entries go;
//! - the acks: every online reader's cursor moves past the batch, the
//!   batch's read counts grow, and (in groups that keep read times) each
//!   reader's read ack is logged.
//!
//! One connection per group, up to [`DB_CONNECTIONS`], as messages of one
//! group serialise on its seq.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use parley_server::{db::push_list, now_ms};
use sqlx::{Connection, MySql, QueryBuilder, mysql::MySqlConnection};

use crate::{
    baseline::{DB_CONNECTIONS, Scratch},
    cluster,
};

/// The groups a part drives.
#[derive(Clone, Copy, Debug)]
pub struct GroupShape {
    /// Groups.
    pub groups: usize,
    /// Members of each.
    pub members: usize,
    /// Devices online in each, its sender among them.
    pub online: usize,
    /// A reader acks after this many messages.
    pub ack_every: u64,
}

/// Most recipients of a message that keeps read times (the receipt
/// service's default `PARLEY_RECEIPT_LEDGER_MAX_MEMBERS`).
const LEDGER_MAX_RECIPIENTS: usize = 200;
/// Most messages in one transaction.
const MAX_BATCH: u64 = 100;
/// Rows in one insert while the groups are set up.
const SETUP_ROWS: usize = 500;
/// The body of every message (the load's messages carry 8 bytes too).
const CONTENT: [u8; 8] = *b"bench-00";

/// What the rows of one message cost, written with nothing in between.
#[derive(Clone, Copy, Debug)]
pub struct Durable {
    /// Messages per second, with their readers' acks.
    pub messages_per_second: f64,
    /// Rows written per message (MariaDB's handler counters).
    pub rows_per_message: f64,
    /// Statements per message, commits included.
    pub statements_per_message: f64,
    /// MariaDB's CPU per message, in milliseconds.
    pub mariadb_cpu_ms: f64,
}

fn uid(member: usize) -> String {
    format!("m{member:05}")
}

impl Scratch {
    /// Writes `shape`'s messages for `duration` and measures them; the
    /// MariaDB server's process is `mariadb_pid`.
    pub async fn durable_messages(
        &self,
        shape: GroupShape,
        duration: Duration,
        mariadb_pid: u32,
    ) -> Result<Durable, String> {
        let groups = shape.groups.max(1);
        self.set_up(groups, shape.members).await?;
        let batch = i64::try_from(shape.ack_every.clamp(1, MAX_BATCH)).unwrap_or(1);
        let readers: Arc<[String]> = (1..shape.online.min(shape.members)).map(uid).collect();
        let recipients = i64::try_from(shape.members.saturating_sub(1)).unwrap_or(i64::MAX);
        let ledger = shape.members.saturating_sub(1) <= LEDGER_MAX_RECIPIENTS;
        let workers = groups.min(DB_CONNECTIONS);
        let mut connections = Vec::with_capacity(workers);
        for _ in 0..workers {
            connections.push(self.connect().await?);
        }
        let before = cluster::db_counters(self.server()).await?;
        let cpu_before = cluster::process_cpu_seconds(mariadb_pid).unwrap_or(0.0);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let handles: Vec<_> = connections
            .into_iter()
            .enumerate()
            .map(|(worker, mut conn)| {
                let (stop, done, readers) = (stop.clone(), done.clone(), readers.clone());
                tokio::spawn(async move {
                    let gids: Vec<i64> = (worker + 1..=groups)
                        .step_by(workers)
                        .filter_map(|g| i64::try_from(g).ok())
                        .collect();
                    let mut last = vec![0i64; gids.len()];
                    while !stop.load(Ordering::Relaxed) {
                        for (gid, last) in gids.iter().zip(last.iter_mut()) {
                            let group = Batch {
                                gid: *gid,
                                after: *last,
                                len: batch,
                                recipients,
                                ledger,
                            };
                            group
                                .write(&mut conn, &readers)
                                .await
                                .map_err(|e| format!("durable rows: {e}"))?;
                            *last += batch;
                            done.fetch_add(batch.unsigned_abs(), Ordering::Relaxed);
                        }
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let mut outcome = Ok(());
        for handle in handles {
            match handle.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => outcome = Err(e),
                Err(e) => outcome = Err(e.to_string()),
            }
        }
        outcome?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cluster::process_cpu_seconds(mariadb_pid).unwrap_or(0.0) - cpu_before;
        let after = cluster::db_counters(self.server()).await?;
        let messages = done.load(Ordering::Relaxed).max(1) as f64;
        Ok(Durable {
            messages_per_second: messages / elapsed,
            rows_per_message: after.rows.saturating_sub(before.rows) as f64 / messages,
            statements_per_message: after.statements.saturating_sub(before.statements) as f64
                / messages,
            mariadb_cpu_ms: cpu * 1000.0 / messages,
        })
    }

    /// Groups 1 to `groups`, each with `members` members on its receipt
    /// cursors.
    async fn set_up(&self, groups: usize, members: usize) -> Result<(), String> {
        let mut conn = self.connect().await?;
        let members: Vec<String> = (0..members).map(uid).collect();
        for gid in (1..=groups).filter_map(|g| i64::try_from(g).ok()) {
            sqlx::query(
                "INSERT INTO chat_groups (gid, kind, name, creator_uid, member_count, created_at_ms) \
                 VALUES (?, 2, 'bench', 'm00000', ?, 0)",
            )
            .bind(gid)
            .bind(i64::try_from(members.len()).unwrap_or(i64::MAX))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
            sqlx::query("INSERT INTO receipt_groups (gid, last_seq) VALUES (?, 0)")
                .bind(gid)
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            for chunk in members.chunks(SETUP_ROWS) {
                let mut insert = QueryBuilder::<MySql>::new(
                    "INSERT INTO receipt_cursors (gid, uid, admin, joined_seq, left_seq, \
                     delivered_seq, read_seq, version, updated_at_ms) ",
                );
                insert.push_values(chunk, |mut row, uid| {
                    row.push_bind(gid)
                        .push_bind(uid)
                        .push_bind(false)
                        .push_bind(0i64)
                        .push_bind(None::<i64>)
                        .push_bind(0i64)
                        .push_bind(0i64)
                        .push_bind(0i64)
                        .push_bind(0i64);
                });
                insert
                    .build()
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// One group's next batch of messages.
struct Batch {
    gid: i64,
    /// The group's last seq before the batch.
    after: i64,
    /// Messages in it.
    len: i64,
    /// Recipients of each.
    recipients: i64,
    /// Whether its messages keep read times.
    ledger: bool,
}

impl Batch {
    /// Writes the batch's three transactions: send, hand-off, acks.
    async fn write(&self, conn: &mut MySqlConnection, readers: &[String]) -> sqlx::Result<()> {
        let (first_msgid, first_entry) = self.send(conn).await?;
        self.hand_off(conn, first_msgid, first_entry).await?;
        self.acks(conn, readers).await
    }

    fn seqs(&self) -> std::ops::RangeInclusive<i64> {
        self.after + 1..=self.after + self.len
    }

    fn last(&self) -> i64 {
        self.after + self.len
    }

    /// The messages, their outbox entries and the group's seq, in one
    /// commit; the first msgid and outbox id (a multi-row insert's ids are
    /// consecutive).
    async fn send(&self, conn: &mut MySqlConnection) -> sqlx::Result<(i64, i64)> {
        let now = now_ms();
        let mut tx = conn.begin().await?;
        let mut messages = QueryBuilder::<MySql>::new(
            "INSERT INTO group_msgs (gid, seq, sender_uid, client_msg_id, content, need_receipt, \
             recipient_count, created_at_ms) ",
        );
        messages.push_values(self.seqs(), |mut row, seq| {
            row.push_bind(self.gid)
                .push_bind(seq)
                .push_bind("m00000")
                .push_bind(format!("c{seq}"))
                .push_bind(CONTENT.as_slice())
                .push_bind(true)
                .push_bind(self.recipients)
                .push_bind(now);
        });
        let first_msgid = messages.build().execute(&mut *tx).await?.last_insert_id();
        let mut outbox =
            QueryBuilder::<MySql>::new("INSERT INTO msg_outbox (kind, gid, seq, created_at_ms) ");
        outbox.push_values(self.seqs(), |mut row, seq| {
            row.push_bind(1i16)
                .push_bind(self.gid)
                .push_bind(seq)
                .push_bind(now);
        });
        let first_entry = outbox.build().execute(&mut *tx).await?.last_insert_id();
        sqlx::query("UPDATE chat_groups SET last_seq = ? WHERE gid = ?")
            .bind(self.last())
            .bind(self.gid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((id(first_msgid)?, id(first_entry)?))
    }

    /// The receipt rows and the group's receipt seq in one commit, then the
    /// outbox entries are deleted.
    async fn hand_off(
        &self,
        conn: &mut MySqlConnection,
        first_msgid: i64,
        first_entry: i64,
    ) -> sqlx::Result<()> {
        let now = now_ms();
        let mut tx = conn.begin().await?;
        let mut receipts = QueryBuilder::<MySql>::new(
            "INSERT INTO receipt_msgs (gid, seq, msgid, sender_uid, recipient_count, read_count, \
             ledger, created_at_ms, changed_at_ms) ",
        );
        receipts.push_values(self.seqs().zip(first_msgid..), |mut row, (seq, msgid)| {
            row.push_bind(self.gid)
                .push_bind(seq)
                .push_bind(msgid)
                .push_bind("m00000")
                .push_bind(self.recipients)
                .push_bind(0i64)
                .push_bind(self.ledger)
                .push_bind(now)
                .push_bind(now);
        });
        receipts.build().execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO receipt_groups (gid, last_seq) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE last_seq = GREATEST(last_seq, VALUES(last_seq))",
        )
        .bind(self.gid)
        .bind(self.last())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut delete = QueryBuilder::<MySql>::new("DELETE FROM msg_outbox WHERE id IN ");
        push_list(&mut delete, first_entry..first_entry + self.len);
        delete.build().execute(&mut *conn).await?;
        Ok(())
    }

    /// Every reader acks the batch: cursors, read counts and, where read
    /// times are kept, one read-ack row per reader, in one commit.
    async fn acks(&self, conn: &mut MySqlConnection, readers: &[String]) -> sqlx::Result<()> {
        if readers.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = conn.begin().await?;
        let mut cursors = QueryBuilder::<MySql>::new("UPDATE receipt_cursors SET delivered_seq = ");
        cursors
            .push_bind(self.last())
            .push(", read_seq = ")
            .push_bind(self.last())
            .push(", version = version + 1, updated_at_ms = ")
            .push_bind(now)
            .push(" WHERE gid = ")
            .push_bind(self.gid)
            .push(" AND uid IN ");
        push_list(&mut cursors, readers.iter().map(String::as_str));
        cursors.build().execute(&mut *tx).await?;
        sqlx::query(
            "UPDATE receipt_msgs SET read_count = read_count + ?, changed_at_ms = ? \
             WHERE gid = ? AND seq > ? AND seq <= ?",
        )
        .bind(i64::try_from(readers.len()).unwrap_or(i64::MAX))
        .bind(now)
        .bind(self.gid)
        .bind(self.after)
        .bind(self.last())
        .execute(&mut *tx)
        .await?;
        if self.ledger {
            let mut log = QueryBuilder::<MySql>::new(
                "INSERT INTO msg_acks (gid, recv_uid, seq, changed_at_ms) ",
            );
            log.push_values(readers, |mut row, reader| {
                row.push_bind(self.gid)
                    .push_bind(reader)
                    .push_bind(self.last())
                    .push_bind(now);
            });
            log.build().execute(&mut *tx).await?;
        }
        tx.commit().await
    }
}

fn id(value: u64) -> sqlx::Result<i64> {
    i64::try_from(value).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}
