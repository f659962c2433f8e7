//! What both proxies do for every request, whatever the route: establish who the client is and
//! the TrackingID, and write the access-log line at the end. The per-request context lives here.

use crate::access_log::{self, AccessLog, Entry};
use crate::cidr::CidrSet;
use crate::identity::{self, ClientIdentity};
use http::header::HeaderValue;
use pingora::proxy::Session;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

/// Per-request state shared by the filters of one request.
pub struct Exchange {
    pub started: Instant,
    pub client: Option<ClientIdentity>,
    pub tracking_id: Option<HeaderValue>,
    /// Index of the route taken, in the service's own numbering.
    pub route: Option<usize>,
    /// Index of the upstream node chosen.
    pub upstream: Option<usize>,
    pub upstream_status: Option<u16>,
    /// Why ccedge answered this request itself with an error, shown to the client.
    pub refusal: Option<&'static str>,
}

impl Exchange {
    pub fn new() -> Self {
        Exchange {
            started: Instant::now(),
            client: None,
            tracking_id: None,
            route: None,
            upstream: None,
            upstream_status: None,
            refusal: None,
        }
    }

    /// The first step of every request.
    pub fn begin(&mut self, session: &Session, trusted: &CidrSet) -> ClientIdentity {
        let header = session.req_header();
        let peer = peer_ip(session);
        let client = identity::resolve(peer, trusted, &header.headers);
        self.client = Some(client);
        self.tracking_id = Some(crate::headers::tracking_id(&header.headers));
        client
    }
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

/// Names used in the access-log line, resolved by the service from the exchange's indexes.
pub struct Labels<'a> {
    pub service: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub cache: &'a str,
}

pub fn log(
    log: &AccessLog,
    session: &Session,
    ctx: &Exchange,
    labels: Labels,
    error: Option<&pingora::Error>,
) {
    let req = session.req_header();
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let protocol = if session.is_http2() {
        "HTTP/2"
    } else {
        match req.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
    };
    log.write(&Entry {
        time: access_log::now(),
        service: labels.service,
        route: labels.route,
        client_ip: ctx.client.map(|c| c.ip.to_string()),
        method: req.method.as_str(),
        host: req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str())),
        path: req.uri.path(),
        protocol,
        status,
        bytes_sent: session.body_bytes_sent(),
        duration_ms: (ctx.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        upstream: labels.upstream,
        upstream_status: ctx.upstream_status,
        cache: labels.cache,
        tracking_id: ctx.tracking_id.as_ref().and_then(|t| t.to_str().ok()),
        error: error.map(|e| e.to_string()),
    });
}

/// Response headers on the way to the client (proxied responses).
pub fn on_response(
    resp: &mut pingora::http::ResponseHeader,
    ctx: &Exchange,
) -> pingora::Result<()> {
    match &ctx.tracking_id {
        Some(tid) => crate::headers::apply_response(resp, tid),
        None => Ok(()),
    }
}

/// A request that could not be proxied: answer with ccedge's own error response.
pub async fn on_failure(
    session: &mut Session,
    e: &pingora::Error,
    ctx: &Exchange,
) -> pingora::proxy::FailToProxy {
    let (code, default_message) = crate::reply::for_error(e);
    if code > 0 {
        let message = ctx.refusal.unwrap_or(default_message);
        let tid = ctx.tracking_id.as_ref();
        if let Err(err) = crate::reply::send(session, code, message, tid, &[]).await {
            log::debug!("could not send the {code} response: {err}");
        }
    }
    pingora::proxy::FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}
