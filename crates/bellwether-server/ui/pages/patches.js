// Patches: every patch with its stage and outcome; one patch's phases with their timings
// (a bar per phase), its baselines, trigger and events; abort for operators.
import { register, api, h, fmt, keptResult, liveLoad } from '../app.js';
import { useKindsStyles } from '../lib/graph.js';

const when = fmt.time;
const dur = fmt.ms;
const num = (v) => (v == null ? '—' : typeof v === 'number' ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)) : String(v));
const concerns = (ev, id) => ev.kind && ev.kind.startsWith('patch.') && (!id || ev.task === id || (ev.figures && ev.figures.patch === id));

function table(test, headers, rows) {
  return h('table', { 'data-test': test, class: 'kinds-table' },
    h('thead', {}, h('tr', {}, ...headers.map((x) => h('th', {}, x)))),
    h('tbody', {}, ...rows));
}

async function renderList(el) {
  const patches = await api('/api/v1/patches');
  el.replaceChildren(
    h('h2', {}, 'Patches'),
    patches.length === 0
      ? h('p', { 'data-test': 'patches-empty' }, 'No patches yet (bellwether patch start …).')
      : table('patches-table', ['id', 'host', 'plan', 'stage', 'outcome', 'severity', 'trigger', 'last event', 'started', 'updated'],
        patches.map((p) => h('tr', { 'data-test': 'patch-row', 'data-id': p.id },
          h('td', {}, h('a', { href: `#/patches/${encodeURIComponent(p.id)}`, 'data-test': 'patch-link' }, p.id)),
          h('td', {}, p.host || '—'), h('td', {}, p.plan || '—'),
          h('td', { 'data-test': 'patch-stage' }, p.stage), h('td', {}, p.outcome),
          h('td', {}, num(p.last_severity)), h('td', {}, p.trigger || '—'),
          h('td', {}, p.last_event || '—'), h('td', {}, when(p.created_at_ms)), h('td', {}, when(p.updated_at_ms))))),
  );
}

