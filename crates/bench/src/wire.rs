//! What the load generator puts on the wire and how it reads what comes back,
//! without copying: goim frames (TCP or inside WebSocket messages, OpRaw unpacked),
//! server WebSocket frames, and the NATS text protocol.

use std::time::{SystemTime, UNIX_EPOCH};

use herald_proto::{ws, Frame, Header, Op, HEADER_LEN};

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// A push payload carrying its send time (and a sequence number).
pub fn payload(seq: u64) -> String {
    format!("{{\"t\":{},\"s\":{seq}}}", now_ns())
}

/// [`payload`] padded with a `"p"` field to at least `size` bytes.
pub fn padded_payload(seq: u64, size: usize) -> String {
    let mut p = payload(seq);
    // `,"p":""` adds 7 bytes around the padding.
    if size > p.len() + 7 {
        let pad = size - p.len() - 7;
        p.pop();
        p.push_str(",\"p\":\"");
        p.extend(std::iter::repeat_n('x', pad));
        p.push_str("\"}");
    }
    p
}

/// The send time in a payload built by [`payload`].
pub fn timestamp_ns(body: &[u8]) -> Option<u64> {
    let at = body.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits = &body[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// An encoded goim client frame.
pub fn goim(op: i32, seq: i32, body: &[u8]) -> Vec<u8> {
    Frame::new(1, op, seq, body.to_vec()).to_bytes().to_vec()
}

/// A masked client WebSocket binary (or text) message.
pub fn ws_message(payload: &[u8], text: bool) -> Vec<u8> {
    let op = if text {
        ws::opcode::TEXT
    } else {
        ws::opcode::BINARY
    };
    ws::client_frame(op, payload, rand::random())
}

/// An HTTP upgrade request.
pub fn upgrade_request(host: &str, path: &str) -> String {
    upgrade_request_for(host, path, None)
}

/// [`upgrade_request`] asking for a WebSocket subprotocol (MQTT brokers want
/// `mqtt`).
pub fn upgrade_request_for(host: &str, path: &str, protocol: Option<&str>) -> String {
    let protocol = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: aGVyYWxkLWJlbmNoLWtleQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
}

/// Length of an HTTP response head at the start of `buf`, if complete.
pub fn http_head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// One unmasked server WebSocket frame at the start of `buf`:
/// `(opcode, payload start, frame end)`, or `None` if incomplete.
pub fn server_ws_frame(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let op = buf[0] & 0x0f;
    if buf[1] & 0x80 != 0 {
        return Err("server frame is masked".into());
    }
    let (len, start) = match buf[1] & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as usize, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a) as usize, 10)
            }
            None => return Ok(None),
        },
        n => (n as usize, 2),
    };
    let end = start + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((op, start, end)))
}

/// Calls `f(op, seq, body)` for every complete goim frame at the start of `buf`
/// (unpacking OpRaw envelopes); returns the bytes consumed.
pub fn goim_frames(buf: &[u8], f: &mut impl FnMut(i32, i32, &[u8])) -> Result<usize, String> {
    let mut pos = 0;
    while let Some(h) = Header::parse(&buf[pos..]) {
        if h.header_len as usize != HEADER_LEN || h.pack_len < HEADER_LEN as i32 {
            return Err(format!("bad frame header {h:?}"));
        }
        let len = h.pack_len as usize;
        let Some(body) = buf.get(pos + HEADER_LEN..pos + len) else {
            break;
        };
        if h.op == Op::RAW {
            let used = goim_frames(body, f)?;
            if used != body.len() {
                return Err("truncated OpRaw body".into());
            }
        } else {
            f(h.op, h.seq, body);
        }
        pos += len;
    }
    Ok(pos)
}

/// The end of the first complete top-level goim frame with operation `op` in
/// `buf`, if there is one: where the frames that followed it start (an auth reply
/// may share a read, or a WebSocket message, with the first pushes).
pub fn end_of_op(buf: &[u8], op: i32) -> Result<Option<usize>, String> {
    let mut pos = 0;
    while let Some(h) = Header::parse(&buf[pos..]) {
        if h.header_len as usize != HEADER_LEN || h.pack_len < HEADER_LEN as i32 {
            return Err(format!("bad frame header {h:?}"));
        }
        let end = pos + h.pack_len as usize;
        if end > buf.len() {
            break;
        }
        if h.op == op {
            return Ok(Some(end));
        }
        pos = end;
    }
    Ok(None)
}

/// An unmasked server WebSocket binary message around `payload` (what a server
/// sends; the load generator rebuilds one when it splits a message it read).
pub fn server_ws_message(payload: &[u8]) -> Vec<u8> {
    let (h, n) = ws::server_header(ws::opcode::BINARY, payload.len());
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    out
}

