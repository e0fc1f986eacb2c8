//! In-memory route table and online counts for `herald standalone`.
//!
//! Routes expire like their Redis counterparts: every write or refresh extends a
//! route by the configured TTL; expired entries are invisible and are removed by
//! [`MemoryStore::sweep`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
// tokio's clock (std's unless a test pauses it), so route expiry can be tested.
use tokio::time::Instant;

use crate::{OnlineStore, ServerOnline, SessionStore, StoreResult};

/// Routes and online counts in process memory.
pub struct MemoryStore {
    ttl: Duration,
    state: Mutex<State>,
}

/// Where a key is held, until when.
#[derive(Clone)]
struct Route {
    server: Arc<str>,
    /// The member the key belongs to (0 = anonymous).
    mid: i64,
    expires: Instant,
}

/// Kept compact because it holds one entry per connection: keys are shared between
/// the two indexes and server ids are interned.
#[derive(Default)]
struct State {
    /// Interned server ids (a handful of comets, millions of routes).
    servers: HashSet<Arc<str>>,
    /// key → route.
    keys: HashMap<Arc<str>, Route>,
    /// mid → its keys and their routes (usually one or two).
    mids: HashMap<i64, Vec<(Arc<str>, Route)>>,
    /// server → last report.
    online: HashMap<String, ServerOnline>,
}

impl State {
    fn intern(&mut self, server: &str) -> Arc<str> {
        if let Some(s) = self.servers.get(server) {
            return s.clone();
        }
        let s: Arc<str> = Arc::from(server);
        self.servers.insert(s.clone());
        s
    }
}