/// Horizontal bars: one per phase, from its start, as long as it took.
function phaseChart(phases) {
  const NS = 'http://www.w3.org/2000/svg';
  const timed = phases.filter((p) => p.started_ms != null);
  if (timed.length === 0) return h('p', {}, 'No phase has run yet.');
  const t0 = Math.min(...timed.map((p) => p.started_ms));
  const t1 = Math.max(...timed.map((p) => p.started_ms + (p.took_ms || 0)));
  const span = Math.max(1, t1 - t0);
  const W = 900, row = 22, left = 330;
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${row * timed.length + 24}`);
  svg.setAttribute('width', W);
  svg.setAttribute('height', row * timed.length + 24);
  svg.setAttribute('data-test', 'patch-phase-chart');
  timed.forEach((p, i) => {
    const y = i * row + 4;
    const x = left + ((p.started_ms - t0) / span) * (W - left - 70);
    const w = Math.max(2, ((p.took_ms || 0) / span) * (W - left - 70));
    const label = document.createElementNS(NS, 'text');
    label.setAttribute('x', 4); label.setAttribute('y', y + 14); label.setAttribute('font-size', 12);
    label.textContent = `${p.kind} ${p.phase}: ${p.name}`;
    const bar = document.createElementNS(NS, 'rect');
    bar.setAttribute('x', x); bar.setAttribute('y', y); bar.setAttribute('width', w); bar.setAttribute('height', row - 6);
    bar.setAttribute('fill', p.ok === false ? '#dc2626' : p.kind === 'promote' ? '#16a34a' : '#f59e0b');
    const t = document.createElementNS(NS, 'text');
    t.setAttribute('x', x + w + 4); t.setAttribute('y', y + 14); t.setAttribute('font-size', 11);
    t.textContent = dur(p.took_ms);
    svg.append(label, bar, t);
  });
  return svg;
}

async function renderOne(el, id) {
  const st = await api(`/api/v1/patches/${encodeURIComponent(id)}`);
  const r = st.report || {};
  const phases = r.phases || [];
  const events = (r.events || []).slice().reverse();
  const result = keptResult(`patches:${id}`);
  const reason = h('input', { 'data-test': 'patch-abort-reason', placeholder: 'reason', value: 'aborted from the dashboard' });
  const abortBtn = h('button', { 'data-test': 'patch-abort', disabled: st.outcome !== 'running' ? '' : null }, 'Abort (rolls back)');
  abortBtn.addEventListener('click', async () => {
    result.set('asking…');
    try {
      await api(`/api/v1/patches/${encodeURIComponent(id)}/abort`, { method: 'POST', body: { reason: reason.value } });
      result.set('abort requested (the phases below follow it)');
    } catch (e) {
      result.fail(e);
    }
  });
  const trig = r.trigger;
  el.replaceChildren(
    h('p', {}, h('a', { href: '#/patches' }, '← all patches'), ' · ', h('a', { href: `#/proxy/${encodeURIComponent(id)}`, 'data-test': 'patch-proxy-link' }, 'its proxy\'s connections')),
    h('h2', {}, `Patch ${id}`),
    h('dl', { class: 'kinds-facts' },
      h('dt', {}, 'host'), h('dd', {}, st.host || '—'),
      h('dt', {}, 'plan'), h('dd', {}, st.plan || r.plan_name || '—'),
      h('dt', {}, 'stage'), h('dd', { 'data-test': 'patch-stage' }, st.stage),
      h('dt', {}, 'outcome'), h('dd', { 'data-test': 'patch-outcome' }, st.outcome),
      h('dt', {}, 'waiting for'), h('dd', { 'data-test': 'patch-awaiting' }, st.awaiting ? JSON.stringify(st.awaiting) : 'nothing'),
      h('dt', {}, 'started'), h('dd', {}, when(r.started_ms || st.created_at_ms)),
      h('dt', {}, 'finished'), h('dd', {}, when(r.finished_ms)),
      h('dt', {}, 'baked'), h('dd', {}, dur(r.baked_ms)),
      h('dt', {}, 'severity'), h('dd', {}, num(r.last_severity)),
      h('dt', {}, 'proxy'), h('dd', {}, st.admin_url || '—')),
    h('div', { class: 'kinds-actions' }, reason, abortBtn, result),
    h('h3', {}, 'Phases and timings'),
    phaseChart(phases),
    phases.length === 0 ? h('p', { 'data-test': 'patch-phases-empty' }, 'No rollback or promotion phase yet.')
      : table('patch-phases', ['kind', 'phase', 'name', 'started', 'took', 'ok', 'detail'], phases.map((p) => h('tr', { 'data-test': 'patch-phase' },
        h('td', {}, p.kind), h('td', {}, String(p.phase)), h('td', {}, p.name), h('td', {}, when(p.started_ms)),
        h('td', {}, dur(p.took_ms)), h('td', {}, p.ok == null ? '…' : p.ok ? 'yes' : 'no'), h('td', {}, p.detail ? JSON.stringify(p.detail) : '')))),
    trig ? h('div', { 'data-test': 'patch-trigger' }, h('h3', {}, 'Trigger'),
      h('p', {}, `${trig.metric} against the ${trig.against}: ${num(trig.value)} vs ${num(trig.baseline)} (deviation ${num(trig.deviation)}, ${dur(trig.for_ms)}, severity ${num(trig.severity_score)})`),
      ...(trig.reasons || []).map((x) => h('p', {}, String(x)))) : h('span'),
    h('h3', {}, 'Baselines'),
    table('patch-baselines', ['metric', 'baseline'], Object.entries(r.baselines || {}).map(([k, v]) => h('tr', {}, h('td', {}, k), h('td', {}, typeof v === 'object' && v !== null ? JSON.stringify(v) : num(v))))),
    h('h3', {}, 'Events'),
    table('patch-events', ['at', 'kind', 'message'], events.map((e) => h('tr', { 'data-test': 'patch-event' },
      h('td', {}, when(e.at_ms)), h('td', {}, e.kind), h('td', {}, e.message)))),
  );
}

register('patches', {
  title: 'Patches',
  render(el, ctx) {
    useKindsStyles();
    const id = ctx && ctx.arg ? ctx.arg : null;
    return liveLoad(el, () => (id ? renderOne(el, id) : renderList(el)), (ev) => concerns(ev, id));
  },
});
