//! The registry on etcd v3: instances are keys under a lease, watchers follow a key
//! prefix through etcd's watch stream (push, never poll).
//!
//! # Key layout
//!
//! ```text
//! <prefix>/<appid>/<env>/<hostname>  →  the Instance as JSON (goim's discovery shape)
//! ```
//!
//! e.g. `/herald/goim.comet/prod/10.0.0.5:3109`. The prefix defaults to `/herald`;
//! the hostname is herald's server id (`host:port`), verbatim. An empty env gives
//! an empty path segment (`/herald/goim.comet//10.0.0.5:3109`).
//!
//! # Registration
//!
//! [`Registry::register`] grants a lease of [`EtcdConfig::lease_ttl`], puts the key
//! with it and keeps the lease alive on a keep-alive stream (a refresh every third
//! of the TTL). If the lease is lost — etcd answers a refresh with TTL 0 (expired
//! or revoked), the stream or the connection breaks, or no refresh is answered
//! within half the TTL (so the holder knows before etcd expires the lease) — the
//! registration is made again with backoff: a new lease, the key put again with the
//! latest metadata, and [`Registration::lease_losses`] counts one more loss. [`Registration::update`] rewrites the
//! key on the same lease (only when the metadata changed) and is remembered for
//! re-registration. [`Registration::deregister`] revokes the lease, so the key
//! disappears at once. Dropping the registration stops its keep-alive; the key
//! then disappears when the lease expires, as when the process dies.
//!
//! # Claims
//!
//! [`Registration::claim`] writes `<prefix>/<scope>/<env>/<name>` on the
//! registration's lease in one transaction that succeeds only if the key does not
//! exist; its value is an instance whose `owner` metadata is the holder's hostname.
//! [`Registration::release`] deletes it in a transaction that checks the lease is
//! still the holder's. A claim ends with its lease: revoked on deregistration,
//! expired when the holder dies, and not renewed by a re-registration.
//!
//! # Watching
//!
//! [`Registry::watch`] reads every key under `<prefix>/<appid>/<env>/` (the env of
//! [`EtcdConfig::env`]; every zone), then watches that prefix from the next
//! revision and publishes the full instance list, sorted by hostname, after each
//! change. If the watch breaks (connection lost, history compacted) it reads the
//! prefix again and watches anew, with backoff; receivers stay valid throughout.
//! Values that are not a valid instance are skipped with a warning.
//!
//! # Security
//!
//! Endpoints may be `https://` ([`EtcdConfig::tls`]: a private CA, optionally a
//! client certificate), and with etcd's authentication enabled the registry logs
//! in as [`EtcdConfig::username`] and renews its token whenever etcd refuses it
//! (see [`auth`]). The user needs read and write permission on the key prefix.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Instance, Instances, Registration, Registry, RegistryError, RegistryErrorKind};

pub mod auth;
pub mod client;
mod registration;
mod watcher;
pub mod wire;

pub use auth::{Security, User};
pub use client::{EtcdClient, EtcdError};

/// Settings of the etcd registry.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://10.0.0.1:2379` (`host:port` also accepted); tried
    /// in order, the next one after a failure.
    pub endpoints: Vec<String>,
    /// Key prefix of every registration (default `/herald`).
    pub prefix: String,
    /// Environment watched (default empty): only instances registered with this
    /// env are seen.
    pub env: String,
    /// Lease time to live (default 10 s, whole seconds; etcd may raise very short
    /// ones to its minimum). A registration whose process died disappears after
    /// at most this long.
    pub lease_ttl: Duration,
    /// Time allowed to connect to an endpoint (default 5 s).
    pub dial_timeout: Duration,
    /// Time allowed for one call (default 5 s).
    pub call_timeout: Duration,
    /// User to authenticate as when etcd has authentication enabled (empty =
    /// none).
    pub username: String,
    /// Password of `username`.
    pub password: String,
    /// TLS for `https://` endpoints: the CA of etcd's certificate, an optional
    /// client certificate (`--client-cert-auth`) and the name to verify.
    pub tls: herald_tls::ClientTls,
}

impl Default for EtcdConfig {
    fn default() -> EtcdConfig {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/herald".into(),
            env: String::new(),
            lease_ttl: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            username: String::new(),
            password: String::new(),
            tls: herald_tls::ClientTls::default(),
        }
    }
}

