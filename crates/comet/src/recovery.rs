//! Recovery: what a connection that asked for it (`"recover"` in its auth body)
//! receives of its streams — its room, its member, its key — and how gaps are
//! closed from logic's history.
//!
//! Each stream of such a connection is tracked here: its epoch and the last
//! offset delivered. A positioned push (op 24) goes out only if it is the next
//! offset; older ones are repeats and are dropped; a newer one means something is
//! missing (a reconnect, a comet that missed a message, two pushes queued out of
//! order), so the stream is **filled**: live pushes are held, the connection task
//! reads the history after the last offset through logic, delivers it in order,
//! then the held pushes. What history no longer has is reported as `reload`
//! (op 25). A connection's first fill is its recovery.
//!
//! Every delivery to a tracked stream happens under the connection's recovery
//! lock, so the order of op-24 frames is the order of offsets. Connections that
//! did not ask (every goim client) have no recovery state and take the plain path.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use herald_proto::recovery::{
    key_stream, mid_stream, push_positioned, ClientPosition, RecoverRequest, StreamKind,
    StreamState, StreamStates, StreamStatus,
};
use herald_proto::{Frame, Header, Op, HEADER_LEN};
use herald_rpc::{HistoryReply, HistoryReq};

use crate::channel::{Channel, CloseReason, Offer, Outbound};
use crate::hub::{Fanout, Hub};

/// Live pushes held per stream while it is filled; beyond this they are dropped
/// and fetched again from history.
const MAX_HELD: usize = 4096;

/// How long a comet remembers that a kind of stream keeps no history (logic
/// said so) before asking again: a `[history]` change reaches comets within it.
const OFF_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// Most kinds of stream remembered (room types are the client's choice).
const MAX_OFF: usize = 1024;

/// Kinds of stream that logic said keep no history — members, keys, rooms of
/// one type — so a recovering connection's first fill asks logic only about the
/// streams that may keep some.
#[derive(Default)]
pub struct OffStreams {
    until: Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
}

/// The kind a stream's history setting depends on: `mid:`, `key:`, or the room
/// type (`chat://`).
fn class(stream: &str) -> &str {
    match StreamKind::of_stream(stream) {
        StreamKind::Mid => "mid:",
        StreamKind::Key => "key:",
        StreamKind::Room => stream.find("://").map_or(stream, |i| &stream[..i + 3]),
    }
}

impl OffStreams {
    fn map(&self) -> MutexGuard<'_, std::collections::HashMap<String, tokio::time::Instant>> {
        self.until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether logic said lately that streams like `stream` keep no history.
    pub fn is_off(&self, stream: &str) -> bool {
        self.map()
            .get(class(stream))
            .is_some_and(|until| *until > tokio::time::Instant::now())
    }

    /// Remembers that streams like `stream` keep no history.
    pub fn mark_off(&self, stream: &str) {
        let now = tokio::time::Instant::now();
        let mut map = self.map();
        if map.len() >= MAX_OFF {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_OFF {
                return;
            }
        }
        map.insert(class(stream).to_string(), now + OFF_FOR);
    }
}

const KINDS: [StreamKind; 3] = [StreamKind::Room, StreamKind::Mid, StreamKind::Key];

fn index(kind: StreamKind) -> usize {
    match kind {
        StreamKind::Room => 0,
        StreamKind::Mid => 1,
        StreamKind::Key => 2,
    }
}

/// Positioned frames of one stream, wrapped once (op 24) for every recovering
/// connection that gets them.
pub struct Positioned {
    kind: StreamKind,
    epoch: Arc<str>,
    /// The op-24 frames, back to back.
    wrapped: Bytes,
    /// Each frame's offset and where it lies in `wrapped`.
    frames: Vec<(u64, Range<usize>)>,
}

