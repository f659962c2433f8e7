//! ccedge against slow and hostile clients and broken upstreams: timeouts that hold from the
//! first byte, the per-address connection limit, request framing that must reach the upstream
//! unambiguous or not at all, and upstream faults answered 502/504 with the TrackingID.

use crate::harness::h2raw::{
    header_block, RawH2, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, RST_STREAM, SETTINGS,
};
use crate::harness::raw::{Behaviour, RawUpstream};
use crate::harness::upstream::{full, Handler};
use crate::harness::{curl, free_port, server_block, Ca, Ccedge, TestDir, Upstream};
use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain-HTTP digital channel in front of two raw upstreams.
struct Edge {
    _dir: TestDir,
    port: u16,
    admin: u16,
    publisher: RawUpstream,
    _subscriber: RawUpstream,
    ccedge: Ccedge,
}

impl Edge {
    /// `limits` are the lines of the `limits` block (indented six spaces).
    async fn start(name: &str, limits: &str) -> Edge {
        let dir = TestDir::new(name);
        let publisher = RawUpstream::start(Behaviour::Answer).await;
        let subscriber = RawUpstream::start(Behaviour::Answer).await;
        let port = free_port();
        let admin = free_port();
        let yaml = format!(
            "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: dc.example.com:443\n    \
             publisher: {p}\n    subscriber: {s}\n    rate_limits: []\n    limits:\n{limits}",
            server = server_block(&dir.path, Some(admin)),
            p = publisher.authority(),
            s = subscriber.authority(),
        );
        let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
        Edge {
            _dir: dir,
            port,
            admin,
            publisher,
            _subscriber: subscriber,
            ccedge,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).await.unwrap()
    }

    async fn metrics(&self) -> String {
        curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin)])
            .await
            .unwrap()
            .body
    }
}

/// Reads what the server sends until it closes the connection (or `limit` passes); the bytes and
/// when the connection ended (`None`: still open at `limit`).
async fn until_closed(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => return (got, None),
        }
    }
}

const ONE_SECOND: &str = "      client_header_timeout_ms: 1000\n";

#[tokio::test]
async fn a_header_sent_a_byte_at_a_time_is_cut_at_the_header_timeout() {
    let edge = Edge::start("hard-slowloris", ONE_SECOND).await;
    let mut tcp = edge.connect().await;
    let started = Instant::now();
    tcp.write_all(b"GET /drapi/v1/tasks HTTP/1.1\r\nHost: dc.example.com\r\nX-Slow: ")
        .await
        .unwrap();
    let drip = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tcp.write_all(b"a").await.is_err() {
                return Instant::now();
            }
        }
        Instant::now()
    };
    let stopped = drip.await;
    let (_, closed) = until_closed(&mut tcp, Duration::from_secs(3)).await;
    let closed = closed.unwrap_or(stopped).min(stopped);
    let held = closed - started;
    assert!(
        held < Duration::from_millis(2500),
        "held {held:?} for a 1 s header timeout"
    );
    assert!(edge.publisher.requests().is_empty());
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let edge = Edge::start("hard-silent", ONE_SECOND).await;
    let mut tcp = edge.connect().await;
    let started = Instant::now();
    let (_, closed) = until_closed(&mut tcp, Duration::from_secs(5)).await;
    let held = closed.expect("still open after 5 s") - started;
    assert!(held < Duration::from_millis(2500), "held {held:?}");
}

#[tokio::test]
async fn a_tls_client_that_never_says_hello_is_closed_at_the_header_timeout() {
    let dir = TestDir::new("hard-tls-silent");
    let ca = Ca::new("hard-tls-silent");
    let cert = ca.server(&dir.path, "proxy", &["dc.example.com"]);
    let upstream = Upstream::plain("node").await;
    let standby = Upstream::plain("standby").await;
    let port = free_port();
    let yaml = format!(
        "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: dc.example.com:443\n    \
         tls: {{cert: {c}, key: {k}}}\n    publisher: {p}\n    subscriber: {s}\n    limits:\n{ONE_SECOND}",
        server = server_block(&dir.path, None),
        c = cert.cert.display(),
        k = cert.key.display(),
        p = upstream.authority(),
        s = standby.authority(),
    );
    let _ccedge = Ccedge::start(&dir, &yaml, &[port]).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    let (_, closed) = until_closed(&mut tcp, Duration::from_secs(5)).await;
    let held = closed.expect("still open after 5 s") - started;
    assert!(held < Duration::from_millis(2500), "held {held:?}");
}

