//! `goim.comet`: the calls a comet serves.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::protocol::Proto;
use crate::RpcResult;

/// `goim.comet.PushMsgReq`: deliver `proto` to the connections with these keys.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PushMsgReq {
    /// Connection keys held by the comet.
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    /// The frame(s) to deliver, normally OpRaw.
    #[prost(message, optional, tag = "2")]
    pub proto: Option<Proto>,
    /// The business op; only connections accepting it receive the push.
    #[prost(int32, tag = "3")]
    pub proto_op: i32,
}

/// `goim.comet.BroadcastReq`: deliver to every connection accepting `proto_op`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BroadcastReq {
    /// The business op used for the accept filter.
    #[prost(int32, tag = "1")]
    pub proto_op: i32,
    /// The frame(s) to deliver.
    #[prost(message, optional, tag = "2")]
    pub proto: Option<Proto>,
    /// Connections per second on this comet; 0 = as fast as possible.
    #[prost(int32, tag = "3")]
    pub speed: i32,
}

/// `goim.comet.BroadcastRoomReq`: deliver to every member of a room (no op filter).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct BroadcastRoomReq {
    /// Room key, `type://id`.
    #[prost(string, tag = "1")]
    pub room_id: String,
    /// The frame(s) to deliver, normally an OpRaw batch.
    #[prost(message, optional, tag = "2")]
    pub proto: Option<Proto>,
}

/// `goim.comet.RoomsReply`: the rooms with at least one member on the comet.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RoomsReply {
    /// Room keys (the value is always true).
    #[prost(map = "string, bool", tag = "1")]
    pub rooms: HashMap<String, bool>,
}

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

/// `goim.comet.PushMsgReply` (empty).
#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct PushMsgReply {}

/// `goim.comet.BroadcastReply` (empty).
#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct BroadcastReply {}

/// `goim.comet.BroadcastRoomReply` (empty).
#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct BroadcastRoomReply {}

/// `goim.comet.RoomsReq` (empty).
#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct RoomsReq {}
