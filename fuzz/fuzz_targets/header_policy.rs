//! The property `ccedge::fuzzing::header_policy` checks, on what libFuzzer generates.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ccedge::fuzzing::header_policy(data));
