//! Starting the suite in-process and talking to it as a given user.

use std::{net::SocketAddr, time::Duration};

use parley_message::store::{MessageStore, MySqlMessageStore, SqliteMessageStore};
use parley_notification::{
    push::Device,
    store::{DeadLetter, MySqlQueueStore, QueueStore, SqliteQueueStore},
};
use parley_proto::{
    message::message_service_client::MessageServiceClient,
    notification::notification_service_client::NotificationServiceClient,
    presence::presence_service_client::PresenceServiceClient,
    receipt::{self as rpb, receipt_service_client::ReceiptServiceClient},
};
use parley_server::{
    ServiceIdentity, credentials::Keys, db::Backend as DbBackend, runner::Service as _,
};
use parley_testkit::{TestDb, TestRedis, apns::MockApns, fcm::MockFcm};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    codegen::InterceptedService,
    metadata::AsciiMetadataValue,
    service::Interceptor,
    transport::{Channel, Endpoint},
};

/// Which storage backend the services run on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    MariaDb,
    Sqlite,
}

/// Who a test's call names, as the gateway (or another service) would.
#[derive(Clone)]
pub enum As {
    /// A user, named by the tests acting as a service of their own.
    User(AsciiMetadataValue),
    /// No identity at all.
    Nobody,
    /// One header as given; `x-parley-service` with one of the suite's names
    /// is proven with that service's credential.
    Raw(&'static str, &'static str),
    /// A user's call that claims to come from a service, with no proof.
    Claiming(&'static str),
    /// A service name with a token signed by another service's key.
    Forged {
        claims: &'static str,
        signer: &'static str,
    },
}

/// A test client's interceptor: the identity `who` names, and the service
/// identity (name and token) that proves it, when there is one.
#[derive(Clone)]
pub struct Calling {
    who: As,
    proof: Option<ServiceIdentity>,
}

impl Interceptor for Calling {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata_mut();
        match &self.who {
            As::User(uid) => {
                metadata.insert("x-parley-uid", uid.clone());
            }
            As::Nobody | As::Forged { .. } => {}
            As::Claiming(service) => {
                metadata.insert("x-parley-uid", AsciiMetadataValue::from_static("N"));
                metadata.insert("x-parley-service", AsciiMetadataValue::from_static(service));
            }
            As::Raw(key, value) => {
                metadata.insert(*key, AsciiMetadataValue::from_static(value));
            }
        }
        match &mut self.proof {
            Some(identity) => identity.call(request),
            None => Ok(request),
        }
    }
}

/// Opens a service's database beside the running service, as the `$kind`
/// variant for the backend `$url` names.
macro_rules! open_store {
    ($kind:ident, $url:expr, $mysql:ty, $sqlite:ty) => {{
        let url = $url;
        match DbBackend::of_url(url).expect("backend") {
            DbBackend::MySql => $kind::MySql(<$mysql>::connect(url, 2).await.expect("connect")),
            DbBackend::Sqlite => $kind::Sqlite(<$sqlite>::connect(url).await.expect("connect")),
        }
    }};
}

/// Runs `$body` with `$store` bound to whichever backend `$db` holds.
macro_rules! on_store {
    ($kind:ident, $db:expr, $store:ident => $body:expr) => {
        match $db {
            $kind::MySql($store) => $body,
            $kind::Sqlite($store) => $body,
        }
    };
}

pub fn user(uid: &str) -> As {
    As::User(AsciiMetadataValue::try_from(uid).expect("ascii uid"))
}

pub type MessageClient = MessageServiceClient<InterceptedService<Channel, Calling>>;
pub type ReceiptClient = ReceiptServiceClient<InterceptedService<Channel, Calling>>;
pub type NotificationClient = NotificationServiceClient<InterceptedService<Channel, Calling>>;
pub type PresenceClient = PresenceServiceClient<InterceptedService<Channel, Calling>>;

pub struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    /// Runs a service future until `stop` (graceful) or `kill` (dropped).
    fn spawn<F, Fut, E>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let service = run(stopped);
        let task = tokio::spawn(async move {
            if let Err(error) = service.await {
                panic!("{name} failed: {error}");
            }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("service stops within 10 s")
            .expect("service task");
    }

    /// Drops the service without a goodbye, as a crash would.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Stops a service gracefully, if it runs.
async fn stop(service: &mut Option<Running>) {
    if let Some(running) = service.take() {
        running.stop().await;
    }
}

/// Binds a stopped service's address again, to restart it there.
async fn rebind(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("rebind {addr}: {e}"))
}

async fn stopped(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

/// A gateway running as a process of its own.
pub struct GatewayProcess {
    child: tokio::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: tokio::task::JoinHandle<Vec<String>>,
}

impl GatewayProcess {
    /// Sends it SIGTERM, as Kubernetes does when a pod is stopped.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent");
    }

    /// Waits for it to exit; its exit status and log lines.
    pub async fn exited(mut self, within: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the gateway exits in time")
            .expect("wait");
        let log = self.log.await.unwrap_or_default();
        (status, log)
    }
}

