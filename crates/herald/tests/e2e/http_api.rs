//! The HTTP API: validation errors, online and nodes endpoints, metrics and the
//! demo page.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn validation_errors_are_json_4xx() {
    let s = start().await;
    let h = s.http_addr;
    let cases: &[(&str, &str, u16)] = &[
        ("POST", "/goim/push/keys?operation=1000", 400),
        ("POST", "/goim/push/keys?operation=x&keys=a", 400),
        ("POST", "/goim/push/mids?operation=1000&mids=abc", 400),
        ("POST", "/goim/push/room?operation=1000&type=live", 400),
        ("POST", "/goim/push/room?type=live&room=1", 400),
        ("POST", "/goim/push/room?operation=0&type=live&room=1", 400),
        ("POST", "/goim/push/all", 400),
        ("GET", "/goim/online/top?type=live", 400),
        ("GET", "/goim/online/top?limit=5", 400),
        ("GET", "/goim/online/room?type=live", 400),
        ("GET", "/goim/push/all?operation=1000", 405),
        ("GET", "/goim/no/such", 404),
        ("GET", "/nothing/here", 404),
    ];
    for (method, path, status) in cases {
        let r = http(h, method, path, b"{}").await;
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
        let body = r.json();
        assert!(
            body["code"].as_i64().unwrap() < 0,
            "{method} {path}: {body}"
        );
        assert!(
            !body["message"].as_str().unwrap().is_empty(),
            "{method} {path}: {body}"
        );
    }
    // Oversized push body: 413 with a JSON error.
    let big = vec![b'x'; (1 << 20) + 1];
    let r = post(h, "/goim/push/all?operation=1000", &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], -400);
    s.shutdown().await;
}

