//! What a request presents to prove who it is: an `Authorization` header (Basic or Bearer) or,
//! for a WebSocket upgrade, the entry after `xmpp` in `Sec-WebSocket-Protocol`. Browsers cannot
//! put a space, `/` or `=` in a WebSocket subprotocol, so that entry may carry Basic credentials
//! as base64 or base64url (with or without padding), a JWT, or an opaque token; a full
//! `Basic ...` or `Bearer ...` value is accepted too, from clients that can send one.
//!
//! A credential lives only as long as its request: it is never logged, and what outlives the
//! request is a keyed hash of it (see `verdicts`).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};

/// A credential, in the form an `Authorization` header carries it.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential {
    /// `Basic <standard base64 of user:password>`. Taken as the request sent it when it is in
    /// that form already (no copy, nothing decoded until a check needs it).
    Basic { authorization: HeaderValue },
    /// `Bearer <token>`: a JWT or an opaque token.
    Bearer { authorization: HeaderValue },
}

/// What a request carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    Nothing,
    /// Something in the credential's place that is not a usable credential (malformed Basic,
    /// a scheme ccedge does not check).
    Unusable(&'static str),
    Credential(Credential),
}

impl Credential {
    /// The `Authorization` value to send to a validator; also what the keyed hash is taken of.
    pub fn authorization(&self) -> &HeaderValue {
        match self {
            Credential::Basic { authorization } | Credential::Bearer { authorization } => {
                authorization
            }
        }
    }

    /// The token of a Bearer credential.
    pub fn bearer_token(&self) -> Option<&str> {
        match self {
            Credential::Bearer { authorization } => authorization.to_str().ok()?.get(7..),
            Credential::Basic { .. } => None,
        }
    }

    /// The user name of a Basic credential; `None` for a Bearer token, or when the Basic
    /// credential is not base64 of `user:password`.
    pub fn user(&self) -> Option<String> {
        let Credential::Basic { authorization } = self else {
            return None;
        };
        let encoded = authorization.as_bytes().get(6..)?;
        let pair = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
        let (user, _) = pair.split_once(':')?;
        Some(user.to_string())
    }
}

/// The credential `headers` present; for a WebSocket upgrade (`websocket`) the subprotocol entry
/// counts when there is no `Authorization` header.
pub fn presented(headers: &HeaderMap, websocket: bool) -> Presented {
    if let Some(value) = headers.get(AUTHORIZATION) {
        return from_authorization(value);
    }
    if !websocket {
        return Presented::Nothing;
    }
    let mut entries = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    if !entries.any(|e| e.eq_ignore_ascii_case("xmpp")) {
        return Presented::Nothing;
    }
    match entries.next() {
        Some(entry) if !entry.is_empty() => from_subprotocol(entry),
        _ => Presented::Nothing,
    }
}

fn from_authorization(header: &HeaderValue) -> Presented {
    if canonical_basic(header.as_bytes()) {
        return Presented::Credential(Credential::Basic {
            authorization: header.clone(),
        });
    }
    from_value(header.as_bytes())
}

/// `Basic ` and standard, padded base64: the form browsers send, kept as it is.
fn canonical_basic(value: &[u8]) -> bool {
    value.strip_prefix(b"Basic ").is_some_and(|b64| {
        !b64.is_empty()
            && b64.len() % 4 == 0
            && b64
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    })
}

fn from_value(value: &[u8]) -> Presented {
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return Presented::Unusable("the Authorization header has no scheme");
    };
    let (scheme, rest) = value.split_at(space);
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"basic") {
        basic(rest, &[STANDARD])
    } else if scheme.eq_ignore_ascii_case(b"bearer") {
        bearer(rest)
    } else {
        Presented::Unusable("the Authorization scheme is neither Basic nor Bearer")
    }
}

fn from_subprotocol(entry: &str) -> Presented {
    let lower = entry.get(..7).map(str::to_ascii_lowercase);
    if lower
        .as_deref()
        .is_some_and(|l| l.starts_with("basic ") || l == "bearer ")
    {
        return from_value(entry.as_bytes());
    }
    if looks_like_jwt(entry) {
        return bearer(entry.as_bytes());
    }
    match basic(
        entry.as_bytes(),
        &[STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD],
    ) {
        Presented::Credential(c) => Presented::Credential(c),
        _ => bearer(entry.as_bytes()),
    }
}

/// Three dot-separated base64url parts.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `encoded` as Basic credentials, decoded by the first engine that accepts it; the header value
/// is always standard base64, so one user's credential is the same whichever way it came.
fn basic(encoded: &[u8], engines: &[base64::engine::GeneralPurpose]) -> Presented {
    let decoded = engines.iter().find_map(|e| e.decode(encoded).ok());
    let Some(pair) = decoded.and_then(|d| String::from_utf8(d).ok()) else {
        return Presented::Unusable("the Basic credentials are not base64 of user:password");
    };
    if !pair.contains(':') {
        return Presented::Unusable("the Basic credentials have no ':' between user and password");
    }
    let value = format!("Basic {}", STANDARD.encode(pair.as_bytes()));
    match HeaderValue::from_str(&value) {
        Ok(authorization) => Presented::Credential(Credential::Basic { authorization }),
        Err(_) => Presented::Unusable("the Basic credentials cannot be forwarded"),
    }
}

