//! Storing a run of one sender's messages to one group, in one transaction of
//! a few statements whatever the run's length: the group's row and the
//! sender's membership locked and read together, one read of the run's
//! idempotency keys, the messages and their outbox entries as multi-row
//! inserts, and the group's new last seq. Plain functions, generic over the
//! backend; the backend supplies its row-lock suffix (empty on SQLite, whose
//! one connection runs one transaction at a time) and how it reads the id of
//! a row it inserted.

use std::collections::{BTreeSet, HashMap};

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use crate::{
    error::MessageError,
    store::{MessageRecord, NewMessage, OUTBOX_MESSAGE, SendOutcome, sql::INSERT_CHUNK},
};

/// What the send path needs of a backend.
pub(super) struct Dialect<DB: Database> {
    /// Appended to a `SELECT` to lock the rows it reads.
    pub for_update: &'static str,
    /// The id of the row an `INSERT` of one row created.
    pub inserted_id: fn(&DB::QueryResult) -> i64,
}

/// Where each message of a run ends up.
enum Slot {
    /// Stored before this run: the original.
    Original(MessageRecord),
    /// Stored now, the `n`th new message of the run.
    New(usize),
    /// A repeat of the `n`th new message's key, later in the run.
    Repeat(usize),
}

/// Stores `messages` (one sender's, to one group) in order inside the
/// caller's transaction; see [`MessageStore::send_batch`].
///
/// [`MessageStore::send_batch`]: crate::store::MessageStore::send_batch
pub(super) async fn send_batch<DB>(
    conn: &mut DB::Connection,
    dialect: &Dialect<DB>,
    messages: &[NewMessage],
    now_ms: i64,
) -> Result<Vec<SendOutcome>, MessageError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s [u8]: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, i64, Option<i64>): FromRow<'r, DB::Row>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'r> MessageRecord: FromRow<'r, DB::Row>,
{
    let Some(first) = messages.first() else {
        return Ok(Vec::new());
    };
    let (gid, sender) = (first.gid, &first.sender);
    if messages.iter().any(|m| m.gid != gid || m.sender != *sender) {
        return Err(MessageError::invalid(
            "a batch names one group and one sender",
        ));
    }
    let (gid, sender) = (gid.get(), sender.as_str());

    // The group's row first, then the sender's membership row, as every
    // membership change takes them; held to the end, so seqs stay dense.
    let mut lock = QueryBuilder::<DB>::new(
        "SELECT g.last_seq, g.member_count, u.role FROM chat_groups g \
         LEFT JOIN group_users u ON u.gid = g.gid AND u.left_seq IS NULL AND u.uid = ",
    );
    lock.push_bind(sender)
        .push(" WHERE g.gid = ")
        .push_bind(gid);
    lock.push(dialect.for_update);
    let locked: Option<(i64, i64, Option<i64>)> =
        lock.build_query_as().fetch_optional(&mut *conn).await?;
    let Some((mut last_seq, member_count, role)) = locked else {
        return Err(MessageError::GroupNotFound);
    };
    if role.is_none() {
        return Err(MessageError::Denied("not a member of this group"));
    }
    let recipient_count = (member_count - 1).max(0);

    let originals = originals::<DB>(conn, gid, sender, messages).await?;
    let mut slots = Vec::with_capacity(messages.len());
    let mut fresh: Vec<MessageRecord> = Vec::new();
    let mut fresh_by_key: HashMap<&str, usize> = HashMap::new();
    for message in messages {
        let key = message.client_msg_id.as_str();
        if let Some(original) = originals.get(key) {
            slots.push(Slot::Original(original.clone()));
            continue;
        }
        if let Some(&earlier) = fresh_by_key.get(key) {
            slots.push(Slot::Repeat(earlier));
            continue;
        }
        last_seq += 1;
        fresh_by_key.insert(key, fresh.len());
        slots.push(Slot::New(fresh.len()));
        fresh.push(MessageRecord {
            msgid: 0,
            gid,
            seq: last_seq,
            sender_uid: sender.to_owned(),
            client_msg_id: message.client_msg_id.clone(),
            content: message.content.clone(),
            need_receipt: message.need_receipt,
            recipient_count,
            created_at_ms: now_ms,
        });
    }

    if !fresh.is_empty() {
        insert_messages::<DB>(conn, dialect, &mut fresh).await?;
        let traces: HashMap<&str, &str> = messages
            .iter()
            .map(|m| (m.client_msg_id.as_str(), m.trace_context.as_str()))
            .collect();
        for chunk in fresh.chunks(INSERT_CHUNK) {
            let mut outbox = QueryBuilder::<DB>::new(
                "INSERT INTO msg_outbox (kind, gid, seq, created_at_ms, trace_context) ",
            );
            outbox.push_values(chunk, |mut row, record| {
                let trace = traces
                    .get(record.client_msg_id.as_str())
                    .copied()
                    .unwrap_or_default();
                row.push_bind(OUTBOX_MESSAGE)
                    .push_bind(gid)
                    .push_bind(record.seq)
                    .push_bind(now_ms)
                    .push_bind(trace);
            });
            outbox.build().execute(&mut *conn).await?;
        }
        sqlx::query::<DB>("UPDATE chat_groups SET last_seq = ? WHERE gid = ?")
            .bind(last_seq)
            .bind(gid)
            .execute(&mut *conn)
            .await?;
    }
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Original(original) => SendOutcome::Duplicate(original),
            Slot::New(n) => SendOutcome::Sent(fresh[n].clone()),
            Slot::Repeat(n) => SendOutcome::Duplicate(fresh[n].clone()),
        })
        .collect())
}

