//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! Label values are resolved once per service at load; a request only touches atomics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;
use std::time::Duration;

/// Status classes a request can end in; 0 is a request that got no response at all.
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];
/// The index of "5xx" in `CLASSES`.
const SERVER_ERRORS: usize = 5;
/// The route label of requests no route took (refused before routing).
const NO_ROUTE: &str = "none";

struct Families {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_header: HistogramVec,
    upstream_websockets: IntGaugeVec,
    draining_websockets: IntGauge,
    shared_state_up: IntGauge,
    shared_state_calls: IntCounterVec,
    in_flight: IntGaugeVec,
    websockets: IntGaugeVec,
    failovers: IntCounterVec,
    rate_limited: IntCounterVec,
    send_timeouts: IntCounterVec,
    refused_connections: IntCounterVec,
    upstream_up: IntGaugeVec,
    health_changes: IntCounterVec,
    auth_validations: IntCounterVec,
    auth_kept: IntCounterVec,
    auth_jwt: IntCounterVec,
    auth_key_fetches: IntCounterVec,
    auth_lockouts: IntCounterVec,
    auth_user_lockouts: IntCounterVec,
    auth_validator_up: IntGaugeVec,
    auth_validator_requests: IntCounterVec,
    auth_blocked: IntCounterVec,
    auth_external_seconds: HistogramVec,
    auth_external_checks: IntCounterVec,
    cache_lookups: IntCounterVec,
    cache_entries: IntGaugeVec,
    cache_bytes: IntGaugeVec,
    cache_evictions: IntCounterVec,
    connections_open: IntGaugeVec,
    connections_over_limit: IntCounterVec,
    certificate_expiry: IntGaugeVec,
    routine_events: IntCounterVec,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let requests = counter(
            "ccedge_requests_total",
            "Requests answered, by service, route and status class.",
            &["service", "route", "status"],
        );
        let in_flight = gauge(
            "ccedge_requests_in_flight",
            "Requests being handled now.",
            &["service"],
        );
        let websockets = gauge(
            "ccedge_websockets_open",
            "Upgraded (WebSocket) connections open now.",
            &["service"],
        );
        let failovers = counter(
            "ccedge_failover_retries_total",
            "Requests retried on the other node after their first node failed.",
            &["service"],
        );
        let rate_limited = counter(
            "ccedge_rate_limited_total",
            "Requests refused with 429 by a rate limit.",
            &["service"],
        );
        let send_timeouts = counter(
            "ccedge_client_send_timeouts_total",
            "Client connections closed because the client read nothing for client_send_timeout_ms.",
            &["service"],
        );
        let routine_events = counter(
            "ccedge_routine_events_total",
            "Routine events Pingora reports (a client that left, a failed TLS handshake, ...), logged at DEBUG.",
            &["event"],
        );
        let refused_connections = counter(
            "ccedge_connections_refused_total",
            "Connections dropped because their address is not in client_allow.",
            &["service"],
        );
        let upstream_up = gauge(
            "ccedge_upstream_healthy",
            "1 when the node passes its health checks, 0 when it does not.",
            &["service", "node", "address"],
        );
        let health_changes = counter(
            "ccedge_upstream_health_changes_total",
            "Health state changes of a node, by the state it changed to.",
            &["service", "node", "to"],
        );
        let auth_validations = counter(
            "ccedge_auth_validations_total",
            "Credentials checked with validate_url, by outcome (valid, invalid, unavailable).",
            &["service", "outcome"],
        );
        let auth_kept = counter(
            "ccedge_auth_verdict_cache_hits_total",
            "Requests whose credential verdict was reused, without a validation or verification.",
            &["service"],
        );
        let auth_jwt = counter(
            "ccedge_auth_jwt_verifications_total",
            "JWTs verified at the proxy, by outcome (valid, invalid, unavailable).",
            &["service", "outcome"],
        );
        let auth_key_fetches = counter(
            "ccedge_auth_key_fetches_total",
            "Fetches of the JWT signing keys from keys_url, by outcome (ok, failed).",
            &["service", "outcome"],
        );
        let auth_lockouts = counter(
            "ccedge_auth_lockouts_total",
            "Client addresses blocked after too many failed logins.",
            &["service"],
        );
        let auth_user_lockouts = counter(
            "ccedge_auth_user_lockouts_total",
            "User names blocked at a client address after too many failed logins.",
            &["service"],
        );
        let auth_validator_up = gauge(
            "ccedge_auth_validator_up",
            "1 while a validate_url answers, 0 while it is in back-off after a failure.",
            &["service", "validator"],
        );
        let auth_validator_requests = counter(
            "ccedge_auth_validator_requests_total",
            "Credential checks sent to each validate_url, by outcome (valid, invalid, failed).",
            &["service", "validator", "outcome"],
        );
        let auth_blocked = counter(
            "ccedge_auth_blocked_requests_total",
            "Requests refused with 429 because their client address, or their user there, is blocked.",
            &["service"],
        );
        let cache_lookups = counter(
            "ccedge_cache_lookups_total",
            "Cacheable requests by outcome (HIT, MISS, STALE, REVALIDATED, BYPASS).",
            &["service", "outcome"],
        );
        let cache_entries = gauge(
            "ccedge_cache_entries",
            "Responses held in the cache.",
            &["service"],
        );
        let cache_bytes = gauge(
            "ccedge_cache_stored_bytes",
            "Bytes the cached responses are counted for (bodies and overhead).",
            &["service"],
        );
        let cache_evictions = counter(
            "ccedge_cache_evictions_total",
            "Responses evicted to keep the cache within max_size_mb.",
            &["service"],
        );
        let connections_open = gauge(
            "ccedge_connections_open",
            "Client connections open now.",
            &["service"],
        );
        let connections_over_limit = counter(
            "ccedge_connections_over_limit_total",
            "Client connections refused because their address held max_connections_per_ip.",
            &["service"],
        );
        let certificate_expiry = gauge(
            "ccedge_certificate_expiry_timestamp_seconds",
            "When a certificate stops being valid (Unix seconds): each listener's and each client \
             certificate at load, each upstream's at every new TLS connection to it.",
            &["service", "role", "certificate"],
        );
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]);
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let duration = histogram(
            "ccedge_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            &["service"],
        );
        let upstream_header = histogram(
            "ccedge_upstream_header_seconds",
            "Time from a request's sending to its response header, by service and upstream node.",
            &["service", "node"],
        );
        let auth_external_seconds = histogram(
            "ccedge_auth_external_seconds",
            "Time the external check (auth.external) took to answer, per call made.",
            &["service"],
        );
        let auth_external_checks = counter(
            "ccedge_auth_external_checks_total",
            "Requests judged by the external check, by outcome: allowed, denied and failed (its \
             answer, or none in time), kept (a verdict of cache_seconds) and merged (the answer of \
             an identical call in flight).",
            &["service", "outcome"],
        );
        let upstream_websockets = gauge(
            "ccedge_upstream_websockets_open",
            "Upgraded (WebSocket) connections open now, by service and upstream node.",
            &["service", "node"],
        );
        let draining_websockets = IntGauge::new(
            "ccedge_draining_websockets_open",
            "WebSockets that previous processes still carry after reloads (not in ccedge_websockets_open).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(draining_websockets.clone()))
            .expect("unique metric");
        let shared_state_up = IntGauge::new(
            "ccedge_shared_state_up",
            "Whether Redis (server.shared_state) answers within timeout_ms: 1, shared state; 0, local state only.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(shared_state_up.clone()))
            .expect("unique metric");
        let shared_state_calls = counter(
            "ccedge_shared_state_calls_total",
            "Calls to Redis by what they were for and how they ended (ok, timeout, error, skipped while down).",
            &["call", "outcome"],
        );
        Families {
            registry,
            shared_state_up,
            shared_state_calls,
            requests,
            duration,
            upstream_header,
            upstream_websockets,
            draining_websockets,
            in_flight,
            websockets,
            failovers,
            rate_limited,
            send_timeouts,
            refused_connections,
            upstream_up,
            health_changes,
            auth_validations,
            auth_kept,
            auth_jwt,
            auth_key_fetches,
            auth_lockouts,
            auth_user_lockouts,
            auth_validator_up,
            auth_validator_requests,
            auth_blocked,
            auth_external_seconds,
            auth_external_checks,
            cache_lookups,
            cache_entries,
            cache_bytes,
            cache_evictions,
            connections_open,
            connections_over_limit,
            certificate_expiry,
            routine_events,
        }
    })
}

