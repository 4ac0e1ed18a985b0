//! The seeds' scenario (seed 002 section 5): A, uid1, uid2 and uid3 in a group;
//! A sends 25 messages that want receipts; uid1 acks read up to 10 then 20,
//! uid2 up to 25, uid3 never acks.

use parley_proto::{message as mpb, receipt as rpb};
use tonic::Code;

use crate::support::{
    Backend, Suite, ack_read, create_group, receipts, unread_in, user, wait_for_receipts,
};

/// Creates the group, sends 25 messages as A, waits for the receipt service to
/// know them, and plays the acks. Returns (gid, msgids by seq - 1).
async fn play(suite: &Suite, members: &[&str]) -> (u64, Vec<u64>) {
    let mut a = suite.message(user("A"));
    let gid = create_group(suite, "A", "Design", members).await;
    let mut msgids = Vec::new();
    for i in 1..=25u64 {
        let request = mpb::SendMessageRequest {
            gid,
            client_msg_id: format!("m-{i}"),
            content: format!("message {i}").into_bytes(),
            need_receipt: true,
        };
        let sent = a.send_message(request).await.expect("send").into_inner();
        let message = sent.message.expect("message");
        assert_eq!((message.seq, sent.duplicate), (i, false));
        msgids.push(message.msgid);
    }
    wait_for_receipts(suite, gid, vec![msgids[24]], 0).await;
    for (uid, up_to) in [("uid1", 10), ("uid1", 20), ("uid2", 25)] {
        let ack = ack_read(suite, uid, gid, up_to).await;
        assert_eq!((ack.read_seq, ack.advanced), (up_to, true));
    }
    (gid, msgids)
}

async fn seed_scenario(backend: Backend) {
    let suite = Suite::start(backend).await;
    let (gid, msgids) = play(&suite, &["uid1", "uid2", "uid3"]).await;

    let got = receipts(&suite, gid, vec![msgids[14], msgids[24]], 10).await;
    assert_eq!(
        (got[0].seq, got[0].read_count, got[0].recipient_count),
        (15, 2, 3)
    );
    assert_eq!(got[0].read_uids, vec!["uid1", "uid2"]);
    assert_eq!(got[0].unread_uids, vec!["uid3"]);
    assert_eq!(got[0].tier(), rpb::ReceiptTier::Ledger);
    assert_eq!((got[1].seq, got[1].read_count), (25, 1));
    assert_eq!(got[1].read_uids, vec!["uid2"]);
    assert_eq!(got[1].unread_uids, vec!["uid1", "uid3"]);

    let unread = unread_in(&suite, "uid3", gid).await;
    assert_eq!(
        unread.iter().map(|g| (g.gid, g.unread)).collect::<Vec<_>>(),
        vec![(gid, 25)]
    );

    // A retried send returns the original and stores nothing new.
    let retry = mpb::SendMessageRequest {
        gid,
        client_msg_id: "m-7".into(),
        content: b"message 7".to_vec(),
        need_receipt: true,
    };
    let again = suite
        .message(user("A"))
        .send_message(retry)
        .await
        .expect("retry")
        .into_inner();
    let original = again.message.expect("message");
    assert!(again.duplicate);
    assert_eq!((original.msgid, original.seq), (msgids[6], 7));
    let sync = mpb::SyncMessagesRequest {
        gid,
        after_seq: 0,
        limit: 100,
    };
    let synced = suite
        .message(user("uid3"))
        .sync_messages(sync)
        .await
        .expect("sync")
        .into_inner();
    assert_eq!((synced.messages.len(), synced.last_seq), (25, 25));
    assert!(synced.messages.windows(2).all(|w| w[1].seq == w[0].seq + 1));

    // An ack that moves backwards changes nothing.
    let ack = ack_read(&suite, "uid1", gid, 5).await;
    assert_eq!((ack.read_seq, ack.advanced), (20, false));
    assert_eq!(
        receipts(&suite, gid, vec![msgids[14]], 10).await[0].read_uids,
        vec!["uid1", "uid2"]
    );

    // A non-member is refused; uid1 may not read A's receipts.
    let stranger = mpb::SendMessageRequest {
        gid,
        client_msg_id: "x".into(),
        content: b"x".to_vec(),
        need_receipt: false,
    };
    let refused = suite
        .message(user("mallory"))
        .send_message(stranger)
        .await
        .expect_err("non-member send");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let sync = mpb::SyncMessagesRequest {
        gid,
        after_seq: 0,
        limit: 10,
    };
    let refused = suite
        .message(user("mallory"))
        .sync_messages(sync)
        .await
        .expect_err("non-member sync");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let peek = rpb::GetReceiptsRequest {
        gid,
        msgids: vec![msgids[14]],
        list_page_size: 10,
    };
    let refused = suite
        .receipt(user("uid1"))
        .get_receipts(peek)
        .await
        .expect_err("uid1 reads A's receipts");
    assert_eq!(refused.code(), Code::PermissionDenied);
    suite.stop().await;
}

#[tokio::test]
async fn seed_scenario_on_mariadb() {
    seed_scenario(Backend::MariaDb).await;
}

#[tokio::test]
async fn seed_scenario_on_sqlite() {
    seed_scenario(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_thousand_member_group_gets_exact_answers_from_the_cursors() {
    let suite = Suite::start(Backend::MariaDb).await;
    let mut members: Vec<String> = vec!["uid1".into(), "uid2".into(), "uid3".into()];
    members.extend((4..=999).map(|i| format!("m{i:04}")));
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    let (gid, msgids) = play(&suite, &names).await;

    let got = receipts(&suite, gid, vec![msgids[14], msgids[24]], 500).await;
    assert_eq!(got[0].tier(), rpb::ReceiptTier::Cursor);
    assert_eq!((got[0].read_count, got[0].recipient_count), (2, 999));
    assert_eq!(got[0].read_uids, vec!["uid1", "uid2"]);
    assert_eq!(got[1].read_uids, vec!["uid2"]);
    assert_eq!(got[0].unread_uids.len(), 500);

    // Page through everyone who has not read seq 15: exactly the other 997.
    let mut unread = got[0].unread_uids.clone();
    let mut token = got[0].unread_next_page_token.clone();
    while !token.is_empty() {
        let request = rpb::ListReceiptMembersRequest {
            gid,
            msgid: msgids[14],
            state: rpb::ReceiptState::Unread.into(),
            page_size: 300,
            page_token: token,
        };
        let page = suite
            .receipt(user("A"))
            .list_receipt_members(request)
            .await
            .expect("page")
            .into_inner();
        unread.extend(page.uids);
        token = page.next_page_token;
    }
    assert_eq!(unread.len(), 997);
    assert!(unread.contains(&"uid3".to_string()) && !unread.contains(&"uid1".to_string()));
    assert!(unread.windows(2).all(|w| w[0] < w[1]));

    assert_eq!(unread_in(&suite, "uid3", gid).await[0].unread, 25);
    suite.stop().await;
}
