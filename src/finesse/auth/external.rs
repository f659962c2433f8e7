//! The external check (`auth.external`), for rules a security team writes as a small service of
//! its own (forward auth): after ccedge's own checks, a `GET` of its URL describes the request in
//! `X-Forwarded-Method`, `-Uri` (the normalised path and query), `-Host` (the public host),
//! `-Proto`, `-For` (the client) and `-User` (the user ccedge verified), with the request headers
//! `send_headers` names. 2xx allows the request, and the answer's headers whose names start with
//! `header_prefix` go upstream with it; 401 or 403 refuse it with that status and body (not a
//! failed login); anything else, or no answer within `timeout_ms`, is an error, which `on_error`
//! turns into a 503 or a pass.
//!
//! Identical checks in flight are one call. With `cache_seconds`, a verdict is kept under a keyed
//! hash of everything the check was sent (which includes the user, the client and the path).

use super::merged::Merged;
use super::verdicts::Digest;
use crate::config::{ExternalSettings, Limits, OnError};
use crate::edge::headers::TRACKING_ID;
use crate::edge::reply::Refusal;
use crate::edge::{fetch, upstream};
use crate::observe::metrics;
use crate::observe::throttle::OncePerSecond;
use crate::state::secret::StateKey;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_PROTOCOL,
};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora_memory_cache::MemoryCache;
use prometheus::{Histogram, IntCounter};
use sha2::Sha256;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest answer body read (a refusal's body is shown to the client).
const ANSWER_MAX: usize = 64 * 1024;
/// Verdicts kept per site at most, and the largest kept (a refusal's body, or the headers an
/// allowance adds): at most about 80 MiB.
const MAX_KEPT: usize = 10_000;
const MAX_KEPT_BYTES: usize = 8 * 1024;

/// What the check said about a request.
#[derive(Clone)]
pub enum Ruling {
    /// Go on, with these headers added upstream.
    Allowed(Arc<[(HeaderName, HeaderValue)]>),
    /// Refused with the check's answer.
    Denied(Arc<Denial>),
    /// No verdict, and why: `on_error` decides.
    Failed(Arc<str>),
    /// The check could not be asked about this request (a verified user name that no header
    /// can carry): refused, whatever `on_error` says.
    Unasked(Arc<str>),
}

/// A refusal by the check: its status (401 or 403), body and content type.
pub struct Denial {
    status: u16,
    body: Bytes,
    content_type: Option<HeaderValue>,
}

impl Denial {
    pub fn refusal(&self) -> Refusal {
        let mut refusal = Refusal::new(
            self.status,
            format!("refused by the external check ({})", self.status),
        )
        .body(self.body.clone())
        // The check's page is served from the site's origin: never as a script's context.
        .with(
            "X-Content-Type-Options",
            HeaderValue::from_static("nosniff"),
        )
        .with(
            "Content-Security-Policy",
            HeaderValue::from_static("sandbox"),
        );
        if let Some(content_type) = &self.content_type {
            refusal = refusal.with("Content-Type", content_type.clone());
        }
        refusal
    }
}

/// The request the check is asked about.
pub struct Asked<'a> {
    pub req: &'a RequestHeader,
    /// The normalised path, without `;parameters`: the one every rule matches.
    pub path: &'a str,
    /// The public `host:port` of the server the request is for.
    pub host: &'a str,
    pub https: bool,
    /// The client, resolved through the trusted balancer.
    pub client: IpAddr,
    /// The user ccedge verified, when it knows one.
    pub user: Option<&'a str>,
    pub tracking_id: Option<&'a HeaderValue>,
}

#[derive(Clone)]
struct Kept {
    digest: Digest,
    ruling: Ruling,
}

/// Requests by outcome.
struct Counters {
    allowed: IntCounter,
    denied: IntCounter,
    failed: IntCounter,
    kept: IntCounter,
    merged: IntCounter,
}

pub struct External {
    service: String,
    url: String,
    /// The `GET` sent, without the request's own headers.
    request: RequestHeader,
    peer: HttpPeer,
    connector: Connector,
    timeout: Duration,
    send_headers: Vec<HeaderName>,
    prefix: String,
    public_paths: bool,
    on_error: OnError,
    keep: Duration,
    kept: MemoryCache<Digest, Kept>,
    merged: Merged<Digest, Ruling>,
    mac: Hmac<Sha256>,
    latency: Histogram,
    counters: Counters,
    /// Failures are logged at most once a second.
    report: OncePerSecond,
}

