//! Offline push end to end: the whole suite, with the notification service's
//! FCM sender pushing over real HTTP/2 to a loopback stand-in that checks each
//! request (path, bearer token from its own OAuth endpoint, JSON body), and
//! its APNs sender to another (path, headers, an ES256 provider token signed
//! by the configured key, JSON payload).

use std::{collections::BTreeSet, time::Duration};

use parley_proto::notification::{self as npb};
use parley_testkit::{
    eventually,
    fcm::{PROJECT, Recorded, Reply},
};
use serde_json::Value;

use crate::{
    device::Device,
    support::{
        Backend, NotificationDb, Options, Suite, ack_read, create_group, on_both_backends,
        send_direct, unread_in, user,
    },
};

const WAIT: Duration = Duration::from_secs(30);

/// A well-formed FCM token naming its owner.
fn fcm_token(name: &str) -> String {
    format!("{name}:{}", "APA91b-x_".repeat(6))
}

async fn register(suite: &Suite, uid: &str, device_id: &str, token: &str) {
    let request = npb::RegisterDeviceRequest {
        device_id: device_id.into(),
        platform: npb::Platform::Fcm.into(),
        token: token.into(),
        app_id: String::new(),
        locale: "en-GB".into(),
    };
    suite
        .notification(user(uid))
        .register_device(request)
        .await
        .expect("register device");
}

fn data<'a>(send: &'a Recorded, key: &str) -> &'a str {
    send.body["message"]["data"][key]
        .as_str()
        .unwrap_or_default()
}

fn seq_range(send: &Recorded) -> std::ops::RangeInclusive<u64> {
    let seq = |key| data(send, key).parse::<u64>().expect("seq in data");
    seq("first_seq")..=seq("last_seq")
}

/// Waits until `uid` has nothing left in the push queue.
async fn queue_drained(db: &NotificationDb, uid: &str) {
    eventually(&format!("{uid}'s push queue to drain"), WAIT, || async {
        db.queued_for(uid).await.is_empty().then_some(())
    })
    .await;
}

/// Waits until `uid` has at least `n` pushes queued.
async fn queued(db: &NotificationDb, uid: &str, n: usize) {
    eventually(&format!("{n} pushes queued for {uid}"), WAIT, || async {
        (db.queued_for(uid).await.len() >= n).then_some(())
    })
    .await;
}

async fn an_offline_member_gets_one_collapsed_push_with_the_unread_badge(backend: Backend) {
    let options = Options {
        push_window_ms: 2_000,
        ..Options::default()
    };
    let suite = Suite::start_with(backend, options).await;
    let token = fcm_token("uid3-phone");
    register(&suite, "uid3", "phone", &token).await;
    let other = create_group(&suite, "A", "Other", &["uid3"]).await;
    let design = create_group(&suite, "A", "Design", &["uid3"]).await;
    for i in 1..=2 {
        send_direct(&suite, "A", other, &format!("o{i}"), 8).await;
    }
    for i in 1..=5 {
        send_direct(&suite, "A", design, &format!("d{i}"), 8).await;
    }
    let db = suite.notification_db().await;
    let is_design = |send: &Recorded| data(send, "gid") == design.to_string();
    eventually("the push for Design", WAIT, || async {
        suite
            .fcm
            .sends_to(&token)
            .iter()
            .any(is_design)
            .then_some(())
    })
    .await;
    queue_drained(&db, "uid3").await;

    let sends = suite.fcm.sends_to(&token);
    assert!(
        sends.iter().all(|s| s.problem.is_none() && s.status == 200),
        "{sends:?}"
    );
    let design_pushes: Vec<&Recorded> = sends.iter().filter(|s| is_design(s)).collect();
    assert_eq!(design_pushes.len(), 1, "one push for the burst: {sends:?}");
    let push = design_pushes[0];
    assert_eq!(push.project, PROJECT);
    assert_eq!(seq_range(push), 1..=5);
    let message = &push.body["message"];
    assert_eq!(message["notification"]["title"], "Design");
    assert_eq!(message["notification"]["body"], "5 new messages in Design");
    // The badge is the unread count over every group: 2 in Other, 5 here.
    assert_eq!(data(push, "badge"), "7");
    assert_eq!(message["apns"]["payload"]["aps"]["badge"], 7);
    assert_eq!(
        message["android"]["collapse_key"],
        format!("parley-group-{design}")
    );
    assert!(suite.fcm.tokens_issued() >= 1);
    suite.stop().await;
}

