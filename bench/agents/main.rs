//! The agent simulator of `bench/agents.sh`: N Finesse desktops through a proxy, on loopback.
//!
//!   agents origin PORT EVENT_SECONDS      the Finesse look-alike, until killed
//!   agents certs DIR HOST                 DIR/ca.crt, DIR/proxy.{crt,key} for HOST
//!   agents warm PORT HOST CA              every desktop file asked for once (the cache filled)
//!   agents run PORT HOST CA AGENTS RAMP_S STEADY_S CHANGE_S [PROXY_PID]
//!
//! `run` starts AGENTS sign-ins evenly over RAMP_S seconds; each agent then changes state every
//! CHANGE_S seconds until RAMP_S + STEADY_S have passed. It prints one JSON line: sign-in p50/p99
//! (ms), REST p50/p99 (ms) after sign-in, failures, WebSocket events, its own CPU seconds, and
//! with PROXY_PID the proxy's CPU seconds, its CPU seconds in steady state (from 10 s after the
//! ramp to 2 s before the end) and its resident memory two seconds before the agents leave.

mod load;
mod origin;
mod profile;

use std::time::Duration;

/// CPU seconds (user + system) and resident KiB of process `pid`.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss)
}

fn certs(dir: &str, host: &str) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "agents bench CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = CertificateParams::new(vec![host.to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("proxy.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("proxy.key"), key.serialize_pem()).unwrap();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let number = |i: usize| -> u64 {
        arg(i)
            .parse()
            .unwrap_or_else(|_| panic!("argument {i} must be a number: {args:?}"))
    };
    match arg(0) {
        "origin" => {
            let every = Duration::from_secs(number(2));
            origin::serve(number(1) as u16, every).await.unwrap();
        }
        "certs" => certs(arg(1), arg(2)),
        "warm" => {
            let target = load::Target::new(number(1) as u16, arg(2), arg(3));
            if let Err(e) = load::warm(&target).await {
                eprintln!("warm: {e}");
                std::process::exit(1);
            }
        }
        "run" => {
            let pid = args.get(8).and_then(|p| p.parse::<u32>().ok());
            let before = pid.map(usage);
            let plan = load::Plan {
                target: load::Target::new(number(1) as u16, arg(2), arg(3)),
                agents: number(4) as u32,
                ramp: Duration::from_secs(number(5)),
                steady: Duration::from_secs(number(6)),
                poll_every: Duration::from_secs(number(7)),
                proxy: pid,
            };
            let seen = load::run(plan).await;
            let after = pid.map(usage);
            let mut sign_ins = seen.sign_ins.lock().unwrap().clone();
            let mut rest = seen.rest.lock().unwrap().clone();
            let cpu = match (before, after) {
                (Some(b), Some(a)) => a.0 - b.0,
                _ => 0.0,
            };
            let rss = seen
                .proxy_rss_kib
                .load(std::sync::atomic::Ordering::Relaxed);
            let simulator_cpu = usage(std::process::id()).0;
            let (steady_cpu, steady_s) = *seen.steady_cpu.lock().unwrap();
            println!(
                "{{\"signed_in\":{},\"failures\":{},\"sign_in_p50_ms\":{:.1},\"sign_in_p99_ms\":{:.1},\
                 \"rest_p50_ms\":{:.2},\"rest_p99_ms\":{:.2},\"rest_calls\":{},\"reconnects\":{},\"events\":{},\
                 \"proxy_cpu_s\":{cpu:.2},\"proxy_rss_kib\":{rss},\"simulator_cpu_s\":{simulator_cpu:.2},\
                 \"steady_cpu_s\":{steady_cpu:.3},\"steady_s\":{steady_s:.1}}}",
                seen.signed_in.load(std::sync::atomic::Ordering::Relaxed),
                seen.failures.load(std::sync::atomic::Ordering::Relaxed),
                load::percentile(&mut sign_ins, 50.0),
                load::percentile(&mut sign_ins, 99.0),
                load::percentile(&mut rest, 50.0),
                load::percentile(&mut rest, 99.0),
                rest.len(),
                seen.reconnects.load(std::sync::atomic::Ordering::Relaxed),
                seen.events.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        _ => {
            eprintln!("usage: agents origin PORT EVENT_SECONDS | certs DIR HOST | warm PORT HOST CA | run PORT HOST CA AGENTS RAMP_S STEADY_S CHANGE_S [PROXY_PID]");
            std::process::exit(2);
        }
    }
}
