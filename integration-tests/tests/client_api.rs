//! The client API on the gateway: calls made on a device's own stream, as
//! its user, answered by a result frame with the call's request id. Once on
//! MariaDB with Redis, once on the embedded default.

use std::time::Duration;

use parley_proto::{
    gateway::{
        self as pb, connect_request::Frame as In, connect_response::Frame as Out,
        request_frame::Call, result_frame::Result as Returned,
    },
    receipt as rpb,
};
use tonic::Code;

use crate::{
    device::Device,
    support::{
        Backend, Suite, ack_read, add_members, create_group, on_both_backends, send_direct, user,
        wait_for_position, wait_for_receipts,
    },
};

/// Makes `call` on `device`'s stream and waits for its result, skipping
/// other frames.
async fn call(device: &mut Device, request_id: u64, call: Option<Call>) -> pb::ResultFrame {
    device
        .send_frame(In::Request(pb::RequestFrame { request_id, call }))
        .await;
    loop {
        match device.frame().await {
            Out::Result(result) if result.request_id == request_id => return result,
            Out::Closing(closing) => panic!("stream closed: {}", closing.reason),
            _ => {}
        }
    }
}

fn list_members(gid: u64, page_size: u32, page_token: &str) -> Option<Call> {
    Some(Call::ListMembers(pb::ListMembersCall {
        gid,
        page_size,
        page_token: page_token.into(),
    }))
}

async fn a_member_lists_their_groups_with_unread_counts_and_the_members(backend: Backend) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1", "uid2"]).await;
    for id in ["m1", "m2", "m3"] {
        send_direct(&suite, "A", gid, id, 8).await;
    }
    ack_read(&suite, "uid1", gid, 1).await;
    wait_for_position(&suite, "uid1", gid, "uid1's read of seq 1", |g| {
        g.read_seq == 1
    })
    .await;
    let mut device = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;

    let listed = call(
        &mut device,
        1,
        Some(Call::ListGroups(pb::ListGroupsCall::default())),
    )
    .await;
    assert_eq!((listed.code, listed.error.as_str()), (0, ""));
    let Some(Returned::Groups(page)) = listed.result else {
        panic!("a groups page: {listed:?}");
    };
    assert_eq!(
        page.groups,
        vec![pb::GroupSummary {
            gid,
            direct: false,
            name: "Design".into(),
            member_count: 3,
            last_seq: 3,
            unread: 2,
            read_seq: 1,
        }]
    );
    assert!(page.next_page_token.is_empty());

    // Two pages of members, in uid order; the creator is the admin.
    let first = call(&mut device, 2, list_members(gid, 2, "")).await;
    let Some(Returned::Members(first)) = first.result else {
        panic!("a members page: {first:?}");
    };
    let uids: Vec<(&str, bool)> = first
        .members
        .iter()
        .map(|m| (m.uid.as_str(), m.admin))
        .collect();
    assert_eq!(uids, [("A", true), ("uid1", false)]);
    assert!(first.members.iter().all(|m| m.joined_at_ms > 0));
    assert!(!first.next_page_token.is_empty());
    let second = call(&mut device, 3, list_members(gid, 2, &first.next_page_token)).await;
    let Some(Returned::Members(second)) = second.result else {
        panic!("a members page: {second:?}");
    };
    let uids: Vec<&str> = second.members.iter().map(|m| m.uid.as_str()).collect();
    assert_eq!(uids, ["uid2"]);
    assert!(second.next_page_token.is_empty());
    suite.stop().await;
}

fn history(gid: u64, before_seq: u64, limit: u32) -> Option<Call> {
    Some(Call::History(pb::HistoryCall {
        gid,
        before_seq,
        limit,
    }))
}

/// Paging back from the newest message reaches the first one I may see, and
/// stops there: a member who joined later does not see what came before.
async fn history_pages_back_to_the_member_s_join(backend: Backend) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1"]).await;
    for i in 1..=7 {
        send_direct(&suite, "A", gid, &format!("m{i}"), 8).await;
    }
    add_members(&suite, "A", gid, &["uid2"]).await;
    for i in 8..=10 {
        send_direct(&suite, "A", gid, &format!("m{i}"), 8).await;
    }
    let mut uid1 = Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    let mut pages = Vec::new();
    let mut before = 11;
    for request_id in 1.. {
        let result = call(&mut uid1, request_id, history(gid, before, 4)).await;
        let Some(Returned::History(page)) = result.result else {
            panic!("a history page: {result:?}");
        };
        assert_eq!(page.last_seq, 10);
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        let done = seqs.len() < 4;
        before = seqs.first().copied().unwrap_or(0);
        pages.push(seqs);
        if done {
            break;
        }
    }
    assert_eq!(pages, [vec![7, 8, 9, 10], vec![3, 4, 5, 6], vec![1, 2]]);

    let mut uid2 = Device::connect(suite.gateway_addrs[0], "uid2", "phone").await;
    let result = call(&mut uid2, 1, history(gid, 11, 0)).await;
    let Some(Returned::History(page)) = result.result else {
        panic!("a history page: {result:?}");
    };
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [8, 9, 10], "only what came after uid2 joined");
    // A window reaching back before the join starts at it, and still ends
    // before the seq asked for.
    let result = call(&mut uid2, 2, history(gid, 9, 4)).await;
    let Some(Returned::History(page)) = result.result else {
        panic!("a history page: {result:?}");
    };
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [8]);
    suite.stop().await;
}

