//! What the services tell their operators: Prometheus metrics of every RPC.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Backend, Suite, create_group, send_direct, user};

/// A plain HTTP/1.1 GET; the status code and the body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics listener answers");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .await
        .expect("response read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}

/// The value of the sample whose line starts with `series` (name and labels).
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

/// Serves this process's metrics recorder on port 0 (nextest runs each test
/// in its own process, so the figures are the test's own); its address.
pub(crate) async fn serve_metrics() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("bound address");
    parley_server::telemetry::serve_metrics_on(listener).expect("metrics served");
    addr
}

#[tokio::test]
async fn metrics_endpoint_serves_rpc_counts_and_latency_histograms() {
    let addr = serve_metrics().await;
    let suite = Suite::start(Backend::Sqlite).await;
    let gid = create_group(&suite, "A", "Metrics", &["uid1"]).await;
    let mut uid1 = crate::device::Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    for i in 0..3 {
        send_direct(&suite, "A", gid, &format!("m{i}"), 8).await;
    }
    assert_eq!(uid1.messages(3, &mut Vec::new()).await.len(), 3);
    uid1.ack(gid, 3, true).await;
    let outsider = parley_proto::message::SendMessageRequest {
        gid,
        client_msg_id: "intruder".into(),
        content: b"hi".to_vec(),
        need_receipt: false,
    };
    let refused = suite
        .message(user("mallory"))
        .send_message(outsider)
        .await
        .expect_err("a non-member cannot send");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let send = "grpc_service=\"parley.message.v1.MessageService\",grpc_method=\"SendMessage\"";
    assert_eq!(
        sample(
            &text,
            &format!("parley_rpc_requests_total{{{send},grpc_code=\"OK\"}}")
        ),
        Some(3.0),
        "three sends counted OK:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("parley_rpc_requests_total{{{send},grpc_code=\"PERMISSION_DENIED\"}}")
        ),
        Some(1.0),
        "the refused send counted with its code"
    );
    assert_eq!(
        sample(
            &text,
            &format!("parley_rpc_duration_seconds_count{{{send},grpc_code=\"OK\"}}")
        ),
        Some(3.0),
        "a latency histogram, not a summary"
    );
    assert_eq!(
        sample(
            &text,
            &format!("parley_rpc_duration_seconds_bucket{{{send},grpc_code=\"OK\",le=\"+Inf\"}}")
        ),
        Some(3.0)
    );
    // The outbox's internal calls (made after the sends, asynchronously) are
    // counted by the receipt service too.
    let init = "parley_rpc_requests_total{grpc_service=\"parley.receipt.v1.ReceiptService\",grpc_method=\"InitReceiptsBatch\",grpc_code=\"OK\"}";
    parley_testkit::eventually(
        "InitReceiptsBatch counted for the three messages",
        std::time::Duration::from_secs(10),
        || async {
            let (_, text) = http_get(addr, "/metrics").await;
            (sample(&text, init) >= Some(1.0)).then_some(())
        },
    )
    .await;
    // The real-time path's own figures: connections on the gateway, fan-out
    // sizes, commit → gateway lag, and how long acks wait for their digest.
    let (_, text) = http_get(addr, "/metrics").await;
    assert_eq!(sample(&text, "parley_gateway_connections "), Some(1.0));
    assert!(
        sample(&text, "parley_outbox_depth ").is_some(),
        "the outbox backlog gauge is reported from the start"
    );
    assert_eq!(sample(&text, "parley_fanout_members_count "), Some(3.0));
    assert_eq!(
        sample(&text, "parley_fanout_members_sum "),
        Some(6.0),
        "2 members each"
    );
    assert_eq!(
        sample(&text, "parley_bus_delivery_lag_seconds_count "),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "parley_bus_publish_total{outcome=\"ok\"}"),
        Some(3.0),
        "one publish per message to the one gateway with a member online"
    );
    assert_eq!(
        sample(&text, "parley_refusals_total{reason=\"NOT_A_MEMBER\"}"),
        Some(1.0),
        "the refused send counted by its reason"
    );
    parley_testkit::eventually(
        "uid1's login backlog is timed once it is all sent",
        std::time::Duration::from_secs(10),
        || async {
            let (_, text) = http_get(addr, "/metrics").await;
            (sample(&text, "parley_gateway_backlog_seconds_count ") == Some(1.0)).then_some(())
        },
    )
    .await;
    parley_testkit::eventually(
        "the read's digest is timed",
        std::time::Duration::from_secs(10),
        || async {
            let (_, text) = http_get(addr, "/metrics").await;
            (sample(&text, "parley_receipt_digest_delay_seconds_count ") >= Some(1.0)).then_some(())
        },
    )
    .await;
    // Every metric says what it is, and none is a summary (quantiles do not
    // add up across replicas; buckets do).
    let (_, text) = http_get(addr, "/metrics").await;
    for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (name, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        assert_ne!(kind, "summary", "{name} is a summary");
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no # HELP line:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE parley_fanout_members histogram"),
        "{text}"
    );
    let (status, _) = http_get(addr, "/other").await;
    assert_eq!(status, 404);
    suite.stop().await;
}

