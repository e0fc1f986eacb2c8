//! job's settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// job settings; every field has a default (see `docs/configuration.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    /// Most frames in one room batch (goim: 20).
    pub room_batch: usize,
    /// Extra time a room batch waits for more messages after the first one. 0 sends
    /// a lone message at once; batches still form while a flush is in flight.
    #[serde(with = "humantime_serde")]
    pub room_window: Duration,
    /// A room's batcher retires after this long without messages.
    #[serde(with = "humantime_serde")]
    pub room_idle: Duration,
    /// Messages waiting per room batcher.
    pub room_queue: usize,
    /// Requests waiting per comet.
    pub comet_queue: usize,
    /// Deadline of each call to a comet.
    #[serde(with = "humantime_serde")]
    pub comet_timeout: Duration,
    /// How long a call to a comet that is unreachable is tried again (with
    /// backoff) before its messages are given up for that comet. Later work for
    /// the same comet waits meanwhile, so its order holds. 0: no retry.
    #[serde(with = "humantime_serde")]
    pub comet_retry: Duration,
    /// Parallel queue consumers in this process.
    pub consumers: usize,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            room_batch: 20,
            room_window: Duration::ZERO,
            room_idle: Duration::from_secs(900),
            room_queue: 1024,
            comet_queue: 1024,
            comet_timeout: Duration::from_secs(3),
            comet_retry: Duration::from_secs(3),
            consumers: 1,
        }
    }
}
