//! SSO: Bearer tokens that are JWTs are verified at the proxy against the identity service's
//! signing keys (`keys_url`: a PEM public key or a JWKS document), never sent to the validator.
//! RS256/384/512, PS256/384/512, ES256 and ES384 are accepted; `none` and shared-secret (HS*)
//! algorithms never are. `exp`, `nbf`, `iat` (with `max_token_age_seconds`), `iss` and `aud` are
//! checked.
//!
//! The keys are fetched when the server starts, every `poll_seconds`, and at once when a token
//! names a key id (`kid`) not seen yet, at most once every `REFETCH_GAP`, so that tokens with
//! made-up ids cannot make ccedge hammer the identity service.

use super::credential::looks_like_jwt;
use super::verdicts::{Judged, Verdict, Verdicts};
use super::{count_kept, Attempt, Method};
use crate::config::{JwtSettings, Limits};
use crate::edge::{fetch, upstream};
use crate::observe::metrics::AuthMetrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};

/// The shortest time between two fetches asked for by unknown key ids.
const REFETCH_GAP: Duration = Duration::from_secs(10);
/// After a failed fetch, the next try comes this soon (or at the poll, if sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// The longest keys document read.
const KEYS_MAX: usize = 1 << 20;
/// How far in the future `iat` and `nbf` may lie (the identity service's clock may run ahead).
const CLOCK_SKEW: u64 = 60;
/// The longest wait for the keys document once connected.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How long a refused token's verdict is reused (a burst of requests with it is judged once).
const INVALID_KEEP: Duration = Duration::from_secs(2);

const ACCEPTED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// How many usable signing keys a PEM key or JWKS document `body` holds (for `ccedge doctor`).
pub fn signing_keys_in(body: &[u8]) -> Result<usize, String> {
    KeySet::parse(body).map(|set| set.keys.len())
}

/// The signing keys as last fetched.
#[derive(Default)]
struct KeySet {
    keys: Vec<(Option<String>, DecodingKey)>,
}

impl KeySet {
    /// Parses a PEM public key or a JWKS document.
    fn parse(body: &[u8]) -> Result<KeySet, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the keys are not text".to_string())?;
        let keys = if text.trim_start().starts_with("-----BEGIN") {
            let key = DecodingKey::from_rsa_pem(body)
                .or_else(|_| DecodingKey::from_ec_pem(body))
                .map_err(|e| format!("the PEM key is neither RSA nor EC: {e}"))?;
            vec![(None, key)]
        } else {
            let set: JwkSet = serde_json::from_str(text)
                .map_err(|e| format!("the keys are neither PEM nor a JWKS document: {e}"))?;
            set.keys
                .iter()
                .filter(|k| k.common.public_key_use != Some(PublicKeyUse::Encryption))
                .filter_map(|k| {
                    let key = DecodingKey::from_jwk(k).ok()?;
                    Some((k.common.key_id.clone(), key))
                })
                .collect()
        };
        if keys.is_empty() {
            return Err("the document holds no usable signing key".into());
        }
        Ok(KeySet { keys })
    }

    /// The keys that may have signed a token with `kid` and `alg`.
    fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |(id, key)| {
                key.family() == alg.family()
                    && (kid.is_none() || id.is_none() || id.as_deref() == kid)
            })
            .map(|(_, key)| key)
    }

    /// Whether a token naming `kid` has a key to try (a key without an id may be it).
    fn knows(&self, kid: &str) -> bool {
        self.keys
            .iter()
            .any(|(id, _)| id.is_none() || id.as_deref() == Some(kid))
    }
}

/// What is known about the last fetch, for `/status` and logs.
#[derive(Default)]
struct FetchRecord {
    last_ok: Option<String>,
    last_error: Option<String>,
    keys: usize,
}

