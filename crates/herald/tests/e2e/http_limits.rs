//! The HTTP listener's limits, seen from the wire: idle and header timers, the
//! connection cap, connections per address (and per client behind a trusted
//! proxy), and the recipient and head-size limits.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    let mut cfg = test_config();
    cfg.limits.http.idle_timeout = Duration::from_millis(400);
    let s = start_with(cfg).await;
    let before = limit_hits("http_idle_timeout");
    let mut conn = TcpStream::connect(s.http_addr).await.unwrap();
    write_request(&mut conn, "GET", "/goim/online/total", &[], b"").await;
    assert_eq!(read_response(&mut conn).await.json()["code"], 0);
    // Still open for a second request inside the idle time.
    write_request(&mut conn, "GET", "/goim/online/total", &[], b"").await;
    assert_eq!(read_response(&mut conn).await.json()["code"], 0);
    let idle_from = Instant::now();
    wait_closed(&mut conn).await;
    assert!(
        idle_from.elapsed() >= Duration::from_millis(350),
        "closed after {:?}",
        idle_from.elapsed()
    );
    assert!(limit_hits("http_idle_timeout") > before);
    s.shutdown().await;
}

/// A request whose body never comes holds its connection only for the request
/// time, and does not keep others from pushing.
#[tokio::test]
async fn a_body_that_never_comes_is_cut_off() {
    let mut cfg = test_config();
    cfg.limits.http.request_timeout = Duration::from_millis(400);
    let s = start_with(cfg).await;
    let before = limit_hits("http_request_timeout");
    let mut conn = TcpStream::connect(s.http_addr).await.unwrap();
    conn.write_all(
        b"POST /goim/push/all?operation=1000 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial",
    )
    .await
    .unwrap();
    let started = Instant::now();
    // Meanwhile another client pushes as usual.
    assert_eq!(
        post(s.http_addr, "/goim/push/all?operation=1000", b"ok")
            .await
            .status,
        200
    );
    wait_closed(&mut conn).await;
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(limit_hits("http_request_timeout") > before);
    s.shutdown().await;
}

