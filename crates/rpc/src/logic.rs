//! `goim.logic`: the calls logic serves, and the queue message.

use async_trait::async_trait;

use crate::RpcResult;

pub use crate::goim::logic::push_msg::Type as PushType;
pub use crate::goim::logic::{
    Backoff, ConnectReply, ConnectReq, DisconnectReply, DisconnectReq, Grant, HeartbeatReply,
    HeartbeatReq, HistoryEntry, HistoryReply, HistoryReq, NodesReply, NodesReq, OnlineReply,
    OnlineReq, PushMsg, ReceiveReply, ReceiveReq,
};

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
    /// Accepts an upstream client message; for an answered connection
    /// (`ConnectReply::answered`), the reply names the frame to send back.
    async fn receive(&self, req: ReceiveReq) -> RpcResult<ReceiveReply>;
    /// Picks comets for a client.
    async fn nodes(&self, req: NodesReq) -> RpcResult<NodesReply>;
    /// Checks fresh credentials of an authenticated connection (token refresh) and
    /// returns who they name and what they grant; writes no route.
    async fn refresh(&self, req: ConnectReq) -> RpcResult<ConnectReply>;
    /// Reads a stream's history after a position (herald: recovery). A logic
    /// that keeps no history answers `enabled: false`.
    async fn history(&self, req: HistoryReq) -> RpcResult<HistoryReply> {
        let _ = req;
        Ok(HistoryReply::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
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
            position: None,
            queued_us: 0,
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
