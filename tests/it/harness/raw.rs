//! An upstream that speaks HTTP/1.1 byte by byte, for what a well-behaved server would hide:
//! it records exactly what arrived on each connection, and it can misbehave on purpose
//! (garbage, a reset in the middle of a body, silence, slowness). ccedge's health checks are
//! answered 200 and not recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Reads each request (header and body) and answers `200 ok`, keeping the connection.
    Answer,
    /// Answers with bytes that are not HTTP.
    Garbage,
    /// Sends a header announcing 100,000 bytes, 100 of them, then resets the connection.
    ResetMidBody,
    /// Reads the request and never answers.
    Silent,
    /// Answers after this many milliseconds.
    Slow(u64),
}

pub struct RawUpstream {
    pub addr: SocketAddr,
    /// The bytes of every request (health checks aside), one entry per request as read.
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    pub async fn start(behaviour: Behaviour) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(tcp, behaviour, seen.clone()));
            }
        });
        RawUpstream {
            addr,
            requests,
            task,
        }
    }

    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Every request received, as text (lossy).
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
}

async fn serve(mut tcp: TcpStream, behaviour: Behaviour, seen: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut pending = Vec::new();
    loop {
        let Some(request) = read_request(&mut tcp, &mut pending).await else {
            return;
        };
        let health = String::from_utf8_lossy(&request).contains("ccedge-health/");
        if !health {
            seen.lock().unwrap().push(request);
        }
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
        let answer = match behaviour {
            _ if health => tcp.write_all(ok).await,
            Behaviour::Answer => tcp.write_all(ok).await,
            Behaviour::Garbage => {
                tcp.write_all(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n")
                    .await
            }
            Behaviour::ResetMidBody => {
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n";
                let _ = tcp.write_all(head).await;
                let _ = tcp.write_all(&[b'x'; 100]).await;
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                return;
            }
            Behaviour::Silent => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Behaviour::Slow(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                tcp.write_all(ok).await
            }
        };
        if answer.is_err() || matches!(behaviour, Behaviour::Garbage) {
            return;
        }
    }
}

/// Reads one request (header, then a body framed by Content-Length or chunked) from `tcp`,
/// starting with what is `pending` from the previous read. `None` once the connection ends.
async fn read_request(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        if let Some(i) = find(pending, b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..header_end]).to_ascii_lowercase();
    let chunked = head.contains("\r\ntransfer-encoding:") && head.contains("chunked");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let end = loop {
        let body = &pending[header_end..];
        let done = if chunked {
            find(body, b"0\r\n\r\n").map(|i| header_end + i + 5)
        } else {
            (body.len() >= length).then_some(header_end + length)
        };
        if let Some(end) = done {
            break end;
        }
        let n = match tcp.read(&mut chunk).await {
            Ok(n) if n > 0 => n,
            _ => break pending.len(),
        };
        pending.extend_from_slice(&chunk[..n]);
    };
    let rest = pending.split_off(end);
    Some(std::mem::replace(pending, rest))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
