//! The Redis Streams queue against a real, private redis-server.
#![allow(clippy::unwrap_used)]

// `cargo test -p herald-queue` turns the feature on (herald-queue is its own
// dev-dependency with it); this file never compiles to no tests.
#[cfg(not(feature = "redis"))]
compile_error!(
    "tests/redis_streams.rs tests the Redis Streams backend: build herald-queue with its `redis` feature"
);

use std::time::Duration;

use herald_queue::{conformance, Queue, QueueErrorKind, RedisStreamsConfig, RedisStreamsQueue};

async fn queue(redis: &herald_testkit::Engine, stream: &str) -> RedisStreamsQueue {
    queue_with(redis, stream, 1).await
}

async fn queue_with(
    redis: &herald_testkit::Engine,
    stream: &str,
    partitions: u32,
) -> RedisStreamsQueue {
    RedisStreamsQueue::connect(RedisStreamsConfig {
        url: redis.redis_url(),
        tls: Default::default(),
        stream: stream.into(),
        group: "herald-job".into(),
        max_len: 100_000,
        claim_idle: Duration::from_millis(500),
        consumer_name: "test".into(),
        partitions,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn ordered_per_key() {
    let redis = herald_testkit::redis();
    conformance::ordered_per_key(&queue(&redis, "s1").await)
        .await
        .unwrap();
}

#[tokio::test]
async fn competing_consumers() {
    let redis = herald_testkit::redis();
    conformance::competing_consumers(&queue(&redis, "s2").await)
        .await
        .unwrap();
}

/// Consumers of the one stream side by side: each gets some of it, no entry twice.
#[tokio::test]
async fn every_consumer_gets_work() {
    let redis = herald_testkit::redis();
    conformance::every_consumer_gets_work(&queue(&redis, "sw").await)
        .await
        .unwrap();
}

/// Consumers of every partition side by side (`consumer()` reads them all).
#[tokio::test]
async fn every_consumer_gets_work_over_partitions() {
    let redis = herald_testkit::redis();
    conformance::every_consumer_gets_work(&queue_with(&redis, "swp", 4).await)
        .await
        .unwrap();
}

/// An entry read by a consumer that died before acknowledging it is reclaimed by
/// another consumer of the group.
#[tokio::test]
async fn unacknowledged_is_redelivered() {
    let redis = herald_testkit::redis();
    let q = queue(&redis, "s3").await;
    conformance::unacknowledged_is_redelivered(&q, tokio::time::sleep(Duration::from_millis(600)))
        .await
        .unwrap();
}

/// With Redis down, publishing reports an error instead of succeeding.
#[tokio::test]
async fn publish_fails_while_redis_is_down() {
    let mut redis = herald_testkit::redis();
    let q = queue(&redis, "s4").await;
    q.publish("k", bytes::Bytes::from_static(b"ok"))
        .await
        .unwrap();
    redis.kill();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        q.publish("k", bytes::Bytes::from_static(b"lost?")),
    )
    .await
    .expect("publish returns instead of hanging")
    .unwrap_err();
    assert_eq!(err.kind(), QueueErrorKind::Unavailable, "{err:?}");
    assert_eq!(err.engine(), Some("redis"));
}

#[tokio::test]
async fn partitions_divide_keys() {
    let redis = herald_testkit::redis();
    let q = queue_with(&redis, "sp", 4).await;
    conformance::partitions_divide_keys(&q).await.unwrap();
}

#[tokio::test]
async fn each_partition_keeps_its_keys() {
    let redis = herald_testkit::redis();
    let q = queue_with(&redis, "sk", 4).await;
    conformance::each_partition_keeps_its_keys(&q)
        .await
        .unwrap();
}

#[tokio::test]
async fn ordered_per_key_over_partitions() {
    let redis = herald_testkit::redis();
    conformance::ordered_per_key(&queue_with(&redis, "so", 4).await)
        .await
        .unwrap();
}

/// Redis restarted without persistence: the streams and the group are gone. The
/// consumer recreates them and delivers what is published afterwards.
#[tokio::test]
async fn consumer_recovers_after_an_empty_restart() {
    let mut redis = herald_testkit::redis();
    let port = redis.addr.port();
    let q = queue_with(&redis, "sr", 2).await;
    let mut c = q.consumer().await.unwrap();
    redis.kill();
    let _back = herald_testkit::redis_on(port);
    let published = async {
        loop {
            if q.publish("k", bytes::Bytes::from_static(b"after"))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), published)
        .await
        .expect("publish works again after the restart");
    let d = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match c.next().await {
                Ok(d) => return d,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the consumer delivers after the restart");
    assert_eq!(&d.payload[..], b"after");
    d.ack().await.unwrap();
}

/// A consumer idle for longer than one blocking read neither fails nor misses
/// the next entry (the read's reply must outlast its block time).
#[tokio::test]
async fn idle_consumer_waits() {
    let redis = herald_testkit::redis();
    conformance::idle_consumer_waits(&queue(&redis, "idle").await)
        .await
        .unwrap();
}

/// After Redis restarts empty, a push can recreate its stream (`XADD`) before any
/// job has recreated the group; a job connecting then still gets that push.
#[tokio::test]
async fn push_before_the_group_is_recreated_is_kept() {
    let mut redis = herald_testkit::redis();
    let port = redis.addr.port();
    let logic = queue_with(&redis, "sg", 2).await;
    redis.kill();
    let back = herald_testkit::redis_on(port);
    let published = async {
        while logic
            .publish("k", bytes::Bytes::from_static(b"early"))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), published)
        .await
        .expect("publish works again after the restart");
    let job = queue_with(&back, "sg", 2).await;
    let mut c = job.consumer().await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("the push published before the group existed arrives")
        .unwrap();
    assert_eq!(&d.payload[..], b"early");
    d.ack().await.unwrap();
}
