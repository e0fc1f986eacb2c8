//! Push generators: HTTP pushes to herald over keep-alive connections, NATS
//! publishes, and the floor's control line protocol; all at a target rate with
//! timestamped payloads.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire;

/// Which herald push endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PushKind {
    /// `/goim/push/room`.
    Room,
    /// `/goim/push/keys` (one key per push, cycling over the clients).
    Keys,
    /// `/goim/push/mids` (one member per push, cycling).
    Mids,
    /// `/goim/push/all`.
    All,
}

/// A keep-alive HTTP/1.1 connection.
pub struct Http {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Http {
    /// A client for `addr` (connects lazily).
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            stream: None,
            buf: Vec::new(),
        }
    }

    /// Sends one request and returns the status and body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(self.addr)
                    .await
                    .context("connect to HTTP API")?;
                s.set_nodelay(true)?;
                self.stream = Some(s);
                self.buf.clear();
            }
            match self.try_request(method, path, body).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 => {
                    self.stream = None;
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        bail!("unreachable")
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let Some(s) = self.stream.as_mut() else {
            bail!("not connected");
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        s.write_all(&req).await?;
        loop {
            if let Some(head) = wire::http_head_len(&self.buf) {
                let text = String::from_utf8_lossy(&self.buf[..head]).to_string();
                let status: u16 = text
                    .get(9..12)
                    .and_then(|v| v.parse().ok())
                    .context("status")?;
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .context("response without content-length")?;
                while self.buf.len() < head + len {
                    self.read().await?;
                }
                let body = self.buf[head..head + len].to_vec();
                self.buf.drain(..head + len);
                return Ok((status, body));
            }
            self.read().await?;
        }
    }

    async fn read(&mut self) -> anyhow::Result<()> {
        let Some(s) = self.stream.as_mut() else {
            bail!("not connected");
        };
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("HTTP connection closed");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Something pushes can be published to.
pub enum Publisher {
    /// herald's HTTP API.
    Herald {
        http: Http,
        kind: PushKind,
        room: String,
        /// Members to cycle over for key/mid pushes.
        mids: (u64, u64),
        next: u64,
        /// How far `next` moves per push (one of several parallel publishers).
        stride: u64,
        /// `speed` of `push/all` (connections per second; 0: no limit).
        speed: u32,
    },
    /// nats-server (plain TCP client protocol).
    Nats { stream: TcpStream, subject: String },
    /// An MQTT broker (plain TCP, QoS 0).
    Mqtt { stream: TcpStream, topic: String },
    /// The floor's control connection.
    Floor { stream: TcpStream },
}

impl Publisher {
    /// A herald publisher.
    pub fn herald(addr: SocketAddr, kind: PushKind, room: &str, mids: (u64, u64)) -> Publisher {
        Publisher::herald_part(addr, kind, room, mids, 0, 1)
    }

    /// Publisher `part` of `parts` publishing in parallel: it takes every
    /// `parts`-th member, starting at the `part`-th, so together they cycle over
    /// the members as one publisher would.
    pub fn herald_part(
        addr: SocketAddr,
        kind: PushKind,
        room: &str,
        mids: (u64, u64),
        part: u64,
        parts: u64,
    ) -> Publisher {
        Publisher::Herald {
            http: Http::new(addr),
            kind,
            room: room.to_string(),
            mids,
            next: part,
            stride: parts.max(1),
            speed: 0,
        }
    }

    /// Sets the `speed` of `push/all` (connections per second; 0: no limit).
    pub fn with_speed(mut self, to: u32) -> Publisher {
        if let Publisher::Herald { speed, .. } = &mut self {
            *speed = to;
        }
        self
    }

    /// A NATS publisher on `subject`.
    pub async fn nats(addr: SocketAddr, subject: &str) -> anyhow::Result<Publisher> {
        let hello = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nPING\r\n";
        let stream = greet(addr, "nats-server", hello, |got| {
            Ok(got.windows(6).any(|w| w == b"PONG\r\n"))
        })
        .await?;
        Ok(Publisher::Nats {
            stream,
            subject: subject.to_string(),
        })
    }

    /// An MQTT publisher on `topic`: connected (CONNACK received), then QoS-0
    /// PUBLISHes, which the broker does not acknowledge.
    pub async fn mqtt(addr: SocketAddr, topic: &str) -> anyhow::Result<Publisher> {
        let hello = wire::mqtt_connect("herald-bench-publisher", 0);
        let stream = greet(addr, "the MQTT broker", &hello, |got| {
            let mut code = None;
            wire::mqtt_packets(got, &mut |p| {
                if let wire::MqttIn::ConnAck(c) = p {
                    code = Some(c);
                }
            })
            .map_err(anyhow::Error::msg)?;
            match code {
                None => Ok(false),
                Some(0) => Ok(true),
                Some(c) => bail!("the MQTT broker refused the publisher: CONNACK {c}"),
            }
        })
        .await?;
        Ok(Publisher::Mqtt {
            stream,
            topic: topic.to_string(),
        })
    }

    /// A floor publisher.
    pub async fn floor(addr: SocketAddr) -> anyhow::Result<Publisher> {
        let stream = TcpStream::connect(addr)
            .await
            .context("connect to the floor")?;
        stream.set_nodelay(true)?;
        Ok(Publisher::Floor { stream })
    }

    /// Publishes one payload; an error means it was not accepted.
    pub async fn publish(&mut self, payload: &str) -> anyhow::Result<()> {
        match self {
            Publisher::Herald {
                http,
                kind,
                room,
                mids,
                next,
                stride,
                speed,
            } => {
                let (typ, id) = room.split_once("://").unwrap_or(("bench", room.as_str()));
                let mid = mids.0 + (*next % mids.1.max(1));
                *next += *stride;
                let path = match kind {
                    PushKind::Room => {
                        format!("/goim/push/room?operation=1000&type={typ}&room={id}")
                    }
                    PushKind::Keys => format!("/goim/push/keys?operation=1000&keys=bench-{mid}"),
                    PushKind::Mids => format!("/goim/push/mids?operation=1000&mids={mid}"),
                    PushKind::All if *speed > 0 => {
                        format!("/goim/push/all?operation=1000&speed={speed}")
                    }
                    PushKind::All => "/goim/push/all?operation=1000".to_string(),
                };
                let (status, body) = http.request("POST", &path, payload.as_bytes()).await?;
                if status != 200 || !body.starts_with(b"{\"code\":0") {
                    bail!("push refused: {status} {}", String::from_utf8_lossy(&body));
                }
                Ok(())
            }
            Publisher::Nats { stream, subject } => {
                let msg = format!("PUB {subject} {}\r\n{payload}\r\n", payload.len());
                stream.write_all(msg.as_bytes()).await?;
                Ok(())
            }
            Publisher::Mqtt { stream, topic } => {
                stream
                    .write_all(&wire::mqtt_publish(topic, payload.as_bytes()))
                    .await?;
                Ok(())
            }
            Publisher::Floor { stream } => {
                stream.write_all(format!("{payload}\n").as_bytes()).await?;
                Ok(())
            }
        }
    }
}

/// Connects to `what` at `addr`, sends `hello` and reads until `done(all read
/// so far)` says the server accepted it.
async fn greet(
    addr: SocketAddr,
    what: &str,
    hello: &[u8],
    mut done: impl FnMut(&[u8]) -> anyhow::Result<bool>,
) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {what}"))?;
    stream.set_nodelay(true)?;
    stream.write_all(hello).await?;
    let mut got = Vec::new();
    while !done(&got)? {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("{what} closed the connection");
        }
        got.extend_from_slice(&chunk[..n]);
    }
    Ok(stream)
}

