//! One authenticated connection as the rest of comet sees it: identity, grant,
//! accept filter, room slot and the bounded outbound queue that its connection task
//! drains.

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use herald_proto::Frame;
use herald_rpc::Grant;

use crate::sink::{Pending, Written};

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
    /// The unwritten rest of a write, already encoded for this connection: slices
    /// of the offered buffers, carrying `frames` push frames.
    Unwritten {
        /// The bytes, in order.
        parts: VecDeque<Bytes>,
        /// Push frames they complete.
        frames: u64,
    },
    /// Sealed bytes wait in the TLS session: flush them before anything else.
    Flush {
        /// Push frames they complete.
        frames: u64,
    },
}

impl Outbound {
    /// Bytes this item holds for the connection (what the outbound byte limit
    /// counts; a shared buffer counts fully, as the connection keeps it alive).
    pub fn len(&self) -> usize {
        match self {
            Outbound::Raw { body, .. } => body.len(),
            Outbound::Frame(f) => f.encoded_len(),
            Outbound::Pong(p) => p.len(),
            Outbound::Unwritten { parts, .. } => parts.iter().map(Bytes::len).sum(),
            Outbound::Flush { .. } => 0,
        }
    }

    /// Whether the item holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The queue item for what a write left.
    fn pending(rest: Pending, frames: u64) -> Outbound {
        match rest {
            Pending::Parts(parts) => Outbound::Unwritten { parts, frames },
            Pending::Sealed => Outbound::Flush { frames },
        }
    }
}

/// A connection whose outbox lock is held while a push is written to its socket
/// together with other connections' (one system call for many sockets). Holding
/// the lock keeps the connection task and other pushes from writing in between,
/// as for a direct write in [`Channel::offer`]. Claims are only ever taken with
/// `try_lock`, so a batch holding many never waits for one and cannot deadlock.
pub(crate) struct Claim<'a> {
    ch: &'a Channel,
    /// WebSocket framing (else raw goim frames).
    pub(crate) ws: bool,
    /// The socket (in the clear).
    pub(crate) fd: RawFd,
    st: MutexGuard<'a, OutboxState>,
}

impl Claim<'_> {
    /// Records the write's result and releases the connection (see
    /// [`Channel::offer`] for what each outcome means).
    pub(crate) fn settle(self, written: io::Result<Written>) -> Offer {
        self.ch.settle(self.st, written)
    }
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

/// Why the server closes a connection, as told to a WebSocket client in its close
/// frame (TCP clients see the connection end). One byte, so every channel can
/// carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Another connection authenticated with the same key.
    Replaced,
    /// The slow-consumer policy closed it.
    SlowConsumer,
    /// The server is draining: reconnect, probably elsewhere.
    Restart,
    /// More frames per second than allowed.
    FrameRate,
    /// More room changes per minute than allowed.
    RoomChangeRate,
    /// The accept filter would exceed its bound.
    AcceptLimit,
    /// A malformed frame or message.
    MalformedFrame,
    /// The credentials expired without a refresh.
    CredentialsExpired,
    /// logic refused the credentials.
    AuthRefused,
    /// The credentials could not be checked (logic or its backend unavailable).
    AuthUnavailable,
}

impl CloseReason {
    /// The WebSocket close code (`herald_proto::ws::close`).
    pub fn code(self) -> u16 {
        use herald_proto::ws::close;
        match self {
            CloseReason::Replaced => close::REPLACED,
            CloseReason::SlowConsumer => close::TRY_AGAIN_LATER,
            CloseReason::Restart => close::SERVICE_RESTART,
            CloseReason::FrameRate
            | CloseReason::RoomChangeRate
            | CloseReason::AcceptLimit
            | CloseReason::AuthRefused => close::POLICY_VIOLATION,
            CloseReason::MalformedFrame => close::PROTOCOL_ERROR,
            CloseReason::CredentialsExpired => close::TOKEN_EXPIRED,
            CloseReason::AuthUnavailable => close::TRY_AGAIN_LATER,
        }
    }

