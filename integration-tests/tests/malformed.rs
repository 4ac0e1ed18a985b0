//! Malformed and unauthorised requests to every RPC get only documented status
//! codes (never INTERNAL or UNKNOWN, never SQL in the message) and change nothing.

use parley_proto::{message as mpb, receipt as rpb};
use parley_server::{
    Reason,
    error::{field_violations, reason},
};
use tonic::{Code, Status};

use crate::support::{As, Backend, Suite, create_group, unread_in, user};

/// A small deterministic generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Clone>(&mut self, options: &[T]) -> T {
        options[(self.next() % options.len() as u64) as usize].clone()
    }
}

const DOCUMENTED: [Code; 6] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::PermissionDenied,
    Code::Unauthenticated,
    Code::FailedPrecondition,
];

fn check<T>(rpc: &str, outcome: Result<T, Status>) -> bool {
    match outcome {
        Ok(_) => true,
        Err(status) => {
            assert!(
                DOCUMENTED.contains(&status.code()),
                "{rpc}: undocumented status {status:?}"
            );
            let text = status.message().to_ascii_lowercase();
            assert!(
                !text.contains("sql") && !text.contains("select") && !text.contains("syntax"),
                "{rpc}: {text}"
            );
            false
        }
    }
}

#[tokio::test]
async fn malformed_requests_to_every_rpc_get_documented_codes_and_change_nothing() {
    let suite = Suite::start(Backend::MariaDb).await;
    let gid = create_group(&suite, "A", "Target", &["uid1"]).await;
    let send = mpb::SendMessageRequest {
        gid,
        client_msg_id: "one".into(),
        content: b"x".to_vec(),
        need_receipt: true,
    };
    let msgid = suite
        .message(user("A"))
        .send_message(send)
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("m")
        .msgid;

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let gids = [0, 1, gid, 999_999, u64::MAX, (i64::MAX as u64) + 1];
    let uids: Vec<String> = vec![
        "".into(),
        " ".into(),
        "x".repeat(65),
        "uid1".into(),
        "ünï".into(),
        "a\nb".into(),
        "mallory".into(),
    ];
    let lists: Vec<Vec<String>> = vec![
        vec![],
        vec!["ok".into()],
        vec!["bad uid".into()],
        vec!["x".into(); 1001],
        uids.clone(),
    ];
    let tokens: Vec<String> = vec![
        "".into(),
        "garbage".into(),
        "p1zz".into(),
        "p1".into(),
        "p1ff".into(),
        "x".repeat(600),
    ];
    let kinds = [0, 1, 2, 3, 99, -1];
    let sizes = [0usize, 1, 65_537];
    let callers = [
        user("mallory"),
        As::Nobody,
        As::Raw("x-parley-uid", "bad uid"),
        As::Raw("x-parley-service", "gateway"),
    ];
    let msgids = [vec![], vec![0], vec![msgid], vec![1; 101], vec![u64::MAX]];

    for _ in 0..60 {
        let mut m = suite.message(rng.pick(&callers));
        let mut r = suite.receipt(rng.pick(&callers));
        let kind = rng.pick(&kinds);
        let g = rng.pick(&gids);
        check(
            "CreateGroup",
            m.create_group(mpb::CreateGroupRequest {
                kind,
                name: rng.pick(&uids),
                member_uids: rng.pick(&lists),
            })
            .await,
        );
        check(
            "AddMembers",
            m.add_members(mpb::AddMembersRequest {
                gid: g,
                uids: rng.pick(&lists),
            })
            .await,
        );
        check(
            "RemoveMembers",
            m.remove_members(mpb::RemoveMembersRequest {
                gid: g,
                uids: rng.pick(&lists),
            })
            .await,
        );
        let page_size = rng.pick(&[0, 1, 1001, u32::MAX]);
        check(
            "ListMembers",
            m.list_members(mpb::ListMembersRequest {
                gid: g,
                page_size,
                page_token: rng.pick(&tokens),
            })
            .await,
        );
        check(
            "ListGroups",
            m.list_groups(mpb::ListGroupsRequest {
                page_size,
                page_token: rng.pick(&tokens),
                with_last_message: false,
            })
            .await,
        );
        let content = vec![b'x'; rng.pick(&sizes)];
        check(
            "SendMessage",
            m.send_message(mpb::SendMessageRequest {
                gid: g,
                client_msg_id: rng.pick(&uids),
                content,
                need_receipt: true,
            })
            .await,
        );
        let after_seq = rng.pick(&[0, 5, u64::MAX]);
        check(
            "SyncMessages",
            m.sync_messages(mpb::SyncMessagesRequest {
                gid: g,
                after_seq,
                limit: page_size,
            })
            .await,
        );
        check(
            "GetMessages",
            m.get_messages(mpb::GetMessagesRequest {
                gid: g,
                msgids: rng.pick(&msgids),
            })
            .await,
        );
        check("Typing", m.typing(mpb::TypingRequest { gid: g }).await);
        check(
            "SetReceiptPolicy",
            m.set_receipt_policy(mpb::SetReceiptPolicyRequest {
                gid: g,
                policy: kind,
            })
            .await,
        );

        let init = rpb::InitReceiptsRequest {
            gid: g,
            msgid: rng.pick(&[0, msgid]),
            seq: rng.pick(&[0, 1, u64::MAX]),
            sender_uid: rng.pick(&uids),
            need_receipt: true,
            recipient_count: 3,
            recipient_uids: rng.pick(&lists),
            created_at_ms: 0,
            receipt_policy: 0,
        };
        let batch = rpb::InitReceiptsBatchRequest {
            messages: vec![init.clone()],
        };
        assert!(
            !check("InitReceipts", r.init_receipts(init).await),
            "only the message service may call InitReceipts"
        );
        assert!(
            !check("InitReceiptsBatch", r.init_receipts_batch(batch).await),
            "only the message service may call InitReceiptsBatch"
        );
        let change = rpb::MembershipChange {
            uid: rng.pick(&uids),
            admin: true,
            joined_seq: 0,
            left_seq: 0,
            version: 1,
            left: false,
            past_stays: (0..rng.pick(&[0, 1, 17]))
                .map(|_| rpb::MemberStay {
                    joined_seq: rng.pick(&[0, 5, u64::MAX]),
                    left_seq: rng.pick(&[0, 3, u64::MAX]),
                })
                .collect(),
        };
        let membership = rpb::ApplyMembershipRequest {
            gid: g,
            changes: vec![change],
        };
        assert!(
            !check("ApplyMembership", r.apply_membership(membership).await),
            "internal RPC refused to others"
        );
        check(
            "Ack",
            r.ack(rpb::AckRequest {
                gid: g,
                up_to_seq: after_seq,
                kind,
            })
            .await,
        );
        check(
            "GetReceipts",
            r.get_receipts(rpb::GetReceiptsRequest {
                gid: g,
                msgids: rng.pick(&msgids),
                list_page_size: page_size,
            })
            .await,
        );
        check(
            "ListReceiptMembers",
            r.list_receipt_members(rpb::ListReceiptMembersRequest {
                gid: g,
                msgid: rng.pick(&[0, msgid]),
                state: kind,
                page_size,
                page_token: rng.pick(&tokens),
            })
            .await,
        );
        check(
            "PullReceipts",
            r.pull_receipts(rpb::PullReceiptsRequest {
                cursor: rng.pick(&tokens),
                limit: page_size,
            })
            .await,
        );
        check(
            "UnreadCounts",
            r.unread_counts(rpb::UnreadCountsRequest {
                gids: rng.pick(&[vec![], vec![0], vec![g], vec![1; 1001]]),
                page_size,
                page_token: rng.pick(&tokens),
            })
            .await,
        );
        check(
            "SetReceiptPrivacy",
            r.set_receipt_privacy(rpb::SetReceiptPrivacyRequest {
                gid: rng.pick(&[0, g]),
                privacy: kind,
            })
            .await,
        );
        check(
            "GetReceiptPrivacy",
            r.get_receipt_privacy(rpb::GetReceiptPrivacyRequest {
                gid: rng.pick(&[0, g]),
            })
            .await,
        );
    }

    // None of it touched the group: still A and uid1, still one message, and
    // uid1's cursor where it was.
    let members = suite
        .message(user("A"))
        .list_members(mpb::ListMembersRequest {
            gid,
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("members")
        .into_inner();
    assert_eq!(
        members
            .members
            .iter()
            .map(|m| m.uid.as_str())
            .collect::<Vec<_>>(),
        vec!["A", "uid1"]
    );
    let sync = mpb::SyncMessagesRequest {
        gid,
        after_seq: 0,
        limit: 10,
    };
    let synced = suite
        .message(user("A"))
        .sync_messages(sync)
        .await
        .expect("sync")
        .into_inner();
    assert_eq!((synced.messages.len(), synced.last_seq), (1, 1));
    let counts = unread_in(&suite, "uid1", gid).await;
    assert!(counts.iter().all(|g| g.read_seq == 0));
    suite.stop().await;
}

/// InitReceipts naming a recipient twice is refused as malformed and writes
/// nothing (it was a unique-key violation, answered INTERNAL).
#[tokio::test]
async fn init_receipts_with_a_recipient_twice_is_refused_and_writes_nothing() {
    let suite = crate::support::Suite::start(crate::support::Backend::MariaDb).await;
    let gid = crate::support::create_group(&suite, "A", "Twice", &["uid1", "uid2"]).await;
    crate::support::wait_for_membership(&suite, "uid1", gid).await;
    let mut outbox = suite.receipt(As::Raw("x-parley-service", "message"));
    let request = parley_proto::receipt::InitReceiptsRequest {
        gid,
        msgid: 77,
        seq: 1,
        sender_uid: "A".into(),
        need_receipt: true,
        recipient_count: 2,
        recipient_uids: vec!["uid1".into(), "uid2".into(), "uid1".into()],
        created_at_ms: 0,
        receipt_policy: 0,
    };
    let refused = outbox.init_receipts(request).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("uid1"), "{}", refused.message());
    assert_eq!(
        crate::support::unread_in(&suite, "uid1", gid).await[0].last_seq,
        0,
        "no message recorded"
    );
    suite.stop().await;
}

/// InitReceiptsBatch takes 1 to 100 messages with at most 20,000 listed
/// recipients, all checked before any is recorded: one malformed message
/// refuses the batch, named by its index, and nothing is written.
#[tokio::test]
async fn init_receipts_batches_are_bounded_and_checked_whole() {
    let suite = crate::support::Suite::start(crate::support::Backend::MariaDb).await;
    let gid = crate::support::create_group(&suite, "A", "Batch", &["uid1", "uid2"]).await;
    crate::support::wait_for_membership(&suite, "uid1", gid).await;
    let mut outbox = suite.receipt(As::Raw("x-parley-service", "message"));
    let message = |seq: u64, recipients: Vec<String>| rpb::InitReceiptsRequest {
        gid,
        msgid: 100 + seq,
        seq,
        sender_uid: "A".into(),
        need_receipt: true,
        recipient_count: 2,
        recipient_uids: recipients,
        created_at_ms: 0,
        receipt_policy: 0,
    };
    let both = || vec!["uid1".to_string(), "uid2".to_string()];
    let batch = |messages| rpb::InitReceiptsBatchRequest { messages };
    let cases = [
        ("no messages", batch(Vec::new()), "1 to 100"),
        (
            "101 messages",
            batch((1..=101).map(|seq| message(seq, both())).collect()),
            "1 to 100",
        ),
        (
            "20,001 recipients",
            batch(
                (1..=5)
                    .map(|seq| {
                        let listed = if seq == 5 { 1 } else { 5000 };
                        message(seq, (0..listed).map(|i| format!("u{i}")).collect())
                    })
                    .collect(),
            ),
            "20000",
        ),
        (
            "a malformed second message",
            batch(vec![
                message(1, both()),
                message(2, vec!["not a uid!".into()]),
            ]),
            "messages[1]",
        ),
    ];
    for (what, request, says) in cases {
        let refused = outbox.init_receipts_batch(request).await.expect_err(what);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{what}");
        assert!(
            refused.message().contains(says),
            "{what}: {}",
            refused.message()
        );
    }
    assert_eq!(
        crate::support::unread_in(&suite, "uid1", gid).await[0].last_seq,
        0,
        "nothing recorded, not even the batch's well-formed first message"
    );
    let recorded = outbox
        .init_receipts_batch(batch(vec![message(1, both()), message(2, both())]))
        .await
        .expect("a well-formed batch")
        .into_inner();
    assert_eq!(recorded.results.len(), 2);
    assert!(recorded.results.iter().all(|r| r.created && r.ledger));
    assert_eq!(
        crate::support::unread_in(&suite, "uid1", gid).await[0].last_seq,
        2
    );
    suite.stop().await;
}

/// A frame past a documented limit ends the stream with a status that says
/// why (it was silently cut, or the stream ended with OK and no reason): an
/// ack frame of 101 entries, none of them applied, and a 5 MiB send frame.
#[tokio::test]
async fn frames_past_the_limits_end_the_stream_with_a_reason() {
    use parley_proto::gateway::{AckEntry, AckFrame, connect_request::Frame as In};
    let suite = Suite::start(Backend::MariaDb).await;
    let gid = create_group(&suite, "A", "Limits", &["uid1"]).await;
    crate::support::send_direct(&suite, "A", gid, "m1", 8).await;
    crate::support::wait_for_position(&suite, "uid1", gid, "m1 recorded", |g| g.last_seq == 1)
        .await;
    let gateway = suite.gateway_addrs[0];

    let mut reader = crate::device::Device::connect(gateway, "uid1", "phone").await;
    let mut entries = vec![AckEntry {
        gid,
        up_to_seq: 1,
        read: true,
    }];
    entries.extend((1..=100).map(|i| AckEntry {
        gid: gid + i,
        up_to_seq: 1,
        read: true,
    }));
    reader.send_frame(In::Ack(AckFrame { entries })).await;
    let refused = reader.end_status().await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("at most 100"), "{refused:?}");
    // The session writes what acks it holds before it goes offline.
    parley_testkit::eventually(
        "the refused stream's device to go offline",
        std::time::Duration::from_secs(30),
        || async {
            crate::support::devices_of(&suite, "uid1")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        unread_in(&suite, "uid1", gid).await[0].read_seq,
        0,
        "no entry applied"
    );

    let mut sender = crate::device::Device::connect(gateway, "A", "laptop").await;
    sender.send(gid, "huge", &vec![b'x'; 5 << 20]).await;
    let refused = sender.end_status().await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("too large"), "{refused:?}");
    suite.stop().await;
}

