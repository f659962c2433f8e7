//! Authentication at the proxy for a Finesse site: every request outside `public_paths` must
//! present a valid credential before anything reaches an internal server.
//!
//! The gate (`Auth::check`) normalises the path, lets public paths through, refuses blocked
//! addresses, reads the credential, and asks each authentication method in turn; the first
//! that recognises the credential decides. Methods sit behind the `Method` trait: the JWT
//! verifier (SSO) and the validator (`validate_url`) today; another, such as a header set by a
//! trusted SSO gateway, is one more implementation, with no change to the proxy's request path.

mod credential;
mod external;
mod jwt;
mod lockout;
mod merged;
mod revocation;
mod validator;
mod verdicts;

pub use external::{Asked, External, Ruling};
pub use jwt::{signing_keys_in, KeyRefresh};

use crate::config::{AuthSettings, Limits};
use crate::edge::identity::{self, ClientIdentity};
use crate::edge::reply::Refusal;
use crate::observe::metrics::AuthMetrics;
use crate::state::handover::{Arrival, Clock, SiteState};
use crate::state::shared::{self, HeldBlock, Remote, SiteShare};
use crate::state::Continuity;
use async_trait::async_trait;
use credential::{Credential, Presented};
use http::header::HeaderValue;
use lockout::{Admission, Blocked, Blocks, Kind, Lockouts, Reservation, Who};
use pingora::http::RequestHeader;
use revocation::Revocations;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use verdicts::{Digest, Source, Verdict, Verdicts};

/// The longest an attempt waits for a place to be judged in (others from the same client being
/// judged): a validator answers or times out well within it.
const RESERVATION_WAIT: Duration = Duration::from_secs(30);

/// The longest a credential being judged holds its place in Redis, should its instance never
/// settle it (it stopped): a check, its waits included, ends well within it.
const REMOTE_LEASE: Duration = Duration::from_secs(60);
/// How long an attempt waits before it asks Redis again for a place, while every place is
/// taken across the instances: at first, and at most.
const REMOTE_FULL_WAIT: Duration = Duration::from_millis(100);
const REMOTE_FULL_WAIT_MAX: Duration = Duration::from_millis(1600);
/// How long Redis remembers a revocation at least: as long as a check can take (a verdict
/// judged by a check that began before the revocation must still be refused).
const REMOTE_REVOKED_MIN: Duration = Duration::from_secs(300);

/// A request with a credential, as authentication methods see it.
pub struct Attempt<'a> {
    pub request: &'a RequestHeader,
    pub credential: &'a Credential,
    /// The keyed hash verdicts on the credential are kept under.
    pub digest: Digest,
}

/// What an attempt with a credential does next.
enum Turn<'a> {
    /// Its verdict is known already.
    Known(Verdict),
    /// It is judged, in this place among the failures its client has left.
    Judge(Place<'a>),
}

/// A place among the failures a client has left, here and (with shared state) on every
/// instance.
type Place<'a> = (Reservation<'a>, Option<RemoteLease>);

/// A place reserved in Redis too (its own lease): settled with the outcome, or given back when
/// dropped (the request went away).
struct RemoteLease {
    share: Arc<SiteShare>,
    ip: IpAddr,
    user: Option<u64>,
    lease: String,
    limits: shared::Limits,
    open: bool,
}

impl Drop for RemoteLease {
    fn drop(&mut self) {
        if self.open {
            let lease = std::mem::take(&mut self.lease);
            self.share.release(self.ip, self.user, lease, self.limits);
        }
    }
}

