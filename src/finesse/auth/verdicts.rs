//! Verdicts on credentials, kept for a while under a keyed hash of the credential (HMAC-SHA256
//! keyed with the state key, `state::secret`): the credential itself is never stored, and a hash
//! is worthless without the key. The store is bounded (least useful entries go first), and
//! concurrent requests with one new credential wait for a single judgement. A reload hands the
//! kept verdicts to the next process (`export`, `import`).

use super::merged::Merged;
use super::revocation::Revocations;
use crate::state::handover::{Clock, KeptKind, KeptVerdict};
use crate::state::secret::StateKey;
use crate::state::shared::{SharedVerdict, SiteShare};
use hmac::{Hmac, Mac};
use pingora_memory_cache::MemoryCache;
use sha2::Sha256;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Verdicts kept per site at most; a flood of distinct credentials evicts, it does not grow.
const MAX_VERDICTS: usize = 50_000;
/// The longest a verdict handed over at a reload is kept (`cache_seconds` at most: 24 h).
const MAX_KEEP: Duration = Duration::from_secs(86_400);
/// How far apart the clocks of two instances may be.
const CLOCK_SKEW_MS: u64 = 5_000;
/// How long before a verdict's judgement a revocation still voids it when handed over.
const REVOKED_MARGIN: Duration = Duration::from_secs(2);

/// A keyed hash of a credential.
pub type Digest = [u8; 32];

/// What a credential was found to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid, for the user named (the Basic user name or the JWT `sub`).
    Valid { user: Option<Arc<str>> },
    /// Not valid, and why (never the credential itself).
    Invalid(Arc<str>),
    /// Could not be judged (the validator or the keys were unreachable), and why.
    Unavailable(Arc<str>),
}

/// A verdict and how long it may be reused.
#[derive(Debug, Clone)]
pub struct Judged {
    pub verdict: Verdict,
    pub keep: Duration,
}

/// Where a verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Kept from an earlier request.
    Kept,
    /// Judged for another request that was waiting at the same time.
    Shared,
    /// Judged for this request.
    Judged,
}

#[derive(Clone)]
struct Entry {
    digest: Digest,
    verdict: Verdict,
    /// When it was judged: a revocation of its user after this voids it.
    judged: Instant,
    /// When it is no longer kept.
    expires: Instant,
}

/// Judgements in progress, each with when it began.
type Pending = Merged<Digest, (Judged, Instant)>;

pub struct Verdicts {
    /// HMAC-SHA256 keyed with the state key, ready to hash (the key's blocks done once).
    mac: Hmac<Sha256>,
    kept: MemoryCache<Digest, Entry>,
    /// The digests kept, in the order they were, with when each expires (some evicted since):
    /// what a reload hands over is looked up from them.
    order: Mutex<VecDeque<(Digest, Instant)>>,
    /// Verdicts kept so far (a count).
    changes: AtomicU64,
    pending: Pending,
    revocations: Arc<Revocations>,
    /// With `server.shared_state`: where verdicts judged here are kept for every instance.
    share: Option<Arc<SiteShare>>,
    /// The site's name, sealed into the verdicts it keeps in Redis.
    scope: String,
}

impl Verdicts {
    /// `revocations`: users whose verdicts judged before their revocation no longer count.
    pub fn new(
        revocations: Arc<Revocations>,
        key: &StateKey,
        (share, scope): (Option<Arc<SiteShare>>, &str),
    ) -> Self {
        Verdicts {
            share,
            scope: scope.to_string(),
            mac: key.mac(),
            kept: MemoryCache::new(MAX_VERDICTS),
            order: Mutex::new(VecDeque::new()),
            changes: AtomicU64::new(0),
            pending: Merged::new(),
            revocations,
        }
    }

