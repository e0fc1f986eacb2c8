//! Writing to a client socket: per-transport encoding of outbound items and
//! non-blocking vectored writes.
//!
//! A [`Sink`] is shared by the connection task and by whoever broadcasts: when a
//! connection has nothing queued and no write in progress, the broadcaster writes
//! the push straight to the socket (one `writev`, no task wake-up); otherwise the
//! item is queued for the connection task. The channel's outbox lock orders the two.

use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use herald_proto::{ws, Header, Op, HEADER_LEN, PROTO_VERSION};
use tokio::net::TcpStream;

use crate::channel::Outbound;

/// Most iovecs handed to one `writev`.
const MAX_IOV: usize = 512;

/// What a non-blocking write achieved.
#[derive(Debug)]
pub struct Written {
    /// Push frames in the items (counted once they are fully written).
    pub frames: u64,
    /// Bytes the socket did not take (it was full); they must be written next.
    pub rest: Option<Bytes>,
}

/// A client socket and its transport.
pub struct Sink {
    /// The socket; reads stay with the connection task.
    pub(crate) stream: Arc<TcpStream>,
    /// WebSocket framing (else raw goim frames over TCP).
    pub(crate) ws: bool,
}

enum Part {
    Head(usize, usize),
    Body(Bytes),
}

impl Sink {
    /// A sink writing to `stream`.
    pub fn new(stream: Arc<TcpStream>, ws: bool) -> Sink {
        Sink { stream, ws }
    }

    /// Encodes `items` and writes them with one vectored write (more only if the
    /// kernel takes them in pieces), without waiting. Shared push buffers are not
    /// copied; only small headers are built.
    pub fn write_now(&self, items: impl IntoIterator<Item = Outbound>) -> io::Result<Written> {
        let mut heads: Vec<u8> = Vec::new();
        let mut parts: Vec<Part> = Vec::new();
        let mut frames = 0u64;
        let head = |heads: &mut Vec<u8>, parts: &mut Vec<Part>, bytes: &[u8]| {
            let start = heads.len();
            heads.extend_from_slice(bytes);
            match parts.last_mut() {
                Some(Part::Head(_, end)) if *end == start => *end = heads.len(),
                _ => parts.push(Part::Head(start, heads.len())),
            }
        };
        for item in items {
            match item {
                Outbound::Raw { body, frames: n } => {
                    frames += n as u64;
                    if self.ws {
                        let (h, hl) =
                            ws::server_header(ws::opcode::BINARY, HEADER_LEN + body.len());
                        head(&mut heads, &mut parts, &h[..hl]);
                        head(
                            &mut heads,
                            &mut parts,
                            &Header::encode(PROTO_VERSION, Op::RAW, 0, body.len()),
                        );
                    }
                    parts.push(Part::Body(body));
                }
                Outbound::Frame(f) => {
                    if self.ws {
                        let (h, hl) = ws::server_header(ws::opcode::BINARY, f.encoded_len());
                        head(&mut heads, &mut parts, &h[..hl]);
                    }
                    head(
                        &mut heads,
                        &mut parts,
                        &Header::encode(f.ver, f.op, f.seq, f.body.len()),
                    );
                    if !f.body.is_empty() {
                        parts.push(Part::Body(f.body));
                    }
                }
                Outbound::Pong(payload) => {
                    if self.ws {
                        let (h, hl) = ws::server_header(ws::opcode::PONG, payload.len());
                        head(&mut heads, &mut parts, &h[..hl]);
                        if !payload.is_empty() {
                            parts.push(Part::Body(payload));
                        }
                    }
                }
                Outbound::Encoded { bytes, frames: n } => {
                    frames += n;
                    parts.push(Part::Body(bytes));
                }
            }
        }
        let slices: Vec<IoSlice<'_>> = parts
            .iter()
            .map(|p| match p {
                Part::Head(s, e) => IoSlice::new(&heads[*s..*e]),
                Part::Body(b) => IoSlice::new(b),
            })
            .filter(|s| !s.is_empty())
            .collect();
        let total: usize = slices.iter().map(|s| s.len()).sum();
        // `try_write` advances the slices it is given; keep the originals intact to
        // copy the unwritten rest from.
        let mut work = slices.clone();
        let written = self.try_write(&mut work)?;
        if written == total {
            return Ok(Written { frames, rest: None });
        }
        let mut rest = BytesMut::with_capacity(total - written);
        let mut skip = written;
        for s in &slices {
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            rest.extend_from_slice(&s[skip..]);
            skip = 0;
        }
        Ok(Written {
            frames,
            rest: Some(rest.freeze()),
        })
    }

    /// Writes what the socket takes now; returns the number of bytes written.
    pub(crate) fn try_write(&self, mut slices: &mut [IoSlice<'_>]) -> io::Result<usize> {
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

    /// Writes `bytes` completely, waiting for the socket (the slow path).
    pub(crate) async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let w = self.try_write(&mut [IoSlice::new(bytes)])?;
            bytes = &bytes[w..];
            if !bytes.is_empty() {
                self.stream.writable().await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A write the socket takes only partly leaves exactly the unwritten bytes, so
    /// the peer receives every byte in order.
    #[tokio::test]
    async fn partial_write_keeps_every_byte() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let sink = Sink::new(Arc::new(server), false);
        let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let body = Bytes::from(body);
        let w = sink
            .write_now(std::iter::once(Outbound::Raw {
                body: body.clone(),
                frames: 1,
            }))
            .unwrap();
        let rest = w.rest.expect("an unread socket cannot take 8 MiB at once");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        sink.write_all(&rest).await.unwrap();
        drop(sink);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), body.len(), "bytes lost on a partial write");
        assert!(got == body[..], "stream corrupted");
    }
}
