//! What one HTTP connection is doing, told by its bytes and its requests: idle,
//! reading a request head, or serving. The connection task arms the idle or the
//! header timer from it, and [`Guarded`] scans each head as it arrives, so a head
//! over the limit is refused with a JSON answer before hyper buffers all of it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// hyper refuses a request target longer than this with a bare 414; the scanner
/// refuses it first, with a JSON answer.
pub(super) const MAX_URI_BYTES: usize = u16::MAX as usize - 1;

/// Why a connection's request was refused before it reached the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeadRefusal {
    /// Request line and headers over `limits.http.max_header_bytes`.
    TooLarge,
    /// Request target over [`MAX_URI_BYTES`].
    UriTooLong,
}

/// Finds the end of a request head in a byte stream and measures it.
#[derive(Debug)]
struct HeadScanner {
    /// Largest head accepted.
    max: usize,
    /// Bytes of the head seen so far.
    len: usize,
    /// The last four bytes, to spot the blank line that ends the head.
    tail: u32,
    /// Offsets of the request line's first and last space (around the target).
    first_sp: Option<usize>,
    last_sp: Option<usize>,
    /// The request line is complete.
    line_done: bool,
    /// The head is complete; later bytes are the body.
    done: bool,
}

impl HeadScanner {
    fn new(max: usize) -> HeadScanner {
        HeadScanner {
            max,
            len: 0,
            tail: 0,
            first_sp: None,
            last_sp: None,
            line_done: false,
            done: false,
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), HeadRefusal> {
        for &b in data {
            if self.done {
                return Ok(());
            }
            let at = self.len;
            self.len += 1;
            if !self.line_done {
                match b {
                    b' ' => {
                        self.first_sp.get_or_insert(at);
                        self.last_sp = Some(at);
                    }
                    b'\n' => {
                        self.line_done = true;
                        if let (Some(a), Some(z)) = (self.first_sp, self.last_sp) {
                            if z > a && z - a - 1 > MAX_URI_BYTES {
                                return Err(HeadRefusal::UriTooLong);
                            }
                        }
                    }
                    _ => {}
                }
                // Past the longest target plus " HTTP/1.1\r": too long already.
                if let Some(a) = self.first_sp {
                    if !self.line_done && self.len - a - 1 > MAX_URI_BYTES + 10 {
                        return Err(HeadRefusal::UriTooLong);
                    }
                }
            }
            self.tail = (self.tail << 8) | u32::from(b);
            if self.tail == u32::from_be_bytes(*b"\r\n\r\n") {
                self.done = true;
            }
            if self.len > self.max && !self.done {
                return Err(HeadRefusal::TooLarge);
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Phase {
    /// No request in progress since `since`.
    Idle { since: Instant },
    /// A request head is due: the first byte of one arrived at `since`, or the
    /// connection was accepted then (a new connection must send its first request
    /// within the header time, so a silent one holds its slot no longer).
    Head { since: Instant, scan: HeadScanner },
    /// At least one request is being served, the first since `since`.
    Busy { since: Instant },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Requests whose response body has not been sent yet.
    in_flight: usize,
    refusal: Option<HeadRefusal>,
}

/// The connection timers (`[limits.http]`); zero = none.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub idle: Duration,
    pub header: Duration,
    pub request: Duration,
}

/// Which timer is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    Idle,
    Header,
    /// A request (its body, its handling, its answer) took too long.
    Request,
}

/// The shared view of one connection (its IO wrapper, its requests, its task).
#[derive(Debug)]
pub(super) struct ConnPhase {
    inner: Mutex<Inner>,
    max_head: usize,
    /// Wakes the connection task when the phase changes its deadline.
    changed: Notify,
}

impl ConnPhase {
    /// A connection accepted at `accepted`, its first head due.
    pub(super) fn new(max_head: usize, accepted: Instant) -> Arc<ConnPhase> {
        Arc::new(ConnPhase {
            inner: Mutex::new(Inner {
                phase: Phase::Head {
                    since: accepted,
                    scan: HeadScanner::new(max_head),
                },
                in_flight: 0,
                refusal: None,
            }),
            max_head,
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived from the client.
    fn bytes_read(&self, data: &[u8]) -> Result<(), HeadRefusal> {
        let mut inner = self.lock();
        if let Phase::Idle { .. } = inner.phase {
            inner.phase = Phase::Head {
                since: Instant::now(),
                scan: HeadScanner::new(self.max_head),
            };
            self.changed.notify_one();
        }
        if let Phase::Head { scan, .. } = &mut inner.phase {
            if let Err(r) = scan.feed(data) {
                inner.refusal = Some(r);
                return Err(r);
            }
        }
        Ok(())
    }

    /// The router was handed a request.
    pub(super) fn request_started(&self) {
        let mut inner = self.lock();
        inner.in_flight += 1;
        if !matches!(inner.phase, Phase::Busy { .. }) {
            inner.phase = Phase::Busy {
                since: Instant::now(),
            };
            self.changed.notify_one();
        }
    }

    /// A response was sent (or abandoned).
    pub(super) fn request_finished(&self) {
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        if inner.in_flight == 0 {
            inner.phase = Phase::Idle {
                since: Instant::now(),
            };
            self.changed.notify_one();
        }
    }

    /// Whether any byte of the current head has arrived.
    pub(super) fn head_started(&self) -> bool {
        match &self.lock().phase {
            Phase::Head { scan, .. } => scan.len > 0,
            _ => true,
        }
    }

    /// The head refused, if one was.
    pub(super) fn refusal(&self) -> Option<HeadRefusal> {
        self.lock().refusal
    }

    /// When the current phase times out (a zero duration never does).
    pub(super) fn deadline(&self, t: &Timeouts) -> Option<(Instant, Due)> {
        match &self.lock().phase {
            Phase::Idle { since } if !t.idle.is_zero() => Some((*since + t.idle, Due::Idle)),
            Phase::Head { since, .. } if !t.header.is_zero() => {
                Some((*since + t.header, Due::Header))
            }
            Phase::Busy { since } if !t.request.is_zero() => {
                Some((*since + t.request, Due::Request))
            }
            _ => None,
        }
    }

    /// Resolves when the phase has changed since the last call.
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Marks a request in progress until dropped (it travels inside the response
/// body, so "done" means the body was sent).
#[derive(Debug)]
pub(super) struct InFlight(Arc<ConnPhase>);

impl InFlight {
    pub(super) fn start(phase: Arc<ConnPhase>) -> InFlight {
        phase.request_started();
        InFlight(phase)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A connection's IO, reporting what it reads to its [`ConnPhase`].
#[derive(Debug)]
pub(super) struct Guarded<IO> {
    io: IO,
    phase: Arc<ConnPhase>,
}

impl<IO> Guarded<IO> {
    pub(super) fn new(io: IO, phase: Arc<ConnPhase>) -> Guarded<IO> {
        Guarded { io, phase }
    }

    pub(super) fn into_inner(self) -> IO {
        self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let fresh = &buf.filled()[before..];
        if !fresh.is_empty() {
            if let Err(r) = this.phase.bytes_read(fresh) {
                // hyper stops here without answering; the connection task
                // answers from the refusal recorded in the phase.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("request head refused: {r:?}"),
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(max: usize, chunks: &[&[u8]]) -> (Result<(), HeadRefusal>, bool) {
        let mut s = HeadScanner::new(max);
        for c in chunks {
            if let Err(e) = s.feed(c) {
                return (Err(e), s.done);
            }
        }
        (Ok(()), s.done)
    }

    #[test]
    fn finds_the_end_of_a_head_across_chunks() {
        let head = b"POST /goim/push/all?operation=1000 HTTP/1.1\r\nHost: x\r\n\r\nbody";
        for split in 1..head.len() {
            let (r, done) = scan(1024, &[&head[..split], &head[split..]]);
            assert_eq!((r, done), (Ok(()), true), "split at {split}");
        }
        // Body bytes after the head do not count toward the limit.
        let mut long = head.to_vec();
        long.extend(std::iter::repeat_n(b'x', 4096));
        assert_eq!(scan(128, &[&long]), (Ok(()), true));
    }

    #[test]
    fn refuses_heads_over_the_limit() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        head.extend(std::iter::repeat_n(b'a', 200));
        assert_eq!(scan(100, &[&head]).0, Err(HeadRefusal::TooLarge));
        // Exactly at the limit is fine.
        let exact = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan(exact.len(), &[exact]), (Ok(()), true));
    }

    #[test]
    fn refuses_targets_hyper_would_refuse() {
        let target = "x".repeat(MAX_URI_BYTES);
        let ok = format!("GET /{} HTTP/1.1\r\n\r\n", &target[1..]);
        assert_eq!(scan(1 << 20, &[ok.as_bytes()]), (Ok(()), true));
        let long = format!("GET /{target} HTTP/1.1\r\n\r\n");
        assert_eq!(
            scan(1 << 20, &[long.as_bytes()]).0,
            Err(HeadRefusal::UriTooLong)
        );
        // Refused while the line is still arriving, before its end is seen.
        let open = format!("GET /{target}{target}");
        assert_eq!(
            scan(1 << 20, &[open.as_bytes()]).0,
            Err(HeadRefusal::UriTooLong)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_phase() {
        let idle = Duration::from_secs(60);
        let header = Duration::from_secs(10);
        let request = Duration::from_secs(30);
        let t = Timeouts {
            idle,
            header,
            request,
        };
        let t0 = Instant::now();
        let p = ConnPhase::new(1024, t0);
        // A new connection owes its first head within the header time.
        assert_eq!(p.deadline(&t), Some((t0 + header, Due::Header)));
        assert!(!p.head_started());
        tokio::time::advance(Duration::from_secs(5)).await;
        p.bytes_read(b"GE").unwrap();
        assert!(p.head_started());
        assert_eq!(p.deadline(&t), Some((t0 + header, Due::Header)));
        p.bytes_read(b"T / HTTP/1.1\r\n\r\n").unwrap();
        let first = InFlight::start(p.clone());
        drop(first);
        let t_idle = Instant::now();
        assert_eq!(p.deadline(&t), Some((t_idle + idle, Due::Idle)));
        // Later heads are timed from their first byte.
        tokio::time::advance(Duration::from_secs(5)).await;
        p.bytes_read(b"GE").unwrap();
        let t1 = Instant::now();
        assert_eq!(p.deadline(&t), Some((t1 + header, Due::Header)));
        // A complete head keeps the header timer until the router takes it.
        p.bytes_read(b"T / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(p.deadline(&t), Some((t1 + header, Due::Header)));
        // Then the request (body, handling, answer) has its own time.
        let req = InFlight::start(p.clone());
        let t_req = Instant::now();
        assert_eq!(p.deadline(&t), Some((t_req + request, Due::Request)));
        tokio::time::advance(Duration::from_secs(20)).await;
        drop(req);
        let t2 = Instant::now();
        assert_eq!(p.deadline(&t), Some((t2 + idle, Due::Idle)));
        let none = Timeouts {
            idle: Duration::ZERO,
            header,
            request: Duration::ZERO,
        };
        assert_eq!(p.deadline(&none), None);
        let _busy = InFlight::start(p.clone());
        assert_eq!(p.deadline(&none), None);
    }
}