/// The site's signing keys and how to fetch them.
pub struct Keys {
    service: String,
    url: String,
    peer: HttpPeer,
    request: RequestHeader,
    connector: Connector,
    within: Duration,
    poll: Duration,
    current: ArcSwap<KeySet>,
    /// Counts successful fetches; 0 until the first.
    generation: watch::Sender<u64>,
    /// Counts finished fetches, successful or not.
    attempts: watch::Sender<u64>,
    wake: Notify,
    /// When a fetch was last asked for by a token, and `attempts` then.
    last_asked: Mutex<Option<(Instant, u64)>>,
    record: Mutex<FetchRecord>,
    metrics: Arc<AuthMetrics>,
}

impl Keys {
    pub fn new(
        service: &str,
        settings: &JwtSettings,
        limits: &Limits,
        metrics: Arc<AuthMetrics>,
    ) -> Keys {
        let endpoint = &settings.keys;
        let mut request =
            RequestHeader::build("GET", endpoint.target().as_bytes(), None).expect("a valid URL");
        let host = endpoint.url.authority().map_or("", |a| a.as_str());
        request.insert_header("Host", host).expect("a valid URL");
        request
            .insert_header("Accept", "application/json, application/x-pem-file, */*")
            .expect("static header");
        request
            .insert_header(
                "User-Agent",
                concat!("ccedge-auth/", env!("CARGO_PKG_VERSION")),
            )
            .expect("static header");
        Keys {
            service: service.to_string(),
            url: endpoint.url.to_string(),
            peer: upstream::peer(service, &endpoint.upstream, endpoint.tls.as_ref(), limits),
            request,
            connector: Connector::new(None),
            within: limits.upstream_connect_timeout + ANSWER_WAIT.min(limits.upstream_read_timeout),
            poll: settings.poll,
            current: ArcSwap::from_pointee(KeySet::default()),
            generation: watch::channel(0).0,
            attempts: watch::channel(0).0,
            wake: Notify::new(),
            last_asked: Mutex::new(None),
            record: Mutex::new(FetchRecord::default()),
            metrics,
        }
    }

    /// Fetches the keys once; true when they were replaced.
    async fn fetch(&self) -> bool {
        let replaced = self.fetch_once().await;
        self.attempts.send_modify(|a| *a += 1);
        replaced
    }

    async fn fetch_once(&self) -> bool {
        let answer = fetch::send(
            &self.connector,
            &self.peer,
            self.request.clone(),
            self.within,
            KEYS_MAX,
            false,
        )
        .await;
        let parsed = match answer {
            Ok(a) if a.status == 200 => KeySet::parse(&a.body),
            Ok(a) => Err(format!("{} answered {}", self.url, a.status)),
            Err(e) => Err(format!("{}: {e}", self.url)),
        };
        let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        match parsed {
            Ok(set) => {
                let first = *self.generation.borrow() == 0;
                if first || set.keys.len() != record.keys {
                    log::info!(
                        "service {}: {} JWT signing key(s) loaded from {}",
                        self.service,
                        set.keys.len(),
                        self.url
                    );
                }
                record.keys = set.keys.len();
                record.last_ok = Some(crate::observe::access_log::now());
                record.last_error = None;
                self.current.store(Arc::new(set));
                self.generation.send_modify(|g| *g += 1);
                self.metrics.key_fetches[0].inc();
                true
            }
            Err(e) => {
                log::warn!(
                    "service {}: cannot load the JWT signing keys: {e}; {}",
                    self.service,
                    if record.keys > 0 {
                        "the keys fetched before stay in use"
                    } else {
                        "SSO requests get 503 until they load"
                    }
                );
                record.last_error = Some(e);
                self.metrics.key_fetches[1].inc();
                false
            }
        }
    }

    /// Waits, up to the fetch timeout, for a fetch to finish after the `seen`th; false when
    /// none did in time.
    async fn fetched_after(&self, seen: u64) -> bool {
        let mut attempts = self.attempts.subscribe();
        let came = tokio::time::timeout(self.within, attempts.wait_for(|a| *a > seen)).await;
        matches!(came, Ok(Ok(_)))
    }

