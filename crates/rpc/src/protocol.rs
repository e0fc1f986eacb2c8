//! `goim.protocol`: the frame as carried inside RPCs and queue messages.

use bytes::Bytes;

pub use crate::goim::protocol::{Position, Proto};

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
