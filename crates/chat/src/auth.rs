//! Who is calling: agents' passwords (argon2id) and session tokens (JWT, HS256,
//! signed with the chat's secret), and the secret itself, which a standalone
//! server generates once and keeps in its data directory so that tokens survive
//! restarts.

use std::io::Write;
use std::path::Path;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::{Id, Role};

/// Shortest secret accepted: 32 bytes, HS256's key size.
pub const MIN_SECRET: usize = 32;

/// The argon2id hash of `password`, as a PHC string (salt and parameters
/// included).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

/// Whether `password` matches the PHC string `hash` (a malformed hash matches
/// nothing).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// What a session token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user's id, as a decimal string (the `sub` that logic's `jwt` connect
    /// mode reads as the member id).
    pub sub: String,
    /// The user's shop.
    pub shop: Id,
    pub role: Role,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// A random id naming this token (for a logout of this session only).
    pub jti: String,
}

impl Session {
    /// The user id.
    pub fn user_id(&self) -> Result<Id, AuthError> {
        self.sub.parse().map_err(|_| AuthError::Invalid("sub"))
    }
}

/// Why a token or a secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token's {0} claim is invalid")]
    Invalid(&'static str),
    #[error("the chat secret must be at least {MIN_SECRET} bytes")]
    ShortSecret,
    #[error("hashing the password failed: {0}")]
    Hashing(String),
}

/// Issues and verifies session tokens with one HS256 secret.
pub struct Tokens {
    key: hmac::Key,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl Tokens {
    /// Tokens signed with `secret` (at least [`MIN_SECRET`] bytes).
    pub fn new(secret: &[u8]) -> Result<Tokens, AuthError> {
        if secret.len() < MIN_SECRET {
            return Err(AuthError::ShortSecret);
        }
        Ok(Tokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// A signed compact JWT carrying `session`.
    pub fn issue(&self, session: &Session) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        // (Serializing a struct of strings and integers cannot fail.)
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(session).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The session of a token this secret signed, not expired at `now` (Unix
    /// seconds). The signature is checked before the payload is read, and only
    /// HS256 is accepted whatever the header says.
    pub fn verify(&self, token: &str, now: i64) -> Result<Session, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| AuthError::Malformed)?;
        let signing_input = &token[..header.len() + 1 + payload.len()];
        hmac::verify(&self.key, signing_input.as_bytes(), &sig)
            .map_err(|_| AuthError::Signature)?;
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(AuthError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(AuthError::Invalid("alg"));
        }
        let session: Session = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(AuthError::Malformed)?;
        session.user_id()?;
        if session.exp <= now {
            return Err(AuthError::Expired);
        }
        Ok(session)
    }
}

/// A fresh random token id.
pub fn new_jti() -> String {
    let mut b = [0u8; 16];
    // (The system's random source failing leaves zeros; ids need not be secret.)
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// The secret in `path`, created (64 random bytes, readable by this user only)
/// when the file does not exist yet.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(secret) if secret.len() >= MIN_SECRET => return Ok(secret),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} holds fewer than {MIN_SECRET} bytes; remove it to have a new secret made",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut secret = vec![0u8; 64];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| std::io::Error::other("the system's random source failed"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut f) => {
            f.write_all(&secret)?;
            f.sync_all()?;
            Ok(secret)
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_secret(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(exp: i64) -> Session {
        Session {
            sub: "42".into(),
            shop: 7,
            role: Role::Agent,
            iat: 1_000,
            exp,
            jti: new_jti(),
        }
    }

    #[test]
    fn passwords_hash_with_a_salt_and_verify() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "a fresh salt each time");
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("wrong horse", &a));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn tokens_verify_only_with_their_secret_and_before_expiry() {
        let tokens = Tokens::new(&[7u8; 32]).unwrap();
        let s = session(2_000);
        let t = tokens.issue(&s);
        assert_eq!(tokens.verify(&t, 1_999).unwrap(), s);
        assert_eq!(tokens.verify(&t, 2_000), Err(AuthError::Expired));
        let other = Tokens::new(&[8u8; 32]).unwrap();
        assert_eq!(other.verify(&t, 1_500), Err(AuthError::Signature));
        // A payload changed after signing.
        let parts: Vec<&str> = t.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Session {
                sub: "1".into(),
                ..s.clone()
            })
            .unwrap(),
        );
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(tokens.verify(&forged, 1_500), Err(AuthError::Signature));
        // alg "none" with no signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(tokens.verify(&none, 1_500), Err(AuthError::Signature));
        for bad in ["", "a.b", "a.b.c.d", "!!.??.**"] {
            assert!(tokens.verify(bad, 1_500).is_err(), "{bad:?}");
        }
        assert_eq!(Tokens::new(&[1u8; 31]).err(), Some(AuthError::ShortSecret));
    }

    #[test]
    fn the_secret_is_made_once_and_kept_private() {
        let dir = std::env::temp_dir().join(format!("herald-chat-secret-{}", std::process::id()));
        let path = dir.join("sub").join("chat-secret");
        let a = load_or_create_secret(&path).unwrap();
        let b = load_or_create_secret(&path).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, b, "kept across restarts");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only");
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(load_or_create_secret(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