async fn read_muted_and_online_members_get_no_push(backend: Backend) {
    let suite = Suite::start(backend).await;
    let members = ["reader", "muted", "online", "control"];
    for uid in members {
        register(&suite, uid, "phone", &fcm_token(uid)).await;
    }
    let gid = create_group(&suite, "A", "Quiet", &members).await;
    let mute = npb::SetMuteRequest { gid, until_ms: -1 };
    suite
        .notification(user("muted"))
        .set_mute(mute)
        .await
        .expect("mute");
    let _online = Device::connect(suite.gateway_addrs[0], "online", "laptop").await;

    send_direct(&suite, "A", gid, "q1", 8).await;
    send_direct(&suite, "A", gid, "q2", 8).await;
    // The reader reads both on another device before the push is due.
    eventually("the reader's read cursor at 2", WAIT, || async {
        ack_read(&suite, "reader", gid, 2).await;
        (unread_in(&suite, "reader", gid).await[0].read_seq == 2).then_some(())
    })
    .await;

    let db = suite.notification_db().await;
    eventually("the control member's push", WAIT, || async {
        (!suite.fcm.sends_to(&fcm_token("control")).is_empty()).then_some(())
    })
    .await;
    for uid in ["reader", "muted"] {
        queue_drained(&db, uid).await;
    }
    for uid in ["reader", "muted", "online"] {
        assert!(
            suite.fcm.sends_to(&fcm_token(uid)).is_empty(),
            "{uid} was pushed: {:?}",
            suite.fcm.sends_to(&fcm_token(uid))
        );
    }
    assert_eq!(
        seq_range(&suite.fcm.sends_to(&fcm_token("control"))[0]),
        1..=2
    );
    suite.stop().await;
}

async fn restarting_the_notification_service_mid_burst_loses_no_push(backend: Backend) {
    let options = Options {
        push_window_ms: 1_500,
        ..Options::default()
    };
    let mut suite = Suite::start_with(backend, options).await;
    let token = fcm_token("uid3-phone");
    register(&suite, "uid3", "phone", &token).await;
    let gid = create_group(&suite, "A", "Burst", &["uid3"]).await;
    for i in 1..=3 {
        send_direct(&suite, "A", gid, &format!("b{i}"), 8).await;
    }
    let db = suite.notification_db().await;
    queued(&db, "uid3", 3).await;
    suite.stop_notification().await;
    // Accepted while the service is down: the message outbox keeps retrying.
    for i in 4..=6 {
        send_direct(&suite, "A", gid, &format!("b{i}"), 8).await;
    }
    suite.restart_notification().await;

    let covered = eventually("pushes covering seq 1-6", WAIT, || async {
        let sends = suite.fcm.sends_to(&token);
        let covered: BTreeSet<u64> = sends.iter().flat_map(seq_range).collect();
        (covered.len() == 6).then_some(covered)
    })
    .await;
    assert_eq!(covered, (1..=6).collect());
    queue_drained(&db, "uid3").await;
    let sends = suite.fcm.sends_to(&token);
    let last = sends.last().expect("a push");
    assert_eq!(*seq_range(last).end(), 6);
    assert_eq!(
        data(last, "count"),
        seq_range(last).count().to_string(),
        "a push's count is the messages it covers"
    );
    suite.stop().await;
}

/// Registers `uid`'s iPhone `device_id` for APNs pushes of the app
/// `com.example.chat`.
async fn register_iphone(suite: &Suite, uid: &str, device_id: &str, token: &str) {
    let request = npb::RegisterDeviceRequest {
        device_id: device_id.into(),
        platform: npb::Platform::Apns.into(),
        token: token.into(),
        app_id: "com.example.chat".into(),
        locale: "en-GB".into(),
    };
    suite
        .notification(user(uid))
        .register_device(request)
        .await
        .expect("register the iPhone");
}

