//! The internal servers as ccedge reaches them: the name resolves, TCP connects, the TLS
//! handshake succeeds with the configured trust and client certificate, the certificate names
//! the server and is not about to expire, and an HTTP probe sent the way ccedge sends requests
//! gets the answer the server should give.

use super::names;
use super::report::{self, Check};
use crate::config::tls::UpstreamTls;
use crate::config::{Authority, Limits, Role, Upstream};
use crate::edge::{fetch, upstream};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use std::time::Duration;

/// What a probe expects of the server.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Cloud Connect's ping: 200.
    Ping,
    /// A Finesse, IdS, CUIC or other server: any answer but 400, which means the public host is
    /// not one of its allowed reverse-proxy hosts.
    AcceptsHost(Role),
    /// `auth.validate_url` without credentials: 401.
    Refuses,
    /// `auth.jwt.keys_url`: 200 and a PEM key or JWKS document.
    Keys,
    /// `auth.external.url`: a verdict (401 or 403; 2xx lets everyone in) on a request naming
    /// nobody, described as ccedge describes requests to `public`, within `timeout`.
    Rules {
        public: String,
        https: bool,
        timeout: Duration,
    },
}

/// One internal server to check.
#[derive(Debug, Clone)]
pub struct Target {
    /// Names it in the report, for example `digital cc publisher`.
    pub label: String,
    pub upstream: Upstream,
    pub tls: Option<UpstreamTls>,
    pub limits: Limits,
    /// The probe request: path, and the `Host` ccedge sends.
    pub path: String,
    pub host: String,
    /// The public port, for `X-Forwarded-Port`; `None` for ccedge's own requests.
    pub public_port: Option<u16>,
    pub expect: Expect,
}

/// Every check of `target`, each stage bounded by `within`.
pub async fn check(target: Target, within: Duration, now: i64) -> Vec<Check> {
    let mut checks = Vec::new();
    let name = &target.upstream.authority;
    let what = |stage: &str| format!("{} {name}: {stage}", target.label);
    // The name, resolved now (the configuration resolved it at load).
    let addr = match tokio::time::timeout(
        within,
        tokio::net::lookup_host((name.host.as_str(), name.port)),
    )
    .await
    {
        Ok(Ok(mut addrs)) => match addrs.next() {
            Some(addr) => addr,
            None => {
                checks.push(Check::fail(
                    what("resolve"),
                    "no address",
                    "fix the name in DNS or /etc/hosts",
                ));
                return checks;
            }
        },
        Ok(Err(e)) => {
            checks.push(Check::fail(
                what("resolve"),
                format!("{e}"),
                "fix the name in DNS or /etc/hosts, or configure the address",
            ));
            return checks;
        }
        Err(_) => {
            checks.push(Check::fail(
                what("resolve"),
                format!("no answer within {} s", within.as_secs()),
                "check this host's DNS servers",
            ));
            return checks;
        }
    };
    checks.push(Check::ok(what("resolve"), addr.to_string()));
    let connect_within = within.min(target.limits.upstream_connect_timeout);
    let tcp = match tokio::time::timeout(connect_within, tokio::net::TcpStream::connect(addr)).await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            checks.push(Check::fail(
                what("connect"),
                format!("{addr}: {e}"),
                "the server is down or a firewall blocks ccedge: check the service on it and the route from this host",
            ));
            return checks;
        }
        Err(_) => {
            checks.push(Check::fail(
                what("connect"),
                format!(
                    "{addr}: no connection within {} ms",
                    connect_within.as_millis()
                ),
                "a firewall drops the connection, or the server is unreachable from this host",
            ));
            return checks;
        }
    };
    checks.push(Check::ok(
        what("connect"),
        format!("{addr} accepts connections"),
    ));
    if let Some(tls) = &target.tls {
        let shaken = tokio::time::timeout(within, handshake(tcp, tls, name)).await;
        match shaken {
            Ok(Ok(Shaken {
                ended: Some(why), ..
            })) => {
                checks.push(refused_after_handshake(what("TLS"), &why, tls));
                return checks;
            }
            Ok(Ok(facts)) => checks.extend(certificate_checks(&what, tls, name, &facts, now)),
            Ok(Err(e)) => {
                checks.push(tls_failure(what("TLS"), &e, tls));
                return checks;
            }
            Err(_) => {
                checks.push(Check::fail(
                    what("TLS"),
                    format!("no handshake within {} s", within.as_secs()),
                    "the port may not speak TLS: check the upstream's port and upstream_tls",
                ));
                return checks;
            }
        }
    } else {
        drop(tcp);
    }
    if checks.iter().any(|c| c.status == report::Status::Fail) {
        // ccedge could not talk to this server either; the probe would only repeat why.
        return checks;
    }
    checks.push(probe(&target, within, &what("HTTP")).await);
    checks
}

