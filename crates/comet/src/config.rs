//! comet's settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What comet does with a connection whose outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Drop the new push for that connection and count it (goim's behaviour).
    #[default]
    Drop,
    /// Close the connection so the client reconnects (and, with history, recovers).
    Disconnect,
}

/// comet settings; every field has a default (see `docs/configuration.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CometConfig {
    /// TCP client listeners (goim: 3101).
    pub tcp_bind: Vec<SocketAddr>,
    /// WebSocket client listeners (goim: 3102).
    pub ws_bind: Vec<SocketAddr>,
    /// Secure WebSocket client listeners (goim: 3103); need the `[tls]` certificate.
    pub wss_bind: Vec<SocketAddr>,
    /// goim's TCP protocol inside TLS; need the `[tls]` certificate.
    pub tls_tcp_bind: Vec<SocketAddr>,
    /// HTTP path of the WebSocket endpoint.
    pub ws_path: String,
    /// Time from accept to successful auth (covers the TLS handshake and the
    /// WebSocket upgrade too, which also have `limits.client.upgrade_timeout`).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Heartbeat deadline used when logic returns none.
    #[serde(with = "humantime_serde")]
    pub default_heartbeat: Duration,
    /// Largest body a client frame may carry.
    pub max_body: usize,
    /// Outbound queue length per connection (pushes and batches waiting to be written).
    pub outbound_queue: usize,
    /// What to do when a connection's outbound queue is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// Write each slice of a room broadcast or `push/all` (64 sockets) with one
    /// io_uring system call instead of one `writev` per socket. Without effect
    /// where the kernel refuses io_uring (logged once; writes go one by one).
    pub io_uring: bool,
    /// Longest time one socket write may block before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Number of buckets (rounded up to a power of two).
    pub buckets: usize,
    /// How often room counts are reported to logic and metadata to the registry.
    #[serde(with = "humantime_serde")]
    pub online_report_interval: Duration,
    /// Lower bound of the per-connection interval between route refreshes in logic.
    /// Keep `route_refresh_max` plus the client heartbeat interval below the route
    /// TTL, or routes can expire between refreshes (goim's defaults could).
    #[serde(with = "humantime_serde")]
    pub route_refresh_min: Duration,
    /// Upper bound of that interval.
    #[serde(with = "humantime_serde")]
    pub route_refresh_max: Duration,
    /// Deadline for each call to logic.
    #[serde(with = "humantime_serde")]
    pub logic_timeout: Duration,
    /// Most client connections held at once; 0 = no limit but the open-file limit.
    pub max_connections: usize,
    /// Listen backlog of the client listeners (capped by `net.core.somaxconn`); a
    /// connection storm beyond it waits for SYN retransmits.
    pub backlog: u32,
    /// Public addresses advertised to clients through `/goim/nodes/weighted`.
    pub public_addrs: Vec<String>,
    /// Balancer weight advertised in the registry.
    pub weight: i64,
    /// Advertise this comet as offline (not given to new clients).
    pub offline: bool,
}

impl Default for CometConfig {
    fn default() -> Self {
        CometConfig {
            tcp_bind: vec![SocketAddr::from(([0, 0, 0, 0], 3101))],
            ws_bind: vec![SocketAddr::from(([0, 0, 0, 0], 3102))],
            wss_bind: Vec::new(),
            tls_tcp_bind: Vec::new(),
            ws_path: "/sub".into(),
            handshake_timeout: Duration::from_secs(8),
            default_heartbeat: Duration::from_secs(480),
            max_body: herald_proto::MAX_BODY,
            outbound_queue: 256,
            slow_consumer: SlowConsumerPolicy::Drop,
            io_uring: true,
            write_timeout: Duration::from_secs(10),
            buckets: 32,
            online_report_interval: Duration::from_secs(10),
            route_refresh_min: Duration::from_secs(300),
            route_refresh_max: Duration::from_secs(900),
            logic_timeout: Duration::from_secs(3),
            max_connections: 0,
            backlog: 4096,
            public_addrs: Vec::new(),
            weight: 10,
            offline: false,
        }
    }
}
