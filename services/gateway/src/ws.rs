//! The WebSocket transport, for browsers: `GET /v1/ws` on its own listen
//! address, carrying the same frames as the gRPC stream, one binary message
//! per `ConnectRequest` or `ConnectResponse`, into the same session code.
//!
//! What browsers need besides: the token travels in the first frame, never
//! in the URL (URLs end up in logs); a browser page may connect only from an
//! allowed `Origin` (a request without one, from an app or a server, is not a
//! browser's and is let through); the gateway pings, and a connection that
//! stays silent for [`SILENT_PINGS`] pings is dropped; and every refusal
//! closes with a code and reason: 4000 plus the gRPC status code (4016
//! UNAUTHENTICATED, 4003 INVALID_ARGUMENT, 4008 RESOURCE_EXHAUSTED), and
//! 1001 "going away" after the `ClosingFrame` when the gateway asks the
//! client to reconnect.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{
        ConnectInfo, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header::ORIGIN},
    response::{IntoResponse, Response},
    routing::any,
};
use bytes::Bytes;
use futures::{SinkExt as _, Stream, StreamExt as _, stream::SplitSink};
use parley_proto::gateway as pb;
use prost::Message as _;
use tokio::net::TcpListener;
use tonic::Status;

use crate::{
    GatewayApi, Opened,
    session::{Close, End, Frames},
    wire::Frame,
};

/// The path browsers connect to.
pub const PATH: &str = "/v1/ws";
/// Largest frame a client may send, as on the gRPC stream.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Pings a connection may leave unanswered (and send nothing else) before
/// it is dropped as dead.
pub const SILENT_PINGS: u32 = 3;
/// Close code: the gateway asks the client to reconnect (RFC 6455 "going away").
pub const GOING_AWAY: u16 = 1001;
/// Close codes for refusals: this plus the gRPC status code.
pub const REFUSED_BASE: u16 = 4000;
/// What a client's first reads are buffered in; larger frames grow it.
const READ_BUFFER: usize = 4096;
/// Longest close reason a close frame carries (RFC 6455: 123 bytes).
const MAX_REASON: usize = 123;

/// Who may connect, and how the connection is kept alive.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Origins a browser page may connect from, lowercased; `*` for any.
    pub allowed_origins: Vec<String>,
    /// How often the gateway pings.
    pub ping_interval: Duration,
    /// How long one write to a client may take before it is dropped as too
    /// slow (the gateway's slow-consumer timeout).
    pub slow_after: Duration,
}

impl Settings {
    /// Checks and normalises the allow-list: each entry is `*` or an origin,
    /// `scheme://host[:port]` with no path, as browsers send it.
    pub fn new(
        origins: &[String],
        ping_interval: Duration,
        slow_after: Duration,
    ) -> Result<Self, String> {
        let mut allowed_origins = Vec::with_capacity(origins.len());
        for origin in origins {
            let origin = origin.trim().to_ascii_lowercase();
            let well_formed = origin == "*"
                || origin.split_once("://").is_some_and(|(scheme, host)| {
                    matches!(scheme, "http" | "https")
                        && !host.is_empty()
                        && !host.contains(['/', '?', '#', ' '])
                });
            if !well_formed {
                return Err(format!(
                    "PARLEY_GATEWAY_WS_ALLOWED_ORIGINS: {origin:?} is not an origin (scheme://host[:port], or *)"
                ));
            }
            allowed_origins.push(origin);
        }
        Ok(Self {
            allowed_origins,
            ping_interval,
            slow_after,
        })
    }

    /// Whether a request with these headers may open a connection: no
    /// `Origin` (not a browser), or one on the list.
    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.allowed_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    }
}

struct Shared {
    api: Arc<GatewayApi>,
    settings: Settings,
}

