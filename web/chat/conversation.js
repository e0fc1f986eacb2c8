/* herald chat — one open conversation, as both pages show it: history on open,
 * what was missed after every reconnect or gap, sends with their delivery
 * states, retries and refusals, images, read marking while the reader looks,
 * the typing line. */
import { clientId } from './client.js';
import { MessageList, PAGE } from './ui.js';

/** How long "typing…" stays after the last typing event. */
const TYPING_SHOWN_MS = 4000;
/** Statuses whose sends cannot succeed as they are: offered for removal only. */
const REFUSED = new Set([400, 403, 404, 413, 415]);

export class ConversationView {
  /**
   * @param {import('./client.js').ChatSession} session
   * @param {number} conversationId
   * @param {{scroller: HTMLElement, typing: HTMLElement, live?: HTMLElement,
   *          nameOf: function(number):string, isReader?: function(number):boolean,
   *          onError: function(Error):void, onRead?: function(number, number):void}} parts
   *   `isReader(userId)`: whose reads make one's own messages "read" (default:
   *   anyone else); `live`: a screen-reader region told of incoming messages.
   */
  constructor(session, conversationId, parts) {
    this.session = session;
    this.id = conversationId;
    this.parts = parts;
    this.position = 0;
    this.outbox = new Map(); // client_id → {kind, body, file, preview}
    this.typingTimer = null;
    this.lastTyping = 0;
    this.closed = false;
    this.opening = null; // events that arrive while the first page loads
    this.catchingUp = false;
    this.catchUpAgain = false;
    this.retryTimer = null;
    this.retryDelay = 1000;
    const me = session.userId;
    this.list = new MessageList(parts.scroller, {
      me,
      isReader: parts.isReader || ((id) => id !== me),
      imageUrl: (id) => session.api.imageUrl(id),
      nameOf: parts.nameOf,
      onOlder: async (before) => {
        const p = await session.sync(this.id, { before, limit: PAGE });
        return { messages: p.messages, pageSize: PAGE };
      },
      onRetry: (cid) => this._deliver(cid),
      onDismiss: (cid) => this._dismiss(cid),
    });
    this._onMessage = (e) => this._message(e.detail.message);
    this._onRead = (e) => {
      const r = e.detail;
      if (r.conversation_id === this.id) this.list.markReadBy(r.user_id, r.position);
    };
    this._onTyping = (e) => {
      const t = e.detail;
      if (t.conversation_id === this.id && t.user_id !== me) this._showTyping(t.user_id);
    };
    this._onReady = () => this.catchUp();
    this._onVisible = () => this.markRead();
    session.addEventListener('message', this._onMessage);
    session.addEventListener('read', this._onRead);
    session.addEventListener('typing', this._onTyping);
    session.addEventListener('ready', this._onReady);
    document.addEventListener('visibilitychange', this._onVisible);
    window.addEventListener('focus', this._onVisible);
    parts.scroller.addEventListener('scroll', this._onVisible, { passive: true });
  }

  /** Shows the newest page (with the unread divider) and marks it read. */
  async open() {
    this.opening = [];
    let page;
    try {
      page = await this.session.sync(this.id, { limit: PAGE });
    } finally {
      const early = this.opening;
      this.opening = null;
      if (page && !this.closed) {
        this.position = page.position || 0;
        this.list.reset(page, { pageSize: PAGE });
        // Pushed while the page was on its way: the newer of them are not in it.
        for (const m of early) this._message(m);
      }
    }
    this.markRead();
  }

  /** Pages in what was stored after the last message shown without a gap
   *  (after a reconnect: pushes missed while away, sends stored but not
   *  pushed; after an event whose id skips some). Retried with growing delays
   *  when it fails. */
  async catchUp() {
    if (this.closed) return;
    if (this.catchingUp) {
      this.catchUpAgain = true;
      return;
    }
    this.catchingUp = true;
    clearTimeout(this.retryTimer);
    try {
      if (this.list.upTo == null) {
        // Nothing stored shown yet (an empty conversation, or history that
        // could not be read): the newest page, beside any send in progress.
        const page = await this.session.sync(this.id, { limit: PAGE });
        if (this.closed) return;
        this.list.merge(page, { pageSize: PAGE });
      } else {
        for (;;) {
          const page = await this.session.sync(this.id, { after: this.list.upTo, limit: PAGE });
          if (this.closed) return;
          this.list.add(page.messages);
          this.list.setReads(page.reads || []);
          if (page.messages.length < PAGE) break;
        }
      }
      this.retryDelay = 1000;
      this.markRead();
    } catch (err) {
      this.parts.onError(err);
      if (!this.closed && err.status !== 401 && err.status !== 403 && err.status !== 404) {
        this.retryTimer = setTimeout(() => this.catchUp(), this.retryDelay);
        this.retryDelay = Math.min(30000, this.retryDelay * 2);
      }
    } finally {
      this.catchingUp = false;
      if (this.catchUpAgain && !this.closed) {
        this.catchUpAgain = false;
        this.catchUp();
      }
    }
  }

