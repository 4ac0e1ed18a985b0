//! Presence in Redis. Per user, a hash `parley:presence:{uid}:devices` maps each
//! device to `expires_at_ms|gateway_id`, and `parley:presence:{uid}:seen` holds
//! the last-seen time. Both keys carry the `{uid}` hash tag, so each user's
//! keys share a Redis Cluster slot and the scripts below stay single-slot.
//! Entry expiry is decided from the stored time, so a read never returns a
//! lapsed device; the key TTL only collects what nobody reads any more.

use deadpool_redis::{
    Pool,
    redis::{self, Value},
};
use parley_server::Uid;

use super::{DeviceKey, DevicePresence, Lifetimes, PresenceError, PresenceStore, UserPresence};
use crate::domain::Entry;

/// KEYS: devices, seen. ARGV: device, gateway, now, ttl, seen ttl.
/// Returns 1 when the entry was revived, 0 when extended, -1 when the device
/// is live on another gateway (left alone).
const HEARTBEAT: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
local now = tonumber(ARGV[3])
local revived = 1
if v then
  local sep = string.find(v, '|', 1, true)
  if sep then
    local expires = tonumber(string.sub(v, 1, sep - 1))
    if expires and expires > now then
      if string.sub(v, sep + 1) ~= ARGV[2] then return -1 end
      revived = 0
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[4])) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
return revived
";

/// KEYS: devices, seen. ARGV: device, gateway, now, seen ttl.
/// Returns 1 when the device was removed.
const OFFLINE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local sep = string.find(v, '|', 1, true)
if not sep or string.sub(v, sep + 1) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
";

fn devices_key(uid: &Uid) -> String {
    format!("parley:presence:{{{uid}}}:devices")
}

fn seen_key(uid: &Uid) -> String {
    format!("parley:presence:{{{uid}}}:seen")
}

/// Presence in Redis through a connection pool.
#[derive(Clone)]
pub struct RedisPresenceStore {
    pool: Pool,
    lifetimes: Lifetimes,
}

impl RedisPresenceStore {
    /// A store on the Redis at `url`, trusted as `tls` says when it is
    /// `rediss://`; connections are made on first use.
    pub fn new(
        url: &str,
        tls: &parley_bus::RedisTls,
        lifetimes: Lifetimes,
        max_connections: usize,
    ) -> Result<Self, PresenceError> {
        let pool = tls
            .client(url)
            .and_then(|client| parley_bus::redis_pool(&client, max_connections))
            .map_err(|e| PresenceError::Config(e.to_string()))?;
        Ok(Self { pool, lifetimes })
    }

    /// Runs `script` for each device in one pipeline (one round trip; each
    /// runs on its own user's keys, one slot each in a cluster) with KEYS
    /// devices, seen and ARGV device, gateway, now, then `extra`; how many
    /// answered 1.
    async fn each_device(
        &self,
        script: &str,
        devices: &[DeviceKey],
        gateway_id: &str,
        now_ms: i64,
        extra: &[i64],
    ) -> Result<u32, PresenceError> {
        if devices.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for device in devices {
            let call = pipe
                .cmd("EVAL")
                .arg(script)
                .arg(2)
                .arg(devices_key(&device.uid))
                .arg(seen_key(&device.uid))
                .arg(&device.device_id)
                .arg(gateway_id)
                .arg(now_ms);
            for value in extra {
                call.arg(*value);
            }
        }
        let mut connection = self.pool.get().await?;
        let outcomes: Vec<i64> = pipe.query_async(&mut connection).await?;
        Ok(u32::try_from(outcomes.iter().filter(|&&o| o == 1).count()).unwrap_or(u32::MAX))
    }
}

impl PresenceStore for RedisPresenceStore {
    async fn online(
        &self,
        device: &DeviceKey,
        gateway_id: &str,
        now_ms: i64,
    ) -> Result<(), PresenceError> {
        let entry = Entry {
            gateway_id: gateway_id.to_owned(),
            expires_at_ms: now_ms.saturating_add(self.lifetimes.ttl_ms),
        };
        let mut connection = self.pool.get().await?;
        redis::pipe()
            .hset(devices_key(&device.uid), &device.device_id, entry.encode())
            .ignore()
            .pexpire(devices_key(&device.uid), self.lifetimes.ttl_ms)
            .ignore()
            .cmd("SET")
            .arg(seen_key(&device.uid))
            .arg(now_ms)
            .arg("PX")
            .arg(self.lifetimes.last_seen_ms)
            .ignore()
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        gateway_id: &str,
        devices: &[DeviceKey],
        now_ms: i64,
    ) -> Result<u32, PresenceError> {
        let lifetimes = [self.lifetimes.ttl_ms, self.lifetimes.last_seen_ms];
        self.each_device(HEARTBEAT, devices, gateway_id, now_ms, &lifetimes)
            .await
    }

    async fn offline(
        &self,
        devices: &[DeviceKey],
        gateway_id: &str,
        now_ms: i64,
    ) -> Result<u32, PresenceError> {
        let lifetimes = [self.lifetimes.last_seen_ms];
        self.each_device(OFFLINE, devices, gateway_id, now_ms, &lifetimes)
            .await
    }

    async fn get(&self, uids: &[Uid], now_ms: i64) -> Result<Vec<UserPresence>, PresenceError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for uid in uids {
            pipe.hgetall(devices_key(uid)).get(seen_key(uid));
        }
        let mut connection = self.pool.get().await?;
        let replies: Vec<Value> = pipe.query_async(&mut connection).await?;
        let mut users = Vec::with_capacity(uids.len());
        for (uid, pair) in uids.iter().zip(replies.chunks(2)) {
            let [devices, seen] = pair else { break };
            let devices: Vec<(String, String)> =
                redis::from_redis_value_ref(devices).map_err(redis::RedisError::from)?;
            let seen: Option<i64> =
                redis::from_redis_value_ref(seen).map_err(redis::RedisError::from)?;
            let mut live: Vec<DevicePresence> = devices
                .into_iter()
                .filter_map(|(device_id, raw)| {
                    let entry = Entry::decode(&raw)?;
                    entry.is_live(now_ms).then_some(DevicePresence {
                        device_id,
                        gateway_id: entry.gateway_id,
                    })
                })
                .collect();
            live.sort();
            users.push(UserPresence {
                uid: uid.clone(),
                devices: live,
                last_seen_ms: seen.unwrap_or(0),
            });
        }
        Ok(users)
    }
}
