/**
 * @herald/client — a browser (and Node ≥ 22) client for herald, the goim-compatible
 * push server, over WebSocket.
 *
 * One ES module, no dependencies, no build step. It speaks goim's binary frames
 * (16-byte big-endian header: packLen, headerLen = 16, ver, op, seq; then the
 * body), authenticates (op 7 → 8), sends heartbeats (op 2 → 3) and reconnects
 * when their replies stop, unpacks op-9 batches, changes rooms (op 12 → 13),
 * edits the accept filter (op 14 → 15, op 16 → 17), sends upstream business ops
 * (echo matched by seq), refreshes expiring credentials (op 22 → 23), reconnects
 * with exponential backoff and full jitter, and — when the server keeps history —
 * recovers what was pushed while it was away (ops 24 and 25, herald's opt-in
 * recovery), keeping stream positions in memory and, optionally, in a storage the
 * caller provides so a page reload recovers too.
 *
 * See README.md beside this file, and docs/protocol.md of the server.
 *
 * @module @herald/client
 */

/** goim's operation codes and herald's additions. */
export const Op = Object.freeze({
  HANDSHAKE: 0,
  HANDSHAKE_REPLY: 1,
  HEARTBEAT: 2,
  HEARTBEAT_REPLY: 3,
  SEND_MSG: 4,
  SEND_MSG_REPLY: 5,
  DISCONNECT_REPLY: 6,
  AUTH: 7,
  AUTH_REPLY: 8,
  RAW: 9,
  CHANGE_ROOM: 12,
  CHANGE_ROOM_REPLY: 13,
  SUB: 14,
  SUB_REPLY: 15,
  UNSUB: 16,
  UNSUB_REPLY: 17,
  REFRESH: 22,
  REFRESH_REPLY: 23,
  POSITIONED: 24,
  STREAMS: 25,
});

/** Stream kinds as the op-24 kind byte names them. */
export const StreamKind = Object.freeze({ 1: 'room', 2: 'mid', 3: 'key' });

/** Connection states, in the order a healthy connection goes through them. */
export const State = Object.freeze({
  IDLE: 'idle', // constructed, connect() not called yet
  CONNECTING: 'connecting', // opening the WebSocket
  AUTHENTICATING: 'authenticating', // op 7 sent, waiting for op 8
  OPEN: 'open', // authenticated
  RECONNECTING: 'reconnecting', // waiting out the backoff delay
  CLOSED: 'closed', // close() was called, or the server refused us for good
});

export const HEADER_LEN = 16;
const VERSION = 1;
const TWO_32 = 4294967296;

/** Close code the client uses when it drops a connection itself (a dead
 *  heartbeat, an auth timeout, reconnect()). */
export const CLIENT_CLOSE = 4100;

const DEFAULTS = Object.freeze({
  recover: true,
  heartbeat: Object.freeze({ interval: 30000, timeout: 10000 }),
  backoff: Object.freeze({ base: 500, max: 30000 }),
  authTimeout: 10000,
  requestTimeout: 10000,
  maxBody: 4096,
  storageKey: 'herald.positions',
});

/**
 * The WebSocket URL a page should connect to, from the server's
 * `/_/config.json` (`{ws_host, ws_port, wss_port, ws_path}`): `wss` on an https
 * page when the server offers it, the page's own host when the server names
 * none. `''` when the server has no WebSocket port.
 * @param {{ws_host?:string|null, ws_port?:number|null, wss_port?:number|null, ws_path?:string}} cfg
 * @param {{hostname:string, protocol:string}} [where] default: the page's location
 * @returns {string}
 */
export function endpointUrl(cfg, where) {
  const loc = where || globalThis.location || { hostname: '127.0.0.1', protocol: 'http:' };
  let h = cfg.ws_host || loc.hostname || '127.0.0.1';
  if (h.indexOf(':') >= 0 && h[0] !== '[') h = '[' + h + ']';
  const path = cfg.ws_path || '/sub';
  const secure = loc.protocol === 'https:';
  if (cfg.wss_port && (secure || !cfg.ws_port)) return 'wss://' + h + ':' + cfg.wss_port + path;
  if (cfg.ws_port) return 'ws://' + h + ':' + cfg.ws_port + path;
  return '';
}

/** Ops with a meaning of their own; send() refuses them. */
const RESERVED_OPS = new Set([Op.HEARTBEAT, Op.AUTH, Op.CHANGE_ROOM, Op.SUB, Op.UNSUB, Op.REFRESH]);
const KINDS = new Set(['room', 'mid', 'key']);

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8');

