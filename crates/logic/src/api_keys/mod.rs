//! API keys: who may call the HTTP API, for what, and how often.
//!
//! The `[api]` section lists keys by name, the SHA-256 of the key, its scopes and an
//! optional request rate. A key is a random string handed to a backend; only its hash
//! is stored, so the configuration file is not a secret worth stealing. Keys are
//! high-entropy secrets, not passwords: one SHA-256 is enough to make them
//! unrecoverable, and no salt or slow hash would add anything. A presented key is
//! hashed and compared with every stored hash in constant time.
//!
//! [`ApiKeys::protect`] puts a route group behind a [`Scope`]: a request without a
//! known key is answered 401, a key without the scope 403, a key over its rate 429,
//! all in goim's `{code, message}` envelope. With no keys configured the API is open,
//! as in goim.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use herald_limits::TokenBucket;
use metrics::counter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::ApiError;

mod new_key;

pub use new_key::{hash_key, KeyGenError, NewKey};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every push endpoint.
    Push,
    /// Online counts and the instance list.
    Read,
    /// `/metrics`, the demo page, and everything the other scopes allow.
    Admin,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Push => "push",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        match s.trim() {
            "push" => Ok(Scope::Push),
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?}: expected push, read or admin"
            )),
        }
    }
}

/// One entry of `[api] keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds the key (logs and error messages name it; never the key).
    pub name: String,
    /// `sha256:` and the 64 hex digits of the key's SHA-256.
    pub hash: String,
    /// What the key may do.
    pub scopes: Vec<Scope>,
    /// Requests per second on average; 0 = unlimited.
    #[serde(default)]
    pub rate: u32,
    /// Requests allowed at once above that rate; 0 = `rate`.
    #[serde(default)]
    pub burst: u32,
}

/// The `[api]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The keys that may call the API. Empty = the API is open (goim's behaviour).
    pub keys: Vec<ApiKeyConfig>,
}

/// A `[api]` section that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("api.keys[{index}] ({name:?}): {reason}")]
pub struct ApiKeyError {
    index: usize,
    name: String,
    reason: String,
}

/// A configured key, ready to check requests against.
struct Key {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
    rate: u32,
    /// Shared by every request made with this key, on every connection.
    bucket: Mutex<TokenBucket>,
}

impl Key {
    fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No key in the request.
    Missing,
    /// Two different keys in one request.
    Conflicting,
    /// A key that is not (or no longer) configured.
    Unknown,
    /// A known key without the scope the endpoint needs.
    Scope {
        /// The key's name.
        key: String,
        /// The scope needed.
        needed: Scope,
    },
    /// The key is over its rate.
    Rate {
        /// The key's name.
        key: String,
        /// Its configured rate.
        rate: u32,
        /// Whole seconds until a request would be accepted.
        retry_after: u64,
    },
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "no_key",
            Refusal::Conflicting | Refusal::Unknown => "unknown_key",
            Refusal::Scope { .. } => "scope",
            Refusal::Rate { .. } => "rate",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, message, challenge) = match &self {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                -401,
                "an API key is required: send it as Authorization: Bearer <key>".to_string(),
                Some("Bearer realm=\"herald\"".to_string()),
            ),
            Refusal::Conflicting => (
                StatusCode::UNAUTHORIZED,
                -401,
                "Authorization and X-Api-Key carry different keys".to_string(),
                Some("Bearer realm=\"herald\", error=\"invalid_token\"".to_string()),
            ),
            Refusal::Unknown => (
                StatusCode::UNAUTHORIZED,
                -401,
                "unknown API key".to_string(),
                Some("Bearer realm=\"herald\", error=\"invalid_token\"".to_string()),
            ),
            Refusal::Scope { key, needed } => (
                StatusCode::FORBIDDEN,
                -403,
                format!("API key {key:?} lacks the {needed} scope"),
                Some(format!(
                    "Bearer realm=\"herald\", error=\"insufficient_scope\", scope=\"{needed}\""
                )),
            ),
            Refusal::Rate {
                key,
                rate,
                retry_after,
            } => (
                StatusCode::TOO_MANY_REQUESTS,
                -429,
                format!("API key {key:?} is over its rate of {rate} requests/s; retry in {retry_after} s"),
                None,
            ),
        };
        let mut res = ApiError::new(status, code, message).into_response();
        if let Some(c) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        if let Refusal::Rate { retry_after, .. } = self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        res
    }
}

