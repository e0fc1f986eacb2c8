//! The topic: looked up (and created when missing) at connect, and after every
//! loss of all broker connections looked up again and created again if the
//! broker came back without it (`TopicGuard`), with a new producer.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use tokio::sync::watch;

use super::context::QuietContext;
use super::producer::{new_producer, ProducerSlot};
use super::KafkaConfig;
use crate::QueueError;

/// The topic's partition count, `None` if the broker does not list the topic.
/// Fails if no broker answers.
pub(super) async fn topic_partitions(
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

pub(super) async fn create_topic(
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

/// What is known of the topic since the broker was last lost. A broker that
/// restarts without its data (tansu on memory storage, a wiped test cluster)
/// comes back without the topic and, for some brokers, still acknowledges
/// writes to it; after every loss of all broker connections the topic is looked
/// up again, and created again when it is gone, before a publish counts as
/// stored.
#[derive(Default)]
pub(super) struct TopicGuard {
    state: watch::Sender<TopicState>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TopicState {
    /// Losses of every broker connection so far.
    pub(super) lost: u64,
    /// The topic was seen (or created) after this many losses.
    pub(super) confirmed: u64,
}

impl TopicGuard {
    /// What is known now.
    pub(super) fn now(&self) -> TopicState {
        *self.state.borrow()
    }

    /// Losses of the brokers from now on, for a client that must be reopened
    /// after each.
    pub(super) fn losses(&self) -> Losses {
        let rx = self.state.subscribe();
        let seen = rx.borrow().lost;
        Losses { rx, seen }
    }

    pub(super) fn broker_lost(&self) {
        self.state.send_modify(|s| s.lost += 1);
    }

    pub(super) fn lost_since(&self, before: TopicState) -> bool {
        self.state.borrow().lost != before.lost
    }

    /// Waits until the topic is confirmed since the last loss, at most until
    /// `deadline`; returns the state then.
    pub(super) async fn ready(
        &self,
        cfg: &KafkaConfig,
        deadline: tokio::time::Instant,
    ) -> Result<TopicState, QueueError> {
        let now = self.now();
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
pub(super) async fn keep_topic(
    admin: Arc<AdminClient<QuietContext>>,
    cfg: Arc<KafkaConfig>,
    partitions: u32,
    guard: Weak<TopicGuard>,
    producer: Arc<ProducerSlot>,
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
    producer: &ProducerSlot,
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
    producer.replace(new);
    Ok(())
}

/// Losses of every broker connection, as one client has followed them.
pub(super) struct Losses {
    rx: watch::Receiver<TopicState>,
    seen: u64,
}

impl Losses {
    /// Waits for a loss not seen yet; never returns once the queue is gone.
    pub(super) async fn next(&mut self) {
        let seen = self.seen;
        match self.rx.wait_for(|s| s.lost > seen).await.map(|s| s.lost) {
            Ok(n) => self.seen = n,
            Err(_) => std::future::pending().await,
        }
    }

    /// Counts the losses up to `lost` as seen: a client opened after the topic
    /// was confirmed following them has nothing to reopen for.
    pub(super) fn seen_up_to(&mut self, lost: u64) {
        self.seen = self.seen.max(lost);
    }
}
