//! The gateway's WebSocket transport, as a browser meets it: the same frames
//! as the gRPC stream, one binary message each, into the same session code.
//! A browser and an app chat across the two transports; every refusal closes
//! with 4000 plus its gRPC code and a reason; a page from another origin is
//! refused at the handshake; a client that stops answering pings, or stops
//! reading, is dropped; a stopping gateway says goodbye.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use parley_proto::gateway::{
    self as pb, connect_request::Frame as In, connect_response::Frame as Out,
};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest as _},
};
use tonic::Code;

use crate::{
    device::{Device, Transport, auth_frame, open_ws, seqs, token},
    support::{
        ALLOWED_ORIGIN, Backend, Options, Suite, create_group, devices_of, firehose,
        on_both_backends, wait_for_devices,
    },
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(30);

/// A bare WebSocket to gateway 0, from the allowed origin.
async fn open_socket(suite: &Suite) -> Socket {
    let mut request = format!("ws://{}{}", suite.ws_addrs[0], parley_gateway::ws::PATH)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("origin", ALLOWED_ORIGIN.parse().expect("origin"));
    tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket accepted")
        .0
}

fn binary(frame: In) -> Message {
    Message::Binary(
        pb::ConnectRequest { frame: Some(frame) }
            .encode_to_vec()
            .into(),
    )
}

/// A bare socket, authenticated as `uid`: AuthOk read.
async fn authenticated(suite: &Suite, uid: &str) -> Socket {
    let mut socket = open_socket(suite).await;
    socket
        .send(binary(In::Auth(auth_frame(uid, "browser"))))
        .await
        .expect("send auth");
    match next_frame(&mut socket).await {
        Some(Out::AuthOk(ok)) => assert_eq!(ok.uid, uid),
        other => panic!("expected auth_ok, got {other:?}"),
    }
    socket
}

/// The next frame on `socket`, or None once it closed.
async fn next_frame(socket: &mut Socket) -> Option<Out> {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message within 30 s")?;
        match message.ok()? {
            Message::Binary(bytes) => {
                let response = pb::ConnectResponse::decode(bytes).expect("a ConnectResponse");
                return response.frame;
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// Reads `socket` to its close frame: its code and reason, with the frames
/// that came before it.
async fn close_of(socket: &mut Socket) -> (u16, String, Vec<Out>) {
    let mut frames = Vec::new();
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("the socket closes within 30 s")
            .expect("a close frame before the end")
            .expect("a clean close");
        match message {
            Message::Binary(bytes) => {
                let response = pb::ConnectResponse::decode(bytes).expect("a ConnectResponse");
                frames.extend(response.frame);
            }
            Message::Close(Some(close)) => {
                return (u16::from(close.code), close.reason.to_string(), frames);
            }
            Message::Close(None) => panic!("a close without a code"),
            _ => {}
        }
    }
}

/// A browser and an app in one group: messages go both ways across the two
/// transports, the browser's read reaches the sender as a receipt, and the
/// browser's heartbeats are answered.
async fn a_browser_and_an_app_chat_across_transports(backend: Backend) {
    let suite = Suite::start(backend).await;
    let gid = create_group(&suite, "A", "Design", &["uid1"]).await;
    let mut app = Device::connect_over(Transport::Grpc, &suite, 0, "A", "phone").await;
    let mut browser = Device::connect_over(Transport::WebSocket, &suite, 0, "uid1", "web").await;
    app.drain(vec![]).await;
    browser.drain(vec![]).await;

    let sent = app.send_and_wait(gid, "from-app").await;
    assert_eq!((sent.code, sent.seq), (0, 1));
    let mut others = Vec::new();
    let got = browser.messages(1, &mut others).await;
    assert_eq!(
        (got[0].msgid, got[0].sender_uid.as_str()),
        (sent.msgid, "A")
    );
    let reply = browser.send_and_wait(gid, "from-browser").await;
    assert_eq!((reply.code, reply.seq), (0, 2));
    let got = app.messages(2, &mut others).await;
    assert_eq!(
        seqs(&got, gid),
        [1, 2],
        "the app gets its own and the reply"
    );

    browser.ack(gid, 2, true).await;
    let mut digest = None;
    while digest.is_none() {
        match app.frame().await {
            Out::ReceiptDigest(frame) => {
                digest = frame.entries.into_iter().find(|e| e.msgid == sent.msgid);
            }
            Out::Closing(closing) => panic!("closed: {}", closing.reason),
            _ => {}
        }
    }
    let digest = digest.expect("the app's message's receipt");
    assert_eq!((digest.read_count, digest.recipient_count), (1, 1));
    let (_, reply) = browser.drain(vec![]).await;
    assert_eq!(reply.code, 0);
    suite.stop().await;
}

/// Each way a WebSocket is refused says why: a page from an origin not on
/// the list gets 403 at the handshake, while one with no Origin (an app) is
/// let in; after the handshake, a refusal closes with 4000 plus its gRPC code.
async fn every_refusal_closes_with_its_code_and_reason(backend: Backend) {
    let suite = Suite::start(backend).await;
    let addr = suite.ws_addrs[0];
    let refused = open_ws(
        addr,
        Some("https://evil.example"),
        auth_frame("uid1", "web"),
    )
    .await;
    assert_eq!(refused.err(), Some(403));
    let (_tx, mut rx) = open_ws(addr, None, auth_frame("uid1", "app"))
        .await
        .expect("no Origin: not a browser, let in");
    let first = rx.next().await.expect("a frame").expect("auth ok");
    assert!(matches!(first.frame, Some(Out::AuthOk(_))), "{first:?}");

    let bad_token = pb::AuthFrame {
        token: format!("{}x", token("uid1")),
        device_id: "web".into(),
        receipts_cursor: String::new(),
    };
    let mut socket = open_socket(&suite).await;
    socket
        .send(binary(In::Auth(bad_token)))
        .await
        .expect("send");
    let (code, reason, _) = close_of(&mut socket).await;
    assert_eq!((code, reason.as_str()), (4016, "invalid token"));

    let mut socket = open_socket(&suite).await;
    let heartbeat = In::Heartbeat(pb::HeartbeatFrame::default());
    socket.send(binary(heartbeat)).await.expect("send");
    let (code, reason, _) = close_of(&mut socket).await;
    assert_eq!(code, 4016, "{reason}");
    assert!(reason.contains("first frame must be auth"), "{reason}");

    let mut socket = open_socket(&suite).await;
    socket
        .send(binary(In::Auth(auth_frame("uid1", "bad device"))))
        .await
        .expect("send");
    let (code, reason, _) = close_of(&mut socket).await;
    assert_eq!(code, 4003, "{reason}");

    // After auth: text, undecodable bytes, a frame over 4 MiB, and a frame
    // over a documented limit.
    let too_many = In::Ack(pb::AckFrame {
        entries: vec![pb::AckEntry::default(); 101],
    });
    let cases: [(Message, u16, &str); 4] = [
        (Message::Text("hello".into()), 4003, "binary"),
        (Message::Binary(vec![0xff; 8].into()), 4003, "undecodable"),
        (
            Message::Binary(vec![0; 4 * 1024 * 1024 + 10].into()),
            4008,
            "too large",
        ),
        (binary(too_many), 4003, "ack.entries: at most 100"),
    ];
    for (message, expected, says) in cases {
        let mut socket = authenticated(&suite, "uid1").await;
        socket.send(message).await.expect("send");
        let (code, reason, _) = close_of(&mut socket).await;
        assert_eq!(code, expected, "{reason}");
        assert!(reason.contains(says), "{says}: {reason}");
    }
    suite.stop().await;
}

/// A client that answers no ping and sends nothing is dropped after three
/// pings, and its device goes offline.
async fn a_websocket_that_answers_no_ping_is_dropped(backend: Backend) {
    let options = Options {
        ws_ping_interval_ms: 200,
        ..Options::default()
    };
    let suite = Suite::start_with(backend, options).await;
    // Read by nobody from here on: tungstenite answers pings only as it reads.
    let _silent = authenticated(&suite, "uid1").await;
    wait_for_devices(&suite, &[("uid1", 1)]).await;
    wait_for_devices(&suite, &[("uid1", 0)]).await;
    // One that reads (and so answers pings) stays past many intervals.
    let mut alive = authenticated(&suite, "uid2").await;
    let reader = tokio::spawn(async move { while alive.next().await.is_some() {} });
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        devices_of(&suite, "uid2").await.len(),
        1,
        "a reading client stays"
    );
    reader.abort();
    suite.stop().await;
}

/// A stopping gateway sends its closing frame and then "going away".
async fn a_stopping_gateway_says_goodbye_over_websocket(backend: Backend) {
    let mut suite = Suite::start(backend).await;
    let mut socket = authenticated(&suite, "uid1").await;
    wait_for_devices(&suite, &[("uid1", 1)]).await;
    suite.stop_gateway(0).await;
    let (code, reason, frames) = close_of(&mut socket).await;
    assert_eq!(code, parley_gateway::ws::GOING_AWAY, "{reason}");
    assert!(reason.contains("shutting down"), "{reason}");
    let closing = frames.iter().find_map(|frame| match frame {
        Out::Closing(closing) => Some(closing.reason.clone()),
        _ => None,
    });
    assert!(
        closing.is_some_and(|r| r.contains("reconnect")),
        "{frames:?}"
    );
    suite.stop().await;
}

/// A browser that stops reading is cut off like any slow client, without
/// holding up the others.
async fn a_websocket_that_stops_reading_is_cut_off(backend: Backend) {
    let options = Options {
        outbound_queue: 8,
        slow_consumer_timeout_ms: 1_000,
        ..Options::default()
    };
    let suite = Suite::start_with(backend, options).await;
    let gid = create_group(&suite, "A", "Firehose", &["slow", "fast"]).await;
    let mut slow = Device::connect_over(Transport::WebSocket, &suite, 0, "slow", "web").await;
    let mut fast = Device::connect_over(Transport::WebSocket, &suite, 0, "fast", "web").await;
    slow.drain(vec![]).await;
    fast.drain(vec![]).await;
    // A socket's buffers hold more than an HTTP/2 window: more messages.
    let (received, reason) = firehose(&suite, gid, (slow, fast), 400).await;
    // Its writer may be stuck on the full socket: the cut-off is then a
    // dropped connection rather than a closing frame.
    if let Some(reason) = reason {
        assert!(reason.contains("outbound queue full"), "{reason}");
    }
    assert!(
        received < 400,
        "the slow reader was cut off (got {received})"
    );
    suite.stop().await;
}

on_both_backends!(
    a_browser_and_an_app_chat_across_transports,
    a_stopping_gateway_says_goodbye_over_websocket,
    a_websocket_that_answers_no_ping_is_dropped,
    a_websocket_that_stops_reading_is_cut_off,
    every_refusal_closes_with_its_code_and_reason,
);

#[test]
fn the_close_codes_are_the_documented_ones() {
    assert_eq!(
        parley_gateway::ws::REFUSED_BASE + Code::Unauthenticated as u16,
        4016
    );
    assert_eq!(
        u16::from(tungstenite::protocol::frame::coding::CloseCode::Away),
        parley_gateway::ws::GOING_AWAY
    );
}
