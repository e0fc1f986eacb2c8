//! `herald standalone`: comet, logic and job in one process on the embedded seams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use herald_comet::Comet;
use herald_discovery::{Instance, COMET_APPID};
use herald_job::{CometConnector, Job};
use herald_logic::Logic;
use herald_queue::Queue;
use herald_rpc::{CometService, LogicService};
use herald_tls::Reloader;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiParts};
use crate::config::Config;
use crate::config::DiscoveryBackend;
use crate::edge;
use crate::engines;
use crate::health::Readiness;
use crate::http_server::HttpServer;
use crate::observe;
use crate::roles::{depth_gauge, logic_checks};
use crate::web::ClientEndpoint;
use std::sync::atomic::{AtomicBool, Ordering};

/// Connects job to the comet in this process.
struct LocalComets {
    server_id: String,
    comet: Arc<dyn CometService>,
}

impl CometConnector for LocalComets {
    fn connect(&self, instance: &Instance) -> Option<Arc<dyn CometService>> {
        (instance.hostname == self.server_id).then(|| self.comet.clone())
    }
}

/// A running standalone server.
pub struct Standalone {
    /// Bound TCP client listeners.
    pub tcp_addrs: Vec<SocketAddr>,
    /// Bound WebSocket client listeners.
    pub ws_addrs: Vec<SocketAddr>,
    /// Bound secure WebSocket client listeners.
    pub wss_addrs: Vec<SocketAddr>,
    /// Bound TLS-over-TCP client listeners.
    pub tls_tcp_addrs: Vec<SocketAddr>,
    /// Bound HTTP API address.
    pub http_addr: SocketAddr,
    /// The server id in force.
    pub server_id: String,
    comet: Comet,
    job: Job,
    queue: Arc<dyn Queue>,
    /// Stopped first, so no push is accepted that cannot be delivered.
    http: HttpServer,
    /// The certificates this process serves, reloaded together on SIGHUP.
    reloader: Arc<Reloader>,
    stop: CancellationToken,
    /// Stops the dashboard first at shutdown: its event streams end at once
    /// instead of holding the HTTP server's grace period.
    dashboard_stop: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
    drain: Duration,
    /// Set when shutdown starts (`/readyz` answers 503 from then on).
    draining: Arc<AtomicBool>,
}

