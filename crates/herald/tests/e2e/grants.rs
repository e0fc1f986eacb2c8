//! What a token grants is what a connection may do: rooms, ops and time. Checked
//! against a standalone server in `jwt` mode, with a bystander that must keep
//! receiving while others are refused.

use std::time::Duration;

use herald_logic::auth::AuthMode;
use herald_proto::{ws, Op};
use serde_json::{json, Value};

use crate::support::*;

const SECRET: &str = "grants-test-secret-of-32-bytes-or-more";

async fn jwt_server() -> herald::Standalone {
    let mut cfg = test_config();
    cfg.auth.mode = AuthMode::Jwt;
    cfg.auth.jwt.secret = SECRET.into();
    // Expiry tests run against the token's own exp, not the skew tolerance.
    cfg.auth.jwt.leeway = Duration::ZERO;
    start_with(cfg).await
}

fn token(claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(unix_now() + 600);
    }
    jwt_hs256(&claims, SECRET)
}

/// Authenticates with `body` and returns the auth reply's op (None when closed).
async fn try_auth(c: &mut Client, body: Value) -> Option<i32> {
    c.send(Op::AUTH, body.to_string().as_bytes()).await;
    c.recv().await.map(|f| f.op)
}

async fn connect(s: &herald::Standalone, body: Value) -> Client {
    let mut c = Client::ws(s.ws_addrs[0]).await;
    assert_eq!(try_auth(&mut c, body).await, Some(Op::AUTH_REPLY));
    c
}

async fn bystander(s: &herald::Standalone) -> Client {
    connect(
        s,
        json!({"token": token(json!({"sub": "900", "key": "bystander"})), "accepts": [1000]}),
    )
    .await
}

async fn still_receives(s: &herald::Standalone, c: &mut Client, body: &str) {
    let r = post(
        s.http_addr,
        "/goim/push/mids?operation=1000&mids=900",
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.json()["code"], 0);
    assert_eq!(c.recv_push().await.body, body.as_bytes());
}

async fn room_push(s: &herald::Standalone, room: &str, body: &str) {
    let r = post(
        s.http_addr,
        &format!("/goim/push/room?operation=1000&type=live&room={room}"),
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.json()["code"], 0);
}

#[tokio::test]
async fn rooms_outside_the_grant_are_refused() {
    let s = jwt_server().await;
    let mut by = bystander(&s).await;
    let grant = json!({"sub": "1", "key": "roomer", "room": "live://a1", "rooms": ["live://a*"]});
    let mut c = connect(&s, json!({"token": token(grant.clone())})).await;
    // A change outside the grant: the reply names the room still held.
    c.send(Op::CHANGE_ROOM, b"live://b1").await;
    let f = c.recv().await.unwrap();
    assert_eq!(
        (f.op, &f.body[..]),
        (Op::CHANGE_ROOM_REPLY, &b"live://a1"[..])
    );
    room_push(&s, "b1", "not for you").await;
    room_push(&s, "a1", "yours").await;
    assert_eq!(&c.recv_push().await.body[..], b"yours");
    // A change inside the grant works as in goim.
    c.send(Op::CHANGE_ROOM, b"live://a2").await;
    let f = c.recv().await.unwrap();
    assert_eq!(
        (f.op, &f.body[..]),
        (Op::CHANGE_ROOM_REPLY, &b"live://a2"[..])
    );
    room_push(&s, "a2", "a2 now").await;
    assert_eq!(&c.recv_push().await.body[..], b"a2 now");
    // Asking for a forbidden room at connect is refused outright (close 1008).
    let mut d = Client::ws(s.ws_addrs[0]).await;
    let grant_d = json!({"sub": "2", "rooms": ["live://a*"]});
    assert_eq!(
        try_auth(
            &mut d,
            json!({"token": token(grant_d), "room_id": "live://b1"})
        )
        .await,
        None
    );
    assert_eq!(d.close_code, Some(ws::close::POLICY_VIOLATION));
    still_receives(&s, &mut by, "rooms").await;
    s.shutdown().await;
}

