//! The revalidating static cache of a Finesse site, on pingora-cache: the proxy's cache phases,
//! its cache lock (concurrent misses for one key make one upstream request) and its LRU eviction
//! manager, over ccedge's own bounded in-memory store.
//!
//! What is cached: `GET` and `HEAD` requests matching a rule (on the normalised path without
//! parameters), keyed by the upstream server, the public host and port, and the normalised path
//! with its query, and per value of the headers the response's `Vary` names. What is stored is
//! only ever what the upstream would send anyone: a response to a request with credentials is
//! kept only when marked `public` or `s-maxage`, so any request may be served what is stored.
//! How long: `freshness`. An expired entry is
//! revalidated with `If-None-Match`/`If-Modified-Since`; within `stale_while_revalidate_seconds`
//! the stale copy is served at once while one background request revalidates it, and an upstream
//! that fails meanwhile gets the stale copy served instead of an error.

mod freshness;
mod store;

use crate::config::{CacheRule, CacheSettings, Limits};
use crate::observe::admin::Purged;
use crate::observe::metrics::CacheMetrics;
use freshness::Freshness;
use pingora::cache::eviction::{lru, EvictionManager};
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, RespCacheable};
use pingora::cache::{NoCacheReason, VarianceBuilder};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};
use store::{MemStore, RequestPath, SHARDS};

/// The longest a request waits for another one fetching the same key (the vendor's 30 s).
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// The largest share of the cache one response may take.
const MAX_BODY_SHARE: usize = 4;

/// Per-request outcome, as the access log and the metrics name it.
pub const OUTCOMES: [&str; 5] = ["HIT", "MISS", "STALE", "REVALIDATED", "BYPASS"];

pub struct SiteCache {
    store: &'static MemStore,
    eviction: &'static lru::Manager<SHARDS>,
    lock: &'static CacheKeyLockImpl,
    max_bytes: usize,
    rules: Vec<CacheRule>,
    freshness: Freshness,
    waiting: Duration,
    metrics: CacheMetrics,
}

impl SiteCache {
    /// The cache of site `service`. Its store, eviction manager and lock live as long as the
    /// process (pingora-cache requires `'static`): one per site, built once at start.
    pub fn new(service: &str, settings: &CacheSettings, limits: &Limits) -> Self {
        let max_bytes = settings.max_size_bytes;
        let eviction: &'static lru::Manager<SHARDS> =
            Box::leak(Box::new(lru::Manager::with_capacity(max_bytes, 1024)));
        let store = Box::leak(Box::new(MemStore::new(
            eviction,
            max_bytes / MAX_BODY_SHARE,
        )));
        let holding = limits.upstream_connect_timeout + limits.upstream_read_timeout;
        let lock: &'static CacheKeyLockImpl =
            Box::leak(CacheLock::new_boxed(holding.min(LOCK_WAIT)));
        SiteCache {
            store,
            eviction,
            lock,
            max_bytes,
            rules: settings.rules.clone(),
            freshness: Freshness::new(settings.default_fresh, settings.stale_while_revalidate),
            waiting: holding.min(LOCK_WAIT),
            metrics: CacheMetrics::new(service, &OUTCOMES),
        }
    }

    /// Whether a request may be cached: `GET` or `HEAD`, a path a rule matches, not a
    /// WebSocket upgrade.
    pub fn wants(&self, method: &http::Method, path: &str, websocket: bool) -> bool {
        (method == http::Method::GET || method == http::Method::HEAD)
            && !websocket
            && self.rules.iter().any(|r| rule_matches(r, path))
    }