/// The WebSockets previous processes still carry, from their reports.
pub fn draining_websockets(open: usize) {
    families()
        .draining_websockets
        .set(i64::try_from(open).unwrap_or(i64::MAX));
}

/// Whether Redis answers (`server.shared_state`).
pub fn shared_state_up(up: bool) {
    families().shared_state_up.set(i64::from(up));
}

/// The counter of Redis calls for `call` that ended as `outcome`.
pub fn shared_state_call(call: &str, outcome: &str) -> IntCounter {
    families()
        .shared_state_calls
        .with_label_values(&[call, outcome])
}

/// Everything in the Prometheus text format.
pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&families().registry.gather(), &mut out);
    out
}

/// A service's request counts since the process started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    /// Answered with a 5xx status (by ccedge or by the upstream).
    pub errors: u64,
}

/// One service's request metrics, labels resolved.
pub struct ServiceMetrics {
    /// `[route][class]`, the last route being "none".
    requests: Vec<[IntCounter; CLASSES.len()]>,
    duration: Histogram,
    /// By node, in the service's own numbering of nodes.
    pub upstream_header: Vec<Histogram>,
    pub upstream_websockets: Vec<IntGauge>,
    pub in_flight: IntGauge,
    pub websockets: IntGauge,
    pub failovers: IntCounter,
    pub rate_limited: IntCounter,
    pub send_timeouts: IntCounter,
}

