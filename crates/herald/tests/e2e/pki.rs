//! Certificates for TLS tests: a CA and a `localhost` server certificate it
//! signed, written as PEM files into a scratch directory.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA and a server certificate for `localhost` / `127.0.0.1`.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn scratch(tag: &str) -> PathBuf {
    let n = rand::random::<u64>();
    let d = std::env::temp_dir().join(format!("herald-e2e-{tag}-{}-{n:x}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Pki {
    /// A fresh CA and server certificate in a new scratch directory.
    pub fn new(tag: &str) -> Pki {
        let dir = scratch(tag);
        Pki::write(&dir, "a")
    }

    /// Writes a new CA and server certificate under `dir`, files named `<name>-*`.
    pub fn write(dir: &Path, name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("herald test CA {name}"));
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let pki = Pki {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    /// The `[tls]` settings serving this certificate.
    pub fn server_tls(&self) -> herald_tls::ServerTls {
        herald_tls::ServerTls {
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            ..Default::default()
        }
    }
}
