//! The queue on Kafka (or a Kafka-compatible broker such as tansu): one topic,
//! offsets committed for one consumer group.
//!
//! `publish` produces to the topic with the partition key as the message key, to
//! the partition goim's producer picks for it, so one key's messages land in one
//! partition and keep their order. It returns once the broker has acknowledged the
//! message; a message the broker did not take within `publish_timeout` is reported
//! as [`QueueError::Unavailable`].
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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::kafka_security::KafkaSecurity;
use crate::{Acknowledge, Consumer, Delivery, Queue, QueueError};

/// Messages a consumer's background task fetches ahead of the caller.
const PREFETCH: usize = 64;

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

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// A queue on a Kafka topic.
#[derive(Clone)]
pub struct KafkaQueue {
    cfg: Arc<KafkaConfig>,
    /// The producer in use; replaced after the brokers were lost (see
    /// [`TopicGuard`]).
    producer: Arc<std::sync::RwLock<Producer>>,
    /// Partitions of the topic (as found, or as created).
    partitions: u32,
    /// Whether the topic is known to exist since the broker was last lost.
    topic: Arc<TopicGuard>,
}

impl KafkaQueue {
    /// Connects, and creates the topic with `partitions` partitions if it does not
    /// exist. An unreachable broker is [`QueueError::Unavailable`] naming it.
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
        let producer = Arc::new(std::sync::RwLock::new(new_producer(&cfg, &topic)?));
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
    fn error(&self, what: &str, e: impl std::fmt::Display) -> QueueError {
        QueueError::Unavailable(format!("kafka at {}: {what}: {e}", self.brokers))
    }
}

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

/// The topic's partition count, `None` if the broker does not list the topic.
/// Fails if no broker answers.
async fn topic_partitions(
    admin: &Arc<AdminClient<QuietContext>>,
    cfg: &Arc<KafkaConfig>,
) -> Result<Option<u32>, QueueError> {
    let (admin, c) = (admin.clone(), cfg.clone());
    // Metadata is a blocking call; all topics are asked for, which never creates one.
    let metadata = tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_metadata(None, c.connect_timeout)
            .map_err(|e| c.error("broker unreachable", e))
    })
    .await
    .map_err(|e| cfg.error("metadata", e))??;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == cfg.topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as u32))
}

async fn create_topic(
    admin: &AdminClient<QuietContext>,
    cfg: &KafkaConfig,
    partitions: i32,
) -> Result<(), QueueError> {
    let topic = NewTopic::new(
        &cfg.topic,
        partitions,
        TopicReplication::Fixed(cfg.replication),
    );
    let opts = AdminOptions::new()
        .request_timeout(Some(cfg.connect_timeout))
        .operation_timeout(Some(cfg.connect_timeout));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|e| cfg.error("create topic", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(cfg.error(&format!("create topic {name}"), code)),
        }
    }
    Ok(())
}

