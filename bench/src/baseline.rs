//! The machine's own limits, measured in the same run on the same cores:
//! MariaDB commits and multi-row inserts on Parley's own tables, Redis PUBLISH
//! and SET, a minimal tonic unary call, and a bare in-process fan-out.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use deadpool_redis::redis;
use hdrhistogram::Histogram;
use sqlx::{Connection, MySql, QueryBuilder, mysql::MySqlConnection};
use tokio::net::TcpListener;

use crate::report::Quantiles;

/// Connections the services use by default (`PARLEY_DB_MAX_CONNECTIONS`).
pub const DB_CONNECTIONS: usize = 16;
/// Rows per multi-row insert (what the receipt service writes per chunk).
const ROWS_PER_INSERT: usize = 500;

/// Runs `task` on `workers` tasks for `duration`; returns operations per second.
async fn throughput<F, Fut>(workers: usize, duration: Duration, task: F) -> f64
where
    F: Fn(usize, Arc<AtomicBool>, Arc<AtomicU64>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| tokio::spawn(task(w, stop.clone(), done.clone())))
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let total = done.load(Ordering::Relaxed);
    for handle in handles {
        let _ = handle.await;
    }
    total as f64 / elapsed
}

/// The receipt service's migrations, in order.
const RECEIPT_MIGRATIONS: [&str; 5] = [
    include_str!("../../migrations/mysql/receipt/0001_receipt_groups.sql"),
    include_str!("../../migrations/mysql/receipt/0002_receipt_cursors.sql"),
    include_str!("../../migrations/mysql/receipt/0003_receipt_msgs.sql"),
    include_str!("../../migrations/mysql/receipt/0004_msg_acks.sql"),
    include_str!("../../migrations/mysql/receipt/0005_msg_acks_log.sql"),
];

/// A scratch database with the message and receipt tables.
pub struct Scratch {
    server: String,
    name: String,
}

impl Scratch {
    /// Creates it and applies the two services' migrations.
    pub async fn create(server: &str) -> Result<Self, String> {
        let name = format!("parley_bench_base_{:08x}", rand::random::<u32>());
        let mut conn = MySqlConnection::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let scratch = Self {
            server: server.to_owned(),
            name,
        };
        let mut db = scratch.connect().await?;
        sqlx::migrate!("../migrations/mysql/message")
            .run(&mut db)
            .await
            .map_err(|e| e.to_string())?;
        // The receipt service's tables, as its migrations leave them (their
        // versions would clash with the message service's in one history
        // table, so they are applied as plain SQL).
        for sql in RECEIPT_MIGRATIONS {
            sqlx::raw_sql(sql)
                .execute(&mut db)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(scratch)
    }

    pub(crate) async fn connect(&self) -> Result<MySqlConnection, String> {
        MySqlConnection::connect(&format!("{}/{}", self.server, self.name))
            .await
            .map_err(|e| e.to_string())
    }

    /// The server's URL (no database).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Drops it.
    pub async fn drop(self) {
        if let Ok(mut conn) = MySqlConnection::connect(&self.server).await {
            let sql = format!("DROP DATABASE IF EXISTS `{}`", self.name);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
        }
    }

    /// [`DB_CONNECTIONS`] connections, one per worker.
    async fn connections(&self) -> Result<Arc<Vec<tokio::sync::Mutex<MySqlConnection>>>, String> {
        let mut conns = Vec::new();
        for _ in 0..DB_CONNECTIONS {
            conns.push(tokio::sync::Mutex::new(self.connect().await?));
        }
        Ok(Arc::new(conns))
    }

    /// Single-row INSERT commits per second into `group_msgs`, one per
    /// autocommit statement, on [`DB_CONNECTIONS`] connections.
    pub async fn single_row_commits(&self, duration: Duration) -> Result<f64, String> {
        self.statements_per_second(duration, 1, |worker, seq| {
            let mut insert = QueryBuilder::new(
                "INSERT INTO group_msgs (gid, seq, sender_uid, client_msg_id, content, \
                 need_receipt, recipient_count, created_at_ms) VALUES (",
            );
            insert
                .separated(", ")
                .push_bind(worker)
                .push_bind(seq)
                .push_bind("bench-sender")
                .push_bind(format!("c{seq}"))
                .push_bind(vec![b'x'; 16]);
            insert.push(", 1, 199, 0)");
            insert
        })
        .await
    }

    /// Rows per second written by 500-row INSERTs into `msg_acks`.
    pub async fn multi_row_inserts(&self, duration: Duration) -> Result<f64, String> {
        self.statements_per_second(duration, ROWS_PER_INSERT as u64, |worker, seq| {
            let mut insert =
                QueryBuilder::new("INSERT INTO msg_acks (gid, recv_uid, seq, changed_at_ms) ");
            insert.push_values(0..ROWS_PER_INSERT, |mut row, r| {
                row.push_bind(worker)
                    .push_bind(format!("u{r:04}"))
                    .push_bind(seq)
                    .push_bind(0i64);
            });
            insert
        })
        .await
    }

    /// Runs `statement(worker, seq)` in a loop on each of [`DB_CONNECTIONS`]
    /// connections for `duration`; `rows` per statement that succeeds, per second.
    async fn statements_per_second(
        &self,
        duration: Duration,
        rows: u64,
        statement: fn(i64, i64) -> QueryBuilder<MySql>,
    ) -> Result<f64, String> {
        let conns = self.connections().await?;
        Ok(throughput(DB_CONNECTIONS, duration, |w, stop, done| {
            let conns = conns.clone();
            async move {
                let mut conn = conns[w].lock().await;
                let mut seq = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let mut query = statement(w as i64 + 1, seq);
                    if query.build().execute(&mut *conn).await.is_ok() {
                        done.fetch_add(rows, Ordering::Relaxed);
                    }
                }
            }
        })
        .await)
    }
}