/// How a suite is started.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Gateways to run.
    pub gateways: usize,
    /// Gateway heartbeat interval, in milliseconds.
    pub heartbeat_ms: u32,
    /// Presence entry lifetime, in milliseconds.
    pub presence_ttl_ms: u32,
    /// Frames queued per client.
    pub outbound_queue: u64,
    /// How long a full client queue is waited on, in milliseconds.
    pub slow_consumer_timeout_ms: u64,
    /// Receipt digest window, in milliseconds.
    pub digest_window_ms: u64,
    /// Push collapse window, in milliseconds.
    pub push_window_ms: u64,
    /// Longest delay between the message outbox's retries, in milliseconds.
    pub outbox_max_backoff_ms: u64,
    /// The message service's per-user rate limit (burst: twice this); unset,
    /// every service gets limits no test reaches.
    pub message_rate_per_second: Option<u32>,
    /// Push workers of the notification service (unset: its default).
    pub push_workers: Option<u32>,
    /// How often the notification service polls its queue, in milliseconds.
    pub push_poll_ms: u64,
    /// More gateway flags, as (flag, value) pairs.
    pub gateway_flags: &'static [(&'static str, &'static str)],
    /// How often gateways ping WebSocket clients.
    pub ws_ping_interval_ms: u32,
    /// On MariaDB, a Redis that speaks only TLS, with a CA of its own that
    /// the services are given.
    pub redis_tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateways: 1,
            heartbeat_ms: 500,
            ws_ping_interval_ms: 15_000,
            presence_ttl_ms: 750,
            outbound_queue: 1024,
            slow_consumer_timeout_ms: 5_000,
            digest_window_ms: 300,
            push_window_ms: 1_000,
            outbox_max_backoff_ms: 100,
            message_rate_per_second: None,
            push_workers: None,
            push_poll_ms: 50,
            gateway_flags: &[],
            redis_tls: false,
        }
    }
}

/// The HS256 secret the suite's gateways accept.
pub const JWT_SECRET: &str = "integration-test-secret-0123456789";
/// The one browser origin the suite's gateways let open a WebSocket.
pub const ALLOWED_ORIGIN: &str = "http://app.parley.test";

/// Where presence and the bus live.
enum Realtime {
    /// A Redis server of the test's own (restartable).
    Redis(TestRedis),
    /// In process: a shared bus, presence in memory.
    Local(parley_bus::Bus),
}

/// The whole suite, each service on port 0 and its own fresh database.
pub struct Suite {
    pub receipt_addr: SocketAddr,
    receipt_db: TestDb,
    _dbs: Vec<TestDb>,
    /// The FCM stand-in the notification service pushes to.
    pub fcm: MockFcm,
    /// The APNs stand-in it pushes to Apple devices through.
    pub apns: MockApns,
    notification_addr: SocketAddr,
    notification: Option<Running>,
    presence: Option<Running>,
    presence_addr: SocketAddr,
    realtime: Realtime,
    options: Options,
    message: Option<Running>,
    receipt: Option<Running>,
    gateways: Vec<Option<Running>>,
    pub gateway_addrs: Vec<SocketAddr>,
    /// Each gateway's WebSocket address (`ws://{addr}/v1/ws`).
    pub ws_addrs: Vec<SocketAddr>,
    /// Each gateway's id (its bus channel).
    pub gateway_ids: Vec<String>,
    presence_url: String,
    message_url: String,
    receipt_url: String,
    channels: (Channel, Channel, Channel),
    /// Every service's credentials, the tests' own among them.
    pub keys: TestKeys,
}

/// The names the suite's credentials are made for: the services, and the
/// tests themselves (which call as a service acting for users).
const SERVICES: [&str; 6] = [
    "gateway",
    "message",
    "receipt",
    "presence",
    "notification",
    "tests",
];

/// A fresh set of service credentials.
pub struct TestKeys {
    private: Vec<(String, parley_server::serve::Secret)>,
    public: String,
}

impl TestKeys {
    fn generate() -> Self {
        let (private, public) = parley_server::credentials::generate(&SERVICES);
        Self { private, public }
    }

    fn private(&self, name: &str) -> &parley_server::serve::Secret {
        self.private
            .iter()
            .find_map(|(n, key)| (n == name).then_some(key))
            .expect("a key of the suite")
    }

    /// `name`'s credentials, as its service would hold them.
    pub fn keys(&self, name: &str) -> Keys {
        Keys::new(name, self.private(name), &self.public).expect("valid credentials")
    }

    /// Credentials that claim `name` but sign with `signer`'s key: what a
    /// service holding another's credential would send.
    fn forged(&self, name: &str, signer: &str) -> Keys {
        let signer_public = self
            .public
            .split(',')
            .find_map(|entry| entry.strip_prefix(&format!("{signer}=")))
            .expect("the signer's public key");
        Keys::new(
            name,
            self.private(signer),
            &format!("{name}={signer_public}"),
        )
        .expect("self-consistent forged credentials")
    }
}

