//! A stand-in for FCM: a real HTTP/2 server on loopback that serves the OAuth2
//! token endpoint a service account names (`token_uri`) and the HTTP v1 send
//! endpoint. It checks each send (HTTP/2, path, bearer token it issued, JSON
//! body), records it, and answers as the test scripted per device token:
//! 200, 429 with `Retry-After`, 500, `UNREGISTERED` or an invalid token.

use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, Version, http::request::Parts};
use serde_json::{Value, json};

use crate::stand_in::{Ledger, Server, lock};

/// The project the mock's service account names.
pub const PROJECT: &str = "parley-test";
/// A test-only RSA key the service account signs its token requests with.
const PRIVATE_KEY: &str = include_str!("../fixtures/fcm-service-account.pem");

/// How the mock answers one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 200 with a message name.
    Ok,
    /// 429 `QUOTA_EXCEEDED` with `Retry-After` in seconds.
    RetryAfter(u64),
    /// 500 `INTERNAL`.
    ServerError,
    /// 404 `UNREGISTERED`: the app was uninstalled.
    Unregistered,
    /// 400 `INVALID_ARGUMENT` naming the registration token.
    InvalidToken,
}

/// One send the mock received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The project in the path.
    pub project: String,
    /// `message.token` of the body.
    pub token: String,
    /// The whole JSON body.
    pub body: Value,
    /// The status answered.
    pub status: u16,
    /// What was wrong with the request, if anything (the mock answered 4xx).
    pub problem: Option<String>,
    /// When it arrived.
    pub at: std::time::Instant,
}

#[derive(Default)]
struct State {
    issued: Vec<String>,
    ledger: Ledger<Reply, Recorded>,
}

/// The running mock; stops when dropped.
pub struct MockFcm {
    server: Server<State>,
}

impl MockFcm {
    /// Starts the mock on a free loopback port.
    pub async fn start() -> Self {
        Self {
            server: Server::start("FCM", State::default(), handle).await,
        }
    }

    /// The base URL to configure as the FCM endpoint.
    pub fn base_url(&self) -> &str {
        &self.server.base_url
    }

    /// A service-account key whose `token_uri` is this mock.
    pub fn service_account_json(&self) -> String {
        json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "test-key",
            "private_key": PRIVATE_KEY,
            "client_email": "parley-test@parley-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": format!("{}/token", self.server.base_url),
        })
        .to_string()
    }

    /// Answers the next sends to `token` with `replies`, in order; 200 after.
    pub fn script(&self, token: &str, replies: impl IntoIterator<Item = Reply>) {
        self.server.lock().ledger.script(token, replies);
    }

    /// Every send received, in order.
    pub fn sends(&self) -> Vec<Recorded> {
        self.server.lock().ledger.sends().to_vec()
    }

    /// The sends to one device token.
    pub fn sends_to(&self, token: &str) -> Vec<Recorded> {
        self.server
            .lock()
            .ledger
            .sends()
            .iter()
            .filter(|s| s.token == token)
            .cloned()
            .collect()
    }

    /// Issues an access token directly, for clients that skip the OAuth
    /// exchange (load baselines).
    pub fn issue_token(&self) -> String {
        let mut state = self.server.lock();
        let access = format!("mock-access-{}", state.issued.len() + 1);
        state.issued.push(access.clone());
        access
    }

    /// Sends answered 200.
    pub fn delivered(&self) -> usize {
        self.server
            .lock()
            .ledger
            .sends()
            .iter()
            .filter(|s| s.status == 200)
            .count()
    }

    /// OAuth2 access tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.server.lock().issued.len()
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn fcm_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        json!({"error": {
            "code": status.as_u16(),
            "message": message,
            "status": code,
            "details": [{
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": code,
            }],
        }}),
    )
}

fn handle(state: &Mutex<State>, parts: Parts, body: Bytes) -> Response<Full<Bytes>> {
    let path = parts.uri.path().to_owned();
    if parts.method == hyper::Method::POST && path == "/token" {
        return token(state, &body);
    }
    let project = path
        .strip_prefix("/v1/projects/")
        .and_then(|rest| rest.strip_suffix("/messages:send"))
        .filter(|p| !p.is_empty() && !p.contains('/'))
        .map(str::to_owned);
    let Some(project) = project.filter(|_| parts.method == hyper::Method::POST) else {
        return respond(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"}));
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let device_token = json["message"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let bearer = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let mut state = lock(state);
    let problem = if parts.version != Version::HTTP_2 {
        Some(format!("not HTTP/2 but {:?}", parts.version))
    } else if !bearer.as_ref().is_some_and(|b| state.issued.contains(b)) {
        Some("no bearer token issued by the token endpoint".to_owned())
    } else if device_token.is_empty() {
        Some("body has no message.token".to_owned())
    } else if !json["message"]["notification"]["title"].is_string()
        || !json["message"]["data"].is_object()
    {
        Some("body has no notification title or no data".to_owned())
    } else {
        None
    };
    let response = match &problem {
        Some(problem) if problem.starts_with("no bearer") => {
            fcm_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", problem)
        }
        Some(problem) => fcm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", problem),
        None => {
            let reply = state.ledger.next_reply(&device_token).unwrap_or(Reply::Ok);
            reply_with(reply, &project, state.ledger.sends().len())
        }
    };
    state.ledger.record(Recorded {
        project,
        token: device_token,
        body: json,
        status: response.status().as_u16(),
        problem,
        at: std::time::Instant::now(),
    });
    response
}

fn reply_with(reply: Reply, project: &str, n: usize) -> Response<Full<Bytes>> {
    match reply {
        Reply::Ok => respond(
            StatusCode::OK,
            json!({"name": format!("projects/{project}/messages/{n}")}),
        ),
        Reply::RetryAfter(seconds) => {
            let mut response = fcm_error(
                StatusCode::TOO_MANY_REQUESTS,
                "QUOTA_EXCEEDED",
                "Sending rate exceeded",
            );
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(seconds),
            );
            response
        }
        Reply::ServerError => fcm_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Internal error",
        ),
        Reply::Unregistered => fcm_error(
            StatusCode::NOT_FOUND,
            "UNREGISTERED",
            "Requested entity was not found.",
        ),
        Reply::InvalidToken => fcm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
        ),
    }
}

/// The OAuth2 token endpoint: a JWT-bearer grant with a signed assertion gets
/// a fresh access token.
fn token(state: &Mutex<State>, body: &[u8]) -> Response<Full<Bytes>> {
    let form = String::from_utf8_lossy(body);
    let field = |name: &str| {
        form.split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_owned()
    };
    let grant = field("grant_type");
    let assertion = field("assertion");
    if grant != "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
        || assertion.split('.').count() != 3
    {
        return respond(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
    }
    let mut state = lock(state);
    let access = format!("mock-access-{}", state.issued.len() + 1);
    state.issued.push(access.clone());
    respond(
        StatusCode::OK,
        json!({"access_token": access, "expires_in": 3600, "token_type": "Bearer"}),
    )
}
