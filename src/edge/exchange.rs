//! What both proxies do for every request, whatever the route: establish who the client is and
//! the TrackingID, apply the per-client limits, answer failures, and account for the request in
//! the access log and the metrics. The per-request context (`Exchange`) and the per-service part
//! (`Front`) live here.

use crate::config::Per;
use crate::config::{ClientPolicy, Limits};
use crate::edge::identity::{ClientIdentity, Resolver};
use crate::edge::limits::{self, RateLimiter, Stage};
use crate::edge::proxy_protocol;
use crate::edge::reply::{self, Refusal};
use crate::edge::target;
use crate::edge::websocket::WebSocket;
use crate::observe::access_log::{self, AccessLog, Entry};
use crate::observe::lifecycle::Lifecycle;
use crate::observe::metrics::ServiceMetrics;
use bytes::Bytes;
use http::header::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, Session, UpgradedClose};
use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

/// Per-request state shared by the filters of one request.
pub struct Exchange {
    pub started: Instant,
    pub client: Option<ClientIdentity>,
    pub tracking_id: Option<HeaderValue>,
    /// Index of the route taken, in the service's own numbering.
    pub route: Option<usize>,
    /// Index of the upstream node chosen last.
    pub upstream: Option<usize>,
    /// How many upstream connections this request tried.
    pub attempts: u8,
    /// A node that failed this request; a retry goes elsewhere.
    pub failed_node: Option<usize>,
    pub upstream_status: Option<u16>,
    /// Why ccedge answered this request itself, shown to the client and in the log.
    pub refusal: Option<Cow<'static, str>>,
    /// The path rules match, when it differs from the request's own (see `rule_path`).
    bare_path: Option<Box<str>>,
    /// The client named the authority in an absolute-form target.
    pub absolute: bool,
    /// Who the request is from, for the access log, once authentication said so (or the name a
    /// refused one gave; only names safe to log).
    pub user: Option<Arc<str>>,
    /// The user authentication verified, for the limits that count per user.
    pub verified: Option<Arc<str>>,
    /// What the external check said (`auth.external`), for the access log.
    pub external_auth: Option<&'static str>,
    body_bytes: u64,
    /// When the last attempt chose its node, and when its request was sent (the connection
    /// ready, then the end of the request body).
    attempt_at: Option<Instant>,
    sent_at: Option<Instant>,
    /// The last attempt's connection time (0 for a reused connection) and its wait for the
    /// response header, in milliseconds.
    pub upstream_connect_ms: Option<f64>,
    pub upstream_header_ms: Option<f64>,
    /// Bytes of response body received from the upstream.
    pub upstream_bytes: u64,
    /// Counted in the in-flight gauge (until it is logged).
    in_flight: bool,
    /// Asks for a WebSocket upgrade (decided once, in `Front::begin`).
    pub wants_websocket: bool,
    /// Upgraded to a WebSocket (counted until it ends): its frames, followed to close it cleanly.
    pub websocket: Option<WebSocket>,
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

impl Exchange {
    pub fn new() -> Self {
        Exchange {
            started: Instant::now(),
            client: None,
            tracking_id: None,
            route: None,
            upstream: None,
            attempts: 0,
            failed_node: None,
            upstream_status: None,
            refusal: None,
            bare_path: None,
            absolute: false,
            user: None,
            verified: None,
            external_auth: None,
            body_bytes: 0,
            attempt_at: None,
            sent_at: None,
            upstream_connect_ms: None,
            upstream_header_ms: None,
            upstream_bytes: 0,
            in_flight: false,
            wants_websocket: false,
            websocket: None,
        }
    }

    /// The path every path rule (limits, publisher-only paths, public paths, cache rules,
    /// substitution) matches: the request's normalised path without `;parameters`.
    pub fn rule_path<'a>(&'a self, req: &'a RequestHeader) -> &'a str {
        self.bare_path.as_deref().unwrap_or(req.uri.path())
    }

    /// Records that `node` is tried next (a request body is counted again on a retry).
    pub fn attempt(&mut self, node: usize) {
        self.upstream = Some(node);
        self.attempts += 1;
        self.body_bytes = 0;
        self.attempt_at = Some(Instant::now());
        self.sent_at = None;
        self.upstream_connect_ms = None;
        self.upstream_header_ms = None;
    }

