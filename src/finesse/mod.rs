//! The VPN-less Finesse front end: many Finesse, IdS, CUIC, LiveData and chat servers behind one
//! proxy, selected by listening port and then by host; WebSockets end to end; response bodies and
//! `Location` headers rewritten from internal to public names.

mod auth;
mod cache;
mod health;
pub mod proxymap;
mod routing;
pub mod substitution;

use crate::config::tls::{self, Presented};
use crate::config::{FinesseService, OnError, Per};
use crate::edge::exchange::{self, Exchange, Front, Labels};
use crate::edge::headers::{self, RouteHeaders};
use crate::edge::limits::{self, RateLimiter};
use crate::edge::reply::Refusal;
use crate::edge::{target, upstream};
use crate::observe::access_log::AccessLog;
use crate::observe::admin::{self, Purged, StatusSource};
use crate::observe::lifecycle::Lifecycle;
use crate::observe::metrics::Totals;
use crate::observe::throttle::OncePerSecond;
use crate::state::handover::{Carried, Clock, SiteState};
use crate::state::shared::{HeldBlock, Listener, SiteShare};
use crate::state::Continuity;
use async_trait::async_trait;
pub use auth::signing_keys_in;
use auth::{Asked, Auth, Decision, Ruling};
use bytes::Bytes;
use cache::SiteCache;
use http::header::{self, HeaderName, HeaderValue};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session, UpgradedClose};
use routing::RouteTable;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use substitution::{Locations, Plan, StreamRewrite};

/// One internal server as the proxy uses it.
struct Route {
    public: String,
    upstream: String,
    headers: RouteHeaders,
    peer: HttpPeer,
    /// Set once an encoded body has been passed through unrewritten (logged once per route).
    encoded_seen: AtomicBool,
    /// What the latest request to the server said about it.
    observed: health::Observed,
}

/// Headers the external check adds to a request it allowed.
type Added = Option<Arc<[(HeaderName, HeaderValue)]>>;

/// Everything a Finesse site needs per request, built once at load.
pub struct FinesseSite {
    table: RouteTable,
    routes: Vec<Route>,
    front: Front,
    plan: Plan,
    locations: Locations,
    auth: Option<Auth>,
    /// Clients connect with TLS.
    https: bool,
    cache: Option<SiteCache>,
    /// With `server.shared_state`: the site's keys and channel in Redis.
    share: Option<Arc<SiteShare>>,
    status: serde_json::Value,
    certificates: Vec<Presented>,
    /// Stale copies served for a failing upstream are logged at most once a second.
    stale_report: OncePerSecond,
}

