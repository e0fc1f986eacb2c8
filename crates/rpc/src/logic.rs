//! `goim.logic`: the calls logic serves, and the queue message.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;

use crate::protocol::Proto;
use crate::RpcResult;

/// `goim.logic.ConnectReq`: a client authenticates on `server`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ConnectReq {
    /// The comet's server id.
    #[prost(string, tag = "1")]
    pub server: String,
    /// The WebSocket `Cookie` header, or empty.
    #[prost(string, tag = "2")]
    pub cookie: String,
    /// The auth frame's body.
    #[prost(bytes = "bytes", tag = "3")]
    pub token: Bytes,
    /// herald: the client's address (after trusted proxies), `ip:port`.
    #[prost(string, tag = "16")]
    pub client_addr: String,
    /// herald: the WebSocket upgrade's headers (lower-case names; repeated headers
    /// joined with `, `); empty for TCP clients.
    #[prost(map = "string, string", tag = "17")]
    pub headers: HashMap<String, String>,
}

/// `goim.logic.Grant` (herald): what a connection may do beyond its identity.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Grant {
    /// Rooms it may join or change to: exact room keys, or prefixes ending in `*`.
    #[prost(string, repeated, tag = "1")]
    pub rooms: Vec<String>,
    /// No room restriction (`rooms` is ignored).
    #[prost(bool, tag = "2")]
    pub any_room: bool,
    /// Ops it may add to its accept filter.
    #[prost(int32, repeated, tag = "3")]
    pub ops: Vec<i32>,
    /// No op restriction (`ops` is ignored).
    #[prost(bool, tag = "4")]
    pub any_op: bool,
    /// Unix time (seconds) its credentials expire; 0 = never.
    #[prost(int64, tag = "5")]
    pub expires_at: i64,
}

impl Grant {
    /// Anything, for ever (goim's behaviour).
    pub fn unrestricted() -> Grant {
        Grant {
            any_room: true,
            any_op: true,
            ..Default::default()
        }
    }

    /// Whether the connection may be in `room` (an empty room, leaving, always).
    pub fn allows_room(&self, room: &str) -> bool {
        room.is_empty()
            || self.any_room
            || self.rooms.iter().any(|r| match r.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => r == room,
            })
    }

    /// Whether the connection may accept pushes with `op`.
    pub fn allows_op(&self, op: i32) -> bool {
        self.any_op || self.ops.contains(&op)
    }
}

/// `goim.logic.ConnectReply`: who the client is and how to hold the connection.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ConnectReply {
    /// Member id (0 = anonymous).
    #[prost(int64, tag = "1")]
    pub mid: i64,
    /// Connection key (generated when the client sent none).
    #[prost(string, tag = "2")]
    pub key: String,
    /// Initial room key.
    #[prost(string, tag = "3")]
    pub room_id: String,
    /// Ops accepted for key, mid and broadcast pushes.
    #[prost(int32, repeated, tag = "4")]
    pub accepts: Vec<i32>,
    /// Heartbeat deadline in nanoseconds.
    #[prost(int64, tag = "5")]
    pub heartbeat: i64,
    /// herald: the connection's rights; absent = anything, for ever (goim).
    #[prost(message, optional, tag = "16")]
    pub grant: Option<Grant>,
}

/// `goim.logic.DisconnectReq`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DisconnectReq {
    /// Member id.
    #[prost(int64, tag = "1")]
    pub mid: i64,
    /// Connection key.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The comet's server id; a route is removed only if it still points here.
    #[prost(string, tag = "3")]
    pub server: String,
}

/// `goim.logic.DisconnectReply`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DisconnectReply {
    /// Whether a route was removed.
    #[prost(bool, tag = "1")]
    pub has: bool,
}

/// `goim.logic.HeartbeatReq`: the comet refreshes a connection's route.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct HeartbeatReq {
    /// Member id.
    #[prost(int64, tag = "1")]
    pub mid: i64,
    /// Connection key.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The comet's server id.
    #[prost(string, tag = "3")]
    pub server: String,
}

/// `goim.logic.HeartbeatReply` (empty).
#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct HeartbeatReply {}

/// `goim.logic.ReceiveReply` (empty).
#[derive(Clone, Copy, PartialEq, ::prost::Message)]
pub struct ReceiveReply {}

/// `goim.logic.OnlineReq`: a comet reports its room counts.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct OnlineReq {
    /// The comet's server id.
    #[prost(string, tag = "1")]
    pub server: String,
    /// Members per room on that comet.
    #[prost(map = "string, int32", tag = "2")]
    pub room_count: HashMap<String, i32>,
}

/// `goim.logic.OnlineReply`: cluster-wide room counts.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct OnlineReply {
    /// Members per room over all comets.
    #[prost(map = "string, int32", tag = "1")]
    pub all_room_count: HashMap<String, i32>,
}

/// `goim.logic.ReceiveReq`: an upstream message from a client.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ReceiveReq {
    /// Sender's member id.
    #[prost(int64, tag = "1")]
    pub mid: i64,
    /// The frame the client sent.
    #[prost(message, optional, tag = "2")]
    pub proto: Option<Proto>,
}

