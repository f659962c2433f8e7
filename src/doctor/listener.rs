//! The certificates ccedge presents to clients: each listener's chain, the names it covers, its
//! expiry; and whether every line of a proxy map is served by a listener of the configuration.

use super::names;
use super::report::{self, Check};
use crate::config::tls::{ListenerCert, ServerTls};
use crate::config::{Authority, FinesseService};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509StoreContext, X509VerifyResult, X509};
use std::time::Duration;

/// The checks of a listener's certificates: each loads with its key, has a complete chain and
/// is not about to expire; and each of `hosts` gets, by its SNI name, a certificate naming it.
pub fn certificate(service: &str, tls: &ServerTls, hosts: &[&str], now: i64) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut leaves = Vec::new();
    for listener in &tls.certificates {
        let (more, leaf) = one_certificate(service, listener, now);
        checks.extend(more);
        leaves.push(leaf);
    }
    for host in hosts {
        let check = format!("listener {service}: certificate covers {host}");
        let chosen = tls.for_name(Some(host));
        let index = tls
            .certificates
            .iter()
            .position(|c| std::ptr::eq(c, chosen))
            .unwrap_or_default();
        let Some(leaf) = &leaves[index] else {
            continue;
        };
        let subject = super::subject(leaf);
        let file = chosen.cert.display();
        if names::covers(leaf, host) {
            checks.push(Check::ok(check, format!("named by {subject} ({file})")));
        } else if tls.certificates.len() > 1 {
            checks.push(Check::fail(
                check,
                format!("no certificate names it: a client asking for {host} gets the first, {subject} ({file})"),
                format!("add a certificate naming {host} (or a wildcard covering it) to tls.certificates"),
            ));
        } else {
            checks.push(Check::fail(
                check,
                format!(
                    "{subject} names only {}",
                    names::dns_names(leaf).join(", ")
                ),
                format!("have the certificate reissued with {host} in its subjectAltName (or a wildcard covering it)"),
            ));
        }
    }
    checks
}

/// One certificate's checks, and its leaf when the file reads.
fn one_certificate(service: &str, tls: &ListenerCert, now: i64) -> (Vec<Check>, Option<X509>) {
    let what = format!("listener {service}: certificate {}", tls.cert.display());
    let chain = match std::fs::read(&tls.cert)
        .map_err(|e| e.to_string())
        .and_then(|pem| X509::stack_from_pem(&pem).map_err(|e| e.to_string()))
    {
        Ok(chain) if !chain.is_empty() => chain,
        Ok(_) => {
            let fail = Check::fail(
                what,
                "holds no certificate",
                "put the PEM chain, leaf first, in the file",
            );
            return (vec![fail], None);
        }
        Err(e) => {
            let fail = Check::fail(
                what,
                format!("cannot be read: {e}"),
                "check the path and the file's permissions",
            );
            return (vec![fail], None);
        }
    };
    let leaf = &chain[0];
    let subject = super::subject(leaf);
    let mut checks = vec![Check::ok(
        format!("{what}: key"),
        format!("{subject}: matches {}", tls.key.display()),
    )];
    checks.push(chain_check(&what, &chain));
    let ends = chain
        .iter()
        .map(|c| (super::not_after(c), super::subject(c)))
        .min_by_key(|(end, _)| *end)
        .expect("a chain has a leaf");
    checks.push(report::expiry(
        format!("{what}: expiry"),
        &ends.1,
        ends.0,
        now,
    ));
    (checks, Some(chain[0].clone()))
}

