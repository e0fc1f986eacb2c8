//! The queue on NATS JetStream: one stream on one subject, one durable pull
//! consumer shared by every job (competing consumers), explicit acknowledgement
//! after handoff. A message delivered but not acknowledged within `ack_wait` (its
//! consumer died) is delivered again to a live consumer.
//!
//! Order: one consumer sees messages in stream order; several consumers share them.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::{Acknowledge, Consumer, Delivery, Queue, QueueError};

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// Settings of a NATS JetStream queue.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Stream name.
    pub stream: String,
    /// Subject the stream captures and logic publishes to.
    pub subject: String,
    /// Durable consumer name shared by every job.
    pub durable: String,
    /// Time after which an unacknowledged message is delivered again.
    pub ack_wait: Duration,
    /// Most messages the stream keeps (older ones are discarded).
    pub max_messages: i64,
    /// How long a publish waits for JetStream's acknowledgement before it is
    /// reported as failed.
    pub publish_timeout: Duration,
}

/// A queue on a JetStream stream.
#[derive(Clone)]
pub struct NatsQueue {
    cfg: NatsConfig,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
}

impl NatsQueue {
    /// Connects and creates the stream if it does not exist.
    pub async fn connect(cfg: NatsConfig) -> Result<NatsQueue, QueueError> {
        let client = async_nats::connect(cfg.url.as_str())
            .await
            .map_err(unavailable)?;
        let mut js = jetstream::new(client);
        // A publish (and any JetStream request) that gets no answer within this
        // long is reported as failed instead of waiting on a dead server.
        js.set_timeout(cfg.publish_timeout);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: cfg.stream.clone(),
                subjects: vec![cfg.subject.clone()],
                max_messages: cfg.max_messages,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(NatsQueue { cfg, js, stream })
    }
}

#[async_trait]
impl Queue for NatsQueue {
    async fn publish(&self, _key: &str, payload: Bytes) -> Result<(), QueueError> {
        // The first await sends; the second waits for the stream's acknowledgement,
        // so a message is reported published only once JetStream stored it.
        self.js
            .publish(self.cfg.subject.clone(), payload)
            .await
            .map_err(unavailable)?
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn consumer(&self) -> Result<Box<dyn Consumer>, QueueError> {
        let consumer: jetstream::consumer::PullConsumer = self
            .stream
            .get_or_create_consumer(
                &self.cfg.durable,
                pull::Config {
                    durable_name: Some(self.cfg.durable.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.cfg.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)?;
        let messages = consumer.messages().await.map_err(unavailable)?;
        Ok(Box::new(NatsConsumer { messages }))
    }

    fn backend(&self) -> &'static str {
        "nats"
    }
}

struct NatsConsumer {
    messages: pull::Stream,
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn next(&mut self) -> Result<Delivery, QueueError> {
        match self.messages.next().await {
            Some(Ok(msg)) => Ok(Delivery::new(msg.payload.clone(), Box::new(NatsAck(msg)))),
            Some(Err(e)) => Err(unavailable(e)),
            None => Err(QueueError::Closed),
        }
    }
}

struct NatsAck(jetstream::Message);

#[async_trait]
impl Acknowledge for NatsAck {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.0.ack().await.map_err(unavailable)
    }
}
