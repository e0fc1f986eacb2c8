//! Scenario results: the JSON report, the Markdown summary and its SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::charts;
use crate::hist::Histogram;

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub samples: u64,
}

impl Latency {
    /// Quantiles of a microsecond histogram.
    pub fn from_hist(h: &Histogram) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.quantile(0.5)),
            p99: ms(h.quantile(0.99)),
            p999: ms(h.quantile(0.999)),
            max: ms(h.max()),
            samples: h.count(),
        }
    }
}

/// A reconnect storm of recovering clients (recover-storm): they left, missed
/// `missed` room pushes, and came back at once with their positions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryFigures {
    /// Clients that left and came back.
    pub clients: u64,
    /// Room pushes accepted while they were away (each client missed every one).
    pub missed: u64,
    /// From the order to come back until the last client had its op-25 frame,
    /// seconds (`None`: not every client was back in time).
    pub recover_secs: Option<f64>,
    /// Clients back with their op-25 frame, by the room stream's status.
    pub back: u64,
    pub recovered: u64,
    pub reload: u64,
    pub other_status: u64,
    /// Positioned pushes (op 24) the clients received after coming back.
    pub replayed: u64,
    /// clients × missed.
    pub expected: u64,
    /// expected − (replayed − duplicated).
    pub lost: i64,
    /// Replayed pushes at or below the client's last offset.
    pub duplicated: u64,
    /// Replayed pushes past the client's next offset.
    pub out_of_order: u64,
    /// Connection attempts that failed while coming back.
    pub failed_attempts: u64,
    /// Server CPU from the order to come back until every client was back.
    pub server_cpu_secs: f64,
    pub server_cpu_us_per_client: f64,
    /// The client workers' CPU over the same time, per client.
    pub client_cpu_us_per_client: f64,
    /// From the order to come back until each client's op-25 frame.
    pub time_to_recover_ms: Latency,
}

/// Lone pushes of one kind to the probe clients in one phase (loaded scenario).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeFigures {
    /// Pushes accepted.
    pub pushes: u64,
    /// Pushes refused.
    pub failed: u64,
    /// Messages the probe clients should have received (pushes × receivers).
    pub expected: u64,
    /// Messages they received.
    pub received: u64,
    /// expected − received.
    pub lost: i64,
    /// Push-to-receive latency.
    pub latency_ms: Latency,
    /// The latency histogram (µs buckets) for the charts.
    #[serde(skip)]
    pub hist: Histogram,
}

impl ProbeFigures {
    /// The figures of `(accepted, refused)` pushes, each meant for `receivers`
    /// clients, of which `received` arrived with latencies `hist`.
    pub fn new(pushes: (u64, u64), receivers: u64, received: u64, hist: Histogram) -> Self {
        let expected = pushes.0 * receivers;
        ProbeFigures {
            pushes: pushes.0,
            failed: pushes.1,
            expected,
            received,
            lost: expected as i64 - received as i64,
            latency_ms: Latency::from_hist(&hist),
            hist,
        }
    }
}

/// Both kinds of probe push in one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbePair {
    /// Key pushes (`/goim/push/keys`), each to one probe client.
    pub key: ProbeFigures,
    /// Room pushes (`/goim/push/room`) to the probe room.
    pub room: ProbeFigures,
}

/// The loaded scenario's probes: lone key and room pushes to a few clients
/// outside the bench room, first with no background pushes, then during them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadedFigures {
    /// Probe pushes per second, both kinds together.
    pub probe_rate: f64,
    /// Probe clients of each kind (key targets; members of the probe room).
    pub probe_clients: u64,
    /// The probe room.
    pub probe_room: String,
    /// Seconds of probe pushes before the background pushes started.
    pub idle_secs: f64,
    /// Probes with no background pushes (`None`: `--idle 0`).
    pub idle: Option<ProbePair>,
    /// Probes during the background pushes.
    pub loaded: ProbePair,
}

impl LoadedFigures {
    /// Probe messages lost in both phases.
    pub fn lost(&self) -> i64 {
        let pair = |p: &ProbePair| p.key.lost + p.room.lost;
        self.idle.as_ref().map_or(0, pair) + pair(&self.loaded)
    }
}

