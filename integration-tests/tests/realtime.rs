//! The real-time path over real gateway streams: once on MariaDB with Redis
//! (presence and bus) and two gateways, once on the embedded default (SQLite,
//! in-process bus and presence).

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parley_proto::{
    gateway::{self as pb, connect_response::Frame as Out},
    message as mpb, presence as ppb, receipt as rpb,
};
use parley_server::Uid;
use parley_testkit::eventually;

use crate::{
    device::{Device, open, seqs, token},
    support::{
        Backend, JWT_SECRET, Options, Suite, create_group, devices_of, firehose, on_both_backends,
        send_direct, user, wait_for_receipts,
    },
};

fn two_gateways() -> Options {
    Options {
        gateways: 2,
        ..Options::default()
    }
}

fn no_messages(frames: &[Out]) -> bool {
    !frames.iter().any(|f| matches!(f, Out::Message(_)))
}

async fn online_members_get_each_message_once_in_order(backend: Backend) {
    let suite = Suite::start_with(backend, two_gateways()).await;
    let gid = create_group(&suite, "A", "Design", &["uid1", "uid2", "uid3"]).await;
    let gw = suite.gateway_addrs.clone();
    let mut a = Device::connect(gw[0], "A", "a-phone").await;
    let mut uid1 = Device::connect(gw[0], "uid1", "phone").await;
    let mut uid2 = Device::connect(gw[1], "uid2", "phone").await;

    for i in 1..=30 {
        a.send(gid, &format!("m{i}"), b"hello").await;
    }
    let expected: Vec<u64> = (1..=30).collect();
    for device in [&mut uid1, &mut uid2] {
        let mut others = Vec::new();
        let messages = device.messages(30, &mut others).await;
        assert_eq!(
            seqs(&messages, gid),
            expected,
            "{} got every message once, in order",
            device.uid
        );
        let (late, _) = device.drain(vec![]).await;
        assert!(
            no_messages(&late),
            "{} got a duplicate: {late:?}",
            device.uid
        );
    }
    // The sender's results come back in request order with the group's seqs.
    let mut results = Vec::new();
    while results.len() < 30 {
        if let Out::SendResult(r) = a.frame().await {
            assert_eq!(r.code, 0, "send accepted: {}", r.error);
            results.push(r.seq);
        }
    }
    assert_eq!(results, expected);
    suite.stop().await;
}

async fn the_sender_gets_coalesced_digests_and_the_counts_end_right(backend: Backend) {
    let suite = Suite::start_with(backend, two_gateways()).await;
    let readers: Vec<String> = (1..=40).map(|i| format!("r{i:02}")).collect();
    let members: Vec<&str> = readers.iter().map(String::as_str).collect();
    let gid = create_group(&suite, "A", "Launch", &members).await;
    let gw = suite.gateway_addrs.clone();
    let mut a = Device::connect(gw[0], "A", "a-phone").await;
    let mut r01 = Device::connect(gw[1], "r01", "phone").await;
    let sent = send_direct(&suite, "A", gid, "launch", 16).await;
    wait_for_receipts(&suite, gid, vec![sent.msgid], 0).await;

    // One reader acks over its stream, the other 39 straight to the receipt
    // service, all within about one digest window.
    r01.ack(gid, sent.seq, true).await;
    let acks = readers[1..].iter().map(|reader| {
        let mut client = suite.receipt(user(reader));
        async move {
            let request = rpb::AckRequest {
                gid,
                up_to_seq: sent.seq,
                kind: rpb::AckKind::Read.into(),
            };
            client.ack(request).await.expect("ack");
        }
    });
    futures::future::join_all(acks).await;

    let mut digests = 0;
    let last = loop {
        match a.frame().await {
            Out::ReceiptDigest(digest) => {
                digests += 1;
                let entry = digest
                    .entries
                    .iter()
                    .find(|e| e.msgid == sent.msgid)
                    .cloned();
                if let Some(entry) = entry.filter(|e| e.read_count == 40) {
                    break entry;
                }
            }
            _ => continue,
        }
    };
    assert_eq!(
        (last.read_count, last.recipient_count),
        (40, 40),
        "read by all 40"
    );
    assert!(
        digests <= 4,
        "40 readers made {digests} digests, not one per reader"
    );
    let (frames, _) = r01.drain(vec![]).await;
    assert!(
        !frames.iter().any(|f| matches!(f, Out::ReceiptDigest(_))),
        "only the sender gets digests"
    );
    suite.stop().await;
}

