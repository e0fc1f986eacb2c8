//! Any byte stream fed to the frame decoders must yield frames or errors, never a panic.
#![no_main]

use herald_proto::{decode_exact, decode_frame, raw, MAX_BODY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((_, used))) = decode_frame(rest, MAX_BODY) {
        rest = &rest[used..];
    }
    let _ = decode_exact(data, MAX_BODY);
    let _ = raw::unpack(data);
    let _ = herald_proto::AuthToken::parse(data);
    let _ = herald_proto::parse_op_list(data);
});