/// What was measured for one system in one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measurement {
    /// `herald` (or the run's label for it), a variant's name (`herald-secure`, …),
    /// `nats-server`, `floor` or `floor-secure`.
    pub system: String,
    /// Connections held during the measurement.
    pub connections: u64,
    /// Server RSS growth divided by connections.
    pub rss_per_conn_bytes: Option<f64>,
    /// Growth of kernel TCP buffer memory (`/proc/net/sockstat`, both ends of each
    /// loopback connection) per connection.
    pub kernel_tcp_mem_per_conn_bytes: Option<f64>,
    /// Growth of kernel slab memory (socket objects of both ends) per connection.
    pub kernel_slab_per_conn_bytes: Option<f64>,
    /// The client worker processes' RSS divided by connections (the load
    /// generator's own cost, to see that it is not the limit).
    pub client_rss_per_conn_bytes: Option<f64>,
    /// Server RSS before the clients connected (slow scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_base_bytes: Option<u64>,
    /// Highest server RSS sampled (every 100 ms) while pushing to slow readers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_peak_bytes: Option<u64>,
    /// Server RSS at the end of the wait after the slow readers disconnected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_bytes: Option<u64>,
    /// Slow scenario: seconds from the first push to the last push, and to all
    /// clients gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_phases: Option<(f64, f64)>,
    /// (seconds since the first push, server RSS bytes), slow scenario.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rss_timeline: Vec<(f64, u64)>,
    /// Time to connect and authenticate every client, seconds.
    pub connect_secs: Option<f64>,
    /// Connections per second while connecting.
    pub connect_rate_per_sec: Option<f64>,
    /// Server CPU while connecting, ÷ connections, microseconds.
    pub connect_server_cpu_us_per_conn: Option<f64>,
    /// Client processes' CPU from their start until all connected, ÷ connections,
    /// microseconds.
    pub connect_client_cpu_us_per_conn: Option<f64>,
    /// Server CPU (user + system) per delivered message, nanoseconds.
    pub server_cpu_ns_per_delivery: Option<f64>,
    /// Server CPU over the measurement, seconds.
    pub server_cpu_secs: Option<f64>,
    /// Messages the clients received.
    pub deliveries: u64,
    /// Messages the clients should have received.
    pub expected: u64,
    /// Deliveries per second over the measurement.
    pub deliveries_per_sec: Option<f64>,
    /// Push-to-receive latency.
    pub latency_ms: Latency,
    /// Latency of key pushes (latency scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_latency_ms: Option<Latency>,
    /// expected − deliveries.
    pub lost: i64,
    /// Clients asking for recovery: positioned pushes (op 24) among the
    /// deliveries; those at or below the client's last offset (repeats), and past
    /// its next offset (gaps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub positioned: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicated: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_order: Option<u64>,
    /// recover-storm figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryFigures>,
    /// loaded: the probes' figures (the other fields are the background's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<LoadedFigures>,
    /// Pushes accepted by the server.
    pub pushes: u64,
    /// Failed connection attempts plus refused pushes.
    pub failures: u64,
    /// (seconds since start, messages received so far).
    pub timeline: Vec<(f64, u64)>,
    /// Latency histogram (µs buckets) for the charts.
    #[serde(skip)]
    pub hist: Histogram,
}

/// One target and whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub name: String,
    pub value: Option<f64>,
    pub limit: f64,
    pub unit: String,
    pub met: bool,
    pub note: String,
}

/// Facts about the machine the run used.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_total_bytes: u64,
    pub open_files_limit: u64,
}

impl Machine {
    /// Reads the current machine.
    pub fn current() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let mem_total_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| {
                        l.split_whitespace()
                            .nth(1)
                            .and_then(|v| v.parse::<u64>().ok())
                    })
            })
            .unwrap_or(0)
            * 1024;
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            mem_total_bytes,
            open_files_limit: crate::clients::nofile_limit(),
        }
    }
}

/// Secure herald against plain herald in one run (`--secure`).
#[derive(Debug, Clone, Serialize)]
pub struct Security {
    /// The secure clients' transport: `wss` or `tcp+tls`.
    pub transport: String,
    /// The secure herald's auth mode: `jwt`, or `trust` where the server under
    /// test has no `jwt` mode yet.
    pub auth: String,
    /// Storm: time to connect every client, secure ÷ plain.
    pub connect_ratio: Option<f64>,
    /// Storm: server CPU per connect, secure ÷ plain.
    pub connect_server_cpu_ratio: Option<f64>,
    /// Fanout: server CPU per delivery, secure ÷ plain.
    pub cpu_per_delivery_ratio: Option<f64>,
    /// Idle: server RSS per connection, secure − plain (herald's TLS cost).
    pub tls_cost_per_conn_bytes: Option<f64>,
    /// Idle: the same on the floor (floor-secure − floor), when measured: what a
    /// TLS session costs a minimal server.
    pub floor_tls_cost_per_conn_bytes: Option<f64>,
    /// Idle: client RSS per connection, secure − plain.
    pub client_tls_cost_per_conn_bytes: Option<f64>,
}

