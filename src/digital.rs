//! The Cloud Connect front end: Webex Connect -> ccedge -> Cloud Connect publisher/subscriber.

use crate::access_log::AccessLog;
use crate::admin::StatusSource;
use crate::config::{ClientPolicy, DigitalService, Limits};
use crate::exchange::{self, Exchange, Labels};
use crate::headers::{self, RouteHeaders};
use crate::upstream;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
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
    pub name: String,
    route_headers: RouteHeaders,
    peers: [HttpPeer; 2],
    node_addrs: [String; 2],
    publisher_only_paths: Vec<String>,
    clients: ClientPolicy,
    limits: Limits,
    log: Arc<AccessLog>,
    status: serde_json::Value,
}

impl DigitalChannel {
    pub fn new(service: &DigitalService, log: Arc<AccessLog>) -> Self {
        let tls = service.upstream_tls.as_ref();
        let nodes = [&service.publisher, &service.subscriber];
        DigitalChannel {
            name: service.name.clone(),
            route_headers: RouteHeaders::new(&service.public, service.tls.is_some(), false),
            peers: nodes.map(|n| upstream::peer(n, tls, &service.limits)),
            node_addrs: nodes.map(|n| n.authority.to_string()),
            publisher_only_paths: service.publisher_only_paths.clone(),
            clients: service.clients.clone(),
            limits: service.limits.clone(),
            log,
            status: json!({
                "name": service.name,
                "kind": "digital_channel",
                "listen": service.listen.to_string(),
                "tls": service.tls.as_ref().map(|t| &t.summary),
                "public": service.public.to_string(),
                "routes": [
                    {"name": ROUTE_NAMES[ROUTE_DEFAULT], "paths": "/", "nodes": NODE_NAMES},
                    {"name": ROUTE_NAMES[ROUTE_PUBLISHER_ONLY],
                     "paths": service.publisher_only_paths, "nodes": [NODE_NAMES[PUBLISHER]]},
                ],
                "upstreams": [
                    {"node": NODE_NAMES[PUBLISHER], "address": service.publisher.authority.to_string(),
                     "tls": tls.is_some()},
                    {"node": NODE_NAMES[SUBSCRIBER], "address": service.subscriber.authority.to_string(),
                     "tls": tls.is_some()},
                ],
                "settings": service,
            }),
        }
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
}

impl StatusSource for DigitalChannel {
    fn status(&self) -> serde_json::Value {
        self.status.clone()
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

    fn new_ctx(&self) -> Exchange {
        Exchange::new()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Exchange,
    ) -> pingora::Result<bool> {
        let ch = &self.channel;
        ctx.begin(session, &ch.clients.trusted_proxies);
        session.set_keepalive(Some(ch.limits.keepalive_timeout.as_secs().max(1)));
        let route = ch.route_for(session.req_header().uri.path());
        ctx.route = Some(route);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Exchange,
    ) -> pingora::Result<Box<HttpPeer>> {
        let node = PUBLISHER;
        ctx.upstream = Some(node);
        Ok(Box::new(self.channel.peers[node].clone()))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        digest: Option<&Digest>,
        _ctx: &mut Exchange,
    ) -> pingora::Result<()> {
        upstream::check_connection(digest)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Exchange,
    ) -> pingora::Result<()> {
        let (Some(client), Some(tid)) = (ctx.client.as_ref(), ctx.tracking_id.as_ref()) else {
            return Ok(());
        };
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
        ctx.upstream_status = Some(resp.status.as_u16());
        Ok(())
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

    async fn logging(&self, session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Exchange) {
        let ch = &self.channel;
        let labels = Labels {
            service: &ch.name,
            route: ctx.route.map(|r| ROUTE_NAMES[r]),
            upstream: ctx.upstream.map(|n| ch.node_addrs[n].as_str()),
            cache: "BYPASS",
        };
        exchange::log(&ch.log, session, ctx, labels, e);
    }
}
