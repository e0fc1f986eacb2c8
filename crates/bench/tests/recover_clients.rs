//! The load generator's recovering clients against a small stand-in for herald's
//! recovery (docs/protocol.md, "Recovery"): they learn their room position from
//! op 25, leave when paused, come back at once when resumed with that position,
//! and count the replayed op-24 pushes (checking their order) and the op-25
//! `recovered` that ends each reconnect.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use herald_bench::clients::{self, ClientArgs, Dialer, Stats, Target};
use herald_bench::wire;
use herald_proto::recovery::{push_positioned, StreamKind};
use herald_proto::{ws, Frame, Header, Op, HEADER_LEN};
use support::until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROOM: &str = "bench://1";
const EPOCH: &str = "e1";

/// Reads until `buf` holds one complete client message: a goim frame on TCP, a
/// WebSocket message (unmasked) around one on WebSocket. Returns the goim frame.
async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>, websocket: bool) -> Option<Frame> {
    loop {
        if websocket {
            let mut dec = ws::Decoder::server(1 << 20);
            if let Ok(Some((Some(ws::Message::Data(m)), used))) = dec.decode(buf) {
                buf.drain(..used);
                return herald_proto::decode_exact(&m, 1 << 20).ok();
            }
        } else if let Some(h) = Header::parse(buf) {
            let len = h.pack_len as usize;
            if buf.len() >= len {
                let f = herald_proto::decode_exact(&buf[..len], 1 << 20).ok();
                buf.drain(..len);
                return f;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One connection: the auth reply and, in the same write, the replays after the
/// client's position (op 24) and the room's state (op 25); then it idles.
async fn serve(mut s: TcpStream, top: Arc<AtomicU64>, websocket: bool) {
    let mut buf = Vec::new();
    if websocket {
        while wire::http_head_len(&buf).is_none() {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..wire::http_head_len(&buf).unwrap());
        s.write_all(ws::switching_protocols("x").as_bytes())
            .await
            .unwrap();
    }
    let Some(auth) = read_frame(&mut s, &mut buf, websocket).await else {
        return;
    };
    assert_eq!(auth.op, Op::AUTH);
    let body: serde_json::Value = serde_json::from_slice(&auth.body).unwrap();
    let recover = &body["recover"];
    assert!(
        recover.is_object(),
        "a recovering client sends recover: {body}"
    );
    let top = top.load(Ordering::SeqCst);
    let reply = Frame::new(1, Op::AUTH_REPLY, auth.seq, Vec::new()).to_bytes();
    let mut out = BytesMut::new();
    let status = match recover.get(ROOM) {
        Some(p) => {
            assert_eq!(p["epoch"], EPOCH);
            for offset in p["offset"].as_u64().unwrap() + 1..=top {
                let push = Frame::push(1000, wire::payload(offset).into_bytes()).to_bytes();
                push_positioned(&mut out, StreamKind::Room, offset, &push);
            }
            "recovered"
        }
        None => "fresh",
    };
    let states = serde_json::json!({"streams": [
        {"kind": "room", "stream": ROOM, "epoch": EPOCH, "offset": top, "status": status},
        {"kind": "key", "stream": "key:x", "epoch": "", "offset": 0, "status": "off"}]});
    out.extend_from_slice(
        &Frame::push(Op::STREAMS, serde_json::to_vec(&states).unwrap()).to_bytes(),
    );
    // The reply and what follows in one write; on WebSocket in one message too,
    // the rest in an op-9 envelope.
    let out = if websocket {
        let mut msg = reply.to_vec();
        msg.extend_from_slice(&Frame::push(Op::RAW, out.freeze()).to_bytes());
        wire::server_ws_message(&msg)
    } else {
        let mut all = reply.to_vec();
        all.extend_from_slice(&out);
        all
    };
    s.write_all(&out).await.unwrap();
    while read_frame(&mut s, &mut buf, websocket).await.is_some() {}
}

async fn stand_in(top: Arc<AtomicU64>, websocket: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let l = tokio::net::TcpListener::from_std(l).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, top.clone(), websocket));
        }
    });
    addr
}

async fn leave_miss_and_recover(target: Target) {
    let top = Arc::new(AtomicU64::new(4));
    let addr = stand_in(top.clone(), target == Target::HeraldWs).await;
    let args = ClientArgs {
        room: ROOM.into(),
        subject: String::new(),
        sources: 2,
        concurrency: 0,
        procs: 1,
        recover: true,
        ..ClientArgs::new(target, vec![addr], 6)
    };
    let dialer = Dialer::new(&args).unwrap();
    let stats = Arc::new(Stats::default());
    let run = tokio::spawn(clients::run(Arc::new(args), dialer, stats.clone()));
    until("6 clients with a position", || {
        stats.snapshot(false).tracking == 6
    })
    .await;

    stats.pause();
    until("every client gone", || stats.snapshot(false).connected == 0).await;
    // They miss offsets 5 to 14.
    top.store(14, Ordering::SeqCst);
    stats.reset();
    stats.resume(wire::now_ns());
    until("every client back", || stats.snapshot(false).back() == 6).await;
    let s = stats.snapshot(true);
    assert_eq!((s.received, s.positioned), (60, 60), "10 replays each");
    assert_eq!((s.duplicated, s.out_of_order), (0, 0));
    assert_eq!((s.recovered, s.reloaded, s.other_status), (6, 0, 0));
    assert_eq!(
        (s.failed, s.dropped),
        (0, 0),
        "leaving on a pause is no drop"
    );
    assert_eq!(s.recover_hist.unwrap().count(), 6);
    assert!(s.last_done_ns > 0);

    // Once more: they come back from the position they were given.
    stats.pause();
    until("every client gone again", || {
        stats.snapshot(false).connected == 0
    })
    .await;
    top.store(16, Ordering::SeqCst);
    stats.reset();
    stats.resume(wire::now_ns());
    until("every client back again", || {
        stats.snapshot(false).back() == 6
    })
    .await;
    let s = stats.snapshot(false);
    assert_eq!((s.received, s.duplicated, s.out_of_order), (12, 0, 0));
    stats.stop.store(true, Ordering::Relaxed);
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_clients_leave_and_recover_what_they_missed() {
    leave_miss_and_recover(Target::HeraldTcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_leave_and_recover_what_they_missed() {
    leave_miss_and_recover(Target::HeraldWs).await;
}

#[test]
fn positioned_frames_carry_a_whole_push() {
    // The layout the clients unwrap: kind, offset, then the push frame.
    let push = Frame::push(1000, b"x".to_vec()).to_bytes();
    let mut b = BytesMut::new();
    push_positioned(&mut b, StreamKind::Room, 7, &push);
    assert_eq!(b.len(), HEADER_LEN + 9 + push.len());
}