impl Positioned {
    /// Wraps the frames of an OpRaw body, whose offsets are `offsets` (in
    /// order). `None` when they do not match (a malformed batch: sent plain).
    pub fn wrap(kind: StreamKind, epoch: &str, body: &[u8], offsets: &[u64]) -> Option<Positioned> {
        let mut wrapped = BytesMut::with_capacity(body.len() + offsets.len() * 25);
        let mut frames = Vec::with_capacity(offsets.len());
        let mut rest = body;
        for &offset in offsets {
            let h = Header::parse(rest)?;
            let len = usize::try_from(h.pack_len).ok()?;
            if len < HEADER_LEN || len > rest.len() {
                return None;
            }
            let start = wrapped.len();
            push_positioned(&mut wrapped, kind, offset, &rest[..len]);
            frames.push((offset, start..wrapped.len()));
            rest = &rest[len..];
        }
        if !rest.is_empty() {
            return None;
        }
        Some(Positioned {
            kind,
            epoch: Arc::from(epoch),
            wrapped: wrapped.freeze(),
            frames,
        })
    }
}

/// A live push held while its stream is filled.
struct Held {
    epoch: Arc<str>,
    offset: u64,
    /// The op-24 frame.
    frame: Bytes,
    /// Whether the connection accepts its op (room pushes: always).
    accepted: bool,
}

/// Where a fill stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not known yet: the connection's first fill will tell.
    Unknown,
    /// Tracked: pushes go out in offset order.
    Live,
    /// A fill is due or running: live pushes are held.
    Filling,
    /// The stream keeps no history: pushes go out plain.
    Off,
}

struct Tracked {
    kind: StreamKind,
    /// The stream's name (empty: the connection has no stream of this kind).
    name: String,
    /// The position the client stated, for its first fill.
    asked: Option<ClientPosition>,
    epoch: String,
    last: u64,
    phase: Phase,
    held: Vec<Held>,
    /// Held pushes were dropped: fill again after this fill.
    overflowed: bool,
    /// The next op-25 frame reports this stream with this status.
    report: Option<StreamStatus>,
}

impl Tracked {
    fn new(kind: StreamKind, name: String, asked: Option<ClientPosition>) -> Tracked {
        let phase = if name.is_empty() {
            Phase::Off
        } else {
            Phase::Unknown
        };
        Tracked {
            kind,
            name,
            asked,
            epoch: String::new(),
            last: 0,
            phase,
            held: Vec::new(),
            overflowed: false,
            report: None,
        }
    }

    fn hold(&mut self, h: Held) {
        if self.held.len() < MAX_HELD {
            self.held.push(h);
        } else {
            self.overflowed = true;
        }
    }
}

struct State {
    streams: [Tracked; 3],
    /// The first fill has not run: every stream is reported when it has.
    initial: bool,
}

/// The recovery state of one connection.
pub struct Recovery {
    state: Mutex<State>,
}

/// What to write for one offer or fill, built under the recovery lock.
#[derive(Default)]
struct Out {
    /// Frames to write, in order (op 24 and op 25).
    parts: Vec<Bytes>,
    frames: u32,
}

impl Out {
    fn push(&mut self, b: Bytes) {
        self.parts.push(b);
        self.frames += 1;
    }

