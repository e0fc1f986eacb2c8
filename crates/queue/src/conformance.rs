//! The behaviour every [`Queue`] backend must show, as reusable checks. Each
//! backend's tests call these against a fresh queue on its real engine; the
//! in-process queue runs them in this crate's tests.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{Consumer, Queue, QueueError};

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
/// For queues whose [`Queue::consumer`] joins a shared group; a queue whose
/// consumers are only ever given partitions (Kafka) shares its work through
/// [`partitions_divide_keys`] and [`each_partition_keeps_its_keys`] instead.
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

/// What one of the consumers run by [`run_consumers`] received: its index and
/// the payload it acknowledged, or why it stopped.
type Received = (usize, Result<Bytes, String>);

/// Runs each consumer in a task of its own, as jobs run side by side: it takes
/// the next message, acknowledges it and reports it, until it fails. Dropping
/// the returned set stops them.
fn run_consumers(
    consumers: Vec<Box<dyn Consumer>>,
) -> (JoinSet<()>, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut running = JoinSet::new();
    for (which, mut c) in consumers.into_iter().enumerate() {
        let tx = tx.clone();
        running.spawn(async move {
            loop {
                let r = match c.next().await {
                    Ok(d) => {
                        let payload = d.payload.clone();
                        d.ack()
                            .await
                            .map(|()| payload)
                            .map_err(|e| format!("ack: {e}"))
                    }
                    Err(e) => Err(format!("consume: {e}")),
                };
                let failed = r.is_err();
                if tx.send((which, r)).is_err() || failed {
                    return;
                }
            }
        });
    }
    (running, rx)
}

/// The next message any of the running consumers acknowledged: (consumer,
/// payload as text).
async fn received(
    rx: &mut mpsc::UnboundedReceiver<Received>,
    so_far: usize,
    of: usize,
) -> Result<(usize, String), String> {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some((which, Ok(payload)))) => Ok((
            which,
            String::from_utf8(payload.to_vec()).map_err(|e| e.to_string())?,
        )),
        Ok(Some((which, Err(e)))) => fail(format!("consumer {which}: {e}")),
        Ok(None) => fail("every consumer stopped"),
        Err(_) => fail(format!(
            "only {so_far} of {of} messages arrived within {WAIT:?}"
        )),
    }
}

/// After every message arrived once: nothing else arrives within half a second
/// (no message is delivered a second time once acknowledged).
async fn nothing_more(rx: &mut mpsc::UnboundedReceiver<Received>) -> CheckResult {
    match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        Ok(Some((which, Ok(payload)))) => fail(format!(
            "consumer {which} received {payload:?} after every message had arrived once"
        )),
        Ok(Some((which, Err(e)))) => fail(format!("consumer {which}: {e}")),
        Ok(None) | Err(_) => Ok(()),
    }
}

/// Consumers of the group working side by side, as jobs do.
const SIDE_BY_SIDE: usize = 3;

/// Several consumers of the group running side by side (each in its own task,
/// acknowledging what it takes) on a stream of messages: each of them receives
/// some, none receives a message another (or itself) already received, and none
/// is lost. Messages are published in rounds, each consumed before the next,
/// until every consumer has had work (at most 600 messages). For queues with a
/// shared group, as [`competing_consumers`].
pub async fn every_consumer_gets_work(q: &dyn Queue) -> CheckResult {
    const ROUND: usize = 30;
    const MAX: usize = 20 * ROUND;
    let mut consumers = Vec::with_capacity(SIDE_BY_SIDE);
    for _ in 0..SIDE_BY_SIDE {
        consumers.push(q.consumer().await.map_err(|e| format!("consumer: {e}"))?);
    }
    let (_running, mut rx) = run_consumers(consumers);
    // Message number -> the consumer that received it.
    let mut owner: HashMap<usize, usize> = HashMap::new();
    let mut work = [0usize; SIDE_BY_SIDE];
    let mut published = 0;
    while work.contains(&0) {
        if published >= MAX {
            return fail(format!(
                "after {published} messages the consumers had received {work:?}: \
                 one of the group got no work"
            ));
        }
        for _ in 0..ROUND {
            q.publish(
                &format!("k{}", published % 16),
                Bytes::from(published.to_string()),
            )
            .await
            .map_err(|e| format!("publish: {e}"))?;
            published += 1;
        }
        while owner.len() < published {
            let (which, text) = received(&mut rx, owner.len(), published).await?;
            let i: usize = text
                .parse()
                .map_err(|_| format!("malformed payload {text:?}"))?;
            if i >= published {
                return fail(format!("consumer {which} received unpublished message {i}"));
            }
            if let Some(first) = owner.insert(i, which) {
                return fail(format!(
                    "message {i} delivered twice: to consumer {first}, then to consumer {which}"
                ));
            }
            work[which] += 1;
        }
    }
    nothing_more(&mut rx).await
}

