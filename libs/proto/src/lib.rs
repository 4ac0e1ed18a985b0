//! The gRPC contracts of every Parley service, generated from `proto/` at build
//! time. Only handlers and clients use these types: each service converts them
//! into its own domain types at the edge.

/// The generated code, nested as the proto packages are so that references
/// between packages resolve.
mod generated {
    pub mod parley {
        pub mod bus {
            pub mod v1 {
                tonic::include_proto!("parley.bus.v1");
            }
        }
        pub mod gateway {
            pub mod v1 {
                tonic::include_proto!("parley.gateway.v1");
            }
        }
        pub mod message {
            pub mod v1 {
                tonic::include_proto!("parley.message.v1");
            }
        }
        pub mod notification {
            pub mod v1 {
                tonic::include_proto!("parley.notification.v1");
            }
        }
        pub mod presence {
            pub mod v1 {
                tonic::include_proto!("parley.presence.v1");
            }
        }
        pub mod receipt {
            pub mod v1 {
                tonic::include_proto!("parley.receipt.v1");
            }
        }
    }
}

/// `parley.bus.v1`: events on the gateways' bus channels (not a gRPC service).
pub use generated::parley::bus::v1 as bus;
/// `parley.gateway.v1`: the client-facing stream.
pub use generated::parley::gateway::v1 as gateway;
/// `parley.message.v1`: groups, membership and messages.
pub use generated::parley::message::v1 as message;
/// `parley.notification.v1`: device tokens, mutes and offline pushes.
pub use generated::parley::notification::v1 as notification;
/// `parley.presence.v1`: which devices are online, and where.
pub use generated::parley::presence::v1 as presence;
/// `parley.receipt.v1`: ack cursors and read receipts.
pub use generated::parley::receipt::v1 as receipt;

/// Encoded descriptors of every Parley service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("parley_descriptor");
