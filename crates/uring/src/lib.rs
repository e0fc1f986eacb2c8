//! Many non-blocking socket sends in one system call, through Linux's io_uring.
//!
//! A room broadcast writes the same few bytes to thousands of sockets: one
//! `writev` each. [`SendBatch`] hands up to a ring's worth of those sends to the
//! kernel with one `io_uring_enter` instead. Every send carries `MSG_DONTWAIT`, so
//! the kernel performs it inline during the submission, exactly like a non-blocking
//! `sendmsg`: it takes what the socket has room for and reports `EAGAIN` when it
//! has none, never parking the request. The call returns only after every send it
//! submitted has completed, so the buffers it was given are never read afterwards.
//!
//! Where io_uring is missing or disabled (`kernel.io_uring_disabled`, seccomp),
//! [`SendBatch::new`] fails and the caller keeps its own writes.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

/// One socket and the bytes to write to it, in order.
pub struct Send<'a> {
    /// The socket (non-blocking; the caller keeps it open for the call).
    pub fd: RawFd,
    /// The bytes.
    pub bufs: &'a [IoSlice<'a>],
}

/// An io_uring instance used for batches of non-blocking sends.
pub struct SendBatch {
    #[cfg(target_os = "linux")]
    ring: io_uring::IoUring,
    entries: usize,
}

