//! `herald bench chat`: the chat under load. Shops of one agent each, every
//! conversation a visitor chatting with its shop's agent over their sockets
//! (goim frames over TCP): each side sends (op 4) in turn at the conversation's
//! rate, waits for nothing (the acknowledgement, op 5, is timed as it comes),
//! and every visitor syncs (op 18) now and then. Measured on the clients: the
//! acknowledgement time, the send-to-receive time (a message's send until the
//! other side's socket has its event), the sync time, and messages that were
//! acknowledged but never arrived; on the server: its CPU and the time a send
//! spent in the database (`herald_chat_store_seconds`). SQLite (standalone's
//! default) or PostgreSQL (a private instance started for the run).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::clients::source;
use crate::hist::Histogram;
use crate::servers::{free_addr, wait_port};
use crate::wire;

/// The chat scenario's settings.
#[derive(clap::Args, Debug, Clone)]
pub struct ChatArgs {
    /// Conversations (a visitor each) chatting at once.
    #[arg(long, default_value_t = 1000)]
    pub conversations: usize,
    /// Messages per second in each conversation (the visitor and the agent send
    /// in turn).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of chatting.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Conversations per shop (each shop has one agent, who answers in all of
    /// them from one socket).
    #[arg(long, default_value_t = 10)]
    pub per_shop: usize,
    /// Seconds between two syncs (op 18) of a visitor.
    #[arg(long, default_value_t = 5.0)]
    pub sync_every: f64,
    /// `sqlite` (a file in a scratch data directory, standalone's default) or
    /// `postgres` (a private PostgreSQL started for the run; needs its Debian
    /// package).
    #[arg(long, default_value = "sqlite")]
    pub database: String,
    /// herald binary (default: this program inside `herald bench`).
    #[arg(long)]
    pub herald: Option<PathBuf>,
    /// Loopback source addresses the accounts are created from (the chat limits
    /// new visitors and registrations per address).
    #[arg(long, default_value_t = 64)]
    pub sources: u8,
    /// JSON report path (default: bench-results/chat-DATABASE.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Markdown summary path (default: bench-results/chat-DATABASE.md).
    #[arg(long)]
    pub md: Option<PathBuf>,
}

/// The target of the issue that asked for this scenario: send-to-receive p99 on
/// SQLite at 1,000 conversations × 10 messages/s.
const TARGET_P99_MS: f64 = 50.0;

