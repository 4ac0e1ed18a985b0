//! The authorisation matrix: every user-facing and internal RPC called as each
//! kind of caller (an admin, a member, the message's sender, a removed member,
//! a stranger, no identity at all), each answer's code held against the rule.
//! Two more columns need service credentials: a user claiming a service (no
//! proof) and a service holding another's credential (the gateway's key
//! signing for the message service); both are refused before any handler.
//! No internal RPC takes a JWT: the columns of forged, expired and
//! algorithm-confused JWTs belong to the gateway's stream, whose first frame
//! carries one (`realtime::bad_expired_and_missing_tokens_are_refused`).

use parley_proto::{message as mpb, notification as npb, presence as ppb, receipt as rpb};
use tonic::{Code, Response, Status};

use crate::support::{As, Backend, Suite, create_group, send_direct, user, wait_for_position};

const CALLERS: [&str; 8] = [
    "admin", "member", "sender", "removed", "stranger", "nobody", "claiming", "forged",
];

fn caller(kind: &str) -> As {
    match kind {
        "admin" => user("A"),
        "member" => user("uid1"),
        "sender" => user("S"),
        "removed" => user("R"),
        "stranger" => user("N"),
        "claiming" => As::Claiming("message"),
        "forged" => As::Forged {
            claims: "message",
            signer: "gateway",
        },
        _ => As::Nobody,
    }
}

