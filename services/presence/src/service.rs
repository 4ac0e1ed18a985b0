//! The PresenceService handlers: validate at the edge, then call the store.

use std::{collections::BTreeSet, pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use parley_proto::presence::{self as pb, presence_service_server::PresenceService};
use parley_server::{Caller, Error, Stopping, Uid, now_ms};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::store::{DeviceKey, PresenceStore, UserPresence};

/// Devices in one heartbeat or BatchOffline, and users in one BatchGetPresence.
pub const MAX_BATCH: usize = 10_000;
/// Users one WatchPresence follows.
pub const MAX_WATCHED: usize = 1_000;

/// Handlers over a store.
pub struct PresenceApi<S> {
    store: S,
    ttl_ms: u32,
    watch_interval: Duration,
    changes: Arc<watch::Sender<u64>>,
    stopping: Stopping,
}

impl<S: PresenceStore> PresenceApi<S> {
    /// Handlers answering with entries that live `ttl_ms`; watchers re-read at
    /// least every `watch_interval` (expiry and other replicas' changes).
    /// Watch streams end when `stopping` turns true, so a graceful stop is not
    /// held up by watchers.
    pub fn new(store: S, ttl_ms: u32, watch_interval: Duration, stopping: Stopping) -> Self {
        Self {
            store,
            ttl_ms,
            watch_interval,
            changes: Arc::new(watch::channel(0).0),
            stopping,
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn uid(raw: &str) -> Result<Uid, Error> {
    Uid::parse(raw).map_err(|e| Error::invalid("uid", e.to_string()))
}

/// A device id or gateway id, checked by the rule every service shares.
fn token(what: &'static str, raw: &str) -> Result<String, Error> {
    parley_server::caller::check_device_id(raw, what)?;
    Ok(raw.to_owned())
}

fn device_key(device: Option<&pb::DeviceRef>) -> Result<DeviceKey, Error> {
    let device = device.ok_or_else(|| Error::invalid("device", "is required"))?;
    Ok(DeviceKey {
        uid: uid(&device.uid)?,
        device_id: token("device_id", &device.device_id)?,
    })
}

/// The devices of a batch call: 1 to [`MAX_BATCH`], each well-formed.
fn devices(raw: &[pb::DeviceRef], call: &str) -> Result<Vec<DeviceKey>, Error> {
    if raw.is_empty() || raw.len() > MAX_BATCH {
        return Err(Error::invalid(
            "devices",
            format!("1 to {MAX_BATCH} per {call}, got {}", raw.len()),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, d)| device_key(Some(d)).map_err(|e| e.within(&format!("devices[{i}]"))))
        .collect()
}

fn uids(raw: &[String], max: usize) -> Result<Vec<Uid>, Error> {
    if raw.len() > max {
        return Err(Error::invalid("uids", format!("at most {max}")));
    }
    raw.iter()
        .enumerate()
        .map(|(i, u)| uid(u).map_err(|e| e.within(&format!("uids[{i}]"))))
        .collect()
}

fn user_to_pb(user: UserPresence) -> pb::UserPresence {
    let uid = user.uid.into_string();
    pb::UserPresence {
        devices: user
            .devices
            .into_iter()
            .map(|d| pb::DevicePresence {
                device: Some(pb::DeviceRef {
                    uid: uid.clone(),
                    device_id: d.device_id,
                }),
                gateway_id: d.gateway_id,
            })
            .collect(),
        uid,
        last_seen_ms: user.last_seen_ms,
    }
}

/// Only gateways register devices.
fn require_gateway<T>(request: &Request<T>) -> Result<(), Status> {
    Caller::require_service(request, "gateway")
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchPresenceResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<S: PresenceStore> PresenceService for PresenceApi<S> {
    async fn online(
        &self,
        request: Request<pb::OnlineRequest>,
    ) -> Result<Response<pb::OnlineResponse>, Status> {
        require_gateway(&request)?;
        let request = request.into_inner();
        let device = device_key(request.device.as_ref())?;
        let gateway = token("gateway_id", &request.gateway_id)?;
        self.store
            .online(&device, &gateway, now_ms())
            .await
            .map_err(Error::from)?;
        self.changed();
        Ok(Response::new(pb::OnlineResponse {
            ttl_ms: self.ttl_ms,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        require_gateway(&request)?;
        let request = request.into_inner();
        let gateway = token("gateway_id", &request.gateway_id)?;
        if request.devices.is_empty() {
            return Ok(Response::new(pb::HeartbeatResponse { revived: 0 }));
        }
        let devices = devices(&request.devices, "heartbeat")?;
        let revived = self
            .store
            .heartbeat(&gateway, &devices, now_ms())
            .await
            .map_err(Error::from)?;
        if revived > 0 {
            self.changed();
        }
        Ok(Response::new(pb::HeartbeatResponse { revived }))
    }

    async fn offline(
        &self,
        request: Request<pb::OfflineRequest>,
    ) -> Result<Response<pb::OfflineResponse>, Status> {
        require_gateway(&request)?;
        let request = request.into_inner();
        let device = device_key(request.device.as_ref())?;
        let gateway = token("gateway_id", &request.gateway_id)?;
        let removed = self
            .store
            .offline(std::slice::from_ref(&device), &gateway, now_ms())
            .await
            .map_err(Error::from)?;
        if removed > 0 {
            self.changed();
        }
        Ok(Response::new(pb::OfflineResponse {
            removed: removed > 0,
        }))
    }

    async fn batch_offline(
        &self,
        request: Request<pb::BatchOfflineRequest>,
    ) -> Result<Response<pb::BatchOfflineResponse>, Status> {
        require_gateway(&request)?;
        let request = request.into_inner();
        let gateway = token("gateway_id", &request.gateway_id)?;
        let devices = devices(&request.devices, "batch")?;
        let removed = self
            .store
            .offline(&devices, &gateway, now_ms())
            .await
            .map_err(Error::from)?;
        if removed > 0 {
            self.changed();
        }
        Ok(Response::new(pb::BatchOfflineResponse { removed }))
    }

    async fn batch_get_presence(
        &self,
        request: Request<pb::BatchGetPresenceRequest>,
    ) -> Result<Response<pb::BatchGetPresenceResponse>, Status> {
        Caller::require_any_service(&request)?;
        let uids = uids(&request.get_ref().uids, MAX_BATCH)?;
        let users = self.store.get(&uids, now_ms()).await.map_err(Error::from)?;
        Ok(Response::new(pb::BatchGetPresenceResponse {
            users: users.into_iter().map(user_to_pb).collect(),
        }))
    }

    type WatchPresenceStream = WatchStream;

    async fn watch_presence(
        &self,
        request: Request<pb::WatchPresenceRequest>,
    ) -> Result<Response<Self::WatchPresenceStream>, Status> {
        Caller::require_any_service(&request)?;
        let raw = uids(&request.get_ref().uids, MAX_WATCHED)?;
        let watched: Vec<Uid> = raw
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if watched.is_empty() {
            return Err(Error::invalid("uids", "name 1 to 1000 uids to watch").into());
        }
        let (tx, rx) = mpsc::channel(64);
        let follower = follow(
            self.store.clone(),
            watched,
            self.changes.subscribe(),
            self.watch_interval,
            tx,
        );
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = follower => {}
                () = stopping.stopped() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends each watched user's presence, then every change of their devices,
/// until the watcher goes away. Changes made through this replica wake it at
/// once; expiry and other replicas' changes are seen on the periodic re-read.
async fn follow<S: PresenceStore>(
    store: S,
    watched: Vec<Uid>,
    mut changes: watch::Receiver<u64>,
    interval: Duration,
    tx: mpsc::Sender<Result<pb::WatchPresenceResponse, Status>>,
) {
    let mut last: Vec<Option<Vec<crate::store::DevicePresence>>> = vec![None; watched.len()];
    loop {
        match store.get(&watched, now_ms()).await {
            Ok(users) => {
                for (seen, user) in last.iter_mut().zip(users) {
                    if seen.as_ref() == Some(&user.devices) {
                        continue;
                    }
                    *seen = Some(user.devices.clone());
                    let change = pb::WatchPresenceResponse {
                        user: Some(user_to_pb(user)),
                    };
                    if tx.send(Ok(change)).await.is_err() {
                        return;
                    }
                }
            }
            Err(error) => {
                let _ = tx.send(Err(Error::from(error).into())).await;
                return;
            }
        }
        tokio::select! {
            () = tx.closed() => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(n: usize, uid: &str) -> Vec<pb::DeviceRef> {
        (0..n)
            .map(|i| pb::DeviceRef {
                uid: uid.to_owned(),
                device_id: format!("d{i}"),
            })
            .collect()
    }

    #[test]
    fn a_batch_takes_one_to_the_limit_of_well_formed_devices() {
        let code = |raw: &[pb::DeviceRef]| devices(raw, "batch").map(|d| d.len());
        assert_eq!(code(&refs(1, "uid1")).ok(), Some(1));
        assert_eq!(code(&refs(MAX_BATCH, "uid1")).ok(), Some(MAX_BATCH));
        for bad in [
            refs(0, "uid1"),
            refs(MAX_BATCH + 1, "uid1"),
            refs(3, "bad uid"),
        ] {
            let refused = code(&bad).expect_err("refused");
            assert_eq!(
                refused.reason(),
                parley_server::Reason::InvalidField,
                "{refused:?}"
            );
        }
        let refused = Status::from(code(&refs(3, "bad uid")).expect_err("refused"));
        assert_eq!(
            parley_server::error::field_violations(&refused)[0].0,
            "devices[0].uid",
            "the first bad item is named"
        );
    }
}
