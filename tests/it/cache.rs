//! The revalidating static cache of a Finesse site, against an origin that counts what it is
//! asked: hits without upstream requests, conditional revalidation, changes showing through
//! without a purge, one upstream request for concurrent misses, what must never be stored, Vary,
//! the size bound, stale-while-revalidate, stale-if-error, purges, and authentication in front.

use crate::harness::http::{Answer, Client};
use crate::harness::upstream::{full, Handler};
use crate::harness::{binary, free_port, server_block, Ccedge, TestDir, Upstream};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HOST: &str = "finesse1.example.com";

/// What the origin was asked: path, If-None-Match, Accept-Language.
type Asked = (String, Option<String>, Option<String>);

/// An origin for static files. `/desktop/app.js` is at version `version` (ETag `"v<n>"`,
/// `max-age` from `max_age`) and answers a matching `If-None-Match` with 304; other paths are
/// described where they are used.
#[derive(Default)]
struct Origin {
    version: AtomicU64,
    max_age: AtomicU64,
    delay_ms: AtomicU64,
    failing: AtomicBool,
    asked: Mutex<Vec<Asked>>,
    /// The origin's own address, which some answers name (for the host rewriting).
    addr: Mutex<String>,
}

impl Origin {
    fn handler(self: &Arc<Self>) -> Handler {
        let origin = self.clone();
        Arc::new(move |req: Request<Incoming>| {
            let origin = origin.clone();
            Box::pin(async move { origin.answer(req).await })
        })
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<crate::harness::upstream::Body> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let path = req.uri().path().to_string();
        self.asked.lock().unwrap().push((
            path.clone(),
            header("if-none-match"),
            header("accept-language"),
        ));
        let delay = self.delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if self.failing.load(Ordering::SeqCst) {
            return Response::builder().status(503).body(full("down")).unwrap();
        }
        let version = self.version.load(Ordering::SeqCst);
        let etag = format!("\"v{version}\"");
        let mut max_age = format!("max-age={}", self.max_age.load(Ordering::SeqCst));
        if path == "/finesse/api/gadget.js" {
            // Marked for everyone: stored even when fetched with credentials.
            max_age.insert_str(0, "public, ");
        }
        // Who the request is from, as Finesse would tell it (the Basic user name).
        let user = header("authorization")
            .and_then(|v| STANDARD.decode(v.strip_prefix("Basic ")?).ok())
            .and_then(|pair| String::from_utf8(pair).ok())
            .and_then(|pair| Some(pair.split_once(':')?.0.to_string()));
        // Tomcat routes a path without its `;parameters`.
        let routed: String = path
            .split('/')
            .map(|segment| segment.split(';').next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("/");
        let js = |body: String| {
            Response::builder()
                .header("Content-Type", "application/javascript")
                .header("Cache-Control", max_age.as_str())
                .body(full(body))
                .unwrap()
        };
        match path.as_str() {
            "/desktop/app.js" | "/finesse/api/gadget.js" => {
                if header("if-none-match").as_deref() == Some(etag.as_str()) {
                    return Response::builder()
                        .status(304)
                        .header("ETag", etag.as_str())
                        .header("Cache-Control", max_age.as_str())
                        .body(full(""))
                        .unwrap();
                }
                let mut resp = js(format!("app version {version}"));
                resp.headers_mut().insert("etag", etag.parse().unwrap());
                resp
            }
            "/desktop/no-store.js" => no_cache_response("no-store", None),
            "/desktop/private.js" => no_cache_response("private, max-age=600", None),
            "/desktop/cookie.js" => no_cache_response("max-age=600", Some("JSESSIONID=abc")),
            "/desktop/lang.js" => {
                let mut resp = js(format!(
                    "lang {}",
                    header("accept-language").unwrap_or_default()
                ));
                resp.headers_mut()
                    .insert("vary", "Accept-Language".parse().unwrap());
                resp
            }
            "/desktop/hosts.js" => {
                let addr = self.addr.lock().unwrap().clone();
                let mut resp = js(format!("var home = 'https://{addr}/desktop/';"));
                let location = format!("http://{addr}/desktop/elsewhere");
                resp.headers_mut()
                    .insert("location", location.parse().unwrap());
                resp
            }
            "/desktop/by-cookie.js" => {
                let cookies: Vec<&str> = req
                    .headers()
                    .get_all("cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let mut resp = js(format!("for {}", cookies.join("; ")));
                resp.headers_mut().insert("vary", "Cookie".parse().unwrap());
                resp
            }
            // A user's own data, as JAX-RS answers it: to that user only, no Cache-Control.
            _ if routed.starts_with("/finesse/api/User/") || routed == "/desktop/userprefs" => {
                let owner = routed.strip_prefix("/finesse/api/User/");
                match user {
                    Some(user) if owner.is_none_or(|o| o == user) => Response::builder()
                        .header("Content-Type", "application/xml")
                        .body(full(format!("<User>data of {user}</User>")))
                        .unwrap(),
                    _ => Response::builder().status(401).body(full("")).unwrap(),
                }
            }
            "/desktop/huge.js" => js("h".repeat(12 << 20)),
            p if p.starts_with("/desktop/big/") => {
                let seed = p.len() as u8;
                js(String::from_utf8(vec![b'a' + seed % 26; 512 * 1024]).unwrap())
            }
            _ => js(format!("file {path}")),
        }
    }

    /// How many times `path` was asked for.
    fn count(&self, path: &str) -> usize {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.0 == path)
            .count()
    }

    fn last(&self, path: &str) -> Asked {
        let asked = self.asked.lock().unwrap();
        asked.iter().rev().find(|a| a.0 == path).cloned().unwrap()
    }
}

fn no_cache_response(
    cache_control: &str,
    cookie: Option<&str>,
) -> Response<crate::harness::upstream::Body> {
    let mut resp = Response::builder()
        .header("Content-Type", "application/javascript")
        .header("Cache-Control", cache_control);
    if let Some(c) = cookie {
        resp = resp.header("Set-Cookie", c);
    }
    resp.body(full("secret")).unwrap()
}

/// A plain-HTTP Finesse site with a cache in front of an `Origin`.
struct CacheSite {
    dir: TestDir,
    port: u16,
    admin: u16,
    origin: Arc<Origin>,
    origin_upstream: Upstream,
    ccedge: Ccedge,
}

impl CacheSite {
    /// `cache` is the cache block's inner keys; `extra` goes into the service block.
    async fn start(name: &str, max_age: u64, cache: &str, extra: &str) -> CacheSite {
        let dir = TestDir::new(name);
        let origin = Arc::new(Origin::default());
        origin.version.store(1, Ordering::SeqCst);
        origin.max_age.store(max_age, Ordering::SeqCst);
        let origin_upstream = Upstream::custom("origin", origin.handler()).await;
        *origin.addr.lock().unwrap() = origin_upstream.authority();
        let port = free_port();
        let admin = free_port();
        let yaml = format!(
            "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    servers:\n      \
             - public: {HOST}:{port}\n        upstream: {up}\n        role: other\n    \
             cache:\n{cache}{extra}",
            server = server_block(&dir.path, Some(admin)),
            up = origin_upstream.authority(),
        );
        let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
        CacheSite {
            dir,
            port,
            admin,
            origin,
            origin_upstream,
            ccedge,
        }
    }

