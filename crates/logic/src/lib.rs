//! logic: the control tier.
//!
//! [`Logic`] authenticates connects (through an [`Authenticator`]), keeps the route
//! table in a [`herald_store::SessionStore`], aggregates per-comet online counts,
//! ranks comets for clients ([`balancer`]) and turns push requests into `PushMsg`s on
//! the [`herald_queue::Queue`]. comets call it through [`herald_rpc::LogicService`];
//! backends call it through the goim HTTP API built by [`http::router`], guarded by
//! the [`api_keys`] of the `[api]` section.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use herald_discovery::{Instance, Instances, Registry, COMET_APPID};
use herald_proto::{recovery, AuthToken};
use herald_queue::{Queue, QueueError};
use herald_rpc::{
    Backoff, ConnectReply, ConnectReq, DisconnectReply, DisconnectReq, Grant, HeartbeatReq,
    HistoryReply, HistoryReq, LogicService, NodesReply, NodesReq, OnlineReply, OnlineReq, Proto,
    PushMsg, PushType, ReceiveReply, ReceiveReq, RpcError, RpcResult,
};
use herald_store::{OnlineStore, ServerOnline, SessionStore, StoreError};
use metrics::{counter, histogram, Counter, Histogram};
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub mod api_keys;
pub mod auth;
pub mod balancer;
pub mod config;
pub mod history;
pub mod http;

pub use config::{BackoffConfig, LogicConfig, NodeConfig};
pub use history::{History, HistoryConfig, StreamHistory};

/// Who an authenticated client is and what it may do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// Member id; 0 = anonymous.
    pub mid: i64,
    /// Connection key; empty = logic generates one.
    pub key: String,
    /// Room to join at once (`type://id`); empty = none.
    pub room_id: String,
    /// Ops accepted for key, mid and broadcast pushes from the start.
    pub accepts: Vec<i32>,
    /// What the connection may do later and until when; `None` = anything, for
    /// ever (goim's behaviour, trust mode).
    pub grant: Option<Grant>,
    /// The authenticator answers this connection's upstream frames
    /// ([`Authenticator::answer`]) instead of goim's empty echo: an
    /// application's connection (the chat's).
    pub answered: bool,
}

/// Decides who a connecting client is. [`TrustingAuthenticator`] is goim's
/// behaviour; [`auth`] has the JWT and webhook modes.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Returns the identity for a connect request, or an error (with kind
    /// `Unauthenticated`, or `Unavailable` when the decision could not be made) to
    /// refuse it. Never lets a client in on failure.
    async fn authenticate(&self, req: &ConnectReq) -> RpcResult<Identity>;

    /// The reply to an upstream frame of a connection whose identity was
    /// `answered` (comet sends it with the request's seq); `None`: goim's empty
    /// echo. Errors are the application's to put in the reply: an `Err` here
    /// means it could not be asked, and the client gets the empty echo.
    async fn answer(&self, req: &ReceiveReq) -> RpcResult<Option<Proto>> {
        let _ = req;
        Ok(None)
    }

    /// The replies to frames of an answered connection that comet read
    /// together: `req.proto`, then each of `req.more`, one per frame handled,
    /// in that order (`None`: goim's empty echo). It may stop before the end
    /// (after the first) once its [`AnswerBudget`] is spent: comet asks about
    /// the frames left again. By default each is [`answer`]ed in turn, as if
    /// it had come in a request of its own; a frame that could not be asked
    /// about gets the empty echo and the next ones are still answered.
    ///
    /// [`answer`]: Authenticator::answer
    async fn answer_all(&self, req: &ReceiveReq) -> RpcResult<Vec<Option<Proto>>> {
        let mut replies = Vec::with_capacity(1 + req.more.len());
        let mut budget = AnswerBudget::new();
        for p in req.proto.iter().chain(&req.more) {
            if !replies.is_empty() && budget.spent() {
                break;
            }
            let one = ReceiveReq {
                mid: req.mid,
                proto: Some(p.clone()),
                context: req.context.clone(),
                more: Vec::new(),
            };
            let reply = match self.answer(&one).await {
                Ok(reply) => reply,
                Err(e) => {
                    warn!(mid = req.mid, op = p.op, error = %e, "a frame could not be answered");
                    None
                }
            };
            budget.took(reply.iter());
            replies.push(reply);
        }
        Ok(replies)
    }

    /// The mode's name, for logs and metrics.
    fn mode(&self) -> &'static str;
}