/// What the handshake showed.
struct Shaken {
    /// The leaf certificate.
    leaf: Option<openssl::x509::X509>,
    /// The chain verification against the configured trust.
    verified: Result<(), String>,
    /// Why the server ended the connection right after the handshake, if it did: with TLS 1.3
    /// a server refuses a client certificate (or its absence) only then.
    ended: Option<String>,
}

/// How long the server is watched after the handshake for a late refusal.
const AFTER_HANDSHAKE: Duration = Duration::from_millis(500);

async fn handshake(
    tcp: tokio::net::TcpStream,
    tls: &UpstreamTls,
    name: &Authority,
) -> Result<Shaken, String> {
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    if let Some(ca) = &tls.ca {
        let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
        for cert in ca.iter() {
            store.add_cert(cert.clone()).map_err(|e| e.to_string())?;
        }
        builder
            .set_verify_cert_store(store.build())
            .map_err(|e| e.to_string())?;
    }
    if let Some(client) = &tls.client {
        builder
            .set_certificate(client.leaf())
            .and_then(|_| builder.set_private_key(client.key()))
            .map_err(|e| e.to_string())?;
        for extra in client.intermediates() {
            builder
                .add_extra_chain_cert(extra.clone())
                .map_err(|e| e.to_string())?;
        }
    }
    // Verified below, so that a failed verification still shows the certificate.
    builder.set_verify(SslVerifyMode::NONE);
    builder
        .set_alpn_protos(b"\x08http/1.1")
        .map_err(|e| e.to_string())?;
    let sni = tls.server_name.as_deref().unwrap_or(&name.host);
    let mut config = builder.build().configure().map_err(|e| e.to_string())?;
    config.set_verify_hostname(false);
    if sni.parse::<std::net::IpAddr>().is_ok() {
        config.set_use_server_name_indication(false);
    }
    let ssl = config.into_ssl(sni).map_err(|e| e.to_string())?;
    let mut stream =
        pingora::tls::tokio_ssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    std::pin::Pin::new(&mut stream)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    let ended = match tokio::time::timeout(
        AFTER_HANDSHAKE,
        tokio::io::AsyncReadExt::read(&mut stream, &mut byte),
    )
    .await
    {
        Err(_) => None,
        Ok(Ok(0)) => Some("the server closed the connection".to_string()),
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
    };
    let ssl = stream.ssl();
    let verify = ssl.verify_result();
    Ok(Shaken {
        ended,
        leaf: ssl.peer_certificate(),
        verified: if verify == openssl::x509::X509VerifyResult::OK {
            Ok(())
        } else {
            Err(verify.error_string().to_string())
        },
    })
}

fn certificate_checks(
    what: &dyn Fn(&str) -> String,
    tls: &UpstreamTls,
    name: &Authority,
    facts: &Shaken,
    now: i64,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some(leaf) = &facts.leaf else {
        checks.push(Check::fail(
            what("TLS"),
            "the server presented no certificate",
            "configure a certificate on the server",
        ));
        return checks;
    };
    let subject = super::subject(leaf);
    let trust = if tls.ca.is_some() {
        "the configured ca"
    } else {
        "the system's trust store"
    };
    match (&facts.verified, tls.verify) {
        (Ok(()), _) => checks.push(Check::ok(
            what("TLS"),
            format!("handshake done; {subject} is trusted by {trust}"),
        )),
        (Err(why), true) => checks.push(Check::fail(
            what("TLS"),
            format!("{subject} is not trusted by {trust}: {why}"),
            "set upstream_tls.ca to the CA that issued the server's certificate (or have the server present its full chain)",
        )),
        (Err(why), false) => checks.push(Check::warn(
            what("TLS"),
            format!("{subject} is not trusted ({why}), and upstream_tls.verify is false"),
            "turn verification on with upstream_tls.ca set to the server's CA",
        )),
    }
    let expected = tls.server_name.as_deref().unwrap_or(&name.host);
    if names::upstream_covers(leaf, expected) {
        checks.push(Check::ok(
            what("certificate name"),
            format!("{subject} names {expected}"),
        ));
    } else {
        let found = format!(
            "{subject} names {}, not {expected}",
            names::dns_names(leaf).join(", ")
        );
        let advice = "have the server's certificate reissued with this name, or set upstream_tls.server_name to a name it carries";
        checks.push(if tls.verify {
            Check::fail(what("certificate name"), found, advice)
        } else {
            Check::warn(what("certificate name"), found, advice)
        });
    }
    checks.push(report::expiry(
        what("certificate expiry"),
        &subject,
        super::not_after(leaf),
        now,
    ));
    checks
}

