//! APNs over its HTTP/2 provider API, with token-based (.p8) authentication:
//! `POST {base}/3/device/{token}` with the push's headers and JSON, signed by
//! an ES256 provider token that is made once and renewed every 50 minutes
//! (APNs refuses tokens older than an hour and renewals more often than every
//! 20 minutes). The base URL is configurable, so tests send to a local HTTP/2
//! server, as they do for FCM; [`request`] builds what is sent and
//! [`classify`] maps each answer to what the worker does.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::{
    endpoint::Endpoint,
    push::{Device, Outcome, Push, Sender, Wording},
};

/// Apple's production endpoint.
pub const PRODUCTION_URL: &str = "https://api.push.apple.com";
/// Apple's sandbox endpoint, for development builds of an app.
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";

/// How long APNs keeps trying to reach an offline phone.
const EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// How long one provider token is used: under APNs' hour, over its 20 minutes.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);
/// The longest device token accepted (APNs' are 64 hex digits today; Apple
/// says they may grow).
const MAX_TOKEN_LEN: usize = 200;

/// Which kind of push APNs is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PushStyle {
    /// A visible alert with badge and sound (`apns-push-type: alert`, priority 10).
    Alert,
    /// A silent wake-up the app turns into its own notification
    /// (`apns-push-type: background`, `content-available`, priority 5).
    Background,
}

/// One push to one device, as APNs is asked for it.
#[derive(Debug, PartialEq)]
pub struct Notification {
    /// The path: `/3/device/{token}`.
    pub path: String,
    /// `apns-*` headers, in the order sent.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON payload.
    pub body: Value,
}

/// The notification for `push` to `device`: `apns-topic` is the device's app,
/// `apns-collapse-id` the group, the badge the unread count, and the ids under
/// the `parley` key; with [`Wording::Keys`], the alert's `loc-key` and
/// `loc-args`. `None` for a token that cannot be an APNs token (hex digits
/// only), which would otherwise change the request's path.
pub fn request(
    device: &Device,
    push: &Push,
    style: PushStyle,
    wording: Wording,
    now_unix: u64,
) -> Option<Notification> {
    let token = &device.token;
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !token.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let (push_type, priority) = match style {
        PushStyle::Alert => ("alert", "10"),
        PushStyle::Background => ("background", "5"),
    };
    let mut aps = match style {
        PushStyle::Alert => json!({
            "alert": { "title": push.title(), "body": push.body() },
            "badge": push.badge,
            "sound": "default",
        }),
        PushStyle::Background => json!({ "content-available": 1, "badge": push.badge }),
    };
    if style == PushStyle::Alert && wording == Wording::Keys {
        let (key, args) = push.body_key();
        aps["alert"]["loc-key"] = json!(key);
        aps["alert"]["loc-args"] = json!(args);
    }
    let mut headers = vec![
        ("apns-push-type", push_type.to_owned()),
        ("apns-priority", priority.to_owned()),
        (
            "apns-expiration",
            now_unix.saturating_add(EXPIRY.as_secs()).to_string(),
        ),
        ("apns-collapse-id", push.collapse_id()),
    ];
    if !device.app_id.is_empty() {
        headers.push(("apns-topic", device.app_id.clone()));
    }
    Some(Notification {
        path: format!("/3/device/{token}"),
        headers,
        body: json!({
            "aps": aps,
            "parley": {
                "gid": push.gid,
                "first_seq": push.first_seq,
                "last_seq": push.last_seq,
                "msgid": push.last_msgid,
                "count": push.count,
            },
        }),
    })
}

/// What an APNs answer means. 410 `Unregistered`, 400 `BadDeviceToken` and
/// `DeviceTokenNotForTopic` forget the token; 429, 5xx and the reasons that
/// say "later" (`TooManyRequests`, `Shutdown`, `ExpiredProviderToken`, ...)
/// are retried; anything else is a permanent failure.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Sent;
    }
    let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let why = answer["reason"].as_str().unwrap_or_default();
    // The reason goes into logs and the dead-letter table: a documented name,
    // never whatever text a server sent.
    let known = REASONS.contains(&why);
    let reason = if known {
        format!("APNs {status} {why}")
    } else {
        format!("APNs {status}")
    };
    match why {
        "Unregistered" | "BadDeviceToken" | "DeviceTokenNotForTopic" => {
            Outcome::BadToken { reason }
        }
        "TooManyRequests"
        | "InternalServerError"
        | "ServiceUnavailable"
        | "Shutdown"
        | "IdleTimeout"
        | "ExpiredProviderToken" => Outcome::Retry {
            after: retry_after,
            reason,
        },
        _ if status == 429 || status >= 500 => Outcome::Retry {
            after: retry_after,
            reason,
        },
        _ => Outcome::Failed { reason },
    }
}

