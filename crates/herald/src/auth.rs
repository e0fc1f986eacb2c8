//! Puts the `[auth]` section in force for a process that runs logic, and says at
//! start which mode that is (warning when any client can claim any identity).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use herald_logic::auth::{self, AuthMode};
use herald_logic::Authenticator;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::Config;

/// Builds the authenticator of `cfg.auth`. `client_listeners` are the client
/// listeners in this process (standalone), or `None` when comets run elsewhere
/// (logic), in which case any client may be reaching them from anywhere.
pub async fn authenticator(
    cfg: &Config,
    client_listeners: Option<&[SocketAddr]>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Arc<dyn Authenticator>> {
    let auth = auth::build(&cfg.auth, stop, tracker)
        .await
        .context("invalid [auth] configuration")?;
    if cfg.auth.mode == AuthMode::Trust {
        let exposed = client_listeners.is_none_or(|l| l.iter().any(|a| !a.ip().is_loopback()));
        if exposed {
            warn!(
                "auth.mode = trust: any client can claim any identity (mid, key, room); \
                 set auth.mode = jwt or webhook unless a trusted gateway authenticates clients"
            );
        }
    }
    Ok(auth)
}
