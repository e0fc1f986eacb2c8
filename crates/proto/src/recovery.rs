//! Stream positions on the client wire: the recovery request in the auth body,
//! positioned pushes (op 24) and stream states (op 25).
//!
//! A client opts in by adding `"recover"` to its auth body: an object mapping the
//! streams it knows to its last position in each,
//! `{"recover": {"chat://7": {"epoch": "…", "offset": 17}}}` (an empty object on a
//! first connect). Only such a connection ever receives ops 24 and 25; every other
//! connection sees goim's bytes.
//!
//! - **op 24, positioned push**: the body is one byte naming the stream kind
//!   ([`StreamKind`]), the offset as 8 bytes big-endian, then the complete push
//!   frame (16-byte header and body) exactly as a goim client would have received
//!   it.
//! - **op 25, stream states**: a JSON body `{"streams": [StreamState, …]}` telling
//!   the epoch and offset each stream of the connection stands at, and whether what
//!   was missed was replayed (`recovered`), cannot be (`reload`), or the stream is
//!   new to the client (`fresh`).

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::frame::{Header, HEADER_LEN, PROTO_VERSION};
use crate::Op;

/// Bytes an op-24 body carries before the wrapped frame.
pub const POSITION_PREFIX: usize = 9;

/// Which of a connection's streams a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// The connection's room (`type://id`).
    Room = 1,
    /// The connection's member (`mid:<mid>`).
    Mid = 2,
    /// The connection's key (`key:<key>`).
    Key = 3,
}

impl StreamKind {
    /// The kind a wire byte names.
    pub fn from_byte(b: u8) -> Option<StreamKind> {
        match b {
            1 => Some(StreamKind::Room),
            2 => Some(StreamKind::Mid),
            3 => Some(StreamKind::Key),
            _ => None,
        }
    }

    /// The kind of a stream name: `mid:…`, `key:…`, anything else a room.
    pub fn of_stream(stream: &str) -> StreamKind {
        if stream.starts_with(MID_PREFIX) {
            StreamKind::Mid
        } else if stream.starts_with(KEY_PREFIX) {
            StreamKind::Key
        } else {
            StreamKind::Room
        }
    }
}

const MID_PREFIX: &str = "mid:";
const KEY_PREFIX: &str = "key:";

/// The stream name of a member's pushes.
pub fn mid_stream(mid: i64) -> String {
    format!("{MID_PREFIX}{mid}")
}

/// The stream name of a key's pushes.
pub fn key_stream(key: &str) -> String {
    format!("{KEY_PREFIX}{key}")
}

/// A position as a client states it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPosition {
    /// The stream's epoch the client last saw.
    pub epoch: String,
    /// The last offset it received in that epoch.
    pub offset: u64,
}

/// Most streams a recovery request may name (a connection has three).
pub const MAX_RECOVER_STREAMS: usize = 8;
/// Longest stream name or epoch accepted in a recovery request.
pub const MAX_RECOVER_NAME: usize = 256;

/// The `"recover"` member of an auth body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoverRequest {
    /// Stream name → last position.
    pub positions: BTreeMap<String, ClientPosition>,
}

/// Why a recovery request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// Not JSON, or `recover` is not an object of positions.
    #[error("invalid recover request: {0}")]
    Json(#[from] serde_json::Error),
    /// More streams than a connection can have.
    #[error("recover names {0} streams; at most {MAX_RECOVER_STREAMS}")]
    TooMany(usize),
    /// A stream name or epoch longer than [`MAX_RECOVER_NAME`].
    #[error("recover: a stream name or epoch is longer than {MAX_RECOVER_NAME} bytes")]
    TooLong,
}

#[derive(Deserialize)]
struct AuthBodyRecover {
    #[serde(default)]
    recover: Option<BTreeMap<String, ClientPosition>>,
}

impl RecoverRequest {
    /// Reads the recovery request of an auth body: `Ok(None)` when the body does
    /// not ask for recovery (including bodies that are not JSON objects, which the
    /// authenticator judges), an error when `recover` is present but malformed.
    pub fn from_auth_body(body: &[u8]) -> Result<Option<RecoverRequest>, RecoverError> {
        // goim's clients never send it: skip the parse for them.
        if !contains(body, b"\"recover\"") {
            return Ok(None);
        }
        let parsed: AuthBodyRecover = match serde_json::from_slice(body) {
            Ok(p) => p,
            // The word appears, but where a body is not an object with a
            // `recover` member of the right shape.
            // Not a JSON object at all: not a recovery request (the
            // authenticator judges the body).
            Err(_) if !body.trim_ascii_start().starts_with(b"{") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(positions) = parsed.recover else {
            return Ok(None);
        };
        if positions.len() > MAX_RECOVER_STREAMS {
            return Err(RecoverError::TooMany(positions.len()));
        }
        if positions
            .iter()
            .any(|(s, p)| s.len() > MAX_RECOVER_NAME || p.epoch.len() > MAX_RECOVER_NAME)
        {
            return Err(RecoverError::TooLong);
        }
        Ok(Some(RecoverRequest { positions }))
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// What became of a stream's missed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamStatus {
    /// Everything after the client's position was delivered, in order.
    Recovered,
    /// Some of it is gone (history trimmed or expired, or the epoch changed): the
    /// client must reload its state from the application.
    Reload,
    /// The client gave no position for this stream: positions start here.
    Fresh,
    /// The stream keeps no history: its pushes carry no position.
    Off,
}

/// One stream's state in an op-25 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// Which of the connection's streams.
    pub kind: StreamKind,
    /// Its name.
    pub stream: String,
    /// Its epoch (empty when `status` is `off`).
    pub epoch: String,
    /// The last offset delivered to the connection (or the stream's top).
    pub offset: u64,
    /// What became of missed messages.
    pub status: StreamStatus,
}

/// An op-25 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStates {
    /// The states.
    pub streams: Vec<StreamState>,
}

