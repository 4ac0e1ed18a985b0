//! The bus: one channel per gateway, carrying message deliveries and receipt
//! digests from the message and receipt services to the gateway that holds the
//! recipients' streams. Two implementations share one interface: Redis pub/sub
//! (production, several processes) and an in-process bus (`make dev`, tests).
//!
//! The bus is at-most-once by design. Nothing relies on it for correctness:
//! gateways close seq gaps from the message service, and after a subscription
//! is re-established they are told so ([`Signal::Resubscribed`]) and resync
//! every connection, because events published meanwhile are gone.

#![forbid(unsafe_code)]

pub mod routing;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use deadpool_redis::redis::{self, AsyncCommands};
use futures::StreamExt;
use parley_proto::bus::{BusEvent, SignedEvent};
use parley_server::credentials::Keys;
use prost::Message;
use tokio::sync::mpsc;

/// Events a subscriber buffers before new ones are dropped (and recovered by
/// seq-gap sync). A gateway drains its channel continuously.
pub const SUBSCRIBER_BUFFER: usize = 8192;

/// What a subscriber receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// An event published on the channel.
    Event(BusEvent),
    /// The subscription was (re-)established; events published while it was
    /// down are lost, so every connection should resync.
    Resubscribed,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled Redis connection could be had.
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// The bus URL is not usable.
    #[error("bus configuration: {0}")]
    Config(String),
}

/// The `--bus-url` flag every publisher and gateway takes.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct BusArgs {
    /// The bus to the gateways (`redis://host:6379/0`, or `rediss://` for
    /// TLS). Unset: an in-process bus, which reaches only services in the
    /// same process (`parley dev`).
    #[arg(long, env = "PARLEY_BUS_URL", hide_env_values = true)]
    pub bus_url: Option<String>,
    /// How to trust a `rediss://` bus.
    #[command(flatten)]
    pub tls: RedisTls,
}

/// The runner's wiring of a service that publishes on the bus (the message
/// and receipt services), written once: its `Service` (`check` checks the
/// keys its `Clients` call with against the bus flags, `run` connects the
/// bus), its `Stored` store types, its `Cli`, and `run_on_bus`, which tests
/// and `parley dev` call with an in-process bus: credentials first, then the
/// store the URL names, then the crate's `serve`. The crate defines `Config`
/// (with `bus: BusArgs`, `calls: Callees` and `server: ServerArgs` fields),
/// `Callees` and `Clients` (with [`parley_server::callees!`]) and
/// `serve(store, bus, clients, config, serving)`.
#[macro_export]
macro_rules! bus_service {
    ($service:ident, $binary:literal, $about:literal, $mysql:ty, $sqlite:ty) => {
        impl ::parley_server::runner::Service for $service {
            const BINARY: &'static str = $binary;
            const ABOUT: &'static str = $about;
            type Config = Config;

            fn check(config: &Config) -> Result<(), ::parley_server::StartError> {
                let keys = Clients::new(&config.calls, &config.server)?.keys;
                config
                    .bus
                    .check(keys.as_ref())
                    .map_err(::parley_server::StartError::config)
            }

            async fn run<F>(
                config: Config,
                listener: ::tokio::net::TcpListener,
                shutdown: F,
            ) -> Result<(), ::parley_server::StartError>
            where
                F: ::std::future::Future<Output = ()> + Send + 'static,
            {
                let bus = config
                    .bus
                    .connect()
                    .map_err(::parley_server::StartError::config)?;
                run_on_bus(config, bus, listener, shutdown).await
            }
        }

        impl ::parley_server::runner::Stored for $service {
            type MySql = $mysql;
            type Sqlite = $sqlite;
        }

        /// The command line: serve (default) or migrate.
        pub type Cli = ::parley_server::runner::StoredCli<Config>;

        /// The service publishing on a given bus (an in-process one shared
        /// with gateways).
        pub async fn run_on_bus<F>(
            config: Config,
            bus: $crate::Bus,
            listener: ::tokio::net::TcpListener,
            shutdown: F,
        ) -> Result<(), ::parley_server::StartError>
        where
            F: ::std::future::Future<Output = ()> + Send + 'static,
        {
            use ::parley_server::runner::Stored as _;
            // Credentials first: a service that will refuse to start changes nothing.
            let clients = Clients::new(&config.calls, &config.server)?;
            let bus = bus
                .with_credentials(clients.keys.clone())
                .map_err(::parley_server::StartError::config)?;
            let opened = $service::open(&config).await?;
            let serving =
                ::parley_server::runner::Serving::new(clients.keys.clone(), listener, shutdown);
            match opened {
                ::parley_server::db::Opened::MySql(store) => {
                    serve(store, bus, clients, config, serving).await
                }
                ::parley_server::db::Opened::Sqlite(store) => {
                    serve(store, bus, clients, config, serving).await
                }
            }
        }
    };
}

