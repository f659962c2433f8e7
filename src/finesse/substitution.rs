//! Response substitution: literal replacements over streamed bodies (one multi-pattern matcher,
//! correct when a match spans chunks, never buffering a whole body) and `Location` rewriting.

use crate::config::{Authority, FinesseServer, Substitution, TEXT_TYPES};
use aho_corasick::{AhoCorasick, MatchKind};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// A set of literal replacements compiled into one leftmost-longest matcher.
pub struct Rewriter {
    matcher: AhoCorasick,
    replacements: Vec<Vec<u8>>,
    /// Length of the longest pattern: a match can start at most this many bytes before a chunk
    /// ends and still be incomplete.
    longest: usize,
}

impl Rewriter {
    /// `None` when there is nothing to replace. Earlier pairs win over later pairs with the same
    /// `from`.
    pub fn new(pairs: &[(String, String)]) -> Option<Rewriter> {
        let mut patterns: Vec<&str> = Vec::new();
        let mut replacements = Vec::new();
        for (from, to) in pairs {
            if !from.is_empty() && !patterns.contains(&from.as_str()) {
                patterns.push(from);
                replacements.push(to.as_bytes().to_vec());
            }
        }
        if patterns.is_empty() {
            return None;
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("literal patterns compile");
        Some(Rewriter {
            matcher,
            longest: patterns.iter().map(|p| p.len()).max().unwrap_or(1),
            replacements,
        })
    }

    /// Rewrites one whole buffer: the reference the streaming form must agree with (tests and
    /// the fuzz target compare them).
    pub fn apply(&self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.matcher
            .try_replace_all_with_bytes(text, &mut out, |m, _, dst| {
                dst.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
                true
            })
            .expect("leftmost-longest supports replace");
        out
    }
}

/// One response body going through a `Rewriter`, chunk by chunk. Holds back at most the
/// longest pattern's length minus one byte between chunks.
pub struct StreamRewrite {
    rewriter: Arc<Rewriter>,
    held: Vec<u8>,
}

impl StreamRewrite {
    pub fn new(rewriter: Arc<Rewriter>) -> StreamRewrite {
        StreamRewrite {
            rewriter,
            held: Vec::new(),
        }
    }

    /// Takes the next chunk; returns what can be sent now. At `end`, everything held is sent.
    pub fn push(&mut self, chunk: Bytes, end: bool) -> Bytes {
        if self.held.is_empty() {
            // The usual case: nothing held back and no match in this chunk. It goes out as it
            // came, less its tail, which a match could still begin in.
            let settled = self.settled(chunk.len(), end);
            let first = self.rewriter.matcher.find(&chunk[..]);
            if first.is_none_or(|m| m.start() >= settled) {
                self.held.extend_from_slice(&chunk[settled..]);
                return chunk.slice(..settled);
            }
        }
        let mut input = std::mem::take(&mut self.held);
        input.extend_from_slice(&chunk);
        // Matches starting before `settled` are complete; later ones may still grow.
        let settled = self.settled(input.len(), end);
        let mut out = BytesMut::with_capacity(input.len() + 64);
        let mut done = 0;
        for m in self.rewriter.matcher.find_iter(&input) {
            if m.start() >= settled {
                break;
            }
            out.extend_from_slice(&input[done..m.start()]);
            out.extend_from_slice(&self.rewriter.replacements[m.pattern().as_usize()]);
            done = m.end();
        }
        let keep_from = done.max(settled);
        out.extend_from_slice(&input[done..keep_from]);
        self.held = input.split_off(keep_from);
        out.freeze()
    }

