//! `parley demo`: the seeds' scenario against a running suite. A creates a
//! group with uid1, uid2 and uid3; A, uid1 and uid2 are online, uid3 is not.
//! A sends three messages that want receipts; uid1 reads all three, uid2 the
//! first two; A sees the receipt digests arrive; uid3 then connects, catches
//! up in order and reads, and A sees the counts reach 3 of 3.

use std::time::Duration;

use parley_proto::{gateway::connect_response::Frame as Out, message as mpb, receipt as rpb};
use parley_server::Uid;

use crate::client::{self, Device, Endpoints, print_frame};

fn uid(raw: &str) -> Result<Uid, String> {
    Uid::parse(raw).map_err(|e| e.to_string())
}

/// Reads `device`'s frames, printing each, until `done` says so or `wait`
/// passes without one.
async fn show_until(
    device: &mut Device,
    wait: Duration,
    mut done: impl FnMut(&Out) -> bool,
) -> Result<(), String> {
    while let Some(frame) = device.next(wait).await? {
        print_frame(&device.uid, &frame);
        if done(&frame) {
            return Ok(());
        }
    }
    Ok(())
}

fn message_seq(frame: &Out) -> Option<u64> {
    match frame {
        Out::Message(m) => Some(m.seq),
        _ => None,
    }
}

/// Whether `frame` is a digest saying message `seq` is read by `count`.
fn digest_reaches(frame: &Out, seq: u64, count: u32) -> bool {
    matches!(frame, Out::ReceiptDigest(d) if d.entries.iter().any(|e| e.seq == seq && e.read_count >= count))
}

/// Plays the scenario.
pub async fn run(endpoints: &Endpoints) -> Result<(), String> {
    let (a, uid1, uid2, uid3) = (uid("A")?, uid("uid1")?, uid("uid2")?, uid("uid3")?);
    let name = format!("Design {}", parley_server::now_ms() % 100_000);
    println!("1. A creates group {name:?} with uid1, uid2 and uid3");
    let request = mpb::CreateGroupRequest {
        kind: mpb::GroupKind::Group.into(),
        name,
        member_uids: vec![uid1.to_string(), uid2.to_string(), uid3.to_string()],
    };
    let group = client::message(endpoints, &a)?
        .create_group(request)
        .await
        .map_err(|s| format!("create group: {} (is `make dev` running?)", s.message()))?
        .into_inner()
        .group
        .unwrap_or_default();
    let gid = group.gid;

    println!("2. A, uid1 and uid2 connect to the gateway; uid3 stays offline");
    let mut a_dev = Device::connect(endpoints, &a, "a-phone").await?;
    let mut uid1_dev = Device::connect(endpoints, &uid1, "uid1-phone").await?;
    let mut uid2_dev = Device::connect(endpoints, &uid2, "uid2-laptop").await?;

    println!("3. A sends three messages that want read receipts");
    let mut msgids = Vec::new();
    for text in [
        "Hi team, the design review is Friday",
        "Slides are in the usual folder",
        "Please read before then",
    ] {
        let sent = a_dev.send(gid, text, true).await?;
        println!("  [A] sent message {} as seq {}", sent.msgid, sent.seq);
        msgids.push(sent.msgid);
    }

    println!("4. uid1 and uid2 receive them live");
    for device in [&mut uid1_dev, &mut uid2_dev] {
        show_until(device, Duration::from_secs(5), |f| {
            message_seq(f) == Some(3)
        })
        .await?;
    }

    println!("5. uid1 reads all three; uid2 reads the first two");
    uid1_dev.ack(gid, 3, true).await?;
    uid2_dev.ack(gid, 2, true).await?;

    println!("6. A's receipt digests arrive (coalesced, only to the sender)");
    show_until(&mut a_dev, Duration::from_secs(3), |f| {
        digest_reaches(f, 2, 2)
    })
    .await?;

    println!("7. A asks who has read what");
    print_receipts(endpoints, &a, gid, msgids.clone()).await?;

    println!("8. uid3, still offline, has unread messages");
    print_unread(endpoints, &uid3).await?;

    println!("9. uid3 connects: the backlog arrives in seq order, then uid3 reads it");
    let mut uid3_dev = Device::connect(endpoints, &uid3, "uid3-phone").await?;
    show_until(&mut uid3_dev, Duration::from_secs(5), |f| {
        message_seq(f) == Some(3)
    })
    .await?;
    uid3_dev.ack(gid, 3, true).await?;

    println!("10. A sees the first message read by everyone");
    show_until(&mut a_dev, Duration::from_secs(3), |f| {
        digest_reaches(f, 1, 3)
    })
    .await?;
    print_receipts(endpoints, &a, gid, msgids).await?;
    println!("done: group {gid}");
    Ok(())
}

/// Prints receipts of `msgids`, as `uid` sees them.
pub async fn print_receipts(
    endpoints: &Endpoints,
    uid: &Uid,
    gid: u64,
    msgids: Vec<u64>,
) -> Result<(), String> {
    let request = rpb::GetReceiptsRequest {
        gid,
        msgids,
        list_page_size: 20,
    };
    let receipts = client::receipt(endpoints, uid)?
        .get_receipts(request)
        .await
        .map_err(|s| format!("receipts: {}", s.message()))?
        .into_inner()
        .receipts;
    for r in receipts {
        println!(
            "  [{uid}] message {} (seq {}): read by {} of {}; read: [{}]; not yet: [{}]",
            r.msgid,
            r.seq,
            r.read_count,
            r.recipient_count,
            r.read_uids.join(", "),
            r.unread_uids.join(", ")
        );
    }
    Ok(())
}

/// Prints `uid`'s unread counts.
pub async fn print_unread(endpoints: &Endpoints, uid: &Uid) -> Result<(), String> {
    let reply = client::receipt(endpoints, uid)?
        .unread_counts(rpb::UnreadCountsRequest::default())
        .await
        .map_err(|s| format!("unread counts: {}", s.message()))?;
    for group in reply.into_inner().groups {
        if group.unread > 0 {
            println!(
                "  [{uid}] group {}: {} unread (read up to seq {} of {})",
                group.gid, group.unread, group.read_seq, group.last_seq
            );
        }
    }
    Ok(())
}
