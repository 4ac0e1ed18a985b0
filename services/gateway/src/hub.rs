//! The gateway's own connections (uid → devices) and the bus dispatcher that
//! hands each event to the connections it names. Nothing here waits on a
//! client: a connection whose inbox is full is kicked (it resyncs by seq when
//! it reconnects), so one slow client never holds up another.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use parley_bus::Signal;
use parley_proto::{
    bus::bus_event,
    gateway::{self as pb, connect_response::Frame as Out},
};
use parley_server::Uid;
use tokio::sync::{Notify, mpsc};

use crate::wire::{Delivery, Frame};

/// What the dispatcher hands a connection. Frames are encoded once per bus
/// event: every connection it concerns gets the same bytes.
#[derive(Clone, Debug)]
pub enum Inbound {
    /// A message of one of the user's groups.
    Message(Arc<Delivery>),
    /// A frame the client gets as it is: receipt changes of the user's own
    /// messages, the user's read positions moving, or someone typing.
    Frame(Frame),
    /// The bus subscription was re-established: catch up from the store.
    Resync,
}

/// A connection as the hub sees it.
#[derive(Clone)]
pub struct Handle {
    id: u64,
    device_id: String,
    inbox: mpsc::Sender<Inbound>,
    kick: Arc<Notify>,
}

impl Handle {
    /// Hands `event` over without waiting; a full inbox kicks the connection.
    fn offer(&self, event: Inbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.inbox.try_send(event) {
            self.kick.notify_one();
        }
    }
}

/// The local connection table, shared by the sessions, the dispatcher and
/// the presence heartbeat.
#[derive(Clone, Default)]
pub struct Hub {
    connections: Arc<RwLock<HashMap<Uid, Vec<Handle>>>>,
    next_id: Arc<AtomicU64>,
}

/// A registered connection: its id, inbox and kick signal.
pub struct Registration {
    /// Unique within this gateway.
    pub id: u64,
    /// Events for the connection.
    pub inbox: mpsc::Receiver<Inbound>,
    /// Notified when the connection fell too far behind.
    pub kick: Arc<Notify>,
}

