//! Connect authentication: the `[auth]` settings and the authenticators they select.
//!
//! - `trust`: goim's behaviour, the auth body is the identity
//!   ([`crate::TrustingAuthenticator`]).
//! - `jwt`: the auth body carries a signed token; its claims are the identity and
//!   the grant.
//! - `webhook`: a backend decides from the auth body, the client address and the
//!   WebSocket headers.

use serde::{Deserialize, Serialize};

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

/// The `[auth]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `trust`, `jwt` or `webhook`.
    pub mode: AuthMode,
}
