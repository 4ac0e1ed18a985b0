//! Talking to a running suite: gRPC clients acting as a user, and a device
//! stream to the gateway.

use std::time::Duration;

use parley_proto::{
    gateway::{
        self as pb, connect_request::Frame as In, connect_response::Frame as Out,
        gateway_service_client::GatewayServiceClient, request_frame::Call,
    },
    message::message_service_client::MessageServiceClient,
    notification::notification_service_client::NotificationServiceClient,
    receipt::receipt_service_client::ReceiptServiceClient,
};
use parley_server::Uid;
use tokio::sync::mpsc;

use crate::{Output, failure::Failure};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Status, codegen::InterceptedService, metadata::AsciiMetadataValue,
    service::Interceptor, transport::Channel,
};

use parley_server::ports;

/// Where the suite is.
#[derive(Clone, Debug, clap::Args)]
pub struct Endpoints {
    /// The gateway.
    #[arg(
        long,
        env = "PARLEY_GATEWAY_URL",
        default_value_t = ports::local_url(ports::GATEWAY),
        global = true
    )]
    pub gateway: String,
    /// The message service (for group administration, as the dev suite allows).
    #[arg(
        long,
        env = "PARLEY_MESSAGE_URL",
        default_value_t = ports::local_url(ports::MESSAGE),
        global = true
    )]
    pub message: String,
    /// The receipt service.
    #[arg(
        long,
        env = "PARLEY_RECEIPT_URL",
        default_value_t = ports::local_url(ports::RECEIPT),
        global = true
    )]
    pub receipt: String,
    /// The notification service.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_URL",
        default_value_t = ports::local_url(ports::NOTIFICATION),
        global = true
    )]
    pub notification: String,
    /// HS256 secret for the tokens the CLI signs (the dev suite's by default).
    #[arg(long, env = "PARLEY_DEV_JWT_SECRET", default_value = crate::dev::DEV_JWT_SECRET,
          hide_default_value = true, global = true)]
    pub secret: String,
}

/// Adds the acting user to each request, as a trusted internal caller would.
#[derive(Clone)]
pub struct ActingAs(AsciiMetadataValue);

impl Interceptor for ActingAs {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(parley_server::caller::UID_HEADER, self.0.clone());
        Ok(request)
    }
}

/// Connects lazily to `url`.
fn channel(url: &str) -> Result<Channel, String> {
    parley_server::lazy_channel("service", url)
}

fn acting(uid: &Uid) -> Result<ActingAs, String> {
    AsciiMetadataValue::try_from(uid.as_str())
        .map(ActingAs)
        .map_err(|e| e.to_string())
}

/// The message service, as `uid`.
pub fn message(
    endpoints: &Endpoints,
    uid: &Uid,
) -> Result<MessageServiceClient<InterceptedService<Channel, ActingAs>>, String> {
    Ok(MessageServiceClient::with_interceptor(
        channel(&endpoints.message)?,
        acting(uid)?,
    ))
}

/// The receipt service, as `uid`.
pub fn receipt(
    endpoints: &Endpoints,
    uid: &Uid,
) -> Result<ReceiptServiceClient<InterceptedService<Channel, ActingAs>>, String> {
    Ok(ReceiptServiceClient::with_interceptor(
        channel(&endpoints.receipt)?,
        acting(uid)?,
    ))
}

/// The notification service, as `uid`.
pub fn notification(
    endpoints: &Endpoints,
    uid: &Uid,
) -> Result<NotificationServiceClient<InterceptedService<Channel, ActingAs>>, String> {
    Ok(NotificationServiceClient::with_interceptor(
        channel(&endpoints.notification)?,
        acting(uid)?,
    ))
}

/// A device's stream to the gateway.
pub struct Device {
    /// Who it is.
    pub uid: Uid,
    tx: mpsc::Sender<pb::ConnectRequest>,
    rx: tonic::Streaming<pb::ConnectResponse>,
    next_request: u64,
    out: Output,
}

