//! From the YAML as written (`raw`) to the model the proxy runs on, rejecting anything the
//! contract forbids. Every problem is reported with its key path; all are collected so that one
//! run of `ccedge -t` shows everything that needs fixing.

use super::model::*;
use super::raw::*;
use crate::config::cidr::CidrSet;
use crate::config::tls::{ListenerCert, ServerTls, TlsFileError, UpstreamTls};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Headers of a request to an external check that ccedge writes itself, besides its
/// `X-Forwarded-*`: `auth.external.send_headers` cannot name them.
const EXTERNAL_FRAMING: [&str; 7] = [
    "host",
    "trackingid",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
];

/// Headers requests to internal servers need from the client or from ccedge's header policy: no
/// `auth.external.header_prefix` may cover one (clients' headers with the prefix are removed, and
/// the check's answer may set them).
const EXTERNAL_KEPT: [&str; 29] = [
    "accept",
    "accept-language",
    "access-control-request-headers",
    "access-control-request-method",
    "authorization",
    "cache-control",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "host",
    "if-modified-since",
    "if-none-match",
    "keep-alive",
    "origin",
    "proxy-authorization",
    "range",
    "referer",
    "sec-websocket-key",
    "sec-websocket-protocol",
    "sec-websocket-version",
    "trackingid",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-client-ip",
    "x-forwarded-for",
    "x-real-ip",
    "x-requested-with",
];

/// One rejected value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// How an upstream's host name becomes an address.
pub type Resolve = fn(&str, u16) -> Result<SocketAddr, String>;

/// Name resolution through the system's resolver.
pub fn system_resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_string()))
}

pub fn validate(raw: RawConfig, file: &Path, resolve: Resolve) -> Result<Config, Vec<Problem>> {
    let mut v = Validator {
        base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        resolve: Some(resolve),
        ..Validator::default()
    };
    let server = v.server(&raw.server);
    let digital: Vec<_> = raw
        .digital_channels
        .iter()
        .enumerate()
        .filter_map(|(i, d)| v.digital(&format!("digital_channels[{i}]"), d))
        .collect();
    let finesse: Vec<_> = raw
        .finesse
        .iter()
        .enumerate()
        .filter_map(|(i, f)| v.finesse(&format!("finesse[{i}]"), f))
        .collect();
    v.check_listeners();
    if raw.digital_channels.is_empty() && raw.finesse.is_empty() {
        v.problem(
            "",
            "nothing to serve: add a digital_channels or finesse entry",
        );
    }
    match (server, v.problems.is_empty()) {
        (Some(server), true) => Ok(Config {
            file: file.to_path_buf(),
            server,
            digital,
            finesse,
        }),
        _ => Err(v.problems),
    }
}

#[derive(Default)]
struct Validator {
    /// The configuration file's folder: relative certificate paths are taken from here.
    base: PathBuf,
    problems: Vec<Problem>,
    /// Every listening socket with the key that asked for it.
    listeners: Vec<(SocketAddr, String)>,
    /// Service names (both kinds) with their key.
    names: HashMap<String, String>,
    /// Finesse public host:port with their key.
    publics: HashMap<Authority, String>,
    resolve: Option<Resolve>,
}

