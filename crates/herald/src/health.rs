//! `/healthz` and `/readyz`, served by every role on its HTTP port (the API port of
//! logic and standalone, `metrics.bind` of comet and job).
//!
//! `/healthz` answers 200 while the process serves HTTP at all (liveness).
//! `/readyz` runs the role's checks — its engines answer, it is not draining —
//! concurrently, each bounded by [`CHECK_TIMEOUT`], and answers 200 only when all
//! pass, else 503 naming what failed: what a load balancer or an orchestrator
//! needs to stop sending traffic to a process that cannot serve it.

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

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The checks `/readyz` runs.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
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
    pub fn draining(self, draining: Arc<AtomicBool>) -> Readiness {
        self.check("draining", move || {
            let set = draining.load(Ordering::Acquire);
            async move {
                if set {
                    Err("shutting down")
                } else {
                    Ok(())
                }
            }
        })
    }

    async fn run(&self) -> BTreeMap<&'static str, Result<(), String>> {
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
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .collect()
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
        let results = self.run().await;
        let failed: Vec<String> = results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect();
        let checks: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(n, r)| {
                let v = match r {
                    Ok(()) => json!("ok"),
                    Err(e) => json!(e),
                };
                (n.to_string(), v)
            })
            .collect();
        if failed.is_empty() {
            Json(json!({"code": 0, "message": "", "data": {"status": "ready", "checks": checks}}))
                .into_response()
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "code": -503,
                    "message": format!("not ready: {}", failed.join("; ")),
                    "data": {"status": "not ready", "checks": checks},
                })),
            )
                .into_response()
        }
    }
}
