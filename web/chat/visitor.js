/* herald chat — the visitor window, opened as /chat/visitor?shop=NAME. The
 * visitor's session is kept in this browser (localStorage, per shop), so a
 * reload or a return visit continues the same conversation; `&name=` gives a
 * new visitor its nickname. */
import { ChatApi, ChatError, ChatSession } from './client.js';
import { ConversationView } from './conversation.js';
import { Attention, Composer, refreshTimes, showConnection } from './ui.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const shop = (params.get('shop') || '').trim();
// A site that knows its customer may name them: ?name=… (shown to the agents).
const nickname = (params.get('name') || '').trim().slice(0, 64);
const storeKey = 'herald.chat.visitor.' + shop;
const api = new ChatApi();
const attention = new Attention('Chat');
let view = null;
let unseen = 0;

function notice(text) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = !text;
}

/** A notice that goes away by itself (unless another replaced it). */
function briefly(text) {
  notice(text);
  setTimeout(() => {
    if ($('notice').textContent === text) notice('');
  }, 6000);
}

/** What an error means to a visitor (`opening`: of the visitor's creation). */
function explain(err, opening) {
  if (!(err instanceof ChatError)) return 'Something went wrong: ' + err.message;
  switch (err.status) {
    case 0: return 'The chat cannot be reached. Check your connection.';
    case 403: return 'This chat is not available to you.';
    case 404: return opening ? 'There is no shop named “' + shop + '”.' : 'This conversation no longer exists. Reload the page to start a new one.';
    case 413: return 'That file is too large.';
    case 415: return 'Only PNG, JPEG, GIF and WebP images can be sent.';
    case 429: return 'Too many chats from your address. Please try again in a minute.';
    case 503: return 'The chat is unavailable for a moment. Your message was not sent.';
    default: return err.message;
  }
}

/** The stored session if it still works, else a new visitor. */
async function signIn() {
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem(storeKey) || 'null');
  } catch (_) { /* a broken entry: start over */ }
  if (saved && saved.token) {
    api.token = saved.token;
    try {
      const me = await api.call('GET', '/me');
      const list = await api.call('GET', '/conversations?limit=1');
      const c = list.conversations[0];
      if (c) return { me, conversation: c.conversation };
    } catch (err) {
      if (err.status === 403) throw err; // blocked: a new visitor would be too
      if (err.status !== 401 && err.status !== 404) throw err;
    }
    api.token = null;
    localStorage.removeItem(storeKey);
  }
  const body = { shop };
  if (nickname) body.nickname = nickname;
  const made = await api.call('POST', '/visitors', body);
  api.token = made.token;
  localStorage.setItem(storeKey, JSON.stringify({ token: made.token }));
  return { me: { user: made.user, shop: made.shop }, conversation: made.conversation };
}

async function main() {
  const composer = new Composer($('composer'), {
    onSend: (text) => view && view.sendText(text),
    onImage: (file) => view && view.sendImage(file),
    onTyping: () => view && view.typed(),
  });
  composer.enable(false);
  if (!shop) {
    notice('This address names no shop: open it as /chat/visitor?shop=NAME.');
    return;
  }
  $('shop-name').textContent = shop;
  document.title = attention.title = shop + ' — chat';
  attention.unlockOnGesture();
  let signed;
  try {
    signed = await signIn();
  } catch (err) {
    notice(explain(err, true));
    document.body.dataset.refused = String(err.status || 0);
    return;
  }
  const { me, conversation } = signed;
  $('shop-name').textContent = me.shop.name;
  const session = new ChatSession(api, me);
  session.addEventListener('state', (e) => showConnection($('banner'), $('dot'), e.detail.state));
  session.addEventListener('refused', () => {
    localStorage.removeItem(storeKey);
    notice('Your chat session has ended. Reload the page to start a new one.');
    composer.enable(false);
  });
  session.addEventListener('message', (e) => {
    const m = e.detail.message;
    if (m.sender_id === me.user.id) return;
    if (document.visibilityState !== 'visible') {
      unseen += 1;
      attention.badge(unseen);
      attention.ping();
    }
  });
  const clearBadge = () => {
    if (document.visibilityState === 'visible') {
      unseen = 0;
      attention.badge(0);
    }
  };
  document.addEventListener('visibilitychange', clearBadge);
  window.addEventListener('focus', clearBadge);

  view = new ConversationView(session, conversation.id, {
    scroller: $('scroller'),
    typing: $('typing'),
    live: $('live'),
    nameOf: (id) => (id === me.user.id ? 'You' : 'Agent'),
    onError: (err) => briefly(explain(err)),
  });
  // The window shows history even before the socket is up (over HTTP).
  try {
    await view.open();
  } catch (err) {
    notice(explain(err));
  }
  composer.enable(true);
  await session.connect().catch((err) => notice(explain(err)));
  document.body.dataset.ready = 'true';
  setInterval(() => refreshTimes($('scroller')), 30000);
}

main();
