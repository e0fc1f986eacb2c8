//! Certificates for tests with TLS: a CA, a server certificate for `localhost` and
//! `127.0.0.1` and a client certificate signed by it, and a second, unrelated CA
//! with a client certificate of its own (what a stranger would present). Written
//! as PEM files into a scratch directory that is removed on drop.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A private PKI on disk. Every field is the path of a PEM file.
pub struct Pki {
    dir: PathBuf,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// Server certificate for `localhost` and `127.0.0.1`, signed by `ca`.
    pub server_cert: PathBuf,
    /// Key of `server_cert`.
    pub server_key: PathBuf,
    /// Client certificate (`CN=herald-test-client`), signed by `ca`.
    pub client_cert: PathBuf,
    /// Key of `client_cert`.
    pub client_key: PathBuf,
    /// A CA that signed nothing the engines trust.
    pub other_ca: PathBuf,
    /// A client certificate signed by `other_ca`.
    pub other_client_cert: PathBuf,
    /// Key of `other_client_cert`.
    pub other_client_key: PathBuf,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new())
        .unwrap_or_else(|e| panic!("CA parameters: {e}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn leaf(
    names: &[&str],
    cn: &str,
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
    file: &str,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("key generation: {e}"));
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("certificate parameters: {e}"));
    p.distinguished_name.push(DnType::CommonName, cn);
    let cert = p
        .signed_by(&key, issuer)
        .unwrap_or_else(|e| panic!("signing {cn}: {e}"));
    let cert_path = dir.join(format!("{file}.pem"));
    let key_path = dir.join(format!("{file}.key"));
    write(&cert_path, &cert.pem());
    write(&key_path, &key.serialize_pem());
    (cert_path, key_path)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn new_ca(name: &str, dir: &Path, file: &str) -> (Issuer<'static, KeyPair>, PathBuf) {
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("key generation: {e}"));
    let params = ca_params(name);
    let cert = params
        .self_signed(&key)
        .unwrap_or_else(|e| panic!("self-signing {name}: {e}"));
    let path = dir.join(format!("{file}.pem"));
    write(&path, &cert.pem());
    (Issuer::new(params, key), path)
}

impl Pki {
    /// Generates every certificate into a new scratch directory.
    pub fn new() -> Pki {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("herald-test-pki-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let (issuer, ca) = new_ca("herald test CA", &dir, "ca");
        let (server_cert, server_key) = leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            &issuer,
            &dir,
            "server",
        );
        let (client_cert, client_key) = leaf(&[], "herald-test-client", &issuer, &dir, "client");
        let (other, other_ca) = new_ca("unrelated CA", &dir, "other-ca");
        let (other_client_cert, other_client_key) =
            leaf(&[], "stranger", &other, &dir, "other-client");
        Pki {
            dir,
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
            other_ca,
            other_client_cert,
            other_client_key,
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
