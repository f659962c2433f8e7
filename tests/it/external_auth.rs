//! The external check (`auth.external`): a service of the site's own judges each request after
//! ccedge's checks. A check in the test records what it was asked; the example service of
//! examples/external-auth/ runs too.

use crate::harness::http::{Answer, Client, Proto};
use crate::harness::proxy::command;
use crate::harness::upstream::{full, Echo, Handler};
use crate::harness::ws::{self, EchoLog};
use crate::harness::{curl, free_port, server_block, Ca, Ccedge, TestDir, Upstream};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HOST: &str = "finesse1.example.com";

fn basic(user: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:secret")))
}

/// Every user's password is `secret`; opaque tokens `opaque-...` (naming no user) are valid.
fn validator() -> Handler {
    Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let authorization = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let valid = authorization.starts_with("Bearer opaque-")
                || authorization
                    .strip_prefix("Basic ")
                    .and_then(|b| STANDARD.decode(b).ok())
                    .is_some_and(|pair| pair.ends_with(b":secret"));
            let status = if valid { 200 } else { 401 };
            Response::builder().status(status).body(full("")).unwrap()
        })
    })
}

/// A check that allows the users whose names begin with `agent` (adding `X-Auth-User`,
/// `X-Auth-Shift` and a header without the prefix) and requests naming nobody for the desktop
/// (adding `X-Auth-Guest`), refuses the others with 403, and records what it was asked.
#[derive(Default)]
struct Check {
    asked: Mutex<Vec<http::HeaderMap>>,
    delay_ms: AtomicU64,
    broken: AtomicBool,
}

impl Check {
    fn handler(self: &Arc<Self>) -> Handler {
        let state = self.clone();
        Arc::new(move |req: Request<Incoming>| {
            let state = state.clone();
            Box::pin(async move {
                state.asked.lock().unwrap().push(req.headers().clone());
                let delay = state.delay_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if state.broken.load(Ordering::SeqCst) {
                    return Response::builder().status(500).body(full("")).unwrap();
                }
                let user = req
                    .headers()
                    .get("x-forwarded-user")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("nobody")
                    .to_string();
                let uri = req.headers().get("x-forwarded-uri");
                let desktop = uri.is_some_and(|u| u.as_bytes().starts_with(b"/desktop/"));
                if user == "nobody" && desktop {
                    return Response::builder()
                        .header("X-Auth-Guest", "1")
                        .body(full(""))
                        .unwrap();
                }
                if user.starts_with("agent") {
                    return Response::builder()
                        .header("X-Auth-User", &user)
                        .header("X-Auth-Shift", "day")
                        .header("X-Other", "not for upstream")
                        .body(full(""))
                        .unwrap();
                }
                Response::builder()
                    .status(403)
                    .header("Content-Type", "text/html; charset=utf-8")
                    .body(full(format!("no entry for {user} now\n")))
                    .unwrap()
            })
        })
    }

    fn calls(&self) -> usize {
        self.asked.lock().unwrap().len()
    }

    fn last(&self) -> http::HeaderMap {
        self.asked.lock().unwrap().last().cloned().expect("asked")
    }
}

/// A TLS Finesse site with auth and an external check at `check_url`, `extra` in its block.
struct Site {
    dir: TestDir,
    ca: Ca,
    port: u16,
    admin: u16,
    app: Upstream,
    _validator: Upstream,
    ccedge: Ccedge,
}

impl Site {
    async fn start(name: &str, check_url: &str, extra: &str, app: Option<Upstream>) -> Site {
        Self::launch(name, check_url, extra, "", app).await
    }

