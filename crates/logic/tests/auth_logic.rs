//! logic's `Connect` and `Refresh` with a checking authenticator: the reply carries
//! the identity and grant, `Connect` writes the route and generates a key the
//! credentials do not bind, `Refresh` does neither.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald_discovery::LocalRegistry;
use herald_logic::auth::{AuthConfig, AuthMode, JwtConfig};
use herald_logic::{Logic, LogicConfig};
use herald_queue::MemoryQueue;
use herald_rpc::{ErrorKind, LogicService};
use herald_store::{MemoryStore, SessionStore};
use serde_json::json;
use support::*;

#[tokio::test]
async fn connect_writes_routes_and_refresh_does_not() {
    let started = start(AuthConfig {
        mode: AuthMode::Jwt,
        jwt: JwtConfig {
            secret: SECRET.into(),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let store = Arc::new(MemoryStore::new(Duration::from_secs(60)));
    let logic = Logic::new(
        LogicConfig::default(),
        started.auth.clone(),
        store.clone(),
        store.clone(),
        Arc::new(MemoryQueue::new(16, Duration::from_secs(1))),
        Arc::new(LocalRegistry::new()),
        None,
    )
    .await
    .unwrap();
    let signer = Signer::hmac(SECRET);
    let exp = now() + 600;

    // The token binds a key: connect and refresh both answer with it.
    let bound = mint(
        "HS256",
        &json!({"sub": 42, "key": "k-42", "rooms": ["live://*"], "exp": exp}),
        &signer,
    );
    let req = connect_req(&json!({"token": bound, "room_id": "live://1"}));
    let reply = logic.connect(req.clone()).await.unwrap();
    assert_eq!(
        (reply.mid, reply.key.as_str(), reply.room_id.as_str()),
        (42, "k-42", "live://1")
    );
    let grant = reply.grant.unwrap();
    assert_eq!(
        (grant.any_room, grant.rooms.clone(), grant.expires_at),
        (false, vec!["live://*".to_string()], exp + 30)
    );
    assert_eq!(
        store.servers_by_keys(&["k-42".into()]).await.unwrap(),
        vec![Some("comet-1".to_string())]
    );
    assert_eq!(logic.refresh(req).await.unwrap().key, "k-42");

    // No key in the token: connect generates one (and routes it); refresh leaves
    // the key empty (the connection keeps its own) and writes no route.
    let unbound = mint("HS256", &json!({"sub": 43, "exp": exp}), &signer);
    let req = connect_req(&json!({"token": unbound}));
    let reply = logic.connect(req.clone()).await.unwrap();
    assert_eq!(reply.key.len(), 36, "a UUID: {}", reply.key);
    let refreshed = logic.refresh(req).await.unwrap();
    assert_eq!((refreshed.mid, refreshed.key.as_str()), (43, ""));
    assert_eq!(store.keys_by_mids(&[43]).await.unwrap().len(), 1);

    // A refused connect writes nothing.
    let forged = mint(
        "HS256",
        &json!({"sub": 44, "key": "k-44", "exp": exp}),
        &Signer::hmac("another-secret-of-at-least-32-bytes!!"),
    );
    let e = logic
        .connect(connect_req(&json!({"token": forged})))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthenticated);
    assert_eq!(
        store.servers_by_keys(&["k-44".into()]).await.unwrap(),
        vec![None]
    );
    started.shutdown().await;
}
