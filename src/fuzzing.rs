//! The properties the fuzz targets in `fuzz/` check, as plain functions: the targets call them
//! on what libFuzzer generates, and a unit test replays the committed seeds and every input that
//! once failed (`fuzz/corpus/`, `fuzz/regressions/`) in `make test`.

use crate::config::cidr::CidrSet;
use crate::config::{Authority, ClientPolicy};
use crate::edge::target::{self, Reduced};
use crate::edge::{headers, identity, path};
use crate::finesse::substitution::{Rewriter, StreamRewrite};
use bytes::Bytes;
use pingora::http::RequestHeader;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

/// The loader on arbitrary text answers with a configuration or with problems naming the file,
/// never a panic. Names resolve to loopback, without DNS.
pub fn config_loader(data: &[u8]) {
    fn loopback(_host: &str, port: u16) -> Result<SocketAddr, String> {
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = crate::config::parse_with(text, Path::new("/nonexistent/fuzz.yaml"), loopback) {
        assert!(!e.lines.is_empty());
        for line in &e.lines {
            assert!(line.starts_with("/nonexistent/fuzz.yaml"), "{line}");
        }
    }
}

/// Whatever headers a client sends (one per line; the first byte says whether the peer is a
/// trusted proxy), the request that goes upstream has exactly one Host (the route's), one
/// TrackingID, an X-Forwarded-For ending with the client and the proxy, no Accept-Encoding,
/// and from an untrusted peer no forged client address or Forwarded header.
pub fn header_policy(data: &[u8]) {
    let (flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let trusted_peer = flags & 1 == 1;
    let mut req = RequestHeader::build("GET", b"/desktop/", None).expect("static request");
    for line in rest.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        let _ = req.append_header(name, value);
    }
    let peer: IpAddr = [198, 51, 100, 7].into();
    let clients = ClientPolicy {
        trusted_proxies: match trusted_peer {
            true => CidrSet::new(vec!["198.51.100.0/24".parse().expect("CIDR")]),
            false => CidrSet::new(vec![]),
        },
        ..ClientPolicy::default()
    };
    let client = identity::Resolver::new(&clients, 64).resolve(peer, true, &req.headers);
    let tid = headers::tracking_id(&req.headers);
    let public = Authority::parse("finesse1.example.com:8445").expect("authority");
    let route = headers::RouteHeaders::new(&public, true, true);
    let proxy: IpAddr = [10, 0, 0, 1].into();
    if headers::apply_request(&mut req, &route, &client, proxy, &tid).is_err() {
        return;
    }
    let hosts: Vec<_> = req.headers.get_all("host").iter().collect();
    assert_eq!(hosts, ["finesse1.example.com:8445"]);
    assert_eq!(req.headers.get_all("trackingid").iter().count(), 1);
    let xff = req.headers.get("x-forwarded-for").expect("XFF");
    let xff = xff.to_str().expect("ASCII");
    assert!(xff.ends_with(&format!("{}, 10.0.0.1", client.ip)), "{xff}");
    if !trusted_peer {
        assert_eq!(client.ip, peer);
        assert_eq!(xff, "198.51.100.7, 10.0.0.1");
        assert!(req.headers.get("forwarded").is_none());
    }
    assert!(req.headers.get("accept-encoding").is_none());
}

/// Whatever target a client sends, the request every rule judges is in origin form with a
/// normalised path, reducing it again changes nothing, and the path rules match has no
/// `;parameters`.
pub fn request_target(data: &[u8]) {
    let Ok(mut req) = RequestHeader::build("GET", data, None) else {
        return;
    };
    let Ok(reduced) = target::reduce(&mut req) else {
        return;
    };
    let once = req.raw_path().to_vec();
    assert!(
        once.starts_with(b"/"),
        "{:?}",
        String::from_utf8_lossy(&once)
    );
    let path = req.uri.path();
    assert_eq!(
        path::normalize(path).as_deref(),
        Ok(path),
        "normalised twice"
    );
    let rules = reduced.bare.as_deref().unwrap_or(path);
    assert!(!rules.contains(';'), "{rules}");
    assert_eq!(rules, path::without_parameters(path));
    let again = target::reduce(&mut req).expect("a reduced target is accepted");
    assert_eq!(req.raw_path(), &once[..]);
    assert_eq!(
        again,
        Reduced {
            absolute: false,
            ..reduced
        }
    );
}

/// However a body is cut into chunks, the streamed rewrite equals the rewrite of the whole.
/// Layout: a pattern count, then per pattern a length and `from`, a length and `to` (lengths
/// modulo 16), then the body, whose bytes also decide the cuts.
pub fn substitution(data: &[u8]) {
    let Some((&count, mut rest)) = data.split_first() else {
        return;
    };
    let take = |rest: &mut &[u8]| -> Option<String> {
        let (&len, tail) = rest.split_first()?;
        let len = usize::from(len % 16).min(tail.len());
        let (text, tail) = tail.split_at(len);
        *rest = tail;
        Some(String::from_utf8_lossy(text).into_owned())
    };
    let mut pairs = Vec::new();
    for _ in 0..(count % 4) {
        let (Some(from), Some(to)) = (take(&mut rest), take(&mut rest)) else {
            return;
        };
        pairs.push((from, to));
    }
    let Some(rewriter) = Rewriter::new(&pairs) else {
        return;
    };
    let rewriter = Arc::new(rewriter);
    let whole = rewriter.apply(rest);
    let mut stream = StreamRewrite::new(rewriter);
    let mut out = Vec::new();
    let mut body = rest;
    let mut cut = 0usize;
    if body.is_empty() {
        out.extend_from_slice(&stream.push(Bytes::new(), true));
    }
    while !body.is_empty() {
        cut = (cut * 31 + usize::from(body[0]) + 1) % 7 + 1;
        let (chunk, tail) = body.split_at(cut.min(body.len()));
        out.extend_from_slice(&stream.push(Bytes::copy_from_slice(chunk), tail.is_empty()));
        body = tail;
    }
    assert_eq!(out, whole);
}

#[cfg(test)]
mod tests {
    /// Every committed seed and every input that once made a fuzz target fail, replayed.
    #[test]
    fn committed_fuzz_inputs_pass() {
        let top = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        type Check = fn(&[u8]);
        let targets: [(&str, Check); 4] = [
            ("config_loader", super::config_loader),
            ("header_policy", super::header_policy),
            ("request_target", super::request_target),
            ("substitution", super::substitution),
        ];
        let mut replayed = 0;
        for (target, check) in targets {
            for folder in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(top.join(folder).join(target)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.unwrap().path();
                    if path.extension().is_some_and(|e| e == "md") {
                        continue;
                    }
                    check(&std::fs::read(&path).unwrap());
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= 5, "only {replayed} inputs found");
    }
}
