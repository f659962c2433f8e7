//! WebSockets ccedge ends itself: each gets a close frame where a frame ends, and its upstream a
//! masked one.

use crate::harness::upstream::Handler;
use crate::harness::ws::{self, EchoLog, SLOW_FRAME_LEN};
use crate::harness::{free_port, server_block, Ca, Ccedge, TestDir, Upstream};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const HOST: &str = "finesse1.example.com";

struct Site {
    _dir: TestDir,
    ca: Ca,
    port: u16,
    log: Arc<EchoLog>,
    ccedge: Ccedge,
}

/// A TLS Finesse site in front of an echoing WebSocket upstream; `limits` is added to the site
/// (indented four spaces).
async fn site(name: &str, limits: &str) -> Site {
    let dir = TestDir::new(name);
    let ca = Ca::new(name);
    let cert = ca.server(&dir.path, "proxy", &[HOST]);
    let log = Arc::new(EchoLog::default());
    let handler: Handler = ws::echo_handler(log.clone());
    let upstream = Upstream::custom("ws", handler).await;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    rate_limits: []\n{limits}    tls:\n      cert: {c}\n      key: {k}\n    \
         servers:\n      - public: {HOST}:{port}\n        upstream: {u}\n",
        server = server_block(&dir.path, Some(admin)),
        c = cert.cert.display(),
        k = cert.key.display(),
        u = upstream.authority(),
    );
    let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
    std::mem::forget(upstream);
    Site {
        _dir: dir,
        ca,
        port,
        log,
        ccedge,
    }
}

/// What the client receives until the connection ends: messages, then the close frame's code.
async fn until_closed(client: &mut ws::Client, within: Duration) -> (Vec<Message>, Option<u16>) {
    let mut messages = Vec::new();
    let ended = tokio::time::timeout(within, async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(message)) => messages.push(message),
                Some(Err(e)) => panic!("the stream broke: {e} (after {} messages)", messages.len()),
                None => return None,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not closed within {within:?}"));
    (messages, ended)
}

async fn upstream_ending(log: &EchoLog) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(ending) = log.endings.lock().unwrap().first() {
            return ending.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the upstream connection did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stop_closes_a_websocket_after_the_frame_in_flight() {
    let mut site = site("ws-stop", "").await;
    let mut client = ws::connect(HOST, site.port, "/ws", &site.ca.pem).await;
    ws::echoes(&mut client, "before the stop").await;
    client
        .send(Message::text("slow-frame-please"))
        .await
        .unwrap();
    // Half of the frame has gone through when the stop comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    site.ccedge.signal("TERM");
    let (messages, code) = until_closed(&mut client, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0], Message::text("x".repeat(SLOW_FRAME_LEN)));
    assert_eq!(code, Some(1001));
    assert_eq!(upstream_ending(&site.log).await, "client closed (1001)");
    assert_eq!(site.ccedge.wait_exit(10).await, Some(0));
}

#[tokio::test]
async fn an_idle_websocket_gets_close_frames_both_ways() {
    let site = site(
        "ws-idle",
        "    limits:\n      websocket_idle_timeout_ms: 600\n",
    )
    .await;
    let mut client = ws::connect(HOST, site.port, "/ws", &site.ca.pem).await;
    ws::echoes(&mut client, "then silence").await;
    let started = Instant::now();
    let (messages, code) = until_closed(&mut client, Duration::from_secs(5)).await;
    assert!(messages.is_empty(), "{messages:?}");
    assert_eq!(code, Some(1001));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed too soon"
    );
    assert_eq!(upstream_ending(&site.log).await, "client closed (1001)");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let lines = site.ccedge.log_lines();
        if let Some(line) = lines.into_iter().find(|l| l["path"] == "/ws") {
            break line;
        }
        assert!(Instant::now() < deadline, "the WebSocket is not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["status"], 101, "{line}");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains("websocket_idle_timeout_ms"), "{line}");
    assert!(
        !site.ccedge.stderr_text().contains("ERROR"),
        "{}",
        site.ccedge.stderr_text()
    );
}

#[tokio::test]
async fn websocket_frames_are_not_a_request_body() {
    let site = site("ws-body", "    limits:\n      max_body_bytes: 1000\n").await;
    let mut client = ws::connect(HOST, site.port, "/ws", &site.ca.pem).await;
    for i in 0..5 {
        ws::echoes(&mut client, &format!("{i}{}", "y".repeat(600))).await;
    }
}

#[tokio::test]
async fn a_websocket_handshake_ccedge_does_not_follow_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let site = site("ws-odd-handshake", "").await;
    // Pingora would tunnel these once the upstream answers 101; ccedge's rules (auth,
    // revocation, close frames, the drain) would not see a WebSocket in them.
    for request in [
        "POST /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n",
        "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n",
        "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: h2c, websocket\r\nConnection: Upgrade\r\n",
    ] {
        let request = request.replace("{HOST}", HOST)
            + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", site.port)).await.unwrap();
        let mut connector =
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
        connector.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let ssl = connector.build().configure().unwrap().into_ssl(HOST).unwrap();
        let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
        std::pin::Pin::new(&mut tls).connect().await.unwrap();
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
    }
    assert!(
        site.log.upgrades.lock().unwrap().is_empty(),
        "an upgrade reached the upstream"
    );
}
