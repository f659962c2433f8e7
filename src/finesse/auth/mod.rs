//! Authentication at the proxy for a Finesse site: every request outside `public_paths` must
//! present a valid credential before anything reaches an internal server.
//!
//! The gate (`Auth::check`) normalises the path, lets public paths through, refuses blocked
//! addresses, reads the credential, and asks each authentication method in turn; the first
//! that recognises the credential decides. Methods sit behind the `Method` trait: the JWT
//! verifier (SSO) and the validator (`validate_url`) today; another, such as a header set by a
//! trusted SSO gateway, is one more implementation, with no change to the proxy's request path.

mod credential;
mod jwt;
mod lockout;
mod path;
mod validator;
mod verdicts;

pub use jwt::KeyRefresh;

use crate::config::{AuthSettings, Limits};
use crate::observe::metrics::AuthMetrics;
use async_trait::async_trait;
use credential::{Credential, Presented};
use http::header::HeaderValue;
use lockout::Lockouts;
use pingora::http::RequestHeader;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use verdicts::{Source, Verdict, Verdicts};

/// A request as authentication methods see it.
pub struct Attempt<'a> {
    pub request: &'a RequestHeader,
    websocket: bool,
    presented: OnceLock<Presented>,
}

impl<'a> Attempt<'a> {
    fn new(request: &'a RequestHeader, websocket: bool) -> Self {
        Attempt {
            request,
            websocket,
            presented: OnceLock::new(),
        }
    }

    /// What the request carries in the credential's place (read once).
    pub fn presented(&self) -> &Presented {
        self.presented
            .get_or_init(|| credential::presented(&self.request.headers, self.websocket))
    }

    pub fn credential(&self) -> Option<&Credential> {
        match self.presented() {
            Presented::Credential(c) => Some(c),
            Presented::Nothing | Presented::Unusable(_) => None,
        }
    }
}

/// One way of telling who a request comes from.
#[async_trait]
pub trait Method: Send + Sync {
    /// The verdict on `attempt`, or `None` when it carries nothing this method reads (the next
    /// method is asked).
    async fn judge(&self, attempt: &Attempt<'_>) -> Option<Verdict>;
}

/// The gate's answer.
pub enum Decision {
    /// Go on: the user (when known) and the normalised path when it differs from the request's.
    Pass {
        user: Option<Arc<str>>,
        path: Option<String>,
    },
    Refuse(Refusal),
}

/// A request answered by the gate itself.
pub struct Refusal {
    pub status: u16,
    pub message: String,
    /// The user name presented, for the access log (never proof of identity).
    pub user: Option<Arc<str>>,
    pub headers: Vec<(&'static str, HeaderValue)>,
}

pub struct Auth {
    service: String,
    public_paths: Vec<String>,
    lockouts: Lockouts,
    methods: Vec<Box<dyn Method>>,
    keys: Option<Arc<jwt::Keys>>,
    challenge: HeaderValue,
    metrics: Arc<AuthMetrics>,
}

impl Auth {
    pub fn new(service: &str, settings: &AuthSettings, limits: &Limits) -> Auth {
        let metrics = Arc::new(AuthMetrics::new(service));
        let verdicts = Arc::new(Verdicts::new());
        let mut methods: Vec<Box<dyn Method>> = Vec::new();
        let mut keys = None;
        let mut challenge = format!("Basic realm=\"{service}\", charset=\"UTF-8\"");
        if let Some(settings_jwt) = &settings.jwt {
            let store = Arc::new(jwt::Keys::new(
                service,
                settings_jwt,
                limits,
                metrics.clone(),
            ));
            keys = Some(store.clone());
            methods.push(Box::new(jwt::JwtMethod::new(
                store,
                settings_jwt,
                settings.cache_for,
                verdicts.clone(),
                metrics.clone(),
            )));
            challenge.push_str(&format!(", Bearer realm=\"{service}\""));
        }
        methods.push(Box::new(validator::Validator::new(
            service,
            &settings.validate,
            settings.cache_for,
            limits,
            verdicts,
            metrics.clone(),
        )));
        Auth {
            service: service.to_string(),
            public_paths: settings.public_paths.clone(),
            lockouts: Lockouts::new(&settings.lockout),
            methods,
            keys,
            challenge: HeaderValue::from_str(&challenge).expect("service names are visible ASCII"),
            metrics,
        }
    }

