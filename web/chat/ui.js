/* herald chat — what both chat pages draw: the message list (delivery states,
 * unread divider, scroll-back that keeps its place, relative times), the
 * composer (Enter sends, Shift+Enter breaks the line, emoji, images by button or
 * paste), the connection banner, and the title badge and sound.
 *
 * Everything a user typed reaches the page as text nodes (textContent), never as
 * HTML: messages, nicknames and file names cannot inject markup. Links are made
 * from http(s) URLs only, as <a> elements whose href is set as a property. */

/** Builds an element: `attrs` are properties (`class` → className, `on*` →
 *  listeners, `dataset`), children are nodes or strings (text nodes). */
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k in e) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;

/** `text` as text nodes and links (http and https URLs only). */
export function linkified(text) {
  const frag = document.createDocumentFragment();
  let at = 0;
  for (const m of text.matchAll(URL_RE)) {
    let url = m[0];
    // Trailing punctuation belongs to the sentence, not the link.
    const trail = url.match(/[.,;:!?)\]]+$/);
    if (trail) url = url.slice(0, -trail[0].length);
    if (m.index > at) frag.append(text.slice(at, m.index));
    const a = el('a', { href: url, target: '_blank', rel: 'noopener noreferrer nofollow' }, url);
    frag.append(a);
    at = m.index + url.length;
  }
  if (at < text.length) frag.append(text.slice(at));
  return frag;
}

const TIME = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const DAY = new Intl.DateTimeFormat(undefined, { weekday: 'short', hour: '2-digit', minute: '2-digit' });
const DATE = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });
const FULL = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

/** "just now", "5 min ago", "14:05", "Mon 14:05" or "2 Dec". */
export function relativeTime(ms, now = Date.now()) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 45) return 'just now';
  if (s < 3600) return Math.max(1, Math.round(s / 60)) + ' min ago';
  const d = new Date(ms);
  const today = new Date(now);
  if (d.toDateString() === today.toDateString()) return TIME.format(d);
  if (now - ms < 6 * 86400e3) return DAY.format(d);
  return DATE.format(d);
}

export function fullTime(ms) {
  return FULL.format(new Date(ms));
}

/** Updates every `<time data-ms>` under `root` (call every half minute). */
export function refreshTimes(root) {
  const now = Date.now();
  for (const t of root.querySelectorAll('time[data-ms]')) t.textContent = relativeTime(Number(t.dataset.ms), now);
}

function timeEl(ms) {
  return el('time', { dataset: { ms: String(ms) }, title: fullTime(ms), dateTime: new Date(ms).toISOString() }, relativeTime(ms));
}

const STATE_TEXT = { sending: 'Sending…', sent: 'Sent', read: 'Read', failed: 'Not sent', rejected: 'Not sent' };

/**
 * The messages of one conversation in `root` (a scrollable element), oldest
 * first.
 *
 * options: `me` (the user id), `isReader(userId)` (whose read positions make
 * one's own messages "read"), `imageUrl(uploadId)`, `nameOf(userId)`,
 * `onOlder(beforeId)` (asked when the top is reached; resolves with
 * `{messages, pageSize}`), `onRetry(clientId)`, `onDismiss(clientId)`.
 */
export class MessageList {
  constructor(root, options) {
    this.root = root;
    this.o = options;
    this.rows = new Map(); // message id → row
    this.pending = new Map(); // client_id → row (not yet stored)
    this.readBy = 0; // the readers' highest position
    this.oldest = null;
    this.newest = 0;
    // Every id from `oldest` to `upTo` is shown: what was synced, without a
    // gap (null until a page of history came in; 0 when there was none).
    this.upTo = null;
    this.complete = false; // the first message is shown
    this.loadingOlder = false;
    this.list = el('ol', { class: 'messages' });
    this.top = el('li', { class: 'history-top' });
    this.list.append(this.top);
    root.replaceChildren(this.list);
    this._onScroll = () => this._maybeOlder();
    root.addEventListener('scroll', this._onScroll, { passive: true });
  }

