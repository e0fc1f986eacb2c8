//! Limits at herald's edges, and the `[limits]` settings that configure them.
//!
//! - [`TokenBucket`]: a rate with a burst, owned by whoever it limits (a connection
//!   task's frames and room changes, an API key's requests).
//! - [`IpCounter`]: concurrent connections per client address, released by a guard.
//! - [`TrustedProxies`]: which peers may name the client in `X-Forwarded-For`.
//! - [`LimitsConfig`] with [`ClientLimits`] (comet's client listeners) and
//!   [`HttpLimits`] (logic's HTTP API): every limit has a documented default, and
//!   0 means "no limit" wherever a count is configured.
//!
//! Used by comet (client connections) and logic (HTTP API); the binary builds them
//! from the configuration.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate` ≤ 0 means unlimited.
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Whether this bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.is_unlimited() {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is available (zero when one is).
    pub fn wait_time(&self) -> Duration {
        if self.is_unlimited() || self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }
}

/// A token bucket small enough to keep in every connection (8 bytes): the rate
/// and burst stay in the caller's settings, the bucket holds only its level and
/// when that was last updated, in milliseconds of the caller's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    tokens: f32,
    /// Low 32 bits of the caller's clock (wraps after 49 days; a gap that long
    /// refills the bucket anyway).
    at_ms: u32,
}

impl Budget {
    /// A full bucket at `now_ms`.
    pub fn full(burst: u32, now_ms: u64) -> Budget {
        Budget {
            tokens: burst.max(1) as f32,
            at_ms: now_ms as u32,
        }
    }

    /// Takes one token if there is one; `per_sec` ≤ 0 means unlimited.
    pub fn try_take(&mut self, per_sec: f32, burst: u32, now_ms: u64) -> bool {
        if per_sec <= 0.0 {
            return true;
        }
        let now = now_ms as u32;
        let elapsed = now.wrapping_sub(self.at_ms) as f32 / 1000.0;
        self.at_ms = now;
        self.tokens = (self.tokens + elapsed * per_sec).min(burst.max(1) as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Number of shards of an [`IpCounter`] (a power of two).
const IP_SHARDS: usize = 64;

/// Concurrent connections per client address, limited to `max` each (0 = only
/// counted). IPv6 addresses are counted per /64, the block one subscriber usually
/// holds (so rotating through a /64 does not multiply the limit).
pub struct IpCounter {
    max: u32,
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

impl std::fmt::Debug for IpCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpCounter").field("max", &self.max).finish()
    }
}

fn shard_of(ip: &IpAddr) -> usize {
    // FNV-1a over the address bytes: cheap and spreads neighbouring addresses.
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    match ip {
        IpAddr::V4(a) => eat(&a.octets()),
        IpAddr::V6(a) => eat(&a.octets()),
    }
    (h as usize) & (IP_SHARDS - 1)
}

impl IpCounter {
    /// A counter allowing `max` connections per address (0 = unlimited).
    pub fn new(max: u32) -> Arc<IpCounter> {
        Arc::new(IpCounter {
            max,
            shards: (0..IP_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Counts one more connection from `ip`, or refuses it when `ip` is at the
    /// limit. The connection is counted until the guard is dropped.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        let ip = counted_as(ip);
        let mut shard = self.shards[shard_of(&ip)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = shard.entry(ip).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpGuard {
            counter: self.clone(),
            ip,
        })
    }

    /// Connections counted for `ip` (its /64 for IPv6).
    pub fn count(&self, ip: IpAddr) -> u32 {
        let ip = counted_as(ip);
        self.shards[shard_of(&ip)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    /// Distinct addresses with at least one connection.
    pub fn distinct(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn release(&self, ip: IpAddr) {
        let mut shard = self.shards[shard_of(&ip)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = shard.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&ip);
            }
        }
    }
}

/// The address a connection is counted under: IPv4 as is (IPv4-mapped IPv6 as
/// IPv4), IPv6 by its /64 prefix.
fn counted_as(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// One counted connection; released on drop.
#[derive(Debug)]
pub struct IpGuard {
    counter: Arc<IpCounter>,
    ip: IpAddr,
}

impl IpGuard {
    /// The address counted.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        self.counter.release(self.ip);
    }
}

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A malformed CIDR range.
#[derive(Debug, thiserror::Error)]
#[error("invalid address range {0:?}: expected an address or address/prefix, e.g. 10.0.0.0/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_string());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` is in this range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as IPv4; others unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The proxies whose `X-Forwarded-For` header names the real client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client address of a request from `peer` carrying `forwarded_for` (the
    /// `X-Forwarded-For` values, in header order). The header is read only when
    /// `peer` is trusted; then the rightmost address that is not itself a trusted
    /// proxy is the client (entries to its left were written by the client and
    /// prove nothing). Malformed entries stop the walk at the last good address.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = parse_hop(hop) else {
                break;
            };
            client = canonical(ip);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` element: an address, possibly `[v6]:port` or `v4:port`.
fn parse_hop(hop: &str) -> Result<IpAddr, ()> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Ok(sa.ip());
    }
    Err(())
}

/// Limits on client connections (comet's TCP, WebSocket and TLS listeners).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientLimits {
    /// Connections at once from one client address, counted from accept (so
    /// half-open handshakes count). 0 = no limit. Behind a proxy listed in
    /// `limits.trusted_proxies`, WebSocket clients are counted by the
    /// `X-Forwarded-For` address once the upgrade is read.
    pub connections_per_ip: u32,
    /// Time from accept to a finished TLS handshake and WebSocket upgrade (the
    /// auth frame has `comet.handshake_timeout`, counted from accept too).
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
    /// Frames a connection may send per second on average (heartbeats included);
    /// 0 = no limit.
    pub frames_per_second: u32,
    /// Frames a connection may send in a burst above that rate.
    pub frames_burst: u32,
    /// Most ops in one connection's accept filter (op 14 beyond it is refused).
    pub max_accepts: usize,
    /// Room changes (op 12) per minute per connection; 0 = no limit.
    pub room_changes_per_minute: u32,
    /// Longest room key (`type://id`) a client may name, bytes: every distinct
    /// room is kept in memory and reported to logic.
    pub max_room_key: usize,
    /// Bytes waiting to be written to one connection (pushes queued plus the
    /// unwritten rest of a write). Above it the connection is a slow consumer.
    pub outbound_bytes: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            connections_per_ip: 0,
            upgrade_timeout: Duration::from_secs(5),
            frames_per_second: 50,
            frames_burst: 200,
            max_accepts: 1024,
            room_changes_per_minute: 120,
            max_room_key: 256,
            outbound_bytes: 1 << 20,
        }
    }
}

/// Limits on the HTTP API listener (logic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Open connections at once; further connections wait in the listen backlog.
    /// Keep it well below the process's open-file limit so client listeners and
    /// engines always have descriptors. 0 = no limit.
    pub max_connections: usize,
    /// Connections at once from one peer address; 0 = no limit. A trusted
    /// proxy's connections are not counted (they carry many clients); instead
    /// the requests in progress of each client it names in `X-Forwarded-For`
    /// are limited to the same number.
    pub connections_per_ip: u32,
    /// Time to receive a request's line and headers: for a connection's first
    /// request from accept (TLS handshake included), for later ones from their
    /// first byte. 0 = no limit.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A kept-alive connection with no request in progress is closed after this
    /// long. 0 = no limit.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request must be read, handled and answered within this long (a body that
    /// never arrives holds its slot no longer).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Keys or mids in one push request. 0 = no limit.
    pub max_recipients: usize,
    /// Longest request line and headers, bytes (the URI of a push carries its
    /// recipients).
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            connections_per_ip: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_recipients: 10_000,
            max_header_bytes: 256 * 1024,
        }
    }
}

