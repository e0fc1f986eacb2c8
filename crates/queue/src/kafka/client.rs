//! A consumer's librdkafka client: assigned its partitions at the group's
//! committed offsets, and opened anew after the brokers were lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::assignment::{lock, Assignment};
use super::close::give_up;
use super::consumer::Received;
use super::context::QuietContext;
use super::topic::TopicGuard;
use super::{client_config, millis, KafkaConfig};
use crate::QueueError;

/// A consumer client; herald assigns its partitions.
pub(super) type Client = StreamConsumer<QuietContext>;

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

/// What a consumer needs to open its client again. After every
/// broker connection was lost the client is closed and, once the topic is
/// confirmed (created again if the broker came back without it), opened anew at
/// the group's committed offsets: a client that had cached the old topic crashes
/// in librdkafka when the topic reappears under a new id.
pub(super) struct Reopen {
    pub(super) cfg: Arc<KafkaConfig>,
    pub(super) partitions: Vec<i32>,
    pub(super) topic: Arc<TopicGuard>,
}

impl Reopen {
    /// A client assigned `partitions` at the committed offsets; the partitions
    /// (re)enter `state` under new generations.
    pub(super) async fn open(
        &self,
        state: &Arc<Mutex<Assignment>>,
    ) -> Result<Arc<Client>, QueueError> {
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
    pub(super) async fn reopen(
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
