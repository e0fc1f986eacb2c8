//! Writing to a client socket: per-transport encoding of outbound items and
//! non-blocking vectored writes, in the clear or through the connection's TLS
//! session.
//!
//! A [`Sink`] is shared by the connection task and by whoever broadcasts: when a
//! connection has nothing queued and no write in progress, the broadcaster writes
//! the push straight to the socket (one `writev`, no task wake-up); otherwise the
//! item is queued for the connection task. The channel's outbox lock orders the two.
//!
//! A write the socket only partly takes leaves [`Pending`] work for the connection
//! task: the unwritten rest as slices of the very buffers offered (a room batch
//! shared by thousands of connections is never copied per connection; only the few
//! header bytes built for this connection are its own). With TLS the rest is the
//! plaintext not sealed yet, plus at most one chunk of sealed bytes waiting in the
//! session (see [`crate::tls`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;
use herald_proto::{ws, Header, Op, HEADER_LEN, PROTO_VERSION};
use tokio::net::TcpStream;

use crate::channel::Outbound;
use crate::tls::TlsSession;

/// Most iovecs handed to one `writev`.
const MAX_IOV: usize = 512;

/// What a write left for the connection task to finish.
#[derive(Debug)]
pub enum Pending {
    /// Bytes the socket did not take (with TLS: not sealed yet), in order: slices
    /// of the offered buffers. With TLS, sealed bytes may wait in the session too.
    Parts(VecDeque<Bytes>),
    /// Only sealed bytes waiting in the TLS session.
    Sealed,
}

impl Pending {
    /// Bytes still to write (sealed bytes are not counted: the session holds them).
    pub fn len(&self) -> usize {
        match self {
            Pending::Parts(p) => p.iter().map(Bytes::len).sum(),
            Pending::Sealed => 0,
        }
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        match self {
            Pending::Parts(p) => p.iter().all(Bytes::is_empty),
            Pending::Sealed => false,
        }
    }
}

/// What a non-blocking write achieved.
#[derive(Debug)]
pub struct Written {
    /// Push frames in the items (counted once they are fully written).
    pub frames: u64,
    /// What the socket did not take; it must be written next.
    pub rest: Option<Pending>,
}

/// A client socket and its transport.
pub struct Sink {
    /// The socket; reads stay with the connection task.
    pub(crate) stream: Arc<TcpStream>,
    /// WebSocket framing (else raw goim frames over TCP).
    pub(crate) ws: bool,
    /// The TLS session, when the listener is a TLS one (WSS, TLS over TCP).
    pub(crate) tls: Option<Arc<TlsSession>>,
}

enum Part {
    /// A range of the per-write header buffer.
    Head(usize, usize),
    Body(Bytes),
}

/// Items encoded for a transport: the header bytes built for them and the shared
/// bodies, in order. The same encoding serves every connection of that transport
/// (a room batch is encoded once per slice of a broadcast, not once per member).
pub(crate) struct Prepared {
    heads: Vec<u8>,
    parts: Vec<Part>,
    frames: u64,
    total: usize,
}

impl Prepared {
    pub(crate) fn new(ws: bool, items: impl IntoIterator<Item = Outbound>) -> Prepared {
        let mut enc = Prepared {
            heads: Vec::new(),
            parts: Vec::new(),
            frames: 0,
            total: 0,
        };
        let head = |enc: &mut Prepared, bytes: &[u8]| {
            let start = enc.heads.len();
            enc.heads.extend_from_slice(bytes);
            let end = enc.heads.len();
            match enc.parts.last_mut() {
                Some(Part::Head(_, e)) if *e == start => *e = end,
                _ => enc.parts.push(Part::Head(start, end)),
            }
        };
        for item in items {
            match item {
                Outbound::Raw { body, frames: n } => {
                    enc.frames += n as u64;
                    if ws {
                        let (h, hl) =
                            ws::server_header(ws::opcode::BINARY, HEADER_LEN + body.len());
                        head(&mut enc, &h[..hl]);
                        head(
                            &mut enc,
                            &Header::encode(PROTO_VERSION, Op::RAW, 0, body.len()),
                        );
                    }
                    enc.parts.push(Part::Body(body));
                }
                Outbound::Frame(f) => {
                    if ws {
                        let (h, hl) = ws::server_header(ws::opcode::BINARY, f.encoded_len());
                        head(&mut enc, &h[..hl]);
                    }
                    head(&mut enc, &Header::encode(f.ver, f.op, f.seq, f.body.len()));
                    if !f.body.is_empty() {
                        enc.parts.push(Part::Body(f.body));
                    }
                }
                Outbound::Pong(payload) => {
                    if ws {
                        let (h, hl) = ws::server_header(ws::opcode::PONG, payload.len());
                        head(&mut enc, &h[..hl]);
                        if !payload.is_empty() {
                            enc.parts.push(Part::Body(payload));
                        }
                    }
                }
                Outbound::Unwritten { parts, frames: n } => {
                    enc.frames += n;
                    enc.parts.extend(parts.into_iter().map(Part::Body));
                }
                Outbound::Flush { frames: n } => enc.frames += n,
            }
        }
        enc.total = enc.heads.len()
            + enc
                .parts
                .iter()
                .map(|p| match p {
                    Part::Body(b) => b.len(),
                    Part::Head(..) => 0,
                })
                .sum::<usize>();
        enc
    }

