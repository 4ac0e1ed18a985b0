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
use parley_server::{
    ServerArgs, StartError,
    runner::{Service, Serving},
};
use tokio::net::TcpListener;

use crate::{
    service::PresenceApi,
    store::{Lifetimes, MemoryPresenceStore, PresenceStore, RedisPresenceStore},
};

/// The presence service's configuration, from flags or `PARLEY_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "PARLEY_PRESENCE_LISTEN",
        default_value_t = parley_server::ports::local(parley_server::ports::PRESENCE)
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
    /// Flags shared by every service: logging, metrics, request limits, credentials.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The presence service, as `parley_server::runner` runs it.
pub struct Presence;

parley_server::service_config!(Config);

impl Service for Presence {
    const BINARY: &'static str = "parley-presence";
    const ABOUT: &'static str = "Parley presence service: online devices and their gateways";
    type Config = Config;

    fn check(config: &Config) -> Result<(), StartError> {
        config
            .server
            .credentials("presence")
            .map_err(StartError::config)?;
        Store::open(config).map(drop)
    }

    async fn run<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), StartError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let keys = config
            .server
            .credentials("presence")
            .map_err(StartError::config)?;
        let store = Store::open(&config)?;
        let serving = Serving::new(keys, listener, shutdown);
        match store {
            Store::Redis(store) => serve(store, "redis", config, serving).await,
            Store::Memory(store) => serve(store, "memory", config, serving).await,
        }
    }
}

/// The command line: flags only (presence keeps no database).
pub type Cli = parley_server::runner::Cli<Config>;

/// Last-seen times are kept for 30 days.
const LAST_SEEN_MS: i64 = 30 * 24 * 3600 * 1000;

/// Where presence is kept: Redis, or this process's memory.
enum Store {
    Redis(RedisPresenceStore),
    Memory(MemoryPresenceStore),
}

impl Store {
    /// The store the configuration names (Redis connects on first use).
    fn open(config: &Config) -> Result<Self, StartError> {
        let lifetimes = Lifetimes {
            ttl_ms: i64::from(config.ttl_ms),
            last_seen_ms: LAST_SEEN_MS,
        };
        Ok(match &config.redis_url {
            Some(url) => {
                let connections = usize::try_from(config.redis_connections).unwrap_or(16);
                Self::Redis(
                    RedisPresenceStore::new(url, &config.redis_tls, lifetimes, connections)
                        .map_err(StartError::config)?,
                )
            }
            None => Self::Memory(MemoryPresenceStore::new(lifetimes)),
        })
    }
}

async fn serve(
    store: impl PresenceStore,
    backend: &'static str,
    config: Config,
    mut serving: Serving,
) -> Result<(), StartError> {
    // Watch streams end when the service stops, so the server can finish.
    let api = PresenceApi::new(
        store,
        config.ttl_ms,
        Duration::from_millis(config.watch_interval_ms),
        serving.background.stopping(),
    );
    serving.add(PresenceServiceServer::new(api));
    tracing::info!(backend, ttl_ms = config.ttl_ms, "presence store");
    serving.serve(&config.server).await
}
