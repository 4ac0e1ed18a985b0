//! Where presence lives: Redis in production (keys with TTL and hash tags, so
//! Redis Cluster works) or memory in `make dev`, behind one narrow trait.

use std::future::Future;

use parley_server::Uid;

mod memory;
mod redis;

pub use memory::MemoryPresenceStore;
pub use redis::RedisPresenceStore;

/// One online device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DevicePresence {
    /// The device.
    pub device_id: String,
    /// The gateway holding its stream.
    pub gateway_id: String,
}

/// One user's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPresence {
    /// The user.
    pub uid: Uid,
    /// Live devices, in device id order; empty when offline.
    pub devices: Vec<DevicePresence>,
    /// Last time the user was known online, in ms since the epoch; 0 if never.
    pub last_seen_ms: i64,
}

/// A device of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceKey {
    /// The user.
    pub uid: Uid,
    /// The device.
    pub device_id: String,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] deadpool_redis::redis::RedisError),
    /// No pooled connection could be had.
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// The store cannot be set up.
    #[error("presence store configuration: {0}")]
    Config(String),
}

impl PresenceError {
    /// Whether the failure may pass on retry: Redis unreachable, slow or
    /// reconnecting, or no pooled connection in time. A refused command or
    /// a bad reply is a fault of ours, not a reason to retry.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Redis(error) => redis_transient(error),
            Self::Pool(deadpool_redis::PoolError::Backend(error)) => redis_transient(error),
            Self::Pool(
                deadpool_redis::PoolError::Timeout(_) | deadpool_redis::PoolError::Closed,
            ) => true,
            Self::Pool(_) | Self::Config(_) => false,
        }
    }
}

fn redis_transient(error: &deadpool_redis::redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_cluster_error()
        || error.is_unrecoverable_error()
}

impl From<PresenceError> for parley_server::Error {
    fn from(error: PresenceError) -> Self {
        parley_server::Error::backend(error.is_transient(), error)
    }
}

/// How long entries and last-seen times are kept.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    /// A device entry lapses this long after its last online or heartbeat.
    pub ttl_ms: i64,
    /// A user's last-seen time is kept this long.
    pub last_seen_ms: i64,
}

/// Presence storage. Times come from the caller, so expiry is testable.
pub trait PresenceStore: Clone + Send + Sync + 'static {
    /// Registers `device` on `gateway_id`, replacing any earlier registration.
    fn online(
        &self,
        device: &DeviceKey,
        gateway_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), PresenceError>> + Send;

    /// Extends the entries of `devices` held by `gateway_id`; registers those
    /// that had lapsed again (returning how many) and leaves alone devices now
    /// live on another gateway.
    fn heartbeat(
        &self,
        gateway_id: &str,
        devices: &[DeviceKey],
        now_ms: i64,
    ) -> impl Future<Output = Result<u32, PresenceError>> + Send;

    /// Removes each of `devices` that `gateway_id` holds; returns how many.
    fn offline(
        &self,
        devices: &[DeviceKey],
        gateway_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<u32, PresenceError>> + Send;

    /// Presence of each user, in the order given.
    fn get(
        &self,
        uids: &[Uid],
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<UserPresence>, PresenceError>> + Send;
}
