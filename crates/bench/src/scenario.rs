//! `herald-bench run SCENARIO`: starts the servers it needs (herald in each
//! configuration asked for, nats-server, the floor), drives the same workload
//! against each in turn, and writes the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde_json::json;

use crate::floor::Writer;
use crate::measure::run_one;
use crate::pki::Credentials;
use crate::report::{Machine, Measurement, Report};
use crate::servers::{self, Batching, HeraldSpec, Secure};
use crate::targets::{self, HISTORY, SECURE};
use crate::wire;

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
    /// N clients that never read, one room, sized pushes at a rate; then they
    /// leave: server RSS peak and what is given back after `--after` seconds.
    Slow,
    /// N WebSocket clients that ask for recovery, in one room whose history is
    /// kept, learn their position, leave; `--missed` room pushes; they all come
    /// back at once with their positions: time until every one has its replays
    /// and its stream states, server CPU, lost, repeated and out-of-order pushes.
    RecoverStorm,
    /// Latency under load: N WebSocket clients in one room receive room pushes at
    /// a rate (as in fanout) while a few probe clients outside that room receive
    /// lone key and room pushes at `--probe-rate`; the probes are measured first
    /// for `--idle` seconds without the background pushes, then during them:
    /// probe latency idle against loaded per kind, background deliveries/s.
    Loaded,
}

impl Scenario {
    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    /// Scenarios that measure herald builds only (`--herald`, `--variant`), no peers.
    pub fn herald_only(self) -> bool {
        matches!(
            self,
            Scenario::Slow | Scenario::RecoverStorm | Scenario::Loaded
        )
    }

    /// The room batching window when `--window-ms` is not given: goim's 500 ms for
    /// room pushes at 40/s and above in fanout and loaded (goim's benchmark
    /// shape), else none.
    pub fn default_window_ms(self, rate: f64) -> u64 {
        if matches!(self, Scenario::Fanout | Scenario::Loaded) && rate >= 40.0 {
            500
        } else {
            0
        }
    }
}

/// How the secure herald authenticates its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecureAuth {
    /// `jwt` when the herald under test knows it, else `trust`.
    Auto,
    /// `auth.mode = "jwt"` with a generated HMAC secret; clients send HS256 tokens.
    Jwt,
    /// Trust mode (TLS only).
    Trust,
}

