//! N simulated agents through the proxy: each signs in (a new TLS connection, the desktop's
//! assets, the REST calls of a sign-in, the notification WebSocket), then polls and listens until
//! the run ends. Sign-ins are spread evenly over the ramp (a shift start).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openssl::ssl::{SslConnector, SslMethod};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_openssl::SslStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The proxy the agents talk to, and the TLS settings of their connections (made once: a
/// connector reads the system's and the test's CA certificates).
pub struct Target {
    pub port: u16,
    pub host: String,
    h2: SslConnector,
    h1: SslConnector,
}

impl Target {
    pub fn new(port: u16, host: &str, ca: &str) -> Target {
        let connector = |alpn: &[u8]| {
            let mut tls = SslConnector::builder(SslMethod::tls()).unwrap();
            tls.set_ca_file(ca).unwrap();
            tls.set_alpn_protos(alpn).unwrap();
            tls.build()
        };
        Target {
            port,
            host: host.to_string(),
            h2: connector(b"\x02h2"),
            h1: connector(b"\x08http/1.1"),
        }
    }
}

pub struct Plan {
    pub target: Target,
    pub agents: u32,
    pub ramp: Duration,
    pub steady: Duration,
    /// A state change (a `PUT` of the user, then a read of its dialogs) this often.
    pub poll_every: Duration,
    /// The proxy's process, whose memory is read while every agent is still connected.
    pub proxy: Option<u32>,
}

/// What the agents saw.
#[derive(Default)]
pub struct Seen {
    /// Sign-in times, ms.
    pub sign_ins: Mutex<Vec<f64>>,
    /// REST latencies in steady state, ms.
    pub rest: Mutex<Vec<f64>>,
    pub failures: AtomicU64,
    /// New connections for REST calls after the proxy closed an idle one.
    pub reconnects: AtomicU64,
    pub events: AtomicU64,
    pub signed_in: AtomicU64,
    /// The proxy's resident KiB two seconds before the agents leave.
    pub proxy_rss_kib: AtomicU64,
    /// The proxy's CPU seconds in steady state (from 10 s after the ramp to two seconds before
    /// the agents leave), and that window's length in seconds.
    pub steady_cpu: Mutex<(f64, f64)>,
}

/// Agent `n`'s own loopback address (127.1.0.1 and up), as each desktop has its own: the
/// proxies' per-address caps and rate limits stay as they ship.
fn address(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + n)
}

async fn tls(
    n: u32,
    plan: &Target,
    connector: &SslConnector,
) -> Result<SslStream<TcpStream>, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::from((address(n), 0)))
        .map_err(|e| format!("bind {}: {e}", address(n)))?;
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], plan.port)))
        .await
        .map_err(|e| e.to_string())?;
    // As browsers do: no Nagle delay between a request's HEADERS and DATA frames.
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let ssl = connector
        .configure()
        .and_then(|c| c.into_ssl(&plan.host))
        .map_err(|e| e.to_string())?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    Pin::new(&mut stream)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

type Sender = http2::SendRequest<Full<Bytes>>;

async fn get(sender: &Sender, plan: &Target, path: &str, auth: Option<&str>) -> Result<(), String> {
    send(sender, plan, ("GET", path, ""), auth).await
}

async fn send(
    sender: &Sender,
    plan: &Target,
    (method, path, body): (&str, &str, &'static str),
    auth: Option<&str>,
) -> Result<(), String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("https://{}:{}{path}", plan.host, plan.port));
    if let Some(auth) = auth {
        req = req.header("Authorization", auth);
    }
    let req = req
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .clone()
        .send_request(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{path}: {status}"))
    }
}

