//! Attacks on a running `herald standalone` process, tried as an outsider would,
//! with healthy clients watching. Each attack must leave the healthy clients
//! served — every push arrives, within a bound that only a stall would break — and
//! the server's memory bounded. The bounds are generous on purpose: they catch a
//! stalled or bloated server, not a slow machine (speed is measured by the
//! benchmarks, not here).
//!
//! The attacks run one at a time (they use thousands of sockets each).

#![allow(clippy::unwrap_used)]

#[path = "e2e/support.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_proto::{Frame, Op};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use herald_testkit::Pki;
use support::{auth_body, get, post, Client};

/// One attack at a time: each holds thousands of sockets in this process.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A push must reach every healthy client within this long, attack or not.
const STALL: Duration = Duration::from_secs(2);

/// The same bound in a busy room, where the healthy clients also read every
/// large push before the probe (a debug build on a loaded machine needs the room).
const BUSY_STALL: Duration = Duration::from_secs(5);

/// A herald process on free loopback ports.
struct Server {
    child: Child,
    http: SocketAddr,
    ws: SocketAddr,
    tcp: SocketAddr,
    /// The secure WebSocket listener, when started with certificates.
    wss: Option<SocketAddr>,
    _dir: PathBuf,
}

impl Server {
    /// Starts `herald standalone` with the test ports and `extra` TOML appended.
    async fn start(extra: &str) -> Server {
        Server::start_on(extra, None).await
    }

    /// Also serves secure WebSocket with `pki`'s server certificate.
    async fn start_tls(extra: &str, pki: &Pki) -> Server {
        Server::start_on(extra, Some(pki)).await
    }

