//! The stream's frames as bytes: a live delivery is encoded once by the
//! gateway and the same bytes go to every device; they must be exactly the
//! frame a prost encoding of the stored message gives, live or from the
//! backlog.

use bytes::{Buf, Bytes};
use parley_proto::{
    gateway::{self as pb, connect_request::Frame as In, connect_response::Frame as Out},
    message as mpb,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::support::{Backend, Suite, create_group, send_direct, user};

/// Requests encoded by prost, replies kept as the bytes that came.
#[derive(Clone, Copy, Default)]
struct RawReplies;

struct RequestEncoder;
struct BytesDecoder;

impl tonic::codec::Encoder for RequestEncoder {
    type Item = pb::ConnectRequest;
    type Error = Status;

    fn encode(
        &mut self,
        item: pb::ConnectRequest,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl tonic::codec::Codec for RawReplies {
    type Encode = pb::ConnectRequest;
    type Decode = Bytes;
    type Encoder = RequestEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

/// A device whose frames are read as raw bytes.
struct RawDevice {
    _tx: mpsc::Sender<pb::ConnectRequest>,
    rx: tonic::Streaming<Bytes>,
}

impl RawDevice {
    async fn connect(suite: &Suite, uid: &str, device_id: &str) -> Self {
        let channel = crate::device::connection(suite.gateway_addrs[0]).await;
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::ConnectRequest {
            frame: Some(In::Auth(crate::device::auth_frame(uid, device_id))),
        })
        .await
        .expect("queue auth");
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("gateway ready");
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/parley.gateway.v1.GatewayService/Connect",
        );
        let rx = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                path,
                RawReplies,
            )
            .await
            .expect("stream accepted")
            .into_inner();
        Self { _tx: tx, rx }
    }

    /// The bytes of the next message frame (other frames are skipped).
    async fn message_frame(&mut self) -> Bytes {
        let next = async {
            loop {
                let bytes = self
                    .rx
                    .message()
                    .await
                    .expect("stream open")
                    .expect("a frame");
                let frame = pb::ConnectResponse::decode(bytes.clone()).expect("decodes");
                if matches!(frame.frame, Some(Out::Message(_))) {
                    return bytes;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), next)
            .await
            .expect("a message frame within 60 s")
    }
}

#[tokio::test]
async fn a_delivery_is_the_same_bytes_on_every_device_live_and_from_the_backlog() {
    let suite = Suite::start(Backend::Sqlite).await;
    let gid = create_group(&suite, "A", "Wire", &["uid1", "uid2"]).await;
    let mut live = vec![
        RawDevice::connect(&suite, "uid1", "phone").await,
        RawDevice::connect(&suite, "uid1", "laptop").await,
        RawDevice::connect(&suite, "uid2", "phone").await,
    ];
    // A live message reaches a device only once it is registered in
    // presence: wait for all three.
    crate::support::wait_for_devices(&suite, &[("uid1", 2), ("uid2", 1)]).await;
    let sent = send_direct(&suite, "A", gid, "wire-1", 300).await;
    let mut frames = Vec::new();
    for device in &mut live {
        frames.push(device.message_frame().await);
    }
    let mut backlog = RawDevice::connect(&suite, "uid2", "tablet").await;
    frames.push(backlog.message_frame().await);

    let stored = suite
        .message(user("uid1"))
        .sync_messages(mpb::SyncMessagesRequest {
            gid,
            after_seq: 0,
            limit: 10,
        })
        .await
        .expect("sync")
        .into_inner()
        .messages
        .into_iter()
        .find(|m| m.msgid == sent.msgid)
        .expect("the message is stored");
    let expected = pb::ConnectResponse {
        frame: Some(Out::Message(pb::DeliveredMessage {
            msgid: stored.msgid,
            gid: stored.gid,
            seq: stored.seq,
            sender_uid: stored.sender_uid,
            content: stored.content,
            need_receipt: stored.need_receipt,
            created_at_ms: stored.created_at_ms,
        })),
    }
    .encode_to_vec();
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(frame.as_ref(), expected.as_slice(), "device {i}'s frame");
    }
    suite.stop().await;
}
