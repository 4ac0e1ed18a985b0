//! The stream's wire: frames for the client are encoded where they are made
//! and travel as bytes from there on. A live delivery is encoded once by the
//! dispatcher and the same bytes go to every device of every member connected
//! here; the codec only copies them into the stream. Its buffers start small,
//! so an idle stream holds a few hundred bytes of them, not tonic's 16 KiB.

use std::sync::Arc;

use bytes::BufMut;
use parley_proto::gateway::{self as pb, connect_response::Frame as Out};
use prost::Message as _;
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// First size of a stream's encode and decode buffers: a client frame
/// (a heartbeat, an ack) fits, larger ones grow the buffer as they come.
const BUFFER: usize = 256;
/// Encoded frames gathered before they are handed to HTTP/2 (tonic's own).
const YIELD_AT: usize = 32 * 1024;

/// One `ConnectResponse`, encoded; clones share the bytes. A thin pointer
/// (16 bytes) because every stream's queues allocate 32 slots at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Arc<[u8]>);

impl Frame {
    /// Encodes `frame` as the `ConnectResponse` that carries it.
    pub fn encode(frame: Out) -> Self {
        Self(
            pb::ConnectResponse { frame: Some(frame) }
                .encode_to_vec()
                .into(),
        )
    }

    /// The closing frame: the gateway closes the stream for `reason`.
    pub fn closing(reason: String) -> Self {
        Self::encode(Out::Closing(pb::ClosingFrame { reason }))
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A message as a session takes it: where it goes in its group, and the
/// frame that carries it. The dispatcher shares one per bus event with every
/// device it goes to, behind an `Arc`.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The group.
    pub gid: u64,
    /// Its seq in the group.
    pub seq: u64,
    /// The message id.
    pub msgid: u64,
    /// The `ConnectResponse` carrying the message.
    pub frame: Frame,
}

impl Delivery {
    /// Encodes `message` once; clones share the bytes.
    pub fn encode(message: pb::DeliveredMessage) -> Self {
        Self {
            gid: message.gid,
            seq: message.seq,
            msgid: message.msgid,
            frame: Frame::encode(Out::Message(message)),
        }
    }
}

/// The Connect method's codec: frames out as they were encoded, requests in
/// through prost, both with small first buffers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Codec;

impl tonic::codec::Codec for Codec {
    type Encode = Frame;
    type Decode = pb::ConnectRequest;
    type Encoder = FrameEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder
    }
}

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD_AT)
}

/// Copies encoded frames into the stream.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = Frame;
    type Error = Status;

    fn encode(&mut self, item: Frame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.0);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// Decodes the client's frames.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = pb::ConnectRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::ConnectRequest>, Status> {
        pb::ConnectRequest::decode(src)
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// The server half of `parley.gateway.v1.GatewayService`, generated with
/// [`Codec`] (see `build.rs`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod server {
    include!(concat!(
        env!("OUT_DIR"),
        "/parley.gateway.v1.GatewayService.rs"
    ));
}