/** An error the client reports: `code` says what went wrong. */
export class HeraldError extends Error {
  /**
   * @param {string} code short machine-readable reason, e.g. `"timeout"`
   * @param {string} message
   * @param {object} [extra] more fields copied onto the error
   */
  constructor(code, message, extra) {
    super(message);
    this.name = 'HeraldError';
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

/** Every event the client dispatches: its details are properties of the event
 *  itself (and, for convenience, of `event.detail`). */
export class HeraldEvent extends Event {
  constructor(type, detail) {
    super(type);
    this.detail = detail || {};
    Object.assign(this, this.detail);
  }
}

/** The `message` event: one push, as the application sees it. */
export class HeraldMessageEvent extends HeraldEvent {
  constructor(op, body, meta) {
    super('message', meta);
    /** The push's operation (the `operation` given to the push API). */
    this.op = op;
    /** The pushed bytes. */
    this.body = body;
  }

  /** The body decoded as UTF-8. */
  get text() {
    if (this._text === undefined) this._text = decoder.decode(this.body);
    return this._text;
  }

  /** The body parsed as JSON (throws when it is not JSON). */
  json() {
    return JSON.parse(this.text);
  }
}

// ------------------------------------------------------------------ frames

/**
 * Encodes one frame.
 * @param {number} op
 * @param {number} seq
 * @param {Uint8Array} body
 * @returns {Uint8Array}
 */
export function encodeFrame(op, seq, body) {
  const out = new Uint8Array(HEADER_LEN + body.length);
  const v = new DataView(out.buffer);
  v.setInt32(0, out.length);
  v.setInt16(4, HEADER_LEN);
  v.setInt16(6, VERSION);
  v.setInt32(8, op);
  v.setInt32(12, seq);
  out.set(body, HEADER_LEN);
  return out;
}

/**
 * Decodes the frames in `bytes`, back to back (one WebSocket message holds one
 * frame; an op-9 body holds several). Throws on a malformed frame.
 * @param {Uint8Array} bytes
 * @returns {{op:number, ver:number, seq:number, body:Uint8Array}[]}
 */
export function decodeFrames(bytes) {
  const frames = [];
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < HEADER_LEN) throw new HeraldError('bad_frame', 'truncated frame header at byte ' + at);
    const packLen = v.getInt32(at);
    const headerLen = v.getInt16(at + 4);
    if (headerLen !== HEADER_LEN || packLen < HEADER_LEN || at + packLen > bytes.length) {
      throw new HeraldError('bad_frame', 'malformed frame at byte ' + at +
        ' (packLen ' + packLen + ', headerLen ' + headerLen + ', ' + (bytes.length - at) + ' bytes left)');
    }
    frames.push({
      ver: v.getInt16(at + 6),
      op: v.getInt32(at + 8),
      seq: v.getInt32(at + 12),
      body: bytes.subarray(at + HEADER_LEN, at + packLen),
    });
    at += packLen;
  }
  return frames;
}

/**
 * Reads an op-24 body: kind byte, 8-byte big-endian offset, the push frame.
 * @param {Uint8Array} body
 * @returns {{kind:string, offset:number, frame:{op:number, ver:number, seq:number, body:Uint8Array}}}
 */
export function decodePositioned(body) {
  if (body.length < 9 + HEADER_LEN) throw new HeraldError('bad_frame', 'op 24 body too short (' + body.length + ' bytes)');
  const kind = StreamKind[body[0]];
  if (!kind) throw new HeraldError('bad_frame', 'op 24 names unknown stream kind ' + body[0]);
  const v = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const hi = v.getUint32(1);
  const lo = v.getUint32(5);
  // Offsets grow by one per push: past 2^53 is centuries away. Refuse rather than
  // round silently.
  if (hi >= 0x200000) throw new HeraldError('bad_frame', 'op 24 offset beyond 2^53');
  const offset = hi * TWO_32 + lo;
  const frames = decodeFrames(body.subarray(9));
  if (frames.length !== 1) throw new HeraldError('bad_frame', 'op 24 wraps ' + frames.length + ' frames');
  return { kind, offset, frame: frames[0] };
}

function toBytes(body) {
  if (body == null) return new Uint8Array(0);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  if (typeof body === 'string') return encoder.encode(body);
  return encoder.encode(JSON.stringify(body));
}

function opsText(ops) {
  const list = Array.isArray(ops) ? ops : [ops];
  return list.map((o) => String(o).trim()).filter(Boolean).join(',');
}

function opsList(text) {
  return String(text).split(',').map((s) => s.trim()).filter(Boolean).map(Number).filter(Number.isInteger);
}

function int32(body) {
  return body.length >= 4 ? new DataView(body.buffer, body.byteOffset, 4).getInt32(0) : 0;
}

function num(x, fallback) {
  return typeof x === 'number' && Number.isFinite(x) && x >= 0 ? x : fallback;
}

// ------------------------------------------------------------------ client

/**
 * A herald connection that keeps itself up.
 *
 * @example
 * import { HeraldClient } from './herald.js';
 * const c = new HeraldClient({
 *   url: 'wss://push.example.com/sub',
 *   auth: { mid: 42, key: 'tab-1', room_id: 'live://1000', accepts: [1000] },
 *   storage: sessionStorage,
 * });
 * c.on('message', (m) => console.log(m.op, m.text));
 * c.on('reload', (e) => refetchState(e.stream));
 * c.connect();
 */
