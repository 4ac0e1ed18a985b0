//! Groups under load through real gateway streams: members online on the
//! gateway, one sender per group at a paced rate, readers acking in batches
//! (every 10 messages or 1 s), every message wanting receipts. Measures send
//! → delivery latency from a timestamp in each message's content, send →
//! result latency of accepted sends from the request id (the send's time),
//! and ack → sender-digest latency from the first ack covering a message.
//! Refused sends are counted by code and not retried (the offered rate stays
//! what was asked); a device whose stream ends reconnects, and is counted.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use parley_proto::{
    gateway::{
        self as pb, connect_request::Frame as In, connect_response::Frame as Out,
        gateway_service_client::GatewayServiceClient,
    },
    message::{self as mpb, message_service_client::MessageServiceClient},
};
use parley_server::Uid;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::{
    baseline::{micros, new_histogram},
    cluster::{Cluster, JWT_SECRET},
};

/// Every timestamp is microseconds since this instant.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    micros(epoch().elapsed())
}

/// Device streams per HTTP/2 connection to the gateway, as behind a proxy.
pub const STREAMS_PER_CONNECTION: usize = 50;
/// By default a reader acks after this many messages...
pub const ACK_EVERY: u64 = 10;
/// Statements listed by their text at each step (`--statements`).
const TOP_STATEMENTS: u32 = 15;
/// ...or after this long with something unacked.
const ACK_AFTER: Duration = Duration::from_secs(1);
/// The load generator's name among the processes whose CPU is counted.
pub const LOAD_GENERATOR: &str = "load generator";

/// Longest wait for a step's backlog to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// One device's stream.
pub struct Stream {
    tx: mpsc::Sender<pb::ConnectRequest>,
    rx: tonic::Streaming<pb::ConnectResponse>,
}

impl Stream {
    /// The stream's two halves: frames to the gateway, frames from it.
    pub fn into_parts(
        self,
    ) -> (
        mpsc::Sender<pb::ConnectRequest>,
        tonic::Streaming<pb::ConnectResponse>,
    ) {
        (self.tx, self.rx)
    }
}

/// Opens a device stream as `uid` and waits for `auth_ok`.
pub async fn open(channel: Channel, uid: &str, device: &str) -> Result<Stream, String> {
    let uid = Uid::parse(uid).map_err(|e| e.to_string())?;
    let token = parley_gateway::auth::issue_hs256(JWT_SECRET.as_bytes(), &uid, 3600)
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(1024);
    let auth = pb::AuthFrame {
        token,
        device_id: device.to_owned(),
        receipts_cursor: String::new(),
    };
    tx.send(pb::ConnectRequest {
        frame: Some(In::Auth(auth)),
    })
    .await
    .map_err(|_| "stream closed".to_owned())?;
    let mut rx = GatewayServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("gateway refused a stream: {}", s.message()))?
        .into_inner();
    loop {
        match rx.message().await {
            Ok(Some(pb::ConnectResponse {
                frame: Some(Out::AuthOk(_)),
            })) => return Ok(Stream { tx, rx }),
            Ok(Some(_)) => continue,
            Ok(None) => return Err("the gateway closed a stream at login".into()),
            Err(status) => return Err(format!("login failed: {}", status.message())),
        }
    }
}