impl FinesseSite {
    pub fn new(
        service: &FinesseService,
        (log, lifecycle): (Arc<AccessLog>, Arc<Lifecycle>),
        state: &Continuity,
    ) -> Self {
        let https = service.tls.is_some();
        let routes = service
            .servers
            .iter()
            .map(|s| Route {
                public: s.public.to_string(),
                upstream: s.upstream.authority.to_string(),
                headers: RouteHeaders::new(&s.public, https, true),
                peer: upstream::peer(
                    &service.name,
                    &s.upstream,
                    s.upstream_tls.as_ref().or(service.upstream_tls.as_ref()),
                    &service.limits,
                ),
                encoded_seen: AtomicBool::new(false),
                observed: health::Observed::default(),
            })
            .collect();
        let table = RouteTable::new(
            service
                .servers
                .iter()
                .map(|s| (s.listen_port, s.public.host.as_str())),
        );
        // Role defaults count per user where ccedge verifies users.
        let per = match service.auth {
            Some(_) => Per::User,
            None => Per::Address,
        };
        let rate = match &service.rate_limits {
            Some(rules) => RateLimiter::by_path(rules.clone()),
            None => RateLimiter::by_route(
                service
                    .servers
                    .iter()
                    .map(|s| limits::role_default(s.role, per))
                    .collect(),
            ),
        }
        .map(|r| r.shared(state.rate_share(&service.name)));
        let status = json!({
            "name": service.name,
            "kind": "finesse",
            "listen": service.listen_ports().iter()
                .map(|p| std::net::SocketAddr::new(service.bind, *p).to_string())
                .collect::<Vec<_>>(),
            "tls": service.tls.as_ref().map(|t| t.summary()),
            "routes": service.servers.iter().map(|s| json!({
                "public": s.public.to_string(),
                "listen_port": s.listen_port,
                "role": s.role,
                "upstream": s.upstream.authority.to_string(),
                "rate_limit": match &service.rate_limits {
                    Some(_) => json!("rate_limits of the site"),
                    None => json!(limits::role_default(s.role, per)),
                },
            })).collect::<Vec<_>>(),
            "upstreams": service.servers.iter().map(|s| json!({
                "address": s.upstream.authority.to_string(),
                "resolved": s.upstream.addr.to_string(),
                "tls": s.upstream_tls.is_some() || service.upstream_tls.is_some(),
            })).collect::<Vec<_>>(),
            "settings": service,
        });
        let route_names: Vec<String> = service
            .servers
            .iter()
            .map(|s| s.public.to_string())
            .collect();
        let route_names: Vec<&str> = route_names.iter().map(String::as_str).collect();
        // A request's node is its route's server.
        let nodes: Vec<String> = service
            .servers
            .iter()
            .map(|s| s.upstream.authority.to_string())
            .collect();
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let clients = service.upstream_tls.iter().chain(
            service
                .servers
                .iter()
                .filter_map(|s| s.upstream_tls.as_ref()),
        );
        let mut hosts: Vec<&str> = service
            .servers
            .iter()
            .map(|s| s.public.host.as_str())
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        let certificates = tls::presented(service.tls.as_ref(), &hosts, clients);
        admin::record_certificates(&service.name, &certificates);
        let share = state.shared.as_ref().map(|s| s.site(&service.name));
        FinesseSite {
            share: share.clone(),
            certificates,
            table,
            routes,
            front: Front::new(
                &service.name,
                &service.clients,
                rate,
                &service.limits,
                (log, lifecycle),
                &route_names,
                &nodes,
            ),
            plan: Plan::new(
                &service.substitutions,
                &service.servers,
                service.rewrite_upstream_hosts,
            ),
            locations: Locations::new(&service.servers, https),
            https,
            auth: service
                .auth
                .as_ref()
                .map(|a| Auth::new(&service.name, a, &service.limits, (state, share.clone()))),
            cache: service
                .cache
                .as_ref()
                .map(|c| SiteCache::new(&service.name, c, &service.limits)),
            status,
            stale_report: OncePerSecond::default(),
        }
    }

    /// Prepares the body rewrite for a response to a request for `path` (as rules match it) and
    /// adjusts its headers, if one applies.
    /// `head_upstream`: the upstream was asked with `HEAD` (a cached `HEAD` is fetched with `GET`,
    /// and its body is stored rewritten).
    fn rewrite_for(
        &self,
        path: &str,
        head_upstream: bool,
        resp: &mut ResponseHeader,
        route: usize,
    ) -> Option<StreamRewrite> {
        if let Some(location) = resp
            .headers
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
        {
            if let Some(public) = self.locations.rewrite(location) {
                // A rewritten URL is ASCII like the one it replaces.
                let _ = resp.insert_header(header::LOCATION, public);
            }
        }
        let status = resp.status.as_u16();
        if matches!(status, 101 | 204 | 206 | 304) || head_upstream {
            return None;
        }
        let content_type = resp
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|t| t.to_str().ok());
        let rewriter = self.plan.for_response(path, content_type)?;
        if let Some(encoding) = resp.headers.get(header::CONTENT_ENCODING) {
            if encoding.as_bytes() != b"identity" {
                let r = &self.routes[route];
                if !r.encoded_seen.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "service {}: {} sent a {:?}-encoded body although Accept-Encoding was removed; \
                         such bodies pass through without substitution (logged once per server)",
                        self.front.name,
                        r.upstream,
                        encoding
                    );
                }
                return None;
            }
        }
        resp.remove_header(&header::CONTENT_LENGTH);
        Some(StreamRewrite::new(rewriter))
    }
}