    /// Turns the cache on for `session`.
    pub fn enable(&self, session: &mut Session) {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.waiting);
        let eviction: &'static (dyn EvictionManager + Sync) = self.eviction;
        session.cache.enable(
            self.store,
            Some(eviction),
            None,
            Some(self.lock),
            Some(overrides),
        );
    }

    /// The key: upstream server, public host and port, path (as sent upstream) and query.
    pub fn key(upstream: &str, public: &str, path: &str, query: Option<&str>) -> CacheKey {
        let mut primary = String::with_capacity(upstream.len() + public.len() + path.len() + 32);
        for part in [upstream, "\n", public, "\n", path] {
            primary.push_str(part);
        }
        if let Some(q) = query {
            primary.push('?');
            primary.push_str(q);
        }
        let mut key = CacheKey::new(primary, "");
        key.extensions.insert(RequestPath(path.into()));
        key
    }

    /// Whether the upstream's response may be kept, and for how long. `credentialed`: it answers
    /// a request with credentials (see `carries_credentials`) with a representation of its own,
    /// not a `304` that confirmed a stored one.
    pub fn judge(&self, resp: &ResponseHeader, credentialed: bool) -> RespCacheable {
        match self.freshness.judge(resp, credentialed, SystemTime::now()) {
            Ok(meta) => RespCacheable::Cacheable(meta),
            Err(why) => RespCacheable::Uncacheable(NoCacheReason::Custom(why)),
        }
    }

    /// The access-log and metric name of what the cache did for a request.
    pub fn outcome(phase: CachePhase) -> &'static str {
        match phase {
            CachePhase::Hit => OUTCOMES[0],
            CachePhase::Miss | CachePhase::Expired => OUTCOMES[1],
            CachePhase::Stale | CachePhase::StaleUpdating => OUTCOMES[2],
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => OUTCOMES[3],
            _ => OUTCOMES[4],
        }
    }

    /// Counts a request's outcome (requests the cache was never enabled for are not lookups).
    pub fn count(&self, phase: CachePhase) {
        if !matches!(phase, CachePhase::Disabled(NoCacheReason::NeverEnabled)) {
            let outcome = Self::outcome(phase);
            let index = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(4);
            self.metrics.lookups[index].inc();
        }
    }

    pub fn purge(&self, prefix: Option<&str>) -> Purged {
        let purged = self.store.purge_prefix(prefix);
        self.refresh_metrics();
        purged
    }

    /// Brings the size and eviction metrics up to date (before they are read).
    pub fn refresh_metrics(&self) {
        let (entries, bytes) = self.store.size();
        self.metrics.entries.set(entries as i64);
        self.metrics.bytes.set(bytes as i64);
        let evicted = self.eviction.evicted_items() as u64;
        let counted = self.metrics.evictions.get();
        self.metrics
            .evictions
            .inc_by(evicted.saturating_sub(counted));
    }

    pub fn status(&self) -> Value {
        let (entries, bytes) = self.store.size();
        json!({
            "entries": entries,
            "bytes": bytes,
            "max_bytes": self.max_bytes,
            "evictions": self.eviction.evicted_items(),
        })
    }
}

/// Whether `req` carries credentials: `Authorization`, or the WebSocket credential
/// (`Sec-WebSocket-Protocol`). A `Cookie` does not count: browsers send it with every asset (a
/// response that sets or varies on cookies is judged by its own headers).
pub fn carries_credentials(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::AUTHORIZATION)
        || req
            .headers
            .contains_key(http::header::SEC_WEBSOCKET_PROTOCOL)
}

/// Every part the rule sets matches `path`.
fn rule_matches(rule: &CacheRule, path: &str) -> bool {
    rule.path_prefix
        .as_ref()
        .is_none_or(|p| path.starts_with(p.as_str()))
        && (rule.path_suffixes.is_empty()
            || rule
                .path_suffixes
                .iter()
                .any(|s| path.ends_with(s.as_str())))
}

