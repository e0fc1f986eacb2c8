//! The auth token (op-7 body).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald_fuzz_targets::auth_body(data));