    /// As `start`, with `service` in the service's block.
    async fn launch(
        name: &str,
        check_url: &str,
        extra: &str,
        service: &str,
        app: Option<Upstream>,
    ) -> Site {
        let dir = TestDir::new(name);
        let ca = Ca::new(name);
        ca.write(&dir.join("ca.crt"));
        let cert = ca.server(&dir.path, "proxy", &[HOST]);
        let app = match app {
            Some(app) => app,
            None => Upstream::plain("finesse").await,
        };
        let validator = Upstream::custom("validator", validator()).await;
        let (port, admin) = (free_port(), free_port());
        let yaml = format!(
            "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n{service}    tls:\n      cert: {c}\n      key: {k}\n    \
             servers:\n      - public: {HOST}:{port}\n        upstream: {app}\n        role: other\n    \
             auth:\n      validate_url: http://{v}/finesse/api/UserAuth\n      \
             lockout: {{failures: 5, window_seconds: 30, block_seconds: 1800}}\n      \
             external:\n        url: {check_url}\n{extra}",
            server = server_block(&dir.path, Some(admin)),
            c = cert.cert.display(),
            k = cert.key.display(),
            app = app.authority(),
            v = validator.authority(),
        );
        let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
        Site {
            dir,
            ca,
            port,
            admin,
            app,
            _validator: validator,
            ccedge,
        }
    }

    async fn get(&self, path: &str, user: Option<&str>, more: &[(&str, &str)]) -> Answer {
        let authorization = user.map(basic);
        let mut headers: Vec<(&str, &str)> = more.to_vec();
        if let Some(a) = &authorization {
            headers.push(("Authorization", a));
        }
        Client::tls(HOST, self.port, &self.ca.pem, Proto::H2)
            .send("GET", path, &headers, b"")
            .await
            .unwrap()
    }

    /// The access-log line of the request `answer` answered.
    async fn logged(&self, answer: &Answer) -> Value {
        let id = answer.headers["trackingid"].to_str().unwrap();
        self.ccedge.log_entry(id).await
    }

    async fn metrics(&self) -> String {
        curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin)])
            .await
            .unwrap()
            .body
    }
}

async fn with_check(name: &str, extra: &str) -> (Site, Arc<Check>, Upstream) {
    let check = Arc::new(Check::default());
    let server = Upstream::custom("check", check.handler()).await;
    let url = format!("http://{}/check", server.authority());
    (Site::start(name, &url, extra, None).await, check, server)
}

fn header<'a>(map: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    map.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn an_allowed_user_reaches_the_upstream_with_the_headers_the_check_returned() {
    let (site, check, _server) = with_check("ext-allowed", "").await;
    let forged = [
        ("X-Auth-User", "administrator"),
        ("x-auth-role", "supervisor"),
        ("X_Auth_User", "administrator"),
        ("User-Agent", "desk/1.0"),
        ("X-Forwarded-User", "administrator"),
    ];
    let path = "/finesse/./api//User;v=1/agent1?x=1";
    let answer = site.get(path, Some("agent1"), &forged).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let echo = Echo::parse(&answer.body);
    assert_eq!(echo.all("x-auth-user"), ["agent1"]);
    assert_eq!(echo.header("x-auth-shift").as_deref(), Some("day"));
    assert_eq!(echo.header("x-auth-role"), None, "the client's own go");
    assert_eq!(echo.header("x_auth_user"), None, "also spelt with _");
    assert_eq!(echo.header("x-other"), None, "only the prefix goes");

    let asked = check.last();
    assert_eq!(header(&asked, "x-forwarded-method"), Some("GET"));
    // The path every rule matches: normalised, without `;parameters`.
    let uri = header(&asked, "x-forwarded-uri");
    assert_eq!(uri, Some("/finesse/api/User/agent1?x=1"));
    let public = format!("{HOST}:{}", site.port);
    assert_eq!(header(&asked, "x-forwarded-host"), Some(public.as_str()));
    assert_eq!(header(&asked, "x-forwarded-proto"), Some("https"));
    assert_eq!(header(&asked, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&asked, "x-forwarded-user"), Some("agent1"));
    assert_eq!(asked.get_all("x-forwarded-user").iter().count(), 1);
    assert_eq!(header(&asked, "user-agent"), Some("desk/1.0"));
    assert!(header(&asked, "trackingid").is_some_and(|t| t.starts_with("CCEDGE_")));
    assert!(asked.get("authorization").is_none(), "{asked:?}");
    assert!(asked.get("x-auth-user").is_none(), "{asked:?}");

    let line = site.logged(&answer).await;
    assert_eq!(line["external_auth"], "allowed");
    let metrics = site.metrics().await;
    let calls = "ccedge_auth_external_seconds_count{service=\"desktop\"} 1";
    assert!(metrics.contains(calls), "{metrics}");
    let allowed = "ccedge_auth_external_checks_total{outcome=\"allowed\",service=\"desktop\"} 1";
    assert!(metrics.contains(allowed), "{metrics}");
}

