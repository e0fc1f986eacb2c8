//! herald's load generator and benchmark runner, used as `herald bench …` or as the
//! `herald-bench` binary.
//!
//! - `clients`: N goim (or NATS) clients over WebSocket or TCP, plain or TLS, with
//!   trusted identities or HS256 tokens, spread over loopback source addresses and
//!   worker processes; prints progress and delivery rates.
//! - `push`: pushes through herald's HTTP API at a target rate.
//! - `run SCENARIO`: idle / fanout / latency / storm / slow / recover-storm / loaded against
//!   herald and, in the same run, herald's other configurations (`--secure`: TLS
//!   and `jwt` auth; `--history`: history kept for the bench room; `--variant`:
//!   other builds), nats-server and the floor; writes a JSON report and a Markdown
//!   summary.
//! - `chat`: the chat under load (visitors and agents sending, acknowledged and
//!   synced over their sockets) on SQLite or PostgreSQL.
//! - `floor`: the minimal tokio fan-out server used as the baseline.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::Subcommand;

pub mod charts;
pub mod chat;
pub mod clients;
pub mod floor;
pub mod hist;
pub mod link;
pub mod measure;
pub mod pki;
pub mod procfs;
pub mod push;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod servers;
pub mod targets;
pub mod token;
pub mod wire;
pub mod workers;

/// How this program re-invokes itself (worker and floor processes) and starts the
/// herald server under test.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Arguments before `worker` / `floor` when re-running this executable
    /// (`["bench"]` inside the `herald` binary, nothing for `herald-bench`).
    pub self_prefix: Vec<String>,
    /// The program and arguments that start `herald standalone`.
    pub herald: (PathBuf, Vec<String>),
}

static INVOCATION: OnceLock<Invocation> = OnceLock::new();

/// The invocation in force (set by [`run`]).
pub fn invocation() -> Invocation {
    INVOCATION.get().cloned().unwrap_or_else(|| Invocation {
        self_prefix: Vec::new(),
        herald: (PathBuf::from("herald"), vec!["standalone".into()]),
    })
}

