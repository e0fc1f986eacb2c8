//! comet: the connection tier.
//!
//! [`Comet`] binds the TCP and WebSocket listeners, runs one task per client
//! connection ([`conn`]), keeps connections in the bucketed [`Hub`] with their rooms,
//! reports room counts to logic and its own load to the registry, and serves the
//! other tiers through [`herald_rpc::CometService`] (returned by [`Comet::service`]).
//! It calls logic only through [`herald_rpc::LogicService`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_discovery::{Instance, Registration, Registry};
use herald_rpc::{
    BroadcastReq, BroadcastRoomReq, CometService, LogicService, OnlineReq, PushMsgReq, RoomsReply,
    RpcError, RpcResult,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

mod batch;
pub mod channel;
pub mod config;
mod conn;
pub mod hub;
pub mod metrics;
pub mod recovery;
pub mod sink;
mod tls;

pub use config::{CometConfig, SlowConsumerPolicy};
pub use hub::Hub;
pub use metrics::CometMetrics;

use channel::{CloseReason, OutboxLimits};
use conn::{ConnContext, ListenerKind};
use herald_limits::{ClientLimits, IpCounter, TrustedProxies};
use std::sync::atomic::{AtomicBool, Ordering};

/// A running comet.
pub struct Comet {
    ctx: Arc<ConnContext>,
    tracker: TaskTracker,
    /// Addresses actually bound (ports resolved when configured as 0).
    pub tcp_addrs: Vec<SocketAddr>,
    /// WebSocket addresses actually bound.
    pub ws_addrs: Vec<SocketAddr>,
    /// Secure WebSocket addresses actually bound.
    pub wss_addrs: Vec<SocketAddr>,
    /// TLS-over-TCP addresses actually bound.
    pub tls_tcp_addrs: Vec<SocketAddr>,
    registration: Option<Arc<dyn Registration>>,
    /// Set when draining starts.
    draining: Arc<AtomicBool>,
    /// Stops the deadline sweeper, once the drain has closed everybody.
    sweeper: CancellationToken,
}

/// Why a comet could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The registry refused the registration.
    #[error("cannot register in discovery: {0}")]
    Register(String),
    /// A TLS listener is configured without a certificate.
    #[error("comet.wss_bind and comet.tls_tcp_bind need a certificate: set tls.cert_file and tls.key_file")]
    NoCertificate,
}

/// What comet takes from the configuration's edge sections.
#[derive(Clone, Default)]
pub struct Edge {
    /// Limits on what one client may do (`[limits.client]`).
    pub limits: ClientLimits,
    /// Proxies whose `X-Forwarded-For` names the client (`limits.trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    /// The public certificate (`[tls]`); required by `wss_bind` and `tls_tcp_bind`.
    pub tls: Option<herald_tls::Server>,
}

/// The listeners of one transport.
struct ListenerSet<'a> {
    binds: &'a [SocketAddr],
    kind: ListenerKind,
    name: &'static str,
}

