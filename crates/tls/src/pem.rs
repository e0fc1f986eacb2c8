//! A client's TLS files read as PEM bytes, for client libraries that build their
//! own rustls configuration from PEM (the Redis client) rather than taking one.
//!
//! The files are parsed here first, so a missing or malformed file is reported
//! with its path and purpose, the same way [`client_config`](crate::client_config)
//! reports it, instead of as the library's generic error.

use std::path::Path;

use crate::{load_certs, load_key, ClientTls, TlsError};

/// The PEM contents named by a [`ClientTls`].
#[derive(Clone)]
pub struct ClientPem {
    /// The CA bundle the server's certificate must chain to.
    pub ca: Vec<u8>,
    /// The client certificate chain and its key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ClientPem")
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads and checks the files of `tls`: `ca_file` is required (internal traffic
/// trusts exactly the CA the operator names), `cert_file` and `key_file` go
/// together.
pub fn client_pem(tls: &ClientTls) -> Result<ClientPem, TlsError> {
    if tls.ca_file.as_os_str().is_empty() {
        return Err(TlsError::Config(
            "TLS to a server needs ca_file (the CA bundle its certificate chains to)".into(),
        ));
    }
    load_certs(&tls.ca_file)?;
    let ca = read("CA file", &tls.ca_file)?;
    let identity = match (
        tls.cert_file.as_os_str().is_empty(),
        tls.key_file.as_os_str().is_empty(),
    ) {
        (true, true) => None,
        (false, false) => {
            load_certs(&tls.cert_file)?;
            load_key(&tls.key_file)?;
            Some((
                read("certificate file", &tls.cert_file)?,
                read("private key file", &tls.key_file)?,
            ))
        }
        _ => {
            return Err(TlsError::Config(
                "a client certificate needs both cert_file and key_file".into(),
            ))
        }
    };
    Ok(ClientPem { ca, identity })
}
