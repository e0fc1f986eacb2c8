//! The Kafka queue against a real, private Kafka-compatible broker (tansu).
#![allow(clippy::unwrap_used)]

// `cargo test -p herald-queue` turns the feature on (herald-queue is its own
// dev-dependency with it); this file never compiles to no tests.
#[cfg(not(feature = "kafka"))]
compile_error!(
    "tests/kafka.rs tests the Kafka backend: build herald-queue with its `kafka` feature"
);

use std::time::{Duration, Instant};

use herald_queue::{conformance, KafkaConfig, KafkaQueue, Queue, QueueErrorKind};

fn config(kafka: &herald_testkit::Engine, topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: kafka.kafka_brokers(),
        topic: topic.into(),
        group_id: format!("{topic}-job"),
        partitions: 4,
        publish_timeout: Duration::from_secs(3),
        ..KafkaConfig::default()
    }
}

async fn queue(kafka: &herald_testkit::Engine, topic: &str) -> KafkaQueue {
    KafkaQueue::connect(config(kafka, topic)).await.unwrap()
}

#[tokio::test]
async fn ordered_per_key() {
    let kafka = herald_testkit::kafka();
    conformance::ordered_per_key(&queue(&kafka, "t1").await)
        .await
        .unwrap();
}

// `competing_consumers` and `every_consumer_gets_work` are for queues whose
// consumers share a group. Kafka consumers are given partitions by herald (there
// is no group membership; `consumer()` reads every partition), so sharing the
// work is checked by `partitions_divide_keys` and `each_partition_keeps_its_keys`.

/// `consumer()` is one reader of the whole topic: it receives the messages of
/// every partition.
#[tokio::test]
async fn one_consumer_reads_every_partition() {
    let kafka = herald_testkit::kafka();
    let q = queue(&kafka, "tall").await;
    let n = q.partitions().unwrap();
    let keys: Vec<String> = (0..n)
        .map(|p| {
            (0..)
                .map(|i| format!("live://{i}"))
                .find(|k| herald_queue::partition_of(k, n) == p)
                .unwrap()
        })
        .collect();
    for k in &keys {
        q.publish(k, bytes::Bytes::from(k.clone())).await.unwrap();
    }
    let mut c = q.consumer().await.unwrap();
    let mut got = Vec::new();
    for _ in &keys {
        let (text, d) = next_text(&mut c).await;
        d.ack().await.unwrap();
        got.push(text);
    }
    got.sort();
    let mut want = keys;
    want.sort();
    assert_eq!(got, want);
}

/// A dropped consumer is closed in the background (its partitions given up);
/// give it that moment before the next consumer of its partitions starts.
const LEAVE: Duration = Duration::from_millis(500);

/// A message delivered to a consumer that went away before acknowledging it was
/// never committed, so the next consumer of its partition gets it again.
#[tokio::test]
async fn unacknowledged_is_redelivered() {
    let kafka = herald_testkit::kafka();
    let q = queue(&kafka, "t3").await;
    conformance::unacknowledged_is_redelivered(&q, tokio::time::sleep(LEAVE))
        .await
        .unwrap();
}

/// With the broker down, publishing reports an error within about
/// `publish_timeout` (3 s here) instead of succeeding or hanging.
#[tokio::test]
async fn publish_fails_while_kafka_is_down() {
    let mut kafka = herald_testkit::kafka();
    let q = queue(&kafka, "t4").await;
    q.publish("k", bytes::Bytes::from_static(b"ok"))
        .await
        .unwrap();
    kafka.kill();
    let start = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        q.publish("k", bytes::Bytes::from_static(b"lost?")),
    )
    .await
    .expect("publish returns instead of hanging")
    .unwrap_err();
    assert_eq!(err.kind(), QueueErrorKind::Unavailable, "{err:?}");
    assert_eq!(err.engine(), Some("kafka"));
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
}

