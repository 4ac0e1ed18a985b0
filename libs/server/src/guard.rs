//! The request guard: one tower layer in front of every Parley RPC that
//! authenticates the caller, applies the per-caller rate limit, sheds load above
//! the concurrency limit and bounds each request's time. Each refusal is a proper
//! gRPC status (UNAUTHENTICATED, RESOURCE_EXHAUSTED, UNAVAILABLE,
//! DEADLINE_EXCEEDED) rather than a transport error. Health checks and
//! reflection pass straight through, so probes answer even under load.

use std::{
    num::NonZeroU32,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Status, body::Body};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::caller::{Caller, SERVICE_HEADER, Uid};

/// What the guard enforces.
#[derive(Clone, Debug)]
pub struct GuardSettings {
    /// Longest time a request may take before DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
    /// Requests in flight at once; above it new requests get UNAVAILABLE.
    pub max_concurrent_requests: usize,
    /// Sustained requests per second per user.
    pub rate_per_second: NonZeroU32,
    /// Requests per user allowed in a burst above the sustained rate.
    pub rate_burst: NonZeroU32,
    /// When set, every call must prove the service it names
    /// (`x-parley-service` with a token from that service to this one), and
    /// naming a user (`x-parley-uid`) needs such a proven service.
    pub credentials: Option<crate::credentials::Keys>,
    /// RPCs under this path prefix are public: they carry no service
    /// credential or caller metadata because they authenticate themselves (the gateway's
    /// stream opens with a JWT), and they take no concurrency permit: the
    /// service bounds them per client, so anonymous clients cannot hold the
    /// permits everyone else needs.
    pub public_prefix: Option<&'static str>,
}

/// The layer; cheap to clone, state shared by all connections.
#[derive(Clone)]
pub struct GuardLayer {
    shared: Arc<Shared>,
}

struct Shared {
    settings: GuardSettings,
    permits: Arc<Semaphore>,
    limiter: DefaultKeyedRateLimiter<Uid>,
}

impl GuardLayer {
    /// A guard enforcing `settings`.
    pub fn new(settings: GuardSettings) -> Self {
        let quota = Quota::per_second(settings.rate_per_second).allow_burst(settings.rate_burst);
        let permits = Arc::new(Semaphore::new(settings.max_concurrent_requests));
        let shared = Shared {
            settings,
            permits,
            limiter: RateLimiter::keyed(quota),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Forgets rate-limit state of callers that have been quiet, so the table stays
    /// bounded by the number of active callers. Called periodically by `serve`.
    pub fn forget_idle_callers(&self) {
        self.shared.limiter.retain_recent();
        self.shared.limiter.shrink_to_fit();
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The guarded service.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    shared: Arc<Shared>,
}

fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

impl Shared {
    /// With credentials, the service a call names must be proven by its
    /// token; a call naming no service (a user alone) is refused.
    fn check_credentials(&self, headers: &http::HeaderMap) -> Result<(), Status> {
        let Some(keys) = &self.settings.credentials else {
            return Ok(());
        };
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(service) = text(SERVICE_HEADER) else {
            return Err(crate::error::status(
                crate::Reason::Unauthenticated,
                "a service credential is required: x-parley-service with its x-parley-service-token",
            ));
        };
        let token = text(crate::credentials::TOKEN_HEADER).unwrap_or_default();
        keys.verify(service, token).map_err(|refused| {
            crate::error::status(crate::Reason::Unauthenticated, refused.to_string())
        })
    }

    fn check_rate(&self, caller: &Caller) -> Result<(), Status> {
        let Some(uid) = caller.rate_key() else {
            return Ok(());
        };
        self.limiter.check_key(uid).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(self.limiter.clock()));
            crate::shed::refuse(
                crate::Reason::RateLimited,
                "rate limit exceeded; retry later",
                wait.max(Duration::from_millis(1)),
            )
        })
    }