/// Streams that never authenticate hold nothing a login needs. 1,100 of them
/// (more than the 1,024 requests the guard admits at once, each of which they
/// used to hold for the auth wait) and a real login still gets in; past its
/// share, a connection's next anonymous stream is refused with
/// RESOURCE_EXHAUSTED and a retry hint.
#[tokio::test]
async fn anonymous_streams_hold_nothing_a_login_needs() {
    use parley_proto::gateway::gateway_service_client::GatewayServiceClient;
    const CONNECTIONS: usize = 5;
    const PER_CONNECTION: usize = 220;
    let options = crate::support::Options {
        gateway_flags: &[
            ("max-unauthenticated-per-connection", "220"),
            ("max-unauthenticated-per-address", "2000"),
            ("auth-timeout-ms", "60000"),
        ],
        ..Default::default()
    };
    let suite = Suite::start_with(Backend::MariaDb, options).await;
    let gateway = suite.gateway_addrs[0];
    // A stream that sends nothing: its open resolves only when the gateway
    // answers, which for an admitted stream is after the auth wait.
    let anonymous = |channel: &tonic::transport::Channel| {
        let (tx, rx) = tokio::sync::mpsc::channel::<parley_proto::gateway::ConnectRequest>(1);
        let mut client = GatewayServiceClient::new(channel.clone());
        let open = tokio::spawn(async move {
            client
                .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|_| ())
        });
        (tx, open)
    };
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = crate::device::connection(gateway).await;
        for _ in 0..PER_CONNECTION {
            held.push(anonymous(&channel));
        }
        // Streams are admitted until the connection holds its share; the
        // next is refused at once. An admitted probe waits like the others.
        let mut refused = None;
        for _ in 0..1_000 {
            let (tx, mut probe) = anonymous(&channel);
            match tokio::time::timeout(std::time::Duration::from_millis(500), &mut probe).await {
                Ok(Ok(Err(status))) => {
                    refused = Some(status);
                    break;
                }
                Ok(other) => panic!("an anonymous stream was answered: {other:?}"),
                Err(_waiting) => held.push((tx, probe)),
            }
        }
        let refused = refused.expect("the connection's share fills");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("this connection"), "{refused:?}");
        assert!(parley_server::shed::retry_after(&refused).is_some());
    }
    let waiting = held.iter().filter(|(_, open)| !open.is_finished()).count();
    assert_eq!(
        waiting,
        CONNECTIONS * PER_CONNECTION,
        "each connection holds its share"
    );
    // A real login is not held up by them.
    let device = crate::device::Device::connect(gateway, "uid1", "phone").await;
    drop(device);
    drop(held);
    suite.stop().await;
}

