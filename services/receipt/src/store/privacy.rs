//! Read privacy: a user's choice for every group (`gid` 0 in
//! `receipt_privacy`) and per group, and the choice in force kept on each of
//! their cursor rows, where an ack reads it with the row it locks. Setting a
//! choice writes both in one transaction. Plain functions, generic over the
//! backend.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use crate::{
    error::ReceiptError,
    store::{Privacy, PrivacyScope},
};

/// The `receipt_privacy` key of a scope.
fn scope_gid(scope: PrivacyScope) -> i64 {
    match scope {
        PrivacyScope::EveryGroup => 0,
        PrivacyScope::Group(gid) => gid,
    }
}

/// `uid`'s privacy in `scope`.
pub(super) async fn read<DB>(
    conn: &mut DB::Connection,
    uid: &str,
    scope: PrivacyScope,
) -> Result<Privacy, ReceiptError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, bool): FromRow<'r, DB::Row>,
{
    let rows: Vec<(i64, bool)> = sqlx::query_as::<DB, (i64, bool)>(
        "SELECT gid, private FROM receipt_privacy WHERE uid = ? AND (gid = 0 OR gid = ?)",
    )
    .bind(uid)
    .bind(scope_gid(scope))
    .fetch_all(&mut *conn)
    .await?;
    let every_group = rows.iter().any(|&(gid, private)| gid == 0 && private);
    let group = match scope {
        PrivacyScope::EveryGroup => None,
        PrivacyScope::Group(_) => rows
            .iter()
            .find(|(gid, _)| *gid != 0)
            .map(|&(_, private)| private),
    };
    Ok(Privacy {
        every_group,
        group,
        private: group.unwrap_or(every_group),
    })
}

/// Records `uid`'s choice in `scope` (`None` forgets a group's own choice)
/// with the backend's `upsert` of a `receipt_privacy` row, and puts what is now in force on their cursor rows, inside the caller's
/// transaction; returns the privacy in force in `scope`.
pub(super) async fn set<DB>(
    conn: &mut DB::Connection,
    upsert: &'static str,
    uid: &str,
    scope: PrivacyScope,
    private: Option<bool>,
    now_ms: i64,
) -> Result<Privacy, ReceiptError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q, 's> &'s str: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, bool): FromRow<'r, DB::Row>,
{
    let gid = scope_gid(scope);
    match private {
        Some(private) => {
            sqlx::query::<DB>(upsert)
                .bind(uid)
                .bind(gid)
                .bind(private)
                .bind(now_ms)
                .execute(&mut *conn)
                .await?;
        }
        None => {
            sqlx::query::<DB>("DELETE FROM receipt_privacy WHERE uid = ? AND gid = ?")
                .bind(uid)
                .bind(gid)
                .execute(&mut *conn)
                .await?;
        }
    }
    let now = read::<DB>(conn, uid, scope).await?;
    match scope {
        // Every group of theirs without a choice of its own.
        PrivacyScope::EveryGroup => {
            sqlx::query::<DB>(
                "UPDATE receipt_cursors SET private = ? WHERE uid = ? AND gid NOT IN \
                 (SELECT gid FROM receipt_privacy WHERE uid = ? AND gid <> 0)",
            )
            .bind(now.private)
            .bind(uid)
            .bind(uid)
            .execute(&mut *conn)
            .await?;
        }
        PrivacyScope::Group(gid) => {
            sqlx::query::<DB>("UPDATE receipt_cursors SET private = ? WHERE gid = ? AND uid = ?")
                .bind(now.private)
                .bind(gid)
                .bind(uid)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(now)
}
