//! Finesse servers behind one proxy: by port, then by host; 421 for everything else.

use crate::harness::fixtures::{args, https};
use crate::harness::http::Client;
use crate::harness::{curl, free_port, server_block, Ca, Ccedge, TestDir, Upstream};
use std::net::SocketAddr;

const HOST: &str = "finesse1.example.com";

struct Site {
    dir: TestDir,
    finesse: Upstream,
    ids: Upstream,
    cuic: Upstream,
    /// Finesse and CUIC (told apart by host), the public port of both.
    web: u16,
    /// IdS, port-based.
    ids_port: u16,
    /// Finesse behind a port mapping: public port 443, listening here.
    mapped: u16,
    ccedge: Ccedge,
}

impl Site {
    async fn start(name: &str) -> Site {
        let dir = TestDir::new(name);
        let ca = Ca::new(name);
        ca.write(&dir.join("ca.crt"));
        let cert = ca.server(
            &dir.path,
            "proxy",
            &[
                "finesse1.example.com",
                "cuic1.example.com",
                "desk.example.com",
            ],
        );
        let finesse = Upstream::plain("finesse").await;
        let ids = Upstream::plain("ids").await;
        let cuic = Upstream::plain("cuic").await;
        let (web, ids_port, mapped) = (free_port(), free_port(), free_port());
        let yaml = format!(
            "{server}finesse:\n  - name: desktop\n    bind: 127.0.0.1\n    tls:\n      cert: {c}\n      key: {k}\n    servers:\n\
             \x20     - public: finesse1.example.com:{web}\n        upstream: {f}\n        role: finesse\n\
             \x20     - public: finesse1.example.com:{ids_port}\n        upstream: {i}\n        role: ids\n\
             \x20     - public: cuic1.example.com:{web}\n        upstream: {u}\n        role: cuic\n\
             \x20     - public: desk.example.com:443\n        upstream: {f}\n        listen_port: {mapped}\n",
            server = server_block(&dir.path, None),
            c = cert.cert.display(),
            k = cert.key.display(),
            f = finesse.authority(),
            i = ids.authority(),
            u = cuic.authority(),
        );
        let ccedge = Ccedge::start(&dir, &yaml, &[web, ids_port, mapped]).await;
        Site {
            dir,
            finesse,
            ids,
            cuic,
            web,
            ids_port,
            mapped,
            ccedge,
        }
    }

