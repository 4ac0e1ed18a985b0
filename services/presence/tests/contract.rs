//! One contract for both presence stores, run on Redis and in memory. Times
//! are passed in, so expiry is tested without waiting.

use parley_presence::store::{
    DeviceKey, DevicePresence, Lifetimes, MemoryPresenceStore, PresenceStore, RedisPresenceStore,
};
use parley_server::{Uid, now_ms};

const LIFETIMES: Lifetimes = Lifetimes {
    ttl_ms: 60_000,
    last_seen_ms: 3_600_000,
};

/// A user id no other test (or earlier run) uses.
fn fresh_uid(name: &str) -> Uid {
    Uid::parse(&format!("{name}-{:012x}", rand::random::<u64>() >> 16)).expect("valid uid")
}

fn device(uid: &Uid, device_id: &str) -> DeviceKey {
    DeviceKey {
        uid: uid.clone(),
        device_id: device_id.into(),
    }
}

fn on(device_id: &str, gateway_id: &str) -> DevicePresence {
    DevicePresence {
        device_id: device_id.into(),
        gateway_id: gateway_id.into(),
    }
}

async fn devices_of<S: PresenceStore>(store: &S, uid: &Uid, at: i64) -> Vec<DevicePresence> {
    let users = store.get(std::slice::from_ref(uid), at).await.expect("get");
    users.into_iter().next().expect("one entry per uid").devices
}

async fn online_devices_are_found_with_their_gateway<S: PresenceStore>(store: S) {
    let (a, b, never) = (fresh_uid("a"), fresh_uid("b"), fresh_uid("never"));
    let t = now_ms();
    store
        .online(&device(&a, "phone"), "gw1", t)
        .await
        .expect("online");
    store
        .online(&device(&a, "laptop"), "gw2", t)
        .await
        .expect("online");
    store
        .online(&device(&b, "phone"), "gw1", t)
        .await
        .expect("online");
    let users = store
        .get(&[b.clone(), never.clone(), a.clone()], t + 1)
        .await
        .expect("get");
    let uids: Vec<&Uid> = users.iter().map(|u| &u.uid).collect();
    assert_eq!(
        uids,
        vec![&b, &never, &a],
        "answers keep the request's order"
    );
    assert_eq!(users[0].devices, vec![on("phone", "gw1")]);
    assert_eq!(users[1].devices, vec![]);
    assert_eq!(users[1].last_seen_ms, 0, "never seen");
    assert_eq!(
        users[2].devices,
        vec![on("laptop", "gw2"), on("phone", "gw1")]
    );
    assert_eq!(users[2].last_seen_ms, t);
}

async fn devices_lapse_when_heartbeats_stop<S: PresenceStore>(store: S) {
    let a = fresh_uid("a");
    let t = now_ms();
    store
        .online(&device(&a, "phone"), "gw1", t)
        .await
        .expect("online");
    assert_eq!(
        devices_of(&store, &a, t + LIFETIMES.ttl_ms - 1).await.len(),
        1
    );
    let after = store
        .get(std::slice::from_ref(&a), t + LIFETIMES.ttl_ms)
        .await
        .expect("get");
    assert_eq!(after[0].devices, vec![], "lapsed at the ttl");
    assert_eq!(
        after[0].last_seen_ms, t,
        "last seen is the last sign of life"
    );
}

async fn heartbeats_extend_and_revive<S: PresenceStore>(store: S) {
    let a = fresh_uid("a");
    let t = now_ms();
    let phone = device(&a, "phone");
    store.online(&phone, "gw1", t).await.expect("online");
    let half = LIFETIMES.ttl_ms / 2;
    assert_eq!(
        store
            .heartbeat("gw1", std::slice::from_ref(&phone), t + half)
            .await
            .expect("hb"),
        0
    );
    assert_eq!(
        devices_of(&store, &a, t + LIFETIMES.ttl_ms + 1).await,
        vec![on("phone", "gw1")],
        "the heartbeat moved the expiry"
    );
    let late = t + 3 * LIFETIMES.ttl_ms;
    assert_eq!(
        store
            .heartbeat("gw1", std::slice::from_ref(&phone), late)
            .await
            .expect("hb"),
        1,
        "a lapsed device is registered again and counted"
    );
    assert_eq!(
        devices_of(&store, &a, late + 1).await,
        vec![on("phone", "gw1")]
    );
    assert_eq!(
        store
            .heartbeat("gw1", &[], late)
            .await
            .expect("empty heartbeat"),
        0
    );
}

