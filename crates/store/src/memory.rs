//! In-memory route table and online counts for `herald standalone`.
//!
//! Routes expire like their Redis counterparts: every write or refresh extends a
//! route by the configured TTL; expired entries are invisible and are removed by
//! [`MemoryStore::sweep`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{OnlineStore, ServerOnline, SessionStore, StoreResult};

/// Routes and online counts in process memory.
pub struct MemoryStore {
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// key → (server, expiry).
    keys: HashMap<String, (String, Instant)>,
    /// mid → key → (server, expiry).
    mids: HashMap<i64, HashMap<String, (String, Instant)>>,
    /// server → last report.
    online: HashMap<String, ServerOnline>,
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
        st.keys.retain(|_, (_, exp)| *exp > now);
        st.mids.retain(|_, keys| {
            keys.retain(|_, (_, exp)| *exp > now);
            !keys.is_empty()
        });
        before - st.keys.len()
    }

    /// Number of live routes (keys).
    pub fn route_count(&self) -> usize {
        let now = Instant::now();
        self.state().keys.values().filter(|(_, e)| *e > now).count()
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn add_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<()> {
        let exp = Instant::now() + self.ttl;
        let mut st = self.state();
        st.keys.insert(key.to_string(), (server.to_string(), exp));
        if mid > 0 {
            st.mids
                .entry(mid)
                .or_default()
                .insert(key.to_string(), (server.to_string(), exp));
        }
        Ok(())
    }

    async fn refresh_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<bool> {
        let now = Instant::now();
        let exp = now + self.ttl;
        let mut st = self.state();
        let live = match st.keys.get_mut(key) {
            Some((s, e)) if *e > now && s == server => {
                *e = exp;
                true
            }
            _ => false,
        };
        if live && mid > 0 {
            if let Some((_, e)) = st.mids.get_mut(&mid).and_then(|m| m.get_mut(key)) {
                *e = exp;
            }
        }
        Ok(live)
    }

    async fn remove_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<bool> {
        let mut st = self.state();
        let removed = match st.keys.get(key) {
            Some((s, _)) if s == server => {
                st.keys.remove(key);
                true
            }
            _ => false,
        };
        if mid > 0 {
            if let Some(keys) = st.mids.get_mut(&mid) {
                if keys.get(key).is_some_and(|(s, _)| s == server) {
                    keys.remove(key);
                }
                if keys.is_empty() {
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
            .map(|k| match st.keys.get(k) {
                Some((s, e)) if *e > now => Some(s.clone()),
                _ => None,
            })
            .collect())
    }

    async fn keys_by_mids(&self, mids: &[i64]) -> StoreResult<Vec<(String, String)>> {
        let now = Instant::now();
        let st = self.state();
        let mut out = Vec::new();
        for mid in mids {
            if let Some(keys) = st.mids.get(mid) {
                for (k, (s, e)) in keys {
                    if *e > now {
                        out.push((k.clone(), s.clone()));
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
