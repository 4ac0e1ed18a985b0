//! What devices cost the gateway: the memory of idle streams once the login
//! burst has settled, the CPU of heartbeats from clients that really send
//! them, and every stream closing at once (how soon presence has them all
//! offline, in how many calls, and what the gateway logged). Beside it, the
//! same streams and heartbeats on a bare tonic bidi stream that does nothing
//! but echo, served by a child process of its own: the baseline.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, stream};
use parley_proto::{
    gateway::{self as pb, connect_request::Frame as In, connect_response::Frame as Out},
    presence::{self as ppb, presence_service_client::PresenceServiceClient},
};
use prost::Message as _;
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tonic::transport::Channel;

use crate::{
    cluster::{Cluster, process_cpu_seconds, process_rss_bytes},
    load::{STREAMS_PER_CONNECTION, channel, gateway_channels, open},
    streams::{BareProcess, echo_stream},
};

/// Streams opened at once.
const OPEN_AT_ONCE: usize = 64;
/// Longest wait for a process's memory to settle after the logins.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Users per presence lookup (presence's own limit).
const LOOKUP: usize = 10_000;

/// What idle streams cost one process.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdleCost {
    /// Streams held.
    pub streams: usize,
    /// Resident memory per stream, in bytes, after the logins settled.
    pub bytes_per_stream: f64,
    /// CPU per heartbeat answered, in µs (everything the process did in the
    /// window, its own timers included, over the heartbeats answered).
    pub cpu_us_per_heartbeat: f64,
    /// Heartbeats answered in the window.
    pub heartbeats: u64,
    /// Heartbeats refused (over the stream's allowance).
    pub refused: u64,
}

/// Every stream closing at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Disconnect {
    /// Until presence listed none of the devices; `None`: not within the limit.
    pub took: Option<Duration>,
    /// BatchOffline calls presence answered meanwhile.
    pub batch_calls: u64,
    /// Single Offline calls.
    pub single_calls: u64,
    /// Lines at ERROR in the gateway's log meanwhile.
    pub log_errors: usize,
    /// Lines at WARN.
    pub log_warnings: usize,
}

/// Replies counted by the streams' tasks.
#[derive(Default)]
struct Counts {
    answered: AtomicU64,
    refused: AtomicU64,
}

/// The gateway with `streams` idle devices heartbeating every `every` for
/// `window`, then `ws_sockets` idle WebSockets beside them (their memory per
/// connection is the third figure returned), then all the streams gone at
/// once; presence must have them offline within `offline_limit`.
pub async fn gateway(
    cluster: &Cluster,
    (streams, ws_sockets): (usize, usize),
    (every, window, offline_limit): (Duration, Duration, Duration),
    progress: &dyn Fn(&str),
) -> Result<(IdleCost, Disconnect, f64), String> {
    let pid = cluster.pid("gateway").ok_or("no gateway process")?;
    let before = settled_rss(pid).await;
    let channels = gateway_channels(cluster, streams, STREAMS_PER_CONNECTION).await?;
    let uid = |i: usize| format!("idle-{i:06}");
    let opened: Vec<Result<crate::load::Stream, String>> = stream::iter(0..streams)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            async move { open(channel, &uid(i), "phone").await }
        })
        .buffer_unordered(OPEN_AT_ONCE)
        .collect()
        .await;
    let opened: Vec<crate::load::Stream> = opened.into_iter().collect::<Result<_, _>>()?;
    progress(&format!(
        "devices: {} gateway streams open; waiting for the gateway to settle",
        opened.len()
    ));
    let after = settled_rss(pid).await;
    let heartbeat = pb::ConnectRequest {
        frame: Some(In::Heartbeat(pb::HeartbeatFrame::default())),
    };
    let counts = Arc::new(Counts::default());
    let mut beating = JoinSet::new();
    let start = Instant::now();
    for (i, opened) in opened.into_iter().enumerate() {
        let (tx, rx) = opened.into_parts();
        beating.spawn(beat(
            (tx, rx),
            heartbeat.clone(),
            (phase(start, i, streams, every), every),
            counts.clone(),
            answered_heartbeat,
        ));
    }
    progress(&format!(
        "devices: every stream heartbeats every {every:?}; measuring for {window:?}"
    ));
    let (cpu, answered) = measure(pid, window, &counts).await;
    let idle = IdleCost {
        streams,
        bytes_per_stream: after.saturating_sub(before) as f64 / streams.max(1) as f64,
        cpu_us_per_heartbeat: cpu * 1e6 / answered.max(1) as f64,
        heartbeats: answered,
        refused: counts.refused.load(Ordering::Relaxed),
    };

    // Browsers, measured while the streams are still open, so no memory the
    // closed streams freed is reused and read as free.
    progress(&format!(
        "devices: opening {ws_sockets} idle WebSocket connections beside them"
    ));
    let per_socket = websockets(cluster, ws_sockets).await?;
    progress(&format!("devices: closing all {streams} streams at once"));
    let log = cluster.log_path("gateway")?;
    let log_from = std::fs::metadata(&log).map_or(0, |m| m.len());
    let calls = |text: &str, method: &str| {
        crate::cluster::rpc_calls(
            text,
            &format!("/parley.presence.v1.PresenceService/{method}"),
        )
    };
    let presence_before = cluster.metrics_text("presence").await?;
    let closed = Instant::now();
    beating.abort_all();
    while beating.join_next().await.is_some() {}
    let uids: Vec<String> = (0..streams).map(uid).collect();
    let took = all_offline(cluster, &uids, offline_limit)
        .await?
        .then(|| closed.elapsed());
    let presence_after = cluster.metrics_text("presence").await?;
    let logged = std::fs::read(&log).map_err(|e| e.to_string())?;
    let logged = String::from_utf8_lossy(logged.get(log_from as usize..).unwrap_or_default());
    let disconnect = Disconnect {
        took,
        batch_calls: calls(&presence_after, "BatchOffline")
            .saturating_sub(calls(&presence_before, "BatchOffline")),
        single_calls: calls(&presence_after, "Offline")
            .saturating_sub(calls(&presence_before, "Offline")),
        log_errors: logged.lines().filter(|l| l.contains("ERROR")).count(),
        log_warnings: logged.lines().filter(|l| l.contains("WARN")).count(),
    };
    drop(channels);
    Ok((idle, disconnect, per_socket))
}