    /// The attempt's upstream connection is ready (`reused`: taken from the pool).
    pub fn connected(&mut self, reused: bool) {
        let now = Instant::now();
        self.upstream_connect_ms = Some(match (reused, self.attempt_at) {
            (false, Some(at)) => access_log::millis_between(at, now),
            _ => 0.0,
        });
        self.sent_at = Some(now);
    }

    /// Counts response body bytes that came from the upstream.
    pub fn upstream_body(&mut self, body: &Option<Bytes>) {
        self.upstream_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
    }

    /// The client and TrackingID, which every request has once `Front::begin` ran.
    pub fn identity(&self) -> pingora::Result<(&ClientIdentity, &HeaderValue)> {
        match (&self.client, &self.tracking_id) {
            (Some(client), Some(tid)) => Ok((client, tid)),
            _ => pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "request reached the upstream without a client identity",
            ),
        }
    }

    /// Refuses the request with `status` and `message` (sent and logged).
    pub fn refuse(
        &mut self,
        status: u16,
        message: impl Into<Cow<'static, str>>,
    ) -> Box<pingora::Error> {
        self.refusal = Some(message.into());
        pingora::Error::new(pingora::ErrorType::HTTPStatus(status))
    }
}

/// What a service applies to every request: whose forwarding headers it trusts, its limits,
/// and where it accounts for requests.
pub struct Front {
    pub name: String,
    /// Who a request's client is.
    pub clients: Resolver,
    /// Connections start with a PROXY header (`proxy_protocol`).
    proxy_protocol: bool,
    rate: Option<RateLimiter>,
    pub limits: Limits,
    log: Arc<AccessLog>,
    lifecycle: Arc<Lifecycle>,
    pub metrics: ServiceMetrics,
}

impl Front {
    pub fn new(
        name: &str,
        clients: &ClientPolicy,
        rate: Option<RateLimiter>,
        limits: &Limits,
        (log, lifecycle): (Arc<AccessLog>, Arc<Lifecycle>),
        routes: &[&str],
        nodes: &[&str],
    ) -> Front {
        Front {
            name: name.to_string(),
            clients: Resolver::new(clients, limits.ipv6_prefix),
            proxy_protocol: clients.proxy_protocol,
            rate,
            limits: limits.clone(),
            log,
            lifecycle,
            metrics: ServiceMetrics::new(name, routes, nodes),
        }
    }

    /// The first step of every request: who the client is, and its TrackingID.
    pub fn begin(&self, session: &mut Session, ctx: &mut Exchange) {
        // Each write to the client must make progress within this (an idle connection has
        // nothing to write and is not affected).
        session.set_write_timeout(Some(self.limits.client_send_timeout));
        let header = session.req_header();
        let peer = peer_ip(session);
        // Behind an L4 balancer, a connection its header named no client on is its own.
        let relays = !self.proxy_protocol
            || session
                .digest()
                .and_then(|d| d.socket_digest.as_deref())
                .is_some_and(proxy_protocol::named_in_header);
        ctx.client = Some(self.clients.resolve(peer, relays, &header.headers));
        ctx.tracking_id = Some(crate::edge::headers::tracking_id(&header.headers));
        ctx.wants_websocket = crate::edge::headers::is_websocket_upgrade(header);
        self.metrics.in_flight.inc();
        ctx.in_flight = true;
    }

    /// Reduces the request's target to the one every rule judges (see `target`): origin form, a
    /// normalised path. Runs before any rule.
    pub fn reduce(&self, req: &mut RequestHeader, ctx: &mut Exchange) -> Result<(), Refusal> {
        // What Pingora tunnels and what every rule sees as a WebSocket (auth, its revocation,
        // the close frames, the drain) must be the same requests: any other is refused.
        if ctx.wants_websocket != crate::edge::headers::tunnelled_by_pingora(req) {
            return Err(Refusal::new(
                400,
                "a WebSocket upgrade is a GET with Connection: upgrade and Upgrade: websocket",
            ));
        }
        let reduced = target::reduce(req)
            .map_err(|why| Refusal::new(400, format!("request target refused: {why}")))?;
        ctx.bare_path = reduced.bare;
        ctx.absolute = reduced.absolute;
        Ok(())
    }

