//! The process: a validated configuration becomes a Pingora server with one service per
//! digital channel, one per Finesse site, and the admin listener.

use crate::config::tls::ServerTls;
use crate::config::{ClientPolicy, Limits};
use crate::config::{Config, FinesseService};
use crate::digital::{DigitalChannel, DigitalProxy};
use crate::edge::allow_list::AllowList;
use crate::edge::connections::{Accepting, ConnectionLimits, Limited};
use crate::edge::limits::{role_connections, DIGITAL_CONNECTIONS};
use crate::edge::proxy_protocol::ProxyProtocol;
use crate::finesse::proxymap::ProxyMapApp;
use crate::finesse::{FinesseProxy, FinesseSite};
use crate::observe::access_log::AccessLog;
use crate::observe::admin::{Admin, AdminProcess, StatusSource};
use crate::observe::lifecycle::{Lifecycle, PhaseWatch};
use crate::run::drain::ProcessDrain;
use crate::run::signals::{self, ReopenOnSignal};
use crate::state::handover::Handover;
use crate::state::secret::StateKey;
use crate::state::shared::{Shared, SharedService};
use crate::state::Continuity;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::listeners::ConnectionFilter;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::v2::server::default_h2_options;
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// Requests served on one client connection before it is closed (as nginx's keepalive_requests).
const KEEPALIVE_REQUESTS: u32 = 1000;

/// Idle upstream connections each service keeps per worker thread (Pingora's default: 128).
/// Fewer than the requests in flight, and a burst of answers closes connections that the next
/// burst of requests opens again: 160 HTTP/2 streams through one worker opened an upstream
/// connection for one request in five (bench/RESULTS.md, step e14). The pool only holds what
/// the load needed; upstreams close what stays idle past their keep-alive timeout.
const UPSTREAM_IDLE_CONNECTIONS: usize = 1024;

fn server_conf(config: &Config, daemon: bool) -> ServerConf {
    let s = &config.server;
    ServerConf {
        daemon,
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        // Each connection stays on the thread that accepted it (bench/RESULTS.md).
        work_stealing: false,
        upstream_keepalive_pool_size: UPSTREAM_IDLE_CONNECTIONS,
        ..ServerConf::default()
    }
}