    async fn get(
        &self,
        extra: &[&str],
        host: &str,
        port: u16,
        path: &str,
    ) -> crate::harness::Reply {
        curl(&args(extra, &https(&self.dir, host, port, path)))
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn port_then_host_selects_the_server() {
    let site = Site::start("route-select").await;
    let cases = [
        ("finesse1.example.com", site.web, "finesse", "--http2"),
        ("finesse1.example.com", site.ids_port, "ids", "--http1.1"),
        ("cuic1.example.com", site.web, "cuic", "--http2"),
    ];
    for (host, port, node, proto) in cases {
        let reply = site
            .get(
                &[proto, "-H", "Accept-Encoding: gzip, br"],
                host,
                port,
                "/desktop/",
            )
            .await;
        let echo = reply.echo();
        assert_eq!(echo.node(), node, "{host}:{port}");
        let public = format!("{host}:{port}");
        assert_eq!(echo.header("host"), Some(public));
        assert_eq!(echo.header("x-forwarded-port"), Some(port.to_string()));
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(
            echo.header("accept-encoding"),
            None,
            "Accept-Encoding reached {node}"
        );
    }
    assert_eq!(
        (site.finesse.hits(), site.ids.hits(), site.cuic.hits()),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn upstream_connections_are_reused_from_one_request_to_the_next() {
    let site = Site::start("route-reuse").await;
    for _ in 0..10 {
        let reply = site
            .get(
                &["--http1.1"],
                "finesse1.example.com",
                site.web,
                "/desktop/",
            )
            .await;
        assert_eq!(reply.echo().node(), "finesse");
    }
    // Ten client connections, one after the other: the pooled upstream connection serves all.
    assert_eq!((site.finesse.hits(), site.finesse.connections()), (10, 1));
}

#[tokio::test]
async fn port_mapping_sends_the_public_authority() {
    let site = Site::start("route-mapped").await;
    let reply = site
        .get(&[], "desk.example.com", site.mapped, "/finesse/")
        .await;
    let echo = reply.echo();
    assert_eq!(echo.node(), "finesse");
    assert_eq!(echo.header("host").as_deref(), Some("desk.example.com:443"));
    assert_eq!(echo.header("x-forwarded-port").as_deref(), Some("443"));
}

#[tokio::test]
async fn unknown_host_or_port_is_misdirected() {
    let site = Site::start("route-421").await;
    let unknown = site
        .get(&["-k"], "other.example.com", site.web, "/desktop/")
        .await;
    assert_eq!(unknown.status, 421);
    assert!(
        unknown.body.contains("no server is configured"),
        "{}",
        unknown.body
    );
    let wrong_port = site.get(&[], "cuic1.example.com", site.ids_port, "/").await;
    assert_eq!(wrong_port.status, 421);
    assert_eq!(site.finesse.hits() + site.ids.hits() + site.cuic.hits(), 0);
    let tid = wrong_port.header("trackingid").unwrap();
    let line = site.ccedge.log_entry(tid).await;
    assert_eq!(line["status"], 421);
    assert!(
        line["route"].is_null() && line["upstream"].is_null(),
        "{line}"
    );
}

#[tokio::test]
async fn absolute_form_targets_are_held_to_the_configured_hosts() {
    let site = Site::start("route-absolute").await;
    let evil = site
        .get(
            &[
                "--http1.1",
                "--request-target",
                "http://evil.example.net/steal",
                "-H",
                "Host: evil.example.net",
            ],
            "finesse1.example.com",
            site.web,
            "/",
        )
        .await;
    assert_eq!(evil.status, 421);
    // A Host that disagrees with the target is refused by Pingora's parser before routing.
    let mismatch = site
        .get(
            &[
                "--http1.1",
                "--request-target",
                "http://evil.example.net/steal",
            ],
            "finesse1.example.com",
            site.web,
            "/",
        )
        .await;
    assert_eq!(mismatch.status, 400);
    assert_eq!(site.finesse.hits() + site.cuic.hits(), 0);

    let ours = site
        .get(
            &[
                "--http1.1",
                "--request-target",
                &format!("https://cuic1.example.com:{}/cuic/x?y=1", site.web),
                "-H",
                &format!("Host: cuic1.example.com:{}", site.web),
            ],
            "finesse1.example.com",
            site.web,
            "/",
        )
        .await;
    let echo = ours.echo();
    assert_eq!(echo.node(), "cuic");
    assert_eq!(echo.target(), "/cuic/x?y=1");
    assert_eq!(
        echo.header("host"),
        Some(format!("cuic1.example.com:{}", site.web))
    );
}

#[tokio::test]
async fn upstream_connections_are_reused_under_concurrent_load() {
    const CLIENTS: usize = 8;
    const EACH: usize = 60;
    let dir = TestDir::new("route-reuse-load");
    let finesse = Upstream::plain("finesse").await;
    let port = free_port();
    // Two worker threads: a pooled connection is released on one and taken on the other.
    let yaml = format!(
        "{server}finesse:\n  - name: site\n    bind: 127.0.0.1\n    cache: {{max_size_mb: 8}}\n    rate_limits: []\n    limits: {{max_connections_per_ip: 1000}}\n    servers:\n      \
         - {{public: \"{HOST}:{port}\", upstream: \"{up}\", role: finesse}}\n",
        server = server_block(&dir.path, None).replace("threads: 1", "threads: 2"),
        up = finesse.authority(),
    );
    let _ccedge = Ccedge::start(&dir, &yaml, &[port]).await;
    // Half the clients keep their connection; the other half send one request per connection
    // and close it as soon as they have the answer, as health checkers and scripts do.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            tokio::spawn(async move {
                let mut kept = Client::new(
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    &format!("{HOST}:{port}"),
                );
                for _ in 0..EACH {
                    if n % 2 == 0 {
                        assert_eq!(
                            kept.get("/finesse/api/SystemInfo").await.unwrap().status,
                            200
                        );
                    } else {
                        let answer = one_request_then_close(port).await;
                        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    // Never more requests in flight than clients: each upstream connection beyond that (and a
    // few released a moment after their answer) is one ccedge closed although the upstream
    // kept it alive.
    assert_eq!(finesse.hits(), CLIENTS * EACH);
    let opened = finesse.connections();
    assert!(
        opened <= CLIENTS + 4,
        "{opened} upstream connections for {CLIENTS} clients"
    );
}

/// Sends `GET /finesse/api/SystemInfo` on a new connection, reads the whole answer and closes
/// the connection at once.
async fn one_request_then_close(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(
        format!("GET /finesse/api/SystemInfo HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let head = head.to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let complete = match length {
            Some(length) => body.len() >= length,
            None => body.ends_with("0\r\n\r\n"),
        };
        if complete {
            return text;
        }
    }
}
