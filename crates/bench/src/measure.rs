//! One server's turn in a scenario: connect the clients (in worker processes),
//! take the scenario's figures from `/proc` and the clients' counts, disconnect.
//! recover-storm also sends them away and lets them back at once; loaded adds a
//! few probe clients of its own beside the bench room's.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::hist::Histogram;
use crate::procfs;
use crate::push::{self, PushKind};
use crate::report::{
    Latency, LoadedFigures, Measurement, ProbeFigures, ProbePair, RecoveryFigures,
};
use crate::scenario::{Plan, Scenario};
use crate::servers::{Kind, Server, ROOM};
use crate::wire;
use crate::workers::Workers;

/// Runs `plan` against `server`, then stops the server.
pub async fn run_one(plan: &Plan, server: Server) -> anyhow::Result<Measurement> {
    let mut m = Measurement {
        system: server.name.clone(),
        ..Default::default()
    };
    let result = run_one_inner(plan, &server, &mut m).await;
    server.stop().await;
    result.map(|()| m)
}

async fn run_one_inner(plan: &Plan, server: &Server, m: &mut Measurement) -> anyhow::Result<()> {
    let n = plan.connections;
    eprintln!(
        "== {} ({:?}, {} connections)",
        server.name, plan.scenario, n
    );
    // Let the server finish starting (its RSS settles) before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = procfs::rss_bytes(server.pid)?;
    let tcp0 = procfs::tcp_mem_bytes().ok();
    let slab0 = procfs::slab_bytes().ok();
    let cpu0 = procfs::cpu_ns(server.pid)?;
    let concurrency = if matches!(plan.scenario, Scenario::Storm | Scenario::RecoverStorm) {
        0
    } else {
        2000
    };
    let mut cargs = server.client_args(n, plan.sources, concurrency);
    cargs.no_read = plan.scenario == Scenario::Slow;
    cargs.recover = plan.recover && server.kind == Kind::Herald;
    let mut workers = Workers::spawn(&cargs).await?;
    let took = workers
        .wait_connected(n as u64, Duration::from_secs(180))
        .await;
    let status = workers.status();
    m.connections = status.connected;
    m.failures = status.failed;
    if let Some(t) = took {
        m.connect_secs = Some(t.as_secs_f64());
        m.connect_rate_per_sec = Some(n as f64 / t.as_secs_f64().max(1e-6));
        // Who spent the cores while connecting: on loopback the clients' TLS
        // handshakes compete with the server's for the same CPUs.
        let per = |ns: u64| ns as f64 / 1000.0 / n as f64;
        m.connect_server_cpu_us_per_conn =
            Some(per(procfs::cpu_ns(server.pid)?.saturating_sub(cpu0)));
        m.connect_client_cpu_us_per_conn = Some(per(status.cpu_ns));
    }
    let outcome = async {
        if took.is_none() {
            bail!("only {} of {n} clients connected", status.connected);
        }
        match plan.scenario {
            Scenario::Storm => {}
            Scenario::Idle => {
                // Connections finish their last allocations after the auth reply.
                tokio::time::sleep(Duration::from_secs(3)).await;
                let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
                m.rss_per_conn_bytes = Some(per(procfs::rss_bytes(server.pid)?, rss0));
                m.client_rss_per_conn_bytes = Some(workers.status().rss as f64 / n as f64);
                if let (Some(a), Ok(b)) = (tcp0, procfs::tcp_mem_bytes()) {
                    m.kernel_tcp_mem_per_conn_bytes = Some(per(b, a));
                }
                if let (Some(a), Ok(b)) = (slab0, procfs::slab_bytes()) {
                    m.kernel_slab_per_conn_bytes = Some(per(b, a));
                }
            }
            Scenario::Slow => slow(plan, server, &mut workers, m, rss0).await?,
            Scenario::RecoverStorm => recover_storm(plan, server, &mut workers, m).await?,
            Scenario::Loaded => loaded(plan, server, &mut workers, m).await?,
            Scenario::Fanout | Scenario::Latency => {
                let latency = plan.scenario == Scenario::Latency;
                tokio::time::sleep(if latency {
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(1)
                })
                .await;
                m.client_rss_per_conn_bytes = Some(workers.status().rss as f64 / n as f64);
                // Recovering clients: count their positioned pushes too.
                m.positioned = cargs.recover.then_some(0);
                let count = (plan.rate * plan.duration).ceil() as u64;
                let (hist, ()) = measure_pushes(
                    server,
                    &mut workers,
                    m,
                    PushKind::Room,
                    plan.rate,
                    count,
                    m.connections,
                    std::future::ready(()),
                )
                .await?;
                m.latency_ms = Latency::from_hist(&hist);
                m.hist = hist;
                if latency && server.kind == crate::servers::Kind::Herald {
                    let mut km = Measurement {
                        connections: m.connections,
                        positioned: m.positioned.map(|_| 0),
                        ..Default::default()
                    };
                    let (keys, ()) = measure_pushes(
                        server,
                        &mut workers,
                        &mut km,
                        PushKind::Keys,
                        plan.rate,
                        count,
                        1,
                        std::future::ready(()),
                    )
                    .await?;
                    m.key_latency_ms = Some(Latency::from_hist(&keys));
                    m.lost += km.lost;
                    m.deliveries += km.deliveries;
                    m.expected += km.expected;
                    if let Some(p) = m.positioned.as_mut() {
                        *p += km.positioned.unwrap_or(0);
                        *m.duplicated.get_or_insert(0) += km.duplicated.unwrap_or(0);
                        *m.out_of_order.get_or_insert(0) += km.out_of_order.unwrap_or(0);
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    workers.stop().await;
    // Let the server notice the closed connections before the next system starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    outcome
}

/// Samples `pid`'s RSS every 100 ms until stopped; returns (seconds since
/// `t0`, bytes) pairs.
fn rss_sampler(
    pid: u32,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(f64, u64)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) && samples.len() < 10 * 3600 {
            if let Ok(rss) = procfs::rss_bytes(pid) {
                samples.push((t0.elapsed().as_secs_f64(), rss));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples
    })
}

/// Slow readers: room pushes of `plan.payload_bytes` at `plan.rate` for
/// `plan.duration` s to clients that never read, then the clients leave and the
/// server is watched for `plan.after` s. Records the server's RSS before, at its
/// peak and at the end (what the allocator gave back).
async fn slow(
    plan: &Plan,
    server: &Server,
    workers: &mut Workers,
    m: &mut Measurement,
    rss0: u64,
) -> anyhow::Result<()> {
    let count = (plan.rate * plan.duration).ceil() as u64;
    let mut publisher = server
        .publisher(PushKind::Room, ROOM, (1, m.connections))
        .await?;
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = rss_sampler(server.pid, t0, stop.clone());
    let (ok, failed) =
        push::publish_sized(&mut publisher, plan.rate, count, plan.payload_bytes).await;
    m.pushes = ok;
    m.failures += failed;
    let pushed_at = t0.elapsed().as_secs_f64();
    workers.stop_all().await;
    let left_at = t0.elapsed().as_secs_f64();
    tokio::time::sleep(plan.after).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap_or_default();
    m.rss_base_bytes = Some(rss0);
    m.rss_peak_bytes = samples.iter().map(|s| s.1).max();
    m.rss_after_bytes = Some(procfs::rss_bytes(server.pid)?);
    m.rss_timeline = samples;
    m.slow_phases = Some((pushed_at, left_at));
    Ok(())
}

/// Pushes `count` messages at `rate` and measures until every client has them
/// (or progress stops). Fills CPU, deliveries, latency and the timeline (and,
/// when `m.positioned` is set, i.e. the clients recover, the positioned,
/// repeated and out-of-order pushes). `alongside` runs while the pushes are
/// made (loaded: the probe pushes); its output comes back with the histogram.
#[allow(clippy::too_many_arguments)]
async fn measure_pushes<F: Future>(
    server: &Server,
    workers: &mut Workers,
    m: &mut Measurement,
    kind: PushKind,
    rate: f64,
    count: u64,
    receivers_per_push: u64,
    alongside: F,
) -> anyhow::Result<(Histogram, F::Output)> {
    workers.reset().await?;
    let mut publisher = server.publisher(kind, ROOM, (1, m.connections)).await?;
    let cpu0 = procfs::cpu_ns(server.pid)?;
    let t0 = Instant::now();
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler = {
        let status = workers.status_handle();
        let stop = stop_sampler.clone();
        tokio::spawn(async move {
            let mut tl = Vec::new();
            while !stop.load(Ordering::Relaxed) && tl.len() < 4 * 600 {
                tl.push((t0.elapsed().as_secs_f64(), status()));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            tl
        })
    };
    let ((ok, failed), beside) = tokio::join!(
        push::publish_at_rate(&mut publisher, rate, count),
        alongside
    );
    let expected = ok * receivers_per_push;
    let t_done = workers
        .wait_received(expected, Duration::from_secs(3))
        .await;
    let cpu1 = procfs::cpu_ns(server.pid)?;
    let elapsed = t_done.duration_since(t0).as_secs_f64();
    stop_sampler.store(true, Ordering::Relaxed);
    let snap = workers.report().await?;
    m.timeline = sampler.await.unwrap_or_default();
    m.timeline.push((t0.elapsed().as_secs_f64(), snap.received));
    let hist = snap.hist.unwrap_or_default();
    m.pushes += ok;
    m.failures += failed;
    m.deliveries += snap.received;
    m.expected += expected;
    m.lost = m.expected as i64 - m.deliveries as i64;
    if let Some(p) = m.positioned.as_mut() {
        *p += snap.positioned;
        *m.duplicated.get_or_insert(0) += snap.duplicated;
        *m.out_of_order.get_or_insert(0) += snap.out_of_order;
    }
    let cpu = cpu1.saturating_sub(cpu0) as f64;
    m.server_cpu_secs = Some(cpu / 1e9);
    if snap.received > 0 {
        m.server_cpu_ns_per_delivery = Some(cpu / snap.received as f64);
        m.deliveries_per_sec = Some(snap.received as f64 / elapsed.max(1e-3));
    }
    Ok((hist, beside))
}

/// loaded: probe clients of each kind.
pub const PROBE_CLIENTS: u64 = 2;

/// loaded: the room the room probes join (and room probe pushes go to).
pub const PROBE_ROOM: &str = "bench://probe";

/// loaded: the room the key probes join, where nothing is pushed (so they get
/// key pushes only).
pub const PROBE_KEY_ROOM: &str = "bench://probe-key";

/// loaded: the first probe member id (key probes, then room probes), far above
/// the bench room's members (1..=N), so no probe shares a key with them.
pub const PROBE_FIRST_MID: u64 = 1_000_000_001;

/// Probe pushes of each kind in `secs` seconds at `rate` pushes per second in
/// all (the two kinds alternate).
pub fn probe_pushes_per_kind(rate: f64, secs: f64) -> u64 {
    (rate / 2.0 * secs).ceil() as u64
}

/// The probe clients of one kind, in worker processes of their own.
struct ProbeGroup {
    workers: Workers,
}

impl ProbeGroup {
    async fn spawn(
        server: &Server,
        sources: u8,
        first_mid: u64,
        room: &str,
    ) -> anyhow::Result<ProbeGroup> {
        let mut args = server.client_args(PROBE_CLIENTS as usize, sources, 0);
        args.first_mid = first_mid;
        args.room = room.into();
        args.procs = 1;
        Ok(ProbeGroup {
            workers: Workers::spawn(&args).await?,
        })
    }

    /// Waits for the probes of `pushes` (accepted, refused), each meant for
    /// `receivers` of them, and takes their figures.
    async fn figures(
        &mut self,
        pushes: (u64, u64),
        receivers: u64,
    ) -> anyhow::Result<ProbeFigures> {
        self.workers
            .wait_received(pushes.0 * receivers, Duration::from_secs(3))
            .await;
        let snap = self.workers.report().await?;
        Ok(ProbeFigures::new(
            pushes,
            receivers,
            snap.received,
            snap.hist.unwrap_or_default(),
        ))
    }
}

/// `count` probe pushes of each kind at `rate` per second in all: key pushes
/// to the key probes (one client each, cycling) and, half a period later each
/// time, room pushes to [`PROBE_ROOM`]. Returns (accepted, refused) per kind.
async fn push_probes(
    server: &Server,
    rate: f64,
    count: u64,
) -> anyhow::Result<((u64, u64), (u64, u64))> {
    let mut keys = server
        .publisher(
            PushKind::Keys,
            PROBE_KEY_ROOM,
            (PROBE_FIRST_MID, PROBE_CLIENTS),
        )
        .await?;
    let mut room = server
        .publisher(PushKind::Room, PROBE_ROOM, (PROBE_FIRST_MID, PROBE_CLIENTS))
        .await?;
    let half = rate / 2.0;
    let rooms = async {
        tokio::time::sleep(Duration::from_secs_f64(1.0 / rate)).await;
        push::publish_at_rate(&mut room, half, count).await
    };
    Ok(tokio::join!(
        push::publish_at_rate(&mut keys, half, count),
        rooms
    ))
}

/// Latency under load: the probe clients connect beside the bench room's; lone
/// probe pushes for `plan.idle` s with no other pushes, then the same probe
/// pushes while the bench room gets room pushes at `plan.rate` for
/// `plan.duration` s. `m` gets the background fan-out's figures (as fanout's)
/// and the probes' latency in both phases.
async fn loaded(
    plan: &Plan,
    server: &Server,
    workers: &mut Workers,
    m: &mut Measurement,
) -> anyhow::Result<()> {
    let mut key = ProbeGroup::spawn(server, plan.sources, PROBE_FIRST_MID, PROBE_KEY_ROOM).await?;
    let mut room = ProbeGroup::spawn(
        server,
        plan.sources,
        PROBE_FIRST_MID + PROBE_CLIENTS,
        PROBE_ROOM,
    )
    .await?;
    let result = loaded_phases(plan, server, workers, m, &mut key, &mut room).await;
    key.workers.stop().await;
    room.workers.stop().await;
    result
}

async fn loaded_phases(
    plan: &Plan,
    server: &Server,
    workers: &mut Workers,
    m: &mut Measurement,
    key: &mut ProbeGroup,
    room: &mut ProbeGroup,
) -> anyhow::Result<()> {
    for g in [&*key, &*room] {
        if g.workers
            .wait_connected(PROBE_CLIENTS, Duration::from_secs(60))
            .await
            .is_none()
        {
            bail!("the probe clients did not all connect");
        }
    }
    // The bench room's connects are over before anything is measured.
    settle(server.pid).await?;
    m.client_rss_per_conn_bytes = Some(workers.status().rss as f64 / m.connections.max(1) as f64);
    let mut failed = 0;
    let idle = if plan.idle > 0.0 {
        eprintln!("probes alone for {:.0} s", plan.idle);
        key.workers.reset().await?;
        room.workers.reset().await?;
        let count = probe_pushes_per_kind(plan.probe_rate, plan.idle);
        let (k, r) = push_probes(server, plan.probe_rate, count).await?;
        failed += k.1 + r.1;
        Some(ProbePair {
            key: key.figures(k, 1).await?,
            room: room.figures(r, PROBE_CLIENTS).await?,
        })
    } else {
        None
    };
    eprintln!(
        "probes during room pushes to {} clients at {}/s for {:.0} s",
        m.connections, plan.rate, plan.duration
    );
    key.workers.reset().await?;
    room.workers.reset().await?;
    // Recovering clients: count their positioned pushes too.
    m.positioned = (plan.recover && server.kind == Kind::Herald).then_some(0);
    let count = (plan.rate * plan.duration).ceil() as u64;
    let probe_count = probe_pushes_per_kind(plan.probe_rate, plan.duration);
    let (hist, probes) = measure_pushes(
        server,
        workers,
        m,
        PushKind::Room,
        plan.rate,
        count,
        m.connections,
        push_probes(server, plan.probe_rate, probe_count),
    )
    .await?;
    m.latency_ms = Latency::from_hist(&hist);
    m.hist = hist;
    let (k, r) = probes?;
    failed += k.1 + r.1;
    let loaded = ProbePair {
        key: key.figures(k, 1).await?,
        room: room.figures(r, PROBE_CLIENTS).await?,
    };
    m.failures += failed;
    m.probes = Some(LoadedFigures {
        probe_rate: plan.probe_rate,
        probe_clients: PROBE_CLIENTS,
        probe_room: PROBE_ROOM.into(),
        idle_secs: plan.idle,
        idle,
        loaded,
    });
    Ok(())
}

/// Polls `ok` every 10 ms until it holds (true) or `timeout` passes (false).
async fn wait_for(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Waits (up to 10 s) until `pid` is quiet: under 10 % of a core over 250 ms.
async fn settle(pid: u32) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let a = procfs::cpu_ns(pid)?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        if procfs::cpu_ns(pid)?.saturating_sub(a) < 25_000_000 {
            break;
        }
    }
    Ok(())
}

/// Recovering clients that leave, miss `plan.missed` room pushes and come back
/// all at once with their positions. Measured from the order to come back until
/// every client has its op-25 frame: time, server CPU, and what the replays held.
async fn recover_storm(
    plan: &Plan,
    server: &Server,
    workers: &mut Workers,
    m: &mut Measurement,
) -> anyhow::Result<()> {
    let n = m.connections;
    // Each client learns its position in the room's stream from its first op 25.
    if !wait_for(Duration::from_secs(60), || workers.status().tracking >= n).await {
        bail!(
            "only {} of {n} clients got a position in {ROOM}'s stream: does the server keep its history?",
            workers.status().tracking
        );
    }
    workers.pause().await?;
    if !wait_for(Duration::from_secs(60), || workers.status().connected == 0).await {
        bail!("the clients did not all close their connections");
    }
    // The server has taken in every close before anything is pushed.
    settle(server.pid).await?;
    let mut publisher = server.publisher(PushKind::Room, ROOM, (1, n)).await?;
    let (ok, failed) = push::publish_at_rate(&mut publisher, plan.rate, plan.missed).await;
    m.pushes = ok;
    m.failures += failed;
    settle(server.pid).await?;
    workers.reset().await?;
    let before = workers.report().await?;
    let cpu0 = procfs::cpu_ns(server.pid)?;
    let t0 = wire::now_ns();
    let start = Instant::now();
    workers.resume(t0).await?;
    eprintln!("{n} clients coming back, each missed {ok}");
    let mut last = (0, Instant::now());
    let mut printed = Instant::now();
    loop {
        let back = workers.status().back();
        if back >= n {
            break;
        }
        if back != last.0 {
            last = (back, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10)
            || start.elapsed() > Duration::from_secs(120)
        {
            eprintln!("\r{back} of {n} back; giving up");
            break;
        }
        if printed.elapsed() > Duration::from_millis(500) {
            eprint!("\r{back} of {n} back");
            printed = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = procfs::cpu_ns(server.pid)?.saturating_sub(cpu0);
    let snap = workers.report().await.context("the clients' counts")?;
    let back = snap.back();
    let done =
        (back >= n && snap.last_done_ns >= t0).then(|| (snap.last_done_ns - t0) as f64 / 1e9);
    eprintln!(
        "\r{back} of {n} back{}",
        done.map_or(String::new(), |d| format!(" in {d:.2}s"))
    );
    let expected = ok * n;
    let hist = snap.recover_hist.clone().unwrap_or_default();
    // Clients back over time, from the clients' own clocks (the status lines the
    // runner polls come every 200 ms).
    let mut timeline = vec![(0.0, 0)];
    for (us, count) in hist.buckets() {
        let so_far = timeline.last().map_or(0, |p| p.1) + count;
        timeline.push((us as f64 / 1e6, so_far));
    }
    let per = |ns: u64| ns as f64 / 1000.0 / n.max(1) as f64;
    let r = RecoveryFigures {
        clients: n,
        missed: ok,
        recover_secs: done,
        back,
        recovered: snap.recovered,
        reload: snap.reloaded,
        other_status: snap.other_status,
        replayed: snap.received,
        expected,
        lost: expected as i64 - snap.received.saturating_sub(snap.duplicated) as i64,
        duplicated: snap.duplicated,
        out_of_order: snap.out_of_order,
        failed_attempts: snap.failed.saturating_sub(before.failed),
        server_cpu_secs: cpu as f64 / 1e9,
        server_cpu_us_per_client: per(cpu),
        client_cpu_us_per_client: per(snap.cpu_ns.saturating_sub(before.cpu_ns)),
        time_to_recover_ms: Latency::from_hist(&hist),
    };
    m.deliveries = snap.received;
    m.expected = expected;
    m.lost = r.lost;
    m.positioned = Some(snap.positioned);
    m.duplicated = Some(r.duplicated);
    m.out_of_order = Some(r.out_of_order);
    m.server_cpu_secs = Some(r.server_cpu_secs);
    m.timeline = timeline;
    m.hist = hist;
    m.recovery = Some(r);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_pushes_split_the_rate_between_the_two_kinds() {
        assert_eq!(probe_pushes_per_kind(20.0, 5.0), 50);
        assert_eq!(probe_pushes_per_kind(20.0, 20.0), 200);
        assert_eq!(probe_pushes_per_kind(3.0, 1.0), 2);
        assert_eq!(probe_pushes_per_kind(20.0, 0.0), 0);
        // The probes are not in the bench room.
        assert_ne!(PROBE_ROOM, crate::servers::ROOM);
        assert_ne!(PROBE_KEY_ROOM, crate::servers::ROOM);
    }
}
