//! The admin listener (plain HTTP, meant for loopback or a management network): the status
//! page at `/`, `GET /healthz`, `GET /status` and `GET /metrics`.
//!
//! It answers only requests whose `Host` is an IP literal, `localhost` or one of
//! `server.admin.hosts` (others get 421), so a web page an operator's browser loads cannot reach
//! it by DNS rebinding. With `server.admin.token`, every endpoint but `/healthz` needs the
//! token, as `Authorization: Bearer <token>` or as the password of Basic credentials
//! (which a browser asks for, so the status page keeps working).

use crate::config::tls::Presented;
use crate::config::AdminSettings;
use crate::observe::lifecycle::{Lifecycle, Readiness};
use crate::observe::metrics::Totals;
use crate::observe::throttle::OncePerSecond;
use crate::observe::traffic::{self, History};
use async_trait::async_trait;
use base64::Engine;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// The operator's status page: one HTML file, its styles and script inline, no other asset.
const STATUS_PAGE: &str = include_str!("status_page.html");

/// A service as the admin listener sees it: it describes itself on `/status`, and lifts a
/// login lockout when asked.
#[async_trait]
pub trait StatusSource: Send + Sync {
    fn status(&self) -> serde_json::Value;

    /// Lifts the block of `user` at client address `ip`, or with no user every block there;
    /// false when this service had none.
    async fn lift_block(&self, _ip: IpAddr, _user: Option<&str>) -> bool {
        false
    }

    /// Revokes `user`: their kept verdicts stop counting and their open WebSockets are closed;
    /// how many WebSockets, or `None` when the service authenticates no one.
    fn revoke_user(&self, _user: &str) -> Option<usize> {
        None
    }

    /// Empties the service's cache (entries whose path starts with `prefix`, when given);
    /// `None` when the service has no cache.
    fn purge_cache(&self, _prefix: Option<&str>) -> Option<Purged> {
        None
    }

    /// Brings gauges that are read from the service's state up to date, before a scrape.
    fn refresh_metrics(&self) {}

    /// The service's request counts so far.
    fn totals(&self) -> Totals;
}

/// Puts the expiry of each certificate `service` presents in
/// `ccedge_certificate_expiry_timestamp_seconds`.
pub fn record_certificates(service: &str, presented: &[Presented]) {
    for cert in presented {
        crate::observe::metrics::certificate_expiry(service, cert.role, &cert.facts.subject)
            .set(cert.facts.not_after);
    }
}

/// What a cache purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub entries: usize,
    pub bytes: usize,
}

/// The services the admin listener reports on, and their recent traffic.
struct Watched {
    sources: Vec<Arc<dyn StatusSource>>,
    history: History,
}

impl Watched {
    fn totals(&self) -> Vec<Totals> {
        self.sources.iter().map(|s| s.totals()).collect()
    }
}

/// Samples the services' request counters, for the rates of the last minute.
pub struct TrafficSampler(Arc<Watched>);

#[async_trait]
impl BackgroundService for TrafficSampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(traffic::EVERY) => {}
                _ = shutdown.changed() => return,
            }
            self.0.history.record(Instant::now(), self.0.totals());
        }
    }
}

pub struct Admin {
    started: Instant,
    config_file: String,
    watched: Arc<Watched>,
    /// Host names answered besides IP literals and `localhost`.
    hosts: Vec<String>,
    /// SHA-256 of the token, when one is required (compared in constant time).
    token: Option<[u8; 32]>,
    refusals: OncePerSecond,
    lifecycle: Arc<Lifecycle>,
    /// `server.pid_file`: beside it, what processes draining after a reload report and read.
    pid_file: String,
    /// What this process serves (`config::summary`), for `GET /config` and `ccedge diff`.
    summary: Vec<u8>,
}

/// What the admin listener knows of its process.
pub struct AdminProcess {
    pub config_file: String,
    /// `config::summary` of the configuration it runs.
    pub summary: serde_json::Value,
    pub lifecycle: Arc<Lifecycle>,
    pub pid_file: String,
}

