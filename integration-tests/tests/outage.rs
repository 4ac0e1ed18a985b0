//! No lost receipt state: sends succeed while the receipt service is down, and
//! its ledger is complete once it is back.

use std::time::Duration;

use parley_proto::{message as mpb, receipt as rpb};
use parley_testkit::eventually;

use crate::support::{Backend, Suite, user};

#[tokio::test]
async fn sends_during_a_receipt_outage_end_with_a_complete_ledger() {
    let mut suite = Suite::start(Backend::MariaDb).await;
    let mut a = suite.message(user("A"));
    let request = mpb::CreateGroupRequest {
        kind: mpb::GroupKind::Group.into(),
        name: "Outage".into(),
        member_uids: vec!["uid1".into(), "uid2".into(), "uid3".into()],
    };
    let gid = a
        .create_group(request)
        .await
        .expect("create")
        .into_inner()
        .group
        .expect("group")
        .gid;

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
    let receipt = suite.receipt(user("A"));
    let receipts = eventually(
        "the outbox to deliver every message",
        Duration::from_secs(30),
        || {
            let mut receipt = receipt.clone();
            let msgids = msgids.clone();
            async move {
                let request = rpb::GetReceiptsRequest {
                    gid,
                    msgids,
                    list_page_size: 10,
                };
                receipt
                    .get_receipts(request)
                    .await
                    .ok()
                    .map(|r| r.into_inner().receipts)
            }
        },
    )
    .await;
    assert_eq!(receipts.len(), 10);
    for (receipt, seq) in receipts.iter().zip(1..) {
        assert_eq!(receipt.seq, seq);
        assert_eq!(
            receipt.tier(),
            rpb::ReceiptTier::Ledger,
            "seq {seq} has ledger rows"
        );
        assert_eq!(
            receipt.unread_uids,
            vec!["uid1", "uid2", "uid3"],
            "seq {seq} ledger is complete"
        );
        assert_eq!((receipt.read_count, receipt.recipient_count), (0, 3));
    }
    // The restored ledger works: an ack flips it.
    let ack = rpb::AckRequest {
        gid,
        up_to_seq: 10,
        kind: rpb::AckKind::Read.into(),
    };
    suite.receipt(user("uid1")).ack(ack).await.expect("ack");
    let request = rpb::GetReceiptsRequest {
        gid,
        msgids: vec![msgids[9]],
        list_page_size: 10,
    };
    let after = suite
        .receipt(user("A"))
        .get_receipts(request)
        .await
        .expect("receipts")
        .into_inner();
    assert_eq!(after.receipts[0].read_uids, vec!["uid1"]);
    suite.stop().await;
}
