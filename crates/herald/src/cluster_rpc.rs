//! The gRPC side of a role process as `[rpc]` configures it: where it listens
//! (loopback unless the port is protected), how it serves (token, TLS with a
//! certificate that `SIGHUP` reloads), the address it registers (`grpcs://` with
//! TLS, so callers know to use it) and how it calls other tiers.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context};
use herald_rpc::grpc::ClientTimeouts;
use herald_rpc::transport::{Dialer, ServeOptions};
use herald_tls::transport::{TlsConnector, ALPN_H2};
use herald_tls::Reloader;
use tracing::warn;

use crate::config::Config;

/// The URL scheme this process registers its gRPC address with.
pub fn scheme(cfg: &Config) -> &'static str {
    if cfg.rpc.tls.server().is_some() {
        "grpcs"
    } else {
        "grpc"
    }
}

/// How this process serves gRPC; its certificate, if any, joins `reloader`.
pub fn serve_options(cfg: &Config, reloader: &Reloader) -> anyhow::Result<ServeOptions> {
    // A token that cannot be checked must stop the start, not the server later.
    herald_rpc::transport::RequireToken::new(&cfg.rpc.token).context("rpc.token")?;
    let tls = match cfg.rpc.tls.server() {
        Some(files) => {
            let server = herald_tls::server_config(&files, &[ALPN_H2])
                .context("rpc.tls: cannot load this process's certificate")?;
            reloader.add(server.certs.clone());
            Some(server.config)
        }
        None => None,
    };
    Ok(ServeOptions {
        token: cfg.rpc.token.clone(),
        tls,
    })
}

/// How this process calls other tiers.
pub fn dialer(cfg: &Config) -> anyhow::Result<Dialer> {
    let timeouts = ClientTimeouts {
        connect: cfg.rpc.connect_timeout,
        call: cfg.rpc.timeout,
    };
    let mut dialer = Dialer::new(timeouts)
        .with_token(&cfg.rpc.token)
        .context("rpc.token")?;
    if let Some(tls) = cfg.rpc.tls.client() {
        let config = herald_tls::client_config(&tls, &[ALPN_H2])
            .context("rpc.tls: cannot set up TLS for calls to other tiers")?;
        let connector =
            TlsConnector::new(config, &tls.server_name).context("rpc.tls.server_name")?;
        dialer = dialer.with_tls(connector, cfg.rpc.tls.allow_plain);
    }
    Ok(dialer)
}

/// Checks that a serving role (comet, logic) that calls TLS peers can verify
/// them: a process with a certificate but no CA could not call the others, which
/// register as `grpcs://` with the same settings.
pub fn check_serving(cfg: &Config, role: &str, calls_others: bool) -> anyhow::Result<()> {
    if calls_others && cfg.rpc.tls.server().is_some() && cfg.rpc.tls.client().is_none() {
        bail!(
            "herald {role}: rpc.tls.cert_file is set but rpc.tls.ca_file is not; the other \
             tiers serve TLS too and their certificates must be checked against a CA"
        );
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Warns about a listening address that is open without protection, or that
/// other hosts cannot reach although this process registers for them.
pub fn warn_about_bind(cfg: &Config, what: &str, bound: SocketAddr, setting: &str) {
    let protected = cfg.rpc.protected();
    if !bound.ip().is_loopback() && !protected {
        warn!(
            listen = %bound,
            "{what} gRPC accepts calls from anyone who can reach {bound} (TLS without \
             rpc.tls.client_ca_file encrypts, it does not authenticate): set rpc.token and \
             [rpc.tls] (see docs/security.md), or bind it to a private address only"
        );
    }
    let host = cfg.advertise_host();
    if bound.ip().is_loopback() && !is_loopback(&host) {
        warn!(
            listen = %bound, advertise = %host,
            "{what} gRPC listens on loopback only but registers {host} for other hosts: set \
             {setting} to a reachable address, or protect the port (rpc.token, rpc.tls) to \
             listen on every interface"
        );
    }
}

/// The comets' connector for job: calls each comet at its registered address.
pub fn comet_address(addrs: &[String]) -> Option<&String> {
    addrs
        .iter()
        .find(|a| a.starts_with("grpcs://") || a.starts_with("grpc://"))
        .or(addrs.first())
}
