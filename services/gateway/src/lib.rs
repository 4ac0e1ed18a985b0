//! The gateway: holds one bidirectional stream per device. The first frame
//! authenticates with a JWT; the gateway then registers the device with
//! presence, sends the backlog since the user's delivered cursor, and relays
//! frames both ways: sends, acks, syncs and heartbeats from the client;
//! messages and receipt digests from its own bus channel. It keeps only its
//! own connections and calls every other service for everything else.

#![forbid(unsafe_code)]

pub mod acks;
pub mod auth;
pub mod calls;
pub mod hub;
pub mod known;
pub mod offline;
pub mod pending;
pub mod session;
pub mod wire;
pub mod ws;

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, time::Duration};

use futures::Stream;
use parley_bus::{Bus, BusArgs};
use parley_proto::{
    gateway::{self as pb, connect_request::Frame as In, connect_response::Frame as Out},
    presence as ppb,
};
use parley_server::upstream::PresenceClient;
use parley_server::{
    Reason, ServerArgs, StartError, Uid,
    caller::{DEVICE_ID_RULE, check_device_id, valid_device_id},
    runner::Service,
    serve::Secret,
    shed::refuse,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
};
use tonic::{Request, Response, Status, Streaming, service::RoutesBuilder};

use crate::{
    acks::AckWriter,
    auth::Verifier,
    hub::Hub,
    offline::OfflineTeller,
    pending::{Pending, PendingLimits},
    session::{Close, Session, Start, Upstream},
    wire::{
        Frame,
        server::gateway_service_server::{GatewayService, GatewayServiceServer},
    },
};

/// Bus events buffered per connection before it is cut off as too slow.
const INBOX: usize = 1024;
/// Devices per presence heartbeat call.
const HEARTBEAT_CHUNK: usize = 10_000;

/// The gateway's configuration, from flags or `PARLEY_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve the client stream on.
    #[arg(long, env = "PARLEY_GATEWAY_LISTEN", default_value_t = parley_server::ports::local(parley_server::ports::GATEWAY))]
    pub listen: SocketAddr,
    /// Address to serve WebSocket clients (browsers) on, at `/v1/ws`, with
    /// the same frames as the gRPC stream. Unset: no WebSocket.
    #[arg(long, env = "PARLEY_GATEWAY_WS_LISTEN")]
    pub ws_listen: Option<SocketAddr>,
    /// Origins browser pages may open a WebSocket from, comma-separated, as
    /// browsers send them (`https://chat.example.com`); `*` lets any page in
    /// (development only). Requests without an `Origin` header (apps,
    /// servers) are always let in. Empty: no browser page.
    #[arg(long, env = "PARLEY_GATEWAY_WS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub ws_allowed_origins: Vec<String>,
    /// How often the gateway pings WebSocket clients, in milliseconds; one
    /// silent for three pings is dropped.
    #[arg(long, env = "PARLEY_GATEWAY_WS_PING_INTERVAL_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u32).range(100..=600_000))]
    pub ws_ping_interval_ms: u32,
    /// This gateway's id: its bus channel and what presence records for its
    /// devices. Unset: a random id per start (use the pod name in Kubernetes).
    #[arg(long, env = "PARLEY_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// HS256 secret the client JWTs are signed with (development).
    #[arg(long, env = "PARLEY_GATEWAY_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<Secret>,
    /// PEM file of the RSA public key the client JWTs (RS256) are signed with.
    #[arg(long, env = "PARLEY_GATEWAY_JWT_RS256_PUBLIC_KEY_FILE")]
    pub jwt_rs256_public_key_file: Option<PathBuf>,
    /// When set, client tokens must carry this `aud` claim.
    #[arg(long, env = "PARLEY_GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// When set, client tokens must carry this `iss` claim.
    #[arg(long, env = "PARLEY_GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// How often clients and the gateway heartbeat, in milliseconds. Presence
    /// entries should live about 1.5 times this.
    #[arg(long, env = "PARLEY_GATEWAY_HEARTBEAT_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(50..=600_000))]
    pub heartbeat_interval_ms: u32,
    /// Frames queued for one client; a client that lets it fill is cut off
    /// (it reconnects and resyncs by seq).
    #[arg(long, env = "PARLEY_GATEWAY_OUTBOUND_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(4..=1_000_000))]
    pub outbound_queue: u64,
    /// How long a client's full outbound queue is waited on before the client
    /// is cut off as too slow, in milliseconds.
    #[arg(long, env = "PARLEY_GATEWAY_SLOW_CONSUMER_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub slow_consumer_timeout_ms: u64,
    /// Sends a stream may queue behind the one in flight; a send beyond is
    /// refused with RESOURCE_EXHAUSTED and a retry hint.
    #[arg(long, env = "PARLEY_GATEWAY_SEND_QUEUE", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub send_queue: u32,
    /// Longest a queued send may wait for its turn, in milliseconds; one that
    /// waited longer is refused with UNAVAILABLE and a retry hint rather than
    /// sent late. A safety net for a stalled message service: system overload
    /// is shed by the message service's own send gate, and a stream's own
    /// burst by the queue's length.
    #[arg(long, env = "PARLEY_GATEWAY_SEND_WAIT_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub send_wait_ms: u64,
    /// Longest delay between retries of what a service behind the gateway
    /// could not do for a stream (catch-up, gap syncs, acks), in
    /// milliseconds. Retries start at 100 ms and double up to this.
    #[arg(long, env = "PARLEY_GATEWAY_RETRY_MAX_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub retry_max_ms: u64,
    /// Time a new stream has to send its auth frame, in milliseconds.
    #[arg(long, env = "PARLEY_GATEWAY_AUTH_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub auth_timeout_ms: u64,
    /// Streams one user may have open on this gateway (phones, tablets,
    /// browser tabs); one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PARLEY_GATEWAY_MAX_STREAMS_PER_USER", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_user: u32,
    /// Streams one HTTP/2 connection may have waiting for their auth frame;
    /// one more is refused with RESOURCE_EXHAUSTED and a retry hint.
    #[arg(long, env = "PARLEY_GATEWAY_MAX_UNAUTHENTICATED_PER_CONNECTION", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_unauthenticated_per_connection: u32,
    /// Streams one client address may have waiting for their auth frame,
    /// over all its connections (a proxy in front of many devices counts as
    /// one address: raise it there).
    #[arg(long, env = "PARLEY_GATEWAY_MAX_UNAUTHENTICATED_PER_ADDRESS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_unauthenticated_per_address: u32,
    /// The services it calls.
    #[command(flatten)]
    pub calls: Callees,
    /// The bus this gateway subscribes to.
    #[command(flatten)]
    pub bus: BusArgs,
    /// Flags shared by every service: logging, request limits, internal token.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The command line: flags only (the gateway keeps no database).
