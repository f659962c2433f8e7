//! State that outlives a process: what the login lockouts and the verdict stores know, handed
//! from a process to the next at a reload (`handover`), and the secret their hashes are keyed
//! with (`secret`), which every process computes alike.

pub mod handover;
pub mod rates;
pub mod secret;
pub mod shared;

use handover::Arrival;
use secret::StateKey;
use std::sync::Arc;

/// What a site's authentication needs from the state: the key its hashes are keyed with, when
/// the state of the process this one replaces has arrived, and the state shared with other
/// instances.
#[derive(Clone)]
pub struct Continuity {
    pub key: Arc<StateKey>,
    pub arrival: Arc<Arrival>,
    /// With `server.shared_state`: Redis.
    pub shared: Option<Arc<shared::Shared>>,
}

impl Continuity {
    /// The rate counts service `name` shares with the other instances, with shared state.
    pub fn rate_share(&self, name: &str) -> Option<Arc<rates::RateShare>> {
        let shared = self.shared.as_ref()?;
        Some(shared.rates(name, self.key.name_hasher()))
    }
}