impl SendBatch {
    /// A ring taking up to `entries` sends per system call (rounded by the kernel
    /// to a power of two).
    pub fn new(entries: u32) -> io::Result<SendBatch> {
        #[cfg(target_os = "linux")]
        {
            // (Not IORING_SETUP_SINGLE_ISSUER: an async task that owns the ring
            // may submit from any of the runtime's threads.)
            let ring = io_uring::IoUring::new(entries.max(1))?;
            // Rings exist from Linux 5.1, SENDMSG from 5.3: a kernel that cannot
            // say it supports the operation (the probe is 5.6) is refused here,
            // rather than failing every send later.
            let mut probe = io_uring::Probe::new();
            ring.submitter().register_probe(&mut probe)?;
            if !probe.is_supported(io_uring::opcode::SendMsg::CODE) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this kernel's io_uring has no SENDMSG",
                ));
            }
            let entries = ring.params().sq_entries() as usize;
            Ok(SendBatch { ring, entries })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = entries;
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring exists on Linux only",
            ))
        }
    }

    /// Sends at most this many per system call.
    pub fn capacity(&self) -> usize {
        self.entries
    }

    /// Performs every send without blocking, `capacity()` per system call;
    /// `results[i]` is set to the bytes `sends[i]` wrote (possibly fewer than
    /// offered) or its error (`WouldBlock` when the socket had no room).
    #[cfg(target_os = "linux")]
    pub fn send(&mut self, sends: &[Send<'_>], results: &mut Vec<io::Result<usize>>) {
        results.clear();
        results.extend(sends.iter().map(|_| Ok(0)));
        let mut base = 0;
        for chunk in sends.chunks(self.entries) {
            self.send_chunk(chunk, &mut results[base..base + chunk.len()]);
            base += chunk.len();
        }
    }

    /// Unreachable off Linux ([`SendBatch::new`] fails there); reports every send
    /// as unsupported.
    #[cfg(not(target_os = "linux"))]
    pub fn send(&mut self, sends: &[Send<'_>], results: &mut Vec<io::Result<usize>>) {
        results.clear();
        results.extend(sends.iter().map(|_| Err(io::ErrorKind::Unsupported.into())));
    }

    #[cfg(target_os = "linux")]
    fn send_chunk(&mut self, sends: &[Send<'_>], results: &mut [io::Result<usize>]) {
        use io_uring::{opcode, types};
        // Built in full before any pointer to them is taken: the vector never moves
        // while the kernel may read it.
        let msgs: Vec<libc::msghdr> = sends
            .iter()
            .map(|s| {
                let mut m: libc::msghdr = zeroed_msghdr();
                // IoSlice is ABI compatible with iovec on Unix (std's guarantee).
                m.msg_iov = s.bufs.as_ptr() as *mut libc::iovec;
                m.msg_iovlen = s.bufs.len() as _;
                m
            })
            .collect();
        let flags = (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32;
        {
            let mut sq = self.ring.submission();
            for (i, (s, m)) in sends.iter().zip(&msgs).enumerate() {
                let entry = opcode::SendMsg::new(types::Fd(s.fd), m as *const libc::msghdr)
                    .flags(flags)
                    .build()
                    .user_data(i as u64);
                // Pushing hands the kernel pointers to `msgs`, to the iovecs and to
                // the bytes they describe, all borrowed for this whole call; the
                // loop below does not return before every entry pushed here has
                // completed, so none is read after the borrow ends. The ring was
                // sized for `self.entries` and the caller chunks by it, and the
                // previous call left the queue empty, so the push cannot fail.
                #[allow(unsafe_code)]
                let pushed = unsafe { sq.push(&entry) };
                if pushed.is_err() {
                    // Unreachable by construction; fail the send rather than panic.
                    results[i] = Err(io::Error::other("io_uring submission queue full"));
                }
            }
        }
        let expected = results.iter().filter(|r| r.is_ok()).count();
        let mut done = 0;
        while done < expected {
            match self.ring.submit_and_wait(expected - done) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The kernel is short of memory for requests, or of room for
                // completions: let others run, then go on.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) => {
                    std::thread::yield_now()
                }
                Err(e) => {
                    // The kernel refused the ring itself (it accepted it at
                    // creation): entries it may still hold point into this frame,
                    // which must not be left, not even by a panic. Nothing sound
                    // remains to be done.
                    use std::io::Write;
                    let _ = writeln!(
                        io::stderr(),
                        "io_uring_enter failed with sends in flight: {e}"
                    );
                    std::process::abort();
                }
            }
            for cqe in self.ring.completion() {
                let i = cqe.user_data() as usize;
                let r = cqe.result();
                if let Some(slot) = results.get_mut(i) {
                    *slot = if r >= 0 {
                        Ok(r as usize)
                    } else {
                        Err(io::Error::from_raw_os_error(-r))
                    };
                }
                done += 1;
            }
        }
        drop(msgs);
    }
}

#[cfg(target_os = "linux")]
fn zeroed_msghdr() -> libc::msghdr {
    // All fields are integers or nullable pointers: zero is a valid value for each.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::zeroed()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (b, _) = l.accept().expect("accept");
        a.set_nonblocking(true).expect("nonblocking");
        (a, b)
    }

    #[test]
    fn sends_to_many_sockets_in_order_and_reports_bytes() {
        let mut batch = SendBatch::new(4).expect("io_uring");
        let pairs: Vec<_> = (0..10).map(|_| pair()).collect();
        let head = b"hello ".to_vec();
        let bodies: Vec<Vec<u8>> = (0..10)
            .map(|i| format!("socket {i}").into_bytes())
            .collect();
        let slices: Vec<[IoSlice<'_>; 2]> = bodies
            .iter()
            .map(|b| [IoSlice::new(&head), IoSlice::new(b)])
            .collect();
        let sends: Vec<Send<'_>> = pairs
            .iter()
            .zip(&slices)
            .map(|((a, _), s)| Send {
                fd: a.as_raw_fd(),
                bufs: s,
            })
            .collect();
        let mut results = Vec::new();
        batch.send(&sends, &mut results);
        assert_eq!(results.len(), 10);
        for (i, ((_, b), r)) in pairs.iter().zip(&results).enumerate() {
            let want = format!("hello socket {i}");
            assert_eq!(*r.as_ref().expect("sent"), want.len());
            let mut got = vec![0u8; want.len()];
            let mut b = b;
            b.read_exact(&mut got).expect("read");
            assert_eq!(got, want.as_bytes());
        }
    }

    /// A socket with no room answers WouldBlock at once (the call never waits for
    /// the peer to read), and a closed peer's error is reported, not raised.
    #[test]
    fn a_full_socket_would_block_and_a_dead_one_fails_without_stalling_the_batch() {
        let mut batch = SendBatch::new(8).expect("io_uring");
        let (full, _full_peer) = pair();
        let (dead, dead_peer) = pair();
        drop(dead_peer);
        let (ok, mut ok_peer) = pair();
        let big = vec![7u8; 1 << 20];
        // Fill `full` until the kernel refuses more.
        let mut results = Vec::new();
        loop {
            let s = [IoSlice::new(&big)];
            batch.send(
                &[Send {
                    fd: full.as_raw_fd(),
                    bufs: &s,
                }],
                &mut results,
            );
            match &results[0] {
                Ok(_) => continue,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                    break;
                }
            }
        }
        // The first write to a closed peer is taken and answered with a reset
        // (on loopback, before the call returns); the next one fails.
        let one = [IoSlice::new(b"x")];
        batch.send(
            &[Send {
                fd: dead.as_raw_fd(),
                bufs: &one,
            }],
            &mut results,
        );
        assert_eq!(*results[0].as_ref().expect("first write taken"), 1);
        batch.send(
            &[Send {
                fd: dead.as_raw_fd(),
                bufs: &one,
            }],
            &mut results,
        );
        assert!(results[0].is_err(), "a write after the reset succeeded");
        let s = [IoSlice::new(b"still here")];
        let sends = [
            Send {
                fd: full.as_raw_fd(),
                bufs: &s,
            },
            Send {
                fd: dead.as_raw_fd(),
                bufs: &s,
            },
            Send {
                fd: ok.as_raw_fd(),
                bufs: &s,
            },
        ];
        batch.send(&sends, &mut results);
        assert_eq!(
            results[0].as_ref().map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock)
        );
        assert!(results[1].is_err());
        assert_eq!(*results[2].as_ref().expect("sent"), 10);
        let mut got = [0u8; 10];
        ok_peer.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"still here");
    }
}
