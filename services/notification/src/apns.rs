//! APNs through `a2`, with token-based (.p8) authentication. `a2` talks only to
//! Apple's hosts, so it is tested at its boundary: [`payload`] builds what `a2`
//! sends (headers and JSON), and [`classify`] maps each of its answers to what
//! the worker does.

use std::time::Duration;

use a2::{
    CollapseId, DefaultNotificationBuilder, ErrorReason, NotificationBuilder, NotificationOptions,
    Priority, PushType, request::payload::Payload,
};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::push::{Device, Outcome, Push, Sender};

/// How long APNs keeps trying to reach an offline phone.
const EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Which kind of push APNs is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PushStyle {
    /// A visible alert with badge and sound (`apns-push-type: alert`, priority 10).
    Alert,
    /// A silent wake-up the app turns into its own notification
    /// (`apns-push-type: background`, `content-available`, priority 5).
    Background,
}

/// The strings a payload borrows.
pub struct Texts {
    title: String,
    body: String,
    collapse: String,
}

impl Texts {
    /// The texts of `push`.
    pub fn of(push: &Push) -> Self {
        Self {
            title: push.title().to_owned(),
            body: push.body(),
            collapse: push.collapse_id(),
        }
    }
}

/// The notification `a2` sends for one push to one device: `apns-topic` is the
/// device's app, `apns-collapse-id` the group, the badge the unread count, and
/// the ids under the `parley` key.
pub fn payload<'a>(
    device: &'a Device,
    push: &Push,
    texts: &'a Texts,
    style: PushStyle,
    now_unix: u64,
) -> Result<Payload<'a>, a2::Error> {
    let (push_type, priority) = match style {
        PushStyle::Alert => (PushType::Alert, Priority::High),
        PushStyle::Background => (PushType::Background, Priority::Normal),
    };
    let options = NotificationOptions {
        apns_topic: Some(&device.app_id),
        apns_collapse_id: Some(CollapseId::new(&texts.collapse)?),
        apns_push_type: Some(push_type),
        apns_priority: Some(priority),
        apns_expiration: Some(now_unix + EXPIRY.as_secs()),
        ..Default::default()
    };
    let builder = DefaultNotificationBuilder::new().set_badge(push.badge);
    let builder = match style {
        PushStyle::Alert => builder
            .set_title(&texts.title)
            .set_body(&texts.body)
            .set_sound("default"),
        PushStyle::Background => builder.set_content_available(),
    };
    let mut payload = builder.build(&device.token, options);
    payload.add_custom_data(
        "parley",
        &json!({
            "gid": push.gid,
            "first_seq": push.first_seq,
            "last_seq": push.last_seq,
            "msgid": push.last_msgid,
            "count": push.count,
        }),
    )?;
    Ok(payload)
}

/// What an `a2` answer means. 410 `Unregistered`, 400 `BadDeviceToken` and
/// `DeviceTokenNotForTopic` forget the token; 429 and 5xx (and connection
/// failures) are retried; anything else is a permanent failure.
pub fn classify(result: Result<a2::Response, a2::Error>) -> Outcome {
    let response = match result {
        Ok(_) => return Outcome::Sent,
        Err(a2::Error::ResponseError(response)) => response,
        Err(
            error @ (a2::Error::ConnectionError(_)
            | a2::Error::ClientError(_)
            | a2::Error::RequestTimeout(_)),
        ) => {
            return Outcome::Retry {
                after: None,
                reason: format!("APNs unreachable: {error}"),
            };
        }
        Err(error) => {
            return Outcome::Failed {
                reason: format!("APNs request not built: {error}"),
            };
        }
    };
    let reason = match &response.error {
        Some(body) => format!("APNs {} {:?}", response.code, body.reason),
        None => format!("APNs {}", response.code),
    };
    match response.error.map(|body| body.reason) {
        Some(
            ErrorReason::Unregistered
            | ErrorReason::BadDeviceToken
            | ErrorReason::DeviceTokenNotForTopic,
        ) => Outcome::BadToken { reason },
        Some(
            ErrorReason::TooManyRequests
            | ErrorReason::InternalServerError
            | ErrorReason::ServiceUnavailable
            | ErrorReason::Shutdown
            | ErrorReason::IdleTimeout
            | ErrorReason::ExpiredProviderToken,
        ) => Outcome::Retry {
            after: None,
            reason,
        },
        _ if response.code == 429 || response.code >= 500 => Outcome::Retry {
            after: None,
            reason,
        },
        _ => Outcome::Failed { reason },
    }
}

/// Sends through APNs.
pub struct ApnsSender {
    client: a2::Client,
    style: PushStyle,
    in_flight: Semaphore,
}

impl ApnsSender {
    /// A sender signing with the .p8 key `pkcs8_pem` (key id and team id from
    /// the Apple developer account), at most `max_in_flight` requests at once.
    pub fn new(
        pkcs8_pem: &[u8],
        key_id: &str,
        team_id: &str,
        sandbox: bool,
        style: PushStyle,
        max_in_flight: usize,
        timeout: Duration,
    ) -> Result<Self, a2::Error> {
        let endpoint = if sandbox {
            a2::Endpoint::Sandbox
        } else {
            a2::Endpoint::Production
        };
        let mut config = a2::ClientConfig::new(endpoint);
        config.request_timeout_secs = Some(timeout.as_secs().max(1));
        let client = a2::Client::token(pkcs8_pem, key_id, team_id, config)?;
        Ok(Self {
            client,
            style,
            in_flight: Semaphore::new(max_in_flight.max(1)),
        })
    }
}

