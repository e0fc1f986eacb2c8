//! The queue between logic (publisher) and job (consumer).
//!
//! [`Queue`] is the seam: logic publishes encoded `PushMsg` payloads with a partition
//! key, job consumes [`Delivery`]s and acknowledges each one only after it has handed
//! the message to the comets (at-least-once). Payloads are opaque bytes, so the
//! queue never depends on the message schema.
//!
//! Backends sit next to the trait: [`memory`] (in-process, the standalone default)
//! `redis` (Redis Streams, feature `redis`), `nats` (NATS JetStream, feature
//! `nats`) and `kafka` (Kafka, feature `kafka`). Every backend passes the same
//! [`conformance`] checks against its real engine.

use async_trait::async_trait;
use bytes::Bytes;

pub mod conformance;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "kafka")]
pub use self::kafka::{KafkaConfig, KafkaQueue};
#[cfg(feature = "kafka")]
pub use self::kafka::{KafkaSecurity, SaslMechanism, SecurityProtocol};
#[cfg(feature = "nats")]
pub use self::nats::{NatsAuth, NatsConfig, NatsQueue};
#[cfg(feature = "redis")]
pub use self::redis::{RedisStreamsConfig, RedisStreamsQueue};
pub use memory::MemoryQueue;

/// What kind of failure a queue operation met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueErrorKind {
    /// The engine is unreachable or refused the operation; the message was not
    /// accepted and the caller must report that.
    Unavailable,
    /// The queue is full and did not accept the message in time.
    Full,
    /// The settings cannot work (credentials or TLS files); retrying will not
    /// help.
    Invalid,
    /// The queue was shut down.
    Closed,
}

impl std::fmt::Display for QueueErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueueErrorKind::Unavailable => "unavailable",
            QueueErrorKind::Full => "full",
            QueueErrorKind::Invalid => "misconfigured",
            QueueErrorKind::Closed => "closed",
        })
    }
}

/// Why a queue operation failed.
#[derive(Debug)]
pub enum QueueError {
    /// The queue was shut down: consumption ends. Nothing failed.
    Closed,
    /// The engine failed or refused the operation: its kind, the engine, what was
    /// being done, and the engine's own error.
    Failed(QueueFailure),
}

impl herald_failure::Kind for QueueErrorKind {
    const SEAM: &'static str = "queue";
}

/// A queue operation the engine failed or refused (never of kind
/// [`QueueErrorKind::Closed`]). It reads, for logs,
/// `kafka queue unavailable: <what>: <cause>`; the cause is also its
/// [`std::error::Error::source`].
pub type QueueFailure = herald_failure::Failure<QueueErrorKind>;

impl QueueError {
    /// The engine (e.g. `kafka`) is unreachable or refused `context`.
    pub fn unavailable(engine: &'static str, context: impl Into<String>) -> QueueError {
        QueueError::failed(QueueErrorKind::Unavailable, engine, context)
    }

    /// The queue in `engine` is full (`context` says how).
    pub fn full(engine: &'static str, context: impl Into<String>) -> QueueError {
        QueueError::failed(QueueErrorKind::Full, engine, context)
    }

    /// The settings for `engine` cannot work (`context` says which).
    pub fn invalid(engine: &'static str, context: impl Into<String>) -> QueueError {
        QueueError::failed(QueueErrorKind::Invalid, engine, context)
    }

    fn failed(
        kind: QueueErrorKind,
        engine: &'static str,
        context: impl Into<String>,
    ) -> QueueError {
        QueueError::Failed(QueueFailure::new(kind, engine, context))
    }

    /// The same failure, caused by `source` (the engine's or client's error).
    /// [`QueueError::Closed`] has no cause and stays as it is.
    pub fn caused_by(
        self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> QueueError {
        match self {
            QueueError::Failed(f) => QueueError::Failed(f.caused_by(source)),
            QueueError::Closed => QueueError::Closed,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> QueueErrorKind {
        match self {
            QueueError::Closed => QueueErrorKind::Closed,
            QueueError::Failed(f) => f.kind(),
        }
    }

    /// The engine that failed, if one did.
    pub fn engine(&self) -> Option<&'static str> {
        match self {
            QueueError::Failed(f) if !f.engine().is_empty() => Some(f.engine()),
            _ => None,
        }
    }
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::Closed => f.write_str("queue closed"),
            QueueError::Failed(failure) => failure.fmt(f),
        }
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueueError::Closed => None,
            QueueError::Failed(f) => f.source(),
        }
    }
}

