//! A keep-alive HTTP client (hyper) for tests that send many requests quickly: plain HTTP/1.1,
//! or HTTPS with HTTP/1.1 or HTTP/2 over tokio-openssl.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;
use std::net::SocketAddr;
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

pub struct Client {
    addr: SocketAddr,
    host: String,
    tls: Option<SslConnector>,
    proto: Proto,
    sender: Option<Sender>,
    resend: bool,
    /// Bytes written on each new connection before TLS or HTTP (a PROXY protocol header).
    preface: Vec<u8>,
    /// Requests sent again after their reused connection closed under them (see `resending`).
    pub resent: usize,
}

/// Status, headers and body of one answer.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Client {
    /// Plain HTTP/1.1 to `addr`, sending `Host: host`.
    pub fn new(addr: SocketAddr, host: &str) -> Client {
        Client {
            addr,
            host: host.to_string(),
            tls: None,
            proto: Proto::H1,
            sender: None,
            resend: false,
            preface: Vec::new(),
            resent: 0,
        }
    }

    /// HTTPS to `host` on 127.0.0.1:`port`, trusting `ca_pem`, offering only `proto` in ALPN.
    pub fn tls(host: &str, port: u16, ca_pem: &str, proto: Proto) -> Client {
        let mut tls = SslConnector::builder(SslMethod::tls()).unwrap();
        tls.cert_store_mut()
            .add_cert(X509::from_pem(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let alpn: &[u8] = match proto {
            Proto::H1 => b"\x08http/1.1",
            Proto::H2 => b"\x02h2",
        };
        tls.set_alpn_protos(alpn).unwrap();
        Client {
            tls: Some(tls.build()),
            proto,
            host: format!("{host}:{port}"),
            ..Client::new(SocketAddr::from(([127, 0, 0, 1], port)), host)
        }
    }

    /// Behave like a browser when a server closes an idle connection: a request that failed on
    /// a reused connection without any answer is sent once more on a new one.
    pub fn resending(mut self) -> Client {
        self.resend = true;
        self
    }

    /// Start each new connection with `bytes`, as a balancer writes its PROXY header.
    pub fn preface(mut self, bytes: &[u8]) -> Client {
        self.preface = bytes.to_vec();
        self
    }

    async fn connect(&mut self) -> Result<(), String> {
        let mut tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        if !self.preface.is_empty() {
            tokio::io::AsyncWriteExt::write_all(&mut tcp, &self.preface)
                .await
                .map_err(|e| format!("preface: {e}"))?;
        }
        self.sender = Some(match &self.tls {
            None => handshake(TokioIo::new(tcp), self.proto).await?,
            Some(connector) => {
                let name = self.host.split(':').next().unwrap_or_default();
                let ssl = connector.configure().unwrap().into_ssl(name).unwrap();
                let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                Pin::new(&mut stream)
                    .connect()
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                handshake(TokioIo::new(stream), self.proto).await?
            }
        });
        Ok(())
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer, String> {
        self.send("GET", path, &[], b"").await
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, String> {
        let reused = self.sender.is_some();
        match self.try_send(method, path, headers, body).await {
            Err(e) if reused && self.resend => {
                self.resent += 1;
                self.try_send(method, path, headers, body)
                    .await
                    .map_err(|again| format!("{e}; sent again: {again}"))
            }
            answer => answer,
        }
    }

    async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, String> {
        // A connection the server has finished with (`Connection: close`, GOAWAY) is replaced
        // before anything is sent on it.
        let open = match self.sender.as_mut() {
            Some(Sender::H1(s)) => s.ready().await.is_ok(),
            Some(Sender::H2(s)) => s.ready().await.is_ok(),
            None => false,
        };
        if !open {
            self.connect().await?;
        }
        let mut req = Request::builder().method(method);
        req = match self.proto {
            Proto::H1 => req.uri(path).header("Host", &self.host),
            Proto::H2 => req.uri(format!("https://{}{path}", self.host)),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| e.to_string())?;
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
            format!("request failed: {e}")
        })?;
        answer(resp).await
    }

    /// A handle that sends requests concurrently as streams of this client's HTTP/2
    /// connection (connected first if need be).
    pub async fn streams(&mut self) -> Result<Streams, String> {
        if self.sender.is_none() {
            self.connect().await?;
        }
        match self.sender.as_ref() {
            Some(Sender::H2(sender)) => Ok(Streams {
                sender: sender.clone(),
                authority: self.host.clone(),
            }),
            _ => Err("streams need an HTTP/2 client".into()),
        }
    }
}

/// Concurrent requests on one HTTP/2 connection: clone it into each task.
#[derive(Clone)]
pub struct Streams {
    sender: http2::SendRequest<Full<Bytes>>,
    authority: String,
}

impl Streams {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let mut sender = self.sender.clone();
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        answer(resp).await
    }
}

async fn answer(resp: hyper::Response<hyper::body::Incoming>) -> Result<Answer, String> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn handshake<IO>(io: TokioIo<IO>, proto: Proto) -> Result<Sender, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Ok(match proto {
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
    })
}