export class HeraldClient extends EventTarget {
  /**
   * @param {object} options see herald.d.ts (`HeraldOptions`) and README.md
   */
  constructor(options = {}) {
    super();
    if (!options.url) throw new TypeError('HeraldClient: options.url is required');
    const hb = typeof options.heartbeat === 'number' ? { interval: options.heartbeat } : options.heartbeat || {};
    const bo = options.backoff || {};
    this.options = {
      url: options.url,
      auth: options.auth || {},
      recover: options.recover !== undefined ? !!options.recover : DEFAULTS.recover,
      heartbeat: {
        interval: num(hb.interval, DEFAULTS.heartbeat.interval),
        timeout: num(hb.timeout, DEFAULTS.heartbeat.timeout),
      },
      backoff: {
        base: Math.max(1, num(bo.base, DEFAULTS.backoff.base)),
        max: Math.max(1, num(bo.max, DEFAULTS.backoff.max)),
      },
      authTimeout: num(options.authTimeout, DEFAULTS.authTimeout),
      requestTimeout: num(options.requestTimeout, DEFAULTS.requestTimeout),
      maxBody: num(options.maxBody, DEFAULTS.maxBody),
      storage: options.storage || null,
      storageKey: options.storageKey || DEFAULTS.storageKey,
      shouldReconnect: typeof options.shouldReconnect === 'function' ? options.shouldReconnect : null,
      watchNetwork: options.watchNetwork !== false,
      WebSocket: options.WebSocket || globalThis.WebSocket,
    };
    if (typeof this.options.WebSocket !== 'function') {
      throw new TypeError('HeraldClient: no WebSocket implementation (pass options.WebSocket)');
    }

    /** Current state (see `State`). */
    this.state = State.IDLE;
    /** Online count of the connection's room from the last heartbeat reply. */
    this.online = null;
    /** Counters, for display and diagnostics. */
    this.stats = { connects: 0, authenticated: 0, messages: 0, replayed: 0, duplicates: 0, reloads: 0 };

    this._ws = null;
    this._opening = false; // between connect() and the WebSocket's creation
    this._seq = 0;
    this._pending = new Map(); // seq → {op, resolve, reject, timer}
    this._attempt = 0; // failed attempts since the last successful auth
    this._reconnectTimer = null;
    this._heartbeatTimer = null;
    this._heartbeatDeadline = null;
    this._authTimer = null;
    this._conn = 0; // id of the current connection (stale callbacks compare it)
    this._streamsSeen = false; // op 25 seen on this connection (later op 24s are live)

    // What the session asked for since it started, applied over `auth` on every
    // (re)connect so the server-side state survives reconnects.
    this._room = undefined; // room override (undefined: the auth's room_id)
    this._added = new Set(); // ops subscribed with sub()
    this._removed = new Set(); // ops removed with unsub()
    this._authPatch = null; // credentials from a successful refresh()
    this._afterAuth = []; // resolvers settled by the next successful auth

    // Recovery: kind → {kind, stream, epoch, offset, status}.
    this._streams = new Map();
    // kind → the connection's stream of that kind (from the auth body, room
    // changes and op 25): what an op-24 kind byte refers to.
    this._names = new Map();
    this._lastAuth = null;
    this._saveQueued = false;
    this._loadStored();

    // Back online (the browser says so): retry now rather than at the end of
    // the backoff delay.
    this._onOnline = () => {
      if (this.state === State.RECONNECTING) this.reconnect();
    };
    this._watching = false;
  }

  _watchNetwork(on) {
    const g = globalThis;
    if (!this.options.watchNetwork || typeof g.addEventListener !== 'function' || on === this._watching) return;
    this._watching = on;
    if (on) g.addEventListener('online', this._onOnline);
    else g.removeEventListener('online', this._onOnline);
  }

  // ---------------------------------------------------------------- events

  /**
   * Adds a listener; returns a function that removes it.
   * @param {string} type
   * @param {(event: HeraldEvent & any) => void} fn
   */
  on(type, fn) {
    this.addEventListener(type, fn);
    return () => this.removeEventListener(type, fn);
  }

  /** Removes a listener added with on(). */
  off(type, fn) {
    this.removeEventListener(type, fn);
  }

  /** Adds a listener called once. */
  once(type, fn) {
    this.addEventListener(type, fn, { once: true });
  }

  _emit(type, detail) {
    this._dispatch(new HeraldEvent(type, detail));
  }

  _dispatch(event) {
    try {
      this.dispatchEvent(event);
    } catch (err) {
      // A throwing listener must not break the protocol loop.
      if (event.type !== 'error') this._emit('error', { error: err, where: 'listener of ' + event.type });
    }
  }

