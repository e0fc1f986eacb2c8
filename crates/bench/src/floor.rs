//! The floor: the least a tokio program must do to deliver the same pushes. It
//! accepts WebSocket connections (upgrade, then answers the first client frame with
//! an auth reply), and for every payload received on its control port writes one
//! pre-encoded op-9 frame (or, with `--batch`, one frame per batch) to every socket,
//! one task per connection. No logic, no queue, no routing: the cost of the kernel
//! and the runtime alone. With `--cert`/`--key` it serves wss through `tokio-rustls`,
//! which measures what a TLS session costs a minimal server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use herald_proto::raw::RawBatch;
use herald_proto::{ws, Frame, Op};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

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
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = ws_listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = s.set_nodelay(true);
                let rx = tx.subscribe();
                let reply = auth_reply.clone();
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
    loop {
        let (s, _) = control.accept().await?;
        let tx = tx.clone();
        let (batch, window) = (args.batch.max(1), Duration::from_millis(args.window_ms));
        tokio::spawn(async move {
            let mut lines = BufReader::new(s).lines();
            let mut pending = RawBatch::default();
            let mut deadline: Option<tokio::time::Instant> = None;
            loop {
                let line = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, lines.next_line()).await {
                        Ok(l) => l,
                        Err(_) => {
                            let full = std::mem::take(&mut pending);
                            let _ = tx.send(ws_envelope(full.finish()));
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
                    let _ = tx.send(ws_envelope(full.finish()));
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
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    // Upgrade request.
    let used = loop {
        if let Ok(Some((up, used))) = ws::parse_upgrade(&buf, "/sub") {
            if send(&mut s, ws::switching_protocols(&up.accept).as_bytes())
                .await
                .is_err()
            {
                return;
            }
            break used;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 8192 {
            return;
        }
    };
    // First client frame (auth): answer it, then only push.
    if buf.len() == used {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    drop(buf);
    if send(&mut s, &auth_reply).await.is_err() {
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

/// Writes `data` and flushes it (a TLS stream may otherwise keep sealed bytes).
async fn send<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data).await?;
    s.flush().await
}
