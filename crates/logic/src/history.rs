//! Which streams keep history, and logic's side of it: appending a push (which
//! gives it its position) before it is queued, retracting it when the queue
//! refuses it, and reading history for comets that recover a connection.
//!
//! A stream is a room (`type://id`), a member (`mid:<mid>`) or a key
//! (`key:<key>`). Rooms are configured per type (the part before `://`, `*` for
//! the types not listed); a stream whose kind or type is not configured keeps
//! nothing and costs nothing: its pushes take goim's path unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_proto::recovery::StreamKind;
use herald_rpc::{HistoryEntry, HistoryReply, HistoryReq, Position, RpcResult};
use herald_store::{HistoryPolicy, HistoryStore, StoreError};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Most entries one stream may keep.
pub const MAX_HISTORY_SIZE: usize = 100_000;

/// One kind of stream's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHistory {
    /// Messages kept per stream (0: positions only; nothing to replay, but a
    /// client learns that it missed something).
    pub size: usize,
    /// How long a stream's messages outlive its last push.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

/// The `[history]` settings: off everywhere by default (goim's behaviour).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Per room type (`chat` for `chat://…`; `*` for every type not listed).
    pub rooms: BTreeMap<String, StreamHistory>,
    /// Pushes to members (`/goim/push/mids`), per member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mids: Option<StreamHistory>,
    /// Pushes to keys (`/goim/push/keys`), per key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<StreamHistory>,
    /// How long a stream's epoch and last offset outlive its last use (at least
    /// every `ttl`): a client that comes back within it to a quiet stream
    /// recovers instead of reloading.
    #[serde(with = "humantime_serde")]
    pub meta_ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            rooms: BTreeMap::new(),
            mids: None,
            keys: None,
            meta_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl HistoryConfig {
    /// Whether any stream keeps history.
    pub fn enabled(&self) -> bool {
        !self.rooms.is_empty() || self.mids.is_some() || self.keys.is_some()
    }

    /// Checks the settings; the error names the offending one.
    pub fn validate(&self) -> Result<(), String> {
        let all = self
            .rooms
            .iter()
            .map(|(t, h)| (format!("history.rooms.{t}"), h))
            .chain(self.mids.iter().map(|h| ("history.mids".to_string(), h)))
            .chain(self.keys.iter().map(|h| ("history.keys".to_string(), h)));
        for (name, h) in all {
            if h.size > MAX_HISTORY_SIZE {
                return Err(format!(
                    "{name}.size = {} is above the limit of {MAX_HISTORY_SIZE}",
                    h.size
                ));
            }
            if h.ttl.is_zero() {
                return Err(format!("{name}.ttl must be more than 0"));
            }
            if h.ttl > self.meta_ttl {
                return Err(format!(
                    "{name}.ttl ({:?}) is longer than history.meta_ttl ({:?}): a stream's epoch must outlive its entries",
                    h.ttl, self.meta_ttl
                ));
            }
        }
        for t in self.rooms.keys() {
            if t.contains("://") || t.is_empty() {
                return Err(format!(
                    "history.rooms.{t:?}: a room type is the part before \"://\" (e.g. \"chat\"), or \"*\""
                ));
            }
        }
        Ok(())
    }

    /// The policy of `stream`, if it keeps history.
    pub fn policy(&self, stream: &str) -> Option<HistoryPolicy> {
        let h = match StreamKind::of_stream(stream) {
            StreamKind::Mid => self.mids?,
            StreamKind::Key => self.keys?,
            StreamKind::Room => {
                let typ = stream.split_once("://").map_or("", |(t, _)| t);
                *self.rooms.get(typ).or_else(|| self.rooms.get("*"))?
            }
        };
        Some(HistoryPolicy {
            size: h.size,
            ttl: h.ttl,
            meta_ttl: self.meta_ttl.max(h.ttl),
        })
    }
}

/// The history store with its settings.
#[derive(Clone)]
pub struct History {
    store: Arc<dyn HistoryStore>,
    cfg: Arc<HistoryConfig>,
}

impl History {
    /// History kept in `store` as `cfg` says.
    pub fn new(store: Arc<dyn HistoryStore>, cfg: HistoryConfig) -> History {
        History {
            store,
            cfg: Arc::new(cfg),
        }
    }

