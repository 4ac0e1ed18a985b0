//! InitReceipts for one group: every message of a batch that belongs to the
//! group is recorded in one transaction of a few multi-row statements, so a
//! busy group pays for one commit per batch rather than one per message.
//! Plain functions, generic over the backend.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use crate::{
    domain::{Cursors, ledger_state, wants_ledger},
    error::ReceiptError,
    store::{InitMessage, InitOutcome, sql::CHUNK},
};

/// A new message's receipt row, as planned.
struct Planned<'a> {
    message: &'a InitMessage,
    read_count: i64,
    ledger: bool,
}

/// Records `messages`, all of group `gid`, on `conn` (inside the caller's
/// transaction), and says for each, in order, whether it was new and whether
/// it has ledger rows. `upsert_group` is the backend's statement raising the
/// group's last seq. A message recorded before (or earlier in the same batch)
/// is left as it is.
pub(super) async fn init_group<DB>(
    conn: &mut DB::Connection,
    upsert_group: &'static str,
    gid: i64,
    messages: &[&InitMessage],
    ledger_max: i64,
) -> Result<Vec<InitOutcome>, ReceiptError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, bool): FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String, i64, i64): FromRow<'r, DB::Row>,
{
    let Some(top) = messages.iter().map(|m| m.seq).max() else {
        return Ok(Vec::new());
    };
    sqlx::query::<DB>(upsert_group)
        .bind(gid)
        .bind(top)
        .execute(&mut *conn)
        .await?;
    let seqs: BTreeSet<i64> = messages.iter().map(|m| m.seq).collect();
    let mut recorded: HashMap<i64, bool> = HashMap::new();
    for chunk in seqs.iter().copied().collect::<Vec<_>>().chunks(CHUNK) {
        let mut select =
            QueryBuilder::<DB>::new("SELECT seq, ledger FROM receipt_msgs WHERE gid = ");
        select.push_bind(gid).push(" AND seq IN ");
        parley_server::db::push_list(&mut select, chunk.iter().copied());
        let rows: Vec<(i64, bool)> = select.build_query_as().fetch_all(&mut *conn).await?;
        recorded.extend(rows);
    }

    let mut outcomes = Vec::with_capacity(messages.len());
    let mut planned = Vec::new();
    for message in messages {
        if let Some(&ledger) = recorded.get(&message.seq) {
            outcomes.push(InitOutcome {
                created: false,
                ledger,
            });
            continue;
        }
        // Acks that arrived before this message was recorded already moved
        // the cursors; they count from the start.
        let (read_count,): (i64,) = sqlx::query_as::<DB, (i64,)>(
            "SELECT COUNT(*) FROM receipt_cursors WHERE gid = ? AND read_seq >= ? AND joined_seq < ? \
             AND (left_seq IS NULL OR left_seq >= ?) AND uid <> ?",
        )
        .bind(gid)
        .bind(message.seq)
        .bind(message.seq)
        .bind(message.seq)
        .bind(message.sender_uid.as_str())
        .fetch_one(&mut *conn)
        .await?;
        let ledger = wants_ledger(
            message.need_receipt,
            message.recipient_count,
            message.recipients.len(),
            read_count,
            ledger_max,
        );
        recorded.insert(message.seq, ledger);
        outcomes.push(InitOutcome {
            created: true,
            ledger,
        });
        planned.push(Planned {
            message,
            read_count,
            ledger,
        });
    }
    if planned.is_empty() {
        return Ok(outcomes);
    }

    let listed: BTreeSet<&str> = planned
        .iter()
        .filter(|p| p.ledger)
        .flat_map(|p| p.message.recipients.iter().map(String::as_str))
        .collect();
    let listed: Vec<&str> = listed.into_iter().collect();
    let cursors = cursors_of::<DB>(conn, gid, &listed).await?;
    let rows: Vec<(&InitMessage, &str, i64)> = planned
        .iter()
        .filter(|p| p.ledger)
        .flat_map(|p| {
            p.message.recipients.iter().map(|uid| {
                let at = cursors.get(uid.as_str()).copied().unwrap_or(Cursors {
                    delivered: 0,
                    read: 0,
                });
                (p.message, uid.as_str(), ledger_state(at, p.message.seq))
            })
        })
        .collect();
    for chunk in rows.chunks(CHUNK) {
        let mut insert = QueryBuilder::<DB>::new(
            "INSERT INTO msg_acks (gid, recv_uid, seq, msgid, sender_uid, if_ack, changed_at_ms) ",
        );
        insert.push_values(chunk, |mut row, (message, uid, state)| {
            row.push_bind(gid)
                .push_bind(*uid)
                .push_bind(message.seq)
                .push_bind(message.msgid)
                .push_bind(message.sender_uid.as_str())
                .push_bind(*state)
                .push_bind(message.created_at_ms);
        });
        insert.build().execute(&mut *conn).await?;
    }
    for chunk in planned.chunks(CHUNK) {
        let mut insert = QueryBuilder::<DB>::new(
            "INSERT INTO receipt_msgs (gid, seq, msgid, sender_uid, recipient_count, read_count, \
             ledger, created_at_ms, changed_at_ms) ",
        );
        insert.push_values(chunk, |mut row, planned| {
            let message = planned.message;
            row.push_bind(gid)
                .push_bind(message.seq)
                .push_bind(message.msgid)
                .push_bind(message.sender_uid.as_str())
                .push_bind(message.recipient_count)
                .push_bind(planned.read_count)
                .push_bind(planned.ledger)
                .push_bind(message.created_at_ms)
                .push_bind(message.created_at_ms);
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(outcomes)
}

/// The cursors of those of `uids` who have a row in group `gid`.
async fn cursors_of<DB>(
    conn: &mut DB::Connection,
    gid: i64,
    uids: &[&str],
) -> Result<BTreeMap<String, Cursors>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (String, i64, i64): FromRow<'r, DB::Row>,
{
    let mut found = BTreeMap::new();
    for chunk in uids.chunks(CHUNK) {
        let mut select = QueryBuilder::<DB>::new(
            "SELECT uid, delivered_seq, read_seq FROM receipt_cursors WHERE gid = ",
        );
        select.push_bind(gid).push(" AND uid IN ");
        parley_server::db::push_list(&mut select, chunk.iter().copied());
        let rows: Vec<(String, i64, i64)> = select.build_query_as().fetch_all(&mut *conn).await?;
        found.extend(
            rows.into_iter()
                .map(|(uid, delivered, read)| (uid, Cursors { delivered, read })),
        );
    }
    Ok(found)
}
