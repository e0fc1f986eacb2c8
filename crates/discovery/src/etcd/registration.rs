//! One registration: its keeper task (lease, keep-alive, re-registration after a
//! loss, metadata updates, claims) and the handle the caller holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use super::client::{self, EtcdClient, EtcdError};
use super::wire::{self, LeaseKeepAliveRequest};
use super::{backoff, now_nanos, unavailable, ENGINE, MIN_BACKOFF};
use crate::{Instance, Registration, RegistryError, RegistryErrorKind, CLAIM_OWNER};

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
pub(super) struct EtcdRegistration {
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
    Err(RegistryError::new(
        RegistryErrorKind::Unavailable,
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
                            let _ = reply.send(Err(RegistryError::new(RegistryErrorKind::Unavailable,
                                ENGINE,
                                "the registration is being renewed; the metadata will be written with it",
                            )));
                        }
                        Some(Cmd::Claim(_, reply)) => {
                            let _ = reply.send(Err(RegistryError::new(RegistryErrorKind::Unavailable,
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

/// Registers `instance` under `key` on a new lease and starts its keeper.
pub(super) async fn start(
    client: Arc<EtcdClient>,
    key: String,
    claims_root: String,
    env: String,
    instance: Instance,
    ttl: i64,
) -> Result<EtcdRegistration, RegistryError> {
    let (losses, lost) = watch::channel(0);
    let keeper = Keeper {
        client,
        key,
        claims_root,
        env,
        instance,
        ttl,
        losses,
    };
    let live = keeper.establish().await.map_err(unavailable)?;
    info!(key = %keeper.key, lease = live.lease, ttl = live.ttl, "registered in etcd");
    let (cmds, rx) = mpsc::channel(8);
    let task = tokio::spawn(keeper.run(live, rx));
    Ok(EtcdRegistration {
        cmds,
        task: task.abort_handle(),
        lost,
    })
}