impl Comet {
    /// Binds the listeners, registers `instance` (its metadata is filled in and kept
    /// current) and starts serving.
    pub async fn start(
        cfg: CometConfig,
        edge: Edge,
        server_id: String,
        logic: Arc<dyn LogicService>,
        registry: Arc<dyn Registry>,
        instance: Instance,
    ) -> Result<Comet, StartError> {
        let cfg = Arc::new(cfg);
        let tls_config = match (
            &edge.tls,
            cfg.wss_bind.is_empty() && cfg.tls_tcp_bind.is_empty(),
        ) {
            (_, true) => None,
            (Some(server), false) => Some(server.config.clone()),
            (None, false) => return Err(StartError::NoCertificate),
        };
        let hub = Arc::new(
            Hub::new(
                cfg.buckets,
                cfg.slow_consumer,
                OutboxLimits {
                    pushes: cfg.outbound_queue.max(1),
                    bytes: edge.limits.outbound_bytes.max(1),
                },
                CometMetrics::new(),
            )
            .with_batched_sends(cfg.io_uring),
        );
        let ctx = Arc::new(ConnContext {
            hub,
            logic,
            cfg: cfg.clone(),
            ips: IpCounter::new(edge.limits.connections_per_ip),
            limits: edge.limits,
            proxies: edge.trusted_proxies,
            server_id,
            shutdown: CancellationToken::new(),
        });
        let limit = Arc::new(Semaphore::new(if cfg.max_connections == 0 {
            Semaphore::MAX_PERMITS
        } else {
            cfg.max_connections
        }));
        let tracker = TaskTracker::new();
        let mut addrs = BTreeMap::new();
        let sets = [
            ListenerSet {
                binds: &cfg.tcp_bind,
                kind: ListenerKind {
                    websocket: false,
                    tls: None,
                },
                name: "tcp",
            },
            ListenerSet {
                binds: &cfg.ws_bind,
                kind: ListenerKind {
                    websocket: true,
                    tls: None,
                },
                name: "ws",
            },
            ListenerSet {
                binds: &cfg.wss_bind,
                kind: ListenerKind {
                    websocket: true,
                    tls: tls_config.clone(),
                },
                name: "wss",
            },
            ListenerSet {
                binds: &cfg.tls_tcp_bind,
                kind: ListenerKind {
                    websocket: false,
                    tls: tls_config,
                },
                name: "tcp+tls",
            },
        ];
        for set in sets {
            let bound: &mut Vec<SocketAddr> = addrs.entry(set.name).or_default();
            for addr in set.binds {
                let listener = listen(*addr, cfg.backlog).map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
                let local = listener.local_addr().map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
                info!(addr = %local, transport = set.name, "comet listening");
                bound.push(local);
                tracker.spawn(accept_loop(
                    listener,
                    ctx.clone(),
                    set.kind.clone(),
                    limit.clone(),
                    tracker.clone(),
                ));
            }
        }
        let mut instance = instance;
        instance.metadata = metadata(&ctx);
        let registration = registry
            .register(instance)
            .await
            .map_err(|e| StartError::Register(e.to_string()))?;
        let registration: Arc<dyn Registration> = Arc::from(registration);
        tracker.spawn(report_loop(ctx.clone(), registration.clone()));
        let sweeper = CancellationToken::new();
        tracker.spawn(sweep_loop(ctx.clone(), sweeper.clone()));
        let mut take = |name| addrs.remove(name).unwrap_or_default();
        Ok(Comet {
            tcp_addrs: take("tcp"),
            ws_addrs: take("ws"),
            wss_addrs: take("wss"),
            tls_tcp_addrs: take("tcp+tls"),
            ctx,
            tracker,
            registration: Some(registration),
            draining: Arc::new(AtomicBool::new(false)),
            sweeper,
        })
    }

    /// The hub (for inspection and tests).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.ctx.hub
    }

    /// The service the other tiers call.
    pub fn service(&self) -> Arc<dyn CometService> {
        Arc::new(CometHandle {
            hub: self.ctx.hub.clone(),
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tracker: self.tracker.clone(),
            shutdown: self.ctx.shutdown.clone(),
        })
    }

    /// This comet's server id.
    pub fn server_id(&self) -> &str {
        &self.ctx.server_id
    }

    /// A flag that turns true when the comet starts draining (for `/readyz`).
    pub fn draining(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    /// Drains and stops: marks itself draining and offline, deregisters (so logic
    /// stops handing it to clients and job stops pushing to it), stops accepting,
    /// closes its clients spread over `drain` (WebSocket clients get close code
    /// 1012, "reconnect elsewhere"), and waits for the connection tasks (each tells
    /// logic its route is gone), in all at most `grace`.
    pub async fn shutdown(mut self, drain: Duration, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        self.draining.store(true, Ordering::Release);
        if let Some(r) = self.registration.take() {
            let mut meta = metadata(&self.ctx);
            meta.insert("offline".into(), "true".into());
            if let Err(e) = r.update(meta).await {
                warn!(error = %e, "could not mark this comet offline");
            }
            if let Err(e) = r.deregister().await {
                warn!(error = %e, "deregistration failed");
            }
        }
        self.ctx.shutdown.cancel();
        let clients = self.ctx.hub.connection_count();
        let window = drain.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        info!(clients, ?window, "draining client connections");
        self.ctx
            .hub
            .close_all_over(window, CloseReason::Restart)
            .await;
        self.sweeper.cancel();
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish within the shutdown grace period");
        }
    }
}