    /// The background task that keeps the JWT signing keys current, when the site uses SSO.
    pub fn key_refresh(&self) -> Option<KeyRefresh> {
        self.keys.clone().map(KeyRefresh::new)
    }

    /// Decides whether `req` from `client` may go on.
    pub async fn check(&self, req: &RequestHeader, client: IpAddr, websocket: bool) -> Decision {
        let path = match path::normalize(req.uri.path()) {
            Ok(path) => path,
            Err(why) => {
                return self.refuse(400, format!("request path refused: {why}"), None, vec![]);
            }
        };
        let changed = match &path {
            Cow::Owned(p) => Some(p.clone()),
            Cow::Borrowed(_) => None,
        };
        let public = self
            .public_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()));
        if public || is_preflight(req) {
            return Decision::Pass {
                user: None,
                path: changed,
            };
        }
        let now = Instant::now();
        if let Some(left) = self.lockouts.blocked(client, now) {
            self.metrics.blocked.inc();
            let seconds = left.as_secs().max(1);
            let retry = [("Retry-After", HeaderValue::from(seconds))];
            let message =
                format!("too many failed logins from {client}: blocked for {seconds} more seconds");
            return self.refuse(429, message, None, retry.to_vec());
        }
        let attempt = Attempt::new(req, websocket);
        if let Presented::Unusable(why) = attempt.presented() {
            return self.failed(client, now, Arc::from(*why), None);
        }
        let user = || {
            attempt
                .credential()
                .and_then(Credential::user)
                .map(Arc::from)
        };
        for method in &self.methods {
            match method.judge(&attempt).await {
                Some(Verdict::Valid { user: proven }) => {
                    return Decision::Pass {
                        user: proven,
                        path: changed,
                    }
                }
                Some(Verdict::Invalid(why)) => return self.failed(client, now, why, user()),
                Some(Verdict::Unavailable(why)) => {
                    let message = format!("credentials cannot be checked right now: {why}");
                    let retry = vec![("Retry-After", HeaderValue::from_static("1"))];
                    return self.refuse(503, message, user(), retry);
                }
                None => {}
            }
        }
        let challenge = vec![("WWW-Authenticate", self.challenge.clone())];
        self.refuse(401, "credentials required".into(), None, challenge)
    }

    /// A failed attempt: 401, counted towards the lockout (and the security line when it blocks).
    fn failed(
        &self,
        client: IpAddr,
        now: Instant,
        why: Arc<str>,
        user: Option<Arc<str>>,
    ) -> Decision {
        if let Some(blocked) = self.lockouts.failed(client, now) {
            self.metrics.lockouts.inc();
            log::warn!(
                "{client} blocked for {} seconds after {} failed logins (service {})",
                blocked.seconds,
                blocked.after_failures,
                self.service
            );
        }
        let challenge = vec![("WWW-Authenticate", self.challenge.clone())];
        self.refuse(401, format!("credentials refused: {why}"), user, challenge)
    }

    fn refuse(
        &self,
        status: u16,
        message: String,
        user: Option<Arc<str>>,
        headers: Vec<(&'static str, HeaderValue)>,
    ) -> Decision {
        Decision::Refuse(Refusal {
            status,
            message,
            user,
            headers,
        })
    }

    /// Lifts a block on `ip`; false when it was not blocked.
    pub fn lift_block(&self, ip: IpAddr) -> bool {
        let lifted = self.lockouts.clear(ip);
        if lifted {
            log::warn!(
                "{ip} unblocked by the admin listener (service {})",
                self.service
            );
        }
        lifted
    }

    /// For `/status`: blocked addresses and the state of the signing keys.
    pub fn status(&self) -> Value {
        let blocked: Vec<Value> = self
            .lockouts
            .current(Instant::now())
            .into_iter()
            .map(|(ip, seconds)| json!({"client_ip": ip.to_string(), "seconds_left": seconds}))
            .collect();
        json!({
            "lockouts": blocked,
            "signing_keys": self.keys.as_ref().map(|k| k.status()),
        })
    }
}

/// A CORS preflight: browsers never send credentials with one, and it runs nothing upstream;
/// the internal server's CORS policy answers it.
fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Counts a verdict reused from the store or shared with a concurrent request.
fn count_kept(source: Source, metrics: &AuthMetrics) {
    if source != Source::Judged {
        metrics.kept.inc();
    }
}
