//! Storing a run of one sender's messages to one group, in one transaction:
//! the group's row and the sender's membership locked and read in one
//! statement ([`lock_group`], which membership changes take too), then per
//! message the message (whose insert checks its idempotency key; the
//! original is read only when the key is taken) and its outbox entry, and at
//! the end the group's new last seq. Plain functions, generic over the
//! backend; the backend supplies its row-lock suffix (empty on SQLite, whose
//! one connection runs one transaction at a time) and how it reads the id of
//! a row it inserted.

use parley_server::{Gid, MsgId, Reason, Seq};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use crate::{
    domain::{GroupKind, Role},
    error::MessageError,
    store::{MessageRecord, NewMessage, OUTBOX_MESSAGE, SendOutcome},
};

/// What the send path needs of a backend.
pub(super) struct Dialect<DB: Database> {
    /// Appended to a `SELECT` to lock the rows it reads.
    pub for_update: &'static str,
    /// The id of the row an `INSERT` of one row created.
    pub inserted_id: fn(&DB::QueryResult) -> i64,
}

/// A group's row as read under its lock, with the acting user's role.
pub(super) struct Locked {
    /// Group or direct conversation.
    pub kind: GroupKind,
    /// The last seq given out.
    pub last_seq: i64,
    /// Current members.
    pub member_count: i64,
    /// The acting user's role, when they are a current member.
    pub role: Option<Role>,
    /// The group's receipt policy code.
    pub receipt_policy: i64,
}

/// Locks group `gid`'s row, then `actor`'s membership row, until the
/// transaction ends (the order every writer of a group takes them, so seqs
/// stay dense and membership checks hold), and reads both in one statement.
pub(super) async fn lock_group<DB>(
    conn: &mut DB::Connection,
    for_update: &'static str,
    gid: i64,
    actor: &str,
) -> Result<Locked, MessageError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, i64, i64, Option<i64>, i64): FromRow<'r, DB::Row>,
{
    let mut lock = QueryBuilder::<DB>::new(
        "SELECT g.kind, g.last_seq, g.member_count, u.role, g.receipt_policy FROM chat_groups g \
         LEFT JOIN group_users u ON u.gid = g.gid AND u.left_seq IS NULL AND u.uid = ",
    );
    lock.push_bind(actor).push(" WHERE g.gid = ").push_bind(gid);
    lock.push(for_update);
    let locked: Option<(i64, i64, i64, Option<i64>, i64)> =
        lock.build_query_as().fetch_optional(&mut *conn).await?;
    let Some((kind, last_seq, member_count, role, receipt_policy)) = locked else {
        return Err(MessageError::refused(Reason::GroupNotFound));
    };
    let code = |raw: i64| i16::try_from(raw).unwrap_or(1);
    Ok(Locked {
        kind: GroupKind::from_code(code(kind)),
        last_seq,
        member_count,
        role: role.map(|r| Role::from_code(code(r))),
        receipt_policy,
    })
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
    for<'r> (i64, i64, i64, Option<i64>, i64): FromRow<'r, DB::Row>,
    for<'r> MessageRecord: FromRow<'r, DB::Row>,
{
    let Some(first) = messages.first() else {
        return Ok(Vec::new());
    };
    let (gid, sender) = (first.gid, &first.sender);
    if messages.iter().any(|m| m.gid != gid || m.sender != *sender) {
        return Err(MessageError::invalid(
            "messages",
            "a batch names one group and one sender",
        ));
    }
    let (gid, sender) = (gid.stored(), sender.as_str());

    let locked = lock_group::<DB>(conn, dialect.for_update, gid, sender).await?;
    if locked.role.is_none() {
        return Err(MessageError::refused(Reason::NotAMember));
    }
    let mut last_seq = locked.last_seq;
    let recipient_count = (locked.member_count - 1).max(0);

    // Each message in statements of one fixed text (prepared once per
    // connection): a run's length varies, and a statement per length would be
    // prepared again and again. Measured: multi-row statements for the run
    // shed more sends under overload than these (BENCHMARKS.md §10).
    let first_seq = last_seq;
    let mut outcomes = Vec::with_capacity(messages.len());
    for message in messages {
        // The insert itself checks the idempotency key: a message sent before
        // (or earlier in this run) fails it, and only then is the original
        // read. A failed statement leaves the transaction as it was, on
        // MariaDB and on SQLite alike.
        let inserted = sqlx::query::<DB>(
            "INSERT INTO group_msgs (gid, seq, sender_uid, client_msg_id, content, need_receipt, \
             recipient_count, created_at_ms, receipt_policy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(gid)
        .bind(last_seq + 1)
        .bind(sender)
        .bind(message.client_msg_id.as_str())
        .bind(message.content.as_slice())
        .bind(message.need_receipt)
        .bind(recipient_count)
        .bind(now_ms)
        .bind(locked.receipt_policy)
        .execute(&mut *conn)
        .await;
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(error)
                if error
                    .as_database_error()
                    .is_some_and(|e| e.is_unique_violation()) =>
            {
                let original = sqlx::query_as::<DB, MessageRecord>(
                    "SELECT msgid, gid, seq, sender_uid, client_msg_id, content, need_receipt, \
                     recipient_count, created_at_ms, receipt_policy FROM group_msgs \
                     WHERE gid = ? AND sender_uid = ? AND client_msg_id = ?",
                )
                .bind(gid)
                .bind(sender)
                .bind(message.client_msg_id.as_str())
                .fetch_optional(&mut *conn)
                .await?;
                // Not the idempotency key: the seq was taken, which the
                // group's lock rules out, so it is reported as it is.
                outcomes.push(SendOutcome::Duplicate(original.ok_or(error)?));
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        last_seq += 1;
        sqlx::query::<DB>(
            "INSERT INTO msg_outbox (kind, gid, seq, created_at_ms, trace_context) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(OUTBOX_MESSAGE)
        .bind(gid)
        .bind(last_seq)
        .bind(now_ms)
        .bind(message.trace_context.as_str())
        .execute(&mut *conn)
        .await?;
        outcomes.push(SendOutcome::Sent(MessageRecord {
            msgid: MsgId::try_from((dialect.inserted_id)(&inserted))?,
            gid: Gid::try_from(gid)?,
            seq: Seq::try_from(last_seq)?,
            sender_uid: sender.to_owned(),
            client_msg_id: message.client_msg_id.clone(),
            content: message.content.clone(),
            need_receipt: message.need_receipt,
            recipient_count,
            created_at_ms: now_ms,
            receipt_policy: locked.receipt_policy,
        }));
    }
    if last_seq > first_seq {
        sqlx::query::<DB>("UPDATE chat_groups SET last_seq = ? WHERE gid = ?")
            .bind(last_seq)
            .bind(gid)
            .execute(&mut *conn)
            .await?;
    }
    Ok(outcomes)
}
