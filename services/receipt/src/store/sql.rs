//! The SQL both receipt backends share. The dialects differ in upserts and row
//! locks, which each backend supplies (`UPSERT_GROUP`, `UPSERT_CURSOR_SUFFIX`,
//! `LOCK_GROUP_SHARED`, `FOR_UPDATE`); the macro expands this one body for each
//! backend's concrete sqlx types. The write paths are plain functions generic
//! over the backend instead: InitReceipts (`init.rs`, one transaction per group
//! of a batch), membership and its stays (`membership.rs`), a group's acks
//! (`ack.rs`), read privacy (`privacy.rs`) and the ledger's read times and
//! retention (`ledger.rs`).
//!
//! Locking: InitReceipts takes the group row exclusively (its upsert), acks take
//! it shared, so a message recorded late derives its initial state from cursors
//! that no in-flight ack is still moving. A batch of acks then locks its
//! members' cursor rows in key order, so two batches of one group wait for each
//! other rather than deadlock. SQLite has one connection and so one transaction
//! at a time.

/// Rows per multi-row statement.
pub(super) const CHUNK: usize = 500;

/// The start of a read of [`crate::store::MsgReceipt`] rows (`receipt_msgs`
/// as `m`), with whether each sender hides their reads in the group.
macro_rules! select_receipts {
    () => {
        "SELECT m.gid, m.seq, m.msgid, m.sender_uid, m.recipient_count, m.read_count, m.ledger, \
         m.changed_at_ms, m.policy, CAST(COALESCE(s.private, 0) AS SIGNED) AS sender_private \
         FROM receipt_msgs m LEFT JOIN receipt_cursors s ON s.gid = m.gid AND s.uid = m.sender_uid"
    };
}

pub(super) use select_receipts;

