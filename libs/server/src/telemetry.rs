//! Telemetry: text or JSON log lines on stderr filtered by `RUST_LOG`;
//! OpenTelemetry traces exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, with W3C trace context carried in the metadata of every internal call;
//! Prometheus metrics served at `/metrics`.

use std::sync::OnceLock;

use opentelemetry::{
    Context, global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The process's tracer provider, when traces are exported; flushed by [`shutdown`].
static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber for `service` (its OpenTelemetry
/// `service.name`). `RUST_LOG` overrides the default `info` level.
pub fn init(service: &'static str, format: LogFormat) {
    init_with(service, format, "info");
}

/// [`init`] with another filter than `info` when `RUST_LOG` is unset.
pub fn init_with(service: &'static str, format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    install_propagator();
    let provider = otlp_provider(service);
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let _ = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(colours_wanted())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    if provider.is_some() {
        tracing::info!(service, "OpenTelemetry traces exported over OTLP");
    }
}

/// Whether text log lines get colour codes: only on a terminal, and not when
/// `NO_COLOR` is set; a file, a pipe or a log collector gets plain text.
fn colours_wanted() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// W3C trace context (`traceparent`, `tracestate`) as the process's propagator.
pub fn install_propagator() {
    global::set_text_map_propagator(TraceContextPropagator::new());
}

fn otlp_provider(service: &'static str) -> Option<SdkTracerProvider> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("{service}: OTLP trace export disabled: {error}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let _ = TRACER_PROVIDER.set(provider.clone());
    Some(provider)
}

/// Flushes and stops trace export (at the end of `main`).
pub fn shutdown() {
    if let Some(provider) = TRACER_PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = tonic::metadata::AsciiMetadataValue::try_from(value);
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Puts the current span's trace context into an outgoing call's metadata.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Metadata(metadata));
    });
}

/// The trace context an incoming call carries (empty when it carries none).
pub fn extract(headers: &http::HeaderMap) -> Context {
    global::get_text_map_propagator(|propagator| propagator.extract(&Headers(headers)))
}

/// The current span's trace context as a `traceparent` value, to be stored
/// with work done later (the message outbox); empty when there is none.
pub fn current_traceparent() -> String {
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut carrier));
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the trace the first stored `traceparent` names
/// and links it to the others' traces: work done for several requests at
/// once (the outbox's batches) is found from each request's trace. Empty or
/// malformed values are skipped.
pub fn continue_traces<'a>(span: &tracing::Span, traceparents: impl IntoIterator<Item = &'a str>) {
    let mut parented = false;
    for context in traceparents.into_iter().filter_map(stored_context) {
        if parented {
            span.add_link(context.span().span_context().clone());
        } else {
            let _ = span.set_parent(context);
            parented = true;
        }
    }
}

/// The trace context a stored `traceparent` names; `None` when empty.
fn stored_context(traceparent: &str) -> Option<Context> {
    if traceparent.is_empty() {
        return None;
    }
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    Some(global::get_text_map_propagator(|propagator| {
        propagator.extract(&carrier)
    }))
}

/// What a metric is, for its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value now.
    Gauge,
    /// Observations in buckets (never a summary: buckets add up across
    /// replicas, quantiles do not).
    Histogram,
}

