//! The SQL both backends share. MySQL and SQLite accept the same statements
//! here except for upserts, row locks and how an inserted id is read, which
//! each backend supplies (`UPSERT_MEMBER_SUFFIX`, `FOR_UPDATE`, `inserted_id`).
//! The macro expands this one body for each backend's concrete sqlx types, so
//! there is one copy to review; the send path is a plain function generic over
//! the backend instead (`send.rs`).

/// Rows per multi-row insert (and ids per `IN` list): far below both
/// backends' bind-parameter limits.
pub(super) const INSERT_CHUNK: usize = 500;

/// Truncates an error text for the outbox's `last_error` column.
pub(super) fn short_error(error: &str) -> String {
    error.chars().take(255).collect()
}

macro_rules! impl_message_store {
    ($store:ty, $db:ty) => {
        impl $store {
            async fn insert_members(
                tx: &mut sqlx::Transaction<'_, $db>,
                gid: i64,
                members: &[(String, crate::domain::Role)],
                joined_seq: i64,
                now_ms: i64,
            ) -> Result<(), sqlx::Error> {
                for chunk in parley_server::db::power_chunks(members, crate::store::sql::INSERT_CHUNK) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO group_users (gid, uid, role, joined_seq, left_seq, joined_at_ms) ",
                    );
                    insert.push_values(chunk, |mut row, (uid, role)| {
                        row.push_bind(gid)
                            .push_bind(uid.as_str())
                            .push_bind(i64::from(role.code()))
                            .push_bind(joined_seq)
                            .push_bind(None::<i64>)
                            .push_bind(now_ms);
                    });
                    insert.push(Self::UPSERT_MEMBER_SUFFIX);
                    insert.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            async fn insert_membership_outbox(
                tx: &mut sqlx::Transaction<'_, $db>,
                gid: i64,
                uids: &[String],
                now_ms: i64,
            ) -> Result<(), sqlx::Error> {
                for chunk in parley_server::db::power_chunks(uids, crate::store::sql::INSERT_CHUNK) {
                    let mut insert =
                        sqlx::QueryBuilder::<$db>::new("INSERT INTO msg_outbox (kind, gid, uid, created_at_ms) ");
                    insert.push_values(chunk, |mut row, uid| {
                        row.push_bind(crate::store::OUTBOX_MEMBERSHIP)
                            .push_bind(gid)
                            .push_bind(uid.as_str())
                            .push_bind(now_ms);
                    });
                    insert.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            async fn current_members_among(
                tx: &mut sqlx::Transaction<'_, $db>,
                gid: i64,
                uids: &[parley_server::Uid],
            ) -> Result<std::collections::BTreeSet<String>, sqlx::Error> {
                let mut select = sqlx::QueryBuilder::<$db>::new("SELECT uid FROM group_users WHERE gid = ");
                select.push_bind(gid).push(" AND left_seq IS NULL AND uid IN ");
                parley_server::db::push_list(&mut select, uids.iter().map(|uid| uid.as_str()));
                let found: Vec<String> = select.build_query_scalar().fetch_all(&mut **tx).await?;
                Ok(found.into_iter().collect())
            }
        }

        impl crate::store::MessageStore for $store {
            async fn create_group(
                &self,
                group: &crate::domain::NewGroup,
                now_ms: i64,
            ) -> Result<(crate::store::GroupRecord, bool), crate::error::MessageError> {
                use crate::domain::{GroupKind, Role};
                const BY_DIRECT_KEY: &str = "SELECT gid, kind, name, creator_uid, last_seq, member_count, \
                     created_at_ms, receipt_policy FROM chat_groups WHERE direct_key = ?";
                if let Some(key) = &group.direct_key {
                    let existing = sqlx::query_as(BY_DIRECT_KEY).bind(key).fetch_optional(&self.pool).await?;
                    if let Some(existing) = existing {
                        return Ok((existing, true));
                    }
                }
                let member_count = i64::try_from(group.members.len() + 1).unwrap_or(i64::MAX);
                let mut tx = self.pool.begin().await?;
                let outcome: Result<_, crate::error::MessageError> = async {
                let inserted = sqlx::query(
                    "INSERT INTO chat_groups (kind, name, creator_uid, direct_key, last_seq, member_count, \
                     created_at_ms) VALUES (?, ?, ?, ?, 0, ?, ?)",
                )
                .bind(i64::from(group.kind.code()))
                .bind(group.name.as_str())
                .bind(group.creator.as_str())
                .bind(group.direct_key.as_deref())
                .bind(member_count)
                .bind(now_ms)
                .execute(&mut *tx)
                .await;
                let inserted = match (inserted, &group.direct_key) {
                    (Err(error), Some(_))
                        if error.as_database_error().is_some_and(|e| e.is_unique_violation()) =>
                    {
                        // The same direct conversation was created concurrently;
                        // this transaction wrote nothing, and that one is returned.
                        return Ok(None);
                    }
                    (result, _) => result?,
                };
                let gid = Self::inserted_id(&inserted);
                let creator_role = if group.kind == GroupKind::Group { Role::Admin } else { Role::Member };
                let mut members = vec![(group.creator.to_string(), creator_role)];
                members.extend(group.members.iter().map(|m| (m.to_string(), Role::Member)));
                Self::insert_members(&mut tx, gid, &members, 0, now_ms).await?;
                let uids: Vec<String> = members.into_iter().map(|(uid, _)| uid).collect();
                Self::insert_membership_outbox(&mut tx, gid, &uids, now_ms).await?;
                let record = crate::store::GroupRecord {
                    gid: parley_server::Gid::try_from(gid)?,
                    kind: i64::from(group.kind.code()),
                    name: group.name.clone(),
                    creator_uid: group.creator.to_string(),
                    last_seq: parley_server::Seq::MIN,
                    member_count,
                    created_at_ms: now_ms,
                    receipt_policy: i64::from(crate::domain::ReceiptPolicy::Full.code()),
                };
                Ok(Some(record))
                }
                .await;
                match (parley_server::db::finish(tx, outcome).await?, &group.direct_key) {
                    (Some(record), _) => Ok((record, false)),
                    (None, key) => {
                        let existing = sqlx::query_as(BY_DIRECT_KEY).bind(key).fetch_one(&self.pool).await?;
                        Ok((existing, true))
                    }
                }
            }

            async fn add_members(
                &self,
                change: crate::store::MembershipChange<'_>,
            ) -> Result<(Vec<String>, i64), crate::error::MessageError> {
                use crate::domain::{Role, check_membership_change};
                let gid = change.gid.stored();
                let mut tx = self.pool.begin().await?;
                let outcome: Result<_, crate::error::MessageError> = async {
                let crate::store::send::Locked { kind, last_seq, member_count, role, .. } =
                    crate::store::send::lock_group::<$db>(&mut tx, Self::FOR_UPDATE, gid, change.actor.as_str()).await?;
                check_membership_change(kind, change.actor, role, change.uids, false)?;
                let current = Self::current_members_among(&mut tx, gid, change.uids).await?;
                let added: Vec<String> =
                    change.uids.iter().map(|u| u.to_string()).filter(|u| !current.contains(u)).collect();
                if added.is_empty() {
                    return Ok((added, last_seq));
                }
                let added_count = i64::try_from(added.len()).unwrap_or(i64::MAX);
                if member_count.saturating_add(added_count) > change.max_members {
                    return Err(crate::error::MessageError::refused(parley_server::Reason::GroupFull));
                }
                // Someone added again keeps the stay that ended (one in which
                // messages were sent); their row starts the new one.
                let mut keep = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO group_user_stays (gid, uid, joined_seq, left_seq) \
                     SELECT gid, uid, joined_seq, left_seq FROM group_users WHERE gid = ",
                );
                keep.push_bind(gid).push(" AND left_seq > joined_seq AND uid IN ");
                parley_server::db::push_list(&mut keep, added.iter().map(|uid| uid.as_str()));
                keep.build().execute(&mut *tx).await?;
                let rows: Vec<(String, Role)> = added.iter().map(|u| (u.clone(), Role::Member)).collect();
                Self::insert_members(&mut tx, gid, &rows, last_seq, change.now_ms).await?;
                sqlx::query("UPDATE chat_groups SET member_count = member_count + ? WHERE gid = ?")
                    .bind(added_count)
                    .bind(gid)
                    .execute(&mut *tx)
                    .await?;
                Self::insert_membership_outbox(&mut tx, gid, &added, change.now_ms).await?;
                Ok((added, last_seq))
                }
                .await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn remove_members(
                &self,
                change: crate::store::MembershipChange<'_>,
            ) -> Result<Vec<String>, crate::error::MessageError> {
                use crate::domain::check_membership_change;
                let gid = change.gid.stored();
                let mut tx = self.pool.begin().await?;
                let outcome: Result<_, crate::error::MessageError> = async {
                let crate::store::send::Locked { kind, last_seq, role, .. } =
                    crate::store::send::lock_group::<$db>(&mut tx, Self::FOR_UPDATE, gid, change.actor.as_str()).await?;
                check_membership_change(kind, change.actor, role, change.uids, true)?;
                let current = Self::current_members_among(&mut tx, gid, change.uids).await?;
                if current.is_empty() {
                    return Ok(Vec::new());
                }
                let mut update = sqlx::QueryBuilder::<$db>::new("UPDATE group_users SET left_seq = ");
                update.push_bind(last_seq).push(" WHERE gid = ").push_bind(gid);
                update.push(" AND left_seq IS NULL AND uid IN ");
                parley_server::db::push_list(&mut update, current.iter().map(|uid| uid.as_str()));
                update.build().execute(&mut *tx).await?;
                let removed: Vec<String> = current.into_iter().collect();
                sqlx::query("UPDATE chat_groups SET member_count = member_count - ? WHERE gid = ?")
                    .bind(i64::try_from(removed.len()).unwrap_or(i64::MAX))
                    .bind(gid)
                    .execute(&mut *tx)
                    .await?;
                Self::insert_membership_outbox(&mut tx, gid, &removed, change.now_ms).await?;
                Ok(removed)
                }
                .await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn access(
                &self,
                gid: crate::domain::Gid,
                uid: &parley_server::Uid,
            ) -> Result<crate::store::Access, crate::error::MessageError> {
                let row: Option<(i64, Option<i64>, Option<i64>, Option<i64>)> = sqlx::query_as(
                    "SELECT g.last_seq, u.joined_seq, u.left_seq, u.role FROM chat_groups g \
                     LEFT JOIN group_users u ON u.gid = g.gid AND u.uid = ? WHERE g.gid = ?",
                )
                .bind(uid.as_str())
                .bind(gid.stored())
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    None => Err(crate::error::MessageError::refused(parley_server::Reason::GroupNotFound)),
                    Some((last_seq, Some(joined_seq), None, Some(role))) => Ok(crate::store::Access {
                        last_seq,
                        joined_seq,
                        role: crate::domain::Role::from_code(i16::try_from(role).unwrap_or(1)),
                    }),
                    Some(_) => Err(crate::error::MessageError::refused(parley_server::Reason::NotAMember)),
                }
            }

            async fn last_seqs(
                &self,
                gids: &[crate::domain::Gid],
            ) -> Result<Vec<(i64, i64)>, crate::error::MessageError> {
                let mut select =
                    sqlx::QueryBuilder::<$db>::new("SELECT gid, last_seq FROM chat_groups WHERE gid IN ");
                parley_server::db::push_list(&mut select, gids.iter().map(|gid| gid.stored()));
                select.push(" ORDER BY gid");
                Ok(select.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn list_members(
                &self,
                gid: crate::domain::Gid,
                after_uid: Option<&str>,
                limit: u32,
            ) -> Result<Vec<crate::store::MemberRecord>, crate::error::MessageError> {
                Ok(sqlx::query_as(
                    "SELECT uid, role, joined_seq, left_seq, joined_at_ms FROM group_users \
                     WHERE gid = ? AND left_seq IS NULL AND uid > ? ORDER BY uid LIMIT ?",
                )
                .bind(gid.stored())
                .bind(after_uid.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn list_groups(
                &self,
                uid: &parley_server::Uid,
                after_gid: i64,
                limit: u32,
            ) -> Result<Vec<crate::store::GroupRecord>, crate::error::MessageError> {
                Ok(sqlx::query_as(
                    "SELECT g.gid, g.kind, g.name, g.creator_uid, g.last_seq, g.member_count, g.created_at_ms, \
                     g.receipt_policy \
                     FROM group_users u JOIN chat_groups g ON g.gid = u.gid \
                     WHERE u.uid = ? AND u.left_seq IS NULL AND u.gid > ? ORDER BY u.gid LIMIT ?",
                )
                .bind(uid.as_str())
                .bind(after_gid)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn set_receipt_policy(
                &self,
                gid: crate::domain::Gid,
                actor: &parley_server::Uid,
                policy: crate::domain::ReceiptPolicy,
            ) -> Result<i64, crate::error::MessageError> {
                let mut tx = self.pool.begin().await?;
                let outcome: Result<i64, crate::error::MessageError> = async {
                    let locked = crate::store::send::lock_group::<$db>(&mut tx, Self::FOR_UPDATE, gid.stored(), actor.as_str()).await?;
                    crate::domain::may_set_receipt_policy(locked.kind, locked.role)?;
                    sqlx::query("UPDATE chat_groups SET receipt_policy = ? WHERE gid = ?")
                        .bind(i64::from(policy.code()))
                        .bind(gid.stored())
                        .execute(&mut *tx)
                        .await?;
                    Ok(locked.last_seq)
                }
                .await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn last_messages(
                &self,
                uid: &parley_server::Uid,
                gids: &[i64],
            ) -> Result<Vec<crate::store::MessageRecord>, crate::error::MessageError> {
                if gids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut select = sqlx::QueryBuilder::<$db>::new(
                    "SELECT m.msgid, m.gid, m.seq, m.sender_uid, m.client_msg_id, m.content, m.need_receipt, \
                     m.recipient_count, m.created_at_ms, m.receipt_policy \
                     FROM group_users u JOIN chat_groups g ON g.gid = u.gid \
                     JOIN group_msgs m ON m.gid = g.gid AND m.seq = g.last_seq \
                     WHERE u.left_seq IS NULL AND m.seq > u.joined_seq AND u.uid = ",
                );
                select.push_bind(uid.as_str()).push(" AND u.gid IN ");
                parley_server::db::push_list(&mut select, gids.iter().copied());
                Ok(select.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn send_batch(
                &self,
                messages: &[crate::store::NewMessage],
                now_ms: i64,
            ) -> Result<Vec<crate::store::SendOutcome>, crate::error::MessageError> {
                let dialect = crate::store::send::Dialect::<$db> {
                    for_update: Self::FOR_UPDATE,
                    inserted_id: Self::inserted_id,
                };
                let mut tx = self.pool.begin().await?;
                let outcome = crate::store::send::send_batch::<$db>(&mut tx, &dialect, messages, now_ms).await;
                parley_server::db::finish(tx, outcome).await
            }

            async fn messages_after(
                &self,
                gid: crate::domain::Gid,
                after_seq: i64,
                limit: u32,
            ) -> Result<Vec<crate::store::MessageRecord>, crate::error::MessageError> {
                Ok(sqlx::query_as(
                    "SELECT msgid, gid, seq, sender_uid, client_msg_id, content, need_receipt, recipient_count, \
                     created_at_ms, receipt_policy FROM group_msgs WHERE gid = ? AND seq > ? ORDER BY seq LIMIT ?",
                )
                .bind(gid.stored())
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn messages_by_id(
                &self,
                gid: crate::domain::Gid,
                msgids: &[i64],
                after_seq: i64,
            ) -> Result<Vec<crate::store::MessageRecord>, crate::error::MessageError> {
                let mut select = sqlx::QueryBuilder::<$db>::new(
                    "SELECT msgid, gid, seq, sender_uid, client_msg_id, content, need_receipt, recipient_count, \
                     created_at_ms, receipt_policy FROM group_msgs WHERE gid = ",
                );
                select.push_bind(gid.stored()).push(" AND seq > ").push_bind(after_seq).push(" AND msgid IN ");
                parley_server::db::push_list(&mut select, msgids.iter().copied());
                select.push(" ORDER BY seq");
                Ok(select.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn outbox_batch(
                &self,
                lane: crate::store::Lane,
                limit: u32,
            ) -> Result<Vec<crate::store::OutboxEvent>, crate::error::MessageError> {
                Ok(sqlx::query_as(
                    "SELECT id, kind, gid, seq, uid, attempts, trace_context FROM msg_outbox \
                     WHERE dead = 0 AND gid % ? = ? ORDER BY id LIMIT ?",
                )
                .bind(i64::from(lane.count.max(1)))
                .bind(i64::from(lane.index))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn committed(
                &self,
                gid: i64,
                seqs: &[i64],
            ) -> Result<Option<crate::store::Committed>, crate::error::MessageError> {
                let name: Option<String> = sqlx::query_scalar("SELECT name FROM chat_groups WHERE gid = ?")
                    .bind(gid)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(group_name) = name else {
                    return Ok(None);
                };
                let spans = sqlx::query_as(
                    "SELECT uid, joined_seq, left_seq FROM group_users WHERE gid = ? \
                     UNION ALL SELECT uid, joined_seq, left_seq FROM group_user_stays WHERE gid = ? \
                     ORDER BY uid, joined_seq",
                )
                .bind(gid)
                .bind(gid)
                .fetch_all(&self.pool)
                .await?;
                let mut messages = Vec::with_capacity(seqs.len());
                for chunk in seqs.chunks(crate::store::sql::INSERT_CHUNK) {
                    let mut select = sqlx::QueryBuilder::<$db>::new(
                        "SELECT msgid, gid, seq, sender_uid, client_msg_id, need_receipt, recipient_count, \
                         created_at_ms, receipt_policy FROM group_msgs WHERE gid = ",
                    );
                    select.push_bind(gid).push(" AND seq IN ");
                    parley_server::db::push_list(&mut select, chunk.iter().copied());
                    select.push(" ORDER BY seq");
                    messages.extend(select.build_query_as::<crate::store::MessageRecord>().fetch_all(&self.pool).await?);
                }
                messages.sort_by_key(|m| m.seq);
                Ok(Some(crate::store::Committed { group_name, spans, messages }))
            }

            async fn members_at(&self, gid: i64, seq: i64) -> Result<Vec<String>, crate::error::MessageError> {
                // A stay, current or closed, that includes the seq: a member
                // has at most one.
                Ok(sqlx::query_scalar(
                    "SELECT uid FROM group_users WHERE gid = ? AND joined_seq < ? \
                     AND (left_seq IS NULL OR left_seq >= ?) \
                     UNION ALL SELECT uid FROM group_user_stays WHERE gid = ? AND joined_seq < ? AND left_seq >= ? \
                     ORDER BY uid",
                )
                .bind(gid)
                .bind(seq)
                .bind(seq)
                .bind(gid)
                .bind(seq)
                .bind(seq)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn member_states(
                &self,
                gid: i64,
                uids: &[String],
            ) -> Result<Vec<crate::store::MemberRecord>, crate::error::MessageError> {
                let mut select = sqlx::QueryBuilder::<$db>::new(
                    "SELECT uid, role, joined_seq, left_seq, joined_at_ms FROM group_users WHERE gid = ",
                );
                select.push_bind(gid).push(" AND uid IN ");
                parley_server::db::push_list(&mut select, uids.iter().map(|uid| uid.as_str()));
                select.push(" ORDER BY uid");
                Ok(select.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn past_stays(
                &self,
                gid: i64,
                uids: &[String],
            ) -> Result<Vec<crate::store::MemberSpan>, crate::error::MessageError> {
                let mut select = sqlx::QueryBuilder::<$db>::new(
                    "SELECT uid, joined_seq, left_seq FROM group_user_stays WHERE gid = ",
                );
                select.push_bind(gid).push(" AND uid IN ");
                parley_server::db::push_list(&mut select, uids.iter().map(|uid| uid.as_str()));
                select.push(" ORDER BY uid, joined_seq");
                Ok(select.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn outbox_done(&self, ids: &[i64]) -> Result<(), crate::error::MessageError> {
                let mut delete = sqlx::QueryBuilder::<$db>::new("DELETE FROM msg_outbox WHERE id IN ");
                parley_server::db::push_list(&mut delete, ids.iter().copied());
                delete.build().execute(&self.pool).await?;
                Ok(())
            }

            async fn outbox_stats(&self) -> Result<crate::store::OutboxStats, crate::error::MessageError> {
                Ok(sqlx::query_as(
                    "SELECT CAST(COALESCE(SUM(CASE WHEN dead = 0 THEN 1 ELSE 0 END), 0) AS SIGNED) AS pending, \
                     CAST(COALESCE(SUM(CASE WHEN dead = 0 THEN 0 ELSE 1 END), 0) AS SIGNED) AS dead, \
                     MIN(CASE WHEN dead = 0 THEN created_at_ms END) AS oldest_ms FROM msg_outbox",
                )
                .fetch_one(&self.pool)
                .await?)
            }

            async fn outbox_failed(&self, id: i64, error: &str, dead: bool) -> Result<(), crate::error::MessageError> {
                sqlx::query("UPDATE msg_outbox SET attempts = attempts + 1, last_error = ?, dead = ? WHERE id = ?")
                    .bind(crate::store::sql::short_error(error))
                    .bind(dead)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(super) use impl_message_store;