/// What an idle WebSocket client costs the gateway: `count` browsers-to-be
/// connect to the gateway's WebSocket and authenticate, each reading (and so
/// answering the gateway's pings) until the measurement is taken; resident
/// memory per connection once the logins settled.
pub async fn websockets(cluster: &Cluster, count: usize) -> Result<f64, String> {
    use futures::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let pid = cluster.pid("gateway").ok_or("no gateway process")?;
    let before = settled_rss(pid).await;
    let url = format!("ws://{}/v1/ws", cluster.gateway_ws);
    let opened: Vec<Result<_, String>> = stream::iter(0..count)
        .map(|i| {
            let url = url.clone();
            async move {
                let uid =
                    parley_server::Uid::parse(&format!("ws-{i:06}")).map_err(|e| e.to_string())?;
                let token = parley_gateway::auth::issue_hs256(
                    crate::cluster::JWT_SECRET.as_bytes(),
                    &uid,
                    3600,
                )
                .map_err(|e| e.to_string())?;
                let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .map_err(|e| format!("WebSocket to the gateway: {e}"))?;
                let auth = pb::ConnectRequest {
                    frame: Some(In::Auth(pb::AuthFrame {
                        token,
                        device_id: "browser".into(),
                        receipts_cursor: String::new(),
                    })),
                };
                socket
                    .send(Message::Binary(auth.encode_to_vec().into()))
                    .await
                    .map_err(|e| e.to_string())?;
                loop {
                    match socket.next().await {
                        Some(Ok(Message::Binary(bytes))) => {
                            let frame =
                                pb::ConnectResponse::decode(bytes).map_err(|e| e.to_string())?;
                            if matches!(frame.frame, Some(Out::AuthOk(_))) {
                                break;
                            }
                        }
                        Some(Ok(_)) => {}
                        other => return Err(format!("the gateway refused a WebSocket: {other:?}")),
                    }
                }
                // Read on, so pings are answered while the others connect.
                Ok(tokio::spawn(async move {
                    while socket.next().await.is_some() {}
                }))
            }
        })
        .buffer_unordered(OPEN_AT_ONCE)
        .collect()
        .await;
    let readers: Vec<_> = opened.into_iter().collect::<Result<_, _>>()?;
    let after = settled_rss(pid).await;
    for reader in &readers {
        reader.abort();
    }
    Ok(after.saturating_sub(before) as f64 / count.max(1) as f64)
}

