//! Instances sharing their state through a real `redis-server` (`server.shared_state`):
//! lockouts, verdicts and admin actions across instances; Redis killed and back.

use crate::harness::http::{Answer, Client};
use crate::harness::upstream::{full, Handler};
use crate::harness::{curl, free_port, server_block, Ccedge, Redis, TestDir, Upstream};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HOST: &str = "finesse.example.com";

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// Finesse's UserAuth: `agentN:secret` is valid; counts the checks of each user.
#[derive(Default)]
struct Validator {
    calls: Mutex<HashMap<String, usize>>,
    delay_ms: AtomicU64,
}

impl Validator {
    fn handler(self: &Arc<Self>) -> Handler {
        let state = self.clone();
        Arc::new(move |req: Request<Incoming>| {
            let state = state.clone();
            Box::pin(async move {
                let given = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let user = given
                    .strip_prefix("Basic ")
                    .and_then(|b| STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|p| p.split_once(':').map(|(u, _)| u.to_string()))
                    .unwrap_or_default();
                *state.calls.lock().unwrap().entry(user.clone()).or_default() += 1;
                let delay = state.delay_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let valid = user.starts_with("agent") && given == basic(&user, "secret");
                let status = if valid { 200 } else { 401 };
                Response::builder().status(status).body(full("")).unwrap()
            })
        })
    }

    fn calls(&self, user: &str) -> usize {
        self.calls.lock().unwrap().get(user).copied().unwrap_or(0)
    }
}

struct Node {
    _dir: TestDir,
    port: u16,
    admin: u16,
    ccedge: Ccedge,
}

struct Cluster {
    redis: Redis,
    validator: Arc<Validator>,
    app: Upstream,
    validator_upstream: Upstream,
    nodes: Vec<Node>,
    dir: TestDir,
}

impl Cluster {
    /// `n` instances of one Finesse site with authentication and a cache, sharing a Redis and
    /// a key.
    async fn start(name: &str, n: usize) -> Cluster {
        Self::with(name, n, "").await
    }

    /// As `start`, with `extra` in the site's block.
    async fn with(name: &str, n: usize, extra: &str) -> Cluster {
        let dir = TestDir::new(name);
        let redis = Redis::start(&dir).await;
        let cluster = Self::over(dir, redis, n, extra, "").await;
        for i in 0..n {
            cluster.wait_shared(i, true).await;
        }
        cluster
    }

    /// `n` instances sharing `redis`, with `extra` in the site's block and `shared` in
    /// `server.shared_state`.
    async fn over(dir: TestDir, redis: Redis, n: usize, extra: &str, shared: &str) -> Cluster {
        let key = dir.join("state.key");
        std::fs::write(&key, rand_key()).unwrap();
        let validator = Arc::new(Validator::default());
        let validator_upstream = Upstream::custom("validator", validator.handler()).await;
        let app = Upstream::plain("finesse").await;
        let mut cluster = Cluster {
            redis,
            validator,
            app,
            nodes: Vec::new(),
            dir,
            validator_upstream,
        };
        for i in 0..n {
            let node_dir = TestDir::new(&format!("node-{i}"));
            let (port, admin) = (free_port(), free_port());
            let yaml = format!(
                "{server}  shared_state:\n    redis_url: {url}\n    key_file: {key}\n    timeout_ms: 1000\n{shared}\
                 finesse:\n  - name: desktop\n    bind: 127.0.0.1\n{extra}    \
                 servers:\n      - public: {HOST}:{port}\n        upstream: {app}\n        role: other\n    \
                 cache:\n      rules:\n        - path_prefix: /desktop/\n    \
                 auth:\n      validate_url: http://{validator}/finesse/api/UserAuth\n      cache_seconds: 900\n      \
                 public_paths: [/desktop/]\n      lockout: {{failures: 5, address_failures: 20, window_seconds: 60, block_seconds: 1800}}\n",
                server = server_block(&node_dir.path, Some(admin)),
                url = cluster.redis.url(),
                key = key.display(),
                app = cluster.app.authority(),
                validator = cluster.validator_upstream.authority(),
            );
            let ccedge = Ccedge::start(&node_dir, &yaml, &[port, admin]).await;
            cluster.nodes.push(Node {
                _dir: node_dir,
                port,
                admin,
                ccedge,
            });
        }
        cluster
    }

