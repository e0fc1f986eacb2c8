//! Regression tests for fan-out and handshake edge cases: partial writes, pushes
//! queued behind a blocked write, auth-reply ordering, one-packet handshakes.

use std::time::Duration;

use herald_proto::Op;

use crate::support::*;

/// A push queued while the connection task is blocked in a write must be written
/// once the write completes, without waiting for some other event.
#[tokio::test]
async fn push_queued_during_blocked_write_is_not_stuck() {
    let mut cfg = test_config();
    cfg.comet.write_timeout = Duration::from_secs(30);
    cfg.logic.max_push_body = 64 << 20;
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(1, "blocked", "", &[1000, 1001]).await;
    // Fill the socket: the client does not read yet.
    let big = vec![b'z'; 8 * 1024 * 1024];
    assert_eq!(
        post(h, "/goim/push/keys?operation=1000&keys=blocked", &big)
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Queued behind the blocked write.
    assert_eq!(
        post(h, "/goim/push/keys?operation=1001&keys=blocked", b"small")
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let f = c.recv_push().await;
    assert_eq!((f.op, f.body.len()), (1000, big.len()));
    // Must arrive without any further input from the client or more pushes.
    let f = tokio::time::timeout(Duration::from_secs(3), c.recv_push())
        .await
        .expect("second push stuck in the outbox after the blocked write finished");
    assert_eq!((f.op, &f.body[..]), (1001, &b"small"[..]));
    s.shutdown().await;
}

/// The auth reply is the first frame a client receives, even while its room is
/// being pushed to.
#[tokio::test]
async fn auth_reply_is_first() {
    let s = start().await;
    let h = s.http_addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let pusher = tokio::spawn(async move {
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            post(h, "/goim/push/room?operation=1000&type=live&room=hot", b"p").await;
        }
    });
    let mut bad = 0;
    for i in 0..300 {
        let mut c = Client::tcp(s.tcp_addrs[0]).await;
        c.send(Op::AUTH, &auth_body(1, &format!("k{i}"), "live://hot", &[]))
            .await;
        let f = c.recv().await.unwrap();
        if f.op != Op::AUTH_REPLY {
            bad += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pusher.await.unwrap();
    assert_eq!(
        bad, 0,
        "{bad} of 300 clients got a push before their auth reply"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn upgrade_auth_and_heartbeat_in_one_packet() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start().await;
    let addr = s.ws_addrs[0];
    let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut pkt = format!(
        "GET /sub?x=1 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: c=1\r\n\r\n"
    )
    .into_bytes();
    let auth =
        herald_proto::Frame::new(1, Op::AUTH, 7, auth_body(5, "one-packet", "live://9", &[]))
            .to_bytes();
    pkt.extend(herald_proto::ws::client_frame(2, &auth, [1, 2, 3, 4]));
    let hb = herald_proto::Frame::new(1, Op::HEARTBEAT, 8, Vec::new()).to_bytes();
    pkt.extend(herald_proto::ws::client_frame(2, &hb, [5, 6, 7, 8]));
    t.write_all(&pkt).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), t.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 101"));
    let mut dec = herald_proto::ws::Decoder::server(1 << 20);
    let mut rest = &got[head_end..];
    let mut ops = Vec::new();
    while let Some((m, used)) = dec.decode(rest).unwrap() {
        if let Some(herald_proto::ws::Message::Data(d)) = m {
            let f = herald_proto::decode_exact(&d, 1 << 20).unwrap();
            ops.push((f.op, f.seq));
        }
        rest = &rest[used..];
    }
    assert_eq!(ops, vec![(Op::AUTH_REPLY, 7), (Op::HEARTBEAT_REPLY, 8)]);
    s.shutdown().await;
}

/// A TCP client that reads slowly still receives intact frames (partial writes keep
/// every byte, in order).
#[tokio::test]
async fn slow_reader_gets_intact_frames() {
    let mut cfg = test_config();
    cfg.logic.max_push_body = 8 << 20;
    // Room for all four pushes in the outbox: this is about partial writes, not
    // about the byte bound.
    cfg.limits.client.outbound_bytes = 16 << 20;
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(1, "slow", "", &[1000]).await;
    for i in 0..4u8 {
        let body = vec![b'a' + i; 3 << 20];
        assert_eq!(
            post(h, "/goim/push/keys?operation=1000&keys=slow", &body)
                .await
                .status,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..4u8 {
        let f = c.recv_push().await;
        assert_eq!(f.op, 1000, "push {i}: bad op");
        assert_eq!(f.body.len(), 3 << 20, "push {i}: bad length");
        assert!(f.body.iter().all(|b| *b == b'a' + i), "push {i}: bad body");
    }
    s.shutdown().await;
}
