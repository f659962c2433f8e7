//! Rate-limit counts shared by every instance (`server.shared_state`). Each instance counts
//! locally (pingora-limits' estimator) and decides at once; a client and rule whose local count
//! passes a quarter of `per_second` is also counted here, per Unix second, and every 200 ms the
//! counts are added up in Redis (one key per service, rule, client and second, under
//! `ccedge:{<key fingerprint>:<service>}:rate:`). A decision then weighs the local count with
//! what the other instances counted this second, as last heard (and the burst allowance, with
//! what they counted the second before). The error: what the other instances counted in the
//! last 200 ms, and up to a quarter of the limit each before they start to share it.

use siphasher::sip::SipHasher13;
use std::collections::HashMap;
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Who a count is of: an address (the client's lockout key) or a user (a keyed hash of the
/// lower-case name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Who {
    Address(IpAddr),
    User(u64),
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    second: u64,
    /// Counted here, not sent yet.
    unsent: i64,
    /// Sent by this instance this second.
    sent: i64,
    /// What the other instances counted this second, as last heard.
    others: i64,
    /// What they counted the second before.
    others_before: i64,
}

/// A count to add to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub key: String,
    pub rule: usize,
    pub who: Who,
    pub second: u64,
    pub delta: i64,
}

pub struct RateShare {
    /// `ccedge:{<service>}:rate:`.
    prefix: String,
    names: SipHasher13,
    counts: Mutex<HashMap<(usize, Who), Count>>,
}

/// The current Unix second.
pub fn second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RateShare {
    pub fn new(service: &str, names: SipHasher13) -> RateShare {
        RateShare {
            prefix: format!("ccedge:{{{service}}}:rate:"),
            names,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// The count key of user `name` (any case).
    pub fn user(&self, name: &str) -> Who {
        let mut hasher = self.names;
        for b in name.bytes() {
            hasher.write_u8(b.to_ascii_lowercase());
        }
        Who::User(hasher.finish())
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, Who), Count>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request of `who` under rule `rule` at Unix second `second`, `local` being
    /// this instance's count now (its first share, when the client was not counted the second
    /// before, is the whole of it, up to a quarter of `limit`); what the other instances
    /// counted this second and the second before, as last heard.
    pub fn count(&self, rule: usize, who: Who, second: u64, local: i64, limit: u32) -> (i64, i64) {
        let mut counts = self.counts();
        let count = counts.entry((rule, who)).or_default();
        if count.second != second {
            let (first, others_before) = if count.second + 1 == second {
                (1, count.others)
            } else {
                (local.min(i64::from(limit / 4).max(1)), 0)
            };
            *count = Count {
                second,
                unsent: first,
                others_before,
                ..Count::default()
            };
        } else {
            count.unsent += 1;
        }
        (count.others, count.others_before)
    }

    /// The counts to add to Redis now; forgets those of seconds past.
    pub fn due(&self, now: u64) -> Vec<Due> {
        let mut counts = self.counts();
        counts.retain(|_, c| c.second + 1 >= now);
        counts
            .iter_mut()
            .filter(|(_, c)| c.unsent > 0)
            .map(|((rule, who), c)| {
                let delta = std::mem::take(&mut c.unsent);
                c.sent += delta;
                let who_key = match who {
                    Who::Address(ip) => ip.to_string(),
                    Who::User(hash) => format!("u{hash:016x}"),
                };
                Due {
                    key: format!("{}{rule}:{who_key}:{}", self.prefix, c.second),
                    rule: *rule,
                    who: *who,
                    second: c.second,
                    delta,
                }
            })
            .collect()
    }

    /// Redis's total for `due` after adding it.
    pub fn heard(&self, due: &Due, total: i64) {
        let mut counts = self.counts();
        if let Some(c) = counts.get_mut(&(due.rule, due.who)) {
            if c.second == due.second {
                c.others = (total - c.sent).max(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> RateShare {
        RateShare::new("cc", SipHasher13::new_with_keys(1, 2))
    }

    #[test]
    fn counts_are_sent_once_and_what_others_counted_comes_back() {
        let s = share();
        let ip = Who::Address("192.0.2.1".parse().unwrap());
        assert_eq!(
            s.count(0, ip, 100, 30, 100),
            (0, 0),
            "first share: the local count"
        );
        assert_eq!(s.count(0, ip, 100, 31, 100), (0, 0));
        let due = s.due(100);
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].delta, 26,
            "25 (a quarter of the limit at most), then one"
        );
        assert_eq!(due[0].key, "ccedge:{cc}:rate:0:192.0.2.1:100");
        // Redis adds it to the 50 other instances sent.
        s.heard(&due[0], 76);
        assert_eq!(s.count(0, ip, 100, 32, 100), (50, 0));
        let due = s.due(100);
        assert_eq!(due[0].delta, 1);
        s.heard(&due[0], 85);
        assert_eq!(s.count(0, ip, 100, 33, 100), (58, 0));
        // The next second counts from this request (the local estimator's window is its own),
        // and remembers what the others counted the second before (for the burst).
        assert_eq!(s.count(0, ip, 101, 80, 100), (0, 58));
        assert_eq!(s.due(101)[0].delta, 1);
        // A second later than the next: the share starts again.
        assert_eq!(s.count(0, ip, 105, 3, 100), (0, 0));
        assert_eq!(s.due(105)[0].delta, 3);
        assert!(s.due(108).is_empty(), "past seconds are forgotten");
    }

    #[test]
    fn users_count_by_a_keyed_hash_whatever_the_case() {
        let s = share();
        assert_eq!(s.user("Alice"), s.user("alice"));
        assert_ne!(s.user("alice"), s.user("bob"));
        let other = RateShare::new("cc", SipHasher13::new_with_keys(3, 4));
        assert_ne!(s.user("alice"), other.user("alice"));
    }
}
