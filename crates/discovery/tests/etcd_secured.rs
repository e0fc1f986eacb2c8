//! The etcd registry against a real etcd with TLS and authentication: https
//! endpoints with the right and a wrong CA, client certificates, a user with
//! read-write permission on `/` (not root), wrong passwords, and tokens that
//! expire while the registry is in use.
#![allow(clippy::unwrap_used)]

// `cargo test -p herald-discovery` turns the feature on (herald-discovery is its own
// dev-dependency with it); this file never compiles to no tests.
#[cfg(not(feature = "etcd"))]
compile_error!(
    "tests/etcd_secured.rs tests the etcd registry: build herald-discovery with its `etcd` feature"
);

use std::collections::BTreeMap;
use std::time::Duration;

use herald_discovery::{
    EtcdConfig, EtcdRegistry, Instance, Instances, Registry, RegistryError, RegistryErrorKind,
    COMET_APPID,
};
use herald_testkit::secured::{self, EtcdSecurity};
use herald_testkit::Pki;
use herald_tls::ClientTls;
use tokio::sync::watch;
use tokio::time::Instant;

fn config(endpoint: String) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint],
        env: "test".into(),
        lease_ttl: Duration::from_secs(2),
        dial_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

fn trusting(ca: &std::path::Path) -> ClientTls {
    ClientTls {
        ca_file: ca.to_path_buf(),
        ..Default::default()
    }
}

fn comet(hostname: &str) -> Instance {
    Instance {
        env: "test".into(),
        appid: COMET_APPID.into(),
        hostname: hostname.into(),
        addrs: vec![format!("grpcs://{hostname}")],
        ..Default::default()
    }
}

fn hostnames(list: &Instances) -> Vec<String> {
    list.iter().map(|i| i.hostname.clone()).collect()
}

/// Waits until the watched list is `want`.
async fn until(w: &mut watch::Receiver<Instances>, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if hostnames(&w.borrow_and_update()) == want {
            return;
        }
        tokio::time::timeout_at(deadline, w.changed())
            .await
            .unwrap_or_else(|_| panic!("watch never showed {want:?}"))
            .unwrap();
    }
}

/// Registration, watch, update and deregistration all work on `reg`.
async fn registry_works(reg: &EtcdRegistry, host: &str) {
    let mut w = reg.watch(COMET_APPID).await.unwrap();
    let r = reg.register(comet(host)).await.unwrap();
    until(&mut w, &[host]).await;
    r.update(BTreeMap::from([("weight".into(), "3".into())]))
        .await
        .unwrap();
    r.deregister().await.unwrap();
    until(&mut w, &[]).await;
}

fn refusal(r: Result<EtcdRegistry, RegistryError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected a refusal, got a registry"),
    }
}

#[tokio::test]
async fn tls_with_the_right_ca_and_not_a_wrong_one() {
    let pki = Pki::new();
    let etcd = secured::etcd(EtcdSecurity {
        tls: Some(&pki),
        ..Default::default()
    });
    let endpoint = etcd.etcd_endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    let reg = EtcdRegistry::connect(EtcdConfig {
        tls: trusting(&pki.ca),
        ..config(endpoint.clone())
    })
    .await
    .unwrap();
    registry_works(&reg, "tls:3109").await;

    let why = refusal(
        EtcdRegistry::connect(EtcdConfig {
            tls: trusting(&pki.other_ca),
            ..config(endpoint.clone())
        })
        .await,
    );
    assert!(why.contains("UnknownIssuer"), "{why}");
    // An https endpoint without TLS settings, and TLS settings with an http
    // endpoint, are configuration mistakes.
    let why = refusal(EtcdRegistry::connect(config(endpoint.clone())).await);
    assert!(why.contains("needs TLS settings"), "{why}");
    let http = format!("http://{}", etcd.addr);
    let why = refusal(
        EtcdRegistry::connect(EtcdConfig {
            tls: trusting(&pki.ca),
            ..config(http)
        })
        .await,
    );
    assert!(why.contains("http://"), "{why}");
}

