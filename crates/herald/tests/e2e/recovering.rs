//! A client that asks for recovery, written from docs/protocol.md: it keeps its
//! last position per stream, unwraps positioned pushes (op 24) and reads stream
//! states (op 25), and sends its positions when it reconnects.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use herald_proto::recovery::{
    parse_positioned, StreamKind, StreamState, StreamStates, StreamStatus,
};
use herald_proto::{Frame, Op};
use serde_json::json;

use crate::support::{post, Client};

/// The business op the tests push with.
pub const OP: i32 = 1000;

/// What a recovering client keeps: its last position per stream.
#[derive(Default, Clone, Debug)]
pub struct Positions(pub BTreeMap<String, (String, u64)>);

impl Positions {
    pub fn recover(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (stream, (epoch, offset)) in &self.0 {
            m.insert(stream.clone(), json!({"epoch": epoch, "offset": offset}));
        }
        serde_json::Value::Object(m)
    }
}

/// A message as the application sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A push: stream kind and offset (when positioned), op and body.
    Push(Option<(StreamKind, u64)>, i32, String),
    /// An op-25 frame.
    States(Vec<StreamState>),
}

pub struct Recovering {
    pub c: Client,
    pub positions: Positions,
    /// Stream name per kind, from op 25.
    names: BTreeMap<u8, String>,
}

impl Recovering {
    pub async fn connect(
        addr: SocketAddr,
        ws: bool,
        mid: i64,
        key: &str,
        room: &str,
        positions: Positions,
    ) -> Recovering {
        let body = json!({"mid": mid, "key": key, "room_id": room, "accepts": [OP],
            "recover": positions.recover()});
        Recovering::connect_body(addr, ws, body, (mid, key, room), positions).await
    }

    /// Authenticates with `body` as the connection `(mid, key, room)`.
    pub async fn connect_body(
        addr: SocketAddr,
        ws: bool,
        body: serde_json::Value,
        (mid, key, room): (i64, &str, &str),
        positions: Positions,
    ) -> Recovering {
        let mut c = if ws {
            Client::ws(addr).await
        } else {
            Client::tcp(addr).await
        };
        let seq = c.send(Op::AUTH, body.to_string().as_bytes()).await;
        let f = c.recv().await.expect("auth reply");
        assert_eq!((f.op, f.seq), (Op::AUTH_REPLY, seq));
        // An op-24 frame belongs to the connection's stream of its kind.
        let mut names = BTreeMap::new();
        names.insert(StreamKind::Room as u8, room.to_string());
        names.insert(StreamKind::Mid as u8, format!("mid:{mid}"));
        names.insert(StreamKind::Key as u8, format!("key:{key}"));
        Recovering {
            c,
            positions,
            names,
        }
    }

    /// The next push or state, updating the positions as a client must.
    pub async fn next(&mut self) -> Seen {
        self.try_next().await.expect("a frame")
    }

    /// Like `next`; `None` when the connection ended.
    pub async fn try_next(&mut self) -> Option<Seen> {
        loop {
            let f = self.c.recv().await?;
            match f.op {
                Op::HEARTBEAT_REPLY => continue,
                Op::POSITIONED => {
                    let p = parse_positioned(&f.body).expect("a valid op-24 body");
                    let inner: Frame = herald_proto::decode_exact(p.frame, 1 << 20).unwrap();
                    let name = self
                        .names
                        .get(&(p.kind as u8))
                        .cloned()
                        .expect("a stream of this connection");
                    let e = self.positions.0.get_mut(&name).expect("tracked stream");
                    e.1 = p.offset;
                    return Some(Seen::Push(
                        Some((p.kind, p.offset)),
                        inner.op,
                        String::from_utf8_lossy(&inner.body).into(),
                    ));
                }
                Op::STREAMS => {
                    let s = StreamStates::parse(&f.body).expect("valid op-25 JSON");
                    for st in &s.streams {
                        self.names.insert(st.kind as u8, st.stream.clone());
                        if st.status != StreamStatus::Off {
                            self.positions
                                .0
                                .insert(st.stream.clone(), (st.epoch.clone(), st.offset));
                        }
                    }
                    return Some(Seen::States(s.streams));
                }
                op => {
                    return Some(Seen::Push(
                        None,
                        op,
                        String::from_utf8_lossy(&f.body).into(),
                    ))
                }
            }
        }
    }

