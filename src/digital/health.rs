//! Active health checks of upstream nodes, on pingora-load-balancing's machinery (backends,
//! health thresholds, the background service) with ccedge's own probe: a `GET` of the check path
//! over exactly the connection settings traffic uses (TLS, CA, mTLS identity, IP check).

use crate::config::HealthCheck as CheckSettings;
use crate::edge::fetch;
use crate::observe::metrics;
use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::services::background::{background_service, GenBackgroundService};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest probe answer read: a ping answer is a few bytes.
const PROBE_BODY: usize = 1 << 20;

/// One node to watch.
pub struct Node {
    /// What the node is to the service ("publisher").
    pub label: &'static str,
    /// As configured ("cc-pub.internal:8445").
    pub address: String,
    /// The same peer traffic uses.
    pub peer: HttpPeer,
}

/// What is known about one node, for logs and `/status`.
#[derive(Default)]
struct Record {
    last_error: Option<String>,
    last_change: Option<String>,
    changes: u64,
    /// Pingora's verdict as last reported (nodes start healthy).
    down: bool,
}

/// Where a service's node health is kept across a reload: the new process starts with fresh
/// health (every node healthy), except that a node the old process had found down gets no
/// traffic until one of its checks passes.
struct StateFile {
    path: PathBuf,
    writing: Mutex<()>,
}

impl StateFile {
    fn load(&self) -> HashMap<String, bool> {
        // Only a file of ccedge's own (the pid file's folder may be shared, as /tmp is).
        crate::observe::own_files::read_own(&self.path, 64 * 1024)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save(
        &self,
        nodes: &[(&'static str, String, HttpPeer)],
        records: &[Mutex<Record>],
        held: &[AtomicBool],
    ) {
        let usable: HashMap<&str, bool> = nodes
            .iter()
            .zip(records.iter().zip(held))
            .map(|((_, address, _), (r, held))| {
                let down = r.lock().unwrap_or_else(|p| p.into_inner()).down;
                (address.as_str(), !down && !held.load(Ordering::Relaxed))
            })
            .collect();
        // Checks run in parallel and a draining old process may write too: one writer at a time
        // here, and a temporary file of this process's own, renamed into place whole.
        let _one_at_a_time = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let written = serde_json::to_vec(&usable)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::observe::own_files::replace(&self.path, &bytes));
        if let Err(e) = written {
            log::warn!("cannot record node health in {}: {e}", self.path.display());
        }
    }
}

/// The health of a service's nodes: read per request, written by the background checks.
pub struct NodeHealth {
    service: String,
    lb: Arc<LoadBalancer<RoundRobin>>,
    nodes: Vec<(&'static str, String, Backend)>,
    records: Arc<Vec<Mutex<Record>>>,
    /// Per node: down in the previous process (see `StateFile`), so no traffic until a check
    /// passes here.
    held: Arc<Vec<AtomicBool>>,
}

impl NodeHealth {
    /// Whether node `index` currently passes its checks (nodes start healthy, unless the
    /// previous process had found them down).
    pub fn healthy(&self, index: usize) -> bool {
        self.lb.backends().ready(&self.nodes[index].2) && !self.held[index].load(Ordering::Relaxed)
    }

    pub fn status(&self) -> Value {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, (label, address, _))| {
                let record = self.records[i].lock().unwrap_or_else(|p| p.into_inner());
                json!({
                    "node": label,
                    "address": address,
                    "healthy": self.healthy(i),
                    "last_error": record.last_error,
                    "last_change": record.last_change,
                    "changes": record.changes,
                })
            })
            .collect();
        json!({ "service": self.service, "nodes": nodes })
    }
}

/// Builds the checker for `nodes` and the background service that runs it every
/// `settings.interval`. `host` is the `Host` header the probe sends (the public authority, as
/// traffic carries); `state` is the file that carries node health over a reload.
pub fn watch(
    service: &str,
    nodes: Vec<Node>,
    settings: &CheckSettings,
    host: &str,
    state: PathBuf,
) -> (
    Arc<NodeHealth>,
    GenBackgroundService<LoadBalancer<RoundRobin>>,
) {
    let backends: Vec<Backend> = nodes.iter().map(|n| backend(&n.peer)).collect();
    let state = StateFile {
        path: state,
        writing: Mutex::new(()),
    };
    let before = state.load();
    let held: Arc<Vec<AtomicBool>> = Arc::new(
        nodes
            .iter()
            .map(|n| AtomicBool::new(before.get(&n.address) == Some(&false)))
            .collect(),
    );
    for (node, held) in nodes.iter().zip(held.iter()) {
        metrics::upstream_health(
            service,
            node.label,
            &node.address,
            !held.load(Ordering::Relaxed),
        );
        if held.load(Ordering::Relaxed) {
            log::warn!(
                "service {service}: {} {} was down in the previous process: no traffic until a check passes",
                node.label,
                node.address
            );
        }
    }
    let records: Arc<Vec<Mutex<Record>>> =
        Arc::new(nodes.iter().map(|_| Mutex::default()).collect());
    let mut request =
        RequestHeader::build("GET", settings.path.as_bytes(), None).expect("validated path");
    request.insert_header("Host", host).expect("validated host");
    request
        .insert_header(
            "User-Agent",
            concat!("ccedge-health/", env!("CARGO_PKG_VERSION")),
        )
        .expect("static header");
    let labels: Vec<_> = nodes.iter().map(|n| (n.label, n.address.clone())).collect();
    let probe = Probe {
        service: service.to_string(),
        peers: nodes
            .into_iter()
            .map(|n| {
                let mut peer = n.peer;
                peer.options.connection_timeout = Some(settings.timeout);
                peer.options.read_timeout = Some(settings.timeout);
                peer.options.write_timeout = Some(settings.timeout);
                (n.label, n.address, peer)
            })
            .collect(),
        request,
        timeout: settings.timeout,
        rise: settings.rise as usize,
        fall: settings.fall as usize,
        connector: Connector::new(None),
        records: records.clone(),
        held: held.clone(),
        state,
    };
    let set: BTreeSet<Backend> = backends.iter().cloned().collect();
    let discovery = pingora::lb::discovery::Static::new(set);
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(discovery));
    lb.set_health_check(Box::new(probe));
    lb.health_check_frequency = Some(settings.interval);
    lb.parallel_health_check = true;
    let background = background_service(&format!("{service} health checks"), lb);
    let health = NodeHealth {
        service: service.to_string(),
        lb: background.task(),
        nodes: labels
            .into_iter()
            .zip(backends)
            .map(|((label, address), b)| (label, address, b))
            .collect(),
        records,
        held,
    };
    (Arc::new(health), background)
}

