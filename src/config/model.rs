//! The validated configuration the proxy runs on. Every value here has been checked: addresses
//! parse, files load, names are unique. Built only by `validate`.

use crate::config::cidr::CidrSet;
use crate::config::tls::{ServerTls, UpstreamTls};
use serde::{Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use super::raw::{OnError, Per, Role};

/// Text content types: the default `substitutions[].content_types`, and the responses
/// `rewrite_upstream_hosts` applies to when no substitution rule matches.
pub const TEXT_TYPES: [&str; 7] = [
    "text/html",
    "text/xml",
    "application/xml",
    "application/json",
    "application/javascript",
    "text/javascript",
    "text/css",
];

#[derive(Debug)]
pub struct Config {
    pub file: PathBuf,
    pub server: ServerSettings,
    pub digital: Vec<DigitalService>,
    pub finesse: Vec<FinesseService>,
}

impl Config {
    /// Every socket address the configuration listens on.
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        let digital = self.digital.iter().map(|d| d.listen);
        let finesse = self.finesse.iter().flat_map(|f| {
            let ports = f.listen_ports().into_iter();
            ports
                .map(move |p| SocketAddr::new(f.bind, p))
                .chain(f.proxy_map.as_ref().map(|m| m.listen))
        });
        let admin = self.server.admin.as_ref().map(|a| a.listen);
        digital.chain(finesse).chain(admin).collect()
    }
}

#[derive(Debug)]
pub struct ServerSettings {
    pub threads: usize,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub websocket_drain_seconds: u64,
    pub max_draining_processes: usize,
    pub access_log: AccessLogTarget,
    pub admin: Option<AdminSettings>,
    pub shared_state: Option<SharedState>,
}

/// The fewest bytes a state key (`server.shared_state.key_file`) may have.
pub const STATE_KEY_MIN: usize = 32;

/// `server.shared_state`: where instances share their state.
#[derive(Debug, Clone)]
pub struct SharedState {
    /// The Redis URL as written (its password, if any, included).
    pub redis_url: Secret,
    /// The same URL with its password hidden, for logs and `/status`.
    pub shown_url: String,
    /// From `password_file`.
    pub password: Option<Secret>,
    pub tls: Option<RedisTls>,
    pub key_file: PathBuf,
    /// The bytes of `key_file`.
    pub key: SecretBytes,
    pub timeout: Duration,
}

/// TLS towards Redis (`rediss://`): PEM files, read when the connection is made.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    pub ca: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Bytes that must not appear in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Host names answered besides IP literals and `localhost` (lower case, no trailing dot).
    pub hosts: Vec<String>,
    /// The bearer token every endpoint but `/healthz` needs, when set.
    pub token: Option<Secret>,
}

/// A value that must not appear in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

/// A `host:port` as clients or upstreams know it. The host is kept lower-case; IPv6 hosts are
/// kept without brackets and shown with them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    pub host: String,
    pub port: u16,
}

impl Authority {
    /// Parses `host:port` or `[v6]:port`. The host is a DNS name or an IP address; the port is
    /// required and not 0.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("`{text}` is not host:port ({why})"));
        if text.contains("://") || text.contains('/') {
            return bad("write only host:port, without a scheme or path");
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let Some((v6, port)) = rest.split_once("]:") else {
                return bad("an IPv6 host is written [addr]:port");
            };
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("the bracketed host is not an IPv6 address");
            }
            (v6, port)
        } else {
            let Some((host, port)) = text.rsplit_once(':') else {
                return bad("the port is missing");
            };
            if host.contains(':') {
                return bad("an IPv6 host is written [addr]:port");
            }
            if !valid_hostname(host) {
                return bad("the host is not a valid DNS name or IPv4 address");
            }
            (host, port)
        };
        match port.parse::<u16>() {
            Ok(0) | Err(_) => bad("the port must be a number from 1 to 65535"),
            Ok(port) => Ok(Authority {
                host: host.to_ascii_lowercase(),
                port,
            }),
        }
    }
}

fn valid_hostname(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl Serialize for Authority {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An internal server: the name it was configured by and the address it resolved to at load.
#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    #[serde(rename = "address")]
    pub authority: Authority,
    #[serde(rename = "resolved")]
    pub addr: SocketAddr,
}

/// Who may connect, and whose forwarding headers are believed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientPolicy {
    pub allow: CidrSet,
    pub trusted_proxies: CidrSet,
    #[serde(rename = "client_ip_header")]
    pub ip_header: ClientIpHeader,
    /// Connections start with a PROXY protocol header naming the client.
    pub proxy_protocol: bool,
}

