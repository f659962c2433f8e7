//! Client connections, counted while they are open: per service for the metrics, and per
//! listening port and client address (an IPv6 client by its network, `limits.ipv6_prefix`)
//! against `limits.max_connections_per_ip`, or for an address in one of
//! `limits.connections_by_cidr` (an office's NAT range), that network's cap. A connection over
//! the limit is answered `503` and closed (HTTP/1.1) or closed at once (HTTP/2), after its TLS
//! handshake, which `client_header_timeout_ms` bounds. Addresses in `trusted_proxies` are not
//! limited: a load balancer carries many clients.

use crate::config::cidr::CidrSet;
use crate::config::CidrLimit;
use crate::edge::identity;
use crate::observe::lifecycle::Lifecycle;
use crate::observe::metrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

const OVER_LIMIT: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 44\r\nRetry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n\
too many open connections from your address\n";

struct Open {
    count: u32,
    /// The second (since the epoch) this address was last reported over its limit.
    reported: u64,
}

pub struct ConnectionLimits {
    service: String,
    /// The limit on each listening port; a port not listed (or 0) has none.
    limits: Vec<(u16, u32)>,
    /// Caps for networks, most specific first.
    by_cidr: Vec<CidrLimit>,
    trusted: CidrSet,
    v6_prefix: u8,
    open: Mutex<HashMap<(u16, IpAddr), Open>>,
    open_gauge: IntGauge,
    over_limit: IntCounter,
}

impl ConnectionLimits {
    /// `limits`: the cap on each listening port; `by_cidr` and `v6_prefix` as the service's
    /// `limits` set them.
    pub fn new(
        service: &str,
        limits: Vec<(u16, u32)>,
        by_cidr: &[CidrLimit],
        trusted: &CidrSet,
        v6_prefix: u8,
    ) -> Arc<Self> {
        let (open_gauge, over_limit) = metrics::connections(service);
        Arc::new(ConnectionLimits {
            service: service.to_string(),
            limits,
            by_cidr: by_cidr.to_vec(),
            trusted: trusted.clone(),
            v6_prefix,
            open: Mutex::new(HashMap::new()),
            open_gauge,
            over_limit,
        })
    }

    fn limit(&self, port: u16, ip: IpAddr) -> Option<u32> {
        if self.trusted.contains(ip) {
            return None;
        }
        if let Some(network) = self.by_cidr.iter().find(|c| c.cidr.contains(&ip)) {
            return Some(network.max).filter(|max| *max > 0);
        }
        self.limits
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, l)| *l)
            .filter(|l| *l > 0)
    }

    /// Counts a new connection from `ip` on `port`; `None` when it is over the limit.
    fn enter(self: &Arc<Self>, port: u16, ip: IpAddr) -> Option<Slot> {
        let limit = self.limit(port, ip);
        let key = identity::client_key(ip, self.v6_prefix);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let entry = open.entry((port, key)).or_insert(Open {
            count: 0,
            reported: 0,
        });
        if limit.is_some_and(|l| entry.count >= l) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let report = entry.reported < now;
            entry.reported = now;
            drop(open);
            self.over_limit.inc();
            if report {
                log::warn!(
                    "service {}: {} holds {} connections on port {port}, its limit: further ones are refused",
                    self.service,
                    identity::show_key(key, self.v6_prefix),
                    limit.unwrap_or_default()
                );
            }
            return None;
        }
        entry.count += 1;
        self.open_gauge.inc();
        Some(Slot {
            limits: self.clone(),
            key: (port, key),
        })
    }
}

