//! Authentication at the proxy (Finesse sites): credentials checked by a real validator that
//! counts its calls, SSO tokens signed with an RSA key made here, the lockout, public paths and
//! the path tricks that must not reach them, WebSocket credentials, a validator that is down.

use crate::harness::http::{Answer, Client, Proto, Streams};
use crate::harness::upstream::{full, Handler};
use crate::harness::ws::{self, EchoLog};
use crate::harness::{curl, free_port, server_block, Ca, Ccedge, TestDir, Upstream};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hyper::body::Incoming;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::rsa::Rsa;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

const HOST: &str = "finesse1.example.com";
const ISSUER: &str = "https://ids.example.com/ids";

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// A validator like Finesse's UserAuth: `agent1:secret` to `agent100:secret` and the token
/// `opaque-good` are valid.
#[derive(Default)]
struct Validator {
    calls: AtomicUsize,
    delay_ms: AtomicU64,
    broken: AtomicBool,
    /// A user whose password changed: their `secret` no longer passes.
    changed: Mutex<Option<String>>,
}

impl Validator {
    fn handler(self: &Arc<Self>) -> Handler {
        let state = self.clone();
        Arc::new(move |req: Request<Incoming>| {
            let state = state.clone();
            Box::pin(async move {
                state.calls.fetch_add(1, Ordering::SeqCst);
                let delay = state.delay_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let given = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.as_bytes().to_vec());
                // Every agent's password is `secret`, unless it changed.
                let changed = state.changed.lock().unwrap().clone();
                let valid = given.as_deref().is_some_and(|g| {
                    (1..=100)
                        .map(|n| format!("agent{n}"))
                        .filter(|agent| changed.as_ref() != Some(agent))
                        .any(|agent| g == basic(&agent, "secret").as_bytes())
                }) || given.as_deref() == Some(b"Bearer opaque-good".as_slice());
                // As Tomcat does with a header over its 8 KiB.
                let too_large = given.as_ref().is_some_and(|g| g.len() > 8192);
                let status = match (state.broken.load(Ordering::SeqCst), valid) {
                    _ if too_large => 400,
                    (true, _) => 500,
                    (false, true) => 200,
                    (false, false) => 401,
                };
                Response::builder().status(status).body(full("")).unwrap()
            })
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Serves the signing keys (whatever `document` holds now) and counts the fetches.
#[derive(Default)]
struct KeyServer {
    document: Mutex<String>,
    fetches: AtomicUsize,
}

impl KeyServer {
    fn handler(self: &Arc<Self>) -> Handler {
        let state = self.clone();
        Arc::new(move |_req: Request<Incoming>| {
            let state = state.clone();
            Box::pin(async move {
                state.fetches.fetch_add(1, Ordering::SeqCst);
                let body = state.document.lock().unwrap().clone();
                Response::builder()
                    .header("Content-Type", "application/json")
                    .body(full(body))
                    .unwrap()
            })
        })
    }
}

/// An RSA signing key with its id.
struct SigningKey {
    kid: String,
    private_pem: Vec<u8>,
    jwk: Value,
}

impl SigningKey {
    fn new(kid: &str) -> SigningKey {
        let rsa = Rsa::generate(2048).unwrap();
        SigningKey {
            kid: kid.to_string(),
            private_pem: rsa.private_key_to_pem().unwrap(),
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
                "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
            }),
        }
    }

    /// A token with `claims`, signed with this key and naming `kid`.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_string());
        let key = EncodingKey::from_rsa_pem(&self.private_pem).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a good token for `sub`, issued `age` seconds ago.
fn claims(sub: &str, age: i64) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": "finesse", "iat": now() - age, "exp": now() + 3600})
}

/// A TLS Finesse site (`finesse1.example.com` on one port) with `auth` in front of an echo
/// upstream; `jwt` adds an SSO block whose keys come from `keys`.
struct AuthSite {
    dir: TestDir,
    ca: Ca,
    port: u16,
    admin: u16,
    app: Upstream,
    validator: Arc<Validator>,
    validator_upstream: Upstream,
    ccedge: Ccedge,
}

impl AuthSite {
    async fn start(name: &str, jwt: Option<&Upstream>) -> AuthSite {
        Self::start_with(name, jwt, None, "").await
    }

    /// As `start`, with `app` as the upstream and `extra` in the service block.
    async fn start_with(
        name: &str,
        jwt: Option<&Upstream>,
        app: Option<Upstream>,
        extra: &str,
    ) -> AuthSite {
        Self::launch(name, jwt, app, extra, &[], &[]).await
    }

    /// As `start_with`, with validators asked `before` and `after` the site's own (their
    /// `host:port`s), as side A, side B... of `validate_url`.
    async fn launch(
        name: &str,
        jwt: Option<&Upstream>,
        app: Option<Upstream>,
        extra: &str,
        before: &[String],
        after: &[String],
    ) -> AuthSite {
        let dir = TestDir::new(name);
        let ca = Ca::new(name);
        ca.write(&dir.join("ca.crt"));
        let cert = ca.server(&dir.path, "proxy", &[HOST]);
        let app = match app {
            Some(app) => app,
            None => Upstream::plain("finesse").await,
        };
        let validator = Arc::new(Validator::default());
        let validator_upstream = Upstream::custom("validator", validator.handler()).await;
        let port = free_port();
        let admin = free_port();
        let jwt_block = jwt.map_or(String::new(), |keys| {
            format!(
                "      jwt:\n        keys_url: http://{}/ids/v1/keys\n        poll_seconds: 300\n        \
                 issuer: {ISSUER}\n        audience: finesse\n        max_token_age_seconds: 7200\n",
                keys.authority()
            )
        });
        let url = |authority: &str| format!("http://{authority}/finesse/api/UserAuth");
        let own = validator_upstream.authority();
        let urls: Vec<String> = before
            .iter()
            .chain(std::iter::once(&own))
            .chain(after)
            .map(|a| url(a))
            .collect();
        let validate_url = match urls.as_slice() {
            [one] => one.clone(),
            more => format!("[{}]", more.join(", ")),
        };
        let yaml = format!(
            "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n{extra}    tls:\n      cert: {c}\n      key: {k}\n    \
             servers:\n      - public: {HOST}:{port}\n        upstream: {app}\n        role: other\n    \
             auth:\n      validate_url: {validate_url}\n      cache_seconds: 900\n      \
             public_paths: [/desktop/, /finesse/api/SystemInfo]\n      lockout: {{failures: 5, window_seconds: 30, block_seconds: 1800}}\n{jwt_block}",
            server = server_block(&dir.path, Some(admin)),
            c = cert.cert.display(),
            k = cert.key.display(),
            app = app.authority(),
        );
        let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
        AuthSite {
            dir,
            ca,
            port,
            admin,
            app,
            validator,
            validator_upstream,
            ccedge,
        }
    }

    fn client(&self) -> Client {
        Client::tls(HOST, self.port, &self.ca.pem, Proto::H2)
    }

    async fn get(&self, path: &str, authorization: Option<&str>) -> Answer {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        self.client()
            .send("GET", path, &headers, b"")
            .await
            .unwrap()
    }

