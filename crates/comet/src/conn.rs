//! One client connection, from accept to close, on one task.
//!
//! The task owns the socket and selects over "socket readable", "outbound items
//! queued" (the channel's wake-up), the heartbeat deadline and shutdown. It reads
//! whatever is available into a stack buffer and keeps only an incomplete frame
//! between reads, so an idle connection holds no read buffer. Everything queued is
//! written with one vectored write per drain: shared push buffers are never copied,
//! only their small headers are built per connection.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use herald_proto::{ws, Frame, Op, HEADER_LEN};
use herald_rpc::{
    ConnectReply, ConnectReq, DisconnectReq, HeartbeatReq, LogicService, Proto, ReceiveReq,
};
use rand::Rng;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::channel::{Channel, Outbound};
use crate::config::CometConfig;
use crate::hub::Hub;
use crate::sink::Sink;

/// Everything a connection task needs from its comet.
pub(crate) struct ConnContext {
    pub hub: Arc<Hub>,
    pub logic: Arc<dyn LogicService>,
    pub cfg: Arc<CometConfig>,
    pub server_id: String,
    pub shutdown: CancellationToken,
}

/// Largest amount read from the socket in one wake-up before frames are handled.
const READ_BATCH: usize = 64 * 1024;

enum Transport {
    Tcp,
    Ws {
        /// Set once the HTTP upgrade has been answered.
        upgraded: bool,
        decoder: ws::Decoder,
    },
}

/// Something read from the client.
enum Inbound {
    Frame(Frame),
    Upgrade(ws::Upgrade),
    Ping(Bytes),
    Close,
}