  /** Stops listening to the scroller (another conversation takes it). */
  destroy() {
    this.root.removeEventListener('scroll', this._onScroll);
    this.destroyed = true;
  }

  /** Shows a page of history (`{messages, reads, position}`) in place of the
   *  stored messages shown, with the unread divider after `position`; sends in
   *  progress stay. */
  reset(page, { pageSize }) {
    this.rows.clear();
    this.list.replaceChildren(this.top, ...this.pending.values());
    this.oldest = null;
    this.newest = 0;
    this.complete = page.messages.length < pageSize;
    this._insert(page.messages);
    this.upTo = page.messages.length ? page.messages[page.messages.length - 1].id : 0;
    this._advance();
    this.setReads(page.reads || []);
    this.divider(page.position || 0);
    this._topLabel();
    this.scrollToEnd();
  }

  /** Adds the newest page to what is shown (sends in progress stay). */
  merge(page, { pageSize }) {
    if (page.messages.length < pageSize) this.complete = true;
    this.add(page.messages);
    if (this.upTo == null) this.upTo = page.messages.length ? page.messages[page.messages.length - 1].id : 0;
    this._advance();
    this.setReads(page.reads || []);
    this._topLabel();
  }

  /** Would `id` leave a gap after what is shown without one? */
  gapBefore(id) {
    return this.upTo != null && id > this.upTo + 1;
  }

  /** Puts "New messages" before the first message after `position` that
   *  someone else sent (none when there is none). */
  divider(position) {
    this.clearDivider();
    for (const [id, row] of [...this.rows].sort((a, b) => a[0] - b[0])) {
      if (id > position && row.dataset.mine !== 'true') {
        row.before(el('li', { class: 'unread-divider', role: 'separator' }, el('span', {}, 'New messages')));
        return;
      }
    }
  }

  clearDivider() {
    for (const d of this.list.querySelectorAll('.unread-divider')) d.remove();
  }

  /** Adds stored messages (a newer page, an event); ignores ones shown. One
   *  of our own sends still pending is confirmed by its stored copy. */
  add(messages) {
    const stick = this.atEnd();
    const stored = [];
    for (const m of messages) {
      if (m.sender_id === this.o.me && m.client_id && this.pending.has(m.client_id)) this.confirm(m);
      else stored.push(m);
    }
    this._insert(stored);
    this._advance();
    if (stick) this.scrollToEnd();
  }

  /** Shows a message being sent (`sending`) until confirm() or fail(). */
  addPending(clientId, kind, body, preview) {
    const row = this._row({ id: 0, sender_id: this.o.me, kind, body, client_id: clientId, created_at: Date.now(), preview }, 'sending');
    this.pending.set(clientId, row);
    this.list.append(row);
    if (this.complete) this._topLabel();
    this._group();
    this.scrollToEnd();
  }

  /** The stored message of a pending send. */
  confirm(message) {
    const row = this.pending.get(message.client_id);
    this.pending.delete(message.client_id);
    if (row) row.remove();
    this._insert([message]);
    this._advance();
  }

  /** A send that failed: `permanent` when sending it again cannot help (the
   *  server refused it), with the reason shown. */
  fail(clientId, reason, permanent) {
    const row = this.pending.get(clientId);
    if (!row) return;
    this._setState(row, permanent ? 'rejected' : 'failed');
    const why = row.querySelector('.why');
    why.textContent = reason || '';
    why.hidden = !reason;
  }

  retrying(clientId) {
    const row = this.pending.get(clientId);
    if (row) this._setState(row, 'sending');
  }

  /** Takes a pending send off the list (dismissed). */
  remove(clientId) {
    const row = this.pending.get(clientId);
    this.pending.delete(clientId);
    if (row) row.remove();
    this._group();
    this._topLabel();
  }

