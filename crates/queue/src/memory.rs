//! The in-process queue: a bounded channel shared by every consumer.
//!
//! Used by `herald standalone`. Publishing waits up to the configured timeout when
//! the queue is full and then reports it full ([`QueueErrorKind::Full`]); nothing is dropped
//! silently. One channel preserves the global publish order, so per-key order holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, Mutex};

#[cfg(doc)]
use crate::QueueErrorKind;
use crate::{Acknowledge, Consumer, Delivery, Queue, QueueError};

/// An in-process queue.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

struct Inner {
    /// Publishing side of the channel.
    tx: mpsc::Sender<Bytes>,
    /// Receiving side, shared by all consumers (competing consumers).
    rx: Arc<Mutex<mpsc::Receiver<Bytes>>>,
    /// Published and not yet acknowledged.
    unacked: Arc<AtomicU64>,
    /// How long a publish may wait for room in a full queue.
    publish_timeout: Duration,
}

impl MemoryQueue {
    /// A queue holding at most `capacity` messages.
    pub fn new(capacity: usize, publish_timeout: Duration) -> MemoryQueue {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        MemoryQueue {
            inner: Arc::new(Inner {
                tx,
                rx: Arc::new(Mutex::new(rx)),
                unacked: Arc::new(AtomicU64::new(0)),
                publish_timeout,
            }),
        }
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn publish(&self, _key: &str, payload: Bytes) -> Result<(), QueueError> {
        let permit = match self.inner.tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(QueueError::Closed),
            Err(mpsc::error::TrySendError::Full(())) => {
                match tokio::time::timeout(self.inner.publish_timeout, self.inner.tx.reserve())
                    .await
                {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(QueueError::Closed),
                    Err(_) => {
                        return Err(QueueError::full(
                            "memory",
                            format!("{} messages waiting", self.inner.tx.max_capacity()),
                        ))
                    }
                }
            }
        };
        self.inner.unacked.fetch_add(1, Ordering::Relaxed);
        permit.send(payload);
        Ok(())
    }

    async fn consumer(&self) -> Result<Box<dyn Consumer>, QueueError> {
        Ok(Box::new(MemoryConsumer {
            rx: self.inner.rx.clone(),
            unacked: self.inner.unacked.clone(),
        }))
    }

    fn depth(&self) -> Option<u64> {
        Some(self.inner.unacked.load(Ordering::Relaxed))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

struct MemoryConsumer {
    rx: Arc<Mutex<mpsc::Receiver<Bytes>>>,
    unacked: Arc<AtomicU64>,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Delivery, QueueError> {
        let payload = self
            .rx
            .lock()
            .await
            .recv()
            .await
            .ok_or(QueueError::Closed)?;
        Ok(Delivery::new(
            payload,
            Box::new(MemoryAck {
                unacked: self.unacked.clone(),
            }),
        ))
    }
}

/// In-process messages cannot be redelivered (they live in this process only);
/// acknowledging just settles the depth gauge.
struct MemoryAck {
    unacked: Arc<AtomicU64>,
}

#[async_trait]
impl Acknowledge for MemoryAck {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.unacked.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publish_consume_ack_in_order() {
        let q = MemoryQueue::new(16, Duration::from_millis(10));
        for i in 0..5u8 {
            q.publish("k", Bytes::from(vec![i])).await.unwrap();
        }
        assert_eq!(q.depth(), Some(5));
        let mut c = q.consumer().await.unwrap();
        for i in 0..5u8 {
            let d = c.next().await.unwrap();
            assert_eq!(&d.payload[..], &[i]);
            d.ack().await.unwrap();
        }
        assert_eq!(q.depth(), Some(0));
    }

    #[tokio::test]
    async fn full_queue_reports_instead_of_dropping() {
        let q = MemoryQueue::new(2, Duration::from_millis(20));
        q.publish("a", Bytes::from_static(b"1")).await.unwrap();
        q.publish("a", Bytes::from_static(b"2")).await.unwrap();
        let err = q.publish("a", Bytes::from_static(b"3")).await.unwrap_err();
        assert_eq!(err.kind(), crate::QueueErrorKind::Full, "{err}");
        assert_eq!(err.engine(), Some("memory"));
        let mut c = q.consumer().await.unwrap();
        c.next().await.unwrap().ack().await.unwrap();
        q.publish("a", Bytes::from_static(b"3")).await.unwrap();
    }

    #[tokio::test]
    async fn competing_consumers_share_messages() {
        let q = MemoryQueue::new(16, Duration::from_millis(10));
        let mut a = q.consumer().await.unwrap();
        let mut b = q.consumer().await.unwrap();
        q.publish("k", Bytes::from_static(b"x")).await.unwrap();
        q.publish("k", Bytes::from_static(b"y")).await.unwrap();
        let x = a.next().await.unwrap();
        let y = b.next().await.unwrap();
        assert_eq!((&x.payload[..], &y.payload[..]), (&b"x"[..], &b"y"[..]));
    }
}
