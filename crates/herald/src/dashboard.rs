//! The live dashboard of `herald logic` and `herald standalone`: a page under
//! `/_/dashboard` (static, embedded, public like the demo page) and the data it
//! draws, behind the `admin` scope:
//!
//! - `GET /_/dashboard/snapshot` — the current [snapshot](Sampler) as JSON;
//! - `GET /_/dashboard/events` — server-sent events, one `snapshot` event a
//!   second. A stream ends before `limits.http.request_timeout` (which bounds
//!   every request) and the page opens the next one.
//!
//! A snapshot is read from two places. This process's own metrics (the
//! Prometheus text `/metrics` renders, read once a second while someone watches):
//! pushes, deliveries, drops, latency percentiles over the last ten seconds,
//! queue depth and lag, write queues — for the tiers this process runs. And the
//! registry, which every process of the cluster registers in: the comets (their
//! connections, health and the running totals each reports at its online
//! reports), logics and jobs; the top rooms are logic's cluster-wide online
//! counts. So in a cluster, a logic's dashboard shows its own pushes and the
//! comets' deliveries as they report them; Prometheus with the Grafana dashboard
//! in `deploy/grafana/` shows every process's series.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream;
use herald_discovery::{Instance, Instances, Registry, COMET_APPID, LOGIC_APPID};
use herald_logic::Logic;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a snapshot is taken while someone watches.
const PERIOD: Duration = Duration::from_secs(1);
/// Samples kept: rates are over the last [`RATE_SPAN`] of them, percentiles
/// over all of them (ten seconds).
const KEPT: usize = 11;
const RATE_SPAN: usize = 3;
/// How long the sampler goes on after the last viewer left (a script polling
/// the snapshot every few seconds keeps its rates).
const LINGER: Duration = Duration::from_secs(30);
/// Event streams and snapshot requests served at once; more are answered 503
/// at once, so that open dashboards never take the HTTP connections (and a
/// client address's share of them) the push API needs.
const MAX_VIEWERS: usize = 32;
/// Rooms listed.
const TOP_ROOMS: usize = 10;

/// The dashboard's pages (public) and data (to be put behind the `admin`
/// scope by the caller).
pub struct Routes {
    /// The page and its assets.
    pub page: Router,
    /// The snapshot and the event stream.
    pub data: Router,
}

/// What the dashboard needs from the process it runs in.
pub struct Sources {
    /// This process's metrics.
    pub metrics: PrometheusHandle,
    /// Refreshes read-on-scrape gauges (queue depth, write queues).
    pub before_scrape: Arc<dyn Fn() + Send + Sync>,
    /// The logic tier of this process (top rooms).
    pub logic: Arc<Logic>,
    /// The registry every process of the deployment registers in.
    pub registry: Arc<dyn Registry>,
    /// `standalone` or `logic`.
    pub role: &'static str,
    /// This process's server id.
    pub server_id: String,
    /// `limits.http.request_timeout`: an event stream ends before it.
    pub request_timeout: Duration,
}

/// Starts the sampler — a task on `tasks`, ended by `stop` — and returns the
/// routes serving what it sees.
pub async fn start(
    sources: Sources,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Routes> {
    let nodes = NodeWatch {
        comets: sources.registry.watch(COMET_APPID).await?,
        logics: sources.registry.watch(LOGIC_APPID).await?,
        jobs: sources.registry.watch(herald_job::JOB_APPID).await?,
    };
    let stream_for = stream_length(sources.request_timeout);
    let (tx, rx) = watch::channel(Arc::new(json!(null)));
    let viewers = Arc::new(Viewers::default());
    let sampler = Sampler {
        sources,
        nodes,
        samples: VecDeque::with_capacity(KEPT),
        comet_rates: HashMap::new(),
    };
    tasks.spawn(sampler.run(tx, viewers.clone(), stop));
    let state = Shared {
        snapshots: rx,
        viewers,
        stream_for,
    };
    let data = Router::new()
        .route("/_/dashboard/snapshot", get(snapshot))
        .route("/_/dashboard/events", get(events))
        .with_state(state);
    let page = Router::new()
        .route("/_/dashboard", get(|| async { asset("index.html") }))
        .route("/_/dashboard/", get(|| async { asset("index.html") }))
        .route(
            "/_/dashboard/{file}",
            get(|Path(file): Path<String>| async move { asset(&file) }),
        );
    Ok(Routes { page, data })
}

/// (file name, content type, bytes) of the page's assets.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../../web/dashboard/index.html"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../web/dashboard/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../web/dashboard/dashboard.css"),
    ),
];

