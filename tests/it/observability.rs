//! The access log and the admin listener.

use crate::harness::fixtures::{args, plain_channel, Digital};
use crate::harness::{binary, curl, free_port, server_block, Ccedge, TestDir, Upstream};
use base64::Engine;
use serde_json::Value;
use std::time::{Duration, Instant};

const CONTRACT_FIELDS: [&str; 13] = [
    "time",
    "service",
    "route",
    "client_ip",
    "method",
    "path",
    "status",
    "bytes_sent",
    "duration_ms",
    "upstream",
    "upstream_status",
    "cache",
    "tracking_id",
];

#[tokio::test]
async fn access_log_line_holds_every_contract_field() {
    let dc = Digital::start("log-fields", "").await;
    let reply = curl(&args(
        &["-X", "POST", "-d", "{\"task\":1}"],
        &dc.url("/drapi/v1/tasks?secret=x"),
    ))
    .await
    .unwrap();
    let tid = reply.header("trackingid").unwrap();
    let line = dc.ccedge.log_entry(tid).await;
    for field in CONTRACT_FIELDS {
        assert!(line.get(field).is_some(), "{field} missing from {line}");
    }
    assert_eq!(line["service"], "cc");
    assert_eq!(line["route"], "default");
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["method"], "POST");
    assert_eq!(
        line["path"], "/drapi/v1/tasks",
        "query strings stay out of the log"
    );
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream_status"], 200);
    assert_eq!(line["bytes_sent"], reply.body.len());
    assert_eq!(line["cache"], "BYPASS");
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["time"].as_str().unwrap().ends_with('Z'));

    let dataconn = curl(&args(&[], &dc.url("/dataconn/status"))).await.unwrap();
    let line = dc
        .ccedge
        .log_entry(dataconn.header("trackingid").unwrap())
        .await;
    assert_eq!(line["route"], "publisher_only");
}

