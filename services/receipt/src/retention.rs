//! The retention job: messages older than the configured age leave the ledger
//! tier and the ledger's read acks from before then are deleted, in batches;
//! from then on those messages' receipts come from the cursors alone, which
//! give the same readers without their read times. Receipt data is not core
//! data (seed 002 section 7).

use std::time::Duration;

use parley_server::{Stopping, now_ms};

use crate::store::ReceiptStore;

const BATCH: u32 = 500;

/// Expires everything in the ledger older than `max_age` now; returns how
/// many messages left the ledger tier and how many read acks were dropped.
pub async fn expire_once<S: ReceiptStore>(
    store: &S,
    max_age: Duration,
) -> Result<(u64, u64), crate::error::ReceiptError> {
    let cutoff = now_ms().saturating_sub(parley_server::millis(max_age));
    let (mut messages, mut read_acks) = (0u64, 0u64);
    loop {
        let expired = store.expire_ledger(cutoff, BATCH).await?;
        messages += u64::from(expired.messages);
        read_acks += u64::from(expired.read_acks);
        if expired.messages < BATCH && expired.read_acks < BATCH {
            return Ok((messages, read_acks));
        }
        tracing::info!(messages, read_acks, "retention: expiring the ledger");
    }
}

/// Runs `expire_once` every `interval` until the service stops.
pub async fn run<S: ReceiptStore>(
    store: S,
    max_age: Duration,
    interval: Duration,
    mut stopping: Stopping,
) {
    let mut tick = tokio::time::interval(interval);
    while stopping.tick(&mut tick).await {
        match expire_once(&store, max_age).await {
            Ok((0, 0)) => {}
            Ok((messages, read_acks)) => {
                tracing::info!(messages, read_acks, "retention: ledger expired")
            }
            Err(error) => {
                tracing::warn!(error = %error, "retention run failed; retrying next interval")
            }
        }
    }
}