impl Device {
    /// Opens the stream with a freshly signed token and waits for AuthOk;
    /// frames that come while a command waits for its answer are shown as
    /// `out` says.
    pub async fn connect(
        endpoints: &Endpoints,
        uid: &Uid,
        device_id: &str,
        out: Output,
    ) -> Result<Self, Failure> {
        let token = parley_gateway::auth::issue_hs256(endpoints.secret.as_bytes(), uid, 3600)
            .map_err(|e| e.to_string())?;
        let channel = tonic::transport::Endpoint::from_shared(endpoints.gateway.clone())
            .map_err(|_| "the gateway URL is not a valid URI".to_owned())?
            .connect()
            .await
            .map_err(|e| {
                Failure::unreachable(format!(
                    "gateway at {} ({e}); is `make dev` running?",
                    endpoints.gateway
                ))
            })?;
        let (tx, rx) = mpsc::channel(256);
        let auth = pb::AuthFrame {
            token,
            device_id: device_id.to_owned(),
            receipts_cursor: String::new(),
        };
        tx.send(pb::ConnectRequest {
            frame: Some(In::Auth(auth)),
        })
        .await
        .map_err(|_| "stream closed".to_owned())?;
        let rx = GatewayServiceClient::new(channel)
            .connect(ReceiverStream::new(rx))
            .await
            .map_err(Failure::status("open the stream"))?
            .into_inner();
        let mut device = Self {
            uid: uid.clone(),
            tx,
            rx,
            next_request: 1,
            out,
        };
        match device.next(ANSWER_WITHIN).await? {
            Some(Out::AuthOk(_)) => Ok(device),
            Some(_) => Err(Failure::other(
                "the gateway answered the auth frame with something other than auth_ok",
            )),
            None => Err(Failure::unreachable(format!(
                "no answer to the auth frame within {} s",
                ANSWER_WITHIN.as_secs()
            ))),
        }
    }

    /// The next frame within `wait` (`None` on timeout).
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Out>, Failure> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Err(_) => Ok(None),
            Ok(Ok(Some(frame))) => Ok(frame.frame),
            Ok(Ok(None)) => Err(Failure::unreachable("the gateway closed the stream")),
            Ok(Err(status)) => Err(Failure::status("the stream")(status)),
        }
    }

    async fn send_frame(&self, frame: In) -> Result<(), String> {
        self.tx
            .send(pb::ConnectRequest { frame: Some(frame) })
            .await
            .map_err(|_| "stream closed".to_owned())
    }

    /// The next request id on this stream.
    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request = id.saturating_add(1);
        id
    }

    /// Waits for the answer to request `request_id`; frames before it are
    /// [shown aside](Self::aside). A refused answer is a [`Failure`] by its
    /// reason.
    async fn answer<A: Answer>(&mut self, request_id: u64) -> Result<A, Failure> {
        loop {
            let Some(frame) = self.next(ANSWER_WITHIN).await? else {
                return Err(Failure::unreachable(format!(
                    "no {} result within {} s",
                    A::WHAT,
                    ANSWER_WITHIN.as_secs()
                )));
            };
            let Some(answer) = A::pick(&frame, request_id) else {
                self.aside(&frame);
                continue;
            };
            let (code, reason, error) = answer.outcome();
            if code != 0 {
                return Err(Failure::of(A::WHAT, code.into(), reason, error));
            }
            return Ok(answer.clone());
        }
    }

    /// A frame that is not what the command waits for (a message of the
    /// backlog, a digest): shown to people, and left out of JSON output, where
    /// each command prints its result alone.
    fn aside(&self, frame: &Out) {
        if !self.out.json() {
            show_frame(&self.uid, frame, self.out);
        }
    }

    /// Sends a message and waits for its result.
    pub async fn send(
        &mut self,
        gid: u64,
        text: &str,
        need_receipt: bool,
    ) -> Result<pb::SendResultFrame, Failure> {
        let request_id = self.request_id();
        let client_msg_id = format!("cli-{}-{request_id}", parley_server::now_ms());
        self.send_frame(In::Send(pb::SendFrame {
            request_id,
            gid,
            client_msg_id,
            content: text.as_bytes().to_vec(),
            need_receipt,
        }))
        .await?;
        self.answer(request_id).await
    }

    /// Makes a client API call and waits for its result.
    pub async fn call(&mut self, call: Call) -> Result<pb::ResultFrame, Failure> {
        let request_id = self.request_id();
        self.send_frame(In::Request(pb::RequestFrame {
            request_id,
            call: Some(call),
        }))
        .await?;
        self.answer(request_id).await
    }

    /// A heartbeat's round trip: once its reply is here, the gateway has
    /// handled every frame sent before it (acks have no reply of their own).
    pub async fn round_trip(&mut self) -> Result<(), Failure> {
        self.heartbeat().await?;
        self.answer::<pb::HeartbeatReplyFrame>(0).await.map(drop)
    }

    /// Acknowledges a group up to `seq`.
    pub async fn ack(&self, gid: u64, seq: u64, read: bool) -> Result<(), String> {
        let entries = vec![pb::AckEntry {
            gid,
            up_to_seq: seq,
            read,
        }];
        self.send_frame(In::Ack(pb::AckFrame { entries })).await
    }

    /// Sends a heartbeat (keeps the stream alive).
    pub async fn heartbeat(&self) -> Result<(), String> {
        self.send_frame(In::Heartbeat(pb::HeartbeatFrame::default()))
            .await
    }
}

