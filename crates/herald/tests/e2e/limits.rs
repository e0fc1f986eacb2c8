//! Client limits: each one closes only the client over it, with its documented
//! close, while the others keep receiving pushes; and the drain on shutdown.

use std::time::{Duration, Instant};

use herald_proto::{ws, Op};

use crate::support::*;

/// A client in `live://calm` that must keep receiving while another misbehaves.
async fn bystander(s: &herald::Standalone) -> Client {
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.auth(100, "bystander", "live://calm", &[1000]).await;
    c
}

async fn still_receives(s: &herald::Standalone, c: &mut Client, body: &str) {
    let r = post(
        s.http_addr,
        "/goim/push/room?operation=1000&type=live&room=calm",
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(c.recv_push().await.body, body.as_bytes());
}

#[tokio::test]
async fn a_frame_flood_is_closed_with_1008() {
    let mut cfg = test_config();
    cfg.limits.client.frames_per_second = 20;
    cfg.limits.client.frames_burst = 40;
    let s = start_with(cfg).await;
    let mut calm = bystander(&s).await;
    let mut flood = Client::ws(s.ws_addrs[0]).await;
    flood.auth(1, "flood", "", &[]).await;
    // Well-behaved use within the burst is fine.
    for _ in 0..10 {
        flood.heartbeat().await;
    }
    for _ in 0..200 {
        flood.send(Op::SEND_MSG, b"spam").await;
    }
    assert_eq!(flood.close_code().await, Some(ws::close::POLICY_VIOLATION));
    assert_eq!(flood.close_reason, "frame rate exceeded");
    still_receives(&s, &mut calm, "after the flood").await;
    s.shutdown().await;
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let mut cfg = test_config();
    cfg.limits.client.connections_per_ip = 3;
    let s = start_with(cfg).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = Client::tcp(s.tcp_addrs[0]).await;
        c.auth(i, &format!("ip-{i}"), "", &[]).await;
        held.push(c);
    }
    // The fourth from the same address is closed at once, before any reply.
    let mut extra = Client::tcp(s.tcp_addrs[0]).await;
    extra.send(Op::AUTH, &auth_body(9, "ip-9", "", &[])).await;
    assert!(extra.recv().await.is_none(), "over the cap but answered");
    // Closing one frees a slot.
    drop(held.pop());
    eventually("a slot to free up", || async {
        let mut c = Client::tcp(s.tcp_addrs[0]).await;
        c.send(Op::AUTH, &auth_body(9, "ip-9", "", &[])).await;
        c.recv().await.is_some_and(|f| f.op == Op::AUTH_REPLY)
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn forwarded_clients_of_a_trusted_proxy_are_counted_by_their_own_address() {
    let mut cfg = test_config();
    cfg.limits.client.connections_per_ip = 1;
    cfg.limits.trusted_proxies = herald_limits::TrustedProxies(vec!["127.0.0.1".parse().unwrap()]);
    let s = start_with(cfg).await;
    let addr = s.ws_addrs[0];
    let via = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    let connect = |ip: String| async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        Client::upgrade(Box::new(stream), addr, "/sub", &ip).await
    };
    // Two clients behind the same proxy, one connection each: both fine.
    let mut a = connect(via("198.51.100.1")).await;
    a.auth(1, "fwd-a", "", &[]).await;
    let mut b = connect(via("198.51.100.2")).await;
    b.auth(2, "fwd-b", "", &[]).await;
    // A second connection of the first client is over its cap: 429 at the upgrade.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut raw = Client::new(Box::new(stream), true);
    raw.send_socket(
        format!(
            "GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
            via("198.51.100.1")
        )
        .as_bytes(),
    )
    .await;
    let head = raw.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    s.shutdown().await;
}

#[tokio::test]
async fn the_accept_filter_is_bounded() {
    let mut cfg = test_config();
    cfg.limits.client.max_accepts = 64;
    let s = start_with(cfg).await;
    let mut calm = bystander(&s).await;
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(1, "subs", "", &[1000]).await;
    let ops: Vec<String> = (2000..2050).map(|o| o.to_string()).collect();
    let seq = c.send(Op::SUB, ops.join(",").as_bytes()).await;
    let f = c.recv().await.expect("sub reply");
    assert_eq!((f.op, f.seq), (Op::SUB_REPLY, seq));
    // Going past 64 ops closes the connection; a huge list does not stall anyone.
    let many: Vec<String> = (0..900).map(|o| o.to_string()).collect();
    c.send(Op::SUB, many.join(",").as_bytes()).await;
    c.expect_closed().await;
    still_receives(&s, &mut calm, "subs").await;
    s.shutdown().await;
}

#[tokio::test]
async fn room_changes_are_rate_limited() {
    let mut cfg = test_config();
    cfg.limits.client.room_changes_per_minute = 5;
    let s = start_with(cfg).await;
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.auth(1, "hopper", "", &[]).await;
    for i in 0..5 {
        let room = format!("live://{i}");
        c.send(Op::CHANGE_ROOM, room.as_bytes()).await;
        let f = c.recv().await.expect("room reply");
        assert_eq!(
            (f.op, f.body.to_vec()),
            (Op::CHANGE_ROOM_REPLY, room.into_bytes())
        );
    }
    c.send(Op::CHANGE_ROOM, b"live://6").await;
    assert_eq!(c.close_code().await, Some(ws::close::POLICY_VIOLATION));
    assert_eq!(c.close_reason, "room change rate exceeded");
    s.shutdown().await;
}

#[tokio::test]
async fn the_outbox_is_bounded_in_bytes() {
    let mut cfg = test_config();
    cfg.limits.client.outbound_bytes = 256 * 1024;
    cfg.comet.outbound_queue = 10_000;
    cfg.comet.slow_consumer = herald_comet::SlowConsumerPolicy::Disconnect;
    cfg.logic.max_push_body = 1 << 20;
    let s = start_with(cfg).await;
    let mut calm = bystander(&s).await;
    // A small receive buffer, so the kernel does not absorb megabytes first.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(s.tcp_addrs[0]).await.unwrap();
    let mut slow = Client::new(Box::new(stream), false);
    slow.auth(1, "slow", "", &[1000]).await;
    // The slow client reads nothing; pushes fill the socket, then the outbox up to
    // its byte bound, and the next one closes it (disconnect policy).
    let body = vec![b'x'; 64 * 1024];
    let mut disconnected = false;
    for i in 0..400 {
        let r = post(
            s.http_addr,
            "/goim/push/keys?operation=1000&keys=slow",
            &body,
        )
        .await;
        assert_eq!(r.status, 200);
        // (Metrics are shared by every server in this test process; the hub is not.)
        if i % 10 == 9 && s.comet().hub().channel("slow").is_none() {
            disconnected = true;
            break;
        }
    }
    assert!(
        disconnected,
        "a client over the outbound byte bound was not closed"
    );
    slow.expect_closed().await;
    still_receives(&s, &mut calm, "bytes").await;
    s.shutdown().await;
}

/// The write-queue depth an operator sees: a client that stops reading holds
/// pushes in its outbox, and the comet counts them (pushes, bytes, connections).
#[tokio::test]
async fn a_client_that_stops_reading_shows_in_the_write_queue_depth() {
    let mut cfg = test_config();
    cfg.comet.outbound_queue = 10_000;
    cfg.limits.client.outbound_bytes = 64 << 20;
    cfg.logic.max_push_body = 1 << 20;
    let s = start_with(cfg).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(s.tcp_addrs[0]).await.unwrap();
    let mut slow = Client::new(Box::new(stream), false);
    slow.auth(1, "backlog", "", &[1000]).await;
    let body = vec![b'x'; 64 * 1024];
    let hub = s.comet().hub().clone();
    let mut backlog = hub.refresh_backlog();
    for _ in 0..200 {
        if backlog.pushes >= 2 {
            break;
        }
        let r = post(
            s.http_addr,
            "/goim/push/keys?operation=1000&keys=backlog",
            &body,
        )
        .await;
        assert_eq!(r.status, 200);
        backlog = hub.refresh_backlog();
    }
    assert!(backlog.pushes >= 2, "pushes never queued: {backlog:?}");
    assert_eq!(backlog.connections, 1, "{backlog:?}");
    // (the first may be the unwritten rest of a push the socket took part of)
    assert!(
        backlog.bytes > (backlog.pushes - 1) * body.len(),
        "{backlog:?}"
    );
    drop(slow);
    eventually("the closed client's queue gone", || {
        let hub = hub.clone();
        async move { hub.refresh_backlog().connections == 0 }
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_clients_over_the_window_with_1012() {
    let mut cfg = test_config();
    cfg.shutdown.drain = Duration::from_millis(1000);
    cfg.shutdown.grace = Duration::from_secs(5);
    let s = start_with(cfg).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = Client::ws(s.ws_addrs[0]).await;
        c.auth(i, &format!("drain-ws-{i}"), "", &[]).await;
        clients.push((true, c));
        let mut c = Client::tcp(s.tcp_addrs[0]).await;
        c.auth(100 + i, &format!("drain-tcp-{i}"), "", &[]).await;
        clients.push((false, c));
    }
    let started = Instant::now();
    let stopping = tokio::spawn(s.shutdown());
    let watchers: Vec<_> = clients
        .into_iter()
        .map(|(ws, mut c)| {
            tokio::spawn(async move {
                let code = c.close_code().await;
                (ws, code, started.elapsed())
            })
        })
        .collect();
    let (mut ws_at, mut tcp_at) = (Vec::new(), Vec::new());
    for w in watchers {
        let (ws, code, at) = w.await.unwrap();
        if ws {
            assert_eq!(code, Some(ws::close::SERVICE_RESTART));
            ws_at.push(at);
        } else {
            // TCP clients are told by the connection ending, each in its turn.
            assert_eq!(code, None);
            tcp_at.push(at);
        }
    }
    stopping.await.unwrap();
    for (what, mut at) in [("WebSocket", ws_at), ("TCP", tcp_at)] {
        at.sort();
        let spread = at[at.len() - 1] - at[0];
        // Sixteen clients over one second: each transport's closes are spread
        // over most of it, not all at the end.
        assert!(
            spread >= Duration::from_millis(500),
            "{what} clients closed all at once: {at:?}"
        );
    }
}

/// Frames sent before auth are dropped unanswered, which makes them cheap to send
/// and costly to read: a client may send only `frames_burst` of them.
#[tokio::test]
async fn a_frame_flood_before_auth_is_cut_off() {
    let mut cfg = test_config();
    cfg.limits.client.frames_burst = 50;
    let s = start_with(cfg).await;
    let mut calm = bystander(&s).await;
    for ws in [false, true] {
        let mut c = if ws {
            Client::ws(s.ws_addrs[0]).await
        } else {
            Client::tcp(s.tcp_addrs[0]).await
        };
        for _ in 0..100 {
            c.send(Op::HEARTBEAT, b"").await;
        }
        let code = c.close_code().await;
        if ws {
            assert_eq!(code, Some(ws::close::POLICY_VIOLATION));
        }
        still_receives(&s, &mut calm, "before-auth").await;
    }
    s.shutdown().await;
}
