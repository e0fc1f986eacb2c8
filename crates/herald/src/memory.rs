//! The memory trimmer: a thread that, every `memory.trim_interval`, hands the
//! heap's free pages back to the kernel and publishes the allocator's counts. Without
//! it glibc's malloc keeps what a burst freed and the process stays at its peak size
//! (measurements: docs/benchmarks.md, "Allocator").

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics::{counter, gauge};
use tracing::debug;

/// The running trimmer. Its owner stops it with [`Trimmer::stop`] (or by dropping
/// it); either returns once the thread has ended.
pub struct Trimmer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Trimmer {
    /// Starts the thread, or returns `None` when `interval` is zero (turned off).
    pub fn start(interval: Duration) -> anyhow::Result<Option<Trimmer>> {
        if interval.is_zero() {
            return Ok(None);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("herald-trim".into())
            .spawn(move || {
                // Nothing is ever sent: the channel reports Disconnected when the
                // owner drops the sender, and that is the stop.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    tick();
                }
            })
            .context("cannot start the memory trimmer thread")?;
        Ok(Some(Trimmer {
            stop: Some(stop),
            thread: Some(thread),
        }))
    }

    /// Stops the thread and waits for it (a trim in progress finishes first).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Trimmer {
    fn drop(&mut self) {
        self.halt();
    }
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