/// How long a command waits for the answer to what it sent.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A frame that answers what a device sent.
trait Answer: Clone {
    /// What was asked, for messages.
    const WHAT: &'static str;

    /// The answer to request `request_id`, if `frame` is it.
    fn pick(frame: &Out, request_id: u64) -> Option<&Self>;

    /// Its gRPC code (0: done), reason and error text.
    fn outcome(&self) -> (i32, &str, &str);
}

impl Answer for pb::SendResultFrame {
    const WHAT: &'static str = "send";

    fn pick(frame: &Out, request_id: u64) -> Option<&Self> {
        match frame {
            Out::SendResult(result) if result.request_id == request_id => Some(result),
            _ => None,
        }
    }

    fn outcome(&self) -> (i32, &str, &str) {
        (self.code, &self.reason, &self.error)
    }
}

impl Answer for pb::ResultFrame {
    const WHAT: &'static str = "call";

    fn pick(frame: &Out, request_id: u64) -> Option<&Self> {
        match frame {
            Out::Result(result) if result.request_id == request_id => Some(result),
            _ => None,
        }
    }

    fn outcome(&self) -> (i32, &str, &str) {
        (self.code, &self.reason, &self.error)
    }
}

impl Answer for pb::HeartbeatReplyFrame {
    const WHAT: &'static str = "heartbeat";

    /// A heartbeat has no request id: the next reply answers it.
    fn pick(frame: &Out, _: u64) -> Option<&Self> {
        match frame {
            Out::HeartbeatReply(reply) => Some(reply),
            _ => None,
        }
    }

    fn outcome(&self) -> (i32, &str, &str) {
        (0, "", "")
    }
}

/// Shows a frame as `parley watch` and the demo do: a line of text, or with
/// `--json` a JSON object, for each message, receipt and notice it carries.
pub fn show_frame(uid: &Uid, frame: &Out, out: Output) {
    match frame {
        Out::Message(m) => {
            let text = String::from_utf8_lossy(&m.content);
            out.result(
                || {
                    format!(
                        "  [{uid}] group {} seq {} from {}: {text}",
                        m.gid, m.seq, m.sender_uid
                    )
                },
                serde_json::json!({
                    "event": "message",
                    "gid": m.gid,
                    "seq": m.seq,
                    "msgid": m.msgid,
                    "sender": m.sender_uid,
                    "text": text,
                    "need_receipt": m.need_receipt,
                    "created_at_ms": m.created_at_ms,
                }),
            );
        }
        Out::ReceiptDigest(d) => {
            for e in &d.entries {
                out.result(
                    || {
                        format!(
                            "  [{uid}] receipt: message {} (group {} seq {}) read by {} of {}",
                            e.msgid, e.gid, e.seq, e.read_count, e.recipient_count
                        )
                    },
                    serde_json::json!({
                        "event": "receipt",
                        "gid": e.gid,
                        "seq": e.seq,
                        "msgid": e.msgid,
                        "read_count": e.read_count,
                        "recipient_count": e.recipient_count,
                    }),
                );
            }
        }
        Out::HeartbeatReply(r) => {
            for e in &r.receipt_changes {
                out.result(
                    || {
                        format!(
                            "  [{uid}] watched message {} read by {} of {}",
                            e.msgid, e.read_count, e.recipient_count
                        )
                    },
                    serde_json::json!({
                        "event": "watched_receipt",
                        "msgid": e.msgid,
                        "read_count": e.read_count,
                        "recipient_count": e.recipient_count,
                    }),
                );
            }
        }
        Out::Closing(c) => out.result(
            || format!("  [{uid}] gateway closing the stream: {}", c.reason),
            serde_json::json!({ "event": "closing", "reason": c.reason }),
        ),
        _ => {}
    }
}