/// Every metric a Parley service exports, with its `# HELP` text; each is
/// described when the recorder is installed (a test holds the sources to
/// this list).
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "parley_rpc_requests_total",
        Kind::Counter,
        "RPCs answered, by grpc_service, grpc_method and grpc_code (a stream counts when it starts)",
    ),
    (
        "parley_rpc_duration_seconds",
        Kind::Histogram,
        "Time from an RPC's arrival to its response's start, by grpc_service, grpc_method and grpc_code",
    ),
    (
        "parley_internal_retries_total",
        Kind::Counter,
        "Idempotent calls to another service tried again after UNAVAILABLE",
    ),
    (
        "parley_shed_total",
        Kind::Counter,
        "Requests refused for load, by what refused them",
    ),
    (
        "parley_db_deadlocks_retried_total",
        Kind::Counter,
        "Transactions the database rolled back to break a deadlock and that were run again",
    ),
    (
        "parley_bus_publish_total",
        Kind::Counter,
        "Bus events published, by outcome",
    ),
    (
        "parley_bus_refused_total",
        Kind::Counter,
        "Bus events a gateway dropped as unsigned or forged",
    ),
    (
        "parley_bus_delivery_lag_seconds",
        Kind::Histogram,
        "Time from a message's commit to its arrival at a gateway",
    ),
    (
        "parley_fanout_members",
        Kind::Histogram,
        "Members a message's fan-out looked up",
    ),
    (
        "parley_fanout_gateways",
        Kind::Histogram,
        "Gateways a message's fan-out published to",
    ),
    (
        "parley_fanout_repair_groups",
        Kind::Gauge,
        "Groups whose failed fan-out waits to be published again",
    ),
    (
        "parley_fanout_repaired_total",
        Kind::Counter,
        "Failed fan-outs published again",
    ),
    (
        "parley_fanout_order_holds_expired_total",
        Kind::Counter,
        "Runs published without waiting longer for an earlier run of their group",
    ),
    (
        "parley_outbox_depth",
        Kind::Gauge,
        "Outbox entries not yet delivered",
    ),
    (
        "parley_outbox_dead",
        Kind::Gauge,
        "Outbox entries given up on",
    ),
    (
        "parley_outbox_oldest_age_seconds",
        Kind::Gauge,
        "Age of the oldest outbox entry not yet delivered",
    ),
    (
        "parley_receipt_init_lag_seconds",
        Kind::Histogram,
        "Time from a message's commit to the receipt service recording it",
    ),
    (
        "parley_receipt_digest_delay_seconds",
        Kind::Histogram,
        "Time from a window's first read ack to its digests being sent",
    ),
    (
        "parley_receipt_acks_ahead_total",
        Kind::Counter,
        "Groups whose acks ran past what the receipt service had recorded",
    ),
    (
        "parley_gateway_backlog_seconds",
        Kind::Histogram,
        "Time from a device's login to its whole backlog sent (every group's missed messages and the receipts since its cursor)",
    ),
    (
        "parley_refusals_total",
        Kind::Counter,
        "Requests refused, by reason (the ErrorInfo reason of the status)",
    ),
    (
        "parley_gateway_connections",
        Kind::Gauge,
        "Client streams open on this gateway",
    ),
    (
        "parley_gateway_unauthenticated_streams",
        Kind::Gauge,
        "Streams waiting for their auth frame",
    ),
    (
        "parley_gateway_streams_refused_total",
        Kind::Counter,
        "Client streams refused, by reason",
    ),
    (
        "parley_gateway_sends_refused_total",
        Kind::Counter,
        "Client sends refused, by reason",
    ),
    (
        "parley_gateway_heartbeats_refused_total",
        Kind::Counter,
        "Client heartbeats refused, by reason",
    ),
    (
        "parley_gateway_typing_dropped_total",
        Kind::Counter,
        "Typing signals dropped over the stream's rate",
    ),
    (
        "parley_gateway_ws_refused_total",
        Kind::Counter,
        "WebSocket handshakes and frames refused, by reason",
    ),
    (
        "parley_gateway_offline_calls_total",
        Kind::Counter,
        "Calls telling presence that devices went offline, by outcome",
    ),
    (
        "parley_gateway_acks_per_call",
        Kind::Histogram,
        "Acks in each AckBatch call the gateway makes",
    ),
    (
        "parley_gateway_acks_waiting",
        Kind::Gauge,
        "Acks gathered for the gateway's next AckBatch call",
    ),
    (
        "parley_push_sent_total",
        Kind::Counter,
        "Pushes a provider accepted, by platform",
    ),
    (
        "parley_push_failed_total",
        Kind::Counter,
        "Pushes given up on, by platform and reason",
    ),
    (
        "parley_push_retried_total",
        Kind::Counter,
        "Pushes put back for a retry, by platform",
    ),
    (
        "parley_push_dropped_total",
        Kind::Counter,
        "Queued messages settled without a push, by reason (muted, no_device, online, not_member, read)",
    ),
    (
        "parley_push_collapsed_total",
        Kind::Counter,
        "Messages folded into another message's push",
    ),
    (
        "parley_push_tokens_pruned_total",
        Kind::Counter,
        "Device tokens a provider said are no longer valid, removed",
    ),
    (
        "parley_push_queue_depth",
        Kind::Gauge,
        "User and group pairs waiting in the push queue",
    ),
    (
        "parley_push_queue_oldest_age_seconds",
        Kind::Gauge,
        "Age of the oldest pair in the push queue",
    ),
];

/// Describes every metric of [`METRICS`] to the installed recorder.
fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// Buckets of the histograms that count things (members, gateways, acks).
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 5_000.0, 20_000.0, 100_000.0,
];

/// Latency buckets of every `*_seconds` histogram, from 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process's Prometheus recorder and serves it over HTTP at
/// `addr` (`GET /metrics`, text exposition). Does nothing for `None`.
pub async fn serve_metrics(addr: Option<std::net::SocketAddr>) -> Result<(), String> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    serve_metrics_on(listener)?;
    tracing::info!(%addr, "Prometheus metrics served at /metrics");
    Ok(())
}

/// [`serve_metrics`] on a listener already bound (tests bind port 0).
pub fn serve_metrics_on(listener: tokio::net::TcpListener) -> Result<(), String> {
    use metrics_exporter_prometheus::Matcher;
    let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(|e| format!("metric buckets: {e}"))?;
    // Every other histogram gets count buckets: none renders as a summary.
    for &(name, kind, _) in METRICS {
        if kind == Kind::Histogram && !name.ends_with("_seconds") {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), COUNT_BUCKETS)
                .map_err(|e| format!("metric buckets: {e}"))?;
        }
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let handle = handle.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(metrics_response(&request, &handle))
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(())
}

fn metrics_response<B>(
    request: &hyper::Request<B>,
    handle: &metrics_exporter_prometheus::PrometheusHandle,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, body) = if request.uri().path() == "/metrics" {
        (hyper::StatusCode::OK, handle.render())
    } else {
        (
            hyper::StatusCode::NOT_FOUND,
            "not found: try /metrics\n".to_owned(),
        )
    };
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
