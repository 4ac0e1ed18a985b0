//! The notification service. This release keeps the durable offline-push
//! queue: the message service hands it each message's offline members
//! (`EnqueueOffline`), and the batch is stored before the call returns.
//! Sending through APNs and FCM, device tokens and mutes are not built yet
//! (issue #4): those RPCs answer UNIMPLEMENTED.

#![forbid(unsafe_code)]

pub mod service;
pub mod store;

use std::{future::Future, net::SocketAddr};

use parley_proto::notification::notification_service_server::NotificationServiceServer;
use parley_server::{
    ServerArgs,
    db::{Backend, DatabaseUrl},
};
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

use crate::{
    service::NotificationApi,
    store::{MySqlQueueStore, QueueError, QueueStore, SqliteQueueStore},
};

/// The notification service's configuration, from flags or `PARLEY_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_LISTEN",
        default_value = "127.0.0.1:50055"
    )]
    pub listen: SocketAddr,
    /// Database: `mysql://user:pass@host:3306/db` or `sqlite:path/to/file.db`.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_DATABASE_URL",
        default_value = "sqlite:data/notification.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,
    /// Flags shared by every service: storage pool, migrations, logging, request limits.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The command line: serve (default) or migrate.
#[derive(Debug, clap::Parser)]
#[command(
    name = "parley-notification",
    version,
    about = "Parley notification service: the offline push queue"
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
pub type StartError = parley_server::serve::StartError<QueueError>;

/// Applies pending migrations and returns.
pub async fn migrate(config: &Config) -> Result<(), StartError> {
    let url = config.database_url.expose();
    match config.database_url.backend() {
        Backend::MySql => MySqlQueueStore::connect(url, 1).await?.migrate().await?,
        Backend::Sqlite => SqliteQueueStore::connect(url).await?.migrate().await?,
    }
    Ok(())
}

/// Runs the service on `listener` until `shutdown` resolves.
pub async fn run<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), StartError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let url = config.database_url.expose().to_owned();
    match config.database_url.backend() {
        Backend::MySql => {
            let store = MySqlQueueStore::connect(&url, config.server.db_max_connections).await?;
            run_with(store, config, listener, shutdown).await
        }
        Backend::Sqlite => {
            let store = SqliteQueueStore::connect(&url).await?;
            run_with(store, config, listener, shutdown).await
        }
    }
}

async fn run_with<S, F>(
    store: S,
    config: Config,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), StartError>
where
    S: QueueStore,
    F: Future<Output = ()> + Send + 'static,
{
    if config.server.migrate_on_start {
        store.migrate().await?;
    }
    let mut routes = RoutesBuilder::default();
    routes.add_service(NotificationServiceServer::new(NotificationApi::new(store)));
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Config(e.to_string()))?;
    tracing::info!(%addr, "notification service listening (queue only: APNs and FCM senders are not built yet)");
    parley_server::serve(listener, &config.server, routes, shutdown)
        .await
        .map_err(StartError::Serve)
}
