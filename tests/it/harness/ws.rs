//! WebSocket client over TLS (tokio-tungstenite on tokio-openssl) and an echo upstream.

use super::upstream::{full, Body, Handler};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Client = WebSocketStream<SslStream<TcpStream>>;

/// Opens `wss://host:port/path` through loopback, trusting `ca_pem`, offering HTTP/1.1 only.
pub async fn connect(host: &str, port: u16, path: &str, ca_pem: &str) -> Client {
    connect_with(host, port, path, ca_pem, &[])
        .await
        .unwrap_or_else(|status| panic!("WebSocket refused with {status}"))
}

/// As `connect`, with extra request `headers`; `Err` carries the status of a refused upgrade.
pub async fn connect_with(
    host: &str,
    port: u16,
    path: &str,
    ca_pem: &str,
    headers: &[(&'static str, &str)],
) -> Result<Client, u16> {
    let mut tls = SslConnector::builder(SslMethod::tls()).unwrap();
    tls.cert_store_mut()
        .add_cert(X509::from_pem(ca_pem.as_bytes()).unwrap())
        .unwrap();
    tls.set_alpn_protos(b"\x08http/1.1").unwrap();
    let ssl = tls.build().configure().unwrap().into_ssl(host).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut stream = SslStream::new(ssl, tcp).unwrap();
    Pin::new(&mut stream).connect().await.unwrap();
    let mut request = format!("wss://{host}:{port}{path}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((client, response)) => {
            assert_eq!(response.status(), 101);
            Ok(client)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// Sends `text` and checks that the same text comes back.
pub async fn echoes(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
    match client.next().await {
        Some(Ok(answer)) => assert_eq!(answer, Message::text(text)),
        other => panic!("no echo of {text:?}: {other:?}"),
    }
}

/// Reads `client` until the server closes it: its close frame (`None`: a frame without a code).
/// Panics when the connection ends without a close frame, or nothing closes it within `within`.
pub async fn closed(
    client: &mut Client,
    within: std::time::Duration,
) -> Option<tokio_tungstenite::tungstenite::protocol::CloseFrame> {
    let ending = async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("the WebSocket ended without a close frame: {other:?}"),
            }
        }
    };
    tokio::time::timeout(within, ending)
        .await
        .unwrap_or_else(|_| panic!("the WebSocket was not closed within {within:?}"))
}

/// The length of the frame `slow-frame-please` asks for.
pub const SLOW_FRAME_LEN: usize = 1000;

/// What the echo upstream saw: request headers of each upgrade and how each connection ended.
#[derive(Default)]
pub struct EchoLog {
    pub upgrades: Mutex<Vec<http::HeaderMap>>,
    pub endings: Mutex<Vec<String>>,
}

/// An upstream handler that accepts WebSocket upgrades (choosing the `xmpp` subprotocol when
/// offered, as Finesse does) and echoes every message; a text message `close-please` makes it
/// close the connection itself, and `slow-frame-please` makes it send a text frame of
/// `SLOW_FRAME_LEN` bytes in two halves, 800 ms apart.
pub fn echo_handler(log: Arc<EchoLog>) -> Handler {
    Arc::new(move |mut req: Request<Incoming>| {
        let log = log.clone();
        Box::pin(async move {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| derive_accept_key(k.as_bytes()));
            let Some(accept) = key else {
                return Response::builder()
                    .status(400)
                    .body(full("not a websocket"))
                    .unwrap();
            };
            log.upgrades.lock().unwrap().push(req.headers().clone());
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                let ending = loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.as_str() == "close-please" => {
                            let _ = ws.close(None).await;
                            while let Some(Ok(_)) = ws.next().await {}
                            break "server closed".to_string();
                        }
                        Some(Ok(Message::Text(t))) if t.as_str() == "slow-frame-please" => {
                            use tokio::io::AsyncWriteExt;
                            let mut frame = vec![0x81, 126];
                            frame.extend_from_slice(&(SLOW_FRAME_LEN as u16).to_be_bytes());
                            frame.extend(std::iter::repeat_n(b'x', SLOW_FRAME_LEN));
                            let (first, rest) = frame.split_at(frame.len() / 2);
                            let raw = ws.get_mut();
                            let sent = async {
                                raw.write_all(first).await?;
                                raw.flush().await?;
                                tokio::time::sleep(std::time::Duration::from_millis(800)).await;
                                raw.write_all(rest).await?;
                                raw.flush().await
                            };
                            if sent.await.is_err() {
                                break "send failed".to_string();
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let code = frame.map_or(0, |f| u16::from(f.code));
                            break format!("client closed ({code})");
                        }
                        Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                            if ws.send(m).await.is_err() {
                                break "send failed".to_string();
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break format!("error: {e}"),
                        None => break "connection ended".to_string(),
                    }
                };
                log.endings.lock().unwrap().push(ending);
            });
            let xmpp = req
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|p| p.to_str().ok())
                .is_some_and(|p| p.split(',').any(|e| e.trim() == "xmpp"));
            let mut response = Response::builder()
                .status(101)
                .header("Connection", "Upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Accept", accept);
            if xmpp {
                response = response.header("Sec-WebSocket-Protocol", "xmpp");
            }
            let response: Response<Body> = response.body(full("")).unwrap();
            response
        })
    })
}
