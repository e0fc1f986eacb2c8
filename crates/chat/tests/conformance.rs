//! One conformance suite for the chat store, run against both engines: a SQLite
//! file in a scratch directory and a private PostgreSQL server (started by the
//! test kit as the `postgres` user; the test fails if PostgreSQL is not
//! installed).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use herald_chat::{
    ChatStore, ConversationKind, NewAgent, NewMessage, Page, Role, SqlStore, StoreError, User,
    VisitorQuery,
};

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "herald-chat-{tag}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn agent<'a>(username: &'a str) -> NewAgent<'a> {
    NewAgent {
        username,
        nickname: username,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
    }
}

/// The stored read positions of a conversation.
async fn positions(store: &dyn ChatStore, conversation_id: i64, reader: i64) -> Vec<(i64, i64)> {
    store
        .read_state(conversation_id, reader)
        .await
        .unwrap()
        .map(|s| s.positions)
        .unwrap_or_default()
}

fn text(
    conversation_id: i64,
    sender: &User,
    body: &str,
    client_id: Option<&str>,
    at: i64,
) -> NewMessage {
    NewMessage {
        conversation_id,
        sender_id: sender.id,
        kind: "text".into(),
        body: body.into(),
        client_id: client_id.map(String::from),
        at,
    }
}