macro_rules! impl_receipt_store {
    ($store:ty, $db:ty) => {
        impl crate::store::ReceiptStore for $store {
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
                let upserts = crate::store::membership::Upserts {
                    group: Self::UPSERT_GROUP,
                    cursor_suffix: Self::UPSERT_CURSOR_SUFFIX,
                    stay_suffix: Self::UPSERT_STAY_SUFFIX,
                };
                let mut tx = self.pool.begin().await?;
                let outcome = crate::store::membership::apply::<$db>(&mut tx, upserts, gid, changes, now_ms).await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn ack_group(
                &self,
                gid: i64,
                acks: &[crate::store::MemberAck],
                committed: Option<i64>,
                now_ms: i64,
            ) -> Result<Vec<crate::domain::Planned>, crate::error::ReceiptError> {
                let locks = crate::store::ack::Locks {
                    group_shared: Self::LOCK_GROUP_SHARED,
                    for_update: Self::FOR_UPDATE,
                };
                let mut tx = self.pool.begin().await?;
                let outcome = crate::store::ack::ack_group::<$db>(&mut tx, locks, gid, acks, committed, now_ms).await;
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
                    concat!(
                        crate::store::sql::select_receipts!(),
                        " WHERE m.gid = ? AND m.seq > ? AND m.seq <= ? ORDER BY m.seq DESC LIMIT ?",
                    ),
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
                    "SELECT admin, joined_seq, left_seq, delivered_seq, read_seq, private FROM receipt_cursors \
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
                    concat!(crate::store::sql::select_receipts!(), " WHERE m.gid = "),
                );
                select.push_bind(gid).push(" AND m.msgid IN ");
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
                use crate::domain::ReceiptState;
                let after = after_uid.unwrap_or("");
                let limit = i64::from(limit);
                // Either tier: the recipients are the members at send time
                // (each stay in the group that includes the message), and a
                // recipient has read it when how far others see they have
                // read reached it. Each stay table gives its first page.
                let sql: &'static str = match state {
                    ReceiptState::Read => {
                        "SELECT uid FROM (SELECT uid FROM (SELECT uid FROM receipt_cursors WHERE gid = ? AND uid > ? \
                         AND joined_seq < ? AND (left_seq IS NULL OR left_seq >= ?) AND uid <> ? AND shown_seq >= ? \
                         ORDER BY uid LIMIT ?) AS c UNION ALL SELECT uid FROM (SELECT uid FROM receipt_stays \
                         WHERE gid = ? AND uid > ? AND joined_seq < ? AND left_seq >= ? AND uid <> ? AND shown_seq >= ? \
                         ORDER BY uid LIMIT ?) AS s) AS r ORDER BY uid LIMIT ?"
                    }
                    ReceiptState::Unread => {
                        "SELECT uid FROM (SELECT uid FROM (SELECT uid FROM receipt_cursors WHERE gid = ? AND uid > ? \
                         AND joined_seq < ? AND (left_seq IS NULL OR left_seq >= ?) AND uid <> ? AND shown_seq < ? \
                         ORDER BY uid LIMIT ?) AS c UNION ALL SELECT uid FROM (SELECT uid FROM receipt_stays \
                         WHERE gid = ? AND uid > ? AND joined_seq < ? AND left_seq >= ? AND uid <> ? AND shown_seq < ? \
                         ORDER BY uid LIMIT ?) AS s) AS r ORDER BY uid LIMIT ?"
                    }
                };
                let mut query = sqlx::query_scalar(sql);
                for _ in 0..2 {
                    query = query
                        .bind(message.gid)
                        .bind(after)
                        .bind(message.seq)
                        .bind(message.seq)
                        .bind(message.sender_uid.as_str())
                        .bind(message.seq)
                        .bind(limit);
                }
                Ok(query.bind(limit).fetch_all(&self.pool).await?)
            }

            async fn pull(
                &self,
                sender_uid: &str,
                after: (i64, i64),
                limit: u32,
            ) -> Result<Vec<crate::store::MsgReceipt>, crate::error::ReceiptError> {
                Ok(sqlx::query_as(
                    concat!(
                        crate::store::sql::select_receipts!(),
                        " WHERE m.sender_uid = ? AND (m.changed_at_ms > ? OR (m.changed_at_ms = ? AND m.msgid > ?)) \
                         ORDER BY m.changed_at_ms, m.msgid LIMIT ?",
                    ),
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

            async fn unread_of(
                &self,
                uids: &[String],
            ) -> Result<Vec<crate::store::UserUnread>, crate::error::ReceiptError> {
                let mut rows = Vec::new();
                for chunk in uids.chunks(64) {
                    let mut select = sqlx::QueryBuilder::<$db>::new(
                        "SELECT c.uid, c.gid, g.last_seq, c.read_seq, c.delivered_seq \
                         FROM receipt_cursors c JOIN receipt_groups g ON g.gid = c.gid \
                         WHERE c.left_seq IS NULL AND c.uid IN ",
                    );
                    parley_server::db::push_list(&mut select, chunk.iter().cloned());
                    rows.extend(select.build_query_as().fetch_all(&self.pool).await?);
                }
                Ok(rows)
            }

            async fn expire_ledger(
                &self,
                cutoff_ms: i64,
                limit: u32,
            ) -> Result<crate::store::Expired, crate::error::ReceiptError> {
                let mut tx = self.pool.begin().await?;
                let outcome = crate::store::ledger::expire::<$db>(&mut tx, cutoff_ms, limit).await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn read_times(
                &self,
                gid: i64,
                seq: i64,
                uids: &[String],
            ) -> Result<Vec<(String, i64)>, crate::error::ReceiptError> {
                let mut conn = self.pool.acquire().await?;
                crate::store::ledger::read_times::<$db>(&mut conn, gid, seq, uids).await
            }

            async fn cursor_times(
                &self,
                gid: i64,
                seq: i64,
                uids: &[String],
            ) -> Result<Vec<(String, i64)>, crate::error::ReceiptError> {
                let mut times = Vec::with_capacity(uids.len());
                for chunk in uids.chunks(crate::store::sql::CHUNK) {
                    // The stay that includes the message: current, or closed.
                    let mut select = sqlx::QueryBuilder::<$db>::new(
                        "SELECT uid, shown_at_ms FROM (SELECT uid, shown_at_ms FROM receipt_cursors WHERE gid = ",
                    );
                    select.push_bind(gid).push(" AND joined_seq < ").push_bind(seq);
                    select.push(" AND (left_seq IS NULL OR left_seq >= ").push_bind(seq).push(") AND uid IN ");
                    parley_server::db::push_list(&mut select, chunk.iter().map(String::as_str));
                    select.push(" UNION ALL SELECT uid, shown_at_ms FROM receipt_stays WHERE gid = ").push_bind(gid);
                    select.push(" AND joined_seq < ").push_bind(seq).push(" AND left_seq >= ").push_bind(seq);
                    select.push(" AND uid IN ");
                    parley_server::db::push_list(&mut select, chunk.iter().map(String::as_str));
                    select.push(") AS t ORDER BY uid");
                    let rows: Vec<(String, i64)> = select.build_query_as().fetch_all(&self.pool).await?;
                    times.extend(rows);
                }
                Ok(times)
            }

            async fn set_privacy(
                &self,
                uid: &str,
                scope: crate::store::PrivacyScope,
                private: Option<bool>,
                now_ms: i64,
            ) -> Result<crate::store::Privacy, crate::error::ReceiptError> {
                let mut tx = self.pool.begin().await?;
                let outcome = crate::store::privacy::set::<$db>(&mut tx, Self::UPSERT_PRIVACY, uid, scope, private, now_ms).await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn privacy(
                &self,
                uid: &str,
                scope: crate::store::PrivacyScope,
            ) -> Result<crate::store::Privacy, crate::error::ReceiptError> {
                let mut conn = self.pool.acquire().await?;
                crate::store::privacy::read::<$db>(&mut conn, uid, scope).await
            }
        }
    };
}

pub(super) use impl_receipt_store;
