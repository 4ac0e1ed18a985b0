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

use std::{net::SocketAddr, time::Duration};

use parley_bus::{Bus, BusArgs};
use parley_proto::message::message_service_server::MessageServiceServer;
use parley_server::{
    ServerArgs, StartError,
    db::{DatabaseArgs, DatabaseUrl},
    runner::Serving,
};

use crate::{
    fanout::Fanout,
    outbox::{Downstream, Drainer, Wake},
    service::{Limits, MessageApi},
    store::{MessageStore, MySqlMessageStore, SqliteMessageStore},
};

/// The message service's configuration, from flags or `PARLEY_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "PARLEY_MESSAGE_LISTEN", default_value_t = parley_server::ports::local(parley_server::ports::MESSAGE))]
    pub listen: SocketAddr,
    /// Database: `mysql://user:pass@host:3306/db` or `sqlite:path/to/file.db`.
    #[arg(
        long,
        env = "PARLEY_MESSAGE_DATABASE_URL",
        default_value = "sqlite:data/message.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,
    /// The services it calls.
    #[command(flatten)]
    pub calls: Callees,
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
    /// The database's pool and migrations.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Flags shared by every service: logging, metrics, request limits, credentials.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The message service, as `parley_server::runner` runs it.
pub struct Message;

parley_server::service_config!(Config, stored);

parley_bus::bus_service!(
    Message,
    "parley-message",
    "Parley message service: groups, membership, messages",
    MySqlMessageStore,
    SqliteMessageStore
);

parley_server::callees!("message" calls {
    /// The receipt service, for the outbox drainer.
    receipt: ReceiptUrl,
    /// The presence service, for fan-out.
    presence: PresenceUrl,
    /// The notification service, for offline members.
    notification: NotificationUrl,
});

async fn serve(
    store: impl MessageStore,
    bus: Bus,
    clients: Clients,
    config: Config,
    mut serving: Serving,
) -> Result<(), StartError> {
    let fanout = Fanout::new(clients.presence, bus);
    let downstream = Downstream {
        receipt: clients.receipt,
        notification: clients.notification,
        fanout: fanout.clone(),
    };
    let wake = Wake::default();
    let max_backoff = Duration::from_millis(config.outbox_max_backoff_ms);
    let background = &mut serving.background;
    background.spawn("outbox", |stopping| {
        Drainer::new(store.clone(), downstream, wake.clone(), max_backoff).run(stopping)
    });
    background.spawn("outbox gauges", |stopping| {
        Drainer::report(store.clone(), Duration::from_secs(10), stopping)
    });
    background.spawn("fan-out repair", |stopping| {
        fanout.clone().repair(
            store.clone(),
            Duration::from_millis(config.fanout_retry_ms),
            stopping,
        )
    });

    let limits = Limits {
        max_content_bytes: usize::try_from(config.max_content_bytes).unwrap_or(usize::MAX),
        max_group_members: config.max_group_members,
        sends: parley_server::shed::Admission::new(
            "message service",
            usize::try_from(config.max_concurrent_sends).unwrap_or(8),
            Duration::from_millis(config.send_wait_ms),
        ),
    };
    let api = MessageApi::new(store.clone(), limits, wake, fanout);
    serving.add(MessageServiceServer::new(api));
    serving.serve_stored(&store, &config.server).await
}