    /// curl with the path sent exactly as written (no dot-segment cleaning by curl).
    async fn raw(&self, path: &str, authorization: Option<&str>) -> crate::harness::Reply {
        let mut args = vec![
            "--path-as-is".to_string(),
            "--cacert".into(),
            self.dir.join("ca.crt").display().to_string(),
            "--resolve".into(),
            format!("{HOST}:{}:127.0.0.1", self.port),
        ];
        if let Some(a) = authorization {
            args.push("-H".into());
            args.push(format!("Authorization: {a}"));
        }
        args.push(format!("https://{HOST}:{}{path}", self.port));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args).await.unwrap()
    }

    /// A reload by hand, as the supervisor does it: a new process (returned) takes the
    /// sockets over; the old one (`self.ccedge`) drains.
    async fn reload(&self) -> Ccedge {
        self.hand_over(true).await
    }

    /// As `reload`, returning once the old process handed over, or also once the new one
    /// serves (`wait_for_new`).
    async fn hand_over(&self, wait_for_new: bool) -> Ccedge {
        let yaml = std::fs::read_to_string(self.dir.join("ccedge.yaml")).unwrap();
        let socket = self.dir.join("upgrade.sock");
        let _ = std::fs::remove_file(&socket);
        let second = Ccedge::launch(
            &self.dir,
            "second",
            &yaml,
            &["-u"],
            &[self.port, self.admin],
        )
        .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the new process never waited for the sockets"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.ccedge.signal("QUIT");
        // The old process hands its state over as it hands its sockets over.
        let handed = self
            .dir
            .join(&format!("ccedge.pid.state-{}.json", self.ccedge.pid()));
        while !handed.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the old process never handed its state over"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !wait_for_new {
            return second;
        }
        while crate::harness::proxy::server_pid(self.admin).await != u64::from(second.pid()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the new process does not serve"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        second
    }

    async fn metrics(&self) -> String {
        let reply = curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin)])
            .await
            .unwrap();
        reply.body
    }

    async fn status(&self) -> Value {
        let reply = curl(&[&format!("http://127.0.0.1:{}/status", self.admin)])
            .await
            .unwrap();
        serde_json::from_str(&reply.body).unwrap()
    }
}

/// The value of a metric line `name{labels} value`, 0 when absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn no_credentials_get_401_and_nothing_goes_upstream() {
    let site = AuthSite::start("auth-none", None).await;
    let answer = site.get("/finesse/api/User/agent1", None).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    let challenge = answer.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Basic realm=\"desktop\""),
        "{challenge}"
    );
    assert!(answer.headers.contains_key("trackingid"));
    // A page's script gets a challenge browsers do not answer with their own dialog.
    for marker in [
        ("Sec-Fetch-Mode", "cors"),
        ("X-Requested-With", "XMLHttpRequest"),
    ] {
        let scripted = site
            .client()
            .send("GET", "/finesse/api/User/agent1", &[marker], b"")
            .await
            .unwrap();
        assert_eq!(scripted.status, 401);
        let challenge = scripted.headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("xBasic realm=\"desktop\""),
            "{challenge}"
        );
    }
    let garbled = site.get("/finesse/api/User", Some("Basic !!!")).await;
    assert_eq!(garbled.status, 401);
    let other_scheme = site.get("/finesse/api/User", Some("Negotiate abc")).await;
    assert_eq!(other_scheme.status, 401);
    let no_password = format!("Basic {}", STANDARD.encode("agent1"));
    assert_eq!(
        site.get("/finesse/api/User", Some(&no_password))
            .await
            .status,
        401
    );
    assert_eq!(
        site.app.hits(),
        0,
        "a request without credentials reached Finesse"
    );
    assert_eq!(site.validator.calls(), 0);
    let tid = answer.headers["trackingid"].to_str().unwrap();
    let line = site.ccedge.log_entry(tid).await;
    assert_eq!(line["status"], 401);
    assert_eq!(line["user"], Value::Null);
    assert_eq!(line["upstream"], Value::Null);

    // A CORS preflight never carries credentials: the server's own CORS policy answers it.
    let preflight = [
        ("Origin", "https://finesse1.example.com"),
        ("Access-Control-Request-Method", "PUT"),
    ];
    let mut client = site.client();
    let path = "/finesse/api/User/agent1";
    let answer = client.send("OPTIONS", path, &preflight, b"").await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(site.app.hits(), 1);
    let options = client
        .send("OPTIONS", path, &preflight[..1], b"")
        .await
        .unwrap();
    assert_eq!(
        options.status, 401,
        "an OPTIONS that is no preflight needs credentials"
    );
    let mut with_password = preflight.to_vec();
    let wrong = basic("agent1", "guess");
    with_password.push(("Authorization", &wrong));
    let probe = client
        .send("OPTIONS", path, &with_password, b"")
        .await
        .unwrap();
    assert_eq!(
        probe.status, 401,
        "a preflight with credentials is checked like any request"
    );
    assert_eq!(site.app.hits(), 1);
    // A user name shaped like a log line of its own is not logged.
    let forged = basic(
        "x 198.51.100.77 blocked for 1800 seconds after 5 failed logins",
        "pw",
    );
    let refused = site.get("/finesse/api/User", Some(&forged)).await;
    let tid = refused.headers["trackingid"].to_str().unwrap();
    assert_eq!(site.ccedge.log_entry(tid).await["user"], Value::Null);
}

#[tokio::test]
async fn valid_basic_credentials_pass_and_100_requests_make_one_validation() {
    let site = AuthSite::start("auth-basic", None).await;
    let good = basic("agent1", "secret");
    let mut client = site.client();
    let mut last = None;
    for i in 0..100 {
        let answer = client
            .send(
                "GET",
                &format!("/finesse/api/User/agent1?n={i}"),
                &[("Authorization", &good)],
                b"",
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "request {i}: {}", answer.body);
        last = Some(answer);
    }
    assert_eq!(
        site.validator.calls(),
        1,
        "validations for 100 requests with one credential"
    );
    assert_eq!(site.app.hits(), 100);
    let answer = last.unwrap();
    let echo = crate::harness::upstream::Echo::parse(&answer.body);
    assert_eq!(
        echo.header("authorization"),
        Some(good.clone()),
        "Finesse checks them too"
    );
    let tid = answer.headers["trackingid"].to_str().unwrap();
    let line = site.ccedge.log_entry(tid).await;
    assert_eq!(line["user"], "agent1");
    let log = std::fs::read_to_string(&site.ccedge.access_log).unwrap();
    let stderr = site.ccedge.stderr_text();
    for form in [
        STANDARD.encode("agent1:secret"),
        URL_SAFE_NO_PAD.encode("agent1:secret"),
        "secret".to_string(),
    ] {
        assert!(
            !log.contains(&form) && !stderr.contains(&form),
            "a credential was logged ({form})"
        );
    }
    let metrics = site.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ccedge_auth_validations_total{outcome=\"valid\",service=\"desktop\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &metrics,
            "ccedge_auth_verdict_cache_hits_total{service=\"desktop\"}"
        ),
        99
    );

    // An opaque Bearer token goes to the validator too.
    let bearer = site
        .get("/finesse/api/User/agent1", Some("Bearer opaque-good"))
        .await;
    assert_eq!(bearer.status, 200);
    assert_eq!(site.validator.calls(), 2);
}

