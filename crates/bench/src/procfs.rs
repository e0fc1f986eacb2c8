//! Reading a server process's CPU time and memory, and kernel socket memory, from
//! `/proc`.

use std::io;

/// Clock ticks per second used by `/proc/<pid>/stat` (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// User + system CPU time of `pid`, nanoseconds (10 ms resolution).
pub fn cpu_ns(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("unexpected /proc/pid/stat format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("missing cpu field"))
    };
    // `rest` starts at field 3 (state), so utime (14) is index 11, stime (15) index 12.
    Ok((get(11)? + get(12)?) * (1_000_000_000 / TICKS_PER_SEC))
}

/// Resident set size of `pid`, bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

/// Kernel memory held by TCP sockets system-wide (`/proc/net/sockstat`), bytes.
pub fn tcp_mem_bytes() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .ok_or_else(|| io::Error::other("no TCP line"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            let pages: u64 = it
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| io::Error::other("bad mem"))?;
            return Ok(pages * 4096);
        }
    }
    Err(io::Error::other("no mem field"))
}

/// Slab memory of the kernel objects behind sockets (`tcp_sock`-like caches,
/// dentries, inodes, files) is not in `sockstat`; this reads `Slab:` from
/// `/proc/meminfo` so a run can report the total kernel growth too.
pub fn slab_bytes() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no Slab"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_ns(pid).is_ok());
        assert!(rss_bytes(pid).unwrap() > 100_000);
        assert!(tcp_mem_bytes().is_ok());
        assert!(slab_bytes().unwrap() > 0);
    }
}