impl Admin {
    /// The admin application, and the background service that samples the traffic it reports.
    pub fn new(
        process: AdminProcess,
        sources: Vec<Arc<dyn StatusSource>>,
        settings: &AdminSettings,
    ) -> (Self, TrafficSampler) {
        let AdminProcess {
            config_file,
            summary,
            lifecycle,
            pid_file,
        } = process;
        let started = Instant::now();
        let watched = Arc::new(Watched {
            history: History::new(sources.len(), started),
            sources,
        });
        let admin = Admin {
            started,
            config_file,
            watched: watched.clone(),
            hosts: settings.hosts.clone(),
            token: settings
                .token
                .as_ref()
                .map(|t| Sha256::digest(t.0.as_bytes()).into()),
            refusals: OncePerSecond::default(),
            lifecycle,
            pid_file,
            summary: serde_json::to_vec_pretty(&summary).unwrap_or_default(),
        };
        (admin, TrafficSampler(watched))
    }

    fn status(&self) -> serde_json::Value {
        let rates = self
            .watched
            .history
            .rates(Instant::now(), &self.watched.totals());
        let services: Vec<serde_json::Value> = self
            .watched
            .sources
            .iter()
            .zip(rates)
            .map(|(source, rates)| {
                let mut status = source.status();
                status["traffic"] = json!(rates);
                status
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "config": self.config_file,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "readiness": self.lifecycle.readiness().name(),
            "open_connections": self.lifecycle.open_connections(),
            "websockets": self.lifecycle.open_websockets(),
            "draining_processes": crate::observe::draining::reports(&self.pid_file),
            "now": crate::observe::access_log::now(),
            "services": services,
        })
    }
}

impl Admin {
    /// `DELETE /cache[?prefix=/path/]`: empties every site's cache, or the entries under a path.
    fn purge(&self, method: &http::Method, query: Option<&str>) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        if method != http::Method::DELETE {
            return delete_only();
        }
        let prefix = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("prefix="));
        if prefix.is_some_and(|p| !p.starts_with('/')) {
            return respond(
                StatusCode::BAD_REQUEST,
                text,
                b"prefix must start with '/'\n".to_vec(),
            );
        }
        let purged: Vec<Purged> = self
            .watched
            .sources
            .iter()
            .filter_map(|s| s.purge_cache(prefix))
            .collect();
        if purged.is_empty() {
            return respond(
                StatusCode::NOT_FOUND,
                text,
                b"no service has a cache\n".to_vec(),
            );
        }
        let entries: usize = purged.iter().map(|p| p.entries).sum();
        let bytes: usize = purged.iter().map(|p| p.bytes).sum();
        log::warn!(
            "cache purged by the admin listener{}: {entries} entries, {bytes} bytes",
            prefix.map_or(String::new(), |p| format!(" (prefix {p})"))
        );
        let body = format!("purged {entries} entries ({bytes} bytes)\n");
        respond(StatusCode::OK, text, body.into_bytes())
    }

    /// `DELETE /auth/lockouts/<ip>[?user=<name>]`: lifts every login lockout at the client that
    /// address counts as (an IPv6 address, or `addr/len` as `/status` shows it, stands for its
    /// network), or only that user's there, on every site.
    async fn lockout(
        &self,
        method: &http::Method,
        ip: &str,
        query: Option<&str>,
    ) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        if method != http::Method::DELETE {
            return delete_only();
        }
        let address = ip.split_once('/').map_or(ip, |(address, _)| address);
        let Ok(ip) = address.parse::<IpAddr>() else {
            return respond(
                StatusCode::BAD_REQUEST,
                text,
                b"not an IP address\n".to_vec(),
            );
        };
        let ip = ip.to_canonical();
        let user = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|pair| pair.strip_prefix("user="))
            .map(query_decoded);
        let user = match user {
            Some(Some(user)) => Some(user),
            Some(None) => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    text,
                    b"user is not percent-encoded UTF-8\n".to_vec(),
                )
            }
            None => None,
        };
        let mut lifted = 0;
        for source in &self.watched.sources {
            lifted += usize::from(source.lift_block(ip, user.as_deref()).await);
        }
        let what = match &user {
            Some(user) => format!("{user} at {ip}"),
            None => ip.to_string(),
        };
        if lifted > 0 {
            respond(
                StatusCode::OK,
                text,
                format!("{what} unblocked\n").into_bytes(),
            )
        } else {
            respond(
                StatusCode::NOT_FOUND,
                text,
                format!("{what} is not blocked\n").into_bytes(),
            )
        }
    }
}

