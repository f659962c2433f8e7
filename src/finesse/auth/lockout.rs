//! Brute-force protection, per user and per address: `failures` invalid credentials for one user
//! name from one client address within `window` block that user there, and `address_failures`
//! from one address across all users (password spraying) block the address, each for `block`.
//! A credential without a usable user name (a token) counts as a user of its own, so one stale
//! token replayed by a gadget blocks that token, not its office; a malformed header counts
//! towards the address only. The table is bounded: past `MAX_TRACKED` records, those idle longest are
//! forgotten first, so a flood of addresses or names cannot grow it without limit.
//!
//! Guesses cannot outrun the count by arriving together: a credential that must be judged
//! (sent to the validator, or verified) first reserves a place among the failures its user and
//! its address may still have, and only as many credentials as remain are judged at once
//! (requests with the same credential share its place). Further attempts wait until one is
//! settled (a failure counts, a success gives its place back), and meet the block if the
//! failures reach it.

use super::verdicts::Digest;
use crate::config::Lockout as Settings;
use crate::state::handover::{Clock, Failure, Lift, LockoutRecord, UserRef};
use crate::state::secret::StateKey;
use crate::state::shared::HeldBlock;
use siphasher::sip::SipHasher13;
use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Records (addresses, and user names at addresses) tracked per site at most.
const MAX_TRACKED: usize = 65_536;
/// The longest user name counted on its own; a credential with a longer one counts as itself.
const USER_MAX: usize = 256;
/// The longest a credential being judged by a process draining after a reload holds a place
/// here, should no later state of that process say it was settled (it was killed, say).
const HANDED_MAX: Duration = Duration::from_secs(60);
/// What `/status` shows for the user of a block on a credential that names none.
pub const NAMELESS: &str = "(a credential naming no user)";

/// What a record counts: every attempt from a client address, or one user's there (the user
/// name by a keyed hash of its lower-case form: `Alice` and `alice` are one user; a credential
/// naming no user by a keyed hash of its digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    ip: IpAddr,
    user: Option<u64>,
}

/// Who an attempt comes from: a client (its lockout key) and the user name it presents.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub ip: IpAddr,
    pub user: Option<&'a str>,
}

/// A lift: of which record (with no user, every record at the address), the user name lifted
/// (when one was given), when.
type LiftDone = (Key, Option<Box<str>>, Instant);

/// Which kind of block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One user at one address.
    User,
    /// Every attempt from the address.
    Address,
}

#[derive(Default)]
struct Record {
    /// When the recent failures happened, and with which credential (a fingerprint of its
    /// digest; none for a malformed one).
    failures: VecDeque<(Instant, Option<u64>)>,
    blocked_until: Option<Instant>,
    last_seen: Option<Instant>,
    /// Credentials being judged now, each holding one place among the failures left, and how
    /// many requests carry it.
    judging: Vec<(Digest, u32)>,
    /// Woken when one of them is settled; made when an attempt first waits.
    wake: Option<Arc<Notify>>,
    /// Settlements so far, so that a waiting attempt can tell one happened before it waited.
    settled: u64,
    /// The user name as first presented (user records only), for `/status`.
    name: Option<Box<str>>,
    /// Places held by credentials a process draining after a reload was judging when it last
    /// wrote its state: by process, how many, since when.
    handed: Vec<(u32, u32, Instant)>,
}

impl Record {
    /// Whether the record still matters at `now`: a block, a failure within `window`, or an
    /// attempt being judged.
    fn live(&self, now: Instant, window: Duration) -> bool {
        !self.judging.is_empty()
            || !self.handed.is_empty()
            || self.blocked_until.is_some_and(|u| u > now)
            || self
                .failures
                .back()
                .is_some_and(|(t, _)| now.duration_since(*t) < window)
    }

    fn blocked_for(&self, now: Instant) -> Option<Duration> {
        self.blocked_until.filter(|u| *u > now).map(|u| u - now)
    }

    /// Whether the failures within `window` and the credentials being judged fill `limit`.
    fn full(&mut self, limit: u32, window: Duration, now: Instant) -> bool {
        forget_old(&mut self.failures, window, now);
        self.handed
            .retain(|(_, _, since)| now.saturating_duration_since(*since) < HANDED_MAX);
        let handed: u32 = self.handed.iter().map(|(_, n, _)| n).sum();
        self.failures.len() + self.judging.len() + handed as usize >= limit as usize
    }

    fn waiter(&mut self, key: Key) -> Waiter {
        Waiter {
            wake: self.wake.get_or_insert_with(Default::default).clone(),
            seen: self.settled,
            key,
        }
    }

    /// One request with `digest` is settled.
    fn release(&mut self, digest: &Digest) {
        if let Some(at) = self.judging.iter().position(|(d, _)| d == digest) {
            self.judging[at].1 -= 1;
            if self.judging[at].1 == 0 {
                self.judging.swap_remove(at);
            }
        }
        self.settled += 1;
    }
}

/// What a client with a credential may do now; `V` is a verdict known already.
pub enum Admission<'a, V> {
    /// Judge it; settle the reservation with the outcome.
    Reserved(Reservation<'a>),
    /// Its verdict is known and the client has a place free: decide at once, without one.
    Decide(V),
    /// The user at this address, or the address, is blocked for this long.
    Blocked(Kind, Duration),
    /// As many credentials as the user or the address has failures left are being judged:
    /// wait for one to be settled, then ask again.
    Wait(Waiter),
}

/// How an attempt waits for a settlement: register with `wake`, then wait only when
/// `Lockouts::settled_since` is false (else one happened before it registered).
pub struct Waiter {
    pub wake: Arc<Notify>,
    seen: u64,
    key: Key,
}

/// A place taken among a user's and an address's remaining failures, while a credential is
/// judged. Dropped unsettled (the request went away), its share of the place is given back.
pub struct Reservation<'a> {
    lockouts: &'a Lockouts,
    ip: IpAddr,
    user: Option<u64>,
    digest: Digest,
    open: bool,
}

