//! The YAML file as written: serde structures with one field per key, documented in
//! `docs/configuration.md`. The JSON Schema that `ccedge schema` prints is derived from these same
//! types, and their doc comments are the hover texts an editor shows.
//!
//! Nothing here is interpreted; `validate` turns these into the internal model. Defaults are
//! declared here, so a key left out and a key written with its default value mean the same.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A ccedge configuration file: process settings, Cloud Connect front ends and VPN-less Finesse
/// sites.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ccedge configuration")]
pub struct RawConfig {
    /// Process settings: threads, pid file, upgrade socket, grace periods, access log, admin
    /// listener.
    #[serde(default)]
    pub server: RawServer,
    /// Cloud Connect front ends (Webex Connect -> ccedge -> Cloud Connect publisher/subscriber).
    #[serde(default)]
    pub digital_channels: Vec<RawDigital>,
    /// VPN-less Finesse sites: Finesse, IdS, CUIC, LiveData and chat servers behind one proxy.
    #[serde(default)]
    pub finesse: Vec<RawFinesse>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "Server")]
pub struct RawServer {
    /// Worker threads per listening service (default: the number of CPUs).
    #[schemars(range(min = 1))]
    pub threads: Option<usize>,
    /// Absolute path of the pid file.
    pub pid_file: String,
    /// Absolute path of the Unix socket listening sockets are handed over on during a reload.
    pub upgrade_sock: String,
    /// Seconds an old process keeps serving in-flight requests after handing over its sockets.
    pub grace_period_seconds: u64,
    /// Seconds an old process is given to stop once its grace period is over.
    pub graceful_shutdown_timeout_seconds: u64,
    /// After a reload, open WebSockets stay in the old process until they close, this long at
    /// most (0: they are closed at the end of the grace period).
    pub websocket_drain_seconds: u64,
    /// Old processes kept for their WebSockets; past it, a reload has the oldest close them
    /// (1001, going away).
    pub max_draining_processes: usize,
    /// Where the access log (one JSON object per request) goes: stdout, off, or an absolute path.
    pub access_log: String,
    /// The admin listener (plain HTTP: /healthz, /status, /metrics); none when left out.
    pub admin: Option<RawAdmin>,
    /// Lockouts, failure counts, verdicts, rate counters and admin actions shared by every
    /// instance through Redis; left out, each instance keeps its own.
    pub shared_state: Option<RawSharedState>,
}

/// State shared by every instance, in Redis (6 or later, or a compatible service).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SharedState")]
pub struct RawSharedState {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub redis_url: String,
    /// The secret that keys the hashes of credentials and user names, identical on every
    /// instance: a file of at least 32 bytes, used as they are (`head -c 32 /dev/urandom`). It
    /// never goes to Redis.
    pub key_file: String,
    /// A file holding the Redis password (instead of one in `redis_url`).
    pub password_file: Option<String>,
    /// `rediss://` only: PEM bundle of the CAs that sign Redis's certificate (default: the
    /// system roots).
    pub ca: Option<String>,
    /// `rediss://` only: PEM certificate ccedge shows Redis (mutual TLS).
    pub client_cert: Option<String>,
    /// `rediss://` only: the PEM key of `client_cert`.
    pub client_key: Option<String>,
    /// No request waits on Redis longer than this; Redis slower or down: local state.
    #[serde(default = "shared_state_timeout")]
    #[schemars(range(min = 1, max = 10000))]
    pub timeout_ms: u64,
}

