/* herald chat — the agent console at /chat/: sign in or register a shop, the
 * conversations with their unread counts and last messages, one conversation
 * open at a time, the shop's blacklist. The session is kept in this browser
 * (localStorage) until "Sign out". */
import { ChatApi, ChatError, ChatSession } from './client.js';
import { ConversationView } from './conversation.js';
import { Attention, Composer, el, refreshTimes, relativeTime, fullTime, showConnection } from './ui.js';

const $ = (id) => document.getElementById(id);
const storeKey = 'herald.chat.agent';
const api = new ChatApi();
const attention = new Attention('herald chat');

/** How often the visitors' online state is read again. */
const VISITORS_REFRESH_MS = 10000;

let session = null;
let me = null;
let view = null;
let openId = null;
const convs = new Map(); // conversation id → {conversation, last, unread}
const people = new Map(); // user id → {nickname, ip, online, role, username}
let timers = [];

// ------------------------------------------------------------------- sign in

function authError(text) {
  $('auth-error').textContent = text;
  $('auth-error').hidden = !text;
}

function explain(err) {
  if (!(err instanceof ChatError)) return 'Something went wrong: ' + err.message;
  if (err.status === 0) return 'The server cannot be reached.';
  if (err.status === 503) return 'The chat is unavailable for a moment: nothing was stored.';
  return err.message;
}

function showTab(which) {
  const login = which === 'login';
  $('tab-login').setAttribute('aria-selected', String(login));
  $('tab-register').setAttribute('aria-selected', String(!login));
  $('login-form').hidden = !login;
  $('register-form').hidden = login;
  authError('');
}

function showAuth() {
  $('app').hidden = true;
  $('auth').hidden = false;
  document.title = attention.title;
}

async function signedIn(issued) {
  api.token = issued.token;
  localStorage.setItem(storeKey, JSON.stringify({ token: issued.token }));
  try {
    await start({ user: issued.user, shop: issued.shop });
  } catch (err) {
    stop();
    showAuth();
    authError(explain(err));
  }
}

function wireAuth() {
  $('tab-login').addEventListener('click', () => showTab('login'));
  $('tab-register').addEventListener('click', () => showTab('register'));
  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    authError('');
    try {
      await signedIn(await api.call('POST', '/login', {
        username: $('login-username').value.trim(),
        password: $('login-password').value,
      }));
    } catch (err) {
      authError(err.status === 401 ? 'Wrong user name or password.' : explain(err));
    }
  });
  $('register-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    authError('');
    const body = {
      shop: $('register-shop').value.trim(),
      username: $('register-username').value.trim(),
      password: $('register-password').value,
    };
    const nick = $('register-nickname').value.trim();
    if (nick) body.nickname = nick;
    try {
      await signedIn(await api.call('POST', '/register', body));
    } catch (err) {
      authError(err.status === 409 ? 'That shop name or user name is taken.' : explain(err));
    }
  });
}

// --------------------------------------------------------------- the console

function nameOf(id) {
  if (me && id === me.user.id) return 'You';
  const p = people.get(id);
  return p ? p.nickname : 'User ' + id;
}

/** The user on the other side of a conversation. */
function peerOf(c) {
  if (c.kind === 'kefu') return c.visitor_id;
  return c.pair[0] === me.user.id ? c.pair[1] : c.pair[0];
}

function preview(last) {
  if (!last) return 'No messages yet';
  const who = last.sender_id === me.user.id ? 'You: ' : '';
  if (last.kind === 'image') return who + 'Image';
  return who + last.body.replace(/\s+/g, ' ').slice(0, 120);
}

function activity(item) {
  return item.last ? item.last.created_at : item.conversation.updated_at;
}