/// Where each device is connected is for Parley's services only: a user
/// reading or watching anyone's presence (their own included) is refused.
#[tokio::test]
async fn users_cannot_read_or_watch_presence() {
    use parley_proto::presence::{BatchGetPresenceRequest, WatchPresenceRequest};
    let suite = Suite::start(Backend::Sqlite).await;
    let _online = crate::device::Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    let mut as_user = suite.presence_as(user("uid2"));
    let read = as_user
        .batch_get_presence(BatchGetPresenceRequest {
            uids: vec!["uid1".into()],
        })
        .await
        .expect_err("a user's read is refused");
    assert_eq!(read.code(), Code::PermissionDenied, "{read:?}");
    let watch = as_user
        .watch_presence(WatchPresenceRequest {
            uids: vec!["uid1".into()],
        })
        .await
        .map(|_| ())
        .expect_err("a user's watch is refused");
    assert_eq!(watch.code(), Code::PermissionDenied, "{watch:?}");
    // A service still sees the device.
    parley_testkit::eventually(
        "a service to see uid1's device",
        std::time::Duration::from_secs(30),
        || async { (crate::support::devices_of(&suite, "uid1").await.len() == 1).then_some(()) },
    )
    .await;
    suite.stop().await;
}

/// A user's streams on one gateway are bounded: past the limit the next is
/// refused with RESOURCE_EXHAUSTED and a retry hint, and other users are not
/// affected.
#[tokio::test]
async fn a_user_s_streams_are_bounded() {
    use crate::device::{Device, auth_frame, open};
    let options = crate::support::Options {
        gateway_flags: &[("max-streams-per-user", "2")],
        ..Default::default()
    };
    let suite = Suite::start_with(Backend::Sqlite, options).await;
    let gateway = suite.gateway_addrs[0];
    let _phone = Device::connect(gateway, "uid1", "phone").await;
    let _laptop = Device::connect(gateway, "uid1", "laptop").await;
    let refused = open(gateway, auth_frame("uid1", "tablet"))
        .await
        .map(|_| ())
        .expect_err("a third stream is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(parley_server::shed::retry_after(&refused).is_some());
    let _other = Device::connect(gateway, "uid2", "phone").await;
    suite.stop().await;
}

/// UnreadTotals (the push sender's badges for a batch) takes 1 to 1,000
/// well-formed pairs, checked whole, and answers each in request order: the
/// unread total over the user's groups, and whether they are in the group.
#[tokio::test]
async fn unread_totals_are_bounded_checked_whole_and_exact() {
    use parley_proto::receipt::{MemberGroup, UnreadTotalsRequest};
    let suite = Suite::start(Backend::MariaDb).await;
    let first = create_group(&suite, "A", "One", &["uid1", "uid2"]).await;
    let second = create_group(&suite, "A", "Two", &["uid1"]).await;
    for (gid, id) in [(first, "o1"), (first, "o2"), (second, "t1")] {
        crate::support::send_direct(&suite, "A", gid, id, 8).await;
    }
    crate::support::wait_for_position(&suite, "uid1", second, "t1 recorded", |g| g.last_seq == 1)
        .await;
    crate::support::wait_for_position(&suite, "uid1", first, "o2 recorded", |g| g.last_seq == 2)
        .await;
    crate::support::ack_read(&suite, "uid1", first, 1).await;
    let pair = |uid: &str, gid: u64| MemberGroup {
        uid: uid.into(),
        gid,
    };
    let mut receipt = suite.receipt(As::Raw("x-parley-service", "notification"));
    for (members, what) in [
        (vec![], "empty"),
        (vec![pair("uid1", first); 1001], "1001"),
        (vec![pair("uid1", first), pair("bad uid", first)], "bad uid"),
        (vec![pair("uid1", 0)], "gid 0"),
    ] {
        let refused = receipt
            .unread_totals(UnreadTotalsRequest { members })
            .await
            .expect_err(what);
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}: {refused:?}");
    }
    let answer = receipt
        .unread_totals(UnreadTotalsRequest {
            members: vec![
                pair("uid1", first),
                pair("uid2", second),
                pair("uid1", second),
            ],
        })
        .await
        .expect("answered")
        .into_inner()
        .members;
    let got: Vec<(&str, u64, bool, u64)> = answer
        .iter()
        .map(|m| (m.uid.as_str(), m.unread_total, m.member, m.read_seq))
        .collect();
    assert_eq!(
        got,
        vec![
            ("uid1", 2, true, 1),
            ("uid2", 2, false, 0),
            ("uid1", 2, true, 0)
        ],
        "uid1: one unread in each group; uid2: two in the first, not in the second"
    );
    suite.stop().await;
}

