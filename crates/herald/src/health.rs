//! `/healthz` and `/readyz`, served by every role on its HTTP port (the API port of
//! logic and standalone, `metrics.bind` of comet and job).
//!
//! `/healthz` answers 200 while the process serves HTTP at all (liveness).
//! `/readyz` runs the role's checks — its engines answer, it is not draining —
//! concurrently, each bounded by [`CHECK_TIMEOUT`], and answers 200 only when all
//! pass, else 503 naming the checks that failed: what a load balancer or an
//! orchestrator needs to stop sending traffic to a process that cannot serve it.
//! The endpoints are public, so the answer names checks only (why one failed is
//! logged, not shown), and one round of checks serves every probe for
//! [`CACHE_FOR`]: probing cannot be turned into load on the engines.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

/// Longest one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one round of checks answers every `/readyz`.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// Check name → passed.
type Outcome = BTreeMap<&'static str, bool>;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The checks `/readyz` runs.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
    /// Set when shutdown starts: read on every probe, never from the cache, so a
    /// balancer sees a drain at once.
    draining: Option<Arc<AtomicBool>>,
    /// The last round and when it ran; probes within [`CACHE_FOR`] share it.
    last: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, Outcome)>>>,
}

impl Readiness {
    /// No checks yet (ready).
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Adds a check named `name`.
    pub fn check<F, Fut, E>(mut self, name: &'static str, f: F) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let f = Arc::new(f);
        self.checks.push((
            name,
            Arc::new(move || {
                let fut = f();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) }) as CheckFuture
            }),
        ));
        self
    }

    /// Adds a check that fails once `draining` is set (shutdown started).
    pub fn draining(mut self, draining: Arc<AtomicBool>) -> Readiness {
        self.draining = Some(draining);
        self
    }

    /// Runs every check (or reuses a round younger than [`CACHE_FOR`]); logs why
    /// a check failed.
    async fn run(&self) -> Outcome {
        // Held across the round: concurrent probes wait for it rather than start
        // their own.
        let mut last = self.last.lock().await;
        if let Some((at, outcome)) = last.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return outcome.clone();
            }
        }
        let runs = self.checks.iter().map(|(name, check)| {
            let fut = check();
            async move {
                let r = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
                };
                (*name, r)
            }
        });
        let mut outcome = Outcome::new();
        for (name, r) in futures_util::future::join_all(runs).await {
            if let Err(e) = &r {
                tracing::warn!(check = name, error = %e, "not ready");
            }
            outcome.insert(name, r.is_ok());
        }
        *last = Some((tokio::time::Instant::now(), outcome.clone()));
        outcome
    }

    /// The `/healthz` and `/readyz` routes.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        let ready = Arc::new(self);
        Router::new()
            .route(
                "/healthz",
                get(|| async {
                    Json(json!({"code": 0, "message": "", "data": {"status": "alive"}}))
                }),
            )
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.clone();
                    async move { ready.answer().await }
                }),
            )
    }

    async fn answer(&self) -> Response {
        let mut outcome = self.run().await;
        if let Some(d) = &self.draining {
            outcome.insert("draining", !d.load(Ordering::Acquire));
        }
        let failed: Vec<&str> = outcome
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(n, _)| *n)
            .collect();
        let checks: serde_json::Map<String, serde_json::Value> = outcome
            .iter()
            .map(|(n, ok)| (n.to_string(), json!(if *ok { "ok" } else { "failed" })))
            .collect();
        if failed.is_empty() {
            Json(json!({"code": 0, "message": "", "data": {"status": "ready", "checks": checks}}))
                .into_response()
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "code": -503,
                    "message": format!("not ready: {} (see the log for why)", failed.join(", ")),
                    "data": {"status": "not ready", "checks": checks},
                })),
            )
                .into_response()
        }
    }
}
