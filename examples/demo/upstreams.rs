//! The demo's internal servers on loopback, and its certificates. Most answer with JSON naming
//! themselves and listing the headers they received, so that routing and the header policy can
//! be seen. The Finesse look-alike also has what the tour shows: the credential check, a user
//! resource, `SystemInfo` naming the server by its internal name, desktop assets the cache may
//! keep, and the notification WebSocket. Also used by the test that drives the tour.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Each internal server and its port on 127.0.0.1 (conf/demo.yaml names the same ports).
pub const NODES: [(&str, u16); 5] = [
    ("cloud-connect-publisher", 18445),
    ("cloud-connect-subscriber", 18446),
    ("finesse", 18501),
    ("ids", 18502),
    ("cuic", 18503),
];

/// The demo's users and their password: `agent1` for the tour, `agent2` to be locked out.
const USERS: [&str; 2] = ["agent1", "agent2"];
const PASSWORD: &str = "demo";

/// The name Finesse knows itself by inside the contact center; conf/demo.yaml substitutes it.
const INTERNAL_NAME: &str = "finesse1.cc.internal";

/// Writes `dir`/ca.crt (a CA made for the demo) and `dir`/proxy.{crt,key} (ccedge's certificate
/// for every public name of conf/demo.yaml, `localhost` and 127.0.0.1, signed by that CA).
pub fn write_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ccedge demo CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let names = [
        "dc.example.com",
        "finesse1.example.com",
        "cuic1.example.com",
        "localhost",
    ];
    let mut leaf = CertificateParams::new(names.map(String::from).to_vec()).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    leaf.distinguished_name
        .push(DnType::CommonName, "ccedge demo");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("proxy.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("proxy.key"), key.serialize_pem()).unwrap();
}

/// Listens on every port of `nodes` and serves them in the background; returns once all listen.
pub async fn serve(nodes: &[(&'static str, u16)]) -> std::io::Result<()> {
    for &(node, port) in nodes {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("demo upstream {node} cannot listen on 127.0.0.1:{port}: {e}"),
                )
            })?;
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service =
                        service_fn(
                            move |req| async move { Ok::<_, hyper::Error>(answer(node, req)) },
                        );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
    }
    Ok(())
}

fn answer(node: &'static str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if node != "finesse" {
        return echo(node, &req);
    }
    if path == "/finesse/api/UserAuth" {
        return match basic_user(&req) {
            Some(_) => reply(200, "text/plain", "valid\n".into()),
            None => reply(401, "text/plain", "invalid\n".into()),
        };
    }
    if let Some(id) = path.strip_prefix("/finesse/api/User/") {
        return match basic_user(&req) {
            Some(user) if user == id => reply(
                200,
                "application/xml",
                format!(
                    "<User><loginId>{user}</loginId><firstName>Demo</firstName>\
                     <lastName>Agent</lastName><state>NOT_READY</state></User>\n"
                ),
            ),
            _ => reply(401, "text/plain", "invalid\n".into()),
        };
    }
    if path == "/finesse/api/SystemInfo" {
        let body = format!(
            "<SystemInfo><status>IN_SERVICE</status><xmppDomain>{INTERNAL_NAME}</xmppDomain>\
             <primaryNode><host>{INTERNAL_NAME}</host></primaryNode></SystemInfo>\n"
        );
        return reply(200, "application/xml", body);
    }
    if path.starts_with("/desktop/") {
        let mut response = reply(
            200,
            "application/javascript",
            format!("// {path}: a Finesse desktop asset, served by the demo's Finesse\n"),
        );
        response
            .headers_mut()
            .insert("Cache-Control", "max-age=300".parse().unwrap());
        return response;
    }
    if let Some(id) = path.strip_prefix("/ws/") {
        let id = id.to_string();
        return notifications(req, &id);
    }
    echo(node, &req)
}

/// JSON naming `node` and listing what it received.
fn echo(node: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("<binary>"))))
        .collect();
    let body = json!({
        "answered_by": node,
        "method": req.method().as_str(),
        "target": req.uri().to_string(),
        "headers_received": headers,
    });
    reply(200, "application/json", format!("{body:#}\n"))
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Server", "demo-upstream")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The demo user whose Basic credentials (`Authorization`, or for a WebSocket the subprotocol
/// entry after `xmpp`, base64url) `req` carries, when they are right.
fn basic_user(req: &Request<Incoming>) -> Option<String> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let pair = match header("authorization") {
        Some(value) => STANDARD.decode(value.strip_prefix("Basic ")?).ok()?,
        None => {
            let mut entries = header("sec-websocket-protocol")?.split(',').map(str::trim);
            entries.find(|e| *e == "xmpp")?;
            URL_SAFE_NO_PAD
                .decode(entries.next()?.trim_end_matches('='))
                .ok()?
        }
    };
    let pair = String::from_utf8(pair).ok()?;
    let (user, password) = pair.split_once(':')?;
    (USERS.contains(&user) && password == PASSWORD).then(|| user.to_string())
}

/// Finesse's notification service: a WebSocket offering `xmpp` with the credentials of the user
/// `id`, which gets an event each second.
fn notifications(mut req: Request<Incoming>, id: &str) -> Response<Full<Bytes>> {
    let user = basic_user(&req).filter(|user| user == id);
    let (Some(user), Some(key)) = (user, req.headers().get("sec-websocket-key")) else {
        return reply(
            401,
            "text/plain",
            "an xmpp WebSocket with its user's credentials\n".into(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        for n in 1.. {
            let event = format!("<message><body>event {n} for {user}</body></message>\n");
            if ws.send(Message::text(event)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Response::builder()
        .status(101)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Accept", accept)
        .header("Sec-WebSocket-Protocol", "xmpp")
        .body(Full::new(Bytes::new()))
        .unwrap()
}
