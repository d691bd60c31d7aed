// Shadows: every data shadow with its phase, routed location and rollback points; one shadow's
// locations (merit), its points on a time line, rollbacks and events; operators take a point
// and roll back (to a point, the latest state or a time).
import { register, api, h, fmt, keptResult, liveLoad } from '../app.js';
import { useKindsStyles } from '../lib/graph.js';

const when = fmt.time;
const dur = fmt.ms;
const ratio = (v) => (v == null ? 'no data' : v.toFixed(2));

function table(test, headers, rows) {
  return h('table', { 'data-test': test, class: 'kinds-table' },
    h('thead', {}, h('tr', {}, ...headers.map((x) => h('th', {}, x)))),
    h('tbody', {}, ...rows));
}

// The task of the one shown (its events carry it even when their figures do not name it).
let shownTask = null;
const concerns = (ev, name) => ev.kind && ev.kind.startsWith('shadow.') &&
  (!name || (ev.figures && ev.figures.shadow === name) || (shownTask && ev.task === shownTask));

async function renderList(el) {
  const shadows = await api('/api/v1/shadow/shadows');
  el.replaceChildren(
    h('h2', {}, 'Shadows'),
    shadows.length === 0
      ? h('p', { 'data-test': 'shadows-empty' }, 'No shadow is declared (bellwether shadow add …).')
      : table('shadows-table', ['name', 'host', 'kind', 'type', 'phase', 'routed', 'points', 'latest point', 'last rollback'],
        shadows.map((s) => h('tr', { 'data-test': 'shadow-row', 'data-name': s.name },
          h('td', {}, h('a', { href: `#/shadows/${encodeURIComponent(s.name)}`, 'data-test': 'shadow-link' }, s.name)),
          h('td', {}, s.host), h('td', {}, s.kind), h('td', {}, s.type), h('td', { 'data-test': 'shadow-phase' }, s.phase + (s.pause_reason ? ` (${s.pause_reason})` : '')),
          h('td', {}, s.routed || '—'), h('td', { 'data-test': 'shadow-points' }, String(s.points ?? 0)),
          h('td', {}, s.latest_point ? `${s.latest_point.id} at ${when(s.latest_point.consistent_at_ms)}` : 'none'),
          h('td', {}, s.last_rollback ? `${when(s.last_rollback.done_ms || s.last_rollback.decided_ms)} ${s.last_rollback.ok ? 'ok' : 'failed'}` : 'none')))),
  );
}

