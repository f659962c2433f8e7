//! The Cloud Connect front end: Webex Connect -> ccedge -> Cloud Connect publisher/subscriber.
//!
//! Requests go to the publisher while its health checks pass, else to the subscriber; both down
//! is 503. A connection that fails before anything was sent is retried once on the other node,
//! and so is an idempotent request whose connection broke before any answer. DataConn
//! (`publisher_only_paths`) never goes to the subscriber.

mod health;

use crate::config::tls::{self, Presented};
use crate::config::DigitalService;
use crate::edge::exchange::{self, Exchange, Front, Labels};
use crate::edge::headers::{self, RouteHeaders};
use crate::edge::limits::RateLimiter;
use crate::edge::reply::Refusal;
use crate::edge::{target, upstream};
use crate::observe::access_log::AccessLog;
use crate::observe::admin::{self, StatusSource};
use crate::observe::lifecycle::Lifecycle;
use crate::observe::metrics::Totals;
use crate::state::Continuity;
use async_trait::async_trait;
use bytes::Bytes;
use health::NodeHealth;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session, UpgradedClose};
use pingora::services::background::GenBackgroundService;
use serde_json::json;
use std::sync::Arc;

const PUBLISHER: usize = 0;
const SUBSCRIBER: usize = 1;
const NODE_NAMES: [&str; 2] = ["publisher", "subscriber"];

const ROUTE_DEFAULT: usize = 0;
const ROUTE_PUBLISHER_ONLY: usize = 1;
const ROUTE_NAMES: [&str; 2] = ["default", "publisher_only"];

/// Everything a digital-channel service needs per request, built once at load.
pub struct DigitalChannel {
    route_headers: RouteHeaders,
    peers: [HttpPeer; 2],
    node_addrs: [String; 2],
    health: Arc<NodeHealth>,
    publisher_only_paths: Vec<String>,
    /// The public host, which an absolute-form target must name.
    public_host: String,
    front: Front,
    status: serde_json::Value,
    certificates: Vec<Presented>,
}

impl DigitalChannel {
    /// The channel and the background service that runs its health checks.
    /// `health_state` is the file that carries node health over a reload.
    pub fn new(
        service: &DigitalService,
        (log, lifecycle): (Arc<AccessLog>, Arc<Lifecycle>),
        health_state: std::path::PathBuf,
        state: &Continuity,
    ) -> (Self, GenBackgroundService<LoadBalancer<RoundRobin>>) {
        let tls = service.upstream_tls.as_ref();
        let nodes = [&service.publisher, &service.subscriber];
        let peers = nodes.map(|n| upstream::peer(&service.name, n, tls, &service.limits));
        let node_addrs = nodes.map(|n| n.authority.to_string());
        let watched = (0..2)
            .map(|i| health::Node {
                label: NODE_NAMES[i],
                address: node_addrs[i].clone(),
                peer: peers[i].clone(),
            })
            .collect();
        let (health, checks) = health::watch(
            &service.name,
            watched,
            &service.health_check,
            &service.public.to_string(),
            health_state,
        );
        let hosts = [service.public.host.as_str()];
        let certificates = tls::presented(service.tls.as_ref(), &hosts, tls.into_iter());
        admin::record_certificates(&service.name, &certificates);
        let front = Front::new(
            &service.name,
            &service.clients,
            RateLimiter::by_path(service.rate_limits.clone())
                .map(|r| r.shared(state.rate_share(&service.name))),
            &service.limits,
            (log, lifecycle),
            &ROUTE_NAMES,
            &node_addrs.each_ref().map(String::as_str),
        );
        let channel = DigitalChannel {
            certificates,
            route_headers: RouteHeaders::new(&service.public, service.tls.is_some(), false),
            peers,
            node_addrs,
            health,
            publisher_only_paths: service.publisher_only_paths.clone(),
            public_host: service.public.host.clone(),
            front,
            status: json!({
                "name": service.name,
                "kind": "digital_channel",
                "listen": service.listen.to_string(),
                "tls": service.tls.as_ref().map(|t| t.summary()),
                "public": service.public.to_string(),
                "routes": [
                    {"name": ROUTE_NAMES[ROUTE_DEFAULT], "paths": "/", "nodes": NODE_NAMES},
                    {"name": ROUTE_NAMES[ROUTE_PUBLISHER_ONLY],
                     "paths": service.publisher_only_paths, "nodes": [NODE_NAMES[PUBLISHER]]},
                ],
                "settings": service,
            }),
        };
        (channel, checks)
    }

    /// What a request passes before it is forwarded: its target reduced to the one every rule
    /// judges, its route, the limits.
    fn gate(&self, session: &mut Session, ctx: &mut Exchange) -> Result<(), Refusal> {
        self.front.reduce(session.req_header_mut(), ctx)?;
        let req = session.req_header();
        let named = target::request_host(req);
        if ctx.absolute
            && !named.is_some_and(|h| h.eq_ignore_ascii_case(self.public_host.as_bytes()))
        {
            return Err(Refusal::new(
                421,
                "the request target names a host this channel does not serve",
            ));
        }
        ctx.route = Some(self.route_for(ctx.rule_path(req)));
        self.front.prepare(session, ctx);
        self.front.admit(session.req_header(), ctx)
    }

    fn route_for(&self, path: &str) -> usize {
        if self
            .publisher_only_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
        {
            ROUTE_PUBLISHER_ONLY
        } else {
            ROUTE_DEFAULT
        }
    }

