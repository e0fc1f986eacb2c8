//! A Kafka consumer: a background task (the pump) polls the librdkafka client,
//! reopening it after the brokers were lost, and hands messages over a small
//! channel to the [`KafkaConsumer`] job takes them from.

use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::ack::KafkaAck;
use super::assignment::{lock, Assignment};
use super::client::{Client, Reopen};
use super::close::{release, Closing};
use super::ENGINE;
use crate::{Consumer, Delivery, QueueError};

/// Messages a consumer's background task fetches ahead of the caller.
const PREFETCH: usize = 64;

/// Starts polling `consumer` in the background and returns the handle job uses.
pub(super) fn start(
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

/// One message received from the broker and not yet handed out.
pub(super) struct Received {
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
    let mut consumer = Closing {
        consumer: Some(consumer),
    };
    let mut losses = reopen.topic.losses();
    loop {
        let Some(kafka) = consumer.consumer.clone() else {
            return;
        };
        let item = tokio::select! {
            _ = tx.closed() => break,
            () = losses.next() => {
                drop(kafka);
                match replace_client(&reopen, &mut consumer, &state, &tx, &current).await {
                    Some(covered) => {
                        losses.seen_up_to(covered);
                        continue;
                    }
                    None => return,
                }
            }
            m = kafka.recv() => match received(m, &state) {
                Some(item) => item,
                None => continue,
            },
        };
        drop(kafka);
        if tx.send(item).await.is_err() {
            break;
        }
    }
}

/// What the pump hands out for one result of polling: a message to deliver, an
/// error that stops the consumer, or `None` for nothing (a message not to
/// deliver, or trouble librdkafka handles by itself).
fn received(
    m: Result<BorrowedMessage<'_>, KafkaError>,
    state: &Mutex<Assignment>,
) -> Option<Result<Received, QueueError>> {
    match m {
        Ok(m) => {
            let (partition, offset) = (m.partition(), m.offset());
            let generation = lock(state).track(partition, offset)?;
            Some(Ok(Received {
                partition,
                offset,
                generation,
                payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            }))
        }
        // librdkafka reconnects and refetches by itself; the client context has
        // logged the trouble. Forwarding each of these would leave a backlog of
        // stale errors for job to sit out.
        Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
            Some(Err(QueueError::unavailable(ENGINE, "consume").caused_by(e)))
        }
        Err(e) => {
            tracing::debug!(error = %e, "kafka consume error; librdkafka retries");
            None
        }
    }
}

/// After the brokers were lost: closes the pump's client, waits for the topic and
/// puts a new client in use. Returns the broker losses the new client covers, or
/// `None` once the [`KafkaConsumer`] is gone.
async fn replace_client(
    reopen: &Reopen,
    consumer: &mut Closing,
    state: &Arc<Mutex<Assignment>>,
    tx: &mpsc::Sender<Result<Received, QueueError>>,
    current: &Mutex<Weak<Client>>,
) -> Option<u64> {
    let old = consumer.consumer.take()?;
    let (new, covered) = reopen.reopen(old, state, tx).await?;
    *current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&new);
    consumer.consumer = Some(new);
    Some(covered)
}

/// The handle job consumes from: messages the pump received, each handed out with
/// its acknowledgement.
pub(super) struct KafkaConsumer {
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
            Ok(r) => r.map_err(|e| QueueError::unavailable(ENGINE, "commit").caused_by(e)),
            Err(e) => Err(QueueError::unavailable(ENGINE, "commit").caused_by(e)),
        }
    }
}