/// One way of telling who a request comes from.
#[async_trait]
pub trait Method: Send + Sync {
    /// The verdict on `attempt`, or `None` when its credential is not one this method reads
    /// (the next method is asked).
    async fn judge(&self, attempt: &Attempt<'_>) -> Option<Verdict>;
}

/// The gate's answer.
pub enum Decision {
    /// Go on, for the user verified (when known; any name, not only one safe to log); `public`:
    /// without credentials (a public path or a CORS preflight).
    Pass {
        user: Option<Arc<str>>,
        public: bool,
    },
    /// Answered by the gate itself; the user name presented, for the access log (never proof
    /// of identity).
    Refuse {
        refusal: Refusal,
        user: Option<Arc<str>>,
    },
}

pub struct Auth {
    service: String,
    /// Users revoked by the admin listener, and the open WebSockets of users.
    revocations: Arc<Revocations>,
    /// The validate_url validators, also for `/status`.
    validator: Arc<validator::Validator>,
    public_paths: Vec<String>,
    lockouts: Arc<Lockouts>,
    /// With `server.shared_state`: this site's keys and channel in Redis.
    share: Option<Arc<SiteShare>>,
    /// The lockout settings, as Redis's scripts take them.
    limits: shared::Limits,
    /// `limits.ipv6_prefix`: the lockout counts an IPv6 client by its network.
    v6_prefix: u8,
    verdicts: Arc<Verdicts>,
    /// Whether the state of the process this one replaced has arrived (after a reload).
    arrival: Arc<Arrival>,
    /// Set once this process handed its sockets over: it judges no new credential (the new
    /// process does, knowing every failure).
    handed_over: AtomicBool,
    /// `cache_seconds`.
    cache_for: Duration,
    methods: Vec<Box<dyn Method>>,
    keys: Option<Arc<jwt::Keys>>,
    /// `external`: the site's own check, after ccedge's.
    external: Option<External>,
    /// The `WWW-Authenticate` of a 401, and the one for a browser's scripts (see `challenge`).
    challenge: HeaderValue,
    script_challenge: HeaderValue,
    metrics: Arc<AuthMetrics>,
}

impl Auth {
    pub fn new(
        service: &str,
        settings: &AuthSettings,
        limits: &Limits,
        (state, share): (&Continuity, Option<Arc<SiteShare>>),
    ) -> Auth {
        let metrics = Arc::new(AuthMetrics::new(service));
        let revocations = Arc::new(Revocations::new(settings.cache_for));
        let verdicts = Arc::new(Verdicts::new(
            revocations.clone(),
            &state.key,
            (share.clone(), service),
        ));
        let mut methods: Vec<Box<dyn Method>> = Vec::new();
        let mut keys = None;
        let mut challenge = format!("realm=\"{service}\", charset=\"UTF-8\"");
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
        let validator = Arc::new(validator::Validator::new(
            service,
            &settings.validate,
            settings.cache_for,
            limits,
            verdicts.clone(),
            metrics.clone(),
        ));
        methods.push(Box::new(validator.clone()));
        Auth {
            validator,
            revocations,
            service: service.to_string(),
            public_paths: settings.public_paths.clone(),
            lockouts: Arc::new(Lockouts::new(&settings.lockout, &state.key)),
            share,
            limits: shared::Limits {
                window: settings.lockout.window,
                block: settings.lockout.block,
                address_failures: settings.lockout.address_failures,
                failures: settings.lockout.failures,
                lease: REMOTE_LEASE,
            },
            v6_prefix: limits.ipv6_prefix,
            verdicts,
            arrival: state.arrival.clone(),
            handed_over: AtomicBool::new(false),
            cache_for: settings.cache_for,
            methods,
            keys,
            external: settings
                .external
                .as_ref()
                .map(|e| External::new(service, e, limits, &state.key)),
            challenge: HeaderValue::from_str(&format!("Basic {challenge}"))
                .expect("service names are visible ASCII"),
            script_challenge: HeaderValue::from_str(&format!("{SCRIPT_SCHEME} {challenge}"))
                .expect("service names are visible ASCII"),
            metrics,
        }
    }

    /// The site's own check, when it has one.
    pub fn external(&self) -> Option<&External> {
        self.external.as_ref()
    }

    /// The background task that keeps the JWT signing keys current, when the site uses SSO.
    pub fn key_refresh(&self) -> Option<KeyRefresh> {
        self.keys.clone().map(KeyRefresh::new)
    }

