//! Reading a client socket: bytes (decrypted when the listener is a TLS one) into
//! goim frames, WebSocket messages and the upgrade request.
//!
//! Whatever is available is read into a stack buffer and decoded at once; only an
//! incomplete frame is kept between reads, so an idle connection holds no read
//! buffer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use herald_proto::{ws, Frame};
use tokio::net::TcpStream;

use crate::config::CometConfig;
use crate::sink::Sink;
use crate::tls::TlsSession;

/// Largest amount read from the socket in one wake-up before frames are handled.
const READ_BATCH: usize = 64 * 1024;

/// How frames are carried.
pub(super) enum Transport {
    Tcp,
    Ws {
        /// Set once the HTTP upgrade has been answered.
        upgraded: bool,
        decoder: ws::Decoder,
    },
}

/// Something read from the client.
pub(super) enum Inbound {
    Frame(Frame),
    Upgrade(Box<ws::Upgrade>),
    Ping(Bytes),
    Close,
}

/// Why reading stopped.
pub(super) enum ReadError {
    /// The peer closed the connection.
    Eof,
    Io(io::Error),
    /// Malformed frame or message; the connection is closed.
    BadFrame(String),
    /// Malformed WebSocket upgrade; an HTTP error is sent first.
    BadUpgrade(u16, &'static str, String),
    /// The TLS layer failed (bad record, handshake failure); an alert was sent.
    Tls(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// One client socket as its connection task reads it.
pub(super) struct Conn {
    /// Shared with the channel's sink, which writes; this task reads.
    pub stream: Arc<TcpStream>,
    pub peer: SocketAddr,
    /// The client's address: the peer, or the `X-Forwarded-For` client when the
    /// peer is a trusted proxy.
    pub client: IpAddr,
    pub transport: Transport,
    /// The TLS session of a TLS listener's connection.
    pub tls: Option<Arc<TlsSession>>,
    /// Bytes of an incomplete frame; empty (and unallocated) between frames.
    pending: BytesMut,
    /// comet settings (body limit, WebSocket path), shared by every connection.
    cfg: Arc<CometConfig>,
    pub eof: bool,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        websocket: bool,
        tls: Option<Arc<TlsSession>>,
        cfg: Arc<CometConfig>,
    ) -> Conn {
        let transport = if websocket {
            Transport::Ws {
                upgraded: false,
                decoder: ws::Decoder::server(herald_proto::HEADER_LEN + cfg.max_body),
            }
        } else {
            Transport::Tcp
        };
        Conn {
            stream: Arc::new(stream),
            peer,
            client: herald_limits::canonical(peer.ip()),
            transport,
            tls,
            pending: BytesMut::new(),
            cfg,
            eof: false,
        }
    }

    /// Reads what the socket has and decodes it. Never blocks.
    pub fn read_available(&mut self) -> Result<Vec<Inbound>, ReadError> {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        match self.tls.clone() {
            None => {
                let mut total = 0;
                while total < READ_BATCH {
                    match self.stream.try_read(&mut buf) {
                        Ok(0) => {
                            self.eof = true;
                            break;
                        }
                        Ok(n) => {
                            total += n;
                            self.parse(&buf[..n], &mut out)?;
                            if n < buf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Some(tls) => {
                let stream = self.stream.clone();
                let mut failed = None;
                let read = tls.read(&stream, READ_BATCH, &mut buf, |plain| {
                    self.parse(plain, &mut out).map_err(|e| {
                        failed = Some(e);
                        io::Error::other("malformed input")
                    })
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                match read {
                    Ok(r) => self.eof |= r.eof,
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        return Err(ReadError::Tls(e))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if self.eof && out.is_empty() {
            return Err(ReadError::Eof);
        }
        Ok(out)
    }

    fn parse(&mut self, data: &[u8], out: &mut Vec<Inbound>) -> Result<(), ReadError> {
        if self.pending.is_empty() {
            let used = self.parse_slice(data, out)?;
            if used < data.len() {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(data);
            let used = self.parse_slice(&pending, out)?;
            pending.advance(used);
            if !pending.is_empty() {
                self.pending = pending;
            }
        }
        Ok(())
    }

    fn parse_slice(&mut self, buf: &[u8], out: &mut Vec<Inbound>) -> Result<usize, ReadError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match &mut self.transport {
                Transport::Tcp => match herald_proto::decode_frame(rest, self.cfg.max_body) {
                    Ok(Some((f, used))) => {
                        out.push(Inbound::Frame(f));
                        pos += used;
                    }
                    Ok(None) => return Ok(pos),
                    Err(e) => return Err(ReadError::BadFrame(e.to_string())),
                },
                Transport::Ws { upgraded, .. } if !*upgraded => {
                    match ws::parse_upgrade(rest, &self.cfg.ws_path) {
                        Ok(Some((up, used))) => {
                            *upgraded = true;
                            out.push(Inbound::Upgrade(Box::new(up)));
                            pos += used;
                        }
                        Ok(None) => return Ok(pos),
                        Err(ws::WsError::NotFound(p)) => {
                            return Err(ReadError::BadUpgrade(
                                404,
                                "Not Found",
                                format!("no WebSocket endpoint at {p}; use {}", self.cfg.ws_path),
                            ))
                        }
                        Err(e) => {
                            return Err(ReadError::BadUpgrade(400, "Bad Request", e.to_string()))
                        }
                    }
                }
                Transport::Ws { decoder, .. } => match decoder.decode(rest) {
                    Ok(Some((msg, used))) => {
                        pos += used;
                        match msg {
                            Some(ws::Message::Data(data)) => {
                                let f = herald_proto::decode_exact(&data, self.cfg.max_body)
                                    .map_err(|e| ReadError::BadFrame(e.to_string()))?;
                                out.push(Inbound::Frame(f));
                            }
                            Some(ws::Message::Ping(p)) => out.push(Inbound::Ping(p)),
                            Some(ws::Message::Close { .. }) => {
                                out.push(Inbound::Close);
                                return Ok(buf.len());
                            }
                            Some(ws::Message::Pong) | None => {}
                        }
                    }
                    Ok(None) => return Ok(pos),
                    Err(e) => return Err(ReadError::BadFrame(e.to_string())),
                },
            }
        }
    }

    pub fn is_ws(&self) -> bool {
        matches!(self.transport, Transport::Ws { .. })
    }

    /// A sink writing to this socket (through its TLS session, if any).
    pub fn sink(&self) -> Sink {
        Sink::with_tls(self.stream.clone(), self.is_ws(), self.tls.clone())
    }

    /// Writes `bytes` completely (used before a channel exists).
    pub async fn write_plain(&self, bytes: &[u8]) -> io::Result<()> {
        self.sink().write_all(bytes).await
    }
}
