//! What one agent's desktop does, from Cisco's documentation where it says (bench/RESULTS.md,
//! "The agent simulator", lists the sources) and assumed where it does not.

use std::time::Duration;

/// The desktop's static files at sign-in, as path and size: about 100 requests and 4 MB
/// (assumed: Cisco publishes no figure). Public and cacheable: after the first agent, the
/// proxy's cache answers them.
pub fn assets() -> Vec<(String, usize)> {
    let mut assets = vec![("/desktop/container/".to_string(), 12_000)];
    assets.extend((1..=10).map(|i| (format!("/desktop/scripts/bundle{i}.js"), 250_000)));
    assets.extend((1..=89).map(|i| (format!("/desktop/gadgets/part{i}.js"), 16_000)));
    assets
}

/// The REST reads of a sign-in, with the agent's credentials (`{user}`: the agent's id):
/// SystemInfo and the user, then what the server caches for the desktop (ReasonCodes,
/// WrapUpReasons, MediaPropertiesLayouts, PhoneBooks, Workflows), then the dialogs.
pub const SIGN_IN: &[&str] = &[
    "/finesse/api/SystemInfo",
    "/finesse/api/User/{user}",
    "/finesse/api/User/{user}/ReasonCodes?category=NOT_READY",
    "/finesse/api/User/{user}/ReasonCodes?category=LOGOUT",
    "/finesse/api/User/{user}/WrapUpReasons",
    "/finesse/api/User/{user}/MediaPropertiesLayouts",
    "/finesse/api/User/{user}/PhoneBooks",
    "/finesse/api/User/{user}/Workflows",
    "/finesse/api/User/{user}/Dialogs",
];

/// The desktop's XMPP ping on its notification WebSocket (every 10 s, documented).
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// An XMPP ping, and the server's answer.
pub const PING: &str = "<iq type='get' id='c2s1'><ping xmlns='urn:xmpp:ping'/></iq>";
pub const PONG: &str = "<iq type='result' id='c2s1'/>";
