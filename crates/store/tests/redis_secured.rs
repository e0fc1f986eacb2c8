//! The Redis store against a real redis-server with TLS and authentication:
//! the right CA works and a wrong one is refused (as Unavailable, with the
//! reason), mutual TLS needs the client certificate, and ACL users and
//! `requirepass` passwords are checked.
#![allow(clippy::unwrap_used)]

// `cargo test -p herald-store` turns the feature on (herald-store is its own
// dev-dependency with it); this file never compiles to no tests.
#[cfg(not(feature = "redis"))]
compile_error!(
    "tests/redis_secured.rs tests the Redis store: build herald-store with its `redis` feature"
);

use std::time::Duration;

use herald_store::{conformance, RedisStore, StoreError, StoreErrorKind};
use herald_testkit::secured::{self, RedisSecurity};
use herald_testkit::Pki;
use herald_tls::ClientTls;

async fn connect(url: &str, tls: &ClientTls) -> Result<RedisStore, StoreError> {
    RedisStore::connect(url, tls, "t:", Duration::from_secs(60)).await
}

fn trusting(ca: &std::path::Path) -> ClientTls {
    ClientTls {
        ca_file: ca.to_path_buf(),
        ..Default::default()
    }
}

fn unavailable(r: Result<RedisStore, StoreError>) -> String {
    match r {
        Err(e) if e.kind() == StoreErrorKind::Unavailable => e.to_string(),
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

#[tokio::test]
async fn tls_with_the_right_ca_serves_and_a_wrong_ca_is_refused() {
    let pki = Pki::new();
    let redis = secured::redis(RedisSecurity {
        tls: Some(&pki),
        ..Default::default()
    });
    let url = redis.redis_url();
    assert!(url.starts_with("rediss://"), "{url}");

    let s = connect(&url, &trusting(&pki.ca)).await.unwrap();
    conformance::routes(&s).await.unwrap();

    let why = unavailable(connect(&url, &trusting(&pki.other_ca)).await);
    assert!(why.contains("UnknownIssuer"), "{why}");

    // Plain Redis protocol to the TLS port gets no answer that passes for one.
    let plain = format!("redis://{}/", redis.addr);
    assert!(connect(&plain, &ClientTls::default()).await.is_err());

    // TLS settings without rediss:// (or the reverse) are a clear mistake.
    let why = unavailable(connect(&plain, &trusting(&pki.ca)).await);
    assert!(why.contains("rediss://"), "{why}");
    let why = unavailable(connect(&url, &ClientTls::default()).await);
    assert!(why.contains("ca_file"), "{why}");
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let redis = secured::redis(RedisSecurity {
        tls: Some(&pki),
        client_certs: true,
        ..Default::default()
    });
    let url = redis.redis_url();
    let with_cert = ClientTls {
        ca_file: pki.ca.clone(),
        cert_file: pki.client_cert.clone(),
        key_file: pki.client_key.clone(),
        ..Default::default()
    };
    let s = connect(&url, &with_cert).await.unwrap();
    conformance::online_reports(&s).await.unwrap();

    unavailable(connect(&url, &trusting(&pki.ca)).await);
    let stranger = ClientTls {
        ca_file: pki.ca.clone(),
        cert_file: pki.other_client_cert.clone(),
        key_file: pki.other_client_key.clone(),
        ..Default::default()
    };
    unavailable(connect(&url, &stranger).await);
}

#[tokio::test]
async fn acl_users_and_passwords_are_checked() {
    let redis = secured::redis(RedisSecurity {
        password: Some("default-pw"),
        user: Some(("herald", "herald-pw")),
        ..Default::default()
    });
    let none = ClientTls::default();

    let s = connect(&redis.redis_url_as("herald", "herald-pw"), &none)
        .await
        .unwrap();
    conformance::routes(&s).await.unwrap();
    connect(&redis.redis_url_as("", "default-pw"), &none)
        .await
        .unwrap();

    let why = unavailable(connect(&redis.redis_url_as("herald", "wrong"), &none).await);
    assert!(
        why.to_lowercase().contains("authentication failed"),
        "{why}"
    );
    let why = unavailable(connect(&redis.redis_url(), &none).await);
    assert!(why.contains("NOAUTH"), "{why}");
}

#[tokio::test]
async fn tls_and_an_acl_user_together() {
    let pki = Pki::new();
    let redis = secured::redis(RedisSecurity {
        tls: Some(&pki),
        user: Some(("herald", "herald-pw")),
        password: Some("default-pw"),
        ..Default::default()
    });
    let s = connect(
        &redis.redis_url_as("herald", "herald-pw"),
        &trusting(&pki.ca),
    )
    .await
    .unwrap();
    conformance::remove_only_own_route(&s).await.unwrap();
    unavailable(connect(&redis.redis_url_as("herald", "nope"), &trusting(&pki.ca)).await);
}
