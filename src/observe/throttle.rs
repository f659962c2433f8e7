//! Log lines that a flood could repeat thousands of times a second are written at most once a
//! second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct OncePerSecond {
    /// The second (since the epoch) of the last line let through.
    last: AtomicU64,
}

impl OncePerSecond {
    /// True at most once in each second, for one caller.
    pub fn ready(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        now > last
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_in_a_second() {
        let t = OncePerSecond::default();
        assert!(t.ready());
        assert!(!t.ready());
    }
}
