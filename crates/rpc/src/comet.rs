//! `goim.comet`: the calls a comet serves.

use async_trait::async_trait;

use crate::RpcResult;

pub use crate::goim::comet::{
    BroadcastReply, BroadcastReq, BroadcastRoomReply, BroadcastRoomReq, PushMsgReply, PushMsgReq,
    RoomsReply, RoomsReq,
};

/// What a comet does for the other tiers.
#[async_trait]
pub trait CometService: Send + Sync + 'static {
    /// Delivers to the given keys. Keys that are absent or do not accept the op are
    /// skipped; a full outbound queue is a slow consumer, handled by the comet's policy.
    async fn push_msg(&self, req: PushMsgReq) -> RpcResult<()>;
    /// Delivers to every connection that accepts the op.
    async fn broadcast(&self, req: BroadcastReq) -> RpcResult<()>;
    /// Delivers to every member of a room.
    async fn broadcast_room(&self, req: BroadcastRoomReq) -> RpcResult<()>;
    /// Lists the rooms with members.
    async fn rooms(&self) -> RpcResult<RoomsReply>;
}
