//! Database connections for the two storage backends: MySQL-compatible servers
//! (MySQL, MariaDB, TiDB) in production and an embedded SQLite file for `make dev`.

use std::{future::Future, str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions, MySql, Pool, Sqlite,
    migrate::{MigrateError, Migrator},
    mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

/// Which backend a database URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `mysql://` (also MariaDB and TiDB).
    MySql,
    /// `sqlite:` (a file, or `sqlite::memory:`).
    Sqlite,
}

/// A database URL that names neither backend.
#[derive(Debug, thiserror::Error)]
#[error("database URL must start with mysql:// or sqlite: (got scheme {scheme:?})")]
pub struct UnknownBackend {
    scheme: String,
}

impl Backend {
    /// The backend a URL names.
    pub fn of_url(url: &str) -> Result<Self, UnknownBackend> {
        if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Ok(Self::MySql)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            let scheme = url
                .split(':')
                .next()
                .unwrap_or_default()
                .chars()
                .take(16)
                .collect();
            Err(UnknownBackend { scheme })
        }
    }
}

/// Prepared statements each pooled MySQL connection keeps (sqlx's default).
/// The statements of a store's batches fit, lists included (they come in a
/// few lengths: see [`padded`] and [`power_chunks`]), so a cache does not
/// evict them: an eviction's unanswered `COM_STMT_CLOSE` holds the next
/// statement back about 40 ms (the server's delayed ACK; sqlx 0.9 does not set
/// `TCP_NODELAY`). A cache of 256 was measured in the benchmark but made the
/// MariaDB burst test time out internal calls (ARCHITECTURE.md, "Statements
/// and the cache").
const STATEMENT_CACHE: usize = 100;

/// Connects a MySQL-compatible pool.
pub async fn connect_mysql(url: &str, max_connections: u32) -> Result<MySqlPool, sqlx::Error> {
    let url = url.replacen("mariadb://", "mysql://", 1);
    let options = MySqlConnectOptions::from_str(&url)?
        .charset("utf8mb4")
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500))
        .statement_cache_capacity(STATEMENT_CACHE);
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// Opens (creating if needed) an SQLite database. One connection serialises all
/// access: SQLite has a single writer anyway, and this way no transaction ever
/// fails to upgrade its lock.
pub async fn connect_sqlite(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    if let Some(parent) = options
        .get_filename()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
    }
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await
}

/// A backend the runner can open and migrate: MySQL-compatible or SQLite.
pub trait Connect: sqlx::Database {
    /// A pool on `url`; `max_connections` applies to MySQL (SQLite keeps one).
    fn connect(
        url: &str,
        max_connections: u32,
    ) -> impl Future<Output = Result<Pool<Self>, sqlx::Error>> + Send;

    /// Applies `migrator`'s pending migrations on `pool`.
    fn migrate<'a>(
        pool: &'a Pool<Self>,
        migrator: &'a Migrator,
    ) -> impl Future<Output = Result<(), MigrateError>> + Send + 'a;
}

impl Connect for MySql {
    async fn connect(url: &str, max_connections: u32) -> Result<MySqlPool, sqlx::Error> {
        connect_mysql(url, max_connections).await
    }

    async fn migrate(pool: &MySqlPool, migrator: &Migrator) -> Result<(), MigrateError> {
        migrator.run(pool).await
    }
}

impl Connect for Sqlite {
    async fn connect(url: &str, _max_connections: u32) -> Result<SqlitePool, sqlx::Error> {
        connect_sqlite(url).await
    }

    async fn migrate(pool: &SqlitePool, migrator: &Migrator) -> Result<(), MigrateError> {
        migrator.run(pool).await
    }
}

/// A store over one pool of one backend, with its migrations: what the
/// runner opens, migrates and closes for a service.
pub trait Pooled: Clone + Send + Sync + Sized + 'static {
    /// The backend.
    type Db: Connect;
    /// The store's schema, as migrations.
    const MIGRATOR: Migrator;

    /// The store over `pool`.
    fn from_pool(pool: Pool<Self::Db>) -> Self;

    /// The store's pool.
    fn pool(&self) -> &Pool<Self::Db>;

    /// Opens the store on `url` with up to `max_connections` (MySQL).
    fn open(
        url: &str,
        max_connections: u32,
    ) -> impl Future<Output = Result<Self, sqlx::Error>> + Send {
        async move {
            Ok(Self::from_pool(
                Self::Db::connect(url, max_connections).await?,
            ))
        }
    }

    /// Applies pending migrations.
    fn migrate(&self) -> impl Future<Output = Result<(), MigrateError>> + Send {
        async move { Self::Db::migrate(self.pool(), &Self::MIGRATOR).await }
    }

    /// Closes the pool: waits for checked-out connections to come back, then
    /// closes every connection (SQLite checkpoints its log).
    fn close(&self) -> impl Future<Output = ()> + Send {
        let pool = self.pool().clone();
        async move { pool.close().await }
    }
}

