//! The YAML file as written: serde structures that mirror `shared/spec/config.md` key for key.
//!
//! Nothing here is interpreted; `validate` turns these into the internal model. Defaults are the
//! contract's, so a key left out and a key written with its default value mean the same.

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub digital_channels: Vec<RawDigital>,
    #[serde(default)]
    pub finesse: Vec<RawFinesse>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub threads: Option<usize>,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub access_log: String,
    pub admin: Option<RawAdmin>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            threads: None,
            pid_file: "/tmp/ccedge.pid".into(),
            upgrade_sock: "/tmp/ccedge-upgrade.sock".into(),
            grace_period_seconds: 30,
            graceful_shutdown_timeout_seconds: 10,
            access_log: "stdout".into(),
            admin: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca: Option<String>,
    #[serde(default = "yes")]
    pub verify: bool,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// Added key: the name expected in the upstream certificate and sent as SNI
    /// (default: the upstream's host).
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    #[serde(default = "root_path")]
    pub path_prefix: String,
    pub per_second: u32,
    #[serde(default)]
    pub burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_body_bytes: u64,
    pub client_header_timeout_ms: u64,
    pub keepalive_timeout_ms: u64,
    pub upstream_connect_timeout_ms: u64,
    pub upstream_read_timeout_ms: u64,
    /// Added key: how long an upgraded (WebSocket) connection may stay silent.
    pub websocket_idle_timeout_ms: u64,
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
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealthCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDigital {
    pub name: String,
    pub listen: String,
    pub public: String,
    pub tls: Option<RawTls>,
    pub publisher: String,
    pub subscriber: String,
    pub upstream_tls: Option<RawUpstreamTls>,
    #[serde(default)]
    pub health_check: RawHealthCheck,
    #[serde(default = "dataconn_paths")]
    pub publisher_only_paths: Vec<String>,
    #[serde(default)]
    pub client_allow: Vec<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub rate_limits: Option<Vec<RawRateLimit>>,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFinesse {
    pub name: String,
    #[serde(default = "any_address")]
    pub bind: String,
    pub tls: Option<RawTls>,
    pub upstream_tls: Option<RawUpstreamTls>,
    pub servers: Vec<RawServerEntry>,
    pub proxy_map: Option<RawProxyMap>,
    pub cache: Option<RawCache>,
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub substitutions: Vec<RawSubstitution>,
    #[serde(default = "yes")]
    pub rewrite_upstream_hosts: bool,
    #[serde(default)]
    pub client_allow: Vec<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub rate_limits: Option<Vec<RawRateLimit>>,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Finesse,
    Ids,
    Cuic,
    Livedata,
    Chat,
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerEntry {
    pub public: String,
    pub upstream: String,
    #[serde(default = "finesse_role")]
    pub role: Role,
    pub listen_port: Option<u16>,
    /// Added key: TLS to this server, replacing the service's `upstream_tls` for it.
    pub upstream_tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyMap {
    pub listen: String,
    #[serde(default = "proxymap_path")]
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub max_size_mb: u64,
    pub default_fresh_seconds: u64,
    pub stale_while_revalidate_seconds: u64,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheRule {
    pub path_prefix: Option<String>,
    pub path_suffix: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub validate_url: String,
    #[serde(default = "auth_cache_seconds")]
    pub cache_seconds: u64,
    #[serde(default = "public_paths")]
    pub public_paths: Vec<String>,
    #[serde(default)]
    pub lockout: RawLockout,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLockout {
    pub failures: u32,
    pub window_seconds: u64,
    pub block_seconds: u64,
}

impl Default for RawLockout {
    fn default() -> Self {
        RawLockout {
            failures: 5,
            window_seconds: 30,
            block_seconds: 1800,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubstitution {
    #[serde(default = "root_path")]
    pub path_prefix: String,
    #[serde(default = "text_content_types")]
    pub content_types: Vec<String>,
    pub replace: Vec<RawReplace>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplace {
    pub from: String,
    pub to: String,
}

fn yes() -> bool {
    true
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

fn public_paths() -> Vec<String> {
    vec!["/desktop/".into(), "/finesse/api/SystemInfo".into()]
}

fn text_content_types() -> Vec<String> {
    super::model::TEXT_TYPES.map(String::from).to_vec()
}
