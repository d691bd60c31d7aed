// The fleet: every host with its drift by category and its findings, the risk of a chosen
// update as a distribution and per host, the peer outliers, a filter by label, and one host's
// drift over time (from its `drift_recomputed` events).
import { register, api, onEvent, h, fmt, errorBox, table, ApiError } from '../app.js';
import { histogram, lineBand } from '../lib/chart.js';

const CATEGORIES = ['configuration', 'performance', 'dependency'];
const DRIFT_KINDS = new Set(['drift_recomputed', 'enrolled', 'baseline_captured', 'profile_changed']);

// What the page keeps between renders (a chosen update stays chosen across navigation).
const remembered = { label: '', risk: null, host: null };

function bar(value, cls = '') {
  const w = Math.round(Math.max(0, Math.min(1, value)) * 80);
  return h('span', { title: fmt.ratio(value) },
    h('span', { class: `bar ${cls}`, style: { width: `${Math.max(w, 1)}px` } }), ' ', fmt.ratio(value));
}

function labelText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(' ');
}

function render(el) {
  const state = { fleet: null, risk: null, riskError: null, error: null };
  const filter = h('select', { dataset: { test: 'label-filter' } });
  const update = h('input', { placeholder: 'update (package)', size: 14, dataset: { test: 'risk-update' }, value: remembered.risk?.update ?? '' });
  const version = h('input', { placeholder: 'version', size: 8, dataset: { test: 'risk-version' }, value: remembered.risk?.version ?? '' });
  const kind = h('select', { dataset: { test: 'risk-type' } },
    h('option', { value: '' }, 'type: any'), ['major', 'minor', 'patch'].map((t) => h('option', { value: t }, t)));
  if (remembered.risk?.type) kind.value = remembered.risk.type;
  const riskForm = h('form', {
    class: 'filters', dataset: { test: 'risk-form' },
    onsubmit: (e) => { e.preventDefault(); loadRisk(); },
  }, h('strong', null, 'Risk of an update: '), update, version, kind, h('button', { type: 'submit', dataset: { test: 'risk-submit' } }, 'Score'));
  const body = h('div', { dataset: { test: 'fleet-body' } }, h('p', { class: 'muted' }, 'Loading the fleet…'));
  const detail = h('div', { dataset: { test: 'host-detail' } });
  filter.addEventListener('change', () => { remembered.label = filter.value; draw(); });
  el.append(h('h1', null, 'Fleet'),
    h('div', { class: 'filters' }, h('label', null, 'Label '), filter,
      h('span', { class: 'muted' }, 'Drift is each host against its own baseline; peers are hosts sharing the label `role`.')),
    riskForm, body, detail);

  async function loadFleet() {
    try {
      state.fleet = await api('/api/v1/fleet/drift');
      state.error = null;
    } catch (e) {
      state.error = e;
    }
    draw();
  }

  async function loadRisk() {
    const u = update.value.trim();
    const v = version.value.trim();
    if (!u || !v) {
      remembered.risk = null;
      state.risk = null;
      state.riskError = null;
      draw();
      return;
    }
    remembered.risk = { update: u, version: v, type: kind.value };
    const q = new URLSearchParams({ update: u, version: v });
    if (kind.value) q.set('type', kind.value);
    try {
      state.risk = await api(`/api/v1/risk?${q}`);
      state.riskError = null;
    } catch (e) {
      state.risk = null;
      state.riskError = e;
    }
    draw();
  }

  function draw() {
    if (state.error) {
      body.replaceChildren(errorBox(state.error));
      return;
    }
    if (!state.fleet) return;
    const hosts = state.fleet.hosts;
    // The label filter: every key=value any host has.
    const pairs = [...new Set(hosts.flatMap((x) => Object.entries(x.labels || {}).map(([k, v]) => `${k}=${v}`)))].sort();
    filter.replaceChildren(h('option', { value: '' }, `all hosts (${hosts.length})`),
      pairs.map((p) => h('option', { value: p }, p)));
    filter.value = pairs.includes(remembered.label) ? remembered.label : '';
    const [fk, fv] = filter.value ? filter.value.split('=') : [null, null];
    const shown = hosts.filter((x) => !fk || (x.labels || {})[fk] === fv);
    const risk = new Map((state.risk?.hosts ?? []).map((r) => [r.host, r]));
    const riskCard = h('div', { class: 'card', dataset: { test: 'risk' } });
    if (state.riskError) {
      riskCard.append(errorBox(state.riskError));
    } else if (state.risk) {
      const probs = shown.map((x) => risk.get(x.name)?.probability).filter((p) => p !== undefined);
      const u = state.risk.update;
      riskCard.append(
        h('h2', null, `Risk of ${u.name} ${u.version}${u.type ? ` (${u.type})` : ''}, model v${state.risk.model_version}`),
        histogram(probs, {
          domain: [0, 1], bins: 10, width: 460, height: 170, test: 'risk-histogram',
          format: (v) => `${Math.round(v * 100)}%`, xLabel: `failure probability (${fmt.count(probs.length, 'host')})`,
          hot: (v) => v >= 0.5,
        }));
    } else {
      riskCard.append(h('p', { class: 'muted' }, 'Name an update and a version above to see each host\'s failure probability and the fleet\'s distribution.'));
    }
    const rows = shown.map((x) => {
      const r = risk.get(x.name);
      const s = x.score;
      return h('tr', { dataset: { test: 'host-row', host: x.name }, class: remembered.host === x.name ? 'selected' : null },
        h('td', null, h('a', { href: '#/fleet', onclick: (e) => { e.preventDefault(); showHost(x.name); } }, x.name),
          x.has_baseline ? null : h('div', { class: 'muted' }, 'no baseline')),
        h('td', null, labelText(x.labels)),
        h('td', null, bar(s.overall)),
        CATEGORIES.map((c) => h('td', null, bar(s[c], 'cat'))),
        h('td', null, s.findings.length
          ? h('ul', { class: 'findings', dataset: { test: 'findings' } }, s.findings.map((f) =>
            h('li', null, `${f.category}: ${f.attribute} ${f.baseline ?? '∅'} → ${f.current ?? '∅'} (${fmt.ratio(f.weight)})`)))
          : h('span', { class: 'muted' }, '—')),
        h('td', { class: 'num', dataset: { test: 'host-risk' } }, r ? fmt.ratio(r.probability) : '—'));
    });
    const outliers = state.fleet.peer_outliers.filter((o) => shown.some((x) => x.name === o.host));
    body.replaceChildren(
      riskCard,
      h('h2', null, `Hosts (${shown.length})`),
      table(['host', 'labels', 'drift', ...CATEGORIES, 'top findings', 'risk'], rows, { dataset: { test: 'fleet-table' } }),
      h('h2', null, 'Peer outliers'),
      outliers.length
        ? table(['host', 'peers', 'differences'], outliers.map((o) => h('tr', { dataset: { test: 'outlier', host: o.host } },
          h('td', null, o.host),
          h('td', null, `${o.label}=${o.value} (${fmt.count(o.peers, 'peer')})`),
          h('td', null, h('ul', { class: 'findings' }, o.differences.map((d) =>
            h('li', null, `${d.attribute}: ${d.host ?? '∅'} where ${d.majority_hosts} of ${d.compared} have ${d.majority ?? '∅'}`)))))),
        { dataset: { test: 'outliers' } })
        : h('p', { class: 'muted', dataset: { test: 'outliers' } }, 'No host differs from the majority of its peers.'));
  }

  async function showHost(name) {
    remembered.host = name;
    draw();
    detail.replaceChildren(h('p', { class: 'muted' }, `Loading ${name}…`));
    try {
      const [drift, events] = await Promise.all([
        api(`/api/v1/hosts/${encodeURIComponent(name)}/drift`).catch((e) => (e instanceof ApiError && e.status === 409 ? e : Promise.reject(e))),
        api(`/api/v1/events?host=${encodeURIComponent(name)}&kind=drift_recomputed&limit=500`),
      ]);
      const points = events.map((e) => ({ t: e.ts_ms, v: e.figures.overall })).filter((p) => typeof p.v === 'number');
      detail.replaceChildren(h('div', { class: 'card', dataset: { test: 'host-card' } },
        h('h2', null, `${name}: drift`),
        drift instanceof ApiError ? h('p', { class: 'muted' }, drift.message) : h('div', null,
          h('p', null, 'overall ', bar(drift.overall), ' · ', CATEGORIES.map((c) => [`${c} `, bar(drift[c], 'cat'), ' '])),
          drift.findings.length ? table(['category', 'attribute', 'baseline', 'current', 'weight'], drift.findings.map((f) =>
            h('tr', null, h('td', null, f.category), h('td', null, f.attribute), h('td', null, f.baseline ?? '∅'),
              h('td', null, f.current ?? '∅'), h('td', { class: 'num' }, fmt.ratio(f.weight)))))
            : h('p', { class: 'muted' }, 'No findings: the host matches its baseline.')),
        h('h3', null, 'Drift over time'),
        points.length > 0
          ? lineBand(points, null, { width: 640, height: 170, test: 'drift-history', format: (v) => `${Math.round(v * 100)}%`, title: `overall drift of ${name} (${fmt.count(points.length, 'recomputation')})` })
          : h('p', { class: 'muted', dataset: { test: 'drift-history' } }, 'No drift recomputations recorded yet.')));
    } catch (e) {
      detail.replaceChildren(errorBox(e));
    }
  }

  // Live: a drift, enrolment or baseline event refreshes the table (coalesced), never a timer.
  let pending = null;
  const off = onEvent((e) => {
    if (!DRIFT_KINDS.has(e.kind)) return;
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      await loadFleet();
      if (remembered.host && e.host === remembered.host) showHost(remembered.host);
    }, 300);
  });
  loadFleet();
  if (remembered.risk) loadRisk();
  if (remembered.host) showHost(remembered.host);
  return () => { off(); if (pending) clearTimeout(pending); };
}

register('fleet', { title: 'Fleet', render });
