//! From accept to an authenticated connection: the TLS handshake (on TLS
//! listeners), the WebSocket upgrade (on WebSocket listeners), then the auth frame,
//! which logic answers.
//!
//! Frames before the auth frame are discarded, as in goim. The TLS handshake and
//! the upgrade must finish within `limits.client.upgrade_timeout`; the whole
//! sequence within `comet.handshake_timeout` (enforced by the caller).

use std::collections::HashMap;

use herald_limits::IpGuard;
use herald_proto::{ws, Op};
use herald_rpc::{ConnectReply, ConnectReq, ErrorKind};
use tracing::debug;

use herald_proto::recovery::RecoverRequest;

use super::wire::{Conn, Inbound, ReadError, Transport};
use super::ConnContext;
use crate::channel::CloseReason;
use crate::sink::Pending;

/// What a successful handshake produced.
pub(super) struct Authenticated {
    pub reply: ConnectReply,
    /// `ver` and `seq` of the auth frame, echoed in the reply.
    pub ver: i16,
    pub seq: i32,
    /// Frames that arrived after the auth frame in the same read.
    pub leftover: Vec<Inbound>,
    /// Route removals completed before logic was asked to connect.
    pub removals_before: u64,
    /// The client's recovery request (`"recover"` in its auth body).
    pub recover: Option<RecoverRequest>,
}

/// Why a connection ended before it was authenticated.
pub(super) struct Refused {
    /// For the log.
    pub reason: String,
    /// What to tell a WebSocket client that got past the upgrade.
    pub close: Option<CloseReason>,
}

impl Refused {
    fn quietly(reason: impl Into<String>) -> Refused {
        Refused {
            reason: reason.into(),
            close: None,
        }
    }
}

/// Whether the connection is past its TLS handshake and WebSocket upgrade.
fn handshake_done(conn: &Conn) -> bool {
    let upgraded = match &conn.transport {
        Transport::Tcp => true,
        Transport::Ws { upgraded, .. } => *upgraded,
    };
    upgraded && !conn.tls.as_ref().is_some_and(|t| t.is_handshaking())
}

/// Reads until the auth frame (answering the WebSocket upgrade on the way) and
/// authenticates with logic. `ip_guard` holds the connection's count for its
/// address; a proxied WebSocket client is counted here, by its forwarded address.
pub(super) async fn handshake(
    ctx: &ConnContext,
    conn: &mut Conn,
    ip_guard: &mut Option<IpGuard>,
) -> Result<Authenticated, Refused> {
    let upgrade_deadline = tokio::time::Instant::now() + ctx.limits.upgrade_timeout;
    let mut cookie = String::new();
    let mut headers: HashMap<String, String> = HashMap::new();
    let mut before_auth = BeforeAuth::new(ctx);
    loop {
        if conn.eof {
            return Err(Refused::quietly("closed by peer"));
        }
        wait_readable(ctx, conn, upgrade_deadline).await?;
        let inbound = match conn.read_available() {
            Ok(v) => v,
            Err(ReadError::BadUpgrade(status, reason, m)) => {
                ctx.hub.metrics.bad_input.increment(1);
                let _ = conn
                    .write_plain(ws::http_error(status, reason, &m).as_bytes())
                    .await;
                return Err(Refused::quietly(format!("bad upgrade: {m}")));
            }
            Err(e) => return Err(read_refused(ctx, e)),
        };
        finish_tls_flight(conn).await?;
        let mut items = inbound.into_iter();
        while let Some(item) = items.next() {
            match item {
                Inbound::Upgrade(up) => {
                    count_forwarded_client(ctx, conn, ip_guard, &up).await?;
                    conn.write_plain(ws::switching_protocols(&up.accept).as_bytes())
                        .await
                        .map_err(|e| Refused::quietly(e.to_string()))?;
                    let up = *up;
                    cookie = up.cookie;
                    headers = up.headers.into_iter().collect();
                    headers.insert(":path".into(), up.target);
                }
                Inbound::Ping(p) => {
                    before_auth.one_more(ctx)?;
                    conn.write_plain(&pong(&p))
                        .await
                        .map_err(|e| Refused::quietly(e.to_string()))?;
                }
                Inbound::Close => return Err(Refused::quietly("closed by peer")),
                Inbound::Frame(f) if f.op == Op::AUTH => {
                    // A malformed recovery request is a malformed auth body:
                    // refused before logic is asked.
                    let recover = RecoverRequest::from_auth_body(&f.body).map_err(|e| {
                        ctx.hub.metrics.bad_input.increment(1);
                        Refused {
                            reason: e.to_string(),
                            close: Some(CloseReason::MalformedFrame),
                        }
                    })?;
                    let removals_before = ctx.hub.route_removals();
                    let req = ConnectReq {
                        server: ctx.server_id.clone(),
                        cookie: std::mem::take(&mut cookie),
                        token: f.body.clone(),
                        client_addr: std::net::SocketAddr::new(conn.client, conn.peer.port())
                            .to_string(),
                        headers: std::mem::take(&mut headers),
                    };
                    let reply = authenticate(ctx, req).await?;
                    return Ok(Authenticated {
                        reply,
                        ver: f.ver,
                        seq: f.seq,
                        leftover: items.collect(),
                        removals_before,
                        recover,
                    });
                }
                Inbound::Frame(f) => {
                    before_auth.one_more(ctx)?;
                    debug!(peer = %conn.peer, op = f.op, "frame before auth ignored")
                }
            }
        }
    }
}

