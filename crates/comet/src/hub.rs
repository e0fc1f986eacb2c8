//! Buckets and rooms: who is connected to this comet and how to reach them.
//!
//! Connections are sharded over a power-of-two number of buckets by a hash of their
//! key; each bucket owns its key map, its share of every room and its IP counts
//! behind one lock. A room broadcast walks buckets, never holding more than one lock,
//! and offers the same shared buffer to each member (no copy, no await).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::channel::{Channel, CloseReason, Expired, Offer, Outbound, OutboxLimits};
use crate::config::SlowConsumerPolicy;
use crate::metrics::CometMetrics;
use crate::recovery::Positioned;
use crate::sink::Prepared;
use herald_proto::recovery::StreamKind;
use herald_rpc::Position;

/// What waits in a comet's write queues (see [`Hub::refresh_backlog`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Pushes waiting in outboxes.
    pub pushes: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Connections with pushes waiting.
    pub connections: usize,
}

#[derive(Default)]
struct BucketInner {
    /// key → connection (the key is shared with the channel).
    channels: HashMap<Arc<str>, Arc<Channel>>,
    /// room key → members in this bucket; each member knows its index.
    rooms: HashMap<Arc<str>, Vec<Arc<Channel>>>,
    /// client IP → connections from it.
    ips: HashMap<IpAddr, u32>,
}

impl BucketInner {
    fn join(&mut self, ch: &Arc<Channel>, room: &str) {
        let key: Arc<str> = match self.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => Arc::from(room),
        };
        let members = self.rooms.entry(key.clone()).or_default();
        ch.set_slot(members.len());
        members.push(ch.clone());
        ch.set_room(Some(key));
    }

    fn leave(&mut self, ch: &Arc<Channel>) {
        let Some(room) = ch.room() else {
            return;
        };
        ch.set_room(None);
        let slot = ch.slot();
        if let Some(members) = self.rooms.get_mut(&*room) {
            if members.get(slot).is_some_and(|m| Arc::ptr_eq(m, ch)) {
                members.swap_remove(slot);
                if let Some(moved) = members.get(slot) {
                    moved.set_slot(slot);
                }
            }
            if members.is_empty() {
                self.rooms.remove(&*room);
            }
        }
    }

    fn ip_add(&mut self, ip: IpAddr) {
        *self.ips.entry(ip).or_default() += 1;
    }

    fn ip_remove(&mut self, ip: IpAddr) {
        if let Some(n) = self.ips.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.ips.remove(&ip);
            }
        }
    }
}

/// Outcome counts of one push, for the caller and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Connections the item was written to or queued for.
    pub queued: usize,
    /// Of those, connections written to directly (socket writes done here).
    pub written: usize,
    /// Push frames written directly.
    pub frames: u64,
    /// Connections whose queue was full.
    pub full: usize,
}

/// Connections a broadcast serves before it lets other tasks run: about half a
/// millisecond of socket writes. (With 10,000 WebSocket clients in a room, 64
/// gave a lone key push p99 11.9 ms under load against 14.5 ms with 128, at the
/// same background throughput: `herald bench run loaded`.)
pub const SLICE: usize = 64;

/// Counts what a broadcast served and yields to the scheduler after every
/// [`SLICE`] connections (a small room never yields).
#[derive(Default)]
struct Slicer {
    since_yield: usize,
}

