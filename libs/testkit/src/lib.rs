//! Test support shared by the contract and integration suites: a fresh
//! database per test (a new MariaDB schema, or an SQLite file in a temporary
//! directory) and waiting on a condition instead of sleeping.

#![forbid(unsafe_code)]

pub mod apns;
pub mod fcm;
mod stand_in;

use std::{future::Future, time::Duration};

use sqlx::{Connection, mysql::MySqlConnection};

/// Where the test MariaDB/MySQL server is: `PARLEY_TEST_MYSQL_URL`, by default
/// `mysql://root@127.0.0.1:3306` (what `make test` starts when it is absent).
pub fn mysql_server_url() -> String {
    std::env::var("PARLEY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// Writes into `dir` a CA of its own (`ca.pem`) and a certificate for
/// 127.0.0.1 that it signed (`server.pem`, key in `server.key`).
pub fn write_certificates(dir: &std::path::Path) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::new()).expect("CA parameters");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "parley test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("server parameters")
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    for (name, pem) in [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).expect("write a certificate");
    }
}

/// A free port on 127.0.0.1 (free when asked; a server binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
async fn accepting(what: &str, port: u16) {
    let addr = format!("127.0.0.1:{port}");
    eventually(what, Duration::from_secs(30), || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(addr).await.ok().map(drop) }
    })
    .await;
}

/// A MariaDB server of a test's or the benchmark's own, on a private data
/// directory and port, so nobody else's statements reach it. Its settings are
/// the compiled defaults with Debian's character set (`utf8mb4`).
pub struct OwnMariaDb {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl OwnMariaDb {
    /// A server with an empty database `parley` that takes only TLS
    /// connections, its certificate for 127.0.0.1 signed by a CA of its own
    /// ([`OwnMariaDb::ca_file`]).
    pub async fn start_tls() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        write_certificates(dir.path());
        let file = |name: &str| format!("{}", dir.path().join(name).display());
        let tls = vec![
            "--require-secure-transport=ON".to_owned(),
            format!("--ssl-cert={}", file("server.pem")),
            format!("--ssl-key={}", file("server.key")),
            format!("--ssl-ca={}", file("ca.pem")),
            "--innodb-buffer-pool-size=16M".to_owned(),
        ];
        let server = Self::start_in(dir, &tls).await;
        let admin = format!(
            "{}/?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
            server.server_url(),
            server.ca_file().display()
        );
        server.create_database(&admin).await;
        server
    }

    /// A server in the clear, with `args` added to its command line.
    pub async fn start(args: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::start_in(dir, args).await
    }

