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
const CLOCK_SKEW: i64 = 60;
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
    wake: Notify,
    last_asked: Mutex<Option<Instant>>,
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
            peer: upstream::peer(&endpoint.upstream, endpoint.tls.as_ref(), limits),
            request,
            connector: Connector::new(None),
            within: limits.upstream_connect_timeout + ANSWER_WAIT.min(limits.upstream_read_timeout),
            poll: settings.poll,
            current: ArcSwap::from_pointee(KeySet::default()),
            generation: watch::channel(0).0,
            wake: Notify::new(),
            last_asked: Mutex::new(None),
            record: Mutex::new(FetchRecord::default()),
            metrics,
        }
    }

    /// Fetches the keys once; true when they were replaced.
    async fn fetch(&self) -> bool {
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

    /// Waits, up to the fetch timeout, for keys newer than `seen`; true when they came.
    async fn newer_than(&self, seen: u64) -> bool {
        let mut changes = self.generation.subscribe();
        let came = tokio::time::timeout(self.within, changes.wait_for(|g| *g > seen)).await;
        matches!(came, Ok(Ok(_)))
    }

    /// Asks for a fetch now (unless one was asked for within `REFETCH_GAP`) and waits for it;
    /// true when new keys arrived.
    async fn refetch(&self) -> bool {
        {
            let mut asked = self.last_asked.lock().unwrap_or_else(|p| p.into_inner());
            if asked.is_some_and(|t| t.elapsed() < REFETCH_GAP) {
                return false;
            }
            *asked = Some(Instant::now());
        }
        let seen = *self.generation.borrow();
        self.wake.notify_one();
        self.newer_than(seen).await
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
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
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
        if *self.keys.generation.borrow() == 0 && !self.keys.newer_than(0).await {
            return Judged {
                verdict: Verdict::Unavailable("the SSO signing keys are not loaded".into()),
                keep: Duration::ZERO,
            };
        }
        if let Some(kid) = kid {
            if !self.keys.current.load().knows(kid) && !self.keys.refetch().await {
                // Keys without ids may still match; an unknown id alone is not a verdict.
                log::debug!(
                    "service {}: token key id {kid:?} is unknown",
                    self.keys.service
                );
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
        let invalid = |why: &str| Judged {
            verdict: Verdict::Invalid(why.into()),
            keep: INVALID_KEEP,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let Some(iat) = claims.iat.map(|t| t as i64) else {
            return invalid("the token has no iat (issue time)");
        };
        if iat > now + CLOCK_SKEW {
            return invalid("the token was issued in the future");
        }
        let max_age = self.max_age.as_secs() as i64;
        if now - iat > max_age {
            return invalid("the token is older than max_token_age_seconds");
        }
        if claims.nbf.is_some_and(|nbf| nbf as i64 > now + CLOCK_SKEW) {
            return invalid("the token is not valid yet (nbf)");
        }
        let left = (claims.exp as i64 - now).min(iat + max_age - now).max(0) as u64;
        Judged {
            verdict: Verdict::Valid {
                user: claims.sub.map(Arc::from),
            },
            keep: self.keep_valid.min(Duration::from_secs(left)),
        }
    }
}

#[async_trait]
impl Method for JwtMethod {
    async fn judge(&self, attempt: &Attempt<'_>) -> Option<Verdict> {
        let credential = attempt.credential()?;
        let token = credential.bearer_token().filter(|t| looks_like_jwt(t))?;
        let digest = self.verdicts.digest(credential.authorization().as_bytes());
        let (verdict, source) = self
            .verdicts
            .get_or_judge(digest, || self.verify(token))
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
