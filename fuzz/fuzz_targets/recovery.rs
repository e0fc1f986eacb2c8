//! The recovery extension: recover requests, op-24 and op-25 bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald_fuzz_targets::recovery(data));