fn backend(peer: &HttpPeer) -> Backend {
    Backend {
        addr: peer._address.clone(),
        weight: 1,
        ext: Default::default(),
    }
}

struct Probe {
    service: String,
    peers: Vec<(&'static str, String, HttpPeer)>,
    request: RequestHeader,
    timeout: Duration,
    rise: usize,
    fall: usize,
    connector: Connector,
    records: Arc<Vec<Mutex<Record>>>,
    held: Arc<Vec<AtomicBool>>,
    state: StateFile,
}

impl Probe {
    fn index_of(&self, target: &Backend) -> Option<usize> {
        self.peers
            .iter()
            .position(|(_, _, peer)| peer._address == target.addr)
    }

    async fn probe(&self, peer: &HttpPeer) -> pingora::Result<()> {
        let request = self.request.clone();
        let answer = fetch::send(
            &self.connector,
            peer,
            request,
            self.timeout,
            PROBE_BODY,
            false,
        );
        let status = answer.await?.status;
        if status != 200 {
            return pingora::Error::e_explain(
                pingora::ErrorType::CustomCode("unhealthy status", status),
                format!("{} answered {status}, not 200", self.request.uri.path()),
            );
        }
        Ok(())
    }
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let Some(index) = self.index_of(target) else {
            return Ok(());
        };
        let peer = &self.peers[index].2;
        let result = self.probe(peer).await;
        match &result {
            Err(e) => {
                let mut record = self.records[index]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                record.last_error = Some(e.to_string());
            }
            Ok(()) if self.held[index].swap(false, Ordering::Relaxed) => {
                let (label, address, _) = &self.peers[index];
                log::warn!(
                    "service {}: {label} {address} passed a check: back in use",
                    self.service
                );
                let down = self.records[index]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .down;
                metrics::upstream_health(&self.service, label, address, !down);
                self.state.save(&self.peers, &self.records, &self.held);
            }
            Ok(()) => {}
        }
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let Some(index) = self.index_of(target) else {
            return;
        };
        let (label, address, _) = &self.peers[index];
        let mut record = self.records[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        record.changes += 1;
        record.last_change = Some(crate::observe::access_log::now());
        record.down = !healthy;
        let held = self.held[index].load(Ordering::Relaxed);
        metrics::upstream_health(&self.service, label, address, healthy && !held);
        metrics::health_change(&self.service, label, healthy);
        if healthy {
            log::warn!(
                "service {}: {label} {address}: unhealthy -> healthy ({} consecutive checks passed)",
                self.service,
                self.rise
            );
        } else {
            log::warn!(
                "service {}: {label} {address}: healthy -> unhealthy ({} consecutive checks failed; last: {})",
                self.service,
                self.fall,
                record.last_error.as_deref().unwrap_or("unknown")
            );
        }
        drop(record);
        self.state.save(&self.peers, &self.records, &self.held);
    }

    fn backend_summary(&self, target: &Backend) -> String {
        match self.index_of(target) {
            Some(i) => format!(
                "service {}: {} {}",
                self.service, self.peers[i].0, self.peers[i].1
            ),
            None => format!("service {}: {target:?}", self.service),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.rise
        } else {
            self.fall
        }
    }
}
