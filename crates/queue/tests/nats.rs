//! The NATS JetStream queue against a real, private nats-server.
#![allow(clippy::unwrap_used)]

// `cargo test -p herald-queue` turns the feature on (herald-queue is its own
// dev-dependency with it); this file never compiles to no tests.
#[cfg(not(feature = "nats"))]
compile_error!(
    "tests/nats.rs tests the NATS JetStream backend: build herald-queue with its `nats` feature"
);

use std::time::Duration;

use herald_queue::{conformance, NatsConfig, NatsQueue, Queue, QueueErrorKind};

async fn queue(nats: &herald_testkit::Engine, name: &str) -> NatsQueue {
    queue_with(nats, name, 1).await
}

async fn queue_with(nats: &herald_testkit::Engine, name: &str, partitions: u32) -> NatsQueue {
    NatsQueue::connect(NatsConfig {
        url: nats.nats_url(),
        stream: name.into(),
        subject: format!("herald.{name}"),
        durable: "herald-job".into(),
        ack_wait: Duration::from_secs(1),
        max_messages: 100_000,
        partitions,
        publish_timeout: Duration::from_secs(2),
        auth: Default::default(),
        tls: Default::default(),
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn ordered_per_key() {
    let nats = herald_testkit::nats();
    conformance::ordered_per_key(&queue(&nats, "S1").await)
        .await
        .unwrap();
}

#[tokio::test]
async fn competing_consumers() {
    let nats = herald_testkit::nats();
    conformance::competing_consumers(&queue(&nats, "S2").await)
        .await
        .unwrap();
}

/// Pull consumers of the one durable side by side: each gets some, none twice.
#[tokio::test]
async fn every_consumer_gets_work() {
    let nats = herald_testkit::nats();
    conformance::every_consumer_gets_work(&queue(&nats, "SW").await)
        .await
        .unwrap();
}

/// Consumers of every partition side by side (`consumer()` reads them all).
#[tokio::test]
async fn every_consumer_gets_work_over_partitions() {
    let nats = herald_testkit::nats();
    conformance::every_consumer_gets_work(&queue_with(&nats, "SWP", 4).await)
        .await
        .unwrap();
}

/// A message delivered to a consumer that died before acknowledging it is
/// delivered again after `ack_wait`.
#[tokio::test]
async fn unacknowledged_is_redelivered() {
    let nats = herald_testkit::nats();
    let q = queue(&nats, "S3").await;
    conformance::unacknowledged_is_redelivered(&q, tokio::time::sleep(Duration::from_millis(200)))
        .await
        .unwrap();
}

/// With the server down, publishing reports an error instead of succeeding.
#[tokio::test]
async fn publish_fails_while_nats_is_down() {
    let mut nats = herald_testkit::nats();
    let q = queue(&nats, "S4").await;
    q.publish("k", bytes::Bytes::from_static(b"ok"))
        .await
        .unwrap();
    nats.kill();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        q.publish("k", bytes::Bytes::from_static(b"lost?")),
    )
    .await
    .expect("publish returns instead of hanging")
    .unwrap_err();
    assert_eq!(err.kind(), QueueErrorKind::Unavailable, "{err:?}");
    assert_eq!(err.engine(), Some("nats"));
}

#[tokio::test]
async fn partitions_divide_keys() {
    let nats = herald_testkit::nats();
    let q = queue_with(&nats, "SP", 4).await;
    conformance::partitions_divide_keys(&q).await.unwrap();
}

#[tokio::test]
async fn each_partition_keeps_its_keys() {
    let nats = herald_testkit::nats();
    let q = queue_with(&nats, "SK", 4).await;
    conformance::each_partition_keeps_its_keys(&q)
        .await
        .unwrap();
}

#[tokio::test]
async fn ordered_per_key_over_partitions() {
    let nats = herald_testkit::nats();
    conformance::ordered_per_key(&queue_with(&nats, "SO", 4).await)
        .await
        .unwrap();
}

#[tokio::test]
async fn idle_consumer_waits() {
    let nats = herald_testkit::nats();
    conformance::idle_consumer_waits(&queue(&nats, "SIDLE").await)
        .await
        .unwrap();
}