impl External {
    pub fn new(
        service: &str,
        settings: &ExternalSettings,
        limits: &Limits,
        key: &StateKey,
    ) -> Self {
        let endpoint = &settings.endpoint;
        let mut request =
            RequestHeader::build("GET", endpoint.target().as_bytes(), None).expect("a valid URL");
        let host = endpoint.url.authority().map_or("", |a| a.as_str());
        request.insert_header("Host", host).expect("a valid URL");
        let (latency, [allowed, denied, failed, kept, merged]) = metrics::external_check(service);
        External {
            service: service.to_string(),
            url: endpoint.url.to_string(),
            request,
            peer: upstream::peer(service, &endpoint.upstream, endpoint.tls.as_ref(), limits),
            connector: Connector::new(None),
            timeout: settings.timeout,
            send_headers: settings
                .send_headers
                .iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).expect("checked at load"))
                .collect(),
            prefix: settings.header_prefix.clone(),
            public_paths: settings.public_paths,
            on_error: settings.on_error,
            keep: settings.cache_for,
            kept: MemoryCache::new(MAX_KEPT),
            merged: Merged::new(),
            mac: key.mac(),
            latency,
            counters: Counters {
                allowed,
                denied,
                failed,
                kept,
                merged,
            },
            report: OncePerSecond::default(),
        }
    }

    /// Whether a request is checked: one that needed credentials, or with `public_paths: true`
    /// any.
    pub fn applies(&self, public: bool) -> bool {
        !public || self.public_paths
    }

    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// Whether a header name (or a `Connection` token) has the check's prefix, in any case and
    /// also spelt with `_` for `-` (as CGI and some servers read names).
    fn prefixed(&self, name: &[u8]) -> bool {
        name.len() >= self.prefix.len()
            && name
                .iter()
                .zip(self.prefix.as_bytes())
                .all(|(a, b)| a.eq_ignore_ascii_case(b) || (*a == b'_' && *b == b'-'))
    }

    /// Removes the headers a client sent with the check's prefix, and their nomination in
    /// `Connection` (which would have the check's own removed on the way upstream): only the
    /// check sets them.
    pub fn strip(&self, req: &mut RequestHeader) {
        if req
            .headers
            .keys()
            .any(|n| self.prefixed(n.as_str().as_bytes()))
        {
            let names: Vec<HeaderName> = req
                .headers
                .keys()
                .filter(|n| self.prefixed(n.as_str().as_bytes()))
                .cloned()
                .collect();
            for name in names {
                req.remove_header(&name);
            }
        }
        let tokens = || {
            req.headers
                .get_all(CONNECTION)
                .into_iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b','))
                .map(<[u8]>::trim_ascii)
        };
        if !tokens().any(|t| self.prefixed(t)) {
            return;
        }
        let kept: Vec<&[u8]> = tokens()
            .filter(|t| !t.is_empty() && !self.prefixed(t))
            .collect();
        let kept = HeaderValue::from_bytes(&kept.join(&b", "[..])).ok();
        req.remove_header(&CONNECTION);
        if let Some(kept) = kept.filter(|k| !k.is_empty()) {
            let _ = req.insert_header(CONNECTION, kept);
        }
    }

    /// The check's ruling on `asked`, and the outcome for the access log.
    pub async fn check(&self, asked: &Asked<'_>) -> (Ruling, &'static str) {
        let mut request = match self.request_for(asked) {
            Ok(request) => request,
            Err(why) => return (Ruling::Unasked(why.into()), "error"),
        };
        let digest = self.digest(&request, asked.req);
        if let Some(id) = asked.tracking_id {
            // For the check's own log; not part of what the verdict is about.
            let _ = request.insert_header(TRACKING_ID, id.clone());
        }
        // Nothing is kept with `cache_seconds: 0` (the default): no lookup either.
        let kept = (!self.keep.is_zero()).then(|| self.kept.get(&digest).0);
        if let Some(kept) = kept.flatten().filter(|k| k.digest == digest) {
            self.counters.kept.inc();
            let outcome = match kept.ruling {
                Ruling::Allowed(_) => "allowed_kept",
                _ => "denied_kept",
            };
            return (kept.ruling, outcome);
        }
        // A request waiting for a call another one made waits no longer than its own would.
        let merged = self.merged.once(digest, || self.ask(request, digest));
        let (ruling, ran) = match tokio::time::timeout(self.timeout, merged).await {
            Ok(answer) => answer,
            // Counted as failed, not as merged.
            Err(_) => (self.failed("no answer within timeout_ms".into()), true),
        };
        if !ran {
            self.counters.merged.inc();
        }
        let outcome = match &ruling {
            Ruling::Allowed(_) => "allowed",
            Ruling::Denied(_) => "denied",
            Ruling::Failed(_) | Ruling::Unasked(_) => "error",
        };
        (ruling, outcome)
    }

    /// The `GET` describing `asked`.
    fn request_for(&self, asked: &Asked<'_>) -> Result<RequestHeader, String> {
        let mut request = self.request.clone();
        let req = asked.req;
        let uri = match req.uri.query() {
            Some(query) => format!("{}?{query}", asked.path),
            None => asked.path.to_string(),
        };
        let proto = if asked.https { "https" } else { "http" };
        let client = asked.client.to_string();
        let forwarded = [
            ("X-Forwarded-Method", req.method.as_str()),
            ("X-Forwarded-Proto", proto),
            ("X-Forwarded-Host", asked.host),
            ("X-Forwarded-Uri", &uri),
            ("X-Forwarded-For", &client),
        ];
        for (name, value) in forwarded {
            request
                .insert_header(name, value)
                .map_err(|e| format!("{name} cannot be sent: {e}"))?;
        }
        if let Some(user) = asked.user {
            if user.trim() != user {
                return Err(
                    "the user name begins or ends with blanks, which a header loses".into(),
                );
            }
            let value = HeaderValue::from_bytes(user.as_bytes())
                .map_err(|_| "the user name cannot be sent in a header".to_string())?;
            request
                .insert_header("X-Forwarded-User", value)
                .map_err(|e| e.to_string())?;
        }
        for name in &self.send_headers {
            for value in req.headers.get_all(name) {
                request
                    .append_header(name.clone(), value.clone())
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(request)
    }

    /// A keyed hash of everything `request` sends the check, and of the credential `asked`
    /// carries (a token that names no user still gets verdicts of its own).
    fn digest(&self, request: &RequestHeader, asked: &RequestHeader) -> Digest {
        let mut mac = self.mac.clone();
        mac.update(b"external check\0");
        let mut add = |name: &HeaderName, value: &HeaderValue| {
            for part in [name.as_str().as_bytes(), value.as_bytes()] {
                mac.update(&(part.len() as u64).to_be_bytes());
                mac.update(part);
            }
        };
        for (name, value) in &request.headers {
            add(name, value);
        }
        for name in [AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL] {
            for value in asked.headers.get_all(&name) {
                add(&name, value);
            }
        }
        mac.finalize().into_bytes().into()
    }

    /// One call to the check; its ruling is kept when `cache_seconds` says so.
    async fn ask(&self, request: RequestHeader, digest: Digest) -> Ruling {
        let started = Instant::now();
        let answer = fetch::send(
            &self.connector,
            &self.peer,
            request,
            self.timeout,
            ANSWER_MAX,
            true,
        )
        .await;
        self.latency.observe(started.elapsed().as_secs_f64());
        let ruling = match answer {
            Ok(a) if (200..300).contains(&a.status) => {
                self.counters.allowed.inc();
                let added: Vec<(HeaderName, HeaderValue)> = a
                    .headers
                    .iter()
                    .filter(|(name, _)| name.as_str().starts_with(&self.prefix))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect();
                Ruling::Allowed(added.into())
            }
            Ok(a) if a.status == 401 || a.status == 403 => {
                self.counters.denied.inc();
                Ruling::Denied(Arc::new(Denial {
                    status: a.status,
                    content_type: a.headers.get(CONTENT_TYPE).cloned(),
                    body: a.body,
                }))
            }
            Ok(a) => self.failed(format!("it answered {}", a.status)),
            Err(e) => self.failed(format!("it did not answer: {e}")),
        };
        let size = match &ruling {
            Ruling::Allowed(added) => added.iter().map(|(n, v)| n.as_str().len() + v.len()).sum(),
            Ruling::Denied(denial) => denial.body.len(),
            Ruling::Failed(_) | Ruling::Unasked(_) => usize::MAX,
        };
        if !self.keep.is_zero() && size <= MAX_KEPT_BYTES {
            let kept = Kept {
                digest,
                ruling: ruling.clone(),
            };
            self.kept.put(&digest, kept, Some(self.keep));
        }
        ruling
    }

    fn failed(&self, why: String) -> Ruling {
        self.counters.failed.inc();
        if self.report.ready() {
            let then = match self.on_error {
                OnError::Deny => "requests it should judge are refused (503)",
                OnError::Allow => "requests it should judge are let through (on_error: allow)",
            };
            log::warn!(
                "service {}: external check {} failed ({why}): {then}",
                self.service,
                self.url
            );
        }
        Ruling::Failed(why.into())
    }
}