async fn an_offline_member_gets_the_backlog_then_live_messages_without_gaps(backend: Backend) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Catch-up", &["uid3"]).await;
    for i in 1..=150 {
        send_direct(&suite, "A", gid, &format!("b{i}"), 64).await;
    }
    // Messages keep arriving while uid3 connects and reads its backlog.
    let sender = {
        let mut client = suite.message(user("A"));
        tokio::spawn(async move {
            for i in 151..=300 {
                let request = mpb::SendMessageRequest {
                    gid,
                    client_msg_id: format!("l{i}"),
                    content: vec![b'y'; 64],
                    need_receipt: false,
                };
                client.send_message(request).await.expect("live send");
            }
        })
    };
    let mut uid3 = Device::connect(suite.gateway_addrs[0], "uid3", "phone").await;
    let mut others = Vec::new();
    let messages = uid3.messages(300, &mut others).await;
    sender.await.expect("sender task");
    assert_eq!(seqs(&messages, gid), (1..=300).collect::<Vec<_>>());
    let (late, _) = uid3.drain(vec![]).await;
    assert!(
        no_messages(&late),
        "duplicates after the catch-up: {late:?}"
    );
    suite.stop().await;
}

async fn a_killed_gateways_devices_go_offline_within_two_heartbeats(backend: Backend) {
    let options = two_gateways();
    let mut suite = Suite::start_with(backend, options).await;
    let gw = suite.gateway_addrs.clone();
    let _survivor = Device::connect(gw[0], "uid2", "phone").await;
    let _doomed = Device::connect(gw[1], "uid1", "phone").await;
    eventually("uid1 online", Duration::from_secs(10), || async {
        (!devices_of(&suite, "uid1").await.is_empty()).then_some(())
    })
    .await;

    suite.kill_gateway(1);
    let killed = Instant::now();
    eventually("uid1 offline", Duration::from_secs(10), || async {
        devices_of(&suite, "uid1").await.is_empty().then_some(())
    })
    .await;
    let took = killed.elapsed();
    let limit = Duration::from_millis(2 * u64::from(options.heartbeat_ms));
    assert!(
        took <= limit,
        "offline after {took:?}, more than two heartbeats ({limit:?})"
    );
    assert_eq!(
        devices_of(&suite, "uid2").await.len(),
        1,
        "the other gateway's device stays online"
    );
    suite.stop().await;
}

async fn bad_expired_and_missing_tokens_are_refused(backend: Backend) {
    let suite = Suite::start(backend).await;
    let gw = suite.gateway_addrs[0];
    let auth = |token: String| pb::AuthFrame {
        token,
        device_id: "phone".into(),
        receipts_cursor: String::new(),
    };
    let uid = Uid::parse("uid1").expect("uid");
    let forged = parley_gateway::auth::issue_hs256(b"not-the-gateway-secret-at-all!!", &uid, 60)
        .expect("sign");
    let expired = parley_gateway::auth::issue(
        &Header::new(Algorithm::HS256),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        &uid,
        1_000_000,
    )
    .expect("sign");
    // Algorithm confusion: the right secret under another HMAC, and an
    // unsigned token that names `none`.
    let other_algorithm = parley_gateway::auth::issue(
        &Header::new(Algorithm::HS512),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        &uid,
        u64::MAX / 2,
    )
    .expect("sign");
    let unsigned = {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
        let claims = serde_json::json!({"sub": "uid1", "exp": u64::MAX / 2}).to_string();
        format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(claims)
        )
    };
    for (what, token) in [
        ("forged", forged),
        ("expired", expired),
        ("HS512", other_algorithm),
        ("alg none", unsigned),
        ("missing", String::new()),
        ("garbage", "x.y.z".into()),
    ] {
        let refused = open(gw, auth(token))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what} token accepted"));
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{what} token");
    }
    let good = open(gw, auth(token("uid1"))).await;
    assert!(good.is_ok(), "a valid token is accepted");
    suite.stop().await;
}

