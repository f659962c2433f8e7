//! The mandatory header policy (docs/configuration.md, "Header policy"): what every proxied
//! request carries upstream and what every response carries back. Pure functions over
//! pingora's header types.
//!
//! Pingora's `HttpUpstreamRequestPolicy` (left at its standard setting on every peer) has already
//! removed `Connection`, the headers it nominates and the other hop-by-hop headers, keeping only a
//! valid WebSocket upgrade, before these functions run.

use crate::config::Authority;
use crate::edge::identity::ClientIdentity;
use http::header::{self, HeaderMap, HeaderValue};
use pingora::http::{PrebuiltHeaderName, RequestHeader, ResponseHeader};
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::LazyLock;

pub const TRACKING_ID: &str = "TrackingID";

/// The names of the headers every request or response gets, parsed once.
struct Names {
    x_forwarded_for: PrebuiltHeaderName,
    x_client_ip: PrebuiltHeaderName,
    x_real_ip: PrebuiltHeaderName,
    x_forwarded_port: PrebuiltHeaderName,
    x_forwarded_proto: PrebuiltHeaderName,
    host: PrebuiltHeaderName,
    tracking_id: PrebuiltHeaderName,
}

static NAMES: LazyLock<Names> = LazyLock::new(|| Names {
    x_forwarded_for: PrebuiltHeaderName::from_static("x-forwarded-for", "X-Forwarded-For"),
    x_client_ip: PrebuiltHeaderName::from_static("x-client-ip", "X-Client-IP"),
    x_real_ip: PrebuiltHeaderName::from_static("x-real-ip", "X-Real-IP"),
    x_forwarded_port: PrebuiltHeaderName::from_static("x-forwarded-port", "X-Forwarded-Port"),
    x_forwarded_proto: PrebuiltHeaderName::from_static("x-forwarded-proto", "X-Forwarded-Proto"),
    host: PrebuiltHeaderName::from_static("host", "Host"),
    tracking_id: PrebuiltHeaderName::from_static("trackingid", TRACKING_ID),
});
const TRACKING_PREFIX: &[u8] = b"CCEDGE_";

/// Values fixed per route, computed once at configuration load.
#[derive(Debug, Clone)]
pub struct RouteHeaders {
    /// `Host`: the public host:port of the route.
    pub host: HeaderValue,
    /// `X-Forwarded-Port`: the public port.
    pub port: HeaderValue,
    /// `X-Forwarded-Proto`.
    pub proto: HeaderValue,
    /// Finesse services remove `Accept-Encoding` so bodies arrive uncompressed.
    pub strip_accept_encoding: bool,
}

impl RouteHeaders {
    pub fn new(public: &Authority, https: bool, strip_accept_encoding: bool) -> Self {
        RouteHeaders {
            host: HeaderValue::from_str(&public.to_string()).expect("validated authority"),
            port: HeaderValue::from(public.port),
            proto: HeaderValue::from_static(if https { "https" } else { "http" }),
            strip_accept_encoding,
        }
    }
}

/// Longest client TrackingID passed through (the vendor's `sendertype_uuid` is about 50 bytes).
const TRACKING_ID_MAX: usize = 256;

/// The client's `TrackingID` when it sent a usable one (1 to 256 visible ASCII characters),
/// else a new `CCEDGE_<uuid>`.
pub fn tracking_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(TRACKING_ID) {
        let bytes = v.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= TRACKING_ID_MAX
            && bytes.iter().all(|b| b.is_ascii_graphic())
        {
            return v.clone();
        }
    }
    let mut buf = [0u8; TRACKING_PREFIX.len() + uuid::fmt::Hyphenated::LENGTH];
    buf[..TRACKING_PREFIX.len()].copy_from_slice(TRACKING_PREFIX);
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf[TRACKING_PREFIX.len()..]);
    HeaderValue::from_bytes(&buf).expect("ASCII")
}