#[async_trait]
impl Queue for KafkaQueue {
    async fn ping(&self) -> Result<(), QueueError> {
        let state = *self.topic.state.borrow();
        if state.lost > state.confirmed {
            return Err(self
                .cfg
                .error("topic", "not confirmed since the brokers were lost"));
        }
        let producer = self
            .producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
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
        let producer = self
            .producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
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

/// A consumer client; herald assigns its partitions.
type Client = StreamConsumer<QuietContext>;

/// A consumer client of the group, committing only what it is told to, and
/// assigned no partition yet.
fn consumer_client(cfg: &KafkaConfig, quiet: QuietContext) -> Result<Client, QueueError> {
    client_config(cfg)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", millis(cfg.fetch_wait))
        .create_with_context(quiet)
        .map_err(|e| cfg.error("consumer", e))
}

/// Starts polling `consumer` in the background and returns the handle job uses.
fn start(
    consumer: Arc<Client>,
    state: Arc<Mutex<Assignment>>,
    topic: &str,
    reopen: Reopen,
) -> KafkaConsumer {
    let (tx, rx) = mpsc::channel(PREFETCH);
    let kafka = Arc::new(Mutex::new(Arc::downgrade(&consumer)));
    tokio::spawn(pump(consumer, state.clone(), tx, reopen, kafka.clone()));
    KafkaConsumer {
        rx,
        state,
        kafka,
        topic: topic.to_string(),
    }
}

/// What a consumer needs to open its client again. After every
/// broker connection was lost the client is closed and, once the topic is
/// confirmed (created again if the broker came back without it), opened anew at
/// the group's committed offsets: a client that had cached the old topic crashes
/// in librdkafka when the topic reappears under a new id.
struct Reopen {
    cfg: Arc<KafkaConfig>,
    partitions: Vec<i32>,
    topic: Arc<TopicGuard>,
}

impl Reopen {
    /// A client assigned `partitions` at the committed offsets; the partitions
    /// (re)enter `state` under new generations.
    async fn open(&self, state: &Arc<Mutex<Assignment>>) -> Result<Arc<Client>, QueueError> {
        let (cfg, partitions) = (self.cfg.clone(), self.partitions.clone());
        let quiet = QuietContext::watching(self.topic.clone());
        // Asking the broker for offsets blocks.
        let consumer =
            tokio::task::spawn_blocking(move || open_at_committed(&cfg, &partitions, quiet))
                .await
                .map_err(|e| self.cfg.error("consumer", e))??;
        let mut s = lock(state);
        for &p in &self.partitions {
            s.assign(p);
        }
        Ok(Arc::new(consumer))
    }

    /// Closes `old`, waits for the topic and opens a new client; returns it and
    /// the broker losses it covers, or `None` once `tx` is closed.
    async fn reopen(
        &self,
        old: Arc<Client>,
        state: &Arc<Mutex<Assignment>>,
        tx: &mpsc::Sender<Result<Received, QueueError>>,
    ) -> Option<(Arc<Client>, u64)> {
        {
            // Messages already fetched and deliveries not yet acknowledged belong
            // to the old client: they are dropped and refetched.
            let mut s = lock(state);
            for &p in &self.partitions {
                s.revoke(p);
            }
        }
        give_up(old);
        tracing::warn!(
            partitions = ?self.partitions,
            "kafka brokers lost: consumer closed; it reopens when the topic is back"
        );
        let mut backoff = Duration::from_millis(200);
        loop {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let opened = match self.topic.ready(&self.cfg, deadline).await {
                Ok(now) => self.open(state).await.map(|c| (c, now.lost)),
                Err(e) => Err(e),
            };
            match opened {
                Ok(c) => {
                    tracing::info!(partitions = ?self.partitions, "kafka consumer reopened");
                    return Some(c);
                }
                Err(e) => tracing::debug!(error = %e, "kafka consumer not reopened yet"),
            }
            tokio::select! {
                _ = tx.closed() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// A consumer assigned `partitions` at the group's committed offsets (the
/// earliest offset where none is committed). A committed offset past the end of
/// its partition is from an earlier life of the topic (a broker that restarted
/// without its data, and a commit that reached it afterwards): reading starts at
/// the beginning instead, where a Kafka broker would send the consumer anyway
/// and some compatible brokers leave it waiting.
fn open_at_committed(
    cfg: &KafkaConfig,
    partitions: &[i32],
    quiet: QuietContext,
) -> Result<Client, QueueError> {
    let consumer = consumer_client(cfg, quiet)?;
    let mut ask = TopicPartitionList::with_capacity(partitions.len());
    for &p in partitions {
        ask.add_partition(&cfg.topic, p);
    }
    let committed = consumer
        .committed_offsets(ask, cfg.connect_timeout)
        .map_err(|e| cfg.error("committed offsets", e))?;
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for &p in partitions {
        let start = match committed.find_partition(&cfg.topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(at)) => {
                let (_, end) = consumer
                    .fetch_watermarks(&cfg.topic, p, cfg.connect_timeout)
                    .map_err(|e| cfg.error("partition offsets", e))?;
                if at > end {
                    tracing::warn!(
                        partition = p,
                        committed = at,
                        end,
                        "committed offset is past the partition's end (the topic lost its \
                         messages); reading from the beginning"
                    );
                    Offset::Beginning
                } else {
                    Offset::Offset(at)
                }
            }
            _ => Offset::Stored,
        };
        tpl.add_partition_offset(&cfg.topic, p, start)
            .map_err(|e| cfg.error("assign", e))?;
    }
    consumer.assign(&tpl).map_err(|e| cfg.error("assign", e))?;
    Ok(consumer)
}

/// What is known of the topic since the broker was last lost. A broker that
/// restarts without its data (tansu on memory storage, a wiped test cluster)
/// comes back without the topic and, for some brokers, still acknowledges
/// writes to it; after every loss of all broker connections the topic is looked
/// up again, and created again when it is gone, before a publish counts as
/// stored.
#[derive(Default)]
struct TopicGuard {
    state: watch::Sender<TopicState>,
}

#[derive(Debug, Clone, Copy, Default)]
struct TopicState {
    /// Losses of every broker connection so far.
    lost: u64,
    /// The topic was seen (or created) after this many losses.
    confirmed: u64,
}

impl TopicGuard {
    fn broker_lost(&self) {
        self.state.send_modify(|s| s.lost += 1);
    }

    fn lost_since(&self, before: TopicState) -> bool {
        self.state.borrow().lost != before.lost
    }

    /// Waits until the topic is confirmed since the last loss, at most until
    /// `deadline`; returns the state then.
    async fn ready(
        &self,
        cfg: &KafkaConfig,
        deadline: tokio::time::Instant,
    ) -> Result<TopicState, QueueError> {
        let now = *self.state.borrow();
        if now.confirmed >= now.lost {
            return Ok(now);
        }
        let mut rx = self.state.subscribe();
        let confirmed = tokio::time::timeout_at(deadline, rx.wait_for(|s| s.confirmed >= s.lost))
            .await
            .ok()
            .and_then(|r| r.ok().map(|s| *s));
        confirmed.ok_or_else(|| {
            cfg.error(
                "broker lost",
                format!("topic {} not found again yet", cfg.topic),
            )
        })
    }
}

/// Looks the topic up after each loss of the brokers and creates it again,
/// with the partitions it had, if the broker came back without it. Ends with
/// the queue.
async fn keep_topic(
    admin: Arc<AdminClient<QuietContext>>,
    cfg: Arc<KafkaConfig>,
    partitions: u32,
    guard: Weak<TopicGuard>,
    producer: Arc<std::sync::RwLock<Producer>>,
) {
    let Some(mut rx) = guard.upgrade().map(|g| g.state.subscribe()) else {
        return;
    };
    loop {
        let lost = match rx.wait_for(|s| s.confirmed < s.lost).await {
            Ok(s) => s.lost,
            Err(_) => return,
        };
        let Some(guard) = guard.upgrade() else {
            return;
        };
        match restore_topic(&admin, &cfg, partitions, &guard, &producer).await {
            Ok(()) => guard
                .state
                .send_modify(|s| s.confirmed = s.confirmed.max(lost)),
            // Still down (librdkafka reconnects by itself), or the topic or the
            // producer could not be made: look again shortly.
            Err(e) => {
                tracing::debug!(error = %e, "kafka topic not confirmed yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// After a loss of the brokers: the topic exists (created again if it was
/// gone) and a new producer is in use. The old producer may hold the topic's old
/// id, and librdkafka clients that see a topic come back under a new id (another
/// process may have created it again) misbehave.
async fn restore_topic(
    admin: &Arc<AdminClient<QuietContext>>,
    cfg: &Arc<KafkaConfig>,
    partitions: u32,
    guard: &Arc<TopicGuard>,
    producer: &std::sync::RwLock<Producer>,
) -> Result<(), QueueError> {
    if topic_partitions(admin, cfg).await?.is_none() {
        create_topic(admin, cfg, partitions as i32)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "could not create the topic again"))?;
        tracing::warn!(
            topic = %cfg.topic,
            partitions,
            "the Kafka broker came back without the topic (restarted without its data?); \
             created it again: messages it held are gone"
        );
    }
    let new = new_producer(cfg, guard)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot open a new kafka producer"))?;
    let old = std::mem::replace(
        &mut *producer.write().unwrap_or_else(|e| e.into_inner()),
        new,
    );
    close_off_runtime(move || drop(old));
    Ok(())
}

type Producer = FutureProducer<QuietContext>;

fn new_producer(cfg: &KafkaConfig, topic: &Arc<TopicGuard>) -> Result<Producer, QueueError> {
    client_config(cfg)
        .set("message.timeout.ms", millis(cfg.publish_timeout))
        // Each push waits for its own delivery report, so lingering for a batch
        // only adds latency; concurrent pushes still share a request.
        .set("linger.ms", "0")
        .create_with_context(QuietContext::watching(topic.clone()))
        .map_err(|e| cfg.error("producer", e))
}

fn lock(state: &Mutex<Assignment>) -> MutexGuard<'_, Assignment> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// How often one kind of librdkafka complaint is logged.
const COMPLAINT_EVERY: Duration = Duration::from_secs(10);

/// librdkafka's logs and client errors, each kind (log facility, error code) at
/// most once per [`COMPLAINT_EVERY`] with the number of repeats in between.
/// With a broker down librdkafka reports every reconnect attempt (several a
/// second per client) and retries by itself; the log should say so once.
#[derive(Default)]
struct QuietContext {
    last: Mutex<HashMap<String, (Instant, u64)>>,
    /// Told when every broker connection is lost.
    topic: Option<Arc<TopicGuard>>,
}

impl QuietContext {
    fn watching(topic: Arc<TopicGuard>) -> QuietContext {
        QuietContext {
            topic: Some(topic),
            ..Default::default()
        }
    }

    /// Whether to log `kind` now, and how many of it were held back before.
    fn admit(&self, kind: &str) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match last.get_mut(kind) {
            Some((at, held)) if now.duration_since(*at) < COMPLAINT_EVERY => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let before = *held;
                *at = now;
                *held = 0;
                Some(before)
            }
            None => {
                last.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let Some(held) = self.admit(fac) else {
            return;
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, repeats = held, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility = fac, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let (Some(topic), Some(RDKafkaErrorCode::AllBrokersDown)) =
            (&self.topic, error.rdkafka_error_code())
        {
            topic.broker_lost();
        }
        let kind = match error.rdkafka_error_code() {
            Some(code) => format!("{code:?}"),
            None => error.to_string(),
        };
        if let Some(held) = self.admit(&kind) {
            tracing::warn!(target: "librdkafka", %error, repeats = held, "{reason}; retrying");
        }
    }
}

/// Consumers are assigned their partitions: no rebalance to follow.
impl ConsumerContext for QuietContext {}

/// One message received from the broker and not yet handed out.
struct Received {
    partition: i32,
    offset: i64,
    generation: u64,
    payload: Bytes,
}

/// Polls the consumer until the [`KafkaConsumer`] is dropped, then closes it.
/// The consumer is reopened after the brokers were lost; `current` always names
/// the client in use.
async fn pump(
    consumer: Arc<Client>,
    state: Arc<Mutex<Assignment>>,
    tx: mpsc::Sender<Result<Received, QueueError>>,
    reopen: Reopen,
    current: Arc<Mutex<Weak<Client>>>,
) {
    // Closes the consumer off the runtime however this task ends (also when the
    // runtime drops it at shutdown).
    let mut consumer = Closing {
        consumer: Some(consumer),
    };
    let mut lost = {
        let rx = reopen.topic.state.subscribe();
        let seen = rx.borrow().lost;
        (rx, seen)
    };
    loop {
        let Some(kafka) = consumer.consumer.clone() else {
            return;
        };
        let broker_lost = async {
            let (rx, seen) = &mut lost;
            let now = rx.wait_for(|s| s.lost > *seen).await.map(|s| s.lost);
            match now {
                Ok(n) => *seen = n,
                Err(_) => std::future::pending().await,
            }
        };
        let item = tokio::select! {
            _ = tx.closed() => break,
            _ = broker_lost => {
                let Some(old) = consumer.consumer.take() else {
                    return;
                };
                drop(kafka);
                match reopen.reopen(old, &state, &tx).await {
                    Some((new, covered)) => {
                        lost.1 = lost.1.max(covered);
                        *current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&new);
                        consumer.consumer = Some(new);
                        continue;
                    }
                    None => return,
                }
            }
            m = kafka.recv() => match m {
                Ok(m) => {
                    let (partition, offset) = (m.partition(), m.offset());
                    let Some(generation) = lock(&state).track(partition, offset) else {
                        continue;
                    };
                    Ok(Received {
                        partition,
                        offset,
                        generation,
                        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    })
                }
                // librdkafka reconnects and refetches by itself; the client
                // context has logged the trouble. Forwarding each of these
                // would leave a backlog of stale errors for job to sit out.
                Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                    Err(QueueError::Unavailable(format!("kafka consume: {e}")))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "kafka consume error; librdkafka retries");
                    continue;
                }
            },
        };
        drop(kafka);
        if tx.send(item).await.is_err() {
            break;
        }
    }
}

/// The pump's hold on its consumer; see [`give_up`].
struct Closing {
    consumer: Option<Arc<Client>>,
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(c) = self.consumer.take() {
            give_up(c);
        }
    }
}

/// Drops a consumer handle; when it is the last one, closing the consumer (which
/// waits for the broker) runs on a thread of its own, so neither the runtime nor
/// its shutdown waits on the broker.
fn release(consumer: Arc<Client>) {
    release_with(consumer, false);
}

/// [`release`], the consumer first giving its partitions up.
fn give_up(consumer: Arc<Client>) {
    release_with(consumer, true);
}

fn release_with(consumer: Arc<Client>, unassign: bool) {
    if Arc::strong_count(&consumer) > 1 {
        return;
    }
    close_off_runtime(move || {
        if unassign {
            let _ = consumer.unassign();
        }
        drop(consumer);
    });
}

/// Runs `close` (closing a librdkafka client, which waits for the broker) on a
/// thread of its own, so neither the runtime nor its shutdown waits on it.
fn close_off_runtime(close: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(close);
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to close a kafka client");
    }
}

struct KafkaConsumer {
    rx: mpsc::Receiver<Result<Received, QueueError>>,
    state: Arc<Mutex<Assignment>>,
    /// The client in use (replaced when the consumer is reopened).
    kafka: Arc<Mutex<Weak<Client>>>,
    topic: String,
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn close(self: Box<Self>) -> Result<(), QueueError> {
        self.flush_commits().await
    }

    async fn next(&mut self) -> Result<Delivery, QueueError> {
        loop {
            let r = match self.rx.recv().await {
                Some(Ok(r)) => r,
                Some(Err(e)) => return Err(e),
                None => return Err(QueueError::Closed),
            };
            // A message of a partition this consumer lost meanwhile goes to the
            // partition's new holder instead.
            if !lock(&self.state).holds(r.partition, r.generation) {
                continue;
            }
            return Ok(Delivery::new(
                r.payload,
                Box::new(KafkaAck {
                    state: self.state.clone(),
                    kafka: self.kafka.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    topic: self.topic.clone(),
                    partition: r.partition,
                    offset: r.offset,
                    generation: r.generation,
                }),
            ));
        }
    }
}

impl KafkaConsumer {
    /// Commits, synchronously, the offsets committed in the background so far: a
    /// commit still in flight when the partition moves would let its next holder
    /// start before them and deliver acknowledged messages again.
    async fn flush_commits(&self) -> Result<(), QueueError> {
        let offsets = lock(&self.state).committed();
        let kafka = self
            .kafka
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade();
        let (Some(kafka), false) = (kafka, offsets.is_empty()) else {
            return Ok(());
        };
        let topic = self.topic.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::with_capacity(offsets.len());
            for (p, next) in offsets {
                tpl.add_partition_offset(&topic, p, Offset::Offset(next))?;
            }
            let r = kafka.commit(&tpl, CommitMode::Sync);
            release(kafka);
            r
        })
        .await;
        match done {
            Ok(r) => r.map_err(|e| QueueError::Unavailable(format!("kafka commit: {e}"))),
            Err(e) => Err(QueueError::Unavailable(format!("kafka commit: {e}"))),
        }
    }
}

struct KafkaAck {
    state: Arc<Mutex<Assignment>>,
    kafka: Weak<Client>,
    topic: String,
    partition: i32,
    offset: i64,
    generation: u64,
}

#[async_trait]
impl Acknowledge for KafkaAck {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        let again = "; the message will be delivered again";
        let Some(kafka) = self.kafka.upgrade() else {
            return Err(QueueError::Unavailable(format!(
                "kafka consumer closed before the acknowledgement{again}"
            )));
        };
        let result = {
            let mut state = lock(&self.state);
            match state.ack(self.partition, self.offset, self.generation) {
                Acked::Stale => Err(QueueError::Unavailable(format!(
                    "kafka partition {} moved to another consumer before the acknowledgement{again}",
                    self.partition
                ))),
                Acked::Held => Ok(()),
                // Committed under the lock, so commits of a partition go out in order.
                Acked::Commit(next) => commit(&kafka, &self.topic, self.partition, next),
            }
        };
        release(kafka);
        result
    }
}

fn commit(kafka: &Client, topic: &str, partition: i32, next: i64) -> Result<(), QueueError> {
    let mut tpl = TopicPartitionList::with_capacity(1);
    tpl.add_partition_offset(topic, partition, Offset::Offset(next))
        .and_then(|()| kafka.commit(&tpl, CommitMode::Async))
        .map_err(|e: KafkaError| QueueError::Unavailable(format!("kafka commit: {e}")))
}

/// The partitions a consumer holds and, per partition, the offsets it delivered and
/// not yet committed.
#[derive(Default)]
struct Assignment {
    generations: u64,
    partitions: HashMap<i32, Delivered>,
}

/// Offsets of one partition in delivery order, each with whether it was
/// acknowledged.
struct Delivered {
    /// Tells this holding of the partition from an earlier one of the same consumer.
    generation: u64,
    offsets: VecDeque<(i64, bool)>,
    /// The last offset committed (asynchronously) for this holding.
    committed: Option<i64>,
}

/// What acknowledging one offset means for its partition's commit.
#[derive(Debug, PartialEq, Eq)]
enum Acked {
    /// The partition was revoked (or reassigned) since the delivery.
    Stale,
    /// An earlier delivery is still unacknowledged: nothing to commit yet.
    Held,
    /// Everything before this offset is acknowledged: commit it.
    Commit(i64),
}

impl Assignment {
    fn assign(&mut self, partition: i32) {
        self.generations += 1;
        self.partitions.insert(
            partition,
            Delivered {
                generation: self.generations,
                offsets: VecDeque::new(),
                committed: None,
            },
        );
    }

    fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Records a received offset; `None` if it is not to be delivered (partition not
    /// held, or an offset at or before one already delivered).
    fn track(&mut self, partition: i32, offset: i64) -> Option<u64> {
        let d = self.partitions.get_mut(&partition)?;
        if d.offsets.back().is_some_and(|&(last, _)| offset <= last) {
            return None;
        }
        d.offsets.push_back((offset, false));
        Some(d.generation)
    }

    fn holds(&self, partition: i32, generation: u64) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|d| d.generation == generation)
    }

    fn ack(&mut self, partition: i32, offset: i64, generation: u64) -> Acked {
        let Some(d) = self
            .partitions
            .get_mut(&partition)
            .filter(|d| d.generation == generation)
        else {
            return Acked::Stale;
        };
        if let Ok(i) = d.offsets.binary_search_by_key(&offset, |&(o, _)| o) {
            d.offsets[i].1 = true;
        }
        let mut done = None;
        while let Some(&(o, true)) = d.offsets.front() {
            done = Some(o);
            d.offsets.pop_front();
        }
        match done {
            Some(o) => {
                d.committed = Some(o + 1);
                Acked::Commit(o + 1)
            }
            None => Acked::Held,
        }
    }

    /// Every held partition's last commit, to be made sure of.
    fn committed(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, d)| Some((*p, d.committed?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_the_acknowledged_prefix_only() {
        let mut a = Assignment::default();
        a.assign(0);
        let g = (10..15).map(|o| a.track(0, o)).collect::<Vec<_>>();
        assert!(g.iter().all(|g| *g == Some(1)));
        assert_eq!(a.ack(0, 12, 1), Acked::Held);
        assert_eq!(a.ack(0, 11, 1), Acked::Held);
        assert_eq!(a.ack(0, 10, 1), Acked::Commit(13));
        assert_eq!(a.ack(0, 14, 1), Acked::Held);
        assert_eq!(a.ack(0, 13, 1), Acked::Commit(15));
    }

    #[test]
    fn offsets_may_have_gaps() {
        let mut a = Assignment::default();
        a.assign(3);
        a.track(3, 5);
        a.track(3, 9);
        assert_eq!(a.ack(3, 9, 1), Acked::Held);
        assert_eq!(a.ack(3, 5, 1), Acked::Commit(10));
    }

    #[test]
    fn revoked_partition_is_stale_and_not_redelivered_here() {
        let mut a = Assignment::default();
        a.assign(0);
        a.assign(1);
        let g0 = a.track(0, 0).unwrap();
        a.revoke(0);
        assert!(!a.holds(0, g0));
        assert_eq!(a.ack(0, 0, g0), Acked::Stale);
        assert_eq!(a.track(0, 1), None);
        // Assigned again: a new holding, the old deliveries stay stale.
        a.assign(0);
        let g1 = a.track(0, 0).unwrap();
        assert_ne!(g0, g1);
        assert_eq!(a.ack(0, 0, g0), Acked::Stale);
        assert_eq!(a.ack(0, 0, g1), Acked::Commit(1));
    }

    #[test]
    fn an_offset_already_delivered_is_skipped() {
        let mut a = Assignment::default();
        a.assign(0);
        assert!(a.track(0, 4).is_some());
        assert_eq!(a.track(0, 4), None);
        assert_eq!(a.track(0, 2), None);
    }
}