/// The messages stored before under any of the run's idempotency keys.
async fn originals<DB>(
    conn: &mut DB::Connection,
    gid: i64,
    sender: &str,
    messages: &[NewMessage],
) -> Result<HashMap<String, MessageRecord>, MessageError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> MessageRecord: FromRow<'r, DB::Row>,
{
    let keys: BTreeSet<&str> = messages.iter().map(|m| m.client_msg_id.as_str()).collect();
    let keys: Vec<&str> = keys.into_iter().collect();
    let mut found = HashMap::new();
    for chunk in keys.chunks(INSERT_CHUNK) {
        let mut select = QueryBuilder::<DB>::new(
            "SELECT msgid, gid, seq, sender_uid, client_msg_id, content, need_receipt, \
             recipient_count, created_at_ms FROM group_msgs WHERE gid = ",
        );
        select
            .push_bind(gid)
            .push(" AND sender_uid = ")
            .push_bind(sender)
            .push(" AND client_msg_id IN ");
        parley_server::db::push_list(&mut select, chunk.iter().copied());
        let rows: Vec<MessageRecord> = select.build_query_as().fetch_all(&mut *conn).await?;
        found.extend(rows.into_iter().map(|r| (r.client_msg_id.clone(), r)));
    }
    Ok(found)
}

/// Inserts the new messages and fills in their ids: from the insert itself
/// for one row, read back by seq for several (a multi-row insert's ids need
/// not be consecutive on every MySQL-compatible server).
async fn insert_messages<DB>(
    conn: &mut DB::Connection,
    dialect: &Dialect<DB>,
    fresh: &mut [MessageRecord],
) -> Result<(), MessageError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s [u8]: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
{
    let Some(gid) = fresh.first().map(|r| r.gid) else {
        return Ok(());
    };
    let mut single = None;
    for chunk in fresh.chunks(INSERT_CHUNK) {
        let mut insert = QueryBuilder::<DB>::new(
            "INSERT INTO group_msgs (gid, seq, sender_uid, client_msg_id, content, need_receipt, \
             recipient_count, created_at_ms) ",
        );
        insert.push_values(chunk, |mut row, record| {
            row.push_bind(record.gid)
                .push_bind(record.seq)
                .push_bind(record.sender_uid.as_str())
                .push_bind(record.client_msg_id.as_str())
                .push_bind(record.content.as_slice())
                .push_bind(record.need_receipt)
                .push_bind(record.recipient_count)
                .push_bind(record.created_at_ms);
        });
        let result = insert.build().execute(&mut *conn).await?;
        single = Some((dialect.inserted_id)(&result));
    }
    if let ([record], Some(id)) = (&mut *fresh, single) {
        record.msgid = id;
        return Ok(());
    }
    let mut ids = HashMap::with_capacity(fresh.len());
    let seqs: Vec<i64> = fresh.iter().map(|r| r.seq).collect();
    for chunk in seqs.chunks(INSERT_CHUNK) {
        let mut select = QueryBuilder::<DB>::new("SELECT seq, msgid FROM group_msgs WHERE gid = ");
        select.push_bind(gid).push(" AND seq IN ");
        parley_server::db::push_list(&mut select, chunk.iter().copied());
        let rows: Vec<(i64, i64)> = select.build_query_as().fetch_all(&mut *conn).await?;
        ids.extend(rows);
    }
    for record in fresh.iter_mut() {
        record.msgid = ids
            .get(&record.seq)
            .copied()
            .ok_or(MessageError::Storage(sqlx::Error::RowNotFound))?;
    }
    Ok(())
}