async fn a_slow_consumer_is_cut_off_without_stalling_the_others(backend: Backend) {
    let options = Options {
        outbound_queue: 8,
        slow_consumer_timeout_ms: 1_000,
        ..Options::default()
    };
    let suite = Suite::start_with(backend, options).await;
    let gid = create_group(&suite, "A", "Firehose", &["slow", "fast"]).await;
    let gw = suite.gateway_addrs[0];
    let mut slow = Device::connect_with_window(gw, "slow", "phone", Some(65_535)).await;
    let mut fast = Device::connect(gw, "fast", "phone").await;
    // A heartbeat is answered only once the login (backlog) is done, so from
    // here on everything reaches both devices live.
    slow.drain(vec![]).await;
    fast.drain(vec![]).await;
    let (received, reason) = firehose(&suite, gid, (slow, fast), 200).await;
    let reason = reason.unwrap_or_else(|| {
        panic!("the slow stream ended without a closing frame after {received} messages")
    });
    assert!(reason.contains("outbound queue full"), "reason: {reason}");
    assert!(
        received < 200,
        "the slow reader was cut off (got {received})"
    );
    suite.stop().await;
}

async fn redis_restarting_loses_no_message() {
    let mut suite = Suite::start(Backend::MariaDb).await;
    let gid = create_group(&suite, "A", "Resilient", &["uid1"]).await;
    let mut uid1 = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    for i in 1..=5 {
        send_direct(&suite, "A", gid, &format!("r{i}"), 32).await;
    }
    let mut others = Vec::new();
    assert_eq!(
        seqs(&uid1.messages(5, &mut others).await, gid),
        vec![1, 2, 3, 4, 5]
    );

    suite.restart_redis().await;
    for i in 6..=10 {
        send_direct(&suite, "A", gid, &format!("r{i}"), 32).await;
    }
    let after = uid1.messages(5, &mut others).await;
    assert_eq!(
        seqs(&after, gid),
        vec![6, 7, 8, 9, 10],
        "recovered by seq after the restart"
    );
    let (late, _) = uid1.drain(vec![]).await;
    assert!(no_messages(&late), "duplicates: {late:?}");
    suite.stop().await;
}

#[tokio::test]
async fn redis_restart_loses_no_message_on_mariadb() {
    redis_restarting_loses_no_message().await;
}

on_both_backends!(
    online_members_get_each_message_once_in_order,
    the_sender_gets_coalesced_digests_and_the_counts_end_right,
    an_offline_member_gets_the_backlog_then_live_messages_without_gaps,
    a_killed_gateways_devices_go_offline_within_two_heartbeats,
    bad_expired_and_missing_tokens_are_refused,
    a_slow_consumer_is_cut_off_without_stalling_the_others,
);