  /** Read positions `[{user_id, position}]`: own messages up to the highest
   *  of the readers' (options.isReader) are shown as read. */
  setReads(reads) {
    for (const r of reads) this.markReadBy(r.user_id, r.position);
  }

  markReadBy(userId, position) {
    if (userId === this.o.me || !this.o.isReader(userId) || position <= this.readBy) return;
    this.readBy = position;
    this._refreshStates();
  }

  atEnd() {
    const r = this.root;
    return r.scrollHeight - r.scrollTop - r.clientHeight < 40;
  }

  scrollToEnd() {
    this.root.scrollTop = this.root.scrollHeight;
  }

  async _maybeOlder() {
    if (this.root.scrollTop > 60 || this.complete || this.loadingOlder || this.oldest == null) return;
    this.loadingOlder = true;
    this.top.textContent = 'Loading earlier messages…';
    try {
      const older = await this.o.onOlder(this.oldest);
      if (this.destroyed) return;
      // Keep what the reader looks at in place: the rows above push it down.
      const before = this.root.scrollHeight - this.root.scrollTop;
      this._insert(older.messages);
      this.root.scrollTop = this.root.scrollHeight - before;
      if (older.messages.length < older.pageSize) this.complete = true;
    } catch (_) {
      /* the next scroll tries again */
    } finally {
      this.loadingOlder = false;
      if (!this.destroyed) this._topLabel();
    }
  }

  /** An image that loaded near the end keeps the end in view. */
  _imageLoaded(img) {
    const r = this.root;
    if (r.scrollHeight - r.scrollTop - r.clientHeight < img.clientHeight + 80) this.scrollToEnd();
  }

  _topLabel() {
    this.top.textContent = this.complete ? (this.rows.size || this.pending.size ? 'Start of the conversation' : 'No messages yet') : '';
  }

  /** Puts stored messages in their places by id (sends in progress stay last). */
  _insert(messages) {
    const fresh = messages.filter((m) => !this.rows.has(m.id));
    if (!fresh.length) return;
    for (const m of fresh.sort((a, b) => a.id - b.id)) {
      const row = this._row(m, this._state(m));
      this.rows.set(m.id, row);
      this._place(row, m.id);
      this.oldest = this.oldest == null ? m.id : Math.min(this.oldest, m.id);
      this.newest = Math.max(this.newest, m.id);
    }
    if (this.complete) this._topLabel();
    this._group();
  }

  /** Before the first stored row with a higher id (and before the divider
   *  that heads it), else before the sends in progress, else last. */
  _place(row, id) {
    let next = null;
    for (const r of this.list.children) {
      if (r.dataset.id && Number(r.dataset.id) > id) {
        next = r;
        break;
      }
      if (!next && r.dataset.clientId && !r.dataset.id) next = r; // first pending
    }
    if (next && next.dataset.id && next.previousElementSibling && next.previousElementSibling.classList.contains('unread-divider')) {
      next = next.previousElementSibling;
    }
    if (next) next.before(row);
    else this.list.append(row);
  }

  /** Moves `upTo` over the ids now shown after it. */
  _advance() {
    if (this.upTo == null) return;
    while (this.rows.has(this.upTo + 1)) this.upTo += 1;
  }

  /** Consecutive messages of one sender form a group: the name shows once. */
  _group() {
    let prev = null;
    for (const row of this.list.children) {
      if (!row.classList.contains('msg')) {
        prev = null;
        continue;
      }
      row.classList.toggle('cont', !!prev && prev.dataset.sender === row.dataset.sender);
      prev = row;
    }
  }

  _state(m) {
    if (m.sender_id !== this.o.me) return '';
    return m.id <= this.readBy ? 'read' : 'sent';
  }

  _refreshStates() {
    for (const [id, row] of this.rows) {
      if (row.dataset.mine === 'true') this._setState(row, id <= this.readBy ? 'read' : 'sent');
    }
  }

