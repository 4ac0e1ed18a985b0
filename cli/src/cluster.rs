//! `parley dev-cluster`: the suite in its production shape on one machine.
//! Each service is its own process (the binaries built beside this one), on
//! MariaDB (a database per service) and Redis (the bus and presence), with
//! two gateways and real service credentials, as the tests start them; the
//! processes' logs go under the data directory. Ctrl-C stops them the way
//! Kubernetes does: SIGTERM, then the grace period.
//!
//! `--check` starts it, proves the shape works (a message from a user on one
//! gateway reaches a user on the other, and the read receipt comes back
//! across), stops it and exits 0 only if every process stopped cleanly.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use parley_proto::gateway::{
    self as pb, connect_response::Frame as Out, request_frame::Call,
    result_frame::Result as Returned,
};
use parley_server::Uid;
use sqlx::{Connection, MySqlConnection};
use tokio::process::{Child, Command};

use crate::{
    Output,
    client::{Device, Endpoints},
    dev::DEV_JWT_SECRET,
    failure::Failure,
};

/// The services, in the order they are started (callees first).
const SERVICES: [&str; 4] = ["presence", "receipt", "notification", "message"];
/// The two gateways.
const GATEWAYS: [&str; 2] = ["gateway-a", "gateway-b"];
/// How long a process has to accept connections after it is started.
const START_WAIT: Duration = Duration::from_secs(60);
/// The grace period each process is given on SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

/// What `parley dev-cluster` was asked for.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// Where the logs and the push log go.
    #[arg(long, default_value = "data/cluster")]
    pub data: PathBuf,
    /// The first of the ports: gateway A takes it, then the message,
    /// presence, receipt and notification services, gateway B the sixth;
    /// the gateways' WebSockets 10 and 11 above the first, each process's
    /// metrics 20 above its gRPC port. Below 32768, so no port Linux hands
    /// out for outgoing connections can be taken first.
    #[arg(long, default_value_t = 31051)]
    pub ports: u16,
    /// The MariaDB server (the databases `parley_cluster_*` are created).
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    pub mysql: String,
    /// The Redis holding the bus and presence.
    #[arg(long, default_value = "redis://127.0.0.1:6379/3")]
    pub redis: String,
    /// Start, check a message and its receipt across the two gateways, stop.
    #[arg(long)]
    pub check: bool,
}

/// One started process.
struct Process {
    name: String,
    port: u16,
    child: Child,
    log: PathBuf,
}

/// The ports, from the first.
struct Ports {
    first: u16,
}

impl Ports {
    fn of(&self, name: &str) -> u16 {
        let offset = match name {
            "gateway-a" => 0,
            "message" => 1,
            "presence" => 2,
            "receipt" => 3,
            "notification" => 4,
            _ => 5,
        };
        self.first.saturating_add(offset)
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.of(name))
    }
}

/// Runs the cluster until Ctrl-C (or, with `--check`, until the check ends).
pub async fn run(options: &Options) -> Result<(), Failure> {
    if options.ports.checked_add(25).is_none() {
        return Err(Failure::other(format!(
            "--ports {}: the metrics ports would be past 65535",
            options.ports
        )));
    }
    let bin = binaries()?;
    std::fs::create_dir_all(&options.data)
        .map_err(|e| Failure::other(format!("cannot create {}: {e}", options.data.display())))?;
    let databases = databases(&options.mysql).await?;
    let mut names: Vec<&str> = SERVICES.to_vec();
    names.push("gateway");
    let (private, public) = parley_server::credentials::generate(&names);
    let ports = Ports {
        first: options.ports,
    };
    let mut started: Vec<Process> = Vec::new();
    for name in SERVICES.iter().chain(&GATEWAYS) {
        let service = if name.starts_with("gateway") {
            "gateway"
        } else {
            name
        };
        let key = private
            .iter()
            .find(|(n, _)| n == service)
            .map(|(_, key)| key.expose().to_owned())
            .unwrap_or_default();
        let mut env = common_env(&key, &public, &ports, name);
        env.extend(own_env(name, options, &ports, &databases));
        match spawn(&bin, service, name, &env, &options.data, ports.of(name)) {
            Ok(process) => started.push(process),
            Err(error) => {
                stop(started).await;
                return Err(error);
            }
        }
    }
    if let Err(error) = ready(&mut started).await {
        stop(started).await;
        return Err(error);
    }
    print_started(options, &ports, &started);
    let outcome = if options.check {
        check(&ports).await
    } else {
        parley_server::shutdown_signal().await;
        Ok(())
    };
    let stopped = stop(started).await;
    outcome?;
    if stopped {
        Ok(())
    } else {
        Err(Failure::other(
            "a process did not stop cleanly; see its log",
        ))
    }
}

