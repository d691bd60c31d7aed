// The dashboard's shell: the token, the API client, the live event stream, the page router
// and small DOM helpers. Pages register themselves (see pages/index.js) and code against the
// exports below; docs/dashboard.md describes the contract.

const TOKEN_KEY = 'bellwether.token';
const pages = new Map();
const listeners = new Set();
let cleanup = null;
let role = null;

/** An error answer of the API: `status` and the API's `error` text. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Registers a page: route `#/<id>` or `#/<id>/<arg>`; `render(el, ctx)` may return a cleanup. */
export function register(id, { title, render, nav = true }) {
  pages.set(id, { id, title, render, nav });
}

/** The role of the token in use (`viewer`, `operator`, `admin`), once signed in. */
export function currentRole() {
  return role;
}

/** Whether the token in use may act (operator or admin). */
export function canAct() {
  return role === 'operator' || role === 'admin';
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Calls the API with the token; answers the parsed JSON, throws `ApiError`. */
export async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = { Authorization: `Bearer ${token() ?? ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `cannot reach the server: ${e.message}`);
  }
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!resp.ok) {
    const message = (json && json.error) || text || resp.statusText;
    throw new ApiError(resp.status, message);
  }
  return json;
}

/** Subscribes to every event of the live stream; answers the unsubscribe function. */
export function onEvent(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Builds an element: `h('a', {href: '#', class: 'x', onclick: fn, dataset: {test: 'y'}}, 'text', child)`. */
export function h(tag, attrs, ...children) {
  const svgNs = 'http://www.w3.org/2000/svg';
  const el = attrs && attrs.ns === 'svg' ? document.createElementNS(svgNs, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false || k === 'ns') continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k === 'value' && 'value' in el) el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const pad = (n) => String(n).padStart(2, '0');

/** Formatting helpers. */
export const fmt = {
  /** `2026-12-05 21:08:40` in the browser's time zone, or `—`. */
  time(ms) {
    if (ms === null || ms === undefined) return '—';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  },
  /** `21:08:40`. */
  clock(ms) {
    if (ms === null || ms === undefined) return '—';
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  },
  /** A duration: `850 ms`, `12.5 s`, `3 min 20 s`, `2 h 5 min`. */
  ms(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return '—';
    if (n < 1000) return `${Math.round(n)} ms`;
    if (n < 60_000) return `${(n / 1000).toFixed(n < 10_000 ? 2 : 1)} s`;
    if (n < 3_600_000) return `${Math.floor(n / 60_000)} min ${Math.round((n % 60_000) / 1000)} s`;
    return `${Math.floor(n / 3_600_000)} h ${Math.round((n % 3_600_000) / 60_000)} min`;
  },
  /** How long ago: `5 s ago`. */
  ago(ms) {
    if (ms === null || ms === undefined) return 'never';
    return `${fmt.ms(Math.max(0, Date.now() - ms))} ago`;
  },
  /** A ratio as a percentage: `41%`, `3.5%`, `0.12%`. */
  ratio(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return '—';
    if (x === 0) return '0%';
    const p = x * 100;
    const digits = Math.abs(p) >= 10 ? 0 : Math.abs(p) >= 1 ? 1 : 2;
    return `${p.toFixed(digits)}%`;
  },
  /** A number with at most `digits` significant decimals: `12.35`, `0.0042`. */
  num(x, digits = 3) {
    if (x === null || x === undefined) return '—';
    if (typeof x !== 'number') return String(x);
    if (Number.isInteger(x)) return String(x);
    return String(Number(x.toPrecision(digits)));
  },
  /** `1 host`, `3 hosts`. */
  count(n, word, plural = `${word}s`) {
    return `${n} ${n === 1 ? word : plural}`;
  },
};

/** An error box for `err`: a 403 reads as a refusal (data-test="refused"), others as errors. */
export function errorBox(err) {
  if (err instanceof ApiError && err.status === 403) {
    return h('div', { class: 'error refused', dataset: { test: 'refused' }, role: 'alert' },
      h('strong', null, 'Refused (403): '), err.message);
  }
  const status = err instanceof ApiError && err.status ? `${err.status}: ` : '';
  return h('div', { class: 'error', dataset: { test: 'error' }, role: 'alert' },
    h('strong', null, `Error ${status}`), err.message ?? String(err));
}

/**
 * An action button: runs `act()` (an API call), shows the answer or the refusal in `out`
 * (an element; the button's own message line when absent), then calls `done()`.
 * A viewer's button stays enabled, so the API's 403 is what the viewer sees.
 */
export function actionButton(label, test, act, { out, done, confirm: ask } = {}) {
  const line = out ?? h('span', { class: 'action-out' });
  const btn = h('button', {
    dataset: { test },
    title: canAct() ? label : `${label} (your ${role} token may not act: the server will refuse)`,
    onclick: async () => {
      if (ask && !window.confirm(ask)) return;
      btn.disabled = true;
      line.replaceChildren(h('span', { class: 'muted' }, `${label}…`));
      try {
        await act();
        line.replaceChildren(h('span', { class: 'ok', dataset: { test: 'action-ok' } }, `${label}: done`));
        if (done) await done();
      } catch (e) {
        line.replaceChildren(errorBox(e));
      } finally {
        btn.disabled = false;
      }
    },
  }, label);
  return out ? btn : h('span', { class: 'action' }, btn, line);
}

/**
 * Shows what `draw(reload)` (async; it fills the page) draws, now and again whenever an event
 * of the live stream `concerns(event)`. Loads never overlap: events that arrive during a load
 * ask for one more load after it (however many arrive), so the page ends showing the newest
 * state without a load per event and without a timer. A failed load shows its `errorBox` in
 * `el`. `draw` gets `reload` (for a Refresh button). Answers the page's cleanup: it
 * unsubscribes, and a load still in flight is not followed by another.
 */
export function liveLoad(el, draw, concerns) {
  let busy = false;
  let again = false;
  let stopped = false;
  const reload = async () => {
    if (stopped) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      await draw(reload);
    } catch (e) {
      if (!stopped) el.replaceChildren(errorBox(e));
    } finally {
      busy = false;
      if (again && !stopped) {
        again = false;
        reload();
      }
    }
  };
  const off = onEvent((ev) => {
    if (concerns(ev)) reload();
  });
  reload();
  return () => {
    stopped = true;
    off();
  };
}

// The outcome of the last action of a page, kept across the page's reloads (its own event
// reloads it) and dropped when another page's action replaces it.
let lastResult = { key: null, text: '', err: null };

/**
 * The line (data-test="action-result") where a page shows the outcome of its last action,
 * kept across reloads of the same `key` (e.g. `mirrors:cache`): `line.set(text)` shows a
 * success, `line.fail(err)` its `errorBox`.
 */
export function keptResult(key) {
  const line = h('div', { class: 'action-out', dataset: { test: 'action-result' } });
  const show = () => {
    if (lastResult.err) line.replaceChildren(errorBox(lastResult.err));
    else line.replaceChildren(h('span', { class: 'ok', dataset: { test: 'action-ok' } }, lastResult.text));
  };
  if (lastResult.key === key) show();
  line.set = (text) => {
    lastResult = { key, text, err: null };
    show();
  };
  line.fail = (err) => {
    lastResult = { key, text: '', err };
    show();
  };
  return line;
}

/** `<table>` from column heads and rows of cells. */
export function table(heads, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', null, h('tr', null, heads.map((x) => h('th', null, x)))),
    h('tbody', null, rows));
}

// ---- the live event stream --------------------------------------------------------------------

let streamAbort = null;
let lastEventId = null;

function setLive(text, cls) {
  const el = document.getElementById('live');
  el.textContent = text;
  el.className = `live ${cls}`;
}

async function startStream() {
  stopStream();
  const ctrl = new AbortController();
  streamAbort = ctrl;
  if (lastEventId === null) {
    // Start at the newest event: what happens from now on arrives live.
    try {
      const newest = await api('/api/v1/events?limit=1', { signal: ctrl.signal });
      lastEventId = newest.length ? newest[0].id : 0;
    } catch (e) {
      if (ctrl.signal.aborted) return;
      lastEventId = 0;
    }
  }
  let delay = 1000;
  while (!ctrl.signal.aborted) {
    try {
      const resp = await fetch('/api/v1/events/stream', {
        headers: { Authorization: `Bearer ${token() ?? ''}`, 'Last-Event-ID': String(lastEventId) },
        signal: ctrl.signal,
      });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        throw new ApiError(resp.status, body.error || resp.statusText);
      }
      setLive('live', 'on');
      delay = 1000;
      await readEvents(resp.body);
    } catch (e) {
      if (ctrl.signal.aborted) return;
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        setLive(`stream refused: ${e.status}`, 'off');
        return;
      }
    }
    if (ctrl.signal.aborted) return;
    setLive('reconnecting', 'off');
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function stopStream() {
  if (streamAbort) streamAbort.abort();
  streamAbort = null;
}

/** Reads server-sent events from `body` until it ends, dispatching each message. */
async function readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let data = [];
  let id = null;
  let type = 'message';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.search(/\r\n|\n|\r/)) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + (buf.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (data.length && type === 'message') dispatch(data.join('\n'), id);
        else if (type === 'error') setLive(`stream error: ${data.join(' ')}`, 'off');
        data = [];
        type = 'message';
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? '' : line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (field === 'data') data.push(val);
      else if (field === 'id') id = val;
      else if (field === 'event') type = val;
    }
  }
}

function dispatch(text, id) {
  let event;
  try {
    event = JSON.parse(text);
  } catch {
    return;
  }
  if (id !== null) lastEventId = Number(id);
  for (const fn of [...listeners]) {
    try {
      fn(event);
    } catch (e) {
      console.error('an event listener failed', e);
    }
  }
}

// ---- sign-in, navigation, routing -------------------------------------------------------------

function loginForm(message) {
  const input = h('input', {
    type: 'password', id: 'token', autocomplete: 'off', size: 48,
    placeholder: 'paste a viewer, operator or admin token', dataset: { test: 'token-input' },
  });
  const out = h('div', { class: 'login-out' }, message ? errorBox(message) : null);
  const form = h('form', {
    class: 'login card', dataset: { test: 'login' },
    onsubmit: async (e) => {
      e.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      out.replaceChildren(h('span', { class: 'muted' }, 'Checking the token…'));
      await signIn();
    },
  },
  h('h1', null, 'Sign in'),
  h('p', null, 'The dashboard uses the API with your token. A viewer token sees everything; an operator token can also act (pause, resume, abort, promote). ',
    'The token stays in this tab only (session storage).'),
  h('label', { for: 'token' }, 'Token '), input, ' ',
  h('button', { type: 'submit', dataset: { test: 'login-submit' } }, 'Sign in'),
  out);
  document.getElementById('page').replaceChildren(form);
  input.focus();
}

async function signIn() {
  let me;
  try {
    me = await api('/api/v1/whoami');
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    const why = e instanceof ApiError && e.status === 403
      ? new ApiError(403, `${e.message} (the dashboard needs a viewer, operator or admin token)`)
      : e;
    signedOut(why);
    return;
  }
  role = me.role;
  const who = document.getElementById('who');
  who.textContent = `${role} token #${me.token_id}`;
  who.className = `who role-${role}`;
  document.getElementById('logout').hidden = false;
  renderNav();
  lastEventId = null;
  startStream();
  route();
}

function signedOut(message) {
  role = null;
  stopStream();
  setLive('offline', 'off');
  document.getElementById('who').textContent = '';
  document.getElementById('logout').hidden = true;
  document.getElementById('nav').replaceChildren();
  if (cleanup) cleanup();
  cleanup = null;
  loginForm(message);
}

function renderNav() {
  const current = (location.hash.slice(2).split('/')[0]) || firstPage();
  document.getElementById('nav').replaceChildren(...[...pages.values()].filter((p) => p.nav).map((p) =>
    h('a', { href: `#/${p.id}`, class: p.id === current ? 'active' : null, dataset: { test: `nav-${p.id}` } }, p.title)));
}

function firstPage() {
  return pages.keys().next().value;
}

function route() {
  if (!role) return;
  const [id, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  const page = pages.get(id) ?? pages.get(firstPage());
  // `rawArg` is the argument as written (still percent-encoded), for a page whose argument
  // has parts of its own (config's `HOST,SOURCE,KEY`: each part is encoded, so a comma inside
  // one is `%2C` and does not split it); `arg` is it decoded once.
  const rawArg = rest.length ? rest.join('/') : null;
  let arg = null;
  try {
    arg = rawArg === null ? null : decodeURIComponent(rawArg);
  } catch {
    arg = rawArg;
  }
  if (cleanup) {
    try { cleanup(); } catch (e) { console.error(e); }
  }
  cleanup = null;
  renderNav();
  const el = h('section', { class: 'page', dataset: { test: `page-${page.id}` } });
  document.getElementById('page').replaceChildren(el);
  document.title = `${page.title} · Bellwether`;
  try {
    const c = page.render(el, { arg, rawArg, role, api, onEvent, navigate });
    if (typeof c === 'function') cleanup = c;
    else if (c && typeof c.then === 'function') {
      c.then((f) => { if (typeof f === 'function') cleanup = f; }, (e) => el.replaceChildren(errorBox(e)));
    }
  } catch (e) {
    el.replaceChildren(errorBox(e));
  }
}

/** Goes to `#/<id>/<arg>`. */
export function navigate(id, arg) {
  location.hash = arg === undefined || arg === null ? `#/${id}` : `#/${id}/${encodeURIComponent(arg)}`;
}

async function boot() {
  await import('./pages/index.js');
  window.addEventListener('hashchange', route);
  document.getElementById('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    signedOut();
  });
  if (token()) await signIn();
  else signedOut();
}

boot();
