//! Pingora's process flags kept working: `-u` (take over a running ccedge's sockets) and `-d`.

use crate::harness::fixtures::plain_channel;
use crate::harness::{curl, free_port, server_block, signal, Ccedge, TestDir, Upstream};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn status_pid(admin: u16) -> Option<u64> {
    let reply = curl(&[&format!("http://127.0.0.1:{admin}/status")])
        .await
        .ok()?;
    let status: Value = serde_json::from_str(&reply.body).ok()?;
    status["pid"].as_u64()
}

#[tokio::test]
async fn upgrade_flag_takes_over_the_listening_sockets() {
    let dir = TestDir::new("proc-upgrade");
    let upstream = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = plain_channel(&server_block(&dir.path, Some(admin)), port, &upstream);
    let mut old = Ccedge::launch(&dir, "old", &yaml, &[], &[port, admin]).await;
    let new = Ccedge::launch(&dir, "new", &yaml, &["-u"], &[]).await;
    old.signal("QUIT");

    let deadline = Instant::now() + Duration::from_secs(20);
    while status_pid(admin).await != Some(u64::from(new.pid())) {
        assert!(
            Instant::now() < deadline,
            "new process never took over:\n{}",
            new.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = curl(&[&format!("http://127.0.0.1:{port}/drapi/v1/ping")])
        .await
        .unwrap();
    assert_eq!(reply.echo().node(), "publisher");
    assert_eq!(old.wait_exit(15).await, Some(0), "old process did not stop");
    assert!(old.stderr_text().contains("listener sockets sent"));
}

/// Kills the daemon named by a pid file when the test ends, whatever happens.
struct Daemon(u32);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

#[tokio::test]
async fn daemon_flag_runs_in_the_background() {
    let dir = TestDir::new("proc-daemon");
    let upstream = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let config = dir.write(
        "ccedge.yaml",
        &plain_channel(&server_block(&dir.path, Some(admin)), port, &upstream),
    );
    let status = tokio::process::Command::new(crate::harness::binary())
        .args(["-d", "-c", config.to_str().unwrap()])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "the launching process should exit 0");

    let pid_file = dir.join("ccedge.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "no pid file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _guard = Daemon(pid);
    // The admin listener can open before the proxy's: wait for both.
    while status_pid(admin).await != Some(u64::from(pid))
        || tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    {
        assert!(Instant::now() < deadline, "daemon {pid} is not serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = curl(&[&format!("http://127.0.0.1:{port}/")]).await.unwrap();
    assert_eq!(reply.echo().node(), "publisher");

    signal(pid, "TERM");
    let gone = Instant::now() + Duration::from_secs(15);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < gone, "daemon ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What arrives on `tcp` within `limit`, and whether the server closed the connection.
async fn read_for(tcp: &mut tokio::net::TcpStream, limit: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + limit;
    let (mut got, mut chunk) = (Vec::new(), [0u8; 4096]);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

#[tokio::test]
async fn a_stopping_process_answers_the_first_request_of_every_connection_it_accepted() {
    use tokio::io::AsyncWriteExt;
    const GET: &[u8] = b"GET /drapi/v1/ping HTTP/1.1\r\nHost: dc.example.com\r\n\r\n";
    let dir = TestDir::new("proc-stop-accepted");
    let upstream = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    // A grace period that a loaded test machine cannot outrun; the process exits as soon as its
    // connections are done anyway.
    let yaml = plain_channel(&server_block(&dir.path, Some(admin)), port, &upstream)
        .replace("grace_period_seconds: 1", "grace_period_seconds: 5");
    let mut ccedge = Ccedge::launch(&dir, "ccedge", &yaml, &[], &[port, admin]).await;

    // A kept-alive connection, idle after one answer, and a connection that has sent nothing yet.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    idle.write_all(GET).await.unwrap();
    let (first, closed) = read_for(&mut idle, Duration::from_millis(500)).await;
    assert!(first.starts_with("HTTP/1.1 200") && !closed, "{first}");
    let mut fresh = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    ccedge.signal("TERM");
    // The idle connection is let go at once (its client resends on a new connection)...
    let (said, closed) = read_for(&mut idle, Duration::from_secs(5)).await;
    assert!(
        closed && said.is_empty(),
        "idle connection: {closed} {said:?}"
    );
    // ...but the request on the connection accepted before the stop, sent after it, is answered.
    fresh.write_all(GET).await.unwrap();
    let (answer, closed) = read_for(&mut fresh, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "lost: {answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close") && closed,
        "the answer should close the connection: {answer}"
    );
    assert!(answer.contains("\"node\":\"publisher\""), "{answer}");
    assert_eq!(ccedge.wait_exit(15).await, Some(0));
}

#[tokio::test]
async fn a_stop_gives_http_requests_the_grace_period() {
    let dir = TestDir::new("proc-stop-grace");
    let upstream = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = plain_channel(&server_block(&dir.path, Some(admin)), port, &upstream)
        .replace("grace_period_seconds: 1", "grace_period_seconds: 30");
    let mut ccedge = Ccedge::launch(&dir, "ccedge", &yaml, &[], &[port, admin]).await;
    let url = format!("http://127.0.0.1:{port}/slow/4500");
    let request = tokio::spawn(async move {
        curl(&["-H", "Host: dc.example.com", "--max-time", "20", &url]).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ccedge.signal("TERM");
    let reply = request.await.unwrap();
    assert_eq!(reply.map(|r| r.status).ok(), Some(200), "cut by the stop");
    // Then it exits at once, long before the grace period's end.
    assert_eq!(ccedge.wait_exit(5).await, Some(0));
}

#[tokio::test]
async fn a_connection_in_its_tls_handshake_is_answered_by_a_stopping_process() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TestDir::new("proc-stop-tls");
    let ca = crate::harness::Ca::new("proc-stop-tls");
    let pair = ca.server(&dir.path, "dc", &["dc.example.com"]);
    let upstream = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let tls = format!(
        "    tls:\n      cert: {}\n      key: {}\n    public:",
        pair.cert.display(),
        pair.key.display()
    );
    let yaml = plain_channel(&server_block(&dir.path, Some(admin)), port, &upstream)
        .replace("grace_period_seconds: 1", "grace_period_seconds: 10")
        .replace("    public:", &tls);
    let mut ccedge = Ccedge::launch(&dir, "ccedge", &yaml, &[], &[port, admin]).await;
    // Accepted by the process; its ClientHello comes a second after the stop.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ccedge.signal("TERM");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut connector =
        openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    connector.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let ssl = connector
        .build()
        .configure()
        .unwrap()
        .into_ssl("dc.example.com")
        .unwrap();
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    let handshake = std::pin::Pin::new(&mut tls).connect().await;
    assert!(handshake.is_ok(), "handshake failed: {handshake:?}");
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: dc.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "lost: {text:?}");
    assert_eq!(ccedge.wait_exit(10).await, Some(0));
}

#[tokio::test]
async fn connections_that_never_finish_their_handshake_do_not_hold_a_stopping_process() {
    let dir = TestDir::new("proc-stop-scan");
    let upstream = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = plain_channel(&server_block(&dir.path, Some(admin)), port, &upstream)
        .replace("grace_period_seconds: 1", "grace_period_seconds: 30");
    let mut ccedge = Ccedge::launch(&dir, "ccedge", &yaml, &[], &[port, admin]).await;
    // A port scan: connections opened and closed, never a request.
    for _ in 0..3 {
        drop(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let stopped = Instant::now();
    ccedge.signal("TERM");
    assert_eq!(ccedge.wait_exit(10).await, Some(0));
    // Held by them, it would live until 10 s (client_header_timeout_ms) after their accept.
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "held {:?} by connections that were gone",
        stopped.elapsed()
    );
}