/// goim's answers at the edges of the push API: a mid push to no one and a key
/// push with only empty keys succeed and push nothing, a key push without keys is
/// an error (code −400), and a negative broadcast speed means no limit.
#[tokio::test]
async fn push_edges_answer_like_goim() {
    let s = start().await;
    let h = s.http_addr;
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.auth(71, "edge-71", "", &[1000, 1001]).await;

    let ok = json!({"code": 0, "message": ""});
    for path in [
        "/goim/push/mids?operation=1000",
        "/goim/push/mids?operation=1000&mids=",
        "/goim/push/keys?operation=1000&keys=",
        "/goim/push/keys?operation=1000&keys=&keys=",
    ] {
        let r = post(h, path, b"to no one").await;
        assert_eq!((r.status, r.json()), (200, ok.clone()), "{path}");
    }
    for (path, body) in [
        (
            "/herald/push/mids",
            r#"{"operation":1000,"mids":[],"msg":"to no one"}"#,
        ),
        (
            "/herald/push/mids",
            r#"{"operation":1000,"msg":"to no one"}"#,
        ),
    ] {
        let r = post(h, path, body.as_bytes()).await;
        assert_eq!((r.status, r.json()), (200, ok.clone()), "{body}");
    }
    for (path, body) in [
        ("/goim/push/keys?operation=1000", ""),
        (
            "/herald/push/keys",
            r#"{"operation":1000,"keys":[],"msg":"x"}"#,
        ),
        ("/herald/push/keys", r#"{"operation":1000,"msg":"x"}"#),
    ] {
        let r = post(h, path, body.as_bytes()).await;
        assert_eq!(r.status, 400, "{path} {body}");
        assert_eq!(
            r.json(),
            json!({"code": -400, "message": "keys is required"}),
            "{path} {body}"
        );
    }
    // None of those reached the client: the next frame it gets is this one.
    let r = post(h, "/goim/push/mids?operation=1001&mids=71", b"marker").await;
    assert_eq!(r.json(), ok);
    let f = c.recv_push().await;
    assert_eq!((f.op, &f.body[..]), (1001, &b"marker"[..]));

    // A negative speed is no limit, as in goim (it was a 400 before).
    let r = post(h, "/goim/push/all?operation=1000&speed=-1", b"everyone").await;
    assert_eq!((r.status, r.json()), (200, ok.clone()));
    let f = c.recv_push().await;
    assert_eq!((f.op, &f.body[..]), (1000, &b"everyone"[..]));
    s.shutdown().await;
}

/// A known path with a trailing slash redirects to the path without it, as gin
/// does for goim: 301 for GET, 307 for other methods, the query kept.
#[tokio::test]
async fn trailing_slash_redirects_like_gin() {
    let s = start().await;
    let h = s.http_addr;
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(72, "slash-72", "", &[1000]).await;

    let r = post(h, "/goim/push/keys/?operation=1000&keys=slash-72", b"hi").await;
    assert_eq!(r.status, 307, "{}", r.text());
    let to = r.header("location").expect("a Location");
    assert_eq!(to, "/goim/push/keys?operation=1000&keys=slash-72");
    // Following it (a 307 keeps the method and body) pushes.
    let r = post(h, &to, b"hi").await;
    assert_eq!(r.json()["code"], 0);
    assert_eq!(&c.recv_push().await.body[..], b"hi");

    for (method, path, status, location) in [
        ("GET", "/goim/online/total/", 301, "/goim/online/total"),
        (
            "GET",
            "/goim/online/top/?type=live&limit=5",
            301,
            "/goim/online/top?type=live&limit=5",
        ),
        ("HEAD", "/goim/nodes/weighted/", 307, "/goim/nodes/weighted"),
        ("POST", "/herald/push/mids/", 307, "/herald/push/mids"),
    ] {
        let r = http(h, method, path, b"").await;
        assert_eq!(r.status, status, "{method} {path}");
        assert_eq!(
            r.header("location").as_deref(),
            Some(location),
            "{method} {path}"
        );
    }
    // Only a path that exists for the method redirects; the rest is the JSON 404.
    for (method, path) in [
        ("GET", "/goim/push/keys/"),
        ("POST", "/goim/push/keys//"),
        ("POST", "/goim/push/"),
        ("GET", "/goim/nothing/"),
    ] {
        let r = http(h, method, path, b"").await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(r.json()["code"], -404, "{method} {path}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn online_endpoints_reflect_rooms() {
    let s = start().await;
    let h = s.http_addr;
    let mut clients = Vec::new();
    for (i, room) in [
        "live://1000",
        "live://1000",
        "live://2000",
        "livestream://9",
    ]
    .iter()
    .enumerate()
    {
        let mut c = if i % 2 == 0 {
            Client::tcp(s.tcp_addrs[0]).await
        } else {
            Client::ws(s.ws_addrs[0]).await
        };
        c.auth(i as i64 + 1, &format!("on{i}"), room, &[]).await;
        clients.push(c);
    }
    eventually("online/room to count the rooms", || async {
        let r = get(
            h,
            "/goim/online/room?type=live&rooms=1000&rooms=2000&rooms=3000",
        )
        .await;
        r.json() == json!({"code": 0, "message": "", "data": {"1000": 2, "2000": 1, "3000": 0}})
    })
    .await;
    let top = get(h, "/goim/online/top?type=live&limit=5").await.json();
    assert_eq!(
        top,
        json!({"code": 0, "message": "", "data": [{"room_id": "1000", "count": 2}, {"room_id": "2000", "count": 1}]})
    );
    let top1 = get(h, "/goim/online/top?type=live&limit=1").await.json();
    assert_eq!(top1["data"].as_array().unwrap().len(), 1);
    eventually("online/total to count connections", || async {
        let d = get(h, "/goim/online/total").await.json();
        d["data"] == json!({"conn_count": 4, "ip_count": 1})
    })
    .await;
    // A client leaving is reflected too.
    clients.pop();
    clients.pop();
    eventually("counts to drop", || async {
        let d = get(h, "/goim/online/room?type=live&rooms=2000")
            .await
            .json();
        d["data"]["2000"] == 0
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn nodes_endpoints() {
    let s = start().await;
    let h = s.http_addr;
    let mut c = Client::tcp(s.tcp_addrs[0]).await;
    c.auth(1, "n1", "", &[]).await;
    let web = get(h, "/goim/nodes/weighted?platform=web").await.json();
    assert_eq!(web["code"], 0);
    let d = &web["data"];
    assert_eq!(d["tcp_port"], 3101);
    assert_eq!(d["ws_port"], 3102);
    assert_eq!(d["heartbeat"], 240);
    assert_eq!(d["heartbeat_max"], 2);
    assert_eq!(d["nodes"], json!(["test-comet"]));
    assert_eq!(
        d["backoff"],
        json!({"max_delay": 300, "base_delay": 3, "factor": 1.8, "jitter": 0.3})
    );
    let app = get(h, "/goim/nodes/weighted").await.json();
    assert!(app["data"]["nodes"]
        .as_array()
        .is_some_and(|n| !n.is_empty()));
    let inst = get(h, "/goim/nodes/instances").await.json();
    let list = inst["data"].as_array().expect("instances");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["appid"], "goim.comet");
    assert_eq!(list[0]["hostname"], "test-comet:3109");
    for k in ["weight", "offline", "addrs", "conn_count", "ip_count"] {
        assert!(list[0]["metadata"][k].is_string(), "metadata {k}");
    }
    s.shutdown().await;
}

/// Every stage of a push is timed in a Prometheus histogram with buckets:
/// accepted → queued (logic), queued → taken (job), taken → every comet answered
/// (job), arrived → written (comet), per kind. (Metrics are shared by every
/// server of this test process: counts only grow, so each is compared with its
/// value before the pushes.)
#[tokio::test]
async fn every_push_stage_is_timed() {
    let s = start().await;
    let h = s.http_addr;
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.auth(61, "timed-61", "live://timed", &[1000]).await;
    let stages = [
        r#"herald_push_publish_seconds_count{kind="keys"}"#,
        r#"herald_push_publish_seconds_count{kind="room"}"#,
        r#"herald_job_queue_seconds_count{type="push"}"#,
        r#"herald_job_queue_seconds_count{type="room"}"#,
        r#"herald_job_dispatch_seconds_count{type="push"}"#,
        r#"herald_job_dispatch_seconds_count{type="room"}"#,
        r#"herald_comet_fanout_seconds_count{kind="keys"}"#,
        r#"herald_comet_fanout_seconds_count{kind="room"}"#,
    ];
    let before: Vec<f64> = stages.iter().map(|m| metric(m)).collect();
    assert_eq!(
        post(h, "/goim/push/keys?operation=1000&keys=timed-61", b"k")
            .await
            .status,
        200
    );
    assert_eq!(
        post(
            h,
            "/goim/push/room?operation=1000&type=live&room=timed",
            b"r"
        )
        .await
        .status,
        200
    );
    c.recv_push().await;
    c.recv_push().await;
    // The client may read its push before job hears that the comet call returned.
    eventually("every stage recorded", || {
        let before = before.clone();
        async move {
            stages
                .iter()
                .zip(&before)
                .all(|(m, b)| metric(m) >= b + 1.0)
        }
    })
    .await;
    let text = get(h, "/metrics").await.text();
    for bucket in [
        r#"herald_push_publish_seconds_bucket{kind="room",le="0.0005"}"#,
        r#"herald_job_queue_seconds_bucket{type="room",le="0.01"}"#,
        r#"herald_comet_fanout_seconds_bucket{kind="keys",le="10"}"#,
        r#"herald_job_dispatch_seconds_bucket{type="push",le="+Inf"}"#,
    ] {
        assert!(text.contains(bucket), "{bucket} missing from:\n{text}");
    }
    assert!(
        text.contains("herald_job_consumer_lag_seconds "),
        "lag gauge missing"
    );
    s.shutdown().await;
}

/// The dashboard's snapshot: what a standalone server runs, its node, its
/// connections and rooms, and pushes counted as they happen.
#[tokio::test]
async fn dashboard_snapshot_shows_this_server() {
    let s = start().await;
    let h = s.http_addr;
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.auth(62, "dash-62", "live://dash-snapshot", &[1000]).await;
    eventually("the connection and its room in the snapshot", || async {
        let d = get(h, "/_/dashboard/snapshot").await.json();
        let comet = d["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["kind"] == "comet").cloned());
        d["role"] == "standalone"
            && d["window_seconds"].as_f64() > Some(0.0)
            && comet.is_some_and(|c| c["connections"] == 1 && c["health"] == "up")
            && d["top_rooms"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r == &json!({"room": "live://dash-snapshot", "online": 1}))
            })
    })
    .await;
    let before = get(h, "/_/dashboard/snapshot").await.json()["totals"]["pushes"]
        .as_f64()
        .unwrap();
    let r = post(
        h,
        "/goim/push/room?operation=1000&type=live&room=dash-snapshot",
        b"x",
    )
    .await;
    assert_eq!(r.status, 200);
    c.recv_push().await;
    eventually("the push counted, and timed", || async {
        let d = get(h, "/_/dashboard/snapshot").await.json();
        d["totals"]["pushes"].as_f64() > Some(before)
            && d["latency"]["publish"]["room"]["p99"].as_f64().is_some()
            && d["rates"]["pushes"].as_f64() > Some(0.0)
    })
    .await;
    // The page is public (it holds nothing); its assets are embedded.
    let page = get(h, "/_/dashboard").await;
    assert_eq!(page.status, 200);
    for asset in ["dashboard.js", "dashboard.css"] {
        assert!(page.text().contains(asset), "the page loads {asset}");
        assert_eq!(get(h, &format!("/_/dashboard/{asset}")).await.status, 200);
    }
    assert_eq!(get(h, "/_/dashboard/nothing.js").await.status, 404);
    s.shutdown().await;
}

/// The Grafana dashboard in `deploy/grafana/` queries only metrics herald
/// exports and documents.
#[test]
fn grafana_dashboard_queries_documented_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/herald.json")).unwrap(),
    )
    .expect("deploy/grafana/herald.json is JSON");
    let docs = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 20, "{} queries", exprs.len());
    let mut names = std::collections::BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("herald_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    for name in &names {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            docs.contains(&format!("`{base}`")),
            "the Grafana dashboard queries {name}, which docs/operations.md does not document"
        );
    }
}

