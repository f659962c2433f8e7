//! `proxy_protocol`: an L4 balancer in TLS pass-through starts every connection with a PROXY
//! header (v1 or v2) naming the client; ccedge takes that address as the client's, on TLS and
//! plain listeners, refuses peers outside `trusted_proxies` and connections without a header,
//! and believes forwarding headers only when the named address is itself a trusted balancer.

use crate::harness::fixtures::{Digital, DC_HOST};
use crate::harness::http::{Answer, Client, Proto};
use crate::harness::upstream::Echo;
use crate::harness::{curl, free_port, server_block, Ccedge, TestDir, Upstream};
use std::net::SocketAddr;

/// A v1 header for a client at `ip` (an IPv4 or IPv6 address).
fn v1(ip: &str) -> Vec<u8> {
    let family = if ip.contains(':') { "TCP6" } else { "TCP4" };
    let to = if ip.contains(':') { "::1" } else { "127.0.0.1" };
    format!("PROXY {family} {ip} {to} 51234 443\r\n").into_bytes()
}

/// A v2 header: PROXY for `client`, or LOCAL (the balancer's own check) for `None`.
fn v2(client: Option<SocketAddr>) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let addresses = match client {
        None => {
            header.extend_from_slice(&[0x20, 0x00]);
            Vec::new()
        }
        Some(SocketAddr::V4(a)) => {
            header.extend_from_slice(&[0x21, 0x11]);
            let mut b = a.ip().octets().to_vec();
            b.extend_from_slice(&[127, 0, 0, 1]);
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&443u16.to_be_bytes());
            b
        }
        Some(SocketAddr::V6(a)) => {
            header.extend_from_slice(&[0x21, 0x21]);
            let mut b = a.ip().octets().to_vec();
            b.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&443u16.to_be_bytes());
            b
        }
    };
    header.extend_from_slice(&u16::try_from(addresses.len()).unwrap().to_be_bytes());
    header.extend_from_slice(&addresses);
    header
}

/// One request to the digital channel on a new connection that starts with `preface`.
async fn through(dc: &Digital, proto: Proto, preface: &[u8], xff: &str) -> Result<Answer, String> {
    let ca = std::fs::read_to_string(dc.dir.join("ca.crt")).unwrap();
    let mut client = Client::tls(DC_HOST, dc.port, &ca, proto).preface(preface);
    let headers: &[(&str, &str)] = if xff.is_empty() {
        &[]
    } else {
        &[("X-Forwarded-For", xff)]
    };
    client.send("GET", "/drapi/v1/tasks", headers, b"").await
}

#[tokio::test]
async fn the_proxy_header_names_the_client_over_tls() {
    let dc = Digital::start(
        "pp-tls",
        "    trusted_proxies: [127.0.0.1, 10.9.0.0/16]\n    proxy_protocol: true\n",
    )
    .await;
    let forged = "192.0.2.9";
    for (preface, proto, client) in [
        // The client's own X-Forwarded-For is not believed: it is no balancer.
        (v1("203.0.113.7"), Proto::H1, "203.0.113.7"),
        (v1("2001:db8::7"), Proto::H2, "2001:db8::7"),
        (
            v2(Some("203.0.113.8:40000".parse().unwrap())),
            Proto::H2,
            "203.0.113.8",
        ),
        (
            v2(Some("[2001:db8::8]:40000".parse().unwrap())),
            Proto::H1,
            "2001:db8::8",
        ),
        // A trusted balancer in front of the L4 one: its X-Forwarded-For is believed.
        (v1("10.9.0.5"), Proto::H1, forged),
        // The L4 balancer's own connections (its health checks): the TCP peer, which names
        // nobody else whatever the request says.
        (b"PROXY UNKNOWN\r\n".to_vec(), Proto::H1, "127.0.0.1"),
        (v2(None), Proto::H2, "127.0.0.1"),
    ] {
        let answer = through(&dc, proto, &preface, forged)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&preface)));
        assert_eq!(answer.status, 200, "{}", answer.body);
        let echo = Echo::parse(&answer.body);
        assert_eq!(echo.header("x-real-ip").as_deref(), Some(client));
        let tid = answer.headers["trackingid"].to_str().unwrap();
        assert_eq!(dc.ccedge.log_entry(tid).await["client_ip"], client);
    }
}