    /// Keeps `verdict` on `digest`, judged at `judged`, until `expires`.
    fn keep(&self, digest: Digest, verdict: Verdict, judged: Instant, expires: Instant) {
        let now = Instant::now();
        let entry = Entry {
            digest,
            verdict,
            judged,
            expires,
        };
        self.kept
            .put(&digest, entry, Some(expires.saturating_duration_since(now)));
        self.changes.fetch_add(1, Ordering::Relaxed);
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        order.push_back((digest, expires));
        if order.len() > 2 * MAX_VERDICTS {
            // Keep only what has not expired, each digest once (its latest).
            let mut seen = HashSet::new();
            let mut kept: VecDeque<(Digest, Instant)> = order
                .iter()
                .rev()
                .filter(|(d, expires)| *expires > now && seen.insert(*d))
                .copied()
                .collect();
            kept.make_contiguous().reverse();
            *order = kept;
        }
    }

    /// The keyed hash that vouches for a verdict kept in Redis: of the site, the credential's
    /// digest and the whole verdict, under the shared key (whoever may write to Redis, without
    /// the key, can neither make a credential valid nor a verdict younger or longer-lived).
    fn seal(&self, digest: &Digest, v: &SharedVerdict) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"ccedge shared verdict\0");
        for part in [
            Some(self.scope.as_str()),
            v.user.as_deref(),
            v.why.as_deref(),
        ] {
            let part = part.unwrap_or("");
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(digest);
        mac.update(&[u8::from(v.valid)]);
        mac.update(&v.judged_at.to_le_bytes());
        mac.update(&v.expires_at.to_le_bytes());
        hex(&mac.finalize().into_bytes().into())
    }

    /// Keeps a verdict judged here for every instance (in the background).
    fn share_verdict(&self, digest: Digest, verdict: &Verdict, began: Instant, keep: Duration) {
        let Some(share) = self.share.clone().filter(|s| s.up()) else {
            return;
        };
        let (valid, user, why) = match verdict {
            Verdict::Valid { user } => (true, user.as_deref().map(str::to_string), None),
            Verdict::Invalid(why) => (false, None, Some(why.to_string())),
            Verdict::Unavailable(_) => return,
        };
        let judged_at = wall_ms().saturating_sub(began.elapsed().as_millis() as u64);
        let mut shared = SharedVerdict {
            valid,
            user,
            why,
            judged_at,
            expires_at: judged_at + keep.as_millis() as u64,
            mac: String::new(),
            judged: None,
        };
        shared.mac = self.seal(&digest, &shared);
        tokio::spawn(async move {
            share
                .keep_verdict(&hex(&digest), &shared, began.elapsed(), keep)
                .await;
        });
    }

    /// Keeps here a verdict another instance judged (kept `left` longer in Redis, judged `ago`
    /// by Redis's clock), when it is sealed with the shared key for this site, judged in the
    /// past and not expired, and its user was not revoked here since; `None` otherwise.
    pub fn adopt(
        &self,
        digest: Digest,
        verdict: SharedVerdict,
        left: Duration,
        ago: Duration,
    ) -> Option<Verdict> {
        let sealed = self.seal(&digest, &verdict);
        let matches = sealed.len() == verdict.mac.len()
            && openssl::memcmp::eq(sealed.as_bytes(), verdict.mac.as_bytes());
        if !matches {
            log::warn!(
                "a verdict in Redis is not sealed with this instance's key_file for this site: \
                 ignored (another deployment with another key, or someone writing to Redis)"
            );
            return None;
        }
        let now_ms = wall_ms();
        // Clocks of instances agree within seconds (NTP); a verdict from the future is not one.
        if verdict.judged_at > now_ms + CLOCK_SKEW_MS || verdict.expires_at <= now_ms {
            return None;
        }
        let ago = ago.max(Duration::from_millis(
            now_ms.saturating_sub(verdict.judged_at),
        ));
        let left = left.min(Duration::from_millis(verdict.expires_at - now_ms));
        let now = Instant::now();
        let judged = now.checked_sub(ago).unwrap_or(now);
        let verdict = if verdict.valid {
            if let Some(user) = &verdict.user {
                if self.revocations.revoked_since(user, judged) {
                    return None;
                }
            }
            Verdict::Valid {
                user: verdict.user.map(Arc::from),
            }
        } else {
            Verdict::Invalid(verdict.why.unwrap_or_default().into())
        };
        if !left.is_zero() {
            self.keep(digest, verdict.clone(), judged, now + left.min(MAX_KEEP));
        }
        Some(verdict)
    }

    /// A count that changes with every verdict kept.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// The verdicts kept now (valid ones of users revoked since left out), for the process
    /// that takes over at a reload.
    pub fn export(&self, clock: &Clock, now: Instant) -> Vec<KeptVerdict> {
        let order: Vec<(Digest, Instant)> = self
            .order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        let mut seen = HashSet::new();
        order
            .iter()
            .rev()
            .filter(|(d, expires)| *expires > now && seen.insert(*d))
            .filter_map(|(d, _)| {
                let (entry, _) = self.kept.get(d);
                let entry = entry.filter(|e| e.digest == *d)?;
                let verdict = match self.kept(d)? {
                    Verdict::Valid { user } => KeptKind::Valid {
                        user: user.map(|u| u.to_string()),
                    },
                    Verdict::Invalid(why) => KeptKind::Invalid {
                        why: why.to_string(),
                    },
                    Verdict::Unavailable(_) => return None,
                };
                Some(KeptVerdict {
                    digest: hex(d),
                    verdict,
                    judged_ms: clock.ms(entry.judged),
                    expires_ms: clock.ms(entry.expires),
                })
            })
            .collect()
    }

    /// Adds the verdicts a process draining after a reload handed over that this store lacks,
    /// each until it expired there. A valid one is left out when its user was revoked here
    /// after it was judged, or up to `REVOKED_MARGIN` before (the draining process hears of a
    /// revocation within that).
    pub fn import(&self, verdicts: Vec<KeptVerdict>, clock: &Clock, now: Instant) {
        for v in verdicts {
            let Some(digest) = unhex(&v.digest) else {
                continue;
            };
            let judged = clock.instant(v.judged_ms, now);
            let expires = clock.instant(v.expires_ms, now + MAX_KEEP).max(judged);
            if expires <= now || self.kept(&digest).is_some() {
                continue;
            }
            let verdict = match v.verdict {
                KeptKind::Valid { user } => {
                    let since = judged.checked_sub(REVOKED_MARGIN).unwrap_or(judged);
                    if user
                        .as_deref()
                        .is_some_and(|u| self.revocations.revoked_since(u, since))
                    {
                        continue;
                    }
                    Verdict::Valid {
                        user: user.map(Arc::from),
                    }
                }
                KeptKind::Invalid { why } => Verdict::Invalid(why.into()),
            };
            self.keep(digest, verdict, judged, expires);
        }
    }

    pub fn digest(&self, credential: &[u8]) -> Digest {
        let mut mac = self.mac.clone();
        mac.update(credential);
        mac.finalize().into_bytes().into()
    }

    /// The verdict kept for `digest`, if there is one (and its user was not revoked since).
    pub fn kept(&self, digest: &Digest) -> Option<Verdict> {
        // The store is keyed by a 64-bit hash of the digest: compare the whole digest.
        // Kept until `expires` by the store's own time to live (see `keep`).
        let (entry, _) = self.kept.get(digest);
        let entry = entry.filter(|e| e.digest == *digest)?;
        if let Verdict::Valid { user: Some(user) } = &entry.verdict {
            if self.revocations.revoked_since(user, entry.judged) {
                self.kept.remove(digest);
                return None;
            }
        }
        Some(entry.verdict)
    }

    /// The verdict for `digest`: kept, or from `judge`, which runs once however many requests
    /// ask at the same time (should the request running it go away, a waiting one takes over).
    /// A valid verdict whose check began before its user was revoked is judged again (once;
    /// revoked again meanwhile, it is unavailable): a request that joined a check running at
    /// the revocation must not pass on it.
    pub async fn get_or_judge<F, Fut>(&self, digest: Digest, judge: F) -> (Verdict, Source)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Judged>,
    {
        for _ in 0..2 {
            if let Some(verdict) = self.kept(&digest) {
                return (verdict, Source::Kept);
            }
            let (judged, began, source) = self.judge_once(digest, &judge).await;
            let revoked = match &judged.verdict {
                Verdict::Valid { user: Some(user) } => self.revocations.revoked_since(user, began),
                _ => false,
            };
            if !revoked {
                return (judged.verdict, source);
            }
        }
        let why = "the user was revoked while the credentials were checked";
        (Verdict::Unavailable(why.into()), Source::Judged)
    }

    /// One judgement of `digest`, shared with whoever asks meanwhile; when it began.
    async fn judge_once<F, Fut>(&self, digest: Digest, judge: &F) -> (Judged, Instant, Source)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Judged>,
    {
        let ((judged, began), ran) = self
            .pending
            .once(digest, || {
                let began = Instant::now();
                let judgement = judge();
                async move { (judgement.await, began) }
            })
            .await;
        if ran && !judged.keep.is_zero() {
            self.keep(digest, judged.verdict.clone(), began, began + judged.keep);
            self.share_verdict(digest, &judged.verdict, began, judged.keep);
        }
        let source = if ran { Source::Judged } else { Source::Shared };
        (judged, began, source)
    }

    /// Judgements in progress.
    #[cfg(test)]
    fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Now, in Unix milliseconds.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Digest> {
    let mut digest = [0; 32];
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key() -> StateKey {
        StateKey::from_bytes(&rand::random::<[u8; 32]>())
    }

    fn valid(user: &str) -> Judged {
        Judged {
            verdict: Verdict::Valid {
                user: Some(user.into()),
            },
            keep: Duration::from_secs(60),
        }
    }

    #[test]
    fn digests_are_keyed() {
        let a = Verdicts::new(
            Arc::new(Revocations::new(Duration::from_secs(900))),
            &key(),
            (None, "site"),
        );
        let b = Verdicts::new(
            Arc::new(Revocations::new(Duration::from_secs(900))),
            &key(),
            (None, "site"),
        );
        assert_eq!(a.digest(b"Basic x"), a.digest(b"Basic x"));
        assert_ne!(a.digest(b"Basic x"), a.digest(b"Basic y"));
        assert_ne!(a.digest(b"Basic x"), b.digest(b"Basic x"));
    }

    #[tokio::test]
    async fn a_verdict_is_kept_and_reused() {
        let v = Verdicts::new(
            Arc::new(Revocations::new(Duration::from_secs(900))),
            &key(),
            (None, "site"),
        );
        let d = v.digest(b"Basic x");
        let (verdict, source) = v.get_or_judge(d, || async { valid("a") }).await;
        assert_eq!(source, Source::Judged);
        assert!(matches!(verdict, Verdict::Valid { .. }));
        let (_, source) = v.get_or_judge(d, || async { panic!("judged twice") }).await;
        assert_eq!(source, Source::Kept);
        assert_eq!(v.pending_len(), 0);
    }

    #[tokio::test]
    async fn zero_keep_is_not_kept() {
        let v = Verdicts::new(
            Arc::new(Revocations::new(Duration::from_secs(900))),
            &key(),
            (None, "site"),
        );
        let d = v.digest(b"Bearer t");
        let down = || async {
            Judged {
                verdict: Verdict::Unavailable("down".into()),
                keep: Duration::ZERO,
            }
        };
        assert_eq!(v.get_or_judge(d, down).await.1, Source::Judged);
        assert_eq!(v.get_or_judge(d, down).await.1, Source::Judged);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_judgement() {
        let v = Arc::new(Verdicts::new(
            Arc::new(Revocations::new(Duration::from_secs(900))),
            &key(),
            (None, "site"),
        ));
        let calls = Arc::new(AtomicUsize::new(0));
        let d = v.digest(b"Basic new");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (v, calls) = (v.clone(), calls.clone());
                tokio::spawn(async move {
                    v.get_or_judge(d, || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        valid("a")
                    })
                    .await
                })
            })
            .collect();
        for task in tasks {
            assert!(matches!(task.await.unwrap().0, Verdict::Valid { .. }));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(v.pending_len(), 0);
    }

    #[tokio::test]
    async fn waiters_going_away_together_leave_nothing_behind() {
        let v = Arc::new(Verdicts::new(
            Arc::new(Revocations::new(Duration::from_secs(900))),
            &key(),
            (None, "site"),
        ));
        let d = v.digest(b"Basic pair");
        for _ in 0..200 {
            let tasks: Vec<_> = (0..2)
                .map(|_| {
                    let v = v.clone();
                    tokio::spawn(async move {
                        v.get_or_judge(d, || async {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            valid("a")
                        })
                        .await
                    })
                })
                .collect();
            tokio::task::yield_now().await;
            for task in &tasks {
                task.abort();
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        assert_eq!(v.pending_len(), 0);
    }

    #[tokio::test]
    async fn a_check_running_when_its_user_is_revoked_is_judged_again_for_all() {
        let revocations = Arc::new(Revocations::new(Duration::from_secs(900)));
        let v = Arc::new(Verdicts::new(revocations.clone(), &key(), (None, "site")));
        let d = v.digest(b"Basic agent8");
        let runs = Arc::new(AtomicUsize::new(0));
        let ask = |v: Arc<Verdicts>, runs: Arc<AtomicUsize>| async move {
            v.get_or_judge(d, || {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    valid("agent8")
                }
            })
            .await
        };
        let first = tokio::spawn(ask(v.clone(), runs.clone()));
        tokio::time::sleep(Duration::from_millis(30)).await;
        revocations.revoke("agent8");
        // Arrives after the revocation and joins the check that began before it.
        let second = tokio::spawn(ask(v.clone(), runs.clone()));
        for request in [first, second] {
            let (verdict, _) = request.await.unwrap();
            assert_eq!(verdict, valid("agent8").verdict);
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "judged again after the revocation"
        );
        let (_, source) = ask(v.clone(), runs.clone()).await;
        assert_eq!(source, Source::Kept, "the new verdict is kept");
    }

    #[tokio::test]
    async fn an_abandoned_judgement_leaves_nothing_behind() {
        let v = Verdicts::new(
            Arc::new(Revocations::new(Duration::from_secs(900))),
            &key(),
            (None, "site"),
        );
        let d = v.digest(b"Basic gone");
        let slow = v.get_or_judge(d, || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            valid("a")
        });
        assert!(tokio::time::timeout(Duration::from_millis(20), slow)
            .await
            .is_err());
        assert_eq!(v.pending_len(), 0);
        let (_, source) = v.get_or_judge(d, || async { valid("a") }).await;
        assert_eq!(source, Source::Judged);
    }

    #[tokio::test]
    async fn kept_verdicts_pass_to_the_next_process_and_a_revocation_there_voids_them() {
        let key = key();
        let clock = Clock::process();
        let old = Verdicts::new(
            Arc::new(Revocations::new(Duration::from_secs(900))),
            &key,
            (None, "site"),
        );
        let (a, b, c) = (
            old.digest(b"Basic a"),
            old.digest(b"Basic b"),
            old.digest(b"Basic c"),
        );
        old.get_or_judge(a, || async { valid("agent1") }).await;
        old.get_or_judge(b, || async { valid("agent2") }).await;
        let refused = || async {
            Judged {
                verdict: Verdict::Invalid("wrong password".into()),
                keep: Duration::from_secs(60),
            }
        };
        old.get_or_judge(c, refused).await;
        let exported = old.export(&clock, Instant::now());
        assert_eq!(exported.len(), 3);
        // Through the file's form.
        let exported: Vec<KeptVerdict> =
            serde_json::from_slice(&serde_json::to_vec(&exported).unwrap()).unwrap();

        let revocations = Arc::new(Revocations::new(Duration::from_secs(900)));
        let new = Verdicts::new(revocations.clone(), &key, (None, "site"));
        assert_eq!(new.digest(b"Basic a"), a, "the same key hashes alike");
        revocations.revoke("AGENT2");
        new.import(exported.clone(), &clock, Instant::now());
        assert_eq!(new.kept(&a), Some(valid("agent1").verdict));
        assert_eq!(new.kept(&b), None, "revoked after it was judged");
        assert_eq!(
            new.kept(&c),
            Some(Verdict::Invalid("wrong password".into()))
        );
        let (_, source) = new
            .get_or_judge(a, || async { panic!("judged again after a reload") })
            .await;
        assert_eq!(source, Source::Kept);
    }

    #[tokio::test]
    async fn a_verdict_handed_over_expires_when_it_would_have() {
        let key = key();
        let clock = Clock::process();
        let old = Verdicts::new(
            Arc::new(Revocations::new(Duration::from_secs(900))),
            &key,
            (None, "site"),
        );
        let a = old.digest(b"Basic a");
        let short = || async {
            Judged {
                keep: Duration::from_millis(300),
                ..valid("agent1")
            }
        };
        old.get_or_judge(a, short).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let new = Verdicts::new(
            Arc::new(Revocations::new(Duration::from_secs(900))),
            &key,
            (None, "site"),
        );
        new.import(old.export(&clock, Instant::now()), &clock, Instant::now());
        assert!(new.kept(&a).is_some());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            new.kept(&a),
            None,
            "300 ms after its judgement, not after the reload"
        );
        // Nor is an expired one taken, nor one revoked just before its judgement (the old
        // process had not heard of it yet).
        new.import(old.export(&clock, Instant::now()), &clock, Instant::now());
        assert_eq!(new.kept(&a), None);
        let revocations = Arc::new(Revocations::new(Duration::from_secs(900)));
        let late = Verdicts::new(revocations.clone(), &key, (None, "site"));
        revocations.revoke("agent1");
        let b = old.digest(b"Basic b");
        old.get_or_judge(b, || async { valid("agent1") }).await;
        late.import(old.export(&clock, Instant::now()), &clock, Instant::now());
        assert_eq!(late.kept(&b), None);
    }

    #[test]
    fn a_verdict_from_redis_is_believed_only_as_it_was_sealed() {
        let key = key();
        let revocations = Arc::new(Revocations::new(Duration::from_secs(900)));
        let here = Verdicts::new(revocations.clone(), &key, (None, "desktop"));
        let d = here.digest(b"Basic agent1");
        let now = wall_ms();
        let sealed = |v: &Verdicts, judged_at: u64, expires_at: u64| {
            let mut s = SharedVerdict {
                valid: true,
                user: Some("agent1".into()),
                why: None,
                judged_at,
                expires_at,
                mac: String::new(),
                judged: None,
            };
            s.mac = v.seal(&d, &s);
            s
        };
        let (left, ago) = (Duration::from_secs(60), Duration::from_millis(10));
        let good = sealed(&here, now - 10, now + 60_000);
        assert!(here.adopt(d, good.clone(), left, ago).is_some());
        // Made younger or longer-lived, or the user's name changed, by whoever writes to Redis.
        for forged in [
            SharedVerdict {
                judged_at: now + 1,
                ..good.clone()
            },
            SharedVerdict {
                expires_at: now + 9_000_000,
                ..good.clone()
            },
            SharedVerdict {
                user: Some("admin".into()),
                ..good.clone()
            },
        ] {
            assert_eq!(here.adopt(d, forged, left, ago), None);
        }
        // Another site's, from the future, expired.
        let there = Verdicts::new(revocations.clone(), &key, (None, "other"));
        assert_eq!(
            here.adopt(d, sealed(&there, now - 10, now + 60_000), left, ago),
            None
        );
        assert_eq!(
            here.adopt(d, sealed(&here, now + 60_000, now + 120_000), left, ago),
            None
        );
        assert_eq!(
            here.adopt(d, sealed(&here, now - 120_000, now - 60_000), left, ago),
            None
        );
        // Revoked here after it was judged.
        revocations.revoke("agent1");
        assert_eq!(
            here.adopt(d, sealed(&here, now - 10, now + 60_000), left, ago),
            None
        );
    }
}