    fn client(&self) -> Client {
        Client::new(SocketAddr::from(([127, 0, 0, 1], self.port)), HOST)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.client().send("GET", path, headers, b"").await.unwrap()
    }

    /// The access log's `cache` field for the request that got `answer`.
    async fn outcome(&self, answer: &Answer) -> String {
        let tid = answer.headers["trackingid"].to_str().unwrap();
        let line = self.ccedge.log_entry(tid).await;
        line["cache"].as_str().unwrap().to_string()
    }

    async fn admin(&self, method: &str, target: &str) -> Answer {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admin));
        let mut client = Client::new(addr, "127.0.0.1");
        client.send(method, target, &[], b"").await.unwrap()
    }

    async fn status(&self) -> Value {
        serde_json::from_str(&self.admin("GET", "/status").await.body).unwrap()
    }
}

const RULES: &str =
    "      rules:\n        - path_prefix: /desktop/\n        - path_suffix: [.js, .css]\n";

fn cache_block(max_size_mb: u64, swr: u64) -> String {
    format!(
        "      max_size_mb: {max_size_mb}\n      default_fresh_seconds: 300\n      \
         stale_while_revalidate_seconds: {swr}\n{RULES}"
    )
}

#[tokio::test]
async fn a_second_get_is_a_hit_without_an_upstream_request() {
    let site = CacheSite::start("cache-hit", 300, &cache_block(16, 0), "").await;
    let first = site.get("/desktop/app.js", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "app version 1");
    assert_eq!(site.outcome(&first).await, "MISS");
    let second = site.get("/desktop/app.js", &[]).await;
    assert_eq!(second.body, "app version 1");
    assert_eq!(site.outcome(&second).await, "HIT");
    assert_eq!(site.origin.count("/desktop/app.js"), 1);
    assert!(second.headers.contains_key("age"));
    assert!(second.headers.contains_key("trackingid"));
    assert_ne!(first.headers["trackingid"], second.headers["trackingid"]);

    // A browser's conditional request is answered 304 from the cache.
    let conditional = site
        .get("/desktop/app.js", &[("If-None-Match", "\"v1\"")])
        .await;
    assert_eq!(conditional.status, 304);
    assert_eq!(site.origin.count("/desktop/app.js"), 1);
    // HEAD is served from the same entry.
    let head = site
        .client()
        .send("HEAD", "/desktop/app.js", &[], b"")
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(site.outcome(&head).await, "HIT");
    assert_eq!(site.origin.count("/desktop/app.js"), 1);

    let status = site.status().await;
    assert_eq!(status["services"][0]["cache"]["entries"], 1);
    let metrics = site.admin("GET", "/metrics").await.body;
    assert!(
        metrics.contains("ccedge_cache_lookups_total{outcome=\"HIT\",service=\"desktop\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ccedge_cache_entries{service=\"desktop\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn expired_entries_are_revalidated_and_changes_show_through_without_a_purge() {
    let site = CacheSite::start("cache-revalidate", 1, &cache_block(16, 0), "").await;
    assert_eq!(site.get("/desktop/app.js", &[]).await.body, "app version 1");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let revalidated = site.get("/desktop/app.js", &[]).await;
    assert_eq!(revalidated.body, "app version 1", "a 304 keeps the body");
    assert_eq!(site.outcome(&revalidated).await, "REVALIDATED");
    assert_eq!(site.origin.count("/desktop/app.js"), 2);
    let (_, if_none_match, _) = site.origin.last("/desktop/app.js");
    assert_eq!(if_none_match.as_deref(), Some("\"v1\""));
    assert_eq!(
        site.outcome(&site.get("/desktop/app.js", &[]).await).await,
        "HIT"
    );

    // A new layout upstream: after expiry the new file is served, nobody purged anything.
    site.origin.version.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let changed = site.get("/desktop/app.js", &[]).await;
    assert_eq!(changed.body, "app version 2");
    assert_eq!(site.outcome(&changed).await, "MISS");
    let again = site.get("/desktop/app.js", &[]).await;
    assert_eq!(again.body, "app version 2");
    assert_eq!(site.outcome(&again).await, "HIT");
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_upstream_request() {
    // Fifty connections from one address: more than the default limit allows.
    let unlimited = "    limits:\n      max_connections_per_ip: 0\n";
    let site = CacheSite::start("cache-lock", 300, &cache_block(16, 0), unlimited).await;
    site.origin.delay_ms.store(400, Ordering::SeqCst);
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let mut client = site.client();
            tokio::spawn(async move { client.get("/desktop/slow.js").await.unwrap() })
        })
        .collect();
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "file /desktop/slow.js");
    }
    assert_eq!(site.origin.count("/desktop/slow.js"), 1);
}