fn asset(name: &str) -> Response {
    crate::web::embedded(ASSETS, name)
}

/// How long one event stream lasts: well within the request timeout that
/// bounds every HTTP request (0 = none: five minutes).
fn stream_length(request_timeout: Duration) -> Duration {
    if request_timeout.is_zero() {
        Duration::from_secs(300)
    } else {
        request_timeout * 3 / 4
    }
}

#[derive(Clone)]
struct Shared {
    snapshots: watch::Receiver<Arc<Value>>,
    viewers: Arc<Viewers>,
    stream_for: Duration,
}

/// Requests waiting for snapshots: the sampler works only while there are some.
#[derive(Default)]
struct Viewers {
    count: AtomicUsize,
    arrived: Notify,
}

/// One viewer, counted while it lives.
struct Viewing(Arc<Viewers>);

impl Viewing {
    /// A new viewer, or `None` when [`MAX_VIEWERS`] are watching.
    fn new(viewers: &Arc<Viewers>) -> Option<Viewing> {
        let taken = viewers
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_VIEWERS).then_some(n + 1)
            });
        if taken.is_err() {
            return None;
        }
        viewers.arrived.notify_one();
        Some(Viewing(viewers.clone()))
    }
}

/// The answer to a viewer over [`MAX_VIEWERS`].
fn too_many_viewers() -> Response {
    unavailable(&format!(
        "{MAX_VIEWERS} dashboards are open on this server; try again later"
    ))
}

/// 503 in the API's envelope.
fn unavailable(message: &str) -> Response {
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"code": -503, "message": message})),
    )
        .into_response()
}

impl Drop for Viewing {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn snapshot(State(s): State<Shared>) -> Response {
    let Some(_viewing) = Viewing::new(&s.viewers) else {
        return too_many_viewers();
    };
    let mut rx = s.snapshots.clone();
    // The sampler runs while someone watches: this request is someone. After a
    // quiet period the first snapshot has no rates yet (one reading); the
    // second, a period later, has.
    let has_rates = |v: &Value| v["window_seconds"].as_f64().is_some_and(|w| w > 0.0);
    let stopped = matches!(
        tokio::time::timeout(PERIOD * 3, rx.wait_for(|v| has_rates(v))).await,
        Ok(Err(_))
    );
    let now = rx.borrow().clone();
    if now.is_null() || stopped {
        // Shutting down (the sampler stopped), or no reading within 3 s.
        return unavailable("no dashboard figures now; try again");
    }
    ([(header::CACHE_CONTROL, "no-store")], Json((*now).clone())).into_response()
}

async fn events(State(s): State<Shared>) -> Response {
    if s.snapshots.has_changed().is_err() {
        // The sampler stopped: the server is shutting down.
        return unavailable("the server is shutting down");
    }
    let Some(viewing) = Viewing::new(&s.viewers) else {
        return too_many_viewers();
    };
    let mut rx = s.snapshots.clone();
    rx.mark_changed();
    let end = tokio::time::Instant::now() + s.stream_for;
    let events = stream::unfold((rx, viewing), move |(mut rx, viewing)| async move {
        loop {
            match tokio::time::timeout_at(end, rx.changed()).await {
                Ok(Ok(())) => {}
                // The stream's time is up, or the sampler stopped (shutdown).
                _ => return None,
            }
            let snap = rx.borrow_and_update().clone();
            if snap.is_null() {
                continue;
            }
            let event: Result<Event, Infallible> =
                Ok(Event::default().event("snapshot").data(snap.to_string()));
            return Some((event, (rx, viewing)));
        }
    });
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
        .into_response()
}

struct NodeWatch {
    comets: watch::Receiver<Instances>,
    logics: watch::Receiver<Instances>,
    jobs: watch::Receiver<Instances>,
}

/// One reading of this process's metrics.
struct Sample {
    at: Instant,
    metrics: Metrics,
}

/// One report of a comet's running totals (its registry metadata).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Report {
    /// When the comet made it, Unix ms by its clock.
    at: i64,
    delivered: i64,
    dropped: i64,
}

