//! The admin listener (plain HTTP, meant for loopback or a management network):
//! `GET /healthz`, `GET /status` and `GET /metrics`.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// A service as the admin listener sees it: it describes itself on `/status`, and lifts a
/// login lockout when asked.
pub trait StatusSource: Send + Sync {
    fn status(&self) -> serde_json::Value;

    /// Lifts the block on client address `ip`; false when this service had none.
    fn lift_block(&self, _ip: IpAddr) -> bool {
        false
    }
}

pub struct Admin {
    started: Instant,
    config_file: String,
    sources: Vec<Arc<dyn StatusSource>>,
}

impl Admin {
    pub fn new(config_file: String, sources: Vec<Arc<dyn StatusSource>>) -> Self {
        Admin {
            started: Instant::now(),
            config_file,
            sources,
        }
    }

    fn status(&self) -> serde_json::Value {
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "config": self.config_file,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "services": self.sources.iter().map(|s| s.status()).collect::<Vec<_>>(),
        })
    }
}

impl Admin {
    /// `DELETE /auth/lockouts/<ip>`: lifts that address's login lockout on every site.
    fn lockout(&self, method: &http::Method, ip: &str) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        if method != http::Method::DELETE {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                text,
                b"DELETE only\n".to_vec(),
            );
        }
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return respond(
                StatusCode::BAD_REQUEST,
                text,
                b"not an IP address\n".to_vec(),
            );
        };
        let ip = ip.to_canonical();
        let lifted = self.sources.iter().filter(|s| s.lift_block(ip)).count();
        if lifted > 0 {
            respond(
                StatusCode::OK,
                text,
                format!("{ip} unblocked\n").into_bytes(),
            )
        } else {
            respond(
                StatusCode::NOT_FOUND,
                text,
                format!("{ip} is not blocked\n").into_bytes(),
            )
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("static response parts")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let text = "text/plain; charset=utf-8";
        if let Some(ip) = req.uri.path().strip_prefix("/auth/lockouts/") {
            return self.lockout(&req.method, ip);
        }
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return respond(StatusCode::METHOD_NOT_ALLOWED, text, b"GET only\n".to_vec());
        }
        match req.uri.path() {
            "/healthz" => respond(StatusCode::OK, text, b"ok\n".to_vec()),
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::observe::metrics::render(),
            ),
            "/status" => {
                let mut body = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
                body.push(b'\n');
                respond(StatusCode::OK, "application/json", body)
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                text,
                b"not found: try /healthz, /status, /metrics or DELETE /auth/lockouts/<ip>\n"
                    .to_vec(),
            ),
        }
    }
}

/// `ccedge health`: asks the admin listener at `admin` for `/healthz`.
pub fn probe(admin: Option<std::net::SocketAddr>) -> std::process::ExitCode {
    use std::io::{Read, Write};
    use std::process::ExitCode;
    let Some(mut addr) = admin else {
        eprintln!("ccedge: health needs server.admin.listen in the configuration");
        return ExitCode::FAILURE;
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let timeout = std::time::Duration::from_secs(3);
    let answer = std::net::TcpStream::connect_timeout(&addr, timeout).and_then(|mut tcp| {
        tcp.set_read_timeout(Some(timeout))?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: ccedge\r\nConnection: close\r\n\r\n")?;
        let mut reply = String::new();
        tcp.read_to_string(&mut reply)?;
        Ok(reply)
    });
    match answer {
        Ok(reply) if reply.starts_with("HTTP/1.1 200") => {
            println!("ccedge: healthy ({addr})");
            ExitCode::SUCCESS
        }
        Ok(reply) => {
            eprintln!(
                "ccedge: unhealthy: {}",
                reply.lines().next().unwrap_or("no answer")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ccedge: unhealthy: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
