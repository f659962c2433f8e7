//! The property `ccedge::fuzzing::request_target` checks, on what libFuzzer generates.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ccedge::fuzzing::request_target(data));