/// A comet's last two reports, for its rates.
#[derive(Debug, Default, Clone)]
struct CometTotals {
    previous: Option<Report>,
    last: Option<Report>,
}

impl CometTotals {
    /// (delivered, dropped) per second between the last two reports; none before
    /// two were seen, or when the last is more than three report intervals old
    /// at `now_ms`.
    fn rates(&self, now_ms: i64) -> Option<(f64, f64)> {
        let (p, l) = (self.previous?, self.last?);
        let interval = l.at - p.at;
        if interval <= 0 || now_ms - l.at > 3 * interval {
            return None;
        }
        let per_sec = |a: i64, b: i64| (b - a).max(0) as f64 * 1000.0 / interval as f64;
        Some((
            per_sec(p.delivered, l.delivered),
            per_sec(p.dropped, l.dropped),
        ))
    }
}

/// Takes a snapshot every [`PERIOD`] while someone watches.
struct Sampler {
    sources: Sources,
    nodes: NodeWatch,
    samples: VecDeque<Sample>,
    comet_rates: HashMap<String, CometTotals>,
}

impl Sampler {
    async fn run(
        mut self,
        tx: watch::Sender<Arc<Value>>,
        viewers: Arc<Viewers>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_viewed = Instant::now();
        loop {
            if viewers.count.load(Ordering::Acquire) > 0 {
                last_viewed = Instant::now();
            } else if last_viewed.elapsed() >= LINGER {
                // Nobody watches: forget the readings (the next viewer must not
                // see rates over the gap) and wait for someone. (A wake-up left
                // from a viewer that came and went meanwhile is not one.)
                self.samples.clear();
                self.comet_rates.clear();
                tx.send_replace(Arc::new(json!(null)));
                while viewers.count.load(Ordering::Acquire) == 0 {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = viewers.arrived.notified() => {}
                    }
                }
                tick.reset_immediately();
                last_viewed = Instant::now();
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // A reading walks every connection (the write queues) and renders
            // every metric: off the runtime's worker threads.
            let taken = tokio::task::spawn_blocking(move || {
                let snap = self.take();
                (self, snap)
            })
            .await;
            let Ok((sampler, snap)) = taken else {
                return;
            };
            self = sampler;
            tx.send_replace(Arc::new(snap));
        }
    }

