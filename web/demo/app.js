/* herald push demo — page logic, on the client SDK (sdk/herald.js). */
import { HeraldClient, endpointUrl } from './sdk/herald.js';
import { apiKey, storeApiKey } from './apikey.js';

{

  const MAX_LOG_LINES = 500;
  const ONLINE_REFRESH_MS = 3000;

  const $ = (id) => document.getElementById(id);
  const origin = window.location.origin && window.location.origin !== 'null'
    ? window.location.origin
    : 'http://127.0.0.1:3111';

  let client = null;

  // ---------------------------------------------------------------- API key

  let keyRequired = false;
  // After a 401 the page stops polling until a new key is entered, rather than
  // sending the refused key every few seconds.
  let keyRefused = false;

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

  const btnReconnect = $('btn-reconnect');

  /** The SDK's states, as the badge shows them. */
  function setStatus(state) {
    const text = { idle: 'disconnected', closed: 'disconnected', open: 'authenticated' }[state] || state;
    statusEl.textContent = text;
    statusEl.className = 'badge ' + ({
      disconnected: 'badge-off',
      authenticated: 'badge-on',
    }[text] || 'badge-wait');
    liveControls.disabled = state !== 'open';
  }

  function parseOps(text) {
    return String(text).split(',').map((s) => s.trim()).filter(Boolean).map(Number).filter((n) => Number.isInteger(n));
  }

  // ------------------------------------------------------------ streams card

  const streamsEl = $('streams');
  const recoveryEl = $('recovery');

  function td(text, cls) {
    const c = document.createElement('td');
    c.textContent = text;
    c.title = text;
    if (cls) c.className = cls;
    return c;
  }

  /** Redraws the positions table and the counters from the client. */
  function renderStreams(c) {
    streamsEl.textContent = '';
    const pos = c ? c.positions() : {};
    const names = Object.keys(pos);
    if (names.length === 0) {
      const tr = document.createElement('tr');
      const cell = td(c ? 'no stream keeps a position' : 'not connected', 'muted');
      cell.colSpan = 5;
      tr.appendChild(cell);
      streamsEl.appendChild(tr);
    }
    names.forEach((name) => {
      const p = pos[name];
      const tr = document.createElement('tr');
      tr.dataset.stream = name;
      tr.appendChild(td(p.kind));
      tr.appendChild(td(name));
      tr.appendChild(td(p.epoch || '–'));
      tr.appendChild(td(String(p.offset)));
      tr.appendChild(td(p.status, 'st-' + p.status));
      streamsEl.appendChild(tr);
    });
    const st = c ? c.stats : { messages: 0, replayed: 0, connects: 0, reloads: 0 };
    $('st-messages').textContent = String(st.messages);
    $('st-replayed').textContent = String(st.replayed);
    $('st-connects').textContent = String(Math.max(0, st.connects - 1));
    $('st-reloads').textContent = String(st.reloads);
  }

  function setRecovery(text, kind) {
    recoveryEl.textContent = text;
    recoveryEl.className = 'badge ' + (kind || 'badge-off');
  }

  // ------------------------------------------------------------ the client

  /** Positions survive a reload of this tab (sessionStorage), when allowed. */
  function tabStorage() {
    try { return window.sessionStorage; } catch (_) { return null; }
  }

  function describeClose(e) {
    let t = 'code ' + e.code + (e.reason ? ' "' + e.reason + '"' : '');
    if (e.byClient) t += ', by this page';
    return t + (e.willReconnect ? '; reconnecting' : '; stopped');
  }

  $('connect-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (client) {
      const old = client;
      client = null;
      old.close();
    }
    const url = $('c-url').value.trim();
    const recover = $('c-recover').checked;
    const auth = {
      mid: Number($('c-mid').value) || 0,
      key: $('c-key').value.trim(),
      room_id: $('c-room').value.trim(),
      platform: $('c-platform').value.trim() || 'web',
      accepts: parseOps($('c-accepts').value),
    };
    let current;
    try {
      current = new HeraldClient({
        url,
        auth,
        recover,
        storage: recover ? tabStorage() : null,
        storageKey: 'herald.demo.positions',
      });
    } catch (err) {
      log('error', 'connect', err.message);
      return;
    }
    const live = (fn) => (ev) => { if (current === client) fn(ev); };
    current.on('state', live((ev) => setStatus(ev.state)));
    current.on('open', live(() => log('info', 'open', 'socket open, sending auth (op 7)')));
    current.on('auth', live((ev) => {
      const room = ev.body.room_id || 'none';
      const rec = ev.body.recover ? ', recover from ' + JSON.stringify(ev.body.recover) : '';
      log('info', 'op 8', 'authenticated (room ' + room + rec + ')');
      if (!recover) setRecovery('off', 'badge-off');
      renderStreams(current);
    }));
    current.on('message', live((m) => {
      let label = 'op ' + m.op;
      if (m.offset !== undefined) label += ' ' + m.kind + ' #' + m.offset;
      if (m.replayed) label += ' [replayed]';
      else if (m.batched) label += ' [batch]';
      log('push', label, m.text);
      renderStreams(current);
    }));
    current.on('heartbeat', live((ev) => {
      $('o-hb').textContent = String(ev.online);
      log('hb', 'op 3', 'room online: ' + ev.online);
    }));
    current.on('streams', live((ev) => {
      const text = ev.streams.map((s) => s.stream + ' ' + s.status + (s.epoch ? ' @' + s.offset : '')).join(', ');
      log('info', 'op 25', text || 'no streams');
      const statuses = ev.streams.map((s) => s.status);
      if (statuses.includes('reload')) setRecovery('reload', 'badge-off');
      else if (statuses.includes('recovered')) setRecovery('recovered', 'badge-on');
      else if (statuses.includes('fresh')) setRecovery('fresh', 'badge-wait');
      else if (statuses.length) setRecovery('off', 'badge-off');
      renderStreams(current);
    }));
    current.on('reload', live((ev) => log('error', 'reload', ev.stream + ': pushes were lost (epoch ' + ev.epoch + '); an app would refetch its state')));
    current.on('close', live((ev) => {
      log(ev.byClient || ev.wasClean ? 'info' : 'error', 'close', describeClose(ev));
      $('o-hb').textContent = '–';
    }));
    current.on('reconnecting', live((ev) => log('info', 'retry', ev.attempt ? 'attempt ' + ev.attempt + ' in ' + (ev.delay / 1000).toFixed(2) + ' s' : 'reconnecting now')));
    current.on('error', live((ev) => log('error', 'client', (ev.where ? ev.where + ': ' : '') + (ev.error && ev.error.message))));
    client = current;
    btnConnect.disabled = true;
    btnReconnect.disabled = false;
    btnDisconnect.disabled = false;
    setRecovery(recover ? 'asked' : 'off', recover ? 'badge-wait' : 'badge-off');
    log('info', 'connect', url);
    renderStreams(current);
    current.connect();
  });

  btnReconnect.addEventListener('click', () => {
    if (client) client.reconnect();
  });

  btnDisconnect.addEventListener('click', () => {
    if (client) client.close();
    client = null;
    btnConnect.disabled = false;
    btnReconnect.disabled = true;
    btnDisconnect.disabled = true;
    setStatus('closed');
    $('o-hb').textContent = '–';
  });

  /** Logs the reply of a request, or why it failed. */
  function track(label, promise) {
    promise.then(
      (value) => log('reply', label, Array.isArray(value) ? value.join(',') || '(none)' : (value === '' ? '(left the room)' : String(value))),
      (err) => log('error', label, err.message),
    );
  }

  $('btn-room').addEventListener('click', () => {
    if (!client) return;
    const room = $('s-room').value.trim();
    log('info', 'op 12', room ? 'change room → ' + room : 'leave room');
    track('op 13', client.changeRoom(room));
  });
  $('btn-sub').addEventListener('click', () => {
    const ops = parseOps($('s-ops').value);
    if (!client || !ops.length) return;
    log('info', 'op 14', 'sub ' + ops.join(','));
    track('op 15', client.sub(ops));
  });
  $('btn-unsub').addEventListener('click', () => {
    const ops = parseOps($('s-ops').value);
    if (!client || !ops.length) return;
    log('info', 'op 16', 'unsub ' + ops.join(','));
    track('op 17', client.unsub(ops));
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
    const url = endpointUrl(cfg);
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
}
