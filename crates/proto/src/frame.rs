//! The 16-byte goim frame.

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the fixed header; goim rejects any other `headerLen`.
pub const HEADER_LEN: usize = 16;
/// Largest body a client may send (goim's `MaxBodySize`).
pub const MAX_BODY: usize = 4096;
/// Largest frame a client may send: header plus [`MAX_BODY`].
pub const MAX_PACK: usize = HEADER_LEN + MAX_BODY;
/// Version the server writes on pushes.
pub const PROTO_VERSION: i16 = 1;

/// A decoded frame header. All fields are signed big-endian integers on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total length of the frame: header plus body.
    pub pack_len: i32,
    /// Always 16 in a valid frame.
    pub header_len: i16,
    /// Protocol version chosen by the client, echoed in replies.
    pub ver: i16,
    /// Operation code.
    pub op: i32,
    /// Client sequence id, echoed in replies; 0 on pushes.
    pub seq: i32,
}

impl Header {
    /// Reads a header from the first 16 bytes of `buf`; `None` if `buf` is shorter.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let b: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            pack_len: i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            header_len: i16::from_be_bytes([b[4], b[5]]),
            ver: i16::from_be_bytes([b[6], b[7]]),
            op: i32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            seq: i32::from_be_bytes([b[12], b[13], b[14], b[15]]),
        })
    }

    /// The header bytes for a frame with the given fields and body length.
    pub fn encode(ver: i16, op: i32, seq: i32, body_len: usize) -> [u8; HEADER_LEN] {
        let pack_len = (HEADER_LEN + body_len) as i32;
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&pack_len.to_be_bytes());
        out[4..6].copy_from_slice(&(HEADER_LEN as i16).to_be_bytes());
        out[6..8].copy_from_slice(&ver.to_be_bytes());
        out[8..12].copy_from_slice(&op.to_be_bytes());
        out[12..16].copy_from_slice(&seq.to_be_bytes());
        out
    }
}

/// One goim frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// Protocol version.
    pub ver: i16,
    /// Operation code (see [`crate::Op`]).
    pub op: i32,
    /// Sequence id.
    pub seq: i32,
    /// Opaque body.
    pub body: Bytes,
}

impl Frame {
    /// A frame with the given fields.
    pub fn new(ver: i16, op: i32, seq: i32, body: impl Into<Bytes>) -> Frame {
        Frame {
            ver,
            op,
            seq,
            body: body.into(),
        }
    }

    /// A server push: version 1, sequence 0.
    pub fn push(op: i32, body: impl Into<Bytes>) -> Frame {
        Frame::new(PROTO_VERSION, op, 0, body)
    }

    /// A reply to `request`: same `ver` and `seq`, the given op and body.
    pub fn reply_to(request: &Frame, op: i32, body: impl Into<Bytes>) -> Frame {
        Frame::new(request.ver, op, request.seq, body)
    }

    /// Encoded length: header plus body.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        dst.put_slice(&Header::encode(
            self.ver,
            self.op,
            self.seq,
            self.body.len(),
        ));
        dst.put_slice(&self.body);
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out.freeze()
    }
}
