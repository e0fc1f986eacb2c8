//! The load generator's MQTT side against a real mosquitto (Debian's package;
//! `scripts/bench.sh` and `scripts/test.sh` install it): the subscribers connect
//! over WebSocket, subscribe, answer nothing but receive every QoS-0 publish with
//! its timestamp, and keep their connections with PINGREQs; the publisher's
//! pushes reach every one of them.
//!
//! mosquitto is required: without it this test fails, it does not skip.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herald_bench::clients::{self, ClientArgs, Dialer, Stats, Target};
use herald_bench::servers;
use herald_bench::wire;
use support::until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_subscribers_receive_every_publish() {
    let broker = servers::start_mosquitto(None)
        .await
        .expect("mosquitto (Debian package `mosquitto`) is needed");
    let n = 30;
    let args = ClientArgs {
        room: String::new(),
        sources: 2,
        // Short, so the broker's keep-alive check meets the PINGREQs.
        heartbeat_secs: 1,
        concurrency: 0,
        procs: 1,
        ..ClientArgs::new(Target::MqttWs, vec![broker.client_addr], n)
    };
    let dialer = Dialer::new(&args).unwrap();
    let stats = Arc::new(Stats::default());
    let run = tokio::spawn(clients::run(Arc::new(args), dialer, stats.clone()));
    until("30 subscribed clients", || {
        stats.snapshot(false).connected == n as u64
    })
    .await;

    let mut publisher = broker
        .publisher(herald_bench::push::PushKind::Room, servers::ROOM, (1, 1))
        .await
        .unwrap();
    for seq in 0..5 {
        publisher.publish(&wire::payload(seq)).await.unwrap();
    }
    until("5 publishes on every client", || {
        stats.snapshot(false).received == 5 * n as u64
    })
    .await;
    let s = stats.snapshot(true);
    assert_eq!((s.failed, s.dropped), (0, 0));
    assert_eq!(
        s.hist.unwrap().count(),
        5 * n as u64,
        "a latency per delivery"
    );

    // Past two keep-alive periods every client is still there (its PINGREQs
    // count), and a later publish still reaches all.
    // (The broker closes a client silent for 1.5 keep-alives: 3 s here.)
    tokio::time::sleep(Duration::from_secs(4)).await;
    publisher.publish(&wire::payload(9)).await.unwrap();
    until("the late publish on every client", || {
        stats.snapshot(false).received == 6 * n as u64
    })
    .await;
    assert_eq!(stats.snapshot(false).failed, 0);

    stats.stop.store(true, Ordering::Relaxed);
    run.abort();
    broker.stop().await;
}
