//! `goim.protocol`: the frame as carried inside RPCs and queue messages.

use bytes::Bytes;

/// `goim.protocol.Proto`: a client frame without its length fields.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Proto {
    /// Protocol version.
    #[prost(int32, tag = "1")]
    pub ver: i32,
    /// Operation code; 9 (OpRaw) when `body` holds encoded frames.
    #[prost(int32, tag = "2")]
    pub op: i32,
    /// Sequence id.
    #[prost(int32, tag = "3")]
    pub seq: i32,
    /// Body bytes.
    #[prost(bytes = "bytes", tag = "4")]
    pub body: Bytes,
}

impl Proto {
    /// An OpRaw proto whose body is one or more encoded client frames.
    pub fn raw(body: Bytes) -> Proto {
        Proto {
            ver: 1,
            op: 9,
            seq: 0,
            body,
        }
    }
}