  _setState(state) {
    if (this.state === state) return;
    const from = this.state;
    this.state = state;
    this._emit('state', { state, from });
  }

  // ---------------------------------------------------------------- lifecycle

  /** Opens the connection and keeps it open (reconnecting) until close(). */
  connect() {
    if (this._ws || this._reconnectTimer !== null || this._opening) return this;
    this._watchNetwork(true);
    this._attempt = 0;
    this._open();
    return this;
  }

  /** Closes the connection and stops reconnecting. Positions are kept. */
  close(code = 1000, reason = 'client close') {
    this._clearReconnect();
    const was = this.state;
    this._conn += 1; // anything still in flight for the old connection is stale
    this._opening = false;
    const ws = this._ws;
    this._drop(ws, code, reason);
    this._watchNetwork(false);
    this._setState(State.CLOSED);
    if (ws || was === State.RECONNECTING) {
      this._emit('close', { code, reason, wasClean: true, willReconnect: false, byClient: true });
    }
    this._settleWaiting(new HeraldError('closed', 'close() was called'));
    this._saveNow();
  }

  /**
   * Drops the connection (if any) and connects again now, without a backoff
   * delay: what to do after a network change. Recovers if recovery is on.
   */
  reconnect() {
    this._clearReconnect();
    const ws = this._ws;
    this._conn += 1;
    this._opening = false;
    if (ws) {
      this._drop(ws, CLIENT_CLOSE, 'reconnect');
      this._emit('close', { code: CLIENT_CLOSE, reason: 'reconnect', wasClean: true, willReconnect: true, delay: 0, byClient: true });
    }
    this._emit('reconnecting', { attempt: 0, delay: 0, code: CLIENT_CLOSE, reason: 'reconnect' });
    this._attempt = 0;
    this._watchNetwork(true);
    this._open();
    return this;
  }

  async _open() {
    const conn = ++this._conn;
    this._opening = true;
    this._setState(State.CONNECTING);
    let url;
    let auth;
    try {
      url = typeof this.options.url === 'function' ? await this.options.url() : this.options.url;
      auth = await this._authBody();
    } catch (err) {
      if (conn !== this._conn) return;
      this._opening = false;
      this._emit('error', { error: err, where: 'preparing the connection' });
      this._scheduleReconnect({ code: 0, reason: 'auth or url callback failed' });
      return;
    }
    if (conn !== this._conn) return;
    this._opening = false;
    let ws;
    try {
      ws = new this.options.WebSocket(url);
    } catch (err) {
      this._emit('error', { error: err, where: 'new WebSocket' });
      this._scheduleReconnect({ code: 0, reason: String(err && err.message) });
      return;
    }
    ws.binaryType = 'arraybuffer';
    this._ws = ws;
    this._streamsSeen = false;
    this.stats.connects += 1;
    this._authTimer = setTimeout(() => {
      if (conn === this._conn && this.state !== State.OPEN) this._fail(CLIENT_CLOSE, 'auth timeout');
    }, this.options.authTimeout || 1e9);

    ws.onopen = () => {
      if (conn !== this._conn) return;
      this._emit('open', { url });
      this._setState(State.AUTHENTICATING);
      this._lastAuth = auth;
      const seq = this._nextSeq();
      this._pending.set(seq, { op: Op.AUTH, resolve: () => {}, reject: () => {}, timer: null });
      this._write(Op.AUTH, seq, toBytes(JSON.stringify(auth)));
    };
    ws.onmessage = (ev) => {
      if (conn !== this._conn) return;
      this._onData(ev.data);
    };
    ws.onerror = () => {
      if (conn !== this._conn) return;
      // The close event follows with the details; nothing to do here.
    };
    ws.onclose = (ev) => {
      if (conn !== this._conn) return;
      this._ws = null;
      this._afterDrop();
      const info = { code: ev.code, reason: ev.reason || '', wasClean: !!ev.wasClean, byClient: false };
      this._scheduleReconnect(info);
    };
  }

  /** The auth body of the next connect: the caller's, with the session's room and
   *  accept-filter changes, refreshed credentials and the recovery request. */
  async _authBody() {
    const base = typeof this.options.auth === 'function' ? await this.options.auth() : this.options.auth;
    const body = Object.assign({}, base || {}, this._authPatch || {});
    if (this._room !== undefined) body.room_id = this._room;
    if (this._added.size || this._removed.size) {
      const set = new Set((body.accepts || []).map(Number));
      this._added.forEach((op) => set.add(op));
      this._removed.forEach((op) => set.delete(op));
      body.accepts = Array.from(set);
    }
    if (this.options.recover) body.recover = this._recoverRequest(body);
    return body;
  }

  /** Positions of the streams this connection will have (room, mid, key). */
  _recoverRequest(body) {
    const names = new Set();
    if (body.room_id) names.add(String(body.room_id).trim());
    const mid = Number(body.mid);
    if (Number.isInteger(mid) && mid !== 0) names.add('mid:' + mid);
    if (body.key) names.add('key:' + body.key);
    const out = {};
    for (const s of this._streams.values()) {
      if (s.epoch && names.has(s.stream)) out[s.stream] = { epoch: s.epoch, offset: s.offset };
    }
    return out;
  }

