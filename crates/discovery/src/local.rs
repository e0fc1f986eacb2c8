//! The in-process registry: instances registered by this process, watched through
//! tokio watch channels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Instance, Instances, Registration, Registry, RegistryError, CLAIM_OWNER};

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
            claims: Mutex::new(Vec::new()),
            // In one process a registration never loses its lease.
            losses: watch::Sender::new(0),
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
    /// (scope, name) of the claims it holds, given up on deregistration.
    claims: Mutex<Vec<(String, String)>>,
    losses: watch::Sender<u64>,
}

impl LocalRegistration {
    fn claims(&self) -> std::sync::MutexGuard<'_, Vec<(String, String)>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn owns(&self, ins: &Instance) -> bool {
        ins.metadata.get(CLAIM_OWNER) == Some(&self.hostname)
    }
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
        let claims = std::mem::take(&mut *self.claims());
        for (scope, name) in claims {
            self.release(&scope, &name).await?;
        }
        self.registry.with_app(&self.appid, |app| {
            if app.instances.remove(&self.hostname).is_some() {
                app.publish();
            }
        });
        Ok(())
    }

    async fn claim(&self, scope: &str, name: &str) -> Result<bool, RegistryError> {
        let held = self.registry.with_app(scope, |app| {
            if let Some(ins) = app.instances.get(name) {
                return self.owns(ins);
            }
            app.instances.insert(
                name.to_string(),
                Instance {
                    appid: scope.to_string(),
                    hostname: name.to_string(),
                    latest_timestamp: now_nanos(),
                    metadata: [(CLAIM_OWNER.to_string(), self.hostname.clone())].into(),
                    ..Default::default()
                },
            );
            app.publish();
            true
        });
        let mut claims = self.claims();
        let key = (scope.to_string(), name.to_string());
        if held && !claims.contains(&key) {
            claims.push(key);
        }
        Ok(held)
    }

    async fn release(&self, scope: &str, name: &str) -> Result<(), RegistryError> {
        self.registry.with_app(scope, |app| {
            if app.instances.get(name).is_some_and(|ins| self.owns(ins)) {
                app.instances.remove(name);
                app.publish();
            }
        });
        self.claims()
            .retain(|(s, n)| (s.as_str(), n.as_str()) != (scope, name));
        Ok(())
    }

    fn lease_losses(&self) -> watch::Receiver<u64> {
        self.losses.subscribe()
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

    #[tokio::test]
    async fn a_name_has_one_claimant_at_a_time() {
        let r = LocalRegistry::new();
        let job = |h: &str| Instance {
            appid: "herald.job".into(),
            hostname: h.into(),
            ..Default::default()
        };
        let a = r.register(job("a")).await.unwrap();
        let b = r.register(job("b")).await.unwrap();
        let claims = r.watch("herald.job.partition").await.unwrap();
        assert!(a.claim("herald.job.partition", "3").await.unwrap());
        assert!(
            a.claim("herald.job.partition", "3").await.unwrap(),
            "held again"
        );
        assert!(!b.claim("herald.job.partition", "3").await.unwrap());
        let owner = |w: &watch::Receiver<Instances>| {
            w.borrow()
                .iter()
                .find(|i| i.hostname == "3")
                .and_then(|i| i.metadata.get(CLAIM_OWNER).cloned())
        };
        assert_eq!(owner(&claims).as_deref(), Some("a"));
        // Another's release changes nothing; the holder's frees the name.
        b.release("herald.job.partition", "3").await.unwrap();
        assert_eq!(owner(&claims).as_deref(), Some("a"));
        a.release("herald.job.partition", "3").await.unwrap();
        assert_eq!(owner(&claims), None);
        assert!(b.claim("herald.job.partition", "3").await.unwrap());
        // Deregistering gives up every claim.
        b.deregister().await.unwrap();
        assert_eq!(owner(&claims), None);
        assert!(a.claim("herald.job.partition", "3").await.unwrap());
        assert_eq!(*a.lease_losses().borrow(), 0);
    }
}