/// Why reading stopped.
enum ReadError {
    /// The peer closed the connection.
    Eof,
    Io(io::Error),
    /// Malformed frame; the connection is closed.
    BadFrame(String),
    /// Malformed WebSocket upgrade; an HTTP error is sent first.
    BadUpgrade(u16, &'static str, String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

struct Conn {
    /// Shared with the channel's sink, which writes; this task reads.
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    transport: Transport,
    /// Bytes of an incomplete frame; empty (and unallocated) between frames.
    pending: BytesMut,
    /// comet settings (body limit, WebSocket path), shared by every connection.
    cfg: Arc<CometConfig>,
    eof: bool,
}

impl Conn {
    /// Reads what the socket has and decodes it. Never blocks.
    fn read_available(&mut self) -> Result<Vec<Inbound>, ReadError> {
        let mut out = Vec::new();
        let mut total = 0;
        let mut buf = [0u8; 8192];
        while total < READ_BATCH {
            match self.stream.try_read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.parse(&buf[..n], &mut out)?;
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if self.eof && out.is_empty() {
            return Err(ReadError::Eof);
        }
        Ok(out)
    }

    fn parse(&mut self, data: &[u8], out: &mut Vec<Inbound>) -> Result<(), ReadError> {
        if self.pending.is_empty() {
            let used = self.parse_slice(data, out)?;
            if used < data.len() {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(data);
            let used = self.parse_slice(&pending, out)?;
            pending.advance(used);
            if !pending.is_empty() {
                self.pending = pending;
            }
        }
        Ok(())
    }

    fn parse_slice(&mut self, buf: &[u8], out: &mut Vec<Inbound>) -> Result<usize, ReadError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match &mut self.transport {
                Transport::Tcp => match herald_proto::decode_frame(rest, self.cfg.max_body) {
                    Ok(Some((f, used))) => {
                        out.push(Inbound::Frame(f));
                        pos += used;
                    }
                    Ok(None) => return Ok(pos),
                    Err(e) => return Err(ReadError::BadFrame(e.to_string())),
                },
                Transport::Ws { upgraded, decoder } if !*upgraded => {
                    match ws::parse_upgrade(rest, &self.cfg.ws_path) {
                        Ok(Some((up, used))) => {
                            *upgraded = true;
                            out.push(Inbound::Upgrade(up));
                            pos += used;
                            let _ = decoder;
                        }
                        Ok(None) => return Ok(pos),
                        Err(ws::WsError::NotFound(p)) => {
                            return Err(ReadError::BadUpgrade(
                                404,
                                "Not Found",
                                format!("no WebSocket endpoint at {p}; use {}", self.cfg.ws_path),
                            ))
                        }
                        Err(e) => {
                            return Err(ReadError::BadUpgrade(400, "Bad Request", e.to_string()))
                        }
                    }
                }
                Transport::Ws { decoder, .. } => match decoder.decode(rest) {
                    Ok(Some((msg, used))) => {
                        pos += used;
                        match msg {
                            Some(ws::Message::Data(data)) => {
                                let f = herald_proto::decode_exact(&data, self.cfg.max_body)
                                    .map_err(|e| ReadError::BadFrame(e.to_string()))?;
                                out.push(Inbound::Frame(f));
                            }
                            Some(ws::Message::Ping(p)) => out.push(Inbound::Ping(p)),
                            Some(ws::Message::Close) => {
                                out.push(Inbound::Close);
                                return Ok(buf.len());
                            }
                            Some(ws::Message::Pong) | None => {}
                        }
                    }
                    Ok(None) => return Ok(pos),
                    Err(e) => return Err(ReadError::BadFrame(e.to_string())),
                },
            }
        }
    }

    fn is_ws(&self) -> bool {
        matches!(self.transport, Transport::Ws { .. })
    }

    /// Writes `bytes` completely (used before a channel exists).
    async fn write_plain(&self, bytes: &[u8]) -> io::Result<()> {
        Sink::new(self.stream.clone(), false).write_all(bytes).await
    }
}

/// What a successful handshake produced.
struct Authenticated {
    reply: ConnectReply,
    /// `ver` and `seq` of the auth frame, echoed in the reply.
    ver: i16,
    seq: i32,
    /// Frames that arrived after the auth frame in the same read.
    leftover: Vec<Inbound>,
    /// Route removals completed before logic was asked to connect.
    removals_before: u64,
}

/// Serves one accepted socket until it closes.
///
/// Everything the connection keeps while idle lives in this one future, so it is
/// written to stay small: the handshake, writes and logic calls are boxed (they are
/// short-lived), and the heartbeat deadline is a timestamp in the channel checked
/// by the hub's sweeper rather than a timer per connection.
pub(crate) fn serve(
    ctx: Arc<ConnContext>,
    stream: TcpStream,
    peer: SocketAddr,
    websocket: bool,
) -> impl std::future::Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    let transport = if websocket {
        Transport::Ws {
            upgraded: false,
            decoder: ws::Decoder::server(HEADER_LEN + ctx.cfg.max_body),
        }
    } else {
        Transport::Tcp
    };
    // Built outside the future and captured once, so it is not stored twice.
    let mut conn = Conn {
        stream: Arc::new(stream),
        peer,
        transport,
        pending: BytesMut::new(),
        cfg: ctx.cfg.clone(),
        eof: false,
    };
    async move {
        let hub = &ctx.hub;
        hub.metrics.accepted.increment(1);
        let handshake = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = Box::pin(tokio::time::timeout(ctx.cfg.handshake_timeout, handshake(&ctx, &mut conn))) => r,
        };
        let Authenticated {
            reply,
            ver,
            seq,
            leftover,
            removals_before,
        } = match handshake {
            Ok(Ok(v)) => v,
            Ok(Err(reason)) => {
                debug!(peer = %conn.peer, %reason, "connection closed before auth");
                return;
            }
            Err(_) => {
                hub.metrics.timeouts.increment(1);
                debug!(peer = %conn.peer, "handshake timeout");
                return;
            }
        };
        let ConnectReply {
            mid,
            key,
            room_id,
            accepts,
            heartbeat,
            grant: _,
        } = reply;
        let hb = match heartbeat {
            n if n > 0 => Duration::from_nanos(n as u64),
            _ => ctx.cfg.default_heartbeat,
        };
        let ch = Arc::new(
            Channel::new(
                hub.next_id(),
                Arc::from(key),
                mid,
                conn.peer.ip(),
                accepts,
                ctx.cfg.outbound_queue,
            )
            .with_sink(Sink::new(conn.stream.clone(), conn.is_ws())),
        );
        ch.set_deadline(hub.deadline_after(hb));
        // Queued before the channel is reachable, so no push can overtake it.
        ch.reply(Outbound::Frame(Frame::new(
            ver,
            Op::AUTH_REPLY,
            seq,
            Bytes::new(),
        )));
        hub.register(&ch, &room_id);
        drop(room_id);
        if ctx.shutdown.is_cancelled() {
            // Registered after shutdown closed everybody: close this one too.
            ch.close();
        }
        let gauge = if conn.is_ws() {
            &hub.metrics.connections_ws
        } else {
            &hub.metrics.connections_tcp
        };
        gauge.increment(1.0);
        let refresh_every = {
            let (lo, hi) = (ctx.cfg.route_refresh_min, ctx.cfg.route_refresh_max);
            if hi > lo {
                rand::rng().random_range(lo..hi)
            } else {
                lo
            }
        };
        let mut last_refresh = Instant::now();
        if hub.route_removals() != removals_before {
            // A route removal finished while this client authenticated: it may have been
            // this key's (a same-key reconnect); make sure the route points here. If
            // that fails, the next client heartbeat tries again.
            let restored = call(
                ctx.cfg.logic_timeout,
                "heartbeat",
                ctx.logic.heartbeat(heartbeat_req(&ctx, &ch)),
            )
            .await;
            if restored.is_none() {
                last_refresh = Instant::now()
                    .checked_sub(refresh_every)
                    .unwrap_or(last_refresh);
            }
        }
        let mut out = VecDeque::new();
        let mut inbound = leftover;
        let close_reason: &str = 'serve: loop {
            for item in inbound.drain(..) {
                if ch.is_closed() {
                    // Replaced, timed out or shut down while handling a batch.
                    break;
                }
                match item {
                    Inbound::Frame(f) => {
                        if f.op == Op::HEARTBEAT {
                            ch.set_deadline(hub.deadline_after(hb));
                            if last_refresh.elapsed() >= refresh_every
                                && call(
                                    ctx.cfg.logic_timeout,
                                    "heartbeat",
                                    ctx.logic.heartbeat(heartbeat_req(&ctx, &ch)),
                                )
                                .await
                                .is_some()
                            {
                                last_refresh = Instant::now();
                            }
                        }
                        if let Some(req) = handle_frame(&ctx, &ch, f) {
                            call(ctx.cfg.logic_timeout, "receive", ctx.logic.receive(req)).await;
                        }
                    }
                    Inbound::Ping(p) => ch.reply(Outbound::Pong(p)),
                    Inbound::Close => break 'serve "closed by peer",
                    Inbound::Upgrade(_) => break 'serve "unexpected upgrade",
                }
            }
            let closing = ch.drain(&mut out);
            if !out.is_empty() {
                let n = out.len();
                let Some(sink) = ch.sink() else {
                    break 'serve "no socket";
                };
                let (frames, rest) = match sink.write_now(out.drain(..)) {
                    Ok(w) => (w.frames, w.rest),
                    Err(_) => break 'serve "write failed",
                };
                let blocked = rest.is_some();
                if let Some(rest) = rest {
                    // The socket is full: wait for it, bounded by the write timeout.
                    // Boxed, so idle connections do not carry this state. A blocked
                    // write must not keep a connection that the server closed
                    // (slow-consumer policy, replacement, shutdown) alive.
                    let mut write = Box::pin(tokio::time::timeout(
                        ctx.cfg.write_timeout,
                        sink.write_all(&rest),
                    ));
                    let written = std::future::poll_fn(|cx| {
                        if let Poll::Ready(r) = write.as_mut().poll(cx) {
                            return Poll::Ready(Some(r));
                        }
                        if ch.poll_signal(cx) && ch.is_closed() {
                            return Poll::Ready(None);
                        }
                        Poll::Pending
                    })
                    .await;
                    drop(write);
                    match written {
                        None => break 'serve "closed by server during a write",
                        Some(Ok(Ok(()))) => {}
                        Some(Ok(Err(_))) => break 'serve "write failed",
                        Some(Err(_)) => {
                            debug!(items = n, "write timed out");
                            break 'serve "write timed out";
                        }
                    }
                }
                ch.finish_write();
                hub.metrics.writes.increment(1);
                hub.metrics.frames_delivered.increment(frames);
                if blocked && !closing {
                    // Waiting for the socket consumed the wake-up of anything queued
                    // meanwhile: look again before sleeping.
                    continue 'serve;
                }
            }
            if closing {
                break 'serve if ch.timed_out() {
                    "heartbeat timeout"
                } else {
                    "closed by server"
                };
            }
            if conn.eof {
                break 'serve "closed by peer";
            }
            // Wait for queued output or input. Polling readiness directly keeps no
            // waiter state in this (long-lived, per-connection) future.
            let readable = std::future::poll_fn(|cx| {
                if ch.poll_signal(cx) {
                    return Poll::Ready(None);
                }
                conn.stream.poll_read_ready(cx).map(Some)
            })
            .await;
            match readable {
                None => {}
                Some(Err(_)) => break 'serve "socket error",
                Some(Ok(())) => match conn.read_available() {
                    Ok(items) => inbound = items,
                    Err(ReadError::Eof) => break 'serve "closed by peer",
                    Err(ReadError::Io(_)) => break 'serve "read failed",
                    Err(ReadError::BadFrame(m)) => {
                        hub.metrics.bad_input.increment(1);
                        debug!(peer = %conn.peer, key = %ch.key, error = %m, "malformed frame");
                        break 'serve "malformed frame";
                    }
                    Err(ReadError::BadUpgrade(..)) => break 'serve "unexpected upgrade",
                },
            }
        };
        debug!(peer = %conn.peer, key = %ch.key, reason = close_reason, "connection closed");
        ch.close();
        let current = hub.unregister(&ch);
        drop(conn);
        gauge.decrement(1.0);
        if current {
            let req = DisconnectReq {
                mid: ch.mid,
                key: ch.key.to_string(),
                server: ctx.server_id.clone(),
            };
            call(
                ctx.cfg.logic_timeout,
                "disconnect",
                ctx.logic.disconnect(req),
            )
            .await;
            hub.note_route_removal();
            if let Some(newer) = hub.channel(&ch.key) {
                // A new connection with this key registered while the route was being
                // removed: put its route back.
                call(
                    ctx.cfg.logic_timeout,
                    "heartbeat",
                    ctx.logic.heartbeat(heartbeat_req(&ctx, &newer)),
                )
                .await;
            }
        }
    }
}