/// Heartbeats past a stream's allowance (20 in a row, then one a second) are
/// refused in their reply with RESOURCE_EXHAUSTED and a retry hint, and the
/// stream stays open: the next send still goes through.
#[tokio::test]
async fn heartbeats_past_the_allowance_are_refused_in_their_reply() {
    use parley_proto::gateway::{HeartbeatFrame, connect_request::Frame as In};
    let suite = Suite::start(Backend::Sqlite).await;
    let gid = create_group(&suite, "A", "Beats", &["uid1"]).await;
    let mut device = crate::device::Device::connect(suite.gateway_addrs[0], "A", "phone").await;
    // Sent back to back: however slow the machine, 100 frames do not take
    // the 80 s the allowance would need to absorb them.
    for _ in 0..100 {
        device
            .send_frame(In::Heartbeat(HeartbeatFrame::default()))
            .await;
    }
    let mut replies = Vec::new();
    while replies.len() < 100 {
        if let parley_proto::gateway::connect_response::Frame::HeartbeatReply(reply) =
            device.frame().await
        {
            replies.push(reply);
        }
    }
    assert!(
        replies[..20].iter().all(|r| r.code == 0),
        "the first 20 are taken"
    );
    let refused: Vec<_> = replies.iter().filter(|r| r.code != 0).collect();
    assert!(refused.len() >= 20, "{} refused of 100", refused.len());
    for reply in &refused {
        assert_eq!(Code::from(reply.code), Code::ResourceExhausted, "{reply:?}");
        assert!(reply.error.contains("at most 20 in a row"), "{reply:?}");
        assert!(reply.retry_after_ms > 0, "{reply:?}");
        assert!(reply.receipt_changes.is_empty());
    }
    let sent = device.send_and_wait(gid, "still-open").await;
    assert_eq!(sent.code, 0, "{}", sent.error);
    suite.stop().await;
}