  /** Stores what is shown as read while the reader can see it: the page
   *  visible and scrolled to the end (up to the last message shown without a
   *  gap: a message not shown yet is not read). */
  async markRead() {
    if (this.closed || this.opening || document.visibilityState !== 'visible') return;
    const upTo = this.list.upTo;
    if (upTo == null || upTo <= this.position || !this.list.atEnd()) return;
    const before = this.position;
    this.position = upTo;
    try {
      const r = await this.session.read(this.id, upTo);
      this.position = Math.max(this.position, r.position);
      if (this.parts.onRead) this.parts.onRead(this.position, r.unread ?? 0);
    } catch (err) {
      this.position = before;
      this.parts.onError(err);
    }
  }

  /** Sends text (trimmed of trailing white space). */
  sendText(text) {
    const body = text.replace(/\s+$/, '');
    if (!body.trim()) return;
    const cid = clientId();
    this.outbox.set(cid, { kind: 'text', body });
    this.list.clearDivider();
    this.list.addPending(cid, 'text', body);
    this._deliver(cid);
  }

  /** Uploads an image, then sends it. */
  sendImage(file) {
    const cid = clientId();
    const preview = URL.createObjectURL(file);
    this.outbox.set(cid, { kind: 'image', file, preview });
    this.list.clearDivider();
    this.list.addPending(cid, 'image', '', preview);
    this._deliver(cid);
  }

  async _deliver(cid) {
    const item = this.outbox.get(cid);
    if (!item || item.busy) return;
    item.busy = true;
    this.list.retrying(cid);
    try {
      if (item.kind === 'image' && !item.body) {
        const up = await this.session.api.upload(this.id, item.file);
        item.body = up.id;
      }
      const sent = await this.session.send(this.id, { kind: item.kind, body: item.body, client_id: cid });
      this._sent(cid, sent.message);
    } catch (err) {
      item.busy = false;
      if (!this.outbox.has(cid)) return; // stored meanwhile (its push came in)
      this.list.fail(cid, err.message, REFUSED.has(err.status));
      if (!REFUSED.has(err.status)) this.parts.onError(err);
    }
  }

  _sent(cid, message) {
    const item = this.outbox.get(cid);
    this.outbox.delete(cid);
    if (item && item.preview) setTimeout(() => URL.revokeObjectURL(item.preview), 60000);
    this.list.confirm(message);
  }

  _dismiss(cid) {
    const item = this.outbox.get(cid);
    this.outbox.delete(cid);
    if (item && item.preview) URL.revokeObjectURL(item.preview);
    this.list.remove(cid);
  }

  /** Tells the others this user types (at most every 2 s: the server drops more). */
  typed() {
    const now = Date.now();
    if (now - this.lastTyping < 2000) return;
    this.lastTyping = now;
    this.session.typing(this.id);
  }

  _message(m) {
    if (!m || m.conversation_id !== this.id || this.closed) return;
    if (this.opening) {
      this.opening.push(m);
      return;
    }
    const me = this.session.userId;
    if (m.sender_id === me && this.outbox.has(m.client_id)) {
      // Our own send, pushed before its acknowledgement came back.
      this._sent(m.client_id, m);
      return;
    }
    const gap = this.list.gapBefore(m.id);
    this.list.add([m]);
    if (gap) this.catchUp();
    if (m.sender_id !== me) {
      this._hideTyping();
      if (this.parts.live) {
        this.parts.live.textContent = this.parts.nameOf(m.sender_id) + ': ' + (m.kind === 'image' ? 'an image' : m.body.slice(0, 200));
      }
    }
    this.markRead();
  }

  _showTyping(userId) {
    const t = this.parts.typing;
    t.textContent = this.parts.nameOf(userId) + ' is typing…';
    t.hidden = false;
    clearTimeout(this.typingTimer);
    this.typingTimer = setTimeout(() => this._hideTyping(), TYPING_SHOWN_MS);
  }

  _hideTyping() {
    clearTimeout(this.typingTimer);
    this.parts.typing.hidden = true;
  }

  close() {
    this.closed = true;
    this._hideTyping();
    clearTimeout(this.retryTimer);
    this.list.destroy();
    for (const item of this.outbox.values()) if (item.preview) URL.revokeObjectURL(item.preview);
    this.outbox.clear();
    const s = this.session;
    s.removeEventListener('message', this._onMessage);
    s.removeEventListener('read', this._onRead);
    s.removeEventListener('typing', this._onTyping);
    s.removeEventListener('ready', this._onReady);
    document.removeEventListener('visibilitychange', this._onVisible);
    window.removeEventListener('focus', this._onVisible);
    this.parts.scroller.removeEventListener('scroll', this._onVisible);
  }
}
