//! The in-process registry: instances registered by this process, watched through
//! tokio watch channels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Instance, Instances, Registration, Registry, RegistryError};

/// Registry for one process.
#[derive(Clone, Default)]
pub struct LocalRegistry {
    apps: Arc<Mutex<HashMap<String, App>>>,
}

struct App {
    /// hostname → instance.
    instances: BTreeMap<String, Instance>,
    /// Publishes the instance list to watchers.
    tx: watch::Sender<Instances>,
}

impl App {
    fn new() -> App {
        App {
            instances: BTreeMap::new(),
            tx: watch::Sender::new(Arc::new(Vec::new())),
        }
    }

    fn publish(&self) {
        let list: Vec<Instance> = self.instances.values().cloned().collect();
        self.tx.send_replace(Arc::new(list));
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

impl LocalRegistry {
    /// An empty registry.
    pub fn new() -> LocalRegistry {
        LocalRegistry::default()
    }

    fn with_app<R>(&self, appid: &str, f: impl FnOnce(&mut App) -> R) -> R {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        f(apps.entry(appid.to_string()).or_insert_with(App::new))
    }
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn register(
        &self,
        mut instance: Instance,
    ) -> Result<Box<dyn Registration>, RegistryError> {
        instance.latest_timestamp = now_nanos();
        let appid = instance.appid.clone();
        let hostname = instance.hostname.clone();
        self.with_app(&appid, |app| {
            app.instances.insert(hostname.clone(), instance);
            app.publish();
        });
        Ok(Box::new(LocalRegistration {
            registry: self.clone(),
            appid,
            hostname,
        }))
    }

    async fn watch(&self, appid: &str) -> Result<watch::Receiver<Instances>, RegistryError> {
        Ok(self.with_app(appid, |app| app.tx.subscribe()))
    }
}

struct LocalRegistration {
    registry: LocalRegistry,
    appid: String,
    hostname: String,
}

#[async_trait]
impl Registration for LocalRegistration {
    async fn update(&self, metadata: BTreeMap<String, String>) -> Result<(), RegistryError> {
        self.registry.with_app(&self.appid, |app| {
            if let Some(ins) = app.instances.get_mut(&self.hostname) {
                if ins.metadata != metadata {
                    ins.metadata = metadata;
                    ins.latest_timestamp = now_nanos();
                    app.publish();
                }
            }
        });
        Ok(())
    }

    async fn deregister(&self) -> Result<(), RegistryError> {
        self.registry.with_app(&self.appid, |app| {
            if app.instances.remove(&self.hostname).is_some() {
                app.publish();
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn register_watch_update_deregister() {
        let r = LocalRegistry::new();
        let mut w = r.watch("goim.comet").await.unwrap();
        assert!(w.borrow().is_empty());
        let reg = r
            .register(Instance {
                appid: "goim.comet".into(),
                hostname: "c1:3109".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        w.changed().await.unwrap();
        assert_eq!(w.borrow_and_update()[0].hostname, "c1:3109");
        reg.update([("conn_count".to_string(), "5".to_string())].into())
            .await
            .unwrap();
        w.changed().await.unwrap();
        assert_eq!(w.borrow_and_update()[0].meta_i64("conn_count"), Some(5));
        reg.deregister().await.unwrap();
        w.changed().await.unwrap();
        assert!(w.borrow().is_empty());
    }
}