/// Parses NATS server protocol lines from `buf`; calls `on_msg(payload)` for each
/// `MSG` and `on_ping()` for each `PING`. Returns the bytes consumed.
pub fn nats_ops(
    buf: &[u8],
    on_msg: &mut impl FnMut(&[u8]),
    on_ping: &mut impl FnMut(),
) -> Result<usize, String> {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(pos);
        };
        let line = &rest[..eol];
        if line.starts_with(b"MSG ") {
            let text = std::str::from_utf8(line).map_err(|e| e.to_string())?;
            let size: usize = text
                .rsplit(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad MSG line {text:?}"))?;
            let start = eol + 2;
            if rest.len() < start + size + 2 {
                return Ok(pos);
            }
            on_msg(&rest[start..start + size]);
            pos += start + size + 2;
        } else {
            if line == b"PING" {
                on_ping();
            } else if line.starts_with(b"-ERR") {
                return Err(String::from_utf8_lossy(line).to_string());
            }
            pos += eol + 2;
        }
    }
}

// MQTT 3.1.1, just enough for a subscriber and a publisher at QoS 0: CONNECT,
// SUBSCRIBE, PUBLISH, PINGREQ, and reading CONNACK, SUBACK, PUBLISH, PINGRESP.

/// MQTT's PINGREQ.
pub const MQTT_PINGREQ: [u8; 2] = [0xc0, 0x00];

/// An MQTT packet: fixed header byte, remaining length, body.
fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn mqtt_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT (MQTT 3.1.1, clean session) as `client_id`, with a keep-alive in
/// seconds (0: none).
pub fn mqtt_connect(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&keep_alive.to_be_bytes());
    mqtt_str(&mut body, client_id);
    mqtt_packet(0x10, &body)
}

/// SUBSCRIBE to `topic` at QoS 0.
pub fn mqtt_subscribe(packet_id: u16, topic: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    mqtt_str(&mut body, topic);
    body.push(0);
    mqtt_packet(0x82, &body)
}

/// PUBLISH `payload` to `topic` at QoS 0.
pub fn mqtt_publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + topic.len() + payload.len());
    mqtt_str(&mut body, topic);
    body.extend_from_slice(payload);
    mqtt_packet(0x30, &body)
}

/// What an MQTT broker sent a client.
#[derive(Debug, PartialEq, Eq)]
pub enum MqttIn<'a> {
    /// CONNACK with its return code (0: accepted).
    ConnAck(u8),
    /// SUBACK with the granted QoS (0x80: refused).
    SubAck(u8),
    /// PUBLISH's payload.
    Publish(&'a [u8]),
    /// PINGRESP or another packet this client ignores.
    Other(u8),
}