impl Admin {
    /// `GET /readyz`: 200 while this instance should get new connections. Upstream health is
    /// not part of it: a dead upstream would make every instance unready at once.
    fn readyz(&self) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        let body: &[u8] = match self.lifecycle.readiness() {
            Readiness::Ready => return respond(StatusCode::OK, text, b"ready\n".to_vec()),
            Readiness::Starting => b"starting: the listeners are not all up yet\n",
            Readiness::Draining => b"draining: POST /drain was asked; DELETE /drain ends it\n",
            Readiness::Stopping => b"stopping: a reload or a stop is under way\n",
        };
        respond(StatusCode::SERVICE_UNAVAILABLE, text, body.to_vec())
    }

    /// `POST /drain` starts a drain, `DELETE /drain` ends it.
    fn drain(&self, method: &http::Method) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        let on = match *method {
            http::Method::POST => true,
            http::Method::DELETE => false,
            _ => {
                return respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    text,
                    b"POST starts a drain, DELETE ends it\n".to_vec(),
                )
            }
        };
        if self.lifecycle.readiness() == Readiness::Stopping {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                text,
                b"stopping: a reload or a stop is under way\n".to_vec(),
            );
        }
        let changed = self.lifecycle.drain(on);
        // A reload keeps the instance drained (the new process reads this at its start).
        crate::observe::draining::set_drained(&self.pid_file, on);
        let open = self.lifecycle.open_connections();
        let body = match (on, changed) {
            (true, true) => {
                log::info!(
                    "admin listener: drain started: /readyz answers 503, kept-alive connections \
                     close after their next answer ({open} client connections open)"
                );
                format!("draining: /readyz answers 503; {open} client connection(s) open\n")
            }
            (true, false) => format!("already draining; {open} client connection(s) open\n"),
            (false, true) => {
                log::info!("admin listener: drain ended: /readyz answers 200 again");
                "drain ended: ready\n".to_string()
            }
            (false, false) => "not draining\n".to_string(),
        };
        respond(StatusCode::OK, text, body.into_bytes())
    }

    /// `DELETE /auth/users/<name>`: revokes that user on every site (see
    /// `StatusSource::revoke_user`).
    fn revoke(&self, method: &http::Method, user: &str) -> Response<Vec<u8>> {
        let text = "text/plain; charset=utf-8";
        if method != http::Method::DELETE {
            return delete_only();
        }
        let Some(user) = segment_decoded(user).filter(|u| !u.is_empty()) else {
            return respond(
                StatusCode::BAD_REQUEST,
                text,
                b"a user name, percent-encoded UTF-8\n".to_vec(),
            );
        };
        let revoked: Vec<usize> = self
            .watched
            .sources
            .iter()
            .filter_map(|s| s.revoke_user(&user))
            .collect();
        if revoked.is_empty() {
            return respond(
                StatusCode::NOT_FOUND,
                text,
                b"no service authenticates users\n".to_vec(),
            );
        }
        let closed: usize = revoked.iter().sum();
        // Processes still draining after a reload carry WebSockets too.
        crate::observe::draining::append_revocation(&self.pid_file, &user);
        let shown: String = user.chars().filter(|c| !c.is_control()).collect();
        log::warn!("user {shown:?} revoked by the admin listener: {closed} WebSocket(s) closed");
        let body = format!(
            "{shown} revoked: {closed} WebSocket(s) closed; the next request is checked again\n"
        );
        respond(StatusCode::OK, text, body.into_bytes())
    }

    /// Whether `req` names this listener by a Host it answers (see the module's comment).
    fn host_allowed(&self, req: &RequestHeader) -> bool {
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        let Some(host) = host.map(host_part) else {
            return false;
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        host.parse::<IpAddr>().is_ok()
            || host.eq_ignore_ascii_case("localhost")
            || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Whether `req` carries the token, when one is required.
    fn authorized(&self, req: &RequestHeader) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let given = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| presented_token(v.as_bytes()));
        given.is_some_and(|given| {
            let given: [u8; 32] = Sha256::digest(&given).into();
            openssl::memcmp::eq(&given, expected)
        })
    }

    fn refused(&self, what: &str, req: &RequestHeader) {
        if self.refusals.ready() {
            log::warn!(
                "admin listener: refused {} {} ({what})",
                req.method,
                req.uri.path()
            );
        }
    }
}

/// Whether a browser sent `req` for a page of another site (`Origin` not this listener, or
/// `Sec-Fetch-Site` saying so). A form's POST needs no preflight: without this, any page an
/// operator opens could drain the instance. Command-line clients send neither header.
fn cross_site(req: &RequestHeader) -> bool {
    let header = |name| req.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return true;
        }
    }
    let Some(origin) = header("origin") else {
        return false;
    };
    let host = header("host").unwrap_or_default();
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_none_or(|a| !a.eq_ignore_ascii_case(host))
}