#[tokio::test]
async fn twenty_concurrent_first_requests_make_one_validation() {
    // Twenty connections from one address: more than the default limit allows.
    let unlimited = "    limits:\n      max_connections_per_ip: 0\n";
    let site = AuthSite::start_with("auth-concurrent", None, None, unlimited).await;
    site.validator.delay_ms.store(300, Ordering::SeqCst);
    let good = basic("agent1", "secret");
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let mut client = site.client();
            let good = good.clone();
            tokio::spawn(async move {
                client
                    .send(
                        "GET",
                        "/finesse/api/User/agent1",
                        &[("Authorization", &good)],
                        b"",
                    )
                    .await
                    .unwrap()
                    .status
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(site.validator.calls(), 1);
}

#[tokio::test]
async fn five_failures_block_that_user_at_that_address_and_nobody_else() {
    let site = AuthSite::start("auth-lockout", None).await;
    // alice (agent1) has a stale saved password; bob (agent2) sits next to her.
    let wrong = basic("agent1", "stale");
    for i in 0..5 {
        let answer = site.get("/finesse/api/User/agent1", Some(&wrong)).await;
        assert_eq!(answer.status, 401, "attempt {i}: {}", answer.body);
        assert!(answer.headers.contains_key("www-authenticate"));
    }
    let validations = site.validator.calls();
    assert!(validations >= 1);
    let blocked = site
        .get("/finesse/api/User/agent1", Some(&basic("agent1", "secret")))
        .await;
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    assert!(
        blocked.body.contains("for agent1 from 127.0.0.1"),
        "{}",
        blocked.body
    );
    let retry: u64 = blocked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1790..=1800).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        site.validator.calls(),
        validations,
        "nothing asked of the validator"
    );
    let bob = site
        .get("/finesse/api/User/agent2", Some(&basic("agent2", "secret")))
        .await;
    assert_eq!(bob.status, 200, "bob at the same address: {}", bob.body);
    let stderr = site
        .ccedge
        .wait_stderr("user agent1 blocked at 127.0.0.1 for 1800 seconds after 5 failed logins (service desktop)")
        .await;
    assert!(
        !stderr.contains("] 127.0.0.1 blocked for"),
        "a fail2ban line for one agent's typos: {stderr}"
    );
    let status = site.status().await;
    let lockouts = &status["services"][0]["auth"]["lockouts"];
    assert_eq!(lockouts[0]["client_ip"], "127.0.0.1");
    assert_eq!(lockouts[0]["user"], "agent1");
    let metrics = site.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ccedge_auth_user_lockouts_total{service=\"desktop\"}"
        ),
        1
    );
    assert_eq!(
        metric(&metrics, "ccedge_auth_lockouts_total{service=\"desktop\"}"),
        0
    );
    let lift = format!(
        "http://127.0.0.1:{}/auth/lockouts/127.0.0.1?user=agent1",
        site.admin
    );
    assert_eq!(curl(&["-X", "DELETE", &lift]).await.unwrap().status, 200);
    let right = site
        .get("/finesse/api/User/agent1", Some(&basic("agent1", "secret")))
        .await;
    assert_eq!(right.status, 200);
}

#[tokio::test]
async fn a_reload_keeps_blocks_failure_counts_and_verdicts() {
    let mut site = AuthSite::start("auth-reload-state", None).await;
    let agent = |n: u32| format!("/finesse/api/User/agent{n}");
    assert_eq!(
        site.get(&agent(1), Some(&basic("agent1", "secret")))
            .await
            .status,
        200
    );
    // An attacker: agent2 blocked, three guesses spent on agent3.
    for _ in 0..5 {
        let answer = site.get(&agent(2), Some(&basic("agent2", "guess"))).await;
        assert_eq!(answer.status, 401);
    }
    for i in 0..3 {
        let guess = basic("agent3", &format!("guess{i}"));
        assert_eq!(site.get(&agent(3), Some(&guess)).await.status, 401);
    }
    let validations = site.validator.calls();

    // Asked at once: the new process waits for the old one's state before it judges.
    let second = site.reload().await;
    let again = site.get(&agent(1), Some(&basic("agent1", "secret"))).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        site.validator.calls(),
        validations,
        "the credential judged before the reload is not checked again"
    );
    let blocked = site.get(&agent(2), Some(&basic("agent2", "secret"))).await;
    assert_eq!(
        blocked.status, 429,
        "agent2 still blocked: {}",
        blocked.body
    );
    for i in 3..5 {
        let guess = basic("agent3", &format!("guess{i}"));
        assert_eq!(site.get(&agent(3), Some(&guess)).await.status, 401);
    }
    let blocked = site.get(&agent(3), Some(&basic("agent3", "secret"))).await;
    assert_eq!(
        blocked.status, 429,
        "3 guesses before the reload and 2 after block agent3: {}",
        blocked.body
    );
    second.wait_stderr("state of process").await;
    assert_eq!(site.ccedge.wait_exit(10).await, Some(0));
    // The key is kept beside the pid file, for the process only.
    let key = std::fs::metadata(site.dir.join("ccedge.pid.state-key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
}

#[tokio::test]
async fn after_the_hand_over_the_old_process_judges_no_new_credential() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut site = AuthSite::start("auth-reload-judging", None).await;
    assert_eq!(
        site.get("/finesse/api/User/agent1", Some(&basic("agent1", "secret")))
            .await
            .status,
        200
    );
    // Two requests on connections of the old process, their headers ended after the reload:
    // one with a known credential, one with a new one (a guess, say).
    let mut open = Vec::new();
    for user in ["agent1", "agent2"] {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", site.port))
            .await
            .unwrap();
        let mut connector =
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
        connector.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let ssl = connector
            .build()
            .configure()
            .unwrap()
            .into_ssl(HOST)
            .unwrap();
        let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
        std::pin::Pin::new(&mut tls).connect().await.unwrap();
        let head = format!(
            "GET /finesse/api/User/{user} HTTP/1.1\r\nHost: {HOST}:{}\r\nAuthorization: {}\r\n",
            site.port,
            basic(user, "secret")
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        open.push(tls);
    }
    let validations = site.validator.calls();
    // Within the old process's grace period (1 s).
    let _second = site.hand_over(false).await;
    let mut answers = Vec::new();
    for mut tls in open {
        tls.write_all(b"\r\n").await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
        answers.push(String::from_utf8_lossy(&got).to_string());
    }
    assert!(
        answers[0].starts_with("HTTP/1.1 200"),
        "known: {}",
        answers[0]
    );
    assert!(
        answers[1].starts_with("HTTP/1.1 503"),
        "new: {}",
        answers[1]
    );
    assert!(
        answers[1].contains("credentials are checked there"),
        "{}",
        answers[1]
    );
    assert!(answers[1].to_ascii_lowercase().contains("retry-after: 1"));
    assert_eq!(
        site.validator.calls(),
        validations,
        "nothing judged in the old process"
    );
    // Asked again, on a new connection: the new process judges it.
    let again = site
        .get("/finesse/api/User/agent2", Some(&basic("agent2", "secret")))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(site.ccedge.wait_exit(10).await, Some(0));
}

/// Agents `agents` (by number) each sign in with `password` at once, as streams of one HTTP/2
/// connection: a GET of their own `/finesse/api/User/agentN`; the statuses, in order.
fn at_once(
    streams: &Streams,
    agents: std::ops::RangeInclusive<u32>,
    password: &'static str,
) -> Vec<JoinHandle<u16>> {
    agents
        .map(|n| {
            let streams = streams.clone();
            tokio::spawn(async move {
                let credential = basic(&format!("agent{n}"), password);
                let path = format!("/finesse/api/User/agent{n}");
                streams
                    .send("GET", &path, &[("Authorization", &credential)])
                    .await
                    .unwrap()
                    .status
            })
        })
        .collect()
}

#[tokio::test]
async fn a_parallel_spray_is_judged_no_further_than_the_address_allows() {
    let site = AuthSite::start("auth-spray-parallel", None).await;
    site.validator.delay_ms.store(300, Ordering::SeqCst);
    let mut client = site.client();
    let streams = client.streams().await.unwrap();
    let sprayed = at_once(&streams, 1..=60, "Winter2026!");
    let mut statuses = Vec::new();
    for guess in sprayed {
        statuses.push(guess.await.unwrap());
    }
    let judged = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!((judged, statuses.len() - judged), (20, 40), "{statuses:?}");
    assert_eq!(
        site.validator.calls(),
        20,
        "address_failures guesses judged, no more"
    );
}

#[tokio::test]
async fn a_spray_across_user_names_blocks_the_address_until_the_admin_lifts_it() {
    let site = AuthSite::start("auth-spray", None).await;
    // 30 names tried once each: the 20th failure from the address blocks it.
    let mut statuses = Vec::new();
    for n in 1..=30 {
        let guess = basic(&format!("agent{n}"), "Winter2026!");
        let path = format!("/finesse/api/User/agent{n}");
        statuses.push(site.get(&path, Some(&guess)).await.status);
    }
    assert_eq!(statuses[..20], [401; 20], "{statuses:?}");
    assert_eq!(statuses[20..], [429; 10], "{statuses:?}");
    assert_eq!(site.validator.calls(), 20);
    let blocked = site
        .get(
            "/finesse/api/User/agent40",
            Some(&basic("agent40", "secret")),
        )
        .await;
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    assert!(blocked.body.contains("from 127.0.0.1"), "{}", blocked.body);
    let stderr = site
        .ccedge
        .wait_stderr("127.0.0.1 blocked for 1800 seconds after 20 failed logins")
        .await;
    assert_eq!(
        stderr.matches("blocked for 1800 seconds").count(),
        1,
        "{stderr}"
    );
    // The line fail2ban's anchored filter matches: `[time WARN target] <ip> blocked ...`.
    let line = stderr.lines().find(|l| l.contains("blocked for")).unwrap();
    assert!(
        line.starts_with('[')
            && line.contains(" WARN ")
            && line.ends_with(
                "] 127.0.0.1 blocked for 1800 seconds after 20 failed logins (service desktop)"
            ),
        "{line}"
    );
    let tid = blocked.headers["trackingid"].to_str().unwrap();
    assert_eq!(site.ccedge.log_entry(tid).await["status"], 429);
    // Public paths stay public.
    assert_eq!(site.get("/desktop/", None).await.status, 200);

    let status = site.status().await;
    let lockouts = &status["services"][0]["auth"]["lockouts"];
    assert_eq!(lockouts[0]["client_ip"], "127.0.0.1");
    assert!(lockouts[0]["user"].is_null(), "{lockouts}");
    let metrics = site.metrics().await;
    assert_eq!(
        metric(&metrics, "ccedge_auth_lockouts_total{service=\"desktop\"}"),
        1
    );
    assert_eq!(
        metric(
            &metrics,
            "ccedge_auth_blocked_requests_total{service=\"desktop\"}"
        ),
        11
    );

    let lift = |method: &'static str| {
        let url = format!("http://127.0.0.1:{}/auth/lockouts/127.0.0.1", site.admin);
        async move { curl(&["-X", method, &url]).await.unwrap() }
    };
    assert_eq!(lift("GET").await.status, 405);
    let lifted = lift("DELETE").await;
    assert_eq!(lifted.status, 200, "{}", lifted.body);
    assert_eq!(lift("DELETE").await.status, 404);
    let right = site
        .get("/finesse/api/User/agent1", Some(&basic("agent1", "secret")))
        .await;
    assert_eq!(right.status, 200);
}

