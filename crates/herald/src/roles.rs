//! `herald comet`, `herald logic` and `herald job`: one tier per process, talking
//! gRPC to each other, finding each other in etcd, sharing routes in Redis and
//! pushes through Kafka, NATS JetStream or Redis Streams.
//!
//! Each role starts its engines with [`engines`](crate::engines) (retrying while
//! one is down), registers itself, serves, and on shutdown deregisters first so
//! the others stop sending to it before it stops answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herald_comet::Comet;
use herald_discovery::{Instance, Registration, Registry, COMET_APPID, LOGIC_APPID};
use herald_job::{CometConnector, Job};
use herald_logic::Logic;
use herald_queue::Queue;
use herald_rpc::grpc::{self, LogicPool, RemoteComet};
use herald_rpc::transport::{Dialer, ServeOptions};
use herald_rpc::{CometService, LogicService};
use herald_tls::Reloader;
use metrics::gauge;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::{self, ApiParts};
use crate::config::Config;
use crate::health::Readiness;
use crate::http_server::HttpServer;
use crate::web::ClientEndpoint;
use crate::{cluster_rpc, dashboard, edge, engines, observe};
use std::sync::atomic::{AtomicBool, Ordering};

fn instance(cfg: &Config, appid: &str, server_id: &str, rpc_port: u16) -> Instance {
    Instance {
        region: cfg.server.region.clone(),
        zone: cfg.server.zone.clone(),
        env: cfg.server.env.clone(),
        appid: appid.into(),
        hostname: server_id.into(),
        addrs: vec![format!(
            "{}://{}:{rpc_port}",
            cluster_rpc::scheme(cfg),
            cfg.advertise_host()
        )],
        version: env!("CARGO_PKG_VERSION").into(),
        latest_timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// Serves tonic services on `listener` (with the token and TLS of `options`)
/// until `stop`.
fn serve_grpc(
    listener: TcpListener,
    routes: tonic::service::Routes,
    options: ServeOptions,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let r =
            herald_rpc::transport::serve(listener, routes, options, stop.cancelled_owned()).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "gRPC server failed");
        }
    })
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Serves `/metrics` (behind the `admin` scope when API keys are configured),
/// `/healthz` and `/readyz` on `metrics.bind` when set: comet and job have no
/// other HTTP port.
async fn serve_metrics(
    cfg: &Config,
    ready: Readiness,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
) -> anyhow::Result<Option<HttpServer>> {
    let Some(addr) = cfg.metrics.bind else {
        return Ok(None);
    };
    let keys = herald_logic::api_keys::ApiKeys::new(&cfg.api)?;
    let app = keys
        .protect(
            herald_logic::api_keys::Scope::Admin,
            observe::router(observe::metrics_handle(), before_scrape),
        )
        .merge(ready.router());
    let server = HttpServer::bind(addr, app, api::listener_options(cfg), "metrics")
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    info!(metrics = %server.local_addr(), "metrics endpoint listening");
    Ok(Some(server))
}

/// A running `herald comet`.
pub struct CometRole {
    /// The server id (route table, registry, job).
    pub server_id: String,
    /// Bound RPC address.
    pub rpc_addr: SocketAddr,
    comet: Comet,
    grpc: tokio::task::JoinHandle<()>,
    metrics: Option<HttpServer>,
    stop: CancellationToken,
    grace: Duration,
    drain: Duration,
    reloader: Arc<Reloader>,
}

