//! `jwt` mode with a JSON Web Key Set served by a local endpoint: key selection by
//! `kid`, rotation, the early-fetch rate limit, and starting without keys.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald_logic::auth::{AuthConfig, AuthMode, JwtConfig};
use herald_logic::Authenticator;
use herald_rpc::ErrorKind::{Unauthenticated, Unavailable};
use serde_json::{json, Value};
use support::*;

fn jwks_config(url: &str, refresh: Duration, min_refresh: Duration) -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        jwt: JwtConfig {
            jwks_url: url.into(),
            jwks_refresh: refresh,
            jwks_min_refresh: min_refresh,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn token(alg: &str, kid: Option<&str>, signer: &Signer) -> String {
    let header = match kid {
        Some(k) => json!({"alg": alg, "kid": k}),
        None => json!({"alg": alg}),
    };
    mint_with_header(header, &claims(), signer)
}

async fn connect(
    auth: &Arc<dyn Authenticator>,
    token: &str,
) -> Result<herald_logic::Identity, herald_rpc::RpcError> {
    auth.authenticate(&connect_req(&json!({"token": token})))
        .await
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn keys_are_chosen_by_kid_and_family() {
    let a = Signer::rsa("rsa-a");
    let e = Signer::ec();
    let server = KeyServer::start(vec![a.jwk("a"), e.jwk("e")]).await;
    let s = start(jwks_config(&server.url, HOUR, HOUR)).await;
    assert_eq!(
        connect(&s.auth, &token("RS256", Some("a"), &a))
            .await
            .unwrap()
            .mid,
        42
    );
    assert_eq!(
        connect(&s.auth, &token("ES256", Some("e"), &e))
            .await
            .unwrap()
            .mid,
        42
    );
    // No kid: every key of the algorithm's family is tried.
    assert_eq!(
        connect(&s.auth, &token("RS256", None, &a))
            .await
            .unwrap()
            .mid,
        42
    );
    // Signed by another key under a known kid.
    assert_refused(
        connect(&s.auth, &token("RS256", Some("a"), &Signer::rsa("rsa-b"))).await,
        Unauthenticated,
        "signature is invalid",
    );
    // A kid of the wrong family.
    assert_refused(
        connect(&s.auth, &token("ES256", Some("a"), &e)).await,
        Unauthenticated,
        "key set has no key",
    );
    // HMAC against a key set: not allowed (and there is no secret to check with).
    let pem = std::fs::read_to_string(fixture("rsa-a.pub.pem")).unwrap();
    assert_refused(
        connect(&s.auth, &token("HS256", Some("a"), &Signer::hmac(&pem))).await,
        Unauthenticated,
        "HS256 is not allowed",
    );
    assert_eq!(
        server.fetches(),
        1,
        "one fetch at start; refusals above fetched nothing more"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn an_unknown_kid_fetches_early_at_most_once_per_min_refresh() {
    let a = Signer::rsa("rsa-a");
    let b = Signer::rsa("rsa-b");
    let server = KeyServer::start(vec![a.jwk("a")]).await;
    let min_refresh = Duration::from_secs(2);
    let s = start(jwks_config(&server.url, HOUR, min_refresh)).await;
    assert_eq!(server.fetches(), 1);
    // The issuer rotates in key b.
    server.set_keys(vec![a.jwk("a"), b.jwk("b")]);
    let with_b = token("RS256", Some("b"), &b);
    let refused = std::cell::Cell::new(0);
    eventually("the rotated-in key is fetched", || {
        let auth = s.auth.clone();
        let t = with_b.clone();
        let refused = &refused;
        async move {
            match connect(&auth, &t).await {
                Ok(_) => true,
                Err(e) => {
                    assert_eq!(e.kind, Unauthenticated, "{e}");
                    refused.set(refused.get() + 1);
                    false
                }
            }
        }
    })
    .await;
    // Every refused attempt came within min_refresh of the start's fetch and
    // fetched nothing; the first one after it fetched once and found the key.
    assert!(
        refused.get() > 0,
        "the first attempt came before min_refresh had passed"
    );
    assert_eq!(server.fetches(), 2);
    // A burst of forged kids right after: no fetch at all.
    let forged: Vec<_> = (0..20)
        .map(|i| {
            let auth = s.auth.clone();
            let t = token("RS256", Some(&format!("forged-{i}")), &b);
            tokio::spawn(async move { connect(&auth, &t).await })
        })
        .collect();
    for f in forged {
        assert_refused(f.await.unwrap(), Unauthenticated, "key set has no key");
    }
    assert_eq!(server.fetches(), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn periodic_refresh_rotates_and_revokes_and_survives_a_broken_endpoint() {
    let a = Signer::rsa("rsa-a");
    let b = Signer::rsa("rsa-b");
    let server = KeyServer::start(vec![a.jwk("a")]).await;
    let s = start(jwks_config(&server.url, Duration::from_millis(100), HOUR)).await;
    let with_a = token("RS256", Some("a"), &a);
    let with_b = token("RS256", Some("b"), &b);
    assert!(connect(&s.auth, &with_a).await.is_ok());
    // Key a replaced by key b: b is accepted, a is revoked, with no early fetch
    // (min_refresh is an hour) — the periodic refresh does it.
    server.set_keys(vec![b.jwk("b")]);
    eventually("key b accepted", || {
        let auth = s.auth.clone();
        let t = with_b.clone();
        async move { connect(&auth, &t).await.is_ok() }
    })
    .await;
    assert_refused(
        connect(&s.auth, &with_a).await,
        Unauthenticated,
        "key set has no key",
    );
    // The endpoint breaks: the keys in force stay.
    for (status, body) in [(500, "oops"), (200, "not json"), (200, r#"{"nokeys":1}"#)] {
        server.set_answer(status, body);
        let seen = server.fetches();
        eventually("two more fetches", || async {
            server.fetches() >= seen + 2
        })
        .await;
        assert_eq!(
            connect(&s.auth, &with_b).await.unwrap().mid,
            42,
            "after {status} {body}"
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn start_without_keys_refuses_as_unavailable_until_they_arrive() {
    let a = Signer::rsa("rsa-a");
    let server = KeyServer::start(Vec::new()).await;
    server.set_answer(503, "not yet");
    let s = start(jwks_config(&server.url, HOUR, Duration::from_millis(200))).await;
    let with_a = token("RS256", Some("a"), &a);
    assert_refused(
        connect(&s.auth, &with_a).await,
        Unavailable,
        "no signing keys",
    );
    server.set_keys(vec![a.jwk("a")]);
    eventually("keys arrive", || {
        let auth = s.auth.clone();
        let t = with_a.clone();
        async move { connect(&auth, &t).await.is_ok() }
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn unusable_entries_are_skipped() {
    let a = Signer::rsa("rsa-a");
    let server = KeyServer::start(vec![
        json!({"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}),
        json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}),
        Value::String("garbage".into()),
        a.jwk("a"),
    ])
    .await;
    let s = start(jwks_config(&server.url, HOUR, HOUR)).await;
    assert!(connect(&s.auth, &token("RS256", Some("a"), &a))
        .await
        .is_ok());
    s.shutdown().await;
}