/// The directory of the service binaries: the one this CLI was built into.
fn binaries() -> Result<PathBuf, Failure> {
    let me = std::env::current_exe().map_err(|e| Failure::other(e.to_string()))?;
    let dir = me
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Failure::other("no directory for the service binaries"))?;
    let missing: Vec<String> = SERVICES
        .iter()
        .chain(&["gateway"])
        .map(|name| format!("parley-{name}"))
        .filter(|binary| !dir.join(binary).is_file())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(Failure::other(format!(
            "{} not built in {} (run `make dev-cluster`, which builds them)",
            missing.join(", "),
            dir.display()
        )))
    }
}

/// Creates the databases of the three services that keep one.
async fn databases(server: &str) -> Result<Vec<(&'static str, String)>, Failure> {
    let mut admin = MySqlConnection::connect(server).await.map_err(|e| {
        Failure::unreachable(format!(
            "MariaDB at {server}: {e} (`make test-services` starts one)"
        ))
    })?;
    let mut urls = Vec::new();
    for name in ["message", "receipt", "notification"] {
        let create = format!("CREATE DATABASE IF NOT EXISTS parley_cluster_{name}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
            .map_err(|e| Failure::other(format!("create the {name} database: {e}")))?;
        urls.push((name, format!("{server}/parley_cluster_{name}")));
    }
    Ok(urls)
}

/// What every process is told: its key, every public key, where the others
/// are, plain text logs, its metrics port and a short grace period.
fn common_env(key: &str, public: &str, ports: &Ports, name: &str) -> Vec<(String, String)> {
    let metrics = ports.of(name).saturating_add(20);
    [
        ("PARLEY_SERVICE_KEY", key.to_owned()),
        ("PARLEY_SERVICE_PUBLIC_KEYS", public.to_owned()),
        ("PARLEY_MESSAGE_URL", ports.url("message")),
        ("PARLEY_PRESENCE_URL", ports.url("presence")),
        ("PARLEY_RECEIPT_URL", ports.url("receipt")),
        ("PARLEY_NOTIFICATION_URL", ports.url("notification")),
        ("PARLEY_METRICS_LISTEN", format!("127.0.0.1:{metrics}")),
        ("PARLEY_SHUTDOWN_GRACE_MS", GRACE.as_millis().to_string()),
        ("PARLEY_LOG_FORMAT", "text".to_owned()),
        ("NO_COLOR", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// What one process needs of its own.
fn own_env(
    name: &str,
    options: &Options,
    ports: &Ports,
    databases: &[(&str, String)],
) -> Vec<(String, String)> {
    let listen = format!("127.0.0.1:{}", ports.of(name));
    let database = |service: &str| {
        databases
            .iter()
            .find(|(n, _)| *n == service)
            .map(|(_, url)| url.clone())
            .unwrap_or_default()
    };
    let pushes = options.data.join("pushes.jsonl").display().to_string();
    let pairs: Vec<(&str, String)> = match name {
        "presence" => vec![
            ("PARLEY_PRESENCE_LISTEN", listen),
            ("PARLEY_PRESENCE_REDIS_URL", options.redis.clone()),
        ],
        "receipt" => vec![
            ("PARLEY_RECEIPT_LISTEN", listen),
            ("PARLEY_RECEIPT_DATABASE_URL", database("receipt")),
            ("PARLEY_BUS_URL", options.redis.clone()),
        ],
        "notification" => vec![
            ("PARLEY_NOTIFICATION_LISTEN", listen),
            ("PARLEY_NOTIFICATION_DATABASE_URL", database("notification")),
            ("PARLEY_NOTIFICATION_PUSH_LOG", "true".to_owned()),
            ("PARLEY_NOTIFICATION_PUSH_LOG_FILE", pushes),
        ],
        "message" => vec![
            ("PARLEY_MESSAGE_LISTEN", listen),
            ("PARLEY_MESSAGE_DATABASE_URL", database("message")),
            ("PARLEY_BUS_URL", options.redis.clone()),
        ],
        gateway => {
            let ws_offset = if gateway == "gateway-a" { 10 } else { 11 };
            vec![
                ("PARLEY_GATEWAY_LISTEN", listen),
                ("PARLEY_GATEWAY_ID", format!("cluster-{gateway}")),
                ("PARLEY_GATEWAY_JWT_HS256_SECRET", DEV_JWT_SECRET.to_owned()),
                ("PARLEY_BUS_URL", options.redis.clone()),
                (
                    "PARLEY_GATEWAY_WS_LISTEN",
                    format!("127.0.0.1:{}", ports.first.saturating_add(ws_offset)),
                ),
            ]
        }
    };
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Starts `parley-<service>` as `name` with `env` as its only `PARLEY_*`
/// variables: none of the shell's leaks in.
fn spawn(
    bin: &Path,
    service: &str,
    name: &str,
    env: &[(String, String)],
    data: &Path,
    port: u16,
) -> Result<Process, Failure> {
    let log = data.join(format!("{name}.log"));
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Failure::other(format!("cannot write {}: {e}", log.display())))
    };
    let (out, err) = (open()?, open()?);
    let mut command = Command::new(bin.join(format!("parley-{service}")));
    command
        .env_clear()
        .envs(parley_server::runner::inherited_env())
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| Failure::other(format!("cannot start {name}: {e}")))?;
    Ok(Process {
        name: name.to_owned(),
        port,
        child,
        log,
    })
}

/// Waits until every process accepts connections on its port; one that
/// exits first fails the start with the end of its log.
async fn ready(started: &mut [Process]) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    for process in started.iter_mut() {
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(Failure::other(format!(
                    "{} exited at start ({status}):\n{}",
                    process.name,
                    tail(&process.log)
                )));
            }
            let addr = format!("127.0.0.1:{}", process.port);
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Failure::other(format!(
                    "{} did not listen on {addr} within {START_WAIT:?}:\n{}",
                    process.name,
                    tail(&process.log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The last lines of a log, for a failure message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn print_started(options: &Options, ports: &Ports, started: &[Process]) {
    println!(
        "parley dev-cluster: {} processes on MariaDB ({}) and Redis ({}), with service credentials",
        started.len(),
        options.mysql,
        options.redis
    );
    for process in started {
        println!(
            "  {:<13} 127.0.0.1:{:<6} pid {:<8} log {}",
            process.name,
            process.port,
            process.child.id().unwrap_or_default(),
            process.log.display()
        );
    }
    println!(
        "  WebSockets    ws://127.0.0.1:{}/v1/ws and ws://127.0.0.1:{}/v1/ws; metrics 20 above each port\n\
         Clients connect to either gateway with a dev token (`parley token <uid>`);\n\
         the services take only calls signed with this run's keys.",
        ports.first.saturating_add(10),
        ports.first.saturating_add(11)
    );
    if !options.check {
        println!("Ctrl-C stops every process (SIGTERM, then {GRACE:?} of grace).");
    }
}

/// SIGTERM to every process, newest first, then waits for each within the
/// grace period (and a margin) before killing it. True when all exited 0.
async fn stop(started: Vec<Process>) -> bool {
    let mut clean = true;
    for mut process in started.into_iter().rev() {
        if let Some(pid) = process.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let waited = tokio::time::timeout(GRACE * 2, process.child.wait()).await;
        match waited {
            Ok(Ok(status)) if status.success() => println!("  {} stopped", process.name),
            Ok(Ok(status)) => {
                clean = false;
                println!("  {} stopped: {status}", process.name);
            }
            _ => {
                clean = false;
                let _ = process.child.kill().await;
                println!(
                    "  {} did not stop within {:?}; killed",
                    process.name,
                    GRACE * 2
                );
            }
        }
    }
    clean
}

/// A user on each gateway: a message from A's side reaches B's, and B's
/// read comes back to A as a receipt digest.
async fn check(ports: &Ports) -> Result<(), Failure> {
    let on = |gateway: &str| Endpoints {
        gateway: ports.url(gateway),
        message: ports.url("message"),
        receipt: ports.url("receipt"),
        notification: ports.url("notification"),
        secret: DEV_JWT_SECRET.to_owned(),
    };
    let uid = |raw: &str| Uid::parse(raw).map_err(|e| Failure::other(e.to_string()));
    let (alice, bob) = (uid("cluster-alice")?, uid("cluster-bob")?);
    let mut a = Device::connect(&on("gateway-a"), &alice, "phone", Output::TEXT).await?;
    let mut b = Device::connect(&on("gateway-b"), &bob, "laptop", Output::TEXT).await?;
    let create = Call::CreateGroup(pb::CreateGroupCall {
        direct: false,
        name: "cluster check".into(),
        member_uids: vec![bob.to_string()],
    });
    let gid = match a.call(create).await?.result {
        Some(Returned::Created(created)) => created.group.map(|g| g.gid).unwrap_or_default(),
        other => {
            return Err(Failure::other(format!(
                "create group: unexpected {other:?}"
            )));
        }
    };
    let sent = a.send(gid, "hello across gateways", true).await?;
    println!(
        "check: cluster-alice (gateway A) sent seq {} in group {gid}",
        sent.seq
    );
    let wait = Duration::from_secs(20);
    until(
        &mut b,
        wait,
        "the message on gateway B",
        |frame| matches!(frame, Out::Message(m) if m.gid == gid && m.seq == sent.seq),
    )
    .await?;
    println!("check: cluster-bob (gateway B) got it");
    b.ack(gid, sent.seq, true).await?;
    until(&mut a, wait, "the read receipt on gateway A", |frame| {
        matches!(frame, Out::ReceiptDigest(d)
            if d.entries.iter().any(|e| e.gid == gid && e.seq == sent.seq && e.read_count == 1))
    })
    .await?;
    println!("check: cluster-alice saw it read by 1 of 1");
    Ok(())
}

/// Reads `device`'s frames until one passes `wanted`, within `wait`.
async fn until(
    device: &mut Device,
    wait: Duration,
    what: &str,
    wanted: impl Fn(&Out) -> bool,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match device.next(left).await? {
            Some(frame) if wanted(&frame) => return Ok(()),
            Some(_) => {}
            None => return Err(Failure::other(format!("{what}: nothing within {wait:?}"))),
        }
    }
}