impl ServiceMetrics {
    /// `nodes`: the upstream node of each index the service's requests name (`Exchange::upstream`).
    pub fn new(service: &str, routes: &[&str], nodes: &[&str]) -> ServiceMetrics {
        let f = families();
        let requests = routes
            .iter()
            .chain(std::iter::once(&NO_ROUTE))
            .map(|route| {
                CLASSES.map(|class| f.requests.with_label_values(&[service, route, class]))
            })
            .collect();
        ServiceMetrics {
            requests,
            duration: f.duration.with_label_values(&[service]),
            upstream_header: nodes
                .iter()
                .map(|node| f.upstream_header.with_label_values(&[service, node]))
                .collect(),
            upstream_websockets: nodes
                .iter()
                .map(|node| f.upstream_websockets.with_label_values(&[service, node]))
                .collect(),
            in_flight: f.in_flight.with_label_values(&[service]),
            websockets: f.websockets.with_label_values(&[service]),
            failovers: f.failovers.with_label_values(&[service]),
            rate_limited: f.rate_limited.with_label_values(&[service]),
            send_timeouts: f.send_timeouts.with_label_values(&[service]),
        }
    }

    /// Requests answered so far and, of those, answered with a 5xx status.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for route in &self.requests {
            totals.requests += route.iter().map(|c| c.get()).sum::<u64>();
            totals.errors += route[SERVER_ERRORS].get();
        }
        totals
    }

    /// Counts one finished request.
    pub fn finish(&self, route: Option<usize>, status: u16, elapsed: Duration) {
        self.count(route, status);
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one request, without a duration (a refusal of the HTTP layer, which has none).
    pub fn count(&self, route: Option<usize>, status: u16) {
        let route = route
            .unwrap_or(self.requests.len() - 1)
            .min(self.requests.len() - 1);
        let class = usize::from(status / 100).min(CLASSES.len() - 1);
        self.requests[route][class].inc();
    }
}

/// Outcomes of a credential check, as metric labels.
pub const OUTCOMES: [&str; 3] = ["valid", "invalid", "unavailable"];

/// One Finesse site's authentication metrics, labels resolved.
pub struct AuthMetrics {
    /// By `OUTCOMES` index.
    pub validations: [IntCounter; 3],
    pub kept: IntCounter,
    /// By `OUTCOMES` index.
    pub jwt: [IntCounter; 3],
    /// Succeeded, failed.
    pub key_fetches: [IntCounter; 2],
    pub lockouts: IntCounter,
    pub user_lockouts: IntCounter,
    pub blocked: IntCounter,
}

impl AuthMetrics {
    pub fn new(service: &str) -> AuthMetrics {
        let f = families();
        AuthMetrics {
            validations: OUTCOMES.map(|o| f.auth_validations.with_label_values(&[service, o])),
            kept: f.auth_kept.with_label_values(&[service]),
            jwt: OUTCOMES.map(|o| f.auth_jwt.with_label_values(&[service, o])),
            key_fetches: ["ok", "failed"]
                .map(|o| f.auth_key_fetches.with_label_values(&[service, o])),
            lockouts: f.auth_lockouts.with_label_values(&[service]),
            user_lockouts: f.auth_user_lockouts.with_label_values(&[service]),
            blocked: f.auth_blocked.with_label_values(&[service]),
        }
    }
}

