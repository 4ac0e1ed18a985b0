//! What the two push senders share: an HTTP client to a provider's base URL
//! (HTTP/2: negotiated over TLS, assumed in plain text, which is how a local
//! stand-in is reached), a bound on requests in flight, and reading an answer
//! (its status, `Retry-After` and body) into an [`Outcome`].

use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;

use crate::push::Outcome;

/// The longest `Retry-After` taken from a provider; a longer one (or a
/// number too large to add to a clock) reads as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What a provider's answer means: its status, `Retry-After` and body.
pub type Classify = fn(u16, Option<Duration>, &[u8]) -> Outcome;

/// A push provider's HTTP endpoint.
pub struct Endpoint {
    http: reqwest::Client,
    base_url: String,
    in_flight: Semaphore,
}

impl Endpoint {
    /// `base_url` (plain `http://` is spoken to as HTTP/2 without TLS), with
    /// at most `max_in_flight` requests at once, each within `timeout`.
    pub fn new(
        base_url: &str,
        max_in_flight: usize,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        // reqwest is built without a default TLS provider; the first sender
        // installs ring (a second install is refused and harmless).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout);
        let http = if base_url.starts_with("http://") {
            http.http2_prior_knowledge()
        } else {
            http
        };
        Ok(Self {
            http: http.build()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            in_flight: Semaphore::new(max_in_flight.max(1)),
        })
    }

    /// The URL of `path` (which starts with `/`) at this endpoint.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A POST to `url`, for [`send`](Self::send).
    pub fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.post(url)
    }

    /// Sends `request` to `provider` once a request may be in flight, and
    /// reads its answer with `classify`: the status, if an answer came, and
    /// the outcome (a request that got no answer is retried).
    pub async fn send(
        &self,
        provider: &str,
        request: reqwest::RequestBuilder,
        classify: Classify,
    ) -> (Option<u16>, Outcome) {
        let Ok(_permit) = self.in_flight.acquire().await else {
            let reason = format!("{provider} sender closed");
            return (None, Outcome::Failed { reason });
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(provider, error = %error.without_url(), "push request failed");
                let reason = format!("{provider} unreachable");
                return (
                    None,
                    Outcome::Retry {
                        after: None,
                        reason,
                    },
                );
            }
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        (Some(status), classify(status, after, &body))
    }
}

/// A `Retry-After` header, in seconds (the form FCM sends) or as an HTTP
/// date (RFC 9110 allows both), as a delay of at most [`MAX_RETRY_AFTER`]; a
/// date already past is no delay.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

/// [`retry_after`] as read at `now`.
fn retry_after_at(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_retry_after_is_clamped() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            reqwest::header::HeaderValue::from_static(" 7 "),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_retry_after_date_is_a_delay_from_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |date: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            let value = reqwest::header::HeaderValue::from_str(date).expect("a header value");
            headers.insert(reqwest::header::RETRY_AFTER, value);
            retry_after_at(&headers, now)
        };
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(at(&later), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(at(&past), Some(Duration::ZERO), "a past date: now");
        let far = httpdate::fmt_http_date(now + Duration::from_secs(86_400));
        assert_eq!(at(&far), Some(MAX_RETRY_AFTER));
        assert_eq!(at("Tuesday, soon"), None);
        assert_eq!(at("-5"), None);
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;

        proptest::proptest! {
            /// Whatever FCM sends as Retry-After is read as at most an hour, or
            /// not at all: never a panic and never a delay that overflows a clock.
            #[test]
            fn any_retry_after_is_bounded(value in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
                let mut headers = reqwest::header::HeaderMap::new();
                if let Ok(value) = reqwest::header::HeaderValue::from_bytes(&value) {
                    headers.insert(reqwest::header::RETRY_AFTER, value);
                }
                if let Some(delay) = retry_after(&headers) {
                    proptest::prop_assert!(delay <= MAX_RETRY_AFTER);
                    proptest::prop_assert!(std::time::Instant::now().checked_add(delay).is_some());
                }
            }

            #[test]
            fn numeric_retry_after_is_taken_up_to_the_cap(seconds in proptest::num::u64::ANY) {
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(reqwest::header::RETRY_AFTER, reqwest::header::HeaderValue::from(seconds));
                let expected = std::time::Duration::from_secs(seconds).min(MAX_RETRY_AFTER);
                proptest::prop_assert_eq!(retry_after(&headers), Some(expected));
            }
        }
    }
}
