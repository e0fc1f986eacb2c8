//! RFC 6455 framing, sans I/O: the server's upgrade handshake, a message decoder
//! that reassembles fragments and answers nothing by itself, and frame headers for
//! both directions (servers write unmasked frames, clients masked ones).

use base64::Engine;
use bytes::{Bytes, BytesMut};
use sha1::{Digest, Sha1};

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Most continuation frames accepted for one message (goim gives up near 100 too).
pub const MAX_FRAGMENTS: usize = 128;
/// Largest HTTP upgrade request accepted.
pub const MAX_REQUEST: usize = 8192;

/// WebSocket opcodes.
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// Text message.
    pub const TEXT: u8 = 0x1;
    /// Binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Why an upgrade request or a frame stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The upgrade request is not valid HTTP or not a WebSocket upgrade.
    #[error("bad upgrade request: {0}")]
    BadRequest(String),
    /// The request path is not the WebSocket endpoint.
    #[error("no WebSocket endpoint at {0}")]
    NotFound(String),
    /// Reserved bits set, an unknown opcode or a malformed control frame.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The message exceeds the size limit.
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(u64),
}

/// What the server needs from a valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Value for the `Sec-WebSocket-Accept` response header.
    pub accept: String,
    /// The `Cookie` header, or empty (goim forwards it to logic `Connect`).
    pub cookie: String,
    /// The request target, path and query (`/sub?token=…`).
    pub target: String,
    /// Every header, names in lower case, repeated headers joined with `, `, in
    /// request order (for authenticators that decide on them).
    pub headers: Vec<(String, String)>,
}

impl Upgrade {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `base64(sha1(key + GUID))`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Parses an upgrade request at the start of `buf` for the endpoint `path`.
///
/// `Ok(None)`: the request is incomplete. `Ok(Some((upgrade, used)))`: valid; `used`
/// bytes belong to the request, anything after them is already WebSocket data. A
/// query string after `path` is allowed.
pub fn parse_upgrade(buf: &[u8], path: &str) -> Result<Option<(Upgrade, usize)>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_REQUEST {
                return Err(WsError::BadRequest("request header too large".into()));
            }
            return Ok(None);
        }
        Err(e) => return Err(WsError::BadRequest(e.to_string())),
    };
    if req.method != Some("GET") {
        return Err(WsError::BadRequest("method must be GET".into()));
    }
    let target = req.path.unwrap_or("");
    let target_path = target.split('?').next().unwrap_or("");
    if target_path != path {
        return Err(WsError::NotFound(target_path.to_string()));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if header("sec-websocket-version") != Some("13") {
        return Err(WsError::BadRequest(
            "Sec-WebSocket-Version must be 13".into(),
        ));
    }
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(WsError::BadRequest("Upgrade must be websocket".into()));
    }
    if !header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    }) {
        return Err(WsError::BadRequest(
            "Connection must contain upgrade".into(),
        ));
    }
    let key = header("sec-websocket-key").unwrap_or("");
    if key.is_empty() {
        return Err(WsError::BadRequest("Sec-WebSocket-Key is missing".into()));
    }
    let mut headers: Vec<(String, String)> = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => headers.push((name, value)),
        }
    }
    Ok(Some((
        Upgrade {
            accept: accept_key(key),
            cookie: header("cookie").unwrap_or("").to_string(),
            target: target.to_string(),
            headers,
        },
        used,
    )))
}