    /// Sets the connection's timeouts for this request.
    pub fn prepare(&self, session: &mut Session, ctx: &Exchange) {
        // A stopping or draining process answers with `Connection: close`; only a running one
        // keeps connections.
        if session.is_process_shutting_down() || self.lifecycle.closing() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.limits.keepalive_timeout.as_secs().max(1)));
        }
        let read_timeout = if ctx.wants_websocket {
            crate::edge::websocket::backstop(self.limits.websocket_idle_timeout)
        } else {
            self.limits.client_header_timeout
        };
        session.set_read_timeout(Some(read_timeout));
    }

    /// Checks the rate (rules per address) and the declared body size, once the route is
    /// known.
    pub fn admit(&self, req: &RequestHeader, ctx: &Exchange) -> Result<(), Refusal> {
        self.limit(Stage::BeforeAuth, req, ctx)?;
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if limits::body_too_large(declared, self.limits.max_body_bytes) {
            return Err(Refusal::new(413, self.body_message()));
        }
        Ok(())
    }

    /// Checks the rate rules that count per user, once authentication verified one (a request
    /// without a verified user counts per address under them).
    pub fn admit_user(&self, req: &RequestHeader, ctx: &Exchange) -> Result<(), Refusal> {
        self.limit(Stage::AfterAuth, req, ctx)
    }

    fn limit(&self, stage: Stage, req: &RequestHeader, ctx: &Exchange) -> Result<(), Refusal> {
        let (Some(rate), Some(client)) = (&self.rate, ctx.client) else {
            return Ok(());
        };
        let route = ctx.route.unwrap_or(0);
        let user = ctx.verified.as_deref();
        rate.check(stage, client.key, user, route, ctx.rule_path(req))
            .map_err(|exceeded| self.exceeded(exceeded, user))
    }

    /// The 429 of a request over a rate rule (counted for `user`, if any).
    fn exceeded(&self, exceeded: limits::Exceeded<'_>, user: Option<&str>) -> Refusal {
        let r = exceeded.rule;
        self.metrics.rate_limited.inc();
        let per = match (r.per, user) {
            (Per::User, Some(_)) => "user",
            _ => "client address",
        };
        let message = format!(
            "rate limit exceeded: {} allows {} requests per second (burst {}) per {per}",
            r.path_prefix, r.per_second, r.burst
        );
        Refusal::new(429, message).with("Retry-After", HeaderValue::from_static("1"))
    }

    /// Answers the request with `refusal` and records why; `Ok(true)`, as `request_filter`
    /// returns for a request answered here.
    pub async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut Exchange,
        refusal: Refusal,
    ) -> pingora::Result<bool> {
        let tid = ctx.tracking_id.as_ref();
        reply::send(
            session,
            refusal.status,
            (&refusal.message, refusal.body.as_ref()),
            tid,
            &refusal.headers,
        )
        .await?;
        ctx.refusal = Some(refusal.message);
        Ok(true)
    }

    /// Counts streamed request body bytes; an error once the limit is passed.
    pub fn count_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Exchange,
    ) -> pingora::Result<()> {
        // A WebSocket's frames are not a request body.
        if let Some(websocket) = &mut ctx.websocket {
            websocket.from_client(body);
            return Ok(());
        }
        // The request is sent once its body is.
        if end_of_stream && ctx.sent_at.is_some() && ctx.upstream_status.is_none() {
            ctx.sent_at = Some(Instant::now());
        }
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > self.limits.max_body_bytes {
            let message = self.body_message();
            return Err(ctx.refuse(413, message));
        }
        Ok(())
    }

    fn body_message(&self) -> String {
        format!(
            "request body larger than {} bytes",
            self.limits.max_body_bytes
        )
    }

    /// The upstream's response header arrived.
    pub fn upstream_answered(&self, resp: &ResponseHeader, ctx: &mut Exchange) {
        // Timed to the final header: a 100 Continue or a 103 is not the answer (a 101 is).
        let interim =
            resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS;
        if ctx.upstream_status.is_none() && !interim {
            if let Some(sent) = ctx.sent_at {
                let waited = sent.elapsed();
                ctx.upstream_header_ms = Some(access_log::millis(waited));
                if let Some(node) = ctx
                    .upstream
                    .and_then(|n| self.metrics.upstream_header.get(n))
                {
                    node.observe(waited.as_secs_f64());
                }
            }
        }
        if interim {
            return;
        }
        ctx.upstream_status = Some(resp.status.as_u16());
        // Every upgrade Pingora tunnels is a WebSocket the client asked for (`reduce` refuses
        // any other), followed frame by frame.
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS && ctx.websocket.is_none() {
            ctx.websocket = Some(WebSocket::default());
            self.lifecycle.websocket_opened();
            self.metrics.websockets.inc();
            if let Some(node) = ctx
                .upstream
                .and_then(|n| self.metrics.upstream_websockets.get(n))
            {
                node.inc();
            }
        }
    }

    /// The future that ends an upgraded session with close frames (see `edge::websocket`):
    /// when `revoked` changes, the process closes its WebSockets, or no frame passed for
    /// `websocket_idle_timeout_ms`.
    pub fn upgraded_close(
        &self,
        ctx: &Exchange,
        revoked: Option<tokio::sync::watch::Receiver<()>>,
    ) -> Option<Pin<Box<dyn Future<Output = UpgradedClose> + Send>>> {
        let websocket = ctx.websocket.as_ref()?;
        Some(websocket.closer(
            revoked,
            self.lifecycle.websockets_closing(),
            self.limits.websocket_idle_timeout,
        ))
    }

    /// Upgraded bytes from the upstream, on their way to the client.
    pub fn upgraded_from_upstream(&self, body: &mut Option<Bytes>, ctx: &mut Exchange) {
        if let Some(websocket) = &mut ctx.websocket {
            websocket.from_upstream(body);
        }
    }

    /// The last step of every request: the access-log line and the metrics.
    pub fn finish(
        &self,
        session: &Session,
        ctx: &mut Exchange,
        labels: Labels,
        error: Option<&pingora::Error>,
    ) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if error.is_some_and(|e| {
            e.etype() == &pingora::ErrorType::WriteTimedout
                && e.esource() == &pingora::ErrorSource::Downstream
        }) {
            self.metrics.send_timeouts.inc();
            ctx.refusal = Some(Cow::Owned(format!(
                "the client took no more of the response for {} ms (limits.client_send_timeout_ms): connection closed",
                self.limits.client_send_timeout.as_millis()
            )));
        }
        if std::mem::take(&mut ctx.in_flight) {
            self.metrics.in_flight.dec();
        }
        if let Some(websocket) = ctx.websocket.take() {
            if let Some(why) = websocket.ended_by_proxy() {
                ctx.refusal = Some(Cow::Borrowed(why));
            }
            self.lifecycle.websocket_closed();
            self.metrics.websockets.dec();
            if let Some(node) = ctx
                .upstream
                .and_then(|n| self.metrics.upstream_websockets.get(n))
            {
                node.dec();
            }
        }
        self.metrics
            .finish(ctx.route, status, ctx.started.elapsed());
        if self.log.enabled() {
            self.write_log(session, ctx, status, labels, error);
        }
    }

    /// A request Pingora refused before any rule ran (see `ProxyHttp::request_refused`): counted
    /// and logged as every other answer. The client is the connection's (its TCP peer, or the
    /// one its PROXY header named): forwarding headers of a refused request are not believed.
    pub fn refused(
        &self,
        digest: Option<&Digest>,
        request: Option<&RequestHeader>,
        status: u16,
        error: &pingora::Error,
    ) {
        self.metrics.count(None, status);
        if !self.log.enabled() {
            return;
        }
        let refusal = match status {
            405 => "method_not_allowed",
            431 => "header_too_large",
            _ => "malformed_request",
        };
        // Without a request header read whole, the connection spoke HTTP/1 (an HTTP/2
        // request's header is always read whole).
        let protocol = match request.map(|r| r.version) {
            Some(http::Version::HTTP_2) => "HTTP/2",
            Some(http::Version::HTTP_10) => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        self.log.write(&Entry {
            time: access_log::Timestamp::now(),
            service: &self.name,
            route: None,
            client_ip: digest
                .and_then(|d| d.socket_digest.as_ref())
                .and_then(|s| s.peer_addr())
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_canonical()),
            user: None,
            method: request.map_or("", |r| r.method.as_str()),
            host: None,
            path: request.map_or("", |r| clip(r.uri.path())),
            protocol,
            status,
            bytes_sent: 0,
            duration_ms: 0.0,
            upstream: None,
            upstream_status: None,
            upstream_connect_ms: None,
            upstream_header_ms: None,
            upstream_bytes: 0,
            attempts: 0,
            cache: "BYPASS",
            external_auth: None,
            tracking_id: None,
            refusal: Some(refusal),
            error: Some(refusal_reason(error)),
        });
    }

    fn write_log(
        &self,
        session: &Session,
        ctx: &Exchange,
        status: u16,
        labels: Labels,
        error: Option<&pingora::Error>,
    ) {
        let req = session.req_header();
        self.log.write(&Entry {
            time: access_log::Timestamp::now(),
            service: &self.name,
            route: labels.route,
            client_ip: ctx.client.map(|c| c.ip),
            user: ctx.user.as_deref().map(clip),
            method: req.method.as_str(),
            host: req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.authority().map(|a| a.as_str()))
                .map(clip),
            path: clip(req.uri.path()),
            protocol: access_log::protocol(session),
            status,
            bytes_sent: session.body_bytes_sent(),
            duration_ms: access_log::millis_since(ctx.started),
            upstream: labels.upstream,
            upstream_status: ctx.upstream_status,
            upstream_connect_ms: ctx.upstream_connect_ms,
            upstream_header_ms: ctx.upstream_header_ms,
            upstream_bytes: ctx.upstream_bytes,
            attempts: ctx.attempts,
            cache: labels.cache,
            external_auth: ctx.external_auth,
            tracking_id: ctx.tracking_id.as_ref().and_then(|t| t.to_str().ok()),
            refusal: None,
            // Clipped: an upstream's unparseable answer is quoted in its error, up to 1 MiB.
            error: match (&ctx.refusal, error) {
                (Some(refusal), Some(e))
                    if !matches!(e.etype(), pingora::ErrorType::HTTPStatus(_)) =>
                {
                    Some(format!("{refusal}: {e}"))
                }
                (Some(refusal), _) => Some(refusal.to_string()),
                (None, Some(e)) => Some(e.to_string()),
                (None, None) => None,
            }
            .map(|mut text| {
                text.truncate(clip(&text).len());
                text
            }),
        });
    }
}

