//! One authenticated connection as the rest of comet sees it: identity, accept
//! filter, room slot and the bounded outbound queue that its connection task drains.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use herald_proto::Frame;

/// Something waiting to be written to a client.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An OpRaw body: `frames` complete push frames, shared by every receiver.
    /// TCP clients get the bytes verbatim; WebSocket clients get one op-9 frame.
    Raw {
        /// The encoded frames.
        body: Bytes,
        /// How many frames `body` holds (for metrics).
        frames: u32,
    },
    /// A single frame (a reply to the client).
    Frame(Frame),
    /// A WebSocket pong carrying the ping's payload.
    Pong(Bytes),
    /// Bytes already encoded for this connection (the unwritten rest of a write),
    /// carrying `frames` push frames.
    Encoded {
        /// The bytes.
        bytes: Bytes,
        /// Push frames they complete.
        frames: u64,
    },
}

/// Result of offering a push to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Written to the socket at once; carries the number of push frames.
    Written(u64),
    /// Queued for writing.
    Queued,
    /// The queue is full: the connection is a slow consumer.
    Full,
    /// The connection is closing.
    Closed,
}

struct OutboxState {
    /// Items in arrival order.
    queue: VecDeque<Outbound>,
    /// Set once the connection must close; the task exits at its next wake-up.
    closed: bool,
    /// The connection task is writing what it drained; nobody else may write.
    writing: bool,
    /// Pushes in `queue` (replies are not counted against the capacity).
    pushes: usize,
}

