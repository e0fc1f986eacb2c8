//! `jwt` mode with configured keys: which tokens let a client in, as whom, with
//! what grant, and which are refused.

#![allow(clippy::unwrap_used)]

mod support;

use herald_logic::auth::{AuthConfig, AuthMode, JwtConfig};
use herald_rpc::ErrorKind::Unauthenticated;
use serde_json::json;
use support::*;

fn hs_config() -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        jwt: JwtConfig {
            secret: SECRET.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn pem_config(file: &str, algorithms: &[&str]) -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        jwt: JwtConfig {
            public_key_file: fixture(file),
            algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn hs256_token_in_the_body_gives_the_claimed_identity_and_grant() {
    let s = start(hs_config()).await;
    let exp = now() + 600;
    let token = mint(
        "HS256",
        &json!({"sub": 42, "key": "k-42", "room": "live://1", "rooms": ["live://1", "chat://team-*"],
                "accepts": [1000, 1001], "exp": exp}),
        &Signer::hmac(SECRET),
    );
    let id = s
        .auth
        .authenticate(&connect_req(&json!({"token": token, "platform": "web"})))
        .await
        .unwrap();
    assert_eq!(
        (id.mid, id.key.as_str(), id.room_id.as_str()),
        (42, "k-42", "live://1")
    );
    assert_eq!(id.accepts, vec![1000, 1001]);
    let grant = id.grant.unwrap();
    // The connection lasts as long as the token was admitted for: exp + leeway.
    assert_eq!(grant.expires_at, exp + 30);
    assert!(
        !grant.any_room && grant.allows_room("chat://team-3") && !grant.allows_room("live://2")
    );
    assert!(!grant.any_op && grant.allows_op(1001) && !grant.allows_op(5));
    assert_eq!(s.auth.mode(), "jwt");
    s.shutdown().await;
}

#[tokio::test]
async fn numeric_string_sub_and_minimal_claims() {
    let s = start(hs_config()).await;
    let token = mint("HS256", &claims(), &Signer::hmac(SECRET));
    let id = s
        .auth
        .authenticate(&connect_req(&json!({"token": token})))
        .await
        .unwrap();
    assert_eq!(id.mid, 42);
    // No key claim: logic generates one; no rooms/accepts claims: anything.
    assert_eq!(id.key, "");
    let grant = id.grant.unwrap();
    assert!(grant.any_room && grant.any_op);

    for (sub, part) in [(json!("abc"), "wrong type"), (json!(null), "no sub")] {
        let token = mint(
            "HS256",
            &json!({"sub": sub, "exp": now() + 60}),
            &Signer::hmac(SECRET),
        );
        assert_refused(
            s.auth
                .authenticate(&connect_req(&json!({"token": token})))
                .await,
            Unauthenticated,
            part,
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn forged_expired_and_unsigned_tokens_are_refused() {
    let s = start(hs_config()).await;
    let signer = Signer::hmac(SECRET);
    let check = |token: String, part: &'static str| {
        let auth = s.auth.clone();
        async move {
            let r = auth
                .authenticate(&connect_req(&json!({"token": token})))
                .await;
            let e = r.as_ref().unwrap_err();
            assert!(!e.message.contains(&token), "message quotes the token");
            assert_refused(r, Unauthenticated, part);
        }
    };
    // Another secret.
    check(
        mint(
            "HS256",
            &claims(),
            &Signer::hmac("another-secret-of-at-least-32-bytes!!"),
        ),
        "signature is invalid",
    )
    .await;
    // Claims changed after signing (mid 42 → 1).
    let good = mint("HS256", &claims(), &signer);
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = b64(json!({"sub": "1", "exp": now() + 3600})
        .to_string()
        .as_bytes());
    check(
        format!("{}.{}.{}", parts[0], forged_claims, parts[2]),
        "signature is invalid",
    )
    .await;
    // Expired beyond the leeway; within the leeway still fine.
    check(
        mint("HS256", &json!({"sub": 42, "exp": now() - 120}), &signer),
        "expired",
    )
    .await;
    let id = s
        .auth
        .authenticate(&connect_req(
            &json!({"token": mint("HS256", &json!({"sub": 42, "exp": now() - 5}), &signer)}),
        ))
        .await
        .unwrap();
    assert_eq!(id.mid, 42);
    // Not valid yet.
    check(
        mint(
            "HS256",
            &json!({"sub": 42, "exp": now() + 600, "nbf": now() + 300}),
            &signer,
        ),
        "not valid yet",
    )
    .await;
    // No exp while require_exp (the default).
    check(mint("HS256", &json!({"sub": 42}), &signer), "no exp").await;
    // alg none, with and without a signature.
    let header = b64(json!({"alg": "none"}).to_string().as_bytes());
    let payload = b64(claims().to_string().as_bytes());
    check(format!("{header}.{payload}."), "alg none").await;
    check(format!("{header}.{payload}.{}", parts[2]), "alg none").await;
    // An algorithm outside the allow-list, though correctly signed.
    check(mint("HS512", &claims(), &signer), "HS512 is not allowed").await;
    // Critical extensions, garbage, JWE-shaped.
    check(
        mint_with_header(json!({"alg": "HS256", "crit": ["exp"]}), &claims(), &signer),
        "critical",
    )
    .await;
    check("not-a-token".into(), "compact form").await;
    check("a.b.c.d.e".into(), "compact form").await;
    check("!!.??.**".into(), "base64url").await;
    // No token at all.
    assert_refused(
        s.auth.authenticate(&connect_req(&json!({"mid": 42}))).await,
        Unauthenticated,
        "no token",
    );
    s.shutdown().await;
}

#[tokio::test]
async fn require_exp_off_accepts_tokens_without_expiry() {
    let mut cfg = hs_config();
    cfg.jwt.require_exp = false;
    let s = start(cfg).await;
    let token = mint("HS256", &json!({"sub": 7}), &Signer::hmac(SECRET));
    let id = s
        .auth
        .authenticate(&connect_req(&json!({"token": token})))
        .await
        .unwrap();
    assert_eq!((id.mid, id.grant.unwrap().expires_at), (7, 0));
    s.shutdown().await;
}

#[tokio::test]
async fn audience_and_issuer_are_checked_when_configured() {
    let mut cfg = hs_config();
    cfg.jwt.audience = "herald".into();
    cfg.jwt.issuer = "https://id.example".into();
    let s = start(cfg).await;
    let signer = Signer::hmac(SECRET);
    let with = |extra: serde_json::Value| {
        let mut c = claims();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        connect_req(&json!({"token": mint("HS256", &c, &signer)}))
    };
    let ok = s
        .auth
        .authenticate(&with(
            json!({"aud": ["other", "herald"], "iss": "https://id.example"}),
        ))
        .await;
    assert_eq!(ok.unwrap().mid, 42);
    let ok = s
        .auth
        .authenticate(&with(json!({"aud": "herald", "iss": "https://id.example"})))
        .await;
    assert!(ok.is_ok());
    assert_refused(
        s.auth
            .authenticate(&with(json!({"aud": "other", "iss": "https://id.example"})))
            .await,
        Unauthenticated,
        "audience",
    );
    assert_refused(
        s.auth
            .authenticate(&with(json!({"iss": "https://id.example"})))
            .await,
        Unauthenticated,
        "audience",
    );
    assert_refused(
        s.auth
            .authenticate(&with(
                json!({"aud": "herald", "iss": "https://evil.example"}),
            ))
            .await,
        Unauthenticated,
        "issuer",
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_body_is_held_to_the_claims() {
    let s = start(hs_config()).await;
    let signer = Signer::hmac(SECRET);
    let token = mint(
        "HS256",
        &json!({"sub": 42, "key": "k-42", "rooms": ["live://*"], "accepts": [1000, 1001], "exp": now() + 600}),
        &signer,
    );
    let auth = |body: serde_json::Value| {
        let mut body = body;
        body["token"] = json!(token);
        let auth = s.auth.clone();
        async move { auth.authenticate(&connect_req(&body)).await }
    };
    // What agrees with the claims passes; accepts are intersected.
    let id =
        auth(json!({"mid": 42, "key": "k-42", "room_id": "live://9", "accepts": [1001, 2000]}))
            .await
            .unwrap();
    assert_eq!(
        (id.room_id.as_str(), id.accepts.clone()),
        ("live://9", vec![1001])
    );
    assert_refused(
        auth(json!({"mid": 43})).await,
        Unauthenticated,
        "mid differs",
    );
    assert_refused(
        auth(json!({"key": "k-1"})).await,
        Unauthenticated,
        "key differs",
    );
    assert_refused(
        auth(json!({"room_id": "chat://1"})).await,
        Unauthenticated,
        "outside the rooms",
    );

    // Without a key claim the body's key is not taken.
    let token = mint("HS256", &claims(), &signer);
    let id = s
        .auth
        .authenticate(&connect_req(
            &json!({"token": token, "key": "victims-key", "accepts": [5]}),
        ))
        .await
        .unwrap();
    assert_eq!((id.key.as_str(), id.accepts.clone()), ("", vec![5]));
    s.shutdown().await;
}

#[tokio::test]
async fn websocket_clients_may_put_the_token_in_the_url() {
    let s = start(hs_config()).await;
    let signer = Signer::hmac(SECRET);
    let token = mint("HS256", &claims(), &signer);
    let id = s
        .auth
        .authenticate(&ws_connect(
            &json!({"room_id": "live://1"}),
            &format!("/sub?v=1&token={token}"),
        ))
        .await
        .unwrap();
    assert_eq!((id.mid, id.room_id.as_str()), (42, "live://1"));
    // An empty body is fine when the URL carries the token.
    let mut req = ws_connect(&json!({}), &format!("/sub?token={token}"));
    req.token = bytes::Bytes::new();
    assert_eq!(s.auth.authenticate(&req).await.unwrap().mid, 42);
    // The body wins over the URL.
    let other = mint("HS256", &json!({"sub": 7, "exp": now() + 60}), &signer);
    let id = s
        .auth
        .authenticate(&ws_connect(
            &json!({"token": other}),
            &format!("/sub?token={token}"),
        ))
        .await
        .unwrap();
    assert_eq!(id.mid, 7);
    // A forged URL token is refused like any other.
    let forged = mint(
        "HS256",
        &claims(),
        &Signer::hmac("another-secret-of-at-least-32-bytes!!"),
    );
    assert_refused(
        s.auth
            .authenticate(&ws_connect(&json!({}), &format!("/sub?token={forged}")))
            .await,
        Unauthenticated,
        "signature",
    );
    s.shutdown().await;
}

#[tokio::test]
async fn rsa_and_ecdsa_public_keys() {
    let rs = start(pem_config("rsa-a.pub.pem", &[])).await;
    let ok = mint("RS256", &claims(), &Signer::rsa("rsa-a"));
    assert_eq!(
        rs.auth
            .authenticate(&connect_req(&json!({"token": ok})))
            .await
            .unwrap()
            .mid,
        42
    );
    // Signed by another RSA key.
    let wrong = mint("RS256", &claims(), &Signer::rsa("rsa-b"));
    assert_refused(
        rs.auth
            .authenticate(&connect_req(&json!({"token": wrong})))
            .await,
        Unauthenticated,
        "signature is invalid",
    );
    // PS256 is not in the default list for an RSA key.
    let pss = mint("PS256", &claims(), &Signer::rsa("rsa-a"));
    assert_refused(
        rs.auth
            .authenticate(&connect_req(&json!({"token": pss})))
            .await,
        Unauthenticated,
        "PS256 is not allowed",
    );
    // Algorithm confusion: HS256 "signed" with the public key file's bytes as the
    // secret is refused (HS256 is not allowed for this key, and could not verify
    // with it anyway).
    let pem = std::fs::read_to_string(fixture("rsa-a.pub.pem")).unwrap();
    let confused = mint("HS256", &claims(), &Signer::hmac(&pem));
    assert_refused(
        rs.auth
            .authenticate(&connect_req(&json!({"token": confused})))
            .await,
        Unauthenticated,
        "HS256 is not allowed",
    );
    rs.shutdown().await;

    let both = start(pem_config("rsa-a.pub.pem", &["RS256", "PS256"])).await;
    let pss = mint("PS256", &claims(), &Signer::rsa("rsa-a"));
    assert!(both
        .auth
        .authenticate(&connect_req(&json!({"token": pss})))
        .await
        .is_ok());
    both.shutdown().await;

    let es = start(pem_config("ec-a.pub.pem", &[])).await;
    let ok = mint("ES256", &claims(), &Signer::ec());
    assert_eq!(
        es.auth
            .authenticate(&connect_req(&json!({"token": ok})))
            .await
            .unwrap()
            .mid,
        42
    );
    let rsa_signed = mint("RS256", &claims(), &Signer::rsa("rsa-a"));
    assert_refused(
        es.auth
            .authenticate(&connect_req(&json!({"token": rsa_signed})))
            .await,
        Unauthenticated,
        "RS256 is not allowed",
    );
    es.shutdown().await;
}

#[tokio::test]
async fn secret_file_is_read_without_its_newline() {
    let dir = std::env::temp_dir().join(format!("herald-auth-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    let cfg = AuthConfig {
        mode: AuthMode::Jwt,
        jwt: JwtConfig {
            secret_file: path,
            ..Default::default()
        },
        ..Default::default()
    };
    let s = start(cfg).await;
    let token = mint("HS256", &claims(), &Signer::hmac(SECRET));
    assert!(s
        .auth
        .authenticate(&connect_req(&json!({"token": token})))
        .await
        .is_ok());
    s.shutdown().await;
}

#[tokio::test]
async fn bad_configurations_are_clear_errors_at_start() {
    let err = |cfg: AuthConfig| async move {
        match try_start(cfg).await {
            Ok(_) => panic!("configuration accepted"),
            Err(e) => e.to_string(),
        }
    };
    let jwt = |f: fn(&mut JwtConfig)| {
        let mut cfg = AuthConfig {
            mode: AuthMode::Jwt,
            ..Default::default()
        };
        f(&mut cfg.jwt);
        cfg
    };
    let e = err(jwt(|_| {})).await;
    assert!(
        e.contains(
            "auth.mode = jwt needs auth.jwt.secret, secret_file, public_key_file or jwks_url"
        ),
        "{e}"
    );
    let e = err(jwt(|j| {
        j.secret = SECRET.into();
        j.jwks_url = "http://127.0.0.1:1/".into();
    }))
    .await;
    assert!(e.contains("only one of"), "{e}");
    let e = err(jwt(|j| j.secret = "short".into())).await;
    assert!(e.contains("at least 32"), "{e}");
    let e = err(jwt(|j| {
        j.secret = SECRET.into();
        j.algorithms = vec!["none".into()];
    }))
    .await;
    assert!(e.contains("never accepted"), "{e}");
    let e = err(jwt(|j| {
        j.secret = SECRET.into();
        j.algorithms = vec!["RS256".into()];
    }))
    .await;
    assert!(e.contains("does not fit"), "{e}");
    let e = err(pem_config("ec-a.pub.pem", &["RS256"])).await;
    assert!(e.contains("does not fit"), "{e}");
    let e = err(pem_config("README.md", &[])).await;
    assert!(
        e.contains("auth.jwt.public_key_file") && e.contains("README.md"),
        "{e}"
    );
    let e = err(pem_config("rsa-a.key.pem", &[])).await;
    assert!(e.contains("BEGIN PUBLIC KEY"), "{e}");
    let e = err(jwt(|j| j.jwks_url = "ftp://example.test/keys".into())).await;
    assert!(e.contains("http:// or https://"), "{e}");
    let e = err(jwt(|j| {
        j.jwks_url = "http://127.0.0.1:1/keys".into();
        j.algorithms = vec!["HS256".into()];
    }))
    .await;
    assert!(e.contains("public keys only"), "{e}");
}

#[tokio::test]
async fn trust_mode_is_goims() {
    let s = start(AuthConfig::default()).await;
    let id = s
        .auth
        .authenticate(&connect_req(
            &json!({"mid": 9, "key": "k", "room_id": "live://1", "accepts": [1]}),
        ))
        .await
        .unwrap();
    assert_eq!((id.mid, id.key.as_str(), id.grant), (9, "k", None));
    assert_eq!(s.auth.mode(), "trust");
    s.shutdown().await;
}