    /// For a token naming a key id not known: fetches the keys now, or, when a token asked for a
    /// fetch within `REFETCH_GAP`, waits for that one if it is still running.
    async fn refetch(&self) -> Refetch {
        let seen = *self.attempts.borrow();
        let asked_before = {
            let mut asked = self.last_asked.lock().unwrap_or_else(|p| p.into_inner());
            match *asked {
                Some((when, at)) if when.elapsed() < REFETCH_GAP => Some(at),
                _ => {
                    *asked = Some((Instant::now(), seen));
                    None
                }
            }
        };
        match asked_before {
            None => {
                let loaded = *self.generation.borrow();
                self.wake.notify_one();
                if !self.fetched_after(seen).await {
                    return Refetch::Failed;
                }
                if *self.generation.borrow() > loaded {
                    Refetch::Done
                } else {
                    Refetch::Failed
                }
            }
            Some(at) if seen == at => {
                if self.fetched_after(at).await {
                    Refetch::Waited
                } else {
                    Refetch::Failed
                }
            }
            Some(_) => Refetch::Throttled,
        }
    }

    pub fn status(&self) -> Value {
        let record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "keys_url": self.url,
            "keys": record.keys,
            "last_fetched": record.last_ok,
            "last_error": record.last_error,
        })
    }
}

/// What asking for fresh keys came to.
enum Refetch {
    /// A fetch this token asked for loaded the keys.
    Done,
    /// A fetch another token asked for finished meanwhile.
    Waited,
    /// The keys could not be fetched.
    Failed,
    /// A fetch ran within `REFETCH_GAP`: not again so soon.
    Throttled,
}

/// Keeps a site's signing keys current: fetches at start, every `poll_seconds`, and when asked.
pub struct KeyRefresh {
    keys: Arc<Keys>,
}

impl KeyRefresh {
    pub fn new(keys: Arc<Keys>) -> Self {
        KeyRefresh { keys }
    }
}

#[async_trait]
impl BackgroundService for KeyRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let wait = if self.keys.fetch().await {
                self.keys.poll
            } else {
                self.keys.poll.min(RETRY_AFTER_FAILURE)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.keys.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    iat: Option<f64>,
    nbf: Option<f64>,
    exp: f64,
}

pub struct JwtMethod {
    keys: Arc<Keys>,
    issuer: Option<String>,
    audience: Option<String>,
    max_age: Duration,
    keep_valid: Duration,
    verdicts: Arc<Verdicts>,
    metrics: Arc<AuthMetrics>,
}