    /// How much of `len` bytes can be decided now: all at the end, else all but a pattern's
    /// length minus one.
    fn settled(&self, len: usize, end: bool) -> usize {
        if end {
            len
        } else {
            len.saturating_sub(self.rewriter.longest - 1)
        }
    }
}

/// Which rewriter a Finesse site applies to a response.
pub struct Plan {
    rules: Vec<Rule>,
    /// `rewrite_upstream_hosts` alone, for text responses no rule matches.
    hosts: Option<Arc<Rewriter>>,
}

struct Rule {
    path_prefix: String,
    content_types: Vec<String>,
    rewriter: Arc<Rewriter>,
}

impl Plan {
    pub fn new(
        substitutions: &[Substitution],
        servers: &[FinesseServer],
        rewrite_hosts: bool,
    ) -> Plan {
        let host_pairs: Vec<(String, String)> = if rewrite_hosts {
            servers
                .iter()
                .map(|s| (s.upstream.authority.to_string(), s.public.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        let rules = substitutions
            .iter()
            .filter_map(|s| {
                let pairs: Vec<_> = s.replace.iter().chain(&host_pairs).cloned().collect();
                Some(Rule {
                    path_prefix: s.path_prefix.clone(),
                    content_types: s.content_types.clone(),
                    rewriter: Arc::new(Rewriter::new(&pairs)?),
                })
            })
            .collect();
        Plan {
            rules,
            hosts: Rewriter::new(&host_pairs).map(Arc::new),
        }
    }

    /// The first rule whose path prefix and content type match applies (its replacements and the
    /// host rewrites); with no rule, text responses still get the host rewrites.
    pub fn for_response(&self, path: &str, content_type: Option<&str>) -> Option<Arc<Rewriter>> {
        let media = media_type(content_type?);
        let is = |t: &str| t.eq_ignore_ascii_case(media);
        let rule = self.rules.iter().find(|r| {
            path.starts_with(r.path_prefix.as_str()) && r.content_types.iter().any(|t| is(t))
        });
        match rule {
            Some(rule) => Some(rule.rewriter.clone()),
            None if TEXT_TYPES.iter().any(|t| is(t)) => self.hosts.clone(),
            None => None,
        }
    }
}

/// `text/html; charset=utf-8` -> `text/html`.
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// `Location` values that name an upstream, rewritten to the public authority and scheme.
pub struct Locations {
    /// Upstream host and port, and the public authority that replaces them.
    map: Vec<(String, u16, String)>,
    public_scheme: &'static str,
}

impl Locations {
    pub fn new(servers: &[FinesseServer], https: bool) -> Locations {
        Locations {
            map: servers
                .iter()
                .map(|s| {
                    let up: &Authority = &s.upstream.authority;
                    (up.host.clone(), up.port, s.public.to_string())
                })
                .collect(),
            public_scheme: if https { "https" } else { "http" },
        }
    }

    /// The public form of an absolute `Location` naming an upstream; `None` leaves it alone.
    pub fn rewrite(&self, location: &str) -> Option<String> {
        let (scheme, rest) = location.split_once("://")?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return None,
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (host, port) = split_authority(authority, default_port)?;
        let (_, _, public) = self
            .map
            .iter()
            .find(|(h, p, _)| h.eq_ignore_ascii_case(host) && *p == port)?;
        let scheme = if scheme.starts_with("ws") {
            if self.public_scheme == "https" {
                "wss"
            } else {
                "ws"
            }
        } else {
            self.public_scheme
        };
        Some(format!("{scheme}://{public}{tail}"))
    }
}

fn split_authority(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Role, Upstream};

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn stream(rw: &Arc<Rewriter>, chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = StreamRewrite::new(rw.clone());
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&s.push(Bytes::copy_from_slice(c), i + 1 == chunks.len()));
        }
        out
    }

    #[test]
    fn match_split_across_chunks() {
        let rw = Arc::new(
            Rewriter::new(&pairs(&[(
                "chat1.cc.internal:5280",
                "chat.example.com:5280",
            )]))
            .unwrap(),
        );
        let out = stream(&rw, &[b"{\"host\":\"chat1.cc.in", b"ternal:5280\"}"]);
        assert_eq!(out, b"{\"host\":\"chat.example.com:5280\"}");
    }

