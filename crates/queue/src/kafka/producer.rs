//! The producer logic publishes through, replaced after the brokers were lost.

use std::sync::{Arc, RwLock};

use rdkafka::producer::FutureProducer;

use super::close::close_off_runtime;
use super::context::QuietContext;
use super::topic::TopicGuard;
use super::{client_config, millis, KafkaConfig};
use crate::QueueError;

pub(super) type Producer = FutureProducer<QuietContext>;

pub(super) fn new_producer(
    cfg: &KafkaConfig,
    topic: &Arc<TopicGuard>,
) -> Result<Producer, QueueError> {
    client_config(cfg)
        .set("message.timeout.ms", millis(cfg.publish_timeout))
        // Each push waits for its own delivery report, so lingering for a batch
        // only adds latency; concurrent pushes still share a request.
        .set("linger.ms", "0")
        .create_with_context(QuietContext::watching(topic.clone()))
        .map_err(|e| cfg.error("producer", e))
}

/// The producer in use; replaced after every loss of the brokers (see
/// [`keep_topic`](super::topic::keep_topic)).
pub(super) struct ProducerSlot(RwLock<Producer>);

impl ProducerSlot {
    pub(super) fn new(producer: Producer) -> ProducerSlot {
        ProducerSlot(RwLock::new(producer))
    }

    /// The producer in use (a handle on it).
    pub(super) fn current(&self) -> Producer {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `new` in use; the old producer is closed off the runtime.
    pub(super) fn replace(&self, new: Producer) {
        let old = std::mem::replace(&mut *self.0.write().unwrap_or_else(|e| e.into_inner()), new);
        close_off_runtime(move || drop(old));
    }
}
