//! A test client: one device's stream to a gateway, over its own HTTP/2
//! connection or its own WebSocket, with the frames it receives collected in
//! order.

use std::{net::SocketAddr, pin::Pin, time::Duration};

use futures::{SinkExt as _, Stream, StreamExt as _};
use prost::Message as _;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

use parley_gateway::auth;
use parley_proto::gateway::{
    self as pb, connect_request::Frame as In, connect_response::Frame as Out,
    gateway_service_client::GatewayServiceClient,
};
use parley_server::Uid;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};

use crate::support::{ALLOWED_ORIGIN, JWT_SECRET, Suite};

/// What carries a device's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The gRPC bidirectional stream.
    Grpc,
    /// A WebSocket at `/v1/ws`, binary messages, as a browser would open it.
    WebSocket,
}

/// Frames from the gateway, whatever carried them: a WebSocket's refusal
/// (close code 4000 + a gRPC code) reads as the status it stands for.
type Incoming = Pin<Box<dyn Stream<Item = Result<pb::ConnectResponse, Status>> + Send>>;

/// A dev token for `uid`, signed with the suite's secret.
pub fn token(uid: &str) -> String {
    let uid = Uid::parse(uid).expect("valid uid");
    auth::issue_hs256(JWT_SECRET.as_bytes(), &uid, 3600).expect("sign")
}

/// One connected device.
pub struct Device {
    pub uid: String,
    tx: mpsc::Sender<pb::ConnectRequest>,
    rx: Incoming,
    next_request: u64,
}

/// An opened stream's two halves, or the status the gateway refused it with.
pub type Opened = Result<
    (
        mpsc::Sender<pb::ConnectRequest>,
        tonic::Streaming<pb::ConnectResponse>,
    ),
    Status,
>;

/// Opens a stream to `gateway` and sends `auth`; returns the stream and the
/// first reply (or the status the gateway refused with).
pub async fn open(gateway: SocketAddr, auth: pb::AuthFrame) -> Opened {
    open_with_window(gateway, auth, None).await
}

/// [`open`] with the HTTP/2 receive windows capped at `window` bytes: a client
/// on a slow link, whose unread frames back up into the gateway quickly.
pub async fn open_with_window(
    gateway: SocketAddr,
    auth: pb::AuthFrame,
    window: Option<u32>,
) -> Opened {
    open_on(connection_with_window(gateway, window).await, auth).await
}

/// A new HTTP/2 connection to `gateway`, for streams that share it.
pub async fn connection(gateway: SocketAddr) -> Channel {
    connection_with_window(gateway, None).await
}

async fn connection_with_window(gateway: SocketAddr, window: Option<u32>) -> Channel {
    Endpoint::from_shared(format!("http://{gateway}"))
        .expect("endpoint")
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .expect("gateway reachable")
}

/// Opens a stream on an existing HTTP/2 connection: several devices behind
/// one proxy share one.
pub async fn open_on(channel: Channel, auth: pb::AuthFrame) -> Opened {
    let (tx, rx) = mpsc::channel(1024);
    tx.send(pb::ConnectRequest {
        frame: Some(In::Auth(auth)),
    })
    .await
    .expect("queue auth");
    let response = GatewayServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await?;
    Ok((tx, response.into_inner()))
}

/// Opens a WebSocket to `addr` (with `origin`, as a browser page there
/// would) and sends `auth` as its first frame. Refused at the handshake:
/// the HTTP status.
pub async fn open_ws(
    addr: SocketAddr,
    origin: Option<&str>,
    auth: pb::AuthFrame,
) -> Result<(mpsc::Sender<pb::ConnectRequest>, Incoming), u16> {
    let mut request = format!("ws://{addr}{}", parley_gateway::ws::PATH)
        .into_client_request()
        .expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("origin"));
    }
    let socket = match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => socket,
        Err(tungstenite::Error::Http(response)) => return Err(response.status().as_u16()),
        Err(error) => panic!("WebSocket to {addr}: {error}"),
    };
    let (mut sink, stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<pb::ConnectRequest>(1024);
    tx.send(pb::ConnectRequest {
        frame: Some(In::Auth(auth)),
    })
    .await
    .expect("queue auth");
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let message = tungstenite::Message::Binary(frame.encode_to_vec().into());
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // The device was dropped: a clean close, as a page closing would.
        let _ = sink.close().await;
    });
    let incoming = stream.filter_map(|message| async move {
        match message {
            Ok(tungstenite::Message::Binary(bytes)) => Some(
                pb::ConnectResponse::decode(bytes)
                    .map_err(|e| Status::internal(format!("undecodable frame: {e}"))),
            ),
            Ok(tungstenite::Message::Close(Some(close))) => {
                let code = u16::from(close.code);
                let reason = close.reason.to_string();
                // Below 4000 (1000, 1001): a plain end.
                code.checked_sub(parley_gateway::ws::REFUSED_BASE)
                    .map(|code| Err(Status::new(Code::from(i32::from(code)), reason)))
            }
            Ok(_) => None,
            Err(error) => Some(Err(Status::unavailable(format!("WebSocket: {error}")))),
        }
    });
    Ok((tx, Box::pin(incoming)))
}

impl Device {
    /// Connects `uid`'s `device_id` to the suite's gateway `index` over
    /// `transport` and waits for AuthOk. A WebSocket comes from the origin
    /// the gateway allows.
    pub async fn connect_over(
        transport: Transport,
        suite: &Suite,
        index: usize,
        uid: &str,
        device_id: &str,
    ) -> Self {
        match transport {
            Transport::Grpc => Self::connect(suite.gateway_addrs[index], uid, device_id).await,
            Transport::WebSocket => {
                let (tx, rx) = open_ws(
                    suite.ws_addrs[index],
                    Some(ALLOWED_ORIGIN),
                    auth_frame(uid, device_id),
                )
                .await
                .expect("WebSocket accepted");
                Self::authenticated(uid, tx, rx).await
            }
        }
    }

