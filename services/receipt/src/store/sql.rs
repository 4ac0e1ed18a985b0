//! The SQL both receipt backends share. The dialects differ in upserts and row
//! locks, which each backend supplies (`UPSERT_GROUP`, `UPSERT_CURSOR_SUFFIX`,
//! `LOCK_GROUP_SHARED`, `FOR_UPDATE`); the macro expands this one body for each
//! backend's concrete sqlx types. InitReceipts is a plain function generic over
//! the backend instead (`init.rs`), one transaction per group of a batch.
//!
//! Locking: InitReceipts takes the group row exclusively (its upsert), acks take
//! it shared, so a message recorded late derives its initial state from cursors
//! that no in-flight ack is still moving. A batch of acks then locks its
//! members' cursor rows in key order, so two batches of one group wait for each
//! other rather than deadlock. SQLite has one connection and so one transaction
//! at a time.

/// Rows per multi-row statement.
pub(super) const CHUNK: usize = 500;

macro_rules! impl_receipt_store {
    ($store:ty, $db:ty) => {
        impl $store {
            /// The current members among `uids`, their cursor rows locked until
            /// the transaction ends (in key order, as every ack takes them).
            async fn lock_members(
                tx: &mut sqlx::Transaction<'_, $db>,
                gid: i64,
                uids: &[&str],
            ) -> Result<std::collections::BTreeMap<String, crate::domain::Standing>, sqlx::Error> {
                let mut standing = std::collections::BTreeMap::new();
                for chunk in uids.chunks(crate::store::sql::CHUNK) {
                    let mut select = sqlx::QueryBuilder::<$db>::new(
                        "SELECT uid, joined_seq, delivered_seq, read_seq FROM receipt_cursors WHERE gid = ",
                    );
                    select.push_bind(gid).push(" AND left_seq IS NULL AND uid IN ");
                    parley_server::db::push_list(&mut select, chunk.iter().copied());
                    select.push(" ORDER BY uid").push(Self::FOR_UPDATE);
                    let rows: Vec<(String, i64, i64, i64)> = select.build_query_as().fetch_all(&mut **tx).await?;
                    for (uid, joined, delivered, read) in rows {
                        let cursors = crate::domain::Cursors { delivered, read };
                        standing.insert(uid, crate::domain::Standing { joined, cursors });
                    }
                }
                Ok(standing)
            }

            /// Writes the moved cursors: one statement per chunk of members.
            async fn move_cursors(
                tx: &mut sqlx::Transaction<'_, $db>,
                gid: i64,
                moves: &[crate::domain::Move],
                now_ms: i64,
            ) -> Result<(), sqlx::Error> {
                for chunk in moves.chunks(crate::store::sql::CHUNK) {
                    let mut update = sqlx::QueryBuilder::<$db>::new("UPDATE receipt_cursors SET delivered_seq = CASE uid");
                    for m in chunk {
                        update.push(" WHEN ").push_bind(m.uid.as_str()).push(" THEN ").push_bind(m.next.delivered);
                    }
                    update.push(" END, read_seq = CASE uid");
                    for m in chunk {
                        update.push(" WHEN ").push_bind(m.uid.as_str()).push(" THEN ").push_bind(m.next.read);
                    }
                    update.push(" END, updated_at_ms = ").push_bind(now_ms);
                    update.push(" WHERE gid = ").push_bind(gid).push(" AND uid IN ");
                    parley_server::db::push_list(&mut update, chunk.iter().map(|m| m.uid.as_str()));
                    update.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Adds the new readers to the read counts of the messages in
            /// `(lo, hi]`, a window of seqs at a time: each window's senders are
            /// read, then its counts written in one statement.
            async fn count_readers(
                tx: &mut sqlx::Transaction<'_, $db>,
                gid: i64,
                read: &[&crate::domain::Move],
                (lo, hi): (i64, i64),
                now_ms: i64,
            ) -> Result<(), sqlx::Error> {
                let window = i64::try_from(crate::store::sql::CHUNK).unwrap_or(i64::MAX);
                let mut after = lo;
                while after < hi {
                    let up_to = after.saturating_add(window).min(hi);
                    let messages: Vec<(i64, String)> =
                        sqlx::query_as("SELECT seq, sender_uid FROM receipt_msgs WHERE gid = ? AND seq > ? AND seq <= ?")
                            .bind(gid)
                            .bind(after)
                            .bind(up_to)
                            .fetch_all(&mut **tx)
                            .await?;
                    let counted = crate::domain::read_increments(read, &messages);
                    if !counted.is_empty() {
                        let mut update =
                            sqlx::QueryBuilder::<$db>::new("UPDATE receipt_msgs SET read_count = read_count + CASE seq");
                        for (seq, readers) in &counted {
                            update.push(" WHEN ").push_bind(*seq).push(" THEN ").push_bind(*readers);
                        }
                        update.push(" END, changed_at_ms = ").push_bind(now_ms);
                        update.push(" WHERE gid = ").push_bind(gid).push(" AND seq IN ");
                        parley_server::db::push_list(&mut update, counted.iter().map(|(seq, _)| *seq));
                        update.build().execute(&mut **tx).await?;
                    }
                    after = up_to;
                }
                Ok(())
            }

            /// Raises each reader's ledger rows up to their seq to `state`:
            /// one statement per chunk of readers, each a range of the
            /// `(gid, recv_uid, seq)` key.
            async fn flip_ledger<'u>(
                tx: &mut sqlx::Transaction<'_, $db>,
                gid: i64,
                readers: impl Iterator<Item = (&'u str, i64)>,
                state: i64,
                now_ms: i64,
            ) -> Result<(), sqlx::Error> {
                let readers: Vec<(&str, i64)> = readers.collect();
                for chunk in readers.chunks(crate::store::sql::CHUNK) {
                    let mut update = sqlx::QueryBuilder::<$db>::new("UPDATE msg_acks SET if_ack = ");
                    update.push_bind(state).push(", changed_at_ms = ").push_bind(now_ms);
                    update.push(" WHERE if_ack < ").push_bind(state).push(" AND (");
                    for (i, (uid, up_to)) in chunk.iter().enumerate() {
                        if i > 0 {
                            update.push(" OR ");
                        }
                        update.push("(gid = ").push_bind(gid);
                        update.push(" AND recv_uid = ").push_bind(*uid);
                        update.push(" AND seq <= ").push_bind(*up_to).push(")");
                    }
                    update.push(")");
                    update.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Records one sent message inside the caller's transaction.
            async fn delete_ledger_of(
                tx: &mut sqlx::Transaction<'_, $db>,
                gid: i64,
                seqs: &[i64],
            ) -> Result<(), sqlx::Error> {
                for chunk in seqs.chunks(crate::store::sql::CHUNK) {
                    let mut delete = sqlx::QueryBuilder::<$db>::new("DELETE FROM msg_acks WHERE gid = ");
                    delete.push_bind(gid).push(" AND seq IN ");
                    parley_server::db::push_list(&mut delete, chunk.iter().copied());
                    delete.build().execute(&mut **tx).await?;
                    let mut update = sqlx::QueryBuilder::<$db>::new("UPDATE receipt_msgs SET ledger = ");
                    update.push_bind(false).push(" WHERE gid = ").push_bind(gid).push(" AND seq IN ");
                    parley_server::db::push_list(&mut update, chunk.iter().copied());
                    update.build().execute(&mut **tx).await?;
                }
                Ok(())
            }
        }

        impl crate::store::ReceiptStore for $store {
            async fn migrate(&self) -> Result<(), crate::error::ReceiptError> {
                Self::MIGRATOR.run(&self.pool).await?;
                Ok(())
            }

            async fn init_receipts(
                &self,
                messages: &[crate::store::InitMessage],
                ledger_max: i64,
            ) -> Result<Vec<crate::store::InitOutcome>, crate::error::ReceiptError> {
                // One short transaction per group, in gid order: each holds
                // its group's row exclusively, and acks of the group wait for
                // it, but not for other groups' messages.
                let mut groups: std::collections::BTreeMap<i64, Vec<usize>> = std::collections::BTreeMap::new();
                for (index, message) in messages.iter().enumerate() {
                    groups.entry(message.gid).or_default().push(index);
                }
                let mut outcomes = vec![None; messages.len()];
                for (gid, indices) in groups {
                    let run: Vec<&crate::store::InitMessage> = indices.iter().map(|&i| &messages[i]).collect();
                    let mut tx = self.pool.begin().await?;
                    let outcome = crate::store::init::init_group::<$db>(&mut tx, Self::UPSERT_GROUP, gid, &run, ledger_max).await;
                    let recorded = parley_server::db::finish(tx, outcome).await?;
                    for (index, outcome) in indices.into_iter().zip(recorded) {
                        outcomes[index] = Some(outcome);
                    }
                }
                Ok(outcomes.into_iter().flatten().collect())
            }

            async fn apply_membership(
                &self,
                gid: i64,
                changes: &[crate::store::MemberChange],
                now_ms: i64,
            ) -> Result<u32, crate::error::ReceiptError> {
                let mut tx = self.pool.begin().await?;
                let outcome: Result<_, crate::error::ReceiptError> = async {
                sqlx::query(Self::UPSERT_GROUP).bind(gid).bind(0_i64).execute(&mut *tx).await?;
                let uids: Vec<String> = changes.iter().map(|c| c.uid.clone()).collect();
                let mut stored = std::collections::HashMap::new();
                for chunk in uids.chunks(crate::store::sql::CHUNK) {
                    let mut select =
                        sqlx::QueryBuilder::<$db>::new("SELECT uid, version FROM receipt_cursors WHERE gid = ");
                    select.push_bind(gid).push(" AND uid IN ");
                    parley_server::db::push_list(&mut select, chunk.iter().map(|uid| uid.as_str()));
                    let rows: Vec<(String, i64)> = select.build_query_as().fetch_all(&mut *tx).await?;
                    stored.extend(rows);
                }
                let applied = changes.iter().filter(|c| stored.get(&c.uid).is_none_or(|&v| c.version > v)).count();
                for chunk in changes.chunks(crate::store::sql::CHUNK) {
                    let mut upsert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO receipt_cursors (gid, uid, admin, joined_seq, left_seq, delivered_seq, \
                         read_seq, version, updated_at_ms) ",
                    );
                    // A new member has nothing unread from before they joined.
                    upsert.push_values(chunk, |mut row, change| {
                        row.push_bind(gid)
                            .push_bind(change.uid.as_str())
                            .push_bind(change.admin)
                            .push_bind(change.joined_seq)
                            .push_bind(change.left_seq)
                            .push_bind(change.joined_seq)
                            .push_bind(change.joined_seq)
                            .push_bind(change.version)
                            .push_bind(now_ms);
                    });
                    upsert.push(Self::UPSERT_CURSOR_SUFFIX);
                    upsert.build().execute(&mut *tx).await?;
                }
                Ok(u32::try_from(applied).unwrap_or(u32::MAX))
                }
                .await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn ack_group(
                &self,
                gid: i64,
                acks: &[crate::store::MemberAck],
                committed: Option<i64>,
                now_ms: i64,
            ) -> Result<Vec<crate::domain::Planned>, crate::error::ReceiptError> {
                use crate::{
                    domain::{ACK_DELIVERED, ACK_READ, plan_acks},
                    error::ReceiptError,
                };
                let mut tx = self.pool.begin().await?;
                let outcome: Result<_, crate::error::ReceiptError> = async {
                let group: Option<i64> =
                    sqlx::query_scalar(Self::LOCK_GROUP_SHARED).bind(gid).fetch_optional(&mut *tx).await?;
                let Some(last_seq) = group else {
                    return Err(ReceiptError::GroupNotFound);
                };
                let mut uids: Vec<&str> = acks.iter().map(|a| a.uid.as_str()).collect();
                uids.sort_unstable();
                uids.dedup();
                let standing = Self::lock_members(&mut tx, gid, &uids).await?;
                let plan = plan_acks(
                    acks.iter().map(|a| (a.uid.as_str(), a.up_to, a.kind)),
                    last_seq.max(committed.unwrap_or(0)),
                    &standing,
                );
                Self::move_cursors(&mut tx, gid, &plan.moves, now_ms).await?;
                let read: Vec<&crate::domain::Move> =
                    plan.moves.iter().filter(|m| m.next.read > m.previous.read).collect();
                if let (Some(lo), Some(hi)) = (
                    read.iter().map(|m| m.previous.read).min(),
                    read.iter().map(|m| m.next.read).max(),
                ) {
                    Self::count_readers(&mut tx, gid, &read, (lo, hi), now_ms).await?;
                    let flips = read.iter().map(|m| (m.uid.as_str(), m.next.read));
                    Self::flip_ledger(&mut tx, gid, flips, ACK_READ, now_ms).await?;
                    // Messages everyone has now read leave the ledger.
                    let folded: Vec<i64> = sqlx::query_scalar(
                        "SELECT seq FROM receipt_msgs WHERE gid = ? AND seq > ? AND seq <= ? AND ledger = ? \
                         AND read_count >= recipient_count",
                    )
                    .bind(gid)
                    .bind(lo)
                    .bind(hi)
                    .bind(true)
                    .fetch_all(&mut *tx)
                    .await?;
                    Self::delete_ledger_of(&mut tx, gid, &folded).await?;
                }
                let delivered = plan
                    .moves
                    .iter()
                    .filter(|m| m.next.delivered > m.previous.delivered)
                    .map(|m| (m.uid.as_str(), m.next.delivered));
                Self::flip_ledger(&mut tx, gid, delivered, ACK_DELIVERED, now_ms).await?;
                Ok(plan.outcomes)
                }
                .await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn messages_between(
                &self,
                gid: i64,
                after_seq: i64,
                up_to_seq: i64,
                limit: u32,
            ) -> Result<Vec<crate::store::MsgReceipt>, crate::error::ReceiptError> {
                Ok(sqlx::query_as(
                    "SELECT gid, seq, msgid, sender_uid, recipient_count, read_count, ledger, changed_at_ms \
                     FROM receipt_msgs WHERE gid = ? AND seq > ? AND seq <= ? ORDER BY seq DESC LIMIT ?",
                )
                .bind(gid)
                .bind(after_seq)
                .bind(up_to_seq)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn group_exists(&self, gid: i64) -> Result<bool, crate::error::ReceiptError> {
                let found: Option<i64> = sqlx::query_scalar("SELECT gid FROM receipt_groups WHERE gid = ?")
                    .bind(gid)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(found.is_some())
            }

            async fn cursor(
                &self,
                gid: i64,
                uid: &str,
            ) -> Result<Option<crate::store::CursorRecord>, crate::error::ReceiptError> {
                Ok(sqlx::query_as(
                    "SELECT admin, joined_seq, left_seq, delivered_seq, read_seq FROM receipt_cursors \
                     WHERE gid = ? AND uid = ?",
                )
                .bind(gid)
                .bind(uid)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn messages(
                &self,
                gid: i64,
                msgids: &[i64],
            ) -> Result<Vec<crate::store::MsgReceipt>, crate::error::ReceiptError> {
                let mut select = sqlx::QueryBuilder::<$db>::new(
                    "SELECT gid, seq, msgid, sender_uid, recipient_count, read_count, ledger, changed_at_ms \
                     FROM receipt_msgs WHERE gid = ",
                );
                select.push_bind(gid).push(" AND msgid IN ");
                parley_server::db::push_list(&mut select, msgids.iter().copied());
                Ok(select.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn receipt_members(
                &self,
                message: &crate::store::MsgReceipt,
                state: crate::domain::ReceiptState,
                after_uid: Option<&str>,
                limit: u32,
            ) -> Result<Vec<String>, crate::error::ReceiptError> {
                use crate::domain::{ACK_READ, ReceiptState};
                let after = after_uid.unwrap_or("");
                let limit = i64::from(limit);
                if message.ledger {
                    let sql: &'static str = match state {
                        ReceiptState::Read => {
                            "SELECT recv_uid FROM msg_acks WHERE gid = ? AND seq = ? AND if_ack >= ? \
                             AND recv_uid > ? ORDER BY recv_uid LIMIT ?"
                        }
                        ReceiptState::Unread => {
                            "SELECT recv_uid FROM msg_acks WHERE gid = ? AND seq = ? AND if_ack < ? \
                             AND recv_uid > ? ORDER BY recv_uid LIMIT ?"
                        }
                    };
                    return Ok(sqlx::query_scalar(sql)
                        .bind(message.gid)
                        .bind(message.seq)
                        .bind(ACK_READ)
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?);
                }
                // Cursor tier: recipients are the members at send time.
                let sql: &'static str = match state {
                    ReceiptState::Read => {
                        "SELECT uid FROM receipt_cursors WHERE gid = ? AND uid > ? AND joined_seq < ? \
                         AND (left_seq IS NULL OR left_seq >= ?) AND uid <> ? AND read_seq >= ? \
                         ORDER BY uid LIMIT ?"
                    }
                    ReceiptState::Unread => {
                        "SELECT uid FROM receipt_cursors WHERE gid = ? AND uid > ? AND joined_seq < ? \
                         AND (left_seq IS NULL OR left_seq >= ?) AND uid <> ? AND read_seq < ? \
                         ORDER BY uid LIMIT ?"
                    }
                };
                Ok(sqlx::query_scalar(sql)
                    .bind(message.gid)
                    .bind(after)
                    .bind(message.seq)
                    .bind(message.seq)
                    .bind(message.sender_uid.as_str())
                    .bind(message.seq)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn pull(
                &self,
                sender_uid: &str,
                after: (i64, i64),
                limit: u32,
            ) -> Result<Vec<crate::store::MsgReceipt>, crate::error::ReceiptError> {
                Ok(sqlx::query_as(
                    "SELECT gid, seq, msgid, sender_uid, recipient_count, read_count, ledger, changed_at_ms \
                     FROM receipt_msgs WHERE sender_uid = ? \
                     AND (changed_at_ms > ? OR (changed_at_ms = ? AND msgid > ?)) \
                     ORDER BY changed_at_ms, msgid LIMIT ?",
                )
                .bind(sender_uid)
                .bind(after.0)
                .bind(after.0)
                .bind(after.1)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn unread(
                &self,
                uid: &str,
                selection: crate::store::GroupSelection<'_>,
            ) -> Result<Vec<crate::store::UnreadRecord>, crate::error::ReceiptError> {
                let mut select = sqlx::QueryBuilder::<$db>::new(
                    "SELECT c.gid, g.last_seq, c.read_seq, c.delivered_seq FROM receipt_cursors c \
                     JOIN receipt_groups g ON g.gid = c.gid WHERE c.uid = ",
                );
                select.push_bind(uid).push(" AND c.left_seq IS NULL");
                match selection {
                    crate::store::GroupSelection::Only(gids) => {
                        select.push(" AND c.gid IN ");
                        parley_server::db::push_list(&mut select, gids.iter().copied());
                        select.push(" ORDER BY c.gid");
                    }
                    crate::store::GroupSelection::After { gid, limit } => {
                        select.push(" AND c.gid > ").push_bind(gid);
                        select.push(" ORDER BY c.gid LIMIT ").push_bind(i64::from(limit));
                    }
                }
                Ok(select.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn expire_ledger(&self, cutoff_ms: i64, limit: u32) -> Result<u32, crate::error::ReceiptError> {
                let mut tx = self.pool.begin().await?;
                let outcome: Result<_, crate::error::ReceiptError> = async {
                let expired: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT gid, seq FROM receipt_msgs WHERE ledger = ? AND created_at_ms < ? \
                     ORDER BY created_at_ms LIMIT ?",
                )
                .bind(true)
                .bind(cutoff_ms)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
                let mut by_group = std::collections::BTreeMap::<i64, Vec<i64>>::new();
                for (gid, seq) in &expired {
                    by_group.entry(*gid).or_default().push(*seq);
                }
                for (gid, seqs) in &by_group {
                    Self::delete_ledger_of(&mut tx, *gid, seqs).await?;
                }
                Ok(u32::try_from(expired.len()).unwrap_or(u32::MAX))
                }
                .await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn ledger_rows(&self, gid: i64, seq: i64) -> Result<i64, crate::error::ReceiptError> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM msg_acks WHERE gid = ? AND seq = ?")
                    .bind(gid)
                    .bind(seq)
                    .fetch_one(&self.pool)
                    .await?)
            }
        }
    };
}

pub(super) use impl_receipt_store;