impl JwtMethod {
    pub fn new(
        keys: Arc<Keys>,
        settings: &JwtSettings,
        keep_valid: Duration,
        verdicts: Arc<Verdicts>,
        metrics: Arc<AuthMetrics>,
    ) -> Self {
        JwtMethod {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            max_age: settings.max_token_age,
            keep_valid,
            verdicts,
            metrics,
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = 0;
        v.validate_nbf = false;
        v.validate_aud = self.audience.is_some();
        // A configured issuer or audience is required, not only compared when present.
        let mut required = vec!["exp"];
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }

    async fn verify(&self, token: &str) -> Judged {
        let judged = match jsonwebtoken::decode_header(token) {
            Ok(header) if ACCEPTED.contains(&header.alg) => {
                self.verify_signed(token, header.alg, header.kid.as_deref())
                    .await
            }
            Ok(header) => Judged {
                verdict: Verdict::Invalid(
                    format!("the token's algorithm {:?} is not accepted", header.alg).into(),
                ),
                keep: INVALID_KEEP,
            },
            Err(e) => Judged {
                verdict: Verdict::Invalid(format!("the token's header is not valid: {e}").into()),
                keep: INVALID_KEEP,
            },
        };
        let outcome = match &judged.verdict {
            Verdict::Valid { .. } => 0,
            Verdict::Invalid(_) => 1,
            Verdict::Unavailable(_) => 2,
        };
        self.metrics.jwt[outcome].inc();
        judged
    }

    async fn verify_signed(&self, token: &str, alg: Algorithm, kid: Option<&str>) -> Judged {
        let invalid = |why: String| Judged {
            verdict: Verdict::Invalid(why.into()),
            keep: INVALID_KEEP,
        };
        let unavailable = |why: &str| Judged {
            verdict: Verdict::Unavailable(why.into()),
            keep: Duration::ZERO,
        };
        if *self.keys.generation.borrow() == 0 {
            let seen = *self.keys.attempts.borrow();
            if seen == 0 {
                self.keys.fetched_after(0).await;
            }
            if *self.keys.generation.borrow() == 0 {
                return unavailable("the SSO signing keys are not loaded");
            }
        }
        if let Some(kid) = kid.filter(|k| !self.keys.current.load().knows(k)) {
            // A new key id: the identity service may have rotated its keys. Only a fetch made
            // for this token can tell that the id is unknown; otherwise the client is to retry.
            match self.keys.refetch().await {
                Refetch::Done => {}
                Refetch::Waited if self.keys.current.load().knows(kid) => {}
                Refetch::Waited | Refetch::Throttled => {
                    return unavailable("the token names a signing key not loaded yet")
                }
                Refetch::Failed => return unavailable("the SSO signing keys cannot be fetched"),
            }
        }
        let set = self.keys.current.load();
        let validation = self.validation(alg);
        let mut last = None;
        for key in set.candidates(kid, alg) {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return self.judge_claims(data.claims),
                Err(e) => last = Some(e),
            }
        }
        let why = match last.as_ref().map(|e| e.kind()) {
            None => format!("no signing key matches the token (kid {kid:?}, {alg:?})"),
            Some(ErrorKind::ExpiredSignature) => "the token has expired".into(),
            Some(ErrorKind::InvalidSignature) => "the token's signature is not valid".into(),
            Some(ErrorKind::InvalidIssuer) => "the token's issuer is not accepted".into(),
            Some(ErrorKind::InvalidAudience) => "the token's audience is not accepted".into(),
            Some(kind) => format!("the token is not valid: {kind:?}"),
        };
        invalid(why)
    }

    fn judge_claims(&self, claims: Claims) -> Judged {
        judge_claims(claims, SystemTime::now(), self.max_age, self.keep_valid)
    }
}

/// The verdict on a signed token's claims at `now`: `iat` present, not in the future and not
/// older than `max_age`, `nbf` reached; kept no longer than `keep`, its `exp` or `iat + max_age`.
fn judge_claims(claims: Claims, now: SystemTime, max_age: Duration, keep: Duration) -> Judged {
    let invalid = |why: &str| Judged {
        verdict: Verdict::Invalid(why.into()),
        keep: INVALID_KEEP,
    };
    let seconds = |t: f64| -> SystemTime {
        let t = Duration::try_from_secs_f64(t.max(0.0)).unwrap_or(Duration::MAX);
        UNIX_EPOCH.checked_add(t).unwrap_or(SystemTime::UNIX_EPOCH)
    };
    let skew = Duration::from_secs(CLOCK_SKEW);
    let Some(iat) = claims.iat.map(seconds) else {
        return invalid("the token has no iat (issue time)");
    };
    if iat > now + skew {
        return invalid("the token was issued in the future");
    }
    let too_old = iat.checked_add(max_age).unwrap_or(iat);
    if now >= too_old {
        return invalid("the token is older than max_token_age_seconds");
    }
    if claims.nbf.map(seconds).is_some_and(|nbf| nbf > now + skew) {
        return invalid("the token is not valid yet (nbf)");
    }
    let end = seconds(claims.exp).min(too_old);
    Judged {
        verdict: Verdict::Valid {
            user: claims.sub.map(Arc::from),
        },
        keep: keep.min(end.duration_since(now).unwrap_or_default()),
    }
}

