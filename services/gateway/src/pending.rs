//! Streams still waiting for their auth frame, counted per HTTP/2 connection
//! and per client address. A stream that has not authenticated holds no
//! permit anyone else needs: a client that opens streams and never
//! authenticates is refused once it holds its own share, and every other
//! client logs in as before.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tonic::Status;

/// What a client waiting too many streams is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many unauthenticated streams one connection and one address may hold.
#[derive(Clone, Copy, Debug)]
pub struct PendingLimits {
    /// Per HTTP/2 connection (remote address and port).
    pub per_connection: usize,
    /// Per remote IP address, over all its connections.
    pub per_address: usize,
}

#[derive(Default)]
struct Counts {
    connections: HashMap<SocketAddr, usize>,
    addresses: HashMap<IpAddr, usize>,
}

/// The counts; cheap to clone, clones share them.
#[derive(Clone)]
pub struct Pending {
    limits: PendingLimits,
    counts: Arc<Mutex<Counts>>,
}

/// One stream waiting for its auth frame; dropping it (authenticated,
/// refused or gone) frees its place.
pub struct Waiting {
    counts: Arc<Mutex<Counts>>,
    peer: Option<SocketAddr>,
}

impl Pending {
    /// Counts enforcing `limits`.
    pub fn new(limits: PendingLimits) -> Self {
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    /// A place for a new stream from `peer`, or RESOURCE_EXHAUSTED with a
    /// retry hint when its connection or its address holds its share
    /// already. A stream with no known peer (not over TCP) is not counted.
    pub fn admit(&self, peer: Option<SocketAddr>) -> Result<Waiting, Status> {
        let Some(addr) = peer else {
            return Ok(Waiting {
                counts: self.counts.clone(),
                peer: None,
            });
        };
        let mut counts = lock(&self.counts);
        let on_connection = counts.connections.get(&addr).copied().unwrap_or(0);
        if on_connection >= self.limits.per_connection {
            return Err(refused("this connection", self.limits.per_connection));
        }
        let from_address = counts.addresses.get(&addr.ip()).copied().unwrap_or(0);
        if from_address >= self.limits.per_address {
            return Err(refused("this address", self.limits.per_address));
        }
        counts.connections.insert(addr, on_connection + 1);
        counts.addresses.insert(addr.ip(), from_address + 1);
        metrics::gauge!("parley_gateway_unauthenticated_streams").increment(1.0);
        Ok(Waiting {
            counts: self.counts.clone(),
            peer: Some(addr),
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(addr) = self.peer else {
            return;
        };
        let mut counts = lock(&self.counts);
        release(&mut counts.connections, addr);
        release(&mut counts.addresses, addr.ip());
        metrics::gauge!("parley_gateway_unauthenticated_streams").decrement(1.0);
    }
}

/// Takes one away from `key`'s count, forgetting keys that reach zero so the
/// maps hold only clients with a stream waiting.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn refused(from: &str, limit: usize) -> Status {
    metrics::counter!("parley_gateway_streams_refused_total", "reason" => "auth pending")
        .increment(1);
    parley_server::shed::refuse(
        parley_server::Reason::RateLimited,
        format!(
            "{from} has {limit} streams waiting for their auth frame; authenticate those first"
        ),
        RETRY_AFTER,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: [u8; 4], port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from((ip, port)))
    }

    #[test]
    fn each_connection_and_address_gets_its_share_and_no_more() {
        let pending = Pending::new(PendingLimits {
            per_connection: 2,
            per_address: 3,
        });
        let first = pending.admit(peer([10, 0, 0, 1], 1)).expect("first");
        let _second = pending.admit(peer([10, 0, 0, 1], 1)).expect("second");
        let full = pending
            .admit(peer([10, 0, 0, 1], 1))
            .map(|_| ())
            .expect_err("connection full");
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert!(parley_server::shed::retry_after(&full).is_some());
        let _third = pending
            .admit(peer([10, 0, 0, 1], 2))
            .expect("another connection");
        let address_full = pending
            .admit(peer([10, 0, 0, 1], 3))
            .map(|_| ())
            .expect_err("address full");
        assert!(address_full.message().contains("this address"));
        // Others are not affected, and a place freed is a place again.
        let _other = pending
            .admit(peer([10, 0, 0, 2], 1))
            .expect("another address");
        drop(first);
        let _again = pending.admit(peer([10, 0, 0, 1], 1)).expect("freed");
        assert!(pending.admit(None).is_ok(), "no peer: not counted");
    }

    #[test]
    fn the_counts_forget_clients_with_nothing_waiting() {
        let pending = Pending::new(PendingLimits {
            per_connection: 1,
            per_address: 1,
        });
        let waiting = pending.admit(peer([10, 0, 0, 1], 1)).expect("admitted");
        drop(waiting);
        let counts = lock(&pending.counts);
        assert!(counts.connections.is_empty() && counts.addresses.is_empty());
    }
}