impl BusArgs {
    /// Checks these flags without connecting, and that `keys` (the
    /// service's credentials, if any) can tag and check bus events.
    pub fn check(&self, keys: Option<&Keys>) -> Result<(), BusError> {
        if let Some(url) = &self.bus_url {
            self.tls.client(url)?;
        }
        trusts_subscriber(keys)
    }

    /// The bus these flags name.
    pub fn connect(&self) -> Result<Bus, BusError> {
        match self.bus_url.as_deref() {
            Some(url) => Bus::on_redis(self.tls.client(url)?),
            None => {
                tracing::warn!(
                    "no bus URL: using an in-process bus, which reaches only gateways in this process"
                );
                Ok(Bus::local())
            }
        }
    }
}

/// How a service trusts the Redis servers it reaches over TLS.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RedisTls {
    /// The CA (a PEM file) that signed the certificates of the `rediss://`
    /// servers, when it is the deployment's own rather than one the system
    /// trusts. Unset: the system's roots.
    #[arg(long, env = "PARLEY_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
}

impl RedisTls {
    /// A client for the Redis at `url`: `redis://` in the clear, `rediss://`
    /// over TLS, its certificate checked against the CA file when one is set
    /// (which only a `rediss://` URL may use).
    pub fn client(&self, url: &str) -> Result<redis::Client, BusError> {
        let Some(path) = &self.redis_ca_file else {
            return Ok(redis::Client::open(url)?);
        };
        let info = redis::IntoConnectionInfo::into_connection_info(url)?;
        if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
            return Err(BusError::Config(format!(
                "PARLEY_REDIS_CA_FILE ({}) is set, but the Redis URL is not rediss://",
                path.display()
            )));
        }
        let ca = std::fs::read(path).map_err(|error| {
            BusError::Config(format!(
                "cannot read the Redis CA file {}: {error}",
                path.display()
            ))
        })?;
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        };
        Ok(redis::Client::build_with_tls(info, certificates)?)
    }
}

/// A Redis connection pool with the settings every Parley service uses:
/// connections made on demand, 2 s to connect or to wait for a free one.
pub fn redis_pool(
    client: &redis::Client,
    max_size: usize,
) -> Result<deadpool_redis::Pool, BusError> {
    let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())?;
    deadpool_redis::Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(2)))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(|e| BusError::Config(e.to_string()))
}

/// The bus, cheap to clone.
#[derive(Clone)]
pub enum Bus {
    /// Redis pub/sub.
    Redis(RedisBus),
    /// In-process channels.
    Local(LocalBus),
}

impl Bus {
    /// A Redis bus at `url` (`redis://host:port/db`, `rediss://` for TLS
    /// with the system's roots).
    pub fn redis(url: &str) -> Result<Self, BusError> {
        Self::on_redis(redis::Client::open(url)?)
    }

    /// A Redis bus through `client`.
    pub fn on_redis(client: redis::Client) -> Result<Self, BusError> {
        RedisBus::new(client).map(Self::Redis)
    }

    /// This bus with the service's credentials: on Redis, events are
    /// published tagged by this service for the gateways, and only events
    /// tagged (or signed) by a service that publishes (the message and
    /// receipt services) are taken from a subscription. Without credentials
    /// (development mode), events go as they are; an in-process bus needs
    /// none. Refused when the credentials do not list the gateways' key,
    /// which the tags are made with.
    pub fn with_credentials(self, keys: Option<Keys>) -> Result<Self, BusError> {
        trusts_subscriber(keys.as_ref())?;
        Ok(match self {
            Self::Redis(bus) => Self::Redis(RedisBus { keys, ..bus }),
            local => local,
        })
    }

    /// A fresh in-process bus; clones share it.
    pub fn local() -> Self {
        Self::Local(LocalBus::default())
    }

    /// Publishes `event` on `gateway_id`'s channel. Succeeds even when nobody
    /// listens: the bus is a hint, not a queue.
    pub async fn publish(&self, gateway_id: &str, event: &BusEvent) -> Result<(), BusError> {
        let published = match self {
            Self::Redis(bus) => bus.publish(gateway_id, event).await,
            Self::Local(bus) => {
                bus.publish(gateway_id, event);
                Ok(())
            }
        };
        let outcome = if published.is_ok() { "ok" } else { "failed" };
        metrics::counter!("parley_bus_publish_total", "outcome" => outcome).increment(1);
        published
    }