async fn database(backend: Backend) -> TestDb {
    match backend {
        Backend::MariaDb => TestDb::mysql().await,
        Backend::Sqlite => TestDb::sqlite(),
    }
}

/// Limits no test reaches (the guard's); the send queues' time budgets are
/// set as generously per service, so a busy machine makes tests slower, never
/// refused. The load-shedding test relies on the queue's length instead.
const GENEROUS_LIMITS: [&str; 4] = [
    "--rate-limit-per-second",
    "100000",
    "--rate-limit-burst",
    "100000",
];

/// A service's configuration from flags alone: no `PARLEY_*` variable of
/// the shell running the tests reaches it.
fn parse<C: clap::Parser>(args: Vec<String>) -> C {
    parley_server::runner::config_from_args(args).expect("valid test configuration")
}

fn args(name: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    let mut args = args_without_limits(name, pairs);
    args.extend(GENEROUS_LIMITS.iter().map(|s| (*s).to_owned()));
    args
}

fn args_without_limits(name: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    let mut args = vec![name.to_owned()];
    for (flag, value) in pairs {
        args.push(format!("--{flag}"));
        args.push((*value).to_owned());
    }
    args
}

async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

fn lazy(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("endpoint")
        .connect_lazy()
}

impl Suite {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Self {
        let realtime = match backend {
            Backend::MariaDb if options.redis_tls => Realtime::Redis(TestRedis::start_tls().await),
            Backend::MariaDb => Realtime::Redis(TestRedis::start().await),
            Backend::Sqlite => Realtime::Local(parley_bus::Bus::local()),
        };
        let receipt_db = database(backend).await;
        let message_db = database(backend).await;
        let notification_db = database(backend).await;
        let (presence_listener, presence_url) = listener().await;
        let (notification_listener, notification_url) = listener().await;
        let (receipt_listener, receipt_url) = listener().await;
        let (message_listener, message_url) = listener().await;
        let receipt_addr = receipt_listener.local_addr().expect("addr");
        let notification_addr = notification_listener.local_addr().expect("addr");
        let presence_addr = presence_listener.local_addr().expect("addr");

        let mut suite = Self {
            keys: TestKeys::generate(),
            receipt_addr,
            receipt_db,
            _dbs: vec![message_db, notification_db],
            fcm: MockFcm::start().await,
            apns: MockApns::start().await,
            notification_addr,
            notification: None,
            presence: None,
            presence_addr,
            realtime,
            options,
            message: None,
            receipt: None,
            gateways: Vec::new(),
            gateway_addrs: Vec::new(),
            ws_addrs: Vec::new(),
            gateway_ids: Vec::new(),
            presence_url: presence_url.clone(),
            message_url: message_url.clone(),
            receipt_url: receipt_url.clone(),
            channels: (lazy(&message_url), lazy(&receipt_url), lazy(&presence_url)),
        };

        suite.presence = Some(suite.start_presence(presence_listener));

        suite.notification = Some(suite.start_notification(notification_listener));

        suite.receipt = Some(suite.start_receipt(receipt_listener));

        let backoff = options.outbox_max_backoff_ms.to_string();
        let message_args = [
            ("database-url", suite._dbs[0].url()),
            ("receipt-url", &receipt_url),
            ("presence-url", &presence_url),
            ("notification-url", &notification_url),
            ("outbox-max-backoff-ms", &backoff),
            ("fanout-retry-ms", "100"),
            ("send-wait-ms", "60000"),
        ];
        let message_args = match options.message_rate_per_second {
            None => args("parley-message", &message_args),
            Some(rate) => {
                let mut limited = args_without_limits("parley-message", &message_args);
                limited.extend([
                    "--rate-limit-per-second".to_owned(),
                    rate.to_string(),
                    "--rate-limit-burst".to_owned(),
                    (2 * rate).to_string(),
                ]);
                limited
            }
        };
        let config = suite.parse_as::<parley_message::Cli>(message_args).config;
        let bus = suite.bus();
        suite.message = Some(Running::spawn("message", |rx| {
            parley_message::run_on_bus(config, bus, message_listener, stopped(rx))
        }));

        for _ in 0..options.gateways {
            suite.start_gateway().await;
        }
        suite
    }

    /// Parses `args` (the first is the binary, `parley-<service>`) with the
    /// service's credentials added.
    fn parse_as<C: clap::Parser>(&self, mut args: Vec<String>) -> C {
        let name = args[0].trim_start_matches("parley-").to_owned();
        args.extend([
            "--service-key".to_owned(),
            self.keys.private(&name).expose().to_owned(),
            "--service-public-keys".to_owned(),
            self.keys.public.clone(),
        ]);
        parse(args)
    }

