//! The HTTP API over HTTPS: a client pinned to the right CA connects, one trusting
//! another CA does not, and a reload serves the new certificate to new connections
//! while an old connection keeps working.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_tls::rustls;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::support::*;

/// A CA and the certificates it signs, as PEM files in a scratch directory.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a `localhost` certificate and its key to `cert`/`key`; returns its DER.
    fn issue(&self, cert: &Path, key: &Path) -> CertificateDer<'static> {
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&leaf_key, &self.issuer).unwrap();
        std::fs::write(cert, leaf.pem()).unwrap();
        std::fs::write(key, leaf_key.serialize_pem()).unwrap();
        leaf.der().clone()
    }

    fn client(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(herald_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("herald-e2e-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(addr: std::net::SocketAddr, ca: &TestCa) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    ca.client().connect(name, tcp).await
}

fn peer_cert(conn: &Tls) -> CertificateDer<'static> {
    conn.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn https_with_a_certificate_reloaded_in_place() {
    let dir = scratch("https");
    let (cert, key) = (dir.join("api.pem"), dir.join("api.key"));
    let (ca1, ca2) = (
        TestCa::new("herald test CA 1"),
        TestCa::new("herald test CA 2"),
    );
    let first = ca1.issue(&cert, &key);
    let mut cfg = test_config();
    cfg.logic.tls = true;
    cfg.tls.cert_file = cert.clone();
    cfg.tls.key_file = key.clone();
    let s = start_with(cfg).await;
    let h = s.http_addr;

    let mut old = tls_connect(h, &ca1)
        .await
        .expect("a client trusting CA 1 connects");
    assert_eq!(peer_cert(&old), first);
    write_request(&mut old, "GET", "/goim/nodes/weighted", &[], b"").await;
    assert_eq!(read_response(&mut old).await.json()["code"], 0);
    assert!(
        tls_connect(h, &ca2).await.is_err(),
        "a client trusting another CA must not connect"
    );
    // Plain HTTP on the HTTPS port gets nowhere.
    let mut plain = TcpStream::connect(h).await.unwrap();
    write_request(&mut plain, "GET", "/goim/nodes/weighted", &[], b"").await;
    wait_closed(&mut plain).await;

    // New files in place, then what SIGHUP does.
    let second = ca2.issue(&cert, &key);
    assert_eq!(s.reloader().reload_all(), 0);
    let mut new = tls_connect(h, &ca2)
        .await
        .expect("the new certificate is served");
    assert_eq!(peer_cert(&new), second);
    write_request(&mut new, "GET", "/goim/nodes/weighted", &[], b"").await;
    assert_eq!(read_response(&mut new).await.json()["code"], 0);
    assert!(
        tls_connect(h, &ca1).await.is_err(),
        "the old certificate is gone"
    );
    // The connection made before the reload keeps working.
    write_request(&mut old, "GET", "/goim/nodes/weighted", &[], b"").await;
    assert_eq!(read_response(&mut old).await.json()["code"], 0);

    // A broken file: the reload fails and the current certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert_eq!(s.reloader().reload_all(), 1);
    let again = tls_connect(h, &ca2).await.expect("still served");
    assert_eq!(peer_cert(&again), second);
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