#[tokio::test]
async fn a_client_never_gets_its_own_prefixed_headers_through() {
    let (site, check, _server) = with_check("ext-forged", "").await;
    // A public path is not checked, and still loses them.
    let forged = [("X-AUTH-USER", "administrator"), ("x-auth-shift", "night")];
    let answer = site.get("/desktop/app.js", None, &forged).await;
    assert_eq!(answer.status, 200);
    let echo = Echo::parse(&answer.body);
    assert_eq!(echo.header("x-auth-user"), None);
    assert_eq!(echo.header("x-auth-shift"), None);
    assert_eq!(check.calls(), 0, "public paths are not checked by default");
    assert_eq!(site.logged(&answer).await["external_auth"], Value::Null);
    let preflight = [
        ("Origin", "https://finesse1.example.com"),
        ("Access-Control-Request-Method", "PUT"),
        ("X-Auth-User", "administrator"),
    ];
    let answer = Client::tls(HOST, site.port, &site.ca.pem, Proto::H2)
        .send("OPTIONS", "/finesse/api/User/agent1", &preflight, b"")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(Echo::parse(&answer.body).header("x-auth-user"), None);
    assert_eq!(check.calls(), 0, "nor are CORS preflights");
    // HTTP/1.1 (curl), allowed, with the client's headers `extra`.
    let ca = site.dir.join("ca.crt").display().to_string();
    let resolve = format!("{HOST}:{}:127.0.0.1", site.port);
    let authorization = format!("Authorization: {}", basic("agent1"));
    let url = format!("https://{HOST}:{}/finesse/api/User/agent1", site.port);
    let h1 = |extra: &[&str]| {
        let mut args = vec!["--http1.1", "--cacert", &ca, "--resolve", &resolve];
        args.extend(["-H", &authorization]);
        args.extend(extra.iter().flat_map(|h| ["-H", *h]));
        args.push(&url);
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args).await.unwrap()
        }
    };
    // The client's header twice and in two cases: the check's value only.
    let reply = h1(&["x-auth-shift: night", "X-Auth-Shift: evening"]).await;
    assert_eq!(reply.version, "HTTP/1.1");
    assert_eq!(reply.echo().all("x-auth-shift"), ["day"]);
    assert_eq!(check.calls(), 1);
    // Nominated in Connection, the check's own would be removed on the way upstream.
    let echo = h1(&["Connection: keep-alive, X-Auth-User, x_auth_shift"])
        .await
        .echo();
    assert_eq!(echo.all("x-auth-user"), ["agent1"]);
    assert_eq!(echo.all("x-auth-shift"), ["day"]);
}

#[tokio::test]
async fn tokens_that_name_no_user_get_verdicts_of_their_own() {
    let (site, check, _server) = with_check("ext-tokens", "        cache_seconds: 60\n").await;
    let path = "/finesse/api/User/x";
    let client = || Client::tls(HOST, site.port, &site.ca.pem, Proto::H2);
    for token in ["opaque-a", "opaque-b", "opaque-a"] {
        let bearer = format!("Bearer {token}");
        let answer = client()
            .send("GET", path, &[("Authorization", &bearer)], b"")
            .await
            .unwrap();
        assert_eq!(answer.status, 403, "{}", answer.body);
        assert!(check.last().get("x-forwarded-user").is_none());
    }
    assert_eq!(check.calls(), 2, "one verdict per token, kept");
}