#[tokio::test]
async fn no_store_private_and_set_cookie_are_never_kept() {
    let site = CacheSite::start("cache-never", 300, &cache_block(16, 0), "").await;
    for path in [
        "/desktop/no-store.js",
        "/desktop/private.js",
        "/desktop/cookie.js",
    ] {
        for _ in 0..2 {
            let answer = site.get(path, &[]).await;
            assert_eq!(answer.body, "secret");
            assert_eq!(site.outcome(&answer).await, "BYPASS", "{path}");
        }
        assert_eq!(
            site.origin.count(path),
            2,
            "{path} was served from the cache"
        );
    }
    // Neither is anything outside the rules, nor anything but GET and HEAD.
    for _ in 0..2 {
        site.get("/finesse/api/User", &[]).await;
        site.client()
            .send("POST", "/desktop/app.js", &[], b"x")
            .await
            .unwrap();
    }
    assert_eq!(site.origin.count("/finesse/api/User"), 2);
    assert_eq!(site.origin.count("/desktop/app.js"), 2);
    assert_eq!(site.status().await["services"][0]["cache"]["entries"], 0);
}

#[tokio::test]
async fn vary_accept_language_keeps_languages_apart() {
    let site = CacheSite::start("cache-vary", 300, &cache_block(16, 0), "").await;
    let english = [("Accept-Language", "en-US")];
    let german = [("Accept-Language", "de-DE")];
    assert_eq!(
        site.get("/desktop/lang.js", &english).await.body,
        "lang en-US"
    );
    let de = site.get("/desktop/lang.js", &german).await;
    assert_eq!(de.body, "lang de-DE");
    assert_eq!(site.outcome(&de).await, "MISS");
    let en = site.get("/desktop/lang.js", &english).await;
    assert_eq!(en.body, "lang en-US");
    assert_eq!(site.outcome(&en).await, "HIT");
    let de = site.get("/desktop/lang.js", &german).await;
    assert_eq!(de.body, "lang de-DE");
    assert_eq!(site.outcome(&de).await, "HIT");
    assert_eq!(site.origin.count("/desktop/lang.js"), 2);
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn the_size_bound_holds_while_ten_times_as_much_is_requested() {
    let site = CacheSite::start("cache-bound", 300, &cache_block(2, 0), "").await;
    let mut client = site.client();
    // Warm up the process's own allocations, then measure.
    client.get("/desktop/big/warmup.js").await.unwrap();
    let before = rss_kib(site.ccedge.pid());
    for n in 0..40 {
        let answer = client
            .get(&format!("/desktop/big/{n:03}.js"))
            .await
            .unwrap();
        assert_eq!(answer.body.len(), 512 * 1024);
    }
    // Evicted entries are dropped by a task pingora spawns right after each admission.
    let deadline = Instant::now() + Duration::from_secs(3);
    let cache = loop {
        let status = site.status().await;
        let cache = status["services"][0]["cache"].clone();
        if cache["bytes"].as_u64().unwrap() <= 2 * 1024 * 1024 || Instant::now() > deadline {
            break cache;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        cache["bytes"].as_u64().unwrap() <= 2 * 1024 * 1024,
        "{cache}"
    );
    assert!(cache["evictions"].as_u64().unwrap() >= 30, "{cache}");
    let grown = rss_kib(site.ccedge.pid()).saturating_sub(before);
    assert!(
        grown < 12 * 1024,
        "RSS grew {grown} KiB for a 2 MiB cache after 20 MiB of responses"
    );
    // The most recent responses are still there.
    client.get("/desktop/big/039.js").await.unwrap();
    assert_eq!(site.origin.count("/desktop/big/039.js"), 1);
}

#[tokio::test]
async fn within_stale_while_revalidate_the_stale_copy_is_served_at_once() {
    let site = CacheSite::start("cache-swr", 1, &cache_block(16, 60), "").await;
    assert_eq!(site.get("/desktop/app.js", &[]).await.body, "app version 1");
    site.origin.version.store(2, Ordering::SeqCst);
    site.origin.delay_ms.store(1500, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let started = Instant::now();
    let stale = site.get("/desktop/app.js", &[]).await;
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(stale.body, "app version 1");
    assert_eq!(site.outcome(&stale).await, "STALE");
    // One background request fetches the new version meanwhile.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = site.get("/desktop/app.js", &[]).await;
        if answer.body == "app version 2" {
            assert_eq!(site.outcome(&answer).await, "HIT");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the background revalidation never landed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(site.origin.count("/desktop/app.js"), 2);
}

#[tokio::test]
async fn an_upstream_failing_during_revalidation_gets_the_stale_copy_served() {
    let site = CacheSite::start("cache-sie", 1, &cache_block(16, 0), "").await;
    assert_eq!(site.get("/desktop/app.js", &[]).await.body, "app version 1");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    site.origin.failing.store(true, Ordering::SeqCst);
    let answer = site.get("/desktop/app.js", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "app version 1");
    site.origin_upstream.stop().await;
    let answer = site.get("/desktop/app.js", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "app version 1");
    site.ccedge.wait_stderr("the stale copy is served").await;
}

#[tokio::test]
async fn purges_empty_the_cache_from_the_admin_listener_and_the_command_line() {
    let site = CacheSite::start("cache-purge", 300, &cache_block(16, 0), "").await;
    for path in ["/desktop/app.js", "/desktop/a.css", "/cuic/report.js"] {
        site.get(path, &[]).await;
    }
    assert_eq!(site.status().await["services"][0]["cache"]["entries"], 3);
    let out = std::process::Command::new(binary())
        .args(["purge", "--prefix", "/desktop/", "-c"])
        .arg(site.dir.join("ccedge.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged 2 entries"));
    let after = site.get("/desktop/app.js", &[]).await;
    assert_eq!(site.outcome(&after).await, "MISS");
    let kept = site.get("/cuic/report.js", &[]).await;
    assert_eq!(site.outcome(&kept).await, "HIT");
    let all = site.admin("DELETE", "/cache").await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(site.status().await["services"][0]["cache"]["entries"], 0);
    assert_eq!(site.admin("GET", "/cache").await.status, 405);
    assert_eq!(
        site.admin("DELETE", "/cache?prefix=desktop").await.status,
        400
    );
}

#[tokio::test]
async fn hits_carry_the_same_rewritten_bytes_as_misses() {
    let site = CacheSite::start("cache-rewrite", 300, &cache_block(16, 0), "").await;
    let public = format!("{HOST}:{}", site.port);
    // The first fetch is a HEAD: what is stored is still the rewritten GET body.
    let head = site
        .client()
        .send("HEAD", "/desktop/hosts.js", &[], b"")
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    let hit = site.get("/desktop/hosts.js", &[]).await;
    assert_eq!(site.outcome(&hit).await, "HIT");
    assert_eq!(hit.body, format!("var home = 'https://{public}/desktop/';"));
    // The rewritten body went to its first client chunked; a hit knows its length.
    assert_eq!(
        hit.headers
            .get("content-length")
            .map(|v| v.to_str().unwrap()),
        Some(hit.body.len().to_string().as_str()),
        "{:?}",
        hit.headers
    );
    assert!(!hit.headers.contains_key("transfer-encoding"));
    let location = hit.headers["location"].to_str().unwrap();
    assert_eq!(location, format!("http://{public}/desktop/elsewhere"));
    assert_eq!(site.origin.count("/desktop/hosts.js"), 1);
}

/// Fetches `path` from 127.0.0.1:`port` as a steady client that takes its time (16 KiB reads
/// through a small receive buffer, 4 ms apart: a few MB/s); the whole answer as received until
/// the server closed it.
async fn slow_get(port: u16, path: &str, tracking_id: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nTrackingID: {tracking_id}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
}

#[tokio::test]
async fn a_steady_reader_gets_a_large_hit_whole_within_the_send_timeout() {
    let limits = "    limits:\n      client_send_timeout_ms: 1000\n";
    let site = CacheSite::start("cache-slow-reader", 300, &cache_block(64, 0), limits).await;
    for (tid, outcome) in [("slow-miss", "MISS"), ("slow-hit", "HIT")] {
        let answer = slow_get(site.port, "/desktop/huge.js", tid).await;
        let line = site.ccedge.log_entry(tid).await;
        assert_eq!(line["cache"], outcome, "{line}");
        assert!(line["error"].is_null(), "{line}");
        assert!(
            answer.len() > 8 << 20,
            "{tid}: {} bytes arrived",
            answer.len()
        );
    }
}

/// A validator that takes `alice:a`, `bob:b` and `agent1:secret`.
async fn validator() -> Upstream {
    Upstream::custom(
        "validator",
        Arc::new(|req: Request<Incoming>| {
            Box::pin(async move {
                let ok = ["alice:a", "bob:b", "agent1:secret"].iter().any(|pair| {
                    let good = format!("Basic {}", STANDARD.encode(pair));
                    req.headers()
                        .get("authorization")
                        .is_some_and(|v| v == good.as_str())
                });
                let status = if ok { 200 } else { 401 };
                Response::builder().status(status).body(full("")).unwrap()
            })
        }),
    )
    .await
}

fn auth_block(validator: &Upstream) -> String {
    format!(
        "    auth:\n      validate_url: http://{}/finesse/api/UserAuth\n",
        validator.authority()
    )
}

fn basic(pair: &str) -> String {
    format!("Basic {}", STANDARD.encode(pair))
}

#[tokio::test]
async fn a_cached_private_resource_needs_credentials_every_time() {
    let validator = validator().await;
    let site = CacheSite::start(
        "cache-auth",
        300,
        &cache_block(16, 0),
        &auth_block(&validator),
    )
    .await;
    let good = basic("agent1:secret");
    let with = [("Authorization", good.as_str())];
    assert_eq!(site.get("/finesse/api/gadget.js", &with).await.status, 200);
    let hit = site.get("/finesse/api/gadget.js", &with).await;
    assert_eq!(site.outcome(&hit).await, "HIT");
    let without = site.get("/finesse/api/gadget.js", &[]).await;
    assert_eq!(without.status, 401);
    let wrong = site
        .get(
            "/finesse/api/gadget.js",
            &[("Authorization", "Basic d3Jvbmc6d3Jvbmc=")],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(!wrong.body.contains("app version"));
    assert_eq!(site.origin.count("/finesse/api/gadget.js"), 1);
    // Public paths come from the cache without credentials.
    site.get("/desktop/app.js", &[]).await;
    let public = site.get("/desktop/app.js", &[]).await;
    assert_eq!(public.status, 200);
    assert_eq!(site.outcome(&public).await, "HIT");
}

#[tokio::test]
async fn one_agents_answer_is_never_served_to_another_agent_or_anonymous() {
    let validator = validator().await;
    let site = CacheSite::start(
        "cache-users",
        300,
        &cache_block(16, 0),
        &auth_block(&validator),
    )
    .await;
    let (alice, bob) = (basic("alice:a"), basic("bob:b"));
    let as_alice = [("Authorization", alice.as_str())];
    let as_bob = [("Authorization", bob.as_str())];

    // `;x.js` makes the path look like a script to a rule matching the raw path; Tomcat drops it.
    let target = "/finesse/api/User/alice;x.js";
    let mine = site.get(target, &as_alice).await;
    assert_eq!(
        (mine.status, mine.body.as_str()),
        (200, "<User>data of alice</User>")
    );
    let theirs = site.get(target, &as_bob).await;
    assert_ne!(theirs.body, mine.body, "bob was served alice's data");
    assert_eq!(theirs.status, 401, "Finesse itself refused bob");
    assert_ne!(site.outcome(&theirs).await, "HIT");
    assert_eq!(site.origin.count(target), 2);

    // On a public path, an answer fetched with credentials is not for anonymous clients.
    let prefs = site.get("/desktop/userprefs?v=1", &as_alice).await;
    assert_eq!(prefs.body, "<User>data of alice</User>");
    let anonymous = site.get("/desktop/userprefs?v=1", &[]).await;
    assert_ne!(
        anonymous.body, prefs.body,
        "an anonymous client got alice's data"
    );
    let again = site.get("/desktop/userprefs?v=1", &as_bob).await;
    assert_eq!(again.body, "<User>data of bob</User>");
    assert_eq!(site.origin.count("/desktop/userprefs"), 3);
    let status = site.status().await;
    assert_eq!(
        status["services"][0]["cache"]["entries"], 0,
        "nothing stored"
    );
}

#[tokio::test]
async fn a_request_waiting_on_another_agents_miss_gets_its_own_answer() {
    let validator = validator().await;
    let site = CacheSite::start(
        "cache-users-lock",
        300,
        &cache_block(16, 0),
        &auth_block(&validator),
    )
    .await;
    site.origin.delay_ms.store(300, Ordering::SeqCst);
    let target = "/finesse/api/User/alice;x.js";
    let (alice, bob) = (basic("alice:a"), basic("bob:b"));
    let first = {
        let client = site.client();
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut client = client;
            client
                .send("GET", target, &[("Authorization", &alice)], b"")
                .await
                .unwrap()
        })
    };
    // Bob asks while alice's miss holds the key's lock.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let theirs = site.get(target, &[("Authorization", &bob)]).await;
    let mine = first.await.unwrap();
    assert_eq!(mine.body, "<User>data of alice</User>");
    assert_ne!(theirs.body, mine.body, "bob was handed alice's answer");
    assert_eq!(theirs.status, 401);
    assert_eq!(site.origin.count(target), 2);
}

#[tokio::test]
async fn answers_for_everyone_are_shared_whoever_fetched_them() {
    let validator = validator().await;
    let site = CacheSite::start(
        "cache-shared",
        300,
        &cache_block(16, 0),
        &auth_block(&validator),
    )
    .await;
    let (alice, bob) = (basic("alice:a"), basic("bob:b"));
    // Marked public upstream: alice's fetch serves bob.
    site.get(
        "/finesse/api/gadget.js",
        &[("Authorization", alice.as_str())],
    )
    .await;
    let shared = site
        .get("/finesse/api/gadget.js", &[("Authorization", bob.as_str())])
        .await;
    assert_eq!(
        (shared.status, site.outcome(&shared).await.as_str()),
        (200, "HIT")
    );

    // A stored answer to an anonymous request serves requests with credentials too, and a
    // request with credentials may revalidate it: a 304 confirms what was stored.
    let first = site.get("/desktop/app.js", &[]).await;
    assert_eq!(site.outcome(&first).await, "MISS");
    let with = site
        .get("/desktop/app.js", &[("Authorization", alice.as_str())])
        .await;
    assert_eq!(
        (with.body.as_str(), site.outcome(&with).await.as_str()),
        ("app version 1", "HIT")
    );

    // Cookies alone do not make a request credentialed (browsers send them with every asset)...
    let cookie = site
        .get("/desktop/app.js", &[("Cookie", "JSESSIONID=alice")])
        .await;
    assert_eq!(site.outcome(&cookie).await, "HIT");
    // ... and a response that varies on them is kept per cookie.
    let a = site
        .get("/desktop/by-cookie.js", &[("Cookie", "s=a")])
        .await;
    let b = site
        .get("/desktop/by-cookie.js", &[("Cookie", "s=b")])
        .await;
    assert_eq!((a.body.as_str(), b.body.as_str()), ("for s=a", "for s=b"));
    // Cookies sent as lines of their own (as HTTP/2 browsers do) count, every one.
    let lines = |user: &'static str| [("Cookie", "lb=node1"), ("Cookie", user)];
    let alice_lines = site.get("/desktop/by-cookie.js", &lines("s=alice")).await;
    let bob_lines = site.get("/desktop/by-cookie.js", &lines("s=bob")).await;
    assert_eq!(
        bob_lines.body, "for lb=node1; s=bob",
        "{}",
        alice_lines.body
    );
    assert_ne!(site.outcome(&bob_lines).await, "HIT");
    let a_again = site
        .get("/desktop/by-cookie.js", &[("Cookie", "s=a")])
        .await;
    assert_eq!(
        (a_again.body.as_str(), site.outcome(&a_again).await.as_str()),
        ("for s=a", "HIT")
    );
}

#[tokio::test]
async fn a_request_with_credentials_revalidates_a_stored_answer() {
    let validator = validator().await;
    let site = CacheSite::start(
        "cache-reval-auth",
        0,
        &cache_block(16, 0),
        &auth_block(&validator),
    )
    .await;
    let alice = basic("alice:a");
    site.get("/desktop/app.js", &[]).await;
    let revalidated = site
        .get("/desktop/app.js", &[("Authorization", alice.as_str())])
        .await;
    assert_eq!(revalidated.body, "app version 1");
    assert_eq!(site.outcome(&revalidated).await, "REVALIDATED");
    assert_eq!(
        site.origin.last("/desktop/app.js").1.as_deref(),
        Some("\"v1\"")
    );
    // A new version fetched with credentials replaces nothing for others: it is not stored.
    site.origin.version.store(2, Ordering::SeqCst);
    let changed = site
        .get("/desktop/app.js", &[("Authorization", alice.as_str())])
        .await;
    assert_eq!(changed.body, "app version 2");
    let anonymous = site.get("/desktop/app.js", &[]).await;
    assert_eq!(anonymous.body, "app version 2");
    assert_eq!(site.outcome(&anonymous).await, "MISS");
}
