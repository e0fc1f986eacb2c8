//! `herald-bench run SCENARIO`: starts the servers it needs (herald, nats-server,
//! the floor), drives the same workload against each in turn, and writes the report.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::clients::{ClientArgs, Target};
use crate::push::{self, Publisher, PushKind};
use crate::report::{Latency, Machine, Measurement, Report, TargetResult};
use crate::workers::Workers;
use crate::{procfs, wire};

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// N idle authenticated WebSocket connections: memory per connection.
    Idle,
    /// N WebSocket clients in one room, room pushes at a rate: CPU per delivery.
    Fanout,
    /// Lone room and key pushes at a low rate: end-to-end latency.
    Latency,
    /// N clients connecting at once: accept rate and failures.
    Storm,
}

/// Options of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The scenario.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Connections (default: 15000; 100 for latency).
    #[arg(long, short = 'n')]
    pub connections: Option<usize>,
    /// Pushes per second (default: fanout 5, latency 20).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of pushing (default: fanout 10, latency 5).
    #[arg(long)]
    pub duration: Option<f64>,
    /// herald's room batching window and the floor's, ms (default: 0 below 40
    /// pushes/s; 500 at 40 and above, goim's benchmark shape).
    #[arg(long)]
    pub window_ms: Option<u64>,
    /// Frames per room batch (herald and the floor).
    #[arg(long, default_value_t = 20)]
    pub batch: usize,
    /// Peers measured in the same run: comma list of `nats`, `floor`, or `none`.
    #[arg(long, default_value = "nats,floor")]
    pub peers: String,
    /// herald client transport.
    #[arg(long, default_value = "ws")]
    pub transport: String,
    /// herald binary (default: this program inside `herald bench`, else the
    /// `herald` next to `herald-bench`).
    #[arg(long)]
    pub herald: Option<PathBuf>,
    /// nats-server binary (default: from PATH, or /usr/sbin/nats-server).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Loopback source addresses for the clients.
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// JSON report path (default: bench-results/<scenario>.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Markdown summary path (default: bench-results/<scenario>.md).
    #[arg(long)]
    pub md: Option<PathBuf>,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_port(addr: SocketAddr, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited early: {st}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not open {addr}")
}

/// A server under test.
struct Server {
    name: &'static str,
    child: Child,
    pid: u32,
    /// Where clients connect.
    client_addr: SocketAddr,
    target: Target,
    /// Where pushes go (HTTP API, NATS TCP, floor control).
    push_addr: SocketAddr,
    _dir: Option<PathBuf>,
}

impl Server {
    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    async fn publisher(
        &self,
        kind: PushKind,
        room: &str,
        mids: (u64, u64),
    ) -> anyhow::Result<Publisher> {
        match self.name {
            "herald" => Ok(Publisher::herald(self.push_addr, kind, room, mids)),
            "nats-server" => Publisher::nats(self.push_addr, "bench.room").await,
            _ => Publisher::floor(self.push_addr).await,
        }
    }
}

async fn start_herald(args: &RunArgs, window_ms: u64, tcp: bool) -> anyhow::Result<Server> {
    let (tcp_addr, ws_addr, http) = (free_addr()?, free_addr()?, free_addr()?);
    let (default_bin, default_args) = crate::invocation().herald;
    let (bin, herald_args) = match args.herald.clone() {
        Some(b) => (b, vec!["standalone".to_string()]),
        None => (default_bin, default_args),
    };
    if !bin.exists() && bin.components().count() > 1 {
        bail!(
            "{} not found: build it first (cargo build --release -p herald), pass --herald PATH, or run `herald bench …`",
            bin.display()
        );
    }
    let mut child = Command::new(&bin)
        .args(&herald_args)
        .env("HERALD_COMET__TCP_BIND", format!("[\"{tcp_addr}\"]"))
        .env("HERALD_COMET__WS_BIND", format!("[\"{ws_addr}\"]"))
        .env("HERALD_LOGIC__HTTP_BIND", http.to_string())
        .env("HERALD_JOB__ROOM_WINDOW", format!("{window_ms}ms"))
        .env("HERALD_JOB__ROOM_BATCH", args.batch.to_string())
        .env("HERALD_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    wait_port(http, &mut child, "herald").await?;
    wait_port(ws_addr, &mut child, "herald").await?;
    let pid = child.id().context("herald pid")?;
    Ok(Server {
        name: "herald",
        child,
        pid,
        client_addr: if tcp { tcp_addr } else { ws_addr },
        target: if tcp {
            Target::HeraldTcp
        } else {
            Target::HeraldWs
        },
        push_addr: http,
        _dir: None,
    })
}

fn nats_binary(args: &RunArgs) -> Option<PathBuf> {
    if let Some(p) = &args.nats_server {
        return Some(p.clone());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// Installs Debian's nats-server when running as root on a Debian-like system, so a
/// fresh machine measures the peer too.
async fn install_nats() {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root || !std::path::Path::new("/usr/bin/apt-get").exists() {
        return;
    }
    eprintln!("nats-server is missing: installing the Debian package for the side-by-side run");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "nats-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    if !install().await.is_ok_and(|s| s.success()) {
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null())
            .status()
            .await;
        let _ = install().await;
    }
}

async fn start_nats(args: &RunArgs) -> anyhow::Result<Server> {
    let bin = match nats_binary(args) {
        Some(b) => b,
        None => {
            install_nats().await;
            nats_binary(args).context(
                "nats-server not found (apt-get install nats-server, or --nats-server PATH)",
            )?
        }
    };
    let (client, ws) = (free_addr()?, free_addr()?);
    let dir = std::env::temp_dir().join(format!(
        "herald-bench-nats-{}-{}",
        std::process::id(),
        client.port()
    ));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!("listen: \"{client}\"\nwebsocket {{\n  listen: \"{ws}\"\n  no_tls: true\n}}\n"),
    )?;
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    wait_port(ws, &mut child, "nats-server").await?;
    let pid = child.id().context("nats pid")?;
    Ok(Server {
        name: "nats-server",
        child,
        pid,
        client_addr: ws,
        target: Target::NatsWs,
        push_addr: client,
        _dir: Some(dir),
    })
}