/// A new TLS connection speaking HTTP/2.
async fn h2_connection(n: u32, plan: &Target) -> Result<Sender, String> {
    let stream = tls(n, plan, &plan.h2).await?;
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A REST call as a browser makes it: on a new connection when the proxy has closed the idle
/// one (its keep-alive timeout), and once more on a new one when the connection closed under
/// the call.
async fn send_again(
    n: u32,
    sender: &mut Sender,
    plan: &Target,
    seen: &Seen,
    call: (&str, &str, &'static str),
    basic: &str,
) -> Result<(), String> {
    if sender.is_closed() {
        *sender = h2_connection(n, plan).await?;
        seen.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    match send(sender, plan, call, Some(basic)).await {
        Err(e) if sender.is_closed() => {
            *sender = h2_connection(n, plan)
                .await
                .map_err(|again| format!("{e}; {again}"))?;
            seen.reconnects.fetch_add(1, Ordering::Relaxed);
            send(sender, plan, call, Some(basic)).await
        }
        other => other,
    }
}

const LOGIN: &str = "<User><state>LOGIN</state><extension>1001</extension></User>";
const READY: &str = "<User><state>READY</state></User>";

/// One agent: sign in (the assets, the REST reads, the WebSocket, the login), then change state
/// every `poll_every` until `until`, pinging on its WebSocket every 10 s meanwhile.
async fn agent(n: u32, plan: Arc<Plan>, seen: Arc<Seen>, until: Instant) -> Result<(), String> {
    let user = format!("agent{n}");
    let pair = format!("{user}:{}", super::origin::PASSWORD);
    let basic = format!("Basic {}", STANDARD.encode(&pair));
    let started = Instant::now();
    let target = &plan.target;
    let mut sender = h2_connection(n, target).await?;
    let paths = super::profile::assets();
    let assets = paths
        .iter()
        .map(|(path, _)| get(&sender, target, path, None));
    for result in futures_util::future::join_all(assets).await {
        result?;
    }
    for path in super::profile::SIGN_IN {
        get(
            &sender,
            target,
            &path.replace("{user}", &user),
            Some(&basic),
        )
        .await?;
    }
    let ws_stream = tls(n, target, &target.h1).await?;
    let mut request = format!("wss://{}:{}/ws/{user}", target.host, target.port)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let protocol = format!("xmpp, {}", URL_SAFE_NO_PAD.encode(&pair));
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, ws_stream)
        .await
        .map_err(|e| e.to_string())?;
    seen.sign_ins
        .lock()
        .unwrap()
        .push(started.elapsed().as_secs_f64() * 1000.0);
    seen.signed_in.fetch_add(1, Ordering::Relaxed);
    let events = seen.clone();
    let listening = tokio::spawn(async move {
        let mut pings = tokio::time::interval(super::profile::PING_EVERY);
        loop {
            tokio::select! {
                _ = pings.tick() => {
                    if ws.send(super::profile::PING.into()).await.is_err() {
                        return;
                    }
                }
                message = ws.next() => match message {
                    Some(Ok(m)) if m.to_text().is_ok_and(|t| t != super::profile::PONG) => {
                        events.events.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    });
    let login = ("PUT", format!("/finesse/api/User/{user}"), LOGIN);
    send_again(
        n,
        &mut sender,
        target,
        &seen,
        (login.0, &login.1, login.2),
        &basic,
    )
    .await?;
    // State changes start at a random point of the interval, as agents' calls do.
    let every = plan.poll_every;
    tokio::time::sleep(every.mul_f64(f64::from(n % 97) / 97.0)).await;
    let path = format!("/finesse/api/User/{user}");
    let dialogs = format!("{path}/Dialogs");
    while Instant::now() + every < until {
        for (method, path, body) in [("PUT", &path, READY), ("GET", &dialogs, "")] {
            let sent = Instant::now();
            send_again(n, &mut sender, target, &seen, (method, path, body), &basic).await?;
            let took = sent.elapsed().as_secs_f64() * 1000.0;
            seen.rest.lock().unwrap().push(took);
        }
        tokio::time::sleep(every).await;
    }
    let left = until.saturating_duration_since(Instant::now());
    tokio::time::sleep(left).await;
    listening.abort();
    Ok(())
}

/// Asks once for every desktop file, so that the proxy's cache holds them before its idle
/// memory is read.
pub async fn warm(target: &Target) -> Result<(), String> {
    let sender = h2_connection(0, target).await?;
    for (path, _) in super::profile::assets() {
        get(&sender, target, &path, None).await?;
    }
    Ok(())
}

/// Runs the plan; returns what was seen once every agent is done.
pub async fn run(plan: Plan) -> Arc<Seen> {
    let plan = Arc::new(plan);
    let seen = Arc::new(Seen::default());
    let until = Instant::now() + plan.ramp + plan.steady;
    let gap = plan.ramp.div_f64(f64::from(plan.agents.max(1)));
    let mut tasks = Vec::new();
    if let Some(pid) = plan.proxy {
        let seen = seen.clone();
        let last = until - Duration::from_secs(2);
        let steady = (Instant::now() + plan.ramp + Duration::from_secs(10)).min(last);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(steady.into()).await;
            let cpu = super::usage(pid).0;
            tokio::time::sleep_until(last.into()).await;
            let (cpu_end, rss) = super::usage(pid);
            seen.proxy_rss_kib.store(rss, Ordering::Relaxed);
            let window = last.saturating_duration_since(steady).as_secs_f64();
            *seen.steady_cpu.lock().unwrap() = (cpu_end - cpu, window);
        }));
    }
    for n in 1..=plan.agents {
        let (plan, seen) = (plan.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = agent(n, plan, seen.clone(), until).await {
                if seen.failures.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("agent{n}: {e}");
                }
            }
        }));
        tokio::time::sleep(gap).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    seen
}

/// The `p`-th percentile of `values` (sorted here), 0 when empty.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 - 1.0) * p / 100.0).round() as usize;
    values[at]
}
