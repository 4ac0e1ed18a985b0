//! A group's batch of acks, in one transaction of a few multi-row statements:
//! the group row read with a shared lock, the members' cursor rows locked in
//! key order, the moved cursors written, the new readers added to each
//! message's count, and one read ack logged per reader whose shown read
//! position (see [`crate::domain::shown_after`]) passed a message that keeps
//! read times. A private reader's cursors move; what others see does not. Plain functions, generic over the backend;
//! the backend supplies its shared-lock read of the group row and its row-lock
//! suffix (empty on SQLite, where one connection serialises everything).

use std::collections::BTreeMap;

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use crate::{
    domain::{Cursors, Move, Planned, Standing, plan_acks, read_increments},
    error::ReceiptError,
    store::{MemberAck, sql::CHUNK},
};

/// How a backend locks: its shared-lock read of a group's last seq, and the
/// suffix that locks the rows a `SELECT` reads.
#[derive(Clone, Copy, Debug)]
pub(super) struct Locks {
    pub group_shared: &'static str,
    pub for_update: &'static str,
}

/// Applies `acks` by members of `gid` in order, inside the caller's
/// transaction: one outcome per ack (see [`ReceiptStore::ack_group`]).
///
/// [`ReceiptStore::ack_group`]: crate::store::ReceiptStore::ack_group
pub(super) async fn ack_group<DB>(
    conn: &mut DB::Connection,
    locks: Locks,
    gid: i64,
    acks: &[MemberAck],
    committed: Option<i64>,
    now_ms: i64,
) -> Result<Vec<Planned>, ReceiptError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String, i64, i64, i64, i64, bool): FromRow<'r, DB::Row>,
    for<'r> (i64, String, bool): FromRow<'r, DB::Row>,
{
    let group: Option<(i64,)> = sqlx::query_as::<DB, (i64,)>(locks.group_shared)
        .bind(gid)
        .fetch_optional(&mut *conn)
        .await?;
    let Some((last_seq,)) = group else {
        return Err(ReceiptError::refused(parley_server::Reason::GroupNotFound));
    };
    let mut uids: Vec<&str> = acks.iter().map(|a| a.uid.as_str()).collect();
    uids.sort_unstable();
    uids.dedup();
    let standing = lock_members::<DB>(conn, locks.for_update, gid, &uids).await?;
    let plan = plan_acks(
        acks.iter().map(|a| (a.uid.as_str(), a.up_to, a.kind)),
        last_seq.max(committed.unwrap_or(0)),
        &standing,
    );
    move_cursors::<DB>(conn, gid, &plan.moves, now_ms).await?;
    let read: Vec<&Move> = plan
        .moves
        .iter()
        .filter(|m| m.shown.1 > m.shown.0)
        .collect();
    let ledger = count_readers::<DB>(conn, gid, &read, now_ms).await?;
    log_reads::<DB>(conn, gid, &read, &ledger, now_ms).await?;
    Ok(plan.outcomes)
}

/// The current members among `uids`, their cursor rows locked until the
/// transaction ends (in key order, as every ack takes them).
async fn lock_members<DB>(
    conn: &mut DB::Connection,
    for_update: &'static str,
    gid: i64,
    uids: &[&str],
) -> Result<BTreeMap<String, Standing>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (String, i64, i64, i64, i64, bool): FromRow<'r, DB::Row>,
{
    let mut standing = BTreeMap::new();
    for chunk in uids.chunks(CHUNK) {
        let mut select = QueryBuilder::<DB>::new(
            "SELECT uid, joined_seq, delivered_seq, read_seq, shown_seq, private FROM receipt_cursors \
             WHERE gid = ",
        );
        select
            .push_bind(gid)
            .push(" AND left_seq IS NULL AND uid IN ");
        parley_server::db::push_list(&mut select, chunk.iter().copied());
        select.push(" ORDER BY uid").push(for_update);
        let rows: Vec<(String, i64, i64, i64, i64, bool)> =
            select.build_query_as().fetch_all(&mut *conn).await?;
        for (uid, joined, delivered, read, shown, private) in rows {
            let cursors = Cursors { delivered, read };
            let member = Standing {
                joined,
                cursors,
                shown,
                private,
            };
            standing.insert(uid, member);
        }
    }
    Ok(standing)
}