#[tokio::test]
async fn only_trusted_balancers_with_a_header_get_in() {
    let dc = Digital::start(
        "pp-closed",
        "    trusted_proxies: [127.0.0.1]\n    proxy_protocol: true\n",
    )
    .await;
    // A client talking TLS straight away, or with something else than a PROXY header.
    assert!(through(&dc, Proto::H1, b"", "").await.is_err());
    dc.ccedge
        .wait_stderr("connection from 127.0.0.1 closed: not a PROXY header")
        .await;
    assert!(through(&dc, Proto::H1, b"PROXY TCP4 nonsense 1 2\r\n", "")
        .await
        .is_err());
    assert!(
        through(&dc, Proto::H1, &v1("203.0.113.7"), "")
            .await
            .is_ok(),
        "with a header"
    );
    assert_eq!(dc.publisher.hits(), 1);

    let untrusted = Digital::start(
        "pp-untrusted",
        "    trusted_proxies: [10.0.0.0/8]\n    proxy_protocol: true\n",
    )
    .await;
    assert!(through(&untrusted, Proto::H1, &v1("203.0.113.7"), "")
        .await
        .is_err());
    untrusted
        .ccedge
        .wait_stderr("service cc: refused connection from 127.0.0.1 (not in trusted_proxies)")
        .await;
    assert_eq!(untrusted.publisher.hits(), 0);
}

#[tokio::test]
async fn the_named_client_meets_client_allow_and_its_own_rate_limit() {
    let dc = Digital::start(
        "pp-allow",
        "    trusted_proxies: [127.0.0.1]\n    proxy_protocol: true\n    client_allow: [203.0.113.0/24]\n    \
         rate_limits:\n      - path_prefix: /drapi/\n        per_second: 1\n        burst: 0\n",
    )
    .await;
    assert!(through(&dc, Proto::H1, &v1("198.51.100.7"), "")
        .await
        .is_err());
    dc.ccedge
        .wait_stderr("connection from 198.51.100.7 closed: the client is not in client_allow")
        .await;
    assert_eq!(dc.publisher.hits(), 0);

    // The balancer's own health checks are not clients.
    let check = through(&dc, Proto::H1, b"PROXY UNKNOWN\r\n", "")
        .await
        .unwrap();
    assert_eq!(check.status, 200);
    assert_eq!(dc.publisher.hits(), 1);

    // Each address behind the balancer has its own budget.
    let first = through(&dc, Proto::H1, &v1("203.0.113.7"), "")
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    let again = through(&dc, Proto::H1, &v1("203.0.113.7"), "")
        .await
        .unwrap();
    assert_eq!(again.status, 429);
    let other = through(&dc, Proto::H1, &v1("203.0.113.8"), "")
        .await
        .unwrap();
    assert_eq!(other.status, 200, "another client behind the same balancer");
}

#[tokio::test]
async fn plain_listeners_read_the_header_too_but_not_the_proxy_map() {
    let dir = TestDir::new("pp-plain");
    let finesse = Upstream::plain("finesse").await;
    let port = free_port();
    let map_port = free_port();
    let yaml = format!(
        "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    trusted_proxies: [127.0.0.1]\n    \
         proxy_protocol: true\n    proxy_map:\n      listen: 127.0.0.1:{map_port}\n    servers:\n      \
         - public: finesse1.example.com:{port}\n        upstream: {up}\n        role: finesse\n",
        server = server_block(&dir.path, None),
        up = finesse.authority(),
    );
    let ccedge = Ccedge::start(&dir, &yaml, &[port, map_port]).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let host = format!("finesse1.example.com:{port}");

    let mut client = Client::new(addr, &host).preface(&v1("203.0.113.7"));
    let answer = client.get("/finesse/api/SystemInfo").await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let echo = Echo::parse(&answer.body);
    assert_eq!(echo.header("x-real-ip").as_deref(), Some("203.0.113.7"));
    let again = client.get("/finesse/api/SystemInfo").await.unwrap();
    assert_eq!(again.status, 200, "the next request on the same connection");
    assert_eq!(finesse.hits(), 2);

    // Without a header, HTTP is not read as one.
    let mut bare = Client::new(addr, &host);
    assert!(bare.get("/finesse/api/SystemInfo").await.is_err());
    ccedge
        .wait_stderr("connection from 127.0.0.1 closed: not a PROXY header")
        .await;
    assert_eq!(finesse.hits(), 2);

    // The internal servers poll the proxy map directly, without a header.
    let map = curl(&[&format!("http://127.0.0.1:{map_port}/proxymap.txt")])
        .await
        .unwrap();
    assert_eq!(map.status, 200);
    assert!(map.body.contains(&format!("finesse1.example.com:{port}")));
}
