//! Presence in memory, for `make dev` and single-process deployments.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use parley_server::Uid;

use super::{DeviceKey, DevicePresence, Lifetimes, PresenceError, PresenceStore, UserPresence};
use crate::domain::{Entry, Refresh, refresh, removes};

#[derive(Default)]
struct User {
    devices: BTreeMap<String, Entry>,
    last_seen_ms: i64,
}

/// Presence in a map, shared by clones.
#[derive(Clone)]
pub struct MemoryPresenceStore {
    users: Arc<Mutex<HashMap<Uid, User>>>,
    lifetimes: Lifetimes,
}

impl MemoryPresenceStore {
    /// An empty store.
    pub fn new(lifetimes: Lifetimes) -> Self {
        Self {
            users: Arc::default(),
            lifetimes,
        }
    }

    fn users(&self) -> MutexGuard<'_, HashMap<Uid, User>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, gateway_id: &str, now_ms: i64) -> Entry {
        Entry {
            gateway_id: gateway_id.to_owned(),
            expires_at_ms: now_ms.saturating_add(self.lifetimes.ttl_ms),
        }
    }
}

impl PresenceStore for MemoryPresenceStore {
    async fn online(
        &self,
        device: &DeviceKey,
        gateway_id: &str,
        now_ms: i64,
    ) -> Result<(), PresenceError> {
        let entry = self.entry(gateway_id, now_ms);
        let mut users = self.users();
        let user = users.entry(device.uid.clone()).or_default();
        user.devices.insert(device.device_id.clone(), entry);
        user.last_seen_ms = now_ms;
        Ok(())
    }

    async fn heartbeat(
        &self,
        gateway_id: &str,
        devices: &[DeviceKey],
        now_ms: i64,
    ) -> Result<u32, PresenceError> {
        let mut revived = 0;
        let mut users = self.users();
        for device in devices {
            let user = users.entry(device.uid.clone()).or_default();
            let existing = user.devices.get(&device.device_id);
            match refresh(existing, gateway_id, now_ms) {
                Refresh::Skip => continue,
                Refresh::Revive => revived += 1,
                Refresh::Extend => {}
            }
            user.devices
                .insert(device.device_id.clone(), self.entry(gateway_id, now_ms));
            user.last_seen_ms = now_ms;
        }
        Ok(revived)
    }

    async fn offline(
        &self,
        devices: &[DeviceKey],
        gateway_id: &str,
        now_ms: i64,
    ) -> Result<u32, PresenceError> {
        let mut users = self.users();
        let mut removed = 0u32;
        for device in devices {
            let Some(user) = users.get_mut(&device.uid) else {
                continue;
            };
            if !removes(user.devices.get(&device.device_id), gateway_id) {
                continue;
            }
            user.devices.remove(&device.device_id);
            user.last_seen_ms = now_ms;
            removed = removed.saturating_add(1);
        }
        Ok(removed)
    }

    async fn get(&self, uids: &[Uid], now_ms: i64) -> Result<Vec<UserPresence>, PresenceError> {
        let mut users = self.users();
        Ok(uids
            .iter()
            .map(|uid| {
                let Some(user) = users.get_mut(uid) else {
                    return UserPresence {
                        uid: uid.clone(),
                        devices: Vec::new(),
                        last_seen_ms: 0,
                    };
                };
                // Lapsed entries are dropped here, so the map only keeps users
                // who were seen at least once.
                user.devices.retain(|_, entry| entry.is_live(now_ms));
                UserPresence {
                    uid: uid.clone(),
                    devices: user
                        .devices
                        .iter()
                        .map(|(device_id, entry)| DevicePresence {
                            device_id: device_id.clone(),
                            gateway_id: entry.gateway_id.clone(),
                        })
                        .collect(),
                    last_seen_ms: user.last_seen_ms,
                }
            })
            .collect())
    }
}