    /// The node for this attempt, or why there is none.
    fn choose(&self, ctx: &mut Exchange) -> pingora::Result<usize> {
        let usable = |node: usize| ctx.failed_node != Some(node) && self.health.healthy(node);
        match ctx.route {
            Some(ROUTE_PUBLISHER_ONLY) if usable(PUBLISHER) => Ok(PUBLISHER),
            Some(ROUTE_PUBLISHER_ONLY) => Err(ctx.refuse(
                503,
                "the Cloud Connect publisher is unavailable; this path is served only by the publisher",
            )),
            _ => match [PUBLISHER, SUBSCRIBER].into_iter().find(|n| usable(*n)) {
                Some(node) => Ok(node),
                None if ctx.failed_node.is_some() => Err(ctx.refuse(
                    502,
                    "the Cloud Connect node chosen could not be reached and the other one is down",
                )),
                None => Err(ctx.refuse(
                    503,
                    "no Cloud Connect node is available: publisher and subscriber are both down",
                )),
            },
        }
    }

    /// Whether a failed attempt may be repeated on the other node.
    fn may_fail_over(&self, ctx: &Exchange) -> bool {
        ctx.route == Some(ROUTE_DEFAULT) && ctx.attempts == 1
    }
}

#[async_trait]
impl StatusSource for DigitalChannel {
    fn status(&self) -> serde_json::Value {
        let mut status = self.status.clone();
        let health = self.health.status();
        status["upstreams"] = health["nodes"].clone();
        status["certificates"] = self.certificates.iter().map(Presented::to_json).collect();
        status
    }

    fn totals(&self) -> Totals {
        self.front.metrics.totals()
    }
}

pub struct DigitalProxy {
    channel: Arc<DigitalChannel>,
}

impl DigitalProxy {
    pub fn new(channel: Arc<DigitalChannel>) -> Self {
        DigitalProxy { channel }
    }
}

#[async_trait]
impl ProxyHttp for DigitalProxy {
    type CTX = Exchange;

    /// No downstream modules: ccedge never compresses responses, and Pingora's default adds a
    /// (disabled) compression module to every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Exchange {
        Exchange::new()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Exchange,
    ) -> pingora::Result<bool> {
        let ch = &self.channel;
        ch.front.begin(session, ctx);
        match ch.gate(session, ctx) {
            Ok(()) => Ok(false),
            Err(refusal) => ch.front.respond(session, ctx, refusal).await,
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Exchange,
    ) -> pingora::Result<()> {
        self.channel.front.count_body(body, end_of_stream, ctx)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Exchange,
    ) -> pingora::Result<Box<HttpPeer>> {
        let ch = &self.channel;
        let node = ch.choose(ctx)?;
        ctx.attempt(node);
        Ok(upstream::for_request(
            &ch.peers[node],
            ctx.wants_websocket,
            &ch.front.limits,
        ))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Exchange,
        mut e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        if self.channel.may_fail_over(ctx) {
            ctx.failed_node = ctx.upstream;
            self.channel.front.metrics.failovers.inc();
            e.set_retry(true);
        } else if ctx.route == Some(ROUTE_PUBLISHER_ONLY) {
            ctx.refusal = Some("the Cloud Connect publisher could not be reached".into());
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<pingora::Error>,
        ctx: &mut Exchange,
        client_reused: bool,
    ) -> Box<pingora::Error> {
        let idempotent = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let mut e = e.more_context(format!("Peer: {peer}"));
        let node_failed = e.esource() == &pingora::ErrorSource::Upstream;
        if !node_failed {
            // The client went away, or sent something wrong: no other node can help.
            e.set_retry(false);
        } else if idempotent && ctx.upstream_status.is_none() && self.channel.may_fail_over(ctx) {
            // Nothing came back: the node went away under this request. Ask the other one.
            ctx.failed_node = ctx.upstream;
            self.channel.front.metrics.failovers.inc();
            e.set_retry(true);
        } else if idempotent {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        digest: Option<&Digest>,
        ctx: &mut Exchange,
    ) -> pingora::Result<()> {
        ctx.connected(reused);
        upstream::check_connection(digest)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Exchange,
    ) -> pingora::Result<()> {
        let (client, tid) = ctx.identity()?;
        headers::apply_request(
            req,
            &self.channel.route_headers,
            client,
            exchange::local_ip(session),
            tid,
        )
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Exchange,
    ) -> pingora::Result<()> {
        self.channel.front.upstream_answered(resp, ctx);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Exchange,
    ) -> pingora::Result<Option<std::time::Duration>> {
        ctx.upstream_body(body);
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Exchange,
    ) -> pingora::Result<Option<std::time::Duration>> {
        self.channel.front.upgraded_from_upstream(body, ctx);
        Ok(None)
    }

    /// A WebSocket ccedge ends gets close frames (see `edge::websocket`).
    fn upgraded_close(
        &self,
        ctx: &mut Exchange,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = UpgradedClose> + Send>>> {
        self.channel.front.upgraded_close(ctx, None)
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Exchange, _e: &pingora::Error) -> bool {
        // A WebSocket the proxy closed is in the access log, no error.
        exchange::closed_by_proxy(ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Exchange,
    ) -> pingora::Result<()> {
        exchange::on_response(resp, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut Exchange,
    ) -> FailToProxy {
        exchange::on_failure(session, e, ctx).await
    }

    fn request_refused(
        &self,
        digest: Option<&Digest>,
        request: Option<&RequestHeader>,
        status: u16,
        error: &pingora::Error,
    ) {
        self.channel.front.refused(digest, request, status, error);
    }

    async fn logging(&self, session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Exchange) {
        let ch = &self.channel;
        let labels = Labels {
            route: ctx.route.map(|r| ROUTE_NAMES[r]),
            upstream: ctx.upstream.map(|n| ch.node_addrs[n].as_str()),
            cache: "BYPASS",
        };
        ch.front.finish(session, ctx, labels, e);
    }
}