#[tokio::test]
async fn a_denied_user_gets_the_checks_answer_and_nothing_reaches_the_upstream() {
    let (site, check, _server) = with_check("ext-denied", "").await;
    for _ in 0..7 {
        let answer = site.get("/finesse/api/User/bob", Some("bob"), &[]).await;
        assert_eq!(answer.status, 403, "not a lockout: {}", answer.body);
        assert_eq!(answer.body, "no entry for bob now\n");
        let headers = &answer.headers;
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["content-security-policy"], "sandbox");
    }
    assert!(site.app.paths().is_empty(), "{:?}", site.app.paths());
    assert_eq!(check.calls(), 7);
    let answer = site.get("/finesse/api/User/bob", Some("bob"), &[]).await;
    let line = site.logged(&answer).await;
    assert_eq!(line["external_auth"], "denied");
    assert_eq!(line["user"], "bob");
    assert_eq!(line["upstream"], Value::Null);
    assert!(!site.ccedge.stderr_text().contains("blocked"));
    let agent = site.get("/finesse/api/User/agent1", Some("agent1"), &[]);
    assert_eq!(agent.await.status, 200);
}

#[tokio::test]
async fn with_deny_a_check_that_fails_is_503_and_nothing_is_forwarded() {
    let (site, check, server) = with_check("ext-deny", "        timeout_ms: 400\n").await;
    check.broken.store(true, Ordering::SeqCst);
    let answer = site
        .get("/finesse/api/User/agent1", Some("agent1"), &[])
        .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(site.logged(&answer).await["external_auth"], "error");

    check.broken.store(false, Ordering::SeqCst);
    check.delay_ms.store(2000, Ordering::SeqCst);
    let started = Instant::now();
    let answer = site
        .get("/finesse/api/User/agent2", Some("agent2"), &[])
        .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(started.elapsed() < Duration::from_millis(1500));

    server.stop().await;
    let answer = site
        .get("/finesse/api/User/agent3", Some("agent3"), &[])
        .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(site.app.paths().is_empty(), "{:?}", site.app.paths());
    site.ccedge.wait_stderr("external check http://").await;
}

