//! Request paths as an internal server will resolve them, so that every rule of the proxy (auth,
//! cache, limits, routing, substitution) decides about the resource that is actually served.
//! Percent-escapes of unreserved characters
//! are decoded, empty segments (`//`) collapsed, `.` and `..` segments resolved (also when a
//! segment carries `;` parameters, as `..;` does for Tomcat). A path that hides a separator or a
//! control character in an escape, or one that climbs above the root, cannot be normalised
//! safely and is refused.

use std::borrow::Cow;

/// Why a path was refused.
pub type Refusal = &'static str;

/// `path` normalised; borrowed when it was normal already (the common case: no allocation).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Refusal> {
    if !path.starts_with('/') {
        return Err("the path does not start with '/'");
    }
    if already_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(resolve_segments(&decoded)?))
}

/// No escapes, parameters, backslashes, control characters, empty or dot segments.
fn already_normal(path: &[u8]) -> bool {
    let plain = |b: &u8| !matches!(b, b'%' | b';' | b'\\') && !b.is_ascii_control();
    path.iter().all(plain) && !path.windows(2).any(|w| w == b"//" || w == b"/.")
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// `path` without its segments' `;parameters` (`/a;jsessionid=1/b.js;x` -> `/a/b.js`), as a
/// servlet container routes it: what path rules match. Borrowed when there are none.
pub fn without_parameters(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or_default());
    }
    Cow::Owned(out)
}

/// Decodes `%XX` where XX is an unreserved character; keeps other escapes as written.
fn decode_unreserved(path: &str) -> Result<String, Refusal> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            return Err("the path contains a backslash");
        }
        if b.is_ascii_control() {
            return Err("the path contains a control character");
        }
        if b != b'%' {
            let next = path[i..].chars().next().expect("a character starts here");
            out.push(next);
            i += next.len_utf8();
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err("the path has a malformed percent-escape");
        };
        let value = hi * 16 + lo;
        match value {
            b'/' | b'\\' => return Err("the path hides a separator in a percent-escape"),
            v if v.is_ascii_control() => {
                return Err("the path hides a control character in a percent-escape")
            }
            v if unreserved(v) => out.push(char::from(v)),
            _ => out.push_str(&path[i..i + 3]),
        }
        i += 3;
    }
    // Checked on the decoded text: `%25%32%65` decodes to `%252e` just as `%252e` is written.
    let encoded_percent = out.as_bytes().windows(3).enumerate();
    for (at, _) in encoded_percent.filter(|(_, w)| w.eq_ignore_ascii_case(b"%25")) {
        if double_encoded(&out.as_bytes()[at + 3..]) {
            return Err("the path has a double-encoded dot or separator");
        }
    }
    Ok(out)
}

/// Whether `rest` (what follows an escaped '%') spells a dot, slash or backslash in hex.
fn double_encoded(rest: &[u8]) -> bool {
    match rest {
        [a, b, ..] => matches!(
            (a.to_ascii_lowercase(), b.to_ascii_lowercase()),
            (b'2', b'e') | (b'2', b'f') | (b'5', b'c')
        ),
        _ => false,
    }
}

/// Collapses empty segments and resolves dot segments; a segment's name is what precedes its
/// first ';'.
fn resolve_segments(path: &str) -> Result<String, Refusal> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = path.ends_with('/');
    for segment in path.split('/').skip(1) {
        let name = segment.split(';').next().unwrap_or_default();
        match name {
            "" => {}
            "." => trailing_slash = true,
            ".." => {
                if kept.pop().is_none() {
                    return Err("the path climbs above the root");
                }
                trailing_slash = true;
            }
            _ => {
                kept.push(segment);
                trailing_slash = path.ends_with('/');
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, Refusal> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/desktop/",
            "/finesse/api/User/1001",
            "/a.js",
            "/x/y.z",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_and_empty_segments_resolve() {
        assert_eq!(
            norm("/desktop/../finesse/api/User").unwrap(),
            "/finesse/api/User"
        );
        assert_eq!(norm("/desktop/./js/app.js").unwrap(), "/desktop/js/app.js");
        assert_eq!(norm("//desktop//js").unwrap(), "/desktop/js");
        assert_eq!(norm("/desktop/..").unwrap(), "/");
        assert_eq!(norm("/desktop/js/..").unwrap(), "/desktop/");
        assert_eq!(norm("/desktop/.").unwrap(), "/desktop/");
        assert_eq!(norm("/a/b/../../c/").unwrap(), "/c/");
        assert_eq!(norm("/.well-known/x").unwrap(), "/.well-known/x");
    }

    #[test]
    fn escaped_dots_and_tomcat_parameters_are_dot_segments() {
        for trick in [
            "/desktop/%2e%2e/finesse/api/User",
            "/desktop/%2E%2E/finesse/api/User",
            "/desktop/.%2e/finesse/api/User",
            "/desktop/..;/finesse/api/User",
            "/desktop/..;x=1/finesse/api/User",
            "/desktop/%2e%2e;/finesse/api/User",
        ] {
            assert_eq!(norm(trick).unwrap(), "/finesse/api/User", "{trick}");
        }
        assert_eq!(norm("/%64esktop/").unwrap(), "/desktop/");
        assert_eq!(
            norm("/desktop;jsessionid=1/x").unwrap(),
            "/desktop;jsessionid=1/x"
        );
    }

    #[test]
    fn other_escapes_stay_as_written() {
        assert_eq!(norm("/a%20b/%3F").unwrap(), "/a%20b/%3F");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "/desktop/..%2ffinesse/api/User",
            "/desktop/..%2Ffinesse",
            "/desktop/..%5cfinesse",
            "/desktop\\..\\finesse",
            "/desktop/%00",
            "/desktop/%zz",
            "/desktop/%2",
            "/desktop/%252e%252e/finesse",
            "/desktop/%252F",
            "/desktop/%25%32%65%25%32%65/finesse",
            "/.%252%652A@%252A",
            "/..",
            "/desktop/../../etc",
            "*",
            "desktop/",
        ] {
            assert!(normalize(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn parameters_are_left_out_of_what_rules_match() {
        assert!(matches!(
            without_parameters("/a/b.js"),
            Cow::Borrowed("/a/b.js")
        ));
        assert_eq!(
            without_parameters("/finesse/api/User/alice;x.js"),
            "/finesse/api/User/alice"
        );
        assert_eq!(
            without_parameters("/desktop;jsessionid=1/js/a.js;v=2"),
            "/desktop/js/a.js"
        );
        assert_eq!(without_parameters("/dataconn;x/"), "/dataconn/");
        assert_eq!(without_parameters("/;x"), "/");
    }

    #[test]
    fn non_ascii_passes_through() {
        assert_eq!(norm("/caf\u{e9}/../x").unwrap(), "/x");
    }
}
