//! job: the fan-out tier.
//!
//! [`Job`] consumes `PushMsg`s from the [`herald_queue::Queue`], keeps a live
//! directory of comets from the registry ([`directory`]), and dispatches: PUSH to the
//! comet that holds the keys, ROOM through a per-room [`batcher`] to every comet,
//! BROADCAST to every comet with the speed limit shared among them. Each queue
//! message is acknowledged only after every comet call it caused has returned
//! (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_discovery::{Instance, Registration, Registry, RegistryError};
use herald_queue::{Consumer, Queue, QueueError};
use herald_rpc::{BroadcastReq, Proto, PushMsg, PushMsgReq, PushType};
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub mod batcher;
pub mod config;
pub mod directory;
pub mod ownership;
#[cfg(test)]
mod timing_tests;

pub use config::JobConfig;
pub use directory::{CometConnector, Directory};

use batcher::RoomBatcher;
use directory::{AckGroup, InFlight, Work};
use ownership::Ownership;

/// job's metric handles.
#[derive(Clone)]
pub(crate) struct JobMetrics {
    pub consumed_push: Counter,
    pub consumed_room: Counter,
    pub consumed_broadcast: Counter,
    pub bad_messages: Counter,
    pub unroutable: Counter,
    pub dispatch_errors: Counter,
    pub comet_retries: Counter,
    pub room_batches: Counter,
    pub room_batch_frames: Counter,
    pub ack_errors: Counter,
    /// Handed to the queue by logic → taken by job, per message type.
    pub queued: [Histogram; 3],
    /// Taken by job → every comet call it caused returned, per message type.
    pub dispatched: [Histogram; 3],
    /// The longest time a message taken in the last second had been in the
    /// queue (0 when none was taken), set each second by [`lag_loop`].
    pub lag: Gauge,
    /// That longest wait so far this second, µs.
    pub lag_max_us: Arc<std::sync::atomic::AtomicU64>,
}

/// The message types, in the order of [`JobMetrics::queued`] and
/// [`JobMetrics::dispatched`]: `PushMsg.Type`'s values.
const TYPES: [&str; 3] = ["push", "room", "broadcast"];

impl JobMetrics {
    fn new() -> JobMetrics {
        JobMetrics {
            consumed_push: counter!("herald_job_messages_total", "type" => "push"),
            consumed_room: counter!("herald_job_messages_total", "type" => "room"),
            consumed_broadcast: counter!("herald_job_messages_total", "type" => "broadcast"),
            bad_messages: counter!("herald_job_bad_messages_total"),
            unroutable: counter!("herald_job_unroutable_total"),
            dispatch_errors: counter!("herald_job_dispatch_errors_total"),
            comet_retries: counter!("herald_job_comet_retries_total"),
            room_batches: counter!("herald_job_room_batches_total"),
            room_batch_frames: counter!("herald_job_room_batch_frames_total"),
            ack_errors: counter!("herald_job_ack_errors_total"),
            queued: TYPES.map(|t| histogram!("herald_job_queue_seconds", "type" => t)),
            dispatched: TYPES.map(|t| histogram!("herald_job_dispatch_seconds", "type" => t)),
            lag: gauge!("herald_job_consumer_lag_seconds"),
            lag_max_us: Arc::default(),
        }
    }
}

/// A running job.
pub struct Job {
    /// Stops consumption (the ownership task and the consumers).
    stop: CancellationToken,
    /// The ownership task and every consumer; each consumer ends once all it
    /// delivered is acknowledged.
    consumers: TaskTracker,
    /// Stops what serves the consumers: the comet directory, its links and the
    /// room batchers. Cancelled only after the consumers have finished.
    stop_background: CancellationToken,
    background: TaskTracker,
    registration: Option<Arc<dyn Registration>>,
}