/// The reasons APNs documents.
const REASONS: &[&str] = &[
    "BadCollapseId",
    "BadDeviceToken",
    "BadExpirationDate",
    "BadMessageId",
    "BadPriority",
    "BadTopic",
    "DeviceTokenNotForTopic",
    "DuplicateHeaders",
    "IdleTimeout",
    "InvalidPushType",
    "MissingDeviceToken",
    "MissingTopic",
    "PayloadEmpty",
    "TopicDisallowed",
    "BadCertificate",
    "BadCertificateEnvironment",
    "ExpiredProviderToken",
    "Forbidden",
    "InvalidProviderToken",
    "MissingProviderToken",
    "BadPath",
    "MethodNotAllowed",
    "Unregistered",
    "PayloadTooLarge",
    "TooManyProviderTokenUpdates",
    "TooManyRequests",
    "InternalServerError",
    "ServiceUnavailable",
    "Shutdown",
];

/// Why the APNs sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ApnsSetupError {
    /// The .p8 key is not a PKCS#8 P-256 key in PEM.
    #[error("the APNs key is not a .p8 (PKCS#8 P-256 PEM) key: {0}")]
    Key(jsonwebtoken::errors::Error),
    /// The HTTP client could not be built.
    #[error("APNs HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The provider token: an ES256 JWT naming the key and the team, made when
/// first needed and again once it is [`TOKEN_LIFETIME`] old (or APNs says it
/// expired).
struct ProviderToken {
    key: EncodingKey,
    header: Header,
    team_id: String,
    current: Mutex<Option<(String, Instant)>>,
}

impl ProviderToken {
    fn new(pkcs8_pem: &[u8], key_id: &str, team_id: &str) -> Result<Self, ApnsSetupError> {
        let key = EncodingKey::from_ec_pem(pkcs8_pem).map_err(ApnsSetupError::Key)?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key_id.to_owned());
        let token = Self {
            key,
            header,
            team_id: team_id.to_owned(),
            current: Mutex::new(None),
        };
        // Sign once now: a key that cannot sign stops the start, not a push.
        token.bearer().map_err(ApnsSetupError::Key)?;
        Ok(token)
    }

    /// The token held and when it was made, even if a holder panicked.
    fn current(&self) -> MutexGuard<'_, Option<(String, Instant)>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The token to send now.
    fn bearer(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let mut current = self.current();
        if let Some((token, made)) = current.as_ref()
            && made.elapsed() < TOKEN_LIFETIME
        {
            return Ok(token.clone());
        }
        let issued_at = parley_server::now_ms() / 1000;
        let claims = json!({ "iss": self.team_id, "iat": issued_at });
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key)?;
        *current = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// APNs refused `token` as expired: the next push makes a new one.
    fn expired(&self, token: &str) {
        let mut current = self.current();
        if current.as_ref().is_some_and(|(held, _)| held == token) {
            *current = None;
        }
    }
}

/// Sends through APNs.
pub struct ApnsSender {
    endpoint: Endpoint,
    token: ProviderToken,
    style: PushStyle,
    wording: Wording,
}

/// The .p8 key provider tokens are signed with, and whose it is (both ids
/// from the Apple developer account).
#[derive(Clone, Copy)]
pub struct ApnsKey<'a> {
    /// The key, PKCS#8 PEM.
    pub pkcs8_pem: &'a [u8],
    /// The key's id.
    pub key_id: &'a str,
    /// The team's id.
    pub team_id: &'a str,
}

impl ApnsSender {
    /// A sender signing with `key`, posting to `base_url` ([`PRODUCTION_URL`],
    /// [`SANDBOX_URL`], or a stand-in: plain `http://` is HTTP/2 without TLS),
    /// pushes of `style` worded as `wording` says, at most `max_in_flight`
    /// requests at once.
    pub fn new(
        key: ApnsKey<'_>,
        base_url: &str,
        style: PushStyle,
        wording: Wording,
        max_in_flight: usize,
        timeout: Duration,
    ) -> Result<Self, ApnsSetupError> {
        Ok(Self {
            endpoint: Endpoint::new(base_url, max_in_flight, timeout)?,
            token: ProviderToken::new(key.pkcs8_pem, key.key_id, key.team_id)?,
            style,
            wording,
        })
    }
}

