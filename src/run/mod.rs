//! Process assembly and operations: the Pingora server, the supervisor and reloads.

pub mod diff;
pub mod drain;
pub mod process;
pub mod signals;
pub mod supervise;
