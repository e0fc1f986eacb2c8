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

use crate::support::Client;

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