/// What one [`Authenticator::answer_all`] takes on: once its replies hold
/// [`AnswerBudget::BYTES`] or it has run for [`AnswerBudget::TIME`], it stops
/// and hands the frames left back to comet (which writes the replies so far
/// and asks again). It keeps a connection's frames asked about together from
/// holding more memory, or taking longer, than a few answered one by one.
#[derive(Debug)]
pub struct AnswerBudget {
    started: std::time::Instant,
    bytes: usize,
}

impl AnswerBudget {
    pub const BYTES: usize = 1 << 20;
    pub const TIME: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new() -> AnswerBudget {
        AnswerBudget {
            started: std::time::Instant::now(),
            bytes: 0,
        }
    }

    /// Counts replies made.
    pub fn took<'a>(&mut self, replies: impl Iterator<Item = &'a Proto>) {
        self.bytes += replies.map(|p| p.body.len()).sum::<usize>();
    }

    /// Whether no more frames should be taken on (the first always is).
    pub fn spent(&self) -> bool {
        self.bytes >= Self::BYTES || self.started.elapsed() >= Self::TIME
    }
}

impl Default for AnswerBudget {
    fn default() -> AnswerBudget {
        AnswerBudget::new()
    }
}

/// goim's behaviour: the auth body is the identity.
pub struct TrustingAuthenticator;

#[async_trait]
impl Authenticator for TrustingAuthenticator {
    async fn authenticate(&self, req: &ConnectReq) -> RpcResult<Identity> {
        let t = AuthToken::parse(&req.token).map_err(|e| RpcError::invalid(e.to_string()))?;
        Ok(Identity {
            mid: t.mid,
            key: t.key,
            room_id: t.room_id,
            accepts: t.accepts,
            grant: None,
            answered: false,
        })
    }

    fn mode(&self) -> &'static str {
        "trust"
    }
}

/// Why a push request failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The route store failed; nothing was published.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The queue did not accept the message.
    #[error("{0}")]
    Queue(#[from] QueueError),
}

/// Online totals over all comets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Sum of each comet's distinct client IPs.
    pub ip_count: i64,
    /// Connections.
    pub conn_count: i64,
}

struct PushMetrics {
    keys: Counter,
    mids: Counter,
    room: Counter,
    all: Counter,
    /// Accepted → every message handed to the queue, per kind (successes only).
    publish_keys: Histogram,
    publish_mids: Histogram,
    publish_room: Histogram,
    publish_all: Histogram,
    failures: Counter,
    unroutable: Counter,
    upstream: Counter,
    auth_refused: Counter,
}

/// The logic tier.
pub struct Logic {
    cfg: LogicConfig,
    auth: Arc<dyn Authenticator>,
    sessions: Arc<dyn SessionStore>,
    online: Arc<dyn OnlineStore>,
    queue: Arc<dyn Queue>,
    /// Live comets from the registry.
    comets: watch::Receiver<Instances>,
    /// Each comet's last known room counts: from its own reports to this logic and
    /// from the store (reports that reached other logics).
    reports: Mutex<HashMap<String, ServerOnline>>,
    /// Cluster-wide room counts: the sum of `reports`.
    room_count: RwLock<Arc<HashMap<String, i32>>>,
    balancer: Mutex<balancer::Balancer>,
    /// Streams' history (none: no stream keeps any, goim's behaviour).
    history: Option<History>,
    metrics: PushMetrics,
}

/// Now in microseconds since the Unix epoch (the clock every process of a
/// cluster shares, give or take its synchronisation).
fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A store failure, as the comet that called sees it: the store is shared by
/// every logic, so the comet does not try another logic for it.
fn store_err(e: StoreError) -> RpcError {
    RpcError::engine_unavailable(format!("{} store", e.engine()), e.to_string())
}