    /// Bytes in all.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// The bytes, in order, for a vectored write.
    pub(crate) fn slices(&self) -> Vec<IoSlice<'_>> {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Head(s, e) => IoSlice::new(&self.heads[*s..*e]),
                Part::Body(b) => IoSlice::new(b),
            })
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// What a write that took the first `taken` bytes (and, with TLS, left sealed
    /// bytes in the session unless `flushed`) leaves to do.
    pub(crate) fn written(&self, taken: usize, flushed: bool) -> Written {
        let rest = if taken < self.total {
            Some(Pending::Parts(self.rest(taken)))
        } else if !flushed {
            Some(Pending::Sealed)
        } else {
            None
        };
        Written {
            frames: self.frames,
            rest,
        }
    }

    /// Everything after the first `written` bytes, as shared slices (the header
    /// bytes become one `Bytes`, the only copy; bodies are shared).
    fn rest(&self, mut written: usize) -> VecDeque<Bytes> {
        let heads = Bytes::copy_from_slice(&self.heads);
        let mut out = VecDeque::new();
        for p in &self.parts {
            let b = match p {
                Part::Head(s, e) => heads.slice(*s..*e),
                Part::Body(b) => b.clone(),
            };
            if written >= b.len() {
                written -= b.len();
                continue;
            }
            out.push_back(b.slice(written..));
            written = 0;
        }
        out
    }
}

impl Sink {
    /// A sink writing to `stream` in the clear.
    pub fn new(stream: Arc<TcpStream>, ws: bool) -> Sink {
        Sink {
            stream,
            ws,
            tls: None,
        }
    }

    /// A sink writing through a TLS session.
    pub(crate) fn with_tls(stream: Arc<TcpStream>, ws: bool, tls: Option<Arc<TlsSession>>) -> Sink {
        Sink { stream, ws, tls }
    }

    /// Encodes `items` for this socket's transport.
    pub(crate) fn prepare(&self, items: impl IntoIterator<Item = Outbound>) -> Prepared {
        Prepared::new(self.ws, items)
    }

    /// The socket's descriptor, for a batched write: only in the clear (a TLS
    /// session must seal what is written).
    pub(crate) fn plain_fd(&self) -> Option<RawFd> {
        match self.tls {
            Some(_) => None,
            None => Some(self.stream.as_raw_fd()),
        }
    }

    /// Encodes `items` and writes them with one vectored write (more only if the
    /// kernel takes them in pieces), without waiting. Shared push buffers are not
    /// copied (TLS seals them, which is its copy); only small headers are built.
    pub fn write_now(&self, items: impl IntoIterator<Item = Outbound>) -> io::Result<Written> {
        let prepared = self.prepare(items);
        let (taken, flushed) = match &self.tls {
            Some(tls) => tls.write(&self.stream, &prepared.slices())?,
            None => {
                let mut slices = prepared.slices();
                (self.try_write(&mut slices)?, true)
            }
        };
        Ok(prepared.written(taken, flushed))
    }

    /// Writes what the socket takes now; returns the number of bytes written.
    fn try_write(&self, mut slices: &mut [IoSlice<'_>]) -> io::Result<usize> {
        let mut written = 0;
        while !slices.is_empty() {
            let n = slices.len().min(MAX_IOV);
            match self.stream.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => {
                    written += w;
                    IoSlice::advance_slices(&mut slices, w);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    /// Finishes `pending`, waiting for the socket (the slow path).
    pub(crate) async fn finish(&self, pending: Pending) -> io::Result<()> {
        let mut parts = match pending {
            Pending::Parts(parts) => parts,
            Pending::Sealed => VecDeque::new(),
        };
        loop {
            while parts.front().is_some_and(Bytes::is_empty) {
                parts.pop_front();
            }
            let (mut taken, flushed) = {
                let mut slices: Vec<IoSlice<'_>> = parts
                    .iter()
                    .take(MAX_IOV)
                    .map(|b| IoSlice::new(b))
                    .collect();
                match &self.tls {
                    Some(tls) => tls.write(&self.stream, &slices)?,
                    None => (self.try_write(&mut slices)?, true),
                }
            };
            while taken > 0 {
                let Some(front) = parts.front_mut() else {
                    break;
                };
                let n = taken.min(front.len());
                bytes::Buf::advance(front, n);
                taken -= n;
                if front.is_empty() {
                    parts.pop_front();
                }
            }
            if parts.is_empty() && flushed {
                return Ok(());
            }
            self.stream.writable().await?;
        }
    }

    /// Writes `bytes` completely, waiting for the socket (before a channel exists:
    /// the upgrade answer, handshake-time pongs, a close frame).
    pub(crate) async fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let bytes = Bytes::copy_from_slice(bytes);
        self.finish(Pending::Parts(VecDeque::from([bytes]))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A write the socket takes only partly leaves exactly the unwritten bytes, so
    /// the peer receives every byte in order, and the rest shares the offered
    /// buffer instead of copying it.
    #[tokio::test]
    async fn partial_write_keeps_every_byte_without_copying() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let sink = Sink::new(Arc::new(server), true);
        let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let body = Bytes::from(body);
        let w = sink
            .write_now(std::iter::once(Outbound::Raw {
                body: body.clone(),
                frames: 1,
            }))
            .unwrap();
        let Some(Pending::Parts(rest)) = w.rest else {
            panic!("an unread socket cannot take 8 MiB at once");
        };
        // The body's unwritten part points into the offered buffer.
        let tail = rest.back().unwrap();
        let body_range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(body_range.contains(&(tail.as_ptr() as usize)));
        let expected_len = {
            let (_, hl) = ws::server_header(ws::opcode::BINARY, HEADER_LEN + body.len());
            hl + HEADER_LEN + body.len()
        };
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        sink.finish(Pending::Parts(rest)).await.unwrap();
        drop(sink);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), expected_len, "bytes lost on a partial write");
        assert!(
            got[expected_len - body.len()..] == body[..],
            "stream corrupted"
        );
    }
}
