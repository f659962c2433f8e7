//! HTTP/2 written frame by frame over TLS, for what a well-behaved client never sends: floods,
//! rapid resets, broken pseudo-headers.

use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// A frame read: type, stream, payload, flags.
pub type Frame = (u8, u32, Vec<u8>, u8);

pub struct RawH2 {
    tls: SslStream<TcpStream>,
    /// Bytes read past the last whole frame.
    unread: Vec<u8>,
}

/// One HPACK field: a static-table name index and a literal value, never indexed (a 4-bit
/// prefixed index, then a 7-bit prefixed length).
fn literal(name_index: u8, value: &str) -> Vec<u8> {
    assert!(value.len() < 127 && name_index < 15 + 127);
    let mut field = if name_index < 15 {
        vec![name_index]
    } else {
        vec![0x0f, name_index - 15]
    };
    field.push(value.len() as u8);
    field.extend_from_slice(value.as_bytes());
    field
}

/// A header block: `fields` are (static name index, value); see RFC 7541 appendix A
/// (1 `:authority`, 2 `:method`, 4 `:path`, 6 `:scheme`, 38 `host`).
pub fn header_block(fields: &[(u8, &str)]) -> Vec<u8> {
    fields.iter().flat_map(|(i, v)| literal(*i, v)).collect()
}

impl RawH2 {
    /// Connects to 127.0.0.1:`port` as `host` with ALPN h2, trusting `ca_pem`, and sends the
    /// connection preface with empty SETTINGS.
    pub async fn connect(host: &str, port: u16, ca_pem: &str) -> RawH2 {
        let mut tls = SslConnector::builder(SslMethod::tls()).unwrap();
        tls.cert_store_mut()
            .add_cert(X509::from_pem(ca_pem.as_bytes()).unwrap())
            .unwrap();
        tls.set_alpn_protos(b"\x02h2").unwrap();
        let ssl = tls.build().configure().unwrap().into_ssl(host).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut tls = SslStream::new(ssl, tcp).unwrap();
        Pin::new(&mut tls).connect().await.unwrap();
        let mut h2 = RawH2 {
            tls,
            unread: Vec::new(),
        };
        h2.raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        h2.frame(SETTINGS, 0, 0, &[]).await.unwrap();
        h2
    }

    async fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes).await
    }

    pub async fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.tls.write_all(&frame).await
    }

    /// Reads frames for up to `wait`: (type, stream, payload, flags), in order; `closed` when the
    /// server ended the connection.
    pub async fn read_frames(&mut self, wait: Duration) -> (Vec<Frame>, bool) {
        self.read_until(wait, |_| false).await
    }

    /// Reads frames until one satisfies `stop` (it is the last returned), for up to `wait`.
    pub async fn read_until(
        &mut self,
        wait: Duration,
        stop: impl Fn(&Frame) -> bool,
    ) -> (Vec<Frame>, bool) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = [0u8; 16384];
        let mut frames = Vec::new();
        loop {
            while self.unread.len() >= 9 {
                let buf = &self.unread;
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let frame = (buf[3], stream, buf[9..9 + len].to_vec(), buf[4]);
                self.unread.drain(..9 + len);
                let last = stop(&frame);
                frames.push(frame);
                if last {
                    return (frames, false);
                }
            }
            match tokio::time::timeout_at(deadline, self.tls.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (frames, true),
                Ok(Ok(n)) => self.unread.extend_from_slice(&chunk[..n]),
                Err(_) => return (frames, false),
            }
        }
    }
}