/// The answer to an admin action asked with another method than `DELETE`.
fn delete_only() -> Response<Vec<u8>> {
    respond(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain; charset=utf-8",
        b"DELETE only\n".to_vec(),
    )
}

/// A path segment, percent-decoded (`+` is a plus sign there); `None` when not UTF-8.
fn segment_decoded(text: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()?;
    Some(decoded.into_owned())
}

/// A query value, percent-decoded with `+` for a space; `None` when not UTF-8.
fn query_decoded(text: &str) -> Option<String> {
    segment_decoded(&text.replace('+', " "))
}

/// `host[:port]` or `[v6][:port]` -> host.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The token of `Authorization: Bearer <token>`, or the password of `Basic` credentials.
fn presented_token(value: &[u8]) -> Option<Vec<u8>> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return Some(rest.to_vec());
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let pair = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = pair.iter().position(|b| *b == b':')?;
        return Some(pair[colon + 1..].to_vec());
    }
    None
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
        if !self.host_allowed(req) {
            self.refused("a Host it does not answer", req);
            return respond(
                StatusCode::MISDIRECTED_REQUEST,
                text,
                b"this listener answers its IP address, localhost and server.admin.hosts only\n"
                    .to_vec(),
            );
        }
        let open = matches!(req.uri.path(), "/healthz" | "/readyz");
        if !open && !self.authorized(req) {
            self.refused("no valid token", req);
            let mut denied = respond(
                StatusCode::UNAUTHORIZED,
                text,
                b"this needs server.admin.token: Authorization: Bearer <token>\n".to_vec(),
            );
            for challenge in [
                "Basic realm=\"ccedge admin\", charset=\"UTF-8\"",
                "Bearer realm=\"ccedge admin\"",
            ] {
                denied.headers_mut().append(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static(challenge),
                );
            }
            return denied;
        }
        let safe = req.method == http::Method::GET || req.method == http::Method::HEAD;
        if !safe && cross_site(req) {
            self.refused("a request from another site", req);
            return respond(
                StatusCode::FORBIDDEN,
                text,
                b"changes are not taken from another site's page\n".to_vec(),
            );
        }
        if let Some(user) = req.uri.path().strip_prefix("/auth/users/") {
            return self.revoke(&req.method, user);
        }
        if let Some(ip) = req.uri.path().strip_prefix("/auth/lockouts/") {
            return self.lockout(&req.method, ip, req.uri.query()).await;
        }
        if req.uri.path() == "/cache" {
            return self.purge(&req.method, req.uri.query());
        }
        if req.uri.path() == "/drain" {
            return self.drain(&req.method);
        }
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return respond(StatusCode::METHOD_NOT_ALLOWED, text, b"GET only\n".to_vec());
        }
        match req.uri.path() {
            "/" | "/ui" => respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                STATUS_PAGE.as_bytes().to_vec(),
            ),
            "/healthz" => respond(StatusCode::OK, text, b"ok\n".to_vec()),
            "/readyz" => self.readyz(),
            "/config" => respond(StatusCode::OK, "application/json", self.summary.clone()),
            "/metrics" => {
                for source in &self.watched.sources {
                    source.refresh_metrics();
                }
                let draining = crate::observe::draining::reports(&self.pid_file);
                crate::observe::metrics::draining_websockets(
                    draining.iter().map(|r| r.websockets).sum(),
                );
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    crate::observe::metrics::render(),
                )
            }
            "/status" => {
                let mut body = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
                body.push(b'\n');
                respond(StatusCode::OK, "application/json", body)
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                text,
                b"not found: try / (the status page), /healthz, /status, /metrics, DELETE /cache or DELETE /auth/lockouts/<ip>\n"
                    .to_vec(),
            ),
        }
    }
}