impl Reservation<'_> {
    /// The attempt's outcome: `failed` counts against the user and the address (and may
    /// block them).
    pub fn settle(mut self, failed: bool, now: Instant) -> Blocks {
        self.open = false;
        self.lockouts
            .settle(self.ip, self.user, &self.digest, failed, now)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.open {
            self.lockouts
                .settle(self.ip, self.user, &self.digest, false, Instant::now());
        }
    }
}

/// A block just begun.
#[derive(Debug, PartialEq, Eq)]
pub struct Blocked {
    pub after_failures: u32,
    pub seconds: u64,
}

/// The blocks a failure began: its user's at the address, the address's, both or neither.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Blocks {
    pub user: Option<Blocked>,
    pub address: Option<Blocked>,
}

/// A block as `/status` shows it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Current {
    pub ip: IpAddr,
    /// `None`: the address itself is blocked.
    pub user: Option<String>,
    pub seconds_left: u64,
}

pub struct Lockouts {
    settings: Settings,
    /// Hashes user names, keyed with the state key (every process hashes alike: reloads hand
    /// the table over).
    names: SipHasher13,
    table: Mutex<HashMap<Key, Record>>,
    /// Lifts by the admin listener (here or in a process before a reload, with the user name
    /// lifted, if one), kept while the failures and blocks they lifted could still arrive from
    /// a process draining after a reload: those are not taken over.
    lifts: Mutex<Vec<LiftDone>>,
    /// Counts failures and lifts, so that a draining process writes its state only when it
    /// changed.
    changes: AtomicU64,
    /// Where `latest_end` counts from.
    origin: Instant,
    /// When the last address block to end ends, in milliseconds since `origin`: past it, no
    /// address is blocked and `blocked` needs no lock.
    latest_end: AtomicU64,
}

