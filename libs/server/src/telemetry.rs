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

/// Installs the process's Prometheus recorder and serves it over HTTP at
/// `addr` (any path answers with the text exposition). Does nothing for `None`.
pub fn serve_metrics(addr: Option<std::net::SocketAddr>) -> Result<(), String> {
    let Some(addr) = addr else {
        return Ok(());
    };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    tracing::info!(%addr, "Prometheus metrics served");
    Ok(())
}
