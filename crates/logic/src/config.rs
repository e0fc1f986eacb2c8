//! logic's settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What `/goim/nodes/weighted` advertises and how connections are timed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Domain returned when no comet is known.
    pub default_domain: String,
    /// Suffix appended to a comet's server id for web clients.
    pub host_domain: String,
    /// Client heartbeat interval advertised to clients.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Missed heartbeats tolerated; the server deadline is `heartbeat × heartbeat_max`.
    pub heartbeat_max: u32,
    /// Advertised TCP port.
    pub tcp_port: i32,
    /// Advertised WebSocket port.
    pub ws_port: i32,
    /// Advertised secure WebSocket port.
    pub wss_port: i32,
    /// Weight multiplier for comets in the client's region.
    pub region_weight: f64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            default_domain: "127.0.0.1".into(),
            host_domain: String::new(),
            heartbeat: Duration::from_secs(240),
            heartbeat_max: 2,
            tcp_port: 3101,
            ws_port: 3102,
            wss_port: 3103,
            region_weight: 1.6,
        }
    }
}

/// Reconnect backoff advertised to clients (seconds and factors, as goim).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// Largest delay, seconds.
    pub max_delay: i32,
    /// First delay, seconds.
    pub base_delay: i32,
    /// Growth factor.
    pub factor: f64,
    /// Jitter fraction.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            max_delay: 300,
            base_delay: 3,
            factor: 1.8,
            jitter: 0.3,
        }
    }
}

/// goim's HTTP API port.
pub const HTTP_PORT: u16 = 3111;

/// logic settings; every field has a default (see `docs/configuration.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicConfig {
    /// HTTP API listener. Unset = port 3111 (goim's) on 127.0.0.1, or on 0.0.0.0
    /// when the API is protected (API keys configured or `tls` on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_bind: Option<SocketAddr>,
    /// Serve the HTTP API over HTTPS with the `[tls]` certificate.
    pub tls: bool,
    /// Client-facing node settings.
    pub node: NodeConfig,
    /// Client reconnect backoff.
    pub backoff: BackoffConfig,
    /// How often per-comet online counts are aggregated.
    #[serde(with = "humantime_serde")]
    pub online_interval: Duration,
    /// A comet's report older than this is discarded.
    #[serde(with = "humantime_serde")]
    pub online_stale: Duration,
    /// Largest push body accepted by the HTTP API, bytes.
    pub max_push_body: usize,
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            http_bind: None,
            tls: false,
            node: NodeConfig::default(),
            backoff: BackoffConfig::default(),
            online_interval: Duration::from_secs(10),
            online_stale: Duration::from_secs(300),
            max_push_body: 1 << 20,
        }
    }
}
