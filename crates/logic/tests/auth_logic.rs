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

/// A logic with `auth`, routes in `store`, an in-memory queue.
async fn logic_with(
    auth: Arc<dyn herald_logic::Authenticator>,
    store: &Arc<MemoryStore>,
) -> Arc<Logic> {
    Logic::new(
        LogicConfig::default(),
        auth,
        store.clone(),
        store.clone(),
        Arc::new(MemoryQueue::new(16, Duration::from_secs(1))),
        Arc::new(LocalRegistry::new()),
        None,
    )
    .await
    .unwrap()
}

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
    let logic = logic_with(started.auth.clone(), &store).await;
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

/// Answers an answered connection's frames: op N with op N + 1 and the body
/// upper-cased; op 99 cannot be asked about.
struct Shouting;

#[async_trait::async_trait]
impl herald_logic::Authenticator for Shouting {
    async fn authenticate(
        &self,
        _: &herald_rpc::ConnectReq,
    ) -> herald_rpc::RpcResult<herald_logic::Identity> {
        Err(herald_rpc::RpcError::new(ErrorKind::Unauthenticated, "no"))
    }

    async fn answer(
        &self,
        req: &herald_rpc::ReceiveReq,
    ) -> herald_rpc::RpcResult<Option<herald_rpc::Proto>> {
        let p = req.proto.clone().unwrap();
        if p.op == 99 {
            return Err(herald_rpc::RpcError::unavailable("down"));
        }
        Ok(Some(herald_rpc::Proto {
            op: p.op + 1,
            body: p.body.to_ascii_uppercase().into(),
            ..p
        }))
    }

    fn mode(&self) -> &'static str {
        "shouting"
    }
}

#[tokio::test]
async fn frames_read_together_are_answered_one_by_one_in_order() {
    let store = Arc::new(MemoryStore::new(Duration::from_secs(60)));
    let logic = logic_with(Arc::new(Shouting), &store).await;
    let frame = |op: i32, seq: i32, body: &'static str| herald_rpc::Proto {
        ver: 1,
        op,
        seq,
        body: bytes::Bytes::from_static(body.as_bytes()),
    };
    // One frame: its reply.
    let reply = logic
        .receive(herald_rpc::ReceiveReq {
            mid: 7,
            proto: Some(frame(4, 1, "one")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.proto, Some(frame(5, 1, "ONE")));
    assert!(reply.more.is_empty());
    // Frames read together: a reply each, in order; the one that could not be
    // asked about gets op 0 (the empty echo) and the next is still answered.
    let reply = logic
        .receive(herald_rpc::ReceiveReq {
            mid: 7,
            proto: Some(frame(4, 2, "two")),
            more: vec![frame(99, 3, "three"), frame(18, 4, "four")],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.proto, Some(frame(5, 2, "TWO")));
    assert_eq!(
        reply.more,
        vec![herald_rpc::Proto::default(), frame(19, 4, "FOUR")]
    );
    // Replies past the budget's bytes: the frames after them are left for
    // comet to ask about again (no reply).
    let half = bytes::Bytes::from(vec![b'a'; herald_logic::AnswerBudget::BYTES / 2]);
    let large = |seq: i32| herald_rpc::Proto {
        ver: 1,
        op: 4,
        seq,
        body: half.clone(),
    };
    let reply = logic
        .receive(herald_rpc::ReceiveReq {
            mid: 7,
            proto: Some(large(5)),
            more: vec![large(6), large(7), large(8)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.proto.unwrap().seq, 5);
    let answered: Vec<i32> = reply.more.iter().map(|p| p.seq).collect();
    assert_eq!(answered, vec![6], "two halves spend the budget");
}
