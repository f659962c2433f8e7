//! `client_allow`: connections from addresses outside the list are dropped as soon as they are
//! accepted, before any TLS handshake, so nothing is revealed to them.

use crate::config::cidr::CidrSet;
use crate::observe::throttle::OncePerSecond;
use async_trait::async_trait;
use pingora::listeners::ConnectionFilter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct AllowList {
    service: String,
    /// The key the list comes from, for the log.
    key: &'static str,
    allow: CidrSet,
    refused: AtomicU64,
    report: OncePerSecond,
}

impl AllowList {
    /// `None` when the list is empty (everyone may connect); `key` names where it comes from.
    pub fn new(service: &str, allow: &CidrSet, key: &'static str) -> Option<Self> {
        (!allow.is_empty()).then(|| AllowList {
            service: service.to_string(),
            key,
            allow: allow.clone(),
            refused: AtomicU64::new(0),
            report: OncePerSecond::default(),
        })
    }

    fn report(&self, addr: &SocketAddr) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        crate::observe::metrics::connection_refused(&self.service);
        if self.report.ready() {
            log::warn!(
                "service {}: refused connection from {} (not in {}); {refused} refused since start",
                self.service,
                addr.ip(),
                self.key
            );
        }
    }
}

#[async_trait]
impl ConnectionFilter for AllowList {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        match addr {
            Some(addr) if self.allow.contains(addr.ip()) => true,
            Some(addr) => {
                self.report(addr);
                false
            }
            // A Unix-socket peer has no address to judge; ccedge listens on TCP only.
            None => true,
        }
    }
}
