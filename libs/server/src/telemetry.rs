//! Logging set-up: text or JSON lines on stderr, filtered by `RUST_LOG`.

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

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init(format: LogFormat) {
    init_with(format, "info");
}

/// [`init`] with another filter than `info` when `RUST_LOG` is unset.
pub fn init_with(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
}

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
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            SECONDS_BUCKETS,
        )
        .map_err(|e| format!("metric buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
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
