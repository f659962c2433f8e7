//! `ccedge doctor -c FILE`: checks a configuration against the live systems around it (its
//! certificates, every internal server, the credential check and signing keys, the proxy map)
//! and says, one line per check, what is wrong and what to do about it. The checks run
//! concurrently, each stage bounded by a timeout, so a dead host costs seconds.

mod listener;
mod names;
mod report;
mod upstream;

use crate::config::tls::not_after;
use crate::config::{AuthSettings, Config, Endpoint, Limits};
use openssl::x509::{X509NameRef, X509Ref};
use report::{Check, Status};
use std::process::ExitCode;
use std::time::Duration;
use upstream::{Expect, Target};

/// Runs every check of `config` and prints the report (as JSON with `json`); exit 0 when no
/// check failed.
pub fn run(config: &Config, json: bool, timeout: Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ccedge doctor: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checks = runtime.block_on(checks(config, timeout));
    // A name lookup that timed out still runs on a blocking thread: do not wait for it.
    runtime.shutdown_background();
    print(&checks, json)
}

/// `ccedge doctor` on a file that does not load: each problem is a failed check.
pub fn unloadable(file: &std::path::Path, problems: &str, json: bool) -> ExitCode {
    let checks: Vec<Check> = problems
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|problem| {
            Check::fail(
                format!("configuration {}", file.display()),
                problem.trim(),
                "fix the configuration first: names that do not resolve and unreadable or mismatched certificate files stop ccedge from starting (ccedge -t -c FILE lists every problem)",
            )
        })
        .collect();
    print(&checks, json)
}

fn print(checks: &[Check], json: bool) -> ExitCode {
    if json {
        let failed = checks.iter().any(|c| c.status == Status::Fail);
        let out = serde_json::json!({"ok": !failed, "checks": checks});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print!("{}", report::text(checks));
    }
    if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every check, in the order of the file: listeners, then internal servers, then proxy maps.
async fn checks(config: &Config, within: Duration) -> Vec<Check> {
    let now = chrono::Utc::now().timestamp();
    let mut checks = Vec::new();
    for d in &config.digital {
        if let Some(tls) = &d.tls {
            checks.extend(listener::certificate(&d.name, tls, &[&d.public.host], now));
        }
    }
    for f in &config.finesse {
        if let Some(tls) = &f.tls {
            let mut hosts: Vec<&str> = Vec::new();
            for s in &f.servers {
                if !hosts.contains(&s.public.host.as_str()) {
                    hosts.push(&s.public.host);
                }
            }
            checks.extend(listener::certificate(&f.name, tls, &hosts, now));
        }
    }
    let tasks: Vec<_> = targets(config)
        .into_iter()
        .map(|t| tokio::spawn(upstream::check(t, within, now)))
        .collect();
    let maps: Vec<_> = config
        .finesse
        .iter()
        .filter(|f| f.proxy_map.is_some())
        .flat_map(|f| listener::proxy_map(f, within))
        .collect();
    let broken = |e: tokio::task::JoinError| {
        Check::fail("doctor", e.to_string(), "report this as a ccedge bug")
    };
    for task in tasks {
        match task.await {
            Ok(found) => checks.extend(found),
            Err(e) => checks.push(broken(e)),
        }
    }
    for map in maps {
        checks.push(map.await.unwrap_or_else(broken));
    }
    checks
}

/// The internal servers to check, each once per way ccedge uses it.
fn targets(config: &Config) -> Vec<Target> {
    let mut targets = Vec::new();
    for d in &config.digital {
        for (node, upstream) in [("publisher", &d.publisher), ("subscriber", &d.subscriber)] {
            targets.push(Target {
                label: format!("digital {} {node}", d.name),
                upstream: upstream.clone(),
                tls: d.upstream_tls.clone(),
                limits: d.limits.clone(),
                path: d.health_check.path.clone(),
                host: d.public.to_string(),
                public_port: Some(d.public.port),
                expect: Expect::Ping,
            });
        }
    }
    for f in &config.finesse {
        for s in &f.servers {
            targets.push(Target {
                label: format!("finesse {} {}", f.name, s.public),
                upstream: s.upstream.clone(),
                tls: s.upstream_tls.clone().or_else(|| f.upstream_tls.clone()),
                limits: f.limits.clone(),
                path: upstream::probe_path(s.role).to_string(),
                host: s.public.to_string(),
                public_port: Some(s.public.port),
                expect: Expect::AcceptsHost(s.role),
            });
        }
        if let Some(auth) = &f.auth {
            let public = f
                .servers
                .first()
                .map(|s| (s.public.to_string(), f.tls.is_some()));
            targets.extend(auth_targets(&f.name, auth, &f.limits, public));
        }
    }
    targets
}

/// `public`: the site's first public `host:port`, and whether clients use TLS, for the request
/// the external check is asked about.
fn auth_targets(
    site: &str,
    auth: &AuthSettings,
    limits: &Limits,
    public: Option<(String, bool)>,
) -> Vec<Target> {
    let target = |what: &str, endpoint: &Endpoint, expect: Expect| Target {
        label: format!("finesse {site} auth.{what}"),
        upstream: endpoint.upstream.clone(),
        tls: endpoint.tls.clone(),
        limits: limits.clone(),
        path: endpoint.target().to_string(),
        host: endpoint.upstream.authority.to_string(),
        public_port: None,
        expect,
    };
    let mut targets: Vec<Target> = match auth.validate.as_slice() {
        [one] => vec![target("validate_url", one, Expect::Refuses)],
        more => more
            .iter()
            .enumerate()
            .map(|(i, e)| target(&format!("validate_url[{i}]"), e, Expect::Refuses))
            .collect(),
    };
    if let Some(jwt) = &auth.jwt {
        targets.push(target("jwt.keys_url", &jwt.keys, Expect::Keys));
    }
    if let Some(external) = &auth.external {
        let (public, https) = public.unwrap_or_default();
        let expect = Expect::Rules {
            public,
            https,
            timeout: external.timeout,
        };
        let mut check = target("external.url", &external.endpoint, expect);
        // The Host ccedge sends it: the URL's authority as written.
        if let Some(authority) = external.endpoint.url.authority() {
            check.host = authority.to_string();
        }
        targets.push(check);
    }
    targets
}

/// A certificate's subject, for messages: its CN, or the whole name.
fn subject(cert: &X509Ref) -> String {
    name(cert.subject_name())
}

fn name(name: &X509NameRef) -> String {
    let cn = name
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .filter_map(|e| e.data().to_string().ok())
        .next();
    cn.unwrap_or_else(|| {
        name.entries()
            .filter_map(|e| e.data().to_string().ok())
            .collect::<Vec<_>>()
            .join(",")
    })
}