pub type Cli = parley_server::runner::Cli<Config>;

impl Config {
    /// The token verifier the configuration names: exactly one key.
    pub fn verifier(&self) -> Result<Verifier, StartError> {
        let verifier = match (&self.jwt_hs256_secret, &self.jwt_rs256_public_key_file) {
            (Some(secret), None) => Ok(Verifier::hs256(secret.expose().as_bytes())),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    StartError::Config(format!("cannot read the JWT public key {}: {e}", path.display()))
                })?;
                Verifier::rs256(&pem).map_err(|e| {
                    StartError::Config(format!("the JWT public key {} is not an RSA PEM key: {e}", path.display()))
                })
            }
            _ => Err(StartError::Config(
                "set exactly one of PARLEY_GATEWAY_JWT_HS256_SECRET and PARLEY_GATEWAY_JWT_RS256_PUBLIC_KEY_FILE".into(),
            )),
        }?;
        Ok(verifier.expecting(self.jwt_audience.as_deref(), self.jwt_issuer.as_deref()))
    }

    /// The WebSocket transport's settings.
    pub fn ws_settings(&self) -> Result<ws::Settings, StartError> {
        ws::Settings::new(
            &self.ws_allowed_origins,
            Duration::from_millis(u64::from(self.ws_ping_interval_ms)),
            Duration::from_millis(self.slow_consumer_timeout_ms),
        )
        .map_err(StartError::Config)
    }

    /// This gateway's id on the bus: the configured one, or a random one.
    fn gateway_id(&self) -> Result<String, StartError> {
        match &self.gateway_id {
            Some(id) if valid_device_id(id) => Ok(id.clone()),
            Some(_) => Err(StartError::Config(format!(
                "PARLEY_GATEWAY_ID: {DEVICE_ID_RULE}"
            ))),
            None => Ok(format!("gw-{:016x}", rand::random::<u64>())),
        }
    }
}

