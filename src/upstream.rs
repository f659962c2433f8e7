//! Connections to internal servers: one `HttpPeer` per node, built at configuration load and
//! cloned per request.

use crate::config::{Limits, Upstream};
use crate::tls::UpstreamTls;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use std::time::Duration;

/// How long an idle pooled upstream connection is kept: below the usual 20 s server-side
/// keep-alive, so ccedge does not reuse a connection the server is about to close.
const POOL_IDLE: Duration = Duration::from_secs(15);

pub fn peer(upstream: &Upstream, tls: Option<&UpstreamTls>, limits: &Limits) -> HttpPeer {
    let sni = tls
        .and_then(|t| t.server_name.clone())
        .unwrap_or_else(|| upstream.authority.host.clone());
    let mut peer = HttpPeer::new(upstream.addr, tls.is_some(), sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(limits.upstream_connect_timeout);
    o.read_timeout = Some(limits.upstream_read_timeout);
    o.write_timeout = Some(limits.upstream_read_timeout);
    o.idle_timeout = Some(POOL_IDLE);
    // WebSocket upgrades need HTTP/1.1 upstream; Finesse and Cloud Connect speak it.
    o.alpn = ALPN::H1;
    o.http_upstream_request_policy = HttpUpstreamRequestPolicy::standard();
    if let Some(tls) = tls {
        o.verify_cert = tls.verify;
        o.verify_hostname = tls.verify;
        o.ca = tls.ca.clone();
        peer.client_cert_key = tls.client.clone();
    }
    peer
}