/// The same count of bare echo streams, spread the same way and sent the
/// same heartbeat frames, on a child process that does nothing else.
pub async fn bare(streams: usize, every: Duration, window: Duration) -> Result<IdleCost, String> {
    let server = BareProcess::start().await?;
    let pid = server.pid();
    let before = settled_rss(pid).await;
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..streams.div_ceil(STREAMS_PER_CONNECTION).max(1) {
        channels.push(server.connect().await?);
    }
    let opened: Vec<Result<_, String>> = stream::iter(0..streams)
        .map(|i| echo_stream(channels[i % channels.len()].clone()))
        .buffer_unordered(OPEN_AT_ONCE)
        .collect()
        .await;
    let opened: Vec<_> = opened.into_iter().collect::<Result<_, _>>()?;
    let after = settled_rss(pid).await;
    let heartbeat = Bytes::from(
        pb::ConnectRequest {
            frame: Some(In::Heartbeat(pb::HeartbeatFrame::default())),
        }
        .encode_to_vec(),
    );
    let counts = Arc::new(Counts::default());
    let mut beating = JoinSet::new();
    let start = Instant::now();
    for (i, halves) in opened.into_iter().enumerate() {
        beating.spawn(beat(
            halves,
            heartbeat.clone(),
            (phase(start, i, streams, every), every),
            counts.clone(),
            |_: &Bytes| Some(true),
        ));
    }
    let (cpu, answered) = measure(pid, window, &counts).await;
    beating.abort_all();
    Ok(IdleCost {
        streams,
        bytes_per_stream: after.saturating_sub(before) as f64 / streams.max(1) as f64,
        cpu_us_per_heartbeat: cpu * 1e6 / answered.max(1) as f64,
        heartbeats: answered,
        refused: 0,
    })
}

/// When stream `i` of `n` first heartbeats: the streams are spread evenly
/// over one interval, as real clients are.
fn phase(start: Instant, i: usize, n: usize, every: Duration) -> Instant {
    let offset = every.mul_f64(i as f64 / n.max(1) as f64);
    start + offset
}

/// Whether a gateway frame answers a heartbeat: taken (true) or refused.
fn answered_heartbeat(frame: &pb::ConnectResponse) -> Option<bool> {
    match &frame.frame {
        Some(Out::HeartbeatReply(reply)) => Some(reply.code == 0),
        _ => None,
    }
}

/// One stream: sends `frame` every period from its phase and counts the
/// answers, until aborted or the stream ends.
async fn beat<Req: Clone, Resp>(
    (tx, mut rx): (mpsc::Sender<Req>, tonic::Streaming<Resp>),
    frame: Req,
    (first, every): (Instant, Duration),
    counts: Arc<Counts>,
    answer: impl Fn(&Resp) -> Option<bool>,
) {
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if tx.send(frame.clone()).await.is_err() {
                    return;
                }
            }
            reply = rx.message() => match reply {
                Ok(Some(reply)) => match answer(&reply) {
                    Some(true) => {
                        counts.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(false) => {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {}
                },
                _ => return,
            },
        }
    }
}

/// CPU seconds of `pid` and answers counted over `window`.
async fn measure(pid: u32, window: Duration, counts: &Counts) -> (f64, u64) {
    let cpu_before = process_cpu_seconds(pid).unwrap_or(0.0);
    let answered_before = counts.answered.load(Ordering::Relaxed);
    tokio::time::sleep(window).await;
    let cpu = process_cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let answered = counts
        .answered
        .load(Ordering::Relaxed)
        .saturating_sub(answered_before);
    (cpu, answered)
}

/// `pid`'s resident memory once it has stopped moving: two readings a second
/// apart within 0.5% of each other, with under 5% of a core used between
/// them (or the last reading after [`SETTLE_LIMIT`]).
async fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut last = process_rss_bytes(pid).unwrap_or(0);
    let mut cpu = process_cpu_seconds(pid).unwrap_or(0.0);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = process_rss_bytes(pid).unwrap_or(0);
        let now_cpu = process_cpu_seconds(pid).unwrap_or(0.0);
        let still = rss.abs_diff(last) <= last / 200 && now_cpu - cpu < 0.05;
        if still || Instant::now() > deadline {
            return rss;
        }
        (last, cpu) = (rss, now_cpu);
    }
}

/// Waits until presence lists no device of `uids`; false if not within
/// `limit`.
async fn all_offline(cluster: &Cluster, uids: &[String], limit: Duration) -> Result<bool, String> {
    let mut presence = PresenceServiceClient::with_interceptor(
        channel(cluster, "presence")?,
        cluster.caller_to("presence")?,
    );
    let deadline = Instant::now() + limit;
    loop {
        let mut online = 0;
        for chunk in uids.chunks(LOOKUP) {
            let reply = presence
                .batch_get_presence(ppb::BatchGetPresenceRequest {
                    uids: chunk.to_vec(),
                })
                .await
                .map_err(|s| format!("presence: {}", s.message()))?;
            online += reply
                .into_inner()
                .users
                .iter()
                .map(|u| u.devices.len())
                .sum::<usize>();
        }
        if online == 0 {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
