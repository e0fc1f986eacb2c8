//! What an authenticated connection's frames do: heartbeats, room changes and
//! op filters (checked against the connection's grant and limits), credential
//! refreshes, and business ops forwarded to logic.

use std::sync::Arc;

use bytes::Bytes;
use herald_limits::Budget;
use herald_proto::{Frame, Op};
use herald_rpc::{ConnectReq, ErrorKind, Proto, ReceiveReq};
use serde_json::json;

use super::ConnContext;
use crate::channel::{Channel, CloseReason, Outbound, WatchError};

/// What the connection task does after a frame (its reply, if any, is queued).
pub(super) enum Action {
    /// Nothing more.
    Done,
    /// Forward an upstream message to logic.
    Forward(ReceiveReq),
    /// Forward an upstream message of an answered connection to logic and send
    /// its reply to the frame (header only: the body travels in the request).
    Ask(ReceiveReq, Frame),
    /// Check fresh credentials with logic (op 22).
    Refresh(Frame),
    /// Close the connection.
    Close(CloseReason),
}

/// Per-connection rate limits on what a client sends (24 bytes: the rates live
/// in the comet's settings).
pub(super) struct Limiters {
    /// Frames of any kind.
    frames: Budget,
    /// Room changes.
    rooms: Budget,
    /// Credential refreshes (op 22).
    refreshes: Budget,
}

/// Credential refreshes a connection may ask for: one per `REFRESH_EVERY` seconds, a
/// few at once.
const REFRESH_EVERY: f32 = 10.0;
const REFRESH_BURST: u32 = 3;

impl Limiters {
    pub fn new(ctx: &ConnContext) -> Limiters {
        let l = &ctx.limits;
        let now = ctx.hub.now_ms();
        Limiters {
            frames: Budget::full(l.frames_burst, now),
            rooms: Budget::full(l.room_changes_per_minute, now),
            refreshes: Budget::full(REFRESH_BURST, now),
        }
    }

    fn refresh(&mut self, ctx: &ConnContext) -> bool {
        self.refreshes
            .try_take(1.0 / REFRESH_EVERY, REFRESH_BURST, ctx.hub.now_ms())
    }

    /// Takes a frame from the frame budget.
    pub fn frame(&mut self, ctx: &ConnContext) -> bool {
        let l = &ctx.limits;
        self.frames
            .try_take(l.frames_per_second as f32, l.frames_burst, ctx.hub.now_ms())
    }

    fn room_change(&mut self, ctx: &ConnContext) -> bool {
        let l = &ctx.limits;
        self.rooms.try_take(
            l.room_changes_per_minute as f32 / 60.0,
            l.room_changes_per_minute,
            ctx.hub.now_ms(),
        )
    }
}

/// Handles one frame from an authenticated client and queues its reply.
pub(super) fn handle_frame(
    ctx: &ConnContext,
    ch: &Arc<Channel>,
    limits: &mut Limiters,
    f: Frame,
) -> Action {
    if !comets_own(ch, f.op) {
        return forward(ch, f);
    }
    let reply = match f.op {
        Op::HEARTBEAT => heartbeat_reply(ctx, ch, &f),
        Op::CHANGE_ROOM => match change_room(ctx, ch, limits, &f) {
            Ok(reply) => reply,
            Err(reason) => return Action::Close(reason),
        },
        Op::SUB => match watch_ops(ctx, ch, &f) {
            Ok(reply) => reply,
            Err(reason) => return Action::Close(reason),
        },
        Op::UNSUB => unwatch_ops(ch, &f),
        // Op::REFRESH, of a connection with a grant.
        _ => {
            if limits.refresh(ctx) {
                return Action::Refresh(f);
            }
            refresh_refused(ctx, &f)
        }
    };
    ch.reply(Outbound::Frame(reply));
    Action::Done
}

/// Whether comet handles frames of `op` itself on this connection (else they
/// go to logic).
fn comets_own(ch: &Channel, op: i32) -> bool {
    matches!(op, Op::HEARTBEAT | Op::CHANGE_ROOM | Op::SUB | Op::UNSUB)
        || (op == Op::REFRESH && ch.grant().is_some())
}

