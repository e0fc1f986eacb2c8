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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use crate::{Instance, Instances, Registration, Registry, RegistryError, CLAIM_OWNER};

pub mod auth;
pub mod client;
pub mod wire;

pub use auth::{Security, User};
pub use client::{EtcdClient, EtcdError};

use wire::{EventType, KeyValue, LeaseKeepAliveRequest, WatchCreateRequest};

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
        let invalid = |what: &str| RegistryError::invalid(ENGINE, what);
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
    RegistryError::unavailable(ENGINE, "").caused_by(e)
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
                RegistryError::invalid(ENGINE, "connect").caused_by(e)
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
        let (losses, lost) = watch::channel(0);
        let keeper = Keeper {
            client: self.client.clone(),
            key: self.key_of(&instance),
            claims_root: self.prefix().to_string(),
            env: self.cfg.env.clone(),
            instance,
            ttl: self.ttl_secs(),
            losses,
        };
        let live = keeper.establish().await.map_err(unavailable)?;
        info!(key = %keeper.key, lease = live.lease, ttl = live.ttl, "registered in etcd");
        let (cmds, rx) = mpsc::channel(8);
        let task = tokio::spawn(keeper.run(live, rx));
        Ok(Box::new(EtcdRegistration {
            cmds,
            task: task.abort_handle(),
            lost,
        }))
    }

    async fn watch(&self, appid: &str) -> Result<watch::Receiver<Instances>, RegistryError> {
        let prefix = self.watch_prefix(appid);
        let mut view = View::default();
        view.load(&self.client, &prefix)
            .await
            .map_err(unavailable)?;
        let (tx, rx) = watch::channel(Arc::new(view.list()));
        tokio::spawn(follow(self.client.clone(), prefix, view, tx));
        Ok(rx)
    }
}

/// A command from a [`Registration`] handle to its keeper task.
enum Cmd {
    Update(
        BTreeMap<String, String>,
        oneshot::Sender<Result<(), RegistryError>>,
    ),
    Deregister(oneshot::Sender<Result<(), RegistryError>>),
    Claim(String, oneshot::Sender<Result<bool, RegistryError>>),
    Release(String, oneshot::Sender<Result<(), RegistryError>>),
}

/// Handle on a keeper task.
struct EtcdRegistration {
    cmds: mpsc::Sender<Cmd>,
    task: AbortHandle,
    lost: watch::Receiver<u64>,
}

impl EtcdRegistration {
    /// Sends `cmd` to the keeper; `gone` is the answer once it has stopped
    /// (deregistered).
    async fn ask<T>(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<T, RegistryError>>) -> Cmd,
        gone: impl FnOnce() -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(cmd(tx)).await.is_err() {
            return gone();
        }
        rx.await.unwrap_or_else(|_| gone())
    }
}

fn deregistered<T>() -> Result<T, RegistryError> {
    Err(RegistryError::unavailable(
        ENGINE,
        "the registration was withdrawn",
    ))
}

#[async_trait]
impl Registration for EtcdRegistration {
    /// Rewrites the key with `metadata` (on the same lease) if it changed. While
    /// the registration is being made again after a lease loss, the call fails but
    /// the metadata is kept and written by the re-registration.
    async fn update(&self, metadata: BTreeMap<String, String>) -> Result<(), RegistryError> {
        // Already deregistered: nothing left to change.
        self.ask(|tx| Cmd::Update(metadata, tx), || Ok(())).await
    }

    /// Revokes the lease (the key and every claim disappear at once) and stops the
    /// keep-alive.
    async fn deregister(&self) -> Result<(), RegistryError> {
        self.ask(Cmd::Deregister, || Ok(())).await
    }

    async fn claim(&self, scope: &str, name: &str) -> Result<bool, RegistryError> {
        let key = claim_key(scope, name);
        self.ask(|tx| Cmd::Claim(key, tx), deregistered).await
    }

    async fn release(&self, scope: &str, name: &str) -> Result<(), RegistryError> {
        let key = claim_key(scope, name);
        // Deregistered: the lease, and the claim with it, is gone.
        self.ask(|tx| Cmd::Release(key, tx), || Ok(())).await
    }

    fn lease_losses(&self) -> watch::Receiver<u64> {
        self.lost.clone()
    }
}