/// What was wrong with a refused request, for the log: the kind of error and its context, but
/// never a context quoting the raw request (Pingora's parse errors do, credentials included).
fn refusal_reason(error: &pingora::Error) -> String {
    let mut reason = error.etype().as_str().to_string();
    if let Some(context) = error.context.as_ref().map(|c| c.as_str()) {
        if !context.starts_with("buf:") {
            reason.push_str(": ");
            reason.push_str(clip(context));
        }
    }
    if let Some(cause) = &error.cause {
        reason.push_str(": ");
        reason.push_str(clip(&cause.to_string()));
    }
    reason
}

/// Longest value a client controls that goes into a log line.
const LOGGED_MAX: usize = 1024;

/// `text` cut to at most `LOGGED_MAX` bytes (at a character boundary).
fn clip(text: &str) -> &str {
    if text.len() <= LOGGED_MAX {
        return text;
    }
    let mut end = LOGGED_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether ccedge itself ended this request's WebSocket (logged in the access log, not an error).
pub fn closed_by_proxy(ctx: &Exchange) -> bool {
    ctx.websocket
        .as_ref()
        .is_some_and(|w| w.ended_by_proxy().is_some())
}

/// Names used in the access-log line, resolved by the service from the exchange's indexes.
pub struct Labels<'a> {
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub cache: &'a str,
}