impl Validator {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn check<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|m| self.problem(path, m)).ok()
    }

    fn server(&mut self, s: &RawServer) -> Option<ServerSettings> {
        let threads = match s.threads {
            Some(0) => {
                self.problem("server.threads", "must be at least 1");
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        self.absolute("server.pid_file", &s.pid_file);
        self.absolute("server.upgrade_sock", &s.upgrade_sock);
        let access_log = match s.access_log.as_str() {
            "stdout" => AccessLogTarget::Stdout,
            "off" => AccessLogTarget::Off,
            path if path.starts_with('/') => AccessLogTarget::File(PathBuf::from(path)),
            other => {
                self.problem(
                    "server.access_log",
                    format!("`{other}` is not stdout, off or an absolute path"),
                );
                AccessLogTarget::Off
            }
        };
        let admin = match &s.admin {
            Some(admin) => Some(self.admin(admin)?),
            None => None,
        };
        let shared_state = match &s.shared_state {
            Some(shared) => Some(self.shared_state(shared)?),
            None => None,
        };
        Some(ServerSettings {
            threads,
            pid_file: s.pid_file.clone(),
            upgrade_sock: s.upgrade_sock.clone(),
            grace_period_seconds: s.grace_period_seconds,
            graceful_shutdown_timeout_seconds: s.graceful_shutdown_timeout_seconds,
            websocket_drain_seconds: s.websocket_drain_seconds,
            max_draining_processes: s.max_draining_processes,
            access_log,
            admin,
            shared_state,
        })
    }

    fn shared_state(&mut self, raw: &RawSharedState) -> Option<SharedState> {
        const AT: &str = "server.shared_state";
        let url = raw.redis_url.trim();
        let tls = url.starts_with("rediss://");
        let parsed = if !tls && !url.starts_with("redis://") {
            Err(format!("`{url}` is not a redis:// or rediss:// URL"))
        } else {
            fred::types::config::Config::from_url(url)
                .map_err(|e| format!("`{}`: {}", shown_url(url), e.details()))
        };
        let parsed = self.check(&format!("{AT}.redis_url"), parsed);
        let password = match &raw.password_file {
            Some(file) => {
                let at = format!("{AT}.password_file");
                let file = self.file(&at, file)?;
                let text = self.check(
                    &at,
                    std::fs::read_to_string(&file)
                        .map_err(|e| format!("`{}`: {e}", file.display())),
                )?;
                let password = text.lines().next().unwrap_or("").to_string();
                if parsed.as_ref().is_some_and(|c| c.password.is_some()) {
                    self.problem(&at, "redis_url has a password already: keep one of them");
                }
                Some(Secret(password))
            }
            None => None,
        };
        let key_at = format!("{AT}.key_file");
        let key_file = self.file(&key_at, &raw.key_file)?;
        let key = self.check(
            &key_at,
            std::fs::read(&key_file).map_err(|e| format!("`{}`: {e}", key_file.display())),
        )?;
        if key.len() < STATE_KEY_MIN {
            self.problem(
                &key_at,
                format!(
                    "`{}` holds {} bytes; the key needs at least {} (head -c 32 /dev/urandom > FILE)",
                    key_file.display(),
                    key.len(),
                    STATE_KEY_MIN
                ),
            );
        }
        let mut redis_tls = RedisTls::default();
        for (name, value) in [
            ("ca", &raw.ca),
            ("client_cert", &raw.client_cert),
            ("client_key", &raw.client_key),
        ] {
            if value.is_some() && !tls {
                self.problem(&format!("{AT}.{name}"), "only for a rediss:// URL");
            }
        }
        if let Some(ca) = &raw.ca {
            let at = format!("{AT}.ca");
            let file = self.file(&at, ca)?;
            if let Err(e) = UpstreamTls::load_ca(&file) {
                self.problem(&at, e.to_string());
            }
            redis_tls.ca = Some(file);
        }
        match (&raw.client_cert, &raw.client_key) {
            (Some(cert), Some(key)) => {
                let cert_path = format!("{AT}.client_cert");
                let key_path = format!("{AT}.client_key");
                self.cert_pair(
                    (cert_path.clone(), cert),
                    (key_path.clone(), key),
                    UpstreamTls::load_client,
                )?;
                let cert = self.file(&cert_path, cert)?;
                let key = self.file(&key_path, key)?;
                redis_tls.client = Some((cert, key));
            }
            (None, None) => {}
            (Some(_), None) => {
                self.problem(&format!("{AT}.client_key"), "client_cert needs client_key")
            }
            (None, Some(_)) => {
                self.problem(&format!("{AT}.client_cert"), "client_key needs client_cert")
            }
        }
        if raw.timeout_ms == 0 || raw.timeout_ms > 10_000 {
            self.problem(&format!("{AT}.timeout_ms"), "must be 1 to 10000");
        }
        parsed?;
        Some(SharedState {
            redis_url: Secret(url.to_string()),
            shown_url: shown_url(url),
            password,
            tls: tls.then_some(redis_tls),
            key_file,
            key: SecretBytes(key),
            timeout: Duration::from_millis(raw.timeout_ms),
        })
    }

    fn admin(&mut self, admin: &RawAdmin) -> Option<AdminSettings> {
        let listen = self.listen_addr("server.admin.listen", &admin.listen);
        let mut hosts = Vec::new();
        for (i, host) in admin.hosts.iter().enumerate() {
            let name = host.trim().trim_end_matches('.').to_ascii_lowercase();
            if name.contains(':') || Authority::parse(&format!("{name}:1")).is_err() {
                self.problem(
                    &format!("server.admin.hosts[{i}]"),
                    format!("`{host}` is not a host name (write it without a port)"),
                );
            } else {
                hosts.push(name);
            }
        }
        let token = match &admin.token {
            Some(token) if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) => {
                self.problem(
                    "server.admin.token",
                    "must be visible ASCII characters without spaces (it is sent in a header)",
                );
                None
            }
            Some(token) => Some(Secret(token.clone())),
            None => None,
        };
        Some(AdminSettings {
            listen: listen?,
            hosts,
            token,
        })
    }

    fn absolute(&mut self, path: &str, value: &str) {
        if !value.starts_with('/') {
            self.problem(path, format!("`{value}` must be an absolute path"));
        }
    }

    fn name(&mut self, path: &str, name: &str) {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            self.problem(
                path,
                format!("`{name}` must be non-empty letters, digits, '-', '_' or '.'"),
            );
        } else if let Some(first) = self.names.get(name) {
            let message = format!("service name `{name}` is already used by {first}");
            self.problem(path, message);
        } else {
            self.names.insert(name.to_string(), path.to_string());
        }
    }

    /// A socket address to bind: an IP literal and a port, remembered for the conflict check.
    fn listen_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        let addr = self.check(
            path,
            text.parse::<SocketAddr>().map_err(|_| {
                format!("`{text}` is not an address to listen on (IP:port or [v6]:port)")
            }),
        )?;
        self.listeners.push((addr, path.to_string()));
        Some(addr)
    }

    fn check_listeners(&mut self) {
        let mut found = Vec::new();
        for (i, (a, path_a)) in self.listeners.iter().enumerate() {
            for (b, path_b) in &self.listeners[..i] {
                let overlap =
                    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
                if a.port() == b.port() && overlap {
                    found.push((
                        path_a.clone(),
                        format!("{a} collides with {b} ({path_b}): one socket cannot serve both"),
                    ));
                }
            }
        }
        for (path, message) in found {
            self.problem(&path, message);
        }
    }

    fn upstream(&mut self, path: &str, text: &str) -> Option<Upstream> {
        let authority = self.check(path, Authority::parse(text))?;
        let resolve = self.resolve.unwrap_or(system_resolve);
        let resolved = resolve(&authority.host, authority.port)
            .map_err(|e| format!("cannot resolve `{text}`: {e}"));
        let addr = self.check(path, resolved)?;
        Some(Upstream { authority, addr })
    }

    fn url_path(&mut self, path: &str, value: &str) {
        if !value.starts_with('/') {
            self.problem(path, format!("`{value}` must start with '/'"));
        }
    }

    fn paths(&mut self, path: &str, values: &[String]) -> Vec<String> {
        for (i, p) in values.iter().enumerate() {
            self.url_path(&format!("{path}[{i}]"), p);
        }
        values.to_vec()
    }

    fn server_tls(&mut self, path: &str, tls: &Option<RawTls>) -> Option<Option<ServerTls>> {
        let Some(tls) = tls else {
            return Some(None);
        };
        let pairs: Vec<(String, &str, &str)> = match (&tls.cert, &tls.key, &tls.certificates) {
            (Some(cert), Some(key), None) => vec![(path.to_string(), cert, key)],
            (None, None, Some(list)) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    (
                        format!("{path}.certificates[{i}]"),
                        c.cert.as_str(),
                        c.key.as_str(),
                    )
                })
                .collect(),
            (None, None, Some(_)) => {
                self.problem(&format!("{path}.certificates"), "lists no certificate");
                return None;
            }
            (_, _, Some(_)) => {
                self.problem(
                    path,
                    "give either cert and key (one certificate) or certificates (several), not both",
                );
                return None;
            }
            (None, _, None) => {
                self.problem(&format!("{path}.cert"), "is required (or certificates)");
                return None;
            }
            (Some(_), None, None) => {
                self.problem(&format!("{path}.key"), "is required with cert");
                return None;
            }
        };
        let mut certificates = Vec::new();
        for (at, cert, key) in pairs {
            let cert = (format!("{at}.cert"), cert);
            let key = (format!("{at}.key"), key);
            certificates.push(self.cert_pair(cert, key, ListenerCert::load));
        }
        let certificates: Option<Vec<ListenerCert>> = certificates.into_iter().collect();
        Some(Some(ServerTls::new(certificates?)))
    }

    /// A certificate chain and its private key, loaded by `load` and checked to belong together.
    fn cert_pair<T>(
        &mut self,
        (cert_path, cert): (String, &str),
        (key_path, key): (String, &str),
        load: fn(&Path, &Path) -> Result<T, TlsFileError>,
    ) -> Option<T> {
        let cert = self.file(&cert_path, cert);
        let key = self.file(&key_path, key);
        let (cert, key) = (cert?, key?);
        load(&cert, &key)
            .map_err(|e| {
                let at = if e.file == key { key_path } else { cert_path };
                self.problem(&at, e.to_string());
            })
            .ok()
    }

    /// A file that must exist; relative paths are taken from the configuration file's folder.
    fn file(&mut self, path: &str, value: &str) -> Option<PathBuf> {
        let resolved = self.base.join(value);
        match std::fs::metadata(&resolved) {
            Ok(meta) if meta.is_file() => Some(resolved),
            Ok(_) => {
                self.problem(path, format!("`{}` is not a file", resolved.display()));
                None
            }
            Err(e) => {
                self.problem(path, format!("`{}`: {e}", resolved.display()));
                None
            }
        }
    }

    fn upstream_tls(
        &mut self,
        path: &str,
        tls: &Option<RawUpstreamTls>,
    ) -> Option<Option<UpstreamTls>> {
        let Some(tls) = tls else {
            return Some(None);
        };
        let ca_path = format!("{path}.ca");
        let ca = match &tls.ca {
            Some(ca) => {
                let file = self.file(&ca_path, ca)?;
                match UpstreamTls::load_ca(&file) {
                    Ok(ca) => Some(ca),
                    Err(e) => {
                        self.problem(&ca_path, e.to_string());
                        return None;
                    }
                }
            }
            None => None,
        };
        let cert_path = format!("{path}.client_cert");
        let key_path = format!("{path}.client_key");
        let client = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => Some(self.cert_pair(
                (cert_path, cert),
                (key_path, key),
                UpstreamTls::load_client,
            )?),
            (None, None) => None,
            (Some(_), None) => {
                self.problem(&key_path, "client_cert needs client_key");
                return None;
            }
            (None, Some(_)) => {
                self.problem(&cert_path, "client_key needs client_cert");
                return None;
            }
        };
        if let Some(name) = &tls.server_name {
            if name.contains(':') || Authority::parse(&format!("{name}:1")).is_err() {
                self.problem(
                    &format!("{path}.server_name"),
                    format!("`{name}` is not a DNS name or IPv4 address"),
                );
                return None;
            }
        }
        Some(Some(UpstreamTls {
            verify: tls.verify,
            ca,
            client,
            server_name: tls.server_name.as_ref().map(|n| n.to_ascii_lowercase()),
        }))
    }

    fn cidrs(&mut self, path: &str, entries: &[String]) -> CidrSet {
        let nets = entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| self.check(&format!("{path}[{i}]"), CidrSet::parse_entry(e)))
            .collect();
        CidrSet::new(nets)
    }

    fn clients(
        &mut self,
        path: &str,
        allow: &[String],
        trusted: &[String],
        ip_header: &str,
        proxy_protocol: bool,
    ) -> ClientPolicy {
        if proxy_protocol && trusted.is_empty() {
            self.problem(
                &format!("{path}.proxy_protocol"),
                "needs trusted_proxies: the balancers allowed to send the PROXY header",
            );
        }
        ClientPolicy {
            allow: self.cidrs(&format!("{path}.client_allow"), allow),
            trusted_proxies: self.cidrs(&format!("{path}.trusted_proxies"), trusted),
            ip_header: self.ip_header(&format!("{path}.client_ip_header"), ip_header),
            proxy_protocol,
        }
    }

    fn ip_header(&mut self, path: &str, name: &str) -> ClientIpHeader {
        let lower = name.trim().to_ascii_lowercase();
        if lower == "x-forwarded-for" {
            return ClientIpHeader::ForwardedFor;
        }
        match http::HeaderName::from_bytes(lower.as_bytes()) {
            Ok(header) if !matches!(lower.as_str(), "host" | "forwarded" | "connection") => {
                ClientIpHeader::Named(header)
            }
            Ok(_) => {
                self.problem(
                    path,
                    format!("`{name}` does not hold an address: use x-forwarded-for, x-real-ip or the header your balancer sets"),
                );
                ClientIpHeader::ForwardedFor
            }
            Err(_) => {
                self.problem(path, format!("`{name}` is not a header name"));
                ClientIpHeader::ForwardedFor
            }
        }
    }

    /// `users`: whether the service verifies users (a Finesse site with auth), so that rules may
    /// count per user.
    fn rate_rules(&mut self, path: &str, rules: &[RawRateLimit], users: bool) -> Vec<RateRule> {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("{path}[{i}]");
                self.url_path(&format!("{at}.path_prefix"), &r.path_prefix);
                if r.per_second == 0 {
                    self.problem(&format!("{at}.per_second"), "must be at least 1");
                }
                let per = r.per.unwrap_or(Per::Address);
                if per == Per::User && !users {
                    self.problem(
                        &format!("{at}.per"),
                        "`user` needs a Finesse site with auth: only a user ccedge verified can be counted",
                    );
                }
                RateRule {
                    path_prefix: r.path_prefix.clone(),
                    per_second: r.per_second,
                    burst: r.burst,
                    per,
                }
            })
            .collect()
    }

    fn limits(&mut self, path: &str, l: &RawLimits) -> Limits {
        let mut ms = |key: &str, value: u64| {
            if value == 0 {
                self.problem(&format!("{path}.{key}"), "must be greater than 0");
            }
            Duration::from_millis(value)
        };
        let limits = Limits {
            max_body_bytes: l.max_body_bytes,
            client_header_timeout: ms("client_header_timeout_ms", l.client_header_timeout_ms),
            keepalive_timeout: ms("keepalive_timeout_ms", l.keepalive_timeout_ms),
            upstream_connect_timeout: ms(
                "upstream_connect_timeout_ms",
                l.upstream_connect_timeout_ms,
            ),
            upstream_read_timeout: ms("upstream_read_timeout_ms", l.upstream_read_timeout_ms),
            websocket_idle_timeout: ms("websocket_idle_timeout_ms", l.websocket_idle_timeout_ms),
            max_connections_per_ip: l.max_connections_per_ip,
            max_streams_per_connection: l.max_streams_per_connection,
            connections_by_cidr: Vec::new(),
            client_send_timeout: ms("client_send_timeout_ms", l.client_send_timeout_ms),
            ipv6_prefix: l.ipv6_prefix,
        };
        let mut by_cidr: Vec<CidrLimit> = l
            .connections_by_cidr
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let at = format!("{path}.connections_by_cidr[{i}].cidr");
                let cidr = self.check(&at, CidrSet::parse_entry(&c.cidr))?;
                Some(CidrLimit { cidr, max: c.max })
            })
            .collect();
        // The most specific network first: the first that contains an address wins.
        by_cidr.sort_by_key(|c| std::cmp::Reverse(c.cidr.prefix_len()));
        let mut limits = limits;
        limits.connections_by_cidr = by_cidr;
        if !(1..=128).contains(&l.ipv6_prefix) {
            self.problem(&format!("{path}.ipv6_prefix"), "must be from 1 to 128");
        }
        if l.max_streams_per_connection == 0 {
            self.problem(
                &format!("{path}.max_streams_per_connection"),
                "must be at least 1",
            );
        }
        if l.max_body_bytes == 0 {
            self.problem(&format!("{path}.max_body_bytes"), "must be greater than 0");
        }
        limits
    }

    fn health_check(&mut self, path: &str, h: &RawHealthCheck) -> HealthCheck {
        self.url_path(&format!("{path}.path"), &h.path);
        if h.path.parse::<http::uri::PathAndQuery>().is_err() {
            self.problem(
                &format!("{path}.path"),
                format!("`{}` is not a valid request path", h.path),
            );
        }
        for (key, value) in [
            ("interval_ms", h.interval_ms),
            ("timeout_ms", h.timeout_ms),
            ("rise", u64::from(h.rise)),
            ("fall", u64::from(h.fall)),
        ] {
            if value == 0 {
                self.problem(&format!("{path}.{key}"), "must be greater than 0");
            }
        }
        HealthCheck {
            path: h.path.clone(),
            interval: Duration::from_millis(h.interval_ms),
            timeout: Duration::from_millis(h.timeout_ms),
            rise: h.rise,
            fall: h.fall,
        }
    }

    fn digital(&mut self, path: &str, d: &RawDigital) -> Option<DigitalService> {
        self.name(&format!("{path}.name"), &d.name);
        let listen = self.listen_addr(&format!("{path}.listen"), &d.listen);
        let public = self.check(&format!("{path}.public"), Authority::parse(&d.public));
        let tls = self.server_tls(&format!("{path}.tls"), &d.tls);
        let publisher = self.upstream(&format!("{path}.publisher"), &d.publisher);
        let subscriber = self.upstream(&format!("{path}.subscriber"), &d.subscriber);
        if let (Some(p), Some(s)) = (&publisher, &subscriber) {
            if p.authority == s.authority || p.addr == s.addr {
                self.problem(
                    &format!("{path}.subscriber"),
                    format!(
                        "{} is the publisher too: failover needs two nodes",
                        s.authority
                    ),
                );
            }
        }
        let upstream_tls = self.upstream_tls(&format!("{path}.upstream_tls"), &d.upstream_tls);
        let health_check = self.health_check(&format!("{path}.health_check"), &d.health_check);
        let publisher_only_paths = self.paths(
            &format!("{path}.publisher_only_paths"),
            &d.publisher_only_paths,
        );
        let clients = self.clients(
            path,
            &d.client_allow,
            &d.trusted_proxies,
            &d.client_ip_header,
            d.proxy_protocol,
        );
        let rate_limits = match &d.rate_limits {
            Some(rules) => self.rate_rules(&format!("{path}.rate_limits"), rules, false),
            None => vec![RateRule {
                path_prefix: "/drapi/".into(),
                per_second: 100,
                burst: 200,
                per: Per::Address,
            }],
        };
        let limits = self.limits(&format!("{path}.limits"), &d.limits);
        Some(DigitalService {
            name: d.name.clone(),
            listen: listen?,
            public: public?,
            tls: tls?,
            publisher: publisher?,
            subscriber: subscriber?,
            upstream_tls: upstream_tls?,
            health_check,
            publisher_only_paths,
            clients,
            rate_limits,
            limits,
        })
    }

    fn finesse(&mut self, path: &str, f: &RawFinesse) -> Option<FinesseService> {
        self.name(&format!("{path}.name"), &f.name);
        let bind = self.check(
            &format!("{path}.bind"),
            f.bind
                .parse::<IpAddr>()
                .map_err(|_| format!("`{}` is not an IP address to bind on", f.bind)),
        );
        let tls = self.server_tls(&format!("{path}.tls"), &f.tls);
        let upstream_tls = self.upstream_tls(&format!("{path}.upstream_tls"), &f.upstream_tls);
        if f.servers.is_empty() {
            self.problem(&format!("{path}.servers"), "needs at least one server");
        }
        let servers: Vec<_> = f
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| self.finesse_server(&format!("{path}.servers[{i}]"), s))
            .collect();
        let servers: Option<Vec<_>> = servers.into_iter().collect();
        if let (Some(bind), Some(servers)) = (bind, &servers) {
            let mut ports = Vec::new();
            for (i, s) in servers.iter().enumerate() {
                if !ports.contains(&s.listen_port) {
                    ports.push(s.listen_port);
                    self.listeners.push((
                        SocketAddr::new(bind, s.listen_port),
                        format!("{path}.servers[{i}].listen_port"),
                    ));
                }
            }
            self.host_per_port(path, servers);
        }
        let proxy_map = f.proxy_map.as_ref().and_then(|m| {
            let at = format!("{path}.proxy_map");
            self.url_path(&format!("{at}.path"), &m.path);
            Some(ProxyMap {
                listen: self.listen_addr(&format!("{at}.listen"), &m.listen)?,
                path: m.path.clone(),
            })
        });
        let cache = f
            .cache
            .as_ref()
            .map(|c| self.cache(&format!("{path}.cache"), c));
        let tls_for = |at: &Upstream| {
            let own = servers
                .iter()
                .flatten()
                .find(|s| s.upstream.authority == at.authority);
            own.and_then(|s| s.upstream_tls.clone())
                .or_else(|| upstream_tls.clone().flatten())
        };
        let auth = match &f.auth {
            Some(a) => Some(self.auth(&format!("{path}.auth"), a, &tls_for)?),
            None => None,
        };
        let substitutions = f
            .substitutions
            .iter()
            .enumerate()
            .map(|(i, s)| self.substitution(&format!("{path}.substitutions[{i}]"), s))
            .collect();
        let clients = self.clients(
            path,
            &f.client_allow,
            &f.trusted_proxies,
            &f.client_ip_header,
            f.proxy_protocol,
        );
        let rate_limits = f
            .rate_limits
            .as_ref()
            .map(|rules| self.rate_rules(&format!("{path}.rate_limits"), rules, f.auth.is_some()));
        let limits = self.limits(&format!("{path}.limits"), &f.limits);
        Some(FinesseService {
            name: f.name.clone(),
            bind: bind?,
            tls: tls?,
            upstream_tls: upstream_tls?,
            servers: servers?,
            proxy_map,
            cache,
            auth,
            substitutions,
            rewrite_upstream_hosts: f.rewrite_upstream_hosts,
            clients,
            rate_limits,
            limits,
        })
    }

    fn finesse_server(&mut self, path: &str, s: &RawServerEntry) -> Option<FinesseServer> {
        let public_path = format!("{path}.public");
        let public = self.check(&public_path, Authority::parse(&s.public));
        if let Some(public) = &public {
            if let Some(first) = self.publics.get(public) {
                let message = format!("public {public} is already served by {first}");
                self.problem(&public_path, message);
            } else {
                self.publics.insert(public.clone(), public_path);
            }
        }
        let upstream = self.upstream(&format!("{path}.upstream"), &s.upstream);
        if s.listen_port == Some(0) {
            self.problem(&format!("{path}.listen_port"), "must be from 1 to 65535");
        }
        let upstream_tls = self.upstream_tls(&format!("{path}.upstream_tls"), &s.upstream_tls);
        let public = public?;
        Some(FinesseServer {
            listen_port: s.listen_port.unwrap_or(public.port),
            public,
            upstream: upstream?,
            role: s.role,
            upstream_tls: upstream_tls?,
        })
    }

    /// On one listening port, the Host header must tell the servers apart.
    fn host_per_port(&mut self, path: &str, servers: &[FinesseServer]) {
        for (i, s) in servers.iter().enumerate() {
            let clash = servers[..i]
                .iter()
                .position(|t| t.listen_port == s.listen_port && t.public.host == s.public.host);
            if let Some(j) = clash {
                self.problem(
                    &format!("{path}.servers[{i}].public"),
                    format!(
                        "host `{}` is already served on port {} by {path}.servers[{j}]; \
                         servers sharing a listen_port need different hosts",
                        s.public.host, s.listen_port
                    ),
                );
            }
        }
    }

    fn cache(&mut self, path: &str, c: &RawCache) -> CacheSettings {
        if c.max_size_mb == 0 {
            self.problem(&format!("{path}.max_size_mb"), "must be at least 1");
        }
        let rules = c
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("{path}.rules[{i}]");
                let suffixes = r.path_suffix.clone().unwrap_or_default();
                if r.path_prefix.is_none() && suffixes.is_empty() {
                    self.problem(&at, "a rule needs path_prefix or path_suffix");
                }
                if let Some(prefix) = &r.path_prefix {
                    self.url_path(&format!("{at}.path_prefix"), prefix);
                }
                CacheRule {
                    path_prefix: r.path_prefix.clone(),
                    path_suffixes: suffixes,
                }
            })
            .collect();
        CacheSettings {
            max_size_bytes: usize::try_from(c.max_size_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            default_fresh: Duration::from_secs(c.default_fresh_seconds),
            stale_while_revalidate: Duration::from_secs(c.stale_while_revalidate_seconds),
            rules,
        }
    }

    /// `tls` gives the TLS settings for an upstream of the site (a server's own, else the
    /// site's), which `https://` URLs to the same place use.
    fn auth(
        &mut self,
        path: &str,
        a: &RawAuth,
        tls: &dyn Fn(&Upstream) -> Option<UpstreamTls>,
    ) -> Option<AuthSettings> {
        let urls = a.validate_url.items();
        if urls.is_empty() {
            self.problem(&format!("{path}.validate_url"), "needs at least one URL");
        }
        let validate: Option<Vec<Endpoint>> = match &a.validate_url {
            OneOrMore::One(url) => self
                .endpoint(&format!("{path}.validate_url"), url, tls)
                .map(|e| vec![e]),
            OneOrMore::More(urls) => urls
                .iter()
                .enumerate()
                .map(|(i, url)| self.endpoint(&format!("{path}.validate_url[{i}]"), url, tls))
                .collect::<Vec<_>>()
                .into_iter()
                .collect(),
        };
        let public_paths = self.paths(&format!("{path}.public_paths"), &a.public_paths);
        for (i, p) in public_paths.iter().enumerate() {
            let dotted = p
                .split('/')
                .any(|segment| segment == "." || segment == "..");
            if dotted || p.contains("//") || p.contains(['%', ';', '\\', '?', '#']) {
                self.problem(
                    &format!("{path}.public_paths[{i}]"),
                    format!("`{p}` is not a plain path: write it normalised, without `.`/`..` segments, `//`, escapes or parameters"),
                );
            }
        }
        let lockout = &a.lockout;
        for (key, value) in [
            ("failures", u64::from(lockout.failures)),
            ("address_failures", u64::from(lockout.address_failures)),
            ("window_seconds", lockout.window_seconds),
            ("block_seconds", lockout.block_seconds),
        ] {
            if value == 0 {
                self.problem(&format!("{path}.lockout.{key}"), "must be greater than 0");
            }
        }
        let jwt = match &a.jwt {
            Some(j) => {
                let at = format!("{path}.jwt");
                let keys = self.endpoint(&format!("{at}.keys_url"), &j.keys_url, tls);
                for (key, value) in [
                    ("poll_seconds", j.poll_seconds),
                    ("max_token_age_seconds", j.max_token_age_seconds),
                ] {
                    if value == 0 {
                        self.problem(&format!("{at}.{key}"), "must be greater than 0");
                    }
                }
                Some(JwtSettings {
                    keys: keys?,
                    poll: Duration::from_secs(j.poll_seconds),
                    issuer: j.issuer.clone(),
                    audience: j.audience.clone(),
                    max_token_age: Duration::from_secs(j.max_token_age_seconds),
                })
            }
            None => None,
        };
        let external = a
            .external
            .as_ref()
            .and_then(|e| self.external(&format!("{path}.external"), e, tls));
        if a.external.is_some() && external.is_none() {
            return None;
        }
        Some(AuthSettings {
            validate: validate?,
            cache_for: Duration::from_secs(a.cache_seconds),
            public_paths,
            lockout: Lockout {
                failures: lockout.failures,
                address_failures: lockout.address_failures,
                window: Duration::from_secs(lockout.window_seconds),
                block: Duration::from_secs(lockout.block_seconds),
            },
            jwt,
            external,
        })
    }

    fn external(
        &mut self,
        path: &str,
        e: &RawExternal,
        tls: &dyn Fn(&Upstream) -> Option<UpstreamTls>,
    ) -> Option<ExternalSettings> {
        let endpoint = self.endpoint(&format!("{path}.url"), &e.url, tls);
        if e.timeout_ms == 0 {
            self.problem(&format!("{path}.timeout_ms"), "must be greater than 0");
        }
        let mut send_headers = Vec::new();
        for (i, name) in e.send_headers.iter().enumerate() {
            let at = format!("{path}.send_headers[{i}]");
            let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
                self.problem(&at, format!("`{name}` is not a header name"));
                continue;
            };
            let header = header.as_str();
            if header.starts_with(&e.header_prefix.to_ascii_lowercase()) {
                self.problem(
                    &at,
                    format!("`{name}` has the header_prefix: clients' own are removed, only the check's answer sets it"),
                );
            } else if header.starts_with("x-forwarded-") || EXTERNAL_FRAMING.contains(&header) {
                self.problem(
                    &at,
                    format!("`{name}` cannot be passed on: ccedge writes it for the check itself"),
                );
            } else if !send_headers.iter().any(|h| h == header) {
                send_headers.push(header.to_string());
            }
        }
        let prefix = e.header_prefix.to_ascii_lowercase();
        let named = http::HeaderName::from_bytes(prefix.as_bytes()).is_ok();
        if !named || !prefix.ends_with('-') {
            self.problem(
                &format!("{path}.header_prefix"),
                format!(
                    "`{}` is not a header name prefix ending in `-`, such as X-Auth-",
                    e.header_prefix
                ),
            );
        } else if let Some(needed) = EXTERNAL_KEPT.iter().find(|h| h.starts_with(&prefix)) {
            self.problem(
                &format!("{path}.header_prefix"),
                format!(
                    "`{}` covers {needed}, which requests need: clients' own would be removed and the check could set it",
                    e.header_prefix
                ),
            );
        }
        Some(ExternalSettings {
            endpoint: endpoint?,
            timeout: Duration::from_millis(e.timeout_ms),
            send_headers,
            header_prefix: prefix,
            cache_for: Duration::from_secs(e.cache_seconds),
            public_paths: e.public_paths,
            on_error: e.on_error,
        })
    }

    /// An `http://` or `https://` URL ccedge fetches itself: its host resolved as an upstream's
    /// is; `https://` uses the TLS `tls` gives for that upstream (else verification against the
    /// system's roots).
    fn endpoint(
        &mut self,
        path: &str,
        text: &str,
        tls: &dyn Fn(&Upstream) -> Option<UpstreamTls>,
    ) -> Option<Endpoint> {
        let url = self.check(
            path,
            text.parse::<http::Uri>()
                .ok()
                .filter(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
                })
                .ok_or_else(|| format!("`{text}` is not an http:// or https:// URL with a host")),
        )?;
        let https = url.scheme_str() == Some("https");
        let authority = url.authority().expect("checked above");
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let host_port = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let upstream = self.upstream(path, &host_port)?;
        let tls = https.then(|| {
            tls(&upstream).unwrap_or(UpstreamTls {
                verify: true,
                ca: None,
                client: None,
                server_name: None,
            })
        });
        Some(Endpoint { url, upstream, tls })
    }

    fn substitution(&mut self, path: &str, s: &RawSubstitution) -> Substitution {
        self.url_path(&format!("{path}.path_prefix"), &s.path_prefix);
        for (i, r) in s.replace.iter().enumerate() {
            if r.from.is_empty() {
                self.problem(&format!("{path}.replace[{i}].from"), "must not be empty");
            }
        }
        Substitution {
            path_prefix: s.path_prefix.clone(),
            content_types: s
                .content_types
                .iter()
                .map(|t| t.trim().to_ascii_lowercase())
                .collect(),
            replace: s
                .replace
                .iter()
                .map(|r| (r.from.clone(), r.to.clone()))
                .collect(),
        }
    }
}

/// `url` with the password it holds, if any, hidden.
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
            let hidden = if credentials.contains(':') {
                ":***"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}