/// The header of a trusted balancer that names the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For`: its right-most address not in `trusted_proxies` (without one, the
    /// balancer's `X-Real-IP`).
    #[default]
    ForwardedFor,
    /// Another header holding the client's address (`X-Real-IP`, `True-Client-IP`, ...); its
    /// right-most address when it holds a list.
    Named(http::HeaderName),
}

impl Serialize for ClientIpHeader {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ClientIpHeader::ForwardedFor => s.serialize_str("x-forwarded-for"),
            ClientIpHeader::Named(name) => s.serialize_str(name.as_str()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub max_body_bytes: u64,
    #[serde(rename = "client_header_timeout_ms", serialize_with = "millis")]
    pub client_header_timeout: Duration,
    #[serde(rename = "keepalive_timeout_ms", serialize_with = "millis")]
    pub keepalive_timeout: Duration,
    #[serde(rename = "upstream_connect_timeout_ms", serialize_with = "millis")]
    pub upstream_connect_timeout: Duration,
    #[serde(rename = "upstream_read_timeout_ms", serialize_with = "millis")]
    pub upstream_read_timeout: Duration,
    #[serde(rename = "websocket_idle_timeout_ms", serialize_with = "millis")]
    pub websocket_idle_timeout: Duration,
    /// `None`: the service kind's default (per role for Finesse); `Some(0)`: no limit.
    pub max_connections_per_ip: Option<u32>,
    pub max_streams_per_connection: u32,
    /// Caps for addresses in these networks, most specific first.
    pub connections_by_cidr: Vec<CidrLimit>,
    #[serde(rename = "client_send_timeout_ms", serialize_with = "millis")]
    pub client_send_timeout: Duration,
    pub ipv6_prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateRule {
    pub path_prefix: String,
    pub per_second: u32,
    pub burst: u32,
    pub per: Per,
}

/// A connection cap for the addresses of a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CidrLimit {
    #[serde(serialize_with = "network")]
    pub cidr: ipnet::IpNet,
    pub max: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthCheck {
    pub path: String,
    #[serde(rename = "interval_ms", serialize_with = "millis")]
    pub interval: Duration,
    #[serde(rename = "timeout_ms", serialize_with = "millis")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Serialize)]
pub struct DigitalService {
    pub name: String,
    pub listen: SocketAddr,
    pub public: Authority,
    #[serde(serialize_with = "tls_summary")]
    pub tls: Option<ServerTls>,
    pub publisher: Upstream,
    pub subscriber: Upstream,
    pub upstream_tls: Option<UpstreamTls>,
    pub health_check: HealthCheck,
    pub publisher_only_paths: Vec<String>,
    pub clients: ClientPolicy,
    pub rate_limits: Vec<RateRule>,
    pub limits: Limits,
}

#[derive(Debug, Serialize)]
pub struct FinesseService {
    pub name: String,
    pub bind: IpAddr,
    #[serde(serialize_with = "tls_summary")]
    pub tls: Option<ServerTls>,
    pub upstream_tls: Option<UpstreamTls>,
    pub servers: Vec<FinesseServer>,
    pub proxy_map: Option<ProxyMap>,
    pub cache: Option<CacheSettings>,
    pub auth: Option<AuthSettings>,
    pub substitutions: Vec<Substitution>,
    pub rewrite_upstream_hosts: bool,
    pub clients: ClientPolicy,
    /// `None`: the service set none, so each role's default applies.
    pub rate_limits: Option<Vec<RateRule>>,
    pub limits: Limits,
}

impl FinesseService {
    /// The distinct ports this service listens on, in the order the servers name them.
    pub fn listen_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = Vec::new();
        for server in &self.servers {
            if !ports.contains(&server.listen_port) {
                ports.push(server.listen_port);
            }
        }
        ports
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FinesseServer {
    pub public: Authority,
    pub upstream: Upstream,
    pub role: Role,
    pub listen_port: u16,
    /// This server's own `upstream_tls`, when it has one (else the service's applies).
    pub upstream_tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyMap {
    pub listen: SocketAddr,
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheSettings {
    pub max_size_bytes: usize,
    #[serde(rename = "default_fresh_seconds", serialize_with = "seconds")]
    pub default_fresh: Duration,
    #[serde(rename = "stale_while_revalidate_seconds", serialize_with = "seconds")]
    pub stale_while_revalidate: Duration,
    pub rules: Vec<CacheRule>,
}

/// A request is cacheable when every part a rule sets matches.
#[derive(Debug, Clone, Serialize)]
pub struct CacheRule {
    pub path_prefix: Option<String>,
    pub path_suffixes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthSettings {
    /// Side A, side B, ...: asked in this order.
    #[serde(rename = "validate_url")]
    pub validate: Vec<Endpoint>,
    #[serde(rename = "cache_seconds", serialize_with = "seconds")]
    pub cache_for: Duration,
    pub public_paths: Vec<String>,
    pub lockout: Lockout,
    pub jwt: Option<JwtSettings>,
    pub external: Option<ExternalSettings>,
}

/// A forward-auth check by a service of the site's own, after ccedge's.
#[derive(Debug, Clone, Serialize)]
pub struct ExternalSettings {
    #[serde(rename = "url")]
    pub endpoint: Endpoint,
    #[serde(rename = "timeout_ms", serialize_with = "millis")]
    pub timeout: Duration,
    /// Lowercase names.
    pub send_headers: Vec<String>,
    /// Lowercase.
    pub header_prefix: String,
    #[serde(rename = "cache_seconds", serialize_with = "seconds")]
    pub cache_for: Duration,
    pub public_paths: bool,
    pub on_error: OnError,
}

#[derive(Debug, Clone, Serialize)]
pub struct JwtSettings {
    #[serde(rename = "keys_url")]
    pub keys: Endpoint,
    #[serde(rename = "poll_seconds", serialize_with = "seconds")]
    pub poll: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    #[serde(rename = "max_token_age_seconds", serialize_with = "seconds")]
    pub max_token_age: Duration,
}

/// A URL ccedge itself fetches from an internal server (credential checks, signing keys): where
/// it is, and the TLS to reach it with (`None`: plain HTTP).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: http::Uri,
    pub upstream: Upstream,
    pub tls: Option<UpstreamTls>,
}

impl Endpoint {
    /// The request target: path and query.
    pub fn target(&self) -> &str {
        self.url.path_and_query().map_or("/", |p| p.as_str())
    }
}

impl Serialize for Endpoint {
    /// The URL without any user information it carries (it is shown in `/status` and `ccedge
    /// diff`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let url = &self.url;
        let host = url
            .authority()
            .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
            .unwrap_or_default();
        let scheme = url.scheme_str().unwrap_or("http");
        s.collect_str(&format_args!("{scheme}://{host}{}", self.target()))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Lockout {
    pub failures: u32,
    pub address_failures: u32,
    #[serde(rename = "window_seconds", serialize_with = "seconds")]
    pub window: Duration,
    #[serde(rename = "block_seconds", serialize_with = "seconds")]
    pub block: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Substitution {
    pub path_prefix: String,
    pub content_types: Vec<String>,
    pub replace: Vec<(String, String)>,
}

// How the model is shown on the admin `/status` page: with the contract's key names and units.

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

fn network<S: Serializer>(net: &ipnet::IpNet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(net)
}

fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn tls_summary<S: Serializer>(tls: &Option<ServerTls>, s: S) -> Result<S::Ok, S::Error> {
    match tls {
        Some(tls) => s.serialize_str(&tls.summary()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_forms() {
        let a = Authority::parse("Finesse1.Example.com:8445").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("finesse1.example.com", 8445));
        assert_eq!(a.to_string(), "finesse1.example.com:8445");
        let v6 = Authority::parse("[fd00::1]:443").unwrap();
        assert_eq!(v6.host, "fd00::1");
        assert_eq!(v6.to_string(), "[fd00::1]:443");
        assert_eq!(Authority::parse("10.0.0.5:80").unwrap().host, "10.0.0.5");
    }

    #[test]
    fn authority_rejections() {
        for bad in [
            "finesse1.example.com",
            "finesse1.example.com:",
            "finesse1.example.com:0",
            "finesse1.example.com:70000",
            "https://finesse1.example.com:8445",
            "fd00::1:443",
            "[fd00::1]443",
            "[nope]:443",
            "bad host:443",
            ":443",
            "-x.example.com:443",
        ] {
            assert!(Authority::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
