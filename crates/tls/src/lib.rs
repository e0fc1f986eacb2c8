//! TLS for herald: the certificates of its listeners and the trust of its clients.
//!
//! [`ServerTls`] and [`ClientTls`] are the configuration vocabulary every edge uses
//! (client listeners, the HTTP API, the gRPC ports, engine connections).
//! [`server_config`] builds a `rustls::ServerConfig` whose certificate is read through
//! a [`CertStore`]: [`CertStore::reload`] (wired to `SIGHUP` by the binary) swaps the
//! certificate and key for new handshakes while established connections keep theirs.
//! [`client_config`] builds a `rustls::ClientConfig` trusting a CA file (and presenting
//! a client certificate for mutual TLS). Everything uses the `ring` provider.
//! [`client_pem`] reads a client's files as PEM for libraries that take bytes, and
//! the `transport` feature adds TLS under tonic's gRPC channels and servers, and the
//! `io` feature a socket adapter for sessions kept beside their socket.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};

pub use rustls;

#[cfg(feature = "io")]
pub mod io;
mod pem;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "transport")]
pub mod transport;

pub use pem::{client_pem, ClientPem};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The pieces do not fit together (key does not match the certificate, …).
    #[error("{0}")]
    Config(String),
}

/// A listener's certificate: the `[tls]` vocabulary of every server side.
///
/// Empty `cert_file` means TLS is off for that listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate signed by one of
    /// these CAs (mutual TLS). Empty = no client certificate asked for.
    pub client_ca_file: PathBuf,
}

impl ServerTls {
    /// Whether a certificate is configured.
    pub fn is_enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
}

/// How a client side trusts its server: the vocabulary of every outgoing TLS
/// connection (gRPC between tiers, Redis, NATS, etcd, webhooks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    /// Use TLS. Implied by any file below being set.
    pub enabled: bool,
    /// PEM CA bundle the server's certificate must chain to. Empty = the CAs in
    /// this file are required: herald ships no public root store, so internal
    /// traffic trusts exactly what the operator names.
    pub ca_file: PathBuf,
    /// PEM client certificate chain (mutual TLS); empty = none.
    pub cert_file: PathBuf,
    /// PEM key of `cert_file`.
    pub key_file: PathBuf,
    /// Name to verify in the server's certificate instead of the host dialled
    /// (useful when servers are dialled by IP).
    pub server_name: String,
}

impl ClientTls {
    /// Whether TLS is to be used.
    pub fn is_enabled(&self) -> bool {
        self.enabled
            || !self.ca_file.as_os_str().is_empty()
            || !self.cert_file.as_os_str().is_empty()
    }
}

/// The crypto provider herald uses everywhere (`ring`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes `ring` the process's default provider, for libraries that build their
/// rustls configurations with the default (the Redis client). Idempotent; keeps
/// a default someone installed before.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn file_err(what: &'static str, path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a PEM certificate chain (at least one certificate).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err("certificate file", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err("certificate file", path, e))?;
    if certs.is_empty() {
        return Err(file_err(
            "certificate file",
            path,
            "no PEM certificate in it",
        ));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err("private key file", path, e))
}

/// Reads a PEM CA bundle into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_err("CA file", path, e))?;
    }
    Ok(roots)
}

fn certified_key(tls: &ServerTls, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    if tls.key_file.as_os_str().is_empty() {
        return Err(TlsError::Config(format!(
            "certificate {} has no key_file",
            tls.cert_file.display()
        )));
    }
    let certs = load_certs(&tls.cert_file)?;
    let key = load_key(&tls.key_file)?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_err("private key file", &tls.key_file, e))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|e| {
        TlsError::Config(format!(
            "{} does not belong to {}: {e}",
            tls.key_file.display(),
            tls.cert_file.display()
        ))
    })?;
    Ok(ck)
}

/// A listener's current certificate and key, replaceable while it serves.
pub struct CertStore {
    files: ServerTls,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_file", &self.files.cert_file)
            .finish()
    }
}

