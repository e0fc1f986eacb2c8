//! `herald standalone` uses the store and queue it is configured with (an embedded
//! core against a real Redis), and refuses a cluster registry it could not use.

use std::time::Duration;

use herald::config::{DiscoveryBackend, QueueBackend, StoreBackend};
use herald::Standalone;

use crate::support::*;

#[tokio::test]
async fn standalone_refuses_a_cluster_registry() {
    let mut cfg = test_config();
    cfg.discovery.backend = DiscoveryBackend::Etcd;
    let err = match Standalone::start(cfg).await {
        Ok(_) => panic!("standalone started with discovery.backend = etcd"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("discovery.backend"), "{err}");
    assert!(err.contains("cluster roles"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_pushes_through_the_configured_redis() {
    let mut redis = herald_testkit::redis();
    let mut cfg = test_config();
    cfg.store.backend = StoreBackend::Redis;
    cfg.store.redis_url = redis.redis_url();
    cfg.queue.backend = QueueBackend::Redis;
    cfg.queue.redis.url = redis.redis_url();
    let s = start_with(cfg).await;
    assert_eq!(get(s.http_addr, "/readyz").await.status, 200);

    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(7, "key-7", "live://7", &[1000]).await;
    // A key push needs the route in the Redis store; a room push goes through the
    // Redis Streams queue (divided into partitions the job claims for itself).
    let r = post(
        s.http_addr,
        "/goim/push/keys?operation=1000&keys=key-7",
        b"k",
    )
    .await;
    assert_eq!(r.json()["code"], 0, "{}", r.text());
    assert_eq!(&c.recv_push().await.body[..], b"k");
    let r = post(
        s.http_addr,
        "/goim/push/room?operation=1000&type=live&room=7",
        b"r",
    )
    .await;
    assert_eq!(r.json()["code"], 0, "{}", r.text());
    assert_eq!(&c.recv_push().await.body[..], b"r");

    // Without Redis a push is refused, not answered with success, and readiness
    // says which engine is missing.
    redis.kill();
    let r = post(
        s.http_addr,
        "/goim/push/room?operation=1000&type=live&room=7",
        b"x",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = get(s.http_addr, "/readyz").await;
        if ready.status == 503 {
            assert!(
                ready.text().contains("queue") || ready.text().contains("store"),
                "{}",
                ready.text()
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready without Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.shutdown().await;
}