async fn start_floor(batch: usize, window_ms: u64) -> anyhow::Result<Server> {
    let (ws, control) = (free_addr()?, free_addr()?);
    let mut child = Command::new(std::env::current_exe()?)
        .args(crate::invocation().self_prefix)
        .args([
            "floor",
            "--ws",
            &ws.to_string(),
            "--control",
            &control.to_string(),
        ])
        .args([
            "--batch",
            &batch.to_string(),
            "--window-ms",
            &window_ms.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    wait_port(ws, &mut child, "floor").await?;
    let pid = child.id().context("floor pid")?;
    Ok(Server {
        name: "floor",
        child,
        pid,
        client_addr: ws,
        target: Target::FloorWs,
        push_addr: control,
        _dir: None,
    })
}

fn client_args(server: &Server, n: usize, sources: u8, concurrency: usize) -> ClientArgs {
    ClientArgs {
        target: server.target,
        addr: server.client_addr,
        connections: n,
        first_mid: 1,
        room: "bench://1".into(),
        subject: "bench.room".into(),
        sources,
        heartbeat_secs: 120,
        concurrency,
        procs: 0,
    }
}

/// Pushes `count` messages at `rate` and measures until every client has them
/// (or progress stops). Fills CPU, deliveries, latency and the timeline.
async fn measure_pushes(
    server: &Server,
    workers: &mut Workers,
    m: &mut Measurement,
    kind: PushKind,
    rate: f64,
    count: u64,
    receivers_per_push: u64,
) -> anyhow::Result<crate::hist::Histogram> {
    workers.reset().await?;
    let mut publisher = server
        .publisher(kind, "bench://1", (1, m.connections))
        .await?;
    let cpu0 = procfs::cpu_ns(server.pid)?;
    let t0 = Instant::now();
    let stop_sampler = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let status = workers.status_handle();
        let stop = stop_sampler.clone();
        tokio::spawn(async move {
            let mut tl = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && tl.len() < 4 * 600 {
                tl.push((t0.elapsed().as_secs_f64(), status()));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            tl
        })
    };
    let (ok, failed) = push::publish_at_rate(&mut publisher, rate, count).await;
    let expected = ok * receivers_per_push;
    let mut last = (workers.status().received, Instant::now());
    let mut t_done = Instant::now();
    loop {
        let r = workers.status().received;
        if r >= expected {
            t_done = Instant::now();
            break;
        }
        if r != last.0 {
            last = (r, Instant::now());
            t_done = last.1;
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu1 = procfs::cpu_ns(server.pid)?;
    let elapsed = t_done.duration_since(t0).as_secs_f64();
    stop_sampler.store(true, std::sync::atomic::Ordering::Relaxed);
    let snap = workers.report().await?;
    m.timeline = sampler.await.unwrap_or_default();
    m.timeline.push((t0.elapsed().as_secs_f64(), snap.received));
    let hist = snap.hist.unwrap_or_default();
    m.pushes += ok;
    m.failures += failed;
    m.deliveries += snap.received;
    m.expected += expected;
    m.lost = m.expected as i64 - m.deliveries as i64;
    let cpu = cpu1.saturating_sub(cpu0) as f64;
    m.server_cpu_secs = Some(cpu / 1e9);
    if snap.received > 0 {
        m.server_cpu_ns_per_delivery = Some(cpu / snap.received as f64);
        m.deliveries_per_sec = Some(snap.received as f64 / elapsed.max(1e-3));
    }
    Ok(hist)
}

async fn run_one(
    args: &RunArgs,
    server: Server,
    n: usize,
    window_ms: u64,
) -> anyhow::Result<Measurement> {
    let mut m = Measurement {
        system: server.name.to_string(),
        ..Default::default()
    };
    let result = run_one_inner(args, &server, n, window_ms, &mut m).await;
    server.stop().await;
    result.map(|()| m)
}

async fn run_one_inner(
    args: &RunArgs,
    server: &Server,
    n: usize,
    window_ms: u64,
    m: &mut Measurement,
) -> anyhow::Result<()> {
    let _ = window_ms;
    eprintln!(
        "== {} ({:?}, {} connections)",
        server.name, args.scenario, n
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = procfs::rss_bytes(server.pid)?;
    let tcp0 = procfs::tcp_mem_bytes().ok();
    let slab0 = procfs::slab_bytes().ok();
    let concurrency = if args.scenario == Scenario::Storm {
        0
    } else {
        2000
    };
    let cargs = client_args(server, n, args.sources, concurrency);
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
    }
    let outcome = async {
        if took.is_none() {
            bail!("only {} of {n} clients connected", status.connected);
        }
        match args.scenario {
            Scenario::Storm => {}
            Scenario::Idle => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
                m.rss_per_conn_bytes = Some(per(procfs::rss_bytes(server.pid)?, rss0));
                if let (Some(a), Ok(b)) = (tcp0, procfs::tcp_mem_bytes()) {
                    m.kernel_tcp_mem_per_conn_bytes = Some(per(b, a));
                }
                if let (Some(a), Ok(b)) = (slab0, procfs::slab_bytes()) {
                    m.kernel_slab_per_conn_bytes = Some(per(b, a));
                }
            }
            Scenario::Fanout | Scenario::Latency => {
                let latency = args.scenario == Scenario::Latency;
                let (settle, rate, duration) = if latency {
                    (Duration::from_millis(500), 20.0, 5.0)
                } else {
                    (Duration::from_secs(1), 5.0, 10.0)
                };
                tokio::time::sleep(settle).await;
                let rate = args.rate.unwrap_or(rate);
                let count = (rate * args.duration.unwrap_or(duration)).ceil() as u64;
                let hist = measure_pushes(
                    server,
                    &mut workers,
                    m,
                    PushKind::Room,
                    rate,
                    count,
                    m.connections,
                )
                .await?;
                m.latency_ms = Latency::from_hist(&hist);
                m.hist = hist;
                if latency && server.name == "herald" {
                    let mut km = Measurement {
                        connections: m.connections,
                        ..Default::default()
                    };
                    let keys = measure_pushes(
                        server,
                        &mut workers,
                        &mut km,
                        PushKind::Keys,
                        rate,
                        count,
                        1,
                    )
                    .await?;
                    m.key_latency_ms = Some(Latency::from_hist(&keys));
                    m.lost += km.lost;
                    m.deliveries += km.deliveries;
                    m.expected += km.expected;
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

fn target(
    name: &str,
    value: Option<f64>,
    limit: f64,
    unit: &str,
    met: Option<bool>,
    note: &str,
) -> TargetResult {
    TargetResult {
        name: name.into(),
        value,
        limit,
        unit: unit.into(),
        met: met.unwrap_or(false),
        note: if met.is_none() && note.is_empty() {
            "not measured".into()
        } else {
            note.into()
        },
    }
}

fn evaluate(report: &Report, window_ms: u64) -> Vec<TargetResult> {
    let h = &report.herald;
    let ratio = |peer: &str| {
        report
            .ratios
            .get(peer)
            .and_then(|r| r.get("server_cpu_ns_per_delivery"))
            .copied()
    };
    let mut t = Vec::new();
    match report.scenario.as_str() {
        "idle" => t.push(target(
            "idle WebSocket connection: server RSS per connection",
            h.rss_per_conn_bytes,
            3072.0,
            "bytes",
            h.rss_per_conn_bytes.map(|v| v <= 3072.0),
            "",
        )),
        "fanout" => {
            let r = ratio("floor");
            let shape = if window_ms > 0 {
                " (room batches, same batches for the floor)"
            } else {
                " (one push at a time)"
            };
            t.push(target(
                &format!("CPU per delivery ÷ floor{shape}"),
                r,
                1.3,
                "×",
                r.map(|v| v <= 1.3),
                "",
            ));
            if window_ms == 0 {
                let r = ratio("nats-server");
                let floor_vs_nats =
                    match (report.peers.get("floor"), report.peers.get("nats-server")) {
                        (Some(f), Some(n)) => f
                            .server_cpu_ns_per_delivery
                            .zip(n.server_cpu_ns_per_delivery)
                            .map(|(f, n)| f / n),
                        _ => None,
                    };
                let note = match floor_vs_nats {
                    Some(fr) if fr > 0.5 && r.is_some_and(|v| v > 0.5) => format!(
                        "the floor (kernel and runtime only) measured {fr:.2}× nats-server in this run, so 0.5× would need herald to cost less than the kernel's own work per loopback delivery; see docs/benchmarks.md"
                    ),
                    _ => String::new(),
                };
                t.push(target(
                    "CPU per delivery ÷ nats-server",
                    r,
                    0.5,
                    "×",
                    r.map(|v| v <= 0.5),
                    &note,
                ));
            }
            t.push(target(
                "messages lost",
                Some(h.lost as f64),
                0.0,
                "messages",
                Some(h.lost == 0),
                "",
            ));
        }
        "latency" => {
            t.push(target(
                "lone room push p99",
                Some(h.latency_ms.p99),
                5.0,
                "ms",
                Some(h.latency_ms.samples > 0 && h.latency_ms.p99 <= 5.0),
                "",
            ));
            let k = h.key_latency_ms.as_ref();
            t.push(target(
                "lone key push p99",
                k.map(|k| k.p99),
                5.0,
                "ms",
                k.map(|k| k.samples > 0 && k.p99 <= 5.0),
                "",
            ));
        }
        "storm" => {
            t.push(target(
                &format!("{} connections accepted", h.connections),
                h.connect_secs,
                3.0,
                "s",
                h.connect_secs.map(|s| s < 3.0),
                "",
            ));
            t.push(target(
                "failed connection attempts",
                Some(h.failures as f64),
                0.0,
                "",
                Some(h.failures == 0),
                "",
            ));
        }
        _ => {}
    }
    t
}

/// Runs a scenario and writes its reports.
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let n = args
        .connections
        .unwrap_or(if args.scenario == Scenario::Latency {
            100
        } else {
            15_000
        });
    let rate = args.rate.unwrap_or(if args.scenario == Scenario::Latency {
        20.0
    } else {
        5.0
    });
    let window_ms =
        args.window_ms
            .unwrap_or(if args.scenario == Scenario::Fanout && rate >= 40.0 {
                500
            } else {
                0
            });
    let peers: Vec<String> = args
        .peers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "none")
        .collect();
    let scenario = format!("{:?}", args.scenario).to_lowercase();
    let started_unix = wire::now_ns() / 1_000_000_000;

    let herald = start_herald(&args, window_ms, args.transport == "tcp").await?;
    let herald_m = run_one(&args, herald, n, window_ms).await?;
    let mut measured = BTreeMap::new();
    for peer in &peers {
        let server = match peer.as_str() {
            "nats" | "nats-server" => start_nats(&args).await,
            "floor" => start_floor(if window_ms > 0 { args.batch } else { 1 }, window_ms).await,
            other => Err(anyhow::anyhow!("unknown peer {other:?} (nats, floor)")),
        };
        let server = match server {
            Ok(s) => s,
            Err(e) => {
                eprintln!("peer {peer} not measured: {e:#}");
                continue;
            }
        };
        let name = server.name.to_string();
        match run_one(&args, server, n, window_ms).await {
            Ok(m) => {
                measured.insert(name, m);
            }
            Err(e) => eprintln!("peer {peer} failed: {e:#}"),
        }
    }
    let mut report = Report {
        scenario: scenario.clone(),
        herald: herald_m,
        params: json!({
            "connections": n, "rate": rate, "duration": args.duration, "window_ms": window_ms,
            "batch": args.batch, "transport": args.transport, "peers": peers, "sources": args.sources,
        }),
        machine: Machine::current(),
        peers: measured,
        ratios: BTreeMap::new(),
        targets: Vec::new(),
        started_unix,
    };
    report.compute_ratios();
    report.targets = evaluate(&report, window_ms);
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bench-results/{scenario}.json")));
    let md_path = args
        .md
        .clone()
        .unwrap_or_else(|| json_path.with_extension("md"));
    report.write_json(&json_path)?;
    report.write_markdown(&md_path)?;
    report.print();
    println!("report: {} and {}", json_path.display(), md_path.display());
    Ok(report)
}
