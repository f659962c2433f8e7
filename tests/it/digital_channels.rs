//! Cloud Connect front end: health checks, failover and failback, DataConn on the publisher only,
//! mTLS, the allow list, rate limits and the body limit.

use crate::harness::fixtures::{args, Digital};
use crate::harness::http::Client;
use crate::harness::{curl, free_port, handshake, server_block, Ca, Ccedge, TestDir, Upstream};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Checks every 200 ms, 2 to fall, 2 to rise.
const FAST_CHECKS: &str = "    health_check:\n      interval_ms: 200\n      timeout_ms: 200\n      rise: 2\n      fall: 2\n";

/// A plain-HTTP digital channel in front of two plain upstreams.
struct Cc {
    _dir: TestDir,
    publisher: Upstream,
    subscriber: Upstream,
    port: u16,
    admin: u16,
    ccedge: Ccedge,
}

impl Cc {
    async fn start(name: &str, extra: &str) -> Cc {
        let dir = TestDir::new(name);
        let publisher = Upstream::plain("publisher").await;
        let subscriber = Upstream::plain("subscriber").await;
        let (port, admin) = (free_port(), free_port());
        let yaml = format!(
            "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: dc.example.com:443\n    \
             publisher: {p}\n    subscriber: {s}\n{extra}",
            server = server_block(&dir.path, Some(admin)),
            p = publisher.authority(),
            s = subscriber.authority(),
        );
        let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
        Cc {
            _dir: dir,
            publisher,
            subscriber,
            port,
            admin,
            ccedge,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn client(&self) -> Client {
        Client::new(self.addr(), "dc.example.com")
    }

    /// Who answered `path` (the node name, or the status when it was not 200).
    async fn who(&self, path: &str) -> String {
        let answer = self.client().get(path).await.unwrap();
        if answer.status == 200 {
            let echo: Value = serde_json::from_str(&answer.body).unwrap();
            echo["node"].as_str().unwrap().to_string()
        } else {
            answer.status.to_string()
        }
    }

    /// Health of each node as `/status` reports it.
    async fn health(&self) -> Vec<bool> {
        let reply = curl(&[&format!("http://127.0.0.1:{}/status", self.admin)])
            .await
            .unwrap();
        let status: Value = serde_json::from_str(&reply.body).unwrap();
        status["services"][0]["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["healthy"].as_bool().unwrap())
            .collect()
    }

    /// Waits until `/status` shows `expected`; returns how long that took.
    async fn wait_health(&self, expected: &[bool]) -> Duration {
        let start = Instant::now();
        loop {
            if self.health().await == expected {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "health never became {expected:?}:\n{}",
                self.ccedge.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[tokio::test]
async fn failover_to_subscriber_and_back_to_publisher() {
    let cc = Cc::start("dc-failover", FAST_CHECKS).await;
    assert_eq!(cc.who("/drapi/v1/tasks").await, "publisher");
    cc.wait_health(&[true, true]).await;

    let publisher_addr = cc.publisher.addr;
    cc.publisher.stop().await;
    let took = cc.wait_health(&[false, true]).await;
    // fall (2) x interval (200 ms), plus one interval of phase and the check timeout.
    assert!(
        took < Duration::from_millis(1200),
        "failover detection took {took:?}"
    );
    cc.ccedge
        .wait_stderr(&format!(
            "publisher {publisher_addr}: healthy -> unhealthy (2 consecutive checks failed"
        ))
        .await;
    let answer = cc.client().get("/drapi/v1/tasks").await.unwrap();
    assert_eq!(answer.status, 200);
    let tid = answer.headers["trackingid"].to_str().unwrap().to_string();
    let line = cc.ccedge.log_entry(&tid).await;
    assert_eq!(line["upstream"], cc.subscriber.authority());
    assert_eq!(
        line["attempts"], 1,
        "a known-down publisher is not even tried"
    );

    let _back = Upstream::plain_at("publisher", publisher_addr).await;
    let took = cc.wait_health(&[true, true]).await;
    assert!(
        took < Duration::from_millis(1200),
        "failback detection took {took:?}"
    );
    cc.ccedge
        .wait_stderr(&format!(
            "publisher {publisher_addr}: unhealthy -> healthy (2 consecutive checks passed)"
        ))
        .await;
    assert_eq!(cc.who("/drapi/v1/tasks").await, "publisher");
}

#[tokio::test]
async fn killed_publisher_loses_no_request() {
    // Slow checks: the failover under test is the per-request retry, not the health check. No
    // rate limit: the loop sends faster than the default /drapi/ limit allows.
    let cc = Cc::start("dc-steady", "    rate_limits: []\n").await;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let mut client = cc.client();
    let looped = tokio::spawn(async move {
        let mut seen = Vec::new();
        for i in 0..300 {
            let answer = client.get(&format!("/drapi/v1/tasks?n={i}")).await;
            counter.fetch_add(1, Ordering::SeqCst);
            seen.push(answer.map(|a| (a.status, a.body)));
        }
        seen
    });
    while sent.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    cc.publisher.stop().await;
    let seen = looped.await.unwrap();
    let mut by = std::collections::BTreeMap::new();
    for (i, answer) in seen.iter().enumerate() {
        let (status, body) = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(*status, 200, "request {i}: {body}");
        let echo: Value = serde_json::from_str(body).unwrap();
        *by.entry(echo["node"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert!(by["publisher"] >= 100 && by["subscriber"] > 0, "{by:?}");
}

#[tokio::test]
async fn dataconn_goes_only_to_the_publisher() {
    let cc = Cc::start("dc-dataconn", FAST_CHECKS).await;
    assert_eq!(cc.who("/dataconn/status").await, "publisher");
    cc.publisher.stop().await;
    // Before the checks notice: the publisher refuses the connection and there is no retry.
    let early = cc.who("/dataconn/status").await;
    assert!(early == "502" || early == "503", "{early}");
    cc.wait_health(&[false, true]).await;
    let answer = cc.client().get("/dataconn/callback").await.unwrap();
    assert_eq!(answer.status, 503);
    assert!(
        answer.body.contains("publisher is unavailable"),
        "{}",
        answer.body
    );
    let tid = answer.headers["trackingid"].to_str().unwrap().to_string();
    let line = cc.ccedge.log_entry(&tid).await;
    assert_eq!(
        (line["status"].as_u64(), line["route"].as_str()),
        (Some(503), Some("publisher_only"))
    );
    assert_eq!(cc.who("/drapi/v1/tasks").await, "subscriber");
    assert!(
        cc.subscriber
            .paths()
            .iter()
            .all(|p| !p.starts_with("/dataconn/")),
        "{:?}",
        cc.subscriber.paths()
    );
}

#[tokio::test]
async fn dataconn_written_another_way_still_goes_only_to_the_publisher() {
    let cc = Cc::start("dc-dataconn-tricks", FAST_CHECKS).await;
    cc.publisher.stop().await;
    cc.wait_health(&[false, true]).await;
    let tricks = [
        "/./dataconn/callback",
        "//dataconn/callback",
        "/%64ataconn/callback",
        "/dataconn;jsessionid=1/callback",
        "/drapi/../dataconn/callback",
    ];
    for trick in tricks {
        assert_eq!(cc.who(trick).await, "503", "{trick}");
    }
    assert_eq!(cc.subscriber.hits(), 0, "{:?}", cc.subscriber.paths());
}

#[tokio::test]
async fn both_nodes_down_is_503_and_logged() {
    let cc = Cc::start("dc-both-down", FAST_CHECKS).await;
    cc.publisher.stop().await;
    cc.subscriber.stop().await;
    cc.wait_health(&[false, false]).await;
    let answer = cc.client().get("/drapi/v1/tasks").await.unwrap();
    assert_eq!(answer.status, 503);
    assert!(answer.body.contains("both down"), "{}", answer.body);
    let tid = answer.headers["trackingid"].to_str().unwrap().to_string();
    let line = cc.ccedge.log_entry(&tid).await;
    assert_eq!(line["status"], 503);
    assert!(
        line["error"].as_str().unwrap().contains("both down"),
        "{line}"
    );
}

#[tokio::test]
async fn connection_failure_before_checks_notice_is_retried_on_subscriber() {
    let cc = Cc::start("dc-retry", "").await;
    cc.publisher.stop().await;
    let answer = cc.client().get("/drapi/v1/tasks").await.unwrap();
    assert_eq!(answer.status, 200);
    let tid = answer.headers["trackingid"].to_str().unwrap().to_string();
    let line = cc.ccedge.log_entry(&tid).await;
    assert_eq!(line["upstream"], cc.subscriber.authority());
    assert_eq!(line["attempts"], 2);
    let post = cc
        .client()
        .send("POST", "/drapi/v1/tasks", &[], b"{\"task\":1}")
        .await
        .unwrap();
    assert_eq!(
        post.status, 200,
        "a POST that never reached anyone is safe to retry"
    );
}

#[tokio::test]
async fn request_cut_off_by_a_dying_node_is_retried_only_when_idempotent() {
    let cc = Cc::start("dc-cut", "").await;
    cc.publisher.drop_requests();
    let get = cc.client().get("/drapi/v1/tasks").await.unwrap();
    assert_eq!(get.status, 200, "{}", get.body);
    let line = cc
        .ccedge
        .log_entry(get.headers["trackingid"].to_str().unwrap())
        .await;
    assert_eq!(
        (line["attempts"].as_u64(), line["upstream"].as_str()),
        (Some(2), Some(cc.subscriber.authority().as_str()))
    );

    let post = cc
        .client()
        .send("POST", "/drapi/v1/tasks", &[], b"{\"task\":1}")
        .await
        .unwrap();
    assert_eq!(
        post.status, 502,
        "the publisher may have taken the task: no second copy"
    );
    assert_eq!(cc.subscriber.paths(), vec!["/drapi/v1/tasks".to_string()]);
}

#[tokio::test]
async fn upstream_read_and_client_keepalive_timeouts_apply() {
    let limits =
        "    limits:\n      upstream_read_timeout_ms: 300\n      keepalive_timeout_ms: 1000\n";
    let cc = Cc::start("dc-timeouts", limits).await;
    let slow = cc.client().get("/slow/2000").await.unwrap();
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert!(
        slow.body.contains("did not answer in time"),
        "{}",
        slow.body
    );
    assert_eq!(cc.client().get("/slow/100").await.unwrap().status, 200);

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(cc.addr()).await.unwrap();
    tcp.write_all(b"GET /x HTTP/1.1\r\nHost: dc.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "idle connection not closed: {closed:?}"
    );
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(3000),
        "{idle:?}"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_is_not_replayed_on_the_subscriber() {
    use tokio::io::AsyncWriteExt;
    let cc = Cc::start("dc-hangup", "").await;
    let mut tcp = tokio::net::TcpStream::connect(cc.addr()).await.unwrap();
    tcp.write_all(b"GET /slow/600 HTTP/1.1\r\nHost: dc.example.com\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(cc.publisher.paths(), vec!["/slow/600".to_string()]);
    assert!(
        cc.subscriber.paths().is_empty(),
        "replayed: {:?}",
        cc.subscriber.paths()
    );
}

#[tokio::test]
async fn a_retried_body_is_not_counted_twice_against_the_limit() {
    let cc = Cc::start("dc-retry-body", "    limits:\n      max_body_bytes: 1000\n").await;
    cc.publisher.drop_requests();
    let body = vec![b'z'; 600];
    let put = cc
        .client()
        .send("PUT", "/drapi/v1/tasks/7", &[], &body)
        .await
        .unwrap();
    assert_eq!(put.status, 200, "{}", put.body);
    let echo: Value = serde_json::from_str(&put.body).unwrap();
    assert_eq!(
        (echo["node"].as_str(), echo["body_len"].as_u64()),
        (Some("subscriber"), Some(600))
    );
}

/// A digital channel over mTLS to TLS upstreams that demand a client certificate from `ca`.
async fn mtls(name: &str, with_identity: bool) -> (TestDir, Upstream, Upstream, Ccedge, u16, u16) {
    let dir = TestDir::new(name);
    let ca = Ca::new(name);
    let ca_file = ca.write(&dir.join("ca.crt"));
    let server = ca.server(&dir.path, "cloudconnect", &["127.0.0.1"]);
    let client = ca.client(&dir.path, "ccedge-client");
    let publisher = Upstream::tls("publisher", &server, Some(&ca)).await;
    let subscriber = Upstream::tls("subscriber", &server, Some(&ca)).await;
    let (port, admin) = (free_port(), free_port());
    let identity = if with_identity {
        format!(
            "      client_cert: {}\n      client_key: {}\n",
            client.cert.display(),
            client.key.display()
        )
    } else {
        String::new()
    };
    let yaml = format!(
        "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: dc.example.com:443\n    \
         publisher: {p}\n    subscriber: {s}\n    upstream_tls:\n      ca: {ca}\n{identity}{FAST_CHECKS}",
        server = server_block(&dir.path, Some(admin)),
        p = publisher.authority(),
        s = subscriber.authority(),
        ca = ca_file.display(),
    );
    let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
    (dir, publisher, subscriber, ccedge, port, admin)
}

#[tokio::test]
async fn mtls_upstream_accepts_ccedge_and_refuses_a_client_without_certificate() {
    let (_dir, publisher, _sub, _proxy, port, _admin) = mtls("dc-mtls", true).await;
    let reply = curl(&[&format!("http://127.0.0.1:{port}/drapi/v1/tasks")])
        .await
        .unwrap();
    let echo = reply.echo();
    assert_eq!(echo.node(), "publisher");
    assert_eq!(echo.0["client_cert"], true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        publisher.health_checks() >= 2,
        "health checks run over mTLS"
    );
    let again = curl(&[&format!("http://127.0.0.1:{port}/drapi/v1/tasks")])
        .await
        .unwrap();
    assert_eq!(
        again.echo().node(),
        "publisher",
        "checks over mTLS keep the publisher healthy"
    );

    let (_dir, publisher, subscriber, proxy, port, _admin) = mtls("dc-no-identity", false).await;
    let reply = curl(&[&format!("http://127.0.0.1:{port}/drapi/v1/tasks")])
        .await
        .unwrap();
    assert!(reply.status == 502 || reply.status == 503, "{reply:?}");
    assert_eq!(publisher.hits() + subscriber.hits(), 0);
    proxy.wait_stderr("healthy -> unhealthy").await;
}

#[tokio::test]
async fn allow_list_drops_other_addresses_before_tls() {
    let refused =
        Digital::start("dc-deny", "    client_allow: [10.0.0.0/8, \"192.0.2.7\"]\n").await;
    let port = refused.port;
    let shook =
        tokio::task::spawn_blocking(move || handshake(port, &["-servername", "dc.example.com"]))
            .await
            .unwrap();
    assert!(
        !shook,
        "a TLS handshake happened with a client outside client_allow"
    );
    let err = curl(&args(&[], &refused.url("/drapi/v1/tasks")))
        .await
        .unwrap_err();
    assert!(err.contains("(35)") || err.contains("(56)"), "{err}");
    assert_eq!(refused.publisher.hits(), 0);
    refused
        .ccedge
        .wait_stderr("service cc: refused connection from 127.0.0.1 (not in client_allow)")
        .await;

    let allowed = Digital::start("dc-allow", "    client_allow: [127.0.0.0/8]\n").await;
    let port = allowed.port;
    let shook =
        tokio::task::spawn_blocking(move || handshake(port, &["-servername", "dc.example.com"]))
            .await
            .unwrap();
    assert!(shook, "an allowed client could not complete a handshake");
    let reply = curl(&args(&[], &allowed.url("/drapi/v1/tasks")))
        .await
        .unwrap();
    assert_eq!(reply.echo().node(), "publisher");
}

#[tokio::test]
async fn rate_limit_answers_429_then_recovers() {
    let rules =
        "    rate_limits:\n      - path_prefix: /drapi/\n        per_second: 5\n        burst: 5\n";
    let cc = Cc::start("dc-rate", rules).await;
    let mut client = cc.client();
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..30 {
        let answer = client.get("/drapi/v1/tasks").await.unwrap();
        if answer.status == 429 {
            limited.get_or_insert(answer.headers.clone());
        }
        statuses.push(answer.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + refused, 30, "{statuses:?}");
    // One second allows 5 + 5; should the burst straddle two seconds, the second allows 5 more.
    assert!((10..=15).contains(&ok), "{statuses:?}");
    let headers = limited.unwrap();
    assert_eq!(headers["retry-after"], "1");
    let line = cc
        .ccedge
        .log_entry(headers["trackingid"].to_str().unwrap())
        .await;
    assert_eq!(line["status"], 429);
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("rate limit exceeded"),
        "{line}"
    );
    assert!(line["upstream"].is_null());

    assert_eq!(
        client.get("/dataconn/status").await.unwrap().status,
        200,
        "other paths are not limited"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(client.get("/drapi/v1/tasks").await.unwrap().status, 200);
    assert_eq!(cc.publisher.hits(), ok + 2);
}

#[tokio::test]
async fn paths_written_another_way_count_against_the_rate_limit() {
    let rules =
        "    rate_limits:\n      - path_prefix: /drapi/\n        per_second: 2\n        burst: 0\n";
    let cc = Cc::start("dc-rate-tricks", rules).await;
    let mut client = cc.client();
    let tricks = [
        "//drapi/v1/tasks",
        "/./drapi/v1/tasks",
        "/%64rapi/v1/tasks",
        "/drapi;x=1/v1/tasks",
    ];
    let started = Instant::now();
    let mut passed = 0;
    for i in 0..40 {
        let status = client.get(tricks[i % tricks.len()]).await.unwrap().status;
        assert!(status == 200 || status == 429, "{status}");
        passed += usize::from(status == 200);
    }
    let seconds = started.elapsed().as_secs() as usize + 1;
    assert!(
        passed <= 2 * (seconds + 1),
        "{passed} of 40 passed in {seconds} s"
    );
    // What the rules matched is what the publisher received.
    for path in cc.publisher.paths() {
        assert!(
            path == "/drapi/v1/tasks" || path == "/drapi;x=1/v1/tasks",
            "{path}"
        );
    }
}

#[tokio::test]
async fn an_ipv6_network_is_one_client_for_the_rate_limit() {
    let rules = "    trusted_proxies: [127.0.0.1]\n    rate_limits:\n      - path_prefix: /drapi/\n        \
                 per_second: 2\n        burst: 0\n";
    let cc = Cc::start("dc-rate-v6", rules).await;
    let mut client = cc.client();
    let started = Instant::now();
    let mut passed = 0;
    for i in 1..=40 {
        let from = format!("2001:db8:5:6::{i:x}");
        let answer = client
            .send("GET", "/drapi/v1/tasks", &[("X-Forwarded-For", &from)], b"")
            .await
            .unwrap();
        passed += usize::from(answer.status == 200);
    }
    let seconds = started.elapsed().as_secs() as usize + 1;
    assert!(
        passed <= 2 * (seconds + 1),
        "{passed} of 40 passed in {seconds} s"
    );
    let elsewhere = client
        .send(
            "GET",
            "/drapi/v1/tasks",
            &[("X-Forwarded-For", "2001:db8:5:7::1")],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(elsewhere.status, 200, "another network has its own count");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let cc = Cc::start("dc-body", "    limits:\n      max_body_bytes: 1000\n").await;
    let mut client = cc.client();
    let big = vec![b'x'; 2000];
    let declared = client
        .send("POST", "/drapi/v1/tasks", &[], &big)
        .await
        .unwrap();
    assert_eq!(declared.status, 413);
    assert!(
        declared.body.contains("larger than 1000 bytes"),
        "{}",
        declared.body
    );
    assert_eq!(cc.publisher.hits(), 0);

    let chunked = curl(&[
        "-X",
        "POST",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &"y".repeat(5000),
        &format!("http://127.0.0.1:{}/drapi/v1/tasks", cc.port),
    ])
    .await
    .unwrap();
    assert_eq!(chunked.status, 413, "{chunked:?}");

    let small = cc
        .client()
        .send("POST", "/drapi/v1/tasks", &[], &big[..500])
        .await
        .unwrap();
    assert_eq!(small.status, 200);
    let echo: Value = serde_json::from_str(&small.body).unwrap();
    assert_eq!(echo["body_len"], 500);
}
