//! One client connection, from accept to close, on one task.
//!
//! The task owns the socket and selects over "socket readable", "outbound items
//! queued" (the channel's wake-up) and shutdown; heartbeat deadlines and credential
//! expiry are swept by the hub. Steps: [`handshake`] (TLS, WebSocket upgrade, auth),
//! [`register`] (the channel joins the hub), [`session`] (read, [`dispatch`], write),
//! [`finish`] (tell the client why, leave the hub, tell logic). Everything queued is
//! written with one vectored write per drain: shared push buffers are never copied,
//! only their small headers are built per connection.

mod dispatch;
mod handshake;
mod wire;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use herald_limits::{ClientLimits, IpCounter, IpGuard, TrustedProxies};
use herald_proto::{ws, Frame, Op};
use herald_rpc::{ConnectReply, DisconnectReq, HeartbeatReq, LogicService};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::channel::{Channel, CloseReason, Outbound};
use crate::config::CometConfig;
use crate::hub::Hub;
use crate::recovery::Recovery;
use crate::tls::TlsSession;
use dispatch::{Action, Limiters};
use handshake::{Authenticated, Refused};
use wire::{Conn, Inbound, ReadError};

/// Everything a connection task needs from its comet.
pub(crate) struct ConnContext {
    pub hub: Arc<Hub>,
    pub logic: Arc<dyn LogicService>,
    pub cfg: Arc<CometConfig>,
    /// Limits on what one client may do.
    pub limits: ClientLimits,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub proxies: TrustedProxies,
    /// Connections per client address.
    pub ips: Arc<IpCounter>,
    pub server_id: String,
    pub shutdown: CancellationToken,
}

/// How a listener's connections are carried.
#[derive(Clone)]
pub(crate) struct ListenerKind {
    /// WebSocket framing (else goim frames straight on the stream).
    pub websocket: bool,
    /// TLS, with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves one accepted socket until it closes. `ip_guard` counts it for its
/// address (`None` when the peer is a trusted proxy: the client it names is counted
/// once the upgrade is read); `slot` is its place under `comet.max_connections`.
/// Both are released when the connection ends.
///
/// Everything the connection keeps while idle lives in this one future, so it is
/// written to stay small: the handshake, writes and logic calls are boxed (they are
/// short-lived), and the heartbeat deadline is a timestamp in the channel checked
/// by the hub's sweeper rather than a timer per connection.
pub(crate) fn serve(
    ctx: Arc<ConnContext>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: &ListenerKind,
    mut ip_guard: Option<IpGuard>,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    let (tls, tls_failed) = tls_session(kind);
    // Built outside the future and captured once, so it is not stored twice.
    let mut conn = Conn::new(stream, peer, kind.websocket, tls, ctx.cfg.clone());
    // A TLS listener never serves in the clear: without a session, end at once.
    conn.eof = tls_failed;
    async move {
        // The captured values are used in place: rebinding them (`let mut conn =
        // conn`) would store each twice in this long-lived future.
        let _ = &slot;
        ctx.hub.metrics.accepted.increment(1);
        let handshake = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = Box::pin(tokio::time::timeout(
                ctx.cfg.handshake_timeout,
                handshake::handshake(&ctx, &mut conn, &mut ip_guard),
            )) => r,
        };
        let auth = match authenticated(&ctx, &conn, handshake) {
            Ok(auth) => auth,
            Err(Some(close)) => {
                Box::pin(goodbye(&ctx, &conn, close)).await;
                return;
            }
            Err(None) => return,
        };
        let (ch, hb, leftover, removals_before) = match register(&ctx, &conn, auth) {
            Ok(registered) => registered,
            Err(route) => {
                // Its credentials expired while it authenticated: say so, as
                // for a connection whose credentials expire later, and take
                // back the route logic recorded.
                ctx.hub.metrics.credential_expiries.increment(1);
                Box::pin(goodbye(&ctx, &conn, CloseReason::CredentialsExpired)).await;
                call(&ctx, "disconnect", ctx.logic.disconnect(route)).await;
                return;
            }
        };
        let gauge = connections_gauge(&ctx, &conn);
        gauge.increment(1.0);
        let hb_ms = hb.as_millis() as u64;
        let end = session(&ctx, &mut conn, &ch, hb_ms, leftover, removals_before).await;
        debug!(peer = %conn.peer, key = %ch.key, reason = end.reason, "connection closed");
        ch.close();
        if end.clean {
            if let Some(reason) = ch.close_reason() {
                Box::pin(goodbye(&ctx, &conn, reason)).await;
            }
        }
        hang_up(&conn);
        drop(conn);
        drop(ip_guard);
        gauge.decrement(1.0);
        finish(&ctx, &ch).await;
    }
}