/// Options of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The scenario.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Connections (default: 15000; 100 for latency; 2000 for slow).
    #[arg(long, short = 'n')]
    pub connections: Option<usize>,
    /// Pushes per second (default: fanout 5, latency 20, slow 20, loaded 5: the
    /// background room pushes).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of pushing (default: fanout 10, latency 5, slow 30, loaded 20).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Push payload size in bytes (default: slow 1024, else unpadded, ~40 bytes).
    #[arg(long)]
    pub payload_bytes: Option<usize>,
    /// Slow scenario: seconds to watch the server after the clients left.
    #[arg(long, default_value_t = 30.0)]
    pub after: f64,
    /// herald's room batching window and the floor's, ms (default: 0 below 40
    /// pushes/s; 500 at 40 and above, goim's benchmark shape).
    #[arg(long)]
    pub window_ms: Option<u64>,
    /// Frames per room batch (herald and the floor).
    #[arg(long, default_value_t = 20)]
    pub batch: usize,
    /// Keep the last SIZE messages of the bench room's type (`history.rooms.bench`,
    /// ttl 10m): measures `herald-history`, the same herald with these settings,
    /// in the same run (recover-storm: the history of every herald, default 100).
    #[arg(long, value_name = "SIZE")]
    pub history: Option<usize>,
    /// herald clients ask for recovery (`"recover"` in the auth body) and count
    /// positioned pushes (op 24) as deliveries (recover-storm: always).
    #[arg(long)]
    pub recover: bool,
    /// recover-storm: room pushes each client misses while away.
    #[arg(long, default_value_t = 10)]
    pub missed: u64,
    /// loaded: lone probe pushes per second in all, alternating a key push to
    /// one probe client and a room push to the probe room.
    #[arg(long, default_value_t = 20.0)]
    pub probe_rate: f64,
    /// loaded: seconds of probe pushes before the background pushes start (the
    /// idle figures; 0 leaves them out).
    #[arg(long, default_value_t = 5.0)]
    pub idle: f64,
    /// Peers measured in the same run: comma list of `nats`, `mosquitto`,
    /// `floor`, `floor-direct`, `floor-uring` (the floor writing every socket from
    /// the task that got the push, one write each or a ring of sends per io_uring
    /// call), or `none`. With `--secure`, `floor` measures `floor-secure` (wss)
    /// too.
    #[arg(long, default_value = "nats,mosquitto,floor")]
    pub peers: String,
    /// herald client transport: `ws` or `tcp` (with `--secure`: wss or TLS over TCP).
    #[arg(long, default_value = "ws")]
    pub transport: String,
    /// Measure a secure herald too, as `herald-secure`: TLS listeners with a
    /// certificate made for the run, and `--secure-auth`.
    #[arg(long)]
    pub secure: bool,
    /// The secure herald's connect authentication.
    #[arg(long, value_enum, default_value = "auto")]
    pub secure_auth: SecureAuth,
    /// herald binary (default: this program inside `herald bench`, else the
    /// `herald` next to `herald-bench`).
    #[arg(long)]
    pub herald: Option<PathBuf>,
    /// Name of that herald in the report.
    #[arg(long, default_value = "herald")]
    pub label: String,
    /// Another herald build measured in the same run, as NAME=PATH (repeatable),
    /// e.g. `--variant mimalloc=bin/herald-mimalloc`; ratios are variant ÷ herald.
    #[arg(long = "variant")]
    pub variants: Vec<String>,
    /// nats-server binary (default: from PATH, or /usr/sbin/nats-server).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// mosquitto binary (default: from PATH, or /usr/sbin/mosquitto).
    #[arg(long)]
    pub mosquitto: Option<PathBuf>,
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

/// The workload of one run, the same for every server.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub connections: usize,
    pub rate: f64,
    pub duration: f64,
    pub payload_bytes: usize,
    /// Slow scenario: how long the server is watched after the clients left.
    pub after: Duration,
    pub sources: u8,
    /// herald clients ask for recovery.
    pub recover: bool,
    /// recover-storm: pushes made while the clients are away.
    pub missed: u64,
    /// loaded: probe pushes per second (both kinds together).
    pub probe_rate: f64,
    /// loaded: seconds of probe pushes without background pushes.
    pub idle: f64,
}

impl Plan {
    fn new(args: &RunArgs) -> anyhow::Result<Plan> {
        let s = args.scenario;
        let pick = |latency: f64, slow: f64, other: f64| match s {
            Scenario::Latency => latency,
            Scenario::Slow => slow,
            _ => other,
        };
        let default_duration = match s {
            Scenario::Loaded => 20.0,
            _ => pick(5.0, 30.0, 10.0),
        };
        // recover-storm pushes what the clients miss at this rate.
        let default_rate = if s == Scenario::RecoverStorm {
            200.0
        } else {
            pick(20.0, 20.0, 5.0)
        };
        let after = Duration::try_from_secs_f64(args.after.max(0.0))
            .map_err(|_| anyhow::anyhow!("--after is a number of seconds"))?;
        let rate = args.rate.unwrap_or(default_rate);
        if s == Scenario::RecoverStorm && args.missed == 0 {
            bail!("--missed must be at least 1: the clients recover what they missed");
        }
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of pushes per second");
        }
        let duration = args.duration.unwrap_or(default_duration);
        if s == Scenario::Loaded {
            if !(duration.is_finite() && duration > 0.0) {
                bail!("--duration must be a positive number of seconds");
            }
            if !(args.probe_rate.is_finite() && args.probe_rate > 0.0) {
                bail!("--probe-rate must be a positive number of pushes per second");
            }
            if !(args.idle.is_finite() && args.idle >= 0.0) {
                bail!("--idle is a number of seconds (0: no idle phase)");
            }
        }
        Ok(Plan {
            scenario: s,
            connections: args
                .connections
                .unwrap_or(pick(100.0, 2000.0, 15_000.0) as usize),
            rate,
            duration,
            payload_bytes: args
                .payload_bytes
                .unwrap_or(if s == Scenario::Slow { 1024 } else { 0 }),
            after,
            sources: args.sources,
            recover: args.recover || s == Scenario::RecoverStorm,
            missed: args.missed,
            probe_rate: args.probe_rate,
            idle: args.idle,
        })
    }
}

