//! The notification service: device push tokens and mutes, the durable
//! offline-push queue the message service fills (`EnqueueOffline`, stored before
//! it answers), and the worker that drains it through APNs and FCM HTTP
//! v1 as one collapsed notification per user and group.

#![forbid(unsafe_code)]

pub mod apns;
pub mod endpoint;
pub mod fcm;
pub mod providers;
pub mod push;
pub mod service;
pub mod store;
pub mod worker;

use std::{future::Future, net::SocketAddr, time::Duration};

use parley_proto::notification::notification_service_server::NotificationServiceServer;
use parley_server::{
    ServerArgs, StartError,
    db::{DatabaseArgs, DatabaseUrl, Opened},
    runner::{Service, Serving, Stored},
};
use tokio::net::TcpListener;

use crate::{
    providers::PushArgs,
    push::Senders,
    service::NotificationApi,
    store::{MySqlQueueStore, QueueStore, SqliteQueueStore},
    worker::{Policy, Worker},
};

/// The notification service's configuration, from flags or `PARLEY_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_LISTEN",
        default_value_t = parley_server::ports::local(parley_server::ports::NOTIFICATION)
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
    /// The services it calls.
    #[command(flatten)]
    pub calls: Callees,
    /// Push providers and their credentials.
    #[command(flatten)]
    pub push: PushArgs,
    /// Collapsing, throttling and retries.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The database's pool and migrations.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Flags shared by every service: logging, metrics, request limits, credentials.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// How pushes are collapsed, throttled and retried.
#[derive(Clone, Debug, clap::Args)]
pub struct PolicyArgs {
    /// Messages to a user in one group within this many milliseconds become
    /// one notification ("3 new messages in Design").
    #[arg(long, env = "PARLEY_NOTIFICATION_COLLAPSE_WINDOW_MS", default_value_t = 3_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub collapse_window_ms: u64,
    /// Groups with at least this many members are large.
    #[arg(long, env = "PARLEY_NOTIFICATION_LARGE_GROUP", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(2..))]
    pub large_group: u32,
    /// Collapse window in large groups: a member is pushed at most once per
    /// window per group, in milliseconds.
    #[arg(long, env = "PARLEY_NOTIFICATION_LARGE_GROUP_WINDOW_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub large_group_window_ms: u64,
    /// Attempts per push and device before it goes to the dead-letter table.
    #[arg(long, env = "PARLEY_NOTIFICATION_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=50))]
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubles per attempt, with jitter. A
    /// provider's Retry-After is honoured when longer.
    #[arg(long, env = "PARLEY_NOTIFICATION_BACKOFF_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub backoff_ms: u64,
    /// Longest retry delay chosen by the service, in milliseconds.
    #[arg(long, env = "PARLEY_NOTIFICATION_MAX_BACKOFF_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub max_backoff_ms: u64,
    /// How long a worker holds a claimed push before another may take it over,
    /// in milliseconds; a provider's retry due later than this is given up
    /// (dead-lettered) rather than put back.
    #[arg(long, env = "PARLEY_NOTIFICATION_LEASE_MS", default_value_t = 600_000,
          value_parser = clap::value_parser!(u64).range(1_000..=86_400_000))]
    pub lease_ms: u64,
    /// How often the queue is checked for due pushes, in milliseconds.
    #[arg(long, env = "PARLEY_NOTIFICATION_POLL_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_ms: u64,
    /// (User, group) pairs pushed to at once, in batches of up to 64 that are
    /// claimed, read and settled together.
    #[arg(long, env = "PARLEY_NOTIFICATION_WORKERS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub workers: u32,
}

impl PolicyArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> Policy {
        Policy {
            window: Duration::from_millis(self.collapse_window_ms),
            large_group: self.large_group,
            large_group_window: Duration::from_millis(self.large_group_window_ms),
            max_attempts: self.max_attempts,
            backoff_base: Duration::from_millis(self.backoff_ms),
            backoff_max: Duration::from_millis(self.max_backoff_ms),
            lease: Duration::from_millis(self.lease_ms),
            poll: Duration::from_millis(self.poll_ms),
            concurrency: usize::try_from(self.workers).unwrap_or(usize::MAX),
        }
    }
}

/// The notification service, as `parley_server::runner` runs it.
pub struct Notification;

parley_server::service_config!(Config, stored);

impl Service for Notification {
    const BINARY: &'static str = "parley-notification";
    const ABOUT: &'static str = "Parley notification service: offline pushes through APNs and FCM";
    type Config = Config;

    fn check(config: &Config) -> Result<(), StartError> {
        config.push.senders().map_err(StartError::config)?;
        Clients::new(&config.calls, &config.server).map(drop)
    }

    async fn run<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), StartError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Credentials first: a service that will refuse to start changes
        // nothing.
        let senders = config.push.senders().map_err(StartError::config)?;
        let clients = Clients::new(&config.calls, &config.server)?;
        config.push.log_providers(&senders);
        let opened = Notification::open(&config).await?;
        let serving = Serving::new(clients.keys.clone(), listener, shutdown);
        match opened {
            Opened::MySql(store) => serve(store, senders, clients, config, serving).await,
            Opened::Sqlite(store) => serve(store, senders, clients, config, serving).await,
        }
    }
}

impl Stored for Notification {
    type MySql = MySqlQueueStore;
    type Sqlite = SqliteQueueStore;
}

/// The command line: serve (default) or migrate.
pub type Cli = parley_server::runner::StoredCli<Config>;

parley_server::callees!("notification" calls {
    /// The presence service: users with a device online get no push.
    presence: PresenceUrl,
    /// The receipt service: read cursors and unread counts (the badge).
    receipt: ReceiptUrl,
    /// The message service: a group is muted only by its members.
    message: MessageUrl,
});

async fn serve(
    store: impl QueueStore,
    senders: Senders,
    clients: Clients,
    config: Config,
    mut serving: Serving,
) -> Result<(), StartError> {
    let policy = config.policy.policy();
    let worker = Worker::new(
        store.clone(),
        senders,
        clients.presence,
        clients.receipt,
        policy.clone(),
    );
    serving
        .background
        .spawn("push worker", |stopping| worker.run(stopping));
    let api = NotificationApi::new(store.clone(), policy, clients.message);
    serving.add(NotificationServiceServer::new(api));
    serving.serve_stored(&store, &config.server).await
}
