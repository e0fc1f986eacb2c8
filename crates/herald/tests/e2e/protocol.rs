//! The client protocol over TCP and WebSocket, and the four push kinds.

use std::time::Duration;

use herald_proto::Op;

use crate::support::*;

#[tokio::test]
async fn tcp_auth_heartbeat_room_and_filters() {
    let s = start().await;
    let mut a = Client::tcp(s.tcp_addrs[0]).await;
    a.auth(1, "tcp-a", "live://1000", &[1000]).await;
    assert_eq!(a.heartbeat().await, 1);
    let mut b = Client::tcp(s.tcp_addrs[0]).await;
    b.auth(2, "tcp-b", "live://1000", &[]).await;
    assert_eq!(a.heartbeat().await, 2);

    // Change room: the reply echoes body and seq; counts follow.
    let seq = b.send(Op::CHANGE_ROOM, b"live://2000").await;
    let r = b.recv().await.unwrap();
    assert_eq!(
        (r.op, r.seq, &r.body[..]),
        (Op::CHANGE_ROOM_REPLY, seq, &b"live://2000"[..])
    );
    assert_eq!(b.heartbeat().await, 1);
    a.heartbeat_until(1).await;

    // Leave the room: heartbeat reports 0.
    let seq = b.send(Op::CHANGE_ROOM, b"").await;
    let r = b.recv().await.unwrap();
    assert_eq!((r.op, r.seq, r.body.len()), (Op::CHANGE_ROOM_REPLY, seq, 0));
    assert_eq!(b.heartbeat().await, 0);

    // Sub/unsub replies echo the body.
    let seq = b.send(Op::SUB, b"1001,1002").await;
    let r = b.recv().await.unwrap();
    assert_eq!(
        (r.op, r.seq, &r.body[..]),
        (Op::SUB_REPLY, seq, &b"1001,1002"[..])
    );
    let seq = b.send(Op::UNSUB, b"1002").await;
    let r = b.recv().await.unwrap();
    assert_eq!(
        (r.op, r.seq, &r.body[..]),
        (Op::UNSUB_REPLY, seq, &b"1002"[..])
    );
    // A malformed list still gets its reply and changes nothing.
    let seq = b.send(Op::SUB, b"x,1").await;
    let r = b.recv().await.unwrap();
    assert_eq!((r.op, r.seq), (Op::SUB_REPLY, seq));

    // Key pushes honour the accept filter.
    let h = s.http_addr;
    assert_eq!(
        post(h, "/goim/push/keys?operation=1001&keys=tcp-b", b"to-b")
            .await
            .json()["code"],
        0
    );
    let f = b.recv_push().await;
    assert_eq!(
        (f.op, f.seq, f.ver, &f.body[..]),
        (1001, 0, 1, &b"to-b"[..])
    );
    post(h, "/goim/push/keys?operation=1002&keys=tcp-b", b"filtered").await;
    post(h, "/goim/push/keys?operation=1001&keys=tcp-b", b"after").await;
    assert_eq!(&b.recv_push().await.body[..], b"after");

    // Upstream business ops are echoed with the same op and seq, empty body.
    let seq = a.send(4, b"hello").await;
    let r = a.recv().await.unwrap();
    assert_eq!((r.op, r.seq, r.body.len()), (4, seq, 0));
    s.shutdown().await;
}

