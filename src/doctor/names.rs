//! Whether a certificate names a host, as a browser or ccedge checks it: the subjectAltName DNS
//! entries (a `*` only as the whole leftmost label, standing for exactly one label) and IP
//! entries; the subject's CN is not looked at, as browsers no longer do.

use openssl::x509::X509Ref;
use std::net::IpAddr;

/// Whether `cert` names `host` (a DNS name or an IP address).
pub fn covers(cert: &X509Ref, host: &str) -> bool {
    let Some(names) = cert.subject_alt_names() else {
        return false;
    };
    match host.parse::<IpAddr>() {
        Ok(ip) => crate::edge::upstream::names_ip(cert, ip),
        Err(_) => names
            .iter()
            .filter_map(|n| n.dnsname())
            .any(|pattern| name_matches(pattern, host)),
    }
}

/// Whether `cert` names `host` the way ccedge checks an upstream: an IP address against the
/// subjectAltName IP entries (ccedge's own check), a DNS name as OpenSSL's host check with
/// default flags, which Pingora uses: subjectAltName DNS entries (a `*` may be part of the
/// leftmost label), or the subject's CN when there are none.
pub fn upstream_covers(cert: &X509Ref, host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return covers(cert, host);
    }
    let dns = crate::config::tls::dns_names(cert);
    let candidates = if dns.is_empty() {
        cert.subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .filter_map(|e| e.data().to_string().ok())
            .collect()
    } else {
        dns
    };
    candidates.iter().any(|p| partial_wildcard_matches(p, host))
}

/// OpenSSL's rule: at most one `*`, in the leftmost label, which it may share with a prefix
/// and a suffix; at least two labels after it; not inside an IDN label.
fn partial_wildcard_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if !pattern.contains('*') {
        return pattern == host;
    }
    let (Some((first, rest)), Some((label, host_rest))) =
        (pattern.split_once('.'), host.split_once('.'))
    else {
        return false;
    };
    let Some((prefix, suffix)) = first.split_once('*') else {
        return false;
    };
    !suffix.contains('*')
        && !rest.contains('*')
        && rest.contains('.')
        && rest == host_rest
        && !(label.starts_with("xn--") && (!prefix.is_empty() || !suffix.is_empty()))
        && label.len() >= prefix.len() + suffix.len()
        && label.starts_with(prefix)
        && label.ends_with(suffix)
}

/// The DNS names `cert` carries, for messages.
pub fn dns_names(cert: &X509Ref) -> Vec<String> {
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| {
                    n.dnsname()
                        .map(str::to_string)
                        .or_else(|| n.ipaddress().and_then(ip_text))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// Whether DNS name `pattern` from a certificate matches `host` (case-insensitive, a trailing
/// dot ignored).
pub fn name_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(rest) => {
            !rest.contains('*')
                && rest.contains('.')
                && host
                    .split_once('.')
                    .is_some_and(|(label, tail)| !label.is_empty() && tail == rest)
        }
        None => !pattern.contains('*') && pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_stand_for_exactly_one_leftmost_label() {
        assert!(name_matches(
            "finesse1.example.com",
            "FINESSE1.example.com."
        ));
        assert!(name_matches("*.example.com", "cuic1.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(
            !name_matches("*.com", "example.com"),
            "a wildcard needs two labels after it"
        );
        assert!(!name_matches("f*.example.com", "finesse.example.com"));
        assert!(!name_matches("*.*.example.com", "a.b.example.com"));
        assert!(!name_matches("other.example.com", "finesse1.example.com"));
    }

    #[test]
    fn upstream_names_follow_openssl_partial_wildcards() {
        assert!(partial_wildcard_matches(
            "f*.example.com",
            "finesse.example.com"
        ));
        assert!(partial_wildcard_matches(
            "*1.cc.internal",
            "finesse1.cc.internal"
        ));
        assert!(partial_wildcard_matches(
            "*.cc.internal",
            "finesse1.cc.internal"
        ));
        assert!(!partial_wildcard_matches(
            "f*.example.com",
            "cuic.example.com"
        ));
        assert!(!partial_wildcard_matches("*.com", "example.com"));
        assert!(!partial_wildcard_matches(
            "a.*.example.com",
            "a.b.example.com"
        ));
        assert!(!partial_wildcard_matches(
            "x*.example.com",
            "xn--abc.example.com"
        ));
        assert!(partial_wildcard_matches(
            "finesse1.cc.internal",
            "FINESSE1.cc.internal"
        ));
    }
}
