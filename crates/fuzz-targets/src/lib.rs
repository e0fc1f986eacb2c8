//! The bodies of herald's fuzz targets, one plain function per target.
//!
//! Each function takes arbitrary bytes, drives one parser of untrusted input
//! through every entry point it has, and asserts the invariants that are cheap to
//! check (encoding what was decoded gives the input back, two ways of decoding
//! agree, limits hold, refusals are errors and not panics). A panic is a finding.
//!
//! The cargo-fuzz project in `fuzz/` calls these functions from its targets, and
//! `tests/corpus.rs` runs every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through them on stable, so what fuzzing found
//! stays tested.

mod auth_body;
mod frame;
mod http_query;
mod recovery;
mod websocket;

pub use auth_body::auth_body;
pub use frame::frame;
pub use http_query::http_query;
pub use recovery::recovery;
pub use websocket::websocket;

/// A target's body: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target by name: the name is its directory under `fuzz/corpus/` and
/// `fuzz/regressions/`, and its binary in `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("websocket", websocket),
    ("auth_body", auth_body),
    ("recovery", recovery),
    ("http_query", http_query),
];
