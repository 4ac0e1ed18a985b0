//! No lost receipt state: sends succeed while the receipt service is down, and
//! every message is recorded once it is back; a group the receipt service cannot
//! record holds up only its own messages.

use parley_proto::{message as mpb, receipt as rpb};

use crate::support::{
    Backend, Suite, ack_read, create_group, receipts, send_direct, unread_in, user,
    wait_for_membership, wait_for_position, wait_for_receipts,
};

#[tokio::test]
async fn sends_during_a_receipt_outage_end_with_a_complete_ledger() {
    let mut suite = Suite::start(Backend::MariaDb).await;
    let mut a = suite.message(user("A"));
    let gid = create_group(&suite, "A", "Outage", &["uid1", "uid2", "uid3"]).await;

    suite.stop_receipt().await;
    let mut msgids = Vec::new();
    for i in 1..=10 {
        let request = mpb::SendMessageRequest {
            gid,
            client_msg_id: format!("o-{i}"),
            content: vec![b'x'; 32],
            need_receipt: true,
        };
        let sent = a
            .send_message(request)
            .await
            .expect("send succeeds while receipts are down");
        msgids.push(sent.into_inner().message.expect("message").msgid);
    }
    let probe = rpb::GetReceiptsRequest {
        gid,
        msgids: msgids.clone(),
        list_page_size: 10,
    };
    assert!(
        suite.receipt(user("A")).get_receipts(probe).await.is_err(),
        "receipt service is really down"
    );

    suite.restart_receipt().await;
    let restored = wait_for_receipts(&suite, gid, msgids.clone(), 10).await;
    assert_eq!(restored.len(), 10);
    for (receipt, seq) in restored.iter().zip(1..) {
        assert_eq!(receipt.seq, seq);
        assert_eq!(
            receipt.tier(),
            rpb::ReceiptTier::Ledger,
            "seq {seq} keeps read times"
        );
        assert_eq!(
            receipt.unread_uids,
            vec!["uid1", "uid2", "uid3"],
            "seq {seq}: every recipient listed"
        );
        assert_eq!((receipt.read_count, receipt.recipient_count), (0, 3));
    }
    // The recorded messages count an ack that comes after.
    ack_read(&suite, "uid1", gid, 10).await;
    let after = receipts(&suite, gid, vec![msgids[9]], 10).await;
    assert_eq!(after[0].read_uids, vec!["uid1"]);
    suite.stop().await;
}

/// Messages are passed on to the receipt service in batches; an outbox entry
/// that can never be delivered is set aside alone, and the messages batched
/// with it are recorded.
async fn an_undeliverable_outbox_entry_is_set_aside_alone(backend: Backend) {
    let mut suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Damaged", &["uid1", "uid2"]).await;
    // With the receipt service down, the three entries wait side by side.
    suite.stop_receipt().await;
    let before = send_direct(&suite, "A", gid, "before", 8).await;
    suite.write_undeliverable_outbox_entry(gid).await;
    let after = send_direct(&suite, "A", gid, "after", 8).await;
    suite.restart_receipt().await;

    let recorded = wait_for_receipts(&suite, gid, vec![before.msgid, after.msgid], 10).await;
    let seqs: Vec<u64> = recorded.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    for receipt in &recorded {
        assert_eq!(receipt.unread_uids, vec!["uid1", "uid2"]);
    }
    let stats = parley_testkit::eventually(
        "the outbox to drain",
        std::time::Duration::from_secs(30),
        || async {
            let stats = suite.outbox_stats().await;
            (stats.pending == 0).then_some(stats)
        },
    )
    .await;
    assert_eq!(stats.dead, 1, "only the undeliverable entry is set aside");
    suite.stop().await;
}

crate::support::on_both_backends!(an_undeliverable_outbox_entry_is_set_aside_alone);

/// Order matters only within a group, so the outbox drains groups side by
/// side: while one group's row in the receipt database is held (its
/// InitReceipts waits on the lock), another group's messages still reach the
/// receipt service, and none of the held group's later messages overtake the
/// held one; once released, the held group's messages all arrive, in order.
#[tokio::test]
async fn a_held_group_holds_up_only_its_own_messages() {
    let suite = Suite::start(Backend::MariaDb).await;
    // Consecutive gids: the outbox puts them in different lanes.
    let held = create_group(&suite, "A", "Held", &["uid1"]).await;
    let free = create_group(&suite, "A", "Free", &["uid1"]).await;
    for gid in [held, free] {
        wait_for_membership(&suite, "uid1", gid).await;
    }

    let mut holder = suite.hold_receipt_group(held).await;
    // The held group's messages go into the outbox first.
    let mut held_ids = Vec::new();
    for i in 1..=5 {
        held_ids.push(
            send_direct(&suite, "A", held, &format!("h-{i}"), 8)
                .await
                .msgid,
        );
    }
    let mut free_ids = Vec::new();
    for i in 1..=5 {
        free_ids.push(
            send_direct(&suite, "A", free, &format!("f-{i}"), 8)
                .await
                .msgid,
        );
    }
    let recorded = wait_for_receipts(&suite, free, free_ids, 0).await;
    let seqs: Vec<u64> = recorded.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let position = unread_in(&suite, "uid1", held).await;
    assert_eq!(
        (position[0].last_seq, position[0].unread),
        (0, 0),
        "no message of the held group is recorded while its first waits"
    );

    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("released");
    let recorded = wait_for_receipts(&suite, held, held_ids, 0).await;
    let seqs: Vec<u64> = recorded.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    wait_for_position(&suite, "uid1", held, "all five counted", |g| {
        (g.last_seq, g.unread) == (5, 5)
    })
    .await;
    suite.stop().await;
}