/// Every behaviour of the seam, on one store.
async fn conformance(store: Arc<dyn ChatStore>) {
    // Shops and agents.
    let (shop, alice) = store
        .create_shop("acme", &agent("alice"), 1_000)
        .await
        .unwrap();
    assert_eq!(shop.name, "acme");
    assert_eq!((alice.role, alice.shop_id), (Role::Agent, shop.id));
    assert!(matches!(
        store.create_shop("acme", &agent("other"), 1_000).await,
        Err(StoreError::Conflict("shop"))
    ));
    // The failed shop left no agent behind.
    assert!(store.agent_login("other").await.unwrap().is_none());
    assert!(matches!(
        store.create_agent(shop.id, &agent("alice"), 1_000).await,
        Err(StoreError::Conflict("user name"))
    ));
    let bob = store
        .create_agent(shop.id, &agent("bob"), 1_001)
        .await
        .unwrap();
    assert!(matches!(
        store.create_agent(999_999, &agent("carol"), 1_001).await,
        Err(StoreError::NotFound("shop"))
    ));
    let (found, hash) = store.agent_login("alice").await.unwrap().unwrap();
    assert_eq!(found, alice);
    assert!(hash.starts_with("$argon2id$"));
    store.set_password(alice.id, "$argon2id$new").await.unwrap();
    assert_eq!(
        store.agent_login("alice").await.unwrap().unwrap().1,
        "$argon2id$new"
    );
    assert_eq!(
        store
            .agents(shop.id)
            .await
            .unwrap()
            .iter()
            .map(|u| u.id)
            .collect::<Vec<_>>(),
        vec![alice.id, bob.id]
    );
    assert_eq!(
        store.shop_by_name("acme").await.unwrap(),
        Some(shop.clone())
    );
    assert_eq!(store.shop_by_name("nope").await.unwrap(), None);
    let (other_shop, mallory) = store
        .create_shop("globex", &agent("mallory"), 1_000)
        .await
        .unwrap();

    // Visitors and their kefu conversation.
    let v1 = store
        .create_visitor(shop.id, "visitor 1", Some("10.0.0.1"), 2_000)
        .await
        .unwrap();
    let v2 = store
        .create_visitor(shop.id, "Visitor_2", Some("10.0.0.2"), 2_500)
        .await
        .unwrap();
    assert!(matches!(
        store.create_visitor(999_999, "x", None, 2_000).await,
        Err(StoreError::NotFound("shop"))
    ));
    assert_eq!(v1.role, Role::Visitor);
    let kefu = store.kefu_conversation(&v1, 3_000).await.unwrap();
    assert_eq!(kefu.kind, ConversationKind::Kefu);
    assert_eq!(kefu.visitor_id, Some(v1.id));
    assert_eq!(kefu.last_message_id, 0);
    // Asked again: the same conversation.
    assert_eq!(
        store.kefu_conversation(&v1, 3_500).await.unwrap().id,
        kefu.id
    );
    assert!(matches!(
        store.kefu_conversation(&alice, 3_000).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(kefu.admits(&alice) && kefu.admits(&bob) && kefu.admits(&v1));
    assert!(!kefu.admits(&v2), "another visitor of the shop");
    assert!(!kefu.admits(&mallory), "an agent of another shop");

    // Messages: ids count up from 1 per conversation; a retried client id adds nothing.
    let (m1, new) = store
        .append(&text(kefu.id, &v1, "hello", Some("c-1"), 4_000))
        .await
        .unwrap();
    assert!(new);
    assert_eq!(m1.id, 1);
    let (again, new) = store
        .append(&text(kefu.id, &v1, "hello (retried)", Some("c-1"), 4_001))
        .await
        .unwrap();
    assert!(!new);
    assert_eq!(again, m1, "the stored message, not the retried body");
    let (m2, _) = store
        .append(&text(
            kefu.id,
            &alice,
            "hi, how can I help?",
            Some("c-1"),
            4_100,
        ))
        .await
        .unwrap();
    assert_eq!(m2.id, 2, "another sender may use the same client id");
    for i in 3..=10 {
        let (m, _) = store
            .append(&text(kefu.id, &v1, &format!("line {i}"), None, 4_000 + i))
            .await
            .unwrap();
        assert_eq!(m.id, i);
    }
    assert!(matches!(
        store.append(&text(999_999, &v1, "x", None, 1)).await,
        Err(StoreError::NotFound("conversation"))
    ));
    let ids = |ms: Vec<herald_chat::Message>| ms.iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store
            .messages(kefu.id, Page::Newest { limit: 3 })
            .await
            .unwrap()),
        vec![8, 9, 10]
    );
    assert_eq!(
        ids(store
            .messages(kefu.id, Page::Before { id: 8, limit: 3 })
            .await
            .unwrap()),
        vec![5, 6, 7]
    );
    assert_eq!(
        ids(store
            .messages(kefu.id, Page::Before { id: 3, limit: 5 })
            .await
            .unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        ids(store
            .messages(kefu.id, Page::After { id: 8, limit: 5 })
            .await
            .unwrap()),
        vec![9, 10]
    );
    assert_eq!(
        store
            .messages(kefu.id, Page::Newest { limit: 1 })
            .await
            .unwrap()[0]
            .body,
        "line 10"
    );

    // Read positions and unread: others' messages after the position.
    assert!(positions(&*store, kefu.id, alice.id).await.is_empty());
    assert_eq!(
        store.unread(kefu.id, alice.id).await.unwrap(),
        9,
        "all but alice's own"
    );
    assert_eq!(
        store.unread(kefu.id, v1.id).await.unwrap(),
        1,
        "alice's reply"
    );
    assert_eq!(store.mark_read(kefu.id, alice.id, 5).await.unwrap(), 5);
    assert_eq!(store.unread(kefu.id, alice.id).await.unwrap(), 5);
    assert_eq!(
        store.read_state(kefu.id, alice.id).await.unwrap(),
        Some(herald_chat::ReadState {
            last_message_id: 10,
            positions: vec![(alice.id, 5)],
            unread: 5
        })
    );
    assert_eq!(
        store.read_state(kefu.id + 1000, alice.id).await.unwrap(),
        None,
        "no such conversation"
    );
    assert_eq!(
        store.mark_read(kefu.id, alice.id, 3).await.unwrap(),
        5,
        "never back"
    );
    assert_eq!(
        store.mark_read(kefu.id, alice.id, 1_000).await.unwrap(),
        10,
        "never past the newest"
    );
    assert_eq!(store.unread(kefu.id, alice.id).await.unwrap(), 0);
    assert_eq!(
        store.unread(kefu.id, bob.id).await.unwrap(),
        10,
        "each reader has its own position (bob sent none of the ten)"
    );
    assert!(matches!(
        store.mark_read(999_999, alice.id, 1).await,
        Err(StoreError::NotFound("conversation"))
    ));

    // Direct conversations: keyed by the sorted pair, within one shop.
    let direct = store
        .direct_conversation(&bob, &alice, 5_000)
        .await
        .unwrap();
    assert_eq!(direct.kind, ConversationKind::Direct);
    assert_eq!(
        direct.pair,
        Some((alice.id.min(bob.id), alice.id.max(bob.id)))
    );
    assert_eq!(
        store
            .direct_conversation(&alice, &bob, 5_001)
            .await
            .unwrap()
            .id,
        direct.id
    );
    assert!(matches!(
        store.direct_conversation(&alice, &mallory, 5_000).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.direct_conversation(&alice, &alice, 5_000).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(direct.admits(&alice) && direct.admits(&bob));
    assert!(!direct.admits(&v1) && !direct.admits(&mallory));
    let (d1, _) = store
        .append(&text(direct.id, &bob, "lunch?", None, 6_000))
        .await
        .unwrap();
    assert_eq!(d1.id, 1, "ids are per conversation");

    // Summaries: most recently active first, with the last message and unread.
    let kefu2 = store.kefu_conversation(&v2, 5_500).await.unwrap();
    // v2 also talks 1:1 with bob, recently, and sent an image there: it goes
    // with v2 (below), and so does the record of the image.
    let v2_direct = store.direct_conversation(&v2, &bob, 5_600).await.unwrap();
    store
        .add_upload(&herald_chat::Upload {
            id: "u-v2".into(),
            conversation_id: v2_direct.id,
            uploader_id: v2.id,
            content_type: "image/png".into(),
            size: 4,
            created_at: 9_000,
        })
        .await
        .unwrap();
    store
        .append(&text(v2_direct.id, &v2, "hello bob", None, 9_000))
        .await
        .unwrap();
    let list = store.summaries(&alice, 0, 10).await.unwrap();
    let order: Vec<i64> = list.iter().map(|s| s.conversation.id).collect();
    assert_eq!(order, vec![direct.id, kefu2.id, kefu.id]);
    assert_eq!(list[0].last.as_ref().unwrap().body, "lunch?");
    assert_eq!(list[0].unread, 1);
    assert!(list[1].last.is_none());
    assert_eq!(list[1].unread, 0);
    assert_eq!(list[2].last.as_ref().unwrap().id, 10);
    assert_eq!(list[2].unread, 0);
    // Each with who is on the other side: the other user of a direct one, the
    // visitor of a visitor's conversation.
    let peers: Vec<Option<(i64, String, Option<String>)>> = list
        .iter()
        .map(|s| {
            s.peer
                .as_ref()
                .map(|p| (p.id, p.nickname.clone(), p.ip.clone()))
        })
        .collect();
    assert_eq!(
        peers,
        vec![
            Some((bob.id, bob.nickname.clone(), None)),
            Some((v2.id, v2.nickname.clone(), v2.ip.clone())),
            Some((v1.id, v1.nickname.clone(), v1.ip.clone())),
        ]
    );
    let bob_list = store.summaries(&bob, 0, 10).await.unwrap();
    let bob_direct = bob_list
        .iter()
        .find(|s| s.conversation.id == direct.id)
        .unwrap();
    assert_eq!(bob_direct.peer.as_ref().map(|p| p.id), Some(alice.id));
    let visitor_list = store.summaries(&v1, 0, 10).await.unwrap();
    assert_eq!(
        visitor_list.len(),
        1,
        "a visitor sees its own conversation only"
    );
    assert_eq!(visitor_list[0].unread, 1);
    assert_eq!(visitor_list[0].peer, None, "a visitor's own: the shop");
    assert!(store.summaries(&mallory, 0, 10).await.unwrap().is_empty());
    assert_eq!(
        store.summaries(&alice, 1, 1).await.unwrap()[0]
            .conversation
            .id,
        kefu2.id
    );

    // Assignment: to an agent of the conversation's shop only.
    store.assign(kefu.id, Some(bob.id)).await.unwrap();
    assert_eq!(
        store
            .conversation(kefu.id)
            .await
            .unwrap()
            .unwrap()
            .assignee_id,
        Some(bob.id)
    );
    assert!(store.assign(kefu.id, Some(mallory.id)).await.is_err());
    assert!(store.assign(kefu.id, Some(v2.id)).await.is_err());
    assert!(store.assign(direct.id, Some(bob.id)).await.is_err());
    store.assign(kefu.id, None).await.unwrap();
    assert_eq!(
        store
            .conversation(kefu.id)
            .await
            .unwrap()
            .unwrap()
            .assignee_id,
        None
    );

    // Visitor lists: recent first, by time, searched by nickname or address.
    store.touch(v1.id, 7_000).await.unwrap();
    store.touch(v1.id, 6_900).await.unwrap(); // never back
    assert_eq!(
        store.user(v1.id).await.unwrap().unwrap().last_seen_at,
        7_000
    );
    let shop_id = shop.id;
    let all = |q: VisitorQuery| {
        let store = store.clone();
        async move {
            store
                .visitors(shop_id, &VisitorQuery { limit: 50, ..q })
                .await
                .unwrap()
                .iter()
                .map(|u| u.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(all(VisitorQuery::default()).await, vec![v1.id, v2.id]);
    assert_eq!(
        all(VisitorQuery {
            seen_since: Some(6_000),
            ..Default::default()
        })
        .await,
        vec![v1.id]
    );
    assert_eq!(
        all(VisitorQuery {
            search: Some("visitor_".into()),
            ..Default::default()
        })
        .await,
        vec![v2.id],
        "the underscore is a character, not a wildcard; case does not matter"
    );
    assert_eq!(
        all(VisitorQuery {
            search: Some("10.0.0.1".into()),
            ..Default::default()
        })
        .await,
        vec![v1.id]
    );
    assert!(store
        .visitors(
            other_shop.id,
            &VisitorQuery {
                limit: 50,
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .is_empty());

    // Blacklist and canned replies, per shop.
    store
        .blacklist_add(shop.id, "10.9.9.9", 8_000)
        .await
        .unwrap();
    store
        .blacklist_add(shop.id, "10.9.9.9", 8_001)
        .await
        .unwrap();
    assert!(store.is_blacklisted(shop.id, "10.9.9.9").await.unwrap());
    // What every call checks, in one read.
    for (ip, blocked) in [
        (Some("10.9.9.9"), true),
        (Some("10.9.9.8"), false),
        (None, false),
    ] {
        let (u, revoked, b) = store
            .session_user(v1.id, "jti-0", ip)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((u.id, revoked, b), (v1.id, false, blocked), "{ip:?}");
    }
    assert!(!store
        .is_blacklisted(other_shop.id, "10.9.9.9")
        .await
        .unwrap());
    assert_eq!(
        store.blacklist(shop.id).await.unwrap(),
        vec!["10.9.9.9".to_string()]
    );
    assert!(store.blacklist_remove(shop.id, "10.9.9.9").await.unwrap());
    assert!(!store.blacklist_remove(shop.id, "10.9.9.9").await.unwrap());
    assert!(matches!(
        store.blacklist_add(999_999, "1.2.3.4", 1).await,
        Err(StoreError::NotFound("shop"))
    ));
    let c = store
        .canned_add(shop.id, "hello", "Hello! How can we help?", 8_000)
        .await
        .unwrap();
    assert_eq!(store.canned(shop.id).await.unwrap(), vec![c.clone()]);
    assert!(
        !store.canned_remove(other_shop.id, c.id).await.unwrap(),
        "not another shop's"
    );
    assert!(store.canned_remove(shop.id, c.id).await.unwrap());
    assert!(store.canned(shop.id).await.unwrap().is_empty());

    // Uploads: a record per file, and the store as a blob store (the cluster's).
    let up = herald_chat::Upload {
        id: "u-one".into(),
        conversation_id: kefu.id,
        uploader_id: v1.id,
        content_type: "image/png".into(),
        size: 4,
        created_at: 7_000,
    };
    store.add_upload(&up).await.unwrap();
    assert_eq!(store.upload("u-one").await.unwrap(), Some(up.clone()));
    assert_eq!(store.upload("u-two").await.unwrap(), None);
    assert!(matches!(
        store.add_upload(&up).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .add_upload(&herald_chat::Upload {
                id: "u-three".into(),
                conversation_id: 999_999,
                ..up.clone()
            })
            .await,
        Err(StoreError::NotFound("conversation"))
    ));

    // Ended sessions: one token, or every token of a user before a time.
    assert!(!store.is_revoked("jti-1").await.unwrap());
    store.revoke("jti-1", 20).await.unwrap();
    store.revoke("jti-1", 20).await.unwrap();
    assert!(store.is_revoked("jti-1").await.unwrap());
    let (_, revoked, _) = store
        .session_user(alice.id, "jti-1", None)
        .await
        .unwrap()
        .unwrap();
    assert!(revoked);
    assert!(store
        .session_user(999_999, "jti-1", None)
        .await
        .unwrap()
        .is_none());
    store.revoke("jti-2", 5).await.unwrap();
    assert_eq!(
        store.user(alice.id).await.unwrap().unwrap().sessions_after,
        0
    );
    store.end_sessions(alice.id, 9).await.unwrap();
    store.end_sessions(alice.id, 8).await.unwrap(); // never back
    assert_eq!(
        store.user(alice.id).await.unwrap().unwrap().sessions_after,
        9
    );
    assert!(matches!(
        store.end_sessions(999_999, 9).await,
        Err(StoreError::NotFound("user"))
    ));

    // Retention: visitors not seen since the cut-off go, with their conversations.
    let purged = store.purge(6_500).await.unwrap();
    assert_eq!(
        (purged.visitors, purged.conversations),
        (1, 1),
        "v2 (seen at 2,500) and the direct conversation (last active at 6,000)"
    );
    assert!(store.user(v2.id).await.unwrap().is_none());
    assert!(store.conversation(kefu2.id).await.unwrap().is_none());
    assert!(store.conversation(v2_direct.id).await.unwrap().is_none());
    assert_eq!(purged.uploads, vec!["u-v2".to_string()]);
    assert_eq!(store.upload("u-v2").await.unwrap(), None);
    assert!(store.conversation(direct.id).await.unwrap().is_none());
    assert!(
        store.conversation(kefu.id).await.unwrap().is_some(),
        "v1 was seen at 7,000"
    );
    let purged = store.purge(10_000).await.unwrap();
    assert_eq!((purged.visitors, purged.conversations), (1, 0));
    assert_eq!(purged.uploads, vec!["u-one".to_string()]);
    assert_eq!(store.upload("u-one").await.unwrap(), None);
    // Revocations of tokens expired by then went too (10 s > jti-2's 5 s).
    assert!(!store.is_revoked("jti-2").await.unwrap());
    assert!(store.is_revoked("jti-1").await.unwrap());
    assert!(store
        .messages(kefu.id, Page::Newest { limit: 5 })
        .await
        .unwrap()
        .is_empty());
    assert!(positions(&*store, kefu.id, alice.id).await.is_empty());
    assert!(store.user(alice.id).await.unwrap().is_some(), "agents stay");
}

/// Concurrent sends to one conversation get distinct, gap-free ids, and
/// concurrent retries of one client id store it once; a send to a conversation
/// that does not exist, among them, fails alone.
async fn concurrent_sends(store: Arc<dyn ChatStore>) {
    let (shop, _) = store
        .create_shop("busy", &agent("busy-agent"), 1)
        .await
        .unwrap();
    let v = store.create_visitor(shop.id, "v", None, 1).await.unwrap();
    let conv = store.kefu_conversation(&v, 1).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            // Pairs of tasks send the same client id.
            let client = format!("c-{}", i / 2);
            store
                .append(&text(conv.id, &v, &format!("m{i}"), Some(&client), 2))
                .await
                .unwrap()
        }));
    }
    let lost = {
        let (store, v) = (store.clone(), v.clone());
        tokio::spawn(async move {
            store
                .append(&text(conv.id + 1000, &v, "nowhere", None, 2))
                .await
        })
    };
    let mut stored = Vec::new();
    assert!(matches!(
        lost.await.unwrap(),
        Err(herald_chat::StoreError::NotFound(_))
    ));
    for t in tasks {
        let (m, new) = t.await.unwrap();
        if new {
            stored.push(m.id);
        }
    }
    stored.sort_unstable();
    assert_eq!(stored, (1..=20).collect::<Vec<_>>());
    let all = store
        .messages(conv.id, Page::Newest { limit: 100 })
        .await
        .unwrap();
    assert_eq!(all.len(), 20);

    // New messages to several conversations at once (stored together when the
    // store batches them): each gets the id it was answered with, without gaps.
    let mut convs = Vec::new();
    for i in 0..3 {
        let v = store
            .create_visitor(shop.id, &format!("w{i}"), None, 1)
            .await
            .unwrap();
        let c = store.kefu_conversation(&v, 1).await.unwrap();
        convs.push((v, c));
    }
    let mut tasks = Vec::new();
    for i in 0..90 {
        let store = store.clone();
        let (v, c) = convs[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            let client = format!("n-{i}");
            store
                .append(&text(c.id, &v, &format!("n{i}"), Some(&client), 3))
                .await
                .unwrap()
        }));
    }
    // Last-seen times written meanwhile (SQLite stores them with the sends).
    let touches: Vec<_> = convs
        .iter()
        .map(|(v, _)| {
            let (store, id) = (store.clone(), v.id);
            tokio::spawn(async move { store.touch(id, 5_000).await.unwrap() })
        })
        .collect();
    for t in touches {
        t.await.unwrap();
    }
    let mut answered = vec![Vec::new(); 3];
    for (i, t) in tasks.into_iter().enumerate() {
        let (m, new) = t.await.unwrap();
        assert!(new);
        assert_eq!(m.conversation_id, convs[i % 3].1.id);
        answered[i % 3].push((m.id, m.body));
    }
    for (k, (_, c)) in convs.iter().enumerate() {
        answered[k].sort();
        let stored: Vec<(i64, String)> = store
            .messages(c.id, Page::Newest { limit: 100 })
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.body))
            .collect();
        assert_eq!(stored, answered[k]);
        assert_eq!(
            stored.iter().map(|m| m.0).collect::<Vec<_>>(),
            (1..=30).collect::<Vec<_>>()
        );
        let c = store.conversation(c.id).await.unwrap().unwrap();
        assert_eq!(c.last_message_id, 30);
        let v = store.user(convs[k].0.id).await.unwrap().unwrap();
        assert_eq!(v.last_seen_at, 5_000);
    }
    // Times of one user written at once: the latest stays, whatever their order.
    let user = convs[0].0.id;
    let touches: Vec<_> = [8_000, 9_000, 6_000, 7_000]
        .into_iter()
        .map(|at| {
            let store = store.clone();
            tokio::spawn(async move { store.touch(user, at).await.unwrap() })
        })
        .collect();
    for t in touches {
        t.await.unwrap();
    }
    assert_eq!(store.user(user).await.unwrap().unwrap().last_seen_at, 9_000);

    // One client's messages handed over together: stored in the order given,
    // into two conversations; a retried client id answers the stored message
    // and one into a missing conversation fails, without disturbing the rest.
    let (w, c) = convs[0].clone();
    let (x, d) = convs[1].clone();
    let ms = vec![
        text(c.id, &w, "o1", Some("o-1"), 6),
        text(d.id, &x, "p1", Some("p-1"), 6),
        text(c.id, &w, "o2", Some("o-2"), 6),
        text(c.id, &w, "o1 again", Some("o-1"), 6),
        text(c.id + 1000, &w, "nowhere", None, 6),
        text(c.id, &w, "o3", None, 6),
        text(d.id, &x, "p2", None, 6),
    ];
    let outcomes = store.append_all(&ms).await;
    assert_eq!(outcomes.len(), ms.len());
    let brief: Vec<Option<(i64, String, bool)>> = outcomes
        .into_iter()
        .map(|o| o.ok().map(|(m, new)| (m.id, m.body, new)))
        .collect();
    assert_eq!(
        brief,
        vec![
            Some((31, "o1".into(), true)),
            Some((31, "p1".into(), true)),
            Some((32, "o2".into(), true)),
            Some((31, "o1".into(), false)),
            None,
            Some((33, "o3".into(), true)),
            Some((32, "p2".into(), true)),
        ]
    );
    assert!(store.append_all(&[]).await.is_empty());
}

