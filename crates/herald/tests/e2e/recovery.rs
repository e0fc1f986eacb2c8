//! Recovery after a reconnect, as a client written from docs/protocol.md sees
//! it: positioned pushes (op 24), stream states (op 25), replays in order with no
//! gap and no repeat, `reload` when history no longer holds what was missed, and
//! goim's bytes for clients that do not ask.

use std::time::Duration;

use herald::Config;
use herald_logic::StreamHistory;
use herald_proto::recovery::{StreamKind, StreamStatus};
use herald_proto::Op;
use serde_json::json;

use crate::recovering::{
    drop_and_recover, push_mid, push_room, status_of, Positions, Recovering, Seen, OP,
};
use crate::support::*;

fn history_config(room_size: usize, mid_size: usize) -> Config {
    let mut cfg = test_config();
    let keep = |size| StreamHistory {
        size,
        ttl: Duration::from_secs(300),
    };
    cfg.history.rooms.insert("chat".into(), keep(room_size));
    cfg.history.mids = Some(keep(mid_size));
    cfg
}

#[tokio::test]
async fn tcp_client_recovers_200_missed_pushes_in_order() {
    let s = start_with(history_config(500, 500)).await;
    drop_and_recover(s.tcp_addrs[0], s.http_addr, false).await;
}

#[tokio::test]
async fn websocket_client_recovers_200_missed_pushes_in_order() {
    let s = start_with(history_config(500, 500)).await;
    drop_and_recover(s.ws_addrs[0], s.http_addr, true).await;
}

/// History trimmed below the client's position: `reload`, nothing replayed,
/// never a silent loss; live pushes carry on from the top.
#[tokio::test]
async fn trimmed_history_says_reload() {
    let s = start_with(history_config(10, 10)).await;
    let (addr, h) = (s.tcp_addrs[0], s.http_addr);
    let mut c = Recovering::connect(addr, false, 7, "trim", "chat://t", Positions::default()).await;
    c.states().await;
    push_room(h, "t", "seen").await;
    c.next().await;
    let kept = c.positions.clone();
    drop(c);
    for i in 0..30 {
        push_room(h, "t", &format!("gone{i}")).await;
    }
    let mut c = Recovering::connect(addr, false, 7, "trim", "chat://t", kept).await;
    let states = c.states().await;
    assert_eq!(status_of(&states, "chat://t"), StreamStatus::Reload);
    let room = states.iter().find(|s| s.stream == "chat://t").unwrap();
    assert_eq!(room.offset, 31, "carries on from the top");
    // The member had nothing to miss.
    assert_eq!(status_of(&states, "mid:7"), StreamStatus::Recovered);
    push_room(h, "t", "after").await;
    assert_eq!(
        c.next().await,
        Seen::Push(Some((StreamKind::Room, 32)), OP, "after".into())
    );
}

/// A position from an earlier life of the stream (the server restarted, the
/// history is gone): `reload`.
#[tokio::test]
async fn unknown_epoch_says_reload() {
    let s = start_with(history_config(10, 10)).await;
    let mut kept = Positions::default();
    kept.0.insert("chat://e".into(), ("an-old-epoch".into(), 5));
    let mut c = Recovering::connect(s.tcp_addrs[0], false, 8, "ep", "chat://e", kept).await;
    let states = c.states().await;
    assert_eq!(status_of(&states, "chat://e"), StreamStatus::Reload);
    assert_eq!(status_of(&states, "mid:8"), StreamStatus::Fresh);
}