/// The TLS session of a connection on a TLS listener, and whether one was due
/// but could not be started (the connection then ends at once).
fn tls_session(kind: &ListenerKind) -> (Option<Arc<TlsSession>>, bool) {
    match kind.tls.clone().map(TlsSession::new) {
        None => (None, false),
        Some(Ok(session)) => (Some(session), false),
        Some(Err(e)) => {
            warn!(error = %e, "cannot start a TLS session");
            (None, true)
        }
    }
}

/// The handshake's outcome: the authenticated client, or why not (counted and
/// logged) with what to tell the client, if anything.
fn authenticated(
    ctx: &ConnContext,
    conn: &Conn,
    handshake: Result<Result<Authenticated, Refused>, tokio::time::error::Elapsed>,
) -> Result<Authenticated, Option<CloseReason>> {
    match handshake {
        Ok(Ok(auth)) => Ok(auth),
        Ok(Err(Refused { reason, close })) => {
            debug!(peer = %conn.peer, %reason, "connection closed before auth");
            Err(close)
        }
        Err(_) => {
            ctx.hub.metrics.timeouts.increment(1);
            ctx.hub.metrics.limit_hit("handshake_timeout");
            debug!(peer = %conn.peer, "auth timeout");
            Err(None)
        }
    }
}

/// The gauge of open connections of this connection's transport.
fn connections_gauge<'a>(ctx: &'a ConnContext, conn: &Conn) -> &'a metrics::Gauge {
    if conn.is_ws() {
        &ctx.hub.metrics.connections_ws
    } else {
        &ctx.hub.metrics.connections_tcp
    }
}

/// Ends the connection now. The socket is shared with the channel's sink, which
/// others may still hold for a moment: closing it waits for none of them.
fn hang_up(conn: &Conn) {
    let _ = socket2::SockRef::from(&*conn.stream).shutdown(std::net::Shutdown::Both);
}

/// Builds the channel for an authenticated client, queues the auth reply and
/// registers it in the hub; returns it with its heartbeat interval. When its
/// credentials already expired, returns the route logic recorded, to remove.
fn register(
    ctx: &ConnContext,
    conn: &Conn,
    auth: Authenticated,
) -> Result<(Arc<Channel>, Duration, Vec<Inbound>, u64), DisconnectReq> {
    let hub = &ctx.hub;
    let Authenticated {
        reply,
        ver,
        seq,
        leftover,
        removals_before,
        recover,
    } = auth;
    let ConnectReply {
        mid,
        key,
        room_id,
        accepts,
        heartbeat,
        grant,
        answered,
    } = reply;
    let hb = heartbeat_interval(ctx, heartbeat);
    let expires_at = grant.as_ref().map_or(0, |g| g.expires_at);
    // The room the connection joins (checked below); tracked from the start.
    let joins = |grant: &Option<herald_rpc::Grant>| {
        grant.as_ref().is_none_or(|g| g.allows_room(&room_id))
            && room_id.len() <= ctx.limits.max_room_key
    };
    let recovery = recover
        .as_ref()
        .map(|r| Recovery::new(if joins(&grant) { &room_id } else { "" }, mid, &key, r));
    let mut ch = Channel::new(
        hub.next_id(),
        Arc::from(key),
        mid,
        conn.client,
        accepts,
        ctx.limits.max_accepts,
    )
    .with_sink(conn.sink())
    .answered_by_logic(answered);
    if let Some(r) = recovery {
        ch = ch.with_recovery(r);
    }
    let ch = Arc::new(ch);
    ch.set_deadline(hub.deadline_after(hb));
    ch.set_expiry(hub.expiry_ms(expires_at));
    ch.set_grant(grant);
    if expires_at > 0 && ch.expire(hub.now_ms()).is_some() {
        debug!(peer = %conn.peer, "credentials expired before the connection started");
        return Err(DisconnectReq {
            mid: ch.mid,
            key: ch.key.to_string(),
            server: ctx.server_id.clone(),
        });
    }
    // Queued before the channel is reachable, so no push can overtake it.
    ch.reply(Outbound::Frame(Frame::new(
        ver,
        Op::AUTH_REPLY,
        seq,
        Bytes::new(),
    )));
    // The authenticator checked the room against the grant; check again here, so
    // a logic that does not (goim's) cannot place a restricted client elsewhere.
    let room = if ch.may_join(&room_id) && room_id.len() <= ctx.limits.max_room_key {
        room_id.as_str()
    } else {
        ""
    };
    hub.register(&ch, room);
    if ctx.shutdown.is_cancelled() {
        // Registered after shutdown closed everybody: close this one too.
        ch.close();
    }
    Ok((ch, hb, leftover, removals_before))
}