impl MemoryStore {
    /// A store whose routes live `ttl` after their last write or refresh.
    pub fn new(ttl: Duration) -> MemoryStore {
        MemoryStore {
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves only plain maps behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops expired routes. Returns how many keys were removed.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut st = self.state();
        let before = st.keys.len();
        st.keys.retain(|_, r| r.expires > now);
        st.mids.retain(|_, keys| {
            keys.retain(|(_, r)| r.expires > now);
            !keys.is_empty()
        });
        before - st.keys.len()
    }

    /// Number of live routes (keys).
    pub fn route_count(&self) -> usize {
        let now = Instant::now();
        self.state()
            .keys
            .values()
            .filter(|r| r.expires > now)
            .count()
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn add_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<()> {
        let expires = Instant::now() + self.ttl;
        let mut st = self.state();
        let server = st.intern(server);
        let route = Route {
            server,
            mid,
            expires,
        };
        let (key, previous_mid): (Arc<str>, i64) = match st.keys.get_key_value(key) {
            Some((k, r)) => (k.clone(), r.mid),
            None => (Arc::from(key), 0),
        };
        if previous_mid > 0 && previous_mid != mid {
            // The key now belongs to another member: the old member must not reach it.
            if let Some(list) = st.mids.get_mut(&previous_mid) {
                list.retain(|(k, _)| *k != key);
                if list.is_empty() {
                    st.mids.remove(&previous_mid);
                }
            }
        }
        st.keys.insert(key.clone(), route.clone());
        if mid > 0 {
            let list = st.mids.entry(mid).or_default();
            match list.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = route,
                None => list.push((key, route)),
            }
        }
        Ok(())
    }

    async fn refresh_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<bool> {
        let now = Instant::now();
        let expires = now + self.ttl;
        let mut st = self.state();
        let live = match st.keys.get_mut(key) {
            Some(r) if r.expires > now && &*r.server == server => {
                r.expires = expires;
                true
            }
            _ => false,
        };
        if live && mid > 0 {
            if let Some(entry) = st
                .mids
                .get_mut(&mid)
                .and_then(|l| l.iter_mut().find(|(k, _)| &**k == key))
            {
                entry.1.expires = expires;
            }
        }
        Ok(live)
    }

    async fn remove_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<bool> {
        let mut st = self.state();
        let removed = match st.keys.get(key) {
            Some(r) if &*r.server == server => {
                st.keys.remove(key);
                true
            }
            _ => false,
        };
        if mid > 0 {
            if let Some(list) = st.mids.get_mut(&mid) {
                list.retain(|(k, r)| !(&**k == key && &*r.server == server));
                if list.is_empty() {
                    st.mids.remove(&mid);
                }
            }
        }
        Ok(removed)
    }

    async fn servers_by_keys(&self, keys: &[String]) -> StoreResult<Vec<Option<String>>> {
        let now = Instant::now();
        let st = self.state();
        Ok(keys
            .iter()
            .map(|k| match st.keys.get(k.as_str()) {
                Some(r) if r.expires > now => Some(r.server.to_string()),
                _ => None,
            })
            .collect())
    }

    async fn keys_by_mids(&self, mids: &[i64]) -> StoreResult<Vec<(String, String)>> {
        let now = Instant::now();
        let st = self.state();
        let mut out = Vec::new();
        for mid in mids {
            if let Some(list) = st.mids.get(mid) {
                for (k, r) in list {
                    if r.expires > now {
                        out.push((k.to_string(), r.server.to_string()));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl OnlineStore for MemoryStore {
    async fn put_server_online(&self, online: &ServerOnline) -> StoreResult<()> {
        self.state()
            .online
            .insert(online.server.clone(), online.clone());
        Ok(())
    }

    async fn server_online(&self, server: &str) -> StoreResult<Option<ServerOnline>> {
        Ok(self.state().online.get(server).cloned())
    }

    async fn remove_server_online(&self, server: &str) -> StoreResult<()> {
        self.state().online.remove(server);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_by_key_and_mid() {
        let s = MemoryStore::new(Duration::from_secs(60));
        s.add_route(7, "a", "c1").await.unwrap();
        s.add_route(7, "b", "c2").await.unwrap();
        s.add_route(0, "anon", "c1").await.unwrap();
        let got = s
            .servers_by_keys(&["a".into(), "x".into(), "anon".into()])
            .await
            .unwrap();
        assert_eq!(got, vec![Some("c1".into()), None, Some("c1".into())]);
        let mut by_mid = s.keys_by_mids(&[7, 8]).await.unwrap();
        by_mid.sort();
        assert_eq!(
            by_mid,
            vec![("a".into(), "c1".into()), ("b".into(), "c2".into())]
        );
        assert!(s.keys_by_mids(&[0]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn remove_only_own_route() {
        let s = MemoryStore::new(Duration::from_secs(60));
        s.add_route(1, "k", "old").await.unwrap();
        s.add_route(1, "k", "new").await.unwrap();
        assert!(!s.remove_route(1, "k", "old").await.unwrap());
        assert_eq!(
            s.servers_by_keys(&["k".into()]).await.unwrap(),
            vec![Some("new".into())]
        );
        assert_eq!(s.keys_by_mids(&[1]).await.unwrap().len(), 1);
        assert!(s.remove_route(1, "k", "new").await.unwrap());
        assert_eq!(s.servers_by_keys(&["k".into()]).await.unwrap(), vec![None]);
        assert!(s.keys_by_mids(&[1]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn routes_expire_and_refresh() {
        let s = MemoryStore::new(Duration::from_millis(30));
        s.add_route(1, "k", "c").await.unwrap();
        assert!(s.refresh_route(1, "k", "c").await.unwrap());
        assert!(!s.refresh_route(1, "k", "other").await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(s.servers_by_keys(&["k".into()]).await.unwrap(), vec![None]);
        assert!(!s.refresh_route(1, "k", "c").await.unwrap());
        assert_eq!(s.sweep(), 1);
        assert_eq!(s.route_count(), 0);
    }

    #[tokio::test]
    async fn online_replaces_whole_report() {
        let s = MemoryStore::new(Duration::from_secs(60));
        let mut o = ServerOnline {
            server: "c".into(),
            room_count: [("live://1".to_string(), 3), ("live://2".to_string(), 1)].into(),
            updated: 10,
        };
        s.put_server_online(&o).await.unwrap();
        o.room_count.remove("live://2");
        o.updated = 20;
        s.put_server_online(&o).await.unwrap();
        let got = s.server_online("c").await.unwrap().unwrap();
        assert_eq!(got.room_count.len(), 1);
        s.remove_server_online("c").await.unwrap();
        assert!(s.server_online("c").await.unwrap().is_none());
    }
}