/// An authenticated connection.
pub struct Channel {
    /// Unique per comet process; tells apart two connections with the same key.
    pub id: u64,
    /// Connection key (device id); the route table's key.
    pub key: Arc<str>,
    /// Member id; 0 when anonymous.
    pub mid: i64,
    /// Peer address, for the distinct-IP count.
    pub ip: IpAddr,
    /// Ops accepted for key, mid and broadcast pushes (small, sorted).
    accepts: Mutex<Vec<i32>>,
    /// Current room and this channel's index in that room's member list; guarded
    /// in practice by the bucket lock, kept here so leaving a room is O(1).
    room: Mutex<Option<Arc<str>>>,
    pub(crate) room_slot: AtomicUsize,
    /// Pending outbound items.
    outbox: Mutex<OutboxState>,
    /// Heartbeat deadline, milliseconds on the hub's clock; checked by the sweeper.
    deadline_ms: AtomicU64,
    /// Set when the sweeper closed the connection for a missed heartbeat.
    timed_out: AtomicBool,
    /// Set when the outbox changed or the connection must close; cleared by the
    /// connection task when it looks.
    signalled: AtomicBool,
    /// The connection task's waker (cheaper per connection than a `Notify` and a
    /// stored `notified()` future).
    waker: AtomicWaker,
    /// The socket, for writing pushes directly when the connection is idle.
    sink: Option<crate::sink::Sink>,
    /// Outbox capacity.
    capacity: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Channel {
    /// A channel with an empty outbox of `capacity` items.
    pub fn new(
        id: u64,
        key: Arc<str>,
        mid: i64,
        ip: IpAddr,
        accepts: Vec<i32>,
        capacity: usize,
    ) -> Channel {
        let mut accepts = accepts;
        accepts.sort_unstable();
        accepts.dedup();
        Channel {
            id,
            key,
            mid,
            ip,
            accepts: Mutex::new(accepts),
            room: Mutex::new(None),
            room_slot: AtomicUsize::new(usize::MAX),
            outbox: Mutex::new(OutboxState {
                queue: VecDeque::new(),
                closed: false,
                writing: false,
                pushes: 0,
            }),
            sink: None,
            deadline_ms: AtomicU64::new(u64::MAX),
            timed_out: AtomicBool::new(false),
            signalled: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether key, mid and broadcast pushes with `op` reach this connection.
    pub fn accepts(&self, op: i32) -> bool {
        lock(&self.accepts).binary_search(&op).is_ok()
    }

    /// Adds ops to the accept filter.
    pub fn watch(&self, ops: &[i32]) {
        let mut a = lock(&self.accepts);
        a.extend_from_slice(ops);
        a.sort_unstable();
        a.dedup();
    }

    /// Removes ops from the accept filter.
    pub fn unwatch(&self, ops: &[i32]) {
        lock(&self.accepts).retain(|o| !ops.contains(o));
    }

    /// The current room key.
    pub fn room(&self) -> Option<Arc<str>> {
        lock(&self.room).clone()
    }

    pub(crate) fn set_room(&self, room: Option<Arc<str>>) {
        *lock(&self.room) = room;
    }

    pub(crate) fn slot(&self) -> usize {
        self.room_slot.load(Ordering::Relaxed)
    }

    pub(crate) fn set_slot(&self, slot: usize) {
        self.room_slot.store(slot, Ordering::Relaxed);
    }

    /// Attaches the socket so pushes can be written without waking the task.
    pub fn with_sink(mut self, sink: crate::sink::Sink) -> Channel {
        self.sink = Some(sink);
        self
    }

    /// Offers an item; never blocks. When nothing is queued and no write is in
    /// progress, the item is written to the socket right here (the common case);
    /// otherwise it is queued for the connection task, in order.
    pub fn offer(&self, item: Outbound) -> Offer {
        let mut st = lock(&self.outbox);
        if st.closed {
            return Offer::Closed;
        }
        if let (Some(sink), true, false) = (&self.sink, st.queue.is_empty(), st.writing) {
            match sink.write_now(std::iter::once(item)) {
                Ok(w) => match w.rest {
                    None => return Offer::Written(w.frames),
                    Some(rest) => {
                        // The socket is full: the task finishes this write.
                        st.queue.push_back(Outbound::Encoded {
                            bytes: rest,
                            frames: w.frames,
                        });
                        st.pushes += 1;
                    }
                },
                Err(_) => {
                    st.closed = true;
                    st.queue.clear();
                    drop(st);
                    self.signal();
                    return Offer::Closed;
                }
            }
            drop(st);
            self.signal();
            return Offer::Queued;
        }
        if st.pushes >= self.capacity {
            return Offer::Full;
        }
        st.queue.push_back(item);
        st.pushes += 1;
        drop(st);
        self.signal();
        Offer::Queued
    }

    /// The socket sink, if attached.
    pub(crate) fn sink(&self) -> Option<&crate::sink::Sink> {
        self.sink.as_ref()
    }

    /// Marks the end of the connection task's write (see [`Channel::drain`]).
    pub(crate) fn finish_write(&self) {
        lock(&self.outbox).writing = false;
    }

    /// Queues a reply regardless of the capacity (replies are bounded by the
    /// client's own requests, which are read one batch at a time).
    pub(crate) fn reply(&self, item: Outbound) {
        let mut st = lock(&self.outbox);
        if !st.closed {
            st.queue.push_back(item);
        }
    }

    /// Takes everything queued for the connection task to write. Until it calls
    /// [`Channel::finish_write`], pushes are queued rather than written directly.
    /// Returns whether the connection must close.
    pub(crate) fn drain(&self, into: &mut VecDeque<Outbound>) -> bool {
        let mut st = lock(&self.outbox);
        if into.is_empty() {
            std::mem::swap(into, &mut st.queue);
        } else {
            into.append(&mut st.queue);
        }
        if !into.is_empty() {
            st.writing = true;
        }
        st.pushes = 0;
        st.closed
    }

    /// Asks the connection to close (replaced by a newer one, slow consumer,
    /// shutdown). Idempotent.
    pub fn close(&self) {
        let mut st = lock(&self.outbox);
        st.closed = true;
        st.queue.clear();
        st.pushes = 0;
        drop(st);
        self.signal();
    }

    fn signal(&self) {
        self.signalled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Registers the connection task's waker and returns (and clears) whether the
    /// channel was signalled. Register first, then check, so no signal is missed.
    pub(crate) fn poll_signal(&self, cx: &std::task::Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.signalled.swap(false, Ordering::AcqRel)
    }

    /// Moves the heartbeat deadline (hub clock, ms).
    pub fn set_deadline(&self, at_ms: u64) {
        self.deadline_ms.store(at_ms, Ordering::Relaxed);
    }

    /// Closes the connection if its deadline passed; returns whether it did.
    pub(crate) fn expire(&self, now_ms: u64) -> bool {
        if self.deadline_ms.load(Ordering::Relaxed) > now_ms || self.is_closed() {
            return false;
        }
        self.timed_out.store(true, Ordering::Relaxed);
        self.close();
        true
    }

    /// Whether the connection was closed for a missed heartbeat.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Whether [`Channel::close`] was called.
    pub fn is_closed(&self) -> bool {
        lock(&self.outbox).closed
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("mid", &self.mid)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(cap: usize) -> Channel {
        Channel::new(
            1,
            "k".into(),
            1,
            IpAddr::from([127, 0, 0, 1]),
            vec![1001, 1000, 1000],
            cap,
        )
    }

    #[test]
    fn accept_filter() {
        let c = ch(4);
        assert!(c.accepts(1000) && c.accepts(1001) && !c.accepts(5));
        c.watch(&[5, 6]);
        assert!(c.accepts(5));
        c.unwatch(&[1000, 6]);
        assert!(!c.accepts(1000) && !c.accepts(6) && c.accepts(1001));
    }

    #[test]
    fn replies_do_not_count_against_push_capacity() {
        let c = ch(2);
        for _ in 0..4 {
            c.reply(Outbound::Pong(Bytes::new()));
        }
        assert_eq!(c.offer(Outbound::Pong(Bytes::new())), Offer::Queued);
        assert_eq!(c.offer(Outbound::Pong(Bytes::new())), Offer::Queued);
        assert_eq!(c.offer(Outbound::Pong(Bytes::new())), Offer::Full);
    }

    #[test]
    fn bounded_outbox() {
        let c = ch(2);
        let item = || Outbound::Pong(Bytes::new());
        assert_eq!(c.offer(item()), Offer::Queued);
        assert_eq!(c.offer(item()), Offer::Queued);
        assert_eq!(c.offer(item()), Offer::Full);
        let mut q = VecDeque::new();
        assert!(!c.drain(&mut q));
        assert_eq!(q.len(), 2);
        assert_eq!(c.offer(item()), Offer::Queued);
        c.close();
        assert_eq!(c.offer(item()), Offer::Closed);
        let mut q = VecDeque::new();
        assert!(c.drain(&mut q));
        assert!(q.is_empty());
    }
}
