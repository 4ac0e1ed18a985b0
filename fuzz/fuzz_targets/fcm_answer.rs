//! Whatever FCM answers (status, Retry-After, body): a bounded delay, and an
//! outcome that follows the status.
#![no_main]

use std::time::Instant;

use http::{HeaderMap, HeaderValue, header::RETRY_AFTER};
use libfuzzer_sys::fuzz_target;
use parley_notification::{
    endpoint::{MAX_RETRY_AFTER, retry_after},
    fcm::classify,
    push::Outcome,
};

fuzz_target!(|answer: (u16, &[u8], &[u8])| {
    let (status, header, body) = answer;
    let status = 100 + status % 500;
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(header) {
        headers.insert(RETRY_AFTER, value);
    }
    let after = retry_after(&headers);
    if let Some(delay) = after {
        assert!(delay <= MAX_RETRY_AFTER);
        assert!(Instant::now().checked_add(delay).is_some());
    }
    let retried = status == 429 || status >= 500;
    match classify(status, after, body) {
        Outcome::Sent => assert!((200..300).contains(&status)),
        Outcome::Retry { after: given, .. } => {
            assert!(retried);
            assert_eq!(given, after);
        }
        Outcome::BadToken { .. } => assert!(!(200..300).contains(&status)),
        Outcome::Failed { .. } => assert!(!(200..300).contains(&status) && !retried),
    }
});
