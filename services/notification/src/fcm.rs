//! FCM through the HTTP v1 API: `POST {base}/v1/projects/{project}/messages:send`
//! with an OAuth2 bearer token from a service account (`gcp_auth`). The base URL
//! is configurable so tests run it against a local HTTP/2 server.

use std::{sync::Arc, time::Duration};

use gcp_auth::{CustomServiceAccount, TokenProvider};
use serde_json::{Value, json};

use crate::{
    endpoint::Endpoint,
    push::{Device, Outcome, Push, Sender, Wording},
};

/// The OAuth2 scope FCM requires.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's FCM endpoint.
pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";

/// Why the FCM sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FcmSetupError {
    /// The service-account key could not be read.
    #[error("FCM service account: {0}")]
    Credentials(#[from] gcp_auth::Error),
    /// The HTTP client could not be built.
    #[error("FCM HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// No project to send to.
    #[error("FCM: the service account names no project_id")]
    NoProject,
}

/// Sends through FCM HTTP v1.
pub struct FcmSender {
    endpoint: Endpoint,
    project: String,
    auth: Arc<dyn TokenProvider>,
    wording: Wording,
}

impl FcmSender {
    /// A sender authenticating with a service-account key (its JSON text),
    /// posting to `base_url`, worded as `wording` says, with at most
    /// `max_in_flight` requests at once.
    pub fn new(
        service_account_json: &str,
        base_url: &str,
        wording: Wording,
        max_in_flight: usize,
        timeout: Duration,
    ) -> Result<Self, FcmSetupError> {
        let account = CustomServiceAccount::from_json(service_account_json)?;
        let project = account
            .project_id()
            .map(str::to_owned)
            .ok_or(FcmSetupError::NoProject)?;
        Ok(Self {
            endpoint: Endpoint::new(base_url, max_in_flight, timeout)?,
            project,
            auth: Arc::new(account),
            wording,
        })
    }

    fn url(&self, device: &Device) -> String {
        let project = if device.app_id.is_empty() {
            &self.project
        } else {
            &device.app_id
        };
        self.endpoint
            .url(&format!("/v1/projects/{project}/messages:send"))
    }
}

/// The HTTP v1 request body for one push: a visible notification, the ids in
/// `data` (FCM data values are strings), and the collapse key and badge for
/// both Android and iOS devices; with [`Wording::Keys`], the text's key and
/// arguments for each.
pub fn request_body(device: &Device, push: &Push, wording: Wording) -> Value {
    let collapse = push.collapse_id();
    let mut body = json!({
        "message": {
            "token": device.token,
            "notification": { "title": push.title(), "body": push.body() },
            "data": {
                "gid": push.gid.to_string(),
                "first_seq": push.first_seq.to_string(),
                "last_seq": push.last_seq.to_string(),
                "msgid": push.last_msgid.to_string(),
                "count": push.count.to_string(),
                "badge": push.badge.to_string(),
            },
            "android": {
                "collapse_key": collapse,
                "notification": { "tag": collapse, "notification_count": push.badge },
            },
            "apns": {
                "headers": { "apns-collapse-id": collapse },
                "payload": { "aps": { "badge": push.badge } },
            },
        }
    });
    if wording == Wording::Keys {
        let (key, args) = push.body_key();
        let message = &mut body["message"];
        message["android"]["notification"]["body_loc_key"] = json!(key);
        message["android"]["notification"]["body_loc_args"] = json!(args);
        message["apns"]["payload"]["aps"]["alert"] = json!({
            "title": push.title(),
            "body": push.body(),
            "loc-key": key,
            "loc-args": args,
        });
    }
    body
}

/// What an FCM answer means. Documented error codes: `UNREGISTERED` (404) and
/// `SENDER_ID_MISMATCH` (403) mean the token is dead for us; `INVALID_ARGUMENT`
/// naming the registration token means it is malformed; `QUOTA_EXCEEDED` (429),
/// `UNAVAILABLE` (503) and `INTERNAL` (500) are retried.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Sent;
    }
    let error: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = error["error"]["message"].as_str().unwrap_or_default();
    let code = error["error"]["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|detail| detail["errorCode"].as_str())
        .or_else(|| error["error"]["status"].as_str())
        .unwrap_or_default()
        .to_owned();
    let reason = if code.is_empty() {
        format!("FCM HTTP {status}")
    } else {
        format!("FCM HTTP {status} {code}")
    };
    match (status, code.as_str()) {
        (_, "UNREGISTERED" | "SENDER_ID_MISMATCH") => Outcome::BadToken { reason },
        (400, "INVALID_ARGUMENT") if message.contains("registration token") => {
            Outcome::BadToken { reason }
        }
        (429 | 500..=599, _) => Outcome::Retry {
            after: retry_after,
            reason,
        },
        _ => Outcome::Failed { reason },
    }
}