fn shared_state_timeout() -> u64 {
    50
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            threads: None,
            pid_file: "/tmp/ccedge.pid".into(),
            upgrade_sock: "/tmp/ccedge-upgrade.sock".into(),
            grace_period_seconds: 30,
            graceful_shutdown_timeout_seconds: 10,
            websocket_drain_seconds: 28_800,
            max_draining_processes: 3,
            access_log: "stdout".into(),
            admin: None,
            shared_state: None,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Admin")]
pub struct RawAdmin {
    /// IP:port of the admin listener, for loopback or a management network.
    pub listen: String,
    /// Host names it answers besides IP literals and localhost (other Host headers get 421).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// When set, every endpoint but /healthz needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// TLS towards clients; leave it out for plain HTTP.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Tls")]
#[schemars(extend("oneOf" = [{"required": ["cert", "key"]}, {"required": ["certificates"]}]))]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert: Option<String>,
    /// PEM private key of the certificate.
    pub key: Option<String>,
    /// Several certificates, chosen by the name the client asks for (SNI): the one naming it
    /// exactly, then one whose wildcard covers it; the first for clients without SNI.
    pub certificates: Option<Vec<RawCertKey>>,
}

/// One certificate of a listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CertKey")]
pub struct RawCertKey {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key of the certificate.
    pub key: String,
}

/// TLS towards the internal servers; leave it out for plain HTTP.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "UpstreamTls")]
pub struct RawUpstreamTls {
    /// PEM bundle of the CAs that sign the internal servers' certificates (default: the system
    /// roots).
    pub ca: Option<String>,
    /// false: accept any upstream certificate (a warning is logged at start).
    #[serde(default = "yes")]
    pub verify: bool,
    /// PEM certificate ccedge presents to the upstream (mTLS); needs client_key.
    pub client_cert: Option<String>,
    /// PEM private key of client_cert.
    pub client_key: Option<String>,
    /// Name expected in the upstream certificate and sent as SNI (default: the upstream's host).
    pub server_name: Option<String>,
}

/// A per-client request rate for paths under a prefix.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RateLimit")]
pub struct RawRateLimit {
    /// Requests whose path starts with this count against the rule.
    #[serde(default = "root_path")]
    pub path_prefix: String,
    /// Requests per second one client IP may send.
    #[schemars(range(min = 1))]
    pub per_second: u32,
    /// Extra requests allowed in a second that follows a calm one.
    #[serde(default)]
    pub burst: u32,
    /// What a request counts against: its client address, or the user ccedge verified (Finesse
    /// sites with auth only; requests without a verified user count per address). Default:
    /// address, except for the role defaults of a Finesse site with auth, which count per user.
    pub per: Option<Per>,
}

/// What a rate limit counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    Address,
    User,
}

/// Open connections allowed per address in a network: an office's NAT range.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ConnectionsByCidr")]
pub struct RawCidrLimit {
    /// The network (a.b.c.d/n, v6/n or a single address).
    pub cidr: String,
    /// Open connections each address in it may hold on a listening port (0: no limit).
    pub max: u32,
}

/// Sizes and timeouts of client and upstream connections.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "Limits")]
pub struct RawLimits {
    /// Largest request body in bytes; larger ones get 413.
    #[schemars(range(min = 1))]
    pub max_body_bytes: u64,
    /// Longest wait for request data from a client, in milliseconds.
    #[schemars(range(min = 1))]
    pub client_header_timeout_ms: u64,
    /// How long an idle client connection is kept open, in milliseconds.
    #[schemars(range(min = 1))]
    pub keepalive_timeout_ms: u64,
    /// Longest wait for a connection to an internal server, in milliseconds.
    #[schemars(range(min = 1))]
    pub upstream_connect_timeout_ms: u64,
    /// Longest wait for data from an internal server, in milliseconds.
    #[schemars(range(min = 1))]
    pub upstream_read_timeout_ms: u64,
    /// How long an open WebSocket may stay silent, in milliseconds.
    #[schemars(range(min = 1))]
    pub websocket_idle_timeout_ms: u64,
    /// Open connections one client IP may hold (0: no limit). Default: 50 for digital channels;
    /// for a Finesse site, by the roles on each port (finesse 12, ids 4, others 12).
    pub max_connections_per_ip: Option<u32>,
    /// Concurrent HTTP/2 streams one client connection may open.
    #[schemars(range(min = 1))]
    pub max_streams_per_connection: u32,
    /// Connection caps for networks (office NAT ranges), in place of max_connections_per_ip
    /// for addresses in them; the most specific network wins.
    pub connections_by_cidr: Vec<RawCidrLimit>,
    /// A write to a client that makes no progress this long closes the connection, in
    /// milliseconds.
    #[schemars(range(min = 1))]
    pub client_send_timeout_ms: u64,
    /// IPv6 clients count as one client per network of this prefix length, for lockouts, rate
    /// limits and connection caps.
    #[schemars(range(min = 1, max = 128))]
    pub ipv6_prefix: u8,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_body_bytes: 15_728_640,
            client_header_timeout_ms: 10_000,
            keepalive_timeout_ms: 20_000,
            upstream_connect_timeout_ms: 3_000,
            upstream_read_timeout_ms: 60_000,
            websocket_idle_timeout_ms: 3_600_000,
            max_connections_per_ip: None,
            max_streams_per_connection: 150,
            connections_by_cidr: Vec::new(),
            client_send_timeout_ms: 10_000,
            ipv6_prefix: 64,
        }
    }
}

