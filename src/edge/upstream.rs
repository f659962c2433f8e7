//! Connections to internal servers: one `HttpPeer` per node, built at configuration load and
//! cloned per request.

use crate::config::tls::{CertFacts, UpstreamTls};
use crate::config::{Limits, Upstream};
use crate::observe::metrics;
use pingora::protocols::tls::HandshakeCompleteHook;
use pingora::protocols::{Digest, ALPN};
use pingora::tls::ssl::SslRef;
use pingora::tls::x509::X509Ref;
use pingora::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long an idle pooled upstream connection is kept: below the usual 20 s server-side
/// keep-alive, so ccedge does not reuse a connection the server is about to close.
const POOL_IDLE: Duration = Duration::from_secs(15);

/// The peer for `upstream` of `service`. Over TLS, each new connection records the end of the
/// upstream certificate's validity in `ccedge_certificate_expiry_timestamp_seconds`.
pub fn peer(
    service: &str,
    upstream: &Upstream,
    tls: Option<&UpstreamTls>,
    limits: &Limits,
) -> HttpPeer {
    let name = tls.and_then(|t| t.server_name.clone());
    let sni = name
        .clone()
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
        let ip = upstream.authority.host.parse::<IpAddr>().ok();
        let check_ip = match (tls.verify, name, ip) {
            (true, None, Some(ip)) => {
                // Pingora matches names with X509_VERIFY_PARAM_add1_host, which never matches
                // an IP address: verify the chain there and the address here.
                o.verify_hostname = false;
                Some(ip)
            }
            _ => None,
        };
        o.upstream_tls_handshake_complete_hook = Some(handshake_hook(
            check_ip,
            service.to_string(),
            upstream.authority.to_string(),
        ));
    }
    peer
}

/// The peer for one request: an upgraded (WebSocket) connection may stay silent for
/// `websocket_idle_timeout` rather than the HTTP read timeout (it is then closed with close
/// frames; these timeouts are the backstop).
pub fn for_request(peer: &HttpPeer, upgrade: bool, limits: &Limits) -> Box<HttpPeer> {
    let mut peer = Box::new(peer.clone());
    if upgrade {
        let backstop = crate::edge::websocket::backstop(limits.websocket_idle_timeout);
        peer.options.read_timeout = Some(backstop);
        peer.options.write_timeout = Some(backstop);
    }
    peer
}

/// Puts `path` in place of the request's own path, keeping its query (and its scheme and
/// authority, for an HTTP/2 or absolute-form request).
pub fn set_path(req: &mut pingora::http::RequestHeader, path: &str) -> pingora::Result<()> {
    let target = match req.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = req.uri.clone().into_parts();
    let bad = |e: &dyn std::fmt::Display| {
        pingora::Error::explain(
            pingora::ErrorType::InvalidHTTPHeader,
            format!("normalised path {target:?}: {e}"),
        )
    };
    parts.path_and_query = Some(target.parse().map_err(|e| bad(&e))?);
    let uri = http::Uri::from_parts(parts).map_err(|e| bad(&e))?;
    req.set_uri(uri);
    Ok(())
}

/// The outcome of checking an upstream certificate's IP addresses, carried on the connection.
struct CertNamesIp {
    ip: IpAddr,
    named: bool,
}

/// After each handshake: the certificate's expiry into the metric of `service`'s upstream at
/// `address` (a series that exists only once a certificate was seen), and, with `check_ip`,
/// whether the certificate names that address.
fn handshake_hook(
    check_ip: Option<IpAddr>,
    service: String,
    address: String,
) -> HandshakeCompleteHook {
    let expiry = OnceLock::new();
    Arc::new(move |ssl: &SslRef| {
        let cert = ssl.peer_certificate();
        if let Some(cert) = &cert {
            expiry
                .get_or_init(|| metrics::certificate_expiry(&service, "upstream", &address))
                .set(CertFacts::of(cert).not_after);
        }
        let ip = check_ip?;
        let named = cert.is_some_and(|cert| names_ip(&cert, ip));
        Some(Arc::new(CertNamesIp { ip, named }) as Arc<dyn std::any::Any + Send + Sync>)
    })
}

/// Whether `cert` names `ip` among its subjectAltName IP addresses.
pub fn names_ip(cert: &X509Ref, ip: IpAddr) -> bool {
    cert.subject_alt_names().is_some_and(|names| {
        names
            .iter()
            .filter_map(|n| n.ipaddress())
            .any(|bytes| ip_bytes_match(ip, bytes))
    })
}

fn ip_bytes_match(ip: IpAddr, bytes: &[u8]) -> bool {
    match ip {
        IpAddr::V4(v4) => bytes == v4.octets(),
        IpAddr::V6(v6) => bytes == v6.octets(),
    }
}

/// Refuses a connection whose certificate was found not to name the upstream's IP address.
pub fn check_connection(digest: Option<&Digest>) -> pingora::Result<()> {
    let verdict = digest
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|ssl| ssl.extension.get::<CertNamesIp>());
    match verdict {
        Some(CertNamesIp { ip, named: false }) => Err(pingora::Error::explain(
            pingora::ErrorType::TLSHandshakeFailure,
            format!(
                "upstream certificate does not name {} (set upstream_tls.server_name to check a name instead)",
                ip
            ),
        )
        .into_up()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_bytes() {
        assert!(ip_bytes_match(
            "127.0.0.1".parse().unwrap(),
            &[127, 0, 0, 1]
        ));
        assert!(!ip_bytes_match(
            "127.0.0.2".parse().unwrap(),
            &[127, 0, 0, 1]
        ));
        let v6: IpAddr = "::1".parse().unwrap();
        let mut one = [0u8; 16];
        one[15] = 1;
        assert!(ip_bytes_match(v6, &one));
        assert!(!ip_bytes_match(v6, &[0, 0, 0, 1]));
    }
}
