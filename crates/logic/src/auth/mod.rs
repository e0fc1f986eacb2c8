//! Connect authentication: the `[auth]` settings and the authenticators they select.
//!
//! - `trust`: goim's behaviour, the auth body is the identity
//!   ([`crate::TrustingAuthenticator`]).
//! - `jwt`: the auth body (or a WebSocket client's `token` query parameter) carries a
//!   signed token; its claims are the identity and the grant ([`jwt`], keys from
//!   [`keys`] or a JWKS endpoint, [`jwks`]).
//! - `webhook`: a backend decides from the auth body, the client address and the
//!   WebSocket headers ([`webhook`]).
//!
//! Both checking modes share one rule set for what the client's auth body may still
//! say once the credentials have spoken ([`claims`]). [`build`] validates the section
//! and returns the authenticator in force; a configuration that cannot work is an
//! error at start, never a server that lets everybody in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald_rpc::{ErrorKind, RpcError};
use herald_tls::ClientTls;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::{Authenticator, TrustingAuthenticator};

pub mod claims;
mod client;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod webhook;

/// How connecting clients are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// The auth body is believed (goim's behaviour; the default, for compatibility).
    #[default]
    Trust,
    /// A signed JSON Web Token in the auth body.
    Jwt,
    /// A backend URL decides.
    Webhook,
}

impl AuthMode {
    /// The mode's name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::Trust => "trust",
            AuthMode::Jwt => "jwt",
            AuthMode::Webhook => "webhook",
        }
    }
}

/// The `[auth]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `trust`, `jwt` or `webhook`.
    pub mode: AuthMode,
    /// `[auth.jwt]`: used when `mode = "jwt"`.
    pub jwt: JwtConfig,
    /// `[auth.webhook]`: used when `mode = "webhook"`.
    pub webhook: WebhookConfig,
}

/// `[auth.jwt]`: where the verification keys come from and which tokens are valid.
///
/// Exactly one key source: `secret`, `secret_file`, `public_key_file` or `jwks_url`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Shared HMAC secret (its UTF-8 bytes), at least 32 bytes.
    pub secret: String,
    /// A file holding the HMAC secret (one trailing newline is ignored), so the
    /// secret stays out of the configuration file.
    pub secret_file: PathBuf,
    /// PEM public key (`BEGIN PUBLIC KEY`, as `openssl pkey -pubout` writes): RSA
    /// (2048 bits or more) or ECDSA P-256 / P-384.
    pub public_key_file: PathBuf,
    /// A JSON Web Key Set URL (http or https), fetched at start and every
    /// `jwks_refresh`.
    pub jwks_url: String,
    /// How often the key set is fetched again.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by tokens naming an unknown `kid` (or
    /// by connects arriving while no key set has been loaded).
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// How long one key set fetch may take.
    #[serde(with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// Trust for an https `jwks_url`: empty = the public web PKI roots; `ca_file` =
    /// a private CA (and `cert_file`/`key_file` for mutual TLS).
    pub jwks_tls: ClientTls,
    /// Accepted signature algorithms (`HS256`, `HS384`, `HS512`, `RS256`, `RS384`,
    /// `RS512`, `PS256`, `PS384`, `PS512`, `ES256`, `ES384`). Empty = the natural
    /// one for the key: `HS256` for a secret, `RS256` or `ES256`/`ES384` for a
    /// public key, `RS256` and `ES256` for a key set. The token's header never
    /// widens this list; `none` is never accepted.
    pub algorithms: Vec<String>,
    /// Required `aud` (the token's `aud`, a string or a list, must contain it);
    /// empty = not checked.
    pub audience: String,
    /// Required `iss`; empty = not checked.
    pub issuer: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: String::new(),
            secret_file: PathBuf::new(),
            public_key_file: PathBuf::new(),
            jwks_url: String::new(),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
            jwks_tls: ClientTls::default(),
            algorithms: Vec::new(),
            audience: String::new(),
            issuer: String::new(),
            leeway: Duration::from_secs(30),
            require_exp: true,
        }
    }
}

