//! What every request goes through, whichever service: the normalised request target, client
//! identity, header policy, limits, ccedge's own replies and the upstream peers.

pub mod allow_list;
pub mod connections;
pub mod exchange;
pub mod fetch;
pub mod headers;
pub mod identity;
pub mod limits;
pub mod path;
pub mod proxy_protocol;
pub mod reply;
pub mod target;
pub mod upstream;
pub mod websocket;