impl Lockouts {
    pub fn new(settings: &Settings, key: &StateKey) -> Self {
        Lockouts {
            settings: settings.clone(),
            names: key.name_hasher(),
            table: Mutex::new(HashMap::new()),
            lifts: Mutex::new(Vec::new()),
            changes: AtomicU64::new(0),
            origin: Instant::now(),
            latest_end: AtomicU64::new(0),
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Record>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of `user`'s record at `ip` (none for a name too long to count on its own).
    fn user_key(&self, ip: IpAddr, user: Option<&str>) -> Option<Key> {
        let name = user.filter(|u| !u.is_empty() && u.len() <= USER_MAX)?;
        let mut hasher = self.names;
        for b in name.bytes() {
            hasher.write_u8(b.to_ascii_lowercase());
        }
        Some(Key {
            ip,
            user: Some(hasher.finish()),
        })
    }

    /// The key of the record that stands for the user of `who`'s credential `digest`: its
    /// user name's, or when it names none it can count under, the credential's own (names are
    /// UTF-8, which never holds the byte that sets the two apart); the name to show for it.
    fn counted_as<'w>(
        &self,
        who: Who<'w>,
        digest: Option<&Digest>,
    ) -> Option<(Key, Option<&'w str>)> {
        if let Some(key) = self.user_key(who.ip, who.user) {
            return Some((key, who.user));
        }
        let digest = digest?;
        let mut hasher = self.names;
        hasher.write_u8(0xFF);
        hasher.write(digest);
        let key = Key {
            ip: who.ip,
            user: Some(hasher.finish()),
        };
        Some((key, None))
    }

    /// The record for `key`, made (with `name`) if there is none.
    fn record<'t>(
        &self,
        table: &'t mut HashMap<Key, Record>,
        key: Key,
        name: Option<&str>,
        now: Instant,
    ) -> &'t mut Record {
        if !table.contains_key(&key) && table.len() >= MAX_TRACKED {
            self.make_room(table, now);
        }
        let record = table.entry(key).or_insert_with(|| Record {
            name: key.user.and(name).map(Box::from),
            ..Record::default()
        });
        record.last_seen = Some(now);
        record
    }

    /// How long the address `ip` stays blocked, if it is.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.millis(now) >= self.latest_end.load(Ordering::Relaxed) {
            return None;
        }
        self.table().get(&Key { ip, user: None })?.blocked_for(now)
    }

    /// What credential `digest` from `who` may do: nothing while the address or the user there
    /// is blocked; share the place of another request with it that is being judged; wait while
    /// the address or the user has as many credentials being judged as failures left (a known
    /// verdict too: a guess the verdict store answers must not pass while guesses in flight
    /// could still block); else be decided at once when its verdict is `known`, or take a place.
    pub fn reserve<V>(
        &self,
        who: Who<'_>,
        digest: Digest,
        known: Option<V>,
        now: Instant,
    ) -> Admission<'_, V> {
        let address = Key {
            ip: who.ip,
            user: None,
        };
        let counted = self.counted_as(who, Some(&digest));
        let user = counted.map(|(key, _)| key);
        let window = self.settings.window;
        let mut table = self.table();
        // Looked at without making records: a known credential of a client with nothing
        // against it makes none.
        let mut wait = None;
        let mut shared = false;
        if let Some(record) = table.get_mut(&address) {
            if let Some(left) = record.blocked_for(now) {
                return Admission::Blocked(Kind::Address, left);
            }
            shared = record.judging.iter().any(|(d, _)| *d == digest);
            if !shared && record.full(self.settings.address_failures, window, now) {
                wait = Some(record.waiter(address));
            }
        }
        if let Some(record) = user.and_then(|key| table.get_mut(&key)) {
            if let Some(left) = record.blocked_for(now) {
                return Admission::Blocked(Kind::User, left);
            }
            if !shared && wait.is_none() && record.full(self.settings.failures, window, now) {
                wait = user.map(|key| record.waiter(key));
            }
        }
        if let Some(waiter) = wait {
            return Admission::Wait(waiter);
        }
        if !shared {
            if let Some(verdict) = known {
                return Admission::Decide(verdict);
            }
        }
        let name = counted.and_then(|(_, name)| name);
        for key in std::iter::once(address).chain(user) {
            let record = self.record(&mut table, key, name, now);
            match record.judging.iter_mut().find(|(d, _)| *d == digest) {
                Some((_, holders)) => *holders += 1,
                None => record.judging.push((digest, 1)),
            }
        }
        Admission::Reserved(Reservation {
            lockouts: self,
            ip: who.ip,
            user: user.and_then(|k| k.user),
            digest,
            open: true,
        })
    }

    /// Whether the record `waiter` waits on had a settlement after it was handed out (or is
    /// gone).
    pub fn settled_since(&self, waiter: &Waiter) -> bool {
        self.table()
            .get(&waiter.key)
            .is_none_or(|r| r.settled != waiter.seen)
    }

    fn settle(
        &self,
        ip: IpAddr,
        user: Option<u64>,
        digest: &Digest,
        failed: bool,
        now: Instant,
    ) -> Blocks {
        let mut wakes = Vec::with_capacity(2);
        let blocks = {
            let mut table = self.table();
            let mut blocks = Blocks::default();
            let address = Key { ip, user: None };
            let named = user.map(|user| Key {
                ip,
                user: Some(user),
            });
            for key in std::iter::once(address).chain(named) {
                let Some(record) = table.get_mut(&key) else {
                    continue;
                };
                record.release(digest);
                wakes.extend(record.wake.clone());
                if failed {
                    let blocked = self.count_failure(record, key, Some(digest), now);
                    match key.user {
                        Some(_) => blocks.user = blocked,
                        None => blocks.address = blocked,
                    }
                }
            }
            blocks
        };
        for wake in wakes {
            wake.notify_waiters();
        }
        blocks
    }

    /// Counts a failed attempt from `who` with credential `digest` (none for a malformed
    /// one) that needed no reservation (it was known to fail).
    pub fn failed(&self, who: Who<'_>, digest: Option<&Digest>, now: Instant) -> Blocks {
        let address = Key {
            ip: who.ip,
            user: None,
        };
        let mut table = self.table();
        let mut blocks = Blocks::default();
        let record = self.record(&mut table, address, None, now);
        blocks.address = self.count_failure(record, address, digest, now);
        if let Some((key, name)) = self.counted_as(who, digest) {
            let record = self.record(&mut table, key, name, now);
            blocks.user = self.count_failure(record, key, digest, now);
        }
        blocks
    }

    /// Counts a failure of `credential` in `record`. An address counts each credential once a
    /// window: a gadget replaying one stale password or token spends one of its office's
    /// attempts, not all of them (its user, or the token itself, is blocked by then), while
    /// guesses and sprays, new credentials every time, count in full.
    fn count_failure(
        &self,
        record: &mut Record,
        key: Key,
        credential: Option<&Digest>,
        now: Instant,
    ) -> Option<Blocked> {
        record.last_seen = Some(now);
        if record.blocked_until.is_some_and(|u| u > now) {
            // Already blocked: a request that was in flight when the block began.
            return None;
        }
        let limit = self.limit(key);
        forget_old(&mut record.failures, self.settings.window, now);
        let fingerprint = credential.map(fingerprint);
        let replayed =
            fingerprint.is_some() && record.failures.iter().any(|(_, f)| *f == fingerprint);
        if key.user.is_none() && replayed {
            return None;
        }
        record.failures.push_back((now, fingerprint));
        self.changes.fetch_add(1, Ordering::Relaxed);
        if record.failures.len() < limit as usize {
            return None;
        }
        Some(self.block(record, key, now))
    }

    /// Blocks `record` (of `key`) from `now`, its failures spent.
    fn block(&self, record: &mut Record, key: Key, now: Instant) -> Blocked {
        record.failures.clear();
        let until = now + self.settings.block;
        self.block_until(record, key, until);
        Blocked {
            after_failures: self.limit(key),
            seconds: self.settings.block.as_secs(),
        }
    }

    fn block_until(&self, record: &mut Record, key: Key, until: Instant) {
        record.blocked_until = Some(until);
        if key.user.is_none() {
            self.latest_end
                .fetch_max(self.millis(until), Ordering::Relaxed);
        }
    }

    /// The failures that block `key`'s record.
    fn limit(&self, key: Key) -> u32 {
        match key.user {
            Some(_) => self.settings.failures,
            None => self.settings.address_failures,
        }
    }

    /// Lifts the block of `user` at `ip`, or with no user every block at `ip` (the address's
    /// and its users'); false when there was none.
    pub fn clear(&self, ip: IpAddr, user: Option<&str>, now: Instant) -> bool {
        let only = match user {
            Some(_) => match self.user_key(ip, user) {
                Some(key) => Some(key),
                None => return false,
            },
            None => None,
        };
        let mut table = self.table();
        let lift = Key {
            ip,
            user: only.and_then(|k| k.user),
        };
        self.remember_lift(lift, user.map(Box::from), now);
        self.changes.fetch_add(1, Ordering::Relaxed);
        let mut lifted = false;
        table.retain(|key, record| {
            let chosen = match only {
                Some(only) => *key == only,
                None => key.ip == ip,
            };
            if !chosen {
                return true;
            }
            lifted |= record.blocked_until.take().is_some_and(|u| u > now);
            record.failures.clear();
            // Credentials being judged keep their places; whoever waits may try again.
            if let Some(wake) = &record.wake {
                wake.notify_waiters();
            }
            !record.judging.is_empty()
        });
        lifted
    }

    /// The blocks now, with the seconds left.
    pub fn current(&self, now: Instant) -> Vec<Current> {
        let mut table = self.table();
        table.retain(|_, r| r.live(now, self.settings.window));
        let mut blocked: Vec<Current> = table
            .iter()
            .filter_map(|(key, r)| {
                Some(Current {
                    ip: key.ip,
                    user: key
                        .user
                        .map(|_| r.name.as_deref().unwrap_or(NAMELESS).to_string()),
                    seconds_left: r.blocked_for(now)?.as_secs().max(1),
                })
            })
            .collect();
        blocked.sort();
        blocked
    }

    /// The hash `who`'s credential `digest` counts under as a user (none: the address only),
    /// and the name to show for it.
    pub fn user_of<'w>(
        &self,
        who: Who<'w>,
        digest: Option<&Digest>,
    ) -> Option<(u64, Option<&'w str>)> {
        let (key, name) = self.counted_as(who, digest)?;
        Some((key.user?, name))
    }

    /// Blocks the address `ip`, or with `user` (its hash and name) the user there, until
    /// `until` (a block begun on another instance), unless a lift here came after it began;
    /// wakes whoever waits there.
    pub fn apply_block(
        &self,
        ip: IpAddr,
        user: Option<(u64, Option<&str>)>,
        until: Instant,
        now: Instant,
    ) {
        let key = Key {
            ip,
            user: user.map(|(hash, _)| hash),
        };
        let began = until.checked_sub(self.settings.block).unwrap_or(now);
        let lifts = self.lifts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if Self::lifted(&lifts, key).is_some_and(|at| at >= began) {
            return;
        }
        let mut table = self.table();
        let record = self.record(&mut table, key, user.and_then(|(_, name)| name), now);
        if record.blocked_until.is_none_or(|u| u < until) {
            record.failures.clear();
            self.block_until(record, key, until);
        }
        if let Some(wake) = &record.wake {
            wake.notify_waiters();
        }
    }

    /// The blocks now: address, user (hash and name), time left.
    pub fn blocks(&self, now: Instant) -> Vec<HeldBlock> {
        self.table()
            .iter()
            .filter_map(|(key, r)| {
                let left = r.blocked_for(now)?;
                let user = key
                    .user
                    .map(|hash| (hash, r.name.as_deref().map(str::to_string)));
                Some(HeldBlock {
                    ip: key.ip,
                    user,
                    left,
                    length: self.settings.block,
                })
            })
            .collect()
    }

    /// A count that changes with every failure and lift.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn remember_lift(&self, key: Key, name: Option<Box<str>>, at: Instant) {
        let mut lifts = self.lifts.lock().unwrap_or_else(|p| p.into_inner());
        let kept = self.settings.window.max(self.settings.block);
        lifts.retain(|(_, _, t)| at.saturating_duration_since(*t) < kept);
        lifts.push((key, name, at));
    }

    /// The latest lift that covers `key`.
    fn lifted(lifts: &[LiftDone], key: Key) -> Option<Instant> {
        lifts
            .iter()
            .filter(|(l, _, _)| l.ip == key.ip && (l.user.is_none() || l.user == key.user))
            .map(|(_, _, at)| *at)
            .max()
    }

    /// The failures within the window, the credentials being judged, the blocks and the lifts,
    /// for the process that takes over at a reload.
    pub fn export(&self, clock: &Clock, now: Instant) -> (Vec<LockoutRecord>, Vec<Lift>) {
        let window = self.settings.window;
        let user_ref = |hash: u64, name: Option<&str>| match name {
            Some(name) => UserRef::Name(name.to_string()),
            None => UserRef::Hash(hash),
        };
        let records = self
            .table()
            .iter()
            .filter_map(|(key, r)| {
                let failures: Vec<Failure> = r
                    .failures
                    .iter()
                    .filter(|(t, _)| now.saturating_duration_since(*t) < window)
                    .map(|(t, credential)| Failure {
                        at_ms: clock.ms(*t),
                        credential: *credential,
                    })
                    .collect();
                let blocked = r.blocked_until.filter(|u| *u > now).map(|until| {
                    let from = until.checked_sub(self.settings.block).unwrap_or(until);
                    (clock.ms(from), clock.ms(until))
                });
                let judging = r.judging.len() as u32;
                if failures.is_empty() && blocked.is_none() && judging == 0 {
                    return None;
                }
                Some(LockoutRecord {
                    ip: key.ip,
                    user: key.user.map(|hash| user_ref(hash, r.name.as_deref())),
                    failures,
                    judging,
                    blocked,
                })
            })
            .collect();
        let lifts = self
            .lifts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(key, name, at)| Lift {
                ip: key.ip,
                user: key.user.map(|hash| user_ref(hash, name.as_deref())),
                at_ms: clock.ms(*at),
            })
            .collect();
        (records, lifts)
    }

    /// The key `user` stands for at `ip` in a file handed over (none for a hash under another
    /// key), and the name to show.
    fn handed_key<'u>(
        &self,
        ip: IpAddr,
        user: Option<&'u UserRef>,
        same_key: bool,
    ) -> Option<(Key, Option<&'u str>)> {
        match user {
            None => Some((Key { ip, user: None }, None)),
            Some(UserRef::Name(name)) => Some((self.user_key(ip, Some(name))?, Some(name))),
            Some(UserRef::Hash(hash)) if same_key => Some((
                Key {
                    ip,
                    user: Some(*hash),
                },
                None,
            )),
            Some(UserRef::Hash(_)) => None,
        }
    }

    /// Merges the latest state of process `from`, draining after a reload (merging the same
    /// state again changes nothing): its lifts apply here; failures are added to those counted
    /// here, each once; the later end of a block is kept; its credentials being judged hold
    /// places until its next state; a record whose failures together reach the limit is
    /// blocked now. Records keyed by a hash are taken only under the same key. How many blocks
    /// began here.
    pub fn import(
        &self,
        (records, lifts): (Vec<LockoutRecord>, Vec<Lift>),
        from: u32,
        same_key: bool,
        clock: &Clock,
        now: Instant,
    ) -> usize {
        let window = self.settings.window;
        let mut table = self.table();
        let mut wakes = Vec::new();
        for lift in lifts {
            let Some((key, name)) = self.handed_key(lift.ip, lift.user.as_ref(), same_key) else {
                continue;
            };
            let at = clock.instant(lift.at_ms, now);
            let known = self
                .lifts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|(k, _, t)| *k == key && clock.ms(*t) == lift.at_ms);
            if known {
                continue;
            }
            self.remember_lift(key, name.map(Box::from), at);
            for (k, record) in table.iter_mut() {
                if k.ip != key.ip || (key.user.is_some() && k.user != key.user) {
                    continue;
                }
                record.failures.retain(|(t, _)| *t > at);
                let from = |u: Instant| u.checked_sub(self.settings.block).unwrap_or(u);
                if record.blocked_until.is_some_and(|u| from(u) <= at) {
                    record.blocked_until = None;
                }
                wakes.extend(record.wake.clone());
            }
        }
        let lifts = self.lifts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for record in table.values_mut() {
            record.handed.retain(|(pid, _, _)| *pid != from);
        }
        let mut begun = 0;
        for r in records {
            let Some((key, name)) = self.handed_key(r.ip, r.user.as_ref(), same_key) else {
                continue;
            };
            let lifted = Self::lifted(&lifts, key);
            let counts = |t: Instant| lifted.is_none_or(|at| t > at);
            let failures: Vec<(Instant, Failure)> = r
                .failures
                .into_iter()
                .map(|f| (clock.instant(f.at_ms, now), f))
                .filter(|(t, _)| counts(*t) && now.saturating_duration_since(*t) < window)
                .collect();
            let blocked = r.blocked.and_then(|(from, until)| {
                let from = clock.instant(from, now);
                let until = clock.instant(until, now + self.settings.block);
                (counts(from) && until > now).then_some(until)
            });
            if failures.is_empty() && blocked.is_none() && r.judging == 0 {
                continue;
            }
            let record = self.record(&mut table, key, name, now);
            if r.judging > 0 {
                record.handed.push((from, r.judging, now));
            }
            if let Some(until) = blocked {
                if record.blocked_until.is_none_or(|u| u < until) {
                    self.block_until(record, key, until);
                }
            }
            if record.blocked_for(now).is_some() {
                continue;
            }
            forget_old(&mut record.failures, window, now);
            for (t, f) in failures {
                let seen = record.failures.iter().any(|(x, c)| {
                    // An address counts each credential once a window.
                    let replayed = key.user.is_none() && f.credential.is_some();
                    *c == f.credential && (replayed || clock.ms(*x) == f.at_ms)
                });
                if !seen {
                    let at = record.failures.partition_point(|(x, _)| *x <= t);
                    record.failures.insert(at, (t, f.credential));
                }
            }
            if record.failures.len() >= self.limit(key) as usize {
                self.block(record, key, now);
                wakes.extend(record.wake.clone());
                begun += 1;
            }
        }
        drop(table);
        for wake in wakes {
            wake.notify_waiters();
        }
        begun
    }

    /// Forgets what no longer matters, then, if the table is still full, the eighth of it that
    /// has been idle longest, records neither blocked nor being judged first.
    fn make_room(&self, table: &mut HashMap<Key, Record>, now: Instant) {
        table.retain(|_, r| r.live(now, self.settings.window));
        if table.len() < MAX_TRACKED {
            return;
        }
        let mut idle: Vec<(bool, Option<Instant>, Key)> = table
            .iter()
            .map(|(key, r)| {
                let busy =
                    r.blocked_until.is_some() || !r.judging.is_empty() || !r.handed.is_empty();
                (busy, r.last_seen, *key)
            })
            .collect();
        let cut = MAX_TRACKED / 8;
        idle.select_nth_unstable_by_key(cut, |(busy, seen, _)| (*busy, *seen));
        for (_, _, key) in &idle[..cut] {
            // Attempts waiting on a forgotten record try again on a new one.
            if let Some(wake) = table.remove(key).and_then(|r| r.wake) {
                wake.notify_waiters();
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table().len()
    }
}

/// What tells credentials apart among an address's failures: the first 8 bytes of its digest.
pub fn fingerprint(digest: &Digest) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Drops the failures that happened `window` or longer before `now`.
fn forget_old(failures: &mut VecDeque<(Instant, Option<u64>)>, window: Duration, now: Instant) {
    while failures
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) >= window)
    {
        failures.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockouts(failures: u32, address_failures: u32, window: u64, block: u64) -> Lockouts {
        keyed(failures, address_failures, window, block, &KEY)
    }

    const KEY: [u8; 32] = [7; 32];

    fn keyed(
        failures: u32,
        address_failures: u32,
        window: u64,
        block: u64,
        key: &[u8],
    ) -> Lockouts {
        let settings = Settings {
            failures,
            address_failures,
            window: Duration::from_secs(window),
            block: Duration::from_secs(block),
        };
        Lockouts::new(&settings, &StateKey::from_bytes(key))
    }

    /// What `old` hands over, through the file's form.
    fn handed(old: &Lockouts, now: Instant) -> (Vec<LockoutRecord>, Vec<Lift>) {
        let state = old.export(&Clock::process(), now);
        serde_json::from_slice(&serde_json::to_vec(&state).unwrap()).unwrap()
    }

    #[test]
    fn a_reload_hands_failures_and_blocks_to_the_next_process() {
        let clock = Clock::process();
        let t = Instant::now();
        let old = lockouts(5, 6, 30, 1800);
        for i in 0..3 {
            old.failed(who(1, "alice"), Some(&digest(i)), t);
        }
        for i in 0..6 {
            old.failed(who(2, &format!("u{i}")), Some(&digest(i)), t);
        }
        old.failed(who(3, ""), Some(&digest(9)), t);
        let new = lockouts(5, 6, 30, 1800);
        new.failed(who(4, "bob"), Some(&digest(1)), t);
        new.failed(who(4, "bob"), Some(&digest(2)), t);
        for i in 3..6 {
            old.failed(who(4, "bob"), Some(&digest(i)), t);
        }
        assert_eq!(
            new.import(handed(&old, t), 1, true, &clock, t),
            1,
            "bob: 2 + 3"
        );
        assert_eq!(blocked_as(&new, who(2, "carol"), t), Some(Kind::Address));
        assert_eq!(blocked_as(&new, who(4, "Bob"), t), Some(Kind::User));
        assert_eq!(
            blocked_as(&new, who(4, "carol"), t),
            None,
            "5 of 6 for the address"
        );
        // Alice has two failures left, the token (a user of its own) four.
        new.failed(who(1, "ALICE"), Some(&digest(3)), t);
        assert_eq!(blocked_as(&new, who(1, "alice"), t), None);
        new.failed(who(1, "alice"), Some(&digest(4)), t);
        assert_eq!(blocked_as(&new, who(1, "alice"), t), Some(Kind::User));
        let token = new.counted_as(who(3, ""), Some(&digest(9))).unwrap().0;
        assert_eq!(new.table().get(&token).unwrap().failures.len(), 1);
        // The same file read again counts nothing twice.
        new.import(handed(&old, t), 1, true, &clock, t);
        assert_eq!(new.table().get(&token).unwrap().failures.len(), 1);
        assert_eq!(blocked_as(&new, who(4, "carol"), t), None);
    }

    #[test]
    fn credentials_the_old_process_is_judging_hold_their_places_until_it_settles_them() {
        let clock = Clock::process();
        let t = Instant::now();
        let old = lockouts(5, 20, 30, 1800);
        old.failed(who(1, "alice"), Some(&digest(0)), t);
        let in_flight: Vec<_> = (1..4)
            .map(|g| reserved(&old, who(1, "alice"), g, t))
            .collect();
        let new = lockouts(5, 20, 30, 1800);
        new.import(handed(&old, t), 7, true, &clock, t);
        // 1 failure and 3 guesses being judged in the old process: one place left here.
        let _last = reserved(&new, who(1, "alice"), 10, t);
        assert!(waits(&new, who(1, "alice"), 11, t).is_some());
        // Settled there (good passwords after all): the places come back with its next state.
        for r in in_flight {
            r.settle(false, t);
        }
        new.import(handed(&old, t), 7, true, &clock, t);
        assert!(waits(&new, who(1, "alice"), 11, t).is_none());
        // A process that never writes again (killed) holds them a minute at most.
        let stuck = reserved(&old, who(1, "bob"), 20, t);
        new.import(handed(&old, t), 8, true, &clock, t);
        assert!(waits(&new, who(1, "bob"), 21, t).is_none());
        let held: Vec<_> = (21..25)
            .map(|g| reserved(&new, who(1, "bob"), g, t))
            .collect();
        assert!(
            waits(&new, who(1, "bob"), 26, t).is_some(),
            "4 here, 1 there"
        );
        let later = t + HANDED_MAX;
        let _fifth = reserved(&new, who(1, "bob"), 26, later);
        drop((held, stuck));
    }

    #[test]
    fn a_lift_holds_against_what_a_draining_process_hands_over_later() {
        let clock = Clock::process();
        let t = Instant::now();
        let old = lockouts(5, 3, 30, 1800);
        for i in 0..3 {
            old.failed(who(2, &format!("u{i}")), Some(&digest(i)), t);
        }
        let new = lockouts(5, 3, 30, 1800);
        new.import(handed(&old, t), 1, true, &clock, t);
        assert_eq!(blocked_as(&new, who(2, "u0"), t), Some(Kind::Address));
        assert!(new.clear(ip(2), None, t + Duration::from_millis(5)));
        let soon = t + Duration::from_millis(10);
        new.import(handed(&old, t), 1, true, &clock, soon);
        assert_eq!(blocked_as(&new, who(2, "u0"), soon), None);
        // What happens after the lift still counts.
        let later = t + Duration::from_millis(20);
        for i in 3..8 {
            old.failed(who(2, "dave"), Some(&digest(i)), later);
        }
        new.import(handed(&old, later), 1, true, &clock, later);
        assert_eq!(blocked_as(&new, who(2, "dave"), later), Some(Kind::User));
        assert_eq!(blocked_as(&new, who(2, "erin"), later), None);

        // A third process reads the first's state before the second's, which lifted.
        let third = lockouts(5, 3, 30, 1800);
        third.import(handed(&old, later), 1, true, &clock, later);
        assert_eq!(
            blocked_as(&third, who(2, "erin"), later),
            Some(Kind::Address)
        );
        third.import(handed(&new, later), 2, true, &clock, later);
        assert_eq!(blocked_as(&third, who(2, "erin"), later), None);
        assert_eq!(blocked_as(&third, who(2, "dave"), later), Some(Kind::User));
        third.import(handed(&old, later), 1, true, &clock, later);
        assert_eq!(blocked_as(&third, who(2, "erin"), later), None);
    }

    #[test]
    fn under_another_key_only_what_is_keyed_by_name_is_taken() {
        let clock = Clock::process();
        let t = Instant::now();
        let old = lockouts(2, 20, 30, 1800);
        for i in 0..2 {
            old.failed(who(1, "alice"), Some(&digest(i)), t);
            let at = t + Duration::from_millis(u64::from(i));
            old.failed(who(3, ""), Some(&digest(9)), at);
        }
        let new = keyed(2, 20, 30, 1800, &[8; 32]);
        let at = t + Duration::from_millis(2);
        new.import(handed(&old, at), 1, false, &clock, at);
        assert_eq!(blocked_as(&new, who(1, "alice"), at), Some(Kind::User));
        let token = new.counted_as(who(3, ""), Some(&digest(9))).unwrap().0;
        assert!(new.table().get(&token).is_none());
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn who(n: u32, user: &str) -> Who<'_> {
        Who {
            ip: ip(n),
            user: (!user.is_empty()).then_some(user),
        }
    }

    fn digest(n: u8) -> Digest {
        [n; 32]
    }

    fn reserved<'a>(l: &'a Lockouts, who: Who<'_>, guess: u8, now: Instant) -> Reservation<'a> {
        match l.reserve(who, digest(guess), None::<()>, now) {
            Admission::Reserved(r) => r,
            Admission::Blocked(kind, _) => panic!("blocked ({kind:?})"),
            Admission::Wait(_) => panic!("told to wait"),
            Admission::Decide(()) => panic!("decided without a verdict"),
        }
    }

    fn waits(l: &Lockouts, who: Who<'_>, guess: u8, now: Instant) -> Option<Waiter> {
        match l.reserve(who, digest(guess), None::<()>, now) {
            Admission::Wait(w) => Some(w),
            _ => None,
        }
    }

    fn blocked_as(l: &Lockouts, who: Who<'_>, now: Instant) -> Option<Kind> {
        match l.reserve(who, digest(99), Some(()), now) {
            Admission::Blocked(kind, _) => Some(kind),
            _ => None,
        }
    }

    #[test]
    fn a_users_failures_block_that_user_at_that_address_only() {
        let l = lockouts(5, 20, 30, 1800);
        let t = Instant::now();
        for i in 0..4 {
            assert_eq!(
                l.failed(who(1, "alice"), None, t + Duration::from_secs(i)),
                Blocks::default()
            );
        }
        let blocks = l.failed(who(1, "alice"), None, t + Duration::from_secs(5));
        assert_eq!(
            blocks,
            Blocks {
                user: Some(Blocked {
                    after_failures: 5,
                    seconds: 1800
                }),
                address: None,
            }
        );
        assert_eq!(blocked_as(&l, who(1, "alice"), t), Some(Kind::User));
        assert_eq!(
            blocked_as(&l, who(1, "ALICE"), t),
            Some(Kind::User),
            "one user whatever the case"
        );
        assert_eq!(
            blocked_as(&l, who(1, "bob"), t),
            None,
            "bob at the same address"
        );
        assert_eq!(blocked_as(&l, who(2, "alice"), t), None, "alice elsewhere");
        assert_eq!(l.blocked(ip(1), t), None, "the address is not blocked");
        let now = t + Duration::from_secs(5);
        assert_eq!(
            l.current(now),
            vec![Current {
                ip: ip(1),
                user: Some("alice".into()),
                seconds_left: 1800
            }]
        );
        let after = t + Duration::from_secs(1806);
        assert_eq!(blocked_as(&l, who(1, "alice"), after), None);
        assert!(l.current(after).is_empty());
        assert_eq!(l.tracked(), 0, "an ended block is forgotten");
    }

    #[test]
    fn failures_across_users_block_the_address() {
        let l = lockouts(5, 20, 30, 1800);
        let t = Instant::now();
        let names: Vec<String> = (0..20).map(|n| format!("user{n}")).collect();
        for name in &names[..19] {
            assert_eq!(l.failed(who(1, name), None, t).address, None);
        }
        let blocks = l.failed(who(1, &names[19]), None, t);
        assert_eq!(blocks.address.map(|b| b.after_failures), Some(20));
        assert_eq!(blocks.user, None, "one failure for that user");
        assert_eq!(blocked_as(&l, who(1, "bob"), t), Some(Kind::Address));
        assert!(l.blocked(ip(1), t).is_some());
        assert!(l
            .current(t)
            .iter()
            .any(|c| c.ip == ip(1) && c.user.is_none()));
    }

    #[test]
    fn a_malformed_credential_counts_towards_the_address_only() {
        let l = lockouts(1, 2, 30, 600);
        let t = Instant::now();
        assert_eq!(l.failed(who(1, ""), None, t), Blocks::default());
        assert_eq!(
            l.failed(who(1, ""), None, t)
                .address
                .map(|b| b.after_failures),
            Some(2)
        );
    }

    #[test]
    fn replays_of_one_credential_count_once_towards_the_address() {
        let l = lockouts(5, 4, 30, 600);
        let t = Instant::now();
        // alice's stale saved password, replayed: alice is blocked, her office counts it once.
        for i in 1..=8u64 {
            let blocks = l.failed(
                who(1, "alice"),
                Some(&digest(1)),
                t + Duration::from_millis(i),
            );
            assert_eq!(blocks.address, None, "replay {i}");
        }
        // So do the stale tokens of two gadgets, each replayed.
        for token in 2..=3u8 {
            for _ in 0..6 {
                assert_eq!(l.failed(who(1, ""), Some(&digest(token)), t).address, None);
            }
        }
        assert!(l.blocked(ip(1), t).is_none());
        // A fourth credential, new, reaches the address's count.
        let blocks = l.failed(who(1, "bob"), Some(&digest(4)), t);
        assert_eq!(blocks.address.map(|b| b.after_failures), Some(4));
    }

    #[test]
    fn a_token_naming_no_user_counts_as_a_user_of_its_own() {
        let l = lockouts(5, 20, 30, 600);
        let t = Instant::now();
        // One stale token replayed by a gadget: blocked itself after five, its office is not.
        let stale = digest(7);
        for i in 1..=5u64 {
            let blocks = l.failed(who(1, ""), Some(&stale), t + Duration::from_secs(i));
            assert_eq!(blocks.user.is_some(), i == 5, "replay {i}");
            assert_eq!(blocks.address, None);
        }
        let later = t + Duration::from_secs(6);
        assert!(matches!(
            l.reserve(who(1, ""), stale, None::<()>, later),
            Admission::Blocked(Kind::User, _)
        ));
        assert!(
            matches!(
                l.reserve(who(1, ""), digest(8), None::<()>, later),
                Admission::Reserved(_)
            ),
            "another token from the same office"
        );
        assert!(l.blocked(ip(1), later).is_none());
        let shown = l.current(later);
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].user.as_deref(), Some(NAMELESS));
        // Tokens sprayed, each new: they count towards the address.
        let l = lockouts(5, 3, 30, 600);
        for n in 1..=3u8 {
            let blocks = l.failed(who(1, ""), Some(&digest(n)), t);
            assert_eq!(blocks.address.is_some(), n == 3);
        }
        // A name too long to count on its own counts as its credential.
        let long = "x".repeat(USER_MAX + 1);
        let l = lockouts(1, 20, 30, 600);
        assert!(l.failed(who(1, &long), Some(&digest(9)), t).user.is_some());
        assert_eq!(
            l.current(t)[0].user.as_deref(),
            Some(NAMELESS),
            "the name is not kept"
        );
    }

    #[test]
    fn no_more_credentials_are_judged_at_once_than_failures_are_left() {
        let l = lockouts(3, 20, 30, 600);
        let t = Instant::now();
        l.failed(who(1, "alice"), None, t);
        let a = reserved(&l, who(1, "alice"), 1, t);
        let b = reserved(&l, who(1, "alice"), 2, t);
        let waiter = waits(&l, who(1, "alice"), 3, t).expect("a third guess for alice waits");
        reserved(&l, who(1, "bob"), 3, t);
        reserved(&l, who(2, "alice"), 3, t);
        assert!(!l.settled_since(&waiter));
        assert_eq!(
            a.settle(false, t),
            Blocks::default(),
            "a success gives its place back"
        );
        assert!(l.settled_since(&waiter));
        let c = reserved(&l, who(1, "alice"), 3, t);
        assert_eq!(b.settle(true, t), Blocks::default());
        let blocked = c.settle(true, t).user.unwrap();
        assert_eq!(blocked.after_failures, 3);
        assert_eq!(blocked_as(&l, who(1, "alice"), t), Some(Kind::User));
    }

    #[test]
    fn the_address_has_its_own_places_across_users() {
        let l = lockouts(5, 3, 30, 600);
        let t = Instant::now();
        let held: Vec<_> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(n, user)| reserved(&l, who(1, user), n as u8, t))
            .collect();
        assert!(
            waits(&l, who(1, "d"), 9, t).is_some(),
            "three guesses fill the address"
        );
        assert!(waits(&l, who(1, ""), 9, t).is_some());
        drop(held);
        reserved(&l, who(1, "d"), 9, t);
    }

    #[test]
    fn a_reservation_dropped_unsettled_gives_its_place_back_and_counts_nothing() {
        let l = lockouts(1, 20, 30, 600);
        let t = Instant::now();
        let r = reserved(&l, who(1, "alice"), 1, t);
        assert!(waits(&l, who(1, "alice"), 2, t).is_some());
        drop(r);
        let r = reserved(&l, who(1, "alice"), 2, t);
        assert!(
            r.settle(true, t).user.is_some(),
            "the one failure allowed blocks"
        );
        assert_eq!(blocked_as(&l, who(1, "alice"), t), Some(Kind::User));
    }

    #[test]
    fn a_known_verdict_waits_like_a_guess_while_the_user_has_no_place_free() {
        let l = lockouts(2, 20, 30, 600);
        let t = Instant::now();
        let known = |l: &Lockouts| match l.reserve(who(1, "alice"), digest(1), Some(()), t) {
            Admission::Decide(()) => "decide",
            Admission::Wait(_) => "wait",
            Admission::Blocked(..) => "blocked",
            Admission::Reserved(_) => "reserved",
        };
        assert_eq!(known(&l), "decide");
        assert_eq!(
            l.tracked(),
            0,
            "a known credential of a client with nothing against it"
        );
        let a = reserved(&l, who(1, "alice"), 2, t);
        assert_eq!(known(&l), "decide");
        let b = reserved(&l, who(1, "alice"), 3, t);
        assert_eq!(known(&l), "wait", "two guesses in flight could block alice");
        a.settle(true, t);
        assert!(b.settle(true, t).user.is_some());
        assert_eq!(known(&l), "blocked");
    }

    #[test]
    fn lifting_keeps_the_places_being_judged_and_wakes_who_waits() {
        let l = lockouts(1, 20, 30, 600);
        let t = Instant::now();
        let judged = reserved(&l, who(1, "alice"), 1, t);
        let waiter = waits(&l, who(1, "alice"), 2, t).unwrap();
        assert!(!l.clear(ip(1), None, t), "nothing was blocked");
        assert!(
            waits(&l, who(1, "alice"), 2, t).is_some(),
            "the place is still taken"
        );
        assert!(!l.settled_since(&waiter));
        drop(judged);
        assert!(l.settled_since(&waiter));
        reserved(&l, who(1, "alice"), 2, t);
    }

    #[test]
    fn lifting_one_user_or_every_block_at_an_address() {
        let l = lockouts(1, 3, 10, 60);
        let t = Instant::now();
        l.failed(who(7, "alice"), None, t);
        l.failed(who(7, "bob"), None, t);
        assert!(l.clear(ip(7), Some("Alice"), t));
        assert!(!l.clear(ip(7), Some("alice"), t));
        assert_eq!(blocked_as(&l, who(7, "alice"), t), None);
        assert_eq!(blocked_as(&l, who(7, "bob"), t), Some(Kind::User));
        l.failed(who(7, "carol"), None, t);
        l.failed(who(7, "dave"), None, t);
        assert_eq!(blocked_as(&l, who(7, "erin"), t), Some(Kind::Address));
        assert!(l.clear(ip(7), None, t));
        assert_eq!(blocked_as(&l, who(7, "bob"), t), None, "every block there");
        assert_eq!(blocked_as(&l, who(7, "erin"), t), None);
        l.failed(who(8, "alice"), None, t);
        assert!(
            !l.clear(ip(8), None, t + Duration::from_secs(61)),
            "an ended block is no block"
        );
    }

    #[test]
    fn requests_with_one_credential_share_its_place_until_the_last_settles() {
        let l = lockouts(2, 20, 30, 600);
        let t = Instant::now();
        let first = reserved(&l, who(1, "alice"), 7, t);
        let second = reserved(&l, who(1, "alice"), 7, t);
        let other = reserved(&l, who(1, "alice"), 8, t);
        assert!(
            waits(&l, who(1, "alice"), 9, t).is_some(),
            "two places, both taken"
        );
        drop(first);
        assert!(
            waits(&l, who(1, "alice"), 9, t).is_some(),
            "the place stays while a request with the credential is being judged"
        );
        assert_eq!(second.settle(false, t), Blocks::default());
        let third = reserved(&l, who(1, "alice"), 9, t);
        drop((other, third));
    }

    #[test]
    fn failures_in_flight_during_a_block_neither_extend_nor_repeat_it() {
        let l = lockouts(2, 20, 30, 600);
        let t = Instant::now();
        l.failed(who(1, "alice"), None, t);
        assert!(l.failed(who(1, "alice"), None, t).user.is_some());
        for s in 1..5 {
            assert_eq!(
                l.failed(who(1, "alice"), None, t + Duration::from_secs(s))
                    .user,
                None
            );
        }
        let left = match l.reserve(who(1, "alice"), digest(1), None::<()>, t) {
            Admission::Blocked(Kind::User, left) => left,
            _ => panic!("not blocked"),
        };
        assert_eq!(left.as_secs(), 600);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let l = lockouts(3, 3, 10, 60);
        let t = Instant::now();
        for i in 0..10 {
            assert_eq!(
                l.failed(who(1, "alice"), None, t + Duration::from_secs(i * 6)),
                Blocks::default()
            );
        }
    }

    #[test]
    fn a_flood_of_addresses_and_names_stays_bounded_and_keeps_blocks() {
        let l = lockouts(2, 20, 30, 600);
        let t = Instant::now();
        l.failed(who(0, "alice"), None, t);
        l.failed(who(0, "alice"), None, t);
        for n in 1..(MAX_TRACKED as u32) {
            let name = format!("u{n}");
            l.failed(who(n, &name), None, t + Duration::from_millis(u64::from(n)));
        }
        assert!(l.tracked() <= MAX_TRACKED);
        let later = t + Duration::from_secs(200);
        assert_eq!(blocked_as(&l, who(0, "alice"), later), Some(Kind::User));
    }
}