/// The variant of a stored response `req` asks for: the values of the headers the response's
/// `Vary` names (`Accept-Encoding` aside: ccedge never forwards it, so the upstream never saw
/// it). `None` when the response does not vary.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut names: Vec<String> = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && n != "accept-encoding")
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    // Every line of a header counts: HTTP/2 clients send each cookie as a line of its own.
    let values: Vec<Vec<u8>> = names
        .iter()
        .map(|name| {
            let separator: &[u8] = if name == "cookie" { b"; " } else { b", " };
            let mut value = Vec::new();
            for (i, line) in req.headers.get_all(name.as_str()).iter().enumerate() {
                if i > 0 {
                    value.extend_from_slice(separator);
                }
                value.extend_from_slice(line.as_bytes());
            }
            value
        })
        .collect();
    let mut variance = VarianceBuilder::new();
    for (name, value) in names.iter().zip(&values) {
        variance.add_value(name, value);
    }
    variance.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: Option<&str>, suffixes: &[&str]) -> CacheRule {
        CacheRule {
            path_prefix: prefix.map(String::from),
            path_suffixes: suffixes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn rules() {
        let desktop = rule(Some("/desktop/"), &[]);
        assert!(rule_matches(&desktop, "/desktop/js/a.js"));
        assert!(!rule_matches(&desktop, "/finesse/api/User"));
        let statics = rule(None, &[".js", ".css"]);
        assert!(rule_matches(&statics, "/3rdpartygadget/files/x.js"));
        assert!(!rule_matches(&statics, "/x.json"));
        let both = rule(Some("/cuic/"), &[".png"]);
        assert!(rule_matches(&both, "/cuic/a.png"));
        assert!(!rule_matches(&both, "/cuic/a.js") && !rule_matches(&both, "/x/a.png"));
    }

    #[test]
    fn keys_tell_servers_hosts_paths_and_queries_apart() {
        let k = |u, h, p, q| {
            use pingora::cache::key::CacheHashKey;
            SiteCache::key(u, h, p, q).primary_bin()
        };
        let base = k("f1:8445", "finesse1.example.com:443", "/desktop/a.js", None);
        assert_eq!(
            base,
            k("f1:8445", "finesse1.example.com:443", "/desktop/a.js", None)
        );
        for other in [
            k("f2:8445", "finesse1.example.com:443", "/desktop/a.js", None),
            k("f1:8445", "finesse2.example.com:443", "/desktop/a.js", None),
            k("f1:8445", "finesse1.example.com:443", "/desktop/b.js", None),
            k(
                "f1:8445",
                "finesse1.example.com:443",
                "/desktop/a.js",
                Some("v=2"),
            ),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn variance_follows_vary() {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header
            .append_header("Vary", "Accept-Language, Accept-Encoding")
            .unwrap();
        let meta = CacheMeta::new(now, now, 0, 0, header);
        let req = |lang: &str, enc: &str| {
            let mut r = RequestHeader::build("GET", b"/desktop/", None).unwrap();
            r.insert_header("Accept-Language", lang).unwrap();
            r.insert_header("Accept-Encoding", enc).unwrap();
            r
        };
        let en = variance(&meta, &req("en-US", "gzip"));
        assert!(en.is_some());
        assert_eq!(en, variance(&meta, &req("en-US", "br")));
        assert_ne!(en, variance(&meta, &req("de-DE", "gzip")));
        let plain = CacheMeta::new(now, now, 0, 0, ResponseHeader::build(200, None).unwrap());
        assert_eq!(variance(&plain, &req("en-US", "gzip")), None);

        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("Vary", "Cookie").unwrap();
        let by_cookie = CacheMeta::new(now, now, 0, 0, header);
        let cookies = |lines: &[&str]| {
            let mut r = RequestHeader::build("GET", b"/desktop/", None).unwrap();
            for line in lines {
                r.append_header("Cookie", *line).unwrap();
            }
            variance(&by_cookie, &r)
        };
        let alice = cookies(&["lb=node1", "session=alice"]);
        assert_ne!(
            alice,
            cookies(&["lb=node1", "session=bob"]),
            "every line counts"
        );
        assert_eq!(
            alice,
            cookies(&["lb=node1; session=alice"]),
            "as one line or two"
        );
    }
}
