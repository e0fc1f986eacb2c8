//! The server side of RFC 6455: the upgrade request, then client frames.

use herald_proto::ws::{self, Message};
use herald_proto::{HEADER_LEN, MAX_BODY};

/// The endpoint comet serves by default.
const PATH: &str = "/sub";
/// comet's message limit: one goim frame with the default body limit.
const MAX_MESSAGE: usize = HEADER_LEN + MAX_BODY;
/// A limit small enough for short inputs to run into it.
const SMALL_MESSAGE: usize = 16;
/// The mask re-encoded messages are sent with.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Parses `data` as an upgrade request (and the frames after it), and as a
/// stream of client frames under two message limits.
pub fn websocket(data: &[u8]) {
    upgrade(data);
    frames(data, MAX_MESSAGE);
    frames(data, SMALL_MESSAGE);
}

fn upgrade(data: &[u8]) {
    match ws::parse_upgrade(data, PATH) {
        Ok(Some((up, used))) => {
            assert!(used <= data.len());
            // base64 of a 20-byte SHA-1.
            assert_eq!(up.accept.len(), 28, "accept {:?}", up.accept);
            let path = up.target.split('?').next();
            assert_eq!(path, Some(PATH), "target {:?}", up.target);
            for (i, (name, _)) in up.headers.iter().enumerate() {
                assert_eq!(*name, name.to_ascii_lowercase(), "header name case");
                let first = up.headers.iter().position(|(n, _)| n == name);
                assert_eq!(first, Some(i), "header {name} repeated");
            }
            // Repeated headers are joined; the first version header was checked.
            let version = up.header("sec-websocket-version").unwrap_or("");
            assert!(
                version.split(", ").next() == Some("13"),
                "version {version:?}"
            );
            // What follows the request does not change it.
            let alone = ws::parse_upgrade(&data[..used], PATH);
            assert_eq!(
                alone,
                Ok(Some((up, used))),
                "request depends on what follows"
            );
            frames(&data[used..], MAX_MESSAGE);
        }
        Ok(None) => assert!(data.len() < ws::MAX_REQUEST, "oversized request waits"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Decodes `data` frame by frame with two decoders in step: the second is also
/// shown each frame cut short first, and must wait for the rest, then decode the
/// frame alike.
fn frames(data: &[u8], max_message: usize) {
    let mut a = ws::Decoder::server(max_message);
    let mut b = ws::Decoder::server(max_message);
    let mut rest = data;
    loop {
        match a.decode(rest) {
            Ok(Some((msg, used))) => {
                assert!((2..=rest.len()).contains(&used), "used {used}");
                for cut in [0, 1, used / 2, used - 1] {
                    assert_eq!(b.decode(&rest[..cut]), Ok(None), "{cut} of {used} bytes");
                }
                let whole = b.decode(&rest[..used]);
                assert_eq!(whole, Ok(Some((msg.clone(), used))));
                assert_eq!(a.in_message(), b.in_message());
                if let Some(m) = msg {
                    message(&m, max_message);
                }
                rest = &rest[used..];
            }
            Ok(None) => return,
            Err(e) => {
                assert_eq!(b.decode(rest), Err(e), "decoders disagree");
                return;
            }
        }
    }
}

/// A decoded message within its limits, and the same message encoded again by
/// a client decodes to itself.
fn message(m: &Message, max_message: usize) {
    let again = match m {
        Message::Data(d) => {
            assert!(d.len() <= max_message, "message of {} bytes", d.len());
            ws::client_frame(ws::opcode::BINARY, d, MASK)
        }
        Message::Ping(p) => {
            assert!(p.len() <= 125, "ping of {} bytes", p.len());
            ws::client_frame(ws::opcode::PING, p, MASK)
        }
        Message::Pong => ws::client_frame(ws::opcode::PONG, b"", MASK),
        Message::Close {
            code: Some(code),
            reason,
        } if reason.len() <= 123 => ws::close_frame(*code, reason),
        Message::Close { .. } => return,
    };
    let mut d = ws::Decoder::server(max_message);
    let got = d.decode(&again);
    assert_eq!(got, Ok(Some((Some(m.clone()), again.len()))), "re-encoded");
}
