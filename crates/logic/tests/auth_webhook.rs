//! `webhook` mode against a backend on loopback: what it is sent, how its answer
//! becomes the identity, and that every failure refuses the client.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald_rpc::ErrorKind::{Unauthenticated, Unavailable};
use serde_json::json;
use support::*;

#[tokio::test]
async fn allow_sends_the_connect_and_applies_the_answer() {
    let backend = Backend::start().await;
    backend.answer(
        200,
        r#"{"allow":true,"mid":"42","key":"k-42","room_id":"live://1","rooms":["live://*"],
            "accepts":[1000,1001],"expires_at":1900000000}"#,
    );
    let s = start(hook_config(&backend.url)).await;
    let body = json!({"mid": 42, "room_id": "live://7", "accepts": [1001, 5], "token": "opaque"});
    let mut req = ws_connect(&body, "/sub?x=1");
    req.cookie = "sid=1".into();
    let id = s.auth.authenticate(&req).await.unwrap();
    assert_eq!(
        (
            id.mid,
            id.key.as_str(),
            id.room_id.as_str(),
            id.accepts.clone()
        ),
        (42, "k-42", "live://7", vec![1001])
    );
    let grant = id.grant.unwrap();
    assert_eq!(grant.expires_at, 1_900_000_000);
    assert!(!grant.any_room && grant.allows_room("live://9") && !grant.allows_room("chat://1"));
    assert!(!grant.any_op && grant.allows_op(1000) && !grant.allows_op(5));

    let (headers, sent) = backend.last();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-herald-secret"], "s3cret");
    assert_eq!(
        sent,
        json!({
            "server": "comet-1",
            "client_addr": "203.0.113.9:40000",
            "headers": {":path": "/sub?x=1", "host": "example.test"},
            "cookie": "sid=1",
            "body": body,
        })
    );

    // The body is held to the answer.
    for (body, part) in [
        (json!({"key": "someone-elses"}), "key differs"),
        (json!({"mid": 7}), "mid differs"),
        (json!({"room_id": "chat://1"}), "outside the rooms"),
    ] {
        assert_refused(
            s.auth.authenticate(&connect_req(&body)).await,
            Unauthenticated,
            part,
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_sent_as_a_string() {
    let backend = Backend::start().await;
    backend.answer(200, r#"{"allow":true,"mid":5}"#);
    let s = start(hook_config(&backend.url)).await;
    let id = s
        .auth
        .authenticate(&connect_raw(b"opaque-session-id".to_vec()))
        .await
        .unwrap();
    // No key in the answer: logic generates one; nothing restricted.
    assert_eq!((id.mid, id.key.as_str()), (5, ""));
    let grant = id.grant.unwrap();
    assert!(grant.any_room && grant.any_op && grant.expires_at == 0);
    assert_eq!(backend.last().1["body"], json!("opaque-session-id"));
    assert_eq!(backend.last().1["headers"], json!({}));
    s.shutdown().await;
}

#[tokio::test]
async fn deny_is_a_refusal_with_the_reason() {
    let backend = Backend::start().await;
    backend.answer(200, r#"{"allow":false,"reason":"banned until Monday"}"#);
    let s = start(hook_config(&backend.url)).await;
    assert_refused(
        s.auth.authenticate(&connect_req(&json!({"mid": 1}))).await,
        Unauthenticated,
        "banned until Monday",
    );
    s.shutdown().await;
}

#[tokio::test]
async fn failures_never_let_a_client_in() {
    let backend = Backend::start().await;
    let s = start(hook_config(&backend.url)).await;
    let big = format!(
        r#"{{"allow":true,"mid":1,"reason":"{}"}}"#,
        "x".repeat(70_000)
    );
    for (status, answer, part) in [
        (500, r#"{"allow":true,"mid":1}"#, "answered 500"),
        (403, r#"{"allow":true,"mid":1}"#, "answered 403"),
        (200, "garbage", "not {\"allow\""),
        (200, r#"{"allow":"yes","mid":1}"#, "not {\"allow\""),
        (200, r#"{"mid":1}"#, "not {\"allow\""),
        (200, r#"{"allow":true}"#, "without a mid"),
        (200, big.as_str(), "larger than"),
    ] {
        backend.answer(status, answer);
        assert_refused(
            s.auth.authenticate(&connect_req(&json!({"mid": 1}))).await,
            Unavailable,
            part,
        );
    }
    s.shutdown().await;

    // Nobody listening.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth", closed.local_addr().unwrap());
    drop(closed);
    let s = start(hook_config(&url)).await;
    assert_refused(
        s.auth.authenticate(&connect_req(&json!({"mid": 1}))).await,
        Unavailable,
        "cannot connect",
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_hanging_backend_is_a_refusal_after_the_timeout() {
    let backend = Backend::start().await;
    backend.answer(200, r#"{"allow":true,"mid":1}"#);
    backend.hold();
    let mut cfg = hook_config(&backend.url);
    cfg.webhook.timeout = Duration::from_millis(300);
    let s = start(cfg).await;
    let began = tokio::time::Instant::now();
    assert_refused(
        s.auth.authenticate(&connect_req(&json!({"mid": 1}))).await,
        Unavailable,
        "no answer within",
    );
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // Once it answers again, connects pass.
    backend.release();
    assert_eq!(
        s.auth
            .authenticate(&connect_req(&json!({"mid": 1})))
            .await
            .unwrap()
            .mid,
        1
    );
    s.shutdown().await;
}

#[tokio::test]
async fn calls_in_flight_are_bounded_and_the_rest_wait_for_a_slot() {
    let backend = Backend::start().await;
    backend.answer(200, r#"{"allow":true,"mid":3}"#);
    backend.hold();
    let mut cfg = hook_config(&backend.url);
    cfg.webhook.concurrency = 2;
    cfg.webhook.timeout = Duration::from_secs(10);
    let s = start(cfg).await;
    let connects: Vec<_> = (0..6)
        .map(|_| {
            let auth = Arc::clone(&s.auth);
            tokio::spawn(async move { auth.authenticate(&connect_req(&json!({}))).await })
        })
        .collect();
    eventually("two calls held by the backend", || async {
        backend.in_flight() == 2
    })
    .await;
    backend.release();
    for c in connects {
        assert_eq!(c.await.unwrap().unwrap().mid, 3);
    }
    assert_eq!(backend.max_in_flight(), 2);
    assert_eq!(
        backend
            .state
            .calls
            .load(std::sync::atomic::Ordering::SeqCst),
        6
    );
    s.shutdown().await;
}

/// A connect that gave up on a slow backend leaves its call running there: the
/// slot stays taken until the backend answers, so the backend never works on more
/// than `concurrency` calls, however many clients connect meanwhile.
#[tokio::test]
async fn a_slow_backend_never_gets_more_than_concurrency_calls() {
    let backend = Backend::start().await;
    backend.answer(200, r#"{"allow":true,"mid":4}"#);
    backend.hold();
    let mut cfg = hook_config(&backend.url);
    cfg.webhook.concurrency = 3;
    cfg.webhook.timeout = Duration::from_millis(300);
    let s = start(cfg).await;
    // Three waves of connects, each timing out while the backend holds its calls.
    for _ in 0..3 {
        let connects: Vec<_> = (0..10)
            .map(|_| {
                let auth = Arc::clone(&s.auth);
                tokio::spawn(async move { auth.authenticate(&connect_req(&json!({}))).await })
            })
            .collect();
        for c in connects {
            assert_refused(c.await.unwrap(), Unavailable, "");
        }
    }
    assert_eq!(backend.max_in_flight(), 3);
    // Once the backend answers, slots come back and connects pass.
    backend.release();
    eventually("a connect to pass again", || async {
        s.auth.authenticate(&connect_req(&json!({}))).await.is_ok()
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn bad_configurations_are_clear_errors_at_start() {
    let err = |f: fn(&mut herald_logic::auth::WebhookConfig)| async move {
        let mut cfg = hook_config("http://127.0.0.1:1/auth");
        f(&mut cfg.webhook);
        match try_start(cfg).await {
            Ok(_) => panic!("configuration accepted"),
            Err(e) => e.to_string(),
        }
    };
    let e = err(|w| w.url = String::new()).await;
    assert!(
        e.contains("auth.mode = webhook needs auth.webhook.url"),
        "{e}"
    );
    let e = err(|w| w.url = "ftp://example.test/auth".into()).await;
    assert!(e.contains("http:// or https://"), "{e}");
    let e = err(|w| w.concurrency = 0).await;
    assert!(e.contains("concurrency"), "{e}");
    let e = err(|w| w.timeout = Duration::ZERO).await;
    assert!(e.contains("timeout"), "{e}");
    let e = err(|w| {
        w.headers.insert("bad header".into(), "v".into());
    })
    .await;
    assert!(e.contains("not a header name"), "{e}");
    let e = err(|w| {
        w.url = "https://127.0.0.1:1/auth".into();
        w.tls.ca_file = "/nonexistent/ca.pem".into();
    })
    .await;
    assert!(
        e.contains("auth.webhook.tls") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
}

#[tokio::test]
async fn https_backend_behind_a_private_ca() {
    let backend = TlsBackend::start(r#"{"allow":true,"mid":77}"#).await;
    let mut cfg = hook_config(&backend.url);
    cfg.webhook.tls.ca_file = backend.ca_file.clone();
    let s = start(cfg).await;
    let id = s
        .auth
        .authenticate(&connect_req(&json!({"mid": 77})))
        .await
        .unwrap();
    assert_eq!(id.mid, 77);
    s.shutdown().await;

    // Trusting another CA, or only the public roots: no connection, refused.
    for ca in [Some(backend.other_ca_file.clone()), None] {
        let mut cfg = hook_config(&backend.url);
        if let Some(ca) = ca {
            cfg.webhook.tls.ca_file = ca;
        }
        let s = start(cfg).await;
        assert_refused(
            s.auth.authenticate(&connect_req(&json!({"mid": 77}))).await,
            Unavailable,
            "cannot connect",
        );
        s.shutdown().await;
    }
}