impl CometRole {
    /// Connects to etcd (retrying), binds the client and RPC listeners, follows the
    /// live logics, and registers.
    pub async fn start(cfg: Config, stop: CancellationToken) -> anyhow::Result<CometRole> {
        engines::require_shared(&cfg, "comet", false, false)?;
        cluster_rpc::check_serving(&cfg, "comet", true)?;
        let reloader = Reloader::new();
        let serve = cluster_rpc::serve_options(&cfg, &reloader)?;
        let dialer = cluster_rpc::dialer(&cfg)?;
        observe::metrics_handle();
        let registry = engines::registry(&cfg, &stop).await?;
        let listener = bind(cfg.rpc.comet_addr(), "comet RPC").await?;
        let rpc_addr = listener.local_addr()?;
        cluster_rpc::warn_about_bind(&cfg, "comet", rpc_addr, "rpc.comet_bind");
        let server_id = cfg.server_id_with_port(rpc_addr.port());

        let pool = Arc::new(LogicPool::with_dialer(dialer));
        follow_logics(registry.clone(), pool.clone(), stop.clone()).await?;
        let logic: Arc<dyn LogicService> = pool.clone();
        let public_tls = edge::comet_tls(&cfg, &reloader)?;
        let mut comet_cfg = cfg.comet.clone();
        comet_cfg.max_connections = edge::client_connection_cap(&cfg, false);
        let comet = Comet::start(
            comet_cfg,
            edge::comet_edge(&cfg, public_tls),
            server_id.clone(),
            logic,
            registry.clone(),
            instance(&cfg, COMET_APPID, &server_id, rpc_addr.port()),
        )
        .await
        .context("cannot start comet")?;
        let grpc = serve_grpc(
            listener,
            tonic::service::Routes::new(grpc::comet_server(comet.service())),
            serve,
            stop.child_token(),
        );
        let ready = {
            let (logics, registry) = (pool.clone(), registry.clone());
            Readiness::new()
                .draining(comet.draining())
                .check("discovery", move || {
                    let registry = registry.clone();
                    async move { registry.ping().await }
                })
                .check("logic", move || {
                    let known = !logics.addrs().is_empty();
                    async move {
                        if known {
                            Ok(())
                        } else {
                            Err("no logic is registered")
                        }
                    }
                })
        };
        let hub = comet.hub().clone();
        let metrics = serve_metrics(
            &cfg,
            ready,
            Arc::new(move || {
                hub.refresh_backlog();
            }),
        )
        .await?;
        info!(
            %server_id, rpc = %rpc_addr, tcp = ?comet.tcp_addrs, ws = ?comet.ws_addrs,
            "herald comet ready"
        );
        Ok(CometRole {
            server_id,
            rpc_addr,
            comet,
            grpc,
            metrics,
            stop,
            grace: cfg.shutdown.grace,
            drain: cfg.shutdown.drain,
            reloader,
        })
    }

    /// Every certificate this process serves (reloaded on `SIGHUP`).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Drains: leaves discovery, stops accepting, closes the connections spread
    /// over `shutdown.drain` (each tells logic), then stops serving RPC.
    pub async fn shutdown(self) {
        self.comet.shutdown(self.drain, self.grace).await;
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.grpc).await;
        if let Some(m) = self.metrics {
            m.shutdown(Duration::from_secs(1)).await;
        }
    }
}

/// Keeps `pool` equal to the registered logics (all zones).
async fn follow_logics(
    registry: Arc<dyn Registry>,
    pool: Arc<LogicPool>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut watch = registry
        .watch(LOGIC_APPID)
        .await
        .context("cannot watch the registered logics")?;
    let apply = move |list: &[Instance]| {
        let addrs: Vec<String> = list
            .iter()
            .filter_map(|i| i.addrs.first().cloned())
            .collect();
        if addrs.is_empty() {
            warn!("no logic is registered; clients cannot authenticate until one is");
        } else {
            info!(logics = ?addrs, "logic set changed");
        }
        pool.set(&addrs);
    };
    apply(&watch.borrow_and_update());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = watch.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let list = watch.borrow_and_update().clone();
                    apply(&list);
                }
            }
        }
    });
    Ok(())
}

/// A running `herald logic`.
pub struct LogicRole {
    /// The server id.
    pub server_id: String,
    /// Bound RPC address.
    pub rpc_addr: SocketAddr,
    /// Bound HTTP API address.
    pub http_addr: SocketAddr,
    registration: Box<dyn Registration>,
    http: HttpServer,
    /// The certificates this process serves, reloaded together on SIGHUP.
    reloader: Arc<Reloader>,
    grpc: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    /// Stops the dashboard first at shutdown (its event streams end at once).
    dashboard_stop: CancellationToken,
    tasks: TaskTracker,
    /// Set when shutdown starts (`/readyz` answers 503 from then on).
    draining: Arc<AtomicBool>,
}

