//! What anyone who can publish on the bus's Redis sends: a gateway with
//! credentials refuses it, one without reads exactly what it decodes to, and
//! a dispatched event reaches only the connections of the users it names.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use parley_bus::{Signal, channel_name, event_of};
use parley_gateway::hub::Hub;
use parley_proto::bus::{BusEvent, bus_event};
use parley_server::{
    Uid,
    credentials::{Keys, generate_keys},
};
use prost::Message as _;

static GATEWAY: LazyLock<Keys> = LazyLock::new(|| {
    let [gateway] = generate_keys(&["gateway"]).try_into().expect("one key");
    gateway
});

fuzz_target!(|payload: &[u8]| {
    let channel = channel_name("gw1");
    assert!(event_of(Some(&GATEWAY), &channel, payload).is_err());
    let event = event_of(None, &channel, payload).ok();
    assert_eq!(event, BusEvent::decode(payload).ok());
    let Some(event) = event else { return };
    let names_uid1 = match &event.event {
        Some(bus_event::Event::Delivery(delivery)) => delivery.uids.iter().any(|u| u == "uid1"),
        Some(bus_event::Event::Digest(digest)) => digest.uid == "uid1",
        Some(bus_event::Event::ReadSync(sync)) => sync.uid == "uid1",
        // Never to the typist's own connections.
        Some(bus_event::Event::Typing(typing)) => {
            typing.uid != "uid1" && typing.uids.iter().any(|u| u == "uid1")
        }
        None => false,
    };
    let hub = Hub::default();
    let uid = Uid::parse("uid1").expect("valid uid");
    let mut inbox = hub.register(&uid, "phone", 64, 8).expect("room").inbox;
    hub.dispatch(Signal::Event(event));
    if !names_uid1 {
        assert!(inbox.try_recv().is_err());
    }
});
