//! A keep-alive HTTPS client (hyper over tokio-openssl) speaking HTTP/1.1 or HTTP/2, that
//! behaves like a browser when a server closes an idle connection: a request that failed on a
//! reused connection without any answer is sent once more on a new one.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;
use std::pin::Pin;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Proto {
    H1,
    H2,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

pub struct TlsClient {
    host: String,
    port: u16,
    connector: SslConnector,
    proto: Proto,
    sender: Option<Sender>,
    /// Requests sent again after their reused connection closed under them.
    pub resent: usize,
    /// Connections opened.
    pub connections: usize,
}

impl TlsClient {
    pub fn new(host: &str, port: u16, ca_pem: &str, proto: Proto) -> TlsClient {
        let mut tls = SslConnector::builder(SslMethod::tls()).unwrap();
        tls.cert_store_mut()
            .add_cert(X509::from_pem(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let alpn: &[u8] = match proto {
            Proto::H1 => b"\x08http/1.1",
            Proto::H2 => b"\x02h2",
        };
        tls.set_alpn_protos(alpn).unwrap();
        TlsClient {
            host: host.to_string(),
            port,
            connector: tls.build(),
            proto,
            sender: None,
            resent: 0,
            connections: 0,
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        let ssl = self
            .connector
            .configure()
            .unwrap()
            .into_ssl(&self.host)
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
        Pin::new(&mut stream)
            .connect()
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let io = TokioIo::new(stream);
        self.sender = Some(match self.proto {
            Proto::H1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Sender::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Sender::H2(sender)
            }
        });
        self.connections += 1;
        Ok(())
    }

    /// GET `path`; the status and body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let reused = self.sender.is_some();
        match self.try_get(path).await {
            Ok(answer) => Ok(answer),
            Err(e) if reused => {
                self.sender = None;
                self.resent += 1;
                self.try_get(path)
                    .await
                    .map_err(|again| format!("{e}; sent again: {again}"))
            }
            Err(e) => Err(e),
        }
    }

    async fn try_get(&mut self, path: &str) -> Result<(u16, String), String> {
        if self.sender.is_none() {
            self.connect().await?;
        }
        let mut builder = Request::builder().uri(path);
        builder = match self.proto {
            Proto::H1 => builder.header("Host", format!("{}:{}", self.host, self.port)),
            Proto::H2 => builder.uri(format!("https://{}:{}{path}", self.host, self.port)),
        };
        let req = builder.body(Full::new(Bytes::new())).unwrap();
        let sent = match self.sender.as_mut().unwrap() {
            Sender::H1(s) => match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            },
            Sender::H2(s) => match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            },
        };
        let resp = sent.map_err(|e| {
            self.sender = None;
            format!("request: {e}")
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
