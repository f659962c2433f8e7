//! A Finesse look-alike for the agent simulator: the credential check (`agentN`, password
//! `secret`), the desktop's static assets (cacheable), the REST resources a desktop asks for, and
//! the notification WebSocket (`xmpp` with the user's credentials), which pushes an event every
//! `event_every`. Plain HTTP/1.1 on loopback, as an internal server behind the proxy.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const PASSWORD: &str = "secret";

/// Serves on 127.0.0.1:`port` until the process ends.
pub async fn serve(port: u16, event_every: Duration) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let assets: Arc<Vec<(String, Bytes)>> = Arc::new(
        super::profile::assets()
            .into_iter()
            .map(|(path, size)| (path, Bytes::from(vec![b'x'; size])))
            .collect(),
    );
    loop {
        let (tcp, _) = listener.accept().await?;
        let assets = assets.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let assets = assets.clone();
                async move {
                    // A state change is read whole before it is answered, as Finesse does.
                    if req.method() == hyper::Method::PUT {
                        let status = if user_of(&req).is_some() { 202 } else { 401 };
                        let _ = req.into_body().collect().await;
                        return Ok(reply(status, "text/plain", Bytes::new()));
                    }
                    Ok::<_, hyper::Error>(answer(req, &assets, event_every))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

fn reply(status: u16, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(body))
        .unwrap()
}

/// The demo user whose credentials (`Authorization`, or after `xmpp` in the subprotocol) are right.
fn user_of(req: &Request<Incoming>) -> Option<String> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let pair = match header("authorization") {
        Some(value) => STANDARD.decode(value.strip_prefix("Basic ")?).ok()?,
        None => {
            let mut entries = header("sec-websocket-protocol")?.split(',').map(str::trim);
            entries.find(|e| *e == "xmpp")?;
            URL_SAFE_NO_PAD.decode(entries.next()?).ok()?
        }
    };
    let pair = String::from_utf8(pair).ok()?;
    let (user, password) = pair.split_once(':')?;
    let numbered = user
        .strip_prefix("agent")
        .is_some_and(|n| n.parse::<u32>().is_ok());
    (numbered && password == PASSWORD).then(|| user.to_string())
}

fn answer(
    req: Request<Incoming>,
    assets: &[(String, Bytes)],
    event_every: Duration,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if let Some((_, body)) = assets.iter().find(|(p, _)| *p == path) {
        let mut response = reply(200, "application/javascript", body.clone());
        response
            .headers_mut()
            .insert("Cache-Control", "max-age=3600".parse().unwrap());
        return response;
    }
    let Some(user) = user_of(&req) else {
        return reply(401, "text/plain", Bytes::from_static(b"invalid\n"));
    };
    if path == "/finesse/api/UserAuth" {
        return reply(200, "text/plain", Bytes::from_static(b"valid\n"));
    }
    if path.starts_with("/ws/") {
        return notifications(req, user, event_every);
    }
    let body = format!(
        "<Resource><path>{path}</path><loginId>{user}</loginId><state>READY</state>\
         <stateChangeTime>2026-11-27T08:00:00.000Z</stateChangeTime></Resource>\n"
    );
    reply(200, "application/xml", Bytes::from(body))
}

fn notifications(
    mut req: Request<Incoming>,
    user: String,
    event_every: Duration,
) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return reply(400, "text/plain", Bytes::from_static(b"a WebSocket only\n"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let event = format!(
            "<message to='{user}@finesse'><body><Update><event>PUT</event>\
             <data><user><state>READY</state></user></data></Update></body></message>"
        );
        let mut events = tokio::time::interval(event_every);
        events.tick().await;
        loop {
            let sent = tokio::select! {
                _ = events.tick() => ws.send(Message::text(event.clone())).await,
                message = ws.next() => match message {
                    Some(Ok(Message::Text(t))) if t.as_str() == super::profile::PING => {
                        ws.send(Message::text(super::profile::PONG)).await
                    }
                    Some(Ok(_)) => Ok(()),
                    _ => return,
                },
            };
            if sent.is_err() {
                return;
            }
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