async fn a_device_that_moved_belongs_to_its_new_gateway<S: PresenceStore>(store: S) {
    let a = fresh_uid("a");
    let t = now_ms();
    let phone = device(&a, "phone");
    store.online(&phone, "gw1", t).await.expect("online");
    store.online(&phone, "gw2", t + 1).await.expect("moved");
    assert_eq!(
        store
            .heartbeat("gw1", std::slice::from_ref(&phone), t + 2)
            .await
            .expect("hb"),
        0
    );
    assert_eq!(
        devices_of(&store, &a, t + 3).await,
        vec![on("phone", "gw2")]
    );
    assert!(
        store
            .offline(std::slice::from_ref(&phone), "gw1", t + 4)
            .await
            .expect("offline")
            == 0,
        "the old gateway cannot take it offline"
    );
    assert_eq!(
        devices_of(&store, &a, t + 5).await,
        vec![on("phone", "gw2")]
    );
}

async fn offline_removes_the_device_and_records_last_seen<S: PresenceStore>(store: S) {
    let a = fresh_uid("a");
    let t = now_ms();
    let phone = device(&a, "phone");
    store.online(&phone, "gw1", t).await.expect("online");
    store
        .online(&device(&a, "laptop"), "gw1", t)
        .await
        .expect("online");
    let once = std::slice::from_ref(&phone);
    assert_eq!(
        store.offline(once, "gw1", t + 10).await.expect("offline"),
        1
    );
    assert_eq!(
        store
            .offline(once, "gw1", t + 11)
            .await
            .expect("offline twice"),
        0
    );
    let users = store
        .get(std::slice::from_ref(&a), t + 12)
        .await
        .expect("get");
    assert_eq!(users[0].devices, vec![on("laptop", "gw1")]);
    assert_eq!(users[0].last_seen_ms, t + 10);
    assert_eq!(
        store
            .offline(&[device(&fresh_uid("x"), "p")], "gw1", t)
            .await
            .expect("unknown user"),
        0
    );
}

/// A gateway's batch takes every device it holds offline in one call, and
/// leaves alone a device that moved to another gateway meanwhile.
async fn a_batch_takes_every_held_device_offline<S: PresenceStore>(store: S) {
    let t = now_ms();
    let users: Vec<Uid> = (0..50).map(|i| fresh_uid(&format!("b{i}"))).collect();
    let mut held = Vec::new();
    for uid in &users {
        for name in ["phone", "laptop"] {
            let d = device(uid, name);
            store.online(&d, "gw1", t).await.expect("online");
            held.push(d);
        }
    }
    let moved = device(&users[0], "phone");
    store.online(&moved, "gw2", t + 1).await.expect("moved");
    let removed = store.offline(&held, "gw1", t + 2).await.expect("offline");
    assert_eq!(removed as usize, held.len() - 1, "all but the moved one");
    let presence = store.get(&users, t + 3).await.expect("get");
    assert_eq!(presence[0].devices, vec![on("phone", "gw2")]);
    for user in &presence[1..] {
        assert!(user.devices.is_empty(), "{user:?}");
        assert_eq!(user.last_seen_ms, t + 2);
    }
}

macro_rules! presence_suite {
    ($($case:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let store = super::RedisPresenceStore::new(&parley_testkit::redis_url(), &parley_bus::RedisTls::default(), super::LIFETIMES, 4)
                        .expect("redis store");
                    super::$case(store).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::MemoryPresenceStore::new(super::LIFETIMES)).await;
                }
            )*
        }
    };
}

presence_suite!(
    online_devices_are_found_with_their_gateway,
    devices_lapse_when_heartbeats_stop,
    heartbeats_extend_and_revive,
    a_device_that_moved_belongs_to_its_new_gateway,
    offline_removes_the_device_and_records_last_seen,
    a_batch_takes_every_held_device_offline,
);
