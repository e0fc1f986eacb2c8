//! Bounded history per stream, and the positions it hands out.
//!
//! A stream (a room, a member's pushes, a key's pushes) appends each message and
//! gets back its **position**: the stream's epoch and an offset one higher than the
//! previous message's. Appending is the single place where a stream's order is
//! decided, so it is atomic in every backend (one Lua script in Redis, one lock in
//! memory). The history keeps at most `size` entries (oldest trimmed first) and is
//! forgotten `ttl` after the stream's last append; the epoch and the last offset
//! live `meta_ttl` after the last use, so a quiet stream that comes back keeps its
//! epoch. A stream nobody has pushed to yet, created by a read (a client joining
//! an empty room, in goim's mode any name it likes), lives only `ttl` after the
//! read: one client walking through room names must not grow the store for a
//! day. A stream whose epoch and offset were lost starts a new epoch at offset 1.
//!
//! [`MemoryHistory`] is the standalone backend; `RedisStore` implements the same
//! trait for clusters. Both pass [`crate::conformance::history`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
// tokio's clock (std's unless a test pauses it).
use tokio::time::Instant;

use crate::StoreResult;

/// How much of a stream is kept, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Entries kept (0: positions only, nothing to replay).
    pub size: usize,
    /// How long the entries outlive the stream's last append.
    pub ttl: Duration,
    /// How long the epoch and the last offset outlive the stream's last use.
    pub meta_ttl: Duration,
}

/// A message's place in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream's epoch.
    pub epoch: String,
    /// The message's offset in that epoch, from 1.
    pub offset: u64,
}

/// What a stream holds after a position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryRead {
    /// The stream's epoch (created by the read if the stream had none).
    pub epoch: String,
    /// The offset of the stream's last message (0: none yet in this epoch).
    pub top: u64,
    /// Retained entries after the position, oldest first, without retracted ones
    /// (empty unless the epoch matched).
    pub entries: Vec<(u64, Bytes)>,
    /// The epoch matched and every message after the position is still retained
    /// (or was retracted): `entries` is everything that happened since.
    pub complete: bool,
}

/// Per-stream bounded history.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Appends `entry` to `stream` and returns its position.
    async fn append(
        &self,
        stream: &str,
        policy: &HistoryPolicy,
        entry: Bytes,
    ) -> StoreResult<Appended>;

    /// Entries of `stream` after `since` in `epoch` (at most `limit`, 0: all
    /// retained). Creates the stream's epoch when it has none, so a client always
    /// learns a real one.
    async fn read(
        &self,
        stream: &str,
        policy: &HistoryPolicy,
        epoch: &str,
        since: u64,
        limit: usize,
    ) -> StoreResult<HistoryRead>;

    /// Marks an appended entry as never published (its publish failed): reads
    /// leave it out, without counting it as lost.
    async fn retract(&self, stream: &str, epoch: &str, offset: u64) -> StoreResult<()>;

    /// Checks that the engine answers now (for readiness probes).
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// A new epoch name: unique across processes and restarts (time, process id and
/// a counter), short enough to repeat in every op-25 frame.
pub fn new_epoch() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}-{}-{}",
        base36(nanos),
        base36(std::process::id() as u64),
        base36(n)
    )
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

struct Entry {
    offset: u64,
    frame: Bytes,
    retracted: bool,
}

struct Stream {
    epoch: String,
    top: u64,
    entries: VecDeque<Entry>,
    /// When the entries are forgotten.
    entries_until: Instant,
    /// When the whole stream is forgotten.
    meta_until: Instant,
}

impl Stream {
    fn fresh(now: Instant, policy: &HistoryPolicy) -> Stream {
        Stream {
            epoch: new_epoch(),
            top: 0,
            entries: VecDeque::new(),
            entries_until: now + policy.ttl,
            meta_until: now,
        }
    }
}

/// History in process memory (`herald standalone`). Expired streams are invisible
/// and removed by [`MemoryHistory::sweep`].
#[derive(Default)]
pub struct MemoryHistory {
    streams: Mutex<HashMap<String, Stream>>,
}

impl MemoryHistory {
    /// An empty history.
    pub fn new() -> MemoryHistory {
        MemoryHistory::default()
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stream>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live stream `name`, after dropping what expired; a new epoch when it
    /// expired or never existed. Its lifetime is extended by `meta_ttl`, or only
    /// by `ttl` while nothing was ever appended (see the module's doc).
    fn live<'a>(
        streams: &'a mut HashMap<String, Stream>,
        name: &str,
        now: Instant,
        policy: &HistoryPolicy,
    ) -> &'a mut Stream {
        if streams.get(name).is_some_and(|s| s.meta_until <= now) {
            streams.remove(name);
        }
        let s = streams
            .entry(name.to_string())
            .or_insert_with(|| Stream::fresh(now, policy));
        if s.entries_until <= now {
            s.entries.clear();
        }
        s
    }

    /// Keeps `s` for another `meta_ttl` from `now` (`ttl` if it has no message).
    fn used(s: &mut Stream, now: Instant, policy: &HistoryPolicy) {
        let keep = if s.top == 0 {
            policy.ttl.min(policy.meta_ttl)
        } else {
            policy.meta_ttl
        };
        s.meta_until = s.meta_until.max(now + keep);
    }

    /// Removes expired streams and entries; returns how many streams went.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut streams = self.streams();
        let before = streams.len();
        streams.retain(|_, s| s.meta_until > now);
        for s in streams.values_mut() {
            if s.entries_until <= now {
                s.entries = VecDeque::new();
            }
        }
        before - streams.len()
    }

    /// Streams held (for tests and metrics).
    pub fn stream_count(&self) -> usize {
        self.streams().len()
    }
}