function renderList() {
  const q = $('search').value.trim().toLowerCase();
  const items = [...convs.values()].sort((a, b) => activity(b) - activity(a));
  const rows = [];
  let total = 0;
  for (const item of items) {
    total += item.unread;
    const c = item.conversation;
    const peer = people.get(peerOf(c));
    const name = nameOf(peerOf(c));
    if (q && !(name.toLowerCase().includes(q) || (peer && peer.ip && peer.ip.includes(q)))) continue;
    const badge = item.unread > 0 ? el('span', { class: 'badge', title: item.unread + ' unread' }, String(item.unread)) : null;
    const row = el('li', {
      class: 'conversation' + (c.id === openId ? ' selected' : '') + (item.unread > 0 ? ' unread' : ''),
      dataset: { id: String(c.id), unread: String(item.unread) },
      tabIndex: 0,
      role: 'button',
      onclick: () => select(c.id),
      onkeydown: (e) => {
        if (e.key === 'Enter' || e.key === ' ') {
          e.preventDefault();
          select(c.id);
        }
      },
    },
    el('span', { class: 'avatar', dataset: { online: String(!!(peer && peer.online)) } }, (name.trim()[0] || '?').toUpperCase()),
    el('div', { class: 'line' },
      el('div', { class: 'top' }, el('span', { class: 'name' }, name),
        el('time', { dataset: { ms: String(activity(item)) }, title: fullTime(activity(item)) }, relativeTime(activity(item)))),
      el('div', { class: 'bottom' }, el('span', { class: 'last' }, preview(item.last)), badge)));
    rows.push(row);
  }
  $('conversations').replaceChildren(...rows);
  $('no-conversations').hidden = convs.size > 0;
  $('total-unread').textContent = String(total);
  $('total-unread').hidden = total === 0;
  attention.badge(total);
}

async function loadPeople() {
  const asked = session;
  try {
    const r = await api.call('GET', '/visitors?limit=100');
    for (const v of r.visitors) people.set(v.id, Object.assign({}, people.get(v.id), v));
  } catch (err) {
    // (An answer to a session signed out since is no news.)
    if (err.status === 401 && asked === session) return signOut(false);
  }
}

/** Conversations listed (most recently active first); "Show more" adds a page. */
let listLimit = 50;
const LIST_PAGE = 50;

async function loadConversations() {
  const got = [];
  for (let offset = 0; offset < listLimit;) {
    const limit = Math.min(100, listLimit - offset);
    const r = await api.call('GET', '/conversations?offset=' + offset + '&limit=' + limit);
    got.push(...r.conversations);
    offset += r.conversations.length;
    if (r.conversations.length < limit) break;
  }
  convs.clear();
  for (const item of got) {
    convs.set(item.conversation.id, item);
    // Who each is with (the online state comes from the visitors' list).
    if (item.peer) people.set(item.peer.id, Object.assign({}, people.get(item.peer.id), item.peer));
  }
  $('more').hidden = got.length < listLimit;
  renderList();
}

function showPeer() {
  const item = convs.get(openId);
  if (!item) return;
  const peerId = peerOf(item.conversation);
  const peer = people.get(peerId);
  $('peer-name').textContent = nameOf(peerId);
  const bits = [];
  if (peer) {
    bits.push(peer.online ? 'Online' : 'Last seen ' + relativeTime(peer.last_seen_at));
    if (peer.ip) bits.push(peer.ip);
  }
  $('peer-info').textContent = bits.join(' · ');
  $('block-peer').hidden = !(peer && peer.ip);
}

async function select(id) {
  if (view) view.close();
  openId = id;
  document.body.dataset.open = String(id);
  $('empty').hidden = true;
  $('chat-head').hidden = false;
  $('scroller').hidden = false;
  $('composer').hidden = false;
  notice('');
  showPeer();
  renderList();
  const peer = peerOf(convs.get(id).conversation);
  view = new ConversationView(session, id, {
    scroller: $('scroller'),
    typing: $('typing'),
    live: $('live'),
    nameOf,
    // "Read" is the visitor's (or the other user's) read, not another agent's.
    isReader: (uid) => uid === peer,
    onError: (err) => notice(explain(err)),
    onRead: (position, unread) => {
      const item = convs.get(id);
      if (item && item.unread !== unread) {
        item.unread = unread;
        renderList();
      }
    },
  });
  try {
    await view.open();
  } catch (err) {
    notice(explain(err));
  }
  $('input').focus();
}

function closePane() {
  if (view) view.close();
  view = null;
  openId = null;
  delete document.body.dataset.open;
  $('empty').hidden = false;
  $('chat-head').hidden = true;
  $('scroller').hidden = true;
  $('composer').hidden = true;
  renderList();
}

let noticeTimer = null;

/** Shows `text` over the page for a few seconds (`ok`: good news, not an error). */
function notice(text, ok) {
  $('notice').textContent = text;
  $('notice').hidden = !text;
  $('notice').dataset.kind = ok ? 'ok' : 'error';
  clearTimeout(noticeTimer);
  if (text) noticeTimer = setTimeout(() => notice(''), 8000);
}