impl Standalone {
    /// Builds and starts every tier. Listeners are bound before this returns.
    pub async fn start(cfg: Config) -> anyhow::Result<Standalone> {
        let metrics = observe::metrics_handle();
        let server_id = cfg.server_id();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let reloader = Reloader::new();
        let public_tls = edge::comet_tls(&cfg, &reloader)?;

        // The store and the queue are the configured ones (in the process by
        // default, or a real Redis, NATS or Kafka); comet, logic and job find each
        // other in the process.
        if cfg.discovery.backend != DiscoveryBackend::Local {
            bail!(
                "herald standalone runs comet, logic and job in one process and finds them \
                 there: discovery.backend = \"etcd\" is for the cluster roles (herald comet, \
                 logic and job); remove the [discovery] backend setting or run the roles"
            );
        }
        let registry = engines::registry(&cfg, &stop).await?;
        let stores = engines::store(&cfg, &stop).await?;
        let queue = engines::queue(&cfg, &server_id, &stop).await?;

        let listeners: Vec<SocketAddr> = cfg
            .comet
            .tcp_bind
            .iter()
            .chain(&cfg.comet.ws_bind)
            .chain(&cfg.comet.wss_bind)
            .chain(&cfg.comet.tls_tcp_bind)
            .copied()
            .collect();
        let chat = crate::chat::prepare(&cfg, false).await?;
        let authenticator = crate::chat::authenticator(
            chat.as_ref(),
            crate::auth::authenticator(&cfg, Some(&listeners), stop.clone(), &tasks).await?,
        );
        let logic = Logic::new(
            cfg.logic.clone(),
            authenticator,
            stores.sessions.clone(),
            stores.online.clone(),
            queue.clone(),
            registry.clone(),
            Some(stores.history(&cfg)),
        )
        .await?;
        tasks.spawn(logic.clone().run(stop.clone()));
        if stores.memory.is_some() || stores.memory_history.is_some() {
            let stop = stop.clone();
            let stores = stores.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => stores.sweep(),
                    }
                }
            });
        }

        let instance = Instance {
            region: cfg.server.region.clone(),
            zone: cfg.server.zone.clone(),
            env: cfg.server.env.clone(),
            appid: COMET_APPID.into(),
            hostname: server_id.clone(),
            addrs: Vec::new(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let logic_service: Arc<dyn LogicService> = logic.clone();
        let mut comet_cfg = cfg.comet.clone();
        comet_cfg.max_connections = edge::client_connection_cap(&cfg, true);
        let comet = Comet::start(
            comet_cfg,
            edge::comet_edge(&cfg, public_tls.clone()),
            server_id.clone(),
            logic_service,
            registry.clone(),
            instance,
        )
        .await
        .context("cannot start comet")?;

        let job = Job::start(
            cfg.job.clone(),
            server_id.clone(),
            queue.clone(),
            registry.clone(),
            Arc::new(LocalComets {
                server_id: server_id.clone(),
                comet: comet.service(),
            }),
        )
        .await
        .context("cannot start job")?;

        // Ready while the engines answer (the embedded ones always do), until
        // shutdown starts.
        let draining = comet.draining();
        let ready = logic_checks(
            Readiness::new().draining(draining.clone()),
            &registry,
            &queue,
            &stores,
        );
        let ws_port = comet.ws_addrs.first().map(|a| a.port());
        let wss_port = comet.wss_addrs.first().map(|a| a.port());
        let ws_path = cfg.comet.ws_path.clone();
        let before_scrape: Arc<dyn Fn() + Send + Sync> = {
            let (depth, hub) = (depth_gauge(queue.clone()), comet.hub().clone());
            Arc::new(move || {
                depth();
                hub.refresh_backlog();
            })
        };
        let chat = crate::chat::routes(&cfg, chat, &logic, &stop, &tasks);
        let dashboard_stop = stop.child_token();
        let dashboard = crate::dashboard::start(
            crate::dashboard::Sources {
                metrics: metrics.clone(),
                before_scrape: before_scrape.clone(),
                logic: logic.clone(),
                registry: registry.clone(),
                role: "standalone",
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
                // The comet is in this process: its clients use the page's host.
                endpoints: Arc::new(move || ClientEndpoint {
                    ws_host: None,
                    ws_port,
                    wss_port,
                    ws_path: ws_path.clone(),
                }),
                extra: ready.router().merge(chat),
                dashboard,
            },
            &reloader,
        )
        .await?;
        let http_addr = http.local_addr();
        Ok(Standalone {
            tcp_addrs: comet.tcp_addrs.clone(),
            ws_addrs: comet.ws_addrs.clone(),
            wss_addrs: comet.wss_addrs.clone(),
            tls_tcp_addrs: comet.tls_tcp_addrs.clone(),
            http_addr,
            server_id,
            comet,
            job,
            queue,
            http,
            reloader,
            stop,
            dashboard_stop,
            tasks,
            grace: cfg.shutdown.grace,
            drain: cfg.shutdown.drain,
            draining,
        })
    }

    /// The comet (for inspection in tests).
    pub fn comet(&self) -> &Comet {
        &self.comet
    }

    /// Every certificate this server serves (reloaded on `SIGHUP` by the binary).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Shuts down in the order that loses nothing accepted: the HTTP API stops
    /// taking pushes (requests in flight finish), job hands what is queued to the
    /// comet, then the comet deregisters and closes its connections (telling
    /// logic), and the background loops stop. The whole sequence is bounded by
    /// `shutdown.grace`.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.grace;
        self.draining.store(true, Ordering::Release);
        self.dashboard_stop.cancel();
        self.http.shutdown(self.grace).await;
        while self.queue.depth().is_some_and(|d| d > 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.job.shutdown().await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.comet
            .shutdown(self.drain, left.max(Duration::from_millis(100)))
            .await;
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
    }
}