/// The gateway, as `parley_server::runner` runs it.
pub struct Gateway;

parley_server::service_config!(Config);

impl Service for Gateway {
    const BINARY: &'static str = "parley-gateway";
    const ABOUT: &'static str = "Parley gateway: one stream per client device";
    type Config = Config;

    fn check(config: &Config) -> Result<(), StartError> {
        config.verifier()?;
        config.ws_settings()?;
        config.gateway_id()?;
        let clients = Clients::new(&config.calls, &config.server)?;
        config
            .bus
            .check(clients.keys.as_ref())
            .map_err(StartError::config)
    }

    /// Serves the gRPC stream on `listener` (and WebSocket clients on the
    /// address the configuration names) until `shutdown` resolves.
    async fn run<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), StartError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let bus = config.bus.connect().map_err(StartError::config)?;
        let ws = match config.ws_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                StartError::Config(format!("cannot listen for WebSocket on {addr}: {e}"))
            })?),
            None => None,
        };
        let listeners = Listeners { grpc: listener, ws };
        run_on_bus(config, bus, listeners, shutdown).await
    }
}

parley_server::callees!("gateway" calls {
    /// The message service.
    message: MessageUrl,
    /// The receipt service.
    receipt: ReceiptUrl,
    /// The presence service.
    presence: PresenceUrl,
    /// The notification service (push tokens and mutes of the client API).
    notification: NotificationUrl,
});

/// Where the gateway takes clients: the gRPC stream, and WebSocket when
/// configured.
pub struct Listeners {
    /// The gRPC stream (and health, metrics' neighbours).
    pub grpc: TcpListener,
    /// WebSocket clients, at `/v1/ws`.
    pub ws: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Self {
        Self { grpc, ws: None }
    }
}

/// The Connect handler.
pub struct GatewayApi {
    verifier: Verifier,
    hub: Hub,
    upstream: std::sync::Arc<Upstream>,
    gateway_id: String,
    heartbeat_interval_ms: u32,
    outbound_queue: usize,
    limits: session::Limits,
    auth_timeout: Duration,
    pending: Pending,
    max_streams_per_user: usize,
    stopping: watch::Receiver<bool>,
}

/// A stream the gateway has taken: the frames for the client, and how the
/// gateway closes it when it does.
pub struct Opened {
    /// Encoded frames, in order.
    pub frames: mpsc::Receiver<Frame>,
    /// Fires when the gateway closes the stream (a closing frame, or a
    /// status ending it); dropped without firing when the client went.
    pub close: oneshot::Receiver<Close>,
}

impl GatewayApi {
    /// Takes a new stream from `peer`, whatever carries its frames: waits
    /// for its auth frame, registers the device and starts its session.
    /// Refused with the status the client is told.
    pub async fn open(
        &self,
        peer: Option<SocketAddr>,
        mut frames: impl session::Frames,
    ) -> Result<Opened, Status> {
        let waiting = self.pending.admit(peer)?;
        let (uid, auth) = self.authenticate(&mut frames).await?;
        drop(waiting);
        let registration = self
            .hub
            .register(&uid, &auth.device_id, INBOX, self.max_streams_per_user)
            .ok_or_else(|| {
                refuse(
                    Reason::RateLimited,
                    format!(
                        "this user has {} streams open on this gateway; close one first",
                        self.max_streams_per_user
                    ),
                    Duration::from_secs(1),
                )
            })?;
        let (out, rx) = mpsc::channel(self.outbound_queue);
        let (close, close_rx) = oneshot::channel();
        let ok = Frame::encode(Out::AuthOk(pb::AuthOkFrame {
            uid: uid.as_str().to_owned(),
            heartbeat_interval_ms: self.heartbeat_interval_ms,
        }));
        // The queue is empty and at least 4 long.
        let _ = out.try_send(ok);
        tracing::debug!(uid = %uid, device = %auth.device_id, "stream authenticated");
        let start = Start {
            uid,
            device_id: auth.device_id,
            receipts_cursor: auth.receipts_cursor,
            id: registration.id,
            inbox: registration.inbox,
            kick: registration.kick,
            out,
            close,
            limits: self.limits,
            stopping: self.stopping.clone(),
        };
        tokio::spawn(Session::run(
            start,
            self.upstream.clone(),
            self.hub.clone(),
            self.gateway_id.clone(),
            frames,
        ));
        Ok(Opened {
            frames: rx,
            close: close_rx,
        })
    }