/// WebSocket close codes herald sends (RFC 6455 §7.4 and the application range).
pub mod close {
    /// The endpoint is going away (a client-side code, listed for completeness).
    pub const GOING_AWAY: u16 = 1001;
    /// A malformed frame or message.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client broke a rule: a limit, a refused credential, a forbidden action.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server is restarting: reconnect (to another node) after a short delay.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The server cannot keep up with this client (slow consumer): try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// herald: another connection authenticated with the same key.
    pub const REPLACED: u16 = 4000;
    /// herald: the connection's credentials expired without a refresh.
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// A complete unmasked server close frame with `code` and a `reason` (cut to the
/// 123 bytes a control frame can carry, on a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let (h, n) = server_header(opcode::CLOSE, 2 + reason.len());
    let mut out = Vec::with_capacity(n + 2 + reason.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    out
}

/// The `101 Switching Protocols` response for an accepted upgrade.
pub fn switching_protocols(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// A plain HTTP error response for a refused upgrade.
pub fn http_error(status: u16, reason: &str, message: &str) -> String {
    let body = format!("{message}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Header of an unmasked server frame (`FIN` set) carrying `len` payload bytes.
/// Returns the buffer and how many of its bytes are used (2, 4 or 10).
pub fn server_header(op: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | (op & 0x0f);
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A complete masked client frame (`FIN` set), as a browser would send it.
pub fn client_frame(op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let (h, n) = server_header(op, payload.len());
    let mut out = Vec::with_capacity(n + 4 + payload.len());
    out.extend_from_slice(&h[..n]);
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A decoded message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A complete text or binary message (goim treats both alike).
    Data(Bytes),
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame, with its status code and reason when it carries them.
    Close {
        /// The status code (RFC 6455 §7.4), if any.
        code: Option<u16>,
        /// The reason text (lossy UTF-8), possibly empty.
        reason: String,
    },
}

/// Decodes frames from one peer, reassembling fragmented messages.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    require_mask: bool,
    partial: Option<BytesMut>,
    fragments: usize,
}

impl Decoder {
    /// A decoder for client frames (masking not enforced, as in goim) with the given
    /// message size limit.
    pub fn server(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            require_mask: false,
            partial: None,
            fragments: 0,
        }
    }

    /// Whether a fragmented message is being reassembled.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Decodes the next message from `buf`. `Ok(None)` means more bytes are needed;
    /// otherwise returns the message (if the frame completed one) and the number of
    /// bytes consumed. A consumed continuation frame that does not finish its message
    /// returns `Ok(Some((None, used)))`.
    #[allow(clippy::type_complexity)]
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Option<Message>, usize)>, WsError> {
        let Some(head) = Head::parse(buf, self.require_mask)? else {
            return Ok(None);
        };
        self.check(&head)?;
        let Some((payload, used)) = Payload::after(buf, &head) else {
            return Ok(None);
        };
        let msg = self.message(&head, &payload)?;
        Ok(Some((msg, used)))
    }

    /// Refuses a malformed control frame, and a frame that would take its message
    /// over the size limit.
    fn check(&self, head: &Head) -> Result<(), WsError> {
        let is_control = head.op & 0x08 != 0;
        if is_control && (!head.fin || head.len > 125) {
            return Err(WsError::Protocol("malformed control frame"));
        }
        let so_far = self.partial.as_ref().map_or(0, |p| p.len()) as u64;
        if !is_control && so_far.saturating_add(head.len) > self.max_message as u64 {
            return Err(WsError::TooLarge(so_far.saturating_add(head.len)));
        }
        Ok(())
    }

    /// The message a frame completes, if any.
    fn message(&mut self, head: &Head, payload: &Payload<'_>) -> Result<Option<Message>, WsError> {
        match head.op {
            opcode::TEXT | opcode::BINARY => self.start_message(head.fin, payload),
            opcode::CONTINUATION => self.continue_message(head.fin, payload),
            opcode::PING => Ok(Some(Message::Ping(payload.unmasked().freeze()))),
            opcode::PONG => Ok(Some(Message::Pong)),
            opcode::CLOSE => Ok(Some(close_message(&payload.unmasked()))),
            _ => Err(WsError::Protocol("unknown opcode")),
        }
    }

    /// A text or binary frame: a whole message, or the first fragment of one.
    fn start_message(
        &mut self,
        fin: bool,
        payload: &Payload<'_>,
    ) -> Result<Option<Message>, WsError> {
        if self.partial.is_some() {
            return Err(WsError::Protocol("new message inside a fragmented one"));
        }
        let data = payload.unmasked();
        if fin {
            return Ok(Some(Message::Data(data.freeze())));
        }
        self.partial = Some(data);
        self.fragments = 1;
        Ok(None)
    }

    /// A continuation frame: the next fragment of the message being reassembled,
    /// completing it when `fin`.
    fn continue_message(
        &mut self,
        fin: bool,
        payload: &Payload<'_>,
    ) -> Result<Option<Message>, WsError> {
        let Some(mut data) = self.partial.take() else {
            return Err(WsError::Protocol("continuation without a message"));
        };
        self.fragments += 1;
        if self.fragments > MAX_FRAGMENTS {
            return Err(WsError::Protocol("too many fragments"));
        }
        payload.unmask_into(&mut data);
        if fin {
            self.fragments = 0;
            return Ok(Some(Message::Data(data.freeze())));
        }
        self.partial = Some(data);
        Ok(None)
    }
}

/// A frame header up to and including its payload length (the mask, if any,
/// follows).
struct Head {
    fin: bool,
    op: u8,
    masked: bool,
    /// Payload length.
    len: u64,
    /// Bytes of the header so far (2, 4 or 10).
    size: usize,
}

impl Head {
    /// Parses a header from the start of `buf`; `Ok(None)` if more bytes are
    /// needed.
    fn parse(buf: &[u8], require_mask: bool) -> Result<Option<Head>, WsError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let masked = b1 & 0x80 != 0;
        if require_mask && !masked {
            return Err(WsError::Protocol("client frame not masked"));
        }
        let (len, size) = match b1 & 0x7f {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u16::from_be_bytes([b[0], b[1]]) as u64, 4usize)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10usize)
            }
            n => (n as u64, 2usize),
        };
        Ok(Some(Head {
            fin: b0 & 0x80 != 0,
            op: b0 & 0x0f,
            masked,
            len,
            size,
        }))
    }
}