impl Logic {
    /// A logic over the given seams; watches comets in `registry`.
    pub async fn new(
        cfg: LogicConfig,
        auth: Arc<dyn Authenticator>,
        sessions: Arc<dyn SessionStore>,
        online: Arc<dyn OnlineStore>,
        queue: Arc<dyn Queue>,
        registry: Arc<dyn Registry>,
        history: Option<History>,
    ) -> Result<Arc<Logic>, herald_discovery::RegistryError> {
        let comets = registry.watch(COMET_APPID).await?;
        let history = history.filter(|h| h.config().enabled());
        Ok(Arc::new(Logic {
            cfg,
            auth,
            sessions,
            online,
            queue,
            comets,
            reports: Mutex::new(HashMap::new()),
            room_count: RwLock::new(Arc::new(HashMap::new())),
            balancer: Mutex::new(balancer::Balancer::default()),
            history,
            metrics: PushMetrics {
                keys: counter!("herald_pushes_total", "kind" => "keys"),
                mids: counter!("herald_pushes_total", "kind" => "mids"),
                room: counter!("herald_pushes_total", "kind" => "room"),
                all: counter!("herald_pushes_total", "kind" => "all"),
                publish_keys: histogram!("herald_push_publish_seconds", "kind" => "keys"),
                publish_mids: histogram!("herald_push_publish_seconds", "kind" => "mids"),
                publish_room: histogram!("herald_push_publish_seconds", "kind" => "room"),
                publish_all: histogram!("herald_push_publish_seconds", "kind" => "all"),
                failures: counter!("herald_push_failures_total"),
                unroutable: counter!("herald_push_unroutable_keys_total"),
                upstream: counter!("herald_upstream_messages_total"),
                auth_refused: counter!("herald_auth_refused_total"),
            },
        }))
    }

    /// The configuration in force.
    pub fn config(&self) -> &LogicConfig {
        &self.cfg
    }

