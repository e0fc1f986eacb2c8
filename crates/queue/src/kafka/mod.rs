//! The queue on Kafka (or a Kafka-compatible broker such as tansu): one topic,
//! offsets committed for one consumer group.
//!
//! `publish` produces to the topic with the partition key as the message key, to
//! the partition goim's producer picks for it, so one key's messages land in one
//! partition and keep their order. It returns once the broker has acknowledged the
//! message; a message the broker did not take within `publish_timeout` is reported
//! as unavailable ([`QueueErrorKind::Unavailable`](crate::QueueErrorKind)).
//!
//! Consumers are given their partitions by herald ([`Queue::consumer_of`]: jobs
//! divide the partitions through the registry) and assigned them directly: no
//! group membership, no broker-side rebalancing; the group only keeps the
//! committed offsets, where the next consumer of a partition starts.
//! [`Queue::consumer`] reads every partition: one reader of the whole topic, not
//! a member sharing it with others. A background task polls each consumer and
//! hands messages over a small channel. Offsets are committed only for
//! acknowledged messages: per partition the consumer keeps the offsets it
//! delivered and commits the end of the acknowledged prefix (acknowledgements may
//! arrive out of order; an unacknowledged message holds back the commit of
//! everything after it), so a message delivered but not acknowledged when its
//! consumer goes away is delivered again to the next consumer of its partition.
//! The commit is sent in the background, like a JetStream acknowledgement: a lost
//! commit means the message may be delivered again; [`Consumer::close`] makes sure
//! of the last ones.
//!
//! Order: a partition is read by one consumer at a time, so one key's messages are
//! consumed in publish order.
//!
//! A broker may come back without its data (a wiped cluster; tansu on memory
//! storage). After every loss of all broker connections the queue looks the topic
//! up again and creates it if it is gone (`TopicGuard`); publishes wait for that
//! (and fail if it takes longer than `publish_timeout`), a publish in flight across
//! the loss fails, and the producer and directly assigned consumers are opened
//! anew, the consumers at their committed offsets unless those lie past the end of
//! the partition.
//!
//! Connections may use TLS and SASL ([`KafkaSecurity`]).

mod ack;
mod assignment;
mod client;
mod close;
mod consumer;
mod context;
mod producer;
pub mod security;
mod topic;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::AdminClient;
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

use self::assignment::Assignment;
use self::client::Reopen;
use self::consumer::start;
use self::context::QuietContext;
use self::producer::{new_producer, ProducerSlot};
pub use self::security::{KafkaSecurity, SaslMechanism, SecurityProtocol};
use self::topic::{create_topic, keep_topic, topic_partitions, TopicGuard};
use crate::{Consumer, Queue, QueueError};

/// Settings of a Kafka queue.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic logic publishes to and job consumes.
    pub topic: String,
    /// Consumer group whose committed offsets every job's consumers start from
    /// and commit to.
    pub group_id: String,
    /// Partitions of the topic when this queue creates it (it is created at connect
    /// if missing; an existing topic keeps its partitions).
    pub partitions: i32,
    /// Replication factor of the topic when this queue creates it.
    pub replication: i32,
    /// Client id reported to the broker.
    pub client_id: String,
    /// How long a publish waits for the broker's acknowledgement before it fails.
    pub publish_timeout: Duration,
    /// How long connecting (metadata, topic creation) may take.
    pub connect_timeout: Duration,
    /// Longest a fetch waits at the broker for new messages (`fetch.wait.max.ms`).
    /// Kept short: some Kafka-compatible brokers (tansu) hold every fetch for about
    /// half of it, even one that has messages, so it bounds consume latency.
    pub fetch_wait: Duration,
    /// TLS and SASL ([`KafkaSecurity`]; plaintext by default).
    pub security: KafkaSecurity,
}

impl Default for KafkaConfig {
    fn default() -> KafkaConfig {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "herald-push".into(),
            group_id: "herald-job".into(),
            partitions: 8,
            replication: 1,
            client_id: "herald".into(),
            publish_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            fetch_wait: Duration::from_millis(100),
            security: KafkaSecurity::default(),
        }
    }
}

/// The engine name errors carry.
const ENGINE: &str = "kafka";

/// A duration as librdkafka's milliseconds (at least 1).
fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// A queue on a Kafka topic.
#[derive(Clone)]
pub struct KafkaQueue {
    cfg: Arc<KafkaConfig>,
    /// The producer in use; replaced after the brokers were lost.
    producer: Arc<ProducerSlot>,
    /// Partitions of the topic (as found, or as created).
    partitions: u32,
    /// Whether the topic is known to exist since the broker was last lost.
    topic: Arc<TopicGuard>,
}

