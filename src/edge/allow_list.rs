//! `client_allow`: connections from addresses outside the list are dropped as soon as they are
//! accepted, before any TLS handshake, so nothing is revealed to them.

use crate::config::cidr::CidrSet;
use async_trait::async_trait;
use pingora::listeners::ConnectionFilter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub struct AllowList {
    service: String,
    allow: CidrSet,
    refused: AtomicU64,
    /// The second (since the epoch) of the last log line, so a flood logs once a second.
    last_report: AtomicU64,
}

impl AllowList {
    /// `None` when the list is empty (everyone may connect).
    pub fn new(service: &str, allow: &CidrSet) -> Option<Self> {
        (!allow.is_empty()).then(|| AllowList {
            service: service.to_string(),
            allow: allow.clone(),
            refused: AtomicU64::new(0),
            last_report: AtomicU64::new(0),
        })
    }

    fn report(&self, addr: &SocketAddr) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        crate::observe::metrics::connection_refused(&self.service);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_report.load(Ordering::Relaxed);
        if now > last
            && self
                .last_report
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "service {}: refused connection from {} (not in client_allow); {refused} refused since start",
                self.service,
                addr.ip()
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
