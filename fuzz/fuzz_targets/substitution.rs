//! The property `ccedge::fuzzing::substitution` checks, on what libFuzzer generates.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ccedge::fuzzing::substitution(data));
