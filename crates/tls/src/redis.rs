//! Redis clients with herald's TLS settings: `rediss://` URLs trust exactly the
//! configured CA (and present a client certificate when one is configured), on
//! the `ring` provider. Shared by the Redis store and the Redis Streams queue.

use crate::{client_pem, install_default_provider, ClientTls};

/// A client for `url`. `rediss://` URLs use TLS trusting exactly `tls.ca_file`
/// (and presenting `tls`'s client certificate, if any); the host in the URL is the
/// name verified in Redis's certificate. A user and password come from the URL
/// (`rediss://user:password@host:port/db` for an ACL user, `:password@` for
/// `requirepass`).
pub fn client(url: &str, tls: &ClientTls) -> Result<redis::Client, String> {
    if !url.starts_with("rediss://") {
        if tls.is_enabled() {
            return Err(
                "TLS settings are given but the Redis URL does not start with rediss://".into(),
            );
        }
        return redis::Client::open(url).map_err(|e| e.to_string());
    }
    if !tls.server_name.is_empty() {
        return Err(
            "Redis verifies the host of its URL, so tls.server_name is not supported \
                    there: put the name the certificate carries in the URL"
                .into(),
        );
    }
    let pem = client_pem(tls).map_err(|e| e.to_string())?;
    // The Redis client builds its rustls configuration with the process default.
    install_default_provider();
    let certs = redis::TlsCertificates {
        client_tls: pem
            .identity
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: Some(pem.ca),
    };
    redis::Client::build_with_tls(url, certs).map_err(|e| e.to_string())
}