/// Writes the moved cursors and how far others see each member has read
/// (with when that last moved): one statement per chunk of members.
async fn move_cursors<DB>(
    conn: &mut DB::Connection,
    gid: i64,
    moves: &[Move],
    now_ms: i64,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
{
    for chunk in moves.chunks(CHUNK) {
        // Padded like the `IN` list: a repeated `WHEN` never matches first.
        let chunk: Vec<&Move> = parley_server::db::padded(chunk).collect();
        let mut update =
            QueryBuilder::<DB>::new("UPDATE receipt_cursors SET delivered_seq = CASE uid");
        for m in &chunk {
            update
                .push(" WHEN ")
                .push_bind(m.uid.as_str())
                .push(" THEN ")
                .push_bind(m.next.delivered);
        }
        update.push(" END, read_seq = CASE uid");
        for m in &chunk {
            update
                .push(" WHEN ")
                .push_bind(m.uid.as_str())
                .push(" THEN ")
                .push_bind(m.next.read);
        }
        update.push(" END, shown_seq = CASE uid");
        for m in &chunk {
            update
                .push(" WHEN ")
                .push_bind(m.uid.as_str())
                .push(" THEN ")
                .push_bind(m.shown.1);
        }
        // One shape whichever moved: a member whose shown position stayed
        // keeps its time (a NULL bind).
        update.push(" END, shown_at_ms = CASE uid");
        for m in &chunk {
            let moved = (m.shown.1 > m.shown.0).then_some(now_ms);
            update
                .push(" WHEN ")
                .push_bind(m.uid.as_str())
                .push(" THEN COALESCE(")
                .push_bind(moved)
                .push(", shown_at_ms)");
        }
        update.push(" END");
        update.push(", updated_at_ms = ").push_bind(now_ms);
        update
            .push(" WHERE gid = ")
            .push_bind(gid)
            .push(" AND uid IN ");
        parley_server::db::push_list(&mut update, chunk.iter().map(|m| m.uid.as_str()));
        update.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Adds the new readers to the read counts of the messages their shown read
/// positions passed, a window of seqs at a time: each window's senders are read,
/// then its counts written in one statement. Returns the seqs, in order, of
/// the messages in that span that keep read times.
async fn count_readers<DB>(
    conn: &mut DB::Connection,
    gid: i64,
    read: &[&Move],
    now_ms: i64,
) -> Result<Vec<i64>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String, bool): FromRow<'r, DB::Row>,
{
    let (Some(lo), Some(hi)) = (
        read.iter().map(|m| m.shown.0).min(),
        read.iter().map(|m| m.shown.1).max(),
    ) else {
        return Ok(Vec::new());
    };
    let window = i64::try_from(CHUNK).unwrap_or(i64::MAX);
    let mut ledger = Vec::new();
    let mut after = lo;
    while after < hi {
        let up_to = after.saturating_add(window).min(hi);
        // Messages sent with receipts off count no readers.
        let rows: Vec<(i64, String, bool)> = sqlx::query_as::<DB, (i64, String, bool)>(
            "SELECT seq, sender_uid, ledger FROM receipt_msgs WHERE gid = ? AND seq > ? AND seq <= ? \
             AND policy <> 3",
        )
        .bind(gid)
        .bind(after)
        .bind(up_to)
        .fetch_all(&mut *conn)
        .await?;
        ledger.extend(rows.iter().filter(|(_, _, l)| *l).map(|(seq, _, _)| *seq));
        let messages: Vec<(i64, String)> = rows
            .into_iter()
            .map(|(seq, sender, _)| (seq, sender))
            .collect();
        let counted = read_increments(read, &messages);
        if !counted.is_empty() {
            let mut update = QueryBuilder::<DB>::new(
                "UPDATE receipt_msgs SET read_count = read_count + CASE seq",
            );
            // Padded like the `IN` list: a repeated `WHEN` never matches first.
            for (seq, readers) in parley_server::db::padded(counted.iter()) {
                update
                    .push(" WHEN ")
                    .push_bind(*seq)
                    .push(" THEN ")
                    .push_bind(*readers);
            }
            update.push(" END, changed_at_ms = ").push_bind(now_ms);
            update
                .push(" WHERE gid = ")
                .push_bind(gid)
                .push(" AND seq IN ");
            parley_server::db::push_list(&mut update, counted.iter().map(|(seq, _)| *seq));
            update.build().execute(&mut *conn).await?;
        }
        after = up_to;
    }
    ledger.sort_unstable();
    Ok(ledger)
}

/// Logs one read ack for each reader whose shown read position passed a
/// message that keeps read times (`ledger`, sorted): "read everything up to here, now".
async fn log_reads<DB>(
    conn: &mut DB::Connection,
    gid: i64,
    read: &[&Move],
    ledger: &[i64],
    now_ms: i64,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
{
    let logged: Vec<&&Move> = read
        .iter()
        .filter(|m| passes_any(ledger, m.shown.0, m.shown.1))
        .collect();
    for chunk in parley_server::db::power_chunks(&logged, CHUNK) {
        let mut insert =
            QueryBuilder::<DB>::new("INSERT INTO msg_acks (gid, recv_uid, seq, changed_at_ms) ");
        insert.push_values(chunk, |mut row, m| {
            row.push_bind(gid)
                .push_bind(m.uid.as_str())
                .push_bind(m.shown.1)
                .push_bind(now_ms);
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Whether any of the sorted `seqs` lies in `(after, up_to]`.
fn passes_any(seqs: &[i64], after: i64, up_to: i64) -> bool {
    let first = seqs.partition_point(|&seq| seq <= after);
    seqs.get(first).is_some_and(|&seq| seq <= up_to)
}

#[cfg(test)]
mod tests {
    use super::passes_any;

    #[test]
    fn a_read_is_logged_only_when_it_passes_a_message_that_keeps_read_times() {
        let ledger = [3, 7, 8];
        assert!(passes_any(&ledger, 0, 3));
        assert!(passes_any(&ledger, 2, 10));
        assert!(passes_any(&ledger, 6, 7));
        assert!(!passes_any(&ledger, 3, 6));
        assert!(!passes_any(&ledger, 8, 20));
        assert!(!passes_any(&[], 0, 20));
    }
}
