//! The HTTP API port of `herald logic` and `herald standalone`: goim's API and the
//! JSON pushes behind their scopes, the demo page, `/metrics` and the dashboard's
//! data behind the `admin` scope, and any extra routes the caller adds — served by the
//! [`http_server`](crate::http_server) listener, over HTTPS when `logic.tls` is on.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use herald_logic::api_keys::{ApiKeys, Scope};
use herald_logic::http::ApiOptions;
use herald_logic::Logic;
use herald_tls::Reloader;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::http_server::{HttpOptions, HttpServer};
use crate::web::{DemoSettings, Endpoints};
use crate::{http_server, observe, web};

/// What the API port serves besides the API itself.
pub struct ApiParts {
    /// The metrics handle behind `/metrics`.
    pub metrics: PrometheusHandle,
    /// Refreshes read-on-scrape gauges before `/metrics` renders.
    pub before_scrape: Arc<dyn Fn() + Send + Sync>,
    /// Where the demo page's client connects.
    pub endpoints: Endpoints,
    /// More routes (health checks, …), public unless wrapped with
    /// [`ApiKeys::protect`].
    pub extra: Router,
    /// The live dashboard: its page (public) and its data (behind `admin`).
    pub dashboard: crate::dashboard::Routes,
}

/// The plain-HTTP listener options of `cfg`: `[limits.http]` and the trusted
/// proxies.
pub fn listener_options(cfg: &Config) -> HttpOptions {
    HttpOptions {
        limits: cfg.limits.http.clone(),
        trusted_proxies: cfg.limits.trusted_proxies.clone(),
        tls: None,
    }
}

/// Builds the API port's routes and starts serving them on `cfg.http_bind()`.
pub async fn serve(
    cfg: &Config,
    logic: Arc<Logic>,
    parts: ApiParts,
    reloader: &Reloader,
) -> anyhow::Result<HttpServer> {
    let keys = ApiKeys::new(&cfg.api)?;
    let app = herald_logic::http::router(
        logic,
        ApiOptions {
            keys: keys.clone(),
            max_recipients: cfg.limits.http.max_recipients,
        },
    )
    .merge(web::router(DemoSettings {
        key_required: keys.is_required(),
        endpoints: parts.endpoints,
    }))
    .merge(keys.protect(
        Scope::Admin,
        observe::router(parts.metrics, parts.before_scrape).merge(parts.dashboard.data),
    ))
    .merge(parts.dashboard.page)
    .merge(parts.extra);
    let bind = cfg.http_bind();
    let mut opts = listener_options(cfg);
    if cfg.logic.tls {
        let server = herald_tls::server_config(&cfg.tls, &[b"http/1.1"])
            .context("cannot set up HTTPS for the HTTP API")?;
        reloader.add(server.certs.clone());
        opts.tls = Some(server.config);
    }
    let server = http_server::HttpServer::bind(bind, app, opts, "api")
        .await
        .with_context(|| format!("cannot listen for the HTTP API on {bind}"))?;
    let addr = server.local_addr();
    if !cfg.api_protected() && !addr.ip().is_loopback() {
        warn!(%addr, "the HTTP API accepts pushes from anyone who can reach {addr} \
            (HTTPS alone encrypts, it does not authenticate): configure [api] keys or \
            tls.client_ca_file, or bind it to a private address");
    }
    info!(%addr, https = cfg.logic.tls, api_keys = keys.is_required(), "HTTP API listening");
    Ok(server)
}