    #[test]
    fn every_split_point_gives_the_whole_buffer_result() {
        let rw = Arc::new(
            Rewriter::new(&pairs(&[
                ("abc", "X"),
                ("abcd", "YY"),
                ("bc", "Z"),
                ("cc", ""),
            ]))
            .unwrap(),
        );
        let text = b"xabcdabcbccabcabcdd-ab";
        let whole = rw.apply(text);
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let out = stream(&rw, &[&text[..a], &text[a..b], &text[b..]]);
                assert_eq!(out, whole, "split at {a},{b}");
            }
        }
        assert_eq!(whole, b"xYYXZcXYYd-ab");
    }

    #[test]
    fn holds_back_little_and_passes_plain_text_through() {
        let rw = Arc::new(Rewriter::new(&pairs(&[("needle", "pin")])).unwrap());
        let mut s = StreamRewrite::new(rw);
        let first = s.push(Bytes::from_static(&[b'a'; 1000]), false);
        assert_eq!(first.len(), 1000 - 5);
        assert_eq!(s.push(Bytes::new(), true).len(), 5);
    }

    fn server(public: &str, upstream: &str) -> FinesseServer {
        let authority = Authority::parse(upstream).unwrap();
        FinesseServer {
            public: Authority::parse(public).unwrap(),
            upstream: Upstream {
                addr: "127.0.0.1:1".parse().unwrap(),
                authority,
            },
            role: Role::Finesse,
            listen_port: 443,
            upstream_tls: None,
        }
    }

    #[test]
    fn plan_picks_first_matching_rule_and_hosts_for_text() {
        let servers = [server(
            "finesse1.example.com:443",
            "finesse1.cc.internal:8445",
        )];
        let subs = [Substitution {
            path_prefix: "/finesse/api/".into(),
            content_types: vec!["application/xml".into()],
            replace: pairs(&[("chat1.cc.internal:5280", "chat.example.com:5280")]),
        }];
        let plan = Plan::new(&subs, &servers, true);
        let rw = plan
            .for_response("/finesse/api/User", Some("application/xml; charset=UTF-8"))
            .unwrap();
        assert_eq!(
            rw.apply(b"chat1.cc.internal:5280 finesse1.cc.internal:8445"),
            b"chat.example.com:5280 finesse1.example.com:443"
        );
        let hosts = plan
            .for_response("/desktop/x.js", Some("text/javascript"))
            .unwrap();
        assert_eq!(
            hosts.apply(b"chat1.cc.internal:5280 finesse1.cc.internal:8445"),
            b"chat1.cc.internal:5280 finesse1.example.com:443"
        );
        assert!(plan
            .for_response("/desktop/x.png", Some("image/png"))
            .is_none());
        assert!(plan.for_response("/desktop/x", None).is_none());
        assert!(Plan::new(&[], &servers, false)
            .for_response("/", Some("text/html"))
            .is_none());
    }

    #[test]
    fn locations_naming_an_upstream_become_public() {
        let servers = [
            server("finesse1.example.com:443", "finesse1.cc.internal:8445"),
            server("livedata.example.com:12005", "ld1.cc.internal:443"),
        ];
        let loc = Locations::new(&servers, true);
        assert_eq!(
            loc.rewrite("http://FINESSE1.cc.internal:8445/desktop/?a=1")
                .as_deref(),
            Some("https://finesse1.example.com:443/desktop/?a=1")
        );
        assert_eq!(
            loc.rewrite("https://ld1.cc.internal/socket").as_deref(),
            Some("https://livedata.example.com:12005/socket")
        );
        assert_eq!(
            loc.rewrite("wss://ld1.cc.internal:443").as_deref(),
            Some("wss://livedata.example.com:12005")
        );
        assert_eq!(loc.rewrite("https://finesse1.cc.internal:9999/"), None);
        assert_eq!(loc.rewrite("/relative/path"), None);
        assert_eq!(loc.rewrite("https://elsewhere.example.net/"), None);
    }
}