/// A heartbeat's watch list is bounded (101 ids end the stream with
/// INVALID_ARGUMENT), and a watched message's read still reaches its sender in
/// a heartbeat reply when the client heartbeats faster than receipts are read.
#[tokio::test]
async fn heartbeat_watches_are_bounded_and_still_report_reads() {
    use parley_proto::gateway::{HeartbeatFrame, connect_request::Frame as In};
    let suite = Suite::start(Backend::Sqlite).await;
    let gid = create_group(&suite, "A", "Watch", &["uid1"]).await;
    let gateway = suite.gateway_addrs[0];
    let mut sender = crate::device::Device::connect(gateway, "A", "phone").await;
    let sent = sender.send_and_wait(gid, "watched").await;
    assert_eq!(sent.code, 0, "{}", sent.error);
    crate::support::wait_for_position(&suite, "uid1", gid, "the message recorded", |g| {
        g.last_seq == 1
    })
    .await;
    crate::support::ack_read(&suite, "uid1", gid, 1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, reply) = sender.drain(vec![sent.msgid]).await;
        if reply
            .receipt_changes
            .iter()
            .any(|c| c.msgid == sent.msgid && c.read_count == 1)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the read never reached a heartbeat reply"
        );
    }
    sender
        .send_frame(In::Heartbeat(HeartbeatFrame {
            watching_msgids: (1..=101).collect(),
        }))
        .await;
    let refused = sender.end_status().await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("at most 100"), "{refused:?}");
    suite.stop().await;
}

