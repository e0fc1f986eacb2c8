//! What the load generator's integration tests share.

// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use herald_bench::floor::{self, FloorArgs, Writer};

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

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts a floor writing with `writer` (wss with `tls`: certificate and key);
/// returns its client and control addresses once it answers.
pub async fn start_floor(
    writer: Writer,
    tls: Option<(PathBuf, PathBuf)>,
) -> (SocketAddr, SocketAddr, tokio::task::JoinHandle<()>) {
    let (ws, control) = (free_addr(), free_addr());
    let (cert, key) = tls.unzip();
    let args = FloorArgs {
        ws,
        control,
        batch: 1,
        window_ms: 0,
        cert,
        key,
        writer,
    };
    let task = tokio::spawn(async move {
        floor::run(args).await.unwrap();
    });
    let start = Instant::now();
    while tokio::net::TcpStream::connect(control).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "floor did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ws, control, task)
}
