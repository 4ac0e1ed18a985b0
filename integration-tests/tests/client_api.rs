//! The client API on the gateway: calls made on a device's own stream, as
//! its user, answered by a result frame with the call's request id. On
//! MariaDB with Redis and on the embedded default, each over the gRPC stream
//! and over WebSocket.

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
    device::{Device, Transport},
    support::{
        Backend, Suite, ack_read, add_members, create_group, on_both_backends_and_transports,
        send_direct, user, wait_for_devices, wait_for_position, wait_for_receipts,
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

async fn a_member_lists_their_groups_with_unread_counts_and_the_members(
    backend: Backend,
    transport: Transport,
) {
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
    let mut device = Device::connect_over(transport, &suite, 0, "uid1", "phone").await;

    let listed = call(
        &mut device,
        1,
        Some(Call::ListGroups(pb::ListGroupsCall::default())),
    )
    .await;
    assert_eq!((listed.code, listed.error.as_str()), (0, ""));
    let Some(Returned::Groups(mut page)) = listed.result else {
        panic!("a groups page: {listed:?}");
    };
    let last = page.groups.first_mut().and_then(|g| g.last_message.take());
    let last = last.expect("the group's latest message");
    assert_eq!(
        (last.gid, last.seq, last.sender_uid.as_str()),
        (gid, 3, "A")
    );
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
            last_message: None,
            receipt_policy: pb::ReceiptPolicy::Full.into(),
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

/// The groups page of a list_groups result.
fn groups(result: pb::ResultFrame) -> Vec<pb::GroupSummary> {
    match result.result {
        Some(Returned::Groups(page)) => page.groups,
        _ => panic!("a groups page: {result:?}"),
    }
}

/// The uids of a members_changed result.
fn changed(result: pb::ResultFrame) -> Vec<String> {
    match result.result {
        Some(Returned::MembersChanged(changed)) => changed.uids,
        _ => panic!("a membership change: {result:?}"),
    }
}

fn create(direct: bool, name: &str, members: &[&str]) -> Option<Call> {
    Some(Call::CreateGroup(pb::CreateGroupCall {
        direct,
        name: name.into(),
        member_uids: members.iter().map(|&m| m.to_owned()).collect(),
    }))
}

fn membership(add: bool, gid: u64, uids: &[&str]) -> Option<Call> {
    let uids = uids.iter().map(|&u| u.to_owned()).collect();
    Some(if add {
        Call::AddMembers(pb::AddMembersCall { gid, uids })
    } else {
        Call::RemoveMembers(pb::RemoveMembersCall { gid, uids })
    })
}

fn list_groups() -> Option<Call> {
    Some(Call::ListGroups(pb::ListGroupsCall::default()))
}

/// Asserts that `result` was refused with `code`, returning nothing.
fn refused(result: &pb::ResultFrame, code: Code, reason: &str) {
    assert_eq!(
        Code::from_i32(result.code),
        code,
        "{}: {result:?}",
        result.error
    );
    assert_eq!(result.reason, reason, "{result:?}");
    assert!(!result.error.is_empty(), "says why: {result:?}");
    assert_eq!(result.result, None);
}

/// A user creates a group and a direct chat, adds, removes and leaves, all
/// from their stream; a removed or departed member is refused what only
/// members may do, and a member who is not an admin cannot change members.
async fn a_user_creates_groups_and_changes_their_members(backend: Backend, transport: Transport) {
    let suite = Suite::start(backend).await;
    let mut a = Device::connect_over(transport, &suite, 0, "A", "phone").await;
    let result = call(&mut a, 1, create(false, "Ops", &["uid1"])).await;
    let Some(Returned::Created(created)) = result.result else {
        panic!("a created group: {result:?}");
    };
    let group = created.group.expect("the group");
    assert!(!created.existing);
    assert_eq!(
        (
            group.direct,
            group.name.as_str(),
            group.member_count,
            group.last_seq,
            group.unread
        ),
        (false, "Ops", 2, 0, 0)
    );
    let gid = group.gid;

    let result = call(&mut a, 2, create(true, "", &["uid2"])).await;
    let Some(Returned::Created(direct)) = result.result else {
        panic!("a direct chat: {result:?}");
    };
    let direct_gid = direct.group.as_ref().expect("the chat").gid;
    assert!(!direct.existing);
    let result = call(&mut a, 3, create(true, "", &["uid2"])).await;
    let Some(Returned::Created(again)) = result.result else {
        panic!("the direct chat again: {result:?}");
    };
    assert!(again.existing);
    assert_eq!(
        again.group.map(|g| (g.gid, g.direct)),
        Some((direct_gid, true))
    );

    // Adding skips who is in already.
    let added = changed(call(&mut a, 4, membership(true, gid, &["uid2", "uid1"])).await);
    assert_eq!(added, ["uid2"]);
    let mut uid2 = Device::connect_over(transport, &suite, 0, "uid2", "phone").await;
    let listed: Vec<(u64, bool)> = groups(call(&mut uid2, 1, list_groups()).await)
        .iter()
        .map(|g| (g.gid, g.direct))
        .collect();
    assert_eq!(listed, [(gid, false), (direct_gid, true)]);
    // Only admins change members; a direct chat's members are fixed.
    refused(
        &call(&mut uid2, 2, membership(true, gid, &["uid3"])).await,
        Code::PermissionDenied,
        "NOT_AN_ADMIN",
    );
    refused(
        &call(&mut uid2, 3, membership(false, gid, &["uid1"])).await,
        Code::PermissionDenied,
        "NOT_AN_ADMIN",
    );
    refused(
        &call(&mut a, 5, membership(true, direct_gid, &["uid3"])).await,
        Code::FailedPrecondition,
        "DIRECT_CONVERSATION",
    );

    // A removed member, and one who left, may no longer read the group.
    let mut uid1 = Device::connect_over(transport, &suite, 0, "uid1", "phone").await;
    assert_eq!(
        changed(call(&mut a, 6, membership(false, gid, &["uid1"])).await),
        ["uid1"]
    );
    refused(
        &call(&mut uid1, 1, list_members(gid, 0, "")).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );
    refused(
        &call(&mut uid1, 2, history(gid, 5, 0)).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );
    let left = call(&mut uid2, 4, Some(Call::Leave(pb::LeaveCall { gid }))).await;
    assert_eq!(changed(left), ["uid2"]);
    refused(
        &call(&mut uid2, 5, list_members(gid, 0, "")).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );
    let listed: Vec<u64> = groups(call(&mut uid2, 6, list_groups()).await)
        .iter()
        .map(|g| g.gid)
        .collect();
    assert_eq!(listed, [direct_gid]);
    let members = call(&mut a, 7, list_members(gid, 0, "")).await;
    let Some(Returned::Members(members)) = members.result else {
        panic!("a members page: {members:?}");
    };
    let uids: Vec<&str> = members.members.iter().map(|m| m.uid.as_str()).collect();
    assert_eq!(uids, ["A"]);
    suite.stop().await;
}

fn register_push(platform: pb::PushPlatform, token: &str) -> Option<Call> {
    Some(Call::RegisterPush(pb::RegisterPushCall {
        platform: platform.into(),
        token: token.into(),
        app_id: String::new(),
        locale: "en-GB".into(),
    }))
}

fn mute(gid: u64, until_ms: i64) -> Option<Call> {
    Some(Call::Mute(pb::MuteCall { gid, until_ms }))
}

fn push_changed(result: pb::ResultFrame) -> bool {
    match result.result {
        Some(Returned::Push(push)) => push.changed,
        _ => panic!("a push registration: {result:?}"),
    }
}

/// A device registers its own push token and mutes a group from its stream:
/// once offline, it is pushed for the loud group and not the muted one; it
/// can replace and remove its token, and bad tokens are refused.
async fn a_device_registers_its_push_token_and_mutes_a_group(
    backend: Backend,
    transport: Transport,
) {
    let suite = Suite::start(backend).await;
    let loud = create_group(&suite, "A", "Loud", &["uid1"]).await;
    let quiet = create_group(&suite, "A", "Quiet", &["uid1"]).await;
    let token = format!("uid1-phone:{}", "APA91b-x_".repeat(6));
    let mut phone = Device::connect_over(transport, &suite, 0, "uid1", "phone").await;
    refused(
        &call(
            &mut phone,
            1,
            register_push(pb::PushPlatform::Unspecified, &token),
        )
        .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    refused(
        &call(&mut phone, 2, register_push(pb::PushPlatform::Fcm, "short")).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert!(!push_changed(
        call(&mut phone, 3, register_push(pb::PushPlatform::Fcm, &token)).await
    ));
    assert!(push_changed(
        call(&mut phone, 4, register_push(pb::PushPlatform::Fcm, &token)).await
    ));
    let db = suite.notification_db().await;
    let devices: Vec<(String, String)> = db
        .devices("uid1")
        .await
        .into_iter()
        .map(|d| (d.device_id, d.token))
        .collect();
    assert_eq!(devices, [("phone".to_owned(), token.clone())]);

    let muted = call(&mut phone, 5, mute(quiet, -1)).await;
    assert_eq!(
        muted.result,
        Some(Returned::Muted(pb::Muted { until_ms: -1 }))
    );
    refused(
        &call(&mut phone, 6, mute(0, -1)).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    let outsiders = create_group(&suite, "A", "Elsewhere", &["uid2"]).await;
    refused(
        &call(&mut phone, 7, mute(outsiders, -1)).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );

    drop(phone);
    wait_for_devices(&suite, &[("uid1", 0)]).await;
    send_direct(&suite, "A", quiet, "q1", 8).await;
    send_direct(&suite, "A", loud, "l1", 8).await;
    let gid_of = |send: &parley_testkit::fcm::Recorded| {
        send.body["message"]["data"]["gid"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    parley_testkit::eventually("the push for Loud", Duration::from_secs(30), || async {
        let sends = suite.fcm.sends_to(&token);
        sends
            .iter()
            .any(|s| gid_of(s) == loud.to_string())
            .then_some(())
    })
    .await;
    parley_testkit::eventually(
        "uid1's push queue to drain",
        Duration::from_secs(30),
        || async { db.queued_for("uid1").await.is_empty().then_some(()) },
    )
    .await;
    let pushed: Vec<String> = suite.fcm.sends_to(&token).iter().map(gid_of).collect();
    assert_eq!(pushed, [loud.to_string()], "nothing for the muted group");

    let mut phone = Device::connect_over(transport, &suite, 0, "uid1", "phone").await;
    let unregister = Some(Call::UnregisterPush(pb::UnregisterPushCall {}));
    assert!(push_changed(call(&mut phone, 1, unregister.clone()).await));
    assert!(!push_changed(call(&mut phone, 2, unregister).await));
    assert!(db.devices("uid1").await.is_empty());
    suite.stop().await;
}

/// Reading on the phone moves the laptop's read position live: it gets a
/// read sync frame, and its group list's unread count drops with it. A
/// delivered ack moves no read position, and another user hears nothing.
async fn reading_on_one_device_moves_the_others_read_position(
    backend: Backend,
    transport: Transport,
) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1", "uid2"]).await;
    let mut phone = Device::connect_over(transport, &suite, 0, "uid1", "phone").await;
    let mut laptop = Device::connect_over(transport, &suite, 0, "uid1", "laptop").await;
    let mut other = Device::connect_over(transport, &suite, 0, "uid2", "phone").await;
    for i in 1..=3 {
        send_direct(&suite, "A", gid, &format!("m{i}"), 8).await;
    }
    let mut others = Vec::new();
    for device in [&mut phone, &mut laptop, &mut other] {
        let got = device.messages(3, &mut others).await;
        assert_eq!(got.len(), 3);
    }
    let unread = |result: pb::ResultFrame| groups(result).first().map(|g| (g.unread, g.read_seq));
    assert_eq!(
        unread(call(&mut laptop, 1, list_groups()).await),
        Some((3, 0))
    );

    phone.ack(gid, 3, false).await;
    phone.ack(gid, 2, true).await;
    let sync = loop {
        match laptop.frame().await {
            Out::ReadSync(sync) => break sync,
            Out::Closing(closing) => panic!("closed: {}", closing.reason),
            _ => {}
        }
    };
    assert_eq!(sync.groups, [pb::ReadPosition { gid, read_seq: 2 }]);
    assert_eq!(
        unread(call(&mut laptop, 2, list_groups()).await),
        Some((1, 2))
    );
    // The phone hears of its own read too; uid2 of none.
    let own = loop {
        if let Out::ReadSync(sync) = phone.frame().await {
            break sync;
        }
    };
    assert_eq!(own.groups, sync.groups);
    let (before, _) = other.drain(vec![]).await;
    assert!(
        !before.iter().any(|frame| matches!(frame, Out::ReadSync(_))),
        "{before:?}"
    );
    suite.stop().await;
}

/// The typing notices `device` gets until the message `marker` arrives.
async fn typing_until(device: &mut Device, marker: u64) -> Vec<pb::TypingNoticeFrame> {
    let mut notices = Vec::new();
    loop {
        match device.frame().await {
            Out::Typing(notice) => notices.push(notice),
            Out::Message(message) if message.msgid == marker => return notices,
            Out::Closing(closing) => panic!("closed: {}", closing.reason),
            _ => {}
        }
    }
}

fn typing(gid: u64) -> In {
    In::Typing(pb::TypingFrame { gid })
}

/// Typing reaches the group's other members online, not the typist's own
/// devices and not from someone outside the group; a flood is cut to the
/// stream's allowance.
async fn typing_reaches_the_other_members_online_within_an_allowance(
    backend: Backend,
    transport: Transport,
) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1", "uid2"]).await;
    let mut a = Device::connect_over(transport, &suite, 0, "A", "phone").await;
    let phone = Device::connect_over(transport, &suite, 0, "uid1", "phone").await;
    let mut laptop = Device::connect_over(transport, &suite, 0, "uid1", "laptop").await;
    let mut uid2 = Device::connect_over(transport, &suite, 0, "uid2", "phone").await;
    let outsider = Device::connect_over(transport, &suite, 0, "B", "phone").await;
    for device in [&mut a, &mut laptop, &mut uid2] {
        device.drain(vec![]).await;
    }

    outsider.send_frame(typing(gid)).await;
    phone.send_frame(typing(gid)).await;
    let notice = pb::TypingNoticeFrame {
        gid,
        uid: "uid1".into(),
    };
    for device in [&mut a, &mut uid2] {
        let got = loop {
            if let Out::Typing(notice) = device.frame().await {
                break notice;
            }
        };
        assert_eq!(got, notice, "only uid1 is typing: B is no member");
    }
    let marker = send_direct(&suite, "A", gid, "marker", 8).await.msgid;
    assert_eq!(
        typing_until(&mut laptop, marker).await,
        [],
        "not to the typist's own devices"
    );

    // A flood: five in a row, then one a second.
    for _ in 0..30 {
        uid2.send_frame(typing(gid)).await;
    }
    let is_uid2 = |frame: &Out| matches!(frame, Out::Typing(n) if n.uid == "uid2");
    while !is_uid2(&a.frame().await) {}
    // Then whatever else comes until a second passes with nothing.
    let mut flood = 1;
    while let Some(frame) = a.try_frame(Duration::from_secs(1)).await {
        flood += usize::from(is_uid2(&frame));
    }
    assert!((1..=8).contains(&flood), "{flood} of 30 typing frames told");
    suite.stop().await;
}

fn receipt_policy(gid: u64, policy: pb::ReceiptPolicy) -> Option<Call> {
    Some(Call::ReceiptPolicy(pb::ReceiptPolicyCall {
        gid,
        policy: policy.into(),
    }))
}

/// A group's receipt policy holds from its next message on, and each message
/// keeps the one it was sent under: FULL shows counts and who read, COUNTS
/// counts only, OFF nothing, on every path (receipts, lists, heartbeat
/// replies, digests, the pull at login). Only admins change it.
async fn each_message_keeps_the_receipt_policy_it_was_sent_under(
    backend: Backend,
    transport: Transport,
) {
    use pb::ReceiptPolicy::{Counts, Off};
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1", "uid2"]).await;
    let mut a = Device::connect_over(transport, &suite, 0, "A", "phone").await;
    let mut uid1 = Device::connect_over(transport, &suite, 0, "uid1", "phone").await;
    let full = send_direct(&suite, "A", gid, "full", 8).await;
    refused(
        &call(&mut uid1, 1, receipt_policy(gid, Off)).await,
        Code::PermissionDenied,
        "NOT_AN_ADMIN",
    );
    refused(
        &call(
            &mut a,
            1,
            receipt_policy(gid, pb::ReceiptPolicy::Unspecified),
        )
        .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    let set = call(&mut a, 2, receipt_policy(gid, Off)).await;
    assert_eq!(
        set.result,
        Some(Returned::ReceiptPolicy(pb::ReceiptPolicySet {
            policy: Off.into(),
            from_seq: 2
        }))
    );
    let off = send_direct(&suite, "A", gid, "off", 8).await;
    call(&mut a, 3, receipt_policy(gid, Counts)).await;
    let counts = send_direct(&suite, "A", gid, "counts", 8).await;
    let msgids = vec![full.msgid, off.msgid, counts.msgid];
    wait_for_receipts(&suite, gid, msgids.clone(), 0).await;
    let listed = groups(call(&mut uid1, 2, list_groups()).await);
    assert_eq!(listed[0].receipt_policy, i32::from(Counts));
    for reader in ["uid1", "uid2"] {
        ack_read(&suite, reader, gid, 3).await;
    }

    // Receipts: counts and lists, counts only, nothing.
    let got = receipts_once(&suite, "A", gid, &msgids, |r| r[0].read_count == 2).await;
    let shape =
        |r: &rpb::MessageReceipt| (r.policy, r.read_count, r.recipient_count, r.read_uids.len());
    assert_eq!(
        got.iter().map(shape).collect::<Vec<_>>(),
        [(1, 2, 2, 2), (3, 0, 0, 0), (2, 2, 2, 0)]
    );
    let (read, _) = match call(&mut a, 4, readers(gid, full.msgid, true, 0, ""))
        .await
        .result
    {
        Some(Returned::Readers(page)) => (page.uids, page.next_page_token),
        other => panic!("a readers page: {other:?}"),
    };
    assert_eq!(read, ["uid1", "uid2"]);
    for (msgid, reason) in [
        (off.msgid, "RECEIPTS_OFF"),
        (counts.msgid, "RECEIPTS_COUNTS_ONLY"),
    ] {
        refused(
            &call(&mut a, 5, readers(gid, msgid, true, 0, "")).await,
            Code::FailedPrecondition,
            reason,
        );
    }

    // The heartbeat's watch reports the counted ones only.
    let (_, reply) = a.drain(msgids.clone()).await;
    let mut reported: Vec<u64> = reply.receipt_changes.iter().map(|e| e.msgid).collect();
    reported.sort_unstable();
    assert_eq!(reported, [full.msgid, counts.msgid]);
    // A's next login pulls the changes of the counted ones only.
    drop(a);
    let mut again = Device::connect_over(transport, &suite, 0, "A", "laptop").await;
    let (before, _) = again.drain(vec![]).await;
    let mut pulled: Vec<u64> = before
        .iter()
        .filter_map(|frame| match frame {
            Out::ReceiptDigest(digest) => Some(digest.entries.iter().map(|e| e.msgid)),
            _ => None,
        })
        .flatten()
        .collect();
    pulled.sort_unstable();
    pulled.dedup();
    assert_eq!(pulled, [full.msgid, counts.msgid]);
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
async fn history_pages_back_to_the_member_s_join(backend: Backend, transport: Transport) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1"]).await;
    for i in 1..=7 {
        send_direct(&suite, "A", gid, &format!("m{i}"), 8).await;
    }
    add_members(&suite, "A", gid, &["uid2"]).await;
    for i in 8..=10 {
        send_direct(&suite, "A", gid, &format!("m{i}"), 8).await;
    }
    let mut uid1 = Device::connect_over(transport, &suite, 0, "uid1", "phone").await;
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

    let mut uid2 = Device::connect_over(transport, &suite, 0, "uid2", "phone").await;
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

/// The read times of a readers page.
fn read_times(result: pb::ResultFrame) -> Vec<pb::ReaderTime> {
    match result.result {
        Some(Returned::Readers(page)) => {
            let uids: Vec<&str> = page.read_times.iter().map(|t| t.uid.as_str()).collect();
            assert_eq!(uids, page.uids, "one time per reader, in order");
            page.read_times
        }
        _ => panic!("a readers page: {result:?}"),
    }
}

/// The sender sees who read the message and who has not, page by page, with
/// when each read it; no one else sees them.
async fn the_sender_lists_who_read_and_who_has_not(backend: Backend, transport: Transport) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1", "uid2", "uid3"]).await;
    let sent = send_direct(&suite, "A", gid, "m1", 8).await;
    wait_for_receipts(&suite, gid, vec![sent.msgid], 0).await;
    let mut acked_between = Vec::new();
    for reader in ["uid1", "uid3"] {
        let before = parley_server::now_ms();
        ack_read(&suite, reader, gid, 1).await;
        acked_between.push((before, parley_server::now_ms()));
    }
    let mut a = Device::connect_over(transport, &suite, 0, "A", "phone").await;
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

    // When each read it: exact for a message that asked for receipts in a
    // small group, each within its ack's window, in the order they read.
    let times = read_times(call(&mut a, 5, readers(gid, sent.msgid, true, 0, "")).await);
    assert_eq!(times.len(), 2, "{times:?}");
    for ((time, uid), (before, after)) in times.iter().zip(["uid1", "uid3"]).zip(&acked_between) {
        assert_eq!((time.uid.as_str(), time.exact), (uid, true));
        assert!(
            (*before..=*after).contains(&time.read_at_ms),
            "{time:?} not in {before}..={after}"
        );
    }
    assert!(times[0].read_at_ms <= times[1].read_at_ms);
    // A message that did not ask for receipts keeps no read times: the time
    // says the reader had read it by then.
    let quiet = parley_proto::message::SendMessageRequest {
        gid,
        client_msg_id: "quiet".into(),
        content: b"no receipts asked".to_vec(),
        need_receipt: false,
    };
    let quiet = suite
        .message(user("A"))
        .send_message(quiet)
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message");
    wait_for_receipts(&suite, gid, vec![quiet.msgid], 0).await;
    let before = parley_server::now_ms();
    ack_read(&suite, "uid1", gid, quiet.seq).await;
    let after = parley_server::now_ms();
    let times = read_times(call(&mut a, 6, readers(gid, quiet.msgid, true, 0, "")).await);
    assert_eq!(times.len(), 1, "only uid1 read it: {times:?}");
    assert_eq!((times[0].uid.as_str(), times[0].exact), ("uid1", false));
    assert!((before..=after).contains(&times[0].read_at_ms), "{times:?}");
    let (unread, _) = uids(call(&mut a, 7, readers(gid, quiet.msgid, false, 0, "")).await);
    assert_eq!(unread, ["uid2", "uid3"]);

    // Someone else's message: a reader does not see the other readers.
    let mut uid2 = Device::connect_over(transport, &suite, 0, "uid2", "phone").await;
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

async fn bad_calls_are_refused_with_their_code_and_the_stream_stays_open(
    backend: Backend,
    transport: Transport,
) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1"]).await;
    let mut outsider = Device::connect_over(transport, &suite, 0, "B", "phone").await;
    let refusals = [
        (
            list_members(gid, 0, ""),
            Code::PermissionDenied,
            "NOT_A_MEMBER",
        ),
        (
            list_members(0, 0, ""),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            list_members(gid, 5000, ""),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            list_members(gid, 0, "not a token"),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            Some(Call::ListGroups(pb::ListGroupsCall {
                page_size: 5000,
                page_token: String::new(),
            })),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (history(gid, 5, 0), Code::PermissionDenied, "NOT_A_MEMBER"),
        (history(gid, 0, 0), Code::InvalidArgument, "INVALID_FIELD"),
        (history(gid, 5, 501), Code::InvalidArgument, "INVALID_FIELD"),
        (history(0, 5, 0), Code::InvalidArgument, "INVALID_FIELD"),
        (
            readers(gid, 0, true, 0, ""),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            readers(gid, 1, true, 0, "not a token"),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            membership(true, 0, &["uid2"]),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            membership(true, gid, &[]),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            membership(false, gid, &["bad uid"]),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            membership(true, gid, &["uid2"]),
            Code::PermissionDenied,
            "NOT_A_MEMBER",
        ),
        (
            membership(true, 1 << 40, &["uid2"]),
            Code::NotFound,
            "GROUP_NOT_FOUND",
        ),
        (
            create(true, "", &[]),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            create(true, "", &["uid1", "uid2"]),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            create(false, &"n".repeat(129), &[]),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (
            Some(Call::Leave(pb::LeaveCall { gid: 0 })),
            Code::InvalidArgument,
            "INVALID_FIELD",
        ),
        (mute(0, -1), Code::InvalidArgument, "INVALID_FIELD"),
        (None, Code::InvalidArgument, "INVALID_FIELD"),
    ];
    for (request_id, (made, code, reason)) in (1..).zip(refusals) {
        let result = call(&mut outsider, request_id, made.clone()).await;
        assert_eq!(
            Code::from_i32(result.code),
            code,
            "{made:?}: {}",
            result.error
        );
        assert_eq!(result.reason, reason, "{made:?}: {}", result.error);
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

fn set_privacy(gid: u64, privacy: pb::ReceiptPrivacy) -> Option<Call> {
    Some(Call::SetReceiptPrivacy(pb::SetReceiptPrivacyCall {
        gid,
        privacy: privacy.into(),
    }))
}

fn privacy_state(result: pb::ResultFrame) -> pb::ReceiptPrivacyState {
    match result.result {
        Some(Returned::ReceiptPrivacy(state)) => state,
        _ => panic!("a receipt privacy: {result:?}"),
    }
}

/// A's receipts of `msgids` once `holds` says they are settled.
async fn receipts_once(
    suite: &Suite,
    viewer: &str,
    gid: u64,
    msgids: &[u64],
    holds: impl Fn(&[rpb::MessageReceipt]) -> bool,
) -> Vec<rpb::MessageReceipt> {
    let client = suite.receipt(user(viewer));
    let holds = &holds;
    parley_testkit::eventually("the receipts to settle", Duration::from_secs(30), || {
        let mut client = client.clone();
        let request = rpb::GetReceiptsRequest {
            gid,
            msgids: msgids.to_vec(),
            list_page_size: 500,
        };
        async move {
            let got = client
                .get_receipts(request)
                .await
                .ok()?
                .into_inner()
                .receipts;
            holds(&got).then_some(got)
        }
    })
    .await
}

/// A member who hides their reads in a group of `size` still reads: a push
/// reaches them while away and their unread count follows their reads. But
/// they are counted in no one's receipts (the sender sees them as not yet
/// read, in the counts, the lists, the heartbeat and the digests), and they
/// see no one's reads: their own message shows them nothing, its lists are
/// refused, and neither the heartbeat nor the pull at login reports a read.
/// A group of 1,000 answers from the cursors (past the ledger's 200).
async fn a_private_member_reads_unseen_and_sees_no_reads(
    backend: Backend,
    transport: Transport,
    size: usize,
) {
    use pb::ReceiptPrivacy::{Private, Shared, Unspecified};
    let suite = Suite::start(backend).await;
    let others: Vec<String> = (3..size).map(|i| format!("m{i:04}")).collect();
    let mut members = vec!["P", "R"];
    members.extend(others.iter().map(String::as_str));
    let gid = create_group(&suite, "A", "Quiet readers", &members).await;
    let recipients = u32::try_from(size - 1).expect("small");
    let token = format!("p-phone:{}", "APA91b-x_".repeat(6));
    let mut p = Device::connect_over(transport, &suite, 0, "P", "phone").await;
    wait_for_position(&suite, "P", gid, "P's membership", |_| true).await;
    let hidden = pb::ReceiptPrivacyState {
        every_group: Shared.into(),
        group: Private.into(),
        private: true,
    };
    assert_eq!(
        privacy_state(call(&mut p, 1, set_privacy(gid, Private)).await),
        hidden
    );
    let asked = Some(Call::GetReceiptPrivacy(pb::GetReceiptPrivacyCall { gid }));
    assert_eq!(privacy_state(call(&mut p, 2, asked).await), hidden);
    refused(
        &call(&mut p, 3, set_privacy(gid + 1_000, Private)).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );
    refused(
        &call(&mut p, 4, set_privacy(0, Unspecified)).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    call(&mut p, 5, register_push(pb::PushPlatform::Fcm, &token)).await;

    // Away, P gets a push for m1; back, P and R read it.
    drop(p);
    wait_for_devices(&suite, &[("P", 0)]).await;
    let m1 = send_direct(&suite, "A", gid, "m1", 8).await;
    parley_testkit::eventually("P's push", Duration::from_secs(30), || async {
        (!suite.fcm.sends_to(&token).is_empty()).then_some(())
    })
    .await;
    let mut p = Device::connect_over(transport, &suite, 0, "P", "phone").await;
    let mut a = Device::connect_over(transport, &suite, 0, "A", "phone").await;
    wait_for_position(&suite, "P", gid, "m1 unread for P", |g| g.unread == 1).await;
    p.ack(gid, 1, true).await;
    wait_for_position(&suite, "P", gid, "P's read", |g| g.unread == 0).await;
    ack_read(&suite, "R", gid, 1).await;

    // A sees R's read and not P's, in the counts and the lists.
    let got = receipts_once(&suite, "A", gid, &[m1.msgid], |r| r[0].read_count >= 1).await;
    assert_eq!((got[0].read_count, got[0].recipient_count), (1, recipients));
    assert_eq!(got[0].read_uids, ["R"]);
    assert!(got[0].unread_uids.contains(&"P".to_owned()));
    assert!(!got[0].viewer_private);
    // ...in A's heartbeat, and in the digest A's next read brings.
    let (_, reply) = a.drain(vec![m1.msgid]).await;
    let counted: Vec<u32> = reply.receipt_changes.iter().map(|e| e.read_count).collect();
    assert!(counted.iter().all(|&k| k == 1), "{counted:?}");

    // P sends m2; R reads it. P sees nothing of R's read.
    let sent = p.send_and_wait(gid, "m2").await;
    let m2 = sent.msgid;
    let mut skipped = Vec::new();
    p.messages(1, &mut skipped).await;
    ack_read(&suite, "R", gid, 2).await;
    receipts_once(&suite, "A", gid, &[m2], |r| r[0].read_count == 1).await;
    let theirs = receipts_once(&suite, "P", gid, &[m2], |_| true).await;
    let shape = |r: &rpb::MessageReceipt| {
        (
            r.read_count,
            r.recipient_count,
            r.read_uids.len(),
            r.unread_uids.len(),
            r.viewer_private,
        )
    };
    assert_eq!(shape(&theirs[0]), (0, 0, 0, 0, true));
    refused(
        &call(&mut p, 6, readers(gid, m2, true, 0, "")).await,
        Code::FailedPrecondition,
        "READS_HIDDEN",
    );
    // A control message: A's m3, read by R, reaches A in a digest; by then
    // any digest of m2 would have gone out too.
    let m3 = send_direct(&suite, "A", gid, "m3", 8).await;
    ack_read(&suite, "R", gid, 3).await;
    let mut seen = Vec::new();
    'digest: loop {
        match a.frame().await {
            Out::ReceiptDigest(digest) if digest.entries.iter().any(|e| e.msgid == m3.msgid) => {
                break 'digest;
            }
            Out::Closing(closing) => panic!("closed: {}", closing.reason),
            other => seen.push(other),
        }
    }
    let (before, reply) = p.drain(vec![m2]).await;
    let digested = |frames: &[Out]| {
        frames.iter().any(|frame| {
            matches!(frame, Out::ReceiptDigest(d) if d.entries.iter().any(|e| e.msgid == m2))
        })
    };
    assert!(!digested(&skipped) && !digested(&before), "{before:?}");
    assert!(reply.receipt_changes.is_empty(), "{reply:?}");
    // Nor does the pull at P's next login report it.
    drop(p);
    let mut again = Device::connect_over(transport, &suite, 0, "P", "laptop").await;
    let (at_login, _) = again.drain(vec![]).await;
    assert!(!digested(&at_login), "{at_login:?}");

    // P shares again: nothing shows until P reads on, then all of it.
    assert!(!privacy_state(call(&mut again, 1, set_privacy(gid, Shared)).await).private);
    let got = receipts_once(&suite, "A", gid, &[m1.msgid], |_| true).await;
    assert_eq!(got[0].read_count, 1, "sharing alone shows nothing");
    again.ack(gid, 3, true).await;
    let got = receipts_once(&suite, "A", gid, &[m1.msgid, m3.msgid], |r| {
        r.iter().all(|r| r.read_count == 2)
    })
    .await;
    assert!(got[0].read_uids.contains(&"P".to_owned()));
    suite.stop().await;
}

async fn a_private_member_of_3_reads_unseen_and_sees_no_reads(
    backend: Backend,
    transport: Transport,
) {
    a_private_member_reads_unseen_and_sees_no_reads(backend, transport, 3).await;
}

async fn a_private_member_of_1000_reads_unseen_and_sees_no_reads(
    backend: Backend,
    transport: Transport,
) {
    a_private_member_reads_unseen_and_sees_no_reads(backend, transport, 1_000).await;
}

/// A member who leaves and is added back keeps each stay: the sender's
/// answers count them for the messages of each stay as they read them then,
/// and leave them out of the messages of the gap, where N was smaller too.
async fn a_member_who_leaves_and_comes_back_keeps_each_stay(
    backend: Backend,
    transport: Transport,
) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Comings and goings", &["uid1", "uid2"]).await;
    let mut uid1 = Device::connect_over(transport, &suite, 0, "uid1", "phone").await;
    let m1 = send_direct(&suite, "A", gid, "m1", 8).await;
    let m2 = send_direct(&suite, "A", gid, "m2", 8).await;
    let mut others = Vec::new();
    uid1.messages(2, &mut others).await;
    uid1.ack(gid, 1, true).await;
    wait_for_position(&suite, "uid1", gid, "uid1's read", |g| g.read_seq == 1).await;
    let leave = Some(Call::Leave(pb::LeaveCall { gid }));
    call(&mut uid1, 1, leave).await;
    let m3 = send_direct(&suite, "A", gid, "m3", 8).await;
    add_members(&suite, "A", gid, &["uid1"]).await;
    let m4 = send_direct(&suite, "A", gid, "m4", 8).await;
    wait_for_position(&suite, "uid1", gid, "uid1 back", |g| g.last_seq == 4).await;
    let unread = crate::support::unread_in(&suite, "uid1", gid).await;
    assert_eq!(unread[0].unread, 1, "only m4, of the new stay, is unread");
    ack_read(&suite, "uid1", gid, 4).await;

    let msgids = [m1.msgid, m2.msgid, m3.msgid, m4.msgid];
    let got = receipts_once(&suite, "A", gid, &msgids, |r| r[3].read_count == 1).await;
    let shape = |r: &rpb::MessageReceipt| {
        (
            r.read_count,
            r.recipient_count,
            r.read_uids.clone(),
            r.unread_uids.clone(),
        )
    };
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got.iter().map(shape).collect::<Vec<_>>(),
        [
            (1, 2, names(&["uid1"]), names(&["uid2"])),
            (0, 2, names(&[]), names(&["uid1", "uid2"])),
            (0, 1, names(&[]), names(&["uid2"])),
            (1, 2, names(&["uid1"]), names(&["uid2"])),
        ]
    );
    // Each stay's read time is its own.
    let mut a = Device::connect_over(transport, &suite, 0, "A", "phone").await;
    let first = read_times(call(&mut a, 1, readers(gid, m1.msgid, true, 0, "")).await);
    let second = read_times(call(&mut a, 2, readers(gid, m4.msgid, true, 0, "")).await);
    assert_eq!((first.len(), second.len()), (1, 1));
    assert!(first[0].read_at_ms <= second[0].read_at_ms);
    suite.stop().await;
}

on_both_backends_and_transports!(
    a_private_member_of_3_reads_unseen_and_sees_no_reads,
    a_private_member_of_1000_reads_unseen_and_sees_no_reads,
    a_member_who_leaves_and_comes_back_keeps_each_stay,
    each_message_keeps_the_receipt_policy_it_was_sent_under,
    typing_reaches_the_other_members_online_within_an_allowance,
    reading_on_one_device_moves_the_others_read_position,
    a_device_registers_its_push_token_and_mutes_a_group,
    a_user_creates_groups_and_changes_their_members,
    a_member_lists_their_groups_with_unread_counts_and_the_members,
    bad_calls_are_refused_with_their_code_and_the_stream_stays_open,
    history_pages_back_to_the_member_s_join,
    the_sender_lists_who_read_and_who_has_not,
);
