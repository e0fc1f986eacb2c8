// herald's live dashboard: reads snapshots from /_/dashboard/events (server-sent
// events, read with fetch so the API key can go in a header) and draws them.
// Everything shown is set as text: no figure or name is ever parsed as HTML.

import { apiKey, storeApiKey } from '/_/apikey.js'; // shared with the demo page

const HISTORY = 300; // points kept per series: 5 minutes at one a second
const $ = (id) => document.getElementById(id);

let keyRequired = false;
let retryMs = 1000;
let reading = null; // AbortController of the stream being read
let shown = 0; // snapshots drawn

const series = {
  pushes: [],
  deliveries: [],
  publish: [],
  queue: [],
  dispatch: [],
  fanout: [],
};

function setStatus(state, text) {
  const s = $('status');
  s.dataset.state = state;
  s.textContent = text;
}

function askForKey(message) {
  $('keyform').hidden = false;
  $('keyerror').textContent = message || '';
  $('key').focus();
}

// ------------------------------------------------------------------ stream

async function connect() {
  if (reading) reading.abort();
  const ctl = new AbortController();
  reading = ctl;
  const headers = { Accept: 'text/event-stream' };
  // Sent whenever one is stored: if /_/config.json could not be read, the
  // server's 401 is how the page learns it needs one.
  const key = apiKey();
  if (key) headers.Authorization = 'Bearer ' + key;
  let res;
  try {
    res = await fetch('/_/dashboard/events', { headers, signal: ctl.signal, cache: 'no-store' });
  } catch (e) {
    if (ctl.signal.aborted) return;
    return retry('cannot reach the server');
  }
  if (res.status === 401 || res.status === 403) {
    let why = 'HTTP ' + res.status;
    try { why += ': ' + (await res.json()).message; } catch (_) { /* no JSON */ }
    setStatus('refused', 'key refused');
    askForKey(why);
    return;
  }
  if (!res.ok || !res.body) return retry('HTTP ' + res.status);
  setStatus('live', 'live');
  const opened = Date.now();
  try {
    await readEvents(res.body, (name, data) => {
      if (name !== 'snapshot') return;
      try {
        show(JSON.parse(data));
      } catch (e) {
        // A figure the page cannot draw is not a broken stream.
        console.error('dashboard: cannot show a snapshot', e);
      }
    });
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (ctl.signal.aborted) return;
  // The server ends each stream before its request timeout: open the next at
  // once. A stream that ended early (the server stopping) is retried with backoff.
  if (Date.now() - opened >= 5000) {
    retryMs = 1000;
    connect();
  } else {
    retry('the stream ended');
  }
}

function retry(why) {
  setStatus('reconnecting', 'reconnecting (' + why + ')');
  const wait = retryMs;
  retryMs = Math.min(retryMs * 2, 10000);
  setTimeout(connect, wait);
}

// Parses a text/event-stream body: events separated by blank lines, `event:` and
// `data:` fields; comments (keep-alives) ignored.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end).replace(/^\r?\n\r?\n/, '');
      let name = 'message';
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
        if (field === 'event') name = val;
        else if (field === 'data') data.push(val);
      }
      if (data.length) onEvent(name, data.join('\n'));
    }
  }
}

// ------------------------------------------------------------------ figures

