/*
 * goim.js — a small goim-compatible WebSocket client.
 *
 * Frame layout (big-endian): packLen int32 | headerLen int16 (16) |
 * ver int16 (1) | op int32 | seq int32 | body.
 *
 * Usage:
 *   const c = new GoimClient({ url, mid, key, roomId, accepts, onMessage });
 *   c.connect();
 */
(function (global) {
  'use strict';

  const HEADER_LEN = 16;
  const VERSION = 1;

  const Op = Object.freeze({
    HEARTBEAT: 2,
    HEARTBEAT_REPLY: 3,
    AUTH: 7,
    AUTH_REPLY: 8,
    RAW: 9,
    CHANGE_ROOM: 12,
    CHANGE_ROOM_REPLY: 13,
    SUB: 14,
    SUB_REPLY: 15,
    UNSUB: 16,
    UNSUB_REPLY: 17,
  });

  const REPLY_OPS = new Set([Op.CHANGE_ROOM_REPLY, Op.SUB_REPLY, Op.UNSUB_REPLY]);

  const BACKOFF_START_MS = 1000;
  const BACKOFF_CAP_MS = 30000;

  const encoder = new TextEncoder();
  const decoder = new TextDecoder('utf-8');

  function noop() {}

  function opsToText(ops) {
    if (Array.isArray(ops)) return ops.map((o) => String(o).trim()).filter(Boolean).join(',');
    return String(ops == null ? '' : ops);
  }

  class GoimClient {
    constructor(options = {}) {
      this.url = options.url;
      this.mid = Number(options.mid) || 0;
      this.key = options.key || '';
      this.roomId = options.roomId || '';
      this.platform = options.platform || 'web';
      this.accepts = Array.isArray(options.accepts) ? options.accepts.map(Number) : [];
      this.heartbeatSec = Number(options.heartbeatSec) > 0 ? Number(options.heartbeatSec) : 30;

      this.onOpen = options.onOpen || noop;
      this.onAuth = options.onAuth || noop;
      this.onMessage = options.onMessage || noop;
      this.onHeartbeat = options.onHeartbeat || noop;
      this.onReply = options.onReply || noop;
      this.onClose = options.onClose || noop;
      this.log = options.log || noop;

      this.ws = null;
      this.seq = 0;
      this.authenticated = false;
      this._closedByUser = false;
      this._heartbeatTimer = null;
      this._reconnectTimer = null;
      this._backoffMs = BACKOFF_START_MS;
    }

    static get Op() {
      return Op;
    }

    /** Whether the socket is open and authenticated. */
    get connected() {
      return !!this.ws && this.ws.readyState === WebSocket.OPEN && this.authenticated;
    }

    /** True after close() was called (no reconnect will happen). */
    get stopped() {
      return this._closedByUser;
    }

    /** Open the connection (and keep it open, reconnecting, until close()). */
    connect() {
      this._closedByUser = false;
      this._clearReconnect();
      if (this.ws && (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)) {
        return;
      }
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (err) {
        this.log('connect failed: ' + err.message);
        this._scheduleReconnect();
        return;
      }
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      this.authenticated = false;

      ws.onopen = () => {
        if (ws !== this.ws) return;
        this.log('socket open, sending auth');
        this.onOpen();
        const auth = {
          mid: this.mid,
          key: this.key,
          room_id: this.roomId,
          platform: this.platform,
          accepts: this.accepts,
        };
        this.send(Op.AUTH, JSON.stringify(auth));
      };

      ws.onmessage = (event) => {
        if (ws !== this.ws) return;
        if (Object.prototype.toString.call(event.data) !== '[object ArrayBuffer]') {
          this.log('ignoring non-binary message');
          return;
        }
        try {
          this._handleFrame(event.data);
        } catch (err) {
          this.log('bad frame: ' + err.message);
        }
      };

      ws.onerror = () => {
        if (ws !== this.ws) return;
        this.log('socket error');
      };

      ws.onclose = (event) => {
        if (ws !== this.ws) return;
        this._stopHeartbeat();
        this.ws = null;
        this.authenticated = false;
        this.onClose(event);
        if (!this._closedByUser) this._scheduleReconnect();
      };
    }

    /** Close the connection and stop reconnecting. */
    close() {
      this._closedByUser = true;
      this._clearReconnect();
      this._stopHeartbeat();
      const ws = this.ws;
      if (ws) {
        if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
          ws.close(1000, 'client close');
        } else {
          this.ws = null;
        }
      }
    }

    /** Move to another room (e.g. "live://1001"); empty string leaves the room. */
    changeRoom(room) {
      const r = room == null ? '' : String(room);
      this.roomId = r;
      return this.send(Op.CHANGE_ROOM, r);
    }

    /** Subscribe to extra operations. */
    sub(ops) {
      return this.send(Op.SUB, opsToText(ops));
    }

    /** Unsubscribe from operations. */
    unsub(ops) {
      return this.send(Op.UNSUB, opsToText(ops));
    }

    /** Send one frame with the given op and UTF-8 text body. Returns false if not open. */
    send(op, text) {
      const ws = this.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        this.log('cannot send op ' + op + ': socket not open');
        return false;
      }
      const body = encoder.encode(text == null ? '' : String(text));
      const buf = new ArrayBuffer(HEADER_LEN + body.length);
      const view = new DataView(buf);
      this.seq = (this.seq + 1) | 0;
      view.setInt32(0, HEADER_LEN + body.length);
      view.setInt16(4, HEADER_LEN);
      view.setInt16(6, VERSION);
      view.setInt32(8, op);
      view.setInt32(12, this.seq);
      new Uint8Array(buf, HEADER_LEN).set(body);
      ws.send(buf);
      return true;
    }

    _handleFrame(buf) {
      if (buf.byteLength < HEADER_LEN) throw new Error('short frame (' + buf.byteLength + ' bytes)');
      const view = new DataView(buf);
      const packLen = view.getInt32(0);
      const headerLen = view.getInt16(4);
      const ver = view.getInt16(6);
      const op = view.getInt32(8);
      const seq = view.getInt32(12);
      const end = Math.min(Math.max(packLen, headerLen), buf.byteLength);

      switch (op) {
        case Op.AUTH_REPLY:
          this.authenticated = true;
          this._backoffMs = BACKOFF_START_MS;
          this.log('authenticated');
          this.onAuth(decoder.decode(new Uint8Array(buf, headerLen, end - headerLen)));
          this._startHeartbeat();
          break;
        case Op.HEARTBEAT_REPLY: {
          const online = end - headerLen >= 4 ? view.getInt32(headerLen) : 0;
          this.onHeartbeat(online);
          break;
        }
        case Op.RAW:
          this._handleBatch(buf, view, headerLen, end);
          break;
        default: {
          const text = decoder.decode(new Uint8Array(buf, headerLen, end - headerLen));
          if (REPLY_OPS.has(op)) {
            this.onReply(op, text);
          } else {
            this.onMessage(op, text, { ver, seq, batched: false });
          }
        }
      }
    }

    _handleBatch(buf, view, start, end) {
      let offset = start;
      let count = 0;
      while (offset + HEADER_LEN <= end) {
        const packLen = view.getInt32(offset);
        const headerLen = view.getInt16(offset + 4);
        const ver = view.getInt16(offset + 6);
        const op = view.getInt32(offset + 8);
        const seq = view.getInt32(offset + 12);
        if (packLen < HEADER_LEN || headerLen < HEADER_LEN || headerLen > packLen || offset + packLen > end) {
          this.log('malformed inner frame at offset ' + offset);
          break;
        }
        const text = decoder.decode(new Uint8Array(buf, offset + headerLen, packLen - headerLen));
        this.onMessage(op, text, { ver, seq, batched: true, index: count });
        count += 1;
        offset += packLen;
      }
    }

    _startHeartbeat() {
      this._stopHeartbeat();
      this.send(Op.HEARTBEAT, '');
      this._heartbeatTimer = setInterval(() => this.send(Op.HEARTBEAT, ''), this.heartbeatSec * 1000);
    }

    _stopHeartbeat() {
      if (this._heartbeatTimer !== null) {
        clearInterval(this._heartbeatTimer);
        this._heartbeatTimer = null;
      }
    }

    _scheduleReconnect() {
      this._clearReconnect();
      const base = this._backoffMs;
      // Full jitter on the upper half: wait between base/2 and base.
      const delay = Math.round(base / 2 + Math.random() * (base / 2));
      this._backoffMs = Math.min(base * 2, BACKOFF_CAP_MS);
      this.log('reconnecting in ' + (delay / 1000).toFixed(1) + ' s');
      this._reconnectTimer = setTimeout(() => {
        this._reconnectTimer = null;
        if (!this._closedByUser) this.connect();
      }, delay);
    }

    _clearReconnect() {
      if (this._reconnectTimer !== null) {
        clearTimeout(this._reconnectTimer);
        this._reconnectTimer = null;
      }
    }
  }

  global.GoimClient = GoimClient;
})(typeof window !== 'undefined' ? window : globalThis);
