//! The chat's pages in the browser: the agent console (`/chat/`) and the
//! visitor window (`/chat/visitor?shop=…`), each in its own headless Chromium,
//! against one standalone server.

use fantoccini::key::Key;
use serde_json::{json, Value};

use crate::harness::{Browser, Page};
use crate::support::*;

/// A 64 × 40 PNG (a checkerboard), as a visitor would pick one.
const PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAEAAAAAoCAIAAADBrGu+AAAAVElEQVR42u3XMQ0AIAwEwDpCGiaxgwYwUKYuEC758Yfe9GmsEWlan2lu6wcAAAAAQAnwyqGnPgAAAABADWCJAQAAAPwDlhgAAADAP2CJAQAAAL4EbBVhhvHey/29AAAAAElFTkSuQmCC";

/// Markup a user might type where a name or a message goes: shown as text, it
/// runs nothing and adds no element.
const AGENT_NICK: &str = r#"<img src=x onerror="window.pwned='agent'">Ann"#;
const VISITOR_NICK: &str = r#"<script>window.pwned='visitor'</script>Vic"#;
const VISITOR_TEXT: &str = "Hello <b>there</b>, my order: https://example.com/orders?id=7.";

/// Writes the test image under a file name that is itself markup.
fn image_file() -> std::path::PathBuf {
    use base64::Engine;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chat-upload");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("<b>cat<b>.png");
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG_BASE64)
        .unwrap();
    std::fs::write(&path, png).unwrap();
    path
}

/// The messages a page shows: `{id, mine, state, text, image}` each, oldest first.
async fn shown(page: &Page) -> Vec<Value> {
    page.js(
        "return [...document.querySelectorAll('#scroller .msg')].map(r => ({\
           id: r.dataset.id ? Number(r.dataset.id) : null, mine: r.dataset.mine === 'true', \
           state: r.dataset.state, text: r.querySelector('.text') ? r.querySelector('.text').textContent : null, \
           image: r.querySelector('img') ? r.querySelector('img').naturalWidth : null}))",
    )
    .await
    .as_array()
    .cloned()
    .unwrap_or_default()
}

/// Fails when markup typed by a user became elements, or ran.
async fn assert_no_injection(page: &Page, who: &str) {
    let found = page
        .js(
            "return {pwned: window.pwned || null, \
             elements: document.querySelectorAll('.bubble b, .bubble script, .name img, .name script, \
               #agent-name img, #peer-name script, .who script, .who img, .last b').length}",
        )
        .await;
    assert_eq!(
        found,
        json!({"pwned": null, "elements": 0}),
        "{who}: markup from a user was rendered"
    );
}

/// Waits until a chat page has started and its socket is connected (the
/// reconnecting bar hidden).
async fn until_connected(page: &Page, what: &str) {
    page.until_js(
        what,
        "return document.body.dataset.ready === 'true' && \
         document.getElementById('dot').dataset.state === 'open' && \
         document.getElementById('banner').hidden",
    )
    .await;
}

/// The session token a page keeps in its storage.
async fn stored_token(page: &Page, key: &str) -> String {
    page.js_args(
        "return JSON.parse(localStorage.getItem(arguments[0])).token",
        vec![json!(key)],
    )
    .await
    .as_str()
    .unwrap()
    .to_string()
}