    /// Decides whether `req` from `client` may go on; `path` is the path rules match (see
    /// `edge::target`).
    pub async fn check(
        &self,
        req: &RequestHeader,
        path: &str,
        client: ClientIdentity,
        websocket: bool,
    ) -> Decision {
        let public = self.public_paths.iter().any(|p| under(path, p));
        if public || is_preflight(req) {
            return Decision::Pass {
                user: None,
                public: true,
            };
        }
        // Just after a reload: the failures and blocks of the previous process first.
        self.arrival.wait().await;
        if let Some(left) = self.lockouts.blocked(client.key, Instant::now()) {
            return self.blocked(client, Kind::Address, None, left);
        }
        let credential = match credential::presented(&req.headers, websocket) {
            Presented::Credential(c) => c,
            Presented::Unusable(why) => {
                return self.failed(req, client, None, None, Arc::from(why), None);
            }
            Presented::Nothing => {
                let challenge = vec![("WWW-Authenticate", self.challenge(req))];
                return self.refuse(401, "credentials required".into(), None, challenge);
            }
        };
        let attempt = Attempt {
            request: req,
            credential: &credential,
            digest: self.verdicts.digest(credential.authorization().as_bytes()),
        };
        // The user name the lockout counts: the one a credential presents (Basic), or the one a
        // known verdict proved; read from the credential only when needed.
        let claimed = std::sync::OnceLock::new();
        let claimed = || claimed.get_or_init(|| credential.user()).as_deref();
        let place = match self.reserve(client, &attempt.digest, claimed).await {
            Ok(Turn::Judge(place)) => place,
            Ok(Turn::Known(verdict)) => {
                self.metrics.kept.inc();
                return self.decide(&attempt, client, claimed, Some(verdict), None);
            }
            Err(refused) => return refused,
        };
        let mut verdict = None;
        for method in &self.methods {
            verdict = method.judge(&attempt).await;
            if verdict.is_some() {
                break;
            }
        }
        self.decide(&attempt, client, claimed, verdict, Some(place))
    }