/** Is the agent looking at the end of conversation `id` (where a new message
 *  shows, and is marked read at once)? Checked before the message is added. */
function looking(id) {
  return id === openId && document.visibilityState === 'visible' && !!view && view.list.atEnd();
}

function onMessage(m) {
  let item = convs.get(m.conversation_id);
  if (!item) {
    // A new conversation: the list (and who is in it) read again.
    loadPeople().then(loadConversations).catch(() => {});
  } else {
    // Already in the list as read from the server (the event raced the read).
    if (item.last && m.id <= item.last.id) return;
    item.last = m;
    if (m.sender_id !== me.user.id && !looking(m.conversation_id)) item.unread += 1;
    renderList();
  }
  if (m.sender_id !== me.user.id && !looking(m.conversation_id)) attention.ping();
}

// ---------------------------------------------------------------- blacklist

async function loadBlacklist() {
  try {
    const r = await api.call('GET', '/blacklist');
    $('blacklist').replaceChildren(...r.blacklist.map((ip) => el('li', {},
      el('span', { class: 'ip' }, ip),
      el('button', { type: 'button', class: 'ghost', onclick: () => unblock(ip) }, 'Unblock'))));
    $('no-blocked').hidden = r.blacklist.length > 0;
  } catch (err) {
    notice(explain(err));
  }
}

async function block(ip) {
  await api.call('POST', '/blacklist', { ip });
  await loadBlacklist();
}

async function unblock(ip) {
  try {
    await api.call('DELETE', '/blacklist/' + encodeURIComponent(ip));
  } catch (err) {
    if (err.status !== 404) notice(explain(err));
  }
  await loadBlacklist();
}

const SIDE_TABS = ['chats', 'blacklist', 'settings'];

function showSideTab(which) {
  for (const t of SIDE_TABS) {
    $('tab-' + t).setAttribute('aria-selected', String(t === which));
    $(t + '-pane').hidden = t !== which;
  }
  if (which === 'blacklist') loadBlacklist();
  if (which === 'settings') loadCanned();
}

// ------------------------------------------------------------------ settings

let canned = [];

async function loadCanned() {
  try {
    canned = (await api.call('GET', '/canned')).canned;
  } catch (err) {
    notice(explain(err));
    return;
  }
  $('canned-list').replaceChildren(...canned.map((c) => el('li', {},
    el('div', { class: 'line' }, el('strong', {}, c.title), el('span', { class: 'sub' }, c.body)),
    el('button', { type: 'button', class: 'ghost', onclick: () => removeCanned(c.id) }, 'Delete'))));
  renderCannedPanel();
}

async function removeCanned(id) {
  try {
    await api.call('DELETE', '/canned/' + id);
  } catch (err) {
    if (err.status !== 404) notice(explain(err));
  }
  await loadCanned();
}

/** The ⚡ panel: a click puts the reply in the message box. */
function renderCannedPanel() {
  const panel = $('canned-panel');
  if (!canned.length) {
    panel.replaceChildren(el('p', { class: 'hint' }, 'No canned replies yet: add them under Settings.'));
    return;
  }
  panel.replaceChildren(...canned.map((c) => el('button', {
    type: 'button',
    class: 'canned',
    title: c.body,
    onclick: () => {
      const input = $('input');
      input.value = input.value ? input.value.replace(/\s*$/, ' ') + c.body : c.body;
      input.dispatchEvent(new Event('input'));
      panel.hidden = true;
      input.focus();
    },
  }, c.title)));
}

function wireSettings() {
  $('canned-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api.call('POST', '/canned', { title: $('canned-title').value.trim(), body: $('canned-body').value });
      $('canned-title').value = '';
      $('canned-body').value = '';
      await loadCanned();
    } catch (err) {
      notice(explain(err));
    }
  });
  $('agent-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const agent = await api.call('POST', '/agents', { username: $('agent-username').value.trim(), password: $('agent-password').value });
      $('agent-username').value = '';
      $('agent-password').value = '';
      notice(agent.username + ' can sign in now.', true);
    } catch (err) {
      notice(err.status === 409 ? 'That user name is taken.' : explain(err));
    }
  });
  $('password-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const issued = await api.call('POST', '/password', { current: $('password-current').value, new: $('password-new').value });
      // Every earlier session ended, this page's socket's too: start again
      // with the new one.
      localStorage.setItem(storeKey, JSON.stringify({ token: issued.token }));
      window.location.reload();
    } catch (err) {
      notice(err.status === 403 ? 'The current password is wrong.' : explain(err));
    }
  });
  $('canned-button').addEventListener('click', () => {
    const panel = $('canned-panel');
    panel.hidden = !panel.hidden;
    if (!panel.hidden) loadCanned();
  });
}

