//! The comets job can reach: kept current from the registry (every zone), three
//! lanes of work per comet, and the acknowledgement bookkeeping that ties queue
//! messages to the comet calls they cause.
//!
//! The lanes keep one kind of work from waiting behind another: a key push is not
//! held up by a room batch to 10,000 members that the comet is still writing.
//!
//! | lane | calls | order |
//! |---|---|---|
//! | keys (`push_msg`) | one at a time | as queued (pushes under one key stay in order) |
//! | rooms (`broadcast_room`) | up to [`ROOM_CALLS`] at once | per room, by the room batcher: it sends a room's next batch only when every comet answered the previous one |
//! | broadcasts | one at a time | as queued |

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_discovery::{Instance, Registry, RegistryError, COMET_APPID};
use herald_queue::Delivery;
use herald_rpc::{BroadcastReq, BroadcastRoomReq, CometService, ErrorKind, PushMsgReq};
use metrics::Histogram;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::JobMetrics;

/// Turns a registry instance into a callable comet.
pub trait CometConnector: Send + Sync + 'static {
    /// A client for the comet described by `instance`, or `None` if it cannot be
    /// reached by this connector.
    fn connect(&self, instance: &Instance) -> Option<Arc<dyn CometService>>;
}

/// A message taken from the queue and not yet acknowledged. Its token keeps the
/// consumer that took it waiting (on shutdown, or when its partition moves) until
/// the acknowledgement is done.
pub(crate) struct InFlight {
    delivery: Delivery,
    _token: TaskTrackerToken,
    /// When job took it from the queue.
    taken: Instant,
    /// Where the time from taken to every comet call returned is recorded (none:
    /// not timed, e.g. an undecodable message).
    timer: Option<Histogram>,
}

impl InFlight {
    pub(crate) fn new(delivery: Delivery, token: TaskTrackerToken) -> InFlight {
        InFlight {
            delivery,
            _token: token,
            taken: Instant::now(),
            timer: None,
        }
    }

    /// Records in `h`, once the work it caused is done, how long that took.
    pub(crate) fn time_with(&mut self, h: &Histogram) {
        self.timer = Some(h.clone());
    }

    fn record_done(&self) {
        if let Some(h) = &self.timer {
            h.record(self.taken.elapsed());
        }
    }

    pub(crate) fn payload(&self) -> Bytes {
        self.delivery.payload.clone()
    }

    /// Acknowledges; the token is released once the queue has answered.
    async fn ack(self, metrics: &JobMetrics) {
        if let Err(e) = self.delivery.ack().await {
            metrics.ack_errors.increment(1);
            warn!(error = %e, "acknowledgement failed; the message may be delivered again");
        }
    }
}

/// Acknowledges the queue message(s) it holds once the last clone is dropped, i.e.
/// when every comet call caused by them has returned.
#[derive(Clone)]
pub(crate) struct AckGroup {
    _guard: Arc<AckOnDrop>,
}

struct AckOnDrop {
    deliveries: Mutex<Vec<InFlight>>,
    metrics: JobMetrics,
    /// Told when the group completes (the room batcher waits on it).
    done: Option<oneshot::Sender<()>>,
}

impl AckGroup {
    pub(crate) fn new(delivery: InFlight, metrics: JobMetrics) -> AckGroup {
        AckGroup {
            _guard: Arc::new(AckOnDrop {
                deliveries: Mutex::new(vec![delivery]),
                metrics,
                done: None,
            }),
        }
    }

    /// A group for several deliveries, and a receiver told when it completes.
    pub(crate) fn many(
        deliveries: Vec<InFlight>,
        metrics: JobMetrics,
    ) -> (AckGroup, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let group = AckGroup {
            _guard: Arc::new(AckOnDrop {
                deliveries: Mutex::new(deliveries),
                metrics,
                done: Some(tx),
            }),
        };
        (group, rx)
    }
}

impl Drop for AckOnDrop {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        let deliveries =
            std::mem::take(self.deliveries.get_mut().unwrap_or_else(|e| e.into_inner()));
        if deliveries.is_empty() {
            return;
        }
        for d in &deliveries {
            d.record_done();
        }
        let metrics = self.metrics.clone();
        // The acknowledgements hold their consumers' tokens: the consumer that
        // took these messages waits for this task before it ends.
        let ack = async move {
            for d in deliveries {
                d.ack(&metrics).await;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(ack);
            }
            Err(_) => warn!("acknowledgement skipped outside the runtime"),
        }
    }
}

/// A call to make on one comet.
#[derive(Clone)]
pub(crate) enum Work {
    Push(PushMsgReq),
    Room(BroadcastRoomReq),
    Broadcast(BroadcastReq),
}

/// Room batches one comet link has in flight at most (different rooms; a room
/// has one batch in flight at a time).
pub(crate) const ROOM_CALLS: usize = 64;

/// The lanes of a comet link (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Keys,
    Rooms,
    Broadcasts,
}

