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
        if !with_latency.is_empty() {
            let (title, x, y) = if storm {
                (
                    "Time from the reconnect to each client's recovery (cumulative)",
                    "ms since the clients were let back (log scale)",
                    "share of clients",
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

/// `v` ÷ `base` for every figure both have (rounded to 0.001).
fn figure_ratios(v: &Measurement, base: &Measurement) -> BTreeMap<String, f64> {
    let u = |x: Option<u64>| x.map(|x| x as f64);
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
    ];
    let mut r = BTreeMap::new();
    for (k, a, b) in pairs {
        if let (Some(a), Some(b)) = (a, b) {
            if b > 0.0 && a > 0.0 {
                r.insert(k.to_string(), (a / b * 1000.0).round() / 1000.0);
            }
        }
    }
    r
}
