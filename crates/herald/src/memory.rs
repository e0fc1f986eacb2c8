//! The memory trimmer: a thread that, every `memory.trim_interval`, hands the
//! heap's free pages back to the kernel and publishes the allocator's counts. Without
//! it glibc's malloc keeps what a burst freed and the process stays at its peak size
//! (measurements: docs/benchmarks.md, "Allocator").

use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use tracing::debug;

use crate::periodic::Periodic;

/// Starts the trimmer thread, or returns `None` when `interval` is zero (turned
/// off). Its owner stops it with [`Periodic::stop`] (or by dropping it).
pub fn trimmer(interval: Duration) -> anyhow::Result<Option<Periodic>> {
    if interval.is_zero() {
        return Ok(None);
    }
    Periodic::start("herald-trim", interval, tick).map(Some)
}

fn tick() {
    let started = Instant::now();
    let released = herald_memory::trim();
    let took = started.elapsed();
    counter!("herald_memory_trims_total").increment(1);
    gauge!("herald_memory_last_trim_seconds").set(took.as_secs_f64());
    if let Some(s) = herald_memory::stats() {
        gauge!("herald_allocator_heap_bytes").set(s.heap_bytes as f64);
        gauge!("herald_allocator_in_use_bytes").set(s.in_use_bytes as f64);
        gauge!("herald_allocator_free_bytes").set(s.free_bytes as f64);
    }
    debug!(?took, released, "memory trim");
}
