//! Upstream servers on 127.0.0.1 that answer with what they received (hyper, optionally TLS with
//! a required client certificate).

use super::certs::{Ca, Pair};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

/// A response body a handler may stream.
pub type Body = BoxBody<Bytes, std::convert::Infallible>;

/// How a custom upstream answers (the echo answer is the default).
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// What an upstream has been asked, ccedge's health checks counted apart.
#[derive(Default)]
struct Seen {
    paths: Mutex<Vec<String>>,
    health_checks: AtomicUsize,
    /// When set, requests other than health checks get their connection closed, unanswered.
    dropping: AtomicBool,
    /// When set, a connection's second request gets the connection closed, unanswered.
    dropping_reused: AtomicBool,
    /// Connections whose first request was not a health check.
    connections: AtomicUsize,
}

impl Seen {
    /// Records the request (the `nth` on its connection); false when it is to be dropped
    /// unanswered.
    fn record(&self, req: &Request<Incoming>, nth: usize) -> bool {
        let agent = req
            .headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if agent.starts_with("ccedge-health/") {
            self.health_checks.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            self.paths
                .lock()
                .unwrap()
                .push(req.uri().path().to_string());
            if nth == 1 {
                self.connections.fetch_add(1, Ordering::SeqCst);
            }
            let reused = nth > 1 && self.dropping_reused.load(Ordering::SeqCst);
            !self.dropping.load(Ordering::SeqCst) && !reused
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn plain(name: &str) -> Upstream {
        Self::start(name, None, "127.0.0.1:0".parse().unwrap(), None).await
    }

    /// A plain upstream on a given address (to bring a stopped one back on its port).
    pub async fn plain_at(name: &str, addr: SocketAddr) -> Upstream {
        Self::start(name, None, addr, None).await
    }

    /// A plain upstream answering with `handler`.
    pub async fn custom(name: &str, handler: Handler) -> Upstream {
        Self::start(name, None, "127.0.0.1:0".parse().unwrap(), Some(handler)).await
    }

    /// TLS with `pair`; when `client_ca` is given, a client certificate signed by it is required.
    pub async fn tls(name: &str, pair: &Pair, client_ca: Option<&Ca>) -> Upstream {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor
            .set_certificate(&X509::from_pem(pair.cert_pem.as_bytes()).unwrap())
            .unwrap();
        acceptor
            .set_private_key(&PKey::private_key_from_pem(pair.key_pem.as_bytes()).unwrap())
            .unwrap();
        if let Some(ca) = client_ca {
            let mut store = X509StoreBuilder::new().unwrap();
            store
                .add_cert(X509::from_pem(ca.pem.as_bytes()).unwrap())
                .unwrap();
            acceptor.set_verify_cert_store(store.build()).unwrap();
            acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        Self::start(
            name,
            Some(Arc::new(acceptor.build())),
            "127.0.0.1:0".parse().unwrap(),
            None,
        )
        .await
    }

    async fn start(
        name: &str,
        tls: Option<Arc<SslAcceptor>>,
        addr: SocketAddr,
        handler: Option<Handler>,
    ) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let node = name.to_string();
        let counter = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let node = node.clone();
                let counter = counter.clone();
                let tls = tls.clone();
                let handler = handler.clone();
                connections.spawn(async move {
                    match tls {
                        None => serve(TokioIo::new(tcp), node, counter, false, handler).await,
                        Some(acceptor) => {
                            let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                            let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                            if Pin::new(&mut stream).accept().await.is_err() {
                                return;
                            }
                            let client_cert = stream.ssl().peer_certificate().is_some();
                            serve(TokioIo::new(stream), node, counter, client_cert, handler).await
                        }
                    }
                });
            }
        });
        Upstream { addr, seen, task }
    }

    /// Stops answering: the port refuses connections once this returns.
    pub async fn stop(&self) {
        self.task.abort();
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Requests received, ccedge's health checks not counted.
    pub fn hits(&self) -> usize {
        self.seen.paths.lock().unwrap().len()
    }

    /// How many connections requests other than health checks arrived on (the first request of
    /// a connection counts it).
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// The paths of the requests received, health checks not included.
    pub fn paths(&self) -> Vec<String> {
        self.seen.paths.lock().unwrap().clone()
    }

    /// From now on, close every request's connection without an answer (health checks still
    /// pass): a node that dies with requests in flight.
    pub fn drop_requests(&self) {
        self.seen.dropping.store(true, Ordering::SeqCst);
    }

    /// From now on, close a connection when its second request comes, unanswered: a pooled
    /// connection that went stale, which the proxy retries on a new one.
    pub fn drop_reused_requests(&self) {
        self.seen.dropping_reused.store(true, Ordering::SeqCst);
    }

    pub fn health_checks(&self) -> usize {
        self.seen.health_checks.load(Ordering::SeqCst)
    }

    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

async fn serve<IO>(
    io: TokioIo<IO>,
    node: String,
    seen: Arc<Seen>,
    client_cert: bool,
    handler: Option<Handler>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let requests = AtomicUsize::new(0);
    let service = service_fn(move |req: Request<Incoming>| {
        let node = node.clone();
        let nth = requests.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = seen.record(&req, nth);
        let handler = handler.clone();
        async move {
            if !answer {
                return Err("dropped on purpose");
            }
            Ok(match handler {
                Some(handler) => handler(req).await,
                None => respond(&node, client_cert, req).await,
            })
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}

/// `/status/NNN` answers NNN, `/slow/MS` answers after MS milliseconds; anything else answers 200.
/// The body is JSON describing the request.
async fn respond(node: &str, client_cert: bool, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    if let Some(ms) = parts
        .uri
        .path()
        .strip_prefix("/slow/")
        .and_then(|m| m.parse().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = parts
        .uri
        .path()
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(200);
    let headers: Vec<Value> = parts
        .headers
        .iter()
        .map(|(k, v)| json!([k.as_str(), v.to_str().unwrap_or("<binary>")]))
        .collect();
    let echo = json!({
        "node": node,
        "method": parts.method.as_str(),
        "target": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
        "client_cert": client_cert,
    });
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Server", "secret-upstream/9.9")
        .body(full(echo.to_string()))
        .unwrap()
}

/// What an upstream said it received.
pub struct Echo(pub Value);

impl Echo {
    pub fn parse(body: &str) -> Echo {
        Echo(serde_json::from_str(body).unwrap_or_else(|e| panic!("not an echo ({e}): {body}")))
    }

    pub fn node(&self) -> &str {
        self.0["node"].as_str().unwrap()
    }

    pub fn target(&self) -> &str {
        self.0["target"].as_str().unwrap()
    }

    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|h| h[1].as_str().unwrap().to_string())
            .collect()
    }

    /// The single value of header `name`; panics if it was sent more than once.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut all = self.all(name);
        assert!(all.len() <= 1, "{name} sent {} times: {all:?}", all.len());
        all.pop()
    }
}