    /// A client interceptor naming `who`, proven to `callee` the way a
    /// service would prove it.
    fn calling(&self, who: As, callee: &'static str) -> Calling {
        let proof = match &who {
            As::User(_) => Some(("tests", self.keys.keys("tests"))),
            As::Raw("x-parley-service", name) if SERVICES.contains(name) => {
                Some((*name, self.keys.keys(name)))
            }
            As::Forged { claims, signer } => Some((*claims, self.keys.forged(claims, signer))),
            _ => None,
        };
        Calling {
            who,
            proof: proof.map(|(name, keys)| ServiceIdentity::new(name, Some(keys)).to(callee)),
        }
    }

    /// The test's Redis without its password (MariaDB suites).
    pub fn redis_url_without_password(&self) -> Option<String> {
        match &self.realtime {
            Realtime::Redis(redis) => Some(redis.url_without_password()),
            Realtime::Local(_) => None,
        }
    }

    /// The test's Redis (MariaDB suites).
    pub fn redis_url(&self) -> Option<String> {
        match &self.realtime {
            Realtime::Redis(redis) => Some(redis.url()),
            Realtime::Local(_) => None,
        }
    }

    /// The CA of a TLS Redis, as the `redis-ca-file` flag.
    fn redis_ca_file(&self) -> Option<String> {
        match &self.realtime {
            Realtime::Redis(redis) => redis.ca_file().map(|ca| ca.display().to_string()),
            Realtime::Local(_) => None,
        }
    }

    fn bus(&self) -> parley_bus::Bus {
        match &self.realtime {
            Realtime::Redis(redis) => {
                let tls = parley_bus::RedisTls {
                    redis_ca_file: self.redis_ca_file().map(Into::into),
                };
                let client = tls.client(&redis.url()).expect("redis client");
                parley_bus::Bus::on_redis(client).expect("redis bus")
            }
            Realtime::Local(bus) => bus.clone(),
        }
    }

    fn start_presence(&self, listener: TcpListener) -> Running {
        let ttl = self.options.presence_ttl_ms.to_string();
        let mut presence_args = vec![("ttl-ms", ttl.as_str()), ("watch-interval-ms", "100")];
        let redis_url = self.redis_url();
        if let Some(url) = &redis_url {
            presence_args.push(("redis-url", url));
        }
        let ca_file = self.redis_ca_file();
        if let Some(file) = &ca_file {
            presence_args.push(("redis-ca-file", file));
        }
        let config = self
            .parse_as::<parley_presence::Cli>(args("parley-presence", &presence_args))
            .config;
        Running::spawn("presence", |rx| {
            parley_presence::Presence::run(config, listener, stopped(rx))
        })
    }

    /// Stops the presence service (its Redis keeps the entries).
    pub async fn stop_presence(&mut self) {
        stop(&mut self.presence).await;
    }

    /// Starts the presence service again, on the same address.
    pub async fn restart_presence(&mut self) {
        let listener = rebind(self.presence_addr).await;
        self.presence = Some(self.start_presence(listener));
    }

    fn start_receipt(&self, listener: TcpListener) -> Running {
        let window = self.options.digest_window_ms.to_string();
        let config = self
            .parse_as::<parley_receipt::Cli>(args(
                "parley-receipt",
                &[
                    ("database-url", self.receipt_db.url()),
                    ("presence-url", &self.presence_url),
                    ("message-url", &self.message_url),
                    ("digest-window-ms", &window),
                ],
            ))
            .config;
        let bus = self.bus();
        Running::spawn("receipt", |rx| {
            parley_receipt::run_on_bus(config, bus, listener, stopped(rx))
        })
    }

    fn start_notification(&self, listener: TcpListener) -> Running {
        let window = self.options.push_window_ms.to_string();
        let workers = self.options.push_workers.unwrap_or(256).to_string();
        let poll = self.options.push_poll_ms.to_string();
        let config = self
            .parse_as::<parley_notification::Cli>(args(
                "parley-notification",
                &[
                    ("database-url", self._dbs[1].url()),
                    ("presence-url", &self.presence_url),
                    ("receipt-url", &self.receipt_url),
                    ("message-url", &self.message_url),
                    ("fcm-credentials", &self.fcm.service_account_json()),
                    ("fcm-base-url", self.fcm.base_url()),
                    ("apns-key-file", parley_testkit::apns::KEY_FILE),
                    ("apns-key-id", parley_testkit::apns::KEY_ID),
                    ("apns-team-id", parley_testkit::apns::TEAM_ID),
                    ("apns-base-url", self.apns.base_url()),
                    ("collapse-window-ms", &window),
                    // Large groups (a test's 1,000) collapse over the same
                    // window rather than a minute.
                    ("large-group-window-ms", &window),
                    ("max-attempts", "3"),
                    ("backoff-ms", "20"),
                    ("poll-ms", &poll),
                    ("workers", &workers),
                ],
            ))
            .config;
        Running::spawn("notification", |rx| {
            parley_notification::Notification::run(config, listener, stopped(rx))
        })
    }

    /// Stops the notification service gracefully; its database stays.
    pub async fn stop_notification(&mut self) {
        stop(&mut self.notification).await;
    }

