//! A stand-in for APNs: a real HTTP/2 server on loopback (no TLS) serving the
//! provider API's `POST /3/device/{token}`. It checks each request as APNs
//! would (HTTP/2, a provider token signed ES256 by the key it was given, with
//! that key id and team, recent; a topic, a push type, a JSON `aps`), records
//! it, and answers as the test scripted per device token.

use std::{collections::HashMap, sync::Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, Version, http::request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::stand_in::{Ledger, Server, lock};

/// The test-only APNs key (.p8): a file, as `--apns-key-file` takes it.
pub const KEY_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/apns-test-key.p8");
/// The test-only APNs key's PEM text.
pub const KEY_PEM: &str = include_str!("../fixtures/apns-test-key.p8");
/// Its public half, which [`MockApns::start`] checks provider tokens with.
const PUBLIC_PEM: &str = include_str!("../fixtures/apns-test-key.pub.pem");
/// The key id the stand-in expects.
pub const KEY_ID: &str = "ABC123DEFG";
/// The team id the stand-in expects.
pub const TEAM_ID: &str = "TEAM123456";

/// How the stand-in answers one push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 200 with an `apns-id`.
    Ok,
    /// 410 `Unregistered`: the app was uninstalled.
    Unregistered,
    /// 429 `TooManyRequests`.
    TooManyRequests,
    /// 400 `BadTopic`.
    BadTopic,
    /// 403 `ExpiredProviderToken`.
    ExpiredProviderToken,
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The device token in the path.
    pub token: String,
    /// The `apns-*` headers.
    pub headers: HashMap<String, String>,
    /// The provider token it was signed with.
    pub bearer: String,
    /// The JSON body.
    pub body: Value,
    /// The status answered.
    pub status: u16,
    /// What was wrong with the request, if anything (answered 400 or 403).
    pub problem: Option<String>,
}

struct State {
    key: DecodingKey,
    key_id: String,
    team_id: String,
    ledger: Ledger<Reply, Recorded>,
}

/// The running stand-in; stops when dropped.
pub struct MockApns {
    server: Server<State>,
}

impl MockApns {
    /// Starts the stand-in on a free loopback port, accepting provider
    /// tokens signed with the test key ([`KEY_FILE`]), [`KEY_ID`] and
    /// [`TEAM_ID`].
    pub async fn start() -> Self {
        Self::trusting(PUBLIC_PEM.as_bytes(), KEY_ID, TEAM_ID).await
    }

    /// Starts the stand-in accepting provider tokens signed by the key whose
    /// public half is `public_pem`, with `key_id` and `team_id`.
    pub async fn trusting(public_pem: &[u8], key_id: &str, team_id: &str) -> Self {
        let state = State {
            key: DecodingKey::from_ec_pem(public_pem).expect("an EC public key in PEM"),
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            ledger: Ledger::default(),
        };
        Self {
            server: Server::start("APNs", state, handle).await,
        }
    }

    /// The base URL to configure as the APNs endpoint.
    pub fn base_url(&self) -> &str {
        &self.server.base_url
    }

    /// Answers the next pushes to `token` with `replies`, in order; 200 after.
    pub fn script(&self, token: &str, replies: impl IntoIterator<Item = Reply>) {
        self.server.lock().ledger.script(token, replies);
    }

    /// Every request received, in order.
    pub fn sends(&self) -> Vec<Recorded> {
        self.server.lock().ledger.sends().to_vec()
    }
}

fn respond(status: StatusCode, reason: Option<&str>, n: usize) -> Response<Full<Bytes>> {
    let body = reason.map_or_else(String::new, |reason| {
        json!({ "reason": reason }).to_string()
    });
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let id = format!("00000000-0000-0000-0000-{n:012}");
    if let Ok(id) = hyper::header::HeaderValue::from_str(&id) {
        response.headers_mut().insert("apns-id", id);
    }
    response
}

/// What is wrong with a request, as APNs would refuse it.
fn check(
    state: &State,
    version: Version,
    bearer: &str,
    headers: &HashMap<String, String>,
    body: &Value,
) -> Option<(StatusCode, String)> {
    if version != Version::HTTP_2 {
        return Some((
            StatusCode::BAD_REQUEST,
            format!("not HTTP/2 but {version:?}"),
        ));
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims = ["iss".to_owned()].into();
    validation.validate_exp = false;
    validation.set_issuer(&[&state.team_id]);
    let verified = jsonwebtoken::decode::<Value>(bearer, &state.key, &validation);
    let header = jsonwebtoken::decode_header(bearer);
    match (verified, header) {
        (Ok(token), Ok(header)) if header.kid.as_deref() == Some(state.key_id.as_str()) => {
            let issued = token.claims["iat"].as_i64().unwrap_or_default();
            let now = parley_server::now_ms() / 1000;
            if !(now - 3600..=now + 60).contains(&issued) {
                return Some((StatusCode::FORBIDDEN, "ExpiredProviderToken".into()));
            }
        }
        _ => return Some((StatusCode::FORBIDDEN, "InvalidProviderToken".into())),
    }
    if !headers.contains_key("apns-topic") {
        return Some((StatusCode::BAD_REQUEST, "MissingTopic".into()));
    }
    if !matches!(
        headers.get("apns-push-type").map(String::as_str),
        Some("alert" | "background")
    ) {
        return Some((StatusCode::BAD_REQUEST, "InvalidPushType".into()));
    }
    if !body["aps"].is_object() {
        return Some((StatusCode::BAD_REQUEST, "PayloadEmpty".into()));
    }
    None
}

fn handle(state: &Mutex<State>, parts: Parts, body: Bytes) -> Response<Full<Bytes>> {
    let token = parts
        .uri
        .path()
        .strip_prefix("/3/device/")
        .filter(|token| !token.is_empty() && token.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned);
    let Some(token) = token.filter(|_| parts.method == hyper::Method::POST) else {
        return respond(StatusCode::NOT_FOUND, Some("BadPath"), 0);
    };
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("apns-"))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let bearer = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("bearer ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .unwrap_or_default()
        .to_owned();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut state = lock(state);
    let n = state.ledger.sends().len();
    let problem = check(&state, parts.version, &bearer, &headers, &json);
    let response = match &problem {
        Some((status, reason)) => respond(*status, Some(reason), n),
        None => {
            let reply = state.ledger.next_reply(&token).unwrap_or(Reply::Ok);
            match reply {
                Reply::Ok => respond(StatusCode::OK, None, n),
                Reply::Unregistered => respond(StatusCode::GONE, Some("Unregistered"), n),
                Reply::TooManyRequests => {
                    respond(StatusCode::TOO_MANY_REQUESTS, Some("TooManyRequests"), n)
                }
                Reply::BadTopic => respond(StatusCode::BAD_REQUEST, Some("BadTopic"), n),
                Reply::ExpiredProviderToken => {
                    respond(StatusCode::FORBIDDEN, Some("ExpiredProviderToken"), n)
                }
            }
        }
    };
    state.ledger.record(Recorded {
        token,
        headers,
        bearer,
        body: json,
        status: response.status().as_u16(),
        problem: problem.map(|(_, reason)| reason),
    });
    response
}

/// The public half of a fresh P-256 key, one no sender signs with.
pub fn other_public_key() -> String {
    rcgen::KeyPair::generate()
        .expect("a P-256 key")
        .public_key_pem()
}