  _setState(row, state) {
    if (row.dataset.state === state) return;
    row.dataset.state = state;
    const s = row.querySelector('.state');
    if (s) s.textContent = STATE_TEXT[state] || '';
  }

  _row(m, state) {
    const mine = m.sender_id === this.o.me;
    let content;
    if (m.kind === 'image') {
      // A pending image shows its local copy until it is stored. A click
      // enlarges it in the page (its address carries the session: it is not
      // opened as a page of its own).
      const src = m.preview || this.o.imageUrl(m.body);
      content = el('button', { type: 'button', class: 'image', title: 'Enlarge', onclick: (e) => zoom(e.currentTarget.querySelector('img')) },
        el('img', { src, alt: 'Image', decoding: 'async', onload: (e) => this._imageLoaded(e.target) }));
    } else if (m.kind === 'emoji') {
      content = el('span', { class: 'emoji-only' }, m.body);
    } else {
      content = el('span', { class: 'text' }, linkified(m.body));
    }
    const meta = el('div', { class: 'meta' }, timeEl(m.created_at));
    const bubble = el('div', { class: 'bubble' });
    if (!mine && this.o.nameOf) bubble.append(el('div', { class: 'who' }, this.o.nameOf(m.sender_id)));
    bubble.append(content, meta);
    const row = el('li', {
      class: 'msg ' + (mine ? 'mine' : 'theirs') + (m.kind === 'image' ? ' has-image' : ''),
      dataset: { mine: String(mine), state: state || '', sender: String(m.sender_id) },
    }, bubble);
    if (m.id) row.dataset.id = String(m.id);
    if (m.client_id) row.dataset.clientId = m.client_id;
    if (mine) {
      meta.append(el('span', { class: 'state' }, STATE_TEXT[state] || ''));
      if (!m.id) {
        // What a failed send says and offers (shown by the row's state).
        bubble.append(el('div', { class: 'why', hidden: true }), el('div', { class: 'actions' },
          el('button', { type: 'button', class: 'retry', onclick: () => this.o.onRetry(m.client_id) }, 'Retry'),
          el('button', { type: 'button', class: 'dismiss', onclick: () => this.o.onDismiss(m.client_id) }, 'Remove')));
      }
    }
    return row;
  }
}

/** Shows an image over the page until a click or Escape. */
function zoom(img) {
  if (!img) return;
  const shade = el('div', { class: 'zoom', role: 'dialog', 'aria-label': 'Image', tabIndex: -1 },
    el('img', { src: img.src, alt: img.alt }));
  const close = () => {
    shade.remove();
    window.removeEventListener('keydown', onKey);
  };
  const onKey = (e) => {
    if (e.key === 'Escape') close();
  };
  shade.addEventListener('click', close);
  window.addEventListener('keydown', onKey);
  document.body.append(shade);
  shade.focus();
}

const EMOJI = ['😀', '😂', '😊', '😍', '🤔', '😢', '😮', '😡', '👍', '👎', '🙏', '👏', '🎉', '❤️', '🔥', '✅', '❌', '👋', '🙂', '😉', '😅', '🤝', '📦', '💳'];

/**
 * The composer in `form` (a textarea `.input`, buttons `.emoji-button`,
 * `.image-button`, a hidden file input `.file`, a `.emoji-panel`).
 * options: `onSend(text)`, `onImage(file)`, `onTyping()`.
 */