impl CertStore {
    /// Loads the certificate and key named by `files`.
    pub fn load(files: &ServerTls) -> Result<Arc<CertStore>, TlsError> {
        let provider = provider();
        let ck = certified_key(files, &provider)?;
        Ok(Arc::new(CertStore {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(ck)),
        }))
    }

    /// Reads the files again and serves the new certificate to new handshakes. On
    /// error the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let ck = certified_key(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        Ok(())
    }

    /// The certificate file this store serves.
    pub fn cert_file(&self) -> &Path {
        &self.files.cert_file
    }

    /// The certificate chain in use (leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cert
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A server configuration and the store its certificate comes from.
#[derive(Clone)]
pub struct Server {
    /// The rustls configuration to accept connections with.
    pub config: Arc<rustls::ServerConfig>,
    /// Where its certificate comes from ([`CertStore::reload`] on `SIGHUP`).
    pub certs: Arc<CertStore>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("certs", &self.certs)
            .finish()
    }
}

/// A rustls server configuration for `tls`, offering `alpn` protocols (empty =
/// no ALPN).
pub fn server_config(tls: &ServerTls, alpn: &[&[u8]]) -> Result<Server, TlsError> {
    let certs = CertStore::load(tls)?;
    let provider = certs.provider.clone();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if tls.client_ca_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let roots = load_roots(&tls.client_ca_file)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_cert_resolver(certs.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Server {
        config: Arc::new(config),
        certs,
    })
}

/// A rustls client configuration for `tls`, offering `alpn` protocols.
pub fn client_config(
    tls: &ClientTls,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    if tls.ca_file.as_os_str().is_empty() {
        return Err(TlsError::Config(
            "TLS to a server needs ca_file (the CA bundle its certificate chains to)".into(),
        ));
    }
    let roots = load_roots(&tls.ca_file)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = if tls.cert_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let chain = load_certs(&tls.cert_file)?;
        let key = load_key(&tls.key_file)?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Every certificate store of a process, reloaded together (the binary calls
/// [`Reloader::reload_all`] on `SIGHUP`).
#[derive(Default)]
pub struct Reloader {
    stores: RwLock<Vec<Arc<CertStore>>>,
}

impl Reloader {
    /// An empty set.
    pub fn new() -> Arc<Reloader> {
        Arc::new(Reloader::default())
    }

    /// Adds a store.
    pub fn add(&self, store: Arc<CertStore>) {
        self.stores
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(store);
    }

    /// Reloads every store; logs each outcome and returns how many failed (those
    /// keep their previous certificate).
    pub fn reload_all(&self) -> usize {
        let stores = self
            .stores
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut failed = 0;
        for s in stores {
            match s.reload() {
                Ok(()) => tracing::info!(cert = %s.cert_file().display(), "certificate reloaded"),
                Err(e) => {
                    failed += 1;
                    tracing::error!(cert = %s.cert_file().display(), error = %e,
                        "certificate reload failed; the previous one stays in use");
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pki(dir: &Path, name: &str) -> ServerTls {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![format!("{name}.test")]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        ServerTls {
            cert_file,
            key_file,
            client_ca_file: PathBuf::new(),
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("herald-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reload_swaps_the_certificate_and_keeps_it_on_error() {
        let dir = scratch("reload");
        let a = write_pki(&dir, "a");
        let srv = server_config(&a, &[]).unwrap();
        let first = srv.certs.chain();
        // New files at the same paths: the store serves them after a reload.
        let b = write_pki(&dir, "b");
        std::fs::copy(&b.cert_file, &a.cert_file).unwrap();
        std::fs::copy(&b.key_file, &a.key_file).unwrap();
        srv.certs.reload().unwrap();
        let second = srv.certs.chain();
        assert_ne!(first, second);
        // A broken file: reload fails, the last good certificate stays.
        std::fs::write(&a.cert_file, "not a certificate").unwrap();
        assert!(srv.certs.reload().is_err());
        assert_eq!(srv.certs.chain(), second);
    }

    #[test]
    fn mismatched_key_and_missing_files_are_clear_errors() {
        let dir = scratch("bad");
        let a = write_pki(&dir, "a");
        let b = write_pki(&dir, "b");
        let mixed = ServerTls {
            cert_file: a.cert_file.clone(),
            key_file: b.key_file.clone(),
            client_ca_file: PathBuf::new(),
        };
        let e = server_config(&mixed, &[]).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        let missing = ServerTls {
            cert_file: dir.join("nope.pem"),
            key_file: a.key_file.clone(),
            client_ca_file: PathBuf::new(),
        };
        let e = server_config(&missing, &[]).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let e = client_config(&ClientTls::default(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca_file"), "{e}");
    }
}
