//! Whatever APNs answers (code, reason as a2 reads it from the body): a token
//! is forgotten only for a reason that says it is dead, 429 and 5xx are
//! retried otherwise, and no retry carries a delay APNs did not give.
#![no_main]

use a2::{ErrorBody, ErrorReason, Response};
use libfuzzer_sys::fuzz_target;
use parley_notification::{apns::classify, push::Outcome};

fuzz_target!(|answer: (u16, &str)| {
    let (code, reason) = answer;
    let code = 100 + code % 500;
    let reason: Option<ErrorReason> =
        serde_json::from_value(serde_json::Value::String(reason.to_owned())).ok();
    let dead = matches!(
        reason,
        Some(
            ErrorReason::Unregistered
                | ErrorReason::BadDeviceToken
                | ErrorReason::DeviceTokenNotForTopic
        )
    );
    let throttled = code == 429 || code >= 500;
    let error = reason.map(|reason| ErrorBody {
        reason,
        timestamp: None,
    });
    let response = Response {
        error,
        apns_id: None,
        code,
    };
    match classify(Err(a2::Error::ResponseError(response))) {
        Outcome::Sent => panic!("an error answer is not sent"),
        Outcome::BadToken { .. } => assert!(dead),
        Outcome::Retry { after, .. } => {
            assert!(!dead);
            assert_eq!(after, None);
        }
        Outcome::Failed { .. } => assert!(!dead && !throttled),
    }
});