#[tonic::async_trait]
impl Sender for FcmSender {
    async fn send(&self, device: &Device, push: &Push) -> Outcome {
        let token = match self.auth.token(&[SCOPE]).await {
            Ok(token) => token,
            Err(error) => {
                tracing::warn!(error = %error, "FCM OAuth token refresh failed");
                return Outcome::Retry {
                    after: None,
                    reason: "FCM OAuth token unavailable".into(),
                };
            }
        };
        let request = self
            .endpoint
            .post(&self.url(device))
            .bearer_auth(token.as_str())
            .json(&request_body(device, push, self.wording));
        self.endpoint.send("FCM", request, classify).await.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Platform;

    fn error(status: u16, code: &str, message: &str) -> Vec<u8> {
        json!({"error": {"code": status, "message": message, "status": "X",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                         "errorCode": code}]}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn answers_map_to_actions() {
        assert_eq!(classify(200, None, b"{}"), Outcome::Sent);
        assert!(matches!(
            classify(404, None, &error(404, "UNREGISTERED", "gone")),
            Outcome::BadToken { .. }
        ));
        assert!(matches!(
            classify(403, None, &error(403, "SENDER_ID_MISMATCH", "x")),
            Outcome::BadToken { .. }
        ));
        assert!(matches!(
            classify(
                400,
                None,
                &error(
                    400,
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token"
                )
            ),
            Outcome::BadToken { .. }
        ));
        assert!(matches!(
            classify(400, None, &error(400, "INVALID_ARGUMENT", "bad payload")),
            Outcome::Failed { .. }
        ));
        assert_eq!(
            classify(
                429,
                Some(Duration::from_secs(3)),
                &error(429, "QUOTA_EXCEEDED", "slow")
            ),
            Outcome::Retry {
                after: Some(Duration::from_secs(3)),
                reason: "FCM HTTP 429 QUOTA_EXCEEDED".into()
            }
        );
        assert!(matches!(
            classify(503, None, b"not json"),
            Outcome::Retry { .. }
        ));
        assert!(matches!(classify(401, None, b""), Outcome::Failed { .. }));
    }

    #[test]
    fn body_carries_token_badge_and_collapse_key() {
        let device = Device {
            uid: "u".into(),
            device_id: "d".into(),
            platform: Platform::Fcm,
            token: "tok".into(),
            app_id: String::new(),
            locale: String::new(),
        };
        let push = Push {
            gid: 7,
            group_name: "Design".into(),
            count: 3,
            first_seq: 4,
            last_seq: 6,
            last_msgid: 99,
            badge: 5,
        };
        let body = request_body(&device, &push, Wording::Text);
        assert_eq!(body["message"]["token"], "tok");
        assert_eq!(
            body["message"]["notification"]["body"],
            "3 new messages in Design"
        );
        assert_eq!(body["message"]["data"]["last_seq"], "6");
        assert_eq!(body["message"]["android"]["collapse_key"], "parley-group-7");
        assert_eq!(body["message"]["apns"]["payload"]["aps"]["badge"], 5);
        assert!(
            body["message"]["android"]["notification"]
                .get("body_loc_key")
                .is_none()
        );
        assert!(
            body["message"]["apns"]["payload"]["aps"]
                .get("alert")
                .is_none()
        );

        let keyed = request_body(&device, &push, Wording::Keys);
        let android = &keyed["message"]["android"]["notification"];
        assert_eq!(android["body_loc_key"], "PARLEY_NEW_MESSAGES");
        assert_eq!(android["body_loc_args"], json!(["3", "Design"]));
        assert_eq!(android["tag"], "parley-group-7", "the rest stays");
        let alert = &keyed["message"]["apns"]["payload"]["aps"]["alert"];
        assert_eq!(alert["loc-key"], "PARLEY_NEW_MESSAGES");
        assert_eq!(alert["loc-args"], json!(["3", "Design"]));
        assert_eq!(alert["body"], "3 new messages in Design");
        assert_eq!(
            keyed["message"]["notification"],
            body["message"]["notification"]
        );
    }

    /// Properties over any input; `make fuzz` runs them with many more cases.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// An FCM error body with any status, code and message, or any bytes.
        fn answer_body() -> impl Strategy<Value = Vec<u8>> {
            let code = prop_oneof![
                Just("UNREGISTERED".to_owned()),
                Just("SENDER_ID_MISMATCH".to_owned()),
                Just("INVALID_ARGUMENT".to_owned()),
                Just("QUOTA_EXCEEDED".to_owned()),
                Just("UNAVAILABLE".to_owned()),
                "\\PC{0,20}",
            ];
            let message = prop_oneof![
                Just("The registration token is not valid".to_owned()),
                "\\PC{0,40}"
            ];
            prop_oneof![
                (code.clone(), code, message).prop_map(|(status, detail, message)| {
                    serde_json::json!({"error": {"status": status, "message": message,
                        "details": [{"errorCode": detail}]}})
                    .to_string()
                    .into_bytes()
                }),
                proptest::collection::vec(any::<u8>(), 0..200),
            ]
        }

        proptest::proptest! {
            /// Whatever FCM answers, the outcome follows its status: 2xx is
            /// sent, only 429 and 5xx are retried (with the Retry-After read),
            /// and a token is forgotten only for a documented error code.
            #[test]
            fn any_answer_is_classified_by_its_status(
                status in 100u16..600,
                seconds in proptest::option::of(0u64..7200),
                body in answer_body(),
            ) {
                let after = seconds.map(Duration::from_secs);
                let outcome = classify(status, after, &body);
                let retried = status == 429 || status >= 500;
                match outcome {
                    Outcome::Sent => proptest::prop_assert!((200..300).contains(&status)),
                    Outcome::Retry { after: given, .. } => {
                        proptest::prop_assert!(retried);
                        proptest::prop_assert_eq!(given, after);
                    }
                    Outcome::BadToken { .. } => {
                        let text = String::from_utf8_lossy(&body);
                        proptest::prop_assert!(!(200..300).contains(&status));
                        proptest::prop_assert!(
                            ["UNREGISTERED", "SENDER_ID_MISMATCH", "INVALID_ARGUMENT"]
                                .iter()
                                .any(|code| text.contains(code))
                        );
                    }
                    Outcome::Failed { .. } => {
                        proptest::prop_assert!(!(200..300).contains(&status) && !retried);
                    }
                }
            }

        }
    }
}
