//! The HTTP API's keys: scopes (401, 403, public routes), revocation, per-key
//! rates (429), the open API without keys, and the JSON push endpoints.

use herald::Config;
use herald_logic::api_keys::{hash_key, ApiKeyConfig, Scope};
use serde_json::json;

use crate::support::*;

const PUSH_KEY: &str = "hk_test_push_0123456789";
const READ_KEY: &str = "hk_test_read_0123456789";
const ADMIN_KEY: &str = "hk_test_admin_0123456789";

fn key(name: &str, secret: &str, scopes: &[Scope]) -> ApiKeyConfig {
    ApiKeyConfig {
        name: name.into(),
        hash: hash_key(secret),
        scopes: scopes.to_vec(),
        rate: 0,
        burst: 0,
    }
}

fn keyed_config() -> Config {
    let mut cfg = test_config();
    cfg.api.keys = vec![
        key("pusher", PUSH_KEY, &[Scope::Push]),
        key("reader", READ_KEY, &[Scope::Read]),
        key("ops", ADMIN_KEY, &[Scope::Admin]),
    ];
    cfg
}

fn bearer(k: &str) -> String {
    format!("Bearer {k}")
}

#[tokio::test]
async fn keys_and_scopes_guard_the_api() {
    let s = start_with(keyed_config()).await;
    let h = s.http_addr;
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(7, "sec-1", "live://sec", &[1000]).await;
    let push = "/goim/push/keys?operation=1000&keys=sec-1";

    let none = post(h, push, b"without a key").await;
    assert_eq!(none.status, 401, "{}", none.text());
    assert_eq!(none.json()["code"], -401);
    assert!(none
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));

    let pk = bearer("hk_not_a_configured_key");
    let unknown = http_with(h, "POST", push, &[("Authorization", &pk)], b"unknown key").await;
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.json()["message"], "unknown API key");
    assert!(unknown
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));

    let rk = bearer(READ_KEY);
    let scope = http_with(h, "POST", push, &[("Authorization", &rk)], b"read key").await;
    assert_eq!(scope.status, 403, "{}", scope.text());
    assert_eq!(scope.json()["code"], -403);
    assert!(scope.json()["message"].as_str().unwrap().contains("push"));
    assert!(scope
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));

    // The first push the client receives is the first authorised one: none of
    // the refused requests reached it.
    let pk = bearer(PUSH_KEY);
    let ok = http_with(h, "POST", push, &[("Authorization", &pk)], b"authorised").await;
    assert_eq!(ok.json(), json!({"code": 0, "message": ""}));
    assert_eq!(&c.recv_push().await.body[..], b"authorised");
    let x = http_with(h, "POST", push, &[("X-Api-Key", PUSH_KEY)], b"x-api-key").await;
    assert_eq!(x.status, 200, "{}", x.text());
    assert_eq!(&c.recv_push().await.body[..], b"x-api-key");

    // Reads need `read` (or `admin`); `/metrics` needs `admin`.
    let total = "/goim/online/total";
    assert_eq!(get(h, total).await.status, 401);
    assert_eq!(
        http_with(h, "GET", total, &[("Authorization", &pk)], b"")
            .await
            .status,
        403
    );
    for k in [READ_KEY, ADMIN_KEY] {
        let r = http_with(h, "GET", total, &[("Authorization", &bearer(k))], b"").await;
        assert_eq!(r.json()["code"], 0, "{}", r.text());
    }
    assert_eq!(get(h, "/metrics").await.status, 401);
    let m = http_with(h, "GET", "/metrics", &[("Authorization", &rk)], b"").await;
    assert_eq!(m.status, 403);
    let ak = bearer(ADMIN_KEY);
    let m = http_with(h, "GET", "/metrics", &[("Authorization", &ak)], b"").await;
    assert_eq!(m.status, 200);
    assert!(
        m.text().contains("herald_api_refused_total"),
        "{}",
        m.text()
    );
    let ji = http_with(
        h,
        "POST",
        "/herald/push/keys",
        &[("Authorization", &rk)],
        br#"{"keys":["sec-1"],"msg":"no"}"#,
    )
    .await;
    assert_eq!(ji.status, 403);

    // Public: what clients and browsers fetch before they have anything.
    let w = get(h, "/goim/nodes/weighted?platform=web").await;
    assert_eq!(w.json()["code"], 0, "{}", w.text());
    for page in ["/_/", "/_/app.js", "/_/sdk/herald.js"] {
        assert_eq!(get(h, page).await.status, 200, "{page}");
    }
    let cfg = get(h, "/_/config.json").await.json();
    assert_eq!(cfg["key_required"], true);
    assert_eq!(cfg["ws_port"], s.ws_addrs[0].port());
    assert_eq!(cfg["ws_path"], "/sub");
    // Unknown paths answer 404 with or without a key.
    assert_eq!(get(h, "/goim/nope").await.status, 404);
    s.shutdown().await;

    // Revoking is removing the entry: after a restart the key is unknown.
    let mut cfg = keyed_config();
    cfg.api.keys.retain(|k| k.name != "pusher");
    let s = start_with(cfg).await;
    let r = http_with(s.http_addr, "POST", push, &[("Authorization", &pk)], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "unknown API key");
    s.shutdown().await;
}