/// Every metric the sources record is described in `telemetry::METRICS`, as
/// the kind it is recorded as, and every described metric is recorded.
#[test]
fn every_metric_recorded_is_described() {
    use parley_server::telemetry::{Kind, METRICS};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut recorded = std::collections::BTreeSet::new();
    for dir in ["services", "libs"] {
        for file in crate::layers::rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for (kind, call) in [
                (Kind::Counter, "counter!("),
                (Kind::Gauge, "gauge!("),
                (Kind::Histogram, "histogram!("),
            ] {
                for rest in text.split(call).skip(1) {
                    let name = rest
                        .trim_start()
                        .strip_prefix('"')
                        .and_then(|r| r.split('"').next());
                    if let Some(name) = name.filter(|n| n.starts_with("parley_")) {
                        recorded.insert((name.to_owned(), format!("{kind:?}")));
                    }
                }
            }
        }
    }
    let described: std::collections::BTreeSet<(String, String)> = METRICS
        .iter()
        .map(|(name, kind, _)| ((*name).to_owned(), format!("{kind:?}")))
        .collect();
    assert!(
        recorded.len() >= 30,
        "only {} metrics found",
        recorded.len()
    );
    assert_eq!(recorded, described);
}

/// The process's spans, kept in memory, with W3C propagation between the
/// in-process services exactly as between processes (each RPC's server span is
/// parented only through the `traceparent` its request carries).
fn in_memory_traces() -> (
    opentelemetry_sdk::trace::InMemorySpanExporter,
    opentelemetry_sdk::trace::SdkTracerProvider,
) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    parley_server::telemetry::install_propagator();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("parley-tests")));
    tracing::subscriber::set_global_default(subscriber)
        .expect("this test installs the process's subscriber");
    (exporter, provider)
}

#[tokio::test]
async fn one_send_is_one_trace_through_every_service() {
    let (exporter, provider) = in_memory_traces();
    let suite = Suite::start(Backend::MariaDb).await;
    // uid3 stays offline, so the send reaches the notification service too.
    let gid = create_group(&suite, "A", "Traced", &["uid1", "uid3"]).await;
    let mut a = crate::device::Device::connect(suite.gateway_addrs[0], "A", "phone").await;
    let mut uid1 = crate::device::Device::connect(suite.gateway_addrs[0], "uid1", "phone").await;
    a.send(gid, "traced-1", b"hello").await;
    let delivered = uid1.messages(1, &mut Vec::new()).await;
    assert_eq!(delivered.len(), 1);

    let offline = "/parley.notification.v1.NotificationService/EnqueueOfflineBatch";
    let spans = parley_testkit::eventually(
        "the outbox's hand-off to the notification service is traced",
        std::time::Duration::from_secs(10),
        || async {
            let _ = provider.force_flush();
            let spans = exporter.get_finished_spans().unwrap_or_default();
            // The outbox's span ends after the hand-off it contains.
            let ended = |name: &str| spans.iter().any(|s| s.name == name);
            (ended(offline) && ended("outbox.deliver")).then_some(spans)
        },
    )
    .await;
    let send = spans
        .iter()
        .find(|s| s.name == "gateway.send")
        .expect("the gateway's send span");
    let trace = send.span_context.trace_id();
    let in_trace: Vec<&str> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .map(|s| s.name.as_ref())
        .collect();
    for expected in [
        "gateway.send",
        "/parley.message.v1.MessageService/SendMessages",
        "/parley.presence.v1.PresenceService/BatchGetPresence",
        "outbox.deliver",
        "/parley.receipt.v1.ReceiptService/InitReceiptsBatch",
        offline,
    ] {
        assert!(
            in_trace.contains(&expected),
            "{expected} is not in the send's trace {trace}: {in_trace:?}"
        );
    }
    // Calls made for other reasons (creating the group, logging in) are
    // traces of their own.
    let create = spans
        .iter()
        .find(|s| s.name == "/parley.message.v1.MessageService/CreateGroup")
        .expect("CreateGroup traced");
    assert_ne!(create.span_context.trace_id(), trace);
    suite.stop().await;
}

/// The `parley_*` series a text queries: each name, a histogram's
/// `_bucket`/`_count`/`_sum` series as the histogram itself.
fn queried_metrics(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("parley_") {
        let preceded = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            let name = &tail[..end];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    names
}

/// The Grafana dashboard and the SLO rules the chart ships query only
/// metrics the services export (those `telemetry::METRICS` describes, which
/// the test above holds to the sources), so no panel or alert is silently
/// empty.
#[test]
fn the_dashboard_and_the_rules_query_only_exported_metrics() {
    let exported: std::collections::BTreeSet<&str> = parley_server::telemetry::METRICS
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/parley");
    for file in ["dashboards/parley.json", "rules/slo.rules.yaml"] {
        let text = std::fs::read_to_string(chart.join(file)).expect("the chart's file");
        let queried = queried_metrics(&text);
        assert!(queried.len() >= 5, "{file} queries metrics: {queried:?}");
        let unknown: Vec<&String> = queried
            .iter()
            .filter(|name| !exported.contains(name.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics no service exports: {unknown:?}"
        );
    }
    assert!(
        queried_metrics("rate(parley_no_such_metric_total[5m])")
            .contains("parley_no_such_metric_total"),
        "the scan finds a name it does not know"
    );
}
