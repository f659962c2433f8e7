//! Who the client is: the TCP peer, or — when the peer is a trusted load balancer — the address
//! that balancer names in `X-Forwarded-For` / `X-Real-IP`.

use crate::config::cidr::CidrSet;
use http::header::HeaderMap;
use std::net::{IpAddr, SocketAddr};

pub const X_REAL_IP: &str = "x-real-ip";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client's address as ccedge reports it upstream and in the log.
    pub ip: IpAddr,
    /// Whether the TCP peer is in `trusted_proxies` (its forwarding headers are believed).
    pub peer_trusted: bool,
}

/// The contract's rule: for a trusted peer, the right-most `X-Forwarded-For` entry that is not
/// itself trusted; if every entry is trusted, the left-most one; without a usable
/// `X-Forwarded-For`, the peer's `X-Real-IP`; otherwise the peer itself.
pub fn resolve(peer: IpAddr, trusted: &CidrSet, headers: &HeaderMap) -> ClientIdentity {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return ClientIdentity {
            ip: peer,
            peer_trusted: false,
        };
    }
    let ip = from_forwarded_for(trusted, headers)
        .or_else(|| {
            headers
                .get(X_REAL_IP)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_forwarded_ip)
        })
        .unwrap_or(peer);
    ClientIdentity {
        ip,
        peer_trusted: true,
    }
}

fn from_forwarded_for(trusted: &CidrSet, headers: &HeaderMap) -> Option<IpAddr> {
    let mut leftmost = None;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let value = value.to_str().ok()?;
        for entry in value.rsplit(',') {
            if entry.trim().is_empty() {
                continue;
            }
            // An entry that is not an address ends the walk: nothing to its left can be checked.
            let ip = parse_forwarded_ip(entry)?;
            if !trusted.contains(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
    }
    leftmost
}

/// One forwarded address: `a.b.c.d`, `v6`, `[v6]`, `a.b.c.d:port` or `[v6]:port`.
pub fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = entry.parse::<SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|v6| v6.parse::<IpAddr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(entries: &[&str]) -> CidrSet {
        CidrSet::new(
            entries
                .iter()
                .map(|e| CidrSet::parse_entry(e).unwrap())
                .collect(),
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_cannot_claim_another_address() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]);
        let id = resolve(ip("203.0.113.9"), &trusted(&["10.0.0.0/8"]), &h);
        assert_eq!(id.ip, ip("203.0.113.9"));
        assert!(!id.peer_trusted);
    }

    #[test]
    fn trusted_peer_names_right_most_untrusted_entry() {
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.0.0.2")]);
        let id = resolve(ip("10.0.0.1"), &trusted(&["10.0.0.0/8"]), &h);
        assert_eq!(id.ip, ip("203.0.113.7"));
        assert!(id.peer_trusted);
    }

    #[test]
    fn several_forwarded_for_lines_read_as_one_list() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        let id = resolve(ip("10.0.0.1"), &trusted(&["10.0.0.0/8"]), &h);
        assert_eq!(id.ip, ip("198.51.100.1"));
    }

    #[test]
    fn all_trusted_entries_give_the_left_most() {
        let h = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.3")]);
        let id = resolve(ip("10.0.0.1"), &trusted(&["10.0.0.0/8"]), &h);
        assert_eq!(id.ip, ip("10.0.0.9"));
    }

    #[test]
    fn real_ip_when_no_forwarded_for() {
        let h = headers(&[("x-real-ip", "198.51.100.77")]);
        let id = resolve(ip("10.0.0.1"), &trusted(&["10.0.0.0/8"]), &h);
        assert_eq!(id.ip, ip("198.51.100.77"));
    }

    #[test]
    fn garbage_falls_back_to_real_ip_then_peer() {
        let h = headers(&[
            ("x-forwarded-for", "unknown"),
            ("x-real-ip", "198.51.100.5"),
        ]);
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(resolve(ip("10.0.0.1"), &t, &h).ip, ip("198.51.100.5"));
        let h = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(resolve(ip("10.0.0.1"), &t, &h).ip, ip("10.0.0.1"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        assert_eq!(
            parse_forwarded_ip(" 198.51.100.1:4711 "),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            parse_forwarded_ip("[2001:db8::1]:443"),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(parse_forwarded_ip("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(
            parse_forwarded_ip("::ffff:192.0.2.1"),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(parse_forwarded_ip("_hidden"), None);
        let id = resolve(
            ip("::ffff:127.0.0.1"),
            &CidrSet::default(),
            &HeaderMap::new(),
        );
        assert_eq!(id.ip, ip("127.0.0.1"));
    }
}