/// A whole scenario run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// herald's measurement (the report's top-level fields).
    #[serde(flatten)]
    pub herald: Measurement,
    /// Scenario parameters.
    pub params: serde_json::Value,
    pub machine: Machine,
    /// Other herald configurations or builds measured in the same run (the secure
    /// one, other allocators), by name.
    pub variants: BTreeMap<String, Measurement>,
    /// variant ÷ herald for each comparable figure.
    pub variant_ratios: BTreeMap<String, BTreeMap<String, f64>>,
    /// Secure against plain, when the run had `--secure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<Security>,
    /// The same workload on the peers, measured in the same run.
    pub peers: BTreeMap<String, Measurement>,
    /// herald ÷ peer for each comparable figure.
    pub ratios: BTreeMap<String, BTreeMap<String, f64>>,
    pub targets: Vec<TargetResult>,
    /// Unix time of the run.
    pub started_unix: u64,
}

impl Report {
    /// Computes `ratios` (herald ÷ peer) and `variant_ratios` (variant ÷ herald).
    pub fn compute_ratios(&mut self) {
        for (name, v) in &self.variants {
            self.variant_ratios
                .insert(name.clone(), figure_ratios(v, &self.herald));
        }
        for (name, p) in &self.peers {
            let mut r = BTreeMap::new();
            let pairs = [
                (
                    "server_cpu_ns_per_delivery",
                    self.herald.server_cpu_ns_per_delivery,
                    p.server_cpu_ns_per_delivery,
                ),
                (
                    "rss_per_conn_bytes",
                    self.herald.rss_per_conn_bytes,
                    p.rss_per_conn_bytes,
                ),
                (
                    "deliveries_per_sec",
                    self.herald.deliveries_per_sec,
                    p.deliveries_per_sec,
                ),
                (
                    "latency_p99",
                    Some(self.herald.latency_ms.p99),
                    Some(p.latency_ms.p99),
                ),
            ];
            for (k, a, b) in pairs {
                if let (Some(a), Some(b)) = (a, b) {
                    if b > 0.0 && a > 0.0 {
                        r.insert(k.to_string(), (a / b * 1000.0).round() / 1000.0);
                    }
                }
            }
            self.ratios.insert(name.clone(), r);
        }
    }

    /// Prints the targets table to stdout.
    pub fn print(&self) {
        println!("\n{}", self.markdown_tables());
    }

    fn systems(&self) -> Vec<&Measurement> {
        std::iter::once(&self.herald)
            .chain(self.variants.values())
            .chain(self.peers.values())
            .collect()
    }