#[tokio::test]
async fn parallel_guesses_cannot_outrun_the_lockout() {
    let site = AuthSite::start("auth-parallel", None).await;
    // The agent is signed in from the same address: the proxy knows the right password.
    let right = basic("agent1", "secret");
    assert_eq!(
        site.get("/finesse/api/User/agent1", Some(&right))
            .await
            .status,
        200
    );
    let (before, served) = (site.validator.calls(), site.app.hits());
    site.validator.delay_ms.store(500, Ordering::SeqCst);
    let mut client = site.client();
    let streams = client.streams().await.unwrap();
    let path = "/finesse/api/User/agent1";
    let guesses: Vec<_> = (0..40)
        .map(|i| {
            let streams = streams.clone();
            let guess = basic("agent1", &format!("guess{i}"));
            tokio::spawn(async move {
                streams
                    .send("GET", path, &[("Authorization", &guess)])
                    .await
                    .unwrap()
            })
        })
        .collect();
    // Once the validator is busy with the first guesses, the right password arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while site.validator.calls() < before + 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the validator was never asked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let right = streams
        .send("GET", path, &[("Authorization", &right)])
        .await
        .unwrap();
    assert_eq!(
        right.status, 429,
        "the right password after 40 guesses: {}",
        right.body
    );
    let mut statuses = Vec::new();
    for guess in guesses {
        statuses.push(guess.await.unwrap().status);
    }
    let judged = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((judged, refused), (5, 35), "{statuses:?}");
    assert_eq!(
        site.validator.calls(),
        before + 5,
        "no more guesses judged than failures allowed"
    );
    assert_eq!(site.app.hits(), served, "no guess reached Finesse");
    let stderr = site
        .ccedge
        .wait_stderr("user agent1 blocked at 127.0.0.1 for 1800 seconds after 5 failed logins")
        .await;
    assert_eq!(stderr.matches("blocked at").count(), 1, "{stderr}");
}