/// The heartbeat deadline logic asked for, or the configured default.
fn heartbeat_interval(ctx: &ConnContext, nanos: i64) -> Duration {
    match nanos {
        n if n > 0 => Duration::from_nanos(n as u64),
        _ => ctx.cfg.default_heartbeat,
    }
}

/// How a session ended.
struct End {
    reason: &'static str,
    /// The stream is between frames, so a close frame may still be written.
    clean: bool,
}

impl End {
    fn clean(reason: &'static str) -> End {
        End {
            reason,
            clean: true,
        }
    }

    fn torn(reason: &'static str) -> End {
        End {
            reason,
            clean: false,
        }
    }
}

/// Reads, dispatches and writes until the connection closes.
async fn session(
    ctx: &ConnContext,
    conn: &mut Conn,
    ch: &Arc<Channel>,
    hb_ms: u64,
    leftover: Vec<Inbound>,
    removals_before: u64,
) -> End {
    let hub = &ctx.hub;
    let mut refresh = RouteRefresh::new(ctx);
    // A route removal finished while this client authenticated: it may have been
    // this key's (a same-key reconnect); make sure the route points here. If that
    // fails, the next client heartbeat tries again.
    if hub.route_removals() != removals_before && heartbeat(ctx, ch).await.is_none() {
        refresh.now(hub.now_ms());
    }
    let mut limits = Limiters::new(ctx);
    let mut out = VecDeque::new();
    let mut inbound = leftover;
    loop {
        let mut items = inbound.drain(..).peekable();
        while let Some(item) = items.next() {
            if ch.is_closed() {
                // Replaced, timed out or shut down while handling a batch.
                break;
            }
            let f = match admit(ctx, ch, &mut limits, item) {
                Admitted::Frame(f) => f,
                Admitted::Handled => continue,
                Admitted::OverRate => break,
                Admitted::End(end) => return end,
            };
            if f.op == Op::HEARTBEAT {
                ch.set_deadline(hub.now_ms().saturating_add(hb_ms));
                if refresh.due(hub.now_ms()) && heartbeat(ctx, ch).await.is_some() {
                    refresh.done(hub.now_ms());
                }
            }
            match dispatch::handle_frame(ctx, ch, &mut limits, f) {
                Action::Done => {}
                Action::Forward(req) => {
                    call(ctx, "receive", ctx.logic.receive(req)).await;
                }
                Action::Ask(req, asked) => {
                    // The frames read with this one that go to logic as well
                    // go with it, in one request (logic answers them in their
                    // order; the chat stores a client's sends together).
                    let mut asks = vec![(req, asked)];
                    let mut over_rate = false;
                    while asks.len() < ASKED_TOGETHER
                        && !ch.is_closed()
                        && matches!(items.peek(), Some(Inbound::Frame(f)) if dispatch::is_ask(ch, f))
                    {
                        let Some(item) = items.next() else { break };
                        let Admitted::Frame(f) = admit(ctx, ch, &mut limits, item) else {
                            // Over the frame rate: the connection is closing.
                            over_rate = true;
                            break;
                        };
                        // (Always an ask: `is_ask` said so.)
                        if let Action::Ask(req, asked) =
                            dispatch::handle_frame(ctx, ch, &mut limits, f)
                        {
                            asks.push((req, asked));
                        }
                    }
                    if let Some(end) = Box::pin(ask(ctx, ch, &mut out, asks)).await {
                        return end;
                    }
                    if over_rate {
                        break;
                    }
                }
                Action::Refresh(f) => {
                    let addr = SocketAddr::new(conn.client, conn.peer.port());
                    Box::pin(dispatch::refresh(ctx, ch, addr.to_string(), f)).await;
                }
                Action::Close(reason) => {
                    ch.close_with(reason);
                    break;
                }
            }
        }
        // (What is left of a batch after a break is dropped.)
        drop(items);
        if let Some(rec) = ch.recovery() {
            if rec.fill_due() && !ch.is_closed() {
                Box::pin(fill(ctx, ch, rec)).await;
            }
        }
        let closing = ch.drain(&mut out);
        if !out.is_empty() {
            if let Some(end) = write_drained(ctx, ch, &mut out, closing).await {
                return end;
            }
        }
        if closing {
            return closed_by_server(ch);
        }
        if conn.eof {
            return End::clean("closed by peer");
        }
        match queued_or_readable(conn, ch).await {
            None => {}
            Some(Err(_)) => return End::torn("socket error"),
            Some(Ok(())) => match conn.read_available() {
                Ok(items) => inbound = items,
                Err(e) => return read_failed(ctx, conn, ch, e),
            },
        }
    }
}

