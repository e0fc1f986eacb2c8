//! The chat on the HTTP API port of `herald standalone` and `herald logic`.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use herald_logic::Logic;
use tracing::info;

use crate::config::Config;

/// The chat's routes when `[chat]` enables it (none otherwise). A cluster's
/// logic serves the chat only from a shared database: without one it says so
/// and serves none.
pub async fn routes(cfg: &Config, logic: &Arc<Logic>, cluster: bool) -> anyhow::Result<Router> {
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
    Ok(herald_chat::http::router(Arc::new(chat)))
}