#[tokio::test]
async fn parallel_sign_ins_with_good_credentials_all_pass() {
    let site = AuthSite::start("auth-parallel-good", None).await;
    site.validator.delay_ms.store(100, Ordering::SeqCst);
    let mut client = site.client();
    let streams = client.streams().await.unwrap();
    let good = basic("agent1", "secret");
    let requests: Vec<_> = (0..30)
        .map(|i| {
            let (streams, good) = (streams.clone(), good.clone());
            tokio::spawn(async move {
                let path = format!("/finesse/api/User/agent1/{i}");
                streams
                    .send("GET", &path, &[("Authorization", &good)])
                    .await
                    .unwrap()
                    .status
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(site.validator.calls(), 1, "one credential, one check");

    // Forty agents behind one address signing in at once: checked a few at a time (as many as
    // the failures the address has left), all let in.
    let agents = at_once(&streams, 2..=41, "secret");
    for agent in agents {
        assert_eq!(agent.await.unwrap(), 200);
    }
    assert_eq!(site.validator.calls(), 41);
}

#[tokio::test]
async fn lifting_a_lockout_during_a_burst_of_sign_ins_strands_nobody() {
    let site = AuthSite::start("auth-lift-burst", None).await;
    site.validator.delay_ms.store(1000, Ordering::SeqCst);
    let mut client = site.client();
    let streams = client.streams().await.unwrap();
    // Six agents at once: five are checked, the sixth waits for a place.
    let agents = at_once(&streams, 1..=6, "secret");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while site.validator.calls() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the validator was never asked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lift = format!("http://127.0.0.1:{}/auth/lockouts/127.0.0.1", site.admin);
    assert_eq!(curl(&["-X", "DELETE", &lift]).await.unwrap().status, 404);
    for agent in agents {
        assert_eq!(agent.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn behind_a_trusted_balancer_the_lockout_blocks_the_client_it_names() {
    let site =
        AuthSite::start_with("auth-lb", None, None, "    trusted_proxies: [127.0.0.1]\n").await;
    let wrong = basic("agent1", "guess");
    let from = |client: &'static str, auth: String| {
        let mut http = site.client();
        async move {
            let headers = [
                ("Authorization", auth.as_str()),
                ("X-Forwarded-For", client),
            ];
            http.send("GET", "/finesse/api/User", &headers, b"")
                .await
                .unwrap()
                .status
        }
    };
    for _ in 0..5 {
        assert_eq!(from("203.0.113.5", wrong.clone()).await, 401);
    }
    assert_eq!(from("203.0.113.5", basic("agent1", "secret")).await, 429);
    assert_eq!(from("203.0.113.6", basic("agent1", "secret")).await, 200);
    site.ccedge
        .wait_stderr("user agent1 blocked at 203.0.113.5 for 1800 seconds after 5 failed logins")
        .await;
}

/// The status of a GET of `/finesse/api/User` with `auth`, from the client a trusted balancer
/// names in `headers`.
async fn via_balancer(site: &AuthSite, auth: &str, headers: &[(&str, &str)]) -> u16 {
    let mut all = vec![("Authorization", auth)];
    all.extend_from_slice(headers);
    let answer = site
        .client()
        .send("GET", "/finesse/api/User", &all, b"")
        .await
        .unwrap();
    answer.status
}

#[tokio::test]
async fn ipv6_clients_are_locked_out_by_their_network() {
    let site =
        AuthSite::start_with("auth-v6", None, None, "    trusted_proxies: [127.0.0.1]\n").await;
    let wrong = basic("agent1", "guess");
    // Each guess from another address of the same /64, as anyone holding one can send.
    for i in 1..=5 {
        let from = format!("2001:db8:1:2::{i}");
        let status = via_balancer(&site, &wrong, &[("X-Forwarded-For", &from)]).await;
        assert_eq!(status, 401, "guess {i}");
    }
    let right = basic("agent1", "secret");
    let same_net = [("X-Forwarded-For", "2001:db8:1:2:ffff::99")];
    assert_eq!(via_balancer(&site, &right, &same_net).await, 429);
    let other_net = [("X-Forwarded-For", "2001:db8:1:3::1")];
    assert_eq!(via_balancer(&site, &right, &other_net).await, 200);
    site.ccedge
        .wait_stderr(
            "user agent1 blocked at 2001:db8:1:2::5 for 1800 seconds after 5 failed logins",
        )
        .await;
    let status = site.status().await;
    let lockout = &status["services"][0]["auth"]["lockouts"][0];
    assert_eq!(lockout["client_ip"], "2001:db8:1:2::/64");
    assert_eq!(lockout["user"], "agent1");
    let lift = format!(
        "http://127.0.0.1:{}/auth/lockouts/2001:db8:1:2::77",
        site.admin
    );
    assert_eq!(curl(&["-X", "DELETE", &lift]).await.unwrap().status, 200);
    assert_eq!(via_balancer(&site, &right, &same_net).await, 200);
}

#[tokio::test]
async fn with_x_real_ip_chosen_a_forged_forwarded_for_blocks_nobody_else() {
    let extra = "    trusted_proxies: [127.0.0.1]\n    client_ip_header: x-real-ip\n";
    let site = AuthSite::start_with("auth-real-ip", None, None, extra).await;
    // The balancer sets X-Real-IP to the attacker's address and passes on the X-Forwarded-For
    // the attacker wrote, naming a colleague.
    let attacker = [
        ("X-Real-IP", "198.51.100.9"),
        ("X-Forwarded-For", "203.0.113.50"),
    ];
    for _ in 0..5 {
        let status = via_balancer(&site, &basic("agent1", "guess"), &attacker).await;
        assert_eq!(status, 401);
    }
    let right = basic("agent1", "secret");
    let colleague = [("X-Real-IP", "203.0.113.50")];
    assert_eq!(via_balancer(&site, &right, &colleague).await, 200);
    assert_eq!(via_balancer(&site, &right, &attacker).await, 429);
    site.ccedge
        .wait_stderr("user agent1 blocked at 198.51.100.9 for 1800 seconds after 5 failed logins")
        .await;
    let echo = site
        .client()
        .send(
            "GET",
            "/finesse/api/User",
            &[
                ("Authorization", &right),
                ("X-Real-IP", "203.0.113.50"),
                ("X-Forwarded-For", "192.0.2.1"),
            ],
            b"",
        )
        .await
        .unwrap();
    let echo = crate::harness::upstream::Echo::parse(&echo.body);
    assert_eq!(echo.header("x-real-ip").as_deref(), Some("203.0.113.50"));
    assert_eq!(
        echo.header("x-forwarded-for").as_deref(),
        Some("203.0.113.50, 127.0.0.1"),
        "what the client wrote in X-Forwarded-For does not reach the upstream"
    );
}

/// A validator that answers every request with `status` and counts them.
async fn answering(status: u16) -> (Upstream, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let upstream = Upstream::custom(
        "other side",
        Arc::new(move |_req: Request<Incoming>| {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Response::builder().status(status).body(full("")).unwrap() })
        }),
    )
    .await;
    (upstream, calls)
}

#[tokio::test]
async fn with_side_a_being_patched_side_b_signs_everyone_in_and_side_a_rests() {
    // Side A answers 404, as Finesse does while it is being patched.
    let (side_a, side_a_calls) = answering(404).await;
    let site = AuthSite::launch("auth-side-b", None, None, "", &[side_a.authority()], &[]).await;
    for n in 1..=5 {
        let answer = site
            .get(
                &format!("/finesse/api/User/agent{n}"),
                Some(&basic(&format!("agent{n}"), "secret")),
            )
            .await;
        assert_eq!(answer.status, 200, "agent{n}: {}", answer.body);
    }
    assert_eq!(
        side_a_calls.load(Ordering::SeqCst),
        1,
        "side A rests after its failure"
    );
    assert_eq!(site.validator.calls(), 5, "side B checked every sign-in");
    let status = site.status().await;
    let validators = &status["services"][0]["auth"]["validators"];
    assert_eq!(validators[0]["up"], false, "{validators}");
    let rest = validators[0]["asked_again_in_seconds"].as_u64().unwrap();
    assert!((1..=10).contains(&rest), "{validators}");
    assert_eq!(validators[1]["up"], true);
    let metrics = site.metrics().await;
    let a = side_a.authority();
    assert_eq!(
        metric(
            &metrics,
            &format!("ccedge_auth_validator_up{{service=\"desktop\",validator=\"http://{a}/finesse/api/UserAuth\"}}")
        ),
        0
    );
    site.ccedge
        .wait_stderr(&format!(
            "validator http://{a}/finesse/api/UserAuth failed (it answered 404)"
        ))
        .await;
}

#[tokio::test]
async fn a_refusal_is_final_and_never_asked_of_the_next_validator() {
    // Side B would let anyone in: it must never be asked about a password side A refused.
    let (side_b, side_b_calls) = answering(200).await;
    let site = AuthSite::launch("auth-final", None, None, "", &[], &[side_b.authority()]).await;
    let wrong = site
        .get("/finesse/api/User/agent1", Some(&basic("agent1", "guess")))
        .await;
    assert_eq!(wrong.status, 401);
    let right = site
        .get("/finesse/api/User/agent1", Some(&basic("agent1", "secret")))
        .await;
    assert_eq!(right.status, 200);
    assert_eq!(side_b_calls.load(Ordering::SeqCst), 0);
    // Side A down: side B answers (it is the validator the site configured next).
    site.validator.broken.store(true, Ordering::SeqCst);
    let other = site
        .get("/finesse/api/User/agent2", Some(&basic("agent2", "secret")))
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(side_b_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn public_paths_pass_and_path_tricks_do_not_reach_them() {
    let site = AuthSite::start("auth-paths", None).await;
    assert_eq!(site.raw("/desktop/js/app.js", None).await.status, 200);
    assert_eq!(site.raw("/finesse/api/SystemInfo", None).await.status, 200);
    assert_eq!(site.app.hits(), 2);
    for trick in [
        "/desktop/../finesse/api/User/agent1",
        "/desktop/%2e%2e/finesse/api/User/agent1",
        "/desktop/%2E%2e/finesse/api/User/agent1",
        "/desktop/..;/finesse/api/User/agent1",
        "/desktop/./../finesse/api/User/agent1",
        "//desktop/../finesse/api/User/agent1",
    ] {
        let reply = site.raw(trick, None).await;
        assert_eq!(reply.status, 401, "{trick}: {}", reply.body);
    }
    for unsafe_path in [
        "/desktop/..%2ffinesse/api/User/agent1",
        "/desktop/..%5cfinesse/api/User/agent1",
        "/desktop/%252e%252e/finesse/api/User/agent1",
        "/desktop/../../finesse/api/User/agent1",
    ] {
        let reply = site.raw(unsafe_path, None).await;
        assert_eq!(reply.status, 400, "{unsafe_path}: {}", reply.body);
    }
    assert_eq!(site.app.hits(), 2, "a trick reached the upstream");
    // With credentials, the upstream receives the path as it was judged.
    let good = basic("agent1", "secret");
    let reply = site
        .raw("/desktop/%2e%2e/finesse/api/User/agent1?x=1", Some(&good))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo().target(), "/finesse/api/User/agent1?x=1");
}

#[tokio::test]
async fn a_retried_request_still_carries_the_path_that_was_judged() {
    let site = AuthSite::start("auth-retry", None).await;
    let good = basic("agent1", "secret");
    let mut client = site.client();
    let first = client
        .send(
            "GET",
            "/finesse/api/User/a",
            &[("Authorization", &good)],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    // The pooled connection goes stale: ccedge's attempt on it fails and it tries a new one.
    site.app.drop_reused_requests();
    let reply = site
        .raw("/desktop/%2e%2e/finesse//api/User/b", Some(&good))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let paths = site.app.paths();
    assert!(paths.len() >= 3, "no retry happened: {paths:?}");
    assert!(
        paths[1..].iter().all(|p| p == "/finesse/api/User/b"),
        "an attempt went upstream with another path: {paths:?}"
    );
}

/// Notifications for WebSocket upgrades (the echo), `200 ok` for anything else.
fn finesse_with_notifications(log: Arc<EchoLog>) -> Handler {
    let websocket = ws::echo_handler(log);
    Arc::new(move |req: Request<Incoming>| {
        if req.headers().contains_key("sec-websocket-key") {
            return websocket(req);
        }
        Box::pin(async { Response::builder().body(full("ok")).unwrap() })
    })
}

#[tokio::test]
async fn twenty_agents_behind_one_office_address_each_get_their_own_limits() {
    let log = Arc::new(EchoLog::default());
    let app = Upstream::custom("finesse", finesse_with_notifications(log.clone())).await;
    // Five requests a second per agent (burst five); the office's NAT address may hold 100
    // connections, where one address otherwise gets 12.
    let extra =
        "    rate_limits:\n      - {path_prefix: /, per_second: 5, burst: 5, per: user}\n    \
                 limits:\n      connections_by_cidr:\n        - {cidr: 127.0.0.1, max: 100}\n";
    let site = AuthSite::start_with("auth-office", None, Some(app), extra).await;
    let mut sockets = Vec::new();
    for n in 1..=20 {
        let token = URL_SAFE_NO_PAD.encode(format!("agent{n}:secret"));
        let proto = format!("xmpp, {token}");
        let socket = ws::connect_with(
            HOST,
            site.port,
            "/ws/",
            &site.ca.pem,
            &[("Sec-WebSocket-Protocol", &proto)],
        )
        .await
        .unwrap_or_else(|status| panic!("agent{n}'s notifications refused: {status}"));
        sockets.push(socket);
    }
    let agent = |n: u32, requests: usize| {
        let mut client = site.client();
        async move {
            let credential = basic(&format!("agent{n}"), "secret");
            let path = format!("/finesse/api/User/agent{n}");
            let mut statuses = Vec::new();
            for _ in 0..requests {
                let answer = client
                    .send("GET", &path, &[("Authorization", &credential)], b"")
                    .await
                    .unwrap();
                statuses.push((answer.status, answer.body));
            }
            statuses
        }
    };
    // One agent far over its rate, while the twenty go about their work.
    let flood = tokio::spawn(agent(21, 60));
    let mut work = Vec::new();
    for n in 1..=20 {
        work.push(tokio::spawn(agent(n, 4)));
    }
    for (n, statuses) in (1..).zip(work) {
        for (status, body) in statuses.await.unwrap() {
            assert_eq!(status, 200, "agent{n}: {body}");
        }
    }
    let flooded = flood.await.unwrap();
    let refused: Vec<&String> = flooded
        .iter()
        .filter(|(status, _)| *status == 429)
        .map(|(_, body)| body)
        .collect();
    assert!(
        refused.len() >= 40,
        "the flooding agent got {} 429s",
        refused.len()
    );
    assert!(refused[0].contains("per user"), "{}", refused[0]);
    for socket in &mut sockets {
        ws::echoes(socket, "still here").await;
    }
    assert_eq!(log.upgrades.lock().unwrap().len(), 20);
}

#[tokio::test]
async fn a_name_claimed_with_a_wrong_password_spends_nothing_of_that_agents_rate() {
    let extra = "    trusted_proxies: [127.0.0.1]\n    \
                 rate_limits:\n      - {path_prefix: /, per_second: 2, burst: 0, per: user}\n";
    let site = AuthSite::start_with("auth-claimed", None, None, extra).await;
    // Someone elsewhere sends agent1's name with guesses, as fast as it can.
    let guess = basic("agent1", "guess");
    for _ in 0..20 {
        let status = via_balancer(&site, &guess, &[("X-Forwarded-For", "198.51.100.66")]).await;
        assert!(matches!(status, 401 | 429), "{status}");
    }
    // agent1's own rate, counted by the user ccedge verified, is untouched.
    let own = basic("agent1", "secret");
    for _ in 0..2 {
        let status = via_balancer(&site, &own, &[("X-Forwarded-For", "203.0.113.10")]).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn a_revoked_agent_is_checked_again_and_loses_its_websocket() {
    let log = Arc::new(EchoLog::default());
    let app = Upstream::custom("finesse", finesse_with_notifications(log.clone())).await;
    let site = AuthSite::start_with("auth-revoke", None, Some(app), "").await;
    let notifications = |agent: &'static str| {
        let proto = format!(
            "xmpp, {}",
            URL_SAFE_NO_PAD.encode(format!("{agent}:secret"))
        );
        let ca = site.ca.pem.clone();
        let port = site.port;
        async move {
            let headers = [
                ("Sec-WebSocket-Protocol", proto.as_str()),
                ("TrackingID", agent),
            ];
            ws::connect_with(HOST, port, "/ws/", &ca, &headers)
                .await
                .unwrap()
        }
    };
    let mut alice = notifications("agent1").await;
    let mut bob = notifications("agent2").await;
    ws::echoes(&mut alice, "presence").await;
    let alice_basic = basic("agent1", "secret");
    let rest = site
        .get("/finesse/api/User/agent1", Some(&alice_basic))
        .await;
    assert_eq!(rest.status, 200);
    assert_eq!(site.validator.calls(), 2, "one check per agent, then kept");

    // alice leaves the company: her password is changed and she is revoked at the proxy.
    *site.validator.changed.lock().unwrap() = Some("agent1".into());
    let config = site.dir.join("ccedge.yaml");
    let out = tokio::process::Command::new(crate::harness::binary())
        .args(["revoke", "-c", config.to_str().unwrap(), "AGENT1"])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("AGENT1 revoked: 1 WebSocket(s) closed"),
        "{said}"
    );
    let close = ws::closed(&mut alice, Duration::from_secs(5)).await;
    let frame = close.expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 1008);
    assert_eq!(frame.reason.as_str(), "credentials revoked");
    let again = site
        .get("/finesse/api/User/agent1", Some(&alice_basic))
        .await;
    assert_eq!(again.status, 401, "checked again, and refused");
    assert_eq!(site.validator.calls(), 3);
    ws::echoes(&mut bob, "still here").await;
    let closed = site.ccedge.log_entry("agent1").await;
    assert_eq!(closed["user"], "agent1");
    assert!(
        closed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{closed}"
    );
}

#[tokio::test]
async fn a_user_revoked_after_a_reload_loses_the_websocket_the_old_process_carries() {
    let log = Arc::new(EchoLog::default());
    let app = Upstream::custom("finesse", finesse_with_notifications(log.clone())).await;
    let mut site = AuthSite::start_with("auth-revoke-draining", None, Some(app), "").await;
    let proto = format!("xmpp, {}", URL_SAFE_NO_PAD.encode("agent1:secret"));
    let headers = [("Sec-WebSocket-Protocol", proto.as_str())];
    let mut alice = ws::connect_with(HOST, site.port, "/ws/", &site.ca.pem, &headers)
        .await
        .unwrap();
    ws::echoes(&mut alice, "presence").await;

    // A reload: a new process takes the sockets over, the old one keeps alice.
    let _second = site.reload().await;
    ws::echoes(&mut alice, "still in the old process").await;

    // Revoked through the new process's admin listener: the old process closes her WebSocket.
    let config = site.dir.join("second.yaml");
    let out = tokio::process::Command::new(crate::harness::binary())
        .args(["revoke", "-c", config.to_str().unwrap(), "agent1"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let close = ws::closed(&mut alice, Duration::from_secs(5)).await;
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1008));
    // Its last connection gone, the old process exits.
    assert_eq!(site.ccedge.wait_exit(10).await, Some(0));
}

#[tokio::test]
async fn a_websocket_being_checked_when_its_user_is_revoked_does_not_open() {
    let log = Arc::new(EchoLog::default());
    let app = Upstream::custom("finesse", finesse_with_notifications(log.clone())).await;
    let site = AuthSite::start_with("auth-revoke-race", None, Some(app), "").await;
    site.validator.delay_ms.store(1500, Ordering::SeqCst);
    let proto = format!("xmpp, {}", URL_SAFE_NO_PAD.encode("agent8:secret"));
    let (ca, port) = (site.ca.pem.clone(), site.port);
    let opening = tokio::spawn(async move {
        let headers = [("Sec-WebSocket-Protocol", proto.as_str())];
        ws::connect_with(HOST, port, "/ws/", &ca, &headers)
            .await
            .err()
    });
    while site.validator.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let revoke = format!("http://127.0.0.1:{}/auth/users/agent8", site.admin);
    let revoked = curl(&["-X", "DELETE", &revoke]).await.unwrap();
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(
        opening.await.unwrap(),
        Some(503),
        "the WebSocket opened although its user was revoked while it was checked"
    );
    assert!(log.upgrades.lock().unwrap().is_empty());
    // The next attempt is checked again.
    site.validator.delay_ms.store(0, Ordering::SeqCst);
    let proto = format!("xmpp, {}", URL_SAFE_NO_PAD.encode("agent8:secret"));
    let headers = [("Sec-WebSocket-Protocol", proto.as_str())];
    let mut again = ws::connect_with(HOST, site.port, "/ws/", &site.ca.pem, &headers)
        .await
        .unwrap();
    ws::echoes(&mut again, "back").await;
    assert_eq!(site.validator.calls(), 2);
}

#[tokio::test]
async fn a_stale_token_replayed_blocks_that_token_not_the_office() {
    let site = AuthSite::start("auth-stale-token", None).await;
    // Four gadgets with stale tokens (after a key rotation, say), each polling on.
    for gadget in 1..=4 {
        let stale = format!("Bearer stale-token-{gadget}");
        let mut statuses = Vec::new();
        for _ in 0..8 {
            statuses.push(site.get("/finesse/api/User", Some(&stale)).await.status);
        }
        assert_eq!(&statuses[..5], [401; 5]);
        assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    }
    let colleague = site
        .get("/finesse/api/User/agent2", Some(&basic("agent2", "secret")))
        .await;
    assert_eq!(colleague.status, 200, "{}", colleague.body);
    let stderr = site
        .ccedge
        .wait_stderr("a credential naming no user blocked at 127.0.0.1 for 1800 seconds after 5 failed logins")
        .await;
    assert!(
        !stderr.contains("127.0.0.1 blocked for"),
        "the office's address was blocked"
    );
}

#[tokio::test]
async fn requests_without_a_verified_user_count_per_address_under_a_rule_per_user() {
    let extra = "    rate_limits:\n      - {path_prefix: /, per_second: 3, burst: 0, per: user}\n";
    let site = AuthSite::start_with("auth-unverified", None, None, extra).await;
    let agent = basic("agent2", "secret");
    let signed_in = site.get("/finesse/api/User/agent2", Some(&agent)).await;
    assert_eq!(signed_in.status, 200);
    // No credentials at all, as fast as a client can send them.
    let mut client = site.client();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let answer = client.get("/finesse/api/User").await.unwrap();
        statuses.push(answer.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // Colleagues at that address are not held back by them: one signed in before, one new.
    let agent = site.get("/finesse/api/User/agent2", Some(&agent)).await;
    assert_eq!(agent.status, 200, "{}", agent.body);
    let new = basic("agent3", "secret");
    let new = site.get("/finesse/api/User/agent3", Some(&new)).await;
    assert_eq!(new.status, 200, "{}", new.body);
}

#[tokio::test]
async fn websocket_upgrades_carry_their_credentials_in_the_subprotocol() {
    let log = Arc::new(EchoLog::default());
    let app = Upstream::custom("notifications", ws::echo_handler(log.clone())).await;
    let site = AuthSite::start_with("auth-ws", None, Some(app), "").await;
    let refused = ws::connect_with(HOST, site.port, "/ws/", &site.ca.pem, &[]).await;
    assert_eq!(refused.err(), Some(401));
    let wrong = URL_SAFE_NO_PAD.encode("agent1:guess");
    let proto = format!("xmpp, {wrong}");
    let refused = ws::connect_with(
        HOST,
        site.port,
        "/ws/",
        &site.ca.pem,
        &[("Sec-WebSocket-Protocol", &proto)],
    )
    .await;
    assert_eq!(refused.err(), Some(401));
    assert!(log.upgrades.lock().unwrap().is_empty());

    let good = URL_SAFE_NO_PAD.encode("agent1:secret");
    let proto = format!("xmpp, {good}");
    let mut client = ws::connect_with(
        HOST,
        site.port,
        "/ws/",
        &site.ca.pem,
        &[("Sec-WebSocket-Protocol", &proto)],
    )
    .await
    .expect("the upgrade with credentials passes");
    ws::echoes(&mut client, "presence").await;
    let seen = log.upgrades.lock().unwrap()[0].clone();
    assert_eq!(seen["sec-websocket-protocol"].to_str().unwrap(), proto);
    assert_eq!(site.validator.calls(), 2);
}

#[tokio::test]
async fn the_validator_down_is_503_never_a_pass_nor_a_failed_login() {
    let site = AuthSite::start("auth-down", None).await;
    site.validator.broken.store(true, Ordering::SeqCst);
    let good = basic("agent1", "secret");
    let answer = site.get("/finesse/api/User/agent1", Some(&good)).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.headers.contains_key("retry-after"));
    site.validator_upstream.stop().await;
    for i in 0..7 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let answer = site
            .get(
                "/finesse/api/User/agent1",
                Some(&basic("agent1", &format!("x{i}"))),
            )
            .await;
        assert_eq!(answer.status, 503, "request {i}: {}", answer.body);
    }
    assert_eq!(site.app.hits(), 0);
    site.ccedge
        .wait_stderr("credentials cannot be checked")
        .await;
    let metrics = site.metrics().await;
    assert_eq!(
        metric(&metrics, "ccedge_auth_lockouts_total{service=\"desktop\"}"),
        0
    );
    assert!(
        metric(
            &metrics,
            "ccedge_auth_validations_total{outcome=\"unavailable\",service=\"desktop\"}"
        ) >= 2
    );
}

#[tokio::test]
async fn a_credential_that_breaks_the_validator_does_not_lock_others_out() {
    let site = AuthSite::start("auth-poison", None).await;
    let poison = basic("agent9", &"x".repeat(9000));
    for n in 1..=5 {
        let broken = site.get("/finesse/api/User", Some(&poison)).await;
        assert_eq!(broken.status, 503, "{}", broken.body);
        // The validator now rests; a colleague's sign-in right after is checked all the same.
        let agent = format!("agent{n}");
        let sign_in = site
            .get(
                &format!("/finesse/api/User/{agent}"),
                Some(&basic(&agent, "secret")),
            )
            .await;
        assert_eq!(sign_in.status, 200, "{agent}: {}", sign_in.body);
    }
}

#[tokio::test]
async fn sso_tokens_are_verified_at_the_proxy() {
    let keys = Arc::new(KeyServer::default());
    let first = SigningKey::new("k1");
    *keys.document.lock().unwrap() = json!({"keys": [first.jwk]}).to_string();
    let key_upstream = Upstream::custom("ids", keys.handler()).await;
    let site = AuthSite::start("auth-jwt", Some(&key_upstream)).await;

    let token = first.sign(&claims("agent7", 60));
    let bearer = format!("Bearer {token}");
    let answer = site.get("/finesse/api/User/agent7", Some(&bearer)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(site.validator.calls(), 0, "a JWT went to the validator");
    let tid = answer.headers["trackingid"].to_str().unwrap();
    assert_eq!(site.ccedge.log_entry(tid).await["user"], "agent7");
    let challenge = site.get("/finesse/api/User", None).await;
    assert!(challenge.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("Bearer realm="));

    let stranger = SigningKey::new("k1");
    let mut expired = claims("agent7", 60);
    expired["exp"] = json!(now() - 5);
    let mut other_issuer = claims("agent7", 60);
    other_issuer["iss"] = json!("https://evil.example.com");
    let mut other_audience = claims("agent7", 60);
    other_audience["aud"] = json!("cuic");
    let mut no_iat = claims("agent7", 60);
    no_iat.as_object_mut().unwrap().remove("iat");
    let mut no_iss = claims("agent7", 60);
    no_iss.as_object_mut().unwrap().remove("iss");
    let mut no_aud = claims("agent7", 60);
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut hs256 = Header::new(Algorithm::HS256);
    hs256.kid = Some("k1".into());
    let shared_secret = jsonwebtoken::encode(
        &hs256,
        &claims("agent7", 60),
        &EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(claims("agent7", 60).to_string())
    );
    for (what, bad) in [
        ("without iss", first.sign(&no_iss)),
        ("without aud", first.sign(&no_aud)),
        ("HS256 with a shared secret", shared_secret),
        ("alg none", unsigned),
        ("expired", first.sign(&expired)),
        (
            "signed by another key",
            stranger.sign(&claims("agent7", 60)),
        ),
        ("another issuer", first.sign(&other_issuer)),
        ("another audience", first.sign(&other_audience)),
        (
            "older than max_token_age",
            first.sign(&claims("agent7", 7300)),
        ),
        ("without iat", first.sign(&no_iat)),
    ] {
        let answer = site
            .get("/finesse/api/User/agent7", Some(&format!("Bearer {bad}")))
            .await;
        assert_eq!(answer.status, 401, "{what}: {}", answer.body);
        let lift = format!("http://127.0.0.1:{}/auth/lockouts/127.0.0.1", site.admin);
        curl(&["-X", "DELETE", &lift]).await.unwrap();
    }
    assert_eq!(site.validator.calls(), 0);

    // The identity service rotates its key: the new kid is fetched when first seen.
    let fetches = keys.fetches.load(Ordering::SeqCst);
    let second = SigningKey::new("k2");
    *keys.document.lock().unwrap() = json!({"keys": [first.jwk, second.jwk]}).to_string();
    let rotated = second.sign(&claims("agent8", 10));
    let answer = site
        .get(
            "/finesse/api/User/agent8",
            Some(&format!("Bearer {rotated}")),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(keys.fetches.load(Ordering::SeqCst), fetches + 1);
    // Another new kid right after: no second fetch so soon; 503 (try again), not a failed login.
    let made_up = format!("Bearer {}", second.sign_as("k-none", &claims("agent8", 10)));
    let answer = site.get("/finesse/api/User/agent8", Some(&made_up)).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(keys.fetches.load(Ordering::SeqCst), fetches + 1);
    assert_eq!(site.app.hits(), 2);
    // Once the pause is over, the keys are fetched for it, and a key that is not there is a
    // refusal.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let answer = site.get("/finesse/api/User/agent8", Some(&made_up)).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(keys.fetches.load(Ordering::SeqCst), fetches + 2);
    let metrics = site.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "ccedge_auth_jwt_verifications_total{outcome=\"valid\",service=\"desktop\"}"
        ),
        2
    );
    let status = site.status().await;
    assert_eq!(status["services"][0]["auth"]["signing_keys"]["keys"], 2);
}