/// A latency's summary, milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.count(),
            p50_ms: ms(h.quantile(0.50)),
            p99_ms: ms(h.quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct ChatReport {
    pub database: String,
    pub conversations: usize,
    pub shops: usize,
    pub rate_per_conversation: f64,
    pub duration_s: f64,
    /// Sends made during the run.
    pub sent: u64,
    /// Sends acknowledged as stored (`"type": "sent"`), by the end of the drain.
    pub stored: u64,
    /// Of those, acknowledged with `"pushed": false` (in history, no event).
    pub unpushed: u64,
    /// Sends answered with an error, by code.
    pub errors: HashMap<String, u64>,
    /// Messages acknowledged as stored during the run, per second.
    pub messages_per_s: f64,
    /// Seconds after the run until every send was answered and every pushed
    /// message's event had arrived (at most 60).
    pub drain_s: f64,
    /// Events of the other side's messages received.
    pub received: u64,
    /// Stored and pushed messages whose event the other side had not received
    /// by the end of the drain.
    pub lost: u64,
    pub ack: Latency,
    pub send_to_receive: Latency,
    /// Of agents' messages only.
    pub send_to_receive_agents: Latency,
    pub sync: Latency,
    /// Database time of a send (server side): mean, and the bucket bound under
    /// which 99% fell.
    pub db_mean_ms: f64,
    pub db_p99_le_ms: f64,
    /// Server CPU over the run, cores.
    pub server_cpu_cores: f64,
    pub target_p99_ms: f64,
    /// Whether the target applies (SQLite) and was met.
    pub target_met: Option<bool>,
}

/// What every connection's reader records.
#[derive(Default)]
struct Tally {
    ack: Mutex<Histogram>,
    receive: Mutex<Histogram>,
    /// The same, of agents' messages only (an agent sends into all its
    /// conversations from one socket).
    receive_agents: Mutex<Histogram>,
    sync: Mutex<Histogram>,
    sent: AtomicU64,
    stored: AtomicU64,
    received: AtomicU64,
    unpushed: AtomicU64,
    errors: Mutex<HashMap<String, u64>>,
}

/// One HTTP/1.1 request on its own connection from `from`: status and JSON body.
async fn http(
    addr: SocketAddr,
    from: IpAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut s = socket.connect(addr).await?;
    let body = body.to_string();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let head = wire::http_head_len(&buf).context("no HTTP response head")?;
    let status = String::from_utf8_lossy(&buf[..head])
        .get(9..12)
        .and_then(|v| v.parse().ok())
        .context("no HTTP status")?;
    let value = serde_json::from_slice(&buf[head..]).unwrap_or(Value::Null);
    Ok((status, value))
}

/// A request that the chat may refuse for its per-address limits (429): tried
/// again after a second, up to a minute.
async fn http_patient(
    addr: SocketAddr,
    from: IpAddr,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    for _ in 0..60 {
        match http(addr, from, "POST", path, None, body).await? {
            (201, v) => return Ok(v),
            (429, _) => tokio::time::sleep(Duration::from_secs(1)).await,
            (status, v) => bail!("POST {path}: {status} {v}"),
        }
    }
    bail!("POST {path}: still limited after a minute")
}

/// A chat socket: goim frames over TCP, authenticated with a session token.
async fn connect(addr: SocketAddr, token: &str) -> anyhow::Result<(OwnedReadHalf, OwnedWriteHalf)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let auth = json!({ "chat": token }).to_string();
    s.write_all(&wire::goim(7, 1, auth.as_bytes())).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed a chat socket at auth");
        }
        buf.extend_from_slice(&chunk[..n]);
        if wire::end_of_op(&buf, 8)
            .map_err(anyhow::Error::msg)?
            .is_some()
        {
            break;
        }
    }
    Ok(s.into_split())
}

/// Sends in flight on one socket: seq → (what, sent at).
type Pending = Arc<Mutex<HashMap<i32, (u8, Instant)>>>;
const SEND: u8 = 0;
const SYNC: u8 = 1;

/// Reads a chat socket until it closes or `stop`: times the replies to its own
/// frames and the events of other members' messages.
async fn read_loop(
    mut r: OwnedReadHalf,
    me: i64,
    pending: Pending,
    tally: Arc<Tally>,
    measuring: Arc<AtomicBool>,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let now = Instant::now();
        let now_ns = wire::now_ns();
        let used = wire::goim_frames(&buf, &mut |op, seq, body| {
            if seq != 0 {
                let Some((what, at)) = pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&seq)
                else {
                    return;
                };
                let us = now.duration_since(at).as_micros() as u64;
                let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                if v["type"] == "error" || (op != 5 && op != 19) {
                    let code = v["code"].as_str().unwrap_or("no answer").to_string();
                    *tally
                        .errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(code)
                        .or_default() += 1;
                    return;
                }
                if what == SEND {
                    tally.stored.fetch_add(1, Ordering::Relaxed);
                    if v["pushed"] == false {
                        tally.unpushed.fetch_add(1, Ordering::Relaxed);
                    }
                    tally
                        .ack
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(us);
                } else {
                    tally
                        .sync
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(us);
                }
                return;
            }
            if op != 5 {
                return;
            }
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let m = &v["message"];
            if v["type"] != "message" || m["sender_id"].as_i64() == Some(me) {
                return;
            }
            // The body: "SENT_NS SENDER K" (SENDER: `aI` an agent, `vJ` a visitor).
            let mut words = m["body"].as_str().unwrap_or_default().split(' ');
            let sent_ns: Option<u64> = words.next().and_then(|t| t.parse().ok());
            let by_agent = words.next().is_some_and(|n| n.starts_with('a'));
            if let Some(t) = sent_ns {
                tally.received.fetch_add(1, Ordering::Relaxed);
                if measuring.load(Ordering::Relaxed) {
                    let us = now_ns.saturating_sub(t) / 1000;
                    tally
                        .receive
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(us);
                    if by_agent {
                        tally
                            .receive_agents
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .record(us);
                    }
                }
            }
        });
        match used {
            Ok(used) => {
                buf.drain(..used);
            }
            Err(_) => return,
        }
    }
}

