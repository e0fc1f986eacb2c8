//! The chat on the HTTP API port of `herald standalone` and `herald logic`.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use herald_chat::socket::{ChatAuthenticator, LatePublisher};
use herald_chat::Chat;
use herald_logic::{Authenticator, Logic};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;

/// The chat, opened before logic (whose authenticator recognises chat
/// connections) and served once logic runs.
pub struct ChatSetup {
    chat: Arc<Chat>,
    publisher: Arc<LatePublisher>,
}

/// Opens the chat when `[chat]` enables it (none otherwise). A cluster's logic
/// serves the chat only from a shared database: without one it says so and
/// serves none.
pub async fn prepare(cfg: &Config, cluster: bool) -> anyhow::Result<Option<ChatSetup>> {
    let c = &cfg.chat;
    if !c.enabled {
        return Ok(None);
    }
    if cluster && c.database.is_empty() {
        info!("chat off: set chat.database to a postgres:// URL (and chat.secret) to serve it from the cluster's logics");
        return Ok(None);
    }
    let publisher = Arc::new(LatePublisher::default());
    let chat = c
        .start(publisher.clone(), cluster)
        .await
        .context("cannot start the chat ([chat])")?;
    info!(
        database = if c.shared() { "postgresql" } else { "sqlite" },
        "chat API on /chat/api; chat clients connect with {{\"chat\": TOKEN}}"
    );
    Ok(Some(ChatSetup {
        chat: Arc::new(chat),
        publisher,
    }))
}

/// `inner`, with chat connections recognised first when the chat runs.
pub fn authenticator(
    setup: Option<&ChatSetup>,
    inner: Arc<dyn Authenticator>,
) -> Arc<dyn Authenticator> {
    match setup {
        Some(s) => Arc::new(ChatAuthenticator::new(s.chat.clone(), inner)),
        None => inner,
    }
}

/// The chat's routes (none when it is off); from now on it pushes through
/// `logic`, and its retention purge runs on `tasks` until `stop`.
pub fn routes(
    cfg: &Config,
    setup: Option<ChatSetup>,
    logic: &Arc<Logic>,
    stop: &CancellationToken,
    tasks: &TaskTracker,
) -> Router {
    let Some(setup) = setup else {
        return Router::new();
    };
    setup.publisher.set(logic.clone());
    let c = &cfg.chat;
    if !c.retention.is_zero() && !c.purge_interval.is_zero() {
        tasks.spawn(purge(
            setup.chat.clone(),
            c.retention,
            c.purge_interval,
            stop.clone(),
        ));
    }
    herald_chat::http::router(setup.chat).merge(crate::web::chat_router())
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
        match chat.purge(before).await {
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