impl FinesseSite {
    /// What a request passes before it is forwarded, in order: its target reduced to the one
    /// every rule judges, its route, the limits, authentication, the external check. The
    /// headers that check adds upstream, when it allowed the request.
    async fn gate(&self, session: &mut Session, ctx: &mut Exchange) -> Result<Added, Refusal> {
        self.front.reduce(session.req_header_mut(), ctx)?;
        let port = exchange::local_port(session);
        let route = target::request_host(session.req_header())
            .and_then(|host| self.table.lookup(port, host))
            .ok_or_else(|| Refusal::new(421, "no server is configured for this host and port"))?;
        ctx.route = Some(route);
        self.front.prepare(session, ctx);
        let req = session.req_header();
        self.front.admit(req, ctx)?;
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let Some(client) = ctx.client else {
            return Err(Refusal::new(500, "the client's address is unknown"));
        };
        match auth
            .check(req, ctx.rule_path(req), client, ctx.wants_websocket)
            .await
        {
            Decision::Pass { user, public } => {
                ctx.user = user.clone().filter(|u| auth::loggable(u));
                ctx.verified = user;
                self.front.admit_user(req, ctx)?;
                let Some(external) = auth.external().filter(|e| e.applies(public)) else {
                    return Ok(None);
                };
                let asked = Asked {
                    req,
                    path: ctx.rule_path(req),
                    host: &self.routes[route].public,
                    https: self.https,
                    client: client.ip,
                    user: ctx.verified.as_deref(),
                    tracking_id: ctx.tracking_id.as_ref(),
                };
                let (ruling, outcome) = external.check(&asked).await;
                ctx.external_auth = Some(outcome);
                match ruling {
                    Ruling::Allowed(added) => Ok(Some(added)),
                    Ruling::Denied(denial) => Err(denial.refusal()),
                    Ruling::Unasked(why) => Err(Refusal::new(
                        403,
                        format!("the external check cannot be asked about this request: {why}"),
                    )),
                    Ruling::Failed(_) if external.on_error() == OnError::Allow => Ok(None),
                    Ruling::Failed(why) => Err(Refusal::new(
                        503,
                        format!("the external check did not decide: {why}"),
                    )),
                }
            }
            Decision::Refuse { refusal, user } => {
                ctx.user = user;
                // Without a verified user, it counts per address under a rule per user.
                self.front.admit_user(req, ctx)?;
                Err(refusal)
            }
        }
    }

    /// The background task keeping the SSO signing keys current, when the site has one.
    pub fn key_refresh(&self) -> Option<auth::KeyRefresh> {
        self.auth.as_ref().and_then(Auth::key_refresh)
    }
}

/// A site with authentication hands its lockouts and kept verdicts over at a reload.
impl Carried for FinesseSite {
    fn site(&self) -> &str {
        &self.front.name
    }

    fn changes(&self) -> u64 {
        self.auth.as_ref().map_or(0, Auth::changes)
    }

    fn export(&self, clock: &Clock, now: Instant) -> SiteState {
        self.auth
            .as_ref()
            .map(|a| a.export(clock, now))
            .unwrap_or_default()
    }

    fn import(&self, state: SiteState, from: u32, same_key: bool, clock: &Clock, now: Instant) {
        if let Some(auth) = &self.auth {
            auth.import(state, from, same_key, clock, now);
        }
    }

    fn revoked_before(&self, user: &str, at: Instant) {
        if let Some(auth) = &self.auth {
            auth.revoked_before(user, at);
        }
    }

    fn stop_judging(&self) {
        if let Some(auth) = &self.auth {
            auth.stop_judging();
        }
    }
}

/// What other instances announce (with `server.shared_state`).
impl Listener for FinesseSite {
    fn blocked(&self, ip: std::net::IpAddr, user: Option<(u64, Option<&str>)>, left: Duration) {
        if let Some(auth) = &self.auth {
            auth.block_from_elsewhere(ip, user, left);
        }
    }

    fn lifted(&self, ip: std::net::IpAddr, user: Option<&str>) {
        if let Some(auth) = &self.auth {
            auth.lifted_elsewhere(ip, user);
        }
    }

    fn revoked(&self, user: &str, ago: Duration) {
        if let Some(auth) = &self.auth {
            auth.revoked_elsewhere(user, ago);
        }
    }

    fn purged(&self, prefix: Option<&str>) {
        if let Some(cache) = &self.cache {
            let purged = cache.purge(prefix);
            log::info!(
                "service {}: cache purged by another instance's admin listener{}: {} entries, {} bytes",
                self.front.name,
                prefix.map_or_else(String::new, |p| format!(" (under {p})")),
                purged.entries,
                purged.bytes
            );
        }
    }

    fn blocks(&self) -> Vec<HeldBlock> {
        self.auth.as_ref().map_or_else(Vec::new, Auth::blocks)
    }
}

impl FinesseSite {
    /// The site's share of the state instances share, when it has one.
    pub fn share(&self) -> Option<Arc<SiteShare>> {
        self.share.clone()
    }

    /// How long the site's verdicts are kept, when it has state a reload hands over.
    pub fn carried_state(&self) -> Option<Duration> {
        self.auth.as_ref().map(Auth::cache_for)
    }
}