/// Open dashboards are bounded: past 32 streams the next viewer gets a 503 at
/// once, pushes still go through, and a stream that closes frees its place.
#[tokio::test]
async fn dashboard_viewers_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn open_stream(addr: std::net::SocketAddr) -> (tokio::net::TcpStream, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /_/dashboard/events HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(n > 0, "closed without an answer");
            got.extend_from_slice(&buf[..n]);
        }
        (stream, String::from_utf8_lossy(&got).to_string())
    }
    let s = start().await;
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.auth(63, "bounded-63", "live://bounded", &[1000]).await;
    let mut open = Vec::new();
    for _ in 0..32 {
        let (stream, head) = open_stream(s.http_addr).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        open.push(stream);
    }
    let (_, head) = open_stream(s.http_addr).await;
    assert!(head.starts_with("HTTP/1.1 503"), "the 33rd viewer: {head}");
    let r = get(s.http_addr, "/_/dashboard/snapshot").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], -503);
    let r = post(
        s.http_addr,
        "/goim/push/room?operation=1000&type=live&room=bounded",
        b"still",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.recv_push().await.body.as_ref(), b"still");
    drop(open.pop());
    eventually("a place freed by a closed stream", || async {
        get(s.http_addr, "/_/dashboard/snapshot").await.status == 200
    })
    .await;
    drop(open);
    s.shutdown().await;
}