    /// The credential `digest`'s verdict when it is known and its user and address have a place
    /// free (the verdict store answers at once, so the lookup needs no place, but it must not
    /// answer while guesses in flight could still block them), else a place to judge it in,
    /// waiting while the user or the address has as many credentials being judged as failures
    /// left; the block answer once they reach it. `claimed`: the user name the credential
    /// presents.
    async fn reserve<'c>(
        &self,
        client: ClientIdentity,
        digest: &Digest,
        claimed: impl Fn() -> Option<&'c str>,
    ) -> Result<Turn<'_>, Decision> {
        let deadline = tokio::time::Instant::now() + RESERVATION_WAIT;
        let mut full_wait = REMOTE_FULL_WAIT;
        loop {
            let known = self.verdicts.kept(digest);
            let proven = match &known {
                Some(Verdict::Valid { user: Some(user) }) => Some(user.clone()),
                _ => None,
            };
            let user = match proven.as_deref() {
                Some(user) => Some(user),
                None => claimed(),
            };
            let who = Who {
                ip: client.key,
                user,
            };
            let waiter = match self.lockouts.reserve(who, *digest, known, Instant::now()) {
                Admission::Decide(verdict) => return Ok(Turn::Known(verdict)),
                Admission::Reserved(reservation) => {
                    if self.handed_over.load(Ordering::Acquire) {
                        // The new process judges it, knowing the failures of both.
                        drop(reservation);
                        let retry = vec![("Retry-After", HeaderValue::from_static("1"))];
                        let message = "this server is handing over to a new one after a \
                                       reload: credentials are checked there";
                        return Err(self.refuse(503, message.into(), None, retry));
                    }
                    let Some(share) = self.share.as_ref().filter(|s| s.up()) else {
                        return Ok(Turn::Judge((reservation, None)));
                    };
                    // Across the instances too.
                    let counted = self.lockouts.user_of(who, Some(digest));
                    let hash = counted.map(|(hash, _)| hash);
                    let hex = verdicts::hex(digest);
                    let lease = share.lease(&hex);
                    match share
                        .reserve(client.key, hash, (&hex, &lease), &self.limits)
                        .await
                    {
                        Remote::Reserved => {
                            let lease = RemoteLease {
                                share: share.clone(),
                                ip: client.key,
                                user: hash,
                                lease,
                                limits: self.limits,
                                open: true,
                            };
                            return Ok(Turn::Judge((reservation, Some(lease))));
                        }
                        Remote::Unanswered => return Ok(Turn::Judge((reservation, None))),
                        Remote::Verdict(verdict, left, ago) => {
                            // Unless it is not sealed for this site, or its user was revoked
                            // here since: then judged here, on the local place alone (Redis
                            // answered with the verdict before it looked for room).
                            match self.verdicts.adopt(*digest, verdict, left, ago) {
                                Some(verdict) => {
                                    drop(reservation);
                                    return Ok(Turn::Known(verdict));
                                }
                                None => return Ok(Turn::Judge((reservation, None))),
                            }
                        }
                        Remote::Blocked {
                            user: of_user,
                            left,
                        } => {
                            drop(reservation);
                            let now = Instant::now();
                            let blocked = if of_user { counted } else { None };
                            self.lockouts
                                .apply_block(client.key, blocked, now + left, now);
                            let kind = if of_user { Kind::User } else { Kind::Address };
                            return Err(self.blocked(client, kind, user, left));
                        }
                        Remote::Full => {
                            drop(reservation);
                            // Asked again, less often each time, with jitter.
                            let jitter = rand::random::<u64>() % 50;
                            let pause = tokio::time::Instant::now()
                                + full_wait
                                + Duration::from_millis(jitter);
                            full_wait = (full_wait * 2).min(REMOTE_FULL_WAIT_MAX);
                            if pause >= deadline {
                                return Err(self.too_many(client));
                            }
                            tokio::time::sleep_until(pause).await;
                            continue;
                        }
                    }
                }
                Admission::Blocked(kind, left) => {
                    return Err(self.blocked(client, kind, user, left))
                }
                Admission::Wait(waiter) => waiter,
            };
            let woken = waiter.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.lockouts.settled_since(&waiter) {
                continue;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(self.too_many(client));
            }
        }
    }

    /// The answer to an attempt that waited too long for a place.
    fn too_many(&self, client: ClientIdentity) -> Decision {
        let retry = vec![("Retry-After", HeaderValue::from_static("1"))];
        let message = format!(
            "too many logins from {} are being checked at once",
            self.shown(client.key)
        );
        self.refuse(429, message, None, retry)
    }

    /// The gate's answer once a credential was judged (or found judged): `reservation` is
    /// settled with the outcome. `claimed`: the user name the credential presents, read only
    /// when the answer needs it.
    fn decide<'c>(
        &self,
        attempt: &Attempt<'_>,
        client: ClientIdentity,
        claimed: impl Fn() -> Option<&'c str>,
        verdict: Option<Verdict>,
        reservation: Option<Place<'_>>,
    ) -> Decision {
        let req = attempt.request;
        let user = || claimed().filter(|u| loggable(u)).map(Arc::from);
        match verdict {
            Some(Verdict::Valid { user: proven }) => {
                if let Some((r, _remote)) = reservation {
                    r.settle(false, Instant::now());
                }
                Decision::Pass {
                    user: proven,
                    public: false,
                }
            }
            Some(Verdict::Invalid(why)) => {
                let digest = Some(&attempt.digest);
                self.failed(req, client, claimed(), digest, why, reservation)
            }
            Some(Verdict::Unavailable(why)) => {
                drop(reservation);
                let message = format!("credentials cannot be checked right now: {why}");
                let retry = vec![("Retry-After", HeaderValue::from_static("1"))];
                self.refuse(503, message, user(), retry)
            }
            None => {
                drop(reservation);
                let challenge = vec![("WWW-Authenticate", self.challenge(req))];
                self.refuse(401, "credentials required".into(), None, challenge)
            }
        }
    }

    /// The answer to a blocked client (`Kind::Address`), or user there: 429 with the seconds
    /// left.
    fn blocked(
        &self,
        client: ClientIdentity,
        kind: Kind,
        user: Option<&str>,
        left: Duration,
    ) -> Decision {
        self.metrics.blocked.inc();
        let seconds = left.as_secs().max(1);
        let retry = [("Retry-After", HeaderValue::from(seconds))];
        let from = self.shown(client.key);
        let message = match (kind, user.filter(|u| loggable(u))) {
            (Kind::User, Some(user)) => format!(
                "too many failed logins for {user} from {from}: blocked for {seconds} more seconds"
            ),
            (Kind::User, None) => format!(
                "too many failed logins with these credentials from {from}: blocked for {seconds} more seconds"
            ),
            (Kind::Address, _) => format!(
                "too many failed logins from {from}: blocked for {seconds} more seconds"
            ),
        };
        let user = user.filter(|u| loggable(u)).map(Arc::from);
        self.refuse(429, message, user, retry.to_vec())
    }

    /// The challenge of a 401 to `req`. A request from a page's script (`fetch`, XHR) gets a
    /// scheme browsers do not answer: a `Basic` challenge would make the browser open its own
    /// sign-in dialog over the desktop's (and hang a headless one). Other clients get `Basic`.
    fn challenge(&self, req: &RequestHeader) -> HeaderValue {
        if from_script(req) {
            self.script_challenge.clone()
        } else {
            self.challenge.clone()
        }
    }

    /// A failed attempt for user name `claimed`: 401, counted towards the lockout (through its
    /// reservation, when it had one), and a line when that blocks the user or the client. Only
    /// an address block is the line fail2ban reads (it begins with the address): one agent's
    /// typos must never get an office's address banned.
    fn failed(
        &self,
        req: &RequestHeader,
        client: ClientIdentity,
        claimed: Option<&str>,
        digest: Option<&Digest>,
        why: Arc<str>,
        reservation: Option<Place<'_>>,
    ) -> Decision {
        // The clock is read now: a check may have taken a while.
        let now = Instant::now();
        let who = Who {
            ip: client.key,
            user: claimed,
        };
        let (blocks, lease) = match reservation {
            Some((r, lease)) => (r.settle(true, now), lease),
            None => (self.lockouts.failed(who, digest, now), None),
        };
        report_blocks(&self.service, &self.metrics, client.ip, claimed, &blocks);
        self.count_shared(client, who, digest, lease, &blocks);
        let shown = claimed.filter(|u| loggable(u));
        let challenge = vec![("WWW-Authenticate", self.challenge(req))];
        let user = shown.map(Arc::from);
        self.refuse(401, format!("credentials refused: {why}"), user, challenge)
    }

    /// Counts a failure of `who` with credential `digest` in Redis (settling its place there,
    /// if it had one), and applies here the blocks it begins there that the local count did
    /// not (`local`).
    fn count_shared(
        &self,
        client: ClientIdentity,
        who: Who<'_>,
        digest: Option<&Digest>,
        lease: Option<RemoteLease>,
        local: &Blocks,
    ) {
        let Some(share) = self.share.clone() else {
            return;
        };
        if lease.is_none() && !share.up() {
            return;
        }
        let lease = match lease {
            Some(mut lease) => {
                lease.open = false;
                std::mem::take(&mut lease.lease)
            }
            None => String::new(),
        };
        let user = self
            .lockouts
            .user_of(who, digest)
            .map(|(hash, name)| (hash, name.map(str::to_string)));
        let credential = digest.map(lockout::fingerprint);
        let (lockouts, metrics, limits) =
            (self.lockouts.clone(), self.metrics.clone(), self.limits);
        let service = self.service.clone();
        let claimed = who.user.map(str::to_string);
        let local = (local.address.is_some(), local.user.is_some());
        tokio::spawn(async move {
            let named = user.as_ref().map(|(hash, name)| (*hash, name.as_deref()));
            let (address, of_user) = share
                .settle(client.key, named, &lease, true, credential, &limits)
                .await;
            let now = Instant::now();
            let until = now + limits.block;
            let seconds = limits.block.as_secs();
            let mut begun = Blocks::default();
            if address && !local.0 {
                lockouts.apply_block(client.key, None, until, now);
                begun.address = Some(Blocked {
                    after_failures: limits.address_failures,
                    seconds,
                });
            }
            if let Some(named) = named.filter(|_| of_user && !local.1) {
                lockouts.apply_block(client.key, Some(named), until, now);
                begun.user = Some(Blocked {
                    after_failures: limits.failures,
                    seconds,
                });
            }
            report_blocks(&service, &metrics, client.ip, claimed.as_deref(), &begun);
        });
    }

    fn refuse(
        &self,
        status: u16,
        message: String,
        user: Option<Arc<str>>,
        headers: Vec<(&'static str, HeaderValue)>,
    ) -> Decision {
        Decision::Refuse {
            refusal: Refusal {
                status,
                message: message.into(),
                headers,
                body: None,
            },
            user,
        }
    }

    /// Revokes `user`: verdicts on their credentials stop counting (the next request is checked
    /// again) and their open WebSockets are closed; how many were open.
    pub fn revoke(&self, user: &str) -> usize {
        if let Some(share) = self.share.clone() {
            let (user, keep) = (user.to_string(), self.cache_for.max(REMOTE_REVOKED_MIN));
            tokio::spawn(async move { share.revoke(&user, keep).await });
        }
        self.revocations.revoke(user)
    }

    /// `user` was revoked by another instance's admin listener, `ago`.
    pub fn revoked_elsewhere(&self, user: &str, ago: Duration) {
        let now = Instant::now();
        let at = now.checked_sub(ago).unwrap_or(now);
        let closed = self.revocations.revoke_at(user, at);
        log::info!(
            "user {} revoked by another instance's admin listener: {closed} WebSocket(s) closed (service {})",
            if loggable(user) { user } else { "(a name that cannot be logged)" },
            self.service
        );
    }

    /// A block another instance began: the address `ip`, or with `user` the user there.
    pub fn block_from_elsewhere(
        &self,
        ip: IpAddr,
        user: Option<(u64, Option<&str>)>,
        left: Duration,
    ) {
        let now = Instant::now();
        self.lockouts.apply_block(ip, user, now + left, now);
    }

    /// The admin listener of another instance lifted the block of `user` at `ip` (a client
    /// key), or every block there.
    pub fn lifted_elsewhere(&self, ip: IpAddr, user: Option<&str>) {
        if self.lockouts.clear(ip, user, Instant::now()) {
            log::info!(
                "{}{} unblocked by another instance's admin listener (service {})",
                user.map_or_else(String::new, |u| format!(
                    "user {} at ",
                    if loggable(u) {
                        u
                    } else {
                        "(a name that cannot be logged)"
                    }
                )),
                self.shown(ip),
                self.service
            );
        }
    }

    /// The blocks now, to give Redis back after it was down.
    pub fn blocks(&self) -> Vec<HeldBlock> {
        self.lockouts.blocks(Instant::now())
    }

    /// What an open WebSocket of `user` waits on: it changes when the user is revoked. `None`
    /// when the user was revoked at `since` (when the request's check began) or after.
    pub fn watch(&self, user: &str, since: Instant) -> Option<tokio::sync::watch::Receiver<()>> {
        self.revocations.watch(user, since)
    }

    /// Lifts the block of `user` at the client `ip` counts as (its IPv6 network), or with no
    /// user every block there (the address's and its users'); false when there was none.
    pub async fn lift_block(&self, ip: IpAddr, user: Option<&str>) -> bool {
        let key = identity::client_key(ip, self.v6_prefix);
        let mut elsewhere = false;
        if let Some(share) = &self.share {
            let who = Who { ip: key, user };
            let hash = self.lockouts.user_of(who, None).map(|(h, _)| h);
            // A name no record counts under (empty, too long) lifts nothing anywhere.
            if user.is_none() || hash.is_some() {
                let named = user.zip(hash);
                let lifted = share.lift(key, named, self.limits.block).await;
                elsewhere = lifted.is_some_and(|n| n > 0);
            }
        }
        let lifted = self.lockouts.clear(key, user, Instant::now()) || elsewhere;
        if lifted {
            match user {
                Some(user) => log::warn!(
                    "user {} at {} unblocked by the admin listener (service {})",
                    if loggable(user) {
                        user
                    } else {
                        "(a name that cannot be logged)"
                    },
                    self.shown(key),
                    self.service
                ),
                None => log::warn!(
                    "{} unblocked by the admin listener (service {})",
                    self.shown(key),
                    self.service
                ),
            }
        }
        lifted
    }

    /// A count that changes with the lockouts, the kept verdicts and the revocations.
    pub fn changes(&self) -> u64 {
        self.lockouts.changes() + self.verdicts.changes() + self.revocations.count()
    }

    /// The lockouts and kept verdicts, for the process that takes over at a reload.
    pub fn export(&self, clock: &Clock, now: Instant) -> SiteState {
        let (lockouts, lifts) = self.lockouts.export(clock, now);
        SiteState {
            lockouts,
            lifts,
            verdicts: self.verdicts.export(clock, now),
        }
    }

    /// Merges what process `from`, draining after a reload, handed over (see
    /// `state::handover`).
    pub fn import(&self, state: SiteState, from: u32, same_key: bool, clock: &Clock, now: Instant) {
        let begun = self
            .lockouts
            .import((state.lockouts, state.lifts), from, same_key, clock, now);
        if begun > 0 {
            log::warn!(
                "{begun} block(s) begun: the failed logins counted here and in the process \
                 before the reload together reach the limit (service {})",
                self.service
            );
        }
        if same_key {
            self.verdicts.import(state.verdicts, clock, now);
        }
    }

    /// `user` was revoked at `at`, by a process before a reload.
    pub fn revoked_before(&self, user: &str, at: Instant) {
        self.revocations.revoke_at(user, at);
    }

    /// How long verdicts are kept.
    pub fn cache_for(&self) -> Duration {
        self.cache_for
    }

    /// The process handed its sockets over: from now on it judges no new credential.
    pub fn stop_judging(&self) {
        self.handed_over.store(true, Ordering::Release);
    }

    /// A client key as `/status` and messages show it.
    fn shown(&self, key: IpAddr) -> String {
        identity::show_key(key, self.v6_prefix)
    }

    /// For `/status`: blocked addresses and the state of the signing keys.
    pub fn status(&self) -> Value {
        let blocked: Vec<Value> = self
            .lockouts
            .current(Instant::now())
            .into_iter()
            .map(|c| {
                json!({
                    "client_ip": self.shown(c.ip),
                    "user": c.user,
                    "seconds_left": c.seconds_left,
                })
            })
            .collect();
        json!({
            "lockouts": blocked,
            "validators": self.validator.status(),
            "signing_keys": self.keys.as_ref().map(|k| k.status()),
        })
    }
}