/// Publishes messages. Cheap to share between tasks.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Publishes `payload`. Messages with the same `key` are consumed in publish
    /// order. Returns only once the engine has accepted the message.
    async fn publish(&self, key: &str, payload: Bytes) -> Result<(), QueueError>;

    /// Opens a consumer in the shared consumer group: each message goes to one
    /// consumer of the group. Kafka has no such group here (its consumers are
    /// always given partitions): its consumer reads every partition.
    async fn consumer(&self) -> Result<Box<dyn Consumer>, QueueError>;

    /// How many partitions herald spreads keys over, when consumers are to be
    /// given partitions by herald ([`Queue::consumer_of`]); `None` when the queue
    /// is not partitioned and its consumers share one group instead.
    fn partitions(&self) -> Option<u32> {
        None
    }

    /// A consumer of only these partitions (each below [`Queue::partitions`]).
    /// Queues without herald-assigned partitions return [`Queue::consumer`].
    async fn consumer_of(&self, partitions: &[u32]) -> Result<Box<dyn Consumer>, QueueError> {
        let _ = partitions;
        self.consumer().await
    }

    /// Messages published and not yet acknowledged, where the backend can tell.
    fn depth(&self) -> Option<u64> {
        None
    }

    /// A short backend name for logs and metrics, e.g. `memory`.
    fn backend(&self) -> &'static str;

    /// Checks that the engine answers now and would take a publish (for readiness
    /// probes).
    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

/// The partition (of `n`) that messages with `key` go to: FNV-1a 32 of the key,
/// as a signed 32-bit number, modulo `n`, made non-negative — the partition
/// goim's Kafka producer (sarama's hash partitioner) picks. Stable across
/// processes, versions and machines, so every logic agrees.
pub fn partition_of(key: &str, n: u32) -> u32 {
    if n <= 1 {
        return 0;
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let n = i64::from(n);
    // `as i32` reinterprets the bits, as Go's int32(uint32) does.
    ((i64::from(h as i32)) % n).unsigned_abs() as u32
}

/// Every partition of a queue with `n` partitions (at least one).
#[cfg(any(feature = "redis", feature = "nats", feature = "kafka"))]
pub(crate) fn all_partitions(n: u32) -> Vec<u32> {
    (0..n.max(1)).collect()
}

/// A consumer of no partition at all is a caller's mistake.
#[cfg(any(feature = "redis", feature = "nats", feature = "kafka"))]
pub(crate) fn require_partitions(partitions: &[u32]) -> Result<(), QueueError> {
    if partitions.is_empty() {
        return Err(QueueError::unavailable(
            "",
            "a consumer needs at least one partition",
        ));
    }
    Ok(())
}

/// Receives messages for one consumer of the group.
#[async_trait]
pub trait Consumer: Send {
    /// Waits for the next message. `Err(QueueError::Closed)` ends consumption.
    async fn next(&mut self) -> Result<Delivery, QueueError>;

    /// Stops taking messages from the engine and returns, in order, those already
    /// received and not yet handed out, for the caller to handle (and acknowledge)
    /// before [`Consumer::close`]. Engines that deliver unacknowledged messages
    /// again in order to the next consumer return nothing.
    async fn finish(&mut self) -> Result<Vec<Delivery>, QueueError> {
        Ok(Vec::new())
    }

    /// Ends consumption once every delivery taken from this consumer has been
    /// acknowledged (or dropped): waits until the engine has recorded those
    /// acknowledgements, so the next consumer of the same partitions starts after
    /// them instead of delivering them again. Engines that record each
    /// acknowledgement as it is made need nothing more.
    async fn close(self: Box<Self>) -> Result<(), QueueError> {
        Ok(())
    }
}

/// Acknowledges one delivered message to its engine.
#[async_trait]
pub trait Acknowledge: Send + Sync {
    /// Marks the message as handled; the engine will not deliver it again.
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
}

/// One consumed message. Dropping it without [`Delivery::ack`] leaves it
/// unacknowledged, so an engine with redelivery hands it out again.
pub struct Delivery {
    /// The published payload.
    pub payload: Bytes,
    ack: Option<Box<dyn Acknowledge>>,
}

impl Delivery {
    /// A delivery whose acknowledgement is performed by `ack`.
    pub fn new(payload: Bytes, ack: Box<dyn Acknowledge>) -> Delivery {
        Delivery {
            payload,
            ack: Some(ack),
        }
    }

    /// Acknowledges the message.
    pub async fn ack(mut self) -> Result<(), QueueError> {
        match self.ack.take() {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::partition_of;

    #[test]
    fn partitions_follow_sarama_hash_partitioner() {
        // FNV-1a 32 of "" is 0x811c9dc5, as int32 -2128831035; % 8 = -3 -> 3.
        assert_eq!(partition_of("", 8), 3);
        // "a": 0xe40c292c, as int32 -468965076; % 10 = -6 -> 6.
        assert_eq!(partition_of("a", 10), 6);
        assert_eq!(partition_of("anything", 1), 0);
        for k in ["live://1", "key-a", "1000"] {
            assert!(partition_of(k, 16) < 16);
        }
    }
}
