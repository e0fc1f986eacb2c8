//! OpRaw batches: several encoded frames concatenated into one body.
//!
//! job encodes every push once as a client frame and sends comets an OpRaw body; a
//! room batch holds up to 20 such frames. comet writes the body verbatim to TCP
//! clients and wraps it in one op-9 frame for WebSocket clients, who unpack it with
//! [`unpack`].

use bytes::{Bytes, BytesMut};

use crate::codec::CodecError;
use crate::frame::{Frame, Header, HEADER_LEN, PROTO_VERSION};

/// Builds an OpRaw body frame by frame.
#[derive(Debug, Default)]
pub struct RawBatch {
    buf: BytesMut,
    count: usize,
}

impl RawBatch {
    /// An empty batch with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> RawBatch {
        RawBatch {
            buf: BytesMut::with_capacity(bytes),
            count: 0,
        }
    }

    /// Appends a server push frame (`ver` 1, `seq` 0) with the given op and body.
    pub fn push(&mut self, op: i32, body: &[u8]) {
        self.buf
            .extend_from_slice(&Header::encode(PROTO_VERSION, op, 0, body.len()));
        self.buf.extend_from_slice(body);
        self.count += 1;
    }

    /// Number of frames in the batch.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The batch body, ready to send.
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// The OpRaw body for a single push frame.
pub fn single(op: i32, body: &[u8]) -> Bytes {
    let mut b = RawBatch::with_capacity(HEADER_LEN + body.len());
    b.push(op, body);
    b.finish()
}

/// Splits an OpRaw body into its frames. Server-built batches have no size limit,
/// but every inner frame must be well formed and the frames must fill the body.
pub fn unpack(body: &[u8]) -> Result<Vec<Frame>, CodecError> {
    let mut frames = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some(h) = Header::parse(rest) else {
            return Err(CodecError::TooShort(rest.len() as i32));
        };
        if h.header_len as usize != HEADER_LEN {
            return Err(CodecError::HeaderLen(h.header_len));
        }
        if h.pack_len < HEADER_LEN as i32 {
            return Err(CodecError::TooShort(h.pack_len));
        }
        let len = h.pack_len as usize;
        let Some(inner) = rest.get(HEADER_LEN..len) else {
            return Err(CodecError::LengthMismatch {
                declared: h.pack_len,
                actual: rest.len(),
            });
        };
        frames.push(Frame::new(
            h.ver,
            h.op,
            h.seq,
            Bytes::copy_from_slice(inner),
        ));
        rest = &rest[len..];
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn batch_roundtrip() {
        let mut b = RawBatch::default();
        b.push(1000, b"{\"test\":1}");
        b.push(1001, b"");
        assert_eq!(b.count(), 2);
        let body = b.finish();
        let frames = unpack(&body).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], Frame::push(1000, &b"{\"test\":1}"[..]));
        assert_eq!(frames[1], Frame::push(1001, Bytes::new()));
        assert_eq!(
            unpack(&single(5, b"x")).unwrap(),
            vec![Frame::push(5, &b"x"[..])]
        );
    }

    #[test]
    fn truncated_batch_is_an_error() {
        let body = single(1000, b"abcdef");
        assert!(unpack(&body[..body.len() - 1]).is_err());
        assert!(unpack(&body[..3]).is_err());
        assert_eq!(unpack(&[]).unwrap(), vec![]);
    }

    proptest! {
        #[test]
        fn unpack_never_panics(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = unpack(&input);
        }
    }
}
