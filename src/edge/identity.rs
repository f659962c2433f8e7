//! Who the client is: the TCP peer, or — when the peer is a trusted load balancer — the address
//! that balancer names in the header it sets (`client_ip_header`: `X-Forwarded-For` by default,
//! `X-Real-IP` or another). And the address that stands for the client in lockouts, rate limits
//! and connection caps: the address itself, or for IPv6 its network (`limits.ipv6_prefix`), since
//! one IPv6 host commonly holds a whole /64.

use crate::config::cidr::CidrSet;
use crate::config::{ClientIpHeader, ClientPolicy};
use http::header::HeaderMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const X_REAL_IP: &str = "x-real-ip";
const X_FORWARDED_FOR: &str = "x-forwarded-for";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client's address as ccedge reports it upstream and in the log.
    pub ip: IpAddr,
    /// Whether the TCP peer is in `trusted_proxies` (its forwarding headers are believed).
    pub peer_trusted: bool,
    /// Whether the peer's `X-Forwarded-For` is a chain it maintains, kept upstream: from a
    /// trusted peer whose client header is `X-Forwarded-For` (a balancer that names the client
    /// in another header passes on whatever the client wrote there).
    pub chain_kept: bool,
    /// What lockouts, rate limits and connection caps count the client as (see `client_key`).
    pub key: IpAddr,
}

/// How a service tells who its clients are, built once at load.
#[derive(Debug, Clone)]
pub struct Resolver {
    trusted: CidrSet,
    header: ClientIpHeader,
    v6_prefix: u8,
}

impl Resolver {
    /// `v6_prefix`: `limits.ipv6_prefix`.
    pub fn new(clients: &ClientPolicy, v6_prefix: u8) -> Self {
        Resolver {
            trusted: clients.trusted_proxies.clone(),
            header: clients.ip_header.clone(),
            v6_prefix,
        }
    }

    /// The client of a request from `peer` carrying `headers`. From a trusted peer, the
    /// right-most address of its client header that is not itself trusted (the left-most when
    /// all are); for `x-forwarded-for`, the peer's `X-Real-IP` when it sent no usable
    /// `X-Forwarded-For`; otherwise the peer itself. `relays`: whether the peer may speak for
    /// others at all (not an L4 balancer's own connection, see `proxy_protocol`).
    pub fn resolve(&self, peer: IpAddr, relays: bool, headers: &HeaderMap) -> ClientIdentity {
        let peer = peer.to_canonical();
        let peer_trusted = relays && self.trusted.contains(peer);
        let ip = if !peer_trusted {
            peer
        } else {
            match &self.header {
                ClientIpHeader::ForwardedFor => self
                    .named(headers, X_FORWARDED_FOR)
                    .or_else(|| self.named(headers, X_REAL_IP)),
                ClientIpHeader::Named(name) => self.named(headers, name.as_str()),
            }
            .unwrap_or(peer)
        };
        ClientIdentity {
            ip,
            peer_trusted,
            chain_kept: peer_trusted && self.header == ClientIpHeader::ForwardedFor,
            key: client_key(ip, self.v6_prefix),
        }
    }

    /// The address `name` gives: the right-most entry (of all its lines) that is not trusted.
    fn named(&self, headers: &HeaderMap, name: &str) -> Option<IpAddr> {
        let mut leftmost = None;
        for value in headers.get_all(name).iter().rev() {
            let value = value.to_str().ok()?;
            for entry in value.rsplit(',') {
                if entry.trim().is_empty() {
                    continue;
                }
                // An entry that is not an address ends the walk: nothing to its left can be checked.
                let ip = parse_forwarded_ip(entry)?;
                if !self.trusted.contains(ip) {
                    return Some(ip);
                }
                leftmost = Some(ip);
            }
        }
        leftmost
    }
}

/// What `ip` counts as for lockouts, limits and connection caps: an IPv4 address itself; an
/// IPv6 address its network of `v6_prefix` bits, except an IPv4 client translated by NAT64
/// (`64:ff9b::a.b.c.d`, RFC 6052's well-known prefix), which counts as its IPv4 address: behind
/// NAT64 every IPv4 client shares one /64.
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            IpAddr::V4(Ipv4Addr::from(u128::from(v6) as u32))
        }
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

