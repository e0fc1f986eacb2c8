//! The configuration file (`--config FILE`, TOML) and its environment overrides
//! (`HERALD_<SECTION>__<KEY>`). Every option has a default, so no file is needed.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use herald_comet::CometConfig;
use herald_job::JobConfig;
use herald_logic::LogicConfig;
use serde::{Deserialize, Serialize};

/// Identity of this process in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Server id: the same string in routes, the registry and job. Empty means
    /// `<hostname>:3109`.
    pub id: String,
    /// Region, for the balancer.
    pub region: String,
    /// Zone (data centre).
    pub zone: String,
    /// Deployment environment name.
    pub env: String,
}

/// The embedded session/online store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// How long a route lives without a refresh (goim's `redis.expire`).
    #[serde(with = "humantime_serde")]
    pub route_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            route_ttl: Duration::from_secs(1800),
        }
    }
}

/// The embedded queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Messages the in-process queue holds.
    pub capacity: usize,
    /// How long a push waits for room in a full queue before the API answers 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 65536,
            publish_timeout: Duration::from_secs(1),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `herald_comet=debug,info`; `RUST_LOG`
    /// wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Shutdown behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to wait for connections to close after SIGINT/SIGTERM.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration::from_secs(10),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Process identity.
    pub server: ServerConfig,
    /// Connection tier.
    pub comet: CometConfig,
    /// Control tier and HTTP API.
    pub logic: LogicConfig,
    /// Fan-out tier.
    pub job: JobConfig,
    /// Route and online store.
    pub store: StoreConfig,
    /// Queue between logic and job.
    pub queue: QueueConfig,
    /// Logging.
    pub log: LogConfig,
    /// Shutdown.
    pub shutdown: ShutdownConfig,
}

impl Config {
    /// Defaults, then the file (if given; it must exist), then `HERALD_*` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                bail!("configuration file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("HERALD_").split("__"));
        let cfg: Config = fig.extract().context("invalid configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.comet.tcp_bind.is_empty() && self.comet.ws_bind.is_empty() {
            bail!("comet needs at least one listener (comet.tcp_bind or comet.ws_bind)");
        }
        if self.comet.outbound_queue == 0 {
            bail!("comet.outbound_queue must be at least 1");
        }
        if self.job.room_batch == 0 {
            bail!("job.room_batch must be at least 1");
        }
        if self.logic.node.heartbeat.is_zero() {
            bail!("logic.node.heartbeat must be positive");
        }
        if self.comet.online_report_interval.is_zero() || self.logic.online_interval.is_zero() {
            bail!("online intervals must be positive");
        }
        Ok(())
    }

    /// The server id in force.
    pub fn server_id(&self) -> String {
        if !self.server.id.is_empty() {
            return self.server.id.clone();
        }
        format!("{}:3109", hostname())
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_roundtrip_through_toml() {
        let text = toml::to_string(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn file_and_env_override() {
        let dir = std::env::temp_dir().join(format!("herald-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.toml");
        std::fs::write(
            &path,
            "[comet]\nhandshake_timeout = \"2s\"\noutbound_queue = 8\n[logic.node]\nheartbeat = \"30s\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_COMET__OUTBOUND_QUEUE", "16");
            let cfg = Config::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(cfg.comet.handshake_timeout, Duration::from_secs(2));
            assert_eq!(cfg.comet.outbound_queue, 16);
            assert_eq!(cfg.logic.node.heartbeat, Duration::from_secs(30));
            Ok(())
        });
        assert!(Config::load(Some(&dir.join("missing.toml"))).is_err());
        std::fs::write(&path, "[comet]\nno_such_option = 1\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(err.contains("no_such_option"), "{err}");
        std::fs::write(&path, "[comet]\nhandshake_timeout = \"soon\"\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());
    }
}