// Written by hand so that a logged configuration never shows the secret.
impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &redacted(&self.secret))
            .field("secret_file", &self.secret_file)
            .field("public_key_file", &self.public_key_file)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_refresh", &self.jwks_refresh)
            .field("jwks_min_refresh", &self.jwks_min_refresh)
            .field("jwks_timeout", &self.jwks_timeout)
            .field("jwks_tls", &self.jwks_tls)
            .field("algorithms", &self.algorithms)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("require_exp", &self.require_exp)
            .finish()
    }
}

/// `[auth.webhook]`: the backend asked about every connect.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// The backend's URL (http or https); it receives a POST per connect.
    pub url: String,
    /// Longest a connect waits for the backend, waiting for a free call slot
    /// included. Keep it below `comet.logic_timeout`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Calls in flight at once; a connect beyond them waits (within `timeout`) for
    /// a slot.
    pub concurrency: usize,
    /// Headers added to every call (for example a shared secret the backend
    /// checks).
    pub headers: BTreeMap<String, String>,
    /// Trust for an https `url`: empty = the public web PKI roots; `ca_file` = a
    /// private CA (and `cert_file`/`key_file` for mutual TLS).
    pub tls: ClientTls,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            timeout: Duration::from_secs(2),
            concurrency: 64,
            headers: BTreeMap::new(),
            tls: ClientTls::default(),
        }
    }
}

// Written by hand so that a logged configuration never shows header values (they
// are typically secrets).
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&String> = self.headers.keys().collect();
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("headers", &headers)
            .field("tls", &self.tls)
            .finish()
    }
}

fn redacted(s: &str) -> &'static str {
    if s.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

/// Why the `[auth]` section cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A setting is missing, contradicts another or has an impossible value.
    #[error("{0}")]
    Config(String),
    /// A key or secret file could not be read or holds no usable key.
    #[error("{what} {path}: {reason}")]
    File {
        /// The setting that names the file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The TLS settings of an outgoing connection are unusable.
    #[error("{what}: {source}")]
    Tls {
        /// The setting.
        what: &'static str,
        /// The cause.
        source: herald_tls::TlsError,
    },
}

/// Builds the authenticator `cfg` selects. Background work (the JWKS refresh, the
/// HTTP client's connections) is spawned on `tracker` and ends when `stop` fires.
pub async fn build(
    cfg: &AuthConfig,
    stop: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Arc<dyn Authenticator>, AuthSetupError> {
    let auth: Arc<dyn Authenticator> = match cfg.mode {
        AuthMode::Trust => {
            info!(
                mode = "trust",
                "connect authentication: the auth body is believed"
            );
            Arc::new(TrustingAuthenticator)
        }
        AuthMode::Jwt => Arc::new(jwt::JwtAuthenticator::start(&cfg.jwt, stop, tracker).await?),
        AuthMode::Webhook => Arc::new(webhook::WebhookAuthenticator::new(
            &cfg.webhook,
            stop,
            tracker,
        )?),
    };
    Ok(auth)
}

/// A refusal of the client's credentials.
pub(crate) fn refused(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorKind::Unauthenticated, message)
}

/// A URL as logs may show it: scheme, host, port and path. Credentials in the
/// user info and secrets in the query stay out.
pub(crate) fn url_for_logs(url: &http::Uri) -> String {
    let port = url.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        url.scheme_str().unwrap_or_default(),
        url.host().unwrap_or_default(),
        url.path()
    )
}

#[cfg(test)]
mod url_tests {
    #[test]
    fn logged_urls_carry_no_secrets() {
        let u: http::Uri = "https://user:pw@keys.example.com:8443/jwks.json?token=s3cret"
            .parse()
            .unwrap();
        assert_eq!(
            super::url_for_logs(&u),
            "https://keys.example.com:8443/jwks.json"
        );
    }
}