/// A client key as people read it: the address, or for IPv6 the network
/// (`2001:db8:1:2::/64`).
pub fn show_key(key: IpAddr, v6_prefix: u8) -> String {
    match key {
        IpAddr::V6(_) if v6_prefix < 128 => format!("{key}/{v6_prefix}"),
        _ => key.to_string(),
    }
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

    fn resolver(trusted: CidrSet, header: ClientIpHeader, v6_prefix: u8) -> Resolver {
        Resolver {
            trusted,
            header,
            v6_prefix,
        }
    }

    fn resolve(peer: IpAddr, trusted: &CidrSet, headers: &HeaderMap) -> ClientIdentity {
        resolver(trusted.clone(), ClientIpHeader::ForwardedFor, 64).resolve(peer, true, headers)
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
    fn with_x_real_ip_chosen_a_forged_forwarded_for_is_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "192.0.2.66"),
            ("x-real-ip", "198.51.100.77"),
        ]);
        let real_ip = ClientIpHeader::Named(http::HeaderName::from_static("x-real-ip"));
        let r = resolver(trusted(&["10.0.0.0/8"]), real_ip, 64);
        let id = r.resolve(ip("10.0.0.1"), true, &h);
        assert_eq!(id.ip, ip("198.51.100.77"));
        assert!(
            id.peer_trusted && !id.chain_kept,
            "the client wrote that chain"
        );
        let only_forged = headers(&[("x-forwarded-for", "192.0.2.66")]);
        assert_eq!(
            r.resolve(ip("10.0.0.1"), true, &only_forged).ip,
            ip("10.0.0.1"),
            "without the chosen header, the balancer itself"
        );
        let other = ClientIpHeader::Named(http::HeaderName::from_static("true-client-ip"));
        let r = resolver(trusted(&["10.0.0.0/8"]), other, 64);
        let h = headers(&[
            ("true-client-ip", "203.0.113.8"),
            ("x-real-ip", "192.0.2.1"),
        ]);
        assert_eq!(r.resolve(ip("10.0.0.1"), true, &h).ip, ip("203.0.113.8"));
        assert_eq!(
            r.resolve(ip("203.0.113.99"), true, &h).ip,
            ip("203.0.113.99"),
            "only a trusted peer names the client"
        );
        let own = r.resolve(ip("10.0.0.1"), false, &h);
        assert_eq!(
            (own.ip, own.peer_trusted),
            (ip("10.0.0.1"), false),
            "an L4 balancer's own connection relays nobody"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix() {
        let r = resolver(trusted(&["10.0.0.0/8"]), ClientIpHeader::ForwardedFor, 64);
        let a = r.resolve(ip("2001:db8:1:2::1"), true, &HeaderMap::new());
        let b = r.resolve(ip("2001:db8:1:2:ffff::9"), true, &HeaderMap::new());
        let c = r.resolve(ip("2001:db8:1:3::1"), true, &HeaderMap::new());
        assert_eq!(a.ip, ip("2001:db8:1:2::1"), "the address itself is kept");
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        assert_eq!(show_key(a.key, 64), "2001:db8:1:2::/64");
        let v4 = r.resolve(ip("192.0.2.1"), true, &HeaderMap::new());
        assert_eq!(
            (v4.key, show_key(v4.key, 64)),
            (ip("192.0.2.1"), "192.0.2.1".into())
        );
        assert_eq!(show_key(ip("2001:db8::1"), 128), "2001:db8::1");
        assert_eq!(client_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_key(ip("2001:db8:ff::1"), 32), ip("2001:db8::"));
        assert_eq!(client_key(ip("2001:db8:ff::1"), 1), ip("::"));
        assert_eq!(
            client_key(ip("64:ff9b::c000:221"), 64),
            ip("192.0.2.33"),
            "NAT64 clients are their IPv4 address"
        );
        let forwarded = headers(&[("x-forwarded-for", "2001:db8:9:9::5")]);
        let via = r.resolve(ip("10.0.0.1"), true, &forwarded);
        assert_eq!(via.key, ip("2001:db8:9:9::"));
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
        assert_eq!((id.ip, id.key), (ip("127.0.0.1"), ip("127.0.0.1")));
    }
}
