//! Where each service listens unless told otherwise: on localhost, the
//! gateway on 50051 and the others on the next four ports, the order
//! `parley dev` binds them in. The one place these numbers are written (the
//! Helm chart's values repeat them for the cluster).

use std::net::{Ipv4Addr, SocketAddr};

/// The gateway's client stream.
pub const GATEWAY: u16 = 50051;
/// The message service.
pub const MESSAGE: u16 = 50052;
/// The presence service.
pub const PRESENCE: u16 = 50053;
/// The receipt service.
pub const RECEIPT: u16 = 50054;
/// The notification service.
pub const NOTIFICATION: u16 = 50055;

/// `port` on localhost, as a listen address.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// `port` on localhost, as the URL a client calls.
pub fn local_url(port: u16) -> String {
    format!("http://{}", local(port))
}
