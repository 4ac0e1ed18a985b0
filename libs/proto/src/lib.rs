//! The gRPC contracts of every Parley service, generated from `proto/` at build
//! time. Only handlers and clients use these types: each service converts them
//! into its own domain types at the edge.

/// `parley.gateway.v1`: the client-facing stream.
pub mod gateway {
    tonic::include_proto!("parley.gateway.v1");
}

/// `parley.message.v1`: groups, membership and messages.
pub mod message {
    tonic::include_proto!("parley.message.v1");
}

/// `parley.notification.v1`: device tokens, mutes and offline pushes.
pub mod notification {
    tonic::include_proto!("parley.notification.v1");
}

/// `parley.presence.v1`: which devices are online, and where.
pub mod presence {
    tonic::include_proto!("parley.presence.v1");
}

/// `parley.receipt.v1`: ack cursors and read receipts.
pub mod receipt {
    tonic::include_proto!("parley.receipt.v1");
}

/// Encoded descriptors of every Parley service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("parley_descriptor");
