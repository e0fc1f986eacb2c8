//! job: the fan-out tier.
//!
//! [`Job`] consumes `PushMsg`s from the [`herald_queue::Queue`], keeps a live
//! directory of comets from the registry ([`directory`]), and dispatches: PUSH to the
//! comet that holds the keys, ROOM through a per-room [`batcher`] to every comet,
//! BROADCAST to every comet with the speed limit shared among them. Each queue
//! message is acknowledged only after every comet call it caused has returned
//! (at-least-once).

use std::sync::Arc;

use bytes::Bytes;
use herald_discovery::{Instance, Registration, Registry};
use herald_queue::{Delivery, Queue, QueueError};
use herald_rpc::{BroadcastReq, Proto, PushMsg, PushMsgReq, PushType};
use metrics::{counter, Counter};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub mod batcher;
pub mod config;
pub mod directory;

pub use config::JobConfig;
pub use directory::{CometConnector, Directory};

use batcher::RoomBatcher;
use directory::{AckGroup, Work};

/// job's metric handles.
#[derive(Clone)]
pub(crate) struct JobMetrics {
    pub consumed_push: Counter,
    pub consumed_room: Counter,
    pub consumed_broadcast: Counter,
    pub bad_messages: Counter,
    pub unroutable: Counter,
    pub dispatch_errors: Counter,
    pub room_batches: Counter,
    pub room_batch_frames: Counter,
    pub ack_errors: Counter,
}

impl JobMetrics {
    fn new() -> JobMetrics {
        JobMetrics {
            consumed_push: counter!("herald_job_messages_total", "type" => "push"),
            consumed_room: counter!("herald_job_messages_total", "type" => "room"),
            consumed_broadcast: counter!("herald_job_messages_total", "type" => "broadcast"),
            bad_messages: counter!("herald_job_bad_messages_total"),
            unroutable: counter!("herald_job_unroutable_total"),
            dispatch_errors: counter!("herald_job_dispatch_errors_total"),
            room_batches: counter!("herald_job_room_batches_total"),
            room_batch_frames: counter!("herald_job_room_batch_frames_total"),
            ack_errors: counter!("herald_job_ack_errors_total"),
        }
    }
}

/// A running job.
pub struct Job {
    stop: CancellationToken,
    tracker: TaskTracker,
    registration: Option<Box<dyn Registration>>,
}

impl Job {
    /// Starts consuming `queue` and dispatching to the comets found in `registry`.
    ///
    /// If the queue has herald-assigned partitions ([`Queue::partitions`]), the job
    /// registers as `id` under [`JOB_APPID`], watches the other jobs, and consumes
    /// only its share of the partitions (see [`assigned`]), so the messages of one
    /// room are handled by one job at a time and stay in order. Otherwise every
    /// consumer competes for every message (or the engine assigns partitions, as
    /// Kafka's consumer groups do).
    pub async fn start(
        cfg: JobConfig,
        id: String,
        queue: Arc<dyn Queue>,
        registry: Arc<dyn Registry>,
        connector: Arc<dyn CometConnector>,
    ) -> Result<Job, QueueError> {
        let metrics = JobMetrics::new();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let directory = Directory::start(
            registry.clone(),
            connector,
            cfg.comet_queue,
            cfg.comet_timeout,
            metrics.clone(),
            stop.clone(),
        )
        .await
        .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        let batcher = Arc::new(RoomBatcher::new(
            cfg.clone(),
            directory.clone(),
            metrics.clone(),
        ));
        let workers = Workers {
            directory,
            batcher,
            metrics,
        };
        let mut registration = None;
        match queue.partitions() {
            Some(n) => {
                let mut jobs = registry
                    .watch(JOB_APPID)
                    .await
                    .map_err(|e| QueueError::Unavailable(e.to_string()))?;
                registration = Some(
                    registry
                        .register(Instance {
                            appid: JOB_APPID.into(),
                            hostname: id.clone(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| QueueError::Unavailable(e.to_string()))?,
                );
                let consumers = cfg.consumers.max(1);
                let stop = stop.clone();
                tracker.spawn(async move {
                    let mut current: Option<(Vec<u32>, CancellationToken, TaskTracker)> = None;
                    loop {
                        let list = jobs.borrow_and_update().clone();
                        let ids: Vec<&str> = list.iter().map(|i| i.hostname.as_str()).collect();
                        let mine = assigned(n, &ids, &id);
                        if current.as_ref().map(|c| &c.0) != Some(&mine) {
                            if let Some((_, old_stop, old_tasks)) = current.take() {
                                // Finish the message in hand before another job
                                // takes these partitions over.
                                old_stop.cancel();
                                old_tasks.close();
                                old_tasks.wait().await;
                            }
                            info!(job = %id, jobs = ids.len(), partitions = ?mine, "partitions assigned");
                            let part_stop = stop.child_token();
                            let part_tasks = TaskTracker::new();
                            for share in split(&mine, consumers) {
                                part_tasks.spawn(supervise(
                                    queue.clone(),
                                    Some(share),
                                    workers.clone(),
                                    part_stop.clone(),
                                ));
                            }
                            current = Some((mine, part_stop, part_tasks));
                        }
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            r = jobs.changed() => if r.is_err() { break },
                        }
                    }
                    if let Some((_, s, tasks)) = current {
                        s.cancel();
                        tasks.close();
                        tasks.wait().await;
                    }
                });
            }
            None => {
                for _ in 0..cfg.consumers.max(1) {
                    let consumer = queue.consumer().await?;
                    tracker.spawn(consume(consumer, workers.clone(), stop.clone()));
                }
            }
        }
        Ok(Job {
            stop,
            tracker,
            registration,
        })
    }

    /// Deregisters (so other jobs take its partitions), stops consuming and waits
    /// for the consumers to finish their current message.
    pub async fn shutdown(self) {
        if let Some(r) = &self.registration {
            if let Err(e) = r.deregister().await {
                warn!(error = %e, "job deregistration failed");
            }
        }
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// appid under which jobs register to divide partitions.
pub const JOB_APPID: &str = "herald.job";

/// The partitions (of `n`) that job `me` consumes when the live jobs are `jobs`:
/// partition `p` goes to the `p mod jobs`-th job in sorted id order. A job that
/// does not see itself registered consumes nothing (its registration was lost,
/// and the others have taken over).
pub fn assigned(n: u32, jobs: &[&str], me: &str) -> Vec<u32> {
    let mut sorted: Vec<&str> = jobs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let Some(i) = sorted.iter().position(|j| *j == me) else {
        return Vec::new();
    };
    (0..n).filter(|p| *p as usize % sorted.len() == i).collect()
}

/// Deals `parts` out to at most `k` consumers (round-robin), none empty.
fn split(parts: &[u32], k: usize) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); k.min(parts.len())];
    for (i, p) in parts.iter().enumerate() {
        let slot = i % out.len();
        out[slot].push(*p);
    }
    out
}