/// One frame on a socket, remembered in `pending` when it expects a reply.
async fn send_frame(
    w: &mut OwnedWriteHalf,
    pending: &Pending,
    seq: &mut i32,
    op: i32,
    what: u8,
    body: &Value,
) -> std::io::Result<()> {
    *seq += 1;
    pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(*seq, (what, Instant::now()));
    w.write_all(&wire::goim(op, *seq, body.to_string().as_bytes()))
        .await
}

/// One side's sending: a message every `every` into each of `conversations` in
/// turn (spread over the period), a sync every `sync.1` from `sync.0` when given, until
/// `until`; then heartbeats only, until `stop`.
#[allow(clippy::too_many_arguments)]
async fn send_loop(
    mut w: OwnedWriteHalf,
    pending: Pending,
    tally: Arc<Tally>,
    name: String,
    conversations: Vec<i64>,
    every: Duration,
    sync: Option<(Duration, Duration)>,
    start: tokio::time::Instant,
    until: tokio::time::Instant,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 1;
    let mut k: u64 = 0;
    let step = every / conversations.len().max(1) as u32;
    let mut next = start;
    let mut next_sync = sync.map(|(first, _)| start + first);
    let mut next_beat = start + Duration::from_secs(30);
    // (No send is due at or after `until`: the drain counts on that.)
    while next < until {
        tokio::time::sleep_until(next).await;
        let c = conversations[(k as usize) % conversations.len()];
        let body = json!({
            "conversation_id": c,
            "body": format!("{} {name} {k}", wire::now_ns()),
            "client_id": format!("{name}-{k}"),
        });
        if send_frame(&mut w, &pending, &mut seq, 4, SEND, &body)
            .await
            .is_err()
        {
            return;
        }
        tally.sent.fetch_add(1, Ordering::Relaxed);
        k += 1;
        next += step;
        if let (Some(at), Some((_, every))) = (next_sync, sync) {
            if tokio::time::Instant::now() >= at {
                let body = json!({"conversation_id": c, "limit": 20});
                if send_frame(&mut w, &pending, &mut seq, 18, SYNC, &body)
                    .await
                    .is_err()
                {
                    return;
                }
                next_sync = Some(at + every);
            }
        }
        if tokio::time::Instant::now() >= next_beat {
            let _ = w.write_all(&wire::goim(2, 0, b"")).await;
            next_beat += Duration::from_secs(30);
        }
    }
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `herald_chat_store_seconds{op="send"}` histogram from `/metrics`:
/// (sum, count, [(le, cumulative count)]).
async fn store_histogram(http_addr: SocketAddr) -> anyhow::Result<(f64, f64, Vec<(f64, f64)>)> {
    let mut s = TcpStream::connect(http_addr).await?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {http_addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (mut sum, mut count, mut buckets) = (0.0, 0.0, Vec::new());
    for line in text
        .lines()
        .filter(|l| l.starts_with("herald_chat_store_seconds"))
    {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if name.starts_with("herald_chat_store_seconds_sum") {
            sum = value;
        } else if name.starts_with("herald_chat_store_seconds_count") {
            count = value;
        } else if let Some(le) = name.split("le=\"").nth(1).and_then(|r| r.split('"').next()) {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            buckets.push((le, value));
        }
    }
    Ok((sum, count, buckets))
}

/// Runs the scenario and writes its report.
pub async fn run(args: ChatArgs) -> anyhow::Result<ChatReport> {
    if args.conversations == 0 || args.per_shop == 0 {
        bail!("--conversations and --per-shop must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.duration > 0.0 && args.sync_every > 0.0) {
        bail!("--rate, --duration and --sync-every must be positive");
    }
    let scratch = std::env::temp_dir().join(format!("herald-bench-chat-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    // The database: a private PostgreSQL, or SQLite in the scratch directory.
    let (mut pg, url) = match args.database.as_str() {
        "sqlite" => (None, String::new()),
        "postgres" => {
            let pg = std::panic::catch_unwind(herald_testkit::postgres).map_err(|_| {
                anyhow::anyhow!("cannot start PostgreSQL (apt-get install postgresql)")
            })?;
            let url = pg.postgres_database("chat");
            (Some(pg), url)
        }
        other => bail!("--database is sqlite or postgres, not {other:?}"),
    };
    let (tcp, ws, http_addr) = (free_addr()?, free_addr()?, free_addr()?);
    let (default_bin, default_args) = crate::invocation().herald;
    let (bin, bin_args) = match &args.herald {
        Some(b) => (b.clone(), vec!["standalone".to_string()]),
        None => (default_bin, default_args),
    };
    let mut cmd = Command::new(&bin);
    cmd.args(&bin_args)
        .env("HERALD_COMET__TCP_BIND", format!("[\"{tcp}\"]"))
        .env("HERALD_COMET__WS_BIND", format!("[\"{ws}\"]"))
        .env("HERALD_LOGIC__HTTP_BIND", http_addr.to_string())
        .env("HERALD_LOG__LEVEL", "warn")
        .env("HERALD_CHAT__ENABLED", "true")
        .env("HERALD_CHAT__DATA_DIR", &scratch)
        // An agent answers in all its shop's conversations from one socket.
        .env("HERALD_LIMITS__CLIENT__FRAMES_PER_SECOND", "100000")
        .env("HERALD_LIMITS__CLIENT__FRAMES_BURST", "100000")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    if !url.is_empty() {
        cmd.env("HERALD_CHAT__DATABASE", &url).env(
            "HERALD_CHAT__SECRET",
            "herald bench chat secret, 32 bytes or more",
        );
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    wait_port(http_addr, &mut child, "herald").await?;
    wait_port(tcp, &mut child, "herald").await?;
    let pid = child.id().context("herald pid")?;

    let result = drive(&args, http_addr, tcp, pid).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    if let Some(pg) = pg.as_mut() {
        pg.quit();
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    let name = format!("chat-{}", args.database);
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bench-results/{name}.json")));
    let md_path = args
        .md
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bench-results/{name}.md")));
    for p in [&json_path, &md_path] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    let md = markdown(&report);
    std::fs::write(&md_path, &md)?;
    println!("{md}");
    println!("report: {} and {}", json_path.display(), md_path.display());
    Ok(report)
}

/// Accounts, sockets, the chatting and the figures.
async fn drive(
    args: &ChatArgs,
    http_addr: SocketAddr,
    tcp: SocketAddr,
    pid: u32,
) -> anyhow::Result<ChatReport> {
    let shops = args.conversations.div_ceil(args.per_shop);
    let at_once = Arc::new(Semaphore::new(32));
    eprintln!(
        "chat bench: {shops} shops, {} visitors…",
        args.conversations
    );
    // Shops and their agents.
    let mut tasks = JoinSet::new();
    for i in 0..shops {
        let (at_once, from) = (at_once.clone(), source(i, args.sources));
        tasks.spawn(async move {
            let _turn = at_once.acquire().await;
            let body = json!({"shop": format!("bench-{i}"), "username": format!("agent-{i}"), "password": "bench password"});
            let v = http_patient(http_addr, from, "/chat/api/register", &body).await?;
            anyhow::Ok((i, v["token"].as_str().unwrap_or_default().to_string(), v["user"]["id"].as_i64().unwrap_or(0)))
        });
    }
    let mut agents = vec![(String::new(), 0i64); shops];
    while let Some(r) = tasks.join_next().await {
        let (i, token, id) = r??;
        agents[i] = (token, id);
    }
    // Visitors, each with its conversation.
    let mut tasks = JoinSet::new();
    for j in 0..args.conversations {
        let (at_once, from) = (at_once.clone(), source(j, args.sources));
        let shop = j / args.per_shop;
        tasks.spawn(async move {
            let _turn = at_once.acquire().await;
            let body = json!({"shop": format!("bench-{shop}")});
            let v = http_patient(http_addr, from, "/chat/api/visitors", &body).await?;
            anyhow::Ok((
                j,
                v["token"].as_str().unwrap_or_default().to_string(),
                v["user"]["id"].as_i64().unwrap_or(0),
                v["conversation"]["id"].as_i64().unwrap_or(0),
            ))
        });
    }
    let mut visitors = vec![(String::new(), 0i64, 0i64); args.conversations];
    while let Some(r) = tasks.join_next().await {
        let (j, token, id, conv) = r??;
        visitors[j] = (token, id, conv);
    }

    // Sockets.
    eprintln!(
        "chat bench: connecting {} sockets…",
        shops + args.conversations
    );
    let tally = Arc::new(Tally::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Each side sends every 2/rate s into each of its conversations.
    let every = Duration::from_secs_f64(2.0 / args.rate);
    // Every socket first; the chatting starts once all are in.
    let mut sides = Vec::with_capacity(shops + args.conversations);
    for (i, (token, id)) in agents.iter().enumerate() {
        let convs = visitors[i * args.per_shop..((i + 1) * args.per_shop).min(visitors.len())]
            .iter()
            .map(|v| v.2)
            .collect();
        // The agent's turn comes half a period after its visitors'.
        let socket = connect(tcp, token).await?;
        sides.push((socket, *id, format!("a{i}"), convs, None, every / 2));
    }
    for (j, (token, id, conv)) in visitors.iter().enumerate() {
        // Visitors' sends spread over the period.
        let offset = every.mul_f64(j as f64 / args.conversations as f64);
        // And their syncs over theirs (not all in one burst every period).
        let sync_every = Duration::from_secs_f64(args.sync_every);
        let first = sync_every.mul_f64(1.0 + j as f64 / args.conversations as f64);
        let sync = Some((first, sync_every));
        let socket = connect(tcp, token).await?;
        sides.push((socket, *id, format!("v{j}"), vec![*conv], sync, offset));
    }
    let start = tokio::time::Instant::now() + Duration::from_secs(1);
    let until = start + Duration::from_secs_f64(args.duration);
    let mut run = JoinSet::new();
    let mut readers = JoinSet::new();
    for ((r, w), id, name, convs, sync, offset) in sides {
        let pending = Pending::default();
        readers.spawn(read_loop(
            r,
            id,
            pending.clone(),
            tally.clone(),
            measuring.clone(),
        ));
        run.spawn(send_loop(
            w,
            pending,
            tally.clone(),
            name,
            convs,
            every,
            sync,
            start + offset,
            until,
            stop.clone(),
        ));
    }

    eprintln!("chat bench: chatting for {} s…", args.duration);
    tokio::time::sleep_until(start).await;
    measuring.store(true, Ordering::Relaxed);
    let (sum0, count0, buckets0) = store_histogram(http_addr).await?;
    let cpu0 = crate::procfs::cpu_ns(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep_until(until).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = crate::procfs::cpu_ns(pid)?;
    let (sum1, count1, buckets1) = store_histogram(http_addr).await?;
    let stored_in_run = tally.stored.load(Ordering::Relaxed);
    // Replies and events still on their way (all of them, when the server
    // fell behind): until every send is answered and every pushed message's
    // event is in, at most a minute.
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_secs(60) {
        let t = &tally;
        let answered = t.stored.load(Ordering::Relaxed)
            + t.errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .sum::<u64>();
        let expected = t.stored.load(Ordering::Relaxed) - t.unpushed.load(Ordering::Relaxed);
        if answered >= t.sent.load(Ordering::Relaxed)
            && t.received.load(Ordering::Relaxed) >= expected
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_s = drain.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    while run.join_next().await.is_some() {}
    readers.abort_all();

    let sent = tally.sent.load(Ordering::Relaxed);
    let stored = tally.stored.load(Ordering::Relaxed);
    let received = tally.received.load(Ordering::Relaxed);
    let unpushed = tally.unpushed.load(Ordering::Relaxed);
    let db_count = count1 - count0;
    let db_mean_ms = if db_count > 0.0 {
        (sum1 - sum0) / db_count * 1000.0
    } else {
        0.0
    };
    // The smallest bucket bound under which 99% of the run's sends fell.
    let db_p99_le_ms = buckets1
        .iter()
        .map(|(le, c)| {
            let before = buckets0
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, c - before)
        })
        .find(|(_, c)| *c >= 0.99 * db_count)
        .map_or(0.0, |(le, _)| le * 1000.0);
    let send_to_receive = Latency::of(&tally.receive.lock().unwrap_or_else(|e| e.into_inner()));
    let send_to_receive_agents = Latency::of(
        &tally
            .receive_agents
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let sqlite = args.database == "sqlite";
    let errors = tally
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let ack = Latency::of(&tally.ack.lock().unwrap_or_else(|e| e.into_inner()));
    let sync = Latency::of(&tally.sync.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(ChatReport {
        database: args.database.clone(),
        conversations: args.conversations,
        shops,
        rate_per_conversation: args.rate,
        duration_s: elapsed,
        sent,
        stored,
        errors,
        messages_per_s: stored_in_run as f64 / elapsed,
        received,
        lost: stored.saturating_sub(unpushed).saturating_sub(received),
        unpushed,
        drain_s,
        ack,
        target_met: sqlite.then_some(send_to_receive.p99_ms <= TARGET_P99_MS && stored > 0),
        send_to_receive,
        send_to_receive_agents,
        sync,
        db_mean_ms,
        db_p99_le_ms,
        server_cpu_cores: (cpu1.saturating_sub(cpu0)) as f64 / 1e9 / elapsed,
        target_p99_ms: TARGET_P99_MS,
    })
}

/// The report as a Markdown summary.
fn markdown(r: &ChatReport) -> String {
    let lat = |name: &str, l: &Latency| {
        format!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |\n",
            l.count, l.p50_ms, l.p99_ms, l.max_ms
        )
    };
    let errors = if r.errors.is_empty() {
        "none".to_string()
    } else {
        let mut e: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        e.sort();
        e.join(", ")
    };
    let target = match r.target_met {
        Some(true) => format!("met (p99 ≤ {} ms)", r.target_p99_ms),
        Some(false) => format!("**not met** (p99 ≤ {} ms)", r.target_p99_ms),
        None => "recorded only (the target is set for SQLite)".to_string(),
    };
    format!(
        "# Chat benchmark ({db})\n\n\
         {conv} conversations in {shops} shops, {rate} messages/s each (visitor and agent in turn, over their sockets), {dur:.1} s.\n\n\
         | figure | value |\n|---|---|\n\
         | sends | {sent} |\n| stored (acknowledged) | {stored} |\n| errors | {errors} |\n\
         | stored messages/s during the run | {mps:.0} |\n| stored, not pushed (in history) | {unpushed} |\n\
         | events received by the other side | {received} |\n\
         | drain: every send answered, every event in | {drain:.1} s |\n\
         | stored and pushed, never received | {lost} |\n\
         | database time of a send, mean | {dbm:.2} ms |\n| database time of a send, p99 ≤ | {dbp:.1} ms |\n\
         | server CPU | {cpu:.2} cores |\n| target | {target} |\n\n\
         | latency | count | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n{ack}{s2r}{s2ra}{sync}",
        db = r.database,
        conv = r.conversations,
        shops = r.shops,
        rate = r.rate_per_conversation,
        dur = r.duration_s,
        sent = r.sent,
        stored = r.stored,
        mps = r.messages_per_s,
        received = r.received,
        lost = r.lost,
        unpushed = r.unpushed,
        drain = r.drain_s,
        dbm = r.db_mean_ms,
        dbp = r.db_p99_le_ms,
        cpu = r.server_cpu_cores,
        ack = lat("send → acknowledgement (op 5)", &r.ack),
        s2r = lat("send → the other side's event", &r.send_to_receive),
        s2ra = lat("… of agents' messages", &r.send_to_receive_agents),
        sync = lat("sync (op 18 → op 19)", &r.sync),
    )
}