/// `goim.logic.NodesReq`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct NodesReq {
    /// Client platform (`web` gets domains, others addresses).
    #[prost(string, tag = "1")]
    pub platform: String,
    /// Client address.
    #[prost(string, tag = "2")]
    pub client_ip: String,
}

/// `goim.logic.Backoff`: reconnect backoff advertised to clients.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Backoff {
    /// Largest delay, seconds.
    #[prost(int32, tag = "1")]
    pub max_delay: i32,
    /// First delay, seconds.
    #[prost(int32, tag = "2")]
    pub base_delay: i32,
    /// Growth factor.
    #[prost(float, tag = "3")]
    pub factor: f32,
    /// Jitter fraction.
    #[prost(float, tag = "4")]
    pub jitter: f32,
}

/// `goim.logic.NodesReply`: where and how a client should connect.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct NodesReply {
    /// Fallback domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// TCP port.
    #[prost(int32, tag = "2")]
    pub tcp_port: i32,
    /// WebSocket port.
    #[prost(int32, tag = "3")]
    pub ws_port: i32,
    /// Secure WebSocket port.
    #[prost(int32, tag = "4")]
    pub wss_port: i32,
    /// Client heartbeat interval, seconds.
    #[prost(int32, tag = "5")]
    pub heartbeat: i32,
    /// Comet domains or addresses, best first.
    #[prost(string, repeated, tag = "6")]
    pub nodes: Vec<String>,
    /// Reconnect backoff.
    #[prost(message, optional, tag = "7")]
    pub backoff: Option<Backoff>,
    /// Missed heartbeats tolerated.
    #[prost(int32, tag = "8")]
    pub heartbeat_max: i32,
}

/// `goim.logic.PushMsg.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum PushType {
    /// To keys on one comet.
    Push = 0,
    /// To a room on every comet.
    Room = 1,
    /// To everybody.
    Broadcast = 2,
}

/// `goim.logic.PushMsg`: what logic puts on the queue and job consumes.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PushMsg {
    /// Kind of push.
    #[prost(enumeration = "PushType", tag = "1")]
    pub r#type: i32,
    /// Business op written into the client frame.
    #[prost(int32, tag = "2")]
    pub operation: i32,
    /// Broadcast speed (connections per second over the cluster).
    #[prost(int32, tag = "3")]
    pub speed: i32,
    /// Target comet's server id (PUSH).
    #[prost(string, tag = "4")]
    pub server: String,
    /// Room key (ROOM).
    #[prost(string, tag = "5")]
    pub room: String,
    /// Connection keys on `server` (PUSH).
    #[prost(string, repeated, tag = "6")]
    pub keys: Vec<String>,
    /// The message body.
    #[prost(bytes = "bytes", tag = "7")]
    pub msg: Bytes,
}

impl PushMsg {
    /// The queue partition key goim uses: the first key for PUSH, the room for ROOM,
    /// the decimal op for BROADCAST. Messages with equal keys stay in order.
    pub fn partition_key(&self) -> String {
        match PushType::try_from(self.r#type) {
            Ok(PushType::Push) => self.keys.first().cloned().unwrap_or_default(),
            Ok(PushType::Room) => self.room.clone(),
            _ => self.operation.to_string(),
        }
    }
}

/// What logic does for comets.
#[async_trait]
pub trait LogicService: Send + Sync + 'static {
    /// Authenticates a connection and records its route.
    async fn connect(&self, req: ConnectReq) -> RpcResult<ConnectReply>;
    /// Removes a connection's route if it still points at the caller's server.
    async fn disconnect(&self, req: DisconnectReq) -> RpcResult<DisconnectReply>;
    /// Refreshes a connection's route, re-adding it if it expired or was removed.
    async fn heartbeat(&self, req: HeartbeatReq) -> RpcResult<()>;
    /// Records a comet's room counts and returns the cluster's.
    async fn renew_online(&self, req: OnlineReq) -> RpcResult<OnlineReply>;
    /// Accepts an upstream client message.
    async fn receive(&self, req: ReceiveReq) -> RpcResult<()>;
    /// Picks comets for a client.
    async fn nodes(&self, req: NodesReq) -> RpcResult<NodesReply>;
    /// Checks fresh credentials of an authenticated connection (token refresh) and
    /// returns who they name and what they grant; writes no route.
    async fn refresh(&self, req: ConnectReq) -> RpcResult<ConnectReply>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn push_msg_wire_matches_goim_field_numbers() {
        let m = PushMsg {
            r#type: PushType::Room as i32,
            operation: 1000,
            speed: 0,
            server: String::new(),
            room: "live://1".into(),
            keys: vec![],
            msg: Bytes::from_static(b"hi"),
        };
        let bytes = m.encode_to_vec();
        // type=1 (tag 1 varint), operation=1000 (tag 2), room (tag 5), msg (tag 7)
        assert_eq!(
            bytes,
            [
                &[0x08, 0x01, 0x10, 0xe8, 0x07, 0x2a, 0x08][..],
                b"live://1",
                &[0x3a, 0x02],
                b"hi"
            ]
            .concat()
        );
        assert_eq!(PushMsg::decode(&bytes[..]).unwrap(), m);
        assert_eq!(m.partition_key(), "live://1");
    }
}
