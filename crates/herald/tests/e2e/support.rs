//! Test clients written from the wire protocol: goim over TCP and over WebSocket,
//! and a minimal HTTP/1.1 client. They share nothing with the server but the
//! sans-io `herald-proto` helpers for encoding.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use herald::{Config, Standalone};
use herald_proto::{ws, Frame, Op};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(5);

/// A config on ephemeral loopback ports with short intervals.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    cfg.comet.tcp_bind = vec![any];
    cfg.comet.ws_bind = vec![any];
    cfg.logic.http_bind = Some(any);
    cfg.comet.online_report_interval = Duration::from_millis(200);
    cfg.logic.online_interval = Duration::from_millis(200);
    cfg.comet.handshake_timeout = Duration::from_secs(3);
    cfg.server.id = "test-comet:3109".into();
    cfg.shutdown.grace = Duration::from_secs(3);
    // Each server its own chat database and secret.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    cfg.chat.data_dir = std::env::temp_dir().join(format!(
        "herald-e2e-chat-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    cfg
}

pub async fn start() -> Standalone {
    start_with(test_config()).await
}

pub async fn start_with(cfg: Config) -> Standalone {
    Standalone::start(cfg).await.expect("server starts")
}

/// A JSON Web Token signed with HS256 (what a backend would mint for a client).
pub fn jwt_hs256(claims: &Value, secret: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let input = format!(
        "{}.{}",
        b64(serde_json::json!({"alg": "HS256", "typ": "JWT"})
            .to_string()
            .as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(sig.as_ref()))
}

/// Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

pub fn auth_body(mid: i64, key: &str, room: &str, accepts: &[i32]) -> Vec<u8> {
    serde_json::json!({"mid": mid, "key": key, "room_id": room, "platform": "test", "accepts": accepts})
        .to_string()
        .into_bytes()
}

/// What a client reads and writes: a TCP stream, or TLS over one.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A goim client over TCP or WebSocket, in the clear or over TLS.
pub struct Client {
    stream: Box<dyn Io>,
    ws: bool,
    /// The status code of the WebSocket close frame the server sent, if any.
    pub close_code: Option<u16>,
    /// Its reason text.
    pub close_reason: String,
    buf: BytesMut,
    decoder: ws::Decoder,
    /// Frames received but not yet returned (from OpRaw batches on TCP or WS).
    queued: std::collections::VecDeque<Frame>,
    seq: i32,
}

impl Client {
    pub async fn tcp(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Client::new(Box::new(stream), false)
    }

    /// Opens a WebSocket on `/sub` and completes the upgrade.
    pub async fn ws(addr: SocketAddr) -> Client {
        Client::ws_at(addr, "/sub").await
    }

    /// Opens a WebSocket on `target` (path and query) and completes the upgrade.
    pub async fn ws_at(addr: SocketAddr, target: &str) -> Client {
        let stream = TcpStream::connect(addr).await.expect("ws connect");
        Client::upgrade(Box::new(stream), addr, target, "").await
    }

    /// Sends the upgrade request (with `extra` header lines) and checks the 101.
    pub async fn upgrade(
        stream: Box<dyn Io>,
        addr: SocketAddr,
        target: &str,
        extra: &str,
    ) -> Client {
        let mut c = Client::new(stream, true);
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        c.stream.write_all(req.as_bytes()).await.unwrap();
        let head = c.read_http_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        c
    }

    /// A TLS connection to `addr` trusting `ca` (PEM file), as `localhost`.
    pub async fn tls_stream(
        addr: SocketAddr,
        ca: &std::path::Path,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tls = herald_tls::ClientTls {
            ca_file: ca.to_path_buf(),
            ..Default::default()
        };
        let config = herald_tls::client_config(&tls, &[]).expect("client TLS config");
        let connector = tokio_rustls::TlsConnector::from(config);
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await
    }

    /// goim's TCP protocol over TLS.
    pub async fn tls_tcp(addr: SocketAddr, ca: &std::path::Path) -> Client {
        let s = Client::tls_stream(addr, ca).await.expect("TLS handshake");
        Client::new(Box::new(s), false)
    }

    /// A secure WebSocket on `/sub`.
    pub async fn wss(addr: SocketAddr, ca: &std::path::Path) -> Client {
        let s = Client::tls_stream(addr, ca).await.expect("TLS handshake");
        Client::upgrade(Box::new(s), addr, "/sub", "").await
    }

    pub fn new(stream: Box<dyn Io>, ws: bool) -> Client {
        Client {
            stream,
            ws,
            close_code: None,
            close_reason: String::new(),
            buf: BytesMut::new(),
            decoder: ws::Decoder::server(64 << 20),
            queued: Default::default(),
            seq: 0,
        }
    }

    /// Reads an HTTP response head (through the blank line).
    pub async fn read_http_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).to_string();
                self.buf.advance(end + 4);
                return head;
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("http head in time")
                .unwrap();
            if n == 0 {
                return String::from_utf8_lossy(&self.buf).to_string();
            }
        }
    }

    /// Writes raw bytes (as a WebSocket binary message when on WebSocket).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        if self.ws {
            let f = ws::client_frame(ws::opcode::BINARY, bytes, [0x11, 0x22, 0x33, 0x44]);
            self.stream.write_all(&f).await.unwrap();
        } else {
            self.stream.write_all(bytes).await.unwrap();
        }
    }

    /// Writes bytes to the socket as they are (no WebSocket framing).
    pub async fn send_socket(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Like `send_socket`, reporting a failed write (the server closed).
    pub async fn send_socket_checked(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    pub async fn send(&mut self, op: i32, body: &[u8]) -> i32 {
        self.seq += 1;
        let f = Frame::new(1, op, self.seq, body.to_vec()).to_bytes();
        self.send_raw(&f).await;
        self.seq
    }

    pub async fn auth(&mut self, mid: i64, key: &str, room: &str, accepts: &[i32]) {
        let seq = self
            .send(Op::AUTH, &auth_body(mid, key, room, accepts))
            .await;
        let f = self.recv().await.expect("auth reply");
        assert_eq!((f.op, f.seq, f.body.len()), (Op::AUTH_REPLY, seq, 0));
    }

    /// Reads the next wire-level message: a goim frame (TCP) or one WebSocket
    /// message decoded as exactly one goim frame. `None` on close.
    pub async fn recv_wire(&mut self) -> Option<Frame> {
        loop {
            if self.ws {
                match self.decoder.decode(&self.buf) {
                    Ok(Some((msg, used))) => {
                        self.buf.advance(used);
                        match msg {
                            Some(ws::Message::Data(d)) => {
                                return Some(
                                    herald_proto::decode_exact(&d, usize::MAX / 2)
                                        .expect("server sends one frame per message"),
                                )
                            }
                            Some(ws::Message::Close { code, reason }) => {
                                self.close_code = code;
                                self.close_reason = reason;
                                return None;
                            }
                            _ => continue,
                        }
                    }
                    Ok(None) => {}
                    Err(e) => panic!("bad websocket data from server: {e}"),
                }
            } else if let Some((f, used)) =
                herald_proto::decode_frame(&self.buf, usize::MAX / 2).expect("valid frame")
            {
                self.buf.advance(used);
                return Some(f);
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("server answers in time")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Next frame with OpRaw envelopes unpacked (as goim's clients do).
    pub async fn recv(&mut self) -> Option<Frame> {
        if let Some(f) = self.queued.pop_front() {
            return Some(f);
        }
        let f = self.recv_wire().await?;
        if f.op == Op::RAW {
            let mut inner = herald_proto::raw::unpack(&f.body).expect("valid OpRaw body");
            assert!(!inner.is_empty(), "empty OpRaw");
            let first = inner.remove(0);
            self.queued.extend(inner);
            return Some(first);
        }
        Some(f)
    }

    /// Next frame that is not a heartbeat reply.
    pub async fn recv_push(&mut self) -> Frame {
        loop {
            let f = self.recv().await.expect("a push");
            if f.op != Op::HEARTBEAT_REPLY {
                return f;
            }
        }
    }

    /// Asserts nothing arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(f) = tokio::time::timeout(d, self.recv()).await {
            panic!("expected nothing, got {f:?}");
        }
    }

    /// Reads until the server closes the connection and returns the WebSocket
    /// close code it sent (`None` when the connection just ended). Pushes and
    /// replies on the way are skipped.
    pub async fn close_code(&mut self) -> Option<u16> {
        while self.recv_wire().await.is_some() {}
        self.close_code
    }

    /// Waits until the server closes the connection.
    pub async fn expect_closed(&mut self) {
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                let mut b = [0u8; 4096];
                match self.stream.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "server did not close the connection");
    }

    /// Heartbeats until the reply carries `want` (online counts settle within a
    /// report interval).
    pub async fn heartbeat_until(&mut self, want: i32) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.heartbeat().await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "online count stuck at {got}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn heartbeat(&mut self) -> i32 {
        let seq = self.send(Op::HEARTBEAT, b"").await;
        let f = loop {
            let f = self.recv().await.expect("heartbeat reply");
            if f.op == Op::HEARTBEAT_REPLY {
                break f;
            }
        };
        assert_eq!(f.seq, seq);
        assert_eq!(f.body.len(), 4);
        i32::from_be_bytes([f.body[0], f.body[1], f.body[2], f.body[3]])
    }
}

/// A minimal HTTP/1.1 response.
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        let want = format!("{}:", name.to_ascii_lowercase());
        self.headers.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with(&want)
                .then(|| l[want.len()..].trim().to_string())
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    http_with(addr, method, path, &[], body).await
}