#[async_trait]
impl StatusSource for FinesseSite {
    fn status(&self) -> serde_json::Value {
        let mut status = self.status.clone();
        status["certificates"] = self.certificates.iter().map(Presented::to_json).collect();
        if let Some(upstreams) = status["upstreams"].as_array_mut() {
            for (upstream, route) in upstreams.iter_mut().zip(&self.routes) {
                if let (Some(fields), Value::Object(seen)) =
                    (upstream.as_object_mut(), route.observed.status())
                {
                    fields.extend(seen);
                }
            }
        }
        if let Some(auth) = &self.auth {
            status["auth"] = auth.status();
        }
        if let Some(cache) = &self.cache {
            status["cache"] = cache.status();
        }
        status
    }

    fn purge_cache(&self, prefix: Option<&str>) -> Option<Purged> {
        let cache = self.cache.as_ref()?;
        if let Some(share) = self.share() {
            let prefix = prefix.map(str::to_string);
            tokio::spawn(async move { share.purge(prefix.as_deref()).await });
        }
        Some(cache.purge(prefix))
    }

    fn refresh_metrics(&self) {
        if let Some(cache) = &self.cache {
            cache.refresh_metrics();
        }
    }

    async fn lift_block(&self, ip: std::net::IpAddr, user: Option<&str>) -> bool {
        match &self.auth {
            Some(auth) => auth.lift_block(ip, user).await,
            None => false,
        }
    }

    fn revoke_user(&self, user: &str) -> Option<usize> {
        self.auth.as_ref().map(|a| a.revoke(user))
    }

