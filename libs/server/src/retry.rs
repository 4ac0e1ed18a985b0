//! Retrying idempotent calls to other services, within a budget: a call that
//! met UNAVAILABLE (the callee restarting, a connection reset) is tried
//! again after a short jittered pause, at most twice, and only while the
//! caller's deadline allows and the budget has room. The budget lets retries
//! add at most a fifth to the calls made (plus a few a second), so an outage
//! is not met with a storm of retries.

use std::{future::Future, sync::Arc, time::Duration};

use tonic::{Code, Status};
use tower::retry::budget::{Budget, TpsBudget};

/// Most tries of one call.
const MAX_TRIES: u32 = 3;
/// Pause before the first retry; doubled for the next, with jitter.
const FIRST_PAUSE: Duration = Duration::from_millis(25);
/// Longest pause between tries.
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// A retry budget shared by every call of one client (cheap to clone).
#[derive(Clone)]
pub struct Retries(Arc<TpsBudget>);

impl Default for Retries {
    /// Retries may add 20% to the calls of the last 10 s, and 10 a second.
    fn default() -> Self {
        Self(Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)))
    }
}

impl std::fmt::Debug for Retries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Retries")
    }
}

impl Retries {
    /// Runs `call` (which must be idempotent: a read, or a write the callee
    /// deduplicates) and tries it again on UNAVAILABLE while tries, the
    /// budget and the deadline of the RPC being handled (if any) allow.
    pub async fn idempotent<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.0.deposit();
        let mut tries = 1;
        loop {
            let status = match call().await {
                Ok(answer) => return Ok(answer),
                Err(status) => status,
            };
            let pause = crate::backoff_delay(tries - 1, FIRST_PAUSE, MAX_PAUSE);
            let in_time = crate::guard::remaining().is_none_or(|left| left > pause);
            if status.code() != Code::Unavailable
                || tries >= MAX_TRIES
                || !in_time
                || !self.0.withdraw()
            {
                return Err(status);
            }
            metrics::counter!("parley_internal_retries_total").increment(1);
            tokio::time::sleep(pause).await;
            tries += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A call that fails with `code` its first `failures` times.
    async fn flaky(tried: &AtomicU32, failures: u32, code: Code) -> Result<u32, Status> {
        let n = tried.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= failures {
            Err(Status::new(code, "flaky"))
        } else {
            Ok(n)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_is_tried_again_up_to_three_times_and_nothing_else_is() {
        let retries = Retries::default();
        let tried = AtomicU32::new(0);
        let answer = retries
            .idempotent(|| flaky(&tried, 2, Code::Unavailable))
            .await;
        assert_eq!(answer.ok(), Some(3), "two failures, then the answer");

        let tried = AtomicU32::new(0);
        let answer = retries
            .idempotent(|| flaky(&tried, 5, Code::Unavailable))
            .await;
        assert_eq!(answer.map_err(|s| s.code()), Err(Code::Unavailable));
        assert_eq!(tried.load(Ordering::SeqCst), 3, "at most three tries");

        for code in [
            Code::NotFound,
            Code::PermissionDenied,
            Code::DeadlineExceeded,
        ] {
            let tried = AtomicU32::new(0);
            let answer = retries.idempotent(|| flaky(&tried, 1, code)).await;
            assert_eq!(answer.map_err(|s| s.code()), Err(code));
            assert_eq!(tried.load(Ordering::SeqCst), 1, "{code:?} is not retried");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_spends_the_budget_and_then_calls_fail_at_once() {
        let retries = Retries::default();
        let tried = AtomicU32::new(0);
        for _ in 0..100 {
            let _ = retries
                .idempotent(|| flaky(&tried, u32::MAX, Code::Unavailable))
                .await;
        }
        // 100 calls; without a budget 300 tries. The budget allows its
        // reserve of 10 a second over 10 s plus a fifth of the calls.
        let made = tried.load(Ordering::SeqCst);
        assert!(made < 300, "{made} tries: the budget did not hold");
        assert!(made > 100, "{made} tries: no retry at all");
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_outlives_the_callers_deadline() {
        let retries = Retries::default();
        let tried = AtomicU32::new(0);
        let soon = tokio::time::Instant::now() + Duration::from_millis(1);
        let answer = crate::guard::within(soon, async {
            retries
                .idempotent(|| flaky(&tried, 1, Code::Unavailable))
                .await
        })
        .await;
        assert_eq!(answer.map_err(|s| s.code()), Err(Code::Unavailable));
        assert_eq!(tried.load(Ordering::SeqCst), 1);
    }
}