/// The `[limits]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client,
    /// on the WebSocket listeners and the HTTP API. Empty = the header is ignored.
    pub trusted_proxies: TrustedProxies,
    /// Client connections.
    pub client: ClientLimits,
    /// The HTTP API.
    pub http: HttpLimits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5, t0);
        assert!((0..5).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        assert!(b.wait_time() > Duration::ZERO);
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        // Refills up to the burst only.
        let later = t0 + Duration::from_secs(60);
        assert!((0..5).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
        let mut free = TokenBucket::new(0.0, 1, t0);
        assert!((0..1000).all(|_| free.try_take(t0)));
    }

    #[test]
    fn budget_allows_burst_then_rate() {
        let mut b = Budget::full(3, 1_000);
        assert!((0..3).all(|_| b.try_take(2.0, 3, 1_000)));
        assert!(!b.try_take(2.0, 3, 1_000));
        assert!(!b.try_take(2.0, 3, 1_400));
        assert!(b.try_take(2.0, 3, 1_600));
        // Refills to the burst, no more; survives the 32-bit clock wrapping.
        let far = (1u64 << 32) + 500;
        assert!((0..3).all(|_| b.try_take(2.0, 3, far)));
        assert!(!b.try_take(2.0, 3, far));
        assert!(std::mem::size_of::<Budget>() <= 8);
        let mut free = Budget::full(1, 0);
        assert!((0..100).all(|_| free.try_take(0.0, 1, 0)));
    }

    #[test]
    fn ip_counter_limits_and_releases() {
        let c = IpCounter::new(2);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let a = c.try_acquire(ip).unwrap();
        let _b = c.try_acquire(ip).unwrap();
        assert!(c.try_acquire(ip).is_none());
        assert!(c.try_acquire("10.1.2.4".parse().unwrap()).is_some());
        drop(a);
        assert_eq!(c.count(ip), 1);
        assert!(c.try_acquire(ip).is_some());
        // IPv6 counts per /64.
        let v6 = IpCounter::new(1);
        let _g = v6.try_acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(v6.try_acquire("2001:db8::ffff".parse().unwrap()).is_none());
        assert!(v6.try_acquire("2001:db8:0:1::1".parse().unwrap()).is_some());
        let unlimited = IpCounter::new(0);
        let guards: Vec<_> = (0..100).filter_map(|_| unlimited.try_acquire(ip)).collect();
        assert_eq!(guards.len(), 100);
        drop(guards);
        assert_eq!(unlimited.distinct(), 0);
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.1.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: Cidr = "192.168.1.7".parse().unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()));
        assert!(!one.contains("192.168.1.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let proxies = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        // A stranger cannot name another client.
        assert_eq!(proxies.client_ip(stranger, ["1.2.3.4"]), stranger);
        // Through a trusted proxy: the rightmost untrusted hop.
        assert_eq!(
            proxies.client_ip(proxy, ["6.6.6.6, 198.51.100.1, 10.0.0.9"]),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // Several header lines count as one list.
        assert_eq!(
            proxies.client_ip(proxy, ["6.6.6.6", "198.51.100.2"]),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(proxies.client_ip(proxy, []), proxy);
        assert_eq!(proxies.client_ip(proxy, ["garbage"]), proxy);
        assert_eq!(
            proxies.client_ip(proxy, ["[2001:db8::1]:443"]),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn config_roundtrips() {
        let cfg = LimitsConfig {
            trusted_proxies: TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]),
            ..Default::default()
        };
        let text = toml::to_string(&cfg).unwrap();
        let back: LimitsConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        assert!(toml::from_str::<LimitsConfig>("trusted_proxies = [\"x\"]").is_err());
    }
}
