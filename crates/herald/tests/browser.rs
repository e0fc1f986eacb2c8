//! The JavaScript client SDK (`web/sdk/herald.js`) and the demo page, in a real
//! headless Chromium driven over WebDriver (chromedriver), against standalone
//! servers on ephemeral loopback ports.
//!
//! Chromium and chromedriver are required: without them these tests fail, they
//! do not skip (`scripts/engines.sh` installs them as `browser`). The SDK is
//! loaded the way an application loads it, from the server's `/_/sdk/herald.js`,
//! by a test page (`web/sdk/test.html`) on another origin. Every wait is a poll
//! for a condition the page shows, with a deadline.

#![allow(clippy::unwrap_used)]

#[path = "e2e/support.rs"]
mod support;

#[path = "browser/harness.rs"]
mod harness;

use std::time::Duration;

use serde_json::{json, Value};

use harness::{push, Browser, Page, TestPage};
use support::*;

/// The SDK, with heartbeats and backoff short enough for tests.
fn client_options(ws: &str, auth: Value) -> Value {
    json!({
        "url": ws,
        "auth": auth,
        "heartbeat": {"interval": 1000, "timeout": 3000},
        "backoff": {"base": 100, "max": 1000},
        "authTimeout": 3000,
    })
}

fn texts(snapshot: &Value) -> Vec<String> {
    snapshot["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["text"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn count_events(snapshot: &Value, kind: &str) -> usize {
    snapshot["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["type"] == kind).count())
        .unwrap_or_default()
}

/// The SDK authenticates, gets a room push and a mid push from the HTTP API, and
/// unpacks op-9 batches: a burst of room pushes arrives complete and in order,
/// some of it batched.
#[tokio::test]
async fn sdk_receives_room_and_mid_pushes_in_order() {
    let mut cfg = test_config();
    // Pushes arriving within 100 ms of each other share a batch.
    cfg.job.room_window = Duration::from_millis(100);
    let s = start_with(cfg).await;
    let browser = Browser::start().await;
    let page = TestPage::open(&browser, &s).await;
    page.start(
        "c",
        client_options(
            &page.ws_url(),
            json!({"mid": 42, "key": "sdk-order", "room_id": "live://1000", "accepts": [1000]}),
        ),
    )
    .await;
    page.until("c", "authenticated", |s| s["state"] == "open")
        .await;

    push(
        &s,
        "/goim/push/room?operation=1000&type=live&room=1000",
        "room-1",
    )
    .await;
    page.until("c", "the room push", |s| texts(s) == ["room-1"])
        .await;
    push(&s, "/goim/push/mids?operation=1000&mids=42", "mid-1").await;
    let snap = page
        .until("c", "the mid push", |s| texts(s).len() == 2)
        .await;
    assert_eq!(texts(&snap), ["room-1", "mid-1"]);
    let first = &snap["messages"][0];
    assert_eq!(first["op"], 1000);
    assert_eq!(first["replayed"], false);

    // A burst: sent one after the other, faster than the batch window.
    let burst: Vec<String> = (1..=12).map(|i| format!("burst-{i}")).collect();
    for b in &burst {
        push(&s, "/goim/push/room?operation=1000&type=live&room=1000", b).await;
    }
    let mids: Vec<String> = (1..=5).map(|i| format!("mid-burst-{i}")).collect();
    for m in &mids {
        push(&s, "/goim/push/mids?operation=1000&mids=42", m).await;
    }
    let snap = page
        .until("c", "every burst message", |s| texts(s).len() >= 19)
        .await;
    let got = texts(&snap);
    let rooms: Vec<&String> = got.iter().filter(|t| t.starts_with("burst-")).collect();
    let mids_got: Vec<&String> = got.iter().filter(|t| t.starts_with("mid-burst-")).collect();
    assert_eq!(rooms, burst.iter().collect::<Vec<_>>(), "room burst order");
    assert_eq!(mids_got, mids.iter().collect::<Vec<_>>(), "mid burst order");
    assert_eq!(got.len(), 19, "no message twice: {got:?}");
    let batched = snap["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["batched"] == true)
        .count();
    assert!(
        batched >= 2,
        "the burst should have come in op-9 batches of several frames: {snap}"
    );
    assert_eq!(count_events(&snap, "error"), 0, "{snap}");
    page.screenshot("sdk-pushes").await;
    browser.quit().await;
    s.shutdown().await;
}

/// Room change, sub and unsub change what arrives; an upstream message is echoed.
#[tokio::test]
async fn room_change_and_accept_filter_change_what_arrives() {
    let s = start().await;
    let browser = Browser::start().await;
    let page = TestPage::open(&browser, &s).await;
    page.start(
        "c",
        client_options(
            &page.ws_url(),
            json!({"mid": 7, "key": "sdk-filter", "room_id": "live://1000", "accepts": [1000]}),
        ),
    )
    .await;
    page.until("c", "authenticated", |s| s["state"] == "open")
        .await;

    // Op 1001 is not accepted: a mid push of it is skipped, the marker after it
    // arrives.
    push(&s, "/goim/push/mids?operation=1001&mids=7", "filtered-1").await;
    push(&s, "/goim/push/mids?operation=1000&mids=7", "marker-1").await;
    page.until("c", "marker-1", |s| texts(s).contains(&"marker-1".into()))
        .await;

    let added = page.call("c", "sub", json!([[1001]])).await;
    assert_eq!(added, json!([1001]));
    push(&s, "/goim/push/mids?operation=1001&mids=7", "subbed-1001").await;
    let snap = page
        .until("c", "the op-1001 push after sub", |s| {
            texts(s).contains(&"subbed-1001".into())
        })
        .await;
    let m = snap["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["text"] == "subbed-1001")
        .unwrap();
    assert_eq!(m["op"], 1001);

    page.call("c", "unsub", json!([1001])).await;
    push(&s, "/goim/push/mids?operation=1001&mids=7", "filtered-2").await;
    push(&s, "/goim/push/mids?operation=1000&mids=7", "marker-2").await;
    page.until("c", "marker-2", |s| texts(s).contains(&"marker-2".into()))
        .await;

    let room = page.call("c", "changeRoom", json!(["live://1001"])).await;
    assert_eq!(room, "live://1001");
    push(
        &s,
        "/goim/push/room?operation=1000&type=live&room=1000",
        "old-room",
    )
    .await;
    push(
        &s,
        "/goim/push/room?operation=1000&type=live&room=1001",
        "new-room",
    )
    .await;
    page.until("c", "the new room's push", |s| {
        texts(s).contains(&"new-room".into())
    })
    .await;

    // Upstream: resolved by the server's echo.
    assert_eq!(
        page.call("c", "send", json!([1000, {"hello": "server"}]))
            .await,
        Value::Null
    );

    let snap = page.snapshot("c").await;
    assert_eq!(
        texts(&snap),
        ["marker-1", "subbed-1001", "marker-2", "new-room"],
        "what arrived: {snap}"
    );
    browser.quit().await;
    s.shutdown().await;
}

/// Heartbeat replies carry the room's online count, and it follows the members:
/// two clients see 2, and 1 again when the other leaves; the HTTP API agrees.
#[tokio::test]
async fn heartbeats_report_the_online_count() {
    let s = start().await;
    let browser = Browser::start().await;
    let page = TestPage::open(&browser, &s).await;
    let mut a = client_options(
        &page.ws_url(),
        json!({"mid": 1, "key": "hb-a", "room_id": "live://hb", "accepts": [1000]}),
    );
    a["heartbeat"] = json!({"interval": 200, "timeout": 3000});
    let mut b = a.clone();
    b["auth"] = json!({"mid": 2, "key": "hb-b", "room_id": "live://hb", "accepts": [1000]});
    page.start("a", a).await;
    page.start("b", b).await;
    page.until("a", "a heartbeat reply counting both", |s| s["online"] == 2)
        .await;
    let snap = page.snapshot("a").await;
    assert!(count_events(&snap, "heartbeat") >= 1);
    let api = poll_api(&s, "/goim/online/room?type=live&rooms=hb", |v| {
        v["data"]["hb"] == 2
    })
    .await;
    assert_eq!(api["code"], 0);

    page.call("b", "close", json!([])).await;
    page.until("a", "the count back at 1", |s| s["online"] == 1)
        .await;
    browser.quit().await;
    s.shutdown().await;
}

/// Credentials the server refuses (1008 "auth refused") end the client: it
/// reports the refusal and does not try again with the same credentials.
#[tokio::test]
async fn refused_credentials_are_not_retried() {
    let mut cfg = test_config();
    cfg.auth.mode = herald_logic::auth::AuthMode::Jwt;
    cfg.auth.jwt.secret = "browser-test-secret-of-32-bytes-or-more".into();
    let s = start_with(cfg).await;
    let browser = Browser::start().await;
    let page = TestPage::open(&browser, &s).await;
    page.start(
        "c",
        client_options(&page.ws_url(), json!({"token": "not-a-valid-token"})),
    )
    .await;
    let snap = page
        .until("c", "the client to give up", |s| s["state"] == "closed")
        .await;
    let close = snap["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "close")
        .expect("a close event");
    assert_eq!(close["code"], 1008, "{snap}");
    assert_eq!(close["willReconnect"], false);
    let err = snap["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "error")
        .expect("an error event");
    assert_eq!(err["error"]["code"], "auth_refused");
    assert_eq!(snap["stats"]["connects"], 1, "one try only: {snap}");
    assert_eq!(count_events(&snap, "reconnecting"), 0);
    browser.quit().await;
    s.shutdown().await;
}

/// A server that goes away and comes back on the same address: the client
/// retries with growing, jittered delays, gets back in by itself and receives
/// pushes again.
#[tokio::test]
async fn server_restart_is_survived_with_backoff() {
    let mut cfg = test_config();
    cfg.shutdown.drain = Duration::from_millis(100);
    let s = start_with(cfg.clone()).await;
    let browser = Browser::start().await;
    let page = TestPage::open(&browser, &s).await;
    let mut opts = client_options(
        &page.ws_url(),
        json!({"mid": 5, "key": "restart-1", "room_id": "live://r", "accepts": [1000]}),
    );
    opts["backoff"] = json!({"base": 200, "max": 800});
    page.start("c", opts).await;
    page.until("c", "authenticated", |s| s["state"] == "open")
        .await;
    push(
        &s,
        "/goim/push/room?operation=1000&type=live&room=r",
        "before",
    )
    .await;
    page.until("c", "the first push", |s| texts(s) == ["before"])
        .await;

    let (ws, http) = (s.ws_addrs[0], s.http_addr);
    s.shutdown().await;
    // Retries fail while the server is away (two at least, to see the delays).
    let snap = page
        .until("c", "retries while the server is down", |s| {
            count_events(s, "reconnecting") >= 3
        })
        .await;
    let attempts: Vec<&Value> = snap["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "reconnecting")
        .collect();
    for (i, e) in attempts.iter().enumerate() {
        assert_eq!(e["attempt"], i as u64 + 1, "attempts count up: {snap}");
        let delay = e["delay"].as_u64().unwrap();
        let cap = (200u64 << i).min(800);
        assert!(delay <= cap, "attempt {}: delay {delay} over {cap}", i + 1);
    }

    let mut again = cfg;
    again.comet.ws_bind = vec![ws];
    again.logic.http_bind = Some(http);
    let s = start_with(again).await;
    page.until("c", "back in", |s| s["stats"]["authenticated"] == 2)
        .await;
    push(
        &s,
        "/goim/push/room?operation=1000&type=live&room=r",
        "after",
    )
    .await;
    let snap = page
        .until("c", "a push after the restart", |s| {
            texts(s) == ["before", "after"]
        })
        .await;
    assert_eq!(snap["state"], "open");
    browser.quit().await;
    s.shutdown().await;
}

/// The demo page, on the SDK: it connects where `/_/config.json` says, shows a
/// push sent from its own form in the log, and shows the connection's streams.
#[tokio::test]
async fn demo_page_connects_and_shows_a_push() {
    let s = start().await;
    let browser = Browser::start().await;
    let page = Page::new(&browser);
    page.goto(&format!("http://{}/_/", s.http_addr)).await;
    let url = page
        .until_js(
            "the WebSocket URL from config.json",
            "return document.getElementById('c-url').value || null",
        )
        .await;
    assert_eq!(
        url,
        format!("ws://127.0.0.1:{}/sub", s.ws_addrs[0].port()),
        "the page connects where the server says"
    );
    page.click("#btn-connect").await;
    page.until_js(
        "the status badge to say authenticated",
        "const t = document.getElementById('status').textContent; return t === 'authenticated' ? t : null",
    )
    .await;
    page.until_js(
        "a heartbeat reply shown",
        "const t = document.getElementById('o-hb').textContent; return /^[0-9]+$/.test(t) ? t : null",
    )
    .await;

    page.set_value("#p-msg", r#"{"hello":"from the demo form"}"#)
        .await;
    page.click("#push-form button[type=submit]").await;
    let line = page
        .until_js(
            "the push in the message log",
            "const l = [...document.querySelectorAll('#log .line-push')].map(e => e.textContent).find(t => t.includes('from the demo form')); return l || null",
        )
        .await;
    assert!(line.as_str().unwrap().contains("op 1000"), "{line}");
    // The HTTP request is logged too, with the API's answer.
    page.until_js(
        "the POST in the log",
        "const l = [...document.querySelectorAll('#log .line-http')].map(e => e.textContent).find(t => t.includes('/goim/push/room')); return l || null",
    )
    .await;
    // Room change from the session controls: its reply is logged.
    page.click("#btn-room").await;
    page.until_js(
        "the room change reply",
        "const l = [...document.querySelectorAll('#log .line-reply')].map(e => e.textContent).find(t => t.includes('live://1001')); return l || null",
    )
    .await;
    let errors = page
        .js("return [...document.querySelectorAll('#log .line-error')].map(e => e.textContent)")
        .await;
    assert_eq!(errors, json!([]), "the log shows errors");
    page.screenshot("demo").await;
    browser.quit().await;
    s.shutdown().await;
}

/// `/goim/...` answers of the HTTP API, polled until `want` holds.
async fn poll_api(s: &herald::Standalone, path: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http(s.http_addr, "GET", path, b"").await;
        let v = r.json();
        if want(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never satisfied the test: last answer {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
