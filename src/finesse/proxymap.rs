//! The proxy map that Finesse, IdS and CUIC poll: one `upstreamhost:port=publichost:port` line per
//! server, served on `proxy_map.listen` at `proxy_map.path` and printed by `ccedge proxymap`.

use crate::config::FinesseServer;
use crate::observe::access_log::{self, AccessLog, Entry};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::Instant;

/// The map's text.
pub fn text(servers: &[FinesseServer]) -> String {
    servers
        .iter()
        .map(|s| format!("{}={}\n", s.upstream.authority, s.public))
        .collect()
}

pub struct ProxyMapApp {
    service: String,
    path: String,
    body: Vec<u8>,
    log: Arc<AccessLog>,
}

impl ProxyMapApp {
    pub fn new(service: &str, path: &str, servers: &[FinesseServer], log: Arc<AccessLog>) -> Self {
        ProxyMapApp {
            service: service.to_string(),
            path: path.to_string(),
            body: text(servers).into_bytes(),
            log,
        }
    }
}

#[async_trait]
impl ServeHttp for ProxyMapApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let started = Instant::now();
        let req = session.req_header();
        let found = req.uri.path() == self.path
            && (req.method == http::Method::GET || req.method == http::Method::HEAD);
        let (status, body) = if found {
            (StatusCode::OK, self.body.clone())
        } else {
            (StatusCode::NOT_FOUND, b"not found\n".to_vec())
        };
        self.log.write(&Entry {
            time: access_log::Timestamp::now(),
            service: &self.service,
            route: Some("proxy_map"),
            client_ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_canonical()),
            user: None,
            method: req.method.as_str(),
            host: req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
            path: req.uri.path(),
            protocol: access_log::protocol(session),
            status: status.as_u16(),
            bytes_sent: body.len(),
            duration_ms: access_log::millis_since(started),
            upstream: None,
            upstream_status: None,
            upstream_connect_ms: None,
            upstream_header_ms: None,
            upstream_bytes: 0,
            attempts: 0,
            cache: "BYPASS",
            external_auth: None,
            tracking_id: None,
            refusal: None,
            error: None,
        });
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(http::header::CONTENT_LENGTH, body.len())
            .header(http::header::CACHE_CONTROL, "no-cache")
            .body(body)
            .expect("static response parts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Authority, Role, Upstream};

    #[test]
    fn one_line_per_server() {
        let server = |public: &str, upstream: &str| FinesseServer {
            public: Authority::parse(public).unwrap(),
            upstream: Upstream {
                authority: Authority::parse(upstream).unwrap(),
                addr: "127.0.0.1:1".parse().unwrap(),
            },
            role: Role::Finesse,
            listen_port: 443,
            upstream_tls: None,
        };
        let map = text(&[
            server("Finesse1.Example.com:443", "finesse1.cc.internal:8445"),
            server("finesse1.example.com:8553", "ids1.cc.internal:8553"),
        ]);
        assert_eq!(
            map,
            "finesse1.cc.internal:8445=finesse1.example.com:443\nids1.cc.internal:8553=finesse1.example.com:8553\n"
        );
    }
}