/// Rewrites a request about to go upstream.
pub fn apply_request(
    req: &mut RequestHeader,
    route: &RouteHeaders,
    client: &ClientIdentity,
    proxy_ip: IpAddr,
    tracking_id: &HeaderValue,
) -> pingora::Result<()> {
    let mut chain = String::with_capacity(64);
    if client.chain_kept {
        for value in req.headers.get_all("x-forwarded-for") {
            if let Ok(value) = value.to_str() {
                let value = value.trim().trim_matches(',');
                if !value.is_empty() {
                    chain.push_str(value);
                    chain.push_str(", ");
                }
            }
        }
    }
    if !client.peer_trusted {
        // Only a trusted balancer may speak for the client's origin.
        req.remove_header(&header::FORWARDED);
        req.remove_header("x-forwarded-host");
    }
    let start = chain.len();
    push_ip(&mut chain, client.ip);
    let ip = HeaderValue::from_str(&chain[start..]).expect("an IP is a header value");
    chain.push_str(", ");
    push_ip(&mut chain, proxy_ip.to_canonical());
    let chain = HeaderValue::try_from(chain).map_err(|e| {
        pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "X-Forwarded-For", e)
    })?;
    let n = &*NAMES;
    req.insert_prebuilt_header(&n.x_forwarded_for, chain);
    req.insert_prebuilt_header(&n.x_client_ip, ip.clone());
    req.insert_prebuilt_header(&n.x_real_ip, ip);
    req.insert_prebuilt_header(&n.x_forwarded_port, route.port.clone());
    req.insert_prebuilt_header(&n.x_forwarded_proto, route.proto.clone());
    req.insert_prebuilt_header(&n.host, route.host.clone());
    if route.strip_accept_encoding {
        req.remove_header(&header::ACCEPT_ENCODING);
    }
    req.insert_prebuilt_header(&n.tracking_id, tracking_id.clone());
    Ok(())
}

