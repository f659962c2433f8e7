//! The admin listener (plain HTTP, meant for loopback or a management network):
//! `GET /healthz` and `GET /status`.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// A service that can describe itself on `/status`.
pub trait StatusSource: Send + Sync {
    fn status(&self) -> serde_json::Value;
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
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return respond(StatusCode::METHOD_NOT_ALLOWED, text, b"GET only\n".to_vec());
        }
        match req.uri.path() {
            "/healthz" => respond(StatusCode::OK, text, b"ok\n".to_vec()),
            "/status" => {
                let mut body = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
                body.push(b'\n');
                respond(StatusCode::OK, "application/json", body)
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                text,
                b"not found: try /healthz or /status\n".to_vec(),
            ),
        }
    }
}