/// The active health check of both Cloud Connect nodes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "HealthCheck")]
pub struct RawHealthCheck {
    /// Path probed with GET; 200 is a pass.
    pub path: String,
    /// Time between two probes of a node, in milliseconds.
    #[schemars(range(min = 1))]
    pub interval_ms: u64,
    /// Longest wait for a probe's answer, in milliseconds.
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// Consecutive passes before a node that was down takes traffic again.
    #[schemars(range(min = 1))]
    pub rise: u32,
    /// Consecutive failures before a node is taken out.
    #[schemars(range(min = 1))]
    pub fall: u32,
}

impl Default for RawHealthCheck {
    fn default() -> Self {
        RawHealthCheck {
            path: "/drapi/v1/ping".into(),
            interval_ms: 2_000,
            timeout_ms: 2_000,
            rise: 2,
            fall: 2,
        }
    }
}

/// A Cloud Connect front end: the publisher while it is healthy, else the subscriber.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DigitalChannel")]
pub struct RawDigital {
    /// Unique name of the service, used in logs and metrics.
    pub name: String,
    /// IP:port ccedge listens on.
    pub listen: String,
    /// host:port Webex Connect uses; sent upstream as Host.
    pub public: String,
    pub tls: Option<RawTls>,
    /// host:port of the Cloud Connect publisher.
    pub publisher: String,
    /// host:port of the Cloud Connect subscriber.
    pub subscriber: String,
    pub upstream_tls: Option<RawUpstreamTls>,
    #[serde(default)]
    pub health_check: RawHealthCheck,
    /// Path prefixes sent only to the publisher, never failed over.
    #[serde(default = "dataconn_paths")]
    pub publisher_only_paths: Vec<String>,
    /// CIDRs allowed to connect; empty: everyone.
    #[serde(default)]
    pub client_allow: Vec<String>,
    /// CIDRs of load balancers whose X-Forwarded-For / X-Real-IP names the real client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Which header of a trusted balancer names the client: x-forwarded-for (the right-most
    /// address not in trusted_proxies), x-real-ip, or another header name.
    #[serde(default = "forwarded_for")]
    pub client_ip_header: String,
    /// Every connection starts with a PROXY protocol v1/v2 header from a peer in
    /// trusted_proxies (an L4 balancer in TLS pass-through); its address is the client.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Per-client rate limits, first match counts (default: /drapi/ at 100/s, burst 200;
    /// [] turns limiting off).
    pub rate_limits: Option<Vec<RawRateLimit>>,
    #[serde(default)]
    pub limits: RawLimits,
}

/// A VPN-less Finesse site: internal servers chosen by listening port, then by host.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FinesseSite")]
pub struct RawFinesse {
    /// Unique name of the service, used in logs and metrics.
    pub name: String,
    /// IP address every listening port of the site is bound on.
    #[serde(default = "any_address")]
    pub bind: String,
    pub tls: Option<RawTls>,
    /// TLS to every server of the site (a server's own upstream_tls replaces it).
    pub upstream_tls: Option<RawUpstreamTls>,
    /// The internal servers, one entry each.
    pub servers: Vec<RawServerEntry>,
    pub proxy_map: Option<RawProxyMap>,
    pub cache: Option<RawCache>,
    pub auth: Option<RawAuth>,
    /// Response rewriting rules; the first whose path and content type match applies.
    #[serde(default)]
    pub substitutions: Vec<RawSubstitution>,
    /// Also rewrite every server's upstream host:port to its public host:port in text responses.
    #[serde(default = "yes")]
    pub rewrite_upstream_hosts: bool,
    /// CIDRs allowed to connect; empty: everyone.
    #[serde(default)]
    pub client_allow: Vec<String>,
    /// CIDRs of load balancers whose X-Forwarded-For / X-Real-IP names the real client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Which header of a trusted balancer names the client: x-forwarded-for (the right-most
    /// address not in trusted_proxies), x-real-ip, or another header name.
    #[serde(default = "forwarded_for")]
    pub client_ip_header: String,
    /// Every connection starts with a PROXY protocol v1/v2 header from a peer in
    /// trusted_proxies (an L4 balancer in TLS pass-through); its address is the client.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Per-client rate limits for every server of the site, first match counts (default: each
    /// server's role sets its limit).
    pub rate_limits: Option<Vec<RawRateLimit>>,
    #[serde(default)]
    pub limits: RawLimits,
}

