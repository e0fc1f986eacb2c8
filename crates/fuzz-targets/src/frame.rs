//! goim frames: the slice decoder, the exact (WebSocket message) decoder, the
//! tokio codec over the same bytes split at many points, OpRaw batches and op
//! lists.

use bytes::BytesMut;
use herald_proto::raw::{self, RawBatch};
use herald_proto::{
    decode_exact, decode_frame, parse_op_list, CodecError, Frame, FrameCodec, HEADER_LEN, MAX_BODY,
    PROTO_VERSION,
};
use tokio_util::codec::Decoder;

/// A body limit small enough for short inputs to run into it.
const SMALL_BODY: usize = 64;

/// Decodes `data` as a client's frame stream, as a WebSocket message, as an
/// OpRaw body and as a sub/unsub op list.
pub fn frame(data: &[u8]) {
    for max_body in [MAX_BODY, SMALL_BODY] {
        let expected = slice_stream(data, max_body);
        for split in [
            Split::Whole,
            Split::Every(1),
            Split::Every(17),
            Split::ByInput,
        ] {
            let got = codec_stream(data, max_body, split);
            assert_eq!(
                got, expected,
                "codec split {split:?} disagrees, limit {max_body}"
            );
        }
    }
    exact(data);
    unpack(data);
    op_list(data);
}

/// What a decoder made of a whole stream: its frames, then how it ended.
#[derive(Debug, PartialEq)]
struct Stream {
    frames: Vec<Frame>,
    /// `Ok(n)`: waiting for more, `n` bytes consumed; `Err`: the stream was
    /// refused after `frames`.
    end: Result<usize, CodecError>,
}

/// The slice decoder, frame after frame.
fn slice_stream(data: &[u8], max_body: usize) -> Stream {
    let mut frames = Vec::new();
    let mut rest = data;
    loop {
        match decode_frame(rest, max_body) {
            Ok(Some((f, used))) => {
                assert!((HEADER_LEN..=rest.len()).contains(&used), "used {used}");
                assert!(f.body.len() <= max_body, "body over the limit");
                assert_eq!(f.encoded_len(), used);
                assert_eq!(&f.to_bytes()[..], &rest[..used], "re-encoding differs");
                frames.push(f);
                rest = &rest[used..];
            }
            Ok(None) => {
                // Waiting: a partial header, or a valid header whose body is short.
                if rest.len() >= HEADER_LEN {
                    let declared = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    assert!(rest.len() < declared as usize, "complete frame left");
                }
                let end = Ok(data.len() - rest.len());
                return Stream { frames, end };
            }
            Err(e) => {
                let end = Err(e);
                return Stream { frames, end };
            }
        }
    }
}

/// How the codec's input arrives.
#[derive(Debug, Clone, Copy)]
enum Split {
    /// In one read.
    Whole,
    /// In reads of this many bytes.
    Every(usize),
    /// In reads of 1 to 23 bytes, the sizes taken from the input itself.
    ByInput,
}

/// The tokio codec fed `data` in pieces, decoding after each as a framed reader
/// does.
fn codec_stream(data: &[u8], max_body: usize, split: Split) -> Stream {
    let mut codec = FrameCodec::with_max_body(max_body);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut sizes = data.iter().cycle();
    while fed < data.len() {
        let n = match split {
            Split::Whole => data.len(),
            Split::Every(n) => n,
            Split::ByInput => sizes.next().map_or(1, |b| usize::from(b % 23) + 1),
        };
        let piece = &data[fed..data.len().min(fed + n)];
        fed += piece.len();
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    let inner = e
                        .get_ref()
                        .and_then(|i| i.downcast_ref::<CodecError>())
                        .cloned()
                        .expect("the codec's errors carry a CodecError");
                    let end = Err(inner);
                    return Stream { frames, end };
                }
            }
        }
    }
    let end = Ok(data.len() - buf.len());
    // At the end of the stream, leftover bytes are an error, none is not.
    let eof = codec.decode_eof(&mut buf);
    assert_eq!(
        eof.is_err(),
        !buf.is_empty(),
        "decode_eof with {} left",
        buf.len()
    );
    Stream { frames, end }
}

/// A WebSocket message must be exactly one frame.
fn exact(data: &[u8]) {
    let got = decode_exact(data, MAX_BODY);
    match decode_frame(data, MAX_BODY) {
        Ok(Some((f, used))) if used == data.len() => assert_eq!(got, Ok(f)),
        _ => assert!(got.is_err(), "decode_exact took what decode_frame refused"),
    }
    if let Ok(f) = got {
        assert_eq!(&f.to_bytes()[..], data);
    }
}

/// An OpRaw body: whole frames of any size, filling the body.
fn unpack(data: &[u8]) {
    // The slice decoder with a limit no frame in `data` can exceed.
    let whole = slice_stream(data, data.len());
    match raw::unpack(data) {
        Ok(frames) => {
            assert_eq!(whole.end, Ok(data.len()), "unpack accepted a partial frame");
            assert_eq!(frames, whole.frames);
            let again: Vec<u8> = frames.iter().flat_map(|f| f.to_bytes()).collect();
            assert_eq!(again, data, "re-encoding differs");
            // The same pushes batched by the server.
            let mut batch = RawBatch::default();
            for f in &frames {
                batch.push(f.op, &f.body);
            }
            assert_eq!(batch.count(), frames.len());
            let pushed = raw::unpack(&batch.finish()).expect("a built batch unpacks");
            assert_eq!(pushed.len(), frames.len());
            for (p, f) in pushed.iter().zip(&frames) {
                assert_eq!((p.ver, p.op, p.seq), (PROTO_VERSION, f.op, 0));
                assert_eq!(p.body, f.body);
            }
        }
        Err(_) => assert_ne!(whole.end, Ok(data.len()), "unpack refused whole frames"),
    }
}

/// A sub/unsub body such as `1000,1001`.
fn op_list(data: &[u8]) {
    if let Some(ops) = parse_op_list(data) {
        let text: Vec<String> = ops.iter().map(i32::to_string).collect();
        let again = parse_op_list(text.join(",").as_bytes());
        assert_eq!(again.as_ref(), Some(&ops), "op list round trip");
    }
}