/// The herald builds and configurations of a run: the base one first.
async fn herald_specs(
    args: &RunArgs,
    creds: Option<&Credentials>,
) -> anyhow::Result<(Vec<HeraldSpec>, Option<&'static str>)> {
    let (default_bin, default_args) = crate::invocation().herald;
    let (bin, herald_args) = match args.herald.clone() {
        Some(b) => (b, vec!["standalone".to_string()]),
        None => (default_bin, default_args),
    };
    // recover-storm needs history for every herald; elsewhere `--history` adds
    // the same herald with history on.
    let storm_history = if args.scenario == Scenario::RecoverStorm {
        servers::history_env(args.history.unwrap_or(100))
    } else {
        Vec::new()
    };
    let mut specs = vec![HeraldSpec {
        name: args.label.clone(),
        bin: bin.clone(),
        args: herald_args.clone(),
        secure: None,
        env: storm_history.clone(),
    }];
    let mut auth = None;
    if let Some(creds) = creds {
        let jwt = match args.secure_auth {
            SecureAuth::Jwt => true,
            SecureAuth::Trust => false,
            SecureAuth::Auto => {
                let known = servers::supports_jwt(&bin, &creds.jwt_secret).await;
                if !known {
                    eprintln!(
                        "{} has no jwt auth mode: the secure herald runs TLS only (trust mode)",
                        bin.display()
                    );
                }
                known
            }
        };
        auth = Some(if jwt { "jwt" } else { "trust" });
        specs.push(HeraldSpec {
            name: SECURE.into(),
            bin: bin.clone(),
            args: herald_args.clone(),
            secure: Some(Secure {
                creds: creds.clone(),
                jwt,
            }),
            env: storm_history.clone(),
        });
    }
    if let (Some(size), false) = (args.history, args.scenario == Scenario::RecoverStorm) {
        specs.push(HeraldSpec {
            name: HISTORY.into(),
            bin: bin.clone(),
            args: herald_args.clone(),
            secure: None,
            env: servers::history_env(size),
        });
    }
    for v in &args.variants {
        let (name, path) = v
            .split_once('=')
            .context("--variant is NAME=PATH (a herald binary)")?;
        if name.is_empty() || specs.iter().any(|s| s.name == name) {
            bail!("--variant {v}: the name must be new and not empty");
        }
        specs.push(HeraldSpec {
            name: name.into(),
            bin: PathBuf::from(path),
            args: vec!["standalone".into()],
            secure: None,
            env: storm_history.clone(),
        });
    }
    // History set through variables must reach the configuration: a misspelt or
    // unknown name would measure herald without it.
    let size = args.history.unwrap_or(100);
    for spec in specs.iter().filter(|s| !s.env.is_empty()) {
        servers::check_history(&spec.bin, &spec.env, size)
            .await
            .with_context(|| format!("{}: history settings", spec.name))?;
    }
    Ok((specs, auth))
}