    /// Waits for the auth frame and checks it.
    async fn authenticate(
        &self,
        frames: &mut impl session::Frames,
    ) -> Result<(Uid, pb::AuthFrame), Status> {
        use futures::StreamExt as _;
        let first = match tokio::time::timeout(self.auth_timeout, frames.next()).await {
            Err(_) => return Err(unauthenticated("no auth frame in time")),
            Ok(Some(Ok(first))) => first,
            // A frame the gateway cannot take says so, even before auth.
            Ok(Some(Err(session::End::Refused(status)))) => return Err(status),
            Ok(Some(Err(_)) | None) => {
                return Err(unauthenticated("stream ended before auth"));
            }
        };
        let Some(In::Auth(auth)) = first.frame else {
            return Err(unauthenticated("the first frame must be auth"));
        };
        let uid = self.verifier.verify(&auth.token).map_err(|error| {
            tracing::info!(error = %error, "stream refused: invalid token");
            unauthenticated("invalid token")
        })?;
        check_device_id(&auth.device_id, "auth.device_id")?;
        Ok((uid, auth))
    }
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

/// The response stream: queued frames, or, once `close` fires, a closing frame
/// ahead of anything still queued, and the end.
fn outbound(rx: mpsc::Receiver<Frame>, close: oneshot::Receiver<Close>) -> ConnectStream {
    let state = (rx, Some(close));
    Box::pin(futures::stream::unfold(
        state,
        |(mut rx, close)| async move {
            let mut close = close?;
            tokio::select! {
                biased;
                how = &mut close => {
                    let last = match how.ok()? {
                        Close::Frame(reason) => Ok(Frame::closing(reason)),
                        Close::Status(status) => Err(status),
                    };
                    Some((last, (rx, None)))
                }
                frame = rx.recv() => frame.map(|f| (Ok(f), (rx, Some(close)))),
            }
        },
    ))
}

#[tonic::async_trait]
impl GatewayService for GatewayApi {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = request.remote_addr();
        let frames = session::grpc_frames(request.into_inner());
        let opened = self.open(peer, frames).await?;
        Ok(Response::new(outbound(opened.frames, opened.close)))
    }
}

/// Keeps this gateway's devices alive in presence.
async fn heartbeat(hub: Hub, mut presence: PresenceClient, gateway_id: String, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let devices = hub.devices();
        for chunk in devices.chunks(HEARTBEAT_CHUNK) {
            let request = ppb::HeartbeatRequest {
                gateway_id: gateway_id.clone(),
                devices: chunk
                    .iter()
                    .map(|(uid, device_id)| ppb::DeviceRef {
                        uid: uid.as_str().to_owned(),
                        device_id: device_id.clone(),
                    })
                    .collect(),
            };
            match presence.heartbeat(request).await {
                // Devices presence had lost (expired, or Redis restarted) were
                // invisible to fan-out meanwhile: catch them up from the store.
                Ok(reply) if reply.get_ref().revived > 0 => {
                    tracing::info!(
                        revived = reply.get_ref().revived,
                        "presence entries revived; resyncing connections"
                    );
                    hub.resync_all();
                }
                Ok(_) => {}
                Err(status) => {
                    tracing::warn!(error = %status, devices = chunk.len(), "presence heartbeat failed");
                }
            }
        }
    }
}