#[tokio::test]
async fn agent_console_and_visitor_window_chat_in_the_browser() {
    let s = start().await;
    let base = format!("http://{}", s.http_addr);

    // The agent registers a shop from the console.
    let agent_browser = Browser::start().await;
    let agent = Page::new(&agent_browser);
    agent.resize(1280, 800).await;
    agent.goto(&format!("{base}/chat/")).await;
    agent
        .until_js(
            "the sign-in form",
            "return !document.getElementById('auth').hidden",
        )
        .await;
    agent.click("#tab-register").await;
    agent.set_value("#register-shop", "acme").await;
    agent.set_value("#register-username", "ann").await;
    agent.set_value("#register-nickname", AGENT_NICK).await;
    agent.set_value("#register-password", "correct horse").await;
    agent.click("#register-submit").await;
    until_connected(&agent, "the console after registering").await;
    assert_eq!(
        agent
            .js("return [document.getElementById('shop-name').textContent, document.getElementById('agent-name').textContent]")
            .await,
        json!(["acme", AGENT_NICK])
    );

    // A visitor opens the window, on a phone-sized screen set to dark colours.
    let visitor_browser = Browser::start_with(&["--force-dark-mode"]).await;
    let visitor = Page::new(&visitor_browser);
    visitor.resize(360, 740).await;
    let visitor_url = format!(
        "{base}/chat/visitor?shop=acme&name={}",
        VISITOR_NICK
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    );
    visitor.goto(&visitor_url).await;
    until_connected(&visitor, "the visitor window connected").await;

    assert_eq!(
        visitor
            .js("return [getComputedStyle(document.body).backgroundColor, \
                 getComputedStyle(document.getElementById('window')).width]")
            .await,
        json!(["rgb(18, 21, 27)", "360px"]),
        "dark colours, the window as wide as the phone"
    );

    // Text (Enter sends) and an image, both acknowledged with their stored ids.
    visitor
        .type_keys(
            "#input",
            &format!("{VISITOR_TEXT}{}", char::from(Key::Enter)),
        )
        .await;
    visitor
        .type_keys("#composer .file", image_file().to_str().unwrap())
        .await;
    visitor
        .until_js(
            "both sends stored",
            "const r = [...document.querySelectorAll('#scroller .msg.mine')]; \
             return r.length === 2 && r.every(m => m.dataset.id && m.dataset.state === 'sent') && \
               r[1].querySelector('img').complete && r[1].querySelector('img').naturalWidth === 64",
        )
        .await;
    let mine = shown(&visitor).await;
    assert_eq!(mine[0]["text"], VISITOR_TEXT);
    assert_eq!(
        visitor
            .js("return document.querySelector('#scroller .msg .text a').href")
            .await,
        "https://example.com/orders?id=7",
        "the link is clickable, without the sentence's full stop"
    );

    // The agent sees the visitor, two unread, the last message.
    let item = agent
        .until_js(
            "the visitor's conversation with 2 unread",
            "const li = document.querySelector('#conversations .conversation'); \
             return li && li.dataset.unread === '2' ? {name: li.querySelector('.name').textContent, \
               last: li.querySelector('.last').textContent, badge: li.querySelector('.badge').textContent, \
               title: document.title} : null",
        )
        .await;
    assert_eq!(item["name"], VISITOR_NICK);
    assert_eq!(item["last"], "Image");
    assert_eq!(item["badge"], "2");
    assert!(
        item["title"].as_str().unwrap().starts_with("(2) "),
        "the title badge: {item}"
    );
    agent.screenshot("chat-console-unread").await;

    // It opens the conversation: the unread divider, the text as text, the image.
    agent.click("#conversations .conversation").await;
    agent
        .until_js(
            "the conversation's messages",
            "const r = [...document.querySelectorAll('#scroller .msg.theirs')]; \
             const img = document.querySelector('#scroller .msg.theirs img'); \
             return r.length === 2 && img && img.complete && img.naturalWidth === 64",
        )
        .await;
    let theirs = shown(&agent).await;
    assert_eq!(theirs[0]["text"], VISITOR_TEXT);
    assert_eq!(
        agent
            .js("const d = document.querySelector('#scroller .unread-divider'); return d && d.nextElementSibling.dataset.id")
            .await,
        theirs[0]["id"].to_string(),
        "the divider sits before the first unread message"
    );
    agent.screenshot("chat-console-opened").await;
    agent
        .until_js(
            "the unread count gone",
            "const li = document.querySelector('#conversations .conversation'); \
             return li.dataset.unread === '0' && !li.querySelector('.badge') && !document.title.startsWith('(')",
        )
        .await;
    let agent_token = stored_token(&agent, "herald.chat.agent").await;
    let list = chat_call(
        s.http_addr,
        "GET",
        "/chat/api/conversations",
        Some(&agent_token),
        None,
    )
    .await
    .json();
    assert_eq!(
        list["conversations"][0]["unread"], 0,
        "the read is stored: {list}"
    );
    // The visitor's messages turn "read".
    visitor
        .until_js(
            "the visitor's messages read",
            "const r = [...document.querySelectorAll('#scroller .msg.mine')]; \
             return r.length === 2 && r.every(m => m.dataset.state === 'read')",
        )
        .await;

    // The agent types (the visitor sees it), then replies on two lines
    // (Shift+Enter) and with an image it pastes.
    agent.type_keys("#input", "Thanks!").await;
    visitor
        .until_js(
            "the typing line",
            "const t = document.getElementById('typing'); return !t.hidden && t.textContent === 'Agent is typing…'",
        )
        .await;
    agent
        .type_keys(
            "#input",
            &format!(
                "{}{}{}Second line{}",
                char::from(Key::Shift),
                char::from(Key::Enter),
                char::from(Key::Null),
                char::from(Key::Enter)
            ),
        )
        .await;
    // The agent's image is pasted into the text box.
    agent
        .js_args(
            "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0)); \
             const dt = new DataTransfer(); \
             dt.items.add(new File([bytes], 'pasted.png', {type: 'image/png'})); \
             document.getElementById('input').dispatchEvent(new ClipboardEvent('paste', \
               {clipboardData: dt, bubbles: true, cancelable: true})); return true",
            vec![json!(PNG_BASE64)],
        )
        .await;
    visitor
        .until_js(
            "the agent's reply and image",
            "const r = [...document.querySelectorAll('#scroller .msg.theirs')]; \
             const img = r.length === 2 && r[1].querySelector('img'); \
             return r.length === 2 && r[0].querySelector('.text').textContent === 'Thanks!\\nSecond line' && \
               img && img.complete && img.naturalWidth === 64",
        )
        .await;
    agent
        .until_js(
            "the agent's messages read by the visitor",
            "const r = [...document.querySelectorAll('#scroller .msg.mine')]; \
             return r.length === 2 && r.every(m => m.dataset.state === 'read')",
        )
        .await;
    assert_no_injection(&agent, "console").await;
    assert_no_injection(&visitor, "visitor window").await;
    agent.screenshot("chat-console").await;
    visitor.screenshot("chat-visitor").await;

    // Both reload: the same history, the visitor in the same conversation.
    let agent_before = shown(&agent).await;
    let visitor_before = shown(&visitor).await;
    assert_eq!(agent_before.len(), 4);
    assert_eq!(visitor_before.len(), 4);
    agent.goto(&format!("{base}/chat/")).await;
    agent
        .until_js(
            "the console signed in again",
            "return document.body.dataset.ready === 'true' && document.querySelector('#conversations .conversation')",
        )
        .await;
    agent.click("#conversations .conversation").await;
    agent
        .until_js(
            "the history after a reload",
            "return document.querySelectorAll('#scroller .msg').length === 4",
        )
        .await;
    visitor.goto(&visitor_url).await;
    visitor
        .until_js(
            "the visitor's history after a reload",
            "return document.body.dataset.ready === 'true' && document.querySelectorAll('#scroller .msg').length === 4",
        )
        .await;
    let ids = |v: &[Value]| -> Vec<Value> {
        v.iter()
            .map(|m| json!([m["id"], m["mine"], m["text"]]))
            .collect()
    };
    let agent_after = shown(&agent).await;
    let visitor_after = shown(&visitor).await;
    assert_eq!(ids(&agent_after), ids(&agent_before));
    assert_eq!(ids(&visitor_after), ids(&visitor_before));
    assert_eq!(
        visitor_after.last().unwrap()["image"],
        64,
        "the image loads again"
    );

    // Scroll-back: older pages load when the top is reached, and what the
    // reader looked at stays where it was.
    let visitor_token = stored_token(&visitor, "herald.chat.visitor.acme").await;
    let conv = list["conversations"][0]["conversation"]["id"]
        .as_i64()
        .unwrap();
    for i in 0..60 {
        let r = chat_call(
            s.http_addr,
            "POST",
            &format!("/chat/api/conversations/{conv}/messages"),
            Some(&visitor_token),
            Some(json!({"body": format!("backlog {i}")})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    visitor.goto(&visitor_url).await;
    visitor
        .until_js(
            "the newest page",
            "return document.body.dataset.ready === 'true' && document.querySelectorAll('#scroller .msg').length === 50",
        )
        .await;
    let anchor = visitor
        .js("const s = document.getElementById('scroller'); const first = s.querySelector('.msg'); \
             s.scrollTop = 0; return {id: first.dataset.id, top: first.getBoundingClientRect().top}")
        .await;
    let after = visitor
        .until_js(
            "the older page",
            "const s = document.getElementById('scroller'); \
             if (document.querySelectorAll('#scroller .msg').length !== 64) return null; \
             const row = s.querySelector('.msg[data-id=\"' + arguments[0] + '\"]'); \
             return {top: row.getBoundingClientRect().top, label: s.querySelector('.history-top').textContent}"
                .replace("arguments[0]", &format!("'{}'", anchor["id"].as_str().unwrap()))
                .as_str(),
        )
        .await;
    assert_eq!(after["label"], "Start of the conversation");
    let moved = (after["top"].as_f64().unwrap() - anchor["top"].as_f64().unwrap()).abs();
    assert!(
        moved < 2.0,
        "the message looked at moved by {moved} px when older ones came in"
    );

    // The agent blocks the visitor's address: the window refuses to chat, and
    // a new visitor from there is refused too.
    agent.click("#tab-blacklist").await;
    agent.set_value("#block-ip", "127.0.0.1").await;
    agent.click("#block-form button[type=submit]").await;
    agent
        .until_js(
            "the address listed",
            "const l = [...document.querySelectorAll('#blacklist .ip')].map(e => e.textContent); \
             return l.includes('127.0.0.1')",
        )
        .await;
    agent.screenshot("chat-console-blacklist").await;
    visitor.goto(&visitor_url).await;
    let refused = visitor
        .until_js(
            "the refusal",
            "return document.body.dataset.refused ? {status: document.body.dataset.refused, \
               notice: document.getElementById('notice').textContent} : null",
        )
        .await;
    assert_eq!(
        refused,
        json!({"status": "403", "notice": "This chat is not available to you."})
    );
    visitor.js("localStorage.clear(); return true").await;
    visitor.goto(&visitor_url).await;
    let refused = visitor
        .until_js(
            "a new visitor's refusal",
            "return document.body.dataset.refused || null",
        )
        .await;
    assert_eq!(refused, "403");
    assert_eq!(
        visitor
            .js("return document.querySelectorAll('#scroller .msg').length")
            .await,
        0
    );

    // On a phone the console shows the list or the open conversation.
    agent.resize(360, 740).await;
    let layout = "const shown = (id) => document.getElementById(id).checkVisibility(); \
         return {list: shown('sidebar'), chat: shown('pane'), back: shown('back'), \
           wide: [...document.querySelectorAll('#sidebar *, #pane *')] \
             .every(e => e.getBoundingClientRect().right <= window.innerWidth + 0.5)}";
    assert_eq!(
        agent.js(layout).await,
        json!({"list": false, "chat": true, "back": true, "wide": true})
    );
    agent.screenshot("chat-console-phone").await;
    agent.click("#back").await;
    assert_eq!(
        agent.js(layout).await,
        json!({"list": true, "chat": false, "back": false, "wide": true})
    );
    agent.click("#tab-chats").await;
    agent.screenshot("chat-console-phone-list").await;

    agent_browser.quit().await;
    visitor_browser.quit().await;
    s.shutdown().await;
}

/// The visitor window while its server restarts: a visible reconnecting state,
/// a send that fails offered again and stored once when retried, what the agent
/// sent meanwhile shown once after the reconnect.
#[tokio::test]
async fn visitor_window_rides_out_a_server_restart() {
    let mut cfg = test_config();
    cfg.shutdown.drain = std::time::Duration::from_millis(100);
    let s = start_with(cfg.clone()).await;
    let base = format!("http://{}", s.http_addr);
    let agent = chat_register(s.http_addr, "bakery", "bo").await;
    let agent_token = agent["token"].as_str().unwrap().to_string();

    let browser = Browser::start().await;
    let visitor = Page::new(&browser);
    visitor.resize(360, 740).await;
    visitor
        .goto(&format!("{base}/chat/visitor?shop=bakery"))
        .await;
    until_connected(&visitor, "the visitor window connected").await;

    let (ws, http) = (s.ws_addrs[0], s.http_addr);
    s.shutdown().await;
    let banner = visitor
        .until_js(
            "the reconnecting banner",
            "const b = document.getElementById('banner'); \
             return !b.hidden && b.dataset.state === 'reconnecting' ? b.textContent : null",
        )
        .await;
    assert_eq!(banner, "Connection lost — reconnecting…");
    visitor
        .type_keys(
            "#input",
            &format!("sent while away{}", char::from(Key::Enter)),
        )
        .await;
    let failed = visitor
        .until_js(
            "the send offered again",
            "const r = document.querySelector('#scroller .msg.mine'); \
             return r && r.dataset.state === 'failed' ? \
               [r.querySelector('.state').textContent, r.querySelector('.retry').checkVisibility()] : null",
        )
        .await;
    assert_eq!(failed, json!(["Not sent", true]));
    visitor.screenshot("chat-visitor-reconnecting").await;

    let mut again = cfg;
    again.comet.ws_bind = vec![ws];
    again.logic.http_bind = Some(http);
    let s = start_with(again).await;
    // The agent answers as soon as the server is back, maybe before the
    // window is: it shows once either way (pushed, or synced on reconnect).
    let list = chat_call(
        s.http_addr,
        "GET",
        "/chat/api/conversations",
        Some(&agent_token),
        None,
    )
    .await
    .json();
    let conv = list["conversations"][0]["conversation"]["id"]
        .as_i64()
        .unwrap();
    let r = chat_call(
        s.http_addr,
        "POST",
        &format!("/chat/api/conversations/{conv}/messages"),
        Some(&agent_token),
        Some(json!({"body": "we are back"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    visitor
        .until_js(
            "the window back online with the agent's message",
            "return document.getElementById('banner').hidden && \
             document.getElementById('dot').dataset.state === 'open' && \
             [...document.querySelectorAll('#scroller .msg.theirs .text')].map(t => t.textContent).join('|') === 'we are back'",
        )
        .await;

    // Retrying the failed send stores it, once.
    visitor
        .click("#scroller .msg.mine[data-state=failed] .retry")
        .await;
    visitor
        .until_js(
            "the retried send stored",
            "const r = document.querySelector('#scroller .msg.mine'); return r && r.dataset.id && r.dataset.state !== 'failed'",
        )
        .await;
    let history = chat_call(
        s.http_addr,
        "GET",
        &format!("/chat/api/conversations/{conv}/messages"),
        Some(&agent_token),
        None,
    )
    .await
    .json();
    let bodies: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["we are back", "sent while away"]);
    assert_eq!(shown(&visitor).await.len(), 2, "each message shown once");

    // A send the server refuses (over 4,000 bytes: 1,400 three-byte
    // characters) says why, offers no retry, and can be removed.
    visitor
        .type_keys(
            "#input",
            &format!("{}{}", "€".repeat(1400), char::from(Key::Enter)),
        )
        .await;
    let refused = visitor
        .until_js(
            "the refused send",
            "const r = document.querySelector('#scroller .msg.mine[data-state=rejected]'); \
             return r ? {why: r.querySelector('.why').textContent, \
               retry: r.querySelector('.retry').checkVisibility(), \
               remove: r.querySelector('.dismiss').checkVisibility()} : null",
        )
        .await;
    assert_eq!(
        refused,
        json!({"why": "the body must hold 1 to 4000 bytes", "retry": false, "remove": true})
    );
    visitor
        .click("#scroller .msg.mine[data-state=rejected] .dismiss")
        .await;
    visitor
        .until_js(
            "the refused send removed",
            "return !document.querySelector('#scroller .msg.mine[data-state=rejected]')",
        )
        .await;
    assert_eq!(shown(&visitor).await.len(), 2);

    browser.quit().await;
    s.shutdown().await;
}

/// The console's settings: a canned reply added there and sent from the ⚡
/// panel, a colleague added who can sign in, a password change that ends the
/// old session and keeps the console signed in with the new one.
#[tokio::test]
async fn console_settings_canned_replies_agents_and_password() {
    let s = start().await;
    let h = s.http_addr;
    let agent = chat_register(h, "deli", "dee").await;
    let old_token = agent["token"].as_str().unwrap().to_string();
    let (visitor_token, conv) = chat_visitor(h, "deli").await;
    let r = chat_call(
        h,
        "POST",
        &format!("/chat/api/conversations/{conv}/messages"),
        Some(&visitor_token),
        Some(json!({"body": "when do you open?"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());

    let browser = Browser::start().await;
    let page = Page::new(&browser);
    page.resize(1280, 800).await;
    // Signed in as a stored session (as after an earlier sign-in).
    page.goto(&format!("http://{h}/chat/")).await;
    page.js_args(
        "localStorage.setItem('herald.chat.agent', JSON.stringify({token: arguments[0]})); return true",
        vec![json!(old_token)],
    )
    .await;
    page.goto(&format!("http://{h}/chat/")).await;
    until_connected(&page, "the console signed in").await;

    page.click("#tab-settings").await;
    page.set_value("#canned-title", "Opening hours").await;
    page.set_value(
        "#canned-body",
        "We are open 9:00–18:00, Monday to Saturday.",
    )
    .await;
    page.click("#canned-form button[type=submit]").await;
    page.until_js(
        "the canned reply listed",
        "return [...document.querySelectorAll('#canned-list strong')].some(e => e.textContent === 'Opening hours')",
    )
    .await;

    page.click("#tab-chats").await;
    page.click("#conversations .conversation").await;
    page.until_js(
        "the visitor's question",
        "return document.querySelectorAll('#scroller .msg.theirs').length === 1",
    )
    .await;
    page.click("#canned-button").await;
    page.until_js(
        "the canned replies panel",
        "const b = document.querySelector('#canned-panel .canned'); return b && b.checkVisibility()",
    )
    .await;
    page.click("#canned-panel .canned").await;
    assert_eq!(
        page.js("return document.getElementById('input').value")
            .await,
        "We are open 9:00–18:00, Monday to Saturday."
    );
    page.type_keys("#input", &char::from(Key::Enter).to_string())
        .await;
    page.until_js(
        "the canned reply sent",
        "const r = document.querySelector('#scroller .msg.mine'); return r && r.dataset.id",
    )
    .await;
    let history = chat_call(
        h,
        "GET",
        &format!("/chat/api/conversations/{conv}/messages"),
        Some(&visitor_token),
        None,
    )
    .await
    .json();
    assert_eq!(
        history["messages"][1]["body"],
        "We are open 9:00–18:00, Monday to Saturday."
    );

    // A colleague.
    page.click("#tab-settings").await;
    page.set_value("#agent-username", "cy").await;
    page.set_value("#agent-password", "another horse").await;
    page.click("#agent-form button[type=submit]").await;
    page.until_js(
        "the colleague added",
        "const n = document.getElementById('notice'); return !n.hidden && n.textContent === 'cy can sign in now.'",
    )
    .await;
    let login = chat_call(
        h,
        "POST",
        "/chat/api/login",
        None,
        Some(json!({"username": "cy", "password": "another horse"})),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text());
    page.screenshot("chat-console-settings").await;

    // A new password: the page starts again on the new session.
    page.set_value("#password-current", "correct horse").await;
    page.set_value("#password-new", "a newer horse").await;
    page.click("#password-form button[type=submit]").await;
    page.until_js(
        "the console on the new session",
        "const t = JSON.parse(localStorage.getItem('herald.chat.agent') || 'null'); \
         return t && t.token !== arguments[0] && document.body.dataset.ready === 'true' && \
           document.getElementById('dot').dataset.state === 'open'"
            .replace("arguments[0]", &format!("'{old_token}'"))
            .as_str(),
    )
    .await;
    let me = chat_call(h, "GET", "/chat/api/me", Some(&old_token), None).await;
    assert_eq!(me.status, 401, "the old session ended");

    // Sign out, then in again through the form: a wrong password is refused
    // with a sentence, the right one opens the console.
    page.click("#logout").await;
    page.until_js(
        "the sign-in form after signing out",
        "return !document.getElementById('auth').hidden && !localStorage.getItem('herald.chat.agent')",
    )
    .await;
    page.set_value("#login-username", "dee").await;
    page.set_value("#login-password", "correct horse").await;
    page.click("#login-submit").await;
    let refused = page
        .until_js(
            "the refusal",
            "const e = document.getElementById('auth-error'); return !e.hidden && e.textContent",
        )
        .await;
    assert_eq!(refused, "Wrong user name or password.");
    page.set_value("#login-password", "a newer horse").await;
    page.click("#login-submit").await;
    until_connected(&page, "the console after signing in").await;
    assert_eq!(
        page.js("return document.querySelectorAll('#conversations .conversation').length")
            .await,
        1
    );

    browser.quit().await;
    s.shutdown().await;
}