    async fn get(&self, node: usize, path: &str, authorization: Option<&str>) -> Answer {
        let port = self.nodes[node].port;
        let mut client = Client::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &format!("{HOST}:{port}"),
        );
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        client.send("GET", path, &headers, b"").await.unwrap()
    }

    /// The status of `GET /finesse/api/User/<user>` on `node` with `credential`.
    async fn user(&self, node: usize, user: &str, credential: &str) -> u16 {
        let path = format!("/finesse/api/User/{user}");
        self.get(node, &path, Some(credential)).await.status
    }

    async fn admin(&self, node: usize, method: &str, path: &str) -> u16 {
        let url = format!("http://127.0.0.1:{}{path}", self.nodes[node].admin);
        curl(&["-X", method, &url]).await.unwrap().status
    }

    async fn metrics(&self, node: usize) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.nodes[node].admin);
        curl(&[&url]).await.unwrap().body
    }

    async fn status(&self, node: usize) -> Value {
        let url = format!("http://127.0.0.1:{}/status", self.nodes[node].admin);
        serde_json::from_str(&curl(&[&url]).await.unwrap().body).unwrap()
    }

    /// Waits until `ccedge_shared_state_up` of `node` is `up`.
    async fn wait_shared(&self, node: usize, up: bool) {
        let want = format!("ccedge_shared_state_up {}", u8::from(up));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.metrics(node).await.lines().any(|l| l == want) {
            assert!(Instant::now() < deadline, "node {node} never had {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks `node` until `status` answers (another instance's announcement arrives), 2 s at
    /// most; the last answer.
    async fn until(&self, node: usize, path: &str, auth: &str, status: u16) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let answer = self.get(node, path, Some(auth)).await;
            if answer.status == status || Instant::now() > deadline {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn rand_key() -> Vec<u8> {
    (0..32).map(|i| (i * 37 + 11) as u8).collect()
}

#[tokio::test]
async fn a_lockout_on_one_instance_blocks_on_every_instance() {
    let cluster = Cluster::start("shared-lockout", 3).await;
    let path = "/finesse/api/User/agent2";
    for (i, node) in [0, 1, 0, 2, 1].into_iter().enumerate() {
        let guess = basic("agent2", &format!("guess{i}"));
        let answer = cluster.get(node, path, Some(&guess)).await;
        assert_eq!(
            answer.status, 401,
            "guess {i} on node {node}: {}",
            answer.body
        );
    }
    // The fifth failure, on B, blocks agent2 at this address on A, B and C.
    for node in 0..3 {
        let answer = cluster
            .until(node, path, &basic("agent2", "secret"), 429)
            .await;
        assert_eq!(answer.status, 429, "node {node}: {}", answer.body);
        assert!(
            answer.body.contains("for agent2 from 127.0.0.1"),
            "{}",
            answer.body
        );
    }
    assert_eq!(cluster.validator.calls("agent2"), 5);
    let lockouts = &cluster.status(2).await["services"][0]["auth"]["lockouts"];
    assert_eq!(lockouts[0]["user"], "agent2", "{lockouts}");
    // Colleagues at the same address are not blocked.
    let bob = cluster
        .get(
            2,
            "/finesse/api/User/agent3",
            Some(&basic("agent3", "secret")),
        )
        .await;
    assert_eq!(bob.status, 200);
    // The instance whose failure reached the limit in Redis says so (once).
    let line = "user agent2 blocked at 127.0.0.1 for 1800 seconds after 5 failed logins";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let said: usize = cluster
            .nodes
            .iter()
            .map(|n| n.ccedge.stderr_text().matches(line).count())
            .sum();
        if said == 1 {
            break;
        }
        assert!(said == 0 && Instant::now() < deadline, "said {said} times");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_credential_validated_on_one_instance_is_not_validated_on_another() {
    let cluster = Cluster::start("shared-verdict", 3).await;
    let path = "/finesse/api/User/agent1";
    let good = basic("agent1", "secret");
    assert_eq!(cluster.get(0, path, Some(&good)).await.status, 200);
    assert_eq!(cluster.validator.calls("agent1"), 1);
    // The verdict is kept in Redis in the background, within milliseconds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for node in [1, 2, 1] {
        assert_eq!(cluster.get(node, path, Some(&good)).await.status, 200);
    }
    assert_eq!(
        cluster.validator.calls("agent1"),
        1,
        "validated once for the cluster"
    );
    // A refusal is shared too, and counts as a failure where it is answered.
    let wrong = basic("agent4", "wrong");
    assert_eq!(cluster.user(0, "agent4", &wrong).await, 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cluster.user(1, "agent4", &wrong).await, 401);
    assert_eq!(cluster.validator.calls("agent4"), 1);
    // Nothing in Redis holds a credential: keys and values are keyed hashes, verdicts, counts.
    let keys = cluster.redis.cli(&["--scan"]).await.unwrap();
    assert!(keys.contains(":v:"), "{keys}");
    let mut everything = keys.clone();
    for key in keys.lines() {
        let value = cluster.redis.cli(&["DUMP", key]).await.unwrap_or_default();
        everything.push_str(&value);
    }
    let encoded = [
        STANDARD.encode("agent1:secret"),
        STANDARD.encode("agent4:wrong"),
    ];
    for secret in ["secret", "wrong", &encoded[0], &encoded[1]] {
        assert!(!everything.contains(secret), "{secret} in Redis");
    }
}

#[tokio::test]
async fn a_verdict_written_into_redis_by_someone_else_is_not_believed() {
    let cluster = Cluster::start("shared-forged", 2).await;
    let wrong = basic("agent8", "wrong");
    let path = "/finesse/api/User/agent8";
    assert_eq!(cluster.get(0, path, Some(&wrong)).await.status, 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Whoever can write to Redis turns the refusal into a pass for agent8.
    let keys = cluster
        .redis
        .cli(&["--scan", "--pattern", "*:v:*"])
        .await
        .unwrap();
    let key = keys.lines().next().expect("the refusal is kept in Redis");
    let kept = cluster.redis.cli(&["GET", key]).await.unwrap();
    let forged = kept
        .replace("\"valid\":false", "\"valid\":true")
        .replace("\"user\":null", "\"user\":\"agent8\"");
    assert_ne!(forged, kept, "{kept}");
    assert_eq!(
        cluster.redis.cli(&["SET", key, &forged]).await.as_deref(),
        Some("OK")
    );
    let answer = cluster.get(1, path, Some(&wrong)).await;
    assert_eq!(
        answer.status, 401,
        "a forged verdict let a wrong password in: {}",
        answer.body
    );
    assert_eq!(cluster.validator.calls("agent8"), 2, "judged again on B");
    cluster.nodes[1]
        .ccedge
        .wait_stderr("is not sealed with this instance's key_file")
        .await;
}

#[tokio::test]
async fn parallel_guesses_across_instances_cannot_outrun_the_lockout() {
    let cluster = Arc::new(Cluster::start("shared-parallel", 3).await);
    cluster.validator.delay_ms.store(300, Ordering::SeqCst);
    let guesses: Vec<_> = (0..15)
        .map(|i| {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let guess = basic("agent5", &format!("guess{i}"));
                cluster
                    .get(i % 3, "/finesse/api/User/agent5", Some(&guess))
                    .await
                    .status
            })
        })
        .collect();
    for guess in guesses {
        let status = guess.await.unwrap();
        assert!(matches!(status, 401 | 429), "{status}");
    }
    assert!(
        cluster.validator.calls("agent5") <= 5,
        "{} guesses judged across the instances",
        cluster.validator.calls("agent5")
    );
}

#[tokio::test]
async fn lifting_revoking_and_purging_reach_every_instance() {
    let cluster = Cluster::start("shared-admin", 3).await;
    let path = "/finesse/api/User/agent2";
    for i in 0..5 {
        let guess = basic("agent2", &format!("guess{i}"));
        assert_eq!(cluster.get(0, path, Some(&guess)).await.status, 401);
    }
    let good = basic("agent2", "secret");
    assert_eq!(cluster.until(2, path, &good, 429).await.status, 429);
    // Lifted on B: agent2 signs in on A and C.
    let lift = "/auth/lockouts/127.0.0.1?user=agent2";
    assert_eq!(cluster.admin(1, "DELETE", lift).await, 200);
    for node in [0, 2] {
        let answer = cluster.until(node, path, &good, 200).await;
        assert_eq!(answer.status, 200, "node {node}: {}", answer.body);
    }

    // agent1 known on every instance, then revoked on C: checked again on A and B.
    let agent1 = basic("agent1", "secret");
    for node in 0..3 {
        assert_eq!(cluster.user(node, "agent1", &agent1).await, 200);
    }
    let before = cluster.validator.calls("agent1");
    assert_eq!(cluster.admin(2, "DELETE", "/auth/users/agent1").await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for node in [0, 1] {
        assert_eq!(cluster.user(node, "agent1", &agent1).await, 200);
    }
    assert!(
        cluster.validator.calls("agent1") > before,
        "the revocation reached the other instances"
    );
    cluster.nodes[0]
        .ccedge
        .wait_stderr("user agent1 revoked by another instance's admin listener")
        .await;

    // A desktop asset cached on every instance, purged on A.
    for node in 0..3 {
        assert_eq!(cluster.get(node, "/desktop/app.js", None).await.status, 200);
        let entries = &cluster.status(node).await["services"][0]["cache"]["entries"];
        assert_eq!(entries, 1, "node {node}");
    }
    assert_eq!(cluster.admin(0, "DELETE", "/cache").await, 200);
    for node in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(2);
        while cluster.status(node).await["services"][0]["cache"]["entries"] != 0 {
            assert!(Instant::now() < deadline, "node {node} kept its cache");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn with_redis_down_no_request_fails_and_back_the_instances_exchange_their_blocks() {
    let mut cluster = Cluster::start("shared-down", 2).await;
    let good = basic("agent1", "secret");
    assert_eq!(cluster.user(0, "agent1", &good).await, 200);
    cluster.redis.kill();
    // Requests go on: known credentials, new ones, failures, all on local state.
    for node in 0..2 {
        let answer = cluster
            .get(node, "/finesse/api/User/agent1", Some(&good))
            .await;
        assert_eq!(answer.status, 200, "node {node}: {}", answer.body);
        let agent6 = basic("agent6", "secret");
        let answer = cluster
            .get(node, "/finesse/api/User/agent6", Some(&agent6))
            .await;
        assert_eq!(answer.status, 200, "node {node}: {}", answer.body);
        cluster.wait_shared(node, false).await;
    }
    for i in 0..5 {
        let guess = basic("agent7", &format!("guess{i}"));
        assert_eq!(cluster.user(0, "agent7", &guess).await, 401);
    }
    let agent7 = basic("agent7", "secret");
    assert_eq!(cluster.user(0, "agent7", &agent7).await, 429);
    assert_eq!(
        cluster.user(1, "agent7", &agent7).await,
        200,
        "not shared while Redis is down"
    );
    cluster.nodes[0].ccedge.wait_stderr("is down or slow").await;

    // Back (empty): A gives its block back, and B applies it.
    cluster.redis.restart().await;
    for node in 0..2 {
        cluster.wait_shared(node, true).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = cluster
            .get(1, "/finesse/api/User/agent7", Some(&agent7))
            .await;
        if answer.status == 429 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never learnt of A's block: {}",
            answer.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.nodes[0]
        .ccedge
        .wait_stderr("answers: lockouts, verdicts")
        .await;
    let stderr = cluster.nodes[0].ccedge.stderr_text();
    assert_eq!(
        stderr.matches("is down or slow").count(),
        1,
        "said once: {stderr}"
    );
}

#[tokio::test]
async fn a_rate_limit_holds_across_instances_within_the_documented_error() {
    // 100 requests a second per address; three instances each sent 100 a second for 2 s.
    let extra = "    rate_limits:\n      - {path_prefix: /desktop/, per_second: 100, burst: 0}\n";
    let cluster = Arc::new(Cluster::with("shared-rate", 3, extra).await);
    // Start just after a second begins.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1020 - u64::from(now.subsec_millis()))).await;
    let senders: Vec<_> = (0..3)
        .map(|node| {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let port = cluster.nodes[node].port;
                let mut client = Client::new(
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    &format!("{HOST}:{port}"),
                );
                let (mut admitted, mut refused) = (0, 0);
                let began = tokio::time::Instant::now();
                for i in 0..200u64 {
                    tokio::time::sleep_until(began + Duration::from_millis(i * 10)).await;
                    match client.get("/desktop/app.js").await.unwrap().status {
                        200 => admitted += 1,
                        429 => refused += 1,
                        other => panic!("{other}"),
                    }
                }
                (admitted, refused)
            })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for sender in senders {
        let (a, r) = sender.await.unwrap();
        admitted += a;
        refused += r;
    }
    // Alone, each instance would admit all of its own 200. Shared: 100 a second, plus up to a
    // quarter of the limit from each other instance and what they sent in the last 200 ms.
    assert!(admitted <= 420, "{admitted} admitted, {refused} refused");
    assert!(admitted >= 150, "{admitted} admitted, {refused} refused");
}

#[tokio::test]
async fn a_redis_that_hangs_costs_a_request_timeout_ms_at_most() {
    let cluster = Cluster::start("shared-slow", 2).await;
    let good = basic("agent1", "secret");
    assert_eq!(cluster.user(0, "agent1", &good).await, 200);
    cluster.redis.pause(true);
    // A new credential: its reservation waits timeout_ms (1 s here), then it is judged here.
    let began = Instant::now();
    let agent2 = basic("agent2", "secret");
    assert_eq!(cluster.user(0, "agent2", &agent2).await, 200);
    let first = began.elapsed();
    assert!(first < Duration::from_secs(3), "{first:?}");
    cluster.wait_shared(0, false).await;
    // Marked down: no request waits on it any more.
    let began = Instant::now();
    for n in 3..8 {
        let agent = basic(&format!("agent{n}"), "secret");
        let path = format!("/finesse/api/User/agent{n}");
        assert_eq!(cluster.get(0, &path, Some(&agent)).await.status, 200);
    }
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    cluster.redis.pause(false);
    cluster.wait_shared(0, true).await;
}

#[tokio::test]
async fn the_leases_of_one_credential_share_a_place_and_each_is_given_back_alone() {
    // The scripts as ccedge runs them, against a real Redis.
    let dir = TestDir::new("shared-leases");
    let redis = Redis::start(&dir).await;
    let reserve = include_str!("../../src/state/scripts/reserve.lua");
    let settle = include_str!("../../src/state/scripts/settle.lua");
    let digest = |n: u8| format!("{n:02x}").repeat(32);
    let keys = ["p:v:x", "p:f:ip", "p:j:ip", "p:b:ip"];
    let ask = |d: String, lease: String| {
        let redis = &redis;
        async move {
            let mut args = vec!["EVAL", reserve, "4"];
            args.extend(keys);
            args.extend(["p:", &d, &lease, "60000", "60000", "2"]);
            redis.cli(&args).await.unwrap()
        }
    };
    let give_back = |lease: String| {
        let redis = &redis;
        async move {
            let mut args = vec!["EVAL", settle, "4", "p:blocks"];
            args.extend(&keys[1..]);
            args.extend([
                lease.as_str(),
                "0",
                "-",
                "t",
                "60000",
                "1000",
                "c",
                "i",
                "ip",
                "",
                "",
                "2",
                "ip",
            ]);
            redis.cli(&args).await.unwrap()
        }
    };
    // Two places (limit 2): credential 1 twice (one place), credential 2 once.
    assert_eq!(ask(digest(1), format!("{}:a", digest(1))).await, "ok");
    assert_eq!(
        ask(digest(1), format!("{}:b", digest(1))).await,
        "ok",
        "shares its place"
    );
    assert_eq!(ask(digest(2), format!("{}:c", digest(2))).await, "ok");
    assert!(ask(digest(3), format!("{}:d", digest(3)))
        .await
        .starts_with("full"));
    // One copy of credential 1 given back (its request went away): the other still holds
    // the place.
    give_back(format!("{}:b", digest(1))).await;
    assert!(ask(digest(3), format!("{}:d", digest(3)))
        .await
        .starts_with("full"));
    give_back(format!("{}:a", digest(1))).await;
    assert_eq!(ask(digest(3), format!("{}:d", digest(3))).await, "ok");
}

#[tokio::test]
async fn over_tls_with_a_client_certificate_and_a_password_and_not_with_another_ca() {
    let dir = TestDir::new("shared-tls");
    let ca = crate::harness::Ca::new("redis");
    let redis = Redis::start_tls(&dir, &ca, "s3cret-pass").await;
    let password = dir.write("redis.password", "s3cret-pass\n");
    let (client_cert, client_key) = (dir.join("redis-client.crt"), dir.join("redis-client.key"));
    let tls = move |ca: &std::path::Path| {
        format!(
            "    password_file: {}\n    ca: {}\n    client_cert: {}\n    client_key: {}\n",
            password.display(),
            ca.display(),
            client_cert.display(),
            client_key.display()
        )
    };
    let shared = tls(&dir.join("redis-ca.pem"));
    let cluster = Cluster::over(dir, redis, 2, "", &shared).await;
    for node in 0..2 {
        cluster.wait_shared(node, true).await;
    }
    let good = basic("agent1", "secret");
    assert_eq!(cluster.user(0, "agent1", &good).await, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cluster.user(1, "agent1", &good).await, 200);
    assert_eq!(cluster.validator.calls("agent1"), 1, "shared over TLS");

    // An instance that trusts another CA never reaches it, and serves on its own state.
    let other = TestDir::new("shared-tls-other");
    let stranger = crate::harness::Ca::new("stranger").write(&other.join("stranger.pem"));
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "{server}  shared_state:\n    redis_url: {url}\n    key_file: {key}\n{tls}\
         finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    \
         servers:\n      - public: {HOST}:{port}\n        upstream: {app}\n        role: other\n    \
         auth:\n      validate_url: http://{validator}/finesse/api/UserAuth\n",
        server = server_block(&other.path, Some(admin)),
        url = cluster.redis.url(),
        key = cluster.dir.join("state.key").display(),
        tls = tls(&stranger),
        app = cluster.app.authority(),
        validator = cluster.validator_upstream.authority(),
    );
    let lone = Ccedge::start(&other, &yaml, &[port, admin]).await;
    let mut client = Client::new(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &format!("{HOST}:{port}"),
    );
    let answer = client
        .send(
            "GET",
            "/finesse/api/User/agent1",
            &[("Authorization", &good)],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "served on its own state");
    lone.wait_stderr("does not answer").await;
    let metrics = curl(&[&format!("http://127.0.0.1:{admin}/metrics")])
        .await
        .unwrap()
        .body;
    assert!(
        metrics.lines().any(|l| l == "ccedge_shared_state_up 0"),
        "{metrics}"
    );
}