/// Implements [`Pooled`] for a store struct with a `pool` field, on backend
/// `$db`, with the migrations in `$migrations` (relative to the calling
/// crate's manifest, as `sqlx::migrate!` reads it).
#[macro_export]
macro_rules! pooled {
    ($store:ty, $db:ty, $migrations:literal) => {
        impl $crate::db::Pooled for $store {
            type Db = $db;
            const MIGRATOR: ::sqlx::migrate::Migrator = ::sqlx::migrate!($migrations);

            fn from_pool(pool: ::sqlx::Pool<$db>) -> Self {
                Self { pool }
            }

            fn pool(&self) -> &::sqlx::Pool<$db> {
                &self.pool
            }
        }
    };
}

/// A service's store as the database URL chose it.
#[derive(Clone, Debug)]
pub enum Opened<M, S> {
    /// On a MySQL-compatible server.
    MySql(M),
    /// In an SQLite file.
    Sqlite(S),
}

impl<M, S> Opened<M, S>
where
    M: Pooled<Db = MySql>,
    S: Pooled<Db = Sqlite>,
{
    /// Opens the store `url` names, applying pending migrations first when
    /// `args` say so.
    pub async fn open(url: &DatabaseUrl, args: &DatabaseArgs) -> Result<Self, OpenError> {
        let opened = match url.backend() {
            Backend::MySql => Self::MySql(M::open(url.expose(), args.db_max_connections).await?),
            Backend::Sqlite => Self::Sqlite(S::open(url.expose(), 1).await?),
        };
        if args.migrate_on_start {
            opened.migrate().await?;
        }
        Ok(opened)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        match self {
            Self::MySql(store) => store.migrate().await,
            Self::Sqlite(store) => store.migrate().await,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Self::MySql(store) => store.close().await,
            Self::Sqlite(store) => store.close().await,
        }
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database could not be reached or opened.
    #[error("opening the database: {0}")]
    Connect(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migrating the database: {0}")]
    Migrate(#[from] MigrateError),
}

/// Flags of the services that keep a database (message, receipt and
/// notification): its pool and its migrations.
#[derive(Clone, Debug, clap::Args)]
pub struct DatabaseArgs {
    /// Connections in the MySQL pool (SQLite always uses one).
    #[arg(long, env = "PARLEY_DB_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,
    /// Apply pending migrations at start-up.
    #[arg(long, env = "PARLEY_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_follows_the_url_scheme() {
        assert_eq!(
            Backend::of_url("mysql://root@127.0.0.1/x").ok(),
            Some(Backend::MySql)
        );
        assert_eq!(
            Backend::of_url("sqlite:data/message.db").ok(),
            Some(Backend::Sqlite)
        );
        assert!(Backend::of_url("postgres://x").is_err());
    }

    #[test]
    fn lists_take_a_few_lengths_and_keep_their_values() {
        let lengths: Vec<usize> = [1, 2, 3, 5, 50, 64, 65, 1024, 1025, 5000]
            .into_iter()
            .map(padded_len)
            .collect();
        assert_eq!(lengths, [1, 2, 4, 8, 64, 64, 128, 1024, 2048, 5120]);
        let mut query = sqlx::QueryBuilder::<sqlx::MySql>::new("SELECT 1 WHERE x IN ");
        push_list(&mut query, [7i64, 8, 9]);
        assert_eq!(query.sql().as_str(), "SELECT 1 WHERE x IN (?, ?, ?, ?)");
        let mut empty = sqlx::QueryBuilder::<sqlx::MySql>::new("IN ");
        push_list(&mut empty, Vec::<i64>::new());
        assert_eq!(empty.sql().as_str(), "IN ()");
        let cases: Vec<(i64, i64)> = padded([(1, 10), (2, 20), (3, 30)]).collect();
        assert_eq!(cases, [(1, 10), (2, 20), (3, 30), (3, 30)]);
    }

    #[test]
    fn rows_go_in_chunks_of_a_few_lengths() {
        let lengths = |n: usize, max: usize| -> Vec<usize> {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = power_chunks(&rows, max).collect();
            let joined: Vec<usize> = chunks.concat();
            assert_eq!(joined, rows, "every row once, in order");
            chunks.iter().map(|c| c.len()).collect()
        };
        assert_eq!(lengths(0, 500), Vec::<usize>::new());
        assert_eq!(lengths(1, 500), [1]);
        assert_eq!(lengths(100, 500), [64, 32, 4]);
        assert_eq!(lengths(600, 500), [256, 256, 64, 16, 8]);
        assert_eq!(lengths(5, 4), [4, 1]);
        assert_eq!(lengths(3, 0), [1, 1, 1]);
    }
}

/// A database URL from config, with the backend it names. It may hold a
/// password, so it never prints.
#[derive(Clone)]
pub struct DatabaseUrl {
    url: String,
    backend: Backend,
}

impl DatabaseUrl {
    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The backend the URL names.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.url.split(':').next().unwrap_or_default();
        write!(f, "DatabaseUrl({scheme}:***)")
    }
}

impl FromStr for DatabaseUrl {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let backend = Backend::of_url(s)?;
        Ok(Self {
            url: s.to_owned(),
            backend,
        })
    }
}

