//! The message service: groups, membership, messages and each group's dense
//! sequence. A send is acknowledged only after the message, its seq and an outbox
//! entry are committed together; the outbox is then drained to the receipt
//! service, so receipt state is complete even if that service was down.

#![forbid(unsafe_code)]

pub mod domain;
pub mod error;
pub mod fanout;
pub mod outbox;
pub mod publish_order;
pub mod service;
pub mod store;

use std::{future::Future, net::SocketAddr, time::Duration};

use parley_bus::{Bus, BusArgs};
use parley_proto::{
    message::message_service_server::MessageServiceServer,
    notification::notification_service_client::NotificationServiceClient,
    presence::presence_service_client::PresenceServiceClient,
    receipt::receipt_service_client::ReceiptServiceClient,
};
use parley_server::{
    ServerArgs,
    db::{Backend, DatabaseUrl},
    upstream::{NotificationUrl, PresenceUrl, ReceiptUrl},
};
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

use crate::{
    error::MessageError,
    fanout::Fanout,
    outbox::{Downstream, Drainer, Wake},
    service::{Limits, MessageApi},
    store::{MessageStore, MySqlMessageStore, SqliteMessageStore},
};

/// The message service's configuration, from flags or `PARLEY_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "PARLEY_MESSAGE_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Database: `mysql://user:pass@host:3306/db` or `sqlite:path/to/file.db`.
    #[arg(
        long,
        env = "PARLEY_MESSAGE_DATABASE_URL",
        default_value = "sqlite:data/message.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,
    /// The receipt service, for the outbox drainer.
    #[command(flatten)]
    pub receipt: ReceiptUrl,
    /// The presence service, for fan-out.
    #[command(flatten)]
    pub presence: PresenceUrl,
    /// The notification service, for offline members.
    #[command(flatten)]
    pub notification: NotificationUrl,
    /// The bus to the gateways.
    #[command(flatten)]
    pub bus: BusArgs,
    /// Largest message content, in bytes (at most 3 MiB).
    #[arg(long, env = "PARLEY_MAX_CONTENT_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=3 * 1024 * 1024))]
    pub max_content_bytes: u64,
    /// Largest number of members in a group.
    #[arg(long, env = "PARLEY_MAX_GROUP_MEMBERS", default_value_t = 100_000,
          value_parser = clap::value_parser!(i64).range(2..=10_000_000))]
    pub max_group_members: i64,
    /// Sends whose transaction may run at once; more wait for a turn.
    #[arg(long, env = "PARLEY_MESSAGE_MAX_CONCURRENT_SENDS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrent_sends: u32,
    /// Longest a send waits for its turn, in milliseconds; past it the send is
    /// refused with UNAVAILABLE and a retry hint, so under overload the sends
    /// admitted stay fast and the rest are shed with a reason.
    #[arg(long, env = "PARLEY_MESSAGE_SEND_WAIT_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub send_wait_ms: u64,
    /// How often a fan-out that failed (presence or the bus unreachable) is
    /// tried again until it gets through, in milliseconds: the longest an
    /// online member waits for a message after the outage ends.
    #[arg(long, env = "PARLEY_MESSAGE_FANOUT_RETRY_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub fanout_retry_ms: u64,
    /// Longest pause between outbox delivery retries, in milliseconds.
    #[arg(long, env = "PARLEY_OUTBOX_MAX_BACKOFF_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub outbox_max_backoff_ms: u64,
    /// Flags shared by every service: storage pool, migrations, logging, request limits.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The command line: serve (default) or migrate.
#[derive(Debug, clap::Parser)]
#[command(
    name = "parley-message",
    version,
    about = "Parley message service: groups, membership, messages"
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
pub type StartError = parley_server::serve::StartError<MessageError>;

/// Applies pending migrations and returns.
pub async fn migrate(config: &Config) -> Result<(), StartError> {
    let url = config.database_url.expose();
    match config.database_url.backend() {
        Backend::MySql => MySqlMessageStore::connect(url, 1).await?.migrate().await?,
        Backend::Sqlite => SqliteMessageStore::connect(url).await?.migrate().await?,
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

/// [`run`] publishing on a given bus (an in-process one shared with gateways).
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
            let store = MySqlMessageStore::connect(&url, config.server.db_max_connections).await?;
            run_with(store, bus, config, listener, shutdown).await
        }
        Backend::Sqlite => {
            run_with(
                SqliteMessageStore::connect(&url).await?,
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
    S: MessageStore,
    F: Future<Output = ()> + Send + 'static,
{
    // Credentials first: a service that will refuse to start changes nothing.
    let (keys, identity) = config
        .server
        .identity("message")
        .map_err(StartError::Config)?;
    let bus = bus
        .with_credentials(keys.clone())
        .map_err(|e| StartError::Config(e.to_string()))?;
    if config.server.migrate_on_start {
        store.migrate().await?;
    }
    let receipt = ReceiptServiceClient::with_interceptor(
        config.receipt.channel().map_err(StartError::Config)?,
        identity.to("receipt"),
    );
    let presence = PresenceServiceClient::with_interceptor(
        config.presence.channel().map_err(StartError::Config)?,
        identity.to("presence"),
    );
    let notification = NotificationServiceClient::with_interceptor(
        config.notification.channel().map_err(StartError::Config)?,
        identity.to("notification"),
    );
    let fanout = Fanout::new(presence, bus);
    let downstream = Downstream {
        receipt,
        notification,
        fanout: fanout.clone(),
    };
    let wake = Wake::default();
    let max_backoff = Duration::from_millis(config.outbox_max_backoff_ms);
    let drainer =
        tokio::spawn(Drainer::new(store.clone(), downstream, wake.clone(), max_backoff).run());
    let gauges = tokio::spawn(Drainer::report(store.clone(), Duration::from_secs(10)));
    let repair = tokio::spawn(
        fanout
            .clone()
            .repair(store.clone(), Duration::from_millis(config.fanout_retry_ms)),
    );

    let limits = Limits {
        max_content_bytes: usize::try_from(config.max_content_bytes).unwrap_or(usize::MAX),
        max_group_members: config.max_group_members,
        sends: parley_server::shed::Admission::new(
            "message service",
            usize::try_from(config.max_concurrent_sends).unwrap_or(8),
            Duration::from_millis(config.send_wait_ms),
        ),
    };
    let mut routes = RoutesBuilder::default();
    routes.add_service(MessageServiceServer::new(MessageApi::new(
        store, limits, wake, fanout,
    )));
    tracing::info!(addr = %listener.local_addr().map_err(|e| StartError::Config(e.to_string()))?, "message service listening");
    let served = parley_server::serve(
        listener,
        &config.server,
        keys,
        routes,
        &[parley_proto::message::message_service_server::SERVICE_NAME],
        shutdown,
    )
    .await;
    drainer.abort();
    gauges.abort();
    repair.abort();
    served.map_err(StartError::Serve)
}