    /// Subscribes to `gateway_id`'s channel. The first signal is
    /// [`Signal::Resubscribed`] once the subscription is live; the subscription
    /// ends when the receiver is dropped.
    pub fn subscribe(&self, gateway_id: &str) -> mpsc::Receiver<Signal> {
        match self {
            Self::Redis(bus) => bus.subscribe(gateway_id),
            Self::Local(bus) => bus.subscribe(gateway_id),
        }
    }
}

/// The Redis channel of a gateway.
pub fn channel_name(gateway_id: &str) -> String {
    format!("parley:gw:{gateway_id}")
}

/// Redis pub/sub: pooled connections publish; each subscription holds its own
/// connection and re-subscribes, with backoff, whenever it drops.
#[derive(Clone)]
pub struct RedisBus {
    client: Arc<redis::Client>,
    pool: deadpool_redis::Pool,
    keys: Option<Keys>,
}

/// The services whose events a gateway takes.
const PUBLISHERS: [&str; 2] = ["message", "receipt"];
/// The service that subscribes: events are tagged for it.
const SUBSCRIBER: &str = "gateway";

/// What goes on `channel` for `event`: tagged when there are credentials.
fn payload(keys: Option<&Keys>, channel: &str, event: &BusEvent) -> Result<Vec<u8>, BusError> {
    let encoded = event.encode_to_vec();
    let Some(keys) = keys else {
        return Ok(encoded);
    };
    let tag = keys.tag(SUBSCRIBER, channel, &encoded).ok_or_else(|| {
        BusError::Config(format!("no key for {SUBSCRIBER} to tag bus events with"))
    })?;
    Ok(SignedEvent {
        tag,
        signer: keys.name().to_owned(),
        event: encoded,
        signature: Vec::new(),
    }
    .encode_to_vec())
}

/// The event a payload from `channel` carries, if it is one this gateway
/// takes: well-formed and, with credentials, tagged or signed by a publisher
/// for this channel.
pub fn event_of(keys: Option<&Keys>, channel: &str, payload: &[u8]) -> Result<BusEvent, String> {
    let Some(keys) = keys else {
        return BusEvent::decode(payload).map_err(|e| e.to_string());
    };
    let signed = SignedEvent::decode(payload).map_err(|e| e.to_string())?;
    let (signer, event) = (signed.signer.as_str(), signed.event.as_slice());
    if signed.tag.is_empty() {
        keys.verify_signature(signer, &PUBLISHERS, channel, event, &signed.signature)
    } else {
        keys.verify_tag(signer, &PUBLISHERS, channel, event, &signed.tag)
    }
    .map_err(|refused| refused.to_string())?;
    BusEvent::decode(event).map_err(|e| e.to_string())
}

impl RedisBus {
    fn new(client: redis::Client) -> Result<Self, BusError> {
        let pool = redis_pool(&client, 16)?;
        Ok(Self {
            client: Arc::new(client),
            pool,
            keys: None,
        })
    }

    async fn publish(&self, gateway_id: &str, event: &BusEvent) -> Result<(), BusError> {
        let mut connection = self.pool.get().await?;
        let channel = channel_name(gateway_id);
        let payload = payload(self.keys.as_ref(), &channel, event)?;
        let _receivers: i64 = connection.publish(channel, payload).await?;
        Ok(())
    }

    fn subscribe(&self, gateway_id: &str) -> mpsc::Receiver<Signal> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        tokio::spawn(subscription(
            self.client.clone(),
            channel_name(gateway_id),
            tx,
            self.keys.clone(),
        ));
        rx
    }
}

/// Keeps one channel subscribed until the receiver goes away.
async fn subscription(
    client: Arc<redis::Client>,
    channel: String,
    tx: mpsc::Sender<Signal>,
    keys: Option<Keys>,
) {
    let mut failures = 0u32;
    while !tx.is_closed() {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %error, channel = %channel, "bus subscription cannot connect");
                tokio::time::sleep(retry_delay(failures)).await;
                continue;
            }
        };
        if let Err(error) = pubsub.subscribe(&channel).await {
            failures = failures.saturating_add(1);
            tracing::warn!(error = %error, channel = %channel, "bus subscribe failed");
            tokio::time::sleep(retry_delay(failures)).await;
            continue;
        }
        failures = 0;
        if tx.send(Signal::Resubscribed).await.is_err() {
            return;
        }
        tracing::info!(channel = %channel, "bus subscribed");
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    match event_of(keys.as_ref(), &channel, message.get_payload_bytes()) {
                        Ok(event) => {
                            if tx.try_send(Signal::Event(event)).is_err() && tx.is_closed() {
                                return;
                            }
                        }
                        Err(why) => {
                            metrics::counter!("parley_bus_refused_total").increment(1);
                            tracing::debug!(why = %why, channel = %channel, "bus event refused");
                        }
                    }
                }
                () = tx.closed() => return,
            }
        }
        tracing::warn!(channel = %channel, "bus subscription dropped; resubscribing");
    }
}

fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << failures.min(5))).min(Duration::from_secs(1))
}

/// In-process channels, one per gateway id.
#[derive(Clone, Default)]
pub struct LocalBus {
    channels: Arc<Mutex<HashMap<String, Vec<mpsc::Sender<Signal>>>>>,
}

impl LocalBus {
    fn publish(&self, gateway_id: &str, event: &BusEvent) {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(subscribers) = channels.get_mut(gateway_id) {
            subscribers.retain(|tx| !tx.is_closed());
            for tx in subscribers.iter() {
                // A full subscriber loses the event, as with Redis pub/sub.
                let _ = tx.try_send(Signal::Event(event.clone()));
            }
        }
    }

    fn subscribe(&self, gateway_id: &str) -> mpsc::Receiver<Signal> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let _ = tx.try_send(Signal::Resubscribed);
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(gateway_id.to_owned())
            .or_default()
            .push(tx);
        rx
    }
}

/// Refuses credentials that do not list the gateways' key, which bus events
/// are tagged for.
fn trusts_subscriber(keys: Option<&Keys>) -> Result<(), BusError> {
    match keys {
        Some(keys) if !keys.trusts(SUBSCRIBER) => Err(BusError::Config(format!(
            "PARLEY_SERVICE_PUBLIC_KEYS lists no key for {SUBSCRIBER}, which bus events are tagged for"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_proto::bus::{Delivery, bus_event};
    use parley_server::credentials::generate_keys as keys;

    fn delivery(uid: &str) -> BusEvent {
        BusEvent {
            event: Some(bus_event::Event::Delivery(Delivery {
                message: None,
                uids: vec![uid.to_owned()],
            })),
        }
    }

    #[test]
    fn a_gateway_takes_only_a_publisher_s_event_for_its_own_channel() {
        let [message, gateway] = keys(&["message", "gateway"]).try_into().expect("two");
        let event = delivery("uid1");
        let ours = channel_name("gw1");
        let tagged = payload(Some(&message), &ours, &event).expect("tagged");
        assert_eq!(event_of(Some(&gateway), &ours, &tagged), Ok(event.clone()));
        assert!(event_of(Some(&gateway), &channel_name("gw2"), &tagged).is_err());
        let by_a_gateway = payload(Some(&gateway), &ours, &event).expect("tagged");
        assert!(event_of(Some(&gateway), &ours, &by_a_gateway).is_err());
        let unsigned = payload(None, &ours, &event).expect("plain");
        assert!(event_of(Some(&gateway), &ours, &unsigned).is_err());
        assert_eq!(event_of(None, &ours, &unsigned), Ok(event));
    }

    #[test]
    fn a_gateway_still_takes_an_event_signed_by_an_earlier_publisher() {
        let [message, gateway] = keys(&["message", "gateway"]).try_into().expect("two");
        let event = delivery("uid1");
        let ours = channel_name("gw1");
        let encoded = event.encode_to_vec();
        let signed = |channel: &str| {
            SignedEvent {
                signature: message.sign(channel, &encoded),
                signer: "message".to_owned(),
                event: encoded.clone(),
                tag: Vec::new(),
            }
            .encode_to_vec()
        };
        assert_eq!(event_of(Some(&gateway), &ours, &signed(&ours)), Ok(event));
        let elsewhere = signed(&channel_name("gw2"));
        assert!(event_of(Some(&gateway), &ours, &elsewhere).is_err());
    }

    #[test]
    fn credentials_without_the_gateway_s_key_cannot_publish() {
        let [message] = keys(&["message"]).try_into().expect("one");
        let refused = Bus::local().with_credentials(Some(message)).err();
        assert!(matches!(refused, Some(BusError::Config(_))), "{refused:?}");
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;

        proptest::proptest! {
            /// Whatever anyone who can publish on the bus's Redis sends, a
            /// gateway with credentials refuses it (it cannot be signed) and
            /// one without decodes it or refuses it; never a panic.
            #[test]
            fn any_payload_is_refused_unless_signed(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
                let [gateway] = keys(&["gateway"]).try_into().expect("one");
                let channel = channel_name("gw1");
                proptest::prop_assert!(event_of(Some(&gateway), &channel, &payload).is_err());
                proptest::prop_assert_eq!(
                    event_of(None, &channel, &payload).ok(),
                    BusEvent::decode(payload.as_slice()).ok()
                );
            }
        }
    }
}
