//! The request every rule of the proxy judges: whatever form its target came in, it is reduced
//! once, before any rule runs, to an origin-form target with a normalised path, and that is the
//! request routing, limits, authentication, the cache and substitution look at and the upstream
//! receives. Rules that match path prefixes or suffixes match the path without its segments'
//! `;parameters`, as the internal servers (servlet containers) route it.

use crate::edge::{path, upstream};
use http::header::{HeaderValue, HOST};
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;
use std::borrow::Cow;

/// Why a request target was refused (answered `400`).
pub type Refusal = &'static str;

/// What `reduce` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reduced {
    /// The path rules match, when it differs from the request's (normalised) path: that path
    /// without parameters.
    pub bare: Option<Box<str>>,
    /// The client named the authority in the target itself (absolute-form), so it must agree
    /// with the route the request takes.
    pub absolute: bool,
}

/// Reduces `req` to origin form with a normalised path. An absolute-form target is accepted
/// only with an `http` or `https` scheme, as Pingora's own parse delimits it; its authority
/// becomes `Host` when the request has none (Pingora refuses one that differs from `Host`).
pub fn reduce(req: &mut RequestHeader) -> Result<Reduced, Refusal> {
    if req
        .uri
        .scheme_str()
        .is_some_and(|s| !http_family(s.as_bytes()))
    {
        return Err("the request's scheme is neither http nor https");
    }
    if !req.raw_path_is_utf8() {
        return Err("the request target is not UTF-8");
    }
    let absolute = match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::None if req.raw_path().first() == Some(&b'/') => false,
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } if http_family(scheme) => {
            if !req.headers.contains_key(HOST) {
                let host = HeaderValue::from_bytes(authority)
                    .map_err(|_| "the request target's authority is not a valid host")?;
                req.insert_header(HOST, host)
                    .map_err(|_| "the request target's authority is not a valid host")?;
            }
            true
        }
        RawTargetAuthority::Absolute { .. } => {
            return Err("the request target is a URL whose scheme is neither http nor https")
        }
        RawTargetAuthority::AmbiguousAuthority => {
            return Err("the request target is an ambiguous URL")
        }
        RawTargetAuthority::None => {
            return Err("the request target is neither a path nor an http(s) URL")
        }
    };
    let normal = path::normalize(req.uri.path())?;
    let bare = match path::without_parameters(&normal) {
        Cow::Owned(bare) => Some(bare.into_boxed_str()),
        Cow::Borrowed(_) => None,
    };
    let changed = matches!(&normal, Cow::Owned(p) if p != req.uri.path());
    if absolute || changed {
        let normal = normal.into_owned();
        upstream::set_path(req, &normal)
            .map_err(|_| "the normalised path is not a valid target")?;
    }
    Ok(Reduced { bare, absolute })
}

fn http_family(scheme: &[u8]) -> bool {
    scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")
}

/// The host a reduced request names, without port or trailing dot: its HTTP/2 authority when
/// there is one, else `Host` (an absolute-form authority has become `Host` by now).
pub fn request_host(req: &RequestHeader) -> Option<&[u8]> {
    let authority = match req.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => req.headers.get(HOST)?.as_bytes(),
    };
    host_of(authority)
}

/// `host[:port]` or `[v6][:port]` -> host. `None` when there is no host at all.
fn host_of(authority: &[u8]) -> Option<&[u8]> {
    let authority = match authority.iter().rposition(|b| *b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    let host = if let Some(rest) = authority.strip_prefix(b"[") {
        let end = rest.iter().position(|b| *b == b']')?;
        &rest[..end]
    } else {
        match authority.iter().rposition(|b| *b == b':') {
            Some(colon) => &authority[..colon],
            None => authority,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &[u8], host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target, None).unwrap();
        if let Some(h) = host {
            r.insert_header("Host", h).unwrap();
        }
        r
    }

    /// The target that would go upstream, and what rules match, after `reduce`.
    fn reduced(target: &[u8], host: Option<&str>) -> Result<(String, Reduced), Refusal> {
        let mut r = req(target, host);
        let found = reduce(&mut r)?;
        Ok((String::from_utf8(r.raw_path().to_vec()).unwrap(), found))
    }

    #[test]
    fn normal_origin_form_is_left_alone() {
        let (target, found) = reduced(b"/drapi/v1/tasks?x=1", Some("dc")).unwrap();
        assert_eq!(target, "/drapi/v1/tasks?x=1");
        assert_eq!(found, Reduced::default());
    }

    #[test]
    fn tricks_that_escaped_path_rules_reach_the_rules_and_the_upstream_normalised() {
        for trick in ["//drapi/v1/tasks", "/./drapi/v1/tasks", "/%64rapi/v1/tasks"] {
            let (target, _) = reduced(trick.as_bytes(), Some("dc")).unwrap();
            assert_eq!(target, "/drapi/v1/tasks", "{trick}");
        }
        let (target, _) = reduced(b"/./dataconn/x?a=b", Some("dc")).unwrap();
        assert_eq!(target, "/dataconn/x?a=b");
    }

    #[test]
    fn rules_match_the_path_without_parameters() {
        let (target, found) = reduced(b"/finesse/api/User/alice;x.js", Some("f")).unwrap();
        assert_eq!(
            target, "/finesse/api/User/alice;x.js",
            "the upstream gets them"
        );
        assert_eq!(found.bare.as_deref(), Some("/finesse/api/User/alice"));
        let (_, found) = reduced(b"/dataconn;x=1/data", Some("dc")).unwrap();
        assert_eq!(found.bare.as_deref(), Some("/dataconn/data"));
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let (target, found) = reduced(
            b"http://dc.example.com/drapi/v1?x=1",
            Some("dc.example.com"),
        )
        .unwrap();
        assert_eq!(target, "/drapi/v1?x=1");
        assert!(found.absolute);
        let (target, _) = reduced(b"HTTPS://dc.example.com", None).unwrap();
        assert_eq!(target, "/");
        let mut r = req(b"https://f.example.com:8445/./a", None);
        reduce(&mut r).unwrap();
        assert_eq!(r.raw_path(), b"/a");
        assert_eq!(request_host(&r), Some(&b"f.example.com"[..]));
    }

    #[test]
    fn other_targets_are_refused() {
        for bad in [
            &b"x1://dc.example.com/drapi/v1"[..],
            b"ftp://dc.example.com/x",
            b"mailto:x@example.com",
            b"http:/\\dc.example.com/x",
            b"*",
            b"drapi/v1",
            b"/desktop/../../etc",
            b"/a\xff",
        ] {
            assert!(
                reduced(bad, Some("dc.example.com")).is_err(),
                "{} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn host_header_forms() {
        let host = |h: &str| request_host(&req(b"/", Some(h))).map(|b| b.to_vec());
        assert_eq!(
            host("finesse1.example.com:8445"),
            Some(b"finesse1.example.com".to_vec())
        );
        assert_eq!(
            host("finesse1.example.com."),
            Some(b"finesse1.example.com".to_vec())
        );
        assert_eq!(host("[fd00::1]:443"), Some(b"fd00::1".to_vec()));
        assert_eq!(host(""), None);
        assert_eq!(request_host(&req(b"/", None)), None);
    }
}
