//! The mandatory header policy, read off what the upstream received.

use crate::harness::curl;
use crate::harness::fixtures::{args, Digital};

#[tokio::test]
async fn http2_client_upstream_sees_every_policy_header() {
    let dc = Digital::start("policy-h2", "").await;
    let url = dc.url("/drapi/v1/tasks?x=1");
    let reply = curl(&args(
        &[
            "--http2",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Real-IP: 6.6.6.6",
            "-H",
            "X-Client-IP: 6.6.6.6",
            "-H",
            "X-Forwarded-Port: 1",
            "-H",
            "X-Forwarded-Proto: http",
            "-H",
            "Accept-Encoding: gzip",
        ],
        &url,
    ))
    .await
    .unwrap();
    assert_eq!(reply.version, "HTTP/2");
    let echo = reply.echo();
    assert_eq!(echo.node(), "publisher");
    assert_eq!(echo.target(), "/drapi/v1/tasks?x=1");
    assert_eq!(echo.header("x-client-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(echo.header("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        echo.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1, 127.0.0.1")
    );
    assert_eq!(echo.header("x-forwarded-port").as_deref(), Some("443"));
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(echo.header("host").as_deref(), Some("dc.example.com:443"));
    assert_eq!(echo.header("accept-encoding").as_deref(), Some("gzip"));
    let tid = reply
        .header("TrackingID")
        .expect("TrackingID on the response");
    assert!(tid.starts_with("CCEDGE_"), "{tid}");
    assert_eq!(echo.header("trackingid").as_deref(), Some(tid));
    assert_eq!(
        reply.header("server"),
        None,
        "upstream Server header leaked"
    );

    let line = dc.ccedge.log_entry(tid).await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], dc.publisher.authority());
    assert_eq!(line["protocol"], "HTTP/2");
}

#[tokio::test]
async fn http1_connection_and_hop_by_hop_headers_do_not_reach_upstream() {
    let dc = Digital::start("policy-hop", "").await;
    let reply = curl(&args(
        &[
            "--http1.1",
            "-H",
            "Connection: keep-alive, X-Secret",
            "-H",
            "X-Secret: s3cret",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "TE: trailers",
            "-H",
            "Proxy-Authorization: Basic eDp5",
            "-H",
            "X-Kept: yes",
        ],
        &dc.url("/drapi/v1/tasks"),
    ))
    .await
    .unwrap();
    assert_eq!(reply.version, "HTTP/1.1");
    let echo = reply.echo();
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert_eq!(echo.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(echo.header("x-kept").as_deref(), Some("yes"));
    assert_eq!(echo.header("host").as_deref(), Some("dc.example.com:443"));
}

#[tokio::test]
async fn client_tracking_id_is_passed_echoed_and_logged() {
    let dc = Digital::start("policy-tid", "").await;
    let tid = "WebexConnect_6f1e0a4e-2d7b-4c55-9a61-0d1f7f0c9e11";
    let header = format!("trackingid: {tid}");
    let reply = curl(&args(&["-H", &header], &dc.url("/drapi/v1/tasks")))
        .await
        .unwrap();
    assert_eq!(reply.echo().header("trackingid").as_deref(), Some(tid));
    assert_eq!(reply.header("trackingid"), Some(tid));
    let line = dc.ccedge.log_entry(tid).await;
    assert_eq!(line["path"], "/drapi/v1/tasks");
}

#[tokio::test]
async fn trusted_balancer_forwarding_headers_name_the_client() {
    let dc = Digital::start("policy-trusted", "    trusted_proxies: [127.0.0.1]\n").await;
    let reply = curl(&args(
        &["-H", "X-Forwarded-For: 198.51.100.1, 203.0.113.7"],
        &dc.url("/"),
    ))
    .await
    .unwrap();
    let echo = reply.echo();
    assert_eq!(echo.header("x-client-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(echo.header("x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(
        echo.header("x-forwarded-for").as_deref(),
        Some("198.51.100.1, 203.0.113.7, 203.0.113.7, 127.0.0.1")
    );
    let line = dc
        .ccedge
        .log_entry(reply.header("trackingid").unwrap())
        .await;
    assert_eq!(line["client_ip"], "203.0.113.7");

    let reply = curl(&args(&["-H", "X-Real-IP: 192.0.2.44"], &dc.url("/")))
        .await
        .unwrap();
    assert_eq!(
        reply.echo().header("x-client-ip").as_deref(),
        Some("192.0.2.44")
    );
}

#[tokio::test]
async fn connection_nominating_a_forwarding_header_is_refused() {
    let dc = Digital::start("policy-nominate", "").await;
    let reply = curl(&args(
        &["--http1.1", "-H", "Connection: X-Forwarded-For"],
        &dc.url("/drapi/v1/tasks"),
    ))
    .await
    .unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply.header("trackingid").is_some());
    assert_eq!(reply.header("server"), None);
    assert_eq!(dc.publisher.hits(), 0);
    // X-Real-IP is not one Pingora protects: nominated, it is removed, and the upstream gets
    // ccedge's own (the client a forged one named is never believed from an untrusted peer).
    let reply = curl(&args(
        &[
            "--http1.1",
            "-H",
            "Connection: X-Real-IP",
            "-H",
            "X-Real-IP: 192.0.2.1",
        ],
        &dc.url("/drapi/v1/tasks"),
    ))
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    let echo = reply.echo();
    assert_eq!(echo.all("x-real-ip"), ["127.0.0.1"]);
}

#[tokio::test]
async fn dead_upstreams_answer_502_and_are_logged() {
    let dc = Digital::start("policy-dead", "").await;
    dc.publisher.stop().await;
    dc.subscriber.stop().await;
    let reply = curl(&args(&[], &dc.url("/drapi/v1/tasks"))).await.unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("server"), None);
    let tid = reply.header("trackingid").unwrap();
    let line = dc.ccedge.log_entry(tid).await;
    assert_eq!(line["status"], 502);
    assert_eq!(
        line["attempts"], 2,
        "tried the publisher, then the subscriber"
    );
    assert_eq!(line["upstream"], dc.subscriber.authority());
    assert!(line["upstream_status"].is_null());
    assert!(
        line["error"]
            .as_str()
            .unwrap_or_default()
            .contains("onnect"),
        "{line}"
    );
}