/// An offline user's iPhone gets its push through APNs (over HTTP/2, with a
/// provider token the stand-in verifies) beside the Android phone's through
/// FCM, each once for the burst; an iPhone APNs calls unregistered loses its
/// token.
async fn an_offline_iphone_gets_its_push_through_apns(backend: Backend) {
    let options = Options {
        push_window_ms: 1_000,
        ..Options::default()
    };
    let suite = Suite::start_with(backend, options).await;
    let iphone = "ab".repeat(32);
    let gone = "cd".repeat(32);
    register_iphone(&suite, "uid3", "iphone", &iphone).await;
    register(&suite, "uid3", "android", &fcm_token("uid3-android")).await;
    register_iphone(&suite, "uid4", "old-iphone", &gone).await;
    suite
        .apns
        .script(&gone, [parley_testkit::apns::Reply::Unregistered]);
    let design = create_group(&suite, "A", "Design", &["uid3", "uid4"]).await;
    for i in 1..=3 {
        send_direct(&suite, "A", design, &format!("d{i}"), 8).await;
    }
    let to = |token: &str| -> Vec<parley_testkit::apns::Recorded> {
        suite
            .apns
            .sends()
            .into_iter()
            .filter(|s| s.token == token)
            .collect()
    };
    eventually("a push to each iPhone", WAIT, || async {
        (!to(&iphone).is_empty() && !to(&gone).is_empty()).then_some(())
    })
    .await;
    let db = suite.notification_db().await;
    queue_drained(&db, "uid3").await;
    queue_drained(&db, "uid4").await;
    let pushes = to(&iphone);
    assert_eq!(pushes.len(), 1, "one APNs push for the burst: {pushes:?}");
    let push = &pushes[0];
    assert_eq!((push.status, &push.problem), (200, &None), "{push:?}");
    assert_eq!(push.headers["apns-topic"], "com.example.chat");
    assert_eq!(
        push.headers["apns-collapse-id"],
        format!("parley-group-{design}")
    );
    assert_eq!(push.body["aps"]["alert"]["title"], "Design");
    assert_eq!(
        push.body["aps"]["alert"]["body"],
        "3 new messages in Design"
    );
    assert_eq!(push.body["aps"]["badge"], 3);
    assert_eq!(push.body["parley"]["gid"], design);
    assert_eq!(push.body["parley"]["first_seq"], 1);
    assert_eq!(push.body["parley"]["last_seq"], 3);
    assert_eq!(suite.fcm.sends_to(&fcm_token("uid3-android")).len(), 1);

    assert_eq!(to(&gone).len(), 1, "the old iPhone was tried once");
    assert_eq!(to(&gone)[0].status, 410);
    eventually(
        "the unregistered iPhone's token to be forgotten",
        WAIT,
        || async { db.devices("uid4").await.is_empty().then_some(()) },
    )
    .await;
    suite.stop().await;
}

on_both_backends!(
    an_offline_iphone_gets_its_push_through_apns,
    an_offline_member_gets_one_collapsed_push_with_the_unread_badge,
    read_muted_and_online_members_get_no_push,
    restarting_the_notification_service_mid_burst_loses_no_push,
);

