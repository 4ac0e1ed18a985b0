//! Delivery under faults: a neighbour's outage or a busy service makes
//! delivery wait, never skip, and never closes a stream that does not need
//! the service that failed.

use std::{collections::BTreeSet, time::Duration};

use parley_proto::gateway::{
    self as pb, connect_request::Frame as In, connect_response::Frame as Out,
};
use parley_testkit::eventually;

use crate::{
    device::{Device, seqs},
    support::{
        Backend, Options, Suite, ack_read, create_group, on_both_backends, send_direct, unread_in,
        user, wait_for_membership, wait_for_position,
    },
};

on_both_backends!(
    a_login_while_the_outbox_is_stalled_gets_every_committed_message,
    a_receipt_outage_closes_no_stream_and_fails_no_send,
    an_ack_past_the_committed_last_seq_moves_nothing_beyond_it,
    a_login_in_a_thousand_groups_gets_every_group,
    a_refused_sync_says_so_and_is_never_shown_as_empty,
    a_burst_past_capacity_is_refused_with_hints_and_loses_nothing,
    a_presence_outage_at_login_closes_no_stream,
    a_batch_of_sends_is_stored_in_order_and_refusals_take_no_seq,
);

/// A message whose fan-out failed (presence down) reaches an online member
/// once presence is back, with no later message, reconnect or heartbeat to
/// prompt it: the heartbeat interval is a minute, longer than the test. Only
/// on MariaDB and Redis, where presence keeps its entries across a restart.
#[tokio::test]
async fn a_failed_fan_out_is_repaired_without_a_later_message() {
    let options = Options {
        heartbeat_ms: 60_000,
        presence_ttl_ms: 120_000,
        ..Options::default()
    };
    let mut suite = Suite::start_with(Backend::MariaDb, options).await;
    let gid = create_group(&suite, "A", "Repair", &["uid1"]).await;
    wait_for_membership(&suite, "uid1", gid).await;
    let mut reader = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    reader.drain(vec![]).await;

    suite.stop_presence().await;
    send_direct(&suite, "A", gid, "lone", 16).await;
    assert!(
        reader.try_frame(Duration::from_millis(300)).await.is_none(),
        "nothing can be routed while presence is down"
    );
    suite.restart_presence().await;

    let mut others = Vec::new();
    let got = reader.messages(1, &mut others).await;
    assert_eq!(seqs(&got, gid), vec![1], "the lone message arrived live");
    suite.stop().await;
}

/// Sends one message from `device` and waits for its result.
async fn a_login_while_the_outbox_is_stalled_gets_every_committed_message(backend: Backend) {
    let options = Options {
        outbox_max_backoff_ms: 60_000,
        ..Options::default()
    };
    let mut suite = Suite::start_with(backend, options).await;
    let gid = create_group(&suite, "A", "Stalled", &["uid1"]).await;
    wait_for_membership(&suite, "uid1", gid).await;

    suite.stop_receipt().await;
    for i in 1..=3 {
        send_direct(&suite, "A", gid, &format!("s{i}"), 16).await;
    }
    // Let the outbox back off far enough (at least 6 s to its next try) that
    // the receipt service will not hear of the messages before the login,
    // however busy the machine.
    eventually(
        "the outbox to back off",
        Duration::from_secs(90),
        || async { (suite.outbox_attempts().await >= 8).then_some(()) },
    )
    .await;
    suite.restart_receipt().await;
    assert_eq!(
        unread_in(&suite, "uid1", gid).await[0].last_seq,
        0,
        "the receipt service has not heard of the messages yet"
    );

    let mut device = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    let mut others = Vec::new();
    let got = device.messages(3, &mut others).await;
    assert_eq!(
        seqs(&got, gid),
        vec![1, 2, 3],
        "every committed message, in order"
    );
    suite.stop().await;
}

