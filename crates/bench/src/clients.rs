//! The load generator: N lean goim (or NATS) WebSocket/TCP clients spread over
//! several loopback source addresses and, past one process's open-file limit, over
//! several worker processes. Each client authenticates into a room, heartbeats,
//! counts what it receives and measures latency from the timestamp in the payload.
//! Failed or dropped connections reconnect with jittered backoff. With `--tls` the
//! herald targets speak TLS (wss, or goim frames inside TLS); with `--jwt-secret`
//! each connect carries a fresh HS256 token instead of a trusted identity. With
//! `--recover` each client asks herald for recovery (`"recover"` in its auth body),
//! keeps its room stream's position across its connections, counts positioned
//! pushes (op 24) as deliveries and checks their order; the runner can tell such
//! clients to leave and come back all at once (`pause`, `resume`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use herald_proto::recovery::{parse_positioned, StreamKind, StreamStates, StreamStatus};
use herald_proto::{Header, Op, HEADER_LEN};
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};

use crate::hist::Histogram;
use crate::link::{Link, TlsDial};
use crate::{token, wire};

/// What the clients connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// herald (or goim) over WebSocket.
    HeraldWs,
    /// herald (or goim) over TCP.
    HeraldTcp,
    /// The floor server (WebSocket, goim frames, no logic).
    FloorWs,
    /// nats-server's WebSocket listener, one subscription per client.
    NatsWs,
    /// An MQTT 3.1.1 broker's WebSocket listener (mosquitto): one QoS-0
    /// subscription per client to `--subject` as the topic.
    MqttWs,
}

/// Client settings (shared by the `clients` command and the scenario runner).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct ClientArgs {
    /// Server kind.
    #[arg(long, value_enum, default_value = "herald-ws")]
    pub target: Target,
    /// Server address; several (comma-separated) spread the clients over them
    /// by member id (client `mid` connects to address `mid % count`), e.g. one
    /// per comet of a cluster.
    #[arg(long, default_value = "127.0.0.1:3102", value_delimiter = ',', num_args = 1..)]
    pub addr: Vec<SocketAddr>,
    /// Number of connections.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// First member id; client i uses mid `first_mid + i` and key `bench-<mid>`.
    #[arg(long, default_value_t = 1)]
    pub first_mid: u64,
    /// Room every client joins.
    #[arg(long, default_value = "bench://1")]
    pub room: String,
    /// NATS subject for `nats-ws`, MQTT topic for `mqtt-ws`.
    #[arg(long, default_value = "bench.room")]
    pub subject: String,
    /// Loopback source addresses to spread connections over (each gives ~28k ports).
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Client heartbeat interval, seconds.
    #[arg(long, default_value_t = 60)]
    pub heartbeat_secs: u64,
    /// Most connection attempts in flight at once (0 = all at once).
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// Worker processes (0 = as many as the open-file limit requires).
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// Speak TLS: wss for `herald-ws` and `floor-ws`, goim frames inside TLS for
    /// `herald-tcp`. Needs `--ca`.
    #[arg(long)]
    #[serde(default)]
    pub tls: bool,
    /// PEM CA bundle the server's certificate must chain to (with `--tls`).
    #[arg(long)]
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Name the server's certificate must carry (with `--tls`).
    #[arg(long, default_value = "localhost")]
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// HMAC secret of herald's `jwt` auth mode: each connect sends a fresh HS256
    /// token (`sub` = the client's mid, `key` = `bench-<mid>`, expiring in an hour)
    /// instead of a trusted mid and key.
    #[arg(long)]
    #[serde(default)]
    pub jwt_secret: Option<String>,
    /// Authenticate, then never read again (slow consumers: the server's buffers
    /// for them fill up).
    #[arg(long)]
    #[serde(default)]
    pub no_read: bool,
    /// Ask for recovery (herald targets): `"recover"` in the auth body with the
    /// room stream's last position (`{}` on the first connect); positioned pushes
    /// (op 24) are unwrapped and counted, their order checked.
    #[arg(long)]
    #[serde(default)]
    pub recover: bool,
}

fn default_server_name() -> String {
    "localhost".into()
}