fn readers(gid: u64, msgid: u64, read: bool, page_size: u32, page_token: &str) -> Option<Call> {
    Some(Call::Readers(pb::ReadersCall {
        gid,
        msgid,
        read,
        page_size,
        page_token: page_token.into(),
    }))
}

/// The sender sees who read the message and who has not, page by page; no
/// one else sees them.
async fn the_sender_lists_who_read_and_who_has_not(backend: Backend) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1", "uid2", "uid3"]).await;
    let sent = send_direct(&suite, "A", gid, "m1", 8).await;
    wait_for_receipts(&suite, gid, vec![sent.msgid], 0).await;
    for reader in ["uid1", "uid3"] {
        ack_read(&suite, reader, gid, 1).await;
    }
    let mut a = Device::connect(suite.gateway_addrs[0], "A", "phone").await;
    let uids = |result: pb::ResultFrame| match result.result {
        Some(Returned::Readers(page)) => (page.uids, page.next_page_token),
        _ => panic!("a readers page: {result:?}"),
    };
    let receipts = suite.receipt(user("A"));
    parley_testkit::eventually("both reads counted", Duration::from_secs(30), || {
        let mut receipts = receipts.clone();
        let request = rpb::ListReceiptMembersRequest {
            gid,
            msgid: sent.msgid,
            state: rpb::ReceiptState::Unread.into(),
            ..Default::default()
        };
        async move {
            let page = receipts.list_receipt_members(request).await.ok()?;
            (page.into_inner().uids == ["uid2"]).then_some(())
        }
    })
    .await;
    let (unread, _) = uids(call(&mut a, 1, readers(gid, sent.msgid, false, 0, "")).await);
    assert_eq!(unread, ["uid2"]);
    let (first, token) = uids(call(&mut a, 2, readers(gid, sent.msgid, true, 1, "")).await);
    assert_eq!(first, ["uid1"]);
    let (second, last) = uids(call(&mut a, 3, readers(gid, sent.msgid, true, 1, &token)).await);
    assert_eq!(second, ["uid3"]);
    // A full page may be the last: the next one is empty and ends the list.
    let (rest, end) = uids(call(&mut a, 4, readers(gid, sent.msgid, true, 1, &last)).await);
    assert!(rest.is_empty() && end.is_empty(), "{rest:?} {end:?}");

    // Someone else's message: a reader does not see the other readers.
    let mut uid2 = Device::connect(suite.gateway_addrs[0], "uid2", "phone").await;
    let refused = call(&mut uid2, 1, readers(gid, sent.msgid, true, 0, "")).await;
    assert_eq!(
        Code::from_i32(refused.code),
        Code::PermissionDenied,
        "{}",
        refused.error
    );
    assert_eq!(refused.result, None);
    suite.stop().await;
}

async fn bad_calls_are_refused_with_their_code_and_the_stream_stays_open(backend: Backend) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1"]).await;
    let mut outsider = Device::connect(suite.gateway_addrs[0], "B", "phone").await;
    let refusals = [
        (list_members(gid, 0, ""), Code::PermissionDenied),
        (list_members(0, 0, ""), Code::InvalidArgument),
        (list_members(gid, 5000, ""), Code::InvalidArgument),
        (list_members(gid, 0, "not a token"), Code::InvalidArgument),
        (
            Some(Call::ListGroups(pb::ListGroupsCall {
                page_size: 5000,
                page_token: String::new(),
            })),
            Code::InvalidArgument,
        ),
        (history(gid, 5, 0), Code::PermissionDenied),
        (history(gid, 0, 0), Code::InvalidArgument),
        (history(gid, 5, 501), Code::InvalidArgument),
        (history(0, 5, 0), Code::InvalidArgument),
        (readers(gid, 0, true, 0, ""), Code::InvalidArgument),
        (
            readers(gid, 1, true, 0, "not a token"),
            Code::InvalidArgument,
        ),
        (None, Code::InvalidArgument),
    ];
    for (request_id, (made, code)) in (1..).zip(refusals) {
        let result = call(&mut outsider, request_id, made.clone()).await;
        assert_eq!(
            Code::from_i32(result.code),
            code,
            "{made:?}: {}",
            result.error
        );
        assert!(!result.error.is_empty(), "{made:?} says why");
        assert_eq!(result.result, None, "{made:?} returns nothing");
    }
    // The outsider's own list is empty, and the stream still works.
    let listed = call(
        &mut outsider,
        99,
        Some(Call::ListGroups(pb::ListGroupsCall::default())),
    )
    .await;
    assert_eq!(
        listed.result,
        Some(Returned::Groups(pb::GroupsPage::default()))
    );
    suite.stop().await;
}

on_both_backends!(
    a_member_lists_their_groups_with_unread_counts_and_the_members,
    bad_calls_are_refused_with_their_code_and_the_stream_stays_open,
    history_pages_back_to_the_member_s_join,
    the_sender_lists_who_read_and_who_has_not,
);