    /// Starts the notification service again, on the same address and database.
    pub async fn restart_notification(&mut self) {
        let listener = rebind(self.notification_addr).await;
        self.notification = Some(self.start_notification(listener));
    }

    /// A notification client acting as `caller`.
    pub fn notification(&self, caller: As) -> NotificationClient {
        NotificationServiceClient::with_interceptor(
            lazy(&format!("http://{}", self.notification_addr)),
            self.calling(caller, "notification"),
        )
    }

    /// The notification service's own database, for reading its queue,
    /// registry and dead letters.
    pub async fn notification_db(&self) -> NotificationDb {
        open_store!(
            NotificationDb,
            self._dbs[1].url(),
            MySqlQueueStore,
            SqliteQueueStore
        )
    }

    /// Starts one more gateway; returns its index.
    pub async fn start_gateway(&mut self) -> usize {
        let (listener, _url) = listener().await;
        let addr = listener.local_addr().expect("addr");
        let (ws, _) = self::listener().await;
        let ws_addr = ws.local_addr().expect("addr");
        let heartbeat = self.options.heartbeat_ms.to_string();
        let ws_ping = self.options.ws_ping_interval_ms.to_string();
        let queue = self.options.outbound_queue.to_string();
        let slow = self.options.slow_consumer_timeout_ms.to_string();
        let id = format!("gw{}-{:08x}", self.gateways.len(), rand::random::<u32>());
        let notification_url = format!("http://{}", self.notification_addr);
        let mut flags = vec![
            ("gateway-id", id.as_str()),
            ("jwt-hs256-secret", JWT_SECRET),
            ("heartbeat-interval-ms", &heartbeat),
            ("outbound-queue", &queue),
            ("slow-consumer-timeout-ms", &slow),
            ("send-wait-ms", "60000"),
            ("message-url", &self.message_url),
            ("receipt-url", &self.receipt_url),
            ("presence-url", &self.presence_url),
            ("notification-url", &notification_url),
            ("ws-allowed-origins", ALLOWED_ORIGIN),
            ("ws-ping-interval-ms", &ws_ping),
        ];
        flags.extend(self.options.gateway_flags.iter().copied());
        let config = self
            .parse_as::<parley_gateway::Cli>(args("parley-gateway", &flags))
            .config;
        let bus = self.bus();
        let listeners = parley_gateway::Listeners {
            grpc: listener,
            ws: Some(ws),
        };
        self.gateways.push(Some(Running::spawn("gateway", |rx| {
            parley_gateway::run_on_bus(config, bus, listeners, stopped(rx))
        })));
        self.gateway_addrs.push(addr);
        self.ws_addrs.push(ws_addr);
        self.gateway_ids.push(id);
        self.gateways.len() - 1
    }

