//! etcd's user authentication as the client sees it: the user's name and
//! password are traded for a token (`Auth/Authenticate`), which every later call
//! carries as metadata `token`. etcd forgets simple tokens after
//! `--auth-token-ttl` (5 minutes by default) without use, on a restart, and on
//! every other member (they are per member); a call refused for its token
//! authenticates again and is retried once.

use std::sync::Mutex;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Status};

/// How a client proves itself to etcd and protects the connection.
#[derive(Clone, Default)]
pub struct Security {
    /// TLS for `https://` endpoints.
    pub tls: Option<herald_tls::transport::TlsConnector>,
    /// A user to authenticate as (etcd with `auth enable`).
    pub user: Option<User>,
}

/// An etcd user.
#[derive(Clone)]
pub struct User {
    /// User name.
    pub name: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User").field("name", &self.name).finish()
    }
}

/// The current token of a client (none before the first authentication).
#[derive(Default)]
pub struct Token(Mutex<Option<AsciiMetadataValue>>);

impl Token {
    /// Adds the token to a call's metadata.
    pub fn attach(&self, metadata: &mut MetadataMap) {
        if let Some(t) = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            metadata.insert("token", t);
        }
    }

    /// Keeps a token etcd handed out.
    pub fn set(&self, token: &str) -> Result<(), Status> {
        let value = AsciiMetadataValue::try_from(token)
            .map_err(|_| Status::internal("etcd answered an unusable auth token"))?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        Ok(())
    }
}

/// Whether a call was refused because of its token (expired, unknown to this
/// member, or issued before the users or roles changed), so that
/// authenticating again and retrying can succeed.
pub fn is_token_error(s: &Status) -> bool {
    match s.code() {
        Code::Unauthenticated => true,
        Code::InvalidArgument | Code::FailedPrecondition => {
            let m = s.message();
            m.contains("invalid auth token") || m.contains("auth store is old")
        }
        _ => false,
    }
}