/// `scope/name`, resolved to a key by the keeper (which knows the prefix and env).
fn claim_key(scope: &str, name: &str) -> String {
    format!("{scope}\u{0}{name}")
}

impl Drop for EtcdRegistration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A lease kept alive on a stream.
struct Live {
    lease: i64,
    ttl: i64,
    tx: client::StreamSender<LeaseKeepAliveRequest>,
    stream: tonic::Streaming<wire::LeaseKeepAliveResponse>,
    endpoint: usize,
}

/// How a live lease ended.
enum End {
    /// The lease is gone or cannot be kept: register again.
    Lost(String),
    /// Deregistered, or the handle was dropped: stop.
    Stop,
}

/// Owns one registration: its instance, lease and keep-alive stream.
struct Keeper {
    client: Arc<EtcdClient>,
    key: String,
    /// `<prefix>` and env of claim keys: `<prefix>/<scope>/<env>/<name>`.
    claims_root: String,
    env: String,
    instance: Instance,
    ttl: i64,
    /// Counts lease losses for [`Registration::lease_losses`].
    losses: watch::Sender<u64>,
}

impl Keeper {
    /// The key and value of the claim `scope\0name`.
    fn claim_entry(&self, scoped: &str) -> (String, Vec<u8>) {
        let (scope, name) = scoped.split_once('\u{0}').unwrap_or(("", scoped));
        let key = format!("{}/{}/{}/{}", self.claims_root, scope, self.env, name);
        let claim = Instance {
            appid: scope.to_string(),
            env: self.env.clone(),
            hostname: name.to_string(),
            latest_timestamp: now_nanos(),
            metadata: [(CLAIM_OWNER.to_string(), self.instance.hostname.clone())].into(),
            ..Default::default()
        };
        (key, serde_json::to_vec(&claim).unwrap_or_default())
    }

    /// Claims under `lease`: written now, or already this registration's.
    async fn claim(&self, scoped: &str, lease: i64) -> Result<bool, RegistryError> {
        let (key, value) = self.claim_entry(scoped);
        match self
            .client
            .create_if_absent(key.as_bytes(), &value, lease)
            .await
            .map_err(unavailable)?
        {
            None => {
                debug!(%key, lease, "claimed");
                Ok(true)
            }
            // A retried call whose first attempt had written it is ours too.
            Some(existing) => Ok(existing.lease == lease),
        }
    }

    async fn release(&self, scoped: &str, lease: i64) -> Result<(), RegistryError> {
        let (key, _) = self.claim_entry(scoped);
        let deleted = self
            .client
            .delete_if_lease(key.as_bytes(), lease)
            .await
            .map_err(unavailable)?;
        debug!(%key, lease, deleted, "claim released");
        Ok(())
    }

    fn value(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and maps cannot fail.
        serde_json::to_vec(&self.instance).unwrap_or_default()
    }

    /// Grants a lease, puts the key on it and opens the keep-alive stream.
    async fn establish(&self) -> Result<Live, EtcdError> {
        let (lease, ttl) = self.client.lease_grant(self.ttl).await?;
        if let Err(e) = self
            .client
            .put(self.key.as_bytes(), &self.value(), lease)
            .await
        {
            let _ = self.client.lease_revoke(lease).await;
            return Err(e);
        }
        let (tx, stream, endpoint) = match self.client.lease_keep_alive(lease).await {
            Ok(s) => s,
            Err(e) => {
                // Revoking removes the key we just put: better no key than one no
                // one keeps alive (the next attempt puts it again).
                let _ = self.client.lease_revoke(lease).await;
                return Err(e);
            }
        };
        Ok(Live {
            lease,
            ttl: ttl.max(1),
            tx,
            stream,
            endpoint,
        })
    }