#[tokio::test]
async fn admin_listener_reports_health_and_status() {
    let dc = Digital::start("admin", "").await;
    let health = curl(&[&format!("http://127.0.0.1:{}/healthz", dc.admin)])
        .await
        .unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let status = curl(&[&format!("http://127.0.0.1:{}/status", dc.admin)])
        .await
        .unwrap();
    assert_eq!(status.status, 200);
    let status: Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(status["pid"], dc.ccedge.pid());
    let service = &status["services"][0];
    assert_eq!(service["name"], "cc");
    assert_eq!(service["kind"], "digital_channel");
    assert_eq!(service["listen"], format!("127.0.0.1:{}", dc.port));
    assert_eq!(service["routes"][1]["paths"][0], "/dataconn/");
    assert_eq!(service["upstreams"][0]["address"], dc.publisher.authority());
    assert_eq!(
        service["upstreams"][1]["address"],
        dc.subscriber.authority()
    );

    let missing = curl(&[&format!("http://127.0.0.1:{}/nope", dc.admin)])
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn admin_listener_answers_only_its_own_names_and_with_a_token_only_with_it() {
    let dir = TestDir::new("admin-guard");
    let upstream = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let token = "t0ken-5f0c2a9e8b7d41c6";
    let yaml = format!(
        "{server}    hosts: [ops.example.com]\n    token: {token}\n\
         digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: dc.example.com:443\n    \
         publisher: {u}\n    subscriber: 127.0.0.1:{spare}\n",
        server = server_block(&dir.path, Some(admin)),
        u = upstream.authority(),
        spare = free_port(),
    );
    let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
    let ask = |method: &'static str, path: &'static str, headers: Vec<String>| {
        let url = format!("http://127.0.0.1:{admin}{path}");
        async move {
            let mut args = vec!["-X".to_string(), method.to_string()];
            for h in headers {
                args.push("-H".into());
                args.push(h);
            }
            args.push(url);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args).await.unwrap()
        }
    };
    let bearer = format!("Authorization: Bearer {token}");
    // A page that rebinds its own name to the listener sends that name as Host: refused before
    // anything is read or changed.
    let rebound = "Host: evil.example.net:9900".to_string();
    for (method, path) in [
        ("GET", "/status"),
        ("DELETE", "/cache"),
        ("GET", "/healthz"),
    ] {
        let reply = ask(method, path, vec![rebound.clone(), bearer.clone()]).await;
        assert_eq!(reply.status, 421, "{method} {path}");
    }
    assert_eq!(
        ask("DELETE", "/auth/lockouts/192.0.2.1", vec![rebound.clone()])
            .await
            .status,
        421
    );
    // By address, without the token: only /healthz.
    assert_eq!(ask("GET", "/healthz", vec![]).await.status, 200);
    let denied = ask("GET", "/status", vec![]).await;
    assert_eq!(denied.status, 401);
    let challenges: Vec<&str> = denied
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic ")),
        "a browser is asked for the token: {challenges:?}"
    );
    for path in ["/metrics", "/", "/cache"] {
        assert_eq!(ask("GET", path, vec![]).await.status, 401, "{path}");
    }
    let wrong = ask("GET", "/status", vec!["Authorization: Bearer t0ken".into()]).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        ask("DELETE", "/auth/lockouts/192.0.2.1", vec![])
            .await
            .status,
        401
    );
    // With it, by address, localhost or a listed name; a browser's Basic password works too.
    let status = ask("GET", "/status", vec![bearer.clone()]).await;
    assert_eq!(status.status, 200, "{}", status.body);
    let basic = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("operator:{token}"))
    );
    for host in [
        "Host: localhost:9900",
        "Host: ops.example.com",
        "Host: OPS.example.com.",
    ] {
        let reply = ask("GET", "/status", vec![host.into(), basic.clone()]).await;
        assert_eq!(reply.status, 200, "{host}");
    }
    // The commands read the token from the same file.
    let config = dir.join("ccedge.yaml");
    let health = tokio::process::Command::new(binary())
        .args(["health", "-c", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(health.status.success());
    let purge = tokio::process::Command::new(binary())
        .args(["purge", "-c", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&purge.stderr);
    assert!(said.contains("purge refused (404)"), "{said}");
    drop(ccedge);
}

/// A plain digital channel whose `server:` block sets `access_log: {target}`.
async fn with_access_log(name: &str, target: &str) -> (TestDir, Upstream, Ccedge, u16) {
    let dir = TestDir::new(name);
    let upstream = Upstream::plain("publisher").await;
    let port = free_port();
    let d = dir.path.display();
    let yaml = format!(
        "server:\n  pid_file: {d}/ccedge.pid\n  upgrade_sock: {d}/upgrade.sock\n  access_log: {target}\n\
         digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: dc.example.com:443\n    \
         publisher: {u}\n    subscriber: 127.0.0.1:{spare}\n",
        u = upstream.authority(),
        spare = free_port(),
    );
    let ccedge = Ccedge::start(&dir, &yaml, &[port]).await;
    (dir, upstream, ccedge, port)
}

#[tokio::test]
async fn access_log_to_stdout_or_off() {
    let (dir, _up, _proxy, port) = with_access_log("log-stdout", "stdout").await;
    let reply = curl(&[&format!("http://127.0.0.1:{port}/x")])
        .await
        .unwrap();
    let tid = reply.header("trackingid").unwrap().to_string();
    let stdout = dir.join("ccedge.stdout.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&stdout).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(&tid)) {
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["status"], 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no stdout line for {tid}: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (dir, _up, proxy, port) = with_access_log("log-off", "off").await;
    let reply = curl(&[&format!("http://127.0.0.1:{port}/x")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    drop(proxy);
    assert_eq!(
        std::fs::read_to_string(dir.join("ccedge.stdout.log")).unwrap(),
        ""
    );
}

#[tokio::test]
async fn routine_client_failures_are_counted_not_logged_as_errors() {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use tokio::io::AsyncWriteExt;
    let dc = Digital::start("obs-routine", "").await;
    // A scanner speaking plain HTTP to the TLS port.
    let mut scanner = tokio::net::TcpStream::connect(("127.0.0.1", dc.port))
        .await
        .unwrap();
    scanner.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    // A client that leaves in the middle of its request header.
    let mut tls = SslConnector::builder(SslMethod::tls()).unwrap();
    tls.set_verify(SslVerifyMode::NONE);
    let ssl = tls.build().configure().unwrap().into_ssl("x").unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", dc.port))
        .await
        .unwrap();
    let mut leaving = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut leaving).connect().await.unwrap();
    leaving
        .write_all(b"GET /x HTTP/1.1\r\nHost: d")
        .await
        .unwrap();
    drop(leaving);

    let metrics = format!("http://127.0.0.1:{}/metrics", dc.admin);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = curl(&[&metrics]).await.unwrap().body;
        // The harness's own readiness probe (a connection closed unused) counts as well.
        let counted = |event: &str| {
            let line = format!("ccedge_routine_events_total{{event=\"{event}\"}} ");
            text.lines()
                .filter_map(|l| l.strip_prefix(&line))
                .any(|n| n.parse::<u64>().is_ok_and(|n| n >= 1))
        };
        if counted("client_handshake_failed") && counted("client_error") {
            break;
        }
        assert!(Instant::now() < deadline, "not counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(scanner);
    let log = dc.ccedge.stderr_text();
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
}

#[tokio::test]
async fn requests_pingora_refuses_are_logged_counted_and_do_not_name_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TestDir::new("obs-refused");
    let publisher = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = plain_channel(&server_block(&dir.path, Some(admin)), port, &publisher);
    let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
    let host = "Host: dc.example.com\r\n";
    const SECRET: &str = "YWdlbnQ6czNjcmV0";
    let cases = [
        (
            format!("GET /a HTTP/1.1\r\n{host}Host: evil.example.net\r\n\r\n"),
            400,
            "malformed_request",
        ),
        (
            format!("NOT A REQUEST\r\nAuthorization: Basic {SECRET}\r\n\r\n"),
            400,
            "malformed_request",
        ),
        (
            format!("CONNECT dc.example.com:443 HTTP/1.1\r\n{host}\r\n"),
            405,
            "method_not_allowed",
        ),
        (
            format!("GET /{} HTTP/1.1\r\n{host}\r\n", "a".repeat(70 * 1024)),
            431,
            "header_too_large",
        ),
    ];
    for (request, status, _) in &cases {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(
            answer.starts_with(&format!("http/1.1 {status} ")),
            "{request:.60}: {answer}"
        );
        assert!(!answer.contains("\r\nserver:"), "{answer}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let refused: Vec<Value> = ccedge
            .log_lines()
            .into_iter()
            .filter(|l| !l["refusal"].is_null())
            .collect();
        if refused.len() >= cases.len() || Instant::now() > deadline {
            break refused;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let got: Vec<(u64, &str)> = refused
        .iter()
        .map(|l| {
            (
                l["status"].as_u64().unwrap(),
                l["refusal"].as_str().unwrap(),
            )
        })
        .collect();
    let wanted: Vec<(u64, &str)> = cases.iter().map(|(_, s, r)| (*s as u64, *r)).collect();
    assert_eq!(got, wanted, "{refused:?}");
    assert_eq!(refused[0]["client_ip"], "127.0.0.1");
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("multiple Host header fields"),
        "{refused:?}"
    );
    assert_eq!(refused[2]["method"], "CONNECT");
    // A request that cannot be parsed is not quoted: it can carry credentials.
    let log = std::fs::read_to_string(dir.join("access.log")).unwrap();
    assert!(!log.contains(SECRET), "{log}");
    assert_eq!(publisher.hits(), 0);
    let metrics = curl(&[&format!("http://127.0.0.1:{admin}/metrics")])
        .await
        .unwrap()
        .body;
    assert!(
        metrics.contains("ccedge_requests_total{route=\"none\",service=\"cc\",status=\"4xx\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn another_sites_page_cannot_drain_and_odd_files_beside_the_pid_file_are_ignored() {
    let dir = TestDir::new("admin-csrf");
    let upstream = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = plain_channel(&server_block(&dir.path, Some(admin)), port, &upstream);
    let _ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
    let url = format!("http://127.0.0.1:{admin}/drain");
    // What a form on another site's page sends: no preflight, the Host an IP literal.
    for headers in [
        &["-H", "Origin: https://evil.example"][..],
        &["-H", "Sec-Fetch-Site: cross-site"][..],
        &["-H", "Origin: null"][..],
    ] {
        let mut args = vec!["-X", "POST", "--data", ""];
        args.extend_from_slice(headers);
        args.push(&url);
        let reply = curl(&args).await.unwrap();
        assert_eq!(reply.status, 403, "{headers:?}: {}", reply.body);
    }
    let ready = curl(&[&format!("http://127.0.0.1:{admin}/readyz")])
        .await
        .unwrap();
    assert_eq!(ready.status, 200, "drained by another site's page");
    // The status page's own origin, and a command-line client, may.
    let same = format!("Origin: http://127.0.0.1:{admin}");
    let reply = curl(&["-X", "POST", "-H", &same, &url]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = curl(&["-X", "DELETE", &url]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A FIFO or a symbolic link where a draining process's report would be (the pid file may
    // be in /tmp): /status reads neither, and the admin listener goes on answering.
    let fifo = dir.join("ccedge.pid.draining-1.json");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("/dev/zero", dir.join("ccedge.pid.draining-2.json")).unwrap();
    let status = curl(&[
        "--max-time",
        "3",
        &format!("http://127.0.0.1:{admin}/status"),
    ])
    .await
    .unwrap();
    let status: Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(status["draining_processes"], serde_json::json!([]));
    let health = curl(&[
        "--max-time",
        "3",
        &format!("http://127.0.0.1:{admin}/healthz"),
    ])
    .await;
    assert_eq!(
        health.map(|r| r.status).ok(),
        Some(200),
        "admin listener hung"
    );
}
