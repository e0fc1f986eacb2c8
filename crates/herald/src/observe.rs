//! Logging and metrics setup, and the `/metrics` route.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::periodic::Periodic;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Upper bounds (seconds) of every latency histogram's buckets: from 100 µs (a
/// stage of a push on an idle host) to 10 s (a queue that fell behind).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often recorded latencies are folded into the histograms when nothing
/// scrapes (each scrape folds them too): they are held as raw samples until then.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Starts the thread that folds recorded latencies into the histograms every
/// few seconds, so a process nobody scrapes does not keep every sample. Owned
/// by `main`, stopped after the role.
pub fn upkeep() -> anyhow::Result<Periodic> {
    let handle = metrics_handle();
    Periodic::start("herald-metrics", UPKEEP_INTERVAL, move || {
        handle.run_upkeep()
    })
}

/// Installs the Prometheus recorder once per process and returns its handle. Must
/// run before the tiers are built, so their metric handles bind to it.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then metrics go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Installs the tracing subscriber (`RUST_LOG` wins over `level`). Lines go to
/// standard output, coloured only when it is a terminal and `NO_COLOR` is unset
/// or empty: a pipe, a file or journald gets plain text.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = use_colour(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_ansi(ansi)
        .with_env_filter(filter)
        .with_target(true)
        .try_init();
}

/// Whether log lines get ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
fn use_colour(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// `GET /metrics` in the Prometheus text format. `before` runs on each scrape to
/// refresh gauges that are read rather than maintained.
pub fn router(handle: PrometheusHandle, before: Arc<dyn Fn() + Send + Sync>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            let before = before.clone();
            async move {
                before();
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = |v: &'static str| Some(OsStr::new(v));
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, set("")),
            "an empty NO_COLOR does not count"
        );
        assert!(!use_colour(true, set("1")));
        assert!(
            !use_colour(true, set("0")),
            "any non-empty value disables colour"
        );
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, set("")));
    }
}