    async fn start_in(dir: tempfile::TempDir, args: &[String]) -> Self {
        let user = std::process::Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|| "root".to_owned());
        let data = dir.path().join("data");
        let installed = std::process::Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--user={user}"))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("mariadb-install-db is required (run `make test`): {e}"));
        assert!(
            installed.success(),
            "mariadb-install-db failed: {installed}"
        );
        let port = free_port();
        let file = |name: &str| format!("{}", dir.path().join(name).display());
        let child = std::process::Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--user={user}"))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", file("mariadb.sock")))
            .arg(format!("--pid-file={}", file("mariadb.pid")))
            .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
            .args([
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
            ])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("mariadbd is required (run `make test`): {e}"));
        let server = Self { port, dir, child };
        accepting("the MariaDB of our own accepts connections", port).await;
        server
    }

    /// Creates the database `parley` through `admin_url`, once the server
    /// answers there.
    async fn create_database(&self, admin_url: &str) {
        let mut admin = eventually(
            "the MariaDB of our own answers",
            Duration::from_secs(30),
            || {
                let url = admin_url.to_owned();
                async move { MySqlConnection::connect(&url).await.ok() }
            },
        )
        .await;
        sqlx::raw_sql("CREATE DATABASE parley")
            .execute(&mut admin)
            .await
            .expect("create the database");
        let _ = admin.close().await;
    }

    /// The CA that signed a TLS server's certificate, as a PEM file.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's URL, without a database.
    pub fn server_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// The URL of the database `parley`, with `params` (`ssl-mode=…`).
    pub fn url(&self, params: &str) -> String {
        format!("{}/parley?{params}", self.server_url())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for OwnMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database that exists for one test and is removed afterwards.
pub struct TestDb {
    url: String,
    mysql_schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A new, empty MariaDB schema. Panics with a clear message when the server
    /// is unreachable: tests never skip silently.
    pub async fn mysql() -> Self {
        let server = mysql_server_url();
        let schema = format!("parley_t_{:016x}", rand::random::<u64>());
        let mut admin = MySqlConnection::connect(&server).await.unwrap_or_else(|e| {
            panic!("MariaDB at {server} is required for this test (run `make test`): {e}")
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {schema}")))
            .execute(&mut admin)
            .await
            .expect("create test schema");
        let _ = admin.close().await;
        Self {
            url: format!("{}/{schema}", server.trim_end_matches('/')),
            mysql_schema: Some(schema),
            _dir: None,
        }
    }

    /// A new SQLite file in a temporary directory.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite:{}", dir.path().join("test.db").display());
        Self {
            url,
            mysql_schema: None,
            _dir: Some(dir),
        }
    }

    /// The database URL to hand to a service or store.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(schema) = self.mysql_schema.take() else {
            return;
        };
        // Dropping runs outside any async context the test may still hold.
        let server = mysql_server_url();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = MySqlConnection::connect(&server).await {
                    let _ = sqlx::raw_sql("SET SESSION lock_wait_timeout = 10")
                        .execute(&mut admin)
                        .await;
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {schema}"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// How many prepared statements the connection of a one-connection `pool`
/// has evicted from its statement cache (MariaDB's session `Com_stmt_close`):
/// each eviction stalls the next statement ~40 ms, so stores keep it at 0.
pub async fn statements_evicted(pool: &sqlx::MySqlPool) -> u64 {
    use sqlx::{Executor, Row};
    let mut conn = pool.acquire().await.expect("the pool's connection");
    let closed: String = conn
        .fetch_one("SHOW SESSION STATUS LIKE 'Com_stmt_close'")
        .await
        .expect("session status")
        .get(1);
    closed.parse().expect("a count")
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test with
/// `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Generates one `#[tokio::test]` per case and backend: each case is an async
/// function generic over the store trait, run against a fresh MariaDB schema and
/// a fresh SQLite file, with migrations applied.
///
/// ```ignore
/// parley_testkit::contract_suite!(MySqlStore, SqliteStore, StoreTrait; case_a, case_b);
/// ```
#[macro_export]
macro_rules! contract_suite {
    ($mysql:ident, $sqlite:ident, $store:ident; $($case:ident),* $(,)?) => {
        mod mariadb {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = $crate::TestDb::mysql().await;
                    let store = super::$mysql::connect(db.url(), 4).await.expect("connect");
                    <super::$mysql as ::parley_server::db::Pooled>::migrate(&store).await.expect("migrate");
                    super::$case(store).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = $crate::TestDb::sqlite();
                    let store = super::$sqlite::connect(db.url()).await.expect("connect");
                    <super::$sqlite as ::parley_server::db::Pooled>::migrate(&store).await.expect("migrate");
                    super::$case(store).await;
                }
            )*
        }
    };
}

/// Where the shared test Redis is: `PARLEY_TEST_REDIS_URL`, by default
/// `redis://127.0.0.1:6379` (what `make test` starts when it is absent). Tests
/// that share it keep to their own random key and channel names.
pub fn redis_url() -> String {
    std::env::var("PARLEY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A Redis server of a test's own, on a free loopback port, so the test can
/// stop and restart it without disturbing the others. Like a production
/// Redis it requires a password (in its URL). Needs `redis-server` on the
/// PATH (`make test` installs it when missing).
pub struct TestRedis {
    port: u16,
    password: String,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    tls: bool,
}

impl TestRedis {
    /// Starts a server and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Starts a server that speaks only TLS, with a certificate for
    /// 127.0.0.1 signed by a CA of its own ([`TestRedis::ca_file`]).
    pub async fn start_tls() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Self {
        let mut redis = Self {
            port: free_port(),
            password: format!("{:032x}", rand::random::<u128>()),
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
            tls,
        };
        if tls {
            write_certificates(redis.dir.path());
        }
        redis.spawn().await;
        redis
    }

    /// The CA that signed the server's certificate, as a PEM file, when it
    /// speaks TLS.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// The server's URL, with its password (`rediss://` for TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://:{}@127.0.0.1:{}", self.password, self.port)
    }

    /// The server's URL without the password: what a client that was not
    /// given it would use.
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (no goodbye to its clients, nothing saved).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and starts the server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = std::process::Command::new("redis-server");
        if self.tls {
            let file = |name: &str| self.dir.path().join(name);
            command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(file("server.pem"))
                .arg("--tls-key-file")
                .arg(file("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(file("ca.pem"));
        } else {
            command.args(["--port", &port]);
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", &self.password])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server is required for this test (run `make test`): {e}")
            });
        self.child = Some(child);
        accepting("test redis-server accepts connections", self.port).await;
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
