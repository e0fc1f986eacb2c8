//! The chat API of `herald standalone` (SQLite in its data directory): an agent
//! registers, a visitor opens a conversation, both exchange messages over HTTP
//! and receive them as pushes on their sockets, read receipts and unread counts,
//! and every kind of bad request answered as a JSON error.

use serde_json::json;

use crate::support::*;

use chat_call as call;
use chat_register as register;
use chat_visitor as visitor;

#[tokio::test]
async fn an_agent_and_a_visitor_chat_over_http_and_receive_pushes() {
    let s = start().await;
    let h = s.http_addr;

    let agent = register(h, "acme", "alice").await;
    let agent_token = agent["token"].as_str().unwrap().to_string();
    let agent_id = agent["user"]["id"].as_i64().unwrap();

    let r = call(
        h,
        "POST",
        "/chat/api/visitors",
        None,
        Some(json!({"shop": "acme"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let visitor = r.json();
    let visitor_token = visitor["token"].as_str().unwrap().to_string();
    let visitor_id = visitor["user"]["id"].as_i64().unwrap();
    let conv = visitor["conversation"]["id"].as_i64().unwrap();

    // Both on sockets with their session tokens (the server runs in trust mode
    // for goim's clients; chat clients are checked all the same).
    let mut a = chat_socket(s.ws_addrs[0], &agent_token).await;
    let mut v = chat_socket(s.ws_addrs[0], &visitor_token).await;

    // The visitor sends; both sockets get the stored message.
    let path = format!("/chat/api/conversations/{conv}/messages");
    let r = call(
        h,
        "POST",
        &path,
        Some(&visitor_token),
        Some(json!({"body": "hello?", "client_id": "v-1"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let sent = r.json();
    assert_eq!(sent["message"]["id"], 1);
    assert_eq!(sent["pushed"], true);
    for c in [&mut a, &mut v] {
        let e = chat_event(c).await;
        assert_eq!(e["type"], "message");
        assert_eq!(e["message"]["body"], "hello?");
        assert_eq!(e["message"]["sender_id"], visitor_id);
    }
    // The same client id again: 200, the stored message, nothing new.
    let r = call(
        h,
        "POST",
        &path,
        Some(&visitor_token),
        Some(json!({"body": "hello? (again)", "client_id": "v-1"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["message"]["body"], "hello?");
    assert_eq!(r.json()["created"], false);
    for c in [&mut a, &mut v] {
        chat_event(c).await;
    }

    // The agent's list shows it unread; the reply and the read receipt arrive.
    let r = call(
        h,
        "GET",
        "/chat/api/conversations",
        Some(&agent_token),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    assert_eq!(list["conversations"][0]["unread"], 1);
    assert_eq!(list["conversations"][0]["last"]["body"], "hello?");
    let r = call(
        h,
        "POST",
        &path,
        Some(&agent_token),
        Some(json!({"body": "Hi! How can I help?"})),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        chat_event(&mut v).await["message"]["body"],
        "Hi! How can I help?"
    );
    chat_event(&mut a).await;
    let r = call(
        h,
        "POST",
        &format!("/chat/api/conversations/{conv}/read"),
        Some(&agent_token),
        Some(json!({"position": 2})),
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"position": 2})));
    let receipt = chat_event(&mut v).await;
    assert_eq!(
        (
            receipt["type"].clone(),
            receipt["user_id"].clone(),
            receipt["position"].clone()
        ),
        (json!("read"), json!(agent_id), json!(2))
    );
    let r = call(
        h,
        "GET",
        &format!("/chat/api/conversations/{conv}/unread"),
        Some(&visitor_token),
        None,
    )
    .await;
    assert_eq!(r.json(), json!({"unread": 1}));

    // History, newest page and before an id, oldest first.
    let r = call(
        h,
        "GET",
        &format!("{path}?limit=10"),
        Some(&visitor_token),
        None,
    )
    .await;
    let bodies: Vec<String> = r.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(bodies, vec!["hello?", "Hi! How can I help?"]);
    let r = call(
        h,
        "GET",
        &format!("{path}?before=2&limit=10"),
        Some(&visitor_token),
        None,
    )
    .await;
    assert_eq!(r.json()["messages"].as_array().unwrap().len(), 1);

    // The agent's visitor list says the visitor is connected; typing is told.
    let r = call(
        h,
        "GET",
        "/chat/api/visitors?online=true",
        Some(&agent_token),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json()["visitors"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0]["id"].as_i64(), listed[0]["online"].as_bool()),
        (Some(visitor_id), Some(true))
    );
    let r = call(
        h,
        "POST",
        &format!("/chat/api/conversations/{conv}/typing"),
        Some(&visitor_token),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    // (The agent's own read receipt came first: every member gets it.)
    assert_eq!(chat_event(&mut a).await["type"], "read");
    let typing = chat_event(&mut a).await;
    assert_eq!(
        (typing["type"].clone(), typing["user_id"].clone()),
        (json!("typing"), json!(visitor_id))
    );
    s.shutdown().await;
}

#[tokio::test]
async fn chat_sockets_send_sync_and_read_with_ops_4_18_20() {
    let s = start().await;
    let h = s.http_addr;
    let agent = register(h, "acme", "alice").await;
    let agent_token = agent["token"].as_str().unwrap().to_string();
    let agent_id = agent["user"]["id"].as_i64().unwrap();
    let (visitor_token, conv) = visitor(h, "acme").await;
    let mut a = chat_socket(s.ws_addrs[0], &agent_token).await;
    let mut v = chat_socket(s.ws_addrs[0], &visitor_token).await;

    // Op 4 without a conversation: the visitor's own. The reply (op 5, the
    // request's seq) carries the stored message; the agent gets the event.
    let send = json!({"body": "hello over the socket", "client_id": "s-1"});
    let (sent, mut v_events) = chat_op(&mut v, 4, &send).await;
    assert_eq!(sent["type"], "sent", "{sent}");
    assert_eq!(
        (
            sent["message"]["id"].clone(),
            sent["message"]["conversation_id"].clone(),
            sent["created"].clone(),
            sent["pushed"].clone()
        ),
        (json!(1), json!(conv), json!(true), json!(true))
    );
    let e = chat_event(&mut a).await;
    assert_eq!(
        (e["type"].clone(), e["message"]["body"].clone()),
        (json!("message"), json!("hello over the socket"))
    );
    // A retried send (same client id): the stored message, nothing new.
    let (again, events) = chat_op(&mut v, 4, &send).await;
    v_events.extend(events);
    assert_eq!(
        (again["message"]["id"].clone(), again["created"].clone()),
        (json!(1), json!(false))
    );

    // The agent answers on its socket (an agent names the conversation).
    let (sent, _) = chat_op(
        &mut a,
        4,
        &json!({"conversation_id": conv, "body": "hi, over the socket too"}),
    )
    .await;
    assert_eq!(sent["message"]["id"], 2, "{sent}");

    // Op 18: the newest page with the read state, then pages around an id.
    let (sync, events) = chat_op(&mut v, 18, &json!({})).await;
    v_events.extend(events);
    assert_eq!(sync["type"], "sync", "{sync}");
    let ids = message_ids;
    assert_eq!(ids(&sync), vec![1, 2]);
    assert_eq!(
        (
            sync["conversation_id"].clone(),
            sync["last_message_id"].clone(),
            sync["position"].clone(),
            sync["unread"].clone()
        ),
        (json!(conv), json!(2), json!(0), json!(1)),
        "{sync}"
    );
    // The events of the sends (a retry pushes again) come before the
    // replies or after them.
    while v_events.len() < 3 {
        v_events.push(chat_event(&mut v).await);
    }
    assert!(
        v_events.iter().all(|e| e["type"] == "message"),
        "{v_events:?}"
    );
    for (body, want) in [
        (json!({"after": 1}), vec![2]),
        (json!({"before": 2}), vec![1]),
        (json!({"limit": 1}), vec![2]),
        (json!({"after": 2}), vec![]),
    ] {
        let (page, _) = chat_op(&mut v, 18, &body).await;
        assert_eq!(ids(&page), want, "{body}");
    }

    // Op 20: the visitor has read both; the agent gets the receipt, and the
    // agent's history shows the visitor's position.
    let (read, _) = chat_op(&mut v, 20, &json!({"position": 2})).await;
    assert_eq!(
        read,
        json!({"type": "read", "conversation_id": conv, "position": 2, "unread": 0})
    );
    // (The agent's socket holds the events of the sends before it.)
    let receipt = chat_event_of(&mut a, "read").await;
    assert_eq!(receipt["type"], "read", "{receipt}");
    assert_eq!(receipt["position"], 2);
    let r = call(
        h,
        "GET",
        &format!("/chat/api/conversations/{conv}/messages"),
        Some(&agent_token),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let reads = r.json()["reads"].clone();
    assert!(
        reads
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["position"] == 2 && p["user_id"] != agent_id),
        "{reads}"
    );

    // Bad frames get error replies; the connection stays.
    for (op, body, status) in [
        (4, json!({"body": ""}), 400),
        (4, json!({"body": "x", "extra": 1}), 400),
        (4, json!({"conversation_id": conv + 1000, "body": "x"}), 404),
        (18, json!({"before": 1, "after": 1}), 400),
        (20, json!({}), 400),
    ] {
        let (e, _) = chat_op(&mut v, op, &body).await;
        assert_eq!(
            (e["type"].clone(), e["status"].clone()),
            (json!("error"), json!(status)),
            "op {op} {body}: {e}"
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let seq = v.send(4, b"not json").await;
    let f = v.recv_push().await;
    assert_eq!((f.op, f.seq), (5, seq));
    let e: serde_json::Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(
        (e["code"].clone(), e["status"].clone()),
        (json!("bad_request"), json!(400))
    );
    // An agent names the conversation.
    let (e, _) = chat_op(&mut a, 18, &json!({})).await;
    assert_eq!(e["code"], "bad_request", "{e}");
    // Another shop's agent cannot read or write this conversation.
    let other = register(h, "globex", "bob").await;
    let mut o = chat_socket(s.ws_addrs[0], other["token"].as_str().unwrap()).await;
    for op in [4, 18, 20] {
        let body = match op {
            4 => json!({"conversation_id": conv, "body": "x"}),
            18 => json!({"conversation_id": conv}),
            _ => json!({"conversation_id": conv, "position": 1}),
        };
        let (e, _) = chat_op(&mut o, op, &body).await;
        assert_eq!(e["status"], 404, "op {op}: {e}");
    }

    // A goim client's ops 4 and 18 keep goim's meaning: an empty echo, nothing
    // stored.
    let mut g = Client::ws(s.ws_addrs[0]).await;
    g.auth(7, "goim-7", "", &[]).await;
    for op in [4, 18, 20] {
        let seq = g.send(op, b"{\"body\": \"x\"}").await;
        let f = g.recv_push().await;
        assert_eq!((f.op, f.seq, f.body.len()), (op, seq, 0));
    }
    let (sync, _) = chat_op(&mut v, 18, &json!({})).await;
    assert_eq!(ids(&sync), vec![1, 2]);

    // Over TCP too; an op the chat does not know gets goim's empty echo.
    let mut t = chat_auth(Client::tcp(s.tcp_addrs[0]).await, &visitor_token).await;
    let (sync, _) = chat_op(&mut t, 18, &json!({"limit": 1})).await;
    assert_eq!(ids(&sync), vec![2]);
    let seq = t.send(1000, b"{}").await;
    let f = t.recv_push().await;
    assert_eq!((f.op, f.seq, f.body.len()), (1000, seq, 0));

    // A refresh (op 22) with a newer token moves the socket to that session:
    // ending the first one leaves it working, ending the newer one refuses it.
    let login = json!({"username": "alice", "password": "correct horse"});
    let r = call(h, "POST", "/chat/api/login", None, Some(login.clone())).await;
    let newer = r.json()["token"].as_str().unwrap().to_string();
    let seq = a
        .send(22, json!({ "chat": newer }).to_string().as_bytes())
        .await;
    let f = loop {
        let f = a.recv_push().await;
        if f.seq == seq {
            break f;
        }
    };
    let refreshed: serde_json::Value = serde_json::from_slice(&f.body).unwrap();
    assert_eq!(
        (f.op, refreshed["code"].clone()),
        (23, json!(0)),
        "{refreshed}"
    );
    let r = call(h, "POST", "/chat/api/logout", Some(&agent_token), None).await;
    assert_eq!(r.status, 204);
    let (ok, _) = chat_op(&mut a, 18, &json!({"conversation_id": conv})).await;
    assert_eq!(ok["type"], "sync", "{ok}");

    // A session ended over HTTP is refused on its open socket too.
    let r = call(h, "POST", "/chat/api/logout", Some(&newer), None).await;
    assert_eq!(r.status, 204);
    let (e, _) = chat_op(&mut a, 18, &json!({"conversation_id": conv})).await;
    assert_eq!(
        (e["type"].clone(), e["status"].clone()),
        (json!("error"), json!(401)),
        "{e}"
    );

    // So is a visitor whose address the shop blocked since it connected.
    let r = call(h, "POST", "/chat/api/login", None, Some(login)).await;
    let token = r.json()["token"].as_str().unwrap().to_string();
    let r = call(
        h,
        "POST",
        "/chat/api/blacklist",
        Some(&token),
        Some(json!({"ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let (e, _) = chat_op(&mut v, 4, &json!({"body": "still here?"})).await;
    assert_eq!(e["status"], 403, "{e}");
}

#[tokio::test]
async fn frames_written_together_are_answered_and_stored_in_their_order() {
    use herald_proto::{ws, Frame};
    let s = start().await;
    let h = s.http_addr;
    let agent = register(h, "acme", "alice").await;
    let mut a = chat_socket(s.ws_addrs[0], agent["token"].as_str().unwrap()).await;
    let mut expected_bodies = Vec::new();
    for (round, ws_client) in [(0, false), (1, true)] {
        let (token, _) = visitor(h, "acme").await;
        let mut v = if ws_client {
            chat_socket(s.ws_addrs[0], &token).await
        } else {
            chat_auth(Client::tcp(s.tcp_addrs[0]).await, &token).await
        };
        // Forty frames in one write (comet reads them together, more than it
        // asks logic about at once): sends, a bad send, a sync, a heartbeat
        // (comet's own) and a read among them.
        let frames: Vec<(i32, Vec<u8>)> = (0..40)
            .map(|i| match i {
                10 => (4, json!({"body": ""}).to_string().into_bytes()),
                20 => (18, json!({"limit": 100}).to_string().into_bytes()),
                25 => (2, Vec::new()),
                30 => (20, json!({"position": 3}).to_string().into_bytes()),
                _ => (
                    4,
                    json!({"body": format!("r{round} m{i}"), "client_id": format!("c{i}")})
                        .to_string()
                        .into_bytes(),
                ),
            })
            .collect();
        let mut wire = Vec::new();
        for (i, (op, body)) in frames.iter().enumerate() {
            let f = Frame::new(1, *op, 1000 + i as i32, body.clone()).to_bytes();
            if ws_client {
                wire.extend(ws::client_frame(ws::opcode::BINARY, &f, [1, 2, 3, 4]));
            } else {
                wire.extend_from_slice(&f);
            }
        }
        v.send_socket(&wire).await;
        // Every frame answered, in the order written (events in between).
        let mut replies = Vec::new();
        while replies.len() < frames.len() {
            let f = v.recv().await.expect("a reply");
            if f.seq != 0 {
                replies.push(f);
            }
        }
        let seqs: Vec<i32> = replies.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, (1000..1040).collect::<Vec<_>>(), "round {round}");
        let body = |f: &Frame| serde_json::from_slice::<serde_json::Value>(&f.body).unwrap();
        // The sends' ids follow the frames' order, with no gap.
        let mut next_id = 1;
        let mut sent_before_sync = Vec::new();
        for (i, f) in replies.iter().enumerate() {
            match i {
                10 => {
                    let e = body(f);
                    assert_eq!((f.op, e["status"].clone()), (5, json!(400)), "{e}");
                }
                20 => {
                    let sync = body(f);
                    assert_eq!(f.op, 19, "{sync}");
                    assert_eq!(
                        message_ids(&sync),
                        sent_before_sync,
                        "the sync sees the sends before it"
                    );
                }
                25 => assert_eq!(f.op, 3, "the heartbeat's reply"),
                30 => {
                    let read = body(f);
                    assert_eq!((f.op, read["position"].clone()), (21, json!(3)), "{read}");
                }
                _ => {
                    let sent = body(f);
                    assert_eq!(f.op, 5, "{sent}");
                    assert_eq!(
                        (sent["type"].clone(), sent["message"]["id"].clone()),
                        (json!("sent"), json!(next_id)),
                        "frame {i}: {sent}"
                    );
                    assert_eq!(sent["message"]["body"], format!("r{round} m{i}"));
                    if i < 20 {
                        sent_before_sync.push(next_id);
                    }
                    next_id += 1;
                    expected_bodies.push(format!("r{round} m{i}"));
                }
            }
        }
    }
    // The agent's events of each conversation come in the same order.
    let mut bodies = Vec::new();
    while bodies.len() < expected_bodies.len() {
        let e = chat_event_of(&mut a, "message").await;
        bodies.push(e["message"]["body"].as_str().unwrap().to_string());
    }
    for round in ["r0 ", "r1 "] {
        let of = |b: &Vec<String>| {
            b.iter()
                .filter(|b| b.starts_with(round))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(of(&bodies), of(&expected_bodies), "{round}");
    }
}

#[tokio::test]
async fn large_replies_asked_for_together_all_come_in_order() {
    use herald_proto::Frame;
    let s = start().await;
    let h = s.http_addr;
    register(h, "acme", "alice").await;
    let (token, _) = visitor(h, "acme").await;
    let mut v = chat_auth(Client::tcp(s.tcp_addrs[0]).await, &token).await;
    // 100 messages of 4,000 bytes: a page of them is about 400 KB.
    let big = "x".repeat(4000);
    let mut wire = Vec::new();
    for i in 0..100 {
        let body = json!({"body": format!("{i:03}{}", &big[3..])}).to_string();
        wire.extend_from_slice(&Frame::new(1, 4, 100 + i, body.into_bytes()).to_bytes());
    }
    v.send_socket(&wire).await;
    let mut answered = 0;
    while answered < 100 {
        if v.recv().await.expect("a reply").seq != 0 {
            answered += 1;
        }
    }
    // Ten syncs of the whole page in one write: more than logic answers in
    // one go (its replies' budget is 1 MiB); every one is answered, in order,
    // with the whole page.
    let mut wire = Vec::new();
    for i in 0..10 {
        let body = json!({"limit": 100}).to_string();
        wire.extend_from_slice(&Frame::new(1, 18, 1000 + i, body.into_bytes()).to_bytes());
    }
    v.send_socket(&wire).await;
    let mut seqs = Vec::new();
    while seqs.len() < 10 {
        let f = v.recv().await.expect("a reply");
        if f.seq == 0 {
            continue;
        }
        let page: serde_json::Value = serde_json::from_slice(&f.body).unwrap();
        assert_eq!(f.op, 19, "{}", page["message"]);
        assert_eq!(message_ids(&page), (1..=100).collect::<Vec<_>>());
        seqs.push(f.seq);
    }
    assert_eq!(seqs, (1000..1010).collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_chat_requests_get_json_errors_and_tenants_stay_apart() {
    let s = start().await;
    let h = s.http_addr;
    let reg = |shop: &'static str, user: &'static str| async move {
        register(h, shop, user).await["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let acme = reg("acme", "alice").await;
    let globex = reg("globex", "mallory").await;
    let (vt, conv) = visitor(h, "acme").await;
    let msgs = format!("/chat/api/conversations/{conv}/messages");

    let check = |r: &Response, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let body = r.json();
        assert_eq!(body["code"], code, "{body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    };
    // Malformed or unexpected bodies.
    let raw = |body: &'static [u8], ct: &'static str| async move {
        http_with(h, "POST", "/chat/api/login", &[("Content-Type", ct)], body).await
    };
    check(
        &raw(b"{not json", "application/json").await,
        400,
        "bad_request",
    );
    check(
        &raw(
            br#"{"username":"a","password":"b","admin":true}"#,
            "application/json",
        )
        .await,
        400,
        "bad_request",
    );
    check(
        &raw(b"username=a", "application/x-www-form-urlencoded").await,
        415,
        "unsupported_media_type",
    );
    let big = format!(r#"{{"username":"{}","password":"x"}}"#, "a".repeat(70_000));
    let r = http_with(
        h,
        "POST",
        "/chat/api/login",
        &[("Content-Type", "application/json")],
        big.as_bytes(),
    )
    .await;
    check(&r, 413, "payload_too_large");
    check(
        &call(h, "GET", "/chat/api/nope", None, None).await,
        404,
        "not_found",
    );
    check(
        &call(h, "DELETE", "/chat/api/login", None, None).await,
        405,
        "method_not_allowed",
    );
    // Sessions: missing, forged, another shop's.
    check(
        &call(h, "GET", "/chat/api/conversations", None, None).await,
        401,
        "unauthorized",
    );
    let mut forged = acme.clone();
    forged.replace_range(forged.len() - 2.., "xx");
    check(
        &call(h, "GET", "/chat/api/conversations", Some(&forged), None).await,
        401,
        "unauthorized",
    );
    check(
        &call(h, "GET", &msgs, Some(&globex), None).await,
        404,
        "not_found",
    );
    check(
        &call(h, "POST", &msgs, Some(&globex), Some(json!({"body": "hi"}))).await,
        404,
        "not_found",
    );
    check(
        &call(
            h,
            "GET",
            "/chat/api/conversations/abc/messages",
            Some(&vt),
            None,
        )
        .await,
        400,
        "bad_request",
    );
    check(
        &call(h, "GET", &format!("{msgs}?limit=-1"), Some(&vt), None).await,
        400,
        "bad_request",
    );
    check(
        &call(
            h,
            "POST",
            &msgs,
            Some(&vt),
            Some(json!({"kind": "video", "body": "x"})),
        )
        .await,
        400,
        "bad_request",
    );
    check(
        &call(h, "GET", "/chat/api/blacklist", Some(&vt), None).await,
        403,
        "forbidden",
    );
    check(
        &call(
            h,
            "POST",
            "/chat/api/visitors",
            None,
            Some(json!({"shop": "nope"})),
        )
        .await,
        404,
        "not_found",
    );

    // The shop blocks the visitors' address (loopback here): refused at once.
    let r = call(
        h,
        "POST",
        "/chat/api/blacklist",
        Some(&acme),
        Some(json!({"ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    check(
        &call(h, "GET", &msgs, Some(&vt), None).await,
        403,
        "forbidden",
    );
    check(
        &call(
            h,
            "POST",
            "/chat/api/visitors",
            None,
            Some(json!({"shop": "acme"})),
        )
        .await,
        403,
        "forbidden",
    );
    // Another shop's visitors from the same address are not affected.
    visitor(h, "globex").await;
    let r = call(
        h,
        "DELETE",
        "/chat/api/blacklist/127.0.0.1",
        Some(&acme),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(call(h, "GET", &msgs, Some(&vt), None).await.status, 200);

    // A socket with a forged chat token is refused; a chat socket may not join
    // a room (its grant holds none: the reply names the room it still holds,
    // none).
    let mut bad = Client::ws(s.ws_addrs[0]).await;
    bad.send(
        herald_proto::Op::AUTH,
        json!({ "chat": forged }).to_string().as_bytes(),
    )
    .await;
    bad.expect_closed().await;
    // goim's clients (trust mode here) cannot claim a chat user's member id.
    let mut impostor = Client::ws(s.ws_addrs[0]).await;
    impostor
        .send(
            herald_proto::Op::AUTH,
            &auth_body((1 << 52) + 1, "impostor", "", &[5]),
        )
        .await;
    impostor.expect_closed().await;
    let mut ok_socket = chat_socket(s.ws_addrs[0], &vt).await;
    ok_socket
        .send(herald_proto::Op::CHANGE_ROOM, b"live://1")
        .await;
    let f = ok_socket.recv().await.unwrap();
    assert_eq!(
        (f.op, f.body.len()),
        (herald_proto::Op::CHANGE_ROOM_REPLY, 0)
    );

    // Logout ends that session; a password change ends every earlier one.
    let r = call(h, "POST", "/chat/api/logout", Some(&vt), None).await;
    assert_eq!(r.status, 204);
    check(
        &call(h, "GET", &msgs, Some(&vt), None).await,
        401,
        "unauthorized",
    );
    let mut ended = Client::ws(s.ws_addrs[0]).await;
    ended
        .send(
            herald_proto::Op::AUTH,
            json!({ "chat": vt }).to_string().as_bytes(),
        )
        .await;
    ended.expect_closed().await;
    let r = call(
        h,
        "POST",
        "/chat/api/password",
        Some(&acme),
        Some(json!({"current": "correct horse", "new": "battery staple"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let renewed = r.json()["token"].as_str().unwrap().to_string();
    check(
        &call(h, "GET", "/chat/api/me", Some(&acme), None).await,
        401,
        "unauthorized",
    );
    let r = call(h, "GET", "/chat/api/me", Some(&renewed), None).await;
    assert_eq!(r.json()["user"]["username"], "alice");
    // A login right after the change (within the same second) makes a session
    // that works.
    let r = call(
        h,
        "POST",
        "/chat/api/login",
        None,
        Some(json!({"username": "alice", "password": "battery staple"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let again = r.json()["token"].as_str().unwrap().to_string();
    let r = call(h, "GET", "/chat/api/me", Some(&again), None).await;
    assert_eq!(
        r.status,
        200,
        "a login just after a password change: {}",
        r.text()
    );
    s.shutdown().await;
}

/// A multipart/form-data body with one file field.
fn form(name: &str, filename: &str, declared: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "herald-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {declared}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn images_upload_as_multipart_and_are_served_to_members_only() {
    let s = start().await;
    let h = s.http_addr;
    let agent = register(h, "acme", "alice").await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (vt, conv) = visitor(h, "acme").await;
    let (other, _) = visitor(h, "acme").await;
    let uploads = format!("/chat/api/conversations/{conv}/uploads");
    let send_form = |token: String, ct: String, body: Vec<u8>| {
        let uploads = uploads.clone();
        async move {
            let auth = format!("Bearer {token}");
            http_with(
                h,
                "POST",
                &uploads,
                &[("Content-Type", &ct), ("Authorization", &auth)],
                &body,
            )
            .await
        }
    };

    // A PNG called cat.txt and declared as text: stored as what it is.
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01".to_vec();
    let (ct, body) = form("file", "cat.txt", "text/plain", &png);
    let r = send_form(vt.clone(), ct, body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let up = r.json();
    assert_eq!(up["content_type"], "image/png");
    let id = up["id"].as_str().unwrap().to_string();

    // Served to members (the token in the query, as an <img src> sends it)...
    let r = http(
        h,
        "GET",
        &format!("/chat/api/uploads/{id}?token={agent}"),
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, png);
    assert_eq!(r.header("content-type").as_deref(), Some("image/png"));
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(r.header("cache-control").unwrap().contains("private"));
    // ... and to nobody else.
    let r = http(
        h,
        "GET",
        &format!("/chat/api/uploads/{id}?token={other}"),
        b"",
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (404, json!("not_found"))
    );
    let r = http(h, "GET", &format!("/chat/api/uploads/{id}"), b"").await;
    assert_eq!(r.status, 401);

    // An image message names it.
    let r = call(
        h,
        "POST",
        &format!("/chat/api/conversations/{conv}/messages"),
        Some(&vt),
        Some(json!({"kind": "image", "body": id})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // Refused: an SVG named .png, a file over the limit, no file, no form.
    let (ct, body) = form("file", "x.png", "image/png", b"<svg onload='alert(1)'/>");
    let r = send_form(vt.clone(), ct, body).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (415, json!("unsupported_media_type"))
    );
    let mut huge = png.clone();
    huge.resize(5 * 1024 * 1024 + 1, 0);
    let (ct, body) = form("file", "big.png", "image/png", &huge);
    let r = send_form(vt.clone(), ct, body).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (413, json!("payload_too_large"))
    );
    let (ct, body) = form("picture", "a.png", "image/png", &png);
    let r = send_form(vt.clone(), ct, body).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("bad_request"))
    );
    let r = send_form(vt.clone(), "application/json".into(), b"{}".to_vec()).await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("bad_request"))
    );
    s.shutdown().await;
}

#[tokio::test]
async fn new_visitors_from_one_address_are_limited() {
    let s = start().await;
    let h = s.http_addr;
    register(h, "acme", "alice").await;
    for _ in 0..20 {
        visitor(h, "acme").await;
    }
    let r = call(
        h,
        "POST",
        "/chat/api/visitors",
        None,
        Some(json!({"shop": "acme"})),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["code"], "too_many_requests");
    s.shutdown().await;
}

/// The chat's pages are served by the API port, embedded, with headers that
/// keep what users type from running: a policy without inline script, no
/// sniffing, no referrer; the console may not be framed, the visitor window may.
#[tokio::test]
async fn chat_pages_are_served_with_a_strict_policy() {
    let s = start().await;
    let h = s.http_addr;
    for (path, framed) in [("/chat/", false), ("/chat/visitor?shop=acme", true)] {
        let page = get(h, path).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(
            page.header("content-type").as_deref(),
            Some("text/html; charset=utf-8")
        );
        let csp = page.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("script-src 'self';") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert_eq!(
            csp.contains("frame-ancestors 'none'"),
            !framed,
            "{path}: {csp}"
        );
        assert_eq!(
            page.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(
            page.header("referrer-policy").as_deref(),
            Some("no-referrer")
        );
        let html = page.text();
        assert!(!html.contains("<script>"), "{path}: inline script");
        assert!(!html.contains("https://"), "{path}: a remote asset");
    }
    for (file, ctype) in [
        ("console.js", "text/javascript; charset=utf-8"),
        ("visitor.js", "text/javascript; charset=utf-8"),
        ("client.js", "text/javascript; charset=utf-8"),
        ("conversation.js", "text/javascript; charset=utf-8"),
        ("ui.js", "text/javascript; charset=utf-8"),
        ("chat.css", "text/css; charset=utf-8"),
    ] {
        let a = get(h, &format!("/chat/assets/{file}")).await;
        assert_eq!(a.status, 200, "{file}");
        assert_eq!(a.header("content-type").as_deref(), Some(ctype), "{file}");
    }
    // The pages import the client the demo uses.
    assert!(get(h, "/chat/assets/client.js")
        .await
        .text()
        .contains("from '/_/sdk/herald.js'"));
    assert_eq!(
        get(h, "/chat/assets/console.html").await.status,
        404,
        "a page only with its policy"
    );
    assert_eq!(get(h, "/chat/assets/nope.js").await.status, 404);
    assert_eq!(get(h, "/chat/assets/..%2Fchat.rs").await.status, 404);
    let r = get(h, "/chat").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location").as_deref(), Some("/chat/"));
    s.shutdown().await;
}

/// A shop's events reach an agent added after they started (the shop's agents
/// are kept in memory for sends, and an added agent is in them at once).
#[tokio::test]
async fn an_added_agent_gets_the_shops_events_at_once() {
    let s = start().await;
    let h = s.http_addr;
    let ws = s.ws_addrs[0];
    let first = register(h, "kiosk", "kim").await;
    let first_token = first["token"].as_str().unwrap().to_string();
    let (visitor_token, conv) = visitor(h, "kiosk").await;
    let mut first_socket = chat_socket(ws, &first_token).await;
    let mut visitor_socket = chat_socket(ws, &visitor_token).await;
    // A send, so that the shop's agents are known to the sending path.
    let (sent, _) = chat_op(&mut visitor_socket, 4, &json!({"body": "one"})).await;
    assert_eq!(sent["type"], "sent", "{sent}");
    assert_eq!(
        chat_event_of(&mut first_socket, "message").await["message"]["body"],
        "one"
    );

    let r = call(
        h,
        "POST",
        "/chat/api/agents",
        Some(&first_token),
        Some(json!({"username": "kai", "password": "correct horse"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let login = call(
        h,
        "POST",
        "/chat/api/login",
        None,
        Some(json!({"username": "kai", "password": "correct horse"})),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text());
    let second_token = login.json()["token"].as_str().unwrap().to_string();
    let mut second_socket = chat_socket(ws, &second_token).await;

    let (sent, _) = chat_op(
        &mut visitor_socket,
        4,
        &json!({"conversation_id": conv, "body": "two"}),
    )
    .await;
    assert_eq!(sent["type"], "sent", "{sent}");
    assert_eq!(
        chat_event_of(&mut second_socket, "message").await["message"]["body"],
        "two"
    );
    assert_eq!(
        chat_event_of(&mut first_socket, "message").await["message"]["body"],
        "two"
    );
    s.shutdown().await;
}