async fn a_receipt_outage_closes_no_stream_and_fails_no_send(backend: Backend) {
    let mut suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Outage", &["uid1"]).await;
    wait_for_membership(&suite, "uid1", gid).await;
    let gw = suite.gateway_addrs[0];
    let mut sender = Device::connect(gw, "A", "phone").await;
    let mut reader = Device::connect(gw, "uid1", "phone").await;
    reader.drain(vec![]).await;

    suite.stop_receipt().await;
    let mut msgids = Vec::new();
    for i in 1..=5 {
        let result = sender.send_and_wait(gid, &format!("o{i}")).await;
        assert_eq!(result.code, 0, "send {i} accepted: {}", result.error);
        msgids.push(result.msgid);
        let mut others = Vec::new();
        let live = reader.messages(1, &mut others).await;
        assert_eq!(live[0].seq, i, "message {i} delivered live");
        // Acks and receipt watches meet the outage; neither closes a stream.
        reader.ack(gid, i, true).await;
        let (_, reply) = sender.drain(msgids.clone()).await;
        assert!(reply.receipt_changes.is_empty());
    }
    // A device logging in meanwhile is served too: its backlog waits for the
    // receipt service, its sends do not.
    let mut laptop = Device::connect(gw, "uid1", "laptop").await;
    let result = laptop.send_and_wait(gid, "from-laptop").await;
    assert_eq!(result.code, 0, "a send from a new login is accepted");

    suite.restart_receipt().await;
    // The reader's last ack was kept and written once the service came back.
    let what = "uid1's read cursor to reach 5";
    wait_for_position(&suite, "uid1", gid, what, |g| g.read_seq >= 5).await;
    // The laptop's owed backlog arrives after the outage, in order, from
    // uid1's delivered cursor (which the reader's acks may have moved) to
    // the laptop's own message.
    let mut backlog = Vec::new();
    while backlog.last() != Some(&6) {
        let mut others = Vec::new();
        backlog.extend(seqs(&laptop.messages(1, &mut others).await, gid));
    }
    let first = backlog[0];
    assert_eq!(backlog, (first..=6).collect::<Vec<_>>(), "in order, no gap");
    for (name, device) in [("sender", &mut sender), ("reader", &mut reader)] {
        let (before, _) = device.drain(vec![]).await;
        assert!(
            !before.iter().any(|f| matches!(f, Out::Closing(_))),
            "{name}'s stream is open"
        );
    }
    suite.stop().await;
}

async fn an_ack_past_the_committed_last_seq_moves_nothing_beyond_it(backend: Backend) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Ahead", &["uid1"]).await;
    send_direct(&suite, "A", gid, "a1", 16).await;
    let what = "the receipt service to record seq 1";
    wait_for_position(&suite, "uid1", gid, what, |g| g.last_seq == 1).await;

    for up_to in [99, i64::MAX as u64] {
        let reply = ack_read(&suite, "uid1", gid, up_to).await;
        assert!(reply.capped, "the reply says the ack was capped");
        assert_eq!(
            (reply.read_seq, reply.delivered_seq),
            (1, 1),
            "up to {up_to}"
        );
    }

    // The next message is unread for uid1, and a new device of theirs gets it.
    send_direct(&suite, "A", gid, "a2", 16).await;
    let what = "uid1 to have one unread message";
    wait_for_position(&suite, "uid1", gid, what, |g| g.unread == 1).await;
    let mut device = Device::connect(suite.gateway_addrs[0], "uid1", "tablet").await;
    let mut others = Vec::new();
    let got = device.messages(1, &mut others).await;
    assert_eq!(seqs(&got, gid), vec![2]);
    let exact = ack_read(&suite, "uid1", gid, 2).await;
    assert!(!exact.capped, "an ack at the last seq is not capped");
    suite.stop().await;
}

async fn a_login_in_a_thousand_groups_gets_every_group(backend: Backend) {
    const GROUPS: usize = 1000;
    let options = Options {
        message_rate_per_second: Some(200),
        ..Options::default()
    };
    let suite = Suite::start_with(backend, options).await;
    // Each group has its own creator and sender, so setting up stays within
    // every user's rate limit; uid1 alone is in all of them.
    let mut gids = BTreeSet::new();
    for i in 0..GROUPS {
        let owner = format!("owner{i}");
        let gid = create_group(&suite, &owner, "Many", &["uid1"]).await;
        send_direct(&suite, &owner, gid, "only", 8).await;
        gids.insert(gid);
    }

    let mut device = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    let mut others = Vec::new();
    let got = device.messages(GROUPS, &mut others).await;
    let reached: BTreeSet<u64> = got.iter().map(|m| m.gid).collect();
    assert_eq!(reached, gids, "one message from every group");
    assert!(got.iter().all(|m| m.seq == 1));

    suite.stop().await;
}

