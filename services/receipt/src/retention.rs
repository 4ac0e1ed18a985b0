//! The retention job: ledger rows older than the configured age are deleted in
//! batches; from then on those messages' receipts come from the cursors, which
//! give the same answer. Receipt data is not core data (seed 002 section 7).

use std::time::Duration;

use parley_server::now_ms;

use crate::store::ReceiptStore;

const BATCH: u32 = 500;

/// Expires every ledger older than `max_age` now; returns how many messages left
/// the ledger.
pub async fn expire_once<S: ReceiptStore>(
    store: &S,
    max_age: Duration,
) -> Result<u64, crate::error::ReceiptError> {
    let cutoff = now_ms().saturating_sub(parley_server::millis(max_age));
    let mut total = 0u64;
    loop {
        let expired = store.expire_ledger(cutoff, BATCH).await?;
        total += u64::from(expired);
        if expired < BATCH {
            return Ok(total);
        }
        tracing::info!(expired = total, "retention: expiring ledger rows");
    }
}

/// Runs `expire_once` every `interval` until the task is dropped.
pub async fn run<S: ReceiptStore>(store: S, max_age: Duration, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        match expire_once(&store, max_age).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(expired, "retention: ledger rows expired"),
            Err(error) => {
                tracing::warn!(error = %error, "retention run failed; retrying next interval")
            }
        }
    }
}