    /// Offers what was collected as one item. A recovering connection that
    /// cannot take it is closed whatever the slow-consumer policy: dropping
    /// would leave a gap the client cannot see, and it recovers on reconnect.
    fn send(self, hub: &Hub, ch: &Channel, out: &mut Fanout) {
        if self.parts.is_empty() {
            return;
        }
        let body = if self.parts.len() == 1 {
            self.parts.into_iter().next().unwrap_or_default()
        } else {
            let mut b = BytesMut::with_capacity(self.parts.iter().map(Bytes::len).sum());
            for p in &self.parts {
                b.extend_from_slice(p);
            }
            b.freeze()
        };
        let item = Outbound::Raw {
            body,
            frames: self.frames,
        };
        match ch.offer(item, hub.outbox_limits()) {
            Offer::Queued => out.queued += 1,
            Offer::Written(n) => {
                out.queued += 1;
                out.written += 1;
                out.frames += n;
            }
            Offer::Closed => {}
            Offer::Full => {
                out.full += 1;
                hub.metrics.slow_consumers.increment(1);
                hub.metrics.dropped.increment(self.frames as u64);
                hub.metrics.slow_disconnects.increment(1);
                ch.close_with(CloseReason::SlowConsumer);
            }
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a push at `offset` in `epoch` goes out now, is a repeat, or shows a
/// gap (or a new epoch: reported as `reload`, then taken as the next).
fn admit(t: &mut Tracked, epoch: &str, offset: u64) -> Admit {
    if epoch != t.epoch {
        // The history was lost while the client was connected: what it missed
        // is gone; carry on in the new epoch.
        t.epoch = epoch.to_string();
        t.last = offset.saturating_sub(1);
        t.report = Some(StreamStatus::Reload);
    }
    if offset <= t.last {
        Admit::Repeat
    } else if offset == t.last + 1 {
        t.last = offset;
        Admit::Next
    } else {
        Admit::Gap
    }
}

enum Admit {
    Next,
    Repeat,
    Gap,
}

impl Recovery {
    /// The state of a connection in `room` (may be empty) as member `mid` with
    /// `key`, that asked for recovery with `req`. Every stream starts unknown:
    /// the first fill (the connection task's, right after registration) decides.
    pub fn new(room: &str, mid: i64, key: &str, req: &RecoverRequest) -> Recovery {
        let named = |kind: StreamKind, name: String| {
            let asked = req.positions.get(&name).cloned();
            Tracked::new(kind, name, asked)
        };
        let room = if room.is_empty() {
            String::new()
        } else {
            room.to_string()
        };
        let mid = if mid != 0 {
            mid_stream(mid)
        } else {
            String::new()
        };
        Recovery {
            state: Mutex::new(State {
                streams: [
                    named(StreamKind::Room, room),
                    named(StreamKind::Mid, mid),
                    named(StreamKind::Key, key_stream(key)),
                ],
                initial: true,
            }),
        }
    }

    /// Offers positioned frames of `stream` to `ch`. Returns false when the
    /// connection does not track that stream (it then gets the plain frames).
    pub(crate) fn offer(
        &self,
        hub: &Hub,
        ch: &Channel,
        stream: &str,
        batch: &Positioned,
        accepted: bool,
        out: &mut Fanout,
    ) -> bool {
        let mut st = lock(&self.state);
        let t = &mut st.streams[index(batch.kind)];
        if t.name != stream || t.phase == Phase::Off {
            return false;
        }
        let mut send = Out::default();
        if matches!(t.phase, Phase::Unknown | Phase::Filling) {
            for (offset, range) in &batch.frames {
                t.hold(Held {
                    epoch: batch.epoch.clone(),
                    offset: *offset,
                    frame: batch.wrapped.slice(range.clone()),
                    accepted,
                });
            }
            return true;
        }
        let mut taken: Vec<Range<usize>> = Vec::new();
        let mut gap_at = None;
        for (i, (offset, range)) in batch.frames.iter().enumerate() {
            match admit(t, &batch.epoch, *offset) {
                Admit::Next if accepted => taken.push(range.clone()),
                Admit::Next => {}
                Admit::Repeat => hub.metrics.repeats.increment(1),
                Admit::Gap => {
                    gap_at = Some(i);
                    break;
                }
            }
        }
        if let Some(report) = t.report.take() {
            send.push(states_frame(&[t.state(report)]));
        }
        // The common case: everything, one shared buffer.
        if taken.len() == batch.frames.len() && send.parts.is_empty() {
            send.parts.push(batch.wrapped.clone());
            send.frames = taken.len() as u32;
        } else {
            for r in taken {
                send.push(batch.wrapped.slice(r));
            }
        }
        if let Some(i) = gap_at {
            t.phase = Phase::Filling;
            for (offset, range) in &batch.frames[i..] {
                t.hold(Held {
                    epoch: batch.epoch.clone(),
                    offset: *offset,
                    frame: batch.wrapped.slice(range.clone()),
                    accepted,
                });
            }
            ch.wake();
        }
        send.send(hub, ch, out);
        true
    }

    /// Tracks `room` as the connection's room stream from now on (after a room
    /// change); its position is learnt by a fill, reported as `fresh`.
    pub(crate) fn change_room(&self, ch: &Channel, room: &str) {
        let mut st = lock(&self.state);
        if st.streams[0].name == room {
            // Not a change (op 12 naming the room it is in): its position
            // stays, and with it what is on its way.
            return;
        }
        // Unknown until filled: pushes held, then reported `fresh`.
        st.streams[0] = Tracked::new(StreamKind::Room, room.to_string(), None);
        if !room.is_empty() {
            drop(st);
            ch.wake();
        }
    }

    /// Streams waiting for a fill: (kind, name, epoch, since).
    fn due(&self) -> Vec<(StreamKind, HistoryReq)> {
        let st = lock(&self.state);
        KINDS
            .iter()
            .zip(&st.streams)
            .filter(|(_, t)| matches!(t.phase, Phase::Unknown | Phase::Filling))
            .map(|(kind, t)| {
                let (epoch, since) = match (t.phase, &t.asked) {
                    (Phase::Unknown, Some(a)) => (a.epoch.clone(), a.offset),
                    (Phase::Unknown, None) => (String::new(), 0),
                    _ => (t.epoch.clone(), t.last),
                };
                (
                    *kind,
                    HistoryReq {
                        stream: t.name.clone(),
                        epoch,
                        since,
                        limit: 0,
                    },
                )
            })
            .collect()
    }

    /// Whether a fill is due (checked by the connection task when woken).
    pub(crate) fn fill_due(&self) -> bool {
        lock(&self.state)
            .streams
            .iter()
            .any(|t| matches!(t.phase, Phase::Unknown | Phase::Filling))
    }

    /// Runs the fills that are due: reads each stream's history through
    /// `history` and delivers it, then what was held. Called by the connection
    /// task (which owns the connection) when [`Recovery::fill_due`].
    pub(crate) async fn fill<F, Fut>(&self, hub: &Hub, ch: &Channel, history: F)
    where
        F: Fn(HistoryReq) -> Fut,
        Fut: std::future::Future<Output = Option<HistoryReply>>,
    {
        let mut fanout = Fanout::default();
        // Everything a fill delivers goes out as one item, at the end: the
        // connection task is not writing meanwhile, so a replay offered on its
        // own would make what follows (op 25, the held pushes) find the outbox
        // over its byte bound and close a client that had no chance to read.
        // The streams replayed stay `Filling` until then: nothing of theirs can
        // go out in between.
        let mut all = Out::default();
        for (kind, req) in self.due() {
            let name = req.stream.clone();
            hub.metrics.fills.increment(1);
            let reply = history(req).await;
            let mut st = lock(&self.state);
            let t = &mut st.streams[index(kind)];
            if t.name != name {
                // The room changed meanwhile: that fill is due again.
                continue;
            }
            let mut send = Out::default();
            apply(t, reply, ch, &mut send);
            hub.metrics.replayed.increment(send.frames as u64);
            if let Some(status) = t.report {
                hub.metrics.count_status(status);
            }
            let initial = st.initial;
            let t = &mut st.streams[index(kind)];
            if !initial {
                if let Some(report) = t.report.take() {
                    send.parts.insert(0, states_frame(&[t.state(report)]));
                    send.frames += 1;
                }
            }
            all.frames += send.frames;
            all.parts.append(&mut send.parts);
        }
        let mut st = lock(&self.state);
        if st.initial && st.streams.iter().all(|t| t.phase != Phase::Unknown) {
            st.initial = false;
            let states: Vec<StreamState> = st
                .streams
                .iter_mut()
                .filter(|t| !t.name.is_empty())
                .map(|t| {
                    let status = t.report.take().unwrap_or(StreamStatus::Off);
                    t.state(status)
                })
                .collect();
            // After the replays, the states, then what was held.
            all.push(states_frame(&states));
            for t in st.streams.iter_mut() {
                release(t, ch, &mut all);
            }
        } else if !st.initial {
            for t in st.streams.iter_mut() {
                release(t, ch, &mut all);
            }
        }
        all.send(hub, ch, &mut fanout);
        drop(st);
        hub.account(&fanout);
    }
}

impl Tracked {
    fn state(&self, status: StreamStatus) -> StreamState {
        StreamState {
            kind: self.kind,
            stream: self.name.clone(),
            epoch: self.epoch.clone(),
            offset: self.last,
            status,
        }
    }
}

/// Applies a history reply to a stream being filled: replays what it missed
/// (into `send`), or marks it `reload` / `off`. The stream stays `Filling` until
/// [`release`] delivers what was held.
fn apply(t: &mut Tracked, reply: Option<HistoryReply>, ch: &Channel, send: &mut Out) {
    let first = t.phase == Phase::Unknown;
    let Some(reply) = reply else {
        // History could not be read: the client must reload; carry on from the
        // newest held push.
        t.report = Some(StreamStatus::Reload);
        if let Some(h) = t.held.iter().min_by_key(|h| h.offset) {
            t.epoch = h.epoch.to_string();
            t.last = h.offset.saturating_sub(1);
        }
        t.phase = Phase::Filling;
        return;
    };
    if !reply.enabled {
        t.phase = Phase::Off;
        t.epoch.clear();
        t.last = 0;
        t.report = Some(StreamStatus::Off);
        return;
    }
    let asked_nothing = first && t.asked.as_ref().is_none_or(|a| a.epoch.is_empty());
    let status = if asked_nothing {
        StreamStatus::Fresh
    } else if reply.complete {
        StreamStatus::Recovered
    } else {
        StreamStatus::Reload
    };
    if status == StreamStatus::Recovered {
        if first {
            t.last = t.asked.as_ref().map_or(0, |a| a.offset);
        }
        for e in &reply.entries {
            if e.offset <= t.last {
                continue;
            }
            let op = Header::parse(&e.frame).map_or(0, |h| h.op);
            if t.kind == StreamKind::Room || ch.accepts(op) {
                let mut b = BytesMut::with_capacity(e.frame.len() + 25);
                push_positioned(&mut b, t.kind, e.offset, &e.frame);
                send.push(b.freeze());
            }
        }
        // Everything up to the top was replayed (retracted pushes are not
        // missing); a client that claimed more than the top starts at the top.
        t.last = if first {
            reply.top
        } else {
            t.last.max(reply.top)
        };
    } else {
        // Nothing replayed: carry on from the top.
        t.last = reply.top;
    }
    t.epoch = reply.epoch;
    if first || status != StreamStatus::Recovered {
        t.report = Some(status);
    }
    t.phase = Phase::Filling;
}

/// Delivers what a filled stream held, in order, and makes it live again (or
/// due for another fill when a gap remains or pushes were dropped).
fn release(t: &mut Tracked, ch: &Channel, send: &mut Out) {
    if t.phase != Phase::Filling {
        if t.phase == Phase::Off {
            // Held before the stream turned out to keep no history: no
            // position to give them; they were recorded, so send them plain.
            for h in t.held.drain(..) {
                if h.accepted {
                    if let Some(p) =
                        herald_proto::recovery::parse_positioned(&h.frame[HEADER_LEN..])
                    {
                        send.push(Bytes::copy_from_slice(p.frame));
                    }
                }
            }
        }
        return;
    }
    let mut held = std::mem::take(&mut t.held);
    held.sort_by_key(|h| h.offset);
    t.phase = Phase::Live;
    for (i, h) in held.iter().enumerate() {
        match admit(t, &h.epoch, h.offset) {
            Admit::Next => {
                if let Some(report) = t.report.take() {
                    send.push(states_frame(&[t.state(report)]));
                }
                if h.accepted {
                    send.push(h.frame.clone());
                }
            }
            Admit::Repeat => {}
            Admit::Gap => {
                t.phase = Phase::Filling;
                t.held = held.split_off(i);
                ch.wake();
                return;
            }
        }
    }
    if std::mem::take(&mut t.overflowed) {
        t.phase = Phase::Filling;
        ch.wake();
    }
}

/// An op-25 frame.
fn states_frame(states: &[StreamState]) -> Bytes {
    Frame::push(
        Op::STREAMS,
        StreamStates {
            streams: states.to_vec(),
        }
        .to_body(),
    )
    .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::OutboxLimits;
    use crate::config::SlowConsumerPolicy;
    use crate::metrics::CometMetrics;
    use herald_proto::raw;
    use herald_rpc::HistoryEntry;
    use std::collections::VecDeque;
    use std::net::IpAddr;

    fn hub() -> Hub {
        Hub::new(
            4,
            SlowConsumerPolicy::Drop,
            OutboxLimits::pushes(64),
            CometMetrics::new(),
        )
    }

    /// A connection in `chat://1` as member 5, accepting op 1000, that asked
    /// for recovery with `positions`.
    fn recovering(h: &Hub, positions: &[(&str, &str, u64)]) -> Arc<Channel> {
        let mut req = RecoverRequest::default();
        for (s, e, o) in positions {
            req.positions.insert(
                s.to_string(),
                ClientPosition {
                    epoch: e.to_string(),
                    offset: *o,
                },
            );
        }
        let ch = Channel::new(
            h.next_id(),
            "k".into(),
            5,
            IpAddr::from([10, 0, 0, 1]),
            vec![1000],
            16,
        )
        .with_recovery(Recovery::new("chat://1", 5, "k", &req));
        let ch = Arc::new(ch);
        h.register(&ch, "chat://1");
        ch
    }

    /// What the client would read: (op, offset, body) per frame; op 25 as
    /// (25, 0, its JSON).
    fn written(ch: &Channel) -> Vec<(i32, u64, String)> {
        let mut q = VecDeque::new();
        ch.drain(&mut q);
        let mut out = Vec::new();
        for item in q {
            let Outbound::Raw { body, .. } = item else {
                continue;
            };
            for f in raw::unpack(&body).unwrap() {
                if f.op == Op::POSITIONED {
                    let p = herald_proto::recovery::parse_positioned(&f.body).unwrap();
                    let inner = raw::unpack(p.frame).unwrap().remove(0);
                    out.push((
                        inner.op,
                        p.offset,
                        String::from_utf8_lossy(&inner.body).into(),
                    ));
                } else {
                    out.push((f.op, 0, String::from_utf8_lossy(&f.body).into()));
                }
            }
        }
        out
    }

    fn batch(offsets: &[u64]) -> Bytes {
        let mut b = raw::RawBatch::default();
        for o in offsets {
            b.push(1000, format!("m{o}").as_bytes());
        }
        b.finish()
    }

    fn history(epoch: &str, top: u64, entries: &[u64], complete: bool) -> HistoryReply {
        HistoryReply {
            enabled: true,
            epoch: epoch.into(),
            top,
            entries: entries
                .iter()
                .map(|o| HistoryEntry {
                    offset: *o,
                    frame: raw::single(1000, format!("m{o}").as_bytes()),
                })
                .collect(),
            complete,
        }
    }

    async fn fill(h: &Hub, ch: &Channel, reply: HistoryReply) {
        let rec = ch.recovery().unwrap();
        assert!(rec.fill_due());
        rec.fill(h, ch, |req| {
            let reply = reply.clone();
            async move {
                // Only this stream answers; the others keep no history.
                if req.stream == "chat://1" {
                    Some(reply)
                } else {
                    Some(HistoryReply::default())
                }
            }
        })
        .await;
    }

    async fn room(h: &Hub, epoch: &str, offsets: &[u64]) {
        h.broadcast_room_part("chat://1", batch(offsets), Some((epoch, offsets)), 0, 1)
            .await;
    }

    #[tokio::test]
    async fn replays_then_states_then_held_pushes_without_repeats() {
        let h = hub();
        let ch = recovering(&h, &[("chat://1", "e", 2)]);
        // Live pushes before the first fill are held.
        room(&h, "e", &[4, 5]).await;
        assert!(written(&ch).is_empty());
        fill(&h, &ch, history("e", 4, &[3, 4], true)).await;
        let got = written(&ch);
        let offsets: Vec<u64> = got.iter().map(|g| g.1).collect();
        assert_eq!(offsets, vec![3, 4, 0, 5], "{got:?}");
        assert_eq!(got[2].0, Op::STREAMS);
        assert!(got[2].2.contains(r#""status":"recovered""#));
        // Repeats are dropped; the next goes out.
        room(&h, "e", &[4, 5, 6]).await;
        assert_eq!(written(&ch), vec![(1000, 6, "m6".into())]);
    }

    #[tokio::test]
    async fn a_gap_is_filled_from_history_in_order() {
        let h = hub();
        let ch = recovering(&h, &[]);
        fill(&h, &ch, history("e", 2, &[1, 2], true)).await;
        assert!(written(&ch)[0].2.contains(r#""status":"fresh""#));
        // 4 arrives before 3 (two pushes queued out of order): held, filled.
        room(&h, "e", &[4]).await;
        assert!(written(&ch).is_empty());
        fill(&h, &ch, history("e", 4, &[3, 4], true)).await;
        assert_eq!(
            written(&ch),
            vec![(1000, 3, "m3".into()), (1000, 4, "m4".into())]
        );
        // 3 arrives late: a repeat.
        room(&h, "e", &[3]).await;
        assert!(written(&ch).is_empty());
        // A gap history no longer covers: reload, and carry on.
        room(&h, "e", &[9]).await;
        fill(&h, &ch, history("e", 9, &[8, 9], false)).await;
        let got = written(&ch);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].2.contains(r#""status":"reload""#));
        assert!(got[0].2.contains(r#""offset":9"#));
        room(&h, "e", &[10]).await;
        assert_eq!(written(&ch), vec![(1000, 10, "m10".into())]);
    }

    #[tokio::test]
    async fn a_new_epoch_is_reported_before_its_pushes() {
        let h = hub();
        let ch = recovering(&h, &[]);
        fill(&h, &ch, history("e1", 7, &[], true)).await;
        written(&ch);
        room(&h, "e2", &[1]).await;
        let got = written(&ch);
        assert_eq!(got.len(), 2);
        assert!(got[0].2.contains(r#""epoch":"e2""#) && got[0].2.contains("reload"));
        assert_eq!(got[1], (1000, 1, "m1".into()));
    }

    #[tokio::test]
    async fn mid_pushes_honour_the_accept_filter_without_a_gap() {
        let h = hub();
        let ch = recovering(&h, &[]);
        ch.recovery()
            .unwrap()
            .fill(&h, &ch, |req| async move {
                Some(if req.stream == "mid:5" {
                    history("m", 0, &[], true)
                } else {
                    HistoryReply::default()
                })
            })
            .await;
        written(&ch);
        let at = |offset| Position {
            stream: "mid:5".into(),
            epoch: "m".into(),
            offset,
        };
        h.push_keys(&["k".into()], 1001, raw::single(1001, b"no"), Some(&at(1)));
        h.push_keys(&["k".into()], 1000, raw::single(1000, b"yes"), Some(&at(2)));
        assert_eq!(written(&ch), vec![(1000, 2, "yes".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn kinds_without_history_are_remembered_for_a_while() {
        let off = OffStreams::default();
        off.mark_off("key:abc");
        off.mark_off("live://1");
        assert!(off.is_off("key:other"));
        assert!(off.is_off("live://2"));
        assert!(!off.is_off("chat://1"));
        assert!(!off.is_off("mid:1"));
        tokio::time::advance(OFF_FOR).await;
        assert!(!off.is_off("key:other"));
    }

    #[tokio::test]
    async fn goim_connections_get_plain_frames() {
        let h = hub();
        let plain = Arc::new(Channel::new(
            h.next_id(),
            "g".into(),
            1,
            IpAddr::from([10, 0, 0, 2]),
            vec![],
            16,
        ));
        h.register(&plain, "chat://1");
        let body = batch(&[1, 2]);
        h.broadcast_room_part("chat://1", body.clone(), Some(("e", &[1, 2])), 0, 1)
            .await;
        let mut q = VecDeque::new();
        plain.drain(&mut q);
        match q.pop_front() {
            Some(Outbound::Raw { body: b, frames }) => {
                assert_eq!((b, frames), (body, 2));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Op 12 naming the room the connection is already in changes nothing in
    /// the hub; it must not lose the room's position either. Pushes 3 and 4
    /// are in history and on their way when the client sends it: it must get
    /// them (or be told to reload), never a `fresh` past them.
    #[tokio::test]
    async fn rejoining_the_current_room_leaves_no_silent_gap() {
        let h = hub();
        let ch = recovering(&h, &[]);
        fill(&h, &ch, history("e", 2, &[1, 2], true)).await;
        written(&ch);
        // What dispatch does for op 12: recovery first, then the hub.
        let rec = ch.recovery().unwrap();
        rec.change_room(&ch, "chat://1");
        h.change_room(&ch, "chat://1");
        if rec.fill_due() {
            // A fresh read (no position asked): the top only.
            fill(&h, &ch, history("e", 4, &[], false)).await;
        }
        room(&h, "e", &[3, 4]).await;
        let got = written(&ch);
        let offsets: Vec<u64> = got.iter().filter(|g| g.0 == 1000).map(|g| g.1).collect();
        let reload = got.iter().any(|g| g.2.contains(r#""status":"reload""#));
        assert!(offsets == vec![3, 4] || reload, "{got:?}");
    }

    /// A replay larger than the outbound byte bound is queued whole by the
    /// fill (the connection task is not writing meanwhile); the op-25 frame
    /// that follows in the same fill must not find the client "slow" and
    /// close it: it has had no chance to read yet.
    #[tokio::test]
    async fn a_large_replay_does_not_disconnect_a_client_that_could_not_read_yet() {
        let limits = OutboxLimits {
            pushes: 64,
            bytes: 64 * 1024,
        };
        let h = Hub::new(4, SlowConsumerPolicy::Drop, limits, CometMetrics::new());
        let ch = recovering(&h, &[("chat://1", "e", 0)]);
        let big = "x".repeat(1024);
        let reply = HistoryReply {
            enabled: true,
            epoch: "e".into(),
            top: 100,
            entries: (1..=100)
                .map(|o| HistoryEntry {
                    offset: o,
                    frame: raw::single(1000, big.as_bytes()),
                })
                .collect(),
            complete: true,
        };
        fill(&h, &ch, reply).await;
        assert!(
            !ch.is_closed(),
            "closed as a slow consumer by its own replay"
        );
        let got = written(&ch);
        assert_eq!(got.len(), 101);
        assert!(got[100].2.contains(r#""status":"recovered""#));
    }

    use herald_rpc::Position;
}