    pub async fn states(&mut self) -> Vec<StreamState> {
        match self.next().await {
            Seen::States(s) => s,
            other => panic!("expected op 25, got {other:?}"),
        }
    }
}

pub fn status_of(states: &[StreamState], stream: &str) -> StreamStatus {
    states
        .iter()
        .find(|s| s.stream == stream)
        .unwrap_or_else(|| panic!("{stream} in {states:?}"))
        .status
}

pub async fn push_room(h: SocketAddr, room: &str, body: &str) {
    let r = post(
        h,
        &format!("/goim/push/room?operation={OP}&type=chat&room={room}"),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.json()["code"], 0, "{}", r.text());
}

pub async fn push_mid(h: SocketAddr, mid: i64, body: &str) {
    let r = post(
        h,
        &format!("/goim/push/mids?operation={OP}&mids={mid}"),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.json()["code"], 0, "{}", r.text());
}

/// A client drops its connection; 100 room pushes and 100 mid pushes happen;
/// it reconnects and receives all 200, each stream in order, then the states,
/// then live pushes.
pub async fn drop_and_recover(addr: SocketAddr, h: SocketAddr, ws: bool) {
    // Streams of their own for each transport, so both can run on one server.
    let (id, mid) = if ws { ("ws", 43) } else { ("tcp", 42) };
    let room = format!("chat://{id}");
    let (mid_stream, key) = (format!("mid:{mid}"), format!("dev-{id}"));
    let mut c = Recovering::connect(addr, ws, mid, &key, &room, Positions::default()).await;
    let first = c.states().await;
    assert_eq!(status_of(&first, &room), StreamStatus::Fresh);
    assert_eq!(status_of(&first, &mid_stream), StreamStatus::Fresh);
    assert_eq!(status_of(&first, &format!("key:{key}")), StreamStatus::Off);
    push_room(h, id, "before").await;
    assert_eq!(
        c.next().await,
        Seen::Push(Some((StreamKind::Room, 1)), OP, "before".into())
    );
    let kept = c.positions.clone();
    drop(c);

    for i in 0..100 {
        push_room(h, id, &format!("r{i}")).await;
        push_mid(h, mid, &format!("m{i}")).await;
    }
    let mut c = Recovering::connect(addr, ws, mid, &key, &room, kept).await;
    let (mut rooms, mut mids) = (Vec::new(), Vec::new());
    let states = loop {
        match c.next().await {
            Seen::Push(Some((StreamKind::Room, off)), OP, body) => rooms.push((off, body)),
            Seen::Push(Some((StreamKind::Mid, off)), OP, body) => mids.push((off, body)),
            Seen::States(s) => break s,
            other => panic!("unexpected during replay: {other:?}"),
        }
    };
    assert_eq!(status_of(&states, &room), StreamStatus::Recovered);
    assert_eq!(status_of(&states, &mid_stream), StreamStatus::Recovered);
    let want_rooms: Vec<_> = (0..100).map(|i| (i as u64 + 2, format!("r{i}"))).collect();
    let want_mids: Vec<_> = (0..100).map(|i| (i as u64 + 1, format!("m{i}"))).collect();
    assert_eq!(rooms, want_rooms);
    assert_eq!(mids, want_mids);

    // Then live pushes, positioned, continuing the offsets. (Each stream is
    // delivered in order; a member's push may overtake a room's, which job
    // batches per room before sending it on.)
    push_room(h, id, "live").await;
    push_mid(h, mid, "live-mid").await;
    let mut live = vec![c.next().await, c.next().await];
    live.sort_by_key(|s| format!("{s:?}"));
    let mut want = vec![
        Seen::Push(Some((StreamKind::Room, 102)), OP, "live".into()),
        Seen::Push(Some((StreamKind::Mid, 101)), OP, "live-mid".into()),
    ];
    want.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(live, want);
}
