//! `parley demo`: the seeds' scenario against a running suite. A creates a
//! group with uid1, uid2 and uid3; A, uid1 and uid2 are online, uid3 is not.
//! A sends three messages that want receipts; uid1 reads all three, uid2 the
//! first two; A sees the receipt digests arrive; uid3's phone gets one push
//! for the three; uid3 then connects, catches up in order and reads, and A
//! sees the counts reach 3 of 3.

use std::{path::Path, time::Duration};

use parley_proto::{
    gateway::connect_response::Frame as Out, message as mpb, notification as npb, receipt as rpb,
};
use parley_server::Uid;

use crate::{
    Output,
    client::{self, Device, Endpoints, show_frame},
    failure::Failure,
};

/// The demo prints text.
const TEXT: Output = Output::TEXT;

fn uid(raw: &str) -> Result<Uid, String> {
    Uid::parse(raw).map_err(|e| e.to_string())
}

/// Reads `device`'s frames, printing each, until `done` says so or `wait`
/// passes without one.
async fn show_until(
    device: &mut Device,
    wait: Duration,
    mut done: impl FnMut(&Out) -> bool,
) -> Result<(), Failure> {
    while let Some(frame) = device.next(wait).await? {
        show_frame(&device.uid, &frame, TEXT);
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

/// How long the demo waits for uid3's push: the collapse window (3 s by
/// default) and a poll of the queue.
const PUSH_WAIT: Duration = Duration::from_secs(15);

/// Waits for the push the dev suite's logging sender appended for `uid` in
/// `gid`, and prints it.
async fn show_push(push_log: &Path, uid: &Uid, gid: u64) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    loop {
        let text = std::fs::read_to_string(push_log).unwrap_or_default();
        let push = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|p| p["uid"] == uid.as_str() && p["gid"] == gid);
        if let Some(p) = push {
            println!(
                "  [{uid}] {} push to {}: {:?} - {:?} (badge {}, seq {}-{})",
                p["platform"].as_str().unwrap_or_default(),
                p["device_id"].as_str().unwrap_or_default(),
                p["title"].as_str().unwrap_or_default(),
                p["body"].as_str().unwrap_or_default(),
                p["badge"],
                p["first_seq"],
                p["last_seq"],
            );
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::other(format!(
                "no push for {uid} in {} within {PUSH_WAIT:?} (is `make dev` running from this directory?)",
                push_log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Plays the scenario; `data` is the running dev suite's data directory.
pub async fn run(endpoints: &Endpoints, data: &Path) -> Result<(), Failure> {
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
    let phone = npb::RegisterDeviceRequest {
        device_id: "uid3-phone".into(),
        platform: npb::Platform::Fcm.into(),
        token: format!("dev-token-uid3-{}", "0".repeat(24)),
        app_id: String::new(),
        locale: "en-GB".into(),
    };
    client::notification(endpoints, &uid3)?
        .register_device(phone)
        .await
        .map_err(|s| format!("register device: {}", s.message()))?;
    println!("  [uid3] registered its phone for push notifications (FCM)");

    println!("2. A, uid1 and uid2 connect to the gateway; uid3 stays offline");
    let mut a_dev = Device::connect(endpoints, &a, "a-phone", TEXT).await?;
    let mut uid1_dev = Device::connect(endpoints, &uid1, "uid1-phone", TEXT).await?;
    let mut uid2_dev = Device::connect(endpoints, &uid2, "uid2-laptop", TEXT).await?;

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
    // Until both reads are in: seq 2 by two readers, seq 3 by one.
    let (mut second, mut third) = (false, false);
    show_until(&mut a_dev, Duration::from_secs(3), |f| {
        second |= digest_reaches(f, 2, 2);
        third |= digest_reaches(f, 3, 1);
        second && third
    })
    .await?;

    println!("7. A asks who has read what");
    print_receipts(endpoints, &a, gid, msgids.clone(), TEXT).await?;

    println!("8. uid3, still offline, has unread messages");
    print_unread(endpoints, &uid3, TEXT).await?;

    println!(
        "9. uid3's phone gets one push for all three, with the unread badge \
         (the dev suite logs pushes instead of calling FCM)"
    );
    show_push(&crate::dev::push_log_path(data), &uid3, gid).await?;

    println!("10. uid3 connects: the backlog arrives in seq order, then uid3 reads it");
    let mut uid3_dev = Device::connect(endpoints, &uid3, "uid3-phone", TEXT).await?;
    show_until(&mut uid3_dev, Duration::from_secs(5), |f| {
        message_seq(f) == Some(3)
    })
    .await?;
    uid3_dev.ack(gid, 3, true).await?;

    println!("11. A sees the first message read by everyone");
    show_until(&mut a_dev, Duration::from_secs(3), |f| {
        digest_reaches(f, 1, 3)
    })
    .await?;
    print_receipts(endpoints, &a, gid, msgids, TEXT).await?;
    println!("done: group {gid}");
    Ok(())
}

/// Prints receipts of `msgids`, as `uid` sees them.
pub async fn print_receipts(
    endpoints: &Endpoints,
    uid: &Uid,
    gid: u64,
    msgids: Vec<u64>,
    out: Output,
) -> Result<(), Failure> {
    let request = rpb::GetReceiptsRequest {
        gid,
        msgids,
        list_page_size: 20,
    };
    let receipts = client::receipt(endpoints, uid)?
        .get_receipts(request)
        .await
        .map_err(Failure::status("receipts"))?
        .into_inner()
        .receipts;
    let json = receipts
        .iter()
        .map(|r| {
            serde_json::json!({
                "msgid": r.msgid,
                "seq": r.seq,
                "read_count": r.read_count,
                "recipient_count": r.recipient_count,
                "read": r.read_uids,
                "not_yet": r.unread_uids,
            })
        })
        .collect();
    out.result(
        || {
            let lines: Vec<String> = receipts
                .iter()
                .map(|r| {
                    format!(
                        "  [{uid}] message {} (seq {}): read by {} of {}; read: [{}]; not yet: [{}]",
                        r.msgid,
                        r.seq,
                        r.read_count,
                        r.recipient_count,
                        r.read_uids.join(", "),
                        r.unread_uids.join(", ")
                    )
                })
                .collect();
            lines.join("\n")
        },
        serde_json::Value::Array(json),
    );
    Ok(())
}

/// Prints `uid`'s unread counts.
pub async fn print_unread(endpoints: &Endpoints, uid: &Uid, out: Output) -> Result<(), Failure> {
    let reply = client::receipt(endpoints, uid)?
        .unread_counts(rpb::UnreadCountsRequest::default())
        .await
        .map_err(Failure::status("unread counts"))?;
    let groups: Vec<_> = reply
        .into_inner()
        .groups
        .into_iter()
        .filter(|group| group.unread > 0)
        .collect();
    let json = groups
        .iter()
        .map(|g| {
            serde_json::json!({
                "gid": g.gid,
                "unread": g.unread,
                "read_seq": g.read_seq,
                "last_seq": g.last_seq,
            })
        })
        .collect();
    out.result(
        || {
            let lines: Vec<String> = groups
                .iter()
                .map(|g| {
                    format!(
                        "  [{uid}] group {}: {} unread (read up to seq {} of {})",
                        g.gid, g.unread, g.read_seq, g.last_seq
                    )
                })
                .collect();
            lines.join("\n")
        },
        serde_json::Value::Array(json),
    );
    Ok(())
}
