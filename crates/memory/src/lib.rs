//! glibc's malloc keeps the memory a program frees: a page in the middle of its heap
//! goes back to the kernel only when something asks for it. After a burst (a room of
//! slow readers, a reconnect storm) a herald process would otherwise stay at its peak
//! size. [`trim`] asks; [`stats`] tells how much the allocator holds.
//!
//! On other C libraries both are no-ops that report nothing, so callers need no
//! conditional code.

/// What the allocator holds, from `mallinfo2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes obtained from the kernel for the heaps (`arena` + `hblkhd`).
    pub heap_bytes: u64,
    /// Bytes of that in use by the program (`uordblks` + `hblkhd`).
    pub in_use_bytes: u64,
    /// Bytes in free chunks (`fordblks`), resident or already handed back by a trim.
    pub free_bytes: u64,
}

/// Hands every whole free page of every heap back to the kernel. Returns whether
/// anything was released; `false` on C libraries without `malloc_trim`.
pub fn trim() -> bool {
    imp::trim()
}

/// The allocator's counts, or `None` where the C library has no `mallinfo2`.
pub fn stats() -> Option<AllocatorStats> {
    imp::stats()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::AllocatorStats;

    pub fn trim() -> bool {
        // SAFETY: malloc_trim takes a plain integer, touches only the allocator's own
        // state under its own locks, and is safe to call from any thread at any time.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released == 1
    }

    pub fn stats() -> Option<AllocatorStats> {
        // SAFETY: mallinfo2 takes nothing, returns a struct by value and reads the
        // allocator's state under its own locks (glibc 2.33 and later).
        #[allow(unsafe_code)]
        let m = unsafe { libc::mallinfo2() };
        let n = |v: usize| v as u64;
        Some(AllocatorStats {
            heap_bytes: n(m.arena) + n(m.hblkhd),
            in_use_bytes: n(m.uordblks) + n(m.hblkhd),
            free_bytes: n(m.fordblks),
        })
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    use super::AllocatorStats;

    pub fn trim() -> bool {
        false
    }

    pub fn stats() -> Option<AllocatorStats> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The counts are process-wide: the tests take turns so one's allocations do
    /// not show in the other's numbers.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse().ok())
            .expect("resident pages");
        pages * 4096
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_trim_hands_back_memory_freed_in_the_middle_of_the_heap() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // Many small blocks, then every one but the last freed: the free space sits
        // below a live block, where glibc's automatic trimming of the heap top
        // cannot reach it.
        const BLOCKS: usize = 64 * 1024;
        let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8; 1000]).collect();
        let keep = blocks.pop().expect("a block");
        let before_free = stats().expect("stats");
        drop(blocks);
        let freed = stats().expect("stats");
        assert!(
            freed.free_bytes >= before_free.free_bytes + 50 * 1_000_000,
            "the freed blocks show as free: {before_free:?} then {freed:?}"
        );
        let resident = rss_bytes();
        assert!(trim(), "the trim released something");
        let after = rss_bytes();
        assert!(
            resident - after >= 40 * 1024 * 1024,
            "RSS fell by at least 40 MiB of the ~64 MB freed: {resident} -> {after}"
        );
        assert_eq!(keep.len(), 1000);
    }

    #[test]
    fn stats_count_what_is_in_use() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        if stats().is_none() {
            assert!(!trim());
            return;
        }
        // The counts are the whole process's: another thread of the test
        // harness freeing memory between the two readings hides part of the
        // 8 MiB, so one clean reading out of a few is what is asked.
        let mut seen = Vec::new();
        for _ in 0..5 {
            let before = stats().expect("stats");
            let big: Vec<u8> = vec![1; 8 << 20];
            let during = stats().expect("stats");
            assert!(during.heap_bytes >= during.in_use_bytes);
            drop(big);
            if during.in_use_bytes >= before.in_use_bytes + (8 << 20) - 4096 {
                return;
            }
            seen.push((before, during));
        }
        panic!("an 8 MiB allocation never showed in use: {seen:?}");
    }
}
