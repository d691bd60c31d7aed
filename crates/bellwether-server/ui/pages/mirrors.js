// Dependencies (mirroring): each dependency with its weight, health, mode and mirrors; one
// dependency's instances, policy, switch history and events; the operator's failover.
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

/// A 0..1 figure as a small bar (grey "no data" when null: never drawn as zero).
function bar(v, test) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('width', 80); svg.setAttribute('height', 10);
  if (test) svg.setAttribute('data-test', test);
  const bg = document.createElementNS(NS, 'rect');
  bg.setAttribute('width', 80); bg.setAttribute('height', 10); bg.setAttribute('fill', '#e5e7eb');
  svg.append(bg);
  if (v != null) {
    const fg = document.createElementNS(NS, 'rect');
    fg.setAttribute('width', Math.max(0, Math.min(1, v)) * 80); fg.setAttribute('height', 10);
    fg.setAttribute('fill', v >= 0.7 ? '#16a34a' : v >= 0.4 ? '#f59e0b' : '#dc2626');
    svg.append(fg);
  }
  return h('span', { class: 'kinds-bar' }, svg, ' ', ratio(v));
}

// The task of the one shown (its events carry it even when their figures do not name it).
let shownTask = null;
const concerns = (ev, name) => ev.kind && ev.kind.startsWith('mirror.') &&
  (!name || (ev.figures && ev.figures.dependency === name) || (shownTask && ev.task === shownTask));

async function renderList(el) {
  const deps = await api('/api/v1/mirror/dependencies');
  el.replaceChildren(
    h('h2', {}, 'Dependencies'),
    deps.length === 0
      ? h('p', { 'data-test': 'mirrors-empty' }, 'No dependency is declared (bellwether mirror add …).')
      : table('mirrors-table', ['name', 'kind', 'tier', 'phase', 'weight', 'primary health', 'mode', 'primary', 'mirrors', 'last switch'],
        deps.map((d) => h('tr', { 'data-test': 'mirror-row', 'data-name': d.name },
          h('td', {}, h('a', { href: `#/mirrors/${encodeURIComponent(d.name)}`, 'data-test': 'mirror-link' }, d.name)),
          h('td', {}, d.kind), h('td', {}, d.tier), h('td', { 'data-test': 'mirror-phase' }, d.phase),
          h('td', {}, bar(d.weight)), h('td', {}, bar(d.health)), h('td', {}, d.mode),
          h('td', {}, d.primary_endpoint || d.primary || '—'),
          h('td', {}, `${(d.instances || []).filter((i) => i.role === 'mirror').length} of ${d.target_mirrors ?? '—'}`),
          h('td', {}, d.last_switch ? `${when(d.last_switch.at_ms)} ${d.last_switch.from} → ${d.last_switch.to} (${d.last_switch.trigger})` : 'none')))),
  );
}

