//! In a real browser (headless Chromium, `make e2e`): an agent's desktop through ccedge end to
//! end, and the operator's status page.

use crate::harness::browser::Browser;
use crate::harness::fixtures::{args, https};
use crate::harness::proxy::{reload, server_pid};
use crate::harness::upstream::{full, Handler};
use crate::harness::{curl, free_port, server_block, Ca, Ccedge, TestDir, Upstream};
use base64::Engine;
use futures_util::SinkExt;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const HOST: &str = "finesse.example.com";
/// The name the internal server gives itself in its answers.
const INTERNAL: &str = "finesse1.cc.internal:8445";
const USER: &str = "agent1";
const PASSWORD: &str = "s3cret!";

const PAGE: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Agent desktop</title>
<link rel="stylesheet" href="assets/desktop.css">
<script src="assets/desktop.js"></script></head>
<body><form id="signin"><input id="user" name="user"><input id="password" name="password" type="password">
<button type="submit">Sign in</button></form><pre id="state"></pre></body></html>
"#;

const STYLE: &str = "body { background-color: rgb(1, 2, 3); color: #fff; }\n";

/// The desktop's script: signs in with Basic credentials, reads the agent's REST resource, and
/// keeps a notification WebSocket open the way the Finesse desktop does (the credentials after
/// `xmpp` in the subprotocol list), reconnecting when it closes. What it sees goes to `window.e2e`.
const SCRIPT: &str = r#""use strict";
window.e2e = {status: null, refused: 0, signedIn: false, user: null, basic: null, problems: [],
              opens: 0, closes: [], wsErrors: 0, protocol: null, messages: []};
function problem(text) { e2e.problems.push(text); }
function show() { document.getElementById("state").textContent = JSON.stringify(e2e, null, 1); }
function connect(token) {
  const ws = new WebSocket("wss://" + location.host + "/ws/notifications", ["xmpp", token]);
  ws.onopen = () => { e2e.opens++; e2e.protocol = ws.protocol; show(); };
  ws.onmessage = (m) => { e2e.messages.push({connection: e2e.opens, data: m.data}); show(); };
  ws.onerror = () => { e2e.wsErrors++; };
  ws.onclose = (c) => {
    e2e.closes.push(c.code);
    if (e2e.closes.length > 1) { problem("the notification WebSocket closed " + e2e.closes.length + " times"); return; }
    setTimeout(() => connect(token), 200);
  };
}
async function user() {
  const reply = await fetch("/finesse/api/User/" + encodeURIComponent(e2e.name),
                            {headers: {Authorization: "Basic " + e2e.basic}});
  return {status: reply.status, body: await reply.text()};
}
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    e2e.name = document.getElementById("user").value;
    e2e.basic = btoa(e2e.name + ":" + document.getElementById("password").value);
    try {
      const answer = await user();
      e2e.status = answer.status;
      if (answer.status !== 200) { e2e.refused++; show(); return; }
      e2e.user = answer.body;
      e2e.signedIn = true;
      connect(e2e.basic.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""));
    } catch (e) { problem("sign-in: " + e); }
    show();
  });
});
"#;

