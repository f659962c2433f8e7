//! The VPN-less Finesse front end: many Finesse, IdS, CUIC, LiveData and chat servers behind one
//! proxy, selected by listening port and then by host.

use crate::access_log::AccessLog;
use crate::admin::StatusSource;
use crate::config::{ClientPolicy, FinesseService};
use crate::exchange::{self, Exchange, Guard, Labels};
use crate::headers::{self, RouteHeaders};
use crate::limits::RateLimiter;
use crate::reply;
use crate::routing::{self, RouteTable};
use crate::upstream;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use serde_json::json;
use std::sync::Arc;

/// One internal server as the proxy uses it.
struct Route {
    public: String,
    upstream: String,
    headers: RouteHeaders,
    peer: HttpPeer,
}

/// Everything a Finesse service needs per request, built once at load.
pub struct FinesseSite {
    pub name: String,
    table: RouteTable,
    routes: Vec<Route>,
    clients: ClientPolicy,
    guard: Guard,
    log: Arc<AccessLog>,
    status: serde_json::Value,
}

impl FinesseSite {
    pub fn new(service: &FinesseService, log: Arc<AccessLog>) -> Self {
        let https = service.tls.is_some();
        let tls = service.upstream_tls.as_ref();
        let routes = service
            .servers
            .iter()
            .map(|s| Route {
                public: s.public.to_string(),
                upstream: s.upstream.authority.to_string(),
                headers: RouteHeaders::new(&s.public, https, true),
                peer: upstream::peer(&s.upstream, tls, &service.limits),
            })
            .collect();
        let table = RouteTable::new(
            service
                .servers
                .iter()
                .map(|s| (s.listen_port, s.public.host.as_str())),
        );
        let status = json!({
            "name": service.name,
            "kind": "finesse",
            "listen": service.listen_ports().iter()
                .map(|p| std::net::SocketAddr::new(service.bind, *p).to_string())
                .collect::<Vec<_>>(),
            "tls": service.tls.as_ref().map(|t| &t.summary),
            "routes": service.servers.iter().map(|s| json!({
                "public": s.public.to_string(),
                "listen_port": s.listen_port,
                "role": s.role,
                "upstream": s.upstream.authority.to_string(),
            })).collect::<Vec<_>>(),
            "upstreams": service.servers.iter().map(|s| json!({
                "address": s.upstream.authority.to_string(),
                "resolved": s.upstream.addr.to_string(),
                "tls": tls.is_some(),
            })).collect::<Vec<_>>(),
            "settings": service,
        });
        FinesseSite {
            name: service.name.clone(),
            table,
            routes,
            clients: service.clients.clone(),
            guard: Guard::new(
                RateLimiter::new(service.rate_limits.clone().unwrap_or_default()),
                &service.limits,
            ),
            log,
            status,
        }
    }
}

impl StatusSource for FinesseSite {
    fn status(&self) -> serde_json::Value {
        self.status.clone()
    }
}

pub struct FinesseProxy {
    site: Arc<FinesseSite>,
}

impl FinesseProxy {
    pub fn new(site: Arc<FinesseSite>) -> Self {
        FinesseProxy { site }
    }
}

#[async_trait]
impl ProxyHttp for FinesseProxy {
    type CTX = Exchange;

    fn new_ctx(&self) -> Exchange {
        Exchange::new()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Exchange,
    ) -> pingora::Result<bool> {
        let site = &self.site;
        ctx.begin(session, &site.clients.trusted_proxies);
        let port = exchange::local_port(session);
        let route = routing::request_host(session.req_header())
            .and_then(|host| site.table.lookup(port, host));
        match route {
            Some(route) => {
                ctx.route = Some(route);
                site.guard.admit(session, ctx).await
            }
            None => {
                reply::send(
                    session,
                    421,
                    "no server is configured for this host and port",
                    ctx.tracking_id.as_ref(),
                    &[],
                )
                .await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Exchange,
    ) -> pingora::Result<()> {
        self.site.guard.count_body(body, ctx)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Exchange,
    ) -> pingora::Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .ok_or_else(|| pingora::Error::new(pingora::ErrorType::HTTPStatus(421)))?;
        ctx.upstream = Some(route);
        Ok(Box::new(self.site.routes[route].peer.clone()))
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
        let (Some(route), Some(client), Some(tid)) =
            (ctx.route, ctx.client.as_ref(), ctx.tracking_id.as_ref())
        else {
            return Ok(());
        };
        let headers = &self.site.routes[route].headers;
        headers::apply_request(req, headers, client, exchange::local_ip(session), tid)
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
        let site = &self.site;
        let labels = Labels {
            service: &site.name,
            route: ctx.route.map(|r| site.routes[r].public.as_str()),
            upstream: ctx.upstream.map(|r| site.routes[r].upstream.as_str()),
            cache: "BYPASS",
        };
        exchange::log(&site.log, session, ctx, labels, e);
    }
}
