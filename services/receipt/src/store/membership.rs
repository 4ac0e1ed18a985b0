//! Membership as the message service describes it, applied to the cursor
//! rows: one row per member for their current (or last) stay, and closed
//! earlier stays in `receipt_stays`, so a member who left and joined again
//! keeps exact answers for each stay and none for the gap. A new row takes
//! the member's read privacy in force for the group. Plain functions,
//! generic over the backend; the backend supplies its upserts.

use std::collections::HashMap;

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};

use crate::{
    error::ReceiptError,
    store::{MemberChange, sql::CHUNK},
};

/// A backend's statements: the group row's upsert, the cursor rows' upsert
/// suffix (newer versions win), and the stays' (the higher shown position
/// wins).
#[derive(Clone, Copy, Debug)]
pub(super) struct Upserts {
    pub group: &'static str,
    pub cursor_suffix: &'static str,
    pub stay_suffix: &'static str,
}

/// A member's stored row, as a change finds it.
struct Stored {
    version: i64,
    joined_seq: i64,
    left_seq: Option<i64>,
    shown_seq: i64,
    shown_at_ms: i64,
}

/// A closed stay to record.
struct Stay<'a> {
    uid: &'a str,
    joined_seq: i64,
    left_seq: i64,
    shown_seq: i64,
    shown_at_ms: i64,
}

/// Applies `changes` of group `gid` newer than the stored ones, inside the
/// caller's transaction; returns how many.
pub(super) async fn apply<DB>(
    conn: &mut DB::Connection,
    upserts: Upserts,
    gid: i64,
    changes: &[MemberChange],
    now_ms: i64,
) -> Result<u32, ReceiptError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (String, i64, i64, Option<i64>, i64, i64): FromRow<'r, DB::Row>,
    for<'r> (String, i64, bool): FromRow<'r, DB::Row>,
{
    sqlx::query::<DB>(upserts.group)
        .bind(gid)
        .bind(0_i64)
        .execute(&mut *conn)
        .await?;
    let uids: Vec<&str> = changes.iter().map(|c| c.uid.as_str()).collect();
    let stored = stored_rows::<DB>(conn, gid, &uids).await?;
    let private = privacy_in_force::<DB>(conn, gid, &uids).await?;
    let newer = |c: &MemberChange| stored.get(&c.uid).is_none_or(|s| c.version > s.version);
    let applied = changes.iter().filter(|c| newer(c)).count();

    // Stays that closed: the stored one when the change starts a new stay
    // (its end from the change's history if this service missed the
    // leave, else the new stay's start bounds it), and any the change
    // lists (nothing was read in a stay this service never saw).
    let mut stays = Vec::new();
    for change in changes.iter().filter(|c| newer(c)) {
        if let Some(row) = stored.get(&change.uid)
            && change.joined_seq > row.joined_seq
        {
            let listed = change
                .past_stays
                .iter()
                .find(|(joined, _)| *joined == row.joined_seq)
                .map(|(_, left)| *left);
            let left_seq = row.left_seq.or(listed).unwrap_or(change.joined_seq);
            stays.push(Stay {
                uid: &change.uid,
                joined_seq: row.joined_seq,
                left_seq,
                shown_seq: row.shown_seq.min(left_seq),
                shown_at_ms: row.shown_at_ms,
            });
        }
        let archived = stored.get(&change.uid).map(|row| row.joined_seq);
        for &(joined_seq, left_seq) in &change.past_stays {
            if joined_seq < left_seq
                && left_seq <= change.joined_seq
                && archived != Some(joined_seq)
            {
                stays.push(Stay {
                    uid: &change.uid,
                    joined_seq,
                    left_seq,
                    shown_seq: joined_seq,
                    shown_at_ms: 0,
                });
            }
        }
    }
    for chunk in parley_server::db::power_chunks(&stays, CHUNK) {
        let mut insert = QueryBuilder::<DB>::new(
            "INSERT INTO receipt_stays (gid, uid, joined_seq, left_seq, shown_seq, shown_at_ms) ",
        );
        insert.push_values(chunk, |mut row, stay| {
            row.push_bind(gid)
                .push_bind(stay.uid)
                .push_bind(stay.joined_seq)
                .push_bind(stay.left_seq)
                .push_bind(stay.shown_seq)
                .push_bind(stay.shown_at_ms);
        });
        insert.push(upserts.stay_suffix);
        insert.build().execute(&mut *conn).await?;
    }

    for chunk in parley_server::db::power_chunks(changes, CHUNK) {
        let mut upsert = QueryBuilder::<DB>::new(
            "INSERT INTO receipt_cursors (gid, uid, admin, joined_seq, left_seq, delivered_seq, \
             read_seq, shown_seq, shown_at_ms, private, version, updated_at_ms) ",
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
                .push_bind(change.joined_seq)
                .push_bind(now_ms)
                .push_bind(private.get(change.uid.as_str()).copied().unwrap_or(false))
                .push_bind(change.version)
                .push_bind(now_ms);
        });
        upsert.push(upserts.cursor_suffix);
        upsert.build().execute(&mut *conn).await?;
    }
    Ok(u32::try_from(applied).unwrap_or(u32::MAX))
}

/// The stored rows of `uids` in `gid`.
async fn stored_rows<DB>(
    conn: &mut DB::Connection,
    gid: i64,
    uids: &[&str],
) -> Result<HashMap<String, Stored>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (String, i64, i64, Option<i64>, i64, i64): FromRow<'r, DB::Row>,
{
    let mut stored = HashMap::new();
    for chunk in uids.chunks(CHUNK) {
        let mut select = QueryBuilder::<DB>::new(
            "SELECT uid, version, joined_seq, left_seq, shown_seq, shown_at_ms FROM receipt_cursors \
             WHERE gid = ",
        );
        select.push_bind(gid).push(" AND uid IN ");
        parley_server::db::push_list(&mut select, chunk.iter().copied());
        let rows: Vec<(String, i64, i64, Option<i64>, i64, i64)> =
            select.build_query_as().fetch_all(&mut *conn).await?;
        for (uid, version, joined_seq, left_seq, shown_seq, shown_at_ms) in rows {
            let row = Stored {
                version,
                joined_seq,
                left_seq,
                shown_seq,
                shown_at_ms,
            };
            stored.insert(uid, row);
        }
    }
    Ok(stored)
}

/// The read privacy in force in `gid` for each of `uids` who chose one: the
/// group's own choice, else their choice for every group.
pub(super) async fn privacy_in_force<DB>(
    conn: &mut DB::Connection,
    gid: i64,
    uids: &[&str],
) -> Result<HashMap<String, bool>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (String, i64, bool): FromRow<'r, DB::Row>,
{
    let mut every: HashMap<String, bool> = HashMap::new();
    let mut own: HashMap<String, bool> = HashMap::new();
    for chunk in uids.chunks(CHUNK) {
        let mut select = QueryBuilder::<DB>::new(
            "SELECT uid, gid, private FROM receipt_privacy WHERE (gid = 0 OR gid = ",
        );
        select.push_bind(gid).push(") AND uid IN ");
        parley_server::db::push_list(&mut select, chunk.iter().copied());
        let rows: Vec<(String, i64, bool)> = select.build_query_as().fetch_all(&mut *conn).await?;
        for (uid, scope, private) in rows {
            if scope == 0 {
                every.insert(uid, private);
            } else {
                own.insert(uid, private);
            }
        }
    }
    every.extend(own);
    Ok(every)
}
