//! A tokio socket as the blocking-style `Read`/`Write` rustls's `read_tls` and
//! `write_tls` expect, for code that keeps a rustls session beside its socket
//! instead of inside a stream wrapper (comet's connections, the load generator's
//! clients): each call tries once and answers `WouldBlock` instead of waiting.

use std::io::{self, IoSlice, Read, Write};

use tokio::net::TcpStream;

/// The socket, read and written without waiting.
pub struct NonBlocking<'a>(pub &'a TcpStream);

impl Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
