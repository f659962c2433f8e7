//! What operators see: the access log, the metrics and the admin listener.

pub mod access_log;
pub mod admin;
pub mod draining;
pub mod lifecycle;
pub mod log_levels;
pub mod metrics;
pub mod own_files;
pub mod throttle;
pub mod traffic;