/// The rollback points as dots on a time line (rollbacks as red marks).
function timeline(points, rollbacks) {
  const NS = 'http://www.w3.org/2000/svg';
  const times = points.map((p) => p.consistent_at_ms).concat(rollbacks.map((r) => r.decided_ms)).filter((t) => t != null);
  if (times.length === 0) return h('p', { 'data-test': 'shadow-no-points' }, 'No rollback point yet.');
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1000);
  const W = 640, x = (t) => 20 + ((t - t0) / (t1 - t0)) * (W - 40);
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} 60`); svg.setAttribute('width', W); svg.setAttribute('height', 60); svg.setAttribute('data-test', 'shadow-timeline');
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text) e.textContent = text;
    svg.append(e);
    return e;
  };
  add('line', { x1: 20, x2: W - 20, y1: 30, y2: 30, stroke: '#9ca3af' });
  for (const p of points) {
    const c = add('circle', { cx: x(p.consistent_at_ms), cy: 30, r: 5, fill: p.reason === 'predicted' ? '#f59e0b' : '#2563eb' });
    const t = document.createElementNS(NS, 'title');
    t.textContent = `${p.id} (${p.reason}) ${when(p.consistent_at_ms)}`;
    c.append(t);
  }
  for (const r of rollbacks) add('line', { x1: x(r.decided_ms), x2: x(r.decided_ms), y1: 12, y2: 48, stroke: '#dc2626', 'stroke-width': 2 });
  add('text', { x: 20, y: 58, 'font-size': 10 }, when(t0));
  add('text', { x: W - 20, y: 58, 'font-size': 10, 'text-anchor': 'end' }, when(t1));
  return svg;
}

async function renderOne(el, name) {
  const enc = encodeURIComponent(name);
  const [d, pts, hist] = await Promise.all([
    api(`/api/v1/shadow/shadows/${enc}`),
    api(`/api/v1/shadow/shadows/${enc}/points`),
    api(`/api/v1/shadow/shadows/${enc}/history?limit=50`),
  ]);
  shownTask = d.task || null;
  const result = keptResult(`shadows:${name}`);
  const act = async (what, path, body) => {
    result.set('asking…');
    try {
      await api(`/api/v1/shadow/shadows/${enc}/${path}`, { method: 'POST', body });
      result.set(`${what} asked (the events below say what happened)`);
    } catch (e) {
      result.fail(e);
    }
  };
  const reason = h('input', { 'data-test': 'shadow-rollback-reason', placeholder: 'reason (required)', value: 'rollback from the dashboard' });
  const to = h('input', { 'data-test': 'shadow-rollback-to', placeholder: 'latest, p42 or a time', value: 'latest' });
  const locations = (d.status && d.status.locations) || [];
  const loc = h('select', { 'data-test': 'shadow-rollback-location' }, h('option', { value: '' }, 'best location by merit'),
    ...locations.map((l) => h('option', { value: l.id }, l.id)));
  const rollback = h('button', { 'data-test': 'shadow-rollback' }, 'Roll back');
  rollback.addEventListener('click', () => {
    const body = { reason: reason.value, to: to.value || 'latest' };
    if (loc.value) body.location = loc.value;
    act(`rollback to ${body.to}`, 'rollback', body);
  });
  const point = h('button', { 'data-test': 'shadow-take-point' }, 'Take a point now');
  point.addEventListener('click', () => act('a point', 'points', { reason: 'from the dashboard' }));
  const points = pts.points || [];
  const rollbacks = hist.rollbacks || [];
  el.replaceChildren(
    h('p', {}, h('a', { href: '#/shadows' }, '← all shadows')),
    h('h2', {}, `Shadow ${d.name}`),
    h('dl', { class: 'kinds-facts' },
      h('dt', {}, 'resource'), h('dd', {}, `${d.kind} ${(d.spec && d.spec.resource && (d.spec.resource.path || d.spec.resource.url)) || ''} on ${d.host}`),
      h('dt', {}, 'type'), h('dd', {}, d.type),
      h('dt', {}, 'phase'), h('dd', { 'data-test': 'shadow-phase' }, d.phase + (d.pause_reason ? ` (${d.pause_reason})` : '')),
      h('dt', {}, 'routed'), h('dd', { 'data-test': 'shadow-routed' }, d.routed || '—'),
      h('dt', {}, 'points'), h('dd', { 'data-test': 'shadow-points' }, `${d.points ?? points.length}${pts.point_in_flight ? ' (one in flight)' : ''}`),
      h('dt', {}, 'rolling back'), h('dd', {}, d.rolling_back ? JSON.stringify(d.rolling_back) : 'no')),
    h('div', { class: 'kinds-actions' }, point, ' ', reason, to, loc, rollback, result),
    h('h3', {}, 'Rollback points'),
    timeline(points, rollbacks),
    points.length === 0 ? h('span') : table('shadow-points-table', ['id', 'seq', 'consistent at', 'reason', ''], points.slice().reverse().slice(0, 50).map((p) => {
      const b = h('button', { 'data-test': 'shadow-rollback-to-point', 'data-point': p.id }, 'roll back here');
      b.addEventListener('click', () => act(`rollback to ${p.id}`, 'rollback', { reason: reason.value, to: p.id }));
      return h('tr', { 'data-test': 'shadow-point', 'data-id': p.id },
        h('td', {}, p.id), h('td', {}, String(p.seq)), h('td', {}, when(p.consistent_at_ms)), h('td', {}, p.reason), h('td', {}, b));
    })),
    h('h3', {}, 'Locations'),
    table('shadow-locations', ['id', 'routed', 'up', 'merit', 'latency', 'errors', 'rollback bytes', 'observed'], locations.map((l) => h('tr', { 'data-test': 'shadow-location', 'data-id': l.id },
      h('td', {}, l.id), h('td', {}, l.routed ? 'yes' : ''), h('td', {}, l.up == null ? 'no data' : l.up ? 'yes' : 'no'), h('td', {}, ratio(l.merit)),
      h('td', {}, l.latency_ms == null ? '—' : `${l.latency_ms.toFixed(1)} ms`), h('td', {}, String(l.errors ?? 0)),
      h('td', {}, l.rollback_bytes == null ? '—' : String(l.rollback_bytes)), h('td', {}, when(l.observed_ms))))),
    h('h3', {}, 'Rollbacks'),
    rollbacks.length === 0 ? h('p', { 'data-test': 'shadow-no-rollbacks' }, 'No rollback yet.')
      : table('shadow-rollbacks', ['decided', 'done', 'trigger', 'cause', 'point', 'from', 'into', 'ok', 'took'], rollbacks.slice().reverse().map((r) => h('tr', { 'data-test': 'shadow-rollback-row' },
        h('td', {}, when(r.decided_ms)), h('td', {}, when(r.done_ms)), h('td', {}, typeof r.trigger === 'string' ? r.trigger : JSON.stringify(r.trigger)),
        h('td', {}, r.cause || ''), h('td', {}, r.point ? r.point.id : '—'), h('td', {}, r.from || '—'), h('td', {}, r.location || '—'),
        h('td', {}, r.ok ? 'yes' : `no${r.error ? ': ' + r.error : ''}`), h('td', {}, dur(r.figures && r.figures.decide_to_done_ms))))),
    h('h3', {}, 'Events'),
    table('shadow-events', ['at', 'kind', 'reason'], (hist.events || []).map((e) => h('tr', { 'data-test': 'shadow-event', 'data-kind': e.kind, class: e.figures && e.figures.alert ? 'alert' : '' },
      h('td', {}, when(e.ts_ms)), h('td', {}, e.kind), h('td', {}, e.reason || '')))),
  );
}

register('shadows', {
  title: 'Shadows',
  render(el, ctx) {
    useKindsStyles();
    const name = ctx && ctx.arg ? ctx.arg : null;
    return liveLoad(el, () => (name ? renderOne(el, name) : renderList(el)), (ev) => concerns(ev, name));
  },
});