/// A TCP listener on `addr` with `backlog` (tokio's `bind` uses a fixed one):
/// connections the kernel completes and queues while herald is not accepting
/// (capped by `net.core.somaxconn`). With a short queue further SYNs are dropped
/// and clients back off for seconds; with a long one they wait to be accepted.
/// Also herald's HTTP listeners.
pub fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

fn metadata(ctx: &ConnContext) -> BTreeMap<String, String> {
    let cfg = &ctx.cfg;
    BTreeMap::from([
        ("weight".to_string(), cfg.weight.to_string()),
        ("offline".to_string(), cfg.offline.to_string()),
        ("addrs".to_string(), cfg.public_addrs.join(",")),
        (
            "conn_count".to_string(),
            ctx.hub.connection_count().to_string(),
        ),
        ("ip_count".to_string(), ctx.hub.ip_count().to_string()),
        // herald's additions (goim's logic ignores them): running totals since
        // the comet started, for operators (logic's dashboard).
        (
            "frames_delivered".to_string(),
            ctx.hub.metrics.frames_delivered.total().to_string(),
        ),
        (
            "frames_dropped".to_string(),
            ctx.hub.metrics.dropped.total().to_string(),
        ),
        (
            "slow_consumers".to_string(),
            ctx.hub.metrics.slow_consumers.total().to_string(),
        ),
        // When these totals were taken (Unix ms, this comet's clock): rates are
        // computed between two reports.
        (
            "reported_at_ms".to_string(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                .to_string(),
        ),
    ])
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ConnContext>,
    kind: ListenerKind,
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let ip = herald_limits::canonical(peer.ip());
                // A trusted proxy carries many clients: they are counted by the
                // address it names, once the upgrade is read.
                let guard = if kind.websocket && ctx.proxies.trusts(ip) {
                    None
                } else {
                    match ctx.ips.try_acquire(ip) {
                        Some(g) => Some(g),
                        None => {
                            ctx.hub.metrics.limit_hit("connections_per_ip");
                            drop(stream);
                            continue;
                        }
                    }
                };
                // The future is spawned as it is: wrapping it in another async
                // block would store it twice in the task (the captured value and
                // the awaited one), doubling every connection's largest allocation.
                tracker.spawn(conn::serve(ctx.clone(), stream, peer, &kind, guard, permit));
            }
            Err(e) => {
                // Typically EMFILE: wait for connections to close instead of spinning.
                warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// How often heartbeat deadlines are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Closes connections that missed their heartbeat deadline or whose credentials
/// expired. One walk over the hub per interval replaces a timer per connection.
/// Runs until `stop`, which comes after the drain: clients waiting for their turn
/// to be closed are still held to their deadlines.
async fn sweep_loop(ctx: Arc<ConnContext>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => { ctx.hub.sweep_expired(); }
        }
    }
}

/// Shortest time between two online reports triggered by changes.
const MIN_REPORT_GAP: Duration = Duration::from_secs(1);

/// Reports room counts to logic (storing the cluster-wide counts it returns) and
/// load metadata to the registry, every `online_report_interval` and, at most once
/// a second, soon after connections or rooms change.
async fn report_loop(ctx: Arc<ConnContext>, registration: Arc<dyn Registration>) {
    let mut tick = tokio::time::interval(ctx.cfg.online_report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now() - MIN_REPORT_GAP;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = ctx.hub.changed.notified() => {
                let next = last + MIN_REPORT_GAP.min(ctx.cfg.online_report_interval);
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(next) => {}
                }
            }
        }
        last = tokio::time::Instant::now();
        let counts = ctx.hub.room_counts();
        ctx.hub.metrics.rooms.set(counts.len() as f64);
        let req = OnlineReq {
            server: ctx.server_id.clone(),
            room_count: counts,
        };
        match tokio::time::timeout(ctx.cfg.logic_timeout, ctx.logic.renew_online(req)).await {
            Ok(Ok(reply)) => ctx.hub.set_all_online(reply.all_room_count),
            Ok(Err(e)) => warn!(error = %e, "online report failed"),
            Err(_) => warn!("online report timed out"),
        }
        if let Err(e) = registration.update(metadata(&ctx)).await {
            warn!(error = %e, "registry update failed");
        }
    }
}

