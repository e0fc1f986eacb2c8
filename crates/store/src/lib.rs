//! Where logic keeps connection routes and per-comet online counts.
//!
//! [`SessionStore`] is the route table: member id → connection keys → the comet
//! (server id) holding each key. [`OnlineStore`] holds each comet's room counts as
//! reported every few seconds. Both are seams: [`memory`] is the standalone backend;
//! `redis` (feature `redis`) keeps goim's key layout for clusters. Every backend
//! passes the same [`conformance`] checks.
//!
//! Two of goim's bugs are part of the contract here: removing a route succeeds only
//! when it still points at the caller's server, so a client that reconnected
//! elsewhere keeps its new route; and an online report replaces the previous one
//! whole, so rooms that emptied disappear.
//!
//! [`HistoryStore`] is the third seam: each stream's bounded history and the
//! positions it hands out ([`history`]), in memory or in Redis.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod conformance;
pub mod history;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
mod redis_history;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use history::{Appended, HistoryPolicy, HistoryRead, HistoryStore, MemoryHistory};
pub use memory::MemoryStore;

/// What kind of failure a store operation met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The engine is unreachable or failed; the operation did not happen. Every
    /// logic shares the store, so another logic would fail the same way.
    Unavailable,
    /// Stored data could not be read (or a value could not be written as the
    /// layout wants it).
    Corrupt,
}

impl std::fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Corrupt => "holds a corrupt value",
        })
    }
}

impl herald_failure::Kind for StoreErrorKind {
    const SEAM: &'static str = "store";
}

/// Why a store operation failed: its kind, the engine, what was being done, and
/// the engine's own error ([`std::error::Error::source`]). It reads, for logs,
/// `redis store unavailable: <what>: <cause>`.
pub type StoreError = herald_failure::Failure<StoreErrorKind>;

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The route table.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Records that `key` (of member `mid`, 0 = anonymous) is held by `server`.
    async fn add_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<()>;

    /// Extends the route's lifetime. Returns false when the route no longer exists
    /// (the caller then adds it again).
    async fn refresh_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<bool>;

    /// Removes the route only if it still points at `server`, atomically. Returns
    /// whether a route was removed.
    async fn remove_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<bool>;

    /// The server holding each key, in order; `None` for unknown keys.
    async fn servers_by_keys(&self, keys: &[String]) -> StoreResult<Vec<Option<String>>>;

    /// Every (key, server) of the given members.
    async fn keys_by_mids(&self, mids: &[i64]) -> StoreResult<Vec<(String, String)>>;

    /// Checks that the engine answers now (for readiness probes).
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// One comet's room counts at a point in time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerOnline {
    /// The comet's server id.
    pub server: String,
    /// Members per room key.
    pub room_count: HashMap<String, i32>,
    /// When the counts were reported, unix seconds.
    pub updated: i64,
}

/// Per-comet online counts.
#[async_trait]
pub trait OnlineStore: Send + Sync + 'static {
    /// Replaces the counts of `online.server`.
    async fn put_server_online(&self, online: &ServerOnline) -> StoreResult<()>;
    /// The last counts of `server`, if any are stored.
    async fn server_online(&self, server: &str) -> StoreResult<Option<ServerOnline>>;
    /// Forgets `server`'s counts.
    async fn remove_server_online(&self, server: &str) -> StoreResult<()>;
}