impl ClientArgs {
    /// `connections` plain clients of `target` at `addr` with the command
    /// line's defaults (members from 1, room `bench://1`, subject `bench.room`,
    /// 8 source addresses, a heartbeat a minute, 1,000 connects in flight,
    /// worker processes as the open-file limit requires, no TLS, trusted
    /// identities, reading, not recovering).
    pub fn new(target: Target, addr: Vec<SocketAddr>, connections: usize) -> ClientArgs {
        ClientArgs {
            target,
            addr,
            connections,
            first_mid: 1,
            room: "bench://1".into(),
            subject: "bench.room".into(),
            sources: 8,
            heartbeat_secs: 60,
            concurrency: 1000,
            procs: 0,
            tls: false,
            ca: None,
            server_name: default_server_name(),
            jwt_secret: None,
            no_read: false,
            recover: false,
        }
    }
}

/// What every client of one process shares, checked before any connects.
#[derive(Clone)]
pub struct Dialer {
    /// TLS settings when `--tls`.
    tls: Option<TlsDial>,
}

impl Dialer {
    /// Checks `args` and loads what the clients share (the CA for `--tls`).
    pub fn new(args: &ClientArgs) -> anyhow::Result<Dialer> {
        let tls = if args.tls {
            if matches!(args.target, Target::NatsWs | Target::MqttWs) {
                bail!("--tls works with herald-ws, herald-tcp and floor-ws");
            }
            let ca = args
                .ca
                .as_deref()
                .context("--tls needs --ca FILE (the CA the server's certificate chains to)")?;
            Some(TlsDial::new(ca, &args.server_name)?)
        } else {
            None
        };
        if let Some(s) = &args.jwt_secret {
            if s.len() < 32 {
                bail!("--jwt-secret must be at least 32 bytes (herald refuses shorter ones)");
            }
        }
        Ok(Dialer { tls })
    }
}

/// Live counters of one process's clients.
#[derive(Default)]
pub struct Stats {
    /// Clients currently connected and authenticated.
    pub connected: AtomicU64,
    /// Connection attempts that failed before authentication completed.
    pub failed: AtomicU64,
    /// Connections that dropped after authentication (and reconnected).
    pub dropped: AtomicU64,
    /// Push messages received.
    pub received: AtomicU64,
    /// Latency samples, sharded to limit lock contention.
    hists: [Mutex<Histogram>; 16],
    /// Set to stop all clients.
    pub stop: AtomicBool,
    /// Positioned pushes (op 24) received (also counted in `received`).
    pub positioned: AtomicU64,
    /// Positioned pushes whose offset was not above the last one the client had
    /// (a repeat, or one arriving after a later one).
    pub duplicated: AtomicU64,
    /// Positioned pushes that skipped past the next offset (a gap).
    pub out_of_order: AtomicU64,
    /// Recovering clients holding a position in their room's stream.
    pub tracking: AtomicU64,
    /// Clients back after a resume whose op-25 frame reported their room
    /// `recovered`, `reload`, or anything else (`fresh`, `off`).
    pub recovered: AtomicU64,
    pub reloaded: AtomicU64,
    pub other_status: AtomicU64,
    /// Wall-clock time (ns) of the latest such op-25 frame.
    pub last_done_ns: AtomicU64,
    /// Per client back after a resume: from the resume to its op-25 frame, µs.
    recover_hist: Mutex<Histogram>,
    /// Set while the clients are told to stay away; they reconnect when it clears.
    paused: watch::Sender<bool>,
    /// When the last resume was ordered (the runner's wall clock, ns).
    resumed_ns: AtomicU64,
}

/// A snapshot sent by a worker to the runner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub connected: u64,
    pub failed: u64,
    pub dropped: u64,
    pub received: u64,
    /// Resident memory of the client process(es), bytes.
    #[serde(default)]
    pub rss: u64,
    /// CPU time (user + system) of the client process(es) so far, nanoseconds.
    #[serde(default)]
    pub cpu_ns: u64,
    #[serde(default)]
    pub hist: Option<Histogram>,
    #[serde(default)]
    pub positioned: u64,
    #[serde(default)]
    pub duplicated: u64,
    #[serde(default)]
    pub out_of_order: u64,
    #[serde(default)]
    pub tracking: u64,
    #[serde(default)]
    pub recovered: u64,
    #[serde(default)]
    pub reloaded: u64,
    #[serde(default)]
    pub other_status: u64,
    #[serde(default)]
    pub last_done_ns: u64,
    /// Times to recover (µs), with the latency histogram.
    #[serde(default)]
    pub recover_hist: Option<Histogram>,
}

