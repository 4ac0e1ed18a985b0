//! The suite as separate processes (release binaries next to this one), on
//! MariaDB and a Redis of the benchmark's own, so each service's CPU time and
//! memory can be read from `/proc`.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use parley_server::{ServiceIdentity, credentials::Keys, serve::Secret};
use parley_testkit::TestRedis;
use sqlx::{Connection, mysql::MySqlConnection};

/// The HS256 secret the benchmark's gateway accepts.
pub const JWT_SECRET: &str = "parley-bench-secret-0123456789";

/// The five services, in start order.
pub const SERVICES: [&str; 5] = ["presence", "receipt", "notification", "message", "gateway"];

/// One running service process.
pub struct Service {
    /// Its name.
    pub name: &'static str,
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    /// Where it serves its Prometheus metrics.
    metrics: SocketAddr,
    child: Child,
}

/// Calls made so far: RPCs each service answered (its
/// `parley_rpc_requests_total`, streams counted once), and commands the
/// benchmark's Redis processed.
#[derive(Clone, Debug, Default)]
pub struct CallCounters {
    /// (service, RPCs it answered).
    pub rpcs: Vec<(&'static str, u64)>,
    /// Redis commands (`total_commands_processed`).
    pub redis_commands: u64,
}

/// The kinds of statement counted apart (MariaDB's `Com_<kind>`, which
/// counts prepared executions too).
pub const STATEMENT_KINDS: [&str; 6] = ["select", "insert", "update", "delete", "begin", "commit"];

/// MariaDB's server-wide counters at one moment.
#[derive(Clone, Copy, Debug)]
pub struct DbCounters {
    /// Rows inserted, updated and deleted (Handler_write/update/delete).
    pub rows: u64,
    /// Statements received (Questions).
    pub statements: u64,
    /// Statements of each of [`STATEMENT_KINDS`].
    pub by_kind: [u64; STATEMENT_KINDS.len()],
}

impl DbCounters {
    /// What was counted between `before` and these.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            rows: self.rows.saturating_sub(before.rows),
            statements: self.statements.saturating_sub(before.statements),
            by_kind: std::array::from_fn(|i| self.by_kind[i].saturating_sub(before.by_kind[i])),
        }
    }
}

/// Where the services' logs go: `bench-logs/` beside the benchmark binary.
pub fn log_dir() -> Result<PathBuf, String> {
    let dir = build_dir()?.join("bench-logs");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The running suite.
pub struct Cluster {
    /// The services, in [`SERVICES`] order.
    pub services: Vec<Service>,
    /// The MariaDB server URL (no database).
    pub mysql: String,
    /// The MariaDB server's process.
    mariadb_pid: u32,
    /// Whether its performance schema counts statements by their text.
    digests: bool,
    /// The benchmark's databases (dropped at the end).
    databases: Vec<String>,
    /// The benchmark's Redis, stopped with the cluster.
    _redis: TestRedis,
    /// How the load generator proves itself to each service (as a service
    /// of its own, `bench`, acting for users).
    callers: Vec<(&'static str, ServiceIdentity)>,
    /// The gateway's WebSocket address.
    pub gateway_ws: SocketAddr,
}

fn free_port() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}

/// The directory of the benchmark binary, where the release build put the
/// services too.
fn build_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    exe.parent()
        .map(PathBuf::from)
        .ok_or_else(|| "no directory for the benchmark binary".to_owned())
}

fn binary(name: &str) -> Result<PathBuf, String> {
    let path = build_dir()?.join(format!("parley-{name}"));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build the services first (make bench does)",
            path.display()
        ))
    }
}

