//! Operation codes, exactly as goim numbers them.

/// goim's operation codes. Business operations (1000 and up by convention) are free
/// `i32` values and have no constant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Op;

impl Op {
    /// Legacy handshake; read and ignored.
    pub const HANDSHAKE: i32 = 0;
    /// Legacy handshake reply; never sent.
    pub const HANDSHAKE_REPLY: i32 = 1;
    /// Client heartbeat, empty body.
    pub const HEARTBEAT: i32 = 2;
    /// Heartbeat reply; body is the room's online count as a 4-byte big-endian int.
    pub const HEARTBEAT_REPLY: i32 = 3;
    /// Upstream message; echoed with the same op and an empty body.
    pub const SEND_MSG: i32 = 4;
    /// Defined by goim, unused.
    pub const SEND_MSG_REPLY: i32 = 5;
    /// Defined by goim, unused.
    pub const DISCONNECT_REPLY: i32 = 6;
    /// Authenticate; body is the JSON auth token.
    pub const AUTH: i32 = 7;
    /// Successful authentication; empty body.
    pub const AUTH_REPLY: i32 = 8;
    /// Batch envelope: the body is a concatenation of complete frames.
    pub const RAW: i32 = 9;
    /// goim in-process sentinel; never on the wire.
    pub const PROTO_READY: i32 = 10;
    /// goim in-process sentinel; never on the wire.
    pub const PROTO_FINISH: i32 = 11;
    /// Change room; body is the new room key (`type://id`), empty to leave.
    pub const CHANGE_ROOM: i32 = 12;
    /// Change-room reply; echoes the body.
    pub const CHANGE_ROOM_REPLY: i32 = 13;
    /// Add ops to the accept filter; body `"1000,1001"`.
    pub const SUB: i32 = 14;
    /// Sub reply; echoes the body.
    pub const SUB_REPLY: i32 = 15;
    /// Remove ops from the accept filter.
    pub const UNSUB: i32 = 16;
    /// Unsub reply; echoes the body.
    pub const UNSUB_REPLY: i32 = 17;
    /// herald: fresh credentials for an authenticated connection (body like the
    /// auth body, e.g. `{"token":"…"}`). Only connections authenticated with
    /// expiring credentials (jwt, webhook) treat it so; for others it is a
    /// business op, as in goim.
    pub const REFRESH: i32 = 22;
    /// herald: refresh reply; JSON `{"code":0,"expires_at":…}` or
    /// `{"code":-401,"message":…}`.
    pub const REFRESH_REPLY: i32 = 23;
    /// herald: a push with its stream position, sent only to connections that
    /// asked for recovery: kind byte, 8-byte offset, then the push frame
    /// (`recovery`).
    pub const POSITIONED: i32 = 24;
    /// herald: where the connection's streams stand (JSON), sent only to
    /// connections that asked for recovery (`recovery`).
    pub const STREAMS: i32 = 25;
}

/// Parses a sub/unsub body such as `"1000,1001"`.
///
/// Returns `None` when any element is not an `i32` (goim then changes nothing and
/// still replies). Blank elements and surrounding spaces are ignored.
pub fn parse_op_list(body: &[u8]) -> Option<Vec<i32>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut ops = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        ops.push(part.parse::<i32>().ok()?);
    }
    Some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_lists() {
        assert_eq!(parse_op_list(b"1000,1001"), Some(vec![1000, 1001]));
        assert_eq!(parse_op_list(b" 5 , 6,"), Some(vec![5, 6]));
        assert_eq!(parse_op_list(b""), Some(vec![]));
        assert_eq!(parse_op_list(b"1,x"), None);
        assert_eq!(parse_op_list(&[0xff, 0xfe]), None);
    }
}