/// The value of the metric line starting with `series` in a Prometheus text
/// exposition, or 0 when absent.
fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn fcm_failures_are_retried_pruned_and_dead_lettered() {
    // This process's metrics (nextest runs each test in its own process; the
    // counters below only move in this test, so they hold under `cargo test` too).
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("this test installs the process's metrics recorder");
    let suite = Suite::start(Backend::MariaDb).await;
    let fcm = &suite.fcm;
    let tokens = ["flaky", "gone", "invalid", "down"].map(fcm_token);
    fcm.script(
        &tokens[0],
        [Reply::RetryAfter(1), Reply::ServerError, Reply::Ok],
    );
    fcm.script(&tokens[1], [Reply::Unregistered]);
    fcm.script(&tokens[2], [Reply::InvalidToken]);
    fcm.script(&tokens[3], [Reply::ServerError; 3]);
    for (device, token) in ["flaky", "gone", "invalid", "down"].iter().zip(&tokens) {
        register(&suite, "uid3", device, token).await;
    }
    let gid = create_group(&suite, "A", "Ops", &["uid3"]).await;
    send_direct(&suite, "A", gid, "alert", 8).await;

    let db = suite.notification_db().await;
    let letters = eventually(
        "a dead letter for the device that stays down",
        WAIT,
        || async {
            let letters = db.dead_letters("uid3").await;
            (!letters.is_empty()).then_some(letters)
        },
    )
    .await;
    queue_drained(&db, "uid3").await;

    let statuses =
        |token: &str| -> Vec<u16> { fcm.sends_to(token).iter().map(|s| s.status).collect() };
    assert_eq!(
        statuses(&tokens[0]),
        vec![429, 500, 200],
        "retried until sent"
    );
    let flaky = fcm.sends_to(&tokens[0]);
    assert!(
        flaky[1].at.duration_since(flaky[0].at) >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(
        statuses(&tokens[1]),
        vec![404],
        "UNREGISTERED is not retried"
    );
    assert_eq!(
        statuses(&tokens[2]),
        vec![400],
        "an invalid token is not retried"
    );
    assert_eq!(
        statuses(&tokens[3]),
        vec![500, 500, 500],
        "three attempts, then given up"
    );
    assert!(
        fcm.sends().iter().all(|s| s.problem.is_none()),
        "{:?}",
        fcm.sends()
    );

    let kept: Vec<String> = db
        .devices("uid3")
        .await
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(
        kept,
        vec!["down", "flaky"],
        "rejected tokens are gone from the registry"
    );
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!((letter.device_id.as_str(), letter.attempts), ("down", 3));
    assert_eq!(
        (letter.gid, letter.last_seq, letter.messages),
        (i64::try_from(gid).expect("gid"), 1, 1)
    );
    assert!(letter.reason.contains("500"), "{}", letter.reason);
    let body: &Value = &flaky[2].body;
    assert_eq!(
        body["message"]["notification"]["body"],
        "New message in Ops"
    );

    let exposition = metrics.render();
    let fcm = |name: &str| metric(&exposition, &format!("{name}{{platform=\"fcm\"}}"));
    assert!(fcm("parley_push_sent_total") >= 1.0, "{exposition}");
    assert_eq!(
        fcm("parley_push_retried_total"),
        4.0,
        "2 for flaky, 2 for down"
    );
    assert_eq!(fcm("parley_push_tokens_pruned_total"), 2.0);
    assert_eq!(
        metric(
            &exposition,
            "parley_push_failed_total{platform=\"fcm\",reason=\"dead_letter\"}"
        ),
        1.0,
        "{exposition}"
    );
    suite.stop().await;
}

/// A 429 with a long `Retry-After` puts the pair back with that due time and
/// holds no worker: with one worker, another user's push goes out while the
/// throttled one waits, and the throttled push goes out once the wait is over
/// (the worker used to sleep through the wait, holding its slot).
#[tokio::test]
async fn a_429_puts_the_pair_back_and_the_push_goes_out_after_its_retry_after() {
    let options = crate::support::Options {
        push_workers: Some(1),
        ..Default::default()
    };
    let suite = Suite::start_with(Backend::MariaDb, options).await;
    let (throttled, other) = (fcm_token("throttled"), fcm_token("other"));
    suite
        .fcm
        .script(&throttled, [Reply::RetryAfter(10), Reply::Ok]);
    register(&suite, "uid3", "phone", &throttled).await;
    register(&suite, "uid4", "phone", &other).await;
    let first = create_group(&suite, "A", "First", &["uid3"]).await;
    send_direct(&suite, "A", first, "one", 8).await;
    let refused_at = eventually("the 429", WAIT, || async {
        suite.fcm.sends_to(&throttled).first().map(|s| s.at)
    })
    .await;
    let second = create_group(&suite, "A", "Second", &["uid4"]).await;
    send_direct(&suite, "A", second, "two", 8).await;
    let other_at = eventually("the other user's push", WAIT, || async {
        suite.fcm.sends_to(&other).first().map(|s| s.at)
    })
    .await;
    let retried_at = eventually("the throttled push, retried", WAIT, || async {
        suite.fcm.sends_to(&throttled).get(1).map(|s| s.at)
    })
    .await;
    assert!(
        other_at < retried_at,
        "the one worker pushed to uid4 while uid3's retry waited"
    );
    assert!(
        retried_at.duration_since(refused_at) >= Duration::from_secs(10),
        "Retry-After: 10 was honoured ({:?})",
        retried_at.duration_since(refused_at)
    );
    let statuses: Vec<u16> = suite
        .fcm
        .sends_to(&throttled)
        .iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, vec![429, 200]);
    let db = suite.notification_db().await;
    queue_drained(&db, "uid3").await;
    assert!(db.dead_letters("uid3").await.is_empty());
    suite.stop().await;
}