fn bearer(token: &[u8]) -> Presented {
    let token = token.trim_ascii();
    let visible = |b: &u8| b.is_ascii_graphic();
    if token.is_empty() || !token.iter().all(visible) {
        return Presented::Unusable("the Bearer token is empty or not printable");
    }
    let mut value = Vec::with_capacity(7 + token.len());
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(token);
    match HeaderValue::from_bytes(&value) {
        Ok(authorization) => Presented::Credential(Credential::Bearer { authorization }),
        Err(_) => Presented::Unusable("the Bearer token cannot be forwarded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn basic_of(user: &str, password: &str) -> String {
        STANDARD.encode(format!("{user}:{password}"))
    }

    fn credential(p: Presented) -> Credential {
        match p {
            Presented::Credential(c) => c,
            other => panic!("no credential: {other:?}"),
        }
    }

    #[test]
    fn basic_header() {
        let value = format!("basic {}", basic_of("agent1", "s3cret:x"));
        let c = credential(presented(&headers(&[("authorization", &value)]), false));
        assert_eq!(c.user().as_deref(), Some("agent1"));
        assert_eq!(
            c.authorization().to_str().unwrap(),
            format!("Basic {}", basic_of("agent1", "s3cret:x"))
        );
    }

    #[test]
    fn bearer_header() {
        let c = credential(presented(
            &headers(&[("authorization", "Bearer abc.def")]),
            false,
        ));
        assert_eq!(c.bearer_token(), Some("abc.def"));
        assert_eq!(c.user(), None);
    }

    #[test]
    fn unusable_and_missing() {
        let p = |v: &str| presented(&headers(&[("authorization", v)]), false);
        assert!(matches!(p("Basic !!!"), Presented::Unusable(_)));
        let no_colon = format!("basic {}", STANDARD.encode("nocolon"));
        assert!(matches!(p(&no_colon), Presented::Unusable(_)));
        // The browser's own form is taken as sent; a check finds it malformed when it needs to.
        let taken = credential(p(&format!("Basic {}", STANDARD.encode("nocolon"))));
        assert_eq!(taken.user(), None);
        assert!(matches!(p("Negotiate abc"), Presented::Unusable(_)));
        assert!(matches!(p("Bearer "), Presented::Unusable(_)));
        assert_eq!(presented(&headers(&[]), true), Presented::Nothing);
    }

    #[test]
    fn websocket_subprotocol_forms_give_the_same_credential() {
        let standard = basic_of("agent1", "pw?>");
        let url = URL_SAFE_NO_PAD.encode("agent1:pw?>");
        assert_ne!(standard, url);
        let header_form = credential(presented(
            &headers(&[("authorization", &format!("Basic {standard}"))]),
            false,
        ));
        for entry in [standard.clone(), url, format!("Basic {standard}")] {
            let proto = format!("xmpp, {entry}");
            let c = credential(presented(
                &headers(&[("sec-websocket-protocol", &proto)]),
                true,
            ));
            assert_eq!(c, header_form, "{entry}");
        }
    }

    #[test]
    fn websocket_jwt_and_opaque_tokens_are_bearer() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let c = credential(presented(
            &headers(&[("sec-websocket-protocol", &format!("xmpp, {jwt}"))]),
            true,
        ));
        assert_eq!(c.bearer_token(), Some(jwt));
        let c = credential(presented(
            &headers(&[("sec-websocket-protocol", "xmpp, t0k3n!")]),
            true,
        ));
        assert_eq!(c.bearer_token(), Some("t0k3n!"));
    }

    #[test]
    fn subprotocol_only_counts_for_upgrades_and_after_xmpp() {
        let proto = format!("xmpp, {}", basic_of("a", "b"));
        assert_eq!(
            presented(&headers(&[("sec-websocket-protocol", &proto)]), false),
            Presented::Nothing
        );
        let other = format!("chat, {}", basic_of("a", "b"));
        assert_eq!(
            presented(&headers(&[("sec-websocket-protocol", &other)]), true),
            Presented::Nothing
        );
        assert_eq!(
            presented(&headers(&[("sec-websocket-protocol", "xmpp")]), true),
            Presented::Nothing
        );
        let split = [
            ("sec-websocket-protocol", "xmpp"),
            ("sec-websocket-protocol", "dG9rZW4"),
        ];
        assert!(matches!(
            presented(&headers(&split), true),
            Presented::Credential(_)
        ));
    }
}