/// [`http`] with extra request headers.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect(addr).await.expect("http connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // A server may answer before reading the whole body (413 on an oversized
    // Content-Length) and close: the rest of the write then fails with EPIPE or
    // ECONNRESET. That is the server being right; the answer is still readable.
    let sent = async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await
    }
    .await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("http response in time");
    if let Err(e) = read {
        // A reset after the answer arrived (the server closed with our unread
        // body in its buffer) still leaves the answer in `raw`.
        assert!(
            !raw.is_empty(),
            "no HTTP response: read failed ({e}); write: {sent:?}"
        );
    }
    parse_response(&raw)
}

/// Parses a complete HTTP/1.1 response (head and the rest as its body).
pub fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no http head in {:?}", String::from_utf8_lossy(raw)));
    let headers = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = headers[9..12].parse().unwrap();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

/// Reads one response with a `Content-Length` from a kept-alive connection.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Response {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read response head");
        assert!(
            n == 1,
            "connection closed inside a response head: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    let mut body = vec![0u8; len];
    tokio::time::timeout(WAIT, s.read_exact(&mut body))
        .await
        .expect("response body in time")
        .unwrap();
    raw.extend_from_slice(&body);
    parse_response(&raw)
}

/// Writes one keep-alive request (no `Connection: close`).
pub async fn write_request<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: herald\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
}