/// With a Redis that speaks only TLS (a `rediss://` URL and the deployment's
/// own CA in `PARLEY_REDIS_CA_FILE`), presence and the bus work as they do in
/// the clear: a member on the other gateway is seen online and gets the
/// message, once.
#[tokio::test]
async fn presence_and_the_bus_work_over_a_tls_redis() {
    let options = Options {
        redis_tls: true,
        ..two_gateways()
    };
    let suite = Suite::start_with(Backend::MariaDb, options).await;
    assert!(
        suite
            .redis_url()
            .is_some_and(|url| url.starts_with("rediss://")),
        "the suite's Redis speaks TLS"
    );
    let gid = create_group(&suite, "A", "Sealed", &["uid1"]).await;
    let gw = suite.gateway_addrs.clone();
    let mut a = Device::connect(gw[0], "A", "a-phone").await;
    let mut uid1 = Device::connect(gw[1], "uid1", "phone").await;
    eventually("uid1 online", Duration::from_secs(10), || async {
        (!devices_of(&suite, "uid1").await.is_empty()).then_some(())
    })
    .await;
    a.send(gid, "m1", b"hello").await;
    let mut others = Vec::new();
    let messages = uid1.messages(1, &mut others).await;
    assert_eq!(seqs(&messages, gid), vec![1]);
    let (late, _) = uid1.drain(vec![]).await;
    assert!(no_messages(&late), "a duplicate: {late:?}");
    suite.stop().await;
}

#[tokio::test]
async fn presence_watchers_see_devices_come_and_go() {
    let suite = Suite::start(Backend::Sqlite).await;
    let request = ppb::WatchPresenceRequest {
        uids: vec!["uid1".into()],
    };
    let mut changes = suite
        .presence()
        .watch_presence(request)
        .await
        .expect("watch")
        .into_inner();
    let mut next = async || {
        let change = tokio::time::timeout(Duration::from_secs(10), changes.message())
            .await
            .expect("a change within 10 s")
            .expect("stream open")
            .expect("a change");
        change.user.expect("user").devices.len()
    };
    assert_eq!(next().await, 0, "first the current state: offline");
    let device = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    assert_eq!(next().await, 1, "online on one device");
    drop(device);
    assert_eq!(next().await, 0, "offline again when the stream ends");
    suite.stop().await;
}

#[tokio::test]
async fn a_sender_who_was_offline_gets_the_receipt_changes_at_login() {
    let suite = Suite::start(Backend::Sqlite).await;
    let gid = create_group(&suite, "A", "Away", &["uid1", "uid2"]).await;
    let sent = send_direct(&suite, "A", gid, "while-away", 16).await;
    wait_for_receipts(&suite, gid, vec![sent.msgid], 0).await;
    for reader in ["uid1", "uid2"] {
        let request = rpb::AckRequest {
            gid,
            up_to_seq: sent.seq,
            kind: rpb::AckKind::Read.into(),
        };
        suite.receipt(user(reader)).ack(request).await.expect("ack");
    }
    let mut a = Device::connect(suite.gateway_addrs[0], "A", "a-phone").await;
    let digest = loop {
        if let Out::ReceiptDigest(digest) = a.frame().await {
            break digest;
        }
    };
    let entry = digest
        .entries
        .iter()
        .find(|e| e.msgid == sent.msgid)
        .expect("the message's receipts");
    assert_eq!((entry.read_count, entry.recipient_count), (2, 2));
    assert!(
        !digest.receipts_cursor.is_empty(),
        "a cursor to resume from next time"
    );
    suite.stop().await;
}