    /// The close frame's text.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Replaced => "replaced by a newer connection with the same key",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Restart => "server restarting; reconnect",
            CloseReason::FrameRate => "frame rate exceeded",
            CloseReason::RoomChangeRate => "room change rate exceeded",
            CloseReason::AcceptLimit => "accept filter limit exceeded",
            CloseReason::MalformedFrame => "malformed frame",
            CloseReason::CredentialsExpired => "credentials expired",
            CloseReason::AuthRefused => "auth refused",
            CloseReason::AuthUnavailable => "auth unavailable; retry later",
        }
    }
}

struct OutboxState {
    /// Items in arrival order.
    queue: VecDeque<Outbound>,
    /// Set once the connection must close; the task exits at its next wake-up.
    closed: bool,
    /// What to tell the client when closing (none: just end the connection).
    close_reason: Option<CloseReason>,
    /// The connection task is writing what it drained; nobody else may write.
    writing: bool,
    /// Pushes in `queue` (replies are not counted against the capacity).
    pushes: usize,
    /// Bytes of the pushes in `queue`.
    bytes: usize,
}

/// How much one connection's outbox may hold (the same for every connection of a
/// comet, so kept by the hub rather than by each channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Pushes queued.
    pub pushes: usize,
    /// Bytes of the pushes queued.
    pub bytes: usize,
}

impl OutboxLimits {
    /// `pushes` pushes and no byte bound.
    pub fn pushes(pushes: usize) -> OutboxLimits {
        OutboxLimits {
            pushes: pushes.max(1),
            bytes: usize::MAX,
        }
    }
}

/// The accept filter and the grant it is checked against, under one lock.
#[derive(Debug)]
struct Filter {
    /// Ops accepted for key, mid and broadcast pushes (sorted).
    accepts: Vec<i32>,
    /// What the client may do; `None`: anything (goim's behaviour).
    grant: Option<Arc<Grant>>,
}

/// An authenticated connection.
pub struct Channel {
    /// Unique per comet process; tells apart two connections with the same key.
    pub id: u64,
    /// Connection key (device id); the route table's key.
    pub key: Arc<str>,
    /// Member id; 0 when anonymous.
    pub mid: i64,
    /// Client address (after trusted proxies), for the distinct-IP count.
    pub ip: IpAddr,
    /// Accept filter and grant (replaced by a credential refresh).
    filter: Mutex<Filter>,
    /// Current room and this channel's index in that room's member list; guarded
    /// in practice by the bucket lock, kept here so leaving a room is O(1).
    room: Mutex<Option<Arc<str>>>,
    pub(crate) room_slot: AtomicUsize,
    /// Pending outbound items.
    outbox: Mutex<OutboxState>,
    /// Heartbeat deadline, milliseconds on the hub's clock; checked by the sweeper.
    deadline_ms: AtomicU64,
    /// When the credentials expire, milliseconds on the hub's clock (`u64::MAX`:
    /// never); checked by the sweeper.
    expires_ms: AtomicU64,
    /// Set when the sweeper closed the connection for a missed heartbeat.
    timed_out: AtomicBool,
    /// Set when the outbox changed or the connection must close; cleared by the
    /// connection task when it looks.
    signalled: AtomicBool,
    /// logic answers this connection's upstream frames (an application's
    /// connection): no empty echo before forwarding them.
    answered: bool,
    /// The connection task's waker (cheaper per connection than a `Notify` and a
    /// stored `notified()` future).
    waker: AtomicWaker,
    /// The socket, for writing pushes directly when the connection is idle.
    sink: Option<crate::sink::Sink>,
    /// Stream positions, for a connection that asked for recovery (`None` for
    /// goim's clients).
    recovery: Option<Box<crate::recovery::Recovery>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why an op-14 subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchError {
    /// The accept filter would exceed its bound.
    TooMany,
}

impl Channel {
    /// A channel with an empty outbox, accepting at most `max_accepts` of the given
    /// ops (the smallest).
    pub fn new(
        id: u64,
        key: Arc<str>,
        mid: i64,
        ip: IpAddr,
        accepts: Vec<i32>,
        max_accepts: usize,
    ) -> Channel {
        let mut accepts = accepts;
        accepts.sort_unstable();
        accepts.dedup();
        accepts.truncate(max_accepts);
        Channel {
            id,
            key,
            mid,
            ip,
            filter: Mutex::new(Filter {
                accepts,
                grant: None,
            }),
            room: Mutex::new(None),
            room_slot: AtomicUsize::new(usize::MAX),
            outbox: Mutex::new(OutboxState {
                queue: VecDeque::new(),
                closed: false,
                close_reason: None,
                writing: false,
                pushes: 0,
                bytes: 0,
            }),
            sink: None,
            recovery: None,
            deadline_ms: AtomicU64::new(u64::MAX),
            expires_ms: AtomicU64::new(u64::MAX),
            timed_out: AtomicBool::new(false),
            signalled: AtomicBool::new(false),
            answered: false,
            waker: AtomicWaker::new(),
        }
    }