/// For a queue whose partitions herald assigns ([`Queue::partitions`] is
/// `Some(n)`): one consumer per partition, each of exactly one partition
/// ([`Queue::consumer_of`]`(&[p])`), running side by side. Consumer `p` only
/// ever receives messages whose key maps to `p` ([`partition_of`](crate::partition_of)),
/// each key's messages arrive in publish order, and every message arrives once.
/// A queue that is not partitioned fails this check: test a partitioned one.
pub async fn each_partition_keeps_its_keys(q: &dyn Queue) -> CheckResult {
    let Some(n) = q.partitions() else {
        return fail("partitions() = None: this check needs a queue partitioned by herald");
    };
    if n < 2 {
        return fail(format!(
            "partitions() = Some({n}); a partitioned queue has at least 2"
        ));
    }
    // Keys until every partition has at least two of them.
    let mut keys: Vec<String> = Vec::new();
    let mut per_partition = vec![0usize; n as usize];
    let mut i = 0;
    while per_partition.iter().any(|&k| k < 2) {
        if i > 100 * n {
            return fail(format!(
                "no keys found for some of the {n} partitions: {per_partition:?}"
            ));
        }
        let k = format!("live://{i}");
        per_partition[crate::partition_of(&k, n) as usize] += 1;
        keys.push(k);
        i += 1;
    }
    let mut consumers = Vec::with_capacity(n as usize);
    for p in 0..n {
        consumers.push(
            q.consumer_of(&[p])
                .await
                .map_err(|e| format!("consumer of partition {p}: {e}"))?,
        );
    }
    let (_running, mut rx) = run_consumers(consumers);
    let per_key = 10;
    for i in 0..per_key {
        for k in &keys {
            q.publish(k, Bytes::from(format!("{k}|{i}")))
                .await
                .map_err(|e| format!("publish: {e}"))?;
        }
    }
    let want_total = keys.len() * per_key;
    let mut next: HashMap<String, usize> = HashMap::new();
    for total in 0..want_total {
        // Consumer `which` is the one of partition `which`.
        let (which, text) = received(&mut rx, total, want_total).await?;
        let (k, i) = text.split_once('|').ok_or("malformed payload")?;
        let i: usize = i.parse().map_err(|_| "malformed index")?;
        let p = crate::partition_of(k, n) as usize;
        if p != which {
            return fail(format!(
                "the consumer of partition {which} received key {k} of partition {p}"
            ));
        }
        let want = next.entry(k.to_string()).or_default();
        if i != *want {
            return fail(format!(
                "key {k}: message {i} arrived when {want} was next (publish order, once each)"
            ));
        }
        *want += 1;
    }
    nothing_more(&mut rx).await
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
    async fn memory_queue_gives_every_consumer_work() {
        every_consumer_gets_work(&q()).await.unwrap();
    }

    // The in-process queue is not partitioned (`partitions()` is `None`), so
    // `partitions_divide_keys` and `each_partition_keeps_its_keys` are for the
    // networked backends only.

    #[tokio::test]
    async fn memory_queue_idle_consumer_waits() {
        idle_consumer_waits(&q()).await.unwrap();
    }

    /// A queue that breaks what the checks look for: with `starve`, only its
    /// first consumer ever receives anything; with `partitions`, it claims
    /// herald-assigned partitions but every consumer reads every key.
    struct Broken {
        inner: MemoryQueue,
        starve: bool,
        partitions: Option<u32>,
        opened: std::sync::atomic::AtomicUsize,
    }

    struct Starved;

    #[async_trait::async_trait]
    impl Consumer for Starved {
        async fn next(&mut self) -> Result<crate::Delivery, QueueError> {
            std::future::pending().await
        }
    }

    #[async_trait::async_trait]
    impl Queue for Broken {
        async fn publish(&self, key: &str, payload: Bytes) -> Result<(), QueueError> {
            self.inner.publish(key, payload).await
        }

        async fn consumer(&self) -> Result<Box<dyn Consumer>, QueueError> {
            let first = self
                .opened
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                == 0;
            if self.starve && !first {
                return Ok(Box::new(Starved));
            }
            self.inner.consumer().await
        }

        fn partitions(&self) -> Option<u32> {
            self.partitions
        }

        fn backend(&self) -> &'static str {
            "broken"
        }
    }

    fn broken(starve: bool, partitions: Option<u32>) -> Broken {
        Broken {
            inner: q(),
            starve,
            partitions,
            opened: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_consumer_without_work_fails_the_check() {
        let err = every_consumer_gets_work(&broken(true, None))
            .await
            .unwrap_err();
        assert!(err.contains("got no work"), "{err}");
    }

    #[tokio::test]
    async fn keys_outside_their_partition_fail_the_check() {
        let err = each_partition_keeps_its_keys(&broken(false, Some(4)))
            .await
            .unwrap_err();
        assert!(err.contains("of partition"), "{err}");
        let err = each_partition_keeps_its_keys(&q()).await.unwrap_err();
        assert!(err.contains("partitions() = None"), "{err}");
    }
}