/// What an internal server is; sets its default rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Finesse,
    Ids,
    Cuic,
    Livedata,
    Chat,
    Other,
}

/// One internal server and the public host:port browsers reach it by.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FinesseServer")]
pub struct RawServerEntry {
    /// host:port the browser uses; unique across the file.
    pub public: String,
    /// host:port of the internal server.
    pub upstream: String,
    #[serde(default = "finesse_role")]
    pub role: Role,
    /// Port ccedge listens on for this server (default: the public port).
    #[schemars(range(min = 1))]
    pub listen_port: Option<u16>,
    /// TLS to this server, replacing the site's upstream_tls for it.
    pub upstream_tls: Option<RawUpstreamTls>,
}

/// The proxy map Finesse, IdS and CUIC poll (lines upstreamhost:port=publichost:port).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ProxyMap")]
pub struct RawProxyMap {
    /// IP:port the map is served on (with the site's TLS).
    pub listen: String,
    /// Path of the map.
    #[serde(default = "proxymap_path")]
    pub path: String,
}

/// The revalidating static cache.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "Cache")]
pub struct RawCache {
    /// Memory bound in MiB; least recently used entries go first.
    #[schemars(range(min = 1))]
    pub max_size_mb: u64,
    /// Freshness when the upstream sends no max-age or Expires.
    pub default_fresh_seconds: u64,
    /// How long after expiry a stale entry is still served while it is revalidated.
    pub stale_while_revalidate_seconds: u64,
    /// A GET or HEAD is cacheable when it matches one rule.
    pub rules: Vec<RawCacheRule>,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            max_size_mb: 256,
            default_fresh_seconds: 300,
            stale_while_revalidate_seconds: 60,
            rules: vec![
                RawCacheRule {
                    path_prefix: Some("/desktop/".into()),
                    path_suffix: None,
                },
                RawCacheRule {
                    path_prefix: None,
                    path_suffix: Some(
                        [
                            ".js", ".css", ".png", ".jpg", ".gif", ".svg", ".ico", ".woff",
                            ".woff2", ".html",
                        ]
                        .map(String::from)
                        .to_vec(),
                    ),
                },
            ],
        }
    }
}

/// Which requests may be cached: every part the rule sets must match.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CacheRule")]
pub struct RawCacheRule {
    /// The path starts with this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The path ends with one of these.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_suffix: Option<Vec<String>>,
}

/// Authentication at the proxy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Auth")]
pub struct RawAuth {
    /// URL a GET carrying the client's credentials is sent to; 2xx means valid. Or a list (side
    /// A, side B, ...): the first that answers decides.
    pub validate_url: OneOrMore,
    /// How long a validated credential is trusted, in seconds.
    #[serde(default = "auth_cache_seconds")]
    pub cache_seconds: u64,
    /// Path prefixes served without credentials.
    #[serde(default = "public_paths")]
    pub public_paths: Vec<String>,
    #[serde(default)]
    pub lockout: RawLockout,
    pub jwt: Option<RawJwt>,
    pub external: Option<RawExternal>,
}

/// A check by a service of the site's own (forward auth), after ccedge's: a `GET` describing the
/// request in `X-Forwarded-*` headers; 2xx allows it, 401 or 403 refuse it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ExternalCheck")]
pub struct RawExternal {
    /// The check's URL, http:// or https:// (over the site's upstream_tls).
    pub url: String,
    /// How long the check may take, in milliseconds; then `on_error` applies.
    #[serde(default = "external_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// Request headers passed on to the check (never the credential unless listed).
    #[serde(default = "external_send_headers")]
    pub send_headers: Vec<String>,
    /// Headers of the check's answer with this prefix are added to the upstream request; the
    /// client's own are always removed.
    #[serde(default = "external_header_prefix")]
    pub header_prefix: String,
    /// Seconds a verdict is kept per verified user, client address and request (0: ask every
    /// time).
    #[serde(default)]
    pub cache_seconds: u64,
    /// Whether requests to the auth's public paths are checked too.
    #[serde(default)]
    pub public_paths: bool,
    /// What a check that fails or does not answer in time means.
    #[serde(default)]
    pub on_error: OnError,
}

