/* herald chat — the client both chat pages use: the chat's HTTP API (docs/chat.md)
 * and its socket (the SDK's HeraldClient authenticated with {"chat": token}),
 * sending, syncing and marking read over the socket when it is up and over HTTP
 * when it is not. */
import { HeraldClient, endpointUrl, State } from '/_/sdk/herald.js';

/** Ops of a chat connection (docs/chat.md, "Socket ops"). */
export const ChatOp = Object.freeze({ SEND: 4, EVENT: 5, SYNC: 18, SYNC_REPLY: 19, READ: 20, READ_REPLY: 21 });

/** An error of the chat API: `status` (HTTP, 0 for the network) and `code`. */
export class ChatError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.name = 'ChatError';
    this.status = status;
    this.code = code;
  }
}

/** A random id for a send, so that a retry does not store it twice. */
export function clientId() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** The chat's HTTP API under `base`, as the holder of `token` (if any). */
export class ChatApi {
  constructor(base = '/chat/api') {
    this.base = base;
    this.token = null;
  }

  /** Calls `method path` with a JSON body; resolves with the answer's JSON
   *  (null for 204), rejects with a ChatError. */
  async call(method, path, body) {
    const headers = {};
    if (this.token) headers.Authorization = 'Bearer ' + this.token;
    let payload;
    if (body instanceof FormData) {
      payload = body;
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(this.base + path, { method, headers, body: payload, cache: 'no-store' });
    } catch (err) {
      throw new ChatError(0, 'network', 'the server cannot be reached');
    }
    if (res.status === 204) return null;
    let doc = null;
    try {
      doc = await res.json();
    } catch (_) {
      /* not JSON: reported below */
    }
    if (!res.ok) {
      throw new ChatError(res.status, (doc && doc.code) || 'http_' + res.status, (doc && doc.message) || 'HTTP ' + res.status);
    }
    return doc;
  }

  /** Uploads an image into a conversation; resolves with the upload. */
  upload(conversationId, file) {
    const form = new FormData();
    form.append('file', file, file.name || 'image');
    return this.call('POST', '/conversations/' + conversationId + '/uploads', form);
  }

  /** Where an `<img>` loads an upload (the token in the query: an image
   *  request cannot carry a header). */
  imageUrl(uploadId) {
    return this.base + '/uploads/' + encodeURIComponent(uploadId) + '?token=' + encodeURIComponent(this.token || '');
  }
}

/** Reads the server's `/_/config.json`: where its WebSocket clients connect. */
export async function socketUrl() {
  const res = await fetch('/_/config.json', { cache: 'no-store' });
  if (!res.ok) throw new ChatError(res.status, 'config', '/_/config.json: HTTP ' + res.status);
  const url = endpointUrl(await res.json());
  if (!url) throw new ChatError(0, 'config', 'the server has no WebSocket port');
  return url;
}

/**
 * A signed-in chat user: the API with its token and its socket.
 *
 * Events (an EventTarget; details on `event.detail`):
 * - `state` `{state}`: the socket's state (`connecting`, `open`, `reconnecting`, `closed`, …)
 * - `ready`: the socket authenticated (first time or again): sync what was missed
 * - `message` `{message}`, `read` `{conversation_id, user_id, position}`, `typing` `{conversation_id, user_id}`
 * - `refused` `{error}`: the session is no longer accepted (sign in again)
 */
export class ChatSession extends EventTarget {
  constructor(api, me, options = {}) {
    super();
    this.api = api;
    /** `{user, shop}` */
    this.me = me;
    this.options = options;
    this.client = null;
  }

  get userId() {
    return this.me.user.id;
  }

  /** Connects the socket (and keeps it up until close()). */
  async connect() {
    const url = this.options.url || (await socketUrl());
    const client = new HeraldClient(Object.assign({
      url,
      // A fixed body: refused or expired, it is not tried again (sign in again).
      auth: { chat: this.api.token },
      // The chat syncs from its own message ids after each (re)connect.
      recover: false,
      heartbeat: { interval: 25000, timeout: 10000 },
      backoff: { base: 500, max: 15000 },
    }, this.options.client || {}));
    this.client = client;
    client.on('state', (e) => this._emit('state', { state: e.state }));
    client.on('auth', () => this._emit('ready', {}));
    client.on('message', (m) => {
      if (m.op !== ChatOp.EVENT) return;
      let ev;
      try {
        ev = m.json();
      } catch (_) {
        return;
      }
      if (ev && typeof ev.type === 'string') this._emit(ev.type, ev);
    });
    client.on('error', (e) => {
      const err = e.error;
      if (err && (err.code === 'auth_refused' || err.code === 'expired')) this._emit('refused', { error: err });
    });
    client.connect();
    return this;
  }

  get socketOpen() {
    return !!this.client && this.client.state === State.OPEN;
  }

  /** Asks over the socket; an `error` reply rejects with a ChatError. */
  async _ask(op, body) {
    const reply = await this.client.request(op, body);
    if (reply.body.length === 0) throw new ChatError(504, 'timeout', 'the server did not answer in time');
    const doc = reply.json();
    if (doc.type === 'error') throw new ChatError(doc.status, doc.code, doc.message);
    return doc;
  }

  /** Sends a message; resolves with `{message, created, pushed}`. The socket
   *  when it is up, else HTTP; the same `client_id` makes a retry harmless. */
  async send(conversationId, { kind = 'text', body, client_id }) {
    const fields = { kind, body, client_id };
    return this._either(ChatOp.SEND, conversationId, fields, () =>
      this.api.call('POST', '/conversations/' + conversationId + '/messages', fields));
  }

  /** A page of history `{messages, last_message_id, position, unread, reads}`:
   *  the newest, or the one before or after a message id. */
  async sync(conversationId, { before, after, limit } = {}) {
    const fields = {};
    for (const [k, v] of Object.entries({ before, after, limit })) if (v != null) fields[k] = v;
    return this._either(ChatOp.SYNC, conversationId, fields, () =>
      this.api.call('GET', '/conversations/' + conversationId + '/messages?' + new URLSearchParams(fields)));
  }

  /** Marks read up to `position`; resolves with `{position, unread?}`. */
  async read(conversationId, position) {
    return this._either(ChatOp.READ, conversationId, { position }, () =>
      this.api.call('POST', '/conversations/' + conversationId + '/read', { position }));
  }

  /** Op `op` with `fields` on the socket while it is up (and the frame fits),
   *  else — or when the socket goes away before the answer — `overHttp()`,
   *  which does the same (a send keeps its client_id: no double). The server's
   *  refusals are thrown either way. */
  async _either(op, conversationId, fields, overHttp) {
    const frame = Object.assign({ conversation_id: conversationId }, fields);
    if (this.socketOpen && new TextEncoder().encode(JSON.stringify(frame)).length <= this.client.options.maxBody) {
      try {
        return await this._ask(op, frame);
      } catch (err) {
        if (err instanceof ChatError) throw err;
      }
    }
    return overHttp();
  }

  /** Tells the other members this user is typing (the server drops repeats). */
  typing(conversationId) {
    return this.api.call('POST', '/conversations/' + conversationId + '/typing').catch(() => {});
  }

  close() {
    if (this.client) this.client.close();
    this.client = null;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