impl LogicRole {
    /// Connects to etcd, Redis and the queue (retrying each while it is down),
    /// then serves RPC and the HTTP API and registers.
    pub async fn start(cfg: Config, stop: CancellationToken) -> anyhow::Result<LogicRole> {
        engines::require_shared(&cfg, "logic", true, true)?;
        let reloader = Reloader::new();
        let serve = cluster_rpc::serve_options(&cfg, &reloader)?;
        let metrics = observe::metrics_handle();
        let registry = engines::registry(&cfg, &stop).await?;
        let stores = engines::store(&cfg, &stop).await?;
        let listener = bind(cfg.rpc.logic_addr(), "logic RPC").await?;
        let rpc_addr = listener.local_addr()?;
        cluster_rpc::warn_about_bind(&cfg, "logic", rpc_addr, "rpc.logic_bind");
        let server_id = cfg.server_id_with_port(rpc_addr.port());
        let queue = engines::queue(&cfg, &server_id, &stop).await?;

        let tasks = TaskTracker::new();
        let chat = crate::chat::prepare(&cfg, true).await?;
        let authenticator = crate::chat::authenticator(
            chat.as_ref(),
            crate::auth::authenticator(&cfg, None, stop.clone(), &tasks).await?,
        );
        let draining = Arc::new(AtomicBool::new(false));
        let ready = logic_checks(
            Readiness::new().draining(draining.clone()),
            &registry,
            &queue,
            &stores,
        );
        let history = stores.history(&cfg);
        let logic = Logic::new(
            cfg.logic.clone(),
            authenticator,
            stores.sessions,
            stores.online,
            queue.clone(),
            registry.clone(),
            Some(history),
        )
        .await?;
        tasks.spawn(logic.clone().run(stop.clone()));
        let service: Arc<dyn LogicService> = logic.clone();
        let grpc = serve_grpc(
            listener,
            tonic::service::Routes::new(grpc::logic_server(service)),
            serve,
            stop.child_token(),
        );

        let endpoints = {
            let logic = logic.clone();
            let ws_path = cfg.comet.ws_path.clone();
            // The comets are elsewhere: point the demo page at the one the
            // balancer gives a web client (counted like a client's own call, as
            // the page is about to connect one).
            Arc::new(move || {
                let r = logic.nodes_weighted("web", "");
                let port = |p: i32| u16::try_from(p).ok().filter(|p| *p != 0);
                ClientEndpoint {
                    ws_host: r.nodes.first().cloned(),
                    ws_port: port(r.ws_port),
                    wss_port: port(r.wss_port),
                    ws_path: ws_path.clone(),
                }
            })
        };
        let before_scrape = depth_gauge(queue);
        let chat = crate::chat::routes(&cfg, chat, &logic, &stop, &tasks);
        let dashboard_stop = stop.child_token();
        let dashboard = dashboard::start(
            dashboard::Sources {
                metrics: metrics.clone(),
                before_scrape: before_scrape.clone(),
                logic: logic.clone(),
                registry: registry.clone(),
                role: "logic",
                server_id: server_id.clone(),
                request_timeout: cfg.limits.http.request_timeout,
            },
            dashboard_stop.clone(),
            &tasks,
        )
        .await?;
        let http = api::serve(
            &cfg,
            logic.clone(),
            ApiParts {
                metrics,
                before_scrape,
                endpoints,
                extra: ready.router().merge(chat),
                dashboard,
            },
            &reloader,
        )
        .await?;
        let http_addr = http.local_addr();
        let mut ins = instance(&cfg, LOGIC_APPID, &server_id, rpc_addr.port());
        ins.metadata
            .insert("weight".into(), cfg.comet.weight.to_string());
        let registration = engines::with_retry("etcd (registering logic)", &stop, || {
            registry.register(ins.clone())
        })
        .await?;
        info!(%server_id, rpc = %rpc_addr, http = %http_addr, "herald logic ready");
        Ok(LogicRole {
            server_id,
            rpc_addr,
            http_addr,
            registration,
            http,
            reloader,
            grpc,
            stop,
            dashboard_stop,
            tasks,
            draining,
        })
    }