/// Appends `(?, ?, …)` binding each of `values`: the list of an `IN` clause
/// in a dynamic query, padded (see [`padded`]) by repeating its last value,
/// which an `IN` list ignores.
pub fn push_list<DB, T>(query: &mut sqlx::QueryBuilder<DB>, values: impl IntoIterator<Item = T>)
where
    DB: sqlx::Database,
    T: for<'t> sqlx::Encode<'t, DB> + sqlx::Type<DB> + Clone,
{
    query.push("(");
    let mut list = query.separated(", ");
    for value in padded(values) {
        list.push_bind(value);
    }
    query.push(")");
}

/// `values`, then its last value repeated up to one of a few lengths (the
/// next power of two, then multiples of [`LIST_STEP`]): for the lists of a
/// dynamic statement where a repeat changes nothing (`IN`, `CASE … WHEN`).
/// Each length is a statement of its own in a connection's cache of prepared
/// statements, and a full cache evicts one with a `COM_STMT_CLOSE` that,
/// without `TCP_NODELAY` (sqlx 0.9), holds the next statement back until the
/// server's delayed ACK, about 40 ms; a few lengths keep the cache from filling.
pub fn padded<T: Clone>(values: impl IntoIterator<Item = T>) -> impl Iterator<Item = T> {
    let values: Vec<T> = values.into_iter().collect();
    let padding = padded_len(values.len()).saturating_sub(values.len());
    let last = values.last().cloned();
    values.into_iter().chain(
        last.into_iter()
            .flat_map(move |last| std::iter::repeat_n(last, padding)),
    )
}

/// `rows` in chunks whose lengths are powers of two, largest first, none
/// longer than `max`: for the multi-row `VALUES` of a dynamic insert, where a
/// repeated row is not harmless as in [`padded`], but where a few lengths
/// still keep the statement cache from filling (a list of 100 rows is three
/// statements: 64, 32 and 4 rows).
pub fn power_chunks<T>(rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let largest = floor_power_of_two(max.max(1));
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (chunk, tail) = rest.split_at(floor_power_of_two(rest.len()).min(largest));
        rest = tail;
        Some(chunk)
    })
}

/// The largest power of two at most `n` (which is not 0).
fn floor_power_of_two(n: usize) -> usize {
    1 << n.ilog2()
}

/// Past this many values, lists grow in steps of this many.
const LIST_STEP: usize = 1024;

/// The length a list of `len` values is padded to.
fn padded_len(len: usize) -> usize {
    if len <= LIST_STEP {
        len.next_power_of_two()
    } else {
        len.div_ceil(LIST_STEP).saturating_mul(LIST_STEP)
    }
}

/// Whether `error` is a transaction the database rolled back to break a
/// deadlock (SQLSTATE 40001, MySQL's 1213): it changed nothing and is safe to
/// run again whole.
pub fn is_deadlock(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40001")
}

/// How many times a unit of work the database aborted to break a deadlock is
/// run in all: two busy transactions rarely meet three times running.
pub const DEADLOCK_ATTEMPTS: u32 = 3;

/// Runs `work` again, up to [`DEADLOCK_ATTEMPTS`] times in all, while it fails
/// with an error `deadlocked` says the database rolled back to break a
/// deadlock. `work` must be one transaction (or one statement), so a rolled
/// back attempt left nothing behind.
pub async fn retrying_deadlocks<T, E, Fut>(
    mut work: impl FnMut() -> Fut,
    deadlocked: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match work().await {
            Err(error) if deadlocked(&error) && attempt < DEADLOCK_ATTEMPTS => {
                metrics::counter!("parley_db_deadlocks_retried_total").increment(1);
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Ends a transaction the way its outcome says: commit on success, roll back on
/// error. Every write path goes through here, so no early return leaves a
/// transaction (and its row locks) to a lazy rollback on an idle connection.
pub async fn finish<DB, T, E>(tx: sqlx::Transaction<'_, DB>, outcome: Result<T, E>) -> Result<T, E>
where
    DB: sqlx::Database,
    E: From<sqlx::Error>,
{
    match outcome {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(error) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rollback failed");
            }
            Err(error)
        }
    }
}