/// The name of the key a request was made with (an extension of the request and
/// of its response, for handlers and logs).
#[derive(Debug, Clone)]
pub struct KeyName(pub String);

/// The configured keys.
pub struct ApiKeys {
    keys: Vec<Key>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("ApiKeys").field("keys", &names).finish()
    }
}

fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let bad = || {
        "hash must be \"sha256:\" followed by the 64 hex digits of the key's SHA-256 \
         (`herald apikey new` prints one)"
            .to_string()
    };
    let hex = text.trim().strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

impl ApiKeys {
    /// Checks the `[api]` section and builds the key set.
    pub fn new(cfg: &ApiConfig) -> Result<Arc<ApiKeys>, ApiKeyError> {
        let now = Instant::now();
        let mut keys: Vec<Key> = Vec::with_capacity(cfg.keys.len());
        for (index, k) in cfg.keys.iter().enumerate() {
            let err = |reason: String| ApiKeyError {
                index,
                name: k.name.clone(),
                reason,
            };
            if k.name.trim().is_empty() {
                return Err(err("name must not be empty".into()));
            }
            if k.scopes.is_empty() {
                return Err(err(
                    "scopes must name at least one of push, read, admin".into()
                ));
            }
            let hash = parse_hash(&k.hash).map_err(err)?;
            if let Some(other) = keys.iter().find(|o| o.name == k.name) {
                return Err(err(format!("the name {:?} is used twice", other.name)));
            }
            if let Some(other) = keys.iter().find(|o| o.hash == hash) {
                return Err(err(format!("same hash as key {:?}", other.name)));
            }
            let burst = if k.burst == 0 { k.rate } else { k.burst };
            keys.push(Key {
                name: k.name.clone(),
                hash,
                scopes: k.scopes.clone(),
                rate: k.rate,
                bucket: Mutex::new(TokenBucket::new(f64::from(k.rate), burst, now)),
            });
        }
        Ok(Arc::new(ApiKeys { keys }))
    }

    /// No keys: every request is let through.
    pub fn open() -> Arc<ApiKeys> {
        Arc::new(ApiKeys { keys: Vec::new() })
    }