/// Whether `f` is a frame [`handle_frame`] turns into [`Action::Ask`]: an
/// answered connection's frame for logic.
pub(super) fn is_ask(ch: &Channel, f: &Frame) -> bool {
    ch.is_answered() && !comets_own(ch, f.op)
}

/// Op 2: the reply carries the online count of the connection's room.
fn heartbeat_reply(ctx: &ConnContext, ch: &Channel, f: &Frame) -> Frame {
    let online = ch.room().map_or(0, |r| ctx.hub.room_online(&r));
    Frame::reply_to(
        f,
        Op::HEARTBEAT_REPLY,
        Bytes::copy_from_slice(&online.to_be_bytes()),
    )
}

/// Op 12: moves the connection to the room in the body, if its grant and the
/// limits allow; the reply names the room it is in afterwards. A client over its
/// room-change rate is closed.
fn change_room(
    ctx: &ConnContext,
    ch: &Arc<Channel>,
    limits: &mut Limiters,
    f: &Frame,
) -> Result<Frame, CloseReason> {
    if !limits.room_change(ctx) {
        ctx.hub.metrics.limit_hit("room_changes");
        return Err(CloseReason::RoomChangeRate);
    }
    let room = String::from_utf8_lossy(&f.body);
    let room = room.trim();
    let too_long = room.len() > ctx.limits.max_room_key;
    if too_long {
        ctx.hub.metrics.limit_hit("room_key_length");
    }
    if !too_long && ch.may_join(room) {
        if let Some(rec) = ch.recovery() {
            // Tracked before joining, so the new room's pushes are held until
            // its position is known (op 25, after the reply).
            rec.change_room(ch, room);
        }
        ctx.hub.change_room(ch, room);
        return Ok(Frame::reply_to(f, Op::CHANGE_ROOM_REPLY, f.body.clone()));
    }
    // Refused: the reply names the room the connection is still in.
    if !too_long {
        ctx.hub.metrics.grant_refusals_room.increment(1);
    }
    let current = ch.room().map(|r| Bytes::copy_from_slice(r.as_bytes()));
    Ok(Frame::reply_to(
        f,
        Op::CHANGE_ROOM_REPLY,
        current.unwrap_or_default(),
    ))
}

/// Op 14: adds the listed ops to those the connection receives (within its
/// grant). A client over the accept limit is closed.
fn watch_ops(ctx: &ConnContext, ch: &Channel, f: &Frame) -> Result<Frame, CloseReason> {
    let body = match herald_proto::parse_op_list(&f.body) {
        // goim changes nothing for a malformed list and still echoes it.
        None => f.body.clone(),
        Some(ops) => match ch.watch(&ops, ctx.limits.max_accepts) {
            Err(WatchError::TooMany) => {
                ctx.hub.metrics.limit_hit("accepts");
                return Err(CloseReason::AcceptLimit);
            }
            Ok(added) if ch.grant().is_some() => {
                if added.len() < ops.len() {
                    ctx.hub.metrics.grant_refusals_op.increment(1);
                }
                // The reply lists the ops actually added.
                let list: Vec<String> = added.iter().map(i32::to_string).collect();
                Bytes::from(list.join(","))
            }
            Ok(_) => f.body.clone(),
        },
    };
    Ok(Frame::reply_to(f, Op::SUB_REPLY, body))
}

/// Op 16: removes the listed ops; the reply echoes the list.
fn unwatch_ops(ch: &Channel, f: &Frame) -> Frame {
    if let Some(ops) = herald_proto::parse_op_list(&f.body) {
        ch.unwatch(&ops);
    }
    Frame::reply_to(f, Op::UNSUB_REPLY, f.body.clone())
}