    /// Connects `uid`'s `device_id` to `gateway` and waits for AuthOk.
    pub async fn connect(gateway: SocketAddr, uid: &str, device_id: &str) -> Self {
        Self::connect_with_window(gateway, uid, device_id, None).await
    }

    /// Connects `uid`'s `device_id` on a shared HTTP/2 connection.
    pub async fn connect_on(channel: Channel, uid: &str, device_id: &str) -> Self {
        let (tx, rx) = open_on(channel, auth_frame(uid, device_id))
            .await
            .expect("stream accepted");
        Self::authenticated(uid, tx, Box::pin(rx)).await
    }

    /// [`Device::connect`] over a link with small HTTP/2 windows.
    pub async fn connect_with_window(
        gateway: SocketAddr,
        uid: &str,
        device_id: &str,
        window: Option<u32>,
    ) -> Self {
        let (tx, rx) = open_with_window(gateway, auth_frame(uid, device_id), window)
            .await
            .expect("stream accepted");
        Self::authenticated(uid, tx, Box::pin(rx)).await
    }

    async fn authenticated(uid: &str, tx: mpsc::Sender<pb::ConnectRequest>, rx: Incoming) -> Self {
        let mut device = Self {
            uid: uid.into(),
            tx,
            rx,
            next_request: 1,
        };
        match device.frame().await {
            Out::AuthOk(ok) => assert_eq!(ok.uid, uid),
            other => panic!("expected auth_ok, got {other:?}"),
        }
        device
    }

    /// The next frame, within 20 s.
    pub async fn frame(&mut self) -> Out {
        self.try_frame(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{}: no frame within 20 s", self.uid))
    }

    /// The next frame within `wait`, or `None` if the stream ended or nothing came.
    pub async fn try_frame(&mut self, wait: Duration) -> Option<Out> {
        let next = tokio::time::timeout(wait, self.rx.next()).await.ok()?;
        next.and_then(Result::ok).and_then(|f| f.frame)
    }

    /// Reads until the stream ends (within 20 s) and returns the status it
    /// ended with: `Code::Ok` for a plain end.
    pub async fn end_status(&mut self) -> Status {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(20), self.rx.next())
                .await
                .unwrap_or_else(|_| panic!("{}: the stream did not end within 20 s", self.uid));
            match next {
                Some(Ok(_)) => continue,
                None => return Status::ok(""),
                Some(Err(status)) => return status,
            }
        }
    }

    pub async fn send_frame(&self, frame: In) {
        self.tx
            .send(pb::ConnectRequest { frame: Some(frame) })
            .await
            .expect("stream open");
    }

    /// Sends a message; returns the request id (the result comes as a frame).
    pub async fn send(&mut self, gid: u64, client_msg_id: &str, content: &[u8]) -> u64 {
        let request_id = self.next_request;
        self.next_request += 1;
        self.send_frame(In::Send(pb::SendFrame {
            request_id,
            gid,
            client_msg_id: client_msg_id.into(),
            content: content.to_vec(),
            need_receipt: true,
        }))
        .await;
        request_id
    }

    /// Sends a message and waits for its result, skipping other frames.
    pub async fn send_and_wait(&mut self, gid: u64, id: &str) -> pb::SendResultFrame {
        let request_id = self.send(gid, id, b"hello").await;
        loop {
            match self.frame().await {
                Out::SendResult(result) if result.request_id == request_id => return result,
                Out::Closing(closing) => panic!("{}: stream closed: {}", self.uid, closing.reason),
                _ => {}
            }
        }
    }

    pub async fn ack(&self, gid: u64, up_to_seq: u64, read: bool) {
        self.send_frame(In::Ack(pb::AckFrame {
            entries: vec![pb::AckEntry {
                gid,
                up_to_seq,
                read,
            }],
        }))
        .await;
    }

    /// Collects message frames until `count` arrived, failing on anything
    /// that breaks order; other frames go to `others`.
    pub async fn messages(
        &mut self,
        count: usize,
        others: &mut Vec<Out>,
    ) -> Vec<pb::DeliveredMessage> {
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            match self.frame().await {
                Out::Message(m) => messages.push(m),
                Out::Closing(c) => panic!("{}: stream closed: {}", self.uid, c.reason),
                other => others.push(other),
            }
        }
        messages
    }

    /// Sends a heartbeat and returns every frame before its reply: whatever
    /// was still in flight on the stream.
    pub async fn drain(&mut self, watching: Vec<u64>) -> (Vec<Out>, pb::HeartbeatReplyFrame) {
        self.send_frame(In::Heartbeat(pb::HeartbeatFrame {
            watching_msgids: watching,
        }))
        .await;
        let mut before = Vec::new();
        loop {
            match self.frame().await {
                Out::HeartbeatReply(reply) => return (before, reply),
                other => before.push(other),
            }
        }
    }
}

/// An auth frame with a valid token for `uid`.
pub fn auth_frame(uid: &str, device_id: &str) -> pb::AuthFrame {
    pb::AuthFrame {
        token: token(uid),
        device_id: device_id.into(),
        receipts_cursor: String::new(),
    }
}

/// The seqs of `messages` of group `gid`.
pub fn seqs(messages: &[pb::DeliveredMessage], gid: u64) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m.gid == gid)
        .map(|m| m.seq)
        .collect()
}
