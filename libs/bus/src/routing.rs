//! Finding the gateways to publish to: every publisher (the message service's
//! fan-out, the receipt service's digests) asks presence where users are, in
//! batches, and publishes once per gateway.

use std::collections::BTreeSet;

use parley_proto::presence as ppb;
use parley_server::upstream::PresenceClient;

/// The budget of this process's presence lookups' retries.
static RETRIES: std::sync::LazyLock<parley_server::retry::Retries> =
    std::sync::LazyLock::new(parley_server::retry::Retries::default);

/// Users per BatchGetPresence call (the RPC's limit).
const PRESENCE_BATCH: usize = 10_000;

/// One user and the gateways holding one of its devices (empty: offline).
pub type Located = (String, BTreeSet<String>);

/// Where each of `uids` is, in the order given.
pub async fn locate(
    presence: &PresenceClient,
    uids: &[String],
) -> Result<Vec<Located>, tonic::Status> {
    Ok(locate_devices(presence, uids)
        .await?
        .into_iter()
        .map(|(uid, gateways, _)| (uid, gateways))
        .collect())
}

/// [`locate`], with how many devices each user has connected.
pub async fn locate_devices(
    presence: &PresenceClient,
    uids: &[String],
) -> Result<Vec<(String, BTreeSet<String>, usize)>, tonic::Status> {
    let mut located = Vec::with_capacity(uids.len());
    for chunk in uids.chunks(PRESENCE_BATCH) {
        let request = ppb::BatchGetPresenceRequest {
            uids: chunk.to_vec(),
        };
        // A read: tried again, within the budget, while presence restarts.
        let reply = RETRIES
            .idempotent(|| {
                let (mut presence, request) = (presence.clone(), request.clone());
                async move { presence.batch_get_presence(request).await }
            })
            .await?;
        located.extend(reply.into_inner().users.into_iter().map(|user| {
            let devices = user.devices.len();
            let gateways = user.devices.into_iter().map(|d| d.gateway_id).collect();
            (user.uid, gateways, devices)
        }));
    }
    Ok(located)
}