/// goim's clients in the same room see goim's bytes: plain pushes, no op 24 or
/// 25, even while recovering clients share the room.
#[tokio::test]
async fn goim_clients_see_exactly_todays_bytes() {
    let s = start_with(history_config(100, 100)).await;
    let h = s.http_addr;
    let mut rec = Recovering::connect(
        s.tcp_addrs[0],
        false,
        1,
        "r",
        "chat://g",
        Positions::default(),
    )
    .await;
    rec.states().await;
    let mut goim = Client::tcp(s.tcp_addrs[0]).await;
    goim.auth(2, "g", "chat://g", &[OP]).await;
    let mut goim_ws = Client::ws(s.ws_addrs[0]).await;
    goim_ws.auth(3, "gw", "chat://g", &[OP]).await;
    push_room(h, "g", r#"{"test":1}"#).await;
    push_mid(h, 2, "to-mid").await;

    // TCP: the 26-byte frame of protocol.md's worked example.
    let f = goim.recv_wire().await.unwrap();
    assert_eq!(
        f.to_bytes().as_ref(),
        &[
            &[0, 0, 0, 0x1a, 0, 0x10, 0, 1, 0, 0, 0x03, 0xe8, 0, 0, 0, 0][..],
            br#"{"test":1}"#
        ]
        .concat()[..]
    );
    let f = goim.recv_push().await;
    assert_eq!((f.op, &f.body[..]), (OP, &b"to-mid"[..]));
    // WebSocket: one op-9 envelope around the same frame.
    let f = goim_ws.recv_wire().await.unwrap();
    assert_eq!(f.op, Op::RAW);
    let inner = herald_proto::raw::unpack(&f.body).unwrap();
    assert_eq!(
        (inner[0].op, &inner[0].body[..]),
        (OP, &br#"{"test":1}"#[..])
    );
    assert_eq!(
        rec.next().await,
        Seen::Push(Some((StreamKind::Room, 1)), OP, r#"{"test":1}"#.into())
    );
}

/// After a room change, op 25 gives the new room's position (`fresh`); its
/// pushes are positioned from there.
#[tokio::test]
async fn room_change_reports_the_new_room() {
    let s = start_with(history_config(100, 100)).await;
    let h = s.http_addr;
    push_room(h, "b", "old news").await;
    let mut c = Recovering::connect(
        s.tcp_addrs[0],
        false,
        0,
        "rc",
        "chat://a",
        Positions::default(),
    )
    .await;
    let states = c.states().await;
    assert!(
        states.iter().all(|s| s.kind != StreamKind::Mid),
        "anonymous: no member stream"
    );
    let seq = c.c.send(Op::CHANGE_ROOM, b"chat://b").await;
    let r = c.c.recv().await.unwrap();
    assert_eq!((r.op, r.seq), (Op::CHANGE_ROOM_REPLY, seq));
    let states = c.states().await;
    assert_eq!(states.len(), 1);
    assert_eq!(
        (states[0].offset, states[0].status),
        (1, StreamStatus::Fresh)
    );
    push_room(h, "b", "new").await;
    assert_eq!(
        c.next().await,
        Seen::Push(Some((StreamKind::Room, 2)), OP, "new".into())
    );
    // A room that keeps no history: `off`, and plain pushes.
    let seq = c.c.send(Op::CHANGE_ROOM, b"live://x").await;
    let r = c.c.recv().await.unwrap();
    assert_eq!((r.op, r.seq), (Op::CHANGE_ROOM_REPLY, seq));
    let states = c.states().await;
    assert_eq!(states[0].status, StreamStatus::Off);
    let r = post(
        h,
        &format!("/goim/push/room?operation={OP}&type=live&room=x"),
        b"plain",
    )
    .await;
    assert_eq!(r.json()["code"], 0);
    assert_eq!(c.next().await, Seen::Push(None, OP, "plain".into()));
}

/// A malformed recovery request refuses the auth like a malformed body.
#[tokio::test]
async fn malformed_recover_request_is_refused() {
    let s = start_with(history_config(10, 10)).await;
    for body in [
        r#"{"mid":1,"room_id":"chat://1","recover":[1,2]}"#,
        r#"{"mid":1,"recover":{"chat://1":{"epoch":"e","offset":-1}}}"#,
    ] {
        let mut c = Client::ws(s.ws_addrs[0]).await;
        c.send(Op::AUTH, body.as_bytes()).await;
        assert_eq!(
            c.close_code().await,
            Some(herald_proto::ws::close::PROTOCOL_ERROR)
        );
    }
    // The server carries on.
    let mut ok = Client::tcp(s.tcp_addrs[0]).await;
    ok.auth(1, "fine", "chat://1", &[]).await;
}

/// In `jwt` mode the body holds the token and `recover`; the member stream is
/// the token's.
#[tokio::test]
async fn jwt_clients_recover_their_member_stream() {
    const SECRET: &str = "recovery-test-secret-with-enough-bytes";
    let mut cfg = history_config(100, 100);
    cfg.auth.mode = herald_logic::auth::AuthMode::Jwt;
    cfg.auth.jwt.secret = SECRET.into();
    let s = start_with(cfg).await;
    let (addr, h) = (s.ws_addrs[0], s.http_addr);
    let exp = unix_now() + 600;
    let token = jwt_hs256(&json!({"sub": "77", "key": "jk", "exp": exp}), SECRET);
    let body = |p: &Positions| json!({"token": token, "accepts": [OP], "recover": p.recover()});
    let ident = (77, "jk", "");
    let mut c = Recovering::connect_body(
        addr,
        true,
        body(&Positions::default()),
        ident,
        Positions::default(),
    )
    .await;
    assert_eq!(status_of(&c.states().await, "mid:77"), StreamStatus::Fresh);
    let kept = c.positions.clone();
    drop(c);
    push_mid(h, 77, "while away").await;
    let mut c = Recovering::connect_body(addr, true, body(&kept), ident, kept).await;
    assert_eq!(
        c.next().await,
        Seen::Push(Some((StreamKind::Mid, 1)), OP, "while away".into())
    );
    assert_eq!(
        status_of(&c.states().await, "mid:77"),
        StreamStatus::Recovered
    );
}