    /// The history, when some stream keeps one.
    pub fn stream_history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// The queue (for its depth gauge).
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// Runs the online aggregation and balancer refresh until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut comets = self.comets.clone();
        let mut tick = tokio::time::interval(self.cfg.online_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.aggregate_online().await,
                r = comets.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let list = comets.borrow_and_update().clone();
                    self.refresh_balancer(&list);
                }
            }
        }
    }

    fn live_comets(list: &[Instance]) -> Vec<Instance> {
        list.iter()
            .filter(|i| !i.offline() && i.meta_i64("conn_count").is_some())
            .cloned()
            .collect()
    }

    fn refresh_balancer(&self, list: &[Instance]) {
        let live = Self::live_comets(list);
        self.balancer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(&live);
    }

    /// Reloads every registered comet's latest online report from the store (drops
    /// stale ones) and recomputes the cluster-wide room counts.
    pub async fn aggregate_online(&self) {
        let list = self.comets.borrow().clone();
        let stale = unix_now() - self.cfg.online_stale.as_secs() as i64;
        let mut reports = HashMap::new();
        for ins in list.iter() {
            match self.online.server_online(&ins.hostname).await {
                Ok(Some(o)) if o.updated < stale => {
                    if let Err(e) = self.online.remove_server_online(&ins.hostname).await {
                        warn!(error = %e, "cannot drop stale online report");
                    }
                }
                Ok(Some(o)) => {
                    reports.insert(ins.hostname.clone(), o);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "online aggregation failed; keeping the previous counts");
                    return;
                }
            }
        }
        let mut current = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        // A report received directly may be newer than the stored one just read.
        for (server, report) in current.drain() {
            if let Some(stored) = reports.get_mut(&server) {
                if report.updated > stored.updated {
                    *stored = report;
                }
            }
        }
        *current = reports;
        self.recount(&current);
    }

    fn recount(&self, reports: &HashMap<String, ServerOnline>) {
        let mut total: HashMap<String, i32> = HashMap::new();
        for report in reports.values() {
            for (room, n) in &report.room_count {
                *total.entry(room.clone()).or_default() += n;
            }
        }
        *self.room_count.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(total);
    }

    fn rooms(&self) -> Arc<HashMap<String, i32>> {
        self.room_count
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn publish(&self, mut msg: PushMsg) -> Result<(), PushError> {
        msg.queued_us = unix_micros();
        let key = msg.partition_key();
        let payload = Bytes::from(msg.encode_to_vec());
        self.queue.publish(&key, payload).await.map_err(|e| {
            self.metrics.failures.increment(1);
            PushError::Queue(e)
        })
    }

    /// Publishes a message that has a position: a failed publish retracts it
    /// from the history, so recovery does not replay what was reported failed.
    async fn publish_positioned(&self, msg: PushMsg) -> Result<(), PushError> {
        let position = msg.position.clone();
        let r = self.publish(msg).await;
        if let (Err(_), Some(p), Some(h)) = (&r, &position, &self.history) {
            h.retract(p).await;
        }
        r
    }

    /// Appends a push to `stream`'s history when the stream keeps one: its
    /// position (`None`: no history, goim's path).
    async fn position(
        &self,
        stream: impl FnOnce() -> String,
        op: i32,
        msg: &[u8],
    ) -> Result<Option<herald_rpc::Position>, PushError> {
        let Some(h) = &self.history else {
            return Ok(None);
        };
        let stream = stream();
        let Some(policy) = h.policy(&stream) else {
            return Ok(None);
        };
        let frame = herald_proto::raw::single(op, msg);
        h.append(&stream, &policy, frame)
            .await
            .map(Some)
            .map_err(|e| self.store_failure(e))
    }

    /// One PUSH message per comet holding some of `routes` (key, server), all
    /// with `position` (the stream they belong to, if it keeps history). When
    /// one fails, the position is retracted and the rest are not sent. Returns
    /// the messages queued.
    async fn publish_grouped(
        &self,
        op: i32,
        routes: Vec<(String, String)>,
        msg: Bytes,
        position: Option<herald_rpc::Position>,
    ) -> Result<usize, PushError> {
        let mut order: Vec<String> = Vec::new();
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for (key, server) in routes {
            let g = groups.entry(server.clone()).or_insert_with(|| {
                order.push(server);
                Vec::new()
            });
            if !g.contains(&key) {
                g.push(key);
            }
        }
        let queued = order.len();
        for server in order {
            let keys = groups.remove(&server).unwrap_or_default();
            self.publish_positioned(PushMsg {
                r#type: PushType::Push as i32,
                operation: op,
                server,
                keys,
                msg: msg.clone(),
                position: position.clone(),
                ..PushMsg::default()
            })
            .await?;
        }
        Ok(queued)
    }

    fn store_failure(&self, e: StoreError) -> PushError {
        self.metrics.failures.increment(1);
        PushError::Store(e)
    }

    /// Pushes to connection keys (one queue message per comet holding some of them).
    /// Keys without a route are counted and skipped; empty keys are skipped, as goim
    /// skips them. No key left is nothing to push, and a success (the HTTP API
    /// decides whether a request may name no key).
    pub async fn push_keys(&self, op: i32, keys: &[String], msg: Bytes) -> Result<(), PushError> {
        self.metrics.keys.increment(1);
        timed(
            &self.metrics.publish_keys,
            self.push_keys_now(op, keys, msg),
        )
        .await
    }

    async fn push_keys_now(
        &self,
        op: i32,
        keys: &[String],
        msg: Bytes,
    ) -> Result<usize, PushError> {
        let keys: Cow<'_, [String]> = if keys.iter().any(String::is_empty) {
            Cow::Owned(keys.iter().filter(|k| !k.is_empty()).cloned().collect())
        } else {
            Cow::Borrowed(keys)
        };
        if keys.is_empty() {
            return Ok(0);
        }
        let servers = self
            .sessions
            .servers_by_keys(&keys)
            .await
            .map_err(|e| self.store_failure(e))?;
        let keeps_history = self
            .history
            .as_ref()
            .is_some_and(|h| h.config().keys.is_some());
        if keeps_history {
            // Each key is its own stream: a position, then a message, per key
            // (a key without a route is still recorded, for when it comes back).
            let mut queued = 0;
            for (key, server) in keys.iter().zip(servers) {
                let position = self
                    .position(|| recovery::key_stream(key), op, &msg)
                    .await?;
                match server {
                    Some(s) if !s.is_empty() => {
                        queued += self
                            .publish_grouped(op, vec![(key.clone(), s)], msg.clone(), position)
                            .await?
                    }
                    _ => self.metrics.unroutable.increment(1),
                }
            }
            return Ok(queued);
        }
        let mut routes = Vec::new();
        for (key, server) in keys.iter().zip(servers) {
            match server {
                Some(s) if !s.is_empty() => routes.push((key.clone(), s)),
                _ => self.metrics.unroutable.increment(1),
            }
        }
        self.publish_grouped(op, routes, msg, None).await
    }

    /// Pushes to every connection of the given members. No member is nothing to
    /// push, and a success, as in goim.
    pub async fn push_mids(&self, op: i32, mids: &[i64], msg: Bytes) -> Result<(), PushError> {
        self.metrics.mids.increment(1);
        timed(
            &self.metrics.publish_mids,
            self.push_mids_now(op, mids, msg),
        )
        .await
    }

    async fn push_mids_now(&self, op: i32, mids: &[i64], msg: Bytes) -> Result<usize, PushError> {
        if mids.is_empty() {
            return Ok(0);
        }
        let keeps_history = self
            .history
            .as_ref()
            .is_some_and(|h| h.config().mids.is_some());
        if keeps_history {
            // Each member is its own stream: its position, then its messages
            // (a member with no connection is still recorded, for when it
            // comes back).
            // Members are independent streams: up to MID_STREAMS_AT_ONCE of them
            // are handled at a time, each in its own order (append, routes,
            // publish).
            use futures_util::stream::{self, StreamExt, TryStreamExt};
            let mut seen = std::collections::HashSet::new();
            let unique: Vec<i64> = mids.iter().copied().filter(|m| seen.insert(*m)).collect();
            return stream::iter(unique)
                .map(|mid| self.push_member_stream(op, mid, msg.clone()))
                .buffer_unordered(MID_STREAMS_AT_ONCE)
                .try_fold(0, |all, one| async move { Ok(all + one) })
                .await;
        }
        let routes = self
            .sessions
            .keys_by_mids(mids)
            .await
            .map_err(|e| self.store_failure(e))?;
        self.publish_grouped(op, routes, msg, None).await
    }

    /// One member's push when members keep history: its position, then one
    /// message per comet holding its connections (none when it has none).
    async fn push_member_stream(&self, op: i32, mid: i64, msg: Bytes) -> Result<usize, PushError> {
        let position = self
            .position(|| recovery::mid_stream(mid), op, &msg)
            .await?;
        let routes = match self.sessions.keys_by_mids(&[mid]).await {
            Ok(r) => r,
            Err(e) => {
                if let (Some(p), Some(h)) = (&position, &self.history) {
                    h.retract(p).await;
                }
                return Err(self.store_failure(e));
            }
        };
        self.publish_grouped(op, routes, msg, position).await
    }

    /// Pushes to a room (`type://room`).
    pub async fn push_room(
        &self,
        op: i32,
        typ: &str,
        room: &str,
        msg: Bytes,
    ) -> Result<(), PushError> {
        self.metrics.room.increment(1);
        let room = room_key(typ, room);
        timed(&self.metrics.publish_room, async {
            let position = self.position(|| room.clone(), op, &msg).await?;
            self.publish_positioned(PushMsg {
                r#type: PushType::Room as i32,
                operation: op,
                room,
                msg,
                position,
                ..PushMsg::default()
            })
            .await
            .map(|()| 1)
        })
        .await
    }

    /// Pushes to every connection accepting `op`, at most `speed` connections per
    /// second over the cluster. 0 or less is no limit, as in goim; a negative speed
    /// is queued as 0, so every job (herald's or goim's) reads it as no limit.
    pub async fn push_all(&self, op: i32, speed: i32, msg: Bytes) -> Result<(), PushError> {
        self.metrics.all.increment(1);
        let msg = PushMsg {
            r#type: PushType::Broadcast as i32,
            operation: op,
            speed: speed.max(0),
            msg,
            ..PushMsg::default()
        };
        timed(&self.metrics.publish_all, async {
            self.publish(msg).await.map(|()| 1)
        })
        .await
    }

    /// Which of `mids` have a connection now (a route in the store), in the
    /// order given.
    pub async fn online_mids(&self, mids: &[i64]) -> Result<Vec<i64>, StoreError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        stream::iter(mids.iter().copied())
            .map(|mid| async move {
                let routes = self.sessions.keys_by_mids(&[mid]).await?;
                Ok::<_, StoreError>((!routes.is_empty()).then_some(mid))
            })
            .buffered(MID_STREAMS_AT_ONCE)
            .try_filter_map(|m| async move { Ok(m) })
            .try_collect()
            .await
    }

    /// The busiest rooms of a type: `(room id, count)`, largest first.
    pub fn online_top(&self, typ: &str, limit: usize) -> Vec<(String, i32)> {
        let prefix = format!("{typ}://");
        self.busiest(limit, |k| k.strip_prefix(&prefix).map(str::to_string))
    }

    /// The busiest rooms of every type: `(room key, count)`, largest first.
    pub fn top_rooms(&self, limit: usize) -> Vec<(String, i32)> {
        self.busiest(limit, |k| Some(k.to_string()))
    }

    /// The `limit` largest cluster-wide room counts, under the names `name`
    /// gives the room keys it keeps.
    fn busiest(&self, limit: usize, name: impl Fn(&str) -> Option<String>) -> Vec<(String, i32)> {
        let mut rooms: Vec<(String, i32)> = self
            .rooms()
            .iter()
            .filter_map(|(k, n)| name(k).map(|id| (id, *n)))
            .collect();
        rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rooms.truncate(limit);
        rooms
    }

    /// Counts of the given rooms of a type (0 when unknown).
    pub fn online_room(&self, typ: &str, rooms: &[String]) -> HashMap<String, i32> {
        let all = self.rooms();
        rooms
            .iter()
            .map(|r| (r.clone(), all.get(&room_key(typ, r)).copied().unwrap_or(0)))
            .collect()
    }

    /// Connection and IP totals from the registered comets.
    pub fn online_total(&self) -> Totals {
        let list = self.comets.borrow().clone();
        let mut t = Totals::default();
        for ins in Self::live_comets(&list) {
            t.conn_count += ins.meta_i64("conn_count").unwrap_or(0);
            t.ip_count += ins.meta_i64("ip_count").unwrap_or(0);
        }
        t
    }

    /// The registered comets that are not marked offline.
    pub fn instances(&self) -> Vec<Instance> {
        self.comets
            .borrow()
            .iter()
            .filter(|i| !i.offline())
            .cloned()
            .collect()
    }

    /// The node list for a client.
    pub fn nodes_weighted(&self, platform: &str, _client_ip: &str) -> NodesReply {
        let node = &self.cfg.node;
        let (domains, addrs) = {
            let list = self.comets.borrow().clone();
            let mut b = self.balancer.lock().unwrap_or_else(|e| e.into_inner());
            b.update(&Self::live_comets(&list));
            b.pick("", &node.host_domain, node.region_weight)
        };
        let mut nodes = if platform == "web" { domains } else { addrs };
        if nodes.is_empty() {
            nodes.push(node.default_domain.clone());
        }
        NodesReply {
            domain: node.default_domain.clone(),
            tcp_port: node.tcp_port,
            ws_port: node.ws_port,
            wss_port: node.wss_port,
            heartbeat: node.heartbeat.as_secs() as i32,
            nodes,
            backoff: Some(Backoff {
                max_delay: self.cfg.backoff.max_delay,
                base_delay: self.cfg.backoff.base_delay,
                factor: self.cfg.backoff.factor as f32,
                jitter: self.cfg.backoff.jitter as f32,
            }),
            heartbeat_max: self.cfg.node.heartbeat_max as i32,
        }
    }

    /// Asks the authenticator who `req` is and builds the reply comet acts on.
    /// With `generate_key`, an identity without a key gets a fresh one (a
    /// connect); without, its key stays empty (a refresh: the credentials do not
    /// bind a key, so the connection keeps the one it has).
    async fn authenticate(&self, req: &ConnectReq, generate_key: bool) -> RpcResult<ConnectReply> {
        let id = match self.auth.authenticate(req).await {
            Ok(id) => id,
            Err(e) => {
                self.metrics.auth_refused.increment(1);
                debug!(mode = self.auth.mode(), client = %req.client_addr, error = %e, "connect refused");
                return Err(e);
            }
        };
        let key = if id.key.is_empty() && generate_key {
            uuid::Uuid::new_v4().to_string()
        } else {
            id.key
        };
        Ok(ConnectReply {
            mid: id.mid,
            key,
            room_id: id.room_id,
            accepts: id.accepts,
            heartbeat: self.heartbeat_deadline().as_nanos() as i64,
            grant: id.grant,
            answered: id.answered,
        })
    }

    fn heartbeat_deadline(&self) -> Duration {
        self.cfg.node.heartbeat * self.cfg.node.heartbeat_max.max(1)
    }
}

