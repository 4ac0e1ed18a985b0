//! Queuing offline pushes for a run of messages in one transaction: one read
//! of which recipients have a push token, then the (user, group) pairs and the
//! queued messages as multi-row inserts. Plain functions, generic over the
//! backend; the backend supplies its ignoring insert into the queue and its
//! keep-the-existing-due upsert of a pair.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use super::{CHUNK, OfflineBatch, QueueError};

/// How a backend writes the queue: its insert into `push_queue` that skips
/// rows already there, the suffix that keeps an existing pair's due time, and
/// how it counts the rows a statement wrote.
pub(super) struct Statements<DB: Database> {
    pub insert_queue: &'static str,
    pub keep_pending: &'static str,
    pub rows_affected: fn(&DB::QueryResult) -> u64,
}

/// Queues each batch's recipients who have a push token, inside the caller's
/// transaction; returns how many pushes were queued. A pair already pending
/// keeps its due time; a pair new to the queue is due at its first batch's.
pub(super) async fn enqueue<DB>(
    conn: &mut DB::Connection,
    statements: &Statements<DB>,
    batches: &[OfflineBatch],
    now_ms: i64,
) -> Result<u64, QueueError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    let everyone: BTreeSet<&str> = batches
        .iter()
        .flat_map(|b| b.recipients.iter().map(String::as_str))
        .collect();
    let everyone: Vec<&str> = everyone.into_iter().collect();
    // Only users with a push token are queued: the others would be dropped
    // at push time anyway.
    let mut with_devices = BTreeSet::new();
    for chunk in everyone.chunks(CHUNK) {
        let mut select =
            QueryBuilder::<DB>::new("SELECT DISTINCT uid FROM push_devices WHERE uid IN ");
        parley_server::db::push_list(&mut select, chunk.iter().copied());
        let rows: Vec<(String,)> = select.build_query_as().fetch_all(&mut *conn).await?;
        with_devices.extend(rows.into_iter().map(|(uid,)| uid));
    }
    if with_devices.is_empty() {
        return Ok(0);
    }
    let queued: Vec<(&OfflineBatch, &str)> = batches
        .iter()
        .flat_map(|b| {
            b.recipients
                .iter()
                .filter(|uid| with_devices.contains(*uid))
                .map(move |uid| (b, uid.as_str()))
        })
        .collect();
    // Each pair once, due at its first batch's time.
    let mut pairs: BTreeMap<(&str, i64), i64> = BTreeMap::new();
    for (batch, uid) in &queued {
        pairs.entry((uid, batch.gid)).or_insert(batch.due_at_ms);
    }
    let pairs: Vec<((&str, i64), i64)> = pairs.into_iter().collect();
    // The pending rows first: a worker completing the same pair locks its
    // row before reading what is left.
    for chunk in parley_server::db::power_chunks(&pairs, CHUNK) {
        let mut pending =
            QueryBuilder::<DB>::new("INSERT INTO push_pending (uid, gid, due_at_ms) ");
        pending.push_values(chunk, |mut row, ((uid, gid), due)| {
            row.push_bind(*uid).push_bind(*gid).push_bind(*due);
        });
        pending.push(statements.keep_pending);
        pending.build().execute(&mut *conn).await?;
    }
    let mut count = 0;
    for chunk in parley_server::db::power_chunks(&queued, CHUNK) {
        let mut insert = QueryBuilder::<DB>::new(statements.insert_queue);
        insert.push_values(chunk, |mut row, (batch, uid)| {
            row.push_bind(*uid)
                .push_bind(batch.gid)
                .push_bind(batch.seq)
                .push_bind(batch.msgid)
                .push_bind(batch.sender_uid.as_str())
                .push_bind(batch.group_name.as_str())
                .push_bind(now_ms);
        });
        let written = insert.build().execute(&mut *conn).await?;
        count += (statements.rows_affected)(&written);
    }
    Ok(count)
}
