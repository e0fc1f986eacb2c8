//! One push written to many sockets with one system call.
//!
//! A room broadcast (and `push/all`) writes the same bytes to every member: one
//! `writev` per socket, each a full trip into the kernel. Where the kernel offers
//! io_uring, each slice of a broadcast is handed to it as one batch of
//! non-blocking sends instead (see `herald-uring`): the kernel performs them
//! inline, exactly like the `writev`s, but the fixed cost of a system call is paid
//! once per slice rather than once per member.
//!
//! Each runtime thread keeps its own small ring, made on first use. Where io_uring
//! is missing or refused (an old kernel, `kernel.io_uring_disabled`, a seccomp
//! profile that blocks it) the broadcast writes socket by socket as before; the
//! refusal is logged once.

use std::cell::RefCell;
use std::sync::Once;

use herald_uring::SendBatch;

/// Sends per ring, and so per system call: a broadcast slice.
const RING_ENTRIES: u32 = crate::hub::SLICE as u32;

enum Ring {
    Untried,
    Ready(Box<SendBatch>),
    Unavailable,
}

thread_local! {
    static RING: RefCell<Ring> = const { RefCell::new(Ring::Untried) };
}

static REFUSED: Once = Once::new();

/// Runs `f` with this thread's ring; `None` when io_uring is unavailable here.
pub(crate) fn with_ring<R>(f: impl FnOnce(&mut SendBatch) -> R) -> Option<R> {
    RING.with(|cell| {
        let mut ring = cell.try_borrow_mut().ok()?;
        if matches!(*ring, Ring::Untried) {
            *ring = match SendBatch::new(RING_ENTRIES) {
                Ok(b) => Ring::Ready(Box::new(b)),
                Err(e) => {
                    REFUSED.call_once(|| {
                        tracing::warn!(
                            error = %e,
                            "io_uring unavailable: broadcasts write one socket per system call"
                        )
                    });
                    Ring::Unavailable
                }
            };
        }
        match &mut *ring {
            Ring::Ready(b) => Some(f(b)),
            _ => None,
        }
    })
}