/// Runs a scenario and writes its reports.
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let plan = Plan::new(&args)?;
    let window_ms = args
        .window_ms
        .unwrap_or(args.scenario.default_window_ms(plan.rate));
    let peers: Vec<String> = args
        .peers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "none")
        .collect();
    // A peer that cannot start is known before any measurement: say so now.
    let herald_only = args.scenario.herald_only();
    if !herald_only && peers.iter().any(|p| p == "nats" || p == "nats-server") {
        servers::peer_binary(servers::NATS, args.nats_server.as_deref())?;
    }
    if !herald_only && peers.iter().any(|p| p == "mosquitto") {
        servers::peer_binary(servers::MOSQUITTO, args.mosquitto.as_deref())?;
    }
    let scenario = args.scenario.name();
    let started_unix = wire::now_ns() / 1_000_000_000;
    let tcp = args.transport == "tcp";
    let creds = if args.secure {
        let dir = std::env::temp_dir().join(format!("herald-bench-pki-{}", std::process::id()));
        Some(Credentials::create(&dir)?)
    } else {
        None
    };
    let result = run_all(&args, &plan, window_ms, &peers, tcp, creds.as_ref()).await;
    if let Some(c) = &creds {
        c.remove();
    }
    let (herald_m, variants, measured, auth) = result?;
    let mut report = Report {
        scenario: scenario.clone(),
        herald: herald_m,
        params: json!({
            "connections": plan.connections, "rate": plan.rate, "duration": plan.duration,
            "payload_bytes": plan.payload_bytes, "window_ms": window_ms, "batch": args.batch,
            "transport": args.transport, "sources": args.sources,
            "peers": if herald_only { Vec::new() } else { peers.clone() },
            "secure": args.secure, "secure_auth": auth, "variants": args.variants,
            "after_secs": (args.scenario == Scenario::Slow).then_some(args.after),
            "history": args.history, "recover": plan.recover,
            "missed": (args.scenario == Scenario::RecoverStorm).then_some(plan.missed),
            "probe_rate": (args.scenario == Scenario::Loaded).then_some(plan.probe_rate),
            "idle_secs": (args.scenario == Scenario::Loaded).then_some(plan.idle),
        }),
        machine: Machine::current(),
        variants,
        variant_ratios: BTreeMap::new(),
        security: None,
        peers: measured,
        ratios: BTreeMap::new(),
        targets: Vec::new(),
        started_unix,
    };
    report.compute_ratios();
    if let Some(auth) = auth {
        let transport = if tcp { "tcp+tls" } else { "wss" };
        report.security = targets::security_summary(&report, transport, auth);
    }
    report.targets = targets::evaluate(&report, window_ms);
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

type Measured = (
    Measurement,
    BTreeMap<String, Measurement>,
    BTreeMap<String, Measurement>,
    Option<&'static str>,
);

/// Every herald configuration, then every peer, one after another.
async fn run_all(
    args: &RunArgs,
    plan: &Plan,
    window_ms: u64,
    peers: &[String],
    tcp: bool,
    creds: Option<&Credentials>,
) -> anyhow::Result<Measured> {
    let batching = Batching {
        window_ms,
        batch: args.batch,
    };
    let (specs, auth) = herald_specs(args, creds).await?;
    let herald_only = plan.scenario.herald_only();
    if herald_only && !peers.is_empty() {
        eprintln!("{}", peers_skipped(plan.scenario, peers));
    }
    let mut base = None;
    let mut variants = BTreeMap::new();
    for spec in &specs {
        let server = servers::start_herald(spec, batching, tcp).await?;
        let m = run_one(plan, server).await?;
        if base.is_none() {
            base = Some(m);
        } else {
            variants.insert(spec.name.clone(), m);
        }
    }
    let base = base.context("no herald measured")?;
    let mut measured = BTreeMap::new();
    let floor = Batching {
        window_ms,
        batch: if window_ms > 0 { args.batch } else { 1 },
    };
    // (peer as asked, floor certificate): with --secure the floor runs twice.
    let mut queue: Vec<(&str, Option<&Credentials>)> = Vec::new();
    for peer in peers.iter().filter(|_| !herald_only) {
        queue.push((peer, None));
        if peer == "floor" && creds.is_some() {
            queue.push((peer, creds));
        }
    }
    // One server at a time: each starts after the previous one stopped.
    for (peer, tls) in queue {
        let started = match peer {
            "nats" | "nats-server" => servers::start_nats(args.nats_server.as_deref()).await,
            "mosquitto" => servers::start_mosquitto(args.mosquitto.as_deref()).await,
            "floor" => servers::start_floor(floor, tls, Writer::Tasks).await,
            "floor-direct" => servers::start_floor(floor, tls, Writer::Direct).await,
            "floor-uring" => servers::start_floor(floor, tls, Writer::Uring).await,
            other => Err(anyhow::anyhow!(
                "unknown peer {other:?} (nats, mosquitto, floor, floor-direct, floor-uring)"
            )),
        };
        let server = match started {
            Ok(s) => s,
            Err(e) => {
                eprintln!("peer {peer} not measured: {e:#}");
                continue;
            }
        };
        let name = server.name.clone();
        match run_one(plan, server).await {
            Ok(m) => {
                measured.insert(name, m);
            }
            Err(e) => eprintln!("peer {name} failed: {e:#}"),
        }
    }
    Ok((base, variants, measured, auth))
}