/// What an operator should know about a valid configuration before it runs.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let unverified = |tls: Option<&crate::config::tls::UpstreamTls>| tls.is_some_and(|t| !t.verify);
    for d in &config.digital {
        if unverified(d.upstream_tls.as_ref()) {
            warnings.push(format!(
                "service {}: upstream_tls.verify is false: Cloud Connect certificates are not checked",
                d.name
            ));
        }
    }
    let hosts = config
        .digital
        .iter()
        .map(|d| (&d.name, &d.tls, vec![d.public.host.as_str()]))
        .chain(config.finesse.iter().map(|f| {
            let hosts = f.servers.iter().map(|s| s.public.host.as_str()).collect();
            (&f.name, &f.tls, hosts)
        }));
    for (name, tls, hosts) in hosts {
        let Some(tls) = tls.as_ref().filter(|t| t.certificates.len() > 1) else {
            continue;
        };
        for host in hosts {
            if host.parse::<std::net::IpAddr>().is_err() && !tls.names(host) {
                warnings.push(format!(
                    "service {name}: no certificate in tls.certificates names {host}: clients asking for it get the first, {}",
                    tls.certificates[0].cert.display()
                ));
            }
        }
    }
    if let Some(shared) = &config.server.shared_state {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&shared.key_file).map(|m| m.permissions().mode());
        if mode.is_ok_and(|m| m & 0o007 != 0) {
            warnings.push(format!(
                "server.shared_state.key_file {} may be read by every user of this machine: \
                 chmod o-rwx it (it keys the hashes of credentials)",
                shared.key_file.display()
            ));
        }
        if shared.tls.is_none()
            && !shared.shown_url.contains("127.0.0.1")
            && !shared.shown_url.contains("localhost")
        {
            warnings.push(format!(
                "server.shared_state.redis_url {} is not rediss://: lockouts, verdicts and user \
                 names cross the network in clear",
                shared.shown_url
            ));
        }
    }
    for f in &config.finesse {
        if let Some(auth) = &f.auth {
            let plain = |e: &crate::config::Endpoint| e.tls.is_none();
            // Credentials sent in clear to this machine itself (a validator beside ccedge, as in
            // the demo) cross no network.
            let beside = |e: &crate::config::Endpoint| e.upstream.addr.ip().is_loopback();
            if auth.validate.iter().any(|e| plain(e) && !beside(e)) {
                warnings.push(format!(
                    "service {}: auth.validate_url is plain http: agents' credentials cross the network in clear",
                    f.name
                ));
            }
            if auth.jwt.as_ref().is_some_and(|j| plain(&j.keys)) {
                warnings.push(format!(
                    "service {}: auth.jwt.keys_url is plain http: whoever can change the keys on the way can sign tokens",
                    f.name
                ));
            }
            if let Some(external) = &auth.external {
                if plain(&external.endpoint) && !beside(&external.endpoint) {
                    warnings.push(format!(
                        "service {}: auth.external.url is plain http: whoever can change its answers on the way decides who passes",
                        f.name
                    ));
                }
                if external.on_error == crate::config::OnError::Allow {
                    warnings.push(format!(
                        "service {}: auth.external.on_error is allow: while the check fails or is slow, every request it should judge passes",
                        f.name
                    ));
                }
            }
            if auth.public_paths.iter().any(|p| p == "/") {
                warnings.push(format!(
                    "service {}: auth.public_paths contains `/`: every path is public, nothing is authenticated",
                    f.name
                ));
            }
        }
        let servers = f.servers.iter().map(|s| s.upstream_tls.as_ref());
        if unverified(f.upstream_tls.as_ref()) || servers.into_iter().any(unverified) {
            warnings.push(format!(
                "service {}: upstream_tls.verify is false: internal server certificates are not checked",
                f.name
            ));
        }
    }
    warnings
}

/// Each service's listener certificates, for `-t`: the names each covers and its expiry.
pub fn certificates(config: &Config) -> Vec<String> {
    let now = chrono::Utc::now().timestamp();
    let mut lines = Vec::new();
    for (name, tls) in listener_tls(config) {
        let several = tls.certificates.len() > 1;
        for (i, c) in tls.certificates.iter().enumerate() {
            let end = chrono::DateTime::from_timestamp(c.leaf.not_after, 0)
                .map_or_else(String::new, |t| t.format("%Y-%m-%d").to_string());
            let days = (c.leaf.not_after - now).div_euclid(86_400);
            let default = if several && i == 0 { " (default)" } else { "" };
            lines.push(format!(
                "service {name}: certificate {}{default}: names {}; expires {end} ({days} days)",
                c.cert.display(),
                if c.names.is_empty() {
                    "nothing (no DNS subjectAltName)".to_string()
                } else {
                    c.names.join(", ")
                },
            ));
        }
    }
    lines
}

/// The services with a TLS listener, and their public host names.
fn listener_tls(config: &Config) -> Vec<(&str, &ServerTls)> {
    let digital = config
        .digital
        .iter()
        .filter_map(|d| d.tls.as_ref().map(|t| (d.name.as_str(), t)));
    let finesse = config
        .finesse
        .iter()
        .filter_map(|f| f.tls.as_ref().map(|t| (f.name.as_str(), t)));
    digital.chain(finesse).collect()
}

/// Everything that can still fail before binding: listener TLS settings.
pub fn check(config: &Config) -> Result<(), String> {
    for (name, tls) in listener_tls(config) {
        tls.settings()
            .map_err(|e| format!("service {name}: TLS settings rejected: {e}"))?;
    }
    Ok(())
}