    /// A concurrency permit, held until the request completes.
    fn permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            crate::shed::refuse(
                crate::Reason::Overloaded,
                "server overloaded; retry with backoff",
                crate::backoff_delay(2, Duration::from_millis(100), Duration::from_secs(1)),
            )
        })
    }

    /// Decides whether a request may run: credential, identity, rate, then a
    /// concurrency permit, held until the request completes.
    fn admit(&self, headers: &http::HeaderMap) -> Result<(Caller, OwnedSemaphorePermit), Status> {
        self.check_credentials(headers)?;
        let caller = Caller::from_headers(headers)?;
        self.check_rate(&caller)?;
        Ok((caller, self.permit()?))
    }
}

impl<S> Service<http::Request<Body>> for Guard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The ready inner service is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if is_infrastructure(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let started = std::time::Instant::now();
        let path = request.uri().path().to_owned();
        let shared = &self.shared;
        let public = shared
            .settings
            .public_prefix
            .is_some_and(|prefix| request.uri().path().starts_with(prefix));
        let admitted = if public {
            Ok(None)
        } else {
            shared.admit(request.headers()).map(|(caller, permit)| {
                request.extensions_mut().insert(caller);
                Some(permit)
            })
        };
        let permit = match admitted {
            Ok(permit) => permit,
            Err(status) => {
                let response = status.into_http();
                record(path, &response, started.elapsed());
                return Box::pin(async move { Ok(response) });
            }
        };
        // The caller's deadline (`grpc-timeout`) when it is sooner than ours:
        // work the caller has given up on stops, and the calls this RPC
        // makes to other services carry what is left of it.
        let timeout = caller_timeout(request.headers())
            .map_or(shared.settings.request_timeout, |theirs| {
                theirs.min(shared.settings.request_timeout)
            });
        let deadline = tokio::time::Instant::now() + timeout;
        // One server span per RPC, continuing the caller's trace; its request
        // id (the caller's `x-request-id`, or a new one) is on every log line
        // the RPC writes.
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            request_id = %request_id(request.headers()),
        );
        let _ = span.set_parent(crate::telemetry::extract(request.headers()));
        Box::pin(async move {
            let handled = DEADLINE.scope(deadline, inner.call(request).instrument(span));
            let outcome = tokio::time::timeout_at(deadline, handled).await;
            drop(permit);
            let response = match outcome {
                Ok(result) => result?,
                Err(_elapsed) => Status::deadline_exceeded("request timed out").into_http(),
            };
            record(path, &response, started.elapsed());
            Ok(response)
        })
    }
}

tokio::task_local! {
    /// When the RPC being handled must be answered by; calls it makes to
    /// other services pass what is left on ([`remaining`]).
    static DEADLINE: tokio::time::Instant;
}

/// Runs `work` as the handling of an RPC due at `deadline` (tests, and work
/// that serves an RPC outside the guard).
pub async fn within<F: Future>(deadline: tokio::time::Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// What is left of the deadline of the RPC this task is handling, if it is
/// handling one (tasks it spawned are not: they outlive it).
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
        .ok()
}

/// The `grpc-timeout` a caller sent (`<1 to 8 digits><unit>`, unit one of
/// `H M S m u n`); `None` when absent or malformed.
fn caller_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The caller's `x-request-id` when it is a short printable token, or a new
/// random one.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_owned)
}

/// The gRPC code of a response as far as its headers tell: an error answered
/// before any message is trailers-only and carries `grpc-status` there; a
/// response that starts normally (every stream, every unary success) counts
/// as OK when it starts.
fn code_of(response: &http::Response<Body>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from)
}