impl EtcdConfig {
    /// TLS and the user of this configuration; files that cannot be used are an
    /// error ([`RegistryError::Invalid`]).
    pub fn security(&self) -> Result<Security, RegistryError> {
        let invalid = |what: &str| RegistryError::new(RegistryErrorKind::Invalid, ENGINE, what);
        let tls = if self.tls.is_enabled() {
            let config = herald_tls::client_config(&self.tls, &[herald_tls::transport::ALPN_H2])
                .map_err(|e| invalid("TLS settings").caused_by(e))?;
            Some(
                herald_tls::transport::TlsConnector::new(config, &self.tls.server_name)
                    .map_err(|e| invalid("TLS server name").caused_by(e))?,
            )
        } else {
            None
        };
        let user = match (self.username.is_empty(), self.password.is_empty()) {
            (true, true) => None,
            (true, false) => return Err(invalid("a password needs a username")),
            (false, _) => Some(User {
                name: self.username.clone(),
                password: self.password.clone(),
            }),
        };
        Ok(Security { tls, user })
    }
}

/// First wait before retrying after a failure; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(3);

/// The next backoff after `current`, and the wait to use now (with jitter, so
/// that many processes losing etcd at once do not retry in step).
fn backoff(current: &mut Duration) -> Duration {
    let wait = *current;
    *current = (*current * 2).min(MAX_BACKOFF);
    let jitter = rand::random_range(0..=wait.as_millis() as u64 / 4);
    wait + Duration::from_millis(jitter)
}

/// The engine name errors carry.
const ENGINE: &str = "etcd";

fn unavailable(e: EtcdError) -> RegistryError {
    RegistryError::new(RegistryErrorKind::Unavailable, ENGINE, "").caused_by(e)
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// Registry on an etcd cluster.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Arc<EtcdClient>,
    cfg: Arc<EtcdConfig>,
}

impl EtcdRegistry {
    /// Connects to the first reachable endpoint and checks that it answers. The
    /// error ([`RegistryError::Unavailable`]) names the endpoints that failed.
    pub async fn connect(cfg: EtcdConfig) -> Result<EtcdRegistry, RegistryError> {
        let security = cfg.security()?;
        let client = EtcdClient::connect_secured(
            &cfg.endpoints,
            cfg.dial_timeout,
            cfg.call_timeout,
            security,
        )
        .await
        .map_err(|e| {
            // A refused password or bad setting will not get better by retrying.
            if e.code() == tonic::Code::InvalidArgument {
                RegistryError::new(RegistryErrorKind::Invalid, ENGINE, "connect").caused_by(e)
            } else {
                unavailable(e)
            }
        })?;
        let prefix = format!("{}/", cfg.prefix.trim_end_matches('/'));
        client
            .count_prefix(prefix.as_bytes())
            .await
            .map_err(unavailable)?;
        Ok(EtcdRegistry {
            client: Arc::new(client),
            cfg: Arc::new(cfg),
        })
    }

    /// The client underneath (for tools and tests).
    pub fn client(&self) -> &Arc<EtcdClient> {
        &self.client
    }

    fn prefix(&self) -> &str {
        self.cfg.prefix.trim_end_matches('/')
    }

    /// The key of `instance`: `<prefix>/<appid>/<env>/<hostname>`, with the env
    /// of this registry ([`EtcdConfig::env`]), the one [`Registry::watch`] reads.
    pub fn key_of(&self, instance: &Instance) -> String {
        format!(
            "{}/{}/{}/{}",
            self.prefix(),
            instance.appid,
            self.cfg.env,
            instance.hostname
        )
    }

    /// The prefix watched for `appid`: `<prefix>/<appid>/<env>/`.
    pub fn watch_prefix(&self, appid: &str) -> String {
        format!("{}/{}/{}/", self.prefix(), appid, self.cfg.env)
    }

    fn ttl_secs(&self) -> i64 {
        (self.cfg.lease_ttl.as_secs() as i64).max(1)
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn ping(&self) -> Result<(), RegistryError> {
        let prefix = format!("{}/", self.prefix());
        self.client
            .count_prefix(prefix.as_bytes())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn register(
        &self,
        mut instance: Instance,
    ) -> Result<Box<dyn Registration>, RegistryError> {
        instance.latest_timestamp = now_nanos();
        if instance.env.is_empty() {
            instance.env = self.cfg.env.clone();
        }
        let key = self.key_of(&instance);
        let registration = registration::start(
            self.client.clone(),
            key,
            self.prefix().to_string(),
            self.cfg.env.clone(),
            instance,
            self.ttl_secs(),
        )
        .await?;
        Ok(Box::new(registration))
    }

    async fn watch(&self, appid: &str) -> Result<watch::Receiver<Instances>, RegistryError> {
        let prefix = self.watch_prefix(appid);
        watcher::start(self.client.clone(), prefix).await
    }
}