    /// Keeps the registration until it is deregistered or its handle dropped.
    async fn run(mut self, first: Live, mut cmds: mpsc::Receiver<Cmd>) {
        let mut live = Some(first);
        let mut delay = MIN_BACKOFF;
        loop {
            if let Some(l) = live.take() {
                let lease = l.lease;
                match self.keep(l, &mut cmds).await {
                    End::Stop => return,
                    End::Lost(why) => {
                        self.losses.send_modify(|n| *n += 1);
                        warn!(key = %self.key, lease, reason = %why, "etcd lease lost (with every claim on it); registering again");
                    }
                }
            }
            // Not registered: wait, answering commands, then try again.
            let wait = tokio::time::sleep(backoff(&mut delay));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    cmd = cmds.recv() => match cmd {
                        None => return,
                        Some(Cmd::Deregister(reply)) => {
                            let _ = reply.send(Ok(()));
                            return;
                        }
                        Some(Cmd::Update(metadata, reply)) => {
                            self.set_metadata(metadata);
                            let _ = reply.send(Err(RegistryError::unavailable(
                                ENGINE,
                                "the registration is being renewed; the metadata will be written with it",
                            )));
                        }
                        Some(Cmd::Claim(_, reply)) => {
                            let _ = reply.send(Err(RegistryError::unavailable(
                                ENGINE,
                                "the registration is being renewed; claim again once it is",
                            )));
                        }
                        // The lost lease took the claim with it.
                        Some(Cmd::Release(_, reply)) => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            match self.establish().await {
                Ok(l) => {
                    info!(key = %self.key, lease = l.lease, "registered in etcd again");
                    delay = MIN_BACKOFF;
                    live = Some(l);
                }
                Err(e) => warn!(key = %self.key, error = %e, "etcd registration failed; retrying"),
            }
        }
    }

    /// Whether `metadata` differs; if so it is stored with a new timestamp.
    fn set_metadata(&mut self, metadata: BTreeMap<String, String>) -> bool {
        if self.instance.metadata == metadata {
            return false;
        }
        self.instance.metadata = metadata;
        self.instance.latest_timestamp = now_nanos();
        true
    }

    /// Refreshes `live` every third of its TTL and serves commands until the lease
    /// is lost or the registration ends.
    async fn keep(&mut self, mut live: Live, cmds: &mut mpsc::Receiver<Cmd>) -> End {
        let period = Duration::from_millis((live.ttl as u64 * 1000 / 3).max(100));
        // Declared lost after half the TTL without an answer: etcd keeps the lease
        // for the whole TTL after the last refresh it answered, so the holder of
        // claims on it stops acting on them before anyone else can take them.
        let ttl = Duration::from_millis(live.ttl as u64 * 1000 / 2);
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The stream was opened with one refresh already sent.
        let mut last_answer = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if last_answer.elapsed() > ttl {
                        return End::Lost(format!("no keep-alive answer for {ttl:?}"));
                    }
                    if live.tx.try_send(LeaseKeepAliveRequest { id: live.lease }).is_err() {
                        return End::Lost("keep-alive stream closed".into());
                    }
                }
                msg = live.stream.message() => match msg {
                    Ok(Some(resp)) if resp.ttl <= 0 => {
                        return End::Lost("lease expired or revoked".into());
                    }
                    Ok(Some(resp)) => {
                        trace!(key = %self.key, lease = live.lease, ttl = resp.ttl, "lease refreshed");
                        last_answer = Instant::now();
                    }
                    Ok(None) => return End::Lost("keep-alive stream ended".into()),
                    Err(status) => {
                        self.client.stream_failed(live.endpoint, &status);
                        return End::Lost(format!(
                            "keep-alive stream to {} broke: {}",
                            self.client.endpoint(live.endpoint),
                            status.message()
                        ));
                    }
                },
                cmd = cmds.recv() => match cmd {
                    // Handle dropped: stop refreshing; the lease expires.
                    None => return End::Stop,
                    Some(Cmd::Deregister(reply)) => {
                        let result = self.client.lease_revoke(live.lease).await;
                        match &result {
                            Ok(()) => info!(key = %self.key, "deregistered from etcd"),
                            Err(e) => warn!(key = %self.key, error = %e, "etcd lease revoke failed; the key expires with the lease"),
                        }
                        let _ = reply.send(result.map_err(unavailable));
                        return End::Stop;
                    }
                    Some(Cmd::Claim(scoped, reply)) => {
                        let _ = reply.send(self.claim(&scoped, live.lease).await);
                    }
                    Some(Cmd::Release(scoped, reply)) => {
                        let _ = reply.send(self.release(&scoped, live.lease).await);
                    }
                    Some(Cmd::Update(metadata, reply)) => {
                        if !self.set_metadata(metadata) {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        let result = self.client.put(self.key.as_bytes(), &self.value(), live.lease).await;
                        let lost = result.as_ref().is_err_and(|e| e.code() == tonic::Code::NotFound);
                        let _ = reply.send(result.map_err(unavailable));
                        if lost {
                            // "requested lease not found": register again now.
                            return End::Lost("lease not found on update".into());
                        }
                    }
                }
            }
        }
    }
}

