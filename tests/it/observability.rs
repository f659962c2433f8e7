//! The access log and the admin listener.

use crate::harness::fixtures::{args, Digital};
use crate::harness::{curl, free_port, Ccedge, TestDir, Upstream};
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