/// `path` lies under public prefix `public`: a prefix ending in `/` covers what follows it; one
/// that does not covers itself and what follows it after a `/` (so `/finesse/api/SystemInfo`
/// does not open `/finesse/api/SystemInfoX`).
fn under(path: &str, public: &str) -> bool {
    match path.strip_prefix(public) {
        Some(rest) => public.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The scheme of the challenge sent to a browser's scripts: not one a browser answers itself.
const SCRIPT_SCHEME: &str = "xBasic";

/// A request a page's script made (`fetch` or XHR), as browsers mark them: a `Sec-Fetch-Mode`
/// other than `navigate` (and `websocket`, where no dialog can open anyway), or the
/// `X-Requested-With: XMLHttpRequest` that script libraries add.
fn from_script(req: &RequestHeader) -> bool {
    let h = &req.headers;
    h.get("sec-fetch-mode")
        .is_some_and(|m| !matches!(m.as_bytes(), b"navigate" | b"websocket"))
        || h.get("x-requested-with")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest"))
}

/// A CORS preflight as browsers send it: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`, and no credentials, cookies, body or upgrade, which browsers
/// never put on one. It runs nothing upstream; the internal server's CORS policy answers it.
fn is_preflight(req: &RequestHeader) -> bool {
    use http::header::*;
    let h = &req.headers;
    let no_body = h.get(CONTENT_LENGTH).is_none_or(|l| l.as_bytes() == b"0")
        && !h.contains_key(TRANSFER_ENCODING);
    req.method == http::Method::OPTIONS
        && h.contains_key(ORIGIN)
        && h.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        && no_body
        && [AUTHORIZATION, COOKIE, UPGRADE, SEC_WEBSOCKET_PROTOCOL]
            .iter()
            .all(|name| !h.contains_key(name))
}

/// Counts and logs the blocks a failed login of `claimed` from `ip` began. Only an address
/// block is the line fail2ban reads (it begins with the address): one agent's typos must never
/// get an office's address banned.
fn report_blocks(
    service: &str,
    metrics: &AuthMetrics,
    ip: IpAddr,
    claimed: Option<&str>,
    blocks: &Blocks,
) {
    let shown = claimed.filter(|u| loggable(u));
    if let Some(blocked) = &blocks.user {
        metrics.user_lockouts.inc();
        let blocked_one = match (claimed, shown) {
            (_, Some(user)) => format!("user {user}"),
            (Some(_), None) => "user (a name that cannot be logged)".to_string(),
            (None, _) => "a credential naming no user".to_string(),
        };
        log::warn!(
            "{blocked_one} blocked at {ip} for {} seconds after {} failed logins (service {service})",
            blocked.seconds,
            blocked.after_failures,
        );
    }
    if let Some(blocked) = &blocks.address {
        metrics.lockouts.inc();
        log::warn!(
            "{ip} blocked for {} seconds after {} failed logins (service {service})",
            blocked.seconds,
            blocked.after_failures,
        );
    }
}

/// A user name worth writing to the access log: a name a directory would hold, never text a
/// client could shape into a log line of its own.
pub fn loggable(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 128
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'\\'))
}