    async fn start_on(extra: &str, pki: Option<&Pki>) -> Server {
        let port = herald_testkit::free_port;
        let (http, ws, tcp) = (port(), port(), port());
        let wss = pki.map(|_| port());
        let tls = pki
            .map(|pki| {
                format!(
                    "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                    pki.server_cert.display(),
                    pki.server_key.display()
                )
            })
            .unwrap_or_default();
        let wss_bind = wss
            .map(|p| format!("wss_bind = [\"127.0.0.1:{p}\"]\n"))
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "herald-attack-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("herald.toml");
        std::fs::write(
            &config,
            format!(
                "[comet]\ntcp_bind = [\"127.0.0.1:{tcp}\"]\nws_bind = [\"127.0.0.1:{ws}\"]\n{wss_bind}\
                 [logic]\nhttp_bind = \"127.0.0.1:{http}\"\n[log]\nlevel = \"warn\"\n{tls}{extra}\n"
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["standalone", "--config"])
            .arg(&config)
            // The chat's database and secret in a scratch directory.
            .env(
                "HERALD_CHAT__DATA_DIR",
                std::env::temp_dir().join(format!("herald-attacks-chat-{http}")),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("herald starts");
        let s = Server {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            ws: SocketAddr::from(([127, 0, 0, 1], ws)),
            tcp: SocketAddr::from(([127, 0, 0, 1], tcp)),
            wss: wss.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(s.http).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "herald did not open its HTTP port"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s
    }

    /// The server's resident memory.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }

    /// Open file descriptors of the server.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Healthy clients in `live://healthy` (WebSocket and TCP, half each).
async fn healthy(s: &Server, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut c = if i % 2 == 0 {
            Client::ws(s.ws).await
        } else {
            Client::tcp(s.tcp).await
        };
        c.auth(
            1_000_000 + i as i64,
            &format!("healthy-{i}"),
            "live://healthy",
            &[1000],
        )
        .await;
        out.push(c);
    }
    out
}

/// Pushes `rounds` room messages to the healthy clients; each must reach all of
/// them within [`STALL`]. Returns the slowest delivery seen.
async fn probe(s: &Server, clients: &mut [Client], rounds: usize, label: &str) -> Duration {
    let mut worst = Duration::ZERO;
    for r in 0..rounds {
        let body = format!("{label}-{r}");
        let started = Instant::now();
        let resp = tokio::time::timeout(
            STALL,
            post(
                s.http,
                "/goim/push/room?operation=1000&type=live&room=healthy",
                body.as_bytes(),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{label}: the push API stalled"));
        assert_eq!(resp.status, 200, "{label}: push refused: {}", resp.text());
        for c in clients.iter_mut() {
            let f = tokio::time::timeout(STALL, c.recv_push())
                .await
                .unwrap_or_else(|_| panic!("{label}: push {r} not delivered within {STALL:?}"));
            assert_eq!(f.body, body.as_bytes(), "{label}: wrong push");
        }
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worst
}

/// A socket from `127.0.0.<host>` with a small receive buffer, so a client that
/// does not read fills its socket quickly.
async fn raw_socket(to: SocketAddr, host: u8) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.set_recv_buffer_size(4096)?;
    s.bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)),
        0,
    ))?;
    s.connect(to).await
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_half_open_handshakes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Server::start("[limits.client]\nupgrade_timeout = \"3s\"\n").await;
    let mut ok = healthy(&s, 4).await;
    probe(&s, &mut ok, 3, "before").await;
    let before = s.rss();
    // 10,000 connections that start a WebSocket upgrade and never finish it.
    let mut attackers = Vec::new();
    for i in 0..10_000u32 {
        let host = 2 + (i % 8) as u8;
        if let Ok(mut c) = raw_socket(s.ws, host).await {
            let _ = c.write_all(b"GET /sub HTTP/1.1\r\nHost: x\r\n").await;
            attackers.push(c);
        }
    }
    assert!(
        attackers.len() > 9_000,
        "only {} attackers connected",
        attackers.len()
    );
    let worst = probe(&s, &mut ok, 5, "half-open").await;
    let grown = s.rss().saturating_sub(before);
    assert!(
        grown < 150 * MIB,
        "10,000 half-open handshakes took {} MiB",
        grown / MIB
    );
    // The upgrade timeout frees their descriptors.
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.fds() > 1_000 {
        assert!(
            Instant::now() < deadline,
            "half-open connections still held: {} fds",
            s.fds()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    probe(&s, &mut ok, 3, "after").await;
    println!(
        "half-open: worst healthy delivery {worst:?}, RSS growth {} KiB",
        grown / 1024
    );
}

/// How often the server counted `limit` (its own /metrics: one server per test).
async fn limit_hits(s: &Server, limit: &str) -> u64 {
    let text = get(s.http, "/metrics").await.text();
    let prefix = format!("herald_limit_hits_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Writes `burst` until the server stops taking it, then proves the server closed
/// the connection (reads to the end): backpressure alone does not pass.
async fn flood_until_closed(mut c: Client, burst: Vec<u8>) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(1), c.send_socket_checked(&burst)).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while c.recv_wire().await.is_some() {}
    })
    .await
    .is_ok()
}

/// Has every client in `floods` write `burst` until the server closes it, while
/// the healthy clients are probed: asserts each flood is closed and counted as a
/// `frames_per_second` hit, and returns the healthy clients' worst delivery.
async fn floods_are_closed(
    s: &Server,
    ok: &mut [Client],
    floods: Vec<Client>,
    burst: Vec<u8>,
    label: &str,
) -> Duration {
    let n = floods.len() as u64;
    let floods: Vec<_> = floods
        .into_iter()
        .map(|c| tokio::spawn(flood_until_closed(c, burst.clone())))
        .collect();
    let worst = probe(s, ok, 10, label).await;
    for f in floods {
        assert!(
            f.await.unwrap(),
            "{label}: a flooding client was not closed by the server"
        );
    }
    assert!(limit_hits(s, "frames_per_second").await >= n);
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op4_floods_are_cut_off() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Server::start("").await;
    let mut ok = healthy(&s, 4).await;
    // 50 clients each writing op-4 frames as fast as the socket takes them.
    let frame = Frame::new(1, Op::SEND_MSG, 1, vec![b'x'; 512]).to_bytes();
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 256)
        .collect();
    let mut floods = Vec::new();
    for i in 0..50 {
        let mut c = Client::tcp(s.tcp).await;
        c.auth(i, &format!("flood-{i}"), "", &[]).await;
        floods.push(c);
    }
    let worst = floods_are_closed(&s, &mut ok, floods, burst, "op4-flood").await;
    println!("op-4 flood: worst healthy delivery {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_floods_are_cut_off() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Server::start("").await;
    let mut ok = healthy(&s, 4).await;
    // WebSocket pings cost the server a write each: 20 clients send nothing else,
    // before and after authenticating.
    let ping = herald_proto::ws::client_frame(herald_proto::ws::opcode::PING, b"p", [1, 2, 3, 4]);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 4096)
        .collect();
    let mut floods = Vec::new();
    for i in 0..20 {
        let mut c = Client::ws(s.ws).await;
        if i % 2 == 0 {
            c.auth(i, &format!("pinger-{i}"), "", &[]).await;
        }
        floods.push(c);
    }
    let worst = floods_are_closed(&s, &mut ok, floods, burst, "ping-flood").await;
    println!("ping flood: worst healthy delivery {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_sub_frames_do_not_stall_anyone() {
    let _one = ONE_AT_A_TIME.lock().await;
    // A generous frame rate, so it is the accept-filter bound that stops them.
    let s =
        Server::start("[limits.client]\nframes_per_second = 100000\nframes_burst = 100000\n").await;
    let mut ok = healthy(&s, 4).await;
    // Two clients sending maximal op-14 frames (500 new ops each, as many as fit
    // in the 4 KiB body limit) over and over: the filter would grow without end.
    let mut subs = Vec::new();
    for i in 0..2 {
        let mut c = Client::tcp(s.tcp).await;
        c.auth(i, &format!("subs-{i}"), "", &[]).await;
        let mut frames = Vec::new();
        for n in 0..40 {
            let ops: Vec<String> = (0..500)
                .map(|k| (100_000 + n * 500 + k).to_string())
                .collect();
            frames.extend(Frame::new(1, Op::SUB, 1, ops.join(",").into_bytes()).to_bytes());
        }
        subs.push(tokio::spawn(flood_until_closed(c, frames)));
    }
    let worst = probe(&s, &mut ok, 10, "sub-growth").await;
    for t in subs {
        assert!(
            t.await.unwrap(),
            "a client growing its accept list was not closed"
        );
    }
    // Closed by the accept-filter bound, not as malformed input.
    assert!(limit_hits(&s, "accepts").await >= 2);
    println!("sub growth: worst healthy delivery {worst:?}");
}

/// One round of a busy room: `pushes` room pushes of `body` (op 1001), then a
/// probe labelled `label` (op 1000) that every healthy client must read after
/// them; answers how long the probe took to reach the last one.
async fn busy_round(
    s: &Server,
    ok: &mut [Client],
    pushes: usize,
    body: &[u8],
    label: &str,
) -> Duration {
    for _ in 0..pushes {
        let r = post(
            s.http,
            "/goim/push/room?operation=1001&type=live&room=healthy",
            body,
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let started = Instant::now();
    let r = post(
        s.http,
        "/goim/push/room?operation=1000&type=live&room=healthy",
        label.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    for c in ok.iter_mut() {
        loop {
            let f = tokio::time::timeout(BUSY_STALL, c.recv_push())
                .await
                .unwrap_or_else(|_| panic!("{label}: healthy client stalled"));
            if f.op == 1000 {
                assert_eq!(f.body, label.as_bytes());
                break;
            }
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_readers_in_a_busy_room() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Server::start("").await;
    let mut ok = healthy(&s, 4).await;
    let baseline = s.rss();
    // 2,000 WebSocket clients in the healthy room that authenticate, then never read.
    let mut slow = Vec::new();
    for i in 0..2_000u32 {
        let stream = raw_socket(s.ws, 2 + (i % 8) as u8).await.unwrap();
        let mut c = Client::upgrade(Box::new(stream), s.ws, "/sub", "").await;
        c.send(
            Op::AUTH,
            &auth_body(i as i64, &format!("slow-{i}"), "live://healthy", &[]),
        )
        .await;
        slow.push(c);
    }
    // A busy room: 20 pushes of 16 KiB per second for 10 s, with the healthy
    // clients checked throughout.
    let body = vec![b'b'; 16 * 1024];
    let mut peak = 0;
    let mut worst = Duration::ZERO;
    for second in 0..10 {
        let took = busy_round(&s, &mut ok, 20, &body, &format!("busy-{second}")).await;
        worst = worst.max(took);
        peak = peak.max(s.rss());
    }
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown < 400 * MIB,
        "2,000 slow readers grew the server by {} MiB",
        grown / MIB
    );
    drop(slow);
    // Once they are gone, their memory goes back (at most a little is kept).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = s.rss();
    while after.saturating_sub(baseline) > 100 * MIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = s.rss();
    }
    println!(
        "slow readers: peak growth {} MiB, {} MiB above baseline after they left, worst healthy delivery {worst:?}",
        grown / MIB,
        after.saturating_sub(baseline) / MIB
    );
    assert!(
        after.saturating_sub(baseline) <= 100 * MIB,
        "{} MiB still held after the slow readers left",
        after.saturating_sub(baseline) / MIB
    );
}

/// TLS seals per connection: a slow TLS reader must not hold its own copy of
/// everything queued for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_slow_tls_readers_in_a_busy_room() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pki = Pki::new();
    let s = Server::start_tls("", &pki).await;
    let wss = s.wss.unwrap();
    let mut ok = healthy(&s, 4).await;
    let baseline = s.rss();
    let tls = herald_tls::ClientTls {
        ca_file: pki.ca.clone(),
        ..Default::default()
    };
    let connector = tokio_rustls::TlsConnector::from(herald_tls::client_config(&tls, &[]).unwrap());
    let mut slow = Vec::new();
    for i in 0..500u32 {
        let tcp = raw_socket(wss, 2 + (i % 8) as u8).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        let mut c = Client::upgrade(Box::new(stream), wss, "/sub", "").await;
        c.send(
            Op::AUTH,
            &auth_body(i as i64, &format!("tls-slow-{i}"), "live://healthy", &[]),
        )
        .await;
        slow.push(c);
    }
    let after_connect = s.rss();
    // A busy room: 100 pushes of 64 KiB, far more than the readers' sockets hold.
    let body = vec![b't'; 64 * 1024];
    let mut peak = 0;
    for round in 0..10 {
        busy_round(&s, &mut ok, 10, &body, &format!("tls-busy-{round}")).await;
        peak = peak.max(s.rss());
    }
    let grown = peak.saturating_sub(after_connect);
    println!(
        "slow TLS readers: {} MiB for their sessions, {} MiB more in the busy room",
        after_connect.saturating_sub(baseline) / MIB,
        grown / MIB
    );
    // Each may hold one sealed chunk (64 KiB) of its own, and references to the
    // shared pushes: far below 500 private copies of its queue.
    assert!(
        grown < 150 * MIB,
        "500 slow TLS readers grew the server by {} MiB",
        grown / MIB
    );
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_thousand_idle_http_connections() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Server::start("").await;
    let mut ok = healthy(&s, 4).await;
    // Idle connections to the HTTP API from eight addresses, 2,000 each: more than
    // the listener's cap in all, and far more than one address may hold.
    let mut idle = Vec::new();
    for i in 0..16_000u32 {
        if let Ok(c) = raw_socket(s.http, 2 + (i % 8) as u8).await {
            idle.push(c);
        }
    }
    assert!(
        idle.len() > 15_000,
        "only {} idle connections opened",
        idle.len()
    );
    // Pushes (from yet another address) and new clients are still served at once.
    let worst = probe(&s, &mut ok, 5, "idle-http").await;
    let mut late = Client::ws(s.ws).await;
    late.auth(7, "late", "live://healthy", &[1000]).await;
    ok.push(late);
    probe(&s, &mut ok, 2, "idle-http-new-client").await;
    let fds = s.fds();
    assert!(fds < 6_000, "the idle flood holds {fds} descriptors");
    println!("idle HTTP flood: worst healthy delivery {worst:?}, server descriptors {fds}");
}