/// With every slot busy, the worker claims the next pair as soon as a push
/// is settled, not a poll interval later (it used to sleep through the poll,
/// so a burst went out one slotful of pairs per interval: 500 ms by default).
#[tokio::test]
async fn a_busy_worker_claims_the_next_pair_when_one_is_settled_not_a_poll_later() {
    let options = crate::support::Options {
        push_workers: Some(1),
        push_poll_ms: 15_000,
        ..Default::default()
    };
    let suite = Suite::start_with(Backend::MariaDb, options).await;
    let members = ["uid3", "uid4", "uid5", "uid6"];
    let tokens: Vec<String> = members.iter().map(|uid| fcm_token(uid)).collect();
    for (uid, token) in members.iter().zip(&tokens) {
        register(&suite, uid, "phone", token).await;
    }
    let gid = create_group(&suite, "A", "Burst", &members).await;
    send_direct(&suite, "A", gid, "hello", 8).await;
    // The first claim waits for a poll (up to 15 s); the other three pairs
    // follow it at once. Sleeping a poll between them takes 45 s more.
    eventually(
        "a push to every member",
        Duration::from_secs(40),
        || async {
            tokens
                .iter()
                .all(|token| suite.fcm.sends_to(token).iter().any(|s| s.status == 200))
                .then_some(())
        },
    )
    .await;
    suite.stop().await;
}

