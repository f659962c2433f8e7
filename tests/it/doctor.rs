//! `ccedge doctor`: a healthy set-up reports all OK; each deployment mistake it knows is
//! produced with real upstreams and reported as FAIL with the right advice.

use crate::harness::raw::{Behaviour, RawUpstream};
use crate::harness::upstream::{full, Handler};
use crate::harness::{binary, free_port, server_block, Ca, TestDir, Upstream};
use serde_json::Value;
use std::sync::Arc;

/// Runs `ccedge doctor -c FILE` with `flags`, trusting the CA in `trusted` as this machine's
/// roots when given: exit code and output.
async fn doctor(
    config: &std::path::Path,
    flags: &[&str],
    trusted: Option<&std::path::Path>,
) -> (i32, String) {
    let mut command = tokio::process::Command::new(binary());
    if let Some(ca) = trusted {
        command.env("SSL_CERT_FILE", ca).env_remove("SSL_CERT_DIR");
    }
    let out = command
        .args(["doctor", "-c", config.to_str().unwrap()])
        .args(flags)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An upstream answering every request with `status`.
async fn answering(status: u16, body: &'static str) -> Upstream {
    let handler: Handler = Arc::new(move |_| {
        Box::pin(async move {
            hyper::Response::builder()
                .status(status)
                .body(full(body))
                .unwrap()
        })
    });
    Upstream::custom("fixed", handler).await
}

/// The leaf and its CA in one file: a complete chain.
fn with_chain(pair: &crate::harness::certs::Pair, ca: &Ca) -> String {
    let chained = format!("{}{}", pair.cert_pem, ca.pem);
    std::fs::write(&pair.cert, &chained).unwrap();
    pair.cert.display().to_string()
}

#[tokio::test]
async fn a_healthy_set_up_is_all_ok() {
    let dir = TestDir::new("doctor-healthy");
    let ca = Ca::new("doctor");
    let ca_file = ca.write(&dir.join("ca.crt"));
    let dc_cert = ca.server(&dir.path, "dc", &["dc.example.com"]);
    let site_cert = ca.server(&dir.path, "site", &["*.example.com"]);
    let node_cert = ca.server(&dir.path, "node", &["127.0.0.1"]);
    let client = ca.client(&dir.path, "ccedge-client");
    // Both nodes require a client certificate: their 200 shows the probes presented ccedge's.
    let publisher = Upstream::tls("publisher", &node_cert, Some(&ca)).await;
    let subscriber = Upstream::tls("subscriber", &node_cert, Some(&ca)).await;
    let finesse = Upstream::plain("finesse").await;
    let validator = answering(401, "credentials please").await;
    let side_b = answering(401, "credentials please").await;
    let key = openssl::rsa::Rsa::generate(2048).unwrap();
    let pem: &'static str =
        String::leak(String::from_utf8(key.public_key_to_pem().unwrap()).unwrap());
    let keys = answering(200, pem).await;
    let (dc_port, site_port, map_port) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{dc_port}\n    public: dc.example.com:443\n    \
         tls:\n      cert: {dc_crt}\n      key: {dc_key}\n    publisher: {p}\n    subscriber: {s}\n    \
         upstream_tls:\n      ca: {ca}\n      client_cert: {cc}\n      client_key: {ck}\n\
         finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    \
         tls:\n      cert: {s_crt}\n      key: {s_key}\n    \
         servers:\n      - public: finesse.example.com:{site_port}\n        upstream: {f}\n    \
         proxy_map:\n      listen: 127.0.0.1:{map_port}\n    \
         auth:\n      validate_url: [http://{v}/finesse/api/UserAuth, http://{b}/finesse/api/UserAuth]\n      \
         jwt:\n        keys_url: http://{k}/ids/v1/keys\n",
        server = server_block(&dir.path, None),
        dc_crt = with_chain(&dc_cert, &ca),
        dc_key = dc_cert.key.display(),
        s_crt = with_chain(&site_cert, &ca),
        s_key = site_cert.key.display(),
        p = publisher.authority(),
        s = subscriber.authority(),
        ca = ca_file.display(),
        cc = client.cert.display(),
        ck = client.key.display(),
        f = finesse.authority(),
        v = validator.authority(),
        b = side_b.authority(),
        k = keys.authority(),
    );
    let file = dir.write("ccedge.yaml", &yaml);
    // The listener chains end at the test CA, which this machine trusts for the run.
    let (code, said) = doctor(&file, &[], Some(&ca_file)).await;
    assert_eq!(code, 0, "{said}");
    let lines: Vec<&str> = said.lines().filter(|l| !l.starts_with("     ->")).collect();
    let (checks, summary) = lines.split_at(lines.len() - 1);
    assert!(
        checks.iter().all(|l| l.starts_with("OK ")),
        "not all OK:\n{said}"
    );
    assert!(summary[0].ends_with("0 WARN, 0 FAIL"), "{said}");
    for expected in [
        "listener cc: certificate covers dc.example.com",
        "listener desktop: certificate covers finesse.example.com",
        "chain: 2 certificate(s) ending at the root doctor test CA, trusted by this machine",
        &format!("digital cc publisher {}: TLS", publisher.authority()),
        "names 127.0.0.1",
        "GET /drapi/v1/ping with Host dc.example.com:443: 200",
        "GET /finesse/api/SystemInfo with Host finesse.example.com",
        &format!("auth.validate_url[0] {}", validator.authority()),
        &format!("auth.validate_url[1] {}", side_b.authority()),
        "without credentials: 401",
        "1 signing key(s)",
        &format!(
            "proxy map desktop: {}=finesse.example.com:{site_port}",
            finesse.authority()
        ),
    ] {
        assert!(
            said.contains(expected),
            "the report lacks {expected:?}:\n{said}"
        );
    }
}

#[tokio::test]
async fn each_deployment_mistake_is_a_fail_with_its_advice() {
    let dir = TestDir::new("doctor-broken");
    let ca = Ca::new("doctor-broken");
    let ca_file = ca.write(&dir.join("ca.crt"));
    let expired = ca.expired_server(&dir.path, "dc", &["dc.example.com"]);
    let wrong_name = ca.server(&dir.path, "site", &["other.example.com", "127.0.0.1"]);
    let node_cert = ca.server(&dir.path, "node", &["127.0.0.1"]);
    let needs_client_cert = Upstream::tls("publisher", &node_cert, Some(&ca)).await;
    let dead = free_port();
    let refuses_host = answering(400, "Bad Request").await;
    let silent = RawUpstream::start(Behaviour::Silent).await;
    let (dc_port, site_port, map_port, moved, unserved) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let yaml = format!(
        "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{dc_port}\n    public: dc.example.com:443\n    \
         tls:\n      cert: {dc_crt}\n      key: {dc_key}\n    publisher: {p}\n    subscriber: 127.0.0.1:{dead}\n    \
         upstream_tls:\n      ca: {ca}\n\
         finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    \
         tls:\n      cert: {s_crt}\n      key: {s_key}\n    \
         servers:\n      - public: finesse.example.com:{site_port}\n        upstream: {r}\n      \
         - public: 127.0.0.1:{unserved}\n        upstream: {q}\n        role: cuic\n        listen_port: {moved}\n    \
         proxy_map:\n      listen: 127.0.0.1:{map_port}\n",
        server = server_block(&dir.path, None),
        dc_crt = expired.cert.display(),
        dc_key = expired.key.display(),
        s_crt = wrong_name.cert.display(),
        s_key = wrong_name.key.display(),
        p = needs_client_cert.authority(),
        ca = ca_file.display(),
        r = refuses_host.authority(),
        q = silent.authority(),
    );
    let file = dir.write("ccedge.yaml", &yaml);
    let (code, said) = doctor(&file, &["--timeout", "2"], None).await;
    assert_eq!(code, 1, "{said}");
    let fail = |check: &str, found: &str, advice: &str| {
        let at = said
            .lines()
            .position(|l| l.starts_with("FAIL") && l.contains(check) && l.contains(found))
            .unwrap_or_else(|| panic!("no FAIL for {check:?} saying {found:?}:\n{said}"));
        let next = said.lines().nth(at + 1).unwrap_or_default();
        assert!(
            next.starts_with("     -> ") && next.contains(advice),
            "the advice for {check:?} is {next:?}, not {advice:?}"
        );
    };
    fail(
        "listener cc: certificate",
        "expired on",
        "renew the certificate now",
    );
    fail(
        "listener desktop: certificate covers finesse.example.com",
        "names only other.example.com",
        "reissued with finesse.example.com",
    );
    fail(
        &format!(
            "digital cc publisher {}: TLS",
            needs_client_cert.authority()
        ),
        "mTLS refused",
        "set upstream_tls.client_cert",
    );
    fail(
        &format!("digital cc subscriber 127.0.0.1:{dead}: connect"),
        "Connection refused",
        "the server is down",
    );
    fail(
        &format!("finesse desktop finesse.example.com:{site_port}"),
        &format!("this server does not list finesse.example.com:{site_port} as an allowed reverse-proxy host"),
        "utils system reverse-proxy allowed-hosts add finesse.example.com",
    );
    fail(
        &format!(
            "finesse desktop 127.0.0.1:{unserved} {}: HTTP",
            silent.authority()
        ),
        "no answer within 2000 ms",
        "does not answer HTTP in time",
    );
    fail(
        &format!(
            "proxy map desktop: {}=127.0.0.1:{unserved}",
            silent.authority()
        ),
        "is not served by a listener of this configuration",
        &format!("forward port {unserved} of 127.0.0.1 to port {moved}"),
    );

    let (code, json) = doctor(&file, &["--json", "--timeout", "2"], None).await;
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(report["ok"], false);
    let failed: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "FAIL")
        .collect();
    assert_eq!(
        failed.len(),
        said.lines().filter(|l| l.starts_with("FAIL")).count()
    );
    assert!(failed
        .iter()
        .all(|c| c["advice"].as_str().is_some_and(|a| !a.is_empty())));
}

#[tokio::test]
async fn a_configuration_that_does_not_load_is_a_fail_too() {
    let dir = TestDir::new("doctor-unloadable");
    let port = free_port();
    let yaml = format!(
        "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: dc.example.com:443\n    \
         publisher: no-such-host.invalid:8445\n    subscriber: 127.0.0.1:9\n",
        server = server_block(&dir.path, None),
    );
    let file = dir.write("ccedge.yaml", &yaml);
    let (code, said) = doctor(&file, &[], None).await;
    assert_eq!(code, 1, "{said}");
    assert!(
        said.lines()
            .any(|l| l.starts_with("FAIL configuration") && l.contains("no-such-host.invalid")),
        "{said}"
    );
}