    /// Runs the gateway binary as a process of its own, on port 0, joined to
    /// this suite (MariaDB suites: the bus is the test's Redis). Returns once
    /// it listens.
    pub async fn spawn_gateway_process(&self) -> GatewayProcess {
        let Realtime::Redis(redis) = &self.realtime else {
            panic!("a gateway process needs the Redis bus (a MariaDB suite)");
        };
        let mut child =
            tokio::process::Command::new(env!("CARGO_BIN_EXE_parley-gateway-under-test"))
                .env_clear()
                .env("PARLEY_GATEWAY_LISTEN", "127.0.0.1:0")
                .env(
                    "PARLEY_GATEWAY_ID",
                    format!("gw-process-{:08x}", rand::random::<u32>()),
                )
                .env("PARLEY_GATEWAY_JWT_HS256_SECRET", JWT_SECRET)
                .env(
                    "PARLEY_GATEWAY_HEARTBEAT_INTERVAL_MS",
                    self.options.heartbeat_ms.to_string(),
                )
                .env("PARLEY_MESSAGE_URL", &self.message_url)
                .env("PARLEY_RECEIPT_URL", &self.receipt_url)
                .env("PARLEY_PRESENCE_URL", &self.presence_url)
                .env(
                    "PARLEY_NOTIFICATION_URL",
                    format!("http://{}", self.notification_addr),
                )
                .env("PARLEY_BUS_URL", redis.url())
                .env("PARLEY_SERVICE_KEY", self.keys.private("gateway").expose())
                .env("PARLEY_SERVICE_PUBLIC_KEYS", &self.keys.public)
                .env("PARLEY_RATE_LIMIT_PER_SECOND", "100000")
                .env("PARLEY_RATE_LIMIT_BURST", "100000")
                .env("RUST_LOG", "info")
                .env("PARLEY_LOG_FORMAT", "json")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("the gateway binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
        // Its start line names the address it bound.
        let addr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == "gateway listening" {
                    let addr = entry["fields"]["addr"]
                        .as_str()
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    if let Some(addr) = addr {
                        return addr;
                    }
                }
            }
            panic!("the gateway process exited before listening");
        })
        .await
        .expect("the gateway process listens within 20 s");
        // Keep reading its log, so it never blocks on a full pipe.
        let log = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                kept.push(line);
            }
            kept
        });
        GatewayProcess { child, addr, log }
    }

    /// Stops gateway `index` gracefully: its clients are told to go.
    pub async fn stop_gateway(&mut self, index: usize) {
        stop(&mut self.gateways[index]).await;
    }

    /// Drops gateway `index` without a goodbye to anyone.
    pub fn kill_gateway(&mut self, index: usize) {
        if let Some(running) = self.gateways[index].take() {
            running.kill();
        }
    }

    /// Kills the test's Redis and starts it again, empty (MariaDB suites).
    pub async fn restart_redis(&mut self) {
        match &mut self.realtime {
            Realtime::Redis(redis) => redis.restart().await,
            Realtime::Local(_) => panic!("this suite has no Redis"),
        }
    }

    pub fn message(&self, caller: As) -> MessageClient {
        MessageServiceClient::with_interceptor(
            self.channels.0.clone(),
            self.calling(caller, "message"),
        )
    }

    pub fn receipt(&self, caller: As) -> ReceiptClient {
        ReceiptServiceClient::with_interceptor(
            self.channels.1.clone(),
            self.calling(caller, "receipt"),
        )
    }

    /// The presence service, called as a service of the tests' own.
    pub fn presence(&self) -> PresenceClient {
        self.presence_as(As::Raw("x-parley-service", "tests"))
    }

    /// The presence service, called as `caller`.
    pub fn presence_as(&self, caller: As) -> PresenceClient {
        PresenceServiceClient::with_interceptor(
            self.channels.2.clone(),
            self.calling(caller, "presence"),
        )
    }

    /// Where the receipt service's own database is, for tests that hold its
    /// locks.
    pub fn receipt_db_url(&self) -> &str {
        self.receipt_db.url()
    }

    /// Holds group `gid`'s row in the receipt database (MariaDB) locked, in a
    /// transaction on the connection returned, until the test ends it with
    /// `COMMIT` or `ROLLBACK`: what the receipt service does for that group
    /// waits meanwhile.
    pub async fn hold_receipt_group(&self, gid: u64) -> sqlx::MySqlConnection {
        use sqlx::Connection;
        let mut holder = sqlx::MySqlConnection::connect(self.receipt_db_url())
            .await
            .expect("receipt database");
        sqlx::query("BEGIN")
            .execute(&mut holder)
            .await
            .expect("begin");
        sqlx::query("SELECT last_seq FROM receipt_groups WHERE gid = ? FOR UPDATE")
            .bind(i64::try_from(gid).expect("gid"))
            .execute(&mut holder)
            .await
            .expect("group row locked");
        holder
    }

    /// The message service's own database, for reading and writing its outbox.
    pub async fn message_db(&self) -> MessageDb {
        open_store!(
            MessageDb,
            self._dbs[0].url(),
            MySqlMessageStore,
            SqliteMessageStore
        )
    }

    /// Failed delivery attempts of the oldest entry in the message service's
    /// outbox (0 when it is empty): how far its retries have backed off.
    pub async fn outbox_attempts(&self) -> i64 {
        let db = self.message_db().await;
        on_store!(MessageDb, db, store => store.outbox_batch(parley_message::store::Lane::ALL, 1).await)
            .expect("outbox")
            .first()
            .map_or(0, |entry| entry.attempts)
    }

    /// The message service's outbox backlog: entries waiting and set aside.
    pub async fn outbox_stats(&self) -> parley_message::store::OutboxStats {
        let db = self.message_db().await;
        on_store!(MessageDb, db, store => store.outbox_stats().await).expect("outbox stats")
    }

    /// Writes an outbox entry for a message `gid` never had, as a damaged or
    /// hand-edited database would hold: it can never be delivered.
    pub async fn write_undeliverable_outbox_entry(&self, gid: u64) {
        let insert = "INSERT INTO msg_outbox (kind, gid, seq, created_at_ms) VALUES (1, ?, ?, 0)";
        let gid = i64::try_from(gid).expect("gid");
        let seq = i64::MAX;
        let url = self._dbs[0].url();
        // The same statement on whichever pool type the backend has.
        macro_rules! insert_on {
            ($pool:ty) => {{
                let pool = <$pool>::connect(url).await.expect("connect");
                let query = sqlx::query(insert).bind(gid).bind(seq);
                query.execute(&pool).await.map(|_| ())
            }};
        }
        let written = match DbBackend::of_url(url).expect("backend") {
            DbBackend::MySql => insert_on!(sqlx::MySqlPool),
            DbBackend::Sqlite => insert_on!(sqlx::SqlitePool),
        };
        written.expect("outbox entry written");
    }

    /// Stops the receipt service; its database stays.
    pub async fn stop_receipt(&mut self) {
        stop(&mut self.receipt).await;
    }

    /// Starts the receipt service again, on the same address and database.
    pub async fn restart_receipt(&mut self) {
        let listener = rebind(self.receipt_addr).await;
        self.receipt = Some(self.start_receipt(listener));
    }

    pub async fn stop(mut self) {
        for gateway in self.gateways.drain(..).flatten() {
            gateway.stop().await;
        }
        if let Some(running) = self.message.take() {
            running.stop().await;
        }
        self.stop_notification().await;
        self.stop_receipt().await;
        self.stop_presence().await;
    }
}

