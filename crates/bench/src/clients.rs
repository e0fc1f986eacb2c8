//! The load generator: N lean goim (or NATS) WebSocket/TCP clients spread over
//! several loopback source addresses and, past one process's open-file limit, over
//! several worker processes. Each client authenticates into a room, heartbeats,
//! counts what it receives and measures latency from the timestamp in the payload.
//! Failed or dropped connections reconnect with jittered backoff.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::hist::Histogram;
use crate::wire;

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
}

/// Client settings (shared by the `clients` command and the scenario runner).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct ClientArgs {
    /// Server kind.
    #[arg(long, value_enum, default_value = "herald-ws")]
    pub target: Target,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:3102")]
    pub addr: SocketAddr,
    /// Number of connections.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// First member id; client i uses mid `first_mid + i` and key `bench-<mid>`.
    #[arg(long, default_value_t = 1)]
    pub first_mid: u64,
    /// Room every client joins.
    #[arg(long, default_value = "bench://1")]
    pub room: String,
    /// NATS subject for `nats-ws`.
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
}

/// A snapshot sent by a worker to the runner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub connected: u64,
    pub failed: u64,
    pub dropped: u64,
    pub received: u64,
    #[serde(default)]
    pub hist: Option<Histogram>,
}

impl Stats {
    /// Current counters (and, if asked, the merged latency histogram).
    pub fn snapshot(&self, with_hist: bool) -> Snapshot {
        Snapshot {
            connected: self.connected.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            hist: with_hist.then(|| {
                let mut h = Histogram::default();
                for s in &self.hists {
                    h.merge(&s.lock().unwrap_or_else(|e| e.into_inner()));
                }
                h
            }),
        }
    }

