//! Address sets written as CIDRs (`10.0.0.0/8`, `fd00::/8`) or bare addresses.

use ipnet::IpNet;
use std::net::IpAddr;

/// A set of networks; matching normalises IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), which is
/// how an IPv4 client appears on a dual-stack socket.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    nets: Vec<IpNet>,
}

impl CidrSet {
    pub fn new(nets: Vec<IpNet>) -> Self {
        CidrSet { nets }
    }

    /// Parses one entry: a network in CIDR form or a single address (= /32 or /128).
    pub fn parse_entry(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            if net.trunc() != net {
                return Err(format!(
                    "`{text}` has host bits set; did you mean `{}`?",
                    net.trunc()
                ));
            }
            return Ok(net);
        }
        text.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("`{text}` is not a CIDR (a.b.c.d/n, v6/n) or an IP address"))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

impl serde::Serialize for CidrSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.nets.iter().map(|n| n.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> CidrSet {
        CidrSet::new(
            entries
                .iter()
                .map(|e| CidrSet::parse_entry(e).unwrap())
                .collect(),
        )
    }

    #[test]
    fn networks_and_bare_addresses() {
        let s = set(&["10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8"]);
        assert!(s.contains("10.200.3.4".parse().unwrap()));
        assert!(s.contains("192.168.1.7".parse().unwrap()));
        assert!(!s.contains("192.168.1.8".parse().unwrap()));
        assert!(s.contains("::1".parse().unwrap()));
        assert!(s.contains("fd12::5".parse().unwrap()));
        assert!(!s.contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_networks() {
        let s = set(&["127.0.0.0/8"]);
        assert!(s.contains("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn empty_set_matches_nothing() {
        assert!(!CidrSet::default().contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn rejects_garbage_and_host_bits() {
        assert!(CidrSet::parse_entry("10.0.0.0/33").is_err());
        assert!(CidrSet::parse_entry("example.com").is_err());
        assert!(CidrSet::parse_entry("10.0.0.0/").is_err());
        let err = CidrSet::parse_entry("10.1.2.3/8").unwrap_err();
        assert!(err.contains("10.0.0.0/8"), "{err}");
    }
}