/// Gateway connections for `streams` device streams, `per_connection` on each.
pub async fn gateway_channels(
    cluster: &Cluster,
    streams: usize,
    per_connection: usize,
) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::new();
    for _ in 0..streams.div_ceil(per_connection.max(1)).max(1) {
        let channel = tonic::transport::Endpoint::from_shared(cluster.url("gateway"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("gateway: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Names the acting user on internal calls to `callee`, proven as the
/// load generator's own service (`bench`), as a backend of an app would.
#[derive(Clone)]
pub struct Acting {
    uid: tonic::metadata::AsciiMetadataValue,
    identity: parley_server::ServiceIdentity,
}

impl Acting {
    /// Acting as `uid` towards `callee`.
    pub fn new(cluster: &Cluster, uid: &str, callee: &'static str) -> Result<Self, String> {
        let uid = tonic::metadata::AsciiMetadataValue::try_from(uid)
            .map_err(|_| format!("{uid:?} is not a valid uid"))?;
        let identity = cluster.caller_to(callee)?;
        Ok(Self { uid, identity })
    }
}

impl tonic::service::Interceptor for Acting {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = self.identity.call(request)?;
        request
            .metadata_mut()
            .insert(parley_server::caller::UID_HEADER, self.uid.clone());
        Ok(request)
    }
}

/// A lazily connected channel to a service of the cluster.
pub fn channel(cluster: &Cluster, service: &str) -> Result<Channel, String> {
    parley_server::lazy_channel(service, &cluster.url(service))
}

/// Creates a group of `members` users (`prefix-00000`...) as the first one.
pub async fn create_group(cluster: &Cluster, prefix: &str, members: usize) -> Result<u64, String> {
    let uid = |i: usize| format!("{prefix}-{i:05}");
    let channel = channel(cluster, "message")?;
    let mut client =
        MessageServiceClient::with_interceptor(channel, Acting::new(cluster, &uid(0), "message")?);
    let uids: Vec<String> = (1..members).map(uid).collect();
    let mut chunks = uids.chunks(1000);
    let request = mpb::CreateGroupRequest {
        kind: mpb::GroupKind::Group.into(),
        name: format!("{prefix} bench"),
        member_uids: chunks.next().map(<[String]>::to_vec).unwrap_or_default(),
    };
    let gid = client
        .create_group(request)
        .await
        .map_err(|s| format!("create group: {}", s.message()))?
        .into_inner()
        .group
        .ok_or("no group in the reply")?
        .gid;
    for chunk in chunks {
        let request = mpb::AddMembersRequest {
            gid,
            uids: chunk.to_vec(),
        };
        client
            .add_members(request)
            .await
            .map_err(|s| format!("add members: {}", s.message()))?;
    }
    Ok(gid)
}

/// What the readers and senders count.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Refused with RESOURCE_EXHAUSTED (a stream's queue, a user's rate).
    exhausted: AtomicU64,
    /// Refused with UNAVAILABLE (a service overloaded or down).
    unavailable: AtomicU64,
    /// Refusals that carried a retry hint.
    hinted: AtomicU64,
    deliveries: AtomicU64,
    acks: AtomicU64,
    /// Device streams that ended (closed by the gateway, GOAWAY, errors).
    lost: AtomicU64,
}

/// Everything shared between the load's tasks.
struct Shared {
    counters: Counters,
    delivery: Mutex<Histogram<u64>>,
    /// Send → result latency of accepted sends.
    send: Mutex<Histogram<u64>>,
    digest: Mutex<Histogram<u64>>,
    /// How the first few lost streams ended.
    lost_reasons: Mutex<Vec<String>>,
    /// (gid, seq) → when the first ack covering it was sent.
    first_ack: Mutex<HashMap<(u64, u64), u64>>,
    /// Messages per second per group, in thousandths.
    rate_milli: AtomicU64,
    /// A reader acks after this many messages (or after [`ACK_AFTER`]).
    ack_every: u64,
}

/// Calls per message in one step.
#[derive(Clone, Debug)]
pub struct Calls {
    /// (service, RPCs it answered per message).
    pub rpcs: Vec<(&'static str, f64)>,
    /// Redis commands per message.
    pub redis: f64,
}

/// The figures of one step of the ramp.
#[derive(Clone, Debug)]
pub struct Step {
    /// The send rate aimed at, messages per second over all groups.
    pub target: f64,
    /// Messages accepted per second.
    pub accepted: f64,
    /// Messages refused.
    pub refused: u64,
    /// Deliveries to devices per second.
    pub deliveries: f64,
    /// Ack frames the readers sent per second.
    pub acks: f64,
    /// Send → delivery latency.
    pub delivery: crate::report::Quantiles,
    /// First ack → sender digest latency.
    pub digest: crate::report::Quantiles,
    /// Outbox entries and pending pushes left when the senders stopped.
    pub backlog: i64,
    /// How long that backlog took to drain.
    pub drained: Duration,
    /// Rows inserted, updated and deleted per accepted message, from the
    /// step's start until its backlog drained.
    pub rows_per_message: f64,
    /// SQL statements per accepted message, counted the same way.
    pub statements_per_message: f64,
    /// The same, by kind ([`crate::cluster::STATEMENT_KINDS`]).
    pub statements_by_kind: Vec<(&'static str, f64)>,
    /// The most frequent statements per message, by their text (`--statements`).
    pub top_statements: Vec<(String, f64)>,
    /// CPU seconds per 1,000 accepted messages, per service (and the load
    /// generator itself, which shares the cores), until the backlog drained.
    pub cpu_per_1000: Vec<(&'static str, f64)>,
    /// Why MariaDB's counters could not be read, if they could not.
    pub db_error: Option<String>,
    /// RPCs and Redis commands per message, or why they were not counted.
    pub calls: Result<Calls, String>,
}

/// A running load: groups, their devices and tasks.
pub struct Load {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    groups: usize,
    /// The groups' ids.
    pub gids: Vec<u64>,
}

impl Load {
    /// Sets up `groups` groups of `members`, connects `online` of each (the
    /// sender first, `per_connection` streams on each HTTP/2 connection) and
    /// starts their readers, each acking after `ack_every` messages; nothing
    /// is sent until a step.
    pub async fn start(
        cluster: &Cluster,
        name: &str,
        (groups, members, online): (usize, usize, usize),
        (per_connection, ack_every): (usize, u64),
        progress: &dyn Fn(&str),
    ) -> Result<Self, String> {
        let _ = epoch();
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            delivery: Mutex::new(new_histogram()),
            send: Mutex::new(new_histogram()),
            digest: Mutex::new(new_histogram()),
            lost_reasons: Mutex::new(Vec::new()),
            first_ack: Mutex::new(HashMap::new()),
            rate_milli: AtomicU64::new(0),
            ack_every: ack_every.max(1),
        });
        let mut gids = Vec::new();
        for g in 0..groups {
            gids.push(create_group(cluster, &format!("{name}{g}"), members).await?);
            progress(&format!(
                "{name}: created group {}/{groups} ({members} members)",
                g + 1
            ));
        }
        let channels = gateway_channels(cluster, groups * online, per_connection).await?;
        let mut tasks = JoinSet::new();
        let mut opened = 0usize;
        for (g, gid) in gids.iter().copied().enumerate() {
            for i in 0..online {
                let channel = channels[opened % channels.len()].clone();
                let uid = format!("{name}{g}-{i:05}");
                let stream = open(channel.clone(), &uid, "bench").await?;
                opened += 1;
                let device = Device {
                    channel,
                    uid,
                    shared: shared.clone(),
                };
                if i == 0 {
                    let phase = g as f64 / groups as f64;
                    tasks.spawn(device.run(stream, move |stream, shared| {
                        sender(stream, gid, phase, shared)
                    }));
                } else {
                    tasks.spawn(device.run(stream, reader));
                }
            }
            progress(&format!("{name}: {opened} devices online"));
        }
        Ok(Self {
            shared,
            tasks,
            groups,
            gids,
        })
    }

    /// Runs one step of the ramp at `rate` messages per second over all
    /// groups for `length`, then waits for the work it left behind (outbox,
    /// pushes) so that rows and CPU are counted per message whole.
    pub async fn step(
        &self,
        cluster: &Cluster,
        rate: f64,
        length: Duration,
    ) -> Result<Step, String> {
        let shared = &self.shared;
        reset(&[&shared.delivery, &shared.digest]);
        let counters = &shared.counters;
        let start = (
            counters.accepted.load(Ordering::Relaxed),
            counters.refused.load(Ordering::Relaxed),
            counters.deliveries.load(Ordering::Relaxed),
            counters.acks.load(Ordering::Relaxed),
        );
        let cpu_before = cluster.cpu_seconds_with_load();
        let db_before = cluster.db_counters().await;
        let calls_before = cluster.call_counters().await;
        let statements = cluster.reset_statements().await;
        let started = Instant::now();
        self.drive(rate);
        tokio::time::sleep(length).await;
        self.pause();
        let elapsed = started.elapsed().as_secs_f64();
        let accepted = counters.accepted.load(Ordering::Relaxed) - start.0;
        let refused = counters.refused.load(Ordering::Relaxed) - start.1;
        let deliveries = counters.deliveries.load(Ordering::Relaxed) - start.2;
        let acks = counters.acks.load(Ordering::Relaxed) - start.3;
        let (drained, backlog) = cluster.quiesce(DRAIN_LIMIT).await?;
        // The readers' last batched acks (every 1 s) and their digests.
        tokio::time::sleep(ACK_AFTER * 2).await;
        let per_message = |count: u64| count as f64 / accepted.max(1) as f64;
        let db = match (db_before, cluster.db_counters().await) {
            (Ok(before), Ok(after)) => {
                let counted = after.since(&before);
                Ok((
                    counted.rows,
                    counted.statements,
                    crate::cluster::STATEMENT_KINDS
                        .iter()
                        .zip(counted.by_kind)
                        .map(|(kind, count)| (*kind, per_message(count)))
                        .collect::<Vec<_>>(),
                ))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let calls = match (calls_before, cluster.call_counters().await) {
            (Ok(before), Ok(after)) => Ok(Calls {
                rpcs: before
                    .rpcs
                    .iter()
                    .zip(&after.rpcs)
                    .map(|((name, before), (_, after))| {
                        (*name, per_message(after.saturating_sub(*before)))
                    })
                    .collect(),
                redis: per_message(after.redis_commands.saturating_sub(before.redis_commands)),
            }),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let thousands = (accepted as f64 / 1000.0).max(f64::MIN_POSITIVE);
        let cpu_per_1000 = cluster.cpu_since(&cpu_before, thousands);
        let top_statements = match statements {
            Ok(()) => cluster.top_statements(TOP_STATEMENTS).await,
            Err(error) => Err(error),
        }
        .unwrap_or_else(|error| {
            crate::progress(&format!("statements by text not counted: {error}"));
            Vec::new()
        })
        .into_iter()
        .map(|(text, count)| (text, per_message(count)))
        .collect();
        Ok(Step {
            target: rate,
            backlog,
            drained,
            accepted: accepted as f64 / elapsed,
            refused,
            deliveries: deliveries as f64 / elapsed,
            acks: acks as f64 / elapsed,
            delivery: quantiles(&shared.delivery),
            digest: quantiles(&shared.digest),
            rows_per_message: db.as_ref().map_or(0.0, |(rows, ..)| per_message(*rows)),
            statements_per_message: db
                .as_ref()
                .map_or(0.0, |(_, statements, _)| per_message(*statements)),
            statements_by_kind: db
                .as_ref()
                .map_or_else(|_| Vec::new(), |(.., kinds)| kinds.clone()),
            db_error: db.err(),
            calls,
            cpu_per_1000,
            top_statements,
        })
    }

    /// Drives `rate` messages per second over all groups for `length` and
    /// reports what the senders and readers saw, without waiting for any
    /// backlog: for windows of an overload and its recovery.
    pub async fn window(&self, rate: f64, length: Duration) -> Window {
        let shared = &self.shared;
        reset(&[&shared.delivery, &shared.send]);
        let counters = &shared.counters;
        let read = || {
            [
                &counters.accepted,
                &counters.exhausted,
                &counters.unavailable,
                &counters.hinted,
                &counters.lost,
                &counters.deliveries,
            ]
            .map(|c| c.load(Ordering::Relaxed))
        };
        let before = read();
        let started = Instant::now();
        self.drive(rate);
        tokio::time::sleep(length).await;
        let after = read();
        let elapsed = started.elapsed().as_secs_f64();
        let delta = |i: usize| after[i].saturating_sub(before[i]);
        Window {
            offered: rate,
            accepted: delta(0) as f64 / elapsed,
            exhausted: delta(1),
            unavailable: delta(2),
            hinted: delta(3),
            lost: delta(4),
            deliveries: delta(5) as f64 / elapsed,
            send: quantiles(&shared.send),
            delivery: quantiles(&shared.delivery),
        }
    }

    /// Sets the rate the senders keep, `rate` messages per second over all
    /// groups.
    fn drive(&self, rate: f64) {
        let per_group_milli = (rate / self.groups as f64 * 1000.0) as u64;
        self.shared
            .rate_milli
            .store(per_group_milli, Ordering::Relaxed);
    }

    /// Stops sending (the readers stay).
    pub fn pause(&self) {
        self.drive(0.0);
    }

    /// How the first lost streams ended.
    pub fn lost_reasons(&self) -> Vec<String> {
        self.shared
            .lost_reasons
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Stops every task (closing the streams).
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Empties histograms for a new step or window.
fn reset(histograms: &[&Mutex<Histogram<u64>>]) {
    for histogram in histograms {
        if let Ok(mut h) = histogram.lock() {
            h.reset();
        }
    }
}

/// The quantiles a histogram holds now.
fn quantiles(histogram: &Mutex<Histogram<u64>>) -> crate::report::Quantiles {
    histogram
        .lock()
        .map(|h| crate::report::Quantiles::of(&h))
        .unwrap_or_default()
}

/// What one window of a load saw.
#[derive(Clone, Debug)]
pub struct Window {
    /// Messages per second offered.
    pub offered: f64,
    /// Messages per second accepted.
    pub accepted: f64,
    /// Sends refused with RESOURCE_EXHAUSTED.
    pub exhausted: u64,
    /// Sends refused with UNAVAILABLE.
    pub unavailable: u64,
    /// Refusals that carried a retry hint.
    pub hinted: u64,
    /// Device streams that ended.
    pub lost: u64,
    /// Deliveries per second.
    pub deliveries: f64,
    /// Send → result latency of accepted sends.
    pub send: crate::report::Quantiles,
    /// Send → delivery latency.
    pub delivery: crate::report::Quantiles,
}

/// One device of the load: reconnects when its stream ends.
struct Device {
    channel: Channel,
    uid: String,
    shared: Arc<Shared>,
}

impl Device {
    /// Runs `role` on the stream, and again on a new stream each time the
    /// gateway ends one (counted, with the first reasons kept).
    async fn run<F, Fut>(self, mut stream: Stream, role: F)
    where
        F: Fn(Stream, Arc<Shared>) -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        loop {
            let why = role(stream, self.shared.clone()).await;
            self.shared.counters.lost.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut reasons) = self.shared.lost_reasons.lock()
                && reasons.len() < 5
            {
                reasons.push(format!("{}: {why}", self.uid));
            }
            stream = loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(stream) = open(self.channel.clone(), &self.uid, "bench").await {
                    break stream;
                }
            };
        }
    }
}

/// Why a stream ended, from what its last read returned.
fn ended(read: Result<Option<pb::ConnectResponse>, tonic::Status>) -> String {
    match read {
        Ok(Some(pb::ConnectResponse {
            frame: Some(Out::Closing(closing)),
        })) => format!("closed: {}", closing.reason),
        Ok(_) => "the stream ended".to_owned(),
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

fn content(sent_us: u64) -> Vec<u8> {
    sent_us.to_le_bytes().to_vec()
}

fn sent_at(content: &[u8]) -> Option<u64> {
    content.get(..8)?.try_into().ok().map(u64::from_le_bytes)
}

/// One group's sender: sends at the shared rate and reads its results and
/// receipt digests; returns why its stream ended. `phase` (0 to 1) is where
/// in each interval between sends it sends, so the groups' senders are spread
/// over the interval rather than all on one tick.
async fn sender(stream: Stream, gid: u64, phase: f64, shared: Arc<Shared>) -> String {
    let Stream { tx, mut rx } = stream;
    let reading = shared.clone();
    let mut results = tokio::spawn(async move {
        loop {
            let frame = match rx.message().await {
                Ok(Some(frame)) if !matches!(frame.frame, Some(Out::Closing(_))) => frame,
                other => return ended(other),
            };
            match frame.frame {
                Some(Out::SendResult(r)) => record_result(&reading, &r),
                Some(Out::ReceiptDigest(digest)) => {
                    let now = now_us();
                    let mut acks = reading.first_ack.lock().unwrap_or_else(|p| p.into_inner());
                    let mut latency = reading.digest.lock().unwrap_or_else(|p| p.into_inner());
                    for entry in digest.entries {
                        if let Some(at) = acks.remove(&(entry.gid, entry.seq)) {
                            let _ = latency.record(now.saturating_sub(at).max(1));
                        }
                    }
                }
                _ => {}
            }
        }
    });
    let mut sent = 0u64;
    let mut next = None;
    loop {
        let rate = shared.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        if rate <= 0.0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                why = &mut results => return why.unwrap_or_else(|e| e.to_string()),
            }
            next = None;
            continue;
        }
        let due =
            next.get_or_insert_with(|| Instant::now() + Duration::from_secs_f64(phase / rate));
        tokio::select! {
            () = tokio::time::sleep_until((*due).into()) => {}
            why = &mut results => return why.unwrap_or_else(|e| e.to_string()),
        }
        *due += Duration::from_secs_f64(1.0 / rate);
        sent += 1;
        let now = now_us();
        // The request id is the send's time, so its result tells the latency.
        let frame = In::Send(pb::SendFrame {
            request_id: now,
            gid,
            client_msg_id: format!("b{now}-{sent}"),
            content: content(now),
            need_receipt: true,
        });
        if tx
            .send(pb::ConnectRequest { frame: Some(frame) })
            .await
            .is_err()
        {
            results.abort();
            return "the stream's sending side closed".to_owned();
        }
    }
}

/// Counts a send's result: its latency when accepted, its code when refused.
fn record_result(shared: &Shared, result: &pb::SendResultFrame) {
    let counters = &shared.counters;
    if result.code == 0 {
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut latency) = shared.send.lock() {
            let _ = latency.record(now_us().saturating_sub(result.request_id).max(1));
        }
        return;
    }
    counters.refused.fetch_add(1, Ordering::Relaxed);
    if result.retry_after_ms > 0 {
        counters.hinted.fetch_add(1, Ordering::Relaxed);
    }
    match tonic::Code::from_i32(result.code) {
        tonic::Code::ResourceExhausted => counters.exhausted.fetch_add(1, Ordering::Relaxed),
        tonic::Code::Unavailable => counters.unavailable.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
}

/// One online reader: counts deliveries and their latency, acks in batches;
/// returns why its stream ended.
async fn reader(stream: Stream, shared: Arc<Shared>) -> String {
    let Stream { tx, mut rx } = stream;
    let mut local = new_histogram();
    let mut last: HashMap<u64, (u64, u64)> = HashMap::new(); // gid → (seq seen, seq acked)
    let mut unacked = 0u64;
    let mut ticker = tokio::time::interval(ACK_AFTER);
    loop {
        let frame = tokio::select! {
            frame = rx.message() => match frame {
                Ok(Some(frame)) if !matches!(frame.frame, Some(Out::Closing(_))) => frame,
                other => return ended(other),
            },
            _ = ticker.tick() => {
                if unacked > 0 {
                    unacked = 0;
                    ack(&tx, &mut last, &shared).await;
                    flush(&mut local, &shared);
                }
                continue;
            }
        };
        if let Some(Out::Message(message)) = frame.frame {
            shared.counters.deliveries.fetch_add(1, Ordering::Relaxed);
            if let Some(sent) = sent_at(&message.content) {
                let _ = local.record(now_us().saturating_sub(sent).max(1));
            }
            let entry = last.entry(message.gid).or_insert((0, 0));
            entry.0 = entry.0.max(message.seq);
            unacked += 1;
            if unacked >= shared.ack_every {
                unacked = 0;
                ack(&tx, &mut last, &shared).await;
                flush(&mut local, &shared);
            }
        }
    }
}

fn flush(local: &mut Histogram<u64>, shared: &Shared) {
    if let Ok(mut h) = shared.delivery.lock() {
        let _ = h.add(&*local);
    }
    local.reset();
}

async fn ack(
    tx: &mpsc::Sender<pb::ConnectRequest>,
    last: &mut HashMap<u64, (u64, u64)>,
    shared: &Shared,
) {
    let now = now_us();
    let mut entries = Vec::new();
    {
        let mut first = shared.first_ack.lock().unwrap_or_else(|p| p.into_inner());
        for (gid, (seen, acked)) in last.iter_mut() {
            if *seen > *acked {
                for seq in *acked + 1..=*seen {
                    first.entry((*gid, seq)).or_insert(now);
                }
                *acked = *seen;
                entries.push(pb::AckEntry {
                    gid: *gid,
                    up_to_seq: *seen,
                    read: true,
                });
            }
        }
    }
    if !entries.is_empty() {
        shared.counters.acks.fetch_add(1, Ordering::Relaxed);
        let frame = In::Ack(pb::AckFrame { entries });
        let _ = tx.send(pb::ConnectRequest { frame: Some(frame) }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_its_send_time() {
        assert_eq!(sent_at(&content(1_234_567)), Some(1_234_567));
        assert_eq!(sent_at(b"short"), None, "content from someone else");
    }
}