/// The instances under one watched prefix, by key.
#[derive(Default)]
struct View {
    instances: BTreeMap<Vec<u8>, Instance>,
    /// Revision the view is current at.
    revision: i64,
}

impl View {
    /// Replaces the view with every key under `prefix`.
    async fn load(&mut self, client: &EtcdClient, prefix: &str) -> Result<(), EtcdError> {
        let resp = client.range_prefix(prefix.as_bytes()).await?;
        self.revision = resp.header.map_or(0, |h| h.revision);
        self.instances.clear();
        for kv in resp.kvs {
            self.put(kv);
        }
        Ok(())
    }

    fn put(&mut self, kv: KeyValue) {
        match serde_json::from_slice::<Instance>(&kv.value) {
            Ok(instance) => {
                self.instances.insert(kv.key, instance);
            }
            Err(e) => {
                warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "skipping etcd registry value that is not an instance");
                self.instances.remove(&kv.key);
            }
        }
    }

    fn list(&self) -> Vec<Instance> {
        self.instances.values().cloned().collect()
    }

    /// Publishes the list if it changed.
    fn publish(&self, tx: &watch::Sender<Instances>) {
        let list = self.list();
        tx.send_if_modified(|cur| {
            if **cur == list {
                return false;
            }
            *cur = Arc::new(list);
            true
        });
    }
}

/// Follows `prefix` until every receiver of `tx` is dropped: watch from the
/// view's revision, and after a break read the prefix again and watch anew.
async fn follow(
    client: Arc<EtcdClient>,
    prefix: String,
    mut view: View,
    tx: watch::Sender<Instances>,
) {
    let mut delay = MIN_BACKOFF;
    loop {
        let why = tokio::select! {
            _ = tx.closed() => return,
            why = watch_from(&client, &prefix, &mut view, &tx, &mut delay) => why,
        };
        warn!(prefix = %prefix, reason = %why, "etcd watch interrupted; reading again");
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(backoff(&mut delay)) => {}
            }
            match view.load(&client, &prefix).await {
                Ok(()) => {
                    view.publish(&tx);
                    break;
                }
                Err(e) => warn!(prefix = %prefix, error = %e, "etcd read failed; retrying"),
            }
        }
    }
}

/// Watches `prefix` from after the view's revision, applying and publishing
/// changes; returns why the watch ended.
async fn watch_from(
    client: &EtcdClient,
    prefix: &str,
    view: &mut View,
    tx: &watch::Sender<Instances>,
    delay: &mut Duration,
) -> String {
    let create = WatchCreateRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: wire::prefix_end(prefix.as_bytes()),
        start_revision: view.revision + 1,
        progress_notify: true,
        ..Default::default()
    };
    let (_requests, mut stream, endpoint) = match client.watch(create).await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return "watch stream ended".into(),
            Err(status) => {
                client.stream_failed(endpoint, &status);
                return format!(
                    "watch stream to {} broke: {}",
                    client.endpoint(endpoint),
                    status.message()
                );
            }
        };
        if resp.canceled {
            return if resp.compact_revision > 0 {
                format!("history compacted up to revision {}", resp.compact_revision)
            } else {
                format!("watch canceled: {}", resp.cancel_reason)
            };
        }
        if resp.created {
            debug!(prefix = %prefix, from = view.revision + 1, "etcd watch started");
            *delay = MIN_BACKOFF;
        }
        for event in resp.events {
            let Some(kv) = event.kv else { continue };
            view.revision = view.revision.max(kv.mod_revision);
            if event.r#type == EventType::Delete as i32 {
                view.instances.remove(&kv.key);
            } else {
                view.put(kv);
            }
        }
        if let Some(h) = resp.header {
            view.revision = view.revision.max(h.revision);
        }
        view.publish(tx);
    }
}