    /// The certificate stores of this process (reload them on SIGHUP).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Deregisters, stops taking pushes (requests in flight finish), then stops
    /// serving RPC.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Release);
        self.dashboard_stop.cancel();
        if let Err(e) = self.registration.deregister().await {
            warn!(error = %e, "deregistration failed");
        }
        self.http.shutdown(Duration::from_secs(5)).await;
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.grpc).await;
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
    }
}

/// `ready` with the registry's and (when given) the queue's checks added.
/// The checks of a process running logic: its registry, queue and store.
pub(crate) fn logic_checks(
    ready: Readiness,
    registry: &Arc<dyn Registry>,
    queue: &Arc<dyn Queue>,
    stores: &engines::Stores,
) -> Readiness {
    let sessions = stores.sessions.clone();
    engine_checks(ready, registry, Some(queue)).check("store", move || {
        let sessions = sessions.clone();
        async move { sessions.ping().await }
    })
}

fn engine_checks(
    ready: Readiness,
    registry: &Arc<dyn Registry>,
    queue: Option<&Arc<dyn Queue>>,
) -> Readiness {
    let registry = registry.clone();
    let ready = ready.check("discovery", move || {
        let registry = registry.clone();
        async move { registry.ping().await }
    });
    match queue {
        Some(queue) => {
            let queue = queue.clone();
            ready.check("queue", move || {
                let queue = queue.clone();
                async move { queue.ping().await }
            })
        }
        None => ready,
    }
}

/// Refreshes `herald_queue_depth` on each scrape, for queues that can tell.
pub fn depth_gauge(queue: Arc<dyn Queue>) -> Arc<dyn Fn() + Send + Sync> {
    let g = gauge!("herald_queue_depth", "backend" => queue.backend());
    Arc::new(move || {
        if let Some(d) = queue.depth() {
            g.set(d as f64);
        }
    })
}

/// Calls comets over gRPC at the address they registered.
struct GrpcComets {
    dialer: Dialer,
}

impl CometConnector for GrpcComets {
    fn connect(&self, instance: &Instance) -> Option<Arc<dyn CometService>> {
        let addr = cluster_rpc::comet_address(&instance.addrs)?;
        match RemoteComet::dial(addr, &self.dialer) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                warn!(server = %instance.hostname, error = %e, "comet address unusable");
                None
            }
        }
    }
}

/// A running `herald job`.
pub struct JobRole {
    /// The server id (its name among the queue's consumers).
    pub server_id: String,
    job: Job,
    metrics: Option<HttpServer>,
    stop: CancellationToken,
    /// Set when shutdown starts (`/readyz` answers 503 from then on).
    draining: Arc<AtomicBool>,
}

impl JobRole {
    /// Connects to etcd and the queue (retrying while down) and starts consuming.
    pub async fn start(cfg: Config, stop: CancellationToken) -> anyhow::Result<JobRole> {
        engines::require_shared(&cfg, "job", false, true)?;
        let dialer = cluster_rpc::dialer(&cfg)?;
        observe::metrics_handle();
        let server_id = if cfg.server.id.is_empty() {
            format!("{}:job-{}", cfg.advertise_host(), std::process::id())
        } else {
            cfg.server.id.clone()
        };
        let registry = engines::registry(&cfg, &stop).await?;
        let queue = engines::queue(&cfg, &server_id, &stop).await?;
        let connector = Arc::new(GrpcComets { dialer });
        let job = engines::with_retry("the queue (starting consumers)", &stop, || {
            Job::start(
                cfg.job.clone(),
                server_id.clone(),
                queue.clone(),
                registry.clone(),
                connector.clone(),
            )
        })
        .await?;
        let draining = Arc::new(AtomicBool::new(false));
        let ready = engine_checks(
            Readiness::new().draining(draining.clone()),
            &registry,
            Some(&queue),
        );
        let metrics = serve_metrics(&cfg, ready, Arc::new(|| {})).await?;
        info!(%server_id, queue = queue.backend(), "herald job ready");
        Ok(JobRole {
            server_id,
            job,
            metrics,
            stop,
            draining,
        })
    }

    /// Stops consuming; work in flight is finished (and acknowledged) first.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Release);
        self.job.shutdown().await;
        self.stop.cancel();
        if let Some(m) = self.metrics {
            m.shutdown(Duration::from_secs(1)).await;
        }
    }
}
