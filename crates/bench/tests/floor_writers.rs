//! Every way the floor can write a push (a task per connection, one write per
//! socket from the publishing task, io_uring batches) delivers every push to
//! every client, so the benchmark compares writers that do the same work.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use herald_bench::clients::{self, ClientArgs, Dialer, Stats, Target};
use herald_bench::floor::Writer;
use herald_bench::push::Publisher;
use herald_bench::wire;
use support::{start_floor, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_floor_writer_delivers_every_push_to_every_client() {
    const CLIENTS: usize = 150;
    const PUSHES: usize = 4;
    for writer in [Writer::Tasks, Writer::Direct, Writer::Uring] {
        let (ws, control, floor_task) = start_floor(writer, None).await;
        let args = ClientArgs {
            sources: 2,
            concurrency: 0,
            procs: 1,
            ..ClientArgs::new(Target::FloorWs, vec![ws], CLIENTS)
        };
        let dialer = Dialer::new(&args).unwrap();
        let stats = Arc::new(Stats::default());
        let run = tokio::spawn(clients::run(Arc::new(args), dialer, stats.clone()));
        until("every client connected", || {
            stats.snapshot(false).connected == CLIENTS as u64
        })
        .await;
        let mut publisher = Publisher::floor(control).await.unwrap();
        for i in 0..PUSHES as u64 {
            publisher.publish(&wire::payload(i + 1)).await.unwrap();
        }
        until(&format!("{} pushes on every client", writer.arg()), || {
            stats.snapshot(false).received == (CLIENTS * PUSHES) as u64
        })
        .await;
        let s = stats.snapshot(true);
        assert_eq!((s.failed, s.dropped), (0, 0), "{}", writer.arg());

        stats.stop.store(true, Ordering::Relaxed);
        run.abort();
        floor_task.abort();
    }
}
