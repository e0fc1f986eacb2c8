//! How herald's tiers talk to each other.
//!
//! [`CometService`] is what job (pushes) and logic (room listings) call on a comet;
//! [`LogicService`] is what comet calls on logic (connect, disconnect, heartbeat,
//! online renewal, upstream messages, node lists). The request and reply types are
//! protobuf messages with goim's packages and field numbers (`goim.protocol`,
//! `goim.comet`, `goim.logic`), so the same values travel in-process in standalone
//! mode, over gRPC between processes, and through the queue ([`PushMsg`]).
//!
//! The in-process adapter is the implementation itself: comet's hub implements
//! [`CometService`] and logic implements [`LogicService`]; the binary hands each tier
//! an `Arc<dyn …>` of the other.
//!
//! Between processes the calls go over gRPC ([`grpc`]), protected by
//! [`transport`]: a shared cluster token and TLS.
//!
//! The messages are generated at build time from `proto/goim/*.proto` (module
//! [`goim`], one submodule per protobuf package, with the gRPC clients and
//! servers); [`protocol`], [`comet`] and [`logic`] re-export them under their
//! message names and add behaviour.

pub mod comet;
pub mod grpc;
pub mod logic;
pub mod protocol;
pub mod transport;

#[cfg(test)]
mod golden;

/// The code generated from `proto/goim/`: messages, enums, and the gRPC client
/// and server of each service. Module paths follow the protobuf packages.
#[allow(missing_docs, clippy::all)]
pub mod goim {
    /// `goim.protocol`.
    pub mod protocol {
        include!(concat!(env!("OUT_DIR"), "/goim.protocol.rs"));
    }
    /// `goim.comet`: messages, `comet_client` and `comet_server`.
    pub mod comet {
        include!(concat!(env!("OUT_DIR"), "/goim.comet.rs"));
    }
    /// `goim.logic`: messages, `logic_client` and `logic_server`.
    pub mod logic {
        include!(concat!(env!("OUT_DIR"), "/goim.logic.rs"));
    }
}

pub use comet::{BroadcastReq, BroadcastRoomReq, CometService, PushMsgReq, RoomsReply};
pub use logic::{
    Backoff, ConnectReply, ConnectReq, DisconnectReply, DisconnectReq, Grant, HeartbeatReq,
    HistoryEntry, HistoryReply, HistoryReq, LogicService, NodesReply, NodesReq, OnlineReply,
    OnlineReq, PushMsg, PushType, ReceiveReply, ReceiveReq,
};
pub use protocol::{Position, Proto};

/// What went wrong in a call between tiers. Mirrors the gRPC status codes that the
/// remote transport uses, so a caller can tell a bad request from an outage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct RpcError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
    /// The engine behind the peer that failed (e.g. `redis store`), when the
    /// failure is that engine's and not the peer's: every peer shares it and
    /// would fail the same way, so the call is not tried on another peer.
    pub engine: Option<String>,
}

/// Classes of [`RpcError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed; retrying will not help.
    InvalidArgument,
    /// The credentials in the request were refused.
    Unauthenticated,
    /// The peer or an engine behind it is unreachable; retrying later may help.
    Unavailable,
    /// The call did not finish within its deadline.
    DeadlineExceeded,
    /// A bug or an unexpected failure in the peer.
    Internal,
}

impl RpcError {
    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RpcError {
        RpcError {
            kind,
            message: message.into(),
            engine: None,
        }
    }

    /// A malformed request.
    pub fn invalid(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::InvalidArgument, message)
    }

    /// An unreachable peer or engine.
    pub fn unavailable(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::Unavailable, message)
    }

    /// An unexpected failure.
    pub fn internal(message: impl Into<String>) -> RpcError {
        RpcError::new(ErrorKind::Internal, message)
    }

    /// An engine every peer shares (`engine`, e.g. `redis store`) is unreachable
    /// or failed: the peer answered, and another peer would fail the same way.
    pub fn engine_unavailable(engine: impl Into<String>, message: impl Into<String>) -> RpcError {
        RpcError {
            engine: Some(engine.into()),
            ..RpcError::unavailable(message)
        }
    }

    /// Whether another peer may succeed where this one failed: the peer is
    /// unreachable, not an engine every peer shares.
    pub fn another_peer_may_help(&self) -> bool {
        self.kind == ErrorKind::Unavailable && self.engine.is_none()
    }
}

/// Result of a call between tiers.
pub type RpcResult<T> = Result<T, RpcError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_peer_is_worth_another_peer() {
        assert!(RpcError::unavailable("connection refused").another_peer_may_help());
        let store_down = RpcError::engine_unavailable("redis store", "connection refused");
        assert_eq!(store_down.kind, ErrorKind::Unavailable);
        assert!(!store_down.another_peer_may_help());
        assert!(!RpcError::invalid("bad token").another_peer_may_help());
        assert!(!RpcError::internal("bug").another_peer_may_help());
    }
}
