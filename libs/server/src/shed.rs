//! Load shedding with a reason and a retry hint. A request refused because the
//! server is busy gets RESOURCE_EXHAUSTED (the caller's own quota) or
//! UNAVAILABLE (the server's capacity) with a `google.rpc.RetryInfo` detail,
//! so a caller knows when to try again; [`retry_after`] reads the hint back.
//!
//! [`Admission`] bounds the work in flight behind a bottleneck (a send's
//! transaction, say) and how long a request may queue for it: a request that
//! would wait longer is refused at once, so the latency of admitted requests
//! stays near nominal under overload instead of growing with the queue.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::{Error, Reason};

/// The longest retry hint ever given or honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A refusal for `reason` (RATE_LIMITED, OVERLOADED) with a hint to retry
/// after `retry_after`.
pub fn refuse(reason: Reason, message: impl Into<String>, retry_after: Duration) -> Status {
    Error::retry_later(reason, message.into(), retry_after).into()
}

/// The retry hint a refusal carries, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(status: &Status) -> Option<Duration> {
    let hint = status.get_details_retry_info()?.retry_delay?;
    Some(hint.min(MAX_RETRY_AFTER))
}

/// The retry hint in whole milliseconds, 0 for none: what a client frame carries.
pub fn retry_after_ms(status: &Status) -> u32 {
    retry_after(status).map_or(0, |hint| {
        u32::try_from(hint.as_millis()).unwrap_or(u32::MAX)
    })
}

/// Whether a failed call may succeed if tried again later: the callee was
/// down, busy or slow, as opposed to refusing the request itself (bad input,
/// not found, not allowed), which no retry changes.
pub fn is_transient(code: Code) -> bool {
    !matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
    )
}

/// A gate in front of a bottleneck: at most `slots` requests pass at once,
/// and a request that cannot pass within `max_wait` is refused with
/// UNAVAILABLE and a retry hint. Cheap to clone; clones share the gate.
#[derive(Clone, Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    max_wait: Duration,
    what: &'static str,
}

impl Admission {
    /// A gate of `slots` (at least 1) named `what` in refusals.
    pub fn new(what: &'static str, slots: usize, max_wait: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            max_wait,
            what,
        }
    }

    /// Waits for a slot, held until the permit is dropped.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        let slot = tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned()).await;
        match slot {
            Ok(Ok(permit)) => Ok(permit),
            // Waiting the full budget again is the earliest a retry can hope
            // to pass; jitter spreads the retries out.
            _ => {
                metrics::counter!("parley_shed_total", "what" => self.what).increment(1);
                let hint = crate::backoff_delay(1, self.max_wait, MAX_RETRY_AFTER);
                Err(refuse(
                    Reason::Overloaded,
                    format!("{} overloaded; retry later", self.what),
                    hint,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_its_retry_hint() {
        let status = refuse(Reason::Overloaded, "busy", Duration::from_millis(250));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(retry_after(&status), Some(Duration::from_millis(250)));
        assert_eq!(retry_after_ms(&status), 250);
        assert_eq!(retry_after(&Status::unavailable("no hint")), None);
        let huge = refuse(Reason::RateLimited, "slow down", Duration::MAX);
        assert_eq!(retry_after(&huge), Some(MAX_RETRY_AFTER));
    }

    #[tokio::test]
    async fn a_full_gate_refuses_after_its_wait_and_admits_once_freed() {
        let gate = Admission::new("sends", 1, Duration::from_millis(20));
        let held = gate.admit().await.expect("first slot");
        let refused = gate.admit().await.expect_err("no slot within the wait");
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(
            retry_after(&refused).is_some(),
            "the refusal says when to retry"
        );
        drop(held);
        assert!(gate.admit().await.is_ok(), "a freed slot admits");
    }
}