  _write(op, seq, body) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(encodeFrame(op, seq, body));
    return true;
  }

  _nextSeq() {
    // seq 0 is what pushes carry: never use it for a request.
    this._seq = this._seq >= 0x7fffffff ? 1 : this._seq + 1;
    return this._seq;
  }

  /** Closes a socket we no longer want; its late events are ignored. */
  _drop(ws, code, reason) {
    this._afterDrop();
    if (!ws) return;
    if (ws === this._ws) this._ws = null;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      if (ws.readyState === 0 || ws.readyState === 1) ws.close(code, reason);
    } catch (_) {
      // Already closing.
    }
  }

  /** Fails the current connection from the client side and reconnects. */
  _fail(code, reason) {
    const ws = this._ws;
    this._conn += 1;
    this._drop(ws, code, reason);
    this._scheduleReconnect({ code, reason, wasClean: false, byClient: true });
  }

  _afterDrop() {
    clearTimeout(this._authTimer);
    this._authTimer = null;
    this._stopHeartbeat();
    const err = new HeraldError('disconnected', 'the connection closed before the reply');
    const pending = this._pending;
    this._pending = new Map();
    pending.forEach((p) => {
      clearTimeout(p.timer);
      if (!p.survives) p.reject(err);
      else this._afterAuth.push(p.survives);
    });
    this.online = null;
  }

  /** Settles requests that were waiting for the next auth. */
  _settleWaiting(err) {
    this._afterAuth.splice(0).forEach((settle) => settle(err));
  }

  /** Decides whether (and when) to connect again after a close. */
  _scheduleReconnect(info) {
    if (info.code === 1002 && this.state === State.AUTHENTICATING && this._lastAuth &&
        this._lastAuth.recover && Object.keys(this._lastAuth.recover).length) {
      // The server found the auth frame malformed and it carried positions (from
      // a storage gone bad?): start afresh rather than be refused forever.
      this._emit('error', { error: new HeraldError('recover_refused', 'the server refused the recovery request (1002); positions dropped'), where: 'auth' });
      this.resetPositions();
    }
    this._setState(State.RECONNECTING);
    let again = this._reconnectAllowed(info);
    if (this.options.shouldReconnect) {
      try {
        const verdict = this.options.shouldReconnect(Object.assign({}, info, { attempt: this._attempt + 1 }));
        if (typeof verdict === 'boolean') again = verdict;
      } catch (err) {
        this._emit('error', { error: err, where: 'shouldReconnect' });
      }
    }
    if (!again) {
      this._watchNetwork(false);
      this._setState(State.CLOSED);
      this._emit('close', Object.assign({}, info, { willReconnect: false }));
      this._settleWaiting(new HeraldError('closed', 'the client stopped reconnecting'));
      return;
    }
    this._attempt += 1;
    const delay = this._backoffDelay(this._attempt);
    this._emit('close', Object.assign({}, info, { willReconnect: true, delay }));
    this._emit('reconnecting', { attempt: this._attempt, delay, code: info.code, reason: info.reason });
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._open();
    }, delay);
  }

  /** The close codes that mean "don't come back with the same credentials". */
  _reconnectAllowed(info) {
    const dynamic = typeof this.options.auth === 'function';
    const reason = String(info.reason || '');
    if (info.code === 1008 && reason.indexOf('auth refused') === 0) {
      // Refused credentials: the same ones will be refused again. An auth
      // callback may produce new ones; the backoff keeps growing meanwhile.
      if (!dynamic) this._emit('error', { error: new HeraldError('auth_refused', 'the server refused the credentials (1008)'), where: 'auth' });
      return dynamic;
    }
    if (info.code === 4001) {
      // Credentials expired: only a callback can bring fresh ones.
      if (!dynamic) this._emit('error', { error: new HeraldError('expired', 'the credentials expired (4001)'), where: 'auth' });
      return dynamic;
    }
    // Another connection took our key: coming back would take it from them.
    if (info.code === 4000) return false;
    return true;
  }

  /** Full jitter: uniform in [0, min(max, base · 2^(attempt-1))]. */
  _backoffDelay(attempt) {
    const { base, max } = this.options.backoff;
    const cap = Math.min(max, base * Math.pow(2, Math.min(attempt - 1, 30)));
    return Math.floor(Math.random() * cap);
  }

  _clearReconnect() {
    if (this._reconnectTimer !== null) {
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
    }
  }

  // ---------------------------------------------------------------- heartbeat

  _startHeartbeat() {
    this._stopHeartbeat();
    const { interval } = this.options.heartbeat;
    this._beat();
    if (interval > 0) this._heartbeatTimer = setInterval(() => this._beat(), interval);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeatTimer);
    clearTimeout(this._heartbeatDeadline);
    this._heartbeatTimer = null;
    this._heartbeatDeadline = null;
  }

  _beat() {
    const seq = this._nextSeq();
    const conn = this._conn;
    this._pending.set(seq, { op: Op.HEARTBEAT, resolve: () => {}, reject: () => {}, timer: null });
    if (!this._write(Op.HEARTBEAT, seq, new Uint8Array(0))) return;
    // One deadline at a time: the oldest unanswered heartbeat decides.
    if (this._heartbeatDeadline === null && this.options.heartbeat.timeout > 0) {
      this._heartbeatDeadline = setTimeout(() => {
        this._heartbeatDeadline = null;
        if (conn === this._conn) this._fail(CLIENT_CLOSE, 'heartbeat timeout');
      }, this.options.heartbeat.timeout);
    }
  }

  // ---------------------------------------------------------------- input

  _onData(data) {
    let bytes;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else {
      this._emit('error', { error: new HeraldError('bad_frame', 'a text message from the server'), where: 'input' });
      return;
    }
    let frames;
    try {
      frames = decodeFrames(bytes);
    } catch (err) {
      this._emit('error', { error: err, where: 'input' });
      return;
    }
    for (const f of frames) {
      try {
        this._onFrame(f);
      } catch (err) {
        this._emit('error', { error: err, where: 'op ' + f.op });
      }
    }
  }

  _onFrame(f) {
    if (f.op === Op.RAW) {
      const inner = decodeFrames(f.body);
      const batched = inner.length > 1;
      for (const g of inner) this._onPush(g, batched);
      return;
    }
    const pending = f.seq !== 0 ? this._pending.get(f.seq) : undefined;
    if (pending) {
      this._pending.delete(f.seq);
      clearTimeout(pending.timer);
      this._onReply(f, pending);
      return;
    }
    this._onPush(f, false);
  }

  _onReply(f, pending) {
    switch (f.op) {
      case Op.AUTH_REPLY:
        this._onAuthenticated(f);
        return;
      case Op.HEARTBEAT_REPLY: {
        clearTimeout(this._heartbeatDeadline);
        this._heartbeatDeadline = null;
        this.online = int32(f.body);
        this._emit('heartbeat', { online: this.online });
        return;
      }
      default:
        pending.resolve(f);
    }
  }

  _onAuthenticated() {
    clearTimeout(this._authTimer);
    this._authTimer = null;
    this._nameStreams(this._lastAuth || {});
    this._attempt = 0;
    this.stats.authenticated += 1;
    this._setState(State.OPEN);
    this._emit('auth', { recovering: !!this.options.recover, body: this._lastAuth });
    this._startHeartbeat();
    // Requests that were waiting for a connection: the auth body carried them.
    this._settleWaiting(null);
  }

  /** The connection's streams, as its auth body names them; positions kept for
   *  other streams (a room left while away) are dropped. */
  _nameStreams(body) {
    this._names.clear();
    const room = body.room_id == null ? '' : String(body.room_id).trim();
    if (room) this._names.set('room', room);
    const mid = Number(body.mid);
    if (Number.isInteger(mid) && mid !== 0) this._names.set('mid', 'mid:' + mid);
    if (body.key) this._names.set('key', 'key:' + body.key);
    let dropped = false;
    for (const [kind, s] of this._streams) {
      if (this._names.get(kind) !== s.stream) {
        this._streams.delete(kind);
        dropped = true;
      }
    }
    if (dropped) this._queueSave();
  }

  /** The room stream after a room change: the old room's position is of no use
   *  any more, and its offsets must not be compared with the new room's. */
  _renameRoom(room) {
    if (room) this._names.set('room', room);
    else this._names.delete('room');
    const held = this._streams.get('room');
    if (held && held.stream !== room) {
      this._streams.delete('room');
      this._queueSave();
    }
  }

  /** The state of the connection's stream of `kind` (created on first sight). */
  _streamOf(kind) {
    const name = this._names.get(kind);
    let s = this._streams.get(kind);
    if (s && name !== undefined && s.stream !== name) {
      this._streams.delete(kind);
      s = undefined;
    }
    if (!s && name !== undefined) {
      // Positions count once op 25 gives the epoch.
      s = { kind, stream: name, epoch: '', offset: 0, status: 'pending' };
      this._streams.set(kind, s);
    }
    return s;
  }

  _onPush(f, batched) {
    if (f.op === Op.POSITIONED) {
      const p = decodePositioned(f.body);
      const s = this._streamOf(p.kind);
      const replayed = !this._streamsSeen;
      if (s && p.offset <= s.offset && s.epoch) {
        // Already delivered in this epoch: the server promises no repeats, so
        // this is defensive only.
        this.stats.duplicates += 1;
        return;
      }
      if (s) {
        s.offset = p.offset;
        this._queueSave();
      }
      if (replayed) this.stats.replayed += 1;
      this._deliver(p.frame, {
        kind: p.kind,
        stream: s ? s.stream : undefined,
        epoch: s ? s.epoch : undefined,
        offset: p.offset,
        replayed,
        batched,
      });
      return;
    }
    if (f.op === Op.STREAMS) {
      this._onStreams(JSON.parse(decoder.decode(f.body)));
      return;
    }
    this._deliver(f, { replayed: false, batched });
  }

  _deliver(f, meta) {
    this.stats.messages += 1;
    meta.ver = f.ver;
    meta.seq = f.seq;
    this._dispatch(new HeraldMessageEvent(f.op, f.body, meta));
  }

  _onStreams(doc) {
    const list = Array.isArray(doc && doc.streams) ? doc.streams : [];
    const initial = !this._streamsSeen;
    this._streamsSeen = true;
    const states = [];
    for (const s of list) {
      if (!s || !s.kind) continue;
      const state = {
        kind: String(s.kind),
        stream: String(s.stream || ''),
        epoch: String(s.epoch || ''),
        offset: Number(s.offset) || 0,
        status: String(s.status || ''),
      };
      states.push(state);
      if (state.stream) this._names.set(state.kind, state.stream);
      if (state.status === 'off') this._streams.delete(state.kind);
      else this._streams.set(state.kind, Object.assign({}, state));
    }
    this._queueSave();
    this._emit('streams', { streams: states, initial });
    for (const s of states) {
      if (s.status === 'reload') {
        this.stats.reloads += 1;
        this._emit('reload', s);
      }
    }
  }

  // ---------------------------------------------------------------- requests

  /** Sends a request frame and resolves with its reply frame. */
  _request(op, body, opts = {}) {
    return new Promise((resolve, reject) => {
      const bytes = toBytes(body);
      if (bytes.length > this.options.maxBody) {
        reject(new HeraldError('too_large', 'body of ' + bytes.length + ' bytes; the server takes at most ' + this.options.maxBody));
        return;
      }
      if (this.state !== State.OPEN) {
        if (opts.survives) {
          // Applied by the next auth (the auth body carries it).
          this._afterAuth.push(opts.survives);
          return;
        }
        reject(new HeraldError('not_connected', 'not connected (state ' + this.state + ')'));
        return;
      }
      const seq = this._nextSeq();
      const timeout = this.options.requestTimeout;
      const p = { op, resolve, reject, survives: opts.survives, timer: null };
      if (timeout > 0) {
        p.timer = setTimeout(() => {
          if (this._pending.get(seq) === p) {
            this._pending.delete(seq);
            reject(new HeraldError('timeout', 'no reply to op ' + op + ' within ' + timeout + ' ms'));
          }
        }, timeout);
      }
      this._pending.set(seq, p);
      this._write(op, seq, bytes);
    });
  }

  /**
   * Moves the connection to `room` (`type://id`); `''` leaves the room. The room
   * is also the one later reconnects join. Resolves with the room held; rejects
   * with code `room_refused` when the server kept the connection elsewhere.
   * @param {string} room
   * @returns {Promise<string>}
   */
  changeRoom(room) {
    const want = room == null ? '' : String(room).trim();
    this._room = want;
    return new Promise((resolve, reject) => {
      const settleLater = (err) => (err ? reject(err) : resolve(want));
      this._request(Op.CHANGE_ROOM, want, { survives: settleLater }).then((reply) => {
        const held = decoder.decode(reply.body).trim();
        this._renameRoom(held);
        if (held === want) {
          resolve(held);
          return;
        }
        this._room = held;
        reject(new HeraldError('room_refused', 'the server kept the connection in "' + held + '"', { room: held }));
      }, reject);
    });
  }

  /**
   * Adds ops to the accept filter (they also apply to later reconnects).
   * Resolves with the ops the server says it added.
   * @param {number|number[]} ops
   * @returns {Promise<number[]>}
   */
  sub(ops) {
    const list = opsList(opsText(ops));
    list.forEach((op) => { this._added.add(op); this._removed.delete(op); });
    return new Promise((resolve, reject) => {
      this._request(Op.SUB, list.join(','), { survives: (err) => (err ? reject(err) : resolve(list)) })
        .then((reply) => resolve(opsList(decoder.decode(reply.body))), reject);
    });
  }

  /**
   * Removes ops from the accept filter (also for later reconnects).
   * @param {number|number[]} ops
   * @returns {Promise<number[]>}
   */
  unsub(ops) {
    const list = opsList(opsText(ops));
    list.forEach((op) => { this._removed.add(op); this._added.delete(op); });
    return new Promise((resolve, reject) => {
      this._request(Op.UNSUB, list.join(','), { survives: (err) => (err ? reject(err) : resolve(list)) })
        .then((reply) => resolve(opsList(decoder.decode(reply.body))), reject);
    });
  }

  /**
   * Sends an upstream message with a business op (1000 and up by convention, or
   * op 4). Resolves when the server's echo (same op and seq) arrives.
   * @param {number} op
   * @param {string|Uint8Array|ArrayBuffer|object} body objects are sent as JSON
   * @returns {Promise<void>}
   */
  send(op, body) {
    if (!Number.isInteger(op)) return Promise.reject(new TypeError('send: op must be an integer'));
    if (RESERVED_OPS.has(op)) {
      return Promise.reject(new TypeError('send: op ' + op + ' has its own method (heartbeat, auth, changeRoom, sub, unsub, refresh)'));
    }
    return this._request(op, body).then(() => undefined);
  }

  /**
   * Sends a request frame and resolves with the server's reply, whatever its op
   * (the frame that carries the request's seq): e.g. a chat connection's op 4
   * answered with op 5, op 18 with op 19. Rejects like send() when no reply
   * comes in time or the connection drops first.
   * @param {number} op
   * @param {string|Uint8Array|ArrayBuffer|object} body objects are sent as JSON
   * @returns {Promise<{op:number, seq:number, ver:number, body:Uint8Array, text:string, json:function():any}>}
   */
  request(op, body) {
    if (!Number.isInteger(op)) return Promise.reject(new TypeError('request: op must be an integer'));
    if (RESERVED_OPS.has(op)) {
      return Promise.reject(new TypeError('request: op ' + op + ' has its own method (heartbeat, auth, changeRoom, sub, unsub, refresh)'));
    }
    return this._request(op, body).then((f) => {
      const text = decoder.decode(f.body);
      return {
        op: f.op,
        seq: f.seq,
        ver: f.ver,
        body: f.body,
        text,
        json: () => JSON.parse(text),
      };
    });
  }

  /**
   * Sends fresh credentials (op 22), e.g. `{token: '…'}`. Resolves with the
   * reply `{code: 0, expires_at}`; rejects with a HeraldError whose `code` is
   * the reply's (`-401`, `-403`, `-429`, `-503`). Accepted credentials are also
   * used by later reconnects.
   * @param {object|string} body
   * @returns {Promise<{code:number, expires_at:number}>}
   */
  refresh(body) {
    return this._request(Op.REFRESH, body).then((reply) => {
      let r;
      try {
        r = JSON.parse(decoder.decode(reply.body));
      } catch (_) {
        throw new HeraldError('bad_reply', 'op 23 is not JSON');
      }
      if (r.code !== 0) throw new HeraldError(r.code, r.message || 'refresh refused', { reply: r });
      if (body && typeof body === 'object' && !(body instanceof Uint8Array)) this._authPatch = Object.assign({}, this._authPatch, body);
      return r;
    });
  }

  // ---------------------------------------------------------------- positions

  /**
   * Where each stream stands: `{name: {kind, epoch, offset, status}}`.
   * @returns {Record<string, {kind:string, epoch:string, offset:number, status:string}>}
   */
  positions() {
    const out = {};
    for (const s of this._streams.values()) {
      out[s.stream] = { kind: s.kind, epoch: s.epoch, offset: s.offset, status: s.status };
    }
    return out;
  }

  /** Forgets every position (the next connect starts fresh) and the stored copy. */
  resetPositions() {
    this._streams.clear();
    this._saveNow();
  }

  _loadStored() {
    const st = this.options.storage;
    if (!st || !this.options.recover) return;
    try {
      const raw = st.getItem(this.options.storageKey);
      if (!raw) return;
      const doc = JSON.parse(raw);
      const list = Array.isArray(doc && doc.streams) ? doc.streams : [];
      for (const s of list) {
        if (s && KINDS.has(s.kind) && typeof s.stream === 'string' && typeof s.epoch === 'string' &&
            s.stream.length <= 256 && s.epoch.length <= 256 && Number.isSafeInteger(s.offset) && s.offset >= 0) {
          this._streams.set(s.kind, { kind: s.kind, stream: String(s.stream), epoch: s.epoch, offset: s.offset, status: 'stored' });
        }
      }
    } catch (err) {
      this._emit('error', { error: err, where: 'reading stored positions' });
    }
  }

  _queueSave() {
    if (!this.options.storage || this._saveQueued) return;
    this._saveQueued = true;
    // One write per burst (an op-9 batch is many positions, one message).
    queueMicrotask(() => this._saveNow());
  }

  _saveNow() {
    this._saveQueued = false;
    const st = this.options.storage;
    if (!st || !this.options.recover) return;
    try {
      const streams = Array.from(this._streams.values()).map((s) => ({ kind: s.kind, stream: s.stream, epoch: s.epoch, offset: s.offset }));
      if (streams.length) st.setItem(this.options.storageKey, JSON.stringify({ v: 1, streams }));
      else st.removeItem(this.options.storageKey);
    } catch (err) {
      this._emit('error', { error: err, where: 'storing positions' });
    }
  }
}

export default HeraldClient;