/// What a consumer loop dispatches with.
#[derive(Clone)]
struct Workers {
    directory: Directory,
    batcher: Arc<RoomBatcher>,
    metrics: JobMetrics,
}

/// Opens a consumer of `partitions` (retrying while the queue is down) and runs it
/// until `stop`.
async fn supervise(
    queue: Arc<dyn Queue>,
    partitions: Option<Vec<u32>>,
    workers: Workers,
    stop: CancellationToken,
) {
    let mut backoff = std::time::Duration::from_millis(100);
    let consumer = loop {
        let c = match &partitions {
            Some(p) => queue.consumer_of(p).await,
            None => queue.consumer().await,
        };
        match c {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %e, "cannot open a queue consumer; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    };
    consume(consumer, workers, stop).await;
}

async fn consume(
    mut consumer: Box<dyn herald_queue::Consumer>,
    workers: Workers,
    stop: CancellationToken,
) {
    let Workers {
        directory,
        batcher,
        metrics,
    } = workers;
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            n = consumer.next() => n,
        };
        let delivery = match next {
            Ok(d) => {
                backoff = std::time::Duration::from_millis(100);
                d
            }
            Err(QueueError::Closed) => return,
            Err(e) => {
                warn!(error = %e, "queue consume failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                continue;
            }
        };
        dispatch(delivery, &directory, &batcher, &metrics).await;
    }
}

/// Routes one queue message. The delivery travels with the work it causes and is
/// acknowledged when the last of it completes.
async fn dispatch(
    delivery: Delivery,
    directory: &Directory,
    batcher: &RoomBatcher,
    metrics: &JobMetrics,
) {
    let msg = match PushMsg::decode(delivery.payload.clone()) {
        Ok(m) => m,
        Err(e) => {
            // A message that can never be decoded is acknowledged so it does not
            // block the queue forever; it is counted and logged.
            metrics.bad_messages.increment(1);
            warn!(error = %e, "undecodable queue message dropped");
            AckGroup::new(delivery, metrics.clone());
            return;
        }
    };
    debug!(r#type = msg.r#type, room = %msg.room, op = msg.operation, "dispatching");
    match PushType::try_from(msg.r#type) {
        Ok(PushType::Push) => {
            metrics.consumed_push.increment(1);
            let ack = AckGroup::new(delivery, metrics.clone());
            let Some(link) = directory.get(&msg.server) else {
                metrics.unroutable.increment(1);
                warn!(server = %msg.server, "push for an unknown comet dropped");
                return;
            };
            let req = PushMsgReq {
                keys: msg.keys,
                proto: Some(Proto::raw(herald_proto::raw::single(
                    msg.operation,
                    &msg.msg,
                ))),
                proto_op: msg.operation,
            };
            link.send(Work::Push(req), ack).await;
        }
        Ok(PushType::Room) => {
            metrics.consumed_room.increment(1);
            batcher
                .push(msg.room, msg.operation, msg.msg, delivery)
                .await;
        }
        Ok(PushType::Broadcast) => {
            metrics.consumed_broadcast.increment(1);
            let ack = AckGroup::new(delivery, metrics.clone());
            let links = directory.all();
            if links.is_empty() {
                debug!("broadcast with no comet registered");
                return;
            }
            let speed = if msg.speed > 0 {
                (msg.speed / links.len() as i32).max(1)
            } else {
                0
            };
            let body: Bytes = herald_proto::raw::single(msg.operation, &msg.msg);
            for link in links.iter() {
                let req = BroadcastReq {
                    proto_op: msg.operation,
                    proto: Some(Proto::raw(body.clone())),
                    speed,
                };
                link.send(Work::Broadcast(req), ack.clone()).await;
            }
        }
        Err(_) => {
            metrics.bad_messages.increment(1);
            warn!(r#type = msg.r#type, "queue message of unknown type dropped");
            AckGroup::new(delivery, metrics.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_discovery::{Instance, LocalRegistry, COMET_APPID};
    use herald_queue::MemoryQueue;
    use herald_rpc::{BroadcastRoomReq, CometService, RoomsReply, RpcResult};
    use std::sync::Mutex;
    use std::time::Duration;

    /// A comet that never answers.
    struct Hang;

    #[async_trait::async_trait]
    impl CometService for Hang {
        async fn push_msg(&self, _: PushMsgReq) -> RpcResult<()> {
            std::future::pending().await
        }
        async fn broadcast(&self, _: BroadcastReq) -> RpcResult<()> {
            std::future::pending().await
        }
        async fn broadcast_room(&self, _: BroadcastRoomReq) -> RpcResult<()> {
            std::future::pending().await
        }
        async fn rooms(&self) -> RpcResult<RoomsReply> {
            Ok(Default::default())
        }
    }

    /// A comet that records the rooms it was asked to broadcast to.
    #[derive(Default)]
    struct Record(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl CometService for Record {
        async fn push_msg(&self, _: PushMsgReq) -> RpcResult<()> {
            Ok(())
        }
        async fn broadcast(&self, _: BroadcastReq) -> RpcResult<()> {
            Ok(())
        }
        async fn broadcast_room(&self, r: BroadcastRoomReq) -> RpcResult<()> {
            self.0.lock().unwrap().push(r.room_id);
            Ok(())
        }
        async fn rooms(&self) -> RpcResult<RoomsReply> {
            Ok(Default::default())
        }
    }

    struct Connector(Arc<Record>);

    impl CometConnector for Connector {
        fn connect(&self, i: &Instance) -> Option<Arc<dyn CometService>> {
            if i.hostname == "dead" {
                Some(Arc::new(Hang))
            } else {
                Some(self.0.clone())
            }
        }
    }

    #[test]
    fn partitions_are_dealt_over_the_live_jobs() {
        assert_eq!(assigned(4, &["b", "a"], "a"), vec![0, 2]);
        assert_eq!(assigned(4, &["b", "a"], "b"), vec![1, 3]);
        assert_eq!(assigned(3, &["a"], "a"), vec![0, 1, 2]);
        assert!(assigned(3, &["a"], "gone").is_empty());
        // Every partition has exactly one owner.
        let jobs = ["j1", "j2", "j3"];
        let mut all: Vec<u32> = jobs.iter().flat_map(|j| assigned(8, &jobs, j)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(split(&[0, 1, 2], 2), vec![vec![0, 2], vec![1]]);
        assert_eq!(split(&[5], 4), vec![vec![5]]);
    }

    fn room_msg(room: &str) -> Bytes {
        Bytes::from(
            PushMsg {
                r#type: PushType::Room as i32,
                operation: 1000,
                room: room.into(),
                msg: Bytes::from_static(b"x"),
                ..Default::default()
            }
            .encode_to_vec(),
        )
    }

    /// A comet that leaves the registry with work queued for it must not hold up
    /// delivery to the others, and the messages it held are acknowledged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removed_comet_does_not_stall_the_others() {
        let reg = LocalRegistry::new();
        let comet = |h: &str| Instance {
            appid: COMET_APPID.into(),
            hostname: h.into(),
            ..Default::default()
        };
        let dead = reg.register(comet("dead")).await.unwrap();
        let _live = reg.register(comet("live")).await.unwrap();
        let rec = Arc::new(Record::default());
        let q = Arc::new(MemoryQueue::new(1024, Duration::from_secs(1)));
        // A stall would last a minute per queued call.
        let cfg = JobConfig {
            comet_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let job = Job::start(
            cfg,
            "job-test".into(),
            q.clone(),
            Arc::new(reg.clone()),
            Arc::new(Connector(rec.clone())),
        )
        .await
        .unwrap();
        for i in 0..10 {
            q.publish("", room_msg(&format!("a{i}"))).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        dead.deregister().await.unwrap();
        for i in 0..10 {
            q.publish("", room_msg(&format!("b{i}"))).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = rec
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.starts_with('b'))
                .count();
            if got == 10 && q.depth() == Some(0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stalled: {got} of 10 rooms reached the live comet, queue depth {:?}",
                q.depth()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        job.shutdown().await;
    }
}
