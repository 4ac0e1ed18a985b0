//! Whatever APNs answers (status, a reason in its JSON body or any bytes at
//! all): a 2xx is sent and nothing else is, a token is forgotten only for a
//! reason that says it is dead, 429 and 5xx are retried otherwise, no retry
//! carries a delay APNs did not give, and the outcome's reason never echoes
//! text APNs does not document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_notification::{apns::classify, push::Outcome};

fuzz_target!(|answer: (u16, &str, &[u8])| {
    let (status, reason, raw) = answer;
    let status = 100 + status % 500;
    let named = serde_json::json!({ "reason": reason }).to_string();
    let body = if raw.is_empty() {
        named.as_bytes()
    } else {
        raw
    };
    let said = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|answer| answer["reason"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let dead = matches!(
        said.as_str(),
        "Unregistered" | "BadDeviceToken" | "DeviceTokenNotForTopic"
    );
    let throttled = status == 429 || status >= 500;
    let sent = (200..300).contains(&status);
    let reason = match classify(status, None, body) {
        Outcome::Sent => {
            assert!(sent);
            return;
        }
        Outcome::BadToken { reason } => {
            assert!(dead && !sent);
            reason
        }
        Outcome::Retry { after, reason } => {
            assert!(!dead && !sent);
            assert_eq!(after, None);
            reason
        }
        Outcome::Failed { reason } => {
            assert!(!dead && !throttled && !sent);
            reason
        }
    };
    // "APNs 503 TooManyProviderTokenUpdates" is the longest there is.
    assert!(reason.len() <= 40, "{reason}");
});
