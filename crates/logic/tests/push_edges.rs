//! What logic queues for goim's edge cases: pushes to no one queue nothing, empty
//! keys are skipped, and a negative broadcast speed is queued as no limit.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_discovery::LocalRegistry;
use herald_logic::{Logic, LogicConfig, TrustingAuthenticator};
use herald_queue::{MemoryQueue, Queue};
use herald_rpc::PushType;
use herald_store::{MemoryStore, SessionStore};
use support::drain;

struct Setup {
    logic: Arc<Logic>,
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
}

async fn setup() -> Setup {
    let store = Arc::new(MemoryStore::new(Duration::from_secs(60)));
    let queue = Arc::new(MemoryQueue::new(16, Duration::from_secs(1)));
    let logic = Logic::new(
        LogicConfig::default(),
        Arc::new(TrustingAuthenticator),
        store.clone(),
        store.clone(),
        queue.clone(),
        Arc::new(LocalRegistry::new()),
        None,
    )
    .await
    .unwrap();
    Setup {
        logic,
        store,
        queue,
    }
}

#[tokio::test]
async fn pushes_to_no_one_queue_nothing() {
    let s = setup().await;
    s.store.add_route(7, "k7", "comet-a").await.unwrap();

    s.logic
        .push_mids(1000, &[], Bytes::from_static(b"x"))
        .await
        .unwrap();
    s.logic
        .push_keys(1000, &[], Bytes::from_static(b"x"))
        .await
        .unwrap();
    s.logic
        .push_keys(1000, &[String::new()], Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(s.queue.depth(), Some(0));

    // Empty keys are skipped among real ones.
    s.logic
        .push_keys(
            1000,
            &[String::new(), "k7".into(), String::new()],
            Bytes::from_static(b"to k7"),
        )
        .await
        .unwrap();
    let queued = drain(&s.queue).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].keys, vec!["k7".to_string()]);
    assert_eq!(queued[0].server, "comet-a");
    assert_eq!(&queued[0].msg[..], b"to k7");
}

#[tokio::test]
async fn negative_broadcast_speed_is_queued_as_no_limit() {
    let s = setup().await;
    for (given, queued) in [(-1, 0), (i32::MIN, 0), (0, 0), (500, 500)] {
        s.logic
            .push_all(1000, given, Bytes::from_static(b"all"))
            .await
            .unwrap();
        let msgs = drain(&s.queue).await;
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].r#type, PushType::Broadcast as i32);
        assert_eq!(msgs[0].speed, queued, "speed {given}");
    }
}
