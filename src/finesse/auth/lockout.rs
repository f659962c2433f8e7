//! Brute-force protection: `failures` invalid credentials from one client IP within `window`
//! block that IP for `block`. The table is bounded: past `MAX_TRACKED` addresses, those idle
//! longest are forgotten first, so a flood of addresses cannot grow it without limit.
//!
//! Guesses cannot outrun the count by arriving together: a credential that must be judged
//! (sent to the validator, or verified) first reserves a place among the `failures` a client
//! may still have, and only as many credentials as remain are judged at once (requests with the
//! same credential share its place). Further attempts wait until one is settled (a failure
//! counts, a success gives its place back), and meet the block if the failures reach it.

use super::verdicts::Digest;
use crate::config::Lockout as Settings;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Client addresses tracked per site at most.
const MAX_TRACKED: usize = 65_536;

#[derive(Default)]
struct Record {
    /// When the recent failures happened (at most `failures` of them).
    failures: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    last_seen: Option<Instant>,
    /// Credentials being judged now, each holding one place among the failures left, and how
    /// many requests carry it.
    judging: Vec<(Digest, u32)>,
    /// Woken when one of them is settled; made when an attempt first waits.
    wake: Option<Arc<Notify>>,
    /// Settlements so far, so that a waiting attempt can tell one happened before it waited.
    settled: u64,
}

impl Record {
    /// Whether the record still matters at `now`: a block, a failure within `window`, or an
    /// attempt being judged.
    fn live(&self, now: Instant, window: Duration) -> bool {
        !self.judging.is_empty()
            || self.blocked_until.is_some_and(|u| u > now)
            || self
                .failures
                .back()
                .is_some_and(|t| now.duration_since(*t) < window)
    }
}

/// What a client with a credential may do now; `V` is a verdict known already.
pub enum Admission<'a, V> {
    /// Judge it; settle the reservation with the outcome.
    Reserved(Reservation<'a>),
    /// Its verdict is known and the client has a place free: decide at once, without one.
    Decide(V),
    /// The client is blocked for this long.
    Blocked(Duration),
    /// As many credentials as the client has failures left are being judged: wait for one to
    /// be settled, then ask again.
    Wait(Waiter),
}

/// How an attempt waits for a settlement: register with `wake`, then wait only when
/// `Lockouts::settled_since(ip, seen)` is false (else one happened before it registered).
pub struct Waiter {
    pub wake: Arc<Notify>,
    pub seen: u64,
}

/// A place taken among a client's remaining failures, while its credential is judged. Dropped
/// unsettled (the request went away), its share of the place is given back.
pub struct Reservation<'a> {
    lockouts: &'a Lockouts,
    ip: IpAddr,
    digest: Digest,
    open: bool,
}

impl Reservation<'_> {
    /// The attempt's outcome: `failed` counts against the client (and may block it).
    pub fn settle(mut self, failed: bool, now: Instant) -> Option<Blocked> {
        self.open = false;
        self.lockouts.settle(self.ip, &self.digest, failed, now)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.open {
            self.lockouts
                .settle(self.ip, &self.digest, false, Instant::now());
        }
    }
}

/// An address just blocked.
#[derive(Debug, PartialEq, Eq)]
pub struct Blocked {
    pub after_failures: u32,
    pub seconds: u64,
}

pub struct Lockouts {
    settings: Settings,
    table: Mutex<HashMap<IpAddr, Record>>,
    /// Where `latest_end` counts from.
    origin: Instant,
    /// When the last block to end ends, in milliseconds since `origin`: past it, no address is
    /// blocked and a request needs no lock.
    latest_end: AtomicU64,
}