/// Redis PUBLISH and SET operations per second, one command per round trip,
/// on [`DB_CONNECTIONS`] connections.
pub async fn redis_ops(url: &str, duration: Duration) -> Result<(f64, f64), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conns = Vec::new();
    for _ in 0..DB_CONNECTIONS {
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        conns.push(conn);
    }
    let conns = Arc::new(conns);
    let run = |publish: bool| {
        let conns = conns.clone();
        throughput(DB_CONNECTIONS, duration, move |w, stop, done| {
            let mut conn = conns[w].clone();
            async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let command = if publish {
                        redis::cmd("PUBLISH").arg("parley-bench").arg(n).clone()
                    } else {
                        redis::cmd("SET")
                            .arg(format!("parley-bench:{w}"))
                            .arg(n)
                            .clone()
                    };
                    if command.query_async::<()>(&mut conn).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let publish = run(true).await;
    let set = run(false).await;
    Ok((publish, set))
}

/// Calls in flight for the unary baseline.
pub const UNARY_IN_FLIGHT: usize = 64;

/// A minimal tonic unary call (`grpc.health.v1.Health/Check` on a bare server
/// over loopback): calls per second and latency.
pub async fn tonic_unary(in_flight: usize, duration: Duration) -> Result<(f64, Quantiles), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let histogram = Arc::new(std::sync::Mutex::new(new_histogram()));
    let rate = throughput(in_flight, duration, |_, stop, done| {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let histogram = histogram.clone();
        async move {
            let mut local = new_histogram();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let request = tonic_health::pb::HealthCheckRequest::default();
                if client.check(request).await.is_ok() {
                    let _ = local.record(micros(started.elapsed()));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Ok(mut h) = histogram.lock() {
                let _ = h.add(&local);
            }
        }
    })
    .await;
    server.abort();
    let quantiles = histogram
        .lock()
        .map(|h| Quantiles::of(&h))
        .map_err(|_| "histogram poisoned".to_owned())?;
    Ok((rate, quantiles))
}

/// A bare fan-out: one producer hands each message to `subscribers` tokio
/// channels, each drained by its own task. Deliveries per second.
pub async fn bare_fanout(subscribers: usize, duration: Duration) -> f64 {
    let delivered = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..subscribers {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<[u8]>>(1024);
        senders.push(tx);
        let delivered = delivered.clone();
        consumers.push(tokio::spawn(async move {
            while rx.recv().await.is_some() {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let message: Arc<[u8]> = Arc::from(vec![b'x'; 16]);
    while started.elapsed() < duration {
        for tx in &senders {
            let _ = tx.send(message.clone()).await;
        }
    }
    drop(senders);
    let elapsed = started.elapsed().as_secs_f64();
    for consumer in consumers {
        let _ = consumer.await;
    }
    delivered.load(Ordering::Relaxed) as f64 / elapsed
}

/// A histogram of microseconds up to one minute, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid histogram bounds")
}

/// A duration in whole microseconds (at least 1).
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}
