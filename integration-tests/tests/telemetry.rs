//! What the services tell their operators: Prometheus metrics of every RPC.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Backend, Suite, create_group, send_direct, user};

/// A plain HTTP/1.1 GET; the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics listener answers");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .await
        .expect("response read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test]
async fn metrics_endpoint_serves_rpc_counts_and_latency_histograms() {
    // This process's recorder (nextest runs each test in its own process).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("bound address");
    parley_server::telemetry::serve_metrics_on(listener).expect("metrics served");
    let suite = Suite::start(Backend::Sqlite).await;
    let gid = create_group(&suite, "A", "Metrics", &["uid1"]).await;
    for i in 0..3 {
        send_direct(&suite, "A", gid, &format!("m{i}"), 8).await;
    }
    let outsider = parley_proto::message::SendMessageRequest {
        gid,
        client_msg_id: "intruder".into(),
        content: b"hi".to_vec(),
        need_receipt: false,
    };
    let refused = suite
        .message(user("mallory"))
        .send_message(outsider)
        .await
        .expect_err("a non-member cannot send");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let send = "method=\"/parley.message.v1.MessageService/SendMessage\"";
    assert_eq!(
        sample(
            &text,
            &format!("parley_rpc_requests_total{{{send},code=\"Ok\"}}")
        ),
        Some(3.0),
        "three sends counted OK:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("parley_rpc_requests_total{{{send},code=\"PermissionDenied\"}}")
        ),
        Some(1.0),
        "the refused send counted with its code"
    );
    assert_eq!(
        sample(
            &text,
            &format!("parley_rpc_duration_seconds_count{{{send},code=\"Ok\"}}")
        ),
        Some(3.0),
        "a latency histogram, not a summary"
    );
    assert_eq!(
        sample(
            &text,
            &format!("parley_rpc_duration_seconds_bucket{{{send},code=\"Ok\",le=\"+Inf\"}}")
        ),
        Some(3.0)
    );
    // The outbox's internal calls (made after the sends, asynchronously) are
    // counted by the receipt service too.
    let init = "parley_rpc_requests_total{method=\"/parley.receipt.v1.ReceiptService/InitReceipts\",code=\"Ok\"}";
    parley_testkit::eventually(
        "InitReceipts counted for the three messages",
        std::time::Duration::from_secs(10),
        || async {
            let (_, text) = http_get(addr, "/metrics").await;
            (sample(&text, init) >= Some(1.0)).then_some(())
        },
    )
    .await;
    let (status, _) = http_get(addr, "/other").await;
    assert_eq!(status, 404);
    suite.stop().await;
}