/// The benchmark commands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Hold N clients and report what they receive.
    Clients {
        #[command(flatten)]
        args: clients::ClientArgs,
        /// Stop after this many seconds (0 = until SIGINT or SIGTERM; either prints
        /// the final counts first).
        #[arg(long, default_value_t = 0)]
        duration: u64,
    },
    /// Push through herald's HTTP API at a target rate.
    Push {
        /// herald HTTP API address.
        #[arg(long, default_value = "127.0.0.1:3111")]
        http: SocketAddr,
        /// Push kind.
        #[arg(long, value_enum, default_value = "room")]
        kind: push::PushKind,
        /// Room key for room pushes.
        #[arg(long, default_value = "bench://1")]
        room: String,
        /// Members (and keys `bench-<mid>`) to cycle over: first,count.
        #[arg(long, default_value = "1,1000")]
        mids: String,
        /// Pushes per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Number of pushes.
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Keep-alive connections pushing in parallel (each waits for one
        /// answer before its next push).
        #[arg(long, default_value_t = 8)]
        connections: u64,
        /// `speed` of `--kind all` pushes: connections per second over the
        /// cluster (0 = no limit).
        #[arg(long, default_value_t = 0)]
        speed: u32,
    },
    /// Run a benchmark scenario and write its report.
    Run(Box<scenario::RunArgs>),
    /// The chat under load: visitors and agents chatting over their sockets
    /// (send, acknowledgement, sync) on SQLite or PostgreSQL; writes a report.
    Chat(Box<chat::ChatArgs>),
    /// Many clients against a running deployment: memory and heartbeat CPU per
    /// connection, pushes to all of them (scripts/bench-scale.sh).
    Scale(Box<scale::ScaleArgs>),
    /// Run the floor server.
    Floor(floor::FloorArgs),
    /// (internal) A client worker process driven by `run` or `clients`.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

/// Runs a benchmark command on its own runtime.
pub fn run(command: Cmd, how: Invocation) -> anyhow::Result<()> {
    let _ = INVOCATION.set(how);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command {
            Cmd::Worker { spec } => workers::worker_main(&spec).await,
            Cmd::Floor(args) => floor::run(args).await,
            Cmd::Chat(args) => {
                let report = chat::run(*args).await?;
                if report.target_met == Some(false) {
                    eprintln!("the target was not met (see the report)");
                }
                Ok(())
            }
            Cmd::Run(args) => {
                let report = scenario::run(*args).await?;
                if report.targets.iter().any(|t| !t.met) {
                    eprintln!("some targets were not met (see the report)");
                }
                Ok(())
            }
            Cmd::Push {
                http,
                kind,
                room,
                mids,
                rate,
                count,
                connections,
                speed,
            } => {
                let (first, n) = mids
                    .split_once(',')
                    .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                    .ok_or_else(|| anyhow::anyhow!("--mids is FIRST,COUNT"))?;
                let start = Instant::now();
                let (ok, failed) = push::herald_at_rate(
                    |part, parts| {
                        push::Publisher::herald_part(http, kind, &room, (first, n), part, parts)
                            .with_speed(speed)
                    },
                    connections,
                    rate,
                    count,
                )
                .await;
                println!(
                    "{ok} pushes accepted, {failed} failed in {:.2}s ({:.1}/s)",
                    start.elapsed().as_secs_f64(),
                    ok as f64 / start.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Cmd::Clients { args, duration } => run_clients(args, duration).await,
            Cmd::Scale(args) => scale::run(*args).await.map(|_| ()),
        }
    })
}

async fn run_clients(args: clients::ClientArgs, duration: u64) -> anyhow::Result<()> {
    let n = args.connections as u64;
    let cap = clients::per_process_capacity();
    if args.procs <= 1 && args.connections <= cap {
        // One process: run the clients here.
        let dialer = clients::Dialer::new(&args)?;
        let stats = Arc::new(clients::Stats::default());
        let run = tokio::spawn(clients::run(Arc::new(args), dialer, stats.clone()));
        let start = Instant::now();
        while stats.snapshot(false).connected < n && start.elapsed() < Duration::from_secs(300) {
            let s = stats.snapshot(false);
            eprint!("\r{}", workers::progress(s.connected, n, s.failed));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let s = stats.snapshot(false);
        eprintln!(
            "\r{} in {:.2}s",
            workers::progress(s.connected, n, s.failed),
            start.elapsed().as_secs_f64()
        );
        let result = report_until(duration, s.received, || {
            let s = stats.snapshot(true);
            async move { Ok(s) }
        })
        .await;
        stats.stop.store(true, Ordering::Relaxed);
        run.abort();
        return result;
    }
    // Fail here, not in every worker, on bad TLS or token settings.
    clients::Dialer::new(&args)?;
    let w = workers::Workers::spawn(&args).await?;
    w.wait_connected(n, Duration::from_secs(300)).await;
    let w = tokio::sync::Mutex::new(w);
    let result = report_until(duration, 0, || async { w.lock().await.report().await }).await;
    w.into_inner().stop().await;
    result
}

/// Prints the clients' counts every 5 s until `duration` seconds have passed
/// (0: no limit) or SIGINT or SIGTERM arrives, and once more then: how a script
/// ends a run of unknown length and still gets the final counts.
async fn report_until<F, Fut>(duration: u64, received: u64, mut snap: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<clients::Snapshot>>,
{
    let begin = Instant::now();
    let mut last = (received, Instant::now());
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let stopped = tokio::select! {
            _ = &mut stop => true,
            _ = tokio::time::sleep(Duration::from_secs(5)) => false,
        };
        let s = snap().await?;
        let secs = last.1.elapsed().as_secs_f64();
        print_line(&s, s.received.saturating_sub(last.0), secs);
        last = (s.received, Instant::now());
        if stopped || (duration > 0 && begin.elapsed().as_secs() >= duration) {
            return Ok(());
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn print_line(s: &clients::Snapshot, delta: u64, secs: f64) {
    let lat = s
        .hist
        .as_ref()
        .map(report::Latency::from_hist)
        .unwrap_or_default();
    println!(
        "alive {} | received {} ({:.0}/s) | dropped {} | failed {} | latency p50 {:.2} ms p99 {:.2} ms",
        s.connected,
        s.received,
        delta as f64 / secs,
        s.dropped,
        s.failed,
        lat.p50,
        lat.p99
    );
}