impl Cluster {
    /// Starts the five services; `extra` adds environment per service (for
    /// example the notification service's FCM stand-in).
    pub async fn start(
        extra: &[(&str, &str, String)],
        mariadb: &parley_testkit::OwnMariaDb,
        digests: bool,
    ) -> Result<Self, String> {
        let mysql = mariadb.server_url();
        let tag = format!("{:08x}", rand::random::<u32>());
        let mut server = MySqlConnection::connect(&mysql)
            .await
            .map_err(|e| format!("MariaDB at {mysql}: {e} (make bench starts it)"))?;
        let mut databases = Vec::new();
        for service in ["message", "receipt", "notification"] {
            let name = format!("parley_bench_{tag}_{service}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
                .execute(&mut server)
                .await
                .map_err(|e| e.to_string())?;
            databases.push(name);
        }
        let redis = TestRedis::start().await;
        let mut addrs = Vec::new();
        let mut metrics = Vec::new();
        for _ in SERVICES {
            addrs.push(free_port()?);
            metrics.push(free_port()?);
        }
        let url = |i: usize| format!("http://{}", addrs[i]);
        let gateway_ws = free_port()?;
        let db = |i: usize| format!("{mysql}/{}", databases[i]);
        let names: Vec<&str> = SERVICES.iter().copied().chain(["bench"]).collect();
        let (private, public) = parley_server::credentials::generate(&names);
        let private: HashMap<String, Secret> = private.into_iter().collect();
        let private_key = |name: &str| private.get(name).map_or("", Secret::expose).to_owned();
        let keys = private
            .get("bench")
            .ok_or("no key for the load generator")
            .and_then(|key| Keys::new("bench", key, &public).map_err(|_| "bad bench key"))?;
        // One identity per callee, shared by every call to it, so the load
        // generator signs a token per callee rather than per client.
        let identity = ServiceIdentity::new("bench", Some(keys));
        let callers = SERVICES
            .iter()
            .map(|&callee| (callee, identity.to(callee)))
            .collect();
        let common = [
            ("PARLEY_SERVICE_PUBLIC_KEYS", public.clone()),
            ("PARLEY_RATE_LIMIT_PER_SECOND", "1000000".to_owned()),
            ("PARLEY_RATE_LIMIT_BURST", "1000000".to_owned()),
            ("PARLEY_MAX_CONCURRENT_REQUESTS", "100000".to_owned()),
            ("PARLEY_PRESENCE_URL", url(0)),
            ("PARLEY_RECEIPT_URL", url(1)),
            ("PARLEY_NOTIFICATION_URL", url(2)),
            ("PARLEY_MESSAGE_URL", url(3)),
            ("PARLEY_BUS_URL", redis.url()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        let own: [Vec<(&str, String)>; 5] = [
            vec![
                ("PARLEY_PRESENCE_LISTEN", addrs[0].to_string()),
                ("PARLEY_PRESENCE_REDIS_URL", redis.url()),
            ],
            vec![
                ("PARLEY_RECEIPT_LISTEN", addrs[1].to_string()),
                ("PARLEY_RECEIPT_DATABASE_URL", db(1)),
            ],
            vec![
                ("PARLEY_NOTIFICATION_LISTEN", addrs[2].to_string()),
                ("PARLEY_NOTIFICATION_DATABASE_URL", db(2)),
            ],
            vec![
                ("PARLEY_MESSAGE_LISTEN", addrs[3].to_string()),
                ("PARLEY_MESSAGE_DATABASE_URL", db(0)),
            ],
            vec![
                ("PARLEY_GATEWAY_LISTEN", addrs[4].to_string()),
                ("PARLEY_GATEWAY_ID", format!("bench-gw-{tag}")),
                ("PARLEY_GATEWAY_JWT_HS256_SECRET", JWT_SECRET.to_owned()),
                ("PARLEY_GATEWAY_WS_LISTEN", gateway_ws.to_string()),
            ],
        ];
        let mut cluster = Self {
            gateway_ws,
            services: Vec::new(),
            mysql,
            mariadb_pid: mariadb.pid(),
            digests,
            databases,
            _redis: redis,
            callers,
        };
        for (i, name) in SERVICES.into_iter().enumerate() {
            let log_path = cluster.log_path(name)?;
            let log = std::fs::File::create(&log_path)
                .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
            let mut command = Command::new(binary(name)?);
            command
                .env_clear()
                .envs(parley_server::runner::inherited_env())
                .envs(common.iter().map(|(k, v)| (*k, v.as_str())))
                .envs(own[i].iter().map(|(k, v)| (*k, v.as_str())))
                .env("PARLEY_SERVICE_KEY", private_key(name))
                .env("PARLEY_METRICS_LISTEN", metrics[i].to_string())
                .envs(
                    extra
                        .iter()
                        .filter(|(service, _, _)| *service == name)
                        .map(|(_, k, v)| (*k, v.as_str())),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            let child = command
                .spawn()
                .map_err(|e| format!("cannot start parley-{name}: {e}"))?;
            cluster.services.push(Service {
                name,
                addr: addrs[i],
                metrics: metrics[i],
                child,
            });
            cluster.wait_serving(i).await?;
        }
        Ok(cluster)
    }

    async fn wait_serving(&mut self, index: usize) -> Result<(), String> {
        let service = &mut self.services[index];
        let url = format!("http://{}", service.addr);
        for _ in 0..300 {
            if let Ok(Some(status)) = service.child.try_wait() {
                return Err(format!("parley-{} exited at start: {status}", service.name));
            }
            if let Ok(channel) = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| e.to_string())?
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest::default();
                if health.check(request).await.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "parley-{} did not start serving within 30 s",
            service.name
        ))
    }

    /// The gRPC URL of a service.
    pub fn url(&self, name: &str) -> String {
        let service = self.services.iter().find(|s| s.name == name);
        service.map_or_else(String::new, |s| format!("http://{}", s.addr))
    }

    /// The URL of the receipt service's database.
    pub fn receipt_database(&self) -> String {
        format!("{}/{}", self.mysql, self.databases[1])
    }

    /// The load generator's identity towards `callee`.
    pub fn caller_to(&self, callee: &str) -> Result<ServiceIdentity, String> {
        self.callers
            .iter()
            .find(|(name, _)| *name == callee)
            .map(|(_, identity)| identity.clone())
            .ok_or_else(|| format!("no service {callee}"))
    }

    /// CPU seconds (user + system) each service has used so far, then the
    /// MariaDB server's and the Redis server's (both the benchmark's own).
    pub fn cpu_seconds(&self) -> Vec<(&'static str, f64)> {
        let mut cpu: Vec<(&'static str, f64)> = self
            .services
            .iter()
            .map(|s| (s.name, process_cpu_seconds(s.child.id()).unwrap_or(0.0)))
            .collect();
        let mariadb = process_cpu_seconds(self.mariadb_pid);
        cpu.push(("mariadb", mariadb.unwrap_or(0.0)));
        let redis = self._redis.pid().and_then(process_cpu_seconds);
        cpu.push(("redis", redis.unwrap_or(0.0)));
        cpu
    }

    /// [`Self::cpu_seconds`], and then the load generator's own (this
    /// process, with the FCM stand-in and the bare streams it serves).
    pub fn cpu_seconds_with_load(&self) -> Vec<(&'static str, f64)> {
        let mut cpu = self.cpu_seconds();
        cpu.push((crate::load::LOAD_GENERATOR, own_cpu_seconds()));
        cpu
    }

    /// CPU seconds each process of [`Self::cpu_seconds_with_load`] has used
    /// since `before` (an earlier reading of it), divided by `per`.
    pub fn cpu_since(&self, before: &[(&'static str, f64)], per: f64) -> Vec<(&'static str, f64)> {
        before
            .iter()
            .zip(self.cpu_seconds_with_load())
            .map(|((name, before), (_, after))| (*name, (after - before) / per))
            .collect()
    }

    /// RPCs answered by each service so far, and Redis commands processed.
    pub async fn call_counters(&self) -> Result<CallCounters, String> {
        let mut rpcs = Vec::with_capacity(self.services.len());
        for service in &self.services {
            let text = scrape(service.metrics).await?;
            rpcs.push((service.name, sum_of(&text, "parley_rpc_requests_total")));
        }
        let client = deadpool_redis::redis::Client::open(self._redis.url())
            .map_err(|e| format!("Redis: {e}"))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("Redis: {e}"))?;
        let info: String = deadpool_redis::redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("Redis INFO: {e}"))?;
        let redis_commands = info
            .lines()
            .find_map(|line| line.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or("Redis INFO has no total_commands_processed")?;
        Ok(CallCounters {
            rpcs,
            redis_commands,
        })
    }

    /// One service's process id.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.child.id())
    }

    /// Where one service's log goes.
    pub fn log_path(&self, name: &str) -> Result<PathBuf, String> {
        Ok(log_dir()?.join(format!("parley-{name}.log")))
    }

    /// One service's Prometheus text.
    pub async fn metrics_text(&self, name: &str) -> Result<String, String> {
        let service = self
            .services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no service {name}"))?;
        scrape(service.metrics).await
    }

    /// Resident memory of one service, in bytes.
    pub fn rss_bytes(&self, name: &str) -> u64 {
        self.services
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| process_rss_bytes(s.child.id()))
            .unwrap_or(0)
    }

    /// MariaDB's counters of rows written and statements received,
    /// server-wide (the server is the benchmark's own).
    pub async fn db_counters(&self) -> Result<DbCounters, String> {
        db_counters(&self.mysql).await
    }

    /// Starts counting statements by their text afresh; nothing when the
    /// server does not count them.
    pub async fn reset_statements(&self) -> Result<(), String> {
        if !self.digests {
            return Ok(());
        }
        let mut conn = MySqlConnection::connect(&self.mysql)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::raw_sql("TRUNCATE performance_schema.events_statements_summary_by_digest")
            .execute(&mut conn)
            .await
            .map_err(|e| format!("statement counts: {e}"))?;
        Ok(())
    }

    /// The `limit` most frequent statements since [`Cluster::reset_statements`]
    /// as MariaDB normalises them (values replaced by `?`), with their counts
    /// and the database of the service that sent each; empty when the server
    /// does not count them. MariaDB 10.11 counts only statements sent as text
    /// this way (not executions of prepared ones, which show only in the
    /// totals by kind), so this lists each service's `BEGIN` and `COMMIT`.
    pub async fn top_statements(&self, limit: u32) -> Result<Vec<(String, u64)>, String> {
        if !self.digests {
            return Ok(Vec::new());
        }
        let mut conn = MySqlConnection::connect(&self.mysql)
            .await
            .map_err(|e| e.to_string())?;
        let rows: Vec<(Option<String>, Option<String>, i64)> = sqlx::query_as(
            "SELECT SCHEMA_NAME, LEFT(DIGEST_TEXT, 110), CAST(COUNT_STAR AS SIGNED) \
             FROM performance_schema.events_statements_summary_by_digest \
             WHERE COUNT_STAR > 0 ORDER BY COUNT_STAR DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| format!("statement counts: {e}"))?;
        Ok(rows
            .into_iter()
            .map(|(schema, text, count)| {
                let service = schema
                    .as_deref()
                    .and_then(|s| s.rsplit('_').next())
                    .unwrap_or("-");
                let text = text.unwrap_or_default();
                (
                    format!("[{service}] {text}"),
                    u64::try_from(count).unwrap_or(0),
                )
            })
            .collect())
    }

    /// Waits until the message outbox is empty and no push is pending: the
    /// work of one part must not run into the next. Returns how long it took
    /// and how many entries there were at first.
    pub async fn quiesce(&self, limit: Duration) -> Result<(Duration, i64), String> {
        let started = std::time::Instant::now();
        let mut conn = MySqlConnection::connect(&self.mysql)
            .await
            .map_err(|e| e.to_string())?;
        let count = format!(
            "SELECT (SELECT COUNT(*) FROM `{}`.msg_outbox) + (SELECT COUNT(*) FROM `{}`.push_pending)",
            self.databases[0], self.databases[2]
        );
        let mut first = None;
        loop {
            let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count.clone()))
                .fetch_one(&mut conn)
                .await
                .map_err(|e| format!("outbox count: {e}"))?;
            let backlog = *first.get_or_insert(left);
            if left == 0 {
                return Ok((started.elapsed(), backlog));
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "{left} outbox entries and pending pushes after {limit:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every service and drops the databases.
    pub async fn stop(mut self) {
        for service in self.services.iter_mut().rev() {
            let _ = service.child.kill();
            let _ = service.child.wait();
        }
        if let Ok(mut server) = MySqlConnection::connect(&self.mysql).await {
            for name in &self.databases {
                let drop = format!("DROP DATABASE IF EXISTS `{name}`");
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&mut server)
                    .await;
            }
        }
    }
}

/// Clock ticks per second for `/proc/<pid>/stat` (100 on Linux).
const TICKS: f64 = 100.0;

/// MariaDB's counters of rows written (inserted, updated, deleted) and of
/// statements received, in all and by kind, server-wide, on the server at
/// `server` (a URL without a database).
pub async fn db_counters(server: &str) -> Result<DbCounters, String> {
    let mut conn = MySqlConnection::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let status: Vec<(String, String)> = sqlx::query_as(
        "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
         WHERE VARIABLE_NAME IN ('HANDLER_WRITE', 'HANDLER_UPDATE', 'HANDLER_DELETE', \
         'QUESTIONS') OR VARIABLE_NAME LIKE 'COM\\_%'",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(|e| format!("MariaDB counters: {e}"))?;
    let value = |name: &str| {
        status
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(DbCounters {
        rows: ["HANDLER_WRITE", "HANDLER_UPDATE", "HANDLER_DELETE"]
            .iter()
            .map(|name| value(name))
            .sum(),
        statements: value("QUESTIONS"),
        by_kind: STATEMENT_KINDS.map(|kind| value(&format!("COM_{kind}"))),
    })
}

pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds this benchmark process (the load generator) has used so far.
pub fn own_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// One service's Prometheus text, over a plain HTTP/1.1 GET.
async fn scrape(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("metrics at {addr}: {e}"))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("metrics at {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("metrics at {addr}: {e}"))?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// Calls of one gRPC `method` (its full path) a service answered, whatever
/// their code, from its Prometheus text.
pub fn rpc_calls(text: &str, method: &str) -> u64 {
    let Some((service, method)) = method.trim_start_matches('/').split_once('/') else {
        return 0;
    };
    let labels = format!("grpc_service=\"{service}\",grpc_method=\"{method}\"");
    text.lines()
        .filter(|line| line.starts_with("parley_rpc_requests_total{") && line.contains(&labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// The sum of every sample of `series` in Prometheus text (each label set).
fn sum_of(text: &str, series: &str) -> u64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::sum_of;

    #[test]
    fn a_series_is_summed_over_its_label_sets_and_nothing_else() {
        let text = "# HELP parley_rpc_requests_total RPCs\n\
            # TYPE parley_rpc_requests_total counter\n\
            parley_rpc_requests_total{grpc_service=\"s\",grpc_method=\"a\",grpc_code=\"OK\"} 12\n\
            parley_rpc_requests_total{grpc_service=\"s\",grpc_method=\"b\",grpc_code=\"UNAVAILABLE\"} 3\n\
            parley_rpc_requests_total_other 100\n\
            parley_rpc_duration_seconds_count{grpc_service=\"s\",grpc_method=\"a\"} 12\n";
        assert_eq!(sum_of(text, "parley_rpc_requests_total"), 15);
        assert_eq!(sum_of("", "parley_rpc_requests_total"), 0);
        assert_eq!(super::rpc_calls(text, "/s/a"), 12);
        assert_eq!(super::rpc_calls(text, "/s/b"), 3);
        assert_eq!(super::rpc_calls(text, "/s/"), 0, "the whole method only");
        assert_eq!(super::rpc_calls(text, "/t/a"), 0, "the service too");
    }
}
