//! The HTTP API's edge: API keys and scopes, per-key rates, the listener's
//! connection and time limits, HTTPS with a certificate reloaded in place, the
//! recipient and head limits, and the JSON push endpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::Config;
use herald_logic::api_keys::{hash_key, ApiKeyConfig, Scope};
use herald_tls::rustls;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    for page in ["/_/", "/_/app.js", "/_/goim.js"] {
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
async fn idle_connections_are_closed_after_idle_timeout() {
    let mut cfg = test_config();
    cfg.limits.http.idle_timeout = Duration::from_millis(400);
    let s = start_with(cfg).await;
    let before = limit_hits("http_idle_timeout");
    let mut conn = TcpStream::connect(s.http_addr).await.unwrap();
    write_request(&mut conn, "GET", "/goim/online/total", &[], b"").await;
    assert_eq!(read_response(&mut conn).await.json()["code"], 0);
    // Still open for a second request inside the idle time.
    write_request(&mut conn, "GET", "/goim/online/total", &[], b"").await;
    assert_eq!(read_response(&mut conn).await.json()["code"], 0);
    let idle_from = Instant::now();
    wait_closed(&mut conn).await;
    assert!(
        idle_from.elapsed() >= Duration::from_millis(350),
        "closed after {:?}",
        idle_from.elapsed()
    );
    assert!(limit_hits("http_idle_timeout") > before);
    s.shutdown().await;
}

#[tokio::test]
async fn a_head_sent_byte_by_byte_is_cut_off_with_408() {
    let mut cfg = test_config();
    cfg.limits.http.header_timeout = Duration::from_millis(500);
    let s = start_with(cfg).await;
    let before = limit_hits("http_header_timeout");
    let conn = TcpStream::connect(s.http_addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let started = Instant::now();
    // Never finishes its head: one byte every 50 ms, forever.
    let drip = tokio::spawn(async move {
        let head = b"POST /goim/push/all?operation=1000 HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        for b in head.iter().chain(std::iter::repeat(&b'a')) {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Meanwhile the API serves others.
    assert_eq!(
        get(s.http_addr, "/goim/online/total").await.json()["code"],
        0
    );
    let r = read_response(&mut rd).await;
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.json()["code"], -408);
    assert!(started.elapsed() >= Duration::from_millis(450));
    wait_closed(&mut rd).await;
    drip.abort();
    assert!(limit_hits("http_header_timeout") > before);
    s.shutdown().await;
}

#[tokio::test]
async fn at_the_connection_cap_a_pusher_waits_for_a_free_slot() {
    let mut cfg = test_config();
    cfg.limits.http.max_connections = 3;
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(1, "cap-1", "", &[1000]).await;
    let before = limit_hits("http_connections");
    // Three kept-alive connections, each proven accepted by an answer.
    let mut hogs = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(h).await.unwrap();
        write_request(&mut conn, "GET", "/goim/online/total", &[], b"").await;
        assert_eq!(read_response(&mut conn).await.status, 200);
        hogs.push(conn);
    }
    eventually("the listener to reach its cap", || async {
        limit_hits("http_connections") > before
    })
    .await;
    // A fourth connection waits in the backlog: its push is not answered...
    let mut pusher = tokio::spawn(async move {
        post(
            h,
            "/goim/push/keys?operation=1000&keys=cap-1",
            b"after the cap",
        )
        .await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut pusher)
            .await
            .is_err(),
        "a connection over the cap was served"
    );
    // ...until a slot is released; then it is served, and delivered.
    hogs.pop();
    let r = pusher.await.unwrap();
    assert_eq!(r.json(), json!({"code": 0, "message": ""}));
    assert_eq!(&c.recv_push().await.body[..], b"after the cap");
    s.shutdown().await;
}

#[tokio::test]
async fn silent_connections_at_the_cap_are_reclaimed_for_a_pusher() {
    let mut cfg = test_config();
    cfg.limits.http.max_connections = 3;
    cfg.limits.http.header_timeout = Duration::from_millis(300);
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(1, "cap-2", "", &[1000]).await;
    // Connections that never send a byte hold every slot...
    let mut hogs = Vec::new();
    for _ in 0..3 {
        hogs.push(TcpStream::connect(h).await.unwrap());
    }
    // ...and still the pusher gets through once the header timer (a new
    // connection owes its first request within it) frees one.
    let r = post(h, "/goim/push/keys?operation=1000&keys=cap-2", b"reclaimed").await;
    assert_eq!(r.json(), json!({"code": 0, "message": ""}));
    assert_eq!(&c.recv_push().await.body[..], b"reclaimed");
    // They asked nothing and are told nothing: closed without an answer.
    for hog in &mut hogs {
        let mut got = Vec::new();
        let r = tokio::time::timeout(WAIT, hog.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "a silent connection was kept open");
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    s.shutdown().await;
}

#[tokio::test]
async fn connections_per_ip_are_limited() {
    let mut cfg = test_config();
    cfg.limits.http.connections_per_ip = 2;
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let before = limit_hits("http_connections_per_ip");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(h).await.unwrap();
        write_request(&mut conn, "GET", "/goim/online/total", &[], b"").await;
        assert_eq!(read_response(&mut conn).await.status, 200);
        held.push(conn);
    }
    // X-Forwarded-For from a peer that is not a trusted proxy changes nothing.
    let r = http_with(
        h,
        "GET",
        "/goim/online/total",
        &[("X-Forwarded-For", "198.51.100.1")],
        b"",
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["code"], -429);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("connections_per_ip"));
    assert!(limit_hits("http_connections_per_ip") > before);
    held.pop();
    eventually("a released slot to be usable", || async {
        get(h, "/goim/online/total").await.status == 200
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_counted_by_forwarded_address() {
    let mut cfg = test_config();
    cfg.limits.http.connections_per_ip = 1;
    cfg.limits.trusted_proxies =
        herald_limits::TrustedProxies(vec!["127.0.0.0/8".parse().unwrap()]);
    let s = start_with(cfg).await;
    let h = s.http_addr;
    // The proxy's own connections are not capped per address.
    let mut pool = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(h).await.unwrap();
        write_request(&mut conn, "GET", "/goim/online/total", &[], b"").await;
        assert_eq!(read_response(&mut conn).await.status, 200);
        pool.push(conn);
    }
    // A request from client 203.0.113.7 in progress (its body has not arrived)...
    let xff = [("X-Forwarded-For", "192.0.2.1, 203.0.113.7")];
    let mut slow = pool.pop().unwrap();
    slow.write_all(
        b"POST /goim/push/all?operation=1000 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    // ...so a second one from the same client is refused while it lasts (the
    // rightmost untrusted address is the client; the left one is its claim)...
    eventually("the slow request to be counted", || async {
        http_with(h, "GET", "/goim/online/total", &xff, b"")
            .await
            .status
            == 429
    })
    .await;
    let r = http_with(h, "GET", "/goim/online/total", &xff, b"").await;
    assert_eq!(r.json()["code"], -429);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("203.0.113.7"));
    // ...while another client behind the same proxy is served.
    let other = [("X-Forwarded-For", "203.0.113.8")];
    assert_eq!(
        http_with(h, "GET", "/goim/online/total", &other, b"")
            .await
            .status,
        200
    );
    // Once its request completes, the client is admitted again.
    slow.write_all(b"hello").await.unwrap();
    assert_eq!(read_response(&mut slow).await.json()["code"], 0);
    assert_eq!(
        http_with(h, "GET", "/goim/online/total", &xff, b"")
            .await
            .status,
        200
    );
    s.shutdown().await;
}

#[tokio::test]
async fn recipient_and_head_limits() {
    let mut cfg = test_config();
    cfg.limits.http.max_recipients = 3;
    cfg.limits.http.max_header_bytes = 16 * 1024;
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let r = post(h, "/goim/push/keys?keys=a&keys=b&keys=c&keys=d", b"x").await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["code"], -400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("max_recipients"));
    let r = post(h, "/goim/push/mids?mids=1&mids=2&mids=3&mids=4", b"x").await;
    assert_eq!(r.status, 413);
    let r = post(h, "/herald/push/mids", br#"{"mids":[1,2,3,4],"msg":"x"}"#).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        post(h, "/goim/push/keys?keys=a&keys=b&keys=c", b"x")
            .await
            .status,
        200
    );

    // A head over max_header_bytes: 431 in the envelope, pointing at the JSON pushes.
    let before = limit_hits("http_header_bytes");
    let long: String = (0..2000).map(|i| format!("keys=k{i:05}&")).collect();
    let r = post(h, &format!("/goim/push/keys?{long}"), b"x").await;
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.json()["code"], -431);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("/herald/push/keys"));
    assert!(limit_hits("http_header_bytes") > before);
    s.shutdown().await;

    // With the default head limit, a target over 64 KiB: 414 in the envelope.
    let s = start().await;
    let long: String = (0..7000).map(|i| format!("keys=k{i:05}&")).collect();
    let r = post(s.http_addr, &format!("/goim/push/keys?{long}"), b"x").await;
    assert_eq!(r.status, 414, "{}", r.text());
    assert_eq!(r.json()["code"], -414);
    // Just under hyper's target limit still works (and counts its keys).
    let fits: String = (0..5000).map(|i| format!("keys=k{i:05}&")).collect();
    let r = post(s.http_addr, &format!("/goim/push/keys?{fits}"), b"x").await;
    assert_eq!(r.json()["code"], 0, "{}", r.text());
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