    fn markdown_tables(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or("–".to_string(), |v| format!("{v:.digits$}"))
        };
        let _ = writeln!(s, "| system | connections | RSS/conn (B) | kernel TCP mem/conn (B) | client RSS/conn (B) | connect (s) | CPU ns/delivery | deliveries/s | p50 ms | p99 ms | p99.9 ms | lost |");
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for m in self.systems() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {} |",
                m.system,
                m.connections,
                opt(m.rss_per_conn_bytes, 0),
                opt(m.kernel_tcp_mem_per_conn_bytes, 0),
                opt(m.client_rss_per_conn_bytes, 0),
                opt(m.connect_secs, 2),
                opt(m.server_cpu_ns_per_delivery, 0),
                opt(m.deliveries_per_sec, 0),
                m.latency_ms.p50,
                m.latency_ms.p99,
                m.latency_ms.p999,
                m.lost
            );
        }
        let slow: Vec<&Measurement> = self
            .systems()
            .into_iter()
            .filter(|m| m.rss_peak_bytes.is_some())
            .collect();
        if !slow.is_empty() {
            let mib = |v: Option<u64>| {
                v.map_or("–".to_string(), |b| {
                    format!("{:.1}", b as f64 / 1048576.0)
                })
            };
            let _ = writeln!(s, "\n| system | pushes | RSS before (MiB) | RSS peak (MiB) | RSS after (MiB) | after − before (MiB) |\n|---|---:|---:|---:|---:|---:|");
            for m in slow {
                let kept = m
                    .rss_after_bytes
                    .zip(m.rss_base_bytes)
                    .map(|(a, b)| a as i64 - b as i64);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} |",
                    m.system,
                    m.pushes,
                    mib(m.rss_base_bytes),
                    mib(m.rss_peak_bytes),
                    mib(m.rss_after_bytes),
                    kept.map_or("–".to_string(), |k| format!(
                        "{:.1}",
                        k as f64 / 1048576.0
                    ))
                );
            }
        }
        if self.scenario == "storm" {
            let _ = writeln!(s, "\n| system | connect (s) | connections/s | server CPU per connect (µs) | client CPU per connect (µs) | failed attempts |\n|---|---:|---:|---:|---:|---:|");
            for m in self.systems() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} |",
                    m.system,
                    opt(m.connect_secs, 2),
                    opt(m.connect_rate_per_sec, 0),
                    opt(m.connect_server_cpu_us_per_conn, 1),
                    opt(m.connect_client_cpu_us_per_conn, 1),
                    m.failures
                );
            }
        }
        let positioned: Vec<&Measurement> = self
            .systems()
            .into_iter()
            .filter(|m| m.duplicated.is_some() && m.recovery.is_none())
            .collect();
        if !positioned.is_empty() {
            let _ = writeln!(s, "\nClients asked for recovery; positioned pushes (op 24) are counted as deliveries.\n\n| system | deliveries | positioned (op 24) | repeated (at or below the last offset) | out of order (past the next offset) |\n|---|---:|---:|---:|---:|");
            for m in positioned {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    m.system,
                    m.deliveries,
                    m.positioned.unwrap_or(0),
                    m.duplicated.unwrap_or(0),
                    m.out_of_order.unwrap_or(0)
                );
            }
        }
        let storms: Vec<(&str, &RecoveryFigures)> = self
            .systems()
            .into_iter()
            .filter_map(|m| m.recovery.as_ref().map(|r| (m.system.as_str(), r)))
            .collect();
        if !storms.is_empty() {
            let _ = writeln!(s, "\n| system | clients back, each missed | time until all recovered (s) | per client p50 / p99 / max (ms) | server CPU (s) | server CPU per client (µs) | client CPU per client (µs) | replayed | lost | repeated | out of order | recovered / reload / other | failed attempts |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
            for (name, r) in storms {
                let t = &r.time_to_recover_ms;
                let _ = writeln!(
                    s,
                    "| {name} | {} of {}, {} | {} | {:.0} / {:.0} / {:.0} | {:.2} | {:.1} | {:.1} | {} | {} | {} | {} | {} / {} / {} | {} |",
                    r.back,
                    r.clients,
                    r.missed,
                    opt(r.recover_secs, 2),
                    t.p50,
                    t.p99,
                    t.max,
                    r.server_cpu_secs,
                    r.server_cpu_us_per_client,
                    r.client_cpu_us_per_client,
                    r.replayed,
                    r.lost,
                    r.duplicated,
                    r.out_of_order,
                    r.recovered,
                    r.reload,
                    r.other_status,
                    r.failed_attempts
                );
            }
        }
        s.push_str(&self.loaded_tables());
        if let Some(k) = &self.herald.key_latency_ms {
            let _ = writeln!(s, "\nKey push latency (herald): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms over {} samples.", k.p50, k.p99, k.p999, k.samples);
        }
        if let Some(sec) = &self.security {
            let _ = writeln!(
                s,
                "\n| secure ({} + {} auth) against plain | value |\n|---|---:|",
                sec.transport, sec.auth
            );
            let rows = [
                (
                    "time to connect every client, secure ÷ plain",
                    sec.connect_ratio,
                    "×",
                ),
                (
                    "server CPU per connect, secure ÷ plain",
                    sec.connect_server_cpu_ratio,
                    "×",
                ),
                (
                    "server CPU per delivery, secure ÷ plain",
                    sec.cpu_per_delivery_ratio,
                    "×",
                ),
                (
                    "TLS cost per idle connection in herald (RSS, secure − plain)",
                    sec.tls_cost_per_conn_bytes,
                    "B",
                ),
                (
                    "TLS session cost on the floor (RSS, floor-secure − floor)",
                    sec.floor_tls_cost_per_conn_bytes,
                    "B",
                ),
                (
                    "TLS cost per client connection (client RSS, secure − plain)",
                    sec.client_tls_cost_per_conn_bytes,
                    "B",
                ),
            ];
            for (name, v, unit) in rows {
                if let Some(v) = v {
                    let _ = writeln!(s, "| {name} | {v:.3} {unit} |");
                }
            }
        }
        if !self.variant_ratios.is_empty() {
            let _ = writeln!(
                s,
                "\n| ratio (variant ÷ {}) | value |\n|---|---:|",
                self.herald.system
            );
            for (v, r) in &self.variant_ratios {
                for (k, x) in r {
                    let _ = writeln!(s, "| {k}, {v} | {x:.3} |");
                }
            }
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(s, "\n| ratio (herald ÷ peer) | value |\n|---|---:|");
            for (peer, r) in &self.ratios {
                for (k, v) in r {
                    let _ = writeln!(s, "| {k} vs {peer} | {v:.3} |");
                }
            }
        }
        let _ = writeln!(
            s,
            "\n| target | value | limit | result |\n|---|---:|---:|---|"
        );
        for t in &self.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} {} | {}{} |",
                t.name,
                t.value.map_or("–".into(), |v| format!("{v:.3}")),
                t.limit,
                t.unit,
                if t.met { "met" } else { "NOT MET" },
                if t.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", t.note)
                }
            );
        }
        s
    }

    /// loaded: probe latency idle against loaded per configuration and kind, and
    /// the background fan-out (deliveries/s against the base herald's).
    fn loaded_tables(&self) -> String {
        let mut s = String::new();
        let with: Vec<(&Measurement, &LoadedFigures)> = self
            .systems()
            .into_iter()
            .filter_map(|m| m.probes.as_ref().map(|p| (m, p)))
            .collect();
        let Some((_, first)) = with.first() else {
            return s;
        };
        let _ = writeln!(
            s,
            "\nProbes: lone pushes at {}/s in all, alternating a key push to one of {} clients and a room push to `{}` ({} clients), none of them in the bench room; idle: the {:.0} s before the background room pushes, loaded: during them.\n",
            first.probe_rate, first.probe_clients, first.probe_room, first.probe_clients, first.idle_secs
        );
        let _ = writeln!(s, "| system | probe push | idle p50 ms | idle p99 ms | idle p99.9 ms | loaded p50 ms | loaded p99 ms | loaded p99.9 ms | loaded max ms | loaded ÷ idle p99 | samples idle / loaded | lost idle / loaded |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (m, p) in &with {
            let idle = p.idle.as_ref();
            for (kind, l, i) in [
                ("key", &p.loaded.key, idle.map(|i| &i.key)),
                ("room", &p.loaded.room, idle.map(|i| &i.room)),
            ] {
                let q = |f: fn(&Latency) -> f64| {
                    i.filter(|i| i.latency_ms.samples > 0)
                        .map_or("–".to_string(), |i| format!("{:.3}", f(&i.latency_ms)))
                };
                let slower = i
                    .filter(|i| i.latency_ms.samples > 0 && l.latency_ms.samples > 0)
                    .and_then(|i| ratio_of(l.latency_ms.p99, i.latency_ms.p99));
                let _ = writeln!(
                    s,
                    "| {} | {kind} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} / {} | {} / {} |",
                    m.system,
                    q(|l| l.p50),
                    q(|l| l.p99),
                    q(|l| l.p999),
                    l.latency_ms.p50,
                    l.latency_ms.p99,
                    l.latency_ms.p999,
                    l.latency_ms.max,
                    slower.map_or("–".to_string(), |r| format!("{r:.1} ×")),
                    i.map_or("–".to_string(), |i| i.latency_ms.samples.to_string()),
                    l.latency_ms.samples,
                    i.map_or("–".to_string(), |i| i.lost.to_string()),
                    l.lost
                );
            }
        }
        let base = self.herald.deliveries_per_sec;
        let _ = writeln!(s, "\n| system | background deliveries/s | ÷ {} | server CPU per delivery (ns) | background p50 / p99 ms | background lost |\n|---|---:|---:|---:|---:|---:|", self.herald.system);
        for (m, _) in &with {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} / {:.1} | {} |",
                m.system,
                m.deliveries_per_sec
                    .map_or("–".into(), |v| format!("{v:.0}")),
                m.deliveries_per_sec
                    .zip(base)
                    .and_then(|(v, b)| ratio_of(v, b))
                    .map_or("–".into(), |r| format!("{r:.3}")),
                m.server_cpu_ns_per_delivery
                    .map_or("–".into(), |v| format!("{v:.0}")),
                m.latency_ms.p50,
                m.latency_ms.p99,
                m.lost
            );
        }
        s
    }

    /// Writes the JSON report.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    /// Writes the Markdown summary and its SVG charts next to it.
    pub fn write_markdown(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("report");
        let mut md = format!("# herald bench: {}\n\n", self.scenario);
        let _ = writeln!(
            md,
            "Machine: {} CPUs ({}), kernel {}, {:.1} GiB RAM, open-file limit {}.\n\nParameters: `{}`\n",
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.kernel,
            self.machine.mem_total_bytes as f64 / (1u64 << 30) as f64,
            self.machine.open_files_limit,
            self.params
        );
        md.push_str(&self.markdown_tables());
        let with_latency: Vec<&Measurement> = self
            .systems()
            .into_iter()
            .filter(|m| m.hist.count() > 0)
            .collect();
        let storm = self.scenario == "recover-storm";
        let probes: Vec<(String, &Histogram)> = self
            .systems()
            .into_iter()
            .filter_map(|m| Some((m.system.as_str(), m.probes.as_ref()?)))
            .flat_map(|(name, p)| {
                [
                    (format!("{name} key"), &p.loaded.key.hist),
                    (format!("{name} room"), &p.loaded.room.hist),
                ]
            })
            .filter(|(_, h)| h.count() > 0)
            .collect();
        if !probes.is_empty() {
            let title = "Probe push latency under load (cumulative)";
            let name = format!("{stem}-probe-latency.svg");
            let series: Vec<(&str, &Histogram)> =
                probes.iter().map(|(n, h)| (n.as_str(), *h)).collect();
            std::fs::write(
                dir.join(&name),
                charts::latency_series_svg(
                    &series,
                    title,
                    "latency, ms (log scale)",
                    "share of probe messages",
                ),
            )?;
            let _ = writeln!(md, "\n![{title}]({name})");
        }
        if !with_latency.is_empty() {
            let (title, x, y) = if storm {
                (
                    "Time from the reconnect to each client's recovery (cumulative)",
                    "ms since the clients were let back (log scale)",
                    "share of clients",
                )
            } else if !probes.is_empty() {
                (
                    "Background room pushes: push-to-receive latency (cumulative)",
                    "latency, ms (log scale)",
                    "share of messages",
                )
            } else {
                (
                    "Push-to-receive latency (cumulative)",
                    "latency, ms (log scale)",
                    "share of messages",
                )
            };
            let name = format!("{stem}-latency.svg");
            std::fs::write(
                dir.join(&name),
                charts::latency_svg(&with_latency, title, x, y),
            )?;
            let _ = writeln!(md, "\n![{title}]({name})\n");
        }
        let with_timeline: Vec<&Measurement> = self
            .systems()
            .into_iter()
            .filter(|m| m.timeline.len() > 1)
            .collect();
        if !with_timeline.is_empty() {
            let (title, x, y) = if storm {
                (
                    "Clients back with their stream states over time",
                    "seconds since the clients were let back",
                    "clients back",
                )
            } else {
                (
                    "Deliveries over time",
                    "seconds since the first push",
                    "messages received",
                )
            };
            let name = format!("{stem}-deliveries.svg");
            std::fs::write(
                dir.join(&name),
                charts::timeline_svg(&with_timeline, title, x, y),
            )?;
            let _ = writeln!(md, "![{title}]({name})\n");
        }
        // Per-connection and per-delivery figures against the peers.
        let bars = |f: fn(&Measurement) -> Option<f64>| -> Vec<(&str, f64)> {
            self.systems()
                .into_iter()
                .filter_map(|m| Some((m.system.as_str(), f(m)?)))
                .collect()
        };
        let figures = [
            (
                "memory",
                "Server memory (RSS) per idle connection",
                "B",
                bars(|m| m.rss_per_conn_bytes),
            ),
            (
                "cpu",
                "Server CPU per delivery",
                "ns",
                bars(|m| m.server_cpu_ns_per_delivery),
            ),
        ];
        for (suffix, title, unit, values) in figures {
            if values.len() > 1 {
                let name = format!("{stem}-{suffix}.svg");
                std::fs::write(dir.join(&name), charts::bars_svg(title, unit, &values))?;
                let _ = writeln!(md, "![{title}]({name})\n");
            }
        }
        let with_rss: Vec<&Measurement> = self
            .systems()
            .into_iter()
            .filter(|m| m.rss_timeline.len() > 1)
            .collect();
        if !with_rss.is_empty() {
            let name = format!("{stem}-rss.svg");
            std::fs::write(dir.join(&name), charts::rss_svg(&with_rss))?;
            let _ = writeln!(md, "![server RSS over time]({name})\n");
        }
        std::fs::write(path, md)?;
        Ok(())
    }
}