/// Publishes `count` payloads at `rate` per second. Returns (accepted, failed).
pub async fn publish_at_rate(p: &mut Publisher, rate: f64, count: u64) -> (u64, u64) {
    publish_share(p, rate, 0..count, 0).await
}

/// Like [`publish_at_rate`], each payload padded to at least `size` bytes.
pub async fn publish_sized(p: &mut Publisher, rate: f64, count: u64, size: usize) -> (u64, u64) {
    publish_share(p, rate, 0..count, size).await
}

/// Publishes `count` herald pushes at `rate` per second over `connections`
/// keep-alive connections in parallel (one request at a time on each, so the
/// rate holds while each push waits for the queue's acknowledgement), publisher
/// `part_of(part, parts)` on each. Returns (accepted, failed).
pub async fn herald_at_rate(
    part_of: impl Fn(u64, u64) -> Publisher,
    connections: u64,
    rate: f64,
    count: u64,
) -> (u64, u64) {
    let parts = connections.clamp(1, count.max(1));
    let mut tasks = Vec::new();
    for part in 0..parts {
        let mut p = part_of(part, parts);
        let share = rate / parts as f64;
        tasks.push(tokio::spawn(async move {
            // Start the connections a tick apart, so their pushes interleave.
            tokio::time::sleep(Duration::from_secs_f64(part as f64 / rate.max(0.001))).await;
            publish_share(&mut p, share, (part..count).step_by(parts as usize), 0).await
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.unwrap_or((0, 0));
        ok += o;
        failed += f;
    }
    (ok, failed)
}

async fn publish_share(
    p: &mut Publisher,
    rate: f64,
    seqs: impl Iterator<Item = u64>,
    size: usize,
) -> (u64, u64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut ok, mut failed) = (0, 0);
    for seq in seqs {
        tick.tick().await;
        match p.publish(&wire::padded_payload(seq, size)).await {
            Ok(()) => ok += 1,
            Err(e) => {
                if failed == 0 {
                    eprintln!("publish failed: {e:#}");
                }
                failed += 1;
            }
        }
    }
    (ok, failed)
}
