//! The bound on deliveries: a bare tonic server stream. A server that does
//! nothing else pushes one pre-encoded delivery frame to as many streams as a
//! part holds, spread over HTTP/2 connections as the part spreads its
//! devices, and clients decode each frame as the load's readers do. Parley's
//! deliveries per second are held against the rate these streams carry.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes};
use futures::{Stream, StreamExt, future::BoxFuture};
use parley_proto::gateway::{self as pb, connect_response::Frame as Out};
use prost::Message as _;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::{Grpc, NamedService, ServerStreamingService, StreamingService},
};

/// Frames queued per stream on the server, as the gateway queues a device's.
const QUEUE: usize = 1024;
/// The method the clients call.
const PATH: &str = "/parley.bench.Bare/Subscribe";
/// The bidirectional method that answers each frame with itself.
const ECHO_PATH: &str = "/parley.bench.Bare/Echo";

/// Frames that are already bytes, both ways.
#[derive(Clone, Copy, Debug, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Each open stream's queue.
type Hub = Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>;

/// The bare server: one server-streaming method that registers the stream's
/// queue with the hub.
#[derive(Clone)]
struct Bare {
    hub: Hub,
}

impl NamedService for Bare {
    const NAME: &'static str = "parley.bench.Bare";
}

impl tower::Service<http::Request<tonic::body::Body>> for Bare {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == ECHO_PATH {
            return Box::pin(async move { Ok(Grpc::new(Raw).streaming(Echo, request).await) });
        }
        let subscribe = Subscribe {
            hub: self.hub.clone(),
        };
        Box::pin(async move { Ok(Grpc::new(Raw).server_streaming(subscribe, request).await) })
    }
}

/// A bidirectional stream that does nothing but answer each frame with
/// itself: the least a device stream can cost.
struct Echo;

impl StreamingService<Bytes> for Echo {
    type Response = Bytes;
    type ResponseStream = Frames;
    type Future = std::future::Ready<Result<tonic::Response<Frames>, Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Bytes>>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(
            Box::pin(request.into_inner()) as Frames
        )))
    }
}

/// The command-line flag that makes `parley-bench` the bare server's process.
pub const SERVE_BARE: &str = "--serve-bare";

/// Serves the bare methods on a port of its own until killed, after printing
/// `listening <addr>`: the benchmark runs it as a child, so its memory and
/// CPU are its own.
pub async fn serve_bare() -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening {addr}");
    tonic::transport::Server::builder()
        .add_service(Bare {
            hub: Hub::default(),
        })
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .map_err(|e| e.to_string())
}

