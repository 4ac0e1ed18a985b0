//! Serving a service: the shared flags, the guard, `grpc.health.v1`, server
//! reflection and a graceful stop.

use std::{fmt, future::Future, num::NonZeroU32, str::FromStr, time::Duration};

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{service::RoutesBuilder, transport::Server};
use tonic_health::ServingStatus;

use crate::{
    credentials::{CredentialError, Keys},
    guard::{GuardLayer, GuardSettings},
    telemetry::LogFormat,
};

/// A secret value from a flag or the environment; never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() < 16 {
            return Err("secrets must be at least 16 characters".into());
        }
        Ok(Self(s.to_owned()))
    }
}

/// Parses secrets for clap without ever echoing them: clap's own message for a
/// refused value quotes the value, which for a secret would print it.
#[derive(Clone, Copy, Debug)]
pub struct SecretParser;

impl clap::builder::TypedValueParser for SecretParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Secret, clap::Error> {
        let name = arg.map_or_else(|| "a secret".to_owned(), ToString::to_string);
        let refuse = |why: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for {name}: {why} (the value is not shown)\n"),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refuse("not UTF-8"))?;
        text.parse::<Secret>().map_err(|why| refuse(&why))
    }
}

impl clap::builder::ValueParserFactory for Secret {
    type Parser = SecretParser;

    fn value_parser() -> Self::Parser {
        SecretParser
    }
}

/// Flags shared by every service: logging, metrics, request limits, the stop
/// and credentials.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Log line format.
    #[arg(long, env = "PARLEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics over HTTP at this address (`/metrics`); unset:
    /// no metrics listener.
    #[arg(long, env = "PARLEY_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Longest time one request may take, in milliseconds (DEADLINE_EXCEEDED after).
    #[arg(long, env = "PARLEY_REQUEST_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,
    /// Requests in flight at once; above it requests are shed with UNAVAILABLE.
    #[arg(long, env = "PARLEY_MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrent_requests: u64,
    /// Sustained requests per second per user (RESOURCE_EXHAUSTED above it).
    #[arg(long, env = "PARLEY_RATE_LIMIT_PER_SECOND", default_value = "200")]
    pub rate_limit_per_second: NonZeroU32,
    /// Requests per user allowed in a burst above the sustained rate.
    #[arg(long, env = "PARLEY_RATE_LIMIT_BURST", default_value = "400")]
    pub rate_limit_burst: NonZeroU32,
    /// After SIGTERM, how long in-flight requests and streams may take to
    /// finish before the remaining connections are closed, in milliseconds.
    /// Keep it below the pod's termination grace period.
    #[arg(long, env = "PARLEY_SHUTDOWN_GRACE_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub shutdown_grace_ms: u64,
    /// This service's Ed25519 private key (base64 of its 32 bytes; `parley
    /// keys` makes a set). With `--service-public-keys`, every call proves
    /// which service makes it, and only a proven service may name a user.
    #[arg(long, env = "PARLEY_SERVICE_KEY", hide_env_values = true)]
    pub service_key: Option<Secret>,
    /// The public keys of every service that calls this one, and its own:
    /// `name=base64key`, separated by commas.
    #[arg(long, env = "PARLEY_SERVICE_PUBLIC_KEYS")]
    pub service_public_keys: Option<String>,
    /// Development mode: without credentials, a call is trusted to name its
    /// service and user. For `make dev` and tests on one machine; a service
    /// refuses to start without credentials otherwise.
    #[arg(long, env = "PARLEY_DEV_MODE", default_value_t = false, action = clap::ArgAction::Set)]
    pub dev_mode: bool,
}

impl ServerArgs {
    /// The credentials of service `name`. Without any, only development
    /// mode starts ([`Self::warn_development_mode`] says so, once).
    pub fn credentials(&self, name: &str) -> Result<Option<Keys>, CredentialError> {
        match (&self.service_key, &self.service_public_keys) {
            (None, None) if self.dev_mode => Ok(None),
            (None, None) => Err(CredentialError::Missing),
            (Some(private), Some(public)) => Keys::new(name, private, public).map(Some),
            _ => Err(CredentialError::Incomplete),
        }
    }

    /// Warns, once per start, that service `name` runs in development mode
    /// without credentials, when it does.
    pub fn warn_development_mode(&self, name: &str) {
        if self.dev_mode && self.service_key.is_none() && self.service_public_keys.is_none() {
            tracing::warn!(
                service = name,
                "development mode: calls are trusted to name their service and user; never expose this service"
            );
        }
    }

