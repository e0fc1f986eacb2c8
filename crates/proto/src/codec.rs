//! Frame decoding and encoding: a slice decoder and a tokio codec built on it.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{Frame, Header, HEADER_LEN, MAX_BODY};

/// Why a byte stream is not a valid goim frame stream. Any of these closes the
/// connection that sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// `headerLen` is not 16.
    #[error("header length {0} is not 16")]
    HeaderLen(i16),
    /// `packLen` is smaller than the header.
    #[error("frame length {0} is shorter than the 16-byte header")]
    TooShort(i32),
    /// `packLen` exceeds the header plus the body limit.
    #[error("frame length {len} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The declared frame length.
        len: i32,
        /// The largest allowed frame length.
        limit: usize,
    },
    /// A WebSocket message's length disagrees with the frame it carries.
    #[error("frame length {declared} disagrees with the message length {actual}")]
    LengthMismatch {
        /// `packLen` from the header.
        declared: i32,
        /// Bytes actually in the message.
        actual: usize,
    },
}

/// Validates a header against the body limit and returns the frame's total length.
fn checked_len(h: &Header, max_body: usize) -> Result<usize, CodecError> {
    if h.header_len as usize != HEADER_LEN {
        return Err(CodecError::HeaderLen(h.header_len));
    }
    if h.pack_len < HEADER_LEN as i32 {
        return Err(CodecError::TooShort(h.pack_len));
    }
    let len = h.pack_len as usize;
    if len > HEADER_LEN + max_body {
        return Err(CodecError::TooLarge {
            len: h.pack_len,
            limit: HEADER_LEN + max_body,
        });
    }
    Ok(len)
}

/// Decodes the first frame of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame, or the frame and the
/// number of bytes it used. The body is copied out of `buf`.
pub fn decode_frame(buf: &[u8], max_body: usize) -> Result<Option<(Frame, usize)>, CodecError> {
    let Some(h) = Header::parse(buf) else {
        return Ok(None);
    };
    let len = checked_len(&h, max_body)?;
    let Some(body) = buf.get(HEADER_LEN..len) else {
        return Ok(None);
    };
    let frame = Frame::new(h.ver, h.op, h.seq, Bytes::copy_from_slice(body));
    Ok(Some((frame, len)))
}

/// Decodes exactly one frame that must fill `msg` completely, as a WebSocket message
/// carrying a client frame must.
pub fn decode_exact(msg: &[u8], max_body: usize) -> Result<Frame, CodecError> {
    let Some(h) = Header::parse(msg) else {
        return Err(CodecError::TooShort(msg.len() as i32));
    };
    let len = checked_len(&h, max_body)?;
    if len != msg.len() {
        return Err(CodecError::LengthMismatch {
            declared: h.pack_len,
            actual: msg.len(),
        });
    }
    Ok(Frame::new(
        h.ver,
        h.op,
        h.seq,
        Bytes::copy_from_slice(&msg[HEADER_LEN..]),
    ))
}

/// A tokio codec for a stream of goim frames.
///
/// Decoding enforces the inbound body limit (goim's 4096 by default); encoding has
/// no limit, since server frames (room batches) legitimately exceed it.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_body: usize,
}

impl FrameCodec {
    /// A codec with goim's inbound body limit of 4096 bytes.
    pub fn new() -> FrameCodec {
        FrameCodec { max_body: MAX_BODY }
    }

