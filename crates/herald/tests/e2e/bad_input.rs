//! Malformed input closes only the connection that sent it; everybody else keeps
//! being served.

use std::time::Duration;

use herald_proto::{ws, Frame, Op, HEADER_LEN, MAX_PACK};
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// A header with arbitrary fields.
fn header(pack_len: i32, header_len: i16, op: i32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&pack_len.to_be_bytes());
    h.extend_from_slice(&header_len.to_be_bytes());
    h.extend_from_slice(&1i16.to_be_bytes());
    h.extend_from_slice(&op.to_be_bytes());
    h.extend_from_slice(&1i32.to_be_bytes());
    h
}

async fn bystanders(s: &herald::Standalone) -> (Client, Client) {
    let mut t = Client::tcp(s.tcp_addrs[0]).await;
    t.auth(100, "bystander-tcp", "live://x", &[]).await;
    let mut w = Client::ws(s.ws_addrs[0]).await;
    w.auth(101, "bystander-ws", "live://x", &[]).await;
    (t, w)
}

async fn still_served(s: &herald::Standalone, t: &mut Client, w: &mut Client, tag: &str) {
    let r = post(
        s.http_addr,
        "/goim/push/room?operation=1000&type=live&room=x",
        tag.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(&t.recv_push().await.body[..], tag.as_bytes());
    assert_eq!(&w.recv_push().await.body[..], tag.as_bytes());
    t.heartbeat_until(2).await;
}

#[tokio::test]
async fn malformed_frames_close_only_their_connection() {
    let s = start().await;
    let (mut t, mut w) = bystanders(&s).await;

    // TCP: frame longer than 4112 bytes (after auth).
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(1, "big", "live://x", &[]).await;
    c.send_socket(&header(MAX_PACK as i32 + 1, 16, 4)).await;
    c.expect_closed().await;
    still_served(&s, &mut t, &mut w, "after-big").await;

    // TCP: header length other than 16 (before auth).
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.send_socket(&header(16, 12, Op::AUTH)).await;
    c.expect_closed().await;

    // TCP: negative length.
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(2, "neg", "", &[]).await;
    c.send_socket(&header(-5, 16, 2)).await;
    c.expect_closed().await;
    still_served(&s, &mut t, &mut w, "after-tcp").await;

    // A frame of exactly 4112 bytes is fine.
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(3, "max", "", &[]).await;
    let body = vec![b'x'; MAX_PACK - HEADER_LEN];
    let seq = c.send(4, &body).await;
    let r = c.recv().await.expect("echo of a maximal frame");
    assert_eq!((r.op, r.seq), (4, seq));
    s.shutdown().await;
}

#[tokio::test]
async fn malformed_websocket_messages_close_only_their_connection() {
    let s = start().await;
    let (mut t, mut w) = bystanders(&s).await;

    // Frame length disagrees with the message length (longer and shorter).
    for (i, delta) in [(0, 4i32), (1, -4)] {
        let mut c = Client::ws(s.ws_addrs[0]).await;
        c.auth(10 + i, &format!("len{i}"), "live://x", &[]).await;
        let mut f = Frame::new(1, 2, 1, b"abcdefgh".to_vec())
            .to_bytes()
            .to_vec();
        let declared = f.len() as i32 + delta;
        f[0..4].copy_from_slice(&declared.to_be_bytes());
        c.send_raw(&f).await;
        c.expect_closed().await;
    }
    still_served(&s, &mut t, &mut w, "after-len").await;

    // A message shorter than a header, and one over the size limit.
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.send_raw(b"short").await;
    c.expect_closed().await;
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.auth(20, "huge", "", &[]).await;
    c.send_raw(&vec![0u8; MAX_PACK + 1]).await;
    c.expect_closed().await;

    // WebSocket protocol violations: reserved bits, unknown opcode.
    let mut c = Client::ws(s.ws_addrs[0]).await;
    let mut bad = ws::client_frame(ws::opcode::BINARY, b"x", [1, 2, 3, 4]);
    bad[0] |= 0x40;
    c.send_socket(&bad).await;
    c.expect_closed().await;
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.send_socket(&ws::client_frame(0x5, b"x", [1, 2, 3, 4]))
        .await;
    c.expect_closed().await;
    still_served(&s, &mut t, &mut w, "after-ws").await;

    // Ping is answered with pong; close frame ends the connection.
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.auth(30, "pinger", "", &[]).await;
    c.send_socket(&ws::client_frame(ws::opcode::PING, b"hi", [9, 9, 9, 9]))
        .await;
    c.send_socket(&ws::client_frame(ws::opcode::CLOSE, b"", [9, 9, 9, 9]))
        .await;
    c.expect_closed().await;
    s.shutdown().await;
}

#[tokio::test]
async fn bad_upgrades_and_auth_are_refused() {
    let s = start().await;
    let (mut t, mut w) = bystanders(&s).await;

    // Wrong path: HTTP 404, then close.
    let mut c = tokio::net::TcpStream::connect(s.ws_addrs[0]).await.unwrap();
    c.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut c, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");

    // Not a WebSocket upgrade: HTTP 400.
    let mut c = tokio::net::TcpStream::connect(s.ws_addrs[0]).await.unwrap();
    c.write_all(b"GET /sub HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut c, &mut out)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));

    // Garbage instead of HTTP.
    let mut c = tokio::net::TcpStream::connect(s.ws_addrs[0]).await.unwrap();
    c.write_all(b"\x00\x01\x02 not http at all\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut c, &mut out)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));

    // Invalid auth JSON: closed without any frame (as goim).
    for body in [&b"not json"[..], br#"{"mid":"abc"}"#] {
        let mut c = Client::tcp(s.tcp_addrs[0]).await;
        c.send(Op::AUTH, body).await;
        assert!(c.recv_wire().await.is_none(), "no reply to a refused auth");
    }
    // Frames before auth are ignored; auth still works after them.
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.send(Op::HEARTBEAT, b"").await;
    c.send(1000, b"early").await;
    c.auth(40, "late-auth", "", &[]).await;
    c.expect_silence(Duration::from_millis(200)).await;

    still_served(&s, &mut t, &mut w, "after-auth").await;
    s.shutdown().await;
}

/// A client that stops reading becomes a slow consumer: with the `disconnect`
/// policy it is closed and counted; other clients keep receiving.
#[tokio::test]
async fn slow_consumer_is_disconnected_by_policy() {
    let mut cfg = test_config();
    cfg.comet.outbound_queue = 4;
    cfg.comet.slow_consumer = herald_comet::SlowConsumerPolicy::Disconnect;
    cfg.comet.write_timeout = Duration::from_secs(30);
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let mut reader = Client::ws(s.ws_addrs[0]).await;
    reader.auth(1, "reader", "", &[1000]).await;
    let mut stalled = Client::tcp(s.tcp_addrs[0]).await;
    stalled.auth(2, "stalled", "", &[1000]).await;

    let body = vec![b'z'; 512 * 1024];
    let mut closed = false;
    for i in 0..200 {
        let r = post(
            h,
            "/goim/push/keys?operation=1000&keys=stalled&keys=reader",
            &body,
        )
        .await;
        assert_eq!(r.status, 200);
        let f = reader.recv_push().await;
        assert_eq!(f.body.len(), body.len(), "push {i}");
        if s.comet().hub().channel("stalled").is_none() {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the stalled client was never treated as a slow consumer"
    );
    let m = get(h, "/metrics").await.text();
    let line = m
        .lines()
        .find(|l| l.starts_with("herald_slow_consumer_disconnects_total"))
        .expect("slow consumer metric");
    assert!(!line.ends_with(" 0"), "{line}");
    s.shutdown().await;
}