fn heartbeat_req(ctx: &ConnContext, ch: &Channel) -> HeartbeatReq {
    HeartbeatReq {
        mid: ch.mid,
        key: ch.key.to_string(),
        server: ctx.server_id.clone(),
    }
}

/// Reads until the auth frame (answering the WebSocket upgrade on the way) and
/// authenticates with logic. Frames before auth are discarded, as in goim; frames
/// that arrived after it are returned.
async fn handshake(ctx: &ConnContext, conn: &mut Conn) -> Result<Authenticated, String> {
    let mut cookie = String::new();
    // The upgrade's headers, for logic's authenticator; empty for TCP clients.
    let mut headers = std::collections::HashMap::new();
    loop {
        if conn.eof {
            return Err("closed by peer".into());
        }
        conn.stream.readable().await.map_err(|e| e.to_string())?;
        let inbound = match conn.read_available() {
            Ok(v) => v,
            Err(ReadError::Eof) => return Err("closed by peer".into()),
            Err(ReadError::Io(e)) => return Err(e.to_string()),
            Err(ReadError::BadFrame(m)) => {
                ctx.hub.metrics.bad_input.increment(1);
                return Err(format!("malformed frame: {m}"));
            }
            Err(ReadError::BadUpgrade(status, reason, m)) => {
                ctx.hub.metrics.bad_input.increment(1);
                let _ = conn
                    .write_plain(ws::http_error(status, reason, &m).as_bytes())
                    .await;
                return Err(format!("bad upgrade: {m}"));
            }
        };
        let mut items = inbound.into_iter();
        while let Some(item) = items.next() {
            match item {
                Inbound::Upgrade(up) => {
                    conn.write_plain(ws::switching_protocols(&up.accept).as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                    cookie = up.cookie;
                    headers = up.headers;
                }
                Inbound::Ping(p) => {
                    let (h, hl) = ws::server_header(ws::opcode::PONG, p.len());
                    let mut out = h[..hl].to_vec();
                    out.extend_from_slice(&p);
                    conn.write_plain(&out).await.map_err(|e| e.to_string())?;
                }
                Inbound::Close => return Err("closed by peer".into()),
                Inbound::Frame(f) if f.op == Op::AUTH => {
                    let removals_before = ctx.hub.route_removals();
                    let req = ConnectReq {
                        server: ctx.server_id.clone(),
                        cookie: cookie.clone(),
                        token: f.body.clone(),
                        client_addr: conn.peer.to_string(),
                        headers: std::mem::take(&mut headers),
                    };
                    let reply =
                        match tokio::time::timeout(ctx.cfg.logic_timeout, ctx.logic.connect(req))
                            .await
                        {
                            Ok(Ok(r)) => r,
                            Ok(Err(e)) => {
                                ctx.hub.metrics.auth_failures.increment(1);
                                return Err(format!("auth refused: {e}"));
                            }
                            Err(_) => {
                                ctx.hub.metrics.auth_failures.increment(1);
                                return Err("auth timed out in logic".into());
                            }
                        };
                    return Ok(Authenticated {
                        reply,
                        ver: f.ver,
                        seq: f.seq,
                        leftover: items.collect(),
                        removals_before,
                    });
                }
                Inbound::Frame(f) => {
                    debug!(peer = %conn.peer, op = f.op, "frame before auth ignored")
                }
            }
        }
    }
}

/// A logic call with a deadline; failures are logged and give `None`. Boxed, so
/// that the connection task only holds a pointer while a (rare) call is pending.
fn call<'a, T: 'a>(
    timeout: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = herald_rpc::RpcResult<T>> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<T>> + Send + 'a>> {
    Box::pin(async move {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                warn!(call = what, error = %e, "logic call failed");
                None
            }
            Err(_) => {
                warn!(call = what, "logic call timed out");
                None
            }
        }
    })
}