    /// The settings.
    pub fn config(&self) -> &HistoryConfig {
        &self.cfg
    }

    /// The store (for readiness probes).
    pub fn store(&self) -> &Arc<dyn HistoryStore> {
        &self.store
    }

    /// The policy of `stream`, if it keeps history.
    pub fn policy(&self, stream: &str) -> Option<HistoryPolicy> {
        self.cfg.policy(stream)
    }

    /// Appends `frame` (the client frame of the push) to `stream` under
    /// `policy`: the push's position.
    pub async fn append(
        &self,
        stream: &str,
        policy: &HistoryPolicy,
        frame: Bytes,
    ) -> Result<Position, StoreError> {
        let a = self.store.append(stream, policy, frame).await?;
        Ok(Position {
            stream: stream.to_string(),
            epoch: a.epoch,
            offset: a.offset,
        })
    }

    /// Marks a push whose publish failed, so recovery does not replay it. Best
    /// effort: a failure is logged (the push may then be replayed to a client
    /// that recovers, although the API reported it as failed).
    pub async fn retract(&self, p: &Position) {
        if let Err(e) = self.store.retract(&p.stream, &p.epoch, p.offset).await {
            warn!(stream = %p.stream, offset = p.offset, error = %e,
                "cannot retract a push whose publish failed");
        }
    }

    /// Answers a comet's history request.
    pub async fn read(&self, req: &HistoryReq) -> Result<HistoryReply, StoreError> {
        let Some(policy) = self.policy(&req.stream) else {
            return Ok(HistoryReply::default());
        };
        let limit = if req.limit == 0 {
            policy.size
        } else {
            (req.limit as usize).min(policy.size.max(1))
        };
        let r = self
            .store
            .read(&req.stream, &policy, &req.epoch, req.since, limit)
            .await?;
        Ok(HistoryReply {
            enabled: true,
            epoch: r.epoch,
            top: r.top,
            entries: r
                .entries
                .into_iter()
                .map(|(offset, frame)| HistoryEntry { offset, frame })
                .collect(),
            complete: r.complete,
        })
    }
}

/// A history read failure as the comet sees it (the store is shared by every
/// logic).
pub(crate) fn read_error(e: StoreError) -> herald_rpc::RpcError {
    herald_rpc::RpcError::engine_unavailable(format!("{} history", e.engine()), e.to_string())
}

/// Reads history for a comet; `enabled: false` without a history.
pub(crate) async fn answer(history: Option<&History>, req: HistoryReq) -> RpcResult<HistoryReply> {
    match history {
        None => Ok(HistoryReply::default()),
        Some(h) => h.read(&req).await.map_err(read_error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(size: usize) -> StreamHistory {
        StreamHistory {
            size,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn policies_by_stream() {
        let mut cfg = HistoryConfig::default();
        assert!(!cfg.enabled());
        cfg.rooms.insert("chat".into(), h(200));
        cfg.mids = Some(h(50));
        assert!(cfg.enabled());
        assert_eq!(cfg.policy("chat://7").map(|p| p.size), Some(200));
        assert_eq!(cfg.policy("live://7"), None);
        assert_eq!(cfg.policy("mid:3").map(|p| p.size), Some(50));
        assert_eq!(cfg.policy("key:k"), None);
        cfg.rooms.insert("*".into(), h(0));
        assert_eq!(cfg.policy("live://7").map(|p| p.size), Some(0));
        assert_eq!(cfg.policy("noscheme").map(|p| p.size), Some(0));
        cfg.validate().unwrap();
    }

    #[test]
    fn invalid_settings_are_named() {
        let mut cfg = HistoryConfig::default();
        cfg.rooms.insert("chat".into(), h(MAX_HISTORY_SIZE + 1));
        assert!(cfg
            .validate()
            .unwrap_err()
            .contains("history.rooms.chat.size"));
        let cfg = HistoryConfig {
            mids: Some(StreamHistory {
                size: 1,
                ttl: Duration::from_secs(48 * 3600),
            }),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("meta_ttl"));
        let mut cfg = HistoryConfig::default();
        cfg.rooms.insert("chat://".into(), h(1));
        assert!(cfg.validate().is_err());
    }
}
