//! The JavaScript client SDK (`web/sdk/herald.js`), the demo page and the chat's
//! pages (`browser/chat.rs`), in a real
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

#[path = "browser/chat.rs"]
mod chat;

use std::time::Duration;

use serde_json::{json, Value};

use harness::{push, Browser, Net, Page, Proxy, TestPage};
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

/// History on for `live://` rooms and for members.
fn history_config() -> herald::Config {
    let mut cfg = test_config();
    let keep = herald_logic::StreamHistory {
        size: 500,
        ttl: Duration::from_secs(300),
    };
    cfg.history.rooms.insert("live".into(), keep);
    cfg.history.mids = Some(keep);
    cfg
}

/// The statuses of the `n`-th op-25 frame a client got, by stream name.
fn statuses(snapshot: &Value, n: usize) -> std::collections::BTreeMap<String, String> {
    snapshot["streams"][n]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["stream"].as_str().unwrap_or_default().to_string(),
                        s["status"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn op25_count(snapshot: &Value) -> usize {
    snapshot["streams"].as_array().map_or(0, Vec::len)
}

fn messages(snapshot: &Value) -> Vec<Value> {
    snapshot["messages"].as_array().cloned().unwrap_or_default()
}

fn events<'a>(snapshot: &'a Value, kind: &str) -> Vec<&'a Value> {
    snapshot["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["type"] == kind).collect())
        .unwrap_or_default()
}

/// Checks that the messages of `stream` in `got` have consecutive offsets from
/// `from`, and returns their texts in order.
fn stream_texts(got: &[Value], stream: &str, from: u64) -> Vec<String> {
    let mine: Vec<&Value> = got.iter().filter(|m| m["stream"] == stream).collect();
    for (i, m) in mine.iter().enumerate() {
        assert_eq!(
            m["offset"].as_u64(),
            Some(from + i as u64),
            "{stream}: offsets must follow one another: {mine:?}"
        );
    }
    mine.iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
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

/// Room change, sub and unsub change what arrives (with history on, so through
/// positioned pushes); an upstream message is echoed.
#[tokio::test]
async fn room_change_and_accept_filter_change_what_arrives() {
    let s = start_with(history_config()).await;
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
    // With history on, the room change started the new room's stream afresh
    // (op 25), and the old room's position was dropped.
    let last = op25_count(&snap) - 1;
    assert_eq!(statuses(&snap, last)["live://1001"], "fresh", "{snap}");
    assert!(snap["positions"].get("live://1000").is_none(), "{snap}");
    let new_room = messages(&snap).pop().unwrap();
    assert_eq!(new_room["stream"], "live://1001");
    assert_eq!(new_room["offset"], 1);
    // Skipped by the filter, the member's pushes left no gap in what arrived.
    let mids: Vec<u64> = messages(&snap)
        .iter()
        .filter(|m| m["stream"] == "mid:7")
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(mids, [2, 3, 5], "filtered offsets 1 and 4 skipped: {snap}");
    assert_eq!(snap["stats"]["duplicates"], 0);
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

/// Expiring credentials (jwt): `refresh()` keeps a connection alive past its
/// token's expiry (and later reconnects use the fresh token); a connection left
/// to expire is closed with 4001 and comes back only when its auth callback can
/// give new credentials.
#[tokio::test]
async fn expiring_credentials_refresh_or_reconnect_fresh() {
    const SECRET: &str = "browser-test-secret-of-32-bytes-or-more";
    let mut cfg = test_config();
    cfg.auth.mode = herald_logic::auth::AuthMode::Jwt;
    cfg.auth.jwt.secret = SECRET.into();
    cfg.auth.jwt.leeway = Duration::ZERO;
    let s = start_with(cfg).await;
    let token = |sub: &str, key: &str, exp: i64| {
        jwt_hs256(&json!({"sub": sub, "key": key, "exp": exp}), SECRET)
    };
    let browser = Browser::start().await;
    let page = TestPage::open(&browser, &s).await;
    // Valid for 2 to 3 s from here: time to connect, not to wait for the test.
    let soon = unix_now() + 3;
    page.start(
        "kept",
        client_options(
            &page.ws_url(),
            json!({"token": token("2", "keep", soon), "accepts": [1000]}),
        ),
    )
    .await;
    let mut lapsing = client_options(&page.ws_url(), Value::Null);
    lapsing["authSequence"] = json!([
        {"token": token("3", "lapse", soon), "accepts": [1000]},
        {"token": token("3", "lapse", unix_now() + 600), "accepts": [1000]},
    ]);
    page.start("lapse", lapsing).await;
    page.start(
        "static",
        client_options(
            &page.ws_url(),
            json!({"token": token("4", "static", soon), "accepts": [1000]}),
        ),
    )
    .await;
    for c in ["kept", "lapse", "static"] {
        page.until(c, "authenticated", |s| s["state"] == "open")
            .await;
    }

    let reply = page
        .call(
            "kept",
            "refresh",
            json!([{"token": token("2", "keep", unix_now() + 600)}]),
        )
        .await;
    assert_eq!(reply["code"], 0, "{reply}");
    assert!(reply["expires_at"].as_i64().unwrap() > soon, "{reply}");
    let refused = page
        .call_result(
            "kept",
            "refresh",
            json!([{"token": token("9", "", unix_now() + 600)}]),
        )
        .await;
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["code"], -403, "someone else's token: {refused}");

    // At the expiry: the callback's fresh token brings "lapse" back…
    let snap = page
        .until("lapse", "a reconnect with fresh credentials", |s| {
            s["stats"]["authenticated"] == 2 && s["state"] == "open"
        })
        .await;
    let close = events(&snap, "close")[0].clone();
    assert_eq!(close["code"], 4001, "{snap}");
    assert_eq!(close["willReconnect"], true);
    // …while the same expired token is not tried again.
    let snap = page
        .until("static", "the client to stop", |s| s["state"] == "closed")
        .await;
    assert_eq!(events(&snap, "close")[0]["code"], 4001);
    assert_eq!(events(&snap, "error")[0]["error"]["code"], "expired");
    assert_eq!(snap["stats"]["connects"], 1);

    // The refreshed connection lived on, and a reconnect now (its first token
    // long expired) authenticates with the refreshed one.
    let snap = page.snapshot("kept").await;
    assert_eq!(snap["state"], "open");
    assert_eq!(snap["stats"]["connects"], 1, "{snap}");
    page.call("kept", "reconnect", json!([])).await;
    page.until("kept", "back in", |s| s["stats"]["authenticated"] == 2)
        .await;
    push(&s, "/goim/push/keys?operation=1000&keys=keep", "kept").await;
    push(&s, "/goim/push/keys?operation=1000&keys=lapse", "back").await;
    page.until("kept", "a push", |s| texts(s) == ["kept"]).await;
    page.until("lapse", "a push", |s| texts(s) == ["back"])
        .await;
    browser.quit().await;
    s.shutdown().await;
}

/// A server that goes away and comes back on the same address: the client
/// retries with growing, jittered delays, gets back in by itself, is told to
/// reload (the history lived in the old process) and receives pushes again.
#[tokio::test]
async fn server_restart_is_survived_with_backoff() {
    let mut cfg = history_config();
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
    // The history lived in the old process: the room's epoch is new, what was
    // missed cannot be known, and the client is told to reload.
    let snap = page
        .until("c", "the reload", |s| count_events(s, "reload") >= 1)
        .await;
    let reload = events(&snap, "reload")[0].clone();
    assert_eq!(reload["stream"], "live://r", "{snap}");
    let old_epoch = snap["streams"][0]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "live://r")
        .unwrap()["epoch"]
        .clone();
    assert_ne!(reload["epoch"], old_epoch, "a new epoch");
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
    let after = messages(&snap).pop().unwrap();
    assert_eq!(after["offset"], 1, "the new epoch starts again");
    assert_eq!(after["epoch"], reload["epoch"]);

    browser.quit().await;
    s.shutdown().await;
}

/// The demo page, on the SDK: it connects where `/_/config.json` says, shows a
/// push sent from its own form in the log, and shows the connection's streams.
#[tokio::test]
async fn demo_page_connects_and_shows_a_push() {
    let s = start_with(history_config()).await;
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
    // The Streams card shows where the connection stands.
    page.until_js(
        "the room's position in the Streams card",
        "const r = document.querySelector('#streams tr[data-stream=\"live://1000\"]'); \
         return r && r.children[3].textContent === '1' ? r.textContent : null",
    )
    .await;
    // Reconnect: the page's client recovers from that position.
    page.click("#btn-reconnect").await;
    page.until_js(
        "the recovery badge",
        "const t = document.getElementById('recovery').textContent; return t === 'recovered' ? t : null",
    )
    .await;
    page.until_js(
        "the op 25 line",
        "const l = [...document.querySelectorAll('#log .line-info')].map(e => e.textContent).find(t => t.includes('live://1000 recovered')); return l || null",
    )
    .await;
    page.screenshot("demo-recovered").await;
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

/// A client that loses its network gets, once it is back, every room and mid push
/// sent meanwhile: replayed in order, exactly once, marked as replayed, the
/// streams reported `recovered`, then live pushes again.
#[tokio::test]
async fn reconnect_recovers_what_was_missed() {
    const N: usize = 20;
    let s = start_with(history_config()).await;
    let proxy = Proxy::start(s.ws_addrs[0]).await;
    let browser = Browser::start().await;
    let page = TestPage::open(&browser, &s).await;
    page.start(
        "c",
        client_options(
            &proxy.ws_url(),
            json!({"mid": 42, "key": "rec-1", "room_id": "live://1000", "accepts": [1000]}),
        ),
    )
    .await;
    let snap = page
        .until("c", "the first op 25", |s| op25_count(s) == 1)
        .await;
    let first = statuses(&snap, 0);
    assert_eq!(first["live://1000"], "fresh", "{snap}");
    assert_eq!(first["mid:42"], "fresh", "{snap}");
    push(
        &s,
        "/goim/push/room?operation=1000&type=live&room=1000",
        "r-0",
    )
    .await;
    push(&s, "/goim/push/mids?operation=1000&mids=42", "m-0").await;
    let snap = page.until("c", "two pushes", |s| texts(s).len() == 2).await;
    for m in messages(&snap) {
        assert_eq!(m["offset"], 1, "{m}");
        assert_eq!(m["replayed"], false, "{m}");
    }

    // The network goes: the connection is cut and reconnects are refused.
    proxy.set(Net::Down);
    // It notices, and a first retry finds the network still down.
    page.until("c", "a refused retry", |s| {
        count_events(s, "reconnecting") >= 2
    })
    .await;
    for i in 1..=N {
        push(
            &s,
            "/goim/push/room?operation=1000&type=live&room=1000",
            &format!("r-{i}"),
        )
        .await;
        push(
            &s,
            "/goim/push/mids?operation=1000&mids=42",
            &format!("m-{i}"),
        )
        .await;
    }
    proxy.set(Net::Up);
    let snap = page
        .until("c", "the replay and its op 25", |s| {
            op25_count(s) == 2 && texts(s).len() >= 2 + 2 * N
        })
        .await;
    let got = messages(&snap);
    assert_eq!(got.len(), 2 + 2 * N, "each push once: {:?}", texts(&snap));
    let replay = &got[2..];
    assert!(replay.iter().all(|m| m["replayed"] == true), "{replay:?}");
    let want = |p: &str| (1..=N).map(|i| format!("{p}-{i}")).collect::<Vec<_>>();
    assert_eq!(stream_texts(replay, "live://1000", 2), want("r"));
    assert_eq!(stream_texts(replay, "mid:42", 2), want("m"));
    let second = statuses(&snap, 1);
    assert_eq!(second["live://1000"], "recovered", "{snap}");
    assert_eq!(second["mid:42"], "recovered", "{snap}");
    assert_eq!(snap["stats"]["duplicates"], 0);
    assert_eq!(snap["stats"]["replayed"], 2 * N);
    assert_eq!(snap["positions"]["live://1000"]["offset"], N + 1);
    assert_eq!(snap["positions"]["mid:42"]["offset"], N + 1);
    // It asked from where it stood.
    let auths = events(&snap, "auth");
    assert_eq!(auths.len(), 2);
    assert_eq!(auths[0]["body"]["recover"], json!({}));
    assert_eq!(auths[1]["body"]["recover"]["live://1000"]["offset"], 1);
    assert_eq!(auths[1]["body"]["recover"]["mid:42"]["offset"], 1);

    // Live again.
    push(
        &s,
        "/goim/push/room?operation=1000&type=live&room=1000",
        "live",
    )
    .await;
    let snap = page
        .until("c", "a live push", |s| {
            texts(s).last().is_some_and(|t| t == "live")
        })
        .await;
    let last = messages(&snap).pop().unwrap();
    assert_eq!(last["replayed"], false);
    assert_eq!(last["offset"], N + 2);
    assert_eq!(texts(&snap).len(), 3 + 2 * N);
    page.screenshot("sdk-recovered").await;
    browser.quit().await;
    s.shutdown().await;
}

/// A network that silently loses everything: the server goes on writing pushes
/// into the void, the client's heartbeats go unanswered. The client gives the
/// connection up after `heartbeat.timeout`, reconnects once the network is back,
/// and gets exactly what was lost.
#[tokio::test]
async fn unanswered_heartbeats_reconnect_and_recover() {
    let s = start_with(history_config()).await;
    let proxy = Proxy::start(s.ws_addrs[0]).await;
    let browser = Browser::start().await;
    let page = TestPage::open(&browser, &s).await;
    let mut opts = client_options(
        &proxy.ws_url(),
        json!({"mid": 43, "key": "hole-1", "room_id": "live://hole", "accepts": [1000]}),
    );
    opts["heartbeat"] = json!({"interval": 300, "timeout": 900});
    opts["authTimeout"] = json!(1500);
    page.start("c", opts).await;
    page.until("c", "the first op 25", |s| op25_count(s) == 1)
        .await;
    push(
        &s,
        "/goim/push/room?operation=1000&type=live&room=hole",
        "r-0",
    )
    .await;
    page.until("c", "the first push", |s| texts(s) == ["r-0"])
        .await;

    proxy.set(Net::Blackhole);
    for i in 1..=10 {
        push(
            &s,
            "/goim/push/room?operation=1000&type=live&room=hole",
            &format!("r-{i}"),
        )
        .await;
        push(
            &s,
            "/goim/push/mids?operation=1000&mids=43",
            &format!("m-{i}"),
        )
        .await;
    }
    let snap = page
        .until("c", "the heartbeat deadline", |s| {
            events(s, "close")
                .iter()
                .any(|e| e["reason"] == "heartbeat timeout")
        })
        .await;
    assert_eq!(texts(&snap), ["r-0"], "nothing crossed the black hole");
    proxy.set(Net::Up);
    let snap = page
        .until("c", "the recovery", |s| {
            op25_count(s) == 2 && texts(s).len() >= 21
        })
        .await;
    let got = messages(&snap);
    assert_eq!(got.len(), 21, "each push once: {:?}", texts(&snap));
    let want = |p: &str| (1..=10).map(|i| format!("{p}-{i}")).collect::<Vec<_>>();
    assert_eq!(stream_texts(&got[1..], "live://hole", 2), want("r"));
    assert_eq!(stream_texts(&got[1..], "mid:43", 1), want("m"));
    let second = statuses(&snap, 1);
    assert_eq!(second["live://hole"], "recovered", "{snap}");
    assert_eq!(second["mid:43"], "recovered", "{snap}");
    assert_eq!(snap["stats"]["duplicates"], 0);
    browser.quit().await;
    s.shutdown().await;
}

/// Back online: when the browser says the network is back (`online`) during a
/// long backoff delay, the client retries at once.
#[tokio::test]
async fn back_online_retries_at_once() {
    let s = start().await;
    let proxy = Proxy::start(s.ws_addrs[0]).await;
    let browser = Browser::start().await;
    let page = TestPage::open(&browser, &s).await;
    let mut opts = client_options(
        &proxy.ws_url(),
        json!({"mid": 45, "key": "online-1", "room_id": "live://on", "accepts": [1000]}),
    );
    // Up to a minute between tries: longer than the test may wait.
    opts["backoff"] = json!({"base": 60000, "max": 60000});
    page.start("c", opts).await;
    page.until("c", "authenticated", |s| s["state"] == "open")
        .await;
    proxy.set(Net::Down);
    page.until("c", "a backoff delay", |s| s["state"] == "reconnecting")
        .await;
    proxy.set(Net::Up);
    let was = page
        .page
        .js("const was = window.harness.snapshot('c').state; \
             window.dispatchEvent(new Event('online')); return was")
        .await;
    let snap = page
        .until("c", "back in", |s| s["stats"]["authenticated"] == 2)
        .await;
    if was == "reconnecting" {
        let retries = events(&snap, "reconnecting");
        assert_eq!(retries.len(), 2, "{snap}");
        assert_eq!(retries[1]["attempt"], 0, "the online event's retry: {snap}");
    }
    push(&s, "/goim/push/room?operation=1000&type=live&room=on", "on").await;
    page.until("c", "a push", |s| texts(s) == ["on"]).await;
    browser.quit().await;
    s.shutdown().await;
}

/// With `storage`, a reloaded page recovers too: the new page's client starts
/// from the positions the old one stored.
#[tokio::test]
async fn a_reloaded_page_recovers_from_storage() {
    let s = start_with(history_config()).await;
    let browser = Browser::start().await;
    let page = TestPage::open(&browser, &s).await;
    let mut opts = client_options(
        &page.ws_url(),
        json!({"mid": 44, "key": "reload-1", "room_id": "live://page", "accepts": [1000]}),
    );
    opts["storage"] = json!("session");
    page.start("c", opts.clone()).await;
    page.until("c", "the first op 25", |s| op25_count(s) == 1)
        .await;
    push(
        &s,
        "/goim/push/room?operation=1000&type=live&room=page",
        "before",
    )
    .await;
    page.until("c", "the first push", |s| texts(s) == ["before"])
        .await;

    // The same tab loads the page again (same origin: same sessionStorage).
    page.reload().await;
    for i in 1..=5 {
        push(
            &s,
            "/goim/push/room?operation=1000&type=live&room=page",
            &format!("while-{i}"),
        )
        .await;
    }
    page.start("c", opts).await;
    let snap = page
        .until("c", "the replay after the reload", |s| {
            op25_count(s) == 1 && texts(s).len() >= 5
        })
        .await;
    let auth = events(&snap, "auth")[0];
    assert_eq!(
        auth["body"]["recover"]["live://page"]["offset"], 1,
        "the stored position: {snap}"
    );
    let got = messages(&snap);
    assert_eq!(got.len(), 5, "{:?}", texts(&snap));
    let want: Vec<String> = (1..=5).map(|i| format!("while-{i}")).collect();
    assert_eq!(stream_texts(&got, "live://page", 2), want);
    assert!(got.iter().all(|m| m["replayed"] == true));
    assert_eq!(statuses(&snap, 0)["live://page"], "recovered");
    browser.quit().await;
    s.shutdown().await;
}

/// With API keys configured the demo page asks for one, and its pushes go through
/// with it.
#[tokio::test]
async fn demo_page_pushes_with_an_api_key() {
    use herald_logic::api_keys::{hash_key, ApiKeyConfig, Scope};
    const KEY: &str = "hk_browser_admin_0123456789";
    let mut cfg = test_config();
    cfg.api.keys = vec![ApiKeyConfig {
        name: "demo".into(),
        hash: hash_key(KEY),
        scopes: vec![Scope::Admin],
        rate: 0,
        burst: 0,
    }];
    let s = start_with(cfg).await;
    let browser = Browser::start().await;
    let page = Page::new(&browser);
    page.goto(&format!("http://{}/_/", s.http_addr)).await;
    page.until_js(
        "the key card",
        "const c = document.getElementById('key-card'); return c && !c.hidden ? true : null",
    )
    .await;
    page.until_js(
        "the WebSocket URL",
        "return document.getElementById('c-url').value || null",
    )
    .await;
    page.click("#btn-connect").await;
    page.until_js(
        "authenticated",
        "return document.getElementById('status').textContent === 'authenticated' || null",
    )
    .await;
    // Without the key the push is refused, and the page says why.
    page.set_value("#p-msg", "refused without a key").await;
    page.click("#push-form button[type=submit]").await;
    page.until_js(
        "the 401 in the log",
        "const l = [...document.querySelectorAll('#log .line-error')].map(e => e.textContent).find(t => t.includes('HTTP 401')); return l || null",
    )
    .await;
    page.set_value("#k-key", KEY).await;
    page.click("#key-form button[type=submit]").await;
    page.set_value("#p-msg", "pushed with a key").await;
    page.click("#push-form button[type=submit]").await;
    page.until_js(
        "the push in the log",
        "const l = [...document.querySelectorAll('#log .line-push')].map(e => e.textContent).find(t => t.includes('pushed with a key')); return l || null",
    )
    .await;
    page.until_js(
        "the key accepted",
        "return document.getElementById('key-status').textContent === 'accepted' || null",
    )
    .await;
    let pushes = page
        .js("return [...document.querySelectorAll('#log .line-push')].map(e => e.textContent)")
        .await;
    assert_eq!(pushes.as_array().map(Vec::len), Some(1), "{pushes}");
    page.screenshot("demo-api-key").await;
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

/// The live dashboard: behind an admin key, it shows the connections, the
/// pushes and deliveries per second while pushes run, latency percentiles per
/// stage, the top rooms (names shown as text, never as HTML) and the node.
#[tokio::test]
async fn dashboard_shows_live_figures() {
    use herald_logic::api_keys::{hash_key, ApiKeyConfig, Scope};
    const KEY: &str = "hk_browser_dashboard_0123456789";
    let mut cfg = test_config();
    cfg.api.keys = vec![ApiKeyConfig {
        name: "ops".into(),
        hash: hash_key(KEY),
        scopes: vec![Scope::Admin],
        rate: 0,
        burst: 0,
    }];
    let s = start_with(cfg).await;
    // The data is the admin's: without the key, 401 in the API's envelope.
    let r = http(s.http_addr, "GET", "/_/dashboard/events", b"").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.json()["message"].is_string(), "{}", r.text());

    const ROOM: &str = "live://<b id=\"injected\">lobby</b>";
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = Client::ws(s.ws_addrs[0]).await;
        c.auth(500 + i, &format!("dash-{i}"), ROOM, &[1000]).await;
        clients.push(c);
    }
    let browser = Browser::start().await;
    let page = Page::new(&browser);
    page.goto(&format!("http://{}/_/dashboard", s.http_addr))
        .await;
    page.until_js(
        "the key form",
        "const f = document.getElementById('keyform'); return f && !f.hidden ? true : null",
    )
    .await;
    page.set_value("#key", KEY).await;
    page.click("#keyform button[type=submit]").await;
    page.until_js(
        "the stream live",
        "return document.getElementById('status').dataset.state === 'live' || null",
    )
    .await;
    page.until_js(
        "three connections",
        "return document.getElementById('t-connections').textContent === '3' || null",
    )
    .await;

    // Pushes to the room, five a second, until the figures show them.
    let pushing = tokio::spawn({
        let http_addr = s.http_addr;
        async move {
            let room = "/goim/push/room?operation=1000&type=live&room=%3Cb%20id%3D%22injected%22%3Elobby%3C%2Fb%3E";
            loop {
                let auth = format!("Bearer {KEY}");
                let r = http_with(
                    http_addr,
                    "POST",
                    room,
                    &[("Authorization", &auth)],
                    b"tick",
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.text());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let positive = |id: &str| {
        format!(
            "const t = document.getElementById('{id}').textContent; \
             const v = parseFloat(t.replace(/,/g, '')); return v > 0 ? t : null"
        )
    };
    page.until_js("pushes per second", &positive("t-pushes"))
        .await;
    page.until_js("deliveries per second", &positive("t-deliveries"))
        .await;
    let latency = page
        .until_js(
            "room latency rows",
            "const rows = [...document.querySelectorAll('#latency tbody tr')].map(r => [...r.cells].map(c => c.textContent)); \
             const stages = new Set(rows.filter(r => r[1] === 'room').map(r => r[0])); \
             return ['publish', 'queue', 'dispatch', 'fan-out'].every(s => stages.has(s)) ? rows : null",
        )
        .await;
    for row in latency.as_array().unwrap() {
        let p99: f64 = row[3]
            .as_str()
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap_or(-1.0);
        assert!(p99 >= 0.0, "p99 is a number of ms: {row}");
    }
    // The room's name is shown as text.
    let rooms = page
        .until_js(
            "the room in the top rooms",
            "const r = [...document.querySelectorAll('#rooms tbody tr')].map(r => [...r.cells].map(c => c.textContent)); \
             return r.length && r[0].length === 2 ? r : null",
        )
        .await;
    assert_eq!(rooms[0], json!([ROOM, "3"]), "{rooms}");
    assert_eq!(
        page.js("return document.getElementById('injected') === null")
            .await,
        json!(true),
        "a room name became HTML"
    );
    let node = page
        .until_js(
            "the comet in the nodes table",
            "const r = [...document.querySelectorAll('#nodes tbody tr')].map(r => [...r.cells].map(c => c.textContent)); \
             return r.find(c => c[0] === 'comet') || null",
        )
        .await;
    assert_eq!(node[2], "up", "{node}");
    assert_eq!(node[3], "3", "{node}");
    // The charts were drawn (pixels on the canvas).
    let drawn = page
        .js("const c = document.getElementById('c-rates'); \
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
             let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n")
        .await;
    assert!(
        drawn.as_u64().unwrap() > 1000,
        "the rates chart is empty: {drawn}"
    );
    // Let the charts gather a few more points for the picture.
    let drawn_so_far: u64 = page
        .js("return Number(document.body.dataset.snapshots)")
        .await
        .as_u64()
        .unwrap();
    page.until_js(
        "five more snapshots",
        &format!(
            "return Number(document.body.dataset.snapshots) >= {} || null",
            drawn_so_far + 5
        ),
    )
    .await;
    page.screenshot("dashboard").await;
    pushing.abort();
    let _ = pushing.await;
    browser.quit().await;
    s.shutdown().await;
}