/// The TCP peer's address (a Unix-socket peer counts as loopback).
pub fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip().to_canonical())
}

/// ccedge's own address on the connection the request arrived on.
pub fn local_ip(session: &Session) -> IpAddr {
    session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip().to_canonical())
}

/// The port the request arrived on.
pub fn local_port(session: &Session) -> u16 {
    session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map_or(0, |a| a.port())
}

/// Response headers on the way to the client (proxied responses).
pub fn on_response(resp: &mut ResponseHeader, ctx: &Exchange) -> pingora::Result<()> {
    match &ctx.tracking_id {
        Some(tid) => crate::edge::headers::apply_response(resp, tid),
        None => Ok(()),
    }
}

/// A request that could not be proxied: answer with ccedge's own error response.
pub async fn on_failure(session: &mut Session, e: &pingora::Error, ctx: &Exchange) -> FailToProxy {
    let (code, default_message) = reply::for_error(e);
    if code > 0 {
        let message = ctx.refusal.as_deref().unwrap_or(default_message);
        let tid = ctx.tracking_id.as_ref();
        if let Err(err) = reply::send(session, code, (message, None), tid, &[]).await {
            log::debug!("could not send the {code} response: {err}");
        }
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_at_a_character() {
        assert_eq!(clip("/desktop/"), "/desktop/");
        let long = "é".repeat(LOGGED_MAX);
        let cut = clip(&long);
        assert!(cut.len() <= LOGGED_MAX && cut.len() >= LOGGED_MAX - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
