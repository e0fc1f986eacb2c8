//! RFC 6455, server side: the upgrade request and client frames.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald_fuzz_targets::websocket(data));