/// Most frames of an answered connection asked about in one request.
const ASKED_TOGETHER: usize = 16;

/// Asks logic about an answered connection's frames read together, in one
/// request, and writes the replies before the next frame is handled. Logic
/// answers them in order and may stop early (its replies' size or time being
/// spent, or a logic that answers only the first): the frames left are asked
/// about again, after the replies so far are written. When a request fails or
/// times out, each frame it held gets the empty echo (logic may have handled
/// some: the client sends again, idempotently).
async fn ask(
    ctx: &ConnContext,
    ch: &Channel,
    out: &mut VecDeque<Outbound>,
    asks: Vec<(herald_rpc::ReceiveReq, Frame)>,
) -> Option<End> {
    let mut asks = asks.into_iter();
    let (mut template, first) = asks.next()?;
    let mut frames: Vec<herald_rpc::Proto> = template.proto.take().into_iter().collect();
    let mut asked = vec![first];
    for (r, a) in asks {
        frames.extend(r.proto);
        asked.push(a);
    }
    let mut done = 0;
    while done < asked.len() {
        let req = herald_rpc::ReceiveReq {
            proto: frames.get(done).cloned(),
            more: frames.get(done + 1..).unwrap_or_default().to_vec(),
            ..template.clone()
        };
        let left = asked.len() - done;
        let (first, more) = match call(ctx, "receive", ctx.logic.receive(req)).await {
            Some(reply) => (reply.proto, reply.more),
            None => (None, vec![herald_rpc::Proto::default(); left - 1]),
        };
        // The first is always answered; of the others, those with a reply (op
        // 0: the empty echo).
        let replies = std::iter::once(first)
            .chain(more.into_iter().map(|p| Some(p).filter(|p| p.op != 0)))
            .take(left);
        for reply in replies {
            dispatch::answer(ch, &asked[done], reply);
            done += 1;
        }
        let closing = ch.drain(out);
        if !out.is_empty() {
            if let Some(end) = write_drained(ctx, ch, out, closing).await {
                return Some(end);
            }
        }
        if closing {
            return Some(closed_by_server(ch));
        }
    }
    None
}

