//! The presence service: which devices are online, on which gateway, and when
//! each user was last seen. Gateways register devices and heartbeat them in
//! batches; entries lapse when heartbeats stop, so the devices of a gateway
//! that died without a goodbye go offline on their own. The message and
//! receipt services ask it where to route (`BatchGetPresence`).

#![forbid(unsafe_code)]

pub mod domain;
pub mod service;
pub mod store;

use std::{future::Future, net::SocketAddr, time::Duration};

use parley_proto::presence::presence_service_server::PresenceServiceServer;
use parley_server::ServerArgs;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

use crate::{
    service::PresenceApi,
    store::{Lifetimes, MemoryPresenceStore, PresenceError, PresenceStore, RedisPresenceStore},
};

/// The presence service's configuration, from flags or `PARLEY_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "PARLEY_PRESENCE_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    pub listen: SocketAddr,
    /// Redis holding presence (`redis://host:6379/0`, or `rediss://` for
    /// TLS). Unset: presence is kept in this process's memory, which suits
    /// one replica only (`make dev`).
    #[arg(long, env = "PARLEY_PRESENCE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// How to trust a `rediss://` Redis.
    #[command(flatten)]
    pub redis_tls: parley_bus::RedisTls,
    /// A device is offline this long after its last heartbeat, in milliseconds.
    /// Keep it about 1.5 times the gateways' heartbeat interval.
    #[arg(long, env = "PARLEY_PRESENCE_TTL_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u32).range(100..=3_600_000))]
    pub ttl_ms: u32,
    /// How often a WatchPresence stream re-reads its users, in milliseconds
    /// (changes through the same replica are sent at once).
    #[arg(long, env = "PARLEY_PRESENCE_WATCH_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub watch_interval_ms: u64,
    /// Redis connections in the pool.
    #[arg(long, env = "PARLEY_PRESENCE_REDIS_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub redis_connections: u64,
    /// Flags shared by every service: logging, request limits, internal token.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "parley-presence",
    version,
    about = "Parley presence service: online devices and their gateways"
)]
pub struct Cli {
    /// What to do (`migrate` has nothing to do here and succeeds).
    #[command(subcommand)]
    pub command: Option<parley_server::Command>,
    /// Configuration.
    #[command(flatten)]
    pub config: Config,
}

/// Why the service could not start or stopped with an error.
pub type StartError = parley_server::serve::StartError<PresenceError>;

/// Last-seen times are kept for 30 days.
const LAST_SEEN_MS: i64 = 30 * 24 * 3600 * 1000;

/// Runs the service on `listener` until `shutdown` resolves.
pub async fn run<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), StartError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let lifetimes = Lifetimes {
        ttl_ms: i64::from(config.ttl_ms),
        last_seen_ms: LAST_SEEN_MS,
    };
    match &config.redis_url {
        Some(url) => {
            let connections = usize::try_from(config.redis_connections).unwrap_or(16);
            let store = RedisPresenceStore::new(url, &config.redis_tls, lifetimes, connections)?;
            run_with(store, "redis", config, listener, shutdown).await
        }
        None => {
            let store = MemoryPresenceStore::new(lifetimes);
            run_with(store, "memory", config, listener, shutdown).await
        }
    }
}

async fn run_with<S, F>(
    store: S,
    backend: &'static str,
    config: Config,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), StartError>
where
    S: PresenceStore,
    F: Future<Output = ()> + Send + 'static,
{
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let api = PresenceApi::new(
        store,
        config.ttl_ms,
        Duration::from_millis(config.watch_interval_ms),
        stopping,
    );
    let mut routes = RoutesBuilder::default();
    routes.add_service(PresenceServiceServer::new(api));
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Config(e.to_string()))?;
    tracing::info!(%addr, backend, ttl_ms = config.ttl_ms, "presence service listening");
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let keys = config
        .server
        .credentials("presence")
        .map_err(|e| StartError::Config(e.to_string()))?;
    parley_server::serve(
        listener,
        &config.server,
        keys,
        routes,
        &[parley_proto::presence::presence_service_server::SERVICE_NAME],
        shutdown,
    )
    .await
    .map_err(StartError::Serve)
}
