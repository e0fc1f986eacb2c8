//! The secure run's credentials, made fresh in a scratch directory: a CA and a
//! `localhost` certificate it signed (ECDSA P-256, what a public CA would issue
//! today) for the server's `[tls]`, and an HMAC secret for `jwt` auth.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// Files and secret of one secure run.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The scratch directory holding the files (removed by [`Credentials::remove`]).
    pub dir: PathBuf,
    /// PEM CA certificate the clients trust.
    pub ca: PathBuf,
    /// PEM server certificate (`localhost`, `127.0.0.1`).
    pub cert: PathBuf,
    /// PEM key of `cert`.
    pub key: PathBuf,
    /// HMAC secret for HS256 tokens (64 URL-safe characters: herald wants ≥ 32 bytes).
    pub jwt_secret: String,
}

impl Credentials {
    /// Creates `dir` and writes fresh credentials into it.
    pub fn create(dir: &Path) -> anyhow::Result<Credentials> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "herald bench CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let cert = params.signed_by(&key, &ca)?;
        let creds = Credentials {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            jwt_secret: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(rand::random::<[u8; 48]>()),
        };
        std::fs::write(&creds.ca, ca.pem())?;
        std::fs::write(&creds.cert, cert.pem())?;
        std::fs::write(&creds.key, key.serialize_pem())?;
        Ok(creds)
    }

    /// Removes the scratch directory.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_load_as_server_and_client_tls() {
        let dir = std::env::temp_dir().join(format!("herald-bench-pki-{}", std::process::id()));
        let c = Credentials::create(&dir).unwrap();
        assert_eq!(c.jwt_secret.len(), 64);
        herald_tls::server_config(
            &herald_tls::ServerTls {
                cert_file: c.cert.clone(),
                key_file: c.key.clone(),
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        crate::link::TlsDial::new(&c.ca, "localhost").unwrap();
        c.remove();
        assert!(!dir.exists());
    }
}