/// What to do when the server wants a client certificate ccedge does not present.
const GIVE_CLIENT_CERT: &str = "set upstream_tls.client_cert and client_key, and add the CA that issued them to the server's trust store";
/// What to do when the server refuses the one ccedge presents.
const TRUST_CLIENT_CERT: &str = "import the CA that issued ccedge's client certificate into the server's trust store (the certificates were not exchanged)";

/// A server that ended the connection right after a completed handshake, before any request:
/// with TLS 1.3 that is how a refused client certificate (or a missing one) shows, with an
/// alert naming it when the server sends one.
fn refused_after_handshake(check: String, why: &str, tls: &UpstreamTls) -> Check {
    if mtls_alert(why) {
        return tls_failure(check, why, tls);
    }
    let (found, advice) = match &tls.client {
        None => (
            format!("the server ended the connection right after the handshake ({why}): it probably requires a client certificate (mTLS), and ccedge has none"),
            GIVE_CLIENT_CERT,
        ),
        Some(_) => (
            format!("the server ended the connection right after the handshake ({why}): it probably did not accept ccedge's client certificate (mTLS)"),
            TRUST_CLIENT_CERT,
        ),
    };
    Check::fail(check, found, advice)
}

/// Whether a TLS error names a refused or missing client certificate.
fn mtls_alert(error: &str) -> bool {
    let lower = error.to_ascii_lowercase();
    [
        "certificate required",
        "unknown ca",
        "bad certificate",
        "certificate unknown",
        "access denied",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

/// A failed handshake, explained: most often mutual TLS.
fn tls_failure(check: String, error: &str, tls: &UpstreamTls) -> Check {
    let lower = error.to_ascii_lowercase();
    let alert = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    if tls.client.is_none() && alert(&["certificate required", "handshake failure"]) {
        Check::fail(
            check,
            format!("mTLS refused: the server requires a client certificate and ccedge has none ({error})"),
            GIVE_CLIENT_CERT,
        )
    } else if tls.client.is_some()
        && alert(&[
            "unknown ca",
            "bad certificate",
            "certificate unknown",
            "certificate required",
            "access denied",
            "handshake failure",
        ])
    {
        Check::fail(
            check,
            format!(
                "mTLS refused: the server did not accept ccedge's client certificate ({error})"
            ),
            TRUST_CLIENT_CERT,
        )
    } else {
        Check::fail(
            check,
            format!("handshake failed: {error}"),
            "check that the port speaks TLS and that upstream_tls matches the server",
        )
    }
}

/// The HTTP probe, over a connection made exactly as ccedge makes them.
async fn probe(target: &Target, within: Duration, check: &str) -> Check {
    let mut request = match RequestHeader::build("GET", target.path.as_bytes(), None) {
        Ok(r) => r,
        Err(e) => return Check::fail(check, e.to_string(), "report this as a ccedge bug"),
    };
    let tracking = crate::edge::headers::tracking_id(&http::HeaderMap::new())
        .to_str()
        .unwrap_or_default()
        .to_string();
    let mut headers: Vec<(&str, String)> = vec![
        ("Host", target.host.clone()),
        (
            "User-Agent",
            format!("ccedge-doctor/{}", env!("CARGO_PKG_VERSION")),
        ),
        ("TrackingID", tracking),
    ];
    if let Expect::Rules { public, https, .. } = &target.expect {
        let proto = if *https { "https" } else { "http" };
        headers.extend([
            ("X-Forwarded-Method", "GET".to_string()),
            ("X-Forwarded-Proto", proto.to_string()),
            ("X-Forwarded-Host", public.clone()),
            ("X-Forwarded-Uri", "/".to_string()),
            ("X-Forwarded-For", "127.0.0.1".to_string()),
        ]);
    }
    if let Some(port) = target.public_port {
        headers.extend([
            ("X-Forwarded-For", "127.0.0.1".to_string()),
            ("X-Forwarded-Proto", "https".to_string()),
            ("X-Forwarded-Port", port.to_string()),
            ("X-Real-IP", "127.0.0.1".to_string()),
            ("X-Client-IP", "127.0.0.1".to_string()),
        ]);
    }
    for (name, value) in headers {
        if let Err(e) = request.insert_header(name, value) {
            return Check::fail(check, e.to_string(), "report this as a ccedge bug");
        }
    }
    let peer = upstream::peer(
        "doctor",
        &target.upstream,
        target.tls.as_ref(),
        &target.limits,
    );
    let connector = Connector::new(None);
    let sent = format!("GET {} with Host {}", target.path, target.host);
    let started = std::time::Instant::now();
    let answer = fetch::send(&connector, &peer, request, within, 1 << 20, false).await;
    let took = started.elapsed();
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            let text = e.to_string();
            if let (true, Some(tls)) = (mtls_alert(&text), &target.tls) {
                return tls_failure(check.to_string(), &text, tls);
            }
            use pingora::ErrorType::*;
            let advice = match e.etype() {
                ReadTimedout | WriteTimedout => "the server accepts connections but does not answer HTTP in time: check the service and the upstream's port",
                ConnectRefused | ConnectTimedout | ConnectError | ConnectNoRoute => "the server stopped accepting connections during the check: check the service",
                _ => "the server accepted the connection but did not answer the request: check the service, the upstream's port and whether it speaks HTTP (or TLS)",
            };
            return Check::fail(check, format!("{sent}: {text}"), advice);
        }
    };
    let status = answer.status;
    match &target.expect {
        Expect::Ping if status == 200 => Check::ok(check, format!("{sent}: 200")),
        Expect::Ping => Check::fail(
            check,
            format!("{sent}: {status}"),
            match status {
                400 | 403 => format!(
                    "Cloud Connect refuses this proxy: add {} to its allowed reverse-proxy hosts and this host's address to its allow list, and exchange the mTLS certificates",
                    host_only(&target.host)
                ),
                _ => "the Cloud Connect service is not healthy: check it on the node".to_string(),
            },
        ),
        Expect::AcceptsHost(role) if status == 400 => Check::fail(
            check,
            format!(
                "{sent}: 400 -- this server does not list {} as an allowed reverse-proxy host",
                target.host
            ),
            format!(
                "on the {} server's CLI: utils system reverse-proxy allowed-hosts add {}",
                role_name(*role),
                host_only(&target.host)
            ),
        ),
        Expect::AcceptsHost(_) if status >= 500 => Check::warn(
            check,
            format!("{sent}: {status}"),
            "the server answers with an error: check its services",
        ),
        Expect::AcceptsHost(_) => Check::ok(check, format!("{sent}: {status}")),
        Expect::Refuses if status == 401 => {
            Check::ok(check, format!("{sent} without credentials: 401"))
        }
        Expect::Refuses if (200..300).contains(&status) => Check::fail(
            check,
            format!("{sent} without credentials: {status}"),
            "validate_url accepts requests without credentials, so every agent would pass: point it at a resource that needs them (for example /finesse/api/UserAuth)",
        ),
        Expect::Refuses => Check::warn(
            check,
            format!("{sent} without credentials: {status}, not 401"),
            "check that validate_url names a resource that answers 401 to wrong credentials; other answers make ccedge answer 503",
        ),
        Expect::Rules { timeout, .. } if took > *timeout => Check::fail(
            check,
            format!(
                "{sent}: {status} after {} ms, longer than timeout_ms ({} ms)",
                took.as_millis(),
                timeout.as_millis()
            ),
            "every request would wait for it and then meet on_error: make the check faster or raise timeout_ms",
        ),
        Expect::Rules { .. } if status == 401 || status == 403 => Check::ok(
            check,
            format!("{sent} naming no user: {status}, a verdict"),
        ),
        Expect::Rules { .. } if (200..300).contains(&status) => Check::warn(
            check,
            format!("{sent} naming no user: {status}, allowed"),
            "the check lets in a request that names no user: make sure it judges X-Forwarded-User",
        ),
        Expect::Rules { .. } => Check::fail(
            check,
            format!("{sent}: {status}, not a verdict"),
            "the external check must answer 2xx (allow), 401 or 403 (refuse); ccedge takes anything else as an error, for which on_error decides",
        ),
        Expect::Keys if status != 200 => Check::fail(
            check,
            format!("{sent}: {status}"),
            "keys_url must answer 200 with the identity service's signing keys (PEM or JWKS)",
        ),
        Expect::Keys => match crate::finesse::signing_keys_in(&answer.body) {
            Ok(n) => Check::ok(check, format!("{sent}: 200, {n} signing key(s)")),
            Err(why) => Check::fail(
                check,
                format!("{sent}: 200, but {why}"),
                "keys_url must name the identity service's signing keys (PEM public key or JWKS)",
            ),
        },
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Finesse => "Finesse",
        Role::Ids => "IdS",
        Role::Cuic => "CUIC",
        Role::Livedata => "LiveData",
        Role::Chat => "chat",
        Role::Other => "internal",
    }
}

fn host_only(authority: &str) -> &str {
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// The path a server of `role` is probed with: a resource it serves without credentials.
pub fn probe_path(role: Role) -> &'static str {
    match role {
        Role::Finesse => "/finesse/api/SystemInfo",
        Role::Ids => "/ids/v1/keys",
        Role::Cuic => "/cuic/",
        Role::Livedata | Role::Chat | Role::Other => "/",
    }
}