/// Reads the complete MQTT packets at the start of `buf`, calling `on` for each.
/// Returns the bytes consumed.
pub fn mqtt_packets(buf: &[u8], on: &mut impl FnMut(MqttIn<'_>)) -> Result<usize, String> {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        if rest.len() < 2 {
            return Ok(pos);
        }
        let (mut len, mut mult, mut i) = (0usize, 1usize, 1);
        loop {
            let Some(&b) = rest.get(i) else {
                return Ok(pos);
            };
            len += (b & 0x7f) as usize * mult;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            mult *= 128;
            if i > 4 {
                return Err("MQTT remaining length over 4 bytes".into());
            }
        }
        if rest.len() < i + len {
            return Ok(pos);
        }
        let body = &rest[i..i + len];
        let kind = rest[0] >> 4;
        match kind {
            2 if len >= 2 => on(MqttIn::ConnAck(body[1])),
            9 if len >= 3 => on(MqttIn::SubAck(body[2])),
            3 => {
                if body.len() < 2 {
                    return Err("short MQTT PUBLISH".into());
                }
                let topic = u16::from_be_bytes([body[0], body[1]]) as usize;
                // QoS 1 and 2 carry a packet id after the topic.
                let id = if (rest[0] >> 1) & 3 > 0 { 2 } else { 0 };
                let start = 2 + topic + id;
                if start > body.len() {
                    return Err("MQTT PUBLISH topic past its end".into());
                }
                on(MqttIn::Publish(&body[start..]));
            }
            k => on(MqttIn::Other(k)),
        }
        pos += i + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_packets_roundtrip() {
        let c = mqtt_connect("bench-1", 60);
        assert_eq!(
            c,
            [
                &[0x10, 19, 0, 4][..],
                b"MQTT",
                &[4, 2, 0, 60, 0, 7],
                b"bench-1"
            ]
            .concat()
        );
        assert_eq!(
            mqtt_subscribe(1, "a/b"),
            [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 0]
        );
        // A 200-byte publish needs two length bytes.
        let big = mqtt_publish("t", &[7; 200]);
        assert_eq!(&big[..3], &[0x30, 203 % 128 + 128, 1]);
        let mut stream = vec![0x20, 2, 0, 0, 0x90, 3, 0, 1, 0];
        stream.extend_from_slice(&big);
        stream.extend_from_slice(&[0xd0, 0]);
        stream.extend_from_slice(&mqtt_publish("t", b"partial")[..5]);
        let mut seen = Vec::new();
        let used = mqtt_packets(&stream, &mut |p| {
            seen.push(match p {
                MqttIn::ConnAck(c) => format!("connack {c}"),
                MqttIn::SubAck(q) => format!("suback {q}"),
                MqttIn::Publish(b) => format!("publish {}", b.len()),
                MqttIn::Other(k) => format!("other {k}"),
            })
        })
        .unwrap();
        assert_eq!(seen, ["connack 0", "suback 0", "publish 200", "other 13"]);
        assert_eq!(used, stream.len() - 5, "the partial packet waits");
        assert!(mqtt_packets(&[0x30, 0xff, 0xff, 0xff, 0xff, 1], &mut |_| {}).is_err());
    }

    #[test]
    fn timestamps_roundtrip() {
        let p = payload(7);
        let t = timestamp_ns(p.as_bytes()).unwrap();
        assert!(t > 1_600_000_000_000_000_000);
        assert_eq!(timestamp_ns(b"{\"x\":1}"), None);
        let padded = padded_payload(7, 1024);
        assert_eq!(padded.len(), 1024);
        let v: serde_json::Value = serde_json::from_str(&padded).unwrap();
        assert_eq!(v["s"], 7);
        assert_eq!(
            timestamp_ns(padded.as_bytes()),
            Some(v["t"].as_u64().unwrap())
        );
        // Below the unpadded size nothing is added.
        assert!(!padded_payload(7, 10).contains("\"p\""));
    }

    #[test]
    fn goim_and_raw_scanning() {
        let mut batch = herald_proto::raw::RawBatch::default();
        batch.push(1000, b"a");
        batch.push(1000, b"bb");
        let env = Frame::new(1, Op::RAW, 0, batch.finish()).to_bytes();
        let mut stream = env.to_vec();
        stream.extend_from_slice(&goim(3, 9, b"\0\0\0\x01"));
        stream.extend_from_slice(&goim(1000, 0, b"partial")[..10]);
        let mut seen = Vec::new();
        let used = goim_frames(&stream, &mut |op, _, body| seen.push((op, body.to_vec()))).unwrap();
        assert_eq!(used, stream.len() - 10);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1], (1000, b"bb".to_vec()));
    }

    #[test]
    fn the_end_of_an_auth_reply_followed_by_pushes() {
        let mut stream = goim(3, 1, b"");
        let reply_end = stream.len() + 16;
        stream.extend_from_slice(&goim(8, 1, b""));
        stream.extend_from_slice(&goim(25, 0, b"{}"));
        assert_eq!(end_of_op(&stream, 8).unwrap(), Some(reply_end));
        assert_eq!(end_of_op(&stream[..reply_end - 1], 8).unwrap(), None);
        assert_eq!(end_of_op(&stream, 7).unwrap(), None);
        let msg = server_ws_message(&stream);
        assert_eq!(
            server_ws_frame(&msg).unwrap(),
            Some((2, msg.len() - stream.len(), msg.len()))
        );
    }

    #[test]
    fn nats_parsing() {
        let data = b"INFO {}\r\nPING\r\nMSG a.b 1 5\r\nhello\r\nMSG a.b 1 3\r\nab";
        let mut msgs = Vec::new();
        let mut pings = 0;
        let used = nats_ops(data, &mut |m| msgs.push(m.to_vec()), &mut || pings += 1).unwrap();
        assert_eq!(msgs, vec![b"hello".to_vec()]);
        assert_eq!(pings, 1);
        assert_eq!(&data[used..], b"MSG a.b 1 3\r\nab");
    }

    #[test]
    fn server_frames() {
        let (h, n) = ws::server_header(2, 300);
        let mut f = h[..n].to_vec();
        f.extend(vec![0u8; 300]);
        assert_eq!(server_ws_frame(&f).unwrap(), Some((2, 4, 304)));
        assert_eq!(server_ws_frame(&f[..100]).unwrap(), None);
    }
}
