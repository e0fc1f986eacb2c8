//! The chat's rules on a real SQLite store: sessions, tenants, who may touch
//! what, idempotent sends, events to the right members, read receipts, bad input.
//! Events are caught by a publisher that records what it is given (logic's push
//! path is exercised by the server's end-to-end tests).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_chat::blobs::DirBlobs;
use herald_chat::service::Draft;
use herald_chat::service::{chat_mid, Limits, EVENT_OP};
use herald_chat::{Chat, ChatError, Page, Publisher, SqlStore, VisitorQuery};
use serde_json::Value;

/// A message for `Chat::send`.
fn draft<'a>(
    conversation: i64,
    kind: &'a str,
    body: &'a str,
    client_id: Option<&'a str>,
) -> Draft<'a> {
    Draft {
        conversation,
        kind,
        body,
        client_id,
    }
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(i32, Vec<i64>, Value)>>,
    down: Mutex<bool>,
    /// The members with a connection.
    connected: Mutex<Vec<i64>>,
}

#[async_trait]
impl Publisher for Recorder {
    async fn push_mids(&self, op: i32, mids: &[i64], body: Vec<u8>) -> Result<(), String> {
        if *self.down.lock().unwrap() {
            return Err("queue unavailable".into());
        }
        let mut mids = mids.to_vec();
        mids.sort_unstable();
        self.events
            .lock()
            .unwrap()
            .push((op, mids, serde_json::from_slice(&body).unwrap()));
        Ok(())
    }

    async fn online(&self, mids: &[i64]) -> Result<Vec<i64>, String> {
        let connected = self.connected.lock().unwrap();
        Ok(mids
            .iter()
            .copied()
            .filter(|m| connected.contains(m))
            .collect())
    }
}

impl Recorder {
    fn take(&self) -> Vec<(i32, Vec<i64>, Value)> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

async fn chat() -> (Chat, Arc<Recorder>, std::path::PathBuf) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "herald-chat-service-{}-{:x}-{}",
        std::process::id(),
        herald_chat::now_ms(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqlStore::sqlite(&dir.join("chat.db"), 4).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let blobs = DirBlobs::new(dir.join("uploads")).unwrap();
    let chat = Chat::new(
        Arc::new(store),
        Arc::new(blobs),
        &[9u8; 32],
        recorder.clone(),
        Limits::default(),
    )
    .unwrap();
    (chat, recorder, dir)
}

const NOW: i64 = 1_800_000_000_000;

#[tokio::test]
async fn a_visitor_and_an_agent_chat_with_sessions_events_and_read_receipts() {
    let (chat, events, dir) = chat().await;
    let reg = chat
        .register("acme", "alice", "correct horse", "Alice", NOW)
        .await
        .unwrap();
    let alice = chat.caller(&reg.token, None, NOW).await.unwrap();
    let bob_user = chat
        .add_agent(&alice, "bob", "battery staple", "Bob", NOW)
        .await
        .unwrap();
    let bob = chat
        .caller(
            &chat
                .login("bob", "battery staple", NOW)
                .await
                .unwrap()
                .token,
            None,
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(bob.user.id, bob_user.id);

    // A visitor opens the window: a session and its conversation.
    let (vis, conv) = chat
        .create_visitor("acme", None, Some("203.0.113.7"), NOW)
        .await
        .unwrap();
    let visitor = chat
        .caller(&vis.token, Some("203.0.113.7"), NOW)
        .await
        .unwrap();
    assert!(vis.user.nickname.starts_with("visitor-"));

    // The visitor sends; a retry with the same client id stores nothing new.
    let sent = chat
        .send(
            &visitor,
            draft(conv.id, "text", "hello?", Some("v-1")),
            NOW + 1,
        )
        .await
        .unwrap();
    assert!(sent.created && sent.pushed);
    assert_eq!(sent.message.id, 1);
    let retry = chat
        .send(
            &visitor,
            draft(conv.id, "text", "hello?", Some("v-1")),
            NOW + 2,
        )
        .await
        .unwrap();
    assert!(!retry.created);
    assert_eq!(retry.message, sent.message);
    // Each push went to both agents and the visitor, as a message event.
    let pushed = events.take();
    assert_eq!(pushed.len(), 2, "the retry is pushed again");
    // (On the goim side chat users have their own member ids: see chat_mid.)
    let mut members: Vec<i64> = [alice.user.id, bob.user.id, visitor.user.id]
        .iter()
        .map(|id| chat_mid(*id))
        .collect();
    members.sort_unstable();
    for (op, mids, body) in &pushed {
        assert_eq!(*op, EVENT_OP);
        assert_eq!(mids, &members);
        assert_eq!(body["type"], "message");
        assert_eq!(body["message"]["body"], "hello?");
        assert_eq!(body["message"]["conversation_id"], conv.id);
    }

    // The agent sees it unread, replies, reads; the visitor gets the receipt.
    let list = chat.conversations(&alice, 0, 20).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].unread, 1);
    assert_eq!(list[0].last.as_ref().unwrap().body, "hello?");
    chat.send(
        &alice,
        draft(conv.id, "text", "Hi! How can I help?", None),
        NOW + 3,
    )
    .await
    .unwrap();
    assert_eq!(chat.mark_read(&alice, conv.id, 2).await.unwrap(), 2);
    assert_eq!(chat.unread(&alice, conv.id).await.unwrap(), 0);
    assert_eq!(chat.unread(&visitor, conv.id).await.unwrap(), 1);
    let pushed = events.take();
    let read = &pushed.last().unwrap().2;
    assert_eq!(read["type"], "read");
    assert_eq!(read["user_id"], alice.user.id);
    assert_eq!(read["position"], 2);