/// One open connection, counted until dropped.
struct Slot {
    limits: Arc<ConnectionLimits>,
    key: (u16, IpAddr),
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.open_gauge.dec();
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = open.get_mut(&self.key) {
            entry.count -= 1;
            if entry.count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A server application whose connections are counted and limited, and which end as the
/// process's lifecycle says (a drain, a reload, a stop) rather than only at the server's
/// shutdown.
pub struct Limited<A> {
    app: Arc<A>,
    limits: Arc<ConnectionLimits>,
    lifecycle: Arc<Lifecycle>,
}

impl<A> Limited<A> {
    pub fn new(app: A, limits: Arc<ConnectionLimits>, lifecycle: Arc<Lifecycle>) -> Self {
        Limited {
            app: Arc::new(app),
            limits,
            lifecycle,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = self.lifecycle.connection();
        let shutdown = &self.lifecycle.connection_watch();
        let socket = stream.get_socket_digest();
        let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| {
            a.and_then(|a| a.as_inet()).copied()
        };
        let peer = socket.as_ref().and_then(|s| inet(s.peer_addr()));
        let local = socket.as_ref().and_then(|s| inet(s.local_addr()));
        let (Some(peer), Some(local)) = (peer, local) else {
            return self.app.process_new(stream, shutdown).await;
        };
        let ip = peer.ip().to_canonical();
        match self.limits.enter(local.port(), ip) {
            Some(_counted) => self.app.process_new(stream, shutdown).await,
            None => {
                if stream.selected_alpn_proto() != Some(ALPN::H2) {
                    let _ = stream.write_all(OVER_LIMIT).await;
                    let _ = stream.flush().await;
                }
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// Counts each connection a service accepts, for the drain (which waits for connections still
/// in their handshake), after the service's own filter (`client_allow`, `trusted_proxies`).
pub struct Accepting {
    filter: Option<Arc<dyn ConnectionFilter>>,
    lifecycle: Arc<Lifecycle>,
}

impl std::fmt::Debug for Accepting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepting")
            .field("filter", &self.filter)
            .finish()
    }
}

impl Accepting {
    pub fn new(filter: Option<Arc<dyn ConnectionFilter>>, lifecycle: Arc<Lifecycle>) -> Self {
        Accepting { filter, lifecycle }
    }
}

#[async_trait]
impl ConnectionFilter for Accepting {
    async fn should_accept(&self, addr: Option<&std::net::SocketAddr>) -> bool {
        if let Some(filter) = &self.filter {
            if !filter.should_accept(addr).await {
                return false;
            }
        }
        self.lifecycle.accepted();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_limit_answer_declares_its_length() {
        let text = std::str::from_utf8(OVER_LIMIT).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn limits_per_port_and_address_trusted_proxies_aside() {
        let trusted = CidrSet::new(vec!["10.0.0.1/32".parse().unwrap()]);
        let l = ConnectionLimits::new("conn-test", vec![(8445, 2), (8553, 0)], &[], &trusted, 64);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let one = l.enter(8445, a).unwrap();
        let two = l.enter(8445, a).unwrap();
        assert!(l.enter(8445, a).is_none());
        assert!(
            l.enter(8445, b).is_some(),
            "another address has its own count"
        );
        assert!(l.enter(9999, a).is_some(), "a port without a limit");
        let many: Vec<_> = (0..10).map(|_| l.enter(8553, a).unwrap()).collect();
        let balancer: Vec<_> = (0..10)
            .map(|_| l.enter(8445, "10.0.0.1".parse().unwrap()).unwrap())
            .collect();
        drop(one);
        let three = l.enter(8445, a);
        assert!(three.is_some(), "a closed connection frees its place");
        drop((two, three, many, balancer));
        assert!(l.open.lock().unwrap().is_empty());
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let held: Vec<_> = ["2001:db8:1:2::1", "2001:db8:1:2::2"]
            .iter()
            .map(|a| l.enter(8445, v6(a)).unwrap())
            .collect();
        assert!(
            l.enter(8445, v6("2001:db8:1:2:ffff::3")).is_none(),
            "one IPv6 network is one client"
        );
        assert!(l.enter(8445, v6("2001:db8:1:3::1")).is_some());
        drop(held);
    }

    #[test]
    fn office_networks_get_their_own_cap_the_most_specific_first() {
        let net = |cidr: &str, max| CidrLimit {
            cidr: cidr.parse().unwrap(),
            max,
        };
        // As the loader orders them: the most specific network first.
        let offices = [net("198.51.100.7/32", 0), net("198.51.100.0/24", 3)];
        let l = ConnectionLimits::new(
            "conn-office",
            vec![(8445, 1)],
            &offices,
            &CidrSet::default(),
            64,
        );
        let nat: IpAddr = "198.51.100.9".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| l.enter(8445, nat).unwrap()).collect();
        assert!(l.enter(8445, nat).is_none(), "the office network's cap");
        let unlimited: IpAddr = "198.51.100.7".parse().unwrap();
        let many: Vec<_> = (0..10).map(|_| l.enter(8445, unlimited).unwrap()).collect();
        let elsewhere: IpAddr = "192.0.2.1".parse().unwrap();
        let one = l.enter(8445, elsewhere).unwrap();
        assert!(
            l.enter(8445, elsewhere).is_none(),
            "max_connections_per_ip elsewhere"
        );
        drop((held, many, one));
    }
}
