//! The scaffold every Parley service stands on: how it is started and stopped
//! (`runner`), who is calling (`caller`), the
//! request guard that applies timeouts, load shedding and per-caller rate limits
//! (`guard`), the one error convention with machine-readable reasons
//! (`error`), serving with `grpc.health.v1` and reflection (`serve`), database
//! connections for both storage backends (`db`), opaque page tokens (`page`),
//! refusals with a retry hint and bounded admission (`shed`) and logging
//! set-up (`telemetry`).

use std::time::Duration;

pub mod caller;
pub mod credentials;
pub mod db;
pub mod error;
pub mod guard;
pub mod ids;
pub mod page;
pub mod ports;
pub mod retry;
pub mod runner;
pub mod serve;
pub mod shed;
pub mod telemetry;
pub mod upstream;

pub use caller::{Caller, ServiceIdentity, Uid};
pub use error::{Error, Reason};
pub use ids::{Gid, MsgId, Seq};
pub use runner::{Background, StartError, Stopping};
pub use serve::{ServerArgs, serve, serve_with};

/// A lazily connected channel to another Parley service at `url`
/// (`http://host:port`): it connects on first use and reconnects by itself.
/// `what` names the service in the error.
pub fn lazy_channel(what: &str, url: &str) -> Result<tonic::transport::Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|_| format!("{what} URL is not a valid URI"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// Checks each item of a request's repeated `field` with `check`, in order,
/// all before anything is done: the first refusal keeps its reason and names
/// the item (`messages[3].gid`), so a malformed batch changes nothing.
pub fn check_each<T, U>(
    field: &str,
    items: Vec<T>,
    mut check: impl FnMut(T) -> Result<U, Error>,
) -> Result<Vec<U>, Error> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| check(item).map_err(|refused| refused.within(&format!("{field}[{i}]"))))
        .collect()
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// A duration in whole milliseconds, as stored timestamps count them
/// (saturating at `i64::MAX`).
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Seconds since `at_ms` (ms since the epoch), 0 for none or a future time:
/// the age of the oldest entry of a queue, for its gauge.
pub fn age_seconds(at_ms: Option<i64>) -> f64 {
    at_ms.map_or(0, |at| now_ms().saturating_sub(at).max(0)) as f64 / 1000.0
}

/// Delay before retry number `attempt` (0-based): exponential from `base`,
/// capped at `max`, then scaled by a random factor in [0.5, 1.0] so retrying
/// replicas and clients spread out.
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    backoff_with_jitter(attempt, base, max, 0.5 + rand::random::<f64>() / 2.0)
}

/// [`backoff_delay`] with a given jitter factor, clamped to [0.5, 1.0].
pub fn backoff_with_jitter(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exponential = base.saturating_mul(1u32 << attempt.min(20));
    exponential.min(max).mul_f64(jitter.clamp(0.5, 1.0))
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

/// What a service binary was asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    #[default]
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_item_is_named_by_its_index_and_keeps_its_reason() {
        let positive = |n: i64| {
            if n > 0 {
                Ok(n)
            } else {
                Err(Error::invalid("id", "must be positive"))
            }
        };
        assert_eq!(
            check_each("ids", vec![1, 2], positive).expect("all good"),
            vec![1, 2]
        );
        let refused: tonic::Status = check_each("ids", vec![1, 0, -1], positive)
            .expect_err("refused")
            .into();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(refused.message(), "ids[1].id: must be positive");
        let denied = check_each("ids", vec![1], |_| -> Result<(), Error> {
            Err(Error::refused(Reason::NotAMember))
        });
        assert_eq!(
            denied.expect_err("refused").reason(),
            Reason::NotAMember,
            "a refusal that names no field passes as it is"
        );
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let (base, max) = (Duration::from_millis(50), Duration::from_secs(5));
        assert_eq!(
            backoff_with_jitter(0, base, max, 1.0),
            Duration::from_millis(50)
        );
        assert_eq!(
            backoff_with_jitter(3, base, max, 1.0),
            Duration::from_millis(400)
        );
        assert_eq!(backoff_with_jitter(30, base, max, 1.0), max);
        assert_eq!(
            backoff_with_jitter(3, base, max, 0.5),
            Duration::from_millis(200)
        );
        let jittered = backoff_delay(3, base, max);
        assert!(jittered >= Duration::from_millis(200) && jittered <= Duration::from_millis(400));
    }
}