    /// Sets what the connection may do (`None`: anything); ops the new grant no
    /// longer allows leave the accept filter.
    pub fn set_grant(&self, grant: Option<Grant>) {
        let mut f = lock(&self.filter);
        if let Some(g) = &grant {
            f.accepts.retain(|op| g.allows_op(*op));
        }
        f.grant = grant.map(Arc::new);
    }

    /// The grant in force (`None`: anything).
    pub fn grant(&self) -> Option<Arc<Grant>> {
        lock(&self.filter).grant.clone()
    }

    /// Whether the grant lets this connection be in `room`.
    pub fn may_join(&self, room: &str) -> bool {
        lock(&self.filter)
            .grant
            .as_ref()
            .is_none_or(|g| g.allows_room(room))
    }

    /// Whether key, mid and broadcast pushes with `op` reach this connection.
    pub fn accepts(&self, op: i32) -> bool {
        lock(&self.filter).accepts.binary_search(&op).is_ok()
    }

    /// Adds the ops the grant allows to the accept filter; returns them (sorted).
    /// Refuses, changing nothing, when the filter would hold more than `max` ops.
    pub fn watch(&self, ops: &[i32], max: usize) -> Result<Vec<i32>, WatchError> {
        let mut add = ops.to_vec();
        add.sort_unstable();
        add.dedup();
        let mut f = lock(&self.filter);
        if let Some(g) = &f.grant {
            add.retain(|op| g.allows_op(*op));
        }
        let new = add
            .iter()
            .filter(|op| f.accepts.binary_search(op).is_err())
            .count();
        if f.accepts.len() + new > max {
            return Err(WatchError::TooMany);
        }
        f.accepts.extend_from_slice(&add);
        f.accepts.sort_unstable();
        f.accepts.dedup();
        Ok(add)
    }

    /// Removes ops from the accept filter (O(n log m)).
    pub fn unwatch(&self, ops: &[i32]) {
        let mut remove = ops.to_vec();
        remove.sort_unstable();
        lock(&self.filter)
            .accepts
            .retain(|o| remove.binary_search(o).is_err());
    }

