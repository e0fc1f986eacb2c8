//! Pushes to streams that keep history get their position before they are
//! queued; members and keys with no connection are still recorded; a push the
//! queue refuses is retracted; comets read history through `LogicService`.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_discovery::LocalRegistry;
use herald_logic::{
    History, HistoryConfig, Logic, LogicConfig, StreamHistory, TrustingAuthenticator,
};
use herald_queue::MemoryQueue;
use herald_rpc::{HistoryReq, LogicService};
use herald_store::{MemoryHistory, MemoryStore, SessionStore};
use support::drain;

fn keep(size: usize) -> StreamHistory {
    StreamHistory {
        size,
        ttl: Duration::from_secs(60),
    }
}

async fn setup(capacity: usize) -> (Arc<Logic>, Arc<MemoryStore>, Arc<MemoryQueue>) {
    let store = Arc::new(MemoryStore::new(Duration::from_secs(60)));
    let queue = Arc::new(MemoryQueue::new(capacity, Duration::from_millis(50)));
    let mut cfg = HistoryConfig::default();
    cfg.rooms.insert("chat".into(), keep(100));
    cfg.mids = Some(keep(100));
    cfg.keys = Some(keep(100));
    let logic = Logic::new(
        LogicConfig::default(),
        Arc::new(TrustingAuthenticator),
        store.clone(),
        store.clone(),
        queue.clone(),
        Arc::new(LocalRegistry::new()),
        Some(History::new(Arc::new(MemoryHistory::new()), cfg)),
    )
    .await
    .unwrap();
    (logic, store, queue)
}

fn read(stream: &str, epoch: &str, since: u64) -> HistoryReq {
    HistoryReq {
        stream: stream.into(),
        epoch: epoch.into(),
        since,
        limit: 0,
    }
}

#[tokio::test]
async fn room_pushes_carry_consecutive_positions_and_rooms_without_history_none() {
    let (logic, _store, queue) = setup(64).await;
    for i in 0..3 {
        logic
            .push_room(1000, "chat", "7", Bytes::from(format!("m{i}")))
            .await
            .unwrap();
    }
    logic
        .push_room(1000, "live", "7", Bytes::from_static(b"live"))
        .await
        .unwrap();
    let msgs = drain(&queue).await;
    let positions: Vec<_> = msgs.iter().map(|m| m.position.clone()).collect();
    let epoch = positions[0].as_ref().unwrap().epoch.clone();
    for (i, p) in positions[..3].iter().enumerate() {
        let p = p.as_ref().unwrap();
        assert_eq!(
            (p.stream.as_str(), p.epoch.as_str(), p.offset),
            ("chat://7", epoch.as_str(), i as u64 + 1)
        );
    }
    assert_eq!(positions[3], None, "live:// keeps no history");

    // What a recovering comet reads: the client frames, in order.
    let r = logic.history(read("chat://7", &epoch, 1)).await.unwrap();
    assert!(r.enabled && r.complete);
    assert_eq!(r.top, 3);
    let frames: Vec<_> = r
        .entries
        .iter()
        .map(|e| (e.offset, herald_proto::raw::unpack(&e.frame).unwrap()))
        .collect();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].0, 2);
    assert_eq!(frames[0].1[0].op, 1000);
    assert_eq!(&frames[1].1[0].body[..], b"m2");
    let off = logic.history(read("live://7", "", 0)).await.unwrap();
    assert!(!off.enabled);
}

#[tokio::test]
async fn members_and_keys_each_have_their_stream_even_when_offline() {
    let (logic, store, queue) = setup(64).await;
    store.add_route(7, "k7a", "comet-a").await.unwrap();
    store.add_route(7, "k7b", "comet-b").await.unwrap();
    logic
        .push_mids(1000, &[7, 8, 7], Bytes::from_static(b"hi"))
        .await
        .unwrap();
    let msgs = drain(&queue).await;
    // Member 7: one position, one message per comet; member 8 is offline.
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        let p = m.position.as_ref().unwrap();
        assert_eq!((p.stream.as_str(), p.offset), ("mid:7", 1));
    }
    let r = logic.history(read("mid:8", "", 0)).await.unwrap();
    assert_eq!(r.top, 1, "an offline member's push is kept for its return");

    logic
        .push_keys(
            1000,
            &["k7a".into(), "gone".into()],
            Bytes::from_static(b"k"),
        )
        .await
        .unwrap();
    let msgs = drain(&queue).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].keys, vec!["k7a".to_string()]);
    let p = msgs[0].position.as_ref().unwrap();
    assert_eq!((p.stream.as_str(), p.offset), ("key:k7a", 1));
    let r = logic.history(read("key:gone", "", 0)).await.unwrap();
    assert_eq!(r.top, 1);
}

#[tokio::test]
async fn a_push_the_queue_refuses_is_retracted() {
    // Room for one message: the second publish times out.
    let (logic, _store, queue) = setup(1).await;
    logic
        .push_room(1000, "chat", "1", Bytes::from_static(b"kept"))
        .await
        .unwrap();
    logic
        .push_room(1000, "chat", "1", Bytes::from_static(b"refused"))
        .await
        .unwrap_err();
    let msgs = drain(&queue).await;
    let epoch = msgs[0].position.as_ref().unwrap().epoch.clone();
    let r = logic.history(read("chat://1", &epoch, 0)).await.unwrap();
    assert_eq!(r.top, 2);
    assert!(r.complete, "a retracted push is not a loss");
    let bodies: Vec<_> = r
        .entries
        .iter()
        .map(|e| herald_proto::raw::unpack(&e.frame).unwrap()[0].body.clone())
        .collect();
    assert_eq!(bodies, vec![Bytes::from_static(b"kept")]);
}
