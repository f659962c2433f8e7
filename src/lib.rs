//! ccedge as a library: everything the `ccedge` binary runs, so that the fuzz targets in
//! `fuzz/` can reach the configuration loader, the header policy and the substitution engine.

pub mod config;
pub mod digital;
pub mod doctor;
pub mod edge;
pub mod finesse;
#[doc(hidden)]
pub mod fuzzing;
pub mod observe;
pub mod run;
pub mod state;