/// Runs the recovery fills that are due: history through logic, bounded by
/// `comet.logic_timeout` (a read that fails or times out is reported to the
/// client as `reload`). Kinds of stream logic said keep no history are not
/// asked about again for a while.
async fn fill(ctx: &ConnContext, ch: &Channel, rec: &Recovery) {
    rec.fill(&ctx.hub, ch, |req| async move {
        let stream = req.stream.clone();
        if ctx.hub.history_off.is_off(&stream) {
            return Some(herald_rpc::HistoryReply::default());
        }
        match tokio::time::timeout(ctx.cfg.logic_timeout, ctx.logic.history(req)).await {
            Ok(Ok(reply)) => {
                if !reply.enabled {
                    ctx.hub.history_off.mark_off(&stream);
                }
                Some(reply)
            }
            Ok(Err(e)) => {
                warn!(%stream, error = %e, "history read failed; the client is told to reload");
                None
            }
            Err(_) => {
                warn!(%stream, "history read timed out; the client is told to reload");
                None
            }
        }
    })
    .await;
}

/// When a session next refreshes its route with logic (a heartbeat call), on the
/// hub clock in milliseconds: the session future lives as long as the
/// connection, so its state is kept small.
struct RouteRefresh {
    every: u64,
    next: u64,
}

impl RouteRefresh {
    /// Every `route_refresh_min..route_refresh_max` (chosen at random per
    /// connection, so refreshes spread out), the first one that far from now.
    fn new(ctx: &ConnContext) -> RouteRefresh {
        let (lo, hi) = (ctx.cfg.route_refresh_min, ctx.cfg.route_refresh_max);
        let every = if hi > lo {
            rand::rng().random_range(lo..hi)
        } else {
            lo
        };
        let every = every.as_millis() as u64;
        RouteRefresh {
            every,
            next: ctx.hub.now_ms().saturating_add(every),
        }
    }

    fn due(&self, now: u64) -> bool {
        now >= self.next
    }

    /// Refreshed at `now`: the next one is due a period later.
    fn done(&mut self, now: u64) {
        self.next = now.saturating_add(self.every);
    }

    /// Due at once (with the next client heartbeat).
    fn now(&mut self, now: u64) {
        self.next = now;
    }
}

/// What became of one item read from an authenticated client.
enum Admitted {
    /// A frame within the client's frame rate, for [`dispatch`].
    Frame(Frame),
    /// Handled here (a WebSocket ping, answered).
    Handled,
    /// Over the frame rate: the channel is closed.
    OverRate,
    /// The session ends.
    End(End),
}

/// Takes a frame or a WebSocket ping from the client's frame budget (control
/// frames cost a write each: they count as frames) and answers pings.
fn admit(ctx: &ConnContext, ch: &Channel, limits: &mut Limiters, item: Inbound) -> Admitted {
    match item {
        Inbound::Frame(_) | Inbound::Ping(_) if over_rate(ctx, ch, limits) => Admitted::OverRate,
        Inbound::Frame(f) => Admitted::Frame(f),
        Inbound::Ping(p) => {
            ch.reply(Outbound::Pong(p));
            Admitted::Handled
        }
        Inbound::Close => Admitted::End(End::clean("closed by peer")),
        Inbound::Upgrade(_) => Admitted::End(End::clean("unexpected upgrade")),
    }
}

/// Takes one frame from the client's frame budget; over it, closes the channel
/// for its frame rate and says so.
fn over_rate(ctx: &ConnContext, ch: &Channel, limits: &mut Limiters) -> bool {
    if limits.frame(ctx) {
        return false;
    }
    ctx.hub.metrics.limit_hit("frames_per_second");
    ch.close_with(CloseReason::FrameRate);
    true
}

/// Waits for queued output (`None`) or input (the socket's readiness). Polling
/// readiness directly keeps no waiter state in the (long-lived, per-connection)
/// session future.
fn queued_or_readable<'a>(
    conn: &'a Conn,
    ch: &'a Channel,
) -> impl Future<Output = Option<std::io::Result<()>>> + 'a {
    std::future::poll_fn(move |cx| {
        if ch.poll_signal(cx) {
            return Poll::Ready(None);
        }
        conn.stream.poll_read_ready(cx).map(Some)
    })
}

/// How a session the server closed ended.
fn closed_by_server(ch: &Channel) -> End {
    End::clean(if ch.timed_out() {
        "heartbeat timeout"
    } else {
        "closed by server"
    })
}

