//! Connect authentication end to end: a standalone server in `jwt` mode lets in
//! clients with a valid token (in the auth body, or in the WebSocket URL) as the
//! member the token names, closes connections with a forged token before any auth
//! reply, and keeps serving everybody else meanwhile.

use std::time::{SystemTime, UNIX_EPOCH};

use herald_logic::auth::AuthMode;
use herald_proto::Op;
use serde_json::{json, Value};

use crate::support::*;

const SECRET: &str = "an-e2e-secret-of-at-least-32-bytes!";

fn token_for(mid: i64, key: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jwt_hs256(
        &json!({"sub": mid.to_string(), "key": key, "exp": exp}),
        SECRET,
    )
}

/// Sends the auth frame and expects the empty auth reply.
async fn auth_with(c: &mut Client, body: &Value) {
    let seq = c.send(Op::AUTH, body.to_string().as_bytes()).await;
    let f = c.recv().await.expect("auth reply");
    assert_eq!((f.op, f.seq, f.body.len()), (Op::AUTH_REPLY, seq, 0));
}

async fn push_mid(s: &herald::Standalone, mid: i64, body: &[u8]) {
    let r = post(
        s.http_addr,
        &format!("/goim/push/mids?operation=1000&mids={mid}"),
        body,
    )
    .await;
    assert_eq!(r.json()["code"], 0, "{}", r.text());
}

#[tokio::test]
async fn jwt_mode_admits_valid_tokens_and_closes_forged_ones() {
    let mut cfg = test_config();
    cfg.auth.mode = AuthMode::Jwt;
    cfg.auth.jwt.secret = SECRET.into();
    let s = start_with(cfg).await;
    let ws = s.ws_addrs[0];

    // Token in the auth body; the body's own mid agrees.
    let mut a = Client::ws(ws).await;
    auth_with(
        &mut a,
        &json!({"mid": 42, "token": token_for(42, "key-a"), "accepts": [1000]}),
    )
    .await;
    push_mid(&s, 42, b"to-42").await;
    let f = a.recv_push().await;
    assert_eq!((f.op, &f.body[..]), (1000, &b"to-42"[..]));

    // Token in the URL, nothing but accepts in the body.
    let mut b = Client::ws_at(ws, &format!("/sub?token={}", token_for(43, "key-b"))).await;
    auth_with(&mut b, &json!({"accepts": [1000]})).await;
    push_mid(&s, 43, b"to-43").await;
    assert_eq!(&b.recv_push().await.body[..], b"to-43");

    // A forged token (another secret), over WebSocket and over TCP: closed with no
    // auth reply.
    let forged = jwt_hs256(
        &json!({"sub": "42", "exp": 4_000_000_000u64}),
        "not-the-server-secret-but-long-enough!",
    );
    let mut c = Client::ws(ws).await;
    c.send(
        Op::AUTH,
        json!({"mid": 42, "token": forged}).to_string().as_bytes(),
    )
    .await;
    assert!(
        c.recv_wire().await.is_none(),
        "a frame was sent to a forged client"
    );
    let mut t = Client::tcp(s.tcp_addrs[0]).await;
    t.send(
        Op::AUTH,
        json!({"mid": 42, "token": forged}).to_string().as_bytes(),
    )
    .await;
    assert!(
        t.recv_wire().await.is_none(),
        "a frame was sent to a forged client"
    );
    // goim's plain auth body (no token) is refused the same way.
    let mut g = Client::ws(ws).await;
    g.send(Op::AUTH, &auth_body(42, "key-a", "", &[1000])).await;
    assert!(
        g.recv_wire().await.is_none(),
        "a frame was sent to a client without a token"
    );

    // The admitted clients kept their connections and still receive pushes.
    push_mid(&s, 42, b"still-42").await;
    assert_eq!(&a.recv_push().await.body[..], b"still-42");
    push_mid(&s, 43, b"still-43").await;
    assert_eq!(&b.recv_push().await.body[..], b"still-43");
    s.shutdown().await;
}