/// Appends `ip` as text. Every request formats two addresses; an IPv4 address is written
/// digit by digit, without the formatting machinery.
fn push_ip(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        let _ = write!(out, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// Whether the request asks for a WebSocket (RFC 6455): an HTTP/1.1 GET with `Upgrade: websocket`
/// and `Connection: upgrade`.
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.method == http::Method::GET
        && req.version == http::Version::HTTP_11
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
}

/// Whether Pingora will tunnel the request as an upgrade once the upstream answers 101: HTTP/1.1
/// with `Upgrade: websocket` alone, whatever the method or `Connection` (its own test).
pub fn tunnelled_by_pingora(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Rewrites a response about to go to the client: no upstream `Server`, the request's TrackingID.
pub fn apply_response(resp: &mut ResponseHeader, tracking_id: &HeaderValue) -> pingora::Result<()> {
    resp.remove_header(&header::SERVER);
    resp.insert_prebuilt_header(&NAMES.tracking_id, tracking_id.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn route(https: bool, finesse: bool) -> RouteHeaders {
        RouteHeaders::new(
            &Authority::parse("dc.example.com:443").unwrap(),
            https,
            finesse,
        )
    }

    fn client(ip: &str, trusted: bool) -> ClientIdentity {
        ClientIdentity {
            ip: ip.parse().unwrap(),
            peer_trusted: trusted,
            chain_kept: trusted,
            key: ip.parse().unwrap(),
        }
    }

    fn get<'a>(req: &'a RequestHeader, name: &str) -> &'a str {
        req.headers.get(name).unwrap().to_str().unwrap()
    }

    const PROXY: &str = "192.0.2.10";

    #[test]
    fn untrusted_client_gets_fresh_forwarding_headers() {
        let mut req = request(
            "/drapi/v1/tasks",
            &[
                ("Host", "evil.example.com"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
                ("X-Client-IP", "6.6.6.6"),
                ("X-Forwarded-Port", "1"),
                ("X-Forwarded-Proto", "gopher"),
                ("Forwarded", "for=6.6.6.6"),
                ("X-Forwarded-Host", "evil.example.com"),
                ("Accept-Encoding", "gzip"),
            ],
        );
        let tid = HeaderValue::from_static("WebexConnect_1");
        apply_request(
            &mut req,
            &route(true, false),
            &client("203.0.113.5", false),
            PROXY.parse().unwrap(),
            &tid,
        )
        .unwrap();
        assert_eq!(get(&req, "x-forwarded-for"), "203.0.113.5, 192.0.2.10");
        assert_eq!(get(&req, "x-real-ip"), "203.0.113.5");
        assert_eq!(get(&req, "x-client-ip"), "203.0.113.5");
        assert_eq!(get(&req, "x-forwarded-port"), "443");
        assert_eq!(get(&req, "x-forwarded-proto"), "https");
        assert_eq!(get(&req, "host"), "dc.example.com:443");
        assert_eq!(get(&req, "trackingid"), "WebexConnect_1");
        assert_eq!(get(&req, "accept-encoding"), "gzip");
        assert!(req.headers.get("forwarded").is_none());
        assert!(req.headers.get("x-forwarded-host").is_none());
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn addresses_are_written_as_rust_displays_them() {
        let addresses = [
            "0.0.0.0",
            "10.0.9.99",
            "100.1.20.255",
            "255.255.255.255",
            "2001:db8::1",
        ];
        for text in addresses {
            let mut out = String::from("x");
            push_ip(&mut out, text.parse().unwrap());
            assert_eq!(out, format!("x{text}"));
        }
        for octet in 0..=255u8 {
            let ip = IpAddr::from([octet, octet, 7, octet]);
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn trusted_balancer_chain_is_kept_then_client_then_proxy() {
        let mut req = request(
            "/",
            &[
                ("X-Forwarded-For", "198.51.100.1"),
                ("X-Forwarded-For", "203.0.113.5,"),
            ],
        );
        apply_request(
            &mut req,
            &route(false, false),
            &client("203.0.113.5", true),
            PROXY.parse().unwrap(),
            &HeaderValue::from_static("t"),
        )
        .unwrap();
        assert_eq!(
            get(&req, "x-forwarded-for"),
            "198.51.100.1, 203.0.113.5, 203.0.113.5, 192.0.2.10"
        );
        assert_eq!(get(&req, "x-forwarded-proto"), "http");
    }

    #[test]
    fn finesse_routes_drop_accept_encoding() {
        let mut req = request("/desktop/", &[("Accept-Encoding", "gzip, br")]);
        apply_request(
            &mut req,
            &route(true, true),
            &client("203.0.113.5", false),
            PROXY.parse().unwrap(),
            &HeaderValue::from_static("t"),
        )
        .unwrap();
        assert!(req.headers.get("accept-encoding").is_none());
    }

    #[test]
    fn websocket_upgrades_are_recognised() {
        let ws = request(
            "/ws",
            &[
                ("Upgrade", "WebSocket"),
                ("Connection", "keep-alive, Upgrade"),
            ],
        );
        assert!(is_websocket_upgrade(&ws));
        let h2c = request("/", &[("Upgrade", "h2c"), ("Connection", "Upgrade")]);
        assert!(!is_websocket_upgrade(&h2c));
        let no_connection = request("/ws", &[("Upgrade", "websocket")]);
        assert!(!is_websocket_upgrade(&no_connection));
        let mut post = request(
            "/ws",
            &[("Upgrade", "websocket"), ("Connection", "upgrade")],
        );
        post.set_method(http::Method::POST);
        assert!(!is_websocket_upgrade(&post));
    }

    #[test]
    fn oversized_or_strange_tracking_ids_are_replaced() {
        for bad in [
            "a".repeat(257),
            "has space".to_string(),
            "\u{7f}x".to_string(),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                "trackingid",
                HeaderValue::from_str(&bad).unwrap_or(HeaderValue::from_static("a b")),
            );
            assert!(
                tracking_id(&h).to_str().unwrap().starts_with("CCEDGE_"),
                "{bad:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            "trackingid",
            HeaderValue::from_str(&"a".repeat(256)).unwrap(),
        );
        assert_eq!(tracking_id(&h).len(), 256);
    }

    #[test]
    fn tracking_id_passed_or_generated() {
        let mut h = HeaderMap::new();
        h.insert("trackingid", HeaderValue::from_static("WebexConnect_abc"));
        assert_eq!(tracking_id(&h), "WebexConnect_abc");
        h.insert("trackingid", HeaderValue::from_static(""));
        let generated = tracking_id(&h);
        let text = generated.to_str().unwrap();
        assert!(text.starts_with("CCEDGE_"), "{text}");
        let uuid = uuid::Uuid::parse_str(&text[7..]).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_ne!(tracking_id(&HeaderMap::new()), generated);
    }

    #[test]
    fn response_loses_server_and_gains_tracking_id() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Server", "Apache-Coyote/1.1").unwrap();
        apply_response(&mut resp, &HeaderValue::from_static("T1")).unwrap();
        assert!(resp.headers.get("server").is_none());
        assert_eq!(resp.headers.get("trackingid").unwrap(), "T1");
    }
}