/// One Finesse site's cache metrics, labels resolved.
pub struct CacheMetrics {
    /// By outcome, in the order given to `new`.
    pub lookups: [IntCounter; 5],
    pub entries: IntGauge,
    pub bytes: IntGauge,
    pub evictions: IntCounter,
}

impl CacheMetrics {
    /// `outcomes` name the lookup outcomes, in the order `lookups` counts them.
    pub fn new(service: &str, outcomes: &[&str; 5]) -> CacheMetrics {
        let f = families();
        CacheMetrics {
            lookups: outcomes.map(|o| f.cache_lookups.with_label_values(&[service, o])),
            entries: f.cache_entries.with_label_values(&[service]),
            bytes: f.cache_bytes.with_label_values(&[service]),
            evictions: f.cache_evictions.with_label_values(&[service]),
        }
    }
}

/// A service's open-connection gauge and over-the-limit counter.
/// One validator's metrics: whether it answers, and its checks by outcome (valid, invalid,
/// failed).
pub fn validator(service: &str, url: &str) -> (IntGauge, [IntCounter; 3]) {
    let f = families();
    (
        f.auth_validator_up.with_label_values(&[service, url]),
        ["valid", "invalid", "failed"].map(|o| {
            f.auth_validator_requests
                .with_label_values(&[service, url, o])
        }),
    )
}

/// The external check's metrics: its latency, and its requests by outcome (allowed, denied,
/// failed, kept, merged).
pub fn external_check(service: &str) -> (Histogram, [IntCounter; 5]) {
    let f = families();
    (
        f.auth_external_seconds.with_label_values(&[service]),
        ["allowed", "denied", "failed", "kept", "merged"]
            .map(|o| f.auth_external_checks.with_label_values(&[service, o])),
    )
}

pub fn connections(service: &str) -> (IntGauge, IntCounter) {
    let f = families();
    (
        f.connections_open.with_label_values(&[service]),
        f.connections_over_limit.with_label_values(&[service]),
    )
}

/// The expiry gauge of a certificate: `role` is `listener`, `upstream client` or `upstream`;
/// `certificate` its subject (listener and client) or the upstream's address.
pub fn certificate_expiry(service: &str, role: &str, certificate: &str) -> IntGauge {
    families()
        .certificate_expiry
        .with_label_values(&[service, role, certificate])
}

/// The counter of one kind of routine event (`observe::log_levels`).
pub fn routine_events(event: &str) -> IntCounter {
    families().routine_events.with_label_values(&[event])
}

pub fn connection_refused(service: &str) {
    families()
        .refused_connections
        .with_label_values(&[service])
        .inc();
}

pub fn upstream_health(service: &str, node: &str, address: &str, healthy: bool) {
    families()
        .upstream_up
        .with_label_values(&[service, node, address])
        .set(i64::from(healthy));
}

pub fn health_change(service: &str, node: &str, healthy: bool) {
    let to = if healthy { "healthy" } else { "unhealthy" };
    families()
        .health_changes
        .with_label_values(&[service, node, to])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_and_class() {
        let m = ServiceMetrics::new(
            "metrics-test",
            &["default", "publisher_only"],
            &["pub:8445", "sub:8445"],
        );
        m.finish(Some(0), 200, Duration::from_millis(3));
        m.finish(Some(1), 503, Duration::from_millis(1));
        m.finish(None, 421, Duration::from_millis(1));
        m.finish(None, 0, Duration::from_millis(1));
        let text = String::from_utf8(render()).unwrap();
        for line in [
            "ccedge_requests_total{route=\"default\",service=\"metrics-test\",status=\"2xx\"} 1",
            "ccedge_requests_total{route=\"publisher_only\",service=\"metrics-test\",status=\"5xx\"} 1",
            "ccedge_requests_total{route=\"none\",service=\"metrics-test\",status=\"4xx\"} 1",
            "ccedge_requests_total{route=\"none\",service=\"metrics-test\",status=\"none\"} 1",
            "ccedge_request_duration_seconds_count{service=\"metrics-test\"} 4",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }
}