impl Lockouts {
    pub fn new(settings: &Settings) -> Self {
        Lockouts {
            settings: settings.clone(),
            table: Mutex::new(HashMap::new()),
            origin: Instant::now(),
            latest_end: AtomicU64::new(0),
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Record>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` stays blocked, if it is.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.millis(now) >= self.latest_end.load(Ordering::Relaxed) {
            return None;
        }
        let table = self.table();
        let until = table.get(&ip)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// What credential `digest` from `ip` may do: nothing while `ip` is blocked; share the
    /// place of another request with it that is being judged; wait while `ip` has as many
    /// credentials being judged as it has failures left (a known verdict too: a guess the
    /// verdict store answers must not pass while guesses in flight could still block the
    /// client); else be decided at once when its verdict is `known`, or take a place.
    pub fn reserve<V>(
        &self,
        ip: IpAddr,
        digest: Digest,
        known: Option<V>,
        now: Instant,
    ) -> Admission<'_, V> {
        let mut table = self.table();
        if !table.contains_key(&ip) && table.len() >= MAX_TRACKED {
            self.make_room(&mut table, now);
        }
        let record = table.entry(ip).or_default();
        record.last_seen = Some(now);
        if let Some(until) = record.blocked_until.filter(|u| *u > now) {
            return Admission::Blocked(until - now);
        }
        if let Some((_, holders)) = record.judging.iter_mut().find(|(d, _)| *d == digest) {
            *holders += 1;
        } else {
            forget_old(&mut record.failures, self.settings.window, now);
            let taken = record.failures.len() + record.judging.len();
            if taken >= self.settings.failures as usize {
                let wake = record.wake.get_or_insert_with(Default::default).clone();
                return Admission::Wait(Waiter {
                    wake,
                    seen: record.settled,
                });
            }
            if let Some(verdict) = known {
                return Admission::Decide(verdict);
            }
            record.judging.push((digest, 1));
        }
        Admission::Reserved(Reservation {
            lockouts: self,
            ip,
            digest,
            open: true,
        })
    }

    /// Whether a judgement from `ip` was settled after `seen` (see `Waiter`).
    pub fn settled_since(&self, ip: IpAddr, seen: u64) -> bool {
        self.table().get(&ip).is_none_or(|r| r.settled != seen)
    }

    fn settle(&self, ip: IpAddr, digest: &Digest, failed: bool, now: Instant) -> Option<Blocked> {
        let (blocked, wake) = {
            let mut table = self.table();
            let record = table.entry(ip).or_default();
            if let Some(at) = record.judging.iter().position(|(d, _)| d == digest) {
                record.judging[at].1 -= 1;
                if record.judging[at].1 == 0 {
                    record.judging.swap_remove(at);
                }
            }
            record.settled += 1;
            let blocked = if failed {
                self.count_failure(record, now)
            } else {
                None
            };
            (blocked, record.wake.clone())
        };
        if let Some(wake) = wake {
            wake.notify_waiters();
        }
        blocked
    }

    /// Counts a failed attempt from `ip` that needed no reservation (it was known to fail);
    /// `Some` when it blocks the address.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<Blocked> {
        let mut table = self.table();
        if !table.contains_key(&ip) && table.len() >= MAX_TRACKED {
            self.make_room(&mut table, now);
        }
        let record = table.entry(ip).or_default();
        self.count_failure(record, now)
    }

    fn count_failure(&self, record: &mut Record, now: Instant) -> Option<Blocked> {
        record.last_seen = Some(now);
        if record.blocked_until.is_some_and(|u| u > now) {
            // Already blocked: a request that was in flight when the block began.
            return None;
        }
        forget_old(&mut record.failures, self.settings.window, now);
        record.failures.push_back(now);
        if record.failures.len() < self.settings.failures as usize {
            return None;
        }
        record.failures.clear();
        let until = now + self.settings.block;
        record.blocked_until = Some(until);
        self.latest_end
            .fetch_max(self.millis(until), Ordering::Relaxed);
        Some(Blocked {
            after_failures: self.settings.failures,
            seconds: self.settings.block.as_secs(),
        })
    }

    /// Lifts a block on `ip`; false when it was not blocked.
    pub fn clear(&self, ip: IpAddr, now: Instant) -> bool {
        let mut table = self.table();
        let Some(record) = table.get_mut(&ip) else {
            return false;
        };
        let lifted = record.blocked_until.take().is_some_and(|u| u > now);
        record.failures.clear();
        // Credentials being judged keep their places; whoever waits may try again.
        if let Some(wake) = &record.wake {
            wake.notify_waiters();
        }
        if record.judging.is_empty() {
            table.remove(&ip);
        }
        lifted
    }

    /// The addresses blocked now, with the seconds left.
    pub fn current(&self, now: Instant) -> Vec<(IpAddr, u64)> {
        let mut table = self.table();
        table.retain(|_, r| r.live(now, self.settings.window));
        let mut blocked: Vec<(IpAddr, u64)> = table
            .iter()
            .filter_map(|(ip, r)| {
                let until = r.blocked_until.filter(|u| *u > now)?;
                Some((*ip, (until - now).as_secs().max(1)))
            })
            .collect();
        blocked.sort();
        blocked
    }

    /// Forgets what no longer matters, then, if the table is still full, the eighth of it that
    /// has been idle longest, addresses neither blocked nor being judged first.
    fn make_room(&self, table: &mut HashMap<IpAddr, Record>, now: Instant) {
        table.retain(|_, r| r.live(now, self.settings.window));
        if table.len() < MAX_TRACKED {
            return;
        }
        let mut idle: Vec<(bool, Option<Instant>, IpAddr)> = table
            .iter()
            .map(|(ip, r)| {
                (
                    r.blocked_until.is_some() || !r.judging.is_empty(),
                    r.last_seen,
                    *ip,
                )
            })
            .collect();
        let cut = MAX_TRACKED / 8;
        idle.select_nth_unstable(cut);
        for (_, _, ip) in &idle[..cut] {
            // Attempts waiting on a forgotten record try again on a new one.
            if let Some(wake) = table.remove(ip).and_then(|r| r.wake) {
                wake.notify_waiters();
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table().len()
    }
}

/// Drops the failures that happened `window` or longer before `now`.
fn forget_old(failures: &mut VecDeque<Instant>, window: Duration, now: Instant) {
    while failures
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        failures.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockouts(failures: u32, window: u64, block: u64) -> Lockouts {
        Lockouts::new(&Settings {
            failures,
            window: Duration::from_secs(window),
            block: Duration::from_secs(block),
        })
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn the_fifth_failure_in_the_window_blocks() {
        let l = lockouts(5, 30, 1800);
        let t = Instant::now();
        for i in 0..4 {
            assert_eq!(l.failed(ip(1), t + Duration::from_secs(i)), None);
        }
        assert_eq!(l.blocked(ip(1), t), None);
        let blocked = l.failed(ip(1), t + Duration::from_secs(5)).unwrap();
        assert_eq!(
            blocked,
            Blocked {
                after_failures: 5,
                seconds: 1800
            }
        );
        let left = l.blocked(ip(1), t + Duration::from_secs(65)).unwrap();
        assert_eq!(left.as_secs(), 1740);
        assert_eq!(l.blocked(ip(2), t), None);
        assert_eq!(l.current(t + Duration::from_secs(5)), vec![(ip(1), 1800)]);
        assert_eq!(l.blocked(ip(1), t + Duration::from_secs(1806)), None);
        assert!(l.current(t + Duration::from_secs(1806)).is_empty());
        assert_eq!(l.tracked(), 0, "an ended block is forgotten");
    }

    fn digest(n: u8) -> Digest {
        [n; 32]
    }

    fn reserved<'a>(l: &'a Lockouts, ip: IpAddr, guess: u8, now: Instant) -> Reservation<'a> {
        match l.reserve(ip, digest(guess), None::<()>, now) {
            Admission::Reserved(r) => r,
            Admission::Blocked(_) => panic!("blocked"),
            Admission::Wait(_) => panic!("told to wait"),
            Admission::Decide(()) => panic!("decided without a verdict"),
        }
    }

    fn waits(l: &Lockouts, ip: IpAddr, guess: u8, now: Instant) -> Option<u64> {
        match l.reserve(ip, digest(guess), None::<()>, now) {
            Admission::Wait(w) => Some(w.seen),
            _ => None,
        }
    }

    #[test]
    fn no_more_credentials_are_judged_at_once_than_failures_are_left() {
        let l = lockouts(3, 30, 600);
        let t = Instant::now();
        l.failed(ip(1), t);
        let a = reserved(&l, ip(1), 1, t);
        let b = reserved(&l, ip(1), 2, t);
        let seen = waits(&l, ip(1), 3, t).expect("a third credential waits");
        assert!(
            matches!(
                l.reserve(ip(2), digest(3), None::<()>, t),
                Admission::Reserved(_)
            ),
            "another address has its own places"
        );
        assert!(!l.settled_since(ip(1), seen));
        assert_eq!(a.settle(false, t), None, "a success gives its place back");
        assert!(l.settled_since(ip(1), seen));
        let c = reserved(&l, ip(1), 3, t);
        assert_eq!(b.settle(true, t), None);
        let blocked = c.settle(true, t).unwrap();
        assert_eq!(blocked.after_failures, 3);
        assert!(matches!(
            l.reserve(ip(1), digest(4), None::<()>, t),
            Admission::Blocked(left) if left.as_secs() == 600
        ));
    }

    #[test]
    fn a_reservation_dropped_unsettled_gives_its_place_back_and_counts_nothing() {
        let l = lockouts(1, 30, 600);
        let t = Instant::now();
        let r = reserved(&l, ip(1), 1, t);
        assert!(waits(&l, ip(1), 2, t).is_some());
        drop(r);
        let r = reserved(&l, ip(1), 2, t);
        assert!(
            r.settle(true, t).is_some(),
            "the one failure allowed blocks"
        );
        assert!(l.blocked(ip(1), t).is_some());
    }

    #[test]
    fn a_known_verdict_waits_like_a_guess_while_the_client_has_no_place_free() {
        let l = lockouts(2, 30, 600);
        let t = Instant::now();
        assert!(matches!(
            l.reserve(ip(1), digest(1), Some(()), t),
            Admission::Decide(())
        ));
        let a = reserved(&l, ip(1), 2, t);
        assert!(matches!(
            l.reserve(ip(1), digest(1), Some(()), t),
            Admission::Decide(())
        ));
        let b = reserved(&l, ip(1), 3, t);
        assert!(
            matches!(l.reserve(ip(1), digest(1), Some(()), t), Admission::Wait(_)),
            "two guesses in flight could block the client"
        );
        a.settle(true, t);
        assert!(b.settle(true, t).is_some());
        assert!(matches!(
            l.reserve(ip(1), digest(1), Some(()), t),
            Admission::Blocked(_)
        ));
    }

    #[test]
    fn lifting_a_block_keeps_the_places_being_judged_and_wakes_who_waits() {
        let l = lockouts(1, 30, 600);
        let t = Instant::now();
        let judged = reserved(&l, ip(1), 1, t);
        let seen = waits(&l, ip(1), 2, t).unwrap();
        assert!(!l.clear(ip(1), t), "nothing was blocked");
        assert!(waits(&l, ip(1), 2, t).is_some(), "the place is still taken");
        assert!(!l.settled_since(ip(1), seen));
        drop(judged);
        assert!(l.settled_since(ip(1), seen));
        reserved(&l, ip(1), 2, t);
    }

    #[test]
    fn requests_with_one_credential_share_its_place_until_the_last_settles() {
        let l = lockouts(2, 30, 600);
        let t = Instant::now();
        let first = reserved(&l, ip(1), 7, t);
        let second = reserved(&l, ip(1), 7, t);
        let other = reserved(&l, ip(1), 8, t);
        assert!(waits(&l, ip(1), 9, t).is_some(), "two places, both taken");
        drop(first);
        assert!(
            waits(&l, ip(1), 9, t).is_some(),
            "the place stays while a request with the credential is being judged"
        );
        assert_eq!(second.settle(false, t), None);
        let third = reserved(&l, ip(1), 9, t);
        drop((other, third));
    }

    #[test]
    fn failures_in_flight_during_a_block_neither_extend_nor_repeat_it() {
        let l = lockouts(2, 30, 600);
        let t = Instant::now();
        l.failed(ip(1), t);
        assert!(l.failed(ip(1), t).is_some());
        for s in 1..5 {
            assert_eq!(l.failed(ip(1), t + Duration::from_secs(s)), None);
        }
        assert_eq!(l.blocked(ip(1), t).unwrap().as_secs(), 600);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let l = lockouts(3, 10, 60);
        let t = Instant::now();
        for i in 0..10 {
            assert_eq!(l.failed(ip(1), t + Duration::from_secs(i * 6)), None);
        }
    }

    #[test]
    fn clear_lifts_a_block() {
        let l = lockouts(1, 10, 60);
        let t = Instant::now();
        assert!(l.failed(ip(7), t).is_some());
        assert!(l.blocked(ip(7), t).is_some());
        assert!(l.clear(ip(7), t));
        assert!(!l.clear(ip(7), t));
        assert_eq!(l.blocked(ip(7), t), None);
        assert!(l.failed(ip(8), t).is_some());
        assert!(
            !l.clear(ip(8), t + Duration::from_secs(61)),
            "an ended block is no block"
        );
    }

    #[test]
    fn a_flood_of_addresses_stays_bounded_and_keeps_blocks() {
        let l = lockouts(2, 30, 600);
        let t = Instant::now();
        l.failed(ip(0), t);
        l.failed(ip(0), t);
        for n in 1..(MAX_TRACKED as u32 * 2) {
            l.failed(ip(n), t + Duration::from_millis(u64::from(n)));
        }
        assert!(l.tracked() <= MAX_TRACKED);
        assert!(l.blocked(ip(0), t + Duration::from_secs(200)).is_some());
    }
}
