/* herald push demo — page logic. Depends on goim.js (window.GoimClient). */
(function () {
  'use strict';

  const MAX_LOG_LINES = 500;
  const ONLINE_REFRESH_MS = 3000;
  const REPLY_NAMES = { 13: 'change room', 15: 'sub', 17: 'unsub' };

  const $ = (id) => document.getElementById(id);
  const host = window.location.hostname || '127.0.0.1';
  const origin = window.location.origin && window.location.origin !== 'null'
    ? window.location.origin
    : 'http://127.0.0.1:3111';

  let client = null;

  // ---------------------------------------------------------------- API key

  const KEY_STORE = 'herald.apiKey';
  let keyRequired = false;
  // After a 401 the page stops polling until a new key is entered, rather than
  // sending the refused key every few seconds.
  let keyRefused = false;

  function apiKey() {
    try { return window.sessionStorage.getItem(KEY_STORE) || ''; } catch (_) { return ''; }
  }

  function storeApiKey(key) {
    try {
      if (key) window.sessionStorage.setItem(KEY_STORE, key);
      else window.sessionStorage.removeItem(KEY_STORE);
    } catch (_) { /* storage disabled: the key lives until the page reloads */ }
  }

  /** Request headers with the key, when the server wants one and we have it. */
  function withKey(headers) {
    const h = Object.assign({}, headers || {});
    const key = apiKey();
    if (keyRequired && key) h.Authorization = 'Bearer ' + key;
    return h;
  }

  function showKeyState(state, message) {
    const badge = $('key-status');
    badge.textContent = state;
    badge.className = 'badge ' + ({ accepted: 'badge-on', set: 'badge-on', refused: 'badge-off' }[state] || 'badge-wait');
    const err = $('key-error');
    err.hidden = !message;
    err.textContent = message || '';
  }

  /** Tells the user why the API refused a request (401: no or unknown key; 403: scope). */
  function noteRefusal(status, json, path) {
    const why = (json && json.message) || ('HTTP ' + status);
    if (status === 401) {
      keyRefused = true;
      showKeyState('refused', 'HTTP 401 on ' + path + ': ' + why + '. Enter a valid API key above.');
    } else if (status === 403) {
      showKeyState('set', 'HTTP 403 on ' + path + ': ' + why + '. Use a key with that scope (or admin).');
    }
  }

  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('k-key').value.trim();
    storeApiKey(key);
    keyRefused = false;
    $('k-key').value = '';
    showKeyState(key ? 'set' : 'needed', key ? '' : 'No key entered.');
    renderCurl();
    refreshOnline();
  });
  $('btn-forget').addEventListener('click', () => {
    storeApiKey('');
    keyRefused = false;
    showKeyState('needed', '');
    refreshOnline();
  });

  /** fetch() with the key; 401 and 403 are reported on the key card too. */
  async function apiFetch(path, opts) {
    const res = await fetch(path, Object.assign({}, opts, { headers: withKey(opts && opts.headers) }));
    const json = await readJson(res);
    if (res.status === 401 || res.status === 403) noteRefusal(res.status, json, path);
    else if (res.ok && keyRequired && apiKey()) showKeyState('accepted', '');
    return { res, json };
  }

  // ---------------------------------------------------------------- log

  const logEl = $('log');

  function timestamp() {
    const d = new Date();
    const pad = (n, w = 2) => String(n).padStart(w, '0');
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + pad(d.getMilliseconds(), 3);
  }

  function span(cls, text) {
    const s = document.createElement('span');
    s.className = cls;
    s.textContent = text;
    return s;
  }

  /** kind: push | reply | hb | http | info | error */
  function log(kind, label, text) {
    const atBottom = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 40;
    const li = document.createElement('li');
    li.className = 'line line-' + kind;
    li.appendChild(span('time', timestamp()));
    li.appendChild(span('tag t-' + kind, kind === 'hb' ? 'heartbeat' : kind));
    li.appendChild(span('label', label));
    li.appendChild(span('body', text == null ? '' : String(text)));
    logEl.appendChild(li);
    while (logEl.childElementCount > MAX_LOG_LINES) logEl.removeChild(logEl.firstElementChild);
    if (atBottom) logEl.scrollTop = logEl.scrollHeight;
  }

  $('btn-clear').addEventListener('click', () => { logEl.textContent = ''; });
  $('log-hb').addEventListener('change', (e) => {
    logEl.classList.toggle('hide-hb', !e.target.checked);
    logEl.scrollTop = logEl.scrollHeight;
  });

  // ---------------------------------------------------------------- connection

  const statusEl = $('status');
  const btnConnect = $('btn-connect');
  const btnDisconnect = $('btn-disconnect');
  const liveControls = $('live-controls');

  function setStatus(state) {
    statusEl.textContent = state;
    statusEl.className = 'badge ' + ({
      disconnected: 'badge-off',
      connecting: 'badge-wait',
      authenticated: 'badge-on',
    }[state] || 'badge-off');
    liveControls.disabled = state !== 'authenticated';
  }

  function parseOps(text) {
    return String(text).split(',').map((s) => s.trim()).filter(Boolean).map(Number).filter((n) => Number.isInteger(n));
  }

  /** The WebSocket URL from the server's /_/config.json (wss on an https page when offered). */
  function wsUrl(cfg) {
    let h = cfg.ws_host || host;
    if (h.indexOf(':') >= 0 && h[0] !== '[') h = '[' + h + ']';
    const path = cfg.ws_path || '/sub';
    const secure = window.location.protocol === 'https:';
    if (cfg.wss_port && (secure || !cfg.ws_port)) return 'wss://' + h + ':' + cfg.wss_port + path;
    if (cfg.ws_port) return 'ws://' + h + ':' + cfg.ws_port + path;
    return '';
  }

  $('connect-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (client) {
      const old = client;
      client = null;
      old.close();
    }
    const roomId = $('c-room').value.trim();
    const current = new window.GoimClient({
      url: $('c-url').value.trim(),
      mid: Number($('c-mid').value) || 0,
      key: $('c-key').value.trim(),
      roomId,
      platform: $('c-platform').value.trim() || 'web',
      accepts: parseOps($('c-accepts').value),
      onOpen: () => setStatus('connecting'),
      onAuth: (body) => {
        setStatus('authenticated');
        log('info', 'op 8', 'authenticated' + (body ? ': ' + body : ' (room ' + (current.roomId || 'none') + ')'));
      },
      onMessage: (op, body, meta) => log('push', 'op ' + op + (meta.batched ? ' [batch]' : ''), body),
      onHeartbeat: (online) => {
        $('o-hb').textContent = String(online);
        log('hb', 'op 3', 'room online: ' + online);
      },
      onReply: (op, body) => log('reply', 'op ' + op, (REPLY_NAMES[op] || 'reply') + ': ' + (body || '(empty)')),
      onClose: (ev) => {
        const c = ev && ev.code ? ' (code ' + ev.code + (ev.reason ? ', ' + ev.reason : '') + ')' : '';
        log(ev && ev.wasClean ? 'info' : 'error', 'close', 'socket closed' + c);
        if (current !== client) return; // a stale client; the page already moved on
        setStatus(current.stopped ? 'disconnected' : 'connecting');
        $('o-hb').textContent = '–';
      },
      log: (text) => log('info', 'client', text),
    });
    client = current;
    btnConnect.disabled = true;
    btnDisconnect.disabled = false;
    setStatus('connecting');
    log('info', 'connect', current.url);
    current.connect();
  });

  btnDisconnect.addEventListener('click', () => {
    if (client) client.close();
    client = null;
    btnConnect.disabled = false;
    btnDisconnect.disabled = true;
    setStatus('disconnected');
    $('o-hb').textContent = '–';
  });

  $('btn-room').addEventListener('click', () => {
    if (!client) return;
    const room = $('s-room').value.trim();
    if (client.changeRoom(room)) log('info', 'op 12', room ? 'change room → ' + room : 'leave room');
  });
  $('btn-sub').addEventListener('click', () => {
    const ops = parseOps($('s-ops').value);
    if (client && ops.length && client.sub(ops)) log('info', 'op 14', 'sub ' + ops.join(','));
  });
  $('btn-unsub').addEventListener('click', () => {
    const ops = parseOps($('s-ops').value);
    if (client && ops.length && client.unsub(ops)) log('info', 'op 16', 'unsub ' + ops.join(','));
  });

  // ---------------------------------------------------------------- push

  const kindEl = $('p-kind');

  function splitList(text) {
    return String(text).split(',').map((s) => s.trim()).filter(Boolean);
  }

  /** Build the push path + query for the current form state (example: fill blanks for curl). */
  function pushPath(kind, example) {
    const q = new URLSearchParams();
    q.append('operation', $('p-op').value.trim() || '1000');
    const list = (id, fallback) => {
      const items = splitList($(id).value);
      return items.length || !example ? items : [fallback];
    };
    if (kind === 'keys') list('p-keys', 'KEY').forEach((k) => q.append('keys', k));
    if (kind === 'mids') list('p-mids', '123').forEach((m) => q.append('mids', m));
    if (kind === 'room') {
      q.append('type', $('p-type').value.trim() || 'live');
      q.append('room', $('p-room').value.trim());
    }
    if (kind === 'all' && $('p-speed').value.trim()) q.append('speed', $('p-speed').value.trim());
    return '/goim/push/' + kind + '?' + q.toString();
  }

  function updatePushForm() {
    const kind = kindEl.value;
    document.querySelectorAll('.kind-field').forEach((el) => { el.hidden = el.dataset.kind !== kind; });
    $('push-url').textContent = 'POST ' + pushPath(kind);
    $('o-room-label').textContent = 'room ' + ($('p-type').value.trim() || 'live') + '://' + $('p-room').value.trim();
    renderCurl();
  }

  async function readJson(res) {
    const text = await res.text();
    try { return JSON.parse(text); } catch (_) { return { code: res.ok ? 0 : -1, message: text.slice(0, 200) }; }
  }

  $('push-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const path = pushPath(kindEl.value);
    try {
      const { res, json } = await apiFetch(path, {
        method: 'POST',
        headers: { 'Content-Type': 'text/plain' },
        body: $('p-msg').value,
      });
      const ok = res.ok && json && json.code === 0;
      const detail = 'HTTP ' + res.status + ', code ' + (json && json.code) +
        (json && json.message ? ', ' + json.message : '') +
        (json && json.data !== undefined && json.data !== null ? ', data ' + JSON.stringify(json.data) : '');
      log(ok ? 'http' : 'error', 'POST', path + ' → ' + detail);
    } catch (err) {
      log('error', 'POST', path + ' → request failed: ' + err.message);
    }
  });

  ['p-kind', 'p-op', 'p-keys', 'p-mids', 'p-type', 'p-room', 'p-speed', 'p-msg'].forEach((id) => {
    $(id).addEventListener('input', updatePushForm);
  });
  kindEl.addEventListener('change', updatePushForm);

  // ---------------------------------------------------------------- curl examples

  function shellQuote(s) {
    return "'" + String(s).replace(/'/g, "'\\''") + "'";
  }

  function renderCurl() {
    const msg = shellQuote($('p-msg').value || '{"test":1}');
    // The key itself is never printed; the examples read it from the shell.
    const auth = keyRequired ? '-H "Authorization: Bearer $HERALD_API_KEY" ' : '';
    const lines = ['keys', 'mids', 'room', 'all'].map((kind) =>
      '# push to ' + kind + '\n' +
      'curl -X POST ' + auth + '-H ' + shellQuote('Content-Type: text/plain') + ' \\\n  ' +
      shellQuote(origin + pushPath(kind, true)) + ' \\\n  -d ' + msg);
    lines.push('# online counts\ncurl ' + auth + shellQuote(origin + '/goim/online/total'));
    if (keyRequired) lines.unshift('# this server wants an API key: export HERALD_API_KEY=hk_...');
    $('curl').textContent = lines.join('\n\n');
  }

  // ---------------------------------------------------------------- online

  let onlineBusy = false;

  async function getJson(path) {
    const { res, json } = await apiFetch(path, { cache: 'no-store' });
    if (!res.ok || !json || json.code !== 0) {
      throw new Error(path + ': HTTP ' + res.status + (json && json.message ? ' ' + json.message : ''));
    }
    return json.data;
  }

  function renderNodes(list) {
    const ul = $('o-nodes');
    ul.textContent = '';
    if (!Array.isArray(list) || list.length === 0) {
      ul.appendChild(Object.assign(document.createElement('li'), { className: 'muted', textContent: 'none registered' }));
      return;
    }
    list.forEach((inst) => {
      const li = document.createElement('li');
      const meta = (inst && inst.metadata) || {};
      li.appendChild(span('mono', (inst && (inst.hostname || inst.addr)) || '?'));
      li.appendChild(span('muted', meta.conn_count !== undefined ? meta.conn_count + ' conns' : ''));
      ul.appendChild(li);
    });
  }

  async function refreshOnline() {
    if (onlineBusy) return;
    if (keyRequired && (!apiKey() || keyRefused)) {
      const errEl = $('o-error');
      errEl.hidden = false;
      errEl.textContent = keyRefused
        ? 'The API key was refused; enter another to see online counts.'
        : 'Enter an API key (read scope) to see online counts.';
      return;
    }
    onlineBusy = true;
    const type = $('p-type').value.trim() || 'live';
    const room = $('p-room').value.trim();
    const roomPath = '/goim/online/room?' + new URLSearchParams({ type, rooms: room }).toString();
    try {
      const [total, rooms, nodes] = await Promise.allSettled([
        getJson('/goim/online/total'),
        room ? getJson(roomPath) : Promise.resolve({}),
        getJson('/goim/nodes/instances'),
      ]);
      const errors = [];
      if (total.status === 'fulfilled') {
        const t = total.value || {};
        $('o-conns').textContent = String(t.conn_count ?? 0);
        $('o-ips').textContent = String(t.ip_count ?? 0);
      } else errors.push(total.reason.message);
      if (rooms.status === 'fulfilled') {
        const r = rooms.value || {};
        $('o-room').textContent = String(r[room] ?? r[type + '://' + room] ?? 0);
      } else errors.push(rooms.reason.message);
      if (nodes.status === 'fulfilled') renderNodes(nodes.value);
      else errors.push(nodes.reason.message);
      const errEl = $('o-error');
      errEl.hidden = errors.length === 0;
      errEl.textContent = errors.join('; ');
      $('o-updated').textContent = 'updated ' + timestamp();
    } finally {
      onlineBusy = false;
    }
  }

  $('btn-refresh').addEventListener('click', refreshOnline);

  // ---------------------------------------------------------------- init

  /** Reads /_/config.json: where clients connect and whether the API wants a key.
   *  The server is the only one that knows its WebSocket port: without its answer
   *  the page guesses no address and asks for one. */
  async function loadConfig() {
    let cfg = { ws_port: null, wss_port: null, ws_path: '/sub', key_required: false };
    try {
      const res = await fetch('/_/config.json', { cache: 'no-store' });
      if (res.ok) cfg = await res.json();
      else log('error', 'config', '/_/config.json: HTTP ' + res.status);
    } catch (err) {
      log('error', 'config', '/_/config.json: ' + err.message);
    }
    keyRequired = !!cfg.key_required;
    $('key-card').hidden = !keyRequired;
    if (keyRequired) showKeyState(apiKey() ? 'set' : 'needed', '');
    const url = wsUrl(cfg);
    $('c-url').value = url;
    if (!url) log('error', 'config', 'no WebSocket port from the server; enter a URL');
  }

  setStatus('disconnected');
  loadConfig().then(() => {
    updatePushForm();
    refreshOnline();
    setInterval(refreshOnline, ONLINE_REFRESH_MS);
    log('info', 'ready', 'page served from ' + origin + (keyRequired ? ' (API key required)' : ''));
  });
})();
