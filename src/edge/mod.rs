//! What every request goes through, whichever service: client identity, header policy, limits,
//! ccedge's own replies and the upstream peers.

pub mod allow_list;
pub mod connections;
pub mod exchange;
pub mod fetch;
pub mod headers;
pub mod identity;
pub mod limits;
pub mod reply;
pub mod upstream;
