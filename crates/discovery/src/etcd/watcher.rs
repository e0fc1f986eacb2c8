//! Following a key prefix: the instances under it, read once and then kept
//! current from etcd's watch stream, read again after a break.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use super::client::EtcdClient;
use super::wire::{self, EventType, KeyValue, WatchCreateRequest};
use super::{backoff, EtcdError, MIN_BACKOFF};
use crate::{Instance, Instances};

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

/// Reads every instance under `prefix`, then follows it in a task that ends when
/// every receiver is dropped.
pub(super) async fn start(
    client: Arc<EtcdClient>,
    prefix: String,
) -> Result<watch::Receiver<Instances>, crate::RegistryError> {
    let mut view = View::default();
    view.load(&client, &prefix)
        .await
        .map_err(super::unavailable)?;
    let (tx, rx) = watch::channel(Arc::new(view.list()));
    tokio::spawn(follow(client, prefix, view, tx));
    Ok(rx)
}