/// Queues connecting at once both find the topic usable, whichever of them
/// created it (the other's creation is answered "already exists").
#[tokio::test]
async fn concurrent_connects_share_the_topic() {
    let kafka = herald_testkit::kafka();
    let (a, b) = tokio::join!(
        KafkaQueue::connect(config(&kafka, "t6")),
        KafkaQueue::connect(config(&kafka, "t6")),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    a.publish("k", bytes::Bytes::from_static(b"from-a"))
        .await
        .unwrap();
    b.publish("k", bytes::Bytes::from_static(b"from-b"))
        .await
        .unwrap();
    let mut c = a.consumer().await.unwrap();
    assert_eq!(next_text(&mut c).await.0, "from-a");
    assert_eq!(next_text(&mut c).await.0, "from-b");
}

/// Connecting to an address where no broker listens fails, naming the address.
#[tokio::test]
async fn connect_fails_without_a_broker() {
    let port = herald_testkit::free_port();
    let brokers = format!("127.0.0.1:{port}");
    let err = KafkaQueue::connect(KafkaConfig {
        brokers: brokers.clone(),
        connect_timeout: Duration::from_secs(2),
        ..KafkaConfig::default()
    })
    .await
    .err()
    .expect("connect fails");
    match err {
        e if e.kind() == QueueErrorKind::Unavailable => {
            let msg = e.to_string();
            assert!(msg.contains(&brokers), "{msg}");
            // librdkafka's error is kept as the cause.
            assert!(std::error::Error::source(&e).is_some(), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
}

async fn next_text(c: &mut Box<dyn herald_queue::Consumer>) -> (String, herald_queue::Delivery) {
    let d = tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a message within 10 s")
        .unwrap();
    (String::from_utf8_lossy(&d.payload).into_owned(), d)
}

/// Offsets are committed only up to the first unacknowledged message, even when
/// later ones were acknowledged: the next consumer gets that message and every
/// one after it, and acknowledged, committed messages are not delivered again.
#[tokio::test]
async fn only_the_acknowledged_prefix_is_committed() {
    let kafka = herald_testkit::kafka();
    let q = KafkaQueue::connect(KafkaConfig {
        partitions: 1,
        ..config(&kafka, "t5")
    })
    .await
    .unwrap();
    for i in 0..5 {
        q.publish("k", bytes::Bytes::from(format!("m{i}")))
            .await
            .unwrap();
    }

    let mut first = q.consumer().await.unwrap();
    let mut held = Vec::new();
    for i in 0..5 {
        let (text, d) = next_text(&mut first).await;
        assert_eq!(text, format!("m{i}"));
        held.push(d);
    }
    // Acknowledge out of order, all but m2.
    let mut held = held.into_iter().map(Some).collect::<Vec<_>>();
    for i in [4, 1, 3, 0] {
        held[i].take().unwrap().ack().await.unwrap();
    }
    drop(held);
    drop(first);
    tokio::time::sleep(LEAVE).await;

    let mut second = q.consumer().await.unwrap();
    for want in ["m2", "m3", "m4"] {
        let (text, d) = next_text(&mut second).await;
        assert_eq!(text, want);
        d.ack().await.unwrap();
    }
    drop(second);
    tokio::time::sleep(LEAVE).await;

    let mut third = q.consumer().await.unwrap();
    if let Ok(d) = tokio::time::timeout(Duration::from_secs(1), third.next()).await {
        panic!("committed message delivered again: {d:?}");
    }
    q.publish("k", bytes::Bytes::from_static(b"m5"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut third).await.0, "m5");
}

#[tokio::test]
async fn partitions_divide_keys() {
    let kafka = herald_testkit::kafka();
    let q = queue(&kafka, "tp").await;
    assert_eq!(q.partitions(), Some(4));
    conformance::partitions_divide_keys(&q).await.unwrap();
}

#[tokio::test]
async fn each_partition_keeps_its_keys() {
    let kafka = herald_testkit::kafka();
    let q = queue(&kafka, "tk").await;
    conformance::each_partition_keeps_its_keys(&q)
        .await
        .unwrap();
}

/// A consumer of assigned partitions that stops without acknowledging (its job
/// was killed): the next consumer of those partitions starts from the group's
/// committed offset and gets the message again, after what was acknowledged.
#[tokio::test]
async fn assigned_partitions_resume_from_the_commit() {
    let kafka = herald_testkit::kafka();
    let q = queue(&kafka, "tr").await;
    let all: Vec<u32> = (0..4).collect();
    q.publish("room", bytes::Bytes::from_static(b"first"))
        .await
        .unwrap();
    q.publish("room", bytes::Bytes::from_static(b"second"))
        .await
        .unwrap();
    {
        let mut c = q.consumer_of(&all).await.unwrap();
        let (text, d) = next_text(&mut c).await;
        assert_eq!(text, "first");
        d.ack().await.unwrap();
        let (text, _unacked) = next_text(&mut c).await;
        assert_eq!(text, "second");
        // Let the asynchronous commit of "first" reach the broker.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut c = q.consumer_of(&all).await.unwrap();
    let (text, d) = next_text(&mut c).await;
    assert_eq!(text, "second", "resumes after the acknowledged message");
    d.ack().await.unwrap();
}

#[tokio::test]
async fn idle_consumer_waits() {
    let kafka = herald_testkit::kafka();
    conformance::idle_consumer_waits(&queue(&kafka, "tidle").await)
        .await
        .unwrap();
}
