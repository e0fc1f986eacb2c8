//! `herald bench scale`: many connections against a running deployment (the
//! one-machine cluster of `scripts/bench-scale.sh`): what they cost the servers
//! and the kernel, what their heartbeats cost, and how long a push to all of
//! them takes, with nothing lost.
//!
//! The clients are spread over the comets (`--addr`, one per comet) and over
//! worker processes and loopback source addresses (the open-file limit and the
//! ports of one source address). The servers' processes are named by pid
//! (`--comet-pid`, `--other-pid`) for their memory and CPU.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::clients::{ClientArgs, Target};
use crate::hist::Histogram;
use crate::push::{Publisher, PushKind};
use crate::report::Latency;
use crate::workers::Workers;
use crate::{procfs, wire};

/// Options of `scale`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Comets' WebSocket addresses (comma-separated); clients take turns.
    #[arg(long, value_delimiter = ',', num_args = 1.., required = true)]
    pub addr: Vec<std::net::SocketAddr>,
    /// A logic's HTTP API (the pushes go there).
    #[arg(long, default_value = "127.0.0.1:3111")]
    pub http: std::net::SocketAddr,
    /// Connections.
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub connections: usize,
    /// Client heartbeat interval, seconds (goim's JavaScript client: 30).
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// Seconds of heartbeats only, to measure their CPU.
    #[arg(long, default_value_t = 60)]
    pub heartbeat_window: u64,
    /// Room pushes to all the clients, one at a time.
    #[arg(long, default_value_t = 5)]
    pub room_pushes: u64,
    /// `push/all` pushes without a speed, one at a time.
    #[arg(long, default_value_t = 3)]
    pub all_pushes: u64,
    /// The `speed` of the paced `push/all` (connections per second over the
    /// cluster; 0 leaves it out).
    #[arg(long, default_value_t = 50_000)]
    pub speed: u32,
    /// Pids of the comet processes (comma-separated): their memory and CPU.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub comet_pid: Vec<u32>,
    /// Pids of the other server processes (logics, jobs, engines): their CPU
    /// while pushes run.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub other_pid: Vec<u32>,
    /// Loopback source addresses for the clients.
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 2000)]
    pub concurrency: usize,
    /// Where `scale.json` and `scale.md` are written.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

/// Memory after the clients connected, against before.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// The comets' resident memory before the clients, bytes.
    pub comets_rss_before: u64,
    /// … and with them connected.
    pub comets_rss_after: u64,
    /// Kernel slab memory before and after (both ends of every connection are
    /// on this machine: the kernel holds two sockets per connection).
    pub slab_before: u64,
    pub slab_after: u64,
    /// TCP buffer memory (`/proc/net/sockstat`) before and after.
    pub tcp_before: u64,
    pub tcp_after: u64,
}

/// One push phase: pushes to every client, one at a time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushPhase {
    pub name: String,
    pub pushes: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: i64,
    /// From the push request to each client's receipt, over every push.
    pub latency: Latency,
    /// The slowest push: from its request until its last client had it, ms.
    pub slowest_ms: f64,
    /// The comets' CPU during the phase, seconds.
    pub comets_cpu_secs: f64,
    /// The other processes' CPU during the phase, seconds.
    pub others_cpu_secs: f64,
    /// The latencies, for the chart.
    #[serde(skip)]
    pub hist: Histogram,
}

/// The run's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleReport {
    pub connections: u64,
    pub comets: usize,
    pub connect_secs: f64,
    pub connect_failures: u64,
    pub memory: Memory,
    pub heartbeat_secs: u64,
    pub heartbeat_window_secs: f64,
    pub heartbeat_comets_cpu_secs: f64,
    pub heartbeat_others_cpu_secs: f64,
    pub phases: Vec<PushPhase>,
    /// Connections still up at the end.
    pub connected_at_end: u64,
}

fn cpu_of(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter()
        .map(|p| procfs::cpu_ns(*p).with_context(|| format!("CPU of pid {p}")))
        .sum()
}

fn rss_of(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter()
        .map(|p| procfs::rss_bytes(*p).with_context(|| format!("memory of pid {p}")))
        .sum()
}