impl Slicer {
    async fn served(&mut self, n: usize) {
        self.since_yield += n;
        if self.since_yield >= SLICE {
            self.since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// All connections of one comet.
pub struct Hub {
    buckets: Box<[RwLock<BucketInner>]>,
    /// Kinds of stream that keep no history, as logic last said.
    pub history_off: crate::recovery::OffStreams,
    /// Cluster-wide room counts from logic's last online reply.
    all_online: RwLock<HashMap<String, i32>>,
    /// Source of channel ids.
    next_id: AtomicU64,
    /// Incremented whenever a route removal completes in logic; lets a connection
    /// that authenticated concurrently detect that its route may have been removed.
    route_removals: AtomicU64,
    policy: SlowConsumerPolicy,
    /// Broadcasts write a slice of sockets per system call (io_uring) where the
    /// kernel allows it.
    batched_sends: bool,
    /// How much each connection's outbox may hold.
    outbox: OutboxLimits,
    /// Origin of the millisecond clock used for heartbeat deadlines.
    /// Start of the deadline clock (tokio's clock: the tests can pause it).
    epoch: tokio::time::Instant,
    /// Signalled when connections or room memberships change, so online counts are
    /// reported soon rather than at the next interval.
    pub changed: tokio::sync::Notify,
    /// Metric handles.
    pub metrics: CometMetrics,
}

fn fnv1a(key: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// A hub with `buckets` buckets (rounded up to a power of two).
    pub fn new(
        buckets: usize,
        policy: SlowConsumerPolicy,
        outbox: OutboxLimits,
        metrics: CometMetrics,
    ) -> Hub {
        let n = buckets.max(1).next_power_of_two();
        Hub {
            history_off: Default::default(),
            buckets: (0..n)
                .map(|_| RwLock::new(BucketInner::default()))
                .collect(),
            all_online: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            route_removals: AtomicU64::new(0),
            policy,
            batched_sends: true,
            outbox,
            epoch: tokio::time::Instant::now(),
            changed: tokio::sync::Notify::new(),
            metrics,
        }
    }

    /// Turns batched broadcast writes (io_uring) on or off; on by default, and
    /// without effect where the kernel refuses io_uring.
    pub fn with_batched_sends(mut self, on: bool) -> Hub {
        self.batched_sends = on;
        self
    }

    fn bucket(&self, key: &str) -> &RwLock<BucketInner> {
        let i = (fnv1a(key) as usize) & (self.buckets.len() - 1);
        &self.buckets[i]
    }

    /// A fresh channel id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a connection (and puts it in `room` if not empty). A connection already
    /// holding the same key is removed and told to close; it is returned.
    pub fn register(&self, ch: &Arc<Channel>, room: &str) -> Option<Arc<Channel>> {
        let old = {
            let mut b = write(self.bucket(&ch.key));
            let old = b.channels.insert(ch.key.clone(), ch.clone());
            if let Some(old) = &old {
                b.leave(old);
                b.ip_remove(old.ip);
            }
            b.ip_add(ch.ip);
            if !room.is_empty() {
                b.join(ch, room);
            }
            old
        };
        if let Some(old) = &old {
            old.close_with(CloseReason::Replaced);
        }
        self.changed.notify_one();
        old
    }

    /// Removes a connection. Returns false when the key already belongs to a newer
    /// connection (then the route belongs to that one and must be left alone).
    pub fn unregister(&self, ch: &Arc<Channel>) -> bool {
        self.changed.notify_one();
        let mut b = write(self.bucket(&ch.key));
        match b.channels.get(&ch.key) {
            Some(cur) if Arc::ptr_eq(cur, ch) => {
                b.channels.remove(&ch.key);
                b.leave(ch);
                b.ip_remove(ch.ip);
                true
            }
            _ => {
                b.leave(ch);
                false
            }
        }
    }

    /// The connection currently holding `key`.
    pub fn channel(&self, key: &str) -> Option<Arc<Channel>> {
        read(self.bucket(key)).channels.get(key).cloned()
    }

    /// Moves a connection to `room` (empty = leave its room).
    pub fn change_room(&self, ch: &Arc<Channel>, room: &str) {
        let mut b = write(self.bucket(&ch.key));
        if !b.channels.get(&ch.key).is_some_and(|c| Arc::ptr_eq(c, ch)) {
            return;
        }
        if ch.room().as_deref() == Some(room) {
            return;
        }
        b.leave(ch);
        if !room.is_empty() {
            b.join(ch, room);
        }
        self.changed.notify_one();
    }

    /// Members of `room` on this comet.
    pub fn local_room_count(&self, room: &str) -> i32 {
        self.buckets
            .iter()
            .map(|b| read(b).rooms.get(room).map_or(0, |m| m.len() as i32))
            .sum()
    }

    /// The online count a heartbeat reply carries: the cluster-wide count, or the
    /// local one when that is higher (the cluster count lags by one report).
    pub fn room_online(&self, room: &str) -> i32 {
        let all = read(&self.all_online).get(room).copied().unwrap_or(0);
        all.max(self.local_room_count(room))
    }

    /// Stores the cluster-wide room counts from logic.
    pub fn set_all_online(&self, counts: HashMap<String, i32>) {
        *write(&self.all_online) = counts;
    }

    /// Members per room on this comet.
    pub fn room_counts(&self) -> HashMap<String, i32> {
        let mut out: HashMap<String, i32> = HashMap::new();
        for b in self.buckets.iter() {
            for (room, members) in &read(b).rooms {
                *out.entry(room.to_string()).or_default() += members.len() as i32;
            }
        }
        out
    }

    /// Authenticated connections.
    pub fn connection_count(&self) -> usize {
        self.buckets.iter().map(|b| read(b).channels.len()).sum()
    }

    /// Distinct client IPs.
    pub fn ip_count(&self) -> usize {
        let mut ips = std::collections::HashSet::new();
        for b in self.buckets.iter() {
            ips.extend(read(b).ips.keys().copied());
        }
        ips.len()
    }

    /// Records that logic finished removing a route.
    pub(crate) fn note_route_removal(&self) {
        self.route_removals.fetch_add(1, Ordering::AcqRel);
    }

    /// Route removals completed so far.
    pub(crate) fn route_removals(&self) -> u64 {
        self.route_removals.load(Ordering::Acquire)
    }

    /// Offers a shared OpRaw body of `frames` frames to one connection.
    fn offer(&self, ch: &Channel, body: &Bytes, frames: u32, out: &mut Fanout) {
        let item = Outbound::Raw {
            body: body.clone(),
            frames,
        };
        self.tally(ch, ch.offer(item, self.outbox), frames, out);
    }

    /// Offers a shared OpRaw body to each of `chs`: with one system call for those
    /// that are idle and in the clear (see [`crate::batch`]), one by one for the
    /// others (and for all where io_uring is unavailable or turned off).
    fn offer_many(&self, chs: &[&Arc<Channel>], body: &Bytes, frames: u32, out: &mut Fanout) {
        let others = match (self.batched_sends, chs.len()) {
            (true, 2..) => {
                crate::batch::with_ring(|ring| self.write_batch(ring, chs, body, frames, out))
            }
            _ => None,
        };
        for ch in others.as_deref().unwrap_or(chs) {
            self.offer(ch, body, frames, out);
        }
    }

    /// Writes `body` to every connection of `chs` that can be claimed, in one
    /// batch; returns the others.
    fn write_batch<'a>(
        &self,
        ring: &mut herald_uring::SendBatch,
        chs: &[&'a Arc<Channel>],
        body: &Bytes,
        frames: u32,
        out: &mut Fanout,
    ) -> Vec<&'a Arc<Channel>> {
        let mut claims = Vec::with_capacity(chs.len());
        let mut others = Vec::new();
        for ch in chs {
            match ch.try_claim() {
                Some(c) => claims.push((c, *ch)),
                None => others.push(*ch),
            }
        }
        if claims.is_empty() {
            return others;
        }
        // Every member gets the same bytes: encoded once per transport.
        let encode = |ws| {
            Prepared::new(
                ws,
                std::iter::once(Outbound::Raw {
                    body: body.clone(),
                    frames,
                }),
            )
        };
        let (ws, tcp) = (encode(true), encode(false));
        let (ws_bufs, tcp_bufs) = (ws.slices(), tcp.slices());
        let sends: Vec<herald_uring::Send<'_>> = claims
            .iter()
            .map(|(c, _)| herald_uring::Send {
                fd: c.fd,
                bufs: if c.ws { &ws_bufs } else { &tcp_bufs },
            })
            .collect();
        let mut results = Vec::with_capacity(sends.len());
        ring.send(&sends, &mut results);
        drop(sends);
        let mut batched = 0;
        for ((claim, ch), result) in claims.into_iter().zip(results) {
            let prepared = if claim.ws { &ws } else { &tcp };
            // As a non-blocking `writev`: no room is nothing taken (the
            // connection task writes it when the socket drains).
            let written = match result {
                Ok(0) if prepared.len() > 0 => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => Ok(prepared.written(n, true)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    Ok(prepared.written(0, true))
                }
                // Nothing was sent. Whether the socket or the ring refused it,
                // the usual write decides (and closes the connection only if
                // its socket is the one failing).
                Err(_) => {
                    drop(claim);
                    others.push(ch);
                    continue;
                }
            };
            let offer = claim.settle(written);
            batched += u64::from(matches!(offer, Offer::Written(_)));
            self.tally(ch, offer, frames, out);
        }
        self.metrics.batched_writes.increment(batched);
        others
    }

    /// Counts what offering a push of `frames` frames to `ch` did.
    fn tally(&self, ch: &Channel, offer: Offer, frames: u32, out: &mut Fanout) {
        let frames = frames as u64;
        match offer {
            Offer::Queued => out.queued += 1,
            Offer::Written(n) => {
                out.queued += 1;
                out.written += 1;
                out.frames += n;
            }
            Offer::Closed => {}
            Offer::Full => {
                out.full += 1;
                self.metrics.slow_consumers.increment(1);
                self.metrics.dropped.increment(frames);
                match self.policy {
                    SlowConsumerPolicy::Drop => {}
                    SlowConsumerPolicy::Disconnect => {
                        self.metrics.slow_disconnects.increment(1);
                        ch.close_with(CloseReason::SlowConsumer);
                    }
                }
            }
        }
    }

    /// How much each connection's outbox may hold.
    pub(crate) fn outbox_limits(&self) -> OutboxLimits {
        self.outbox
    }

    /// Counts the socket writes a fan-out did directly.
    pub(crate) fn account(&self, out: &Fanout) {
        if out.written > 0 {
            self.metrics.writes.increment(out.written as u64);
            self.metrics.frames_delivered.increment(out.frames);
        }
    }

    /// Queues `body` (an OpRaw body) for the given keys that accept `op`. With
    /// a `position` (the push's place in a member's or a key's stream),
    /// connections that track that stream get it positioned, in order.
    pub fn push_keys(
        &self,
        keys: &[String],
        op: i32,
        body: Bytes,
        position: Option<&Position>,
    ) -> Fanout {
        let frames = count_frames(&body);
        let mut out = Fanout::default();
        let mut positioned: Option<Option<Positioned>> = None;
        for key in keys {
            let ch = read(self.bucket(key)).channels.get(key.as_str()).cloned();
            let Some(ch) = ch else { continue };
            if let (Some(rec), Some(p)) = (ch.recovery(), position) {
                let batch = positioned.get_or_insert_with(|| {
                    let kind = StreamKind::of_stream(&p.stream);
                    Positioned::wrap(kind, &p.epoch, &body, &[p.offset])
                });
                if let Some(batch) = batch {
                    if rec.offer(self, &ch, &p.stream, batch, ch.accepts(op), &mut out) {
                        continue;
                    }
                }
            }
            if ch.accepts(op) {
                self.offer(&ch, &body, frames, &mut out);
            }
        }
        self.account(&out);
        out
    }

    /// Queues `body` for every member of `room` (no op filter, as in goim).
    pub async fn broadcast_room(&self, room: &str, body: Bytes) -> Fanout {
        self.broadcast_room_part(room, body, None, 0, 1).await
    }

    /// [`Hub::broadcast_room`] over buckets `part`, `part + parts`, … only, so that
    /// several threads can share one room broadcast.
    ///
    /// With `positions` (the room stream's epoch and each frame's offset),
    /// members that track the room's stream get the frames positioned, wrapped
    /// once for all of them.
    ///
    /// A large room is served in slices of [`SLICE`] connections with a yield
    /// between them, so that the other work of the threads it runs on (a key
    /// push, another room, reading clients) is not held up until it ends.
    pub async fn broadcast_room_part(
        &self,
        room: &str,
        body: Bytes,
        positions: Option<(&str, &[u64])>,
        part: usize,
        parts: usize,
    ) -> Fanout {
        let frames = count_frames(&body);
        let mut out = Fanout::default();
        let mut positioned: Option<Option<Positioned>> = None;
        let mut slicer = Slicer::default();
        for b in self.buckets.iter().skip(part).step_by(parts.max(1)) {
            // The members as they are now; the bucket is not held while they
            // are served.
            let Some(members) = read(b).rooms.get(room).cloned() else {
                continue;
            };
            let mut plain: Vec<&Arc<Channel>> = Vec::with_capacity(SLICE.min(members.len()));
            for slice in members.chunks(SLICE) {
                plain.clear();
                for ch in slice {
                    if let (Some(rec), Some((epoch, offsets))) = (ch.recovery(), positions) {
                        let batch = positioned.get_or_insert_with(|| {
                            Positioned::wrap(StreamKind::Room, epoch, &body, offsets)
                        });
                        if let Some(batch) = batch {
                            if rec.offer(self, ch, room, batch, true, &mut out) {
                                continue;
                            }
                        }
                    }
                    plain.push(ch);
                }
                self.offer_many(&plain, &body, frames, &mut out);
                slicer.served(slice.len()).await;
            }
        }
        self.account(&out);
        out
    }

    /// Queues `body` for every connection accepting `op`, bucket by bucket, in
    /// slices like a room broadcast. With a `speed` (connections per second) it
    /// pauses between buckets to keep that rate.
    pub async fn broadcast(&self, op: i32, body: Bytes, speed: i32) -> Fanout {
        let frames = count_frames(&body);
        let mut out = Fanout::default();
        let mut slicer = Slicer::default();
        for b in self.buckets.iter() {
            let all: Vec<Arc<Channel>> = read(b).channels.values().cloned().collect();
            for slice in all.chunks(SLICE) {
                let accepting: Vec<&Arc<Channel>> =
                    slice.iter().filter(|ch| ch.accepts(op)).collect();
                self.offer_many(&accepting, &body, frames, &mut out);
                slicer.served(slice.len()).await;
            }
            if speed > 0 && !all.is_empty() {
                tokio::time::sleep(Duration::from_secs_f64(all.len() as f64 / speed as f64)).await;
            }
        }
        self.account(&out);
        out
    }

    /// Milliseconds on the deadline clock.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The deadline `d` from now on the deadline clock.
    pub fn deadline_after(&self, d: Duration) -> u64 {
        self.now_ms().saturating_add(d.as_millis() as u64)
    }

    /// The hub-clock time (ms) of a Unix time in seconds; `u64::MAX` for 0 (never).
    pub fn expiry_ms(&self, unix_secs: i64) -> u64 {
        if unix_secs <= 0 {
            return u64::MAX;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let left = Duration::from_secs(unix_secs as u64).saturating_sub(now);
        self.deadline_after(left)
    }

    /// Closes every connection whose heartbeat deadline or credentials' expiry has
    /// passed. Returns how many.
    pub fn sweep_expired(&self) -> usize {
        let now = self.now_ms();
        let (mut heartbeats, mut credentials) = (0u64, 0u64);
        for b in self.buckets.iter() {
            for ch in read(b).channels.values() {
                match ch.expire(now) {
                    Some(Expired::Heartbeat) => heartbeats += 1,
                    Some(Expired::Credentials) => credentials += 1,
                    None => {}
                }
            }
        }
        if heartbeats > 0 {
            self.metrics.timeouts.increment(heartbeats);
        }
        if credentials > 0 {
            self.metrics.credential_expiries.increment(credentials);
        }
        (heartbeats + credentials) as usize
    }

    /// Measures the write queues — pushes and bytes waiting in the connections'
    /// outboxes, and how many connections have some waiting — and sets their
    /// gauges. A walk over every connection (one short lock each), so it runs per
    /// scrape, not per push.
    pub fn refresh_backlog(&self) -> Backlog {
        let mut total = Backlog::default();
        for b in self.buckets.iter() {
            for ch in read(b).channels.values() {
                let (pushes, bytes) = ch.backlog();
                total.pushes += pushes;
                total.bytes += bytes;
                total.connections += usize::from(pushes > 0);
            }
        }
        self.metrics.outbox_pushes.set(total.pushes as f64);
        self.metrics.outbox_bytes.set(total.bytes as f64);
        self.metrics.backlogged.set(total.connections as f64);
        total
    }

    /// Every connection, for walks that must not hold a bucket lock while they wait.
    fn all_channels(&self) -> Vec<Arc<Channel>> {
        let mut all = Vec::with_capacity(self.connection_count());
        for b in self.buckets.iter() {
            all.extend(read(b).channels.values().cloned());
        }
        all
    }

    /// Closes every connection at once (shutdown).
    pub fn close_all(&self) {
        for ch in self.all_channels() {
            ch.close();
        }
    }

    /// Closes every connection with `reason`, spread evenly over `window` so that
    /// clients do not all reconnect in the same instant (a drain). Connections that
    /// arrive meanwhile are closed in a final pass.
    pub async fn close_all_over(&self, window: Duration, reason: CloseReason) {
        let all = self.all_channels();
        if !all.is_empty() && !window.is_zero() {
            let start = tokio::time::Instant::now();
            let n = all.len() as u32;
            // Each channel is let go of as soon as it is closed: holding it would
            // keep its socket open (a TCP client would see nothing until the end).
            for (i, ch) in all.into_iter().enumerate() {
                let at = start + window.mul_f64(f64::from(i as u32) / f64::from(n));
                tokio::time::sleep_until(at).await;
                ch.close_with(reason);
            }
        }
        for ch in self.all_channels() {
            ch.close_with(reason);
        }
    }
}

/// Number of frames in an OpRaw body (walks the length prefixes; stops at the first
/// malformed header).
pub fn count_frames(body: &[u8]) -> u32 {
    let mut n = 0;
    let mut rest = body;
    while let Some(h) = herald_proto::Header::parse(rest) {
        let len = h.pack_len as usize;
        if h.pack_len < herald_proto::HEADER_LEN as i32 || len > rest.len() {
            break;
        }
        n += 1;
        rest = &rest[len..];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::{ws, Header, Op, HEADER_LEN, PROTO_VERSION};
    use std::collections::VecDeque;

    fn hub() -> Hub {
        Hub::new(
            4,
            SlowConsumerPolicy::Drop,
            OutboxLimits::pushes(4),
            CometMetrics::new(),
        )
    }

    fn ch(h: &Hub, key: &str, accepts: Vec<i32>) -> Arc<Channel> {
        Arc::new(Channel::new(
            h.next_id(),
            key.into(),
            1,
            IpAddr::from([10, 0, 0, 1]),
            accepts,
            1024,
        ))
    }

    fn queued(c: &Channel) -> usize {
        let mut q = VecDeque::new();
        c.drain(&mut q);
        q.len()
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_closes_at_the_heartbeat_deadline_and_not_before() {
        let h = hub();
        let (late, live) = (ch(&h, "late", vec![]), ch(&h, "live", vec![]));
        h.register(&late, "live://1");
        h.register(&live, "live://1");
        for c in [&late, &live] {
            c.set_deadline(h.deadline_after(Duration::from_secs(10)));
        }
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        assert_eq!(h.sweep_expired(), 0, "nobody is late yet");
        // `live` sends its heartbeat; `late` does not.
        live.set_deadline(h.deadline_after(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(h.sweep_expired(), 1);
        assert!(late.is_closed() && late.timed_out());
        assert!(!live.is_closed());
        // A closed connection is not counted twice.
        assert_eq!(h.sweep_expired(), 0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(h.sweep_expired(), 1);
        assert!(live.timed_out());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_credentials_close_before_a_heartbeat_would() {
        let h = hub();
        let c = ch(&h, "k", vec![]);
        h.register(&c, "live://1");
        c.set_deadline(h.deadline_after(Duration::from_secs(60)));
        c.set_expiry(h.deadline_after(Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(h.sweep_expired(), 0);
        // A refresh moves the expiry; the old one no longer applies.
        c.set_expiry(h.deadline_after(Duration::from_secs(20)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(h.sweep_expired(), 0);
        tokio::time::sleep(Duration::from_secs(18)).await;
        assert_eq!(h.sweep_expired(), 1);
        assert_eq!(c.close_reason(), Some(CloseReason::CredentialsExpired));
        assert!(!c.timed_out());
    }

    /// A room broadcast to many connections lets other tasks run between its
    /// slices: a key push that became ready when the broadcast started is
    /// served after the first slice, not after the whole room. (One thread:
    /// the other task runs only when the broadcast yields.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_large_room_broadcast_lets_other_tasks_run_between_slices() {
        let h = Arc::new(hub());
        let n = SLICE * 8;
        let members: Vec<_> = (0..n).map(|i| ch(&h, &format!("m{i}"), vec![])).collect();
        for c in &members {
            h.register(c, "live://big");
        }
        let probe = ch(&h, "probe", vec![1000]);
        h.register(&probe, "");
        let key_push = {
            let (h, members) = (h.clone(), members.clone());
            tokio::spawn(async move {
                h.push_keys(&["probe".to_string()], 1000, Bytes::from_static(b"k"), None);
                // Members the room broadcast had served by then.
                members.iter().filter(|c| queued(c) > 0).count()
            })
        };
        let out = h
            .broadcast_room("live://big", Bytes::from_static(b"r"))
            .await;
        assert_eq!(out.queued, n);
        let served_before = key_push.await.unwrap();
        assert!(
            (SLICE..n).contains(&served_before),
            "the key push ran after {served_before} of {n} members"
        );
        assert_eq!(queued(&probe), 1);
    }

    #[tokio::test]
    async fn rooms_track_members_across_buckets() {
        let h = hub();
        let chans: Vec<_> = (0..20).map(|i| ch(&h, &format!("k{i}"), vec![])).collect();
        for c in &chans {
            h.register(c, "live://1");
        }
        assert_eq!(h.local_room_count("live://1"), 20);
        for c in &chans[..5] {
            h.change_room(c, "live://2");
        }
        h.change_room(&chans[5], "");
        assert_eq!(h.local_room_count("live://1"), 14);
        assert_eq!(h.room_counts().get("live://2"), Some(&5));
        assert_eq!(
            h.broadcast_room("live://1", Bytes::from_static(b"x"))
                .await
                .queued,
            14
        );
        for c in &chans {
            assert!(h.unregister(c));
        }
        assert!(h.room_counts().is_empty());
        assert_eq!(h.connection_count(), 0);
        assert_eq!(h.ip_count(), 0);
    }

    #[test]
    fn same_key_replaces_and_old_unregister_is_harmless() {
        let h = hub();
        let a = ch(&h, "dup", vec![1000]);
        let b = ch(&h, "dup", vec![1000]);
        h.register(&a, "live://1");
        let old = h.register(&b, "live://1");
        assert!(old.is_some_and(|o| Arc::ptr_eq(&o, &a)));
        assert!(a.is_closed());
        assert!(!h.unregister(&a));
        assert_eq!(h.local_room_count("live://1"), 1);
        assert!(h.channel("dup").is_some_and(|c| Arc::ptr_eq(&c, &b)));
        assert_eq!(h.connection_count(), 1);
    }

    #[tokio::test]
    async fn filters_and_slow_consumers() {
        let h = hub();
        let a = ch(&h, "a", vec![1000]);
        let b = ch(&h, "b", vec![2000]);
        h.register(&a, "");
        h.register(&b, "");
        let f = h.push_keys(
            &["a".into(), "b".into(), "zz".into()],
            1000,
            Bytes::from_static(b"m"),
            None,
        );
        assert_eq!(f.queued, 1);
        assert_eq!(
            h.broadcast(2000, Bytes::from_static(b"m"), 0).await.queued,
            1
        );
        assert_eq!(queued(&a), 1);
        assert_eq!(queued(&b), 1);
        for _ in 0..4 {
            h.push_keys(&["a".into()], 1000, Bytes::from_static(b"m"), None);
        }
        assert_eq!(
            h.push_keys(&["a".into()], 1000, Bytes::from_static(b"m"), None)
                .full,
            1
        );
    }

    #[test]
    fn counts_frames_in_batches() {
        let mut b = herald_proto::raw::RawBatch::default();
        b.push(1, b"a");
        b.push(1, b"bc");
        assert_eq!(count_frames(&b.finish()), 2);
        assert_eq!(count_frames(b"short"), 0);
    }

    /// A member's socket pair: the server side wrapped in a sink, the client side.
    async fn member(
        h: &Hub,
        l: &tokio::net::TcpListener,
        key: &str,
        ws: bool,
    ) -> (Arc<Channel>, tokio::net::TcpStream) {
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        let sink = crate::sink::Sink::new(Arc::new(server), ws);
        let c = Arc::new(
            Channel::new(
                h.next_id(),
                key.into(),
                1,
                IpAddr::from([10, 0, 0, 1]),
                vec![],
                16,
            )
            .with_sink(sink),
        );
        h.register(&c, "live://batch");
        (c, client)
    }

    /// A room broadcast writes every idle member in the clear directly (in
    /// io_uring batches of a slice each, or one by one when turned off), and the
    /// bytes each client receives are exactly its transport's encoding of the
    /// push. A member with something queued gets the push after it; a member
    /// whose socket is full keeps the whole push queued for its task; a member
    /// whose peer is gone is closed; none of them holds up the others.
    #[tokio::test]
    async fn a_room_broadcast_batches_idle_members_and_queues_the_rest_in_order() {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        for batched in [true, false] {
            let h = Hub::new(
                4,
                SlowConsumerPolicy::Drop,
                OutboxLimits::pushes(4),
                CometMetrics::new(),
            )
            .with_batched_sends(batched);
            // 150 members: slices of 64, 64 and 22 over the buckets.
            let mut members = Vec::new();
            for i in 0..150 {
                members.push(member(&h, &l, &format!("m{i}"), i % 2 == 0).await);
            }
            let (busy, _busy_client) = member(&h, &l, "busy", true).await;
            busy.reply(Outbound::Frame(herald_proto::Frame {
                ver: PROTO_VERSION,
                op: 3,
                seq: 7,
                body: Bytes::new(),
            }));
            let (full, _full_client) = member(&h, &l, "full", false).await;
            let filled = {
                let sink = full.sink().unwrap();
                let chunk = vec![0u8; 1 << 16];
                let mut n = 0;
                while let Ok(w) = sink.stream.try_write(&chunk) {
                    n += w;
                }
                n
            };
            assert!(filled > 0);
            let (gone, gone_client) = member(&h, &l, "gone", true).await;
            socket2::SockRef::from(&gone_client)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(gone_client);
            // The reset has arrived once the server side reads it.
            {
                let s = &gone.sink().unwrap().stream;
                loop {
                    s.readable().await.unwrap();
                    match s.try_read(&mut [0u8; 16]) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        _ => break,
                    }
                }
            }

            let mut body = bytes::BytesMut::new();
            herald_proto::Frame {
                ver: PROTO_VERSION,
                op: 9,
                seq: 0,
                body: Bytes::from_static(b"room push"),
            }
            .encode_into(&mut body);
            let body = body.freeze();
            let out = h.broadcast_room("live://batch", body.clone()).await;

            assert_eq!(out.written, 150, "batched = {batched}");
            assert_eq!(out.frames, 150);
            assert_eq!(out.queued, 152, "the busy and full members queue it");
            assert_eq!(out.full, 0);
            assert!(gone.is_closed(), "a reset socket closes its connection");
            assert_eq!(
                h.metrics.batched_writes.total(),
                if batched { 150 } else { 0 },
                "batched = {batched}"
            );
            let ws_bytes = {
                let (hd, hl) = ws::server_header(ws::opcode::BINARY, HEADER_LEN + body.len());
                let mut v = hd[..hl].to_vec();
                v.extend_from_slice(&Header::encode(PROTO_VERSION, Op::RAW, 0, body.len()));
                v.extend_from_slice(&body);
                v
            };
            for (i, (_, client)) in members.iter_mut().enumerate() {
                let want: &[u8] = if i % 2 == 0 { &ws_bytes } else { &body };
                let mut got = vec![0u8; want.len()];
                client.read_exact(&mut got).await.unwrap();
                assert_eq!(got, want, "member {i}, batched = {batched}");
            }
            // The busy member: its reply first, then the push, for its task.
            let mut q = VecDeque::new();
            busy.drain(&mut q);
            assert!(matches!(q[0], Outbound::Frame(ref f) if f.seq == 7));
            assert!(matches!(&q[1], Outbound::Raw { body: b, .. } if *b == body));
            assert_eq!(q.len(), 2);
            busy.finish_write();
            // The full member: the whole push waits for its task, unwritten.
            assert_eq!(full.backlog(), (1, body.len()));
        }
    }
}