/// Runs until a signal stops the server. Returns after a graceful stop.
pub fn run(config: Config, daemon: bool, upgrade: bool) -> Result<(), String> {
    let opt = Opt {
        upgrade,
        daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config, daemon));
    if let Some(ready) = std::env::var_os(crate::run::supervise::READY_FILE_ENV) {
        report_running(&server, PathBuf::from(ready));
    }
    // Everything that can fail is built before bootstrap, which in an upgrade takes over the old
    // process's sockets: past that point the old process no longer accepts connections.
    let conf = server.configuration.clone();
    let log = Arc::new(AccessLog::open(&config.server.access_log)?);
    let lifecycle = Lifecycle::new();
    server.add_service(background_service(
        "lifecycle",
        PhaseWatch::new(
            lifecycle.clone(),
            server.watch_execution_phase(),
            (config.server.pid_file.clone(), upgrade),
        ),
    ));
    signals::hold_reopen_signal()?;
    server.add_service(background_service(
        "access log reopen",
        ReopenOnSignal(log.clone()),
    ));
    let mut sources: Vec<Arc<dyn StatusSource>> = Vec::new();
    let shared_state = config.server.shared_state.as_ref();
    let key = Arc::new(match shared_state {
        Some(settings) => StateKey::from_bytes(&settings.key.0),
        None => StateKey::beside(&config.server.pid_file),
    });
    let handover = Handover::new(&config.server.pid_file, key.fingerprint(), upgrade);
    let shared = shared_state
        .map(|settings| Shared::new(settings, key.fingerprint()))
        .transpose()?;
    let continuity = Continuity {
        key,
        arrival: handover.arrival(),
        shared: shared.clone(),
    };

    for d in &config.digital {
        let health_state = PathBuf::from(format!("{}.{}.health", config.server.pid_file, d.name));
        let (channel, checks) = DigitalChannel::new(
            d,
            (log.clone(), lifecycle.clone()),
            health_state,
            &continuity,
        );
        let channel = Arc::new(channel);
        sources.push(channel.clone());
        let connections = ConnectionLimits::new(
            &d.name,
            vec![(
                d.listen.port(),
                d.limits
                    .max_connections_per_ip
                    .unwrap_or(DIGITAL_CONNECTIONS),
            )],
            &d.limits.connections_by_cidr,
            &d.clients.trusted_proxies,
            d.limits.ipv6_prefix,
        );
        let service = DigitalProxy::new(channel);
        let limited = (connections, lifecycle.clone());
        let mut service = proxy_service(&conf, &d.name, service, &d.limits, limited);
        guard(&mut service, &d.name, &d.clients, &lifecycle);
        let checks = server.add_service(checks);
        let proxy = server.add_service(listen(service, &[d.listen], d.tls.as_ref())?);
        proxy.add_dependency(&checks);
        log::info!(
            "service {}: digital channel on {} -> {} / {}",
            d.name,
            d.listen,
            d.publisher.authority,
            d.subscriber.authority
        );
    }
    for f in &config.finesse {
        let site = Arc::new(FinesseSite::new(
            f,
            (log.clone(), lifecycle.clone()),
            &continuity,
        ));
        sources.push(site.clone());
        if let Some(keep) = site.carried_state() {
            handover.add(site.clone(), keep);
        }
        if let (Some(shared), Some(share)) = (&shared, site.share()) {
            shared.listen(&share, site.clone());
        }
        if let Some(refresh) = site.key_refresh() {
            let name = format!("{} signing keys", f.name);
            server.add_service(background_service(&name, refresh));
        }
        let per_port = f
            .listen_ports()
            .into_iter()
            .map(|port| {
                let roles = f.servers.iter().filter(|s| s.listen_port == port);
                let default = || role_connections(roles.map(|s| s.role));
                (
                    port,
                    f.limits.max_connections_per_ip.unwrap_or_else(default),
                )
            })
            .collect();
        let connections = ConnectionLimits::new(
            &f.name,
            per_port,
            &f.limits.connections_by_cidr,
            &f.clients.trusted_proxies,
            f.limits.ipv6_prefix,
        );
        let service = FinesseProxy::new(site);
        let limited = (connections, lifecycle.clone());
        let mut service = proxy_service(&conf, &f.name, service, &f.limits, limited);
        guard(&mut service, &f.name, &f.clients, &lifecycle);
        server.add_service(listen(service, &finesse_addrs(f), f.tls.as_ref())?);
        if let Some(map) = &f.proxy_map {
            let app = ProxyMapApp::new(&f.name, &map.path, &f.servers, log.clone());
            let mut service =
                Service::new(format!("{} proxy map", f.name), HttpServer::new_app(app));
            service.threads = Some(1);
            service.handshake_timeout = Some(f.limits.client_header_timeout);
            // Polled by the internal servers directly: no PROXY header, the TCP peer counts.
            if let Some(filter) = AllowList::new(&f.name, &f.clients.allow, "client_allow") {
                service.set_connection_filter(Arc::new(filter));
            }
            server.add_service(listen(service, &[map.listen], f.tls.as_ref())?);
            let scheme = if f.tls.is_some() { "https" } else { "http" };
            log::info!(
                "service {}: proxy map at {scheme}://{}{}",
                f.name,
                map.listen,
                map.path
            );
        }
        log::info!(
            "service {}: finesse site with {} server(s) on port(s) {:?}",
            f.name,
            f.servers.len(),
            f.listen_ports()
        );
    }
    if let Some(shared) = shared {
        log::info!(
            "shared state: lockouts, verdicts, rate counters and admin actions shared through Redis at {}",
            config.server.shared_state.as_ref().map_or("", |s| s.shown_url.as_str())
        );
        server.add_service(background_service("shared state", SharedService(shared)));
    }
    if let Some(collect) = handover.collector() {
        server.add_service(background_service("state hand-over", collect));
    }
    let drained_sources = sources.clone();
    if let Some(settings) = &config.server.admin {
        let addr = settings.listen;
        match &settings.token {
            None if !addr.ip().is_loopback() => log::warn!(
                "admin listener on {addr} without server.admin.token: anyone who reaches it can \
                 read /status, purge the caches and lift lockouts; set a token"
            ),
            Some(token) if token.0.len() < 16 => log::warn!(
                "server.admin.token is {} characters long: use at least 16 random ones \
                 (openssl rand -hex 32)",
                token.0.len()
            ),
            _ => {}
        }
        let process = AdminProcess {
            config_file: config.file.display().to_string(),
            summary: crate::config::summary::summary(&config),
            lifecycle: lifecycle.clone(),
            pid_file: config.server.pid_file.clone(),
        };
        let (admin, sampler) = Admin::new(process, sources, settings);
        let mut service = Service::new("admin".to_string(), HttpServer::new_app(admin));
        service.threads = Some(1);
        service.add_tcp(&addr.to_string());
        server.add_service(service);
        server.add_service(background_service("traffic sampler", sampler));
        log::info!("admin listener on http://{addr}/ (status page; /healthz, /status, /metrics)");
    }
    let drain = ProcessDrain {
        lifecycle: lifecycle.clone(),
        websocket_drain: std::time::Duration::from_secs(config.server.websocket_drain_seconds),
        handshake_timeout: config
            .digital
            .iter()
            .map(|d| d.limits.client_header_timeout)
            .chain(
                config
                    .finesse
                    .iter()
                    .map(|f| f.limits.client_header_timeout),
            )
            .max()
            .unwrap_or_default(),
        phases: server.watch_execution_phase(),
        pid_file: config.server.pid_file.clone(),
        sources: drained_sources,
        handover,
    };
    server.bootstrap();
    server.run(RunArgs {
        drain: Some(Box::new(drain)),
        ..RunArgs::default()
    });
    log.close();
    Ok(())
}

