//! Finesse route selection: the listening port picks the servers bound to it, the request's host
//! picks one of them. Anything else is not ours to forward (421).

use crate::edge::headers::absolute_form_authority;
use pingora::http::RequestHeader;

/// `(listen_port, public host) -> server index`, built once per service.
#[derive(Debug, Default)]
pub struct RouteTable {
    ports: Vec<PortRoutes>,
}

#[derive(Debug)]
struct PortRoutes {
    port: u16,
    /// Lower-case public hosts (IPv6 without brackets) and the server each selects.
    hosts: Vec<(Box<str>, usize)>,
}

impl RouteTable {
    /// `servers` yields each server's listen port and public host, in configuration order.
    pub fn new<'a>(servers: impl IntoIterator<Item = (u16, &'a str)>) -> Self {
        let mut table = RouteTable::default();
        for (index, (port, host)) in servers.into_iter().enumerate() {
            let entry = (host.to_ascii_lowercase().into_boxed_str(), index);
            match table.ports.iter_mut().find(|p| p.port == port) {
                Some(p) => p.hosts.push(entry),
                None => table.ports.push(PortRoutes {
                    port,
                    hosts: vec![entry],
                }),
            }
        }
        table
    }

    /// The server for a request that arrived on `port` naming `host` (any case, port stripped).
    pub fn lookup(&self, port: u16, host: &[u8]) -> Option<usize> {
        let routes = self.ports.iter().find(|p| p.port == port)?;
        routes
            .hosts
            .iter()
            .find(|(h, _)| h.as_bytes().eq_ignore_ascii_case(host))
            .map(|(_, i)| *i)
    }
}

/// The host a request names, without port or trailing dot: the absolute-form or HTTP/2
/// authority when there is one (it wins over `Host`), else the `Host` header.
pub fn request_host(req: &RequestHeader) -> Option<&[u8]> {
    let authority = match req.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => match absolute_form_authority(req.raw_path()) {
            Some(a) => a,
            None => req.headers.get(http::header::HOST)?.as_bytes(),
        },
    };
    host_of(authority)
}

/// `host[:port]` or `[v6][:port]` -> host. `None` when there is no host at all.
fn host_of(authority: &[u8]) -> Option<&[u8]> {
    let authority = match authority.iter().rposition(|b| *b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    let host = if let Some(rest) = authority.strip_prefix(b"[") {
        let end = rest.iter().position(|b| *b == b']')?;
        &rest[..end]
    } else {
        match authority.iter().rposition(|b| *b == b':') {
            Some(colon) => &authority[..colon],
            None => authority,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new([
            (8445, "finesse1.example.com"),
            (8553, "finesse1.example.com"),
            (8445, "cuic1.example.com"),
            (443, "fd00::1"),
        ])
    }

    #[test]
    fn port_then_host() {
        let t = table();
        assert_eq!(t.lookup(8445, b"finesse1.example.com"), Some(0));
        assert_eq!(t.lookup(8553, b"FINESSE1.example.COM"), Some(1));
        assert_eq!(t.lookup(8445, b"cuic1.example.com"), Some(2));
        assert_eq!(t.lookup(8553, b"cuic1.example.com"), None);
        assert_eq!(t.lookup(9999, b"finesse1.example.com"), None);
        assert_eq!(t.lookup(443, b"fd00::1"), Some(3));
    }

    fn req(target: &str, host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        if let Some(h) = host {
            r.insert_header("Host", h).unwrap();
        }
        r
    }

    #[test]
    fn host_header_forms() {
        let host = |h: &str| request_host(&req("/", Some(h))).map(|b| b.to_vec());
        assert_eq!(
            host("finesse1.example.com:8445"),
            Some(b"finesse1.example.com".to_vec())
        );
        assert_eq!(
            host("finesse1.example.com."),
            Some(b"finesse1.example.com".to_vec())
        );
        assert_eq!(host("[fd00::1]:443"), Some(b"fd00::1".to_vec()));
        assert_eq!(host(""), None);
        assert_eq!(request_host(&req("/", None)), None);
    }

    #[test]
    fn absolute_form_wins_over_host() {
        let r = req(
            "http://attacker.example.net/x",
            Some("finesse1.example.com"),
        );
        assert_eq!(request_host(&r), Some(&b"attacker.example.net"[..]));
        let r = req("http://user@finesse1.example.com:8445/x", Some("x"));
        assert_eq!(request_host(&r), Some(&b"finesse1.example.com"[..]));
    }
}
