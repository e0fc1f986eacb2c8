//! goim frames: the slice and exact decoders, the tokio codec over split
//! streams, OpRaw batches and op lists.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| herald_fuzz_targets::frame(data));