#[tokio::test]
async fn client_certificates_are_required_when_etcd_asks() {
    let pki = Pki::new();
    let etcd = secured::etcd(EtcdSecurity {
        tls: Some(&pki),
        client_certs: true,
        ..Default::default()
    });
    let endpoint = etcd.etcd_endpoint();
    let reg = EtcdRegistry::connect(EtcdConfig {
        tls: ClientTls {
            ca_file: pki.ca.clone(),
            cert_file: pki.client_cert.clone(),
            key_file: pki.client_key.clone(),
            ..Default::default()
        },
        ..config(endpoint.clone())
    })
    .await
    .unwrap();
    registry_works(&reg, "mtls:3109").await;

    refusal(
        EtcdRegistry::connect(EtcdConfig {
            tls: trusting(&pki.ca),
            ..config(endpoint.clone())
        })
        .await,
    );
    refusal(
        EtcdRegistry::connect(EtcdConfig {
            tls: ClientTls {
                ca_file: pki.ca.clone(),
                cert_file: pki.other_client_cert.clone(),
                key_file: pki.other_client_key.clone(),
                ..Default::default()
            },
            ..config(endpoint)
        })
        .await,
    );
}

#[tokio::test]
async fn a_user_with_the_right_password_and_not_otherwise() {
    let pki = Pki::new();
    let etcd = secured::etcd(EtcdSecurity {
        tls: Some(&pki),
        root_password: Some("root-pw"),
        user: Some(("herald", "herald-pw")),
        ..Default::default()
    });
    let endpoint = etcd.etcd_endpoint();
    let as_user = |name: &str, password: &str| EtcdConfig {
        username: name.into(),
        password: password.into(),
        tls: trusting(&pki.ca),
        ..config(endpoint.clone())
    };
    let reg = EtcdRegistry::connect(as_user("herald", "herald-pw"))
        .await
        .unwrap();
    registry_works(&reg, "auth:3109").await;

    match EtcdRegistry::connect(as_user("herald", "wrong")).await {
        Err(e) if e.kind() == RegistryErrorKind::Invalid => {
            let why = e.to_string();
            assert!(why.contains("authentication failed"), "{why}")
        }
        other => panic!("expected Invalid, got {:?}", other.err()),
    }
    // No user at all: etcd refuses the first read.
    let why = refusal(EtcdRegistry::connect(as_user("", "")).await);
    assert!(why.contains("user name is empty"), "{why}");
}

#[tokio::test]
async fn the_registry_keeps_working_after_its_token_expires() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("herald_discovery=debug")
        .with_test_writer()
        .try_init();
    let etcd = secured::etcd(EtcdSecurity {
        root_password: Some("root-pw"),
        user: Some(("herald", "herald-pw")),
        token_ttl: Some(1),
        ..Default::default()
    });
    let reg = EtcdRegistry::connect(EtcdConfig {
        username: "herald".into(),
        password: "herald-pw".into(),
        ..config(etcd.etcd_endpoint())
    })
    .await
    .unwrap();
    let mut w = reg.watch(COMET_APPID).await.unwrap();
    let first = reg.register(comet("a:3109")).await.unwrap();
    until(&mut w, &["a:3109"]).await;

    // etcd's own clock: the token lapses 1 s after its last use; nothing herald
    // does can signal it, so real time has to pass.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Calls made with the stale token authenticate again and succeed: a new
    // registration (lease grant, put), an update, a new watch.
    let second = reg.register(comet("b:3109")).await.unwrap();
    until(&mut w, &["a:3109", "b:3109"]).await;
    first
        .update(BTreeMap::from([("weight".into(), "5".into())]))
        .await
        .unwrap();
    let mut again = reg.watch(COMET_APPID).await.unwrap();
    until(&mut again, &["a:3109", "b:3109"]).await;
    // The first lease was kept alive across the expiry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    until(&mut again, &["a:3109", "b:3109"]).await;
    second.deregister().await.unwrap();
    first.deregister().await.unwrap();
    until(&mut w, &[]).await;
}
