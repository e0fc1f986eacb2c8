//! TLS on a client socket without giving the socket to a stream wrapper.
//!
//! comet writes pushes from whichever thread broadcasts (see [`crate::sink`]) and
//! reads on the connection task, both straight on the non-blocking socket. A TLS
//! connection keeps that shape: its rustls state sits behind one lock shared by the
//! reader and the writers, plaintext goes in and ciphertext comes out under that
//! lock, so records leave in the order they were sealed whoever writes them.
//! Plaintext is sealed only as fast as the socket takes it, [`SEAL_CHUNK`] at a
//! time: what the socket did not take stays as (shared, unsealed) plaintext with
//! the caller, and at most one chunk of ciphertext waits inside the session for
//! the connection task to flush. A slow TLS reader so holds no more private bytes
//! than a plain one.

use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use herald_tls::io::NonBlocking;
use rustls::ServerConnection;
use tokio::net::TcpStream;

/// What one non-blocking read produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsRead {
    /// Ciphertext bytes taken from the socket.
    pub ciphertext: usize,
    /// The peer closed the connection (TCP end of stream or TLS close_notify).
    pub eof: bool,
}

/// A TLS server session shared by a connection's reader and its writers.
pub(crate) struct TlsSession {
    conn: Mutex<ServerConnection>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSession")
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsSession {
    /// A session for a freshly accepted socket.
    pub fn new(config: Arc<rustls::ServerConfig>) -> io::Result<Arc<TlsSession>> {
        let mut conn = ServerConnection::new(config).map_err(tls_error)?;
        // comet bounds what it hands to a connection itself (outbound bytes); the
        // session must take a whole drain at once, so no limit of its own.
        conn.set_buffer_limit(None);
        Ok(Arc::new(TlsSession {
            conn: Mutex::new(conn),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the handshake is still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.lock().is_handshaking()
    }

    /// Reads what the socket has (at most `budget` ciphertext bytes), decrypts it
    /// and hands the plaintext to `plain` in pieces of at most `buf.len()`. Handshake
    /// messages and alerts it provokes are written out (as far as the socket takes
    /// them). Never waits. A TLS protocol error is an `InvalidData` error, after the
    /// alert was sent.
    pub fn read(
        &self,
        stream: &TcpStream,
        budget: usize,
        buf: &mut [u8],
        mut plain: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<TlsRead> {
        let mut out = TlsRead::default();
        let mut conn = self.lock();
        while out.ciphertext < budget {
            match conn.read_tls(&mut NonBlocking(stream)) {
                Ok(0) => {
                    out.eof = true;
                    break;
                }
                Ok(n) => out.ciphertext += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let state = match conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    // Tell the peer why (best effort), then give up on it.
                    let _ = conn.write_tls(&mut NonBlocking(stream));
                    return Err(tls_error(e));
                }
            };
            if state.plaintext_bytes_to_read() > 0 {
                loop {
                    match conn.reader().read(buf) {
                        Ok(0) => {
                            out.eof = true;
                            break;
                        }
                        Ok(n) => plain(&buf[..n])?,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            if state.peer_has_closed() {
                out.eof = true;
            }
            if out.eof {
                break;
            }
        }
        if conn.wants_write() {
            Self::flush_locked(&mut conn, stream)?;
        }
        Ok(out)
    }

    /// Seals `slices` a chunk at a time, writing each to the socket before sealing
    /// the next, and stops when the socket is full. Returns how many plaintext
    /// bytes were sealed and whether no sealed byte waits (else call again, with
    /// the rest, once the socket is writable). Nothing is sealed while earlier
    /// sealed bytes still wait.
    pub fn write(&self, stream: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<(usize, bool)> {
        let mut conn = self.lock();
        if !Self::flush_locked(&mut conn, stream)? {
            return Ok((0, false));
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let mut sealed = 0;
        while sealed < total {
            let chunk = window(slices, sealed, SEAL_CHUNK);
            let n = conn.writer().write_vectored(&chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sealed += n;
            if !Self::flush_locked(&mut conn, stream)? {
                return Ok((sealed, false));
            }
        }
        Ok((sealed, true))
    }

    /// Whether sealed bytes wait for the socket.
    pub fn has_pending(&self) -> bool {
        self.lock().wants_write()
    }

    fn flush_locked(conn: &mut ServerConnection, stream: &TcpStream) -> io::Result<bool> {
        while conn.wants_write() {
            match conn.write_tls(&mut NonBlocking(stream)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Queues a close_notify alert (sent by the next flush).
    pub fn close_notify(&self) {
        self.lock().send_close_notify();
    }
}

/// Most plaintext sealed before the ciphertext is written out: what a slow TLS
/// reader holds privately at most (a few TLS records).
pub(crate) const SEAL_CHUNK: usize = 64 * 1024;

/// At most `len` bytes of `slices`, starting `skip` bytes in.
fn window<'a>(slices: &'a [IoSlice<'a>], mut skip: usize, mut len: usize) -> Vec<IoSlice<'a>> {
    let mut out = Vec::new();
    for s in slices {
        if len == 0 {
            break;
        }
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        let end = (skip + len).min(s.len());
        out.push(IoSlice::new(&s[skip..end]));
        len -= end - skip;
        skip = 0;
    }
    out
}
