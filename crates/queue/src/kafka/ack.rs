//! Acknowledging a Kafka delivery: offsets are committed, in the background, up
//! to the end of each partition's acknowledged prefix.

use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::assignment::{lock, Acked, Assignment};
use super::client::Client;
use super::close::release;
use super::ENGINE;
use crate::{Acknowledge, QueueError};

/// Acknowledges one delivery: marks its offset, and commits the end of the
/// partition's acknowledged prefix when it grew.
pub(super) struct KafkaAck {
    pub(super) state: Arc<Mutex<Assignment>>,
    /// The client that received the message (gone once it was closed).
    pub(super) kafka: Weak<Client>,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    /// The holding of the partition the message was received under.
    pub(super) generation: u64,
}

#[async_trait]
impl Acknowledge for KafkaAck {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        let again = "; the message will be delivered again";
        let Some(kafka) = self.kafka.upgrade() else {
            return Err(QueueError::unavailable(
                ENGINE,
                format!("consumer closed before the acknowledgement{again}"),
            ));
        };
        let result = {
            let mut state = lock(&self.state);
            match state.ack(self.partition, self.offset, self.generation) {
                Acked::Stale => Err(QueueError::unavailable(
                    ENGINE,
                    format!(
                        "partition {} moved to another consumer before the acknowledgement{again}",
                        self.partition
                    ),
                )),
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
        .map_err(|e: KafkaError| QueueError::unavailable(ENGINE, "commit").caused_by(e))
}