/// The bare server, running as a child process.
pub struct BareProcess {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl BareProcess {
    /// Starts `parley-bench --serve-bare` and waits for its address.
    pub async fn start() -> Result<Self, String> {
        use tokio::io::AsyncBufReadExt as _;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(exe)
            .arg(SERVE_BARE)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the bare server: {e}"))?;
        let stdout = child.stdout.take().ok_or("the bare server has no stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("the bare server said {line:?}"))?;
        Ok(Self { child, addr })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// A new HTTP/2 connection to it.
    pub async fn connect(&self) -> Result<tonic::transport::Channel, String> {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("bare server: {e}"))
    }
}

/// Opens an echo stream on `channel`: frames sent on the returned sender
/// come back on the returned stream.
pub async fn echo_stream(
    channel: tonic::transport::Channel,
) -> Result<(mpsc::Sender<Bytes>, tonic::Streaming<Bytes>), String> {
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(16);
    let path = http::uri::PathAndQuery::from_static(ECHO_PATH);
    let response = client
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, Raw)
        .await
        .map_err(|s| format!("echo stream refused: {}", s.message()))?;
    Ok((tx, response.into_inner()))
}

struct Subscribe {
    hub: Hub,
}

type Frames = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl ServerStreamingService<Bytes> for Subscribe {
    type Response = Bytes;
    type ResponseStream = Frames;
    type Future = std::future::Ready<Result<tonic::Response<Frames>, Status>>;

    fn call(&mut self, _request: tonic::Request<Bytes>) -> Self::Future {
        let (tx, rx) = mpsc::channel(QUEUE);
        let registered = self.hub.lock().map(|mut hub| hub.push(tx));
        std::future::ready(match registered {
            Ok(()) => Ok(tonic::Response::new(
                Box::pin(ReceiverStream::new(rx).map(Ok)) as Frames,
            )),
            Err(_) => Err(Status::internal("hub poisoned")),
        })
    }
}

/// A delivery frame as the gateway sends one, encoded once.
fn frame() -> Bytes {
    let message = pb::DeliveredMessage {
        msgid: 1_000_001,
        gid: 1,
        seq: 1,
        sender_uid: "m00000".to_owned(),
        content: vec![b'x'; 8],
        need_receipt: true,
        created_at_ms: 1_795_000_000_000,
    };
    pb::ConnectResponse {
        frame: Some(Out::Message(message)),
    }
    .encode_to_vec()
    .into()
}

/// What bare streams carried.
#[derive(Clone, Copy, Debug, Default)]
pub struct Carried {
    /// Deliveries per second.
    pub per_second: f64,
    /// CPU per delivery of the whole process (server and readers both), in µs.
    pub cpu_us_per_delivery: f64,
}

/// Deliveries per second that `streams` bare tonic streams carry, `per_connection`
/// on each HTTP/2 connection, over `duration`.
pub async fn bare_streams(
    streams: usize,
    per_connection: usize,
    duration: Duration,
) -> Result<Carried, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let hub: Hub = Arc::default();
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    });
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Bare { hub: hub.clone() })
            .serve_with_incoming(incoming),
    );
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(streams);
    let per_connection = per_connection.max(1);
    for first in (0..streams).step_by(per_connection) {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("bare stream server: {e}"))?;
        for _ in first..streams.min(first + per_connection) {
            readers.push(tokio::spawn(read(channel.clone(), delivered.clone())));
        }
    }
    // Every stream is registered before the first frame goes out.
    let deadline = Instant::now() + Duration::from_secs(60);
    while hub.lock().map_or(0, |hub| hub.len()) < streams {
        if Instant::now() > deadline {
            server.abort();
            return Err("bare streams: not every stream opened within 60 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let senders = hub
        .lock()
        .map(|mut hub| std::mem::take(&mut *hub))
        .map_err(|_| "hub poisoned".to_owned())?;
    let frame = frame();
    let started = Instant::now();
    let cpu_before = crate::cluster::own_cpu_seconds();
    while started.elapsed() < duration {
        for tx in &senders {
            let _ = tx.send(frame.clone()).await;
        }
    }
    let cpu = crate::cluster::own_cpu_seconds() - cpu_before;
    let count = delivered.load(Ordering::Relaxed);
    let carried = Carried {
        per_second: count as f64 / started.elapsed().as_secs_f64(),
        cpu_us_per_delivery: cpu * 1e6 / count.max(1) as f64,
    };
    drop(senders);
    for reader in readers {
        let _ = reader.await;
    }
    server.abort();
    Ok(carried)
}

/// One client stream: decodes and counts each frame until the stream ends.
async fn read(channel: tonic::transport::Channel, delivered: Arc<AtomicU64>) {
    let mut client = tonic::client::Grpc::new(channel);
    if client.ready().await.is_err() {
        return;
    }
    let path = http::uri::PathAndQuery::from_static(PATH);
    let Ok(response) = client
        .server_streaming(tonic::Request::new(Bytes::new()), path, Raw)
        .await
    else {
        return;
    };
    let mut frames = response.into_inner();
    while let Ok(Some(bytes)) = frames.message().await {
        if matches!(
            pb::ConnectResponse::decode(bytes),
            Ok(pb::ConnectResponse {
                frame: Some(Out::Message(_))
            })
        ) {
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}