/// Frames written as raw bytes: the test's way to send what no well-formed
/// client can (a frame that does not decode).
#[derive(Clone, Copy, Default)]
struct RawFrames;

struct RawEncoder;
struct ReplyDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ReplyDecoder {
    type Item = parley_proto::gateway::ConnectResponse;
    type Error = Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Status> {
        use prost::Message as _;
        Self::Item::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for RawFrames {
    type Encode = Vec<u8>;
    type Decode = parley_proto::gateway::ConnectResponse;
    type Encoder = RawEncoder;
    type Decoder = ReplyDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ReplyDecoder {
        ReplyDecoder
    }
}

/// A frame that does not decode ends the stream with INVALID_ARGUMENT and a
/// reason (it ended with OK and none).
#[tokio::test]
async fn an_undecodable_frame_ends_the_stream_with_invalid_argument() {
    use parley_proto::gateway::{ConnectRequest, connect_request::Frame as In};
    use prost::Message as _;
    let suite = Suite::start(Backend::Sqlite).await;
    let channel = crate::device::connection(suite.gateway_addrs[0]).await;
    let auth = ConnectRequest {
        frame: Some(In::Auth(crate::device::auth_frame("uid1", "phone"))),
    }
    .encode_to_vec();
    // Eleven continuation bytes: a varint that never ends.
    let garbage = vec![0xFF; 11];
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(auth).await.expect("queue auth");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/parley.gateway.v1.GatewayService/Connect",
    );
    let mut replies = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            path,
            RawFrames,
        )
        .await
        .expect("stream accepted")
        .into_inner();
    let first = replies.message().await.expect("auth ok").expect("a frame");
    assert!(
        matches!(
            first.frame,
            Some(parley_proto::gateway::connect_response::Frame::AuthOk(_))
        ),
        "{first:?}"
    );
    tx.send(garbage).await.expect("queue garbage");
    let refused = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), replies.message())
            .await
            .expect("the stream ends in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended with OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(reason(&refused), Some(Reason::InvalidField), "{refused:?}");
    assert_eq!(field_violations(&refused)[0].0, "frame", "{refused:?}");
    assert!(refused.message().contains("undecodable"), "{refused:?}");
    drop(tx);
    suite.stop().await;
}

