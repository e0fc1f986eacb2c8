//! What the load generator's integration tests share.

use std::time::{Duration, Instant};

/// Waits until `ok()` holds, failing the test after 20 s.
pub async fn until(what: &str, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
