// Rollouts: the list, and one rollout live (its waves and per-host states, the pilot and why,
// each failure's reason with its figures, the timeline of its events) with the operator's
// commands. Everything refreshes from the event stream: an event of the rollout's task is
// appended to the timeline at once and reloads the status (coalesced), never on a timer.
import { register, api, onEvent, h, fmt, errorBox, table, actionButton, navigate } from '../app.js';
import { histogram, lineBand } from '../lib/chart.js';

const FAILED = new Set(['rolled_back', 'rolling_back', 'revert_failed', 'remediating']);

function pill(state, test) {
  return h('span', { class: `pill ${state}`, dataset: test ? { test } : undefined }, String(state).replace(/_/g, ' '));
}

function figuresText(f) {
  if (f === null || f === undefined) return '';
  return Object.entries(f).filter(([k]) => k !== 'rollout' && k !== 'reasons')
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : (typeof v === 'number' ? fmt.num(v, 4) : v)}`).join(' ');
}

function renderList(el) {
  const body = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  el.append(h('h1', null, 'Rollouts'), body);
  async function load() {
    try {
      const list = await api('/api/v1/rollouts');
      body.replaceChildren(list.length
        ? table(['rollout', 'state', 'plan', 'model', 'started', 'last step'], list.map((r) =>
          h('tr', { dataset: { test: 'rollout-row', id: r.id } },
            h('td', null, h('a', { href: `#/rollouts/${encodeURIComponent(r.id)}`, dataset: { test: 'rollout-link' } }, r.id)),
            h('td', null, pill(r.phase, 'rollout-phase')),
            h('td', null, r.plan, r.plan_file ? h('div', { class: 'muted' }, r.plan_file) : null),
            h('td', null, r.model_version ? `v${r.model_version}` : '—'),
            h('td', null, fmt.time(r.created_at_ms)),
            h('td', null, fmt.time(r.updated_at_ms)))), { dataset: { test: 'rollouts-table' } })
        : h('p', { class: 'muted', dataset: { test: 'rollouts-empty' } }, 'No rollout yet. Start one with `bellwether rollout start PLAN.yaml`.'));
    } catch (e) {
      body.replaceChildren(errorBox(e));
    }
  }
  let pending = null;
  const off = onEvent((e) => {
    if (!e.kind.startsWith('rollout.') || pending) return;
    pending = setTimeout(() => { pending = null; load(); }, 300);
  });
  load();
  return () => { off(); if (pending) clearTimeout(pending); };
}

