//! What the public edge shares between roles: the `[tls]` certificate (loaded
//! once per listener kind that uses it and reloaded on `SIGHUP`), comet's limits, and how many
//! client connections one process may hold without starving its other sockets.

use std::sync::Arc;

use anyhow::Context;
use herald_comet::Edge;
use herald_tls::Reloader;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;

/// The public certificate for comet's TLS listeners (no ALPN), registered for
/// reloads; `None` when comet has no TLS listener or `[tls]` names no certificate
/// (comet then refuses TLS listeners with a clear error).
pub fn comet_tls(cfg: &Config, reloader: &Reloader) -> anyhow::Result<Option<herald_tls::Server>> {
    let listens = !cfg.comet.wss_bind.is_empty() || !cfg.comet.tls_tcp_bind.is_empty();
    if !listens || !cfg.tls.is_enabled() {
        return Ok(None);
    }
    let server = herald_tls::server_config(&cfg.tls, &[]).with_context(|| {
        format!(
            "cannot load the [tls] certificate {}",
            cfg.tls.cert_file.display()
        )
    })?;
    reloader.add(server.certs.clone());
    Ok(Some(server))
}

/// comet's view of the edge settings.
pub fn comet_edge(cfg: &Config, tls: Option<herald_tls::Server>) -> Edge {
    Edge {
        limits: cfg.limits.client.clone(),
        trusted_proxies: cfg.limits.trusted_proxies.clone(),
        tls,
    }
}

/// Descriptors kept free for everything that is not a client connection: the
/// HTTP API's own cap (where this process serves it), engine and gRPC connections,
/// files.
const RESERVED_FDS: usize = 1024;

/// comet's `max_connections` in force: the configured value, or when it is 0 the
/// process's open-file limit less what the HTTP API may hold and a reserve, so a
/// flood of client connections cannot take the descriptors the push API and the
/// engines need.
pub fn client_connection_cap(cfg: &Config, serves_http: bool) -> usize {
    if cfg.comet.max_connections > 0 {
        return cfg.comet.max_connections;
    }
    let Some(nofile) = open_file_limit() else {
        return 0;
    };
    let http = if serves_http {
        cfg.limits.http.max_connections
    } else {
        0
    };
    let cap = nofile.saturating_sub(http + RESERVED_FDS).max(1);
    info!(
        open_file_limit = nofile,
        max_connections = cap,
        "client connections capped below the open-file limit (comet.max_connections = 0)"
    );
    cap
}

/// The soft `Max open files` limit of this process, from `/proc/self/limits`.
fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    soft.parse().ok()
}

/// Reloads every certificate registered in `reloader` on each `SIGHUP`, until
/// `stop`.
pub async fn reload_on_sighup(reloader: Arc<Reloader>, stop: CancellationToken) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; certificates reload on restart only");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = hup.recv() => {
                    if r.is_none() {
                        return;
                    }
                    info!("SIGHUP: reloading certificates");
                    reloader.reload_all();
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reloader, stop);
    }
}