/// An open dashboard does not hold a shutdown up: its event stream ends when
/// shutdown starts, not at the end of the grace period.
#[tokio::test]
async fn dashboard_streams_end_at_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = test_config();
    cfg.shutdown.grace = std::time::Duration::from_secs(120);
    let s = start_with(cfg).await;
    let mut stream = tokio::net::TcpStream::connect(s.http_addr).await.unwrap();
    stream
        .write_all(b"GET /_/dashboard/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&got).contains("event: snapshot") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("a snapshot event")
            .unwrap();
        assert!(
            n > 0,
            "closed before a snapshot: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    // With a 120 s grace, a shutdown that waited for the stream would time out here.
    tokio::time::timeout(WAIT, s.shutdown())
        .await
        .expect("shutdown did not wait for the dashboard's stream");
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the stream ends")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
    }
}

#[tokio::test]
async fn metrics_and_demo_page() {
    let s = start().await;
    let h = s.http_addr;
    let mut c = Client::ws(s.ws_addrs[0]).await;
    c.auth(1, "m1", "live://m", &[1000]).await;
    post(h, "/goim/push/room?operation=1000&type=live&room=m", b"x").await;
    c.recv_push().await;
    let r = get(h, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r
        .headers
        .to_ascii_lowercase()
        .contains("content-type: text/plain"));
    let m = r.text();
    for name in [
        "herald_connections",
        "herald_rooms",
        "herald_pushes_total",
        "herald_comet_pushes_total",
        "herald_frames_delivered_total",
        "herald_dropped_frames_total",
        "herald_slow_consumers_total",
        "herald_queue_depth",
        "herald_comet_outbox_pushes",
        "herald_comet_outbox_bytes",
        "herald_comet_backlogged_connections",
    ] {
        assert!(m.contains(name), "metric {name} missing from:\n{m}");
    }

    let page = get(h, "/_/").await;
    assert_eq!(page.status, 200);
    assert!(page.headers.to_ascii_lowercase().contains("text/html"));
    let html = page.text();
    for asset in ["app.js", "style.css"] {
        assert!(html.contains(asset), "page does not load {asset}");
        let a = get(h, &format!("/_/{asset}")).await;
        assert_eq!(a.status, 200, "{asset}");
        assert!(!a.body.is_empty());
    }
    assert!(
        !html.contains("http://cdn") && !html.contains("https://"),
        "page must not load remote assets"
    );
    assert_eq!(get(h, "/_/missing.js").await.status, 404);
    // The demo runs on the client SDK, which any origin may import.
    let app = get(h, "/_/app.js").await.text();
    assert!(app.contains("./sdk/herald.js"), "the demo uses the SDK");
    let sdk = get(h, "/_/sdk/herald.js").await;
    assert_eq!(sdk.status, 200);
    assert!(sdk.headers.to_ascii_lowercase().contains("text/javascript"));
    assert_eq!(
        sdk.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert!(sdk.text().contains("export class HeraldClient"));
    for file in ["herald.d.ts", "package.json", "README.md"] {
        assert_eq!(
            get(h, &format!("/_/sdk/{file}")).await.status,
            200,
            "{file}"
        );
    }
    assert_eq!(
        get(h, "/_/sdk/test.html").await.status,
        404,
        "tests are not served"
    );
    assert_eq!(get(h, "/_/goim.js").await.status, 404);
    s.shutdown().await;
}

/// The demo page learns where its WebSocket client connects from
/// `/_/config.json`: the port and path the comet really serves, with the page's
/// own host. The page itself names no port.
#[tokio::test]
async fn demo_page_connects_where_the_server_says() {
    let mut cfg = test_config();
    cfg.comet.ws_path = "/ws/goim".into();
    let s = start_with(cfg).await;
    let h = s.http_addr;
    let ws_port = s.ws_addrs[0].port();
    assert_ne!(
        ws_port, 3102,
        "the test needs a port other than the default"
    );
    let r = get(h, "/_/config.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"key_required": false, "ws_host": null, "ws_port": ws_port, "wss_port": null, "ws_path": "/ws/goim"})
    );
    // That address is a working goim WebSocket endpoint.
    let mut c = Client::ws_at(s.ws_addrs[0], "/ws/goim").await;
    c.auth(81, "page-81", "", &[1000]).await;
    for asset in ["/_/", "/_/app.js", "/_/sdk/herald.js"] {
        let text = get(h, asset).await.text();
        for port in ["3101", "3102", "3103"] {
            assert!(!text.contains(port), "{asset} names port {port}");
        }
    }
    s.shutdown().await;
}