/// How a session whose read failed ended (counted, and for a malformed frame the
/// client told why).
fn read_failed(ctx: &ConnContext, conn: &Conn, ch: &Channel, e: ReadError) -> End {
    match e {
        ReadError::Eof => End::clean("closed by peer"),
        ReadError::Io(_) => End::torn("read failed"),
        ReadError::Tls(_) => {
            ctx.hub.metrics.tls_failures.increment(1);
            End::torn("TLS error")
        }
        ReadError::BadFrame(m) => {
            ctx.hub.metrics.bad_input.increment(1);
            debug!(peer = %conn.peer, key = %ch.key, error = %m, "malformed frame");
            ch.close_with(CloseReason::MalformedFrame);
            End::clean("malformed frame")
        }
        ReadError::BadUpgrade(..) => End::clean("unexpected upgrade"),
    }
}

/// Writes what was drained: at once if the socket takes it, else waiting for the
/// socket within `write_timeout` (boxed, so idle connections do not carry this
/// state). A blocked write does not keep a connection the server closed (slow
/// consumer, replacement, shutdown) alive. Returns how the session ended, if it did.
async fn write_drained(
    ctx: &ConnContext,
    ch: &Channel,
    out: &mut VecDeque<Outbound>,
    closing: bool,
) -> Option<End> {
    let Some(sink) = ch.sink() else {
        return Some(End::torn("no socket"));
    };
    let items = out.len();
    let (frames, rest) = match sink.write_now(out.drain(..)) {
        Ok(w) => (w.frames, w.rest),
        Err(_) => return Some(End::torn("write failed")),
    };
    let blocked = rest.is_some();
    if let Some(rest) = rest {
        let mut write = Box::pin(tokio::time::timeout(
            ctx.cfg.write_timeout,
            sink.finish(rest),
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
            None => return Some(End::torn("closed by server during a write")),
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(_))) => return Some(End::torn("write failed")),
            Some(Err(_)) => {
                ctx.hub.metrics.write_timeouts.increment(1);
                debug!(items, "write timed out");
                return Some(End::torn("write timed out"));
            }
        }
    }
    ch.finish_write();
    // One queue buffer per connection, not one in the channel and one here.
    ch.recycle(out);
    ctx.hub.metrics.writes.increment(1);
    ctx.hub.metrics.frames_delivered.increment(frames);
    if blocked && !closing {
        // Waiting for the socket consumed the wake-up of anything queued
        // meanwhile: signal again so the session looks before sleeping.
        ch.wake();
    }
    None
}

/// Tells the client why it is being closed, if there is a way to: a WebSocket
/// close frame (and, on TLS, close_notify). Best effort, briefly bounded. Boxed by
/// its callers: it is rare, and its timer and write state would otherwise make
/// every idle connection's task larger.
async fn goodbye(ctx: &ConnContext, conn: &Conn, reason: CloseReason) {
    let bound = ctx.cfg.write_timeout.min(Duration::from_secs(1));
    let sink = conn.sink();
    let say = async {
        if conn.is_ws() {
            sink.write_all(&ws::close_frame(reason.code(), reason.text()))
                .await?;
        }
        if let Some(tls) = &conn.tls {
            tls.close_notify();
            sink.finish(crate::sink::Pending::Sealed).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(bound, say).await;
}

/// After the session: leaves the hub and, if this connection still owned its
/// route, tells logic.
async fn finish(ctx: &ConnContext, ch: &Arc<Channel>) {
    let hub = &ctx.hub;
    if !hub.unregister(ch) {
        return;
    }
    let req = DisconnectReq {
        mid: ch.mid,
        key: ch.key.to_string(),
        server: ctx.server_id.clone(),
    };
    call(ctx, "disconnect", ctx.logic.disconnect(req)).await;
    hub.note_route_removal();
    if let Some(newer) = hub.channel(&ch.key) {
        // A new connection with this key registered while the route was being
        // removed: put its route back.
        heartbeat(ctx, &newer).await;
    }
}

/// Tells logic the channel's route is alive (and where), as [`call`] does.
fn heartbeat<'a>(
    ctx: &'a ConnContext,
    ch: &Channel,
) -> std::pin::Pin<Box<dyn Future<Output = Option<()>> + Send + 'a>> {
    let req = HeartbeatReq {
        mid: ch.mid,
        key: ch.key.to_string(),
        server: ctx.server_id.clone(),
    };
    call(ctx, "heartbeat", ctx.logic.heartbeat(req))
}