#[tokio::test]
async fn a_head_sent_byte_by_byte_is_cut_off_with_408() {
    let mut cfg = test_config();
    cfg.limits.http.header_timeout = Duration::from_millis(500);
    let s = start_with(cfg).await;
    let before = limit_hits("http_header_timeout");
    let conn = TcpStream::connect(s.http_addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let started = Instant::now();
    // Never finishes its head: one byte every 50 ms, forever.
    let drip = tokio::spawn(async move {
        let head = b"POST /goim/push/all?operation=1000 HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        for b in head.iter().chain(std::iter::repeat(&b'a')) {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Meanwhile the API serves others.
    assert_eq!(
        get(s.http_addr, "/goim/online/total").await.json()["code"],
        0
    );
    let r = read_response(&mut rd).await;
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.json()["code"], -408);
    assert!(started.elapsed() >= Duration::from_millis(450));
    wait_closed(&mut rd).await;
    drip.abort();
    assert!(limit_hits("http_header_timeout") > before);
    s.shutdown().await;
}

#[tokio::test]
async fn at_the_connection_cap_a_pusher_waits_for_a_free_slot() {
    let mut cfg = test_config();
    cfg.limits.http.max_connections = 3;
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(1, "cap-1", "", &[1000]).await;
    let before = limit_hits("http_connections");
    // Three kept-alive connections, each proven accepted by an answer.
    let mut hogs = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(h).await.unwrap();
        write_request(&mut conn, "GET", "/goim/online/total", &[], b"").await;
        assert_eq!(read_response(&mut conn).await.status, 200);
        hogs.push(conn);
    }
    eventually("the listener to reach its cap", || async {
        limit_hits("http_connections") > before
    })
    .await;
    // A fourth connection waits in the backlog: its push is not answered...
    let mut pusher = tokio::spawn(async move {
        post(
            h,
            "/goim/push/keys?operation=1000&keys=cap-1",
            b"after the cap",
        )
        .await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut pusher)
            .await
            .is_err(),
        "a connection over the cap was served"
    );
    // ...until a slot is released; then it is served, and delivered.
    hogs.pop();
    let r = pusher.await.unwrap();
    assert_eq!(r.json(), json!({"code": 0, "message": ""}));
    assert_eq!(&c.recv_push().await.body[..], b"after the cap");
    s.shutdown().await;
}

#[tokio::test]
async fn silent_connections_at_the_cap_are_reclaimed_for_a_pusher() {
    let mut cfg = test_config();
    cfg.limits.http.max_connections = 3;
    cfg.limits.http.header_timeout = Duration::from_millis(300);
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(1, "cap-2", "", &[1000]).await;
    // Connections that never send a byte hold every slot...
    let mut hogs = Vec::new();
    for _ in 0..3 {
        hogs.push(TcpStream::connect(h).await.unwrap());
    }
    // ...and still the pusher gets through once the header timer (a new
    // connection owes its first request within it) frees one.
    let r = post(h, "/goim/push/keys?operation=1000&keys=cap-2", b"reclaimed").await;
    assert_eq!(r.json(), json!({"code": 0, "message": ""}));
    assert_eq!(&c.recv_push().await.body[..], b"reclaimed");
    // They asked nothing and are told nothing: closed without an answer.
    for hog in &mut hogs {
        let mut got = Vec::new();
        let r = tokio::time::timeout(WAIT, hog.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "a silent connection was kept open");
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    s.shutdown().await;
}

#[tokio::test]
async fn connections_per_ip_are_limited() {
    let mut cfg = test_config();
    cfg.limits.http.connections_per_ip = 2;
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let before = limit_hits("http_connections_per_ip");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(h).await.unwrap();
        write_request(&mut conn, "GET", "/goim/online/total", &[], b"").await;
        assert_eq!(read_response(&mut conn).await.status, 200);
        held.push(conn);
    }
    // X-Forwarded-For from a peer that is not a trusted proxy changes nothing.
    let r = http_with(
        h,
        "GET",
        "/goim/online/total",
        &[("X-Forwarded-For", "198.51.100.1")],
        b"",
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["code"], -429);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("connections_per_ip"));
    assert!(limit_hits("http_connections_per_ip") > before);
    held.pop();
    eventually("a released slot to be usable", || async {
        get(h, "/goim/online/total").await.status == 200
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_counted_by_forwarded_address() {
    let mut cfg = test_config();
    cfg.limits.http.connections_per_ip = 1;
    cfg.limits.trusted_proxies =
        herald_limits::TrustedProxies(vec!["127.0.0.0/8".parse().unwrap()]);
    let s = start_with(cfg).await;
    let h = s.http_addr;
    // The proxy's own connections are not capped per address.
    let mut pool = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(h).await.unwrap();
        write_request(&mut conn, "GET", "/goim/online/total", &[], b"").await;
        assert_eq!(read_response(&mut conn).await.status, 200);
        pool.push(conn);
    }
    // A request from client 203.0.113.7 in progress (its body has not arrived)...
    let xff = [("X-Forwarded-For", "192.0.2.1, 203.0.113.7")];
    let mut slow = pool.pop().unwrap();
    slow.write_all(
        b"POST /goim/push/all?operation=1000 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    // ...so a second one from the same client is refused while it lasts (the
    // rightmost untrusted address is the client; the left one is its claim)...
    eventually("the slow request to be counted", || async {
        http_with(h, "GET", "/goim/online/total", &xff, b"")
            .await
            .status
            == 429
    })
    .await;
    let r = http_with(h, "GET", "/goim/online/total", &xff, b"").await;
    assert_eq!(r.json()["code"], -429);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("203.0.113.7"));
    // ...while another client behind the same proxy is served.
    let other = [("X-Forwarded-For", "203.0.113.8")];
    assert_eq!(
        http_with(h, "GET", "/goim/online/total", &other, b"")
            .await
            .status,
        200
    );
    // Once its request completes, the client is admitted again.
    slow.write_all(b"hello").await.unwrap();
    assert_eq!(read_response(&mut slow).await.json()["code"], 0);
    assert_eq!(
        http_with(h, "GET", "/goim/online/total", &xff, b"")
            .await
            .status,
        200
    );
    s.shutdown().await;
}

#[tokio::test]
async fn recipient_and_head_limits() {
    let mut cfg = test_config();
    cfg.limits.http.max_recipients = 3;
    cfg.limits.http.max_header_bytes = 16 * 1024;
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let r = post(h, "/goim/push/keys?keys=a&keys=b&keys=c&keys=d", b"x").await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["code"], -400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("max_recipients"));
    let r = post(h, "/goim/push/mids?mids=1&mids=2&mids=3&mids=4", b"x").await;
    assert_eq!(r.status, 413);
    let r = post(h, "/herald/push/mids", br#"{"mids":[1,2,3,4],"msg":"x"}"#).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        post(h, "/goim/push/keys?keys=a&keys=b&keys=c", b"x")
            .await
            .status,
        200
    );

    // A head over max_header_bytes: 431 in the envelope, pointing at the JSON pushes.
    let before = limit_hits("http_header_bytes");
    let long: String = (0..2000).map(|i| format!("keys=k{i:05}&")).collect();
    let r = post(h, &format!("/goim/push/keys?{long}"), b"x").await;
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.json()["code"], -431);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("/herald/push/keys"));
    assert!(limit_hits("http_header_bytes") > before);
    s.shutdown().await;

    // With the default head limit, a target over 64 KiB: 414 in the envelope.
    let s = start().await;
    let long: String = (0..7000).map(|i| format!("keys=k{i:05}&")).collect();
    let r = post(s.http_addr, &format!("/goim/push/keys?{long}"), b"x").await;
    assert_eq!(r.status, 414, "{}", r.text());
    assert_eq!(r.json()["code"], -414);
    // Just under hyper's target limit still works (and counts its keys).
    let fits: String = (0..5000).map(|i| format!("keys=k{i:05}&")).collect();
    let r = post(s.http_addr, &format!("/goim/push/keys?{fits}"), b"x").await;
    assert_eq!(r.json()["code"], 0, "{}", r.text());
    s.shutdown().await;
}