impl Snapshot {
    /// Adds another process's counts (the latest completion is the later one).
    pub fn add(&mut self, s: &Snapshot) {
        self.connected += s.connected;
        self.failed += s.failed;
        self.dropped += s.dropped;
        self.received += s.received;
        self.rss += s.rss;
        self.cpu_ns += s.cpu_ns;
        self.positioned += s.positioned;
        self.duplicated += s.duplicated;
        self.out_of_order += s.out_of_order;
        self.tracking += s.tracking;
        self.recovered += s.recovered;
        self.reloaded += s.reloaded;
        self.other_status += s.other_status;
        self.last_done_ns = self.last_done_ns.max(s.last_done_ns);
        for (a, b) in [
            (&mut self.hist, &s.hist),
            (&mut self.recover_hist, &s.recover_hist),
        ] {
            if let Some(b) = b {
                a.get_or_insert_with(Histogram::default).merge(b);
            }
        }
    }

    /// Clients back after a resume that got their op-25 frame.
    pub fn back(&self) -> u64 {
        self.recovered + self.reloaded + self.other_status
    }
}

impl Stats {
    /// Current counters (and, if asked, the merged latency histogram).
    pub fn snapshot(&self, with_hist: bool) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            connected: load(&self.connected),
            failed: load(&self.failed),
            dropped: load(&self.dropped),
            received: load(&self.received),
            rss: crate::procfs::rss_bytes(std::process::id()).unwrap_or(0),
            cpu_ns: crate::procfs::cpu_ns(std::process::id()).unwrap_or(0),
            hist: with_hist.then(|| {
                let mut h = Histogram::default();
                for s in &self.hists {
                    h.merge(&s.lock().unwrap_or_else(|e| e.into_inner()));
                }
                h
            }),
            positioned: load(&self.positioned),
            duplicated: load(&self.duplicated),
            out_of_order: load(&self.out_of_order),
            tracking: load(&self.tracking),
            recovered: load(&self.recovered),
            reloaded: load(&self.reloaded),
            other_status: load(&self.other_status),
            last_done_ns: load(&self.last_done_ns),
            recover_hist: with_hist.then(|| {
                self.recover_hist
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            }),
        }
    }

    /// Zeroes received counts, latencies and recovery counts (start of a
    /// measurement); which clients hold a position is kept.
    pub fn reset(&self) {
        for a in [
            &self.received,
            &self.positioned,
            &self.duplicated,
            &self.out_of_order,
            &self.recovered,
            &self.reloaded,
            &self.other_status,
            &self.last_done_ns,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        for s in &self.hists {
            s.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
        self.recover_hist
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
    }

    /// Tells every client to close its connection and stay away until
    /// [`Stats::resume`].
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Lets the clients back, all at once; their times to recover are measured
    /// from `at_ns` (wall clock).
    pub fn resume(&self, at_ns: u64) {
        self.resumed_ns.store(at_ns, Ordering::Relaxed);
        self.paused.send_replace(false);
    }

    fn record(&self, shard: usize, latencies: &[u64]) {
        let mut h = self.hists[shard % 16]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for l in latencies {
            h.record(*l);
        }
    }
}

/// Loopback source address number `i` (127.0.0.1 + i).
pub fn source(i: usize, sources: u8) -> IpAddr {
    let n = (i % sources.max(1) as usize) as u8;
    IpAddr::from([127, 0, 0, 1 + n])
}

/// Open-file limit of this process (soft).
pub fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// Connections one process can hold, keeping room for other files.
pub fn per_process_capacity() -> usize {
    nofile_limit().saturating_sub(200).max(1) as usize
}

/// Runs `args.connections` clients in this process until `stats.stop` is set.
pub async fn run(args: Arc<ClientArgs>, dialer: Dialer, stats: Arc<Stats>) {
    let limit = Arc::new(Semaphore::new(if args.concurrency == 0 {
        Semaphore::MAX_PERMITS
    } else {
        args.concurrency
    }));
    let dialer = Arc::new(dialer);
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        tasks.push(tokio::spawn(client_loop(
            i,
            args.clone(),
            dialer.clone(),
            stats.clone(),
            limit.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn client_loop(
    i: usize,
    args: Arc<ClientArgs>,
    dialer: Arc<Dialer>,
    stats: Arc<Stats>,
    limit: Arc<Semaphore>,
) {
    let mut attempt = 0u32;
    let mut track = Track::default();
    let mut paused = stats.paused.subscribe();
    while !stats.stop.load(Ordering::Relaxed) {
        let permit = limit.acquire().await;
        let conn =
            tokio::time::timeout(Duration::from_secs(15), connect(i, &args, &dialer, &track)).await;
        drop(permit);
        match conn {
            Ok(Ok(mut c)) => {
                attempt = 0;
                stats.connected.fetch_add(1, Ordering::Relaxed);
                let r = c.serve(&args, &stats, i, &mut track).await;
                drop(c);
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                if stats.stop.load(Ordering::Relaxed) {
                    return;
                }
                if *paused.borrow_and_update() {
                    // Told to stay away: back with the others when resumed, at once.
                    if paused.wait_for(|p| !*p).await.is_err() {
                        return;
                    }
                    track.resumed_at = Some(stats.resumed_ns.load(Ordering::Relaxed));
                    continue;
                }
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = r {
                    if i == 0 {
                        eprintln!("client 0 dropped: {e}");
                    }
                }
            }
            Ok(Err(e)) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                if attempt == 0 && i < 3 {
                    eprintln!("client {i}: connect failed: {e:#}");
                }
            }
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        attempt += 1;
        let base = Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(6));
        let wait = base
            .min(Duration::from_secs(5))
            .mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tokio::time::sleep(wait).await;
    }
}

/// What a recovering client keeps across its connections: its room stream's
/// position, as herald's protocol asks a client to (docs/protocol.md, "Recovery").
#[derive(Debug, Default)]
struct Track {
    /// The room stream's epoch (empty: no position yet) and last offset.
    epoch: String,
    offset: u64,
    /// Counted in [`Stats::tracking`].
    counted: bool,
    /// This connection follows a resume ordered at that wall-clock time (ns),
    /// until its op-25 frame arrives.
    resumed_at: Option<u64>,
}

/// Where a positioned push falls against the client's last offset.
#[derive(Debug, PartialEq, Eq)]
enum Order {
    Next,
    /// At or below the last offset: a repeat (or late).
    Repeat,
    /// Past the next offset: something is missing before it.
    Gap,
}

impl Track {
    /// The `"recover"` member of the auth body: this client's position in `room`.
    fn recover(&self, room: &str) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if !self.epoch.is_empty() {
            m.insert(
                room.to_string(),
                serde_json::json!({"epoch": self.epoch, "offset": self.offset}),
            );
        }
        serde_json::Value::Object(m)
    }

    /// A positioned push of the room stream at `offset`.
    fn positioned(&mut self, offset: u64) -> Order {
        let order = if offset == self.offset + 1 {
            Order::Next
        } else if offset <= self.offset {
            Order::Repeat
        } else {
            Order::Gap
        };
        self.offset = self.offset.max(offset);
        order
    }

    /// An op-25 frame: the room stream's state. Returns that state's status, and
    /// whether it ends a reconnect after a resume (with the time it took, µs).
    fn states(&mut self, body: &[u8], now_ns: u64) -> Option<(StreamStatus, Option<u64>)> {
        let states = StreamStates::parse(body).ok()?;
        let room = states.streams.iter().find(|s| s.kind == StreamKind::Room)?;
        if room.status != StreamStatus::Off {
            self.epoch.clone_from(&room.epoch);
            self.offset = room.offset;
        }
        let took = self
            .resumed_at
            .take()
            .map(|at| now_ns.saturating_sub(at) / 1000);
        Some((room.status, took))
    }
}

/// What one read brought: deliveries, latencies and recovery checks.
struct Tally<'a> {
    now: u64,
    received: u64,
    lat: &'a mut Vec<u64>,
    track: &'a mut Track,
    stats: &'a Stats,
}

impl Tally<'_> {
    /// A push payload.
    fn push(&mut self, body: &[u8]) {
        self.received += 1;
        if let Some(t) = wire::timestamp_ns(body) {
            self.lat.push(self.now.saturating_sub(t) / 1000);
        }
    }

    /// A goim frame from herald (or the floor).
    fn frame(&mut self, op: i32, body: &[u8]) {
        match op {
            Op::POSITIONED => {
                let Some(p) = parse_positioned(body) else {
                    return;
                };
                self.stats.positioned.fetch_add(1, Ordering::Relaxed);
                if p.kind == StreamKind::Room {
                    let counter = match self.track.positioned(p.offset) {
                        Order::Next => None,
                        Order::Repeat => Some(&self.stats.duplicated),
                        Order::Gap => Some(&self.stats.out_of_order),
                    };
                    if let Some(c) = counter {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if Header::parse(p.frame).is_some_and(|h| h.op >= 1000) {
                    self.push(&p.frame[HEADER_LEN..]);
                }
            }
            Op::STREAMS => {
                let had = self.track.counted;
                let Some((status, took)) = self.track.states(body, self.now) else {
                    return;
                };
                if !had && !self.track.epoch.is_empty() {
                    self.track.counted = true;
                    self.stats.tracking.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(us) = took {
                    let counter = match status {
                        StreamStatus::Recovered => &self.stats.recovered,
                        StreamStatus::Reload => &self.stats.reloaded,
                        _ => &self.stats.other_status,
                    };
                    self.stats
                        .recover_hist
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(us);
                    self.stats
                        .last_done_ns
                        .fetch_max(self.now, Ordering::Relaxed);
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            op if op >= 1000 => self.push(body),
            _ => {}
        }
    }
}

/// An authenticated client connection.
struct Conn {
    link: Link,
    target: Target,
    /// Unparsed bytes (an incomplete frame).
    pending: Vec<u8>,
    /// A peer's byte stream (NATS text, MQTT packets) reassembled from
    /// WebSocket payloads.
    stream: Vec<u8>,
    seq: i32,
}

/// The op-7 auth body of client `mid`: goim's trusted identity, or a token; with
/// `--recover`, the position in `track`.
fn auth_body(args: &ClientArgs, mid: u64, track: &Track) -> String {
    let mut body = match &args.jwt_secret {
        Some(secret) => {
            let now = wire::now_ns() / 1_000_000_000;
            serde_json::json!({
                "token": token::client_token(secret.as_bytes(), mid, now),
                "room_id": args.room, "platform": "bench", "accepts": [1000],
            })
        }
        None => serde_json::json!({
            "mid": mid, "key": format!("bench-{mid}"), "room_id": args.room,
            "platform": "bench", "accepts": [1000],
        }),
    };
    if args.recover {
        body["recover"] = track.recover(&args.room);
    }
    body.to_string()
}

/// The server member `mid` connects to: the addresses take turns.
fn server_of(addrs: &[SocketAddr], mid: u64) -> anyhow::Result<SocketAddr> {
    if addrs.is_empty() {
        bail!("no server address (--addr)");
    }
    Ok(addrs[(mid % addrs.len() as u64) as usize])
}

async fn connect(
    i: usize,
    args: &ClientArgs,
    dialer: &Dialer,
    track: &Track,
) -> anyhow::Result<Conn> {
    let mid = args.first_mid + i as u64;
    let addr = server_of(&args.addr, mid)?;
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source(i, args.sources), 0))
        .context("bind source address")?;
    let stream = socket.connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let mut stream = match &dialer.tls {
        Some(tls) => Link::tls(stream, tls).await.context("TLS handshake")?,
        None => Link::Plain(stream),
    };
    let auth = auth_body(args, mid, track);
    let mut buf = Vec::new();
    let host = addr.to_string();
    if args.target != Target::HeraldTcp {
        let (path, protocol) = match args.target {
            Target::NatsWs => ("/", None),
            Target::MqttWs => ("/mqtt", Some("mqtt")),
            _ => ("/sub", None),
        };
        stream
            .write_all(wire::upgrade_request_for(&host, path, protocol).as_bytes())
            .await?;
        let head = loop {
            if let Some(n) = wire::http_head_len(&buf) {
                break n;
            }
            stream.read_some(&mut buf).await?;
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            bail!("upgrade refused: {}", String::from_utf8_lossy(&buf[..head]));
        }
        buf.drain(..head);
    }
    let mut conn = Conn {
        link: stream,
        target: args.target,
        pending: buf,
        stream: Vec::new(),
        seq: 1,
    };
    match args.target {
        Target::HeraldTcp => {
            conn.link
                .write_all(&wire::goim(7, 1, auth.as_bytes()))
                .await?
        }
        Target::HeraldWs | Target::FloorWs => {
            conn.link
                .write_all(&wire::ws_message(&wire::goim(7, 1, auth.as_bytes()), false))
                .await?
        }
        Target::NatsWs => {
            let cmd = format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB {} 1\r\nPING\r\n",
                args.subject
            );
            conn.link
                .write_all(&wire::ws_message(cmd.as_bytes(), false))
                .await?;
        }
        Target::MqttWs => {
            // The broker drops a client silent for 1.5 keep-alives; it pings
            // every heartbeat.
            let keep_alive = u16::try_from(args.heartbeat_secs.max(1) * 2).unwrap_or(u16::MAX);
            let mut hello = wire::mqtt_connect(&format!("bench-{mid}"), keep_alive);
            hello.extend_from_slice(&wire::mqtt_subscribe(1, &args.subject));
            conn.link
                .write_all(&wire::ws_message(&hello, false))
                .await?;
        }
    }
    // Wait for the auth reply (op 8) or, for NATS, the PONG after SUB.
    loop {
        let mut done = false;
        let mut saw = |ok: bool| done |= ok;
        conn.scan_handshake(&mut saw)?;
        if done {
            return Ok(conn);
        }
        let mut more = std::mem::take(&mut conn.pending);
        conn.link.read_some(&mut more).await?;
        conn.pending = more;
    }
}

impl Conn {
    /// Moves the payloads of the complete WebSocket messages in `pending` to
    /// `stream` (a peer's protocol is a byte stream split over messages).
    fn reassemble(&mut self) -> anyhow::Result<()> {
        let mut pos = 0;
        while let Some((op, start, end)) =
            wire::server_ws_frame(&self.pending[pos..]).map_err(anyhow::Error::msg)?
        {
            if op == 8 {
                bail!("close frame from server");
            }
            self.stream
                .extend_from_slice(&self.pending[pos + start..pos + end]);
            pos += end;
        }
        self.pending.drain(..pos);
        Ok(())
    }

    /// Scans handshake replies; `done(true)` once authenticated/subscribed. What
    /// follows the auth reply (op 8) stays in `pending` for [`Conn::serve`]: a
    /// recovering client's replays and stream states may come with it.
    fn scan_handshake(&mut self, done: &mut impl FnMut(bool)) -> anyhow::Result<()> {
        let mut ok = false;
        match self.target {
            Target::HeraldTcp => {
                if let Some(end) =
                    wire::end_of_op(&self.pending, Op::AUTH_REPLY).map_err(anyhow::Error::msg)?
                {
                    self.pending.drain(..end);
                    ok = true;
                }
            }
            Target::HeraldWs | Target::FloorWs => loop {
                let Some((op, start, end)) =
                    wire::server_ws_frame(&self.pending).map_err(anyhow::Error::msg)?
                else {
                    break;
                };
                if op == 8 {
                    bail!("closed during auth");
                }
                let msg = &self.pending[start..end];
                if let Some(at) =
                    wire::end_of_op(msg, Op::AUTH_REPLY).map_err(anyhow::Error::msg)?
                {
                    // Frames after the reply in the same message: keep them as
                    // a message of their own.
                    let rest = (at < msg.len()).then(|| wire::server_ws_message(&msg[at..]));
                    self.pending.drain(..end);
                    if let Some(rest) = rest {
                        self.pending.splice(0..0, rest);
                    }
                    ok = true;
                    break;
                }
                self.pending.drain(..end);
            },
            Target::NatsWs => {
                self.reassemble()?;
                if let Some(p) = self.stream.windows(6).position(|w| w == b"PONG\r\n") {
                    self.stream.drain(..p + 6);
                    ok = true;
                }
            }
            Target::MqttWs => {
                self.reassemble()?;
                let mut refused = None;
                let used = wire::mqtt_packets(&self.stream, &mut |p| match p {
                    wire::MqttIn::ConnAck(0) => {}
                    wire::MqttIn::ConnAck(code) => refused = Some(format!("CONNACK {code}")),
                    wire::MqttIn::SubAck(0x80) => refused = Some("SUBACK refused".into()),
                    wire::MqttIn::SubAck(_) => ok = true,
                    _ => {}
                })
                .map_err(anyhow::Error::msg)?;
                self.stream.drain(..used);
                if let Some(why) = refused {
                    bail!("the broker refused: {why}");
                }
            }
        }
        done(ok);
        Ok(())
    }

    /// Reads until closed, stopped or paused, counting pushes and heartbeating.
    async fn serve(
        &mut self,
        args: &ClientArgs,
        stats: &Stats,
        shard: usize,
        track: &mut Track,
    ) -> anyhow::Result<()> {
        let mut paused = stats.paused.subscribe();
        if args.no_read {
            // A slow consumer: holds its connection without reading, until stopped.
            while !stats.stop.load(Ordering::Relaxed) && !*paused.borrow() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            return Ok(());
        }
        let hb = Duration::from_secs(args.heartbeat_secs.max(1));
        let mut next_hb = tokio::time::Instant::now() + hb;
        let mut lat = Vec::new();
        // Frames that arrived together with the handshake reply.
        self.process(stats, shard, &mut lat, track)?;
        loop {
            if stats.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::select! {
                _ = async { paused.wait_for(|p| *p).await.is_ok() } => return Ok(()),
                r = self.link.readable() => {
                    r?;
                    let open = self.link.read_now(&mut self.pending)?;
                    if let Some(pong) = self.process(stats, shard, &mut lat, track)? {
                        self.link.write_all(&pong).await?;
                    }
                    if !open {
                        bail!("closed by server");
                    }
                }
                _ = tokio::time::sleep_until(next_hb) => {
                    next_hb += hb;
                    self.seq += 1;
                    let frame = match self.target {
                        Target::HeraldTcp => wire::goim(2, self.seq, b""),
                        Target::HeraldWs | Target::FloorWs => wire::ws_message(&wire::goim(2, self.seq, b""), false),
                        Target::NatsWs => wire::ws_message(b"PING\r\n", false),
                        Target::MqttWs => wire::ws_message(&wire::MQTT_PINGREQ, false),
                    };
                    self.link.write_all(&frame).await?;
                }
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Consumes complete messages from `pending`; returns bytes to send back (NATS PONGs).
    fn process(
        &mut self,
        stats: &Stats,
        shard: usize,
        lat: &mut Vec<u64>,
        track: &mut Track,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let mut tally = Tally {
            now: wire::now_ns(),
            received: 0,
            lat,
            track,
            stats,
        };
        let mut reply = None;
        match self.target {
            Target::HeraldTcp => {
                let used =
                    wire::goim_frames(&self.pending, &mut |op, _, body| tally.frame(op, body))
                        .map_err(anyhow::Error::msg)?;
                self.pending.drain(..used);
            }
            Target::HeraldWs | Target::FloorWs => {
                let mut pos = 0;
                while let Some((op, start, end)) =
                    wire::server_ws_frame(&self.pending[pos..]).map_err(anyhow::Error::msg)?
                {
                    if op == 8 {
                        bail!("close frame from server");
                    }
                    let msg = &self.pending[pos + start..pos + end];
                    wire::goim_frames(msg, &mut |op, _, body| tally.frame(op, body))
                        .map_err(anyhow::Error::msg)?;
                    pos += end;
                }
                self.pending.drain(..pos);
            }
            Target::NatsWs => {
                self.reassemble()?;
                let mut pings = 0;
                let used = wire::nats_ops(&self.stream, &mut |m| tally.push(m), &mut || pings += 1)
                    .map_err(anyhow::Error::msg)?;
                self.stream.drain(..used);
                if pings > 0 {
                    reply = Some(wire::ws_message(&b"PONG\r\n".repeat(pings), false));
                }
            }
            Target::MqttWs => {
                self.reassemble()?;
                let used = wire::mqtt_packets(&self.stream, &mut |p| {
                    if let wire::MqttIn::Publish(m) = p {
                        tally.push(m);
                    }
                })
                .map_err(anyhow::Error::msg)?;
                self.stream.drain(..used);
            }
        }
        let received = tally.received;
        let lat = tally.lat;
        if received > 0 {
            stats.received.fetch_add(received, Ordering::Relaxed);
        }
        if !lat.is_empty() {
            stats.record(shard, lat);
            lat.clear();
        }
        if self.pending.capacity() > 65536 && self.pending.is_empty() {
            self.pending = Vec::new();
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_args_are_the_command_lines_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: ClientArgs,
        }
        let parsed = Cli::parse_from(["clients", "--addr", "127.0.0.1:1", "-n", "7"]).args;
        let made = ClientArgs::new(Target::HeraldWs, vec!["127.0.0.1:1".parse().unwrap()], 7);
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            serde_json::to_value(&made).unwrap()
        );
    }

    #[test]
    fn members_take_turns_over_the_servers() {
        let a: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let picks: Vec<u16> = (1..=6).map(|m| server_of(&a, m).unwrap().port()).collect();
        assert_eq!(picks, [2, 3, 1, 2, 3, 1]);
        assert_eq!(server_of(&a[..1], 42).unwrap(), a[0]);
        assert!(server_of(&[], 1).is_err());
    }
}