/// [`CometService`] over a hub.
struct CometHandle {
    hub: Arc<Hub>,
    /// How many tasks share one room broadcast (the runtime's worker threads).
    parallelism: usize,
    /// The comet's tasks: a paced broadcast runs there, so shutdown waits for it
    /// (and `shutdown` ends it).
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

#[async_trait]
impl CometService for CometHandle {
    async fn push_msg(&self, req: PushMsgReq) -> RpcResult<()> {
        let proto = req
            .proto
            .ok_or_else(|| RpcError::invalid("push without proto"))?;
        if req.keys.is_empty() {
            return Err(RpcError::invalid("push without keys"));
        }
        let started = Instant::now();
        self.hub.metrics.push_keys.increment(1);
        self.hub.push_keys(
            &req.keys,
            req.proto_op,
            raw_body(proto),
            req.position.as_ref(),
        );
        self.hub.metrics.fanout_keys.record(started.elapsed());
        Ok(())
    }

    async fn broadcast(&self, req: BroadcastReq) -> RpcResult<()> {
        let proto = req
            .proto
            .ok_or_else(|| RpcError::invalid("broadcast without proto"))?;
        self.hub.metrics.push_broadcast.increment(1);
        let body = raw_body(proto);
        if req.speed > 0 {
            let (hub, shutdown) = (self.hub.clone(), self.shutdown.clone());
            self.tracker.spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = hub.broadcast(req.proto_op, body, req.speed) => {}
                }
            });
        } else {
            // A paced broadcast takes as long as its speed says: only these are timed.
            let started = Instant::now();
            self.hub.broadcast(req.proto_op, body, 0).await;
            self.hub.metrics.fanout_broadcast.record(started.elapsed());
        }
        Ok(())
    }

    async fn broadcast_room(&self, req: BroadcastRoomReq) -> RpcResult<()> {
        let proto = req
            .proto
            .ok_or_else(|| RpcError::invalid("room broadcast without proto"))?;
        if req.room_id.is_empty() {
            return Err(RpcError::invalid("room broadcast without room"));
        }
        let started = Instant::now();
        self.hub.metrics.push_room.increment(1);
        let body = raw_body(proto);
        let positioned = !req.offsets.is_empty();
        // Writes happen in the walk itself, so spread it over the worker threads.
        let parts = self.parallelism;
        if parts <= 1 {
            let positions = positioned.then_some((req.epoch.as_str(), &req.offsets[..]));
            self.hub
                .broadcast_room_part(&req.room_id, body, positions, 0, 1)
                .await;
            self.hub.metrics.fanout_room.record(started.elapsed());
            return Ok(());
        }
        let room: Arc<str> = Arc::from(req.room_id);
        let positions: Option<Arc<(String, Vec<u64>)>> =
            positioned.then(|| Arc::new((req.epoch, req.offsets)));
        let tasks: Vec<_> = (0..parts)
            .map(|part| {
                let (hub, room, body) = (self.hub.clone(), room.clone(), body.clone());
                let positions = positions.clone();
                tokio::spawn(async move {
                    let p = positions.as_deref().map(|(e, o)| (e.as_str(), &o[..]));
                    hub.broadcast_room_part(&room, body, p, part, parts).await
                })
            })
            .collect();
        for t in tasks {
            t.await.map_err(|e| RpcError::internal(e.to_string()))?;
        }
        self.hub.metrics.fanout_room.record(started.elapsed());
        Ok(())
    }

    async fn rooms(&self) -> RpcResult<RoomsReply> {
        Ok(RoomsReply {
            rooms: self
                .hub
                .room_counts()
                .into_keys()
                .map(|r| (r, true))
                .collect(),
        })
    }
}

/// The bytes to queue for a proto: an OpRaw body as is, any other proto encoded as
/// one frame (so a non-batched sender still works).
fn raw_body(proto: herald_rpc::Proto) -> bytes::Bytes {
    if proto.op == herald_proto::Op::RAW {
        proto.body
    } else {
        herald_proto::Frame::new(proto.ver as i16, proto.op, proto.seq, proto.body).to_bytes()
    }
}
