//! A JSON Web Key Set fetched from `auth.jwt.jwks_url` and kept fresh.
//!
//! The set is fetched once at start and then every `jwks_refresh` by a task on the
//! caller's tracker. A start whose first fetch fails still succeeds: connects are
//! refused as `Unavailable` (the decision cannot be made, a client should retry)
//! until a fetch succeeds, and fetches are retried every `jwks_min_refresh` in the
//! meantime. A token naming a `kid` the set lacks (the issuer rotated its keys)
//! causes an early fetch, at most once per `jwks_min_refresh`, so a flood of
//! forged `kid`s cannot turn into a flood of fetches. A failed fetch keeps the keys
//! in force; a fetched set replaces them whole, so removing a key from the set
//! revokes it at the next fetch.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::Full;
use metrics::{counter, Counter};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::client::HttpClient;
use super::keys::{Jwk, SetKey};
use super::{AuthSetupError, JwtConfig};

/// Largest key set document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The keys in force, shared with every connect.
pub type Keys = Arc<Vec<SetKey>>;

/// A key set endpoint and its latest keys.
pub struct Jwks {
    url: Uri,
    client: HttpClient,
    timeout: Duration,
    min_refresh: Duration,
    /// The keys in force; `None` until a fetch has succeeded.
    keys: RwLock<Option<Keys>>,
    /// Held during a fetch, so that concurrent connects share one; holds when the
    /// last fetch started, for the early-fetch rate limit.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    failures: Counter,
}

#[derive(Deserialize)]
struct KeySetDoc {
    keys: Vec<serde_json::Value>,
}

impl Jwks {
    /// Fetches the set once (a failure is logged, not returned) and starts the
    /// refresh task on `tracker`, which ends when `stop` fires.
    pub(crate) async fn start(
        cfg: &JwtConfig,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Arc<Jwks>, AuthSetupError> {
        let url: Uri = cfg
            .jwks_url
            .parse()
            .map_err(|e| AuthSetupError::Config(format!("auth.jwt.jwks_url is not a URL: {e}")))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(AuthSetupError::Config(
                "auth.jwt.jwks_url must be an http:// or https:// URL".into(),
            ));
        }
        if cfg.jwks_refresh.is_zero() || cfg.jwks_timeout.is_zero() {
            return Err(AuthSetupError::Config(
                "auth.jwt.jwks_refresh and auth.jwt.jwks_timeout must be positive".into(),
            ));
        }
        let client = HttpClient::new(
            &url,
            &cfg.jwks_tls,
            "auth.jwt.jwks_tls",
            1,
            stop.clone(),
            tracker,
        )?;
        let jwks = Arc::new(Jwks {
            url,
            client,
            timeout: cfg.jwks_timeout,
            min_refresh: cfg.jwks_min_refresh,
            keys: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(None),
            failures: counter!("herald_auth_jwks_failures_total"),
        });
        jwks.fetch().await;
        if jwks.keys().is_none() {
            warn!(url = %super::url_for_logs(&jwks.url), "no JWKS yet: connects are refused until a fetch succeeds");
        }
        let every = cfg.jwks_refresh;
        let task = jwks.clone();
        tracker.spawn(async move {
            loop {
                // Until a set is loaded, retry at the early-fetch pace.
                let wait = if task.keys().is_some() {
                    every
                } else {
                    task.min_refresh.max(Duration::from_secs(1)).min(every)
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = task.fetch() => {}
                }
            }
        });
        Ok(jwks)
    }

    /// The keys in force; `None` before the first successful fetch.
    pub fn keys(&self) -> Option<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches now unless a fetch started less than `jwks_min_refresh` ago (or
    /// waits for the one in progress). Callers look their key up again after.
    pub async fn refresh_early(&self) {
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        self.fetch_locked().await;
    }

    async fn fetch(&self) {
        let mut last = self.fetching.lock().await;
        *last = Some(Instant::now());
        self.fetch_locked().await;
    }

    /// One fetch; the caller holds `fetching`.
    async fn fetch_locked(&self) {
        match tokio::time::timeout(self.timeout, self.download()).await {
            Ok(Ok(keys)) => self.install(keys),
            Ok(Err(e)) => {
                self.failures.increment(1);
                warn!(url = %super::url_for_logs(&self.url), error = %e, "JWKS fetch failed; the keys in force stay");
            }
            Err(_) => {
                self.failures.increment(1);
                warn!(url = %super::url_for_logs(&self.url), timeout = ?self.timeout,
                    "JWKS fetch timed out; the keys in force stay");
            }
        }
    }

    async fn download(&self) -> Result<Vec<SetKey>, String> {
        let req = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let answer = self
            .client
            .send(req, MAX_JWKS_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != StatusCode::OK {
            return Err(format!("answered {}", answer.status));
        }
        let doc: KeySetDoc = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("not a key set ({{\"keys\":[…]}}): {e}"))?;
        let mut keys = Vec::with_capacity(doc.keys.len());
        for value in doc.keys {
            let parsed = serde_json::from_value::<Jwk>(value)
                .map_err(|e| e.to_string())
                .and_then(|jwk| jwk.to_key().map_err(|e| format!("kid {:?}: {e}", jwk.kid)));
            match parsed {
                Ok(k) => keys.push(k),
                Err(e) => {
                    debug!(url = %super::url_for_logs(&self.url), reason = %e, "JWKS entry skipped")
                }
            }
        }
        Ok(keys)
    }

    fn install(&self, keys: Vec<SetKey>) {
        let kids =
            |ks: &[SetKey]| -> Vec<Option<String>> { ks.iter().map(|k| k.kid.clone()).collect() };
        let new_kids = kids(&keys);
        let mut slot = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let changed = slot.as_ref().is_none_or(|old| kids(old) != new_kids);
        if changed {
            if keys.is_empty() {
                warn!(url = %super::url_for_logs(&self.url), "JWKS holds no usable key: every token is refused");
            } else {
                info!(url = %super::url_for_logs(&self.url), keys = keys.len(), kids = ?new_kids, "JWKS loaded");
            }
        }
        *slot = Some(Arc::new(keys));
    }
}
