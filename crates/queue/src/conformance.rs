//! The behaviour every [`Queue`] backend must show, as reusable checks. Each
//! backend's tests call these against a fresh queue on its real engine; the
//! in-process queue runs them in this crate's tests.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::{Queue, QueueError};

const WAIT: Duration = Duration::from_secs(10);

/// A failed check.
pub type CheckResult = Result<(), String>;

fn fail<T>(msg: impl Into<String>) -> Result<T, String> {
    Err(msg.into())
}

/// Published messages are consumed intact and, per key, in publish order; once
/// acknowledged they are not delivered again.
pub async fn ordered_per_key(q: &dyn Queue) -> CheckResult {
    let keys = ["room-a", "room-b", "room-c"];
    let per_key = 20;
    for i in 0..per_key {
        for k in keys {
            q.publish(k, Bytes::from(format!("{k}:{i}")))
                .await
                .map_err(|e| format!("publish: {e}"))?;
        }
    }
    let mut c = q.consumer().await.map_err(|e| format!("consumer: {e}"))?;
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    for _ in 0..keys.len() * per_key {
        let d = match tokio::time::timeout(WAIT, c.next()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return fail(format!("consume: {e}")),
            Err(_) => return fail("timed out waiting for a message"),
        };
        let text = String::from_utf8(d.payload.to_vec()).map_err(|e| e.to_string())?;
        let (k, i) = text.split_once(':').ok_or("malformed payload")?;
        seen.entry(k.to_string())
            .or_default()
            .push(i.parse().map_err(|_| "malformed index")?);
        d.ack().await.map_err(|e| format!("ack: {e}"))?;
    }
    for k in keys {
        let got = seen.get(k).cloned().unwrap_or_default();
        let want: Vec<usize> = (0..per_key).collect();
        if got != want {
            return fail(format!("key {k}: got {got:?}, want {want:?}"));
        }
    }
    if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), c.next()).await {
        return fail(format!(
            "acknowledged message delivered again: {:?}",
            d.payload
        ));
    }
    Ok(())
}

