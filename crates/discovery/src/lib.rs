//! Service discovery: which comets and logics exist and what they advertise.
//!
//! A process registers an [`Instance`] (appid `goim.comet` or `goim.logic`, with
//! goim's metadata keys: `weight`, `offline`, `addrs`, `conn_count`, `ip_count`)
//! and keeps it current through its [`Registration`]; others [`Registry::watch`] an
//! appid and receive the full instance list on every change (push, never poll).
//!
//! [`local`] is the standalone backend (the process itself); cluster backends
//! implement the same trait: `etcd` (cargo feature `etcd`) keeps instances in an
//! etcd v3 cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod local;

#[cfg(feature = "etcd")]
pub use etcd::{EtcdConfig, EtcdRegistry};
pub use local::LocalRegistry;

/// appid of comets.
pub const COMET_APPID: &str = "goim.comet";
/// appid of logics.
pub const LOGIC_APPID: &str = "goim.logic";

/// A registered process, in goim's discovery JSON shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Region of the process.
    pub region: String,
    /// Zone (data centre) of the process.
    pub zone: String,
    /// Deployment environment.
    pub env: String,
    /// `goim.comet` or `goim.logic`.
    pub appid: String,
    /// The server id: the same string in routes, the registry and job.
    pub hostname: String,
    /// Internal addresses, e.g. `grpc://10.0.0.1:3109`.
    pub addrs: Vec<String>,
    /// Software version.
    pub version: String,
    /// Last change, unix nanoseconds.
    pub latest_timestamp: i64,
    /// goim metadata: `weight`, `offline`, `addrs`, `conn_count`, `ip_count`.
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// A metadata value parsed as a number.
    pub fn meta_i64(&self, key: &str) -> Option<i64> {
        self.metadata.get(key)?.trim().parse().ok()
    }

    /// Whether the instance declared itself offline (not to be given to clients).
    pub fn offline(&self) -> bool {
        self.metadata.get("offline").is_some_and(|v| v == "true")
    }
}

/// What kind of failure a registry operation met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryErrorKind {
    /// The registry is unreachable, or cannot do it now; retrying later may help.
    Unavailable,
    /// The registry refused this process's credentials, or its TLS settings
    /// cannot be used; retrying will not help.
    Invalid,
}

impl std::fmt::Display for RegistryErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RegistryErrorKind::Unavailable => "unavailable",
            RegistryErrorKind::Invalid => "refused the settings",
        })
    }
}

impl herald_failure::Kind for RegistryErrorKind {
    const SEAM: &'static str = "registry";
}

/// Why a registry operation failed: its kind, the engine, what was being done,
/// and the engine's own error ([`std::error::Error::source`]). It reads, for
/// logs, `etcd registry unavailable: <what>: <cause>`.
pub type RegistryError = herald_failure::Failure<RegistryErrorKind>;

/// The live instances of one appid; replaced whole on every change.
pub type Instances = Arc<Vec<Instance>>;

/// Registers processes and watches appids.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers `instance` until the returned registration is deregistered or the
    /// process ends.
    async fn register(&self, instance: Instance) -> Result<Box<dyn Registration>, RegistryError>;

    /// The instances of `appid`, updated on every change.
    async fn watch(&self, appid: &str) -> Result<watch::Receiver<Instances>, RegistryError>;

    /// Checks that the registry answers now (for readiness probes).
    async fn ping(&self) -> Result<(), RegistryError> {
        Ok(())
    }
}

/// A live registration.
#[async_trait]
pub trait Registration: Send + Sync {
    /// Replaces the instance's metadata (e.g. connection counts).
    async fn update(&self, metadata: BTreeMap<String, String>) -> Result<(), RegistryError>;
    /// Removes the instance, and every claim it holds.
    async fn deregister(&self) -> Result<(), RegistryError>;

    /// Claims `name` in `scope` for this registration: at most one registration
    /// holds a name at a time. `Ok(true)` when this registration holds it (now or
    /// already), `Ok(false)` when another does. A claim lasts until
    /// [`Registration::release`], [`Registration::deregister`], or the end of the
    /// registration's lease (the process died or lost the registry for longer than
    /// the lease, see [`Registration::lease_losses`]). Watching `scope` with
    /// [`Registry::watch`] lists the claims as instances whose hostname is the
    /// name and whose [`CLAIM_OWNER`] metadata is the holder's hostname.
    async fn claim(&self, scope: &str, name: &str) -> Result<bool, RegistryError>;

    /// Gives up a claim this registration holds (nothing if it holds none).
    async fn release(&self, scope: &str, name: &str) -> Result<(), RegistryError>;

    /// How many times this registration lost its lease, and with it every claim it
    /// held. Changes as soon as the registration cannot be sure its lease is still
    /// alive — before the registry expires it — so a holder can stop acting on its
    /// claims before another registration can take them.
    fn lease_losses(&self) -> watch::Receiver<u64>;
}

/// Metadata key naming the holder of a claim (see [`Registration::claim`]).
pub const CLAIM_OWNER: &str = "owner";