/// [`Service::run`] on a given bus (an in-process one shared with the other
/// services).
pub async fn run_on_bus<F>(
    config: Config,
    bus: Bus,
    listeners: impl Into<Listeners>,
    shutdown: F,
) -> Result<(), StartError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let Listeners { grpc: listener, ws } = listeners.into();
    let verifier = config.verifier()?;
    let ws_settings = config.ws_settings()?;
    let gateway_id = config.gateway_id()?;
    let clients = Clients::new(&config.calls, &config.server)?;
    let keys = clients.keys;
    let bus = bus
        .with_credentials(keys.clone())
        .map_err(StartError::config)?;
    let hub = Hub::default();
    let (offline, telling) =
        OfflineTeller::new(hub.clone(), clients.presence.clone(), gateway_id.clone());
    let upstream = Upstream {
        message: clients.message,
        acks: AckWriter::start(clients.receipt.clone()),
        receipt: clients.receipt,
        notification: clients.notification,
        presence: clients.presence,
        offline,
        retries: parley_server::retry::Retries::default(),
    };
    let interval = Duration::from_millis(u64::from(config.heartbeat_interval_ms));
    // Everything the gateway does lives inside this future: dropping it (a
    // crash, as far as clients and presence can tell) stops the sessions, the
    // dispatcher and the heartbeats without a goodbye.
    let background = futures::future::join(
        hub::dispatch(hub.clone(), bus.subscribe(&gateway_id)),
        heartbeat(
            hub.clone(),
            upstream.presence.clone(),
            gateway_id.clone(),
            interval,
        ),
    );
    let (stop, stopping) = watch::channel(false);
    let stop = std::sync::Arc::new(stop);
    let api = GatewayApi {
        verifier,
        hub,
        upstream: std::sync::Arc::new(upstream),
        gateway_id: gateway_id.clone(),
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        outbound_queue: usize::try_from(config.outbound_queue).unwrap_or(1024),
        limits: session::Limits {
            slow_after: Duration::from_millis(config.slow_consumer_timeout_ms),
            send_queue: usize::try_from(config.send_queue).unwrap_or(32),
            send_wait: Duration::from_millis(config.send_wait_ms),
            retry_max: Duration::from_millis(config.retry_max_ms),
        },
        auth_timeout: Duration::from_millis(config.auth_timeout_ms),
        pending: Pending::new(PendingLimits {
            per_connection: usize::try_from(config.max_unauthenticated_per_connection)
                .unwrap_or(usize::MAX),
            per_address: usize::try_from(config.max_unauthenticated_per_address)
                .unwrap_or(usize::MAX),
        }),
        max_streams_per_user: usize::try_from(config.max_streams_per_user).unwrap_or(usize::MAX),
        stopping,
    };
    let api = std::sync::Arc::new(api);
    let mut routes = RoutesBuilder::default();
    routes.add_service(GatewayServiceServer::from_arc(api.clone()));
    // WebSocket clients, until the gateway stops; their sessions say goodbye
    // as the gRPC ones do.
    let websocket = {
        let mut stopped = stop.subscribe();
        async move {
            let Some(ws) = ws else {
                return std::future::pending().await;
            };
            let addr = match ws.local_addr() {
                Ok(addr) => addr,
                Err(error) => return error,
            };
            tracing::info!(%addr, path = ws::PATH, "gateway listening for WebSocket");
            let shutdown = async move {
                let _ = stopped.wait_for(|stopping| *stopping).await;
            };
            // Stopped cleanly: the gRPC server's end ends the gateway.
            match ws::serve(ws, api, ws_settings, shutdown).await {
                Ok(()) => std::future::pending().await,
                Err(error) => error,
            }
        }
    };
    let addr = listener.local_addr().map_err(StartError::config)?;
    tracing::info!(%addr, gateway_id = %gateway_id, "gateway listening");
    let mut settings = config.server.guard_settings(keys);
    settings.public_prefix = Some("/parley.gateway.v1.GatewayService/");
    // On shutdown the sessions say goodbye (closing frame, presence offline),
    // which ends their streams so the server can finish.
    let shutdown = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            let _ = stop.send(true);
        }
    };
    // The teller runs inside this future too: a dropped gateway tells nothing.
    let mut telling = std::pin::pin!(telling);
    let served = tokio::select! {
        served = parley_server::serve_with(
            listener,
            settings,
            config.server.shutdown_grace(),
            (routes, &[parley_proto::gateway::gateway_service_server::SERVICE_NAME]),
            shutdown,
        ) => served,
        error = websocket => return Err(StartError::Failed(format!("the WebSocket server failed: {error}"))),
        _ = background => return Err(StartError::Failed("the bus subscription ended".into())),
        // Ends only when every session and the handler are gone.
        () = &mut telling => return Err(StartError::Failed("the offline teller ended".into())),
    };
    drop(stop);
    // Sessions still saying goodbye hand their devices over as they end; the
    // teller ends once the last has and its batch is sent.
    if tokio::time::timeout(config.server.shutdown_grace(), telling)
        .await
        .is_err()
    {
        tracing::warn!(
            "sessions still open after the grace period; their presence entries will lapse"
        );
    }
    Ok(served?)
}

/// A stream refused before it is authenticated.
fn unauthenticated(message: &'static str) -> Status {
    parley_server::error::status(Reason::Unauthenticated, message)
}