/// Writes this process's pid to `ready` once the server runs (for `ccedge supervise`).
fn report_running(server: &Server, ready: PathBuf) {
    let mut phases = server.watch_execution_phase();
    std::thread::spawn(move || loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::Running) => {
                let pid = std::process::id().to_string();
                if let Err(e) = crate::observe::own_files::replace(&ready, pid.as_bytes()) {
                    log::error!("cannot report readiness in {}: {e}", ready.display());
                }
                return;
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    });
}

fn finesse_addrs(f: &FinesseService) -> Vec<SocketAddr> {
    f.listen_ports()
        .into_iter()
        .map(|port| SocketAddr::new(f.bind, port))
        .collect()
}

/// A proxy service: `limits` bound the handshake and each request header's arrival, HTTP/2
/// streams per connection and, through `connections`, open connections per client address;
/// its connections follow the process's `lifecycle`.
fn proxy_service<P>(
    conf: &Arc<ServerConf>,
    name: &str,
    proxy: P,
    limits: &Limits,
    (connections, lifecycle): (Arc<ConnectionLimits>, Arc<Lifecycle>),
) -> Service<Limited<HttpProxy<P>>>
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync + 'static,
{
    let mut options = HttpServerOptions::default();
    options.keepalive_request_limit = Some(KEEPALIVE_REQUESTS);
    options.header_read_timeout = Some(limits.client_header_timeout);
    options.h2_idle_timeout = Some(limits.keepalive_timeout);
    let mut h2 = default_h2_options();
    h2.max_concurrent_streams(limits.max_streams_per_connection);
    let mut proxy = pingora::proxy::http_proxy(conf, proxy);
    proxy.server_options = Some(options);
    proxy.h2_options = Some(h2);
    let mut service = Service::new(
        name.to_string(),
        Limited::new(proxy, connections, lifecycle),
    );
    service.handshake_timeout = Some(limits.client_header_timeout);
    service
}