/// Generated sequences of frames (sends, acks, syncs and heartbeats to real,
/// unknown and zero groups, at any seq, a second auth) on one stream each:
/// the stream stays open, answers its heartbeat, and every result carries a
/// documented code, never INTERNAL or UNKNOWN (client API calls and typing
/// frames included).
#[tokio::test]
async fn any_sequence_of_frames_gets_documented_answers() {
    use parley_proto::gateway::{
        AckEntry, AckFrame, AddMembersCall, CreateGroupCall, HeartbeatFrame, HistoryCall,
        LeaveCall, ListGroupsCall, ListMembersCall, MuteCall, ReadersCall, RequestFrame, SendFrame,
        SyncFrame, TypingFrame, connect_request::Frame as In, connect_response::Frame as Out,
        request_frame::Call,
    };
    use proptest::{prelude::*, strategy::ValueTree, test_runner::TestRunner};
    let suite = Suite::start(Backend::Sqlite).await;
    let gid = create_group(&suite, "A", "Sequences", &["uid1"]).await;
    let group = prop_oneof![Just(gid), Just(0u64), Just(gid + 1_000), any::<u64>()];
    let seq = prop_oneof![Just(0u64), 1u64..5, Just(u64::MAX), any::<u64>()];
    // Client API calls with whatever ids, sizes, tokens and names.
    let call = |group: BoxedStrategy<u64>| {
        let name = prop_oneof![Just(String::new()), Just("uid2".to_owned()), "[ -~]{0,80}"];
        let token = prop_oneof![Just(String::new()), "[ -~]{0,40}"];
        prop_oneof![
            (any::<u32>(), token.clone()).prop_map(|(page_size, page_token)| {
                Call::ListGroups(ListGroupsCall {
                    page_size,
                    page_token,
                })
            }),
            (group.clone(), any::<u32>(), token.clone()).prop_map(
                |(gid, page_size, page_token)| {
                    Call::ListMembers(ListMembersCall {
                        gid,
                        page_size,
                        page_token,
                    })
                }
            ),
            (group.clone(), any::<u64>(), any::<u32>()).prop_map(|(gid, before_seq, limit)| {
                Call::History(HistoryCall {
                    gid,
                    before_seq,
                    limit,
                })
            }),
            (
                group.clone(),
                any::<u64>(),
                any::<bool>(),
                any::<u32>(),
                token
            )
                .prop_map(|(gid, msgid, read, page_size, page_token)| Call::Readers(
                    ReadersCall {
                        gid,
                        msgid,
                        read,
                        page_size,
                        page_token,
                    }
                )),
            (
                any::<bool>(),
                name.clone(),
                proptest::collection::vec(name.clone(), 0..3)
            )
                .prop_map(|(direct, name, member_uids)| Call::CreateGroup(
                    CreateGroupCall {
                        direct,
                        name,
                        member_uids,
                    }
                )),
            (group.clone(), proptest::collection::vec(name, 0..3))
                .prop_map(|(gid, uids)| Call::AddMembers(AddMembersCall { gid, uids })),
            group.clone().prop_map(|gid| Call::Leave(LeaveCall { gid })),
            (group, any::<i64>())
                .prop_map(|(gid, until_ms)| Call::Mute(MuteCall { gid, until_ms })),
        ]
        .prop_map(Some)
    };
    let frame = prop_oneof![
        (
            group.clone(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(gid, request_id, content)| In::Send(SendFrame {
                request_id,
                gid,
                client_msg_id: format!("seq-{request_id}"),
                content,
                need_receipt: true,
            })),
        proptest::collection::vec((group.clone(), seq.clone(), any::<bool>()), 0..4).prop_map(
            |entries| In::Ack(AckFrame {
                entries: entries
                    .into_iter()
                    .map(|(gid, up_to_seq, read)| AckEntry {
                        gid,
                        up_to_seq,
                        read,
                    })
                    .collect(),
            })
        ),
        (group.clone(), seq, any::<u32>()).prop_map(|(gid, after_seq, limit)| In::Sync(
            SyncFrame {
                request_id: 7,
                gid,
                after_seq,
                limit,
            }
        )),
        proptest::collection::vec(any::<u64>(), 0..5)
            .prop_map(|watching_msgids| { In::Heartbeat(HeartbeatFrame { watching_msgids }) }),
        Just(In::Auth(crate::device::auth_frame("uid2", "other"))),
        group
            .clone()
            .prop_map(|gid| In::Typing(TypingFrame { gid })),
        (any::<u64>(), call(group.boxed()))
            .prop_map(|(request_id, call)| In::Request(RequestFrame { request_id, call })),
    ];
    let documented = [
        Code::Ok,
        Code::InvalidArgument,
        Code::NotFound,
        Code::PermissionDenied,
        Code::FailedPrecondition,
        Code::ResourceExhausted,
        Code::Unavailable,
    ];
    let mut runner = TestRunner::deterministic();
    let sequences = proptest::collection::vec(frame, 1..16);
    // Each case is a live stream: 24 in `make test`, one per hundred property
    // cases under `make fuzz` (PROPTEST_CASES=20000 gives 200).
    let cases = (proptest::test_runner::Config::default().cases / 100).max(24);
    for case in 0..cases {
        let frames = sequences
            .new_tree(&mut runner)
            .expect("a generated sequence")
            .current();
        let mut device =
            crate::device::Device::connect(suite.gateway_addrs[0], "uid1", &format!("d{case}"))
                .await;
        for frame in frames.iter().cloned() {
            device.send_frame(frame).await;
        }
        let (answers, _reply) = device.drain(Vec::new()).await;
        for answer in answers {
            let code = match &answer {
                Out::SendResult(result) => Some(result.code),
                Out::SyncResult(result) => Some(result.code),
                Out::Result(result) => Some(result.code),
                Out::Closing(closing) => {
                    panic!("case {case}: closed ({}) after {frames:?}", closing.reason)
                }
                _ => None,
            };
            if let Some(code) = code {
                let code = Code::from(code);
                assert!(
                    documented.contains(&code),
                    "case {case}: {code:?} in {answer:?} after {frames:?}"
                );
            }
        }
    }
    suite.stop().await;
}

/// An ack's cursors as AckBatch answers them: read, delivered, capped.
type Cursors = (u64, u64, bool);

/// AckBatch, the gateway's way of writing acks, takes 1 to 5,000 acks with
/// each group named once, all checked before any is applied: one malformed
/// ack refuses the batch, named by its place, and nothing moves. A
/// well-formed batch answers each group and each ack: an ack past the
/// committed last seq is capped at it, a stranger's is refused alone, and an
/// unknown group is refused without holding up the others.
#[tokio::test]
async fn ack_batches_are_checked_whole_and_answer_each_ack() {
    let suite = Suite::start(Backend::MariaDb).await;
    let gid = create_group(&suite, "A", "Acks", &["uid1", "uid2"]).await;
    for id in ["m1", "m2"] {
        crate::support::send_direct(&suite, "A", gid, id, 8).await;
    }
    crate::support::wait_for_position(&suite, "uid1", gid, "m2 recorded", |g| g.last_seq == 2)
        .await;
    let mut gateway = suite.receipt(As::Raw("x-parley-service", "gateway"));
    let ack = |uid: &str, up_to_seq: u64, kind: rpb::AckKind| rpb::MemberAck {
        uid: uid.into(),
        up_to_seq,
        kind: kind.into(),
    };
    let read = rpb::AckKind::Read;
    let group = |gid: u64, acks: Vec<rpb::MemberAck>| rpb::GroupAcks { gid, acks };
    let batch = |groups| rpb::AckBatchRequest { groups };
    let cases = [
        ("no acks", batch(Vec::new()), "groups"),
        (
            "5,001 acks",
            batch(vec![group(
                gid,
                (0..5001).map(|_| ack("uid1", 1, read)).collect(),
            )]),
            "groups",
        ),
        (
            "a group named twice",
            batch(vec![
                group(gid, vec![ack("uid1", 1, read)]),
                group(gid, vec![ack("uid2", 1, read)]),
            ]),
            "groups[1].gid",
        ),
        (
            "a group with no acks",
            batch(vec![
                group(gid, vec![ack("uid1", 1, read)]),
                group(gid + 1, Vec::new()),
            ]),
            "groups[1].acks",
        ),
        (
            "a malformed uid",
            batch(vec![group(
                gid,
                vec![ack("uid1", 1, read), ack("not a uid!", 1, read)],
            )]),
            "groups[0].acks[1].uid",
        ),
        (
            "no kind",
            batch(vec![group(
                gid,
                vec![ack("uid1", 1, rpb::AckKind::Unspecified)],
            )]),
            "groups[0].acks[0].kind",
        ),
        (
            "seq 0",
            batch(vec![group(gid, vec![ack("uid1", 0, read)])]),
            "groups[0].acks[0].up_to_seq",
        ),
        (
            "gid 0",
            batch(vec![group(0, vec![ack("uid1", 1, read)])]),
            "groups[0].gid",
        ),
    ];
    for (what, request, field) in cases {
        let refused = gateway.ack_batch(request).await.expect_err(what);
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}");
        // The field is named in BadRequest, for code; the message is for people.
        assert_eq!(reason(&refused), Some(Reason::InvalidField), "{what}");
        let named = field_violations(&refused);
        assert_eq!(named.len(), 1, "{what}: {named:?}");
        assert_eq!(named[0].0, field, "{what}: {}", refused.message());
    }
    let position = unread_in(&suite, "uid1", gid).await;
    assert_eq!(position[0].read_seq, 0, "nothing applied");

    let unknown = gid + 1_000_000;
    let answer = gateway
        .ack_batch(batch(vec![
            group(unknown, vec![ack("uid1", 1, read)]),
            group(
                gid,
                vec![
                    ack("uid1", 99, read),
                    ack("N", 1, read),
                    ack("uid2", 1, rpb::AckKind::Delivered),
                ],
            ),
        ]))
        .await
        .expect("a well-formed batch")
        .into_inner();
    let codes: Vec<(u64, Code)> = answer
        .groups
        .iter()
        .map(|g| (g.gid, Code::from(g.code)))
        .collect();
    assert_eq!(codes, vec![(unknown, Code::NotFound), (gid, Code::Ok)]);
    let acks = &answer.groups[1].acks;
    // (code, read seq, delivered seq, capped) of each ack.
    let got: Vec<(Code, Option<Cursors>)> = acks
        .iter()
        .map(|a| {
            let cursors = a
                .cursors
                .as_ref()
                .map(|c| (c.read_seq, c.delivered_seq, c.capped));
            (Code::from(a.code), cursors)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Code::Ok, Some((2, 2, true))),
            (Code::PermissionDenied, None),
            (Code::Ok, Some((0, 1, false))),
        ]
    );
    let position = unread_in(&suite, "uid1", gid).await;
    assert_eq!((position[0].read_seq, position[0].unread), (2, 0));
    let position = unread_in(&suite, "uid2", gid).await;
    assert_eq!((position[0].delivered_seq, position[0].read_seq), (1, 0));
    suite.stop().await;
}

/// LastSeqs, the receipt service's way to bound acks, takes 1 to 1,000 group
/// ids, answers each group that exists with its committed last seq (before
/// the outbox passes it on) and leaves the others out.
#[tokio::test]
async fn last_seqs_are_bounded_and_answer_the_groups_that_exist() {
    let suite = Suite::start(Backend::Sqlite).await;
    let gid = create_group(&suite, "A", "Seqs", &["uid1"]).await;
    crate::support::send_direct(&suite, "A", gid, "m1", 8).await;
    let mut receipt = suite.message(As::Raw("x-parley-service", "receipt"));
    for gids in [Vec::new(), (1..=1001).collect()] {
        let refused = receipt
            .last_seqs(mpb::LastSeqsRequest { gids })
            .await
            .expect_err("out of bounds");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().contains("1 to 1000"),
            "{}",
            refused.message()
        );
    }
    let answer = receipt
        .last_seqs(mpb::LastSeqsRequest {
            gids: vec![gid + 1000, gid],
        })
        .await
        .expect("last seqs")
        .into_inner();
    let got: Vec<(u64, u64)> = answer.groups.iter().map(|g| (g.gid, g.last_seq)).collect();
    assert_eq!(got, vec![(gid, 1)]);
    suite.stop().await;
}
