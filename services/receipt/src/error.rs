//! The receipt service fails with the shared [`parley_server::Error`]: one
//! mapping to gRPC statuses with machine-readable reasons for every service.

/// Everything a receipt RPC can fail with.
pub type ReceiptError = parley_server::Error;