/// The store keeps blobs itself (what a cluster uses for uploads).
async fn blobs_in_the_database(store: &SqlStore) {
    use herald_chat::blobs::BlobStore;
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    store.put("u-blob", &data).await.unwrap();
    assert_eq!(store.get("u-blob").await.unwrap().unwrap(), data);
    assert_eq!(store.get("u-none").await.unwrap(), None);
    assert!(
        store.put("u-blob", b"again").await.is_err(),
        "never overwritten"
    );
    store.remove("u-blob").await.unwrap();
    assert_eq!(store.get("u-blob").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_conforms() {
    let dir = scratch("sqlite");
    let store = SqlStore::sqlite(&dir.join("chat.db"), 4).await.unwrap();
    assert!(!store.is_postgres());
    conformance(Arc::new(store.clone())).await;
    concurrent_sends(Arc::new(store.clone())).await;
    blobs_in_the_database(&store).await;
    store.close().await;
    // Reopened: the data and the applied migrations are kept.
    let again = SqlStore::sqlite(&dir.join("chat.db"), 1).await.unwrap();
    assert!(again.shop_by_name("acme").await.unwrap().is_some());
    again.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let pg = herald_testkit::postgres();
    let url = pg.postgres_database("chat");
    // Two stores opening together migrate once between them.
    let (a, b) = tokio::join!(SqlStore::open(&url, 8), SqlStore::open(&url, 8));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.is_postgres());
    b.close().await;
    conformance(Arc::new(a.clone())).await;
    concurrent_sends(Arc::new(a.clone())).await;
    blobs_in_the_database(&a).await;
    a.close().await;
}

#[tokio::test]
async fn an_unreachable_database_is_reported_as_unavailable() {
    let port = herald_testkit::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/chat");
    let e = SqlStore::open_with(&url, 1, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    let e = SqlStore::open("mysql://localhost/chat", 1)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_a_send_as_unavailable() {
    let mut pg = herald_testkit::postgres();
    let url = pg.postgres_database("chat");
    let store = SqlStore::open_with(&url, 2, Duration::from_millis(500))
        .await
        .unwrap();
    let (shop, _) = store
        .create_shop("down", &agent("down-agent"), 1)
        .await
        .unwrap();
    let v = store.create_visitor(shop.id, "v", None, 1).await.unwrap();
    let conv = store.kefu_conversation(&v, 1).await.unwrap();
    pg.quit();
    let e = store
        .append(&text(conv.id, &v, "lost?", None, 2))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    store.close().await;
}