/// Runs the measurement and writes its report.
pub async fn run(a: ScaleArgs) -> anyhow::Result<ScaleReport> {
    if a.comet_pid.is_empty() {
        bail!("--comet-pid: the comets' pids are needed for their memory and CPU");
    }
    let n = a.connections as u64;
    let mut r = ScaleReport {
        connections: n,
        comets: a.addr.len(),
        heartbeat_secs: a.heartbeat_secs,
        ..Default::default()
    };
    r.memory.comets_rss_before = rss_of(&a.comet_pid)?;
    r.memory.slab_before = procfs::slab_bytes()?;
    r.memory.tcp_before = procfs::tcp_mem_bytes()?;

    let args = ClientArgs {
        room: ROOM.into(),
        sources: a.sources,
        heartbeat_secs: a.heartbeat_secs,
        concurrency: a.concurrency,
        ..ClientArgs::new(Target::HeraldWs, a.addr.clone(), a.connections)
    };
    let mut workers = Workers::spawn(&args).await?;
    let took = workers.wait_connected(n, Duration::from_secs(600)).await;
    let s = workers.status();
    r.connect_failures = s.failed;
    let Some(took) = took else {
        bail!(
            "only {} of {n} clients connected in 600 s ({} failures)",
            s.connected,
            s.failed
        );
    };
    r.connect_secs = took.as_secs_f64();
    eprintln!("{n} connected in {:.1}s", r.connect_secs);

    // Heartbeats only: every client sends one every heartbeat_secs.
    let (c0, o0, t0) = (cpu_of(&a.comet_pid)?, cpu_of(&a.other_pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(a.heartbeat_window)).await;
    r.heartbeat_window_secs = t0.elapsed().as_secs_f64();
    r.heartbeat_comets_cpu_secs = (cpu_of(&a.comet_pid)? - c0) as f64 / 1e9;
    r.heartbeat_others_cpu_secs = (cpu_of(&a.other_pid)? - o0) as f64 / 1e9;
    // Memory once the connections have settled (a heartbeat window later).
    r.memory.comets_rss_after = rss_of(&a.comet_pid)?;
    r.memory.slab_after = procfs::slab_bytes()?;
    r.memory.tcp_after = procfs::tcp_mem_bytes()?;
    eprintln!(
        "heartbeats: comets {:.2} CPU s in {:.0} s",
        r.heartbeat_comets_cpu_secs, r.heartbeat_window_secs
    );

    let phases: Vec<(&str, PushKind, u64, u32)> = vec![
        ("room", PushKind::Room, a.room_pushes, 0),
        ("push/all", PushKind::All, a.all_pushes, 0),
        (
            "push/all with speed",
            PushKind::All,
            u64::from(a.speed > 0),
            a.speed,
        ),
    ];
    for (name, kind, count, speed) in phases {
        if count == 0 {
            continue;
        }
        let phase = push_phase(&a, &mut workers, name, kind, count, speed, n).await?;
        eprintln!(
            "{name}: {} of {} received, p50 {:.0} ms p99 {:.0} ms, last after {:.0} ms",
            phase.received, phase.expected, phase.latency.p50, phase.latency.p99, phase.slowest_ms
        );
        r.phases.push(phase);
    }
    r.connected_at_end = workers.status().connected;
    workers.stop().await;

    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    std::fs::write(a.out.join("scale.json"), serde_json::to_string_pretty(&r)?)?;
    let series: Vec<(&str, &Histogram)> = r
        .phases
        .iter()
        .filter(|p| p.hist.count() > 0)
        .map(|p| (p.name.as_str(), &p.hist))
        .collect();
    let mut md = markdown(&r);
    if !series.is_empty() {
        let title = "Push to everybody: request to each client's receipt (cumulative)";
        std::fs::write(
            a.out.join("scale-latency.svg"),
            crate::charts::latency_series_svg(
                &series,
                title,
                "latency, ms (log scale)",
                "share of clients",
            ),
        )?;
        md.push_str(&format!("\n![{title}](scale-latency.svg)\n"));
    }
    std::fs::write(a.out.join("scale.md"), md)?;
    eprintln!("report: {}", a.out.join("scale.md").display());
    Ok(r)
}

/// The room every client joins.
const ROOM: &str = "bench://1";

/// `count` pushes of `kind`, one at a time: each waits until every client has
/// it (or nothing arrived for a few seconds) before the next.
async fn push_phase(
    a: &ScaleArgs,
    workers: &mut Workers,
    name: &str,
    kind: PushKind,
    count: u64,
    speed: u32,
    n: u64,
) -> anyhow::Result<PushPhase> {
    workers.reset().await?;
    let mut publisher = Publisher::herald(a.http, kind, ROOM, (1, n)).with_speed(speed);
    let (c0, o0) = (cpu_of(&a.comet_pid)?, cpu_of(&a.other_pid)?);
    let mut phase = PushPhase {
        name: name.into(),
        ..Default::default()
    };
    let mut slowest = Duration::ZERO;
    for seq in 0..count {
        let before = workers.status().received;
        let sent = Instant::now();
        publisher
            .publish(&wire::payload(seq))
            .await
            .with_context(|| format!("{name} push {seq}"))?;
        phase.pushes += 1;
        let done = workers
            .wait_received(before + n, Duration::from_secs(5))
            .await;
        slowest = slowest.max(done.saturating_duration_since(sent));
    }
    let snap = workers.report().await?;
    phase.expected = phase.pushes * n;
    phase.received = snap.received;
    phase.lost = phase.expected as i64 - phase.received as i64;
    phase.hist = snap.hist.unwrap_or_default();
    phase.latency = Latency::from_hist(&phase.hist);
    phase.slowest_ms = slowest.as_secs_f64() * 1e3;
    phase.comets_cpu_secs = (cpu_of(&a.comet_pid)? - c0) as f64 / 1e9;
    phase.others_cpu_secs = (cpu_of(&a.other_pid)? - o0) as f64 / 1e9;
    Ok(phase)
}

fn mib(b: f64) -> String {
    format!("{:.0} MiB", b / (1024.0 * 1024.0))
}

/// The Markdown report, with the projection to 1,000,000 connections.
pub fn markdown(r: &ScaleReport) -> String {
    use std::fmt::Write;
    let n = r.connections as f64;
    let m = &r.memory;
    let rss = m.comets_rss_after.saturating_sub(m.comets_rss_before) as f64;
    let slab = m.slab_after.saturating_sub(m.slab_before) as f64;
    let tcp = m.tcp_after.saturating_sub(m.tcp_before) as f64;
    // Two sockets per connection in this kernel (client and server ends).
    let kernel_per_side = (slab + tcp) / (2.0 * n);
    let beats_per_sec = n / r.heartbeat_secs.max(1) as f64;
    let hb_cpu = r.heartbeat_comets_cpu_secs / r.heartbeat_window_secs.max(1e-9);
    let us_per_beat = hb_cpu * 1e6 / beats_per_sec;
    let mut o = String::new();
    let _ = writeln!(o, "# Scale: {} connections on one machine\n", r.connections);
    let _ = writeln!(
        o,
        "{} comets (WebSocket clients spread evenly), clients in worker processes on \
         loopback source addresses; all connected in {:.1} s ({} connect failures, \
         {} still connected at the end).\n",
        r.comets, r.connect_secs, r.connect_failures, r.connected_at_end
    );
    let _ = writeln!(o, "## Memory\n");
    let _ = writeln!(o, "| | before | with the clients | per connection |");
    let _ = writeln!(o, "|---|---:|---:|---:|");
    let _ = writeln!(
        o,
        "| comets' RSS (sum) | {} | {} | {:.2} KB |",
        mib(m.comets_rss_before as f64),
        mib(m.comets_rss_after as f64),
        rss / n / 1000.0
    );
    let _ = writeln!(
        o,
        "| kernel slab (both ends) | {} | {} | {:.2} KB per end |",
        mib(m.slab_before as f64),
        mib(m.slab_after as f64),
        slab / (2.0 * n) / 1000.0
    );
    let _ = writeln!(
        o,
        "| TCP buffers (both ends) | {} | {} | {:.2} KB per end |",
        mib(m.tcp_before as f64),
        mib(m.tcp_after as f64),
        tcp / (2.0 * n) / 1000.0
    );
    let _ = writeln!(o, "\n## Heartbeats\n");
    let _ = writeln!(
        o,
        "Every client sends one every {} s ({:.0}/s in all). Over {:.0} s of nothing \
         else the comets used {:.2} CPU s ({:.1} % of one core), {:.1} µs per \
         heartbeat; the other processes {:.2} CPU s.\n",
        r.heartbeat_secs,
        beats_per_sec,
        r.heartbeat_window_secs,
        r.heartbeat_comets_cpu_secs,
        hb_cpu * 100.0,
        us_per_beat,
        r.heartbeat_others_cpu_secs
    );
    let _ = writeln!(o, "## Pushes to everybody\n");
    let _ = writeln!(
        o,
        "One at a time; latency from the push request to each client's receipt, \
         over every client and push.\n"
    );
    let _ = writeln!(
        o,
        "| push | pushes | received / expected | lost | p50 | p99 | p99.9 | last client | comets' CPU | others' CPU |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &r.phases {
        let _ = writeln!(
            o,
            "| {} | {} | {} / {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} s | {:.2} s |",
            p.name,
            p.pushes,
            p.received,
            p.expected,
            p.lost,
            p.latency.p50,
            p.latency.p99,
            p.latency.p999,
            p.slowest_ms,
            p.comets_cpu_secs,
            p.others_cpu_secs
        );
    }
    let _ = writeln!(o, "\n## Projection to 1,000,000 connections on one box\n");
    let million = 1_000_000.0;
    let server_mem = (rss / n + kernel_per_side) * million;
    let _ = writeln!(
        o,
        "- memory: ({:.2} KB herald + {:.2} KB kernel per connection) × 1,000,000 = \
         {:.1} GB, of this machine's 24 GiB (the clients' ends, here on the same \
         kernel, would be on other machines);",
        rss / n / 1000.0,
        kernel_per_side / 1000.0,
        server_mem / 1e9
    );
    let _ = writeln!(
        o,
        "- heartbeats: {:.1} µs each × 1,000,000 / {} s = {:.2} cores; at goim's \
         benchmark client's 240 s, {:.2} cores;",
        us_per_beat,
        r.heartbeat_secs,
        us_per_beat * million / r.heartbeat_secs.max(1) as f64 / 1e6,
        us_per_beat * million / 240.0 / 1e6
    );
    if let Some(room) = r.phases.iter().find(|p| p.name == "room") {
        let per_delivery = room.comets_cpu_secs / room.received.max(1) as f64;
        let _ = writeln!(
            o,
            "- a room push to everybody: the comets spent {:.2} µs of CPU per delivery; \
             1,000,000 deliveries are {:.1} CPU s, so about {:.1} s on this machine's 2 \
             cores (measured here: the last of {} clients after {:.0} ms).",
            per_delivery * 1e6,
            per_delivery * million,
            per_delivery * million / 2.0,
            r.connections,
            room.slowest_ms
        );
    }
    o
}