/// What a herald-only scenario says when peers were asked for (`--peers`
/// defaults to `nats,mosquitto,floor`).
fn peers_skipped(scenario: Scenario, peers: &[String]) -> String {
    format!(
        "the {} scenario measures herald builds only (compare builds with --variant NAME=PATH); \
         peers skipped: {} (--peers none asks for none)",
        scenario.name(),
        peers.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))?;
        Plan::new(&cli.run)
    }

    #[test]
    fn loaded_defaults_are_the_fanout_load_for_twenty_seconds_with_probes() {
        let p = plan(&["loaded"]).unwrap();
        assert_eq!(p.scenario.name(), "loaded");
        assert_eq!(p.connections, 15_000);
        assert_eq!(p.rate, 5.0);
        assert_eq!(p.duration, 20.0);
        assert_eq!(p.probe_rate, 20.0);
        assert_eq!(p.idle, 5.0);
        assert_eq!(p.payload_bytes, 0);
        let p = plan(&["loaded", "-n", "10000", "--rate", "40", "--duration", "8"]).unwrap();
        assert_eq!((p.connections, p.rate, p.duration), (10_000, 40.0, 8.0));
        // Other scenarios keep their defaults.
        let f = plan(&["fanout"]).unwrap();
        assert_eq!((f.connections, f.rate, f.duration), (15_000, 5.0, 10.0));
    }

    #[test]
    fn loaded_refuses_unusable_probe_rates_idle_times_and_durations() {
        for bad in [
            &["loaded", "--probe-rate", "0"][..],
            &["loaded", "--probe-rate=-3"],
            &["loaded", "--probe-rate", "NaN"],
            &["loaded", "--idle=-1"],
            &["loaded", "--idle", "inf"],
            &["loaded", "--duration", "0"],
            &["loaded", "--rate", "0"],
        ] {
            let err = format!("{:#}", plan(bad).err().unwrap_or_else(|| panic!("{bad:?}")));
            assert!(
                err.contains("must be") || err.contains("is a number"),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(plan(&["loaded", "--idle", "0"]).unwrap().idle, 0.0);
    }

    #[test]
    fn loaded_is_herald_only_and_takes_goims_window_at_forty_pushes() {
        assert!(Scenario::Loaded.herald_only());
        assert!(Scenario::Slow.herald_only() && Scenario::RecoverStorm.herald_only());
        assert!(!Scenario::Fanout.herald_only() && !Scenario::Latency.herald_only());
        assert_eq!(Scenario::Loaded.default_window_ms(5.0), 0);
        assert_eq!(Scenario::Loaded.default_window_ms(40.0), 500);
        assert_eq!(Scenario::Fanout.default_window_ms(40.0), 500);
        assert_eq!(Scenario::Latency.default_window_ms(40.0), 0);
        let msg = peers_skipped(Scenario::Loaded, &["nats".into(), "floor".into()]);
        assert!(
            msg.contains("loaded scenario measures herald builds only"),
            "{msg}"
        );
        assert!(
            msg.contains("nats, floor") && msg.contains("--variant"),
            "{msg}"
        );
    }
}
