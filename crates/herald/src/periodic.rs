//! A thread that runs a task at a fixed interval until its owner stops it: the
//! memory trimmer and the metrics upkeep.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

/// The running thread. Its owner stops it with [`Periodic::stop`] (or by
/// dropping it); either returns once the thread has ended.
pub struct Periodic {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Periodic {
    /// Starts thread `name`, which runs `tick` every `interval` (not at once).
    pub fn start(
        name: &str,
        interval: Duration,
        mut tick: impl FnMut() + Send + 'static,
    ) -> anyhow::Result<Periodic> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Nothing is ever sent: the channel reports Disconnected when the
                // owner drops the sender, and that is the stop.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    tick();
                }
            })
            .with_context(|| format!("cannot start the {name} thread"))?;
        Ok(Periodic {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (a tick in progress finishes first).
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

impl Drop for Periodic {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn ticks_until_stopped() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let (seen, saw) = mpsc::channel();
        let t = {
            let ticks = ticks.clone();
            Periodic::start("test-periodic", Duration::from_millis(1), move || {
                if ticks.fetch_add(1, Ordering::SeqCst) == 2 {
                    let _ = seen.send(());
                }
            })
            .unwrap()
        };
        saw.recv().unwrap();
        // stop joins the thread: had it not ended, this would hang.
        t.stop();
        assert!(ticks.load(Ordering::SeqCst) >= 3);
    }
}