async fn a_refused_sync_says_so_and_is_never_shown_as_empty(backend: Backend) {
    // One request a second per user, two in a burst: the login takes both,
    // so twenty syncs sent at once meet the limit unless they take 18 s.
    let options = Options {
        message_rate_per_second: Some(1),
        ..Options::default()
    };
    let suite = Suite::start_with(backend, options).await;
    let gid = create_group(&suite, "A", "Limited", &["uid1"]).await;
    send_direct(&suite, "A", gid, "only", 8).await;
    let mut device = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    const SYNCS: u64 = 20;
    for request_id in 1..=SYNCS {
        device
            .send_frame(In::Sync(pb::SyncFrame {
                request_id,
                gid,
                after_seq: 0,
                limit: 10,
            }))
            .await;
    }
    let mut refused = 0;
    let mut answered = 0;
    while refused + answered < SYNCS {
        let Out::SyncResult(result) = device.frame().await else {
            continue;
        };
        if result.code == 0 {
            assert_eq!(
                seqs(&result.messages, gid),
                vec![1],
                "an answered sync has the message"
            );
            answered += 1;
        } else {
            assert_eq!(result.code, tonic::Code::ResourceExhausted as i32);
            assert!(result.messages.is_empty());
            assert!(result.retry_after_ms > 0, "a refusal says when to retry");
            refused += 1;
        }
    }
    assert!(refused > 0, "the burst met the rate limit");
    suite.stop().await;
}

/// Sends `ids` from `device` without waiting between them; returns the
/// result of each, by client message id.
async fn burst(
    device: &mut Device,
    gid: u64,
    ids: &[String],
) -> Vec<(String, pb::SendResultFrame)> {
    let mut pending = std::collections::HashMap::new();
    for id in ids {
        let request_id = device.send(gid, id, b"load").await;
        pending.insert(request_id, id.clone());
    }
    let mut results = Vec::new();
    while !pending.is_empty() {
        match device.frame().await {
            Out::SendResult(result) => {
                let id = pending
                    .remove(&result.request_id)
                    .expect("one result per send");
                results.push((id, result));
            }
            Out::Closing(closing) => panic!("{}: stream closed: {}", device.uid, closing.reason),
            _ => {}
        }
    }
    results
}

async fn a_burst_past_capacity_is_refused_with_hints_and_loses_nothing(backend: Backend) {
    const SHARED: usize = 20;
    const OWN: usize = 5;
    const SENDS: usize = 100;
    let suite = Suite::start(backend).await;
    let senders: Vec<String> = (0..SHARED + OWN).map(|i| format!("load{i}")).collect();
    // A group per sender, so the check is per group and each device gets
    // only its own messages back.
    let mut gids = Vec::new();
    for uid in &senders {
        gids.push(create_group(&suite, "A", "Flood", &[uid]).await);
    }
    let gw = suite.gateway_addrs[0];
    // Twenty devices behind one HTTP/2 connection (as behind a proxy), five
    // on connections of their own.
    let shared = crate::device::connection(gw).await;
    let mut devices = Vec::new();
    for (i, uid) in senders.iter().enumerate() {
        let device = if i < SHARED {
            Device::connect_on(shared.clone(), uid, "phone").await
        } else {
            Device::connect(gw, uid, "phone").await
        };
        devices.push(device);
    }

    // Every device sends its burst at once; retried sends keep their ids.
    let mut outstanding: Vec<Vec<String>> = senders
        .iter()
        .map(|uid| (0..SENDS).map(|i| format!("{uid}-{i}")).collect())
        .collect();
    let mut seqs = vec![Vec::new(); senders.len()];
    let mut refused = 0;
    for round in 0.. {
        assert!(round < 100, "every send is accepted within 100 rounds");
        let bursts = devices
            .iter_mut()
            .zip(&gids)
            .zip(&outstanding)
            .map(|((device, &gid), ids)| burst(device, gid, ids));
        let results = futures::future::join_all(bursts).await;
        let mut longest_hint = 0;
        for ((ids, results), stored) in outstanding.iter_mut().zip(results).zip(&mut seqs) {
            ids.clear();
            for (id, result) in results {
                match tonic::Code::from_i32(result.code) {
                    tonic::Code::Ok => stored.push(result.seq),
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable => {
                        assert!(result.retry_after_ms > 0, "a refusal says when to retry");
                        longest_hint = longest_hint.max(result.retry_after_ms);
                        refused += 1;
                        ids.push(id);
                    }
                    other => panic!("send refused with {other:?}: {}", result.error),
                }
            }
        }
        if outstanding.iter().all(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(u64::from(longest_hint))).await;
    }
    assert!(
        refused > 0,
        "a burst past the queue is refused, not queued without bound"
    );
    for stored in &mut seqs {
        stored.sort_unstable();
        assert_eq!(
            *stored,
            (1..=SENDS as u64).collect::<Vec<_>>(),
            "each send stored once, seq dense"
        );
    }
    // No stream was cut: each still answers.
    for device in &mut devices {
        let (before, _) = device.drain(vec![]).await;
        assert!(!before.iter().any(|f| matches!(f, Out::Closing(_))));
    }
    suite.stop().await;
}