#[tokio::test]
async fn on_a_kept_connection_the_next_header_has_the_same_deadline() {
    let edge = Edge::start("hard-keepalive", ONE_SECOND).await;
    let mut tcp = edge.connect().await;
    tcp.write_all(b"GET /drapi/v1/a HTTP/1.1\r\nHost: dc.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut chunk = [0u8; 4096];
    let n = tcp.read(&mut chunk).await.unwrap();
    assert!(chunk[..n].starts_with(b"HTTP/1.1 200"));
    tcp.write_all(b"GET /drapi/v1/b HTTP/1.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let drip = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tcp.write_all(b"X-A: b\r\n").await.is_err() {
                break;
            }
        }
    };
    drip.await;
    let (_, closed) = until_closed(&mut tcp, Duration::from_secs(1)).await;
    let held = closed.unwrap_or_else(Instant::now) - started;
    assert!(held < Duration::from_millis(4500), "held {held:?}");
    assert_eq!(edge.publisher.requests().len(), 1);
}

#[tokio::test]
async fn a_stalled_body_is_cut_at_the_header_timeout() {
    let edge = Edge::start("hard-slow-body", ONE_SECOND).await;
    let mut tcp = edge.connect().await;
    tcp.write_all(b"POST /drapi/v1/tasks HTTP/1.1\r\nHost: dc.example.com\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let (answer, closed) = until_closed(&mut tcp, Duration::from_secs(5)).await;
    let held = closed.expect("still open after 5 s") - started;
    assert!(held < Duration::from_millis(2500), "held {held:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test]
async fn connections_over_the_per_address_limit_get_503() {
    let edge = Edge::start(
        "hard-conn-limit",
        "      max_connections_per_ip: 3\n      client_header_timeout_ms: 10000\n",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = edge.connect().await;
        tcp.write_all(b"GET /drapi/v1/a HTTP/1.1\r\nHost: dc.example.com\r\n\r\n")
            .await
            .unwrap();
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(chunk[..n].starts_with(b"HTTP/1.1 200"));
        held.push(tcp);
    }
    for _ in 0..2 {
        let mut fourth = edge.connect().await;
        let _ = fourth
            .write_all(b"GET /drapi/v1/a HTTP/1.1\r\nHost: dc.example.com\r\n\r\n")
            .await;
        let (answer, closed) = until_closed(&mut fourth, Duration::from_secs(3)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("too many open connections"), "{answer}");
        assert!(closed.is_some());
    }
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("ccedge_connections_over_limit_total{service=\"cc\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ccedge_connections_open{service=\"cc\"} 3"),
        "{metrics}"
    );
    let stderr = edge.ccedge.wait_stderr("holds 3 connections on port").await;
    assert_eq!(
        stderr.matches("holds 3 connections").count(),
        1,
        "one line a second: {stderr}"
    );
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut again = edge.connect().await;
        again
            .write_all(
                b"GET /drapi/v1/a HTTP/1.1\r\nHost: dc.example.com\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let (answer, _) = until_closed(&mut again, Duration::from_secs(3)).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a freed place was never given again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `request` as is and returns the status ccedge answered (0: closed without one).
async fn status_of(edge: &Edge, request: &[u8]) -> u16 {
    let mut tcp = edge.connect().await;
    let _ = tcp.write_all(request).await;
    let (answer, _) = until_closed(&mut tcp, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Whether a request as the upstream read it can mean only one thing.
fn unambiguous(request: &str) -> Result<(), String> {
    let (head, _) = request.split_once("\r\n\r\n").ok_or("no complete header")?;
    if head.contains('\0')
        || head
            .split("\r\n")
            .any(|l| l.contains('\r') || l.contains('\n'))
    {
        return Err("a bare CR, LF or NUL in the header".into());
    }
    let lines: Vec<String> = head
        .lines()
        .skip(1)
        .map(|l| l.to_ascii_lowercase())
        .collect();
    if lines
        .iter()
        .any(|l| l.starts_with(' ') || l.starts_with('\t'))
    {
        return Err("a folded header line".into());
    }
    let values = |name: &str| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let lengths = values("content-length");
    let encodings = values("transfer-encoding");
    if !lengths.is_empty() && !encodings.is_empty() {
        return Err("both Content-Length and Transfer-Encoding".into());
    }
    if lengths.len() > 1 {
        return Err("several Content-Length headers".into());
    }
    if encodings.iter().any(|e| e != "chunked") || encodings.len() > 1 {
        return Err(format!("Transfer-Encoding {encodings:?}"));
    }
    if values("host").len() != 1 {
        return Err("not exactly one Host".into());
    }
    Ok(())
}

#[tokio::test]
async fn ambiguous_framing_reaches_the_upstream_unambiguous_or_not_at_all() {
    let edge = Edge::start("hard-framing", "      client_header_timeout_ms: 2000\n").await;
    let host = "Host: dc.example.com\r\n";
    let long_line = format!(
        "GET /drapi/v1/{} HTTP/1.1\r\n{host}\r\n",
        "a".repeat(70 * 1024)
    );
    let big_block = format!(
        "GET /drapi/v1/a HTTP/1.1\r\n{host}{}\r\n",
        (0..40)
            .map(|i| format!("X-Pad-{i}: {}\r\n", "b".repeat(2000)))
            .collect::<String>()
    );
    let ok_block = format!(
        "GET /drapi/v1/a HTTP/1.1\r\n{host}{}\r\n",
        (0..20)
            .map(|i| format!("X-Pad-{i}: {}\r\n", "b".repeat(2000)))
            .collect::<String>()
    );
    let many = format!(
        "GET /drapi/v1/a HTTP/1.1\r\n{host}{}\r\n",
        (0..300)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "Content-Length with Transfer-Encoding",
            format!("POST /drapi/v1/a HTTP/1.1\r\n{host}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /drapi/v1/smuggled HTTP/1.1\r\n{host}\r\n").into_bytes(),
            &[400, 200],
        ),
        (
            "two different Content-Lengths",
            format!("POST /drapi/v1/a HTTP/1.1\r\n{host}Content-Length: 5\r\nContent-Length: 50\r\n\r\nhello").into_bytes(),
            &[400],
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!("POST /drapi/v1/a HTTP/1.1\r\n{host}Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes(),
            &[400, 501],
        ),
        (
            "Transfer-Encoding: identity, chunked",
            format!("POST /drapi/v1/a HTTP/1.1\r\n{host}Transfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes(),
            &[400, 501, 200],
        ),
        (
            "an obs-fold continuation line",
            format!("GET /drapi/v1/a HTTP/1.1\r\n{host}X-Folded: a\r\n b\r\n\r\n").into_bytes(),
            &[400],
        ),
        (
            "a bad chunk size",
            format!("POST /drapi/v1/a HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").into_bytes(),
            &[400, 0],
        ),
        (
            "bare LF line endings",
            b"GET /drapi/v1/a HTTP/1.1\nHost: dc.example.com\nX-A: b\n\n".to_vec(),
            &[200, 400],
        ),
        (
            "a NUL in a header value",
            format!("GET /drapi/v1/a HTTP/1.1\r\n{host}X-A: a\0b\r\n\r\n").into_bytes(),
            &[400],
        ),
        (
            "a CR in a header value",
            format!("GET /drapi/v1/a HTTP/1.1\r\n{host}X-A: a\rb\r\n\r\n").into_bytes(),
            &[400],
        ),
        ("a 40 KB header block, under the limit", ok_block.into_bytes(), &[200]),
        ("a 70 KiB request line", long_line.into_bytes(), &[431]),
        ("an 80 KB header block", big_block.into_bytes(), &[431]),
        ("300 header fields", many.into_bytes(), &[431]),
        (
            "two Host headers",
            format!("GET /drapi/v1/a HTTP/1.1\r\n{host}Host: evil.example.net\r\n\r\n").into_bytes(),
            &[400, 200],
        ),
    ];
    // Each case gets its own path prefix, so that a request the upstream reads late is still
    // counted against the case that sent it.
    let marker = |i: usize| format!("/drapi/v1/case{i}/");
    let mut problems = Vec::new();
    for (i, (what, request, allowed)) in cases.iter().enumerate() {
        let request = String::from_utf8_lossy(request).replace("/drapi/v1/", &marker(i));
        let status = status_of(&edge, request.as_bytes()).await;
        if !allowed.contains(&status) {
            problems.push(format!(
                "{what}: answered {status}, expected one of {allowed:?}"
            ));
        }
    }
    let mut seen = edge.publisher.requests();
    let settled = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = edge.publisher.requests();
        if now.len() == seen.len() || Instant::now() > settled {
            break;
        }
        seen = now;
    }
    for (i, (what, _, _)) in cases.iter().enumerate() {
        let mine: Vec<&String> = seen
            .iter()
            .filter(|r| r.lines().next().is_some_and(|l| l.contains(&marker(i))))
            .collect();
        if mine.len() > 1 {
            problems.push(format!("{what}: the upstream saw {} requests", mine.len()));
        }
        for request in mine {
            if let Err(why) = unambiguous(request) {
                problems.push(format!(
                    "{what}: the upstream saw an ambiguous request ({why}):\n{request}"
                ));
            }
        }
    }
    let unmarked: Vec<&String> = seen
        .iter()
        .filter(|r| {
            !(0..cases.len()).any(|i| r.lines().next().is_some_and(|l| l.contains(&marker(i))))
        })
        .collect();
    if !unmarked.is_empty() {
        problems.push(format!(
            "requests no case sent reached the upstream: {unmarked:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn absolute_form_targets_reach_the_upstream_in_origin_form_or_not_at_all() {
    let edge = Edge::start("hard-absolute", "      client_header_timeout_ms: 2000\n").await;
    let request = |target: &str, host: Option<&str>| {
        let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
        format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").into_bytes()
    };
    let dc = Some("dc.example.com");
    let cases: [(&[u8], u16); 7] = [
        (&request("x1://dc.example.com/drapi/v1/a", dc), 400),
        (&request("ftp://dc.example.com/drapi/v1/a", dc), 400),
        (&request("mailto:a@dc.example.com", dc), 400),
        (&request("*", dc), 400),
        (
            &request(
                "http://other.example.net/drapi/v1/a",
                Some("other.example.net"),
            ),
            421,
        ),
        (&request("http://dc.example.com/./drapi/v1/b?x=1", dc), 200),
        (&request("HTTPS://dc.example.com:443/drapi/v1/c", None), 200),
    ];
    for (request, expected) in cases {
        let status = status_of(&edge, request).await;
        assert_eq!(status, expected, "{}", String::from_utf8_lossy(request));
    }
    let lines: Vec<String> = edge
        .publisher
        .requests()
        .iter()
        .map(|r| r.lines().next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        lines,
        ["GET /drapi/v1/b?x=1 HTTP/1.1", "GET /drapi/v1/c HTTP/1.1"],
        "what the upstream read"
    );
}

/// An upstream that streams 64 MiB in 64 KiB frames and records whether it could send them all
/// or its connection was dropped under it (health checks get a short answer).
fn endless(aborted: Arc<AtomicBool>) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        let aborted = aborted.clone();
        let probe = req
            .headers()
            .get("user-agent")
            .is_some_and(|a| a.as_bytes().starts_with(b"ccedge-health/"));
        Box::pin(async move {
            if probe {
                return Response::builder().body(full("ok")).unwrap();
            }
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(2);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                for _ in 0..1024 {
                    if tx.send(Frame::data(chunk.clone())).await.is_err() {
                        aborted.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            });
            use http_body_util::BodyExt;
            Response::builder()
                .header("Content-Length", 64 * 1024 * 1024)
                .body(body.boxed())
                .unwrap()
        })
    })
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_its_upstream_connection_released() {
    let dir = TestDir::new("hard-send-timeout");
    let aborted = Arc::new(AtomicBool::new(false));
    let publisher = Upstream::custom("publisher", endless(aborted.clone())).await;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: dc.example.com:443\n    \
         publisher: {p}\n    subscriber: 127.0.0.1:{spare}\n    limits:\n      client_send_timeout_ms: 1000\n",
        server = server_block(&dir.path, Some(admin)),
        p = publisher.authority(),
        spare = free_port(),
    );
    let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    tcp.write_all(
        b"GET /drapi/v1/export HTTP/1.1\r\nHost: dc.example.com\r\nTrackingID: stalled-1\r\n\r\n",
    )
    .await
    .unwrap();
    // Read nothing: ccedge's writes stop making progress.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !aborted.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream connection was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (received, closed) = until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the client connection stayed open");
    assert!(received.len() < 64 * 1024 * 1024, "the whole body arrived");
    let line = ccedge.log_entry("stalled-1").await;
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains("client_send_timeout_ms"), "{line}");
    let metrics = curl(&[&format!("http://127.0.0.1:{admin}/metrics")])
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("ccedge_client_send_timeouts_total{service=\"cc\"} 1"),
        "{metrics}"
    );
}

/// A Finesse site (plain HTTP) with one broken server and one healthy server on its own port.
struct Faulty {
    _dir: TestDir,
    _good: Upstream,
    broken: u16,
    healthy: u16,
    ccedge: Ccedge,
}

impl Faulty {
    async fn start(name: &str, broken: &str, tls: &str) -> Faulty {
        let dir = TestDir::new(name);
        let good = Upstream::plain("good").await;
        let (b, h) = (free_port(), free_port());
        let yaml = format!(
            "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    servers:\n      \
             - {{public: \"broken.example.com:{b}\", upstream: \"{broken}\", role: other{tls}}}\n      \
             - {{public: \"good.example.com:{h}\", upstream: \"{g}\", role: other}}\n    \
             limits: {{upstream_connect_timeout_ms: 1000, upstream_read_timeout_ms: 1000}}\n",
            server = server_block(&dir.path, None),
            g = good.authority(),
        );
        let ccedge = Ccedge::start(&dir, &yaml, &[b, h]).await;
        Faulty {
            _dir: dir,
            _good: good,
            broken: b,
            healthy: h,
            ccedge,
        }
    }

    /// Asks the broken server: the status and TrackingID answered, and the access-log line.
    async fn fault(&self) -> (u16, serde_json::Value) {
        let url = format!("http://broken.example.com:{}/finesse/api/x", self.broken);
        let resolve = format!("broken.example.com:{}:127.0.0.1", self.broken);
        let reply = curl(&["--resolve", &resolve, &url]).await;
        let reply = match reply {
            Ok(reply) => reply,
            // A body cut short: curl fails; the log still tells.
            Err(_) => {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    if let Some(line) = self.ccedge.log_lines().into_iter().last() {
                        return (0, line);
                    }
                    assert!(Instant::now() < deadline, "no access-log line");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let tid = reply
            .header("trackingid")
            .expect("TrackingID on ccedge's answer");
        let line = self.ccedge.log_entry(tid).await;
        (reply.status, line)
    }

    async fn healthy_still_served(&self) {
        let url = format!("http://good.example.com:{}/x", self.healthy);
        let resolve = format!("good.example.com:{}:127.0.0.1", self.healthy);
        let reply = curl(&["--resolve", &resolve, &url]).await.unwrap();
        assert_eq!(reply.status, 200);
    }
}

#[tokio::test]
async fn upstream_faults_are_502_or_504_with_what_happened_in_the_log() {
    let refusing = {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.local_addr().unwrap().to_string()
    };
    let garbage = RawUpstream::start(Behaviour::Garbage).await;
    let silent = RawUpstream::start(Behaviour::Silent).await;
    let slow = RawUpstream::start(Behaviour::Slow(2500)).await;
    let reset = RawUpstream::start(Behaviour::ResetMidBody).await;
    for (what, upstream, expected, why) in [
        ("refusing", refusing.clone(), 502, "refused"),
        ("garbage", garbage.authority(), 502, ""),
        ("never answering", silent.authority(), 504, "timedout"),
        (
            "slower than the read timeout",
            slow.authority(),
            504,
            "timedout",
        ),
        ("resetting mid-body", reset.authority(), 0, ""),
    ] {
        let site = Faulty::start(&format!("hard-fault-{expected}"), &upstream, "").await;
        let (status, line) = site.fault().await;
        assert_eq!(status, expected, "{what}: {line}");
        assert_eq!(line["upstream"], upstream.as_str(), "{what}: {line}");
        let error = line["error"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(!error.is_empty() && error.contains(why), "{what}: {line}");
        // An upstream's answer is not quoted in the log (it can carry an agent's session).
        assert!(!error.contains("not http at all"), "{what}: {line}");
        site.healthy_still_served().await;
    }
}

#[tokio::test]
async fn upstream_certificates_that_fail_verification_are_502() {
    let dir = TestDir::new("hard-upstream-certs");
    let trusted = Ca::new("trusted");
    let stranger = Ca::new("stranger");
    trusted.write(&dir.join("trusted-ca.crt"));
    let wrong_ca = stranger.server(&dir.path, "wrong-ca", &["127.0.0.1"]);
    let wrong_ca = Upstream::tls("wrong-ca", &wrong_ca, None).await;
    let expired = trusted.expired_server(&dir.path, "expired", &["127.0.0.1"]);
    let expired = Upstream::tls("expired", &expired, None).await;
    let tls = format!(
        ", upstream_tls: {{ca: {}}}",
        dir.join("trusted-ca.crt").display()
    );
    for (what, upstream) in [("another CA", &wrong_ca), ("expired", &expired)] {
        let site = Faulty::start(&format!("hard-cert-{what}"), &upstream.authority(), &tls).await;
        let (status, line) = site.fault().await;
        assert_eq!(status, 502, "{what}: {line}");
        let error = line["error"].as_str().unwrap_or_default();
        assert!(
            error.to_ascii_lowercase().contains("certificate") || error.contains("TLS"),
            "{what}: {line}"
        );
        site.healthy_still_served().await;
    }
}

/// A TLS Finesse site with one echo server, for HTTP/2 clients.
struct H2Site {
    dir: TestDir,
    ca: Ca,
    port: u16,
    app: Upstream,
    _ccedge: Ccedge,
}

const H2_HOST: &str = "finesse1.example.com";

impl H2Site {
    async fn start(name: &str, limits: &str) -> H2Site {
        let dir = TestDir::new(name);
        let ca = Ca::new(name);
        ca.write(&dir.join("ca.crt"));
        let cert = ca.server(&dir.path, "proxy", &[H2_HOST]);
        let app = Upstream::plain("finesse").await;
        let port = free_port();
        let yaml = format!(
            "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    tls: {{cert: {c}, key: {k}}}\n    \
             servers:\n      - {{public: \"{H2_HOST}:{port}\", upstream: \"{a}\", role: other}}\n    limits:\n{limits}",
            server = server_block(&dir.path, None),
            c = cert.cert.display(),
            k = cert.key.display(),
            a = app.authority(),
        );
        let ccedge = Ccedge::start(&dir, &yaml, &[port]).await;
        H2Site {
            dir,
            ca,
            port,
            app,
            _ccedge: ccedge,
        }
    }

    async fn raw(&self) -> RawH2 {
        RawH2::connect(H2_HOST, self.port, &self.ca.pem).await
    }

    fn authority(&self) -> String {
        format!("{H2_HOST}:{}", self.port)
    }

    /// A well-behaved HTTP/2 client's request: how long it took, and its status.
    async fn timed_request(&self) -> (Duration, u16) {
        let started = Instant::now();
        let mut client = crate::harness::http::Client::tls(
            H2_HOST,
            self.port,
            &self.ca.pem,
            crate::harness::http::Proto::H2,
        );
        let status = client.get("/ok").await.map_or(0, |a| a.status);
        (started.elapsed(), status)
    }

    /// Runs `attack` while a well-behaved client asks every 100 ms; the slowest answer.
    async fn slowest_answer_during<F: std::future::Future<Output = ()>>(
        &self,
        attack: F,
    ) -> Duration {
        let probing = async {
            let mut slowest = Duration::ZERO;
            for _ in 0..20 {
                let (took, status) = self.timed_request().await;
                assert_eq!(
                    status, 200,
                    "a well-behaved client was refused during the attack"
                );
                slowest = slowest.max(took);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            slowest
        };
        let (slowest, ()) = tokio::join!(probing, attack);
        slowest
    }
}

fn get_block(site: &H2Site, path: &str) -> Vec<u8> {
    header_block(&[(2, "GET"), (6, "https"), (4, path), (1, &site.authority())])
}

#[tokio::test]
async fn http2_streams_past_the_limit_are_refused() {
    let site = H2Site::start("hard-h2-streams", "      max_streams_per_connection: 2\n").await;
    let mut h2 = site.raw().await;
    for stream in [1, 3, 5] {
        let block = get_block(&site, "/slow/1500");
        h2.frame(HEADERS, END_HEADERS | END_STREAM, stream, &block)
            .await
            .unwrap();
    }
    let (frames, _) = h2.read_frames(Duration::from_millis(800)).await;
    let refused = frames.iter().any(|(kind, stream, payload, _)| {
        *kind == RST_STREAM && *stream == 5 && payload[..] == [0, 0, 0, 7]
    });
    assert!(refused, "stream 5 was not refused: {frames:?}");
    let (frames, _) = h2.read_frames(Duration::from_secs(3)).await;
    let mut answered: Vec<u32> = frames
        .iter()
        .filter(|f| f.0 == HEADERS)
        .map(|f| f.1)
        .collect();
    answered.sort();
    assert_eq!(answered, [1, 3], "{frames:?}");
    assert_eq!(site.app.hits(), 2);
}

#[tokio::test]
async fn http2_pseudo_header_abuse_never_reaches_the_upstream() {
    let site = H2Site::start("hard-h2-pseudo", "      max_streams_per_connection: 100\n").await;
    let authority = site.authority();
    let mut h2 = site.raw().await;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "no :method",
            header_block(&[(6, "https"), (4, "/a"), (1, &authority)]),
        ),
        (
            "two :path",
            header_block(&[
                (2, "GET"),
                (6, "https"),
                (4, "/a"),
                (4, "/b"),
                (1, &authority),
            ]),
        ),
        (
            "a :path without '/'",
            header_block(&[(2, "GET"), (6, "https"), (4, "a"), (1, &authority)]),
        ),
        (
            "a pseudo-header after a regular one",
            header_block(&[
                (2, "GET"),
                (38, "x"),
                (6, "https"),
                (4, "/a"),
                (1, &authority),
            ]),
        ),
    ];
    for (i, (_, block)) in bad.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        let _ = h2
            .frame(HEADERS, END_HEADERS | END_STREAM, stream, block)
            .await;
    }
    let _ = h2.read_frames(Duration::from_millis(500)).await;
    assert_eq!(
        site.app.hits(),
        0,
        "a malformed HTTP/2 request reached the upstream"
    );

    // A Host header that differs from :authority: the upstream sees one Host, the route's.
    let mut h2 = site.raw().await;
    let block = header_block(&[
        (2, "GET"),
        (6, "https"),
        (4, "/a"),
        (1, &authority),
        (38, "evil.example.net"),
    ]);
    h2.frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)
        .await
        .unwrap();
    let (frames, _) = h2.read_frames(Duration::from_secs(2)).await;
    let body: Vec<u8> = frames
        .iter()
        .filter(|f| f.0 == 0 && f.1 == 1)
        .flat_map(|f| f.2.clone())
        .collect();
    // HPACK's static table: 0x88 is `:status 200`, 0x8c `:status 400`.
    let status = frames
        .iter()
        .find(|f| f.0 == HEADERS && f.1 == 1)
        .map(|f| f.2[0]);
    match status {
        Some(0x8c) => assert_eq!(site.app.hits(), 0, "refused, yet forwarded"),
        Some(0x88) => {
            let echo = crate::harness::upstream::Echo::parse(&String::from_utf8_lossy(&body));
            assert_eq!(echo.all("host"), vec![authority.clone()]);
            assert_eq!(site.app.hits(), 1);
        }
        other => panic!("neither refused nor normalised: {other:?} {frames:?}"),
    }
}

#[tokio::test]
async fn http2_rapid_reset_closes_the_connection_and_spares_other_clients() {
    let site = H2Site::start("hard-h2-reset", "      max_streams_per_connection: 100\n").await;
    let mut h2 = site.raw().await;
    let attack = async {
        let block = get_block(&site, "/slow/500");
        for i in 0..5000u32 {
            let stream = 1 + 2 * i;
            let headers = h2
                .frame(HEADERS, END_HEADERS | END_STREAM, stream, &block)
                .await;
            let reset = h2.frame(RST_STREAM, 0, stream, &[0, 0, 0, 8]).await;
            if headers.is_err() || reset.is_err() {
                break;
            }
        }
        let (frames, closed) = h2.read_frames(Duration::from_secs(5)).await;
        assert!(
            closed || frames.iter().any(|f| f.0 == GOAWAY),
            "the attacking connection was neither closed nor sent GOAWAY"
        );
    };
    let slowest = site.slowest_answer_during(attack).await;
    assert!(
        slowest < Duration::from_secs(1),
        "a well-behaved request took {slowest:?}"
    );
    assert!(
        site.app.hits() < 5000,
        "every reset stream reached the upstream"
    );
}

#[tokio::test]
async fn http2_settings_and_ping_floods_spare_other_clients() {
    let site = H2Site::start("hard-h2-flood", "      max_streams_per_connection: 100\n").await;
    for (kind, payload) in [(SETTINGS, vec![]), (PING, vec![0u8; 8])] {
        let mut h2 = site.raw().await;
        let attack = async {
            for _ in 0..50_000 {
                if h2.frame(kind, 0, 0, &payload).await.is_err() {
                    break;
                }
            }
        };
        let slowest = site.slowest_answer_during(attack).await;
        assert!(
            slowest < Duration::from_secs(1),
            "frame {kind}: a well-behaved request took {slowest:?}"
        );
    }
    let (took, status) = site.timed_request().await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1));
    drop(site.dir);
}

#[tokio::test]
async fn http2_streams_refused_on_arrival_are_logged_and_counted() {
    let site = H2Site::start("hard-h2-refused", "      max_streams_per_connection: 8\n").await;
    let authority = site.authority();
    let mut h2 = site.raw().await;
    let userinfo = format!("agent@{authority}");
    let refused = [
        // Neither :authority nor Host.
        header_block(&[(2, "GET"), (6, "https"), (4, "/a")]),
        // User information in :authority.
        header_block(&[(2, "GET"), (6, "https"), (4, "/a"), (1, &userinfo)]),
    ];
    for (i, block) in refused.iter().enumerate() {
        h2.frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i as u32, block)
            .await
            .unwrap();
    }
    let (frames, _) = h2.read_frames(Duration::from_millis(300)).await;
    let answered = |stream: u32| {
        frames
            .iter()
            .any(|(kind, s, _, _)| *kind == HEADERS && *s == stream)
    };
    assert!(answered(1) && answered(3), "{frames:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<serde_json::Value> = site
            ._ccedge
            .log_lines()
            .into_iter()
            .filter(|l| l["refusal"] == "malformed_request")
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen: Vec<(u64, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["status"].as_u64().unwrap(),
                l["protocol"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [(400, "HTTP/2"), (400, "HTTP/2")], "{lines:?}");
    assert_eq!(lines[1]["path"], "/a");
    assert_eq!(lines[0]["client_ip"], "127.0.0.1");
    assert_eq!(site.app.hits(), 0);
}