impl Job {
    /// Starts consuming `queue` and dispatching to the comets found in `registry`.
    ///
    /// If the queue has herald-assigned partitions ([`Queue::partitions`]), the job
    /// registers as `id` under [`JOB_APPID`] and consumes the partitions it owns
    /// ([`ownership`]): one consumer per partition, so the messages of one room are
    /// handled by one job at a time and stay in order, also while partitions move
    /// between jobs. Otherwise `consumers` consumers compete for every message.
    pub async fn start(
        cfg: JobConfig,
        id: String,
        queue: Arc<dyn Queue>,
        registry: Arc<dyn Registry>,
        connector: Arc<dyn CometConnector>,
    ) -> Result<Job, StartError> {
        let metrics = JobMetrics::new();
        let stop = CancellationToken::new();
        let consumers = TaskTracker::new();
        let stop_background = CancellationToken::new();
        let background = TaskTracker::new();
        let directory = Directory::start(
            registry.clone(),
            connector,
            cfg.comet_queue,
            directory::CallPolicy {
                timeout: cfg.comet_timeout,
                retry: cfg.comet_retry,
            },
            metrics.clone(),
            (&background, &stop_background),
        )
        .await?;
        background.spawn(lag_loop(metrics.clone(), stop_background.clone()));
        let batcher = Arc::new(RoomBatcher::new(
            cfg.clone(),
            directory.clone(),
            metrics.clone(),
            (background.clone(), stop_background.clone()),
        ));
        let workers = Workers {
            directory,
            batcher,
            metrics,
        };
        let mut registration = None;
        match queue.partitions() {
            Some(n) => {
                let reg: Arc<dyn Registration> = Arc::from(
                    registry
                        .register(Instance {
                            appid: JOB_APPID.into(),
                            hostname: id.clone(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        })
                        .await?,
                );
                registration = Some(reg.clone());
                let ownership = Ownership {
                    n,
                    me: id,
                    queue,
                    workers,
                    registry,
                    registration: reg,
                    tasks: consumers.clone(),
                };
                let stop = stop.clone();
                consumers.spawn(ownership.run(stop));
            }
            None => {
                for _ in 0..cfg.consumers.max(1) {
                    let consumer = queue.consumer().await?;
                    consumers.spawn(consume(consumer, workers.clone(), stop.clone()));
                }
            }
        }
        Ok(Job {
            stop,
            consumers,
            stop_background,
            background,
            registration,
        })
    }

    /// Leaves in order: marks itself leaving (the other jobs stop counting it and
    /// wait for its partitions), stops consuming, waits until everything it took
    /// from the queue has reached the comets and been acknowledged, releases its
    /// partitions one by one as each is done, deregisters, and stops its comet
    /// links and room batchers.
    pub async fn shutdown(self) {
        if let Some(r) = &self.registration {
            let leaving = [(ownership::LEAVING.to_string(), "true".to_string())].into();
            if let Err(e) = r.update(leaving).await {
                warn!(error = %e, "cannot mark the job as leaving; its partitions move as their claims are released");
            }
        }
        self.stop.cancel();
        self.consumers.close();
        self.consumers.wait().await;
        if let Some(r) = &self.registration {
            if let Err(e) = r.deregister().await {
                warn!(error = %e, "job deregistration failed");
            }
        }
        self.stop_background.cancel();
        self.background.close();
        self.background.wait().await;
    }
}

/// Why a job could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The registry (comets to watch, or the job's own registration) failed.
    #[error("job cannot start: {0}")]
    Registry(#[from] RegistryError),
    /// The queue would not open a consumer.
    #[error("job cannot start: {0}")]
    Queue(#[from] QueueError),
}

/// appid under which jobs register to divide partitions.
pub const JOB_APPID: &str = "herald.job";

/// What a consumer loop dispatches with.
#[derive(Clone)]
pub(crate) struct Workers {
    directory: Directory,
    batcher: Arc<RoomBatcher>,
    metrics: JobMetrics,
}

/// Opens a consumer (retrying while the queue is down) until `stop`.
async fn open(
    queue: &dyn Queue,
    partition: Option<u32>,
    stop: &CancellationToken,
) -> Option<Box<dyn Consumer>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let c = match partition {
            Some(p) => queue.consumer_of(&[p]).await,
            None => queue.consumer().await,
        };
        match c {
            Ok(c) => return Some(c),
            Err(e) => {
                warn!(error = %e, partition, "cannot open a queue consumer; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Consumes partition `p` until `stop`, then waits until everything it took is
/// acknowledged and the queue has recorded it.
pub(crate) async fn consume_partition(
    queue: Arc<dyn Queue>,
    p: u32,
    workers: Workers,
    stop: CancellationToken,
) {
    if let Some(consumer) = open(&*queue, Some(p), &stop).await {
        consume(consumer, workers, stop).await;
    }
}

/// Takes messages from `consumer` and dispatches them until `stop` (or the queue
/// closes), then waits for their acknowledgements and closes the consumer.
async fn consume(mut consumer: Box<dyn Consumer>, workers: Workers, stop: CancellationToken) {
    let inflight = TaskTracker::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            n = consumer.next() => n,
        };
        let delivery = match next {
            Ok(d) => {
                backoff = Duration::from_millis(100);
                d
            }
            Err(QueueError::Closed) => break,
            Err(e) => {
                warn!(error = %e, "queue consume failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let taken = InFlight::new(delivery, inflight.token());
        dispatch(taken, &workers).await;
    }
    // What the consumer already received goes out too, in order, so the next
    // consumer of these partitions starts after it.
    match consumer.finish().await {
        Ok(rest) => {
            for delivery in rest {
                dispatch(InFlight::new(delivery, inflight.token()), &workers).await;
            }
        }
        Err(e) => {
            warn!(error = %e, "queue consumer could not finish its last read; those messages are delivered again later")
        }
    }
    inflight.close();
    inflight.wait().await;
    if let Err(e) = consumer.close().await {
        warn!(error = %e, "queue consumer closed without recording every acknowledgement; some messages may be delivered again");
    }
}

/// Sets `herald_job_consumer_lag_seconds` each second to the longest time a
/// message taken during that second had waited in the queue: 0 when none was
/// taken, so a burst long gone does not keep an alert firing.
async fn lag_loop(metrics: JobMetrics, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let us = metrics
            .lag_max_us
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        metrics.lag.set(us as f64 / 1e6);
    }
}

/// Now in microseconds since the Unix epoch.
fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// Routes one queue message. The delivery travels with the work it causes and is
/// acknowledged when the last of it completes.
async fn dispatch(mut delivery: InFlight, workers: &Workers) {
    let Workers {
        directory,
        batcher,
        metrics,
    } = workers;
    let msg = match PushMsg::decode(delivery.payload()) {
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
    if let Some(t) = usize::try_from(msg.r#type)
        .ok()
        .filter(|t| *t < TYPES.len())
    {
        delivery.time_with(&metrics.dispatched[t]);
        if msg.queued_us > 0 {
            // The clocks of two hosts may disagree: a message from the future
            // waited for nothing.
            let waited_us = (unix_micros() - msg.queued_us).max(0) as u64;
            metrics.queued[t].record(waited_us as f64 / 1e6);
            metrics
                .lag_max_us
                .fetch_max(waited_us, std::sync::atomic::Ordering::Relaxed);
        }
    }
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
                position: msg.position,
            };
            link.send(Work::Push(req), ack).await;
        }
        Ok(PushType::Room) => {
            metrics.consumed_room.increment(1);
            batcher
                .push(msg.room, msg.operation, msg.msg, msg.position, delivery)
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
        // The live comet has every one of them, so the rest waits on the dead one.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rec
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with('a'))
            .count()
            < 10
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the live comet stalled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(q.depth(), Some(10), "held by the comet that never answers");
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
