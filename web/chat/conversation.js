/* herald chat — one open conversation, as both pages show it: history on open,
 * what was missed after every reconnect, sends with their delivery states and
 * retries, images, read marking while the reader looks, the typing line. */
import { clientId } from './client.js';
import { MessageList, PAGE } from './ui.js';

/** How long "typing…" stays after the last typing event. */
const TYPING_SHOWN_MS = 4000;

export class ConversationView {
  /**
   * @param {import('./client.js').ChatSession} session
   * @param {number} conversationId
   * @param {{scroller: HTMLElement, typing: HTMLElement, nameOf: function(number):string,
   *          onError: function(Error):void, onRead?: function(number):void}} parts
   */
  constructor(session, conversationId, parts) {
    this.session = session;
    this.id = conversationId;
    this.parts = parts;
    this.position = 0;
    this.outbox = new Map(); // client_id → {kind, body, preview}
    this.typingTimer = null;
    this.lastTyping = 0;
    this.closed = false;
    this.list = new MessageList(parts.scroller, {
      me: session.userId,
      imageUrl: (id) => session.api.imageUrl(id),
      nameOf: parts.nameOf,
      onOlder: async (before) => {
        const p = await session.sync(this.id, { before, limit: PAGE });
        return { messages: p.messages, pageSize: PAGE };
      },
      onRetry: (cid) => this._deliver(cid),
    });
    this._onMessage = (e) => this._message(e.detail.message);
    this._onRead = (e) => {
      const r = e.detail;
      if (r.conversation_id === this.id && r.user_id !== session.userId) this.list.markReadBy(r.position);
    };
    this._onTyping = (e) => {
      const t = e.detail;
      if (t.conversation_id === this.id && t.user_id !== session.userId) this._showTyping(t.user_id);
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
    const page = await this.session.sync(this.id, { limit: PAGE });
    if (this.closed) return;
    this.position = page.position || 0;
    this.list.reset(page, { pageSize: PAGE });
    this.markRead();
  }

  /** Pages in what was stored since the newest message shown (after a
   *  reconnect: pushes missed while away, sends stored but not pushed). */
  async catchUp() {
    if (this.closed) return;
    try {
      if (!this.list.newest) {
        // Nothing stored shown yet (an empty conversation, or history that
        // could not be read): the newest page, beside any send in progress.
        const page = await this.session.sync(this.id, { limit: PAGE });
        if (this.closed) return;
        this.list.merge(page, { pageSize: PAGE });
        this.markRead();
        return;
      }
      for (;;) {
        const page = await this.session.sync(this.id, { after: this.list.newest, limit: PAGE });
        if (this.closed) return;
        this.list.add(page.messages);
        this.list.setReads(page.reads || []);
        if (page.messages.length < PAGE) break;
      }
      this.markRead();
    } catch (err) {
      this.parts.onError(err);
    }
  }

  /** Stores the newest message shown as read while the reader can see it. */
  async markRead() {
    if (this.closed || document.visibilityState !== 'visible' || !document.hasFocus()) return;
    const newest = this.list.newest;
    if (newest <= this.position || !this.list.atEnd()) return;
    this.position = newest;
    try {
      const r = await this.session.read(this.id, newest);
      this.position = Math.max(this.position, r.position);
      if (this.parts.onRead) this.parts.onRead(this.position);
    } catch (err) {
      this.position = 0;
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
  async sendImage(file) {
    const cid = clientId();
    const preview = URL.createObjectURL(file);
    this.outbox.set(cid, { kind: 'image', file, preview });
    this.list.addPending(cid, 'image', '', preview);
    this._deliver(cid);
  }

  async _deliver(cid) {
    const item = this.outbox.get(cid);
    if (!item) return;
    this.list.retrying(cid);
    try {
      if (item.kind === 'image' && !item.body) {
        const up = await this.session.api.upload(this.id, item.file);
        item.body = up.id;
      }
      const sent = await this.session.send(this.id, { kind: item.kind, body: item.body, client_id: cid });
      this.outbox.delete(cid);
      if (item.preview) setTimeout(() => URL.revokeObjectURL(item.preview), 60000);
      this.list.confirm(sent.message);
    } catch (err) {
      this.list.fail(cid);
      this.parts.onError(err);
    }
  }

  /** Tells the others this user types (at most every 2 s: the server drops more). */
  typed() {
    const now = Date.now();
    if (now - this.lastTyping < 2000) return;
    this.lastTyping = now;
    this.session.typing(this.id);
  }

  _message(m) {
    if (!m || m.conversation_id !== this.id) return;
    if (m.sender_id === this.session.userId && this.list.pending.has(m.client_id)) {
      // Our own send, pushed before its acknowledgement came back.
      this.list.confirm(m);
      this.outbox.delete(m.client_id);
      return;
    }
    this.list.add([m]);
    if (m.sender_id !== this.session.userId) this._hideTyping();
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
