//! The `[chat]` settings, and opening the chat they describe.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::blobs::{BlobStore, DirBlobs};
use crate::service::{Chat, Limits, Publisher};
use crate::{auth, SqlStore};

/// `[chat]`: the customer-service chat served on the HTTP API port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Serve the chat (`herald standalone` does by default; a cluster's logic
    /// processes serve it once `database` names a PostgreSQL database).
    pub enabled: bool,
    /// The database: empty for the SQLite file `chat.db` in `data_dir`, or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (shared by a cluster's logics).
    pub database: String,
    /// Where standalone keeps the SQLite file and the generated secret.
    pub data_dir: PathBuf,
    /// The HS256 secret of session tokens (at least 32 bytes). Empty: read from
    /// `data_dir/chat-secret`, made there on first start. A cluster's logics
    /// must share one, so there it must be set.
    pub secret: String,
    /// How long a session token lasts.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Database connections per process.
    pub max_connections: u32,
    /// Longest message body, bytes.
    pub max_message: usize,
    /// Largest image upload, bytes.
    pub max_upload: usize,
    /// Visitors not seen for this long are removed with their conversations,
    /// and direct conversations idle this long too, checked every
    /// `purge_interval`. `0s`: kept forever.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the retention purge runs.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            enabled: true,
            database: String::new(),
            data_dir: PathBuf::from("herald-data"),
            secret: String::new(),
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            max_connections: 8,
            max_message: 4000,
            max_upload: 5 * 1024 * 1024,
            retention: Duration::from_secs(30 * 24 * 3600),
            purge_interval: Duration::from_secs(3600),
        }
    }
}

/// Why the chat could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot open the chat database: {0}")]
    Store(#[from] crate::StoreError),
    #[error("cannot read or make the chat secret {path}: {source}")]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ChatConfig {
    /// Whether the database is shared (PostgreSQL) rather than a local file.
    pub fn shared(&self) -> bool {
        self.database.starts_with("postgres:") || self.database.starts_with("postgresql:")
    }

    /// Opens the store and the secret and builds the chat, pushing through
    /// `publisher`. `cluster`: the process is one of several logics, which need
    /// a shared database and a configured secret.
    pub async fn start(
        &self,
        publisher: Arc<dyn Publisher>,
        cluster: bool,
    ) -> Result<Chat, StartError> {
        if cluster && !self.shared() {
            return Err(StartError::Config(
                "the chat of a cluster needs a shared database: set chat.database to a \
                 postgres:// URL, or chat.enabled = false"
                    .into(),
            ));
        }
        if cluster && self.secret.is_empty() {
            return Err(StartError::Config(
                "the chat of a cluster needs one session secret on every logic: set \
                 chat.secret (at least 32 bytes)"
                    .into(),
            ));
        }
        let secret = if self.secret.is_empty() {
            let path = self.data_dir.join("chat-secret");
            auth::load_or_create_secret(&path)
                .map_err(|source| StartError::Secret { path, source })?
        } else {
            self.secret.as_bytes().to_vec()
        };
        if secret.len() < auth::MIN_SECRET {
            return Err(StartError::Config(format!(
                "chat.secret must be at least {} bytes",
                auth::MIN_SECRET
            )));
        }
        let (store, blobs): (SqlStore, Arc<dyn BlobStore>) = if self.database.is_empty() {
            let uploads = self.data_dir.join("uploads");
            let blobs = DirBlobs::new(uploads.clone()).map_err(|e| {
                StartError::Config(format!(
                    "cannot make the chat's upload directory {}: {e}",
                    uploads.display()
                ))
            })?;
            let store =
                SqlStore::sqlite(&self.data_dir.join("chat.db"), self.max_connections).await?;
            (store, Arc::new(blobs))
        } else {
            // A cluster keeps the bytes in the database too: no shared disk.
            let store = SqlStore::open(&self.database, self.max_connections).await?;
            (store.clone(), Arc::new(store))
        };
        let limits = Limits {
            token_ttl: self.token_ttl,
            max_message: self.max_message,
            max_upload: self.max_upload,
            ..Limits::default()
        };
        Chat::new(Arc::new(store), blobs, &secret, publisher, limits)
            .map_err(|e| StartError::Config(e.to_string()))
    }
}
