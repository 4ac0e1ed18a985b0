//! One contract for both bus implementations: what a gateway may rely on.

use std::time::Duration;

use parley_bus::{Bus, RedisTls, Signal};
use parley_proto::{
    bus::{BusEvent, Delivery, bus_event},
    gateway::DeliveredMessage,
};
use parley_testkit::TestRedis;
use tokio::sync::mpsc;

fn delivery(seq: u64, uid: &str) -> BusEvent {
    BusEvent {
        event: Some(bus_event::Event::Delivery(Delivery {
            message: Some(DeliveredMessage {
                msgid: 1000 + seq,
                gid: 1,
                seq,
                sender_uid: "A".into(),
                content: b"hello".to_vec(),
                need_receipt: true,
                created_at_ms: 1,
            }),
            uids: vec![uid.into()],
        })),
    }
}

fn gateway_id() -> String {
    format!("gw-{:016x}", rand::random::<u64>())
}

async fn next(rx: &mut mpsc::Receiver<Signal>) -> Signal {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a signal within 5 s")
        .expect("subscription open")
}

async fn subscribed(bus: &Bus, gateway: &str) -> mpsc::Receiver<Signal> {
    let mut rx = bus.subscribe(gateway);
    assert_eq!(next(&mut rx).await, Signal::Resubscribed);
    rx
}

async fn events_reach_their_gateway_in_order(bus: Bus) {
    let (mine, other) = (gateway_id(), gateway_id());
    let mut rx = subscribed(&bus, &mine).await;
    let mut other_rx = subscribed(&bus, &other).await;
    for seq in 1..=50 {
        bus.publish(&mine, &delivery(seq, "uid1"))
            .await
            .expect("publish");
    }
    for seq in 1..=50 {
        assert_eq!(next(&mut rx).await, Signal::Event(delivery(seq, "uid1")));
    }
    bus.publish(&other, &delivery(99, "uid2"))
        .await
        .expect("publish");
    assert_eq!(
        next(&mut other_rx).await,
        Signal::Event(delivery(99, "uid2"))
    );
    assert!(rx.try_recv().is_err(), "another gateway's event leaked");
}

async fn publishing_to_nobody_succeeds(bus: Bus) {
    bus.publish(&gateway_id(), &delivery(1, "uid1"))
        .await
        .expect("publish without subscribers");
}

async fn a_dropped_subscriber_frees_the_channel(bus: Bus) {
    let gateway = gateway_id();
    let rx = subscribed(&bus, &gateway).await;
    drop(rx);
    let mut again = subscribed(&bus, &gateway).await;
    bus.publish(&gateway, &delivery(7, "uid1"))
        .await
        .expect("publish");
    assert_eq!(next(&mut again).await, Signal::Event(delivery(7, "uid1")));
}

macro_rules! bus_suite {
    ($($case:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(parley_bus::Bus::redis(&parley_testkit::redis_url()).expect("redis bus")).await;
                }
            )*
        }
        mod in_process {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(parley_bus::Bus::local()).await;
                }
            )*
        }
    };
}

bus_suite!(
    events_reach_their_gateway_in_order,
    publishing_to_nobody_succeeds,
    a_dropped_subscriber_frees_the_channel,
);

#[tokio::test]
async fn redis_subscription_comes_back_after_a_redis_restart() {
    let mut redis = TestRedis::start().await;
    let bus = Bus::redis(&redis.url()).expect("redis bus");
    let gateway = gateway_id();
    let mut rx = subscribed(&bus, &gateway).await;
    redis.restart().await;
    // The subscriber notices the drop, resubscribes and says so, so the gateway
    // knows to resync; events published after that arrive again.
    assert_eq!(next(&mut rx).await, Signal::Resubscribed);
    let mut published = false;
    for _ in 0..50 {
        if bus.publish(&gateway, &delivery(3, "uid1")).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(published, "publish works again after the restart");
    assert_eq!(next(&mut rx).await, Signal::Event(delivery(3, "uid1")));
}

/// A `rediss://` bus reaches its gateways when it is given the CA that
/// signed the server's certificate; without it (the system's roots only) the
/// server is not trusted and nothing is published; and a CA file with a
/// plain `redis://` URL, or one that cannot be read, stops the service at
/// start, naming the file.
#[tokio::test]
async fn a_tls_bus_trusts_only_the_ca_it_is_given() {
    let redis = TestRedis::start_tls().await;
    let trusted = RedisTls {
        redis_ca_file: redis.ca_file(),
    };
    let client = trusted.client(&redis.url()).expect("client");
    events_reach_their_gateway_in_order(Bus::on_redis(client).expect("bus")).await;

    let untrusted = Bus::redis(&redis.url()).expect("bus");
    assert!(
        untrusted
            .publish(&gateway_id(), &delivery(1, "uid1"))
            .await
            .is_err(),
        "a server signed by an unknown CA is trusted"
    );

    let plain = trusted
        .client("redis://127.0.0.1:6379")
        .expect_err("plain URL");
    assert!(plain.to_string().contains("not rediss://"), "{plain}");
    let missing = RedisTls {
        redis_ca_file: redis.ca_file().map(|ca| ca.with_file_name("absent.pem")),
    };
    let unread = missing.client(&redis.url()).expect_err("missing file");
    assert!(unread.to_string().contains("absent.pem"), "{unread}");
}