/// What an external check that fails means for the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refused with 503.
    #[default]
    Deny,
    /// Forwarded anyway (logged): a check that is down lets everyone through.
    Allow,
}

/// One URL, or a list of them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMore {
    One(String),
    More(Vec<String>),
}

impl OneOrMore {
    pub fn items(&self) -> &[String] {
        match self {
            OneOrMore::One(one) => std::slice::from_ref(one),
            OneOrMore::More(more) => more,
        }
    }
}

/// SSO: Bearer tokens that are JWTs are verified at the proxy, never sent to validate_url.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Jwt")]
pub struct RawJwt {
    /// URL of the signing keys: a PEM public key or a JWKS document.
    pub keys_url: String,
    /// Seconds between two fetches of the keys (they are also fetched on an unknown `kid`).
    #[serde(default = "jwt_poll_seconds")]
    #[schemars(range(min = 1))]
    pub poll_seconds: u64,
    /// When set, the token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, the token's `aud` must contain it.
    pub audience: Option<String>,
    /// A token issued (`iat`) longer ago than this is refused, even before it expires.
    #[serde(default = "jwt_max_token_age_seconds")]
    #[schemars(range(min = 1))]
    pub max_token_age_seconds: u64,
}

/// Brute-force protection: too many failed logins for one user from one address block that
/// user there, too many from one address across users block the address, for a while.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "Lockout")]
pub struct RawLockout {
    /// Failed attempts for one user name from one client address that block that user there.
    #[schemars(range(min = 1))]
    pub failures: u32,
    /// Failed attempts from one client address, across users, that block the address.
    #[schemars(range(min = 1))]
    pub address_failures: u32,
    /// Seconds within which those failures count.
    #[schemars(range(min = 1))]
    pub window_seconds: u64,
    /// Seconds a blocked user (at that address) or address stays blocked.
    #[schemars(range(min = 1))]
    pub block_seconds: u64,
}

impl Default for RawLockout {
    fn default() -> Self {
        RawLockout {
            failures: 5,
            address_failures: 20,
            window_seconds: 30,
            block_seconds: 1800,
        }
    }
}

/// Literal replacements in response bodies.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Substitution")]
pub struct RawSubstitution {
    /// Responses to requests whose path starts with this.
    #[serde(default = "root_path")]
    pub path_prefix: String,
    /// Media types of the responses rewritten.
    #[serde(default = "text_content_types")]
    pub content_types: Vec<String>,
    /// The replacements, applied together in one pass.
    pub replace: Vec<RawReplace>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Replace")]
pub struct RawReplace {
    /// Text to find (not empty).
    #[schemars(length(min = 1))]
    pub from: String,
    /// Text it is replaced with.
    pub to: String,
}

fn yes() -> bool {
    true
}

fn forwarded_for() -> String {
    "x-forwarded-for".into()
}

fn root_path() -> String {
    "/".into()
}

fn any_address() -> String {
    "0.0.0.0".into()
}

fn dataconn_paths() -> Vec<String> {
    vec!["/dataconn/".into()]
}

fn finesse_role() -> Role {
    Role::Finesse
}

fn proxymap_path() -> String {
    "/proxymap.txt".into()
}

fn auth_cache_seconds() -> u64 {
    900
}

fn jwt_poll_seconds() -> u64 {
    300
}

fn jwt_max_token_age_seconds() -> u64 {
    7200
}

fn external_timeout_ms() -> u64 {
    1000
}

fn external_send_headers() -> Vec<String> {
    vec!["User-Agent".into()]
}

fn external_header_prefix() -> String {
    "X-Auth-".into()
}

fn public_paths() -> Vec<String> {
    vec!["/desktop/".into(), "/finesse/api/SystemInfo".into()]
}

fn text_content_types() -> Vec<String> {
    super::model::TEXT_TYPES.map(String::from).to_vec()
}

/// The JSON Schema (draft 7) of the configuration file, for editors and validators.
pub fn schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    generator.into_root_schema_for::<RawConfig>().to_value()
}