    /// Whether requests need a key.
    pub fn is_required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Decides whether a request with `headers` may use an endpoint needing
    /// `scope`; on success returns the key's name (`None` when the API is open).
    pub fn check(&self, headers: &HeaderMap, scope: Scope) -> Result<Option<&str>, Refusal> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let presented = presented_key(headers)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every stored hash is compared, so the time taken does not depend on
        // which key (if any) matched.
        let mut found = None;
        for (i, k) in self.keys.iter().enumerate() {
            if bool::from(k.hash.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        let key = &self.keys[found.ok_or(Refusal::Unknown)?];
        if !key.allows(scope) {
            return Err(Refusal::Scope {
                key: key.name.clone(),
                needed: scope,
            });
        }
        let mut bucket = key.bucket.lock().unwrap_or_else(|e| e.into_inner());
        if !bucket.try_take(Instant::now()) {
            return Err(Refusal::Rate {
                key: key.name.clone(),
                rate: key.rate,
                retry_after: bucket.wait_time().as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        Ok(Some(&key.name))
    }

    /// `routes` with every request checked for `scope` first. Unknown paths stay
    /// unguarded (they answer 404 either way).
    pub fn protect<S>(self: &Arc<Self>, scope: Scope, routes: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let keys = self.clone();
        routes.route_layer(middleware::from_fn(move |req: Request, next: Next| {
            let keys = keys.clone();
            async move { keys.admit(scope, req, next).await }
        }))
    }

    async fn admit(&self, scope: Scope, mut req: Request, next: Next) -> Response {
        match self.check(req.headers(), scope) {
            Ok(name) => {
                let name = name.map(|n| KeyName(n.to_string()));
                if let Some(name) = &name {
                    req.extensions_mut().insert(name.clone());
                }
                let mut res = next.run(req).await;
                // Outer layers (the request log) see the response, not the request.
                if let Some(name) = name {
                    res.extensions_mut().insert(name);
                }
                res
            }
            Err(refusal) => {
                if let Refusal::Rate { .. } = refusal {
                    counter!("herald_limit_hits_total", "limit" => "api_rate").increment(1);
                }
                counter!("herald_api_refused_total", "reason" => refusal.reason()).increment(1);
                tracing::debug!(path = %req.uri().path(), ?refusal, "API request refused");
                refusal.into_response()
            }
        }
    }
}

/// The key a request carries: `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Result<String, Refusal> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        })
        .find(|t| !t.is_empty());
    let header_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    match (bearer, header_key) {
        (Some(a), Some(b)) if a != b => Err(Refusal::Conflicting),
        (Some(k), _) | (None, Some(k)) => Ok(k),
        (None, None) => Err(Refusal::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn entry(name: &str, key: &str, scopes: &[Scope]) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.into(),
            hash: hash_key(key),
            scopes: scopes.to_vec(),
            rate: 0,
            burst: 0,
        }
    }

    #[test]
    fn scopes_and_admin_implication() {
        let keys = ApiKeys::new(&ApiConfig {
            keys: vec![
                entry("pusher", "k-push", &[Scope::Push]),
                entry("ops", "k-admin", &[Scope::Admin]),
            ],
        })
        .unwrap();
        let bearer = |k: &str| headers(&[("authorization", &format!("Bearer {k}"))]);
        assert_eq!(
            keys.check(&bearer("k-push"), Scope::Push),
            Ok(Some("pusher"))
        );
        assert_eq!(
            keys.check(&bearer("k-push"), Scope::Read),
            Err(Refusal::Scope {
                key: "pusher".into(),
                needed: Scope::Read
            })
        );
        for s in [Scope::Push, Scope::Read, Scope::Admin] {
            assert_eq!(keys.check(&bearer("k-admin"), s), Ok(Some("ops")));
        }
        assert_eq!(
            keys.check(&bearer("nope"), Scope::Push),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            keys.check(&headers(&[]), Scope::Push),
            Err(Refusal::Missing)
        );
        // Basic credentials are not an API key.
        let basic = headers(&[("authorization", "Basic a3B1c2g6")]);
        assert_eq!(keys.check(&basic, Scope::Push), Err(Refusal::Missing));
        let x = headers(&[("x-api-key", "k-push")]);
        assert_eq!(keys.check(&x, Scope::Push), Ok(Some("pusher")));
        let both = headers(&[("authorization", "bearer k-push"), ("x-api-key", "k-admin")]);
        assert_eq!(keys.check(&both, Scope::Push), Err(Refusal::Conflicting));
        assert_eq!(ApiKeys::open().check(&headers(&[]), Scope::Admin), Ok(None));
    }

    #[test]
    fn rate_limits_per_key() {
        let mut e = entry("slow", "k", &[Scope::Push]);
        e.rate = 1;
        e.burst = 2;
        let keys = ApiKeys::new(&ApiConfig { keys: vec![e] }).unwrap();
        let h = headers(&[("authorization", "Bearer k")]);
        assert!(keys.check(&h, Scope::Push).is_ok());
        assert!(keys.check(&h, Scope::Push).is_ok());
        match keys.check(&h, Scope::Push) {
            Err(Refusal::Rate { retry_after, .. }) => assert_eq!(retry_after, 1),
            other => panic!("expected a rate refusal, got {other:?}"),
        }
    }

    #[test]
    fn bad_entries_are_named() {
        let mut e = entry("backend", "k", &[Scope::Push]);
        e.hash = "md5:abc".into();
        let err = ApiKeys::new(&ApiConfig { keys: vec![e] })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api.keys[0]") && err.contains("sha256:"),
            "{err}"
        );
        let twice = ApiConfig {
            keys: vec![
                entry("a", "k1", &[Scope::Push]),
                entry("a", "k2", &[Scope::Push]),
            ],
        };
        assert!(ApiKeys::new(&twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let same = ApiConfig {
            keys: vec![
                entry("a", "k", &[Scope::Push]),
                entry("b", "k", &[Scope::Read]),
            ],
        };
        assert!(ApiKeys::new(&same)
            .unwrap_err()
            .to_string()
            .contains("same hash"));
        let none = ApiConfig {
            keys: vec![entry("a", "k", &[])],
        };
        assert!(ApiKeys::new(&none)
            .unwrap_err()
            .to_string()
            .contains("scopes"));
    }
}