function num(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  if (digits === undefined) digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
  return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function bytes(v) {
  if (v === null || v === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return num(v, i ? 1 : 0) + ' ' + units[i];
}

function push(list, v) {
  list.push(v === undefined ? null : v);
  if (list.length > HISTORY) list.shift();
}

function text(id, v) { $(id).textContent = v; }

function show(s) {
  document.body.dataset.snapshots = String(++shown);
  $('main').hidden = false;
  $('keyform').hidden = true;
  text('who', s.role + ' ' + s.server_id);
  const r = s.rates || {};
  const t = s.totals || {};
  text('t-connections', num(s.connections, 0));
  text('t-ips', num(s.ips, 0) + ' IPs');
  text('t-pushes', num(r.pushes));
  const kinds = r.pushes_by_kind || {};
  text('t-pushes-kind', Object.keys(kinds).filter((k) => kinds[k]).map((k) => k + ' ' + num(kinds[k])).join(' · '));
  text('t-deliveries', num(r.deliveries));
  text('t-deliveries-src', r.deliveries_source === 'registry' ? 'as comets report them' : 'this process');
  text('t-drops', num(r.drops));
  text('t-drops-total', t.drops === null || t.drops === undefined ? '' : num(t.drops, 0) + ' in all');
  text('t-slow', num(r.slow_consumers));
  text('t-slow-total', t.slow_consumers === null || t.slow_consumers === undefined ? '' : num(t.slow_consumers, 0) + ' in all');
  text('t-failures', num(r.push_failures));
  text('t-failures-total', t.push_failures === null || t.push_failures === undefined ? '' : num(t.push_failures, 0) + ' in all');
  const q = s.queue || {};
  text('t-lag', q.lag_seconds === null || q.lag_seconds === undefined ? '—' : num(q.lag_seconds * 1000) + ' ms');
  const waiting = q.depth === null || q.depth === undefined ? '' : ' · ' + num(q.depth, 0) + ' waiting';
  text('t-depth', (q.lag_seconds === null || q.lag_seconds === undefined ? 'lag: in job\'s metrics' : 'lag') + waiting);
  const w = s.write_queues;
  text('t-backlog', w ? num(w.pushes, 0) + ' pushes' : '—');
  text('t-backlog-bytes', w ? bytes(w.bytes) + ' · ' + num(w.connections, 0) + ' connections' : '');

  push(series.pushes, r.pushes);
  push(series.deliveries, r.deliveries);
  const lat = s.latency || {};
  const p99 = (stage, kind) => (lat[stage] && lat[stage][kind] ? lat[stage][kind].p99 : null);
  push(series.publish, p99('publish', 'room'));
  push(series.queue, p99('queue', 'room'));
  push(series.dispatch, p99('dispatch', 'room'));
  push(series.fanout, p99('fanout', 'room'));
  const css = getComputedStyle(document.documentElement);
  const c = (n) => css.getPropertyValue(n).trim();
  chart($('c-rates'), $('l-rates'), [
    { name: 'pushes / s', data: series.pushes, color: c('--s1') },
    { name: 'deliveries / s', data: series.deliveries, color: c('--s3') },
  ]);
  chart($('c-latency'), $('l-latency'), [
    { name: 'publish', data: series.publish, color: c('--s1') },
    { name: 'queue', data: series.queue, color: c('--s2') },
    { name: 'dispatch', data: series.dispatch, color: c('--s3') },
    { name: 'fan-out', data: series.fanout, color: c('--s4') },
  ]);

  latencyTable(lat);
  rows('rooms', (s.top_rooms || []).map((x) => [[x.room, 'id'], [num(x.online, 0), 'num']]));
  rows('nodes', (s.nodes || []).map((n) => [
    [n.kind], [n.id, 'id'], [n.health, n.health],
    [n.kind === 'comet' ? num(n.connections, 0) : '', 'num'],
    [n.kind === 'comet' ? num(n.ips, 0) : '', 'num'],
    [n.kind === 'comet' ? num(n.delivered_per_s) : '', 'num'],
    [n.kind === 'comet' ? num(n.dropped_per_s) : '', 'num'],
    [n.kind === 'comet' ? num(n.delivered, 0) : '', 'num'],
    [n.kind === 'comet' ? num(n.dropped, 0) : '', 'num'],
    [n.kind === 'comet' ? num(n.slow_consumers, 0) : '', 'num'],
  ]));
}

function latencyTable(lat) {
  const stages = [['publish', 'publish'], ['queue', 'queue'], ['dispatch', 'dispatch'], ['fanout', 'fan-out']];
  const out = [];
  for (const [key, label] of stages) {
    const byKind = lat[key];
    if (!byKind) continue;
    for (const kind of Object.keys(byKind)) {
      const v = byKind[kind];
      if (!v) continue;
      out.push([[label], [kind], [num(v.p50), 'num'], [num(v.p99), 'num'], [num(v.p999), 'num'], [num(v.count, 0), 'num']]);
    }
  }
  rows('latency', out);
}

// Replaces a table's body with rows of [text, class] cells.
function rows(id, data) {
  const body = $(id).tBodies[0];
  const fresh = document.createElement('tbody');
  for (const row of data) {
    const tr = document.createElement('tr');
    for (const [value, cls] of row) {
      const td = document.createElement('td');
      td.textContent = value === null || value === undefined ? '' : String(value);
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    fresh.appendChild(tr);
  }
  if (!data.length) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = $(id).tHead.rows[0].cells.length;
    td.className = 'muted';
    td.textContent = 'none yet';
    tr.appendChild(td);
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

// A line chart of up to HISTORY points per series, on a canvas sized to its box.
function chart(canvas, legend, lines) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 640;
  const h = canvas.clientHeight || 220;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const muted = css.getPropertyValue('--muted').trim();
  const grid = css.getPropertyValue('--line').trim();
  const left = 48, right = 8, top = 8, bottom = 18;
  let max = 0;
  for (const l of lines) for (const v of l.data) if (v !== null && v > max) max = v;
  max = niceMax(max);
  g.font = '11px system-ui, sans-serif';
  g.fillStyle = muted;
  g.strokeStyle = grid;
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + (h - top - bottom) * (1 - i / 4);
    g.beginPath();
    g.moveTo(left, y + 0.5);
    g.lineTo(w - right, y + 0.5);
    g.stroke();
    g.fillText(num((max * i) / 4), 2, y + 4);
  }
  g.fillText('−5 min', left, h - 4);
  g.fillText('now', w - right - 22, h - 4);
  const x = (i) => left + ((w - left - right) * i) / (HISTORY - 1);
  const y = (v) => top + (h - top - bottom) * (1 - v / max);
  for (const l of lines) {
    g.strokeStyle = l.color;
    g.lineWidth = 1.5;
    g.beginPath();
    let pen = false;
    const offset = HISTORY - l.data.length;
    l.data.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      if (pen) g.lineTo(x(offset + i), y(v));
      else g.moveTo(x(offset + i), y(v));
      pen = true;
    });
    g.stroke();
  }
  legend.replaceChildren(...lines.map((l) => {
    const span = document.createElement('span');
    const dot = document.createElement('i');
    dot.style.background = l.color;
    span.appendChild(dot);
    const last = [...l.data].reverse().find((v) => v !== null);
    span.appendChild(document.createTextNode(l.name + ' ' + num(last)));
    return span;
  }));
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// ------------------------------------------------------------------ start

$('keyform').addEventListener('submit', (e) => {
  e.preventDefault();
  storeApiKey($('key').value.trim());
  $('key').value = '';
  $('keyform').hidden = true;
  setStatus('connecting', 'connecting…');
  connect();
});

(async () => {
  try {
    const cfg = await (await fetch('/_/config.json', { cache: 'no-store' })).json();
    keyRequired = !!cfg.key_required;
  } catch (_) { /* assume no key: a 401 asks for one */ }
  if (keyRequired && !apiKey()) {
    setStatus('refused', 'key needed');
    askForKey('');
    return;
  }
  connect();
})();