/// `a` ÷ `b` rounded to 0.001, when both are positive.
fn ratio_of(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| (a / b * 1000.0).round() / 1000.0)
}

/// `v` ÷ `base` for every figure both have (rounded to 0.001).
fn figure_ratios(v: &Measurement, base: &Measurement) -> BTreeMap<String, f64> {
    let u = |x: Option<u64>| x.map(|x| x as f64);
    // loaded: the probes' p99 under load, per kind.
    let probe = |m: &Measurement, key: bool| {
        let l = m.probes.as_ref().map(|p| {
            if key {
                &p.loaded.key.latency_ms
            } else {
                &p.loaded.room.latency_ms
            }
        })?;
        (l.samples > 0).then_some(l.p99)
    };
    let pairs = [
        (
            "server_cpu_ns_per_delivery",
            v.server_cpu_ns_per_delivery,
            base.server_cpu_ns_per_delivery,
        ),
        (
            "rss_per_conn_bytes",
            v.rss_per_conn_bytes,
            base.rss_per_conn_bytes,
        ),
        (
            "client_rss_per_conn_bytes",
            v.client_rss_per_conn_bytes,
            base.client_rss_per_conn_bytes,
        ),
        ("connect_secs", v.connect_secs, base.connect_secs),
        (
            "connect_server_cpu_us_per_conn",
            v.connect_server_cpu_us_per_conn,
            base.connect_server_cpu_us_per_conn,
        ),
        (
            "connect_client_cpu_us_per_conn",
            v.connect_client_cpu_us_per_conn,
            base.connect_client_cpu_us_per_conn,
        ),
        (
            "deliveries_per_sec",
            v.deliveries_per_sec,
            base.deliveries_per_sec,
        ),
        (
            "latency_p99",
            (v.latency_ms.samples > 0).then_some(v.latency_ms.p99),
            (base.latency_ms.samples > 0).then_some(base.latency_ms.p99),
        ),
        (
            "rss_peak_bytes",
            u(v.rss_peak_bytes),
            u(base.rss_peak_bytes),
        ),
        (
            "rss_after_bytes",
            u(v.rss_after_bytes),
            u(base.rss_after_bytes),
        ),
        (
            "recover_secs",
            v.recovery.as_ref().and_then(|r| r.recover_secs),
            base.recovery.as_ref().and_then(|r| r.recover_secs),
        ),
        (
            "recover_server_cpu_us_per_client",
            v.recovery.as_ref().map(|r| r.server_cpu_us_per_client),
            base.recovery.as_ref().map(|r| r.server_cpu_us_per_client),
        ),
        ("probe_key_p99_loaded", probe(v, true), probe(base, true)),
        ("probe_room_p99_loaded", probe(v, false), probe(base, false)),
    ];
    let mut r = BTreeMap::new();
    for (k, a, b) in pairs {
        if let Some(x) = a.zip(b).and_then(|(a, b)| ratio_of(a, b)) {
            r.insert(k.to_string(), x);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values_us: &[u64]) -> Histogram {
        let mut h = Histogram::default();
        for v in values_us {
            h.record(*v);
        }
        h
    }

    /// A loaded measurement: probes at `idle_us` then `loaded_us`, background at
    /// `per_sec` deliveries/s.
    fn loaded(system: &str, idle_us: u64, loaded_us: u64, per_sec: f64) -> Measurement {
        let pair = |us: u64| ProbePair {
            key: ProbeFigures::new((100, 0), 1, 100, hist(&vec![us; 100])),
            room: ProbeFigures::new((100, 0), 2, 199, hist(&vec![us * 2; 199])),
        };
        Measurement {
            system: system.into(),
            deliveries_per_sec: Some(per_sec),
            server_cpu_ns_per_delivery: Some(7000.0),
            probes: Some(LoadedFigures {
                probe_rate: 20.0,
                probe_clients: 2,
                probe_room: "bench://probe".into(),
                idle_secs: 5.0,
                idle: Some(pair(idle_us)),
                loaded: pair(loaded_us),
            }),
            ..Default::default()
        }
    }

    fn report(base: Measurement, variants: Vec<Measurement>) -> Report {
        let mut r = Report {
            scenario: "loaded".into(),
            herald: base,
            params: serde_json::Value::Null,
            machine: Machine::current(),
            variants: variants
                .into_iter()
                .map(|m| (m.system.clone(), m))
                .collect(),
            variant_ratios: BTreeMap::new(),
            security: None,
            peers: BTreeMap::new(),
            ratios: BTreeMap::new(),
            targets: Vec::new(),
            started_unix: 0,
        };
        r.compute_ratios();
        r
    }

    #[test]
    fn the_markdown_embeds_memory_against_the_peers() {
        let idle = |system: &str, rss: f64| Measurement {
            system: system.into(),
            rss_per_conn_bytes: Some(rss),
            ..Default::default()
        };
        let mut r = report(idle("herald", 2679.0), Vec::new());
        r.scenario = "idle".into();
        r.peers
            .insert("nats-server".into(), idle("nats-server", 24461.0));
        let dir = std::env::temp_dir().join(format!("herald-bench-md-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let md = dir.join("idle.md");
        r.write_markdown(&md).unwrap();
        let text = std::fs::read_to_string(&md).unwrap();
        let svg = std::fs::read_to_string(dir.join("idle-memory.svg"));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(text.contains("](idle-memory.svg)"), "{text}");
        let svg = svg.expect("the chart is written next to the report");
        assert!(svg.contains("2,679 B") && svg.contains("24,461 B"), "{svg}");
        // No CPU figures in an idle run: no CPU chart.
        assert!(!text.contains("idle-cpu.svg"), "{text}");
    }

    #[test]
    fn probe_figures_count_what_was_lost_and_take_quantiles() {
        let f = ProbeFigures::new((50, 1), 2, 97, hist(&[1000, 2000, 3000, 100_000]));
        assert_eq!(
            (f.pushes, f.failed, f.expected, f.received),
            (50, 1, 100, 97)
        );
        assert_eq!(f.lost, 3);
        assert_eq!(f.latency_ms.samples, 4);
        assert!(
            (1.9..=2.0).contains(&f.latency_ms.p50),
            "{:?}",
            f.latency_ms
        );
        assert!(f.latency_ms.p99 > 98.0 && f.latency_ms.max == 100.0);
        let lf = loaded("herald", 1000, 1000, 1.0).probes.unwrap();
        // The room probes got 199 of 200 in each phase.
        assert_eq!(lf.lost(), 2);
    }

    #[test]
    fn variants_get_ratios_of_background_deliveries_and_probe_p99() {
        let r = report(
            loaded("herald", 1000, 100_000, 50_000.0),
            vec![loaded("fixed", 1000, 2000, 45_000.0)],
        );
        let v = &r.variant_ratios["fixed"];
        assert_eq!(v["deliveries_per_sec"], 0.9);
        assert_eq!(v["probe_key_p99_loaded"], 0.02);
        assert_eq!(v["probe_room_p99_loaded"], 0.02);
        // No probe samples: no ratio.
        let mut none = loaded("none", 1000, 2000, 1.0);
        none.probes.as_mut().unwrap().loaded.key = ProbeFigures::default();
        let r = report(loaded("herald", 1000, 2000, 1.0), vec![none]);
        assert!(!r.variant_ratios["none"].contains_key("probe_key_p99_loaded"));
        assert!(r.variant_ratios["none"].contains_key("probe_room_p99_loaded"));
    }

    #[test]
    fn loaded_tables_show_idle_against_loaded_per_configuration_and_kind() {
        let mut before = loaded("before", 1000, 100_000, 50_000.0);
        before.probes.as_mut().unwrap().idle = None;
        let r = report(loaded("herald", 1000, 2000, 40_000.0), vec![before]);
        let t = r.loaded_tables();
        assert!(t.contains("20/s in all"), "{t}");
        // herald: key 1 ms idle, 2 ms loaded (2 ×); room twice that.
        assert!(
            t.contains("| herald | key | 1.000 | 1.000 | 1.000 | 2.000 | 2.000 | 2.000 | 2.000 | 2.0 × | 100 / 100 | 0 / 0 |"),
            "{t}"
        );
        assert!(
            t.contains("| herald | room | 2.000 | 2.000 | 2.000 | 4.000 |"),
            "{t}"
        );
        // No idle phase: dashes.
        assert!(
            t.contains("| before | key | – | – | – | 99.328 | 99.328 | 99.328 | 100.000 | – |"),
            "{t}"
        );
        assert!(t.contains("| – | – / 100 | – / 0 |"), "{t}");
        // Background deliveries/s against the base herald.
        assert!(t.contains("| herald | 40000 | 1.000 | 7000 |"), "{t}");
        assert!(t.contains("| before | 50000 | 1.250 | 7000 |"), "{t}");
        // Other scenarios have no such tables.
        assert!(report(Measurement::default(), Vec::new())
            .loaded_tables()
            .is_empty());
    }
}
