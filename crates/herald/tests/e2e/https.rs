//! The HTTP API over HTTPS: a client pinned to the right CA connects, one trusting
//! another CA does not, and a reload serves the new certificate to new connections
//! while an old connection keeps working.

use herald_testkit::pki::Pki;
use herald_tls::rustls;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::support::*;

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(addr: std::net::SocketAddr, ca: &Pki) -> std::io::Result<Tls> {
    Client::tls_stream(addr, &ca.ca).await
}

fn peer_cert(conn: &Tls) -> CertificateDer<'static> {
    conn.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// The certificate a PKI's server files hold.
fn leaf(pki: &Pki) -> CertificateDer<'static> {
    herald_tls::load_certs(&pki.server_cert).unwrap()[0].clone()
}

#[tokio::test]
async fn https_with_a_certificate_reloaded_in_place() {
    let (ca1, ca2) = (Pki::new(), Pki::new());
    let (cert, key) = (ca1.server_cert.clone(), ca1.server_key.clone());
    let first = leaf(&ca1);
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
    let second = leaf(&ca2);
    std::fs::copy(&ca2.server_cert, &cert).unwrap();
    std::fs::copy(&ca2.server_key, &key).unwrap();
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
}