impl Hub {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<Uid, Vec<Handle>>> {
        self.connections
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Uid, Vec<Handle>>> {
        self.connections
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a connection of `uid`'s `device_id`, with an inbox of
    /// `capacity`; `None` when the user holds `max_per_user` connections here
    /// already.
    pub fn register(
        &self,
        uid: &Uid,
        device_id: &str,
        capacity: usize,
        max_per_user: usize,
    ) -> Option<Registration> {
        let mut connections = self.write();
        let handles = connections.entry(uid.clone()).or_default();
        if handles.len() >= max_per_user {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(capacity);
        let kick = Arc::new(Notify::new());
        handles.push(Handle {
            id,
            device_id: device_id.to_owned(),
            inbox: tx,
            kick: kick.clone(),
        });
        metrics::gauge!("parley_gateway_connections").increment(1.0);
        Some(Registration {
            id,
            inbox: rx,
            kick,
        })
    }

    /// Removes a connection. Returns true when it was the device's last one
    /// here, so the device is now offline on this gateway.
    pub fn unregister(&self, uid: &Uid, id: u64) -> bool {
        let mut connections = self.write();
        let Some(handles) = connections.get_mut(uid) else {
            return false;
        };
        let Some(position) = handles.iter().position(|h| h.id == id) else {
            return false;
        };
        let removed = handles.swap_remove(position);
        metrics::gauge!("parley_gateway_connections").decrement(1.0);
        let last = !handles.iter().any(|h| h.device_id == removed.device_id);
        if handles.is_empty() {
            connections.remove(uid);
        }
        last
    }

    /// Every (user, device) connected here, for the presence heartbeat.
    pub fn devices(&self) -> Vec<(Uid, String)> {
        let mut devices: Vec<(Uid, String)> = self
            .read()
            .iter()
            .flat_map(|(uid, handles)| handles.iter().map(|h| (uid.clone(), h.device_id.clone())))
            .collect();
        devices.sort();
        devices.dedup();
        devices
    }

    /// Whether `uid`'s `device_id` has a connection here.
    pub fn holds(&self, uid: &Uid, device_id: &str) -> bool {
        self.read()
            .get(uid)
            .is_some_and(|handles| handles.iter().any(|h| h.device_id == device_id))
    }

    /// Connections held, for logs and tests.
    pub fn connection_count(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    /// Tells every connection to catch up from the store: deliveries may
    /// have been missed (the bus subscription dropped, or presence had lost
    /// the devices, so fan-out skipped them).
    pub fn resync_all(&self) {
        for handle in self.read().values().flatten() {
            handle.offer(Inbound::Resync);
        }
    }

    /// Hands one bus signal to the connections it concerns.
    pub fn dispatch(&self, signal: Signal) {
        let event = match signal {
            Signal::Resubscribed => return self.resync_all(),
            Signal::Event(event) => event.event,
        };
        let connections = self.read();
        match event {
            Some(bus_event::Event::Delivery(delivery)) => {
                let Some(message) = delivery.message else {
                    return;
                };
                // Commit (the message's timestamp) to its arrival here: the
                // fan-out and the bus.
                let lag_ms = parley_server::now_ms().saturating_sub(message.created_at_ms);
                metrics::histogram!("parley_bus_delivery_lag_seconds")
                    .record(lag_ms.max(0) as f64 / 1000.0);
                let message = Arc::new(Delivery::encode(message));
                // Names that are no valid uid match no connection.
                for uid in &delivery.uids {
                    for handle in connections.get(uid.as_str()).into_iter().flatten() {
                        handle.offer(Inbound::Message(message.clone()));
                    }
                }
            }
            Some(bus_event::Event::Digest(digest)) => {
                offer_frame(&connections, [digest.uid.as_str()], || {
                    Out::ReceiptDigest(pb::ReceiptDigestFrame {
                        entries: digest.entries,
                        receipts_cursor: String::new(),
                    })
                });
            }
            Some(bus_event::Event::Typing(typing)) => {
                let others = typing.uids.iter().filter(|uid| **uid != typing.uid);
                offer_frame(&connections, others.map(String::as_str), || {
                    Out::Typing(pb::TypingNoticeFrame {
                        gid: typing.gid,
                        uid: typing.uid.clone(),
                    })
                });
            }
            Some(bus_event::Event::ReadSync(sync)) => {
                offer_frame(&connections, [sync.uid.as_str()], || {
                    Out::ReadSync(pb::ReadSyncFrame {
                        groups: sync.groups,
                    })
                });
            }
            None => {}
        }
    }
}

/// Offers a frame to every connection of `uids` here, encoded once, and
/// only if one of them is here.
fn offer_frame<'a>(
    connections: &HashMap<Uid, Vec<Handle>>,
    uids: impl IntoIterator<Item = &'a str>,
    frame: impl FnOnce() -> Out,
) {
    let mut handles = uids
        .into_iter()
        .flat_map(|uid| connections.get(uid).into_iter().flatten())
        .peekable();
    if handles.peek().is_none() {
        return;
    }
    let frame = Frame::encode(frame());
    for handle in handles {
        handle.offer(Inbound::Frame(frame.clone()));
    }
}

/// Feeds bus signals to the hub until the subscription ends.
pub async fn dispatch(hub: Hub, mut signals: mpsc::Receiver<Signal>) {
    while let Some(signal) = signals.recv().await {
        hub.dispatch(signal);
    }
}

#[cfg(test)]
mod tests {
    use parley_proto::{
        bus::{BusEvent, Delivery},
        gateway::DeliveredMessage,
    };

    use super::*;

    fn uid(raw: &str) -> Uid {
        Uid::parse(raw).expect("valid uid")
    }

    fn delivery(seq: u64, uids: &[&str]) -> Signal {
        Signal::Event(BusEvent {
            event: Some(bus_event::Event::Delivery(Delivery {
                message: Some(DeliveredMessage {
                    seq,
                    gid: 1,
                    ..Default::default()
                }),
                uids: uids.iter().map(|u| (*u).to_owned()).collect(),
            })),
        })
    }

    #[test]
    fn deliveries_reach_every_device_of_the_named_users_only() {
        let hub = Hub::default();
        let mut phone = hub.register(&uid("uid1"), "phone", 8, 8).expect("room");
        let mut laptop = hub.register(&uid("uid1"), "laptop", 8, 8).expect("room");
        let mut other = hub.register(&uid("uid2"), "phone", 8, 8).expect("room");
        hub.dispatch(delivery(1, &["uid1", "nobody-here"]));
        assert!(matches!(phone.inbox.try_recv(), Ok(Inbound::Message(m)) if m.seq == 1));
        assert!(matches!(laptop.inbox.try_recv(), Ok(Inbound::Message(m)) if m.seq == 1));
        assert!(other.inbox.try_recv().is_err());
    }

    #[test]
    fn a_delivery_is_encoded_once_and_its_bytes_shared_by_every_device() {
        use prost::Message as _;
        let hub = Hub::default();
        let mut inboxes: Vec<_> = ["phone", "laptop", "tablet"]
            .iter()
            .map(|device| {
                hub.register(&uid("uid1"), device, 8, 8)
                    .expect("room")
                    .inbox
            })
            .collect();
        inboxes.push(
            hub.register(&uid("uid2"), "phone", 8, 8)
                .expect("room")
                .inbox,
        );
        hub.dispatch(delivery(7, &["uid1", "uid2"]));
        let frames: Vec<Frame> = inboxes
            .iter_mut()
            .map(|inbox| match inbox.try_recv() {
                Ok(Inbound::Message(message)) => message.frame.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        let first = frames[0].bytes();
        for frame in &frames {
            assert_eq!(
                frame.bytes().as_ptr(),
                first.as_ptr(),
                "one buffer, not a copy per device"
            );
        }
        let decoded = pb::ConnectResponse::decode(first).expect("decodes");
        assert!(matches!(decoded.frame, Some(Out::Message(m)) if m.seq == 7 && m.gid == 1));
    }

    #[test]
    fn a_full_inbox_kicks_its_connection_without_blocking_others() {
        let hub = Hub::default();
        let slow = hub.register(&uid("slow"), "d", 1, 8).expect("room");
        let mut fast = hub.register(&uid("fast"), "d", 8, 8).expect("room");
        hub.dispatch(delivery(1, &["slow", "fast"]));
        hub.dispatch(delivery(2, &["slow", "fast"]));
        let kicked = futures::FutureExt::now_or_never(slow.kick.notified());
        assert!(kicked.is_some(), "the slow connection was told to go");
        assert!(fast.inbox.try_recv().is_ok());
        assert!(fast.inbox.try_recv().is_ok());
    }

    #[test]
    fn a_user_holds_at_most_the_allowed_connections() {
        let hub = Hub::default();
        let first = hub.register(&uid("uid1"), "phone", 8, 2).expect("room");
        let _second = hub.register(&uid("uid1"), "laptop", 8, 2).expect("room");
        assert!(hub.register(&uid("uid1"), "tablet", 8, 2).is_none());
        assert!(
            hub.register(&uid("uid2"), "phone", 8, 2).is_some(),
            "others unaffected"
        );
        hub.unregister(&uid("uid1"), first.id);
        assert!(hub.register(&uid("uid1"), "tablet", 8, 2).is_some());
    }

    #[test]
    fn a_device_is_offline_only_when_its_last_connection_goes() {
        let hub = Hub::default();
        let first = hub.register(&uid("uid1"), "phone", 8, 8).expect("room");
        let second = hub.register(&uid("uid1"), "phone", 8, 8).expect("room");
        assert_eq!(hub.devices(), vec![(uid("uid1"), "phone".to_owned())]);
        assert!(!hub.unregister(&uid("uid1"), first.id));
        assert!(hub.unregister(&uid("uid1"), second.id));
        assert_eq!(hub.connection_count(), 0);
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;

        proptest::proptest! {
            /// Whatever arrives on the bus (anyone who can publish to its Redis
            /// can send bytes) is dropped or dispatched, never a panic, and a
            /// delivery reaches only connections of the users it names.
            #[test]
            fn any_bus_payload_is_dropped_or_dispatched(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
                use prost::Message as _;
                let hub = Hub::default();
                let mut inbox = hub.register(&uid("uid1"), "phone", 64, 8).expect("room").inbox;
                if let Ok(event) = parley_proto::bus::BusEvent::decode(payload.as_slice()) {
                    let names_uid1 = match &event.event {
                        Some(bus_event::Event::Delivery(d)) => d.uids.iter().any(|u| u == "uid1"),
                        Some(bus_event::Event::Digest(d)) => d.uid == "uid1",
                        _ => false,
                    };
                    hub.dispatch(Signal::Event(event));
                    if !names_uid1 {
                        proptest::prop_assert!(inbox.try_recv().is_err());
                    }
                }
            }
        }
    }
}