/// Runs a push and, when it succeeded and queued something (it returns how
/// many messages), records how long it took in `h`: a push to nobody queues
/// nothing and is not a publish.
async fn timed(
    h: &Histogram,
    push: impl std::future::Future<Output = Result<usize, PushError>>,
) -> Result<(), PushError> {
    let started = Instant::now();
    let queued = push.await?;
    if queued > 0 {
        h.record(started.elapsed());
    }
    Ok(())
}

/// Members whose history appends and publishes run at once for one
/// `/goim/push/mids` request.
const MID_STREAMS_AT_ONCE: usize = 32;

/// The room key goim builds from a type and an id.
pub fn room_key(typ: &str, room: &str) -> String {
    format!("{typ}://{room}")
}

#[async_trait]
impl LogicService for Logic {
    async fn connect(&self, req: ConnectReq) -> RpcResult<ConnectReply> {
        let reply = self.authenticate(&req, true).await?;
        self.sessions
            .add_route(reply.mid, &reply.key, &req.server)
            .await
            .map_err(store_err)?;
        debug!(mid = reply.mid, key = %reply.key, server = %req.server, "connected");
        Ok(reply)
    }

    async fn refresh(&self, req: ConnectReq) -> RpcResult<ConnectReply> {
        self.authenticate(&req, false).await
    }

