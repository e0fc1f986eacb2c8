//! Scenario results: the JSON report, the Markdown summary and its SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

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

/// What was measured for one system in one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measurement {
    /// `herald`, `nats-server` or `floor`.
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
    /// Time to connect and authenticate every client, seconds.
    pub connect_secs: Option<f64>,
    /// Connections per second while connecting.
    pub connect_rate_per_sec: Option<f64>,
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
    /// The same workload on the peers, measured in the same run.
    pub peers: BTreeMap<String, Measurement>,
    /// herald ÷ peer for each comparable figure.
    pub ratios: BTreeMap<String, BTreeMap<String, f64>>,
    pub targets: Vec<TargetResult>,
    /// Unix time of the run.
    pub started_unix: u64,
}

impl Report {
    /// Computes `ratios` from herald's and the peers' measurements.
    pub fn compute_ratios(&mut self) {
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
            .chain(self.peers.values())
            .collect()
    }

    fn markdown_tables(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or("–".to_string(), |v| format!("{v:.digits$}"))
        };
        let _ = writeln!(s, "| system | connections | RSS/conn (B) | kernel TCP mem/conn (B) | connect (s) | CPU ns/delivery | deliveries/s | p50 ms | p99 ms | p99.9 ms | lost |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for m in self.systems() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {} |",
                m.system,
                m.connections,
                opt(m.rss_per_conn_bytes, 0),
                opt(m.kernel_tcp_mem_per_conn_bytes, 0),
                opt(m.connect_secs, 2),
                opt(m.server_cpu_ns_per_delivery, 0),
                opt(m.deliveries_per_sec, 0),
                m.latency_ms.p50,
                m.latency_ms.p99,
                m.latency_ms.p999,
                m.lost
            );
        }
        if let Some(k) = &self.herald.key_latency_ms {
            let _ = writeln!(s, "\nKey push latency (herald): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms over {} samples.", k.p50, k.p99, k.p999, k.samples);
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
        if !with_latency.is_empty() {
            let name = format!("{stem}-latency.svg");
            std::fs::write(dir.join(&name), latency_svg(&with_latency))?;
            let _ = writeln!(md, "\n![latency distribution]({name})\n");
        }
        let with_timeline: Vec<&Measurement> = self
            .systems()
            .into_iter()
            .filter(|m| m.timeline.len() > 1)
            .collect();
        if !with_timeline.is_empty() {
            let name = format!("{stem}-deliveries.svg");
            std::fs::write(dir.join(&name), timeline_svg(&with_timeline))?;
            let _ = writeln!(md, "![deliveries over time]({name})\n");
        }
        std::fs::write(path, md)?;
        Ok(())
    }
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Appends a line through `points`, given as fractions (0..=1) of the plot area.
fn polyline(body: &mut String, series: usize, points: impl Iterator<Item = (f64, f64)>) {
    let mut pts = String::new();
    for (fx, fy) in points {
        let x = PAD + fx * (W - 20.0 - PAD);
        let y = H - PAD - fy * (H - PAD - 30.0);
        let _ = write!(pts, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        body,
        "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{pts}\"/>",
        COLORS[series % 4]
    );
}
const W: f64 = 720.0;
const H: f64 = 360.0;
const PAD: f64 = 56.0;

fn svg_frame(title: &str, x_label: &str, y_label: &str, body: &str, legend: &[&str]) -> String {
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n",
        W / 2.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        H - PAD,
        W - 20.0,
        H - PAD
    );
    let _ = writeln!(
        s,
        "<line x1=\"{PAD}\" y1=\"30\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>",
        H - PAD
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>",
        W / 2.0,
        H - 14.0
    );
    let _ = writeln!(s, "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{y_label}</text>", H / 2.0, H / 2.0);
    s.push_str(body);
    for (i, name) in legend.iter().enumerate() {
        let y = 40.0 + i as f64 * 16.0;
        let _ = writeln!(s, "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{name}</text>", W - 170.0, y - 9.0, COLORS[i % 4], W - 155.0, y);
    }
    s.push_str("</svg>\n");
    s
}

fn axis_ticks(
    s: &mut String,
    x_max: f64,
    y_max: f64,
    x_fmt: &dyn Fn(f64) -> String,
    y_fmt: &dyn Fn(f64) -> String,
) {
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let x = PAD + f * (W - 20.0 - PAD);
        let y = H - PAD - f * (H - PAD - 30.0);
        let _ = writeln!(
            s,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            H - PAD + 14.0,
            x_fmt(f * x_max)
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{}</text>",
            PAD - 4.0,
            y + 3.0,
            y_fmt(f * y_max)
        );
    }
}

/// Cumulative latency distribution (log-scaled x axis in ms).
fn latency_svg(systems: &[&Measurement]) -> String {
    let max_us = systems
        .iter()
        .map(|m| m.hist.max())
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let lx = |us: f64| (us.max(1.0)).log10() / max_us.log10();
    let mut body = String::new();
    for i in 0..=4 {
        let us = 10f64.powf(max_us.log10() * i as f64 / 4.0);
        let x = PAD + i as f64 / 4.0 * (W - 20.0 - PAD);
        let _ = writeln!(
            body,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{:.3}</text>",
            H - PAD + 14.0,
            us / 1000.0
        );
        let y = H - PAD - i as f64 / 4.0 * (H - PAD - 30.0);
        let _ = writeln!(
            body,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{}%</text>",
            PAD - 4.0,
            y + 3.0,
            i * 25
        );
    }
    for (i, m) in systems.iter().enumerate() {
        let total = m.hist.count().max(1) as f64;
        let mut seen = 0u64;
        let points = m.hist.buckets().into_iter().map(|(lb, c)| {
            seen += c;
            (lx(lb as f64), seen as f64 / total)
        });
        polyline(&mut body, i, points);
    }
    let names: Vec<&str> = systems.iter().map(|m| m.system.as_str()).collect();
    svg_frame(
        "Push-to-receive latency (cumulative)",
        "latency, ms (log scale)",
        "share of messages",
        &body,
        &names,
    )
}

/// Messages received over time.
fn timeline_svg(systems: &[&Measurement]) -> String {
    let t_max = systems
        .iter()
        .filter_map(|m| m.timeline.last().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = systems
        .iter()
        .filter_map(|m| m.timeline.last().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut body = String::new();
    axis_ticks(&mut body, t_max, y_max, &|v| format!("{v:.1}"), &|v| {
        format!("{v:.0}")
    });
    for (i, m) in systems.iter().enumerate() {
        let points = m
            .timeline
            .iter()
            .map(|(t, n)| (t / t_max, *n as f64 / y_max));
        polyline(&mut body, i, points);
    }
    let names: Vec<&str> = systems.iter().map(|m| m.system.as_str()).collect();
    svg_frame(
        "Deliveries over time",
        "seconds since the first push",
        "messages received",
        &body,
        &names,
    )
}