impl Lane {
    const ALL: [Lane; 3] = [Lane::Keys, Lane::Rooms, Lane::Broadcasts];

    fn of(work: &Work) -> Lane {
        match work {
            Work::Push(_) => Lane::Keys,
            Work::Room(_) => Lane::Rooms,
            Work::Broadcast(_) => Lane::Broadcasts,
        }
    }

    /// Calls the lane makes at once.
    fn calls(self) -> usize {
        match self {
            Lane::Rooms => ROOM_CALLS,
            Lane::Keys | Lane::Broadcasts => 1,
        }
    }
}

type LaneTx = mpsc::Sender<(Work, AckGroup)>;

/// One reachable comet: its client and its lanes of work.
pub struct CometLink {
    /// Server id.
    pub server: String,
    /// The comet's client.
    pub service: Arc<dyn CometService>,
    /// One sender per [`Lane`], in [`Lane::ALL`]'s order.
    lanes: [LaneTx; 3],
    /// Cancelled when the comet leaves the registry: its queued work is dropped
    /// (acknowledged) instead of timing out call by call.
    gone: CancellationToken,
}

impl CometLink {
    /// Queues work for this comet in its lane, waiting while the lane is full
    /// (back-pressure on the consumer rather than a silent drop).
    pub(crate) async fn send(&self, work: Work, ack: AckGroup) {
        let lane = Lane::of(&work);
        if self.lanes[lane as usize].send((work, ack)).await.is_err() {
            warn!(server = %self.server, ?lane, "comet link closed; work dropped");
        }
    }
}

/// How a link calls its comet: each call's deadline, and how long an
/// unreachable comet is tried again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallPolicy {
    pub timeout: Duration,
    pub retry: Duration,
}

/// First pause before calling an unreachable comet again; doubled each time.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between two tries.
const RETRY_MAX: Duration = Duration::from_millis(800);