    fn take(&mut self) -> Value {
        (self.sources.before_scrape)();
        let now = Instant::now();
        let metrics = Metrics::parse(&self.sources.metrics.render());
        if self.samples.len() == KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample { at: now, metrics });
        let newest = self.samples.back().expect("just pushed");
        let rate_base = &self.samples[self.samples.len().saturating_sub(RATE_SPAN + 1)];
        let window_base = self.samples.front().expect("not empty");
        let rate = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
            let dt = newest.at.duration_since(rate_base.at).as_secs_f64();
            let now = newest.metrics.sum(name, labels)?;
            if dt <= 0.0 {
                return None;
            }
            let then = rate_base.metrics.sum(name, labels).unwrap_or(0.0);
            Some(((now - then) / dt).max(0.0))
        };
        let latency = |name: &str, label: &str, value: &str| -> Value {
            let labels = [(label, value)];
            let q = |p| {
                newest
                    .metrics
                    .quantile(&window_base.metrics, name, &labels, p)
            };
            match q(0.5) {
                Some(p50) => json!({
                    "p50": ms(p50),
                    "p99": q(0.99).map(ms),
                    "p999": q(0.999).map(ms),
                    "count": newest.metrics.sum(&format!("{name}_count"), &labels).unwrap_or(0.0)
                        - window_base.metrics.sum(&format!("{name}_count"), &labels).unwrap_or(0.0),
                }),
                None => Value::Null,
            }
        };
        let has_comet = newest.metrics.has("herald_frames_delivered_total");
        let has_job = newest.metrics.has("herald_job_messages_total");

        let comets = self.nodes.comets.borrow().clone();
        let comet_rows = comet_rows(&mut self.comet_rates, &comets, unix_ms() as i64);
        // The comets that have a rate (a comet that has not reported twice yet,
        // or a goim comet, which reports no totals, has none).
        let known = |field: &str| -> Option<f64> {
            let rates: Vec<f64> = comet_rows
                .iter()
                .filter_map(|r| r[field].as_f64())
                .collect();
            (!rates.is_empty()).then(|| rates.iter().sum())
        };
        let registry_delivered = known("delivered_per_s");
        let registry_dropped = known("dropped_per_s");
        let (delivered, dropped, source) = if has_comet {
            (
                rate("herald_frames_delivered_total", &[]),
                rate("herald_dropped_frames_total", &[]),
                "process",
            )
        } else {
            (registry_delivered, registry_dropped, "registry")
        };
        let m = &newest.metrics;
        let kinds = ["keys", "mids", "room", "all"];
        let pushes_by_kind: BTreeMap<&str, Option<f64>> = kinds
            .iter()
            .map(|k| (*k, rate("herald_pushes_total", &[("kind", k)])))
            .collect();
        let mut nodes: Vec<Value> = comet_rows;
        nodes.extend(other_rows(&self.nodes.logics.borrow(), "logic"));
        nodes.extend(other_rows(&self.nodes.jobs.borrow(), "job"));
        let totals = self.sources.logic.online_total();
        let top: Vec<Value> = self
            .sources
            .logic
            .top_rooms(TOP_ROOMS)
            .into_iter()
            .map(|(room, online)| json!({"room": room, "online": online}))
            .collect();
        json!({
            "at_ms": unix_ms(),
            "window_seconds": newest.at.duration_since(window_base.at).as_secs_f64(),
            "role": self.sources.role,
            "server_id": self.sources.server_id,
            "connections": totals.conn_count,
            "ips": totals.ip_count,
            "rates": {
                "pushes": rate("herald_pushes_total", &[]),
                "pushes_by_kind": pushes_by_kind,
                "push_failures": rate("herald_push_failures_total", &[]),
                "deliveries": delivered,
                "drops": dropped,
                "slow_consumers": if has_comet { rate("herald_slow_consumers_total", &[]) } else { None },
                "deliveries_source": source,
            },
            "totals": {
                "pushes": m.sum("herald_pushes_total", &[]),
                "push_failures": m.sum("herald_push_failures_total", &[]),
                "deliveries": m.sum("herald_frames_delivered_total", &[]),
                "drops": m.sum("herald_dropped_frames_total", &[]),
                "slow_consumers": m.sum("herald_slow_consumers_total", &[]),
                "slow_disconnects": m.sum("herald_slow_consumer_disconnects_total", &[]),
            },
            "latency": {
                "publish": {
                    "room": latency("herald_push_publish_seconds", "kind", "room"),
                    "keys": latency("herald_push_publish_seconds", "kind", "keys"),
                    "mids": latency("herald_push_publish_seconds", "kind", "mids"),
                    "all": latency("herald_push_publish_seconds", "kind", "all"),
                },
                "queue": if has_job { json!({
                    "room": latency("herald_job_queue_seconds", "type", "room"),
                    "push": latency("herald_job_queue_seconds", "type", "push"),
                    "broadcast": latency("herald_job_queue_seconds", "type", "broadcast"),
                }) } else { Value::Null },
                "dispatch": if has_job { json!({
                    "room": latency("herald_job_dispatch_seconds", "type", "room"),
                    "push": latency("herald_job_dispatch_seconds", "type", "push"),
                    "broadcast": latency("herald_job_dispatch_seconds", "type", "broadcast"),
                }) } else { Value::Null },
                "fanout": if has_comet { json!({
                    "room": latency("herald_comet_fanout_seconds", "kind", "room"),
                    "keys": latency("herald_comet_fanout_seconds", "kind", "keys"),
                    "broadcast": latency("herald_comet_fanout_seconds", "kind", "broadcast"),
                }) } else { Value::Null },
            },
            "queue": {
                "depth": m.sum("herald_queue_depth", &[]),
                "lag_seconds": if has_job { m.sum("herald_job_consumer_lag_seconds", &[]) } else { None },
                "dispatch_errors": m.sum("herald_job_dispatch_errors_total", &[]),
            },
            "write_queues": if has_comet { json!({
                "pushes": m.sum("herald_comet_outbox_pushes", &[]),
                "bytes": m.sum("herald_comet_outbox_bytes", &[]),
                "connections": m.sum("herald_comet_backlogged_connections", &[]),
            }) } else { Value::Null },
            "nodes": nodes,
            "top_rooms": top,
        })
    }
}

