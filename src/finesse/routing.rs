//! Finesse route selection: the listening port picks the servers bound to it, the request's host
//! picks one of them. Anything else is not ours to forward (421).

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
}