fn code<T>(result: Result<Response<T>, Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

const OK: Code = Code::Ok;
const DENIED: Code = Code::PermissionDenied;
const NO_ID: Code = Code::Unauthenticated;

#[tokio::test]
async fn every_rpc_answers_each_kind_of_caller_by_the_rule() {
    let suite = Suite::start(Backend::MariaDb).await;
    let gid = create_group(&suite, "A", "Matrix", &["uid1", "S", "R"]).await;
    let leave = mpb::RemoveMembersRequest {
        gid,
        uids: vec!["R".into()],
    };
    suite
        .message(user("R"))
        .remove_members(leave)
        .await
        .expect("R leaves");
    let sent = send_direct(&suite, "S", gid, "m1", 8).await;
    wait_for_position(&suite, "uid1", gid, "m1 recorded", |g| g.last_seq == 1).await;
    let msgid = sent.msgid;

    // Members may read and write; the removed and strangers may not.
    let members_only = [OK, OK, OK, DENIED, DENIED, NO_ID, NO_ID, NO_ID];
    // Receipts are for the message's sender and the group's admins.
    let sender_or_admin = [OK, DENIED, OK, DENIED, DENIED, NO_ID, NO_ID, NO_ID];
    // A user's own view: anyone identified.
    let own = [OK, OK, OK, OK, OK, NO_ID, NO_ID, NO_ID];
    // Internal RPCs: no user at all.
    let internal = [DENIED, DENIED, DENIED, DENIED, DENIED, NO_ID, NO_ID, NO_ID];
    let admins_only = [OK, DENIED, DENIED, DENIED, DENIED, NO_ID, NO_ID, NO_ID];
    let offline = || npb::EnqueueOfflineRequest {
        gid,
        msgid,
        seq: 1,
        sender_uid: "S".into(),
        group_name: "Matrix".into(),
        recipient_uids: vec!["uid1".into()],
        group_size: 4,
    };

    let mut mismatches = Vec::new();
    for (column, kind) in CALLERS.iter().enumerate() {
        let who = caller(kind);
        let mut m = suite.message(who.clone());
        let mut r = suite.receipt(who.clone());
        let mut n = suite.notification(who.clone());
        let mut p = suite.presence_as(who.clone());
        let answers: Vec<(&str, Code, [Code; 8])> = vec![
            (
                "ListMembers",
                code(
                    m.list_members(mpb::ListMembersRequest {
                        gid,
                        page_size: 10,
                        page_token: String::new(),
                    })
                    .await,
                ),
                members_only,
            ),
            (
                "SendMessage",
                code(
                    m.send_message(mpb::SendMessageRequest {
                        gid,
                        client_msg_id: format!("matrix-{kind}"),
                        content: b"hi".to_vec(),
                        need_receipt: true,
                    })
                    .await,
                ),
                members_only,
            ),
            (
                "SyncMessages",
                code(
                    m.sync_messages(mpb::SyncMessagesRequest {
                        gid,
                        after_seq: 0,
                        limit: 10,
                    })
                    .await,
                ),
                members_only,
            ),
            (
                "GetMessages",
                code(
                    m.get_messages(mpb::GetMessagesRequest {
                        gid,
                        msgids: vec![msgid],
                    })
                    .await,
                ),
                members_only,
            ),
            (
                "AddMembers",
                code(
                    m.add_members(mpb::AddMembersRequest {
                        gid,
                        uids: vec!["X".into()],
                    })
                    .await,
                ),
                admins_only,
            ),
            (
                "RemoveMembers",
                code(
                    m.remove_members(mpb::RemoveMembersRequest {
                        gid,
                        uids: vec!["X".into()],
                    })
                    .await,
                ),
                admins_only,
            ),
            (
                "Ack",
                code(
                    r.ack(rpb::AckRequest {
                        gid,
                        up_to_seq: 1,
                        kind: rpb::AckKind::Read.into(),
                    })
                    .await,
                ),
                members_only,
            ),
            (
                "RegisterDevice",
                code(
                    n.register_device(npb::RegisterDeviceRequest {
                        device_id: "phone".into(),
                        platform: npb::Platform::Fcm.into(),
                        token: format!("{}:{}", "A".repeat(22), "b_-9".repeat(30)),
                        app_id: String::new(),
                        locale: "en-GB".into(),
                    })
                    .await,
                ),
                own,
            ),
            (
                "ListGroups",
                code(
                    m.list_groups(mpb::ListGroupsRequest {
                        page_size: 10,
                        page_token: String::new(),
                        with_last_message: false,
                    })
                    .await,
                ),
                own,
            ),
            (
                "GetReceipts",
                code(
                    r.get_receipts(rpb::GetReceiptsRequest {
                        gid,
                        msgids: vec![msgid],
                        list_page_size: 10,
                    })
                    .await,
                ),
                sender_or_admin,
            ),
            (
                "ListReceiptMembers",
                code(
                    r.list_receipt_members(rpb::ListReceiptMembersRequest {
                        gid,
                        msgid,
                        state: rpb::ReceiptState::Unread.into(),
                        page_size: 10,
                        page_token: String::new(),
                    })
                    .await,
                ),
                sender_or_admin,
            ),
            (
                "UnreadCounts",
                code(
                    r.unread_counts(rpb::UnreadCountsRequest {
                        gids: vec![gid],
                        page_size: 0,
                        page_token: String::new(),
                    })
                    .await,
                ),
                own,
            ),
            (
                "PullReceipts",
                code(
                    r.pull_receipts(rpb::PullReceiptsRequest {
                        cursor: String::new(),
                        limit: 10,
                    })
                    .await,
                ),
                own,
            ),
            (
                "SetReceiptPrivacy",
                code(
                    r.set_receipt_privacy(rpb::SetReceiptPrivacyRequest {
                        gid,
                        privacy: rpb::ReceiptPrivacy::Shared.into(),
                    })
                    .await,
                ),
                members_only,
            ),
            (
                "GetReceiptPrivacy",
                code(
                    r.get_receipt_privacy(rpb::GetReceiptPrivacyRequest { gid: 0 })
                        .await,
                ),
                own,
            ),
            (
                "SetMute",
                code(n.set_mute(npb::SetMuteRequest { gid, until_ms: -1 }).await),
                members_only,
            ),
            (
                "InitReceipts",
                code(
                    r.init_receipts(rpb::InitReceiptsRequest {
                        gid,
                        msgid: 999,
                        seq: 99,
                        sender_uid: "A".into(),
                        need_receipt: false,
                        recipient_count: 0,
                        recipient_uids: Vec::new(),
                        created_at_ms: 0,
                        receipt_policy: 0,
                    })
                    .await,
                ),
                internal,
            ),
            (
                "ApplyMembership",
                code(
                    r.apply_membership(rpb::ApplyMembershipRequest {
                        gid,
                        changes: vec![rpb::MembershipChange {
                            uid: "N".into(),
                            admin: true,
                            joined_seq: 0,
                            left_seq: 0,
                            version: u64::MAX,
                            left: false,
                            past_stays: Vec::new(),
                        }],
                    })
                    .await,
                ),
                internal,
            ),
            (
                "AckBatch",
                code(
                    r.ack_batch(rpb::AckBatchRequest {
                        groups: vec![rpb::GroupAcks {
                            gid,
                            acks: vec![rpb::MemberAck {
                                uid: "uid1".into(),
                                up_to_seq: 1,
                                kind: rpb::AckKind::Read.into(),
                            }],
                        }],
                    })
                    .await,
                ),
                internal,
            ),
            (
                "UnreadTotals",
                code(
                    r.unread_totals(rpb::UnreadTotalsRequest {
                        members: vec![rpb::MemberGroup {
                            uid: "uid1".into(),
                            gid,
                        }],
                    })
                    .await,
                ),
                internal,
            ),
            (
                "LastSeqs",
                code(m.last_seqs(mpb::LastSeqsRequest { gids: vec![gid] }).await),
                internal,
            ),
            (
                "EnqueueOffline",
                code(n.enqueue_offline(offline()).await),
                internal,
            ),
            (
                "EnqueueOfflineBatch",
                code(
                    n.enqueue_offline_batch(npb::EnqueueOfflineBatchRequest {
                        messages: vec![offline()],
                    })
                    .await,
                ),
                internal,
            ),
            (
                "BatchGetPresence",
                code(
                    p.batch_get_presence(ppb::BatchGetPresenceRequest {
                        uids: vec!["uid1".into()],
                    })
                    .await,
                ),
                internal,
            ),
            (
                "Online",
                code(
                    p.online(ppb::OnlineRequest {
                        device: Some(ppb::DeviceRef {
                            uid: "uid1".into(),
                            device_id: "fake".into(),
                        }),
                        gateway_id: "gw-fake".into(),
                    })
                    .await,
                ),
                internal,
            ),
            (
                "BatchOffline",
                code(
                    p.batch_offline(ppb::BatchOfflineRequest {
                        devices: vec![ppb::DeviceRef {
                            uid: "uid1".into(),
                            device_id: "fake".into(),
                        }],
                        gateway_id: "gw-fake".into(),
                    })
                    .await,
                ),
                internal,
            ),
        ];
        for (rpc, got, expected) in answers {
            if got != expected[column] {
                mismatches.push(format!(
                    "{rpc} as {kind}: {got:?}, expected {:?}",
                    expected[column]
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "\n{}", mismatches.join("\n"));
    suite.stop().await;
}