async function renderOne(el, name) {
  const enc = encodeURIComponent(name);
  const [d, hist] = await Promise.all([api(`/api/v1/mirror/dependencies/${enc}`), api(`/api/v1/mirror/dependencies/${enc}/history?limit=50`)]);
  shownTask = d.task || null;
  const result = keptResult(`mirrors:${name}`);
  const reason = h('input', { 'data-test': 'mirror-failover-reason', placeholder: 'reason (required)', value: 'failover from the dashboard' });
  const to = h('select', { 'data-test': 'mirror-failover-to' }, h('option', { value: '' }, 'best caught-up mirror'),
    ...(d.instances || []).filter((i) => i.role === 'mirror').map((i) => h('option', { value: i.id }, i.id)));
  const btn = h('button', { 'data-test': 'mirror-failover', disabled: d.phase === 'running' || d.phase === 'paused' ? null : '' }, 'Fail over now');
  btn.addEventListener('click', async () => {
    result.set('asking…');
    const body = { reason: reason.value };
    if (to.value) body.to = to.value;
    try {
      const r = await api(`/api/v1/mirror/dependencies/${enc}/failover`, { method: 'POST', body });
      result.set(`failover asked; primary ${r.primary}${r.switching ? ', switching: ' + JSON.stringify(r.switching) : ''} (the events below say what happened)`);
    } catch (e) {
      result.fail(e);
    }
  });
  const switches = (hist.switches || d.history || []).slice().reverse();
  const events = hist.events || [];
  const policy = (d.spec && d.spec.policy) || {};
  el.replaceChildren(
    h('p', {}, h('a', { href: '#/mirrors' }, '← all dependencies')),
    h('h2', {}, `Dependency ${d.name}`),
    h('dl', { class: 'kinds-facts' },
      h('dt', {}, 'kind'), h('dd', {}, `${d.kind}, tier ${d.tier}`),
      h('dt', {}, 'phase'), h('dd', { 'data-test': 'mirror-phase' }, d.phase),
      h('dt', {}, 'weight'), h('dd', { 'data-test': 'mirror-weight' }, bar(d.weight)),
      h('dt', {}, 'primary health'), h('dd', { 'data-test': 'mirror-health' }, bar(d.health)),
      h('dt', {}, 'primary'), h('dd', { 'data-test': 'mirror-primary' }, `${d.primary} (${d.primary_endpoint}), declared ${d.declared_primary}`),
      h('dt', {}, 'mode'), h('dd', {}, d.mode),
      h('dt', {}, 'mirrors'), h('dd', {}, `${(d.instances || []).filter((i) => i.role === 'mirror').length}, target ${d.target_mirrors}`),
      h('dt', {}, 'switching'), h('dd', {}, d.switching ? JSON.stringify(d.switching) : 'no'),
      h('dt', {}, 'declared'), h('dd', {}, when(d.created_at_ms))),
    h('div', { class: 'kinds-actions' }, reason, to, btn, result),
    h('h3', {}, 'Instances'),
    table('mirror-instances', ['id', 'endpoint', 'role', 'state', 'health', 'offset', 'lag', 'sessions', 'made by Bellwether', 'since'],
      (d.instances || []).map((i) => h('tr', { 'data-test': 'mirror-instance', 'data-id': i.id, 'data-role': i.role },
        h('td', {}, i.id), h('td', {}, i.endpoint), h('td', {}, i.role), h('td', {}, String(i.state)), h('td', {}, bar(i.health)),
        h('td', {}, i.offset == null ? '—' : String(i.offset)), h('td', {}, dur(i.lag_ms)), h('td', {}, i.sessions == null ? '—' : String(i.sessions)),
        h('td', {}, i.provisioned ? 'yes' : 'no'), h('td', {}, when(i.since_ms))))),
    h('h3', {}, 'Switch history'),
    switches.length === 0 ? h('p', { 'data-test': 'mirror-no-switches' }, 'No switch yet.')
      : table('mirror-switches', ['at', 'from', 'to', 'trigger', 'cause', 'detect', 'switch', 'routed'], switches.map((s) => h('tr', { 'data-test': 'mirror-switch', 'data-from': s.from, 'data-to': s.to, 'data-trigger': s.trigger },
        h('td', {}, when(s.at_ms)), h('td', {}, s.from), h('td', {}, s.to), h('td', {}, s.trigger), h('td', {}, s.cause || ''),
        h('td', {}, dur(s.figures && s.figures.detect_ms)), h('td', {}, dur(s.figures && s.figures.switch_ms)), h('td', {}, when(s.routed_ms))))),
    h('h3', {}, 'Policy'),
    table('mirror-policy', ['field', 'value'], Object.entries(policy).map(([k, v]) => h('tr', {}, h('td', {}, k), h('td', {}, typeof v === 'object' ? JSON.stringify(v) : String(v))))),
    h('h3', {}, 'Events'),
    table('mirror-events', ['at', 'kind', 'reason'], events.map((e) => h('tr', { 'data-test': 'mirror-event', 'data-kind': e.kind, class: e.figures && e.figures.alert ? 'alert' : '' },
      h('td', {}, when(e.ts_ms)), h('td', {}, e.kind), h('td', {}, e.reason || '')))),
  );
}

register('mirrors', {
  title: 'Dependencies',
  render(el, ctx) {
    useKindsStyles();
    const name = ctx && ctx.arg ? ctx.arg : null;
    return liveLoad(el, () => (name ? renderOne(el, name) : renderList(el)), (ev) => concerns(ev, name));
  },
});