/// Op 22 over the refresh rate: answered without asking logic (and its
/// authenticator, maybe a webhook), so a client refreshing in a loop costs
/// little.
fn refresh_refused(ctx: &ConnContext, f: &Frame) -> Frame {
    ctx.hub.metrics.limit_hit("refreshes");
    let body = json!({"code": -429, "message": "refresh rate exceeded; refresh near expiry"});
    Frame::reply_to(f, Op::REFRESH_REPLY, Bytes::from(body.to_string()))
}

/// Any other op: acknowledged with an empty reply of the same op, and forwarded
/// to logic. An answered connection's frame (with its grant's context) gets
/// logic's reply instead.
fn forward(ch: &Channel, f: Frame) -> Action {
    let asked = Frame::reply_to(&f, f.op, Bytes::new());
    let mut req = ReceiveReq {
        mid: ch.mid,
        proto: Some(Proto {
            ver: f.ver as i32,
            op: f.op,
            seq: f.seq,
            body: f.body,
        }),
        context: Bytes::new(),
        more: Vec::new(),
    };
    if ch.is_answered() {
        if let Some(g) = ch.grant() {
            req.context = g.context.clone();
        }
        return Action::Ask(req, asked);
    }
    ch.reply(Outbound::Frame(asked));
    Action::Forward(req)
}

/// Queues logic's reply to an answered connection's frame (`asked`: the
/// request's header); without one (logic unreachable, or nothing to say), goim's
/// empty echo.
pub(super) fn answer(ch: &Channel, asked: &Frame, reply: Option<Proto>) {
    let frame = match reply {
        Some(p) => Frame::reply_to(asked, p.op, p.body),
        None => Frame::reply_to(asked, asked.op, Bytes::new()),
    };
    ch.reply(Outbound::Frame(frame));
}

/// Checks the credentials in an op-22 frame with logic and, when they name the
/// same identity, puts their grant and expiry in force; queues the op-23 reply.
pub(super) async fn refresh(ctx: &ConnContext, ch: &Arc<Channel>, client_addr: String, f: Frame) {
    let req = ConnectReq {
        server: ctx.server_id.clone(),
        cookie: String::new(),
        token: f.body.clone(),
        client_addr,
        headers: Default::default(),
    };
    let answer = match tokio::time::timeout(ctx.cfg.logic_timeout, ctx.logic.refresh(req)).await {
        Ok(Ok(r)) if r.mid != ch.mid || !(r.key.is_empty() || *r.key == *ch.key) => {
            json!({"code": -403, "message": "the credentials name another identity"})
        }
        Ok(Ok(r)) => {
            let grant = r.grant.unwrap_or_else(herald_rpc::Grant::unrestricted);
            let expires_at = grant.expires_at;
            ch.set_expiry(ctx.hub.expiry_ms(expires_at));
            if let Some(room) = ch.room() {
                if !grant.allows_room(&room) {
                    if let Some(rec) = ch.recovery() {
                        rec.change_room(ch, "");
                    }
                    ctx.hub.change_room(ch, "");
                }
            }
            ch.set_grant(Some(grant));
            ctx.hub.metrics.refreshes_ok.increment(1);
            json!({"code": 0, "expires_at": expires_at})
        }
        Ok(Err(e)) => {
            ctx.hub.metrics.refreshes_refused.increment(1);
            // The reason stays in the log: it may name internal addresses or what
            // an auth backend said. An outage is not a verdict on the credentials:
            // say so, so the client keeps them and tries again.
            tracing::debug!(key = %ch.key, error = %e, "refresh refused");
            match e.kind {
                ErrorKind::Unavailable | ErrorKind::DeadlineExceeded => json!({
                    "code": -503, "message": "the credentials could not be checked; try again"
                }),
                _ => json!({"code": -401, "message": "credentials refused"}),
            }
        }
        Err(_) => {
            ctx.hub.metrics.refreshes_refused.increment(1);
            json!({"code": -503, "message": "refresh timed out"})
        }
    };
    ch.reply(Outbound::Frame(Frame::reply_to(
        &f,
        Op::REFRESH_REPLY,
        Bytes::from(answer.to_string()),
    )));
}