#[tonic::async_trait]
impl Sender for ApnsSender {
    async fn send(&self, device: &Device, push: &Push) -> Outcome {
        let now = u64::try_from(parley_server::now_ms() / 1000).unwrap_or_default();
        let Some(notification) = request(device, push, self.style, self.wording, now) else {
            return Outcome::BadToken {
                reason: "not an APNs device token (hex digits)".into(),
            };
        };
        let bearer = match self.token.bearer() {
            Ok(bearer) => bearer,
            Err(error) => {
                return Outcome::Failed {
                    reason: format!("APNs provider token not signed: {error}"),
                };
            }
        };
        let mut request = self
            .endpoint
            .post(&self.endpoint.url(&notification.path))
            .bearer_auth(&bearer)
            .json(&notification.body);
        for (name, value) in &notification.headers {
            request = request.header(*name, value);
        }
        let (status, outcome) = self.endpoint.send("APNs", request, classify).await;
        if status == Some(403) && matches!(outcome, Outcome::Retry { .. }) {
            self.token.expired(&bearer);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Platform;

    fn device() -> Device {
        Device {
            uid: "u".into(),
            device_id: "phone".into(),
            platform: Platform::Apns,
            token: "ab".repeat(32),
            app_id: "com.example.chat".into(),
            locale: "en-GB".into(),
        }
    }

    fn push() -> Push {
        Push {
            gid: 12,
            group_name: "Design".into(),
            count: 3,
            first_seq: 8,
            last_seq: 10,
            last_msgid: 77,
            badge: 5,
        }
    }

    fn header<'a>(notification: &'a Notification, name: &str) -> Option<&'a str> {
        notification
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn alert_carries_the_documented_headers_and_payload() {
        let (device, push) = (device(), push());
        let sent =
            request(&device, &push, PushStyle::Alert, Wording::Text, 1_000).expect("a request");
        assert_eq!(sent.path, format!("/3/device/{}", device.token));
        assert_eq!(header(&sent, "apns-topic"), Some("com.example.chat"));
        assert_eq!(header(&sent, "apns-collapse-id"), Some("parley-group-12"));
        assert_eq!(header(&sent, "apns-push-type"), Some("alert"));
        assert_eq!(header(&sent, "apns-priority"), Some("10"));
        assert_eq!(header(&sent, "apns-expiration"), Some("87400"));
        let json = &sent.body;
        assert_eq!(json["aps"]["alert"]["title"], "Design");
        assert_eq!(json["aps"]["alert"]["body"], "3 new messages in Design");
        assert_eq!(json["aps"]["badge"], 5);
        assert_eq!(json["aps"]["sound"], "default");
        assert_eq!(json["parley"]["gid"], 12);
        assert_eq!(json["parley"]["last_seq"], 10);
        assert_eq!(json["parley"]["count"], 3);
    }

    #[test]
    fn background_push_is_silent() {
        let sent = request(&device(), &push(), PushStyle::Background, Wording::Keys, 0)
            .expect("a request");
        assert_eq!(header(&sent, "apns-push-type"), Some("background"));
        assert_eq!(header(&sent, "apns-priority"), Some("5"));
        assert_eq!(sent.body["aps"]["content-available"], 1);
        assert!(sent.body["aps"].get("alert").is_none());
        assert_eq!(sent.body["aps"]["badge"], 5);
    }

    #[test]
    fn keys_word_the_alert_for_the_phone_to_translate() {
        let text =
            request(&device(), &push(), PushStyle::Alert, Wording::Text, 0).expect("a request");
        assert!(text.body["aps"]["alert"].get("loc-key").is_none());
        let keyed =
            request(&device(), &push(), PushStyle::Alert, Wording::Keys, 0).expect("a request");
        let alert = &keyed.body["aps"]["alert"];
        assert_eq!(alert["loc-key"], "PARLEY_NEW_MESSAGES");
        assert_eq!(alert["loc-args"], json!(["3", "Design"]));
        assert_eq!(alert["title"], "Design");
        assert_eq!(alert["body"], "3 new messages in Design");
        let one = Push { count: 1, ..push() };
        let keyed =
            request(&device(), &one, PushStyle::Alert, Wording::Keys, 0).expect("a request");
        assert_eq!(keyed.body["aps"]["alert"]["loc-key"], "PARLEY_NEW_MESSAGE");
        assert_eq!(keyed.body["aps"]["alert"]["loc-args"], json!(["Design"]));
    }

    #[test]
    fn a_token_that_is_not_hex_is_never_put_in_the_path() {
        for token in [
            "",
            "../../3/device/ab",
            "ab/cd",
            "ab?x=1",
            "zz",
            &"a".repeat(201),
        ] {
            let device = Device {
                token: token.to_owned(),
                ..device()
            };
            assert_eq!(
                request(&device, &push(), PushStyle::Alert, Wording::Text, 0),
                None,
                "{token:?}"
            );
        }
    }

    fn answer(status: u16, reason: &str) -> Outcome {
        classify(
            status,
            None,
            json!({ "reason": reason }).to_string().as_bytes(),
        )
    }

    #[test]
    fn each_answer_maps_to_its_action() {
        assert_eq!(classify(200, None, b""), Outcome::Sent);
        for (status, reason) in [
            (410, "Unregistered"),
            (400, "BadDeviceToken"),
            (400, "DeviceTokenNotForTopic"),
        ] {
            assert!(
                matches!(answer(status, reason), Outcome::BadToken { .. }),
                "{status} {reason} should forget the token"
            );
        }
        for (status, reason) in [
            (429, "TooManyRequests"),
            (500, "InternalServerError"),
            (503, "ServiceUnavailable"),
            (503, "Shutdown"),
            (403, "ExpiredProviderToken"),
            (429, "TooManyProviderTokenUpdates"),
            (502, ""),
        ] {
            assert!(
                matches!(answer(status, reason), Outcome::Retry { after: None, .. }),
                "{status} {reason} should be retried"
            );
        }
        for (status, reason) in [
            (400, "BadTopic"),
            (413, "PayloadTooLarge"),
            (403, "InvalidProviderToken"),
            (400, "MissingTopic"),
        ] {
            assert!(
                matches!(answer(status, reason), Outcome::Failed { .. }),
                "{status} {reason} should give up"
            );
        }
        assert_eq!(
            answer(410, "Unregistered"),
            Outcome::BadToken {
                reason: "APNs 410 Unregistered".into()
            }
        );
        assert_eq!(
            classify(429, Some(Duration::from_secs(4)), b"not json"),
            Outcome::Retry {
                after: Some(Duration::from_secs(4)),
                reason: "APNs 429".into()
            }
        );
        // Text APNs does not document stays out of the reason.
        assert_eq!(
            answer(400, "secret-looking text"),
            Outcome::Failed {
                reason: "APNs 400".into()
            }
        );
    }

    #[test]
    fn the_provider_token_is_reused_until_it_expires_or_is_refused() {
        let key = parley_testkit::apns::KEY_PEM.as_bytes();
        let token = ProviderToken::new(key, "KEY1234567", "TEAM123456").expect("the test key");
        let first = token.bearer().expect("signed");
        assert_eq!(token.bearer().expect("signed"), first, "reused");
        let header = jsonwebtoken::decode_header(&first).expect("a JWT");
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("KEY1234567"));
        token.expired("another token");
        assert_eq!(
            token.bearer().expect("signed"),
            first,
            "only its own refusal counts"
        );
        token.expired(&first);
        assert!(
            token.current.lock().expect("lock").is_none(),
            "made anew next time"
        );
        assert!(ProviderToken::new(b"not a key", "K", "T").is_err());
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn reason() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("Unregistered".to_owned()),
                Just("BadDeviceToken".to_owned()),
                Just("TooManyRequests".to_owned()),
                Just("Shutdown".to_owned()),
                Just("BadTopic".to_owned()),
                "\\PC{0,24}",
            ]
        }

        proptest::proptest! {
            /// Whatever APNs answers, a token is forgotten only for the three
            /// reasons that mean it is dead, 429 and 5xx are always retried
            /// otherwise, and no answer carries a delay APNs did not give.
            #[test]
            fn any_answer_is_classified_by_its_code_and_reason(status in prop_oneof![100u16..200, 300u16..600], reason in reason(), raw in proptest::option::of(".{0,64}")) {
                let throttled = status == 429 || status >= 500;
                // The body names the reason, or is any text at all.
                let (bytes, dead) = match raw {
                    None => (
                        json!({ "reason": reason }).to_string(),
                        matches!(reason.as_str(), "Unregistered" | "BadDeviceToken" | "DeviceTokenNotForTopic"),
                    ),
                    Some(raw) => (raw, false),
                };
                match classify(status, None, bytes.as_bytes()) {
                    Outcome::Sent => proptest::prop_assert!(false, "an error answer is not sent"),
                    Outcome::BadToken { .. } => proptest::prop_assert!(dead),
                    Outcome::Retry { after, .. } => {
                        proptest::prop_assert!(!dead);
                        proptest::prop_assert_eq!(after, None);
                    }
                    Outcome::Failed { .. } => proptest::prop_assert!(!dead && !throttled),
                }
            }
        }
    }
}
