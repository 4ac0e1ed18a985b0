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

use std::{net::SocketAddr, time::Duration};

use parley_bus::{Bus, BusArgs};
use parley_proto::receipt::receipt_service_server::ReceiptServiceServer;
use parley_server::{
    ServerArgs, StartError,
    db::{DatabaseArgs, DatabaseUrl},
    runner::Serving,
};

use crate::{
    digest::Coalescer,
    service::ReceiptApi,
    store::{MySqlReceiptStore, ReceiptStore, SqliteReceiptStore},
};

/// The receipt service's configuration, from flags or `PARLEY_*` variables.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "PARLEY_RECEIPT_LISTEN", default_value_t = parley_server::ports::local(parley_server::ports::RECEIPT))]
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
    /// The services it calls.
    #[command(flatten)]
    pub calls: Callees,
    /// The bus to the gateways.
    #[command(flatten)]
    pub bus: BusArgs,
    /// The database's pool and migrations.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Flags shared by every service: logging, metrics, request limits, credentials.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The receipt service, as `parley_server::runner` runs it.
pub struct Receipt;

parley_server::service_config!(Config, stored);

parley_bus::bus_service!(
    Receipt,
    "parley-receipt",
    "Parley receipt service: ack cursors and read receipts",
    MySqlReceiptStore,
    SqliteReceiptStore
);

parley_server::callees!("receipt" calls {
    /// The presence service, to find senders' gateways.
    presence: PresenceUrl,
    /// The message service, which says how far a group's messages go when an
    /// ack is past what the outbox has delivered here.
    message: MessageUrl,
});

async fn serve(
    store: impl ReceiptStore,
    bus: Bus,
    clients: Clients,
    config: Config,
    mut serving: Serving,
) -> Result<(), StartError> {
    let background = &mut serving.background;
    background.spawn("retention", |stopping| {
        retention::run(
            store.clone(),
            Duration::from_secs(config.retention_hours * 3600),
            Duration::from_secs(config.retention_interval_secs),
            stopping,
        )
    });
    let coalescer = Coalescer::default();
    background.spawn("receipt digests", |stopping| {
        digest::run(
            store.clone(),
            coalescer.clone(),
            clients.presence,
            bus,
            Duration::from_millis(config.digest_window_ms),
            stopping,
        )
    });
    let ledger_max = config.ledger_max_members;
    tracing::info!(ledger_max_members = ledger_max, "receipt ledger tier");
    let api = ReceiptApi::new(store.clone(), ledger_max, coalescer, clients.message);
    serving.add(ReceiptServiceServer::new(api));
    serving.serve_stored(&store, &config.server).await
}