async fn a_presence_outage_at_login_closes_no_stream(backend: Backend) {
    let mut suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "NoPresence", &["uid1"]).await;
    wait_for_membership(&suite, "uid1", gid).await;

    suite.stop_presence().await;
    let mut device = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    let result = device.send_and_wait(gid, "while-presence-is-down").await;
    assert_eq!(result.code, 0, "a send needs no presence: {}", result.error);
    send_direct(&suite, "A", gid, "to-uid1", 16).await;
    suite.restart_presence().await;

    // The gateway's heartbeat registers the device; it gets both messages,
    // in order, on the stream it opened during the outage.
    let mut others = Vec::new();
    let got = device.messages(2, &mut others).await;
    assert_eq!(seqs(&got, gid), vec![1, 2]);
    assert!(!others.iter().any(|f| matches!(f, Out::Closing(_))));
    suite.stop().await;
}

async fn a_batch_of_sends_is_stored_in_order_and_refusals_take_no_seq(backend: Backend) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Batch", &["uid1"]).await;
    let mut reader = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    reader.drain(vec![]).await;
    let item = |id: &str, gid: u64| parley_proto::message::SendMessageRequest {
        gid,
        client_msg_id: id.into(),
        content: b"x".to_vec(),
        need_receipt: true,
    };
    let request = parley_proto::message::SendMessagesRequest {
        gid,
        messages: vec![
            item("m1", 0),
            item("", gid),
            item("m2", gid),
            item("m1", 0),
            item("m3", gid + 1),
        ],
    };
    let results = suite
        .message(user("A"))
        .send_messages(request)
        .await
        .expect("batch")
        .into_inner()
        .results;
    let summary: Vec<(i32, u64, bool)> = results
        .iter()
        .map(|r| (r.code, r.message.as_ref().map_or(0, |m| m.seq), r.duplicate))
        .collect();
    let invalid = tonic::Code::InvalidArgument as i32;
    assert_eq!(
        summary,
        vec![
            (0, 1, false),
            (invalid, 0, false),
            (0, 2, false),
            (0, 1, true),
            (invalid, 0, false)
        ],
        "in order; refusals and the repeat take no seq"
    );
    let mut others = Vec::new();
    let got = reader.messages(2, &mut others).await;
    assert_eq!(seqs(&got, gid), vec![1, 2]);
    let stranger = parley_proto::message::SendMessagesRequest {
        gid,
        messages: vec![item("s1", gid)],
    };
    let refused = suite
        .message(user("stranger"))
        .send_messages(stranger)
        .await;
    assert_eq!(
        refused.expect_err("not a member").code(),
        tonic::Code::PermissionDenied
    );
    suite.stop().await;
}