function renderOne(el, id) {
  const head = h('div');
  const actionsOut = h('div', { dataset: { test: 'action-out' } });
  const statusBox = h('div');
  const timeline = h('ol', { class: 'timeline', dataset: { test: 'timeline' } });
  let lastId = 0;
  el.append(h('p', null, h('a', { href: '#/rollouts' }, '← all rollouts')), head,
    h('div', { class: 'actions', dataset: { test: 'actions' } },
      actionButton('Pause', 'pause', () => command('pause'), { out: actionsOut }),
      actionButton('Resume', 'resume', () => command('resume'), { out: actionsOut }),
      actionButton('Promote', 'promote', () => command('promote'), { out: actionsOut }),
      actionButton('Abort', 'abort', () => command('abort'), { out: actionsOut, confirm: `Abort rollout ${id} and revert every host it updated?` }),
      h('span', { class: 'muted' }, 'The rollout rolls back each failing host itself; roll back one more by hand from its row under Hosts, or Abort to revert every host it updated.')),
    actionsOut, statusBox,
    h('div', { class: 'card' }, h('h2', null, 'Timeline'), timeline));

  /** Whether the operator may roll host line `x` back now: updated or baking, rollout not over. */
  function canRollBack(status, x) {
    return !['completed', 'aborted'].includes(status.state) && ['baking', 'updated'].includes(x.state);
  }

  async function rollBack(host) {
    await api(`/api/v1/rollouts/${encodeURIComponent(id)}/hosts/${encodeURIComponent(host)}/rollback`, { method: 'POST' });
    await load();
  }

  async function command(cmd) {
    await api(`/api/v1/rollouts/${encodeURIComponent(id)}/${cmd}`, { method: 'POST' });
    await load();
  }

  function addEvent(e, fresh) {
    if (e.id <= lastId) return;
    lastId = e.id;
    timeline.prepend(h('li', { class: fresh ? 'new' : null, dataset: { test: 'timeline-event', kind: e.kind } },
      h('span', { class: 't' }, fmt.clock(e.ts_ms)),
      h('span', { class: 'k' }, e.kind.replace(/^rollout\./, '')),
      e.host ? h('strong', null, `${e.host}: `) : null,
      e.reason,
      figuresText(e.figures) ? h('div', { class: 'figures' }, figuresText(e.figures)) : null));
  }

  async function load() {
    try {
      const [status, report] = await Promise.all([
        api(`/api/v1/rollouts/${encodeURIComponent(id)}`),
        api(`/api/v1/rollouts/${encodeURIComponent(id)}/report`),
      ]);
      draw(status, report);
    } catch (e) {
      statusBox.replaceChildren(errorBox(e));
    }
  }

  function draw(status, report) {
    head.replaceChildren(
      h('h1', null, `Rollout ${status.id} `, pill(status.state, 'rollout-state')),
      h('p', null, `${report.update} ${report.version} · plan ${status.plan} · model ${status.model_version ? `v${status.model_version}` : '—'} · started ${fmt.time(report.started_ms)}`,
        report.finished_ms ? ` · finished ${fmt.time(report.finished_ms)}` : '',
        ` · wave ${status.wave} · ${fmt.count(status.hosts_total, 'host')}, ${status.failed_total} failed, ${fmt.count(status.pending_actions, 'action')} in flight`),
      ...(status.pause_reason ? [h('div', { class: 'error refused', dataset: { test: 'pause-reason' } }, h('strong', null, 'Paused: '), status.pause_reason)] : []));
    const byHost = new Map(report.hosts.map((x) => [x.host, x]));
    // Waves: 0 is the pilot; hosts never scheduled are listed apart.
    const waves = new Map();
    for (const x of status.hosts) {
      const k = x.wave ?? 'unscheduled';
      if (!waves.has(k)) waves.set(k, []);
      waves.get(k).push(x);
    }
    const keys = [...waves.keys()].sort((a, b) => (a === 'unscheduled') - (b === 'unscheduled') || a - b);
    const pilotEvent = report.events.find((e) => e.kind === 'pilot.selected');
    const failures = report.hosts.filter((x) => FAILED.has(x.action) || FAILED.has(x.state) || x.error);
    statusBox.replaceChildren(
      h('div', { class: 'row' },
        h('div', { class: 'card', dataset: { test: 'pilot' } }, h('h2', null, 'The pilot and why'),
          pilotEvent ? [h('p', null, pilotEvent.reason), h('div', { class: 'figures' }, figuresText(pilotEvent.figures))]
            : h('p', { class: 'muted' }, 'No pilot selected yet.')),
        h('div', { class: 'card' }, h('h2', null, 'Risk when it started'),
          histogram(report.hosts.map((x) => x.probability), {
            domain: [0, 1], bins: 10, width: 380, height: 150, test: 'rollout-risk',
            format: (v) => `${Math.round(v * 100)}%`, xLabel: 'failure probability', hot: (v) => v >= 0.5,
          }))),
      h('h2', null, 'Waves'),
      h('div', { class: 'waves', dataset: { test: 'waves' } }, keys.map((k) => h('div', {
        class: `wave${k === status.wave ? ' current' : ''}`, dataset: { test: 'wave', wave: String(k) },
      },
      h('h3', null, k === 0 ? 'Pilot (wave 0)' : k === 'unscheduled' ? 'Not scheduled' : `Wave ${k}`),
      waves.get(k).map((x) => h('div', { class: 'hostchip', dataset: { test: 'host-state', host: x.host, state: x.state } },
        `${x.host} `, pill(x.state), h('span', { class: 'muted' }, ` ${x.band} ${fmt.ratio(byHost.get(x.host)?.probability)}`)))))),
      h('h2', null, 'Failures'),
      failures.length
        ? h('div', { dataset: { test: 'failures' } }, failures.map((x) => h('div', { class: 'card', dataset: { test: 'failure', host: x.host } },
          h('h3', null, `${x.host} `, pill(x.action), x.state === x.action ? null : [' ', pill(x.state)]),
          h('p', null, x.reason || x.error || ''),
          reasonsTable(x.figures),
          metricPictures(x),
          h('div', { class: 'figures' }, figuresText(x.figures)))))
        : h('p', { class: 'muted', dataset: { test: 'failures' } }, 'No host has failed.'),
      h('h2', null, 'Hosts'),
      table(['host', 'wave', 'band', 'risk', 'state', 'action', 'applied', 'reason', ''], report.hosts.map((x) => h('tr', { dataset: { test: 'report-host', host: x.host } },
        h('td', null, x.host), h('td', null, x.wave ?? '—'), h('td', null, x.band),
        h('td', { class: 'num' }, fmt.ratio(x.probability)), h('td', null, pill(x.state)), h('td', null, pill(x.action)),
        h('td', null, fmt.clock(x.applied_ms)), h('td', null, x.reason),
        h('td', null, canRollBack(status, x)
          ? actionButton('Roll back', 'rollback-host', () => rollBack(x.host), { out: actionsOut, confirm: `Roll back ${x.host} now? It counts as a failure of its wave.` })
          : null)))));
  }

  // The samples behind a failed metric, fetched once per host, metric and end of the host.
  const pictures = new Map();

  /** Each failed metric of host report line `x` against its band, from the host's samples. */
  function metricPictures(x) {
    const reasons = x.figures && Array.isArray(x.figures.reasons) ? x.figures.reasons : [];
    return reasons.map((r) => {
      const key = `${x.host}|${r.metric}|${x.finished_ms ?? ''}`;
      if (!pictures.has(key)) pictures.set(key, samplePicture(x, r));
      const slot = h('div', { class: 'picture', dataset: { test: 'metric-picture', metric: r.metric } });
      pictures.get(key).then((node) => slot.replaceChildren(node), (e) => slot.replaceChildren(errorBox(e)));
      return slot;
    });
  }

  async function samplePicture(x, r) {
    const applied = x.applied_ms ?? x.figures.applied_ms;
    const from = (applied ?? Date.now()) - 30_000;
    const to = (x.finished_ms ?? Date.now()) + 10_000;
    const q = new URLSearchParams({ metric: r.metric, after_ms: String(from), before_ms: String(to), limit: '2000' });
    const got = await api(`/api/v1/hosts/${encodeURIComponent(x.host)}/samples?${q}`);
    const points = got.samples.map((s) => ({ t: s.ts_ms, v: s.value }));
    if (!points.length) return h('p', { class: 'muted' }, `No ${r.metric} samples of ${x.host} around the failure.`);
    const values = points.map((p) => p.v);
    const lo = r.lower ?? Math.min(...values, r.baseline);
    const hi = r.upper ?? Math.max(...values, r.baseline);
    const marks = [];
    if (applied) marks.push({ t: applied, label: 'applied' });
    if (x.finished_ms) marks.push({ t: x.finished_ms, label: 'rolled back' });
    return lineBand(points, { lo, hi }, {
      width: 560, height: 170, test: 'metric-chart', marks,
      title: `${r.metric} on ${x.host}: the band when it failed (baseline ${fmt.num(r.baseline, 3)})`,
      bandLabel: `band ${r.lower === null || r.lower === undefined ? '−∞' : fmt.num(r.lower, 3)} … ${r.upper === null || r.upper === undefined ? '+∞' : fmt.num(r.upper, 3)}`,
    });
  }

  function reasonsTable(figures) {
    const reasons = figures && Array.isArray(figures.reasons) ? figures.reasons : [];
    if (!reasons.length) return null;
    return table(['metric', 'value', 'baseline', 'deviation', 'out of band for', 'severity'], reasons.map((r) => h('tr', { dataset: { test: 'failed-metric' } },
      h('td', null, r.metric), h('td', { class: 'num' }, fmt.num(r.value, 4)), h('td', { class: 'num' }, fmt.num(r.baseline, 4)),
      h('td', { class: 'num' }, fmt.ratio(r.deviation)), h('td', null, fmt.ms(r.for_ms)), h('td', { class: 'num' }, fmt.num(r.severity, 3)))));
  }

  let pending = null;
  const off = onEvent((e) => {
    if (e.task !== id) return;
    addEvent(e, true);
    if (pending) return;
    pending = setTimeout(() => { pending = null; load(); }, 250);
  });
  (async () => {
    try {
      const events = await api(`/api/v1/events?task=${encodeURIComponent(id)}&after=0&limit=10000`);
      for (const e of events) addEvent(e, false);
    } catch (e) {
      timeline.replaceChildren(errorBox(e));
    }
  })();
  load();
  return () => { off(); if (pending) clearTimeout(pending); };
}

register('rollouts', {
  title: 'Rollouts',
  render: (el, ctx) => (ctx.arg ? renderOne(el, ctx.arg) : renderList(el)),
});
export { navigate };