/// The gateway writes the acks of all its streams together: while one call
/// for a group is out, the acks of that group's other readers gather and go
/// in the next call, each group one transaction. Here the group's receipt row
/// is held locked so the first call waits; the other 19 readers' acks must
/// then go in one call, not 19.
#[tokio::test]
async fn acks_of_many_streams_gather_while_a_call_is_out() {
    use crate::telemetry::{http_get, sample, serve_metrics};
    let metrics = serve_metrics().await;
    let suite = Suite::start(Backend::MariaDb).await;
    let readers: Vec<String> = (0..20).map(|i| format!("r{i:02}")).collect();
    let names: Vec<&str> = readers.iter().map(String::as_str).collect();
    let gid = create_group(&suite, "A", "Readers", &names).await;
    send_direct(&suite, "A", gid, "m1", 8).await;
    for reader in &names {
        crate::support::wait_for_position(&suite, reader, gid, "m1 recorded", |g| g.last_seq == 1)
            .await;
    }
    let mut devices = Vec::new();
    for reader in &names {
        devices.push(Device::connect(suite.gateway_addrs[0], reader, "phone").await);
    }
    let figure = |series: &'static str| async move {
        let (_, text) = http_get(metrics, "/metrics").await;
        sample(&text, series).unwrap_or(0.0)
    };

    let mut holder = suite.hold_receipt_group(gid).await;
    devices[0].ack(gid, 1, true).await;
    eventually(
        "the first ack's call to be out",
        Duration::from_secs(30),
        || async { (figure("parley_gateway_acks_per_call_count").await >= 1.0).then_some(()) },
    )
    .await;
    for device in &devices[1..] {
        device.ack(gid, 1, true).await;
    }
    eventually(
        "the other acks to wait for it",
        Duration::from_secs(30),
        || async { (figure("parley_gateway_acks_waiting").await == 19.0).then_some(()) },
    )
    .await;
    sqlx::query("COMMIT")
        .execute(&mut holder)
        .await
        .expect("released");

    for reader in &names {
        crate::support::wait_for_position(&suite, reader, gid, "the ack written", |g| {
            g.read_seq == 1
        })
        .await;
    }
    assert_eq!(figure("parley_gateway_acks_per_call_count").await, 2.0);
    assert_eq!(figure("parley_gateway_acks_per_call_sum").await, 20.0);
    suite.stop().await;
}

/// Whoever else can publish on the bus's Redis cannot hand a gateway
/// deliveries: the suite's Redis requires a password, as a production one
/// should, and a client without it is refused; and with credentials, a
/// gateway takes only events the message or receipt service tagged for its
/// channel. A forged seq 1, untagged or tagged with the gateway's own key, is
/// published (with the password) before the real seq 1 is sent; the device
/// must get the real one.
#[tokio::test]
async fn deliveries_published_on_redis_by_anyone_else_are_refused() {
    let suite = Suite::start(Backend::MariaDb).await;
    let gid = create_group(&suite, "A", "Bus", &["uid1"]).await;
    let mut device = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    let forged = parley_proto::bus::BusEvent {
        event: Some(parley_proto::bus::bus_event::Event::Delivery(
            parley_proto::bus::Delivery {
                message: Some(pb::DeliveredMessage {
                    msgid: 999_999,
                    gid,
                    seq: 1,
                    sender_uid: "A".into(),
                    content: b"forged".to_vec(),
                    need_receipt: false,
                    created_at_ms: 0,
                }),
                uids: vec!["uid1".into()],
            },
        )),
    };
    let stranger = suite.redis_url_without_password().expect("a Redis suite");
    let refused = parley_bus::Bus::redis(&stranger)
        .expect("redis bus")
        .publish(&suite.gateway_ids[0], &forged)
        .await;
    assert!(
        refused.is_err(),
        "Redis took a publish without its password"
    );
    let redis = suite.redis_url().expect("a Redis suite");
    let anyone = parley_bus::Bus::redis(&redis).expect("redis bus");
    let gateway_key = anyone
        .clone()
        .with_credentials(Some(suite.keys.keys("gateway")))
        .expect("the gateway's credentials list its own key");
    for publisher in [anyone, gateway_key] {
        publisher
            .publish(&suite.gateway_ids[0], &forged)
            .await
            .expect("published on Redis");
    }
    send_direct(&suite, "A", gid, "real", 8).await;
    let got = device.messages(1, &mut Vec::new()).await;
    assert_eq!(got[0].seq, 1);
    assert_ne!(
        got[0].content,
        b"forged".to_vec(),
        "a forged delivery reached the device"
    );
    assert_ne!(got[0].msgid, 999_999);
    suite.stop().await;
}