impl KafkaQueue {
    /// Connects, and creates the topic with `partitions` partitions if it does not
    /// exist. An unreachable broker is an unavailable queue naming it.
    pub async fn connect(cfg: KafkaConfig) -> Result<KafkaQueue, QueueError> {
        cfg.security.properties()?;
        let cfg = Arc::new(cfg);
        let admin: AdminClient<QuietContext> = client_config(&cfg)
            .create_with_context(QuietContext::default())
            .map_err(|e| cfg.error("admin client", e))?;
        let admin = Arc::new(admin);
        let partitions = match topic_partitions(&admin, &cfg).await? {
            Some(n) => n,
            None => {
                create_topic(&admin, &cfg, cfg.partitions).await?;
                cfg.partitions.max(1) as u32
            }
        };
        let topic = Arc::new(TopicGuard::default());
        let producer = Arc::new(ProducerSlot::new(new_producer(&cfg, &topic)?));
        tokio::spawn(keep_topic(
            admin,
            cfg.clone(),
            partitions,
            Arc::downgrade(&topic),
            producer.clone(),
        ));
        Ok(KafkaQueue {
            cfg,
            producer,
            partitions,
            topic,
        })
    }
}

impl KafkaConfig {
    /// The brokers are unreachable or refused `what`, because of `e`.
    fn error(
        &self,
        what: &str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> QueueError {
        QueueError::unavailable(ENGINE, format!("at {}: {what}", self.brokers)).caused_by(e)
    }
}

/// Settings every librdkafka client of the queue shares.
fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", &cfg.client_id)
        // librdkafka checks message timeouts only between reconnect attempts; with its
        // default 10 s backoff a publish to a dead broker failed after ~10 s instead
        // of `publish_timeout`. Also brings consumers back sooner after an outage.
        .set("reconnect.backoff.max.ms", "1000");
    cfg.security.apply(&mut c);
    c
}

#[async_trait]
impl Queue for KafkaQueue {
    async fn ping(&self) -> Result<(), QueueError> {
        let state = self.topic.now();
        if state.lost > state.confirmed {
            return Err(self
                .cfg
                .error("topic", "not confirmed since the brokers were lost"));
        }
        let producer = self.producer.current();
        let cfg = self.cfg.clone();
        // Metadata is a blocking call.
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&cfg.topic), cfg.connect_timeout)
                .map(|_| ())
                .map_err(|e| cfg.error("broker unreachable", e))
        })
        .await
        .map_err(|e| self.cfg.error("metadata", e))?
    }

    async fn publish(&self, key: &str, payload: Bytes) -> Result<(), QueueError> {
        // The partition goim's producer would pick for this key; jobs are given
        // partitions by number (`consumer_of`).
        let record = FutureRecord::to(&self.cfg.topic)
            .key(key)
            .partition(crate::partition_of(key, self.partitions) as i32)
            .payload(payload.as_ref());
        let deadline = tokio::time::Instant::now() + self.cfg.publish_timeout;
        let before = self.topic.ready(&self.cfg, deadline).await?;
        let producer = self.producer.current();
        // Resolves with the delivery report: the broker stored the message, or
        // `message.timeout.ms` passed without that.
        producer
            .send(record, Timeout::After(self.cfg.publish_timeout))
            .await
            .map_err(|(e, _)| self.cfg.error("message not delivered", e))?;
        // Every broker connection was lost while the message was on its way:
        // the acknowledgement may come from a broker that restarted without its
        // data (some accept writes to a topic they no longer have), so the
        // message is not reported as stored.
        if self.topic.lost_since(before) {
            return Err(self.cfg.error(
                "message may not be kept",
                "the broker connection was lost while it was sent",
            ));
        }
        Ok(())
    }

    /// A consumer of every partition, assigned directly like [`consumer_of`]'s: one
    /// reader of the whole topic. Kafka consumers do not share partitions, so two
    /// of these would each receive every message; jobs divide the partitions
    /// instead.
    ///
    /// [`consumer_of`]: Queue::consumer_of
    async fn consumer(&self) -> Result<Box<dyn Consumer>, QueueError> {
        self.consumer_of(&crate::all_partitions(self.partitions))
            .await
    }

    fn partitions(&self) -> Option<u32> {
        Some(self.partitions)
    }

    /// A consumer of exactly these partitions, assigned directly (no group
    /// membership, no broker-side rebalancing): jobs divide the partitions through
    /// the registry. It starts at the group's committed offsets (the earliest
    /// offset when there are none) and commits the acknowledged prefix for the
    /// group.
    async fn consumer_of(&self, partitions: &[u32]) -> Result<Box<dyn Consumer>, QueueError> {
        crate::require_partitions(partitions)?;
        let state = Arc::new(Mutex::new(Assignment::default()));
        let reopen = Reopen {
            cfg: self.cfg.clone(),
            partitions: partitions.iter().map(|&p| p as i32).collect(),
            topic: self.topic.clone(),
        };
        let consumer = reopen.open(&state).await?;
        tracing::info!(partitions = ?partitions, "kafka partitions assigned by herald");
        Ok(Box::new(start(consumer, state, &self.cfg.topic, reopen)))
    }

    fn backend(&self) -> &'static str {
        "kafka"
    }
}
