//! The recovery extension: the auth body's recover request, op-24 bodies and
//! op-25 bodies.

use bytes::BytesMut;
use herald_proto::recovery::{
    parse_positioned, push_positioned, RecoverRequest, StreamKind, StreamStates, MAX_RECOVER_NAME,
    MAX_RECOVER_STREAMS, POSITION_PREFIX,
};
use herald_proto::{decode_exact, raw, Op};
use serde_json::json;

/// Parses `data` as an auth body's recover request, as a positioned push and as
/// stream states.
pub fn recovery(data: &[u8]) {
    recover_request(data);
    positioned(data);
    stream_states(data);
}

fn recover_request(data: &[u8]) {
    let asks = data.windows(9).any(|w| w == b"\"recover\"");
    match RecoverRequest::from_auth_body(data) {
        Ok(Some(r)) => {
            assert!(asks, "a request without the word");
            assert!(r.positions.len() <= MAX_RECOVER_STREAMS);
            for (stream, p) in &r.positions {
                assert!(stream.len() <= MAX_RECOVER_NAME && p.epoch.len() <= MAX_RECOVER_NAME);
            }
            let body = json!({"recover": r.positions}).to_string();
            let again = RecoverRequest::from_auth_body(body.as_bytes());
            assert_eq!(again.ok(), Some(Some(r)), "round trip");
        }
        Ok(None) => {}
        Err(e) => {
            assert!(asks, "refused a body that does not ask: {e}");
        }
    }
}

fn positioned(data: &[u8]) {
    let Some(p) = parse_positioned(data) else {
        // A kind byte, an offset and exactly one whole frame is always read.
        let kind = data.first().copied().and_then(StreamKind::from_byte);
        if let (Some(_), Some(frame)) = (kind, data.get(POSITION_PREFIX..)) {
            if let Ok(frames) = raw::unpack(frame) {
                assert_ne!(frames.len(), 1, "refused a kind, an offset and one frame");
            }
        }
        return;
    };
    assert_eq!(p.frame, &data[POSITION_PREFIX..]);
    assert_eq!(Some(p.kind), StreamKind::from_byte(data[0]));
    // The wrapped frame is one whole goim frame.
    decode_exact(p.frame, p.frame.len()).expect("the wrapped frame decodes");
    // Wrapped again by the server: an op-24 push whose body is `data`.
    let mut out = BytesMut::new();
    push_positioned(&mut out, p.kind, p.offset, p.frame);
    let frames = raw::unpack(&out).expect("a positioned push unpacks");
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].op, Op::POSITIONED);
    assert_eq!(&frames[0].body[..], data);
}

fn stream_states(data: &[u8]) {
    if let Ok(s) = StreamStates::parse(data) {
        let again = StreamStates::parse(&s.to_body());
        assert_eq!(again.ok().as_ref(), Some(&s), "round trip");
    }
}
