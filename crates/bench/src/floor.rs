//! The floor: the least a tokio program must do to deliver the same pushes. It
//! accepts WebSocket connections (upgrade, then answers the first client frame with
//! an auth reply), and for every payload received on its control port writes one
//! pre-encoded op-9 frame (or, with `--batch`, one frame per batch) to every socket,
//! one task per connection. No logic, no queue, no routing: the cost of the kernel
//! and the runtime alone. With `--cert`/`--key` it serves wss through `tokio-rustls`,
//! which measures what a TLS session costs a minimal server.
//!
//! `--writer` picks how a push reaches the sockets: `tasks` (the naive floor above:
//! every connection task is woken and writes), `direct` (the task that received the
//! push writes to every socket itself, without waking anyone: herald's way) or
//! `uring` (the same, with the writes handed to the kernel a ring at a time through
//! io_uring). A socket that does not take a whole write gets the rest queued for its
//! own task, so nothing is lost either way.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use herald_proto::raw::RawBatch;
use herald_proto::{ws, Frame, Op};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Notify};

/// How the floor writes a push to its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Writer {
    /// Every connection's task is woken and writes its copy.
    Tasks,
    /// The receiving task writes to every socket (no wake-ups).
    Direct,
    /// As `direct`, a ring of sends per io_uring system call.
    Uring,
}

impl Writer {
    /// The command-line value.
    pub fn arg(self) -> &'static str {
        match self {
            Writer::Tasks => "tasks",
            Writer::Direct => "direct",
            Writer::Uring => "uring",
        }
    }

    /// The peer name a run reports for this writer.
    pub fn peer_name(self) -> &'static str {
        match self {
            Writer::Tasks => "floor",
            Writer::Direct => "floor-direct",
            Writer::Uring => "floor-uring",
        }
    }
}

/// Floor settings.
#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// WebSocket listener.
    #[arg(long, default_value = "127.0.0.1:3202")]
    pub ws: SocketAddr,
    /// Control listener: one payload per line.
    #[arg(long, default_value = "127.0.0.1:3203")]
    pub control: SocketAddr,
    /// Frames per write (1 = one write per push).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Longest a batch waits to fill, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub window_ms: u64,
    /// PEM certificate: serve wss instead of ws (with `--key`).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM key of `--cert`.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// How a push is written to the sockets (`direct` and `uring`: plain ws only).
    #[arg(long, value_enum, default_value = "tasks")]
    pub writer: Writer,
}