impl StreamStates {
    /// The JSON body.
    pub fn to_body(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Parses an op-25 body.
    pub fn parse(body: &[u8]) -> Result<StreamStates, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// Appends an op-24 frame wrapping `inner` (one complete push frame) to `dst`.
pub fn push_positioned(dst: &mut BytesMut, kind: StreamKind, offset: u64, inner: &[u8]) {
    let body_len = POSITION_PREFIX + inner.len();
    dst.reserve(HEADER_LEN + body_len);
    dst.put_slice(&Header::encode(PROTO_VERSION, Op::POSITIONED, 0, body_len));
    dst.put_u8(kind as u8);
    dst.put_u64(offset);
    dst.put_slice(inner);
}

/// A decoded op-24 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positioned<'a> {
    /// The stream kind.
    pub kind: StreamKind,
    /// The offset in that stream.
    pub offset: u64,
    /// The wrapped push frame, header included.
    pub frame: &'a [u8],
}

/// Reads an op-24 body; `None` when it is malformed.
pub fn parse_positioned(body: &[u8]) -> Option<Positioned<'_>> {
    let (&kind, rest) = body.split_first()?;
    let kind = StreamKind::from_byte(kind)?;
    let offset = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let frame = &rest[8..];
    let h = Header::parse(frame)?;
    if h.header_len as usize != HEADER_LEN || h.pack_len as usize != frame.len() {
        return None;
    }
    Some(Positioned {
        kind,
        offset,
        frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw;
    use proptest::prelude::*;

    #[test]
    fn goim_bodies_ask_for_nothing() {
        let goim = br#"{"mid":123, "key":"", "room_id":"live://1000", "platform":"web", "accepts":[1000]}"#;
        assert_eq!(RecoverRequest::from_auth_body(goim).unwrap(), None);
        assert_eq!(RecoverRequest::from_auth_body(b"not json").unwrap(), None);
        assert_eq!(
            RecoverRequest::from_auth_body(br#"{"recover":null}"#).unwrap(),
            None
        );
    }

    #[test]
    fn recover_positions() {
        let r = RecoverRequest::from_auth_body(
            br#"{"mid":1,"recover":{"chat://7":{"epoch":"e1","offset":17},"mid:1":{"epoch":"e2","offset":0}}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.positions.len(), 2);
        assert_eq!(
            r.positions["chat://7"],
            ClientPosition {
                epoch: "e1".into(),
                offset: 17
            }
        );
        let first = RecoverRequest::from_auth_body(br#"{"recover":{}}"#)
            .unwrap()
            .unwrap();
        assert!(first.positions.is_empty());
    }

    #[test]
    fn malformed_recover_is_an_error() {
        for bad in [
            &br#"{"recover":[1]}"#[..],
            br#"{"recover":{"r":{"epoch":"e","offset":-1}}}"#,
            br#"{"recover":{"r":{"epoch":"e","offset":1,"x":2}}}"#,
            br#"{"recover":{"r":{"offset":1}}"#,
        ] {
            assert!(
                RecoverRequest::from_auth_body(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: String = (0..9)
            .map(|i| format!("\"s{i}\":{{\"epoch\":\"e\",\"offset\":1}}"))
            .collect::<Vec<_>>()
            .join(",");
        let body = format!("{{\"recover\":{{{many}}}}}");
        assert!(matches!(
            RecoverRequest::from_auth_body(body.as_bytes()),
            Err(RecoverError::TooMany(9))
        ));
    }

    #[test]
    fn positioned_frames_wrap_the_goim_frame() {
        let inner = raw::single(1000, b"hello");
        let mut out = BytesMut::new();
        push_positioned(&mut out, StreamKind::Mid, 42, &inner);
        let frames = raw::unpack(&out).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].op, Op::POSITIONED);
        let p = parse_positioned(&frames[0].body).unwrap();
        assert_eq!((p.kind, p.offset), (StreamKind::Mid, 42));
        assert_eq!(p.frame, &inner[..]);
    }

    #[test]
    fn stream_states_are_json() {
        let s = StreamStates {
            streams: vec![StreamState {
                kind: StreamKind::Room,
                stream: "chat://7".into(),
                epoch: "e".into(),
                offset: 3,
                status: StreamStatus::Reload,
            }],
        };
        let body = s.to_body();
        assert_eq!(
            &body[..],
            br#"{"streams":[{"kind":"room","stream":"chat://7","epoch":"e","offset":3,"status":"reload"}]}"#
        );
        assert_eq!(StreamStates::parse(&body).unwrap(), s);
    }

    #[test]
    fn stream_kinds() {
        assert_eq!(StreamKind::of_stream("mid:7"), StreamKind::Mid);
        assert_eq!(StreamKind::of_stream("key:k"), StreamKind::Key);
        assert_eq!(StreamKind::of_stream("live://1"), StreamKind::Room);
        assert_eq!(mid_stream(7), "mid:7");
        assert_eq!(key_stream("k"), "key:k");
    }

    proptest! {
        #[test]
        fn parsing_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = RecoverRequest::from_auth_body(&input);
            let _ = parse_positioned(&input);
            let _ = StreamStates::parse(&input);
        }
    }
}
