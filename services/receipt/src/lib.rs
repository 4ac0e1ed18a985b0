//! The receipt service: each member's delivered and read cursors, and the
//! `msg_acks` read-receipt ledger. It answers "read by k of N, and who" at any
//! group size from the cursors, and keeps when each reader read for small
//! groups' messages that want receipts (see ARCHITECTURE.md, "Receipt tiers").

#![forbid(unsafe_code)]

pub mod digest;
pub mod domain;
pub mod error;
pub mod retention;
pub mod service;
pub mod store;

use std::{future::Future, net::SocketAddr, time::Duration};

use parley_bus::{Bus, BusArgs};
use parley_proto::{
    message::message_service_client::MessageServiceClient,
    presence::presence_service_client::PresenceServiceClient,
    receipt::receipt_service_server::ReceiptServiceServer,
};
use parley_server::{
    ServerArgs,
    db::{Backend, DatabaseUrl},
    upstream::{MessageUrl, PresenceUrl},
};
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

use crate::{
    digest::Coalescer,
    error::ReceiptError,
    service::ReceiptApi,
    store::{MySqlReceiptStore, ReceiptStore, SqliteReceiptStore},
};

/// The receipt service's configuration, from flags or `PARLEY_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "PARLEY_RECEIPT_LISTEN", default_value = "127.0.0.1:50054")]
    pub listen: SocketAddr,
    /// Database: `mysql://user:pass@host:3306/db` or `sqlite:path/to/file.db`.
    #[arg(
        long,
        env = "PARLEY_RECEIPT_DATABASE_URL",
        default_value = "sqlite:data/receipt.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,
    /// Groups with up to this many recipients keep each reader's read time
    /// for messages that want receipts (the ledger tier); readers of larger
    /// groups' messages are answered from the cursors alone.
    #[arg(long, env = "PARLEY_RECEIPT_LEDGER_MAX_MEMBERS", default_value_t = 200,
          value_parser = clap::value_parser!(i64).range(0..=5000))]
    pub ledger_max_members: i64,
    /// Messages older than this many hours leave the ledger tier, and read
    /// times from before then are deleted (readers still come from the
    /// cursors).
    #[arg(long, env = "PARLEY_RECEIPT_RETENTION_HOURS", default_value_t = 168,
          value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub retention_hours: u64,
    /// How often the retention job runs, in seconds.
    #[arg(long, env = "PARLEY_RECEIPT_RETENTION_INTERVAL_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub retention_interval_secs: u64,
    /// Read acks within this window, in milliseconds, reach a sender as one
    /// receipt digest.
    #[arg(long, env = "PARLEY_RECEIPT_DIGEST_WINDOW_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub digest_window_ms: u64,
    /// The presence service, to find senders' gateways.
    #[command(flatten)]
    pub presence: PresenceUrl,
    /// The message service, which says how far a group's messages go when an
    /// ack is past what the outbox has delivered here.
    #[command(flatten)]
    pub message: MessageUrl,
    /// The bus to the gateways.
    #[command(flatten)]
    pub bus: BusArgs,
    /// Flags shared by every service: storage pool, migrations, logging, request limits.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The command line: serve (default) or migrate.
#[derive(Debug, clap::Parser)]
#[command(
    name = "parley-receipt",
    version,
    about = "Parley receipt service: ack cursors and read receipts"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<parley_server::Command>,
    /// Configuration.
    #[command(flatten)]
    pub config: Config,
}

/// Why the service could not start or stopped with an error.
pub type StartError = parley_server::serve::StartError<ReceiptError>;

/// Applies pending migrations and returns.
pub async fn migrate(config: &Config) -> Result<(), StartError> {
    let url = config.database_url.expose();
    match config.database_url.backend() {
        Backend::MySql => MySqlReceiptStore::connect(url, 1).await?.migrate().await?,
        Backend::Sqlite => SqliteReceiptStore::connect(url).await?.migrate().await?,
    }
    Ok(())
}

/// Runs the service on `listener` until `shutdown` resolves.
pub async fn run<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), StartError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let bus = config
        .bus
        .connect()
        .map_err(|e| StartError::Config(e.to_string()))?;
    run_on_bus(config, bus, listener, shutdown).await
}

/// [`run`] publishing digests on a given bus (an in-process one shared with
/// gateways).
pub async fn run_on_bus<F>(
    config: Config,
    bus: Bus,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), StartError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let url = config.database_url.expose().to_owned();
    match config.database_url.backend() {
        Backend::MySql => {
            let store = MySqlReceiptStore::connect(&url, config.server.db_max_connections).await?;
            run_with(store, bus, config, listener, shutdown).await
        }
        Backend::Sqlite => {
            run_with(
                SqliteReceiptStore::connect(&url).await?,
                bus,
                config,
                listener,
                shutdown,
            )
            .await
        }
    }
}

async fn run_with<S, F>(
    store: S,
    bus: Bus,
    config: Config,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), StartError>
where
    S: ReceiptStore,
    F: Future<Output = ()> + Send + 'static,
{
    // Credentials first: a service that will refuse to start changes nothing.
    let (keys, identity) = config
        .server
        .identity("receipt")
        .map_err(StartError::Config)?;
    let bus = bus
        .with_credentials(keys.clone())
        .map_err(|e| StartError::Config(e.to_string()))?;
    if config.server.migrate_on_start {
        store.migrate().await?;
    }
    let retention = tokio::spawn(retention::run(
        store.clone(),
        Duration::from_secs(config.retention_hours * 3600),
        Duration::from_secs(config.retention_interval_secs),
    ));
    let presence = PresenceServiceClient::with_interceptor(
        config.presence.channel().map_err(StartError::Config)?,
        identity.to("presence"),
    );
    let message = MessageServiceClient::with_interceptor(
        config.message.channel().map_err(StartError::Config)?,
        identity.to("message"),
    );
    let coalescer = Coalescer::default();
    let digests = tokio::spawn(digest::run(
        store.clone(),
        coalescer.clone(),
        presence,
        bus,
        Duration::from_millis(config.digest_window_ms),
    ));
    let mut routes = RoutesBuilder::default();
    routes.add_service(ReceiptServiceServer::new(ReceiptApi::new(
        store,
        config.ledger_max_members,
        coalescer,
        message,
    )));
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Config(e.to_string()))?;
    tracing::info!(%addr, ledger_max_members = config.ledger_max_members, "receipt service listening");
    let served = parley_server::serve(
        listener,
        &config.server,
        keys,
        routes,
        &[parley_proto::receipt::receipt_service_server::SERVICE_NAME],
        shutdown,
    )
    .await;
    retention.abort();
    digests.abort();
    served.map_err(StartError::Serve)
}
