//! What the latest requests say about each internal server. Finesse sites have no active health
//! check (each server is the only one for its host), so the status page shows the outcome of
//! the last request sent to it: answering, or failing and why, and since when.
//!
//! A request only reads an atomic; the lock is taken when the state changes.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

const UNKNOWN: u8 = 0;
const ANSWERING: u8 = 1;
const FAILING: u8 = 2;

#[derive(Default)]
struct Change {
    at: Option<String>,
    error: Option<String>,
    changes: u64,
}

/// One server's state as its requests saw it.
#[derive(Default)]
pub struct Observed {
    state: AtomicU8,
    change: Mutex<Change>,
}

impl Observed {
    /// The server answered a request (with any status).
    pub fn answered(&self) {
        if self.state.load(Ordering::Relaxed) != ANSWERING {
            self.change_to(ANSWERING, None);
        }
    }

    /// A request to the server got no answer, because of `error`.
    pub fn failed(&self, error: &pingora::Error) {
        self.change_to(FAILING, Some(error.to_string()));
    }

    fn change_to(&self, state: u8, error: Option<String>) {
        let mut change = self.change.lock().unwrap_or_else(|p| p.into_inner());
        if self.state.swap(state, Ordering::Relaxed) != state {
            change.at = Some(crate::observe::access_log::now());
            change.changes += 1;
        }
        if error.is_some() {
            change.error = error;
        }
    }

    /// For `/status`: `healthy` is null until a request went to the server.
    pub fn status(&self) -> Value {
        let change = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let healthy = match self.state.load(Ordering::Relaxed) {
            UNKNOWN => None,
            state => Some(state == ANSWERING),
        };
        json!({
            "checked_by": "requests",
            "healthy": healthy,
            "last_change": change.at,
            "last_error": change.error,
            "changes": change.changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_latest_outcome_and_when_it_changed() {
        let seen = Observed::default();
        assert_eq!(seen.status()["healthy"], Value::Null);
        seen.answered();
        seen.answered();
        assert_eq!(seen.status()["healthy"], true);
        assert_eq!(seen.status()["changes"], 1);
        let refused = pingora::Error::explain(pingora::ErrorType::ConnectRefused, "refused");
        seen.failed(&refused);
        let status = seen.status();
        assert_eq!(status["healthy"], false);
        assert_eq!(status["changes"], 2);
        assert!(status["last_error"].as_str().unwrap().contains("refused"));
        seen.answered();
        let status = seen.status();
        assert_eq!(status["healthy"], true);
        assert_eq!(status["changes"], 3);
        assert!(
            status["last_error"].as_str().is_some(),
            "the last error stays for the operator"
        );
    }
}