#[tokio::test]
async fn open_api_without_keys() {
    let s = start().await;
    let cfg = get(s.http_addr, "/_/config.json").await.json();
    assert_eq!(cfg["key_required"], false);
    let r = get(s.http_addr, "/goim/online/total").await;
    assert_eq!(r.json()["code"], 0);
    // A key sent to an open API is not checked.
    let r = http_with(
        s.http_addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer whatever")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_then_recovers() {
    let mut cfg = test_config();
    let mut k = key("limited", PUSH_KEY, &[Scope::Push, Scope::Read]);
    k.rate = 4;
    k.burst = 2;
    cfg.api.keys = vec![k];
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let auth = bearer(PUSH_KEY);
    let hdr = [("Authorization", auth.as_str())];
    let before = limit_hits("api_rate");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(http_with(h, "GET", "/goim/online/total", &hdr, b"").await);
    }
    assert_eq!(statuses[0].status, 200);
    assert_eq!(statuses[1].status, 200);
    let limited = &statuses[2];
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(limited.json()["code"], -429);
    assert_eq!(limited.header("retry-after").as_deref(), Some("1"));
    assert!(limit_hits("api_rate") > before);
    // The bucket refills at 4 requests/s.
    eventually("the key to be admitted again", || async {
        http_with(h, "GET", "/goim/online/total", &hdr, b"")
            .await
            .status
            == 200
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn json_pushes_reach_keys_and_mids() {
    let s = start().await;
    let h = s.http_addr;
    let mut a = Client::ws(s.ws_addrs[0]).await;
    a.auth(41, "json-a", "", &[1000, 1001]).await;
    let mut b = Client::tcp(s.tcp_addrs[0]).await;
    b.auth(42, "json-b", "", &[1000, 1001]).await;

    let r = post(
        h,
        "/herald/push/keys",
        br#"{"operation":1000,"keys":["json-a","json-b"],"msg":"to keys"}"#,
    )
    .await;
    assert_eq!(r.json(), json!({"code": 0, "message": ""}));
    for c in [&mut a, &mut b] {
        let f = c.recv_push().await;
        assert_eq!((f.op, &f.body[..]), (1000, &b"to keys"[..]));
    }
    // Binary messages travel as base64.
    let r = post(
        h,
        "/herald/push/mids",
        br#"{"operation":1001,"mids":[42],"msg_base64":"AAEC/w=="}"#,
    )
    .await;
    assert_eq!(r.json()["code"], 0, "{}", r.text());
    let f = b.recv_push().await;
    assert_eq!((f.op, &f.body[..]), (1001, &[0u8, 1, 2, 255][..]));

    let bad: &[(&str, &str, &str)] = &[
        (
            "/herald/push/keys",
            r#"{"keys":["a"],"msg":"x","msg_base64":"eA=="}"#,
            "not both",
        ),
        (
            "/herald/push/keys",
            r#"{"keys":["a"],"mesage":"x"}"#,
            "mesage",
        ),
        (
            "/herald/push/keys",
            r#"{"keys":[],"msg":"x"}"#,
            "keys is required",
        ),
        (
            "/herald/push/keys",
            r#"{"keys":[""],"msg":"x"}"#,
            "keys[0] is empty",
        ),
        (
            "/herald/push/keys",
            r#"{"mids":[1],"msg":"x"}"#,
            "/herald/push/mids",
        ),
        (
            "/herald/push/mids",
            r#"{"mids":["1"],"msg":"x"}"#,
            "invalid JSON",
        ),
        (
            "/herald/push/mids",
            r#"{"mids":[1],"msg_base64":"%%"}"#,
            "base64",
        ),
        ("/herald/push/mids", "not json", "invalid JSON"),
    ];
    for (path, body, why) in bad {
        let r = post(h, path, body.as_bytes()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap().to_string();
        assert!(msg.contains(why), "{body}: {msg}");
    }
    assert_eq!(get(h, "/herald/push/keys").await.status, 405);
    s.shutdown().await;
}

/// Liveness and readiness are public (probes carry no key) and say what they
/// checked.
#[tokio::test]
async fn health_endpoints_need_no_key() {
    let s = start_with(keyed_config()).await;
    let r = get(s.http_addr, "/healthz").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["status"], "alive");
    let r = get(s.http_addr, "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["status"], "ready");
    assert_eq!(r.json()["data"]["checks"]["draining"], "ok");
    // The API itself still needs its key.
    assert_eq!(get(s.http_addr, "/goim/online/total").await.status, 401);
    s.shutdown().await;
}