    /// Service `name`'s credentials and the identity its clients call with
    /// (each takes it as presented to its callee: [`ServiceIdentity::to`]).
    pub fn identity(
        &self,
        name: &'static str,
    ) -> Result<(Option<Keys>, crate::ServiceIdentity), crate::StartError> {
        let keys = self
            .credentials(name)
            .map_err(|e| crate::StartError::Config(e.to_string()))?;
        let identity = crate::ServiceIdentity::new(name, keys.clone());
        Ok((keys, identity))
    }

    /// The guard settings these flags describe, with `credentials` checked
    /// on every call when there are some.
    pub fn guard_settings(&self, credentials: Option<Keys>) -> GuardSettings {
        GuardSettings {
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_concurrent_requests: usize::try_from(self.max_concurrent_requests)
                .unwrap_or(usize::MAX),
            rate_per_second: self.rate_limit_per_second,
            rate_burst: self.rate_limit_burst,
            credentials,
            public_prefix: None,
        }
    }
}

/// Streams one client connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 1000;
/// HTTP/2 connection-level receive window, in bytes.
const CONNECTION_WINDOW: u32 = 4 << 20;

/// A serving failure.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be built from the descriptors.
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `routes` (the services named `names`, fully qualified) on
/// `listener` behind the guard, with `grpc.health.v1` (the server as a whole,
/// under "", and each of `names`) and reflection (v1 and v1alpha, listing
/// `names` and themselves), until `shutdown` resolves; then reports
/// NOT_SERVING and stops accepting while in-flight requests finish, for at
/// most the shutdown grace period.
pub async fn serve<F>(
    listener: TcpListener,
    args: &ServerArgs,
    credentials: Option<Keys>,
    routes: RoutesBuilder,
    names: &[&'static str],
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_with(
        listener,
        args.guard_settings(credentials),
        args.shutdown_grace(),
        (routes, names),
        shutdown,
    )
    .await
}

/// The health service's own name.
const HEALTH: &str = "grpc.health.v1.Health";
/// The reflection services' names.
const REFLECTION: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Reflection over Parley's protos, listing only `names` (and health and
/// reflection themselves): v1 and the older v1alpha, which grpcurl and
/// Python clients still ask for.
fn reflection(names: &[&'static str], routes: &mut RoutesBuilder) -> Result<(), ServeError> {
    let builder = || {
        names
            .iter()
            .copied()
            .chain([HEALTH])
            .chain(REFLECTION)
            .fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(parley_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(name),
            )
    };
    routes
        .add_service(builder().build_v1()?)
        .add_service(builder().build_v1alpha()?);
    Ok(())
}

impl ServerArgs {
    /// How long a stopping server waits for in-flight work.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// [`serve`] with explicit guard settings (the gateway marks its client stream
/// public) and grace period, for `(routes, names)`.
pub async fn serve_with<F>(
    listener: TcpListener,
    settings: GuardSettings,
    grace: Duration,
    (mut routes, names): (RoutesBuilder, &[&'static str]),
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    routes.add_service(health_service);
    reflection(names, &mut routes)?;
    let names: Vec<&'static str> = names.to_vec();

    let guard = GuardLayer::new(settings);
    let janitor = tokio::spawn({
        let guard = guard.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                guard.forget_idle_callers();
            }
        }
    });
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            // Small replies should not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
        })
    });
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        shutdown.await;
        for name in names.iter().copied().chain([""]) {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        let _ = stopping.send(());
    };
    let server = Server::builder()
        // HTTP/2 limits sized for callers that multiplex thousands of calls on
        // one connection (a gateway telling presence that 10,000 devices went
        // offline): the client queues streams above the limit, and the larger
        // connection window keeps h2's budget for small buffered DATA frames
        // (half the window) above what that many request bodies can take. With
        // h2's defaults such a burst ends in GOAWAY ENHANCE_YOUR_CALM.
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .layer(guard)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, stop);
    // Once stopping, in-flight work gets `grace`; then the rest is cut off.
    let deadline = async move {
        match stopped.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        served = server => served,
        () = deadline => {
            tracing::warn!(?grace, "shutdown grace period over; closing the remaining connections");
            Ok(())
        }
    };
    janitor.abort();
    Ok(served?)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct WithSecret {
        #[arg(long)]
        token: Option<Secret>,
    }

    #[derive(Debug, clap::Parser)]
    struct Server {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[test]
    fn a_service_without_credentials_starts_only_in_development_mode() {
        let parse = |args: &[&str]| {
            crate::runner::config_from_args::<Server, _, _>(args)
                .expect("flags")
                .server
        };
        assert_eq!(
            parse(&["x"]).credentials("gateway").map(|k| k.is_some()),
            Err(CredentialError::Missing)
        );
        assert_eq!(
            parse(&["x", "--dev-mode", "true"])
                .credentials("gateway")
                .map(|k| k.is_some()),
            Ok(false)
        );
        let (private, public) = crate::credentials::generate(&["gateway"]);
        let key = private[0].1.expose();
        assert_eq!(
            parse(&["x", "--service-key", key])
                .credentials("gateway")
                .map(|k| k.is_some()),
            Err(CredentialError::Incomplete)
        );
        let both = ["x", "--service-key", key, "--service-public-keys", &public];
        assert_eq!(
            parse(&both).credentials("gateway").map(|k| k.is_some()),
            Ok(true)
        );
    }

    #[test]
    fn a_refused_secret_is_not_echoed() {
        use clap::Parser as _;
        let error = WithSecret::try_parse_from(["x", "--token", "hunter2"])
            .expect_err("too short")
            .to_string();
        assert!(error.contains("--token"), "{error}");
        assert!(error.contains("at least 16 characters"), "{error}");
        assert!(!error.contains("hunter2"), "the secret leaked: {error}");
        let parsed = WithSecret::try_parse_from(["x", "--token", "correct horse battery staple"])
            .expect("long enough");
        assert!(format!("{parsed:?}").contains("Secret(***)"));
    }

    /// A server with nothing but health and reflection for `names`, on a
    /// port of its own, until the sender is used; and a channel to it.
    async fn serve_on(
        request_timeout: Duration,
        grace: Duration,
        names: &'static [&'static str],
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), ServeError>>,
        tonic::transport::Channel,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let settings = GuardSettings {
            request_timeout,
            max_concurrent_requests: 16,
            rate_per_second: NonZeroU32::MIN,
            rate_burst: NonZeroU32::MIN,
            credentials: None,
            public_prefix: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            settings,
            grace,
            (RoutesBuilder::default(), names),
            async move {
                let _ = stopped.await;
            },
        ));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        (stop, server, channel)
    }

    #[tokio::test]
    async fn a_stream_left_open_holds_the_stop_no_longer_than_the_grace_period() {
        let grace = Duration::from_millis(300);
        let (stop, server, channel) =
            serve_on(Duration::from_secs(600), grace, &["parley.test.v1.Nothing"]).await;
        let mut client = HealthClient::new(channel);
        // A health watch never ends by itself.
        let mut watch = client
            .watch(HealthCheckRequest::default())
            .await
            .expect("watch")
            .into_inner();
        let first = watch.message().await.expect("status").expect("a status");
        assert_eq!(first.status, ServingStatus::Serving as i32);

        let asked = std::time::Instant::now();
        let _ = stop.send(());
        // The watcher hears NOT_SERVING first.
        let next = watch.message().await.expect("status").expect("a status");
        assert_eq!(next.status, ServingStatus::NotServing as i32);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops after the grace period")
            .expect("task")
            .expect("served");
        let took = asked.elapsed();
        assert!(
            took >= grace,
            "the open stream had its grace period: {took:?}"
        );
    }

    /// Health answers for the server and each service it serves by name
    /// (NOT_FOUND for others, NOT_SERVING once stopping), and reflection, in
    /// v1 and v1alpha, lists only what the port serves.
    #[tokio::test]
    async fn health_and_reflection_name_the_services_served_here() {
        use tonic_reflection::pb::{v1, v1alpha};
        const SERVED: &str = "parley.message.v1.MessageService";
        let (stop, server, channel) = serve_on(
            Duration::from_secs(10),
            Duration::from_millis(100),
            &[SERVED],
        )
        .await;
        let mut health = HealthClient::new(channel.clone());
        let check = |service: &str| HealthCheckRequest {
            service: service.into(),
        };
        for service in ["", SERVED] {
            let status = health.check(check(service)).await.expect("known");
            assert_eq!(
                status.into_inner().status,
                ServingStatus::Serving as i32,
                "{service:?}"
            );
        }
        let unknown = health
            .check(check("parley.receipt.v1.ReceiptService"))
            .await
            .expect_err("not served here");
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        let mut listed = Vec::new();
        let mut alpha =
            v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let ask = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut answers = alpha
            .server_reflection_info(tokio_stream::once(ask))
            .await
            .expect("v1alpha")
            .into_inner();
        if let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        )) = answers
            .message()
            .await
            .expect("answer")
            .and_then(|a| a.message_response)
        {
            listed.extend(list.service.into_iter().map(|s| s.name));
        }
        listed.sort();
        assert_eq!(
            listed,
            [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
                SERVED,
            ]
        );
        let mut current = v1::server_reflection_client::ServerReflectionClient::new(channel);
        let ask = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut answers = current
            .server_reflection_info(tokio_stream::once(ask))
            .await
            .expect("v1")
            .into_inner();
        let answer = answers
            .message()
            .await
            .expect("answer")
            .and_then(|a| a.message_response);
        assert!(
            matches!(answer, Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(ref list)) if list.service.len() == 4),
            "{answer:?}"
        );

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("stops")
            .expect("task")
            .expect("served");
    }
}
