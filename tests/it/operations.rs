//! Running ccedge: the supervisor, reloads that lose no request, node health across a reload,
//! and the metrics.

use crate::harness::fixtures::{args, plain_channel, Digital};
use crate::harness::http::{Client, Proto};
use crate::harness::proxy::{command, reload, server_pid};
use crate::harness::upstream::{full, Handler};
use crate::harness::ws::{self, EchoLog};
use crate::harness::{binary, curl, free_port, Ca, Ccedge, TestDir, Upstream};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOST: &str = "finesse1.example.com";

/// The `server:` block of a supervised ccedge: short drains so the test ends soon.
fn server_block(dir: &TestDir, admin: u16) -> String {
    let d = dir.path.display();
    format!(
        "server:\n  threads: 2\n  pid_file: {d}/ccedge.pid\n  upgrade_sock: {d}/upgrade.sock\n  \
         grace_period_seconds: 3\n  graceful_shutdown_timeout_seconds: 2\n  access_log: {d}/access.log\n  \
         admin:\n    listen: 127.0.0.1:{admin}\n"
    )
}

/// Answers JSON naming the node for HTTP, echoes WebSockets.
fn node(name: &'static str, log: Arc<EchoLog>) -> Handler {
    let websocket = ws::echo_handler(log);
    Arc::new(move |req| {
        if req.headers().contains_key("sec-websocket-key") {
            return websocket(req);
        }
        Box::pin(async move {
            hyper::Response::builder()
                .header("Content-Type", "application/json")
                .body(full(format!("{{\"node\":\"{name}\"}}")))
                .unwrap()
        })
    })
}

