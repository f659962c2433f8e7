//! Revoking a user (`DELETE /auth/users/<name>` on the admin listener): the verdicts kept on the
//! user's credentials stop counting at once, so the next request is checked again, and the user's
//! open WebSockets are closed (with a close frame saying why). User names are compared without
//! regard to ASCII case.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Users tracked before those with no open WebSocket and no recent revocation are forgotten;
/// then again each time the table has doubled since.
const TIDY_PAST: usize = 4096;

#[derive(Default)]
struct UserState {
    revoked_at: Option<Instant>,
    /// Told when the user is revoked; each open WebSocket of the user holds a receiver.
    sessions: Option<watch::Sender<()>>,
}

#[derive(Default)]
struct Table {
    /// By lower-case user name.
    users: HashMap<String, UserState>,
    /// The size at which the table is tidied next.
    tidy_at: usize,
}

pub struct Revocations {
    table: RwLock<Table>,
    /// Where `latest` counts from.
    origin: Instant,
    /// When the latest revocation happened, in milliseconds since `origin` (0: none yet): a
    /// verdict judged after it needs no look at the table.
    latest: AtomicU64,
    /// How long a revocation is remembered: as long as a kept verdict lives, and at least as
    /// long as a check can take (a revocation during it must still be found when it ends).
    keep: Duration,
    count: AtomicU64,
}

/// The longest a credential's check can take, waits for a place and the validator included,
/// with room to spare.
const CHECK_MAX: Duration = Duration::from_secs(300);

/// `user` as the table knows it (lower case), without a copy when it is already.
fn folded(user: &str) -> Cow<'_, str> {
    if user.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(user.to_ascii_lowercase())
    } else {
        Cow::Borrowed(user)
    }
}

impl Revocations {
    pub fn new(keep: Duration) -> Self {
        Revocations {
            table: RwLock::new(Table {
                users: HashMap::new(),
                tidy_at: TIDY_PAST,
            }),
            origin: Instant::now(),
            latest: AtomicU64::new(0),
            keep: keep.max(CHECK_MAX),
            count: AtomicU64::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `user` was revoked after a verdict on their credential judged at `judged`.
    pub fn revoked_since(&self, user: &str, judged: Instant) -> bool {
        let latest = self.latest.load(Ordering::Acquire);
        if latest == 0 || latest < self.millis(judged) {
            return false;
        }
        self.read()
            .users
            .get(folded(user).as_ref())
            .and_then(|s| s.revoked_at)
            .is_some_and(|at| at >= judged)
    }

    /// What an open WebSocket of `user` waits on: it changes when the user is revoked. `None`
    /// when the user was revoked at `since` or after (while their credential was being
    /// checked, say): that WebSocket must not open.
    pub fn watch(&self, user: &str, since: Instant) -> Option<watch::Receiver<()>> {
        let mut table = self.write();
        if table.users.len() >= table.tidy_at {
            let now = Instant::now();
            table.users.retain(|_, s| {
                s.sessions.as_ref().is_some_and(|t| t.receiver_count() > 0)
                    || s.revoked_at
                        .is_some_and(|at| now.duration_since(at) < self.keep)
            });
            table.tidy_at = (table.users.len() * 2).max(TIDY_PAST);
        }
        let state = table.users.entry(folded(user).into_owned()).or_default();
        if state.revoked_at.is_some_and(|at| at >= since) {
            return None;
        }
        Some(
            state
                .sessions
                .get_or_insert_with(|| watch::channel(()).0)
                .subscribe(),
        )
    }

    /// Revocations so far (a count).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Revokes `user` now; how many of their WebSockets were open (they are told to close).
    pub fn revoke(&self, user: &str) -> usize {
        self.revoke_at(user, Instant::now())
    }

    /// Revokes `user` as of `at` (another instance revoked them then, or a process before a
    /// reload): verdicts judged before stop counting; how many of their WebSockets were open
    /// (they are told to close).
    pub fn revoke_at(&self, user: &str, at: Instant) -> usize {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut table = self.write();
        let state = table.users.entry(folded(user).into_owned()).or_default();
        if state.revoked_at.is_none_or(|t| t < at) {
            state.revoked_at = Some(at);
        }
        self.latest
            .fetch_max(self.millis(at).max(1), Ordering::AcqRel);
        match &state.sessions {
            Some(sessions) => {
                let open = sessions.receiver_count();
                sessions.send_replace(());
                open
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_concerns_verdicts_judged_before_it_only() {
        let r = Revocations::new(Duration::from_secs(900));
        let before = Instant::now();
        assert!(!r.revoked_since("alice", before));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(r.revoke("Alice"), 0);
        assert!(r.revoked_since("alice", before));
        assert!(r.revoked_since("ALICE", before));
        assert!(!r.revoked_since("bob", before));
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            !r.revoked_since("alice", Instant::now()),
            "checked again since"
        );
    }

    #[tokio::test]
    async fn open_websockets_of_the_user_are_told() {
        let r = Revocations::new(Duration::from_secs(900));
        let opened = Instant::now();
        let mut alice = r.watch("alice", opened).unwrap();
        let bob = r.watch("bob", opened).unwrap();
        assert_eq!(r.revoke("ALICE"), 1);
        assert!(alice.changed().await.is_ok());
        assert!(!bob.has_changed().unwrap());
        // A WebSocket whose credential was being checked when the revocation came.
        assert!(r.watch("Alice", opened).is_none());
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            r.watch("alice", Instant::now()).is_some(),
            "checked again since"
        );
    }
}
