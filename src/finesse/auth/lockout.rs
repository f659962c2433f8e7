//! Brute-force protection: `failures` invalid credentials from one client IP within `window`
//! block that IP for `block`. The table is bounded: past `MAX_TRACKED` addresses, those idle
//! longest are forgotten first, so a flood of addresses cannot grow it without limit.

use crate::config::Lockout as Settings;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Client addresses tracked per site at most.
const MAX_TRACKED: usize = 65_536;

#[derive(Default)]
struct Record {
    /// When the recent failures happened (at most `failures` of them).
    failures: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    last_seen: Option<Instant>,
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

    /// Counts a failed attempt from `ip`; `Some` when it blocks the address.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<Blocked> {
        let mut table = self.table();
        if !table.contains_key(&ip) && table.len() >= MAX_TRACKED {
            self.make_room(&mut table, now);
        }
        let record = table.entry(ip).or_default();
        record.last_seen = Some(now);
        if record.blocked_until.is_some_and(|u| u > now) {
            // Already blocked: a request that was in flight when the block began.
            return None;
        }
        let window = self.settings.window;
        while record
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            record.failures.pop_front();
        }
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
        let record = self.table().remove(&ip);
        record.is_some_and(|r| r.blocked_until.is_some_and(|u| u > now))
    }

    /// The addresses blocked now, with the seconds left.
    pub fn current(&self, now: Instant) -> Vec<(IpAddr, u64)> {
        let mut table = self.table();
        table.retain(|_, r| {
            r.blocked_until.is_some_and(|u| u > now)
                || r.failures
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < self.settings.window)
        });
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
    /// has been idle longest, addresses not blocked first.
    fn make_room(&self, table: &mut HashMap<IpAddr, Record>, now: Instant) {
        let window = self.settings.window;
        table.retain(|_, r| {
            r.blocked_until.is_some_and(|u| u > now)
                || r.failures
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
        });
        if table.len() < MAX_TRACKED {
            return;
        }
        let mut idle: Vec<(bool, Option<Instant>, IpAddr)> = table
            .iter()
            .map(|(ip, r)| (r.blocked_until.is_some(), r.last_seen, *ip))
            .collect();
        let cut = MAX_TRACKED / 8;
        idle.select_nth_unstable(cut);
        for (_, _, ip) in &idle[..cut] {
            table.remove(ip);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table().len()
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