/// A provider answering with an absurd `Retry-After` (the largest number the
/// header can hold) gets its push dead-lettered, not a panicking worker: the
/// next push is sent as usual.
#[tokio::test]
async fn a_huge_retry_after_dead_letters_the_push_and_the_worker_goes_on() {
    let suite = Suite::start(Backend::MariaDb).await;
    let (huge, fine) = (fcm_token("huge"), fcm_token("fine"));
    suite.fcm.script(&huge, [Reply::RetryAfter(u64::MAX)]);
    register(&suite, "uid3", "phone", &huge).await;
    register(&suite, "uid4", "phone", &fine).await;
    let gid = create_group(&suite, "A", "Ops", &["uid3"]).await;
    send_direct(&suite, "A", gid, "alert", 8).await;
    let db = suite.notification_db().await;
    let letters = eventually("the throttled push dead-lettered", WAIT, || async {
        let letters = db.dead_letters("uid3").await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert!(letters[0].reason.contains("past the lease"), "{letters:?}");

    let other = create_group(&suite, "A", "Later", &["uid4"]).await;
    send_direct(&suite, "A", other, "next", 8).await;
    eventually("the next push sent", WAIT, || async {
        suite
            .fcm
            .sends_to(&fine)
            .iter()
            .any(|s| s.status == 200)
            .then_some(())
    })
    .await;
    suite.stop().await;
}

#[tokio::test]
async fn bad_registrations_and_mutes_are_refused_and_change_nothing() {
    let suite = Suite::start(Backend::Sqlite).await;
    let mut client = suite.notification(user("uid3"));
    let good = npb::RegisterDeviceRequest {
        device_id: "phone".into(),
        platform: npb::Platform::Fcm.into(),
        token: fcm_token("phone"),
        app_id: String::new(),
        locale: "en-GB".into(),
    };
    let bad = [
        npb::RegisterDeviceRequest {
            platform: npb::Platform::Apns.into(),
            ..good.clone()
        },
        npb::RegisterDeviceRequest {
            token: "short".into(),
            ..good.clone()
        },
        npb::RegisterDeviceRequest {
            platform: 7,
            ..good.clone()
        },
        npb::RegisterDeviceRequest {
            device_id: "a|b".into(),
            ..good.clone()
        },
    ];
    for request in bad {
        let status = client.register_device(request).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let status = suite
        .notification(crate::support::As::Nobody)
        .register_device(good.clone())
        .await
        .expect_err("no identity");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    for until_ms in [-2, i64::MIN] {
        let status = client
            .set_mute(npb::SetMuteRequest { gid: 1, until_ms })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    let db = suite.notification_db().await;
    assert!(db.devices("uid3").await.is_empty(), "nothing stored");

    // A user's devices are bounded; replacing a token is always allowed.
    for i in 0..20 {
        let request = npb::RegisterDeviceRequest {
            device_id: format!("d{i:02}"),
            token: fcm_token(&format!("d{i:02}")),
            ..good.clone()
        };
        client
            .register_device(request)
            .await
            .expect("within the limit");
    }
    let status = client
        .register_device(good.clone())
        .await
        .expect_err("a 21st device");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let again = npb::RegisterDeviceRequest {
        device_id: "d05".into(),
        ..good
    };
    let replaced = client.register_device(again).await.expect("replace");
    assert!(replaced.into_inner().replaced);
    assert_eq!(db.devices("uid3").await.len(), 20);
    suite.stop().await;
}

/// Only a member mutes a group: a stranger is refused PERMISSION_DENIED, a
/// group that does not exist NOT_FOUND; unmuting is
/// always allowed.
#[tokio::test]
async fn only_members_mute_a_group() {
    let suite = Suite::start(Backend::Sqlite).await;
    let gid = create_group(&suite, "A", "Members only", &["uid1"]).await;
    let mute = |gid, until_ms| npb::SetMuteRequest { gid, until_ms };
    let mut stranger = suite.notification(user("stranger"));
    let refused = stranger
        .set_mute(mute(gid, -1))
        .await
        .expect_err("a stranger");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let missing = stranger
        .set_mute(mute(gid + 1000, -1))
        .await
        .expect_err("no such group");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    stranger
        .set_mute(mute(gid, 0))
        .await
        .expect("unmuting is allowed");
    suite
        .notification(user("uid1"))
        .set_mute(mute(gid, -1))
        .await
        .expect("a member mutes");
    suite.stop().await;
}

/// EnqueueOfflineBatch takes 1 to 100 messages with at most 100,000
/// recipients among them, all checked before any is queued: one malformed
/// message refuses the batch, named by its index, and nothing is queued.
#[tokio::test]
async fn offline_batches_are_bounded_and_checked_whole() {
    let suite = Suite::start(Backend::Sqlite).await;
    register(&suite, "uid1", "phone", &fcm_token("phone")).await;
    let mut outbox = suite.notification(crate::support::As::Raw("x-parley-service", "message"));
    let message = |seq: u64, recipients: Vec<String>| npb::EnqueueOfflineRequest {
        gid: 7,
        msgid: 100 + seq,
        seq,
        sender_uid: "A".into(),
        group_name: "Batch".into(),
        recipient_uids: recipients,
        group_size: 3,
    };
    let uid1 = || vec!["uid1".to_owned()];
    let many = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}{i}")).collect();
    let batch = |messages| npb::EnqueueOfflineBatchRequest { messages };
    let cases = [
        ("no messages", batch(Vec::new()), "1 to 100"),
        (
            "101 messages",
            batch((1..=101).map(|seq| message(seq, uid1())).collect()),
            "1 to 100",
        ),
        (
            "100,001 recipients",
            batch(vec![
                message(1, many("u", 60_000)),
                message(2, many("v", 40_001)),
            ]),
            "100000",
        ),
        (
            "a malformed second message",
            batch(vec![
                message(1, uid1()),
                message(2, vec!["not a uid!".into()]),
            ]),
            "messages[1]",
        ),
    ];
    for (what, request, says) in cases {
        let refused = outbox.enqueue_offline_batch(request).await.expect_err(what);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{what}");
        assert!(
            refused.message().contains(says),
            "{what}: {}",
            refused.message()
        );
    }
    let queued = outbox
        .enqueue_offline_batch(batch(vec![message(1, uid1()), message(2, uid1())]))
        .await
        .expect("a well-formed batch")
        .into_inner()
        .queued;
    assert_eq!(
        queued, 2,
        "nothing was queued before, not even a first message"
    );
    suite.stop().await;
}