#[tokio::test]
async fn with_allow_a_check_that_fails_lets_the_request_through_and_it_is_logged() {
    let (site, check, _server) = with_check("ext-allow", "        on_error: allow\n").await;
    site.ccedge
        .wait_stderr("auth.external.on_error is allow")
        .await;
    check.broken.store(true, Ordering::SeqCst);
    let forged = [("X-Auth-User", "x")];
    let answer = site
        .get("/finesse/api/User/agent1", Some("agent1"), &forged)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(Echo::parse(&answer.body).header("x-auth-user"), None);
    assert_eq!(site.logged(&answer).await["external_auth"], "error");
    site.ccedge
        .wait_stderr("requests it should judge are let through")
        .await;
    // A user name no header can carry cannot be judged, and is not let through for that.
    let unsendable = site
        .get("/finesse/api/User/x", Some("agent\u{1}x"), &[])
        .await;
    assert_eq!(unsendable.status, 403, "{}", unsendable.body);
    let blank = site.get("/finesse/api/User/x", Some(" agent1"), &[]).await;
    assert_eq!(blank.status, 403, "{}", blank.body);
    // A refusal still refuses.
    check.broken.store(false, Ordering::SeqCst);
    let denied = site.get("/finesse/api/User/bob", Some("bob"), &[]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(site.app.paths(), ["/finesse/api/User/agent1"]);
}

#[tokio::test]
async fn cache_seconds_saves_calls_per_user_path_and_method_and_expires() {
    let (site, check, _server) = with_check("ext-cache", "        cache_seconds: 3\n").await;
    for _ in 0..5 {
        let answer = site
            .get("/finesse/api/User/agent1", Some("agent1"), &[])
            .await;
        let echo = Echo::parse(&answer.body);
        assert_eq!(echo.header("x-auth-user").as_deref(), Some("agent1"));
    }
    assert_eq!(check.calls(), 1);
    let answer = site
        .get("/finesse/api/User/agent1", Some("agent1"), &[])
        .await;
    assert_eq!(site.logged(&answer).await["external_auth"], "allowed_kept");
    for _ in 0..3 {
        let denied = site.get("/finesse/api/User/bob", Some("bob"), &[]).await;
        assert_eq!(denied.status, 403);
        assert_eq!(denied.body, "no entry for bob now\n");
    }
    assert_eq!(check.calls(), 2, "a refusal is kept too");
    site.get("/finesse/api/Team/1", Some("agent1"), &[]).await;
    site.get("/finesse/api/User/agent1", Some("agent2"), &[])
        .await;
    let authorization = basic("agent1");
    let head = [("Authorization", authorization.as_str())];
    Client::tls(HOST, site.port, &site.ca.pem, Proto::H2)
        .send("HEAD", "/finesse/api/User/agent1", &head, b"")
        .await
        .unwrap();
    assert_eq!(
        check.calls(),
        5,
        "another path, user or method: asked again"
    );
    assert_eq!(header(&check.last(), "x-forwarded-method"), Some("HEAD"));
    tokio::time::sleep(Duration::from_millis(3200)).await;
    site.get("/finesse/api/User/agent1", Some("agent1"), &[])
        .await;
    assert_eq!(check.calls(), 6, "expired");
}

#[tokio::test]
async fn concurrent_identical_checks_are_one_call() {
    let (site, check, _server) = with_check("ext-merge", "").await;
    // The credential is known first, so that only the external check is left to merge.
    site.get("/finesse/api/User/agent1", Some("agent1"), &[])
        .await;
    check.delay_ms.store(700, Ordering::SeqCst);
    let before = check.calls();
    let mut client = Client::tls(HOST, site.port, &site.ca.pem, Proto::H2);
    let streams = client.streams().await.unwrap();
    let authorization = basic("agent1");
    let headers = [("Authorization", authorization.as_str())];
    let requests = (0..10).map(|_| streams.send("GET", "/finesse/api/Dialogs", &headers));
    let answers = futures_util::future::join_all(requests).await;
    assert!(answers
        .iter()
        .all(|a| a.as_ref().is_ok_and(|a| a.status == 200)));
    assert_eq!(check.calls() - before, 1);
    let metrics = site.metrics().await;
    let merged = "ccedge_auth_external_checks_total{outcome=\"merged\",service=\"desktop\"} 9";
    assert!(metrics.contains(merged), "{metrics}");
}

#[tokio::test]
async fn websocket_upgrades_are_checked_too() {
    let log = Arc::new(EchoLog::default());
    let app = Upstream::custom("notifications", ws::echo_handler(log.clone())).await;
    let check = Arc::new(Check::default());
    let server = Upstream::custom("check", check.handler()).await;
    let url = format!("http://{}/check", server.authority());
    let site = Site::start("ext-ws", &url, "", Some(app)).await;
    let proto = |user: &str| format!("xmpp, {}", URL_SAFE_NO_PAD.encode(format!("{user}:secret")));
    let bob = [
        ("Sec-WebSocket-Protocol", proto("bob")),
        ("X-Auth-User", "agent1".to_string()),
    ];
    let bob: Vec<(&'static str, &str)> = bob.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let refused = ws::connect_with(HOST, site.port, "/ws/bob", &site.ca.pem, &bob).await;
    assert_eq!(refused.err(), Some(403));
    assert!(log.upgrades.lock().unwrap().is_empty());
    assert_eq!(header(&check.last(), "x-forwarded-uri"), Some("/ws/bob"));

    let agent = [
        ("Sec-WebSocket-Protocol", proto("agent1")),
        ("X-Auth-Shift", "night".to_string()),
    ];
    let agent: Vec<(&'static str, &str)> = agent.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut client = ws::connect_with(HOST, site.port, "/ws/agent1", &site.ca.pem, &agent)
        .await
        .expect("an allowed upgrade passes");
    ws::echoes(&mut client, "presence").await;
    let seen = log.upgrades.lock().unwrap()[0].clone();
    assert_eq!(header(&seen, "x-auth-user"), Some("agent1"));
    let shifts: Vec<&str> = seen
        .get_all("x-auth-shift")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(shifts, ["day"], "the check's value, never the client's");
    let asked = check.last();
    assert!(
        asked.get("sec-websocket-protocol").is_none(),
        "the credential is not sent unless listed"
    );
}

#[tokio::test]
async fn the_check_judges_the_client_the_balancer_names_and_keeps_verdicts_per_client() {
    let check = Arc::new(Check::default());
    let server = Upstream::custom("check", check.handler()).await;
    let url = format!("http://{}/check", server.authority());
    let external = "        cache_seconds: 60\n";
    let service = "    trusted_proxies: [127.0.0.1/32]\n";
    let site = Site::launch("ext-balancer", &url, external, service, None).await;
    for client in ["203.0.113.7", "203.0.113.7", "198.51.100.9"] {
        let via = [("X-Forwarded-For", client)];
        let answer = site
            .get("/finesse/api/User/agent1", Some("agent1"), &via)
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(header(&check.last(), "x-forwarded-for"), Some(client));
    }
    assert_eq!(check.calls(), 2, "one verdict per client address");
}

#[tokio::test]
async fn public_paths_are_checked_when_asked_and_what_the_check_adds_is_not_cached_for_all() {
    let check = Arc::new(Check::default());
    let server = Upstream::custom("check", check.handler()).await;
    let url = format!("http://{}/check", server.authority());
    let external = "        public_paths: true\n";
    let cache = "    cache:\n      max_size_mb: 16\n";
    let site = Site::launch("ext-public", &url, external, cache, None).await;
    for _ in 0..2 {
        let answer = site.get("/desktop/app.js", None, &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let echo = Echo::parse(&answer.body);
        assert_eq!(echo.header("x-auth-guest").as_deref(), Some("1"));
        let asked = check.last();
        assert!(asked.get("x-forwarded-user").is_none());
        assert_eq!(header(&asked, "x-forwarded-uri"), Some("/desktop/app.js"));
    }
    assert_eq!(
        site.app.paths().len(),
        2,
        "an answer to what the check added is not stored for everyone"
    );
    let answer = site.get("/finesse/api/SystemInfo", None, &[]).await;
    assert_eq!(
        answer.status, 403,
        "the check refuses this one naming nobody"
    );
}

#[tokio::test]
async fn the_doctor_asks_the_check_for_a_verdict_in_time() {
    let (site, check, server) = with_check("ext-doctor", "").await;
    let config = site.dir.join("ccedge.yaml");
    let (code, said) = command(&["doctor"], &config).await;
    assert_eq!(code, Some(0), "{said}");
    let line = said
        .lines()
        .find(|l| l.contains("auth.external.url") && l.contains("HTTP:"))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(line.starts_with("OK"), "{said}");
    assert!(line.contains("naming no user: 403, a verdict"), "{said}");
    let asked = check.last();
    assert_eq!(header(&asked, "x-forwarded-method"), Some("GET"));
    assert!(asked.get("x-forwarded-user").is_none());

    check.broken.store(true, Ordering::SeqCst);
    let (code, said) = command(&["doctor"], &config).await;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("500, not a verdict"), "{said}");
    check.broken.store(false, Ordering::SeqCst);
    check.delay_ms.store(1500, Ordering::SeqCst);
    let (code, said) = command(&["doctor"], &config).await;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("longer than timeout_ms (1000 ms)"), "{said}");
    server.stop().await;
    let (code, _) = command(&["doctor"], &config).await;
    assert_eq!(code, Some(1));
}

/// The example service, on a rules file.
struct Example {
    child: std::process::Child,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_example_service_lets_listed_users_in_during_their_hours() {
    let dir = TestDir::new("ext-example-rules");
    let rules = dir.write("rules", "agent1 00:00-24:00\nagent2 00:00-00:00\n");
    let port = free_port();
    let script = format!(
        "{}/examples/external-auth/check.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let _example = Example {
        child: std::process::Command::new("python3")
            .arg(&script)
            .arg(&rules)
            .arg(format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs the example"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the example never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}/check");
    let site = Site::start("ext-example", &url, "", None).await;
    let answer = site
        .get("/finesse/api/User/agent1", Some("agent1"), &[])
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let echo = Echo::parse(&answer.body);
    assert_eq!(echo.header("x-auth-user").as_deref(), Some("agent1"));
    assert_eq!(echo.header("x-auth-hours").as_deref(), Some("00:00-24:00"));
    for user in ["agent2", "agent3"] {
        let answer = site.get("/finesse/api/User/x", Some(user), &[]).await;
        assert_eq!(answer.status, 403, "{user}");
        assert!(
            answer
                .body
                .starts_with(&format!("{user} may not come in at")),
            "{}",
            answer.body
        );
    }
    assert_eq!(site.app.paths().len(), 1);
}