    /// Zeroes received counts and latencies (start of a measurement).
    pub fn reset(&self) {
        self.received.store(0, Ordering::Relaxed);
        for s in &self.hists {
            s.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
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
pub async fn run(args: Arc<ClientArgs>, stats: Arc<Stats>) {
    let limit = Arc::new(Semaphore::new(if args.concurrency == 0 {
        Semaphore::MAX_PERMITS
    } else {
        args.concurrency
    }));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        tasks.push(tokio::spawn(client_loop(
            i,
            args.clone(),
            stats.clone(),
            limit.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn client_loop(i: usize, args: Arc<ClientArgs>, stats: Arc<Stats>, limit: Arc<Semaphore>) {
    let mut attempt = 0u32;
    while !stats.stop.load(Ordering::Relaxed) {
        let permit = limit.acquire().await;
        let conn = tokio::time::timeout(Duration::from_secs(15), connect(i, &args)).await;
        drop(permit);
        match conn {
            Ok(Ok(mut c)) => {
                attempt = 0;
                stats.connected.fetch_add(1, Ordering::Relaxed);
                let r = c.serve(&args, &stats, i).await;
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                if stats.stop.load(Ordering::Relaxed) {
                    return;
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

/// An authenticated client connection.
struct Conn {
    stream: TcpStream,
    target: Target,
    /// Unparsed bytes (an incomplete frame).
    pending: Vec<u8>,
    /// NATS text stream reassembled from WebSocket payloads.
    nats: Vec<u8>,
    seq: i32,
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed during handshake");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

async fn connect(i: usize, args: &ClientArgs) -> anyhow::Result<Conn> {
    use tokio::io::AsyncWriteExt;
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source(i, args.sources), 0))
        .context("bind source address")?;
    let mut stream = socket.connect(args.addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let mid = args.first_mid + i as u64;
    let auth = serde_json::json!({
        "mid": mid, "key": format!("bench-{mid}"), "room_id": args.room,
        "platform": "bench", "accepts": [1000],
    })
    .to_string();
    let mut buf = Vec::new();
    let host = args.addr.to_string();
    if args.target != Target::HeraldTcp {
        let path = if args.target == Target::NatsWs {
            "/"
        } else {
            "/sub"
        };
        stream
            .write_all(wire::upgrade_request(&host, path).as_bytes())
            .await?;
        let head = loop {
            if let Some(n) = wire::http_head_len(&buf) {
                break n;
            }
            read_more(&mut stream, &mut buf).await?;
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            bail!("upgrade refused: {}", String::from_utf8_lossy(&buf[..head]));
        }
        buf.drain(..head);
    }
    let mut conn = Conn {
        stream,
        target: args.target,
        pending: buf,
        nats: Vec::new(),
        seq: 1,
    };
    match args.target {
        Target::HeraldTcp => {
            conn.stream
                .write_all(&wire::goim(7, 1, auth.as_bytes()))
                .await?
        }
        Target::HeraldWs | Target::FloorWs => {
            conn.stream
                .write_all(&wire::ws_message(&wire::goim(7, 1, auth.as_bytes()), false))
                .await?
        }
        Target::NatsWs => {
            let cmd = format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB {} 1\r\nPING\r\n",
                args.subject
            );
            conn.stream
                .write_all(&wire::ws_message(cmd.as_bytes(), false))
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
        read_more(&mut conn.stream, &mut more).await?;
        conn.pending = more;
    }
}

impl Conn {
    /// Scans handshake replies; `done(true)` once authenticated/subscribed.
    fn scan_handshake(&mut self, done: &mut impl FnMut(bool)) -> anyhow::Result<()> {
        let mut ok = false;
        let mut count = |op: i32, _seq: i32, _body: &[u8]| {
            if op == 8 {
                ok = true;
            }
        };
        match self.target {
            Target::HeraldTcp => {
                let used =
                    wire::goim_frames(&self.pending, &mut count).map_err(anyhow::Error::msg)?;
                self.pending.drain(..used);
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
                wire::goim_frames(&self.pending[start..end], &mut count)
                    .map_err(anyhow::Error::msg)?;
                self.pending.drain(..end);
            },
            Target::NatsWs => {
                while let Some((_, start, end)) =
                    wire::server_ws_frame(&self.pending).map_err(anyhow::Error::msg)?
                {
                    self.nats.extend_from_slice(&self.pending[start..end]);
                    self.pending.drain(..end);
                }
                if let Some(p) = self.nats.windows(6).position(|w| w == b"PONG\r\n") {
                    self.nats.drain(..p + 6);
                    ok = true;
                }
            }
        }
        done(ok);
        Ok(())
    }

    /// Reads until closed or stopped, counting pushes and heartbeating.
    async fn serve(
        &mut self,
        args: &ClientArgs,
        stats: &Stats,
        shard: usize,
    ) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let hb = Duration::from_secs(args.heartbeat_secs.max(1));
        let mut next_hb = tokio::time::Instant::now() + hb;
        let mut lat = Vec::new();
        // Frames that arrived together with the handshake reply.
        self.process(stats, shard, &mut lat)?;
        loop {
            if stats.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::select! {
                r = self.stream.readable() => {
                    r?;
                    let mut chunk = [0u8; 16384];
                    loop {
                        match self.stream.try_read(&mut chunk) {
                            Ok(0) => bail!("closed by server"),
                            Ok(n) => {
                                self.pending.extend_from_slice(&chunk[..n]);
                                if n < chunk.len() {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    if let Some(pong) = self.process(stats, shard, &mut lat)? {
                        self.stream.write_all(&pong).await?;
                    }
                }
                _ = tokio::time::sleep_until(next_hb) => {
                    next_hb += hb;
                    self.seq += 1;
                    let frame = match self.target {
                        Target::HeraldTcp => wire::goim(2, self.seq, b""),
                        Target::HeraldWs | Target::FloorWs => wire::ws_message(&wire::goim(2, self.seq, b""), false),
                        Target::NatsWs => wire::ws_message(b"PING\r\n", false),
                    };
                    self.stream.write_all(&frame).await?;
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
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let now = wire::now_ns();
        let mut received = 0u64;
        let mut on_push = |body: &[u8]| {
            received += 1;
            if let Some(t) = wire::timestamp_ns(body) {
                lat.push(now.saturating_sub(t) / 1000);
            }
        };
        let mut reply = None;
        match self.target {
            Target::HeraldTcp => {
                let used = wire::goim_frames(&self.pending, &mut |op, _, body| {
                    if op >= 1000 {
                        on_push(body)
                    }
                })
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
                    wire::goim_frames(msg, &mut |op, _, body| {
                        if op >= 1000 {
                            on_push(body)
                        }
                    })
                    .map_err(anyhow::Error::msg)?;
                    pos += end;
                }
                self.pending.drain(..pos);
            }
            Target::NatsWs => {
                let mut pos = 0;
                while let Some((_, start, end)) =
                    wire::server_ws_frame(&self.pending[pos..]).map_err(anyhow::Error::msg)?
                {
                    self.nats
                        .extend_from_slice(&self.pending[pos + start..pos + end]);
                    pos += end;
                }
                self.pending.drain(..pos);
                let mut pings = 0;
                let used = wire::nats_ops(&self.nats, &mut on_push, &mut || pings += 1)
                    .map_err(anyhow::Error::msg)?;
                self.nats.drain(..used);
                if pings > 0 {
                    reply = Some(wire::ws_message(&b"PONG\r\n".repeat(pings), false));
                }
            }
        }
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
