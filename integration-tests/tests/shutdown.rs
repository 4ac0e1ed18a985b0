//! Stopping a gateway the way Kubernetes does: SIGTERM to its process while
//! messages flow. Its clients are told to go, reconnect to another gateway,
//! and end up with every message once, in order.

use std::time::Duration;

use futures::StreamExt;

use parley_proto::gateway::connect_response::Frame as Out;

use crate::{
    device::Device,
    support::{
        Backend, Options, Suite, create_group, on_both_backends, send_direct, user,
        wait_for_receipts,
    },
};

const MESSAGES: u64 = 60;
const READERS: [&str; 3] = ["uid1", "uid2", "uid3"];

/// What one reader has seen: the seqs it kept (in arrival order) and the
/// repeats it dropped after reconnecting (it resyncs by seq, as clients do).
#[derive(Default)]
struct Seen {
    kept: Vec<u64>,
    repeats: usize,
}

impl Seen {
    fn last(&self) -> u64 {
        self.kept.last().copied().unwrap_or(0)
    }

    fn take(&mut self, seq: u64) {
        if seq <= self.last() {
            self.repeats += 1;
        } else {
            self.kept.push(seq);
        }
    }
}

/// Reads until the gateway says it is closing; true if it did (rather than the
/// stream just breaking).
async fn read_until_closing(device: &mut Device, seen: &mut Seen) -> bool {
    while let Some(frame) = device.try_frame(Duration::from_secs(20)).await {
        match frame {
            Out::Message(message) => seen.take(message.seq),
            Out::Closing(_) => return true,
            _ => {}
        }
    }
    false
}