#[tonic::async_trait]
impl Sender for ApnsSender {
    async fn send(&self, device: &Device, push: &Push) -> Outcome {
        let Ok(_permit) = self.in_flight.acquire().await else {
            return Outcome::Failed {
                reason: "APNs sender closed".into(),
            };
        };
        let texts = Texts::of(push);
        let now = u64::try_from(parley_server::now_ms() / 1000).unwrap_or_default();
        match payload(device, push, &texts, self.style, now) {
            Ok(payload) => classify(self.client.send(payload).await),
            Err(error) => classify(Err(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use a2::{ErrorBody, Response, request::payload::PayloadLike};
    use serde_json::Value;

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

    #[test]
    fn alert_carries_the_documented_headers_and_payload() {
        let (device, push) = (device(), push());
        let texts = Texts::of(&push);
        let payload = payload(&device, &push, &texts, PushStyle::Alert, 1_000).expect("payload");
        assert_eq!(payload.device_token, device.token);
        let options = &payload.options;
        assert_eq!(options.apns_topic, Some("com.example.chat"));
        assert_eq!(
            options.apns_collapse_id.as_ref().map(|c| c.value),
            Some("parley-group-12")
        );
        assert_eq!(options.apns_push_type, Some(PushType::Alert));
        assert!(matches!(options.apns_priority, Some(Priority::High)));
        assert_eq!(options.apns_expiration, Some(1_000 + 86_400));
        let json: Value =
            serde_json::from_str(&payload.to_json_string().expect("json")).expect("parse");
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
        let (device, push) = (device(), push());
        let texts = Texts::of(&push);
        let payload = payload(&device, &push, &texts, PushStyle::Background, 0).expect("payload");
        assert_eq!(payload.options.apns_push_type, Some(PushType::Background));
        assert!(matches!(
            payload.options.apns_priority,
            Some(Priority::Normal)
        ));
        let json: Value =
            serde_json::from_str(&payload.to_json_string().expect("json")).expect("parse");
        assert_eq!(json["aps"]["content-available"], 1);
        assert!(json["aps"].get("alert").is_none());
        assert_eq!(json["aps"]["badge"], 5);
    }

    fn answer(code: u16, reason: Option<ErrorReason>) -> Result<Response, a2::Error> {
        let response = Response {
            error: reason.map(|reason| ErrorBody {
                reason,
                timestamp: None,
            }),
            apns_id: None,
            code,
        };
        if code == 200 {
            Ok(response)
        } else {
            Err(a2::Error::ResponseError(response))
        }
    }

    #[test]
    fn each_answer_maps_to_its_action() {
        assert_eq!(classify(answer(200, None)), Outcome::Sent);
        for (code, reason) in [
            (410, ErrorReason::Unregistered),
            (400, ErrorReason::BadDeviceToken),
            (400, ErrorReason::DeviceTokenNotForTopic),
        ] {
            assert!(
                matches!(
                    classify(answer(code, Some(reason))),
                    Outcome::BadToken { .. }
                ),
                "{code} should forget the token"
            );
        }
        for (code, reason) in [
            (429, Some(ErrorReason::TooManyRequests)),
            (500, Some(ErrorReason::InternalServerError)),
            (503, Some(ErrorReason::ServiceUnavailable)),
            (503, Some(ErrorReason::Shutdown)),
            (403, Some(ErrorReason::ExpiredProviderToken)),
            (502, None),
        ] {
            assert!(
                matches!(
                    classify(answer(code, reason)),
                    Outcome::Retry { after: None, .. }
                ),
                "{code} should be retried"
            );
        }
        for (code, reason) in [
            (400, ErrorReason::BadTopic),
            (400, ErrorReason::PayloadTooLarge),
            (403, ErrorReason::InvalidProviderToken),
            (400, ErrorReason::MissingTopic),
        ] {
            assert!(
                matches!(classify(answer(code, Some(reason))), Outcome::Failed { .. }),
                "{code} should give up"
            );
        }
        assert!(matches!(
            classify(Err(a2::Error::RequestTimeout(5))),
            Outcome::Retry { .. }
        ));
        assert_eq!(
            classify(answer(410, Some(ErrorReason::Unregistered))),
            Outcome::BadToken {
                reason: "APNs 410 Unregistered".into()
            }
        );
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A reason as `a2` reads it from an APNs body: a documented name,
        /// or nothing for anything else.
        fn reason() -> impl Strategy<Value = Option<ErrorReason>> {
            prop_oneof![
                Just("Unregistered".to_owned()),
                Just("BadDeviceToken".to_owned()),
                Just("TooManyRequests".to_owned()),
                Just("Shutdown".to_owned()),
                Just("BadTopic".to_owned()),
                "\\PC{0,24}",
            ]
            .prop_map(|name| serde_json::from_value(Value::String(name)).ok())
        }

        proptest::proptest! {
            /// Whatever APNs answers, a token is forgotten only for the three
            /// reasons that mean it is dead, 429 and 5xx are always retried
            /// otherwise, and no answer carries a delay APNs did not give.
            #[test]
            fn any_answer_is_classified_by_its_code_and_reason(code in 100u16..600, reason in reason()) {
                let dead = matches!(
                    reason,
                    Some(ErrorReason::Unregistered | ErrorReason::BadDeviceToken | ErrorReason::DeviceTokenNotForTopic)
                );
                let throttled = code == 429 || code >= 500;
                match classify(Err(a2::Error::ResponseError(Response { error: reason.map(|reason| ErrorBody { reason, timestamp: None }), apns_id: None, code }))) {
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
