//! TLS client listeners: secure WebSocket and goim's TCP protocol inside TLS,
//! certificate reloads, and what a client that does not trust the server sees.

use std::net::SocketAddr;

use crate::support::*;
use herald_testkit::pki::Pki;

fn tls_config(pki: &Pki) -> herald::Config {
    let mut cfg = test_config();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    cfg.tls = herald_tls::ServerTls {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        ..Default::default()
    };
    cfg.comet.wss_bind = vec![any];
    cfg.comet.tls_tcp_bind = vec![any];
    cfg
}

#[tokio::test]
async fn wss_and_tls_tcp_carry_goim_frames() {
    let pki = Pki::new();
    let s = start_with(tls_config(&pki)).await;
    let mut wss = Client::wss(s.wss_addrs[0], &pki.ca).await;
    let mut tcp = Client::tls_tcp(s.tls_tcp_addrs[0], &pki.ca).await;
    let mut plain = Client::ws(s.ws_addrs[0]).await;
    wss.auth(1, "wss-1", "live://tls", &[1000]).await;
    tcp.auth(2, "tls-2", "live://tls", &[1000]).await;
    plain.auth(3, "ws-3", "live://tls", &[1000]).await;
    wss.heartbeat_until(3).await;
    let h = s.http_addr;
    // The demo page is told both WebSocket ports (it picks wss on an https page).
    let page = get(h, "/_/config.json").await.json();
    assert_eq!(page["ws_port"], s.ws_addrs[0].port());
    assert_eq!(page["wss_port"], s.wss_addrs[0].port());
    assert_eq!(
        post(
            h,
            "/goim/push/mids?operation=1000&mids=1&mids=2",
            b"to-mids"
        )
        .await
        .status,
        200
    );
    for c in [&mut wss, &mut tcp] {
        let f = c.recv_push().await;
        assert_eq!((f.op, &f.body[..]), (1000, &b"to-mids"[..]));
    }
    // A burst of room pushes arrives whole and in order on every transport.
    for i in 0..50 {
        let r = post(
            h,
            "/goim/push/room?operation=1001&type=live&room=tls",
            format!("m{i}").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    for c in [&mut wss, &mut tcp, &mut plain] {
        for i in 0..50 {
            let f = c.recv_push().await;
            assert_eq!(
                (f.op, String::from_utf8_lossy(&f.body).to_string()),
                (1001, format!("m{i}"))
            );
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn untrusted_or_plaintext_clients_fail_alone() {
    let pki = Pki::new();
    let other = Pki::new();
    let s = start_with(tls_config(&pki)).await;
    let mut healthy = Client::wss(s.wss_addrs[0], &pki.ca).await;
    healthy.auth(1, "healthy", "", &[1000]).await;
    // A client that trusts another CA refuses the server's certificate.
    let Err(e) = Client::tls_stream(s.wss_addrs[0], &other.ca).await else {
        panic!("a client trusting another CA must fail the handshake");
    };
    assert!(e.to_string().contains("certificate"), "{e}");
    // Plain goim frames on the TLS port are not a TLS handshake: only that
    // connection is closed.
    let mut plain = Client::tcp(s.tls_tcp_addrs[0]).await;
    plain.send_socket(&auth_body(9, "plain", "", &[])).await;
    plain.expect_closed().await;
    // The healthy client still receives pushes.
    assert_eq!(
        post(
            s.http_addr,
            "/goim/push/mids?operation=1000&mids=1",
            b"still"
        )
        .await
        .status,
        200
    );
    assert_eq!(&healthy.recv_push().await.body[..], b"still");
    s.shutdown().await;
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_clients_and_keeps_old_ones() {
    let pki = Pki::new();
    let s = start_with(tls_config(&pki)).await;
    let mut old = Client::tls_tcp(s.tls_tcp_addrs[0], &pki.ca).await;
    old.auth(1, "old", "", &[1000]).await;
    // New files from another CA at the same paths, then a reload (what SIGHUP does).
    let next = Pki::new();
    std::fs::copy(&next.server_cert, &pki.server_cert).unwrap();
    std::fs::copy(&next.server_key, &pki.server_key).unwrap();
    assert_eq!(s.reloader().reload_all(), 0, "reload failed");
    // New handshakes get the new certificate ...
    let mut fresh = Client::tls_tcp(s.tls_tcp_addrs[0], &next.ca).await;
    fresh.auth(2, "fresh", "", &[1000]).await;
    assert!(Client::tls_stream(s.tls_tcp_addrs[0], &pki.ca)
        .await
        .is_err());
    // ... and the connection made before the reload keeps working.
    assert_eq!(
        post(
            s.http_addr,
            "/goim/push/mids?operation=1000&mids=1&mids=2",
            b"after"
        )
        .await
        .status,
        200
    );
    assert_eq!(&old.recv_push().await.body[..], b"after");
    assert_eq!(&fresh.recv_push().await.body[..], b"after");
    // A broken file is refused and the current certificate stays in use.
    std::fs::write(&pki.server_cert, "garbage").unwrap();
    assert_eq!(s.reloader().reload_all(), 1);
    let mut again = Client::tls_tcp(s.tls_tcp_addrs[0], &next.ca).await;
    again.auth(3, "again", "", &[]).await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_tls_listener_without_a_certificate_is_a_start_error() {
    let mut cfg = test_config();
    cfg.comet.wss_bind = vec!["127.0.0.1:0".parse().unwrap()];
    let e = herald::Standalone::start(cfg)
        .await
        .err()
        .expect("must not start");
    assert!(format!("{e:#}").contains("tls.cert_file"), "{e:#}");
}

/// Pushes far larger than the socket buffers wait sealed in the TLS session and
/// still arrive whole and in order once the client reads.
#[tokio::test]
async fn large_pushes_survive_a_full_tls_socket() {
    let pki = Pki::new();
    let mut cfg = tls_config(&pki);
    cfg.logic.max_push_body = 8 << 20;
    cfg.limits.client.outbound_bytes = 16 << 20;
    let s = start_with(cfg).await;
    let mut c = Client::wss(s.wss_addrs[0], &pki.ca).await;
    c.auth(1, "big", "", &[1000]).await;
    for i in 0..4u8 {
        let body = vec![b'a' + i; 3 << 20];
        let r = post(
            s.http_addr,
            "/goim/push/keys?operation=1000&keys=big",
            &body,
        )
        .await;
        assert_eq!(r.status, 200);
    }
    for i in 0..4u8 {
        let f = c.recv_push().await;
        assert_eq!(f.body.len(), 3 << 20, "push {i}: bad length");
        assert!(f.body.iter().all(|b| *b == b'a' + i), "push {i}: bad body");
    }
    s.shutdown().await;
}