#[tokio::test]
async fn claims_bind_the_identity() {
    let s = jwt_server().await;
    let mut by = bystander(&s).await;
    // A body mid that disagrees with the token's sub.
    let mut c = Client::ws(s.ws_addrs[0]).await;
    let body = json!({"mid": 2, "token": token(json!({"sub": "1"}))});
    assert_eq!(try_auth(&mut c, body).await, None);
    assert_eq!(c.close_code, Some(ws::close::POLICY_VIOLATION));
    // A body key that disagrees with the token's key.
    let mut c = Client::ws(s.ws_addrs[0]).await;
    let body = json!({"key": "bystander", "token": token(json!({"sub": "1", "key": "mine"}))});
    assert_eq!(try_auth(&mut c, body).await, None);
    // Without a key claim, a body key naming someone else's connection is ignored:
    // the bystander is not kicked off and keeps its pushes.
    let hijack = json!({"key": "bystander", "token": token(json!({"sub": "1"}))});
    let _other = connect(&s, hijack).await;
    still_receives(&s, &mut by, "still mine").await;
    // Expired, and signed with another secret.
    for bad in [
        token(json!({"sub": "1", "exp": unix_now() - 60})),
        jwt_hs256(
            &json!({"sub": "1", "exp": unix_now() + 60}),
            "some-other-secret-that-is-long-enough",
        ),
        "not.a.jwt".to_string(),
    ] {
        let mut c = Client::ws(s.ws_addrs[0]).await;
        assert_eq!(try_auth(&mut c, json!({"token": bad})).await, None);
        assert_eq!(c.close_code, Some(ws::close::POLICY_VIOLATION));
    }
    still_receives(&s, &mut by, "claims").await;
    s.shutdown().await;
}

#[tokio::test]
async fn op_14_adds_only_granted_ops() {
    let s = jwt_server().await;
    let grant = json!({"sub": "1", "key": "subber", "accepts": [1000, 1001]});
    let mut c = connect(&s, json!({"token": token(grant), "accepts": [1000]})).await;
    c.send(Op::SUB, b"1001,2000").await;
    let f = c.recv().await.unwrap();
    assert_eq!((f.op, &f.body[..]), (Op::SUB_REPLY, &b"1001"[..]));
    for op in [2000, 1001] {
        let r = post(
            s.http_addr,
            &format!("/goim/push/mids?operation={op}&mids=1"),
            format!("op {op}").as_bytes(),
        )
        .await;
        assert_eq!(r.json()["code"], 0);
    }
    // Only the granted op arrives.
    let f = c.recv_push().await;
    assert_eq!((f.op, &f.body[..]), (1001, &b"op 1001"[..]));
    s.shutdown().await;
}

#[tokio::test]
async fn credentials_expire_unless_refreshed() {
    let s = jwt_server().await;
    let mut by = bystander(&s).await;
    let soon = unix_now() + 2;
    // Left alone, the connection is closed with 4001 when its token expires.
    let mut lapsing = connect(
        &s,
        json!({"token": token(json!({"sub": "1", "key": "lapse", "exp": soon}))}),
    )
    .await;
    // Refreshed in time, it lives on.
    let mut kept = connect(
        &s,
        json!({"token": token(json!({"sub": "2", "key": "keep", "exp": soon})), "accepts": [1000]}),
    )
    .await;
    let fresh = token(json!({"sub": "2", "key": "keep", "exp": unix_now() + 600}));
    kept.send(Op::REFRESH, json!({"token": fresh}).to_string().as_bytes())
        .await;
    let f = kept.recv().await.unwrap();
    assert_eq!(f.op, Op::REFRESH_REPLY);
    let reply: Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(reply["code"], 0, "{reply}");
    assert!(reply["expires_at"].as_i64().unwrap() > soon);
    // Credentials naming someone else, or forged ones, change nothing.
    let other = token(json!({"sub": "3", "exp": unix_now() + 600}));
    kept.send(Op::REFRESH, json!({"token": other}).to_string().as_bytes())
        .await;
    let reply: Value = serde_json::from_slice(&kept.recv().await.unwrap().body).unwrap();
    assert_eq!(reply["code"], -403, "{reply}");
    kept.send(Op::REFRESH, br#"{"token":"forged.token.here"}"#)
        .await;
    let reply: Value = serde_json::from_slice(&kept.recv().await.unwrap().body).unwrap();
    assert_eq!(reply["code"], -401, "{reply}");

    assert_eq!(lapsing.close_code().await, Some(ws::close::TOKEN_EXPIRED));
    assert_eq!(lapsing.close_reason, "credentials expired");
    // The lapsed one was closed at its expiry, so we are past the first token's:
    // the refreshed connection still gets pushes.
    let r = post(
        s.http_addr,
        "/goim/push/keys?operation=1000&keys=keep",
        b"kept",
    )
    .await;
    assert_eq!(r.json()["code"], 0);
    assert_eq!(&kept.recv().await.unwrap().body[..], b"kept");
    still_receives(&s, &mut by, "expiry").await;
    s.shutdown().await;
}
