//! logic's route bookkeeping on tokio's paused clock (the in-process store keeps
//! time on it): a route lives `store.route_ttl` after its last heartbeat, a
//! heartbeat extends it, and once it is gone a key push reaches no one.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_discovery::LocalRegistry;
use herald_logic::auth::AuthConfig;
use herald_logic::{Logic, LogicConfig};
use herald_queue::{MemoryQueue, Queue};
use herald_rpc::{DisconnectReq, HeartbeatReq, LogicService};
use herald_store::{MemoryStore, SessionStore};
use serde_json::json;
use support::*;

const TTL: Duration = Duration::from_secs(60);

async fn logic() -> (Arc<Logic>, Arc<MemoryStore>, Arc<MemoryQueue>, Started) {
    let started = start(AuthConfig::default()).await;
    let store = Arc::new(MemoryStore::new(TTL));
    let queue = Arc::new(MemoryQueue::new(16, Duration::from_secs(1)));
    let logic = Logic::new(
        LogicConfig::default(),
        started.auth.clone(),
        store.clone(),
        store.clone(),
        queue.clone(),
        Arc::new(LocalRegistry::new()),
        None,
    )
    .await
    .unwrap();
    (logic, store, queue, started)
}

async fn server_of(store: &MemoryStore, key: &str) -> Option<String> {
    store.servers_by_keys(&[key.to_string()]).await.unwrap()[0].clone()
}

#[tokio::test(start_paused = true)]
async fn a_route_lives_route_ttl_after_its_last_heartbeat() {
    let (logic, store, queue, started) = logic().await;
    let reply = logic
        .connect(connect_req(
            &json!({"mid": 7, "key": "k7", "room_id": "live://1"}),
        ))
        .await
        .unwrap();
    assert_eq!((reply.mid, reply.key.as_str()), (7, "k7"));
    assert_eq!(server_of(&store, "k7").await.as_deref(), Some("comet-1"));

    // A heartbeat just before the end starts the time again.
    tokio::time::sleep(TTL - Duration::from_secs(1)).await;
    let hb = HeartbeatReq {
        mid: 7,
        key: "k7".into(),
        server: "comet-1".into(),
    };
    logic.heartbeat(hb).await.unwrap();
    tokio::time::sleep(TTL - Duration::from_secs(1)).await;
    assert_eq!(server_of(&store, "k7").await.as_deref(), Some("comet-1"));
    // Without another one the route is gone one TTL after the heartbeat.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server_of(&store, "k7").await, None);

    // A push to the key now reaches no one: nothing is queued for a comet.
    logic
        .push_keys(1000, &["k7".to_string()], Bytes::from_static(b"x"))
        .await
        .unwrap_or_default();
    assert_eq!(queue.depth(), Some(0));
    started.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_disconnect_removes_the_route_at_once_and_only_its_own() {
    let (logic, store, queue, started) = logic().await;
    for server in ["comet-1", "comet-2"] {
        let mut req = connect_req(&json!({"mid": 8, "key": "k8", "room_id": "live://1"}));
        req.server = server.into();
        logic.connect(req).await.unwrap();
    }
    // The key moved to comet-2; comet-1's late disconnect must not remove it.
    let gone = |server: &str| DisconnectReq {
        mid: 8,
        key: "k8".into(),
        server: server.into(),
    };
    logic.disconnect(gone("comet-1")).await.unwrap();
    assert_eq!(server_of(&store, "k8").await.as_deref(), Some("comet-2"));
    logic.disconnect(gone("comet-2")).await.unwrap();
    assert_eq!(server_of(&store, "k8").await, None);
    logic
        .push_keys(1000, &["k8".to_string()], Bytes::from_static(b"x"))
        .await
        .unwrap_or_default();
    assert_eq!(queue.depth(), Some(0));
    started.shutdown().await;
}