function wireConsole() {
  $('tab-chats').addEventListener('click', () => showSideTab('chats'));
  $('tab-blacklist').addEventListener('click', () => showSideTab('blacklist'));
  $('tab-settings').addEventListener('click', () => showSideTab('settings'));
  $('search').addEventListener('input', renderList);
  $('more').addEventListener('click', () => {
    listLimit += LIST_PAGE;
    loadConversations().catch((err) => notice(explain(err)));
  });
  $('back').addEventListener('click', closePane);
  $('logout').addEventListener('click', () => signOut(true));
  $('block-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await block($('block-ip').value.trim());
      $('block-ip').value = '';
    } catch (err) {
      notice(explain(err));
    }
  });
  $('block-peer').addEventListener('click', async () => {
    const item = convs.get(openId);
    const peer = item && people.get(peerOf(item.conversation));
    if (!peer || !peer.ip) return;
    if (!window.confirm('Block ' + peer.ip + '? Visitors from this address can no longer chat.')) return;
    try {
      await block(peer.ip);
      notice(peer.ip + ' is blocked.', true);
    } catch (err) {
      notice(explain(err));
    }
  });
  new Composer($('composer'), {
    onSend: (text) => view && view.sendText(text),
    onImage: (file) => view && view.sendImage(file),
    onTyping: () => view && view.typed(),
  });
}

async function start(who) {
  me = who;
  $('auth').hidden = true;
  $('app').hidden = false;
  $('shop-name').textContent = me.shop.name;
  $('agent-name').textContent = me.user.nickname;
  attention.title = me.shop.name + ' — herald chat';
  const link = new URL('/chat/visitor?shop=' + encodeURIComponent(me.shop.name), window.location.href).href;
  $('visitor-link').href = link;
  $('visitor-link').textContent = link;
  attention.unlockOnGesture();
  session = new ChatSession(api, me);
  session.addEventListener('state', (e) => showConnection($('banner'), $('dot'), e.detail.state));
  session.addEventListener('message', (e) => onMessage(e.detail.message));
  session.addEventListener('ready', () => loadPeople().then(loadConversations).then(showPeer).catch((err) => notice(explain(err))));
  const current = session;
  session.addEventListener('refused', () => {
    if (current === session) signOut(false);
  });
  await loadPeople();
  await loadConversations();
  await session.connect();
  document.body.dataset.ready = 'true';
  timers.push(setInterval(() => {
    if (!session) return;
    loadPeople().then(() => {
      renderList();
      showPeer();
    });
  }, VISITORS_REFRESH_MS));
  timers.push(setInterval(() => {
    refreshTimes($('conversations'));
    refreshTimes($('scroller'));
  }, 30000));
}

/** Ends the console's socket, timers and state (the stored session stays). */
function stop() {
  timers.forEach(clearInterval);
  timers = [];
  if (session) session.close();
  session = null;
  closePane();
  convs.clear();
  people.clear();
  document.body.dataset.ready = 'false';
}

async function signOut(tellServer) {
  if (tellServer) await api.call('POST', '/logout').catch(() => {});
  localStorage.removeItem(storeKey);
  stop();
  api.token = null;
  showAuth();
}

async function main() {
  wireAuth();
  wireConsole();
  wireSettings();
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem(storeKey) || 'null');
  } catch (_) { /* start over */ }
  if (saved && saved.token) {
    api.token = saved.token;
    try {
      const who = await api.call('GET', '/me');
      if (who.user.role === 'agent') {
        await start(who);
        return;
      }
    } catch (err) {
      if (err.status !== 401 && err.status !== 403 && err.status !== 404) {
        // The server is away or failing: the session may well be fine.
        stop();
        showAuth();
        authError(explain(err) + ' Reload the page to try again.');
        return;
      }
    }
    api.token = null;
    localStorage.removeItem(storeKey);
  }
  showAuth();
}

main();
