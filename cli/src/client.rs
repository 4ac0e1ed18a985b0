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

use crate::failure::Failure;
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
}

impl Device {
    /// Opens the stream with a freshly signed token and waits for AuthOk.
    pub async fn connect(
        endpoints: &Endpoints,
        uid: &Uid,
        device_id: &str,
    ) -> Result<Self, Failure> {
        let token = parley_gateway::auth::issue_hs256(endpoints.secret.as_bytes(), uid, 3600)
            .map_err(|e| e.to_string())?;
        let channel = tonic::transport::Endpoint::from_shared(endpoints.gateway.clone())
            .map_err(|_| "the gateway URL is not a valid URI".to_owned())?
            .connect()
            .await
            .map_err(|e| {
                Failure::Unreachable(format!(
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
        };
        match device.next(Duration::from_secs(10)).await? {
            Some(Out::AuthOk(_)) => Ok(device),
            Some(_) => Err(Failure::Other(
                "the gateway answered the auth frame with something other than auth_ok".into(),
            )),
            None => Err(Failure::Unreachable(
                "no answer to the auth frame within 10 s".into(),
            )),
        }
    }

    /// The next frame within `wait` (`None` on timeout).
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Out>, Failure> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Err(_) => Ok(None),
            Ok(Ok(Some(frame))) => Ok(frame.frame),
            Ok(Ok(None)) => Err(Failure::Unreachable("the gateway closed the stream".into())),
            Ok(Err(status)) => Err(Failure::status("the stream")(status)),
        }
    }

    async fn send_frame(&self, frame: In) -> Result<(), String> {
        self.tx
            .send(pb::ConnectRequest { frame: Some(frame) })
            .await
            .map_err(|_| "stream closed".to_owned())
    }

    /// Sends a message and waits for its result; other frames are printed.
    pub async fn send(
        &mut self,
        gid: u64,
        text: &str,
        need_receipt: bool,
    ) -> Result<pb::SendResultFrame, Failure> {
        let request_id = self.next_request;
        self.next_request += 1;
        let client_msg_id = format!("cli-{}-{request_id}", parley_server::now_ms());
        self.send_frame(In::Send(pb::SendFrame {
            request_id,
            gid,
            client_msg_id,
            content: text.as_bytes().to_vec(),
            need_receipt,
        }))
        .await?;
        loop {
            match self.next(Duration::from_secs(10)).await? {
                Some(Out::SendResult(result)) if result.request_id == request_id => {
                    if result.code != 0 {
                        return Err(Failure::of(
                            "send",
                            result.code.into(),
                            &result.reason,
                            &result.error,
                        ));
                    }
                    return Ok(result);
                }
                Some(other) => print_frame(&self.uid, &other),
                None => {
                    return Err(Failure::Unreachable("no send result within 10 s".into()));
                }
            }
        }
    }

    /// Makes a client API call and waits for its result; other frames are
    /// printed. A refused call is a [`Failure`] by its reason.
    pub async fn call(&mut self, call: Call) -> Result<pb::ResultFrame, Failure> {
        let request_id = self.next_request;
        self.next_request += 1;
        self.send_frame(In::Request(pb::RequestFrame {
            request_id,
            call: Some(call),
        }))
        .await?;
        loop {
            match self.next(Duration::from_secs(10)).await? {
                Some(Out::Result(result)) if result.request_id == request_id => {
                    if result.code != 0 {
                        return Err(Failure::of(
                            "call",
                            result.code.into(),
                            &result.reason,
                            &result.error,
                        ));
                    }
                    return Ok(result);
                }
                Some(other) => print_frame(&self.uid, &other),
                None => return Err(Failure::Unreachable("no call result within 10 s".into())),
            }
        }
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

/// Prints a frame the way `parley watch` and the demo show it.
pub fn print_frame(uid: &Uid, frame: &Out) {
    match frame {
        Out::Message(m) => println!(
            "  [{uid}] group {} seq {} from {}: {}",
            m.gid,
            m.seq,
            m.sender_uid,
            String::from_utf8_lossy(&m.content)
        ),
        Out::ReceiptDigest(d) => {
            for e in &d.entries {
                println!(
                    "  [{uid}] receipt: message {} (group {} seq {}) read by {} of {}",
                    e.msgid, e.gid, e.seq, e.read_count, e.recipient_count
                );
            }
        }
        Out::HeartbeatReply(r) => {
            for e in &r.receipt_changes {
                println!(
                    "  [{uid}] watched message {} read by {} of {}",
                    e.msgid, e.read_count, e.recipient_count
                );
            }
        }
        Out::Closing(c) => println!("  [{uid}] gateway closing the stream: {}", c.reason),
        Out::SendResult(r) if r.code != 0 => println!("  [{uid}] send refused: {}", r.error),
        _ => {}
    }
}