    fn totals(&self) -> Totals {
        self.front.metrics.totals()
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

/// Per-request state: what every request has, and the body rewrite of this response.
pub struct FinesseCtx {
    exchange: Exchange,
    rewrite: Option<StreamRewrite>,
    /// The external check added headers to the request: its answer depends on them, as on
    /// credentials.
    added: bool,
    /// For a WebSocket of a verified user: changes when the user is revoked (Pingora waits on it
    /// once the session is upgraded).
    closing: Option<tokio::sync::watch::Receiver<()>>,
}

type Closing = std::pin::Pin<Box<dyn std::future::Future<Output = UpgradedClose> + Send>>;

#[async_trait]
impl ProxyHttp for FinesseProxy {
    type CTX = FinesseCtx;

    /// No downstream modules: ccedge never compresses responses, and Pingora's default adds a
    /// (disabled) compression module to every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> FinesseCtx {
        FinesseCtx {
            exchange: Exchange::new(),
            rewrite: None,
            added: false,
            closing: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<bool> {
        let front = &self.site.front;
        front.begin(session, &mut ctx.exchange);
        // Only the external check may write headers with its prefix: the client's own go before
        // any rule, the check, the cache or the upstream sees the request.
        let external = self.site.auth.as_ref().and_then(Auth::external);
        if let Some(external) = external {
            external.strip(session.req_header_mut());
        }
        // A WebSocket watches for its user's revocation from the moment its check began.
        let since = ctx.exchange.wants_websocket.then(Instant::now);
        let refusal = match self.site.gate(session, &mut ctx.exchange).await {
            Ok(added) => {
                if let Some(added) = added.filter(|a| !a.is_empty()) {
                    let req = session.req_header_mut();
                    for (name, value) in added.iter() {
                        req.append_header(name.clone(), value.clone())?;
                    }
                    ctx.added = true;
                }
                let exchange = &ctx.exchange;
                let (Some(auth), Some(user), Some(since)) =
                    (&self.site.auth, &exchange.verified, since)
                else {
                    return Ok(false);
                };
                match auth.watch(user, since) {
                    Some(closing) => {
                        ctx.closing = Some(closing);
                        return Ok(false);
                    }
                    None => Refusal::new(
                        503,
                        "the user was revoked while the credentials were checked: they are checked again on the next attempt",
                    )
                    .with("Retry-After", http::HeaderValue::from_static("1")),
                }
            }
            Err(refusal) => refusal,
        };
        front.respond(session, &mut ctx.exchange, refusal).await
    }

    /// A WebSocket ccedge ends gets close frames (see `edge::websocket`): 1008 for a revoked
    /// user, 1001 when idle or when the process closes its WebSockets.
    fn upgraded_close(&self, ctx: &mut FinesseCtx) -> Option<Closing> {
        let revocation = ctx.closing.take();
        self.site.front.upgraded_close(&ctx.exchange, revocation)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<Option<Duration>> {
        self.site
            .front
            .upgraded_from_upstream(body, &mut ctx.exchange);
        Ok(None)
    }

    fn suppress_error_log(
        &self,
        _session: &Session,
        ctx: &FinesseCtx,
        _e: &pingora::Error,
    ) -> bool {
        // A WebSocket the proxy closed is in the access log, no error.
        exchange::closed_by_proxy(&ctx.exchange)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<()> {
        self.site
            .front
            .count_body(body, end_of_stream, &mut ctx.exchange)
    }

    fn request_cache_filter(
        &self,
        session: &mut Session,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<()> {
        let Some(cache) = &self.site.cache else {
            return Ok(());
        };
        let req = session.req_header();
        let path = ctx.exchange.rule_path(req);
        if cache.wants(&req.method, path, ctx.exchange.wants_websocket) {
            cache.enable(session);
        }
        Ok(())
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<CacheKey> {
        let route = &self.site.routes[ctx.exchange.route.unwrap_or_default()];
        let uri = &session.req_header().uri;
        Ok(SiteCache::key(
            &route.upstream,
            &route.public,
            uri.path(),
            uri.query(),
        ))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<RespCacheable> {
        let Some(cache) = &self.site.cache else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        // A 304 confirms the stored representation, which is already one for everyone.
        let confirmed = ctx.exchange.upstream_status == Some(304);
        let credentialed =
            !confirmed && (ctx.added || cache::carries_credentials(session.req_header()));
        Ok(cache.judge(resp, credentialed))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut FinesseCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::variance(meta, req)
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut FinesseCtx,
        error: Option<&pingora::Error>,
    ) -> bool {
        let Some(e) = error else {
            // Within stale_while_revalidate: serve the stale copy while one request revalidates.
            return true;
        };
        let upstream = e.esource() == &pingora::ErrorSource::Upstream;
        if upstream && self.site.stale_report.ready() {
            let route = &self.site.routes[ctx.exchange.route.unwrap_or_default()];
            log::warn!(
                "service {}: {} failed while revalidating {}: the stale copy is served ({e})",
                self.site.front.name,
                route.upstream,
                session.req_header().uri.path()
            );
        }
        upstream
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let ctx = &mut ctx.exchange;
        let route = ctx
            .route
            .ok_or_else(|| pingora::Error::new(pingora::ErrorType::HTTPStatus(421)))?;
        ctx.attempt(route);
        let peer = &self.site.routes[route].peer;
        Ok(upstream::for_request(
            peer,
            ctx.wants_websocket,
            &self.site.front.limits,
        ))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        digest: Option<&Digest>,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<()> {
        ctx.exchange.connected(reused);
        upstream::check_connection(digest)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<()> {
        let ctx = &ctx.exchange;
        let (client, tid) = ctx.identity()?;
        let route = ctx.route.unwrap_or_default();
        let headers = &self.site.routes[route].headers;
        headers::apply_request(req, headers, client, exchange::local_ip(session), tid)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<()> {
        self.site.front.upstream_answered(resp, &mut ctx.exchange);
        if let Some(route) = ctx.exchange.route {
            let req = session.req_header();
            let head_upstream = req.method == http::Method::HEAD && !session.cache.enabled();
            let path = ctx.exchange.rule_path(req);
            ctx.rewrite = self.site.rewrite_for(path, head_upstream, resp, route);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<Option<Duration>> {
        ctx.exchange.upstream_body(body);
        if let Some(rewrite) = ctx.rewrite.as_mut() {
            let out = rewrite.push(body.take().unwrap_or_default(), end_of_stream);
            *body = (!out.is_empty() || end_of_stream).then_some(out);
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut FinesseCtx,
    ) -> pingora::Result<()> {
        exchange::on_response(resp, &ctx.exchange)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut FinesseCtx,
    ) -> FailToProxy {
        exchange::on_failure(session, e, &ctx.exchange).await
    }

    fn request_refused(
        &self,
        digest: Option<&Digest>,
        request: Option<&RequestHeader>,
        status: u16,
        error: &pingora::Error,
    ) {
        self.site.front.refused(digest, request, status, error);
    }

    async fn logging(
        &self,
        session: &mut Session,
        e: Option<&pingora::Error>,
        ctx: &mut FinesseCtx,
    ) {
        let site = &self.site;
        let ctx = &mut ctx.exchange;
        let phase = session.cache.phase();
        if let Some(cache) = &site.cache {
            cache.count(phase);
        }
        if let Some(upstream) = ctx.upstream {
            let observed = &site.routes[upstream].observed;
            match e {
                _ if ctx.upstream_status.is_some() => observed.answered(),
                Some(e) if *e.esource() == pingora::ErrorSource::Upstream => observed.failed(e),
                _ => {}
            }
        }
        let labels = Labels {
            route: ctx.route.map(|r| site.routes[r].public.as_str()),
            upstream: ctx.upstream.map(|r| site.routes[r].upstream.as_str()),
            cache: SiteCache::outcome(phase),
        };
        site.front.finish(session, ctx, labels, e);
    }
}