/// Serves WebSocket clients on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    api: Arc<GatewayApi>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared { api, settings });
    let app = Router::new().route(PATH, any(upgrade)).with_state(shared);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !shared.settings.allows(&headers) {
        metrics::counter!("parley_gateway_ws_refused_total", "reason" => "origin").increment(1);
        tracing::info!(%peer, "WebSocket refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    upgrade
        .read_buffer_size(READ_BUFFER)
        // Read whole up to twice the limit, so a frame a little over it is
        // refused with a close frame the client reads (not a reset); past
        // that the read fails at the frame's header.
        .max_message_size(2 * MAX_FRAME)
        .max_frame_size(2 * MAX_FRAME)
        .on_upgrade(move |socket| connection(shared, peer, socket))
}

/// One client connection: the session reads its frames, and this task
/// writes the session's frames, pings, and the close.
async fn connection(shared: Arc<Shared>, peer: SocketAddr, socket: WebSocket) {
    let (mut sink, stream) = socket.split();
    let idle = shared.settings.ping_interval.saturating_mul(SILENT_PINGS);
    match shared.api.open(Some(peer), frames(stream, idle)).await {
        Ok(opened) => write(sink, opened, &shared.settings).await,
        Err(status) => {
            let _ = sink.send(refusal(&status)).await;
        }
    }
}

/// The client's messages as frames: binary messages decoded, pings and
/// pongs taken as signs of life, and the end on a close or after `idle`
/// with nothing at all.
fn frames(
    stream: impl Stream<Item = Result<Message, axum::Error>> + Send + Unpin + 'static,
    idle: Duration,
) -> impl Frames {
    Box::pin(futures::stream::unfold(
        Some(stream),
        move |stream| async move {
            let mut stream = stream?;
            loop {
                let message = match tokio::time::timeout(idle, stream.next()).await {
                    Err(_) => return Some((Err(End::ClientGone), None)),
                    Ok(None) => return None,
                    Ok(Some(Err(error))) => return Some((Err(read_failure(error)), None)),
                    Ok(Some(Ok(message))) => message,
                };
                match message {
                    Message::Binary(bytes) => return Some((decode(&bytes), Some(stream))),
                    Message::Text(_) => {
                        let refused = parley_server::Error::invalid(
                            "frame",
                            "text messages are not taken: send each ConnectRequest as a binary message",
                        )
                        .into();
                        return Some((Err(End::Refused(refused)), None));
                    }
                    Message::Close(_) => return None,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
        },
    ))
}

fn decode(bytes: &[u8]) -> Result<pb::ConnectRequest, End> {
    if bytes.len() > MAX_FRAME {
        return Err(End::Refused(too_large(format!(
            "frame too large: {} bytes, at most {MAX_FRAME}",
            bytes.len()
        ))));
    }
    pb::ConnectRequest::decode(bytes)
        .map_err(|error| End::Refused(crate::session::undecodable(&error.to_string())))
}

fn too_large(message: String) -> Status {
    parley_server::error::status(parley_server::Reason::FrameTooLarge, message)
}

/// A failed read: a message over the limit is refused as on the gRPC
/// stream; anything else is a broken connection.
fn read_failure(error: axum::Error) -> End {
    let error = error.into_inner();
    match error.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Refused(too_large(format!(
            "frame too large: at most {MAX_FRAME} bytes"
        ))),
        Some(tungstenite::Error::Protocol(problem)) => End::Refused(
            parley_server::Error::invalid("frame", format!("WebSocket protocol error: {problem}"))
                .into(),
        ),
        _ => End::ClientGone,
    }
}

/// Writes the session's frames as binary messages until it closes the
/// stream or the client goes; pings on the way.
async fn write(mut sink: SplitSink<WebSocket, Message>, opened: Opened, settings: &Settings) {
    let Opened {
        mut frames,
        mut close,
    } = opened;
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            biased;
            how = &mut close => {
                // Dropped without a word: the client went already.
                let Ok(how) = how else { return };
                closing(&mut sink, how, settings.slow_after).await;
                return;
            }
            frame = frames.recv() => match frame {
                Some(frame) => binary(frame),
                None => return,
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        if !send(&mut sink, message, settings.slow_after).await {
            return;
        }
    }
}

/// Says why the stream closes: the closing frame and "going away" when the
/// client should reconnect, the refusal's code and reason otherwise.
async fn closing(sink: &mut SplitSink<WebSocket, Message>, how: Close, within: Duration) {
    let last = match how {
        Close::Frame(reason) => {
            let last = close_frame(GOING_AWAY, &reason);
            if !send(sink, binary(Frame::closing(reason)), within).await {
                return;
            }
            last
        }
        Close::Status(status) => refusal(&status),
    };
    send(sink, last, within).await;
}

/// Sends one message; false when the client is gone or did not take it in
/// time (then the connection is dropped).
async fn send(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
    within: Duration,
) -> bool {
    matches!(
        tokio::time::timeout(within, sink.send(message)).await,
        Ok(Ok(()))
    )
}

/// An encoded frame as a binary message, sharing its bytes.
fn binary(frame: Frame) -> Message {
    Message::Binary(Bytes::from_owner(frame))
}

/// The close message for a refusal: 4000 plus its gRPC code, and its reason.
fn refusal(status: &Status) -> Message {
    let code = u16::try_from(status.code() as i32).unwrap_or(2);
    close_frame(REFUSED_BASE.saturating_add(code), status.message())
}

fn close_frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert(ORIGIN, origin.parse().expect("header"));
        }
        headers
    }

    #[test]
    fn only_listed_origins_and_non_browsers_are_let_in() {
        let listed = [
            "https://Chat.example.com".to_owned(),
            "http://localhost:5173".to_owned(),
        ];
        let settings = Settings::new(&listed, Duration::from_secs(1), Duration::from_secs(1))
            .expect("origins");
        assert!(settings.allows(&headers(None)));
        assert!(settings.allows(&headers(Some("https://chat.example.com"))));
        assert!(settings.allows(&headers(Some("http://localhost:5173"))));
        for refused in [
            "https://evil.example.com",
            "http://chat.example.com",
            "http://localhost:5174",
            "null",
        ] {
            assert!(!settings.allows(&headers(Some(refused))), "{refused}");
        }
        let none =
            Settings::new(&[], Duration::from_secs(1), Duration::from_secs(1)).expect("empty");
        assert!(!none.allows(&headers(Some("http://localhost:5173"))));
        let any = Settings::new(
            &["*".into()],
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect("any");
        assert!(any.allows(&headers(Some("https://anywhere.example"))));
    }

    #[test]
    fn malformed_origins_are_refused_at_start() {
        for bad in [
            "chat.example.com",
            "https://",
            "ftp://x",
            "https://x/path",
            "https://x y",
        ] {
            assert!(
                Settings::new(
                    &[bad.into()],
                    Duration::from_secs(1),
                    Duration::from_secs(1)
                )
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_refusal_closes_with_4000_plus_its_code_and_a_reason_that_fits() {
        let Message::Close(Some(frame)) = refusal(&Status::unauthenticated("invalid token")) else {
            panic!("a close frame");
        };
        assert_eq!((frame.code, frame.reason.as_str()), (4016, "invalid token"));
        let long = "é".repeat(100);
        let Message::Close(Some(frame)) = refusal(&Status::invalid_argument(long)) else {
            panic!("a close frame");
        };
        assert_eq!(frame.code, 4003);
        assert!(frame.reason.len() <= MAX_REASON && frame.reason.as_str().starts_with('é'));
    }
}