    /// Ops in the accept filter.
    pub fn accept_count(&self) -> usize {
        lock(&self.filter).accepts.len()
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
    /// otherwise it is queued for the connection task, in order. A push that would
    /// take the queue past `limits` (pushes or bytes) is refused, except into an
    /// empty queue (a single push larger than the byte bound still goes out).
    pub fn offer(&self, item: Outbound, limits: OutboxLimits) -> Offer {
        let mut st = lock(&self.outbox);
        if st.closed {
            return Offer::Closed;
        }
        if let (Some(sink), true, false) = (&self.sink, st.queue.is_empty(), st.writing) {
            let written = sink.write_now(std::iter::once(item));
            return self.settle(st, written);
        }
        let len = item.len();
        if st.pushes >= limits.pushes || (st.pushes > 0 && st.bytes + len > limits.bytes) {
            return Offer::Full;
        }
        st.queue.push_back(item);
        st.pushes += 1;
        st.bytes += len;
        drop(st);
        self.signal();
        Offer::Queued
    }

    /// Records the result of a direct write made under the outbox lock `st`: the
    /// rest of a partial write is queued first for the connection task; an error
    /// closes the connection.
    fn settle(&self, mut st: MutexGuard<'_, OutboxState>, written: io::Result<Written>) -> Offer {
        match written {
            Ok(w) => match w.rest {
                None => return Offer::Written(w.frames),
                Some(rest) => {
                    // The socket is full: the task finishes this write.
                    let item = Outbound::pending(rest, w.frames);
                    st.bytes += item.len();
                    st.queue.push_back(item);
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
        Offer::Queued
    }

    /// Claims the connection for a direct write made together with others' (see
    /// [`Claim`]): only when the outbox lock is free right now, nothing is queued
    /// or being written, and the socket is in the clear. Otherwise the caller
    /// offers the push the usual way ([`Channel::offer`]).
    pub(crate) fn try_claim(&self) -> Option<Claim<'_>> {
        let st = match self.outbox.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let sink = self.sink.as_ref()?;
        let fd = sink.plain_fd()?;
        if st.closed || st.writing || !st.queue.is_empty() {
            return None;
        }
        Some(Claim {
            ch: self,
            ws: sink.ws,
            fd,
            st,
        })
    }

    /// Pushes and bytes waiting in the outbox for the connection task (the write
    /// queue's depth; a reply or a write in progress is not counted).
    pub fn backlog(&self) -> (usize, usize) {
        let st = lock(&self.outbox);
        (st.pushes, st.bytes)
    }

    /// Tracks the connection's stream positions (it asked for recovery).
    pub fn with_recovery(mut self, recovery: crate::recovery::Recovery) -> Channel {
        self.recovery = Some(Box::new(recovery));
        self
    }

    /// Marks the connection as one whose upstream frames logic answers
    /// (`ConnectReply::answered`).
    pub fn answered_by_logic(mut self, answered: bool) -> Channel {
        self.answered = answered;
        self
    }

    /// Whether logic answers this connection's upstream frames.
    pub fn is_answered(&self) -> bool {
        self.answered
    }

    /// The recovery state, for a connection that asked for recovery.
    pub fn recovery(&self) -> Option<&crate::recovery::Recovery> {
        self.recovery.as_deref()
    }

    /// The socket sink, if attached.
    pub(crate) fn sink(&self) -> Option<&crate::sink::Sink> {
        self.sink.as_ref()
    }

    /// Marks the end of the connection task's write (see [`Channel::drain`]).
    pub(crate) fn finish_write(&self) {
        lock(&self.outbox).writing = false;
    }

    /// Gives the (empty) buffer the connection task drained into back to the
    /// outbox if the outbox has none, so an idle connection keeps one queue
    /// buffer instead of two.
    pub(crate) fn recycle(&self, buf: &mut VecDeque<Outbound>) {
        let mut st = lock(&self.outbox);
        if buf.is_empty() && st.queue.capacity() == 0 {
            std::mem::swap(buf, &mut st.queue);
        }
    }

    /// Queues a reply regardless of the capacity (replies are bounded by the
    /// client's own requests, which are read one batch at a time and rate limited).
    /// Only the connection task replies, and it drains right after, so no wake-up.
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
        st.bytes = 0;
        st.closed
    }

    /// Asks the connection to close (replaced by a newer one, slow consumer,
    /// shutdown) without telling the client why. Idempotent.
    pub fn close(&self) {
        self.close_as(None);
    }

    /// Asks the connection to close and tells a WebSocket client `reason` in its
    /// close frame. The first reason given wins.
    pub fn close_with(&self, reason: CloseReason) {
        self.close_as(Some(reason));
    }

    fn close_as(&self, reason: Option<CloseReason>) {
        let mut st = lock(&self.outbox);
        // After a write the socket took only partly, the stream is inside a
        // frame: a close frame would corrupt it, so the client just sees the end.
        let torn = matches!(st.queue.front(), Some(Outbound::Unwritten { .. }));
        if !st.closed && !torn {
            st.close_reason = reason;
        }
        st.closed = true;
        st.queue.clear();
        st.pushes = 0;
        st.bytes = 0;
        drop(st);
        self.signal();
    }

    /// What to tell the client on closing.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.outbox).close_reason
    }

    /// Wakes the connection task so it looks at the outbox again.
    pub(crate) fn wake(&self) {
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

    /// Sets when the credentials expire (hub clock, ms; `u64::MAX` = never).
    pub fn set_expiry(&self, at_ms: u64) {
        self.expires_ms.store(at_ms, Ordering::Relaxed);
    }

    /// Closes the connection if its heartbeat deadline or its credentials' expiry
    /// passed; returns which, if any.
    pub(crate) fn expire(&self, now_ms: u64) -> Option<Expired> {
        let credentials = self.expires_ms.load(Ordering::Relaxed) <= now_ms;
        let heartbeat = self.deadline_ms.load(Ordering::Relaxed) <= now_ms;
        // The sweeper asks every connection four times a second and almost none
        // is due: only those take the outbox lock.
        if !(credentials || heartbeat) || self.is_closed() {
            return None;
        }
        if credentials {
            self.close_with(CloseReason::CredentialsExpired);
            return Some(Expired::Credentials);
        }
        if heartbeat {
            self.timed_out.store(true, Ordering::Relaxed);
            self.close();
            return Some(Expired::Heartbeat);
        }
        None
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

/// Why the sweeper closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// No heartbeat within the deadline.
    Heartbeat,
    /// The credentials expired without a refresh.
    Credentials,
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

    const MAX: usize = 1024;

    fn ch() -> Channel {
        Channel::new(
            1,
            "k".into(),
            1,
            IpAddr::from([127, 0, 0, 1]),
            vec![1001, 1000, 1000],
            MAX,
        )
    }

    fn raw(n: usize) -> Outbound {
        Outbound::Raw {
            body: Bytes::from(vec![0u8; n]),
            frames: 1,
        }
    }

    #[test]
    fn accept_filter() {
        let c = ch();
        assert!(c.accepts(1000) && c.accepts(1001) && !c.accepts(5));
        assert_eq!(c.watch(&[6, 5, 5], MAX), Ok(vec![5, 6]));
        assert!(c.accepts(5));
        c.unwatch(&[1000, 6]);
        assert!(!c.accepts(1000) && !c.accepts(6) && c.accepts(1001));
    }

    #[test]
    fn accept_filter_is_bounded_and_follows_the_grant() {
        let c = Channel::new(
            1,
            "k".into(),
            1,
            IpAddr::from([127, 0, 0, 1]),
            vec![9, 8, 7],
            2,
        );
        // The initial list is cut to the bound (smallest ops kept).
        assert_eq!(c.accept_count(), 2);
        assert!(c.accepts(7) && c.accepts(8) && !c.accepts(9));
        assert_eq!(c.watch(&[1, 2], 4), Ok(vec![1, 2]));
        // Ops already present do not count twice; going over the bound is refused
        // whole.
        assert_eq!(c.watch(&[1, 8], 4), Ok(vec![1, 8]));
        assert_eq!(c.watch(&[3], 4), Err(WatchError::TooMany));
        assert!(!c.accepts(3));
        c.unwatch(&[1, 2]);
        assert_eq!(c.watch(&[3], 4), Ok(vec![3]));
        // A grant restricts what op 14 may add.
        c.set_grant(Some(Grant {
            ops: vec![77],
            any_room: true,
            ..Default::default()
        }));
        c.unwatch(&[3]);
        assert_eq!(c.watch(&[77, 78], 4), Ok(vec![77]));
        assert!(c.accepts(77) && !c.accepts(78));
    }

    #[test]
    fn rooms_follow_the_grant() {
        let c = ch();
        assert!(c.may_join("live://1"));
        c.set_grant(Some(Grant {
            rooms: vec!["live://1".into(), "chat://team-*".into()],
            any_op: true,
            ..Default::default()
        }));
        assert!(c.may_join("live://1") && c.may_join("chat://team-7") && c.may_join(""));
        assert!(!c.may_join("live://2") && !c.may_join("chat://other"));
    }

    #[test]
    fn replies_do_not_count_against_push_capacity() {
        let c = ch();
        let two = OutboxLimits::pushes(2);
        for _ in 0..4 {
            c.reply(Outbound::Pong(Bytes::new()));
        }
        assert_eq!(c.offer(Outbound::Pong(Bytes::new()), two), Offer::Queued);
        assert_eq!(c.offer(Outbound::Pong(Bytes::new()), two), Offer::Queued);
        assert_eq!(c.offer(Outbound::Pong(Bytes::new()), two), Offer::Full);
    }

    #[test]
    fn bounded_outbox() {
        let c = ch();
        let two = OutboxLimits::pushes(2);
        let item = || Outbound::Pong(Bytes::new());
        assert_eq!(c.offer(item(), two), Offer::Queued);
        assert_eq!(c.offer(item(), two), Offer::Queued);
        assert_eq!(c.offer(item(), two), Offer::Full);
        let mut q = VecDeque::new();
        assert!(!c.drain(&mut q));
        assert_eq!(q.len(), 2);
        assert_eq!(c.offer(item(), two), Offer::Queued);
        c.close();
        assert_eq!(c.offer(item(), two), Offer::Closed);
        let mut q = VecDeque::new();
        assert!(c.drain(&mut q));
        assert!(q.is_empty());
    }

    #[test]
    fn outbox_is_bounded_in_bytes() {
        let c = ch();
        let limits = OutboxLimits {
            pushes: 100,
            bytes: 1000,
        };
        // One push larger than the bound still goes into an empty queue.
        assert_eq!(c.offer(raw(5000), limits), Offer::Queued);
        assert_eq!(c.offer(raw(1), limits), Offer::Full);
        let mut q = VecDeque::new();
        c.drain(&mut q);
        assert_eq!(c.offer(raw(600), limits), Offer::Queued);
        assert_eq!(c.offer(raw(400), limits), Offer::Queued);
        assert_eq!(c.offer(raw(1), limits), Offer::Full);
    }

    #[test]
    fn close_reason_first_one_wins() {
        let c = ch();
        c.close_with(CloseReason::Restart);
        c.close_with(CloseReason::FrameRate);
        c.close();
        assert_eq!(c.close_reason(), Some(CloseReason::Restart));
        assert_eq!(CloseReason::Restart.code(), 1012);
    }

    #[test]
    fn no_close_frame_inside_a_torn_write() {
        let c = ch();
        c.offer(
            Outbound::Unwritten {
                parts: VecDeque::from([Bytes::from_static(b"rest of a frame")]),
                frames: 1,
            },
            OutboxLimits::pushes(4),
        );
        c.close_with(CloseReason::SlowConsumer);
        assert!(c.is_closed());
        assert_eq!(c.close_reason(), None);
    }

    #[test]
    fn expiry_closes_with_a_reason_before_the_heartbeat() {
        let c = ch();
        c.set_deadline(100);
        c.set_expiry(50);
        assert_eq!(c.expire(49), None);
        assert_eq!(c.expire(60), Some(Expired::Credentials));
        assert_eq!(c.close_reason(), Some(CloseReason::CredentialsExpired));
        assert!(!c.timed_out());
        let d = ch();
        d.set_deadline(100);
        assert_eq!(d.expire(100), Some(Expired::Heartbeat));
        assert!(d.timed_out() && d.close_reason().is_none());
    }
}