/// The comets, with the rates of the totals they report: between a comet's
/// last two reports, by its own clock (`reported_at_ms`), so a rate is never
/// older than its report, and none is shown for a comet whose last report is
/// more than three report intervals old (stopped, or hung).
fn comet_rows(
    rates: &mut HashMap<String, CometTotals>,
    comets: &[Instance],
    now_ms: i64,
) -> Vec<Value> {
    rates.retain(|id, _| comets.iter().any(|c| &c.hostname == id));
    comets
        .iter()
        .map(|c| {
            let delivered = c.meta_i64("frames_delivered");
            let dropped = c.meta_i64("frames_dropped");
            let reported = c.meta_i64("reported_at_ms");
            let t = rates.entry(c.hostname.clone()).or_default();
            if let (Some(at), Some(d), Some(x)) = (reported, delivered, dropped) {
                let report = Report {
                    at,
                    delivered: d,
                    dropped: x,
                };
                match t.last {
                    Some(last) if report.at > last.at => {
                        t.previous = Some(last);
                        t.last = Some(report);
                    }
                    Some(_) => {}
                    None => t.last = Some(report),
                }
            }
            let (delivered_rate, dropped_rate) = t.rates(now_ms).unzip();
            json!({
                "kind": "comet",
                "id": c.hostname,
                "health": if c.offline() { "offline" } else { "up" },
                "connections": c.meta_i64("conn_count"),
                "ips": c.meta_i64("ip_count"),
                "delivered": delivered,
                "dropped": dropped,
                "slow_consumers": c.meta_i64("slow_consumers"),
                "delivered_per_s": delivered_rate,
                "dropped_per_s": dropped_rate,
                "addrs": c.addrs,
                "zone": c.zone,
            })
        })
        .collect()
}

fn other_rows(list: &[Instance], kind: &str) -> Vec<Value> {
    list.iter()
        .map(|i| {
            json!({
                "kind": kind,
                "id": i.hostname,
                "health": if i.offline() { "offline" } else { "up" },
                "addrs": i.addrs,
                "zone": i.zone,
            })
        })
        .collect()
}

fn ms(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e3
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Samples of a Prometheus text rendering.
#[derive(Debug, Default)]
struct Metrics {
    samples: Vec<PromSample>,
}

#[derive(Debug)]
struct PromSample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Metrics {
    /// Reads the text format's sample lines (comments and malformed lines are
    /// skipped).
    fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Metrics { samples }
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a PromSample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
        })
    }

    /// The sum of every sample of `name` carrying `labels` (others summed
    /// over); `None` when there is none.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let total = self
            .matching(name, labels)
            .inspect(|_| found = true)
            .map(|s| s.value)
            .sum();
        found.then_some(total)
    }

    /// Cumulative bucket counts of histogram `name` with `labels`, by upper bound.
    fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.matching(&bucket, labels) {
            let Some(le) = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .and_then(|(_, v)| parse_value(v))
            else {
                continue;
            };
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += s.value;
        }
        let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    /// The `q` quantile of what histogram `name` recorded since `base`, as
    /// Prometheus's `histogram_quantile` estimates it (linear within a bucket;
    /// the highest finite bound when it falls in the `+Inf` bucket). `None`
    /// when nothing was recorded.
    fn quantile(&self, base: &Metrics, name: &str, labels: &[(&str, &str)], q: f64) -> Option<f64> {
        let now = self.buckets(name, labels);
        let then = base.buckets(name, labels);
        let delta: Vec<(f64, f64)> = now
            .iter()
            .map(|(le, c)| {
                let before = then.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
                (*le, (c - before).max(0.0))
            })
            .collect();
        quantile_of(&delta, q)
    }
}

/// `histogram_quantile` over cumulative `(upper bound, count)` buckets.
fn quantile_of(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = count - prev.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

fn parse_line(line: &str) -> Option<PromSample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = parse_value(value.trim())?;
    let (name, labels) = match head.split_once('{') {
        None => (head.trim().to_string(), Vec::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            (name.to_string(), parse_labels(body)?)
        }
    };
    Some(PromSample {
        name,
        labels,
        value,
    })
}