export class Composer {
  constructor(form, options) {
    this.form = form;
    this.o = options;
    this.input = form.querySelector('.input');
    this.file = form.querySelector('.file');
    this.panel = form.querySelector('.emoji-panel');
    this.panel.replaceChildren(...EMOJI.map((e) => el('button', { type: 'button', class: 'emoji', title: e, onclick: () => this._insert(e) }, e)));
    form.querySelector('.emoji-button').addEventListener('click', () => {
      this.panel.hidden = !this.panel.hidden;
    });
    form.querySelector('.image-button').addEventListener('click', () => this.file.click());
    this.file.addEventListener('change', () => {
      for (const f of this.file.files) this.o.onImage(f);
      this.file.value = '';
    });
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      this._send();
    });
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this._send();
      } else if (e.key === 'Escape') {
        this.panel.hidden = true;
      }
    });
    this.input.addEventListener('input', () => {
      this._grow();
      if (this.input.value.trim()) this.o.onTyping();
    });
    this.input.addEventListener('paste', (e) => {
      const files = Array.from((e.clipboardData && e.clipboardData.files) || []).filter((f) => f.type.startsWith('image/'));
      if (files.length) {
        e.preventDefault();
        files.forEach((f) => this.o.onImage(f));
      }
    });
  }

  _insert(text) {
    const i = this.input;
    const at = i.selectionStart ?? i.value.length;
    i.value = i.value.slice(0, at) + text + i.value.slice(i.selectionEnd ?? at);
    i.selectionStart = i.selectionEnd = at + text.length;
    i.focus();
  }

  _grow() {
    this.input.style.height = 'auto';
    this.input.style.height = Math.min(this.input.scrollHeight, 160) + 'px';
  }

  _send() {
    const text = this.input.value;
    if (!text.trim()) return;
    this.input.value = '';
    this._grow();
    this.panel.hidden = true;
    this.o.onSend(text);
  }

  enable(on) {
    for (const c of this.form.querySelectorAll('textarea, button')) c.disabled = !on;
  }
}

const STATE_LABEL = {
  idle: 'Offline',
  connecting: 'Connecting…',
  authenticating: 'Connecting…',
  open: 'Online',
  reconnecting: 'Reconnecting…',
  closed: 'Offline',
};

/** Shows the socket's state in `banner` (hidden while open) and `dot`. */
export function showConnection(banner, dot, state) {
  const label = STATE_LABEL[state] || state;
  banner.hidden = state === 'open';
  banner.textContent = state === 'reconnecting' ? 'Connection lost — reconnecting…' : label;
  banner.dataset.state = state;
  if (dot) {
    dot.dataset.state = state;
    dot.title = label;
  }
}

/** The title badge (`(3) …`) and a short sound for new messages. */
export class Attention {
  constructor(title) {
    this.title = title;
    this.audio = null;
    this.muted = false;
  }

  badge(count) {
    document.title = (count > 0 ? '(' + count + ') ' : '') + this.title;
  }

  /** A short two-tone chime (Web Audio: no file to load); silent until the
   *  page has had a user gesture, as browsers require. */
  ping() {
    if (this.muted) return;
    try {
      this.audio = this.audio || new AudioContext();
      const a = this.audio;
      if (a.state !== 'running') return;
      const t = a.currentTime;
      for (const [i, f] of [[0, 880], [1, 1320]]) {
        const o = a.createOscillator();
        const g = a.createGain();
        o.frequency.value = f;
        g.gain.setValueAtTime(0.0001, t + i * 0.12);
        g.gain.exponentialRampToValueAtTime(0.15, t + i * 0.12 + 0.02);
        g.gain.exponentialRampToValueAtTime(0.0001, t + i * 0.12 + 0.2);
        o.connect(g).connect(a.destination);
        o.start(t + i * 0.12);
        o.stop(t + i * 0.12 + 0.22);
      }
    } catch (_) {
      /* no audio here */
    }
  }

  /** Lets the sound play after the next user gesture. */
  unlockOnGesture() {
    const unlock = () => {
      try {
        this.audio = this.audio || new AudioContext();
        this.audio.resume();
      } catch (_) { /* no audio */ }
    };
    window.addEventListener('pointerdown', unlock, { once: true });
    window.addEventListener('keydown', unlock, { once: true });
  }
}

/** A page of history of at most this many messages. */
export const PAGE = 50;