/// Each certificate of the file is issued by the next one, and the chain verifies up to a root
/// this machine trusts (OpenSSL's default trust store, which `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` can point elsewhere).
fn chain_check(what: &str, chain: &[X509]) -> Check {
    let check = format!("{what}: chain");
    for pair in chain.windows(2) {
        if pair[1].issued(&pair[0]) != X509VerifyResult::OK {
            return Check::fail(
                check,
                format!(
                    "{} is not issued by the next certificate in the file, {}",
                    super::subject(&pair[0]),
                    super::subject(&pair[1])
                ),
                "order the file leaf first, then each issuer",
            );
        }
    }
    let verified = (|| {
        let mut store = X509StoreBuilder::new()?;
        store.set_default_paths()?;
        let store = store.build();
        let mut rest = openssl::stack::Stack::new()?;
        for c in &chain[1..] {
            rest.push(c.clone())?;
        }
        let mut context = X509StoreContext::new()?;
        context.init(&store, &chain[0], &rest, |c| {
            Ok(if c.verify_cert()? {
                Ok(())
            } else {
                Err(c.error().error_string().to_string())
            })
        })
    })()
    .unwrap_or_else(|e| Err(e.to_string()));
    let last = chain.last().expect("a chain has a leaf");
    let ends = if last.issued(last) == X509VerifyResult::OK {
        format!("the root {}", super::subject(last))
    } else {
        format!(
            "a certificate issued by {}",
            super::name(last.issuer_name())
        )
    };
    match verified {
        Ok(()) => Check::ok(
            check,
            format!(
                "{} certificate(s) ending at {ends}, trusted by this machine",
                chain.len()
            ),
        ),
        Err(why) => Check::warn(
            check,
            format!(
                "{} certificate(s) ending at {ends}, which does not verify here: {why}",
                chain.len()
            ),
            "append the intermediate certificates to the file (leaf first) and renew any expired one; with a private CA, make sure agents' browsers trust it",
        ),
    }
}

/// The checks of a site's proxy map, started at once: every line's public `host:port` must
/// reach a listener of this configuration. A server on its public port is served directly; one
/// with another `listen_port` relies on a port mapping, which is tried (within `within`) by
/// connecting to the public address and comparing the certificate presented with the site's.
pub fn proxy_map(site: &FinesseService, within: Duration) -> Vec<tokio::task::JoinHandle<Check>> {
    site.servers
        .iter()
        .map(|server| {
            let line = format!("{}={}", server.upstream.authority, server.public);
            let check = format!("proxy map {}: {line}", site.name);
            let (bind, name) = (site.bind, site.name.clone());
            let (public, listen_port) = (server.public.clone(), server.listen_port);
            let tls = site.tls.clone();
            tokio::spawn(async move {
                if listen_port == public.port {
                    return Check::ok(
                        check,
                        format!("served by the listener on {bind}:{listen_port} of {name}"),
                    );
                }
                match reaches_site(&public, tls.as_ref(), within).await {
                    Ok(()) => Check::ok(
                        check,
                        format!(
                            "{public} reaches this site's listener on port {listen_port} through the port mapping"
                        ),
                    ),
                    Err(why) => Check::fail(
                        check,
                        format!(
                            "{public} is not served by a listener of this configuration ({why}); ccedge listens on port {listen_port} for it"
                        ),
                        format!(
                            "forward port {} of {} to port {listen_port} of this host, or set listen_port to {}",
                            public.port, public.host, public.port
                        ),
                    ),
                }
            })
        })
        .collect()
}

/// Whether `public` answers with this site's certificate (or at all, for a plain site).
async fn reaches_site(
    public: &Authority,
    tls: Option<&ServerTls>,
    within: Duration,
) -> Result<(), String> {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((public.host.as_str(), public.port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let Some(tls) = tls else {
            return Ok(());
        };
        let mut connector = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls())
            .map_err(|e| e.to_string())?;
        connector.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let ssl = connector
            .build()
            .configure()
            .and_then(|c| c.into_ssl(&public.host))
            .map_err(|e| e.to_string())?;
        let mut stream =
            pingora::tls::tokio_ssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
        std::pin::Pin::new(&mut stream)
            .connect()
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let ours = std::fs::read(&tls.for_name(Some(&public.host)).cert)
            .ok()
            .and_then(|pem| X509::from_pem(&pem).ok())
            .and_then(|c| c.to_der().ok());
        let theirs = stream
            .ssl()
            .peer_certificate()
            .and_then(|c| c.to_der().ok());
        if ours.is_some() && ours == theirs {
            Ok(())
        } else {
            Err("what answers there presents another certificate".to_string())
        }
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} s", within.as_secs())),
    }
}