/// Two consumers of the group share the messages: each message reaches exactly one.
pub async fn competing_consumers(q: &dyn Queue) -> CheckResult {
    let mut a = q.consumer().await.map_err(|e| format!("consumer: {e}"))?;
    let mut b = q.consumer().await.map_err(|e| format!("consumer: {e}"))?;
    let n = 40;
    for i in 0..n {
        q.publish(&format!("k{}", i % 7), Bytes::from(i.to_string()))
            .await
            .map_err(|e| format!("publish: {e}"))?;
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < n && tokio::time::Instant::now() < deadline {
        let next = tokio::select! {
            r = a.next() => r,
            r = b.next() => r,
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        match next {
            Ok(d) => {
                got.push(String::from_utf8_lossy(&d.payload).to_string());
                d.ack().await.map_err(|e| format!("ack: {e}"))?;
            }
            Err(QueueError::Closed) => return fail("queue closed"),
            Err(e) => return fail(format!("consume: {e}")),
        }
    }
    got.sort_by_key(|s| s.parse::<usize>().unwrap_or(usize::MAX));
    let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    if got != want {
        return fail(format!("got {got:?}"));
    }
    Ok(())
}

/// A message delivered but not acknowledged (its consumer died) is delivered
/// again to another consumer of the group. Backends that cannot redeliver within
/// the process (the in-process queue) do not run this check.
pub async fn unacknowledged_is_redelivered(
    q: &dyn Queue,
    dead_consumer: impl std::future::Future<Output = ()>,
) -> CheckResult {
    let mut first = q.consumer().await.map_err(|e| format!("consumer: {e}"))?;
    q.publish("k", Bytes::from_static(b"must-survive"))
        .await
        .map_err(|e| format!("publish: {e}"))?;
    let d = tokio::time::timeout(WAIT, first.next())
        .await
        .map_err(|_| "timed out")?
        .map_err(|e| format!("consume: {e}"))?;
    drop(d);
    drop(first);
    dead_consumer.await;
    let mut second = q.consumer().await.map_err(|e| format!("consumer: {e}"))?;
    let again = tokio::time::timeout(WAIT * 3, second.next())
        .await
        .map_err(|_| "unacknowledged message was not redelivered")?
        .map_err(|e| format!("consume: {e}"))?;
    if &again.payload[..] != b"must-survive" {
        return fail(format!("redelivered {:?}", again.payload));
    }
    again.ack().await.map_err(|e| format!("ack: {e}"))?;
    Ok(())
}

/// For a queue whose partitions herald assigns ([`Queue::partitions`]): two
/// consumers given disjoint partition sets split the messages by key, each key's
/// messages reach only the consumer owning its partition, in publish order, and
/// every message arrives once. Queues without herald-assigned partitions pass
/// trivially (they say so with `None`).
pub async fn partitions_divide_keys(q: &dyn Queue) -> CheckResult {
    let Some(n) = q.partitions() else {
        return Ok(());
    };
    if n < 2 {
        return fail(format!(
            "partitions() = Some({n}); a partitioned queue has at least 2"
        ));
    }
    let even: Vec<u32> = (0..n).filter(|p| p % 2 == 0).collect();
    let odd: Vec<u32> = (0..n).filter(|p| p % 2 == 1).collect();
    let mut consumers = [
        q.consumer_of(&even)
            .await
            .map_err(|e| format!("consumer: {e}"))?,
        q.consumer_of(&odd)
            .await
            .map_err(|e| format!("consumer: {e}"))?,
    ];
    let keys: Vec<String> = (0..16).map(|i| format!("live://{i}")).collect();
    let per_key = 10;
    for i in 0..per_key {
        for k in &keys {
            q.publish(k, Bytes::from(format!("{k}|{i}")))
                .await
                .map_err(|e| format!("publish: {e}"))?;
        }
    }
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    let mut total = 0;
    let want_total = keys.len() * per_key;
    let deadline = tokio::time::Instant::now() + WAIT;
    while total < want_total {
        for (which, c) in consumers.iter_mut().enumerate() {
            let d = match tokio::time::timeout(Duration::from_millis(200), c.next()).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => return fail(format!("consume: {e}")),
                Err(_) => continue,
            };
            let text = String::from_utf8(d.payload.to_vec()).map_err(|e| e.to_string())?;
            let (k, i) = text.split_once('|').ok_or("malformed payload")?;
            let p = crate::partition_of(k, n);
            if (p % 2) as usize != which {
                return fail(format!(
                    "key {k} (partition {p}) reached the consumer of the other partitions"
                ));
            }
            seen.entry(k.to_string())
                .or_default()
                .push(i.parse().map_err(|_| "malformed index")?);
            d.ack().await.map_err(|e| format!("ack: {e}"))?;
            total += 1;
        }
        if tokio::time::Instant::now() > deadline {
            return fail(format!("only {total} of {want_total} messages arrived"));
        }
    }
    let want: Vec<usize> = (0..per_key).collect();
    for k in &keys {
        let got = seen.get(k).cloned().unwrap_or_default();
        if got != want {
            return fail(format!("key {k}: got {got:?}, want {want:?}"));
        }
    }
    Ok(())
}

/// A consumer with nothing to read waits quietly (several seconds, longer than
/// any backend's internal poll or block interval) instead of reporting an error,
/// and a message published afterwards reaches it promptly.
pub async fn idle_consumer_waits(q: &dyn Queue) -> CheckResult {
    let mut c = q.consumer().await.map_err(|e| format!("consumer: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(3), c.next()).await {
        Err(_) => {}
        Ok(Ok(d)) => return fail(format!("empty queue delivered {:?}", d.payload)),
        Ok(Err(e)) => return fail(format!("idle consumer failed: {e}")),
    }
    q.publish("k", Bytes::from_static(b"after-idle"))
        .await
        .map_err(|e| format!("publish: {e}"))?;
    let d = tokio::time::timeout(WAIT, c.next())
        .await
        .map_err(|_| "message published after an idle spell did not arrive")?
        .map_err(|e| format!("consume: {e}"))?;
    if &d.payload[..] != b"after-idle" {
        return fail(format!("delivered {:?}", d.payload));
    }
    d.ack().await.map_err(|e| format!("ack: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryQueue;

    fn q() -> MemoryQueue {
        MemoryQueue::new(1024, Duration::from_millis(100))
    }

    #[tokio::test]
    async fn memory_queue_is_ordered_per_key() {
        ordered_per_key(&q()).await.unwrap();
    }

    #[tokio::test]
    async fn memory_queue_shares_between_consumers() {
        competing_consumers(&q()).await.unwrap();
    }

    #[tokio::test]
    async fn memory_queue_idle_consumer_waits() {
        idle_consumer_waits(&q()).await.unwrap();
    }
}