/// `k="v",k2="v2"` with the text format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(body: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.push((key.trim_start_matches(',').trim().to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE herald_pushes_total counter
herald_pushes_total{kind="keys"} 3
herald_pushes_total{kind="room"} 7
herald_queue_depth{backend="memory"} 0
herald_connections{transport="ws"} 5
herald_x{a="q\"uo,te",b="2"} 1.5
herald_push_publish_seconds_bucket{kind="room",le="0.001"} 10
herald_push_publish_seconds_bucket{kind="room",le="0.01"} 90
herald_push_publish_seconds_bucket{kind="room",le="0.1"} 100
herald_push_publish_seconds_bucket{kind="room",le="+Inf"} 100
herald_push_publish_seconds_sum{kind="room"} 0.5
herald_push_publish_seconds_count{kind="room"} 100
"#;

    #[test]
    fn parses_samples_and_sums_over_labels() {
        let m = Metrics::parse(TEXT);
        assert_eq!(m.sum("herald_pushes_total", &[]), Some(10.0));
        assert_eq!(m.sum("herald_pushes_total", &[("kind", "room")]), Some(7.0));
        assert_eq!(m.sum("herald_pushes_total", &[("kind", "mids")]), None);
        assert_eq!(
            m.sum("herald_x", &[("a", "q\"uo,te"), ("b", "2")]),
            Some(1.5)
        );
        assert!(m.has("herald_queue_depth"));
        assert!(!m.has("herald_nothing"));
    }

    #[test]
    fn quantiles_interpolate_within_buckets_of_the_window() {
        let m = Metrics::parse(TEXT);
        let empty = Metrics::default();
        let labels = [("kind", "room")];
        let q = |p| m.quantile(&empty, "herald_push_publish_seconds", &labels, p);
        // rank 50 of 100: bucket (0.001, 0.01] holds 80, the 40th of them.
        let p50 = q(0.5).unwrap();
        assert!((p50 - (0.001 + 0.009 * 40.0 / 80.0)).abs() < 1e-12, "{p50}");
        // rank 99: bucket (0.01, 0.1] holds 10, the 9th of them.
        let p99 = q(0.99).unwrap();
        assert!((p99 - (0.01 + 0.09 * 9.0 / 10.0)).abs() < 1e-12, "{p99}");
        // Only what was recorded since the base counts.
        assert_eq!(
            m.quantile(&m, "herald_push_publish_seconds", &labels, 0.5),
            None
        );
        // In the +Inf bucket: the highest finite bound.
        assert_eq!(
            quantile_of(&[(0.1, 0.0), (f64::INFINITY, 4.0)], 0.5),
            Some(0.1)
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let m =
            Metrics::parse("herald_a 1\nno_value\nherald_b{x=\"1\" 2\nherald_c{x=\"1\"} nan-ish\n");
        assert_eq!(m.samples.len(), 1);
    }

    #[test]
    fn comet_rates_are_between_its_last_two_reports_and_go_stale() {
        let r = |at, delivered, dropped| Report {
            at,
            delivered,
            dropped,
        };
        let mut t = CometTotals::default();
        assert_eq!(t.rates(0), None, "no report yet");
        t.last = Some(r(10_000, 100, 0));
        assert_eq!(t.rates(10_000), None, "one report is no rate");
        t.previous = t.last;
        t.last = Some(r(20_000, 50_100, 20));
        assert_eq!(t.rates(25_000), Some((5_000.0, 2.0)));
        // Three intervals after the last report with no newer one: no rate.
        assert_eq!(t.rates(50_000), Some((5_000.0, 2.0)));
        assert_eq!(t.rates(50_001), None);
        // A restarted comet's totals start again from 0: no negative rate.
        t.previous = t.last;
        t.last = Some(r(30_000, 10, 0));
        assert_eq!(t.rates(30_000), Some((0.0, 0.0)));
    }

    #[test]
    fn streams_end_before_the_request_timeout() {
        assert_eq!(
            stream_length(Duration::from_secs(30)),
            Duration::from_secs(22) + Duration::from_millis(500)
        );
        assert_eq!(stream_length(Duration::ZERO), Duration::from_secs(300));
        assert_eq!(
            stream_length(Duration::from_millis(100)),
            Duration::from_millis(75)
        );
    }
}
