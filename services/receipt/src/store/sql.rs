//! The SQL both receipt backends share. The dialects differ in upserts and row
//! locks, which each backend supplies (`UPSERT_GROUP`, `UPSERT_CURSOR_SUFFIX`,
//! `LOCK_GROUP_SHARED`, `CURSOR_FOR_UPDATE`); the macro expands this one body
//! for each backend's concrete sqlx types.
//!
//! Locking: InitReceipts takes the group row exclusively (its upsert), acks take
//! it shared, so a message recorded late derives its initial state from cursors
//! that no in-flight ack is still moving. SQLite has one connection and so one
//! transaction at a time.

/// Rows per multi-row statement.
pub(super) const CHUNK: usize = 500;

macro_rules! impl_receipt_store {
    ($store:ty, $db:ty) => {
        impl $store {
            async fn recipient_cursors(
                tx: &mut sqlx::Transaction<'_, $db>,
                gid: i64,
                uids: &[String],
            ) -> Result<std::collections::HashMap<String, crate::domain::Cursors>, sqlx::Error> {
                let mut found = std::collections::HashMap::new();
                for chunk in uids.chunks(crate::store::sql::CHUNK) {
                    let mut select = sqlx::QueryBuilder::<$db>::new(
                        "SELECT uid, delivered_seq, read_seq FROM receipt_cursors WHERE gid = ",
                    );
                    select.push_bind(gid).push(" AND uid IN ");
                    parley_server::db::push_list(&mut select, chunk.iter().map(|uid| uid.as_str()));
                    let rows: Vec<(String, i64, i64)> = select.build_query_as().fetch_all(&mut **tx).await?;
                    for (uid, delivered, read) in rows {
                        found.insert(uid, crate::domain::Cursors { delivered, read });
                    }
                }
                Ok(found)
            }

            /// Raises a reader's ledger rows up to `up_to` to `state`, in one
            /// statement: a range of the `(gid, recv_uid, seq)` key.
            async fn flip_ledger(
                tx: &mut sqlx::Transaction<'_, $db>,
                gid: i64,
                uid: &str,
                up_to: i64,
                state: i64,
                now_ms: i64,
            ) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "UPDATE msg_acks SET if_ack = ?, changed_at_ms = ? \
                     WHERE gid = ? AND recv_uid = ? AND seq <= ? AND if_ack < ?",
                )
                .bind(state)
                .bind(now_ms)
                .bind(gid)
                .bind(uid)
                .bind(up_to)
                .bind(state)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Records one sent message inside the caller's transaction.
            async fn init_one(
                tx: &mut sqlx::Transaction<'_, $db>,
                message: &crate::store::InitMessage,
                ledger_max: i64,
            ) -> Result<crate::store::InitOutcome, crate::error::ReceiptError> {
                use crate::domain::{Cursors, ledger_state, wants_ledger};
                sqlx::query(Self::UPSERT_GROUP).bind(message.gid).bind(message.seq).execute(&mut **tx).await?;
                let existing: Option<bool> =
                    sqlx::query_scalar("SELECT ledger FROM receipt_msgs WHERE gid = ? AND seq = ?")
                        .bind(message.gid)
                        .bind(message.seq)
                        .fetch_optional(&mut **tx)
                        .await?;
                if let Some(ledger) = existing {
                    return Ok(crate::store::InitOutcome { created: false, ledger });
                }
                // Acks that arrived before this message was recorded already moved
                // the cursors; they count from the start.
                let read_count: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM receipt_cursors WHERE gid = ? AND read_seq >= ? AND joined_seq < ? \
                     AND (left_seq IS NULL OR left_seq >= ?) AND uid <> ?",
                )
                .bind(message.gid)
                .bind(message.seq)
                .bind(message.seq)
                .bind(message.seq)
                .bind(message.sender_uid.as_str())
                .fetch_one(&mut **tx)
                .await?;
                let ledger = wants_ledger(
                    message.need_receipt,
                    message.recipient_count,
                    message.recipients.len(),
                    read_count,
                    ledger_max,
                );
                if ledger {
                    let cursors = Self::recipient_cursors(tx, message.gid, &message.recipients).await?;
                    for chunk in message.recipients.chunks(crate::store::sql::CHUNK) {
                        let mut insert = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO msg_acks (gid, recv_uid, seq, msgid, sender_uid, if_ack, changed_at_ms) ",
                        );
                        insert.push_values(chunk, |mut row, uid| {
                            let at = cursors.get(uid).copied().unwrap_or(Cursors { delivered: 0, read: 0 });
                            row.push_bind(message.gid)
                                .push_bind(uid.as_str())
                                .push_bind(message.seq)
                                .push_bind(message.msgid)
                                .push_bind(message.sender_uid.as_str())
                                .push_bind(ledger_state(at, message.seq))
                                .push_bind(message.created_at_ms);
                        });
                        insert.build().execute(&mut **tx).await?;
                    }
                }
                sqlx::query(
                    "INSERT INTO receipt_msgs (gid, seq, msgid, sender_uid, recipient_count, read_count, ledger, \
                     created_at_ms, changed_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(message.gid)
                .bind(message.seq)
                .bind(message.msgid)
                .bind(message.sender_uid.as_str())
                .bind(message.recipient_count)
                .bind(read_count)
                .bind(ledger)
                .bind(message.created_at_ms)
                .bind(message.created_at_ms)
                .execute(&mut **tx)
                .await?;
                Ok(crate::store::InitOutcome { created: true, ledger })
            }

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
                // One short transaction per message: each holds its group's
                // row exclusively, and acks of the group wait for it.
                let mut outcomes = Vec::with_capacity(messages.len());
                for message in messages {
                    let mut tx = self.pool.begin().await?;
                    let outcome = Self::init_one(&mut tx, message, ledger_max).await;
                    outcomes.push(parley_server::db::finish(tx, outcome).await?);
                }
                Ok(outcomes)
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

            async fn ack(
                &self,
                gid: i64,
                uid: &str,
                up_to: i64,
                kind: crate::domain::AckKind,
                committed: Option<i64>,
                now_ms: i64,
            ) -> Result<crate::store::AckOutcome, crate::error::ReceiptError> {
                use crate::{
                    domain::{ACK_DELIVERED, ACK_READ, Cursors, advance},
                    error::ReceiptError,
                    store::{AckOutcome, CursorRecord},
                };
                let mut tx = self.pool.begin().await?;
                let outcome: Result<_, crate::error::ReceiptError> = async {
                let group: Option<i64> =
                    sqlx::query_scalar(Self::LOCK_GROUP_SHARED).bind(gid).fetch_optional(&mut *tx).await?;
                let Some(last_seq) = group else {
                    return Err(ReceiptError::GroupNotFound);
                };
                if up_to > last_seq.max(committed.unwrap_or(0)) {
                    return Err(ReceiptError::PastLastSeq);
                }
                let cursor: Option<CursorRecord> =
                    sqlx::query_as(Self::CURSOR_FOR_UPDATE).bind(gid).bind(uid).fetch_optional(&mut *tx).await?;
                let cursor = match cursor {
                    Some(cursor) if cursor.left_seq.is_none() => cursor,
                    _ => return Err(ReceiptError::Denied("not a member of this group")),
                };
                let current = Cursors { delivered: cursor.delivered_seq, read: cursor.read_seq };
                let Some(next) = advance(current, up_to, kind) else {
                    return Ok(AckOutcome { cursors: current, previous: current, advanced: false });
                };
                sqlx::query(
                    "UPDATE receipt_cursors SET delivered_seq = ?, read_seq = ?, updated_at_ms = ? \
                     WHERE gid = ? AND uid = ?",
                )
                .bind(next.delivered)
                .bind(next.read)
                .bind(now_ms)
                .bind(gid)
                .bind(uid)
                .execute(&mut *tx)
                .await?;
                if next.read > current.read {
                    sqlx::query(
                        "UPDATE receipt_msgs SET read_count = read_count + 1, changed_at_ms = ? \
                         WHERE gid = ? AND seq > ? AND seq <= ? AND seq > ? AND sender_uid <> ?",
                    )
                    .bind(now_ms)
                    .bind(gid)
                    .bind(current.read)
                    .bind(next.read)
                    .bind(cursor.joined_seq)
                    .bind(uid)
                    .execute(&mut *tx)
                    .await?;
                    Self::flip_ledger(&mut tx, gid, uid, next.read, ACK_READ, now_ms).await?;
                    // Messages everyone has now read leave the ledger.
                    let folded: Vec<i64> = sqlx::query_scalar(
                        "SELECT seq FROM receipt_msgs WHERE gid = ? AND seq > ? AND seq <= ? AND ledger = ? \
                         AND read_count >= recipient_count",
                    )
                    .bind(gid)
                    .bind(current.read)
                    .bind(next.read)
                    .bind(true)
                    .fetch_all(&mut *tx)
                    .await?;
                    Self::delete_ledger_of(&mut tx, gid, &folded).await?;
                }
                if next.delivered > current.delivered {
                    Self::flip_ledger(&mut tx, gid, uid, next.delivered, ACK_DELIVERED, now_ms).await?;
                }
                Ok(AckOutcome { cursors: next, previous: current, advanced: true })
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