/// Counts a verdict reused from the store or shared with a concurrent request.
fn count_kept(source: Source, metrics: &AuthMetrics) {
    if source != Source::Judged {
        metrics.kept.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_prefixes_end_at_a_segment() {
        assert!(under("/desktop/js/a.js", "/desktop/"));
        assert!(!under("/desktopx/a.js", "/desktop/"));
        assert!(under("/finesse/api/SystemInfo", "/finesse/api/SystemInfo"));
        assert!(under("/finesse/api/SystemInfo/", "/finesse/api/SystemInfo"));
        assert!(!under(
            "/finesse/api/SystemInfoX",
            "/finesse/api/SystemInfo"
        ));
        assert!(!under("/finesse/api/User", "/finesse/api/SystemInfo"));
    }

    fn options(headers: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("OPTIONS", b"/finesse/api/User", None).unwrap();
        for (k, v) in headers {
            r.insert_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn only_a_browser_shaped_preflight_passes() {
        let base = [
            ("Origin", "https://a"),
            ("Access-Control-Request-Method", "PUT"),
        ];
        assert!(is_preflight(&options(&base)));
        assert!(!is_preflight(&options(&base[..1])));
        for extra in [
            ("Authorization", "Basic eDp5"),
            ("Cookie", "a=b"),
            ("Content-Length", "5"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"),
        ] {
            let mut headers = base.to_vec();
            headers.push(extra);
            assert!(!is_preflight(&options(&headers)), "{extra:?}");
        }
    }

    #[test]
    fn scripts_are_told_apart_from_navigations_and_other_clients() {
        for script in [
            [("Sec-Fetch-Mode", "cors")],
            [("Sec-Fetch-Mode", "same-origin")],
            [("Sec-Fetch-Mode", "no-cors")],
            [("X-Requested-With", "XMLHttpRequest")],
        ] {
            assert!(from_script(&options(&script)), "{script:?}");
        }
        for other in [
            &[("Sec-Fetch-Mode", "navigate")][..],
            &[("Sec-Fetch-Mode", "websocket")],
            &[("User-Agent", "curl/8")],
            &[],
        ] {
            assert!(!from_script(&options(other)), "{other:?}");
        }
    }

    #[test]
    fn user_names_that_could_forge_a_line_are_not_logged() {
        assert!(loggable("agent1") && loggable("jane.doe@example.com") && loggable("CORP\\jdoe"));
        assert!(!loggable("x 198.51.100.77 blocked for 1800 seconds"));
        assert!(!loggable("a\nb") && !loggable("") && !loggable(&"a".repeat(129)));
    }
}