/// `ccedge health`: asks the admin listener at `admin` for `/healthz`.
pub fn probe(admin: Option<&AdminSettings>, ready: bool) -> ExitCode {
    let (target, yes, no) = if ready {
        ("/readyz", "ready", "not ready")
    } else {
        ("/healthz", "healthy", "unhealthy")
    };
    match ask(admin, "GET", target) {
        Ok((addr, 200, _)) => {
            println!("ccedge: {yes} ({addr})");
            ExitCode::SUCCESS
        }
        Ok((_, status, body)) => {
            eprintln!("ccedge: {no}: {status} {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ccedge: {no}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ccedge purge`: asks the admin listener at `admin` to empty the caches (or the entries under
/// `prefix`).
pub fn purge(admin: Option<&AdminSettings>, prefix: Option<&str>) -> ExitCode {
    let target = match prefix {
        Some(p) => format!("/cache?prefix={p}"),
        None => "/cache".to_string(),
    };
    order(admin, "DELETE", &target, "purge")
}

/// What the running process serves (`GET /config`), for `ccedge diff`.
pub fn running_config(admin: Option<&AdminSettings>) -> Result<serde_json::Value, String> {
    match ask(admin, "GET", "/config")? {
        (_, 200, body) => serde_json::from_str(&body)
            .map_err(|e| format!("the admin listener's /config is not JSON: {e}")),
        (addr, status, body) => Err(format!(
            "{addr}: /config answered {status}: {}",
            body.trim()
        )),
    }
}

/// `ccedge drain`: asks the admin listener at `admin` to start a drain (or with `off` to end it).
pub fn drain(admin: Option<&AdminSettings>, off: bool) -> ExitCode {
    let method = if off { "DELETE" } else { "POST" };
    order(admin, method, "/drain", "drain")
}

/// `ccedge revoke`: asks the admin listener at `admin` to revoke `user`.
pub fn revoke(admin: Option<&AdminSettings>, user: &str) -> ExitCode {
    let user = percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC);
    order(admin, "DELETE", &format!("/auth/users/{user}"), "revoke")
}

/// Sends `method target` to the admin listener and reports the answer as command `what`.
fn order(admin: Option<&AdminSettings>, method: &str, target: &str, what: &str) -> ExitCode {
    match ask(admin, method, target) {
        Ok((_, 200, body)) => {
            println!("ccedge: {}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((_, status, body)) => {
            eprintln!("ccedge: {what} refused ({status}): {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ccedge: {what} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One request to the admin listener: the address asked, the status and the body.
fn ask(
    admin: Option<&AdminSettings>,
    method: &str,
    target: &str,
) -> Result<(SocketAddr, u16, String), String> {
    use std::io::{Read, Write};
    let Some(mut addr) = admin.map(|a| a.listen) else {
        return Err("this needs server.admin.listen in the configuration".into());
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let timeout = std::time::Duration::from_secs(3);
    let reply = std::net::TcpStream::connect_timeout(&addr, timeout).and_then(|mut tcp| {
        tcp.set_read_timeout(Some(timeout))?;
        let authorization = admin
            .and_then(|a| a.token.as_ref())
            .map_or(String::new(), |t| {
                format!("Authorization: Bearer {}\r\n", t.0)
            });
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())?;
        let mut reply = String::new();
        tcp.read_to_string(&mut reply)?;
        Ok(reply)
    });
    let reply = reply.map_err(|e| format!("{addr}: {e}"))?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}: no HTTP answer"))?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((addr, status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_percent_decoded_plus_signs_in_paths_kept() {
        assert_eq!(query_decoded("alice").as_deref(), Some("alice"));
        assert_eq!(
            query_decoded("CORP%5Cj.doe%40x").as_deref(),
            Some("CORP\\j.doe@x")
        );
        assert_eq!(query_decoded("a+b").as_deref(), Some("a b"));
        assert_eq!(query_decoded("a%2Bb").as_deref(), Some("a+b"));
        assert_eq!(
            segment_decoded("agent9+x@corp.com").as_deref(),
            Some("agent9+x@corp.com")
        );
        assert_eq!(query_decoded("%ff"), None, "not UTF-8");
        let sent = percent_encoding::utf8_percent_encode(
            "agent9+x@corp.com",
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        assert_eq!(segment_decoded(&sent).as_deref(), Some("agent9+x@corp.com"));
    }

    #[test]
    fn hosts_and_tokens_are_read_as_sent() {
        assert_eq!(host_part("127.0.0.1:9900"), "127.0.0.1");
        assert_eq!(host_part("[::1]:9900"), "::1");
        assert_eq!(host_part("localhost"), "localhost");
        assert_eq!(presented_token(b"Bearer abc").as_deref(), Some(&b"abc"[..]));
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("anyone:abc")
        );
        assert_eq!(
            presented_token(basic.as_bytes()).as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(presented_token(b"Digest abc"), None);
    }
}