/// A complete server WebSocket message carrying an op-9 envelope around `body`.
fn ws_envelope(body: Bytes) -> Bytes {
    let inner = Frame::new(1, Op::RAW, 0, body).to_bytes();
    let (h, n) = ws::server_header(ws::opcode::BINARY, inner.len());
    let mut out = Vec::with_capacity(n + inner.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(&inner);
    Bytes::from(out)
}

/// Runs the floor until killed.
pub async fn run(args: FloorArgs) -> anyhow::Result<()> {
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
            herald_tls::server_config(
                &herald_tls::ServerTls {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    ..Default::default()
                },
                &[],
            )?
            .config,
        )),
        _ => None,
    };
    if args.writer != Writer::Tasks && tls.is_some() {
        anyhow::bail!("--writer {:?} serves plain ws only", args.writer);
    }
    // Fails here, before listening, where io_uring is unavailable.
    let ring = match args.writer {
        Writer::Uring => Some(herald_uring::SendBatch::new(256)?),
        _ => None,
    };
    let registry: Registry = Arc::default();
    let ws_listener = TcpListener::bind(args.ws).await?;
    let control = TcpListener::bind(args.control).await?;
    let (tx, _) = broadcast::channel::<Bytes>(1024);
    let auth_reply = {
        let f = Frame::new(1, Op::AUTH_REPLY, 1, Bytes::new()).to_bytes();
        let (h, n) = ws::server_header(ws::opcode::BINARY, f.len());
        let mut out = h[..n].to_vec();
        out.extend_from_slice(&f);
        Bytes::from(out)
    };
    {
        let tx = tx.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = ws_listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = s.set_nodelay(true);
                let reply = auth_reply.clone();
                if args.writer != Writer::Tasks {
                    tokio::spawn(serve_registered(s, reply, registry.clone()));
                    continue;
                }
                let rx = tx.subscribe();
                match tls.clone() {
                    None => {
                        tokio::spawn(serve(s, rx, reply));
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            if let Ok(s) = acceptor.accept(s).await {
                                serve(s, rx, reply).await;
                            }
                        });
                    }
                }
            }
        });
    }
    // One control connection at a time owns the ring (the bench opens one).
    let ring = Arc::new(tokio::sync::Mutex::new(ring));
    loop {
        let (s, _) = control.accept().await?;
        let tx = tx.clone();
        let (batch, window) = (args.batch.max(1), Duration::from_millis(args.window_ms));
        let writer = args.writer;
        let registry = registry.clone();
        let ring = ring.clone();
        tokio::spawn(async move {
            let mut ring = ring.lock().await;
            let mut deliver = |frame: Bytes| match writer {
                Writer::Tasks => {
                    let _ = tx.send(frame);
                }
                _ => write_all_direct(&registry, &frame, ring.as_mut()),
            };
            let mut lines = BufReader::new(s).lines();
            let mut pending = RawBatch::default();
            let mut deadline: Option<tokio::time::Instant> = None;
            loop {
                let line = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, lines.next_line()).await {
                        Ok(l) => l,
                        Err(_) => {
                            let full = std::mem::take(&mut pending);
                            deliver(ws_envelope(full.finish()));
                            deadline = None;
                            continue;
                        }
                    },
                    None => lines.next_line().await,
                };
                let Ok(Some(line)) = line else { return };
                pending.push(1000, line.as_bytes());
                if pending.count() >= batch || window.is_zero() {
                    let full = std::mem::take(&mut pending);
                    deliver(ws_envelope(full.finish()));
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + window);
                }
            }
        });
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mut rx: broadcast::Receiver<Bytes>,
    auth_reply: Bytes,
) {
    let mut chunk = [0u8; 2048];
    if !handshake(&mut s, &auth_reply).await {
        return;
    }
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Ok(frame) => {
                    if send(&mut s, &frame).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            r = s.read(&mut chunk) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

/// The WebSocket upgrade and the auth exchange; false when the client went away.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, auth_reply: &[u8]) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    // Upgrade request.
    let used = loop {
        if let Ok(Some((up, used))) = ws::parse_upgrade(&buf, "/sub") {
            if send(s, ws::switching_protocols(&up.accept).as_bytes())
                .await
                .is_err()
            {
                return false;
            }
            break used;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 8192 {
            return false;
        }
    };
    // First client frame (auth): answer it, then only push.
    if buf.len() == used {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    send(s, auth_reply).await.is_ok()
}

/// A connection written to by whoever delivers a push.
struct Conn {
    stream: TcpStream,
    /// What the socket did not take yet, for the connection's own task.
    backlog: Mutex<Backlog>,
    /// Wakes the connection's task when its backlog grows.
    wake: Notify,
    closed: AtomicBool,
}

#[derive(Default)]
struct Backlog {
    queue: VecDeque<Bytes>,
    /// The connection's task is writing: later pushes queue behind it.
    writing: bool,
}

impl Backlog {
    /// Whether a push may be written to the socket now.
    fn idle(&self) -> bool {
        self.queue.is_empty() && !self.writing
    }
}

type Registry = Arc<Mutex<Vec<Arc<Conn>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// After the handshake the connection joins the registry; its task then only
/// reads (to see the client leave) and writes what a direct write left over.
async fn serve_registered(mut s: TcpStream, auth_reply: Bytes, registry: Registry) {
    if !handshake(&mut s, &auth_reply).await {
        return;
    }
    let conn = Arc::new(Conn {
        stream: s,
        backlog: Mutex::default(),
        wake: Notify::new(),
        closed: AtomicBool::new(false),
    });
    lock(&registry).push(conn.clone());
    let mut chunk = [0u8; 2048];
    loop {
        tokio::select! {
            _ = conn.wake.notified() => {
                if drain(&conn).await.is_err() {
                    break;
                }
            }
            r = conn.stream.readable() => {
                if r.is_err() {
                    break;
                }
                match conn.stream.try_read(&mut chunk) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        }
    }
    conn.closed.store(true, Ordering::Relaxed);
}

/// Writes the backlog in order; direct writes wait until it is empty.
async fn drain(conn: &Conn) -> std::io::Result<()> {
    loop {
        let item = {
            let mut b = lock(&conn.backlog);
            match b.queue.pop_front() {
                Some(item) => {
                    b.writing = true;
                    item
                }
                None => {
                    b.writing = false;
                    return Ok(());
                }
            }
        };
        let mut off = 0;
        while off < item.len() {
            conn.stream.writable().await?;
            match conn.stream.try_write(&item[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Queues what a direct write left for the connection's task.
fn queue_rest(conn: &Conn, backlog: &mut Backlog, rest: Bytes) {
    backlog.queue.push_back(rest);
    conn.wake.notify_one();
}

/// Writes `frame` to every registered socket from this task: one `write` each, or
/// a ring of sends per system call with `ring`.
fn write_all_direct(
    registry: &Registry,
    frame: &Bytes,
    ring: Option<&mut herald_uring::SendBatch>,
) {
    let mut conns = lock(registry);
    conns.retain(|c| !c.closed.load(Ordering::Relaxed));
    match ring {
        None => {
            for conn in conns.iter() {
                let mut b = lock(&conn.backlog);
                if !b.idle() {
                    queue_rest(conn, &mut b, frame.clone());
                    continue;
                }
                match conn.stream.try_write(frame) {
                    Ok(n) if n == frame.len() => {}
                    Ok(n) => queue_rest(conn, &mut b, frame.slice(n..)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        queue_rest(conn, &mut b, frame.clone())
                    }
                    Err(_) => {}
                }
            }
        }
        Some(ring) => {
            use std::os::fd::AsRawFd;
            let one = [std::io::IoSlice::new(frame)];
            let mut results = Vec::new();
            for chunk in conns.chunks(ring.capacity()) {
                // Each connection's backlog stays locked until its send completed,
                // so its task cannot write in between.
                let mut guards: Vec<_> = chunk.iter().map(|c| lock(&c.backlog)).collect();
                let mut sends = Vec::with_capacity(chunk.len());
                let mut sent_to = Vec::with_capacity(chunk.len());
                for (i, (conn, b)) in chunk.iter().zip(guards.iter_mut()).enumerate() {
                    if b.idle() {
                        sends.push(herald_uring::Send {
                            fd: conn.stream.as_raw_fd(),
                            bufs: &one,
                        });
                        sent_to.push(i);
                    } else {
                        queue_rest(conn, b, frame.clone());
                    }
                }
                ring.send(&sends, &mut results);
                for (&i, r) in sent_to.iter().zip(&results) {
                    let (conn, b) = (&chunk[i], &mut guards[i]);
                    match r {
                        Ok(n) if *n == frame.len() => {}
                        Ok(n) => queue_rest(conn, b, frame.slice(*n..)),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            queue_rest(conn, b, frame.clone())
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    }
}

/// Writes `data` and flushes it (a TLS stream may otherwise keep sealed bytes).
async fn send<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data).await?;
    s.flush().await
}
