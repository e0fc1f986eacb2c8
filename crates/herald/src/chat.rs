//! The chat on the HTTP API port of `herald standalone` and `herald logic`.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use herald_chat::Chat;
use herald_logic::Logic;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;

/// The chat's routes when `[chat]` enables it (none otherwise). A cluster's
/// logic serves the chat only from a shared database: without one it says so
/// and serves none.
/// The retention purge runs on `tasks` until `stop`.
pub async fn routes(
    cfg: &Config,
    logic: &Arc<Logic>,
    cluster: bool,
    stop: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Router> {
    let c = &cfg.chat;
    if !c.enabled {
        return Ok(Router::new());
    }
    if cluster && c.database.is_empty() {
        info!("chat off: set chat.database to a postgres:// URL (and chat.secret) to serve it from the cluster's logics");
        return Ok(Router::new());
    }
    let chat = c
        .start(logic.clone(), cluster)
        .await
        .context("cannot start the chat ([chat])")?;
    info!(
        database = if c.shared() { "postgresql" } else { "sqlite" },
        "chat API on /chat/api"
    );
    let chat = Arc::new(chat);
    if !c.retention.is_zero() && !c.purge_interval.is_zero() {
        tasks.spawn(purge(
            chat.clone(),
            c.retention,
            c.purge_interval,
            stop.clone(),
        ));
    }
    Ok(herald_chat::http::router(chat))
}

/// Removes what is older than `retention`, every `every`, until `stop`. (Every
/// logic of a cluster may run it: the removals are idempotent.)
async fn purge(
    chat: Arc<Chat>,
    retention: std::time::Duration,
    every: std::time::Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = herald_chat::now_ms() - retention.as_millis() as i64;
        match chat.store().purge(before).await {
            Ok(p) if p.visitors + p.conversations > 0 => info!(
                visitors = p.visitors,
                conversations = p.conversations,
                "chat retention purge"
            ),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "chat retention purge failed; retried at the next interval")
            }
        }
    }
}