/// The read buffer of each TLS client connection. Pingora's default (64 KiB) stays allocated for
/// as long as the connection lives, idle WebSockets included; larger reads (request bodies)
/// bypass the buffer. 4 KiB halved the memory of an idle WebSocket (120 -> 60 KiB) with no loss
/// of throughput (bench/RESULTS.md, step e7). It spares TLS a system call per record header;
/// plain HTTP reads its headers and bodies into buffers of their own, so a plain connection
/// reads without one (step e11).
const TLS_CLIENT_READ_BUFFER: usize = 4 * 1024;

/// Who may connect to a service's listeners: addresses in `client_allow`, checked at accept;
/// with `proxy_protocol`, only the balancers in `trusted_proxies`, whose PROXY header is read
/// first and names the client `client_allow` is checked against. Every accepted connection is
/// counted for the process's lifecycle (a stopping process waits for its handshake).
fn guard<A>(
    service: &mut Service<A>,
    name: &str,
    clients: &ClientPolicy,
    lifecycle: &Arc<Lifecycle>,
) {
    let filter: Option<Arc<dyn ConnectionFilter>> = if clients.proxy_protocol {
        service
            .endpoints()
            .set_pre_tls_callback(Arc::new(ProxyProtocol::new(name, &clients.allow)));
        AllowList::new(name, &clients.trusted_proxies, "trusted_proxies")
            .map(|f| Arc::new(f) as Arc<dyn ConnectionFilter>)
    } else {
        AllowList::new(name, &clients.allow, "client_allow")
            .map(|f| Arc::new(f) as Arc<dyn ConnectionFilter>)
    };
    service.set_connection_filter(Arc::new(Accepting::new(filter, lifecycle.clone())));
}

fn listen<A: Send + Sync + 'static>(
    mut service: Service<A>,
    addrs: &[SocketAddr],
    tls: Option<&ServerTls>,
) -> Result<Service<A>, String> {
    for addr in addrs {
        let read_buffer = if tls.is_some() {
            TLS_CLIENT_READ_BUFFER
        } else {
            0
        };
        let buffers = L4BufferSettings::default().read(read_buffer);
        let mut listener = ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers);
        if let Some(tls) = tls {
            let settings = tls
                .settings()
                .map_err(|e| format!("TLS settings for {addr} rejected: {e}"))?;
            listener = listener.tls(settings);
        }
        service.add_listener(listener);
    }
    Ok(service)
}