/// All four push kinds reach TCP and WebSocket clients with the right op and body;
/// TCP clients see plain frames, WebSocket clients see op 9 envelopes.
#[tokio::test]
async fn four_push_kinds_over_both_transports() {
    let s = start().await;
    let h = s.http_addr;
    let mut t = Client::tcp(s.tcp_addrs[0]).await;
    t.auth(77, "kinds-tcp", "live://7", &[1000]).await;
    let mut w = Client::ws(s.ws_addrs[0]).await;
    w.auth(78, "kinds-ws", "live://7", &[1000]).await;

    for (path, body) in [
        (
            "/goim/push/keys?operation=1000&keys=kinds-tcp&keys=kinds-ws",
            "k",
        ),
        ("/goim/push/mids?operation=1000&mids=77&mids=78", "m"),
        ("/goim/push/room?operation=1000&type=live&room=7", "r"),
        ("/goim/push/all?operation=1000", "a"),
    ] {
        let r = post(h, path, body.as_bytes()).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json(), serde_json::json!({"code": 0, "message": ""}));
        let ft = t.recv_wire().await.expect("tcp push");
        assert_eq!(
            (ft.op, ft.ver, ft.seq, &ft.body[..]),
            (1000, 1, 0, body.as_bytes()),
            "{path}"
        );
        let fw = w.recv_wire().await.expect("ws push");
        assert_eq!(
            fw.op,
            Op::RAW,
            "{path}: websocket pushes are op 9 envelopes"
        );
        let inner = herald_proto::raw::unpack(&fw.body).unwrap();
        assert_eq!(inner.len(), 1);
        assert_eq!((inner[0].op, &inner[0].body[..]), (1000, body.as_bytes()));
    }

    // Room pushes ignore the accept filter; broadcasts honour it.
    post(
        h,
        "/goim/push/room?operation=5555&type=live&room=7",
        b"room-any-op",
    )
    .await;
    assert_eq!(t.recv_push().await.op, 5555);
    assert_eq!(w.recv_push().await.op, 5555);
    post(h, "/goim/push/all?operation=5556", b"filtered").await;
    post(h, "/goim/push/all?operation=1000", b"passes").await;
    assert_eq!(&t.recv_push().await.body[..], b"passes");
    assert_eq!(&w.recv_push().await.body[..], b"passes");

    // Other rooms and unknown keys receive nothing.
    post(h, "/goim/push/room?operation=1000&type=live&room=8", b"x").await;
    post(h, "/goim/push/keys?operation=1000&keys=nobody", b"x").await;
    t.expect_silence(Duration::from_millis(300)).await;
    s.shutdown().await;
}

/// Room messages published together are batched (≤ 20 frames per envelope),
/// unpack correctly and keep their order; a lone message is not held back.
#[tokio::test]
async fn room_batches_unpack_in_order() {
    let s = start().await;
    let h = s.http_addr;
    let mut w = Client::ws(s.ws_addrs[0]).await;
    w.auth(1, "batch-ws", "test://1", &[]).await;
    let mut t = Client::tcp(s.tcp_addrs[0]).await;
    t.auth(2, "batch-tcp", "test://1", &[]).await;

    let started = tokio::time::Instant::now();
    post(
        h,
        "/goim/push/room?operation=1000&type=test&room=1",
        b"lone",
    )
    .await;
    assert_eq!(&w.recv_push().await.body[..], b"lone");
    // goim holds a lone message for its 1 s batching window; herald must not.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "lone message held {:?}",
        started.elapsed()
    );
    assert_eq!(&t.recv_push().await.body[..], b"lone");

    let n = 60;
    let posts = (0..n).map(|i| {
        let body = format!("m{i:03}");
        async move {
            post(
                h,
                "/goim/push/room?operation=1000&type=test&room=1",
                body.as_bytes(),
            )
            .await
        }
    });
    // Sequential publishing keeps a known order.
    for p in posts {
        assert_eq!(p.await.status, 200);
    }
    let mut got = Vec::new();
    let mut envelopes = 0;
    while got.len() < n {
        let f = w.recv_wire().await.expect("batch");
        assert_eq!(f.op, Op::RAW);
        let inner = herald_proto::raw::unpack(&f.body).unwrap();
        assert!(
            !inner.is_empty() && inner.len() <= 20,
            "batch of {}",
            inner.len()
        );
        envelopes += 1;
        got.extend(
            inner
                .into_iter()
                .map(|f| String::from_utf8(f.body.to_vec()).unwrap()),
        );
    }
    let want: Vec<String> = (0..n).map(|i| format!("m{i:03}")).collect();
    assert_eq!(got, want);
    assert!(envelopes <= n);
    let mut tcp_got = Vec::new();
    while tcp_got.len() < n {
        let f = t.recv_wire().await.expect("tcp frame");
        assert_eq!(f.op, 1000, "TCP clients never see op 9");
        tcp_got.push(String::from_utf8(f.body.to_vec()).unwrap());
    }
    assert_eq!(tcp_got, want);
    s.shutdown().await;
}