/// Handles one frame from an authenticated client and queues its reply.
///
/// Returns the upstream message to forward to logic for business ops (the reply is
/// already queued: goim echoes the op and seq with an empty body).
fn handle_frame(ctx: &ConnContext, ch: &Arc<Channel>, f: Frame) -> Option<ReceiveReq> {
    let reply = match f.op {
        Op::HEARTBEAT => {
            let online = ch.room().map_or(0, |r| ctx.hub.room_online(&r));
            Frame::reply_to(
                &f,
                Op::HEARTBEAT_REPLY,
                Bytes::copy_from_slice(&online.to_be_bytes()),
            )
        }
        Op::CHANGE_ROOM => {
            let room = String::from_utf8_lossy(&f.body);
            ctx.hub.change_room(ch, room.trim());
            Frame::reply_to(&f, Op::CHANGE_ROOM_REPLY, f.body.clone())
        }
        Op::SUB => {
            if let Some(ops) = herald_proto::parse_op_list(&f.body) {
                ch.watch(&ops);
            }
            Frame::reply_to(&f, Op::SUB_REPLY, f.body.clone())
        }
        Op::UNSUB => {
            if let Some(ops) = herald_proto::parse_op_list(&f.body) {
                ch.unwatch(&ops);
            }
            Frame::reply_to(&f, Op::UNSUB_REPLY, f.body.clone())
        }
        _ => {
            ch.reply(Outbound::Frame(Frame::reply_to(&f, f.op, Bytes::new())));
            return Some(ReceiveReq {
                mid: ch.mid,
                proto: Some(Proto {
                    ver: f.ver as i32,
                    op: f.op,
                    seq: f.seq,
                    body: f.body,
                }),
            });
        }
    };
    ch.reply(Outbound::Frame(reply));
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CometMetrics;

    struct NoLogic;

    #[async_trait::async_trait]
    impl LogicService for NoLogic {
        async fn connect(&self, _: ConnectReq) -> herald_rpc::RpcResult<ConnectReply> {
            Err(herald_rpc::RpcError::invalid("test"))
        }
        async fn refresh(&self, _: ConnectReq) -> herald_rpc::RpcResult<ConnectReply> {
            Err(herald_rpc::RpcError::invalid("test"))
        }
        async fn disconnect(
            &self,
            _: DisconnectReq,
        ) -> herald_rpc::RpcResult<herald_rpc::DisconnectReply> {
            Ok(Default::default())
        }
        async fn heartbeat(&self, _: HeartbeatReq) -> herald_rpc::RpcResult<()> {
            Ok(())
        }
        async fn renew_online(
            &self,
            _: herald_rpc::OnlineReq,
        ) -> herald_rpc::RpcResult<herald_rpc::OnlineReply> {
            Ok(Default::default())
        }
        async fn receive(&self, _: ReceiveReq) -> herald_rpc::RpcResult<()> {
            Ok(())
        }
        async fn nodes(
            &self,
            _: herald_rpc::NodesReq,
        ) -> herald_rpc::RpcResult<herald_rpc::NodesReply> {
            Ok(Default::default())
        }
    }

    /// The per-connection task is the largest per-connection allocation; keep an eye
    /// on its size (printed with `--nocapture`).
    #[tokio::test]
    async fn connection_task_size() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let ctx = Arc::new(ConnContext {
            hub: Arc::new(Hub::new(1, Default::default(), CometMetrics::new())),
            logic: Arc::new(NoLogic),
            cfg: Arc::new(CometConfig::default()),
            server_id: "t".into(),
            shutdown: CancellationToken::new(),
        });
        let mut conn = Conn {
            stream: Arc::new(stream),
            peer,
            transport: Transport::Tcp,
            pending: BytesMut::new(),
            cfg: ctx.cfg.clone(),
            eof: false,
        };
        println!("Conn {}", std::mem::size_of::<Conn>());
        {
            let n = tokio::sync::Notify::new();
            let nf = n.notified();
            let r = conn.stream.readable();
            let c = ctx.shutdown.cancelled();
            println!(
                "notified {} readable {} cancelled {} frame {} inbound {} outbound {}",
                std::mem::size_of_val(&nf),
                std::mem::size_of_val(&r),
                std::mem::size_of_val(&c),
                std::mem::size_of::<Frame>(),
                std::mem::size_of::<Inbound>(),
                std::mem::size_of::<Outbound>()
            );
        }
        {
            let h = handshake(&ctx, &mut conn);
            println!("handshake {}", std::mem::size_of_val(&h));
        }
        let listener2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _c2 = TcpStream::connect(listener2.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener2.accept().await.unwrap();
        let fut = serve(ctx, stream, peer, true);
        let size = std::mem::size_of_val(&fut);
        println!(
            "connection future: {size} bytes; channel: {} bytes",
            std::mem::size_of::<Channel>()
        );
        assert!(size < 16 * 1024);
    }
}