/// Pushes `event N` every 200 ms on every notification WebSocket, which must offer `xmpp`.
fn notifications(
    upgrades: Arc<AtomicUsize>,
) -> impl Fn(Request<hyper::body::Incoming>) -> Response<crate::harness::upstream::Body> {
    move |mut req| {
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|p| p.to_str().ok())
            .is_some_and(|p| p.split(',').any(|e| e.trim() == "xmpp"));
        let Some(key) = req.headers().get("sec-websocket-key").filter(|_| offered) else {
            return Response::builder()
                .status(400)
                .body(full("an xmpp WebSocket only"))
                .unwrap();
        };
        let accept = derive_accept_key(key.as_bytes());
        upgrades.fetch_add(1, Ordering::SeqCst);
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            for n in 1.. {
                if ws.send(Message::text(format!("event {n}"))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Response::builder()
            .status(101)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Accept", accept)
            .header("Sec-WebSocket-Protocol", "xmpp")
            .body(full(""))
            .unwrap()
    }
}

/// An internal server that looks like Finesse to the desktop: the desktop page and its assets,
/// a user resource that names the server by its internal name, the credential check, and the
/// notification service.
fn finesse(upgrades: Arc<AtomicUsize>) -> Handler {
    let websocket = Arc::new(notifications(upgrades));
    Arc::new(move |req: Request<hyper::body::Incoming>| {
        let websocket = websocket.clone();
        Box::pin(async move {
            let basic = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            let valid = basic.as_deref() == Some(&format!("{USER}:{PASSWORD}"));
            let answer = |status: u16, kind: &str, body: String| {
                Response::builder()
                    .status(status)
                    .header("Content-Type", kind)
                    .header("Cache-Control", "max-age=600")
                    .header("ETag", "\"v1\"")
                    .body(full(body))
                    .unwrap()
            };
            match req.uri().path() {
                "/desktop/" => answer(200, "text/html", PAGE.to_string()),
                "/desktop/assets/desktop.js" => {
                    answer(200, "application/javascript", SCRIPT.to_string())
                }
                "/desktop/assets/desktop.css" => answer(200, "text/css", STYLE.to_string()),
                "/auth/check" if valid => answer(200, "text/plain", "valid".into()),
                "/auth/check" => answer(401, "text/plain", "invalid".into()),
                "/ws/notifications" => websocket(req),
                path if path == format!("/finesse/api/User/{USER}") && valid => Response::builder()
                    .header("Content-Type", "application/xml")
                    .body(full(format!(
                        "<User><loginId>{USER}</loginId><uri>https://{INTERNAL}/finesse/api/User/{USER}</uri></User>"
                    )))
                    .unwrap(),
                _ => answer(404, "text/plain", "no such resource".into()),
            }
        })
    })
}

/// What the page saw, for a failure message: its own record and the browser's WebSocket events.
async fn page_state(browser: &mut Browser) -> String {
    let page = browser
        .eval("JSON.stringify(window.e2e || 'no desktop script ran')")
        .await;
    let events: Vec<String> = browser
        .websocket_events
        .iter()
        .map(|e| format!("{} {}", e["method"], e["params"]))
        .collect();
    format!(
        "{}\nWebSocket events:\n{}",
        page.as_str().unwrap_or_default(),
        events.join("\n")
    )
}

/// Waits for `expression` in the page, failing with `what` and what the page saw.
async fn expect(browser: &mut Browser, expression: &str, seconds: u64, what: &str) {
    if let Err(e) = browser
        .wait_for(expression, Duration::from_secs(seconds))
        .await
    {
        panic!("{what}: {e}\nthe page saw: {}", page_state(browser).await);
    }
}

/// The cache outcomes of the access-log lines for `path`, in order.
fn cache_outcomes(ccedge: &Ccedge, path: &str) -> Vec<String> {
    ccedge
        .log_lines()
        .iter()
        .filter(|l| l["path"] == path)
        .map(|l| l["cache"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test]
async fn an_agent_signs_in_and_stays_connected_through_two_reloads() {
    let dir = TestDir::new("e2e-desktop");
    let ca = Ca::new("e2e");
    let cert = ca.server(&dir.path, "proxy", &[HOST]);
    let upgrades = Arc::new(AtomicUsize::new(0));
    let server = Upstream::custom("finesse", finesse(upgrades.clone())).await;
    let (port, admin) = (free_port(), free_port());
    let d = dir.path.display();
    let yaml = format!(
        "server:\n  threads: 2\n  pid_file: {d}/ccedge.pid\n  upgrade_sock: {d}/upgrade.sock\n  \
         grace_period_seconds: 2\n  graceful_shutdown_timeout_seconds: 1\n  access_log: {d}/access.log\n  \
         admin:\n    listen: 127.0.0.1:{admin}\n\
         finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    rate_limits: []\n    \
         tls:\n      cert: {c}\n      key: {k}\n    \
         servers:\n      - public: {HOST}:{port}\n        upstream: {u}\n    \
         cache:\n      rules:\n        - path_prefix: /desktop/assets/\n    \
         auth:\n      validate_url: http://{u}/auth/check\n      public_paths: [/desktop/]\n    \
         substitutions:\n      - replace:\n          - {{from: \"{INTERNAL}\", to: \"{HOST}:{port}\"}}\n",
        c = cert.cert.display(),
        k = cert.key.display(),
        u = server.authority(),
    );
    let supervisor = Ccedge::launch(&dir, "ccedge", &yaml, &["supervise"], &[port, admin]).await;
    let Some(mut browser) = Browser::launch("e2e-desktop", Some(&cert.cert_pem)).await else {
        return;
    };
    // The browser's own cache stays out of the way: each load asks ccedge.
    browser.cache_disabled(true).await;
    let desktop = format!("https://{HOST}:{port}/desktop/");

    // Two loads of the desktop: its script and style come from the upstream once, then from
    // ccedge's cache.
    for _ in 0..2 {
        browser.open(&desktop).await;
        expect(
            &mut browser,
            "window.e2e",
            10,
            "the desktop script did not run",
        )
        .await;
        let background = browser
            .eval("getComputedStyle(document.body).backgroundColor")
            .await;
        assert_eq!(
            background, "rgb(1, 2, 3)",
            "the desktop style did not apply"
        );
    }
    let protocol = browser
        .eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await;
    assert_eq!(protocol, "h2", "the desktop was not loaded over HTTP/2");
    for asset in ["/desktop/assets/desktop.js", "/desktop/assets/desktop.css"] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache_outcomes(&supervisor, asset).len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            cache_outcomes(&supervisor, asset),
            ["MISS", "HIT"],
            "{asset}: the second load was not served from the cache"
        );
    }
    // The figure bench/RESULTS.md keeps: how much of two desktop loads the cache served.
    let lookups: Vec<String> = supervisor
        .log_lines()
        .iter()
        .filter(|l| l["cache"] != "BYPASS")
        .map(|l| l["cache"].as_str().unwrap_or("?").to_string())
        .collect();
    let hits = lookups.iter().filter(|c| *c == "HIT").count();
    eprintln!(
        "desktop cache: {hits} of {} cacheable requests of two loads were hits ({:?})",
        lookups.len(),
        lookups
    );

    // A wrong password is refused at the proxy; the right one signs in.
    let sign_in = |user: &str, password: &str| {
        format!(
            "document.getElementById('user').value = {user:?}; \
             document.getElementById('password').value = {password:?}; \
             document.querySelector('#signin button').click(); true"
        )
    };
    browser.eval(&sign_in(USER, "wrong")).await;
    expect(
        &mut browser,
        "e2e.refused === 1",
        10,
        "a wrong password was not refused",
    )
    .await;
    assert_eq!(browser.eval("e2e.status").await, 401);
    browser.eval(&sign_in(USER, PASSWORD)).await;
    expect(
        &mut browser,
        "e2e.signedIn",
        10,
        "the agent could not sign in",
    )
    .await;
    let user = browser.eval("e2e.user").await;
    let user = user.as_str().unwrap();
    assert!(
        user.contains(&format!("https://{HOST}:{port}/finesse/api/User/{USER}"))
            && !user.contains("cc.internal"),
        "the REST answer still names the internal server: {user}"
    );
    expect(
        &mut browser,
        "e2e.protocol === 'xmpp' && e2e.messages.length >= 3",
        10,
        "no notifications arrived",
    )
    .await;
    let line = supervisor
        .log_lines()
        .into_iter()
        .find(|l| l["path"] == format!("/finesse/api/User/{USER}") && l["status"] == 200)
        .expect("the sign-in request is logged");
    assert_eq!(line["user"], USER, "{line}");

    // Two reloads: the agent's WebSocket stays in the process that opened it and keeps
    // receiving, with no reconnect; REST calls go to the new process.
    let first = server_pid(admin).await;
    for reload_number in 1..=2 {
        let (ok, said) = reload(&dir.join("ccedge.yaml")).await;
        assert!(ok, "reload {reload_number} failed: {said}");
        let before = browser.eval("e2e.messages.length").await.as_u64().unwrap();
        expect(
            &mut browser,
            &format!("e2e.messages.length >= {before} + 5"),
            10,
            &format!("notifications stopped after reload {reload_number}"),
        )
        .await;
        assert_eq!(
            browser.eval("e2e.opens").await,
            1,
            "the WebSocket reconnected: {}",
            page_state(&mut browser).await
        );
    }
    assert_ne!(
        server_pid(admin).await,
        first,
        "the new process does not serve"
    );
    // The first process still carries the WebSocket, and the current one says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = curl(&[&format!("http://127.0.0.1:{admin}/status")])
            .await
            .unwrap();
        let status: serde_json::Value = serde_json::from_str(&status.body).unwrap();
        let draining = status["draining_processes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let holding = draining
            .iter()
            .any(|p| p["pid"] == first && p["websockets"] == 1);
        // The second process had no WebSocket: it is gone.
        if holding && draining.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "draining processes: {draining:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rest = browser.eval("user().then(a => a.status)").await;
    assert_eq!(rest, 200, "a REST call after the reload failed");
    if browser.eval("e2e.problems").await != serde_json::json!([]) {
        panic!("the page saw problems: {}", page_state(&mut browser).await);
    }
    if browser.eval("e2e.wsErrors").await != 0 {
        panic!(
            "the page's WebSocket reported an error: {}",
            page_state(&mut browser).await
        );
    }
    let opens = browser.eval("e2e.opens").await.as_u64().unwrap();
    assert_eq!(
        opens,
        1,
        "the notification WebSocket opened {opens} times: {}",
        page_state(&mut browser).await
    );
    assert_eq!(
        upgrades.load(Ordering::SeqCst) as u64,
        opens,
        "every WebSocket the page opened reached the notification service once"
    );
}

#[tokio::test]
async fn the_status_page_shows_what_an_operator_needs_and_keeps_itself_current() {
    let dir = TestDir::new("e2e-status");
    let ca = Ca::new("e2e-status");
    ca.write(&dir.join("ca.crt"));
    let dc_cert = ca.server_expiring(&dir.path, "dc", &["dc.example.com"], 20);
    let site_cert = ca.server(&dir.path, "site", &[HOST]);
    let publisher = Upstream::plain("publisher").await;
    let finesse = Upstream::plain("finesse").await;
    let refuse: Handler =
        Arc::new(|_| Box::pin(async { Response::builder().status(401).body(full("no")).unwrap() }));
    let validator = Upstream::custom("validator", refuse).await;
    let (dc_port, site_port, admin, dead) = (free_port(), free_port(), free_port(), free_port());
    let yaml = format!(
        "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{dc_port}\n    public: dc.example.com:443\n    \
         tls:\n      cert: {dc_crt}\n      key: {dc_key}\n    publisher: {p}\n    subscriber: 127.0.0.1:{dead}\n    \
         health_check:\n      interval_ms: 200\n      fall: 1\n    rate_limits: []\n\
         finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    rate_limits: []\n    \
         tls:\n      cert: {s_crt}\n      key: {s_key}\n    \
         servers:\n      - public: {HOST}:{site_port}\n        upstream: {f}\n    \
         cache:\n      max_size_mb: 8\n    \
         auth:\n      validate_url: http://{v}/check\n      lockout:\n        failures: 2\n",
        server = server_block(&dir.path, Some(admin)),
        dc_crt = dc_cert.cert.display(),
        dc_key = dc_cert.key.display(),
        s_crt = site_cert.cert.display(),
        s_key = site_cert.key.display(),
        p = publisher.authority(),
        f = finesse.authority(),
        v = validator.authority(),
    );
    let _ccedge = Ccedge::start(&dir, &yaml, &[dc_port, site_port, admin]).await;
    let Some(mut browser) = Browser::launch("e2e-status", None).await else {
        return;
    };
    for _ in 0..20 {
        let reply = curl(&args(
            &[],
            &https(&dir, "dc.example.com", dc_port, "/drapi/v1/tasks"),
        ))
        .await
        .unwrap();
        assert_eq!(reply.status, 200);
    }
    // The desktop's public pages fill the cache and show the server answering.
    for _ in 0..2 {
        let page = https(&dir, HOST, site_port, "/desktop/index.html");
        let reply = curl(&args(&[], &page)).await.unwrap();
        assert_eq!(reply.status, 200);
    }
    // Two failed logins lock this agent out at this address.
    for _ in 0..2 {
        let login = https(&dir, HOST, site_port, "/finesse/api/User/agent1");
        let reply = curl(&args(&["-u", "agent1:wrong"], &login)).await.unwrap();
        assert_eq!(reply.status, 401);
    }

    browser.open(&format!("http://127.0.0.1:{admin}/")).await;
    let section = |name: &str| {
        format!(
            "(document.querySelector('section[data-service=\"{name}\"]') || {{}}).innerText || ''"
        )
    };
    let cc = section("cc");
    let desktop = section("desktop");
    expect(
        &mut browser,
        &format!("{cc}.includes('down') && {desktop}.includes('127.0.0.1') && {desktop}.includes('agent1')"),
        10,
        "the page never showed the dead subscriber and the lockout",
    )
    .await;
    let cc_text = browser.eval(&cc).await;
    let cc_text = cc_text.as_str().unwrap();
    for expected in [
        "digital channel",
        &format!("127.0.0.1:{dc_port} (TLS)"),
        "publisher",
        &publisher.authority(),
        &format!("subscriber\t127.0.0.1:{dead}\tdown"),
        "dc.example.com",
        "listener",
    ] {
        assert!(
            cc_text.contains(expected),
            "cc lacks {expected:?}:\n{cc_text}"
        );
    }
    let rate = browser
        .eval("parseFloat([...document.querySelectorAll('section[data-service=\"cc\"] .facts b')][1].textContent)")
        .await;
    assert!(
        rate.as_f64().unwrap() > 0.0,
        "no requests per second shown:\n{cc_text}"
    );
    let desktop_text = browser.eval(&desktop).await;
    let desktop_text = desktop_text.as_str().unwrap();
    for expected in [
        "Finesse site",
        HOST,
        &finesse.authority(),
        "up (by requests)",
        "1 entry,",
        "127.0.0.1\t",
        "s more",
    ] {
        assert!(
            desktop_text.contains(expected),
            "desktop lacks {expected:?}:\n{desktop_text}"
        );
    }
    let days = browser
        .eval("[...document.querySelectorAll('section[data-service=\"desktop\"] tr.certificate td')].map(td => td.innerText)")
        .await;
    let days = days.as_array().unwrap();
    assert_eq!(days[0], "listener", "{days:?}");
    assert!(days[1].as_str().unwrap().contains(HOST), "{days:?}");
    assert!(
        days[2].as_str().unwrap().contains(HOST),
        "answers for: {days:?}"
    );
    assert!(
        days[4].as_str().unwrap().parse::<i64>().unwrap() > 365,
        "the days left of the test certificate: {days:?}"
    );
    browser
        .screenshot(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e/status-page.png"),
        )
        .await;

    // The page refreshes itself: a lifted lockout disappears without a reload.
    let lifted = curl(&[
        "-X",
        "DELETE",
        &format!("http://127.0.0.1:{admin}/auth/lockouts/127.0.0.1"),
    ])
    .await
    .unwrap();
    assert_eq!(lifted.status, 200);
    expect(
        &mut browser,
        &format!("{desktop}.includes('no client is locked out')"),
        10,
        "the page did not refresh itself",
    )
    .await;
}
