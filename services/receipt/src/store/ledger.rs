//! The `msg_acks` ledger as a log of read acks: a row says a member had read
//! everything in a group up to `seq` at `changed_at_ms`. When a reader read a
//! message is the time of their first row at or past its seq; retention drops
//! rows by age. Plain functions, generic over the backend.

use std::collections::BTreeMap;

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use crate::{
    error::ReceiptError,
    store::{Expired, sql::CHUNK},
};

/// When each of `uids` first read message `seq` of group `gid`: (uid, time)
/// in uid order, for those with a logged read at or past it.
pub(super) async fn read_times<DB>(
    conn: &mut DB::Connection,
    gid: i64,
    seq: i64,
    uids: &[String],
) -> Result<Vec<(String, i64)>, ReceiptError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (String, Option<i64>): FromRow<'r, DB::Row>,
{
    let mut times = Vec::with_capacity(uids.len());
    for chunk in uids.chunks(CHUNK) {
        // Each reader's first logged read at or past the message: one range
        // of the (gid, recv_uid, seq) key, however many reads came after.
        let mut select = QueryBuilder::<DB>::new(
            "SELECT c.uid, (SELECT a.changed_at_ms FROM msg_acks a WHERE a.gid = c.gid \
             AND a.recv_uid = c.uid AND a.seq >= ",
        );
        select.push_bind(seq);
        select.push(" ORDER BY a.seq LIMIT 1) FROM receipt_cursors c WHERE c.gid = ");
        select.push_bind(gid).push(" AND c.uid IN ");
        parley_server::db::push_list(&mut select, chunk.iter().map(String::as_str));
        select.push(" ORDER BY c.uid");
        let rows: Vec<(String, Option<i64>)> =
            select.build_query_as().fetch_all(&mut *conn).await?;
        times.extend(rows.into_iter().filter_map(|(uid, at)| Some((uid, at?))));
    }
    Ok(times)
}

/// One step of retention, inside the caller's transaction: up to `limit`
/// messages sent before `cutoff_ms` leave the ledger tier, and up to `limit`
/// read acks logged before it are dropped (such a read covers only messages
/// sent before it, which are past retention too).
pub(super) async fn expire<DB>(
    conn: &mut DB::Connection,
    cutoff_ms: i64,
    limit: u32,
) -> Result<Expired, ReceiptError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'r> (i64, String, i64): FromRow<'r, DB::Row>,
{
    let messages: Vec<(i64, i64)> = sqlx::query_as::<DB, (i64, i64)>(
        "SELECT gid, seq FROM receipt_msgs WHERE ledger = ? AND created_at_ms < ? \
         ORDER BY created_at_ms LIMIT ?",
    )
    .bind(true)
    .bind(cutoff_ms)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut by_group = BTreeMap::<i64, Vec<i64>>::new();
    for (gid, seq) in &messages {
        by_group.entry(*gid).or_default().push(*seq);
    }
    for (gid, seqs) in &by_group {
        for chunk in seqs.chunks(CHUNK) {
            let mut update = QueryBuilder::<DB>::new("UPDATE receipt_msgs SET ledger = ");
            update
                .push_bind(false)
                .push(" WHERE gid = ")
                .push_bind(*gid)
                .push(" AND seq IN ");
            parley_server::db::push_list(&mut update, chunk.iter().copied());
            update.build().execute(&mut *conn).await?;
        }
    }

    let reads: Vec<(i64, String, i64)> = sqlx::query_as::<DB, (i64, String, i64)>(
        "SELECT gid, recv_uid, seq FROM msg_acks WHERE changed_at_ms < ? \
         ORDER BY changed_at_ms LIMIT ?",
    )
    .bind(cutoff_ms)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    for chunk in reads.chunks(CHUNK) {
        let mut delete = QueryBuilder::<DB>::new("DELETE FROM msg_acks WHERE ");
        // Padded: a repeated condition deletes nothing more.
        for (i, (gid, uid, seq)) in parley_server::db::padded(chunk).enumerate() {
            if i > 0 {
                delete.push(" OR ");
            }
            delete.push("(gid = ").push_bind(*gid);
            delete.push(" AND recv_uid = ").push_bind(uid.as_str());
            delete.push(" AND seq = ").push_bind(*seq).push(")");
        }
        delete.build().execute(&mut *conn).await?;
    }
    Ok(Expired {
        messages: u32::try_from(messages.len()).unwrap_or(u32::MAX),
        read_acks: u32::try_from(reads.len()).unwrap_or(u32::MAX),
    })
}
