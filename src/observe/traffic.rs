//! Requests per second and error rate over the last minute, per service, for `/status` and the
//! status page: the services' request counters sampled every few seconds, the oldest sample of
//! the last minute compared with the counters now.

use crate::observe::metrics::Totals;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back the rates look.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(5);

/// The rates of one service over the window.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rates {
    /// The seconds the rates cover: the window, or less in the first minute of the process.
    pub window_seconds: f64,
    pub requests_per_second: f64,
    /// The share of requests answered with a 5xx status; `None` when there were none.
    pub error_rate: Option<f64>,
}

/// Samples of every service's counters, oldest first.
pub struct History {
    samples: Mutex<VecDeque<(Instant, Vec<Totals>)>>,
}

impl History {
    /// Starts with all counters at zero at `start` (the process's counters start there).
    pub fn new(services: usize, start: Instant) -> History {
        let mut samples = VecDeque::new();
        samples.push_back((start, vec![Totals::default(); services]));
        History {
            samples: Mutex::new(samples),
        }
    }

    /// Keeps the counters as they are `now`, and forgets samples the window no longer needs
    /// (the newest one older than the window stays, as the base of the rates).
    pub fn record(&self, now: Instant, totals: Vec<Totals>) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.push_back((now, totals));
        while samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
        {
            samples.pop_front();
        }
    }

    /// The rates of each service from the oldest sample within the window to `current`, the
    /// counters `now`.
    pub fn rates(&self, now: Instant, current: &[Totals]) -> Vec<Rates> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let base = samples
            .iter()
            .find(|(at, _)| now.duration_since(*at) <= WINDOW)
            .or(samples.back());
        let Some((at, before)) = base else {
            return Vec::new();
        };
        let seconds = now.duration_since(*at).as_secs_f64().max(1.0);
        current
            .iter()
            .enumerate()
            .map(|(i, now)| {
                let then = before.get(i).copied().unwrap_or_default();
                let requests = now.requests.saturating_sub(then.requests);
                let errors = now.errors.saturating_sub(then.errors);
                Rates {
                    window_seconds: seconds,
                    requests_per_second: requests as f64 / seconds,
                    error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, errors: u64) -> Vec<Totals> {
        vec![Totals { requests, errors }]
    }

    #[test]
    fn rates_cover_the_last_minute_only() {
        let start = Instant::now();
        let history = History::new(1, start);
        // 10 requests a second, none failing, for two minutes.
        for s in (5..=120).step_by(5) {
            history.record(start + Duration::from_secs(s), totals(s * 10, 0));
        }
        // Then 20 a second, half failing, for a minute.
        for s in (125..=180).step_by(5) {
            let extra = (s - 120) * 20;
            history.record(
                start + Duration::from_secs(s),
                totals(1200 + extra, extra / 2),
            );
        }
        let now = start + Duration::from_secs(180);
        let rates = history.rates(now, &totals(2400, 600));
        assert_eq!(rates[0].window_seconds, 60.0);
        assert_eq!(rates[0].requests_per_second, 20.0);
        assert_eq!(rates[0].error_rate, Some(0.5));
        assert!(history.samples.lock().unwrap().len() <= 14);
    }

    #[test]
    fn the_first_minute_counts_from_the_start_and_no_traffic_has_no_error_rate() {
        let start = Instant::now();
        let history = History::new(2, start);
        let now = start + Duration::from_secs(10);
        let current = vec![
            Totals {
                requests: 50,
                errors: 5,
            },
            Totals::default(),
        ];
        let rates = history.rates(now, &current);
        assert_eq!(rates[0].window_seconds, 10.0);
        assert_eq!(rates[0].requests_per_second, 5.0);
        assert_eq!(rates[0].error_rate, Some(0.1));
        assert_eq!(rates[1].requests_per_second, 0.0);
        assert_eq!(rates[1].error_rate, None);
    }
}