/// Waits until new connections are answered by `node` only (the old process has let go).
async fn answered_by(ca: &Ca, port: u16, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_a_row = 0;
    while in_a_row < 5 {
        let body = Client::tls(HOST, port, &ca.pem, Proto::H1)
            .get("/")
            .await
            .unwrap()
            .body;
        in_a_row = if body.contains(&format!("\"{node}\"")) {
            in_a_row + 1
        } else {
            0
        };
        assert!(Instant::now() < deadline, "{node} never took over: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server process the supervisor has as current (waiting for its state file).
fn supervised_server(dir: &TestDir) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read(dir.join("ccedge.pid.json")).unwrap_or_default();
        if let Some(pid) = serde_json::from_slice::<Value>(&state)
            .ok()
            .and_then(|s| s["server_pid"].as_u64())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "the supervisor wrote no state");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client loop that runs until `stop`, returning every failure it saw and the nodes that
/// answered.
fn steady(
    mut client: Client,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>, Client)> {
    tokio::spawn(async move {
        let (mut failures, mut nodes) = (Vec::new(), Vec::new());
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            match client.get(&format!("/api/ping?n={n}")).await {
                Ok(a) if a.status == 200 => {
                    let answer: Value = serde_json::from_str(&a.body).unwrap_or_default();
                    let node = answer["node"].as_str().unwrap_or("?").to_string();
                    if nodes.last() != Some(&node) {
                        nodes.push(node);
                    }
                }
                Ok(a) => failures.push(format!("request {n}: {} {}", a.status, a.body)),
                Err(e) => failures.push(format!("request {n}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (failures, nodes, client)
    })
}

#[tokio::test]
async fn reloads_lose_no_request_and_apply_the_new_configuration() {
    let dir = TestDir::new("reload-steady");
    let ca = Ca::new("reload");
    ca.write(&dir.join("ca.crt"));
    let cert = ca.server(&dir.path, "proxy", &[HOST]);
    let log = Arc::new(EchoLog::default());
    let a = Upstream::custom("a", node("a", log.clone())).await;
    let b = Upstream::custom("b", node("b", log.clone())).await;
    let (port, extra, admin) = (free_port(), free_port(), free_port());
    // WebSockets are not kept after a reload here: the old process closes them at its grace
    // period's end (`websocket_drain_seconds: 0`).
    let config = |upstream: &Upstream, with_extra: bool| {
        let mut yaml = format!(
            "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    rate_limits: []\n    tls:\n      cert: {c}\n      key: {k}\n    \
             servers:\n      - public: {HOST}:{port}\n        upstream: {u}\n",
            server = server_block(&dir, admin).replace("  admin:", "  websocket_drain_seconds: 0\n  admin:"),
            c = cert.cert.display(),
            k = cert.key.display(),
            u = upstream.authority(),
        );
        if with_extra {
            yaml.push_str(&format!(
                "      - public: {HOST}:{extra}\n        upstream: {}\n",
                b.authority()
            ));
        }
        yaml
    };
    let file = dir.join("ccedge.yaml");
    let _supervisor = Ccedge::launch(
        &dir,
        "ccedge",
        &config(&a, false),
        &["supervise"],
        &[port, admin],
    )
    .await;

    let mut socket = ws::connect(HOST, port, "/ws", &ca.pem).await;
    let stop = Arc::new(AtomicBool::new(false));
    let h1 = steady(
        Client::tls(HOST, port, &ca.pem, Proto::H1).resending(),
        stop.clone(),
    );
    let h2 = steady(
        Client::tls(HOST, port, &ca.pem, Proto::H2).resending(),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1: another upstream and a new listener.
    std::fs::write(&file, config(&b, true)).unwrap();
    let reloaded = Instant::now();
    let (ok, said) = reload(&file).await;
    assert!(ok, "{said}");
    assert!(said.contains("took over from"), "{said}");
    ws::echoes(&mut socket, "right after the reload").await;
    // The old process accepts on the shared sockets for a few seconds more; then only the new.
    answered_by(&ca, port, "b").await;
    let added = Client::tls(HOST, extra, &ca.pem, Proto::H1)
        .get("/")
        .await
        .unwrap();
    assert_eq!(added.status, 200, "the added listener does not serve");
    ws::echoes(&mut socket, "old process draining").await;
    // Once its grace period is over, the old process ends the WebSocket it was carrying, with
    // a close frame.
    let close = ws::closed(&mut socket, Duration::from_secs(20))
        .await
        .expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 1001, "{close:?}");
    assert!(
        reloaded.elapsed() >= Duration::from_secs(3),
        "ended before the grace period"
    );

    // 2: back to the first upstream, the extra listener gone.
    std::fs::write(&file, config(&a, false)).unwrap();
    let (ok, said) = reload(&file).await;
    assert!(ok, "{said}");
    answered_by(&ca, port, "a").await;

    // 3: the same file again.
    let (ok, said) = reload(&file).await;
    assert!(ok, "{said}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Client::tls(HOST, extra, &ca.pem, Proto::H1)
        .get("/")
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the removed listener still answers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken file changes nothing.
    let serving = supervised_server(&dir);
    std::fs::write(
        &file,
        config(&a, false).replace(&a.authority(), "not-an-address"),
    )
    .unwrap();
    let (ok, said) = reload(&file).await;
    assert!(!ok, "{said}");
    assert!(
        said.contains("ccedge.yaml:") && said.contains("is not host:port"),
        "{said}"
    );
    assert_eq!(supervised_server(&dir), serving);
    answered_by(&ca, port, "a").await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for (name, task) in [("HTTP/1.1", h1), ("HTTP/2", h2)] {
        let (failures, nodes, client) = task.await.unwrap();
        assert!(failures.is_empty(), "{name}: {failures:#?}");
        assert_eq!(nodes, ["a", "b", "a"], "{name}: answered by {nodes:?}");
        // The old process closes its idle keep-alive connections when it stops accepting;
        // a client sends its next request again on a new one (as browsers do).
        assert!(
            client.resent <= 10,
            "{name}: {} requests sent again",
            client.resent
        );
    }
}

#[tokio::test]
async fn supervisor_refuses_a_broken_file_on_sighup_and_stops_on_sigterm() {
    let dir = TestDir::new("supervise-hup");
    let publisher = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = plain_channel(&server_block(&dir, admin), port, &publisher);
    let mut supervisor =
        Ccedge::launch(&dir, "ccedge", &yaml, &["supervise"], &[port, admin]).await;
    let health = std::process::Command::new(binary())
        .args(["health", "-c", dir.join("ccedge.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    // The health check reads only the admin address: names that do not resolve do not matter.
    let elsewhere = dir.write(
        "unresolvable.yaml",
        &yaml.replace(&publisher.authority(), "cc-pub.invalid:8445"),
    );
    let health = std::process::Command::new(binary())
        .args(["health", "-c", elsewhere.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let serving = server_pid(admin).await;
    std::fs::write(
        dir.join("ccedge.yaml"),
        yaml.replace("public: dc.example.com:443", "public: [oops"),
    )
    .unwrap();
    supervisor.signal("HUP");
    supervisor
        .wait_stderr("supervisor: reload refused: configuration rejected")
        .await;
    assert_eq!(server_pid(admin).await, serving);
    let reply = curl(&[&format!("http://127.0.0.1:{port}/x")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);

    supervisor.signal("TERM");
    assert_eq!(supervisor.wait_exit(15).await, Some(0));
    assert!(!dir.join("ccedge.pid").exists(), "pid file left behind");
    assert!(
        !std::path::Path::new(&format!("/proc/{serving}")).exists(),
        "server left running"
    );

    let none = std::process::Command::new(binary())
        .args(["reload", "-c", dir.join("ccedge.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
}

/// Runs ccedge with `args`, expecting it to exit within 5 s; one that starts anyway is stopped
/// with what it started, and the test fails.
async fn exits_at_once(args: &[&str]) -> std::process::Output {
    let started = tokio::process::Command::new(binary())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = format!("-{}", started.id().unwrap());
    let output = tokio::time::timeout(Duration::from_secs(5), started.wait_with_output()).await;
    let Ok(output) = output else {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        panic!("ccedge {args:?} started instead of refusing");
    };
    output.unwrap()
}

#[tokio::test]
async fn a_second_supervisor_is_refused_while_the_first_stops_and_no_one_removes_the_others_files()
{
    let dir = TestDir::new("supervise-twice");
    let publisher = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = plain_channel(&server_block(&dir, admin), port, &publisher);
    let mut first = Ccedge::launch(&dir, "ccedge", &yaml, &["supervise"], &[port, admin]).await;
    let config = dir.join("ccedge.yaml");
    let supervise = ["supervise", "-c", config.to_str().unwrap()];
    let running = exits_at_once(&supervise).await;
    let said = String::from_utf8_lossy(&running.stderr);
    assert_eq!(running.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("another ccedge (pid {}", first.pid())),
        "{said}"
    );

    // Nor may a daemon take the file over, and nobody else may open (and so lock) it.
    let daemon = exits_at_once(&["-d", "-c", config.to_str().unwrap()]).await;
    let said = String::from_utf8_lossy(&daemon.stderr);
    assert_eq!(daemon.status.code(), Some(1), "{said}");
    assert!(said.contains("holds the pid file"), "{said}");
    let mode = std::fs::metadata(dir.join("ccedge.pid"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // Stopping takes up to the grace period (here, for a request still arriving): a second
    // supervisor started meanwhile is refused too.
    let mut arriving = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut arriving, b"GET / HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = exits_at_once(&supervise).await;
    let said = String::from_utf8_lossy(&stopping.stderr);
    assert_eq!(stopping.status.code(), Some(1), "{said}");
    assert!(said.contains("holds the pid file"), "{said}");
    // Files someone else has written since are not the first supervisor's to remove.
    let (pid_file, state) = (dir.join("ccedge.pid"), dir.join("ccedge.pid.json"));
    std::fs::write(&pid_file, "4194300\n").unwrap();
    std::fs::write(&state, "{\"supervisor_pid\": 4194300}").unwrap();
    assert_eq!(first.wait_exit(15).await, Some(0));
    assert!(
        pid_file.exists() && state.exists(),
        "another's files removed"
    );

    let second = Ccedge::launch(&dir, "second", &yaml, &["supervise"], &[port, admin]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&state).map_or(true, |s| {
        !s.contains(&format!("\"supervisor_pid\": {}", second.pid()))
    }) {
        assert!(
            Instant::now() < deadline,
            "the second supervisor wrote no state"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reloaded = std::process::Command::new(binary())
        .args(["reload", "-c", dir.join("second.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        reloaded.status.success(),
        "{}",
        String::from_utf8_lossy(&reloaded.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        second.pid().to_string()
    );
}

#[tokio::test]
async fn a_node_down_before_a_reload_gets_no_traffic_after_it() {
    let dir = TestDir::new("reload-health");
    let publisher = Upstream::plain("publisher").await;
    let subscriber = Upstream::plain("subscriber").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: dc.example.com:443\n    \
         publisher: {p}\n    subscriber: {s}\n    health_check:\n      interval_ms: 3000\n      timeout_ms: 500\n      \
         rise: 1\n      fall: 1\n",
        server = server_block(&dir, admin),
        p = publisher.authority(),
        s = subscriber.authority()
    );
    let supervisor = Ccedge::launch(&dir, "ccedge", &yaml, &["supervise"], &[port, admin]).await;
    publisher.stop().await;
    supervisor.wait_stderr("healthy -> unhealthy").await;
    // In the new process one failed check is not enough to take the publisher out (fall 3), and
    // the next check is far off: only what the old process knew keeps it out.
    let slower = yaml
        .replace("interval_ms: 3000", "interval_ms: 30000")
        .replace("fall: 1", "fall: 3");
    std::fs::write(dir.join("ccedge.yaml"), slower).unwrap();
    let (ok, said) = reload(&dir.join("ccedge.yaml")).await;
    assert!(ok, "{said}");
    supervisor
        .wait_stderr("was down in the previous process")
        .await;
    let reply = curl(&[
        "-H",
        "TrackingID: after-reload",
        &format!("http://127.0.0.1:{port}/drapi/v1/tasks"),
    ])
    .await
    .unwrap();
    assert_eq!(reply.echo().node(), "subscriber");
    let line = supervisor.log_entry("after-reload").await;
    assert_eq!(
        line["attempts"], 1,
        "the new process tried the dead publisher: {line}"
    );
}

#[tokio::test]
async fn metrics_parse_with_promtool_and_count_what_happened() {
    let rules = "    rate_limits:\n      - path_prefix: /limited/\n        per_second: 1\n        burst: 0\n";
    let dc = Digital::start("metrics", rules).await;
    for path in [
        "/drapi/v1/tasks",
        "/drapi/v1/tasks",
        "/dataconn/status",
        "/limited/",
        "/limited/",
        "/limited/",
    ] {
        curl(&args(&[], &dc.url(path))).await.unwrap();
    }
    let text = curl(&[&format!("http://127.0.0.1:{}/metrics", dc.admin)])
        .await
        .unwrap()
        .body;
    let checked = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    let mut checked = checked;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = checked.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
    }
    let out = checked.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
    };
    assert_eq!(
        value("ccedge_requests_total{route=\"default\",service=\"cc\",status=\"2xx\"}"),
        3.0
    );
    assert_eq!(
        value("ccedge_requests_total{route=\"publisher_only\",service=\"cc\",status=\"2xx\"}"),
        1.0
    );
    assert_eq!(value("ccedge_rate_limited_total{service=\"cc\"}"), 2.0);
    assert_eq!(
        value("ccedge_requests_total{route=\"default\",service=\"cc\",status=\"4xx\"}"),
        2.0
    );
    assert_eq!(value("ccedge_requests_in_flight{service=\"cc\"}"), 0.0);
    let publisher = format!(
        "ccedge_upstream_healthy{{address=\"{}\",node=\"publisher\",service=\"cc\"}}",
        dc.publisher.authority()
    );
    assert_eq!(value(&publisher), 1.0);
    assert_eq!(
        value("ccedge_request_duration_seconds_count{service=\"cc\"}"),
        6.0
    );
}

/// The numbers `n` of the `/rotate/{n}` requests an access log file holds.
fn rotated_requests(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|entry| {
            let path = entry["path"].as_str()?.strip_prefix("/rotate/")?;
            path.parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn a_log_rotation_under_load_loses_no_line() {
    let dir = TestDir::new("log-rotation");
    let publisher = Upstream::plain("publisher").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = plain_channel(&server_block(&dir, admin), port, &publisher);
    let supervisor = Ccedge::launch(&dir, "ccedge", &yaml, &["supervise"], &[port, admin]).await;
    let config = dir.join("ccedge.yaml");
    let (log, rotated) = (dir.join("access.log"), dir.join("access.log.1"));

    let stop = Arc::new(AtomicBool::new(false));
    let load = |stop: Arc<AtomicBool>, first: u64| {
        tokio::spawn(async move {
            let mut client = Client::new(([127, 0, 0, 1], port).into(), "dc.example.com");
            let mut n = first;
            while !stop.load(Ordering::SeqCst) {
                let answer = client.get(&format!("/rotate/{n}")).await.unwrap();
                assert_eq!(answer.status, 200, "{}", answer.body);
                n += 1;
            }
            first..n
        })
    };
    let clients = [load(stop.clone(), 0), load(stop.clone(), 1_000_000)];
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What logrotate does: move the file, then run the postrotate command.
    std::fs::rename(&log, &rotated).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reopen = tokio::process::Command::new(binary())
        .args(["reopen", "-c", config.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&reopen.stdout);
    assert!(
        reopen.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&reopen.stderr)
    );
    assert!(said.contains("reopened"), "{said}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (before, after) = (rotated_requests(&rotated), rotated_requests(&log));
    assert!(
        !before.is_empty() && !after.is_empty(),
        "{} / {}",
        before.len(),
        after.len()
    );
    let mut logged: Vec<u64> = before.iter().chain(&after).copied().collect();
    logged.sort_unstable();
    sent.sort_unstable();
    assert_eq!(logged.len(), sent.len(), "lines lost or doubled");
    assert_eq!(logged, sent);
    // Each client's requests went to the old file, then to the new one.
    for first in [0, 1_000_000] {
        let mine = |n: &&u64| (first..first + 1_000_000).contains(*n);
        let last_old = before.iter().filter(mine).max();
        let first_new = after.iter().filter(mine).min();
        assert!(last_old < first_new, "{last_old:?} then {first_new:?}");
    }

    // With nothing running, the command says so.
    drop(supervisor);
    let reopen = exits_at_once(&["reopen", "-c", config.to_str().unwrap()]).await;
    let said = String::from_utf8_lossy(&reopen.stderr);
    assert_eq!(reopen.status.code(), Some(1), "{said}");
    assert!(said.contains("no ccedge holds"), "{said}");
}

/// A TLS Finesse site on `port` in front of `upstream`, with `admin` (and its token).
fn finesse_site(
    dir: &TestDir,
    cert: &crate::harness::certs::Pair,
    port: u16,
    admin: u16,
    upstream: &Upstream,
) -> String {
    format!(
        "{server}    token: {TOKEN}\nfinesse:\n  - name: desktop\n    bind: 127.0.0.1\n    rate_limits: []\n    tls:\n      cert: {c}\n      key: {k}\n    \
         servers:\n      - public: {HOST}:{port}\n        upstream: {u}\n",
        server = server_block(dir, admin),
        c = cert.cert.display(),
        k = cert.key.display(),
        u = upstream.authority(),
    )
}

const TOKEN: &str = "drain-test-token-0123456789";

/// `GET /readyz` on the admin listener: status and body.
async fn readyz(admin: u16) -> (u16, String) {
    let answer = Client::new(([127, 0, 0, 1], admin).into(), "127.0.0.1")
        .get("/readyz")
        .await
        .unwrap();
    (answer.status, answer.body)
}

#[tokio::test]
async fn a_drain_takes_the_instance_out_of_rotation_and_leaves_websockets_alone() {
    let dir = TestDir::new("drain");
    let ca = Ca::new("drain");
    let cert = ca.server(&dir.path, "proxy", &[HOST]);
    let upstream = Upstream::custom("a", node("a", Arc::new(EchoLog::default()))).await;
    let (port, admin) = (free_port(), free_port());
    let yaml = finesse_site(&dir, &cert, port, admin, &upstream);
    let _ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
    let config = dir.join("ccedge.yaml");
    assert_eq!(readyz(admin).await, (200, "ready\n".into()));

    let mut socket = ws::connect(HOST, port, "/ws", &ca.pem).await;
    let mut h1 = Client::tls(HOST, port, &ca.pem, Proto::H1);
    let first = h1.get("/before").await.unwrap();
    assert_eq!(first.status, 200);
    assert!(first.headers.get("connection").is_none_or(|c| c != "close"));
    let mut h2 = crate::harness::h2raw::RawH2::connect(HOST, port, &ca.pem).await;
    let (frames, closed) = h2.read_frames(Duration::from_millis(300)).await;
    assert!(!closed && frames.iter().all(|f| f.0 != crate::harness::h2raw::GOAWAY));

    // The admin token is needed to drain, not to ask for readiness.
    let mut anonymous = Client::new(([127, 0, 0, 1], admin).into(), "127.0.0.1");
    let refused = anonymous.send("POST", "/drain", &[], &[]).await.unwrap();
    assert_eq!(refused.status, 401);
    assert_eq!(readyz(admin).await.0, 200);

    let (code, said) = command(&["drain"], &config).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("draining"), "{said}");
    let (status, body) = readyz(admin).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("draining"), "{body}");
    let health = Client::new(([127, 0, 0, 1], admin).into(), "127.0.0.1")
        .get("/healthz")
        .await
        .unwrap();
    assert_eq!(health.status, 200, "alive while draining");

    // The kept-alive connection is told to close with its next answer.
    let next = h1.get("/during").await.unwrap();
    assert_eq!(next.status, 200);
    assert_eq!(
        next.headers.get("connection").map(|c| c.to_str().unwrap()),
        Some("close")
    );
    // HTTP/2 connections get GOAWAY, the open one at once, a new one after its first requests.
    let (frames, _) = h2.read_frames(Duration::from_secs(1)).await;
    assert!(
        frames.iter().any(|f| f.0 == crate::harness::h2raw::GOAWAY),
        "{frames:?}"
    );
    let mut late = Client::tls(HOST, port, &ca.pem, Proto::H2);
    assert_eq!(late.get("/new-during-drain").await.unwrap().status, 200);
    let mut late = crate::harness::h2raw::RawH2::connect(HOST, port, &ca.pem).await;
    let (frames, _) = late.read_frames(Duration::from_secs(4)).await;
    assert!(
        frames.iter().any(|f| f.0 == crate::harness::h2raw::GOAWAY),
        "{frames:?}"
    );
    // WebSockets go on.
    ws::echoes(&mut socket, "while draining").await;
    let status: Value = serde_json::from_str(
        &Client::new(([127, 0, 0, 1], admin).into(), "127.0.0.1")
            .send(
                "GET",
                "/status",
                &[("authorization", &format!("Bearer {TOKEN}"))],
                &[],
            )
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(status["readiness"], "draining");

    let (code, said) = command(&["drain", "--off"], &config).await;
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(readyz(admin).await, (200, "ready\n".into()));
    let (code, said) = command(&["health", "--ready"], &config).await;
    assert_eq!(code, Some(0), "{said}");
    let mut again = Client::tls(HOST, port, &ca.pem, Proto::H1);
    for _ in 0..2 {
        let answer = again.get("/after").await.unwrap();
        assert!(answer
            .headers
            .get("connection")
            .is_none_or(|c| c != "close"));
    }
    ws::echoes(&mut socket, "after the drain").await;
}

/// The value of the series `name` without labels, 0 when absent.
fn series_plain(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The value of the series of `name` whose labels include each of `labels`, 0 when absent.
fn series(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or(0.0)
}

async fn admin_metrics(admin: u16) -> String {
    let bearer = format!("Bearer {TOKEN}");
    Client::new(([127, 0, 0, 1], admin).into(), "127.0.0.1")
        .send("GET", "/metrics", &[("authorization", &bearer)], &[])
        .await
        .unwrap()
        .body
}

#[tokio::test]
async fn upstream_timings_are_logged_and_measured_per_node() {
    let dir = TestDir::new("upstream-timings");
    let ca = Ca::new("timings");
    let cert = ca.server(&dir.path, "proxy", &[HOST]);
    let websocket = ws::echo_handler(Arc::new(EchoLog::default()));
    let handler: Handler = Arc::new(move |req| {
        if req.headers().contains_key("sec-websocket-key") {
            return websocket(req);
        }
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            hyper::Response::new(full(vec![b'x'; 1000]))
        })
    });
    let upstream = Upstream::custom("slow", handler).await;
    let (port, admin) = (free_port(), free_port());
    let ccedge = Ccedge::start(
        &dir,
        &finesse_site(&dir, &cert, port, admin, &upstream),
        &[port, admin],
    )
    .await;
    let mut client = Client::tls(HOST, port, &ca.pem, Proto::H1);
    for _ in 0..2 {
        assert_eq!(client.get("/slow").await.unwrap().status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<Value> = ccedge
            .log_lines()
            .into_iter()
            .filter(|l| l["path"] == "/slow")
            .collect();
        if lines.len() == 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ms = |line: &Value, field: &str| line[field].as_f64().unwrap_or(-1.0);
    // A new upstream connection, then the pooled one again.
    assert!(ms(&lines[0], "upstream_connect_ms") > 0.0, "{}", lines[0]);
    assert_eq!(ms(&lines[1], "upstream_connect_ms"), 0.0, "{}", lines[1]);
    for line in &lines {
        let header = ms(line, "upstream_header_ms");
        assert!((300.0..2000.0).contains(&header), "{line}");
        assert!(ms(line, "duration_ms") >= header, "{line}");
        assert_eq!(line["upstream_bytes"], 1000, "{line}");
    }

    let node = format!("node=\"{}\"", upstream.authority());
    let labels = [node.as_str(), "service=\"desktop\""];
    let text = admin_metrics(admin).await;
    let count = series(&text, "ccedge_upstream_header_seconds_count", &labels);
    assert_eq!(count, 2.0, "{text}");
    let fast = [node.as_str(), "service=\"desktop\"", "le=\"0.25\""];
    assert_eq!(
        series(&text, "ccedge_upstream_header_seconds_bucket", &fast),
        0.0
    );
    let slow = [node.as_str(), "service=\"desktop\"", "le=\"0.5\""];
    assert_eq!(
        series(&text, "ccedge_upstream_header_seconds_bucket", &slow),
        2.0
    );

    let gauge = "ccedge_upstream_websockets_open";
    let mut socket = ws::connect(HOST, port, "/ws", &ca.pem).await;
    ws::echoes(&mut socket, "counted").await;
    assert_eq!(series(&admin_metrics(admin).await, gauge, &labels), 1.0);
    socket.close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while series(&admin_metrics(admin).await, gauge, &labels) != 0.0 {
        assert!(Instant::now() < deadline, "the WebSocket is still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether process `pid` still runs.
fn running(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The processes draining after reloads, as the current one's `/status` lists them.
async fn draining(admin: u16) -> Vec<Value> {
    let bearer = format!("Bearer {TOKEN}");
    let status = Client::new(([127, 0, 0, 1], admin).into(), "127.0.0.1")
        .send("GET", "/status", &[("authorization", &bearer)], &[])
        .await
        .unwrap();
    let status: Value = serde_json::from_str(&status.body).unwrap();
    status["draining_processes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn websockets_stay_in_the_old_process_and_past_the_cap_the_oldest_closes_them() {
    let dir = TestDir::new("reload-drain");
    let ca = Ca::new("reload-drain");
    let cert = ca.server(&dir.path, "proxy", &[HOST]);
    let log = Arc::new(EchoLog::default());
    let upstream = Upstream::custom("a", node("a", log.clone())).await;
    let (port, admin) = (free_port(), free_port());
    let yaml = finesse_site(&dir, &cert, port, admin, &upstream)
        .replace("  admin:", "  max_draining_processes: 1\n  admin:");
    let _supervisor = Ccedge::launch(&dir, "ccedge", &yaml, &["supervise"], &[port, admin]).await;
    let file = dir.join("ccedge.yaml");

    let first = supervised_server(&dir);
    let mut a = ws::connect(HOST, port, "/ws", &ca.pem).await;
    let (ok, said) = reload(&file).await;
    assert!(ok, "{said}");
    assert!(
        said.contains("its WebSockets stay until they close"),
        "{said}"
    );
    // Past the grace period (3 s), the WebSocket is still served by the first process.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    ws::echoes(&mut a, "after the grace period").await;
    assert!(running(first));
    let listed = draining(admin).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0]["pid"].as_u64(), listed[0]["websockets"].as_u64()),
        (Some(first), Some(1))
    );
    // The metrics count what previous processes still carry.
    let text = admin_metrics(admin).await;
    assert_eq!(
        series_plain(&text, "ccedge_draining_websockets_open"),
        1.0,
        "{text}"
    );
    // A log rotation reaches the draining process too: its WebSocket's line, written when the
    // WebSocket ends, goes to the new file.
    std::fs::rename(dir.join("access.log"), dir.join("access.log.1")).unwrap();
    let reopen = tokio::process::Command::new(binary())
        .args(["reopen", "-c", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(
        reopen.status.success(),
        "{}",
        String::from_utf8_lossy(&reopen.stderr)
    );

    // A second reload with a WebSocket in the second process: one old process at most, so the
    // first closes its WebSocket (1001, and a masked close to the upstream) and exits.
    let second = supervised_server(&dir);
    let mut b = ws::connect(HOST, port, "/ws", &ca.pem).await;
    let (ok, said) = reload(&file).await;
    assert!(ok, "{said}");
    let closed = ws::closed(&mut a, Duration::from_secs(5)).await;
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(1001));
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(first)
        || !log
            .endings
            .lock()
            .unwrap()
            .iter()
            .any(|e| e == "client closed (1001)")
    {
        assert!(
            Instant::now() < deadline,
            "the first process is still there: {:?}",
            log.endings
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ws::echoes(&mut b, "the second process keeps its own").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
        let closed =
            |l: &&str| l.contains("\"path\":\"/ws\"") && l.contains("websocket_drain_seconds");
        if text.lines().any(|l| closed(&l)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed WebSocket's line is not in the new file:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("\"path\":\"/ws\"") && l.contains("websocket_drain_seconds"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed WebSocket's line is not in the new file:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The second process exits as soon as its last connection ends.
    b.close(None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while running(second) {
        assert!(
            Instant::now() < deadline,
            "the second process did not exit once idle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(draining(admin).await.is_empty());
}

#[tokio::test]
async fn diff_says_what_a_reload_would_change() {
    let dir = TestDir::new("diff");
    let ca = Ca::new("diff");
    let cert = ca.server(&dir.path, "proxy", &[HOST]);
    let renewed = ca.server_expiring(&dir.path, "renewed", &[HOST], 400);
    let upstream = Upstream::plain("a").await;
    let (port, admin, extra) = (free_port(), free_port(), free_port());
    let yaml = finesse_site(&dir, &cert, port, admin, &upstream);
    let _supervisor = Ccedge::launch(&dir, "ccedge", &yaml, &["supervise"], &[port, admin]).await;

    let diff_file = |name: &'static str, yaml: &str, json: bool| {
        let file = dir.write(name, yaml);
        async move {
            let args: &[&str] = if json { &["diff", "--json"] } else { &["diff"] };
            command(args, &file).await
        }
    };
    let diff = |yaml: &str, json: bool| diff_file("new.yaml", yaml, json);
    let (code, said) = diff(&yaml, false).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("is what the running ccedge serves"), "{said}");
    // The same certificate named by a relative path is the same.
    let relative = yaml
        .replace(&cert.cert.display().to_string(), "proxy.crt")
        .replace(&cert.key.display().to_string(), "proxy.key");
    let (code, said) = diff(&relative, false).await;
    assert_eq!(code, Some(0), "{said}");
    // A rotated admin token is a change (the running process is asked with its own token).
    let rotated = yaml.replace(TOKEN, "another-token-0123456789abcdef");
    let (code, said) = diff(&rotated, false).await;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("~ server server.admin_token:"), "{said}");
    assert!(!said.contains(TOKEN), "the token is shown: {said}");
    // The same edit made in place, to the file the supervisor runs (as `ccedge reload` wants).
    let (code, said) = diff_file("ccedge.yaml", &rotated, false).await;
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("~ server server.admin_token: changed"),
        "{said}"
    );
    dir.write("ccedge.yaml", &yaml);

    let changed =
        yaml.replace(
            &cert.cert.display().to_string(),
            &renewed.cert.display().to_string(),
        )
        .replace(
            &cert.key.display().to_string(),
            &renewed.key.display().to_string(),
        )
        .replace(
            "rate_limits: []\n",
            "rate_limits: []\n    limits:\n      max_body_bytes: 1000\n",
        ) + &format!(
            "      - public: cuic.example.com:{extra}\n        upstream: {}\n        role: cuic\n",
            upstream.authority()
        );
    let (code, said) = diff(&changed, false).await;
    assert_eq!(code, Some(1), "{said}");
    for expected in [
        format!("+ listener 127.0.0.1:{extra} (desktop)"),
        "~ limits services.desktop.settings.limits.max_body_bytes: 15728640 -> 1000".to_string(),
        "~ certificate services.desktop.certificates[0].expires:".to_string(),
        "+ route services.desktop.settings.servers[1].public".to_string(),
    ] {
        assert!(said.contains(&expected), "{expected:?} missing:\n{said}");
    }
    let (code, said) = diff(&changed, true).await;
    assert_eq!(code, Some(1), "{said}");
    let report: Value = serde_json::from_str(&said).unwrap();
    assert_eq!(report["equal"], false);
    assert!(report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["category"] == "limits" && c["after"] == 1000));

    // No comparison: a broken file, or a file whose admin listener nobody answers.
    let (code, said) = diff("finesse: [", false).await;
    assert_eq!(code, Some(2), "{said}");
    let (code, said) = diff("finesse: [", true).await;
    assert_eq!(code, Some(2), "{said}");
    let error: Value = serde_json::from_str(&said).unwrap_or_else(|e| panic!("{e}: {said}"));
    assert!(error["error"]
        .as_str()
        .unwrap()
        .contains("configuration rejected"));
    // A moved admin listener is a change too: asked where the running one is.
    let elsewhere = yaml.replace(
        &format!("127.0.0.1:{admin}"),
        &format!("127.0.0.1:{}", free_port()),
    );
    let (code, said) = diff(&elsewhere, false).await;
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("+ listener") && said.contains("(admin)"),
        "{said}"
    );
    // No comparison without anyone to ask.
    drop(_supervisor);
    let (code, said) = diff(&yaml, true).await;
    assert_eq!(code, Some(2), "{said}");
    let error: Value = serde_json::from_str(&said).unwrap();
    assert!(error["error"]
        .as_str()
        .unwrap()
        .contains("cannot read what the running ccedge serves"));
}

#[tokio::test]
async fn a_drain_outlives_a_reload() {
    let dir = TestDir::new("drain-reload");
    let ca = Ca::new("drain-reload");
    let cert = ca.server(&dir.path, "proxy", &[HOST]);
    let upstream = Upstream::plain("a").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = finesse_site(&dir, &cert, port, admin, &upstream);
    let _supervisor = Ccedge::launch(&dir, "ccedge", &yaml, &["supervise"], &[port, admin]).await;
    let config = dir.join("ccedge.yaml");
    let (code, said) = command(&["drain"], &config).await;
    assert_eq!(code, Some(0), "{said}");
    let before = supervised_server(&dir);
    let (ok, said) = reload(&config).await;
    assert!(ok, "{said}");
    assert_ne!(supervised_server(&dir), before);
    let (status, body) = readyz(admin).await;
    assert_eq!(status, 503, "the reload undid the drain: {body}");
    let (code, said) = command(&["drain", "--off"], &config).await;
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(readyz(admin).await.0, 200);
    // Ended, it stays ended across the next reload.
    let (ok, said) = reload(&config).await;
    assert!(ok, "{said}");
    assert_eq!(readyz(admin).await.0, 200);
}