#[async_trait]
impl HistoryStore for MemoryHistory {
    async fn append(
        &self,
        stream: &str,
        policy: &HistoryPolicy,
        entry: Bytes,
    ) -> StoreResult<Appended> {
        let now = Instant::now();
        let mut streams = self.streams();
        let s = Self::live(&mut streams, stream, now, policy);
        s.top += 1;
        Self::used(s, now, policy);
        if policy.size > 0 {
            while s.entries.len() >= policy.size {
                s.entries.pop_front();
            }
            s.entries.push_back(Entry {
                offset: s.top,
                frame: entry,
                retracted: false,
            });
            s.entries_until = now + policy.ttl;
        } else {
            s.entries.clear();
        }
        Ok(Appended {
            epoch: s.epoch.clone(),
            offset: s.top,
        })
    }

    async fn read(
        &self,
        stream: &str,
        policy: &HistoryPolicy,
        epoch: &str,
        since: u64,
        limit: usize,
    ) -> StoreResult<HistoryRead> {
        let now = Instant::now();
        let mut streams = self.streams();
        let s = Self::live(&mut streams, stream, now, policy);
        Self::used(s, now, policy);
        let mut read = HistoryRead {
            epoch: s.epoch.clone(),
            top: s.top,
            entries: Vec::new(),
            complete: false,
        };
        if epoch != s.epoch {
            return Ok(read);
        }
        if since >= s.top {
            read.complete = true;
            return Ok(read);
        }
        let first = s.entries.front().map(|e| e.offset);
        read.complete = first.is_some_and(|f| f <= since + 1);
        let limit = if limit == 0 { usize::MAX } else { limit };
        // Entries hold consecutive offsets: skip straight to `since + 1`.
        let skip = first.map_or(0, |f| since.saturating_add(1).saturating_sub(f) as usize);
        read.entries = s
            .entries
            .iter()
            .skip(skip)
            .filter(|e| !e.retracted)
            .take(limit)
            .map(|e| (e.offset, e.frame.clone()))
            .collect();
        Ok(read)
    }

    async fn retract(&self, stream: &str, epoch: &str, offset: u64) -> StoreResult<()> {
        let mut streams = self.streams();
        if let Some(s) = streams.get_mut(stream) {
            if s.epoch == epoch {
                if let Some(e) = s.entries.iter_mut().find(|e| e.offset == offset) {
                    e.retracted = true;
                    e.frame = Bytes::new();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(size: usize) -> HistoryPolicy {
        HistoryPolicy {
            size,
            ttl: Duration::from_secs(60),
            meta_ttl: Duration::from_secs(600),
        }
    }

    #[tokio::test]
    async fn conformance() {
        crate::conformance::history(&MemoryHistory::new())
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_before_the_epoch() {
        let h = MemoryHistory::new();
        let p = policy(10);
        let a = h.append("s", &p, Bytes::from_static(b"1")).await.unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        // The entries are gone, the epoch and offset are not: a client behind must
        // reload, a client at the top recovered.
        let r = h.read("s", &p, &a.epoch, 0, 0).await.unwrap();
        assert_eq!((r.top, r.complete, r.entries.len()), (1, false, 0));
        let r = h.read("s", &p, &a.epoch, 1, 0).await.unwrap();
        assert!(r.complete);
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(h.sweep(), 1);
        let r = h.read("s", &p, &a.epoch, 1, 0).await.unwrap();
        assert_ne!(r.epoch, a.epoch);
        assert!(!r.complete);
        assert_eq!(r.top, 0);
    }

    /// Reading a stream nobody pushed to (a client joining a room of its
    /// choice, in goim's mode any name) must not keep it for `meta_ttl`: one
    /// client changing rooms would grow the history without bound.
    #[tokio::test(start_paused = true)]
    async fn reads_of_streams_without_pushes_are_not_kept_for_meta_ttl() {
        let h = MemoryHistory::new();
        let p = policy(10);
        for i in 0..1000 {
            h.read(&format!("chat://{i}"), &p, "", 0, 0).await.unwrap();
        }
        // Well within meta_ttl (600 s), past the entries' ttl (60 s).
        tokio::time::advance(Duration::from_secs(61)).await;
        h.sweep();
        assert_eq!(h.stream_count(), 0);
    }

    #[test]
    fn epochs_differ() {
        let a = new_epoch();
        let b = new_epoch();
        assert_ne!(a, b);
        assert!(a.len() < 32, "{a}");
    }
}
