//! One load-generator connection's byte stream: plain TCP, or TLS over it.
//!
//! An idle client must cost next to nothing, so a connection is read only when its
//! socket is readable and then drained synchronously into the caller's buffer: no
//! read buffer waits in a parked task. A TLS connection keeps that shape by holding
//! the rustls session beside the socket instead of inside a stream wrapper; the
//! handshake alone goes through `tokio-rustls`, which hands both back when done.
//! What stays per TLS connection is the session itself (its record buffer), which
//! the `rss_per_conn` figures of the clients include.

use std::io::{self, Read, Write};
use std::sync::Arc;

use herald_tls::io::NonBlocking;
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use tokio::net::TcpStream;

/// TLS settings shared by every client of a process.
#[derive(Clone)]
pub struct TlsDial {
    /// Trusts the bench's (or the operator's) CA; resumption off, so every connect
    /// pays a full handshake as after a server restart.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry.
    pub name: ServerName<'static>,
}

impl TlsDial {
    /// Settings trusting the PEM CA bundle `ca` and expecting `server_name`.
    pub fn new(ca: &std::path::Path, server_name: &str) -> anyhow::Result<TlsDial> {
        let base = herald_tls::client_config(
            &herald_tls::ClientTls {
                ca_file: ca.to_path_buf(),
                ..Default::default()
            },
            &[],
        )?;
        let mut config = (*base).clone();
        config.resumption = rustls::client::Resumption::disabled();
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| anyhow::anyhow!("bad TLS server name {server_name:?}: {e}"))?;
        Ok(TlsDial {
            config: Arc::new(config),
            name,
        })
    }
}

/// A connected client byte stream.
pub enum Link {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS: the socket and the session, driven by hand after the handshake.
    Tls {
        tcp: TcpStream,
        session: Box<ClientConnection>,
    },
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Link {
    /// Runs the TLS handshake on `tcp`.
    pub async fn tls(tcp: TcpStream, dial: &TlsDial) -> io::Result<Link> {
        let connector = tokio_rustls::TlsConnector::from(dial.config.clone());
        let stream = connector.connect(dial.name.clone(), tcp).await?;
        let (tcp, session) = stream.into_inner();
        Ok(Link::Tls {
            tcp,
            session: Box::new(session),
        })
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::Tls { tcp, .. } => tcp,
        }
    }

    /// Waits until the socket has something to read (or a TLS session holds
    /// plaintext already, left over from the handshake).
    pub async fn readable(&mut self) -> io::Result<()> {
        if let Link::Tls { session, .. } = self {
            let state = session.process_new_packets().map_err(invalid)?;
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                return Ok(());
            }
        }
        self.tcp().readable().await
    }

    /// Appends everything readable now to `out` without waiting. Returns `false`
    /// once the peer closed the stream (after appending what came before).
    pub fn read_now(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        let mut chunk = [0u8; 16384];
        match self {
            Link::Plain(s) => loop {
                match s.try_read(&mut chunk) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        out.extend_from_slice(&chunk[..n]);
                        if n < chunk.len() {
                            return Ok(true);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
            Link::Tls { tcp, session } => {
                let mut open = true;
                loop {
                    // Plaintext first: the handshake may have left some behind.
                    loop {
                        match session.reader().read(&mut chunk) {
                            Ok(0) => {
                                open = false;
                                break;
                            }
                            Ok(n) => out.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                    if !open {
                        break;
                    }
                    match session.read_tls(&mut NonBlocking(tcp)) {
                        Ok(0) => {
                            open = false;
                            break;
                        }
                        Ok(_) => {
                            if let Err(e) = session.process_new_packets() {
                                // Tell the server why (best effort), then give up.
                                let _ = session.write_tls(&mut NonBlocking(tcp));
                                return Err(invalid(e));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                // Records the session must answer (alerts, key updates) go now, as
                // far as the socket takes them; the next write flushes the rest.
                while session.wants_write() {
                    match session.write_tls(&mut NonBlocking(tcp)) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(open)
            }
        }
    }

    /// Writes all of `data` (sealed first, on TLS).
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Link::Plain(s) => tokio::io::AsyncWriteExt::write_all(s, data).await,
            Link::Tls { tcp, session } => {
                session.writer().write_all(data)?;
                while session.wants_write() {
                    match session.write_tls(&mut NonBlocking(tcp)) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            tcp.writable().await?;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads until at least one more byte arrived in `out`; an error if the peer
    /// closed first (what a handshake step needs).
    pub async fn read_some(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let before = out.len();
        loop {
            self.readable().await?;
            let open = self.read_now(out)?;
            if out.len() > before {
                return Ok(());
            }
            if !open {
                anyhow::bail!("connection closed during handshake");
            }
        }
    }
}