    /// A codec with a custom inbound body limit.
    pub fn with_max_body(max_body: usize) -> FrameCodec {
        FrameCodec { max_body }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        let Some(h) = Header::parse(src) else {
            return Ok(None);
        };
        let len = checked_len(&h, self.max_body)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        let mut frame_bytes = src.split_to(len);
        frame_bytes.advance(HEADER_LEN);
        Ok(Some(Frame::new(h.ver, h.op, h.seq, frame_bytes.freeze())))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.encode_into(dst);
        Ok(())
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.encode_into(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_PACK;
    use proptest::prelude::*;

    fn frame_bytes(ver: i16, op: i32, seq: i32, body: &[u8]) -> Vec<u8> {
        Frame::new(ver, op, seq, body.to_vec()).to_bytes().to_vec()
    }

    #[test]
    fn header_layout_is_big_endian() {
        let b = frame_bytes(1, 7, 0x01020304, b"ab");
        assert_eq!(
            b,
            vec![0, 0, 0, 18, 0, 16, 0, 1, 0, 0, 0, 7, 1, 2, 3, 4, b'a', b'b']
        );
    }

    #[test]
    fn partial_input_waits() {
        let b = frame_bytes(1, 2, 3, b"hello");
        for cut in 0..b.len() {
            assert_eq!(decode_frame(&b[..cut], MAX_BODY), Ok(None), "cut at {cut}");
        }
        let (f, used) = decode_frame(&b, MAX_BODY).unwrap().unwrap();
        assert_eq!(used, b.len());
        assert_eq!((f.ver, f.op, f.seq, &f.body[..]), (1, 2, 3, &b"hello"[..]));
    }

    #[test]
    fn rejects_bad_header_length() {
        let mut b = frame_bytes(1, 2, 3, b"");
        b[5] = 15;
        assert_eq!(decode_frame(&b, MAX_BODY), Err(CodecError::HeaderLen(15)));
    }

    #[test]
    fn rejects_oversized_and_undersized() {
        let body = vec![0u8; MAX_BODY];
        let b = frame_bytes(1, 4, 0, &body);
        assert_eq!(b.len(), MAX_PACK);
        assert!(decode_frame(&b, MAX_BODY).unwrap().is_some());
        let mut big = b[..HEADER_LEN].to_vec();
        big[0..4].copy_from_slice(&((MAX_PACK + 1) as i32).to_be_bytes());
        assert!(matches!(
            decode_frame(&big, MAX_BODY),
            Err(CodecError::TooLarge { .. })
        ));
        let mut small = b[..HEADER_LEN].to_vec();
        small[0..4].copy_from_slice(&15i32.to_be_bytes());
        assert_eq!(
            decode_frame(&small, MAX_BODY),
            Err(CodecError::TooShort(15))
        );
        small[0..4].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            decode_frame(&small, MAX_BODY),
            Err(CodecError::TooShort(-1))
        );
    }

    #[test]
    fn exact_requires_matching_length() {
        let b = frame_bytes(1, 2, 3, b"xyz");
        assert!(decode_exact(&b, MAX_BODY).is_ok());
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            decode_exact(&longer, MAX_BODY),
            Err(CodecError::LengthMismatch { .. })
        ));
        assert!(matches!(
            decode_exact(&b[..b.len() - 1], MAX_BODY),
            Err(CodecError::LengthMismatch { .. })
        ));
        assert!(decode_exact(&b[..10], MAX_BODY).is_err());
    }

    #[test]
    fn tokio_codec_streams_frames() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame_bytes(1, 2, 1, b""));
        buf.extend_from_slice(&frame_bytes(1, 1000, 2, b"{\"a\":1}"));
        buf.extend_from_slice(&frame_bytes(1, 3, 3, b"par")[..10]);
        let a = codec.decode(&mut buf).unwrap().unwrap();
        let b = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!((a.op, a.seq), (2, 1));
        assert_eq!((b.op, &b.body[..]), (1000, &b"{\"a\":1}"[..]));
        assert!(codec.decode(&mut buf).unwrap().is_none());
        let mut out = BytesMut::new();
        codec.encode(b.clone(), &mut out).unwrap();
        assert_eq!(codec.decode(&mut out).unwrap().unwrap(), b);
    }

    proptest! {
        #[test]
        fn decoder_never_panics(input in proptest::collection::vec(any::<u8>(), 0..8192)) {
            let _ = decode_frame(&input, MAX_BODY);
            let _ = decode_exact(&input, MAX_BODY);
            let mut codec = FrameCodec::new();
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }

        #[test]
        fn header_garbage_never_panics(
            pack_len in any::<i32>(), header_len in any::<i16>(),
            ver in any::<i16>(), op in any::<i32>(), seq in any::<i32>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut b = Vec::new();
            b.extend_from_slice(&pack_len.to_be_bytes());
            b.extend_from_slice(&header_len.to_be_bytes());
            b.extend_from_slice(&ver.to_be_bytes());
            b.extend_from_slice(&op.to_be_bytes());
            b.extend_from_slice(&seq.to_be_bytes());
            b.extend_from_slice(&tail);
            let r = decode_frame(&b, MAX_BODY);
            if header_len != 16 {
                prop_assert!(r.is_err());
            }
        }

        #[test]
        fn roundtrip(ver in any::<i16>(), op in any::<i32>(), seq in any::<i32>(),
                     body in proptest::collection::vec(any::<u8>(), 0..=MAX_BODY)) {
            let f = Frame::new(ver, op, seq, body);
            let bytes = f.to_bytes();
            let (g, used) = decode_frame(&bytes, MAX_BODY).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(&g, &f);
            prop_assert_eq!(decode_exact(&bytes, MAX_BODY).unwrap(), f);
        }

        #[test]
        fn split_stream_reassembles(bodies in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..300), 1..10), cut in any::<usize>()) {
            let frames: Vec<Frame> = bodies.into_iter().enumerate()
                .map(|(i, b)| Frame::new(1, 1000, i as i32, b)).collect();
            let mut all = BytesMut::new();
            for f in &frames { f.encode_into(&mut all); }
            let cut = cut % (all.len() + 1);
            let mut codec = FrameCodec::new();
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = Vec::new();
            while let Some(f) = codec.decode(&mut buf).unwrap() { got.push(f); }
            buf.extend_from_slice(&all[cut..]);
            while let Some(f) = codec.decode(&mut buf).unwrap() { got.push(f); }
            prop_assert_eq!(got, frames);
        }
    }
}
