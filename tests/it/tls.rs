//! TLS on both sides: what the listener accepts, and how upstream certificates are checked.

use crate::harness::fixtures::{args, https, Digital};
use crate::harness::{curl, free_port, handshake, server_block, Ca, Ccedge, TestDir, Upstream};

#[tokio::test]
async fn listener_refuses_old_protocols_and_non_aead_ciphers() {
    let dc = Digital::start("tls-listener", "").await;
    let port = dc.port;
    let (ok, old) = tokio::task::spawn_blocking(move || {
        (
            handshake(
                port,
                &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
            ),
            [
                handshake(port, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
                handshake(port, &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
                handshake(port, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"]),
                handshake(port, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA384"]),
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "TLS 1.2 with an AEAD ECDHE suite must work");
    assert_eq!(old, [false; 4], "TLS 1.0/1.1 or a CBC suite was accepted");
}

#[tokio::test]
async fn both_http_versions_over_tls_1_2_and_1_3() {
    let dc = Digital::start("tls-versions", "").await;
    for (flags, version) in [
        (&["--http2", "--tlsv1.2", "--tls-max", "1.2"][..], "HTTP/2"),
        (&["--http2", "--tlsv1.3"][..], "HTTP/2"),
        (
            &["--http1.1", "--tlsv1.2", "--tls-max", "1.2"][..],
            "HTTP/1.1",
        ),
    ] {
        let reply = curl(&args(flags, &dc.url("/drapi/v1/ping"))).await.unwrap();
        assert_eq!(reply.version, version, "{flags:?}");
        assert_eq!(reply.echo().node(), "publisher");
    }
}

/// A Finesse site whose one server speaks TLS with a certificate from `upstream_ca`, and
/// ccedge configured with `upstream_tls` (indented four spaces).
async fn tls_upstream_site(
    name: &str,
    upstream_tls: &str,
    signed_by_test_ca: bool,
    cert_names: &[&str],
) -> (TestDir, Upstream, Ccedge, u16, u16) {
    let dir = TestDir::new(name);
    let ca = Ca::new(name);
    ca.write(&dir.join("ca.crt"));
    let proxy = ca.server(&dir.path, "proxy", &["finesse1.example.com"]);
    let other_ca = Ca::new("stranger");
    let issuer = if signed_by_test_ca { &ca } else { &other_ca };
    let upstream_cert = issuer.server(&dir.path, "upstream", cert_names);
    let upstream = Upstream::tls("finesse", &upstream_cert, None).await;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    tls:\n      cert: {c}\n      key: {k}\n\
         {upstream_tls}    servers:\n      - public: finesse1.example.com:{port}\n        upstream: {u}\n",
        server = server_block(&dir.path, Some(admin)),
        c = proxy.cert.display(),
        k = proxy.key.display(),
        upstream_tls = upstream_tls.replace("@DIR@", &dir.path.display().to_string()),
        u = upstream.authority(),
    );
    let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
    (dir, upstream, ccedge, port, admin)
}

#[tokio::test]
async fn upstream_certificate_is_verified_against_the_configured_ca() {
    let verified =
        "    upstream_tls:\n      ca: @DIR@/ca.crt\n      server_name: finesse1.cc.internal\n";
    let (dir, upstream, _proxy, port, admin) =
        tls_upstream_site("tls-up-ok", verified, true, &["finesse1.cc.internal"]).await;
    let reply = curl(&args(
        &[],
        &https(&dir, "finesse1.example.com", port, "/finesse/"),
    ))
    .await
    .unwrap();
    assert_eq!(reply.echo().node(), "finesse");
    assert_eq!(upstream.hits(), 1);
    // Both certificates' expiry is a metric: the listener's from the start, the upstream's
    // from the first connection to it.
    let metrics = curl(&[&format!("http://127.0.0.1:{admin}/metrics")])
        .await
        .unwrap()
        .body;
    let expiry = |labels: &str| -> i64 {
        let series = format!("ccedge_certificate_expiry_timestamp_seconds{{{labels}}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}in\n{metrics}"))
            .parse()
            .unwrap()
    };
    let file_expiry = |file: &str| -> i64 {
        let pem = std::fs::read(dir.join(file)).unwrap();
        let cert = openssl::x509::X509::from_pem(&pem).unwrap();
        let epoch = openssl::asn1::Asn1Time::from_unix(0).unwrap();
        let d = epoch.diff(cert.not_after()).unwrap();
        i64::from(d.days) * 86_400 + i64::from(d.secs)
    };
    assert_eq!(
        expiry(r#"certificate="finesse1.example.com",role="listener",service="desktop""#),
        file_expiry("proxy.crt")
    );
    assert_eq!(
        expiry(&format!(
            r#"certificate="{}",role="upstream",service="desktop""#,
            upstream.authority()
        )),
        file_expiry("upstream.crt")
    );
}

#[tokio::test]
async fn tls_upstream_connections_are_reused() {
    let verified =
        "    upstream_tls:\n      ca: @DIR@/ca.crt\n      server_name: finesse1.cc.internal\n";
    let (dir, upstream, _proxy, port, _) =
        tls_upstream_site("tls-up-reuse", verified, true, &["finesse1.cc.internal"]).await;
    for _ in 0..5 {
        let reply = curl(&args(
            &[],
            &https(&dir, "finesse1.example.com", port, "/finesse/"),
        ))
        .await
        .unwrap();
        assert_eq!(reply.echo().node(), "finesse");
    }
    assert_eq!((upstream.hits(), upstream.connections()), (5, 1));
}

#[tokio::test]
async fn upstream_ip_address_is_checked_against_the_certificate() {
    let verified = "    upstream_tls:\n      ca: @DIR@/ca.crt\n";
    let (dir, _upstream, _proxy, port, _) = tls_upstream_site(
        "tls-up-ip",
        verified,
        true,
        &["finesse1.cc.internal", "127.0.0.1"],
    )
    .await;
    let reply = curl(&args(&[], &https(&dir, "finesse1.example.com", port, "/")))
        .await
        .unwrap();
    assert_eq!(reply.echo().node(), "finesse");

    let (dir, upstream, proxy, port, _) = tls_upstream_site(
        "tls-up-ip-wrong",
        verified,
        true,
        &["finesse1.cc.internal", "127.0.0.2"],
    )
    .await;
    let reply = curl(&args(&[], &https(&dir, "finesse1.example.com", port, "/")))
        .await
        .unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(upstream.hits(), 0);
    let line = proxy.log_entry(reply.header("trackingid").unwrap()).await;
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("does not name 127.0.0.1"),
        "{line}"
    );
}

#[tokio::test]
async fn upstream_from_an_unknown_ca_is_refused_unless_verify_is_off() {
    let strict =
        "    upstream_tls:\n      ca: @DIR@/ca.crt\n      server_name: finesse1.cc.internal\n";
    let (dir, upstream, proxy, port, _) =
        tls_upstream_site("tls-up-bad", strict, false, &["finesse1.cc.internal"]).await;
    let reply = curl(&args(&[], &https(&dir, "finesse1.example.com", port, "/")))
        .await
        .unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(upstream.hits(), 0);
    let line = proxy.log_entry(reply.header("trackingid").unwrap()).await;
    assert!(
        line["error"].as_str().unwrap().contains("certificate"),
        "{line}"
    );

    let lax = "    upstream_tls:\n      verify: false\n";
    let (dir, upstream, proxy, port, _) =
        tls_upstream_site("tls-up-lax", lax, false, &["finesse1.cc.internal"]).await;
    let reply = curl(&args(&[], &https(&dir, "finesse1.example.com", port, "/")))
        .await
        .unwrap();
    assert_eq!(reply.echo().node(), "finesse");
    assert_eq!(upstream.hits(), 1);
    proxy.wait_stderr("upstream_tls.verify is false").await;
}

/// The subject line of the certificate 127.0.0.1:`port` presents to a client sending `sni`
/// (none: no SNI at all).
fn presented_subject(port: u16, sni: Option<&str>) -> String {
    let mut command = std::process::Command::new("openssl");
    command.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    match sni {
        Some(name) => command.args(["-servername", name]),
        None => command.arg("-noservername"),
    };
    let out = command
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no certificate presented:\n{text}"))
        .to_string()
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_exact_then_wildcard_the_first_by_default() {
    let dir = TestDir::new("tls-sni");
    let ca = Ca::new("tls-sni");
    ca.write(&dir.join("ca.crt"));
    let finesse = ca.server(&dir.path, "finesse", &["finesse1.example.com"]);
    let wildcard = ca.server(&dir.path, "wildcard", &["*.example.net"]);
    let (a, b) = (Upstream::plain("a").await, Upstream::plain("b").await);
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    rate_limits: []\n    tls:\n      certificates:\n        \
         - cert: {fc}\n          key: {fk}\n        - cert: {wc}\n          key: {wk}\n    servers:\n      \
         - public: finesse1.example.com:{port}\n        upstream: {a}\n      \
         - public: cuic1.example.net:{port}\n        upstream: {b}\n        role: cuic\n",
        server = server_block(&dir.path, Some(admin)),
        fc = finesse.cert.display(),
        fk = finesse.key.display(),
        wc = wildcard.cert.display(),
        wk = wildcard.key.display(),
        a = a.authority(),
        b = b.authority(),
    );
    let _ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;

    // curl checks the name: each host gets a certificate naming it, over both HTTP versions.
    for (host, node) in [("finesse1.example.com", "a"), ("cuic1.example.net", "b")] {
        for version in ["--http2", "--http1.1"] {
            let reply = curl(&args(&[version], &https(&dir, host, port, "/x")))
                .await
                .unwrap_or_else(|e| panic!("{host} {version}: {e}"));
            assert_eq!(reply.status, 200, "{host}");
            assert_eq!(reply.echo().node(), node);
        }
    }
    let subjects = tokio::task::spawn_blocking(move || {
        [
            presented_subject(port, Some("CUIC1.example.NET")),
            presented_subject(port, Some("a.b.example.net")),
            presented_subject(port, Some("unknown.example.org")),
            presented_subject(port, None),
        ]
    })
    .await
    .unwrap();
    assert!(subjects[0].contains("*.example.net"), "{subjects:?}");
    for default in &subjects[1..] {
        assert!(default.contains("finesse1.example.com"), "{subjects:?}");
    }

    // -t and /status show each certificate and the hosts it answers for.
    let config = dir.join("ccedge.yaml");
    let checked = std::process::Command::new(crate::harness::binary())
        .args(["-t", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "certificate {} (default): names finesse1.example.com; expires",
            finesse.cert.display()
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "certificate {}: names *.example.net;",
            wildcard.cert.display()
        )),
        "{said}"
    );
    let status = curl(&[&format!("http://127.0.0.1:{admin}/status")])
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    let certificates = status["services"][0]["certificates"].as_array().unwrap();
    let covers: Vec<&serde_json::Value> = certificates.iter().map(|c| &c["covers"]).collect();
    assert_eq!(
        covers,
        [
            &serde_json::json!(["finesse1.example.com"]),
            &serde_json::json!(["cuic1.example.net"])
        ]
    );
}

/// One connection to the listener as a browser makes it, with `openssl s_client` over TLS
/// `version` (`-tls1_2`, `-tls1_3`), offering the session saved in `offer` if given: a keep-alive
/// request and its answer, then the client is killed, so its socket closes without a
/// close_notify (a tab closed, a laptop asleep). Whether the session was resumed; the session
/// to offer next is saved in `save`.
fn connection_offering(
    port: u16,
    ca: &std::path::Path,
    version: &str,
    offer: Option<&std::path::Path>,
    save: &std::path::Path,
) -> bool {
    use std::io::{BufRead, Write};
    let mut command = std::process::Command::new("openssl");
    command
        .args([
            "s_client",
            version,
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["-servername", crate::harness::fixtures::DC_HOST])
        .arg("-CAfile")
        .arg(ca)
        .arg("-sess_out")
        .arg(save);
    if let Some(offer) = offer {
        command.arg("-sess_in").arg(offer);
    }
    let mut client = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl is installed");
    let mut stdin = client.stdin.take().unwrap();
    stdin
        .write_all(b"GET /drapi/v1/ping HTTP/1.1\r\nHost: dc.example.com\r\n\r\n")
        .unwrap();
    // The handshake's summary, then the answer (a TLS 1.3 ticket arrives before it).
    let mut seen = String::new();
    for line in std::io::BufReader::new(client.stdout.take().unwrap()).lines() {
        let line = line.unwrap_or_default();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("HTTP/1.1 ") {
            break;
        }
    }
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(seen.contains("HTTP/1.1 200"), "no answer: {seen}");
    seen.contains("\nReused, TLSv1.")
}

#[tokio::test]
async fn a_client_that_closed_without_a_close_notify_resumes_its_session() {
    let dc = Digital::start("tls-resume", "").await;
    let (port, dir) = (dc.port, dc.dir.path.clone());
    let resumed = tokio::task::spawn_blocking(move || {
        ["-tls1_3", "-tls1_2"].map(|version| {
            let ca = dir.join("ca.crt");
            let (one, two, three) = (dir.join("s1"), dir.join("s2"), dir.join("s3"));
            // Each pause lets ccedge see the previous connection end before the next begins.
            let pause = || std::thread::sleep(std::time::Duration::from_millis(200));
            let first = connection_offering(port, &ca, version, None, &one);
            pause();
            let second = connection_offering(port, &ca, version, Some(&one), &two);
            pause();
            // As browsers do: TLS 1.3 offers the newest ticket (the resumed connection brought
            // one), TLS 1.2 the session ID it has (s_client saves none after a resumption).
            let again = if version == "-tls1_3" { &two } else { &one };
            let third = connection_offering(port, &ca, version, Some(again), &three);
            (first, second, third)
        })
    })
    .await
    .unwrap();
    assert_eq!(
        resumed,
        [(false, true, true), (false, true, true)],
        "TLS 1.3, then 1.2: (first, second, third) connection resumed"
    );
}
