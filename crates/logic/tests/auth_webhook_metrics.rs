//! Webhook failures are counted by reason in
//! `herald_auth_webhook_failures_total`. Its own test binary: the metrics recorder
//! is process-wide.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test]
async fn failures_are_counted_by_reason() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    let backend = Backend::start().await;
    let mut cfg = hook_config(&backend.url);
    cfg.webhook.timeout = Duration::from_millis(200);
    let s = start(cfg).await;
    let req = connect_req(&json!({}));
    backend.answer(503, "{}");
    assert!(s.auth.authenticate(&req).await.is_err());
    backend.answer(200, "[]");
    assert!(s.auth.authenticate(&req).await.is_err());
    assert!(s.auth.authenticate(&req).await.is_err());
    backend.answer(200, r#"{"allow":true,"mid":1}"#);
    backend.hold();
    assert!(s.auth.authenticate(&req).await.is_err());
    backend.release();
    // A refusal by the backend is a decision, not a failure.
    backend.answer(200, r#"{"allow":false}"#);
    assert!(s.auth.authenticate(&req).await.is_err());
    s.shutdown().await;

    let text = handle.render();
    let count = |reason: &str| {
        let prefix = format!("herald_auth_webhook_failures_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
            .trim()
            .to_string()
    };
    assert_eq!(count("status"), "1");
    assert_eq!(count("garbage"), "2");
    assert_eq!(count("timeout"), "1");
    assert_eq!(count("connect"), "0");
}