#[tokio::test]
async fn sigterm_moves_a_gateways_clients_to_another_without_loss_or_disorder() {
    let suite = Suite::start(Backend::MariaDb).await;
    let process = suite.spawn_gateway_process().await;
    let gid = create_group(&suite, "A", "Handover", &READERS).await;
    let mut readers = Vec::new();
    for uid in READERS {
        readers.push(Device::connect(process.addr, uid, "phone").await);
    }

    // Messages keep coming while the gateway stops: one every 25 ms.
    let sending = {
        let message = suite.message(crate::support::user("A"));
        tokio::spawn(async move {
            let mut message = message;
            for i in 1..=MESSAGES {
                let request = parley_proto::message::SendMessageRequest {
                    gid,
                    client_msg_id: format!("handover-{i}"),
                    content: format!("message {i}").into_bytes(),
                    need_receipt: true,
                };
                message.send_message(request).await.expect("send");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    // Each reader has some messages from the process gateway; then SIGTERM.
    let mut seen: Vec<Seen> = READERS.iter().map(|_| Seen::default()).collect();
    for (device, seen) in readers.iter_mut().zip(&mut seen) {
        while seen.kept.len() < 10 {
            match device.frame().await {
                Out::Message(message) => seen.take(message.seq),
                other => panic!("unexpected frame before SIGTERM: {other:?}"),
            }
        }
    }
    process.terminate();
    for (device, seen) in readers.iter_mut().zip(&mut seen) {
        assert!(
            read_until_closing(device, seen).await,
            "{} was told the gateway is closing",
            device.uid
        );
    }
    let (status, log) = process.exited(Duration::from_secs(30)).await;
    assert!(status.success(), "the gateway exits cleanly: {status}");
    assert!(
        log.iter().any(|line| line.contains("closing stream")),
        "its log shows the goodbyes"
    );

    // They reconnect to the other gateway and resync by seq.
    let other = suite.gateway_addrs[0];
    for ((uid, device), seen) in READERS.iter().zip(readers.iter_mut()).zip(&mut seen) {
        *device = Device::connect(other, uid, "phone").await;
        while seen.last() < MESSAGES {
            if let Out::Message(message) = device.frame().await {
                seen.take(message.seq);
            }
        }
    }
    sending.await.expect("every send accepted");

    let all: Vec<u64> = (1..=MESSAGES).collect();
    for (uid, seen) in READERS.iter().zip(&seen) {
        assert_eq!(seen.kept, all, "{uid} has every message once, in order");
    }
    // Nothing more comes after the last one.
    for device in &mut readers {
        let more = device.try_frame(Duration::from_millis(300)).await;
        assert!(
            !matches!(more, Some(Out::Message(_))),
            "{}: a message after the last: {more:?}",
            device.uid
        );
    }
    suite.stop().await;
}

/// Devices of `uids` that presence has online.
async fn online(suite: &Suite, uids: &[String]) -> usize {
    let request = parley_proto::presence::BatchGetPresenceRequest {
        uids: uids.to_vec(),
    };
    let reply = suite
        .presence()
        .batch_get_presence(request)
        .await
        .expect("presence")
        .into_inner();
    reply.users.iter().map(|u| u.devices.len()).sum()
}

/// Many devices leaving one gateway at once (a network blip, a load balancer
/// draining) must all be marked offline, not left to lapse, and in batches:
/// the gateway sends presence one BatchOffline call for whatever has gathered
/// (it sent one Offline per device).
#[tokio::test]
async fn a_thousand_and_a_half_devices_leaving_at_once_all_go_offline() {
    use crate::telemetry::{http_get, sample};
    const DEVICES: usize = 1_500;
    let metrics = crate::telemetry::serve_metrics().await;
    let options = crate::support::Options {
        // Long enough that only the gateway's Offline calls can clear them.
        presence_ttl_ms: 120_000,
        heartbeat_ms: 60_000,
        ..crate::support::Options::default()
    };
    let suite = Suite::start_with(Backend::MariaDb, options).await;
    let gateway = suite.gateway_addrs[0];
    let uids: Vec<String> = (0..DEVICES).map(|i| format!("crowd-{i:05}")).collect();
    let devices: Vec<Device> = futures::stream::iter(uids.clone())
        .map(|uid| async move { Device::connect(gateway, &uid, "phone").await })
        .buffer_unordered(64)
        .collect()
        .await;
    // Presence hears of each login just after the stream is accepted. The
    // ceilings are generous: on a busy machine 1,500 logins and departures
    // take a while, and only a device that never changes state is a failure.
    parley_testkit::eventually("every device online", Duration::from_secs(120), || async {
        (online(&suite, &uids).await == DEVICES).then_some(())
    })
    .await;

    drop(devices);
    parley_testkit::eventually("every device offline", Duration::from_secs(120), || async {
        (online(&suite, &uids).await == 0).then_some(())
    })
    .await;
    let (_, text) = http_get(metrics, "/metrics").await;
    let calls = |method: &str| {
        sample(
            &text,
            &format!("parley_rpc_requests_total{{grpc_service=\"parley.presence.v1.PresenceService\",grpc_method=\"{method}\",grpc_code=\"OK\"}}"),
        )
        .unwrap_or(0.0)
    };
    let batches = calls("BatchOffline");
    assert_eq!(calls("Offline"), 0.0, "no call per device");
    assert!(
        batches >= 1.0 && batches <= (DEVICES / 2) as f64,
        "{batches} BatchOffline calls for {DEVICES} devices"
    );
    suite.stop().await;
}

/// Runs the gateway binary with no service credentials (and in development
/// mode when `dev`): its exit status if it stopped, and its log until it
/// listened or stopped.
async fn gateway_without_credentials(dev: bool) -> (Option<std::process::ExitStatus>, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley-gateway-under-test"));
    command
        .env_clear()
        .env("PARLEY_GATEWAY_LISTEN", "127.0.0.1:0")
        .env(
            "PARLEY_GATEWAY_JWT_HS256_SECRET",
            crate::support::JWT_SECRET,
        )
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if dev {
        command.env("PARLEY_DEV_MODE", "true");
    }
    let mut child = command.spawn().expect("the gateway binary starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let mut log = String::new();
    let listened = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if line.contains("gateway listening") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the gateway listens or stops within 30 s");
    if listened {
        child.start_kill().expect("stopped");
        return (None, log);
    }
    let status = child.wait().await.expect("exit status");
    (Some(status), log)
}

/// A service started without service credentials refuses to start and says
/// what to set, unless it is told it runs in development mode, where it
/// starts and warns that it trusts every call.
#[tokio::test]
async fn a_service_without_credentials_starts_only_in_development_mode() {
    let (stopped, log) = gateway_without_credentials(false).await;
    let status = stopped.expect("refused to start");
    // 2: the configuration was refused before anything was bound.
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("PARLEY_SERVICE_KEY") && log.contains("PARLEY_DEV_MODE"),
        "{log}"
    );
    let (stopped, log) = gateway_without_credentials(true).await;
    assert!(stopped.is_none(), "started in development mode: {log}");
    assert!(log.contains("development mode"), "{log}");
    // Its log goes to a pipe here: plain text, no colour codes.
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
}

/// A receipt service asked to stop still sends the digests of its last
/// window: a sender hears of a read acked just before the stop, though the
/// window (a minute here) was far from over.
async fn a_stopping_receipt_service_sends_its_last_digests(backend: Backend) {
    let options = Options {
        digest_window_ms: 60_000,
        ..Options::default()
    };
    let mut suite = Suite::start_with(backend, options).await;
    let gid = create_group(&suite, "A", "Last words", &["uid1"]).await;
    let mut sender = Device::connect(suite.gateway_addrs[0], "A", "phone").await;
    let sent = send_direct(&suite, "A", gid, "before-the-stop", 16).await;
    wait_for_receipts(&suite, gid, vec![sent.msgid], 0).await;
    let ack = parley_proto::receipt::AckRequest {
        gid,
        up_to_seq: sent.seq,
        kind: parley_proto::receipt::AckKind::Read.into(),
    };
    suite.receipt(user("uid1")).ack(ack).await.expect("ack");

    suite.stop_receipt().await;
    // Digests of earlier windows (the message's own, read by no one yet)
    // may come first; the read must come after the stop.
    let entry = loop {
        let Some(frame) = sender.try_frame(Duration::from_secs(30)).await else {
            panic!("no digest of the read after the receipt service stopped");
        };
        let Out::ReceiptDigest(digest) = frame else {
            continue;
        };
        let read = digest
            .entries
            .into_iter()
            .find(|entry| entry.msgid == sent.msgid && entry.read_count > 0);
        if let Some(entry) = read {
            break entry;
        }
    };
    assert_eq!((entry.read_count, entry.recipient_count), (1, 1));
    suite.stop().await;
}

on_both_backends!(a_stopping_receipt_service_sends_its_last_digests);