/// The notification service's tables, on whichever backend the suite runs.
pub enum NotificationDb {
    MySql(MySqlQueueStore),
    Sqlite(SqliteQueueStore),
}

/// The message service's database.
pub enum MessageDb {
    MySql(parley_message::store::MySqlMessageStore),
    Sqlite(parley_message::store::SqliteMessageStore),
}

impl NotificationDb {
    /// (gid, seq) of the pushes queued for `uid`.
    pub async fn queued_for(&self, uid: &str) -> Vec<(i64, i64)> {
        on_store!(NotificationDb, self, store => store.queued_for(uid).await.expect("queue"))
    }

    /// The devices with tokens of `uid`.
    pub async fn devices(&self, uid: &str) -> Vec<Device> {
        on_store!(NotificationDb, self, store => store.devices(uid).await.expect("devices"))
    }

    /// The dead letters of `uid`.
    pub async fn dead_letters(&self, uid: &str) -> Vec<DeadLetter> {
        on_store!(NotificationDb, self, store => store.dead_letters(uid).await.expect("dead letters"))
    }
}

/// Creates a group as `creator` with `members` and returns its gid.
pub async fn create_group(suite: &Suite, creator: &str, name: &str, members: &[&str]) -> u64 {
    let request = parley_proto::message::CreateGroupRequest {
        kind: parley_proto::message::GroupKind::Group.into(),
        name: name.into(),
        member_uids: members.iter().map(|m| m.to_string()).collect(),
    };
    let created = suite
        .message(user(creator))
        .create_group(request)
        .await
        .expect("create group");
    created.into_inner().group.expect("group").gid
}

/// Adds `members` to `gid`, as the admin `by`.
pub async fn add_members(suite: &Suite, by: &str, gid: u64, members: &[&str]) {
    let request = parley_proto::message::AddMembersRequest {
        gid,
        uids: members.iter().map(|m| m.to_string()).collect(),
    };
    suite
        .message(user(by))
        .add_members(request)
        .await
        .expect("add members");
}

/// Acknowledges, as `uid`, everything up to `up_to` as read.
pub async fn ack_read(suite: &Suite, uid: &str, gid: u64, up_to: u64) -> rpb::AckResponse {
    let request = rpb::AckRequest {
        gid,
        up_to_seq: up_to,
        kind: rpb::AckKind::Read.into(),
    };
    suite
        .receipt(user(uid))
        .ack(request)
        .await
        .expect("ack")
        .into_inner()
}

fn get_receipts_request(gid: u64, msgids: Vec<u64>, page: u32) -> rpb::GetReceiptsRequest {
    rpb::GetReceiptsRequest {
        gid,
        msgids,
        list_page_size: page,
    }
}

/// The receipts of A's messages, as A (the sender in every scenario).
pub async fn receipts(
    suite: &Suite,
    gid: u64,
    msgids: Vec<u64>,
    page: u32,
) -> Vec<rpb::MessageReceipt> {
    let request = get_receipts_request(gid, msgids, page);
    suite
        .receipt(user("A"))
        .get_receipts(request)
        .await
        .expect("receipts")
        .into_inner()
        .receipts
}

/// Waits until the receipt service has recorded every one of A's `msgids`
/// (the outbox delivers them asynchronously) and returns their receipts.
pub async fn wait_for_receipts(
    suite: &Suite,
    gid: u64,
    msgids: Vec<u64>,
    page: u32,
) -> Vec<rpb::MessageReceipt> {
    let client = suite.receipt(user("A"));
    parley_testkit::eventually(
        "the receipt service to record the messages",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            let request = get_receipts_request(gid, msgids.clone(), page);
            async move {
                client
                    .get_receipts(request)
                    .await
                    .ok()
                    .map(|r| r.into_inner().receipts)
            }
        },
    )
    .await
}

/// Waits until the receipt service's view of `uid` in `gid` satisfies
/// `holds` (membership and messages reach it through the outbox, and it may
/// be restarting): an error reads as "not yet".
pub async fn wait_for_position(
    suite: &Suite,
    uid: &str,
    gid: u64,
    what: &str,
    holds: impl Fn(&rpb::GroupUnread) -> bool,
) {
    let client = suite.receipt(user(uid));
    let holds = &holds;
    parley_testkit::eventually(what, Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            let request = rpb::UnreadCountsRequest {
                gids: vec![gid],
                ..Default::default()
            };
            let reply = client.unread_counts(request).await.ok()?.into_inner();
            reply.groups.first().filter(|g| holds(g)).map(|_| ())
        }
    })
    .await;
}