/// Waits for the peer to close (EOF or reset); fails after `WAIT`.
pub async fn wait_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) {
    let closed = tokio::time::timeout(WAIT, async {
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "server did not close the connection");
}

/// The value of `herald_limit_hits_total{limit="<limit>"}` in this process.
pub fn limit_hits(limit: &str) -> u64 {
    metric(&format!("herald_limit_hits_total{{limit=\"{limit}\"}}")) as u64
}

/// The value of one sample (`name{labels}`, as rendered) in this process's
/// metrics; 0 when it has not been recorded.
pub fn metric(sample: &str) -> f64 {
    let text = herald::observe::metrics_handle().render();
    let prefix = format!("{sample} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

pub async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Response {
    http(addr, "POST", path, body).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Response {
    http(addr, "GET", path, b"").await
}

/// Polls `f` until it returns true or fails after `WAIT`.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A chat API call: JSON body, the session token as a bearer token.
pub async fn chat_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    http_with(addr, method, path, &headers, body.as_bytes()).await
}

/// A WebSocket connected as the chat user of `token`.
pub async fn chat_socket(addr: SocketAddr, token: &str) -> Client {
    chat_auth(Client::ws(addr).await, token).await
}

/// `c` authenticated as the chat user of `token`.
pub async fn chat_auth(mut c: Client, token: &str) -> Client {
    let body = serde_json::json!({ "chat": token }).to_string();
    let seq = c.send(Op::AUTH, body.as_bytes()).await;
    let f = c.recv().await.expect("auth reply");
    assert_eq!((f.op, f.seq), (Op::AUTH_REPLY, seq));
    c
}

/// The next chat event a socket receives (op 5, a JSON body).
pub async fn chat_event(c: &mut Client) -> Value {
    let f = c.recv_push().await;
    assert_eq!(f.op, 5, "chat events are pushed as op 5");
    serde_json::from_slice(&f.body).unwrap()
}

/// The next chat event of type `kind` (those of other types before it are
/// skipped).
pub async fn chat_event_of(c: &mut Client, kind: &str) -> Value {
    loop {
        let e = chat_event(c).await;
        if e["type"] == kind {
            return e;
        }
    }
}

/// Sends a chat op (4, 18 or 20) on a chat socket; returns its reply (op 5, 19
/// or 21 with the request's seq, a JSON body) and the events that came first.
pub async fn chat_op(c: &mut Client, op: i32, body: &Value) -> (Value, Vec<Value>) {
    let seq = c.send(op, body.to_string().as_bytes()).await;
    let mut events = Vec::new();
    loop {
        let f = c.recv_push().await;
        let v: Value = serde_json::from_slice(&f.body).expect("a JSON body");
        if f.seq == seq {
            assert_eq!(f.op, op + 1, "the reply to op {op}: {v}");
            return (v, events);
        }
        assert_eq!(f.op, 5, "an event: {v}");
        events.push(v);
    }
}

/// The ids of the messages in a page of history (a sync's reply, or the HTTP
/// history).
pub fn message_ids(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .expect("a page of messages")
        .iter()
        .map(|m| m["id"].as_i64().expect("a message id"))
        .collect()
}

/// Registers shop `shop` with agent `user` (password "correct horse") through
/// the chat API at `addr`; the answer (`token`, `user`, `shop`).
pub async fn chat_register(addr: SocketAddr, shop: &str, user: &str) -> Value {
    let body = serde_json::json!({"shop": shop, "username": user, "password": "correct horse"});
    let r = chat_call(addr, "POST", "/chat/api/register", None, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// A new visitor of `shop` through the chat API at `addr`: its token and
/// conversation id.
pub async fn chat_visitor(addr: SocketAddr, shop: &str) -> (String, i64) {
    let body = serde_json::json!({ "shop": shop });
    let r = chat_call(addr, "POST", "/chat/api/visitors", None, Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["token"].as_str().unwrap().to_string(),
        v["conversation"]["id"].as_i64().unwrap(),
    )
}