/// Counts one RPC and its time to the response's start, labelled in the
/// common gRPC form: `grpc_service` (`parley.message.v1.MessageService`),
/// `grpc_method` (`SendMessage`) and `grpc_code` (`OK`, `PERMISSION_DENIED`).
/// Paths no route knows (UNIMPLEMENTED) share the label `unknown`, so a client
/// cannot grow the label set.
fn record(path: String, response: &http::Response<Body>, took: std::time::Duration) {
    let code = code_of(response);
    let (service, method) = match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if code != tonic::Code::Unimplemented => {
            (service.to_owned(), method.to_owned())
        }
        _ => ("unknown".to_owned(), "unknown".to_owned()),
    };
    let labels = [
        metrics::Label::new("grpc_service", service),
        metrics::Label::new("grpc_method", method),
        metrics::Label::from_static_parts("grpc_code", code_name(code)),
    ];
    metrics::counter!("parley_rpc_requests_total", labels.iter()).increment(1);
    metrics::histogram!("parley_rpc_duration_seconds", labels.iter()).record(took.as_secs_f64());
}

/// The code's canonical name, as gRPC spells it ("OK", "PERMISSION_DENIED",
/// ...), without formatting one per call.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    #[test]
    fn a_request_id_is_the_callers_when_sane_or_a_new_one() {
        let mut headers = http::HeaderMap::new();
        let fresh = request_id(&headers);
        assert_eq!(fresh.len(), 16);
        assert_ne!(fresh, request_id(&headers), "new ids differ");
        headers.insert(
            "x-request-id",
            http::HeaderValue::from_static("req-42.a:b_c"),
        );
        assert_eq!(request_id(&headers), "req-42.a:b_c");
        headers.insert(
            "x-request-id",
            http::HeaderValue::from_static("bad id\"with spaces"),
        );
        assert_eq!(
            request_id(&headers).len(),
            16,
            "a log-breaking id is replaced"
        );
    }

    fn settings(timeout_ms: u64, concurrent: usize, rate: u32) -> GuardSettings {
        GuardSettings {
            request_timeout: Duration::from_millis(timeout_ms),
            max_concurrent_requests: concurrent,
            rate_per_second: NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN),
            rate_burst: NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN),
            credentials: None,
            public_prefix: None,
        }
    }

    /// A handler made of `answer`, as the guard wraps one.
    fn serving<F, Fut>(
        answer: F,
    ) -> impl Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = Fut,
    > + Clone
    + Send
    + 'static
    where
        F: Fn(http::Request<Body>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<http::Response<Body>, Infallible>> + Send,
    {
        tower::service_fn(answer)
    }

    /// A handler that answers at once, or (`answers` false) never, standing in
    /// for a stuck RPC.
    fn handler(
        answers: bool,
    ) -> impl Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<http::Response<Body>, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        serving(move |_req: http::Request<Body>| async move {
            if !answers {
                std::future::pending::<()>().await;
            }
            Ok(http::Response::new(Body::default()))
        })
    }

    fn request(uid: Option<&'static str>) -> http::Request<Body> {
        let mut builder =
            http::Request::builder().uri("/parley.message.v1.MessageService/SendMessage");
        if let Some(uid) = uid {
            builder = builder.header("x-parley-uid", uid);
        }
        builder.body(Body::default()).expect("request")
    }

    fn code(response: &http::Response<Body>) -> Option<tonic::Code> {
        Status::from_header_map(response.headers()).map(|s| s.code())
    }

    #[test]
    fn a_callers_grpc_timeout_is_read_in_every_unit_and_malformed_ones_ignored() {
        let read = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", http::HeaderValue::from_static(value));
            caller_timeout(&headers)
        };
        assert_eq!(read("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("5S"), Some(Duration::from_secs(5)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("7u"), Some(Duration::from_micros(7)));
        assert_eq!(read("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "m", "5", "5s", "123456789m", "-5m", "5 m"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(caller_timeout(&http::HeaderMap::new()), None);
    }

    /// Answers with what is left of its deadline, in ms, as a header.
    async fn left_ms(_req: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
        let left = remaining().map_or(u128::MAX, |left| left.as_millis());
        let mut response = http::Response::new(Body::default());
        response.headers_mut().insert(
            "left-ms",
            http::HeaderValue::from_str(&left.to_string()).expect("digits"),
        );
        Ok(response)
    }

    #[tokio::test]
    async fn a_handler_sees_the_sooner_of_the_callers_deadline_and_ours() {
        let left = |response: http::Response<Body>| -> u128 {
            response.headers()["left-ms"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("a number")
        };
        let layer = GuardLayer::new(settings(60_000, 10, 100));
        let mut hurried = request(Some("uid1"));
        hurried
            .headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("1500m"));
        let response = layer
            .layer(serving(left_ms))
            .oneshot(hurried)
            .await
            .expect("response");
        assert!((1..=1500).contains(&left(response)), "the caller's 1.5 s");
        let response = layer
            .layer(serving(left_ms))
            .oneshot(request(Some("uid1")))
            .await
            .expect("response");
        let ours = left(response);
        assert!(ours > 1500 && ours <= 60_000, "our 60 s: {ours}");
        assert_eq!(remaining(), None, "outside an RPC there is no deadline");
    }

    #[tokio::test]
    async fn calls_made_while_handling_carry_what_is_left_of_the_deadline() {
        use tonic::service::Interceptor as _;
        let mut identity = crate::ServiceIdentity::new("message", None).to("receipt");
        let outside = identity.call(tonic::Request::new(())).expect("call");
        assert!(outside.metadata().get("grpc-timeout").is_none());
        let soon = tokio::time::Instant::now() + Duration::from_secs(2);
        let inside = DEADLINE
            .scope(soon, async { identity.call(tonic::Request::new(())) })
            .await
            .expect("call");
        let sent = inside
            .metadata()
            .get("grpc-timeout")
            .expect("a grpc-timeout");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "grpc-timeout",
            sent.to_str().expect("ascii").parse().expect("value"),
        );
        let left = caller_timeout(&headers).expect("well-formed");
        assert!(
            left <= Duration::from_secs(2) && left > Duration::ZERO,
            "{left:?}"
        );
        let past = tokio::time::Instant::now();
        let refused = DEADLINE
            .scope(past, async { identity.call(tonic::Request::new(())) })
            .await
            .expect_err("nothing left");
        assert_eq!(refused.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn a_stuck_request_ends_in_deadline_exceeded() {
        let guard = GuardLayer::new(settings(50, 10, 100)).layer(handler(false));
        let response = guard
            .oneshot(request(Some("uid1")))
            .await
            .expect("response");
        assert_eq!(code(&response), Some(tonic::Code::DeadlineExceeded));
    }

    #[tokio::test]
    async fn requests_above_the_concurrency_limit_are_shed() {
        let layer = GuardLayer::new(settings(60_000, 1, 100));
        let first = tokio::spawn(layer.layer(handler(false)).oneshot(request(Some("uid1"))));
        // The first request holds the only permit until it is aborted.
        let mut shed = None;
        for _ in 0..100 {
            let response = layer
                .layer(handler(true))
                .oneshot(request(Some("uid2")))
                .await
                .expect("response");
            if code(&response) == Some(tonic::Code::Unavailable) {
                shed = Some(response);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(shed.is_some(), "the second request was shed");
        first.abort();
    }

    #[tokio::test]
    async fn each_user_has_their_own_rate_limit_and_no_identity_is_refused() {
        let layer = GuardLayer::new(settings(1000, 10, 2));
        let mut codes = Vec::new();
        for _ in 0..3 {
            let response = layer
                .layer(handler(true))
                .oneshot(request(Some("uid1")))
                .await
                .expect("response");
            codes.push(code(&response));
        }
        assert_eq!(
            codes,
            vec![None, None, Some(tonic::Code::ResourceExhausted)]
        );
        let other = layer
            .layer(handler(true))
            .oneshot(request(Some("uid2")))
            .await
            .expect("response");
        assert_eq!(code(&other), None, "another user is not limited by uid1");
        let anonymous = layer
            .layer(handler(true))
            .oneshot(request(None))
            .await
            .expect("response");
        assert_eq!(code(&anonymous), Some(tonic::Code::Unauthenticated));
    }
}
