//! The message service fails with the shared [`parley_server::Error`]: one
//! mapping to gRPC statuses with machine-readable reasons for every service.

/// Everything a message RPC can fail with.
pub type MessageError = parley_server::Error;
