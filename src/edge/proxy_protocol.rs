//! The PROXY protocol (v1 and v2) of L4 balancers in TLS pass-through, which hide the client's
//! address: with `proxy_protocol`, every connection to a service's listeners starts with the
//! balancer's header naming the client, read before TLS (or before HTTP on a plain listener),
//! and that address becomes the connection's peer: the header policy, `client_allow`, limits,
//! lockouts and the access log all see it. Only a peer in `trusted_proxies` may connect (the
//! listener's connection filter drops others at accept); a connection without a valid header is
//! closed. `UNKNOWN` (v1) and `LOCAL` (v2), which balancers send for their own health checks,
//! leave the TCP peer as it is, and a request on such a connection is the balancer's own: its
//! forwarding headers are not believed (see `named_in_header`). The socket digest's original
//! destination marks a connection whose peer a header named: it is where the client connected.

use crate::config::cidr::CidrSet;
use crate::observe::throttle::OncePerSecond;
use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use ppp::{v1, v2, HeaderResult, PartialResult};
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use tokio::io::AsyncReadExt;

/// The longest header read: a v1 line is at most 107 bytes, a v2 header 16 plus its addresses
/// and TLVs, which balancers keep short.
const HEADER_MAX: usize = 1024;

/// What a PROXY header says about the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Said {
    /// It carries the client's address and the one it connected to.
    Client {
        client: SocketAddr,
        destination: SocketAddr,
    },
    /// `UNKNOWN`, `LOCAL`, or an address family without IP addresses: the balancer speaks
    /// for itself.
    Itself,
}

fn client(client: SocketAddr, destination: SocketAddr) -> Said {
    Said::Client {
        client,
        destination,
    }
}

/// The header at the start of `bytes` and its length; `Ok(None)` when more bytes are needed.
pub fn parse(bytes: &[u8]) -> Result<Option<(Said, usize)>, String> {
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return Ok(None);
    }
    match result {
        HeaderResult::V1(Ok(header)) => {
            let said = match header.addresses {
                v1::Addresses::Tcp4(a) => client(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                v1::Addresses::Tcp6(a) => client(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                v1::Addresses::Unknown => Said::Itself,
            };
            Ok(Some((said, header.header.len())))
        }
        HeaderResult::V2(Ok(header)) => {
            let said = match (header.command, &header.addresses) {
                (v2::Command::Local, _) => Said::Itself,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => client(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => client(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                // Unspecified or Unix: the protocol says to use the connection's own addresses.
                (v2::Command::Proxy, _) => Said::Itself,
            };
            Ok(Some((said, header.len())))
        }
        HeaderResult::V1(Err(e)) => Err(format!("not a PROXY header: {e}")),
        HeaderResult::V2(Err(e)) => Err(format!("not a PROXY header: {e}")),
    }
}

/// Whether the peer of a connection with this socket digest was named by a PROXY header (not
/// the balancer speaking for itself).
pub fn named_in_header(socket: &SocketDigest) -> bool {
    matches!(socket.original_dst.get(), Some(Some(_)))
}

/// Reads the PROXY header of a new connection (see the module's comment).
pub struct ProxyProtocol {
    service: String,
    /// `client_allow`, applied to the address the header names.
    allow: CidrSet,
    report: OncePerSecond,
}

impl ProxyProtocol {
    pub fn new(service: &str, allow: &CidrSet) -> Self {
        ProxyProtocol {
            service: service.to_string(),
            allow: allow.clone(),
            report: OncePerSecond::default(),
        }
    }

    fn refuse(&self, peer: Option<SocketAddr>, why: &str) -> Box<pingora::Error> {
        if self.report.ready() {
            let peer = peer.map_or_else(|| "a peer".to_string(), |p| p.ip().to_string());
            log::warn!(
                "service {}: connection from {peer} closed: {why}",
                self.service
            );
        }
        pingora::Error::explain(pingora::ErrorType::HandshakeError, why.to_string())
    }
}

#[async_trait]
impl PreTlsProcess for ProxyProtocol {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let mut read = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        let (said, length) = loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| self.refuse(peer, &format!("reading the PROXY header: {e}")))?;
            if n == 0 && read.is_empty() {
                // A balancer's TCP check: it connects and hangs up. What follows (TLS, HTTP)
                // finds the connection closed, as on a listener without PROXY headers.
                return Ok(());
            }
            if n == 0 {
                return Err(self.refuse(peer, "closed inside the PROXY header"));
            }
            read.extend_from_slice(&chunk[..n]);
            match parse(&read) {
                Ok(Some(found)) => break found,
                Ok(None) if read.len() < HEADER_MAX => continue,
                Ok(None) => return Err(self.refuse(peer, "the PROXY header is too long")),
                Err(why) => return Err(self.refuse(peer, &why)),
            }
        };
        // What followed the header belongs to TLS or HTTP.
        stream.rewind(&read[length..]);
        let Said::Client {
            client,
            destination,
        } = said
        else {
            // Set here, the balancer's own connection cannot be taken later for one a header
            // named (a lookup of the socket's original destination would fill it otherwise).
            if let Some(socket) = stream.get_socket_digest() {
                let _ = socket.original_dst.set(None);
            }
            return Ok(());
        };
        let ip = client.ip().to_canonical();
        if !self.allow.is_empty() && !self.allow.contains(ip) {
            crate::observe::metrics::connection_refused(&self.service);
            return Err(self.refuse(Some(client), "the client is not in client_allow"));
        }
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        let _ = digest.peer_addr.set(Some(client.into()));
        let _ = digest.original_dst.set(Some(destination.into()));
        stream.set_socket_digest(digest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&u16::try_from(addresses.len()).unwrap().to_be_bytes());
        header.extend_from_slice(addresses);
        header
    }

    #[test]
    fn v1_names_the_client_or_itself() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let (said, length) = parse(line).unwrap().unwrap();
        assert_eq!(
            said,
            client(
                "203.0.113.7:51234".parse().unwrap(),
                "10.0.0.1:443".parse().unwrap()
            )
        );
        assert_eq!(&line[length..], b"GET / HTTP/1.1\r\n");
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n";
        assert_eq!(
            parse(v6).unwrap().unwrap().0,
            client(
                "[2001:db8::7]:51234".parse().unwrap(),
                "[2001:db8::1]:443".parse().unwrap()
            )
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0,
            Said::Itself
        );
        assert_eq!(
            parse(b"PROXY TCP4 203.0.113.7").unwrap(),
            None,
            "more to read"
        );
    }

    #[test]
    fn v2_names_the_client_or_itself() {
        let mut addresses = vec![203, 0, 113, 7, 10, 0, 0, 1];
        addresses.extend_from_slice(&51234u16.to_be_bytes());
        addresses.extend_from_slice(&443u16.to_be_bytes());
        let mut header = v2(1, 0x11, &addresses);
        let length = header.len();
        header.extend_from_slice(b"\x16\x03\x01");
        let (said, found) = parse(&header).unwrap().unwrap();
        assert_eq!(
            said,
            client(
                "203.0.113.7:51234".parse().unwrap(),
                "10.0.0.1:443".parse().unwrap()
            )
        );
        assert_eq!(found, length);
        assert_eq!(parse(&v2(0, 0, &[])).unwrap().unwrap().0, Said::Itself);
        assert_eq!(
            parse(&v2(1, 0, &[])).unwrap().unwrap().0,
            Said::Itself,
            "AF_UNSPEC"
        );
        assert_eq!(parse(&header[..20]).unwrap(), None, "more to read");
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PROXY TCP4 nonsense here 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
