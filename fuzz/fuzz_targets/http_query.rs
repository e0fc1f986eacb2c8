//! The HTTP API's query strings and JSON push bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald_fuzz_targets::http_query(data));
