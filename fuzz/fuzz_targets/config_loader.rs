//! The property `ccedge::fuzzing::config_loader` checks, on what libFuzzer generates.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ccedge::fuzzing::config_loader(data));
