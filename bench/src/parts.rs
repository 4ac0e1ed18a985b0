//! The parts beyond group load: pushes through the FCM sender, and receipt
//! reads in large groups.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use parley_proto::{
    message::{self as mpb, message_service_client::MessageServiceClient},
    notification::{self as npb, notification_service_client::NotificationServiceClient},
    receipt::{self as rpb, receipt_service_client::ReceiptServiceClient},
};
use parley_testkit::fcm::MockFcm;

use crate::{
    baseline::{micros, new_histogram},
    cluster::Cluster,
    load::{Acting, channel, create_group},
    report::Quantiles,
};

/// Push throughput.
pub struct Pushes {
    /// Pushes accepted by the stand-in per second, end to end from one send.
    pub per_second: f64,
    /// Pushes accepted per second from the first accepted to the last.
    pub pace: f64,
    /// Pushes counted.
    pub pushes: usize,
    /// CPU µs per push by process (each service, MariaDB, Redis, and the
    /// load generator with the stand-in in it), from the send to the last
    /// push accepted.
    pub cpu_us: Vec<(&'static str, f64)>,
    /// MariaDB rows written and statements received per push, over the same
    /// span.
    pub db: Option<(f64, f64)>,
}

/// The notification service's settings for the push part: no collapse
/// window, fast polling, the FCM stand-in.
pub fn push_env(fcm: &MockFcm) -> Vec<(&'static str, &'static str, String)> {
    vec![
        (
            "notification",
            "PARLEY_NOTIFICATION_FCM_CREDENTIALS",
            fcm.service_account_json(),
        ),
        (
            "notification",
            "PARLEY_NOTIFICATION_FCM_BASE_URL",
            fcm.base_url().to_owned(),
        ),
        (
            "notification",
            "PARLEY_NOTIFICATION_COLLAPSE_WINDOW_MS",
            "0".into(),
        ),
        // Pushes are measured as fast as the sender goes, not at the large
        // group throttle (one push per member per minute by default).
        (
            "notification",
            "PARLEY_NOTIFICATION_LARGE_GROUP_WINDOW_MS",
            "0".into(),
        ),
        ("notification", "PARLEY_NOTIFICATION_POLL_MS", "20".into()),
        ("notification", "PARLEY_NOTIFICATION_WORKERS", "256".into()),
        (
            "notification",
            "PARLEY_NOTIFICATION_BACKOFF_MS",
            "50".into(),
        ),
    ]
}

fn fcm_token(uid: &str) -> String {
    format!("{uid}:{}", "APA91b-bench_".repeat(4))
}

/// Registers an FCM token for every member but the first of a `prefix` group
/// of `members`, sends one message, and times the pushes until the stand-in
/// has accepted one per member. With `throttled`, every token is first
/// answered 429 with `Retry-After: 1`.
pub async fn pushes(
    cluster: &Cluster,
    fcm: &MockFcm,
    prefix: &str,
    members: usize,
    throttled: bool,
) -> Result<Pushes, String> {
    let gid = create_group(cluster, prefix, members).await?;
    let notification = channel(cluster, "notification")?;
    let registered: Vec<Result<(), String>> = stream::iter(1..members)
        .map(|i| {
            let uid = format!("{prefix}-{i:05}");
            let channel = notification.clone();
            let token = fcm_token(&uid);
            if throttled {
                fcm.script(&token, [parley_testkit::fcm::Reply::RetryAfter(1)]);
            }
            let acting = Acting::new(cluster, &uid, "notification");
            async move {
                let mut client = NotificationServiceClient::with_interceptor(channel, acting?);
                let request = npb::RegisterDeviceRequest {
                    device_id: "phone".into(),
                    platform: npb::Platform::Fcm.into(),
                    token,
                    app_id: String::new(),
                    locale: "en-GB".into(),
                };
                client
                    .register_device(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("register device: {}", s.message()))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    registered.into_iter().collect::<Result<Vec<()>, _>>()?;
    let before = fcm.delivered();
    let expected = members - 1;
    let db_before = cluster.db_counters().await;
    let cpu_before = cluster.cpu_seconds_with_load();
    let started = Instant::now();
    send_messages(cluster, prefix, gid, 1).await?;
    let deadline = started + Duration::from_secs(300);
    while fcm.delivered() - before < expected {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {expected} pushes within 300 s",
                fcm.delivered() - before
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let pushes = expected as f64;
    let cpu_us = cluster.cpu_since(&cpu_before, pushes / 1e6);
    let db = match (db_before, cluster.db_counters().await) {
        (Ok(before), Ok(after)) => {
            let counted = after.since(&before);
            Some((
                counted.rows as f64 / pushes,
                counted.statements as f64 / pushes,
            ))
        }
        _ => None,
    };
    // The sender's pace: the accepted sends from the first to the last, so
    // the retry's wait and the hand-off before the first push are not in it.
    let accepted: Vec<std::time::Instant> = fcm
        .sends()
        .into_iter()
        .filter(|s| s.status == 200 && s.token.starts_with(&format!("{prefix}-")))
        .map(|s| s.at)
        .collect();
    let pace = match (accepted.iter().min(), accepted.iter().max()) {
        (Some(first), Some(last)) if last > first => {
            (accepted.len() - 1) as f64 / last.duration_since(*first).as_secs_f64()
        }
        _ => f64::NAN,
    };
    Ok(Pushes {
        per_second: pushes / elapsed,
        pace,
        pushes: expected,
        cpu_us,
        db,
    })
}

/// Sends `count` messages as the group's first member; returns their msgids.
pub async fn send_messages(
    cluster: &Cluster,
    prefix: &str,
    gid: u64,
    count: usize,
) -> Result<Vec<u64>, String> {
    let mut client = MessageServiceClient::with_interceptor(
        channel(cluster, "message")?,
        Acting::new(cluster, &format!("{prefix}-00000"), "message")?,
    );
    let mut msgids = Vec::new();
    for i in 0..count {
        let request = mpb::SendMessageRequest {
            gid,
            client_msg_id: format!("{prefix}-{i}"),
            content: vec![b'x'; 16],
            need_receipt: true,
        };
        let sent = client
            .send_message(request)
            .await
            .map_err(|s| format!("send: {}", s.message()))?;
        msgids.extend(sent.into_inner().message.map(|m| m.msgid));
    }
    Ok(msgids)
}

/// Requests per second a bare HTTP/2 client gets from the FCM stand-in with
/// 64 requests in flight: the ceiling for the push path on this machine.
pub async fn fcm_baseline(fcm: &MockFcm, duration: Duration) -> Result<f64, String> {
    let _ = rustls_provider();
    let client = reqwest_client()?;
    let bearer = fcm.issue_token();
    let url = format!(
        "{}/v1/projects/{}/messages:send",
        fcm.base_url(),
        parley_testkit::fcm::PROJECT
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let body = serde_json::json!({"message": {"token": fcm_token("baseline"),
        "notification": {"title": "t", "body": "b"}, "data": {"gid": "1"}}});
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, url, bearer, body) =
                (client.clone(), url.clone(), bearer.clone(), body.clone());
            let (stop, done) = (stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = client
                        .post(&url)
                        .bearer_auth(&bearer)
                        .json(&body)
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for task in tasks {
        let _ = task.await;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
}

fn rustls_provider() -> bool {
    rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}

fn reqwest_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .map_err(|e| e.to_string())
}

/// GetReceipts latency in a group of `members` (cursor tier above 200):
/// counts for the last 50 messages, and one message's readers listed in
/// pages of 200.
pub struct Receipts {
    /// Counts for 50 messages.
    pub counts: Quantiles,
    /// One page of 200 readers or non-readers.
    pub page: Quantiles,
    /// The SQL `GetReceipts` runs for the 50 messages (one select of their
    /// receipt rows), sent straight to the receipt service's database.
    pub raw_counts: Quantiles,
}

/// `GetReceipts` calls timed (each beside its SQL alone).
const READS: usize = 200;
/// Times one message's non-readers are listed, every page.
const LIST_READS: usize = 30;

/// Times receipt reads as the sender of `msgids` in `gid`.
pub async fn receipt_reads(
    cluster: &Cluster,
    prefix: &str,
    gid: u64,
    msgids: &[u64],
) -> Result<Receipts, String> {
    let mut client = ReceiptServiceClient::with_interceptor(
        channel(cluster, "receipt")?,
        Acting::new(cluster, &format!("{prefix}-00000"), "receipt")?,
    );
    let last50: Vec<u64> = msgids.iter().rev().take(50).copied().collect();
    // The receipt service learns of messages through the message outbox.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = rpb::GetReceiptsRequest {
            gid,
            msgids: last50.clone(),
            list_page_size: 0,
        };
        match client.get_receipts(request).await {
            Ok(_) => break,
            Err(status) if Instant::now() > deadline => {
                return Err(format!(
                    "receipts never became readable: {}",
                    status.message()
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // Each call and its SQL sent straight to the database take turns, so
    // both see the same machine.
    use sqlx::Connection;
    let raw_gid = i64::try_from(gid).map_err(|e| e.to_string())?;
    let raw_ids: Vec<i64> = last50
        .iter()
        .filter_map(|&id| i64::try_from(id).ok())
        .collect();
    let mut conn = sqlx::mysql::MySqlConnection::connect(&cluster.receipt_database())
        .await
        .map_err(|e| format!("receipt database: {e}"))?;
    let (mut counts, mut raw_counts) = (new_histogram(), new_histogram());
    for _ in 0..READS {
        let started = Instant::now();
        let request = rpb::GetReceiptsRequest {
            gid,
            msgids: last50.clone(),
            list_page_size: 0,
        };
        client
            .get_receipts(request)
            .await
            .map_err(|s| format!("get receipts: {}", s.message()))?;
        let _ = counts.record(micros(started.elapsed()));
        let started = Instant::now();
        raw_receipt_read(&mut conn, raw_gid, &raw_ids).await?;
        let _ = raw_counts.record(micros(started.elapsed()));
    }
    let mut page = new_histogram();
    let one = last50.first().copied().ok_or("no messages sent")?;
    for _ in 0..LIST_READS {
        let mut token = String::new();
        loop {
            let started = Instant::now();
            let request = rpb::ListReceiptMembersRequest {
                gid,
                msgid: one,
                state: rpb::ReceiptState::Unread.into(),
                page_size: 200,
                page_token: token,
            };
            let reply = client
                .list_receipt_members(request)
                .await
                .map_err(|s| format!("list receipt members: {}", s.message()))?
                .into_inner();
            let _ = page.record(micros(started.elapsed()));
            if reply.next_page_token.is_empty() {
                break;
            }
            token = reply.next_page_token;
        }
    }
    Ok(Receipts {
        counts: Quantiles::of(&counts),
        page: Quantiles::of(&page),
        raw_counts: Quantiles::of(&raw_counts),
    })
}

/// The select `GetReceipts` runs for `msgids` of `gid` (one read of their
/// receipt rows), sent on `conn` straight to the receipt service's database.
async fn raw_receipt_read(
    conn: &mut sqlx::mysql::MySqlConnection,
    gid: i64,
    msgids: &[i64],
) -> Result<(), String> {
    let mut select = sqlx::QueryBuilder::<sqlx::MySql>::new(
        "SELECT gid, seq, msgid, sender_uid, recipient_count, read_count, ledger, changed_at_ms \
         FROM receipt_msgs WHERE gid = ",
    );
    select.push_bind(gid).push(" AND msgid IN ");
    parley_server::db::push_list(&mut select, msgids.iter().copied());
    let found = select
        .build()
        .fetch_all(conn)
        .await
        .map_err(|e| format!("receipt rows: {e}"))?;
    if found.len() == msgids.len() {
        Ok(())
    } else {
        Err(format!(
            "raw receipt read found {} of {} messages",
            found.len(),
            msgids.len()
        ))
    }
}