/// Waits until the socket is readable; until the TLS handshake and the upgrade
/// are done, at most until `upgrade_deadline`.
async fn wait_readable(
    ctx: &ConnContext,
    conn: &Conn,
    upgrade_deadline: tokio::time::Instant,
) -> Result<(), Refused> {
    let readable = if handshake_done(conn) {
        conn.stream.readable().await
    } else {
        match tokio::time::timeout_at(upgrade_deadline, conn.stream.readable()).await {
            Ok(r) => r,
            Err(_) => {
                ctx.hub.metrics.limit_hit("upgrade_timeout");
                return Err(Refused::quietly("TLS handshake or upgrade timeout"));
            }
        }
    };
    readable.map_err(|e| Refused::quietly(e.to_string()))
}

/// Why a read before auth ended the connection (a malformed upgrade, which is
/// answered first, aside).
fn read_refused(ctx: &ConnContext, e: ReadError) -> Refused {
    match e {
        ReadError::Eof => Refused::quietly("closed by peer"),
        ReadError::Io(e) => Refused::quietly(e.to_string()),
        ReadError::Tls(e) => {
            ctx.hub.metrics.tls_failures.increment(1);
            Refused::quietly(format!("TLS: {e}"))
        }
        ReadError::BadFrame(m) => {
            ctx.hub.metrics.bad_input.increment(1);
            Refused {
                reason: format!("malformed frame: {m}"),
                close: Some(CloseReason::MalformedFrame),
            }
        }
        ReadError::BadUpgrade(_, _, m) => Refused::quietly(format!("bad upgrade: {m}")),
    }
}

/// Sends the rest of a TLS handshake flight the socket did not take whole, or
/// the client waits for it while we wait for the client.
async fn finish_tls_flight(conn: &Conn) -> Result<(), Refused> {
    if !conn.tls.as_ref().is_some_and(|tls| tls.has_pending()) {
        return Ok(());
    }
    conn.sink()
        .finish(Pending::Sealed)
        .await
        .map_err(|e| Refused::quietly(e.to_string()))
}

/// Behind a trusted proxy, counts the client the proxy names (not the proxy)
/// under its address's connection limit; over the limit, answers 429.
async fn count_forwarded_client(
    ctx: &ConnContext,
    conn: &mut Conn,
    ip_guard: &mut Option<IpGuard>,
    up: &ws::Upgrade,
) -> Result<(), Refused> {
    if !ctx.proxies.trusts(conn.client) {
        return Ok(());
    }
    conn.client = ctx
        .proxies
        .client_ip(conn.peer.ip(), up.header("x-forwarded-for"));
    if let Some(g) = ctx.ips.try_acquire(conn.client) {
        *ip_guard = Some(g);
        return Ok(());
    }
    ctx.hub.metrics.limit_hit("connections_per_ip");
    let too_many = ws::http_error(
        429,
        "Too Many Requests",
        "too many connections from this address",
    );
    let _ = conn.write_plain(too_many.as_bytes()).await;
    Err(Refused::quietly("too many connections from address"))
}

/// The answer to a WebSocket ping before auth.
fn pong(p: &[u8]) -> Vec<u8> {
    let (h, hl) = ws::server_header(ws::opcode::PONG, p.len());
    let mut out = h[..hl].to_vec();
    out.extend_from_slice(p);
    out
}

/// Everything a client sends before auth is work for nothing (frames are
/// dropped, pings answered with a write each): at most `frames_burst` of it.
struct BeforeAuth {
    count: u32,
    allowance: u32,
}

impl BeforeAuth {
    fn new(ctx: &ConnContext) -> BeforeAuth {
        BeforeAuth {
            count: 0,
            allowance: ctx.limits.frames_burst.max(1),
        }
    }

    /// Counts one more; past the allowance the connection is refused.
    fn one_more(&mut self, ctx: &ConnContext) -> Result<(), Refused> {
        self.count += 1;
        if self.count > self.allowance {
            return Err(too_much_before_auth(ctx));
        }
        Ok(())
    }
}

fn too_much_before_auth(ctx: &ConnContext) -> Refused {
    ctx.hub.metrics.limit_hit("frames_per_second");
    Refused {
        reason: "too many frames before auth".into(),
        close: Some(CloseReason::FrameRate),
    }
}

/// Asks logic who the client is, within `logic_timeout`.
async fn authenticate(ctx: &ConnContext, req: ConnectReq) -> Result<ConnectReply, Refused> {
    let refused = |reason: String, close: CloseReason| {
        ctx.hub.metrics.auth_failures.increment(1);
        Refused {
            reason,
            close: Some(close),
        }
    };
    match tokio::time::timeout(ctx.cfg.logic_timeout, ctx.logic.connect(req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(refused(
            format!("auth refused: {e}"),
            match e.kind {
                ErrorKind::Unavailable | ErrorKind::DeadlineExceeded => {
                    CloseReason::AuthUnavailable
                }
                _ => CloseReason::AuthRefused,
            },
        )),
        Err(_) => Err(refused(
            "auth timed out in logic".into(),
            CloseReason::AuthUnavailable,
        )),
    }
}