/// Waits until the receipt service knows `uid` is in `gid`.
pub async fn wait_for_membership(suite: &Suite, uid: &str, gid: u64) {
    let what = "the membership to reach the receipt service";
    wait_for_position(suite, uid, gid, what, |_| true).await;
}

/// `uid`'s unread counts for one group.
pub async fn unread_in(suite: &Suite, uid: &str, gid: u64) -> Vec<rpb::GroupUnread> {
    let request = rpb::UnreadCountsRequest {
        gids: vec![gid],
        ..Default::default()
    };
    suite
        .receipt(user(uid))
        .unread_counts(request)
        .await
        .expect("unread")
        .into_inner()
        .groups
}

/// Sends a message as `sender` straight to the message service.
pub async fn send_direct(
    suite: &Suite,
    sender: &str,
    gid: u64,
    id: &str,
    size: usize,
) -> parley_proto::message::Message {
    let request = parley_proto::message::SendMessageRequest {
        gid,
        client_msg_id: id.into(),
        content: vec![b'x'; size],
        need_receipt: true,
    };
    suite
        .message(user(sender))
        .send_message(request)
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message")
}

/// The devices presence lists for `uid`.
pub async fn devices_of(suite: &Suite, uid: &str) -> Vec<parley_proto::presence::DevicePresence> {
    let request = parley_proto::presence::BatchGetPresenceRequest {
        uids: vec![uid.into()],
    };
    let reply = suite
        .presence()
        .batch_get_presence(request)
        .await
        .expect("presence");
    reply
        .into_inner()
        .users
        .into_iter()
        .next()
        .expect("one user")
        .devices
}

/// Runs each named `async fn(Backend)` once on MariaDB with Redis and once on
/// the embedded default.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod mariadb_redis {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(crate::support::Backend::MariaDb).await;
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(crate::support::Backend::Sqlite).await;
                }
            )*
        }
    };
}

pub(crate) use on_both_backends;

/// Runs each case (an `async fn(Backend, Transport)`) on both backends, over
/// the gRPC stream and over WebSocket.
macro_rules! on_both_backends_and_transports {
    ($($case:ident),* $(,)?) => {
        mod mariadb_redis {
            crate::support::over_both_transports!(crate::support::Backend::MariaDb; $($case),*);
        }
        mod embedded {
            crate::support::over_both_transports!(crate::support::Backend::Sqlite; $($case),*);
        }
    };
}

macro_rules! over_both_transports {
    ($backend:expr; $($case:ident),*) => {
        mod grpc {
            $(
                #[tokio::test]
                async fn $case() {
                    super::super::$case($backend, crate::device::Transport::Grpc).await;
                }
            )*
        }
        mod websocket {
            $(
                #[tokio::test]
                async fn $case() {
                    super::super::$case($backend, crate::device::Transport::WebSocket).await;
                }
            )*
        }
    };
}

pub(crate) use {on_both_backends_and_transports, over_both_transports};

/// Waits until presence lists `count` devices for each `(uid, count)`.
pub async fn wait_for_devices(suite: &Suite, expected: &[(&str, usize)]) {
    parley_testkit::eventually(
        "the devices online in presence",
        Duration::from_secs(30),
        || async {
            for (uid, count) in expected {
                if devices_of(suite, uid).await.len() != *count {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// A firehose into group `gid` (members `slow` and `fast`, both live): `count`
/// messages of 60 kB while `fast` reads and `slow` reads nothing. The fast
/// reader must get every one, in order, and the slow device be cut off and go
/// offline; then the slow one reads what reached it before the gateway gave
/// up. Returns how many messages that was, and the closing frame's reason if
/// one came before the stream ended.
pub async fn firehose(
    suite: &Suite,
    gid: u64,
    (mut slow, fast): (crate::device::Device, crate::device::Device),
    count: u64,
) -> (usize, Option<String>) {
    use parley_proto::gateway::connect_response::Frame as Out;
    let mut fast = fast;
    let reader = tokio::spawn(async move {
        let mut others = Vec::new();
        fast.messages(count as usize, &mut others).await
    });
    for i in 1..=count {
        send_direct(suite, "A", gid, &format!("f{i}"), 60_000).await;
    }
    let got = reader.await.expect("fast reader");
    assert_eq!(
        crate::device::seqs(&got, gid),
        (1..=count).collect::<Vec<_>>(),
        "the fast reader got everything"
    );
    // The gateway gives up on the slow stream (and takes the device offline)
    // while the client still reads nothing. Reading before that would drain
    // the stream and make the client fast, however quickly the sends went.
    parley_testkit::eventually(
        "the slow device to be cut off and go offline",
        Duration::from_secs(30),
        || async { devices_of(suite, "slow").await.is_empty().then_some(()) },
    )
    .await;
    let mut received = 0;
    while let Some(frame) = slow.try_frame(Duration::from_secs(20)).await {
        match frame {
            Out::Message(_) => received += 1,
            Out::Closing(closing) => return (received, Some(closing.reason)),
            _ => {}
        }
    }
    (received, None)
}
