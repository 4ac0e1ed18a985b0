//! Devices leaving this gateway, told to presence in batches. A session whose
//! device's last stream here ends hands the device over and is done; the
//! teller sends whatever has gathered as one `BatchOffline` call. When idle a
//! device goes at once; when many streams close together (a network blip, a
//! load balancer draining) they gather while a call is out, so 50,000
//! departures cost a handful of calls, not 50,000.

use parley_proto::presence as ppb;
use parley_server::Uid;
use parley_server::upstream::PresenceClient;
use tokio::sync::mpsc;

use crate::hub::Hub;

/// Devices in one call (presence's limit).
const MAX_PER_CALL: usize = 10_000;

/// A handle to the gateway's offline teller; cloned into every session.
#[derive(Clone, Debug)]
pub struct OfflineTeller {
    // Unbounded, yet bounded by the connections: a session hands over one
    // device, once, when it ends.
    leaving: mpsc::UnboundedSender<(Uid, String)>,
}

impl OfflineTeller {
    /// A teller and the work that sends its batches; the work ends once every
    /// handle is gone and what was handed over is sent.
    pub fn new(
        hub: Hub,
        presence: PresenceClient,
        gateway_id: String,
    ) -> (Self, impl Future<Output = ()> + Send) {
        let (leaving, departures) = mpsc::unbounded_channel();
        (
            Self { leaving },
            tell(hub, presence, gateway_id, departures),
        )
    }

    /// Hands `uid`'s device over to be marked offline.
    pub fn leave(&self, uid: Uid, device_id: String) {
        // Only fails when the gateway is gone, and its entries lapse then.
        let _ = self.leaving.send((uid, device_id));
    }
}

async fn tell(
    hub: Hub,
    mut presence: PresenceClient,
    gateway_id: String,
    mut departures: mpsc::UnboundedReceiver<(Uid, String)>,
) {
    let mut batch = Vec::new();
    while departures.recv_many(&mut batch, MAX_PER_CALL).await > 0 {
        // A device that connected here again meanwhile stays online.
        let devices: Vec<ppb::DeviceRef> = batch
            .drain(..)
            .filter(|(uid, device_id)| !hub.holds(uid, device_id))
            .map(|(uid, device_id)| ppb::DeviceRef {
                uid: uid.into_string(),
                device_id,
            })
            .collect();
        if devices.is_empty() {
            continue;
        }
        let count = devices.len();
        let request = ppb::BatchOfflineRequest {
            gateway_id: gateway_id.clone(),
            devices,
        };
        metrics::counter!("parley_gateway_offline_calls_total").increment(1);
        if let Err(status) = presence.batch_offline(request).await {
            tracing::warn!(devices = count, code = ?status.code(), error = %status.message(), "presence offline failed; the entries will lapse");
        }
    }
}
