//! New API keys: 256 random bits from the operating system, and the
//! `sha256:<hex>` form the configuration stores (`herald apikey new`).

use base64::Engine as _;
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};

use super::{ApiKeyConfig, Scope};

/// The operating system could not provide random bytes.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random generator failed: {0}")]
pub struct KeyGenError(String);

/// A freshly generated key and what to configure for it.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The key itself: shown once, given to the backend, never stored.
    pub key: String,
    /// Its `sha256:<hex>` hash, for `[api] keys`.
    pub hash: String,
}

impl NewKey {
    /// 256 random bits from the operating system's generator, as `hk_` and 43
    /// base64url characters (the prefix lets secret scanners recognise a leaked key).
    pub fn generate() -> Result<NewKey, KeyGenError> {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut raw)
            .map_err(|e| KeyGenError(e.to_string()))?;
        let key = format!(
            "hk_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let hash = hash_key(&key);
        Ok(NewKey { key, hash })
    }

    /// The `[api] keys` entry for this key as a TOML table (for `[[api.keys]]`).
    pub fn entry(&self, name: &str, scopes: &[Scope]) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.to_string(),
            hash: self.hash.clone(),
            scopes: scopes.to_vec(),
            rate: 0,
            burst: 0,
        }
    }
}

/// The `sha256:<hex>` form of `key`'s hash.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex(&Sha256::digest(key.as_bytes())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_keys::{ApiConfig, ApiKeys};
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn generated_keys_verify_and_differ() {
        let a = NewKey::generate().unwrap();
        let b = NewKey::generate().unwrap();
        assert_ne!(a.key, b.key);
        assert!(a.key.starts_with("hk_") && a.key.len() == 46, "{}", a.key);
        assert_eq!(a.hash, hash_key(&a.key));
        let keys = ApiKeys::new(&ApiConfig {
            keys: vec![a.entry("gen", &[Scope::Read])],
        })
        .unwrap();
        let mut h = HeaderMap::new();
        let bearer = format!("Bearer {}", a.key);
        h.insert("authorization", HeaderValue::from_str(&bearer).unwrap());
        assert_eq!(keys.check(&h, Scope::Read), Ok(Some("gen")));
        // The known SHA-256 of "abc".
        assert_eq!(
            hash_key("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