    // History pages, oldest first.
    let page = chat
        .history(&visitor, conv.id, Page::Newest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.body.as_str())
            .collect::<Vec<_>>(),
        vec!["hello?", "Hi! How can I help?"]
    );
    // With the read state: the visitor has not read the agent's reply; the
    // agent has read both (a read receipt for the visitor's message).
    assert_eq!(
        (page.position, page.unread, page.last_message_id),
        (0, 1, 2)
    );
    assert_eq!(
        page.reads,
        vec![herald_chat::service::ReadPosition {
            user_id: alice.user.id,
            position: 2
        }]
    );

    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sessions_are_checked_and_tenants_kept_apart() {
    let (chat, _events, dir) = chat().await;
    let acme = chat
        .register("acme", "alice", "correct horse", "Alice", NOW)
        .await
        .unwrap();
    let globex = chat
        .register("globex", "mallory", "correct horse", "Mallory", NOW)
        .await
        .unwrap();
    let alice = chat.caller(&acme.token, None, NOW).await.unwrap();
    let mallory = chat.caller(&globex.token, None, NOW).await.unwrap();
    let (vis, conv) = chat
        .create_visitor("acme", Some("Ann"), None, NOW)
        .await
        .unwrap();
    let visitor = chat.caller(&vis.token, None, NOW).await.unwrap();
    let (_, other_conv) = chat
        .create_visitor("acme", Some("Ben"), None, NOW)
        .await
        .unwrap();

    // Logins: one answer for a wrong name and a wrong password.
    let e1 = chat
        .login("alice", "wrong password", NOW)
        .await
        .unwrap_err();
    let e2 = chat
        .login("nobody", "wrong password", NOW)
        .await
        .unwrap_err();
    assert_eq!(e1.to_string(), e2.to_string());
    assert_eq!(e1.status(), 401);

    // Forged, foreign and expired tokens.
    let mut forged = acme.token.clone();
    forged.pop();
    forged.push(if acme.token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        chat.caller(&forged, None, NOW).await.unwrap_err().status(),
        401
    );
    assert_eq!(
        chat.caller("not a token", None, NOW)
            .await
            .unwrap_err()
            .status(),
        401
    );
    let week = Limits::default().token_ttl.as_millis() as i64;
    assert_eq!(
        chat.caller(&acme.token, None, NOW + week + 1_000)
            .await
            .unwrap_err()
            .status(),
        401
    );

    // Another shop's agent and another visitor see nothing of the conversation.
    for (who, c) in [(&mallory, conv.id), (&visitor, other_conv.id)] {
        let e = chat
            .send(who, draft(c, "text", "hi", None), NOW)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 404, "{e}");
        assert_eq!(
            chat.history(who, c, Page::Newest { limit: 5 })
                .await
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(chat.mark_read(who, c, 1).await.unwrap_err().status(), 404);
    }
    assert!(chat
        .conversations(&mallory, 0, 10)
        .await
        .unwrap()
        .is_empty());
    // Agents' tools are refused to visitors.
    assert_eq!(chat.blocked(&visitor).await.unwrap_err().status(), 403);
    assert_eq!(
        chat.visitors(
            &visitor,
            &VisitorQuery {
                limit: 10,
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap_err()
        .status(),
        403
    );
    assert_eq!(
        chat.assign(&mallory, conv.id, Some(mallory.user.id))
            .await
            .unwrap_err()
            .status(),
        404
    );
    chat.assign(&alice, conv.id, Some(alice.user.id))
        .await
        .unwrap();
    assert_eq!(
        chat.direct(&alice, mallory.user.id, NOW)
            .await
            .unwrap_err()
            .status(),
        404,
        "a user of another shop is not found"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_blacklist_is_enforced_and_bad_input_refused() {
    let (chat, events, dir) = chat().await;
    let acme = chat
        .register("acme", "alice", "correct horse", "Alice", NOW)
        .await
        .unwrap();
    let alice = chat.caller(&acme.token, None, NOW).await.unwrap();
    let (vis, conv) = chat
        .create_visitor("acme", None, Some("198.51.100.9"), NOW)
        .await
        .unwrap();
    chat.block(&alice, "198.51.100.9", NOW).await.unwrap();
    assert_eq!(chat.blocked(&alice).await.unwrap(), vec!["198.51.100.9"]);
    // A new visitor from that address, and every call of the existing one.
    let e = chat
        .create_visitor("acme", None, Some("198.51.100.9"), NOW)
        .await
        .unwrap_err();
    assert_eq!(e.status(), 403);
    assert_eq!(
        chat.caller(&vis.token, Some("198.51.100.9"), NOW)
            .await
            .unwrap_err()
            .status(),
        403
    );
    assert_eq!(
        chat.block(&alice, "not an ip", NOW)
            .await
            .unwrap_err()
            .status(),
        400
    );
    assert!(chat.unblock(&alice, "198.51.100.9").await.unwrap());
    let visitor = chat
        .caller(&vis.token, Some("198.51.100.9"), NOW)
        .await
        .unwrap();

    // Bad input: each a 400 with a reason, nothing stored.
    let long = "x".repeat(4001);
    for (kind, body) in [("video", "hi"), ("text", "   "), ("text", long.as_str())] {
        let e = chat
            .send(&visitor, draft(conv.id, kind, body, None), NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, ChatError::BadRequest(_)), "{e}");
    }
    let e = chat
        .send(
            &visitor,
            draft(conv.id, "text", "hi", Some(&"c".repeat(65))),
            NOW,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), 400);
    for (shop, user, pass) in [
        ("a", "alice2", "correct horse"),
        ("shop two", "alice2", "correct horse"),
        ("shop2", "alice2", "short"),
        ("shop2", "<b>x</b>", "correct horse"),
    ] {
        let e = chat
            .register(shop, user, pass, "Nick", NOW)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 400, "{shop} {user}");
    }
    assert_eq!(
        chat.register("acme", "alice3", "correct horse", "N", NOW)
            .await
            .unwrap_err()
            .status(),
        409
    );
    assert_eq!(
        chat.history(&visitor, conv.id, Page::Newest { limit: 0 })
            .await
            .unwrap_err()
            .status(),
        400
    );
    assert!(chat
        .history(&visitor, conv.id, Page::Newest { limit: 10 })
        .await
        .unwrap()
        .messages
        .is_empty());

    // A push that cannot be handed on: stored, reported as not pushed.
    *events.down.lock().unwrap() = true;
    let sent = chat
        .send(&visitor, draft(conv.id, "text", "anyone?", None), NOW)
        .await
        .unwrap();
    assert!(sent.created && !sent.pushed);
    assert_eq!(
        chat.store()
            .messages(conv.id, Page::Newest { limit: 5 })
            .await
            .unwrap()
            .len(),
        1
    );

    // Passwords change only with the current one.
    assert_eq!(
        chat.change_password(&alice, "wrong", "new password", NOW)
            .await
            .unwrap_err()
            .status(),
        403
    );
    let other_session = chat.login("alice", "correct horse", NOW).await.unwrap();
    let renewed = chat
        .change_password(&alice, "correct horse", "new password", NOW + 5)
        .await
        .unwrap();
    assert!(chat.login("alice", "correct horse", NOW).await.is_err());
    chat.login("alice", "new password", NOW + 10_000)
        .await
        .unwrap();
    // Every earlier session has ended; the answer's session works.
    for old in [&acme.token, &other_session.token] {
        assert_eq!(
            chat.caller(old, None, NOW + 10).await.unwrap_err().status(),
            401
        );
    }
    let alice = chat.caller(&renewed.token, None, NOW + 10).await.unwrap();

    // Logout ends that session only.
    let second = chat
        .login("alice", "new password", NOW + 2_000)
        .await
        .unwrap();
    chat.logout(&alice).await.unwrap();
    assert_eq!(
        chat.caller(&renewed.token, None, NOW + 3_000)
            .await
            .unwrap_err()
            .status(),
        401
    );
    chat.caller(&second.token, None, NOW + 3_000).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";

#[tokio::test]
async fn images_are_uploaded_sniffed_and_served_to_members_only() {
    let (chat, _events, dir) = chat().await;
    let acme = chat
        .register("acme", "alice", "correct horse", "Alice", NOW)
        .await
        .unwrap();
    let alice = chat.caller(&acme.token, None, NOW).await.unwrap();
    let (vis, conv) = chat.create_visitor("acme", None, None, NOW).await.unwrap();
    let visitor = chat.caller(&vis.token, None, NOW).await.unwrap();
    let (other, other_conv) = chat.create_visitor("acme", None, None, NOW).await.unwrap();
    let other = chat.caller(&other.token, None, NOW).await.unwrap();

    let up = chat.upload(&visitor, conv.id, PNG, NOW).await.unwrap();
    assert_eq!(
        (up.content_type.as_str(), up.size),
        ("image/png", PNG.len() as i64)
    );
    // Members get the bytes; another visitor is told it does not exist.
    let (meta, bytes) = chat.download(&alice, &up.id).await.unwrap();
    assert_eq!((meta, bytes.as_slice()), (up.clone(), PNG));
    assert_eq!(
        chat.download(&other, &up.id).await.unwrap_err().status(),
        404
    );
    assert_eq!(
        chat.download(&alice, "u-nope").await.unwrap_err().status(),
        404
    );

    // The type comes from the bytes, whatever the file was called.
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>";
    assert_eq!(
        chat.upload(&visitor, conv.id, svg, NOW)
            .await
            .unwrap_err()
            .status(),
        415
    );
    assert_eq!(
        chat.upload(&visitor, conv.id, b"", NOW)
            .await
            .unwrap_err()
            .status(),
        400
    );
    let big = vec![0x89u8; Limits::default().max_upload + 1];
    assert_eq!(
        chat.upload(&visitor, conv.id, &big, NOW)
            .await
            .unwrap_err()
            .status(),
        413
    );
    assert_eq!(
        chat.upload(&other, conv.id, PNG, NOW)
            .await
            .unwrap_err()
            .status(),
        404,
        "not into another's conversation"
    );

    // An image message names an upload of its own conversation.
    let sent = chat
        .send(&visitor, draft(conv.id, "image", &up.id, None), NOW)
        .await
        .unwrap();
    assert_eq!(sent.message.kind, "image");
    let theirs = chat.upload(&other, other_conv.id, PNG, NOW).await.unwrap();
    for body in [theirs.id.as_str(), "u-nope"] {
        assert_eq!(
            chat.send(&visitor, draft(conv.id, "image", body, None), NOW)
                .await
                .unwrap_err()
                .status(),
            400
        );
    }

    // The retention purge takes the bytes with the conversation.
    let blob = dir.join("uploads").join(&up.id);
    assert!(blob.is_file());
    let purged = chat.purge(NOW + 1).await.unwrap();
    assert_eq!(purged.visitors, 2);
    assert_eq!(purged.uploads.len(), 2);
    assert!(!blob.exists(), "the upload's file is gone");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn visitor_lists_say_who_is_connected_and_typing_is_told_sparingly() {
    let (chat, events, dir) = chat().await;
    let acme = chat
        .register("acme", "alice", "correct horse", "Alice", NOW)
        .await
        .unwrap();
    let alice = chat.caller(&acme.token, None, NOW).await.unwrap();
    let (a, conv) = chat
        .create_visitor("acme", Some("Ann"), None, NOW)
        .await
        .unwrap();
    let (b, _) = chat
        .create_visitor("acme", Some("Ben"), None, NOW + 1)
        .await
        .unwrap();
    events.connected.lock().unwrap().push(chat_mid(a.user.id));
    let q = VisitorQuery {
        limit: 10,
        ..Default::default()
    };
    let all = chat.visitors(&alice, &q, false).await.unwrap();
    let flags: Vec<(i64, bool)> = all.iter().map(|l| (l.user.id, l.online)).collect();
    assert_eq!(flags, vec![(b.user.id, false), (a.user.id, true)]);
    let online = chat.visitors(&alice, &q, true).await.unwrap();
    assert_eq!(online.len(), 1);
    assert_eq!(online[0].user.nickname, "Ann");

    // Typing: told to the members once, then not again within two seconds.
    let ann = chat.caller(&a.token, None, NOW).await.unwrap();
    assert!(chat.typing(&ann, conv.id).await.unwrap());
    assert!(!chat.typing(&ann, conv.id).await.unwrap());
    let told = events.take();
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].2["type"], "typing");
    assert_eq!(told[0].2["user_id"], ann.user.id);
    // Another member is told separately.
    assert!(chat.typing(&alice, conv.id).await.unwrap());

    // A visitor talks 1:1 with agents only.
    assert_eq!(
        chat.direct(&ann, b.user.id, NOW)
            .await
            .unwrap_err()
            .status(),
        403
    );
    chat.direct(&ann, alice.user.id, NOW).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn logins_and_new_visitors_are_limited_per_address() {
    use herald_chat::service::Attempt;
    let (chat, _events, dir) = chat().await;
    for _ in 0..10 {
        chat.admit(Attempt::Login, Some("192.0.2.1")).unwrap();
    }
    let e = chat.admit(Attempt::Login, Some("192.0.2.1")).unwrap_err();
    assert_eq!(e.status(), 429, "{e}");
    // Another address, another kind, and calls from no address are not affected.
    chat.admit(Attempt::Login, Some("192.0.2.2")).unwrap();
    chat.admit(Attempt::Visitor, Some("192.0.2.1")).unwrap();
    chat.admit(Attempt::Login, None).unwrap();
    for _ in 0..19 {
        chat.admit(Attempt::Visitor, Some("192.0.2.1")).unwrap();
    }
    assert_eq!(
        chat.admit(Attempt::Visitor, Some("192.0.2.1"))
            .unwrap_err()
            .status(),
        429
    );
    let _ = std::fs::remove_dir_all(&dir);
}
