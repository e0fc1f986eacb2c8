//! Any byte stream fed to the WebSocket upgrade parser and frame decoder must yield
//! messages or errors, never a panic.
#![no_main]

use herald_proto::ws;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ws::parse_upgrade(data, "/sub");
    let mut d = ws::Decoder::server(4112);
    let mut rest = data;
    while let Ok(Some((_, used))) = d.decode(rest) {
        if used == 0 {
            break;
        }
        rest = &rest[used..];
    }
});
