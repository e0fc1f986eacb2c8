//! The load generator's TLS clients against the floor serving wss with a
//! certificate made by the bench: they connect, authenticate and receive a push;
//! with a CA that did not sign the certificate none gets in.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use herald_bench::clients::{self, ClientArgs, Dialer, Stats, Target};
use herald_bench::floor;
use herald_bench::pki::Credentials;
use herald_bench::push::Publisher;
use herald_bench::wire;
use support::{free_addr, start_floor, until};

fn scratch(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "herald-bench-test-{tag}-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

fn tls_args(addr: SocketAddr, ca: std::path::PathBuf, n: usize) -> ClientArgs {
    ClientArgs {
        sources: 2,
        concurrency: 0,
        procs: 1,
        tls: true,
        ca: Some(ca),
        ..ClientArgs::new(Target::FloorWs, vec![addr], n)
    }
}

/// Starts a wss floor; returns its client and control addresses.
async fn wss_floor(creds: &Credentials) -> (SocketAddr, SocketAddr, tokio::task::JoinHandle<()>) {
    let tls = Some((creds.cert.clone(), creds.key.clone()));
    start_floor(floor::Writer::Tasks, tls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_authenticate_and_receive_a_push() {
    let creds = Credentials::create(&scratch("tls")).unwrap();
    let (ws, control, floor_task) = wss_floor(&creds).await;
    let args = tls_args(ws, creds.ca.clone(), 20);
    let dialer = Dialer::new(&args).unwrap();
    let stats = Arc::new(Stats::default());
    let run = tokio::spawn(clients::run(Arc::new(args), dialer, stats.clone()));
    until("20 TLS clients", || stats.snapshot(false).connected == 20).await;

    let mut publisher = Publisher::floor(control).await.unwrap();
    publisher.publish(&wire::payload(1)).await.unwrap();
    until("a push on every client", || {
        stats.snapshot(false).received == 20
    })
    .await;
    let s = stats.snapshot(true);
    assert_eq!((s.failed, s.dropped), (0, 0));
    assert_eq!(
        s.hist.unwrap().count(),
        20,
        "one latency sample per delivery"
    );

    stats.stop.store(true, Ordering::Relaxed);
    run.abort();
    floor_task.abort();
    creds.remove();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let creds = Credentials::create(&scratch("tls-a")).unwrap();
    let other = Credentials::create(&scratch("tls-b")).unwrap();
    let (ws, _control, floor_task) = wss_floor(&creds).await;
    let args = tls_args(ws, other.ca.clone(), 3);
    let dialer = Dialer::new(&args).unwrap();
    let stats = Arc::new(Stats::default());
    let run = tokio::spawn(clients::run(Arc::new(args), dialer, stats.clone()));
    until("failed handshakes", || stats.snapshot(false).failed >= 3).await;
    assert_eq!(stats.snapshot(false).connected, 0);

    stats.stop.store(true, Ordering::Relaxed);
    run.abort();
    floor_task.abort();
    creds.remove();
    other.remove();
}

#[test]
fn tls_without_a_ca_and_short_secrets_are_refused_up_front() {
    let mut args = tls_args(free_addr(), "unused".into(), 1);
    args.ca = None;
    let e = Dialer::new(&args).err().unwrap().to_string();
    assert!(e.contains("--ca"), "{e}");
    args.tls = false;
    args.jwt_secret = Some("short".into());
    let e = Dialer::new(&args).err().unwrap().to_string();
    assert!(e.contains("32 bytes"), "{e}");
}