    async fn history(&self, req: HistoryReq) -> RpcResult<HistoryReply> {
        history::answer(self.history.as_ref(), req).await
    }

    async fn disconnect(&self, req: DisconnectReq) -> RpcResult<DisconnectReply> {
        let has = self
            .sessions
            .remove_route(req.mid, &req.key, &req.server)
            .await
            .map_err(store_err)?;
        debug!(mid = req.mid, key = %req.key, server = %req.server, has, "disconnected");
        Ok(DisconnectReply { has })
    }

    async fn heartbeat(&self, req: HeartbeatReq) -> RpcResult<()> {
        let live = self
            .sessions
            .refresh_route(req.mid, &req.key, &req.server)
            .await
            .map_err(store_err)?;
        if !live {
            self.sessions
                .add_route(req.mid, &req.key, &req.server)
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    async fn renew_online(&self, req: OnlineReq) -> RpcResult<OnlineReply> {
        let report = ServerOnline {
            server: req.server,
            room_count: req.room_count,
            updated: unix_now(),
        };
        self.online
            .put_server_online(&report)
            .await
            .map_err(store_err)?;
        {
            let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
            reports.insert(report.server.clone(), report);
            self.recount(&reports);
        }
        Ok(OnlineReply {
            all_room_count: (*self.rooms()).clone(),
        })
    }

    async fn receive(&self, req: ReceiveReq) -> RpcResult<ReceiveReply> {
        self.metrics
            .upstream
            .increment(req.proto.iter().len() as u64 + req.more.len() as u64);
        for p in req.proto.iter().chain(&req.more) {
            debug!(
                mid = req.mid,
                op = p.op,
                len = p.body.len(),
                "upstream message"
            );
        }
        if req.more.is_empty() {
            return Ok(ReceiveReply {
                proto: self.auth.answer(&req).await?,
                more: Vec::new(),
            });
        }
        // Frames read together (an answered connection's): one reply each.
        let mut replies = self.auth.answer_all(&req).await?.into_iter();
        let proto = if req.proto.is_some() {
            replies.next().flatten()
        } else {
            None
        };
        Ok(ReceiveReply {
            proto,
            more: replies.map(Option::unwrap_or_default).collect(),
        })
    }

    async fn nodes(&self, req: NodesReq) -> RpcResult<NodesReply> {
        Ok(self.nodes_weighted(&req.platform, &req.client_ip))
    }
}