/// A frame's payload as it is in the buffer, with its mask.
struct Payload<'a> {
    bytes: &'a [u8],
    mask: Option<[u8; 4]>,
}

impl<'a> Payload<'a> {
    /// The mask and payload that follow `head` in `buf`, and the length of the
    /// whole frame; `None` if more bytes are needed.
    fn after(buf: &'a [u8], head: &Head) -> Option<(Payload<'a>, usize)> {
        let mut pos = head.size;
        let mask = if head.masked {
            let m = buf.get(pos..pos + 4)?;
            pos += 4;
            Some([m[0], m[1], m[2], m[3]])
        } else {
            None
        };
        let len = head.len as usize;
        let bytes = buf.get(pos..pos + len)?;
        Some((Payload { bytes, mask }, pos + len))
    }

    /// Appends the payload, unmasked, to `dst`.
    fn unmask_into(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.extend_from_slice(self.bytes);
        if let Some(m) = self.mask {
            for (i, b) in dst[start..].iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
    }

    /// The payload, unmasked, in a buffer of its own.
    fn unmasked(&self) -> BytesMut {
        let mut data = BytesMut::with_capacity(self.bytes.len());
        self.unmask_into(&mut data);
        data
    }
}

/// A close frame's status code and reason, when it carries them.
fn close_message(data: &[u8]) -> Message {
    let code = (data.len() >= 2).then(|| u16::from_be_bytes([data[0], data[1]]));
    let reason = data
        .get(2..)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .unwrap_or_default();
    Message::Close { code, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REQ: &str = "GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: a=b\r\n\r\n";

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_parses() {
        let mut buf = REQ.as_bytes().to_vec();
        buf.extend_from_slice(b"\x82\x00");
        let (up, used) = parse_upgrade(&buf, "/sub").unwrap().unwrap();
        assert_eq!(used, REQ.len());
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.cookie, "a=b");
        assert_eq!(up.target, "/sub");
        assert_eq!(up.header("host"), Some("x"));
        assert_eq!(up.header("cookie"), Some("a=b"));
        assert_eq!(parse_upgrade(&buf[..20], "/sub"), Ok(None));
        let q = REQ.replace("/sub", "/sub?x=1");
        let (up, _) = parse_upgrade(q.as_bytes(), "/sub").unwrap().unwrap();
        assert_eq!(up.target, "/sub?x=1");
        // Repeated headers are joined in order, names folded to lower case.
        let rep = REQ.replace(
            "Cookie: a=b\r\n",
            "X-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\n",
        );
        let (up, _) = parse_upgrade(rep.as_bytes(), "/sub").unwrap().unwrap();
        assert_eq!(up.header("x-forwarded-for"), Some("1.1.1.1, 2.2.2.2"));
    }

    #[test]
    fn close_frames() {
        assert_eq!(close_frame(1012, "bye"), b"\x88\x05\x03\xf4bye");
        // A client decoder reads the code and reason back.
        let mut d = Decoder::server(1024);
        assert_eq!(
            d.decode(&close_frame(4001, "expired")).unwrap().unwrap().0,
            Some(Message::Close {
                code: Some(4001),
                reason: "expired".into()
            })
        );
        // A long reason is cut to fit a control frame, on a character boundary.
        let f = close_frame(close::POLICY_VIOLATION, &"é".repeat(100));
        assert_eq!(f[1] as usize, f.len() - 2);
        assert!(f.len() - 2 <= 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }

    #[test]
    fn upgrade_refusals() {
        let cases = [
            REQ.replace("GET", "POST"),
            REQ.replace("Version: 13", "Version: 8"),
            REQ.replace("Upgrade: websocket", "Upgrade: h2c"),
            REQ.replace("keep-alive, Upgrade", "keep-alive"),
            REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", ""),
        ];
        for c in cases {
            assert!(
                matches!(
                    parse_upgrade(c.as_bytes(), "/sub"),
                    Err(WsError::BadRequest(_))
                ),
                "{c}"
            );
        }
        let other = REQ.replace("/sub", "/other");
        assert_eq!(
            parse_upgrade(other.as_bytes(), "/sub"),
            Err(WsError::NotFound("/other".into()))
        );
        assert!(parse_upgrade(b"\x00\x01garbage\r\n\r\n", "/sub").is_err());
    }

    #[test]
    fn decodes_masked_and_fragmented() {
        let mut d = Decoder::server(100);
        let f = client_frame(opcode::BINARY, b"hello", [1, 2, 3, 4]);
        assert_eq!(
            d.decode(&f).unwrap(),
            Some((Some(Message::Data(Bytes::from_static(b"hello"))), f.len()))
        );
        assert_eq!(d.decode(&f[..f.len() - 1]).unwrap(), None);
        let mut first = client_frame(opcode::TEXT, b"ab", [9, 9, 9, 9]);
        first[0] &= 0x7f;
        let (m, _) = d.decode(&first).unwrap().unwrap();
        assert_eq!(m, None);
        let ping = client_frame(opcode::PING, b"p", [0, 0, 0, 0]);
        assert_eq!(
            d.decode(&ping).unwrap().unwrap().0,
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        let last = client_frame(opcode::CONTINUATION, b"cd", [5, 6, 7, 8]);
        assert_eq!(
            d.decode(&last).unwrap().unwrap().0,
            Some(Message::Data(Bytes::from_static(b"abcd")))
        );
    }

    #[test]
    fn decode_errors() {
        let mut d = Decoder::server(10);
        let big = client_frame(opcode::BINARY, &[0u8; 11], [1, 1, 1, 1]);
        assert!(matches!(d.decode(&big), Err(WsError::TooLarge(11))));
        let mut rsv = client_frame(opcode::BINARY, b"a", [1, 1, 1, 1]);
        rsv[0] |= 0x40;
        assert!(d.decode(&rsv).is_err());
        let unknown = client_frame(0x3, b"a", [1, 1, 1, 1]);
        assert!(d.decode(&unknown).is_err());
        let cont = client_frame(opcode::CONTINUATION, b"a", [1, 1, 1, 1]);
        assert!(d.decode(&cont).is_err());
    }

    #[test]
    fn server_header_lengths() {
        assert_eq!(server_header(2, 5), ([0x82, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2));
        assert_eq!(server_header(2, 300).1, 4);
        assert_eq!(server_header(2, 70000).1, 10);
    }

    proptest! {
        #[test]
        fn decoder_never_panics(input in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut d = Decoder::server(4112);
            let mut rest = &input[..];
            while let Ok(Some((_, used))) = d.decode(rest) {
                if used == 0 { break; }
                rest = &rest[used..];
            }
            let _ = parse_upgrade(&input, "/sub");
        }

        #[test]
        fn masked_roundtrip(payload in proptest::collection::vec(any::<u8>(), 0..70000), mask in any::<[u8; 4]>()) {
            let mut d = Decoder::server(1 << 20);
            let f = client_frame(opcode::BINARY, &payload, mask);
            let (m, used) = d.decode(&f).unwrap().unwrap();
            prop_assert_eq!(used, f.len());
            prop_assert_eq!(m, Some(Message::Data(Bytes::from(payload))));
        }
    }
}
