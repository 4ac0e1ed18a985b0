//! Presence decisions as plain functions: entry encoding, expiry, and what a
//! heartbeat or an offline does to an existing entry.

/// One device's registration: the gateway holding it and when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The gateway holding the device's stream.
    pub gateway_id: String,
    /// When the entry lapses without a heartbeat, in ms since the epoch.
    pub expires_at_ms: i64,
}

impl Entry {
    /// The stored form: `expires_at_ms|gateway_id`.
    pub fn encode(&self) -> String {
        format!("{}|{}", self.expires_at_ms, self.gateway_id)
    }

    /// Parses the stored form; `None` for anything else.
    pub fn decode(raw: &str) -> Option<Self> {
        let (expires, gateway) = raw.split_once('|')?;
        Some(Self {
            gateway_id: gateway.to_owned(),
            expires_at_ms: expires.parse().ok()?,
        })
    }

    /// Whether the entry still counts at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.expires_at_ms > now_ms
    }
}

/// What a heartbeat from `gateway` does to a device's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The live entry is extended.
    Extend,
    /// The entry was missing or had lapsed and is registered again.
    Revive,
    /// The device is live on another gateway: this heartbeat is stale.
    Skip,
}

/// Decides a heartbeat's effect on `existing`.
pub fn refresh(existing: Option<&Entry>, gateway_id: &str, now_ms: i64) -> Refresh {
    match existing {
        Some(entry) if entry.is_live(now_ms) && entry.gateway_id != gateway_id => Refresh::Skip,
        Some(entry) if entry.is_live(now_ms) => Refresh::Extend,
        _ => Refresh::Revive,
    }
}

/// Whether an offline from `gateway_id` removes `existing`: only the gateway
/// that holds the device may take it offline, so a late offline from a
/// gateway the device has left does not hide it.
pub fn removes(existing: Option<&Entry>, gateway_id: &str) -> bool {
    existing.is_some_and(|entry| entry.gateway_id == gateway_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(gateway: &str, expires: i64) -> Entry {
        Entry {
            gateway_id: gateway.into(),
            expires_at_ms: expires,
        }
    }

    #[test]
    fn entries_round_trip_and_garbage_is_rejected() {
        let e = entry("gw-1:a|b", 1_700_000_000_000);
        assert_eq!(Entry::decode(&e.encode()), Some(e));
        assert_eq!(Entry::decode("nonsense"), None);
        assert_eq!(Entry::decode("x|gw"), None);
    }

    #[test]
    fn heartbeats_extend_revive_or_yield_to_the_current_gateway() {
        let live_here = entry("gw1", 2_000);
        let live_elsewhere = entry("gw2", 2_000);
        let lapsed = entry("gw2", 900);
        assert_eq!(refresh(Some(&live_here), "gw1", 1_000), Refresh::Extend);
        assert_eq!(refresh(Some(&live_elsewhere), "gw1", 1_000), Refresh::Skip);
        assert_eq!(refresh(Some(&lapsed), "gw1", 1_000), Refresh::Revive);
        assert_eq!(refresh(None, "gw1", 1_000), Refresh::Revive);
    }

    #[test]
    fn only_the_holding_gateway_takes_a_device_offline() {
        let e = entry("gw1", 2_000);
        assert!(removes(Some(&e), "gw1"));
        assert!(!removes(Some(&e), "gw2"));
        assert!(!removes(None, "gw1"));
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;

        proptest::proptest! {
            /// An entry with any valid gateway id survives the stored form, and
            /// whatever Redis holds decodes or is skipped, never a panic.
            #[test]
            fn entries_round_trip(gateway in "[!-{}~]{1,64}", expires in proptest::num::i64::ANY) {
                let entry = Entry { gateway_id: gateway, expires_at_ms: expires };
                proptest::prop_assert_eq!(Entry::decode(&entry.encode()), Some(entry));
            }

            #[test]
            fn any_stored_value_decodes_or_is_skipped(raw in "\\PC{0,100}") {
                if let Some(entry) = Entry::decode(&raw) {
                    proptest::prop_assert_eq!(Entry::decode(&entry.encode()), Some(entry));
                }
            }
        }
    }
}