#[async_trait]
impl Method for JwtMethod {
    async fn judge(&self, attempt: &Attempt<'_>) -> Option<Verdict> {
        let token = attempt
            .credential
            .bearer_token()
            .filter(|t| looks_like_jwt(t))?;
        let (verdict, source) = self
            .verdicts
            .get_or_judge(attempt.digest, || self.verify(token))
            .await;
        count_kept(source, &self.metrics);
        Some(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use openssl::rsa::Rsa;

    /// A fresh RSA public key as PEM and as a JWK (without `kid`, `use`).
    fn rsa_key() -> (String, Value) {
        let rsa = Rsa::generate(2048).unwrap();
        let pem = String::from_utf8(rsa.public_key_to_pem().unwrap()).unwrap();
        let jwk = json!({
            "kty": "RSA",
            "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
            "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
        });
        (pem, jwk)
    }

    #[test]
    fn a_pem_key_has_no_id_and_matches_its_family() {
        let set = KeySet::parse(rsa_key().0.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.candidates(Some("any"), Algorithm::RS256).count(), 1);
        assert!(set.knows("any"));
        assert_eq!(set.candidates(None, Algorithm::ES256).count(), 0);
    }

    #[test]
    fn a_jwks_document_is_indexed_by_kid() {
        let (_, mut signing) = rsa_key();
        signing["kid"] = json!("a");
        signing["use"] = json!("sig");
        let (_, mut encrypting) = rsa_key();
        encrypting["kid"] = json!("enc");
        encrypting["use"] = json!("enc");
        let jwks = json!({ "keys": [signing, encrypting] }).to_string();
        let set = KeySet::parse(jwks.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1, "the encryption key is left out");
        assert!(set.knows("a") && !set.knows("enc") && !set.knows("b"));
        assert_eq!(set.candidates(Some("a"), Algorithm::RS256).count(), 1);
        assert_eq!(set.candidates(Some("b"), Algorithm::RS256).count(), 0);
        assert_eq!(set.candidates(Some("a"), Algorithm::ES256).count(), 0);
    }

    fn claims(iat: f64, exp: f64, nbf: Option<f64>) -> Claims {
        Claims {
            sub: Some("a".into()),
            iat: Some(iat),
            nbf,
            exp,
        }
    }

    #[test]
    fn a_kept_token_verdict_ends_with_the_token() {
        let now = SystemTime::now();
        let t = now.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let (hour, day) = (Duration::from_secs(3600), Duration::from_secs(86400));
        let keep = |c: Claims| judge_claims(c, now, hour, day);
        let soon = keep(claims(t - 10.0, t + 5.5, None));
        assert!(matches!(soon.verdict, Verdict::Valid { .. }));
        assert!(soon.keep <= Duration::from_millis(5501), "{:?}", soon.keep);
        let old = keep(claims(t - 3590.0, t + 600.0, None));
        assert!(
            old.keep <= Duration::from_millis(10_001),
            "ends at iat + max age: {:?}",
            old.keep
        );
        assert_eq!(keep(claims(t - 3601.0, t + 600.0, None)).keep, INVALID_KEEP);
        assert!(matches!(
            keep(claims(t + 120.0, t + 600.0, None)).verdict,
            Verdict::Invalid(_)
        ));
        assert!(matches!(
            keep(claims(t, t + 600.0, Some(t + 120.0))).verdict,
            Verdict::Invalid(_)
        ));
        assert!(matches!(
            keep(claims(f64::MAX, f64::MAX, None)).verdict,
            Verdict::Invalid(_)
        ));
        assert!(matches!(
            keep(claims(-1e300, t + 60.0, None)).verdict,
            Verdict::Invalid(_)
        ));
    }

    #[test]
    fn garbage_is_not_a_key_set() {
        for body in [
            "",
            "{}",
            "{\"keys\":[]}",
            "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----",
        ] {
            assert!(KeySet::parse(body.as_bytes()).is_err(), "{body:?}");
        }
    }
}
