//! InitReceipts for one group: every message of a batch that belongs to the
//! group is recorded in one transaction of a few statements (the group's
//! upsert, a read of which are recorded, a read of the members already past
//! them, one multi-row insert), so a busy group pays for one commit per batch
//! rather than one per message, and a message costs one row whatever its
//! group's size.
//! Plain functions, generic over the backend.

use std::collections::{BTreeSet, HashMap};

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use crate::{
    domain::{is_recipient, keeps_read_times},
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
/// it keeps read times (the ledger tier). `upsert_group` is the backend's statement raising the
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
    for<'r> (String, i64, Option<i64>, i64): FromRow<'r, DB::Row>,
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

    // Acks that arrived before these messages were recorded already moved
    // the cursors: each message counts them from the start. One read of the
    // stays whose shown read position reached the lowest new seq serves them
    // all.
    let lowest_new = messages
        .iter()
        .map(|m| m.seq)
        .filter(|seq| !recorded.contains_key(seq))
        .min();
    let ahead = match lowest_new {
        Some(lowest) => readers_from::<DB>(conn, gid, lowest).await?,
        None => Vec::new(),
    };

    let mut outcomes = Vec::with_capacity(messages.len());
    let mut planned = Vec::new();
    for message in messages {
        if let Some(&ledger) = recorded.get(&message.seq) {
            outcomes.push(InitOutcome {
                created: false,
                ledger,
                read_count: 0,
            });
            continue;
        }
        // A message sent with receipts off counts no one and keeps nothing.
        let counted = message.policy != crate::domain::Policy::Off;
        let read_count = ahead
            .iter()
            .filter(|reader| counted && reader.has_read(message.seq, &message.sender_uid))
            .count();
        let read_count = i64::try_from(read_count).unwrap_or(i64::MAX);
        let ledger =
            counted && keeps_read_times(message.need_receipt, message.recipient_count, ledger_max);
        recorded.insert(message.seq, ledger);
        outcomes.push(InitOutcome {
            created: true,
            ledger,
            read_count,
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

    for chunk in parley_server::db::power_chunks(&planned, CHUNK) {
        let mut insert = QueryBuilder::<DB>::new(
            "INSERT INTO receipt_msgs (gid, seq, msgid, sender_uid, recipient_count, read_count, \
             ledger, created_at_ms, changed_at_ms, policy) ",
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
                .push_bind(message.created_at_ms)
                .push_bind(i64::from(message.policy.code()));
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(outcomes)
}

/// A stay in the group (current or closed) whose shown read position is at
/// or past some seq.
struct Reader {
    uid: String,
    joined_seq: i64,
    left_seq: Option<i64>,
    shown_seq: i64,
}

impl Reader {
    /// Whether they count as a reader of message `seq` sent by `sender`: one of
    /// its recipients who read up to it.
    fn has_read(&self, seq: i64, sender: &str) -> bool {
        self.shown_seq >= seq
            && is_recipient(&self.uid, self.joined_seq, self.left_seq, seq, sender)
    }
}

/// The stays in group `gid`, current or closed, whose shown read position
/// is at or past `seq`.
async fn readers_from<DB>(
    conn: &mut DB::Connection,
    gid: i64,
    seq: i64,
) -> Result<Vec<Reader>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (String, i64, Option<i64>, i64): FromRow<'r, DB::Row>,
{
    let rows: Vec<(String, i64, Option<i64>, i64)> = sqlx::query_as::<DB, _>(
        "SELECT uid, joined_seq, left_seq, shown_seq FROM receipt_cursors WHERE gid = ? AND shown_seq >= ? \
         UNION ALL SELECT uid, joined_seq, left_seq, shown_seq FROM receipt_stays \
         WHERE gid = ? AND shown_seq >= ?",
    )
    .bind(gid)
    .bind(seq)
    .bind(gid)
    .bind(seq)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(uid, joined_seq, left_seq, shown_seq)| Reader {
            uid,
            joined_seq,
            left_seq,
            shown_seq,
        })
        .collect())
}