/// A logic call with a deadline; failures are logged and give `None`. Boxed, so
/// that the connection task only holds a pointer while a (rare) call is pending.
fn call<'a, T: 'a>(
    ctx: &ConnContext,
    what: &'static str,
    fut: impl Future<Output = herald_rpc::RpcResult<T>> + Send + 'a,
) -> std::pin::Pin<Box<dyn Future<Output = Option<T>> + Send + 'a>> {
    let timeout = ctx.cfg.logic_timeout;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CometMetrics;
    use herald_rpc::{ConnectReq, RpcError, RpcResult};

    struct NoLogic;

    #[async_trait::async_trait]
    impl LogicService for NoLogic {
        async fn connect(&self, _: ConnectReq) -> RpcResult<ConnectReply> {
            Err(RpcError::invalid("test"))
        }
        async fn refresh(&self, _: ConnectReq) -> RpcResult<ConnectReply> {
            Err(RpcError::invalid("test"))
        }
        async fn disconnect(&self, _: DisconnectReq) -> RpcResult<herald_rpc::DisconnectReply> {
            Ok(Default::default())
        }
        async fn heartbeat(&self, _: HeartbeatReq) -> RpcResult<()> {
            Ok(())
        }
        async fn renew_online(
            &self,
            _: herald_rpc::OnlineReq,
        ) -> RpcResult<herald_rpc::OnlineReply> {
            Ok(Default::default())
        }
        async fn receive(&self, _: herald_rpc::ReceiveReq) -> RpcResult<herald_rpc::ReceiveReply> {
            Ok(Default::default())
        }
        async fn nodes(&self, _: herald_rpc::NodesReq) -> RpcResult<herald_rpc::NodesReply> {
            Ok(Default::default())
        }
    }

    /// The per-connection task is the largest per-connection allocation; keep an eye
    /// on its size (printed with `--nocapture`).
    #[tokio::test]
    async fn connection_task_size() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let ctx = Arc::new(ConnContext {
            hub: Arc::new(Hub::new(
                1,
                Default::default(),
                crate::channel::OutboxLimits::pushes(1),
                CometMetrics::new(),
            )),
            logic: Arc::new(NoLogic),
            cfg: Arc::new(CometConfig::default()),
            limits: ClientLimits::default(),
            proxies: TrustedProxies::default(),
            ips: IpCounter::new(0),
            server_id: "t".into(),
            shutdown: CancellationToken::new(),
        });
        let kind = ListenerKind {
            websocket: true,
            tls: None,
        };
        {
            let mut conn = Conn::new(
                TcpStream::connect(listener.local_addr().unwrap())
                    .await
                    .unwrap(),
                peer,
                true,
                None,
                ctx.cfg.clone(),
            );
            let mut guard = None;
            {
                let h = handshake::handshake(&ctx, &mut conn, &mut guard);
                println!("handshake future: {} bytes", std::mem::size_of_val(&h));
            }
            let ch = Arc::new(Channel::new(1, "k".into(), 1, peer.ip(), vec![], 8));
            let s = session(&ctx, &mut conn, &ch, 0, Vec::new(), 0);
            println!("session future: {} bytes", std::mem::size_of_val(&s));
        }
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        // Exactly what the accept loop spawns.
        let fut = serve(ctx, stream, peer, &kind, None, slot);
        let size = std::mem::size_of_val(&fut);
        println!(
            "ip guard {} limiters {} transport {} inbound {} outbound {} end {}",
            std::mem::size_of::<Option<IpGuard>>(),
            std::mem::size_of::<Limiters>(),
            std::mem::size_of::<wire::Transport>(),
            std::mem::size_of::<Inbound>(),
            std::mem::size_of::<Outbound>(),
            std::mem::size_of::<End>(),
        );
        println!(
            "connection future: {size} bytes; channel: {} bytes; conn: {} bytes",
            std::mem::size_of::<Channel>(),
            std::mem::size_of::<Conn>(),
        );
        assert!(size < 16 * 1024);
    }
}