async fn call_once(
    service: &dyn CometService,
    work: Work,
    timeout: Duration,
) -> Result<(), CallFailure> {
    let call = async {
        match work {
            Work::Push(r) => service.push_msg(r).await,
            Work::Room(r) => service.broadcast_room(r).await,
            Work::Broadcast(r) => service.broadcast(r).await,
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.kind == ErrorKind::Unavailable => {
            Err(CallFailure::Unreachable(e.to_string()))
        }
        Ok(Err(e)) => Err(CallFailure::Refused(e.to_string())),
        Err(_) => Err(CallFailure::TimedOut),
    }
}

enum CallFailure {
    /// The comet could not be reached: worth another try.
    Unreachable(String),
    /// The comet answered with an error: another try would get the same.
    Refused(String),
    /// No answer within the deadline (it may have been delivered).
    TimedOut,
}

/// Calls the comet; while it is unreachable, tries again with backoff for at
/// most `policy.retry` (a comet restarting, a network blip). Gives up at once
/// when the comet leaves the registry or the job stops.
async fn call_with_retry(
    server: &str,
    service: &dyn CometService,
    work: Work,
    policy: CallPolicy,
    metrics: &JobMetrics,
    gone: &CancellationToken,
) -> Result<(), CallFailure> {
    let give_up = tokio::time::Instant::now() + policy.retry;
    let mut pause = RETRY_FIRST;
    loop {
        match call_once(service, work.clone(), policy.timeout).await {
            Err(CallFailure::Unreachable(e)) if tokio::time::Instant::now() + pause < give_up => {
                metrics.comet_retries.increment(1);
                tracing::debug!(%server, error = %e, ?pause, "comet unreachable; trying again");
                tokio::select! {
                    _ = gone.cancelled() => return Err(CallFailure::Unreachable(e)),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// What a lane worker needs to call its comet; shared by its calls.
#[derive(Clone)]
struct Caller {
    server: String,
    service: Arc<dyn CometService>,
    policy: CallPolicy,
    metrics: JobMetrics,
    gone: CancellationToken,
    /// Set when a call gave up on the comet, cleared when one gets through:
    /// calls made meanwhile (in every lane) are tried once each, so an outage
    /// costs one retry window, not one per call.
    down: Arc<AtomicBool>,
}

impl Caller {
    async fn call(&self, work: Work) -> Result<(), CallFailure> {
        let policy = if self.down.load(Ordering::Relaxed) {
            CallPolicy {
                retry: Duration::ZERO,
                ..self.policy
            }
        } else {
            self.policy
        };
        let result = call_with_retry(
            &self.server,
            &*self.service,
            work,
            policy,
            &self.metrics,
            &self.gone,
        )
        .await;
        self.down.store(
            matches!(result, Err(CallFailure::Unreachable(_))),
            Ordering::Relaxed,
        );
        match &result {
            Ok(()) => {}
            Err(CallFailure::Unreachable(e)) => {
                self.metrics.dispatch_errors.increment(1);
                warn!(server = %self.server, error = %e, "comet unreachable; given up for this comet");
            }
            Err(CallFailure::Refused(e)) => {
                self.metrics.dispatch_errors.increment(1);
                warn!(server = %self.server, error = %e, "comet call failed");
            }
            Err(CallFailure::TimedOut) => {
                self.metrics.dispatch_errors.increment(1);
                warn!(server = %self.server, "comet call timed out");
            }
        }
        result
    }
}

/// Works one lane of a comet link: takes its work in order and makes at most
/// `lane.calls()` calls at once (each call's acknowledgement share is released
/// when it returns). Ends when the comet leaves or the job stops; the calls in
/// flight are then dropped with it.
async fn lane_worker(
    lane: Lane,
    caller: Caller,
    mut rx: mpsc::Receiver<(Work, AckGroup)>,
    stop: CancellationToken,
) {
    let limit = lane.calls();
    let mut calls: JoinSet<()> = JoinSet::new();
    let mut open = true;
    while open || !calls.is_empty() {
        tokio::select! {
            _ = caller.gone.cancelled() => break,
            // The job has stopped: its consumers have finished, nothing is queued.
            _ = stop.cancelled() => break,
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
            next = rx.recv(), if open && calls.len() < limit => match next {
                Some((work, ack)) => {
                    let caller = caller.clone();
                    calls.spawn(async move {
                        let _ = caller.call(work).await;
                        drop(ack);
                    });
                }
                // Every sender is gone: finish what is in flight.
                None => open = false,
            },
        }
    }
    calls.shutdown().await;
    // The comet left: its clients reconnect elsewhere. Drop what was queued for it
    // so nothing else (room batches, acknowledgements) waits on it.
    rx.close();
    let mut dropped = 0u64;
    while rx.try_recv().is_ok() {
        dropped += 1;
    }
    if dropped > 0 {
        caller.metrics.unroutable.increment(dropped);
        warn!(server = %caller.server, ?lane, dropped, "comet left; work queued for it dropped");
    }
}

/// Server id → link; replaced whole on every registry change.
type Links = Arc<HashMap<String, Arc<CometLink>>>;

/// The live set of comets, shared by the consumers and room batchers.
#[derive(Clone)]
pub struct Directory {
    links: Arc<RwLock<Links>>,
    /// Where link workers run, and what stops them.
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Directory {
    pub(crate) async fn start(
        registry: Arc<dyn Registry>,
        connector: Arc<dyn CometConnector>,
        queue: usize,
        policy: CallPolicy,
        metrics: JobMetrics,
        (tasks, stop): (&TaskTracker, &CancellationToken),
    ) -> Result<Directory, RegistryError> {
        let mut watch = registry.watch(COMET_APPID).await?;
        let dir = Directory {
            links: Arc::new(RwLock::new(Arc::new(HashMap::new()))),
            tasks: tasks.clone(),
            stop: stop.clone(),
        };
        let initial = watch.borrow_and_update().clone();
        dir.apply(&initial, &*connector, queue, policy, &metrics);
        let d = dir.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = watch.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let list = watch.borrow_and_update().clone();
                        d.apply(&list, &*connector, queue, policy, &metrics);
                    }
                }
            }
        });
        Ok(dir)
    }

    fn apply(
        &self,
        instances: &[Instance],
        connector: &dyn CometConnector,
        queue: usize,
        policy: CallPolicy,
        metrics: &JobMetrics,
    ) {
        let old = self.snapshot();
        let mut next = HashMap::new();
        for ins in instances {
            if let Some(link) = old.get(&ins.hostname) {
                next.insert(ins.hostname.clone(), link.clone());
                continue;
            }
            let Some(service) = connector.connect(ins) else {
                warn!(server = %ins.hostname, "comet is not reachable by this job");
                continue;
            };
            let gone = CancellationToken::new();
            let caller = Caller {
                server: ins.hostname.clone(),
                service: service.clone(),
                policy,
                metrics: metrics.clone(),
                gone: gone.clone(),
                down: Arc::new(AtomicBool::new(false)),
            };
            let lanes = Lane::ALL.map(|lane| {
                let (tx, rx) = mpsc::channel(queue.max(1));
                self.tasks
                    .spawn(lane_worker(lane, caller.clone(), rx, self.stop.clone()));
                tx
            });
            info!(server = %ins.hostname, zone = %ins.zone, "comet added");
            next.insert(
                ins.hostname.clone(),
                Arc::new(CometLink {
                    server: ins.hostname.clone(),
                    service,
                    lanes,
                    gone,
                }),
            );
        }
        for (server, link) in old.iter().filter(|(k, _)| !next.contains_key(*k)) {
            link.gone.cancel();
            info!(%server, "comet removed");
        }
        *self.links.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    fn snapshot(&self) -> Links {
        self.links.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The comet with this server id.
    pub fn get(&self, server: &str) -> Option<Arc<CometLink>> {
        self.snapshot().get(server).cloned()
    }

    /// Every comet.
    pub fn all(&self) -> Vec<Arc<CometLink>> {
        self.snapshot().values().cloned().collect()
    }
}