/// A second connection with the same key replaces the first and keeps its route
/// (goim erased it when the old connection's disconnect ran).
#[tokio::test]
async fn same_key_reconnect_keeps_the_new_route() {
    let s = start().await;
    let h = s.http_addr;
    let mut old = Client::tcp(s.tcp_addrs[0]).await;
    old.auth(9, "phone", "", &[1000]).await;
    let mut new = Client::ws(s.ws_addrs[0]).await;
    new.auth(9, "phone", "", &[1000]).await;
    old.expect_closed().await;
    // Give the old connection's cleanup time to run before pushing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    post(h, "/goim/push/keys?operation=1000&keys=phone", b"k").await;
    assert_eq!(&new.recv_push().await.body[..], b"k");
    post(h, "/goim/push/mids?operation=1000&mids=9", b"m").await;
    assert_eq!(&new.recv_push().await.body[..], b"m");
    new.expect_silence(Duration::from_millis(200)).await;
    s.shutdown().await;
}

/// An anonymous client without a key gets a generated one and still receives
/// room and broadcast pushes; a disconnected key stops receiving.
#[tokio::test]
async fn anonymous_clients_and_disconnect() {
    let s = start().await;
    let h = s.http_addr;
    let mut anon = Client::ws(s.ws_addrs[0]).await;
    anon.auth(0, "", "live://a", &[1000]).await;
    post(h, "/goim/push/room?operation=1000&type=live&room=a", b"r").await;
    assert_eq!(&anon.recv_push().await.body[..], b"r");
    post(h, "/goim/push/all?operation=1000", b"b").await;
    assert_eq!(&anon.recv_push().await.body[..], b"b");

    let gone = Client::tcp(s.tcp_addrs[0]).await;
    let mut gone = gone;
    gone.auth(5, "gone", "", &[1000]).await;
    drop(gone);
    let hub = s.comet().hub().clone();
    eventually("disconnect to be processed", || {
        let hub = hub.clone();
        async move { hub.channel("gone").is_none() }
    })
    .await;
    assert_eq!(
        post(h, "/goim/push/keys?operation=1000&keys=gone", b"x")
            .await
            .status,
        200
    );
    s.shutdown().await;
}

/// Heartbeats keep a connection; without them it is closed after the deadline.
#[tokio::test]
async fn heartbeat_deadline_and_handshake_timeout() {
    let mut cfg = test_config();
    cfg.logic.node.heartbeat = Duration::from_millis(300);
    cfg.logic.node.heartbeat_max = 1;
    cfg.comet.handshake_timeout = Duration::from_millis(300);
    let s = start_with(cfg).await;
    let mut alive = Client::tcp(s.tcp_addrs[0]).await;
    alive.auth(1, "alive", "", &[]).await;
    let mut silent = Client::ws(s.ws_addrs[0]).await;
    silent.auth(2, "silent", "", &[]).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        alive.heartbeat().await;
    }
    silent.expect_closed().await;
    alive.heartbeat().await;
    // Never authenticating: closed after the handshake timeout.
    let mut idle = Client::tcp(s.tcp_addrs[0]).await;
    idle.expect_closed().await;
    s.shutdown().await;
}

/// Shutdown closes client connections.
#[tokio::test]
async fn shutdown_closes_clients() {
    let s = start().await;
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.auth(1, "bye", "", &[]).await;
    s.shutdown().await;
    c.expect_closed().await;
}
